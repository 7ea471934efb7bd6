//! The `Message` trait that `#[derive(Message)]` implements, and the envelope's `Meta`.

use crate::error::Issue;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::sync::Arc;

/// A message schema: a Rust struct with a wire type tag, strict decoding, validation and encoding.
///
/// Derive it; do not implement it by hand (the `__` items are the derive's and may change).
///
/// ```
/// use ws_kit::Message;
///
/// #[derive(Message)]
/// struct JoinRoom {
///     #[validate(length(min = 1, max = 20))]
///     username: String,
///     room_id: String, // on the wire: "roomId"
/// }
/// assert_eq!(JoinRoom::TYPE, "JOIN_ROOM");
/// ```
///
/// Attributes:
/// - `#[message(type = "JOIN")]` overrides the tag (default: the struct name in SCREAMING_SNAKE_CASE);
///   `#[message(rename_all = "snake_case")]` changes the wire field names (default camelCase).
/// - `#[rpc(response = Reply)]` makes it a request whose reply is `Reply`.
/// - On fields: `#[message(rename = "x")]`, `#[message(meta)]` (the field travels in `meta`, not
///   `payload`), and `#[validate(...)]` constraints (`length`, `range`, `email`, `url`, `contains`,
///   `does_not_contain`, `non_control_character`, `regex`, `custom`).
///
/// A reserved tag is a compile error:
/// ```compile_fail
/// #[derive(ws_kit::Message)]
/// #[message(type = "$ws:abort")]
/// struct Sneaky;
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a ws-kit message",
    label = "not a message",
    note = "add `#[derive(ws_kit::Message)]` to `{Self}`"
)]
pub trait Message: Sized + Send + Sync + 'static {
    /// The wire type tag, e.g. `"JOIN_ROOM"`.
    const TYPE: &'static str;
    #[doc(hidden)]
    const __IS_RPC: bool;
    #[doc(hidden)]
    const __HAS_PAYLOAD: bool;
    #[doc(hidden)]
    const __META_KEYS: &'static [&'static str];

    #[doc(hidden)]
    fn __decode(
        payload: Option<&RawValue>,
        meta: &[(Cow<'_, str>, &RawValue)],
    ) -> Result<Self, Vec<Issue>>;

    /// Decodes the message straight from its payload object (`None`: no payload, or `null`) and
    /// the raw text of its declared meta keys, for the one-pass fast path. `None` only means
    /// "take the full path": `__decode` then reports the issues. The default declines every frame.
    #[doc(hidden)]
    fn __scan_payload(
        payload: Option<&mut crate::scan::Scan<'_>>,
        meta: &[(&str, &str)],
    ) -> Option<Self> {
        let _ = (payload, meta);
        None
    }

    #[doc(hidden)]
    fn __validate(&self, issues: &mut Vec<Issue>);

    #[doc(hidden)]
    fn __serialize_payload<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error>;

    #[doc(hidden)]
    fn __serialize_meta<M: serde::ser::SerializeMap>(&self, map: &mut M) -> Result<(), M::Error>;
}

/// A request message: its handler answers with exactly one `Response` (or an error).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an RPC message",
    label = "this message has no `#[rpc(response = ...)]`",
    note = "add `#[rpc(response = YourReply)]` to `{Self}`, or register its handler with `.on(..)` as an event"
)]
pub trait RpcMessage: Message {
    /// The reply type; `ctx.reply` and `ctx.progress` accept only this.
    type Response: Message;
}

/// An event message: fire-and-forget, no reply expected.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is an RPC message, not an event",
    label = "RPC message here",
    note = "register handlers of RPC messages with `.rpc(..)`"
)]
pub trait EventMessage: Message {}

/// The standard keys of an inbound envelope's `meta`.
///
/// `clientId` and `receivedAt` sent by a client are stripped; the server's values are
/// `ctx.client_id()` and `ctx.received_at()`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Meta {
    /// The request's correlation id (at most 128 bytes).
    pub correlation_id: Option<Arc<str>>,
    /// The producer's clock, for display only.
    pub timestamp: Option<f64>,
    /// The RPC deadline hint in milliseconds.
    pub timeout_ms: Option<u64>,
    /// The client's idempotency key.
    pub idempotency_key: Option<Box<str>>,
}

/// Wraps a message so it serializes as its wire payload object.
pub(crate) struct PayloadOf<'a, M>(pub &'a M);

impl<M: Message> serde::Serialize for PayloadOf<'_, M> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.__serialize_payload(s)
    }
}
