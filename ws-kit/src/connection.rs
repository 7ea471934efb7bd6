//! One connection's life: the read loop, dispatch of each frame, RPC bookkeeping, teardown.

use crate::context::{Connection, Ctx, RpcSlot};
use crate::error::{ErrorCode, Issue, WsError};
use crate::handler::Handler;
use crate::message::Message;
use crate::middleware::Next;
use crate::outbound::write_loop;
use crate::router::{CloseInfo, ErrorKind};
use crate::wire::{self, Envelope};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, Sink, Stream, StreamExt};
use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Waker};
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
                    match frame {
                        Some(Ok(WsMessage::Text(text))) => on_text(&conn, &config, text.as_str(), &mut tasks),
                        Some(Ok(WsMessage::Binary(bytes))) => match std::str::from_utf8(&bytes) {
                            Ok(text) => on_text(&conn, &config, text, &mut tasks),
                            Err(_) => invalid_frame(&conn, "binary frame is not UTF-8 JSON".into()),
                        },
                        Some(Ok(WsMessage::Close(frame))) => {
                            client_close = Some(match frame {
                                Some(f) => CloseInfo { code: f.code.into(), reason: f.reason.to_string() },
                                None => CloseInfo { code: 1005, reason: String::new() },
                            });
                            break;
                        }
                        Some(Ok(_)) => {} // ping, pong, raw frames: liveness only
                        Some(Err(WsTransportError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                            conn.report(
                                ErrorKind::PayloadTooLarge,
                                None,
                                None,
                                WsError::resource_exhausted(format!("frame of {size} bytes exceeds {max_size}")),
                            );
                            out.close(1009, "Message too big");
                            break;
                        }
                        Some(Err(_)) | None => {
                            client_close = Some(CloseInfo { code: 1006, reason: String::new() });
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
    let received_at = SystemTime::now();
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
            slot.cancel.notify_one();
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

/// Decodes a frame for handler `H` and builds the task that runs it. `None` when the frame was
/// answered or dropped on the spot.
pub(crate) fn dispatch<H: Handler>(
    handler: &H,
    env: Envelope<'_>,
    received_at: SystemTime,
    conn: &Connection<H::Data>,
) -> Option<BoxFuture<'static, ()>> {
    let ty = H::Message::TYPE;
    let rpc = H::Message::__IS_RPC;
    let limits = &conn.inner.app.limits;
    let Envelope {
        payload,
        meta,
        meta_extra,
        mut issues,
        ..
    } = env;
    let cid = meta.correlation_id.clone();

    // A duplicate in-flight id is dropped before anything is sent for it: any frame would carry
    // the first request's correlation id.
    if let Some(id) = cid.as_ref().filter(|_| rpc) {
        let duplicate = conn
            .inner
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(id);
        if duplicate {
            let err =
                WsError::already_exists(format!("correlation id `{id}` is already in flight"));
            conn.report(ErrorKind::DuplicateCorrelation, Some(ty), Some(id), err);
            return None;
        }
    }

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
    let Some(message) = message else {
        reject(conn, rpc, ty, cid.as_deref(), issues);
        return None;
    };

    let slot = if rpc {
        let slot = Arc::new(RpcSlot::new(cid.clone()));
        if let Some(id) = &cid {
            let mut inflight = conn
                .inner
                .inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if inflight.len() >= limits.max_inflight_rpcs {
                drop(inflight);
                let err = WsError::resource_exhausted(format!(
                    "at most {} requests in flight per connection",
                    limits.max_inflight_rpcs
                ))
                .with_retry_after_ms(100);
                conn.push(wire::encode_error(true, &err, Some(id)));
                conn.report(ErrorKind::InflightLimit, Some(ty), Some(id), err);
                return None;
            }
            inflight.insert(id.clone(), slot.clone());
        }
        Some(slot)
    } else {
        None
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

/// The task of one frame: the handler's work with error, panic and RPC terminal handling.
fn wrap<D, F>(
    work: F,
    conn: Connection<D>,
    ty: &'static str,
    cid: Option<Box<str>>,
    slot: Option<Arc<RpcSlot>>,
    deadline: Option<Instant>,
) -> BoxFuture<'static, ()>
where
    D: Send + Sync + 'static,
    F: Future<Output = Result<(), WsError>> + Send + 'static,
{
    match slot {
        None => Box::pin(run_event(work, conn, ty, cid)),
        Some(slot) => Box::pin(run_rpc(work, conn, ty, slot, deadline)),
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

async fn run_event<D: Send + Sync + 'static>(
    work: impl Future<Output = Result<(), WsError>> + Send,
    conn: Connection<D>,
    ty: &'static str,
    cid: Option<Box<str>>,
) {
    let cid = cid.as_deref();
    match AssertUnwindSafe(work).catch_unwind().await {
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
}

/// Removes an RPC from the in-flight table however its task ends (finished, aborted, dropped).
struct InflightGuard<D: Send + Sync + 'static> {
    conn: Connection<D>,
    slot: Arc<RpcSlot>,
}

impl<D: Send + Sync + 'static> Drop for InflightGuard<D> {
    fn drop(&mut self) {
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

enum RpcEnd {
    Finished(Result<Result<(), WsError>, Box<dyn Any + Send>>),
    Cancelled,
    DeadlineExceeded,
}

async fn run_rpc<D: Send + Sync + 'static>(
    work: impl Future<Output = Result<(), WsError>> + Send,
    conn: Connection<D>,
    ty: &'static str,
    slot: Arc<RpcSlot>,
    deadline: Option<Instant>,
) {
    let _guard = InflightGuard {
        conn: conn.clone(),
        slot: slot.clone(),
    };
    let work = AssertUnwindSafe(work).catch_unwind();
    // No timer is registered for a request without a deadline.
    let expired = async {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
            None => std::future::pending().await,
        }
    };
    let end = tokio::select! {
        biased;
        result = work => RpcEnd::Finished(result),
        () = slot.cancel.notified() => RpcEnd::Cancelled,
        () = expired => RpcEnd::DeadlineExceeded,
    };
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
