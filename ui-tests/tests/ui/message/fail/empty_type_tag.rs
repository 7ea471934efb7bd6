#[derive(ws_kit::Message)]
#[message(type = "")]
struct Nameless;

fn main() {}
