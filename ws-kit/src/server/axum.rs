//! Hosting on axum (feature `axum`): a [`Service`] mounted at an axum route. axum (hyper) reads
//! the upgrade request and writes our `101`; the connection then leaves hyper and runs on ws-kit's
//! own read path (`LazyRead`, the read loop), exactly as on ws-kit's own port.
//!
//! The checks are the same as there, in the same order: RFC 6455 (400, 426), shutting down (503),
//! the instance's and the address's socket counts (503), then path, Origin and `authenticate`
//! (404, 403, 401 or the hook's answer). What the app's layers put in the request's extensions (a
//! user from a cookie session, `ConnectInfo`) reaches `authenticate` with the request.

use super::handshake::{self, Rejection};
use super::service::Service;
use super::upgrade::{self, Refusal};
use crate::lazy_read::{LazyRead, ReadState};
use crate::metrics;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::Response;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::http::{self, HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::Role;

impl<D: Send + Sync + 'static> Service<D> {
    /// The service as an axum route: `GET` upgrades to a ws-kit connection. Mount it at any path
    /// of an app's router; the app's layers (authentication, CORS, tracing) run before it.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use axum::routing::get;
    /// use ws_kit::{Router, ServeOptions};
    ///
    /// /// What the app's session layer puts in the request's extensions.
    /// #[derive(Clone)]
    /// struct SessionUser(String);
    ///
    /// // The hook sees what the app's layers produced; `None` refuses with 401.
    /// let options = ServeOptions::with_authenticate(|req| {
    ///     let SessionUser(name) = req.extensions().get::<SessionUser>()?;
    ///     Some(name.clone())
    /// });
    /// let chat = Router::<String>::new().into_service(options)?;
    /// let app = axum::Router::new()
    ///     .route("/health", get(|| async { "ok" }))
    ///     .route("/ws", chat.axum_route());
    /// # let app = app.layer(axum::Extension(SessionUser("ada".into())));
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    /// axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
    ///     .with_graceful_shutdown(async move {
    ///         let _ = tokio::signal::ctrl_c().await;
    ///         // The WebSockets close (1001, their hooks run), then axum drains and returns.
    ///         chat.graceful_shutdown().await;
    ///     })
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn axum_route<S>(&self) -> axum::routing::MethodRouter<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let service = self.clone();
        axum::routing::get(move |request: axum::extract::Request| {
            let service = service.clone();
            async move { service.upgrade_request(request).await }
        })
    }

    /// Answers an upgrade request that reached an axum (or plain hyper) handler: `101` and the
    /// connection, served from a task of its own once hyper hands it over, or the refusal. For
    /// handlers of the app's own, with extractors: what they insert into the request's
    /// extensions reaches `authenticate`.
    ///
    /// The peer's address comes from axum's `ConnectInfo<SocketAddr>` (serve with
    /// `into_make_service_with_connect_info`) or a `SocketAddr` extension; without one, the
    /// connection counts against `max_connections` only, not `max_connections_per_ip`.
    pub async fn upgrade_request<B>(&self, request: http::Request<B>) -> Response {
        let (mut parts, _body) = request.into_parts();
        let checked = if parts.method != http::Method::GET {
            Err(Refusal::bad("A WebSocket upgrade is a GET request"))
        } else if parts.version != http::Version::HTTP_11 {
            Err(Refusal::bad("A WebSocket upgrade needs HTTP/1.1"))
        } else {
            upgrade::check_headers(&parts.headers)
        };
        match checked {
            Ok(None) => {}
            Ok(Some(not_upgrade)) | Err(not_upgrade) => {
                metrics::upgrade_rejected(metrics::check_reason(not_upgrade.status));
                return refusal(not_upgrade);
            }
        }
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            // A request hyper cannot hand over (a test's `oneshot`, another server).
            metrics::upgrade_rejected(metrics::reason::MALFORMED);
            return refusal(Refusal::rejected(Rejection {
                status: 500,
                body: "This connection cannot be upgraded".into(),
            }));
        };
        // Counted before the check: a graceful shutdown that starts after it waits for this
        // upgrade and its connection; one that started before it is seen here.
        let hosted = self.hosted();
        if self.shutting_down() {
            metrics::upgrade_rejected(metrics::reason::FULL);
            return refusal(Refusal::full("Server shutting down"));
        }
        let remote_addr = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0)
            .or_else(|| parts.extensions.get::<SocketAddr>().copied());
        let permit = match self.admission().admit_from(remote_addr.map(|a| a.ip())) {
            Ok(permit) => permit,
            Err(full) => return refusal(Refusal::full(full.reason())),
        };
        if let Some(addr) = remote_addr {
            parts.extensions.insert(addr);
        }
        let request = http::Request::from_parts(parts, ());
        // The answer is made before the request goes to `authenticate` (which takes it).
        let client_id = uuid::Uuid::now_v7();
        let switching = switching_protocols(self, &request, client_id);
        let admitted = tokio::time::timeout(self.handshake_timeout(), self.admit(request)).await;
        let data = match admitted {
            Ok(Ok(data)) => data,
            Ok(Err(rejection)) => return refusal(Refusal::rejected(rejection)),
            Err(_) => {
                metrics::upgrade_rejected(metrics::reason::TIMEOUT);
                return refusal(Refusal::full("Handshake timed out"));
            }
        };
        metrics::upgraded();
        // The connection's future alone, the permit and the hosted count inside it: this task is
        // what every idle connection on axum holds.
        let guard = (permit, hosted);
        tokio::spawn(
            self.clone()
                .run_upgraded(on_upgrade, client_id, remote_addr, data, guard),
        );
        switching
    }

    /// The connection after the `101`: hyper's upgraded stream under `LazyRead`, as a WebSocket,
    /// run to its end, holding `guard` until then. As `serve_owned`: an `async` block (an
    /// `async fn` keeps its arguments twice), the wait for hyper's upgrade boxed.
    fn run_upgraded<G: Send + 'static>(
        self,
        on_upgrade: OnUpgrade,
        client_id: uuid::Uuid,
        remote_addr: Option<SocketAddr>,
        data: D,
        guard: G,
    ) -> impl Future<Output = ()> + Send + 'static {
        let opening = Box::pin(async move {
            let upgraded = match tokio::time::timeout(self.handshake_timeout(), on_upgrade).await {
                Ok(Ok(upgraded)) => upgraded,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "the upgrade failed");
                    return None;
                }
                Err(_) => {
                    tracing::debug!("the upgrade timed out");
                    return None;
                }
            };
            let state = ReadState::new(Some(self.inbound_budget()));
            let stream = LazyRead::new(TokioIo::new(upgraded), state, Vec::new());
            let socket =
                WebSocketStream::from_raw_socket(stream, Role::Server, Some(self.socket_config()))
                    .await;
            Some(self.open_transport(socket, client_id, remote_addr, data).1)
        });
        async move {
            let Some(run) = opening.await else {
                return drop(guard);
            };
            run.await;
            drop(guard);
        }
    }
}

/// The `101 Switching Protocols` answer, with the subprotocol and `x-client-id` as on ws-kit's
/// own port.
fn switching_protocols<D>(
    service: &Service<D>,
    request: &http::Request<()>,
    client_id: uuid::Uuid,
) -> Response {
    let key = request
        .headers()
        .get("sec-websocket-key")
        .map(|key| derive_accept_key(key.as_bytes()))
        .and_then(|accept| HeaderValue::from_str(&accept).ok());
    let mut response = http::Response::new(());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Some(accept) = key {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    let response = handshake::respond(service.options(), request, response, client_id);
    response.map(|()| Body::empty())
}

/// A refusal as an axum response.
fn refusal(refusal: Refusal) -> Response {
    let (status, header, body) = refusal.into_parts();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    // As on ws-kit's own port, a refused upgrade ends its connection.
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some((name, value)) = header {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
