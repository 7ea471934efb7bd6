use ws_kit::{Ctx, handler};

#[handler]
async fn ping(ctx: Ctx<String>) {
    let _ = ctx.payload.len();
}

fn main() {}
