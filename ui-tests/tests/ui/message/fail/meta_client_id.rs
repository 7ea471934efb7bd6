#[derive(ws_kit::Message)]
struct Hello {
    #[message(meta)]
    client_id: String,
}

fn main() {}
