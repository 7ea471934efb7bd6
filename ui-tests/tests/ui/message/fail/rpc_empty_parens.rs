#[derive(ws_kit::Message)]
#[rpc()]
struct Ping;

fn main() {}
