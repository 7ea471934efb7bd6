//! Kept topics and recovery (docs/protocol.md 8a) with the in-memory engine, over real sockets:
//! the chat example's rooms, rejoined from a position while publications race the rejoin.

mod support;

#[allow(dead_code)]
#[path = "../../examples/chat.rs"]
mod chat;

use serde_json::{Value, json};
use std::time::Duration;
use support::{Client, TestServer, bounded, bounded_multi_thread, serve};
use ws_kit::pubsub::{Keep, MemoryPubSub};
use ws_kit::{Message, Router, ServeOptions};

const ROOM: &str = "0190f3a4-8a4e-7cc0-9a3e-2f1f0d1c2b3a";

/// The chat's `NEW_MESSAGE`, published from outside the handlers.
#[derive(Message)]
#[message(type = "NEW_MESSAGE")]
struct NewMessage {
    username: String,
    text: String,
}

async fn chat_server() -> TestServer<chat::ChatData> {
    serve(chat::router(), ServeOptions::new()).await
}

/// Connects, skips the greeting, joins `ROOM` from `since` (or plainly) and returns the `JOINED`
/// (or `Null`).
async fn join(
    server: &TestServer<chat::ChatData>,
    name: &str,
    since: Option<Value>,
) -> (Client, Value) {
    let mut client = server.client().await;
    assert_eq!(client.recv().await["type"], "WELCOME");
    let mut payload = json!({"roomId": ROOM, "username": name});
    if let Some(since) = since {
        payload["since"] = since;
    }
    client
        .send(json!({"type": "JOIN_ROOM", "payload": payload}))
        .await;
    let joined = if payload.get("since").is_some() {
        let joined = client.recv().await;
        assert_eq!(joined["type"], "JOINED", "{joined}");
        joined
    } else {
        Value::Null
    };
    (client, joined)
}

/// The room's frames a client gets, until (and with) the `NEW_MESSAGE` whose text is `last`.
async fn frames_until(client: &mut Client, last: &str) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let frame = client.recv().await;
        let done = frame["type"] == "NEW_MESSAGE" && frame["payload"]["text"] == last;
        frames.push(frame);
        if done {
            return frames;
        }
    }
}

fn offset(frame: &Value) -> u64 {
    frame["meta"]["offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("no offset in {frame}"))
}

/// Bob's message `text`.
fn said(text: String) -> NewMessage {
    NewMessage {
        username: "bob".into(),
        text,
    }
}

/// After a rejoin: the frames up to the last racer, each exactly the next offset after `last`
/// (which follows them); the missed ones first, in publish order, then the racers.
fn check_seam(frames: &[Value], last: &mut u64, round: usize, joined: &Value) {
    let mut texts = Vec::new();
    for (k, frame) in frames.iter().enumerate() {
        assert_eq!(
            offset(frame),
            *last + 1,
            "round {round}: a gap or a duplicate at the seam: {frame}; JOINED {joined}; before: {:?}",
            &frames[k.saturating_sub(3)..k]
        );
        *last += 1;
        if frame["type"] == "NEW_MESSAGE" {
            texts.push(frame["payload"]["text"].as_str().unwrap().to_string());
        }
    }
    let missed: Vec<String> = (0..100).map(|i| format!("missed {round}.{i}")).collect();
    assert_eq!(
        texts[..100],
        missed[..],
        "round {round}: all 100, in publish order"
    );
    let raced: Vec<String> = (0..20).map(|i| format!("race {round}.{i}")).collect();
    assert_eq!(
        texts[100..],
        raced[..],
        "round {round}: then the racers, in order"
    );
}

/// 150 publications after `left_at` in a room that keeps 100: joining from there, from
/// another epoch or from the future recovers nothing, and the next frame is live.
async fn expect_nothing_old(
    server: &TestServer<chat::ChatData>,
    publisher: &ws_kit::Publisher,
    left_at: u64,
    epoch: &str,
) {
    let topic = format!("room:{ROOM}");
    for i in 0..150 {
        assert!(publisher.publish(&topic, &said(format!("m{i}"))).await.ok);
    }
    for since in [
        json!({"offset": left_at, "epoch": epoch}),
        json!({"offset": left_at + 140, "epoch": "not-the-epoch"}),
        json!({"offset": left_at + 10_000, "epoch": epoch}),
    ] {
        let (mut client, joined) = join(server, "alice", Some(since.clone())).await;
        assert_eq!(joined["payload"]["recovered"], false, "{since}: {joined}");
        let now = joined["payload"]["offset"].as_u64().unwrap();
        // Nothing old: the next frame is live (her own USER_JOINED, or the USER_LEFT of the
        // previous try's connection), right after the position.
        let next = client.recv().await;
        assert_ne!(next["type"], "NEW_MESSAGE", "{since}: an old frame: {next}");
        assert_eq!(offset(&next), now + 1, "{since}: {next}");
    }
}

#[test]
fn a_rejoin_gets_exactly_what_it_missed_then_live_frames_while_publishers_race_it() {
    bounded_multi_thread(async {
        // Room for her USER_LEFT, the 100 she misses and the racers that beat her rejoin.
        let rooms = Keep::last(200).for_at_most(Duration::from_secs(300));
        let server = serve(chat::router_keeping(rooms), ServeOptions::new()).await;
        rejoin_rounds([&server, &server]).await;
    });
}

/// 50 rounds: alice (joined from a position on `servers[0]`) reads up to a marker, drops her
/// socket, misses 100 publications made alternately through both servers, and rejoins from her
/// last position on the other server while 20 more publications race the rejoin from another
/// task. Each round she must get exactly what she missed, in order, then live frames, with
/// consecutive offsets across the seam.
async fn rejoin_rounds(servers: [&TestServer<chat::ChatData>; 2]) {
    let publishers = [
        servers[0].service.publisher(),
        servers[1].service.publisher(),
    ];
    let topic = format!("room:{ROOM}");
    let (mut alice, joined) =
        join(servers[0], "alice", Some(json!({"offset": 0, "epoch": ""}))).await;
    assert_eq!(joined["payload"]["recovered"], false, "{joined}");
    let epoch = joined["payload"]["epoch"].as_str().unwrap().to_string();
    assert!(!epoch.is_empty());
    let mut last = joined["payload"]["offset"].as_u64().unwrap();

    for round in 0..50 {
        // Alice has seen everything up to a marker; her position is its offset.
        let marker = format!("marker {round}");
        let result = publishers[round % 2]
            .publish(&topic, &said(marker.clone()))
            .await;
        assert!(result.ok, "{result:?}");
        for frame in frames_until(&mut alice, &marker).await {
            assert_eq!(frame["meta"]["topic"], topic.as_str(), "{frame}");
            assert_eq!(frame["meta"]["epoch"], epoch.as_str(), "{frame}");
            assert_eq!(
                offset(&frame),
                last + 1,
                "round {round}: a gap or a duplicate live: {frame}"
            );
            last += 1;
        }
        drop(alice);

        // 100 publications while she is away (her own USER_LEFT among the first)...
        for i in 0..100 {
            let result = publishers[i % 2]
                .publish(&topic, &said(format!("missed {round}.{i}")))
                .await;
            assert!(result.ok, "{result:?}");
        }
        // ...and 20 more racing her rejoin, from another task.
        let racer = {
            let (publishers, topic) = (publishers.clone(), topic.clone());
            tokio::spawn(async move {
                for i in 0..20 {
                    let carol = NewMessage {
                        username: "carol".into(),
                        text: format!("race {round}.{i}"),
                    };
                    publishers[i % 2].publish(&topic, &carol).await;
                    if i % 4 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        };
        let since = json!({"offset": last, "epoch": epoch});
        let (client, joined) = join(servers[(round + 1) % 2], "alice", Some(since)).await;
        alice = client;
        assert_eq!(
            joined["payload"]["recovered"], true,
            "round {round}: {joined}"
        );
        assert_eq!(joined["payload"]["epoch"], epoch.as_str());
        let at_join = joined["payload"]["offset"].as_u64().unwrap();
        assert!(
            at_join >= last + 100,
            "round {round}: JOINED at {at_join}, left at {last}"
        );
        racer.await.unwrap();

        // Everything after `last`, in order, exactly once: the missed ones, the racers (some
        // recovered, some live), her own USER_JOINED.
        let frames = frames_until(&mut alice, &format!("race {round}.19")).await;
        check_seam(&frames, &mut last, round, &joined);
    }
}

#[test]
fn too_old_or_another_epoch_recovers_nothing() {
    bounded(async {
        let server = chat_server().await;
        let publisher = server.service.publisher();
        let (_bob, _) = join(&server, "bob", None).await;
        let (alice, joined) = join(&server, "alice", Some(json!({"offset": 0, "epoch": ""}))).await;
        let epoch = joined["payload"]["epoch"].as_str().unwrap().to_string();
        let left_at = joined["payload"]["offset"].as_u64().unwrap();
        drop(alice);
        // The room keeps 100, so the first 50 after her position are gone.
        expect_nothing_old(&server, &publisher, left_at, &epoch).await;
    });
}

#[test]
fn a_join_without_since_gets_plain_frames_and_no_joined() {
    bounded(async {
        let server = chat_server().await;
        let (mut plain, _) = join(&server, "bob", None).await;
        let first = plain.recv().await;
        assert_eq!(
            first,
            json!({"type": "USER_JOINED", "payload": {"username": "bob", "userCount": 1}}),
            "exactly the frame of a room that is not kept"
        );
        let (mut positioned, _) =
            join(&server, "alice", Some(json!({"offset": 0, "epoch": ""}))).await;
        let to_plain = plain.recv().await;
        let to_positioned = positioned.recv().await;
        assert_eq!(
            to_plain,
            json!({"type": "USER_JOINED", "payload": {"username": "alice", "userCount": 2}})
        );
        assert_eq!(to_positioned["payload"], to_plain["payload"]);
        assert_eq!(to_positioned["meta"]["topic"], format!("room:{ROOM}"));
    });
}

#[test]
fn a_kept_topic_holds_at_most_its_size_and_nothing_once_expired_and_unsubscribed() {
    bounded(async {
        let engine = MemoryPubSub::new();
        let router = Router::<()>::new()
            .keep(
                "feed:*",
                Keep::last(10).for_at_most(Duration::from_millis(300)),
            )
            .pubsub(engine.clone());
        let server = serve(router, ServeOptions::new()).await;
        let publisher = server.service.publisher();
        for i in 0..250 {
            publisher
                .publish(
                    "feed:a",
                    &NewMessage {
                        username: "x".into(),
                        text: format!("{i}"),
                    },
                )
                .await;
            assert!(engine.kept_len("feed:a") <= 10);
        }
        assert_eq!(engine.kept_len("feed:a"), 10);
        publisher
            .publish(
                "plain",
                &NewMessage {
                    username: "x".into(),
                    text: "not kept".into(),
                },
            )
            .await;
        assert_eq!(
            engine.kept_len("plain"),
            0,
            "only kept topics hold anything"
        );
        // No subscriber, every publication past its TTL: the sweep (every second) forgets it.
        tokio::time::sleep(Duration::from_millis(2300)).await;
        assert_eq!(engine.kept_len("feed:a"), 0);
        assert_eq!(
            engine.kept_topics(),
            0,
            "nothing is held for an expired, unsubscribed topic"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// On Redis: two instances, one stream per room.

#[cfg(feature = "redis")]
mod on_redis {
    use super::*;
    use support::proxy::Proxy;
    use support::{eventually, redis_url, redis_urls};
    use ws_kit::redis::RedisOptions;

    fn unique_prefix() -> String {
        format!("wskit-test-{}:", uuid::Uuid::now_v7().simple())
    }

    async fn instance(url: &str, prefix: &str, rooms: Keep) -> TestServer<chat::ChatData> {
        let engine = RedisOptions::new(url)
            .prefix(prefix)
            .connect()
            .await
            .expect("redis");
        serve(
            chat::router_keeping(rooms).pubsub(engine),
            ServeOptions::new(),
        )
        .await
    }

    #[test]
    fn a_rejoin_on_the_other_instance_gets_what_both_published_then_live_frames() {
        for url in redis_urls() {
            eprintln!("on {url}");
            bounded_multi_thread(async move {
                let prefix = unique_prefix();
                let rooms = Keep::last(200).for_at_most(Duration::from_secs(300));
                let one = instance(&url, &prefix, rooms).await;
                let two = instance(&url, &prefix, rooms).await;
                rejoin_rounds([&one, &two]).await;
            });
        }
    }

    #[test]
    fn on_redis_too_old_or_another_epoch_recovers_nothing() {
        for url in redis_urls() {
            eprintln!("on {url}");
            bounded_multi_thread(async move {
                let prefix = unique_prefix();
                let rooms = Keep::last(100).for_at_most(Duration::from_secs(300));
                let one = instance(&url, &prefix, rooms).await;
                let two = instance(&url, &prefix, rooms).await;
                let (alice, joined) =
                    join(&one, "alice", Some(json!({"offset": 0, "epoch": ""}))).await;
                let epoch = joined["payload"]["epoch"].as_str().unwrap().to_string();
                let left_at = joined["payload"]["offset"].as_u64().unwrap();
                drop(alice);
                expect_nothing_old(&two, &two.service.publisher(), left_at, &epoch).await;
            });
        }
    }

    /// The stream never holds much more than the room's size (Redis trims approximately, by
    /// whole internal nodes), and a room nobody publishes to is gone after its TTL.
    #[test]
    fn on_redis_a_kept_topic_stays_near_its_size_and_expires() {
        let Some(url) = redis_url() else { return };
        bounded_multi_thread(async move {
            let prefix = unique_prefix();
            let rooms = Keep::last(50).for_at_most(Duration::from_millis(500));
            let one = instance(&url, &prefix, rooms).await;
            let publisher = one.service.publisher();
            let topic = format!("room:{ROOM}");
            for i in 0..1000 {
                let result = publisher.publish(&topic, &said(format!("m{i}"))).await;
                assert!(result.ok);
            }
            let client = redis::Client::open(url.as_str()).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let stream = format!("{prefix}h:{{{topic}}}:s");
            let hash = format!("{prefix}h:{{{topic}}}:m");
            let len: usize = redis::cmd("XLEN")
                .arg(&stream)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(
                (50..=150).contains(&len),
                "the stream holds {len} entries for a size of 50"
            );
            let ttl: i64 = redis::cmd("PTTL")
                .arg(&stream)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(
                ttl > 0 && ttl <= 500,
                "the stream expires with the TTL: {ttl} ms"
            );
            tokio::time::sleep(Duration::from_millis(700)).await;
            let left: usize = redis::cmd("EXISTS")
                .arg(&stream)
                .arg(&hash)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert_eq!(
                left, 0,
                "nothing is held once the TTL passed without publications"
            );
        });
    }

    /// While Redis is unreachable a kept room still delivers on its instance, at once and
    /// without positions; once Redis is back the room's history starts a new epoch, so a client
    /// that comes back with a position from before is told it did not recover.
    #[test]
    fn during_an_outage_a_kept_room_delivers_locally_and_then_starts_a_new_epoch() {
        let Some(url) = redis_url() else { return };
        bounded_multi_thread(async move {
            let prefix = unique_prefix();
            let rooms = Keep::last(100).for_at_most(Duration::from_secs(300));
            let target = url
                .trim_start_matches("redis://")
                .trim_end_matches('/')
                .to_string();
            let proxy = Proxy::start(target).await;
            let engine = RedisOptions::new(format!("redis://{}", proxy.addr))
                .prefix(&prefix)
                .health_interval(Duration::from_millis(100))
                .connect()
                .await
                .expect("redis through the proxy");
            let one = serve(
                chat::router_keeping(rooms).pubsub(engine.clone()),
                ServeOptions::new(),
            )
            .await;
            let two = instance(&url, &prefix, rooms).await;
            let topic = format!("room:{ROOM}");

            let (mut alice, joined) =
                join(&one, "alice", Some(json!({"offset": 0, "epoch": ""}))).await;
            let epoch = joined["payload"]["epoch"].as_str().unwrap().to_string();
            let own = alice.recv().await;
            assert_eq!(own["type"], "USER_JOINED");
            let last = offset(&own);

            proxy.down();
            eventually("the instance notices Redis is gone", || {
                let engine = engine.clone();
                async move { !engine.is_connected() }
            })
            .await;
            let result = one
                .service
                .publisher()
                .publish(&topic, &said("during".into()))
                .await;
            assert!(
                !result.ok,
                "the other instances could not be told: {result:?}"
            );
            let during = alice.recv().await;
            assert_eq!(
                during,
                json!({"type": "NEW_MESSAGE", "payload": {"username": "bob", "text": "during"}}),
                "delivered here at once, without a position it does not have"
            );

            proxy.up();
            eventually("the instance is back", || {
                let engine = engine.clone();
                async move { engine.is_connected() }
            })
            .await;
            // Reconciliation after the reconnect drops the history; give it a moment to run.
            eventually("the room's history starts over", || {
                let two = &two;
                let epoch = epoch.clone();
                async move {
                    let (_client, joined) =
                        join(two, "probe", Some(json!({"offset": 0, "epoch": ""}))).await;
                    joined["payload"]["epoch"] != epoch.as_str()
                }
            })
            .await;
            let (mut back, joined) =
                join(&two, "alice", Some(json!({"offset": last, "epoch": epoch}))).await;
            assert_eq!(joined["payload"]["recovered"], false, "{joined}");
            assert_ne!(joined["payload"]["epoch"], epoch.as_str());
            // Nothing old: the next frame is live in the new epoch (her USER_JOINED, or the
            // USER_LEFT of a probe's connection closing), right after the position.
            let next = back.recv().await;
            assert_ne!(next["type"], "NEW_MESSAGE", "nothing old: {next}");
            assert_eq!(next["meta"]["epoch"], joined["payload"]["epoch"]);
            assert_eq!(
                offset(&next),
                joined["payload"]["offset"].as_u64().unwrap() + 1
            );
        });
    }
}

/// The Rust client tracks the position of the room's frames and, after the server drops it,
/// rejoins from there (`Client::rejoin` in `on_reconnect`): every publication exactly once, in
/// order, across the gap.
#[cfg(feature = "client")]
#[test]
fn the_rust_client_rejoins_from_its_last_position_after_a_reconnect() {
    use std::sync::{Arc, Mutex};
    use ws_kit::client::{Client as RustClient, Reconnect};
    use ws_kit::pubsub::Position;

    #[derive(Message)]
    #[message(type = "JOIN_ROOM")]
    struct JoinRoom {
        room_id: uuid::Uuid,
        username: String,
        since: Option<Position>,
    }

    bounded_multi_thread(async {
        let rooms = Keep::last(200).for_at_most(Duration::from_secs(300));
        let server = serve(chat::router_keeping(rooms), ServeOptions::new()).await;
        let topic = format!("room:{ROOM}");
        let room_id: uuid::Uuid = ROOM.parse().unwrap();
        let join = move |since: Position| JoinRoom {
            room_id,
            username: "ada".into(),
            since: Some(since),
        };
        let got: Arc<Mutex<Vec<String>>> = Arc::default();
        let client = {
            let (got, topic) = (got.clone(), topic.clone());
            RustClient::builder(server.url())
                .reconnect(
                    Reconnect::new().delays(Duration::from_millis(10), Duration::from_millis(40)),
                )
                .on(move |m: NewMessage| got.lock().unwrap().push(m.text))
                .on_reconnect(move |c| {
                    let _ = c.rejoin(&topic, join);
                })
                .connect()
                .await
                .expect("connect")
        };
        client.rejoin(&topic, join).unwrap();
        let publisher = server.service.publisher();
        let publish = |text: String| {
            let publisher = publisher.clone();
            let topic = topic.clone();
            async move {
                publisher.publish(&topic, &said(text)).await;
            }
        };
        support::eventually("the join took effect", || async {
            server.service.clients().all().len() == 1 && client.position(&topic).is_some()
        })
        .await;
        for i in 0..10 {
            publish(format!("before {i}")).await;
        }
        support::eventually("the first ten arrive", || async {
            got.lock().unwrap().len() == 10
        })
        .await;
        let at = client.position(&topic).expect("a position");

        // The server drops the connection; publications go on while the client is away and
        // while it comes back.
        for conn in server.service.clients().all() {
            conn.close(1012, "restart");
        }
        for i in 0..30 {
            publish(format!("during {i}")).await;
        }
        support::eventually("the client is back", || async {
            server.service.clients().all().len() == 1
        })
        .await;
        for i in 0..10 {
            publish(format!("after {i}")).await;
        }
        let expected: Vec<String> = (0..10)
            .map(|i| format!("before {i}"))
            .chain((0..30).map(|i| format!("during {i}")))
            .chain((0..10).map(|i| format!("after {i}")))
            .collect();
        support::eventually("every publication arrives", || async {
            got.lock().unwrap().len() >= expected.len()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            *got.lock().unwrap(),
            expected,
            "each exactly once, in order"
        );
        let now = client.position(&topic).unwrap();
        assert_eq!(now.epoch, at.epoch);
        assert!(now.offset >= at.offset + 40, "{now:?} after {at:?}");
    });
}
