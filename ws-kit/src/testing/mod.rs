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
//! use ws_kit::{handler, routes, Ctx, ErrorCode, Message, Router, WsError};
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
//! async fn ping(ctx: Ctx<Ping>) -> Result<Pong, WsError> {
//!     Ok(Pong { reply: format!("Got: {}", ctx.payload.text) })
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
//!
//! Inside: [`TestServer`] here, [`TestConnection`] and its requests in `connection`, the
//! in-memory transport and the logs in `socket`. Frames are encoded and decoded by the same
//! client codec as the Rust client's (the wire module's `client_codec`).

mod connection;
mod socket;

pub use connection::{IntoRawFrame, PendingRequest, RpcOutcome, TestConnection};

use crate::error::WsError;
use crate::event::ErrorEvent;
use crate::message::Message;
use crate::publisher::Publisher;
use crate::pubsub::{ClientId, PubSub, PublishResult, Subscriber};
use crate::router::Router;
use crate::server::{Rejection, ServeOptions, Service, UpgradeRequest};
use crate::wire::client_codec;
use futures_util::future::BoxFuture;
use serde_json::Value;
use socket::{ConnShared, EndGuard, Log, MemorySocket, lock};
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// How long the harness waits for something a test expects, unless told otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`TestConnection::expect_silence`] listens.
const SILENCE: Duration = Duration::from_millis(100);

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

impl<D> fmt::Debug for TestServer<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestServer")
            .field("service", &self.service)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<D: Send + Sync + 'static> TestServer<D> {
    /// A test server with the default limits of [`ServeOptions`] (heartbeat 30 s / 90 s, 1 MiB
    /// payloads, 1000 RPCs in flight, no RPC timeout cap).
    ///
    /// # Panics
    ///
    /// If two routes handle one type tag (what [`Router::into_service`] reports as an error).
    pub fn new<S: Send + Sync + 'static>(router: Router<D, S>) -> Self {
        Self::with_options(router, ServeOptions::with_authenticate(|_| None::<D>))
    }

    /// A test server with these options' limits: payload limit, in-flight RPCs, topics per
    /// connection, RPC timeout cap and heartbeat. [`TestServer::connect`] takes the connection
    /// data directly; [`TestServer::connect_upgrade`] goes through the options' path and Origin
    /// checks and their `authenticate` hook with a request the test makes. Host, port and
    /// subprotocols do not apply. The fake client reads frames as fast as they are written, so the
    /// outbound queue limit (`max_queued_bytes`) is not reached through it.
    ///
    /// # Panics
    ///
    /// If two routes handle one type tag (what [`Router::into_service`] reports as an error).
    pub fn with_options<S: Send + Sync + 'static>(
        router: Router<D, S>,
        options: ServeOptions<D>,
    ) -> Self {
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
        self.open(data).await
    }

    /// Opens a fake connection the way an upgrade would: `request` (its path, query and headers:
    /// `Origin`, `Authorization`, `Sec-WebSocket-Protocol`...) goes through the options' path and
    /// Origin checks and their `authenticate` hook (see [`TestServer::with_options`]); the
    /// rejection it would answer with, or the connection with the data it returned.
    ///
    /// ```
    /// use ws_kit::testing::TestServer;
    /// use ws_kit::{http, query_param, Router, ServeOptions};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let options = ServeOptions::<String>::new().authenticate_async(|req| async move {
    ///     query_param(&req, "access_token").filter(|t| t == "alice-token").map(|_| "alice".to_string())
    /// });
    /// let server = TestServer::with_options(Router::<String>::new(), options);
    ///
    /// let request = http::Request::builder().uri("/?access_token=alice-token").body(()).unwrap();
    /// let conn = server.connect_upgrade(request).await.unwrap();
    /// assert_eq!(*conn.connection().data(), "alice");
    ///
    /// let request = http::Request::builder().uri("/?access_token=nope").body(()).unwrap();
    /// assert_eq!(server.connect_upgrade(request).await.unwrap_err().status, 401);
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// If `on_open` does not finish within the timeout.
    pub async fn connect_upgrade(
        &self,
        request: UpgradeRequest,
    ) -> Result<TestConnection<D>, Rejection> {
        let data = self.service.admit(request).await?;
        Ok(self.open(data).await)
    }

    async fn open(&self, data: D) -> TestConnection<D> {
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
                .open_transport(socket, uuid::Uuid::now_v7(), None, data);
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
        client_codec::decode_text::<M>(&self.text)
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

    fn local_members(&self, topic: &str) -> Option<Vec<ClientId>> {
        self.inner.local_members(topic)
    }

    fn keep(&self, topics: crate::pubsub::KeptTopics) {
        self.inner.keep(topics);
    }

    fn presence_join<'a>(
        &'a self,
        topic: &'a str,
        entry: crate::pubsub::PresenceEntry,
    ) -> BoxFuture<'a, Result<(), WsError>> {
        self.inner.presence_join(topic, entry)
    }

    fn presence_leave<'a>(&'a self, topic: &'a str, client: ClientId) -> BoxFuture<'a, ()> {
        self.inner.presence_leave(topic, client)
    }

    fn presence<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<Vec<crate::pubsub::PresenceEntry>, WsError>> {
        self.inner.presence(topic)
    }

    fn on_presence(&self, hook: crate::pubsub::PresenceHook) {
        self.inner.on_presence(hook);
    }

    fn subscribe_from<'a>(
        &'a self,
        topic: &'a str,
        subscriber: Subscriber,
        since: crate::pubsub::Position,
        announce: crate::pubsub::Announce,
    ) -> BoxFuture<'a, Result<crate::pubsub::Subscribed, WsError>> {
        self.inner
            .subscribe_from(topic, subscriber, since, announce)
    }
}
