//! [`ServeOptions`]: where to listen, how to authenticate, and the limits of every connection.

use super::admission::default_max_connections;
use super::handshake::{AuthHook, HttpResponse, IntoAuth, PageHook, UpgradeRequest};
use crate::connection::shared::Limits;
use crate::outbound::OverflowPolicy;
use std::sync::Arc;
use std::time::Duration;

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

/// Server options. Defaults follow docs/protocol.md.
pub struct ServeOptions<D> {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) path: Option<String>,
    pub(super) authenticate: AuthHook<D>,
    pub(super) pages: Option<PageHook>,
    pub(super) allowed_origins: Option<Vec<String>>,
    pub(super) subprotocols: Vec<String>,
    pub(super) max_payload_bytes: usize,
    pub(super) payload_limit: PayloadLimit,
    pub(super) max_inflight_rpcs: usize,
    pub(super) max_queued_bytes: usize,
    pub(super) overflow: OverflowPolicy,
    pub(super) max_topics_per_connection: usize,
    pub(super) max_rpc_timeout: Option<Duration>,
    pub(super) progress_data_compat: bool,
    pub(super) heartbeat_interval: Duration,
    pub(super) heartbeat_timeout: Duration,
    pub(super) read_buffer_size: usize,
    pub(super) shutdown_timeout: Duration,
    pub(super) handshake_timeout: Duration,
    pub(super) max_connections: usize,
    pub(super) max_connections_per_ip: usize,
    pub(super) unfinished_message_budget: usize,
    #[cfg(feature = "tls")]
    pub(super) tls: Option<super::tls::TlsConfig>,
}

impl<D> std::fmt::Debug for ServeOptions<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("path", &self.path)
            .field("allowed_origins", &self.allowed_origins)
            .field("subprotocols", &self.subprotocols)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("payload_limit", &self.payload_limit)
            .field("max_inflight_rpcs", &self.max_inflight_rpcs)
            .field("max_queued_bytes", &self.max_queued_bytes)
            .field("overflow", &self.overflow)
            .field("max_topics_per_connection", &self.max_topics_per_connection)
            .field("max_rpc_timeout", &self.max_rpc_timeout)
            .field("progress_data_compat", &self.progress_data_compat)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("heartbeat_timeout", &self.heartbeat_timeout)
            .field("read_buffer_size", &self.read_buffer_size)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("unfinished_message_budget", &self.unfinished_message_budget)
            .finish_non_exhaustive()
    }
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
    /// `None` (401 `Unauthorized`), or a [`Rejection`](super::Rejection).
    pub fn with_authenticate<F, R>(authenticate: F) -> Self
    where
        F: Fn(&UpgradeRequest) -> R + Send + Sync + 'static,
        R: IntoAuth<D>,
    {
        Self::with_hook(AuthHook::Sync(Arc::new(move |req| {
            authenticate(req).into_auth()
        })))
    }

    /// Options whose upgrades go through an asynchronous `authenticate` (see
    /// [`ServeOptions::authenticate_async`]).
    pub fn with_authenticate_async<F, Fut, R>(authenticate: F) -> Self
    where
        F: Fn(UpgradeRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoAuth<D>,
    {
        Self::with_hook(async_hook(authenticate))
    }

    fn with_hook(authenticate: AuthHook<D>) -> Self {
        ServeOptions {
            host: "127.0.0.1".into(),
            port: 3000,
            path: None,
            authenticate,
            pages: None,
            allowed_origins: None,
            subprotocols: Vec::new(),
            max_payload_bytes: 1024 * 1024,
            payload_limit: PayloadLimit::Close,
            max_inflight_rpcs: 1000,
            max_queued_bytes: 1024 * 1024,
            overflow: OverflowPolicy::Close,
            max_topics_per_connection: 1000,
            max_rpc_timeout: None,
            progress_data_compat: false,
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(90),
            read_buffer_size: 128,
            shutdown_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            max_connections: default_max_connections(),
            max_connections_per_ip: 1024,
            unfinished_message_budget: 256 * 1024 * 1024,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Replaces the authentication hook (see [`ServeOptions::with_authenticate`]).
    pub fn authenticate<F, R>(mut self, authenticate: F) -> Self
    where
        F: Fn(&UpgradeRequest) -> R + Send + Sync + 'static,
        R: IntoAuth<D>,
    {
        self.authenticate = AuthHook::Sync(Arc::new(move |req| authenticate(req).into_auth()));
        self
    }

    /// Replaces the authentication hook with an asynchronous one: it gets the upgrade request
    /// and may await (a token store, a key fetch) before it returns the connection data, `None`
    /// (401) or a [`Rejection`](super::Rejection). Each upgrade runs its own hook, so a slow
    /// lookup delays only its own connection; the accept loop and the other handshakes go on.
    /// The lookup counts against `handshake_timeout`.
    ///
    /// ```
    /// use ws_kit::{ServeOptions, query_param};
    ///
    /// async fn user_of(token: &str) -> Option<String> {
    ///     // a database or a token service, in a real app
    ///     (token == "alice-token").then(|| "alice".to_string())
    /// }
    ///
    /// let options = ServeOptions::<Option<String>>::new().authenticate_async(|req| async move {
    ///     let token = query_param(&req, "access_token")?;
    ///     Some(Some(user_of(&token).await?))
    /// });
    /// ```
    pub fn authenticate_async<F, Fut, R>(mut self, authenticate: F) -> Self
    where
        F: Fn(UpgradeRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoAuth<D>,
    {
        self.authenticate = async_hook(authenticate);
        self
    }

    /// Answers plain HTTP `GET` requests (no `Upgrade: websocket`) on the WebSocket port: a
    /// page for people next to the socket for programs, as the chat example serves its page at
    /// `/`. The function sees the request (path, headers) and returns the response, written with
    /// `Content-Length` and `Connection: close`; `None` gives the usual `400 Not a WebSocket
    /// upgrade request`. Upgrades never reach it. For anything more than a few fixed pages, host
    /// the router on axum (feature `axum`).
    ///
    /// ```
    /// use ws_kit::{ServeOptions, http};
    ///
    /// let options = ServeOptions::<()>::new().pages(|req| {
    ///     (req.uri().path() == "/").then(|| {
    ///         http::Response::builder()
    ///             .header("content-type", "text/html; charset=utf-8")
    ///             .body(b"<h1>hello</h1>".to_vec())
    ///             .unwrap()
    ///     })
    /// });
    /// ```
    pub fn pages<F>(mut self, pages: F) -> Self
    where
        F: Fn(&UpgradeRequest) -> Option<HttpResponse> + Send + Sync + 'static,
    {
        self.pages = Some(Arc::new(pages));
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
    /// A request without `meta.timeoutMs` gets the cap as its deadline; past it the handler is
    /// stopped and the request ends with `RPC_ERROR` `DEADLINE_EXCEEDED`. Worth setting when
    /// clients may give up on a request without telling the server: the WS-Kit TypeScript client
    /// sends neither `$ws:abort` nor `meta.timeoutMs`, so without a cap a handler it abandoned
    /// runs until it ends on its own, if ever.
    pub fn max_rpc_timeout(mut self, timeout: Duration) -> Self {
        self.max_rpc_timeout = Some(timeout);
        self
    }

    /// Compatibility with the WS-Kit TypeScript client (0.10): every `$ws:rpc-progress` frame
    /// also carries its value under `data`, beside `payload` (off by default).
    ///
    /// The protocol puts a progress value under `payload`, like every other frame
    /// (docs/protocol.md, section 3), and so do WS-Kit's own server and ws-kit's clients. The
    /// WS-Kit client, however, reads it from `data`, so its `onProgress` callbacks get
    /// `undefined` from a server that follows the protocol. With this switch on, a progress frame
    /// is
    ///
    /// ```json
    /// {"type":"$ws:rpc-progress","meta":{"correlationId":"c1"},"payload":{"n":3},"data":{"n":3}}
    /// ```
    ///
    /// the same JSON value twice (encoded once, written twice). Clients that read `payload`
    /// (ws-kit's Rust client and testing harness among them) ignore the extra key. Nothing else
    /// changes: replies, errors, publications and every other frame are as without it. It costs
    /// the bytes of the value once more per progress frame, so it is off by default and the wire
    /// stays exactly WS-Kit's; turn it on when WS-Kit TypeScript clients use progress updates.
    ///
    /// ```
    /// use ws_kit::ServeOptions;
    ///
    /// let options = ServeOptions::<()>::new().progress_data_compat();
    /// ```
    pub fn progress_data_compat(mut self) -> Self {
        self.progress_data_compat = true;
        self
    }

    /// WebSocket pings every `interval` (default 30 s); a connection silent for `timeout`
    /// (default 90 s) is closed with 4002.
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.heartbeat_interval = interval;
        self.heartbeat_timeout = timeout;
        self
    }

    /// tungstenite's read buffer per connection (default 128 bytes; tungstenite's own default is
    /// 128 KiB), which is also the most it copies out of the socket's chunk per step. Socket
    /// reads are 8 KiB regardless: an adapter underneath reads in large chunks and keeps unread
    /// bytes only while there are some, so idle connections hold almost nothing. A larger buffer
    /// takes larger messages in fewer steps, at this many bytes more per connection.
    pub fn read_buffer_size(mut self, bytes: usize) -> Self {
        self.read_buffer_size = bytes;
        self
    }

    /// How long graceful shutdown waits for connections to close (default 5 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// How long a client may take from the TCP connection to the end of the WebSocket handshake
    /// (default 5 s); past it the socket is closed. Sockets that never finish their upgrade would
    /// otherwise hold file descriptors for good.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Sockets the instance holds at once, handshakes included (default: nine tenths of the
    /// process's open-files limit, or 10,000 where it cannot be read). One more gets
    /// `503 Too many connections` and is closed.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Sockets one remote address holds at once, handshakes included (default 1024). One more
    /// gets `503 Too many connections from this address`. Behind a reverse proxy every connection
    /// comes from the proxy's address: raise it there (`usize::MAX` turns it off).
    pub fn max_connections_per_ip(mut self, n: usize) -> Self {
        self.max_connections_per_ip = n;
        self
    }

    /// Bytes of messages not yet complete that all connections together may hold (default
    /// 256 MiB), beyond 16 KiB each that are always allowed: a large message arriving slowly
    /// parks its bytes until its last frame. The connection whose next read would go over it is
    /// closed with 1013 (Try Again Later); the others, and the process, go on.
    pub fn unfinished_message_budget(mut self, bytes: usize) -> Self {
        self.unfinished_message_budget = bytes;
        self
    }

    /// Serves `wss://`: every socket the server accepts completes a TLS handshake first (within
    /// `handshake_timeout`). Streams handed to [`Service::serve_stream`](super::Service::serve_stream)
    /// are taken as they are: TLS there is the caller's (axum's, a proxy's).
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls(mut self, tls: super::tls::TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    pub(super) fn limits(&self) -> Limits {
        Limits {
            max_inflight_rpcs: self.max_inflight_rpcs,
            max_queued_bytes: self.max_queued_bytes,
            overflow: self.overflow,
            max_topics_per_connection: self.max_topics_per_connection,
            max_rpc_timeout: self.max_rpc_timeout,
            progress_data_compat: self.progress_data_compat,
        }
    }
}

fn async_hook<D, F, Fut, R>(authenticate: F) -> AuthHook<D>
where
    F: Fn(UpgradeRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoAuth<D>,
{
    AuthHook::Async(Arc::new(move |req| {
        let lookup = authenticate(req);
        Box::pin(async move { lookup.await.into_auth() })
    }))
}
