//! (feature `redis`) [`RedisStore`]: buckets on Redis, shared by every instance.

use super::bucket::{Bucket, Decision};
use super::memory::MemoryStore;
use super::{LimitStore, Take};
use crate::error::Error;
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{IntoConnectionInfo, Script};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::time::Instant;

/// One take, atomically: `KEYS[1]` the bucket (a hash: `tokens`, `at`), `ARGV` capacity, tokens
/// per second, cost. Returns `{allowed, remaining, retry_after_ms}`.
///
/// The arithmetic is `Bucket::take` (bucket.rs) operation for operation, in the same doubles, so
/// both stores give the same answers; time is Redis's own (`TIME`, microseconds), never an
/// instance's. A bucket's key expires when the bucket would be full again, so idle keys vanish.
/// Numbers are stored with 17 significant digits, which a double survives exactly.
const SCRIPT: &str = r"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local eps = 1e-9
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tokens = capacity
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
if state[1] and state[2] then
  local at = tonumber(state[2])
  if now < at then now = at end
  tokens = math.min(capacity, tonumber(state[1]) + (now - at) * rate / 1000000)
end
if tokens + eps >= cost then
  tokens = math.max(tokens - cost, 0)
  local ttl = math.ceil((capacity - tokens) * 1000 / rate)
  redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
    'at', string.format('%.17g', now))
  redis.call('PEXPIRE', KEYS[1], math.min(math.max(ttl, 1), 9007199254740992))
  return {1, math.floor(tokens + eps), 0}
end
local retry = math.ceil((cost - tokens - eps) * 1000 / rate)
return {0, math.floor(tokens + eps), math.min(math.max(retry, 1), 9007199254740992)}
";

fn script() -> &'static Script {
    static SCRIPT_CELL: OnceLock<Script> = OnceLock::new();
    SCRIPT_CELL.get_or_init(|| Script::new(SCRIPT))
}

/// Buckets on Redis, shared by every instance that uses the same Redis and prefix: each take is
/// one atomic Lua script (`EVALSHA`), timed by Redis's clock (`TIME`), so instances whose clocks
/// disagree still agree on every bucket. A bucket is a hash under
/// `<prefix>{<key>}` (the key in a hash tag, so a Redis Cluster keeps it in one slot) that expires
/// when the bucket would be full again: idle keys leave nothing behind.
///
/// **When Redis fails or is slow.** A take waits at most [`RedisStore::timeout`] (250 ms by
/// default). When Redis errs or does not answer in time, that message is decided by a bucket in
/// this instance's memory instead (same key, same parameters: a [`MemoryStore`] the store keeps
/// for this), and for the next [`RedisStore::recheck_after`] (1 s by default) every take goes
/// straight to those memory buckets without trying Redis, after which the next take tries again.
/// So an outage neither blocks messages nor lifts the limits: each instance enforces them on its
/// own (a client spread over `n` instances may get up to `n` times its allowance meanwhile). The
/// first failure is logged with `tracing::warn!`, the recovery with `tracing::info!`; ask
/// [`RedisStore::is_degraded`] for the state.
///
/// ```no_run
/// use ws_kit::rate_limit::{Bucket, RateLimit, RedisStore};
/// use ws_kit::Router;
///
/// # async fn run() -> Result<(), ws_kit::Error> {
/// let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
/// let per_user = RateLimit::new("user", Bucket::new(20, 5.0), store).by_user();
/// let router = Router::<()>::new().middleware(per_user);
/// # let _ = router;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    conn: crate::redis::conn::Conn,
    prefix: Arc<str>,
    timeout: Duration,
    recheck_after: Duration,
    fallback: MemoryStore,
    health: Arc<Health>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("recheck_after", &self.recheck_after)
            .field("degraded", &self.is_degraded())
            .finish_non_exhaustive()
    }
}

/// Whether Redis is being skipped, and since when it failed.
struct Health {
    epoch: Instant,
    /// Until then (µs since `epoch`), takes go to the fallback without trying Redis.
    skip_until_us: AtomicU64,
    degraded: AtomicBool,
}

impl Health {
    fn now_us(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.epoch)
            .as_micros() as u64
    }

    fn skipping(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
            && self.now_us() < self.skip_until_us.load(Ordering::Relaxed)
    }

    fn failed(&self, recheck_after: Duration, why: &dyn fmt::Display) {
        let until = self.now_us() + recheck_after.as_micros() as u64;
        self.skip_until_us.store(until, Ordering::Relaxed);
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "rate limits: Redis failed ({why}); each instance limits on its own until it \
                 answers again"
            );
        } else {
            tracing::debug!("rate limits: Redis failed again ({why})");
        }
    }

    fn succeeded(&self) {
        if self.degraded.swap(false, Ordering::Relaxed) {
            tracing::info!("rate limits: Redis answers again; buckets are shared again");
        }
    }
}

impl RedisStore {
    /// Connects to Redis at `url` (`redis://host:port/db`; several comma-separated node URLs
    /// for a Redis Cluster: each bucket is one key, so one slot), failing if it cannot be
    /// reached now. Later losses are reconnected in the background.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        let nodes = crate::redis::conn::node_urls(url);
        if nodes.len() > 1 {
            let client = ::redis::cluster::ClusterClientBuilder::new(nodes)
                .connection_timeout(Duration::from_secs(1))
                .retries(2)
                .build()
                .map_err(Error::Redis)?;
            let conn = client.get_async_connection().await.map_err(Error::Redis)?;
            return Ok(RedisStore::on(crate::redis::conn::Conn::Cluster(conn)));
        }
        let info = url.into_connection_info().map_err(Error::Redis)?;
        let client = ::redis::Client::open(info).map_err(Error::Redis)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(Error::Redis)?;
        Ok(RedisStore::with_connection(conn))
    }

    /// A store on a connection of the application's.
    pub fn with_connection(conn: ConnectionManager) -> Self {
        RedisStore::on(crate::redis::conn::Conn::Single(conn))
    }

    fn on(conn: crate::redis::conn::Conn) -> Self {
        RedisStore {
            conn,
            prefix: "ws-kit:rl:".into(),
            timeout: Duration::from_millis(250),
            recheck_after: Duration::from_secs(1),
            fallback: MemoryStore::new(),
            health: Arc::new(Health {
                epoch: Instant::now(),
                skip_until_us: AtomicU64::new(0),
                degraded: AtomicBool::new(false),
            }),
        }
    }

    /// The prefix of every bucket's Redis key (default `ws-kit:rl:`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into().into();
        self
    }

    /// How long a take waits for Redis before this instance decides alone (default 250 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// After a failure, how long takes skip Redis before trying it again (default 1 s).
    pub fn recheck_after(mut self, recheck_after: Duration) -> Self {
        self.recheck_after = recheck_after;
        self
    }

    /// Whether the last attempt to reach Redis failed (takes are then decided in memory).
    pub fn is_degraded(&self) -> bool {
        self.health.degraded.load(Ordering::Relaxed)
    }

    /// The Redis key of a bucket.
    fn redis_key(&self, key: &str) -> String {
        let mut redis_key = String::with_capacity(self.prefix.len() + key.len() + 2);
        redis_key.push_str(&self.prefix);
        redis_key.push('{');
        redis_key.push_str(key);
        redis_key.push('}');
        redis_key
    }
}

impl LimitStore for RedisStore {
    fn take(&self, key: &str, cost: u32, bucket: Bucket) -> Take {
        if self.health.skipping() {
            return Take::Ready(self.fallback.take_now(key, cost, bucket));
        }
        let store = self.clone();
        let key = key.to_owned();
        Take::Pending(Box::pin(async move {
            let mut invocation = script().prepare_invoke();
            invocation
                .key(store.redis_key(&key))
                .arg(bucket.capacity())
                .arg(bucket.tokens_per_second().to_string())
                .arg(cost);
            let mut conn = store.conn.clone();
            let answer = tokio::time::timeout(
                store.timeout,
                invocation.invoke_async::<(i64, i64, i64)>(&mut conn),
            )
            .await;
            match answer {
                Ok(Ok((allowed, remaining, retry_after_ms))) => {
                    store.health.succeeded();
                    let remaining = remaining.clamp(0, i64::from(u32::MAX)) as u32;
                    if allowed == 1 {
                        Decision::Allowed { remaining }
                    } else {
                        Decision::Limited {
                            remaining,
                            retry_after_ms: retry_after_ms.max(1) as u64,
                        }
                    }
                }
                Ok(Err(e)) => {
                    store.health.failed(store.recheck_after, &e);
                    store.fallback.take_now(&key, cost, bucket)
                }
                Err(_) => {
                    let why = format!("no answer within {:?}", store.timeout);
                    store.health.failed(store.recheck_after, &why);
                    store.fallback.take_now(&key, cost, bucket)
                }
            }
        }))
    }
}
