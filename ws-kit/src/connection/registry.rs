//! The connections of this instance, by client id ([`Registry`]), and the read-only views the app
//! gets of them ([`Clients`]: all, of a user, in a topic).

use super::{ConnInner, Connection};
use crate::pubsub::{ClientId, PubSub, internal};
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// Shards of the registry: opens and closes on many cores rarely meet on one lock.
pub(crate) const SHARDS: usize = 16;

/// Every open connection of a router on this instance. Holds weak references: a connection's
/// life is its read loop's, never the registry's.
///
/// It is also how the service reaches every connection at once: the heartbeat sweep
/// (`heartbeat.rs`) and graceful shutdown go through it, so an idle connection holds no timer
/// and no shutdown watch of its own.
pub(crate) struct Registry<D> {
    shards: Box<[Mutex<Shard<D>>]>,
    /// Shutdown started: every connection is closed, and one inserted from now on is told so.
    stopping: AtomicBool,
    /// The heartbeat sweep runs.
    pub(super) sweeping: AtomicBool,
}

type Shard<D> = HashMap<ClientId, Weak<ConnInner<D>>>;

impl<D> Default for Registry<D> {
    fn default() -> Self {
        Registry {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            stopping: AtomicBool::new(false),
            sweeping: AtomicBool::new(false),
        }
    }
}

impl<D> Registry<D> {
    fn shard(&self, id: ClientId) -> MutexGuard<'_, Shard<D>> {
        // UUID v7's last bytes are random.
        let index = id.as_bytes()[15] as usize % SHARDS;
        self.shards[index].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lists a connection. False when shutdown has started: the connection must close (1001).
    ///
    /// The flag is read under the shard's lock, and [`close_all`](Self::close_all) sets it
    /// before it takes the locks: a connection is either seen by `close_all` or sees the flag.
    pub(crate) fn insert(&self, conn: &Connection<D>) -> bool {
        let mut shard = self.shard(conn.inner.id);
        shard.insert(conn.inner.id, Arc::downgrade(&conn.inner));
        !self.stopping.load(Ordering::SeqCst)
    }

    /// Whether shutdown has started.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Shutdown: closes every connection with 1001 "Server shutting down", and every one
    /// listed later at once (see [`insert`](Self::insert)).
    pub(crate) fn close_all(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for index in 0..SHARDS {
            self.for_each_in_shard(index, |inner| {
                inner
                    .out
                    .close(crate::close_code::AWAY, "Server shutting down");
            });
        }
    }

    /// Calls `f` on each open connection of one shard, outside its lock (a connection dropped
    /// here runs the app's `Drop` of its data, which must not find the shard locked).
    pub(super) fn for_each_in_shard(&self, index: usize, mut f: impl FnMut(&ConnInner<D>)) {
        let open: Vec<Arc<ConnInner<D>>> = {
            let shard = self.shards[index].lock().unwrap_or_else(|e| e.into_inner());
            shard.values().filter_map(Weak::upgrade).collect()
        };
        for inner in &open {
            f(inner);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::shared::Limits;
    use std::sync::Barrier;

    /// Shutdown's `close_all` racing `insert` on other threads, many times: every connection
    /// either was closed by it or was told at insert that shutdown started (ARCHITECTURE.md,
    /// "Shutdown reaches every connection, once").
    #[test]
    fn close_all_and_insert_never_miss_each_other() {
        for round in 0..300 {
            let app = crate::Router::new().build(Limits::default()).unwrap();
            let registry = app.shared.registry.clone();
            let conns: Vec<Connection<()>> = (0..64)
                .map(|_| Connection::new(uuid::Uuid::now_v7(), None, (), app.shared.clone(), None))
                .collect();
            let barrier = Barrier::new(3);
            let (first, second) = conns.split_at(32);
            let admitted: Vec<bool> = std::thread::scope(|s| {
                let (registry, barrier) = (&registry, &barrier);
                let insert = move |conns: &[Connection<()>]| {
                    barrier.wait();
                    conns.iter().map(|c| registry.insert(c)).collect::<Vec<_>>()
                };
                let a = s.spawn(move || insert(first));
                let b = s.spawn(move || insert(second));
                barrier.wait();
                registry.close_all();
                let mut admitted = a.join().unwrap();
                admitted.extend(b.join().unwrap());
                admitted
            });
            for (conn, admitted) in conns.iter().zip(admitted) {
                assert!(
                    !admitted || conn.inner.out.is_closing(),
                    "round {round}: a connection listed during shutdown was neither closed nor told"
                );
            }
        }
    }
}
