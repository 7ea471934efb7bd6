//! docs/protocol.md sections 1–4 and 6 over real sockets: transport, envelope strictness, frame shapes,
//! automatic errors, reserved types. RPC semantics (section 5, 2a) are in `rpc.rs`.

mod support;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::{Client, WAIT, roundtrip, serve, serve_default, type_first, type_last};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use ws_kit::{
    Ctx, ErrorCode, ErrorEvent, ErrorKind, Message, PayloadLimit, Router, ServeOptions, WsError,
    handler, routes,
};

// ---------------------------------------------------------------------------------------------
// Messages and handlers
// ---------------------------------------------------------------------------------------------

/// Event with a constrained field; answered with `JOINED` through `ctx.send`.
#[derive(Message)]
struct JoinRoom {
    #[validate(length(min = 1, max = 20))]
    room_id: String,
}

#[derive(Message)]
struct Joined {
    room_id: String,
}

#[handler]
async fn join_room(ctx: Ctx<JoinRoom>) -> Result<(), WsError> {
    ctx.send(&Joined {
        room_id: ctx.payload.room_id.clone(),
    });
    Ok(())
}

/// Event without constraints, for size limits; answered with its text length.
#[derive(Message)]
struct Say {
    text: String,
}

#[derive(Message)]
struct Said {
    len: u64,
}

#[handler]
async fn say(ctx: Ctx<Say>) {
    ctx.send(&Said {
        len: ctx.payload.text.len() as u64,
    });
}

/// Fieldless event, answered with a fieldless message.
#[derive(Message)]
struct Tick;

#[derive(Message)]
struct Tock;

#[handler]
async fn tick(ctx: Ctx<Tick>) {
    ctx.send(&Tock);
}

/// Fieldless event that reports what the server knows about the frame.
#[derive(Message)]
struct Inspect;

#[derive(Message)]
struct Inspected {
    client_id: String,
    received_at_ms: u64,
    timestamp: f64,
    correlation_id: String,
    timeout_ms: u64,
    idempotency_key: String,
}

#[handler]
async fn inspect(ctx: Ctx<Inspect>) {
    let meta = ctx.meta();
    let msg = Inspected {
        client_id: ctx.client_id().to_string(),
        received_at_ms: ms(ctx.received_at()),
        timestamp: meta.timestamp.unwrap_or(-1.0),
        correlation_id: meta.correlation_id.as_deref().unwrap_or("").to_string(),
        timeout_ms: meta.timeout_ms.unwrap_or(0),
        idempotency_key: meta.idempotency_key.as_deref().unwrap_or("").to_string(),
    };
    ctx.send(&msg);
}

/// A message declaring its own meta key.
#[derive(Message)]
struct Traced {
    #[message(meta)]
    trace_id: String,
    n: u32,
}

#[derive(Message)]
struct TracedOk {
    #[message(meta)]
    trace_id: String,
    n: u32,
}

#[handler]
async fn traced(ctx: Ctx<Traced>) {
    ctx.send(&TracedOk {
        trace_id: ctx.payload.trace_id.clone(),
        n: ctx.payload.n,
    });
}

/// Sends with user meta that tries to set `type` and `correlationId`.
#[derive(Message)]
struct SendMeta;

#[handler]
async fn send_meta(ctx: Ctx<SendMeta>) {
    let meta = json!({"type": "HACKED", "correlationId": "evil", "traceId": "t1"});
    ctx.send_with_meta(
        &Joined {
            room_id: "m".into(),
        },
        meta.as_object().unwrap(),
    );
}

/// A request/response pair.
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
async fn echo(ctx: Ctx<Echo>) -> Result<EchoReply, WsError> {
    let text = ctx.payload.text.clone();
    Ok(EchoReply { text })
}

/// An event whose handler fails in the way `kind` says.
#[derive(Message)]
struct Fail {
    kind: String,
}

#[handler]
async fn fail(ctx: Ctx<Fail>) -> Result<(), WsError> {
    match ctx.payload.kind.as_str() {
        "notFound" => {
            Err(WsError::not_found("room not found").with_details(json!({ "roomId": "r1" })))
        }
        "default" => Err(WsError::from_code(ErrorCode::PermissionDenied)),
        "retry" => Err(WsError::unavailable("try later")
            .with_retryable(true)
            .with_retry_after_ms(250)),
        "notRetryable" => Err(WsError::internal("db down").with_retryable(false)),
        "emptyDetails" => Err(WsError::aborted("conflict").with_details(json!({}))),
        "custom" => Err(WsError::new(
            ErrorCode::Custom("ROOM_FULL".into()),
            "room is full",
        )),
        "ctxError" => {
            ctx.error(WsError::failed_precondition("not yet"));
            Ok(())
        }
        "panic" => panic!("secret internals: password=hunter2"),
        "awaitThenPanic" => {
            tokio::task::yield_now().await;
            panic!("secret internals after await");
        }
        _ => Ok(()),
    }
}

fn router() -> Router {
    Router::new().routes(routes![
        join_room, say, tick, inspect, traced, send_meta, echo, fail
    ])
}

/// A router whose `on_error` reports go into a channel.
fn router_with_errors() -> (Router, mpsc::UnboundedReceiver<ErrorEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let router = router().on_error(move |e: &ErrorEvent| {
        let _ = tx.send(e.clone());
    });
    (router, rx)
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn now_ms() -> u64 {
    ms(SystemTime::now())
}

async fn next_error(rx: &mut mpsc::UnboundedReceiver<ErrorEvent>) -> ErrorEvent {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("timed out waiting for on_error")
        .expect("on_error channel closed")
}

/// The next raw WebSocket message (pings and pongs skipped).
async fn recv_raw(client: &mut Client) -> WsMessage {
    loop {
        let msg = tokio::time::timeout(WAIT, client.ws.next())
            .await
            .expect("timed out waiting for a frame")
            .expect("stream ended")
            .expect("websocket error");
        match msg {
            WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
            other => return other,
        }
    }
}

/// The top-level keys of a JSON object text, in order.
fn top_level_keys(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut keys = Vec::new();
    let mut depth = 0;
    let mut in_str = false;
    let mut escaped = false;
    let mut expect_key = false;
    let mut key_start: Option<usize> = None;
    for (i, &c) in bytes.iter().enumerate() {
        if in_str {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_str = false;
                if let Some(start) = key_start.take() {
                    keys.push(text[start..i].to_string());
                }
            }
            continue;
        }
        match c {
            b'"' => {
                in_str = true;
                if depth == 1 && expect_key {
                    key_start = Some(i + 1);
                    expect_key = false;
                }
            }
            b'{' | b'[' => {
                depth += 1;
                if depth == 1 {
                    expect_key = true;
                }
            }
            b'}' | b']' => depth -= 1,
            b',' if depth == 1 => expect_key = true,
            _ => {}
        }
    }
    keys
}

/// `{"type":"SAY","payload":{"text":"xxx…"}}` of exactly `len` bytes.
fn say_frame(len: usize) -> String {
    let base = json!({"type": "SAY", "payload": {"text": ""}}).to_string();
    assert!(len >= base.len());
    json!({"type": "SAY", "payload": {"text": "x".repeat(len - base.len())}}).to_string()
}

/// The text length inside `say_frame(len)`.
fn say_text_len(len: usize) -> u64 {
    (len - json!({"type": "SAY", "payload": {"text": ""}})
        .to_string()
        .len()) as u64
}

/// Asserts `frame` is an error frame of type `ty` with code `code`; returns its payload.
#[track_caller]
fn assert_error(frame: &Value, ty: &str, code: &str) -> Value {
    assert_eq!(frame["type"], ty, "frame: {frame}");
    assert_eq!(frame["payload"]["code"], code, "frame: {frame}");
    assert!(
        frame["payload"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "error message must be a non-empty string: {frame}"
    );
    frame["payload"].clone()
}

/// The `details.issues` paths of an `INVALID_ARGUMENT` frame.
#[track_caller]
fn issue_paths(frame: &Value) -> Vec<String> {
    let issues = frame["payload"]["details"]["issues"]
        .as_array()
        .unwrap_or_else(|| panic!("details.issues must be an array: {frame}"));
    assert!(!issues.is_empty(), "details.issues is empty: {frame}");
    issues
        .iter()
        .map(|i| {
            assert!(
                i["message"].as_str().is_some_and(|m| !m.is_empty()),
                "issue without message: {frame}"
            );
            i["path"]
                .as_str()
                .expect("issue path is a string")
                .to_string()
        })
        .collect()
}

/// Proves the connection still works: a JOIN_ROOM round trip.
async fn assert_alive(client: &mut Client) {
    let reply = roundtrip(
        client,
        json!({"type": "JOIN_ROOM", "payload": {"roomId": "alive"}}),
    )
    .await;
    assert_eq!(
        reply,
        json!({"type": "JOINED", "meta": {}, "payload": {"roomId": "alive"}})
    );
}

// ---------------------------------------------------------------------------------------------
// 1. Transport
// ---------------------------------------------------------------------------------------------

/// §1: a binary frame holding UTF-8 JSON is treated like text; replies are always text.
#[tokio::test]
async fn binary_frame_with_utf8_json_is_accepted_and_reply_is_text() {
    let server = serve_default(router()).await;
    let mut client = server.client().await;
    let body = json!({"type": "JOIN_ROOM", "payload": {"roomId": "bin"}}).to_string();
    client
        .ws
        .send(WsMessage::binary(body.into_bytes()))
        .await
        .unwrap();
    match recv_raw(&mut client).await {
        WsMessage::Text(t) => {
            let v: Value = serde_json::from_str(&t).unwrap();
            assert_eq!(
                v,
                json!({"type": "JOINED", "meta": {}, "payload": {"roomId": "bin"}})
            );
        }
        other => panic!("expected a text reply, got {other:?}"),
    }
    // Errors for binary frames are text too.
    let body = json!({"type": "NOPE_NOT_A_TYPE"}).to_string();
    client
        .ws
        .send(WsMessage::binary(body.into_bytes()))
        .await
        .unwrap();
    match recv_raw(&mut client).await {
        WsMessage::Text(t) => {
            let v: Value = serde_json::from_str(&t).unwrap();
            assert_error(&v, "ERROR", "UNIMPLEMENTED");
        }
        other => panic!("expected a text reply, got {other:?}"),
    }
}

/// §1/§4: a binary frame that is not UTF-8 JSON is not JSON: `ERROR INVALID_ARGUMENT`, stays open.
#[tokio::test]
async fn binary_frame_not_utf8_is_invalid_argument() {
    let server = serve_default(router()).await;
    let mut client = server.client().await;
    client
        .ws
        .send(WsMessage::binary(vec![0xff, 0xfe, 0x00, 0x7b]))
        .await
        .unwrap();
    let frame = client.recv().await;
    assert_error(&frame, "ERROR", "INVALID_ARGUMENT");
    assert_eq!(frame["meta"], json!({}));
    assert_alive(&mut client).await;
}

/// §1: a frame of exactly `max_payload_bytes` is accepted; one byte more closes with 1009.
#[tokio::test]
async fn frame_over_max_payload_closes_1009() {
    let server = serve(
        router(),
        ServeOptions::new().max_payload_bytes(1024, PayloadLimit::Close),
    )
    .await;
    let mut client = server.client().await;
    client.send_text(&say_frame(1024)).await;
    let reply = client.recv().await;
    assert_eq!(reply["type"], "SAID");
    client.send_text(&say_frame(1025)).await;
    assert_eq!(client.expect_close().await, Some(1009));
}

/// §1: the default `max_payload_bytes` is 1 MiB (Close mode).
#[tokio::test]
async fn default_max_payload_is_one_mib_and_closes_1009() {
    let server = serve_default(router()).await;
    let mut client = server.client().await;
    client.send_text(&say_frame(1024 * 1024)).await;
    let reply = client.recv().await;
    assert_eq!(
        reply["type"], "SAID",
        "a frame of exactly 1 MiB is accepted"
    );
    client.send_text(&say_frame(1024 * 1024 + 1)).await;
    assert_eq!(client.expect_close().await, Some(1009));
}

/// §1/§4: in `Reject` mode an oversized frame gets `RESOURCE_EXHAUSTED` and the connection stays.
#[tokio::test]
async fn reject_mode_replies_resource_exhausted_and_stays_open() {
    let (router, mut errors) = router_with_errors();
    let server = serve(
        router,
        ServeOptions::new().max_payload_bytes(1024, PayloadLimit::Reject),
    )
    .await;
    let mut client = server.client().await;
    client.send_text(&say_frame(1024)).await;
    assert_eq!(client.recv().await["type"], "SAID");
    client.send_text(&say_frame(2000)).await;
    let frame = client.recv().await;
    assert_error(&frame, "ERROR", "RESOURCE_EXHAUSTED");
    let event = next_error(&mut errors).await;
    assert_eq!(event.kind, ErrorKind::PayloadTooLarge);
    // The oversized frame was not dispatched, and the connection still works.
    client.send_text(&say_frame(1000)).await;
    assert_eq!(
        client.recv().await,
        json!({"type": "SAID", "meta": {}, "payload": {"len": say_text_len(1000)}})
    );
}

/// §1: server → client key order is `type`, `meta`, `payload` (direct sends, replies, errors).
#[tokio::test]
async fn direct_frames_keep_key_order_type_meta_payload() {
    let server = serve_default(router()).await;
    let mut client = server.client().await;
    let frames = [
        json!({"type": "JOIN_ROOM", "payload": {"roomId": "r1"}}),
        json!({"type": "ECHO", "payload": {"text": "hi"}, "meta": {"correlationId": "c1"}}),
        json!({"type": "FAIL", "payload": {"kind": "notFound"}}),
        json!({"type": "UNKNOWN_X", "meta": {"correlationId": "c2"}}),
    ];
    for request in frames {
        client.send(request.clone()).await;
        let WsMessage::Text(text) = recv_raw(&mut client).await else {
            panic!("expected a text frame for {request}");
        };
        assert_eq!(
            top_level_keys(&text),
            ["type", "meta", "payload"],
            "frame: {text}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Client → server envelope
// ---------------------------------------------------------------------------------------------

/// §2: the documented envelope with every standard meta key is accepted; the handler sees the
/// standard meta values.
#[tokio::test]
async fn standard_meta_keys_are_accepted_and_reach_the_handler() {
    let server = serve_default(router()).await;
    let mut client = server.client().await;
    let frame = roundtrip(
        &mut client,
        json!({"type": "INSPECT", "meta": {
            "correlationId": "c1", "timestamp": 1700000000000u64, "timeoutMs": 5000, "idempotencyKey": "k1"
        }}),
    )
    .await;
    assert_eq!(frame["type"], "INSPECTED", "frame: {frame}");
    let p = &frame["payload"];
    assert_eq!(p["correlationId"], "c1");
    assert_eq!(p["timestamp"].as_f64(), Some(1700000000000.0));
    assert_eq!(p["timeoutMs"], 5000);
    assert_eq!(p["idempotencyKey"], "k1");
    // The documented example itself.
    let frame = roundtrip(
        &mut client,
        json!({"type":"JOIN_ROOM","payload":{"roomId":"r1"},"meta":{"correlationId":"c1","timestamp":1700000000000u64}}),
    )
    .await;
    assert_eq!(
        frame,
        json!({"type": "JOINED", "meta": {}, "payload": {"roomId": "r1"}})
    );
}

/// §2: a frame means the same whatever its key order and spelling. A frame that opens with its
/// `type` takes the server's one-pass decoder, any other the full parse; both must accept and
/// reject the same frames with the same answers.
#[tokio::test]
async fn every_frame_decodes_the_same_whether_type_comes_first_or_last() {
    let server = serve_default(router()).await;
    let mut client = server.client().await;
    let long_id = "x".repeat(129);
    let frames = [
        // Accepted.
        json!({"type": "JOIN_ROOM", "payload": {"roomId": "r1"}}),
        json!({"type": "JOIN_ROOM", "payload": {"roomId": "r1"}, "meta": {}}),
        json!({"type": "JOIN_ROOM", "payload": {"roomId": "r1"}, "meta": null}),
        json!({"type": "JOIN_ROOM", "payload": {"roomId": "r1"}, "meta": {
            "correlationId": "c1", "timestamp": 1.5, "timeoutMs": 10, "idempotencyKey": "k",
            "clientId": "spoof", "receivedAt": [1]
        }}),
        json!({"type": "TICK"}),
        json!({"type": "TICK", "payload": null}),
        json!({"type": "SAY", "payload": {"text": "quote \" backslash \\ é \u{1F600}"}}),
        json!({"type": "ECHO", "payload": {"text": "hi"}, "meta": {"correlationId": "e1"}}),
        json!({"type": "ECHO", "payload": {"text": "hi"}}),
        json!({"type": "TRACED", "payload": {"n": 1}, "meta": {"traceId": "t1"}}),
        // Rejected.
        json!({"type": "JOIN_ROOM", "payload": {"roomId": ""}}),
        json!({"type": "JOIN_ROOM", "payload": {"roomId": 5}}),
        json!({"type": "JOIN_ROOM", "payload": {"roomId": "r1", "extra": true}}),
        json!({"type": "JOIN_ROOM", "payload": ["r1"]}),
        json!({"type": "JOIN_ROOM", "payload": null}),
        json!({"type": "JOIN_ROOM"}),
        json!({"type": "JOIN_ROOM", "payload": {"roomId": "r1"}, "extra": 1}),
        json!({"type": "JOIN_ROOM", "payload": {"roomId": "r1"}, "meta": {"traceId": "t"}}),
        json!({"type": "JOIN_ROOM", "payload": {"roomId": "r1"}, "meta": {"timeoutMs": 0}}),
        json!({"type": "JOIN_ROOM", "payload": {"roomId": "r1"}, "meta": {"timestamp": "x"}}),
        json!({"type": "JOIN_ROOM", "payload": {"roomId": "r1"}, "meta": {"correlationId": long_id}}),
        json!({"type": "JOIN_ROOM", "payload": {"roomId": "r1"}, "meta": [1]}),
        json!({"type": "TICK", "payload": {"a": 1}}),
        json!({"type": "TICK", "payload": {}}),
        json!({"type": "ECHO", "payload": {}, "meta": {"correlationId": "e2"}}),
        json!({"type": "TRACED", "payload": {"n": 1}}),
        json!({"type": "NOPE", "payload": {}}),
        json!({"type": "", "payload": {}}),
        json!({"type": "$ws:nope"}),
    ];
    for frame in &frames {
        client.send_text(&type_first(frame)).await;
        let first = client.recv().await;
        client.send_text(&type_last(frame)).await;
        let last = client.recv().await;
        assert_eq!(first, last, "frame {frame}");
    }
    // Spellings the one-pass path declines or must read like the plain form.
    let spellings = [
        (" {\n\t\"type\" : \"TICK\" } ", json!({"type": "TICK"})),
        (r#"{"type":"TI\u0043K"}"#, json!({"type": "TICK"})),
        (
            r#"{"type":"JOIN_ROOM","payload":{"room\u0049d":"r1"}}"#,
            json!({"type": "JOIN_ROOM", "payload": {"roomId": "r1"}}),
        ),
        (
            r#"{"type":"JOIN_ROOM","\u0070ayload":{"roomId":"r1"}}"#,
            json!({"type": "JOIN_ROOM", "payload": {"roomId": "r1"}}),
        ),
        (
            r#"{"type":"JOIN_ROOM","payload":{"roomId":"r1","roomId":"r2"}}"#,
            json!({"type": "JOIN_ROOM", "payload": {"roomId": "r1"}, "meta": {"x": 1}}),
        ),
    ];
    for (raw, plain) in &spellings {
        client.send_text(raw).await;
        let raw_answer = client.recv().await;
        let plain_answer = roundtrip(&mut client, plain.clone()).await;
        if raw.contains(r#""roomId":"r2""#) {
            // A duplicate key is an error on both paths (compared by shape, not by text).
            assert_error(&raw_answer, "ERROR", "INVALID_ARGUMENT");
            assert_error(&plain_answer, "ERROR", "INVALID_ARGUMENT");
        } else {
            assert_eq!(raw_answer, plain_answer, "frame {raw}");
        }
    }
    // A duplicate `type` is a malformed frame, whichever key comes first.
    client.send_text(r#"{"type":"TICK","type":"TICK"}"#).await;
    assert_error(&client.recv().await, "ERROR", "INVALID_ARGUMENT");
    assert_alive(&mut client).await;
}

/// §2: bad values of standard meta keys are `INVALID_ARGUMENT` at their path
/// (`timeoutMs` must be a positive integer, `timestamp` a number, the ids strings).
#[tokio::test]
async fn standard_meta_values_are_checked() {
    let server = serve_default(router()).await;
    let mut client = server.client().await;
    let cases = [
        (json!({"timeoutMs": 0}), "meta.timeoutMs"),
        (json!({"timeoutMs": -5}), "meta.timeoutMs"),
        (json!({"timeoutMs": 1.5}), "meta.timeoutMs"),
        (json!({"timeoutMs": "100"}), "meta.timeoutMs"),
        (json!({"timestamp": "yesterday"}), "meta.timestamp"),
        (json!({"correlationId": 7}), "meta.correlationId"),
        (json!({"idempotencyKey": 7}), "meta.idempotencyKey"),
    ];
    for (meta, path) in cases {
        let frame = roundtrip(&mut client, json!({"type": "TICK", "meta": meta})).await;
        assert_error(&frame, "ERROR", "INVALID_ARGUMENT");
        assert_eq!(issue_paths(&frame), [path], "meta {meta}: {frame}");
    }
    // `meta` must be an object.
    let frame = roundtrip(&mut client, json!({"type": "TICK", "meta": [1]})).await;
    assert_error(&frame, "ERROR", "INVALID_ARGUMENT");
    assert_alive(&mut client).await;
}

/// §2 strict: unknown keys at the root, in `meta` and at the top of `payload` are rejected with
/// `INVALID_ARGUMENT`; the handler does not run.
#[tokio::test]
async fn unknown_keys_at_root_meta_and_payload_are_rejected() {
    let server = serve_default(router()).await;
    let mut client = server.client().await;

    let frame = roundtrip(
        &mut client,
        json!({"type": "JOIN_ROOM", "payload": {"roomId": "r1"}, "extra": 1}),
    )
    .await;
    assert_error(&frame, "ERROR", "INVALID_ARGUMENT");
    assert_eq!(issue_paths(&frame), ["extra"]);

    let frame = roundtrip(
        &mut client,
        json!({"type": "JOIN_ROOM", "payload": {"roomId": "r1"}, "meta": {"traceId": "t"}}),
    )
    .await;
    assert_error(&frame, "ERROR", "INVALID_ARGUMENT");
    assert_eq!(issue_paths(&frame), ["meta.traceId"]);

    let frame = roundtrip(
        &mut client,
        json!({"type": "JOIN_ROOM", "payload": {"roomId": "r1", "bogus": true}}),
    )
    .await;
    assert_error(&frame, "ERROR", "INVALID_ARGUMENT");
    let paths = issue_paths(&frame);
    assert!(
        paths.iter().all(|p| p.starts_with("payload")),
        "paths {paths:?}"
    );
    assert!(
        frame.to_string().contains("bogus"),
        "the issue names the unknown key: {frame}"
    );

    // Nothing above reached the handler: the next reply is for the next request.
    assert_alive(&mut client).await;
}

/// §2: a message schema may declare extra meta keys; they are accepted (and required), and a
/// message sent by the server carries its declared meta fields in `meta`.
#[tokio::test]
async fn declared_meta_keys_are_accepted_and_sent_in_meta() {
    let server = serve_default(router()).await;
    let mut client = server.client().await;
    let frame = roundtrip(
        &mut client,
        json!({"type": "TRACED", "payload": {"n": 3}, "meta": {"traceId": "t-1", "correlationId": "c1"}}),
    )
    .await;
    assert_eq!(
        frame,
        json!({"type": "TRACED_OK", "meta": {"traceId": "t-1"}, "payload": {"n": 3}})
    );
    // The declared key is part of the schema: missing → INVALID_ARGUMENT at meta.traceId.
    let frame = roundtrip(&mut client, json!({"type": "TRACED", "payload": {"n": 3}})).await;
    assert_error(&frame, "ERROR", "INVALID_ARGUMENT");
    assert_eq!(issue_paths(&frame), ["meta.traceId"]);
    // Declared for TRACED only, not for JOIN_ROOM.
    let frame = roundtrip(
        &mut client,
        json!({"type": "JOIN_ROOM", "payload": {"roomId": "r"}, "meta": {"traceId": "t-1"}}),
    )
    .await;
    assert_error(&frame, "ERROR", "INVALID_ARGUMENT");
}

/// §2: reserved meta keys `clientId` and `receivedAt` are stripped (never rejected, never
/// trusted): the handler sees the connection's id and the server's ingress clock.
#[tokio::test]
async fn reserved_meta_keys_are_stripped_not_rejected() {
    let server = serve_default(router()).await;
    let mut client = server.client().await;
    let header_id = client.headers["x-client-id"].to_str().unwrap().to_string();
    let before = now_ms();
    let frame = roundtrip(
        &mut client,
        json!({"type": "INSPECT", "meta": {"clientId": "spoofed", "receivedAt": 5}}),
    )
    .await;
    let after = now_ms();
    assert_eq!(
        frame["type"], "INSPECTED",
        "reserved keys must not be rejected: {frame}"
    );
    assert_eq!(frame["payload"]["clientId"], header_id.as_str());
    let received = frame["payload"]["receivedAtMs"].as_u64().unwrap();
    assert!(
        (before..=after).contains(&received),
        "receivedAt {received} must be the server clock, within [{before}, {after}]"
    );
    // Also on a message with fields and a declared meta key.
    let frame = roundtrip(
        &mut client,
        json!({"type": "TRACED", "payload": {"n": 1}, "meta": {"traceId": "t", "clientId": "x", "receivedAt": "y"}}),
    )
    .await;
    assert_eq!(
        frame,
        json!({"type": "TRACED_OK", "meta": {"traceId": "t"}, "payload": {"n": 1}})
    );
}

/// §2: `payload` is present exactly when the schema has fields, and is an object.
#[tokio::test]
async fn payload_present_exactly_when_the_schema_has_fields() {
    let server = serve_default(router()).await;
    let mut client = server.client().await;
    // Fieldless message: no payload key → accepted.
    assert_eq!(
        roundtrip(&mut client, json!({"type": "TICK"})).await,
        json!({"type": "TOCK", "meta": {}})
    );
    // Fieldless message with a payload → rejected.
    let frame = roundtrip(&mut client, json!({"type": "TICK", "payload": {}})).await;
    assert_error(&frame, "ERROR", "INVALID_ARGUMENT");
    assert_eq!(issue_paths(&frame), ["payload"]);
    // Message with fields without payload → rejected.
    let frame = roundtrip(&mut client, json!({"type": "JOIN_ROOM"})).await;
    assert_error(&frame, "ERROR", "INVALID_ARGUMENT");
    assert_eq!(issue_paths(&frame), ["payload"]);
    // Payload that is not an object → rejected.
    for payload in [json!("r1"), json!(5), json!(["r1"])] {
        let frame = roundtrip(
            &mut client,
            json!({"type": "JOIN_ROOM", "payload": payload}),
        )
        .await;
        assert_eq!(
            frame["payload"]["code"], "INVALID_ARGUMENT",
            "payload {payload}: {frame}"
        );
        assert_error(&frame, "ERROR", "INVALID_ARGUMENT");
        let paths = issue_paths(&frame);
        assert!(
            paths.iter().all(|p| p.starts_with("payload")),
            "paths {paths:?}"
        );
    }
    assert_alive(&mut client).await;
}

/// §2: field names on the wire are camelCase (`roomId`), in and out.
#[tokio::test]
async fn wire_field_names_are_camel_case() {
    let server = serve_default(router()).await;
    let mut client = server.client().await;
    let frame = roundtrip(
        &mut client,
        json!({"type": "JOIN_ROOM", "payload": {"room_id": "r1"}}),
    )
    .await;
    assert_error(&frame, "ERROR", "INVALID_ARGUMENT");
    assert_alive(&mut client).await;
}

/// §2: `type` is a non-empty string; an empty one is not a valid envelope (`INVALID_ARGUMENT`).
#[tokio::test]
async fn empty_type_is_invalid_argument() {
    let server = serve_default(router()).await;
    let mut client = server.client().await;
    let frame = roundtrip(&mut client, json!({"type": ""})).await;
    assert_error(&frame, "ERROR", "INVALID_ARGUMENT");
    assert_alive(&mut client).await;
}

// ---------------------------------------------------------------------------------------------
// 3. Server → client frames
// ---------------------------------------------------------------------------------------------

/// §3: `ctx.send(msg)` → `{"type","meta":{},"payload"}`; a fieldless message has no `payload`.
#[tokio::test]
async fn send_frame_has_empty_meta_and_payload_only_with_fields() {
    let server = serve_default(router()).await;
    let mut client = server.client().await;
    assert_eq!(
        roundtrip(
            &mut client,
            json!({"type": "JOIN_ROOM", "payload": {"roomId": "r1"}})
        )
        .await,
        json!({"type": "JOINED", "meta": {}, "payload": {"roomId": "r1"}})
    );
    assert_eq!(
        roundtrip(&mut client, json!({"type": "TICK"})).await,
        json!({"type": "TOCK", "meta": {}})
    );
}

/// §3: an RPC reply echoes `correlationId` in meta; a request without one gets `"meta":{}`.
#[tokio::test]
async fn rpc_reply_meta_echoes_correlation_id_or_is_empty() {
    let server = serve_default(router()).await;
    let mut client = server.client().await;
    assert_eq!(
        roundtrip(
            &mut client,
            json!({"type": "ECHO", "payload": {"text": "a"}, "meta": {"correlationId": "c1"}})
        )
        .await,
        json!({"type": "ECHO_REPLY", "meta": {"correlationId": "c1"}, "payload": {"text": "a"}})
    );
    assert_eq!(
        roundtrip(
            &mut client,
            json!({"type": "ECHO", "payload": {"text": "b"}})
        )
        .await,
        json!({"type": "ECHO_REPLY", "meta": {}, "payload": {"text": "b"}})
    );
}

/// §3: user meta given to `send` can never set `type` or `correlationId`; other keys pass.
#[tokio::test]
async fn user_meta_cannot_set_type_or_correlation_id() {
    let server = serve_default(router()).await;
    let mut client = server.client().await;
    assert_eq!(
        roundtrip(&mut client, json!({"type": "SEND_META"})).await,
        json!({"type": "JOINED", "meta": {"traceId": "t1"}, "payload": {"roomId": "m"}})
    );
}

/// §3: an error for an event is `ERROR`, echoing the event's `correlationId` when it had one,
/// `"meta":{}` otherwise.
#[tokio::test]
async fn event_error_echoes_correlation_id_when_given() {
    let server = serve_default(router()).await;
    let mut client = server.client().await;
    let frame = roundtrip(
        &mut client,
        json!({"type": "FAIL", "payload": {"kind": "notFound"}, "meta": {"correlationId": "e1"}}),
    )
    .await;
    assert_eq!(frame["type"], "ERROR");
    assert_eq!(frame["meta"], json!({"correlationId": "e1"}));
    let frame = roundtrip(
        &mut client,
        json!({"type": "FAIL", "payload": {"kind": "notFound"}}),
    )
    .await;
    assert_eq!(frame["type"], "ERROR");
    assert_eq!(frame["meta"], json!({}));
    // Validation errors of events echo it too.
    let frame = roundtrip(
        &mut client,
        json!({"type": "JOIN_ROOM", "payload": {"roomId": ""}, "meta": {"correlationId": "e2"}}),
    )
    .await;
    assert_eq!(frame["type"], "ERROR");
    assert_eq!(frame["meta"], json!({"correlationId": "e2"}));
}

// ---------------------------------------------------------------------------------------------
// 4. Errors
// ---------------------------------------------------------------------------------------------

/// §4: a handler's error reaches the client as it is (code, message, details).
#[tokio::test]
async fn handler_error_passes_through() {
    let server = serve_default(router()).await;
    let mut client = server.client().await;
    let frame = roundtrip(
        &mut client,
        json!({"type": "FAIL", "payload": {"kind": "notFound"}}),
    )
    .await;
    assert_eq!(
        frame,
        json!({"type": "ERROR", "meta": {}, "payload": {
            "code": "NOT_FOUND", "message": "room not found", "details": {"roomId": "r1"}
        }})
    );
    // ctx.error on an event sends the same kind of frame.
    let frame = roundtrip(
        &mut client,
        json!({"type": "FAIL", "payload": {"kind": "ctxError"}, "meta": {"correlationId": "x"}}),
    )
    .await;
    assert_eq!(
        frame,
        json!({"type": "ERROR", "meta": {"correlationId": "x"}, "payload": {
            "code": "FAILED_PRECONDITION", "message": "not yet"
        }})
    );
    // Applications may use their own codes.
    let frame = roundtrip(
        &mut client,
        json!({"type": "FAIL", "payload": {"kind": "custom"}}),
    )
    .await;
    assert_eq!(
        frame,
        json!({"type": "ERROR", "meta": {}, "payload": {"code": "ROOM_FULL", "message": "room is full"}})
    );
}

/// §4 payload: `details` omitted when empty, `retryable` only when set explicitly, `message`
/// defaults to the code's description, `retryAfterMs` as given.
#[tokio::test]
async fn error_payload_shape_and_defaults() {
    let server = serve_default(router()).await;
    let mut client = server.client().await;
    let frame = roundtrip(
        &mut client,
        json!({"type": "FAIL", "payload": {"kind": "default"}}),
    )
    .await;
    assert_eq!(
        frame,
        json!({"type": "ERROR", "meta": {}, "payload": {
            "code": "PERMISSION_DENIED", "message": ErrorCode::PermissionDenied.description()
        }})
    );
    assert!(!ErrorCode::PermissionDenied.description().is_empty());

    let frame = roundtrip(
        &mut client,
        json!({"type": "FAIL", "payload": {"kind": "retry"}}),
    )
    .await;
    assert_eq!(
        frame["payload"],
        json!({"code": "UNAVAILABLE", "message": "try later", "retryable": true, "retryAfterMs": 250})
    );

    let frame = roundtrip(
        &mut client,
        json!({"type": "FAIL", "payload": {"kind": "notRetryable"}}),
    )
    .await;
    assert_eq!(
        frame["payload"],
        json!({"code": "INTERNAL", "message": "db down", "retryable": false})
    );

    let frame = roundtrip(
        &mut client,
        json!({"type": "FAIL", "payload": {"kind": "emptyDetails"}}),
    )
    .await;
    assert_eq!(
        frame["payload"],
        json!({"code": "ABORTED", "message": "conflict"})
    );
}

/// §4 table: the retry defaults of the standard codes.
#[test]
fn error_code_retry_defaults_follow_the_table() {
    use ErrorCode::*;
    for code in [
        Unauthenticated,
        PermissionDenied,
        InvalidArgument,
        FailedPrecondition,
        NotFound,
        AlreadyExists,
        Unimplemented,
        Cancelled,
    ] {
        assert_eq!(code.retryable(), Some(false), "{code}");
        assert_eq!(code.default_retry_after_ms(), None, "{code}");
    }
    assert_eq!(
        (
            DeadlineExceeded.retryable(),
            DeadlineExceeded.default_retry_after_ms()
        ),
        (Some(true), Some(50))
    );
    assert_eq!(
        (
            ResourceExhausted.retryable(),
            ResourceExhausted.default_retry_after_ms()
        ),
        (Some(true), Some(100))
    );
    assert_eq!(
        (
            Unavailable.retryable(),
            Unavailable.default_retry_after_ms()
        ),
        (Some(true), Some(100))
    );
    assert_eq!(
        (Aborted.retryable(), Aborted.default_retry_after_ms()),
        (Some(true), Some(50))
    );
    assert_eq!(
        (Internal.retryable(), Internal.default_retry_after_ms()),
        (None, Some(200))
    );
}

/// §4: not JSON, not an object, or no string `type` → `ERROR INVALID_ARGUMENT`; stays open.
#[tokio::test]
async fn malformed_frames_are_invalid_argument_and_connection_stays_open() {
    let (router, mut errors) = router_with_errors();
    let server = serve(router, ServeOptions::new()).await;
    let mut client = server.client().await;
    let cases = [
        "not json",
        "{\"type\":",
        "[1,2]",
        "42",
        "\"JOIN_ROOM\"",
        "null",
        "{}",
        "{\"payload\":{\"roomId\":\"r1\"}}",
        "{\"type\":5}",
        "{\"type\":null}",
        "{\"type\":{\"a\":1}}",
    ];
    for text in cases {
        client.send_text(text).await;
        let frame = client.recv().await;
        assert_error(&frame, "ERROR", "INVALID_ARGUMENT");
        assert_eq!(frame["meta"], json!({}), "for {text}: {frame}");
        let event = next_error(&mut errors).await;
        assert_eq!(event.kind, ErrorKind::InvalidFrame, "for {text}");
    }
    assert_alive(&mut client).await;
}

/// §4: unknown `type` → `UNIMPLEMENTED`, as `RPC_ERROR` when the frame had a `correlationId`,
/// else `ERROR`.
#[tokio::test]
async fn unknown_type_is_unimplemented_error_or_rpc_error() {
    let server = serve_default(router()).await;
    let mut client = server.client().await;
    let frame = roundtrip(
        &mut client,
        json!({"type": "NO_SUCH_TYPE", "payload": {"a": 1}}),
    )
    .await;
    assert_error(&frame, "ERROR", "UNIMPLEMENTED");
    assert_eq!(frame["meta"], json!({}));
    let frame = roundtrip(
        &mut client,
        json!({"type": "NO_SUCH_TYPE", "meta": {"correlationId": "u1"}}),
    )
    .await;
    assert_error(&frame, "RPC_ERROR", "UNIMPLEMENTED");
    assert_eq!(frame["meta"], json!({"correlationId": "u1"}));
    assert_alive(&mut client).await;
}

/// §4: validation failures (field constraints, wrong types) → `INVALID_ARGUMENT` with
/// `details.issues[].path` like `payload.roomId`.
#[tokio::test]
async fn validation_failure_reports_issue_paths() {
    let server = serve_default(router()).await;
    let mut client = server.client().await;
    for room in [
        json!(""),
        json!("x".repeat(21)),
        json!(5),
        json!(null),
        json!({"a": 1}),
    ] {
        let frame = roundtrip(
            &mut client,
            json!({"type": "JOIN_ROOM", "payload": {"roomId": room}}),
        )
        .await;
        assert_error(&frame, "ERROR", "INVALID_ARGUMENT");
        assert_eq!(
            issue_paths(&frame),
            ["payload.roomId"],
            "roomId {room}: {frame}"
        );
    }
    // Boundaries of the constraint are accepted.
    for room in ["x", &"x".repeat(20)] {
        let frame = roundtrip(
            &mut client,
            json!({"type": "JOIN_ROOM", "payload": {"roomId": room}}),
        )
        .await;
        assert_eq!(frame["type"], "JOINED");
    }
    // RPC validation failures are the request's RPC_ERROR.
    let frame = roundtrip(
        &mut client,
        json!({"type": "ECHO", "payload": {"text": 1}, "meta": {"correlationId": "v1"}}),
    )
    .await;
    assert_error(&frame, "RPC_ERROR", "INVALID_ARGUMENT");
    assert_eq!(frame["meta"], json!({"correlationId": "v1"}));
    assert_eq!(issue_paths(&frame), ["payload.text"]);
}

/// §4: a missing required field is reported at its own path (`payload.roomId`).
#[tokio::test]
async fn missing_field_issue_path_names_the_field() {
    let server = serve_default(router()).await;
    let mut client = server.client().await;
    let frame = roundtrip(&mut client, json!({"type": "JOIN_ROOM", "payload": {}})).await;
    assert_error(&frame, "ERROR", "INVALID_ARGUMENT");
    assert_eq!(issue_paths(&frame), ["payload.roomId"], "frame: {frame}");
}

/// §4: a panicking handler → `INTERNAL` "Internal error" (nothing leaks), reported to
/// `on_error`; the connection and the server survive.
#[tokio::test]
async fn handler_panic_is_internal_error_and_connection_and_server_survive() {
    let (router, mut errors) = router_with_errors();
    let server = serve(router, ServeOptions::new()).await;
    let mut client = server.client().await;
    for kind in ["panic", "awaitThenPanic"] {
        let frame = roundtrip(
            &mut client,
            json!({"type": "FAIL", "payload": {"kind": kind}, "meta": {"correlationId": "p1"}}),
        )
        .await;
        assert_eq!(
            frame,
            json!({"type": "ERROR", "meta": {"correlationId": "p1"}, "payload": {
                "code": "INTERNAL", "message": "Internal error", "retryAfterMs": 200
            }}),
            "for {kind}"
        );
        assert!(
            !frame.to_string().contains("secret"),
            "internals leaked: {frame}"
        );
        let event = next_error(&mut errors).await;
        assert_eq!(event.kind, ErrorKind::Panic);
        assert_eq!(event.message_type.as_deref(), Some("FAIL"));
        assert_eq!(event.correlation_id.as_deref(), Some("p1"));
        assert!(
            event.error.message().contains("secret internals"),
            "on_error sees the panic: {:?}",
            event.error
        );
        assert_alive(&mut client).await;
    }
    // The server still accepts new connections.
    let mut other = server.client().await;
    assert_alive(&mut other).await;
    assert!(!server.task.is_finished());
}

/// §4: what the server sends on its own is reported to `on_error`, with kind, type, correlation
/// id and client id.
#[tokio::test]
async fn on_error_receives_every_kind() {
    let (router, mut errors) = router_with_errors();
    let server = serve(
        router,
        ServeOptions::new().max_payload_bytes(1024, PayloadLimit::Reject),
    )
    .await;
    let mut client = server.client().await;
    let client_id: uuid::Uuid = client.headers["x-client-id"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();

    let cases: Vec<(String, ErrorKind, Option<&str>, Option<&str>)> = vec![
        ("{".into(), ErrorKind::InvalidFrame, None, None),
        (json!({"type": "$ws:rpc-progress", "meta": {"correlationId": "r1"}}).to_string(), ErrorKind::ReservedType, Some("$ws:rpc-progress"), Some("r1")),
        (json!({"type": "NOPE", "meta": {"correlationId": "n1"}}).to_string(), ErrorKind::UnknownType, Some("NOPE"), Some("n1")),
        (json!({"type": "JOIN_ROOM", "payload": {"roomId": ""}}).to_string(), ErrorKind::Validation, Some("JOIN_ROOM"), None),
        (json!({"type": "FAIL", "payload": {"kind": "notFound"}, "meta": {"correlationId": "h1"}}).to_string(), ErrorKind::Handler, Some("FAIL"), Some("h1")),
        (json!({"type": "FAIL", "payload": {"kind": "panic"}}).to_string(), ErrorKind::Panic, Some("FAIL"), None),
        (say_frame(2000), ErrorKind::PayloadTooLarge, None, None),
    ];
    for (text, kind, ty, cid) in cases {
        client.send_text(&text).await;
        let frame = client.recv().await;
        assert!(
            frame["type"] == "ERROR" || frame["type"] == "RPC_ERROR",
            "{frame}"
        );
        let event = next_error(&mut errors).await;
        assert_eq!(event.kind, kind, "for {text:.80}");
        assert_eq!(event.client_id, client_id);
        assert_eq!(event.message_type.as_deref(), ty, "for {text:.80}");
        assert_eq!(event.correlation_id.as_deref(), cid, "for {text:.80}");
        assert_eq!(
            event.error.code().as_str(),
            frame["payload"]["code"].as_str().unwrap(),
            "on_error sees the code the client got"
        );
    }
    // A good frame reports nothing.
    assert_alive(&mut client).await;
    assert!(errors.try_recv().is_err());
}

// ---------------------------------------------------------------------------------------------
// 6. Reserved types
// ---------------------------------------------------------------------------------------------

/// §6: `__heartbeat` → `{"type":"__heartbeat_ack","meta":{"ts":<server ms>}}`.
#[tokio::test]
async fn heartbeat_gets_ack_with_server_timestamp() {
    let server = serve_default(router()).await;
    let mut client = server.client().await;
    for request in [
        json!({"type": "__heartbeat"}),
        json!({"type": "__heartbeat", "meta": {"timestamp": 1}}),
    ] {
        let before = now_ms();
        let frame = roundtrip(&mut client, request).await;
        let after = now_ms();
        let ts = frame["meta"]["ts"]
            .as_u64()
            .unwrap_or_else(|| panic!("ts must be an integer: {frame}"));
        assert_eq!(
            frame,
            json!({"type": "__heartbeat_ack", "meta": {"ts": ts}})
        );
        assert!(
            (before..=after).contains(&ts),
            "ts {ts} not within [{before}, {after}]"
        );
    }
}

/// §6/§4: reserved types sent by a client → `ERROR INVALID_ARGUMENT`; the connection stays.
#[tokio::test]
async fn reserved_types_from_client_are_invalid_argument() {
    let server = serve_default(router()).await;
    let mut client = server.client().await;
    for ty in [
        "$ws:rpc-progress",
        "$ws:anything",
        "$x",
        "__heartbeat_ack",
        "__custom",
        "ERROR",
        "RPC_ERROR",
    ] {
        let frame = roundtrip(&mut client, json!({"type": ty})).await;
        assert_error(&frame, "ERROR", "INVALID_ARGUMENT");
        assert_eq!(frame["meta"], json!({}), "for {ty}");
    }
    // `$ws:abort` is allowed: no reply at all when nothing is in flight.
    client
        .send(json!({"type": "$ws:abort", "meta": {"correlationId": "none"}}))
        .await;
    client.expect_silence(Duration::from_millis(200)).await;
    assert_alive(&mut client).await;
}
