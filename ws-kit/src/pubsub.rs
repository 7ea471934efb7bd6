//! Pub/sub: the engine trait, the in-memory engine, topics and publish results (PROTOCOL.md 8).

use crate::error::{ErrorCode, WsError};
use crate::outbound::Outbound;
use futures_util::future::BoxFuture;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use uuid::Uuid;

/// A connection's id: a UUID v7, sent to the client in the `x-client-id` header.
pub type ClientId = Uuid;

/// Longest topic name, in bytes.
pub const MAX_TOPIC_LEN: usize = 128;

/// Checks a topic name against `^[A-Za-z0-9:_./-]{1,128}$`.
pub fn validate_topic(topic: &str) -> Result<(), WsError> {
    let ok = !topic.is_empty()
        && topic.len() <= MAX_TOPIC_LEN
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":_./-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(WsError::new(
            ErrorCode::InvalidArgument,
            format!("invalid topic: must match ^[A-Za-z0-9:_./-]{{1,{MAX_TOPIC_LEN}}}$"),
        )
        .with_details(serde_json::json!({ "topic": topic })))
    }
}

/// How exact `PublishResult::matched` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    /// `matched` is the exact number of subscribers reached.
    Exact,
    /// `matched` is an estimate (across instances).
    Estimate,
    /// The engine cannot say how many subscribers it reached.
    Unknown,
}

/// The outcome of a publish: `{ok, capability, matched}`.
#[derive(Clone, Debug, PartialEq)]
pub struct PublishResult {
    /// Whether the publication was accepted for delivery.
    pub ok: bool,
    /// How exact `matched` is.
    pub capability: Capability,
    /// Subscribers reached (exact for the in-memory engine).
    pub matched: Option<usize>,
    /// Why it failed, when `ok` is false.
    pub error: Option<WsError>,
}

impl PublishResult {
    /// A successful local publish that reached `matched` subscribers.
    pub fn exact(matched: usize) -> Self {
        PublishResult {
            ok: true,
            capability: Capability::Exact,
            matched: Some(matched),
            error: None,
        }
    }

    /// A failed publish.
    pub fn failed(error: WsError) -> Self {
        PublishResult {
            ok: false,
            capability: Capability::Unknown,
            matched: None,
            error: Some(error),
        }
    }
}

/// Options of a publish.
#[derive(Clone, Debug, Default)]
pub struct PublishOptions {
    pub(crate) exclude_self: bool,
    pub(crate) meta: Option<serde_json::Map<String, serde_json::Value>>,
}

impl PublishOptions {
    /// Default options: deliver to every subscriber, no meta.
    pub fn new() -> Self {
        Self::default()
    }

    /// Skip the publishing connection.
    pub fn exclude_self(mut self) -> Self {
        self.exclude_self = true;
        self
    }

    /// Meta to put on the delivered frames (`type` and `correlationId` are never taken from it).
    pub fn meta(mut self, meta: serde_json::Map<String, serde_json::Value>) -> Self {
        self.meta = Some(meta);
        self
    }
}

/// One connection's subscription: where to deliver frames.
#[derive(Clone)]
pub struct Subscriber {
    id: ClientId,
    out: Arc<Outbound>,
}

impl Subscriber {
    pub(crate) fn new(id: ClientId, out: Arc<Outbound>) -> Self {
        Subscriber { id, out }
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

/// A pub/sub engine: the in-memory one by default, Redis across instances.
///
/// Frames arrive encoded once; an engine shares the bytes between subscribers. The
/// per-connection bookkeeping (idempotent subscribe, topic limits, cleanup on close) is done by
/// the framework, so an engine sees each (topic, connection) subscription once.
pub trait PubSub: Send + Sync + 'static {
    /// Adds a subscriber to a topic.
    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
        subscriber: Subscriber,
    ) -> BoxFuture<'a, Result<(), WsError>>;
    /// Removes a connection from a topic.
    fn unsubscribe<'a>(
        &'a self,
        topic: &'a str,
        client: ClientId,
    ) -> BoxFuture<'a, Result<(), WsError>>;
    /// Delivers an encoded frame to a topic's subscribers, skipping `exclude`.
    ///
    /// The publication must be handed on (delivered, or queued in order) during this call, not
    /// when the future is polled: callers rely on calls being delivered in call order.
    fn publish(
        &self,
        topic: &str,
        frame: Utf8Bytes,
        exclude: Option<ClientId>,
    ) -> BoxFuture<'static, PublishResult>;
    /// How many connections subscribe to a topic, when the engine knows.
    fn subscriber_count<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Option<usize>>;
}

/// A process's own subscribers, by topic: what every engine delivers to.
///
/// Engines keep one; the in-memory engine is little more than this. Delivery is synchronous and
/// shares the frame's bytes.
#[derive(Default)]
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

    /// Queues `frame` on every local subscriber of `topic` except `exclude`; returns how many
    /// it reached.
    pub fn deliver(&self, topic: &str, frame: &Utf8Bytes, exclude: Option<ClientId>) -> usize {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        let Some(subs) = topics.get(topic) else {
            return 0;
        };
        subs.iter()
            .filter(|s| Some(s.id) != exclude)
            .filter(|s| s.deliver(frame))
            .count()
    }
}

/// The in-memory engine: one process, exact counts, FIFO per subscriber.
#[derive(Default)]
pub struct MemoryPubSub {
    local: LocalTopics,
}

impl MemoryPubSub {
    /// An empty engine.
    pub fn new() -> Self {
        Self::default()
    }
}

// Every future below is ready at once: the work happens in the call, which keeps publications in
// the order handlers made them.
impl PubSub for MemoryPubSub {
    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
        subscriber: Subscriber,
    ) -> BoxFuture<'a, Result<(), WsError>> {
        self.local.add(topic, subscriber);
        Box::pin(std::future::ready(Ok(())))
    }

    fn unsubscribe<'a>(
        &'a self,
        topic: &'a str,
        client: ClientId,
    ) -> BoxFuture<'a, Result<(), WsError>> {
        self.local.remove(topic, client);
        Box::pin(std::future::ready(Ok(())))
    }

    fn publish(
        &self,
        topic: &str,
        frame: Utf8Bytes,
        exclude: Option<ClientId>,
    ) -> BoxFuture<'static, PublishResult> {
        let matched = self.local.deliver(topic, &frame, exclude);
        Box::pin(std::future::ready(PublishResult::exact(matched)))
    }

    fn subscriber_count<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Option<usize>> {
        Box::pin(std::future::ready(Some(self.local.count(topic))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert!(validate_topic("room:1/a_b.c-d").is_ok());
        assert!(validate_topic("").is_err());
        assert!(validate_topic("has space").is_err());
        assert!(validate_topic(&"x".repeat(129)).is_err());
        assert!(validate_topic(&"x".repeat(128)).is_ok());
    }
}
