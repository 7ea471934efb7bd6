//! Server behaviour over real sockets: docs/protocol.md section 7 and `ServeOptions`.
//!
//! Upgrade-time authentication, the client id, subprotocols, Origin and path filters, heartbeat,
//! lifecycle hooks, graceful shutdown, slow consumers, route merging and middleware.

mod support;

use serde_json::{Value, json};
use std::time::Duration;
use support::{Client, Event, RawClient, RawFrame, WAIT, bounded, refused, serve, stay_open_for};
use tokio::sync::mpsc;
use ws_kit::{
    CloseInfo, Connection, Ctx, Error, Incoming, Message, Next, OverflowPolicy, Rejection, Router,
    ServeOptions, UpgradeRequest, WsError, handler, query_param, routes,
};

// ---------------------------------------------------------------------------------------------
// Messages, data and handlers.

/// Per-connection data: who authenticated, and the steps middleware and handlers went through.
#[derive(Default)]
struct Session {
    user: String,
    trace: Vec<String>,
}

#[derive(Message)]
struct WhoAmI;

#[derive(Message)]
struct Identity {
    user: String,
    client_id: String,
}

#[derive(Message)]
struct Traced {
    #[validate(range(min = 1, max = 10))]
    n: u32,
}

#[derive(Message)]
struct Guarded;

#[derive(Message)]
struct Secret;

#[derive(Message)]
struct FeaturePing;

#[derive(Message)]
struct Trace {
    steps: Vec<String>,
}

#[derive(Message)]
struct Welcome {
    from: String,
}

#[derive(Message)]
struct Blob {
    seq: u32,
    data: String,
}

#[derive(Message)]
struct Dup;

#[handler]
async fn who_am_i(ctx: Ctx<WhoAmI, Session>) {
    let identity = Identity {
        user: ctx.data().user.clone(),
        client_id: ctx.client_id().to_string(),
    };
    ctx.send(&identity);
}

/// Records itself in the trace, then sends the whole trace back (and clears it).
fn finish_trace(conn: &Connection<Session>, step: &str) {
    let steps = conn.assign(|d| {
        d.trace.push(step.to_string());
        std::mem::take(&mut d.trace)
    });
    conn.send(&Trace { steps });
}

#[handler]
async fn traced(ctx: Ctx<Traced, Session>) {
    finish_trace(&ctx, "traced");
}

#[handler]
async fn guarded(ctx: Ctx<Guarded, Session>) {
    finish_trace(&ctx, "guarded");
}

#[handler]
async fn secret(ctx: Ctx<Secret, Session>) {
    finish_trace(&ctx, "secret");
}

#[handler]
async fn feature_ping(ctx: Ctx<FeaturePing, Session>) {
    finish_trace(&ctx, "feature_ping");
}

#[handler]
async fn dup_a(_ctx: Ctx<Dup>) {}

#[handler]
async fn dup_b(_ctx: Ctx<Dup>) {}

fn identity_router() -> Router<Session> {
    Router::new().routes(routes![who_am_i])
}

fn session(user: &str) -> Session {
    Session {
        user: user.into(),
        ..Session::default()
    }
}

/// The tokens the tests' `authenticate` hooks accept.
fn user_for_token(token: &str) -> Option<Session> {
    match token {
        "s3cret" => Some(session("ada")),
        "two words" => Some(session("bob")),
        _ => None,
    }
}

async fn who_am_i_roundtrip(client: &mut Client) -> Value {
    client.send(json!({"type": "WHO_AM_I"})).await;
    let frame = client.recv().await;
    assert_eq!(frame["type"], "IDENTITY", "unexpected frame {frame}");
    frame["payload"].clone()
}

fn header<'a>(client: &'a Client, name: &str) -> Option<&'a str> {
    client
        .headers
        .get(name)
        .map(|v| v.to_str().expect("ASCII header"))
}

/// Sends `(client id, close info)` from `on_close` into a channel.
fn close_reporter<D: Send + Sync + 'static>(
    router: Router<D>,
) -> (Router<D>, mpsc::UnboundedReceiver<(uuid::Uuid, CloseInfo)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let router = router.on_close(move |conn: Connection<D>, info: CloseInfo| {
        let tx = tx.clone();
        async move {
            let _ = tx.send((conn.client_id(), info));
        }
    });
    (router, rx)
}

async fn next_close(
    rx: &mut mpsc::UnboundedReceiver<(uuid::Uuid, CloseInfo)>,
) -> (uuid::Uuid, CloseInfo) {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("timed out waiting for on_close")
        .expect("close channel open")
}

// ---------------------------------------------------------------------------------------------
// Authentication at upgrade.

/// `authenticate` returning `None` refuses the upgrade with HTTP 401 `Unauthorized`; the token can
/// come from `?access_token=` (percent-decoded by `query_param`), and the data it returns is what
/// handlers see.
#[test]
fn authenticate_with_query_token() {
    bounded(async {
        let options = ServeOptions::with_authenticate(|req: &UpgradeRequest| {
            query_param(req, "access_token").and_then(|t| user_for_token(&t))
        });
        let server = serve(identity_router(), options).await;
        let url = server.url();

        assert_eq!(refused(&url, &[]).await, (401, "Unauthorized".to_string()));
        assert_eq!(
            refused(&format!("{url}/?access_token=wrong"), &[]).await,
            (401, "Unauthorized".to_string())
        );

        let mut ada = Client::connect(&format!("{url}/?access_token=s3cret")).await;
        assert_eq!(who_am_i_roundtrip(&mut ada).await["user"], "ada");

        let mut bob = Client::connect(&format!("{url}/?x=1&access_token=two%20words")).await;
        assert_eq!(who_am_i_roundtrip(&mut bob).await["user"], "bob");
    });
}

/// The hook sees the offered subprotocols: a `bearer.<token>` entry authenticates, while the
/// subprotocol selected is the app's own.
#[test]
fn authenticate_with_bearer_subprotocol() {
    bounded(async {
        let options = ServeOptions::with_authenticate(|req: &UpgradeRequest| {
            let offered = req.headers().get("sec-websocket-protocol")?.to_str().ok()?;
            let token = offered
                .split(',')
                .map(str::trim)
                .find_map(|p| p.strip_prefix("bearer."))?;
            user_for_token(token)
        })
        .subprotocols(["chat.v1"]);
        let server = serve(identity_router(), options).await;
        let url = server.url();

        let mut client = Client::connect_with(
            &url,
            &[("sec-websocket-protocol", "chat.v1, bearer.s3cret")],
        )
        .await
        .expect("upgrade with a bearer token");
        assert_eq!(header(&client, "sec-websocket-protocol"), Some("chat.v1"));
        assert_eq!(who_am_i_roundtrip(&mut client).await["user"], "ada");

        let refusal = refused(&url, &[("sec-websocket-protocol", "chat.v1, bearer.nope")]).await;
        assert_eq!(refusal, (401, "Unauthorized".to_string()));
    });
}

/// A `Rejection` sets the refusal's status and body.
#[test]
fn authenticate_custom_rejection() {
    bounded(async {
        let options = ServeOptions::with_authenticate(|req: &UpgradeRequest| {
            match query_param(req, "user") {
                Some(user) if user == "mallory" => Err(Rejection {
                    status: 429,
                    body: "Slow down".into(),
                }),
                Some(user) => Ok(session(&user)),
                None => Err(Rejection::forbidden()),
            }
        });
        let server = serve(identity_router(), options).await;
        let url = server.url();

        assert_eq!(
            refused(&format!("{url}/?user=mallory"), &[]).await,
            (429, "Slow down".to_string())
        );
        assert_eq!(refused(&url, &[]).await, (403, "Forbidden".to_string()));
        let mut eve = Client::connect(&format!("{url}/?user=eve")).await;
        assert_eq!(who_am_i_roundtrip(&mut eve).await["user"], "eve");
    });
}

// ---------------------------------------------------------------------------------------------
// Client id, subprotocols, Origin, path.

/// Every connection gets a fresh UUID v7 in `x-client-id`, equal to `ctx.client_id()`.
#[test]
fn client_id_header_is_uuid_v7_and_matches_ctx() {
    bounded(async {
        let server = serve(identity_router(), ServeOptions::new()).await;
        let mut ids = Vec::new();
        for _ in 0..2 {
            let mut client = server.client().await;
            let header = header(&client, "x-client-id")
                .expect("x-client-id header")
                .to_string();
            let id = uuid::Uuid::parse_str(&header).expect("x-client-id is a UUID");
            assert_eq!(
                id.get_version_num(),
                7,
                "x-client-id {header} is not a UUID v7"
            );
            let identity = who_am_i_roundtrip(&mut client).await;
            assert_eq!(identity["clientId"], header);
            ids.push(id);
        }
        assert_ne!(ids[0], ids[1], "two connections share a client id");
    });
}

/// With subprotocols configured, the server selects the first offered one it supports.
#[test]
fn subprotocol_selects_a_supported_offer() {
    bounded(async {
        let server = serve(identity_router(), ServeOptions::new().subprotocols(["v1"])).await;
        let client = Client::connect_with(
            &server.url(),
            &[("sec-websocket-protocol", "x.unknown, v1")],
        )
        .await
        .expect("upgrade");
        assert_eq!(header(&client, "sec-websocket-protocol"), Some("v1"));
    });
}

/// docs/protocol.md 7: "the server selects the first offered protocol that the app supports": the
/// client's order decides, not the order the app listed them in.
#[test]
fn subprotocol_first_offered_wins() {
    bounded(async {
        let server = serve(
            identity_router(),
            ServeOptions::new().subprotocols(["v2", "v1"]),
        )
        .await;
        let client = Client::connect_with(&server.url(), &[("sec-websocket-protocol", "v1, v2")])
            .await
            .expect("upgrade");
        assert_eq!(header(&client, "sec-websocket-protocol"), Some("v1"));
    });
}

/// With none configured, the first offered protocol is echoed (browsers fail otherwise); with
/// none offered, none is sent.
#[test]
fn subprotocol_echoes_first_offer_when_none_configured() {
    bounded(async {
        let server = serve(identity_router(), ServeOptions::new()).await;
        let client = Client::connect_with(
            &server.url(),
            &[("sec-websocket-protocol", "a.proto, b.proto")],
        )
        .await
        .expect("upgrade");
        assert_eq!(header(&client, "sec-websocket-protocol"), Some("a.proto"));

        let plain = server.client().await;
        assert_eq!(header(&plain, "sec-websocket-protocol"), None);
    });
}

/// With an allow-list, an upgrade from another Origin gets HTTP 403.
#[test]
fn origin_allow_list() {
    bounded(async {
        let options = ServeOptions::new().allowed_origins(["https://ok.example"]);
        let server = serve(identity_router(), options).await;
        let url = server.url();

        let (status, _) = refused(&url, &[("origin", "https://evil.example")]).await;
        assert_eq!(status, 403);
        let mut client = Client::connect_with(&url, &[("origin", "https://ok.example")])
            .await
            .expect("allowed origin");
        assert_eq!(who_am_i_roundtrip(&mut client).await["user"], "");
    });
}

/// With a path configured, upgrades on other paths get HTTP 404; the query string does not count.
#[test]
fn path_filter() {
    bounded(async {
        let server = serve(identity_router(), ServeOptions::new().path("/ws")).await;
        let url = server.url();

        assert_eq!(refused(&format!("{url}/"), &[]).await.0, 404);
        assert_eq!(refused(&format!("{url}/other"), &[]).await.0, 404);
        assert_eq!(refused(&format!("{url}/ws/deeper"), &[]).await.0, 404);
        let mut client = Client::connect(&format!("{url}/ws?access_token=x")).await;
        who_am_i_roundtrip(&mut client).await;
    });
}

// ---------------------------------------------------------------------------------------------
// Heartbeat.

/// A peer that never answers pings is closed with 4002, and `on_close` sees 4002.
#[test]
fn heartbeat_closes_silent_peer_with_4002() {
    bounded(async {
        let (router, mut closes) = close_reporter(identity_router());
        let options =
            ServeOptions::new().heartbeat(Duration::from_millis(50), Duration::from_millis(200));
        let server = serve(router, options).await;

        let mut raw = RawClient::connect(server.addr, None).await;
        let started = std::time::Instant::now();
        let mut pings = 0;
        let close = loop {
            match raw
                .read_frame()
                .await
                .expect("connection ended without a close frame")
            {
                RawFrame::Ping => pings += 1,
                RawFrame::Close(code, reason) => break (code, reason),
                other => panic!("unexpected frame {other:?}"),
            }
            assert!(started.elapsed() < WAIT, "no close after {pings} pings");
        };
        assert_eq!(close.0, Some(4002), "close {close:?}");
        assert!(pings >= 1, "the server sent no ping before closing");
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "closed before the heartbeat timeout"
        );
        let (_, info) = next_close(&mut closes).await;
        assert_eq!(info.code, 4002);
    });
}

/// Shutdown racing connections that are opening: every connection that opened is closed with
/// 1001 and its close hook runs; none stays open (ARCHITECTURE.md, "Shutdown reaches every
/// connection, once"). 20 rounds of 40 connections, the shutdown fired while they open.
#[test]
fn shutdown_racing_opens_closes_every_connection() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    bounded(async {
        let (mut raced, mut refused_total) = (0, 0);
        for round in 0..20u64 {
            let opened = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let counted = opened.clone();
            let router = identity_router().on_open(move |_: Connection<Session>| {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async { Ok(()) }
            });
            let (router, mut closes) = close_reporter(router);
            let mut server = serve(router, ServeOptions::new()).await;
            let url = server.url();
            let mut clients = Vec::new();
            for _ in 0..40 {
                let url = url.clone();
                clients.push(tokio::spawn(async move {
                    // Refused (the listener is gone) or cut before the upgrade: never opened.
                    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await else {
                        return None;
                    };
                    loop {
                        match tokio::time::timeout(WAIT, ws.next()).await {
                            Ok(Some(Ok(WsMessage::Close(frame)))) => {
                                return Some(frame.map(|f| u16::from(f.code)));
                            }
                            Ok(Some(Ok(_))) => {}
                            Ok(Some(Err(_)) | None) => return Some(None),
                            Err(_) => panic!("round {round}: a connection stayed open"),
                        }
                    }
                }));
            }
            // Let some connections open first, and fire while others are on their way.
            tokio::time::sleep(Duration::from_micros(200 * (round % 10))).await;
            server.service.shutdown();
            let mut upgraded = 0;
            for client in clients {
                match client.await.expect("client task") {
                    Some(code) => {
                        upgraded += 1;
                        assert_eq!(code, Some(1001), "round {round}: closed with {code:?}");
                    }
                    None => refused_total += 1,
                }
            }
            let finished = tokio::time::timeout(WAIT, &mut server.task).await;
            assert!(
                matches!(finished, Ok(Ok(Ok(())))),
                "round {round}: Server::run ended with {finished:?}"
            );
            assert_eq!(server.service.connection_count(), 0, "round {round}");
            // Every connection whose open hooks ran had its close hooks run too.
            let mut closed = 0;
            while let Ok((_, info)) = closes.try_recv() {
                assert_eq!(info.code, 1001, "round {round}: {info:?}");
                closed += 1;
            }
            let opened = opened.load(std::sync::atomic::Ordering::SeqCst);
            assert_eq!(
                closed, opened,
                "round {round}: opened {opened}, closed {closed}"
            );
            assert!(
                opened <= upgraded,
                "round {round}: {opened} opened, {upgraded} upgraded"
            );
            raced += usize::from(opened > 0 && opened < 40);
        }
        // The shutdown did meet connections on their way in: some rounds had both.
        eprintln!("{raced} rounds with opened and refused connections; {refused_total} refused");
        assert!(
            raced > 0 || refused_total > 0,
            "the shutdown never raced an open"
        );
    });
}

/// The heartbeat sweep visits every connection: of 64, the 48 silent ones are each closed with
/// 4002, none before the timeout, and the 16 that answer pings stay open.
#[test]
fn heartbeat_sweep_reaches_every_connection() {
    bounded(async {
        let options =
            ServeOptions::new().heartbeat(Duration::from_millis(50), Duration::from_millis(200));
        let server = serve(identity_router(), options).await;
        let mut silent = Vec::new();
        for _ in 0..48 {
            let mut raw = RawClient::connect(server.addr, None).await;
            silent.push(tokio::spawn(async move {
                let opened = std::time::Instant::now();
                loop {
                    match raw.read_frame().await {
                        Some(RawFrame::Ping) => {}
                        Some(RawFrame::Close(code, _)) => return (code, opened.elapsed()),
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }));
        }
        let mut answering = Vec::new();
        for _ in 0..16 {
            let mut client = server.client().await;
            answering.push(tokio::spawn(async move {
                // Well past the silent ones' timeout, answering pings all along.
                stay_open_for(&mut client, Duration::from_millis(700)).await;
                who_am_i_roundtrip(&mut client).await;
            }));
        }
        for task in silent {
            let (code, after) = tokio::time::timeout(WAIT, task)
                .await
                .expect("a silent connection was never closed")
                .expect("reader task");
            assert_eq!(code, Some(4002));
            // Never before the timeout (200 ms; a little less, as this clock starts when the
            // 101 arrives, a moment before the server opens the connection).
            assert!(
                after >= Duration::from_millis(190),
                "closed {after:?} after its open"
            );
        }
        for task in answering {
            task.await.expect("an answering connection was closed");
        }
    });
}

/// A peer that answers pings stays open well past the heartbeat timeout.
#[test]
fn heartbeat_keeps_answering_peer_open() {
    bounded(async {
        let options =
            ServeOptions::new().heartbeat(Duration::from_millis(50), Duration::from_millis(200));
        let server = serve(identity_router(), options).await;
        let mut client = server.client().await;
        stay_open_for(&mut client, Duration::from_millis(700)).await;
        who_am_i_roundtrip(&mut client).await;
    });
}

// ---------------------------------------------------------------------------------------------
// Lifecycle hooks.

/// `on_open` returning an error closes with 1011.
#[test]
fn on_open_error_closes_with_1011() {
    bounded(async {
        let router = identity_router()
            .on_open(|_conn: Connection<Session>| async { Err(WsError::internal("no")) });
        let server = serve(router, ServeOptions::new()).await;
        let mut client = server.client().await;
        match client.next_event().await {
            Event::Closed(code, _) => assert_eq!(code, Some(1011)),
            Event::Json(v) => panic!("expected a close, got {v}"),
        }
    });
}

/// `on_open` panicking also closes with 1011.
#[test]
fn on_open_panic_closes_with_1011() {
    bounded(async {
        let router = identity_router()
            .on_open(|_conn: Connection<Session>| async { panic!("on_open blew up") });
        let server = serve(router, ServeOptions::new()).await;
        let mut client = server.client().await;
        assert_eq!(client.expect_close().await, Some(1011));
    });
}

/// `on_open` returning `WsError::close(code, reason)` closes with that code and reason.
#[test]
fn on_open_close_error_sets_code_and_reason() {
    bounded(async {
        let router = identity_router()
            .on_open(|_conn: Connection<Session>| async { Err(WsError::close(4000, "x")) });
        let server = serve(router, ServeOptions::new()).await;
        let mut client = server.client().await;
        assert_eq!(
            client.next_event().await,
            Event::Closed(Some(4000), "x".into())
        );
    });
}

/// `on_close` gets the client's close code and reason, for the right connection.
#[test]
fn on_close_gets_client_code_and_reason() {
    bounded(async {
        let (router, mut closes) = close_reporter(identity_router());
        let server = serve(router, ServeOptions::new()).await;
        let mut client = server.client().await;
        let id = who_am_i_roundtrip(&mut client).await["clientId"].clone();
        client.close(4100).await;
        let (closed_id, info) = next_close(&mut closes).await;
        assert_eq!(json!(closed_id.to_string()), id);
        assert_eq!(
            info,
            CloseInfo {
                code: 4100,
                reason: "bye".into()
            }
        );
    });
}

/// `service.shutdown()` closes every connection with 1001 "Server shutting down", runs the close
/// hooks, and `Server::run` returns; the listener is gone afterwards.
#[test]
fn graceful_shutdown() {
    bounded(async {
        let router = identity_router().on_open(|conn: Connection<Session>| async move {
            conn.send(&Welcome {
                from: "main".into(),
            });
            Ok(())
        });
        let (router, mut closes) = close_reporter(router);
        let mut server = serve(router, ServeOptions::new()).await;
        let mut clients = Vec::new();
        for _ in 0..3 {
            let mut client = server.client().await;
            assert_eq!(client.recv().await["type"], "WELCOME"); // the connection is fully open
            clients.push(client);
        }
        assert_eq!(server.service.connection_count(), 3);

        server.service.shutdown();
        for client in &mut clients {
            assert_eq!(
                client.next_event().await,
                Event::Closed(Some(1001), "Server shutting down".into())
            );
        }
        let finished = tokio::time::timeout(WAIT, &mut server.task)
            .await
            .expect("Server::run did not return");
        assert!(
            matches!(finished, Ok(Ok(()))),
            "Server::run ended with {finished:?}"
        );

        // The close hooks ran before `run` returned.
        let mut infos = Vec::new();
        while let Ok((_, info)) = closes.try_recv() {
            infos.push(info);
        }
        let expected = CloseInfo {
            code: 1001,
            reason: "Server shutting down".into(),
        };
        assert_eq!(infos, vec![expected; 3]);
        assert_eq!(server.service.connection_count(), 0);
        assert!(
            tokio_tungstenite::connect_async(server.url())
                .await
                .is_err(),
            "the server still accepts after shutdown"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Slow consumers.

const BLOB_BYTES: usize = 8000;
const BATCH: u32 = 4;
/// 128 batches of ~32 KiB: 4 MiB in all, far more than a 64 KiB queue plus the kernel buffers of
/// a socket with a 4 KiB receive buffer.
const FLOOD_BATCHES: u32 = 128;

/// A server whose connections all subscribe to `flood` on open, with a 64 KiB outbound queue.
async fn flood_server(
    policy: OverflowPolicy,
) -> (
    support::TestServer<()>,
    mpsc::UnboundedReceiver<()>,
    mpsc::UnboundedReceiver<(uuid::Uuid, CloseInfo)>,
) {
    let (opened_tx, opened) = mpsc::unbounded_channel();
    let router = Router::<()>::new().on_open(move |conn: Connection<()>| {
        let opened = opened_tx.clone();
        async move {
            conn.subscribe("flood").await?;
            let _ = opened.send(());
            Ok(())
        }
    });
    let (router, closes) = close_reporter(router);
    let server = serve(
        router,
        ServeOptions::new().max_queued_bytes(64 * 1024, policy),
    )
    .await;
    (server, opened, closes)
}

async fn wait_opened(opened: &mut mpsc::UnboundedReceiver<()>, n: usize) {
    for _ in 0..n {
        tokio::time::timeout(WAIT, opened.recv())
            .await
            .expect("on_open did not run")
            .expect("channel");
    }
}

async fn expect_blob(client: &mut Client, seq: u32) {
    let frame = client.recv().await;
    assert_eq!(frame["type"], "BLOB", "unexpected frame");
    assert_eq!(
        frame["payload"]["seq"], seq,
        "the fast consumer missed or reordered a frame"
    );
}

/// A consumer that never reads is closed with 1013 once its queue overflows; a fast one on the
/// same topic keeps receiving every frame, in order.
#[test]
fn slow_consumer_is_closed_with_1013() {
    bounded(async {
        let (server, mut opened, mut closes) = flood_server(OverflowPolicy::Close).await;
        let mut slow = RawClient::connect(server.addr, Some(4096)).await;
        let mut fast = server.client().await;
        wait_opened(&mut opened, 2).await;
        let publisher = server.service.publisher();
        let data = "x".repeat(BLOB_BYTES);

        let started = std::time::Instant::now();
        let mut seq = 0;
        let mut overflowed = false;
        'flood: for _ in 0..FLOOD_BATCHES {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "flood took too long"
            );
            for _ in 0..BATCH {
                let result = publisher
                    .publish(
                        "flood",
                        &Blob {
                            seq,
                            data: data.clone(),
                        },
                    )
                    .await;
                assert!(result.ok);
                seq += 1;
                if result.matched == Some(1) {
                    overflowed = true;
                }
            }
            for s in seq - BATCH..seq {
                expect_blob(&mut fast, s).await;
            }
            if overflowed {
                break 'flood;
            }
        }
        assert!(
            overflowed,
            "the slow consumer was still being delivered to after {seq} frames"
        );

        // The fast consumer is unaffected.
        for _ in 0..10 {
            let result = publisher
                .publish(
                    "flood",
                    &Blob {
                        seq,
                        data: "after".into(),
                    },
                )
                .await;
            assert_eq!(result.matched, Some(1));
            expect_blob(&mut fast, seq).await;
            seq += 1;
        }

        let (_, info) = next_close(&mut closes).await;
        assert_eq!(info.code, 1013, "on_close saw {info:?}");
        // The slow client, once it reads, finds the 1013 close frame after what was already sent.
        let mut frames = 0;
        let close = loop {
            match slow
                .read_frame()
                .await
                .expect("no close frame before end of stream")
            {
                RawFrame::Close(code, _) => break code,
                RawFrame::Text(_) => frames += 1,
                other => panic!("unexpected frame {other:?}"),
            }
            assert!(frames <= seq, "more frames than were published");
        };
        assert_eq!(close, Some(1013));
    });
}

/// With `DropOldest`, the same flood drops the slow consumer's oldest frames instead: it stays
/// open, what it gets is in order, and it gets the frame published after the flood.
#[test]
fn slow_consumer_drop_oldest_stays_open() {
    bounded(async {
        let (server, mut opened, mut closes) = flood_server(OverflowPolicy::DropOldest).await;
        let mut slow = RawClient::connect(server.addr, Some(4096)).await;
        let mut fast = server.client().await;
        wait_opened(&mut opened, 2).await;
        let publisher = server.service.publisher();
        let data = "x".repeat(BLOB_BYTES);

        let started = std::time::Instant::now();
        let mut seq = 0;
        for _ in 0..FLOOD_BATCHES {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "flood took too long"
            );
            for _ in 0..BATCH {
                let result = publisher
                    .publish(
                        "flood",
                        &Blob {
                            seq,
                            data: data.clone(),
                        },
                    )
                    .await;
                assert_eq!(
                    result.matched,
                    Some(2),
                    "a subscriber was dropped at frame {seq}"
                );
                seq += 1;
            }
            for s in seq - BATCH..seq {
                expect_blob(&mut fast, s).await;
            }
        }
        let last = seq;
        let result = publisher
            .publish(
                "flood",
                &Blob {
                    seq: last,
                    data: "end".into(),
                },
            )
            .await;
        assert_eq!(result.matched, Some(2));
        expect_blob(&mut fast, last).await;

        let mut received = Vec::new();
        loop {
            match slow
                .read_frame()
                .await
                .expect("the slow consumer's connection ended")
            {
                RawFrame::Text(text) => {
                    let v: Value = serde_json::from_str(&text).expect("JSON");
                    let s = v["payload"]["seq"].as_u64().expect("seq") as u32;
                    received.push(s);
                    if s == last {
                        break;
                    }
                }
                RawFrame::Ping => {}
                other => panic!("unexpected frame {other:?}"),
            }
            assert!(
                received.len() <= last as usize + 1,
                "more frames than were published"
            );
        }
        assert!(
            received.windows(2).all(|w| w[0] < w[1]),
            "frames out of order or repeated"
        );
        assert!(
            received.len() < last as usize,
            "nothing was dropped ({} of {} frames arrived): the flood did not overflow the queue",
            received.len(),
            last + 1
        );
        assert!(closes.try_recv().is_err(), "the slow consumer was closed");
    });
}

// ---------------------------------------------------------------------------------------------
// Route merging and middleware.

/// Two routes for one type tag, merged from a feature router, fail `into_service`.
#[test]
fn merged_duplicate_type_is_an_error() {
    bounded(async {
        let router = Router::new().on(dup_a).merge(Router::new().on(dup_b));
        match router.into_service(ServeOptions::new()) {
            Err(Error::DuplicateType(tag)) => assert_eq!(tag, "DUP"),
            Err(e) => panic!("expected DuplicateType, got {e}"),
            Ok(_) => panic!("two handlers for DUP were accepted"),
        }
        let router = Router::new().on(dup_a).merge(Router::new().on(dup_b));
        assert!(matches!(
            ws_kit::Server::bind(router, ServeOptions::new().port(0)).await,
            Err(Error::DuplicateType("DUP"))
        ));
    });
}

fn step(name: &'static str) -> impl ws_kit::Middleware<Session> {
    move |req: Incoming<Session>, next: Next<Session>| async move {
        req.assign(|d| d.trace.push(name.to_string()));
        next.run().await
    }
}

async fn guard(req: Incoming<Session>, next: Next<Session>) -> Result<(), WsError> {
    if req.message_type() == "GUARDED" {
        return Err(WsError::permission_denied("blocked by middleware"));
    }
    next.run().await
}

/// Global middleware `a`, `guard`, `b`; `SECRET` has its own middleware; a feature router brings
/// `FEATURE_PING`, middleware `f` and an `on_open` hook.
fn middleware_router() -> Router<Session> {
    let feature = Router::new()
        .on(feature_ping)
        .middleware(step("f"))
        .on_open(|conn: Connection<Session>| async move {
            conn.send(&Welcome {
                from: "feature".into(),
            });
            Ok(())
        });
    Router::new()
        .on(traced)
        .on(guarded)
        .on(ws_kit::Handler::middleware(secret, step("per-message")))
        .middleware(step("a"))
        .middleware(guard)
        .middleware(step("b"))
        .on_open(|conn: Connection<Session>| async move {
            conn.send(&Welcome {
                from: "main".into(),
            });
            Ok(())
        })
        .merge(feature)
}

async fn middleware_client() -> (support::TestServer<Session>, Client) {
    let server = serve(middleware_router(), ServeOptions::new()).await;
    let mut client = server.client().await;
    // The feature router's on_open runs after the main router's.
    assert_eq!(client.recv().await["payload"]["from"], "main");
    assert_eq!(client.recv().await["payload"]["from"], "feature");
    (server, client)
}

async fn steps(client: &mut Client, message: Value) -> Value {
    client.send(message).await;
    let frame = client.recv().await;
    assert_eq!(frame["type"], "TRACE", "unexpected frame {frame}");
    frame["payload"]["steps"].clone()
}

/// Global middleware runs in the order added (the merged router's after), only after validation.
#[test]
fn global_middleware_runs_in_order_after_validation() {
    bounded(async {
        let (_server, mut client) = middleware_client().await;
        client
            .send(json!({"type": "TRACED", "payload": {"n": 0}, "meta": {"correlationId": "v1"}}))
            .await;
        let error = client.recv().await;
        assert_eq!(error["type"], "ERROR");
        assert_eq!(error["meta"]["correlationId"], "v1");
        assert_eq!(error["payload"]["code"], "INVALID_ARGUMENT");
        assert_eq!(
            error["payload"]["details"]["issues"][0]["path"],
            "payload.n"
        );
        // Had middleware seen the invalid frame, its steps would show up here.
        let trace = steps(&mut client, json!({"type": "TRACED", "payload": {"n": 1}})).await;
        assert_eq!(trace, json!(["a", "b", "f", "traced"]));
    });
}

/// Middleware can short-circuit with an error: the client gets the error frame (correlation id
/// echoed), later middleware and the handler do not run.
#[test]
fn middleware_short_circuits_with_error_frame() {
    bounded(async {
        let (_server, mut client) = middleware_client().await;
        client
            .send(json!({"type": "GUARDED", "meta": {"correlationId": "g1"}}))
            .await;
        assert_eq!(
            client.recv().await,
            json!({
                "type": "ERROR",
                "meta": {"correlationId": "g1"},
                "payload": {"code": "PERMISSION_DENIED", "message": "blocked by middleware"}
            })
        );
        // Only `a` ran for GUARDED; its step is still in the trace, and no `b`, `f` or `guarded`.
        let trace = steps(&mut client, json!({"type": "TRACED", "payload": {"n": 2}})).await;
        assert_eq!(trace, json!(["a", "a", "b", "f", "traced"]));
    });
}

/// A handler's own `.middleware` runs after the global chain, for that message only.
#[test]
fn per_message_middleware() {
    bounded(async {
        let (_server, mut client) = middleware_client().await;
        let trace = steps(&mut client, json!({"type": "SECRET"})).await;
        assert_eq!(trace, json!(["a", "b", "f", "per-message", "secret"]));
        let trace = steps(&mut client, json!({"type": "TRACED", "payload": {"n": 3}})).await;
        assert_eq!(trace, json!(["a", "b", "f", "traced"]));
    });
}

/// A merged feature router's routes are served, behind the global middleware.
#[test]
fn merged_feature_router_routes() {
    bounded(async {
        let (_server, mut client) = middleware_client().await;
        let trace = steps(&mut client, json!({"type": "FEATURE_PING"})).await;
        assert_eq!(trace, json!(["a", "b", "f", "feature_ping"]));
    });
}
