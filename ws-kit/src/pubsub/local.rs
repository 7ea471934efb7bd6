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
    topics: RwLock<Topics>,
}

#[derive(Debug, Default)]
struct Topics {
    /// Topics by name, each with its subscribers.
    named: HashMap<Box<str>, Vec<Subscriber>>,
    /// Each connection's own topic (`#client:<id>`, whose one subscriber is that connection)
    /// and its place in `#all`, kept by id: an idle connection costs one entry here instead of
    /// a name, a list, and a place in a list of every connection.
    clients: HashMap<ClientId, Own>,
    /// How many of `clients` are in `#all`.
    in_all: usize,
}

/// A connection's own topic, and whether it is also in `#all`.
#[derive(Debug)]
struct Own {
    out: Arc<Outbound>,
    all: bool,
}

/// Every connection: its members live in `Topics::clients` (see there).
const ALL: &str = "#all";

/// The connection whose own topic `topic` is (`#client:<id>`, the id written as
/// `internal::client` writes it).
fn own_topic(topic: &str) -> Option<ClientId> {
    let text = topic.strip_prefix("#client:")?;
    let id = ClientId::try_parse(text).ok()?;
    let mut canonical = [0u8; uuid::fmt::Hyphenated::LENGTH];
    (id.hyphenated().encode_lower(&mut canonical).as_bytes() == text.as_bytes()).then_some(id)
}

impl Topics {
    /// Calls `f` on each subscriber of `topic` (for own topics and `#all`, a subscriber made
    /// for the call: their subscriptions never ask for positions).
    fn each(&self, topic: &str, mut f: impl FnMut(&Subscriber)) {
        let own = |id: ClientId, out: &Arc<Outbound>| Subscriber::new(id, out.clone());
        if let Some(id) = own_topic(topic)
            && let Some(entry) = self.clients.get(&id)
        {
            return f(&own(id, &entry.out));
        }
        if topic == ALL {
            for (id, entry) in self.clients.iter().filter(|(_, e)| e.all) {
                f(&own(*id, &entry.out));
            }
        }
        for subscriber in self.named.get(topic).into_iter().flatten() {
            f(subscriber);
        }
    }

    /// How many subscribe to `topic`.
    fn count(&self, topic: &str) -> usize {
        if let Some(id) = own_topic(topic)
            && self.clients.contains_key(&id)
        {
            return 1;
        }
        let all = if topic == ALL { self.in_all } else { 0 };
        all + self.named.get(topic).map_or(0, Vec::len)
    }
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
        let first = topics.count(topic) == 0;
        let plain = !subscriber.positions;
        if plain && own_topic(topic) == Some(subscriber.id) {
            topics.clients.insert(
                subscriber.id,
                Own {
                    out: subscriber.out,
                    all: false,
                },
            );
            return first;
        }
        if plain
            && topic == ALL
            && let Some(entry) = topics.clients.get_mut(&subscriber.id)
            && !entry.all
        {
            entry.all = true;
            topics.in_all += 1;
            return first;
        }
        topics
            .named
            .entry(topic.into())
            .or_default()
            .push(subscriber);
        first
    }

    /// Removes a connection; returns true if the topic has no subscriber left.
    pub fn remove(&self, topic: &str, client: ClientId) -> bool {
        let mut guard = self.topics.write().unwrap_or_else(|e| e.into_inner());
        let topics = &mut *guard;
        if own_topic(topic) == Some(client)
            && let Some(entry) = topics.clients.remove(&client)
        {
            if entry.all {
                // Still in `#all`: it stays there, as a named subscriber.
                topics.in_all -= 1;
                let subscriber = Subscriber::new(client, entry.out);
                topics.named.entry(ALL.into()).or_default().push(subscriber);
            }
            return topics.count(topic) == 0;
        }
        if topic == ALL
            && let Some(entry) = topics.clients.get_mut(&client)
            && entry.all
        {
            entry.all = false;
            topics.in_all -= 1;
            return topics.count(topic) == 0;
        }
        if let Some(subs) = topics.named.get_mut(topic) {
            // Subscribers have no order among themselves: swap_remove keeps removal cheap.
            if let Some(i) = subs.iter().position(|s| s.id == client) {
                subs.swap_remove(i);
            }
            if subs.is_empty() {
                topics.named.remove(topic);
            }
        }
        topics.count(topic) == 0
    }

    /// The topics that have local subscribers.
    pub fn topics(&self) -> Vec<Box<str>> {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        let own = topics
            .clients
            .keys()
            .map(|id| format!("#client:{id}").into());
        let all = (topics.in_all > 0 && !topics.named.contains_key(ALL)).then(|| ALL.into());
        topics.named.keys().cloned().chain(own).chain(all).collect()
    }

    /// The local subscribers of a topic.
    pub fn members(&self, topic: &str) -> Vec<ClientId> {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        let mut ids = Vec::new();
        topics.each(topic, |s| ids.push(s.id));
        ids
    }

    /// Whether the topic has local subscribers.
    pub fn contains(&self, topic: &str) -> bool {
        self.count(topic) > 0
    }

    /// Local subscribers of a topic.
    pub fn count(&self, topic: &str) -> usize {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        topics.count(topic)
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
        let mut delivered = 0;
        topics.each(topic, |s| {
            if Some(s.id) != exclude
                && let Some(frame) = pick(s)
                && s.deliver(frame)
            {
                delivered += 1;
            }
        });
        crate::metrics::delivered(delivered);
        delivered
    }

    /// Queues `frame` on every local subscriber of `topic` except `exclude`; returns how many
    /// it reached.
    pub fn deliver(&self, topic: &str, frame: &Utf8Bytes, exclude: Option<ClientId>) -> usize {
        self.deliver_each(topic, exclude, |_| Some(frame))
    }
}
