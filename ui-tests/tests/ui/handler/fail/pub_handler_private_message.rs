// A `pub` handler whose message is private to the crate root. For a plain `pub fn` this is only
// the `private_interfaces` warning; the handler's generated `impl Handler` makes it an error.
use ws_kit::{Ctx, Message, handler};

#[derive(Message)]
struct Login {
    user: String,
}

mod handlers {
    use super::*;

    #[handler]
    pub async fn login(ctx: Ctx<Login>) {
        let _ = &ctx.payload.user;
    }
}

fn main() {
    let _ = handlers::login;
}
