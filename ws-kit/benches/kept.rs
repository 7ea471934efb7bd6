//! What keeping a topic (docs/protocol.md 8a) costs per publication, beside a plain topic in
//! the same run, and how long recovering 100 missed publications takes — in memory and, with
//! `REDIS_URL` set, on Redis.
//!
//! Run: `REDIS_URL=redis://127.0.0.1:6379 cargo bench -p ws-kit --features bench,redis --bench kept`.
//! Publication groups: 100 subscribers, each publication encoded once and queued on every
//! subscriber (drained each iteration). Recovery groups: a new subscriber from a position 100
//! publications back, until those 100 are queued on it (no socket).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::{Duration, Instant};
use ws_kit::__bench::Fanout;
use ws_kit::Message;
use ws_kit::pubsub::{Keep, Position};

#[derive(Message)]
struct NewMessage {
    username: String,
    text: String,
}

const TOPIC: &str = "room:bench";
const SUBSCRIBERS: usize = 100;
const QUEUE: usize = 64 * 1024 * 1024;

fn message() -> NewMessage {
    NewMessage {
        username: "ada".into(),
        text: "hello, everyone in the room".into(),
    }
}

fn memory(c: &mut Criterion) {
    let keep = Keep::last(100).for_at_most(Duration::from_secs(300));
    let mut group = c.benchmark_group("memory: publish to 100 subscribers");
    let cases = [
        ("plain topic", Fanout::new(TOPIC, SUBSCRIBERS, QUEUE)),
        (
            "kept, plain subscribers",
            Fanout::kept(TOPIC, SUBSCRIBERS, QUEUE, keep, false),
        ),
        (
            "kept, positioned subscribers",
            Fanout::kept(TOPIC, SUBSCRIBERS, QUEUE, keep, true),
        ),
    ];
    let msg = message();
    for (name, fanout) in &cases {
        group.bench_function(*name, |b| {
            b.iter(|| {
                black_box(fanout.publish(TOPIC, &msg));
                fanout.drain()
            })
        });
    }
    group.finish();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let fanout = Fanout::kept(TOPIC, 1, QUEUE, Keep::last(200), true);
    let since = runtime.block_on(missed_100(&fanout));
    c.bench_function("memory: recover 100 missed", |b| {
        b.iter(|| {
            let (subscribed, queued) = runtime.block_on(fanout.recover(TOPIC, since.clone()));
            assert!(subscribed.recovered && queued == 100);
        })
    });
}

/// The position before 100 publications made now.
async fn missed_100(fanout: &Fanout) -> Position {
    let (at, _) = fanout.recover(TOPIC, Position::default()).await;
    for _ in 0..100 {
        assert!(fanout.publish_async(TOPIC, &message()).await.ok);
    }
    fanout.drain();
    at.position
}

#[cfg(feature = "redis")]
fn redis(c: &mut Criterion) {
    use std::sync::Arc;
    use ws_kit::pubsub::PubSub;
    use ws_kit::redis::RedisOptions;

    let Ok(url) = std::env::var("REDIS_URL") else {
        eprintln!("kept: the Redis groups skipped: REDIS_URL not set");
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let engine = |kept: bool| {
        let url = url.clone();
        async move {
            let mut options =
                RedisOptions::new(url).prefix(format!("bench-{}:", uuid::Uuid::now_v7().simple()));
            if kept {
                options = options.keep("room:*", Keep::last(200));
            }
            let engine: Arc<dyn PubSub> = Arc::new(options.connect().await.expect("redis"));
            engine
        }
    };
    let cases = runtime.block_on(async {
        vec![
            (
                "plain topic",
                Fanout::on(engine(false).await, TOPIC, SUBSCRIBERS, QUEUE, false).await,
            ),
            (
                "kept, plain subscribers",
                Fanout::on(engine(true).await, TOPIC, SUBSCRIBERS, QUEUE, false).await,
            ),
            (
                "kept, positioned subscribers",
                Fanout::on(engine(true).await, TOPIC, SUBSCRIBERS, QUEUE, true).await,
            ),
        ]
    });
    let mut group = c.benchmark_group("redis: publish to 100 subscribers, 100 at a time");
    group.throughput(Throughput::Elements(100));
    let msg = message();
    for (name, fanout) in &cases {
        group.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let all: Vec<_> = (0..100)
                            .map(|_| fanout.publish_async(TOPIC, &msg))
                            .collect();
                        for result in futures_util::future::join_all(all).await {
                            assert!(result.ok);
                        }
                        fanout.drain();
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();

    let fanout =
        runtime.block_on(async { Fanout::on(engine(true).await, TOPIC, 1, QUEUE, true).await });
    let since = runtime.block_on(missed_100(&fanout));
    c.bench_function("redis: recover 100 missed", |b| {
        b.iter(|| {
            let (subscribed, queued) = runtime.block_on(fanout.recover(TOPIC, since.clone()));
            assert!(
                subscribed.recovered && queued == 100,
                "{subscribed:?} {queued}"
            );
        })
    });
}

#[cfg(not(feature = "redis"))]
fn redis(_: &mut Criterion) {
    eprintln!("kept: the Redis groups need the `redis` feature");
}

criterion_group!(benches, memory, redis);
criterion_main!(benches);
