#[derive(ws_kit::Message)]
#[message(type = "A", type = "B")]
struct Twice;

fn main() {}
