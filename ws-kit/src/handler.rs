//! Handlers: the [`Handler`] trait that `#[handler]` implements, what a handler returns
//! ([`Reply`]), and a handler with its route options ([`Route`]: per-message middleware, ordered
//! dispatch).

use crate::codec::{Codec, ReplyFrame};
use crate::ctx::Ctx;
use crate::error::WsError;
use crate::message::Message;
use crate::middleware::{Chain, Middleware};
use std::fmt;
use std::future::Future;
use std::sync::Arc;

/// What a handler of `M` returns on success: `()` for an event, the response for a request
/// (`#[rpc(response = Pong)]` → `Pong`).
pub type Reply<M> = <M as Codec>::Reply;

/// A message handler. Write an `async fn` with `#[handler]` rather than implementing this.
///
/// ```
/// use ws_kit::{handler, Ctx, Message, WsError};
///
/// #[derive(Message)]
/// #[rpc(response = Pong)]
/// struct Ping { text: String }
///
/// #[derive(Message)]
/// struct Pong { reply: String }
///
/// #[handler]
/// async fn ping(ctx: Ctx<Ping>) -> Result<Pong, WsError> {
///     Ok(Pong { reply: format!("Got: {}", ctx.payload.text) })
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a ws-kit handler",
    note = "put `#[ws_kit::handler]` on an `async fn(ctx: Ctx<Message, Data, State>)`"
)]
pub trait Handler: Send + Sync + 'static {
    /// The message this handler receives.
    type Message: Message<Reply: ReplyFrame>;
    /// The per-connection data type.
    type Data: Send + Sync + 'static;
    /// The router's state type (`()` when the router has none).
    type State: Send + Sync + 'static;

    /// Runs the handler: `Ok(reply)` for a request (the reply is its terminal frame), `Ok(())`
    /// for an event; `Err` sends the error.
    fn call(
        &self,
        ctx: Ctx<Self::Message, Self::Data, Self::State>,
    ) -> impl Future<Output = Result<Reply<Self::Message>, WsError>> + Send + 'static;

    /// Runs `middleware` before this handler only (after the router's global middleware).
    fn middleware<Mw: Middleware<Self::Data>>(self, middleware: Mw) -> Route<Self>
    where
        Self: Sized,
    {
        Route::new(self).middleware(middleware)
    }

    /// Dispatches this message in order: its handler starts after every earlier handler of the
    /// connection finished, and later frames wait until it finished (`$ws:abort` and
    /// `__heartbeat` still act at once). See [`Router::ordered`](crate::Router::ordered).
    fn ordered(self) -> Route<Self>
    where
        Self: Sized,
    {
        Route::new(self).ordered()
    }
}

/// A handler with its route options: per-message middleware, ordered dispatch. Made by
/// [`Handler::middleware`] and [`Handler::ordered`]; added like a handler (`Router::on`,
/// `Router::rpc`, `routes![ping.middleware(audit)]`).
pub struct Route<H: Handler> {
    pub(crate) handler: H,
    pub(crate) middleware: Chain<H::Data>,
    pub(crate) ordered: bool,
}

impl<H: Handler + fmt::Debug> fmt::Debug for Route<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("handler", &self.handler)
            .field("middleware", &self.middleware.len())
            .field("ordered", &self.ordered)
            .finish()
    }
}

impl<H: Handler> Route<H> {
    pub(crate) fn new(handler: H) -> Self {
        Route {
            handler,
            middleware: Arc::new([]),
            ordered: false,
        }
    }

    /// Adds another middleware, run after the ones already added.
    pub fn middleware<Mw: Middleware<H::Data>>(mut self, middleware: Mw) -> Route<H> {
        let mut chain: Vec<_> = self.middleware.iter().cloned().collect();
        chain.push(Arc::new(middleware));
        self.middleware = chain.into();
        self
    }

    /// Dispatches this message in order (see [`Handler::ordered`]).
    pub fn ordered(mut self) -> Route<H> {
        self.ordered = true;
        self
    }
}

/// A handler, or a handler with route options ([`Route`]): what a router takes.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a handler of this router",
    label = "expected a `#[handler]` taking `Ctx<_, {D}, {S}>`",
    note = "put `#[ws_kit::handler]` on an `async fn(ctx: Ctx<Message, Data, State>)`; the handlers of one router share its connection data and state types"
)]
pub trait IntoRoute<D, S> {
    /// The handler.
    type Handler: Handler<Data = D, State = S>;
    /// The handler with its options.
    fn into_route(self) -> Route<Self::Handler>;
}

impl<H: Handler> IntoRoute<H::Data, H::State> for H {
    type Handler = H;
    fn into_route(self) -> Route<H> {
        Route::new(self)
    }
}

impl<H: Handler> IntoRoute<H::Data, H::State> for Route<H> {
    type Handler = H;
    fn into_route(self) -> Route<H> {
        self
    }
}

/// What a handler may return, for the message's reply type `R`: `Result<R, E>` with
/// `E: Into<WsError>`, or `()` for an event (whose `R` is `()`). Named by `#[handler]` at the
/// function's return type.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "this handler must return `Result<{R}, E>` (with `E: Into<WsError>`), not `{Self}`",
    label = "expected `Result<{R}, WsError>`",
    note = "a request's handler returns its reply (`Ok(reply)`) or an error; an event's handler returns `()` or `Result<(), E>`"
)]
pub trait IntoReply<R> {
    /// Converts the handler's return value.
    fn into_reply(self) -> Result<R, WsError>;
}

impl<R, E: Into<WsError>> IntoReply<R> for Result<R, E> {
    fn into_reply(self) -> Result<R, WsError> {
        self.map_err(Into::into)
    }
}

impl IntoReply<()> for () {
    fn into_reply(self) -> Result<(), WsError> {
        Ok(())
    }
}

/// Splits a handler's argument type into message, data and state.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "a handler's argument must be `Ctx<Message, Data, State>`, not `{Self}`",
    label = "expected `Ctx<Message, Data, State>`",
    note = "write the handler as `async fn name(ctx: Ctx<MyMessage>)` (or `Ctx<MyMessage, MyData>`, `Ctx<MyMessage, MyData, MyState>`)"
)]
pub trait CtxParts {
    /// The message type.
    type Message: Message;
    /// The connection data type.
    type Data: Send + Sync + 'static;
    /// The router's state type.
    type State: Send + Sync + 'static;
    /// The identity: lets the generated call name the argument's type, so a mismatch is reported
    /// there.
    fn from_ctx(ctx: Ctx<Self::Message, Self::Data, Self::State>) -> Self;
}

impl<M: Message, D: Send + Sync + 'static, S: Send + Sync + 'static> CtxParts for Ctx<M, D, S> {
    type Message = M;
    type Data = D;
    type State = S;
    fn from_ctx(ctx: Ctx<M, D, S>) -> Self {
        ctx
    }
}
