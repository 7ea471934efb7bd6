//! The client side of the wire: encoding a client → server frame, reading a server frame, decoding
//! it as a message or an error. One codec for the Rust client and the testing harness.

use super::envelope::RawEnvelope;
use super::strip_position;
use crate::codec::{Codec, PayloadOf};
use crate::error::{ErrorCode, Issue, WsError};
use crate::message::Message;
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::borrow::Cow;

/// A parsed server → client frame, as a client reads it: the type, the correlation id, the raw
/// payload and the other meta entries (values raw; `correlationId` is not among them).
pub(crate) struct ServerFrame<'a> {
    pub(crate) ty: Cow<'a, str>,
    pub(crate) correlation_id: Option<String>,
    pub(crate) payload: Option<&'a RawValue>,
    pub(crate) meta: Vec<(Cow<'a, str>, &'a RawValue)>,
}

/// Parses a frame a server sent (either key order). `Err` means it is not a JSON object with a
/// non-empty string `type`, or its `meta.correlationId` is not a string. Unknown root keys are
/// ignored: a client is lenient in what it reads.
pub(crate) fn parse_server_frame(text: &str) -> Result<ServerFrame<'_>, String> {
    let raw: RawEnvelope<'_> = serde_json::from_str(text).map_err(|e| strip_position(&e))?;
    let ty = match raw.ty {
        Some(ty) if !ty.is_empty() => ty,
        Some(_) => return Err("`type` must be a non-empty string".to_string()),
        None => return Err("missing string field `type`".to_string()),
    };
    let mut correlation_id = None;
    let mut meta = Vec::with_capacity(raw.meta.len());
    for (key, value) in raw.meta {
        if key == "correlationId" {
            let id = serde_json::from_str::<String>(value.get())
                .map_err(|_| "`meta.correlationId` must be a string".to_string())?;
            correlation_id = Some(id);
        } else {
            meta.push((key, value));
        }
    }
    Ok(ServerFrame {
        ty,
        correlation_id,
        payload: raw.payload,
        meta,
    })
}

/// The envelope meta a client puts on a frame, besides the message's declared meta fields.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ClientMeta<'a> {
    /// `correlationId`, for a request.
    pub(crate) correlation_id: Option<&'a str>,
    /// `timeoutMs`, a request's deadline hint.
    pub(crate) timeout_ms: Option<u64>,
    /// `timestamp`, the client's clock in milliseconds.
    pub(crate) timestamp: Option<u64>,
    /// Any other keys (`type` and `correlationId` are never taken from it).
    pub(crate) extra: Option<&'a Map<String, Value>>,
}

impl ClientMeta<'_> {
    fn is_empty<M: Codec>(&self) -> bool {
        self.correlation_id.is_none()
            && self.timeout_ms.is_none()
            && self.timestamp.is_none()
            && self
                .extra
                .is_none_or(|extra| extra.keys().all(|k| is_envelope_key(k)))
            && M::META_KEYS.is_empty()
    }
}

fn is_envelope_key(key: &str) -> bool {
    key == "type" || key == "correlationId"
}

/// Encodes a client → server frame: `{"type", "payload" (only when the message has fields),
/// "meta" (only when there is some)}`, as WS-Kit clients write it.
pub(crate) fn encode_client_frame<M: Message>(
    msg: &M,
    meta: ClientMeta<'_>,
) -> Result<String, String> {
    serde_json::to_string(&ClientFrame { msg, meta }).map_err(|e| strip_position(&e))
}

struct ClientFrame<'a, M> {
    msg: &'a M,
    meta: ClientMeta<'a>,
}

struct ClientMetaOut<'a, M>(&'a ClientFrame<'a, M>);

impl<M: Message> Serialize for ClientFrame<'_, M> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("type", M::TYPE)?;
        if M::HAS_PAYLOAD {
            map.serialize_entry("payload", &PayloadOf(self.msg))?;
        }
        if !self.meta.is_empty::<M>() {
            map.serialize_entry("meta", &ClientMetaOut(self))?;
        }
        map.end()
    }
}

impl<M: Message> Serialize for ClientMetaOut<'_, M> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ClientFrame { msg, meta } = self.0;
        let mut map = s.serialize_map(None)?;
        if let Some(extra) = meta.extra {
            for (key, value) in extra.iter().filter(|(k, _)| !is_envelope_key(k)) {
                map.serialize_entry(key, value)?;
            }
        }
        M::serialize_meta(msg, &mut map)?;
        if let Some(ts) = meta.timestamp {
            map.serialize_entry("timestamp", &ts)?;
        }
        if let Some(id) = meta.correlation_id {
            map.serialize_entry("correlationId", id)?;
        }
        if let Some(ms) = meta.timeout_ms {
            map.serialize_entry("timeoutMs", &ms)?;
        }
        map.end()
    }
}

/// `{"type":"$ws:abort","meta":{"correlationId":..}}`: cancels a request.
pub(crate) fn abort_frame(correlation_id: &str) -> String {
    serde_json::json!({ "type": "$ws:abort", "meta": { "correlationId": correlation_id } })
        .to_string()
}

/// `{"type":"__heartbeat","meta":{"timestamp":..}}`.
#[cfg(feature = "client")]
pub(crate) fn heartbeat_frame(now_ms: u64) -> String {
    format!("{{\"type\":\"__heartbeat\",\"meta\":{{\"timestamp\":{now_ms}}}}}")
}

/// Decodes a server frame's payload as `M`, strictly (unknown keys, wrong types and failed
/// `#[validate]` rules are errors), with the meta keys `M` declares. Other meta keys (the
/// standard `timestamp`, a sender's own keys) are not `M`'s business and are ignored.
pub(crate) fn decode_frame<M: Message>(frame: &ServerFrame<'_>) -> Result<M, String> {
    let meta: Vec<(Cow<'_, str>, &RawValue)> = frame
        .meta
        .iter()
        .filter(|(key, _)| M::META_KEYS.contains(&&**key))
        .map(|(key, value)| (key.clone(), *value))
        .collect();
    let msg = M::decode(frame.payload, &meta).map_err(issues_text)?;
    let mut issues = Vec::new();
    msg.validate(&mut issues);
    if issues.is_empty() {
        Ok(msg)
    } else {
        Err(issues_text(issues))
    }
}

/// Parses a whole server frame and decodes it as `M`, checking its type.
#[cfg(feature = "testing")]
pub(crate) fn decode_text<M: Message>(text: &str) -> Result<M, String> {
    let frame = parse_server_frame(text).map_err(|e| format!("not a frame ({e}): {text}"))?;
    if frame.ty != M::TYPE {
        return Err(format!("expected a `{}` frame, got: {text}", M::TYPE));
    }
    decode_frame::<M>(&frame).map_err(|e| format!("not a valid `{}` ({e}): {text}", M::TYPE))
}

fn issues_text(issues: Vec<Issue>) -> String {
    issues
        .iter()
        .map(|i| format!("{}: {}", i.path, i.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Decodes the payload of an `ERROR` / `RPC_ERROR` frame. A missing `message` is the code's
/// description (docs/protocol.md section 4); `details` other than an object are dropped.
pub(crate) fn decode_error(frame: &ServerFrame<'_>) -> Result<WsError, String> {
    #[derive(serde::Deserialize)]
    struct Payload {
        code: String,
        #[serde(default)]
        message: Option<String>,
        #[serde(default)]
        details: Option<Value>,
        #[serde(default)]
        retryable: Option<bool>,
        #[serde(default, rename = "retryAfterMs")]
        retry_after_ms: Option<u64>,
    }
    let raw = frame
        .payload
        .ok_or_else(|| format!("`{}` frame without payload", frame.ty))?;
    let p: Payload = serde_json::from_str(raw.get())
        .map_err(|e| format!("invalid error payload: {}", strip_position(&e)))?;
    let code = ErrorCode::parse(&p.code);
    let message = p.message.unwrap_or_else(|| code.description().to_string());
    let mut err = WsError::new(code, message);
    if let Some(details @ Value::Object(_)) = p.details {
        err = err.with_details(details);
    }
    if let Some(retryable) = p.retryable {
        err = err.with_retryable(retryable);
    }
    if let Some(ms) = p.retry_after_ms {
        err = err.with_retry_after_ms(ms);
    }
    Ok(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_frames_in_both_layouts() {
        let direct = parse_server_frame(
            r#"{"type":"PONG","meta":{"correlationId":"c1","traceId":"t"},"payload":{"a":1}}"#,
        )
        .unwrap();
        assert_eq!(direct.ty, "PONG");
        assert_eq!(direct.correlation_id.as_deref(), Some("c1"));
        assert_eq!(direct.payload.map(RawValue::get), Some(r#"{"a":1}"#));
        assert_eq!(direct.meta.len(), 1);
        assert_eq!(direct.meta[0].0, "traceId");

        let publication =
            parse_server_frame(r#"{"type":"ROOM_MSG","payload":{"t":"hi"}}"#).unwrap();
        assert_eq!(publication.ty, "ROOM_MSG");
        assert!(publication.correlation_id.is_none() && publication.meta.is_empty());

        let no_payload =
            parse_server_frame(r#"{"type":"__heartbeat_ack","meta":{"ts":5}}"#).unwrap();
        assert!(no_payload.payload.is_none());

        assert!(parse_server_frame(r#"{"meta":{}}"#).is_err());
        assert!(parse_server_frame(r#"{"type":""}"#).is_err());
        assert!(parse_server_frame(r#"{"type":"X","meta":{"correlationId":5}}"#).is_err());
        assert!(parse_server_frame("[]").is_err());
    }
}
