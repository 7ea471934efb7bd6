#[derive(ws_kit::Message)]
struct Hello {
    #[message(meta)]
    received_at: u64,
}

fn main() {}
