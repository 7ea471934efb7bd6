// `routes!` takes handler paths; per-message middleware goes through `Router::on` / `Router::rpc`.
use ws_kit::{Ctx, Handler, Message, Next, Request, Router, WsError, handler, routes};

#[derive(Message)]
struct Ping;

#[handler]
async fn ping(ctx: Ctx<Ping>) {
    let _ = ctx.message_type();
}

async fn audit(req: Request<()>, next: Next<()>) -> Result<(), WsError> {
    let _ = req.message_type();
    next.run().await
}

fn main() {
    let _router = Router::new().routes(routes![ping.middleware(audit)]);
}
