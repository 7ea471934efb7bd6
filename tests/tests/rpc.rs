//! docs/protocol.md section 5 (RPC) and 2a (dispatch order and concurrency) over real sockets.

mod support;

use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Client, TestServer, WAIT, roundtrip, serve};
use tokio::sync::{Semaphore, mpsc};
use ws_kit::{
    Ctx, ErrorEvent, ErrorKind, Incoming, Message, Next, Router, ServeOptions, WsError, handler,
    routes,
};

// ---------------------------------------------------------------------------------------------
// Per-connection probe: handlers report to the test through it, and wait on its gate.
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Probe {
    events: mpsc::UnboundedSender<String>,
    gate: Arc<Semaphore>,
}

impl Probe {
    fn emit(&self, event: impl Into<String>) {
        let _ = self.events.send(event.into());
    }
}

/// Reports `dropped:<id>` when a handler's future is dropped before it finished.
struct DropGuard {
    probe: Probe,
    id: String,
    armed: bool,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if self.armed {
            self.probe.emit(format!("dropped:{}", self.id));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Messages and handlers
// ---------------------------------------------------------------------------------------------

#[derive(Message)]
#[rpc(response = EchoReply)]
struct Echo {
    text: String,
}

#[derive(Message)]
struct EchoReply {
    text: String,
}

#[handler]
async fn echo(ctx: Ctx<Echo, Probe>) -> Result<EchoReply, WsError> {
    let text = ctx.payload.text.clone();
    Ok(EchoReply { text })
}

/// Waits for a permit of the gate, then replies; reports `started:<id>` and `dropped:<id>`.
#[derive(Message)]
#[rpc(response = SlowReply)]
struct Slow {
    #[validate(length(min = 1))]
    id: String,
}

#[derive(Message)]
struct SlowReply {
    id: String,
}

#[handler]
async fn slow(ctx: Ctx<Slow, Probe>) -> Result<SlowReply, WsError> {
    let probe = ctx.data().clone();
    let id = ctx.payload.id.clone();
    let mut guard = DropGuard {
        probe: probe.clone(),
        id: id.clone(),
        armed: true,
    };
    probe.emit(format!("started:{id}"));
    probe.gate.acquire().await.expect("gate open").forget();
    guard.armed = false;
    probe.emit(format!("finished:{id}"));
    Ok(SlowReply { id })
}

/// An event whose handler waits on the gate.
#[derive(Message)]
struct SlowEvent;

#[handler]
async fn slow_event(ctx: Ctx<SlowEvent, Probe>) {
    let probe = ctx.data().clone();
    probe.emit("started:event");
    probe.gate.acquire().await.expect("gate open").forget();
}

/// Progress frames `0..n` (yielding now and then), then the reply.
#[derive(Message)]
#[rpc(response = CountReply)]
struct Count {
    n: u32,
}

#[derive(Message)]
struct CountReply {
    i: u32,
    done: bool,
}

#[handler]
async fn count(ctx: Ctx<Count, Probe>) -> Result<CountReply, WsError> {
    for i in 0..ctx.payload.n {
        // False once aborted; the handler is dropped at its next await then.
        ctx.progress(&CountReply { i, done: false });
        if i % 2 == 0 {
            tokio::task::yield_now().await;
        }
    }
    Ok(CountReply {
        i: ctx.payload.n,
        done: true,
    })
}

/// An RPC whose handler fails or panics in the way `kind` says. Its route also has middleware
/// (`meddle`) that breaks the rules for correlation ids starting with `skip` or `late`.
#[derive(Message)]
#[rpc(response = EchoReply)]
struct Misbehave {
    kind: String,
}

#[handler]
async fn misbehave(ctx: Ctx<Misbehave, Probe>) -> Result<EchoReply, WsError> {
    let probe = ctx.data().clone();
    match ctx.payload.kind.as_str() {
        "ok" => {}
        "fail" => {
            tokio::task::yield_now().await;
            return Err(WsError::not_found("no such user").with_details(json!({ "id": "7" })));
        }
        "panic" => panic!("secret: rpc internals"),
        other => panic!("unknown kind {other}"),
    }
    probe.emit("returned");
    Ok(EchoReply { text: "ok".into() })
}

/// Per-route middleware of `misbehave`: a request whose id starts with `skip` is answered by
/// neither the handler nor an error; one starting with `late` fails after the handler replied.
async fn meddle(msg: Incoming<Probe>, next: Next<Probe>) -> Result<(), WsError> {
    let cid = msg.meta().correlation_id.clone().unwrap_or_default();
    if cid.starts_with("skip") {
        msg.data().emit("skipped");
        return Ok(());
    }
    next.run().await?;
    if cid.starts_with("late") {
        return Err(WsError::aborted("too late"));
    }
    Ok(())
}

/// An event that answers at once, then waits: its ack order is its arrival order.
#[derive(Message)]
struct Seq {
    n: u32,
}

#[derive(Message)]
struct SeqAck {
    n: u32,
}

#[handler]
async fn seq(ctx: Ctx<Seq, Probe>) {
    ctx.send(&SeqAck { n: ctx.payload.n });
    tokio::time::sleep(Duration::from_millis((ctx.payload.n % 3) as u64)).await;
}

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

struct Harness {
    server: TestServer<Probe>,
    events: mpsc::UnboundedReceiver<String>,
    errors: mpsc::UnboundedReceiver<ErrorEvent>,
    gate: Arc<Semaphore>,
}

impl Harness {
    async fn client(&self) -> Client {
        self.server.client().await
    }

    /// The next event a handler reported.
    async fn event(&mut self) -> String {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("timed out waiting for a handler event")
            .expect("event channel closed")
    }

    async fn expect_event(&mut self, want: &str) {
        assert_eq!(self.event().await, want);
    }

    /// The next `n` events, in any order.
    async fn expect_events(&mut self, want: &[&str]) {
        let mut got = Vec::new();
        for _ in want {
            got.push(self.event().await);
        }
        got.sort();
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(got, want);
    }

    async fn error(&mut self) -> ErrorEvent {
        tokio::time::timeout(WAIT, self.errors.recv())
            .await
            .expect("timed out waiting for on_error")
            .expect("on_error channel closed")
    }

    /// Asserts no handler reported anything further.
    fn no_more_events(&mut self) {
        if let Ok(e) = self.events.try_recv() {
            panic!("unexpected handler event {e}");
        }
    }
}

async fn start(configure: impl FnOnce(ServeOptions<Probe>) -> ServeOptions<Probe>) -> Harness {
    start_with(|r| r, configure).await
}

async fn start_with(
    customize: impl FnOnce(Router<Probe>) -> Router<Probe>,
    configure: impl FnOnce(ServeOptions<Probe>) -> ServeOptions<Probe>,
) -> Harness {
    let (events_tx, events) = mpsc::unbounded_channel();
    let (errors_tx, errors) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(0));
    let probe = Probe {
        events: events_tx,
        gate: gate.clone(),
    };
    let router = Router::<Probe>::new()
        .routes(routes![
            echo,
            slow,
            slow_event,
            count,
            misbehave.middleware(meddle),
            seq
        ])
        .on_error(move |e: &ErrorEvent| {
            let _ = errors_tx.send(e.clone());
        });
    let router = customize(router);
    let options = configure(ServeOptions::with_authenticate(move |_| {
        Some(probe.clone())
    }));
    let server = serve(router, options).await;
    Harness {
        server,
        events,
        errors,
        gate,
    }
}

fn rpc(ty: &str, payload: Value, cid: &str) -> Value {
    json!({"type": ty, "payload": payload, "meta": {"correlationId": cid}})
}

fn abort(cid: &str) -> Value {
    json!({"type": "$ws:abort", "meta": {"correlationId": cid}})
}

#[track_caller]
fn assert_rpc_error(frame: &Value, cid: &str, code: &str) {
    assert_eq!(frame["type"], "RPC_ERROR", "frame: {frame}");
    assert_eq!(
        frame["meta"],
        json!({"correlationId": cid}),
        "frame: {frame}"
    );
    assert_eq!(frame["payload"]["code"], code, "frame: {frame}");
    assert!(
        frame["payload"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "frame: {frame}"
    );
}

const SILENCE: Duration = Duration::from_millis(200);

/// Ends a connection with a client-initiated close handshake, so the server does not close it
/// itself when the test's server shuts down. (A server-initiated close currently makes
/// `ws-kit/src/outbound.rs` `write_loop` spin without yielding until the reader calls `finish()`;
/// when the multi-thread test runtime is dropped at that moment, the drop never returns.)
async fn close_cleanly(mut client: Client) {
    client.close(1000).await;
    client.expect_close().await;
}

// ---------------------------------------------------------------------------------------------
// 5. RPC: terminals
// ---------------------------------------------------------------------------------------------

/// §5: a reply is the one terminal; nothing follows it.
#[tokio::test]
async fn reply_is_the_single_terminal() {
    let h = start(|o| o).await;
    let mut client = h.client().await;
    let frame = roundtrip(&mut client, rpc("ECHO", json!({"text": "hi"}), "c1")).await;
    assert_eq!(
        frame,
        json!({"type": "ECHO_REPLY", "meta": {"correlationId": "c1"}, "payload": {"text": "hi"}})
    );
    client.expect_silence(SILENCE).await;
}

/// §5/§2a: zero or more progress frames, then the terminal, in order; nothing after.
#[tokio::test]
async fn progress_frames_then_terminal_in_order() {
    let h = start(|o| o).await;
    let mut client = h.client().await;
    client.send(rpc("COUNT", json!({"n": 20}), "c1")).await;
    for i in 0..20 {
        assert_eq!(
            client.recv().await,
            json!({"type": "$ws:rpc-progress", "meta": {"correlationId": "c1"}, "payload": {"i": i, "done": false}})
        );
    }
    assert_eq!(
        client.recv().await,
        json!({"type": "COUNT_REPLY", "meta": {"correlationId": "c1"}, "payload": {"i": 20, "done": true}})
    );
    client.expect_silence(SILENCE).await;
    // Zero progress frames is fine too.
    assert_eq!(
        roundtrip(&mut client, rpc("COUNT", json!({"n": 0}), "c2")).await,
        json!({"type": "COUNT_REPLY", "meta": {"correlationId": "c2"}, "payload": {"i": 0, "done": true}})
    );
}

/// §4/§5: an RPC handler cannot finish without a terminal (it returns its reply; the ui tests
/// pin that), but middleware can return `Ok` without running it → `RPC_ERROR INTERNAL`, reported.
#[tokio::test]
async fn rpc_middleware_that_skips_the_handler_is_internal_error() {
    let mut h = start(|o| o).await;
    let mut client = h.client().await;
    for cid in ["skip1", "skip2"] {
        client
            .send(rpc("MISBEHAVE", json!({"kind": "ok"}), cid))
            .await;
        assert_rpc_error(&client.recv().await, cid, "INTERNAL");
        let event = h.error().await;
        assert_eq!(event.kind, ErrorKind::MissingTerminal);
        assert_eq!(event.correlation_id.as_deref(), Some(cid));
        assert_eq!(event.message_type.as_deref(), Some("MISBEHAVE"));
        h.expect_event("skipped").await;
    }
    client.expect_silence(SILENCE).await;
    // Through the same middleware, a request it lets pass gets the handler's reply.
    assert_eq!(
        roundtrip(&mut client, rpc("MISBEHAVE", json!({"kind": "ok"}), "pass")).await,
        json!({"type": "ECHO_REPLY", "meta": {"correlationId": "pass"}, "payload": {"text": "ok"}})
    );
    h.expect_event("returned").await;
}

/// §4/§5: an RPC handler's error is the request's `RPC_ERROR`, passed through as it is.
#[tokio::test]
async fn rpc_handler_error_is_the_terminal() {
    let mut h = start(|o| o).await;
    let mut client = h.client().await;
    let frame = roundtrip(&mut client, rpc("MISBEHAVE", json!({"kind": "fail"}), "f1")).await;
    assert_eq!(
        frame,
        json!({"type": "RPC_ERROR", "meta": {"correlationId": "f1"}, "payload": {
            "code": "NOT_FOUND", "message": "no such user", "details": {"id": "7"}
        }})
    );
    let event = h.error().await;
    assert_eq!(event.kind, ErrorKind::Handler);
    client.expect_silence(SILENCE).await;
}

/// §4/§5: a panicking RPC handler → `RPC_ERROR INTERNAL "Internal error"`; the connection survives.
#[tokio::test]
async fn rpc_handler_panic_is_internal_error() {
    let mut h = start(|o| o).await;
    let mut client = h.client().await;
    let frame = roundtrip(
        &mut client,
        rpc("MISBEHAVE", json!({"kind": "panic"}), "p1"),
    )
    .await;
    assert_eq!(
        frame,
        json!({"type": "RPC_ERROR", "meta": {"correlationId": "p1"}, "payload": {
            "code": "INTERNAL", "message": "Internal error", "retryAfterMs": 200
        }})
    );
    let event = h.error().await;
    assert_eq!(event.kind, ErrorKind::Panic);
    assert!(event.error.message().contains("secret: rpc internals"));
    client.expect_silence(SILENCE).await;
    assert_eq!(
        roundtrip(&mut client, rpc("ECHO", json!({"text": "x"}), "p2")).await["type"],
        "ECHO_REPLY"
    );
}

/// §5: exactly one terminal: an error that middleware returns after the handler replied is not
/// sent (reported as after-terminal).
#[tokio::test]
async fn error_after_the_reply_is_not_sent() {
    let mut h = start(|o| o).await;
    let mut client = h.client().await;
    let frame = roundtrip(
        &mut client,
        rpc("MISBEHAVE", json!({"kind": "ok"}), "late1"),
    )
    .await;
    assert_eq!(
        frame,
        json!({"type": "ECHO_REPLY", "meta": {"correlationId": "late1"}, "payload": {"text": "ok"}})
    );
    h.expect_event("returned").await;
    client.expect_silence(SILENCE).await;
    let event = h.error().await;
    assert_eq!(event.kind, ErrorKind::AfterTerminal);
    assert_eq!(event.correlation_id.as_deref(), Some("late1"));
    assert_eq!(event.error.code(), &ws_kit::ErrorCode::Aborted);
}

// ---------------------------------------------------------------------------------------------
// 5. RPC: cancellation and deadlines
// ---------------------------------------------------------------------------------------------

/// §5: `$ws:abort` → terminal `RPC_ERROR CANCELLED`, and the handler's future is dropped.
#[tokio::test]
async fn abort_cancels_and_drops_the_handler() {
    let mut h = start(|o| o).await;
    let mut client = h.client().await;
    client.send(rpc("SLOW", json!({"id": "a"}), "c1")).await;
    h.expect_event("started:a").await;
    client.send(abort("c1")).await;
    assert_rpc_error(&client.recv().await, "c1", "CANCELLED");
    h.expect_event("dropped:a").await;
    // Even once the handler could have gone on, nothing more comes for c1.
    h.gate.add_permits(5);
    client.expect_silence(SILENCE).await;
    h.no_more_events();
    // The id is free again.
    assert_eq!(
        roundtrip(&mut client, rpc("ECHO", json!({"text": "again"}), "c1")).await["type"],
        "ECHO_REPLY"
    );
}

/// §5: aborting a finished request or an unknown id sends nothing (one terminal only).
#[tokio::test]
async fn abort_after_terminal_or_of_unknown_id_sends_nothing() {
    let h = start(|o| o).await;
    let mut client = h.client().await;
    assert_eq!(
        roundtrip(&mut client, rpc("ECHO", json!({"text": "x"}), "c1")).await["type"],
        "ECHO_REPLY"
    );
    client.send(abort("c1")).await;
    client.send(abort("never-sent")).await;
    client.send(json!({"type": "$ws:abort"})).await;
    client.expect_silence(SILENCE).await;
}

/// §5: abort racing with the handler's own reply: still exactly one terminal per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_racing_with_reply_gives_exactly_one_terminal() {
    let h = start(|o| o).await;
    let mut client = h.client().await;
    const N: usize = 60;
    for i in 0..N {
        let cid = format!("r{i}");
        client
            .send(rpc("COUNT", json!({"n": (i % 4) as u32}), &cid))
            .await;
        client.send(abort(&cid)).await;
    }
    let mut terminals: HashMap<String, Vec<Value>> = HashMap::new();
    let mut finished = HashSet::new();
    while finished.len() < N {
        let frame = client.recv().await;
        let cid = frame["meta"]["correlationId"]
            .as_str()
            .expect("correlation id")
            .to_string();
        if frame["type"] == "$ws:rpc-progress" {
            assert!(
                !finished.contains(&cid),
                "progress after the terminal of {cid}"
            );
            continue;
        }
        assert!(
            frame["type"] == "COUNT_REPLY"
                || (frame["type"] == "RPC_ERROR" && frame["payload"]["code"] == "CANCELLED"),
            "unexpected terminal {frame}"
        );
        finished.insert(cid.clone());
        terminals.entry(cid).or_default().push(frame);
    }
    client.expect_silence(SILENCE).await;
    for (cid, frames) in &terminals {
        assert_eq!(frames.len(), 1, "{cid} got {frames:?}");
    }
    close_cleanly(client).await;
}

/// §5: `meta.timeoutMs` sets the deadline `received_at + timeoutMs`; past it the handler is
/// cancelled and the terminal is `RPC_ERROR DEADLINE_EXCEEDED`.
#[tokio::test]
async fn timeout_ms_gives_deadline_exceeded_and_cancels_the_handler() {
    let mut h = start(|o| o).await;
    let mut client = h.client().await;
    let sent = Instant::now();
    client
        .send(json!({"type": "SLOW", "payload": {"id": "d"}, "meta": {"correlationId": "d1", "timeoutMs": 150}}))
        .await;
    h.expect_event("started:d").await;
    let frame = client.recv().await;
    let elapsed = sent.elapsed();
    assert_rpc_error(&frame, "d1", "DEADLINE_EXCEEDED");
    assert!(
        elapsed >= Duration::from_millis(140),
        "deadline fired early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "deadline fired late: {elapsed:?}"
    );
    h.expect_event("dropped:d").await;
    let event = h.error().await;
    assert_eq!(event.kind, ErrorKind::DeadlineExceeded);
    assert_eq!(event.correlation_id.as_deref(), Some("d1"));
    h.gate.add_permits(5);
    client.expect_silence(SILENCE).await;
    h.no_more_events();
    // A request finishing within its deadline is answered normally.
    let frame = roundtrip(
        &mut client,
        json!({"type": "ECHO", "payload": {"text": "fast"}, "meta": {"correlationId": "d2", "timeoutMs": 5000}}),
    )
    .await;
    assert_eq!(frame["type"], "ECHO_REPLY");
}

/// §5: the server's own maximum caps `meta.timeoutMs`.
#[tokio::test]
async fn server_max_rpc_timeout_caps_timeout_ms() {
    let mut h = start(|o| o.max_rpc_timeout(Duration::from_millis(150))).await;
    let mut client = h.client().await;
    let sent = Instant::now();
    client
        .send(json!({"type": "SLOW", "payload": {"id": "m"}, "meta": {"correlationId": "m1", "timeoutMs": 60000}}))
        .await;
    let frame = client.recv().await;
    let elapsed = sent.elapsed();
    assert_rpc_error(&frame, "m1", "DEADLINE_EXCEEDED");
    assert!(
        elapsed >= Duration::from_millis(140),
        "deadline fired early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "the cap was not applied: {elapsed:?}"
    );
    h.expect_events(&["started:m", "dropped:m"]).await;
}

// ---------------------------------------------------------------------------------------------
// 5. RPC: in-flight bookkeeping
// ---------------------------------------------------------------------------------------------

/// §5: a request whose `correlationId` is already in flight is dropped (reported to `on_error`);
/// the first one still completes.
#[tokio::test]
async fn duplicate_inflight_correlation_id_is_dropped_and_first_completes() {
    let mut h = start(|o| o).await;
    let mut client = h.client().await;
    client
        .send(rpc("SLOW", json!({"id": "first"}), "dup"))
        .await;
    h.expect_event("started:first").await;
    client
        .send(rpc("SLOW", json!({"id": "second"}), "dup"))
        .await;
    let event = h.error().await;
    assert_eq!(event.kind, ErrorKind::DuplicateCorrelation);
    assert_eq!(event.correlation_id.as_deref(), Some("dup"));
    assert_eq!(event.message_type.as_deref(), Some("SLOW"));
    // A duplicate that is also invalid gets no validation error either (its payload fails
    // validation on the one-pass path, decoding on the full path).
    for payload in [json!({"id": ""}), json!({"id": 5})] {
        client.send(rpc("SLOW", payload, "dup")).await;
        let event = h.error().await;
        assert_eq!(event.kind, ErrorKind::DuplicateCorrelation);
        assert_eq!(event.correlation_id.as_deref(), Some("dup"));
    }
    client.expect_silence(SILENCE).await;
    h.no_more_events();
    // Let both run if both were started: only the first may answer.
    h.gate.add_permits(2);
    assert_eq!(
        client.recv().await,
        json!({"type": "SLOW_REPLY", "meta": {"correlationId": "dup"}, "payload": {"id": "first"}})
    );
    h.expect_event("finished:first").await;
    client.expect_silence(SILENCE).await;
    h.no_more_events();
    // Once finished, the id may be used again.
    assert_eq!(
        roundtrip(&mut client, rpc("ECHO", json!({"text": "reuse"}), "dup")).await,
        json!({"type": "ECHO_REPLY", "meta": {"correlationId": "dup"}, "payload": {"text": "reuse"}})
    );
}

/// §5: at most `max_inflight_rpcs` per connection; over it → `RPC_ERROR RESOURCE_EXHAUSTED`.
#[tokio::test]
async fn max_inflight_rpcs_gives_resource_exhausted() {
    let mut h = start(|o| o.max_inflight_rpcs(2)).await;
    let mut client = h.client().await;
    client.send(rpc("SLOW", json!({"id": "a"}), "c1")).await;
    client.send(rpc("SLOW", json!({"id": "b"}), "c2")).await;
    h.expect_events(&["started:a", "started:b"]).await;
    let frame = roundtrip(&mut client, rpc("SLOW", json!({"id": "c"}), "c3")).await;
    assert_rpc_error(&frame, "c3", "RESOURCE_EXHAUSTED");
    let event = h.error().await;
    assert_eq!(event.kind, ErrorKind::InflightLimit);
    assert_eq!(event.correlation_id.as_deref(), Some("c3"));
    h.no_more_events();
    // The limit is per connection: another connection is not affected.
    let mut other = h.client().await;
    assert_eq!(
        roundtrip(&mut other, rpc("ECHO", json!({"text": "o"}), "c1")).await["type"],
        "ECHO_REPLY"
    );
    // Finishing frees the slots.
    h.gate.add_permits(2);
    let mut ids = vec![client.recv().await, client.recv().await];
    ids.sort_by_key(|f| f["meta"]["correlationId"].as_str().unwrap().to_string());
    assert_eq!(
        ids,
        [
            json!({"type": "SLOW_REPLY", "meta": {"correlationId": "c1"}, "payload": {"id": "a"}}),
            json!({"type": "SLOW_REPLY", "meta": {"correlationId": "c2"}, "payload": {"id": "b"}}),
        ]
    );
    h.expect_events(&["finished:a", "finished:b"]).await;
    assert_eq!(
        roundtrip(&mut client, rpc("ECHO", json!({"text": "x"}), "c4")).await["type"],
        "ECHO_REPLY"
    );
}

/// §5: when the connection closes, its in-flight handlers are cancelled.
#[tokio::test]
async fn inflight_handlers_are_cancelled_when_the_connection_closes() {
    let mut h = start(|o| o).await;
    let mut client = h.client().await;
    client.send(rpc("SLOW", json!({"id": "a"}), "c1")).await;
    client.send(rpc("SLOW", json!({"id": "b"}), "c2")).await;
    h.expect_events(&["started:a", "started:b"]).await;
    client.close(1000).await;
    h.expect_events(&["dropped:a", "dropped:b"]).await;
    // An abrupt drop (no close frame) cancels them too.
    let mut client = h.client().await;
    client.send(rpc("SLOW", json!({"id": "c"}), "c1")).await;
    h.expect_event("started:c").await;
    drop(client);
    h.expect_event("dropped:c").await;
}

/// §5: a `correlationId` longer than 128 bytes (bytes, not characters) is rejected.
#[tokio::test]
async fn correlation_id_over_128_bytes_is_rejected() {
    let h = start(|o| o).await;
    let mut client = h.client().await;
    for cid in ["x".repeat(128), "é".repeat(64)] {
        assert_eq!(cid.len(), 128);
        let frame = roundtrip(&mut client, rpc("ECHO", json!({"text": "ok"}), &cid)).await;
        assert_eq!(
            frame,
            json!({"type": "ECHO_REPLY", "meta": {"correlationId": cid}, "payload": {"text": "ok"}})
        );
    }
    for cid in ["x".repeat(129), "é".repeat(65)] {
        let frame = roundtrip(&mut client, rpc("ECHO", json!({"text": "no"}), &cid)).await;
        assert_eq!(
            frame["payload"]["code"], "INVALID_ARGUMENT",
            "frame: {frame}"
        );
        let paths: Vec<&str> = frame["payload"]["details"]["issues"]
            .as_array()
            .expect("details.issues")
            .iter()
            .map(|i| i["path"].as_str().unwrap())
            .collect();
        assert_eq!(paths, ["meta.correlationId"]);
    }
    client.expect_silence(SILENCE).await;
}

// ---------------------------------------------------------------------------------------------
// 2a. Dispatch order and concurrency
// ---------------------------------------------------------------------------------------------

/// §2a: a handler that waits never holds back later messages, `$ws:abort`, or `__heartbeat`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_handlers_do_not_block_later_messages() {
    let mut h = start(|o| o).await;
    let mut client = h.client().await;
    client.send(rpc("SLOW", json!({"id": "s"}), "s1")).await;
    client.send(json!({"type": "SLOW_EVENT"})).await;
    h.expect_events(&["started:s", "started:event"]).await;

    assert_eq!(
        roundtrip(&mut client, rpc("ECHO", json!({"text": "later"}), "e1")).await,
        json!({"type": "ECHO_REPLY", "meta": {"correlationId": "e1"}, "payload": {"text": "later"}})
    );
    let frame = roundtrip(&mut client, json!({"type": "__heartbeat"})).await;
    assert_eq!(frame["type"], "__heartbeat_ack");
    assert_eq!(
        roundtrip(&mut client, json!({"type": "SEQ", "payload": {"n": 7}})).await,
        json!({"type": "SEQ_ACK", "meta": {}, "payload": {"n": 7}})
    );
    // A second slow request runs alongside the first.
    client.send(rpc("SLOW", json!({"id": "t"}), "t1")).await;
    h.expect_event("started:t").await;
    client.send(abort("s1")).await;
    assert_rpc_error(&client.recv().await, "s1", "CANCELLED");
    h.expect_event("dropped:s").await;
    h.gate.add_permits(2);
    assert_eq!(
        client.recv().await,
        json!({"type": "SLOW_REPLY", "meta": {"correlationId": "t1"}, "payload": {"id": "t"}})
    );
    close_cleanly(client).await;
}

/// Ordered dispatch (`Router::ordered`, ws-kit's opt-in beside §2a): a frame's handler starts
/// only after the previous one finished, while `$ws:abort` and `__heartbeat` still act at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_router_runs_one_handler_at_a_time_but_control_frames_at_once() {
    let mut h = start_with(Router::ordered, |o| o).await;
    let mut client = h.client().await;
    client.send(rpc("SLOW", json!({"id": "a"}), "s1")).await;
    h.expect_event("started:a").await;
    // Held behind the waiting SLOW: neither starts nor answers.
    client.send(rpc("SLOW", json!({"id": "b"}), "s2")).await;
    client
        .send(rpc("ECHO", json!({"text": "held"}), "e1"))
        .await;
    // Control frames are not held.
    assert_eq!(
        roundtrip(&mut client, json!({"type": "__heartbeat"})).await["type"],
        "__heartbeat_ack"
    );
    h.no_more_events();
    // Aborting the running request lets the held frames go, in order.
    client.send(abort("s1")).await;
    assert_rpc_error(&client.recv().await, "s1", "CANCELLED");
    h.expect_events(&["dropped:a", "started:b"]).await;
    client.expect_silence(SILENCE).await;
    h.gate.add_permits(1);
    assert_eq!(
        client.recv().await,
        json!({"type": "SLOW_REPLY", "meta": {"correlationId": "s2"}, "payload": {"id": "b"}})
    );
    assert_eq!(
        client.recv().await,
        json!({"type": "ECHO_REPLY", "meta": {"correlationId": "e1"}, "payload": {"text": "held"}})
    );
    close_cleanly(client).await;
}

/// §2a: each handler runs until it first waits before the next message is dispatched, so what
/// handlers do before waiting keeps arrival order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_before_first_await_keeps_arrival_order() {
    let h = start(|o| o).await;
    let mut client = h.client().await;
    const N: u32 = 200;
    for n in 0..N {
        client
            .send(json!({"type": "SEQ", "payload": {"n": n}}))
            .await;
        // Interleave RPCs whose reply happens before any await.
        client
            .send(rpc(
                "ECHO",
                json!({"text": n.to_string()}),
                &format!("o{n}"),
            ))
            .await;
    }
    for n in 0..N {
        assert_eq!(
            client.recv().await,
            json!({"type": "SEQ_ACK", "meta": {}, "payload": {"n": n}})
        );
        assert_eq!(
            client.recv().await,
            json!({"type": "ECHO_REPLY", "meta": {"correlationId": format!("o{n}")}, "payload": {"text": n.to_string()}})
        );
    }
    client.expect_silence(Duration::from_millis(100)).await;
    close_cleanly(client).await;
}
