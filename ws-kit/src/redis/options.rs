//! [`RedisOptions`]: how a [`RedisPubSub`](super::RedisPubSub) or an [`Emitter`](super::Emitter)(super::Emitter)
//! connects, and what it keeps.

use super::{DEFAULT_PREFIX, RedisPubSub};
use crate::error::Error;
use crate::pubsub::{Keep, KeptTopics};
use std::time::Duration;

/// Options of a [`RedisPubSub`] (or [`Emitter`](super::Emitter)) before it connects.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    pub(super) url: String,
    pub(super) prefix: String,
    pub(super) publish_timeout: Duration,
    pub(super) join_timeout: Duration,
    pub(super) health_interval: Duration,
    pub(super) kept: KeptTopics,
    pub(super) presence_lease: Duration,
}

impl RedisOptions {
    /// Options for `url` (`redis://127.0.0.1:6379`), prefix `ws-kit:`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisOptions {
            url: url.into(),
            prefix: DEFAULT_PREFIX.to_string(),
            publish_timeout: Duration::from_secs(2),
            join_timeout: Duration::from_secs(1),
            health_interval: Duration::from_secs(1),
            kept: KeptTopics::default(),
            presence_lease: Duration::from_secs(30),
        }
    }

    /// How long the presence entries of an instance outlive it when it dies without cleaning
    /// up (default 30 s): its lease, renewed by its health loop (see `health_interval`).
    pub fn presence_lease(mut self, lease: Duration) -> Self {
        self.presence_lease = lease;
        self
    }

    /// Topics kept (docs/protocol.md 8a) by this engine before a router says so: what an
    /// [`Emitter`](super::Emitter) needs to publish to kept topics as the servers do (into the topic's history,
    /// with its position). A router's [`keep`](crate::Router::keep) rules come after these.
    pub fn keep(mut self, pattern: &str, keep: Keep) -> Self {
        self.kept.add(pattern, keep);
        self
    }

    /// The channel prefix, so several apps (or tests) can share one Redis.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long a publish waits for Redis before it reports `UNAVAILABLE` (default 2 s).
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// How long a join waits for its topic's channel to be subscribed in Redis (default 1 s).
    /// Past it, or at once while Redis is known to be down, the join takes effect locally and
    /// the channel is subscribed when Redis is back.
    pub fn join_timeout(mut self, timeout: Duration) -> Self {
        self.join_timeout = timeout;
        self
    }

    /// How often an idle instance pings Redis, to notice a lost connection and reconnect (default 1 s).
    pub fn health_interval(mut self, interval: Duration) -> Self {
        self.health_interval = interval;
        self
    }

    /// Connects the engine.
    pub async fn connect(self) -> Result<RedisPubSub, Error> {
        RedisPubSub::connect_with(self).await
    }
}
