//! Integration tests of ws-kit over real sockets: see `tests/`. The library holds what a test
//! shares with a server it runs as a child process (`src/bin/`).

use ws_kit::{Ctx, Message, WsError, handler};

/// `PING {text}` → `PONG {reply}` with the same text: proof that a connection is served.
#[derive(Message, Debug)]
#[rpc(response = Pong)]
pub struct Ping {
    /// Echoed as `reply`.
    pub text: String,
}

/// The reply to [`Ping`].
#[derive(Message, Debug)]
pub struct Pong {
    /// The ping's text.
    pub reply: String,
}

/// Answers a [`Ping`] with its text.
#[handler]
pub async fn ping(ctx: Ctx<Ping>) -> Result<Pong, WsError> {
    Ok(Pong {
        reply: ctx.payload.text.clone(),
    })
}
