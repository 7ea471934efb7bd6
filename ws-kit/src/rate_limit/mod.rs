//! Rate limits (docs/protocol.md 7a): token buckets as middleware.
//!
//! A [`RateLimit`] is middleware that takes `cost` tokens (1 unless set) from a bucket before the
//! handler runs, after validation. Each bucket holds up to `capacity` tokens and gains
//! `tokens_per_second` ([`Bucket`]); a new bucket starts full. The application picks the key that
//! selects the bucket: the connection (the default), the user, the peer's IP address, one bucket
//! for everyone, or a function of its own, each optionally per message type.
//!
//! Over the limit, the message is refused and spends nothing: its handler does not run, and the
//! client gets `RESOURCE_EXHAUSTED` (as the request's one `RPC_ERROR` terminal, or as an `ERROR`
//! for an event):
//!
//! ```json
//! {"code":"RESOURCE_EXHAUSTED","message":"Rate limit exceeded",
//!  "details":{"cost":1,"capacity":2,"remaining":0},"retryAfterMs":1000}
//! ```
//!
//! `remaining` is the whole tokens in the bucket (rounded down); `retryAfterMs` the time until the
//! bucket holds `cost` tokens again, rounded up to the millisecond, and at least 1 (see
//! [`Decision::Limited`] for how exact it is). A `cost` above the `capacity` can never pass: it is
//! answered `FAILED_PRECONDITION` with `details {cost, capacity}`, and no bucket is touched.
//!
//! The buckets live in a [`LimitStore`]: [`MemoryStore`] (this process) or, with the `redis`
//! feature, `RedisStore` (shared by every instance, one atomic script on Redis's clock). Two
//! limiters with the same name, store and key share a bucket; limiters of different names never
//! do.
//!
//! ```
//! use ws_kit::rate_limit::{Bucket, RateLimit};
//! use ws_kit::{Ctx, Message, Router, WsError, handler, routes};
//!
//! #[derive(Message)]
//! #[rpc(response = Posted)]
//! struct Post {
//!     text: String,
//! }
//!
//! #[derive(Message)]
//! struct Posted {
//!     id: u64,
//! }
//!
//! #[derive(Message)]
//! #[rpc(response = Report)]
//! struct Export;
//!
//! #[derive(Message)]
//! struct Report {
//!     rows: u64,
//! }
//!
//! #[handler]
//! async fn post(ctx: Ctx<Post>) -> Result<Posted, WsError> {
//!     Ok(Posted { id: ctx.payload.text.len() as u64 })
//! }
//!
//! #[handler]
//! async fn export(_ctx: Ctx<Export>) -> Result<Report, WsError> {
//!     Ok(Report { rows: 0 })
//! }
//!
//! // Every message: 100 in a burst, then 50 a second, per IP address.
//! let per_ip = RateLimit::in_memory("ip", Bucket::new(100, 50.0)).by_ip();
//! // Per user (per connection until it has a user id): 10 in a burst, then 2 a second; an
//! // export costs 5 of the same tokens.
//! let per_user = RateLimit::in_memory("user", Bucket::new(10, 2.0)).by_user();
//! let router = Router::new().middleware(per_ip).routes(routes![
//!     post.middleware(per_user.clone()),
//!     export.middleware(per_user.cost(5)),
//! ]);
//! # let _ = router;
//! ```

mod bucket;
mod memory;
#[cfg(feature = "redis")]
mod redis;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::RedisStore;
pub use bucket::{Bucket, Decision};
pub use memory::MemoryStore;

use crate::error::WsError;
use crate::middleware::{Incoming, Middleware, Next};
use futures_util::future::BoxFuture;
use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Where buckets are kept. A store takes tokens from the bucket of a key atomically: two takes of
/// one key never both spend the same tokens.
///
/// Keys arrive namespaced by the limiter (its name, the message type when per type, the kind of
/// key); a store uses them as they are.
pub trait LimitStore: Send + Sync + 'static {
    /// Takes `cost` tokens (`1 ..= bucket.capacity()`) from the bucket of `key`, refilled to now,
    /// or refuses and takes nothing. A store that answers at once (in memory) returns
    /// [`Take::Ready`], which costs no allocation; one that waits (Redis) returns
    /// [`Take::Pending`].
    fn take(&self, key: &str, cost: u32, bucket: Bucket) -> Take;
}

impl<T: LimitStore + ?Sized> LimitStore for Arc<T> {
    fn take(&self, key: &str, cost: u32, bucket: Bucket) -> Take {
        (**self).take(key, cost, bucket)
    }
}

/// A store's answer to [`LimitStore::take`]: ready now, or later. It is a future either way.
pub enum Take {
    /// Decided at once.
    Ready(Decision),
    /// Decided when the future completes (a store that asks a server).
    Pending(BoxFuture<'static, Decision>),
}

impl fmt::Debug for Take {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Take::Ready(decision) => f.debug_tuple("Ready").field(decision).finish(),
            Take::Pending(_) => f.write_str("Pending"),
        }
    }
}

impl Future for Take {
    type Output = Decision;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Decision> {
        match self.get_mut() {
            Take::Ready(decision) => Poll::Ready(*decision),
            Take::Pending(future) => future.as_mut().poll(cx),
        }
    }
}

/// A function of the message, shared by clones of a limiter.
type ByMessage<D, T> = Arc<dyn Fn(&Incoming<D>) -> T + Send + Sync>;

/// What selects a message's bucket (besides the limiter's name and, optionally, the type).
enum Who<D> {
    Client,
    User,
    Ip,
    Everyone,
    Custom(ByMessage<D, String>),
}

impl<D> Clone for Who<D> {
    fn clone(&self) -> Self {
        match self {
            Who::Client => Who::Client,
            Who::User => Who::User,
            Who::Ip => Who::Ip,
            Who::Everyone => Who::Everyone,
            Who::Custom(f) => Who::Custom(f.clone()),
        }
    }
}

impl<D> fmt::Debug for Who<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Who::Client => "client",
            Who::User => "user",
            Who::Ip => "ip",
            Who::Everyone => "everyone",
            Who::Custom(_) => "custom",
        })
    }
}

/// What a message costs.
enum Cost<D> {
    Fixed(u32),
    By(ByMessage<D, u32>),
}

impl<D> Clone for Cost<D> {
    fn clone(&self) -> Self {
        match self {
            Cost::Fixed(n) => Cost::Fixed(*n),
            Cost::By(f) => Cost::By(f.clone()),
        }
    }
}

impl<D> fmt::Debug for Cost<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cost::Fixed(n) => write!(f, "{n}"),
            Cost::By(_) => f.write_str("computed"),
        }
    }
}

/// Rate-limit middleware: a token bucket per key (docs/protocol.md 7a). See the
/// [module docs](crate::rate_limit) for the wire behaviour and an example.
///
/// Attach it to the router (`Router::middleware`, every message) or to routes
/// (`routes![h.middleware(limit)]`). Cloning is cheap, and clones share the buckets: use
/// [`RateLimit::cost`] on a clone to charge another amount against the same buckets.
pub struct RateLimit<D = ()> {
    /// `<name length>:<name>:`, the start of every key: names never collide.
    namespace: Arc<str>,
    bucket: Bucket,
    store: Arc<dyn LimitStore>,
    who: Who<D>,
    per_type: bool,
    cost: Cost<D>,
}

impl<D> Clone for RateLimit<D> {
    fn clone(&self) -> Self {
        RateLimit {
            namespace: self.namespace.clone(),
            bucket: self.bucket,
            store: self.store.clone(),
            who: self.who.clone(),
            per_type: self.per_type,
            cost: self.cost.clone(),
        }
    }
}

impl<D> fmt::Debug for RateLimit<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("namespace", &self.namespace)
            .field("bucket", &self.bucket)
            .field("key", &self.who)
            .field("per_type", &self.per_type)
            .field("cost", &self.cost)
            .finish_non_exhaustive()
    }
}

impl<D: Send + Sync + 'static> RateLimit<D> {
    /// A limiter named `name` with buckets of `bucket` in `store`, one per connection (client id),
    /// each message costing 1.
    ///
    /// The name namespaces the keys: limiters of different names never share a bucket, while two
    /// limiters with the same name, store and key do (on every instance, with a shared store).
    pub fn new(name: &str, bucket: Bucket, store: impl LimitStore) -> Self {
        RateLimit {
            namespace: format!("{}:{name}:", name.len()).into(),
            bucket,
            store: Arc::new(store),
            who: Who::Client,
            per_type: false,
            cost: Cost::Fixed(1),
        }
    }

    /// [`RateLimit::new`] with a [`MemoryStore`] of its own (share it with clones of this
    /// limiter, or pass one `MemoryStore` to several limiters).
    pub fn in_memory(name: &str, bucket: Bucket) -> Self {
        RateLimit::new(name, bucket, MemoryStore::new())
    }

    /// One bucket per connection (its client id). The default.
    pub fn by_client(mut self) -> Self {
        self.who = Who::Client;
        self
    }

    /// One bucket per user ([`Connection::user_id`](crate::Connection::user_id), as set by
    /// `set_user_id` or `Router::user_id_from`), shared by all of that user's connections. A
    /// connection without a user id has a bucket of its own (by client id) until it gets one.
    pub fn by_user(mut self) -> Self {
        self.who = Who::User;
        self
    }

    /// One bucket per peer IP address ([`Connection::remote_addr`](crate::Connection::remote_addr);
    /// behind a proxy that is the proxy's, so key on a forwarded address with
    /// [`RateLimit::key`] instead). An IPv6 peer is keyed by its /64 network, which one host
    /// usually holds whole; an IPv4-mapped IPv6 address counts as the IPv4 address. A connection
    /// without an address (a stream served without one, the testing harness) has a bucket of its
    /// own (by client id).
    pub fn by_ip(mut self) -> Self {
        self.who = Who::Ip;
        self
    }

    /// One bucket for every message, whoever sent it (with [`RateLimit::by_type`]: one per type).
    pub fn global(mut self) -> Self {
        self.who = Who::Everyone;
        self
    }

    /// One bucket per string `key` returns (a room in the connection's data, a tenant, a
    /// forwarded address, ...). Replaces `by_client`, `by_user`, `by_ip` and `global`; combines
    /// with [`RateLimit::by_type`].
    pub fn key(mut self, key: impl Fn(&Incoming<D>) -> String + Send + Sync + 'static) -> Self {
        self.who = Who::Custom(Arc::new(key));
        self
    }

    /// A bucket per message type as well: `.by_user().by_type()` limits each user's messages of
    /// each type separately, so one busy type cannot starve the others.
    pub fn by_type(mut self) -> Self {
        self.per_type = true;
        self
    }

    /// Each message costs `cost` tokens (default 1). A cost above the bucket's capacity can never
    /// pass (`FAILED_PRECONDITION`); a cost of 0 lets every message through without touching the
    /// store. Called on a clone, it charges another amount against the same buckets.
    pub fn cost(mut self, cost: u32) -> Self {
        self.cost = Cost::Fixed(cost);
        self
    }

    /// Each message costs what `cost` returns for it (as [`RateLimit::cost`]).
    pub fn cost_by(mut self, cost: impl Fn(&Incoming<D>) -> u32 + Send + Sync + 'static) -> Self {
        self.cost = Cost::By(Arc::new(cost));
        self
    }

    /// The buckets' parameters.
    pub fn bucket(&self) -> Bucket {
        self.bucket
    }

    /// Takes `cost` tokens from this limiter's bucket for a key of the caller's choosing, as
    /// [`RateLimit::key`] would have named it: for a limit inside a handler, after some lookup.
    /// Returns the whole tokens left, or the error the middleware would send.
    pub async fn take(&self, key: &str, cost: u32) -> Result<u32, WsError> {
        let capacity = self.bucket.capacity();
        if cost > capacity {
            return Err(cost_above_capacity(cost, capacity));
        }
        if cost == 0 {
            return Ok(capacity);
        }
        let mut bucket_key = String::with_capacity(self.namespace.len() + 2 + key.len());
        bucket_key.push_str(&self.namespace);
        bucket_key.push_str("k:");
        bucket_key.push_str(key);
        match self.store.take(&bucket_key, cost, self.bucket).await {
            Decision::Allowed { remaining } => Ok(remaining),
            limited => Err(limited_error(cost, capacity, limited)),
        }
    }

    /// The key of `incoming`'s bucket in the store. Every part of variable length but the last
    /// carries its length, so no two different combinations spell the same key.
    fn write_key(&self, key: &mut String, incoming: &Incoming<D>) {
        key.push_str(&self.namespace);
        if self.per_type {
            let ty = incoming.message_type();
            let _ = write!(key, "t{}:{ty}:", ty.len());
        }
        match &self.who {
            Who::Client => push_client(key, incoming),
            Who::User => incoming.with_user_id(|user| match user {
                Some(user) => {
                    key.push_str("u:");
                    key.push_str(user);
                }
                None => push_client(key, incoming),
            }),
            Who::Ip => match incoming.remote_addr() {
                Some(addr) => push_ip(key, addr.ip()),
                None => push_client(key, incoming),
            },
            Who::Everyone => key.push('*'),
            Who::Custom(f) => {
                key.push_str("k:");
                key.push_str(&f(incoming));
            }
        }
    }

    /// Asks the store about `incoming`'s bucket. The key is written into a buffer of the
    /// thread's, reused from message to message: the hot path allocates no key (a store that
    /// keeps the key, or answers later, copies it).
    fn take_for(&self, incoming: &Incoming<D>, cost: u32) -> Take {
        thread_local! {
            static KEY: RefCell<String> = const { RefCell::new(String::new()) };
        }
        KEY.with(|buffer| match buffer.try_borrow_mut() {
            Ok(mut key) => {
                key.clear();
                self.write_key(&mut key, incoming);
                let take = self.store.take(&key, cost, self.bucket);
                // A huge custom key is not kept around.
                if key.capacity() > 1024 {
                    *key = String::new();
                }
                take
            }
            // A store that itself runs a limiter synchronously.
            Err(_) => {
                let mut key = String::new();
                self.write_key(&mut key, incoming);
                self.store.take(&key, cost, self.bucket)
            }
        })
    }
}

fn push_client<D: Send + Sync + 'static>(key: &mut String, incoming: &Incoming<D>) {
    key.push_str("c:");
    let mut buf = uuid::Uuid::encode_buffer();
    key.push_str(incoming.client_id().as_simple().encode_lower(&mut buf));
}

fn push_ip(key: &mut String, ip: IpAddr) {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let _ = write!(key, "i:{v4}");
        }
        IpAddr::V6(v6) => {
            let network = u128::from(v6) & !((1u128 << 64) - 1);
            let _ = write!(key, "i:{}/64", std::net::Ipv6Addr::from(network));
        }
    }
}

impl<D: Send + Sync + 'static> Middleware<D> for RateLimit<D> {
    fn handle(
        &self,
        incoming: Incoming<D>,
        next: Next<D>,
    ) -> BoxFuture<'static, Result<(), WsError>> {
        let cost = match &self.cost {
            Cost::Fixed(cost) => *cost,
            Cost::By(f) => f(&incoming),
        };
        let capacity = self.bucket.capacity();
        if cost > capacity {
            return Box::pin(std::future::ready(Err(cost_above_capacity(cost, capacity))));
        }
        if cost == 0 {
            return Box::pin(next.run());
        }
        let take = self.take_for(&incoming, cost);
        drop(incoming);
        match take {
            Take::Ready(Decision::Allowed { .. }) => Box::pin(next.run()),
            Take::Ready(limited) => Box::pin(std::future::ready(Err(limited_error(
                cost, capacity, limited,
            )))),
            Take::Pending(decision) => Box::pin(async move {
                match decision.await {
                    Decision::Allowed { .. } => next.run().await,
                    limited => Err(limited_error(cost, capacity, limited)),
                }
            }),
        }
    }
}

/// `RESOURCE_EXHAUSTED` with `details {cost, capacity, remaining}` and `retryAfterMs`.
fn limited_error(cost: u32, capacity: u32, decision: Decision) -> WsError {
    let (remaining, retry_after_ms) = match decision {
        Decision::Limited {
            remaining,
            retry_after_ms,
        } => (remaining, retry_after_ms),
        // Not reached: callers pass refusals only.
        Decision::Allowed { remaining } => (remaining, 1),
    };
    WsError::resource_exhausted("Rate limit exceeded")
        .with_details(serde_json::json!({
            "cost": cost,
            "capacity": capacity,
            "remaining": remaining,
        }))
        .with_retry_after_ms(retry_after_ms)
}

/// `FAILED_PRECONDITION` with `details {cost, capacity}`: this cost can never pass.
fn cost_above_capacity(cost: u32, capacity: u32) -> WsError {
    WsError::failed_precondition("Cost exceeds the rate limit's capacity").with_details(
        serde_json::json!({
            "cost": cost,
            "capacity": capacity,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn errors_carry_the_documented_details() {
        let err = limited_error(
            1,
            2,
            Decision::Limited {
                remaining: 0,
                retry_after_ms: 1000,
            },
        );
        assert_eq!(err.code(), &ErrorCode::ResourceExhausted);
        assert_eq!(
            serde_json::Value::Object(err.details().unwrap().clone()),
            serde_json::json!({"cost": 1, "capacity": 2, "remaining": 0})
        );
        assert_eq!(err.retry_after_ms(), Some(1000));
        assert_eq!(err.retryable(), None);

        let err = cost_above_capacity(5, 2);
        assert_eq!(err.code(), &ErrorCode::FailedPrecondition);
        assert_eq!(
            serde_json::Value::Object(err.details().unwrap().clone()),
            serde_json::json!({"cost": 5, "capacity": 2})
        );
        assert_eq!(err.retry_after_ms(), None);
    }

    #[test]
    fn ipv6_peers_share_their_64() {
        let key = |ip: &str| {
            let mut k = String::new();
            push_ip(&mut k, ip.parse().unwrap());
            k
        };
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:bbbb::2"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("2001:db8:1:2::1"), "i:2001:db8:1:2::/64");
        assert_eq!(key("::ffff:10.0.0.1"), key("10.0.0.1"));
        assert_eq!(key("10.0.0.1"), "i:10.0.0.1");
    }

    #[tokio::test]
    async fn take_by_key_shares_the_limiters_buckets_and_namespace() {
        let store = MemoryStore::new();
        let a = RateLimit::<()>::new("a", Bucket::new(2, 0.001), store.clone());
        let a_too = RateLimit::<()>::new("a", Bucket::new(2, 0.001), store.clone());
        let b = RateLimit::<()>::new("b", Bucket::new(2, 0.001), store.clone());
        assert_eq!(a.take("room", 1).await, Ok(1));
        assert_eq!(a_too.take("room", 1).await, Ok(0));
        let err = a.take("room", 1).await.unwrap_err();
        assert_eq!(err.code(), &ErrorCode::ResourceExhausted);
        // Another name, another bucket.
        assert_eq!(b.take("room", 2).await, Ok(0));
        assert_eq!(
            a.take("room", 3).await.unwrap_err().code(),
            &ErrorCode::FailedPrecondition
        );
        // "a" + "x:y" and "a:x" + "y" must not meet.
        let ax = RateLimit::<()>::new("a:x", Bucket::new(1, 0.001), store.clone());
        assert_eq!(ax.take("y", 1).await, Ok(0));
        assert_eq!(a.take("x:y", 2).await, Ok(0));
    }
}
