#[derive(ws_kit::Message)]
#[message(type = "__x")]
struct Sneaky;

fn main() {}
