//! Pub/sub across instances on Redis (feature `redis`): [`RedisPubSub`] and [`Emitter`].
//!
//! One Redis channel per topic, named `prefix + topic`. An instance SUBSCRIBEs a channel while it
//! has local subscribers and UNSUBSCRIBEs when the last one leaves. A publication is delivered to
//! the publishing instance's own subscribers at once, during the `publish` call, and goes through
//! Redis to the other instances; each drops the echo of its own publications (they carry their
//! instance's id), so each subscriber gets a publication exactly once. Users, single connections
//! and broadcast are channels too (`prefix#user:<id>`, `prefix#client:<id>`, `prefix#all`).
//!
//! Local traffic never depends on Redis: while Redis is down or frozen, an instance keeps
//! delivering its own publications, accepting connections and joins (reconciled with Redis when
//! it is back), and a publish says within a bounded time that it could not reach the other
//! instances (`ok: false`, `UNAVAILABLE`, retryable).
//!
//! The connection is a `redis` `ConnectionManager` speaking RESP3: pushes arrive on the same
//! connection as commands and are delivered inline, in order; on a connection loss it reconnects
//! with backoff and resubscribes every channel it still needs.

use crate::error::{Error, ErrorCode, WsError};
use crate::metrics::{self, Started};
use crate::publisher::Publisher;
use crate::pubsub::{
    Announce, Capability, ClientId, Keep, KeptTopics, LocalTopics, Position, PresenceEntry,
    PresenceHook, PresenceHooks, PubSub, PublishResult, Subscribed, Subscriber,
    subscribe_unrecovered,
};
use futures_util::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, IntoConnectionInfo, ProtocolVersion, Value};
use std::collections::{HashMap, HashSet};
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Utf8Bytes;

pub(crate) mod conn;
mod directory;
mod kept;
mod options;
mod presence;
mod publish;
mod receive;

pub use options::{DirectSends, RedisOptions};

use conn::Conn;

use publish::{KeptJob, PublishJob, encode_envelope, envelope_head, publish_loop};

/// The default channel prefix.
pub const DEFAULT_PREFIX: &str = "ws-kit:";

/// How many publications may wait for Redis; one more fails at once (`UNAVAILABLE`).
const PUBLISH_QUEUE: usize = 8192;

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
    /// This instance: its publications carry it, and it drops their echo from Redis.
    instance: ClientId,
    prefix: String,
    local: Arc<LocalTopics>,
    conn: Conn,
    /// On a cluster: sharded channels, named by `conn::channel`.
    cluster: bool,
    /// Direct sends go through the directory (`directory.rs`), not a channel per connection.
    directory: bool,
    /// Directed topics this instance is listed under. Changed only by `sync_directory`, under
    /// the topic's stripe lock.
    listed: Mutex<HashSet<String>>,
    /// Directory changes, made in batches by `directory::writer`.
    directory_writes: mpsc::Sender<directory::Write>,
    /// Topics this instance has SUBSCRIBEd. Changed only by `sync_channel`, under the topic's stripe lock.
    subscribed: Mutex<HashSet<String>>,
    /// Serializes channel changes per topic (by hash), so joins and leaves of one topic see each
    /// other's SUBSCRIBE/UNSUBSCRIBE while other topics proceed in parallel.
    stripes: Vec<tokio::sync::Mutex<()>>,
    /// Publications in call order, sent by `publish_loop` as ordered pipelines. Bounded: while
    /// Redis is frozen a full queue fails new publishes at once.
    jobs: mpsc::Sender<PublishJob>,
    /// Member-set removals that failed (Redis was down); retried after reconnecting.
    pending_removals: Mutex<Vec<(String, String)>>,
    publish_timeout: Duration,
    join_timeout: Duration,
    connected: Arc<AtomicBool>,
    /// A join or leave gave up waiting for Redis while it still looked connected (slow or just
    /// frozen): the next healthy ping reconciles.
    out_of_step: AtomicBool,
    /// Kept topics: the options' rules, then the router's.
    kept: RwLock<KeptTopics>,
    options_kept: KeptTopics,
    /// Subscribers from a position waiting for their history.
    recovering: Arc<kept::Recovering>,
    /// Kept topics published to on this instance only (Redis down or failing): their history is
    /// dropped when Redis is back, so the next epoch tells every client it did not recover them.
    dirty: Arc<Mutex<HashSet<String>>>,
    read_script: redis::Script,
    /// Presence hooks, also run by the push handler for other instances' events.
    presence_hooks: Arc<PresenceHooks>,
    /// This instance's presence entries, written again after an outage.
    held: Mutex<HashMap<(String, ClientId), PresenceEntry>>,
    presence_lease: Duration,
    /// Whether this instance holds or held presence (its entries are written again after an
    /// outage).
    holds_presence: AtomicBool,
    /// The lease was written once (a missing lease after that means it was lost).
    leased: AtomicBool,
    /// The lease was found missing: the next reconciliation writes every entry again.
    lease_lost: AtomicBool,
    presence_scripts: [redis::Script; 2],
    /// The presence events channel (plain pub/sub).
    events: String,
}

const STRIPES: usize = 64;

/// The stripe lock of a topic.
fn stripe_of(topic: &str) -> usize {
    topic
        .bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
        % STRIPES
}

impl std::fmt::Debug for RedisPubSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPubSub")
            .field("prefix", &self.inner.prefix)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl RedisPubSub {
    /// Connects with the default options (prefix `ws-kit:`).
    pub async fn connect(url: impl Into<String>) -> Result<Self, Error> {
        Self::connect_with(RedisOptions::new(url)).await
    }

    /// Connects with options. A URL of several comma-separated nodes connects to a cluster.
    pub async fn connect_with(options: RedisOptions) -> Result<Self, Error> {
        let urls = conn::node_urls(&options.url);
        let cluster = options.cluster.unwrap_or(urls.len() > 1);
        let directory = options.direct == DirectSends::Directory;
        let local = Arc::new(LocalTopics::new());
        let connected = Arc::new(AtomicBool::new(true));
        let instance = uuid::Uuid::now_v7();
        let recovering = Arc::new(kept::Recovering::default());
        let presence_hooks = Arc::new(PresenceHooks::default());
        let events = receive::events_channel(&options.prefix);
        let direct_topic = directory::direct_topic(instance);
        let receiver = Arc::new(receive::Receiver {
            local: local.clone(),
            recovering: recovering.clone(),
            hooks: presence_hooks.clone(),
            prefix: options.prefix.clone(),
            instance,
            cluster,
            events: events.clone(),
            direct_topic: direct_topic.clone(),
            connected: connected.clone(),
        });
        let on_push = receiver.handler();
        let mut conn = if cluster {
            let client = redis::cluster::ClusterClientBuilder::new(urls)
                .use_protocol(ProtocolVersion::RESP3)
                .push_sender(on_push)
                .connection_timeout(Duration::from_secs(1))
                .response_timeout(options.publish_timeout)
                .retries(2)
                .max_retry_wait(2000)
                .build()
                .map_err(Error::Redis)?;
            Conn::Cluster(client.get_async_connection().await.map_err(Error::Redis)?)
        } else {
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
            let config = ConnectionManagerConfig::new()
                .set_push_sender(on_push)
                .set_automatic_resubscription()
                .set_connection_timeout(Some(Duration::from_secs(1)))
                .set_response_timeout(Some(options.publish_timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(2));
            Conn::Single(
                ConnectionManager::new_with_config(client, config)
                    .await
                    .map_err(Error::Redis)?,
            )
        };
        // Presence events (joins and leaves of every instance) for `Router::on_presence`:
        // subscribed now, before any router can register a hook, so no event published after
        // the engine exists is missed. Plain pub/sub, which a cluster copies to every node; the
        // reconnect resubscribes it. Then this instance's direct channel.
        conn.subscribe_broadcast(&events)
            .await
            .map_err(Error::Redis)?;
        if directory {
            conn.subscribe_channel(&conn::channel(&options.prefix, &direct_topic, cluster))
                .await
                .map_err(Error::Redis)?;
        }
        let (jobs, job_queue) = mpsc::channel(PUBLISH_QUEUE);
        let (directory_writes, directory_queue) = mpsc::channel(PUBLISH_QUEUE);
        if directory {
            tokio::spawn(directory::writer(
                directory_queue,
                conn.clone(),
                options.prefix.clone(),
                instance.to_string(),
            ));
        }
        let dirty: Arc<Mutex<HashSet<String>>> = Arc::default();
        let inner = Arc::new(Inner {
            instance,
            prefix: options.prefix,
            local: local.clone(),
            conn: conn.clone(),
            cluster,
            directory,
            listed: Mutex::default(),
            directory_writes,
            subscribed: Mutex::default(),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            jobs,
            pending_removals: Mutex::default(),
            publish_timeout: options.publish_timeout,
            join_timeout: options.join_timeout,
            connected,
            out_of_step: AtomicBool::new(false),
            kept: RwLock::new(options.kept.clone()),
            options_kept: options.kept,
            recovering,
            dirty: dirty.clone(),
            read_script: redis::Script::new(kept::READ_SCRIPT),
            presence_hooks,
            held: Mutex::default(),
            presence_lease: options.presence_lease,
            holds_presence: AtomicBool::new(false),
            leased: AtomicBool::new(false),
            lease_lost: AtomicBool::new(false),
            presence_scripts: [
                redis::Script::new(presence::JOIN_SCRIPT),
                redis::Script::new(presence::LEAVE_SCRIPT),
            ],
            events,
        });
        metrics::redis_connected(true);
        tokio::spawn(publish_loop(
            job_queue,
            publish::Target {
                conn,
                prefix: inner.prefix.clone(),
                instance: instance.to_string(),
            },
            options.publish_timeout,
            local,
            dirty,
        ));
        // Alive and watched from the start: directory entries and presence are cleaned up after
        // this instance by the others if it dies.
        inner.renew_lease().await;
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

    /// What the health task runs when Redis is back, at once (for `__bench::redis_connect_cost`).
    #[cfg(feature = "bench")]
    pub(crate) async fn reconcile_now(&self) {
        self.inner.reconcile().await;
    }
}

impl Inner {
    fn channel(&self, topic: &str) -> String {
        conn::channel(&self.prefix, topic, self.cluster)
    }

    fn is_directed(&self, topic: &str) -> bool {
        directory::is_directed(self.directory, topic)
    }

    fn members_key(&self, topic: &str) -> String {
        format!("{}members:{}", self.prefix, topic)
    }

    fn is_subscribed(&self, topic: &str) -> bool {
        self.subscribed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(topic)
    }

    /// Subscribes or unsubscribes the topic's channel so it matches whether there are local
    /// subscribers. Every join and leave of a topic goes through here under the topic's stripe
    /// lock: a join returns only once the channel is subscribed, even if another join started the
    /// SUBSCRIBE, and concurrent joins and leaves cannot leave the channel in the wrong state.
    async fn sync_channel(&self, topic: &str) -> Result<(), WsError> {
        let _guard = self.stripes[stripe_of(topic)].lock().await;
        let wanted = self.local.contains(topic) || self.recovering.wants(topic);
        let have = self.is_subscribed(topic);
        let mut conn = self.conn.clone();
        let result = if wanted && !have {
            conn.subscribe_channel(&self.channel(topic)).await
        } else if !wanted && have {
            conn.unsubscribe_channel(&self.channel(topic)).await
        } else {
            return Ok(());
        };
        match result {
            Ok(()) => {
                let mut subscribed = self.subscribed.lock().unwrap_or_else(|e| e.into_inner());
                if wanted {
                    subscribed.insert(topic.to_string());
                } else {
                    subscribed.remove(topic);
                }
                Ok(())
            }
            Err(e) => Err(self.unavailable(e)),
        }
    }

    /// After Redis comes back: channels and member sets to match the local subscribers again. A
    /// join during the outage took effect locally only (its channel is subscribed now); a leave
    /// may have left a channel that the reconnect resubscribed; member-set additions may have
    /// been lost.
    async fn reconcile(&self) {
        if self.cluster {
            self.resubscribe_all().await;
        }
        let wanted = self.local.topics();
        let stale: Vec<String> = {
            let subscribed = self.subscribed.lock().unwrap_or_else(|e| e.into_inner());
            subscribed
                .iter()
                .filter(|t| !self.local.contains(t))
                .cloned()
                .collect()
        };
        for topic in wanted
            .iter()
            .map(|t| &**t)
            .chain(stale.iter().map(String::as_str))
            .filter(|t| !self.is_directed(t))
        {
            let _ = self.sync_channel(topic).await;
        }
        self.reconcile_directory().await;
        let mut conn = self.conn.clone();
        for topic in wanted.iter().filter(|t| !t.starts_with('#')) {
            let members: Vec<String> = self
                .local
                .members(topic)
                .iter()
                .map(ToString::to_string)
                .collect();
            if !members.is_empty() {
                let _: Result<i64, _> = conn.sadd(self.members_key(topic), members).await;
            }
        }
        let dirty: Vec<String> = self
            .dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for topic in dirty {
            let keys = [
                kept::hash_key(&self.prefix, &topic),
                kept::stream_key(&self.prefix, &topic),
            ];
            if conn.del::<_, i64>(&keys[..]).await.is_err() {
                self.dirty
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(topic);
            }
        }
        self.reconcile_presence().await;
        let removals = std::mem::take(
            &mut *self
                .pending_removals
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        let mut conn = self.conn.clone();
        for (key, member) in removals {
            if conn.srem::<_, _, i64>(&key, &member).await.is_err() {
                self.pending_removals
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((key, member));
            }
        }
    }

    /// How `topic` is kept, if it is.
    fn kept(&self, topic: &str) -> Option<Keep> {
        self.kept
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .of(topic)
    }

    fn mark_dirty(&self, topic: &str) {
        self.dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(topic.to_string());
    }

    fn unavailable(&self, e: redis::RedisError) -> WsError {
        if self.connected.swap(false, Ordering::SeqCst) {
            metrics::redis_connected(false);
            tracing::warn!(error = %e, "redis unreachable");
        }
        unavailable("pub/sub backend unavailable")
    }
}

fn unavailable(message: &'static str) -> WsError {
    WsError::new(ErrorCode::Unavailable, message)
        .with_retryable(true)
        .with_retry_after_ms(
            ErrorCode::Unavailable
                .default_retry_after_ms()
                .unwrap_or(100),
        )
}

/// Pings Redis while the engine lives: notices a lost connection even when idle (which makes the
/// connection manager reconnect and resubscribe), logs state changes, and reconciles after a
/// recovery.
async fn health(inner: Weak<Inner>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let mut conn = inner.conn.clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        let ok = tokio::time::timeout(interval.max(Duration::from_millis(500)), ping)
            .await
            .is_ok_and(|r| r.is_ok());
        let was = inner.connected.swap(ok, Ordering::SeqCst);
        metrics::redis_connected(ok);
        // Reconciliation first: after an outage, channels and entries are put right before the
        // routine upkeep spends round trips on leases.
        match (was, ok) {
            (false, true) => {
                tracing::info!("redis pub/sub connection restored");
                inner.out_of_step.store(false, Ordering::SeqCst);
                inner.reconcile().await;
            }
            (true, true) if inner.out_of_step.swap(false, Ordering::SeqCst) => {
                inner.reconcile().await;
            }
            (true, false) => tracing::warn!("redis unreachable; retrying"),
            _ => {}
        }
        if ok {
            inner.upkeep().await;
        }
    }
}

impl Inner {
    /// Brings Redis in line with a join (`joined`) or a leave of `member`: the topic's channel
    /// (subscribed while there are local subscribers) and its member set. Waits at most the join
    /// timeout, and not at all while Redis is known to be down; what is left undone is put right
    /// when Redis is back (`reconcile`).
    async fn settle(&self, topic: &str, member: ClientId, joined: bool) {
        if !self.connected.load(Ordering::SeqCst) {
            if !joined && !topic.starts_with('#') {
                self.defer_removal(topic, member);
            }
            return;
        }
        let work = async {
            if self.is_directed(topic) {
                self.sync_directory(topic).await?;
            } else if joined != self.is_subscribed(topic) {
                self.sync_channel(topic).await?;
            }
            if !topic.starts_with('#') {
                let mut conn = self.conn.clone();
                let key = self.members_key(topic);
                let member = member.to_string();
                let done: redis::RedisResult<i64> = if joined {
                    conn.sadd(key, member).await
                } else {
                    conn.srem(key, member).await
                };
                done.map_err(|e| self.unavailable(e))?;
            }
            Ok::<(), WsError>(())
        };
        if !matches!(
            tokio::time::timeout(self.join_timeout, work).await,
            Ok(Ok(()))
        ) {
            tracing::debug!(
                topic,
                joined,
                "redis not in step; put right when it is back"
            );
            self.out_of_step.store(true, Ordering::SeqCst);
            if !joined && !topic.starts_with('#') {
                self.defer_removal(topic, member);
            }
        }
    }

    fn defer_removal(&self, topic: &str, member: ClientId) {
        self.pending_removals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((self.members_key(topic), member.to_string()));
    }
}

impl PubSub for RedisPubSub {
    /// Takes effect locally at once. The topic's channel is subscribed (and the member counted)
    /// before this returns when Redis answers within the join timeout; otherwise (Redis down or
    /// frozen) the join is local until Redis is back, when it is put right. Never fails for a
    /// Redis outage.
    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
        subscriber: Subscriber,
    ) -> BoxFuture<'a, Result<(), WsError>> {
        let id = subscriber.id();
        self.inner.local.add(topic, subscriber);
        Box::pin(async move {
            self.inner.settle(topic, id, true).await;
            Ok(())
        })
    }

    /// Never fails for a Redis outage: the leave takes effect locally at once (no more
    /// deliveries); the channel and member set follow within the join timeout, or when Redis is
    /// back.
    fn unsubscribe<'a>(
        &'a self,
        topic: &'a str,
        client: ClientId,
    ) -> BoxFuture<'a, Result<(), WsError>> {
        self.inner.local.remove(topic, client);
        self.inner.recovering.remove(topic, client);
        Box::pin(async move {
            self.inner.settle(topic, client, false).await;
            Ok(())
        })
    }

    /// Delivers to this instance's subscribers during the call, then hands the publication to
    /// Redis for the others. The result is `ok` once Redis took it; while Redis is down, frozen
    /// or behind, `ok: false` with a retryable `UNAVAILABLE` within the publish timeout (the local
    /// subscribers have it either way). At once when Redis is known to be down or the queue to it
    /// is full: then the other instances never get it. After a timeout the outcome is unknown: a
    /// frozen Redis that wakes up runs the PUBLISH it was sent, so other instances may still get
    /// the publication, once.
    fn publish(
        &self,
        topic: &str,
        frame: Utf8Bytes,
        exclude: Option<ClientId>,
    ) -> BoxFuture<'static, PublishResult> {
        let directed = self.inner.is_directed(topic);
        let keep = self.inner.kept(topic).filter(|_| !directed);
        let connected = self.inner.connected.load(Ordering::SeqCst);
        match keep {
            // A kept topic: the plain subscribers here now, the positioned ones with the echo,
            // which carries the position Redis gave.
            Some(_) if connected => {
                self.inner.local.deliver_plain(topic, &frame, exclude);
            }
            Some(_) => {
                self.inner.local.deliver(topic, &frame, exclude);
                self.inner.mark_dirty(topic);
            }
            None => {
                self.inner.local.deliver(topic, &frame, exclude);
            }
        }
        if !connected {
            return Box::pin(std::future::ready(PublishResult::failed(unavailable(
                "pub/sub backend unavailable; delivered on this instance only",
            ))));
        }
        // Queued now, at call time: handlers call this in the order their frames arrived, so the
        // publish loop sends publications in that order.
        let (done, result) = oneshot::channel();
        let job = match keep {
            None => PublishJob {
                channel: if directed {
                    String::new()
                } else {
                    self.inner.channel(topic)
                },
                payload: encode_envelope(self.inner.instance, &frame, exclude),
                kept: None,
                directed: directed.then(|| topic.to_string()),
                done,
                queued: Started::now(),
            },
            Some(keep) => PublishJob {
                channel: self.inner.channel(topic),
                payload: envelope_head(self.inner.instance, exclude).into_bytes(),
                kept: Some(KeptJob {
                    topic: topic.to_string(),
                    hash: kept::hash_key(&self.inner.prefix, topic),
                    stream: kept::stream_key(&self.inner.prefix, topic),
                    keep,
                    frame: frame.clone(),
                    exclude,
                }),
                directed: None,
                done,
                queued: Started::now(),
            },
        };
        if let Err(refused) = self.inner.jobs.try_send(job) {
            if let Some(k) = refused.into_inner().kept {
                self.inner
                    .local
                    .deliver_positioned(topic, &k.frame, exclude);
                self.inner.mark_dirty(topic);
            }
            return Box::pin(std::future::ready(PublishResult::failed(unavailable(
                "pub/sub backend behind; delivered on this instance only",
            ))));
        }
        let timeout = self.inner.publish_timeout + Duration::from_millis(100);
        let inner = self.inner.clone();
        Box::pin(async move {
            match tokio::time::timeout(timeout, result).await {
                Ok(Ok(Ok(()))) => PublishResult {
                    ok: true,
                    capability: Capability::Unknown,
                    matched: None,
                    error: None,
                },
                Ok(Ok(Err(e))) => PublishResult::failed(inner.unavailable(e)),
                Ok(Err(_)) | Err(_) => {
                    inner.connected.store(false, Ordering::SeqCst);
                    metrics::redis_connected(false);
                    PublishResult::failed(unavailable("pub/sub backend timed out"))
                }
            }
        })
    }

    /// Counts the topic's members across instances (a Redis set per topic). An estimate: an
    /// instance that crashes leaves its members behind until they are removed by hand. `None`
    /// while Redis is unreachable.
    fn local_members(&self, topic: &str) -> Option<Vec<ClientId>> {
        Some(self.inner.local.members(topic))
    }

    /// Takes effect here at once and in Redis within the join timeout; while Redis is down the
    /// entry is written (without a join event) when it is back. Never fails for an outage.
    fn presence_join<'a>(
        &'a self,
        topic: &'a str,
        entry: PresenceEntry,
    ) -> BoxFuture<'a, Result<(), WsError>> {
        Box::pin(async move {
            let inner = &self.inner;
            inner.holds_presence.store(true, Ordering::SeqCst);
            inner
                .held
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((topic.to_string(), entry.client_id), entry.clone());
            if inner.connected.load(Ordering::SeqCst) {
                let write = inner.write_presence(topic, &entry, true);
                if !matches!(
                    tokio::time::timeout(inner.join_timeout, write).await,
                    Ok(Ok(()))
                ) {
                    inner.out_of_step.store(true, Ordering::SeqCst);
                }
            }
            Ok(())
        })
    }

    fn presence_leave<'a>(&'a self, topic: &'a str, client: ClientId) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let inner = &self.inner;
            inner
                .held
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&(topic.to_string(), client));
            if inner.connected.load(Ordering::SeqCst) {
                let client = client.to_string();
                let erase = inner.erase_presence(topic, &client);
                if !matches!(
                    tokio::time::timeout(inner.join_timeout, erase).await,
                    Ok(Ok(()))
                ) {
                    inner.out_of_step.store(true, Ordering::SeqCst);
                }
            }
        })
    }

    /// Every instance's entries, but those of instances whose lease ran out (even before they
    /// are cleaned up). `UNAVAILABLE` while Redis is down.
    fn presence<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PresenceEntry>, WsError>> {
        Box::pin(async move {
            let inner = &self.inner;
            if !inner.connected.load(Ordering::SeqCst) {
                return Err(unavailable("pub/sub backend unavailable"));
            }
            tokio::time::timeout(inner.publish_timeout, inner.list_presence(topic))
                .await
                .unwrap_or_else(|_| Err(unavailable("pub/sub backend timed out")))
        })
    }

    /// The events channel is subscribed when the engine connects, so a hook sees every event
    /// published after the engine was built.
    fn on_presence(&self, hook: PresenceHook) {
        self.inner.presence_hooks.add(hook);
    }

    fn keep(&self, topics: KeptTopics) {
        let mut rules = self.inner.options_kept.clone();
        rules.extend(topics);
        *self.inner.kept.write().unwrap_or_else(|e| e.into_inner()) = rules;
    }

    /// Recovers from the topic's stream (see `kept.rs`): the subscriber waits, buffering live
    /// publications, while its channel is subscribed and the history read; then the
    /// announcement, the history and the buffered frames after the position. While Redis is
    /// down or slower than the join timeout: `recovered: false` at position zero, and the
    /// subscriber is live at once (the join never waits longer than a plain one).
    fn subscribe_from<'a>(
        &'a self,
        topic: &'a str,
        subscriber: Subscriber,
        since: Position,
        announce: Announce,
    ) -> BoxFuture<'a, Result<Subscribed, WsError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let id = subscriber.id();
            let keep = inner.kept(topic);
            let Some(keep) = keep.filter(|_| inner.connected.load(Ordering::SeqCst)) else {
                return subscribe_unrecovered(self, topic, subscriber, announce).await;
            };
            inner.recovering.start(topic, subscriber);
            let read = async {
                inner.sync_channel(topic).await?;
                let mut conn = inner.conn.clone();
                let value: Value = inner
                    .read_script
                    .key(kept::hash_key(&inner.prefix, topic))
                    .key(kept::stream_key(&inner.prefix, topic))
                    .arg(since.offset)
                    .arg(&since.epoch)
                    .arg(keep.size())
                    .arg(keep.ttl().as_millis().max(1) as u64)
                    .arg(crate::pubsub::new_epoch())
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| inner.unavailable(e))?;
                kept::Read::parse(value).ok_or_else(|| unavailable("unexpected history reply"))
            };
            let subscribed = match tokio::time::timeout(inner.join_timeout, read).await {
                Ok(Ok(read)) => {
                    let subscribed = Subscribed {
                        recovered: read.recovered,
                        position: read.position,
                    };
                    let first = announce(&subscribed);
                    let history: &[Utf8Bytes] = if read.recovered { &read.frames } else { &[] };
                    inner
                        .recovering
                        .finish(&inner.local, topic, id, &subscribed, first, history);
                    subscribed
                }
                _ => {
                    inner.out_of_step.store(true, Ordering::SeqCst);
                    let first = announce(&Subscribed::not_recovered());
                    inner.recovering.abandon(&inner.local, topic, id, first);
                    Subscribed::not_recovered()
                }
            };
            inner.settle(topic, id, true).await;
            Ok(subscribed)
        })
    }

    fn subscriber_count<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Option<usize>> {
        let mut conn = self.inner.conn.clone();
        let key = self.inner.members_key(topic);
        let (connected, timeout) = (
            self.inner.connected.load(Ordering::SeqCst),
            self.inner.publish_timeout,
        );
        Box::pin(async move {
            if !connected {
                return None;
            }
            let count = conn.scard::<_, usize>(key);
            tokio::time::timeout(timeout, count).await.ok()?.ok()
        })
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
#[derive(Clone, Debug)]
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
