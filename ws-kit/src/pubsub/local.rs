//! A process's own subscribers, by topic: what every engine delivers to.

use super::ClientId;
use crate::outbound::Outbound;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// One connection's subscription: where to deliver frames.
#[derive(Clone)]
pub struct Subscriber {
    id: ClientId,
    out: Arc<Outbound>,
    /// It subscribed from a position: a kept topic's frames reach it with their position
    /// (docs/protocol.md 8a).
    positions: bool,
}

impl Subscriber {
    pub(crate) fn new(id: ClientId, out: Arc<Outbound>) -> Self {
        Subscriber {
            id,
            out,
            positions: false,
        }
    }

    /// The same subscriber, taking a kept topic's frames with their position.
    pub fn with_positions(mut self) -> Self {
        self.positions = true;
        self
    }

    /// Whether it takes a kept topic's frames with their position.
    pub fn wants_positions(&self) -> bool {
        self.positions
    }

    /// The subscribing connection.
    pub fn id(&self) -> ClientId {
        self.id
    }

    /// Queues an encoded frame on the connection; false when it is closing.
    pub fn deliver(&self, frame: &Utf8Bytes) -> bool {
        self.out.push_text(frame.clone())
    }
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber").field("id", &self.id).finish()
    }
}

/// A process's own subscribers, by topic: what every engine delivers to.
///
/// Engines keep one; the in-memory engine is little more than this. Delivery is synchronous and
/// shares the frame's bytes.
#[derive(Debug, Default)]
pub struct LocalTopics {
    topics: RwLock<HashMap<Box<str>, Vec<Subscriber>>>,
}

impl LocalTopics {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a subscriber; returns true if it is the topic's first. The framework subscribes a
    /// connection to a topic once (subscribe is idempotent above this layer), so no duplicate check.
    pub fn add(&self, topic: &str, subscriber: Subscriber) -> bool {
        let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
        let subs = topics.entry(topic.into()).or_default();
        subs.push(subscriber);
        subs.len() == 1
    }

    /// Removes a connection; returns true if the topic has no subscriber left.
    pub fn remove(&self, topic: &str, client: ClientId) -> bool {
        let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
        match topics.get_mut(topic) {
            Some(subs) => {
                // Subscribers have no order among themselves: swap_remove keeps removal cheap on
                // big topics (every connection is in `#all`).
                if let Some(i) = subs.iter().position(|s| s.id == client) {
                    subs.swap_remove(i);
                }
                if subs.is_empty() {
                    topics.remove(topic);
                    true
                } else {
                    false
                }
            }
            None => true,
        }
    }

    /// The topics that have local subscribers.
    pub fn topics(&self) -> Vec<Box<str>> {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        topics.keys().cloned().collect()
    }

    /// The local subscribers of a topic.
    pub fn members(&self, topic: &str) -> Vec<ClientId> {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        topics
            .get(topic)
            .map_or_else(Vec::new, |subs| subs.iter().map(|s| s.id).collect())
    }

    /// Whether the topic has local subscribers.
    pub fn contains(&self, topic: &str) -> bool {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        topics.contains_key(topic)
    }

    /// Local subscribers of a topic.
    pub fn count(&self, topic: &str) -> usize {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        topics.get(topic).map_or(0, Vec::len)
    }

    /// Like [`deliver`](Self::deliver), for a kept topic's publication: `positioned` to the
    /// subscribers that subscribed from a position, `plain` to the others.
    pub fn deliver_both(
        &self,
        topic: &str,
        plain: &Utf8Bytes,
        positioned: &Utf8Bytes,
        exclude: Option<ClientId>,
    ) -> usize {
        self.deliver_each(topic, exclude, |s| {
            Some(if s.positions { positioned } else { plain })
        })
    }

    /// A kept topic's publication whose plain form the others already have: `positioned` to
    /// the subscribers that subscribed from a position.
    pub fn deliver_positioned(
        &self,
        topic: &str,
        positioned: &Utf8Bytes,
        exclude: Option<ClientId>,
    ) -> usize {
        self.deliver_each(topic, exclude, |s| s.positions.then_some(positioned))
    }

    /// A kept topic's publication whose positioned form comes later (through Redis): `plain` to
    /// the subscribers that did not ask for positions.
    pub fn deliver_plain(
        &self,
        topic: &str,
        plain: &Utf8Bytes,
        exclude: Option<ClientId>,
    ) -> usize {
        self.deliver_each(topic, exclude, |s| (!s.positions).then_some(plain))
    }

    /// Queues on each subscriber of `topic` (but `exclude`) the frame `pick` chooses for it, if
    /// any; returns how many it reached.
    pub fn deliver_each<'f>(
        &self,
        topic: &str,
        exclude: Option<ClientId>,
        pick: impl Fn(&Subscriber) -> Option<&'f Utf8Bytes>,
    ) -> usize {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        let Some(subs) = topics.get(topic) else {
            return 0;
        };
        let delivered = subs
            .iter()
            .filter(|s| Some(s.id) != exclude)
            .filter_map(|s| pick(s).map(|frame| (s, frame)))
            .filter(|(s, frame)| s.deliver(frame))
            .count();
        crate::metrics::delivered(delivered);
        delivered
    }

    /// Queues `frame` on every local subscriber of `topic` except `exclude`; returns how many
    /// it reached.
    pub fn deliver(&self, topic: &str, frame: &Utf8Bytes, exclude: Option<ClientId>) -> usize {
        self.deliver_each(topic, exclude, |_| Some(frame))
    }
}
