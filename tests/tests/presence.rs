//! Presence (docs/protocol.md 8b) over real sockets: the chat example's `WHO_IS_HERE`, joins and
//! leaves seen by `Router::on_presence`, in memory and across two instances on Redis, including
//! an instance that dies without cleaning up.

mod support;

#[allow(dead_code)]
#[path = "../../examples/chat.rs"]
mod chat;

use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use support::{Client, TestServer, bounded, eventually, request, serve};
use ws_kit::ServeOptions;
use ws_kit::pubsub::PresenceEvent;

const ROOM: &str = "0190f3a4-8a4e-7cc0-9a3e-2f1f0d1c2b3a";

async fn joined(server: &TestServer<chat::ChatData>, name: &str) -> Client {
    let mut client = server.client().await;
    assert_eq!(client.recv().await["type"], "WELCOME");
    client
        .send(json!({"type": "JOIN_ROOM", "payload": {"roomId": ROOM, "username": name}}))
        .await;
    let own = client.recv_type("USER_JOINED").await;
    assert_eq!(own["payload"]["username"], name);
    client
}

async fn who_is_here(client: &mut Client) -> Value {
    let reply = request(
        client,
        json!({"type": "WHO_IS_HERE", "payload": {"roomId": ROOM}}),
        "who",
    )
    .await;
    assert_eq!(reply["type"], "HERE", "{reply}");
    reply["payload"].clone()
}

fn names(here: &Value) -> Vec<String> {
    let mut names: Vec<String> = here["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// The events a hook saw, as `(kind, topic, username)`.
type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

fn record(seen: &Seen) -> impl Fn(&PresenceEvent) + Send + Sync + 'static {
    let seen = seen.clone();
    move |event| {
        let (kind, topic, entry) = match event {
            PresenceEvent::Join { topic, entry } => ("join", topic, entry),
            PresenceEvent::Leave { topic, entry } => ("leave", topic, entry),
        };
        let name = entry.info["username"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        seen.lock()
            .unwrap()
            .push((kind.to_string(), topic.clone(), name));
    }
}

fn saw(seen: &Seen, kind: &str, name: &str) -> bool {
    seen.lock()
        .unwrap()
        .iter()
        .any(|(k, t, n)| k == kind && n == name && t == &format!("room:{ROOM}"))
}

#[test]
fn who_is_here_lists_the_room_and_follows_joins_leaves_and_closes() {
    bounded(async {
        let seen: Seen = Arc::default();
        let router = chat::router().on_presence(record(&seen));
        let server = serve(router, ServeOptions::new()).await;
        let mut ada = joined(&server, "ada").await;
        let mut bob = joined(&server, "bob").await;
        let mut bob2 = joined(&server, "bob").await;

        let here = who_is_here(&mut ada).await;
        assert_eq!(names(&here), ["ada", "bob", "bob"]);
        assert_eq!(here["clients"], 3);
        assert_eq!(
            here["distinctUsers"], 2,
            "distinct users are distinct usernames"
        );
        let ids: Vec<&str> = here["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["clientId"].as_str().unwrap())
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted, "sorted by client id");
        assert!(saw(&seen, "join", "ada") && saw(&seen, "join", "bob"));

        bob.send(json!({"type": "LEAVE_ROOM", "payload": {"roomId": ROOM}}))
            .await;
        eventually("bob's leave is seen", || async {
            saw(&seen, "leave", "bob")
        })
        .await;
        let here = who_is_here(&mut ada).await;
        assert_eq!(names(&here), ["ada", "bob"]);

        bob2.close(1000).await;
        eventually("the closed connection leaves", || async {
            seen.lock()
                .unwrap()
                .iter()
                .filter(|(k, _, n)| k == "leave" && n == "bob")
                .count()
                == 2
        })
        .await;
        let here = who_is_here(&mut ada).await;
        assert_eq!(names(&here), ["ada"]);
        assert_eq!(
            (here["clients"].clone(), here["distinctUsers"].clone()),
            (json!(1), json!(1))
        );
    });
}

#[cfg(feature = "redis")]
mod on_redis {
    use super::*;
    use std::time::Duration;
    use support::proxy::Proxy;
    use support::{bounded_multi_thread, redis_url};
    use ws_kit::redis::RedisOptions;

    async fn instance(url: &str, prefix: &str, seen: &Seen) -> TestServer<chat::ChatData> {
        let engine = RedisOptions::new(url)
            .prefix(prefix)
            .health_interval(Duration::from_millis(100))
            .presence_lease(Duration::from_millis(800))
            .connect()
            .await
            .expect("redis");
        let router = chat::router().pubsub(engine).on_presence(record(seen));
        serve(router, ServeOptions::new()).await
    }

    /// ada joins on the first instance, bob and cy on the second: both see every join and list
    /// all three; cy's close is seen on the first and leaves nothing behind. Returns ada and bob.
    async fn joins_and_a_close(
        [one, two]: [&TestServer<chat::ChatData>; 2],
        [seen_one, seen_two]: [&Seen; 2],
    ) -> (Client, Client) {
        let mut ada = joined(one, "ada").await;
        let mut bob = joined(two, "bob").await;
        let cy = joined(two, "cy").await;
        eventually("both instances see every join", || async {
            ["ada", "bob", "cy"]
                .iter()
                .all(|n| saw(seen_one, "join", n) && saw(seen_two, "join", n))
        })
        .await;
        for client in [&mut ada, &mut bob] {
            let here = who_is_here(client).await;
            assert_eq!(names(&here), ["ada", "bob", "cy"]);
            assert_eq!(here["distinctUsers"], 3);
        }
        drop(cy);
        eventually("cy's close is seen on the other instance", || async {
            saw(seen_one, "leave", "cy")
        })
        .await;
        assert_eq!(names(&who_is_here(&mut ada).await), ["ada", "bob"]);
        (ada, bob)
    }

    /// On a Redis Cluster: presence entries live in their topic's slot, events go out on plain
    /// pub/sub (which a cluster copies to every node), and each instance sees the other's joins
    /// and leaves and lists every member.
    #[test]
    fn presence_spans_instances_on_a_cluster() {
        let Some(url) = support::redis_cluster_url() else {
            return;
        };
        bounded_multi_thread(async move {
            let prefix = format!("wskit-test-{}:", uuid::Uuid::now_v7().simple());
            let (seen_one, seen_two): (Seen, Seen) = (Arc::default(), Arc::default());
            let one = instance(&url, &prefix, &seen_one).await;
            let two = instance(&url, &prefix, &seen_two).await;
            joins_and_a_close([&one, &two], [&seen_one, &seen_two]).await;
        });
    }

    #[test]
    fn presence_spans_instances_and_an_instance_that_dies_leaves_within_its_lease() {
        let Some(url) = redis_url() else { return };
        bounded_multi_thread(async move {
            let prefix = format!("wskit-test-{}:", uuid::Uuid::now_v7().simple());
            let (seen_one, seen_two): (Seen, Seen) = (Arc::default(), Arc::default());
            let one = instance(&url, &prefix, &seen_one).await;
            // The instance that dies reaches Redis through a proxy that is then cut for good:
            // it can neither clean up nor renew its lease.
            let target = url
                .trim_start_matches("redis://")
                .trim_end_matches('/')
                .to_string();
            let proxy = Proxy::start(target).await;
            let two = instance(&format!("redis://{}", proxy.addr), &prefix, &seen_two).await;

            let (mut ada, _bob) = joins_and_a_close([&one, &two], [&seen_one, &seen_two]).await;

            // Instance two dies without cleaning up: bob's entry goes within the lease.
            proxy.down();
            let died = tokio::time::Instant::now();
            let deadline = died + Duration::from_secs(5);
            while names(&who_is_here(&mut ada).await) != ["ada"] {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "bob's entry never went"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(
                died.elapsed() < Duration::from_secs(3),
                "within the lease (0.8 s) and a sweep"
            );
            eventually("the other instance sees bob leave", || async {
                saw(&seen_one, "leave", "bob")
            })
            .await;
            // No USER_LEFT for a member of a dead instance.
            ada.expect_silence(Duration::from_millis(200)).await;
            drop(two);
        });
    }
}
