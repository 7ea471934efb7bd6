//! (feature `bench`) Hidden entry points for the criterion benchmarks in `benches/`: the real
//! per-message path, without sockets. Not a public API: it may change or go away at any time.
//!
//! [`Conn::dispatch`] calls the function the read loop calls for each text frame
//! (`connection::on_text`): envelope, reserved types, routing, decode, validation, the handler run
//! to its first wait, and whatever it queues on the connection's outbound queue.
//! Call it inside a Tokio runtime context (`Runtime::enter`): an RPC builds its deadline timer.

use crate::connection::{LoopConfig, on_text};
use crate::context::Connection;
use crate::error::Error;
use crate::message::Message;
use crate::outbound::{Outbound, OverflowPolicy};
use crate::pubsub::{MemoryPubSub, PubSub, PublishResult, Subscriber};
use crate::router::{Limits, Publisher, Router};
use crate::wire::{self, Layout, OutMeta};
use futures_util::FutureExt;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};

/// The limits of `ServeOptions::default()`.
fn default_limits() -> Limits {
    Limits {
        max_inflight_rpcs: 1000,
        max_queued_bytes: 1024 * 1024,
        overflow: OverflowPolicy::Close,
        max_topics_per_connection: 1000,
        max_rpc_timeout: None,
    }
}

/// One connection of a built router, fed frames directly.
pub struct Conn<D: Send + Sync + 'static = ()> {
    conn: Connection<D>,
    config: LoopConfig,
    tasks: JoinSet<()>,
}

impl<D: Send + Sync + 'static> Conn<D> {
    /// Builds the router (default `ServeOptions` limits) and one connection with `data`.
    /// The connection joins no topics and runs no `on_open` hooks.
    pub fn new(router: Router<D>, data: D) -> Result<Self, Error> {
        let app = router.build(default_limits())?;
        Ok(Conn {
            conn: Connection::new(uuid::Uuid::now_v7(), data, app),
            config: LoopConfig {
                max_payload_bytes: 1024 * 1024,
                heartbeat_interval: Duration::from_secs(30),
                heartbeat_timeout: Duration::from_secs(90),
                close_grace: Duration::from_secs(1),
                // No socket: every frame reads the clock, as a frame alone in its read would.
                read_clock: None,
            },
            tasks: JoinSet::new(),
        })
    }

    /// Handles one text frame exactly as the read loop does.
    pub fn dispatch(&mut self, text: &str) {
        on_text(&self.conn, &self.config, text, &mut self.tasks);
    }

    /// Takes every frame queued on the connection's outbound queue (what the writer would send).
    pub fn drain(&self) -> VecDeque<WsMessage> {
        self.conn.inner.out.take_all()
    }

    /// Handlers that waited and became tasks (0 when every handler ran to completion inline).
    pub fn pending_tasks(&self) -> usize {
        self.tasks.len()
    }

    /// The connection, as handlers see it.
    pub fn connection(&self) -> &Connection<D> {
        &self.conn
    }
}

/// The in-memory engine with `n` subscribers of one topic, each with its own outbound queue.
pub struct Fanout {
    publisher: Publisher,
    queues: Vec<Arc<Outbound>>,
}

impl Fanout {
    /// `n` subscribers of `topic`, each with an outbound queue of `max_queued_bytes` bytes.
    pub fn new(topic: &str, n: usize, max_queued_bytes: usize) -> Self {
        let engine: Arc<dyn PubSub> = Arc::new(MemoryPubSub::new());
        let queues: Vec<Arc<Outbound>> = (0..n)
            .map(|_| Arc::new(Outbound::new(max_queued_bytes, OverflowPolicy::Close)))
            .collect();
        for out in &queues {
            let subscriber = Subscriber::new(uuid::Uuid::now_v7(), out.clone());
            engine
                .subscribe(topic, subscriber)
                .now_or_never()
                .expect("the in-memory engine is ready at once")
                .expect("subscribe");
        }
        Fanout {
            publisher: Publisher::new(engine),
            queues,
        }
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

/// Encodes a reply frame as `Ctx::reply` does (`{"type","meta":{"correlationId"},"payload"}`).
pub fn encode_reply<M: Message>(response: &M, correlation_id: &str) -> Utf8Bytes {
    let meta = OutMeta {
        correlation_id: Some(correlation_id),
        user: None,
    };
    wire::encode_message(response, meta, Layout::Direct).expect("the reply encodes")
}
