//! Serving: options, the WebSocket handshake (auth, Origin, subprotocols, client id), the accept
//! loop and graceful shutdown.

use crate::connection::{self, LoopConfig};
use crate::context::Connection;
use crate::error::Error;
use crate::outbound::OverflowPolicy;
use crate::router::App;
use crate::router::{Limits, Publisher, Router};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// How an inbound frame over `max_payload_bytes` is treated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PayloadLimit {
    /// Close the connection with 1009 (Message Too Big). The default.
    #[default]
    Close,
    /// Reply `RESOURCE_EXHAUSTED` and keep the connection (up to 4× the limit; larger still closes).
    Reject,
}

/// An upgrade refused by `authenticate`: HTTP status and body (401 `Unauthorized` by default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The HTTP status.
    pub status: u16,
    /// The response body.
    pub body: String,
}

impl Rejection {
    /// 401 `Unauthorized`.
    pub fn unauthorized() -> Self {
        Rejection {
            status: 401,
            body: "Unauthorized".into(),
        }
    }

    /// 403 `Forbidden`.
    pub fn forbidden() -> Self {
        Rejection {
            status: 403,
            body: "Forbidden".into(),
        }
    }
}

/// What `authenticate` may return: `Option<D>` (None → 401) or `Result<D, Rejection>`.
pub trait IntoAuth<D> {
    /// Converts to the connection data or a rejection.
    fn into_auth(self) -> Result<D, Rejection>;
}

impl<D> IntoAuth<D> for Option<D> {
    fn into_auth(self) -> Result<D, Rejection> {
        self.ok_or_else(Rejection::unauthorized)
    }
}

impl<D> IntoAuth<D> for Result<D, Rejection> {
    fn into_auth(self) -> Result<D, Rejection> {
        self
    }
}

type AuthFn<D> = Arc<dyn Fn(&Request) -> Result<D, Rejection> + Send + Sync>;

/// Server options. Defaults follow PROTOCOL.md.
pub struct ServeOptions<D> {
    host: String,
    port: u16,
    path: Option<String>,
    authenticate: AuthFn<D>,
    allowed_origins: Option<Vec<String>>,
    subprotocols: Vec<String>,
    max_payload_bytes: usize,
    payload_limit: PayloadLimit,
    max_inflight_rpcs: usize,
    max_queued_bytes: usize,
    overflow: OverflowPolicy,
    max_topics_per_connection: usize,
    max_rpc_timeout: Option<Duration>,
    heartbeat_interval: Duration,
    heartbeat_timeout: Duration,
    read_buffer_size: usize,
    shutdown_timeout: Duration,
}

impl<D: Default + Send + Sync + 'static> Default for ServeOptions<D> {
    fn default() -> Self {
        Self::new()
    }
}

impl<D: Default + Send + Sync + 'static> ServeOptions<D> {
    /// Defaults: `127.0.0.1:3000`, any path, every upgrade accepted with `D::default()` data.
    pub fn new() -> Self {
        Self::with_authenticate(|_| Some(D::default()))
    }
}

impl<D: Send + Sync + 'static> ServeOptions<D> {
    /// Options whose upgrades go through `authenticate`, which sees the HTTP request (headers,
    /// query such as `?access_token=`, offered subprotocols) and returns the connection data,
    /// `None` (401 `Unauthorized`), or a [`Rejection`].
    pub fn with_authenticate<F, R>(authenticate: F) -> Self
    where
        F: Fn(&Request) -> R + Send + Sync + 'static,
        R: IntoAuth<D>,
    {
        ServeOptions {
            host: "127.0.0.1".into(),
            port: 3000,
            path: None,
            authenticate: Arc::new(move |req| authenticate(req).into_auth()),
            allowed_origins: None,
            subprotocols: Vec::new(),
            max_payload_bytes: 1024 * 1024,
            payload_limit: PayloadLimit::Close,
            max_inflight_rpcs: 1000,
            max_queued_bytes: 1024 * 1024,
            overflow: OverflowPolicy::Close,
            max_topics_per_connection: 1000,
            max_rpc_timeout: None,
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(90),
            read_buffer_size: 256,
            shutdown_timeout: Duration::from_secs(5),
        }
    }

    /// Replaces the authentication hook (see [`ServeOptions::with_authenticate`]).
    pub fn authenticate<F, R>(mut self, authenticate: F) -> Self
    where
        F: Fn(&Request) -> R + Send + Sync + 'static,
        R: IntoAuth<D>,
    {
        self.authenticate = Arc::new(move |req| authenticate(req).into_auth());
        self
    }

    /// The interface to bind (default `127.0.0.1`).
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }

    /// The port to bind (default 3000; 0 picks a free one).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Accept upgrades only on this path (default: any path); others get 404.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Accept only these `Origin`s; others get 403. Default: any origin.
    pub fn allowed_origins<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        origins: I,
    ) -> Self {
        self.allowed_origins = Some(origins.into_iter().map(Into::into).collect());
        self
    }

    /// Subprotocols the app speaks. The server selects the first protocol the client offered that
    /// is on this list; with none configured it echoes the client's first offer.
    pub fn subprotocols<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        protocols: I,
    ) -> Self {
        self.subprotocols = protocols.into_iter().map(Into::into).collect();
        self
    }

    /// Largest inbound frame (default 1 MiB) and what happens past it.
    pub fn max_payload_bytes(mut self, bytes: usize, mode: PayloadLimit) -> Self {
        self.max_payload_bytes = bytes;
        self.payload_limit = mode;
        self
    }

    /// RPCs in flight per connection (default 1000); more get `RESOURCE_EXHAUSTED`.
    pub fn max_inflight_rpcs(mut self, n: usize) -> Self {
        self.max_inflight_rpcs = n;
        self
    }

    /// Bytes queued for one connection (default 1 MiB) and what happens past it.
    pub fn max_queued_bytes(mut self, bytes: usize, policy: OverflowPolicy) -> Self {
        self.max_queued_bytes = bytes;
        self.overflow = policy;
        self
    }

    /// Topics per connection (default 1000).
    pub fn max_topics_per_connection(mut self, n: usize) -> Self {
        self.max_topics_per_connection = n;
        self
    }

    /// The server's own cap on RPC deadlines (default: none; `meta.timeoutMs` alone decides).
    pub fn max_rpc_timeout(mut self, timeout: Duration) -> Self {
        self.max_rpc_timeout = Some(timeout);
        self
    }

    /// WebSocket pings every `interval` (default 30 s); a connection silent for `timeout`
    /// (default 90 s) is closed with 4002.
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.heartbeat_interval = interval;
        self.heartbeat_timeout = timeout;
        self
    }

    /// tungstenite's read buffer per connection (default 256 bytes; tungstenite's own default is
    /// 128 KiB). Socket reads are 8 KiB regardless: an adapter underneath reads in large chunks and
    /// keeps unread bytes only while there are some, so idle connections hold almost nothing.
    pub fn read_buffer_size(mut self, bytes: usize) -> Self {
        self.read_buffer_size = bytes;
        self
    }

    /// How long graceful shutdown waits for connections to close (default 5 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    fn limits(&self) -> Limits {
        Limits {
            max_inflight_rpcs: self.max_inflight_rpcs,
            max_queued_bytes: self.max_queued_bytes,
            overflow: self.overflow,
            max_topics_per_connection: self.max_topics_per_connection,
            max_rpc_timeout: self.max_rpc_timeout,
        }
    }
}

/// A built router with its options: serves WebSocket connections from any byte stream.
///
/// Cheap to clone. Use it to hand over connections accepted elsewhere
/// ([`Service::serve_stream`]), to publish, and to shut down.
pub struct Service<D> {
    inner: Arc<ServiceInner<D>>,
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
    connections: AtomicUsize,
}

impl<D: Send + Sync + 'static> Router<D> {
    /// Builds the router into a [`Service`]. Fails if two routes handle one type tag.
    pub fn into_service(self, options: ServeOptions<D>) -> Result<Service<D>, Error> {
        let app = self.build(options.limits())?;
        let (shutdown, _) = watch::channel(false);
        Ok(Service {
            inner: Arc::new(ServiceInner {
                app,
                options,
                shutdown,
                connections: AtomicUsize::new(0),
            }),
        })
    }
}

impl<D: Send + Sync + 'static> Service<D> {
    /// Runs the WebSocket handshake on an accepted stream, then the connection, to its end.
    /// Returns the handshake error if the upgrade failed or was refused.
    pub async fn serve_stream<S>(&self, stream: S) -> Result<(), Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
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
        self.inner.app.publisher()
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.inner.connections.load(Ordering::Relaxed)
    }

    /// Starts a graceful shutdown: every connection is closed with 1001 "Server shutting down"
    /// (its close hooks run), and [`Server::run`] stops accepting and returns once they are done.
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
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
    pub(crate) fn open_transport<S>(
        &self,
        socket: S,
        client_id: uuid::Uuid,
        data: D,
        read_clock: Option<Arc<crate::lazy_read::ReadClock>>,
    ) -> (Connection<D>, impl Future<Output = ()> + Send + 'static)
    where
        S: futures_util::Stream<
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
        let conn = Connection::new(client_id, data, self.inner.app.clone());
        let loop_config = LoopConfig {
            max_payload_bytes: opts.max_payload_bytes,
            heartbeat_interval: opts.heartbeat_interval,
            heartbeat_timeout: opts.heartbeat_timeout,
            close_grace: Duration::from_secs(1),
            read_clock,
        };
        let shutdown = self.inner.shutdown.subscribe();
        let inner = self.inner.clone();
        let run_conn = conn.clone();
        let run = async move {
            if *shutdown.borrow() {
                return;
            }
            inner.connections.fetch_add(1, Ordering::Relaxed);
            connection::run(socket, run_conn, loop_config, shutdown).await;
            inner.connections.fetch_sub(1, Ordering::Relaxed);
        };
        (conn, run)
    }
}

/// Checks path and Origin, picks the subprotocol and sets `x-client-id`.
// `ErrorResponse` is tungstenite's type; its size is not ours to choose.
#[allow(clippy::result_large_err)]
fn handshake<D>(
    opts: &ServeOptions<D>,
    req: &Request,
    mut response: Response,
    client_id: uuid::Uuid,
) -> Result<Response, ErrorResponse> {
    if opts
        .path
        .as_ref()
        .is_some_and(|path| req.uri().path() != path)
    {
        return Err(reject(404, "Not Found".into()));
    }
    if let Some(allowed) = &opts.allowed_origins {
        let origin = req.headers().get("origin").and_then(|o| o.to_str().ok());
        if !origin.is_some_and(|o| allowed.iter().any(|a| a == o)) {
            return Err(reject(403, "Forbidden".into()));
        }
    }
    let offered: Vec<&str> = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let selected = if opts.subprotocols.is_empty() {
        offered.first().copied()
    } else {
        offered
            .iter()
            .copied()
            .find(|p| opts.subprotocols.iter().any(|s| s == p))
    };
    let headers = response.headers_mut();
    if let Some(protocol) = selected.and_then(|p| HeaderValue::from_str(p).ok()) {
        headers.insert("sec-websocket-protocol", protocol);
    }
    if let Ok(id) = HeaderValue::from_str(&client_id.to_string()) {
        headers.insert("x-client-id", id);
    }
    Ok(response)
}

fn reject(status: u16, body: String) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(body));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::UNAUTHORIZED);
    response
}

/// The value of a query parameter of the upgrade request (`?access_token=...`), percent-decoded.
pub fn query_param(req: &Request, name: &str) -> Option<String> {
    let query = req.uri().query()?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key) == name).then(|| percent_decode(value))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A listening server: binds, accepts, and shuts down gracefully.
///
/// ```no_run
/// # async fn run() -> Result<(), ws_kit::Error> {
/// let router = ws_kit::Router::<()>::new();
/// let server = ws_kit::Server::bind(router, ws_kit::ServeOptions::new().port(0)).await?;
/// println!("listening on ws://{}", server.local_addr());
/// server.run().await
/// # }
/// ```
pub struct Server<D> {
    listener: TcpListener,
    service: Service<D>,
}

impl<D: Send + Sync + 'static> Server<D> {
    /// Builds the router and binds `host:port` from the options.
    pub async fn bind(router: Router<D>, options: ServeOptions<D>) -> Result<Self, Error> {
        let addr = format!("{}:{}", options.host, options.port);
        let service = router.into_service(options)?;
        let listener = TcpListener::bind(addr).await?;
        Ok(Server { listener, service })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The service: publish, count connections, shut down.
    pub fn service(&self) -> Service<D> {
        self.service.clone()
    }

    /// Accepts connections until [`Service::shutdown`], then closes them all (1001) and returns
    /// once their close hooks ran (or `shutdown_timeout` passed).
    pub async fn run(self) -> Result<(), Error> {
        let mut shutdown = self.service.inner.shutdown.subscribe();
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let (stream, _) = match accepted {
                        Ok(pair) => pair,
                        // Out of file descriptors and the like: keep serving the others.
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let service = self.service.clone();
                    connections.spawn(async move {
                        if let Err(e) = service.serve_stream(stream).await {
                            tracing::debug!(error = %e, "upgrade failed");
                        }
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                () = async { let _ = shutdown.wait_for(|stop| *stop).await; } => break,
            }
        }
        drop(self.listener);
        let timeout = self.service.inner.options.shutdown_timeout;
        let drained = tokio::time::timeout(timeout, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            connections.abort_all();
        }
        Ok(())
    }

    /// Runs until Ctrl-C (or SIGTERM on Unix), then shuts down gracefully.
    pub async fn run_until_signal(self) -> Result<(), Error> {
        let service = self.service();
        tokio::spawn(async move {
            shutdown_signal().await;
            service.shutdown();
        });
        self.run().await
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Binds and serves until Ctrl-C, printing `listening on ws://host:port`.
pub async fn serve<D: Send + Sync + 'static>(
    router: Router<D>,
    options: ServeOptions<D>,
) -> Result<(), Error> {
    let server = Server::bind(router, options).await?;
    println!("listening on ws://{}", server.local_addr());
    server.run_until_signal().await
}
