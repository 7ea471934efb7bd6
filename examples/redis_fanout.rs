//! Measures cross-instance pub/sub: N WebSocket subscribers split over two server instances
//! sharing a Redis, one publisher on the first instance. Prints deliveries/s and delivery latency
//! (p50/p99/max), lost and duplicate deliveries, next to a baseline measured in the same run: the
//! same load on one instance with the in-memory engine. Loopback only; bounded in count and time.
//!
//! Run: `cargo run --release --example redis_fanout --features redis -- 1000 1000 2000`
//! (subscribers, messages, rate in msg/s; 0 = as fast as possible). Needs `REDIS_URL`
//! (default `redis://127.0.0.1:6379`); with `REDIS_CLUSTER_URL` (comma-separated nodes) it runs
//! the same two instances on the cluster too and prints the cluster / single node ratio.

use futures_util::StreamExt;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use ws_kit::redis::RedisOptions;
use ws_kit::{Ctx, Message, Router, ServeOptions, Server, WsError, handler, routes};

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn now_us() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

#[derive(Message)]
struct Join {
    topic: String,
}

#[derive(Message)]
struct Joined;

#[derive(Message)]
struct Tick {
    seq: u64,
    sent_us: u64,
}

#[handler]
async fn join(ctx: Ctx<Join>) -> Result<(), WsError> {
    ctx.subscribe(&ctx.payload.topic).await?;
    ctx.send(&Joined);
    Ok(())
}

struct Outcome {
    deliveries: u64,
    elapsed: Duration,
    latencies_us: Vec<u64>,
    lost: u64,
    duplicates: u64,
}

async fn start(router: Router) -> (String, ws_kit::Service<()>) {
    let server = Server::bind(
        router,
        ServeOptions::new()
            .port(0)
            .max_queued_bytes(64 << 20, Default::default()),
    )
    .await
    .expect("bind");
    let url = format!("ws://{}", server.local_addr());
    let service = server.service();
    tokio::spawn(server.run());
    (url, service)
}

/// One subscriber: joins, then reads `messages` ticks (or until the deadline).
async fn subscriber(
    url: String,
    topic: String,
    messages: u64,
    deadline: Instant,
) -> (Vec<u64>, u64, u64) {
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connect");
    use futures_util::SinkExt;
    let join_frame = format!("{{\"type\":\"JOIN\",\"payload\":{{\"topic\":\"{topic}\"}}}}");
    ws.send(tokio_tungstenite::tungstenite::Message::text(join_frame))
        .await
        .expect("send");
    let mut latencies = Vec::with_capacity(messages as usize);
    let mut seen = vec![false; messages as usize];
    let (mut received, mut duplicates) = (0u64, 0u64);
    while received < messages {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(Ok(frame))) = tokio::time::timeout(remaining, ws.next()).await else {
            break;
        };
        let Ok(text) = frame.to_text() else { continue };
        if !text.contains("\"TICK\"") {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(text).expect("json");
        let seq = value["payload"]["seq"].as_u64().expect("seq");
        let sent = value["payload"]["sentUs"].as_u64().expect("sentUs");
        latencies.push(now_us().saturating_sub(sent));
        if std::mem::replace(&mut seen[seq as usize], true) {
            duplicates += 1;
        } else {
            received += 1;
        }
    }
    (latencies, messages - received, duplicates)
}

async fn run(
    urls: &[String],
    publisher: ws_kit::Publisher,
    subs: usize,
    messages: u64,
    rate: u64,
) -> Outcome {
    let topic = format!("bench.{}", uuid::Uuid::now_v7());
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut tasks = Vec::new();
    for i in 0..subs {
        let url = urls[i % urls.len()].clone();
        tasks.push(tokio::spawn(subscriber(
            url,
            topic.clone(),
            messages,
            deadline,
        )));
    }
    // Wait until every subscription is in place (Redis SUBSCRIBE included).
    let wait_start = Instant::now();
    while publisher.subscriber_count(&topic).await.unwrap_or(0) < subs
        && wait_start.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let interval = (rate > 0).then(|| Duration::from_secs_f64(1.0 / rate as f64));
    // Publications are handed to the engine when `publish` is called; their outcomes are awaited
    // at the end, so the publisher is not held to one Redis round trip per message.
    let mut pending = Vec::with_capacity(messages as usize);
    for seq in 0..messages {
        if let Some(interval) = interval {
            let due = started + interval * seq as u32;
            tokio::time::sleep_until(due.into()).await;
        } else if seq % 64 == 0 {
            tokio::task::yield_now().await;
        }
        pending.push(publisher.publish(
            &topic,
            &Tick {
                seq,
                sent_us: now_us(),
            },
        ));
    }
    for result in futures_util::future::join_all(pending).await {
        assert!(result.ok, "publish failed: {:?}", result.error);
    }
    let mut outcome = Outcome {
        deliveries: 0,
        elapsed: Duration::ZERO,
        latencies_us: Vec::new(),
        lost: 0,
        duplicates: 0,
    };
    for task in tasks {
        let (latencies, lost, duplicates) = task.await.expect("subscriber task");
        outcome.deliveries += latencies.len() as u64 - duplicates;
        outcome.latencies_us.extend(latencies);
        outcome.lost += lost;
        outcome.duplicates += duplicates;
    }
    outcome.elapsed = started.elapsed();
    outcome.latencies_us.sort_unstable();
    outcome
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn report(name: &str, o: &Outcome) -> f64 {
    let rate = o.deliveries as f64 / o.elapsed.as_secs_f64();
    println!(
        "{name:<28} {rate:>12.0} {:>9.2} {:>9.2} {:>9.2} {:>6} {:>6}",
        percentile(&o.latencies_us, 0.5),
        percentile(&o.latencies_us, 0.99),
        percentile(&o.latencies_us, 1.0),
        o.lost,
        o.duplicates
    );
    rate
}

/// One setup against another, measured in the same run.
fn ratio(name: &str, (rate, o): (f64, &Outcome), (base_rate, base): (f64, &Outcome)) {
    println!(
        "ratio {name}: deliveries/s {:.2}x, p50 {:.2}x, p99 {:.2}x",
        rate / base_rate,
        percentile(&o.latencies_us, 0.5) / percentile(&base.latencies_us, 0.5),
        percentile(&o.latencies_us, 0.99) / percentile(&base.latencies_us, 0.99)
    );
}

#[tokio::main]
async fn main() -> Result<(), ws_kit::Error> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>().ok());
    let subs = args.next().flatten().unwrap_or(1000).clamp(1, 5000) as usize;
    let messages = args.next().flatten().unwrap_or(1000).clamp(1, 100_000);
    let rate = args.next().flatten().unwrap_or(2000);
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    assert!(
        url.contains("127.0.0.1") || url.contains("localhost"),
        "loopback only"
    );
    now_us();

    println!(
        "{subs} subscribers, {messages} messages at {} msg/s",
        if rate == 0 {
            "max".to_string()
        } else {
            rate.to_string()
        }
    );
    println!(
        "{:<28} {:>12} {:>9} {:>9} {:>9} {:>6} {:>6}",
        "setup", "deliveries/s", "p50 ms", "p99 ms", "max ms", "lost", "dup"
    );

    let memory = Router::new().routes(routes![join]);
    let publisher = memory.publisher();
    let (url_m, service_m) = start(memory).await;
    let baseline = run(&[url_m], publisher, subs, messages, rate).await;
    let base_rate = report("memory, 1 instance", &baseline);
    service_m.shutdown();

    let redis = two_instances(&url, subs, messages, rate).await?;
    let redis_rate = report("redis, 2 instances", &redis);
    ratio("redis/memory", (redis_rate, &redis), (base_rate, &baseline));
    // The same two instances on a Redis Cluster (sharded pub/sub), when one is given.
    if let Ok(cluster) = std::env::var("REDIS_CLUSTER_URL") {
        assert!(
            cluster
                .split(',')
                .all(|u| u.contains("127.0.0.1") || u.contains("localhost")),
            "loopback only"
        );
        let on_cluster = two_instances(&cluster, subs, messages, rate).await?;
        let cluster_rate = report("redis cluster, 2 instances", &on_cluster);
        ratio(
            "cluster/single node",
            (cluster_rate, &on_cluster),
            (redis_rate, &redis),
        );
    }
    Ok(())
}

/// Two instances on `url` (one node, or a cluster's comma-separated nodes), subscribers split
/// between them, the publisher on the first.
async fn two_instances(
    url: &str,
    subs: usize,
    messages: u64,
    rate: u64,
) -> Result<Outcome, ws_kit::Error> {
    let prefix = format!("bench:{}:", uuid::Uuid::now_v7());
    let a = Router::new()
        .routes(routes![join])
        .pubsub(RedisOptions::new(url).prefix(&prefix).connect().await?);
    let b = Router::new()
        .routes(routes![join])
        .pubsub(RedisOptions::new(url).prefix(&prefix).connect().await?);
    let publisher = a.publisher();
    let (url_a, service_a) = start(a).await;
    let (url_b, service_b) = start(b).await;
    let outcome = run(&[url_a, url_b], publisher, subs, messages, rate).await;
    service_a.shutdown();
    service_b.shutdown();
    Ok(outcome)
}
