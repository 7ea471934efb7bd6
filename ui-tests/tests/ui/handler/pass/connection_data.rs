// Handlers over per-connection data, with attributes and visibility kept on the handler, and a
// type alias of `Ctx` as the argument.
use ws_kit::{Ctx, Message, Router, WsError, handler};

#[derive(Default)]
struct Session {
    user: Option<String>,
    count: u32,
}

#[derive(Message)]
struct Login {
    user: String,
}

#[derive(Message)]
#[rpc(response = Count)]
struct GetCount;

#[derive(Message)]
struct Count {
    count: u32,
}

type SessionCtx<M> = Ctx<M, Session>;

mod handlers {
    use super::*;

    /// Logs the connection in.
    #[handler]
    #[allow(clippy::needless_pass_by_value)]
    pub(crate) async fn login(ctx: Ctx<Login, Session>) {
        let user = ctx.payload.user.clone();
        ctx.assign(|s| {
            s.user = Some(user);
            s.count += 1;
        });
    }

    #[handler]
    pub(crate) async fn get_count(ctx: SessionCtx<GetCount>) -> Result<Count, WsError> {
        let count = ctx.data().count;
        let _ = ctx.data().user.is_some();
        Ok(Count { count })
    }
}

fn main() {
    let _router = Router::<Session>::new()
        .on(handlers::login)
        .rpc(handlers::get_count);
}
