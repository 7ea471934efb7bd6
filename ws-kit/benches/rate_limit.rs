//! What a rate limit costs per message: one RPC dispatched (decode, validate, middleware, handler,
//! reply queued) without middleware, with a middleware that only calls `next`, and with the
//! in-memory `RateLimit` (a bucket that never refuses), so the differences are the middleware
//! chain's cost and the limiter's.
//!
//! Run: `cargo bench -p ws-kit --features bench --bench rate_limit -- --warm-up-time 1 --measurement-time 3`.
//!
//! Timings drift on a shared machine; instruction counts do not. `icount <router> <n>` runs a
//! fixed loop instead of criterion, for callgrind (the cost of one message is the difference of
//! two counts over the difference of `n`):
//!
//! ```text
//! cargo bench -p ws-kit --features bench --bench rate_limit --no-run
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/deps/rate_limit-<hash> icount rate_limit_by_client 1000
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/deps/rate_limit-<hash> icount rate_limit_by_client 11000
//! ```

use criterion::{Criterion, criterion_group};
use std::hint::black_box;
use ws_kit::__bench::Conn;
use ws_kit::rate_limit::{Bucket, RateLimit};
use ws_kit::{Incoming, Next, Router, WsError};

mod workload;

const PING: &str = r#"{"type":"PING","payload":{"text":"hello"},"meta":{"correlationId":"c1"}}"#;
const PONG: &str = r#"{"type":"PONG","meta":{"correlationId":"c1"},"payload":{"reply":"hello"}}"#;

async fn noop(msg: Incoming<()>, next: Next<()>) -> Result<(), WsError> {
    drop(msg);
    next.run().await
}

/// A bucket no benchmark empties: 4 billion tokens, refilled at a trillion a second.
fn roomy() -> Bucket {
    Bucket::new(u32::MAX, 1e12)
}

fn rpc_with_middleware(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _rt = rt.enter();
    let mut g = c.benchmark_group("rpc_dispatch");
    for (name, router) in routers() {
        let mut conn = Conn::new(router, ()).unwrap();
        // Sanity: exactly the PONG, answered inline.
        conn.dispatch(PING);
        let out = conn.drain();
        assert_eq!(out.len(), 1, "{name}");
        assert_eq!(out[0].to_text().unwrap(), PONG, "{name}");
        assert_eq!(conn.pending_tasks(), 0, "{name}");
        g.bench_function(name, |b| {
            b.iter(|| {
                conn.dispatch(black_box(PING));
                black_box(conn.drain())
            })
        });
    }
    g.finish();
}

/// The routers compared, by name.
fn routers() -> [(&'static str, Router); 4] {
    [
        ("no_middleware", workload::router()),
        ("noop_middleware", workload::router().middleware(noop)),
        (
            "rate_limit_by_client",
            workload::router().middleware(RateLimit::in_memory("bench", roomy())),
        ),
        (
            "rate_limit_by_user_and_type",
            workload::router()
                .middleware(RateLimit::in_memory("bench", roomy()).by_user().by_type()),
        ),
    ]
}

/// `icount <router> <n>`: `n` PINGs through that router, nothing else (for callgrind).
fn icount(name: &str, n: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _rt = rt.enter();
    let (_, router) = routers()
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no router named {name}"));
    let mut conn = Conn::new(router, ()).unwrap();
    for _ in 0..n {
        conn.dispatch(black_box(PING));
        black_box(conn.drain());
    }
}

criterion_group!(benches, rpc_with_middleware);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("icount") {
        let n = args.get(3).and_then(|n| n.parse().ok()).unwrap_or(100_000);
        icount(
            args.get(2).map(String::as_str).unwrap_or("no_middleware"),
            n,
        );
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
