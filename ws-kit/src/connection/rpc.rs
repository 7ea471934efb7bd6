//! One request's bookkeeping: its [`RpcSlot`] (one terminal, no progress after it, abort) and the
//! connection's table of requests in flight.

use crate::outbound::Outbound;
use futures_util::task::AtomicWaker;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Requests whose handlers wait, by correlation id.
pub(crate) type InflightTable = HashMap<Arc<str>, Arc<RpcSlot>, BuildHasherDefault<FnvHasher>>;

/// FNV-1a: a cheap hasher for the per-connection in-flight table, whose keys are short
/// correlation ids. A client can only collide its own (bounded) table, so SipHash's flood
/// resistance buys nothing here.
#[derive(Clone, Copy)]
pub(crate) struct FnvHasher(u64);

impl Default for FnvHasher {
    fn default() -> Self {
        FnvHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for FnvHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The state of one RPC: its terminal is sent at most once, and progress never after it.
pub(crate) struct RpcSlot {
    pub(crate) correlation_id: Option<Arc<str>>,
    /// Held while queueing a progress or terminal frame, so no progress follows the terminal.
    order: Mutex<()>,
    /// The terminal frame was queued.
    done: AtomicBool,
    /// Set by `$ws:abort` (after the abort claimed the terminal).
    cancelled: AtomicBool,
    /// The request's task, woken by `cancel`; registered only while the handler waits.
    waker: AtomicWaker,
}

impl RpcSlot {
    pub(crate) fn new(correlation_id: Option<Arc<str>>) -> Self {
        RpcSlot {
            correlation_id,
            order: Mutex::new(()),
            done: AtomicBool::new(false),
            cancelled: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        }
    }

    /// Marks the request cancelled and wakes its task, which then drops the handler.
    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Whether `cancel` was called. Call [`RpcSlot::register`] first when about to wait.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Makes `cancel` wake `waker`.
    pub(crate) fn register(&self, waker: &Waker) {
        self.waker.register(waker);
    }

    /// Queues `frame` as the terminal unless one was sent. Holding the lock while queueing keeps
    /// every progress frame before the terminal.
    pub(crate) fn terminal(&self, out: &Outbound, frame: impl FnOnce() -> Utf8Bytes) -> bool {
        let _order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        if self.done.swap(true, Ordering::AcqRel) {
            return false;
        }
        out.push_terminal(frame());
        true
    }

    /// Queues a progress frame unless the terminal was sent.
    pub(crate) fn progress(&self, out: &Outbound, frame: Utf8Bytes) -> bool {
        let _order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        !self.done.load(Ordering::Acquire) && out.push_text(frame)
    }

    /// Whether the terminal frame was queued (no lock taken).
    pub(crate) fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }
}
