//! What tracing costs per message: the same dispatches with no subscriber, with a subscriber that
//! leaves message spans off (`info`: the connection span's level), and with one that records them
//! (`debug`).
//!
//! Run: `cargo bench -p ws-kit --features bench --bench tracing`. The no-subscriber case runs
//! first: once a subscriber has been set, `tracing` stays on its slower "a dispatcher exists"
//! path for the rest of the process.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use ws_kit::__bench::Conn;

mod workload;

const SEND: &str = r#"{"type":"SEND_MESSAGE","payload":{"roomId":"r1","text":"hello"},"meta":{"timestamp":1700000000000}}"#;
const PING: &str = r#"{"type":"PING","payload":{"text":"hello"},"meta":{"correlationId":"c1"}}"#;

fn dispatches(c: &mut Criterion, label: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _rt = rt.enter();
    let mut conn = Conn::new(workload::router(), ()).unwrap();
    let mut g = c.benchmark_group("tracing");
    g.bench_function(format!("event/{label}"), |b| {
        b.iter(|| conn.dispatch(black_box(SEND)))
    });
    g.bench_function(format!("rpc_ping_pong/{label}"), |b| {
        b.iter(|| {
            conn.dispatch(black_box(PING));
            black_box(conn.drain())
        })
    });
    g.finish();
}

fn with_subscriber(c: &mut Criterion, label: &str, level: LevelFilter) {
    let subscriber = tracing_subscriber::registry().with(level);
    tracing::subscriber::with_default(subscriber, || dispatches(c, label));
}

fn tracing_cost(c: &mut Criterion) {
    dispatches(c, "no_subscriber");
    with_subscriber(c, "subscriber_info", LevelFilter::INFO);
    with_subscriber(c, "subscriber_debug_spans", LevelFilter::DEBUG);
}

criterion_group!(benches, tracing_cost);
criterion_main!(benches);
