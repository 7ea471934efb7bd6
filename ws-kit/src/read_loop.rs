//! One connection's life: `on_open`, the read loop (each frame to its route; control frames;
//! heartbeat; ordered dispatch), then `on_close` and teardown.

use crate::app::App;
use crate::close_code;
use crate::connection::Connection;
use crate::error::{MAX_ISSUE_MESSAGE, MAX_QUOTED, WsError, clip};
use crate::event::{CloseInfo, ErrorKind};
use crate::lazy_read::{BudgetExhausted, ReadState};
use crate::metrics::{self, MessageType};
use crate::outbound::write_loop;
use crate::task::{self, panic_message};
use crate::wire;
use futures_util::{FutureExt, Sink, Stream, StreamExt};
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Sleep;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::{Error as WsTransportError, Message as WsMessage, Utf8Bytes};

/// Connection settings the read loop needs.
#[derive(Clone, Debug)]
pub(crate) struct LoopConfig {
    pub(crate) max_payload_bytes: usize,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) heartbeat_timeout: Duration,
    pub(crate) close_grace: Duration,
    /// The time of the transport's last socket read, when it has one (see `LazyRead`).
    pub(crate) read_state: Option<Arc<ReadState>>,
}

pub(crate) fn now_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A connection that comes in once shutdown has started: 1001, best effort, within a second.
async fn close_at_once<S>(mut socket: S)
where
    S: Sink<WsMessage> + Unpin,
{
    use futures_util::SinkExt;
    let close = tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: close_code::AWAY.into(),
        reason: "Server shutting down".into(),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        socket.send(WsMessage::Close(Some(close))),
    )
    .await;
}

/// Runs a connection to its end: `on_open`, the read loop, then `on_close` and cleanup.
///
/// `reader` carries the connection, its router and its settings: one copy of each in this
/// future's state, which every idle connection holds.
///
/// A connection that comes in once shutdown has started (its upgrade was under way) is closed at
/// once with 1001, never opened: no hooks run. While it runs it is counted in `open`.
pub(crate) async fn run<D, S>(
    socket: S,
    mut reader: Reader<D>,
    mut shutdown: watch::Receiver<bool>,
    open: Arc<AtomicUsize>,
) where
    D: Send + Sync + 'static,
    S: Stream<Item = Result<WsMessage, WsTransportError>>
        + Sink<WsMessage>
        + Unpin
        + Send
        + 'static,
{
    if *shutdown.borrow() {
        // Boxed: this rare path's state (the close frame, its timer) stays out of the future
        // every idle connection holds.
        return Box::pin(close_at_once(socket)).await;
    }
    let _open = Counted::new(open);
    // `auth_timeout` counts from the open (kept in the reader, not in this future's state).
    if let Some(gate) = reader.app.auth {
        reader.auth_timer = Some(Box::pin(tokio::time::sleep(gate.timeout)));
    }
    let (sink, mut stream) = socket.split();
    let out = reader.conn.inner.out.clone();
    let writer = tokio::spawn(write_loop(sink, out.clone()));

    let mut opened = true;
    let (conn, app) = (&reader.conn, &reader.app);
    if let Err(e) = conn.join_internal().await {
        conn.report(ErrorKind::Open, None, None, e);
        out.close(close_code::ERROR, "Internal error");
        opened = false;
    }
    for hook in app.on_open.iter().filter(|_| opened) {
        match AssertUnwindSafe(hook(conn.clone())).catch_unwind().await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let (code, reason) = e
                    .close_frame()
                    .cloned()
                    .unwrap_or((close_code::ERROR, e.message().to_string().into()));
                conn.report(ErrorKind::Open, None, None, e);
                out.close(code, reason);
                opened = false;
                break;
            }
            Err(panic) => {
                conn.report(
                    ErrorKind::HookPanic,
                    None,
                    None,
                    WsError::internal(panic_message(&*panic)),
                );
                out.close(close_code::ERROR, "Internal error");
                opened = false;
                break;
            }
        }
    }

    // In-band authentication: an unauthenticated connection is gated. One whose upgrade gave it
    // a user id is authenticated already.
    if app.auth.is_some() && opened {
        if conn.user_id().is_some() {
            conn.inner.auth.set_authenticated();
        }
        if !conn.is_authenticated() {
            reader.gate = Gate::Closed;
        }
    }
    if reader.gate == Gate::Open {
        reader.auth_timer = None;
    }

    // Liveness is checked at each ping tick: a frame only sets `active`, so the hot path reads
    // no clock. A connection is closed between `timeout` and `timeout + interval` after its last
    // frame, never earlier.
    let mut last_seen = tokio::time::Instant::now();
    let mut active = false;
    let ping = tokio::time::sleep(reader.config.heartbeat_interval);
    tokio::pin!(ping);
    let mut client_close: Option<CloseInfo> = None;
    // Created once, not once per frame.
    let closed_by_server = out.closed_by_server();
    tokio::pin!(closed_by_server);
    let shutdown_started = shutdown.changed();
    tokio::pin!(shutdown_started);

    // A connection whose `on_open` failed is never read from.
    if opened {
        loop {
            // Ordered dispatch holds frames; past its budget the socket waits.
            let reading = !reader.over_held_budget();
            tokio::select! {
                biased;
                () = &mut closed_by_server => break,
                _ = &mut shutdown_started => {
                    out.close(close_code::AWAY, "Server shutting down");
                    break;
                }
                frame = stream.next(), if reading => {
                    active = true;
                    // Frames already read are handled in a row, without re-polling the other
                    // branches for each one; a server close still stops the run at once.
                    let mut frame = frame;
                    let mut budget = FRAMES_PER_WAKE;
                    let ended = loop {
                        if let Some(ended) = reader.on_frame(frame) {
                            break Some(ended);
                        }
                        budget -= 1;
                        if budget == 0 || out.is_closing() || reader.over_held_budget() {
                            break None;
                        }
                        match std::future::poll_fn(|cx| Poll::Ready(stream.poll_next_unpin(cx))).await {
                            Poll::Ready(next) => frame = next,
                            Poll::Pending => break None,
                        }
                    };
                    match ended {
                        None => {}
                        Some(Ended::Server) => break,
                        Some(Ended::Client(info)) => {
                            client_close = Some(info);
                            break;
                        }
                    }
                }
                () = &mut ping => {
                    let now = tokio::time::Instant::now();
                    reader.pings = 0;
                    // Held frames mean the peer is talking; the server is the one not reading.
                    if std::mem::take(&mut active) || reader.holds_frames() {
                        last_seen = now;
                    } else if now - last_seen >= reader.config.heartbeat_timeout {
                        out.close(close_code::HEARTBEAT_TIMEOUT, "Heartbeat timeout");
                        break;
                    }
                    out.push(WsMessage::Ping(Default::default()));
                    ping.as_mut().reset(now + reader.config.heartbeat_interval);
                }
                Some(_) = reader.tasks.join_next(), if !reader.tasks.is_empty() => {
                    reader.release_held();
                }
                () = expired(&mut reader.auth_timer), if reader.auth_timer.is_some() => {
                    reader.auth_timer = None;
                    if !reader.conn.is_authenticated() {
                        reader.conn.report(
                            ErrorKind::AuthTimeout,
                            None,
                            None,
                            WsError::unauthenticated("not authenticated within the auth timeout"),
                        );
                        out.close(close_code::AUTH_TIMEOUT, "Authentication timeout");
                        break;
                    }
                }
            }
        }
    }

    // In-flight handlers end with the connection. (The reader's parts are used in place, not
    // moved out: a moved value keeps its old slot in this future's state.)
    reader.tasks.abort_all();
    let (conn, app, close_grace) = (&reader.conn, &reader.app, reader.config.close_grace);

    let info = match (client_close, out.closing()) {
        (Some(info), _) => info,
        (None, Some(closing)) => {
            // The server closed: give the client a moment to answer the close frame.
            let _ = tokio::time::timeout(close_grace, async {
                while let Some(Ok(frame)) = stream.next().await {
                    if matches!(frame, WsMessage::Close(_)) {
                        break;
                    }
                }
            })
            .await;
            CloseInfo {
                code: closing.code,
                reason: closing.reason,
            }
        }
        (None, None) => CloseInfo::abnormal(),
    };

    for hook in &app.on_close {
        if let Err(panic) = AssertUnwindSafe(hook(conn.clone(), info.clone()))
            .catch_unwind()
            .await
        {
            conn.report(
                ErrorKind::HookPanic,
                None,
                None,
                WsError::internal(panic_message(&*panic)),
            );
        }
    }
    conn.leave_all().await;
    out.finish();
    let _ = tokio::time::timeout(close_grace, writer).await;
}

/// Resolves when the timer does; never without one.
async fn expired(timer: &mut Option<Pin<Box<Sleep>>>) {
    match timer {
        Some(timer) => timer.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Counts a running connection while it lives (and in the `ws_kit_connections` gauge).
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        metrics::connection_opened();
        Counted(count)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        metrics::connection_closed();
    }
}

/// Pings a peer may send per heartbeat interval; one more closes the connection (1008).
const MAX_PINGS_PER_INTERVAL: u32 = 100;

/// How many frames the read loop handles in a row before it looks at its other events again.
const FRAMES_PER_WAKE: usize = 64;

/// Why the read loop stops.
enum Ended {
    /// The server closed (the close is queued on the outbound queue).
    Server,
    /// The client closed, or the transport ended.
    Client(CloseInfo),
}

/// In-band authentication's hold on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gate {
    /// Authenticated, or no in-band authentication: every frame is dispatched.
    Open,
    /// Not authenticated: the authentication request and `__heartbeat` are dispatched, anything
    /// else is answered `UNAUTHENTICATED`.
    Closed,
    /// An authentication request runs: another one waits for its outcome (every later frame
    /// does with `hold_until_authenticated`; `__heartbeat` never does).
    Attempt,
}

/// A frame of an unauthenticated connection, read leniently: nothing but its type and
/// correlation id matter before authentication (docs/protocol.md 7).
#[derive(serde::Deserialize)]
struct Loose {
    #[serde(rename = "type", default)]
    ty: Option<serde_json::Value>,
    #[serde(default)]
    meta: Option<serde_json::Value>,
}

/// How a frame is dispatched, when ordered dispatch is in use.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    /// `__heartbeat`, `$ws:abort`: acted on at once, never held.
    Control,
    /// Runs alone: after every earlier handler finished, before any later one starts.
    Ordered,
    /// Dispatched as soon as it is its turn.
    Free,
}

/// The read side of one connection: dispatches frames, holds them while ordered dispatch waits,
/// and owns the tasks of handlers that wait.
pub(crate) struct Reader<D> {
    conn: Connection<D>,
    app: Arc<App<D>>,
    config: LoopConfig,
    pub(crate) tasks: JoinSet<()>,
    /// Frames read but not dispatched yet (ordered dispatch), with their arrival times.
    /// Ordered dispatch's state; allocated the first time a frame is held.
    held: Option<Box<Held>>,
    /// An ordered frame's handler is among `tasks`: nothing else starts until they are done.
    ordered_running: bool,
    /// Pings since the last heartbeat tick.
    pings: u32,
    /// In-band authentication's hold (`Open` without it).
    gate: Gate,
    /// The `auth_timeout` timer, while the connection is not authenticated.
    auth_timer: Option<Pin<Box<Sleep>>>,
    /// The client sealed a frame: from then on it must seal every frame.
    client_sealed: bool,
}

/// Frames read but not dispatched yet (ordered dispatch), with their arrival times.
#[derive(Default)]
struct Held {
    frames: VecDeque<(Utf8Bytes, SystemTime)>,
    bytes: usize,
}

impl<D: Send + Sync + 'static> Reader<D> {
    /// The reader of `conn` (the benchmarks make one without a socket and feed it frames).
    pub(crate) fn new(
        conn: Connection<D>,
        app: Arc<App<D>>,
        config: LoopConfig,
        tasks: JoinSet<()>,
    ) -> Self {
        Reader {
            conn,
            app,
            config,
            tasks,
            held: None,
            ordered_running: false,
            pings: 0,
            gate: Gate::Open,
            auth_timer: None,
            client_sealed: false,
        }
    }

    /// Whether ordered dispatch holds more bytes of frames than it may (the payload limit, at
    /// least 64 KiB): the socket then waits.
    fn over_held_budget(&self) -> bool {
        self.held
            .as_ref()
            .is_some_and(|h| h.bytes > self.config.max_payload_bytes.max(64 * 1024))
    }

    /// Whether frames wait for their turn.
    fn holds_frames(&self) -> bool {
        self.held.as_ref().is_some_and(|h| !h.frames.is_empty())
    }

    /// Handles one item of the socket stream; `Some` when the connection ends with it.
    fn on_frame(&mut self, frame: Option<Result<WsMessage, WsTransportError>>) -> Option<Ended> {
        if let Some(Ok(WsMessage::Text(_) | WsMessage::Binary(_) | WsMessage::Close(_))) = &frame {
            // The message is complete: its bytes no longer count against the inbound budget.
            if let Some(state) = &self.config.read_state {
                state.message_done();
            }
        }
        match frame {
            Some(Ok(WsMessage::Text(text))) => self.on_text(text),
            Some(Ok(WsMessage::Binary(bytes))) => match Utf8Bytes::try_from(bytes) {
                Ok(text) => self.on_text(text),
                Err(_) => invalid_frame(&self.conn, "binary frame is not UTF-8 JSON".into()),
            },
            Some(Ok(WsMessage::Close(frame))) => {
                return Some(Ended::Client(CloseInfo::from_frame(frame.as_ref())));
            }
            Some(Ok(WsMessage::Ping(payload))) => {
                self.control_done(&payload);
                // tungstenite answers each ping; a peer that pings without reading would make
                // the answers pile up (bounded by the write buffer), so a flood ends here.
                self.pings += 1;
                if self.pings > MAX_PINGS_PER_INTERVAL {
                    return self.close(
                        ErrorKind::Flood,
                        close_code::POLICY,
                        "Too many pings",
                        format!("more than {MAX_PINGS_PER_INTERVAL} pings in a heartbeat interval"),
                    );
                }
            }
            Some(Ok(WsMessage::Pong(payload))) => self.control_done(&payload), // liveness only
            Some(Ok(WsMessage::Frame(_))) => {} // only for writing raw frames; never read
            Some(Err(WsTransportError::Capacity(CapacityError::MessageTooLong {
                size,
                max_size,
            }))) => {
                return self.close(
                    ErrorKind::PayloadTooLarge,
                    close_code::SIZE,
                    "Message too big",
                    format!("frame of {size} bytes exceeds {max_size}"),
                );
            }
            // RFC 6455: a frame that breaks the protocol (unmasked, reserved bits or opcodes, a
            // fragmented or oversized control frame, a continuation of nothing) ends the
            // connection with 1002, invalid UTF-8 in a text message with 1007; the frame is
            // dropped.
            Some(Err(WsTransportError::Protocol(e))) => {
                return self.close(
                    ErrorKind::ProtocolViolation,
                    close_code::PROTOCOL,
                    "Protocol error",
                    e.to_string(),
                );
            }
            Some(Err(WsTransportError::Utf8(_))) => {
                return self.close(
                    ErrorKind::ProtocolViolation,
                    close_code::INVALID,
                    "Invalid UTF-8",
                    "text message is not valid UTF-8".into(),
                );
            }
            Some(Err(WsTransportError::Io(e))) if BudgetExhausted::is(&e) => {
                // What it held goes back at once, for the connections that go on.
                if let Some(state) = &self.config.read_state {
                    state.message_done();
                }
                return self.close(
                    ErrorKind::InboundBudget,
                    close_code::AGAIN,
                    "Server busy",
                    e.to_string(),
                );
            }
            Some(Err(_)) | None => return Some(Ended::Client(CloseInfo::abnormal())),
        }
        None
    }

    /// A ping or pong was handled: its bytes leave the inbound accounting (a client's control
    /// frame is its payload, at most 125 bytes, a 2-byte header and a 4-byte mask).
    fn control_done(&self, payload: &[u8]) {
        if let Some(state) = &self.config.read_state {
            state.control_done(payload.len() + 6);
        }
    }

    /// Reports `message` and closes the connection with `code` and `reason`.
    fn close(&self, kind: ErrorKind, code: u16, reason: &str, message: String) -> Option<Ended> {
        let err = match kind {
            ErrorKind::ProtocolViolation => WsError::invalid_argument(message),
            _ => WsError::resource_exhausted(message),
        };
        self.conn.report(kind, None, None, err);
        self.conn.inner.out.close(code, reason);
        Some(Ended::Server)
    }

    /// A text frame: dispatched now, or held for ordered dispatch.
    fn on_text(&mut self, text: Utf8Bytes) {
        // When the frame's bytes came off the socket.
        let received_at = self
            .config
            .read_state
            .as_ref()
            .map_or_else(SystemTime::now, |clock| clock.last_read());
        let text = if self.conn.inner.out.is_sealed() {
            match self.unseal(text) {
                Some(text) => text,
                None => return,
            }
        } else {
            text
        };
        if self.gate != Gate::Open {
            return self.on_gated(text, received_at);
        }
        if !self.app.any_ordered && self.held.is_none() {
            return self.dispatch(&text, received_at);
        }
        match self.order_of(&text) {
            Order::Control => self.dispatch(&text, received_at),
            order if self.must_wait(order) => {
                let held = self.held.get_or_insert_with(Box::default);
                held.bytes += text.len();
                held.frames.push_back((text, received_at));
            }
            order => self.dispatch_in_order(&text, received_at, order),
        }
    }

    /// Whether a frame must be held: frames before it are held, an ordered handler runs, or it is
    /// ordered and earlier handlers still run.
    fn must_wait(&self, order: Order) -> bool {
        self.holds_frames()
            || (self.ordered_running && !self.tasks.is_empty())
            || (order == Order::Ordered && !self.tasks.is_empty())
    }

    fn dispatch_in_order(&mut self, text: &str, received_at: SystemTime, order: Order) {
        let before = self.tasks.len();
        self.dispatch(text, received_at);
        self.ordered_running = order == Order::Ordered && self.tasks.len() > before;
    }

    /// Opens a sealed frame (docs/protocol.md 7b). `None`: it could not be opened, or it came in
    /// clear after sealed ones; answered `INVALID_ARGUMENT` (without a correlation id) and
    /// dropped.
    fn unseal(&mut self, text: Utf8Bytes) -> Option<Utf8Bytes> {
        if !crate::seal::is_sealed_frame(&text) {
            if self.client_sealed {
                self.reject_unsealed("a clear frame after sealed ones: keep sealing");
                return None;
            }
            return Some(text);
        }
        let opened = self.conn.inner.out.seal_key().map(|key| key.open(&text));
        match opened {
            Some(Ok(plain)) => {
                self.client_sealed = true;
                Some(Utf8Bytes::from(plain))
            }
            Some(Err(e)) => {
                self.reject_unsealed(&format!("sealed frame could not be opened: {e}"));
                None
            }
            None => {
                self.reject_unsealed("sealed frame before sealed delivery started");
                None
            }
        }
    }

    fn reject_unsealed(&self, message: &str) {
        let err = WsError::invalid_argument(message.to_string());
        self.conn.push(wire::encode_error(false, &err, None));
        metrics::message_answered(MessageType::INVALID, Some(err.code()));
        self.conn.report(ErrorKind::Unsealed, None, None, err);
    }

    /// A frame of a connection that is not authenticated (docs/protocol.md 7).
    fn on_gated(&mut self, text: Utf8Bytes, received_at: SystemTime) {
        let Some(gate) = self.app.auth else {
            return self.dispatch(&text, received_at);
        };
        // Not an envelope at all: the usual answer, made here. Only the two types below ever
        // reach `dispatch` before authentication.
        // (serde reads a struct from an array too: only an object is an envelope.)
        if !text.trim_start().starts_with('{') {
            return invalid_frame(&self.conn, "invalid frame: not a JSON object".into());
        }
        let loose = match serde_json::from_str::<Loose>(&text) {
            Ok(loose) => loose,
            Err(e) => return invalid_frame(&self.conn, format!("invalid frame: {e}")),
        };
        let Some(serde_json::Value::String(ty)) = &loose.ty else {
            return invalid_frame(&self.conn, "invalid frame: no string `type`".into());
        };
        match ty.as_str() {
            "__heartbeat" => return self.dispatch(&text, received_at),
            "$ws:abort" => return,
            _ => {}
        }
        // One attempt at a time: another authentication request waits for this one's outcome,
        // and so does everything else when the app asked for it.
        if self.gate == Gate::Attempt && (gate.hold || ty == gate.tag) {
            let held = self.held.get_or_insert_with(Box::default);
            held.bytes += text.len();
            held.frames.push_back((text, received_at));
            return;
        }
        if ty == gate.tag {
            let before = self.tasks.len();
            self.dispatch(&text, received_at);
            if self.tasks.len() > before {
                self.gate = Gate::Attempt;
            } else {
                self.attempt_ended();
            }
            return;
        }
        let cid = loose
            .meta
            .as_ref()
            .and_then(|meta| meta.get("correlationId"))
            .and_then(serde_json::Value::as_str)
            .filter(|cid| cid.len() <= wire::MAX_CORRELATION_ID);
        let err = WsError::unauthenticated(format!("not authenticated: send `{}` first", gate.tag));
        self.conn.push(wire::encode_error(cid.is_some(), &err, cid));
        let metric = self
            .app
            .find(ty)
            .map_or(MessageType::UNKNOWN, |route| route.metric());
        metrics::message_answered(metric, Some(err.code()));
        if cid.is_some() {
            metrics::rpc_terminal(Some(err.code()));
        }
        self.conn.report(
            ErrorKind::Unauthenticated,
            Some(&clip(ty, MAX_QUOTED)),
            cid,
            err,
        );
    }

    /// The authentication request finished: the connection is open to every message, or waits
    /// for another attempt.
    fn attempt_ended(&mut self) {
        self.conn.inner.out.disarm();
        if self.conn.is_authenticated() {
            self.gate = Gate::Open;
            self.auth_timer = None;
        } else {
            self.gate = Gate::Closed;
        }
    }

    /// A handler finished: dispatches the held frames whose turn it is.
    fn release_held(&mut self) {
        if self.gate == Gate::Attempt && self.tasks.is_empty() {
            self.attempt_ended();
        }
        if self.gate != Gate::Open {
            // Still not authenticated: held frames meet the gate again, in order, until another
            // attempt runs.
            while self.gate == Gate::Closed {
                let Some((text, received_at)) =
                    self.held.as_mut().and_then(|h| h.frames.pop_front())
                else {
                    break;
                };
                if let Some(held) = self.held.as_mut() {
                    held.bytes -= text.len();
                }
                self.on_gated(text, received_at);
            }
            if !self.holds_frames() {
                self.held = None;
            }
            return;
        }
        if self.tasks.is_empty() {
            self.ordered_running = false;
        }
        while let Some((text, _)) = self.held.as_ref().and_then(|h| h.frames.front()) {
            let order = self.order_of(text);
            if (self.ordered_running && !self.tasks.is_empty())
                || (order == Order::Ordered && !self.tasks.is_empty())
            {
                break;
            }
            let Some(held) = self.held.as_mut() else {
                break;
            };
            let Some((text, received_at)) = held.frames.pop_front() else {
                break;
            };
            held.bytes -= text.len();
            self.dispatch_in_order(&text, received_at, order);
        }
        if !self.holds_frames() {
            // Nothing waits: give the queue's memory back.
            self.held = None;
        }
    }

    /// How a frame is dispatched: by its route, or the router's setting.
    fn order_of(&self, text: &str) -> Order {
        let env;
        let ty = match wire::peek_type(text) {
            Some(ty) => ty,
            None => match wire::parse_envelope(text) {
                Ok(parsed) => {
                    env = parsed;
                    &*env.ty
                }
                Err(_) => return Order::Free,
            },
        };
        match ty {
            "__heartbeat" | "$ws:abort" => Order::Control,
            _ if self.app.ordered => Order::Ordered,
            ty if self.app.find(ty).is_some_and(|r| r.ordered()) => Order::Ordered,
            _ => Order::Free,
        }
    }

    /// Handles one text frame: envelope, reserved types, routing.
    pub(crate) fn dispatch(&mut self, text: &str, received_at: SystemTime) {
        let conn = &self.conn;
        let max = self.config.max_payload_bytes;
        if text.len() > max {
            // Only reachable in `Reject` mode: the transport closes with 1009 otherwise.
            let err = WsError::resource_exhausted(format!("frame exceeds {max} bytes"))
                .with_details(serde_json::json!({ "size": text.len(), "limit": max }))
                .with_default_retry();
            conn.push(wire::encode_error(false, &err, None));
            metrics::message_answered(MessageType::INVALID, Some(err.code()));
            conn.report(ErrorKind::PayloadTooLarge, None, None, err);
            return;
        }
        let global = &self.app.middleware;
        // The fast path: a frame that opens with its type tag and names a route is decoded in one
        // pass. It declines anything unusual, which then takes the full path below.
        if let Some(route) = wire::peek_type(text).and_then(|ty| self.app.find(ty))
            && let Ok(task) = route.dispatch_text(text, received_at, conn, global)
        {
            if let Some(task) = task {
                task::start(task, &mut self.tasks);
            }
            return;
        }
        let env = match wire::parse_envelope(text) {
            Ok(env) => env,
            Err(message) => return invalid_frame(conn, format!("invalid frame: {message}")),
        };
        let cid = env.meta.correlation_id.as_deref();
        match &*env.ty {
            "__heartbeat" => {
                conn.push(wire::heartbeat_ack(now_ms(received_at)));
                metrics::message_answered(MessageType::HEARTBEAT, None);
                return;
            }
            "$ws:abort" => {
                conn.abort(cid);
                metrics::message_answered(MessageType::ABORT, None);
                return;
            }
            ty if wire::is_reserved(ty) => {
                let err = WsError::invalid_argument(format!(
                    "type `{}` is reserved",
                    clip(ty, MAX_QUOTED)
                ));
                conn.push(wire::encode_error(false, &err, cid));
                metrics::message_answered(MessageType::RESERVED, Some(err.code()));
                conn.report(ErrorKind::ReservedType, Some(ty), cid, err);
                return;
            }
            _ => {}
        }
        let Some(route) = self.app.find(&env.ty) else {
            let err = WsError::unimplemented(format!(
                "no handler for type `{}`",
                clip(&env.ty, MAX_QUOTED)
            ));
            conn.push(wire::encode_error(cid.is_some(), &err, cid));
            metrics::message_answered(MessageType::UNKNOWN, Some(err.code()));
            if cid.is_some() {
                metrics::rpc_terminal(Some(err.code()));
            }
            conn.report(ErrorKind::UnknownType, Some(&env.ty), cid, err);
            return;
        };
        if let Some(task) = route.dispatch(env, received_at, conn, global) {
            task::start(task, &mut self.tasks);
        }
    }
}

fn invalid_frame<D: Send + Sync + 'static>(conn: &Connection<D>, message: String) {
    // serde_json's messages may quote the input: keep the reply small whatever it was.
    let err = WsError::invalid_argument(clip(&message, MAX_ISSUE_MESSAGE).into_owned());
    conn.push(wire::encode_error(false, &err, None));
    metrics::message_answered(MessageType::INVALID, Some(err.code()));
    conn.report(ErrorKind::InvalidFrame, None, None, err);
}
