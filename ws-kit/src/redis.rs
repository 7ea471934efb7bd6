//! Pub/sub across instances on Redis (feature `redis`): [`RedisPubSub`] and [`Emitter`].
//!
//! One Redis channel per topic, named `prefix + topic`. An instance SUBSCRIBEs a channel while it
//! has local subscribers and UNSUBSCRIBEs when the last one leaves. A publication goes to Redis
//! only; every instance (the publisher's included) delivers it to its own subscribers when Redis
//! pushes it back, so each subscriber gets it exactly once. Users, single connections and
//! broadcast are channels too (`prefix#user:<id>`, `prefix#client:<id>`, `prefix#all`).
//!
//! The connection is a `redis` `ConnectionManager` speaking RESP3: pushes arrive on the same
//! connection as commands and are delivered inline, in order; on a connection loss it reconnects
//! with backoff and resubscribes every channel it still needs.

use crate::error::{Error, ErrorCode, WsError};
use crate::pubsub::{Capability, ClientId, LocalTopics, PubSub, PublishResult, Subscriber};
use crate::router::Publisher;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value};
use std::collections::HashSet;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// The default channel prefix.
pub const DEFAULT_PREFIX: &str = "ws-kit:";

/// A publication on the wire between instances: the excluded client id (or nothing), a newline,
/// then the frame exactly as clients receive it.
fn encode_envelope(frame: &Utf8Bytes, exclude: Option<ClientId>) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame.len() + 37);
    if let Some(id) = exclude {
        out.extend_from_slice(
            id.hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer())
                .as_bytes(),
        );
    }
    out.push(b'\n');
    out.extend_from_slice(frame.as_bytes());
    out
}

fn decode_envelope(payload: Vec<u8>) -> Option<(Option<ClientId>, Utf8Bytes)> {
    let newline = payload.iter().position(|&b| b == b'\n')?;
    let exclude = match newline {
        0 => None,
        _ => Some(
            std::str::from_utf8(&payload[..newline])
                .ok()?
                .parse()
                .ok()?,
        ),
    };
    let frame = Utf8Bytes::try_from(Bytes::from(payload).slice(newline + 1..)).ok()?;
    Some((exclude, frame))
}

/// Options of a [`RedisPubSub`] (or [`Emitter`]) before it connects.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    url: String,
    prefix: String,
    publish_timeout: Duration,
    health_interval: Duration,
}

impl RedisOptions {
    /// Options for `url` (`redis://127.0.0.1:6379`), prefix `ws-kit:`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisOptions {
            url: url.into(),
            prefix: DEFAULT_PREFIX.to_string(),
            publish_timeout: Duration::from_secs(2),
            health_interval: Duration::from_secs(1),
        }
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

/// The Redis pub/sub engine: `Router::new().pubsub(RedisPubSub::connect(url).await?)`.
///
/// ```no_run
/// # async fn run() -> Result<(), ws_kit::Error> {
/// use ws_kit::redis::{RedisOptions, RedisPubSub};
/// let engine = RedisOptions::new("redis://127.0.0.1:6379").prefix("chat:").connect().await?;
/// let router = ws_kit::Router::<()>::new().pubsub(engine);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisPubSub {
    inner: Arc<Inner>,
}

struct Inner {
    prefix: String,
    local: Arc<LocalTopics>,
    conn: ConnectionManager,
    /// Topics this instance has SUBSCRIBEd; changed only under this lock, against `local`.
    subscribed: tokio::sync::Mutex<HashSet<String>>,
    publish_timeout: Duration,
    connected: Arc<AtomicBool>,
}

impl RedisPubSub {
    /// Connects with the default options (prefix `ws-kit:`).
    pub async fn connect(url: impl Into<String>) -> Result<Self, Error> {
        Self::connect_with(RedisOptions::new(url)).await
    }

    /// Connects with options.
    pub async fn connect_with(options: RedisOptions) -> Result<Self, Error> {
        let info = options
            .url
            .as_str()
            .into_connection_info()
            .map_err(Error::Redis)?;
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client =
            redis::Client::open(info.set_redis_settings(settings)).map_err(Error::Redis)?;

        let local = Arc::new(LocalTopics::new());
        let connected = Arc::new(AtomicBool::new(true));
        let push_local = local.clone();
        let push_connected = connected.clone();
        let prefix = options.prefix.clone();
        let on_push = move |push: PushInfo| -> Result<(), ()> {
            match push.kind {
                PushKind::Message => deliver(&push_local, &prefix, push.data),
                PushKind::Disconnection if push_connected.swap(false, Ordering::SeqCst) => {
                    tracing::warn!("redis pub/sub connection lost; reconnecting");
                }
                _ => {}
            }
            Ok(())
        };
        let config = ConnectionManagerConfig::new()
            .set_push_sender(on_push)
            .set_automatic_resubscription()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(options.publish_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(Error::Redis)?;
        let inner = Arc::new(Inner {
            prefix: options.prefix,
            local,
            conn,
            subscribed: tokio::sync::Mutex::default(),
            publish_timeout: options.publish_timeout,
            connected,
        });
        tokio::spawn(health(Arc::downgrade(&inner), options.health_interval));
        Ok(RedisPubSub { inner })
    }

    /// Whether the last contact with Redis succeeded.
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::SeqCst)
    }

    /// The channel prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    fn channel(&self, topic: &str) -> String {
        format!("{}{}", self.inner.prefix, topic)
    }

    fn members_key(&self, topic: &str) -> String {
        format!("{}members:{}", self.inner.prefix, topic)
    }

    /// Subscribes or unsubscribes the topic's channel so it matches whether there are local
    /// subscribers. Decisions are made under one lock, so concurrent joins and leaves of one
    /// topic cannot leave the channel in the wrong state.
    async fn sync_channel(&self, topic: &str) -> Result<(), WsError> {
        let mut subscribed = self.inner.subscribed.lock().await;
        let wanted = self.inner.local.contains(topic);
        let mut conn = self.inner.conn.clone();
        let result = if wanted && !subscribed.contains(topic) {
            conn.subscribe(self.channel(topic)).await.map(|()| {
                subscribed.insert(topic.to_string());
            })
        } else if !wanted && subscribed.contains(topic) {
            conn.unsubscribe(self.channel(topic)).await.map(|()| {
                subscribed.remove(topic);
            })
        } else {
            Ok(())
        };
        result.map_err(|e| self.unavailable(e))
    }

    fn unavailable(&self, e: redis::RedisError) -> WsError {
        if self.inner.connected.swap(false, Ordering::SeqCst) {
            tracing::warn!(error = %e, "redis unreachable");
        }
        WsError::new(ErrorCode::Unavailable, "pub/sub backend unavailable")
            .with_retryable(true)
            .with_retry_after_ms(
                ErrorCode::Unavailable
                    .default_retry_after_ms()
                    .unwrap_or(100),
            )
    }
}

/// Delivers one pushed message to this instance's subscribers.
fn deliver(local: &LocalTopics, prefix: &str, data: Vec<Value>) {
    let mut data = data.into_iter();
    let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
        (data.next(), data.next())
    else {
        return;
    };
    let Some(topic) = std::str::from_utf8(&channel)
        .ok()
        .and_then(|c| c.strip_prefix(prefix))
    else {
        return;
    };
    match decode_envelope(payload) {
        Some((exclude, frame)) => {
            local.deliver(topic, &frame, exclude);
        }
        None => tracing::warn!(topic, "dropped a malformed publication from redis"),
    }
}

/// Pings Redis while the engine lives: notices a lost connection even when idle (which makes the
/// connection manager reconnect and resubscribe), and logs state changes.
async fn health(inner: Weak<Inner>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let mut conn = inner.conn.clone();
        let ok = tokio::time::timeout(
            interval.max(Duration::from_millis(500)),
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        let was = inner.connected.swap(ok, Ordering::SeqCst);
        match (was, ok) {
            (false, true) => tracing::info!("redis pub/sub connection restored"),
            (true, false) => tracing::warn!("redis unreachable; retrying"),
            _ => {}
        }
    }
}

impl PubSub for RedisPubSub {
    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
        subscriber: Subscriber,
    ) -> BoxFuture<'a, Result<(), WsError>> {
        let id = subscriber.id();
        let first = self.inner.local.add(topic, subscriber);
        Box::pin(async move {
            let synced = if first {
                self.sync_channel(topic).await
            } else {
                Ok(())
            };
            if let Err(e) = synced {
                self.inner.local.remove(topic, id);
                return Err(e);
            }
            if !topic.starts_with('#') {
                let mut conn = self.inner.conn.clone();
                let _: Result<i64, _> = conn.sadd(self.members_key(topic), id.to_string()).await;
            }
            Ok(())
        })
    }

    fn unsubscribe<'a>(
        &'a self,
        topic: &'a str,
        client: ClientId,
    ) -> BoxFuture<'a, Result<(), WsError>> {
        let last = self.inner.local.remove(topic, client);
        Box::pin(async move {
            if !topic.starts_with('#') {
                let mut conn = self.inner.conn.clone();
                let _: Result<i64, _> =
                    conn.srem(self.members_key(topic), client.to_string()).await;
            }
            if last {
                self.sync_channel(topic).await
            } else {
                Ok(())
            }
        })
    }

    fn publish<'a>(
        &'a self,
        topic: &'a str,
        frame: Utf8Bytes,
        exclude: Option<ClientId>,
    ) -> BoxFuture<'a, PublishResult> {
        let mut conn = self.inner.conn.clone();
        let payload = encode_envelope(&frame, exclude);
        let channel = self.channel(topic);
        // The first poll of this future hands the command to the connection's queue; handlers
        // poll it before the next frame is dispatched, so publications keep their order.
        Box::pin(async move {
            let sent = tokio::time::timeout(
                self.inner.publish_timeout,
                conn.publish::<_, _, i64>(channel, payload),
            );
            match sent.await {
                Ok(Ok(_instances)) => {
                    self.inner.connected.store(true, Ordering::SeqCst);
                    PublishResult {
                        ok: true,
                        capability: Capability::Unknown,
                        matched: None,
                        error: None,
                    }
                }
                Ok(Err(e)) => PublishResult::failed(self.unavailable(e)),
                Err(_elapsed) => {
                    self.inner.connected.store(false, Ordering::SeqCst);
                    PublishResult::failed(
                        WsError::new(ErrorCode::Unavailable, "pub/sub backend timed out")
                            .with_retryable(true),
                    )
                }
            }
        })
    }

    /// Counts the topic's members across instances (a Redis set per topic). An estimate: an
    /// instance that crashes leaves its members behind until they are removed by hand.
    fn subscriber_count<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Option<usize>> {
        let mut conn = self.inner.conn.clone();
        let key = self.members_key(topic);
        Box::pin(async move { conn.scard::<_, usize>(key).await.ok() })
    }
}

/// Publishes to topics, users, clients and broadcast from a process that serves no sockets
/// (a worker, a cron job), with the same frames as the servers.
///
/// ```no_run
/// # #[derive(ws_kit::Message)] struct Notice { text: String }
/// # async fn run() -> Result<(), ws_kit::Error> {
/// let emitter = ws_kit::redis::Emitter::connect("redis://127.0.0.1:6379").await?;
/// emitter.publish("room:1", &Notice { text: "maintenance at noon".into() }).await;
/// emitter.send_to_user("u42", &Notice { text: "your export is ready".into() }).await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Emitter {
    publisher: Publisher,
}

impl Emitter {
    /// Connects with the default prefix.
    pub async fn connect(url: impl Into<String>) -> Result<Self, Error> {
        Self::connect_with(RedisOptions::new(url)).await
    }

    /// Connects with options (use the servers' prefix).
    pub async fn connect_with(options: RedisOptions) -> Result<Self, Error> {
        let engine = RedisPubSub::connect_with(options).await?;
        Ok(Emitter {
            publisher: Publisher::new(Arc::new(engine)),
        })
    }
}

impl Deref for Emitter {
    type Target = Publisher;
    fn deref(&self) -> &Publisher {
        &self.publisher
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trip() {
        let frame = Utf8Bytes::from_static("{\"type\":\"X\",\"payload\":{\"a\":\"é\"}}");
        let id = uuid::Uuid::now_v7();
        assert_eq!(
            decode_envelope(encode_envelope(&frame, Some(id))),
            Some((Some(id), frame.clone()))
        );
        assert_eq!(
            decode_envelope(encode_envelope(&frame, None)),
            Some((None, frame))
        );
        assert_eq!(decode_envelope(b"no newline".to_vec()), None);
        assert_eq!(decode_envelope(b"not-a-uuid\n{}".to_vec()), None);
    }
}
