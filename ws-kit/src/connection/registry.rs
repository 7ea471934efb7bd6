//! The connections of this instance, by client id ([`Registry`]), and the read-only views the app
//! gets of them ([`Clients`]: all, of a user, in a topic).

use super::{ConnInner, Connection};
use crate::pubsub::{ClientId, PubSub, internal};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// Shards of the registry: opens and closes on many cores rarely meet on one lock.
const SHARDS: usize = 16;

/// Every open connection of a router on this instance. Holds weak references: a connection's
/// life is its read loop's, never the registry's.
pub(crate) struct Registry<D> {
    shards: Box<[Mutex<Shard<D>>]>,
}

type Shard<D> = HashMap<ClientId, Weak<ConnInner<D>>>;

impl<D> Default for Registry<D> {
    fn default() -> Self {
        Registry {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl<D> Registry<D> {
    fn shard(&self, id: ClientId) -> MutexGuard<'_, Shard<D>> {
        // UUID v7's last bytes are random.
        let index = id.as_bytes()[15] as usize % SHARDS;
        self.shards[index].lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn insert(&self, conn: &Connection<D>) {
        self.shard(conn.inner.id)
            .insert(conn.inner.id, Arc::downgrade(&conn.inner));
    }

    pub(crate) fn remove(&self, id: ClientId) {
        self.shard(id).remove(&id);
    }

    fn get(&self, id: ClientId) -> Option<Connection<D>> {
        let inner = self.shard(id).get(&id)?.upgrade()?;
        Some(Connection { inner })
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    fn all(&self) -> Vec<Connection<D>> {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            all.extend(
                shard
                    .values()
                    .filter_map(Weak::upgrade)
                    .map(|inner| Connection { inner }),
            );
        }
        all
    }
}

/// A read-only view of this instance's connections, as the Ignis helper's `getClients`,
/// `getClientsByUser` and `getClientsByRoom` give them. From [`Connection::clients`] in handlers
/// and hooks, or [`Service::clients`](crate::Service::clients).
///
/// Lists are sorted by client id (UUID v7: the order the connections opened in). Finding a
/// user's or a topic's connections costs what they number, not what the instance holds: the
/// pub/sub engine's own registry of local subscribers answers. Only this instance's connections
/// are listed; to reach a user's sessions everywhere, `send_to_user`.
///
/// ```
/// use ws_kit::{handler, Ctx, Message, WsError};
///
/// #[derive(Message)]
/// #[rpc(response = Sessions)]
/// struct MySessions {}
///
/// #[derive(Message)]
/// struct Sessions { client_ids: Vec<String> }
///
/// #[handler]
/// async fn my_sessions(ctx: Ctx<MySessions>) -> Result<Sessions, WsError> {
///     let user = ctx.user_id().unwrap_or_default();
///     let client_ids = ctx.clients().of_user(&user).iter().map(|c| c.client_id().to_string()).collect();
///     Ok(Sessions { client_ids })
/// }
/// ```
pub struct Clients<D> {
    pub(super) registry: Arc<Registry<D>>,
    pub(super) pubsub: Arc<dyn PubSub>,
}

impl<D> fmt::Debug for Clients<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Clients")
            .field("count", &self.registry.len())
            .finish_non_exhaustive()
    }
}

impl<D: Send + Sync + 'static> Clients<D> {
    /// How many connections are open.
    pub fn count(&self) -> usize {
        self.registry.len()
    }

    /// Every open connection.
    pub fn all(&self) -> Vec<Connection<D>> {
        sorted(self.registry.all())
    }

    /// The connection with this client id, if it is open here.
    pub fn get(&self, client_id: ClientId) -> Option<Connection<D>> {
        self.registry.get(client_id)
    }

    /// The connections indexed under `user_id` (`set_user_id`, `Router::user_id_from`).
    pub fn of_user(&self, user_id: &str) -> Vec<Connection<D>> {
        match self.pubsub.local_members(&internal::user(user_id)) {
            Some(ids) => self.lookup(ids),
            None => self.filter(|c| c.with_user_id(|u| u == Some(user_id))),
        }
    }

    /// The connections subscribed to `topic`.
    pub fn in_topic(&self, topic: &str) -> Vec<Connection<D>> {
        match self.pubsub.local_members(topic) {
            // A connection in the engine's list whose subscription is being undone (it just
            // left, or its `subscribe` failed the topic limit check) is not listed.
            Some(ids) => {
                let mut found = self.lookup(ids);
                found.retain(|c| c.is_subscribed(topic));
                found
            }
            None => self.filter(|c| c.is_subscribed(topic)),
        }
    }

    fn lookup(&self, ids: Vec<ClientId>) -> Vec<Connection<D>> {
        sorted(
            ids.into_iter()
                .filter_map(|id| self.registry.get(id))
                .collect(),
        )
    }

    fn filter(&self, keep: impl Fn(&Connection<D>) -> bool) -> Vec<Connection<D>> {
        sorted(self.registry.all().into_iter().filter(keep).collect())
    }
}

fn sorted<D>(mut connections: Vec<Connection<D>>) -> Vec<Connection<D>> {
    connections.sort_by_key(|c| c.inner.id);
    connections
}
