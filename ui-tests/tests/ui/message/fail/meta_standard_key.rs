#[derive(ws_kit::Message)]
struct Hello {
    #[message(meta)]
    correlation_id: String,
}

fn main() {}
