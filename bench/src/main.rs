//! `ws-kit-bench`: ws-kit against a hand-written tokio-tungstenite server, measured in the same run.
//!
//! ```text
//! ws-kit-bench server ws-kit|baseline|ws-kit-axum [--port P]
//! ws-kit-bench load rpc    --url ws://127.0.0.1:P [--conns 64] [--inflight 16] [--secs 5]
//! ws-kit-bench load fanout --url ws://127.0.0.1:P [--subs 1000] [--pubs 1] [--rate 2000|max] [--window 64] [--secs 5]
//! ws-kit-bench load idle   --url ws://127.0.0.1:P [--conns 10000] [--hold 10]
//! ws-kit-bench compare [--quick] [--idle]   (--idle: the idle-memory rows alone)
//!     (with a third peer, WS-Kit 0.10 on Bun: bench/bun/server.ts, run with the Bun binary of
//!      bench/bun's npm packages, `npm ci` there first if missing)
//! ws-kit-bench fuzz [--secs 10] [--inputs N] [--seed 1]
//! ```
//!
//! `load` prints one JSON line (the result) and one human line starting with `#`.

mod compare;
mod fuzz;
mod load;
mod servers;

use std::collections::HashMap;
use std::process::ExitCode;

/// `--key value` pairs after the positional arguments.
struct Flags(HashMap<String, String>);

impl Flags {
    fn parse(args: &[String]) -> Flags {
        let mut map = HashMap::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if let Some(key) = a.strip_prefix("--") {
                let value = it.next().cloned().unwrap_or_default();
                map.insert(key.to_string(), value);
            }
        }
        Flags(map)
    }

    fn get<T: std::str::FromStr>(&self, key: &str, default: T) -> T {
        self.0
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    fn url(&self) -> String {
        self.0
            .get("url")
            .cloned()
            .unwrap_or_else(|| "ws://127.0.0.1:3000".into())
    }
}

const USAGE: &str = "usage: ws-kit-bench server ws-kit|baseline|ws-kit-axum [--port P] | load rpc|fanout|idle [--url ws://127.0.0.1:P ...] | compare [--quick] [--idle] | fuzz [--secs S] [--inputs N] [--seed X] | redis-connect [--conns N] [--redis redis://127.0.0.1:6379]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("server") => {
            let Some(kind) = args.get(1).and_then(|k| servers::Kind::parse(k)) else {
                eprintln!("{USAGE}");
                return ExitCode::FAILURE;
            };
            let flags = Flags::parse(&args[2..]);
            run_server(kind, flags.get("port", 3000u16))
        }
        Some("load") => {
            let Some(mode) = args.get(1).cloned() else {
                eprintln!("{USAGE}");
                return ExitCode::FAILURE;
            };
            let flags = Flags::parse(&args[2..]);
            run_load(&mode, &flags)
        }
        Some("compare") => compare::run(
            args.iter().any(|a| a == "--quick"),
            args.iter().any(|a| a == "--idle"),
        ),
        Some("redis-connect") => {
            let flags = Flags::parse(&args[1..]);
            let url = flags
                .0
                .get("redis")
                .cloned()
                .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
            redis_connect(&url, flags.get("conns", 20_000))
        }
        Some("fuzz") => {
            let flags = Flags::parse(&args[1..]);
            fuzz::run(
                flags.get("secs", 10.0),
                flags.get("inputs", u64::MAX),
                flags.get("seed", 1),
            )
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn run_server(kind: servers::Kind, port: u16) -> ExitCode {
    runtime().block_on(async {
        match servers::bind(kind, port).await {
            Ok((addr, serve)) => {
                println!("listening on ws://{addr}");
                serve.await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("bind failed: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn run_load(mode: &str, flags: &Flags) -> ExitCode {
    let url = flags.url();
    let rt = runtime();
    let result = rt.block_on(async {
        match mode {
            "rpc" => {
                load::rpc(
                    &url,
                    flags.get("conns", 64),
                    flags.get("inflight", 16),
                    flags.get("secs", 5.0),
                )
                .await
            }
            "fanout" => {
                let rate = match flags.0.get("rate").map(String::as_str) {
                    None => Some(2000.0),
                    Some("max") => None,
                    Some(r) => r.parse().ok(),
                };
                let opts = load::FanoutOptions {
                    subscribers: flags.get("subs", 1000),
                    publishers: flags.get("pubs", 1),
                    rate,
                    window: flags.get("window", 64u64).max(1),
                    secs: flags.get("secs", 5.0),
                };
                load::fanout(&url, opts).await
            }
            "idle" => {
                let hold: f64 = flags.get::<f64>("hold", 10.0).clamp(0.0, 600.0);
                match load::idle(&url, flags.get("conns", 10_000), hold).await {
                    Ok((held, result)) => {
                        // Report as soon as the connections are open, then hold them.
                        println!("{result}");
                        println!("# idle: {} connections open", result["opened"]);
                        tokio::time::sleep(std::time::Duration::from_secs_f64(hold)).await;
                        for h in held {
                            h.abort();
                        }
                        Err(String::new())
                    }
                    Err(e) => Err(e),
                }
            }
            _ => Err(format!("unknown load mode {mode}\n{USAGE}")),
        }
    });
    // Dropping the runtime could wait on sockets; the process exits right after.
    rt.shutdown_background();
    match result {
        Ok(v) => {
            println!("{v}");
            println!("# {}", human(&v));
            ExitCode::SUCCESS
        }
        Err(e) if e.is_empty() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn human(v: &serde_json::Value) -> String {
    match v["mode"].as_str() {
        Some("rpc") => format!(
            "rpc {}x{}: {:.0} RPC/s, p50/p99/p999 {}/{}/{} µs, errors {}, mismatches {}",
            v["conns"],
            v["inflight"],
            v["rps"].as_f64().unwrap_or(0.0),
            v["p50_us"],
            v["p99_us"],
            v["p999_us"],
            v["errors"],
            v["mismatches"]
        ),
        Some("fanout") => format!(
            "fanout {} subs: {:.0} deliveries/s, p50/p99 {}/{} µs, sent {}, missing {}, duplicates {}, errors {}",
            v["subscribers"],
            v["deliveries_per_sec"].as_f64().unwrap_or(0.0),
            v["p50_us"],
            v["p99_us"],
            v["sent"],
            v["missing"],
            v["duplicates"],
            v["errors"]
        ),
        _ => v.to_string(),
    }
}

/// Opening `conns` connections on the Redis engine, and the engine's Redis connection cut and
/// restored, with a directory and one channel per instance (the default) against one channel
/// per connection, in the same run. Loopback Redis only.
fn redis_connect(url: &str, conns: usize) -> ExitCode {
    use ws_kit::redis::DirectSends;
    if !(url.contains("127.0.0.1") || url.contains("localhost")) {
        eprintln!("loopback Redis only");
        return ExitCode::FAILURE;
    }
    let conns = conns.min(100_000);
    println!("{conns} connections on one instance, Redis at {url}");
    println!(
        "{:<24} {:>11} {:>14} {:>13} {:>9} {:>12}",
        "direct sends", "connect ms", "resubscribe ms", "reconcile ms", "channels", "Redis bytes"
    );
    let rt = runtime();
    for (name, direct) in [
        ("directory (default)", DirectSends::Directory),
        ("channel per connection", DirectSends::ChannelPerConnection),
    ] {
        match rt.block_on(ws_kit::__bench::redis_connect_cost(url, conns, direct)) {
            Ok(c) => println!(
                "{name:<24} {:>11.0} {:>14.0} {:>13.0} {:>9} {:>12}",
                c.connect.as_secs_f64() * 1e3,
                c.resubscribe.as_secs_f64() * 1e3,
                c.reconcile.as_secs_f64() * 1e3,
                c.channels,
                c.redis_bytes
            ),
            Err(e) => {
                eprintln!("{name}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
