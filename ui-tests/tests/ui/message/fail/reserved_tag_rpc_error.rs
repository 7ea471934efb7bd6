#[derive(ws_kit::Message)]
#[message(type = "RPC_ERROR")]
struct Sneaky {
    code: String,
}

fn main() {}
