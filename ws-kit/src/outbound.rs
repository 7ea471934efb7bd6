//! The per-connection outbound queue, bounded in bytes, and [`Io`]: the connection's socket as
//! its one task drives it, writing what the queue holds while it reads.

use crate::lazy_read::{LazyRead, ReadState};
use crate::metrics::{self, QueuedBytes};
use crate::seal::SealKey;
use futures_util::task::AtomicWaker;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsTransportError, Message as WsMessage, Utf8Bytes};

/// What happens when a connection's outbound queue would grow past `max_queued_bytes`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OverflowPolicy {
    /// Close the slow connection with 1013 (Try Again Later). The default.
    #[default]
    Close,
    /// Drop the oldest queued frames until the new one fits.
    DropOldest,
}

/// A close the server decided on: code and reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Closing {
    pub(crate) code: u16,
    pub(crate) reason: String,
}

/// What happens right after a request's terminal frame is queued, in the same step (armed by
/// in-band authentication, see `auth.rs`): no frame can come between the two.
pub(crate) enum Then {
    /// Every later frame is sealed with this key (docs/protocol.md 7b).
    Seal(Arc<SealKey>),
    /// The connection closes after the terminal (4003, 4004).
    Close(u16, &'static str),
}

/// A connection's outbound queue: frames waiting for the writer, bounded in bytes.
pub(crate) struct Outbound {
    state: Mutex<State>,
    /// Set with `closing` or `dead`, so the read loop can check it without the lock.
    ended: AtomicBool,
    /// Set once frames are sealed: the read loop then expects sealed frames too (no lock taken).
    sealed: AtomicBool,
    /// Wakes the connection's task: frames or a close are waiting, or the server decided to
    /// close (overflow, `close()`, a failed write).
    task: AtomicWaker,
    max_bytes: usize,
    policy: OverflowPolicy,
    /// This queue's share of `ws_kit_outbound_queued_bytes`: follows `State::bytes`.
    queued: QueuedBytes,
}

#[derive(Default)]
struct State {
    queue: VecDeque<WsMessage>,
    bytes: usize,
    /// Set once; after it nothing more is queued. (Boxed: most connections never hold one.)
    closing: Option<Box<Closing>>,
    /// The writer has taken the close frame (so it waits again instead of spinning).
    close_taken: bool,
    /// The reader is done: flush what is queued, then end.
    finished: bool,
    /// The socket failed; nothing can be written any more.
    dead: bool,
    /// Sealed delivery and what in-band authentication armed: allocated only for connections
    /// that use them, so an idle connection pays one pointer.
    sealing: Option<Box<Sealing>>,
}

#[derive(Default)]
struct Sealing {
    /// The key every text frame is sealed with, once sealing started; the writer seals.
    key: Option<Arc<SealKey>>,
    /// How many frames at the front of `queue` were queued before sealing started: they leave in
    /// clear.
    clear: usize,
    /// Armed by in-band authentication for its request's terminal.
    then: Option<Then>,
}

/// What a push did.
#[derive(Clone, Copy)]
enum Pushed {
    Queued {
        first: bool,
    },
    Refused,
    /// The queue overflowed and the connection is closing (1013).
    Overflowed,
}

/// What the writer takes next.
enum Next {
    /// A frame to write.
    Frame(WsMessage),
    /// Nothing waits.
    Empty,
    /// Everything is written and the reader is done: the socket closes.
    Finished,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("Outbound")
            .field("queued", &state.queue.len())
            .field("bytes", &state.bytes)
            .field("max_bytes", &self.max_bytes)
            .field("closing", &state.closing)
            .finish()
    }
}

impl Outbound {
    pub(crate) fn new(max_bytes: usize, policy: OverflowPolicy) -> Self {
        Outbound {
            state: Mutex::default(),
            ended: AtomicBool::new(false),
            sealed: AtomicBool::new(false),
            task: AtomicWaker::new(),
            max_bytes,
            policy,
            queued: QueuedBytes::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding this lock; recover the data even if something did.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a text frame. Returns false when the connection is closing or the frame was refused.
    pub(crate) fn push_text(&self, frame: Utf8Bytes) -> bool {
        self.push(WsMessage::Text(frame))
    }

    pub(crate) fn push(&self, msg: WsMessage) -> bool {
        let mut state = self.lock();
        let pushed = self.push_locked(&mut state, msg);
        drop(state);
        self.notify(pushed)
    }

    /// Queues a request's terminal frame and then carries out what in-band authentication armed
    /// for it, under one lock.
    pub(crate) fn push_terminal(&self, frame: Utf8Bytes) -> bool {
        let mut state = self.lock();
        let pushed = self.push_locked(&mut state, WsMessage::Text(frame));
        let queued = state.queue.len();
        let then = state.sealing.as_mut().and_then(|s| s.then.take());
        match then {
            Some(Then::Seal(key)) if matches!(pushed, Pushed::Queued { .. }) => {
                let sealing = state.sealing.get_or_insert_with(Box::default);
                sealing.clear = queued;
                sealing.key = Some(key);
                self.sealed.store(true, Ordering::Release);
            }
            Some(Then::Close(code, reason)) => {
                drop(state);
                let queued = self.notify(pushed);
                self.close(code, reason);
                return queued;
            }
            _ => {}
        }
        drop(state);
        self.notify(pushed)
    }

    /// Arms `then` for the next terminal frame (see [`Then`]).
    pub(crate) fn arm(&self, then: Then) {
        self.lock().sealing.get_or_insert_with(Box::default).then = Some(then);
    }

    /// Drops what was armed and not carried out (its request ended without a terminal of its own).
    pub(crate) fn disarm(&self) {
        if let Some(sealing) = self.lock().sealing.as_mut() {
            sealing.then = None;
        }
    }

    /// Whether frames are sealed (no lock taken).
    pub(crate) fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::Acquire)
    }

    /// The key frames are sealed with, once sealing started.
    pub(crate) fn seal_key(&self) -> Option<Arc<SealKey>> {
        self.lock().sealing.as_ref().and_then(|s| s.key.clone())
    }

    fn push_locked(&self, state: &mut State, msg: WsMessage) -> Pushed {
        let len = msg.len();
        if state.closing.is_some() || state.dead || state.finished {
            return Pushed::Refused;
        }
        if state.bytes + len > self.max_bytes {
            match self.policy {
                OverflowPolicy::Close => {
                    state.queue.clear();
                    self.queued.sub(state.bytes);
                    state.bytes = 0;
                    metrics::overflow_closed();
                    if let Some(sealing) = state.sealing.as_mut() {
                        sealing.clear = 0;
                    }
                    state.closing = Some(Box::new(Closing {
                        code: 1013,
                        reason: "Outbound queue full".into(),
                    }));
                    self.ended.store(true, Ordering::Release);
                    return Pushed::Overflowed;
                }
                OverflowPolicy::DropOldest => {
                    while state.bytes + len > self.max_bytes {
                        match state.queue.pop_front() {
                            Some(old) => {
                                state.bytes -= old.len();
                                self.queued.sub(old.len());
                                if let Some(sealing) = state.sealing.as_mut() {
                                    sealing.clear = sealing.clear.saturating_sub(1);
                                }
                            }
                            None => break,
                        }
                    }
                    if len > self.max_bytes {
                        return Pushed::Refused;
                    }
                }
            }
        }
        state.bytes += len;
        self.queued.add(len);
        state.queue.push_back(msg);
        Pushed::Queued {
            first: state.queue.len() == 1,
        }
    }

    /// Wakes whom a push concerns (outside the lock); whether the frame was queued.
    fn notify(&self, pushed: Pushed) -> bool {
        match pushed {
            Pushed::Queued { first } => {
                if first {
                    self.task.wake();
                }
                true
            }
            Pushed::Refused => false,
            Pushed::Overflowed => {
                self.task.wake();
                false
            }
        }
    }

    /// Asks for the connection to close with `code` after the frames already queued.
    /// The first close wins. Returns false if the connection was already closing.
    pub(crate) fn close(&self, code: u16, reason: impl Into<String>) -> bool {
        let mut state = self.lock();
        if state.closing.is_some() || state.dead {
            return false;
        }
        state.closing = Some(Box::new(Closing {
            code,
            reason: reason.into(),
        }));
        self.ended.store(true, Ordering::Release);
        drop(state);
        self.task.wake();
        true
    }

    /// Whether the server decided to close, or the socket failed (no lock taken).
    pub(crate) fn is_closing(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// The close the server decided on, if any.
    pub(crate) fn closing(&self) -> Option<Closing> {
        self.lock().closing.as_deref().cloned()
    }

    /// The reader is done: what is queued is written, then the socket closes.
    pub(crate) fn finish(&self) {
        self.lock().finished = true;
        self.task.wake();
    }

    /// Takes every queued frame at once, as the writer does (benchmarks drain the queue with it).
    #[cfg(feature = "bench")]
    pub(crate) fn take_all(&self) -> VecDeque<WsMessage> {
        let mut state = self.lock();
        self.queued.sub(state.bytes);
        state.bytes = 0;
        std::mem::take(&mut state.queue)
    }

    /// Takes the next frame to write (sealed where sealing applies; the close frame once the
    /// queue is drained, if the server decided to close). A drained queue gives its memory back,
    /// so an idle connection holds no queue.
    fn take_next(&self) -> Next {
        let mut state = self.lock();
        if let Some(frame) = state.queue.pop_front() {
            state.bytes -= frame.len();
            self.queued.sub(frame.len());
            let seal = match state.sealing.as_mut() {
                Some(sealing) if sealing.clear > 0 => {
                    sealing.clear -= 1;
                    None
                }
                Some(sealing) => sealing.key.clone(),
                None => None,
            };
            drop(state);
            // Sealing (AES-GCM) is done outside the lock.
            return Next::Frame(match (seal, frame) {
                (Some(key), WsMessage::Text(text)) => {
                    WsMessage::Text(Utf8Bytes::from(key.seal(&text)))
                }
                (_, frame) => frame,
            });
        }
        if state.queue.capacity() > 0 {
            state.queue = VecDeque::new();
        }
        if !state.close_taken
            && let Some(closing) = &state.closing
        {
            let frame = CloseFrame {
                code: CloseCode::from(closing.code),
                reason: Utf8Bytes::from(closing.reason.clone()),
            };
            state.close_taken = true;
            return Next::Frame(WsMessage::Close(Some(frame)));
        }
        if state.finished {
            Next::Finished
        } else {
            Next::Empty
        }
    }

    fn mark_dead(&self) {
        let mut state = self.lock();
        state.dead = true;
        state.queue.clear();
        self.queued.sub(state.bytes);
        state.bytes = 0;
        self.ended.store(true, Ordering::Release);
    }
}

impl Drop for Outbound {
    /// What is still queued (a writer that never finished) leaves `ws_kit_outbound_queued_bytes`.
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        self.queued.sub(state.bytes);
    }
}

/// What [`Io::poll_io`] has to report.
pub(crate) enum IoEvent {
    /// The next item of the socket's stream.
    Frame(Option<Result<WsMessage, WsTransportError>>),
    /// The server decided to close (the close frame is queued), or the socket failed.
    Ended,
}

/// A connection's socket, driven by the connection's one task: the frames of the outbound queue
/// are written between reads, and flushed once the queue is drained, so an idle connection holds
/// one task and no writer.
pub(crate) struct Io<S> {
    socket: S,
    /// Frames were fed and not flushed yet.
    unflushed: bool,
    /// The queue is finished and written: the socket is closing.
    closing: bool,
    /// Written and closed, or the socket failed: nothing more to do.
    done: bool,
}

/// A connection's WebSocket as the read loop drives it: frames in, frames out, and what its
/// reads tell (`LazyRead` keeps a [`ReadState`] under tungstenite; other transports have none,
/// and each frame then reads the clock).
pub(crate) trait Socket:
    Stream<Item = Result<WsMessage, WsTransportError>> + Sink<WsMessage> + Unpin
{
    /// The transport's read state, when its reads go through `LazyRead`.
    fn read_state(&self) -> Option<&ReadState> {
        None
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Socket for WebSocketStream<LazyRead<T>> {
    fn read_state(&self) -> Option<&ReadState> {
        Some(self.get_ref().state())
    }
}

impl<S: Socket> Io<S> {
    /// The socket's read state (see [`Socket`]).
    pub(crate) fn read_state(&self) -> Option<&ReadState> {
        self.socket.read_state()
    }

    pub(crate) fn new(socket: S) -> Self {
        Io {
            socket,
            unflushed: false,
            closing: false,
            done: false,
        }
    }

    /// The socket, given back.
    pub(crate) fn into_socket(self) -> S {
        self.socket
    }

    /// Writes what waits, then reads (when `read`). Ready with a frame read, or when the server
    /// decided to close or the socket failed; the task is woken by the socket and by the queue.
    pub(crate) fn poll_io(
        &mut self,
        cx: &mut Context<'_>,
        out: &Outbound,
        read: bool,
    ) -> Poll<IoEvent> {
        let _ = self.poll_write(cx, out);
        if out.is_closing() {
            return Poll::Ready(IoEvent::Ended);
        }
        if read && let Poll::Ready(frame) = self.socket.poll_next_unpin(cx) {
            return Poll::Ready(IoEvent::Frame(frame));
        }
        Poll::Pending
    }

    /// Reads the next item of the socket's stream, writing what waits meanwhile.
    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        out: &Outbound,
    ) -> Poll<Option<Result<WsMessage, WsTransportError>>> {
        let _ = self.poll_write(cx, out);
        self.socket.poll_next_unpin(cx)
    }

    /// The next item of the stream if it is already there (no write, no waiting).
    pub(crate) fn poll_next_ready(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<WsMessage, WsTransportError>>> {
        self.socket.poll_next_unpin(cx)
    }

    /// Writes what the queue holds, frame by frame, and flushes when it is drained. Ready once
    /// the queue is finished and everything is written and the socket closed, or the socket
    /// failed; the task is woken by the socket or by the queue.
    pub(crate) fn poll_write(&mut self, cx: &mut Context<'_>, out: &Outbound) -> Poll<()> {
        out.task.register(cx.waker());
        while !self.done {
            if self.closing {
                // The peer may already be gone; the connection ends either way.
                if self.socket.poll_close_unpin(cx).is_pending() {
                    return Poll::Pending;
                }
                self.done = true;
                break;
            }
            match self.socket.poll_ready_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return self.failed(out),
            }
            let finished = match out.take_next() {
                Next::Frame(frame) => {
                    let close = matches!(frame, WsMessage::Close(_));
                    if self.socket.start_send_unpin(frame).is_err() && !close {
                        return self.failed(out);
                    }
                    self.unflushed = true;
                    continue;
                }
                Next::Empty => false,
                Next::Finished => true,
            };
            if self.unflushed {
                match self.socket.poll_flush_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(())) => self.unflushed = false,
                    Poll::Ready(Err(_)) => return self.failed(out),
                }
            }
            if !finished {
                return Poll::Pending;
            }
            self.closing = true;
        }
        Poll::Ready(())
    }

    /// The socket failed: nothing more can be written, and the connection ends.
    fn failed(&mut self, out: &Outbound) -> Poll<()> {
        self.done = true;
        out.mark_dead();
        Poll::Ready(())
    }
}
