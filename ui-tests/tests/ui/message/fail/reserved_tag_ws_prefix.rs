#[derive(ws_kit::Message)]
#[message(type = "$ws:abort")]
struct Sneaky;

fn main() {}
