//! The `Message` trait that `#[derive(Message)]` implements, its two kinds (`RpcMessage`,
//! `EventMessage`), and the envelope's standard `Meta`.

use crate::codec::Codec;
use std::sync::Arc;

/// A message schema: a Rust struct with a wire type tag, strict decoding, validation and encoding.
///
/// Derive it; it cannot be implemented by hand (its supertrait is the derive's own plumbing).
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
/// - `#[rpc(response = Reply)]` makes it a request whose handler returns `Result<Reply, _>`.
/// - On fields: `#[message(rename = "x")]`, `#[message(meta)]` (the field travels in `meta`, not
///   `payload`), and `#[validate(...)]` constraints (`length`, `range`, `email`, `url`, `contains`,
///   `does_not_contain`, `non_control_character`, `regex`, `custom`).
///
/// Field types: strings, numbers, `bool`, `Option<T>`, `Vec<T>`, maps with string keys,
/// `uuid::Uuid`, `serde_json::Value`, structs that derive [`Payload`](derive@crate::Payload)
/// (camelCase, strict and validated like a message), and any other type with serde's `Serialize`
/// and `Deserialize` (an enum, say). An `Option` field may be absent or `null`; its rules apply
/// only when it holds a value. `length` counts characters (Unicode scalar values), not bytes.
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
pub trait Message: Codec + Send + Sync + 'static {
    /// The wire type tag, e.g. `"JOIN_ROOM"`.
    const TYPE: &'static str;
}

/// A request message: its handler answers with exactly one `Response` (or an error).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an RPC message",
    label = "this message has no `#[rpc(response = ...)]`",
    note = "add `#[rpc(response = YourReply)]` to `{Self}`, or register its handler with `.on(..)` as an event"
)]
pub trait RpcMessage: Message {
    /// The reply type: what the handler returns, and what `ctx.progress` accepts.
    type Response: Message;

    /// The response's schema, for the derive's `schema()` (named here, where `Response` is
    /// known to be a message, so a wrong response type is reported once, at `#[rpc]`).
    #[doc(hidden)]
    fn __response_schema() -> crate::schema::MessageSchema {
        crate::schema::MessageSchema::of::<Self::Response>()
    }
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

impl crate::schema::MessageSchema {
    /// The schema of `M`: wire names, types, rules, meta fields and response.
    pub fn of<M: Message>() -> Self {
        <M as Codec>::schema()
    }
}
