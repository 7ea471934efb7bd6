// The authentication request must be an RPC: its reply is what tells the client it is in.
use ws_kit::{Ctx, InBandAuth, Message, Router, handler};

#[derive(Message)]
struct Login {
    token: String,
}

#[handler]
async fn login(ctx: Ctx<Login>) {
    let _ = &ctx.payload.token;
}

fn main() {
    let _router = Router::new().in_band_auth(login, InBandAuth::new());
}
