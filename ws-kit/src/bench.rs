//! (feature `bench`) Hidden entry points for the criterion benchmarks in `benches/`: the real
//! per-message path, without sockets. Not a public API: it may change or go away at any time.
//!
//! [`Conn::dispatch`] calls the function the read loop calls for each text frame
//! (`read_loop::Reader::dispatch`): envelope, reserved types, routing, decode, validation, the
//! handler run to its first wait, and whatever it queues on the connection's outbound queue.
//! Call it inside a Tokio runtime context (`Runtime::enter`): an RPC builds its deadline timer.

use crate::codec::ReplyFrame;
use crate::connection::Connection;
use crate::connection::shared::Limits;
use crate::error::Error;
use crate::message::{Message, Meta};
use crate::outbound::{Outbound, OverflowPolicy};
use crate::publisher::Publisher;
use crate::pubsub::{MemoryPubSub, PubSub, PublishResult, Subscriber};
use crate::read_loop::{LoopConfig, Reader};
use crate::router::Router;
use futures_util::FutureExt;
use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};

/// One connection of a built router, fed frames directly.
pub struct Conn<D: Send + Sync + 'static = ()> {
    conn: Connection<D>,
    reader: Reader<D>,
}

impl<D: Send + Sync + 'static> fmt::Debug for Conn<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

impl<D: Send + Sync + 'static> Conn<D> {
    /// Builds the router (default `ServeOptions` limits) and one connection with `data`.
    /// The connection joins no topics and runs no `on_open` hooks.
    pub fn new<S: Send + Sync + 'static>(router: Router<D, S>, data: D) -> Result<Self, Error> {
        let app = router.build(Limits::default())?;
        let conn = Connection::new(uuid::Uuid::now_v7(), None, data, app.shared.clone(), None);
        let config = LoopConfig {
            max_payload_bytes: 1024 * 1024,
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(90),
            close_grace: Duration::from_secs(1),
        };
        Ok(Conn {
            reader: Reader::new(conn.clone(), app, Arc::new(config)),
            conn,
        })
    }

    /// Handles one text frame exactly as the read loop does.
    pub fn dispatch(&mut self, text: &str) {
        self.reader.dispatch(text, SystemTime::now());
    }

    /// Takes every frame queued on the connection's outbound queue (what the writer would send).
    pub fn drain(&self) -> VecDeque<WsMessage> {
        self.conn.inner.out.take_all()
    }

    /// Handlers that waited and became tasks (0 when every handler ran to completion inline).
    pub fn pending_tasks(&self) -> usize {
        self.reader.tasks.len()
    }

    /// The connection, as handlers see it.
    pub fn connection(&self) -> &Connection<D> {
        &self.conn
    }
}

/// The in-memory engine with `n` subscribers of one topic, each with its own outbound queue.
pub struct Fanout {
    engine: Arc<dyn PubSub>,
    publisher: Publisher,
    queues: Vec<Arc<Outbound>>,
}

impl fmt::Debug for Fanout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fanout")
            .field("subscribers", &self.queues.len())
            .finish_non_exhaustive()
    }
}

impl Fanout {
    /// `n` subscribers of `topic`, each with an outbound queue of `max_queued_bytes` bytes.
    pub fn new(topic: &str, n: usize, max_queued_bytes: usize) -> Self {
        Self::on(
            Arc::new(MemoryPubSub::new()),
            topic,
            n,
            max_queued_bytes,
            false,
        )
        .now_or_never()
        .expect("the in-memory engine is ready at once")
    }

    /// Like [`new`](Self::new), the topic kept (`keep`) by the in-memory engine; `positioned`:
    /// the subscribers subscribed from a position (they take the positioned frames).
    pub fn kept(
        topic: &str,
        n: usize,
        max_queued_bytes: usize,
        keep: crate::pubsub::Keep,
        positioned: bool,
    ) -> Self {
        let engine = MemoryPubSub::new();
        let mut rules = crate::pubsub::KeptTopics::default();
        rules.add(topic, keep);
        engine.keep(rules);
        Self::on(Arc::new(engine), topic, n, max_queued_bytes, positioned)
            .now_or_never()
            .expect("the in-memory engine is ready at once")
    }

    /// `n` subscribers of `topic` on `engine` (whose kept topics are already set).
    pub async fn on(
        engine: Arc<dyn PubSub>,
        topic: &str,
        n: usize,
        max_queued_bytes: usize,
        positioned: bool,
    ) -> Self {
        let queues: Vec<Arc<Outbound>> = (0..n)
            .map(|_| Arc::new(Outbound::new(max_queued_bytes, OverflowPolicy::Close)))
            .collect();
        for out in &queues {
            let subscriber = Subscriber::new(uuid::Uuid::now_v7(), out.clone());
            if positioned {
                let since = crate::pubsub::Position::default();
                engine
                    .subscribe_from(
                        topic,
                        subscriber.with_positions(),
                        since,
                        Box::new(|_| None),
                    )
                    .await
                    .expect("subscribe");
            } else {
                engine
                    .subscribe(topic, subscriber)
                    .await
                    .expect("subscribe");
            }
        }
        Fanout {
            publisher: Publisher::new(engine.clone()),
            engine,
            queues,
        }
    }

    /// Publishes and waits for the engine's answer (Redis: its reply).
    pub async fn publish_async<M: Message>(&self, topic: &str, msg: &M) -> PublishResult {
        self.publisher.publish(topic, msg).await
    }

    /// A new subscriber of `topic` from `since`, as a rejoin does: returns what the subscribe
    /// reported and how many frames it queued (the recovered ones).
    pub async fn recover(
        &self,
        topic: &str,
        since: crate::pubsub::Position,
    ) -> (crate::pubsub::Subscribed, usize) {
        let out = Arc::new(Outbound::new(64 * 1024 * 1024, OverflowPolicy::Close));
        let id = uuid::Uuid::now_v7();
        let subscriber = Subscriber::new(id, out.clone()).with_positions();
        let subscribed = self
            .engine
            .subscribe_from(topic, subscriber, since, Box::new(|_| None))
            .await
            .expect("subscribe");
        let queued = out.take_all().len();
        let _ = self.engine.unsubscribe(topic, id).await;
        (subscribed, queued)
    }

    /// Publishes as `Publisher::publish` does: topic check, one encode, delivery to every queue.
    pub fn publish<M: Message>(&self, topic: &str, msg: &M) -> PublishResult {
        self.publisher
            .publish(topic, msg)
            .now_or_never()
            .expect("the in-memory engine is ready at once")
    }

    /// Empties every subscriber's queue; returns how many frames were queued.
    pub fn drain(&self) -> usize {
        self.queues.iter().map(|q| q.take_all().len()).sum()
    }
}

/// Encodes a reply frame as a request's task does (`{"type","meta":{"correlationId"},"payload"}`).
pub fn encode_reply<M: Message>(response: &M, correlation_id: &str) -> Utf8Bytes {
    match response.reply_frame(Some(correlation_id)) {
        Some(Ok(frame)) => frame,
        _ => panic!("the reply encodes"),
    }
}

/// A decoded message with its standard meta.
pub type Decoded<M> = (M, Meta);

/// How the one-pass decoder and the full path read `text` as message `M` (with its standard
/// meta), each `None` where it does not accept the frame. The fast path's promise: whenever it
/// accepts, the full path accepts alike. The fuzzer checks it on any input.
pub fn decode_both<M: Message>(text: &str) -> (Option<Decoded<M>>, Option<Decoded<M>>) {
    // The router reads the tag first (`peek_type`) and runs the one-pass decoder only for frames
    // of this type.
    let fast = (crate::wire::peek_type(text) == Some(M::TYPE))
        .then(|| crate::wire::decode_direct::<M>(text))
        .flatten();
    let full = crate::wire::parse_envelope(text).ok().and_then(|env| {
        if !env.issues.is_empty() || env.ty != M::TYPE {
            return None;
        }
        let message = M::decode(env.payload, &env.meta_extra).ok()?;
        Some((message, env.meta))
    });
    (fast, full)
}

/// What a connection costs the Redis engine in Redis work: opening `n` connections (each joins
/// its `#client:<id>` topic, as a connection does when it opens), then the engine's Redis
/// connection being cut (`CLIENT KILL` of every subscribed client) and put back.
#[cfg(feature = "redis")]
#[derive(Debug, Clone, Copy)]
pub struct RedisConnectCost {
    /// Until every one of the `n` joins returned (64 at a time, as connections open).
    pub connect: Duration,
    /// From the cut until the engine's channels are all subscribed again.
    pub resubscribe: Duration,
    /// The reconciliation the engine runs once Redis is back (directory entries written again).
    pub reconcile: Duration,
    /// Channels the engine held subscribed.
    pub channels: usize,
    /// Redis `used_memory` growth over the `n` joins, in bytes.
    pub redis_bytes: i64,
}

/// Measures [`RedisConnectCost`] for `n` connections with `direct` (see `DirectSends`).
#[cfg(feature = "redis")]
pub async fn redis_connect_cost(
    url: &str,
    n: usize,
    direct: crate::redis::DirectSends,
) -> Result<RedisConnectCost, Error> {
    use futures_util::StreamExt;
    let prefix = format!("bench:{}:", uuid::Uuid::now_v7().simple());
    let engine = crate::redis::RedisOptions::new(url)
        .prefix(&prefix)
        .direct_sends(direct)
        .join_timeout(Duration::from_secs(30))
        .connect()
        .await?;
    let mut admin = redis::Client::open(url)
        .map_err(Error::Redis)?
        .get_multiplexed_async_connection()
        .await
        .map_err(Error::Redis)?;
    let used = |info: String| -> i64 {
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let info = |admin: &mut redis::aio::MultiplexedConnection| {
        let mut admin = admin.clone();
        async move {
            redis::cmd("INFO")
                .arg("memory")
                .query_async::<String>(&mut admin)
                .await
                .map_err(Error::Redis)
        }
    };
    let before = used(info(&mut admin).await?);
    let out = Arc::new(Outbound::new(1 << 20, OverflowPolicy::Close));
    let started = std::time::Instant::now();
    futures_util::stream::iter(0..n)
        .for_each_concurrent(64, |_| {
            let engine = engine.clone();
            let out = out.clone();
            async move {
                let id = uuid::Uuid::now_v7();
                let _ = engine
                    .subscribe(&format!("#client:{id}"), Subscriber::new(id, out.clone()))
                    .await;
            }
        })
        .await;
    let connect = started.elapsed();
    let redis_bytes = used(info(&mut admin).await?) - before;

    let count_channels = |admin: &mut redis::aio::MultiplexedConnection| {
        let mut admin = admin.clone();
        let pattern = format!("{prefix}*");
        async move {
            redis::cmd("PUBSUB")
                .arg("CHANNELS")
                .arg(pattern)
                .query_async::<Vec<String>>(&mut admin)
                .await
                .map(|c| c.len())
                .map_err(Error::Redis)
        }
    };
    let channels = count_channels(&mut admin).await?;
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut admin)
        .await
        .map_err(Error::Redis)?;
    let cut = std::time::Instant::now();
    for line in clients.lines().filter(|l| !l.contains(" sub=0 ")) {
        if let Some(id) = line.split(' ').find_map(|f| f.strip_prefix("id=")) {
            let _: Result<i64, _> = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(id)
                .query_async(&mut admin)
                .await;
        }
    }
    let deadline = cut + Duration::from_secs(120);
    while count_channels(&mut admin).await? < channels && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let resubscribe = cut.elapsed();
    let reconciling = std::time::Instant::now();
    engine.reconcile_now().await;
    let reconcile = reconciling.elapsed();
    Ok(RedisConnectCost {
        connect,
        resubscribe,
        reconcile,
        channels,
        redis_bytes,
    })
}
