// A request's only terminal is its handler's return value: `ctx.error` (an event's) is not there.
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

#[handler]
async fn ping(ctx: Ctx<Ping>) -> Result<Pong, WsError> {
    ctx.error(WsError::not_found("no"));
    Ok(Pong { reply: ctx.payload.text.clone() })
}

fn main() {}
