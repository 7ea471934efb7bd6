//! Testing handlers without sockets (feature `testing`).
//!
//! A [`TestServer`] is built from your [`Router`] the way [`Router::into_service`] builds a server,
//! and [`TestServer::connect`] opens a fake connection over an in-memory transport. Every frame a
//! test sends takes the same path as a frame from a socket — envelope parsing, strict decoding,
//! validation, middleware, the handler, encoding, the outbound queue and its writer — because it
//! *is* the same code: the connection loop is generic over its transport, and the harness only
//! replaces the socket. `on_open` runs on connect, `on_close` on close, the heartbeat pings the
//! fake client (which answers like a browser would, unless told not to).
//!
//! What the harness adds is observation: the frames sent to each connection, every publication
//! handed to the pub/sub engine (which still delivers it), and every `on_error` event.
//!
//! Time is tokio's: under `#[tokio::test(start_paused = true)]` handler sleeps, progress
//! intervals, heartbeat pings and `meta.timeoutMs` deadlines run in virtual time, so a test of a
//! 30-second deadline takes no real time. The harness itself waits only with tokio timers
//! ([`TestServer::timeout`]); the connection loop reads tokio's clock too (arrival times,
//! deadlines, the heartbeat's silence check), so a 90-second heartbeat timeout also passes in
//! virtual time.
//!
//! ```
//! use ws_kit::testing::TestServer;
//! use ws_kit::{handler, routes, Ctx, ErrorCode, Message, Router};
//!
//! #[derive(Message)]
//! #[rpc(response = Pong)]
//! struct Ping {
//!     #[validate(length(max = 10))]
//!     text: String,
//! }
//!
//! #[derive(Message, Debug)]
//! struct Pong {
//!     reply: String,
//! }
//!
//! #[handler]
//! async fn ping(ctx: Ctx<Ping>) {
//!     ctx.reply(Pong { reply: format!("Got: {}", ctx.payload.text) });
//! }
//!
//! // In a test file this body is `#[tokio::test(start_paused = true)] async fn ping() { .. }`.
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let server = TestServer::new(Router::new().routes(routes![ping]));
//! let conn = server.connect(()).await;
//!
//! let pong = conn.request(&Ping { text: "hi".into() }).await.unwrap();
//! assert_eq!(pong.reply, "Got: hi");
//!
//! let err = conn.request(&Ping { text: "far too long".into() }).await.unwrap_err();
//! assert_eq!(err.code(), &ErrorCode::InvalidArgument);
//! assert_eq!(err.details().unwrap()["issues"][0]["path"], "payload.text");
//! assert_eq!(server.errors().len(), 1); // seen by `on_error` too
//! # }
//! ```
//!
//! Besides requests: [`TestConnection::send`] / [`send_raw`](TestConnection::send_raw) (any
//! text, to test malformed frames), [`recv::<M>`](TestConnection::recv) /
//! [`recv_json`](TestConnection::recv_json) / [`recv_error`](TestConnection::recv_error) for the
//! next frame, [`frames`](TestConnection::frames) for all of them,
//! [`expect_silence`](TestConnection::expect_silence),
//! [`request_with_progress`](TestConnection::request_with_progress),
//! [`start_request`](TestConnection::start_request) (then [`PendingRequest::abort`] or
//! [`PendingRequest::outcome`]), [`close`](TestConnection::close) and
//! [`closed`](TestConnection::closed); on the server, [`publications`](TestServer::publications)
//! and [`errors`](TestServer::errors).
//!
//! Failures of the test itself — no frame within the timeout, a frame of another type than
//! expected — panic with the frames involved, like an assertion. What the server answers
//! (an `RPC_ERROR`, say) is a value.

use crate::context::Connection;
use crate::error::{ErrorCode, WsError};
use crate::message::{Message, RpcMessage};
use crate::pubsub::{ClientId, PubSub, PublishResult, Subscriber};
use crate::router::{CloseInfo, ErrorEvent, Publisher, Router};
use crate::server::{ServeOptions, Service};
use crate::wire::{self, Layout, OutMeta, ServerFrame};
use futures_util::future::BoxFuture;
use futures_util::{Sink, Stream};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::{Error as WsTransportError, Message as WsMessage, Utf8Bytes};

/// How long the harness waits for something a test expects, unless told otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`TestConnection::expect_silence`] listens.
const SILENCE: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------------------------
// TestServer
// ---------------------------------------------------------------------------------------------

/// A router built for tests: opens fake connections and records publications and errors.
///
/// Built like a real server ([`Router::into_service`]), with three additions that change nothing
/// for the handlers: the router's pub/sub engine is wrapped by one that records each publication
/// and hands it on, an `on_error` hook records each [`ErrorEvent`], and a last `on_open` hook
/// tells [`TestServer::connect`] that the connection is open.
pub struct TestServer<D = ()> {
    service: Service<D>,
    shared: Arc<ServerShared>,
    timeout: Duration,
}

struct ServerShared {
    publications: Log<Publication>,
    errors: Log<ErrorEvent>,
    /// Connections waiting for their `on_open` hooks to finish.
    opening: Mutex<HashMap<ClientId, oneshot::Sender<()>>>,
}

impl<D: Send + Sync + 'static> TestServer<D> {
    /// A test server with the default limits of [`ServeOptions`] (heartbeat 30 s / 90 s, 1 MiB
    /// payloads, 1000 RPCs in flight, no RPC timeout cap).
    ///
    /// # Panics
    ///
    /// If two routes handle one type tag (what [`Router::into_service`] reports as an error).
    pub fn new(router: Router<D>) -> Self {
        Self::with_options(router, ServeOptions::with_authenticate(|_| None::<D>))
    }

    /// A test server with these options' limits: payload limit, in-flight RPCs, topics per
    /// connection, RPC timeout cap and heartbeat. Options about the handshake (host, port, path,
    /// Origin, subprotocols, `authenticate`) do not apply: [`TestServer::connect`] takes the
    /// connection data directly. The fake client reads frames as fast as they are written, so the
    /// outbound queue limit (`max_queued_bytes`) is not reached through it.
    ///
    /// # Panics
    ///
    /// If two routes handle one type tag (what [`Router::into_service`] reports as an error).
    pub fn with_options(router: Router<D>, options: ServeOptions<D>) -> Self {
        let shared = Arc::new(ServerShared {
            publications: Log::new(),
            errors: Log::new(),
            opening: Mutex::default(),
        });
        let recorder = shared.clone();
        let errors = shared.clone();
        let opened = shared.clone();
        let router = router
            .wrap_pubsub(move |inner| {
                Arc::new(RecordingPubSub {
                    inner,
                    shared: recorder,
                })
            })
            .on_error(move |event| errors.errors.push(event.clone()))
            // Added last, so it runs after the application's own `on_open` hooks.
            .on_open(move |conn| {
                let waiting = lock(&opened.opening).remove(&conn.client_id());
                if let Some(waiting) = waiting {
                    let _ = waiting.send(());
                }
                std::future::ready(Ok(()))
            });
        let service = match router.into_service(options) {
            Ok(service) => service,
            Err(e) => panic!("the router does not build: {e}"),
        };
        TestServer {
            service,
            shared,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// How long the harness waits for what a test expects (a frame, a close, an error, `on_open`)
    /// before it panics. Default 10 s; under a paused clock this is virtual time, so raise it
    /// only for handlers that sleep longer.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Opens a fake connection with this per-connection data (what `authenticate` would return)
    /// and returns once the `on_open` hooks have run. If they fail, the connection is returned
    /// already closed (see [`TestConnection::closed`]).
    ///
    /// # Panics
    ///
    /// If `on_open` does not finish within the timeout.
    pub async fn connect(&self, data: D) -> TestConnection<D> {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(ConnShared {
            state: Mutex::default(),
            notify: Notify::new(),
            answer_pings: AtomicBool::new(true),
        });
        let socket = MemorySocket {
            inbound: rx,
            echo: tx.downgrade(),
            shared: shared.clone(),
            max_frame_bytes: self.service.max_frame_bytes(),
        };
        let (connection, run) =
            self.service
                .open_transport(socket, uuid::Uuid::now_v7(), data, None);
        let id = connection.client_id();
        let (opened_tx, opened) = oneshot::channel();
        lock(&self.shared.opening).insert(id, opened_tx);
        let ended = EndGuard(shared.clone());
        tokio::spawn(async move {
            run.await;
            drop(ended);
        });

        let wait = async {
            tokio::select! {
                _ = opened => {}
                () = shared.wait(|s| s.ended.then_some(())) => {}
            }
        };
        let result = tokio::time::timeout(self.timeout, wait).await;
        lock(&self.shared.opening).remove(&id);
        if result.is_err() {
            panic!("on_open did not finish within {:?}", self.timeout);
        }
        TestConnection {
            tx,
            shared,
            connection,
            timeout: self.timeout,
            next_id: AtomicU64::new(1),
        }
    }

    /// Every publication handed to the pub/sub engine so far, in call order (from handlers,
    /// hooks, [`TestServer::publisher`], `send_to_user`, `broadcast`...). A [`Publisher`] taken
    /// from the router before it was given to the harness holds the unwrapped engine: its
    /// publications are delivered but not recorded.
    pub fn publications(&self) -> Vec<Publication> {
        self.shared.publications.snapshot()
    }

    /// The next publication not yet returned by this method, waiting for it if needed.
    ///
    /// # Panics
    ///
    /// If none comes within the timeout.
    pub async fn next_publication(&self) -> Publication {
        match self.shared.publications.next(self.timeout).await {
            Some(publication) => publication,
            None => panic!(
                "no publication within {:?}; all so far: {:#?}",
                self.timeout,
                self.publications()
            ),
        }
    }

    /// Every `on_error` event so far, in order.
    pub fn errors(&self) -> Vec<ErrorEvent> {
        self.shared.errors.snapshot()
    }

    /// The next `on_error` event not yet returned by this method, waiting for it if needed.
    ///
    /// # Panics
    ///
    /// If none comes within the timeout.
    pub async fn next_error(&self) -> ErrorEvent {
        match self.shared.errors.next(self.timeout).await {
            Some(event) => event,
            None => panic!(
                "no on_error event within {:?}; all so far: {:#?}",
                self.timeout,
                self.errors()
            ),
        }
    }

    /// Publishes from outside handlers, through the recording engine.
    pub fn publisher(&self) -> Publisher {
        self.service.publisher()
    }

    /// The service underneath: [`Service::connection_count`], [`Service::shutdown`] (closes every
    /// fake connection with 1001, running the close hooks).
    pub fn service(&self) -> &Service<D> {
        &self.service
    }
}

/// A publication the pub/sub engine received: the topic, the frame as subscribers get it, and
/// the connection excluded from delivery (`exclude_self`).
#[derive(Clone, Debug, PartialEq)]
pub struct Publication {
    /// The topic (the framework's own topics start with `#`: `#client:<id>`, `#user:<id>`, `#all`).
    pub topic: String,
    /// The frame, parsed.
    pub frame: Value,
    /// The connection that does not receive it, if any.
    pub exclude: Option<ClientId>,
    text: String,
}

impl Publication {
    /// The frame's `type`.
    pub fn message_type(&self) -> &str {
        self.frame["type"].as_str().unwrap_or_default()
    }

    /// The frame's text, byte for byte as subscribers get it.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Decodes the frame as message `M`.
    ///
    /// # Panics
    ///
    /// If the frame is of another type or does not decode as `M`.
    pub fn decode<M: Message>(&self) -> M {
        decode_as::<M>(&self.text)
            .unwrap_or_else(|e| panic!("publication to `{}`: {e}", self.topic))
    }
}

/// Records publications, then hands them to the real engine (which delivers them).
struct RecordingPubSub {
    inner: Arc<dyn PubSub>,
    shared: Arc<ServerShared>,
}

impl PubSub for RecordingPubSub {
    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
        subscriber: Subscriber,
    ) -> BoxFuture<'a, Result<(), WsError>> {
        self.inner.subscribe(topic, subscriber)
    }

    fn unsubscribe<'a>(
        &'a self,
        topic: &'a str,
        client: ClientId,
    ) -> BoxFuture<'a, Result<(), WsError>> {
        self.inner.unsubscribe(topic, client)
    }

    fn publish(
        &self,
        topic: &str,
        frame: Utf8Bytes,
        exclude: Option<ClientId>,
    ) -> BoxFuture<'static, PublishResult> {
        // Recorded before delivery: a test that received the frame finds its record.
        self.shared.publications.push(Publication {
            topic: topic.to_string(),
            frame: serde_json::from_str(frame.as_str()).unwrap_or(Value::Null),
            exclude,
            text: frame.as_str().to_string(),
        });
        self.inner.publish(topic, frame, exclude)
    }

    fn subscriber_count<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Option<usize>> {
        self.inner.subscriber_count(topic)
    }
}

// ---------------------------------------------------------------------------------------------
// TestConnection
// ---------------------------------------------------------------------------------------------

/// A fake client connection: sends frames as a client would and reads what the server sent.
///
/// Frames from the server are captured in arrival order; the `recv` methods and requests read
/// them, each frame once. Dropping it is the client going away (the server sees 1006).
pub struct TestConnection<D = ()> {
    tx: mpsc::UnboundedSender<WsMessage>,
    shared: Arc<ConnShared>,
    connection: Connection<D>,
    timeout: Duration,
    next_id: AtomicU64,
}

impl<D: Send + Sync + 'static> TestConnection<D> {
    /// The connection's id, as handlers see it (`ctx.client_id()`).
    pub fn client_id(&self) -> ClientId {
        self.connection.client_id()
    }

    /// The server side of this connection: its data (`data()`), topics, user id.
    pub fn connection(&self) -> &Connection<D> {
        &self.connection
    }

    /// Sends a message as a client does: `{"type","payload","meta"}` (`payload` only when the
    /// message has fields, `meta` only when it has some).
    pub fn send<M: Message>(&self, msg: &M) {
        self.send_with(msg, Value::Null);
    }

    /// Sends a message with envelope meta: `correlationId`, `timeoutMs`, `idempotencyKey`, or
    /// anything else (`null` or `{}` for none).
    ///
    /// # Panics
    ///
    /// If `meta` is not an object (or `null`), or its `correlationId` is not a string: send such
    /// frames with [`TestConnection::send_raw`].
    pub fn send_with<M: Message>(&self, msg: &M, meta: Value) {
        let frame = encode_request(msg, meta);
        self.send_frame(WsMessage::Text(frame));
    }

    /// Sends a text frame as is: a `&str`/`String` verbatim, or a `serde_json::Value` encoded.
    pub fn send_raw(&self, frame: impl IntoRawFrame) {
        self.send_frame(WsMessage::text(frame.into_raw_frame()));
    }

    /// Sends any WebSocket frame (binary, ping, close...). Frames sent after the connection ended
    /// are dropped.
    pub fn send_frame(&self, frame: WsMessage) {
        let _ = self.tx.send(frame);
    }

    /// Sends a request with a fresh correlation id and waits for its terminal frame: the reply,
    /// or the `RPC_ERROR` as `Err`. Progress frames are read and dropped.
    ///
    /// # Panics
    ///
    /// If no terminal comes within the timeout, the connection closes first, or a frame for this
    /// request is neither progress, the response type nor an error.
    pub async fn request<M: RpcMessage>(&self, req: &M) -> Result<M::Response, WsError> {
        self.start_request(req, Value::Null).outcome().await.result
    }

    /// [`TestConnection::request`] with envelope meta (`timeoutMs`, say; a `correlationId` given
    /// here replaces the generated one).
    pub async fn request_with<M: RpcMessage>(
        &self,
        req: &M,
        meta: Value,
    ) -> Result<M::Response, WsError> {
        self.start_request(req, meta).outcome().await.result
    }

    /// [`TestConnection::request`], keeping the progress frames that came before the terminal.
    pub async fn request_with_progress<M: RpcMessage>(&self, req: &M) -> RpcOutcome<M::Response> {
        self.start_request(req, Value::Null).outcome().await
    }

    /// Sends a request and returns at once, to abort it or to interleave other frames; wait for
    /// its end with [`PendingRequest::outcome`]. The correlation id is generated unless `meta`
    /// has one.
    pub fn start_request<M: RpcMessage>(
        &self,
        req: &M,
        meta: Value,
    ) -> PendingRequest<M::Response> {
        let mut meta = match meta {
            Value::Null => Map::new(),
            Value::Object(map) => map,
            other => panic!("meta must be a JSON object, not {other}"),
        };
        let correlation_id = match meta.get("correlationId") {
            Some(Value::String(id)) => id.clone(),
            Some(other) => panic!("correlationId must be a string, not {other}"),
            None => {
                let id = format!("test-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
                meta.insert("correlationId".into(), Value::String(id.clone()));
                id
            }
        };
        self.send_with(req, Value::Object(meta));
        PendingRequest {
            correlation_id,
            tx: self.tx.clone(),
            shared: self.shared.clone(),
            timeout: self.timeout,
            response: PhantomData,
        }
    }

    /// Sends `$ws:abort` for a request.
    pub fn abort(&self, correlation_id: &str) {
        self.send_raw(
            serde_json::json!({"type": "$ws:abort", "meta": {"correlationId": correlation_id}}),
        );
    }

    /// The next unread frame, parsed.
    ///
    /// # Panics
    ///
    /// If none comes within the timeout, or the connection closes first.
    pub async fn recv_json(&self) -> Value {
        self.next_frame("a frame").await.value
    }

    /// The next unread frame's text, byte for byte (to check key order, say).
    ///
    /// # Panics
    ///
    /// If none comes within the timeout, or the connection closes first.
    pub async fn recv_text(&self) -> String {
        self.next_frame("a frame").await.text
    }

    /// The next unread frame, decoded as message `M` (a `ctx.send`, a reply, a publication).
    ///
    /// # Panics
    ///
    /// If the next frame is of another type (the panic shows it), does not decode as `M`, or
    /// none comes within the timeout.
    pub async fn recv<M: Message>(&self) -> M {
        let frame = self.next_frame(M::TYPE).await;
        decode_as::<M>(&frame.text).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The next unread frame, which must be an `ERROR` or `RPC_ERROR`, as a [`WsError`].
    ///
    /// # Panics
    ///
    /// If the next frame is something else, or none comes within the timeout.
    pub async fn recv_error(&self) -> WsError {
        let frame = self.next_frame("ERROR").await;
        let parsed = wire::parse_server_frame(&frame.text).unwrap_or_else(|e| panic!("{e}"));
        if parsed.ty != "ERROR" && parsed.ty != "RPC_ERROR" {
            panic!("expected an ERROR or RPC_ERROR frame, got: {}", frame.text);
        }
        decode_error(&parsed).unwrap_or_else(|e| panic!("{e}: {}", frame.text))
    }

    /// Every frame the server sent so far, read or not, in order.
    pub fn frames(&self) -> Vec<Value> {
        self.shared
            .lock()
            .frames
            .iter()
            .map(|f| f.value.clone())
            .collect()
    }

    /// Asserts that nothing arrives within 100 ms (virtual time under a paused clock): no unread
    /// frame, no close.
    ///
    /// # Panics
    ///
    /// If a frame is unread or the server closed the connection.
    pub async fn expect_silence(&self) {
        self.expect_silence_for(SILENCE).await;
    }

    /// Asserts that nothing arrives within `duration`.
    ///
    /// # Panics
    ///
    /// If a frame is unread or the server closed the connection.
    pub async fn expect_silence_for(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
        let state = self.shared.lock();
        let unread: Vec<&str> = state
            .frames
            .iter()
            .filter(|f| !f.read)
            .map(|f| f.text.as_str())
            .collect();
        assert!(unread.is_empty(), "expected silence, got: {unread:#?}");
        assert!(
            state.close.is_none(),
            "expected silence, the server closed: {:?}",
            state.close
        );
    }

    /// Closes the connection from the client side with `code` and waits until the server is
    /// done with it (its `on_close` hooks have run and its subscriptions are gone).
    ///
    /// # Panics
    ///
    /// If the server is not done within the timeout.
    pub async fn close(&self, code: u16) {
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        self.send_frame(WsMessage::Close(Some(CloseFrame {
            code: code.into(),
            reason: Utf8Bytes::default(),
        })));
        self.wait_ended().await;
    }

    /// Waits until the server closes the connection and is done with it (`on_close` ran), and
    /// returns its close frame (code and reason).
    ///
    /// # Panics
    ///
    /// If that does not happen within the timeout, or the connection ended without a close frame
    /// from the server.
    pub async fn closed(&self) -> CloseInfo {
        self.wait_ended().await;
        let state = self.shared.lock();
        match &state.close {
            Some(close) => close.clone(),
            None => panic!("the connection ended without a close frame from the server"),
        }
    }

    /// The server's close frame, if it sent one.
    pub fn close_frame(&self) -> Option<CloseInfo> {
        self.shared.lock().close.clone()
    }

    /// Whether the connection ended (the server's connection task returned).
    pub fn is_ended(&self) -> bool {
        self.shared.lock().ended
    }

    /// WebSocket pings the server sent so far (the heartbeat).
    pub fn pings(&self) -> usize {
        self.shared.lock().pings
    }

    /// Whether the fake client answers the server's pings with pongs, as browsers do (default
    /// true). A client that does not is closed with 4002 after the heartbeat timeout.
    pub fn answer_pings(&self, answer: bool) {
        self.shared.answer_pings.store(answer, Ordering::SeqCst);
    }

    async fn wait_ended(&self) {
        let ended = self.shared.wait(|s| s.ended.then_some(()));
        if tokio::time::timeout(self.timeout, ended).await.is_err() {
            panic!(
                "the connection did not end within {:?} (server close frame: {:?})",
                self.timeout,
                self.close_frame()
            );
        }
    }

    /// Takes the next unread frame; `what` names what the caller expected, for the panic.
    async fn next_frame(&self, what: &str) -> CapturedFrame {
        let next = self.shared.wait(|state| {
            if let Some(frame) = state.frames.iter_mut().find(|f| !f.read) {
                frame.read = true;
                return Some(Ok(frame.clone()));
            }
            state.ended.then(|| Err(state.close.clone()))
        });
        match tokio::time::timeout(self.timeout, next).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(close)) => panic!("waiting for {what}: the connection closed ({close:?})"),
            Err(_) => panic!(
                "waiting for {what}: nothing within {:?} (frames so far: {:#?})",
                self.timeout,
                self.frames()
            ),
        }
    }
}

/// Text a test sends with [`TestConnection::send_raw`]: a string verbatim, or a JSON value.
pub trait IntoRawFrame {
    /// The frame's text.
    fn into_raw_frame(self) -> String;
}

impl IntoRawFrame for &str {
    fn into_raw_frame(self) -> String {
        self.to_string()
    }
}

impl IntoRawFrame for String {
    fn into_raw_frame(self) -> String {
        self
    }
}

impl IntoRawFrame for Value {
    fn into_raw_frame(self) -> String {
        self.to_string()
    }
}

impl IntoRawFrame for &Value {
    fn into_raw_frame(self) -> String {
        self.to_string()
    }
}

/// A request sent with [`TestConnection::start_request`], whose terminal has not been read yet.
#[must_use = "a pending request does nothing unless its outcome is awaited"]
pub struct PendingRequest<R> {
    correlation_id: String,
    tx: mpsc::UnboundedSender<WsMessage>,
    shared: Arc<ConnShared>,
    timeout: Duration,
    response: PhantomData<fn() -> R>,
}

impl<R: Message> PendingRequest<R> {
    /// The request's correlation id.
    pub fn correlation_id(&self) -> &str {
        &self.correlation_id
    }

    /// Sends `$ws:abort` for this request.
    pub fn abort(&self) {
        let frame = serde_json::json!({"type": "$ws:abort", "meta": {"correlationId": self.correlation_id}});
        let _ = self.tx.send(WsMessage::text(frame.to_string()));
    }

    /// Reads this request's frames — progress, then the terminal — and returns them. Other
    /// frames stay unread for the `recv` methods.
    ///
    /// # Panics
    ///
    /// If no terminal comes within the timeout, the connection closes first, or a frame for this
    /// request is neither progress, `R` nor an error.
    pub async fn outcome(self) -> RpcOutcome<R> {
        let cid = self.correlation_id.as_str();
        let mut progress = Vec::new();
        let read_all = async {
            loop {
                let next = self.shared.wait(|state| {
                    let frame = state
                        .frames
                        .iter_mut()
                        .find(|f| !f.read && f.correlation_id.as_deref() == Some(cid));
                    if let Some(frame) = frame {
                        frame.read = true;
                        return Some(Ok(frame.text.clone()));
                    }
                    state.ended.then(|| Err(state.close.clone()))
                });
                let text = match next.await {
                    Ok(text) => text,
                    Err(close) => panic!(
                        "request `{cid}` ({}): the connection closed before its terminal ({close:?})",
                        R::TYPE
                    ),
                };
                let frame = wire::parse_server_frame(&text).unwrap_or_else(|e| panic!("{e}"));
                match &*frame.ty {
                    "$ws:rpc-progress" => match decode_payload::<R>(&frame) {
                        Ok(update) => progress.push(update),
                        Err(e) => panic!("progress of `{cid}` is not a `{}`: {e}: {text}", R::TYPE),
                    },
                    "RPC_ERROR" | "ERROR" => {
                        break Err(decode_error(&frame).unwrap_or_else(|e| panic!("{e}: {text}")));
                    }
                    ty if ty == R::TYPE => {
                        break Ok(decode_payload::<R>(&frame).unwrap_or_else(|e| {
                            panic!("reply to `{cid}` is not a valid `{ty}`: {e}: {text}")
                        }));
                    }
                    _ => panic!(
                        "request `{cid}`: expected progress, `{}` or an error, got: {text}",
                        R::TYPE
                    ),
                }
            }
        };
        let result = match tokio::time::timeout(self.timeout, read_all).await {
            Ok(result) => result,
            Err(_) => panic!(
                "request `{cid}` ({}): no terminal within {:?}",
                R::TYPE,
                self.timeout
            ),
        };
        RpcOutcome {
            correlation_id: self.correlation_id,
            progress,
            result,
        }
    }
}

/// What a request got: its progress updates in order, then its terminal.
#[derive(Debug)]
#[non_exhaustive]
pub struct RpcOutcome<R> {
    /// The request's correlation id.
    pub correlation_id: String,
    /// The `$ws:rpc-progress` payloads, in order.
    pub progress: Vec<R>,
    /// The reply, or the `RPC_ERROR`.
    pub result: Result<R, WsError>,
}

// ---------------------------------------------------------------------------------------------
// The in-memory transport
// ---------------------------------------------------------------------------------------------

/// The server's end of a fake connection: reads what the test sends, captures what the server
/// writes. Pings are answered and a close frame is echoed, as a WebSocket client does.
struct MemorySocket {
    inbound: mpsc::UnboundedReceiver<WsMessage>,
    /// Answers (pongs, the close echo) go back on the inbound channel; weak, so the stream ends
    /// when the test drops its connection.
    echo: mpsc::WeakUnboundedSender<WsMessage>,
    shared: Arc<ConnShared>,
    /// tungstenite's `max_message_size` on a real socket.
    max_frame_bytes: usize,
}

impl Stream for MemorySocket {
    type Item = Result<WsMessage, WsTransportError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let max = self.max_frame_bytes;
        self.inbound.poll_recv(cx).map(|frame| {
            frame.map(|frame| match &frame {
                WsMessage::Text(_) | WsMessage::Binary(_) if frame.len() > max => {
                    Err(WsTransportError::Capacity(CapacityError::MessageTooLong {
                        size: frame.len(),
                        max_size: max,
                    }))
                }
                _ => Ok(frame),
            })
        })
    }
}

impl Sink<WsMessage> for MemorySocket {
    type Error = Infallible;

    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, frame: WsMessage) -> Result<(), Infallible> {
        let answer = match frame {
            WsMessage::Text(text) => {
                let text = text.as_str().to_string();
                let value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let correlation_id = wire::parse_server_frame(&text)
                    .ok()
                    .and_then(|f| f.correlation_id);
                self.shared.update(|s| {
                    s.frames.push(CapturedFrame {
                        text,
                        value,
                        correlation_id,
                        read: false,
                    })
                });
                None
            }
            WsMessage::Ping(payload) => {
                self.shared.update(|s| s.pings += 1);
                self.shared
                    .answer_pings
                    .load(Ordering::SeqCst)
                    .then_some(WsMessage::Pong(payload))
            }
            WsMessage::Close(frame) => {
                let info = CloseInfo::from_frame(frame.as_ref());
                self.shared.update(|s| {
                    s.close.get_or_insert(info);
                });
                Some(WsMessage::Close(frame))
            }
            _ => None,
        };
        if let Some(answer) = answer.and_then(|a| self.echo.upgrade().map(|tx| (tx, a))) {
            let (tx, answer) = answer;
            let _ = tx.send(answer);
        }
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
}

/// One connection's captures, shared by the transport and the test.
struct ConnShared {
    state: Mutex<ConnState>,
    notify: Notify,
    answer_pings: AtomicBool,
}

#[derive(Default)]
struct ConnState {
    frames: Vec<CapturedFrame>,
    /// The server's close frame.
    close: Option<CloseInfo>,
    pings: usize,
    /// The server's connection task returned.
    ended: bool,
}

#[derive(Clone)]
struct CapturedFrame {
    text: String,
    value: Value,
    correlation_id: Option<String>,
    read: bool,
}

impl ConnShared {
    fn lock(&self) -> MutexGuard<'_, ConnState> {
        lock(&self.state)
    }

    fn update(&self, f: impl FnOnce(&mut ConnState)) {
        f(&mut self.lock());
        self.notify.notify_waiters();
    }

    /// Waits until `check` returns something (it runs under the lock, at once and after every
    /// change).
    async fn wait<T>(&self, mut check: impl FnMut(&mut ConnState) -> Option<T>) -> T {
        loop {
            let changed = self.notify.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(found) = check(&mut self.lock()) {
                return found;
            }
            changed.await;
        }
    }
}

/// Marks the connection ended however its task finishes (returns, panics, is aborted).
struct EndGuard(Arc<ConnShared>);

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.0.update(|s| s.ended = true);
    }
}

// ---------------------------------------------------------------------------------------------
// Logs, encoding and decoding
// ---------------------------------------------------------------------------------------------

/// An append-only log with a read cursor for `next`.
struct Log<T> {
    state: Mutex<(Vec<T>, usize)>,
    notify: Notify,
}

impl<T: Clone> Log<T> {
    fn new() -> Self {
        Log {
            state: Mutex::new((Vec::new(), 0)),
            notify: Notify::new(),
        }
    }

    fn push(&self, item: T) {
        lock(&self.state).0.push(item);
        self.notify.notify_waiters();
    }

    fn snapshot(&self) -> Vec<T> {
        lock(&self.state).0.clone()
    }

    async fn next(&self, timeout: Duration) -> Option<T> {
        let next = async {
            loop {
                let changed = self.notify.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                {
                    let mut state = lock(&self.state);
                    let (items, cursor) = &mut *state;
                    if let Some(item) = items.get(*cursor).cloned() {
                        *cursor += 1;
                        return item;
                    }
                }
                changed.await;
            }
        };
        tokio::time::timeout(timeout, next).await.ok()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Encodes a client frame with the server's own encoder: `type`, `payload`, then `meta` when
/// there is some (the publication layout is also a client's).
fn encode_request<M: Message>(msg: &M, meta: Value) -> Utf8Bytes {
    let meta = match meta {
        Value::Null => Map::new(),
        Value::Object(map) => map,
        other => panic!("meta must be a JSON object, not {other}"),
    };
    let correlation_id = match meta.get("correlationId") {
        None => None,
        Some(Value::String(id)) => Some(id.as_str()),
        Some(other) => panic!("correlationId must be a string, not {other}; use send_raw"),
    };
    let out = OutMeta {
        correlation_id,
        user: (!meta.is_empty()).then_some(&meta),
    };
    match wire::encode_message(msg, out, Layout::Publication) {
        Ok(frame) => frame,
        Err(e) => panic!("could not encode a `{}`: {e}", M::TYPE),
    }
}

/// Decodes a whole server frame as `M`, checking its type.
fn decode_as<M: Message>(text: &str) -> Result<M, String> {
    let frame = wire::parse_server_frame(text).map_err(|e| format!("not a frame ({e}): {text}"))?;
    if frame.ty != M::TYPE {
        return Err(format!("expected a `{}` frame, got: {text}", M::TYPE));
    }
    decode_payload::<M>(&frame).map_err(|e| format!("not a valid `{}` ({e}): {text}", M::TYPE))
}

/// Decodes a frame's payload and declared meta fields as `M` (the frame's other meta keys, such
/// as a sender's own, are ignored; no `#[validate]` rules run).
fn decode_payload<M: Message>(frame: &ServerFrame<'_>) -> Result<M, String> {
    let meta: Vec<_> = frame
        .meta
        .iter()
        .filter(|(key, _)| M::__META_KEYS.contains(&&**key))
        .cloned()
        .collect();
    M::__decode(frame.payload, &meta).map_err(|issues| {
        issues
            .iter()
            .map(|i| format!("{}: {}", i.path, i.message))
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// An `ERROR` / `RPC_ERROR` payload as a [`WsError`].
fn decode_error(frame: &ServerFrame<'_>) -> Result<WsError, String> {
    let payload: Value = frame
        .payload
        .map(|p| serde_json::from_str(p.get()))
        .transpose()
        .map_err(|e| e.to_string())?
        .ok_or("an error frame without payload")?;
    let code = payload["code"]
        .as_str()
        .ok_or("an error payload without a string `code`")?;
    let message = payload["message"].as_str().unwrap_or_default().to_string();
    let mut err = WsError::new(ErrorCode::parse(code), message)
        .with_details(payload.get("details").cloned().unwrap_or(Value::Null));
    if let Some(retryable) = payload["retryable"].as_bool() {
        err = err.with_retryable(retryable);
    }
    if let Some(ms) = payload["retryAfterMs"].as_u64() {
        err = err.with_retry_after_ms(ms);
    }
    Ok(err)
}
