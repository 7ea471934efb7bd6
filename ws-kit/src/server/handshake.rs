//! The WebSocket handshake: the upgrade request, authentication at upgrade (and its
//! [`Rejection`]), path, Origin, subprotocol selection and the `x-client-id` header.

use super::options::ServeOptions;
use crate::http_syntax::percent_decode;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};

/// The HTTP upgrade request a connection opened with (headers, query, offered subprotocols), as
/// `authenticate` sees it.
pub type UpgradeRequest = tokio_tungstenite::tungstenite::http::Request<()>;

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

pub(super) type AuthFn<D> = Arc<dyn Fn(&UpgradeRequest) -> Result<D, Rejection> + Send + Sync>;

/// Checks path and Origin, picks the subprotocol and sets `x-client-id`.
// `ErrorResponse` is tungstenite's type; its size is not ours to choose.
#[allow(clippy::result_large_err)]
pub(super) fn handshake<D>(
    opts: &ServeOptions<D>,
    req: &UpgradeRequest,
    mut response: Response,
    client_id: uuid::Uuid,
) -> Result<Response, ErrorResponse> {
    if opts
        .path
        .as_ref()
        .is_some_and(|path| req.uri().path() != path)
    {
        return Err(reject(404, "Not Found".into()));
    }
    if let Some(allowed) = &opts.allowed_origins {
        let origin = req.headers().get("origin").and_then(|o| o.to_str().ok());
        if !origin.is_some_and(|o| allowed.iter().any(|a| a == o)) {
            return Err(reject(403, "Forbidden".into()));
        }
    }
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
    Ok(response)
}

pub(super) fn reject(status: u16, body: String) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(body));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::UNAUTHORIZED);
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
