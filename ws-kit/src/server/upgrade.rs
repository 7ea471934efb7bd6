//! The upgrade request's head, read and checked against RFC 6455 (section 4.2.1) before the
//! WebSocket handshake takes the stream: a malformed upgrade gets `400 Bad Request`, another
//! protocol version `426 Upgrade Required` with `Sec-WebSocket-Version: 13`, and neither holds the
//! connection any longer than it takes to say so.

use super::handshake::{HttpResponse, Rejection, UpgradeRequest};
use crate::http_syntax::is_token;
use std::borrow::Cow;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_tungstenite::tungstenite::http::{self, HeaderName, HeaderValue, StatusCode};

/// The most bytes an upgrade request's head may take (request line and headers).
pub(super) const MAX_HEAD_BYTES: usize = 16 * 1024;

/// The most headers an upgrade request may carry.
const MAX_HEADERS: usize = 64;

/// An HTTP answer that ends a connection before the WebSocket handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Refusal {
    pub(super) status: u16,
    reason: Cow<'static, str>,
    body: Cow<'static, str>,
    /// A header line of its own (`Sec-WebSocket-Version: 13` for `426`, `Retry-After` for
    /// `503`), with its CRLF; or empty.
    header: &'static str,
}

impl Refusal {
    /// `426` with the version we speak.
    pub(super) fn version() -> Self {
        Refusal {
            status: 426,
            reason: "Upgrade Required".into(),
            body: "Unsupported WebSocket version; this server speaks 13".into(),
            header: "Sec-WebSocket-Version: 13\r\n",
        }
    }

    pub(super) fn bad(body: &'static str) -> Self {
        Refusal {
            status: 400,
            reason: "Bad Request".into(),
            body: body.into(),
            header: "",
        }
    }

    /// `503`: the instance, or one address, has as many connections as it may.
    pub(super) fn full(body: &'static str) -> Self {
        Refusal {
            status: 503,
            reason: "Service Unavailable".into(),
            body: body.into(),
            header: "Retry-After: 1\r\n",
        }
    }

    /// The app's answer: a [`Rejection`] from `authenticate`, a path or Origin refusal.
    pub(super) fn rejected(rejection: Rejection) -> Self {
        let status = StatusCode::from_u16(rejection.status)
            .ok()
            .filter(|s| s.is_client_error() || s.is_server_error())
            .unwrap_or(StatusCode::UNAUTHORIZED);
        Refusal {
            status: status.as_u16(),
            reason: status.canonical_reason().unwrap_or("Refused").into(),
            body: rejection.body.into(),
            header: "",
        }
    }

    /// Status, extra header (name and value) and body, for a host's own response type (axum).
    #[cfg(feature = "axum")]
    pub(super) fn into_parts(self) -> (StatusCode, Option<(HeaderName, &'static str)>, String) {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let header = self
            .header
            .trim_end()
            .split_once(": ")
            .and_then(|(name, value)| Some((HeaderName::from_bytes(name.as_bytes()).ok()?, value)));
        (status, header, self.body.into_owned())
    }

    /// The whole HTTP response.
    pub(super) fn response(&self) -> Vec<u8> {
        format!(
            "HTTP/1.1 {} {}\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{}",
            self.status,
            self.reason,
            self.body.len(),
            self.header,
            self.body
        )
        .into_bytes()
    }

    /// Writes the response and closes, best effort: a peer that does not read gets what fits in
    /// its socket buffer, then the close.
    pub(super) async fn send<S: AsyncWrite + Unpin>(&self, stream: &mut S) {
        use tokio::io::AsyncWriteExt;
        let response = self.response();
        let _ = tokio::time::timeout(std::time::Duration::from_millis(250), async {
            stream.write_all(&response).await?;
            stream.shutdown().await
        })
        .await;
    }
}

/// A request head that is well formed.
pub(super) enum Head {
    /// A WebSocket upgrade: every byte read (the head and whatever the client sent after it) and
    /// the request.
    Upgrade(Vec<u8>, UpgradeRequest),
    /// A plain `GET` (no `Upgrade: websocket`): the request, for the app's page handler, and the
    /// refusal it gets when the app has no page for it.
    Plain(UpgradeRequest, Refusal),
}

/// Reads the request head (to its blank line). `Err(Some(..))`: the answer to send;
/// `Err(None)`: the peer went away.
pub(super) async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Head, Option<Refusal>> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let searched = buf.len().saturating_sub(3);
        buf.reserve(1024);
        let n = stream.read_buf(&mut buf).await.map_err(|_| None)?;
        if n == 0 {
            return Err(None);
        }
        if let Some(end) = buf[searched..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|i| searched + i + 4)
        {
            return match check(&buf[..end])? {
                Checked::Upgrade(request) => Ok(Head::Upgrade(buf, request)),
                Checked::Plain(request, refusal) => Ok(Head::Plain(request, refusal)),
            };
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(Some(Refusal::bad("Request head too large")));
        }
    }
}

/// What [`check`] found in a well-formed head.
#[derive(Debug)]
enum Checked {
    Upgrade(UpgradeRequest),
    Plain(UpgradeRequest, Refusal),
}

/// Checks what RFC 6455 section 4.2.1 asks of an opening handshake (the path, Origin and
/// authentication are checked later, with the app's options) and returns the request. A plain
/// `GET` without `Upgrade: websocket` is returned as such, with the 400 it gets unless the app
/// answers it.
fn check(head: &[u8]) -> Result<Checked, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) | Err(_) => {
            return Err(Refusal::bad("Malformed HTTP request"));
        }
    }
    let (method, version) = (request.method, request.version);
    if method != Some("GET") {
        return Err(Refusal::bad("A WebSocket upgrade is a GET request"));
    }
    if version != Some(1) {
        return Err(Refusal::bad("A WebSocket upgrade needs HTTP/1.1"));
    }
    let path = request.path.unwrap_or("/");
    let request =
        to_request(path, request.headers).ok_or_else(|| Refusal::bad("Malformed HTTP request"))?;
    match check_headers(request.headers())? {
        None => Ok(Checked::Upgrade(request)),
        Some(refusal) => Ok(Checked::Plain(request, refusal)),
    }
}

/// The header checks of RFC 6455 section 4.2.1, on a request from our own parser or from hyper
/// (axum). `Ok(None)`: a WebSocket upgrade; `Ok(Some(..))`: a plain request (no `Upgrade:
/// websocket`) and the refusal it gets unless the app answers it; `Err`: a malformed upgrade.
pub(super) fn check_headers(headers: &http::HeaderMap) -> Result<Option<Refusal>, Refusal> {
    // A value that is not visible ASCII reads as a NUL, which no check accepts.
    let values = |name: &'static str| {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("\u{0}"))
    };
    let lists = |name: &'static str| {
        values(name)
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    if values("host").next().is_none() {
        return Err(Refusal::bad("Missing Host header"));
    }
    if !lists("upgrade").any(|v| v.eq_ignore_ascii_case("websocket")) {
        return Ok(Some(Refusal::bad("Not a WebSocket upgrade request")));
    }
    if !lists("connection").any(|v| v.eq_ignore_ascii_case("upgrade")) {
        return Err(Refusal::bad("Not a WebSocket upgrade request"));
    }
    match values("sec-websocket-version").next() {
        None => return Err(Refusal::bad("Missing Sec-WebSocket-Version header")),
        Some(v) if v.trim() == "13" => {}
        Some(_) => return Err(Refusal::version()),
    }
    let mut keys = values("sec-websocket-key");
    match (keys.next(), keys.next()) {
        (Some(key), None) if is_key(key.trim()) => {}
        _ => return Err(Refusal::bad("Missing or invalid Sec-WebSocket-Key header")),
    }
    if values("sec-websocket-protocol")
        .flat_map(|v| v.split(','))
        .any(|p| !is_token(p.trim()))
    {
        return Err(Refusal::bad("Invalid Sec-WebSocket-Protocol header"));
    }
    Ok(None)
}

/// Writes the app's answer to a plain `GET` and closes, best effort (as [`Refusal::send`]).
pub(super) async fn send_page<S: AsyncWrite + Unpin>(stream: &mut S, page: HttpResponse) {
    use tokio::io::AsyncWriteExt;
    let (parts, body) = page.into_parts();
    let status = parts.status;
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nConnection: close\r\nContent-Length: {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    for (name, value) in &parts.headers {
        let skip = [http::header::CONNECTION, http::header::CONTENT_LENGTH];
        if let (false, Ok(value)) = (skip.contains(name), value.to_str()) {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str("\r\n");
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.shutdown().await
    })
    .await;
}

/// The checked head as the `http` request the hooks see.
fn to_request(path: &str, headers: &[httparse::Header<'_>]) -> Option<UpgradeRequest> {
    let mut request = http::Request::builder()
        .method(http::Method::GET)
        .version(http::Version::HTTP_11)
        .uri(path)
        .body(())
        .ok()?;
    let map = request.headers_mut();
    for header in headers {
        let name = HeaderName::from_bytes(header.name.as_bytes()).ok()?;
        map.append(name, HeaderValue::from_bytes(header.value).ok()?);
    }
    Some(request)
}

/// Whether `key` is the base64 of 16 bytes: 22 characters of the alphabet, then `==`.
fn is_key(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 24
        && b[22..] == *b"=="
        && b[..22]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(extra: &str) -> String {
        format!("GET /chat HTTP/1.1\r\nHost: x\r\n{extra}\r\n")
    }

    const UPGRADE: &str = "Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    fn status(head: &str) -> u16 {
        match check(head.as_bytes()) {
            Ok(Checked::Upgrade(_)) => 101,
            Ok(Checked::Plain(_, refusal)) | Err(refusal) => refusal.status,
        }
    }

    #[test]
    fn checks_the_opening_handshake() {
        assert_eq!(
            status(&request(&format!("{UPGRADE}Sec-WebSocket-Version: 13\r\n"))),
            101
        );
        // Another version: 426 with the one we speak.
        let head = request(&format!("{UPGRADE}Sec-WebSocket-Version: 8\r\n"));
        let refusal = check(head.as_bytes()).unwrap_err();
        assert_eq!(refusal.status, 426);
        let response = String::from_utf8(refusal.response()).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
            "{response}"
        );
        assert!(
            response.contains("\r\nSec-WebSocket-Version: 13\r\n"),
            "{response}"
        );
        // Malformed upgrades: 400.
        for head in [
            request("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"),
            request(UPGRADE),
            request(
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n",
            ),
            request(
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
            ),
            request(&format!(
                "{UPGRADE}Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat, bad protocol\r\n"
            )),
            format!("POST / HTTP/1.1\r\nHost: x\r\n{UPGRADE}Sec-WebSocket-Version: 13\r\n\r\n"),
            format!("GET / HTTP/1.0\r\nHost: x\r\n{UPGRADE}Sec-WebSocket-Version: 13\r\n\r\n"),
            format!("GET / HTTP/1.1\r\n{UPGRADE}Sec-WebSocket-Version: 13\r\n\r\n"),
            "not http at all\r\n\r\n".to_string(),
        ] {
            assert_eq!(status(&head), 400, "{head}");
        }
        // A plain GET is handed to the app's page handler, with the 400 it gets otherwise.
        match check(request("Accept: text/html\r\n").as_bytes()) {
            Ok(Checked::Plain(req, refusal)) => {
                assert_eq!((req.uri().path(), refusal.status), ("/chat", 400));
                assert_eq!(req.headers()["accept"], "text/html");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            is_key("dGhlIHNhbXBsZSBub25jZQ==")
                && !is_key("dGhlIHNhbXBsZSBub25jZQ=")
                && !is_key("dGhlIHNhbXBsZSBub25j!Q==")
        );
    }
}
