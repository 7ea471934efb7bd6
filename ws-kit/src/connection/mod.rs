//! A connection as handlers and hooks hold it: [`Connection`] (id, typed data, outbound queue,
//! subscriptions, users), over the part every connection of a router shares ([`shared`]) and its
//! requests in flight ([`rpc`]).

pub(crate) mod auth_state;
pub(crate) mod heartbeat;
pub(crate) mod registry;
pub(crate) mod rpc;
pub(crate) mod shared;

pub use registry::Clients;
pub use shared::TopicAction;

use crate::error::WsError;
use crate::event::{ErrorEvent, ErrorKind};
use crate::message::Message;
use crate::outbound::Outbound;
use crate::publisher::{PublishFuture, Publisher};
use crate::pubsub::{
    Announce, ClientId, Position, PresenceEntry, PresenceStats, PublishOptions, Subscribed,
    Subscriber, internal, validate_topic,
};
use crate::seal::Offer as SealOffer;
use crate::wire::{self, Layout, OutMeta};
use auth_state::AuthState;
use rpc::InflightTable;
use serde_json::{Map, Value};
use shared::Shared;
use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// One WebSocket connection: its id, typed data, outbound queue and subscriptions.
///
/// Cheap to clone (a reference count). Handlers reach it through [`Ctx`](crate::Ctx), which dereferences to it.
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

impl<D> fmt::Debug for Connection<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("client_id", &self.inner.id)
            .finish_non_exhaustive()
    }
}

pub(crate) struct ConnInner<D> {
    pub(crate) id: ClientId,
    /// The peer's address, when the transport has one (the accept loop's sockets do).
    pub(crate) remote_addr: Option<SocketAddr>,
    pub(crate) data: RwLock<D>,
    pub(crate) out: Arc<Outbound>,
    /// Its topics, presence, user: allocated when it first joins a topic or gets a user, so an
    /// idle connection holds one pointer for them.
    pub(crate) joined: Mutex<Option<Box<Joined>>>,
    /// How many of the connection's first two framework topics (`#client:<id>`, then `#all`)
    /// it joined: their names are not kept, `leave_all` makes them again.
    pub(crate) base_topics: AtomicU8,
    pub(crate) inflight: Mutex<InflightTable>,
    /// What every connection of the router shares: engine, limits, hooks, state.
    pub(crate) shared: Arc<Shared<D>>,
    /// Set when teardown removes the subscriptions; a subscribe racing with it undoes itself.
    pub(crate) closed: AtomicBool,
    /// In-band authentication: whether the connection is authenticated, a key being accepted.
    pub(crate) auth: AuthState,
    /// The connection's span, when a `tracing` subscriber wanted one (its `user` is recorded).
    pub(crate) span: Option<Box<tracing::Span>>,
    /// What the heartbeat sweep reads: frames seen, frames held, the peer's pings.
    pub(crate) live: heartbeat::Liveness,
}

/// What a connection joined (see `ConnInner::joined`).
#[derive(Default)]
pub(crate) struct Joined {
    /// The app's topics.
    topics: HashSet<Box<str>>,
    /// Topics where this connection set its presence (docs/protocol.md 8b): left with the topic.
    presence: Vec<Box<str>>,
    /// The user id set with `set_user_id`.
    user_id: Option<String>,
    /// The user's topic (`#user:..`) this connection joined, if any.
    user_topics: Vec<String>,
}

impl<D> ConnInner<D> {
    /// What the connection joined, locked.
    fn joined(&self) -> MutexGuard<'_, Option<Box<Joined>>> {
        self.joined.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `f` on what the connection joined, allocated if it was not.
    fn joining<R>(&self, f: impl FnOnce(&mut Joined) -> R) -> R {
        f(self.joined().get_or_insert_with(Box::default))
    }
}

impl<D: Send + Sync + 'static> Connection<D> {
    pub(crate) fn new(
        id: ClientId,
        remote_addr: Option<SocketAddr>,
        data: D,
        shared: Arc<Shared<D>>,
        span: Option<tracing::Span>,
    ) -> Self {
        let out = Arc::new(Outbound::new(
            shared.limits.max_queued_bytes,
            shared.limits.overflow,
        ));
        Connection {
            inner: Arc::new(ConnInner {
                id,
                remote_addr,
                data: RwLock::new(data),
                out,
                joined: Mutex::default(),
                base_topics: AtomicU8::new(0),
                inflight: Mutex::default(),
                auth: AuthState::new(!shared.in_band_auth),
                span: span.map(Box::new),
                shared,
                closed: AtomicBool::new(false),
                live: heartbeat::Liveness::default(),
            }),
        }
    }

    /// The connection's id (UUID v7), the same as the `x-client-id` response header.
    pub fn client_id(&self) -> ClientId {
        self.inner.id
    }

    /// The peer's address: the TCP peer of a socket the server accepted (behind a proxy, the
    /// proxy's); `None` for a stream handed to [`Service::serve_stream`](crate::Service::serve_stream)
    /// without one, and in the testing harness unless the test sets it.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.inner.remote_addr
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
        self.subscribe_with(topic, None).await.map(|_| ())
    }

    /// Subscribes from a position in a kept topic (docs/protocol.md 8a): `announce`'s message
    /// first (the app's `JOINED`, built from what the subscribe reports), then every publication
    /// after `since` if all of them are still kept (none otherwise), then the live ones, each
    /// with its position in `meta`, with no gap and no duplicate between recovered and live.
    /// `Position::default()` (`{offset: 0, epoch: ""}`) subscribes from now on, with positions.
    ///
    /// A connection already subscribed to `topic` keeps its subscription as it is: nothing is
    /// recovered, and the report is `recovered: false` at position zero.
    pub async fn subscribe_from<M: Message>(
        &self,
        topic: &str,
        since: Position,
        announce: impl FnOnce(&Subscribed) -> M + Send + 'static,
    ) -> Result<Subscribed, WsError> {
        let announce: Announce = Box::new(move |subscribed| {
            wire::encode_message(&announce(subscribed), OutMeta::default(), Layout::Direct).ok()
        });
        self.subscribe_with(topic, Some((since, announce))).await
    }

    async fn subscribe_with(
        &self,
        topic: &str,
        from: Option<(Position, Announce)>,
    ) -> Result<Subscribed, WsError> {
        let unchanged = Subscribed::not_recovered();
        validate_topic(topic)?;
        self.inner
            .shared
            .authorize(self, topic, TopicAction::Subscribe)?;
        let limit = self.inner.shared.limits.max_topics_per_connection;
        let joined = self.inner.joining(|joined| {
            if joined.topics.contains(topic) {
                return Ok(false);
            }
            if joined.topics.len() >= limit {
                return Err(WsError::resource_exhausted(format!(
                    "at most {limit} topics per connection"
                ))
                .with_details(serde_json::json!({ "limit": limit }))
                .with_default_retry());
            }
            joined.topics.insert(topic.into());
            Ok(true)
        })?;
        if !joined {
            return Ok(unchanged);
        }
        let subscriber = Subscriber::new(self.inner.id, self.inner.out.clone());
        let engine = &self.inner.shared.pubsub;
        let result = match from {
            None => engine
                .subscribe(topic, subscriber)
                .await
                .map(|()| unchanged),
            Some((since, announce)) => {
                engine
                    .subscribe_from(topic, subscriber.with_positions(), since, announce)
                    .await
            }
        };
        let subscribed = match result {
            Ok(subscribed) => subscribed,
            Err(e) => {
                self.inner.joining(|joined| joined.topics.remove(topic));
                return Err(e);
            }
        };
        if self.inner.closed.load(Ordering::SeqCst) {
            // Teardown may have drained the topic set before this subscription reached the engine.
            let _ = self
                .inner
                .shared
                .pubsub
                .unsubscribe(topic, self.inner.id)
                .await;
            return Err(WsError::unavailable("connection closed").with_default_retry());
        }
        Ok(subscribed)
    }

    /// Unsubscribes this connection from a topic. Idempotent.
    pub async fn unsubscribe(&self, topic: &str) -> Result<(), WsError> {
        validate_topic(topic)?;
        let removed = self
            .inner
            .joined()
            .as_mut()
            .is_some_and(|joined| joined.topics.remove(topic));
        if removed {
            self.leave_presence(topic).await;
            self.inner
                .shared
                .pubsub
                .unsubscribe(topic, self.inner.id)
                .await?;
        }
        Ok(())
    }

    /// Sets this connection's presence in `topic`, which it must have joined (docs/protocol.md
    /// 8b): `user_id` (distinct users are distinct ids) and `info`, a small JSON value of the
    /// app's. Every instance's [`Router::on_presence`](crate::Router::on_presence) hooks see a
    /// join; the entry goes when the connection leaves the topic or closes. Setting it again
    /// replaces it.
    pub async fn set_presence(
        &self,
        topic: &str,
        user_id: Option<&str>,
        info: Value,
    ) -> Result<(), WsError> {
        if !self.is_subscribed(topic) {
            return Err(WsError::failed_precondition(
                "join the topic before setting presence in it",
            ));
        }
        let entry = PresenceEntry {
            client_id: self.inner.id,
            user_id: user_id.map(str::to_string),
            info,
        };
        self.inner.joining(|joined| {
            if !joined.presence.iter().any(|t| **t == *topic) {
                joined.presence.push(topic.into());
            }
        });
        self.inner.shared.pubsub.presence_join(topic, entry).await
    }

    /// Who is present in `topic`, on every instance, sorted by client id.
    pub async fn presence(&self, topic: &str) -> Result<Vec<PresenceEntry>, WsError> {
        validate_topic(topic)?;
        self.inner.shared.pubsub.presence(topic).await
    }

    /// How many clients and distinct users are present in `topic`, on every instance.
    pub async fn presence_stats(&self, topic: &str) -> Result<PresenceStats, WsError> {
        Ok(PresenceStats::of(&self.presence(topic).await?))
    }

    async fn leave_presence(&self, topic: &str) {
        let had = self.inner.joined().as_mut().is_some_and(|joined| {
            let before = joined.presence.len();
            joined.presence.retain(|t| **t != *topic);
            joined.presence.len() != before
        });
        if had {
            self.inner
                .shared
                .pubsub
                .presence_leave(topic, self.inner.id)
                .await;
        }
    }

    /// Makes this connection reachable by `send_to_client` and `broadcast`, and lists it among
    /// the instance's clients.
    pub(crate) async fn join_internal(&self) -> Result<(), WsError> {
        if !self.inner.shared.registry.insert(self) {
            // Shutdown started while this connection opened: it closes like the others (its
            // open hooks still run, so its close hooks meet an opened connection).
            self.inner
                .out
                .close(crate::close_code::AWAY, "Server shutting down");
        }
        for topic in [internal::client(self.inner.id), internal::ALL.to_string()] {
            self.join_internal_topic(&topic).await?;
            self.inner.base_topics.fetch_add(1, Ordering::SeqCst);
        }
        let user_id = self
            .inner
            .shared
            .user_id
            .as_ref()
            .and_then(|f| f(&self.data()));
        match user_id {
            Some(id) => self.set_user_id(id).await,
            None => Ok(()),
        }
    }

    async fn join_internal_topic(&self, topic: &str) -> Result<(), WsError> {
        let subscriber = Subscriber::new(self.inner.id, self.inner.out.clone());
        self.inner
            .shared
            .pubsub
            .subscribe(topic, subscriber)
            .await?;
        if self.inner.closed.load(Ordering::SeqCst) {
            // Teardown already drained this connection's topics.
            let _ = self
                .inner
                .shared
                .pubsub
                .unsubscribe(topic, self.inner.id)
                .await;
            return Err(WsError::unavailable("connection closed").with_default_retry());
        }
        Ok(())
    }

    /// Indexes this connection under a user, so `send_to_user(user_id, ..)` reaches it (and every
    /// other session of that user, on every instance). Replaces an earlier user id.
    pub async fn set_user_id(&self, user_id: impl Into<String>) -> Result<(), WsError> {
        let user_id = user_id.into();
        if let Some(span) = &self.inner.span {
            span.record("user", user_id.as_str());
        }
        let previous = self
            .inner
            .joining(|joined| joined.user_id.replace(user_id.clone()));
        if previous.as_deref() == Some(user_id.as_str()) {
            // Already indexed under this user (or being indexed by the call that set it): a
            // second subscription would deliver every send to the user twice.
            return Ok(());
        }
        if let Some(previous) = previous {
            let topic = internal::user(&previous);
            self.inner
                .joining(|joined| joined.user_topics.retain(|t| *t != topic));
            self.inner
                .shared
                .pubsub
                .unsubscribe(&topic, self.inner.id)
                .await?;
        }
        let topic = internal::user(&user_id);
        self.join_internal_topic(&topic).await?;
        self.inner.joining(|joined| joined.user_topics.push(topic));
        Ok(())
    }

    /// Whether the connection may send any message: always, unless the router authenticates
    /// in-band ([`Router::in_band_auth`](crate::Router::in_band_auth)); then once its
    /// authentication request succeeded, or from the open when its upgrade gave it a user id
    /// ([`Router::user_id_from`](crate::Router::user_id_from)).
    pub fn is_authenticated(&self) -> bool {
        self.inner.auth.is_authenticated()
    }

    /// Accepts the client's key for sealed delivery (docs/protocol.md 7b): call it in the
    /// in-band authentication handler with the request's `publicKey` (base64 of an uncompressed
    /// P-256 point) and put the answer's `server_public_key` and `salt` in the reply. If the
    /// request succeeds, every frame after its reply is sealed (AES-256-GCM), and the client may
    /// seal its own frames.
    ///
    /// Errors: `INVALID_ARGUMENT` for a key that is not a P-256 point; `FAILED_PRECONDITION`
    /// outside an authentication request of an unauthenticated connection, or when that request
    /// accepted a key already (sealing starts only there, once).
    pub fn accept_sealing(&self, client_public_key: &str) -> Result<SealOffer, WsError> {
        let (key, offer) = crate::seal::accept(client_public_key).map_err(|e| {
            WsError::invalid_argument(format!("publicKey: {e}"))
                .with_details(serde_json::json!({ "field": "publicKey" }))
        })?;
        if !self.inner.auth.offer_seal(key) {
            return Err(WsError::failed_precondition(
                "sealed delivery starts once, from the authentication request",
            ));
        }
        Ok(offer)
    }

    /// Whether this connection's frames are sealed (docs/protocol.md 7b): from the reply of the
    /// authentication request whose handler called [`Connection::accept_sealing`].
    pub fn is_sealed(&self) -> bool {
        self.inner.out.is_sealed()
    }

    /// The user id, borrowed for the length of `f` (no copy, unlike [`Connection::user_id`]).
    pub(crate) fn with_user_id<R>(&self, f: impl FnOnce(Option<&str>) -> R) -> R {
        f(self
            .inner
            .joined()
            .as_ref()
            .and_then(|joined| joined.user_id.as_deref()))
    }

    /// The user id set with [`Connection::set_user_id`], if any.
    pub fn user_id(&self) -> Option<String> {
        self.with_user_id(|user_id| user_id.map(str::to_string))
    }

    /// This instance's open connections: all of them, a user's, a topic's (read-only views).
    pub fn clients(&self) -> Clients<D> {
        self.inner.shared.clients()
    }

    /// A handle to publish, send to users and clients, and broadcast.
    pub fn publisher(&self) -> Publisher {
        self.inner.shared.publisher()
    }

    /// The router's shared state (see [`Router::with_state`](crate::Router::with_state)), if it
    /// is a `T`. Handlers read it typed with [`Ctx::state`](crate::Ctx::state).
    pub fn state<T: 'static>(&self) -> Option<&T> {
        self.inner.shared.state.downcast_ref::<T>()
    }

    /// The topics this connection subscribes to.
    pub fn topics(&self) -> Vec<String> {
        let joined = self.inner.joined();
        joined
            .iter()
            .flat_map(|joined| joined.topics.iter().map(|t| t.to_string()))
            .collect()
    }

    /// Whether this connection subscribes to `topic`.
    pub fn is_subscribed(&self, topic: &str) -> bool {
        self.inner
            .joined()
            .as_ref()
            .is_some_and(|joined| joined.topics.contains(topic))
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
        if let Err(e) = self
            .inner
            .shared
            .authorize(self, topic, TopicAction::Publish)
        {
            return PublishFuture::failed(e);
        }
        let exclude = options.exclude_self.then_some(self.inner.id);
        self.inner
            .shared
            .publisher()
            .publish_with(topic, msg, options.meta.as_ref(), exclude)
    }

    /// How many connections subscribe to `topic`, when the pub/sub engine knows.
    pub async fn subscriber_count(&self, topic: &str) -> Option<usize> {
        self.inner.shared.pubsub.subscriber_count(topic).await
    }

    /// Closes the connection with a code and reason, after the frames already queued (codes:
    /// [`close_code`](crate::close_code)).
    pub fn close(&self, code: u16, reason: &str) {
        self.inner.out.close(code, reason);
    }

    /// `$ws:abort`: the request's terminal becomes `CANCELLED` and its handler is dropped.
    pub(crate) fn abort(&self, cid: Option<&str>) {
        let Some(cid) = cid else { return };
        let slot = self
            .inner
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(cid)
            .cloned();
        if let Some(slot) = slot {
            let err = WsError::cancelled("Request cancelled by client");
            if slot.terminal(&self.inner.out, || {
                wire::encode_error(true, &err, Some(cid))
            }) {
                crate::metrics::rpc_terminal(Some(err.code()));
                slot.cancel();
            }
        }
    }

    /// Teardown, after the close hooks (which may still publish): every subscription goes, the
    /// framework's own included, and no request stays in flight.
    pub(crate) async fn leave_all(&self) {
        let inner = &self.inner;
        inner.closed.store(true, Ordering::SeqCst);
        inner.shared.registry.remove(inner.id);
        let topics: Vec<Box<str>> = inner
            .joined()
            .as_mut()
            .map_or_else(Vec::new, |joined| joined.topics.drain().collect());
        for topic in topics {
            self.leave_presence(&topic).await;
            let _ = inner.shared.pubsub.unsubscribe(&topic, inner.id).await;
        }
        let internal = inner
            .joined()
            .as_mut()
            .map_or_else(Vec::new, |joined| std::mem::take(&mut joined.user_topics));
        let base = [internal::client(inner.id), internal::ALL.to_string()];
        let joined = usize::from(inner.base_topics.swap(0, Ordering::SeqCst));
        for topic in internal.iter().chain(&base[..joined.min(2)]) {
            let _ = inner.shared.pubsub.unsubscribe(topic, inner.id).await;
        }
        inner
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
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
        self.inner.shared.report(&ErrorEvent {
            client_id: self.inner.id,
            kind,
            message_type: ty.map(str::to_string),
            correlation_id: correlation_id.map(str::to_string),
            error,
        });
    }
}
