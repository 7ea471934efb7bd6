//! Kept topics on Redis (docs/protocol.md 8a): one stream and one small hash per topic, written
//! and published by one script so every instance sees one order, and the recovery of a
//! subscriber from a position.
//!
//! Keys, hash-tagged by topic (one cluster slot per topic): `<prefix>h:{<topic>}:m`, a hash with
//! the history's `epoch` and the `last` offset given; `<prefix>h:{<topic>}:s`, a stream whose
//! entry ids are `<offset>-1` and whose fields are `f` (the plain frame) and `t` (Redis's clock
//! when stored, in ms). Both expire after the topic's TTL without publications.
//!
//! Publishing: `PUBLISH_SCRIPT` takes the next offset (creating a new epoch when the hash is
//! gone: history lost), adds the entry (`MAXLEN ~` trims approximately), refreshes both TTLs and
//! publishes (PUBLISH, or SPUBLISH on a cluster) the kept envelope (`origin SP exclude SP offset SP epoch LF frame`) in the same
//! atomic step, so offsets and channel order agree on every instance.
//!
//! Recovering (see `RedisPubSub::subscribe_from`): the subscriber is first registered as
//! recovering (live publications for it are buffered), the channel is subscribed, then
//! `READ_SCRIPT` reads the position and, when every publication after `since` is still kept,
//! those entries. Under the recovering lock the announcement, the recovered frames and the
//! buffered live ones after the position go out, and the subscriber becomes live. A live
//! publication is either at most the position (in the history, or before `since`: dropped from
//! the buffer) or after it (buffered or, once live, delivered): never both, never neither.

use crate::pubsub::{ClientId, LocalTopics, Position, Subscribed, Subscriber, positioned};
use std::collections::HashMap;
use std::sync::Mutex;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// KEYS: hash, stream. ARGV: channel, frame, size, ttl ms, a fresh epoch, envelope head
/// (`origin SP exclude`), the publish command (`SPUBLISH` on a cluster: the channel shares the
/// keys' slot). Returns the offset.
pub(super) const PUBLISH_SCRIPT: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[5]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'last', 0)
end
local offset = redis.call('HINCRBY', KEYS[1], 'last', 1)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], offset .. '-1', 'f', ARGV[2], 't', now)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call(ARGV[7], ARGV[1], ARGV[6] .. ' ' .. offset .. ' ' .. epoch .. '\n' .. ARGV[2])
return offset
";

/// KEYS: hash, stream. ARGV: since offset, since epoch, size, ttl ms, a fresh epoch. Returns
/// `{epoch, last, recovered (0/1), frames...}`: the frames after `since` when all of them are
/// kept, exactly `last - since` of them, none older than the TTL.
pub(super) const READ_SCRIPT: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[5]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'last', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {epoch, 0, 0}
end
local last = tonumber(redis.call('HGET', KEYS[1], 'last'))
local since = tonumber(ARGV[1])
if (since == 0 and ARGV[2] == '') or epoch ~= ARGV[2] or since > last or last - since > tonumber(ARGV[3]) then
  return {epoch, last, 0}
end
if since == last then
  return {epoch, last, 1}
end
local entries = redis.call('XRANGE', KEYS[2], (since + 1) .. '-1', '+', 'COUNT', last - since)
if #entries ~= last - since or entries[1][1] ~= (since + 1) .. '-1' then
  return {epoch, last, 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now - tonumber(entries[1][2][4]) >= tonumber(ARGV[4]) then
  return {epoch, last, 0}
end
local out = {epoch, last, 1}
for _, entry in ipairs(entries) do
  out[#out + 1] = entry[2][2]
end
return out
";

/// The hash key of a kept topic.
pub(super) fn hash_key(prefix: &str, topic: &str) -> String {
    format!("{prefix}h:{{{topic}}}:m")
}

/// The stream key of a kept topic.
pub(super) fn stream_key(prefix: &str, topic: &str) -> String {
    format!("{prefix}h:{{{topic}}}:s")
}

/// What `READ_SCRIPT` answered.
pub(super) struct Read {
    pub(super) position: Position,
    pub(super) recovered: bool,
    pub(super) frames: Vec<Utf8Bytes>,
}

impl Read {
    pub(super) fn parse(value: redis::Value) -> Option<Read> {
        let redis::Value::Array(items) = value else {
            return None;
        };
        let mut items = items.into_iter();
        let epoch = text(items.next()?)?;
        let last = match items.next()? {
            redis::Value::Int(n) => u64::try_from(n).ok()?,
            _ => return None,
        };
        let recovered = matches!(items.next()?, redis::Value::Int(1));
        let frames = items
            .map(|v| text(v).map(Utf8Bytes::from))
            .collect::<Option<Vec<_>>>()?;
        Some(Read {
            position: Position {
                offset: last,
                epoch,
            },
            recovered,
            frames,
        })
    }
}

fn text(value: redis::Value) -> Option<String> {
    match value {
        redis::Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        redis::Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// A subscriber from a position waiting for its history: live publications are buffered.
struct Waiting {
    subscriber: Subscriber,
    /// `(offset, positioned frame)` in arrival order.
    buffer: Vec<(u64, Utf8Bytes)>,
}

/// The subscribers being recovered, by topic, and the lock that orders live delivery against
/// the end of a recovery.
#[derive(Default)]
pub(super) struct Recovering {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    waiting: HashMap<String, Vec<Waiting>>,
    /// Subscribers live again after a recovery up to an offset: a publication at or below it
    /// can still be on its way from Redis (read by the script, not yet pushed here), and is
    /// not theirs. Dropped at the first publication past it (pushes of a topic come in offset
    /// order).
    floors: HashMap<String, Vec<(ClientId, u64)>>,
}

impl Recovering {
    /// Whether some subscriber of `topic` is being recovered (its channel is wanted).
    pub(super) fn wants(&self, topic: &str) -> bool {
        self.lock().waiting.contains_key(topic)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts buffering live publications of `topic` for `subscriber`.
    pub(super) fn start(&self, topic: &str, subscriber: Subscriber) {
        self.lock()
            .waiting
            .entry(topic.to_string())
            .or_default()
            .push(Waiting {
                subscriber,
                buffer: Vec::new(),
            });
    }

    /// A kept publication from Redis: the positioned form to live positioned subscribers (and
    /// the plain one to the others, unless `plain_done`: the publishing instance gave it to them
    /// already), and to the buffers of the subscribers being recovered.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn deliver(
        &self,
        local: &LocalTopics,
        topic: &str,
        plain: &Utf8Bytes,
        offset: u64,
        epoch: &str,
        exclude: Option<ClientId>,
        plain_done: bool,
    ) {
        let Some(with_position) = positioned(plain, topic, offset, epoch) else {
            local.deliver(topic, plain, exclude);
            return;
        };
        let mut state = self.lock();
        let floors = state.floors.get(topic);
        let below_floor = |id: ClientId| {
            floors.is_some_and(|f| f.iter().any(|(c, floor)| *c == id && offset <= *floor))
        };
        local.deliver_each(topic, exclude, |s| {
            if !s.wants_positions() {
                (!plain_done).then_some(plain)
            } else if below_floor(s.id()) {
                None
            } else {
                Some(&with_position)
            }
        });
        if let Some(floors) = state.floors.get_mut(topic) {
            floors.retain(|(_, floor)| offset < *floor);
            if floors.is_empty() {
                state.floors.remove(topic);
            }
        }
        if let Some(list) = state.waiting.get_mut(topic) {
            for w in list
                .iter_mut()
                .filter(|w| Some(w.subscriber.id()) != exclude)
            {
                w.buffer.push((offset, with_position.clone()));
            }
        }
    }

    /// Ends the recovery of `client` on `topic`: the announcement, `history` (positioned), the
    /// buffered live frames after `subscribed.position`, then the subscriber joins `local`.
    /// `None` if it was not waiting (its connection left meanwhile).
    pub(super) fn finish(
        &self,
        local: &LocalTopics,
        topic: &str,
        client: ClientId,
        subscribed: &Subscribed,
        announce: Option<Utf8Bytes>,
        history: &[Utf8Bytes],
    ) -> Option<()> {
        let mut state = self.lock();
        let list = state.waiting.get_mut(topic)?;
        let at = list.iter().position(|w| w.subscriber.id() == client)?;
        let w = list.swap_remove(at);
        if list.is_empty() {
            state.waiting.remove(topic);
        }
        if let Some(first) = &announce {
            w.subscriber.deliver(first);
        }
        let position = &subscribed.position;
        for (i, frame) in history.iter().enumerate() {
            let offset = position.offset - history.len() as u64 + i as u64 + 1;
            if let Some(frame) = positioned(frame, topic, offset, &position.epoch) {
                w.subscriber.deliver(&frame);
            }
        }
        let mut highest = 0;
        for (offset, frame) in &w.buffer {
            highest = highest.max(*offset);
            if *offset > position.offset {
                w.subscriber.deliver(frame);
            }
        }
        if highest < position.offset {
            state
                .floors
                .entry(topic.to_string())
                .or_default()
                .push((client, position.offset));
        }
        local.add(topic, w.subscriber);
        Some(())
    }

    /// Gives up the recovery of `client` on `topic` (Redis failed): the subscriber joins `local`
    /// as it is, after the announcement and whatever was buffered.
    pub(super) fn abandon(
        &self,
        local: &LocalTopics,
        topic: &str,
        client: ClientId,
        announce: Option<Utf8Bytes>,
    ) {
        let _ = self.finish(
            local,
            topic,
            client,
            &Subscribed::not_recovered(),
            announce,
            &[],
        );
    }

    /// Forgets `client`'s waiting subscriptions (its connection left).
    pub(super) fn remove(&self, topic: &str, client: ClientId) {
        let mut state = self.lock();
        if let Some(list) = state.waiting.get_mut(topic) {
            list.retain(|w| w.subscriber.id() != client);
            if list.is_empty() {
                state.waiting.remove(topic);
            }
        }
        if let Some(floors) = state.floors.get_mut(topic) {
            floors.retain(|(c, _)| *c != client);
            if floors.is_empty() {
                state.floors.remove(topic);
            }
        }
    }
}
