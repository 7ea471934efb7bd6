//! A built router, [`App`]: what the read loop of every connection consults — the route tables,
//! the global middleware, the lifecycle hooks, ordered dispatch — plus the part the connections
//! themselves hold ([`Shared`]).

use crate::auth::AuthGate;
use crate::connection::Connection;
use crate::connection::shared::Shared;
use crate::error::WsError;
use crate::event::CloseInfo;
use crate::middleware::Chain;
use crate::routes::{DynRoute, Routes};
use futures_util::future::BoxFuture;
use std::fmt;
use std::sync::Arc;

pub(crate) type OpenHook<D> =
    Arc<dyn Fn(Connection<D>) -> BoxFuture<'static, Result<(), WsError>> + Send + Sync>;
pub(crate) type CloseHook<D> =
    Arc<dyn Fn(Connection<D>, CloseInfo) -> BoxFuture<'static, ()> + Send + Sync>;

/// A frozen router.
pub(crate) struct App<D> {
    pub(crate) tables: Vec<Routes<D>>,
    pub(crate) middleware: Chain<D>,
    pub(crate) on_open: Vec<OpenHook<D>>,
    pub(crate) on_close: Vec<CloseHook<D>>,
    pub(crate) shared: Arc<Shared<D>>,
    /// Every message is dispatched in order (`Router::ordered`).
    pub(crate) ordered: bool,
    /// Some message is dispatched in order (the router, or a route): the read loop then looks at
    /// each frame's route before dispatching it.
    pub(crate) any_ordered: bool,
    /// In-band authentication: the request's type and the timeout (`Router::in_band_auth`).
    pub(crate) auth: Option<AuthGate>,
}

impl<D> fmt::Debug for App<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App")
            .field("tables", &self.tables)
            .field("ordered", &self.ordered)
            .finish_non_exhaustive()
    }
}

impl<D> App<D> {
    /// The route of a type tag.
    pub(crate) fn find(&self, tag: &str) -> Option<&dyn DynRoute<D>> {
        self.tables.iter().find_map(|t| t.find(tag))
    }
}
