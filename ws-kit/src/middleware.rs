//! Middleware: code that runs after validation and before the handler, able to short-circuit.

use crate::context::Connection;
use crate::error::WsError;
use crate::message::Meta;
use futures_util::future::BoxFuture;
use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;
use std::time::SystemTime;

/// What middleware sees of a message: its type, meta and timing, and the connection (by deref).
/// The typed payload is the handler's alone.
pub struct Request<D> {
    pub(crate) conn: Connection<D>,
    pub(crate) message_type: &'static str,
    pub(crate) meta: Arc<Meta>,
    pub(crate) received_at: SystemTime,
    pub(crate) rpc: bool,
}

impl<D> Clone for Request<D> {
    fn clone(&self) -> Self {
        Request {
            conn: self.conn.clone(),
            message_type: self.message_type,
            meta: self.meta.clone(),
            received_at: self.received_at,
            rpc: self.rpc,
        }
    }
}

impl<D> Request<D> {
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

impl<D> Deref for Request<D> {
    type Target = Connection<D>;
    fn deref(&self) -> &Connection<D> {
        &self.conn
    }
}

/// The rest of the chain: further middleware, then the handler. Call [`Next::run`] to go on;
/// return an error instead to stop (the error is sent to the client like a handler's).
pub struct Next<D> {
    chain: Arc<[Arc<dyn Middleware<D>>]>,
    index: usize,
    request: Request<D>,
    endpoint: BoxFuture<'static, Result<(), WsError>>,
}

impl<D: Send + Sync + 'static> Next<D> {
    pub(crate) fn new(
        chain: Arc<[Arc<dyn Middleware<D>>]>,
        request: Request<D>,
        endpoint: BoxFuture<'static, Result<(), WsError>>,
    ) -> Self {
        Next {
            chain,
            index: 0,
            request,
            endpoint,
        }
    }

    /// Runs the rest of the chain and the handler.
    pub async fn run(self) -> Result<(), WsError> {
        match self.chain.get(self.index).cloned() {
            Some(mw) => {
                let request = self.request.clone();
                let next = Next {
                    index: self.index + 1,
                    ..self
                };
                mw.handle(request, next).await
            }
            None => self.endpoint.await,
        }
    }
}

/// Middleware: an async function of the request and the rest of the chain.
///
/// ```
/// use ws_kit::{Next, Request, Router, WsError};
///
/// async fn require_login(req: Request<Option<String>>, next: Next<Option<String>>) -> Result<(), WsError> {
///     if req.data().is_none() {
///         return Err(WsError::unauthenticated("log in first"));
///     }
///     next.run().await
/// }
///
/// let router = Router::<Option<String>>::new().middleware(require_login);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not ws-kit middleware",
    note = "middleware is an `async fn(req: Request<Data>, next: Next<Data>) -> Result<(), WsError>`"
)]
pub trait Middleware<D>: Send + Sync + 'static {
    /// Handles one message: call `next.run().await` to continue, or return early.
    fn handle(&self, request: Request<D>, next: Next<D>)
    -> BoxFuture<'static, Result<(), WsError>>;
}

impl<D, F, Fut> Middleware<D> for F
where
    F: Fn(Request<D>, Next<D>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), WsError>> + Send + 'static,
{
    fn handle(
        &self,
        request: Request<D>,
        next: Next<D>,
    ) -> BoxFuture<'static, Result<(), WsError>> {
        Box::pin(self(request, next))
    }
}
