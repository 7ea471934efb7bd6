// An event has no reply: its handler returns `()` or `Result<(), E>`.
use ws_kit::{Ctx, Message, WsError, handler};

#[derive(Message)]
struct Notify {
    text: String,
}

#[derive(Message)]
struct Pong {
    reply: String,
}

#[handler]
async fn notify(ctx: Ctx<Notify>) -> Result<Pong, WsError> {
    Ok(Pong { reply: ctx.payload.text.clone() })
}

fn main() {}
