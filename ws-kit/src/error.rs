//! Errors: the wire error (`WsError` with its `ErrorCode`) and the framework's own `Error`.

use serde::Serialize;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fmt;

/// A wire error code. The 13 standard codes follow gRPC; applications may add their own
/// (any SCREAMING_SNAKE string) with [`ErrorCode::Custom`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The client is not authenticated.
    Unauthenticated,
    /// The client is authenticated but not allowed to do this.
    PermissionDenied,
    /// The message is malformed or failed validation.
    InvalidArgument,
    /// The system is not in a state that allows this operation.
    FailedPrecondition,
    /// The requested entity does not exist.
    NotFound,
    /// The entity the client tried to create already exists.
    AlreadyExists,
    /// The message type is not handled by this server.
    Unimplemented,
    /// The operation was cancelled (for example by `$ws:abort`).
    Cancelled,
    /// The deadline passed before the operation finished.
    DeadlineExceeded,
    /// A limit was hit (rate, size, in-flight requests); retry later.
    ResourceExhausted,
    /// The service is temporarily unavailable; retry later.
    Unavailable,
    /// The operation was aborted by a conflict; retry.
    Aborted,
    /// An unexpected server failure.
    Internal,
    /// An application-defined code.
    Custom(Cow<'static, str>),
}

impl ErrorCode {
    /// The code as it appears on the wire (`"NOT_FOUND"`).
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::PermissionDenied => "PERMISSION_DENIED",
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::FailedPrecondition => "FAILED_PRECONDITION",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::AlreadyExists => "ALREADY_EXISTS",
            ErrorCode::Unimplemented => "UNIMPLEMENTED",
            ErrorCode::Cancelled => "CANCELLED",
            ErrorCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
            ErrorCode::ResourceExhausted => "RESOURCE_EXHAUSTED",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Aborted => "ABORTED",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::Custom(code) => code,
        }
    }

    /// Parses a wire code; unknown codes become [`ErrorCode::Custom`].
    pub fn parse(code: &str) -> ErrorCode {
        match code {
            "UNAUTHENTICATED" => ErrorCode::Unauthenticated,
            "PERMISSION_DENIED" => ErrorCode::PermissionDenied,
            "INVALID_ARGUMENT" => ErrorCode::InvalidArgument,
            "FAILED_PRECONDITION" => ErrorCode::FailedPrecondition,
            "NOT_FOUND" => ErrorCode::NotFound,
            "ALREADY_EXISTS" => ErrorCode::AlreadyExists,
            "UNIMPLEMENTED" => ErrorCode::Unimplemented,
            "CANCELLED" => ErrorCode::Cancelled,
            "DEADLINE_EXCEEDED" => ErrorCode::DeadlineExceeded,
            "RESOURCE_EXHAUSTED" => ErrorCode::ResourceExhausted,
            "UNAVAILABLE" => ErrorCode::Unavailable,
            "ABORTED" => ErrorCode::Aborted,
            "INTERNAL" => ErrorCode::Internal,
            other => ErrorCode::Custom(Cow::Owned(other.to_string())),
        }
    }

    /// The default message for this code (docs/protocol.md section 4).
    pub fn description(&self) -> &'static str {
        match self {
            ErrorCode::Unauthenticated => "Not authenticated",
            ErrorCode::PermissionDenied => "Permission denied",
            ErrorCode::InvalidArgument => "Invalid argument",
            ErrorCode::FailedPrecondition => "Failed precondition",
            ErrorCode::NotFound => "Not found",
            ErrorCode::AlreadyExists => "Already exists",
            ErrorCode::Unimplemented => "Not implemented",
            ErrorCode::Cancelled => "Cancelled",
            ErrorCode::DeadlineExceeded => "Deadline exceeded",
            ErrorCode::ResourceExhausted => "Resource exhausted",
            ErrorCode::Unavailable => "Unavailable",
            ErrorCode::Aborted => "Aborted",
            ErrorCode::Internal => "Internal error",
            ErrorCode::Custom(_) => "Error",
        }
    }

    /// Whether a client may retry after this code when the frame does not say.
    /// `None` for `INTERNAL` and custom codes: the application decides.
    pub fn retryable(&self) -> Option<bool> {
        match self {
            ErrorCode::DeadlineExceeded
            | ErrorCode::ResourceExhausted
            | ErrorCode::Unavailable
            | ErrorCode::Aborted => Some(true),
            ErrorCode::Internal | ErrorCode::Custom(_) => None,
            _ => Some(false),
        }
    }

    /// The default retry delay a client should apply for this code, in milliseconds.
    pub fn default_retry_after_ms(&self) -> Option<u64> {
        match self {
            ErrorCode::DeadlineExceeded | ErrorCode::Aborted => Some(50),
            ErrorCode::ResourceExhausted | ErrorCode::Unavailable => Some(100),
            ErrorCode::Internal => Some(200),
            _ => None,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One validation problem: where (`"payload.roomId"`) and what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Issue {
    /// Dotted path from the envelope root, e.g. `payload.roomId` or `meta.correlationId`.
    pub path: String,
    /// What is wrong, in words.
    pub message: String,
}

/// Longest path an [`Issue`] keeps, in bytes (longer ones are cut and end in `…`).
pub const MAX_ISSUE_PATH: usize = 128;
/// Longest message an [`Issue`] keeps, in bytes; within it, a quoted part (`` `key` ``) keeps at
/// most [`MAX_QUOTED`] bytes.
pub const MAX_ISSUE_MESSAGE: usize = 200;
/// Longest piece of client input (a key, a type tag, a topic) an error echoes, in bytes.
pub const MAX_QUOTED: usize = 48;
/// Most issues an `INVALID_ARGUMENT` reply lists; its message counts them all. With the limits
/// above, an error reply caused by any input stays under 8 KiB.
pub const MAX_ISSUES: usize = 10;

impl Issue {
    /// An issue at `path`. Both are clipped (to [`MAX_ISSUE_PATH`] and [`MAX_ISSUE_MESSAGE`]
    /// bytes, quoted parts to [`MAX_QUOTED`]; control characters become `\u{FFFD}`), so an error
    /// reply stays small whatever the input that caused it.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        let path = path.into();
        let message = message.into();
        Issue {
            path: clip(&path, MAX_ISSUE_PATH).into_owned(),
            message: clip(&clip_quoted(&message), MAX_ISSUE_MESSAGE).into_owned(),
        }
    }
}

/// `s`, cut to at most `max` bytes (at a character boundary) with `…` at the end when it was
/// longer, and control characters (which JSON would escape to six bytes each) replaced by
/// `\u{FFFD}`.
pub(crate) fn clip(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max && !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(max.min(s.len()) + 3);
    for c in s.chars() {
        let c = if c.is_control() { '\u{fffd}' } else { c };
        if out.len() + c.len_utf8() > max {
            out.push('…');
            break;
        }
        out.push(c);
    }
    Cow::Owned(out)
}

/// `s` with every backquoted part (serde quotes keys so: ``unknown field `x` ``) clipped to
/// [`MAX_QUOTED`] bytes.
fn clip_quoted(s: &str) -> Cow<'_, str> {
    if !s.contains('`') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len().min(1024));
    for (i, part) in s.split('`').enumerate() {
        if i > 0 {
            out.push('`');
        }
        // Odd parts are inside backquotes.
        if i % 2 == 1 {
            out.push_str(&clip(part, MAX_QUOTED));
        } else {
            out.push_str(part);
        }
    }
    Cow::Owned(out)
}

/// An error sent to the client as an `ERROR` or `RPC_ERROR` frame.
///
/// Handlers return it (`Err(WsError::not_found("no such user"))`) or send it with `ctx.error(..)`.
///
/// ```
/// use ws_kit::{ErrorCode, WsError};
/// let err = WsError::new(ErrorCode::NotFound, "user not found")
///     .with_details(serde_json::json!({ "id": "7" }));
/// assert_eq!(err.code(), &ErrorCode::NotFound);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct WsError {
    // Boxed: errors are the rare path, and every `Result<_, WsError>` stays one pointer wide.
    inner: Box<ErrorInner>,
}

#[derive(Clone, Debug, PartialEq)]
struct ErrorInner {
    code: ErrorCode,
    message: Cow<'static, str>,
    details: Option<Map<String, Value>>,
    retryable: Option<bool>,
    retry_after_ms: Option<u64>,
    close: Option<(u16, Cow<'static, str>)>,
}

impl WsError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        WsError {
            inner: Box::new(ErrorInner {
                code,
                message: message.into(),
                details: None,
                retryable: None,
                retry_after_ms: None,
                close: None,
            }),
        }
    }

    /// An error whose message is the code's description.
    pub fn from_code(code: ErrorCode) -> Self {
        let message = code.description();
        WsError::new(code, message)
    }

    /// Adds `details` (an object; other JSON values are put under `"value"`).
    pub fn with_details(mut self, details: Value) -> Self {
        self.inner.details = match details {
            Value::Object(map) if map.is_empty() => None,
            Value::Object(map) => Some(map),
            Value::Null => None,
            other => Some(Map::from_iter([("value".to_string(), other)])),
        };
        self
    }

    /// Says explicitly whether the client may retry (sent as `retryable`).
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.inner.retryable = Some(retryable);
        self
    }

    /// Sets the retry hint `retryAfterMs`.
    pub fn with_retry_after_ms(mut self, ms: u64) -> Self {
        self.inner.retry_after_ms = Some(ms);
        self
    }

    /// Sets `retryAfterMs` to the code's default (docs/protocol.md 4) unless it is set: every
    /// error the framework makes on its own carries it.
    pub(crate) fn with_default_retry(mut self) -> Self {
        if self.inner.retry_after_ms.is_none() {
            self.inner.retry_after_ms = self.inner.code.default_retry_after_ms();
        }
        self
    }

    /// An error that, returned from `on_open`, closes the connection with this code and reason.
    pub fn close(code: u16, reason: impl Into<Cow<'static, str>>) -> Self {
        let reason = reason.into();
        let mut err = WsError::new(ErrorCode::FailedPrecondition, reason.clone());
        err.inner.close = Some((code, reason));
        err
    }

    /// The wire code.
    pub fn code(&self) -> &ErrorCode {
        &self.inner.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// The details object, if any.
    pub fn details(&self) -> Option<&Map<String, Value>> {
        self.inner.details.as_ref()
    }

    /// The explicit `retryable` flag, if set.
    pub fn retryable(&self) -> Option<bool> {
        self.inner.retryable
    }

    /// The `retryAfterMs` hint, if set.
    pub fn retry_after_ms(&self) -> Option<u64> {
        self.inner.retry_after_ms
    }

    pub(crate) fn close_frame(&self) -> Option<&(u16, Cow<'static, str>)> {
        self.inner.close.as_ref()
    }

    /// `INVALID_ARGUMENT` with `details.issues`.
    ///
    /// At most [`MAX_ISSUES`] issues are listed; the message says how many there were.
    pub fn validation(mut issues: Vec<Issue>) -> Self {
        let message = match issues.first() {
            Some(first) if issues.len() == 1 => format!("{}: {}", first.path, first.message),
            Some(first) => format!(
                "{}: {} (and {} more)",
                first.path,
                first.message,
                issues.len() - 1
            ),
            None => "Invalid message".to_string(),
        };
        issues.truncate(MAX_ISSUES);
        WsError::new(ErrorCode::InvalidArgument, message)
            .with_details(serde_json::json!({ "issues": issues }))
    }

    /// The wire payload of this error.
    pub(crate) fn payload(&self) -> ErrorPayload<'_> {
        ErrorPayload {
            code: &self.inner.code,
            message: &self.inner.message,
            details: self.inner.details.as_ref(),
            retryable: self.inner.retryable,
            retry_after_ms: self.inner.retry_after_ms,
        }
    }
}

macro_rules! constructors {
    ($($(#[$doc:meta])* $name:ident => $code:ident,)*) => {
        impl WsError {
            $(
                $(#[$doc])*
                pub fn $name(message: impl Into<Cow<'static, str>>) -> Self {
                    WsError::new(ErrorCode::$code, message)
                }
            )*
        }
    };
}

constructors! {
    /// `UNAUTHENTICATED` with a message.
    unauthenticated => Unauthenticated,
    /// `PERMISSION_DENIED` with a message.
    permission_denied => PermissionDenied,
    /// `INVALID_ARGUMENT` with a message.
    invalid_argument => InvalidArgument,
    /// `FAILED_PRECONDITION` with a message.
    failed_precondition => FailedPrecondition,
    /// `NOT_FOUND` with a message.
    not_found => NotFound,
    /// `ALREADY_EXISTS` with a message.
    already_exists => AlreadyExists,
    /// `UNIMPLEMENTED` with a message.
    unimplemented => Unimplemented,
    /// `CANCELLED` with a message.
    cancelled => Cancelled,
    /// `DEADLINE_EXCEEDED` with a message.
    deadline_exceeded => DeadlineExceeded,
    /// `RESOURCE_EXHAUSTED` with a message.
    resource_exhausted => ResourceExhausted,
    /// `UNAVAILABLE` with a message.
    unavailable => Unavailable,
    /// `ABORTED` with a message.
    aborted => Aborted,
    /// `INTERNAL` with a message. The message reaches the client: never put internals in it.
    internal => Internal,
}

impl From<ErrorCode> for WsError {
    fn from(code: ErrorCode) -> Self {
        WsError::from_code(code)
    }
}

impl fmt::Display for WsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.inner.code, self.inner.message)
    }
}

impl std::error::Error for WsError {}

#[derive(Serialize)]
pub(crate) struct ErrorPayload<'a> {
    code: &'a ErrorCode,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retryable: Option<bool>,
    #[serde(rename = "retryAfterMs", skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
}

/// Errors of the framework itself (not sent on the wire).
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Two routes handle the same type tag (found when the router is built).
    DuplicateType(&'static str),
    /// Binding or accepting on the listening socket failed.
    Io(std::io::Error),
    /// The WebSocket handshake or transport failed.
    WebSocket(tokio_tungstenite::tungstenite::Error),
    /// The upgrade request was malformed or of another protocol version; the client got this
    /// HTTP status (400, 426).
    Refused(u16),
    /// The client did not finish its upgrade within the handshake timeout.
    HandshakeTimeout,
    /// Connecting to Redis failed.
    #[cfg(feature = "redis")]
    Redis(redis::RedisError),
    /// A TLS configuration could not be built (a certificate or key that does not read), or a
    /// TLS handshake failed.
    #[cfg(feature = "tls")]
    Tls(Box<dyn std::error::Error + Send + Sync>),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::DuplicateType(tag) => write!(f, "two handlers are registered for type `{tag}`"),
            Error::Io(e) => write!(f, "i/o error: {e}"),
            Error::WebSocket(e) => write!(f, "websocket error: {e}"),
            Error::Refused(status) => write!(f, "upgrade refused with HTTP {status}"),
            Error::HandshakeTimeout => f.write_str("the WebSocket handshake timed out"),
            #[cfg(feature = "redis")]
            Error::Redis(e) => write!(f, "redis error: {e}"),
            #[cfg(feature = "tls")]
            Error::Tls(e) => write!(f, "tls error: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            Error::WebSocket(e) => Some(e),
            #[cfg(feature = "redis")]
            Error::Redis(e) => Some(e),
            #[cfg(feature = "tls")]
            Error::Tls(e) => Some(&**e),
            Error::DuplicateType(_) | Error::Refused(_) | Error::HandshakeTimeout => None,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_are_clipped_so_replies_stay_small() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("abcdef", 4), "abcd…");
        assert_eq!(clip("ééé", 5), "éé…");
        assert_eq!(clip("a\u{1}b", 10), "a\u{fffd}b");
        let key = "k".repeat(10_000);
        let issue = Issue::new(
            format!("payload.{key}"),
            format!("unknown field `{key}`, expected `a` or `b`"),
        );
        assert!(
            issue.path.len() <= MAX_ISSUE_PATH + 3,
            "{}",
            issue.path.len()
        );
        assert!(
            issue.message.ends_with("…`, expected `a` or `b`"),
            "{}",
            issue.message
        );
        assert!(issue.message.len() <= MAX_ISSUE_MESSAGE + 3);
        let err = WsError::validation(vec![issue; 50]);
        assert_eq!(
            err.details().unwrap()["issues"].as_array().unwrap().len(),
            MAX_ISSUES
        );
        assert!(
            err.message().ends_with("(and 49 more)"),
            "{}",
            err.message()
        );
    }
}
