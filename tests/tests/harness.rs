//! The testing harness (`ws_kit::testing`): fake connections take the socket's path, so the
//! docs/protocol.md rules pinned over real sockets in `protocol.rs`, `rpc.rs`, `pubsub.rs` and
//! `server.rs` hold here too — and time-based rules run in virtual time.
#![cfg(feature = "testing")]

use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use ws_kit::testing::TestServer;
use ws_kit::{
    CloseInfo, Ctx, ErrorCode, ErrorKind, Incoming, Message, Next, PayloadLimit, PublishOptions,
    Router, ServeOptions, WsError, handler, routes,
};

// ---------------------------------------------------------------------------------------------
// Connection data: a user (for the middleware) and a probe handlers and hooks report to.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Probe(Arc<Mutex<Vec<String>>>);

impl Probe {
    fn emit(&self, event: impl Into<String>) {
        self.0.lock().unwrap().push(event.into());
    }

    fn events(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

#[derive(Clone, Default)]
struct Session {
    user: Option<String>,
    probe: Probe,
}

impl Session {
    fn user(user: &str) -> Self {
        Session {
            user: Some(user.into()),
            probe: Probe::default(),
        }
    }
}

/// Reports `dropped:<id>` if the handler's future is dropped before it finishes.
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

/// Subscribes to the room, answers `JOINED`.
#[derive(Message)]
struct JoinRoom {
    #[validate(length(min = 1, max = 20))]
    room_id: String,
}

#[derive(Message, Debug, PartialEq)]
struct Joined {
    room_id: String,
}

#[handler]
async fn join_room(ctx: Ctx<JoinRoom, Session>) -> Result<(), WsError> {
    ctx.subscribe(&ctx.payload.room_id).await?;
    ctx.send(&Joined {
        room_id: ctx.payload.room_id.clone(),
    });
    Ok(())
}

/// Publishes `ROOM_MSG` to the room, not to the sender.
#[derive(Message)]
struct Say {
    room_id: String,
    text: String,
}

#[derive(Message, Debug, PartialEq)]
struct RoomMsg {
    text: String,
}

#[handler]
async fn say(ctx: Ctx<Say, Session>) {
    let msg = RoomMsg {
        text: ctx.payload.text.clone(),
    };
    let _ = ctx
        .publish_with(
            &ctx.payload.room_id,
            &msg,
            PublishOptions::new().exclude_self(),
        )
        .await;
}

#[derive(Message)]
#[rpc(response = EchoReply)]
struct Echo {
    #[validate(length(max = 10))]
    text: String,
}

#[derive(Message, Debug, PartialEq)]
struct EchoReply {
    text: String,
}

#[handler]
async fn echo(ctx: Ctx<Echo, Session>) -> Result<EchoReply, WsError> {
    let text = ctx.payload.text.clone();
    Ok(EchoReply { text })
}

/// Progress `0..n`, one every `every_ms` (virtual time in paused tests), then the reply.
#[derive(Message)]
#[rpc(response = Counted)]
struct Count {
    n: u32,
    every_ms: u64,
}

#[derive(Message, Debug, PartialEq)]
struct Counted {
    i: u32,
    done: bool,
}

#[handler]
async fn count(ctx: Ctx<Count, Session>) -> Result<Counted, WsError> {
    for i in 0..ctx.payload.n {
        ctx.progress(&Counted { i, done: false });
        tokio::time::sleep(Duration::from_millis(ctx.payload.every_ms)).await;
    }
    Ok(Counted {
        i: ctx.payload.n,
        done: true,
    })
}

/// Sleeps `secs` seconds (tokio time), then replies; reports `started:<id>` and `dropped:<id>`.
#[derive(Message)]
#[rpc(response = SlowReply)]
struct Slow {
    id: String,
    secs: u64,
}

#[derive(Message, Debug, PartialEq)]
struct SlowReply {
    id: String,
}

#[handler]
async fn slow(ctx: Ctx<Slow, Session>) -> Result<SlowReply, WsError> {
    let probe = ctx.data().probe.clone();
    let id = ctx.payload.id.clone();
    let mut guard = DropGuard {
        probe: probe.clone(),
        id: id.clone(),
        armed: true,
    };
    probe.emit(format!("started:{id}"));
    tokio::time::sleep(Duration::from_secs(ctx.payload.secs)).await;
    guard.armed = false;
    probe.emit(format!("finished:{id}"));
    Ok(SlowReply { id })
}

/// Replies with the connection's user; the middleware test puts a login check in front of it.
#[derive(Message)]
#[rpc(response = WhoAmIReply)]
struct WhoAmI;

#[derive(Message, Debug, PartialEq)]
struct WhoAmIReply {
    user: String,
}

#[handler]
async fn who_am_i(ctx: Ctx<WhoAmI, Session>) -> Result<WhoAmIReply, WsError> {
    let user = ctx.data().user.clone().unwrap_or_default();
    ctx.data().probe.emit("handler:WHO_AM_I");
    Ok(WhoAmIReply { user })
}

/// An event whose handler panics.
#[derive(Message)]
struct Boom;

#[handler]
async fn boom(_ctx: Ctx<Boom, Session>) {
    panic!("secret: handler internals");
}

/// Sent by `on_open`.
#[derive(Message, Debug, PartialEq)]
struct Welcome {
    client_id: String,
}

fn router() -> Router<Session> {
    Router::new().routes(routes![join_room, say, echo, count, slow, who_am_i, boom])
}

/// The `INVALID_ARGUMENT` issue paths of an error.
fn issue_paths(err: &WsError) -> Vec<String> {
    let issues = err
        .details()
        .and_then(|d| d.get("issues"))
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no details.issues in {err:?}"));
    issues
        .iter()
        .map(|i| i["path"].as_str().unwrap().to_string())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Envelope, validation, routing (docs/protocol.md 2–4)
// ---------------------------------------------------------------------------------------------

/// §4: validation failures are `INVALID_ARGUMENT` with `details.issues[].path` — `ERROR` for an
/// event, the request's `RPC_ERROR` for an RPC — and reach `on_error`; boundaries pass.
#[tokio::test]
async fn validation_errors_name_the_path() {
    let server = TestServer::new(router());
    let conn = server.connect(Session::default()).await;

    conn.send(&JoinRoom {
        room_id: "x".repeat(21),
    });
    let frame = conn.recv_json().await;
    assert_eq!(frame["type"], "ERROR");
    assert_eq!(frame["meta"], json!({}));
    assert_eq!(frame["payload"]["code"], "INVALID_ARGUMENT");
    assert_eq!(
        frame["payload"]["details"]["issues"][0]["path"],
        "payload.roomId"
    );

    // Wrong JSON types and unknown keys are caught by the same strict decoder.
    conn.send_raw(json!({"type": "JOIN_ROOM", "payload": {"roomId": 5}}));
    assert_eq!(issue_paths(&conn.recv_error().await), ["payload.roomId"]);
    conn.send_raw(r#"{"type":"JOIN_ROOM","payload":{"roomId":"r","extra":1}}"#);
    assert_eq!(issue_paths(&conn.recv_error().await), ["payload.extra"]);

    let err = conn
        .request(&Echo {
            text: "x".repeat(11),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), &ErrorCode::InvalidArgument);
    assert_eq!(issue_paths(&err), ["payload.text"]);
    let rpc_error = conn.frames().pop().unwrap();
    assert_eq!(rpc_error["type"], "RPC_ERROR");
    assert_eq!(rpc_error["meta"], json!({"correlationId": "test-1"}));

    let kinds: Vec<_> = server.errors().iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [ErrorKind::Validation; 4]);
    assert_eq!(server.errors()[3].correlation_id.as_deref(), Some("test-1"));

    // The boundary of the constraint is accepted.
    conn.send(&JoinRoom {
        room_id: "x".repeat(20),
    });
    assert_eq!(
        conn.recv::<Joined>().await,
        Joined {
            room_id: "x".repeat(20)
        }
    );
}

/// §4: an unknown type is `UNIMPLEMENTED`: `ERROR` without a correlation id, `RPC_ERROR` echoing
/// it with one. Not JSON is `INVALID_ARGUMENT`. The connection stays open.
#[tokio::test]
async fn unknown_type_is_unimplemented() {
    let server = TestServer::new(router());
    let conn = server.connect(Session::default()).await;

    conn.send_raw(json!({"type": "NO_SUCH_TYPE", "payload": {"a": 1}}));
    let frame = conn.recv_json().await;
    assert_eq!(
        (&frame["type"], &frame["payload"]["code"], &frame["meta"]),
        (&json!("ERROR"), &json!("UNIMPLEMENTED"), &json!({}))
    );
    conn.send_raw(json!({"type": "NO_SUCH_TYPE", "meta": {"correlationId": "u1"}}));
    let frame = conn.recv_json().await;
    assert_eq!(
        (&frame["type"], &frame["payload"]["code"], &frame["meta"]),
        (
            &json!("RPC_ERROR"),
            &json!("UNIMPLEMENTED"),
            &json!({"correlationId": "u1"})
        )
    );
    conn.send_raw("{not json");
    assert_eq!(conn.recv_error().await.code(), &ErrorCode::InvalidArgument);

    let event = server.next_error().await;
    assert_eq!(event.kind, ErrorKind::UnknownType);
    assert_eq!(event.message_type.as_deref(), Some("NO_SUCH_TYPE"));
    assert_eq!(event.client_id, conn.client_id());
    assert_eq!(
        server.next_error().await.correlation_id.as_deref(),
        Some("u1")
    );
    assert_eq!(server.next_error().await.kind, ErrorKind::InvalidFrame);

    assert_eq!(
        conn.request(&Echo { text: "up".into() }).await.unwrap(),
        EchoReply { text: "up".into() }
    );
}

/// `recv::<M>` refuses a frame of another type, and the panic shows the frame.
#[tokio::test]
#[should_panic(expected = r#"expected a `JOINED` frame, got: {"type":"ERROR""#)]
async fn recv_of_another_type_fails_clearly() {
    let server = TestServer::new(router());
    let conn = server.connect(Session::default()).await;
    conn.send_raw(json!({"type": "NO_SUCH_TYPE"}));
    let _ = conn.recv::<Joined>().await;
}

/// §1: a frame over `max_payload_bytes` closes with 1009 — the in-memory transport enforces the
/// limit as tungstenite does on a socket; `Reject` mode answers `RESOURCE_EXHAUSTED` instead.
#[tokio::test]
async fn payload_limit_closes_1009_or_rejects() {
    let server = TestServer::with_options(
        router(),
        ServeOptions::new().max_payload_bytes(200, PayloadLimit::Close),
    );
    let conn = server.connect(Session::default()).await;
    conn.send(&JoinRoom {
        room_id: "r".into(),
    });
    conn.recv::<Joined>().await;
    conn.send_raw(json!({"type": "SAY", "payload": {"roomId": "r", "text": "x".repeat(300)}}));
    assert_eq!(conn.closed().await.code, 1009);

    let server = TestServer::with_options(
        router(),
        ServeOptions::new().max_payload_bytes(200, PayloadLimit::Reject),
    );
    let conn = server.connect(Session::default()).await;
    conn.send_raw(json!({"type": "SAY", "payload": {"roomId": "r", "text": "x".repeat(300)}}));
    assert_eq!(
        conn.recv_error().await.code(),
        &ErrorCode::ResourceExhausted
    );
    assert_eq!(
        conn.request(&Echo { text: "ok".into() })
            .await
            .unwrap()
            .text,
        "ok"
    );
}

// ---------------------------------------------------------------------------------------------
// RPC (docs/protocol.md 5)
// ---------------------------------------------------------------------------------------------

/// §3/§5: the reply is `{"type","meta":{"correlationId"},"payload"}`, in that key order.
#[tokio::test]
async fn rpc_reply_echoes_the_correlation_id() {
    let server = TestServer::new(router());
    let conn = server.connect(Session::default()).await;
    conn.send_with(&Echo { text: "hi".into() }, json!({"correlationId": "c1"}));
    assert_eq!(
        conn.recv_text().await,
        r#"{"type":"ECHO_REPLY","meta":{"correlationId":"c1"},"payload":{"text":"hi"}}"#
    );

    let outcome = conn
        .start_request(&Echo { text: "yo".into() }, json!({"correlationId": "c2"}))
        .outcome()
        .await;
    assert_eq!(outcome.correlation_id, "c2");
    assert_eq!(outcome.result.unwrap(), EchoReply { text: "yo".into() });
    assert_eq!(conn.frames().len(), 2);
    assert!(server.errors().is_empty());
}

/// §5: progress frames in order, then exactly one terminal; the handler's sleeps run in virtual
/// time.
#[tokio::test(start_paused = true)]
async fn progress_then_terminal() {
    let server = TestServer::new(router());
    let conn = server.connect(Session::default()).await;
    let started = tokio::time::Instant::now();
    let outcome = conn
        .request_with_progress(&Count {
            n: 3,
            every_ms: 1000,
        })
        .await;
    assert_eq!(
        outcome.progress,
        [0, 1, 2].map(|i| Counted { i, done: false })
    );
    assert_eq!(outcome.result.unwrap(), Counted { i: 3, done: true });
    assert_eq!(started.elapsed(), Duration::from_secs(3));

    let types: Vec<_> = conn.frames().iter().map(|f| f["type"].clone()).collect();
    assert_eq!(
        types,
        [
            "$ws:rpc-progress",
            "$ws:rpc-progress",
            "$ws:rpc-progress",
            "COUNTED"
        ]
    );
    assert!(
        conn.frames()
            .iter()
            .all(|f| f["meta"] == json!({"correlationId": outcome.correlation_id}))
    );
    conn.expect_silence_for(Duration::from_secs(60)).await;
}

/// §5: `$ws:abort` makes the terminal `RPC_ERROR CANCELLED` and drops the handler; nothing
/// follows for that request, and other requests are unaffected.
#[tokio::test(start_paused = true)]
async fn abort_cancels_the_handler() {
    let server = TestServer::new(router());
    let session = Session::default();
    let probe = session.probe.clone();
    let conn = server.connect(session).await;

    let pending = conn.start_request(
        &Slow {
            id: "a".into(),
            secs: 3600,
        },
        Value::Null,
    );
    // Another request completes while the slow one waits (handlers run concurrently).
    assert_eq!(
        conn.request(&Echo { text: "x".into() }).await.unwrap().text,
        "x"
    );
    assert_eq!(probe.events(), ["started:a"]);
    pending.abort();
    let outcome = pending.outcome().await;
    let err = outcome.result.unwrap_err();
    assert_eq!(err.code(), &ErrorCode::Cancelled);
    assert!(outcome.progress.is_empty());
    conn.expect_silence_for(Duration::from_secs(7200)).await;
    assert_eq!(probe.events(), ["started:a", "dropped:a"]);
}

/// §5: `meta.timeoutMs` → `RPC_ERROR DEADLINE_EXCEEDED` at the deadline, the handler dropped —
/// under a paused clock, 30 s of deadline take no real time.
#[tokio::test(start_paused = true)]
async fn timeout_ms_is_deadline_exceeded_in_virtual_time() {
    let server = TestServer::new(router()).timeout(Duration::from_secs(120));
    let session = Session::default();
    let probe = session.probe.clone();
    let conn = server.connect(session).await;

    let real = std::time::Instant::now();
    let virtual_start = tokio::time::Instant::now();
    let err = conn
        .request_with(
            &Slow {
                id: "d".into(),
                secs: 60,
            },
            json!({"timeoutMs": 30_000}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), &ErrorCode::DeadlineExceeded);
    let waited = virtual_start.elapsed();
    assert!(
        waited >= Duration::from_secs(30) && waited < Duration::from_secs(31),
        "deadline fired after {waited:?} of virtual time"
    );
    assert!(
        real.elapsed() < Duration::from_secs(2),
        "a paused clock should not wait for real: {:?}",
        real.elapsed()
    );
    assert_eq!(probe.events(), ["started:d", "dropped:d"]);
    let event = server.next_error().await;
    assert_eq!(event.kind, ErrorKind::DeadlineExceeded);
    assert_eq!(event.correlation_id.as_deref(), Some("test-1"));
}

/// §5 in virtual time, later in a test: the deadline counts from the frame's arrival on tokio's
/// clock, so a request sent after the clock moved on gets its full `timeoutMs`.
#[tokio::test(start_paused = true)]
async fn deadline_counts_from_arrival_on_the_tokio_clock() {
    let server = TestServer::new(router()).timeout(Duration::from_secs(120));
    let conn = server.connect(Session::default()).await;
    conn.expect_silence_for(Duration::from_secs(600)).await;

    let reply = conn
        .request_with(
            &Slow {
                id: "in-time".into(),
                secs: 1,
            },
            json!({"timeoutMs": 5_000}),
        )
        .await;
    assert_eq!(reply.unwrap().id, "in-time");

    let started = tokio::time::Instant::now();
    let err = conn
        .request_with(
            &Slow {
                id: "late".into(),
                secs: 60,
            },
            json!({"timeoutMs": 30_000}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), &ErrorCode::DeadlineExceeded);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(30) && waited < Duration::from_secs(31),
        "deadline fired after {waited:?} of virtual time"
    );
}

/// §5: a correlation id already in flight is dropped (nothing sent, reported to `on_error`); the
/// first request completes.
#[tokio::test(start_paused = true)]
async fn duplicate_in_flight_correlation_id_is_dropped() {
    let server = TestServer::new(router());
    let conn = server.connect(Session::default()).await;
    let first = conn.start_request(
        &Slow {
            id: "1".into(),
            secs: 5,
        },
        json!({"correlationId": "dup"}),
    );
    conn.send_with(
        &Slow {
            id: "2".into(),
            secs: 0,
        },
        json!({"correlationId": "dup"}),
    );
    let event = server.next_error().await;
    assert_eq!(event.kind, ErrorKind::DuplicateCorrelation);
    assert_eq!(first.outcome().await.result.unwrap().id, "1");
    conn.expect_silence().await;
}

// ---------------------------------------------------------------------------------------------
// Middleware, errors, hooks
// ---------------------------------------------------------------------------------------------

async fn require_user(req: Incoming<Session>, next: Next<Session>) -> Result<(), WsError> {
    if req.data().user.is_none() {
        return Err(WsError::unauthenticated("log in first"));
    }
    next.run().await
}

/// Middleware that returns an error stops the chain: the handler never runs and the error is
/// the request's terminal.
#[tokio::test]
async fn middleware_short_circuits() {
    let server = TestServer::new(router().middleware(require_user));

    let anonymous = Session::default();
    let probe = anonymous.probe.clone();
    let conn = server.connect(anonymous).await;
    let err = conn.request(&WhoAmI).await.unwrap_err();
    assert_eq!(err.code(), &ErrorCode::Unauthenticated);
    assert_eq!(err.message(), "log in first");
    assert!(
        probe.events().is_empty(),
        "the handler ran: {:?}",
        probe.events()
    );
    assert_eq!(server.next_error().await.kind, ErrorKind::Handler);

    let ada = Session::user("ada");
    let probe = ada.probe.clone();
    let conn = server.connect(ada).await;
    assert_eq!(conn.request(&WhoAmI).await.unwrap().user, "ada");
    assert_eq!(probe.events(), ["handler:WHO_AM_I"]);
}

/// §4: a panicking handler costs one `INTERNAL` "Internal error" (nothing leaks); `on_error`
/// gets the panic message; the connection goes on.
#[tokio::test]
async fn handler_panic_is_captured_by_on_error() {
    let server = TestServer::new(router());
    let conn = server.connect(Session::default()).await;
    conn.send(&Boom);
    let err = conn.recv_error().await;
    assert_eq!(err.code(), &ErrorCode::Internal);
    assert_eq!(err.message(), "Internal error");

    let event = server.next_error().await;
    assert_eq!(event.kind, ErrorKind::Panic);
    assert_eq!(event.message_type.as_deref(), Some("BOOM"));
    assert!(
        event.error.message().contains("secret: handler internals"),
        "{:?}",
        event.error
    );
    assert_eq!(
        conn.request(&Echo { text: "ok".into() })
            .await
            .unwrap()
            .text,
        "ok"
    );
}

/// §7: `on_open` runs before `connect` returns (its frames are the first the client gets);
/// `on_close` runs on close with the client's code, before the subscriptions go.
#[tokio::test]
async fn on_open_and_on_close_run() {
    let closes: Arc<Mutex<Vec<(CloseInfo, bool)>>> = Arc::default();
    let seen = closes.clone();
    let router = router()
        .on_open(|conn| async move {
            conn.data().probe.emit("open");
            conn.send(&Welcome {
                client_id: conn.client_id().to_string(),
            });
            Ok(())
        })
        .on_close(move |conn, info| {
            let seen = seen.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .push((info, conn.is_subscribed("lobby")));
            }
        });
    let server = TestServer::new(router);
    let session = Session::default();
    let probe = session.probe.clone();
    let conn = server.connect(session).await;
    assert_eq!(probe.events(), ["open"]);
    assert_eq!(server.service().connection_count(), 1);
    assert_eq!(
        conn.recv::<Welcome>().await.client_id,
        conn.client_id().to_string()
    );

    conn.send(&JoinRoom {
        room_id: "lobby".into(),
    });
    conn.recv::<Joined>().await;
    assert_eq!(server.publisher().subscriber_count("lobby").await, Some(1));

    conn.close(4000).await;
    assert_eq!(
        *closes.lock().unwrap(),
        [(
            CloseInfo {
                code: 4000,
                reason: String::new()
            },
            true
        )]
    );
    assert!(conn.is_ended());
    assert_eq!(server.service().connection_count(), 0);
    assert_eq!(server.publisher().subscriber_count("lobby").await, Some(0));
}

/// §7: `on_open` failing closes the connection with the code of its close error.
#[tokio::test]
async fn on_open_error_closes_the_connection() {
    let router = router().on_open(|conn| async move {
        match conn.data().user {
            Some(_) => Ok(()),
            None => Err(WsError::close(4401, "who are you")),
        }
    });
    let server = TestServer::new(router);
    let conn = server.connect(Session::default()).await;
    assert_eq!(
        conn.closed().await,
        CloseInfo {
            code: 4401,
            reason: "who are you".into()
        }
    );
    assert_eq!(server.next_error().await.kind, ErrorKind::Open);

    let conn = server.connect(Session::user("ada")).await;
    assert_eq!(conn.request(&WhoAmI).await.unwrap().user, "ada");
}

/// §7: graceful shutdown closes fake connections with 1001, like sockets.
#[tokio::test]
async fn shutdown_closes_with_1001() {
    let server = TestServer::new(router());
    let conn = server.connect(Session::default()).await;
    server.service().shutdown();
    let close = conn.closed().await;
    assert_eq!(
        (close.code, close.reason.as_str()),
        (1001, "Server shutting down")
    );
}

// ---------------------------------------------------------------------------------------------
// Pub/sub (docs/protocol.md 8)
// ---------------------------------------------------------------------------------------------

/// A publication is recorded (topic, frame, excluded sender) and still delivered to the other
/// fake connection, as the pub/sub frame `{"type","payload"}`.
#[tokio::test]
async fn publications_are_recorded_and_delivered() {
    let server = TestServer::new(router());
    let alice = server.connect(Session::default()).await;
    let bob = server.connect(Session::default()).await;
    for conn in [&alice, &bob] {
        conn.send(&JoinRoom {
            room_id: "room:1".into(),
        });
        conn.recv::<Joined>().await;
    }

    bob.send(&Say {
        room_id: "room:1".into(),
        text: "hi".into(),
    });
    assert_eq!(
        alice.recv_text().await,
        r#"{"type":"ROOM_MSG","payload":{"text":"hi"}}"#
    );
    bob.expect_silence().await; // exclude_self

    let publication = server.next_publication().await;
    assert_eq!(publication.topic, "room:1");
    assert_eq!(publication.exclude, Some(bob.client_id()));
    assert_eq!(publication.message_type(), "ROOM_MSG");
    assert_eq!(
        publication.decode::<RoomMsg>(),
        RoomMsg { text: "hi".into() }
    );
    assert_eq!(
        publication.frame,
        json!({"type": "ROOM_MSG", "payload": {"text": "hi"}})
    );

    // Publishing from outside handlers goes through the same recording engine.
    let result = server
        .publisher()
        .publish(
            "room:1",
            &RoomMsg {
                text: "news".into(),
            },
        )
        .await;
    assert_eq!(result.matched, Some(2));
    assert_eq!(alice.recv::<RoomMsg>().await.text, "news");
    assert_eq!(bob.recv::<RoomMsg>().await.text, "news");
    assert_eq!(server.publications().len(), 2);
    assert_eq!(server.next_publication().await.exclude, None);
}

// ---------------------------------------------------------------------------------------------
// Heartbeat (docs/protocol.md 7) under a paused clock
// ---------------------------------------------------------------------------------------------

/// A client that answers pings (the fake client does by default, like a browser) stays open
/// through ten minutes of virtual time.
#[tokio::test(start_paused = true)]
async fn heartbeat_keeps_an_answering_client_open() {
    let server = TestServer::new(router());
    let conn = server.connect(Session::default()).await;
    let real = std::time::Instant::now();
    conn.expect_silence_for(Duration::from_secs(600)).await;
    assert!(conn.pings() >= 19, "pings: {}", conn.pings());
    assert_eq!(
        conn.request(&Echo { text: "hi".into() })
            .await
            .unwrap()
            .text,
        "hi"
    );
    assert!(
        real.elapsed() < Duration::from_secs(2),
        "{:?}",
        real.elapsed()
    );
}

/// A client that never answers pings is closed with 4002 once `heartbeat.timeout` passes, and
/// `on_close` sees 4002 (real clock, short intervals).
#[tokio::test]
async fn heartbeat_closes_a_silent_client_with_4002() {
    let closes: Arc<Mutex<Vec<u16>>> = Arc::default();
    let seen = closes.clone();
    let router = router().on_close(move |_, info| {
        seen.lock().unwrap().push(info.code);
        async {}
    });
    let options =
        ServeOptions::new().heartbeat(Duration::from_millis(20), Duration::from_millis(100));
    let server = TestServer::with_options(router, options);
    let conn = server.connect(Session::default()).await;
    conn.answer_pings(false);
    let started = std::time::Instant::now();
    let close = conn.closed().await;
    assert_eq!(
        close,
        CloseInfo {
            code: 4002,
            reason: "Heartbeat timeout".into()
        }
    );
    assert!(conn.pings() >= 1, "no ping before the close");
    assert!(
        started.elapsed() >= Duration::from_millis(80),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(*closes.lock().unwrap(), [4002]);
}

/// The same with the default 30 s / 90 s heartbeat, in virtual time: no real waiting.
#[tokio::test(start_paused = true)]
async fn heartbeat_closes_a_silent_client_with_4002_in_virtual_time() {
    let server = TestServer::new(router()).timeout(Duration::from_secs(300));
    let conn = server.connect(Session::default()).await;
    conn.answer_pings(false);
    let real = std::time::Instant::now();
    let started = tokio::time::Instant::now();
    let close = conn.closed().await;
    assert_eq!(close.code, 4002, "{close:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(90) && waited <= Duration::from_secs(120),
        "closed after {waited:?} of virtual time"
    );
    assert!(conn.pings() >= 2, "pings: {}", conn.pings());
    assert!(
        real.elapsed() < Duration::from_secs(2),
        "{:?}",
        real.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Shared state
// ---------------------------------------------------------------------------------------------

/// The application's state (`Router::with_state`): typed in handlers (`ctx.state()`), and
/// reachable from hooks and middleware through the connection (`conn.state::<T>()`).
#[tokio::test]
async fn router_state_reaches_handlers_hooks_and_middleware() {
    #[derive(Default)]
    struct Counter {
        hits: std::sync::atomic::AtomicU32,
    }

    #[derive(Message)]
    #[rpc(response = Hits)]
    struct Hit;

    #[derive(Message, Debug)]
    struct Hits {
        n: u32,
    }

    #[handler]
    async fn hit(ctx: Ctx<Hit, (), Arc<Counter>>) -> Result<Hits, WsError> {
        let n = ctx.state().hits.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Hits { n })
    }

    async fn count_too(msg: Incoming<()>, next: Next<()>) -> Result<(), WsError> {
        let counter = msg.state::<Arc<Counter>>().expect("the router's state");
        counter.hits.fetch_add(10, Ordering::SeqCst);
        next.run().await
    }

    let counter = Arc::new(Counter::default());
    let router = Router::with_state(counter.clone())
        .routes(routes![hit.middleware(count_too)])
        .on_open(|conn| {
            let seen = conn.state::<Arc<Counter>>().is_some() && conn.state::<String>().is_none();
            async move {
                if seen {
                    Ok(())
                } else {
                    Err(WsError::internal("no state in on_open"))
                }
            }
        });
    let server = TestServer::new(router);
    let conn = server.connect(()).await;
    assert_eq!(conn.request(&Hit).await.unwrap().n, 11);
    assert_eq!(conn.request(&Hit).await.unwrap().n, 22);
    assert_eq!(counter.hits.load(Ordering::SeqCst), 22);
}
