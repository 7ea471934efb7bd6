use ws_kit::{Ctx, Message, Router, handler, routes};

#[derive(Message)]
struct Ping;

#[derive(Message)]
struct Hello;

#[handler]
async fn ping(ctx: Ctx<Ping>) {
    let _ = ctx.message_type();
}

#[handler]
async fn hello(ctx: Ctx<Hello>) {
    let _ = ctx.message_type();
}

fn main() {
    let _router = Router::new().routes(routes![ping, hello, ping]);
}
