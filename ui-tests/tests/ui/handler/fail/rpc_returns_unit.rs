// A request's handler must return its reply; finishing with `()` would leave it unanswered.
use ws_kit::{Ctx, Message, handler};

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
async fn ping(ctx: Ctx<Ping>) {
    let _ = &ctx.payload.text;
}

fn main() {}
