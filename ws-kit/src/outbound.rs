//! The per-connection outbound queue, bounded in bytes, drained by one writer task.

use crate::metrics::{self, QueuedBytes};
use crate::seal::SealKey;
use futures_util::{Sink, SinkExt};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};

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
    /// Wakes the writer: frames or a close are waiting.
    writer: Notify,
    /// Wakes the reader: the server decided to close (overflow, `close()`, writer failure).
    reader: Notify,
    max_bytes: usize,
    policy: OverflowPolicy,
    /// This queue's share of `ws_kit_outbound_queued_bytes`: follows `State::bytes`.
    queued: QueuedBytes,
}

#[derive(Default)]
struct State {
    queue: VecDeque<WsMessage>,
    bytes: usize,
    /// Set once; after it nothing more is queued.
    closing: Option<Closing>,
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

/// What the writer takes in one go.
struct Batch {
    frames: VecDeque<WsMessage>,
    /// Seal the text frames after the first `clear` ones with this key.
    seal: Option<Arc<SealKey>>,
    clear: usize,
    closing: Option<Closing>,
    finished: bool,
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
            writer: Notify::new(),
            reader: Notify::new(),
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
                    state.closing = Some(Closing {
                        code: 1013,
                        reason: "Outbound queue full".into(),
                    });
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
                    self.writer.notify_one();
                }
                true
            }
            Pushed::Refused => false,
            Pushed::Overflowed => {
                self.writer.notify_one();
                self.reader.notify_one();
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
        state.closing = Some(Closing {
            code,
            reason: reason.into(),
        });
        self.ended.store(true, Ordering::Release);
        drop(state);
        self.writer.notify_one();
        self.reader.notify_one();
        true
    }

    /// Whether the server decided to close, or the socket failed (no lock taken).
    pub(crate) fn is_closing(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// The close the server decided on, if any.
    pub(crate) fn closing(&self) -> Option<Closing> {
        self.lock().closing.clone()
    }

    /// Resolves when the server decides to close this connection.
    pub(crate) async fn closed_by_server(&self) {
        loop {
            {
                let state = self.lock();
                if state.closing.is_some() || state.dead {
                    return;
                }
            }
            self.reader.notified().await;
        }
    }

    /// The reader is done: the writer flushes what is queued and ends.
    pub(crate) fn finish(&self) {
        self.lock().finished = true;
        self.writer.notify_one();
    }

    /// Takes every queued frame at once, as the writer does (benchmarks drain the queue with it).
    #[cfg(feature = "bench")]
    pub(crate) fn take_all(&self) -> VecDeque<WsMessage> {
        let mut state = self.lock();
        self.queued.sub(state.bytes);
        state.bytes = 0;
        std::mem::take(&mut state.queue)
    }

    async fn next_batch(&self) -> Batch {
        loop {
            {
                let mut state = self.lock();
                let new_close = state.closing.is_some() && !state.close_taken;
                if !state.queue.is_empty() || new_close || state.finished {
                    // Taken to be written: no longer waiting.
                    self.queued.sub(state.bytes);
                    state.bytes = 0;
                    state.close_taken |= new_close;
                    return Batch {
                        frames: std::mem::take(&mut state.queue),
                        seal: state.sealing.as_ref().and_then(|s| s.key.clone()),
                        clear: state
                            .sealing
                            .as_mut()
                            .map_or(0, |s| std::mem::take(&mut s.clear)),
                        closing: if new_close {
                            state.closing.clone()
                        } else {
                            None
                        },
                        finished: state.finished,
                    };
                }
            }
            self.writer.notified().await;
        }
    }

    fn mark_dead(&self) {
        let mut state = self.lock();
        state.dead = true;
        state.queue.clear();
        self.queued.sub(state.bytes);
        state.bytes = 0;
        self.ended.store(true, Ordering::Release);
        drop(state);
        self.reader.notify_one();
    }
}

impl Drop for Outbound {
    /// What is still queued (a writer that never finished) leaves `ws_kit_outbound_queued_bytes`.
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        self.queued.sub(state.bytes);
    }
}

/// The writer task: drains the queue in batches (one flush per batch), sends the close frame.
pub(crate) async fn write_loop<S>(mut sink: S, out: Arc<Outbound>)
where
    S: Sink<WsMessage> + Unpin,
{
    loop {
        let batch = out.next_batch().await;
        for (i, frame) in batch.frames.into_iter().enumerate() {
            let frame = match (&batch.seal, frame) {
                (Some(key), WsMessage::Text(text)) if i >= batch.clear => {
                    WsMessage::Text(Utf8Bytes::from(key.seal(&text)))
                }
                (_, frame) => frame,
            };
            if sink.feed(frame).await.is_err() {
                out.mark_dead();
                return;
            }
        }
        if let Some(closing) = batch.closing {
            let frame = CloseFrame {
                code: CloseCode::from(closing.code),
                reason: Utf8Bytes::from(closing.reason),
            };
            // The peer may already be gone; the connection ends either way.
            let _ = sink.feed(WsMessage::Close(Some(frame))).await;
        }
        if sink.flush().await.is_err() {
            out.mark_dead();
            return;
        }
        if batch.finished {
            let _ = sink.close().await;
            return;
        }
    }
}
