//! Encoding server → client frames: each frame is serialized once, in the key order of its
//! [`Layout`].

use super::strip_position;
use crate::codec::{PayloadOf, ReplyFrame};
use crate::error::WsError;
use crate::message::Message;
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Outbound meta: the correlation id, the sender's own keys, and the message's declared meta fields.
#[derive(Default, Clone, Copy)]
pub(crate) struct OutMeta<'a> {
    pub correlation_id: Option<&'a str>,
    pub user: Option<&'a Map<String, Value>>,
}

/// A source of declared meta fields for a frame (a message, or nothing for error frames).
pub(crate) trait MetaFields {
    fn write<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error>;
    fn is_empty(&self) -> bool;
}

impl MetaFields for () {
    fn write<M: SerializeMap>(&self, _: &mut M) -> Result<(), M::Error> {
        Ok(())
    }
    fn is_empty(&self) -> bool {
        true
    }
}

impl<T: Message> MetaFields for &T {
    fn write<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        T::serialize_meta(self, map)
    }
    fn is_empty(&self) -> bool {
        T::META_KEYS.is_empty()
    }
}

struct MetaOut<'a, F> {
    meta: OutMeta<'a>,
    fields: &'a F,
}

impl<F: MetaFields> Serialize for MetaOut<'_, F> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        if let Some(user) = self.meta.user {
            for (k, v) in user {
                // A sender can never set the envelope's own keys through user meta.
                if k != "type" && k != "correlationId" {
                    map.serialize_entry(k, v)?;
                }
            }
        }
        self.fields.write(&mut map)?;
        if let Some(id) = self.meta.correlation_id {
            map.serialize_entry("correlationId", id)?;
        }
        map.end()
    }
}

/// Key order of a frame.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `type`, `meta` (always, `{}` when empty), `payload`: direct sends, replies, errors.
    Direct,
    /// `type`, `payload`, then `meta` only when there is some: pub/sub deliveries.
    Publication,
}

struct Frame<'a, P, F> {
    ty: &'a str,
    meta: OutMeta<'a>,
    fields: &'a F,
    payload: Option<&'a P>,
    layout: Layout,
}

impl<P: Serialize, F: MetaFields> Serialize for Frame<'_, P, F> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("type", self.ty)?;
        let meta = MetaOut {
            meta: self.meta,
            fields: self.fields,
        };
        if self.layout == Layout::Direct {
            map.serialize_entry("meta", &meta)?;
        }
        if let Some(p) = self.payload {
            map.serialize_entry("payload", p)?;
        }
        if self.layout == Layout::Publication {
            let has_meta = self.meta.correlation_id.is_some()
                || self
                    .meta
                    .user
                    .is_some_and(|u| u.keys().any(|k| k != "type" && k != "correlationId"))
                || !self.fields.is_empty();
            if has_meta {
                map.serialize_entry("meta", &meta)?;
            }
        }
        map.end()
    }
}

/// A progress frame in the WS-Kit client's compatibility form
/// (`ServeOptions::progress_data_compat`): the Direct layout with the payload, already encoded,
/// written again under `data`.
struct DataCompatFrame<'a, F> {
    meta: OutMeta<'a>,
    fields: &'a F,
    payload: Option<&'a RawValue>,
}

impl<F: MetaFields> Serialize for DataCompatFrame<'_, F> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("type", PROGRESS)?;
        let meta = MetaOut {
            meta: self.meta,
            fields: self.fields,
        };
        map.serialize_entry("meta", &meta)?;
        if let Some(p) = self.payload {
            map.serialize_entry("payload", p)?;
            map.serialize_entry("data", p)?;
        }
        map.end()
    }
}

fn encode_failed(e: &serde_json::Error) -> WsError {
    WsError::internal(format!("could not encode frame: {}", strip_position(e))).with_default_retry()
}

fn to_frame<T: Serialize>(value: &T) -> Result<Utf8Bytes, WsError> {
    serde_json::to_string(value)
        .map(Utf8Bytes::from)
        .map_err(|e| encode_failed(&e))
}

/// Encodes a message under its own type tag (send, reply, publication).
pub(crate) fn encode_message<M: Message>(
    msg: &M,
    meta: OutMeta<'_>,
    layout: Layout,
) -> Result<Utf8Bytes, WsError> {
    encode_message_as(M::TYPE, msg, meta, layout)
}

/// The type tag of progress frames.
const PROGRESS: &str = "$ws:rpc-progress";

/// Encodes a progress frame (`$ws:rpc-progress`) carrying a response's payload. With `data_too`
/// (`ServeOptions::progress_data_compat`) the payload is encoded once and written under both
/// `payload` and `data`; without it the frame is exactly the protocol's.
pub(crate) fn encode_progress<M: Message>(
    msg: &M,
    meta: OutMeta<'_>,
    data_too: bool,
) -> Result<Utf8Bytes, WsError> {
    if !data_too {
        return encode_message_as(PROGRESS, msg, meta, Layout::Direct);
    }
    let payload = M::HAS_PAYLOAD
        .then(|| serde_json::value::to_raw_value(&PayloadOf(msg)))
        .transpose()
        .map_err(|e| encode_failed(&e))?;
    to_frame(&DataCompatFrame {
        meta,
        fields: &msg,
        payload: payload.as_deref(),
    })
}

/// Encodes a message under the type tag `ty`: its own, or that of progress frames.
fn encode_message_as<M: Message>(
    ty: &str,
    msg: &M,
    meta: OutMeta<'_>,
    layout: Layout,
) -> Result<Utf8Bytes, WsError> {
    let payload = PayloadOf(msg);
    to_frame(&Frame {
        ty,
        meta,
        fields: &msg,
        payload: M::HAS_PAYLOAD.then_some(&payload),
        layout,
    })
}

impl<M: Message> ReplyFrame for M {
    fn reply_frame(&self, correlation_id: Option<&str>) -> Option<Result<Utf8Bytes, WsError>> {
        let meta = OutMeta {
            correlation_id,
            user: None,
        };
        Some(encode_message(self, meta, Layout::Direct))
    }
}

/// Encodes an `ERROR` or `RPC_ERROR` frame.
pub(crate) fn encode_error(rpc: bool, err: &WsError, correlation_id: Option<&str>) -> Utf8Bytes {
    let ty = if rpc { "RPC_ERROR" } else { "ERROR" };
    let payload = err.payload();
    let frame = Frame {
        ty,
        meta: OutMeta {
            correlation_id,
            user: None,
        },
        fields: &(),
        payload: Some(&payload),
        layout: Layout::Direct,
    };
    // An error payload holds only strings, numbers and a JSON object: encoding cannot fail.
    to_frame(&frame).unwrap_or_else(|_| Utf8Bytes::from_static("{\"type\":\"ERROR\",\"meta\":{},\"payload\":{\"code\":\"INTERNAL\",\"message\":\"Internal error\"}}"))
}

/// `{"type":"__heartbeat_ack","meta":{"ts":...}}`.
pub(crate) fn heartbeat_ack(now_ms: u64) -> Utf8Bytes {
    Utf8Bytes::from(format!(
        "{{\"type\":\"__heartbeat_ack\",\"meta\":{{\"ts\":{now_ms}}}}}"
    ))
}
