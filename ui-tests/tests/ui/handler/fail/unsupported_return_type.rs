use ws_kit::{Ctx, Message, handler};

#[derive(Message)]
struct Ping;

#[handler]
async fn ping(ctx: Ctx<Ping>) -> i32 {
    let _ = ctx.message_type();
    0
}

fn main() {}
