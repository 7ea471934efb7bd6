//! The Rust client (feature `client`): the server's own `#[derive(Message)]` structs over one
//! resilient WebSocket connection (docs/protocol.md section 9).
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
//! - **Sealed delivery** (docs/protocol.md 7b), with [`ClientBuilder::sealed`]: the app puts
//!   [`Client::public_key`] in its authentication request; once the reply brings the server's key,
//!   every frame both ways is encrypted ([`crate::seal`]).
//!
//! Only `ws://` URLs are supported (this build of tungstenite has no TLS).
//!
//! Inside: [`Client`] and its handles here, [`ClientBuilder`] and the options in `builder`, [`Call`]
//! (a request in flight) in `call`, the errors in `error`, the state the handles share (offline
//! queue, pending requests, handlers) in `shared`, the connection task (connect, session,
//! backoff) in `session`, and one session's sealing (the key, opening and sealing frames) in
//! `sealing`. Frames are encoded and decoded by the shared client codec of the wire
//! module, the same one the testing harness uses.

mod builder;
mod call;
mod error;
mod sealing;
mod session;
mod shared;

pub use builder::{ClientBuilder, QueuePolicy, Reconnect, RequestOptions, TokenPlacement};
pub use call::Call;
pub use error::{ClientError, RequestError, ServerError};

use crate::message::{Message, RpcMessage};
use crate::pubsub::Position;
use crate::wire::client_codec::{self, ClientMeta, ServerFrame};
use call::millis_ceil;
use shared::{DynHandler, Kind, Outgoing, Pending, Shared, erase, skip_undecodable};
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};

const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_PENDING: usize = 1000;
const DEFAULT_QUEUE_CAPACITY: usize = 1000;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `close()` waits for queued frames and the server's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

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

/// The state of the connection (docs/protocol.md section 9).
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
        let text = encode(msg, None, None).map_err(ClientError::Encode)?;
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
        let call = Call::new(shared.clone(), cid.clone(), rx, timeout);
        let text = match encode(req, Some(&cid), options.timeout.map(millis_ceil)) {
            Ok(text) => text,
            Err(e) => return call.failed(RequestError::Client(ClientError::Encode(e))),
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
            match client_codec::decode_frame::<M>(frame) {
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

    /// The client's public key for sealed delivery (docs/protocol.md 7b), base64 of an
    /// uncompressed P-256 point: what the app puts in its authentication request's `publicKey`.
    /// `None` unless the client was built with [`ClientBuilder::sealed`]. The same key for the
    /// client's whole life, across reconnects.
    pub fn public_key(&self) -> Option<String> {
        self.shared
            .config
            .sealing
            .as_ref()
            .map(|s| s.public_key.clone())
    }

    /// Whether the current connection is sealed: the authentication reply brought the server's
    /// key, and every frame since goes encrypted both ways. False while connecting, before that
    /// reply (and for good when the server ignored the `publicKey`: then frames stay in clear, so
    /// an app that must not talk in clear checks this after authenticating), and again after a
    /// reconnect until the next reply.
    pub fn is_sealed(&self) -> bool {
        self.shared.sealed.load(Ordering::Acquire)
    }

    /// The last position received in the kept topic `topic` (docs/protocol.md 8a): the
    /// `{offset, epoch}` of the newest frame that carried one. What a rejoin after a reconnect
    /// passes as `since`; see [`rejoin`](Self::rejoin).
    pub fn position(&self, topic: &str) -> Option<Position> {
        self.shared
            .positions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
            .cloned()
    }

    /// Sets the position of `topic`, as the app's join answer reported it (a `JOINED` with
    /// `recovered: false` moves the client to the topic's current position, though no frame
    /// carried it yet).
    pub fn set_position(&self, topic: &str, position: Position) {
        self.shared
            .positions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(topic.to_string(), position);
    }

    /// Sends the join that `join` builds from the last position in `topic`
    /// (`Position::default()`, "from now on", when there is none): the typed way to come back
    /// after a reconnect and recover what was missed.
    ///
    /// ```no_run
    /// # use ws_kit::Message;
    /// # use ws_kit::pubsub::Position;
    /// # #[derive(Message)] struct JoinRoom { room_id: String, username: String, since: Option<Position> }
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = ws_kit::client::Client::builder("ws://127.0.0.1:3000")
    ///     .on_reconnect(|c| {
    ///         let _ = c.rejoin("room:r1", |since| JoinRoom {
    ///             room_id: "r1".into(),
    ///             username: "ada".into(),
    ///             since: Some(since),
    ///         });
    ///     })
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn rejoin<M: Message>(
        &self,
        topic: &str,
        join: impl FnOnce(Position) -> M,
    ) -> Result<(), ClientError> {
        let since = self.position(topic).unwrap_or_default();
        self.send(&join(since))
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

/// A client frame: `{"type", "payload"?, "meta": {.., "timestamp", "correlationId"?, "timeoutMs"?}}`.
fn encode<M: Message>(
    msg: &M,
    correlation_id: Option<&str>,
    timeout_ms: Option<u64>,
) -> Result<String, String> {
    let meta = ClientMeta {
        correlation_id,
        timeout_ms,
        timestamp: Some(now_ms()),
        extra: None,
    };
    client_codec::encode_client_frame(msg, meta)
}

/// The client's clock, for outbound `meta.timestamp`.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
