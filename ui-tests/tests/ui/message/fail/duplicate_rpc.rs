#[derive(ws_kit::Message)]
#[rpc(response = Pong)]
#[rpc(response = Pong)]
struct Ping;

#[derive(ws_kit::Message)]
struct Pong;

fn main() {}
