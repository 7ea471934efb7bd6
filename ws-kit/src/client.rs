//! The Rust client (feature `client`): the server's own `#[derive(Message)]` structs over one
//! resilient WebSocket connection (PROTOCOL.md section 9).
//!
//! ```no_run
//! use ws_kit::Message;
//! use ws_kit::client::{Client, RequestOptions};
//! use std::time::Duration;
//!
//! #[derive(Message)]
//! #[rpc(response = Pong)]
//! struct Ping { text: String }
//!
//! #[derive(Message)]
//! struct Pong { reply: String }
//!
//! #[derive(Message)]
//! struct RoomMessage { text: String }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::builder("ws://127.0.0.1:3000")
//!     .token(|| Some("secret".to_string()))       // `?access_token=secret`, fetched on every (re)connect
//!     .on(|msg: RoomMessage| println!("{}", msg.text)) // server pushes and pub/sub deliveries
//!     .connect()
//!     .await?;
//!
//! let pong = client.request(&Ping { text: "hi".into() }).await?;   // typed reply: `Pong`
//! println!("{}", pong.reply);
//!
//! let options = RequestOptions::new().timeout(Duration::from_secs(2)); // also sent as `meta.timeoutMs`
//! match client.request_with(&Ping { text: "again".into() }, options).await {
//!     Ok(pong) => println!("{}", pong.reply),
//!     Err(e) => println!("failed: {e} (code {:?})", e.code()),
//! }
//! client.close().await;
//! # Ok(()) }
//! ```
//!
//! What it does for you:
//! - **Reconnects** after a drop with exponential backoff and full jitter (300 ms doubling to 10 s,
//!   unlimited attempts; see [`Reconnect`]); the token provider is asked again before every attempt;
//!   [`ClientBuilder::on_reconnect`] lets the app re-join its rooms.
//! - **Queues while offline**: [`Client::send`] and [`Client::request`] made while not connected wait
//!   in a queue of 1000 frames ([`QueuePolicy`]) and leave in order once the connection opens.
//! - **Requests**: a correlation id per request, a timeout (30 s by default) counted from the moment the
//!   frame is written to the socket, progress updates ([`Call::progress`]), `$ws:abort` when a [`Call`]
//!   is aborted or dropped, at most 1000 pending; every pending request fails with
//!   [`RequestError::ConnectionClosed`] when the connection drops, so none waits forever.
//! - **States** ([`State`]) observable through a `tokio::sync::watch` channel.
//! - **Dead connections**: with [`ClientBuilder::heartbeat`], `__heartbeat` frames go out and a
//!   connection silent for longer than the timeout is dropped and reconnected.
//!
//! Only `ws://` URLs are supported (this build of tungstenite has no TLS).

use crate::error::{ErrorCode, Issue};
use crate::message::{Message, PayloadOf, RpcMessage};
use crate::wire::{self, ServerFrame};
use futures_util::{Sink, SinkExt, StreamExt};
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior, Sleep};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_PENDING: usize = 1000;
const DEFAULT_QUEUE_CAPACITY: usize = 1000;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `close()` waits for queued frames and the server's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------------
// The client

/// A connection to a ws-kit (or WS-Kit) server that reconnects by itself.
///
/// Cheap to clone; every clone drives the same connection. When the last clone (of those made by
/// [`ClientBuilder::connect`] / [`ClientBuilder::connect_lazy`]) is dropped, the client closes.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    /// Closes the client when the last owning handle goes. `None` for the handle given to hooks, so
    /// a hook that keeps it does not keep the client alive.
    _owner: Option<Arc<Owner>>,
    /// The handle given to `on_reconnect`: its frames go ahead of the offline queue.
    in_hook: bool,
}

/// The state of the connection (PROTOCOL.md section 9).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum State {
    /// Closed for good: [`Client::close`] was called, the first connection failed, or reconnecting
    /// gave up ([`Reconnect::max_attempts`]).
    Closed,
    /// Making the first connection.
    Connecting,
    /// Connected: frames flow.
    Open,
    /// [`Client::close`] was called: flushing queued frames and closing.
    Closing,
    /// The connection dropped (or an attempt failed): waiting out the backoff, or trying again.
    Reconnecting,
}

impl Client {
    /// Connects with default options and waits until the connection is open.
    pub async fn connect(url: impl Into<String>) -> Result<Client, ClientError> {
        ClientBuilder::new(url).connect().await
    }

    /// A builder for a client with options (token, headers, reconnect, queue, timeouts, hooks).
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(url)
    }

    /// Sends a message (fire and forget).
    ///
    /// While the connection is not open the frame waits in the offline queue; it fails with
    /// [`ClientError::QueueFull`] (queue full, [`QueuePolicy::DropNewest`]), [`ClientError::Offline`]
    /// ([`QueuePolicy::Off`]) or [`ClientError::Closed`].
    pub fn send<M: Message>(&self, msg: &M) -> Result<(), ClientError> {
        let text = encode(msg, None, None)?;
        self.shared.enqueue(
            Outgoing {
                text,
                kind: Kind::Event,
            },
            self.in_hook,
        )
    }

    /// Sends a request; await the returned [`Call`] for its reply (`R::Response`).
    ///
    /// The frame is queued when this is called, not when the `Call` is first polled. The timeout is
    /// the client's ([`ClientBuilder::request_timeout`], 30 s by default), counted from the moment
    /// the frame is written to the socket.
    pub fn request<R: RpcMessage>(&self, req: &R) -> Call<R::Response> {
        self.request_with(req, RequestOptions::new())
    }

    /// [`Client::request`] with options, e.g. a timeout of its own (sent as `meta.timeoutMs`).
    pub fn request_with<R: RpcMessage>(
        &self,
        req: &R,
        options: RequestOptions,
    ) -> Call<R::Response> {
        let shared = &self.shared;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let cid: Arc<str> = Arc::from(format!("c{id}"));
        let (tx, rx) = mpsc::unbounded_channel();
        let timeout = options.timeout.unwrap_or(shared.config.request_timeout);
        let call = Call {
            shared: shared.clone(),
            cid: cid.clone(),
            rx,
            timeout,
            timer: None,
            outcome: None,
            done: false,
            aborted: false,
        };
        let text = match encode(req, Some(&cid), options.timeout.map(millis_ceil)) {
            Ok(text) => text,
            Err(e) => return call.failed(RequestError::Client(e)),
        };
        {
            let mut pending = shared.pending();
            if pending.len() >= shared.config.max_pending {
                drop(pending);
                return call.failed(RequestError::TooManyPending);
            }
            pending.insert(
                cid.clone(),
                Pending {
                    tx,
                    in_socket: false,
                },
            );
        }
        let out = Outgoing {
            text,
            kind: Kind::Rpc(cid.clone()),
        };
        if let Err(e) = shared.enqueue(out, self.in_hook) {
            shared.pending().remove(&*cid);
            return call.failed(RequestError::Client(e));
        }
        call
    }

    /// Calls `handler` with every `M` the server sends: direct sends and pub/sub deliveries.
    ///
    /// Frames that do not decode as `M` are skipped (and logged with `tracing`). Handlers run on the
    /// client's task, in arrival order: keep them short and never block in them (hand work to a
    /// channel or a task). To register before the first frame can arrive, use [`ClientBuilder::on`].
    pub fn on<M: Message>(&self, handler: impl Fn(M) + Send + Sync + 'static) {
        self.shared.add_handler(M::TYPE, erase(handler));
    }

    /// Every `M` the server sends from now on, as a stream (buffered without bound: read it, or drop
    /// it to unsubscribe).
    pub fn messages<M: Message>(&self) -> Messages<M> {
        let (tx, rx) = mpsc::unbounded_channel();
        let handler: Arc<DynHandler> = Arc::new(move |frame: &ServerFrame<'_>| {
            if tx.is_closed() {
                return false;
            }
            match decode::<M>(frame) {
                Ok(msg) => tx.send(msg).is_ok(),
                Err(e) => {
                    skip_undecodable(M::TYPE, &e);
                    true
                }
            }
        });
        self.shared.add_handler(M::TYPE, handler);
        Messages { rx }
    }

    /// The current state.
    pub fn state(&self) -> State {
        *self.shared.state.borrow()
    }

    /// A receiver that sees every state change (`changed().await`, `wait_for(..)`).
    pub fn watch_state(&self) -> watch::Receiver<State> {
        self.shared.state.subscribe()
    }

    /// Waits until the connection is open; `Err(Closed)` if the client closes first.
    pub async fn wait_open(&self) -> Result<(), ClientError> {
        let mut states = self.shared.state.subscribe();
        match states
            .wait_for(|s| matches!(s, State::Open | State::Closed))
            .await
        {
            Ok(s) if *s == State::Open => Ok(()),
            _ => Err(ClientError::Closed),
        }
    }

    /// Stops reconnecting, writes what is queued, closes the connection (code 1000) and waits until
    /// the state is [`State::Closed`]. Requests still waiting fail. Do not await it inside a handler.
    pub async fn close(&self) {
        self.shared.stop.send_replace(true);
        let mut states = self.shared.state.subscribe();
        let _ = states.wait_for(|s| *s == State::Closed).await;
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.shared.config.url)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// Closes the client when dropped (held by the owning [`Client`] handles).
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.stop.send_replace(true);
    }
}

// ---------------------------------------------------------------------------------------------
// Options

/// Builds a [`Client`]: `Client::builder(url)....connect().await`.
pub struct ClientBuilder {
    config: Config,
    handlers: Vec<(&'static str, Arc<DynHandler>)>,
    /// The first invalid header or subprotocol, reported by `connect`.
    invalid: Option<String>,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("url", &self.config.url)
            .finish_non_exhaustive()
    }
}

type TokenFuture = Pin<Box<dyn Future<Output = Option<String>> + Send>>;
type TokenProvider = Arc<dyn Fn() -> TokenFuture + Send + Sync>;
type ReconnectHook = Arc<dyn Fn(&Client) + Send + Sync>;
type ErrorHook = Arc<dyn Fn(&ServerError) + Send + Sync>;
/// A registered `on`/`messages` handler; returns false once it wants to be removed.
type DynHandler = dyn Fn(&ServerFrame<'_>) -> bool + Send + Sync;

struct Config {
    url: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    protocols: Vec<String>,
    token: Option<TokenProvider>,
    token_placement: TokenPlacement,
    reconnect: Reconnect,
    queue_policy: QueuePolicy,
    queue_capacity: usize,
    request_timeout: Duration,
    max_pending: usize,
    heartbeat: Option<(Duration, Duration)>,
    connect_timeout: Duration,
    on_reconnect: Option<ReconnectHook>,
    on_error: Option<ErrorHook>,
}

impl ClientBuilder {
    /// A builder for `url` (`ws://host:port/path`), with the defaults of PROTOCOL.md section 9.
    pub fn new(url: impl Into<String>) -> Self {
        ClientBuilder {
            config: Config {
                url: url.into(),
                headers: Vec::new(),
                protocols: Vec::new(),
                token: None,
                token_placement: TokenPlacement::default(),
                reconnect: Reconnect::default(),
                queue_policy: QueuePolicy::default(),
                queue_capacity: DEFAULT_QUEUE_CAPACITY,
                request_timeout: DEFAULT_REQUEST_TIMEOUT,
                max_pending: DEFAULT_MAX_PENDING,
                heartbeat: None,
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                on_reconnect: None,
                on_error: None,
            },
            handlers: Vec::new(),
            invalid: None,
        }
    }

    /// A token provider, called before every connection attempt (so a refreshed token is used on
    /// reconnect). `None` connects without a token. Where it goes: [`ClientBuilder::token_placement`].
    pub fn token<F>(mut self, provider: F) -> Self
    where
        F: Fn() -> Option<String> + Send + Sync + 'static,
    {
        self.config.token = Some(Arc::new(move || {
            let token = provider();
            Box::pin(async move { token })
        }));
        self
    }

    /// An async token provider (e.g. one that refreshes the token over HTTP), awaited before every
    /// connection attempt, within the connect timeout.
    pub fn token_async<F, Fut>(mut self, provider: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<String>> + Send + 'static,
    {
        self.config.token = Some(Arc::new(move || Box::pin(provider())));
        self
    }

    /// Where the token goes: `?access_token=` (the default) or the `bearer.<token>` subprotocol.
    pub fn token_placement(mut self, placement: TokenPlacement) -> Self {
        self.config.token_placement = placement;
        self
    }

    /// Adds a header to the upgrade request.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(name), Ok(value)) => self.config.headers.push((name, value)),
            _ => {
                self.invalid
                    .get_or_insert_with(|| format!("invalid header `{name}`"));
            }
        }
        self
    }

    /// Offers a subprotocol (in the order added; the token's `bearer.<token>` comes after them).
    pub fn protocol(mut self, protocol: impl Into<String>) -> Self {
        let protocol = protocol.into();
        if protocol.is_empty() || !protocol.bytes().all(is_token_char) {
            self.invalid
                .get_or_insert_with(|| format!("invalid subprotocol `{protocol}`"));
        } else {
            self.config.protocols.push(protocol);
        }
        self
    }

    /// Reconnect policy (default: 300 ms doubling to 10 s, full jitter, unlimited attempts).
    /// `Reconnect::never()` turns reconnecting off.
    pub fn reconnect(mut self, reconnect: Reconnect) -> Self {
        self.config.reconnect = reconnect;
        self
    }

    /// The offline queue: what happens to frames sent while not connected, and how many wait
    /// (default: [`QueuePolicy::DropNewest`], 1000 frames).
    pub fn offline_queue(mut self, policy: QueuePolicy, capacity: usize) -> Self {
        self.config.queue_policy = policy;
        self.config.queue_capacity = capacity;
        self
    }

    /// The default request timeout (30 s), counted from the moment the request is written.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout = timeout;
        self
    }

    /// How many requests may wait for replies at once (1000); more fail with
    /// [`RequestError::TooManyPending`].
    pub fn max_pending(mut self, max: usize) -> Self {
        self.config.max_pending = max;
        self
    }

    /// Sends `__heartbeat` every `interval` and drops (then reconnects) a connection from which
    /// nothing (`__heartbeat_ack` or any other frame) arrived for `timeout`. Off by default.
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.config.heartbeat = Some((interval, timeout));
        self
    }

    /// How long one connection attempt (token provider, TCP, upgrade) may take (10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Registers a handler before connecting, so it sees the first frames too ([`Client::on`]).
    pub fn on<M: Message>(mut self, handler: impl Fn(M) + Send + Sync + 'static) -> Self {
        self.handlers.push((M::TYPE, erase(handler)));
        self
    }

    /// Called after every successful reconnect (not the first connection), before the offline
    /// queue is flushed: frames it sends through the given client (re-joining rooms, say) go first.
    /// It runs on the client's task: send from it, do not block in it.
    pub fn on_reconnect(mut self, hook: impl Fn(&Client) + Send + Sync + 'static) -> Self {
        self.config.on_reconnect = Some(Arc::new(hook));
        self
    }

    /// Called with `ERROR` frames that answer no pending request (errors for sent events).
    pub fn on_error(mut self, hook: impl Fn(&ServerError) + Send + Sync + 'static) -> Self {
        self.config.on_error = Some(Arc::new(hook));
        self
    }

    /// Connects and waits until the connection is open. If this first attempt fails, the error is
    /// returned and nothing keeps trying (use [`ClientBuilder::connect_lazy`] to keep trying).
    pub async fn connect(self) -> Result<Client, ClientError> {
        let (first_tx, first_rx) = oneshot::channel();
        let client = self.start(Some(first_tx))?;
        match first_rx.await {
            Ok(Ok(())) => Ok(client),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Closed),
        }
    }

    /// Returns at once and connects in the background, retrying with the reconnect policy from the
    /// first attempt on; frames sent meanwhile wait in the offline queue. Must be called within a
    /// Tokio runtime. Fails only on an invalid URL, header or subprotocol.
    pub fn connect_lazy(self) -> Result<Client, ClientError> {
        self.start(None)
    }

    fn start(
        self,
        first: Option<oneshot::Sender<Result<(), ClientError>>>,
    ) -> Result<Client, ClientError> {
        if let Some(invalid) = self.invalid {
            return Err(ClientError::InvalidRequest(invalid));
        }
        let url = &self.config.url;
        if !(url.starts_with("ws://") || url.starts_with("wss://")) {
            return Err(ClientError::InvalidRequest(format!(
                "`{url}` is not a ws:// URL"
            )));
        }
        url.as_str()
            .into_client_request()
            .map_err(|e| ClientError::InvalidRequest(e.to_string()))?;
        let mut handlers: HashMap<&'static str, Vec<Arc<DynHandler>>> = HashMap::new();
        for (ty, handler) in self.handlers {
            handlers.entry(ty).or_default().push(handler);
        }
        let shared = Arc::new(Shared {
            config: self.config,
            state: watch::Sender::new(State::Connecting),
            stop: watch::Sender::new(false),
            outbox: Mutex::new(Outbox::default()),
            writer: Notify::new(),
            pending: Mutex::new(HashMap::new()),
            handlers: RwLock::new(handlers),
            next_id: AtomicU64::new(0),
        });
        tokio::spawn(run(shared.clone(), first));
        Ok(Client {
            _owner: Some(Arc::new(Owner(shared.clone()))),
            shared,
            in_hook: false,
        })
    }
}

/// Where the token goes in the upgrade request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenPlacement {
    /// A query parameter with this name: `?access_token=<token>` (the default), percent-encoded.
    Query(String),
    /// The subprotocol `bearer.<token>`, offered after the others ([`ClientBuilder::protocol`]).
    /// The token must be made of HTTP token characters.
    Subprotocol,
}

impl Default for TokenPlacement {
    fn default() -> Self {
        TokenPlacement::Query("access_token".to_string())
    }
}

/// What happens to a frame sent while the connection is not open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueuePolicy {
    /// Queue it; when the queue is full, refuse the new frame ([`ClientError::QueueFull`]). The default.
    #[default]
    DropNewest,
    /// Queue it; when the queue is full, drop the oldest queued frame (a dropped request fails
    /// with [`ClientError::QueueFull`]).
    DropOldest,
    /// Do not queue: [`ClientError::Offline`].
    Off,
}

/// Reconnect policy: exponential backoff with full jitter.
///
/// The delay before retry `n` (0 for the first retry after a drop) is drawn uniformly from
/// `[0, min(max, initial × 2ⁿ)]`; the count starts again at 0 once a connection opens.
///
/// ```
/// use std::time::Duration;
/// use ws_kit::client::Reconnect;
/// let policy = Reconnect::new().delays(Duration::from_millis(100), Duration::from_secs(1));
/// assert_eq!(policy.ceiling(0), Duration::from_millis(100));
/// assert_eq!(policy.ceiling(3), Duration::from_millis(800));
/// assert_eq!(policy.ceiling(4), Duration::from_secs(1));
/// assert!(policy.delay(3) <= Duration::from_millis(800));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reconnect {
    initial: Duration,
    max: Duration,
    max_attempts: Option<u32>,
    jitter: bool,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            initial: Duration::from_millis(300),
            max: Duration::from_secs(10),
            max_attempts: None,
            jitter: true,
        }
    }
}

impl Reconnect {
    /// The defaults: 300 ms doubling to 10 s, full jitter, unlimited attempts.
    pub fn new() -> Self {
        Reconnect::default()
    }

    /// Never reconnect: a dropped connection closes the client.
    pub fn never() -> Self {
        Reconnect::default().max_attempts(0)
    }

    /// The first delay and the largest.
    pub fn delays(mut self, initial: Duration, max: Duration) -> Self {
        self.initial = initial;
        self.max = max.max(initial);
        self
    }

    /// Gives up (and closes the client) after this many failed attempts in a row.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// Full jitter on (the default) or off (each delay is exactly its ceiling).
    pub fn jitter(mut self, full: bool) -> Self {
        self.jitter = full;
        self
    }

    /// The largest delay before retry `attempt`: `min(max, initial × 2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        self.initial
            .checked_mul(1u32 << attempt.min(31))
            .map_or(self.max, |d| d.min(self.max))
    }

    /// A delay before retry `attempt`: uniform in `[0, ceiling(attempt)]` with jitter, else the
    /// ceiling.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, fastrand::f64())
    }

    fn delay_with(&self, attempt: u32, unit: f64) -> Duration {
        let ceiling = self.ceiling(attempt);
        if self.jitter {
            ceiling.mul_f64(unit.clamp(0.0, 1.0))
        } else {
            ceiling
        }
    }
}

/// Options of one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestOptions {
    timeout: Option<Duration>,
}

impl RequestOptions {
    /// No options: the client's default timeout, no `meta.timeoutMs`.
    pub fn new() -> Self {
        RequestOptions::default()
    }

    /// A timeout for this request (counted from the moment its frame is written), also sent as
    /// `meta.timeoutMs` so the server cancels the handler at the same deadline.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

// ---------------------------------------------------------------------------------------------
// Calls and message streams

/// A request in flight: `.await` it for the reply; read progress with [`Call::progress`]; cancel
/// with [`Call::abort`] or by dropping it (both send `$ws:abort` once the request was written).
#[must_use = "a request is cancelled (`$ws:abort`) when its `Call` is dropped"]
pub struct Call<T> {
    shared: Arc<Shared>,
    cid: Arc<str>,
    rx: mpsc::UnboundedReceiver<Reply>,
    timeout: Duration,
    /// Runs from the moment the frame was written.
    timer: Option<Pin<Box<Sleep>>>,
    /// The result, once known and not yet returned.
    outcome: Option<Result<T, RequestError>>,
    /// No longer registered: answered, failed, timed out or cancelled.
    done: bool,
    /// `$ws:abort` was sent.
    aborted: bool,
}

// `T` is only ever moved out of `outcome`, never pinned.
impl<T> Unpin for Call<T> {}

impl<T> fmt::Debug for Call<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("correlation_id", &self.cid)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

enum Step<T> {
    Progress(T),
    Done(Result<T, RequestError>),
}

impl<T> Call<T> {
    /// The request's `meta.correlationId`.
    pub fn correlation_id(&self) -> &str {
        &self.cid
    }

    /// Asks the server to cancel the request. If it was written, `$ws:abort` goes out and the call
    /// then ends with the server's answer (normally [`ErrorCode::Cancelled`]); if it was still
    /// queued, it is removed and the call ends with [`RequestError::Aborted`].
    pub fn abort(&mut self) {
        if self.done || self.aborted {
            return;
        }
        self.aborted = true;
        let mut pending = self.shared.pending();
        match pending.get(&*self.cid).map(|p| p.in_socket) {
            Some(true) => {
                drop(pending);
                self.shared.push_control(abort_frame(&self.cid));
            }
            Some(false) => {
                pending.remove(&*self.cid);
                drop(pending);
                self.shared.unqueue(&self.cid);
                self.done = true;
                self.outcome = Some(Err(RequestError::Aborted));
            }
            // The terminal (or a failure) is already on its way.
            None => {}
        }
    }

    fn failed(mut self, err: RequestError) -> Self {
        self.done = true;
        self.outcome = Some(Err(err));
        self
    }

    /// Unregisters the request; tells the server if it was written.
    fn cancel(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let removed = self.shared.pending().remove(&*self.cid);
        match removed {
            Some(p) if !p.in_socket => self.shared.unqueue(&self.cid),
            // Written: tell the server, unless `abort()` already did.
            Some(_) if !self.aborted => self.shared.push_control(abort_frame(&self.cid)),
            _ => {}
        }
    }
}

impl<T: Message> Call<T> {
    /// The next progress update (`$ws:rpc-progress`, payload of the response type), or `None` once
    /// the request has ended (then await the call for its result). Progress does not extend the
    /// timeout. Updates nobody reads are discarded when the call is awaited.
    pub async fn progress(&mut self) -> Option<T> {
        if self.done {
            return None;
        }
        std::future::poll_fn(|cx| match self.poll_step(cx) {
            Poll::Ready(Step::Progress(update)) => Poll::Ready(Some(update)),
            Poll::Ready(Step::Done(result)) => {
                self.outcome = Some(result);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        })
        .await
    }

    fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Step<T>> {
        if let Some(outcome) = self.outcome.take() {
            return Poll::Ready(Step::Done(outcome));
        }
        if self.done {
            // Polled again after it returned.
            return Poll::Ready(Step::Done(Err(RequestError::Client(ClientError::Closed))));
        }
        loop {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Reply::Written(at))) => {
                    self.timer = Some(Box::pin(tokio::time::sleep_until(at + self.timeout)));
                }
                Poll::Ready(Some(Reply::Progress(text))) => {
                    let update =
                        wire::parse_server_frame(&text).and_then(|frame| decode::<T>(&frame));
                    return Poll::Ready(match update {
                        Ok(update) => Step::Progress(update),
                        Err(e) => {
                            self.cancel();
                            Step::Done(Err(RequestError::Decode(format!("progress: {e}"))))
                        }
                    });
                }
                Poll::Ready(Some(Reply::Terminal(text))) => {
                    self.done = true;
                    return Poll::Ready(Step::Done(terminal::<T>(&text)));
                }
                Poll::Ready(Some(Reply::Failed(e))) => {
                    self.done = true;
                    return Poll::Ready(Step::Done(Err(e)));
                }
                Poll::Ready(None) => {
                    self.done = true;
                    return Poll::Ready(Step::Done(Err(RequestError::ConnectionClosed)));
                }
                Poll::Pending => break,
            }
        }
        if let Some(timer) = self.timer.as_mut()
            && timer.as_mut().poll(cx).is_ready()
        {
            self.cancel();
            return Poll::Ready(Step::Done(Err(RequestError::Timeout)));
        }
        Poll::Pending
    }
}

impl<T: Message> Future for Call<T> {
    type Output = Result<T, RequestError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match ready!(this.poll_step(cx)) {
                Step::Progress(_) => continue,
                Step::Done(result) => return Poll::Ready(result),
            }
        }
    }
}

impl<T> Drop for Call<T> {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// The `M`s the server sends, from [`Client::messages`]. Also a `futures` `Stream`.
#[derive(Debug)]
pub struct Messages<M> {
    rx: mpsc::UnboundedReceiver<M>,
}

impl<M> Messages<M> {
    /// The next message; `None` once the client is closed.
    pub async fn recv(&mut self) -> Option<M> {
        self.rx.recv().await
    }
}

impl<M> futures_util::Stream for Messages<M> {
    type Item = M;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<M>> {
        self.rx.poll_recv(cx)
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Errors of connecting and sending.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL, a header or a subprotocol is not valid.
    InvalidRequest(String),
    /// The server refused the upgrade with this HTTP status and body (401 for a bad token).
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The response body.
        body: String,
    },
    /// Connecting failed: TCP, the WebSocket handshake, or the connect timeout (an I/O `TimedOut`).
    Connect(tungstenite::Error),
    /// The client is closed.
    Closed,
    /// Not connected, and the offline queue is full ([`QueuePolicy::DropNewest`]): the frame was
    /// dropped. Also the error of a queued request pushed out by [`QueuePolicy::DropOldest`].
    QueueFull,
    /// Not connected, and the offline queue is off ([`QueuePolicy::Off`]).
    Offline,
    /// The message could not be encoded as JSON.
    Encode(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::InvalidRequest(what) => write!(f, "invalid request: {what}"),
            ClientError::Rejected { status, body } => {
                write!(f, "the server refused the connection: HTTP {status} {body}")
            }
            ClientError::Connect(e) => write!(f, "could not connect: {e}"),
            ClientError::Closed => f.write_str("the client is closed"),
            ClientError::QueueFull => f.write_str("not connected and the offline queue is full"),
            ClientError::Offline => f.write_str("not connected (offline queue off)"),
            ClientError::Encode(e) => write!(f, "could not encode the message: {e}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Connect(e) => Some(e),
            _ => None,
        }
    }
}

/// Why a request failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum RequestError {
    /// The server answered with an error (`RPC_ERROR`).
    Server(ServerError),
    /// No reply within the timeout, counted from the moment the request was written
    /// (`$ws:abort` was sent).
    Timeout,
    /// The connection dropped after the request was written: the server may or may not have
    /// acted on it.
    ConnectionClosed,
    /// Too many requests wait for replies ([`ClientBuilder::max_pending`]).
    TooManyPending,
    /// Aborted ([`Call::abort`]) before it was written: the server never saw it.
    Aborted,
    /// The reply (or a progress update) did not decode as the response type.
    Decode(String),
    /// The request could not be sent (closed, offline, queue full, encoding).
    Client(ClientError),
}

impl RequestError {
    /// The server's error code, for [`RequestError::Server`].
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            RequestError::Server(e) => Some(e.code()),
            _ => None,
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Server(e) => write!(f, "server error: {e}"),
            RequestError::Timeout => f.write_str("the request timed out"),
            RequestError::ConnectionClosed => {
                f.write_str("the connection closed before the reply came")
            }
            RequestError::TooManyPending => f.write_str("too many pending requests"),
            RequestError::Aborted => f.write_str("the request was aborted before it was sent"),
            RequestError::Decode(e) => write!(f, "invalid reply: {e}"),
            RequestError::Client(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for RequestError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RequestError::Server(e) => Some(e),
            RequestError::Client(e) => Some(e),
            _ => None,
        }
    }
}

/// An error frame from the server (`RPC_ERROR` or `ERROR`), PROTOCOL.md section 4.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerError {
    code: ErrorCode,
    message: String,
    details: Option<Map<String, Value>>,
    retryable: Option<bool>,
    retry_after: Option<Duration>,
}

impl ServerError {
    /// The error code.
    pub fn code(&self) -> &ErrorCode {
        &self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The `details` object, if any.
    pub fn details(&self) -> Option<&Map<String, Value>> {
        self.details.as_ref()
    }

    /// Whether retrying may succeed: the frame's `retryable`, else what the code implies
    /// ([`ErrorCode::retryable`]); `None` when neither says (`INTERNAL`, custom codes).
    pub fn retryable(&self) -> Option<bool> {
        self.retryable.or_else(|| self.code.retryable())
    }

    /// How long to wait before retrying: the frame's `retryAfterMs`, else the code's default
    /// unless the error is not retryable.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after.or_else(|| {
            if self.retryable() == Some(false) {
                return None;
            }
            self.code
                .default_retry_after_ms()
                .map(Duration::from_millis)
        })
    }

    fn from_frame(frame: &ServerFrame<'_>) -> Result<ServerError, String> {
        #[derive(serde::Deserialize)]
        struct Payload {
            code: String,
            #[serde(default)]
            message: Option<String>,
            #[serde(default)]
            details: Option<Value>,
            #[serde(default)]
            retryable: Option<bool>,
            #[serde(default, rename = "retryAfterMs")]
            retry_after_ms: Option<u64>,
        }
        let raw = frame
            .payload
            .ok_or_else(|| format!("`{}` frame without payload", frame.ty))?;
        let p: Payload = serde_json::from_str(raw.get())
            .map_err(|e| format!("invalid error payload: {}", wire::strip_position(&e)))?;
        let code = ErrorCode::parse(&p.code);
        Ok(ServerError {
            message: p.message.unwrap_or_else(|| code.description().to_string()),
            details: match p.details {
                Some(Value::Object(map)) => Some(map),
                _ => None,
            },
            retryable: p.retryable,
            retry_after: p.retry_after_ms.map(Duration::from_millis),
            code,
        })
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ServerError {}

// ---------------------------------------------------------------------------------------------
// Shared state

struct Shared {
    config: Config,
    state: watch::Sender<State>,
    /// Set by `close()` or the last owner's drop.
    stop: watch::Sender<bool>,
    outbox: Mutex<Outbox>,
    /// Wakes the writer: frames are queued.
    writer: Notify,
    pending: Mutex<HashMap<Arc<str>, Pending>>,
    handlers: RwLock<HashMap<&'static str, Vec<Arc<DynHandler>>>>,
    next_id: AtomicU64,
}

/// Frames waiting for the writer. While not open, it is the offline queue.
#[derive(Default)]
struct Outbox {
    open: bool,
    closed: bool,
    queue: VecDeque<Outgoing>,
    /// While `on_reconnect` runs: its frames, to go ahead of the queue.
    hook: Option<Vec<Outgoing>>,
}

struct Outgoing {
    text: String,
    kind: Kind,
}

enum Kind {
    Event,
    Rpc(Arc<str>),
    /// `__heartbeat`, `$ws:abort`: for the current connection only.
    Control,
}

struct Pending {
    tx: mpsc::UnboundedSender<Reply>,
    /// Handed to the socket (the writer took it): a drop now fails it, a cancel sends `$ws:abort`.
    in_socket: bool,
}

enum Reply {
    Written(Instant),
    Progress(Box<str>),
    Terminal(Box<str>),
    Failed(RequestError),
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        lock(&self.outbox)
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<Arc<str>, Pending>> {
        lock(&self.pending)
    }

    fn set_state(&self, state: State) {
        self.state.send_if_modified(|current| {
            let changed = *current != state;
            *current = state;
            changed
        });
    }

    fn add_handler(&self, ty: &'static str, handler: Arc<DynHandler>) {
        self.handlers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(ty)
            .or_default()
            .push(handler);
    }

    /// Queues a frame (or applies the offline policy).
    fn enqueue(&self, out: Outgoing, in_hook: bool) -> Result<(), ClientError> {
        let evicted = {
            let mut outbox = self.outbox();
            if outbox.closed {
                return Err(ClientError::Closed);
            }
            if in_hook && let Some(frames) = outbox.hook.as_mut() {
                frames.push(out);
                return Ok(());
            }
            if outbox.open {
                outbox.queue.push_back(out);
                drop(outbox);
                self.writer.notify_one();
                return Ok(());
            }
            let capacity = self.config.queue_capacity;
            match self.config.queue_policy {
                QueuePolicy::Off => return Err(ClientError::Offline),
                _ if outbox.queue.len() < capacity => {
                    outbox.queue.push_back(out);
                    return Ok(());
                }
                QueuePolicy::DropOldest if capacity > 0 => {
                    let evicted = outbox.queue.pop_front();
                    outbox.queue.push_back(out);
                    evicted
                }
                _ => return Err(ClientError::QueueFull),
            }
        };
        if let Some(evicted) = evicted {
            self.fail_unsent(evicted, || RequestError::Client(ClientError::QueueFull));
        }
        Ok(())
    }

    /// Queues a frame for the current connection only (dropped when not open).
    fn push_control(&self, text: String) {
        let mut outbox = self.outbox();
        if outbox.open {
            outbox.queue.push_back(Outgoing {
                text,
                kind: Kind::Control,
            });
            drop(outbox);
            self.writer.notify_one();
        }
    }

    /// Removes a request's frame that was not written yet.
    fn unqueue(&self, cid: &str) {
        let is_other = |o: &Outgoing| !matches!(&o.kind, Kind::Rpc(c) if &**c == cid);
        let mut outbox = self.outbox();
        outbox.queue.retain(is_other);
        if let Some(frames) = outbox.hook.as_mut() {
            frames.retain(is_other);
        }
    }

    /// A frame that will never be written: its request (if it is one) fails.
    fn fail_unsent(&self, out: Outgoing, err: impl FnOnce() -> RequestError) {
        if let Kind::Rpc(cid) = out.kind {
            let removed = self.pending().remove(&*cid);
            if let Some(p) = removed {
                let _ = p.tx.send(Reply::Failed(err()));
            }
        }
    }

    /// Takes what is queued for the writer; marks requests as handed to the socket and leaves out
    /// those cancelled meanwhile.
    fn take_batch(&self) -> Batch {
        let mut batch = Batch::default();
        let taken = {
            let mut outbox = self.outbox();
            if !outbox.open || outbox.queue.is_empty() {
                return batch;
            }
            std::mem::take(&mut outbox.queue)
        };
        let mut pending = self.pending();
        for out in taken {
            match out.kind {
                Kind::Rpc(cid) => {
                    if let Some(p) = pending.get_mut(&*cid) {
                        p.in_socket = true;
                        batch.written.push(p.tx.clone());
                        batch.frames.push(out.text);
                    }
                }
                Kind::Event | Kind::Control => batch.frames.push(out.text),
            }
        }
        batch
    }

    /// A connection opened: the reconnect hook's frames, then the offline queue, go out.
    fn opened(self: &Arc<Self>, reconnected: bool) {
        if reconnected && let Some(hook) = &self.config.on_reconnect {
            self.outbox().hook = Some(Vec::new());
            let client = Client {
                shared: self.clone(),
                _owner: None,
                in_hook: true,
            };
            if std::panic::catch_unwind(AssertUnwindSafe(|| hook(&client))).is_err() {
                tracing::error!("ws-kit client: the on_reconnect hook panicked");
            }
        }
        {
            let mut outbox = self.outbox();
            if let Some(frames) = outbox.hook.take() {
                for out in frames.into_iter().rev() {
                    outbox.queue.push_front(out);
                }
            }
            outbox.open = true;
        }
        self.writer.notify_one();
        self.set_state(State::Open);
    }

    /// A connection ended: written requests fail; the rest of the queue waits (per the policy).
    fn connection_lost(&self) {
        let mut unsent = Vec::new();
        {
            let mut outbox = self.outbox();
            outbox.open = false;
            let capacity = self.config.queue_capacity;
            let queue = std::mem::take(&mut outbox.queue);
            let mut kept: VecDeque<Outgoing> = queue
                .into_iter()
                .filter(|o| !matches!(o.kind, Kind::Control))
                .collect();
            match self.config.queue_policy {
                QueuePolicy::Off => unsent.extend(kept.drain(..)),
                QueuePolicy::DropNewest => {
                    while kept.len() > capacity {
                        unsent.extend(kept.pop_back());
                    }
                }
                QueuePolicy::DropOldest => {
                    while kept.len() > capacity {
                        unsent.extend(kept.pop_front());
                    }
                }
            }
            outbox.queue = kept;
        }
        for out in unsent {
            self.fail_unsent(out, || RequestError::ConnectionClosed);
        }
        let mut failed = Vec::new();
        self.pending().retain(|_, p| {
            if p.in_socket {
                failed.push(p.tx.clone());
            }
            !p.in_socket
        });
        for tx in failed {
            let _ = tx.send(Reply::Failed(RequestError::ConnectionClosed));
        }
    }

    /// The client is done: everything still waiting fails, nothing more is accepted.
    fn finish(&self) {
        {
            let mut outbox = self.outbox();
            outbox.closed = true;
            outbox.open = false;
            outbox.hook = None;
            outbox.queue.clear();
        }
        let pending: Vec<Pending> = self.pending().drain().map(|(_, p)| p).collect();
        for p in pending {
            let _ =
                p.tx.send(Reply::Failed(RequestError::Client(ClientError::Closed)));
        }
        self.handlers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.set_state(State::Closed);
    }

    /// Routes one frame from the server: to its pending request, the error hook, or the handlers.
    fn dispatch(&self, text: &str) {
        let frame = match wire::parse_server_frame(text) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::warn!("ws-kit client: ignoring an invalid frame: {e}");
                return;
            }
        };
        let ty = &*frame.ty;
        if ty == "__heartbeat_ack" {
            return;
        }
        if let Some(cid) = frame.correlation_id.as_deref() {
            let mut pending = self.pending();
            if ty == "$ws:rpc-progress" {
                if let Some(p) = pending.get(cid) {
                    let _ = p.tx.send(Reply::Progress(text.into()));
                }
                return;
            }
            if let Some(p) = pending.remove(cid) {
                drop(pending);
                let _ = p.tx.send(Reply::Terminal(text.into()));
                return;
            }
            // A late answer to a request nobody waits for any more (timed out, dropped).
            if ty != "ERROR" {
                return;
            }
        }
        if ty == "ERROR" || ty == "RPC_ERROR" {
            match ServerError::from_frame(&frame) {
                Ok(err) => match &self.config.on_error {
                    Some(hook) => {
                        if std::panic::catch_unwind(AssertUnwindSafe(|| hook(&err))).is_err() {
                            tracing::error!("ws-kit client: the on_error hook panicked");
                        }
                    }
                    None => tracing::debug!("ws-kit client: server error: {err}"),
                },
                Err(e) => tracing::warn!("ws-kit client: ignoring an invalid error frame: {e}"),
            }
            return;
        }
        let handlers = self
            .handlers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(ty)
            .cloned();
        let Some(handlers) = handlers else {
            tracing::trace!("ws-kit client: no handler for `{ty}`");
            return;
        };
        let mut stale = Vec::new();
        for handler in &handlers {
            match std::panic::catch_unwind(AssertUnwindSafe(|| handler(&frame))) {
                Ok(true) => {}
                Ok(false) => stale.push(handler.clone()),
                Err(_) => tracing::error!("ws-kit client: a handler for `{ty}` panicked"),
            }
        }
        if !stale.is_empty()
            && let Some(list) = self
                .handlers
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(ty)
        {
            list.retain(|h| !stale.iter().any(|s| Arc::ptr_eq(h, s)));
        }
    }

    /// One connection attempt: the token, the request, the upgrade.
    async fn connect_once(&self) -> Result<Socket, ClientError> {
        let config = &self.config;
        let attempt = async {
            let token = match &config.token {
                Some(provider) => provider().await,
                None => None,
            };
            let mut url = config.url.clone();
            let mut protocols = config.protocols.clone();
            if let Some(token) = token {
                match &config.token_placement {
                    TokenPlacement::Query(name) => url = with_query_param(&url, name, &token),
                    TokenPlacement::Subprotocol => {
                        if token.is_empty() || !token.bytes().all(is_token_char) {
                            return Err(ClientError::InvalidRequest(
                                "the token cannot be sent as a subprotocol (not an HTTP token)"
                                    .into(),
                            ));
                        }
                        protocols.push(format!("bearer.{token}"));
                    }
                }
            }
            let mut request = url
                .as_str()
                .into_client_request()
                .map_err(|e| ClientError::InvalidRequest(e.to_string()))?;
            for (name, value) in &config.headers {
                request.headers_mut().append(name.clone(), value.clone());
            }
            if !protocols.is_empty() {
                let value = HeaderValue::from_str(&protocols.join(", "))
                    .map_err(|_| ClientError::InvalidRequest("invalid subprotocol".into()))?;
                request
                    .headers_mut()
                    .insert("sec-websocket-protocol", value);
            }
            match tokio_tungstenite::connect_async(request).await {
                Ok((socket, _response)) => Ok(socket),
                Err(tungstenite::Error::Http(response)) => Err(ClientError::Rejected {
                    status: response.status().as_u16(),
                    body: response
                        .body()
                        .as_deref()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .unwrap_or_default(),
                }),
                Err(e) => Err(ClientError::Connect(e)),
            }
        };
        match tokio::time::timeout(config.connect_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Connect(tungstenite::Error::Io(
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
            ))),
        }
    }
}

#[derive(Default)]
struct Batch {
    frames: Vec<String>,
    /// The requests among them, told when the batch is flushed.
    written: Vec<mpsc::UnboundedSender<Reply>>,
}

// ---------------------------------------------------------------------------------------------
// The connection task

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Marks the client closed however the task ends (returned, or dropped with its runtime).
struct FinishOnDrop(Arc<Shared>);

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// The client's one task: connect, run the connection, back off, reconnect.
async fn run(shared: Arc<Shared>, mut first: Option<oneshot::Sender<Result<(), ClientError>>>) {
    let _finish = FinishOnDrop(shared.clone());
    let mut stop = shared.stop.subscribe();
    let reconnect = shared.config.reconnect.clone();
    let mut retries: u32 = 0;
    let mut opened_before = false;
    loop {
        let attempt = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            attempt = shared.connect_once() => attempt,
        };
        match attempt {
            Ok(socket) => {
                retries = 0;
                let end = session(&shared, socket, opened_before, &mut first, &mut stop).await;
                opened_before = true;
                shared.connection_lost();
                if end == End::Stopped {
                    return;
                }
            }
            Err(e) => {
                if let Some(first) = first.take() {
                    let _ = first.send(Err(e));
                    return;
                }
                tracing::debug!("ws-kit client: connection attempt failed: {e}");
            }
        }
        if reconnect.max_attempts.is_some_and(|max| retries >= max) {
            return;
        }
        shared.set_state(State::Reconnecting);
        let delay = reconnect.delay(retries);
        retries = retries.saturating_add(1);
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// Transport error, end of stream, or the heartbeat timeout.
    Dropped,
    /// The server sent a close frame.
    ClosedByServer,
    /// `close()` or the last owner's drop.
    Stopped,
}

/// One open connection: reader, writer and heartbeat until it drops or the client stops.
async fn session(
    shared: &Arc<Shared>,
    socket: Socket,
    reconnected: bool,
    first: &mut Option<oneshot::Sender<Result<(), ClientError>>>,
    stop: &mut watch::Receiver<bool>,
) -> End {
    let (mut sink, mut stream) = socket.split();
    shared.opened(reconnected);
    if let Some(first) = first.take() {
        let _ = first.send(Ok(()));
    }
    let heartbeat = shared.config.heartbeat;
    let (interval, silence) = heartbeat.unwrap_or((Duration::from_secs(3600), Duration::MAX));
    let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let far = Duration::from_secs(86_400 * 365);
    let dead = tokio::time::sleep(silence.min(far));
    tokio::pin!(dead);

    let end = {
        let writer = write_loop(shared, &mut sink);
        tokio::pin!(writer);
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break End::Stopped,
                result = &mut writer => {
                    if let Err(e) = result {
                        tracing::debug!("ws-kit client: write failed: {e}");
                    }
                    break End::Dropped;
                }
                frame = stream.next() => {
                    if heartbeat.is_some() {
                        dead.as_mut().reset(Instant::now() + silence);
                    }
                    match frame {
                        Some(Ok(WsMessage::Text(text))) => shared.dispatch(text.as_str()),
                        Some(Ok(WsMessage::Binary(bytes))) => match std::str::from_utf8(&bytes) {
                            Ok(text) => shared.dispatch(text),
                            Err(_) => tracing::warn!("ws-kit client: ignoring a binary frame that is not UTF-8"),
                        },
                        Some(Ok(WsMessage::Close(_))) => break End::ClosedByServer,
                        Some(Err(_)) | None => break End::Dropped,
                        Some(Ok(_)) => {} // ping, pong: liveness only
                    }
                }
                _ = tick.tick(), if heartbeat.is_some() => shared.push_control(heartbeat_frame()),
                () = &mut dead, if heartbeat.is_some() => {
                    tracing::debug!("ws-kit client: no frame within the heartbeat timeout; reconnecting");
                    break End::Dropped;
                }
            }
        }
    };

    if end == End::ClosedByServer {
        // tungstenite queued the close reply when it read the server's close frame: send it, so
        // the server need not wait for it.
        let _ = tokio::time::timeout(CLOSE_GRACE, sink.close()).await;
    }
    if end == End::Stopped {
        shared.set_state(State::Closing);
        let batch = shared.take_batch();
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            for text in batch.frames {
                sink.feed(WsMessage::text(text)).await?;
            }
            sink.send(WsMessage::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })))
            .await?;
            while let Some(Ok(frame)) = stream.next().await {
                if matches!(frame, WsMessage::Close(_)) {
                    break;
                }
            }
            Ok::<(), tungstenite::Error>(())
        })
        .await;
    }
    end
}

/// The writer: takes whatever is queued, writes it as one batch, flushes, and starts the timeouts
/// of the requests in it.
async fn write_loop<S>(shared: &Shared, sink: &mut S) -> Result<(), tungstenite::Error>
where
    S: Sink<WsMessage, Error = tungstenite::Error> + Unpin,
{
    loop {
        let batch = shared.take_batch();
        if batch.frames.is_empty() {
            shared.writer.notified().await;
            continue;
        }
        for text in batch.frames {
            sink.feed(WsMessage::text(text)).await?;
        }
        sink.flush().await?;
        let now = Instant::now();
        for tx in batch.written {
            let _ = tx.send(Reply::Written(now));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding and decoding

/// `{"type", "payload" (only when the message has fields), "meta"}`.
fn encode<M: Message>(
    msg: &M,
    correlation_id: Option<&str>,
    timeout_ms: Option<u64>,
) -> Result<String, ClientError> {
    let frame = OutFrame {
        msg,
        correlation_id,
        timeout_ms,
        timestamp: now_ms(),
    };
    serde_json::to_string(&frame).map_err(|e| ClientError::Encode(wire::strip_position(&e)))
}

struct OutFrame<'a, M> {
    msg: &'a M,
    correlation_id: Option<&'a str>,
    timeout_ms: Option<u64>,
    timestamp: u64,
}

struct OutMeta<'a, M>(&'a OutFrame<'a, M>);

impl<M: Message> Serialize for OutFrame<'_, M> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("type", M::TYPE)?;
        if M::__HAS_PAYLOAD {
            map.serialize_entry("payload", &PayloadOf(self.msg))?;
        }
        map.serialize_entry("meta", &OutMeta(self))?;
        map.end()
    }
}

impl<M: Message> Serialize for OutMeta<'_, M> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let frame = self.0;
        let mut map = s.serialize_map(None)?;
        frame.msg.__serialize_meta(&mut map)?;
        map.serialize_entry("timestamp", &frame.timestamp)?;
        if let Some(id) = frame.correlation_id {
            map.serialize_entry("correlationId", id)?;
        }
        if let Some(ms) = frame.timeout_ms {
            map.serialize_entry("timeoutMs", &ms)?;
        }
        map.end()
    }
}

/// Decodes a server frame as `M`: the payload strictly (unknown keys, wrong types and failed
/// `#[validate]` rules are errors), the meta keys `M` declares; other meta keys (the standard
/// `timestamp`, a sender's own keys) are not `M`'s business and are ignored.
fn decode<M: Message>(frame: &ServerFrame<'_>) -> Result<M, String> {
    let meta: Vec<(Cow<'_, str>, &RawValue)> = frame
        .meta
        .iter()
        .filter(|(key, _)| M::__META_KEYS.contains(&&**key))
        .map(|(key, value)| (key.clone(), *value))
        .collect();
    let msg = M::__decode(frame.payload, &meta).map_err(issues_text)?;
    let mut issues = Vec::new();
    msg.__validate(&mut issues);
    if issues.is_empty() {
        Ok(msg)
    } else {
        Err(issues_text(issues))
    }
}

fn issues_text(issues: Vec<Issue>) -> String {
    issues
        .iter()
        .map(|i| format!("{}: {}", i.path, i.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A request's terminal frame: the reply, or the server's error.
fn terminal<T: Message>(text: &str) -> Result<T, RequestError> {
    let frame = wire::parse_server_frame(text).map_err(RequestError::Decode)?;
    match &*frame.ty {
        "RPC_ERROR" | "ERROR" => Err(match ServerError::from_frame(&frame) {
            Ok(e) => RequestError::Server(e),
            Err(e) => RequestError::Decode(e),
        }),
        ty if ty == T::TYPE => decode::<T>(&frame).map_err(RequestError::Decode),
        other => Err(RequestError::Decode(format!(
            "expected a `{}` reply, got `{other}`",
            T::TYPE
        ))),
    }
}

fn erase<M: Message>(handler: impl Fn(M) + Send + Sync + 'static) -> Arc<DynHandler> {
    Arc::new(move |frame: &ServerFrame<'_>| {
        match decode::<M>(frame) {
            Ok(msg) => handler(msg),
            Err(e) => skip_undecodable(M::TYPE, &e),
        }
        true
    })
}

fn skip_undecodable(ty: &str, error: &str) {
    tracing::warn!("ws-kit client: skipping a `{ty}` frame that does not decode: {error}");
}

fn abort_frame(cid: &str) -> String {
    serde_json::json!({ "type": "$ws:abort", "meta": { "correlationId": cid } }).to_string()
}

fn heartbeat_frame() -> String {
    format!(
        "{{\"type\":\"__heartbeat\",\"meta\":{{\"timestamp\":{}}}}}",
        now_ms()
    )
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whole milliseconds, rounded up, at least 1 (`meta.timeoutMs` must be positive).
fn millis_ceil(d: Duration) -> u64 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
}

/// `url` with `name=value` appended to its query; `ws://host` gets the path `/` first.
fn with_query_param(url: &str, name: &str, value: &str) -> String {
    let mut url = url.to_string();
    if let Some(scheme_end) = url.find("://").map(|i| i + 3) {
        let rest = &url[scheme_end..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if !rest[authority_end..].starts_with('/') {
            url.insert(scheme_end + authority_end, '/');
        }
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!(
        "{url}{sep}{}={}",
        percent_encode(name),
        percent_encode(value)
    )
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// RFC 7230 `tchar`, what a subprotocol name is made of.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_full_jitter() {
        let policy = Reconnect::new();
        let ceilings: Vec<u64> = (0..8)
            .map(|n| policy.ceiling(n).as_millis() as u64)
            .collect();
        assert_eq!(ceilings, [300, 600, 1200, 2400, 4800, 9600, 10_000, 10_000]);
        assert_eq!(policy.ceiling(1000), Duration::from_secs(10));
        assert_eq!(policy.delay_with(2, 0.0), Duration::ZERO);
        assert_eq!(policy.delay_with(2, 0.5), Duration::from_millis(600));
        assert_eq!(policy.delay_with(2, 1.0), Duration::from_millis(1200));
        for n in 0..20 {
            assert!(policy.delay(n) <= policy.ceiling(n));
        }
        let fixed = Reconnect::new().jitter(false);
        assert_eq!(fixed.delay(3), Duration::from_millis(2400));
        assert_eq!(Reconnect::never().max_attempts, Some(0));
    }

    #[test]
    fn timeout_ms_rounds_up_and_is_positive() {
        assert_eq!(millis_ceil(Duration::from_millis(250)), 250);
        assert_eq!(millis_ceil(Duration::from_micros(250_001)), 251);
        assert_eq!(millis_ceil(Duration::ZERO), 1);
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(percent_encode("a b&c=d/é~"), "a%20b%26c%3Dd%2F%C3%A9~");
        assert!(is_token_char(b'.') && !is_token_char(b' ') && !is_token_char(b','));
        assert_eq!(
            with_query_param("ws://h:1", "access_token", "t 1"),
            "ws://h:1/?access_token=t%201"
        );
        assert_eq!(
            with_query_param("ws://h:1?x=/", "t", "v"),
            "ws://h:1/?x=/&t=v"
        );
        assert_eq!(
            with_query_param("ws://h/ws?x=1", "t", "v"),
            "ws://h/ws?x=1&t=v"
        );
    }
}
