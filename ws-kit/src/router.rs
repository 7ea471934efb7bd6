//! The router: routes, middleware, lifecycle hooks and the pub/sub engine, built into an `App`.

use crate::context::Connection;
use crate::error::{Error, WsError};
use crate::handler::{DynRoute, Handler, RouteTable, Routes, Single};
use crate::message::{EventMessage, Message, RpcMessage};
use crate::middleware::Middleware;
use crate::outbound::OverflowPolicy;
use crate::pubsub::{ClientId, MemoryPubSub, PubSub, PublishResult, validate_topic};
use crate::wire::{self, Layout, OutMeta};
use futures_util::future::BoxFuture;
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

/// What kind of failure an [`ErrorEvent`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The frame was not a JSON object with a string `type`.
    InvalidFrame,
    /// A client sent a reserved type.
    ReservedType,
    /// No handler for the type.
    UnknownType,
    /// Strict decoding or field validation failed.
    Validation,
    /// A handler or middleware returned an error.
    Handler,
    /// A handler panicked.
    Panic,
    /// An RPC handler finished without replying.
    MissingTerminal,
    /// A reply or error after the request's terminal was dropped.
    AfterTerminal,
    /// A request reused a correlation id already in flight; it was dropped.
    DuplicateCorrelation,
    /// Too many RPCs in flight on the connection.
    InflightLimit,
    /// An RPC passed its deadline.
    DeadlineExceeded,
    /// An inbound frame was larger than `max_payload_bytes`.
    PayloadTooLarge,
    /// An outbound frame could not be encoded.
    Encode,
    /// `on_open` failed.
    Open,
    /// A lifecycle hook panicked.
    HookPanic,
}

/// A server-side failure, given to `on_error` hooks.
#[derive(Clone, Debug)]
pub struct ErrorEvent {
    /// The connection it happened on.
    pub client_id: ClientId,
    /// What kind of failure.
    pub kind: ErrorKind,
    /// The message type involved, if known.
    pub message_type: Option<String>,
    /// The request's correlation id, if any.
    pub correlation_id: Option<String>,
    /// The error (for panics: `INTERNAL` with the panic message; the client saw only "Internal error").
    pub error: WsError,
}

/// Why a connection closed, given to `on_close` hooks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseInfo {
    /// The close code (the client's, or the server's when it closed; 1006 when the socket dropped).
    pub code: u16,
    /// The close reason.
    pub reason: String,
}

impl CloseInfo {
    /// What a received close frame says (1005, "No Status Received", when it carries no code).
    pub(crate) fn from_frame(
        frame: Option<&tokio_tungstenite::tungstenite::protocol::CloseFrame>,
    ) -> Self {
        match frame {
            Some(f) => CloseInfo {
                code: f.code.into(),
                reason: f.reason.to_string(),
            },
            None => CloseInfo {
                code: 1005,
                reason: String::new(),
            },
        }
    }
}

type OpenHook<D> =
    Arc<dyn Fn(Connection<D>) -> BoxFuture<'static, Result<(), WsError>> + Send + Sync>;
type CloseHook<D> = Arc<dyn Fn(Connection<D>, CloseInfo) -> BoxFuture<'static, ()> + Send + Sync>;
type ErrorHook = Arc<dyn Fn(&ErrorEvent) + Send + Sync>;
type UserIdFn<D> = Arc<dyn Fn(&D) -> Option<String> + Send + Sync>;
type AuthorizeHook<D> = Arc<dyn Fn(&Connection<D>, &str, TopicAction) -> bool + Send + Sync>;

/// What a connection wants to do with a topic, for the `authorize_topics` hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicAction {
    /// `subscribe(topic)`.
    Subscribe,
    /// `publish(topic, ..)` from a handler or hook of this connection.
    Publish,
}

/// Routes messages to handlers, with middleware, lifecycle hooks and a pub/sub engine.
///
/// `D` is the per-connection data (set by `authenticate`, or `D::default()`).
///
/// ```
/// use ws_kit::{handler, routes, Ctx, Message, Router};
///
/// #[derive(Message)]
/// struct Hello { name: String }
///
/// #[handler]
/// async fn hello(ctx: Ctx<Hello>) {
///     println!("hello, {}", ctx.payload.name);
/// }
///
/// let router = Router::new().routes(routes![hello]);
/// ```
pub struct Router<D = ()> {
    tables: Vec<Box<dyn RouteTable<D>>>,
    middleware: Vec<Arc<dyn Middleware<D>>>,
    on_open: Vec<OpenHook<D>>,
    on_close: Vec<CloseHook<D>>,
    on_error: Vec<ErrorHook>,
    pubsub: Arc<dyn PubSub>,
    authorize: Vec<AuthorizeHook<D>>,
    user_id: Option<UserIdFn<D>>,
}

impl<D: Send + Sync + 'static> Default for Router<D> {
    fn default() -> Self {
        Self::new()
    }
}

impl<D: Send + Sync + 'static> Router<D> {
    /// An empty router with the in-memory pub/sub engine.
    pub fn new() -> Self {
        Router {
            tables: Vec::new(),
            middleware: Vec::new(),
            on_open: Vec::new(),
            on_close: Vec::new(),
            on_error: Vec::new(),
            pubsub: Arc::new(MemoryPubSub::new()),
            authorize: Vec::new(),
            user_id: None,
        }
    }

    /// Adds the handler of an event message.
    pub fn on<H>(mut self, handler: H) -> Self
    where
        H: Handler<Data = D>,
        H::Message: EventMessage,
    {
        self.tables.push(Box::new(Single(handler)));
        self
    }

    /// Adds the handler of an RPC message (one with `#[rpc(response = ..)]`).
    pub fn rpc<H>(mut self, handler: H) -> Self
    where
        H: Handler<Data = D>,
        H::Message: RpcMessage,
    {
        self.tables.push(Box::new(Single(handler)));
        self
    }

    /// Adds a route table built by `routes![..]` (events and RPCs alike).
    pub fn routes(mut self, routes: Routes<D>) -> Self {
        self.tables.push(routes.table);
        self
    }

    /// Adds global middleware: it runs for every message, after validation, in the order added.
    pub fn middleware(mut self, middleware: impl Middleware<D>) -> Self {
        self.middleware.push(Arc::new(middleware));
        self
    }

    /// Adds the routes, middleware and hooks of a feature router. Its global middleware runs after
    /// this router's. Two routes for one type tag are an error when the server starts.
    pub fn merge(mut self, other: Router<D>) -> Self {
        self.tables.extend(other.tables);
        self.middleware.extend(other.middleware);
        self.on_open.extend(other.on_open);
        self.on_close.extend(other.on_close);
        self.on_error.extend(other.on_error);
        self.authorize.extend(other.authorize);
        self.user_id = self.user_id.or(other.user_id);
        self
    }

    /// Runs when a connection opens, before its first message. An error closes it with 1011
    /// (or the code of [`WsError::close`]).
    pub fn on_open<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Connection<D>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), WsError>> + Send + 'static,
    {
        self.on_open
            .push(Arc::new(move |conn| Box::pin(hook(conn))));
        self
    }

    /// Runs when a connection closes, before its subscriptions are removed (so it can still publish).
    pub fn on_close<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Connection<D>, CloseInfo) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_close
            .push(Arc::new(move |conn, info| Box::pin(hook(conn, info))));
        self
    }

    /// Sees every server-side failure: validation, handler errors, panics, unknown types,
    /// dropped duplicates. Keep it quick; it runs inline.
    pub fn on_error(mut self, hook: impl Fn(&ErrorEvent) + Send + Sync + 'static) -> Self {
        self.on_error.push(Arc::new(hook));
        self
    }

    /// Decides whether a connection may subscribe or publish to a topic; a `false` from any hook
    /// denies it with `PERMISSION_DENIED`. Publishing through a [`Publisher`] is not checked.
    pub fn authorize_topics(
        mut self,
        hook: impl Fn(&Connection<D>, &str, TopicAction) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.authorize.push(Arc::new(hook));
        self
    }

    /// Derives a connection's user id from its data (as set by `authenticate`) when it opens, as
    /// if `set_user_id` were called before `on_open`: `send_to_user` then reaches it.
    pub fn user_id_from(
        mut self,
        user_id: impl Fn(&D) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.user_id = Some(Arc::new(user_id));
        self
    }

    /// Replaces the pub/sub engine (in-memory by default).
    pub fn pubsub(mut self, engine: impl PubSub) -> Self {
        self.pubsub = Arc::new(engine);
        self
    }

    /// Replaces the engine with one built around it (the testing harness records publications so).
    #[cfg(feature = "testing")]
    pub(crate) fn wrap_pubsub(
        mut self,
        wrap: impl FnOnce(Arc<dyn PubSub>) -> Arc<dyn PubSub>,
    ) -> Self {
        self.pubsub = wrap(self.pubsub);
        self
    }

    /// A handle that publishes to this router's topics from outside handlers.
    pub fn publisher(&self) -> Publisher {
        Publisher {
            pubsub: self.pubsub.clone(),
        }
    }

    /// Checks the routes and freezes the router.
    pub(crate) fn build(self, limits: Limits) -> Result<Arc<App<D>>, Error> {
        let mut seen = HashSet::new();
        for table in &self.tables {
            for tag in table.tags() {
                if !seen.insert(tag) {
                    return Err(Error::DuplicateType(tag));
                }
            }
        }
        Ok(Arc::new(App {
            tables: self.tables,
            middleware: self.middleware.into(),
            on_open: self.on_open,
            on_close: self.on_close,
            on_error: self.on_error,
            pubsub: self.pubsub,
            authorize: self.authorize,
            user_id: self.user_id,
            limits,
        }))
    }
}

/// Per-connection limits, from `ServeOptions`.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    pub max_inflight_rpcs: usize,
    pub max_queued_bytes: usize,
    pub overflow: OverflowPolicy,
    pub max_topics_per_connection: usize,
    pub max_rpc_timeout: Option<std::time::Duration>,
}

/// A built router: what connections share.
pub(crate) struct App<D> {
    tables: Vec<Box<dyn RouteTable<D>>>,
    pub middleware: Arc<[Arc<dyn Middleware<D>>]>,
    pub on_open: Vec<OpenHook<D>>,
    pub on_close: Vec<CloseHook<D>>,
    on_error: Vec<ErrorHook>,
    pub pubsub: Arc<dyn PubSub>,
    authorize: Vec<AuthorizeHook<D>>,
    pub user_id: Option<UserIdFn<D>>,
    pub limits: Limits,
}

impl<D: Send + Sync + 'static> App<D> {
    pub fn find(&self, tag: &str) -> Option<&dyn DynRoute<D>> {
        self.tables.iter().find_map(|t| t.find(tag))
    }

    pub fn report(&self, event: &ErrorEvent) {
        if self.on_error.is_empty() {
            tracing::debug!(client_id = %event.client_id, kind = ?event.kind, error = %event.error, "ws-kit error");
        }
        for hook in &self.on_error {
            hook(event);
        }
    }

    pub fn publisher(&self) -> Publisher {
        Publisher {
            pubsub: self.pubsub.clone(),
        }
    }

    /// Runs the `authorize_topics` hooks.
    pub fn authorize(
        &self,
        conn: &Connection<D>,
        topic: &str,
        action: TopicAction,
    ) -> Result<(), WsError> {
        if self.authorize.iter().all(|hook| hook(conn, topic, action)) {
            Ok(())
        } else {
            let verb = match action {
                TopicAction::Subscribe => "subscribe to",
                TopicAction::Publish => "publish to",
            };
            Err(
                WsError::permission_denied(format!("not allowed to {verb} this topic"))
                    .with_details(serde_json::json!({ "topic": topic })),
            )
        }
    }
}

/// Publishes to topics from anywhere (a background task, another service's callback).
#[derive(Clone)]
pub struct Publisher {
    pubsub: Arc<dyn PubSub>,
}

impl Publisher {
    /// A publisher over any engine (the router's, or one made just to publish: see `Emitter`).
    pub fn new(engine: Arc<dyn PubSub>) -> Self {
        Publisher { pubsub: engine }
    }

    /// Publishes a message to a topic's subscribers.
    ///
    /// The publication is encoded and handed to the engine when this is called; the future only
    /// reports the outcome. So publications are delivered in call order, and a caller may make
    /// several before awaiting them.
    pub fn publish<M: Message>(&self, topic: &str, msg: &M) -> PublishFuture {
        self.publish_with(topic, msg, None, None)
    }

    pub(crate) fn publish_with<M: Message>(
        &self,
        topic: &str,
        msg: &M,
        meta: Option<&Map<String, Value>>,
        exclude: Option<ClientId>,
    ) -> PublishFuture {
        if let Err(e) = validate_topic(topic) {
            return PublishFuture::ready(PublishResult::failed(e));
        }
        let meta = OutMeta {
            correlation_id: None,
            user: meta,
        };
        self.encode_and_publish(topic, msg, meta, Layout::Publication, exclude)
    }

    /// Sends a message to every session of a user (see `Connection::set_user_id`), on every
    /// instance. The frame is the one `send` writes: `{"type","meta":{},"payload"}`.
    pub fn send_to_user<M: Message>(&self, user_id: &str, msg: &M) -> PublishFuture {
        let topic = internal::user(user_id);
        self.encode_and_publish(&topic, msg, OutMeta::default(), Layout::Direct, None)
    }

    /// Sends a message to one connection, wherever it is.
    pub fn send_to_client<M: Message>(&self, client_id: ClientId, msg: &M) -> PublishFuture {
        let topic = internal::client(client_id);
        self.encode_and_publish(&topic, msg, OutMeta::default(), Layout::Direct, None)
    }

    /// Publishes a message to every connection, on every instance.
    pub fn broadcast<M: Message>(&self, msg: &M) -> PublishFuture {
        self.encode_and_publish(
            internal::ALL,
            msg,
            OutMeta::default(),
            Layout::Publication,
            None,
        )
    }

    fn encode_and_publish<M: Message>(
        &self,
        topic: &str,
        msg: &M,
        meta: OutMeta<'_>,
        layout: Layout,
        exclude: Option<ClientId>,
    ) -> PublishFuture {
        match wire::encode_message(msg, meta, layout) {
            Ok(frame) => PublishFuture(self.pubsub.publish(topic, frame, exclude)),
            Err(e) => PublishFuture::ready(PublishResult::failed(e)),
        }
    }

    /// How many connections subscribe to `topic`, when the engine knows.
    pub async fn subscriber_count(&self, topic: &str) -> Option<usize> {
        self.pubsub.subscriber_count(topic).await
    }
}

/// The outcome of a publication already handed to the engine. Awaiting it is optional: the
/// publication goes out whether or not it is awaited.
#[must_use = "the publication is already sent; await this to learn whether it succeeded"]
pub struct PublishFuture(BoxFuture<'static, PublishResult>);

impl PublishFuture {
    fn ready(result: PublishResult) -> Self {
        PublishFuture(Box::pin(std::future::ready(result)))
    }

    pub(crate) fn failed(error: WsError) -> Self {
        Self::ready(PublishResult::failed(error))
    }
}

impl Future for PublishFuture {
    type Output = PublishResult;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<PublishResult> {
        self.0.as_mut().poll(cx)
    }
}

/// Names of the framework's own topics. They start with `#`, which user topics cannot contain.
pub(crate) mod internal {
    use crate::pubsub::ClientId;

    /// Every connection.
    pub const ALL: &str = "#all";

    /// One connection.
    pub fn client(id: ClientId) -> String {
        format!("#client:{id}")
    }

    /// Every session of a user.
    pub fn user(id: &str) -> String {
        format!("#user:{id}")
    }
}
