//! What the lifecycle hooks are told: [`ErrorEvent`] (with its [`ErrorKind`]) for `on_error`,
//! [`CloseInfo`] for `on_close`.

use crate::error::WsError;
use crate::pubsub::ClientId;

/// What kind of failure an [`ErrorEvent`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The frame was not a JSON object with a string `type`.
    InvalidFrame,
    /// A client sent a reserved type.
    ReservedType,
    /// No handler for the type.
    UnknownType,
    /// Strict decoding or field validation failed.
    Validation,
    /// A handler or middleware returned an error.
    Handler,
    /// A handler panicked.
    Panic,
    /// Middleware of an RPC finished without running the handler or returning an error.
    MissingTerminal,
    /// An error after the request's terminal was dropped (middleware failed after the handler
    /// replied).
    AfterTerminal,
    /// A request reused a correlation id already in flight; it was dropped.
    DuplicateCorrelation,
    /// Too many RPCs in flight on the connection.
    InflightLimit,
    /// An RPC passed its deadline.
    DeadlineExceeded,
    /// An inbound frame was larger than `max_payload_bytes`.
    PayloadTooLarge,
    /// An outbound frame could not be encoded.
    Encode,
    /// `on_open` failed.
    Open,
    /// A lifecycle hook panicked.
    HookPanic,
    /// The peer broke the WebSocket protocol (closed with 1002), or sent a text message that is
    /// not UTF-8 (1007).
    ProtocolViolation,
    /// The peer flooded the connection with control frames (closed with 1008).
    Flood,
    /// The connection's unfinished message would have taken the service over its inbound budget
    /// (closed with 1013).
    InboundBudget,
    /// A message came before in-band authentication succeeded (answered `UNAUTHENTICATED`).
    Unauthenticated,
    /// The connection did not authenticate within `auth_timeout` (closed with 4001).
    AuthTimeout,
    /// A sealed frame could not be opened, or a clear one came after sealed ones (answered
    /// `INVALID_ARGUMENT`, dropped).
    Unsealed,
}

/// A server-side failure, given to `on_error` hooks.
#[derive(Clone, Debug)]
pub struct ErrorEvent {
    /// The connection it happened on.
    pub client_id: ClientId,
    /// What kind of failure.
    pub kind: ErrorKind,
    /// The message type involved, if known.
    pub message_type: Option<String>,
    /// The request's correlation id, if any.
    pub correlation_id: Option<String>,
    /// The error (for panics: `INTERNAL` with the panic message; the client saw only "Internal error").
    pub error: WsError,
}

/// Why a connection closed, given to `on_close` hooks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseInfo {
    /// The close code (the client's, or the server's when it closed; 1006 when the socket dropped).
    /// See [`close_code`](crate::close_code).
    pub code: u16,
    /// The close reason.
    pub reason: String,
}

impl CloseInfo {
    /// What a received close frame says (1005, "No Status Received", when it carries no code).
    pub(crate) fn from_frame(
        frame: Option<&tokio_tungstenite::tungstenite::protocol::CloseFrame>,
    ) -> Self {
        match frame {
            Some(f) => CloseInfo {
                code: f.code.into(),
                reason: f.reason.to_string(),
            },
            None => CloseInfo {
                code: crate::close_code::STATUS,
                reason: String::new(),
            },
        }
    }

    /// The connection dropped without a close frame (1006).
    pub(crate) fn abnormal() -> Self {
        CloseInfo {
            code: crate::close_code::ABNORMAL,
            reason: String::new(),
        }
    }
}
