//! What every handle of one client shares: the outbox (offline queue while not open), the
//! pending requests, the message handlers, the state; and how one server frame is routed.

use super::builder::{Config, QueuePolicy, TokenPlacement};
use super::error::{ClientError, RequestError, ServerError};
use super::{Client, State};
use crate::http_syntax::{is_token, with_query_param};
use crate::message::Message;
use crate::pubsub::Position;
use crate::wire::client_codec::{self, ServerFrame};
use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A registered `on`/`messages` handler; returns false once it wants to be removed.
pub(super) type DynHandler = dyn Fn(&ServerFrame<'_>) -> bool + Send + Sync;

/// The socket of one connection.
pub(super) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub(super) struct Shared {
    pub(super) config: Config,
    pub(super) state: watch::Sender<State>,
    /// Set by `close()` or the last owner's drop.
    pub(super) stop: watch::Sender<bool>,
    pub(super) outbox: Mutex<Outbox>,
    /// Wakes the writer: frames are queued.
    pub(super) writer: Notify,
    pub(super) pending: Mutex<HashMap<Arc<str>, Pending>>,
    pub(super) handlers: RwLock<HashMap<&'static str, Vec<Arc<DynHandler>>>>,
    pub(super) next_id: AtomicU64,
    /// The current connection's frames are sealed (`Client::is_sealed`); set and cleared by the
    /// session's `SessionSeal`.
    pub(super) sealed: AtomicBool,
    /// The last position received per kept topic (frames with `meta.topic`, `offset`, `epoch`).
    pub(super) positions: Mutex<HashMap<String, Position>>,
}

/// Frames waiting for the writer. While not open, it is the offline queue.
#[derive(Default)]
pub(super) struct Outbox {
    pub(super) open: bool,
    pub(super) closed: bool,
    pub(super) queue: VecDeque<Outgoing>,
    /// While `on_reconnect` runs: its frames, to go ahead of the queue.
    pub(super) hook: Option<Vec<Outgoing>>,
}

pub(super) struct Outgoing {
    pub(super) text: String,
    pub(super) kind: Kind,
}

pub(super) enum Kind {
    Event,
    Rpc(Arc<str>),
    /// `__heartbeat`, `$ws:abort`: for the current connection only.
    Control,
}

pub(super) struct Pending {
    pub(super) tx: mpsc::UnboundedSender<Reply>,
    /// Handed to the socket (the writer took it): a drop now fails it, a cancel sends `$ws:abort`.
    pub(super) in_socket: bool,
}

pub(super) enum Reply {
    Written(Instant),
    Progress(Box<str>),
    Terminal(Box<str>),
    Failed(RequestError),
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(super) fn outbox(&self) -> MutexGuard<'_, Outbox> {
        lock(&self.outbox)
    }

    pub(super) fn pending(&self) -> MutexGuard<'_, HashMap<Arc<str>, Pending>> {
        lock(&self.pending)
    }

    pub(super) fn set_state(&self, state: State) {
        self.state.send_if_modified(|current| {
            let changed = *current != state;
            *current = state;
            changed
        });
    }

    pub(super) fn add_handler(&self, ty: &'static str, handler: Arc<DynHandler>) {
        self.handlers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(ty)
            .or_default()
            .push(handler);
    }

    /// Queues a frame (or applies the offline policy).
    pub(super) fn enqueue(&self, out: Outgoing, in_hook: bool) -> Result<(), ClientError> {
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
    pub(super) fn push_control(&self, text: String) {
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
    pub(super) fn unqueue(&self, cid: &str) {
        let is_other = |o: &Outgoing| !matches!(&o.kind, Kind::Rpc(c) if &**c == cid);
        let mut outbox = self.outbox();
        outbox.queue.retain(is_other);
        if let Some(frames) = outbox.hook.as_mut() {
            frames.retain(is_other);
        }
    }

    /// A frame that will never be written: its request (if it is one) fails.
    pub(super) fn fail_unsent(&self, out: Outgoing, err: impl FnOnce() -> RequestError) {
        if let Kind::Rpc(cid) = out.kind {
            let removed = self.pending().remove(&*cid);
            if let Some(p) = removed {
                let _ = p.tx.send(Reply::Failed(err()));
            }
        }
    }

    /// Takes what is queued for the writer; marks requests as handed to the socket and leaves out
    /// those cancelled meanwhile.
    pub(super) fn take_batch(&self) -> Batch {
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
    pub(super) fn opened(self: &Arc<Self>, reconnected: bool) {
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
    pub(super) fn connection_lost(&self) {
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
    pub(super) fn finish(&self) {
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

    /// Remembers the position of a kept topic's frame (docs/protocol.md 8a, 9).
    fn track_position(&self, frame: &ServerFrame<'_>) {
        let field = |name: &str| {
            frame
                .meta
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.get())
        };
        let (Some(topic), Some(offset), Some(epoch)) =
            (field("topic"), field("offset"), field("epoch"))
        else {
            return;
        };
        let (Ok(topic), Ok(offset), Ok(epoch)) = (
            serde_json::from_str::<String>(topic),
            serde_json::from_str::<u64>(offset),
            serde_json::from_str::<String>(epoch),
        ) else {
            return;
        };
        let mut positions = self.positions.lock().unwrap_or_else(|e| e.into_inner());
        match positions.get_mut(&topic) {
            // Offsets only grow within an epoch; a new epoch starts over.
            Some(p) if p.epoch == epoch && p.offset >= offset => {}
            Some(p) => *p = Position { offset, epoch },
            None => {
                positions.insert(topic, Position { offset, epoch });
            }
        }
    }

    /// Routes one frame from the server: to its pending request, the error hook, or the handlers.
    pub(super) fn dispatch(&self, text: &str) {
        let frame = match client_codec::parse_server_frame(text) {
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
        self.track_position(&frame);
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
            match client_codec::decode_error(&frame).map(ServerError::from) {
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
    pub(super) async fn connect_once(&self) -> Result<Socket, ClientError> {
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
                        if !is_token(&token) {
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
            // `wss://` needs the `tls` feature: the system's roots, or the builder's settings.
            #[cfg(feature = "tls")]
            let connecting = tokio_tungstenite::connect_async_tls_with_config(
                request,
                None,
                false,
                config.tls.clone().map(tokio_tungstenite::Connector::Rustls),
            );
            #[cfg(not(feature = "tls"))]
            let connecting = tokio_tungstenite::connect_async(request);
            match connecting.await {
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
pub(super) struct Batch {
    pub(super) frames: Vec<String>,
    /// The requests among them, told when the batch is flushed.
    pub(super) written: Vec<mpsc::UnboundedSender<Reply>>,
}

/// A handler of `M` as the client stores it: decodes, then calls.
pub(super) fn erase<M: Message>(handler: impl Fn(M) + Send + Sync + 'static) -> Arc<DynHandler> {
    Arc::new(move |frame: &ServerFrame<'_>| {
        match client_codec::decode_frame::<M>(frame) {
            Ok(msg) => handler(msg),
            Err(e) => skip_undecodable(M::TYPE, &e),
        }
        true
    })
}

pub(super) fn skip_undecodable(ty: &str, error: &str) {
    tracing::warn!("ws-kit client: skipping a `{ty}` frame that does not decode: {error}");
}
