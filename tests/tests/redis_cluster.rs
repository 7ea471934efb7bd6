//! The Redis engine on a Redis Cluster (sharded pub/sub), beyond the cross-instance suite that
//! `redis.rs`, `history.rs` and `presence.rs` run on both a single node and the cluster.
//!
//! `topics_live_on_their_shards` needs `REDIS_CLUSTER_URL` (`.ci/redis-cluster start` prints
//! it). `a_killed_master_comes_back_and_delivery_resumes` starts a 3-master cluster of its own
//! (ports 7201–7203, with `.ci/redis-cluster`), kills one master's process and restarts it; it
//! needs `redis-server` and `redis-cli` on the PATH. Each says `skipped:` when its part is absent.
#![cfg(feature = "redis")]

mod support;

use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use support::{
    Client, TestServer, bounded_multi_thread_within, eventually_within, redis_cluster_url, request,
    serve,
};
use ws_kit::redis::{RedisOptions, RedisPubSub};
use ws_kit::{ClientId, Ctx, Message, Router, ServeOptions, WsError, handler, routes};

#[derive(Message)]
#[rpc(response = Joined)]
struct Join {
    topic: String,
}

#[derive(Message)]
struct Joined {
    topic: String,
}

#[derive(Message)]
struct Notice {
    text: String,
}

#[handler]
async fn join(ctx: Ctx<Join>) -> Result<Joined, WsError> {
    ctx.subscribe(&ctx.payload.topic).await?;
    Ok(Joined {
        topic: ctx.payload.topic.clone(),
    })
}

async fn instance(url: &str, prefix: &str) -> (TestServer<()>, RedisPubSub) {
    let engine = RedisOptions::new(url)
        .prefix(prefix)
        .publish_timeout(Duration::from_millis(500))
        .join_timeout(Duration::from_millis(500))
        .health_interval(Duration::from_millis(200))
        .connect()
        .await
        .expect("connect to the cluster");
    let router = Router::new().routes(routes![join]).pubsub(engine.clone());
    (serve(router, ServeOptions::new()).await, engine)
}

async fn joined(client: &mut Client, topic: &str) {
    let reply = request(
        client,
        json!({"type": "JOIN", "payload": {"topic": topic}}),
        "join",
    )
    .await;
    assert_eq!(reply["type"], "JOINED", "{reply}");
}

fn client_id(client: &Client) -> ClientId {
    client.headers["x-client-id"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("uuid")
}

/// Reads NOTICE texts until `count` arrived or nothing more comes for 2 s.
async fn texts(client: &mut Client, count: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < count {
        let Ok(frame) = tokio::time::timeout(Duration::from_secs(2), client.recv()).await else {
            break;
        };
        assert_eq!(frame["type"], "NOTICE", "{frame}");
        got.push(
            frame["payload"]["text"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    got
}

fn notice(text: String) -> Notice {
    Notice { text }
}

/// One node of the cluster, asked directly.
async fn node(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("node url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to a node")
}

/// Topics whose channels hash to slots of several masters: subscribers on two instances, served
/// by the shard that owns each topic (a node refuses SSUBSCRIBE for a slot it does not own).
/// Each topic is subscribed on exactly one node, by both instances, and publications from
/// either instance reach both, once.
#[test]
fn topics_live_on_their_shards() {
    let Some(url) = redis_cluster_url() else {
        return;
    };
    bounded_multi_thread_within(Duration::from_secs(60), async move {
        let prefix = format!("tc:{}:", uuid::Uuid::now_v7().simple());
        let (a, _) = instance(&url, &prefix).await;
        let (b, _) = instance(&url, &prefix).await;
        let topics: Vec<String> = (0..12).map(|i| format!("room:{i}")).collect();
        let mut on_a = a.client().await;
        let mut on_b = b.client().await;
        for topic in &topics {
            joined(&mut on_a, topic).await;
            joined(&mut on_b, topic).await;
        }

        // Where each topic's channel lives.
        let mut owners: BTreeMap<String, String> = BTreeMap::new();
        for node_url in url.split(',') {
            let mut conn = node(node_url).await;
            let channels: Vec<String> = redis::cmd("PUBSUB")
                .arg("SHARDCHANNELS")
                .arg(format!("{prefix}*"))
                .query_async(&mut conn)
                .await
                .expect("PUBSUB SHARDCHANNELS");
            for channel in channels.iter().filter(|c| !c.contains("#i:")) {
                let (_, count): (String, i64) = redis::cmd("PUBSUB")
                    .arg("SHARDNUMSUB")
                    .arg(channel)
                    .query_async(&mut conn)
                    .await
                    .expect("PUBSUB SHARDNUMSUB");
                assert_eq!(
                    count, 2,
                    "{channel}: both instances subscribe it on {node_url}"
                );
                let topic = channel[prefix.len() + 1..channel.len() - 1].to_string();
                assert!(
                    owners.insert(topic.clone(), node_url.to_string()).is_none(),
                    "{topic} subscribed on two shards"
                );
            }
        }
        let listed: BTreeSet<&String> = owners.keys().collect();
        let all = "#all".to_string();
        let wanted: BTreeSet<&String> = topics.iter().chain([&all]).collect();
        assert_eq!(listed, wanted, "every topic on exactly one shard");
        let shards: BTreeSet<&String> = owners.values().collect();
        assert!(
            shards.len() >= 2,
            "12 topics spread over several shards: {owners:?}"
        );

        // Publications from both instances reach both members, once.
        let (pa, pb) = (a.service.publisher(), b.service.publisher());
        for topic in &topics {
            assert!(pa.publish(topic, &notice(format!("a {topic}"))).await.ok);
            assert!(pb.publish(topic, &notice(format!("b {topic}"))).await.ok);
        }
        let mut expected: Vec<String> = topics
            .iter()
            .flat_map(|t| [format!("a {t}"), format!("b {t}")])
            .collect();
        expected.sort();
        for (who, client) in [("on A", &mut on_a), ("on B", &mut on_b)] {
            let mut got = texts(client, expected.len()).await;
            got.sort();
            assert_eq!(got, expected, "{who}");
            client.expect_silence(Duration::from_millis(200)).await;
        }
    });
}

/// The cluster script, started, killed and restarted by the failover test.
struct OwnCluster {
    script: PathBuf,
    dir: PathBuf,
    url: String,
}

impl OwnCluster {
    const PORTS: &'static str = "7201 7202 7203";

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("bash")
            .arg(&self.script)
            .args(args)
            .env("REDIS_CLUSTER_PORTS", Self::PORTS)
            .env("REDIS_CLUSTER_DIR", &self.dir)
            .output()
            .expect("run .ci/redis-cluster");
        assert!(
            out.status.success(),
            ".ci/redis-cluster {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn start() -> Option<OwnCluster> {
        let found = |bin: &str| {
            Command::new(bin)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !found("redis-server") || !found("redis-cli") {
            eprintln!(
                "a_killed_master_comes_back_and_delivery_resumes: skipped: redis-server or \
                 redis-cli not found"
            );
            return None;
        }
        let mut cluster = OwnCluster {
            script: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.ci/redis-cluster"),
            dir: std::env::temp_dir().join(format!("ws-kit-failover-{}", std::process::id())),
            url: String::new(),
        };
        cluster.url = cluster.run(&["start"]);
        Some(cluster)
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .env("REDIS_CLUSTER_PORTS", Self::PORTS)
            .env("REDIS_CLUSTER_DIR", &self.dir)
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A master's process is killed (its slots unreachable, no replica to take over) and started
/// again on its own config, empty. Meanwhile publishes say whether Redis took them. Once the
/// node is back, delivery resumes without anyone's help: every topic (those of the restarted
/// shard too: the client resubscribes them) and a direct send (its directory entry, lost with
/// the node's data, written again) reach the other instance; and every publication accepted
/// with `ok: true` arrived there, once.
#[test]
fn a_killed_master_comes_back_and_delivery_resumes() {
    let Some(cluster) = OwnCluster::start() else {
        return;
    };
    let url = cluster.url.clone();
    bounded_multi_thread_within(Duration::from_secs(120), async move {
        let prefix = format!("tf:{}:", uuid::Uuid::now_v7().simple());
        let (a, engine_a) = instance(&url, &prefix).await;
        let (b, engine_b) = instance(&url, &prefix).await;
        let topics: Vec<String> = (0..6).map(|i| format!("room:{i}")).collect();
        let mut member = b.client().await;
        for topic in &topics {
            joined(&mut member, topic).await;
        }
        let member_id = client_id(&member);
        let publisher = a.service.publisher();

        let mut accepted: Vec<String> = Vec::new();
        let mut refused = 0;
        let publish_round = |round: usize| {
            let publisher = publisher.clone();
            let topics = topics.clone();
            async move {
                let mut results = Vec::new();
                for topic in &topics {
                    let text = format!("{round} {topic}");
                    let ok = publisher.publish(topic, &notice(text.clone())).await.ok;
                    results.push((text, ok));
                }
                results
            }
        };
        for round in 0..3 {
            for (text, ok) in publish_round(round).await {
                assert!(ok, "before the kill: {text}");
                accepted.push(text);
            }
        }

        let _ = cluster.run(&["kill", "7201"]);
        let mut round = 3;
        let outage = tokio::time::Instant::now();
        while outage.elapsed() < Duration::from_secs(3) {
            for (text, ok) in publish_round(round).await {
                if ok {
                    accepted.push(text);
                } else {
                    refused += 1;
                }
            }
            round += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            refused > 0,
            "publishes to the dead shard's topics were refused"
        );
        let _ = cluster.run(&["restart", "7201"]);

        eventually_within(Duration::from_secs(20), "both engines back", || async {
            engine_a.is_connected() && engine_b.is_connected()
        })
        .await;
        // Delivery resumes by itself: a probe on every topic gets through.
        let probes = tokio::time::Instant::now();
        let mut pending: BTreeSet<String> = topics.iter().cloned().collect();
        let mut seen: Vec<String> = Vec::new();
        while !pending.is_empty() {
            assert!(
                probes.elapsed() < Duration::from_secs(20),
                "no delivery on {pending:?} after the restart"
            );
            for topic in pending.clone() {
                let text = format!("probe {topic} {}", probes.elapsed().as_millis());
                // Accepted or not: judged by what arrives.
                let _ = publisher.publish(&topic, &notice(text)).await;
            }
            while let Ok(frame) =
                tokio::time::timeout(Duration::from_millis(300), member.recv()).await
            {
                let text = frame["payload"]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if let Some(rest) = text.strip_prefix("probe ") {
                    let topic = rest.rsplit_once(' ').map(|(t, _)| t).unwrap_or_default();
                    pending.remove(topic);
                } else {
                    seen.push(text);
                }
            }
        }
        // Direct sends resume too (the directory entry, if its shard lost it, is written again
        // by the instance's reconciliation); once one arrives, the next must.
        let mut direct = 0;
        while direct < 2 {
            assert!(
                probes.elapsed() < Duration::from_secs(40),
                "no direct send arrived after the restart"
            );
            let must = direct == 1;
            let sent = publisher
                .send_to_client(member_id, &notice(format!("direct {direct}")))
                .await;
            assert!(!must || sent.ok, "{:?}", sent.error);
            let mut arrived = false;
            while let Ok(frame) =
                tokio::time::timeout(Duration::from_millis(500), member.recv()).await
            {
                let text = frame["payload"]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if text.starts_with("direct ") {
                    arrived = true;
                    break;
                }
                if !text.starts_with("probe ") {
                    seen.push(text);
                }
            }
            assert!(
                !must || arrived,
                "a direct send after the first one arrived was lost"
            );
            if arrived {
                direct += 1;
            }
        }

        let seen_set: BTreeSet<&String> = seen.iter().collect();
        assert_eq!(seen_set.len(), seen.len(), "a publication arrived twice");
        let lost: Vec<&String> = accepted.iter().filter(|t| !seen_set.contains(t)).collect();
        assert!(
            lost.is_empty(),
            "{} of {} publications accepted with ok: true never arrived: {lost:?}",
            lost.len(),
            accepted.len()
        );
        eprintln!(
            "{} accepted and delivered, {refused} refused during the outage",
            accepted.len()
        );
        drop(b);
        drop(a);
    });
}
