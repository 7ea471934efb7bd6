//! The engine's one handle on Redis, a single node or a cluster, and the names it gives things
//! there.
//!
//! A single node (`redis://host:port`) is a `ConnectionManager`: one connection, RESP3, pushes
//! inline. A cluster (several comma-separated node URLs, or [`RedisOptions::cluster`]) is the
//! `redis` crate's async cluster client: one connection per node, commands routed by slot,
//! topics on sharded pub/sub (`SSUBSCRIBE`/`SPUBLISH`), which reaches only the shard that owns
//! the channel's slot where plain `PUBLISH` is copied to every node.
//!
//! Naming: on a cluster every channel and key of one topic carries the topic as its hash tag
//! (`prefix{topic}`, `prefix h:{topic}:m`, ...), so one topic lives on one shard and the kept
//! topics' script may publish on the channel it writes the history beside. Keys of one instance
//! carry the instance's id as their tag. A single node keeps the channel names it always had
//! (`prefix + topic`).
//!
//! [`RedisOptions::cluster`]: super::RedisOptions::cluster

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// A connection to a single node or to a cluster. Clones share it.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    /// Subscribes a topic's (or an instance's) channel: sharded on a cluster.
    pub(crate) async fn subscribe_channel(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            Conn::Single(c) => c.subscribe(channel).await,
            Conn::Cluster(c) => c.ssubscribe(channel).await,
        }
    }

    pub(crate) async fn unsubscribe_channel(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            Conn::Single(c) => c.unsubscribe(channel).await,
            Conn::Cluster(c) => c.sunsubscribe(channel).await,
        }
    }

    /// Subscribes a channel every node hears (plain pub/sub, broadcast on a cluster): the
    /// presence events, rare and wanted by every instance.
    pub(crate) async fn subscribe_broadcast(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            Conn::Single(c) => c.subscribe(channel).await,
            Conn::Cluster(c) => c.subscribe(channel).await,
        }
    }

    /// The command that publishes on a topic's channel.
    pub(crate) fn publish_command(&self) -> &'static str {
        if self.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }
}

/// The node URLs in `url`: several, comma-separated, name a cluster's seed nodes.
pub(crate) fn node_urls(url: &str) -> Vec<String> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect()
}

/// The channel of a topic (or of `#i:<instance>`, an instance's direct channel).
pub(crate) fn channel(prefix: &str, topic: &str, cluster: bool) -> String {
    if cluster {
        format!("{prefix}{{{topic}}}")
    } else {
        format!("{prefix}{topic}")
    }
}

/// The topic of a channel that [`channel`] named, if it is one of this prefix.
pub(crate) fn topic_of<'a>(prefix: &str, channel: &'a str, cluster: bool) -> Option<&'a str> {
    let rest = channel.strip_prefix(prefix)?;
    if cluster {
        rest.strip_prefix('{')?.strip_suffix('}')
    } else {
        Some(rest)
    }
}

/// The slot a key or channel hashes to (its hash tag's, when it has one). Pipelines on a cluster
/// hold the commands of one slot.
pub(crate) fn slot(key: &str) -> Slot {
    Slot::for_key(key)
}

impl super::Inner {
    /// On a cluster, after a node was lost: every channel subscribed again. The `redis` crate's
    /// cluster client does not resubscribe sharded channels when it rebuilds its connections
    /// after a node failure (seen in `redis_cluster.rs`: none was left on any node, the healthy
    /// ones included), so the engine does; subscribing again what is still subscribed is
    /// harmless.
    pub(super) async fn resubscribe_all(&self) {
        use futures_util::StreamExt;
        let mut conn = self.conn.clone();
        let _ = conn.subscribe_broadcast(&self.events).await;
        let mut channels: Vec<String> = self
            .subscribed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|t| self.channel(t))
            .collect();
        if self.directory {
            channels.push(self.channel(&super::directory::direct_topic(self.instance)));
        }
        futures_util::stream::iter(channels)
            .for_each_concurrent(64, |channel| {
                let mut conn = self.conn.clone();
                async move {
                    if let Err(e) = conn.subscribe_channel(&channel).await {
                        tracing::debug!(channel, error = %e, "resubscribe failed; retried later");
                        self.out_of_step
                            .store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_name_their_topic() {
        for cluster in [false, true] {
            for topic in ["room:1", "#client:x", "{odd}", "a}b", ""] {
                let c = channel("p:", topic, cluster);
                assert_eq!(topic_of("p:", &c, cluster), Some(topic), "{c}");
            }
        }
        assert_eq!(channel("p:", "room", true), "p:{room}");
        assert_eq!(topic_of("q:", "p:{room}", true), None);
    }

    #[test]
    fn one_topic_one_slot_on_a_cluster() {
        let topic = "room:42";
        let keys = [
            channel("ws-kit:", topic, true),
            super::super::kept::hash_key("ws-kit:", topic),
            super::super::kept::stream_key("ws-kit:", topic),
            super::super::presence::hash_key("ws-kit:", topic),
        ];
        for key in &keys {
            assert_eq!(slot(key), slot(&keys[0]), "{key}");
        }
        assert_eq!(
            node_urls(" redis://a:1, redis://b:2 ,"),
            ["redis://a:1", "redis://b:2"]
        );
    }
}
