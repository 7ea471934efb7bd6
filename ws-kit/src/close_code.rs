//! WebSocket close codes the server sends or reports, by name (RFC 6455 section 7.4 and ws-kit's
//! own 4000-range codes, docs/protocol.md section 7).
//!
//! ```
//! use ws_kit::{close_code, WsError};
//!
//! // An `on_open` hook that refuses a connection with a policy violation.
//! let err = WsError::close(close_code::POLICY, "Not allowed here");
//! assert_eq!(close_code::POLICY, 1008);
//! # let _ = err;
//! ```

/// 1000: the purpose of the connection was fulfilled.
pub const NORMAL: u16 = 1000;
/// 1001: the server is going away (graceful shutdown sends "Server shutting down").
pub const AWAY: u16 = 1001;
/// 1002: the peer broke the WebSocket protocol (unmasked or malformed frames).
pub const PROTOCOL: u16 = 1002;
/// 1003: the peer sent a kind of data the endpoint cannot accept.
pub const UNSUPPORTED: u16 = 1003;
/// 1005: reported, never sent: the close frame carried no code.
pub const STATUS: u16 = 1005;
/// 1006: reported, never sent: the connection dropped without a close frame.
pub const ABNORMAL: u16 = 1006;
/// 1007: a text frame was not valid UTF-8 (invalid payload data).
pub const INVALID: u16 = 1007;
/// 1008: the peer broke a policy of the server.
pub const POLICY: u16 = 1008;
/// 1009: an inbound message was larger than the payload limit.
pub const SIZE: u16 = 1009;
/// 1011: the server hit an unexpected condition (`on_open` failed).
pub const ERROR: u16 = 1011;
/// 1013: try again later (the connection's outbound queue overflowed).
pub const AGAIN: u16 = 1013;
/// 4001: the connection did not authenticate in band within `auth_timeout`.
pub const AUTH_TIMEOUT: u16 = 4001;
/// 4002: nothing arrived from the peer within the heartbeat timeout.
pub const HEARTBEAT_TIMEOUT: u16 = 4002;
/// 4003: in-band authentication was rejected.
pub const AUTH_FAILED: u16 = 4003;
/// 4004: the server requires sealed delivery and the client did not offer a key.
pub const ENCRYPTION_REQUIRED: u16 = 4004;
