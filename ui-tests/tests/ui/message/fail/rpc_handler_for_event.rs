use ws_kit::{Ctx, Message, Router, handler};

#[derive(Message)]
struct Notify {
    text: String,
}

#[handler]
async fn notify(ctx: Ctx<Notify>) {
    let _ = &ctx.payload.text;
}

fn main() {
    let _router = Router::new().rpc(notify);
}
