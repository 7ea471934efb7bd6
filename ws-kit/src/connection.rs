//! One connection's life: the read loop, dispatch of each frame, RPC bookkeeping, teardown.

use crate::context::{Connection, Ctx, RpcSlot};
use crate::error::{ErrorCode, Issue, WsError};
use crate::handler::{Declined, Handler};
use crate::lazy_read::ReadClock;
use crate::message::{Message, Meta};
use crate::middleware::Next;
use crate::outbound::write_loop;
use crate::router::{CloseInfo, ErrorKind};
use crate::wire::{self, Envelope};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, Sink, Stream, StreamExt};
use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::{Error as WsTransportError, Message as WsMessage};

/// Connection settings the read loop needs.
#[derive(Clone, Debug)]
pub(crate) struct LoopConfig {
    pub max_payload_bytes: usize,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub close_grace: Duration,
    /// The time of the transport's last socket read, when it has one (see `LazyRead`).
    pub read_clock: Option<Arc<ReadClock>>,
}

pub(crate) fn now_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs a connection to its end: `on_open`, the read loop, then `on_close` and cleanup.
pub(crate) async fn run<D, S>(
    socket: S,
    conn: Connection<D>,
    config: LoopConfig,
    mut shutdown: watch::Receiver<bool>,
) where
    D: Send + Sync + 'static,
    S: Stream<Item = Result<WsMessage, WsTransportError>>
        + Sink<WsMessage>
        + Unpin
        + Send
        + 'static,
{
    let (sink, mut stream) = socket.split();
    let out = conn.inner.out.clone();
    let writer = tokio::spawn(write_loop(sink, out.clone()));
    let app = conn.inner.app.clone();

    let mut opened = true;
    if let Err(e) = conn.join_internal().await {
        conn.report(ErrorKind::Open, None, None, e);
        out.close(1011, "Internal error");
        opened = false;
    }
    for hook in app.on_open.iter().filter(|_| opened) {
        match AssertUnwindSafe(hook(conn.clone())).catch_unwind().await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let (code, reason) = e
                    .close_frame()
                    .cloned()
                    .unwrap_or((1011, e.message().to_string().into()));
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
                out.close(1011, "Internal error");
                opened = false;
                break;
            }
        }
    }

    let mut tasks: JoinSet<()> = JoinSet::new();
    // Liveness is checked at each ping tick: a frame only sets `active`, so the hot path reads
    // no clock. A connection is closed between `timeout` and `timeout + interval` after its last
    // frame, never earlier.
    let mut last_seen = tokio::time::Instant::now();
    let mut active = false;
    let ping = tokio::time::sleep(config.heartbeat_interval);
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
            tokio::select! {
                biased;
                () = &mut closed_by_server => break,
                _ = &mut shutdown_started => {
                    out.close(1001, "Server shutting down");
                    break;
                }
                frame = stream.next() => {
                    active = true;
                    // Frames already read are handled in a row, without re-polling the other
                    // branches for each one; a server close still stops the run at once.
                    let mut frame = frame;
                    let mut budget = FRAMES_PER_WAKE;
                    let ended = loop {
                        if let Some(ended) = on_frame(&conn, &config, frame, &mut tasks) {
                            break Some(ended);
                        }
                        budget -= 1;
                        if budget == 0 || out.is_closing() {
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
                    if std::mem::take(&mut active) {
                        last_seen = now;
                    } else if now - last_seen >= config.heartbeat_timeout {
                        out.close(4002, "Heartbeat timeout");
                        break;
                    }
                    out.push(WsMessage::Ping(Default::default()));
                    ping.as_mut().reset(now + config.heartbeat_interval);
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
    }

    // In-flight handlers end with the connection.
    tasks.abort_all();

    let info = match (client_close, out.closing()) {
        (Some(info), _) => info,
        (None, Some(closing)) => {
            // The server closed: give the client a moment to answer the close frame.
            let _ = tokio::time::timeout(config.close_grace, async {
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
        (None, None) => CloseInfo {
            code: 1006,
            reason: String::new(),
        },
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
    // Subscriptions go after the close hooks, which may still publish.
    conn.inner
        .closed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let topics: Vec<Box<str>> = conn
        .inner
        .topics
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain()
        .collect();
    for topic in topics {
        let _ = app.pubsub.unsubscribe(&topic, conn.client_id()).await;
    }
    let internal = std::mem::take(
        &mut *conn
            .inner
            .internal_topics
            .lock()
            .unwrap_or_else(|e| e.into_inner()),
    );
    for topic in internal {
        let _ = app.pubsub.unsubscribe(&topic, conn.client_id()).await;
    }
    conn.inner
        .inflight
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    out.finish();
    let _ = tokio::time::timeout(config.close_grace, writer).await;
}

/// How many frames the read loop handles in a row before it looks at its other events again.
const FRAMES_PER_WAKE: usize = 64;

/// Why the read loop stops.
enum Ended {
    /// The server closed (the close is queued on the outbound queue).
    Server,
    /// The client closed, or the transport ended.
    Client(CloseInfo),
}

/// Handles one item of the socket stream; `Some` when the connection ends with it.
fn on_frame<D: Send + Sync + 'static>(
    conn: &Connection<D>,
    config: &LoopConfig,
    frame: Option<Result<WsMessage, WsTransportError>>,
    tasks: &mut JoinSet<()>,
) -> Option<Ended> {
    match frame {
        Some(Ok(WsMessage::Text(text))) => on_text(conn, config, text.as_str(), tasks),
        Some(Ok(WsMessage::Binary(bytes))) => match std::str::from_utf8(&bytes) {
            Ok(text) => on_text(conn, config, text, tasks),
            Err(_) => invalid_frame(conn, "binary frame is not UTF-8 JSON".into()),
        },
        Some(Ok(WsMessage::Close(frame))) => {
            return Some(Ended::Client(CloseInfo::from_frame(frame.as_ref())));
        }
        Some(Ok(_)) => {} // ping, pong, raw frames: liveness only
        Some(Err(WsTransportError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
            conn.report(
                ErrorKind::PayloadTooLarge,
                None,
                None,
                WsError::resource_exhausted(format!("frame of {size} bytes exceeds {max_size}")),
            );
            conn.inner.out.close(1009, "Message too big");
            return Some(Ended::Server);
        }
        Some(Err(_)) | None => {
            return Some(Ended::Client(CloseInfo {
                code: 1006,
                reason: String::new(),
            }));
        }
    }
    None
}

fn invalid_frame<D: Send + Sync + 'static>(conn: &Connection<D>, message: String) {
    let err = WsError::invalid_argument(message);
    conn.push(wire::encode_error(false, &err, None));
    conn.report(ErrorKind::InvalidFrame, None, None, err);
}

/// Handles one text frame: envelope, reserved types, routing.
pub(crate) fn on_text<D: Send + Sync + 'static>(
    conn: &Connection<D>,
    config: &LoopConfig,
    text: &str,
    tasks: &mut JoinSet<()>,
) {
    // When the frame's bytes came off the socket.
    let received_at = config
        .read_clock
        .as_ref()
        .map_or_else(SystemTime::now, |clock| clock.last_read());
    if text.len() > config.max_payload_bytes {
        // Only reachable in `Reject` mode: the transport closes with 1009 otherwise.
        let err = WsError::resource_exhausted(format!(
            "frame exceeds {} bytes",
            config.max_payload_bytes
        ))
        .with_details(serde_json::json!({ "size": text.len(), "limit": config.max_payload_bytes }));
        conn.push(wire::encode_error(false, &err, None));
        conn.report(ErrorKind::PayloadTooLarge, None, None, err);
        return;
    }
    // The fast path: a frame that opens with its type tag and names a route is decoded in one
    // pass. It declines anything unusual, which then takes the full path below.
    if let Some(route) = wire::peek_type(text).and_then(|ty| conn.inner.app.find(ty))
        && let Ok(task) = route.dispatch_text(text, received_at, conn)
    {
        if let Some(task) = task {
            start(task, tasks);
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
            return;
        }
        "$ws:abort" => {
            abort(conn, cid);
            return;
        }
        ty if wire::is_reserved(ty) => {
            let err = WsError::invalid_argument(format!("type `{ty}` is reserved"));
            conn.push(wire::encode_error(false, &err, cid));
            conn.report(ErrorKind::ReservedType, Some(ty), cid, err);
            return;
        }
        _ => {}
    }
    let app = &conn.inner.app;
    let Some(route) = app.find(&env.ty) else {
        let err = WsError::unimplemented(format!("no handler for type `{}`", env.ty));
        conn.push(wire::encode_error(cid.is_some(), &err, cid));
        conn.report(ErrorKind::UnknownType, Some(&env.ty), cid, err);
        return;
    };
    if let Some(task) = route.dispatch(env, received_at, conn) {
        start(task, tasks);
    }
}

/// `$ws:abort`: the request's terminal becomes `CANCELLED` and its handler is dropped.
fn abort<D: Send + Sync + 'static>(conn: &Connection<D>, cid: Option<&str>) {
    let Some(cid) = cid else { return };
    let slot = conn
        .inner
        .inflight
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(cid)
        .cloned();
    if let Some(slot) = slot {
        let err = WsError::cancelled("Request cancelled by client");
        if slot.terminal(&conn.inner.out, || {
            wire::encode_error(true, &err, Some(cid))
        }) {
            slot.cancel();
        }
    }
}

/// Starts a handler: runs it until it first waits, so what it does before waiting keeps arrival
/// order (PROTOCOL.md 2a); only a handler that waits becomes a task of its own.
fn start(task: BoxFuture<'static, ()>, tasks: &mut JoinSet<()>) {
    let mut task = task;
    let mut cx = Context::from_waker(Waker::noop());
    if task.as_mut().poll(&mut cx).is_pending() {
        // The spawned task is polled again at once, with a real waker.
        tasks.spawn(task);
    }
}

/// Decodes a parsed envelope for handler `H` and builds the task that runs it. `None` when the
/// frame was answered or dropped on the spot.
pub(crate) fn dispatch<H: Handler>(
    handler: &H,
    env: Envelope<'_>,
    received_at: SystemTime,
    conn: &Connection<H::Data>,
) -> Option<BoxFuture<'static, ()>> {
    let Envelope {
        payload,
        meta,
        meta_extra,
        mut issues,
        ..
    } = env;
    // A duplicate id is dropped by `launch`, before any issue found here is answered.
    let message = match H::Message::__decode(payload, &meta_extra) {
        Ok(message) => Some(message),
        Err(mut found) => {
            issues.append(&mut found);
            None
        }
    };
    let message = message.filter(|m| {
        if issues.is_empty() {
            m.__validate(&mut issues);
        }
        issues.is_empty()
    });
    launch(handler, message.ok_or(issues), meta, received_at, conn)
}

/// The fast path of [`dispatch`]: decodes the whole frame in one pass. `Err` when the frame is
/// not a plain, valid-looking envelope of this type (nothing was sent or reported); the caller
/// then parses it in full.
pub(crate) fn dispatch_direct<H: Handler>(
    handler: &H,
    text: &str,
    received_at: SystemTime,
    conn: &Connection<H::Data>,
) -> Result<Option<BoxFuture<'static, ()>>, Declined> {
    let (message, meta) = wire::decode_direct::<H::Message>(text).ok_or(Declined)?;
    // Validated before the duplicate check; `launch` sends nothing for a duplicate either way.
    let mut issues = Vec::new();
    message.__validate(&mut issues);
    let message = if issues.is_empty() {
        Ok(message)
    } else {
        Err(issues)
    };
    Ok(launch(handler, message, meta, received_at, conn))
}

/// Builds the task for a decoded message, or answers its validation issues: in-flight
/// bookkeeping of an RPC (duplicate ids dropped, the in-flight limit), its deadline, the context,
/// the middleware chain. The in-flight table is locked once here.
fn launch<H: Handler>(
    handler: &H,
    message: Result<H::Message, Vec<Issue>>,
    meta: Meta,
    received_at: SystemTime,
    conn: &Connection<H::Data>,
) -> Option<BoxFuture<'static, ()>> {
    let ty = H::Message::TYPE;
    let rpc = H::Message::__IS_RPC;
    let limits = &conn.inner.app.limits;
    let cid = meta.correlation_id.clone();
    let slot = match (&message, &cid) {
        _ if !rpc => None,
        (Ok(_), None) => Some(Arc::new(RpcSlot::new(None))),
        (Err(_), None) => None,
        (message, Some(id)) => {
            enum Verdict {
                Accepted,
                Duplicate,
                Invalid,
                Full,
            }
            let inflight = conn
                .inner
                .inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let verdict = if inflight.contains_key(id) {
                Verdict::Duplicate
            } else if message.is_err() {
                Verdict::Invalid
            } else if inflight.len() >= limits.max_inflight_rpcs {
                Verdict::Full
            } else {
                Verdict::Accepted
            };
            drop(inflight);
            match verdict {
                // Entered in the table only if its handler waits (see `RpcTask`): a request
                // answered within its first poll is never seen by another frame.
                Verdict::Accepted => Some(Arc::new(RpcSlot::new(cid.clone()))),
                Verdict::Invalid => None,
                // Nothing is sent for a duplicate: any frame would carry the first request's id.
                Verdict::Duplicate => {
                    let err = WsError::already_exists(format!(
                        "correlation id `{id}` is already in flight"
                    ));
                    conn.report(ErrorKind::DuplicateCorrelation, Some(ty), Some(id), err);
                    return None;
                }
                Verdict::Full => {
                    let err = WsError::resource_exhausted(format!(
                        "at most {} requests in flight per connection",
                        limits.max_inflight_rpcs
                    ))
                    .with_retry_after_ms(100);
                    conn.push(wire::encode_error(true, &err, Some(id)));
                    conn.report(ErrorKind::InflightLimit, Some(ty), Some(id), err);
                    return None;
                }
            }
        }
    };
    let message = match message {
        Ok(message) => message,
        Err(issues) => {
            reject(conn, rpc, ty, cid.as_deref(), issues);
            return None;
        }
    };

    // The monotonic clock is read only for a request that has a deadline.
    let budget = match (
        rpc,
        meta.timeout_ms.map(Duration::from_millis),
        limits.max_rpc_timeout,
    ) {
        (false, _, _) => None,
        (true, Some(hint), Some(max)) => Some(hint.min(max)),
        (true, hint, max) => hint.or(max),
    };
    let deadline = budget.map(|budget| tokio::time::Instant::now().into_std() + budget);

    let ctx = Ctx::new(
        message,
        conn.clone(),
        meta,
        received_at,
        deadline,
        slot.clone(),
    );
    let conn = conn.clone();
    if conn.inner.app.middleware.is_empty() {
        // One allocation per frame: the handler's future lives inside the task's.
        Some(wrap(handler.call(ctx), conn, ty, cid, slot, deadline))
    } else {
        let request = ctx.request();
        let endpoint = Box::pin(handler.call(ctx));
        let chain = Next::new(conn.inner.app.middleware.clone(), request, endpoint).run();
        Some(wrap(chain, conn, ty, cid, slot, deadline))
    }
}

/// The task of one frame: the handler's work with error, panic and RPC terminal handling. One
/// allocation, which holds the handler's future in place.
fn wrap<D, F>(
    work: F,
    conn: Connection<D>,
    ty: &'static str,
    cid: Option<Arc<str>>,
    slot: Option<Arc<RpcSlot>>,
    deadline: Option<Instant>,
) -> BoxFuture<'static, ()>
where
    D: Send + Sync + 'static,
    F: Future<Output = Result<(), WsError>> + Send + 'static,
{
    match slot {
        None => Box::pin(EventTask {
            work,
            conn,
            ty,
            cid,
        }),
        Some(slot) => Box::pin(RpcTask {
            work,
            guard: InflightGuard {
                conn,
                slot,
                registered: false,
            },
            ty,
            deadline,
            timer: None,
        }),
    }
}

/// Replies `INVALID_ARGUMENT` with `details.issues`.
fn reject<D: Send + Sync + 'static>(
    conn: &Connection<D>,
    rpc: bool,
    ty: &str,
    cid: Option<&str>,
    issues: Vec<Issue>,
) {
    let err = WsError::validation(issues);
    conn.push(wire::encode_error(rpc, &err, cid));
    conn.report(ErrorKind::Validation, Some(ty), cid, err);
}

/// Polls the handler's future, catching a panic.
fn poll_work<F: Future<Output = Result<(), WsError>>>(
    work: Pin<&mut F>,
    cx: &mut Context<'_>,
) -> Poll<Result<Result<(), WsError>, Box<dyn Any + Send>>> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| work.poll(cx))) {
        Ok(Poll::Pending) => Poll::Pending,
        Ok(Poll::Ready(result)) => Poll::Ready(Ok(result)),
        Err(panic) => Poll::Ready(Err(panic)),
    }
}

pin_project_lite::pin_project! {
    /// An event's task: its handler's errors and panics become `ERROR` frames.
    struct EventTask<F, D> {
        #[pin]
        work: F,
        conn: Connection<D>,
        ty: &'static str,
        cid: Option<Arc<str>>,
    }
}

impl<F, D> Future for EventTask<F, D>
where
    F: Future<Output = Result<(), WsError>>,
    D: Send + Sync + 'static,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let end = std::task::ready!(poll_work(this.work, cx));
        let (conn, ty, cid) = (&*this.conn, *this.ty, this.cid.as_deref());
        match end {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                conn.push(wire::encode_error(false, &err, cid));
                conn.report(ErrorKind::Handler, Some(ty), cid, err);
            }
            Err(panic) => {
                conn.push(wire::encode_error(
                    false,
                    &WsError::from_code(ErrorCode::Internal),
                    cid,
                ));
                conn.report(
                    ErrorKind::Panic,
                    Some(ty),
                    cid,
                    WsError::internal(panic_message(&*panic)),
                );
            }
        }
        Poll::Ready(())
    }
}

/// An RPC's entry in the in-flight table: added when its handler first waits, removed however
/// its task ends (finished, aborted, dropped).
struct InflightGuard<D: Send + Sync + 'static> {
    conn: Connection<D>,
    slot: Arc<RpcSlot>,
    registered: bool,
}

impl<D: Send + Sync + 'static> InflightGuard<D> {
    /// Enters the request in the table, so `$ws:abort`, duplicate ids and the in-flight limit see
    /// it. Called on the read loop, within the frame's first poll: no other frame came between
    /// `launch`'s checks and this.
    fn register(&mut self) {
        if let Some(id) = &self.slot.correlation_id {
            self.conn
                .inner
                .inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.clone(), self.slot.clone());
            self.registered = true;
        }
    }
}

impl<D: Send + Sync + 'static> Drop for InflightGuard<D> {
    fn drop(&mut self) {
        if !self.registered {
            return;
        }
        if let Some(id) = &self.slot.correlation_id {
            let mut inflight = self
                .conn
                .inner
                .inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if inflight.get(id).is_some_and(|s| Arc::ptr_eq(s, &self.slot)) {
                inflight.remove(id);
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's task: exactly one terminal frame, whether the handler replies, fails, panics,
    /// is aborted (`$ws:abort`) or runs past its deadline.
    ///
    /// The handler is polled first; the abort flag and the deadline are looked at only when it
    /// waits, and a deadline's timer exists only once it has waited.
    struct RpcTask<F, D>
    where
        D: Send,
        D: Sync,
        D: 'static,
    {
        #[pin]
        work: F,
        guard: InflightGuard<D>,
        ty: &'static str,
        deadline: Option<Instant>,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

enum RpcEnd {
    Finished(Result<Result<(), WsError>, Box<dyn Any + Send>>),
    Cancelled,
    DeadlineExceeded,
}

impl<F, D> Future for RpcTask<F, D>
where
    F: Future<Output = Result<(), WsError>>,
    D: Send + Sync + 'static,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let end = match poll_work(this.work, cx) {
            Poll::Ready(result) => RpcEnd::Finished(result),
            Poll::Pending => {
                if !this.guard.registered {
                    this.guard.register();
                }
                let slot = &this.guard.slot;
                slot.register(cx.waker());
                if slot.is_cancelled() {
                    RpcEnd::Cancelled
                } else if let Some(deadline) = *this.deadline {
                    let timer = this
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
                    std::task::ready!(timer.as_mut().poll(cx));
                    RpcEnd::DeadlineExceeded
                } else {
                    return Poll::Pending;
                }
            }
        };
        finish_rpc(&this.guard.conn, &this.guard.slot, this.ty, end);
        Poll::Ready(())
    }
}

/// Sends a request's terminal frame if none was sent, and reports how it ended.
fn finish_rpc<D: Send + Sync + 'static>(
    conn: &Connection<D>,
    slot: &RpcSlot,
    ty: &'static str,
    end: RpcEnd,
) {
    let cid = slot.correlation_id.as_deref();
    let out = &conn.inner.out;
    let terminal = |err: WsError, kind: ErrorKind, report: WsError| {
        if slot.terminal(out, || wire::encode_error(true, &err, cid)) {
            conn.report(kind, Some(ty), cid, report);
        }
    };
    match end {
        // The common case (the handler replied) costs one flag check, no error value.
        RpcEnd::Finished(Ok(Ok(()))) if slot.is_done() => {}
        RpcEnd::Finished(Ok(Ok(()))) => {
            let err = WsError::internal("RPC handler finished without a reply");
            terminal(err.clone(), ErrorKind::MissingTerminal, err);
        }
        RpcEnd::Finished(Ok(Err(err))) => {
            if !slot.terminal(out, || wire::encode_error(true, &err, cid)) {
                conn.report(ErrorKind::AfterTerminal, Some(ty), cid, err);
            } else {
                conn.report(ErrorKind::Handler, Some(ty), cid, err);
            }
        }
        RpcEnd::Finished(Err(panic)) => {
            terminal(
                WsError::from_code(ErrorCode::Internal),
                ErrorKind::Panic,
                WsError::internal(panic_message(&*panic)),
            );
        }
        RpcEnd::Cancelled => {}
        RpcEnd::DeadlineExceeded => {
            let err = WsError::deadline_exceeded("Request deadline exceeded");
            terminal(err.clone(), ErrorKind::DeadlineExceeded, err);
        }
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        format!("handler panicked: {s}")
    } else if let Some(s) = panic.downcast_ref::<String>() {
        format!("handler panicked: {s}")
    } else {
        "handler panicked".to_string()
    }
}
