// Per-message middleware and ordered dispatch inside `routes!`, without importing `Handler`.
use ws_kit::{Ctx, Incoming, Message, Next, Router, WsError, handler, routes};

#[derive(Message)]
struct Join;

#[derive(Message)]
struct Say;

#[derive(Message)]
#[rpc(response = Pong)]
struct Ping;

#[derive(Message)]
struct Pong;

#[handler]
async fn join(ctx: Ctx<Join>) {
    let _ = ctx.message_type();
}

#[handler]
async fn say(ctx: Ctx<Say>) {
    let _ = ctx.message_type();
}

#[handler]
async fn ping(_ctx: Ctx<Ping>) -> Result<Pong, WsError> {
    Ok(Pong)
}

async fn audit(msg: Incoming<()>, next: Next<()>) -> Result<(), WsError> {
    let _ = msg.message_type();
    next.run().await
}

fn main() {
    let _router = Router::new().routes(routes![
        join.ordered(),
        say.middleware(audit).middleware(audit),
        ping.middleware(audit).ordered(),
    ]);
}
