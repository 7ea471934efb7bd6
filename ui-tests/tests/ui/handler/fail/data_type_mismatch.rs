use ws_kit::{Ctx, Message, Router, handler};

#[derive(Message)]
struct Ping;

#[derive(Default)]
struct Session {
    user: Option<String>,
}

#[handler]
async fn ping(ctx: Ctx<Ping>) {
    let _ = ctx.message_type();
}

fn main() {
    let _router = Router::<Session>::new().on(ping);
}
