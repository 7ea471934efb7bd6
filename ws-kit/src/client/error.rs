//! The client's errors: [`ClientError`] (connecting and sending), [`RequestError`] (a request's
//! failure), [`ServerError`] (an error frame from the server).

use crate::error::{ErrorCode, WsError};
use serde_json::{Map, Value};
use std::fmt;
use std::time::Duration;
use tokio_tungstenite::tungstenite;

/// Errors of connecting and sending.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL, a header or a subprotocol is not valid.
    InvalidRequest(String),
    /// The server refused the upgrade with this HTTP status and body (401 for a bad token).
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The response body.
        body: String,
    },
    /// Connecting failed: TCP, the WebSocket handshake, or the connect timeout (an I/O `TimedOut`).
    Connect(tungstenite::Error),
    /// The client is closed.
    Closed,
    /// Not connected, and the offline queue is full ([`QueuePolicy::DropNewest`](super::QueuePolicy::DropNewest)): the frame was
    /// dropped. Also the error of a queued request pushed out by [`QueuePolicy::DropOldest`](super::QueuePolicy::DropOldest).
    QueueFull,
    /// Not connected, and the offline queue is off ([`QueuePolicy::Off`](super::QueuePolicy::Off)).
    Offline,
    /// The message could not be encoded as JSON.
    Encode(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::InvalidRequest(what) => write!(f, "invalid request: {what}"),
            ClientError::Rejected { status, body } => {
                write!(f, "the server refused the connection: HTTP {status} {body}")
            }
            ClientError::Connect(e) => write!(f, "could not connect: {e}"),
            ClientError::Closed => f.write_str("the client is closed"),
            ClientError::QueueFull => f.write_str("not connected and the offline queue is full"),
            ClientError::Offline => f.write_str("not connected (offline queue off)"),
            ClientError::Encode(e) => write!(f, "could not encode the message: {e}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Connect(e) => Some(e),
            _ => None,
        }
    }
}

/// Why a request failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum RequestError {
    /// The server answered with an error (`RPC_ERROR`).
    Server(ServerError),
    /// No reply within the timeout, counted from the moment the request was written
    /// (`$ws:abort` was sent).
    Timeout,
    /// The connection dropped after the request was written: the server may or may not have
    /// acted on it.
    ConnectionClosed,
    /// Too many requests wait for replies ([`ClientBuilder::max_pending`](super::ClientBuilder::max_pending)).
    TooManyPending,
    /// Aborted ([`Call::abort`](super::Call::abort)) before it was written: the server never saw it.
    Aborted,
    /// The reply (or a progress update) did not decode as the response type.
    Decode(String),
    /// The request could not be sent (closed, offline, queue full, encoding).
    Client(ClientError),
}

impl RequestError {
    /// The server's error code, for [`RequestError::Server`].
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            RequestError::Server(e) => Some(e.code()),
            _ => None,
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Server(e) => write!(f, "server error: {e}"),
            RequestError::Timeout => f.write_str("the request timed out"),
            RequestError::ConnectionClosed => {
                f.write_str("the connection closed before the reply came")
            }
            RequestError::TooManyPending => f.write_str("too many pending requests"),
            RequestError::Aborted => f.write_str("the request was aborted before it was sent"),
            RequestError::Decode(e) => write!(f, "invalid reply: {e}"),
            RequestError::Client(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for RequestError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RequestError::Server(e) => Some(e),
            RequestError::Client(e) => Some(e),
            _ => None,
        }
    }
}

/// An error frame from the server (`RPC_ERROR` or `ERROR`), docs/protocol.md section 4.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerError {
    code: ErrorCode,
    message: String,
    details: Option<Map<String, Value>>,
    retryable: Option<bool>,
    retry_after: Option<Duration>,
}

impl ServerError {
    /// The error code.
    pub fn code(&self) -> &ErrorCode {
        &self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The `details` object, if any.
    pub fn details(&self) -> Option<&Map<String, Value>> {
        self.details.as_ref()
    }

    /// Whether retrying may succeed: the frame's `retryable`, else what the code implies
    /// ([`ErrorCode::retryable`]); `None` when neither says (`INTERNAL`, custom codes).
    pub fn retryable(&self) -> Option<bool> {
        self.retryable.or_else(|| self.code.retryable())
    }

    /// How long to wait before retrying: the frame's `retryAfterMs`, else the code's default
    /// unless the error is not retryable.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after.or_else(|| {
            if self.retryable() == Some(false) {
                return None;
            }
            self.code
                .default_retry_after_ms()
                .map(Duration::from_millis)
        })
    }
}

impl From<WsError> for ServerError {
    fn from(e: WsError) -> Self {
        ServerError {
            retryable: e.retryable(),
            retry_after: e.retry_after_ms().map(Duration::from_millis),
            details: e.details().cloned(),
            message: e.message().to_string(),
            code: e.code().clone(),
        }
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ServerError {}
