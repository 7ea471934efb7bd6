use std::rc::Rc;
use ws_kit::{Ctx, Message, handler};

#[derive(Message)]
struct Ping;

#[handler]
async fn ping(ctx: Ctx<Ping>) {
    let local = Rc::new(1);
    ctx.subscribe("room").await.ok();
    let _ = local;
}

fn main() {}
