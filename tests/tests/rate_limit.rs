//! Rate limits (docs/protocol.md 7a) over real sockets, in the harness's virtual time, and on a
//! real Redis shared by two instances.
//!
//! The Redis tests need `REDIS_URL` (`.ci/run` sets it); without it each prints
//! `<test>: skipped: REDIS_URL not set` and returns. Locally:
//! `REDIS_URL=redis://127.0.0.1:6379 cargo test -p ws-kit-tests --test rate_limit`.
//! The Redis round trip is timed by an ignored test:
//! `REDIS_URL=redis://127.0.0.1:6379 cargo test -p ws-kit-tests --release --test rate_limit -- --ignored --nocapture`.

mod support;

use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{Client, bounded, redis_url, request, serve_default};
use ws_kit::rate_limit::{Bucket, RateLimit};
use ws_kit::{Ctx, Incoming, Message, Next, Router, WsError, handler, routes};

// ---------------------------------------------------------------------------------------------
// Messages and handlers (the `guarded` example's LIMITED / COSTLY, plus an event).

#[derive(Message)]
#[rpc(response = LimitedOk)]
struct Limited {}

#[derive(Message, Debug)]
struct LimitedOk {}

#[derive(Message)]
#[rpc(response = CostlyOk)]
struct Costly {}

#[derive(Message, Debug)]
struct CostlyOk {}

/// An event: answered with `NOTED` when its handler runs.
#[derive(Message)]
struct Note {
    text: String,
}

#[derive(Message)]
struct Noted {
    text: String,
}

/// Not limited: indexes the connection under a user.
#[derive(Message)]
#[rpc(response = LoggedIn)]
struct Login {
    user: String,
}

#[derive(Message)]
struct LoggedIn {
    user: String,
}

#[handler]
async fn limited(_ctx: Ctx<Limited>) -> Result<LimitedOk, WsError> {
    Ok(LimitedOk {})
}

#[handler]
async fn costly(_ctx: Ctx<Costly>) -> Result<CostlyOk, WsError> {
    Ok(CostlyOk {})
}

#[handler]
async fn note(ctx: Ctx<Note>) {
    ctx.send(&Noted {
        text: ctx.payload.text.clone(),
    });
}

#[handler]
async fn login(ctx: Ctx<Login>) -> Result<LoggedIn, WsError> {
    ctx.set_user_id(ctx.payload.user.clone()).await?;
    Ok(LoggedIn {
        user: ctx.payload.user.clone(),
    })
}

/// LIMITED, NOTE at cost 1 and COSTLY at cost 5, all against `limit`'s buckets; LOGIN free.
fn router(limit: RateLimit) -> Router {
    Router::new().routes(routes![
        login,
        limited.middleware(limit.clone()),
        note.middleware(limit.clone()),
        costly.middleware(limit.cost(5)),
    ])
}

/// 2 tokens, refilled so slowly (one per 100 s) that a test never sees a refill on the real clock.
fn slow_bucket() -> Bucket {
    Bucket::new(2, 0.01)
}

fn limited_frame(cid: &str) -> Value {
    json!({"type": "LIMITED", "meta": {"correlationId": cid}})
}

fn note_frame(text: &str) -> Value {
    json!({"type": "NOTE", "payload": {"text": text}})
}

/// `retryAfterMs` taken out of an error frame (it depends on the time passed), checked to be
/// within `range`; the frame without it is returned for an exact comparison.
fn take_retry(mut frame: Value, range: std::ops::RangeInclusive<u64>) -> Value {
    let retry = frame["payload"]
        .as_object_mut()
        .and_then(|p| p.remove("retryAfterMs"))
        .unwrap_or_else(|| panic!("no retryAfterMs in {frame}"));
    let retry = retry.as_u64().expect("retryAfterMs is an integer");
    assert!(
        range.contains(&retry),
        "retryAfterMs {retry} not in {range:?}"
    );
    frame
}

/// At 0.01 token/s, the wait for one token is 100 000 ms less the time passed since the bucket
/// emptied (a few ms here, generously bounded).
const ONE_SLOW_TOKEN: std::ops::RangeInclusive<u64> = 90_000..=100_000;

// ---------------------------------------------------------------------------------------------
// Over real sockets, with the in-memory store.

/// §7a: a limited RPC gets its one terminal, `RPC_ERROR RESOURCE_EXHAUSTED` with
/// `details {cost, capacity, remaining}` and `retryAfterMs`; its handler does not run, and
/// nothing else follows.
#[test]
fn limited_rpc_gets_exactly_one_rpc_error() {
    bounded(async {
        let server = serve_default(router(RateLimit::in_memory("t", slow_bucket()))).await;
        let mut client = server.client().await;
        for cid in ["c1", "c2"] {
            let reply = request(&mut client, limited_frame(cid), cid).await;
            assert_eq!(
                reply,
                json!({"type": "LIMITED_OK", "meta": {"correlationId": cid}})
            );
        }
        let refused = request(&mut client, limited_frame("c3"), "c3").await;
        assert_eq!(
            take_retry(refused, ONE_SLOW_TOKEN),
            json!({
                "type": "RPC_ERROR",
                "meta": {"correlationId": "c3"},
                "payload": {
                    "code": "RESOURCE_EXHAUSTED",
                    "message": "Rate limit exceeded",
                    "details": {"cost": 1, "capacity": 2, "remaining": 0},
                }
            })
        );
        client.expect_silence(Duration::from_millis(150)).await;
    });
}

/// §7a: a limited event gets an `ERROR` with the same payload; its handler does not run.
#[test]
fn limited_event_gets_error_with_the_same_details() {
    bounded(async {
        let server = serve_default(router(RateLimit::in_memory("t", slow_bucket()))).await;
        let mut client = server.client().await;
        for text in ["a", "b"] {
            client.send(note_frame(text)).await;
            assert_eq!(
                client.recv().await,
                json!({"type": "NOTED", "meta": {}, "payload": {"text": text}})
            );
        }
        client.send(note_frame("c")).await;
        assert_eq!(
            take_retry(client.recv().await, ONE_SLOW_TOKEN),
            json!({
                "type": "ERROR",
                "meta": {},
                "payload": {
                    "code": "RESOURCE_EXHAUSTED",
                    "message": "Rate limit exceeded",
                    "details": {"cost": 1, "capacity": 2, "remaining": 0},
                }
            })
        );
        // No NOTED for "c".
        client.expect_silence(Duration::from_millis(150)).await;
    });
}

/// §7a: a cost above the capacity can never pass: `FAILED_PRECONDITION` with
/// `details {cost, capacity}` and no retry hint. It spends nothing, and neither does a refused
/// message: the bucket's tokens are all still there afterwards.
#[test]
fn cost_above_capacity_is_failed_precondition_and_refusals_spend_nothing() {
    bounded(async {
        let server = serve_default(router(RateLimit::in_memory("t", slow_bucket()))).await;
        let mut client = server.client().await;
        let costly_frame = json!({"type": "COSTLY"});
        assert_eq!(
            request(&mut client, costly_frame.clone(), "x1").await,
            json!({
                "type": "RPC_ERROR",
                "meta": {"correlationId": "x1"},
                "payload": {
                    "code": "FAILED_PRECONDITION",
                    "message": "Cost exceeds the rate limit's capacity",
                    "details": {"cost": 5, "capacity": 2},
                }
            })
        );
        assert_eq!(
            request(&mut client, costly_frame, "x2").await["type"],
            "RPC_ERROR"
        );
        // Both tokens are still there.
        for cid in ["c1", "c2"] {
            assert_eq!(
                request(&mut client, limited_frame(cid), cid).await["type"],
                "LIMITED_OK"
            );
        }
        // Refused twice; then still refused with remaining 0 (the refusals took nothing, and
        // nothing went negative).
        for cid in ["c3", "c4"] {
            let refused = request(&mut client, limited_frame(cid), cid).await;
            assert_eq!(refused["payload"]["details"]["remaining"], 0);
        }
    });
}

async fn logged_in(server: &support::TestServer<()>, user: Option<&str>) -> Client {
    let mut client = server.client().await;
    if let Some(user) = user {
        let reply = request(
            &mut client,
            json!({"type": "LOGIN", "payload": {"user": user}}),
            "login",
        )
        .await;
        assert_eq!(reply["payload"]["user"], user);
    }
    client
}

async fn outcome(client: &mut Client, cid: &str) -> String {
    let reply = request(client, limited_frame(cid), cid).await;
    match reply["type"].as_str() {
        Some("LIMITED_OK") => "ok".into(),
        _ => format!(
            "{} remaining {}",
            reply["payload"]["code"].as_str().unwrap(),
            reply["payload"]["details"]["remaining"]
        ),
    }
}

/// `by_user`: one bucket for all of a user's connections, none shared with another user; a
/// connection without a user id has a bucket of its own.
#[test]
fn per_user_bucket_is_shared_by_that_users_connections_only() {
    bounded(async {
        let limit = RateLimit::in_memory("per-user", slow_bucket()).by_user();
        let server = serve_default(router(limit)).await;
        let mut alice_1 = logged_in(&server, Some("alice")).await;
        let mut alice_2 = logged_in(&server, Some("alice")).await;
        let mut bob = logged_in(&server, Some("bob")).await;
        let mut anonymous_1 = logged_in(&server, None).await;
        let mut anonymous_2 = logged_in(&server, None).await;

        assert_eq!(outcome(&mut alice_1, "a").await, "ok");
        assert_eq!(outcome(&mut alice_2, "b").await, "ok");
        assert_eq!(
            outcome(&mut alice_1, "c").await,
            "RESOURCE_EXHAUSTED remaining 0"
        );
        assert_eq!(
            outcome(&mut alice_2, "d").await,
            "RESOURCE_EXHAUSTED remaining 0"
        );
        for cid in ["e", "f"] {
            assert_eq!(outcome(&mut bob, cid).await, "ok");
        }
        for client in [&mut anonymous_1, &mut anonymous_2] {
            for cid in ["g", "h"] {
                assert_eq!(outcome(client, cid).await, "ok");
            }
            assert_eq!(outcome(client, "i").await, "RESOURCE_EXHAUSTED remaining 0");
        }
    });
}

/// `by_ip`: connections from one address share a bucket; another address has its own.
#[test]
fn per_ip_bucket_is_shared_by_connections_from_one_address() {
    bounded(async {
        let limit = RateLimit::in_memory("per-ip", Bucket::new(1, 0.01)).by_ip();
        let server = serve_default(router(limit)).await;
        let url = server.url();
        let mut first = Client::connect_from(&url, "127.0.0.1".parse().unwrap()).await;
        let mut second = Client::connect_from(&url, "127.0.0.1".parse().unwrap()).await;
        let mut other = Client::connect_from(&url, "127.0.0.2".parse().unwrap()).await;
        assert_eq!(outcome(&mut first, "a").await, "ok");
        assert_eq!(
            outcome(&mut second, "b").await,
            "RESOURCE_EXHAUSTED remaining 0"
        );
        assert_eq!(outcome(&mut other, "c").await, "ok");
    });
}

/// `by_type`: each message type has a bucket of its own (per connection here).
#[test]
fn per_type_buckets_do_not_starve_each_other() {
    bounded(async {
        let limit = RateLimit::in_memory("per-type", Bucket::new(1, 0.01)).by_type();
        let server = serve_default(router(limit)).await;
        let mut client = server.client().await;
        assert_eq!(outcome(&mut client, "a").await, "ok");
        client.send(note_frame("n")).await;
        assert_eq!(client.recv().await["type"], "NOTED");
        assert_eq!(
            outcome(&mut client, "b").await,
            "RESOURCE_EXHAUSTED remaining 0"
        );
        client.send(note_frame("n")).await;
        assert_eq!(client.recv().await["payload"]["code"], "RESOURCE_EXHAUSTED");
    });
}

/// Middleware that records `what` and goes on.
fn trace(
    log: &Arc<Mutex<Vec<&'static str>>>,
    what: &'static str,
) -> impl Fn(Incoming<()>, Next<()>) -> futures_util::future::BoxFuture<'static, Result<(), WsError>>
+ Send
+ Sync
+ 'static {
    let log = log.clone();
    move |_msg, next| {
        log.lock().unwrap().push(what);
        Box::pin(next.run())
    }
}

/// A global limiter (`Router::middleware`) between two other middleware, and a per-route one:
/// the router's chain runs first, in order; a refusal stops the chain where it happens (later
/// middleware and the handler do not run); a message the route's limiter refuses has already
/// spent the global token.
#[test]
fn global_and_per_route_limits_compose_with_other_middleware() {
    bounded(async {
        let log = Arc::new(Mutex::new(Vec::new()));
        let global = RateLimit::in_memory("global", Bucket::new(3, 0.01));
        let route = RateLimit::in_memory("route", Bucket::new(1, 0.01));
        let router = Router::new()
            .middleware(trace(&log, "before"))
            .middleware(global)
            .middleware(trace(&log, "after"))
            .routes(routes![limited.middleware(route), note]);
        let server = serve_default(router).await;
        let mut client = server.client().await;

        assert_eq!(outcome(&mut client, "a").await, "ok");
        let refused = request(&mut client, limited_frame("b"), "b").await;
        assert_eq!(
            refused["payload"]["details"],
            json!({"cost": 1, "capacity": 1, "remaining": 0})
        );
        client.send(note_frame("n")).await;
        assert_eq!(client.recv().await["type"], "NOTED");
        client.send(note_frame("n")).await;
        let refused = client.recv().await;
        assert_eq!(refused["type"], "ERROR");
        assert_eq!(
            refused["payload"]["details"],
            json!({"cost": 1, "capacity": 3, "remaining": 0})
        );
        assert_eq!(
            *log.lock().unwrap(),
            [
                "before", "after", "before", "after", "before", "after", "before"
            ]
        );
    });
}

// ---------------------------------------------------------------------------------------------
// The testing harness: virtual time.

#[cfg(feature = "testing")]
mod harness {
    use super::*;
    use ws_kit::ErrorCode;
    use ws_kit::testing::TestServer;

    /// The `guarded` example's limit: 2 tokens, 1 a second. Under a paused clock no time passes
    /// between the frames, so `retryAfterMs` is exactly 1000, and the bucket refills only as the
    /// test advances the clock: no sleeping.
    #[tokio::test(start_paused = true)]
    async fn refill_follows_the_paused_clock_exactly() {
        let limit = RateLimit::in_memory("guarded", Bucket::new(2, 1.0)).by_user();
        let server = TestServer::new(router(limit));
        let conn = server.connect(()).await;
        let real = std::time::Instant::now();

        assert!(conn.request(&Limited {}).await.is_ok());
        assert!(conn.request(&Limited {}).await.is_ok());
        let err = conn.request(&Limited {}).await.unwrap_err();
        assert_eq!(err.code(), &ErrorCode::ResourceExhausted);
        assert_eq!(err.retry_after_ms(), Some(1000));
        assert_eq!(
            conn.frames().last().unwrap(),
            &json!({
                "type": "RPC_ERROR",
                "meta": {"correlationId": "test-3"},
                "payload": {
                    "code": "RESOURCE_EXHAUSTED",
                    "message": "Rate limit exceeded",
                    "details": {"cost": 1, "capacity": 2, "remaining": 0},
                    "retryAfterMs": 1000,
                }
            })
        );

        tokio::time::advance(Duration::from_millis(400)).await;
        let err = conn.request(&Limited {}).await.unwrap_err();
        assert_eq!(err.retry_after_ms(), Some(600));
        tokio::time::advance(Duration::from_millis(599)).await;
        assert_eq!(
            conn.request(&Limited {})
                .await
                .unwrap_err()
                .retry_after_ms(),
            Some(1)
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(conn.request(&Limited {}).await.is_ok());
        // Long idle: full again (2 tokens), never more.
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(conn.request(&Limited {}).await.is_ok());
        assert!(conn.request(&Limited {}).await.is_ok());
        let err = conn.request(&Limited {}).await.unwrap_err();
        assert_eq!(err.retry_after_ms(), Some(1000));

        // COSTLY at 5 against a capacity of 2: never.
        let err = conn.request(&Costly {}).await.unwrap_err();
        assert_eq!(err.code(), &ErrorCode::FailedPrecondition);
        assert!(
            real.elapsed() < Duration::from_secs(2),
            "the paused clock waited for real: {:?}",
            real.elapsed()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Redis: one bucket for every instance.

#[cfg(feature = "redis")]
mod redis_store {
    use super::*;
    use std::time::Instant;
    use support::{TestServer, serve};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::watch;
    use ws_kit::ServeOptions;
    use ws_kit::rate_limit::{Decision, LimitStore, MemoryStore, RedisStore};

    /// A key prefix no other test run uses.
    fn unique_prefix() -> String {
        format!("t:rl:{}:", uuid::Uuid::now_v7())
    }

    async fn store(url: &str, prefix: &str) -> RedisStore {
        RedisStore::connect(url)
            .await
            .expect("connect to redis")
            .prefix(prefix)
    }

    /// Deletes the keys a test left under `prefix` (they would expire anyway).
    async fn cleanup(url: &str, prefix: &str) {
        let mut conn = redis(url).await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut conn)
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(keys)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    }

    async fn redis(url: &str) -> redis::aio::MultiplexedConnection {
        redis::Client::open(url)
            .expect("REDIS_URL is a redis URL")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis")
    }

    /// One instance with a Redis store of its own (its own connection) on `prefix`.
    async fn instance(url: &str, prefix: &str) -> TestServer<()> {
        let limit = RateLimit::new("guarded", slow_bucket(), store(url, prefix).await).by_user();
        serve(router(limit), ServeOptions::new()).await
    }

    async fn retry_after(client: &mut Client, cid: &str) -> (Value, u64) {
        let mut refused = request(client, limited_frame(cid), cid).await;
        let retry = refused["payload"]["retryAfterMs"].as_u64().unwrap();
        refused["payload"]
            .as_object_mut()
            .unwrap()
            .remove("retryAfterMs");
        (refused, retry)
    }

    /// Two instances, one user on each: the user's two tokens are spent across both, and both
    /// then refuse with the same answer; another user still has a full bucket. On a single node
    /// and on a cluster (a bucket is one key).
    #[test]
    fn the_bucket_is_shared_by_two_instances() {
        for url in support::redis_urls() {
            eprintln!("on {url}");
            bounded(async move {
                let prefix = unique_prefix();
                let a = instance(&url, &prefix).await;
                let b = instance(&url, &prefix).await;
                let mut alice_a = logged_in(&a, Some("alice")).await;
                let mut alice_b = logged_in(&b, Some("alice")).await;
                let mut bob_b = logged_in(&b, Some("bob")).await;

                assert_eq!(outcome(&mut alice_a, "1").await, "ok");
                assert_eq!(outcome(&mut alice_b, "2").await, "ok");
                let started = Instant::now();
                let (refused_a, retry_a) = retry_after(&mut alice_a, "3").await;
                let (refused_b, retry_b) = retry_after(&mut alice_b, "3").await;
                let between = started.elapsed().as_millis() as u64;
                let expected = json!({
                    "type": "RPC_ERROR",
                    "meta": {"correlationId": "3"},
                    "payload": {
                        "code": "RESOURCE_EXHAUSTED",
                        "message": "Rate limit exceeded",
                        "details": {"cost": 1, "capacity": 2, "remaining": 0},
                    }
                });
                assert_eq!(refused_a, expected);
                assert_eq!(refused_b, expected);
                // Both measured on Redis's clock against one bucket: B's wait is A's less the time
                // that passed between the two (to the millisecond, each rounded up).
                assert!(ONE_SLOW_TOKEN.contains(&retry_a), "{retry_a}");
                assert!(
                    retry_b <= retry_a && retry_a - retry_b <= between + 1,
                    "A said {retry_a} ms, B {retry_b} ms, {between} ms apart"
                );
                assert_eq!(outcome(&mut bob_b, "1").await, "ok");
                assert_eq!(outcome(&mut bob_b, "2").await, "ok");
                assert_eq!(
                    outcome(&mut bob_b, "3").await,
                    "RESOURCE_EXHAUSTED remaining 0"
                );
                // COSTLY (5 > 2) is refused without asking Redis.
                let costly_frame = json!({"type": "COSTLY"});
                assert_eq!(
                    request(&mut alice_a, costly_frame, "x").await["payload"]["code"],
                    "FAILED_PRECONDITION"
                );
                if !url.contains(',') {
                    cleanup(&url, &prefix).await;
                }
            });
        }
    }

    /// The script keeps Redis's time: a bucket's `at` is Redis `TIME` in microseconds, refill is
    /// measured from it, and the key expires when the bucket would be full again.
    #[test]
    fn the_script_runs_on_redis_time_and_idle_buckets_expire() {
        let Some(url) = redis_url() else { return };
        bounded(async move {
            let prefix = unique_prefix();
            let store = store(&url, &prefix).await;
            let mut redis = redis(&url).await;
            let bucket = Bucket::new(2, 1.0);

            assert_eq!(
                store.take("k", 2, bucket).await,
                Decision::Allowed { remaining: 0 }
            );
            let key = format!("{prefix}{{k}}");
            let (tokens, at): (f64, u64) = redis::cmd("HMGET")
                .arg(&key)
                .arg("tokens")
                .arg("at")
                .query_async(&mut redis)
                .await
                .unwrap();
            let (secs, micros): (u64, u64) =
                redis::cmd("TIME").query_async(&mut redis).await.unwrap();
            let redis_now = secs * 1_000_000 + micros;
            assert_eq!(tokens, 0.0);
            assert!(
                at <= redis_now && redis_now - at < 2_000_000,
                "at {at}, Redis TIME {redis_now}"
            );
            // Full again in 2 s: the key lives that long at most.
            let ttl: i64 = redis::cmd("PTTL")
                .arg(&key)
                .query_async(&mut redis)
                .await
                .unwrap();
            assert!((1_000..=2_000).contains(&ttl), "PTTL {ttl}");

            // A bucket emptied half a second ago by Redis's clock: half a token is back, so the
            // wait for one is 500 ms (less what passed since this TIME).
            let (secs, micros): (u64, u64) =
                redis::cmd("TIME").query_async(&mut redis).await.unwrap();
            let half_a_second_ago = secs * 1_000_000 + micros - 500_000;
            let _: () = redis::cmd("HSET")
                .arg(&key)
                .arg("tokens")
                .arg("0")
                .arg("at")
                .arg(half_a_second_ago.to_string())
                .query_async(&mut redis)
                .await
                .unwrap();
            match store.take("k", 1, bucket).await {
                Decision::Limited {
                    remaining: 0,
                    retry_after_ms,
                } => assert!(
                    (400..=500).contains(&retry_after_ms),
                    "retryAfterMs {retry_after_ms}"
                ),
                other => panic!("{other:?}"),
            }
            let _: () = redis::cmd("DEL")
                .arg(&key)
                .query_async(&mut redis)
                .await
                .unwrap();
            cleanup(&url, &prefix).await;
        });
    }

    /// The Redis script and the in-memory store answer the same sequence of takes alike.
    #[test]
    fn redis_and_memory_stores_agree() {
        let Some(url) = redis_url() else { return };
        bounded(async move {
            let prefix = unique_prefix();
            let redis_store = store(&url, &prefix).await;
            let memory = MemoryStore::new();
            // So slow that the test's own duration refills nothing visible in `remaining`.
            let bucket = Bucket::new(7, 0.001);
            let costs = [1, 3, 4, 2, 2, 7, 1, 1, 5, 1, 6, 1];
            for (i, cost) in costs.into_iter().enumerate() {
                let from_redis = redis_store.take("seq", cost, bucket).await;
                let from_memory = memory.take("seq", cost, bucket).await;
                match (from_redis, from_memory) {
                    (
                        Decision::Limited {
                            remaining: r1,
                            retry_after_ms: t1,
                        },
                        Decision::Limited {
                            remaining: r2,
                            retry_after_ms: t2,
                        },
                    ) => {
                        assert_eq!(r1, r2, "take {i} (cost {cost})");
                        // 1 token per 1000 s; the stores' clocks started apart by the test's
                        // few milliseconds.
                        assert!(t1.abs_diff(t2) < 5_000, "take {i}: {t1} vs {t2}");
                    }
                    (a, b) => assert_eq!(a, b, "take {i} (cost {cost})"),
                }
            }
            cleanup(&url, &prefix).await;
        });
    }

    /// A TCP proxy to Redis that can be frozen: while frozen it forwards nothing, as a Redis that
    /// stopped answering (the connection stays open).
    async fn freezable_proxy(target: String) -> (String, watch::Sender<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (frozen_tx, frozen) = watch::channel(false);
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(server) = TcpStream::connect(&target).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, frozen.clone()));
                tokio::spawn(pump(sr, cw, frozen.clone()));
            }
        });
        (format!("redis://{addr}"), frozen_tx)
    }

    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        mut frozen: watch::Receiver<bool>,
    ) {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if frozen.wait_for(|f| !*f).await.is_err() {
                return;
            }
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if frozen.wait_for(|f| !*f).await.is_err() {
                return;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }

    /// A Redis that stops answering: the take waits at most the timeout, then this instance
    /// decides with a memory bucket of its own (a fresh, full one: limits stay in force, per
    /// instance); the takes that follow skip Redis at once until the recheck interval passes, and
    /// then Redis's bucket (still empty) decides again.
    #[test]
    fn a_frozen_redis_falls_back_to_memory_buckets_without_blocking() {
        let Some(url) = redis_url() else { return };
        bounded(async move {
            let target = url
                .trim_start_matches("redis://")
                .split('/')
                .next()
                .unwrap()
                .to_string();
            let (proxy_url, frozen) = freezable_proxy(target).await;
            let prefix = unique_prefix();
            let store = RedisStore::connect(&proxy_url)
                .await
                .expect("connect through the proxy")
                .prefix(&prefix)
                .timeout(Duration::from_millis(100))
                .recheck_after(Duration::from_millis(500));
            let bucket = Bucket::new(2, 0.001);
            assert!(store.take("k", 2, bucket).await.is_allowed());
            assert!(!store.is_degraded());

            frozen.send_replace(true);
            let started = Instant::now();
            // Redis's bucket is empty, but Redis does not answer: this instance's own bucket
            // (full) decides, after the timeout.
            assert_eq!(
                store.take("k", 1, bucket).await,
                Decision::Allowed { remaining: 1 }
            );
            let waited = started.elapsed();
            assert!(
                waited >= Duration::from_millis(100) && waited < Duration::from_secs(1),
                "{waited:?}"
            );
            assert!(store.is_degraded());
            // Now without waiting for Redis at all, and still limited.
            let started = Instant::now();
            assert_eq!(
                store.take("k", 1, bucket).await,
                Decision::Allowed { remaining: 0 }
            );
            assert!(!store.take("k", 1, bucket).await.is_allowed());
            assert!(started.elapsed() < Duration::from_millis(50));

            frozen.send_replace(false);
            tokio::time::sleep(Duration::from_millis(600)).await;
            match store.take("k", 1, bucket).await {
                Decision::Limited { remaining: 0, .. } => {}
                other => panic!("Redis's bucket should decide again: {other:?}"),
            }
            assert!(!store.is_degraded());
            cleanup(&url, &prefix).await;
        });
    }

    /// 1000 takes in a row over `keys`: median, p99 and max.
    async fn measure(
        store: &dyn LimitStore,
        keys: &[String],
        bucket: Bucket,
    ) -> (Duration, Duration, Duration) {
        let mut times = Vec::with_capacity(1000);
        for i in 0..1000 {
            let started = Instant::now();
            let decision = store.take(&keys[i % keys.len()], 1, bucket).await;
            times.push(started.elapsed());
            assert!(decision.is_allowed());
        }
        times.sort();
        (times[500], times[990], times[999])
    }

    /// The Redis limiter's round trip: 1000 takes one after the other, median and p99 (the memory
    /// store's beside it). Run with `--ignored --nocapture`, best with `--release`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn redis_round_trip_timing() {
        let Some(url) = redis_url() else { return };
        bounded(async move {
            let prefix = unique_prefix();
            let redis_store = store(&url, &prefix).await;
            let memory = MemoryStore::new();
            let bucket = Bucket::new(1_000_000, 1_000_000.0);
            let keys: Vec<String> = (0..100).map(|i| format!("user-{i}")).collect();
            for key in &keys {
                redis_store.take(key, 1, bucket).await;
            }
            let (median, p99, max) = measure(&redis_store, &keys, bucket).await;
            let (m_median, m_p99, m_max) = measure(&memory, &keys, bucket).await;
            let (b_median, b_p99, b_max) = {
                let mut conn = redis(&url).await;
                let mut times = Vec::with_capacity(1000);
                for _ in 0..1000 {
                    let started = Instant::now();
                    let _: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
                    times.push(started.elapsed());
                }
                times.sort();
                (times[500], times[990], times[999])
            };
            eprintln!(
                "RedisStore take: median {median:?}, p99 {p99:?}, max {max:?}\n\
                 Redis PING (baseline): median {b_median:?}, p99 {b_p99:?}, max {b_max:?}\n\
                 MemoryStore take: median {m_median:?}, p99 {m_p99:?}, max {m_max:?}"
            );
            cleanup(&url, &prefix).await;
        });
    }
}
