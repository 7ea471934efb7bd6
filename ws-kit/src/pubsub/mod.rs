//! Pub/sub for engine authors: the [`PubSub`] trait, a process's own subscribers
//! ([`LocalTopics`], [`Subscriber`]), the in-memory engine, topic names and publish results
//! (docs/protocol.md section 8). Applications publish through [`Connection`](crate::Connection) and
//! [`Publisher`](crate::Publisher) and pick an engine with [`Router::pubsub`](crate::Router::pubsub).

mod history;
mod local;
mod memory;
mod presence;

pub use history::{
    Announce, History, Keep, KeptTopics, Position, Subscribed, new_epoch, positioned,
};
pub use local::{LocalTopics, Subscriber};
pub use memory::MemoryPubSub;
pub use presence::{
    PresenceEntry, PresenceEvent, PresenceHook, PresenceHooks, PresenceStats, Presences,
};

use crate::error::{ErrorCode, MAX_QUOTED, WsError, clip};
use futures_util::future::BoxFuture;
use serde::Serialize;
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
        .with_details(serde_json::json!({ "topic": clip(topic, MAX_QUOTED) })))
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

    /// The error of a failed publish, for `?` in a handler:
    /// `ctx.publish(topic, &msg).await.into_result()?`.
    pub fn into_result(self) -> Result<PublishResult, WsError> {
        match (self.ok, self.error) {
            (true, _) => Ok(PublishResult {
                error: None,
                ..self
            }),
            (false, error) => Err(error
                .unwrap_or_else(|| WsError::unavailable("publish failed").with_default_retry())),
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
    /// Which topics keep their last publications (docs/protocol.md 8a), from
    /// [`Router::keep`](crate::Router::keep), given when the router is built. The default: the
    /// engine keeps nothing, and every subscribe from a position reports `recovered: false`.
    fn keep(&self, topics: KeptTopics) {
        let _ = topics;
    }

    /// Adds a subscriber from a position (`subscriber` takes positioned frames): `announce`'s
    /// frame first, then every publication after `since` if all of them are kept (none
    /// otherwise), then the live ones, with no gap and no duplicate between the two.
    ///
    /// The default, for engines without history: the announcement, then a plain subscribe;
    /// `recovered: false` at position zero.
    fn subscribe_from<'a>(
        &'a self,
        topic: &'a str,
        subscriber: Subscriber,
        since: Position,
        announce: Announce,
    ) -> BoxFuture<'a, Result<Subscribed, WsError>> {
        let _ = since;
        Box::pin(subscribe_unrecovered(self, topic, subscriber, announce))
    }

    /// Records a subscription's presence (docs/protocol.md 8b), replacing the connection's
    /// earlier entry in the topic; the hooks of every instance see a join. The default: the
    /// engine has no presence (`UNIMPLEMENTED`).
    fn presence_join<'a>(
        &'a self,
        topic: &'a str,
        entry: PresenceEntry,
    ) -> BoxFuture<'a, Result<(), WsError>> {
        let _ = (topic, entry);
        Box::pin(std::future::ready(Err(WsError::new(
            ErrorCode::Unimplemented,
            "this pub/sub engine has no presence",
        ))))
    }

    /// Removes a connection's presence from a topic; the hooks of every instance see a leave.
    fn presence_leave<'a>(&'a self, topic: &'a str, client: ClientId) -> BoxFuture<'a, ()> {
        let _ = (topic, client);
        Box::pin(std::future::ready(()))
    }

    /// A topic's presence on every instance, sorted by client id.
    fn presence<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PresenceEntry>, WsError>> {
        let _ = topic;
        Box::pin(std::future::ready(Err(WsError::new(
            ErrorCode::Unimplemented,
            "this pub/sub engine has no presence",
        ))))
    }

    /// Runs `hook` on every join and leave of any topic, on this instance, whichever instance
    /// they happened on (`Router::on_presence`).
    fn on_presence(&self, hook: PresenceHook) {
        let _ = hook;
    }

    /// This process's subscribers of a topic, when the engine keeps them (both of ws-kit's do):
    /// the introspection views ([`Clients`](crate::Clients)) read them instead of scanning every
    /// connection. `None` (the default): the engine does not say.
    fn local_members(&self, topic: &str) -> Option<Vec<ClientId>> {
        let _ = topic;
        None
    }
}

/// A subscribe from a position that recovers nothing (no history here, or none reachable): the
/// announcement of `recovered: false` at position zero, then a plain subscribe. What engines
/// without history do, and what the Redis engine does while Redis is down.
pub async fn subscribe_unrecovered<E: PubSub + ?Sized>(
    engine: &E,
    topic: &str,
    subscriber: Subscriber,
    announce: Announce,
) -> Result<Subscribed, WsError> {
    let subscribed = Subscribed::not_recovered();
    if let Some(first) = announce(&subscribed) {
        subscriber.deliver(&first);
    }
    engine.subscribe(topic, subscriber).await?;
    Ok(subscribed)
}

/// Names of the framework's own topics. They start with `#`, which user topics cannot contain.
pub(crate) mod internal {
    use super::ClientId;

    /// Every connection.
    pub(crate) const ALL: &str = "#all";

    /// One connection.
    pub(crate) fn client(id: ClientId) -> String {
        format!("#client:{id}")
    }

    /// Every session of a user.
    pub(crate) fn user(id: &str) -> String {
        format!("#user:{id}")
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
