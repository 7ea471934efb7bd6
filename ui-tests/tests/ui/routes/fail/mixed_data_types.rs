use ws_kit::{Ctx, Message, Router, handler, routes};

#[derive(Message)]
struct Ping;

#[derive(Message)]
struct Hello;

#[derive(Default)]
struct Session {
    user: Option<String>,
}

#[handler]
async fn ping(ctx: Ctx<Ping>) {
    let _ = ctx.message_type();
}

#[handler]
async fn hello(ctx: Ctx<Hello, Session>) {
    let _ = ctx.data().user.is_some();
}

fn main() {
    let _router = Router::new().routes(routes![ping, hello]);
}
