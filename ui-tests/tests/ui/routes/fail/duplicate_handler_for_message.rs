use ws_kit::{Ctx, Message, Router, handler, routes};

#[derive(Message)]
struct Ping;

#[handler]
async fn ping(ctx: Ctx<Ping>) {
    let _ = ctx.message_type();
}

#[handler]
async fn ping_again(ctx: Ctx<Ping>) {
    let _ = ctx.message_type();
}

fn main() {
    let _router = Router::new().routes(routes![ping, ping_again]);
}
