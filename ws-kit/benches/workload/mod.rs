//! The messages, handlers and router both benchmarks measure (`per_message` by time, `icount` by
//! instructions), defined once so their figures describe the same work.

use std::hint::black_box;
use ws_kit::{Ctx, Message, Router, WsError, handler, routes};

#[derive(Message)]
struct SendMessage {
    #[validate(length(min = 1, max = 64))]
    room_id: String,
    #[validate(length(min = 1, max = 500))]
    text: String,
}

#[derive(Message)]
#[rpc(response = Pong)]
struct Ping {
    #[validate(length(max = 1000))]
    text: String,
}

#[derive(Message)]
pub(crate) struct Pong {
    pub(crate) reply: String,
}

/// Reads the payload and finishes: the work is decode + validate + dispatch.
#[handler]
async fn send_message(ctx: Ctx<SendMessage>) {
    black_box((&ctx.payload.room_id, &ctx.payload.text));
}

#[handler]
async fn ping(ctx: Ctx<Ping>) -> Result<Pong, WsError> {
    Ok(Pong {
        reply: ctx.payload.text.clone(),
    })
}

/// `SEND_MESSAGE` (an event) and `PING` (a request).
pub(crate) fn router() -> Router {
    Router::new().routes(routes![send_message, ping])
}
