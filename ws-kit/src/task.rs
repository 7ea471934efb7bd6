//! The task of one frame: the handler's future, held in place, with its errors, panics and — for
//! a request — its one terminal frame (reply, error, `CANCELLED` by `$ws:abort`,
//! `DEADLINE_EXCEEDED`). And [`start`], which runs a task until it first waits.

use crate::codec::ReplyFrame;
use crate::connection::Connection;
use crate::connection::rpc::RpcSlot;
use crate::error::{ErrorCode, WsError};
use crate::event::ErrorKind;
use crate::metrics::{self, MessageType, Started};
use crate::wire;
use futures_util::future::BoxFuture;
use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;
use tokio::task::JoinSet;

/// A frame's work, ready to run.
pub(crate) type Task = BoxFuture<'static, ()>;

/// Starts a handler: runs it until it first waits, so what it does before waiting keeps arrival
/// order (docs/protocol.md 2a); only a handler that waits becomes a task of its own.
pub(crate) fn start(task: Task, tasks: &mut Tasks) {
    let mut task = task;
    let mut cx = Context::from_waker(Waker::noop());
    if task.as_mut().poll(&mut cx).is_pending() {
        // The spawned task is polled again at once, with a real waker.
        tasks.0.get_or_insert_with(JoinSet::new).spawn(task);
    }
}

/// A connection's handlers that wait, each a task. The set is made by the first one and dropped
/// when the last one ends, so a connection whose handlers never wait holds none (a `JoinSet` is
/// an allocation of its own).
#[derive(Default)]
pub(crate) struct Tasks(Option<JoinSet<()>>);

impl Tasks {
    /// How many run.
    pub(crate) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, JoinSet::len)
    }

    /// Whether none runs.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ready when one ended; never when none runs.
    pub(crate) fn poll_join_next(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(set) = self.0.as_mut() else {
            return Poll::Pending;
        };
        match set.poll_join_next(cx) {
            Poll::Ready(Some(_)) => {
                if set.is_empty() {
                    self.0 = None;
                }
                Poll::Ready(())
            }
            Poll::Ready(None) => {
                self.0 = None;
                Poll::Pending
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Stops every one (they end with the connection).
    pub(crate) fn abort_all(&mut self) {
        if let Some(set) = self.0.take() {
            drop(set); // dropping a JoinSet aborts its tasks
        }
    }
}

/// The task of one frame: the handler's work with error, panic and RPC terminal handling. One
/// allocation, which holds the handler's future in place. `work` ends with the handler's reply
/// (a request's response), or `()` (an event, or a request whose reply the middleware chain's
/// end already sent). `span` is the frame's [`message_span`], made before `work` was.
#[inline]
pub(crate) fn wrap<D, F, R>(
    work: F,
    conn: Connection<D>,
    (ty, metric): (&'static str, MessageType),
    cid: Option<Arc<str>>,
    slot: Option<Arc<RpcSlot>>,
    deadline: Option<Instant>,
    span: Option<tracing::Span>,
) -> Task
where
    D: Send + Sync + 'static,
    F: Future<Output = Result<R, WsError>> + Send + 'static,
    R: ReplyFrame,
{
    let task = build(work, conn, (ty, metric), cid, slot, deadline);
    match span {
        None => task,
        Some(span) => in_span(task, span),
    }
}

/// The `ws.message` span of a frame, when a subscriber wants it; until a subscriber was ever
/// installed, one relaxed load. Called before the handler's future is made: a call between
/// making that future and boxing it would copy the future once more on every message.
#[inline]
pub(crate) fn message_span(ty: &'static str, cid: Option<&str>) -> Option<tracing::Span> {
    if tracing::dispatcher::has_been_set() {
        new_message_span(ty, cid)
    } else {
        None
    }
}

/// The task itself: an event's, or a request's with its in-flight guard.
#[inline]
fn build<D, F, R>(
    work: F,
    conn: Connection<D>,
    (ty, metric): (&'static str, MessageType),
    cid: Option<Arc<str>>,
    slot: Option<Arc<RpcSlot>>,
    deadline: Option<Instant>,
) -> Task
where
    D: Send + Sync + 'static,
    F: Future<Output = Result<R, WsError>> + Send + 'static,
    R: ReplyFrame,
{
    // The handler's start, for its duration (no clock read without the `metrics` feature).
    let started = Started::now();
    match slot {
        None => Box::pin(EventTask {
            work,
            conn,
            ty,
            cid,
            metric,
            started,
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
            metric,
            started,
        }),
    }
}

/// The `ws.message` span itself, or `None` when the subscriber does not want it.
#[cold]
#[inline(never)]
fn new_message_span(ty: &'static str, cid: Option<&str>) -> Option<tracing::Span> {
    let span = tracing::debug_span!(
        "ws.message",
        r#type = ty,
        correlation_id = cid,
        outcome = "ok",
        duration_us = tracing::field::Empty,
    );
    (!span.is_disabled()).then_some(span)
}

/// A task inside its span, when the subscriber wants the span.
#[cold]
#[inline(never)]
fn in_span(task: Task, span: tracing::Span) -> Task {
    Box::pin(Traced {
        task,
        span,
        start: Instant::now(),
    })
}

pin_project_lite::pin_project! {
    /// A task inside its message's span: entered on every poll (so the handler's own events and
    /// the framework's error reports land in it), its duration recorded at the end.
    struct Traced<F> {
        #[pin]
        task: F,
        span: tracing::Span,
        start: Instant,
    }
}

impl<F: Future<Output = ()>> Future for Traced<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let _entered = this.span.enter();
        let done = this.task.poll(cx);
        if done.is_ready() {
            this.span
                .record("duration_us", this.start.elapsed().as_micros() as u64);
        }
        done
    }
}

/// Queues a request's reply as its terminal frame. `Err` when it cannot be encoded (the caller
/// then sends the error as the terminal). A reply after the terminal (the request was aborted or
/// timed out meanwhile) is reported, not sent.
pub(crate) fn send_reply<D: Send + Sync + 'static, R: ReplyFrame>(
    conn: &Connection<D>,
    slot: &RpcSlot,
    ty: &'static str,
    cid: Option<&str>,
    reply: &R,
) -> Result<(), WsError> {
    let Some(frame) = reply.reply_frame(cid) else {
        return Ok(());
    };
    let frame = frame?;
    if slot.terminal(&conn.inner.out, || frame) {
        metrics::rpc_terminal(None);
    } else {
        conn.report(
            ErrorKind::AfterTerminal,
            Some(ty),
            cid,
            WsError::internal("reply after the request's terminal frame"),
        );
    }
    Ok(())
}

/// Polls the handler's future, catching a panic.
fn poll_work<F: Future>(
    work: Pin<&mut F>,
    cx: &mut Context<'_>,
) -> Poll<Result<F::Output, Box<dyn Any + Send>>> {
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
        metric: MessageType,
        started: Started,
    }
}

impl<F, D, R> Future for EventTask<F, D>
where
    F: Future<Output = Result<R, WsError>>,
    D: Send + Sync + 'static,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let end = std::task::ready!(poll_work(this.work, cx));
        let (conn, ty, cid) = (&*this.conn, *this.ty, this.cid.as_deref());
        match end {
            Ok(Ok(_)) => metrics::message_handled(*this.metric, None, *this.started),
            Ok(Err(err)) => {
                metrics::message_handled(*this.metric, Some(err.code()), *this.started);
                conn.push(wire::encode_error(false, &err, cid));
                conn.report(ErrorKind::Handler, Some(ty), cid, err);
            }
            Err(panic) => {
                metrics::message_handled(*this.metric, Some(&ErrorCode::Internal), *this.started);
                conn.push(wire::encode_error(
                    false,
                    &WsError::from_code(ErrorCode::Internal).with_default_retry(),
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
        metric: MessageType,
        started: Started,
    }
}

enum RpcEnd<R> {
    Finished(Result<Result<R, WsError>, Box<dyn Any + Send>>),
    Cancelled,
    DeadlineExceeded,
}

impl<F, D, R> Future for RpcTask<F, D>
where
    F: Future<Output = Result<R, WsError>>,
    D: Send + Sync + 'static,
    R: ReplyFrame,
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
        let code = finish_rpc(&this.guard.conn, &this.guard.slot, this.ty, end);
        metrics::message_handled(*this.metric, code.as_ref(), *this.started);
        Poll::Ready(())
    }
}

/// Sends a request's terminal frame if none was sent, and reports how it ended. Returns its
/// outcome for the metrics: `None` for a reply, else the error's code.
fn finish_rpc<D: Send + Sync + 'static, R: ReplyFrame>(
    conn: &Connection<D>,
    slot: &RpcSlot,
    ty: &'static str,
    end: RpcEnd<R>,
) -> Option<ErrorCode> {
    let cid = slot.correlation_id.as_deref();
    let out = &conn.inner.out;
    let terminal = |err: WsError, kind: ErrorKind, report: WsError| {
        if slot.terminal(out, || wire::encode_error(true, &err, cid)) {
            metrics::rpc_terminal(Some(err.code()));
            conn.report(kind, Some(ty), cid, report);
        }
    };
    let failed = |err: WsError| {
        let code = err.code().clone();
        if slot.terminal(out, || wire::encode_error(true, &err, cid)) {
            metrics::rpc_terminal(Some(&code));
            conn.report(ErrorKind::Handler, Some(ty), cid, err);
        } else {
            conn.report(ErrorKind::AfterTerminal, Some(ty), cid, err);
        }
        Some(code)
    };
    match end {
        // The common case: the handler's reply becomes the terminal.
        RpcEnd::Finished(Ok(Ok(reply))) => match send_reply(conn, slot, ty, cid, &reply) {
            Ok(()) if slot.is_done() => None,
            // Only the middleware chain ends with `()` and no terminal: it never ran the handler.
            Ok(()) => {
                let err = WsError::internal("RPC middleware finished without running the handler")
                    .with_default_retry();
                terminal(err.clone(), ErrorKind::MissingTerminal, err);
                Some(ErrorCode::Internal)
            }
            Err(err) => failed(err),
        },
        RpcEnd::Finished(Ok(Err(err))) => failed(err),
        RpcEnd::Finished(Err(panic)) => {
            terminal(
                WsError::from_code(ErrorCode::Internal).with_default_retry(),
                ErrorKind::Panic,
                WsError::internal(panic_message(&*panic)),
            );
            Some(ErrorCode::Internal)
        }
        // `$ws:abort` sent the terminal (`Connection::abort`).
        RpcEnd::Cancelled => Some(ErrorCode::Cancelled),
        RpcEnd::DeadlineExceeded => {
            let err = WsError::deadline_exceeded("Request deadline exceeded").with_default_retry();
            terminal(err.clone(), ErrorKind::DeadlineExceeded, err);
            Some(ErrorCode::DeadlineExceeded)
        }
    }
}

/// The text of a caught panic, for `on_error`.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        format!("handler panicked: {s}")
    } else if let Some(s) = panic.downcast_ref::<String>() {
        format!("handler panicked: {s}")
    } else {
        "handler panicked".to_string()
    }
}
