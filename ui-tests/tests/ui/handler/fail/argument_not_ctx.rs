use ws_kit::{Message, handler};

#[derive(Message)]
struct Ping;

#[handler]
async fn ping(msg: Ping) {
    let _ = msg;
}

fn main() {}
