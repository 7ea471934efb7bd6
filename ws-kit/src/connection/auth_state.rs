//! A connection's in-band authentication state (see `auth.rs` for the gate and the wrapper that
//! change it).

use crate::seal::SealKey;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// A connection's authentication state.
#[derive(Debug, Default)]
pub(crate) struct AuthState {
    /// The connection may send any message.
    authenticated: AtomicBool,
    /// An authentication request of an unauthenticated connection is running: the only time a
    /// key can be accepted.
    attempt: AtomicBool,
    /// The key the running attempt accepted; sealing starts after its reply.
    pending_seal: Mutex<Option<Arc<SealKey>>>,
}

impl AuthState {
    /// A state that starts authenticated (no in-band step) or not.
    pub(crate) fn new(authenticated: bool) -> Self {
        AuthState {
            authenticated: AtomicBool::new(authenticated),
            ..AuthState::default()
        }
    }

    pub(crate) fn is_authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Acquire)
    }

    pub(crate) fn set_authenticated(&self) {
        self.authenticated.store(true, Ordering::Release);
    }

    fn pending_seal(&self) -> MutexGuard<'_, Option<Arc<SealKey>>> {
        self.pending_seal.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An attempt starts: a key may be accepted until it ends.
    pub(crate) fn begin_attempt(&self) {
        self.attempt.store(true, Ordering::Release);
    }

    /// The attempt ended however it ended: no key stays behind.
    pub(crate) fn end_attempt(&self) {
        self.attempt.store(false, Ordering::Release);
        self.pending_seal().take();
    }

    /// The key the attempt accepted, if any.
    pub(crate) fn take_seal(&self) -> Option<Arc<SealKey>> {
        self.pending_seal().take()
    }

    /// Keeps the key the running attempt accepted; `false` when no attempt runs or it accepted
    /// one already (the reply can carry only one).
    pub(crate) fn offer_seal(&self, key: SealKey) -> bool {
        if !self.attempt.load(Ordering::Acquire) {
            return false;
        }
        let mut pending = self.pending_seal();
        if pending.is_some() {
            return false;
        }
        *pending = Some(Arc::new(key));
        true
    }
}
