#[derive(ws_kit::Message)]
#[rpc(response = Pong, timeout = 5)]
struct Ping;

#[derive(ws_kit::Message)]
struct Pong;

fn main() {}
