//! Presence on Redis (docs/protocol.md 8b).
//!
//! Keys: `<prefix>p:{<topic>}`, a hash client id → entry (JSON, with the instance that holds
//! it); `<prefix>pi:<instance>`, the set of `client LF topic` an instance holds (what to clean
//! after it); `<prefix>lease:<instance>`, renewed by the instance's health loop, expiring after
//! the lease when the instance dies or loses Redis; `<prefix>instances`, the instances that hold
//! presence. Joins and leaves are published on `<prefix>#presence` (a JSON [`PresenceEvent`]),
//! which every instance with a presence hook subscribes.
//!
//! A listing drops the entries of instances whose lease is gone at once; the health loop of any
//! live instance then removes them (one script per dead instance: atomic, so two instances doing
//! it at once remove each entry once) and publishes their leaves.
//!
//! [`PresenceEvent`]: crate::pubsub::PresenceEvent

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
