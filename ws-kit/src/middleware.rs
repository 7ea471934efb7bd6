//! Middleware: code that runs after validation and before the handler, able to short-circuit.

use crate::connection::Connection;
use crate::error::WsError;
use crate::message::Meta;
use futures_util::future::BoxFuture;
use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;
use std::time::SystemTime;

/// A middleware chain, shared by every message it runs for.
pub(crate) type Chain<D> = Arc<[Arc<dyn Middleware<D>>]>;

/// An incoming message as middleware sees it: its type, meta and timing, and the connection (by
/// deref). The typed payload is the handler's alone.
pub struct Incoming<D> {
    pub(crate) conn: Connection<D>,
    pub(crate) message_type: &'static str,
    pub(crate) meta: Arc<Meta>,
    pub(crate) received_at: SystemTime,
    pub(crate) rpc: bool,
}

impl<D> Clone for Incoming<D> {
    fn clone(&self) -> Self {
        Incoming {
            conn: self.conn.clone(),
            message_type: self.message_type,
            meta: self.meta.clone(),
            received_at: self.received_at,
            rpc: self.rpc,
        }
    }
}

impl<D> fmt::Debug for Incoming<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("message_type", &self.message_type)
            .field("meta", &self.meta)
            .field("client_id", &self.conn.inner.id)
            .finish_non_exhaustive()
    }
}

impl<D> Incoming<D> {
    /// The message's type tag.
    pub fn message_type(&self) -> &'static str {
        self.message_type
    }

    /// The envelope's standard meta.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// The server clock when the frame arrived: when its bytes were read from the socket (the
    /// frames of one socket read share the time of that read).
    pub fn received_at(&self) -> SystemTime {
        self.received_at
    }

    /// Whether the message is an RPC request (an error then becomes its `RPC_ERROR` terminal).
    pub fn is_rpc(&self) -> bool {
        self.rpc
    }
}

impl<D> Deref for Incoming<D> {
    type Target = Connection<D>;
    fn deref(&self) -> &Connection<D> {
        &self.conn
    }
}

/// The rest of the chain: further middleware, then the handler. Call [`Next::run`] to go on;
/// return an error instead to stop (the error is sent to the client like a handler's).
pub struct Next<D> {
    /// The router's middleware, then the route's own.
    chains: [Chain<D>; 2],
    chain: usize,
    index: usize,
    incoming: Incoming<D>,
    endpoint: BoxFuture<'static, Result<(), WsError>>,
}

impl<D> fmt::Debug for Next<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Next")
            .field("message_type", &self.incoming.message_type)
            .finish_non_exhaustive()
    }
}

impl<D: Send + Sync + 'static> Next<D> {
    /// The router's middleware, then the route's, then `endpoint` (the handler).
    pub(crate) fn new(
        global: Chain<D>,
        route: Chain<D>,
        incoming: Incoming<D>,
        endpoint: BoxFuture<'static, Result<(), WsError>>,
    ) -> Self {
        Next {
            chains: [global, route],
            chain: 0,
            index: 0,
            incoming,
            endpoint,
        }
    }

    /// Runs the rest of the chain and the handler.
    pub async fn run(mut self) -> Result<(), WsError> {
        while self.chain < 2 {
            if let Some(mw) = self.chains[self.chain].get(self.index).cloned() {
                let incoming = self.incoming.clone();
                self.index += 1;
                return mw.handle(incoming, self).await;
            }
            self.chain += 1;
            self.index = 0;
        }
        self.endpoint.await
    }
}

/// Middleware: an async function of the incoming message and the rest of the chain.
///
/// ```
/// use ws_kit::{Incoming, Next, Router, WsError};
///
/// async fn require_login(msg: Incoming<Option<String>>, next: Next<Option<String>>) -> Result<(), WsError> {
///     if msg.data().is_none() {
///         return Err(WsError::unauthenticated("log in first"));
///     }
///     next.run().await
/// }
///
/// let router = Router::<Option<String>>::new().middleware(require_login);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not ws-kit middleware",
    note = "middleware is an `async fn(msg: Incoming<Data>, next: Next<Data>) -> Result<(), WsError>`"
)]
pub trait Middleware<D>: Send + Sync + 'static {
    /// Handles one message: call `next.run().await` to continue, or return early.
    fn handle(
        &self,
        incoming: Incoming<D>,
        next: Next<D>,
    ) -> BoxFuture<'static, Result<(), WsError>>;
}

impl<D, F, Fut> Middleware<D> for F
where
    F: Fn(Incoming<D>, Next<D>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), WsError>> + Send + 'static,
{
    fn handle(
        &self,
        incoming: Incoming<D>,
        next: Next<D>,
    ) -> BoxFuture<'static, Result<(), WsError>> {
        Box::pin(self(incoming, next))
    }
}
