//! What handlers and hooks hold: the connection (`Connection`) and one message's context (`Ctx`).

use crate::error::WsError;
use crate::message::{Message, Meta, RpcMessage};
use crate::middleware::Request;
use crate::outbound::Outbound;
use crate::pubsub::{ClientId, PublishOptions, Subscriber, validate_topic};
use crate::router::{App, ErrorEvent, ErrorKind, PublishFuture, TopicAction, internal};
use crate::wire::{self, Layout, OutMeta};
use futures_util::task::AtomicWaker;
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::task::Waker;
use std::time::{Instant, SystemTime};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// One WebSocket connection: its id, typed data, outbound queue and subscriptions.
///
/// Cheap to clone (a reference count). Handlers reach it through [`Ctx`], which dereferences to it.
pub struct Connection<D = ()> {
    pub(crate) inner: Arc<ConnInner<D>>,
}

impl<D> Clone for Connection<D> {
    fn clone(&self) -> Self {
        Connection {
            inner: self.inner.clone(),
        }
    }
}

pub(crate) struct ConnInner<D> {
    pub id: ClientId,
    pub data: RwLock<D>,
    pub out: Arc<Outbound>,
    pub topics: Mutex<HashSet<Box<str>>>,
    /// The framework's own topics for this connection (`#client:..`, `#all`, `#user:..`).
    pub internal_topics: Mutex<Vec<String>>,
    pub user_id: Mutex<Option<String>>,
    pub inflight: Mutex<HashMap<Arc<str>, Arc<RpcSlot>, BuildHasherDefault<FnvHasher>>>,
    pub app: Arc<App<D>>,
    /// Set when teardown removes the subscriptions; a subscribe racing with it undoes itself.
    pub closed: AtomicBool,
}

impl<D: Send + Sync + 'static> Connection<D> {
    pub(crate) fn new(id: ClientId, data: D, app: Arc<App<D>>) -> Self {
        let out = Arc::new(Outbound::new(
            app.limits.max_queued_bytes,
            app.limits.overflow,
        ));
        Connection {
            inner: Arc::new(ConnInner {
                id,
                data: RwLock::new(data),
                out,
                topics: Mutex::default(),
                internal_topics: Mutex::default(),
                user_id: Mutex::default(),
                inflight: Mutex::default(),
                app,
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// The connection's id (UUID v7), the same as the `x-client-id` response header.
    pub fn client_id(&self) -> ClientId {
        self.inner.id
    }

    /// Reads the per-connection data. Do not hold the guard across an `.await`.
    pub fn data(&self) -> RwLockReadGuard<'_, D> {
        // A handler that panicked while writing leaves the data as it was; keep serving it.
        self.inner.data.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the per-connection data. Do not hold the guard across an `.await`.
    pub fn data_mut(&self) -> RwLockWriteGuard<'_, D> {
        self.inner.data.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the per-connection data in a closure.
    pub fn assign<R>(&self, f: impl FnOnce(&mut D) -> R) -> R {
        f(&mut self.data_mut())
    }

    /// Sends a message to this connection: `{"type", "meta": {}, "payload"}`.
    pub fn send<M: Message>(&self, msg: &M) {
        self.send_encoded(msg, OutMeta::default());
    }

    /// Sends a message with extra meta keys (`type` and `correlationId` are never taken from it).
    pub fn send_with_meta<M: Message>(&self, msg: &M, meta: &Map<String, Value>) {
        self.send_encoded(
            msg,
            OutMeta {
                correlation_id: None,
                user: Some(meta),
            },
        );
    }

    fn send_encoded<M: Message>(&self, msg: &M, meta: OutMeta<'_>) {
        match wire::encode_message(msg, meta, Layout::Direct) {
            Ok(frame) => {
                self.inner.out.push_text(frame);
            }
            Err(e) => self.report(ErrorKind::Encode, Some(M::TYPE), None, e),
        }
    }

    /// Subscribes this connection to a topic. Idempotent.
    ///
    /// Errors: `INVALID_ARGUMENT` for a bad topic name, `RESOURCE_EXHAUSTED` past
    /// `max_topics_per_connection`, or the engine's error.
    pub async fn subscribe(&self, topic: &str) -> Result<(), WsError> {
        validate_topic(topic)?;
        self.inner
            .app
            .authorize(self, topic, TopicAction::Subscribe)?;
        {
            let mut topics = self.inner.topics.lock().unwrap_or_else(|e| e.into_inner());
            if topics.contains(topic) {
                return Ok(());
            }
            let limit = self.inner.app.limits.max_topics_per_connection;
            if topics.len() >= limit {
                return Err(WsError::resource_exhausted(format!(
                    "at most {limit} topics per connection"
                ))
                .with_details(serde_json::json!({ "limit": limit })));
            }
            topics.insert(topic.into());
        }
        let subscriber = Subscriber::new(self.inner.id, self.inner.out.clone());
        if let Err(e) = self.inner.app.pubsub.subscribe(topic, subscriber).await {
            self.inner
                .topics
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(topic);
            return Err(e);
        }
        if self.inner.closed.load(Ordering::SeqCst) {
            // Teardown may have drained the topic set before this subscription reached the engine.
            let _ = self
                .inner
                .app
                .pubsub
                .unsubscribe(topic, self.inner.id)
                .await;
            return Err(WsError::unavailable("connection closed"));
        }
        Ok(())
    }

    /// Unsubscribes this connection from a topic. Idempotent.
    pub async fn unsubscribe(&self, topic: &str) -> Result<(), WsError> {
        validate_topic(topic)?;
        let removed = self
            .inner
            .topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(topic);
        if removed {
            self.inner
                .app
                .pubsub
                .unsubscribe(topic, self.inner.id)
                .await?;
        }
        Ok(())
    }

    /// Makes this connection reachable by `send_to_client` and `broadcast`.
    pub(crate) async fn join_internal(&self) -> Result<(), WsError> {
        self.join_internal_topic(internal::client(self.inner.id))
            .await?;
        self.join_internal_topic(internal::ALL.to_string()).await?;
        let user_id = self
            .inner
            .app
            .user_id
            .as_ref()
            .and_then(|f| f(&self.data()));
        match user_id {
            Some(id) => self.set_user_id(id).await,
            None => Ok(()),
        }
    }

    async fn join_internal_topic(&self, topic: String) -> Result<(), WsError> {
        let subscriber = Subscriber::new(self.inner.id, self.inner.out.clone());
        self.inner.app.pubsub.subscribe(&topic, subscriber).await?;
        if self.inner.closed.load(Ordering::SeqCst) {
            // Teardown already drained this connection's topics.
            let _ = self
                .inner
                .app
                .pubsub
                .unsubscribe(&topic, self.inner.id)
                .await;
            return Err(WsError::unavailable("connection closed"));
        }
        self.inner
            .internal_topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(topic);
        Ok(())
    }

    /// Indexes this connection under a user, so `send_to_user(user_id, ..)` reaches it (and every
    /// other session of that user, on every instance). Replaces an earlier user id.
    pub async fn set_user_id(&self, user_id: impl Into<String>) -> Result<(), WsError> {
        let user_id = user_id.into();
        let previous = self
            .inner
            .user_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(user_id.clone());
        if let Some(previous) = previous.filter(|p| *p != user_id) {
            let topic = internal::user(&previous);
            self.inner
                .internal_topics
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|t| *t != topic);
            self.inner
                .app
                .pubsub
                .unsubscribe(&topic, self.inner.id)
                .await?;
        }
        self.join_internal_topic(internal::user(&user_id)).await
    }

    /// The user id set with [`Connection::set_user_id`], if any.
    pub fn user_id(&self) -> Option<String> {
        self.inner
            .user_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A handle to publish, send to users and clients, and broadcast.
    pub fn publisher(&self) -> crate::router::Publisher {
        self.inner.app.publisher()
    }

    /// The topics this connection subscribes to.
    pub fn topics(&self) -> Vec<String> {
        let topics = self.inner.topics.lock().unwrap_or_else(|e| e.into_inner());
        topics.iter().map(|t| t.to_string()).collect()
    }

    /// Whether this connection subscribes to `topic`.
    pub fn is_subscribed(&self, topic: &str) -> bool {
        self.inner
            .topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(topic)
    }

    /// Publishes a message to a topic's subscribers (this connection included, if subscribed).
    /// Handed to the engine when called (see [`Publisher::publish`](crate::Publisher::publish)).
    pub fn publish<M: Message>(&self, topic: &str, msg: &M) -> PublishFuture {
        self.publish_with(topic, msg, PublishOptions::default())
    }

    /// Publishes with options (`exclude_self`, meta).
    pub fn publish_with<M: Message>(
        &self,
        topic: &str,
        msg: &M,
        options: PublishOptions,
    ) -> PublishFuture {
        if let Err(e) = self.inner.app.authorize(self, topic, TopicAction::Publish) {
            return PublishFuture::failed(e);
        }
        let exclude = options.exclude_self.then_some(self.inner.id);
        self.inner
            .app
            .publisher()
            .publish_with(topic, msg, options.meta.as_ref(), exclude)
    }

    /// How many connections subscribe to `topic`, when the pub/sub engine knows.
    pub async fn subscriber_count(&self, topic: &str) -> Option<usize> {
        self.inner.app.pubsub.subscriber_count(topic).await
    }

    /// Closes the connection with a code and reason, after the frames already queued.
    pub fn close(&self, code: u16, reason: &str) {
        self.inner.out.close(code, reason);
    }

    pub(crate) fn push(&self, frame: Utf8Bytes) -> bool {
        self.inner.out.push_text(frame)
    }

    pub(crate) fn report(
        &self,
        kind: ErrorKind,
        ty: Option<&str>,
        correlation_id: Option<&str>,
        error: WsError,
    ) {
        self.inner.app.report(&ErrorEvent {
            client_id: self.inner.id,
            kind,
            message_type: ty.map(str::to_string),
            correlation_id: correlation_id.map(str::to_string),
            error,
        });
    }
}

/// FNV-1a: a cheap hasher for the per-connection in-flight table, whose keys are short
/// correlation ids. A client can only collide its own (bounded) table, so SipHash's flood
/// resistance buys nothing here.
#[derive(Clone, Copy)]
pub(crate) struct FnvHasher(u64);

impl Default for FnvHasher {
    fn default() -> Self {
        FnvHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for FnvHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The state of one RPC: its terminal is sent at most once, and progress never after it.
pub(crate) struct RpcSlot {
    pub correlation_id: Option<Arc<str>>,
    /// Held while queueing a progress or terminal frame, so no progress follows the terminal.
    order: Mutex<()>,
    /// The terminal frame was queued.
    done: AtomicBool,
    /// Set by `$ws:abort` (after the abort claimed the terminal).
    cancelled: AtomicBool,
    /// The request's task, woken by `cancel`; registered only while the handler waits.
    waker: AtomicWaker,
}

impl RpcSlot {
    pub fn new(correlation_id: Option<Arc<str>>) -> Self {
        RpcSlot {
            correlation_id,
            order: Mutex::new(()),
            done: AtomicBool::new(false),
            cancelled: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        }
    }

    /// Marks the request cancelled and wakes its task, which then drops the handler.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Whether `cancel` was called. Call [`RpcSlot::register`] first when about to wait.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Makes `cancel` wake `waker`.
    pub fn register(&self, waker: &Waker) {
        self.waker.register(waker);
    }

    /// Queues `frame` as the terminal unless one was sent. Holding the lock while queueing keeps
    /// every progress frame before the terminal.
    pub fn terminal(&self, out: &Outbound, frame: impl FnOnce() -> Utf8Bytes) -> bool {
        let _order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        if self.done.swap(true, Ordering::AcqRel) {
            return false;
        }
        out.push_text(frame());
        true
    }

    /// Queues a progress frame unless the terminal was sent.
    pub fn progress(&self, out: &Outbound, frame: Utf8Bytes) -> bool {
        let _order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        !self.done.load(Ordering::Acquire) && out.push_text(frame)
    }

    /// Whether the terminal frame was queued (no lock taken).
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }
}

/// The context of one message: its typed payload, meta, timing, and the connection.
///
/// Dereferences to [`Connection`] for `send`, `publish`, `subscribe`, `data()` and the rest.
pub struct Ctx<M, D = ()> {
    /// The decoded, validated payload.
    pub payload: M,
    conn: Connection<D>,
    meta: Meta,
    received_at: SystemTime,
    deadline: Option<Instant>,
    rpc: Option<Arc<RpcSlot>>,
}

impl<M, D> Deref for Ctx<M, D> {
    type Target = Connection<D>;
    fn deref(&self) -> &Connection<D> {
        &self.conn
    }
}

impl<M: Message, D: Send + Sync + 'static> Ctx<M, D> {
    pub(crate) fn new(
        payload: M,
        conn: Connection<D>,
        meta: Meta,
        received_at: SystemTime,
        deadline: Option<Instant>,
        rpc: Option<Arc<RpcSlot>>,
    ) -> Self {
        Ctx {
            payload,
            conn,
            meta,
            received_at,
            deadline,
            rpc,
        }
    }

    /// The message's type tag.
    pub fn message_type(&self) -> &'static str {
        M::TYPE
    }

    /// The envelope's standard meta (client-sent `clientId`/`receivedAt` are stripped).
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// The server clock when the frame arrived: when its bytes were read from the socket (the
    /// frames of one socket read share the time of that read).
    pub fn received_at(&self) -> SystemTime {
        self.received_at
    }

    /// The RPC deadline (`received_at + meta.timeoutMs`, capped by the server), if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The connection this message came from.
    pub fn connection(&self) -> &Connection<D> {
        &self.conn
    }

    /// Sends an error to the client: `RPC_ERROR` (the request's terminal) for an RPC, `ERROR`
    /// with the correlation id echoed for an event. Returning `Err(..)` from the handler does the same.
    pub fn error(&self, err: impl Into<WsError>) {
        let err = err.into();
        let cid = self.meta.correlation_id.as_deref();
        match &self.rpc {
            Some(slot) => {
                if !slot.terminal(&self.conn.inner.out, || wire::encode_error(true, &err, cid)) {
                    self.conn
                        .report(ErrorKind::AfterTerminal, Some(M::TYPE), cid, err);
                }
            }
            None => {
                self.conn.push(wire::encode_error(false, &err, cid));
            }
        }
    }

    /// What middleware sees of this message.
    pub(crate) fn request(&self) -> Request<D> {
        Request {
            conn: self.conn.clone(),
            message_type: M::TYPE,
            meta: Arc::new(self.meta.clone()),
            received_at: self.received_at,
            rpc: self.rpc.is_some(),
        }
    }
}

impl<M: RpcMessage, D: Send + Sync + 'static> Ctx<M, D> {
    /// Sends the reply: the request's one terminal frame. A second terminal is not sent (it is
    /// reported to `on_error`).
    pub fn reply(&self, response: M::Response) {
        let cid = self.meta.correlation_id.as_deref();
        let Some(slot) = &self.rpc else { return };
        let meta = OutMeta {
            correlation_id: cid,
            user: None,
        };
        match wire::encode_message(&response, meta, Layout::Direct) {
            Ok(frame) => {
                if !slot.terminal(&self.conn.inner.out, || frame) {
                    self.conn.report(
                        ErrorKind::AfterTerminal,
                        Some(M::TYPE),
                        cid,
                        WsError::internal("reply after the request's terminal frame"),
                    );
                }
            }
            Err(e) => self.error(e),
        }
    }

    /// Sends a progress frame (`$ws:rpc-progress`) carrying a response payload. Returns false once
    /// the terminal was sent (the request finished, was aborted or timed out).
    pub fn progress(&self, update: &M::Response) -> bool {
        let Some(slot) = &self.rpc else { return false };
        let cid = self.meta.correlation_id.as_deref();
        let meta = OutMeta {
            correlation_id: cid,
            user: None,
        };
        match wire::encode_message_as("$ws:rpc-progress", update, meta, Layout::Direct) {
            Ok(frame) => slot.progress(&self.conn.inner.out, frame),
            Err(e) => {
                self.conn.report(ErrorKind::Encode, Some(M::TYPE), cid, e);
                false
            }
        }
    }

    /// Whether the request already has its terminal (replied, failed, aborted or timed out).
    pub fn is_finished(&self) -> bool {
        self.rpc.as_ref().is_none_or(|s| s.is_done())
    }
}
