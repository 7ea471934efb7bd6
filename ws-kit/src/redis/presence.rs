//! Presence on Redis (docs/protocol.md 8b).
//!
//! Keys: `<prefix>p:{<topic>}`, a hash client id → entry (JSON, with the instance that holds
//! it); `<prefix>pi:<instance>`, the set of `client LF topic` an instance holds (what to clean
//! after it); `<prefix>lease:<instance>`, renewed by the instance's health loop, expiring after
//! the lease when the instance dies or loses Redis; `<prefix>instances`, the instances that hold
//! presence. Joins and leaves are published on `<prefix>#presence` (a JSON [`PresenceEvent`]),
//! which every engine subscribes when it connects.
//!
//! A listing drops the entries of instances whose lease is gone at once; the health loop of any
//! live instance then removes them (one script per dead instance: atomic, so two instances doing
//! it at once remove each entry once) and publishes their leaves.
//!
//! [`PresenceEvent`]: crate::pubsub::PresenceEvent

use super::{Inner, unavailable};
use crate::error::WsError;
use crate::pubsub::{PresenceEntry, PresenceEvent};
use redis::AsyncCommands;
use std::collections::HashMap;
use std::sync::atomic::Ordering;

/// KEYS: topic hash, instance set, instances, lease. ARGV: client, entry JSON, member, instance,
/// lease ms, channel, event JSON (empty: no event).
pub(super) const JOIN_SCRIPT: &str = r#"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[4])
redis.call('SET', KEYS[4], '1', 'PX', ARGV[5])
if ARGV[7] ~= '' then
  redis.call('PUBLISH', ARGV[6], ARGV[7])
end
return 1
"#;

/// KEYS: topic hash, instance set. ARGV: client, member, channel, topic.
pub(super) const LEAVE_SCRIPT: &str = r#"
local entry = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[2])
if not entry then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[3], '{"kind":"leave","topic":' .. cjson.encode(ARGV[4]) .. ',"entry":' .. entry .. '}')
return 1
"#;

/// KEYS: the dead instance's set, instances, its lease. ARGV: instance, key prefix, channel.
/// Removes what a dead instance held and publishes the leaves, unless its lease is back.
pub(super) const CLEAN_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[3]) == 1 then
  return 0
end
local members = redis.call('SMEMBERS', KEYS[1])
for _, member in ipairs(members) do
  local newline = string.find(member, '\n', 1, true)
  if newline then
    local client = string.sub(member, 1, newline - 1)
    local topic = string.sub(member, newline + 1)
    local hash = ARGV[2] .. 'p:{' .. topic .. '}'
    local entry = redis.call('HGET', hash, client)
    if entry then
      redis.call('HDEL', hash, client)
      redis.call('PUBLISH', ARGV[3], '{"kind":"leave","topic":' .. cjson.encode(topic) .. ',"entry":' .. entry .. '}')
    end
  end
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return #members
"#;

pub(super) fn hash_key(prefix: &str, topic: &str) -> String {
    format!("{prefix}p:{{{topic}}}")
}

pub(super) fn instance_key(prefix: &str, instance: &str) -> String {
    format!("{prefix}pi:{instance}")
}

pub(super) fn lease_key(prefix: &str, instance: &str) -> String {
    format!("{prefix}lease:{instance}")
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
        self.presence_scripts[0]
            .key(hash_key(&self.prefix, topic))
            .key(instance_key(&self.prefix, &instance))
            .key(instances_key(&self.prefix))
            .key(lease_key(&self.prefix, &instance))
            .arg(&client)
            .arg(stored)
            .arg(member(&client, topic))
            .arg(&instance)
            .arg(self.presence_lease.as_millis().max(1) as u64)
            .arg(self.channel(EVENTS))
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
        self.presence_scripts[1]
            .key(hash_key(&self.prefix, topic))
            .key(instance_key(&self.prefix, &instance))
            .arg(client)
            .arg(member(client, topic))
            .arg(self.channel(EVENTS))
            .arg(topic)
            .invoke_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(|e| self.unavailable(e))
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

    /// On every healthy ping: renew this instance's lease (while it holds presence), and clean
    /// up after instances whose lease ran out.
    pub(super) async fn presence_upkeep(&self) {
        let mut conn = self.conn.clone();
        let instance = self.instance.to_string();
        if self.holds_presence.load(Ordering::SeqCst) {
            let lease = self.presence_lease.as_millis().max(1) as u64;
            let _: Result<(), _> = redis::cmd("SET")
                .arg(lease_key(&self.prefix, &instance))
                .arg(1)
                .arg("PX")
                .arg(lease)
                .query_async(&mut conn)
                .await;
        }
        let Ok(instances) = conn
            .smembers::<_, Vec<String>>(instances_key(&self.prefix))
            .await
        else {
            return;
        };
        for dead in instances.iter().filter(|i| **i != instance) {
            let _: Result<i64, _> = self.presence_scripts[2]
                .key(instance_key(&self.prefix, dead))
                .key(instances_key(&self.prefix))
                .key(lease_key(&self.prefix, dead))
                .arg(dead)
                .arg(&self.prefix)
                .arg(self.channel(EVENTS))
                .invoke_async(&mut conn)
                .await;
        }
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
