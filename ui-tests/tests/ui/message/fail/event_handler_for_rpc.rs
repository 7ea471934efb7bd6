use ws_kit::{Ctx, Message, Router, WsError, handler};

#[derive(Message)]
#[rpc(response = Pong)]
struct Ping {
    text: String,
}

#[derive(Message)]
struct Pong {
    reply: String,
}

#[handler]
async fn ping(ctx: Ctx<Ping>) -> Result<Pong, WsError> {
    Ok(Pong { reply: ctx.payload.text.clone() })
}

fn main() {
    let _router = Router::new().on(ping);
}
