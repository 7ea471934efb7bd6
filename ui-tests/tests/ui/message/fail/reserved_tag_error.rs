#[derive(ws_kit::Message)]
#[message(type = "ERROR")]
struct Sneaky;

fn main() {}
