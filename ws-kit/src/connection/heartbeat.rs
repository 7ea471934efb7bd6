//! Liveness without a timer per connection: one sweep per service visits every connection once
//! per heartbeat interval, through the registry, a sixteenth of them at a time.
//!
//! A connection only flags what happened (`Liveness`, three atomics); the sweep reads the flags,
//! queues the ping and closes the silent. So an idle connection holds no timer, and its task
//! wakes only to write the ping.

use super::ConnInner;
use super::registry::{Registry, SHARDS};
use crate::close_code;
use std::sync::Weak;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// What a connection tells the sweep.
#[derive(Debug)]
pub(crate) struct Liveness {
    /// A frame came in since the last visit (or the connection opened since then).
    active: AtomicBool,
    /// Ordered dispatch holds frames: the peer is talking, the server is the one not reading.
    holding: AtomicBool,
    /// Visits in a row that found the connection quiet.
    quiet: AtomicU32,
    /// Pings from the peer since the last visit.
    pings: AtomicU32,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            // The first visit comes less than an interval after the open: it does not count as
            // a quiet one, so no connection is closed earlier than the timeout.
            active: AtomicBool::new(true),
            holding: AtomicBool::new(false),
            quiet: AtomicU32::new(0),
            pings: AtomicU32::new(0),
        }
    }
}

impl Liveness {
    /// A frame came in (one relaxed store: the hot path reads no clock).
    pub(crate) fn seen(&self) {
        self.active.store(true, Ordering::Relaxed);
    }

    /// Whether ordered dispatch holds frames now.
    pub(crate) fn holding(&self, holding: bool) {
        if self.holding.load(Ordering::Relaxed) != holding {
            self.holding.store(holding, Ordering::Relaxed);
        }
    }

    /// The peer sent a ping; returns how many since the last visit.
    pub(crate) fn pinged(&self) -> u32 {
        self.pings.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// One visit: false when the connection has been quiet for `quiet_visits` visits.
    fn visit(&self, quiet_visits: u32) -> bool {
        self.pings.store(0, Ordering::Relaxed);
        if self.active.swap(false, Ordering::Relaxed) || self.holding.load(Ordering::Relaxed) {
            self.quiet.store(0, Ordering::Relaxed);
            return true;
        }
        self.quiet.fetch_add(1, Ordering::Relaxed) + 1 < quiet_visits
    }
}

/// Visits a connection: closes it (4002) after `quiet_visits` quiet visits, pings it otherwise.
fn visit<D>(inner: &ConnInner<D>, quiet_visits: u32) {
    if inner.live.visit(quiet_visits) {
        inner.out.push(WsMessage::Ping(Default::default()));
    } else {
        inner
            .out
            .close(close_code::HEARTBEAT_TIMEOUT, "Heartbeat timeout");
    }
}

/// Starts the sweep of `registry` unless it runs; it ends with the registry.
///
/// A connection is closed between `timeout` and `timeout + interval` after its last frame, never
/// earlier: the visits that see it quiet are `interval` apart, the first one after its last
/// frame does not count, and it takes `ceil(timeout / interval)` quiet ones.
pub(crate) fn start<D: Send + Sync + 'static>(
    registry: &std::sync::Arc<Registry<D>>,
    interval: Duration,
    timeout: Duration,
) {
    if registry.sweeping.swap(true, Ordering::AcqRel) {
        return;
    }
    let interval = interval.max(Duration::from_millis(1));
    let quiet_visits = timeout
        .as_nanos()
        .div_ceil(interval.as_nanos())
        .clamp(1, u32::MAX as u128) as u32;
    let registry = Sweeping(std::sync::Arc::downgrade(registry));
    tokio::spawn(async move {
        // Each shard is visited once per interval, the shards a sixteenth of it apart.
        let mut tick = tokio::time::interval(interval / SHARDS as u32);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut shard = 0;
        loop {
            tick.tick().await;
            let Some(registry) = registry.0.upgrade() else {
                return;
            };
            registry.for_each_in_shard(shard, |inner| visit(inner, quiet_visits));
            shard = (shard + 1) % SHARDS;
        }
    });
}

/// The sweep's hold on its registry. Dropped with the sweep (its runtime shut down, say), it
/// lets the next connection start another.
struct Sweeping<D>(Weak<Registry<D>>);

impl<D> Drop for Sweeping<D> {
    fn drop(&mut self) {
        if let Some(registry) = self.0.upgrade() {
            registry.sweeping.store(false, Ordering::Release);
        }
    }
}
