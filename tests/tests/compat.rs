//! Compatibility with the WS-Kit TypeScript client over real sockets: progress frames with their
//! value also under `data` (`ServeOptions::progress_data_compat`), and the server's own cap on
//! request deadlines (`ServeOptions::max_rpc_timeout`) for requests that carry no
//! `meta.timeoutMs`, since that client sends none (nor `$ws:abort`).

mod support;

use futures_util::StreamExt;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::binary::run_example;
use support::{Client, WAIT, bounded, eventually, serve};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use ws_kit::{Ctx, Message, Router, ServeOptions, WsError, handler, routes};

/// Progress `STEP {i, label}` for i in 0..n, then the reply `STEP {n, "done"}`.
#[derive(Message)]
#[rpc(response = Step)]
struct Count {
    n: u32,
}

#[derive(Message, Debug, PartialEq)]
struct Step {
    i: u32,
    /// Escapes and non-ASCII, so the value is written verbatim twice, not re-encoded.
    label: String,
}

fn label(i: u32) -> String {
    format!("é \"{i}\" </b>\n")
}

#[handler]
async fn count(ctx: Ctx<Count>) -> Result<Step, WsError> {
    for i in 0..ctx.payload.n {
        ctx.progress(&Step { i, label: label(i) });
        tokio::task::yield_now().await;
    }
    Ok(Step {
        i: ctx.payload.n,
        label: "done".into(),
    })
}

/// Sends one progress frame, then never ends (until the server stops it).
#[derive(Message)]
#[rpc(response = Step)]
struct Hang {}

/// Handlers of `HANG` whose future was dropped (the deadline stopped them).
static HANGS_DROPPED: AtomicUsize = AtomicUsize::new(0);

struct CountDrop;

impl Drop for CountDrop {
    fn drop(&mut self) {
        HANGS_DROPPED.fetch_add(1, Ordering::SeqCst);
    }
}

#[handler]
async fn hang(ctx: Ctx<Hang>) -> Result<Step, WsError> {
    let _guard = CountDrop;
    ctx.progress(&Step {
        i: 0,
        label: "waiting".into(),
    });
    std::future::pending().await
}

fn router() -> Router {
    Router::new().routes(routes![count, hang])
}

/// The next text frame, byte for byte; panics on anything else or after `WAIT`.
async fn recv_text(client: &mut Client) -> String {
    loop {
        let frame = tokio::time::timeout(WAIT, client.ws.next())
            .await
            .expect("timed out waiting for a frame");
        match frame {
            Some(Ok(WsMessage::Text(text))) => return text.to_string(),
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

fn step(i: u32, label: &str) -> Value {
    json!({"i": i, "label": label})
}

/// The keys of a frame's root object, sorted.
fn keys(frame: &Value) -> Vec<String> {
    let mut keys: Vec<String> = frame
        .as_object()
        .expect("a JSON object")
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

/// Off by default: a progress frame is exactly the protocol's (`payload`, no `data`).
#[test]
fn progress_frames_have_no_data_key_by_default() {
    bounded(async {
        let server = serve(router(), ServeOptions::new()).await;
        let mut client = server.client().await;
        client
            .send(json!({"type": "COUNT", "payload": {"n": 2}, "meta": {"correlationId": "c1"}}))
            .await;
        for i in 0..2 {
            let text = recv_text(&mut client).await;
            let frame: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                frame,
                json!({"type": "$ws:rpc-progress", "meta": {"correlationId": "c1"}, "payload": step(i, &label(i))}),
                "{text}"
            );
            assert!(!text.contains("\"data\""), "{text}");
        }
        assert_eq!(
            client.recv().await,
            json!({"type": "STEP", "meta": {"correlationId": "c1"}, "payload": step(2, "done")})
        );
    });
}

/// On: every progress frame carries the same value under `payload` and `data` (the same bytes,
/// in that key order); the reply is unchanged.
#[test]
fn progress_data_compat_repeats_the_value_under_data() {
    bounded(async {
        let options = ServeOptions::new().progress_data_compat();
        let server = serve(router(), options).await;
        let mut client = server.client().await;
        client
            .send(json!({"type": "COUNT", "payload": {"n": 3}, "meta": {"correlationId": "c1"}}))
            .await;
        for i in 0..3 {
            let text = recv_text(&mut client).await;
            let frame: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(keys(&frame), ["data", "meta", "payload", "type"], "{text}");
            assert_eq!(frame["type"], "$ws:rpc-progress");
            assert_eq!(frame["meta"], json!({"correlationId": "c1"}));
            assert_eq!(frame["payload"], step(i, &label(i)), "{text}");
            assert_eq!(frame["data"], frame["payload"], "{text}");
            // Byte for byte: `{"type":..,"meta":..,"payload":X,"data":X}`.
            let raw = serde_json::to_string(&step(i, &label(i))).unwrap();
            let expected = format!(
                "{{\"type\":\"$ws:rpc-progress\",\"meta\":{{\"correlationId\":\"c1\"}},\"payload\":{raw},\"data\":{raw}}}"
            );
            assert_eq!(text, expected);
        }
        // The terminal reply is as without the switch: no `data`.
        let reply = client.recv().await;
        assert_eq!(
            reply,
            json!({"type": "STEP", "meta": {"correlationId": "c1"}, "payload": step(3, "done")})
        );
    });
}

/// A request without `meta.timeoutMs` whose handler never ends gets `RPC_ERROR
/// DEADLINE_EXCEEDED` at `max_rpc_timeout`, and its handler is stopped. With the compat switch
/// on, its progress frame has `data`; the `RPC_ERROR` does not.
/// (tests/tests/rpc.rs `server_max_rpc_timeout_caps_timeout_ms` covers a longer `timeoutMs`.)
#[test]
fn max_rpc_timeout_ends_a_request_without_timeout_ms() {
    bounded(async {
        let cap = Duration::from_millis(200);
        let options = ServeOptions::new()
            .max_rpc_timeout(cap)
            .progress_data_compat();
        let server = serve(router(), options).await;
        let mut client = server.client().await;
        let sent = Instant::now();
        client
            .send(json!({"type": "HANG", "meta": {"correlationId": "h1"}}))
            .await;
        let progress = client.recv().await;
        assert_eq!(
            progress,
            json!({"type": "$ws:rpc-progress", "meta": {"correlationId": "h1"}, "payload": step(0, "waiting"), "data": step(0, "waiting")})
        );
        let terminal = client.recv().await;
        let elapsed = sent.elapsed();
        assert_eq!(terminal["type"], "RPC_ERROR", "{terminal}");
        assert_eq!(terminal["meta"], json!({"correlationId": "h1"}));
        assert_eq!(terminal["payload"]["code"], "DEADLINE_EXCEEDED");
        assert_eq!(keys(&terminal), ["meta", "payload", "type"], "{terminal}");
        assert!(
            elapsed >= cap - Duration::from_millis(10),
            "the deadline fired after only {elapsed:?}"
        );
        assert!(
            elapsed < Duration::from_secs(3),
            "the cap was not applied: {elapsed:?}"
        );
        eventually("the HANG handler is dropped", || async {
            HANGS_DROPPED.load(Ordering::SeqCst) >= 1
        })
        .await;
        client.expect_silence(Duration::from_millis(100)).await;
    });
}

/// The testing harness builds its connections from the same options: the switch applies there
/// too, and the harness's own client (which reads `payload`) still gets the progress updates.
#[tokio::test(start_paused = true)]
async fn the_harness_honours_progress_data_compat() {
    use ws_kit::testing::TestServer;
    let options = ServeOptions::with_authenticate(|_| None::<()>).progress_data_compat();
    let server = TestServer::with_options(router(), options);
    let conn = server.connect(()).await;
    let outcome = conn.request_with_progress(&Count { n: 2 }).await;
    assert_eq!(
        outcome.progress,
        [
            Step {
                i: 0,
                label: label(0)
            },
            Step {
                i: 1,
                label: label(1)
            }
        ]
    );
    assert_eq!(outcome.result.unwrap().label, "done");
    let frames = conn.frames();
    assert_eq!(frames.len(), 3, "{frames:?}");
    for frame in &frames[..2] {
        assert_eq!(frame["type"], "$ws:rpc-progress");
        assert_eq!(frame["data"], frame["payload"], "{frame}");
    }
    assert_eq!(keys(&frames[2]), ["meta", "payload", "type"]);
}

/// `WSKIT_CLIENT_COMPAT=1 rpc`: COUNTDOWN's progress frames carry `data` beside `payload`; the
/// terminal does not. Without it, no `data`.
#[test]
fn rpc_example_with_wskit_client_compat_sends_data() {
    for compat in [true, false] {
        let env: &[(&str, &str)] = if compat {
            &[("WSKIT_CLIENT_COMPAT", "1")]
        } else {
            &[]
        };
        let example = run_example("rpc", &[], env, WAIT * 2);
        let port = example.port;
        bounded(async move {
            let mut client = Client::connect(&format!("ws://127.0.0.1:{port}")).await;
            client
                .send(json!({"type": "COUNTDOWN", "payload": {"from": 2, "intervalMs": 10}, "meta": {"correlationId": "cd"}}))
                .await;
            for n in [2, 1] {
                let frame = client.recv().await;
                let value = json!({"n": n, "done": false});
                let mut expected = json!({"type": "$ws:rpc-progress", "meta": {"correlationId": "cd"}, "payload": value});
                if compat {
                    expected["data"] = value;
                }
                assert_eq!(frame, expected);
            }
            assert_eq!(
                client.recv().await,
                json!({"type": "COUNTDOWN_RESULT", "meta": {"correlationId": "cd"}, "payload": {"n": 0, "done": true}})
            );
        });
        drop(example);
    }
}
