#[derive(ws_kit::Message)]
#[rpc(response = String)]
struct Ping;

fn main() {}
