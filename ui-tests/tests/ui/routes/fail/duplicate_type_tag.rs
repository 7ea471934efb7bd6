use ws_kit::{Ctx, Message, Router, handler, routes};

#[derive(Message)]
#[message(type = "SAME")]
struct First;

#[derive(Message)]
#[message(type = "SAME")]
struct Second;

#[handler]
async fn first(ctx: Ctx<First>) {
    let _ = ctx.message_type();
}

#[handler]
async fn second(ctx: Ctx<Second>) {
    let _ = ctx.message_type();
}

fn main() {
    let _router = Router::new().routes(routes![first, second]);
}
