use ws_kit::{Ctx, Message, Router, routes};

#[derive(Message)]
struct Ping;

// Forgot `#[handler]`.
async fn ping(ctx: Ctx<Ping>) {
    let _ = ctx.message_type();
}

fn main() {
    let _router = Router::new().routes(routes![ping]);
}
