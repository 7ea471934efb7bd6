//! The WebSocket handshake: the upgrade request, the app's checks (path, Origin, authentication
//! at upgrade, synchronous or not, and its [`Rejection`]), subprotocol selection and the
//! `x-client-id` header.

use super::options::ServeOptions;
use crate::http_syntax::percent_decode;
use crate::metrics;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::handshake::server::Response;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// The HTTP upgrade request a connection opened with (headers, query, offered subprotocols), as
/// `authenticate` sees it.
pub type UpgradeRequest = tokio_tungstenite::tungstenite::http::Request<()>;

/// The app's answer to a plain HTTP `GET` on the WebSocket port ([`ServeOptions::pages`]).
pub type HttpResponse = tokio_tungstenite::tungstenite::http::Response<Vec<u8>>;

/// The page handler: a plain `GET`'s answer, or `None` for the usual 400.
pub(super) type PageHook = Arc<dyn Fn(&UpgradeRequest) -> Option<HttpResponse> + Send + Sync>;

/// An upgrade refused by `authenticate`: HTTP status and body (401 `Unauthorized` by default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The HTTP status.
    pub status: u16,
    /// The response body.
    pub body: String,
}

impl Rejection {
    /// 401 `Unauthorized`.
    pub fn unauthorized() -> Self {
        Rejection {
            status: 401,
            body: "Unauthorized".into(),
        }
    }

    /// 403 `Forbidden`.
    pub fn forbidden() -> Self {
        Rejection {
            status: 403,
            body: "Forbidden".into(),
        }
    }
}

/// What `authenticate` may return: `Option<D>` (None → 401) or `Result<D, Rejection>`.
pub trait IntoAuth<D> {
    /// Converts to the connection data or a rejection.
    fn into_auth(self) -> Result<D, Rejection>;
}

impl<D> IntoAuth<D> for Option<D> {
    fn into_auth(self) -> Result<D, Rejection> {
        self.ok_or_else(Rejection::unauthorized)
    }
}

impl<D> IntoAuth<D> for Result<D, Rejection> {
    fn into_auth(self) -> Result<D, Rejection> {
        self
    }
}

/// The `authenticate` hook: a plain function of the request, or one that returns a future (a
/// token store, a key fetch), so a slow lookup delays only its own connection.
pub(super) enum AuthHook<D> {
    Sync(SyncAuth<D>),
    Async(AsyncAuth<D>),
}

type SyncAuth<D> = Arc<dyn Fn(&UpgradeRequest) -> Result<D, Rejection> + Send + Sync>;
type AsyncAuth<D> =
    Arc<dyn Fn(UpgradeRequest) -> BoxFuture<'static, Result<D, Rejection>> + Send + Sync>;

impl<D> Clone for AuthHook<D> {
    fn clone(&self) -> Self {
        match self {
            AuthHook::Sync(f) => AuthHook::Sync(f.clone()),
            AuthHook::Async(f) => AuthHook::Async(f.clone()),
        }
    }
}

/// The app's checks of an upgrade request, in order: path (404), Origin (403), then
/// `authenticate` (401 or the hook's answer). A hook that panics refuses with 500. Every host
/// comes through here, so the refusals are counted here (`ws_kit_upgrades_rejected_total`).
pub(crate) async fn admit<D>(opts: &ServeOptions<D>, req: UpgradeRequest) -> Result<D, Rejection> {
    if opts
        .path
        .as_ref()
        .is_some_and(|path| req.uri().path() != path)
    {
        metrics::upgrade_rejected(metrics::reason::PATH);
        return Err(Rejection {
            status: 404,
            body: "Not Found".into(),
        });
    }
    if let Some(allowed) = &opts.allowed_origins {
        let origin = req.headers().get("origin").and_then(|o| o.to_str().ok());
        if !origin.is_some_and(|o| allowed.iter().any(|a| a == o)) {
            metrics::upgrade_rejected(metrics::reason::ORIGIN);
            return Err(Rejection::forbidden());
        }
    }
    let outcome = match &opts.authenticate {
        AuthHook::Sync(hook) => std::panic::catch_unwind(AssertUnwindSafe(|| hook(&req))),
        AuthHook::Async(hook) => {
            let hook = hook.clone();
            // Called inside the guard too: a hook may panic before it returns its future.
            AssertUnwindSafe(async move { hook(req).await })
                .catch_unwind()
                .await
        }
    };
    let outcome = outcome.unwrap_or_else(|panic| {
        let message = crate::task::panic_message(&*panic);
        tracing::error!(error = %message, "the authenticate hook panicked");
        Err(Rejection {
            status: 500,
            body: "Internal Server Error".into(),
        })
    });
    if outcome.is_err() {
        metrics::upgrade_rejected(metrics::reason::UNAUTHORIZED);
    }
    outcome
}

/// The upgrade's answer: the subprotocol selected and `x-client-id`.
pub(super) fn respond<D>(
    opts: &ServeOptions<D>,
    req: &UpgradeRequest,
    mut response: Response,
    client_id: uuid::Uuid,
) -> Response {
    let offered: Vec<&str> = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let selected = if opts.subprotocols.is_empty() {
        offered.first().copied()
    } else {
        offered
            .iter()
            .copied()
            .find(|p| opts.subprotocols.iter().any(|s| s == p))
    };
    let headers = response.headers_mut();
    if let Some(protocol) = selected.and_then(|p| HeaderValue::from_str(p).ok()) {
        headers.insert("sec-websocket-protocol", protocol);
    }
    if let Ok(id) = HeaderValue::from_str(&client_id.to_string()) {
        headers.insert("x-client-id", id);
    }
    response
}

/// The value of a query parameter of the upgrade request (`?access_token=...`), percent-decoded.
pub fn query_param(req: &UpgradeRequest, name: &str) -> Option<String> {
    let query = req.uri().query()?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key) == name).then(|| percent_decode(value))
    })
}
