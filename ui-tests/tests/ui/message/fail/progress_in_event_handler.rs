use ws_kit::{Ctx, Message, handler};

#[derive(Message)]
struct Notify {
    text: String,
}

#[derive(Message)]
struct Pong {
    reply: String,
}

#[handler]
async fn notify(ctx: Ctx<Notify>) {
    ctx.progress(&Pong { reply: ctx.payload.text.clone() });
}

fn main() {}
