//! The Redis pub/sub engine against a real Redis: docs/protocol.md section 8, "Across instances".
//!
//! Every test needs `REDIS_URL` (`.ci/run` sets it). Without it, each prints
//! `skipped: REDIS_URL not set` and returns. Locally:
//! `REDIS_URL=redis://127.0.0.1:6379 cargo test -p ws-kit-tests --test redis`.
//!
//! "Two instances" are two servers in this process, each with its own `RedisPubSub` (its own
//! Redis connection), on a channel prefix of the test's own, so tests run in parallel on one Redis
//! without seeing each other. Nothing is mocked: the assertions about channels ask Redis itself
//! (`PUBSUB CHANNELS`, `PUBSUB NUMSUB`); outages and a slow Redis are a TCP proxy between an
//! instance and Redis that a test cuts or delays.
#![cfg(feature = "redis")]

mod support;

use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use support::proxy::Proxy;
use support::{
    Client, RawClient, RawFrame, TestServer, WAIT, bounded_multi_thread,
    bounded_multi_thread_within, eventually, eventually_within, redis_url, redis_urls, request,
    serve,
};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use ws_kit::pubsub::Capability;
use ws_kit::redis::{Emitter, RedisOptions, RedisPubSub};
use ws_kit::{
    ClientId, Ctx, Message, PublishOptions, PublishResult, Router, ServeOptions, WsError, handler,
    routes,
};

// ---------------------------------------------------------------------------------------------
// Messages and handlers.

#[derive(Message)]
#[rpc(response = Joined)]
struct Join {
    topic: String,
}

#[derive(Message)]
#[rpc(response = Joined)]
struct Leave {
    topic: String,
}

#[derive(Message)]
struct Joined {
    topic: String,
}

/// Indexes the connection under a user (`set_user_id`).
#[derive(Message)]
#[rpc(response = LoggedIn)]
struct Login {
    user: String,
}

#[derive(Message)]
struct LoggedIn {
    user: String,
}

/// Answered once the connection is fully set up (its `#client` and `#all` channels subscribed:
/// the read loop starts after that), with the connection's id.
#[derive(Message)]
#[rpc(response = Pong)]
struct Ping;

#[derive(Message)]
struct Pong {
    client_id: String,
}

/// Fire-and-forget: publishes `SAID {from, seq}`; a failed publish comes back as `ERROR`.
#[derive(Message)]
struct Say {
    topic: String,
    from: String,
    seq: u32,
}

#[derive(Message)]
struct Said {
    from: String,
    seq: u32,
}

/// Publishes `NOTICE {text}` and replies with the outcome.
#[derive(Message)]
#[rpc(response = Published)]
struct Publish {
    topic: String,
    text: String,
    exclude_self: Option<bool>,
}

#[derive(Message)]
struct Published {
    ok: bool,
    error: Option<String>,
}

/// What publishers outside handlers (and the emitter) send.
#[derive(Message)]
struct Notice {
    text: String,
}

/// The load test's publication.
#[derive(Message)]
struct Tick {
    seq: u32,
}

#[handler]
async fn join(ctx: Ctx<Join>) -> Result<Joined, WsError> {
    ctx.subscribe(&ctx.payload.topic).await?;
    Ok(Joined {
        topic: ctx.payload.topic.clone(),
    })
}

#[handler]
async fn leave(ctx: Ctx<Leave>) -> Result<Joined, WsError> {
    ctx.unsubscribe(&ctx.payload.topic).await?;
    Ok(Joined {
        topic: ctx.payload.topic.clone(),
    })
}

#[handler]
async fn login(ctx: Ctx<Login>) -> Result<LoggedIn, WsError> {
    ctx.set_user_id(ctx.payload.user.clone()).await?;
    Ok(LoggedIn {
        user: ctx.payload.user.clone(),
    })
}

#[handler]
async fn ping(ctx: Ctx<Ping>) -> Result<Pong, WsError> {
    Ok(Pong {
        client_id: ctx.client_id().to_string(),
    })
}

#[handler]
async fn say(ctx: Ctx<Say>) -> Result<(), WsError> {
    let said = Said {
        from: ctx.payload.from.clone(),
        seq: ctx.payload.seq,
    };
    let result = ctx.publish(&ctx.payload.topic, &said).await;
    match result.error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[handler]
async fn publish(ctx: Ctx<Publish>) -> Result<Published, WsError> {
    let mut options = PublishOptions::new();
    if ctx.payload.exclude_self == Some(true) {
        options = options.exclude_self();
    }
    let notice = Notice {
        text: ctx.payload.text.clone(),
    };
    let result = ctx.publish_with(&ctx.payload.topic, &notice, options).await;
    Ok(Published {
        ok: result.ok,
        error: result.error.map(|e| e.code().as_str().to_string()),
    })
}

fn router() -> Router {
    Router::new().routes(routes![join, leave, login, ping, say, publish])
}

// ---------------------------------------------------------------------------------------------
// Redis, instances and clients.

/// A channel prefix no other test uses.
fn unique_prefix() -> String {
    format!("t:{}:", uuid::Uuid::now_v7())
}

async fn engine(url: &str, prefix: &str) -> RedisPubSub {
    RedisOptions::new(url)
        .prefix(prefix)
        .connect()
        .await
        .expect("connect to redis")
}

/// One instance: a server with an engine of its own.
async fn instance(engine: RedisPubSub) -> TestServer<()> {
    serve(router().pubsub(engine), ServeOptions::new()).await
}

/// Two instances on one prefix.
async fn two_instances(url: &str, prefix: &str) -> (TestServer<()>, TestServer<()>) {
    let a = instance(engine(url, prefix).await).await;
    let b = instance(engine(url, prefix).await).await;
    (a, b)
}

/// Asks Redis, on a connection of its own, what the instances of one prefix subscribe to.
/// Clones share the connection.
#[derive(Clone)]
struct Inspector {
    conn: redis::aio::MultiplexedConnection,
    prefix: String,
}

impl Inspector {
    async fn connect(url: &str, prefix: &str) -> Inspector {
        let conn = redis::Client::open(url)
            .expect("REDIS_URL is a redis URL")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis");
        Inspector {
            conn,
            prefix: prefix.to_string(),
        }
    }

    /// The channels under the prefix that anyone subscribes to, without the prefix, but the
    /// presence events channel (`#presence`) and the instances' direct channels (`#i:<id>`),
    /// which every engine subscribes from the moment it connects, whatever its topics (checked
    /// in `channels_follow_local_subscribers`).
    async fn channels(&mut self) -> BTreeSet<String> {
        self.all_channels()
            .await
            .into_iter()
            .filter(|c| c != "#presence" && !c.starts_with("#i:"))
            .collect()
    }

    async fn all_channels(&mut self) -> BTreeSet<String> {
        let channels: Vec<String> = redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .arg(format!("{}*", self.prefix))
            .query_async(&mut self.conn)
            .await
            .expect("PUBSUB CHANNELS");
        channels
            .into_iter()
            .map(|c| c[self.prefix.len()..].to_string())
            .collect()
    }

    /// How many instances the directory lists for a connection's or user's topic.
    async fn listed(&mut self, topic: &str) -> usize {
        redis::cmd("SCARD")
            .arg(format!("{}d:{{{topic}}}", self.prefix))
            .query_async(&mut self.conn)
            .await
            .expect("SCARD")
    }

    /// How many Redis connections subscribe to the topic's channel.
    async fn numsub(&mut self, topic: &str) -> i64 {
        let (_, count): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(format!("{}{topic}", self.prefix))
            .query_async(&mut self.conn)
            .await
            .expect("PUBSUB NUMSUB");
        count
    }
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

async fn joined(client: &mut Client, topic: &str) {
    let reply = request(
        client,
        json!({"type": "JOIN", "payload": {"topic": topic}}),
        "join",
    )
    .await;
    assert_eq!(
        reply,
        json!({"type": "JOINED", "meta": {"correlationId": "join"}, "payload": {"topic": topic}})
    );
}

async fn left(client: &mut Client, topic: &str) {
    let reply = request(
        client,
        json!({"type": "LEAVE", "payload": {"topic": topic}}),
        "leave",
    )
    .await;
    assert_eq!(
        reply,
        json!({"type": "JOINED", "meta": {"correlationId": "leave"}, "payload": {"topic": topic}})
    );
}

async fn logged_in(client: &mut Client, user: &str) {
    let reply = request(
        client,
        json!({"type": "LOGIN", "payload": {"user": user}}),
        "login",
    )
    .await;
    assert_eq!(
        reply,
        json!({"type": "LOGGED_IN", "meta": {"correlationId": "login"}, "payload": {"user": user}})
    );
}

/// Waits until the connection is set up (reachable by `send_to_client` and `broadcast`); returns
/// its id, checked against the `x-client-id` header.
async fn ready(client: &mut Client) -> ClientId {
    let reply = request(client, json!({"type": "PING"}), "ping").await;
    let header = client_id(client);
    assert_eq!(
        reply,
        json!({"type": "PONG", "meta": {"correlationId": "ping"}, "payload": {"clientId": header.to_string()}})
    );
    header
}

fn client_id(client: &Client) -> ClientId {
    client.headers["x-client-id"]
        .to_str()
        .expect("x-client-id is ASCII")
        .parse()
        .expect("x-client-id is a UUID")
}

/// A pub/sub delivery: no `meta`.
fn notice(text: &str) -> Value {
    json!({"type": "NOTICE", "payload": {"text": text}})
}

/// A direct send (`send_to_user`, `send_to_client`): `meta` is `{}`.
fn direct_notice(text: &str) -> Value {
    json!({"type": "NOTICE", "meta": {}, "payload": {"text": text}})
}

fn msg(text: &str) -> Notice {
    Notice {
        text: text.to_string(),
    }
}

#[track_caller]
fn assert_ok(result: &PublishResult, what: &str) {
    assert!(result.ok, "{what} failed: {result:?}");
    assert_ne!(
        result.capability,
        Capability::Exact,
        "{what}: across instances the count cannot be exact"
    );
}

/// Reads `expected.len()` frames and compares them, in order, with `expected`.
async fn expect_frames(client: &mut Client, who: &str, expected: &[Value]) {
    for (i, want) in expected.iter().enumerate() {
        let got = client.recv().await;
        assert_eq!(&got, want, "{who}: frame {i}");
    }
}

// ---------------------------------------------------------------------------------------------
// Topics across instances.

/// Four connections in one room, two on each instance; one connection on each instance publishes
/// 201 messages (seq 0..=200) at the same time. Every member, the publishers included,
/// gets every message exactly once, and each publisher's in the order it sent them: the instance
/// a publication came from does not deliver it a second time when Redis echoes it back.
#[test]
fn room_messages_cross_instances_once_and_in_order() {
    for url in redis_urls() {
        eprintln!("on {url}");
        bounded_multi_thread(async move {
            const MESSAGES: u32 = 200;
            let prefix = unique_prefix();
            let (a, b) = two_instances(&url, &prefix).await;

            let mut members = Vec::new();
            for (name, server, publishes_as) in [
                ("publisher on A", &a, Some("A")),
                ("publisher on B", &b, Some("B")),
                ("subscriber on A", &a, None),
                ("subscriber on B", &b, None),
            ] {
                let mut client = server.client().await;
                joined(&mut client, "room").await;
                members.push((name, client, publishes_as));
            }

            let started = Instant::now();
            let tasks: Vec<_> = members
            .into_iter()
            .map(|(name, mut client, publishes_as)| {
                tokio::spawn(async move {
                    if let Some(from) = publishes_as {
                        for seq in 0..=MESSAGES {
                            client
                                .send(json!({"type": "SAY", "payload": {"topic": "room", "from": from, "seq": seq}}))
                                .await;
                        }
                    }
                    // Everything that arrives, by publisher, in arrival order.
                    let mut got: HashMap<String, Vec<u32>> = HashMap::new();
                    let mut total = 0;
                    while total < 2 * (MESSAGES + 1) {
                        let Ok(frame) = tokio::time::timeout(WAIT, client.recv()).await else {
                            break; // judged below: something is missing
                        };
                        let from = frame["payload"]["from"].as_str().unwrap_or_default();
                        let seq = frame["payload"]["seq"].as_u64().unwrap_or(u64::MAX);
                        assert_eq!(
                            frame,
                            json!({"type": "SAID", "payload": {"from": from, "seq": seq}}),
                            "{name} got an unexpected frame"
                        );
                        assert!(from == "A" || from == "B", "{name} got {frame}");
                        got.entry(from.to_string()).or_default().push(seq as u32);
                        total += 1;
                    }
                    // Nothing else (a late duplicate) may follow.
                    client.expect_silence(Duration::from_millis(200)).await;
                    for from in ["A", "B"] {
                        let seqs = got.remove(from).unwrap_or_default();
                        let mut distinct = seqs.clone();
                        distinct.sort_unstable();
                        distinct.dedup();
                        let missing: Vec<u32> =
                            (0..=MESSAGES).filter(|s| distinct.binary_search(s).is_err()).collect();
                        assert!(
                            missing.is_empty(),
                            "{name}: {} of {from}'s messages never arrived: {missing:?}",
                            missing.len()
                        );
                        assert_eq!(
                            seqs.len(),
                            distinct.len(),
                            "{name}: some of {from}'s messages arrived twice"
                        );
                        let inversions: Vec<(u32, u32)> = seqs
                            .windows(2)
                            .filter(|w| w[1] < w[0])
                            .map(|w| (w[0], w[1]))
                            .collect();
                        assert!(
                            inversions.is_empty(),
                            "{name}: all of {from}'s messages arrived once, but out of the order \
                             they were sent: {} inversions (seq, then a lower seq), first {:?}",
                            inversions.len(),
                            &inversions[..inversions.len().min(5)]
                        );
                    }
                })
            })
            .collect();
            let all = async {
                let mut failures = Vec::new();
                for task in tasks {
                    if let Err(e) = task.await {
                        failures.push(e);
                    }
                }
                if let Some(first) = failures.into_iter().next() {
                    std::panic::resume_unwind(first.into_panic());
                }
            };
            tokio::time::timeout(Duration::from_secs(25), all)
                .await
                .expect("the members did not get every frame in time");
            eprintln!(
                "2 × {} publications to 4 members across 2 instances in {:?}",
                MESSAGES + 1,
                started.elapsed()
            );
        });
    }
}

/// `exclude_self` skips the publishing connection on its own instance, while the other members on
/// both instances get the publication.
#[test]
fn exclude_self_across_instances() {
    for url in redis_urls() {
        eprintln!("on {url}");
        bounded_multi_thread(async move {
            let prefix = unique_prefix();
            let (a, b) = two_instances(&url, &prefix).await;
            let mut me = a.client().await;
            let mut other_a = a.client().await;
            let mut other_b = b.client().await;
            for client in [&mut me, &mut other_a, &mut other_b] {
                joined(client, "room").await;
            }

            // "not me" excludes the publisher, "all" does not. Had "not me" reached the publisher, it
            // would have come before "all" (one publisher, one topic: FIFO), so reading up to both
            // replies and "all" is enough to see it.
            me.send(json!({"type": "PUBLISH", "payload": {"topic": "room", "text": "not me", "excludeSelf": true}, "meta": {"correlationId": "p1"}}))
            .await;
            me.send(json!({"type": "PUBLISH", "payload": {"topic": "room", "text": "all"}, "meta": {"correlationId": "p2"}}))
            .await;
            let mut seen = Vec::new();
            while seen.len() < 3 {
                let frame = me.recv().await;
                assert_ne!(
                    frame,
                    notice("not me"),
                    "the publisher got its own excluded publication"
                );
                seen.push(frame);
            }
            let published = |cid: &str| json!({"type": "PUBLISHED", "meta": {"correlationId": cid}, "payload": {"ok": true}});
            for want in [published("p1"), published("p2"), notice("all")] {
                assert_eq!(
                    seen.iter().filter(|f| **f == want).count(),
                    1,
                    "expected {want} once among {seen:?}"
                );
            }
            // Replies keep the request order.
            assert!(
                seen.iter().position(|f| *f == published("p1"))
                    < seen.iter().position(|f| *f == published("p2"))
            );

            expect_frames(
                &mut other_a,
                "other member on A",
                &[notice("not me"), notice("all")],
            )
            .await;
            expect_frames(
                &mut other_b,
                "member on B",
                &[notice("not me"), notice("all")],
            )
            .await;
            for client in [&mut me, &mut other_a, &mut other_b] {
                client.expect_silence(Duration::from_millis(100)).await;
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Users, single connections and broadcast.

/// `send_to_user` reaches every session of the user on both instances exactly once, as a direct
/// frame (`"meta":{}`), and nobody else; a session that changes user or closes stops receiving.
#[test]
fn send_to_user_reaches_every_session_on_every_instance() {
    for url in redis_urls() {
        eprintln!("on {url}");
        bounded_multi_thread(async move {
            let prefix = unique_prefix();
            let (a, b) = two_instances(&url, &prefix).await;
            // The directory's contents are checked on a single node; on a cluster, its effects.
            let mut redis = match url.contains(',') {
                false => Some(Inspector::connect(&url, &prefix).await),
                true => None,
            };
            let publisher_a = a.service.publisher();
            let publisher_b = b.service.publisher();

            let mut u1_a1 = a.client().await;
            let mut u1_a2 = a.client().await;
            let mut u1_b = b.client().await;
            let mut u2_b = b.client().await;
            let mut anonymous_a = a.client().await;
            for client in [&mut u1_a1, &mut u1_a2, &mut u1_b] {
                logged_in(client, "u1").await;
            }
            logged_in(&mut u2_b, "u2").await;
            ready(&mut anonymous_a).await;
            // No channel per user: the directory lists each instance once however many sessions
            // of the user it has.
            if let Some(redis) = &mut redis {
                assert_eq!(redis.listed("#user:u1").await, 2);
                assert_eq!(redis.listed("#user:u2").await, 1);
                assert_eq!(redis.numsub("#user:u1").await, 0);
            }

            // One publisher, awaited in turn: Redis orders these, and so does every instance, so the
            // broadcast "end" marks where each connection's deliveries stop.
            assert_ok(
                &publisher_a.send_to_user("u1", &msg("for u1")).await,
                "send_to_user u1",
            );
            assert_ok(
                &publisher_a.send_to_user("u2", &msg("for u2")).await,
                "send_to_user u2",
            );
            assert_ok(
                &publisher_a.send_to_user("nobody", &msg("for nobody")).await,
                "send_to_user nobody",
            );
            assert_ok(&publisher_a.broadcast(&msg("end")).await, "broadcast");
            for (who, client) in [
                ("u1 on A (1)", &mut u1_a1),
                ("u1 on A (2)", &mut u1_a2),
                ("u1 on B", &mut u1_b),
            ] {
                expect_frames(client, who, &[direct_notice("for u1"), notice("end")]).await;
            }
            expect_frames(
                &mut u2_b,
                "u2 on B",
                &[direct_notice("for u2"), notice("end")],
            )
            .await;
            expect_frames(&mut anonymous_a, "no user on A", &[notice("end")]).await;

            // One session of u1 becomes u3, another closes; now from B.
            logged_in(&mut u1_a2, "u3").await;
            u1_b.close(1000).await;
            drop(u1_b);
            if let Some(redis) = &redis {
                eventually(
                    "B to leave u1's directory entry once its last u1 session closed",
                    || {
                        let mut redis = redis.clone();
                        async move { redis.listed("#user:u1").await == 1 }
                    },
                )
                .await;
            }
            assert_ok(
                &publisher_b.send_to_user("u1", &msg("again")).await,
                "send_to_user u1",
            );
            assert_ok(
                &publisher_b.send_to_user("u3", &msg("for u3")).await,
                "send_to_user u3",
            );
            assert_ok(&publisher_b.broadcast(&msg("end 2")).await, "broadcast");
            expect_frames(
                &mut u1_a1,
                "u1 on A",
                &[direct_notice("again"), notice("end 2")],
            )
            .await;
            expect_frames(
                &mut u1_a2,
                "u3 (was u1) on A",
                &[direct_notice("for u3"), notice("end 2")],
            )
            .await;
            expect_frames(&mut u2_b, "u2 on B", &[notice("end 2")]).await;
            expect_frames(&mut anonymous_a, "no user on A", &[notice("end 2")]).await;
        });
    }
}

/// `send_to_client(id)` from instance A reaches exactly the one connection with that id, which
/// lives on B; an unknown id reaches nobody.
#[test]
fn send_to_client_reaches_one_connection_on_another_instance() {
    for url in redis_urls() {
        eprintln!("on {url}");
        bounded_multi_thread(async move {
            let prefix = unique_prefix();
            let (a, b) = two_instances(&url, &prefix).await;
            let mut target = b.client().await;
            let mut neighbour_b = b.client().await;
            let mut other_a = a.client().await;
            let target_id = ready(&mut target).await;
            ready(&mut neighbour_b).await;
            ready(&mut other_a).await;

            let publisher = a.service.publisher();
            assert_ok(
                &publisher.send_to_client(target_id, &msg("just you")).await,
                "send_to_client",
            );
            assert_ok(
                &publisher
                    .send_to_client(uuid::Uuid::now_v7(), &msg("no one"))
                    .await,
                "send_to_client to an unknown id",
            );
            assert_ok(&publisher.broadcast(&msg("end")).await, "broadcast");
            expect_frames(
                &mut target,
                "target on B",
                &[direct_notice("just you"), notice("end")],
            )
            .await;
            expect_frames(&mut neighbour_b, "other on B", &[notice("end")]).await;
            expect_frames(&mut other_a, "other on A", &[notice("end")]).await;
        });
    }
}

/// `broadcast` from either instance reaches every connection on both, exactly once, as a
/// publication (no `meta`).
#[test]
fn broadcast_reaches_every_connection_once() {
    for url in redis_urls() {
        eprintln!("on {url}");
        bounded_multi_thread(async move {
            let prefix = unique_prefix();
            let (a, b) = two_instances(&url, &prefix).await;
            let mut clients = Vec::new();
            for (name, server) in [
                ("A1", &a),
                ("A2", &a),
                ("A3", &a),
                ("B1", &b),
                ("B2", &b),
                ("B3", &b),
            ] {
                let mut client = server.client().await;
                ready(&mut client).await;
                clients.push((name, client));
            }
            // Awaited in turn, so Redis (and each instance) sees them in this order.
            assert_ok(
                &a.service.publisher().broadcast(&msg("from A")).await,
                "broadcast A",
            );
            assert_ok(
                &b.service.publisher().broadcast(&msg("from B")).await,
                "broadcast B",
            );
            assert_ok(
                &a.service.publisher().broadcast(&msg("end")).await,
                "broadcast end",
            );
            // Each publisher's broadcasts keep their order everywhere (A's "from A" before its
            // "end"); across publishers there is no order to keep: an instance delivers its own
            // publications to its own connections at once, and B's through Redis.
            for (name, client) in &mut clients {
                let mut texts = Vec::new();
                for _ in 0..3 {
                    let frame = client.recv().await;
                    assert_eq!(frame["type"], "NOTICE", "{name}: {frame}");
                    texts.push(
                        frame["payload"]["text"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    );
                }
                let at = |t: &str| texts.iter().position(|x| x == t);
                assert!(at("from B").is_some(), "{name}: {texts:?}");
                assert!(
                    at("from A") < at("end") && at("from A").is_some(),
                    "{name}: {texts:?}"
                );
            }
            for (_, client) in &mut clients {
                client.expect_silence(Duration::from_millis(50)).await;
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Channels in Redis.

/// An instance subscribes one channel per topic while it has local subscribers, whatever their
/// number, and unsubscribes when the last one leaves: by unsubscribing, by closing, or by
/// dropping the socket. The instance's `#all` goes the same way. A connection has no channel of
/// its own: the directory lists its instance while it is open. Joining again subscribes again.
#[test]
fn channels_follow_local_subscribers() {
    let Some(url) = redis_url() else { return };
    bounded_multi_thread(async move {
        let prefix = unique_prefix();
        let mut redis = Inspector::connect(&url, &prefix).await;
        let (a, b) = two_instances(&url, &prefix).await;
        assert_eq!(redis.channels().await, set(&[]), "no connection yet");
        assert_eq!(
            redis.numsub("#presence").await,
            2,
            "each engine subscribes the presence events from the start"
        );
        let direct: Vec<String> = redis
            .all_channels()
            .await
            .into_iter()
            .filter(|c| c.starts_with("#i:"))
            .collect();
        assert_eq!(
            direct.len(),
            2,
            "one direct channel per instance: {direct:?}"
        );

        let mut a1 = a.client().await;
        let mut a2 = a.client().await;
        let mut b1 = b.client().await;
        for client in [&mut a1, &mut a2, &mut b1] {
            joined(client, "room").await;
        }
        let (id_a1, id_a2, id_b1) = (client_id(&a1), client_id(&a2), client_id(&b1));
        let client_topic = |id: ClientId| format!("#client:{id}");
        assert_eq!(
            redis.channels().await,
            set(&["room", "#all"]),
            "one channel per topic (no pattern, no channel per member or connection)"
        );
        for id in [id_a1, id_a2, id_b1] {
            assert_eq!(
                redis.listed(&client_topic(id)).await,
                1,
                "{id} in the directory"
            );
        }
        assert_eq!(
            redis.numsub("room").await,
            2,
            "one subscription per instance"
        );
        assert_eq!(redis.numsub("#all").await, 2);

        left(&mut a1, "room").await;
        assert_eq!(
            redis.numsub("room").await,
            2,
            "a2 is still in the room on A"
        );
        left(&mut a2, "room").await;
        eventually(
            "A to unsubscribe the room after its last member left",
            || {
                let mut redis = redis.clone();
                async move { redis.numsub("room").await == 1 }
            },
        )
        .await;

        // Joining again subscribes again, and deliveries flow.
        joined(&mut a2, "room").await;
        assert_eq!(redis.numsub("room").await, 2);
        assert_ok(
            &b.service.publisher().publish("room", &msg("back")).await,
            "publish",
        );
        expect_frames(&mut a2, "a2", &[notice("back")]).await;
        expect_frames(&mut b1, "b1", &[notice("back")]).await;
        left(&mut a2, "room").await;

        // B's last member of the room drops its socket: the room, B's `#all` and b1's directory
        // entry go.
        drop(b1);
        let expected = set(&["#all"]);
        eventually(
            "B to drop its channels after its last connection dropped",
            || {
                let mut redis = redis.clone();
                let expected = expected.clone();
                async move {
                    redis.channels().await == expected
                        && redis.numsub("#all").await == 1
                        && redis.listed(&client_topic(id_b1)).await == 0
                }
            },
        )
        .await;

        // The last member of a topic closes gracefully.
        joined(&mut a1, "lobby").await;
        assert!(redis.channels().await.contains("lobby"));
        a1.close(1000).await;
        drop(a1);
        eventually("A to drop the lobby after its member closed", || {
            let mut redis = redis.clone();
            let expected = expected.clone();
            async move {
                redis.channels().await == expected && redis.listed(&client_topic(id_a1)).await == 0
            }
        })
        .await;
        assert_eq!(redis.listed(&client_topic(id_a2)).await, 1);

        drop(a2);
        eventually("no channel left once every connection is gone", || {
            let mut redis = redis.clone();
            async move {
                redis.channels().await.is_empty() && redis.listed(&client_topic(id_a2)).await == 0
            }
        })
        .await;
    });
}

/// Logins racing on one instance (the directory writer batches their changes): 12 sessions
/// switch between users `u` and `v` at once, 20 rounds; each round ends with an odd session set
/// to `u` and the others to `v`, or all on `v`. The directory then lists the instance for `u`
/// exactly when a session is `u`, and a `send_to_user("u")` from the other instance reaches
/// exactly the `u` sessions.
#[test]
fn directory_follows_racing_logins() {
    let Some(url) = redis_url() else { return };
    bounded_multi_thread(async move {
        const SESSIONS: usize = 12;
        const ROUNDS: usize = 20;
        let prefix = unique_prefix();
        let mut redis = Inspector::connect(&url, &prefix).await;
        let (a, b) = two_instances(&url, &prefix).await;
        let mut sessions = Vec::new();
        for _ in 0..SESSIONS {
            let mut client = a.client().await;
            ready(&mut client).await;
            sessions.push(client);
        }
        let publisher = b.service.publisher();
        for round in 0..ROUNDS {
            // Even rounds leave one session on `u` (a different one each time); odd rounds none.
            let keeper = (round % 2 == 0).then_some(round % SESSIONS);
            let tasks: Vec<_> = sessions
                .drain(..)
                .enumerate()
                .map(|(i, mut client)| {
                    tokio::spawn(async move {
                        logged_in(&mut client, "u").await;
                        let last = if Some(i) == keeper { "u" } else { "v" };
                        logged_in(&mut client, last).await;
                        client
                    })
                })
                .collect();
            for task in tasks {
                sessions.push(task.await.expect("a login failed"));
            }
            let listed = redis.listed("#user:u").await;
            assert_eq!(
                listed,
                usize::from(keeper.is_some()),
                "round {round}: the directory lists A for u {listed} times"
            );
            let text = format!("round {round}");
            assert_ok(
                &publisher.send_to_user("u", &msg(&text)).await,
                "send_to_user",
            );
            for (i, client) in sessions.iter_mut().enumerate() {
                if Some(i) == keeper {
                    expect_frames(client, "the u session", &[direct_notice(&text)]).await;
                }
            }
            for (i, client) in sessions.iter_mut().enumerate() {
                if let Ok(frame) =
                    tokio::time::timeout(Duration::from_millis(20), client.recv()).await
                {
                    panic!("round {round}: session {i} (keeper {keeper:?}) also got {frame}");
                }
            }
        }
    });
}

/// Joins and leaves racing on one topic (many connections of one instance, at once) leave the
/// channel in the state the local subscribers call for: subscribed while one member remains
/// (it still gets publications), unsubscribed once it leaves.
#[test]
fn channel_state_survives_racing_joins_and_leaves() {
    let Some(url) = redis_url() else { return };
    bounded_multi_thread(async move {
        const CLIENTS: usize = 8;
        const ROUNDS: usize = 25;
        let prefix = unique_prefix();
        let mut redis = Inspector::connect(&url, &prefix).await;
        let (a, b) = two_instances(&url, &prefix).await;

        let mut tasks = Vec::new();
        for i in 0..CLIENTS {
            let mut client = a.client().await;
            tasks.push(tokio::spawn(async move {
                for _ in 0..ROUNDS {
                    joined(&mut client, "churn").await;
                    left(&mut client, "churn").await;
                }
                // The first client stays in the room at the end.
                if i == 0 {
                    joined(&mut client, "churn").await;
                }
                client
            }));
        }
        let mut clients = Vec::new();
        for task in tasks {
            clients.push(task.await.expect("a join or leave failed"));
        }
        let mut stayer = clients.swap_remove(0);
        assert_eq!(redis.numsub("churn").await, 1, "A has one member left");
        assert_ok(
            &b.service
                .publisher()
                .publish("churn", &msg("still here"))
                .await,
            "publish",
        );
        expect_frames(&mut stayer, "the remaining member", &[notice("still here")]).await;
        for client in &mut clients {
            client.expect_silence(Duration::from_millis(20)).await;
        }

        left(&mut stayer, "churn").await;
        eventually("A to unsubscribe once the last member left", || {
            let mut redis = redis.clone();
            async move { redis.numsub("churn").await == 0 }
        })
        .await;
    });
}

/// `subscriber_count` counts members across instances (an estimate kept in Redis), and follows
/// leaves and disconnects.
#[test]
fn subscriber_count_across_instances() {
    for url in redis_urls() {
        eprintln!("on {url}");
        bounded_multi_thread(async move {
            let prefix = unique_prefix();
            let (a, b) = two_instances(&url, &prefix).await;
            let mut a1 = a.client().await;
            let mut a2 = a.client().await;
            let mut b1 = b.client().await;
            for client in [&mut a1, &mut a2, &mut b1] {
                joined(client, "room").await;
            }
            let (pa, pb) = (a.service.publisher(), b.service.publisher());
            assert_eq!(pa.subscriber_count("room").await, Some(3));
            assert_eq!(pb.subscriber_count("room").await, Some(3));
            left(&mut a1, "room").await;
            assert_eq!(pb.subscriber_count("room").await, Some(2));
            drop(b1);
            eventually("the dropped connection to leave the count", || async {
                pa.subscriber_count("room").await == Some(1)
            })
            .await;
            assert_eq!(pa.subscriber_count("nobody").await, Some(0));
        });
    }
}

// ---------------------------------------------------------------------------------------------
// The emitter.

/// An `Emitter` in a process that serves no sockets publishes to a topic, to a user, to one
/// connection and to everyone; connections on two instances get the same frames the servers send.
#[test]
fn emitter_reaches_both_instances() {
    for url in redis_urls() {
        eprintln!("on {url}");
        bounded_multi_thread(async move {
            let prefix = unique_prefix();
            let (a, b) = two_instances(&url, &prefix).await;
            let mut on_a = a.client().await;
            let mut on_b = b.client().await;
            for client in [&mut on_a, &mut on_b] {
                joined(client, "news").await;
                logged_in(client, "u1").await;
            }
            let id_b = client_id(&on_b);

            let emitter = Emitter::connect_with(RedisOptions::new(&url).prefix(&prefix))
                .await
                .expect("connect the emitter");
            assert_ok(&emitter.publish("news", &msg("topic")).await, "publish");
            assert_ok(
                &emitter.send_to_user("u1", &msg("user")).await,
                "send_to_user",
            );
            assert_ok(
                &emitter.send_to_client(id_b, &msg("client")).await,
                "send_to_client",
            );
            assert_ok(&emitter.broadcast(&msg("everyone")).await, "broadcast");
            let bad = emitter.publish("bad topic", &msg("x")).await;
            assert!(!bad.ok);
            assert_eq!(
                bad.error.map(|e| e.code().as_str().to_string()).as_deref(),
                Some("INVALID_ARGUMENT")
            );

            expect_frames(
                &mut on_a,
                "on A",
                &[notice("topic"), direct_notice("user"), notice("everyone")],
            )
            .await;
            expect_frames(
                &mut on_b,
                "on B",
                &[
                    notice("topic"),
                    direct_notice("user"),
                    direct_notice("client"),
                    notice("everyone"),
                ],
            )
            .await;
            for client in [&mut on_a, &mut on_b] {
                client.expect_silence(Duration::from_millis(100)).await;
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Redis outage.

/// Splits `redis://[auth@]host[:port][/db][?query]` into its parts before, at and after the
/// server's address.
fn split_url(url: &str) -> (String, String, String) {
    let (scheme, rest) = url
        .split_once("://")
        .expect("REDIS_URL looks like redis://host:port");
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (head, host) = match authority.rsplit_once('@') {
        Some((auth, host)) => (format!("{scheme}://{auth}@"), host),
        None => (format!("{scheme}://"), authority),
    };
    let has_port = match host.strip_prefix('[') {
        Some(v6) => v6.contains("]:"),
        None => host.contains(':'),
    };
    let host = if has_port {
        host.to_string()
    } else {
        format!("{host}:6379")
    };
    (head, host, tail.to_string())
}

/// A proxy in front of `REDIS_URL`'s server, and the URL that goes through it.
async fn proxied(url: &str) -> (Proxy, String) {
    let (head, target, tail) = split_url(url);
    let proxy = Proxy::start(target).await;
    let url = format!("{head}{}{tail}", proxy.addr);
    (proxy, url)
}

/// While Redis is unreachable a publish fails within the publish timeout with a retryable
/// `UNAVAILABLE` (never a silent success, never a panic), and reaches only the publishing
/// instance's own members. Once Redis is back, without restarting anything, the instances
/// reconnect and resubscribe: a publication on A reaches the member on B again, each exactly
/// once, and Redis shows the same channels as before the outage.
#[test]
fn redis_outage_fails_publishes_then_recovers() {
    let Some(url) = redis_url() else { return };
    bounded_multi_thread_within(Duration::from_secs(60), async move {
        const PUBLISH_TIMEOUT: Duration = Duration::from_millis(500);
        const DOWN_FOR: Duration = Duration::from_millis(2500);
        const RECOVERY: Duration = Duration::from_secs(15);
        let prefix = unique_prefix();
        let mut redis = Inspector::connect(&url, &prefix).await;
        let (proxy, proxied_url) = proxied(&url).await;
        let options = || {
            RedisOptions::new(&proxied_url)
                .prefix(&prefix)
                .publish_timeout(PUBLISH_TIMEOUT)
                .health_interval(Duration::from_millis(100))
        };
        let engine_a = options()
            .connect()
            .await
            .expect("connect A through the proxy");
        let engine_b = options()
            .connect()
            .await
            .expect("connect B through the proxy");
        let (handle_a, handle_b) = (engine_a.clone(), engine_b.clone());
        let a = instance(engine_a).await;
        let b = instance(engine_b).await;
        let mut on_a = a.client().await;
        let mut on_b = b.client().await;
        joined(&mut on_a, "room").await;
        joined(&mut on_b, "room").await;
        let channels_before = redis.channels().await;
        assert_eq!(
            channels_before.len(),
            2,
            "room and #all: {channels_before:?}"
        );

        let publisher = a.service.publisher();
        assert_ok(&publisher.publish("room", &msg("before")).await, "publish");
        expect_frames(&mut on_a, "on A", &[notice("before")]).await;
        expect_frames(&mut on_b, "on B", &[notice("before")]).await;

        proxy.down();
        let outage = Instant::now();
        let mut failures = 0;
        while outage.elapsed() < DOWN_FOR && failures < 100 {
            let started = Instant::now();
            let result = publisher.publish("room", &msg("lost")).await;
            let took = started.elapsed();
            assert!(
                !result.ok,
                "a publish during the outage reported success: {result:?}"
            );
            assert!(
                took < PUBLISH_TIMEOUT + Duration::from_millis(500),
                "a publish during the outage took {took:?} (publish timeout {PUBLISH_TIMEOUT:?})"
            );
            let error = result.error.expect("a failed publish says why");
            assert_eq!(error.code().as_str(), "UNAVAILABLE", "{error:?}");
            assert_eq!(error.retryable(), Some(true), "{error:?}");
            failures += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(failures > 0);
        assert!(!handle_a.is_connected(), "A still claims to be connected");
        assert!(!handle_b.is_connected(), "B still claims to be connected");
        eprintln!("{failures} publishes failed during a {DOWN_FOR:?} outage");

        proxy.up();
        let back = Instant::now();
        let mut probes = 0u32;
        'recovered: loop {
            assert!(
                back.elapsed() < RECOVERY,
                "delivery from A to B did not resume within {RECOVERY:?} after Redis came back \
                 ({probes} probes)"
            );
            probes += 1;
            let result = publisher
                .publish("room", &msg(&format!("probe {probes}")))
                .await;
            if !result.ok {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            // Any probe reaching B means B resubscribed.
            if let Ok(frame) = tokio::time::timeout(Duration::from_millis(300), on_b.recv()).await {
                let text = frame["payload"]["text"].as_str().unwrap_or_default();
                assert!(text.starts_with("probe "), "on B after the outage: {frame}");
                break 'recovered;
            }
        }
        eprintln!(
            "delivery resumed {:?} after Redis came back ({probes} probes)",
            back.elapsed()
        );

        // From here on, exactly once and in order on both instances. Of the outage, only A's own
        // member has the publications (delivered on A, where they were made), each once, first.
        assert_ok(&publisher.publish("room", &msg("after")).await, "publish");
        for (who, client) in [("on A", &mut on_a), ("on B", &mut on_b)] {
            let mut last_probe = 0;
            let mut lost = 0;
            loop {
                let frame = client.recv().await;
                let text = frame["payload"]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                assert_eq!(frame["type"], "NOTICE", "{who}: {frame}");
                if text == "after" {
                    break;
                }
                if text == "lost" && who == "on A" && last_probe == 0 {
                    lost += 1;
                    continue;
                }
                let n: u32 = text
                    .strip_prefix("probe ")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("{who} got {frame} after the outage"));
                assert!(n > last_probe, "{who}: probe {n} after probe {last_probe}");
                last_probe = n;
            }
            if who == "on A" {
                assert_eq!(lost, failures, "on A: every publish of the outage, once");
            }
            client.expect_silence(Duration::from_millis(100)).await;
        }
        eventually("both engines to report the connection restored", || async {
            handle_a.is_connected() && handle_b.is_connected()
        })
        .await;
        assert_eq!(
            redis.channels().await,
            channels_before,
            "the channels after the outage are those before it"
        );
        assert_eq!(redis.numsub("room").await, 2);

        // New subscriptions work too.
        let mut late = b.client().await;
        joined(&mut late, "late").await;
        assert_ok(
            &publisher.publish("late", &msg("new topic")).await,
            "publish",
        );
        expect_frames(&mut late, "late joiner on B", &[notice("new topic")]).await;
    });
}

/// A member that leaves its topic while Redis is unreachable is gone for good: once Redis is back,
/// the instance does not subscribe the topic's channel again and the member gets nothing.
#[test]
fn topic_left_during_outage_stays_unsubscribed() {
    let Some(url) = redis_url() else { return };
    bounded_multi_thread_within(Duration::from_secs(60), async move {
        let prefix = unique_prefix();
        let mut redis = Inspector::connect(&url, &prefix).await;
        let (proxy, proxied_url) = proxied(&url).await;
        let engine = RedisOptions::new(&proxied_url)
            .prefix(&prefix)
            .publish_timeout(Duration::from_millis(500))
            .health_interval(Duration::from_millis(100))
            .connect()
            .await
            .expect("connect through the proxy");
        let handle = engine.clone();
        let a = instance(engine).await;
        let mut member = a.client().await;
        joined(&mut member, "side").await;
        joined(&mut member, "main").await;
        assert!(redis.channels().await.contains("side"));

        proxy.down();
        eventually("the engine to notice the outage", || async {
            !handle.is_connected()
        })
        .await;
        // Whatever the reply (the engine may or may not report the failed UNSUBSCRIBE), the
        // member has left locally.
        member
            .send(json!({"type": "LEAVE", "payload": {"topic": "side"}, "meta": {"correlationId": "l"}}))
            .await;
        let asked = Instant::now();
        let reply = loop {
            assert!(
                asked.elapsed() < Duration::from_secs(20),
                "no reply to LEAVE during the outage within 20 s"
            );
            if let Ok(frame) = tokio::time::timeout(Duration::from_secs(1), member.recv()).await {
                break frame;
            }
        };
        eprintln!(
            "LEAVE during the outage, after {:?}: {reply}",
            asked.elapsed()
        );
        proxy.up();

        eventually_within(
            Duration::from_secs(15),
            "the engine to reconnect",
            || async { handle.is_connected() },
        )
        .await;
        // "main" is restored (a publish from another instance reaches the member) ...
        let emitter = Emitter::connect_with(RedisOptions::new(&url).prefix(&prefix))
            .await
            .expect("connect the emitter");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            assert!(
                Instant::now() < deadline,
                "the member's \"main\" was not restored"
            );
            assert_ok(&emitter.publish("main", &msg("main")).await, "publish");
            if let Ok(frame) = tokio::time::timeout(Duration::from_millis(300), member.recv()).await
            {
                assert_eq!(frame, notice("main"));
                break;
            }
        }
        // ... "side" is not.
        assert!(
            !redis.channels().await.contains("side"),
            "the instance subscribes \"side\" again though nobody is in it: {:?}",
            redis.channels().await
        );
        assert_ok(&emitter.publish("side", &msg("side")).await, "publish");
        assert_ok(&emitter.publish("main", &msg("end")).await, "publish");
        loop {
            let frame = member.recv().await;
            assert_ne!(frame, notice("side"), "the member got a topic it left");
            if frame == notice("end") {
                break;
            }
            assert_eq!(frame, notice("main"), "a late probe is fine, nothing else");
        }
    });
}

// ---------------------------------------------------------------------------------------------
// A Redis of the test's own, killed and frozen.

/// A `redis-server` on a free loopback port, started by the test and stopped by its PID: killed
/// (SIGKILL) and restarted on the same port, or frozen (SIGSTOP) and thawed (SIGCONT). Dropping it
/// kills it, frozen or not.
struct OwnRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    /// Starts one, or says the test is skipped when `redis-server` is not installed.
    fn start() -> Option<OwnRedis> {
        let found = std::process::Command::new("redis-server")
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            use std::io::Write;
            let test = std::thread::current().name().unwrap_or("redis").to_string();
            let _ = writeln!(
                std::io::stderr(),
                "{test}: skipped: redis-server not found (apt-get install redis-server)"
            );
            return None;
        }
        let port = support::free_addr().port();
        let mut redis = OwnRedis { port, child: None };
        redis.restart();
        Some(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on its port and waits until it answers PING.
    fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--port", &self.port.to_string()])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let mut reply = [0u8; 7];
                if conn.write_all(b"PING\r\n").is_ok()
                    && conn.read_exact(&mut reply).is_ok()
                    && &reply == b"+PONG\r\n"
                {
                    return;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server on port {} did not answer within {WAIT:?}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and waits until the process is gone.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("redis-server is running").id();
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    fn freeze(&self) {
        self.signal("-STOP");
    }

    fn thaw(&self) {
        self.signal("-CONT");
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends `PUBLISH {topic, text}` and returns, in arrival order, the frames up to and including
/// its reply, with the time the reply took.
async fn publish_via(client: &mut Client, topic: &str, text: &str) -> (Vec<Value>, Duration) {
    let started = Instant::now();
    client
        .send(
            json!({"type": "PUBLISH", "payload": {"topic": topic, "text": text},
                     "meta": {"correlationId": "pub"}}),
        )
        .await;
    let mut frames = Vec::new();
    loop {
        let frame = client.recv().await;
        let done = frame["meta"]["correlationId"] == "pub";
        frames.push(frame);
        if done {
            return (frames, started.elapsed());
        }
    }
}

fn published(ok: bool, error: Option<&str>) -> Value {
    let mut payload = json!({ "ok": ok });
    if let Some(error) = error {
        payload["error"] = Value::from(error);
    }
    json!({"type": "PUBLISHED", "meta": {"correlationId": "pub"}, "payload": payload})
}

/// Reads one client's frames until `notice(last)`: every other frame must be a notice whose text
/// is in `allowed`, each at most once. Returns the texts seen, in order.
async fn notices_until(
    client: &mut Client,
    who: &str,
    allowed: &[&str],
    last: &str,
) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let frame = recv_skipping_probes(client).await;
        assert_eq!(frame["type"], "NOTICE", "{who}: {frame}");
        let text = frame["payload"]["text"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if text == last {
            return seen;
        }
        assert!(
            allowed.contains(&text.as_str()),
            "{who}: unexpected {frame}"
        );
        assert!(!seen.contains(&text), "{who}: {text:?} twice");
        seen.push(text);
    }
}

/// The next frame that is not a late `probe N` (a probe can arrive after the one that ended
/// `probe_until_delivered`).
async fn recv_skipping_probes(client: &mut Client) -> Value {
    loop {
        let frame = client.recv().await;
        let text = frame["payload"]["text"].as_str().unwrap_or_default();
        if !(frame["type"] == "NOTICE" && text.starts_with("probe ")) {
            return frame;
        }
    }
}

/// Publishes `probe N` on `publisher` until one reaches `target`; returns how many it took.
async fn probe_until_delivered(
    publisher: &ws_kit::Publisher,
    topic: &str,
    target: &mut Client,
) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut probes = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "no probe reached the member within 20 s ({probes} probes)"
        );
        probes += 1;
        let result = publisher
            .publish(topic, &msg(&format!("probe {probes}")))
            .await;
        if result.ok {
            if let Ok(frame) = tokio::time::timeout(Duration::from_millis(300), target.recv()).await
            {
                let text = frame["payload"]["text"].as_str().unwrap_or_default();
                assert!(text.starts_with("probe "), "{frame}");
                return probes;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Two instances on `url` and `prefix` (their engines' options `tune`d, Redis pinged every 100 ms),
/// `a1` and `a2` on A and `b1` on B in "room", and one publication from `a1` that all three got
/// (Redis carries traffic between the instances).
struct Room {
    a: TestServer<()>,
    b: TestServer<()>,
    /// The engines of A and B, to ask whether they see Redis.
    handles: (RedisPubSub, RedisPubSub),
    a1: Client,
    a2: Client,
    b1: Client,
}

impl Room {
    async fn open(url: &str, prefix: &str, tune: impl Fn(RedisOptions) -> RedisOptions) -> Room {
        let options = || {
            tune(RedisOptions::new(url).prefix(prefix)).health_interval(Duration::from_millis(100))
        };
        let engine_a = options().connect().await.expect("connect A");
        let engine_b = options().connect().await.expect("connect B");
        let handles = (engine_a.clone(), engine_b.clone());
        let (a, b) = (instance(engine_a).await, instance(engine_b).await);
        let (mut a1, mut a2, mut b1) = (a.client().await, a.client().await, b.client().await);
        for member in [&mut a1, &mut a2, &mut b1] {
            joined(member, "room").await;
        }
        let (frames, _) = publish_via(&mut a1, "room", "before").await;
        assert_eq!(frames, [notice("before"), published(true, None)]);
        expect_frames(&mut a2, "a2", &[notice("before")]).await;
        expect_frames(&mut b1, "b1", &[notice("before")]).await;
        Room {
            a,
            b,
            handles,
            a1,
            a2,
            b1,
        }
    }
}

/// Two instances on a Redis of the test's own, `a1` and `a2` on A and `b1` on B in "room". Then
/// Redis is killed (SIGKILL). While it is dead, A's members go on getting A's publications
/// (the publisher's own echo included) and a publish says within the publish timeout that it
/// reached only this instance (`ok: false`, `UNAVAILABLE`); B opens a new connection, which
/// joins "room" and a topic new to B and logs in as a user; its replies come at once. Redis is
/// restarted (empty) on the same port: without restarting the instances, a publication on A
/// reaches the member that joined during the outage, the user it logged in as, and every member
/// exactly once; Redis counts all four members again.
#[test]
fn killed_redis_keeps_local_traffic_going() {
    let Some(mut redis) = OwnRedis::start() else {
        return;
    };
    bounded_multi_thread_within(Duration::from_secs(90), async move {
        const PUBLISH_TIMEOUT: Duration = Duration::from_millis(500);
        let (url, prefix) = (redis.url(), unique_prefix());
        let tune = |options: RedisOptions| options.publish_timeout(PUBLISH_TIMEOUT);
        let Room {
            a,
            b,
            handles: (handle_a, handle_b),
            mut a1,
            mut a2,
            mut b1,
        } = Room::open(&url, &prefix, tune).await;

        redis.kill();
        // A publish made before an instance notices fails within the publish timeout too; wait
        // for both to notice so the rest happens in a known state.
        eventually("both instances to notice the outage", || async {
            !handle_a.is_connected() && !handle_b.is_connected()
        })
        .await;

        let (frames, took) = publish_via(&mut a1, "room", "outage").await;
        assert_eq!(
            frames,
            [notice("outage"), published(false, Some("UNAVAILABLE"))],
            "the publisher gets its own publication, then a result that says Redis was missed"
        );
        assert!(took < PUBLISH_TIMEOUT, "the failed publish took {took:?}");
        expect_frames(&mut a2, "a2", &[notice("outage")]).await;
        let publisher = a.service.publisher();
        let result = publisher.publish("room", &msg("outage 2")).await;
        let error = result.error.expect("a publish during the outage fails");
        assert_eq!(error.code().as_str(), "UNAVAILABLE", "{error:?}");
        assert_eq!(error.retryable(), Some(true), "{error:?}");
        expect_frames(&mut a1, "a1", &[notice("outage 2")]).await;
        expect_frames(&mut a2, "a2", &[notice("outage 2")]).await;

        // A new connection, a join, a join of a topic B has no channel for, a login: all
        // answered promptly (the read loop's PING only after the connection's setup).
        let opened = Instant::now();
        let mut b2 = b.client().await;
        ready(&mut b2).await;
        joined(&mut b2, "room").await;
        joined(&mut b2, "fresh").await;
        logged_in(&mut b2, "outage-user").await;
        let took = opened.elapsed();
        assert!(
            took < Duration::from_secs(2),
            "connecting, joining twice and logging in took {took:?} while Redis was down"
        );
        let (frames, _) = publish_via(&mut b1, "room", "on B").await;
        assert_eq!(
            frames,
            [notice("on B"), published(false, Some("UNAVAILABLE"))]
        );
        expect_frames(&mut b2, "b2", &[notice("on B")]).await;
        b1.expect_silence(Duration::from_millis(200)).await;

        redis.restart();
        eventually_within(
            Duration::from_secs(15),
            "both instances to reconnect",
            || async { handle_a.is_connected() && handle_b.is_connected() },
        )
        .await;
        let probes = probe_until_delivered(&publisher, "fresh", &mut b2).await;
        eprintln!(
            "after the restart, delivery to a topic joined during the outage took {probes} probes"
        );
        let emitter = Emitter::connect_with(RedisOptions::new(&url).prefix(&prefix))
            .await
            .expect("connect the emitter");
        assert_ok(
            &emitter
                .send_to_user("outage-user", &msg("to the user"))
                .await,
            "send_to_user",
        );
        assert_eq!(
            recv_skipping_probes(&mut b2).await,
            direct_notice("to the user")
        );

        assert_ok(&publisher.publish("room", &msg("after")).await, "publish");
        for (who, client) in [
            ("a1", &mut a1),
            ("a2", &mut a2),
            ("b1", &mut b1),
            ("b2", &mut b2),
        ] {
            let seen = notices_until(client, who, &[], "after").await;
            assert!(seen.is_empty(), "{who}: {seen:?}");
            client.expect_silence(Duration::from_millis(100)).await;
        }
        eventually(
            "Redis to count the four members of \"room\" again",
            || async { publisher.subscriber_count("room").await == Some(4) },
        )
        .await;
    });
}

/// The same two instances, with Redis frozen (SIGSTOP) instead: the connection stays open but
/// nothing answers. A publication on A reaches A's members at once, long before the publish
/// gives up on Redis with `UNAVAILABLE`; a PING on another connection is answered at once; B
/// opens a new connection and joins a topic new to B within the join timeout. Thawed (SIGCONT),
/// the frozen commands run late: B may get the frozen publication once, A never twice; the topic
/// joined during the freeze is subscribed, and delivery is exactly-once again.
#[test]
fn frozen_redis_never_stalls_local_traffic() {
    let Some(redis) = OwnRedis::start() else {
        return;
    };
    bounded_multi_thread_within(Duration::from_secs(90), async move {
        const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
        const JOIN_TIMEOUT: Duration = Duration::from_millis(500);
        let (url, prefix) = (redis.url(), unique_prefix());
        let tune = |options: RedisOptions| {
            options
                .publish_timeout(PUBLISH_TIMEOUT)
                .join_timeout(JOIN_TIMEOUT)
        };
        let Room {
            a,
            b,
            handles: (handle_a, handle_b),
            mut a1,
            mut a2,
            mut b1,
        } = Room::open(&url, &prefix, tune).await;

        redis.freeze();
        let frozen = Instant::now();
        a1.send(
            json!({"type": "PUBLISH", "payload": {"topic": "room", "text": "frozen"},
                       "meta": {"correlationId": "pub"}}),
        )
        .await;
        assert_eq!(a1.recv().await, notice("frozen"));
        assert_eq!(a2.recv().await, notice("frozen"));
        let local = frozen.elapsed();
        let pong = request(&mut a2, json!({"type": "PING"}), "ping").await;
        assert_eq!(pong["type"], "PONG");
        let answered = frozen.elapsed();
        assert!(
            answered < PUBLISH_TIMEOUT / 2,
            "local delivery ({local:?}) and a PING ({answered:?}) waited for the frozen Redis"
        );
        let reply = a1.recv().await;
        let took = frozen.elapsed();
        assert_eq!(reply, published(false, Some("UNAVAILABLE")));
        assert!(
            took < PUBLISH_TIMEOUT + Duration::from_millis(500),
            "the publish took {took:?} to give up (publish timeout {PUBLISH_TIMEOUT:?})"
        );
        eprintln!(
            "frozen Redis: local delivery {local:?}, PING {answered:?}, publish gave up after {took:?}"
        );

        let opened = Instant::now();
        let mut b2 = b.client().await;
        ready(&mut b2).await;
        joined(&mut b2, "fresh").await;
        let took = opened.elapsed();
        assert!(
            took < 3 * JOIN_TIMEOUT + Duration::from_millis(500),
            "a connection and a join took {took:?} while Redis was frozen (join timeout {JOIN_TIMEOUT:?})"
        );
        assert!(
            !handle_a.is_connected() && !handle_b.is_connected(),
            "the instances did not notice the freeze"
        );

        redis.thaw();
        eventually_within(
            Duration::from_secs(15),
            "both instances to see Redis again",
            || async { handle_a.is_connected() && handle_b.is_connected() },
        )
        .await;
        let publisher = a.service.publisher();
        probe_until_delivered(&publisher, "fresh", &mut b2).await;
        assert_ok(&publisher.publish("room", &msg("after")).await, "publish");
        let seen_b1 = notices_until(&mut b1, "b1", &["frozen"], "after").await;
        eprintln!("b1 after the thaw, before \"after\": {seen_b1:?}");
        for (who, client) in [("a1", &mut a1), ("a2", &mut a2)] {
            let seen = notices_until(client, who, &[], "after").await;
            assert!(seen.is_empty(), "{who}: {seen:?}");
        }
        for client in [&mut a1, &mut a2, &mut b1] {
            client.expect_silence(Duration::from_millis(100)).await;
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Subscribing while the channel is being subscribed.

/// How slow the proxy makes Redis for an instance, to hold a SUBSCRIBE in flight.
const SLOW_REDIS: Duration = Duration::from_millis(300);

/// The first frame either of two clients receives, with the client's index.
async fn first_reply(clients: &mut [Client; 2]) -> (usize, Value) {
    let [c0, c1] = clients;
    tokio::select! {
        frame = c0.recv() => (0, frame),
        frame = c1.recv() => (1, frame),
    }
}

/// An acknowledged `set_user_id` is in effect even while another session of the same user, on the
/// same instance, is still writing the user's directory entry: a `send_to_user` made right after
/// the acknowledgement reaches the session. Redis is made slow (300 ms on the instance's commands)
/// to hold the first write in flight; the emitter talks to Redis directly.
#[test]
fn set_user_id_is_in_effect_when_acknowledged() {
    let Some(url) = redis_url() else { return };
    bounded_multi_thread(async move {
        let prefix = unique_prefix();
        let (proxy, proxied_url) = proxied(&url).await;
        let b = instance(engine(&proxied_url, &prefix).await).await;
        let emitter = Emitter::connect_with(RedisOptions::new(&url).prefix(&prefix))
            .await
            .expect("connect the emitter");
        let mut sessions = [b.client().await, b.client().await];
        for session in &mut sessions {
            ready(session).await;
        }

        proxy.set_latency(SLOW_REDIS);
        for session in &mut sessions {
            session
                .send(json!({"type": "LOGIN", "payload": {"user": "u1"}, "meta": {"correlationId": "login"}}))
                .await;
        }
        let asked = Instant::now();
        let (first, reply) = first_reply(&mut sessions).await;
        assert_eq!(reply["type"], "LOGGED_IN", "{reply}");
        eprintln!("first LOGIN acknowledged after {:?}", asked.elapsed());
        assert_ok(
            &emitter.send_to_user("u1", &msg("hello u1")).await,
            "send_to_user",
        );
        let frame = tokio::time::timeout(3 * SLOW_REDIS, sessions[first].recv()).await;
        assert_eq!(
            frame.ok(),
            Some(direct_notice("hello u1")),
            "a session whose LOGIN was acknowledged missed send_to_user: its set_user_id \
             returned while the user's channel was still being subscribed"
        );
    });
}

/// A connection that has answered a message is reachable by `broadcast`, even when it opened
/// while another connection of the same instance was still subscribing `#all`.
#[test]
fn connection_is_in_broadcast_when_it_answers() {
    let Some(url) = redis_url() else { return };
    bounded_multi_thread(async move {
        let prefix = unique_prefix();
        let (proxy, proxied_url) = proxied(&url).await;
        let c = instance(engine(&proxied_url, &prefix).await).await;
        let emitter = Emitter::connect_with(RedisOptions::new(&url).prefix(&prefix))
            .await
            .expect("connect the emitter");

        proxy.set_latency(SLOW_REDIS);
        let opened = Instant::now();
        let (c0, c1) = tokio::join!(c.client(), c.client());
        let mut clients = [c0, c1];
        for client in &mut clients {
            client
                .send(json!({"type": "PING", "meta": {"correlationId": "ping"}}))
                .await;
        }
        let (first, reply) = first_reply(&mut clients).await;
        assert_eq!(reply["type"], "PONG", "{reply}");
        eprintln!("first PING answered after {:?}", opened.elapsed());
        assert_ok(&emitter.broadcast(&msg("hello all")).await, "broadcast");
        let frame = tokio::time::timeout(3 * SLOW_REDIS, clients[first].recv()).await;
        assert_eq!(
            frame.ok(),
            Some(notice("hello all")),
            "a connection that had answered a message missed a broadcast: it was set up while \
             the instance's `#all` channel was still being subscribed"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Load.

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The soft limit on open files, where the platform tells (Linux).
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Opens a raw WebSocket connection and joins `topic`; returns the socket and unread bytes.
async fn raw_member(addr: SocketAddr, topic: &str) -> (TcpStream, Vec<u8>) {
    let mut client = RawClient::connect(addr, None).await;
    client
        .send_text(
            &json!({"type": "JOIN", "payload": {"topic": topic}, "meta": {"correlationId": "j"}})
                .to_string(),
        )
        .await;
    match client.read_frame().await {
        Some(RawFrame::Text(text)) => {
            let reply: Value = serde_json::from_str(&text).expect("JSON");
            assert_eq!(reply["type"], "JOINED", "{reply}");
        }
        other => panic!("expected the JOIN reply, got {other:?}"),
    }
    client.into_parts()
}

/// The `seq` of a `{"type":"TICK","payload":{"seq":N}}` frame, read without a JSON parser.
fn tick_seq(frame: &[u8]) -> Option<u32> {
    let digits = frame
        .strip_prefix(b"{\"type\":\"TICK\",\"payload\":{\"seq\":")?
        .strip_suffix(b"}}")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Reads frames until `TICK 0..count` arrived in order; Err says what went wrong.
async fn read_ticks(
    mut stream: TcpStream,
    mut buf: Vec<u8>,
    count: u32,
    deadline: Instant,
) -> Result<(), String> {
    let mut next = 0u32;
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let mut pos = 0;
        loop {
            let avail = &buf[pos..];
            if avail.len() < 2 {
                break;
            }
            let (len, header) = match avail[1] & 0x7f {
                126 if avail.len() >= 4 => (u16::from_be_bytes([avail[2], avail[3]]) as usize, 4),
                127 if avail.len() >= 10 => (
                    u64::from_be_bytes(avail[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                126 | 127 => break,
                n => (n as usize, 2),
            };
            if avail.len() < header + len {
                break;
            }
            let payload = &avail[header..header + len];
            match avail[0] & 0x0f {
                0x1 => {
                    let seq = tick_seq(payload).ok_or_else(|| {
                        format!("not a TICK: {}", String::from_utf8_lossy(payload))
                    })?;
                    if seq != next {
                        return Err(format!("expected TICK {next}, got {seq}"));
                    }
                    next += 1;
                    if next == count {
                        return Ok(());
                    }
                }
                0x9 | 0xA => {}
                0x8 => {
                    return Err(format!(
                        "closed by the server after {next} ticks: {payload:?}"
                    ));
                }
                op => return Err(format!("unexpected opcode {op}")),
            }
            pos += header + len;
        }
        buf.drain(..pos);
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .map_err(|_| format!("timed out after {next} of {count} ticks"))?
            .map_err(|e| format!("read error after {next} ticks: {e}"))?;
        if n == 0 {
            return Err(format!("connection ended after {next} of {count} ticks"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// 1,000 members of one topic, 500 on each instance, each receive all of 1,000 publications made
/// on A, in order, none lost or repeated. Sizes: `WS_KIT_REDIS_LOAD_SUBSCRIBERS` and
/// `WS_KIT_REDIS_LOAD_MESSAGES` (default 1000 each); the whole test is bounded at 120 s.
#[test]
fn thousand_subscribers_on_two_instances_get_every_publication() {
    let Some(url) = redis_url() else { return };
    let subscribers = env_usize("WS_KIT_REDIS_LOAD_SUBSCRIBERS", 1000);
    let messages = env_usize("WS_KIT_REDIS_LOAD_MESSAGES", 1000) as u32;
    if let Some(limit) = open_files_limit() {
        let needed = 2 * subscribers + 200;
        assert!(
            limit >= needed,
            "this test needs about {needed} open files (client and server side of {subscribers} \
             sockets); the limit is {limit}: raise it with `ulimit -n`"
        );
    }
    bounded_multi_thread_within(Duration::from_secs(120), async move {
        const BATCH: usize = 100;
        let started = Instant::now();
        let prefix = unique_prefix();
        let options =
            || ServeOptions::new().heartbeat(Duration::from_secs(30), Duration::from_secs(600));
        let a = serve(router().pubsub(engine(&url, &prefix).await), options()).await;
        let b = serve(router().pubsub(engine(&url, &prefix).await), options()).await;

        let gate = Arc::new(tokio::sync::Semaphore::new(BATCH));
        let mut opening = tokio::task::JoinSet::new();
        for i in 0..subscribers {
            let addr = if i % 2 == 0 { a.addr } else { b.addr };
            let gate = gate.clone();
            opening.spawn(async move {
                let _permit = gate.acquire_owned().await.expect("semaphore");
                raw_member(addr, "load").await
            });
        }
        let mut members = Vec::with_capacity(subscribers);
        while let Some(member) = opening.join_next().await {
            members.push(member.expect("a member failed to connect and join"));
        }
        let joined_in = started.elapsed();
        assert_eq!(
            a.service.publisher().subscriber_count("load").await,
            Some(subscribers)
        );

        // Ticks 0..messages, then `messages` as the end marker.
        let deadline = Instant::now() + Duration::from_secs(100);
        let mut readers = tokio::task::JoinSet::new();
        for (stream, buf) in members {
            readers.spawn(read_ticks(stream, buf, messages + 1, deadline));
        }
        let publishing = Instant::now();
        let publisher = a.service.publisher();
        for seq in 0..=messages {
            let result = publisher.publish("load", &Tick { seq }).await;
            assert!(result.ok, "publish {seq} failed: {result:?}");
        }
        let published_in = publishing.elapsed();
        let mut failures = Vec::new();
        while let Some(outcome) = readers.join_next().await {
            if let Err(e) = outcome.expect("a reader panicked") {
                failures.push(e);
            }
        }
        let delivered_in = publishing.elapsed();
        eprintln!(
            "load: {subscribers} members joined in {joined_in:?}; {} publications sent in \
             {published_in:?}; all delivered {delivered_in:?} after the first; {:?} in all",
            messages + 1,
            started.elapsed()
        );
        assert!(
            failures.is_empty(),
            "{} of {subscribers} members did not get every publication once, in order; first: {}",
            failures.len(),
            failures[0]
        );
    });
}
