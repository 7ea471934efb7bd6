//! [`Service`]: a built router with its options, serving WebSocket connections from any byte
//! stream (the accept loop's, or one accepted elsewhere).

use super::admission::Admission;
use super::handshake::{self, Rejection, UpgradeRequest};
use super::options::{PayloadLimit, ServeOptions};
use super::upgrade::{self, Refusal};
use crate::app::App;
use crate::connection::Connection;
use crate::error::Error;
use crate::lazy_read::{InboundBudget, LazyRead, ReadState};
use crate::outbound::Io;
use crate::publisher::Publisher;
use crate::pubsub::ClientId;
use crate::read_loop::{self, LoopConfig, Reader};
use crate::router::Router;
use futures_util::future::Either;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::Instrument;

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
    /// Sockets per instance and per address, from accept to close.
    admission: Arc<Admission>,
    /// Bytes of unfinished messages every connection together may hold.
    budget: Arc<InboundBudget>,
    /// Connections this service runs in tasks of its own (hosted on axum), for
    /// [`Service::graceful_shutdown`] to wait for.
    hosted: Arc<watch::Sender<usize>>,
    /// The read loop's settings, shared by every connection.
    loop_config: Arc<LoopConfig>,
}

impl<D: Send + Sync + 'static, S: Send + Sync + 'static> Router<D, S> {
    /// Builds the router into a [`Service`]. Fails if two routes handle one type tag.
    pub fn into_service(self, options: ServeOptions<D>) -> Result<Service<D>, Error> {
        let app = self.build(options.limits())?;
        crate::metrics::describe();
        let (shutdown, _) = watch::channel(false);
        let admission = Arc::new(Admission::new(
            options.max_connections,
            options.max_connections_per_ip,
        ));
        let budget = Arc::new(InboundBudget::new(options.unfinished_message_budget));
        Ok(Service {
            inner: Arc::new(ServiceInner {
                app,
                shutdown,
                connections: Arc::default(),
                admission,
                budget,
                hosted: Arc::new(watch::channel(0).0),
                loop_config: Arc::new(LoopConfig {
                    max_payload_bytes: options.max_payload_bytes,
                    heartbeat_interval: options.heartbeat_interval,
                    heartbeat_timeout: options.heartbeat_timeout,
                    close_grace: Duration::from_secs(1),
                }),
                options,
            }),
        })
    }
}

/// An upgraded stream: the socket, the client id, the connection data, the peer's address and
/// the read state.
type Upgraded<T, D> = (
    WebSocketStream<LazyRead<T>>,
    ClientId,
    D,
    Option<std::net::SocketAddr>,
);

impl<D: Send + Sync + 'static> Service<D> {
    /// Runs the WebSocket handshake on an accepted stream, then the connection, to its end.
    /// Returns the handshake error if the upgrade failed, was refused or took longer than the
    /// handshake timeout. The connection limits are the accept loop's ([`Server`](super::Server)):
    /// a stream handed over here is not counted.
    pub async fn serve_stream<T>(&self, stream: T) -> Result<(), Error>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.serve_stream_from(stream, None).await
    }

    /// [`Service::serve_stream`] for a stream whose peer address is known: the connection
    /// reports it ([`Connection::remote_addr`]), so rate limits can key on it, and the
    /// authentication hook finds it among the request's extensions
    /// (`req.extensions().get::<SocketAddr>()`).
    pub fn serve_stream_from<T>(
        &self,
        stream: T,
        remote_addr: Option<std::net::SocketAddr>,
    ) -> impl Future<Output = Result<(), Error>> + Send + '_
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.serve_owned(stream, remote_addr, ())
    }

    /// [`Service::serve_stream_from`] as a future of its own (it holds a clone of the service),
    /// holding `guard` until the connection ends: what the accept loop spawns for each socket.
    ///
    /// An `async` block rather than an `async fn` (which keeps its arguments twice), and the
    /// handshake boxed with its timer: its state (buffers, the timer) lives on the heap while it
    /// runs and is gone after. What stays is what every idle connection's task holds: the
    /// connection's future, this service and `guard`.
    pub(super) fn serve_owned<T, G>(
        &self,
        stream: T,
        remote_addr: Option<std::net::SocketAddr>,
        guard: G,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static + use<T, G, D>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        G: Send + 'static,
    {
        let service = self.clone();
        let handshake =
            Box::pin(async move {
                let upgrade = service.upgrade(stream, remote_addr);
                let upgraded =
                    match tokio::time::timeout(service.inner.options.handshake_timeout, upgrade)
                        .await
                    {
                        Ok(upgraded) => upgraded,
                        // The stream is dropped with the handshake: a client this slow gets no answer.
                        Err(_) => {
                            crate::metrics::upgrade_rejected(crate::metrics::reason::TIMEOUT);
                            Err(Error::HandshakeTimeout)
                        }
                    };
                if let Err(e) = &upgraded {
                    tracing::debug!(error = %e, peer = ?remote_addr, "upgrade failed");
                }
                upgraded.map(|upgraded| (upgraded, service))
            });
        async move {
            // `let .. else`, so nothing of the handshake's output outlives the move into the
            // connection (an `if let` would keep it in this state beside the connection).
            let (Some((socket, client_id, data, remote_addr)), service) = handshake.await? else {
                return Ok(());
            };
            let run = service
                .open_transport(socket, client_id, remote_addr, data)
                .1;
            drop(service);
            run.await;
            drop(guard);
            Ok(())
        }
    }

    /// The handshake: the request head read and checked (RFC 6455), then tungstenite's upgrade
    /// with the app's checks (path, Origin, subprotocol, `authenticate`). `None`: refused, the
    /// refusal sent.
    #[allow(clippy::type_complexity)]
    async fn upgrade<T>(
        &self,
        mut stream: T,
        remote_addr: Option<std::net::SocketAddr>,
    ) -> Result<Option<Upgraded<T, D>>, Error>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let opts = &self.inner.options;
        let (head, mut request) = match upgrade::read_head(&mut stream).await {
            Ok(upgrade::Head::Upgrade(head, request)) => (head, request),
            Ok(upgrade::Head::Plain(request, refusal)) => {
                let page = opts.pages.as_ref().map(|pages| {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pages(&request)))
                });
                let refusal = match page {
                    Some(Ok(Some(page))) => {
                        upgrade::send_page(&mut stream, page).await;
                        return Ok(None);
                    }
                    Some(Ok(None)) | None => {
                        crate::metrics::upgrade_rejected(crate::metrics::reason::MALFORMED);
                        refusal
                    }
                    // A page handler that panics costs its one request a 500.
                    Some(Err(_)) => Refusal::rejected(Rejection {
                        status: 500,
                        body: "Internal Server Error".into(),
                    }),
                };
                refusal.send(&mut stream).await;
                return Err(Error::Refused(refusal.status));
            }
            Err(Some(refusal)) => {
                crate::metrics::upgrade_rejected(crate::metrics::check_reason(refusal.status));
                refusal.send(&mut stream).await;
                return Err(Error::Refused(refusal.status));
            }
            Err(None) => return Ok(None),
        };
        if let Some(addr) = remote_addr {
            request.extensions_mut().insert(addr);
        }
        // The app's checks run before tungstenite takes the stream, so `authenticate` may await.
        let data = match handshake::admit(opts, request).await {
            Ok(data) => data,
            Err(rejection) => {
                let refusal = Refusal::rejected(rejection);
                refusal.send(&mut stream).await;
                return Err(Error::Refused(refusal.status));
            }
        };
        let client_id = uuid::Uuid::now_v7();
        #[allow(clippy::result_large_err)]
        let callback = |req: &Request, response: Response| -> Result<Response, ErrorResponse> {
            Ok(handshake::respond(opts, req, response, client_id))
        };
        let config = self.socket_config();
        let state = ReadState::new(Some(self.inner.budget.clone()));
        let socket = tokio_tungstenite::accept_hdr_async_with_config(
            LazyRead::new(stream, state, head),
            callback,
            Some(config),
        )
        .await
        .map_err(Error::WebSocket)?;
        crate::metrics::upgraded();
        Ok(Some((socket, client_id, data, remote_addr)))
    }

    /// tungstenite's configuration of every connection: buffers and frame limits.
    pub(super) fn socket_config(&self) -> WebSocketConfig {
        let opts = &self.inner.options;
        let hard_max = self.max_frame_bytes();
        let write_buffer = 8 * 1024;
        WebSocketConfig::default()
            .read_buffer_size(opts.read_buffer_size)
            .write_buffer_size(write_buffer)
            // What tungstenite itself queues for the peer (pongs, the close reply, frames being
            // written) is bounded too, by the same allowance as the outbound queue.
            .max_write_buffer_size(write_buffer + opts.max_queued_bytes.max(1))
            .max_message_size(Some(hard_max))
            .max_frame_size(Some(hard_max))
    }

    /// Runs the app's checks of an upgrade request (path, Origin, `authenticate`) as an upgrade
    /// would, without a socket: the testing harness's way in, and axum's.
    #[cfg_attr(not(any(feature = "testing", feature = "axum")), allow(dead_code))]
    pub(crate) async fn admit(&self, request: UpgradeRequest) -> Result<D, Rejection> {
        handshake::admit(&self.inner.options, request).await
    }

    /// This instance's open connections: all of them, a user's, a topic's (read-only views).
    pub fn clients(&self) -> crate::Clients<D> {
        self.inner.app.shared.clients()
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
        self.inner.app.shared.registry.close_all();
    }

    /// [`Service::shutdown`], then waits (at most `shutdown_timeout`) until the connections this
    /// service runs in tasks of its own, those hosted on axum, have closed and their close hooks
    /// have run. For axum's `with_graceful_shutdown`: the WebSocket connections end first, then
    /// axum stops accepting and drains its HTTP requests. New upgrades meanwhile get `503`.
    pub async fn graceful_shutdown(&self) {
        self.shutdown();
        let mut hosted = self.inner.hosted.subscribe();
        let _ = tokio::time::timeout(
            self.inner.options.shutdown_timeout,
            hosted.wait_for(|open| *open == 0),
        )
        .await;
    }
}

/// A connection this service runs in a task of its own, counted until dropped.
#[cfg_attr(not(feature = "axum"), allow(dead_code))]
pub(super) struct Hosted(Arc<watch::Sender<usize>>);

impl Drop for Hosted {
    fn drop(&mut self) {
        self.0.send_modify(|open| *open -= 1);
    }
}

impl<D> Service<D> {
    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.inner.connections.load(Ordering::Relaxed)
    }

    /// Sockets the accept loop holds: open connections and handshakes in progress, counted
    /// against `max_connections` (connections handed over with [`Service::serve_stream`] are
    /// not).
    pub fn socket_count(&self) -> usize {
        self.inner.admission.total()
    }

    /// Resolves when a graceful shutdown starts.
    pub(super) fn shutdown_started(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    /// Whether a graceful shutdown has started.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(super) fn shutting_down(&self) -> bool {
        *self.inner.shutdown.borrow()
    }

    /// Counts a connection run in a task of its own until the guard drops.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(super) fn hosted(&self) -> Hosted {
        self.inner.hosted.send_modify(|open| *open += 1);
        Hosted(self.inner.hosted.clone())
    }

    /// The bytes of unfinished messages all connections together may hold.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(super) fn inbound_budget(&self) -> Arc<InboundBudget> {
        self.inner.budget.clone()
    }

    /// The options the service was built with.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(super) fn options(&self) -> &ServeOptions<D> {
        &self.inner.options
    }

    /// How long graceful shutdown waits for connections to close.
    pub(super) fn shutdown_timeout(&self) -> Duration {
        self.inner.options.shutdown_timeout
    }

    /// How long an upgrade (and a TLS handshake before it) may take.
    #[cfg_attr(not(any(feature = "tls", feature = "axum")), allow(dead_code))]
    pub(super) fn handshake_timeout(&self) -> Duration {
        self.inner.options.handshake_timeout
    }

    /// The server's TLS, when it serves `wss://`.
    #[cfg(feature = "tls")]
    pub(super) fn tls(&self) -> Option<&super::tls::TlsConfig> {
        self.inner.options.tls.as_ref()
    }

    /// The socket counts the accept loop keeps.
    pub(super) fn admission(&self) -> &Arc<Admission> {
        &self.inner.admission
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
    /// A transport whose reads go through `LazyRead` stamps `received_at` (see
    /// `outbound::Socket`); with another each frame reads the clock.
    pub(crate) fn open_transport<T>(
        &self,
        socket: T,
        client_id: uuid::Uuid,
        remote_addr: Option<std::net::SocketAddr>,
        data: D,
    ) -> (
        Connection<D>,
        impl Future<Output = ()> + Send + 'static + use<D, T>,
    )
    where
        T: crate::outbound::Socket + Send + 'static,
    {
        let app = self.inner.app.clone();
        // A span per connection only when a subscriber wants it (see `run` below).
        let span = tracing::info_span!(
            "ws.connection",
            %client_id,
            remote = remote_addr.map(tracing::field::display),
            user = tracing::field::Empty,
        );
        let span = (!span.is_disabled()).then_some(span);
        let conn = Connection::new(
            client_id,
            remote_addr,
            data,
            app.shared.clone(),
            span.clone(),
        );
        let reader = Reader::new(conn.clone(), app, self.inner.loop_config.clone());
        // `run` itself, not a block around it: every capture of a block would keep a slot in the
        // future's state, which every idle connection holds.
        let run = read_loop::run(Io::new(socket), reader, self.inner.connections.clone());
        // Without a subscriber the connection's future is `run` as it is; with one, `run` inside
        // its span, boxed (so the plain case pays no span in every idle connection's state).
        let run = match span {
            None => Either::Left(run),
            Some(span) => Either::Right(Box::pin(run.instrument(span))),
        };
        (conn, run)
    }
}

#[cfg(test)]
mod sizes {
    use super::*;
    use crate::Router;
    use std::mem::{size_of, size_of_val};

    /// What every idle connection holds, in budgets that fail when a change fattens it (see
    /// ARCHITECTURE.md, "What an idle connection holds"). tokio rounds a task to 128 bytes and
    /// adds about 100 of its own: a connection's task future up to 640 bytes takes 768.
    #[tokio::test]
    async fn an_idle_connection_stays_within_its_budget() {
        let service = Router::new().into_service(ServeOptions::new()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();

        // The task the accept loop spawns per socket (its permit is 32 bytes).
        let task = service.serve_owned(client, None, [0u64; 4]);
        let task = size_of_val(&task);
        assert!(
            task <= 640,
            "a connection's task future is {task} bytes (budget 640)"
        );

        // The connection's future alone, from the open on.
        let socket = WebSocketStream::from_raw_socket(
            LazyRead::new(server, ReadState::new(None), Vec::new()),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        let (_, run) = service.open_transport(socket, uuid::Uuid::now_v7(), None, ());
        let run = size_of_val(&run);
        assert!(
            run <= 560,
            "the connection's future is {run} bytes (budget 560)"
        );

        // Its two allocations of its own: the connection and its outbound queue.
        let conn = size_of::<crate::connection::ConnInner<()>>();
        assert!(conn <= 184, "a connection is {conn} bytes (budget 184)");
        // (The `metrics` feature adds the queue's gauge handle.)
        let out = size_of::<crate::outbound::Outbound>();
        let budget = if cfg!(feature = "metrics") { 128 } else { 112 };
        assert!(
            out <= budget,
            "an outbound queue is {out} bytes (budget {budget})"
        );
        eprintln!("task future {task}, connection future {run}, connection {conn}, queue {out}");
    }
}
