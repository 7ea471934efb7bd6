//! Opens N idle WebSocket connections to a server and holds them, to measure the server's memory
//! per idle connection. Loopback only; bounded in count and time.
//!
//! Run: `cargo run --release --example idle -- ws://127.0.0.1:3000 10000 20`
//! (URL, connections, seconds to hold). `scripts/idle-memory.sh` runs the whole measurement.

use futures_util::StreamExt;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "ws://127.0.0.1:3000".into());
    let count: usize = args
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000)
        .min(60_000);
    let hold = Duration::from_secs(
        args.next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10)
            .min(600),
    );
    assert!(
        url.starts_with("ws://127.") || url.starts_with("ws://localhost"),
        "loopback only"
    );

    let started = Instant::now();
    let mut sockets = Vec::with_capacity(count);
    let mut failed = 0usize;
    for _ in 0..count {
        match tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(&url),
        )
        .await
        {
            Ok(Ok((ws, _))) => {
                let (_, mut read) = ws.split();
                // Answer pings (tungstenite does so while the stream is polled) and read WELCOME.
                sockets.push(tokio::spawn(async move {
                    while let Some(Ok(_)) = read.next().await {}
                }));
            }
            _ => failed += 1,
        }
    }
    println!(
        "open {} connections ({failed} failed) in {:.1?}",
        sockets.len(),
        started.elapsed()
    );
    tokio::time::sleep(hold).await;
    for s in sockets {
        s.abort();
    }
}
