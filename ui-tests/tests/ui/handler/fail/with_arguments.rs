use ws_kit::{Ctx, Message, handler};

#[derive(Message)]
struct Ping;

#[handler(rpc)]
async fn ping(ctx: Ctx<Ping>) {
    let _ = ctx.message_type();
}

fn main() {}
