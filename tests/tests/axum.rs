//! Hosting on axum (`Service::axum_route`) over real sockets: one port for the app's routes and
//! the WebSocket, the app's layers in front of the upgrade, what they produce reaching
//! `authenticate`, the same refusals as on ws-kit's own port, limits, and graceful shutdown.
#![cfg(feature = "axum")]

mod support;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::{Client, WAIT, bounded, bounded_multi_thread, http_exchange, refused, request};
use ws_kit::{Connection, Ctx, Message, Router, ServeOptions, Service, WsError, handler, routes};

/// The user a cookie session layer found, as the app's layers leave it in the request's
/// extensions.
#[derive(Clone, Debug)]
struct SessionUser(String);

/// Connection data: who the upgrade said this is.
#[derive(Default)]
struct Data {
    user: Option<String>,
}

#[derive(Message)]
#[rpc(response = WhoamiResult)]
struct Whoami {}

#[derive(Message)]
struct WhoamiResult {
    user: Option<String>,
    remote: Option<String>,
}

#[handler]
async fn whoami(ctx: Ctx<Whoami, Data>) -> Result<WhoamiResult, WsError> {
    Ok(WhoamiResult {
        user: ctx.data().user.clone(),
        remote: ctx.remote_addr().map(|a| a.to_string()),
    })
}

/// A session layer in miniature: `cookie: session=<name>` puts `SessionUser(name)` into the
/// request's extensions; the app's own layers run before the upgrade.
async fn session(mut req: Request, next: Next) -> Response {
    let user = req
        .headers()
        .get("cookie")
        .and_then(|c| c.to_str().ok())
        .and_then(|c| {
            c.split(';')
                .find_map(|kv| kv.trim().strip_prefix("session="))
        })
        .map(|name| SessionUser(name.to_string()));
    if let Some(user) = user {
        req.extensions_mut().insert(user);
    }
    next.run(req).await
}

/// An axum app serving in a task of its own.
struct App {
    service: Service<Data>,
    addr: SocketAddr,
    /// Open hooks run.
    opened: Arc<AtomicUsize>,
    /// Close hooks run.
    closed: Arc<AtomicUsize>,
    /// Ends after a graceful shutdown.
    serving: tokio::task::JoinHandle<()>,
    /// Starts the graceful shutdown (axum's signal).
    stop: tokio::sync::oneshot::Sender<()>,
}

/// An axum app: `/health`, and the ws-kit service at `/ws` behind the session layer, whose
/// `authenticate` takes the session's user (401 without one).
async fn app(options: ServeOptions<Data>) -> App {
    let (opened, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (on_open, on_close) = (opened.clone(), closed.clone());
    let options = options.authenticate(|req| {
        let user = req.extensions().get::<SessionUser>()?;
        Some(Data {
            user: Some(user.0.clone()),
        })
    });
    let service = Router::new()
        .routes(routes![whoami])
        .on_open(move |_: Connection<Data>| {
            let on_open = on_open.clone();
            async move {
                on_open.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .on_close(move |_: Connection<Data>, _| {
            let on_close = on_close.clone();
            async move {
                on_close.fetch_add(1, Ordering::SeqCst);
            }
        })
        .into_service(options)
        .expect("service");
    let app = axum::Router::new()
        .route("/health", axum::routing::get(|| async { "ok" }))
        .route("/ws", service.axum_route())
        .layer(axum::middleware::from_fn(session));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = service.clone();
    let (stop, signal) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            // A test that drops its `stop` never shuts down (the runtime ends with the test).
            if signal.await.is_err() {
                std::future::pending::<()>().await;
            }
            shutdown.graceful_shutdown().await;
        })
        .await
        .expect("axum serves");
    });
    App {
        service,
        addr,
        opened,
        closed,
        serving,
        stop,
    }
}

#[test]
fn the_app_and_the_websocket_share_one_port() {
    bounded(async {
        let App { service, addr, .. } = app(ServeOptions::new()).await;
        let (status, response) = http_exchange(
            addr,
            "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status, 200, "{response}");
        assert!(response.ends_with("ok"), "{response}");

        let url = format!("ws://{addr}/ws");
        let mut client = Client::connect_with(&url, &[("cookie", "theme=dark; session=alice")])
            .await
            .expect("upgrade");
        assert!(client.headers.contains_key("x-client-id"));
        let reply = request(&mut client, json!({"type": "WHOAMI"}), "w1").await;
        assert_eq!(reply["type"], "WHOAMI_RESULT", "{reply}");
        assert_eq!(reply["payload"]["user"], "alice");
        // The peer's address, from axum's ConnectInfo.
        let remote: SocketAddr = reply["payload"]["remote"]
            .as_str()
            .expect("a remote address")
            .parse()
            .expect("an address");
        assert_eq!(remote.ip(), addr.ip());
        assert_eq!(service.connection_count(), 1);
    });
}

#[test]
fn refusals_match_the_servers_own() {
    bounded(async {
        let App { addr, .. } = app(ServeOptions::new()).await;
        let url = format!("ws://{addr}/ws");
        // No session: the hook's 401.
        assert_eq!(refused(&url, &[]).await, (401, "Unauthorized".into()));
        // Origin allow-list, on axum too.
        let options = ServeOptions::new().allowed_origins(["https://app.example"]);
        let App { addr, .. } = app(options).await;
        let url = format!("ws://{addr}/ws");
        let (status, _) = refused(
            &url,
            &[
                ("cookie", "session=alice"),
                ("origin", "https://evil.example"),
            ],
        )
        .await;
        assert_eq!(status, 403);
        Client::connect_with(
            &url,
            &[
                ("cookie", "session=alice"),
                ("origin", "https://app.example"),
            ],
        )
        .await
        .expect("an allowed origin upgrades");
        // RFC 6455 checks: a plain GET is 400, another version 426 with the one we speak.
        let (status, response) = http_exchange(
            addr,
            "GET /ws HTTP/1.1\r\nHost: x\r\nCookie: session=a\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status, 400, "{response}");
        let (status, response) = http_exchange(
            addr,
            "GET /ws HTTP/1.1\r\nHost: x\r\nCookie: session=a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
        )
        .await;
        assert_eq!(status, 426, "{response}");
        assert!(
            response
                .to_ascii_lowercase()
                .contains("sec-websocket-version: 13"),
            "{response}"
        );
    });
}

#[test]
fn connections_per_address_are_limited_on_axum_too() {
    bounded(async {
        let App { service, addr, .. } = app(ServeOptions::new().max_connections_per_ip(2)).await;
        let url = format!("ws://{addr}/ws");
        let cookie = [("cookie", "session=alice")];
        let mut first = Client::connect_with(&url, &cookie).await.expect("first");
        let _second = Client::connect_with(&url, &cookie).await.expect("second");
        let (status, body) = refused(&url, &cookie).await;
        assert_eq!(
            (status, body.as_str()),
            (503, "Too many connections from this address")
        );
        // One closes: the next gets in.
        first.close(1000).await;
        support::eventually("the closed connection to be let go", || async {
            service.socket_count() == 1
        })
        .await;
        Client::connect_with(&url, &cookie)
            .await
            .expect("a place was freed");
    });
}

#[test]
fn the_payload_limit_holds_on_axums_connections() {
    bounded(async {
        let options = ServeOptions::new().max_payload_bytes(1024, ws_kit::PayloadLimit::Close);
        let App { addr, .. } = app(options).await;
        let url = format!("ws://{addr}/ws");
        let mut client = Client::connect_with(&url, &[("cookie", "session=bob")])
            .await
            .expect("upgrade");
        client.send_text(&"x".repeat(4096)).await;
        assert_eq!(client.expect_close().await, Some(1009));
    });
}

/// `graceful_shutdown` in axum's `with_graceful_shutdown`: the WebSocket connections close with
/// 1001 and their close hooks run, then axum stops; an upgrade meanwhile gets 503.
#[test]
fn graceful_shutdown_closes_the_connections_then_axum_returns() {
    bounded_multi_thread(async {
        let App {
            service,
            addr,
            closed,
            serving,
            stop,
            ..
        } = app(ServeOptions::new()).await;
        let url = format!("ws://{addr}/ws");
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(
                Client::connect_with(&url, &[("cookie", "session=carol")])
                    .await
                    .expect("upgrade"),
            );
        }
        support::eventually("three connections", || async {
            service.connection_count() == 3
        })
        .await;
        stop.send(()).expect("axum is serving");
        // The clients do not read yet, so their connections wait out the close handshake: an
        // upgrade meanwhile is turned away.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (status, body) = refused(&url, &[("cookie", "session=dave")]).await;
        assert_eq!((status, body.as_str()), (503, "Server shutting down"));
        for client in &mut clients {
            assert_eq!(client.expect_close().await, Some(1001));
        }
        tokio::time::timeout(WAIT, serving)
            .await
            .expect("axum returned")
            .expect("the serving task");
        assert_eq!(closed.load(Ordering::SeqCst), 3, "every close hook ran");
        assert_eq!(service.connection_count(), 0);
    });
}

/// Upgrades racing a graceful shutdown, many times: each one is either refused (`503`) or
/// accepted and then closed with 1001 (opened and closed with its hooks, or, when the shutdown
/// came between its checks and its open, closed before it opened); when axum returns, no
/// connection is left open and every connection that opened ran its close hook.
#[test]
fn upgrades_racing_a_graceful_shutdown_end_refused_or_closed() {
    bounded_multi_thread(async {
        let (mut total_accepted, mut total_refused) = (0, 0);
        for round in 0..20 {
            let App {
                service,
                addr,
                opened,
                closed,
                serving,
                stop,
            } = app(ServeOptions::new()).await;
            let url = format!("ws://{addr}/ws");
            let mut racers = tokio::task::JoinSet::new();
            for _ in 0..8 {
                let url = url.clone();
                racers.spawn(async move {
                    match Client::connect_with(&url, &[("cookie", "session=erin")]).await {
                        Ok(mut client) => {
                            assert_eq!(client.expect_close().await, Some(1001));
                            true
                        }
                        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                            assert_eq!(response.status(), 503);
                            false
                        }
                        // axum stopped accepting before this one connected.
                        Err(_) => false,
                    }
                });
            }
            // Let some upgrades through, then shut down while others are on their way.
            tokio::time::sleep(Duration::from_millis(round % 4)).await;
            stop.send(()).expect("axum is serving");
            let mut accepted = 0;
            while let Some(outcome) = racers.join_next().await {
                accepted += usize::from(outcome.expect("a racer"));
            }
            total_accepted += accepted;
            total_refused += 8 - accepted;
            tokio::time::timeout(WAIT, serving)
                .await
                .expect("axum returned")
                .expect("the serving task");
            assert_eq!(service.connection_count(), 0, "round {round}");
            let (opened, closed) = (opened.load(Ordering::SeqCst), closed.load(Ordering::SeqCst));
            assert_eq!(
                closed, opened,
                "round {round}: every open connection closed"
            );
            assert!(
                opened <= accepted,
                "round {round}: {opened} opened, {accepted} accepted"
            );
        }
        // Both sides of the race were run.
        assert!(
            total_accepted > 0 && total_refused > 0,
            "{total_accepted} accepted, {total_refused} refused"
        );
    });
}
