//! Fixed-count loops of the per-message path, for instruction counting under callgrind: counts are
//! repeatable where timings drift. The cost of one message is the difference between two counts:
//!
//! ```text
//! cargo bench -p ws-kit --features bench --bench icount --no-run
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/deps/icount-<hash> event 1000
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/deps/icount-<hash> event 11000
//! ```
//!
//! Modes: `event` (the one-pass path), `full` (a frame the one-pass path declines), `rpc`.
use std::hint::black_box;
use ws_kit::__bench::Conn;

mod workload;

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let n: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _g = rt.enter();
    let mut conn = Conn::new(workload::router(), ()).unwrap();
    let event = r#"{"type":"SEND_MESSAGE","payload":{"roomId":"general","text":"hello there"}}"#;
    let event_full =
        r#"{ "type":"SEND_MESSAGE","payload":{"roomId":"general","text":"hello there"}}"#;
    let event_full = &event_full.replacen("{ ", "{ \"meta\":{},", 1);
    let rpc = r#"{"type":"PING","payload":{"text":"hello"},"meta":{"correlationId":"c1"}}"#;
    for _ in 0..n {
        match mode.as_str() {
            "event" => conn.dispatch(event),
            "full" => conn.dispatch(event_full),
            _ => conn.dispatch(rpc),
        }
        black_box(conn.drain());
    }
}
