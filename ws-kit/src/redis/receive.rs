//! What arrives from Redis: publications of other instances, sends directed at this instance,
//! presence events. On a single node they are delivered inline, in the order the one connection
//! read them. On a cluster they come from one connection per shard and are handed to a fixed
//! set of workers by the hash of their channel: one topic's publications stay in order (one
//! channel, one worker), and a topic with many local subscribers does not hold up the others.

use super::conn::topic_of;
use super::kept;
use super::presence;
use super::publish::decode_kept_envelope;
use crate::metrics;
use crate::pubsub::{ClientId, LocalTopics, PresenceEvent, PresenceHooks};
use bytes::Bytes;
use redis::{PushInfo, PushKind, Value};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::mpsc;

/// How many workers deliver a cluster's pushes.
const WORKERS: usize = 8;

/// How many pushes may wait for one worker. Past it a push is dropped and counted: the instance
/// is too slow for its share of the traffic (Redis itself would soon cut it off at its output
/// buffer limit, losing more).
const WORKER_QUEUE: usize = 16_384;

/// Everything delivery needs, shared by the push handler and the workers.
pub(super) struct Receiver {
    pub(super) local: Arc<LocalTopics>,
    pub(super) recovering: Arc<kept::Recovering>,
    pub(super) hooks: Arc<PresenceHooks>,
    pub(super) prefix: String,
    pub(super) instance: ClientId,
    pub(super) cluster: bool,
    /// `prefix#presence`: plain pub/sub on both kinds of deployment.
    pub(super) events: String,
    /// This instance's direct channel's topic (`#i:<instance>`).
    pub(super) direct_topic: String,
    pub(super) connected: Arc<AtomicBool>,
}

impl Receiver {
    /// The push handler for the connection: inline on a single node, through the workers on a
    /// cluster.
    pub(super) fn handler(
        self: Arc<Self>,
    ) -> impl Fn(PushInfo) -> Result<(), ()> + Send + Sync + 'static {
        let workers: Vec<mpsc::Sender<Vec<Value>>> = if self.cluster {
            (0..WORKERS)
                .map(|_| {
                    let (tx, mut rx) = mpsc::channel::<Vec<Value>>(WORKER_QUEUE);
                    let me = self.clone();
                    tokio::spawn(async move {
                        while let Some(data) = rx.recv().await {
                            me.deliver(data);
                        }
                    });
                    tx
                })
                .collect()
        } else {
            Vec::new()
        };
        let dropped = AtomicU64::new(0);
        move |push: PushInfo| {
            match push.kind {
                PushKind::Message | PushKind::SMessage if workers.is_empty() => {
                    self.deliver(push.data)
                }
                PushKind::Message | PushKind::SMessage => {
                    let worker = match push.data.first() {
                        Some(Value::BulkString(channel)) => hash(channel) % workers.len(),
                        _ => 0,
                    };
                    if workers[worker].try_send(push.data).is_err() {
                        let n = dropped.fetch_add(1, Ordering::Relaxed) + 1;
                        if n.is_power_of_two() {
                            tracing::warn!(
                                dropped = n,
                                "redis pushes dropped: a delivery worker is behind"
                            );
                        }
                    }
                }
                PushKind::Disconnection if self.connected.swap(false, Ordering::SeqCst) => {
                    metrics::redis_connected(false);
                    tracing::warn!("redis pub/sub connection lost; reconnecting");
                }
                _ => {}
            }
            Ok(())
        }
    }

    /// Delivers one pushed message to this instance's subscribers, unless this instance
    /// published it (its subscribers got it when it was published).
    pub(super) fn deliver(&self, data: Vec<Value>) {
        let mut data = data.into_iter();
        let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
            (data.next(), data.next())
        else {
            return;
        };
        let Ok(channel) = std::str::from_utf8(&channel) else {
            return;
        };
        if channel == self.events {
            if self.hooks.is_empty() {
                return;
            }
            match serde_json::from_slice::<PresenceEvent>(&payload) {
                Ok(event) => self.hooks.emit(&event),
                Err(_) => tracing::warn!("dropped a malformed presence event from redis"),
            }
            return;
        }
        let Some(topic) = topic_of(&self.prefix, channel, self.cluster) else {
            return;
        };
        if topic == self.direct_topic {
            self.deliver_directed(payload);
            return;
        }
        match decode_kept_envelope(Bytes::from(payload)) {
            // A kept topic's publication: its position comes from Redis, so even this
            // instance's positioned subscribers get it here (its plain subscribers got it when
            // published).
            Some(((origin, exclude, frame), Some((offset, epoch)))) => {
                let own = origin == self.instance;
                self.recovering
                    .deliver(&self.local, topic, &frame, offset, &epoch, exclude, own);
            }
            Some(((origin, _, _), None)) if origin == self.instance => {}
            Some(((_, exclude, frame), None)) => {
                self.local.deliver(topic, &frame, exclude);
            }
            None => tracing::warn!(topic, "dropped a malformed publication from redis"),
        }
    }

    /// A send to a connection or user of this instance: `topic LF envelope`.
    fn deliver_directed(&self, payload: Vec<u8>) {
        let payload = Bytes::from(payload);
        let Some(newline) = payload.iter().position(|&b| b == b'\n') else {
            tracing::warn!("dropped a malformed direct send from redis");
            return;
        };
        let Ok(topic) = std::str::from_utf8(&payload[..newline]).map(str::to_string) else {
            tracing::warn!("dropped a malformed direct send from redis");
            return;
        };
        match decode_kept_envelope(payload.slice(newline + 1..)) {
            Some(((origin, _, _), None)) if origin == self.instance => {}
            Some(((_, exclude, frame), None)) => {
                self.local.deliver(&topic, &frame, exclude);
            }
            _ => tracing::warn!(topic, "dropped a malformed direct send from redis"),
        }
    }
}

/// The events channel's name.
pub(super) fn events_channel(prefix: &str) -> String {
    format!("{prefix}{}", presence::EVENTS)
}

fn hash(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .fold(0usize, |h, &b| h.wrapping_mul(31).wrapping_add(b as usize))
}
