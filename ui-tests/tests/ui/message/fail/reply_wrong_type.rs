use ws_kit::{Ctx, Message, handler};

#[derive(Message)]
#[rpc(response = Pong)]
struct Ping {
    text: String,
}

#[derive(Message)]
struct Pong {
    reply: String,
}

#[derive(Message)]
struct Other {
    reply: String,
}

#[handler]
async fn ping(ctx: Ctx<Ping>) {
    ctx.reply(Other { reply: ctx.payload.text.clone() });
}

fn main() {}
