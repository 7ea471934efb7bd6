//! The load generator: `rpc`, `fanout` and `idle`. Loopback only; every loop is bounded in count
//! and time. Each mode returns a JSON object, printed as one line by `main`.

use futures_util::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Microseconds since this process's first call: the clock embedded in `SAY.sentUs`.
fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn check_loopback(url: &str) -> Result<(), String> {
    if url.starts_with("ws://127.") || url.starts_with("ws://localhost") {
        Ok(())
    } else {
        Err(format!("loopback only, got {url}"))
    }
}

/// Connects and reads the server's `WELCOME`, so a load starts on a greeted connection.
async fn connect(url: &str) -> Result<Ws, String> {
    let config = WebSocketConfig::default().read_buffer_size(64 * 1024);
    let fut = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
    let mut ws = match tokio::time::timeout(Duration::from_secs(10), fut).await {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("connect timed out".into()),
    };
    welcomed(&mut ws).await?;
    Ok(ws)
}

/// Waits (at most 10 s) for the `WELCOME` every server sends on open.
async fn welcomed<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(WsMessage::Text(t)))) if is_welcome(t.as_str()) => return Ok(()),
            Ok(Some(Ok(WsMessage::Text(t)))) => {
                return Err(format!("expected WELCOME first, got {}", t.as_str()));
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(None) => return Err("closed before WELCOME".into()),
            Err(_) => return Err("no WELCOME within 10 s".into()),
        }
    }
}

fn is_welcome(text: &str) -> bool {
    serde_json::from_str::<Frame>(text).is_ok_and(|f| f.ty == "WELCOME")
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    ty: &'a str,
    #[serde(default, borrow)]
    meta: FrameMeta<'a>,
}

#[derive(Deserialize, Default)]
struct FrameMeta<'a> {
    #[serde(rename = "correlationId", borrow)]
    correlation_id: Option<&'a str>,
}

/// What a subscriber reads of a `MSG` delivery.
#[derive(Debug, PartialEq)]
struct MsgPayload {
    sent_us: u64,
    seq: u64,
    from: u32,
}

/// Reads a delivery, `{"type":"MSG","payload":{"text":…,"sentUs":…,"seq":…,"from":…}}` (both
/// Rust servers write exactly this), with a targeted scan instead of a full JSON parse: at 2M
/// deliveries/s on one core the subscribers are the load generator's hot loop, and a parse there
/// saturated it, so delivery latency measured its own backlog rather than the server. WS-Kit 0.10
/// on Bun (`BunPubSub.publish`) writes the same keys in another order,
/// `{"payload":{…},"type":"MSG"}`, which is read the same way. Anything else is `None` (an error
/// in the result).
fn parse_msg(text: &str) -> Option<MsgPayload> {
    let rest = match text.strip_prefix(r#"{"type":"MSG","payload":{"#) {
        Some(rest) => rest,
        None => text
            .strip_prefix(r#"{"payload":{"#)?
            .strip_suffix(r#"},"type":"MSG"}"#)?,
    };
    let number = |key: &str| -> Option<u64> {
        let at = rest.find(key)? + key.len();
        let digits = rest[at..].bytes().take_while(u8::is_ascii_digit).count();
        rest.get(at..at + digits)?.parse().ok()
    };
    Some(MsgPayload {
        sent_us: number(r#""sentUs":"#)?,
        seq: number(r#""seq":"#)?,
        from: u32::try_from(number(r#""from":"#)?).ok()?,
    })
}

/// `rpc`: `conns` connections, each keeping `inflight` PINGs outstanding for `secs` seconds.
pub(crate) async fn rpc(
    url: &str,
    conns: usize,
    inflight: usize,
    secs: f64,
) -> Result<serde_json::Value, String> {
    check_loopback(url)?;
    let conns = conns.clamp(1, 10_000);
    let inflight = inflight.clamp(1, 1000);
    let mut sockets = Vec::with_capacity(conns);
    for _ in 0..conns {
        sockets.push(connect(url).await?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(conns);
    for ws in sockets {
        tasks.push(tokio::spawn(rpc_connection(ws, inflight, stop.clone())));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs.clamp(0.1, 600.0))).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    let mut hist = histogram();
    let (mut completed, mut errors, mut mismatches, mut unanswered) = (0u64, 0u64, 0u64, 0u64);
    for t in tasks {
        // Each connection drains its in-flight requests for at most 5 s after the stop.
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(10), t).await {
            hist.add(&r.hist).ok();
            completed += r.completed;
            errors += r.errors;
            mismatches += r.mismatches;
            unanswered += r.unanswered;
        } else {
            errors += 1;
        }
    }
    Ok(json!({
        "mode": "rpc",
        "conns": conns,
        "inflight": inflight,
        "secs": elapsed,
        "completed": completed,
        "rps": completed as f64 / elapsed,
        "p50_us": hist.value_at_quantile(0.50),
        "p99_us": hist.value_at_quantile(0.99),
        "p999_us": hist.value_at_quantile(0.999),
        "errors": errors,
        "mismatches": mismatches,
        "unanswered": unanswered,
    }))
}

struct RpcResult {
    hist: Histogram<u64>,
    completed: u64,
    errors: u64,
    mismatches: u64,
    unanswered: u64,
}

fn ping_frame(n: u64) -> WsMessage {
    WsMessage::Text(Utf8Bytes::from(format!(
        r#"{{"type":"PING","payload":{{"text":"hello"}},"meta":{{"correlationId":"c{n}"}}}}"#
    )))
}

async fn rpc_connection(mut ws: Ws, inflight: usize, stop: Arc<AtomicBool>) -> RpcResult {
    let mut r = RpcResult {
        hist: histogram(),
        completed: 0,
        errors: 0,
        mismatches: 0,
        unanswered: 0,
    };
    let mut pending: HashMap<u64, Instant> = HashMap::with_capacity(inflight * 2);
    let mut next = 0u64;
    for _ in 0..inflight {
        pending.insert(next, Instant::now());
        if ws.feed(ping_frame(next)).await.is_err() {
            r.errors += 1;
            return r;
        }
        next += 1;
    }
    if ws.flush().await.is_err() {
        r.errors += 1;
        return r;
    }
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    'outer: loop {
        if pending.is_empty() {
            break;
        }
        if drain_deadline.is_none() && stop.load(Ordering::Relaxed) {
            drain_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(5));
        }
        let msg = match drain_deadline {
            Some(d) => match tokio::time::timeout_at(d, ws.next()).await {
                Ok(m) => m,
                Err(_) => break,
            },
            None => match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
                Ok(m) => m,
                Err(_) => continue,
            },
        };
        let mut msg = msg;
        // Handle every frame that is ready, then flush the new requests once.
        loop {
            match msg {
                Some(Ok(WsMessage::Text(t))) => {
                    let now = Instant::now();
                    match serde_json::from_str::<Frame>(t.as_str()) {
                        Ok(f) if f.ty == "PONG" => {
                            let id = f
                                .meta
                                .correlation_id
                                .and_then(|c| c.strip_prefix('c'))
                                .and_then(|c| c.parse::<u64>().ok());
                            match id.and_then(|id| pending.remove(&id)) {
                                Some(sent) => {
                                    r.completed += 1;
                                    let us = now.duration_since(sent).as_micros() as u64;
                                    r.hist.saturating_record(us.max(1));
                                }
                                None => r.mismatches += 1,
                            }
                        }
                        _ => r.errors += 1,
                    }
                    if !stop.load(Ordering::Relaxed) {
                        pending.insert(next, Instant::now());
                        if ws.feed(ping_frame(next)).await.is_err() {
                            r.errors += 1;
                            break 'outer;
                        }
                        next += 1;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    r.errors += 1;
                    break 'outer;
                }
            }
            match ws.next().now_or_never() {
                Some(m) => msg = m,
                None => break,
            }
        }
        if ws.flush().await.is_err() {
            r.errors += 1;
            break;
        }
    }
    r.unanswered = pending.len() as u64;
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    r
}

/// Options of the `fanout` mode.
#[derive(Clone, Debug)]
pub(crate) struct FanoutOptions {
    /// Subscribers on the one topic.
    pub(crate) subscribers: usize,
    /// Publisher connections.
    pub(crate) publishers: usize,
    /// Messages per second per publisher; `None` = as fast as the system delivers, with at most
    /// `window` messages per publisher not yet delivered to every subscriber.
    pub(crate) rate: Option<f64>,
    /// Window of the full-speed mode.
    pub(crate) window: u64,
    /// Seconds of publishing.
    pub(crate) secs: f64,
}

struct SubResult {
    hist: Histogram<u64>,
    received: u64,
    duplicates: u64,
    /// Next expected sequence number per publisher.
    expected: Vec<u64>,
    gaps: u64,
    errors: u64,
}

/// `fanout`: subscribers join one topic, publishers send `SAY` to it.
pub(crate) async fn fanout(url: &str, opts: FanoutOptions) -> Result<serde_json::Value, String> {
    check_loopback(url)?;
    let n = opts.subscribers.clamp(1, 20_000);
    let p = opts.publishers.clamp(1, 100);
    let topic = format!("bench-{}", uuid::Uuid::now_v7());
    let delivered = Arc::new(AtomicU64::new(0));
    let (done, done_rx) = tokio::sync::watch::channel(false);
    // Subscribers: connect and join, 32 at a time.
    let mut subs = Vec::with_capacity(n);
    let mut joining = Vec::new();
    for i in 0..n {
        let url = url.to_string();
        let topic = topic.clone();
        joining.push(tokio::spawn(async move {
            let mut ws = connect(&url).await?;
            let join = format!(
                r#"{{"type":"JOIN","payload":{{"topic":"{topic}"}},"meta":{{"correlationId":"j"}}}}"#
            );
            ws.send(WsMessage::Text(join.into()))
                .await
                .map_err(|e| e.to_string())?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                match tokio::time::timeout_at(deadline, ws.next()).await {
                    Ok(Some(Ok(WsMessage::Text(t)))) if t.as_str().contains("\"JOINED\"") => {
                        return Ok::<Ws, String>(ws);
                    }
                    Ok(Some(Ok(_))) => {}
                    _ => return Err("join failed".to_string()),
                }
            }
        }));
        if joining.len() == 32 || i + 1 == n {
            for j in joining.drain(..) {
                subs.push(j.await.map_err(|e| e.to_string())??);
            }
        }
    }
    let sub_tasks: Vec<_> = subs
        .into_iter()
        .map(|ws| tokio::spawn(subscriber(ws, p, delivered.clone(), done_rx.clone())))
        .collect();
    let mut pubs = Vec::with_capacity(p);
    for _ in 0..p {
        pubs.push(connect(url).await?);
    }
    let start = Instant::now();
    let secs = opts.secs.clamp(0.1, 600.0);
    let pub_tasks: Vec<_> = pubs
        .into_iter()
        .enumerate()
        .map(|(i, ws)| {
            tokio::spawn(publisher(
                ws,
                i as u32,
                topic.clone(),
                opts.clone(),
                n as u64 * p as u64,
                delivered.clone(),
            ))
        })
        .collect();
    let mut sent = vec![0u64; p];
    let mut pub_errors = 0u64;
    for (i, t) in pub_tasks.into_iter().enumerate() {
        match tokio::time::timeout(Duration::from_secs_f64(secs + 10.0), t).await {
            Ok(Ok(Ok(s))) => sent[i] = s,
            Ok(Ok(Err(s))) => {
                sent[i] = s;
                pub_errors += 1;
            }
            _ => pub_errors += 1,
        }
    }
    let publish_secs = start.elapsed().as_secs_f64();
    let total_sent: u64 = sent.iter().sum();
    let expected_deliveries = total_sent * n as u64;
    // Wait (bounded) until everything sent is delivered, then stop the subscribers.
    let drain_deadline = Instant::now() + Duration::from_secs(20);
    while delivered.load(Ordering::Relaxed) < expected_deliveries && Instant::now() < drain_deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let _ = done.send(true);
    let mut hist = histogram();
    let (mut received, mut duplicates, mut missing, mut errors) = (0u64, 0u64, 0u64, pub_errors);
    for t in sub_tasks {
        match tokio::time::timeout(Duration::from_secs(5), t).await {
            Ok(Ok(r)) => {
                hist.add(&r.hist).ok();
                received += r.received;
                duplicates += r.duplicates;
                errors += r.errors;
                missing += r.gaps;
                for (from, exp) in r.expected.iter().enumerate() {
                    missing += sent[from].saturating_sub(*exp);
                }
            }
            _ => errors += 1,
        }
    }
    Ok(json!({
        "mode": "fanout",
        "subscribers": n,
        "publishers": p,
        "rate": opts.rate,
        "publish_secs": publish_secs,
        "secs": elapsed,
        "sent": total_sent,
        "received": received,
        "deliveries_per_sec": received as f64 / elapsed,
        "p50_us": hist.value_at_quantile(0.50),
        "p99_us": hist.value_at_quantile(0.99),
        "missing": missing,
        "duplicates": duplicates,
        "errors": errors,
    }))
}

async fn subscriber(
    mut ws: Ws,
    publishers: usize,
    delivered: Arc<AtomicU64>,
    mut done: tokio::sync::watch::Receiver<bool>,
) -> SubResult {
    let mut r = SubResult {
        hist: histogram(),
        received: 0,
        duplicates: 0,
        expected: vec![0; publishers],
        gaps: 0,
        errors: 0,
    };
    loop {
        // No timer per frame: the stop signal is a watch channel, checked only when no frame is
        // ready (the subscribers are the load generator's hot loop).
        let msg = tokio::select! {
            biased;
            m = ws.next() => m,
            _ = done.changed() => break,
        };
        match msg {
            Some(Ok(WsMessage::Text(t))) => {
                let now = now_us();
                match parse_msg(t.as_str()) {
                    Some(m) if (m.from as usize) < publishers => {
                        r.received += 1;
                        delivered.fetch_add(1, Ordering::Relaxed);
                        r.hist
                            .saturating_record(now.saturating_sub(m.sent_us).max(1));
                        let exp = &mut r.expected[m.from as usize];
                        if m.seq == *exp {
                            *exp += 1;
                        } else if m.seq < *exp {
                            r.duplicates += 1;
                        } else {
                            r.gaps += m.seq - *exp;
                            *exp = m.seq + 1;
                        }
                    }
                    _ => r.errors += 1,
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => {
                if !*done.borrow() {
                    r.errors += 1;
                }
                break;
            }
        }
    }
    r
}

/// Publishes for `opts.secs`; returns the count sent (as `Err` when the socket failed).
async fn publisher(
    mut ws: Ws,
    from: u32,
    topic: String,
    opts: FanoutOptions,
    per_round: u64,
    delivered: Arc<AtomicU64>,
) -> Result<u64, u64> {
    let start = Instant::now();
    let secs = opts.secs.clamp(0.1, 600.0);
    let mut seq = 0u64;
    let mut sent_total = 0u64;
    let frame = |seq: u64| {
        WsMessage::Text(Utf8Bytes::from(format!(
            r#"{{"type":"SAY","payload":{{"topic":"{topic}","text":"hello world","sentUs":{},"seq":{seq},"from":{from}}}}}"#,
            now_us()
        )))
    };
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while start.elapsed().as_secs_f64() < secs {
        let due = match opts.rate {
            Some(rate) => {
                tick.tick().await;
                ((start.elapsed().as_secs_f64() * rate) as u64).saturating_sub(seq)
            }
            None => {
                // Full speed: keep at most `window` messages per publisher undelivered
                // (assuming the publishers progress alike: sent × subscribers × publishers).
                let cap = opts.window * per_round;
                let outstanding =
                    (sent_total * per_round).saturating_sub(delivered.load(Ordering::Relaxed));
                if outstanding >= cap {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                    0
                } else {
                    ((cap - outstanding) / per_round).clamp(1, opts.window)
                }
            }
        };
        for _ in 0..due.min(100_000) {
            if ws.feed(frame(seq)).await.is_err() {
                return Err(seq);
            }
            seq += 1;
            sent_total += 1;
        }
        if due > 0 && ws.flush().await.is_err() {
            return Err(seq);
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.flush()).await;
    // Keep the socket open until the caller stops waiting; closing it is harmless for delivery.
    Ok(seq)
}

/// Source addresses of the idle mode: 127.0.0.2 ..= 127.0.0.101, round robin, so no address runs
/// short of ephemeral ports (about 28k each) and a bind never searches a crowded port range.
const SOURCES: usize = 100;

/// `idle`: opens `n` connections from [`SOURCES`] loopback source addresses, each counted once
/// its `WELCOME` arrived, reports, then holds them for `hold` seconds.
pub(crate) async fn idle(
    url: &str,
    n: usize,
    hold: f64,
) -> Result<(Vec<tokio::task::JoinHandle<()>>, serde_json::Value), String> {
    check_loopback(url)?;
    let addr: SocketAddr = url
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .parse()
        .map_err(|e| format!("bad address in {url}: {e}"))?;
    let n = n.min(200_000);
    let start = Instant::now();
    let mut held = Vec::with_capacity(n);
    let mut failed = 0usize;
    let mut first_error = None;
    let mut batch = Vec::new();
    for i in 0..n {
        let source = Ipv4Addr::new(127, 0, 0, 2 + (i % SOURCES) as u8);
        let url = url.to_string();
        batch.push(tokio::spawn(async move {
            let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
            // Ports in TIME_WAIT from an earlier run must not slow down or fail the bind.
            socket.set_reuseaddr(true).map_err(|e| e.to_string())?;
            socket
                .bind(SocketAddr::new(source.into(), 0))
                .map_err(|e| e.to_string())?;
            let stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(addr))
                .await
                .map_err(|_| "connect timed out".to_string())?
                .map_err(|e| e.to_string())?;
            let config = WebSocketConfig::default().read_buffer_size(1024);
            let (mut ws, _) = tokio::time::timeout(
                Duration::from_secs(10),
                tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(config)),
            )
            .await
            .map_err(|_| "handshake timed out".to_string())?
            .map_err(|e| e.to_string())?;
            // Counted once greeted: the server has sent what every connection gets.
            welcomed(&mut ws).await?;
            Ok::<_, String>(ws)
        }));
        if batch.len() == 64 || i + 1 == n {
            for b in batch.drain(..) {
                match b.await {
                    Ok(Ok(ws)) => {
                        let (_, mut read) = ws.split();
                        // Answers pings (tungstenite does so while the stream is polled).
                        held.push(tokio::spawn(async move {
                            while let Some(Ok(_)) = read.next().await {}
                        }));
                    }
                    Ok(Err(e)) => {
                        failed += 1;
                        first_error.get_or_insert(e);
                    }
                    Err(e) => {
                        failed += 1;
                        first_error.get_or_insert(e.to_string());
                    }
                }
            }
            if start.elapsed() > Duration::from_secs(120) {
                first_error.get_or_insert("stopped opening after 120 s".into());
                break;
            }
        }
    }
    let opened = held.len();
    let result = json!({
        "mode": "idle",
        "requested": n,
        "opened": opened,
        "failed": failed,
        "first_error": first_error,
        "open_secs": start.elapsed().as_secs_f64(),
        "hold_secs": hold,
    });
    Ok((held, result))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_msg_reads_what_the_servers_write_and_nothing_else() {
        let frame =
            r#"{"type":"MSG","payload":{"text":"hello world","sentUs":123456,"seq":7,"from":2}}"#;
        assert_eq!(
            parse_msg(frame),
            Some(MsgPayload {
                sent_us: 123_456,
                seq: 7,
                from: 2
            })
        );
        // WS-Kit on Bun: the same keys, `type` last.
        let bun =
            r#"{"payload":{"text":"hello world","sentUs":123456,"seq":7,"from":2},"type":"MSG"}"#;
        assert_eq!(parse_msg(bun), parse_msg(frame));
        for bad in [
            r#"{"payload":{"sentUs":1,"seq":7,"from":2},"type":"PONG"}"#,
            r#"{"type":"PONG","payload":{"sentUs":1,"seq":7,"from":2}}"#,
            r#"{"type":"MSG","payload":{"text":"x","seq":7,"from":2}}"#,
            r#"{"type":"MSG","payload":{"sentUs":"1","seq":7,"from":2}}"#,
            r#"{"type":"MSG","payload":{"sentUs":1,"seq":7,"from":99999999999}}"#,
        ] {
            assert_eq!(parse_msg(bad), None, "{bad}");
        }
    }
}
