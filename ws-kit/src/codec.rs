//! The derive's side of a message: how it decodes (both paths), validates and encodes. Hidden
//! from users: [`Message`](crate::Message) is the public face, and this trait may change with
//! every change to the decoders without changing it.

use crate::error::{Issue, WsError};
use crate::scan::Scan;
use serde::Serialize;
use serde::ser::SerializeMap;
use serde_json::value::RawValue;
use std::borrow::Cow;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// What `#[derive(Message)]` generates besides the type tag. Not public API.
#[doc(hidden)]
pub trait Codec: Sized {
    /// Whether the message is a request (`#[rpc(response = ..)]`).
    const IS_RPC: bool;
    /// Whether the message has payload fields (it takes no `payload` key otherwise).
    const HAS_PAYLOAD: bool;
    /// The wire names of its declared meta fields.
    const META_KEYS: &'static [&'static str];
    /// What its handler returns on success: `()` for an event, the response for a request (a
    /// message, so [`ReplyFrame`]; the routes require it where they build tasks).
    type Reply: Send + 'static;

    /// Decodes from a raw payload and the envelope's non-standard meta entries, collecting every
    /// issue with its path (the full path).
    fn decode(
        payload: Option<&RawValue>,
        meta: &[(Cow<'_, str>, &RawValue)],
    ) -> Result<Self, Vec<Issue>>;

    /// Decodes straight from the payload object (`None`: no payload, or `null`) and the raw text
    /// of the declared meta keys, for the one-pass fast path. `None` only means "take the full
    /// path", which then reports the issues. The default declines every frame.
    fn scan_payload(payload: Option<&mut Scan<'_>>, meta: &[(&str, &str)]) -> Option<Self> {
        let _ = (payload, meta);
        None
    }

    /// Runs the `#[validate]` rules (nested `Payload` types included), pushing an issue per failure.
    fn validate(&self, issues: &mut Vec<Issue>);

    /// Writes the payload object.
    fn serialize_payload<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error>;

    /// The message's schema (fields, types, rules, response), for generated front-end schemas.
    fn schema() -> crate::schema::MessageSchema;

    /// Writes the declared meta fields into an outbound `meta` object.
    fn serialize_meta<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error>;
}

/// A handler's successful result as the frame that answers it: a request's response encoded
/// as its reply (implemented for every message in `wire::encode`), nothing for `()`.
#[doc(hidden)]
pub trait ReplyFrame: Send + 'static {
    /// The reply frame for the request `correlation_id`, if this result has one.
    fn reply_frame(&self, correlation_id: Option<&str>) -> Option<Result<Utf8Bytes, WsError>>;
}

impl ReplyFrame for () {
    fn reply_frame(&self, _: Option<&str>) -> Option<Result<Utf8Bytes, WsError>> {
        None
    }
}

/// Wraps a message so it serializes as its wire payload object.
pub(crate) struct PayloadOf<'a, M>(pub &'a M);

impl<M: Codec> Serialize for PayloadOf<'_, M> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        <M as Codec>::serialize_payload(self.0, s)
    }
}
