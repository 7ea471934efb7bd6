//! [`Service`]: a built router with its options, serving WebSocket connections from any byte
//! stream (the accept loop's, or one accepted elsewhere).

use super::handshake::{handshake, reject};
use super::options::{PayloadLimit, ServeOptions};
use crate::app::App;
use crate::connection::Connection;
use crate::error::Error;
use crate::publisher::Publisher;
use crate::read_loop::{self, LoopConfig, Reader};
use crate::router::Router;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// A built router with its options: serves WebSocket connections from any byte stream.
///
/// Cheap to clone. Use it to hand over connections accepted elsewhere
/// ([`Service::serve_stream`]), to publish, and to shut down.
pub struct Service<D> {
    inner: Arc<ServiceInner<D>>,
}

impl<D> fmt::Debug for Service<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service")
            .field("connections", &self.connection_count())
            .finish_non_exhaustive()
    }
}

impl<D> Clone for Service<D> {
    fn clone(&self) -> Self {
        Service {
            inner: self.inner.clone(),
        }
    }
}

struct ServiceInner<D> {
    app: Arc<App<D>>,
    options: ServeOptions<D>,
    shutdown: watch::Sender<bool>,
    /// Open connections (counted by their read loops).
    connections: Arc<AtomicUsize>,
}

impl<D: Send + Sync + 'static, S: Send + Sync + 'static> Router<D, S> {
    /// Builds the router into a [`Service`]. Fails if two routes handle one type tag.
    pub fn into_service(self, options: ServeOptions<D>) -> Result<Service<D>, Error> {
        let app = self.build(options.limits())?;
        let (shutdown, _) = watch::channel(false);
        Ok(Service {
            inner: Arc::new(ServiceInner {
                app,
                options,
                shutdown,
                connections: Arc::default(),
            }),
        })
    }
}

impl<D: Send + Sync + 'static> Service<D> {
    /// Runs the WebSocket handshake on an accepted stream, then the connection, to its end.
    /// Returns the handshake error if the upgrade failed or was refused.
    pub async fn serve_stream<T>(&self, stream: T) -> Result<(), Error>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let opts = &self.inner.options;
        let client_id = uuid::Uuid::now_v7();
        let mut data = None;
        #[allow(clippy::result_large_err)]
        let callback = |req: &Request, response: Response| -> Result<Response, ErrorResponse> {
            let result = handshake(opts, req, response, client_id)?;
            match (opts.authenticate)(req) {
                Ok(d) => {
                    data = Some(d);
                    Ok(result)
                }
                Err(rejection) => Err(reject(rejection.status, rejection.body)),
            }
        };
        let hard_max = self.max_frame_bytes();
        let config = WebSocketConfig::default()
            .read_buffer_size(opts.read_buffer_size)
            .write_buffer_size(8 * 1024)
            .max_message_size(Some(hard_max))
            .max_frame_size(Some(hard_max));
        let clock = Arc::new(crate::lazy_read::ReadClock::default());
        let socket = tokio_tungstenite::accept_hdr_async_with_config(
            crate::lazy_read::LazyRead::new(stream, clock.clone()),
            callback,
            Some(config),
        )
        .await
        .map_err(Error::WebSocket)?;
        let Some(data) = data else { return Ok(()) };
        let (_, run) = self.open_transport(socket, client_id, data, Some(clock));
        run.await;
        Ok(())
    }

    /// Publishes to topics from outside handlers.
    pub fn publisher(&self) -> Publisher {
        self.inner.app.shared.publisher()
    }

    /// Starts a graceful shutdown: every connection is closed with 1001 "Server shutting down"
    /// (its close hooks run), and [`Server::run`](super::Server::run) stops accepting and returns
    /// once they are done.
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }
}

impl<D> Service<D> {
    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.inner.connections.load(Ordering::Relaxed)
    }

    /// Resolves when a graceful shutdown starts.
    pub(super) fn shutdown_started(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    /// How long graceful shutdown waits for connections to close.
    pub(super) fn shutdown_timeout(&self) -> Duration {
        self.inner.options.shutdown_timeout
    }
}

impl<D: Send + Sync + 'static> Service<D> {
    /// The largest inbound frame a transport accepts: the payload limit (4× in `Reject` mode),
    /// as `serve_stream` configures tungstenite.
    pub(crate) fn max_frame_bytes(&self) -> usize {
        let opts = &self.inner.options;
        match opts.payload_limit {
            PayloadLimit::Close => opts.max_payload_bytes,
            PayloadLimit::Reject => opts.max_payload_bytes.saturating_mul(4),
        }
    }

    /// A connection over a transport that is already open: what `serve_stream` does after its
    /// handshake, and what the testing harness does with its in-memory socket. Returns the connection and the
    /// future that runs it to its end (`on_open`, the read loop, `on_close`, cleanup).
    /// `read_clock` stamps `received_at` when the transport's reads go through `LazyRead`;
    /// without it each frame reads the clock.
    pub(crate) fn open_transport<T>(
        &self,
        socket: T,
        client_id: uuid::Uuid,
        data: D,
        read_clock: Option<Arc<crate::lazy_read::ReadClock>>,
    ) -> (Connection<D>, impl Future<Output = ()> + Send + 'static)
    where
        T: futures_util::Stream<
                Item = Result<
                    tokio_tungstenite::tungstenite::Message,
                    tokio_tungstenite::tungstenite::Error,
                >,
            > + futures_util::Sink<tokio_tungstenite::tungstenite::Message>
            + Unpin
            + Send
            + 'static,
    {
        let opts = &self.inner.options;
        let app = self.inner.app.clone();
        let conn = Connection::new(client_id, data, app.shared.clone());
        let loop_config = LoopConfig {
            max_payload_bytes: opts.max_payload_bytes,
            heartbeat_interval: opts.heartbeat_interval,
            heartbeat_timeout: opts.heartbeat_timeout,
            close_grace: Duration::from_secs(1),
            read_clock,
        };
        let shutdown = self.inner.shutdown.subscribe();
        let reader = Reader::new(conn.clone(), app, loop_config, JoinSet::new());
        // `run` itself, not a block around it: every capture of a block would keep a slot in the
        // future's state, which every idle connection holds.
        let run = read_loop::run(socket, reader, shutdown, self.inner.connections.clone());
        (conn, run)
    }
}
