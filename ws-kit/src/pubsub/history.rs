//! Kept topics (docs/protocol.md 8a): which topics keep their last publications ([`Keep`],
//! [`KeptTopics`]), positions ([`Position`]), what a subscribe from a position reports
//! ([`Subscribed`]), the positioned form of a frame, and the in-memory history ([`History`]).

use super::{ClientId, LocalTopics, Subscriber};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// How much of a kept topic's past is kept: its last `size` publications, none older than `ttl`.
///
/// ```
/// use std::time::Duration;
/// use ws_kit::pubsub::Keep;
///
/// let rooms = Keep::last(100).for_at_most(Duration::from_secs(300));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keep {
    size: usize,
    ttl: Duration,
}

impl Keep {
    /// The last `size` publications (at least 1), for at most an hour unless
    /// [`for_at_most`](Self::for_at_most) says otherwise.
    pub fn last(size: usize) -> Self {
        Keep {
            size: size.max(1),
            ttl: Duration::from_secs(3600),
        }
    }

    /// None older than `ttl`.
    pub fn for_at_most(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How many publications are kept.
    pub fn size(&self) -> usize {
        self.size
    }

    /// How long a publication stays recoverable.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// Which topics are kept: rules by pattern, the first that matches wins. A pattern is a topic
/// name, or a prefix followed by `*` (`room:*`).
#[derive(Clone, Debug, Default)]
pub struct KeptTopics {
    rules: Vec<(Box<str>, Keep)>,
}

impl KeptTopics {
    /// Adds a rule.
    pub fn add(&mut self, pattern: &str, keep: Keep) {
        self.rules.push((pattern.into(), keep));
    }

    /// Appends `other`'s rules after these.
    pub fn extend(&mut self, other: KeptTopics) {
        self.rules.extend(other.rules);
    }

    /// Whether no topic is kept.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// How `topic` is kept, if it is.
    pub fn of(&self, topic: &str) -> Option<Keep> {
        self.rules.iter().find_map(|(pattern, keep)| {
            let matches = match pattern.strip_suffix('*') {
                Some(prefix) => topic.starts_with(prefix),
                None => topic == &**pattern,
            };
            matches.then_some(*keep)
        })
    }
}

/// A position in a kept topic: the offset of the last publication seen, in an epoch of the
/// topic's history. `{offset: 0, epoch: ""}` means "from now on".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    /// The offset of the last publication seen (publications are numbered from 1).
    pub offset: u64,
    /// The history's epoch: it changes whenever the history is lost.
    pub epoch: String,
}

/// A position in a message (`since` of a join) is `{offset, epoch}`, strict, in generated
/// front-end schemas too.
impl crate::schema::Describe for Position {
    fn describe() -> crate::schema::TypeSchema {
        use crate::schema::{FieldSchema, ObjectSchema, TypeSchema};
        fn fields() -> Vec<FieldSchema> {
            vec![
                FieldSchema {
                    rust_name: "offset",
                    wire_name: "offset",
                    ty: u64::describe(),
                    rules: Vec::new(),
                },
                FieldSchema {
                    rust_name: "epoch",
                    wire_name: "epoch",
                    ty: String::describe(),
                    rules: Vec::new(),
                },
            ]
        }
        TypeSchema::Object(ObjectSchema {
            rust_name: "Position",
            path: std::any::type_name::<Position>(),
            fields,
        })
    }
}

/// What a subscribe from a position reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribed {
    /// Whether every publication after the position was sent (then exactly those were);
    /// otherwise none was.
    pub recovered: bool,
    /// The topic's position when the subscription started: recovered publications are those up
    /// to it, live ones come after it.
    pub position: Position,
}

impl Subscribed {
    /// Nothing recovered, at position zero: a subscribe that had no history to read (the
    /// engine keeps none, the topic is not kept, Redis is down, or the connection was already
    /// subscribed).
    pub fn not_recovered() -> Self {
        Subscribed {
            recovered: false,
            position: Position::default(),
        }
    }
}

/// The frame a subscribe from a position sends first, built from what it reports (the app's
/// `JOINED`): `None` sends nothing.
pub type Announce = Box<dyn FnOnce(&Subscribed) -> Option<Utf8Bytes> + Send>;

/// The positioned form of a publication frame: its `meta` (kept, or made) gains `topic`,
/// `offset` and `epoch`. `None` if `frame` is not a JSON object (never for ws-kit's frames).
pub fn positioned(frame: &str, topic: &str, offset: u64, epoch: &str) -> Option<Utf8Bytes> {
    #[derive(Deserialize)]
    struct In<'a> {
        #[serde(borrow, rename = "type")]
        ty: &'a RawValue,
        #[serde(borrow, default)]
        payload: Option<&'a RawValue>,
        #[serde(default)]
        meta: Option<serde_json::Map<String, serde_json::Value>>,
    }
    #[derive(Serialize)]
    struct Out<'a> {
        #[serde(rename = "type")]
        ty: &'a RawValue,
        #[serde(skip_serializing_if = "Option::is_none")]
        payload: Option<&'a RawValue>,
        meta: Meta<'a>,
    }
    #[derive(Serialize)]
    struct Meta<'a> {
        #[serde(flatten)]
        rest: serde_json::Map<String, serde_json::Value>,
        topic: &'a str,
        offset: u64,
        epoch: &'a str,
    }
    let parsed: In<'_> = serde_json::from_str(frame).ok()?;
    let mut rest = parsed.meta.unwrap_or_default();
    for key in ["topic", "offset", "epoch"] {
        rest.remove(key);
    }
    let out = Out {
        ty: parsed.ty,
        payload: parsed.payload,
        meta: Meta {
            rest,
            topic,
            offset,
            epoch,
        },
    };
    serde_json::to_string(&out).ok().map(Utf8Bytes::from)
}

/// A fresh epoch: unique per history, short.
#[doc(hidden)]
pub fn new_epoch() -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    id[id.len() - 12..].to_string()
}

/// One kept topic's history in memory.
struct Ring {
    keep: Keep,
    epoch: Arc<str>,
    /// The last offset given.
    offset: u64,
    /// `(offset, when, positioned frame)`, oldest first; never more than `keep.size`.
    entries: VecDeque<(u64, Instant, Utf8Bytes)>,
}

impl Ring {
    fn new(keep: Keep) -> Self {
        Ring {
            keep,
            epoch: new_epoch().into(),
            offset: 0,
            entries: VecDeque::new(),
        }
    }

    /// Drops what is older than the TTL.
    fn expire(&mut self, now: Instant) {
        while let Some((_, at, _)) = self.entries.front() {
            if now.duration_since(*at) >= self.keep.ttl {
                self.entries.pop_front();
            } else {
                break;
            }
        }
    }

    fn position(&self) -> Position {
        Position {
            offset: self.offset,
            epoch: self.epoch.to_string(),
        }
    }

    /// The frames after `since`, if all of them are still here; `Some(empty)` when there are none.
    fn after(&self, since: &Position) -> Option<Vec<Utf8Bytes>> {
        if since.epoch != *self.epoch || since.offset > self.offset {
            return None;
        }
        if since.offset == self.offset {
            return Some(Vec::new());
        }
        let first = self.entries.front()?.0;
        if first > since.offset + 1 {
            return None;
        }
        Some(
            self.entries
                .iter()
                .filter(|(offset, _, _)| *offset > since.offset)
                .map(|(_, _, frame)| frame.clone())
                .collect(),
        )
    }
}

/// Kept topics in memory: one ring per topic, and the lock that makes "publish" and "subscribe
/// from a position" atomic with each other (so the switch from history to live has no gap and
/// no duplicate).
#[derive(Default)]
pub struct History {
    rules: RwLock<KeptTopics>,
    /// Whether any topic is kept: publications skip the rules without a lock when none is.
    any: AtomicBool,
    rings: Mutex<HashMap<Box<str>, Ring>>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("History")
            .field("topics", &rings.len())
            .finish_non_exhaustive()
    }
}

impl History {
    /// Sets which topics are kept.
    pub fn keep(&self, rules: KeptTopics) {
        self.any.store(!rules.is_empty(), Ordering::Release);
        *self.rules.write().unwrap_or_else(|e| e.into_inner()) = rules;
    }

    /// How `topic` is kept, if it is.
    pub fn kept(&self, topic: &str) -> Option<Keep> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        self.rules
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .of(topic)
    }

    /// Publishes to a kept topic: the next offset, the positioned frame stored, and both forms
    /// delivered (the positioned one to subscribers that asked), all under the history's lock.
    /// Returns how many subscribers it reached.
    pub fn publish(
        &self,
        keep: Keep,
        local: &LocalTopics,
        topic: &str,
        frame: &Utf8Bytes,
        exclude: Option<ClientId>,
    ) -> usize {
        let now = Instant::now();
        let mut rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        let ring = rings.entry(topic.into()).or_insert_with(|| Ring::new(keep));
        ring.expire(now);
        ring.offset += 1;
        let Some(with_position) = positioned(frame, topic, ring.offset, &ring.epoch) else {
            ring.offset -= 1;
            return local.deliver(topic, frame, exclude);
        };
        if ring.entries.len() == ring.keep.size {
            ring.entries.pop_front();
        }
        ring.entries
            .push_back((ring.offset, now, with_position.clone()));
        local.deliver_both(topic, frame, &with_position, exclude)
    }

    /// Subscribes `subscriber` (which then gets positioned frames) from `since`: under the
    /// history's lock, the announcement, then every publication after `since` when all of them
    /// are still kept (none otherwise), then the subscription itself.
    pub fn subscribe_from(
        &self,
        local: &LocalTopics,
        topic: &str,
        subscriber: Subscriber,
        since: &Position,
        announce: Announce,
    ) -> Subscribed {
        let now = Instant::now();
        let mut rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        let (recovered, frames, position) = match (self.kept(topic), rings.get_mut(topic)) {
            (Some(_), Some(ring)) => {
                ring.expire(now);
                let frames = if since.offset == 0 && since.epoch.is_empty() {
                    None
                } else {
                    ring.after(since)
                };
                (
                    frames.is_some(),
                    frames.unwrap_or_default(),
                    ring.position(),
                )
            }
            // Kept but never published to (or forgotten): an epoch now, so positions given from
            // here on stay valid.
            (Some(keep), None) => {
                let ring = Ring::new(keep);
                let position = ring.position();
                rings.insert(topic.into(), ring);
                (false, Vec::new(), position)
            }
            (None, _) => (false, Vec::new(), Position::default()),
        };
        let subscribed = Subscribed {
            recovered,
            position,
        };
        if let Some(first) = announce(&subscribed) {
            subscriber.deliver(&first);
        }
        for frame in &frames {
            subscriber.deliver(frame);
        }
        local.add(topic, subscriber);
        subscribed
    }

    /// Forgets topics whose every publication expired and that have no local subscriber.
    pub fn sweep(&self, local: &LocalTopics) {
        let now = Instant::now();
        let mut rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        rings.retain(|topic, ring| {
            ring.expire(now);
            !ring.entries.is_empty() || local.contains(topic)
        });
    }

    /// How many publications `topic` holds (tests, introspection).
    pub fn len(&self, topic: &str) -> usize {
        let rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        rings.get(topic).map_or(0, |r| r.entries.len())
    }

    /// How many topics hold a history.
    pub fn topics(&self) -> usize {
        self.rings.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_go_into_meta() {
        let plain = r#"{"type":"NEW_MESSAGE","payload":{"text":"hi"}}"#;
        assert_eq!(
            positioned(plain, "room:1", 42, "e1").unwrap().as_str(),
            r#"{"type":"NEW_MESSAGE","payload":{"text":"hi"},"meta":{"topic":"room:1","offset":42,"epoch":"e1"}}"#
        );
        let with_meta = r#"{"type":"X","payload":{},"meta":{"traceId":"t"}}"#;
        assert_eq!(
            positioned(with_meta, "t", 1, "e").unwrap().as_str(),
            r#"{"type":"X","payload":{},"meta":{"traceId":"t","topic":"t","offset":1,"epoch":"e"}}"#
        );
    }

    #[test]
    fn patterns() {
        let mut kept = KeptTopics::default();
        kept.add("room:*", Keep::last(3));
        kept.add("news", Keep::last(5));
        assert_eq!(kept.of("room:1").map(|k| k.size()), Some(3));
        assert_eq!(kept.of("news").map(|k| k.size()), Some(5));
        assert_eq!(kept.of("newsy"), None);
    }
}
