use ws_kit::{Ctx, Message, handler};

#[derive(Message)]
struct Ping;

#[handler]
async fn ping(ctx: Ctx<Ping>) -> Result<(), String> {
    let _ = ctx.message_type();
    Ok(())
}

fn main() {}
