//! The router builder, [`Router`]: routes, middleware, lifecycle hooks, the pub/sub engine and
//! the application's state, frozen into an [`App`] when a server starts.

use crate::app::{App, CloseHook, OpenHook};
use crate::auth::{AuthGate, Authenticate, InBandAuth};
use crate::connection::Connection;
use crate::connection::shared::{AuthorizeHook, ErrorHook, Limits, Shared, TopicAction, UserIdFn};
use crate::error::{Error, WsError};
use crate::event::{CloseInfo, ErrorEvent};
use crate::handler::{Handler, IntoRoute, Route};
use crate::message::{EventMessage, Message, RpcMessage};
use crate::middleware::Middleware;
use crate::publisher::Publisher;
use crate::pubsub::{MemoryPubSub, PubSub};
use crate::routes::Routes;
use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

/// Routes messages to handlers, with middleware, lifecycle hooks, a pub/sub engine and the
/// application's state.
///
/// `D` is the per-connection data (set by `authenticate`, or `D::default()`); `S` the state every
/// handler shares (`Router::with_state`, read with [`Ctx::state`](crate::Ctx::state)).
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
///
/// With shared state (a store, a configuration), handlers name its type as `Ctx`'s third
/// parameter, and the compiler checks that every handler of the router agrees:
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use ws_kit::{handler, routes, Ctx, Message, Router};
///
/// #[derive(Default)]
/// struct Board { items: Mutex<Vec<String>> }
///
/// #[derive(Message)]
/// struct AddItem { text: String }
///
/// #[handler]
/// async fn add_item(ctx: Ctx<AddItem, (), Arc<Board>>) {
///     ctx.state().items.lock().unwrap().push(ctx.payload.text.clone());
/// }
///
/// let router = Router::with_state(Arc::new(Board::default())).routes(routes![add_item]);
/// ```
pub struct Router<D = (), S = ()> {
    tables: Vec<Routes<D>>,
    middleware: Vec<Arc<dyn Middleware<D>>>,
    on_open: Vec<OpenHook<D>>,
    on_close: Vec<CloseHook<D>>,
    on_error: Vec<ErrorHook>,
    pubsub: Arc<dyn PubSub>,
    authorize: Vec<AuthorizeHook<D>>,
    user_id: Option<UserIdFn<D>>,
    state: Arc<S>,
    ordered: bool,
    auth: Option<AuthGate>,
    kept: crate::pubsub::KeptTopics,
    presence_hooks: Vec<crate::pubsub::PresenceHook>,
}

impl<D, S> fmt::Debug for Router<D, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("tables", &self.tables)
            .field("middleware", &self.middleware.len())
            .field("ordered", &self.ordered)
            .finish_non_exhaustive()
    }
}

impl<D: Send + Sync + 'static> Default for Router<D> {
    fn default() -> Self {
        Self::new()
    }
}

impl<D: Send + Sync + 'static> Router<D> {
    /// An empty router with the in-memory pub/sub engine and no state.
    pub fn new() -> Self {
        Router::with_state(())
    }
}

impl<D: Send + Sync + 'static, S: Send + Sync + 'static> Router<D, S> {
    /// An empty router whose handlers share `state` (read with [`Ctx::state`](crate::Ctx::state);
    /// hooks and middleware reach it through [`Connection::state`]). Put what the handlers
    /// change behind a lock or in a store; wrap it in an `Arc` to keep a handle of your own.
    pub fn with_state(state: S) -> Self {
        Router {
            tables: Vec::new(),
            middleware: Vec::new(),
            on_open: Vec::new(),
            on_close: Vec::new(),
            on_error: Vec::new(),
            pubsub: Arc::new(MemoryPubSub::new()),
            authorize: Vec::new(),
            user_id: None,
            state: Arc::new(state),
            ordered: false,
            auth: None,
            kept: crate::pubsub::KeptTopics::default(),
            presence_hooks: Vec::new(),
        }
    }

    /// Adds the handler of an event message (or a [`Route`](crate::Route): a handler with
    /// `.middleware(..)` or `.ordered()`).
    pub fn on<R>(mut self, route: R) -> Self
    where
        R: IntoRoute<D, S>,
        <R::Handler as Handler>::Message: EventMessage,
    {
        self.tables.push(Routes::single(route).erase());
        self
    }

    /// Adds the handler of an RPC message (one with `#[rpc(response = ..)]`).
    pub fn rpc<R>(mut self, route: R) -> Self
    where
        R: IntoRoute<D, S>,
        <R::Handler as Handler>::Message: RpcMessage,
    {
        self.tables.push(Routes::single(route).erase());
        self
    }

    /// Authenticates connections in-band (docs/protocol.md 7): `route` handles the app's
    /// authentication request, an RPC. Until it succeeds on a connection, only it and
    /// `__heartbeat` are dispatched there: any other message gets `UNAUTHENTICATED` before any
    /// validation (unless [`InBandAuth::hold_until_authenticated`] makes messages sent while an
    /// attempt runs wait for its outcome). Attempts run one at a time: another authentication
    /// request waits for the running one to end. On success the connection is authenticated
    /// from the next message on; the handler indexes it under its user with
    /// [`Connection::set_user_id`] and may subscribe it to its default topics. Its error with
    /// code `UNAUTHENTICATED` is sent, then the connection is closed with 4003; other errors
    /// (a malformed request, a store that is down) leave it open to try again. A connection not
    /// authenticated within `auth.timeout` is closed with 4001. A connection whose upgrade gave
    /// it a user id ([`Router::user_id_from`]) is authenticated from the start.
    ///
    /// The handler may accept a key for sealed delivery ([`Connection::accept_sealing`]); with
    /// [`InBandAuth::require_encryption`] it must.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ws_kit::{handler, Ctx, InBandAuth, Message, Router, WsError};
    ///
    /// #[derive(Message)]
    /// #[rpc(response = Authenticated)]
    /// struct Authenticate { token: String }
    ///
    /// #[derive(Message)]
    /// struct Authenticated { user_id: String }
    ///
    /// #[handler]
    /// async fn authenticate(ctx: Ctx<Authenticate>) -> Result<Authenticated, WsError> {
    ///     let user_id = match ctx.payload.token.as_str() {
    ///         "alice-token" => "alice",
    ///         _ => return Err(WsError::unauthenticated("unknown token")),
    ///     };
    ///     ctx.set_user_id(user_id).await?;
    ///     Ok(Authenticated { user_id: user_id.into() })
    /// }
    ///
    /// let router = Router::new()
    ///     .in_band_auth(authenticate, InBandAuth::new().timeout(Duration::from_secs(2)));
    /// ```
    pub fn in_band_auth<R>(mut self, route: R, auth: InBandAuth) -> Self
    where
        R: IntoRoute<D, S>,
        <R::Handler as Handler>::Message: RpcMessage,
    {
        let route = route.into_route();
        let wrapped = Route {
            handler: Authenticate {
                handler: route.handler,
                require_encryption: auth.require_encryption,
            },
            middleware: route.middleware,
            ordered: route.ordered,
        };
        self.auth = Some(AuthGate {
            tag: <<R::Handler as Handler>::Message as Message>::TYPE,
            timeout: auth.timeout,
            hold: auth.hold,
        });
        self.tables.push(Routes::single(wrapped).erase());
        self
    }

    /// The schemas of the messages this router dispatches, in the order their routes were
    /// added; a request's carries its response's. What [`TypeScript::router`] renders.
    ///
    /// [`TypeScript::router`]: crate::typescript::TypeScript::router
    pub fn message_schemas(&self) -> Vec<crate::schema::MessageSchema> {
        self.tables.iter().flat_map(|t| t.schemas()).collect()
    }

    /// Adds a route table built by `routes![..]` (events and RPCs alike).
    pub fn routes(mut self, routes: Routes<D, S>) -> Self {
        self.tables.push(routes.erase());
        self
    }

    /// Adds global middleware: it runs for every message, after validation, in the order added,
    /// before any per-message middleware.
    pub fn middleware(mut self, middleware: impl Middleware<D>) -> Self {
        self.middleware.push(Arc::new(middleware));
        self
    }

    /// Dispatches every message in order: a frame's handler starts only after the previous
    /// frame's handler finished. `$ws:abort` and `__heartbeat` still act at once; frames that
    /// wait are read and held (up to the payload limit's worth of bytes, then the socket waits).
    ///
    /// By default (docs/protocol.md 2a) each handler runs until it first waits before the next frame
    /// is dispatched, and handlers that wait run concurrently: a `JOIN` whose handler awaits may
    /// still be subscribing when the next frame's handler publishes. Use this, or
    /// [`Handler::ordered`] for chosen messages, when one message must see the effects of the one
    /// before.
    pub fn ordered(mut self) -> Self {
        self.ordered = true;
        self
    }

    /// Adds the routes, middleware and hooks of a feature router. Its global middleware runs after
    /// this router's. Two routes for one type tag are an error when the server starts. This
    /// router's state, engine and ordering are kept.
    pub fn merge(mut self, other: Router<D, S>) -> Self {
        self.tables.extend(other.tables);
        self.middleware.extend(other.middleware);
        self.on_open.extend(other.on_open);
        self.on_close.extend(other.on_close);
        self.on_error.extend(other.on_error);
        self.authorize.extend(other.authorize);
        self.user_id = self.user_id.or(other.user_id);
        self.ordered |= other.ordered;
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

    /// Keeps the last publications of the topics matching `pattern` (a topic, or a prefix and
    /// `*`: `"room:*"`), so a subscriber that comes back can recover what it missed
    /// ([`Connection::subscribe_from`](crate::Connection::subscribe_from), docs/protocol.md 8a). The first
    /// matching rule wins.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ws_kit::Router;
    /// use ws_kit::pubsub::Keep;
    ///
    /// let router = Router::<()>::new().keep("room:*", Keep::last(100).for_at_most(Duration::from_secs(300)));
    /// ```
    pub fn keep(mut self, pattern: &str, keep: crate::pubsub::Keep) -> Self {
        self.kept.add(pattern, keep);
        self
    }

    /// Runs `hook` on every presence join and leave (docs/protocol.md 8b), of every topic,
    /// whichever instance it happened on: a connection that set its presence
    /// ([`Connection::set_presence`](crate::Connection::set_presence)), left the topic or closed,
    /// or whose instance died (once its lease ran out). Hooks run inline: keep them short.
    pub fn on_presence(
        mut self,
        hook: impl Fn(&crate::pubsub::PresenceEvent) + Send + Sync + 'static,
    ) -> Self {
        self.presence_hooks.push(Arc::new(hook));
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
        Publisher::new(self.pubsub.clone())
    }

    /// Checks the routes and freezes the router.
    pub(crate) fn build(self, limits: Limits) -> Result<Arc<App<D>>, Error> {
        let mut seen = HashSet::new();
        for table in &self.tables {
            for &tag in table.tags() {
                if !seen.insert(tag) {
                    return Err(Error::DuplicateType(tag));
                }
            }
        }
        if !self.kept.is_empty() {
            self.pubsub.keep(self.kept.clone());
        }
        for hook in self.presence_hooks {
            self.pubsub.on_presence(hook);
        }
        let shared = Arc::new(Shared {
            pubsub: self.pubsub,
            limits,
            authorize: self.authorize,
            on_error: self.on_error,
            user_id: self.user_id,
            state: self.state,
            in_band_auth: self.auth.is_some(),
            registry: Arc::default(),
        });
        let any_ordered = self.ordered || self.tables.iter().any(Routes::any_ordered);
        Ok(Arc::new(App {
            any_ordered,
            tables: self.tables,
            middleware: self.middleware.into(),
            on_open: self.on_open,
            on_close: self.on_close,
            shared,
            ordered: self.ordered,
            auth: self.auth,
        }))
    }
}
