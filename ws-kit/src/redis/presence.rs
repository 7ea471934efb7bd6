//! Presence on Redis (docs/protocol.md 8b).
//!
//! Keys: `<prefix>p:{<topic>}`, a hash client id → entry (JSON, with the instance that holds
//! it), in the topic's slot; `<prefix>pi:{<instance>}`, the set of `client LF topic` an instance
//! holds (what to clean after it), and `<prefix>lease:{<instance>}`, renewed by the instance's
//! health loop and expiring after the lease when the instance dies or loses Redis, both in the
//! instance's slot; `<prefix>instances`, the instances to watch (they hold presence or directory
//! entries). Joins and leaves are published on `<prefix>#presence` (a JSON [`PresenceEvent`]),
//! plain pub/sub that every engine subscribes when it connects (a cluster copies it to every
//! node).
//!
//! No script touches two slots, so the same steps run on a cluster: a join adds to the
//! instance's set first, then writes the entry and publishes its event in one script; a leave
//! removes the entry and publishes in one script, then updates the set. Whatever is in a topic's
//! hash is thus listed in its instance's set.
//!
//! A listing drops the entries of instances whose lease is gone at once; the health loop of any
//! live instance then removes them, one entry per script (`LEAVE_SCRIPT`: atomic, so two
//! instances cleaning at once remove each entry once and publish its leave once).
//!
//! [`PresenceEvent`]: crate::pubsub::PresenceEvent

use super::conn::slot;
use super::directory::pipelined;
use super::{Inner, unavailable};
use crate::error::WsError;
use crate::pubsub::{PresenceEntry, PresenceEvent};
use redis::AsyncCommands;
use std::collections::HashMap;
use std::sync::atomic::Ordering;

/// KEYS: topic hash. ARGV: client, entry JSON, channel, event JSON (empty: no event).
pub(super) const JOIN_SCRIPT: &str = r#"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[4] ~= '' then
  redis.call('PUBLISH', ARGV[3], ARGV[4])
end
return 1
"#;

/// KEYS: topic hash. ARGV: client, channel, topic. Removes the entry and publishes its leave.
pub(super) const LEAVE_SCRIPT: &str = r#"
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if not entry then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[2], '{"kind":"leave","topic":' .. cjson.encode(ARGV[3]) .. ',"entry":' .. entry .. '}')
return 1
"#;

pub(super) fn hash_key(prefix: &str, topic: &str) -> String {
    format!("{prefix}p:{{{topic}}}")
}

pub(super) fn instance_key(prefix: &str, instance: &str) -> String {
    format!("{prefix}pi:{{{instance}}}")
}

pub(super) fn lease_key(prefix: &str, instance: &str) -> String {
    format!("{prefix}lease:{{{instance}}}")
}

pub(super) fn instances_key(prefix: &str) -> String {
    format!("{prefix}instances")
}

/// The member of an instance's set for one entry.
pub(super) fn member(client: &str, topic: &str) -> String {
    format!("{client}\n{topic}")
}

/// The events channel's topic part (after the prefix).
pub(super) const EVENTS: &str = "#presence";

impl Inner {
    /// Writes one presence entry (and, with `event`, publishes its join).
    pub(super) async fn write_presence(
        &self,
        topic: &str,
        entry: &PresenceEntry,
        event: bool,
    ) -> Result<(), WsError> {
        #[derive(serde::Serialize)]
        struct Stored<'a> {
            #[serde(flatten)]
            entry: &'a PresenceEntry,
            instance: String,
        }
        let instance = self.instance.to_string();
        let stored = serde_json::to_string(&Stored {
            entry,
            instance: instance.clone(),
        })
        .map_err(|_| unavailable("presence entry not encodable"))?;
        let event = if event {
            serde_json::to_string(&PresenceEvent::Join {
                topic: topic.to_string(),
                entry: entry.clone(),
            })
            .unwrap_or_default()
        } else {
            String::new()
        };
        let client = entry.client_id.to_string();
        let mut conn = self.conn.clone();
        conn.sadd::<_, _, i64>(
            instance_key(&self.prefix, &instance),
            member(&client, topic),
        )
        .await
        .map_err(|e| self.unavailable(e))?;
        self.presence_scripts[0]
            .key(hash_key(&self.prefix, topic))
            .arg(&client)
            .arg(stored)
            .arg(&self.events)
            .arg(event)
            .invoke_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(|e| self.unavailable(e))
    }

    /// Removes one presence entry of this instance and publishes its leave.
    pub(super) async fn erase_presence(&self, topic: &str, client: &str) -> Result<(), WsError> {
        let instance = self.instance.to_string();
        let mut conn = self.conn.clone();
        self.remove_entry(topic, client)
            .await
            .map_err(|e| self.unavailable(e))?;
        conn.srem::<_, _, i64>(instance_key(&self.prefix, &instance), member(client, topic))
            .await
            .map(|_| ())
            .map_err(|e| self.unavailable(e))
    }

    /// Removes one entry from its topic's hash and publishes its leave, atomically (once, even
    /// when two instances clean the same dead one).
    async fn remove_entry(&self, topic: &str, client: &str) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        self.presence_scripts[1]
            .key(hash_key(&self.prefix, topic))
            .arg(client)
            .arg(&self.events)
            .arg(topic)
            .invoke_async::<i64>(&mut conn)
            .await
            .map(|_| ())
    }

    pub(super) async fn list_presence(&self, topic: &str) -> Result<Vec<PresenceEntry>, WsError> {
        #[derive(serde::Deserialize)]
        struct Stored {
            #[serde(flatten)]
            entry: PresenceEntry,
            instance: String,
        }
        let mut conn = self.conn.clone();
        let all: HashMap<String, String> = conn
            .hgetall(hash_key(&self.prefix, topic))
            .await
            .map_err(|e| self.unavailable(e))?;
        let stored: Vec<Stored> = all
            .values()
            .filter_map(|json| serde_json::from_str(json).ok())
            .collect();
        let me = self.instance.to_string();
        let mut alive: HashMap<String, bool> = HashMap::new();
        for s in &stored {
            if alive.contains_key(&s.instance) {
                continue;
            }
            let live = s.instance == me
                || conn
                    .exists::<_, bool>(lease_key(&self.prefix, &s.instance))
                    .await
                    .map_err(|e| self.unavailable(e))?;
            alive.insert(s.instance.clone(), live);
        }
        let mut entries: Vec<PresenceEntry> = stored
            .into_iter()
            .filter(|s| alive.get(&s.instance).copied().unwrap_or(false))
            .map(|s| s.entry)
            .collect();
        entries.sort_by_key(|e| e.client_id);
        Ok(entries)
    }

    /// Renews this instance's lease and keeps it among the watched instances. A lease that was
    /// gone (its shard restarted empty, or it lapsed) may have let another instance clean this
    /// one's directory and presence entries: the next healthy ping writes them again.
    pub(super) async fn renew_lease(&self) {
        let instance = self.instance.to_string();
        let lease = self.presence_lease.as_millis().max(1) as u64;
        let mut renew = redis::cmd("SET");
        renew
            .arg(lease_key(&self.prefix, &instance))
            .arg(1)
            .arg("PX")
            .arg(lease)
            .arg("GET");
        let mut watch = redis::cmd("SADD");
        let instances = instances_key(&self.prefix);
        watch.arg(&instances).arg(&instance);
        let commands = vec![
            (slot(&lease_key(&self.prefix, &instance)), renew),
            (slot(&instances), watch),
        ];
        for (result, indexes) in pipelined(&self.conn, commands).await {
            let Ok(values) = result else { continue };
            let was = indexes
                .iter()
                .position(|&i| i == 0)
                .and_then(|at| values.get(at));
            let renewed = self.leased.swap(true, Ordering::SeqCst);
            if renewed && matches!(was, Some(redis::Value::Nil)) {
                tracing::warn!("this instance's lease was gone; writing its entries again");
                self.out_of_step.store(true, Ordering::SeqCst);
                self.lease_lost.store(true, Ordering::SeqCst);
            }
        }
    }

    /// On every healthy ping: renew this instance's lease, and clean up after instances whose
    /// lease ran out (their presence entries, with their leaves, and their directory entries).
    pub(super) async fn upkeep(&self) {
        self.renew_lease().await;
        let mut conn = self.conn.clone();
        let instance = self.instance.to_string();
        let Ok(instances) = conn
            .smembers::<_, Vec<String>>(instances_key(&self.prefix))
            .await
        else {
            return;
        };
        for dead in instances.iter().filter(|i| **i != instance) {
            match conn.exists::<_, bool>(lease_key(&self.prefix, dead)).await {
                Ok(false) => {}
                _ => continue,
            }
            if self.clean_presence(dead).await.is_ok() && self.clean_directory(dead).await.is_ok() {
                let _: Result<i64, _> = conn.srem(instances_key(&self.prefix), dead).await;
            }
        }
    }

    /// Removes a dead instance's presence entries, publishing their leaves.
    async fn clean_presence(&self, dead: &str) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let set = instance_key(&self.prefix, dead);
        let members: Vec<String> = conn.smembers(&set).await?;
        for member in &members {
            if let Some((client, topic)) = member.split_once('\n') {
                self.remove_entry(topic, client).await?;
            }
        }
        conn.del::<_, i64>(&set).await?;
        Ok(())
    }

    /// After an outage: this instance's entries as they are here (no events for those written
    /// again), and its leaves that did not reach Redis.
    pub(super) async fn reconcile_presence(&self) {
        if !self.holds_presence.load(Ordering::SeqCst) {
            return;
        }
        let held: Vec<(String, PresenceEntry)> = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|((topic, _), entry)| (topic.clone(), entry.clone()))
            .collect();
        for (topic, entry) in &held {
            let _ = self.write_presence(topic, entry, false).await;
        }
        let mut conn = self.conn.clone();
        let instance = self.instance.to_string();
        let Ok(members) = conn
            .smembers::<_, Vec<String>>(instance_key(&self.prefix, &instance))
            .await
        else {
            return;
        };
        for member in members {
            let Some((client, topic)) = member.split_once('\n') else {
                continue;
            };
            let still = held
                .iter()
                .any(|(t, e)| t == topic && e.client_id.to_string() == client);
            if !still {
                let _ = self.erase_presence(topic, client).await;
            }
        }
    }
}
