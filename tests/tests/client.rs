//! The Rust client (`ws_kit::client`, docs/protocol.md section 9) against real servers on loopback:
//! ws-kit servers for behaviour, and raw WebSocket / TCP servers the test controls for exact frames,
//! abrupt drops, dead peers and connection attempts.
#![cfg(feature = "client")]

mod support;

#[allow(dead_code)]
#[path = "../../examples/rpc.rs"]
mod rpc_example;

#[allow(dead_code)]
#[path = "../../examples/client.rs"]
mod client_example;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::{WAIT, bounded_multi_thread, eventually, free_addr, serve, serve_at};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use ws_kit::client::{
    Client, ClientError, QueuePolicy, Reconnect, RequestError, RequestOptions, State,
    TokenPlacement,
};
use ws_kit::{
    Ctx, ErrorCode, Message, Router, ServeOptions, UpgradeRequest, WsError, handler, query_param,
    routes,
};

// ---------------------------------------------------------------------------------------------
// Messages, shared by server and client as a real app would share them.
// ---------------------------------------------------------------------------------------------

#[derive(Message)]
#[rpc(response = Pong)]
struct Ping {
    text: String,
}

#[derive(Message, Debug)]
struct Pong {
    reply: String,
}

#[derive(Message)]
#[rpc(response = Tick)]
struct Countdown {
    from: u32,
}

#[derive(Message, Debug)]
struct Tick {
    n: u32,
}

/// Never answers; reports `timeout:<id>:<meta.timeoutMs>`, `started:<id>` and `dropped:<id>`.
#[derive(Message)]
#[rpc(response = Pong)]
struct Hang {
    id: String,
}

/// Answers with the error named by `kind`.
#[derive(Message)]
#[rpc(response = Pong)]
struct Fail {
    kind: String,
}

/// Replies with the connection's token.
#[derive(Message)]
#[rpc(response = Pong)]
struct WhoAmI;

/// Reports `note:<n>`.
#[derive(Message)]
struct Note {
    n: u32,
}

#[derive(Message)]
struct Hello;

#[derive(Message)]
struct Welcome {
    message: String,
}

#[derive(Message)]
struct Join {
    room: String,
}

#[derive(Message)]
struct Say {
    room: String,
    text: String,
}

#[derive(Message)]
struct RoomMsg {
    text: String,
}

/// Same tag as `RoomMsg`, other fields: a client expecting `RoomMsg` must not accept it.
#[derive(Message)]
#[message(type = "ROOM_MSG")]
struct OddRoomMsg {
    other: u32,
}

/// Answered with `ERROR INVALID_ARGUMENT`.
#[derive(Message)]
struct Bad;

// ---------------------------------------------------------------------------------------------
// The server: handlers report to the test through the connection's probe.
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Probe {
    events: mpsc::UnboundedSender<String>,
    token: Option<String>,
}

impl Probe {
    fn emit(&self, event: impl Into<String>) {
        let _ = self.events.send(event.into());
    }
}

struct DropGuard(Probe, String);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.emit(format!("dropped:{}", self.1));
    }
}

#[handler]
async fn ping(ctx: Ctx<Ping, Probe>) -> Result<Pong, WsError> {
    ctx.data().emit(format!("ping:{}", ctx.payload.text));
    Ok(Pong {
        reply: format!("Got: {}", ctx.payload.text),
    })
}

#[handler]
async fn countdown(ctx: Ctx<Countdown, Probe>) -> Result<Tick, WsError> {
    for n in (1..=ctx.payload.from).rev() {
        ctx.progress(&Tick { n });
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(Tick { n: 0 })
}

#[handler]
async fn hang(ctx: Ctx<Hang, Probe>) -> Result<Pong, WsError> {
    let probe = ctx.data().clone();
    let id = ctx.payload.id.clone();
    probe.emit(format!("timeout:{id}:{:?}", ctx.meta().timeout_ms));
    probe.emit(format!("started:{id}"));
    let _guard = DropGuard(probe, id);
    std::future::pending().await
}

#[handler]
async fn fail(ctx: Ctx<Fail, Probe>) -> Result<Pong, WsError> {
    Err(match ctx.payload.kind.as_str() {
        "unavailable" => WsError::unavailable("busy"),
        "explicit" => WsError::not_found("no such thing")
            .with_retryable(true)
            .with_retry_after_ms(7)
            .with_details(json!({ "id": 7 })),
        "not_found" => WsError::not_found("gone"),
        _ => WsError::new(ErrorCode::Custom("TEAPOT".into()), "short and stout"),
    })
}

#[handler]
async fn who_am_i(ctx: Ctx<WhoAmI, Probe>) -> Result<Pong, WsError> {
    let token = ctx.data().token.clone().unwrap_or_default();
    Ok(Pong { reply: token })
}

#[handler]
async fn note(ctx: Ctx<Note, Probe>) {
    ctx.data().emit(format!("note:{}", ctx.payload.n));
}

#[handler]
async fn hello(ctx: Ctx<Hello, Probe>) {
    ctx.send(&Welcome {
        message: "plain".into(),
    });
    let meta = json!({ "traceId": "t-1" });
    ctx.send_with_meta(
        &Welcome {
            message: "with meta".into(),
        },
        meta.as_object().unwrap(),
    );
}

#[handler]
async fn join(ctx: Ctx<Join, Probe>) -> Result<(), WsError> {
    ctx.subscribe(&ctx.payload.room).await?;
    ctx.data().emit(format!("joined:{}", ctx.payload.room));
    Ok(())
}

#[handler]
async fn say(ctx: Ctx<Say, Probe>) {
    if ctx.payload.text == "odd" {
        ctx.publish(&ctx.payload.room, &OddRoomMsg { other: 1 })
            .await;
    } else {
        let text = ctx.payload.text.clone();
        ctx.publish(&ctx.payload.room, &RoomMsg { text }).await;
    }
}

#[handler]
async fn bad(_ctx: Ctx<Bad, Probe>) -> Result<(), WsError> {
    Err(WsError::invalid_argument("bad event"))
}

fn router() -> Router<Probe> {
    Router::new().routes(routes![
        ping, countdown, hang, fail, who_am_i, note, hello, join, say, bad
    ])
}

/// Every upgrade accepted; the token (if any) from `?access_token=`.
fn options(events: &mpsc::UnboundedSender<String>) -> ServeOptions<Probe> {
    let events = events.clone();
    ServeOptions::with_authenticate(move |req: &UpgradeRequest| {
        Some(Probe {
            events: events.clone(),
            token: query_param(req, "access_token"),
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// What the server's handlers reported.
struct Events(mpsc::UnboundedReceiver<String>);

fn events() -> (mpsc::UnboundedSender<String>, Events) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, Events(rx))
}

impl Events {
    async fn next(&mut self) -> String {
        within("a server event", self.0.recv())
            .await
            .expect("event channel closed")
    }

    /// Skips events until `want`.
    async fn expect(&mut self, want: &str) {
        while self.next().await != want {}
    }

    /// The next `n` events starting with `prefix` (others skipped).
    async fn next_with(&mut self, prefix: &str, n: usize) -> Vec<String> {
        let mut found = Vec::new();
        while found.len() < n {
            let event = self.next().await;
            if event.starts_with(prefix) {
                found.push(event);
            }
        }
        found
    }
}

/// `f`, or a panic naming `what` after `WAIT`.
async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

async fn wait_state(client: &Client, state: State) {
    let mut states = client.watch_state();
    within(
        &format!("state {state:?}"),
        states.wait_for(|s| *s == state),
    )
    .await
    .expect("state channel");
}

/// Small backoff so reconnect tests take milliseconds.
fn fast() -> Reconnect {
    Reconnect::new().delays(Duration::from_millis(10), Duration::from_millis(40))
}

fn server_error(err: RequestError) -> ws_kit::client::ServerError {
    match err {
        RequestError::Server(e) => e,
        other => panic!("expected a server error, got {other:?}"),
    }
}

type RawWs = WebSocketStream<TcpStream>;

async fn accept_ws(listener: &TcpListener) -> RawWs {
    within("a client connection", async {
        let (tcp, _) = listener.accept().await.expect("accept");
        tokio_tungstenite::accept_async(tcp).await.expect("upgrade")
    })
    .await
}

/// The next text frame a raw server got, as JSON.
async fn read_json(ws: &mut RawWs) -> Value {
    loop {
        match within("a frame from the client", ws.next()).await {
            Some(Ok(WsMessage::Text(text))) => return serde_json::from_str(&text).expect("JSON"),
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

async fn write_json(ws: &mut RawWs, value: Value) {
    ws.send(WsMessage::text(value.to_string()))
        .await
        .expect("send");
}

fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A TCP listener that accepts and at once drops every connection (so every attempt fails),
/// reporting when each attempt arrived.
async fn refusing_listener() -> (SocketAddr, mpsc::UnboundedReceiver<Instant>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tx.send(Instant::now());
            drop(tcp);
        }
    });
    (addr, rx)
}

// ---------------------------------------------------------------------------------------------
// Typed messages
// ---------------------------------------------------------------------------------------------

/// `send`, `on` (direct sends, with or without extra meta), `messages` (pub/sub deliveries, which
/// have no meta) and `request` with the reply typed by `#[rpc(response = ...)]`. A delivery whose
/// payload does not match the struct is skipped; the next one still arrives.
#[test]
fn typed_send_on_messages_and_request() {
    bounded_multi_thread(async {
        let (tx, mut events) = events();
        let server = serve(router(), options(&tx)).await;
        let (welcome_tx, mut welcomes) = mpsc::unbounded_channel();
        let client = Client::builder(server.url())
            .on(move |w: Welcome| {
                let _ = welcome_tx.send(w.message);
            })
            .connect()
            .await
            .expect("connect");
        assert_eq!(client.state(), State::Open);

        let pong = within("the reply", client.request(&Ping { text: "hi".into() }))
            .await
            .expect("reply");
        assert_eq!(pong.reply, "Got: hi");

        client.send(&Hello).expect("send");
        assert_eq!(within("welcome", welcomes.recv()).await.unwrap(), "plain");
        assert_eq!(
            within("welcome with meta", welcomes.recv()).await.unwrap(),
            "with meta"
        );

        let mut room = client.messages::<RoomMsg>();
        client.send(&Join { room: "r1".into() }).unwrap();
        events.expect("joined:r1").await;
        for text in ["first", "odd", "second"] {
            let message = Say {
                room: "r1".into(),
                text: text.into(),
            };
            client.send(&message).unwrap();
        }
        assert_eq!(
            within("room message", room.recv()).await.unwrap().text,
            "first"
        );
        assert_eq!(
            within("room message", room.recv()).await.unwrap().text,
            "second"
        );

        // A stream dropped is unsubscribed; `on` handlers keep working.
        drop(room);
        client.send(&Hello).unwrap();
        assert_eq!(within("welcome", welcomes.recv()).await.unwrap(), "plain");
    });
}

/// Errors are typed by code; `retryable` and `retry_after` come from the frame, else from the code
/// (docs/protocol.md section 4); `ERROR` frames for events go to `on_error`.
#[test]
fn errors_are_typed_with_inferred_retry_hints() {
    bounded_multi_thread(async {
        let (tx, _events) = events();
        let server = serve(router(), options(&tx)).await;
        let (err_tx, mut errors) = mpsc::unbounded_channel();
        let client = Client::builder(server.url())
            .on_error(move |e| {
                let _ = err_tx.send(e.clone());
            })
            .connect()
            .await
            .expect("connect");
        let fail_with = |kind: &str| {
            client.request(&Fail {
                kind: kind.to_string(),
            })
        };

        let err = within("error", fail_with("unavailable")).await.unwrap_err();
        assert_eq!(err.code(), Some(&ErrorCode::Unavailable));
        let err = server_error(err);
        assert_eq!(err.message(), "busy");
        assert_eq!(err.retryable(), Some(true));
        assert_eq!(err.retry_after(), Some(Duration::from_millis(100)));

        let err = server_error(within("error", fail_with("explicit")).await.unwrap_err());
        assert_eq!(err.code(), &ErrorCode::NotFound);
        assert_eq!(err.retryable(), Some(true), "the frame's `retryable` wins");
        assert_eq!(err.retry_after(), Some(Duration::from_millis(7)));
        assert_eq!(err.details().unwrap()["id"], 7);

        let err = server_error(within("error", fail_with("not_found")).await.unwrap_err());
        assert_eq!(
            (err.retryable(), err.retry_after(), err.details()),
            (Some(false), None, None)
        );

        let err = server_error(within("error", fail_with("teapot")).await.unwrap_err());
        assert_eq!(err.code(), &ErrorCode::Custom("TEAPOT".into()));
        assert_eq!((err.retryable(), err.retry_after()), (None, None));

        client.send(&Bad).unwrap();
        let err = within("on_error", errors.recv()).await.unwrap();
        assert_eq!(err.code(), &ErrorCode::InvalidArgument);
        assert_eq!(err.message(), "bad event");
    });
}

/// `$ws:rpc-progress` frames arrive through `progress()` (typed as the response), then the reply.
#[test]
fn progress_then_reply() {
    bounded_multi_thread(async {
        let (tx, _events) = events();
        let server = serve(router(), options(&tx)).await;
        let client = Client::connect(server.url()).await.expect("connect");

        let mut call = client.request(&Countdown { from: 3 });
        let mut seen = Vec::new();
        while let Some(tick) = within("progress", call.progress()).await {
            seen.push(tick.n);
        }
        assert_eq!(seen, [3, 2, 1]);
        assert_eq!(within("reply", call).await.expect("reply").n, 0);

        // Progress nobody reads does not get in the way of the reply.
        let tick = within("reply", client.request(&Countdown { from: 2 })).await;
        assert_eq!(tick.expect("reply").n, 0);
    });
}

// ---------------------------------------------------------------------------------------------
// Cancellation and timeouts
// ---------------------------------------------------------------------------------------------

/// `abort()` sends `$ws:abort`: the handler is dropped and the call ends with the server's
/// `CANCELLED`. Dropping a call sends `$ws:abort` too.
#[test]
fn abort_and_drop_cancel_the_handler() {
    bounded_multi_thread(async {
        let (tx, mut events) = events();
        let server = serve(router(), options(&tx)).await;
        let client = Client::connect(server.url()).await.expect("connect");

        let mut call = client.request(&Hang { id: "a".into() });
        events.expect("started:a").await;
        call.abort();
        let err = within("the cancelled terminal", call).await.unwrap_err();
        assert_eq!(err.code(), Some(&ErrorCode::Cancelled), "{err:?}");
        events.expect("dropped:a").await;

        let call = client.request(&Hang { id: "b".into() });
        events.expect("started:b").await;
        drop(call);
        events.expect("dropped:b").await;
    });
}

/// The client's default timeout fails the call with `Timeout` and aborts the handler; it sends no
/// `meta.timeoutMs`. A per-request timeout is sent as `meta.timeoutMs`.
#[test]
fn timeouts_and_timeout_ms() {
    bounded_multi_thread(async {
        let (tx, mut events) = events();
        let server = serve(router(), options(&tx)).await;
        let client = Client::builder(server.url())
            .request_timeout(Duration::from_millis(150))
            .connect()
            .await
            .expect("connect");

        let started = Instant::now();
        let err = within("timeout", client.request(&Hang { id: "d".into() }))
            .await
            .unwrap_err();
        assert!(matches!(err, RequestError::Timeout), "{err:?}");
        assert!(started.elapsed() >= Duration::from_millis(150));
        events.expect("timeout:d:None").await;
        events.expect("dropped:d").await;

        let options = RequestOptions::new().timeout(Duration::from_millis(250));
        let call = client.request_with(&Hang { id: "p".into() }, options);
        let err = within("timeout", call).await.unwrap_err();
        // The client's timer and the server's deadline end at about the same moment.
        assert!(
            matches!(err, RequestError::Timeout)
                || err.code() == Some(&ErrorCode::DeadlineExceeded),
            "{err:?}"
        );
        events.expect("timeout:p:Some(250)").await;
        events.expect("dropped:p").await;
    });
}

/// The timeout counts from the moment the request is written: a request queued offline for longer
/// than its timeout still gets its reply once the connection opens.
#[test]
fn request_timeout_starts_when_written() {
    bounded_multi_thread(async {
        let addr = free_addr();
        let client = Client::builder(format!("ws://{addr}"))
            .reconnect(fast())
            .connect_lazy()
            .expect("client");
        let call = client.request_with(
            &Ping {
                text: "late".into(),
            },
            RequestOptions::new().timeout(Duration::from_millis(300)),
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
        let (tx, _events) = events();
        let _server = serve_at(router(), options(&tx), addr).await;
        let pong = within("the reply", call).await.expect("reply");
        assert_eq!(pong.reply, "Got: late");
    });
}

/// At most `max_pending` requests wait at once; the next fails at once with `TooManyPending`.
#[test]
fn pending_requests_are_bounded() {
    bounded_multi_thread(async {
        let (tx, mut events) = events();
        let server = serve(router(), options(&tx)).await;
        let client = Client::builder(server.url())
            .max_pending(2)
            .connect()
            .await
            .expect("connect");
        let first = client.request(&Hang { id: "1".into() });
        let _second = client.request(&Hang { id: "2".into() });
        events.expect("started:1").await;
        events.expect("started:2").await;
        let err = within("refusal", client.request(&Ping { text: "x".into() }))
            .await
            .unwrap_err();
        assert!(matches!(err, RequestError::TooManyPending), "{err:?}");

        drop(first);
        events.expect("dropped:1").await;
        let pong = within("reply", client.request(&Ping { text: "y".into() })).await;
        assert_eq!(pong.expect("reply").reply, "Got: y");
    });
}

// ---------------------------------------------------------------------------------------------
// Frames on the wire
// ---------------------------------------------------------------------------------------------

/// Client frames are `{"type", "payload" (only with fields), "meta"}` with `meta.timestamp` set,
/// a unique `correlationId` per request, `timeoutMs` only when the caller set a timeout; dropping a
/// written request sends exactly `{"type":"$ws:abort","meta":{"correlationId":..}}`. Replies may
/// carry extra meta; a reply of the wrong type or with unknown payload keys is a decode error.
#[test]
fn frames_on_the_wire() {
    bounded_multi_thread(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let client = Client::builder(url).connect_lazy().expect("client");
        let mut ws = accept_ws(&listener).await;
        within("open", client.wait_open()).await.expect("open");

        let before = now_ms();
        client.send(&Note { n: 1 }).unwrap();
        let frame = read_json(&mut ws).await;
        assert_eq!(keys(&frame), ["meta", "payload", "type"]);
        assert_eq!(frame["type"], "NOTE");
        assert_eq!(frame["payload"], json!({ "n": 1 }));
        assert_eq!(keys(&frame["meta"]), ["timestamp"]);
        let ts = frame["meta"]["timestamp"].as_u64().expect("a number");
        assert!(before <= ts && ts <= now_ms(), "timestamp {ts}");

        client.send(&Hello).unwrap();
        let frame = read_json(&mut ws).await;
        assert_eq!(
            keys(&frame),
            ["meta", "type"],
            "no payload for a message without fields"
        );

        let call = client.request_with(
            &Ping { text: "x".into() },
            RequestOptions::new().timeout(Duration::from_millis(1500)),
        );
        let frame = read_json(&mut ws).await;
        assert_eq!(frame["type"], "PING");
        assert_eq!(frame["payload"], json!({ "text": "x" }));
        assert_eq!(
            keys(&frame["meta"]),
            ["correlationId", "timeoutMs", "timestamp"]
        );
        assert_eq!(frame["meta"]["correlationId"], call.correlation_id());
        assert_eq!(frame["meta"]["timeoutMs"], 1500);

        let mut second = client.request(&Ping { text: "y".into() });
        let frame = read_json(&mut ws).await;
        assert_eq!(keys(&frame["meta"]), ["correlationId", "timestamp"]);
        let cid2 = second.correlation_id().to_string();
        assert_eq!(frame["meta"]["correlationId"], cid2.as_str());
        assert_ne!(cid2, call.correlation_id());

        write_json(
            &mut ws,
            json!({"type": "$ws:rpc-progress", "meta": {"correlationId": cid2, "timestamp": 1}, "payload": {"reply": "half"}}),
        )
        .await;
        write_json(
            &mut ws,
            json!({"type": "PONG", "meta": {"correlationId": cid2, "traceId": "t"}, "payload": {"reply": "done"}}),
        )
        .await;
        assert_eq!(
            within("progress", second.progress()).await.unwrap().reply,
            "half"
        );
        assert!(within("end of progress", second.progress()).await.is_none());
        assert_eq!(within("reply", second).await.unwrap().reply, "done");

        let cid = call.correlation_id().to_string();
        drop(call);
        assert_eq!(
            read_json(&mut ws).await,
            json!({"type": "$ws:abort", "meta": {"correlationId": cid}})
        );

        for (reply, what) in [
            (
                json!({"type": "WELCOME", "payload": {"message": "?"}}),
                "wrong type",
            ),
            (
                json!({"type": "PONG", "payload": {"reply": "r", "extra": 1}}),
                "unknown key",
            ),
        ] {
            let call = client.request(&Ping { text: "z".into() });
            let frame = read_json(&mut ws).await;
            let mut reply = reply;
            reply["meta"] = json!({ "correlationId": frame["meta"]["correlationId"] });
            write_json(&mut ws, reply).await;
            let err = within("decode error", call).await.unwrap_err();
            assert!(matches!(err, RequestError::Decode(_)), "{what}: {err:?}");
        }

        // A close from the server is answered (a clean closing handshake), then the client
        // reconnects.
        ws.close(None).await.expect("close");
        let reply = within("the close reply", ws.next()).await;
        assert!(
            matches!(reply, Some(Ok(WsMessage::Close(_)))),
            "expected the client's close frame, got {reply:?}"
        );
        wait_state(&client, State::Reconnecting).await;
    });
}

// ---------------------------------------------------------------------------------------------
// Connection loss, reconnect, offline queue
// ---------------------------------------------------------------------------------------------

/// A request written before the connection drops fails with `ConnectionClosed` (it never hangs);
/// one made while reconnecting waits in the queue and goes out on the next connection.
#[test]
fn pending_requests_fail_when_the_connection_drops() {
    bounded_multi_thread(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let client = Client::builder(url)
            .reconnect(fast())
            .connect_lazy()
            .expect("client");
        let mut ws = accept_ws(&listener).await;
        within("open", client.wait_open()).await.expect("open");

        let call = client.request(&Ping {
            text: "lost".into(),
        });
        assert_eq!(read_json(&mut ws).await["type"], "PING");
        drop(ws); // abrupt: no close frame
        let err = within("the failure", call).await.unwrap_err();
        assert!(matches!(err, RequestError::ConnectionClosed), "{err:?}");

        wait_state(&client, State::Reconnecting).await;
        let queued = client.request(&Ping {
            text: "queued".into(),
        });
        let mut ws = accept_ws(&listener).await;
        let frame = read_json(&mut ws).await;
        assert_eq!(frame["payload"]["text"], "queued");
        let cid = frame["meta"]["correlationId"].clone();
        write_json(
            &mut ws,
            json!({"type": "PONG", "meta": {"correlationId": cid}, "payload": {"reply": "ok"}}),
        )
        .await;
        assert_eq!(within("reply", queued).await.unwrap().reply, "ok");
    });
}

/// A server restart: the client goes `Reconnecting`, fetches a fresh token, reconnects, runs
/// `on_reconnect` once (its frames first), then flushes what was sent offline, in order.
#[test]
fn reconnects_after_a_restart() {
    bounded_multi_thread(async {
        let (tx, mut events) = events();
        let mut server = serve(router(), options(&tx)).await;
        let addr = server.addr;
        let tokens = Arc::new(AtomicUsize::new(0));
        let (hook_tx, mut hooks) = mpsc::unbounded_channel();
        let client = Client::builder(server.url())
            .token({
                let tokens = tokens.clone();
                move || Some(format!("t{}", tokens.fetch_add(1, Ordering::SeqCst) + 1))
            })
            .reconnect(
                Reconnect::new().delays(Duration::from_millis(20), Duration::from_millis(100)),
            )
            .on_reconnect(move |client| {
                client.send(&Note { n: 100 }).expect("send from the hook");
                let _ = hook_tx.send(());
            })
            .connect()
            .await
            .expect("connect");
        let who = within("reply", client.request(&WhoAmI)).await.unwrap();
        assert_eq!(who.reply, "t1");

        server.service.shutdown();
        let _ = within("shutdown", &mut server.task).await;
        drop(server);
        wait_state(&client, State::Reconnecting).await;
        for n in 1..=3 {
            client.send(&Note { n }).expect("queued while offline");
        }

        let _server = serve_at(router(), options(&tx), addr).await;
        within("reopen", client.wait_open()).await.expect("open");
        within("the hook", hooks.recv()).await.unwrap();
        assert_eq!(
            events.next_with("note:", 4).await,
            ["note:100", "note:1", "note:2", "note:3"]
        );

        let who = within("reply", client.request(&WhoAmI)).await.unwrap();
        let fetched = tokens.load(Ordering::SeqCst);
        assert!(
            fetched >= 2,
            "the token is fetched again before reconnecting"
        );
        assert_eq!(who.reply, format!("t{fetched}"), "the latest token is used");
        assert!(hooks.try_recv().is_err(), "on_reconnect ran once");
    });
}

/// Without jitter the delays between attempts double up to the cap (40, 80, 160, 320, 320 ms).
#[test]
fn backoff_doubles_to_the_cap() {
    bounded_multi_thread(async {
        let (addr, mut attempts) = refusing_listener().await;
        let policy = Reconnect::new()
            .delays(Duration::from_millis(40), Duration::from_millis(320))
            .jitter(false);
        let client = Client::builder(format!("ws://{addr}"))
            .reconnect(policy.clone())
            .connect_lazy()
            .expect("client");
        let mut times = Vec::new();
        for _ in 0..6 {
            times.push(within("an attempt", attempts.recv()).await.unwrap());
        }
        client.close().await;
        let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
        for (n, gap) in gaps.iter().enumerate() {
            let expected = policy.ceiling(n as u32);
            assert!(
                *gap + Duration::from_millis(5) >= expected
                    && *gap <= expected + Duration::from_millis(200),
                "gap {n} was {gap:?}, expected about {expected:?} (all: {gaps:?})"
            );
        }
        assert_eq!(
            (0..5)
                .map(|n| policy.ceiling(n).as_millis())
                .collect::<Vec<_>>(),
            [40, 80, 160, 320, 320]
        );
    });
}

/// With full jitter every delay stays within `[0, ceiling]`, and they are not all at the ceiling.
#[test]
fn backoff_has_full_jitter() {
    bounded_multi_thread(async {
        let (addr, mut attempts) = refusing_listener().await;
        let policy = Reconnect::new().delays(Duration::from_millis(60), Duration::from_millis(240));
        let client = Client::builder(format!("ws://{addr}"))
            .reconnect(policy.clone())
            .connect_lazy()
            .expect("client");
        let mut times = Vec::new();
        for _ in 0..8 {
            times.push(within("an attempt", attempts.recv()).await.unwrap());
        }
        client.close().await;
        let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
        let mut jittered = 0;
        for (n, gap) in gaps.iter().enumerate() {
            let ceiling = policy.ceiling(n as u32);
            assert!(
                *gap <= ceiling + Duration::from_millis(200),
                "gap {n} was {gap:?}, over its ceiling {ceiling:?} (all: {gaps:?})"
            );
            if *gap < ceiling.mul_f64(0.75) {
                jittered += 1;
            }
        }
        // Each gap falls below 3/4 of its ceiling with probability 3/4: none of 7 is ~6e-5.
        assert!(jittered > 0, "no delay was jittered: {gaps:?}");
    });
}

/// `max_attempts` gives up: after the first attempt and that many retries the client is closed.
#[test]
fn reconnect_gives_up_after_max_attempts() {
    bounded_multi_thread(async {
        let (addr, mut attempts) = refusing_listener().await;
        let client = Client::builder(format!("ws://{addr}"))
            .reconnect(fast().max_attempts(2))
            .connect_lazy()
            .expect("client");
        assert!(matches!(
            within("closed", client.wait_open()).await,
            Err(ClientError::Closed)
        ));
        assert_eq!(client.state(), State::Closed);
        for _ in 0..3 {
            within("an attempt", attempts.recv()).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(attempts.try_recv().is_err(), "no attempt after giving up");
        assert!(matches!(
            client.send(&Note { n: 1 }),
            Err(ClientError::Closed)
        ));
    });
}

/// The offline queue: `DropNewest` refuses frames beyond its capacity, `DropOldest` drops the
/// oldest (a dropped request fails), `Off` refuses everything; what is kept goes out in order on
/// open. A queued request that is aborted is never sent.
#[test]
fn offline_queue_policies() {
    bounded_multi_thread(async {
        let addr = free_addr();
        let url = format!("ws://{addr}");
        let lazy = |policy, capacity| {
            Client::builder(url.clone())
                .offline_queue(policy, capacity)
                .reconnect(fast())
                .connect_lazy()
                .expect("client")
        };

        let newest = lazy(QueuePolicy::DropNewest, 3);
        let results: Vec<bool> = (1..=5).map(|n| newest.send(&Note { n }).is_ok()).collect();
        assert_eq!(results, [true, true, true, false, false]);
        assert!(matches!(
            newest.send(&Note { n: 6 }),
            Err(ClientError::QueueFull)
        ));

        let oldest = lazy(QueuePolicy::DropOldest, 3);
        for n in 11..=15 {
            oldest.send(&Note { n }).expect("DropOldest accepts");
        }

        let evicting = lazy(QueuePolicy::DropOldest, 1);
        let pushed_out = evicting.request(&Ping {
            text: "evicted".into(),
        });
        evicting.send(&Note { n: 21 }).unwrap();
        let err = within("eviction", pushed_out).await.unwrap_err();
        assert!(
            matches!(err, RequestError::Client(ClientError::QueueFull)),
            "{err:?}"
        );

        let off = lazy(QueuePolicy::Off, 3);
        assert!(matches!(
            off.send(&Note { n: 1 }),
            Err(ClientError::Offline)
        ));
        let err = within("refusal", off.request(&Ping { text: "x".into() }))
            .await
            .unwrap_err();
        assert!(
            matches!(err, RequestError::Client(ClientError::Offline)),
            "{err:?}"
        );

        let aborting = lazy(QueuePolicy::DropNewest, 10);
        let mut call = aborting.request(&Ping {
            text: "never".into(),
        });
        call.abort();
        let err = within("abort", call).await.unwrap_err();
        assert!(matches!(err, RequestError::Aborted), "{err:?}");

        let (tx, mut events) = events();
        let _server = serve_at(router(), options(&tx), addr).await;
        for (client, fence) in [
            (&newest, 9),
            (&oldest, 19),
            (&evicting, 29),
            (&aborting, 39),
        ] {
            within("open", client.wait_open()).await.expect("open");
            client.send(&Note { n: fence }).unwrap();
        }
        let mut seen = Vec::new();
        let mut fences = BTreeSet::from(["note:9", "note:19", "note:29", "note:39"]);
        while !fences.is_empty() {
            let event = events.next().await;
            fences.remove(event.as_str());
            seen.push(event);
        }
        let of = |range: std::ops::RangeInclusive<u32>| -> Vec<String> {
            seen.iter()
                .filter(|e| {
                    e.strip_prefix("note:")
                        .and_then(|n| n.parse().ok())
                        .is_some_and(|n| range.contains(&n))
                })
                .cloned()
                .collect()
        };
        assert_eq!(of(1..=9), ["note:1", "note:2", "note:3", "note:9"]);
        assert_eq!(of(11..=19), ["note:13", "note:14", "note:15", "note:19"]);
        assert_eq!(of(21..=29), ["note:21", "note:29"]);
        assert!(!seen.iter().any(|e| e.starts_with("ping:")), "{seen:?}");
    });
}

// ---------------------------------------------------------------------------------------------
// Authentication, headers, subprotocols
// ---------------------------------------------------------------------------------------------

/// The token goes in `?access_token=` (percent-encoded), or in a query parameter of another name;
/// without a token the server refuses (401) and `connect` reports the HTTP status.
#[test]
fn token_in_the_query() {
    bounded_multi_thread(async {
        let (tx, _events) = events();
        let (query_tx, mut queries) = mpsc::unbounded_channel();
        let options = ServeOptions::with_authenticate(move |req: &UpgradeRequest| {
            let _ = query_tx.send(req.uri().query().unwrap_or("").to_string());
            let token = query_param(req, "access_token").or_else(|| query_param(req, "auth"))?;
            Some(Probe {
                events: tx.clone(),
                token: Some(token),
            })
        });
        let server = serve(router(), options).await;

        let client = Client::builder(server.url())
            .token(|| Some("two words&more".into()))
            .connect()
            .await
            .expect("connect");
        assert_eq!(
            within("query", queries.recv()).await.unwrap(),
            "access_token=two%20words%26more"
        );
        let who = within("reply", client.request(&WhoAmI)).await.unwrap();
        assert_eq!(who.reply, "two words&more");

        let client = Client::builder(format!("{}/?x=1", server.url()))
            .token_async(|| async { Some("t".to_string()) })
            .token_placement(TokenPlacement::Query("auth".into()))
            .connect()
            .await
            .expect("connect");
        assert_eq!(within("query", queries.recv()).await.unwrap(), "x=1&auth=t");
        drop(client);

        let refused = Client::builder(server.url()).token(|| None).connect().await;
        match refused {
            Err(ClientError::Rejected { status: 401, body }) => assert_eq!(body, "Unauthorized"),
            other => panic!("expected a 401 refusal, got {other:?}"),
        }
    });
}

/// The token as the `bearer.<token>` subprotocol, after the app's own subprotocols; extra headers
/// reach the upgrade request.
#[test]
fn token_as_subprotocol_with_headers() {
    bounded_multi_thread(async {
        let (tx, _events) = events();
        let (seen_tx, mut seen) = mpsc::unbounded_channel();
        let options = ServeOptions::with_authenticate(move |req: &UpgradeRequest| {
            let header = |name: &str| {
                req.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            let offered = header("sec-websocket-protocol");
            let _ = seen_tx.send((offered.clone(), header("x-app")));
            let token = offered
                .split(',')
                .map(str::trim)
                .find_map(|p| p.strip_prefix("bearer."))?
                .to_string();
            (token == "good").then(|| Probe {
                events: tx.clone(),
                token: Some(token),
            })
        });
        let server = serve(router(), options).await;
        let builder = |token: &'static str| {
            Client::builder(server.url())
                .token(move || Some(token.to_string()))
                .token_placement(TokenPlacement::Subprotocol)
                .protocol("ws-kit.v1")
                .header("x-app", "demo")
        };

        let client = builder("good").connect().await.expect("connect");
        assert_eq!(
            within("upgrade", seen.recv()).await.unwrap(),
            ("ws-kit.v1, bearer.good".to_string(), "demo".to_string())
        );
        let who = within("reply", client.request(&WhoAmI)).await.unwrap();
        assert_eq!(who.reply, "good");

        let err = builder("not a token").connect().await.unwrap_err();
        assert!(matches!(err, ClientError::InvalidRequest(_)), "{err:?}");

        let err = builder("bad").connect().await.unwrap_err();
        assert!(
            matches!(err, ClientError::Rejected { status: 401, .. }),
            "{err:?}"
        );

        let invalid = Client::builder(server.url())
            .protocol("has space")
            .connect_lazy();
        assert!(matches!(invalid, Err(ClientError::InvalidRequest(_))));
        let invalid = Client::builder("http://example.invalid").connect_lazy();
        assert!(matches!(invalid, Err(ClientError::InvalidRequest(_))));
    });
}

// ---------------------------------------------------------------------------------------------
// Heartbeat, close
// ---------------------------------------------------------------------------------------------

/// With a heartbeat, `__heartbeat` frames go out; while acks come back the connection stays open
/// past the timeout; once the server goes silent the client drops the connection within the
/// timeout (plus one interval) and reconnects.
#[test]
fn heartbeat_detects_a_dead_connection() {
    bounded_multi_thread(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let timeout = Duration::from_millis(200);
        let interval = Duration::from_millis(40);
        let client = Client::builder(url)
            .heartbeat(interval, timeout)
            .reconnect(fast())
            .connect_lazy()
            .expect("client");
        let mut ws = accept_ws(&listener).await;
        within("open", client.wait_open()).await.expect("open");
        let opened = Instant::now();

        let mut last_ack = opened;
        for _ in 0..8 {
            let frame = read_json(&mut ws).await;
            assert_eq!(frame["type"], "__heartbeat");
            assert_eq!(keys(&frame["meta"]), ["timestamp"]);
            write_json(
                &mut ws,
                json!({"type": "__heartbeat_ack", "meta": {"ts": now_ms()}}),
            )
            .await;
            last_ack = Instant::now();
        }
        assert!(
            last_ack - opened > timeout,
            "acks kept it open past the timeout"
        );
        assert_eq!(client.state(), State::Open);

        // Silence: the server keeps the socket but neither reads nor writes.
        wait_state(&client, State::Reconnecting).await;
        let silent = last_ack.elapsed();
        assert!(
            silent + Duration::from_millis(10) >= timeout
                && silent <= timeout + interval + Duration::from_millis(300),
            "dropped after {silent:?} of silence"
        );
        let _again = accept_ws(&listener).await;
        within("reopen", client.wait_open()).await.expect("open");
        drop(ws);
    });
}

/// `close()` ends the connection and stops reconnecting; waiting requests fail, later sends are
/// refused. Dropping the last handle closes the client too.
#[test]
fn close_and_drop_stop_the_client() {
    bounded_multi_thread(async {
        let (tx, mut events) = events();
        let server = serve(router(), options(&tx)).await;
        let client = Client::connect(server.url()).await.expect("connect");
        let call = client.request(&Hang { id: "c".into() });
        events.expect("started:c").await;

        within("close", client.close()).await;
        assert_eq!(client.state(), State::Closed);
        let err = within("the failure", call).await.unwrap_err();
        assert!(matches!(err, RequestError::ConnectionClosed), "{err:?}");
        assert!(matches!(
            client.send(&Note { n: 1 }),
            Err(ClientError::Closed)
        ));
        let err = within("refusal", client.request(&Ping { text: "x".into() }))
            .await
            .unwrap_err();
        assert!(
            matches!(err, RequestError::Client(ClientError::Closed)),
            "{err:?}"
        );
        let service = server.service.clone();
        eventually("the server saw the close", || {
            let service = service.clone();
            async move { service.connection_count() == 0 }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(
            server.service.connection_count(),
            0,
            "no reconnect after close"
        );

        let first = Client::connect(server.url()).await.expect("connect");
        let second = first.clone();
        drop(first);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            server.service.connection_count(),
            1,
            "a clone keeps it open"
        );
        assert_eq!(second.state(), State::Open);
        drop(second);
        eventually("the last handle closed it", || {
            let service = service.clone();
            async move { service.connection_count() == 0 }
        })
        .await;
    });
}

// ---------------------------------------------------------------------------------------------
// The example
// ---------------------------------------------------------------------------------------------

/// `examples/client.rs` runs to completion against the `rpc` example's router: its copies of the
/// message structs match the server's.
#[test]
fn client_example_talks_to_the_rpc_example() {
    bounded_multi_thread(async {
        let server = serve(rpc_example::router(), ServeOptions::new()).await;
        let result = within("the example", client_example::run(&server.url())).await;
        if let Err(e) = result {
            panic!("the client example failed: {e}");
        }
    });
}
