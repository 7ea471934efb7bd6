#[derive(ws_kit::Message)]
#[message(type = PING)]
struct Ping;

fn main() {}
