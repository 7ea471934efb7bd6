//! [`RedisOptions`]: how a [`RedisPubSub`](super::RedisPubSub) or an [`Emitter`](super::Emitter)
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
    pub(super) cluster: Option<bool>,
    pub(super) direct: DirectSends,
}

/// How sends to one connection or one user (`send_to_client`, `send_to_user`) reach the
/// instance that holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DirectSends {
    /// One channel per instance and a directory in Redis (connection or user → the instances
    /// holding it). A connection costs two set additions (batched with other connections') and
    /// no SUBSCRIBE; a send costs one
    /// lookup and one publish per instance that holds a target. Scales to 100k connections per
    /// instance. The default.
    #[default]
    Directory,
    /// One channel per connection and per user, as before the directory: a send is one publish,
    /// but every connection SUBSCRIBEs (and every reconnect to Redis resubscribes them all).
    /// Fits a few thousand connections per instance; kept for comparison and for small setups.
    ChannelPerConnection,
}

impl RedisOptions {
    /// Options for `url` (`redis://127.0.0.1:6379`; several comma-separated node URLs for a
    /// cluster), prefix `ws-kit:`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisOptions {
            url: url.into(),
            prefix: DEFAULT_PREFIX.to_string(),
            publish_timeout: Duration::from_secs(2),
            join_timeout: Duration::from_secs(1),
            health_interval: Duration::from_secs(1),
            kept: KeptTopics::default(),
            presence_lease: Duration::from_secs(30),
            cluster: None,
            direct: DirectSends::Directory,
        }
    }

    /// Whether the URL names a Redis Cluster (default: when it holds several comma-separated
    /// node URLs, `redis://10.0.0.1:6379,redis://10.0.0.2:6379`). Set it to treat one seed URL
    /// as a cluster.
    pub fn cluster(mut self, cluster: bool) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// How direct sends reach other instances (default [`DirectSends::Directory`]). Every
    /// instance of one prefix must use the same.
    pub fn direct_sends(mut self, direct: DirectSends) -> Self {
        self.direct = direct;
        self
    }

    /// How long the presence entries and directory entries of an instance outlive it when it
    /// dies without cleaning up (default 30 s): its lease, renewed by its health loop (see
    /// `health_interval`).
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
