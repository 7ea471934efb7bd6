// A request's handler returns its bound response type, and nothing else.
use ws_kit::{Ctx, Message, WsError, handler};

#[derive(Message)]
#[rpc(response = Pong)]
struct Ping {
    text: String,
}

#[derive(Message)]
struct Pong {
    reply: String,
}

#[derive(Message)]
struct Other {
    reply: String,
}

#[handler]
async fn ping(ctx: Ctx<Ping>) -> Result<Other, WsError> {
    Ok(Other { reply: ctx.payload.text.clone() })
}

fn main() {}
