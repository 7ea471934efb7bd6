use ws_kit::{Ctx, Message, handler};

#[derive(Message)]
struct Ping;

#[handler]
async fn ping(ctx: Ctx<Ping>, count: u32) {
    let _ = (ctx.message_type(), count);
}

fn main() {}
