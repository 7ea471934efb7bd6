//! In-band authentication (docs/protocol.md 7): the app names one RPC as its authentication
//! request ([`Router::in_band_auth`](crate::Router::in_band_auth)); until it succeeds, the read
//! loop dispatches only that request and `__heartbeat`, and closes the connection after
//! `timeout` (4001). [`Authenticate`] wraps the app's handler to turn its outcome into the
//! connection's state: success authenticates (and starts sealed delivery when the handler
//! accepted a key), `UNAUTHENTICATED` closes with 4003, a success without a key where one is
//! required fails and closes with 4004.

use crate::close_code;
use crate::connection::Connection;
use crate::ctx::Ctx;
use crate::error::{ErrorCode, WsError};
use crate::handler::{Handler, Reply};
use crate::message::RpcMessage;
use crate::outbound::Then;
use crate::seal::SealKey;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How in-band authentication behaves: the timeout and whether delivery must be sealed.
///
/// ```
/// use std::time::Duration;
/// use ws_kit::InBandAuth;
///
/// let auth = InBandAuth::new().timeout(Duration::from_secs(2)).require_encryption();
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InBandAuth {
    pub(crate) timeout: Duration,
    pub(crate) require_encryption: bool,
    pub(crate) hold: bool,
}

impl Default for InBandAuth {
    fn default() -> Self {
        Self::new()
    }
}

impl InBandAuth {
    /// A 10-second `auth_timeout`, sealed delivery optional.
    pub fn new() -> Self {
        InBandAuth {
            timeout: Duration::from_secs(10),
            require_encryption: false,
            hold: false,
        }
    }

    /// How long a connection may stay unauthenticated, from its open (not extended by traffic);
    /// past it the connection is closed with 4001 "Authentication timeout".
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// An authentication request whose handler did not accept a key
    /// ([`Connection::accept_sealing`]) fails with `UNAUTHENTICATED` and closes the connection
    /// with 4004 (docs/protocol.md 7b).
    pub fn require_encryption(mut self) -> Self {
        self.require_encryption = true;
        self
    }

    /// Frames that arrive while an authentication request runs wait for its outcome, instead of
    /// being answered `UNAUTHENTICATED` at once (docs/protocol.md 7's rule, the default): after
    /// a success they are dispatched in order as authenticated messages, after a failure each
    /// meets the gate. For clients that send their authentication request and what follows in
    /// one go (an offline queue flushed on reconnect, the Rust client's among them), which the
    /// default would answer `UNAUTHENTICATED`. Held frames count against the ordered-dispatch
    /// budget; past it the socket is not read until the attempt ends.
    pub fn hold_until_authenticated(mut self) -> Self {
        self.hold = true;
        self
    }
}

/// What the read loop needs to know: which type authenticates, and for how long it waits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AuthGate {
    pub(crate) tag: &'static str,
    pub(crate) timeout: Duration,
    /// Frames behind a running attempt wait for it (`InBandAuth::hold_until_authenticated`).
    pub(crate) hold: bool,
}

/// The app's authentication handler, with what its outcome does to the connection.
#[derive(Debug)]
pub(crate) struct Authenticate<H> {
    pub(crate) handler: H,
    pub(crate) require_encryption: bool,
}

impl<H> Handler for Authenticate<H>
where
    H: Handler,
    H::Message: RpcMessage,
{
    type Message = H::Message;
    type Data = H::Data;
    type State = H::State;

    fn call(
        &self,
        ctx: Ctx<Self::Message, Self::Data, Self::State>,
    ) -> impl Future<Output = Result<Reply<Self::Message>, WsError>> + Send + 'static {
        let conn = ctx.connection().clone();
        // Already authenticated: the handler answers as it likes, and nothing else changes.
        let attempt = !conn.inner.auth.is_authenticated();
        let require_encryption = self.require_encryption;
        let work = self.handler.call(ctx);
        async move {
            let attempt = attempt.then(|| {
                conn.inner.auth.begin_attempt();
                Attempt(conn.clone())
            });
            let result = work.await;
            let Some(attempt) = attempt else {
                return result;
            };
            let key = attempt.end();
            let out = &conn.inner.out;
            match result {
                Ok(_) if require_encryption && key.is_none() => {
                    out.arm(Then::Close(
                        close_code::ENCRYPTION_REQUIRED,
                        "Encryption required",
                    ));
                    Err(WsError::unauthenticated(
                        "encrypted delivery is required: send publicKey",
                    ))
                }
                Ok(reply) => {
                    if let Some(key) = key {
                        out.arm(Then::Seal(key));
                    }
                    conn.inner.auth.set_authenticated();
                    Ok(reply)
                }
                Err(e) if *e.code() == ErrorCode::Unauthenticated => {
                    out.arm(Then::Close(
                        close_code::AUTH_FAILED,
                        "Authentication failed",
                    ));
                    Err(e)
                }
                Err(e) => Err(e),
            }
        }
    }
}

/// An attempt in progress; ends however the handler ends (a cancelled or panicking handler
/// leaves no key behind).
struct Attempt<D: Send + Sync + 'static>(Connection<D>);

impl<D: Send + Sync + 'static> Attempt<D> {
    fn end(self) -> Option<Arc<SealKey>> {
        self.0.inner.auth.take_seal()
    }
}

impl<D: Send + Sync + 'static> Drop for Attempt<D> {
    fn drop(&mut self) {
        self.0.inner.auth.end_attempt();
    }
}
