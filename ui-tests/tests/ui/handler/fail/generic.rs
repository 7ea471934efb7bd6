use ws_kit::{Ctx, Message, handler};

#[derive(Message)]
struct Ping;

#[handler]
async fn ping<D: Send + Sync + 'static>(ctx: Ctx<Ping, D>) {
    let _ = ctx.message_type();
}

fn main() {}
