//! One connection's life: `on_open`, the read loop (each frame to its route; control frames;
//! heartbeat; ordered dispatch), then `on_close` and teardown.

use crate::app::App;
use crate::close_code;
use crate::connection::{Connection, heartbeat};
use crate::error::{MAX_ISSUE_MESSAGE, MAX_QUOTED, WsError, clip};
use crate::event::{CloseInfo, ErrorKind};
use crate::lazy_read::{BudgetExhausted, ReadState};
use crate::metrics::{self, MessageType};
use crate::outbound::{Io, IoEvent, Socket};
use crate::task::{self, panic_message};
use crate::wire;
use futures_util::{FutureExt, Sink};
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Sleep;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::{Error as WsTransportError, Message as WsMessage, Utf8Bytes};

/// Connection settings the read loop needs: one copy per service, shared by its connections.
#[derive(Clone, Debug)]
pub(crate) struct LoopConfig {
    pub(crate) max_payload_bytes: usize,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) heartbeat_timeout: Duration,
    pub(crate) close_grace: Duration,
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
/// One task per connection: `io` reads the socket and writes the outbound queue in the same
/// task. `reader` carries the connection, its router and its settings: one copy of each in this
/// future's state, which every idle connection holds. The open and close phases are boxed, so
/// their state (hooks' futures, timers) is on the heap only while they run.
///
/// A connection that comes in once shutdown has started (its upgrade was under way) is closed at
/// once with 1001, never opened: no hooks run. While it runs it is counted in `open`.
// Not an `async fn` on purpose: see the comment in the body.
#[allow(clippy::manual_async_fn)]
pub(crate) fn run<D, S>(
    mut io: Io<S>,
    mut reader: Reader<D>,
    open: Arc<AtomicUsize>,
) -> impl Future<Output = ()> + Send + 'static + use<D, S>
where
    D: Send + Sync + 'static,
    S: Socket + Send + 'static,
{
    // An `async` block, not an `async fn`: an `async fn` would keep each argument twice in
    // its state (the argument, and the local it is moved to), and every idle connection holds
    // that state.
    async move {
        if reader.conn.inner.shared.registry.is_stopping() {
            // Boxed: this rare path's state (the close frame, its timer) stays out of the future
            // every idle connection holds.
            return Box::pin(close_at_once(io.into_socket())).await;
        }
        let _open = Counted::new(open);
        heartbeat::start(
            &reader.conn.inner.shared.registry,
            reader.config.heartbeat_interval,
            reader.config.heartbeat_timeout,
        );
        // `auth_timeout` counts from the open (kept in the reader, not in this future's state).
        if let Some(gate) = reader.app.auth {
            reader.auth_timer = Some(Box::pin(tokio::time::sleep(gate.timeout)));
        }
        // The open phase writes what its hooks send while they run.
        let opened = {
            let mut opening = Box::pin(open_phase(reader.conn.clone(), reader.app.clone()));
            let out = &*reader.conn.inner.out;
            std::future::poll_fn(|cx| {
                if let Poll::Ready(opened) = opening.as_mut().poll(cx) {
                    return Poll::Ready(opened);
                }
                let _ = io.poll_write(cx, out);
                Poll::Pending
            })
            .await
        };

        // In-band authentication: an unauthenticated connection is gated. One whose upgrade gave it
        // a user id is authenticated already.
        if reader.app.auth.is_some() && opened {
            if reader.conn.user_id().is_some() {
                reader.conn.inner.auth.set_authenticated();
            }
            if !reader.conn.is_authenticated() {
                reader.gate = Gate::Closed;
            }
        }
        if reader.gate == Gate::Open {
            reader.auth_timer = None;
        }

        // A connection whose `on_open` failed is never read from.
        let client_close = if opened {
            loop {
                // Ordered dispatch holds frames; past its budget the socket waits.
                let reading = !reader.over_held_budget();
                // One future for the three things the loop waits on (a `select!` would keep one
                // future each in this state).
                let (conn, tasks, auth_timer) =
                    (&reader.conn, &mut reader.tasks, &mut reader.auth_timer);
                let woke = std::future::poll_fn(|cx| {
                    if let Poll::Ready(event) = io.poll_io(cx, &conn.inner.out, reading) {
                        return Poll::Ready(Woke::Io(event));
                    }
                    if tasks.poll_join_next(cx).is_ready() {
                        return Poll::Ready(Woke::TaskEnded);
                    }
                    if let Some(timer) = auth_timer
                        && timer.as_mut().poll(cx).is_ready()
                    {
                        return Poll::Ready(Woke::AuthTimeout);
                    }
                    Poll::Pending
                })
                .await;
                match woke {
                    Woke::Io(IoEvent::Ended) => break None,
                    Woke::Io(IoEvent::Frame(frame)) => {
                        reader.conn.inner.live.seen();
                        // Frames already read are handled in a row, without looking at the
                        // other events for each one; a server close still stops the run at once.
                        let mut frame = frame;
                        let mut budget = FRAMES_PER_WAKE;
                        let ended = loop {
                            if let Some(ended) = reader.on_frame(frame, io.read_state()) {
                                break Some(ended);
                            }
                            budget -= 1;
                            if budget == 0
                                || reader.conn.inner.out.is_closing()
                                || reader.over_held_budget()
                            {
                                break None;
                            }
                            // Without waiting, so no frame is kept in this future's state across
                            // an await. (The no-op waker is harmless: the socket is polled
                            // again with the task's waker before the task sleeps.)
                            match io.poll_next_ready(&mut Context::from_waker(Waker::noop())) {
                                Poll::Ready(next) => frame = next,
                                Poll::Pending => break None,
                            }
                        };
                        match ended {
                            None => {}
                            Some(Ended::Server) => break None,
                            Some(Ended::Client(info)) => break Some(info),
                        }
                    }
                    Woke::TaskEnded => reader.release_held(),
                    Woke::AuthTimeout => {
                        reader.auth_timer = None;
                        if !reader.conn.is_authenticated() {
                            reader.conn.report(
                                ErrorKind::AuthTimeout,
                                None,
                                None,
                                WsError::unauthenticated(
                                    "not authenticated within the auth timeout",
                                ),
                            );
                            reader
                                .conn
                                .inner
                                .out
                                .close(close_code::AUTH_TIMEOUT, "Authentication timeout");
                            break None;
                        }
                    }
                }
            }
        } else {
            None
        };
        Box::pin(close_phase(&mut io, &mut reader, client_close)).await;
    }
}

/// `on_open`: joins the connection's internal topics, then runs the app's open hooks. False when
/// one of them failed (the close is queued).
async fn open_phase<D: Send + Sync + 'static>(conn: Connection<D>, app: Arc<App<D>>) -> bool {
    let out = &conn.inner.out;
    if let Err(e) = conn.join_internal().await {
        conn.report(ErrorKind::Open, None, None, e);
        out.close(close_code::ERROR, "Internal error");
        return false;
    }
    for hook in app.on_open.iter() {
        match AssertUnwindSafe(hook(conn.clone())).catch_unwind().await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let (code, reason) = e
                    .close_frame()
                    .cloned()
                    .unwrap_or((close_code::ERROR, e.message().to_string().into()));
                conn.report(ErrorKind::Open, None, None, e);
                out.close(code, reason);
                return false;
            }
            Err(panic) => {
                conn.report(
                    ErrorKind::HookPanic,
                    None,
                    None,
                    WsError::internal(panic_message(&*panic)),
                );
                out.close(close_code::ERROR, "Internal error");
                return false;
            }
        }
    }
    true
}

/// The end of a connection: in-flight handlers stop; when the server closed, the client gets a
/// moment to answer the close frame (what is queued is written meanwhile); then `on_close`,
/// leaving every topic, and the last writes and the socket's close.
async fn close_phase<D, S>(io: &mut Io<S>, reader: &mut Reader<D>, client_close: Option<CloseInfo>)
where
    D: Send + Sync + 'static,
    S: Socket,
{
    reader.tasks.abort_all();
    let (conn, app, close_grace) = (&reader.conn, &reader.app, reader.config.close_grace);
    let out = &*conn.inner.out;
    let info = match (client_close, out.closing()) {
        (Some(info), _) => info,
        (None, Some(closing)) => {
            // The server closed: give the client a moment to answer the close frame.
            let _ = tokio::time::timeout(
                close_grace,
                std::future::poll_fn(|cx| {
                    loop {
                        match io.poll_read(cx, out) {
                            Poll::Ready(Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None) => {
                                return Poll::Ready(());
                            }
                            Poll::Ready(Some(Ok(_))) => {}
                            Poll::Pending => return Poll::Pending,
                        }
                    }
                }),
            )
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
    let _ = tokio::time::timeout(
        close_grace,
        std::future::poll_fn(|cx| io.poll_write(cx, out)),
    )
    .await;
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

/// What woke the read loop.
enum Woke {
    /// The socket: a frame, or the end (a server close, a failed write).
    Io(IoEvent),
    /// A handler's task ended.
    TaskEnded,
    /// `auth_timeout` passed.
    AuthTimeout,
}

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
    config: Arc<LoopConfig>,
    pub(crate) tasks: task::Tasks,
    /// Frames read but not dispatched yet (ordered dispatch), with their arrival times.
    /// Ordered dispatch's state; allocated the first time a frame is held.
    held: Option<Box<Held>>,
    /// An ordered frame's handler is among `tasks`: nothing else starts until they are done.
    ordered_running: bool,
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
    pub(crate) fn new(conn: Connection<D>, app: Arc<App<D>>, config: Arc<LoopConfig>) -> Self {
        Reader {
            conn,
            app,
            config,
            tasks: task::Tasks::default(),
            held: None,
            ordered_running: false,
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
    /// `reads` is the transport's read state, if it has one (see `outbound::Socket`).
    fn on_frame(
        &mut self,
        frame: Option<Result<WsMessage, WsTransportError>>,
        reads: Option<&ReadState>,
    ) -> Option<Ended> {
        if let Some(Ok(WsMessage::Text(_) | WsMessage::Binary(_) | WsMessage::Close(_))) = &frame {
            // The message is complete: its bytes no longer count against the inbound budget.
            if let Some(state) = reads {
                state.message_done();
            }
        }
        // When the frame's bytes came off the socket.
        let received_at = || reads.map_or_else(SystemTime::now, ReadState::last_read);
        match frame {
            Some(Ok(WsMessage::Text(text))) => self.on_text(text, received_at()),
            Some(Ok(WsMessage::Binary(bytes))) => match Utf8Bytes::try_from(bytes) {
                Ok(text) => self.on_text(text, received_at()),
                Err(_) => invalid_frame(&self.conn, "binary frame is not UTF-8 JSON".into()),
            },
            Some(Ok(WsMessage::Close(frame))) => {
                return Some(Ended::Client(CloseInfo::from_frame(frame.as_ref())));
            }
            Some(Ok(WsMessage::Ping(payload))) => {
                control_done(reads, &payload);
                // tungstenite answers each ping; a peer that pings without reading would make
                // the answers pile up (bounded by the write buffer), so a flood ends here.
                if self.conn.inner.live.pinged() > MAX_PINGS_PER_INTERVAL {
                    return self.close(
                        ErrorKind::Flood,
                        close_code::POLICY,
                        "Too many pings",
                        format!("more than {MAX_PINGS_PER_INTERVAL} pings in a heartbeat interval"),
                    );
                }
            }
            Some(Ok(WsMessage::Pong(payload))) => control_done(reads, &payload), // liveness only
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
                if let Some(state) = reads {
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
    fn on_text(&mut self, text: Utf8Bytes, received_at: SystemTime) {
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
                self.conn.inner.live.holding(true);
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
            self.conn.inner.live.holding(true);
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
                self.conn.inner.live.holding(false);
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
            self.conn.inner.live.holding(false);
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

/// A ping or pong was handled: its bytes leave the inbound accounting (a client's control frame
/// is its payload, at most 125 bytes, a 2-byte header and a 4-byte mask).
fn control_done(reads: Option<&ReadState>, payload: &[u8]) {
    if let Some(state) = reads {
        state.control_done(payload.len() + 6);
    }
}

fn invalid_frame<D: Send + Sync + 'static>(conn: &Connection<D>, message: String) {
    // serde_json's messages may quote the input: keep the reply small whatever it was.
    let err = WsError::invalid_argument(clip(&message, MAX_ISSUE_MESSAGE).into_owned());
    conn.push(wire::encode_error(false, &err, None));
    metrics::message_answered(MessageType::INVALID, Some(err.code()));
    conn.report(ErrorKind::InvalidFrame, None, None, err);
}
