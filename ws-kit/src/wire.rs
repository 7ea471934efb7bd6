//! The wire format: parsing inbound envelopes and encoding outbound frames (PROTOCOL.md 2–4).

use crate::error::{Issue, WsError};
use crate::message::{Message, Meta};
use crate::scan::{FastField, Scan};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fmt;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Longest accepted `meta.correlationId`, in bytes.
pub(crate) const MAX_CORRELATION_ID: usize = 128;

/// A parsed client → server envelope; `payload` and unknown meta keys stay raw until the message
/// type is known.
#[doc(hidden)]
pub struct Envelope<'a> {
    pub(crate) ty: Cow<'a, str>,
    pub(crate) payload: Option<&'a RawValue>,
    pub(crate) meta: Meta,
    /// Meta keys beyond the standard ones (declared by the message schema, or unknown).
    pub(crate) meta_extra: Vec<(Cow<'a, str>, &'a RawValue)>,
    /// Problems found in the envelope itself (unknown root keys, bad standard meta values).
    pub(crate) issues: Vec<Issue>,
}

/// Parses an envelope. `Err` means the frame is not a JSON object with a string `type`.
pub(crate) fn parse_envelope(text: &str) -> Result<Envelope<'_>, String> {
    let raw: RawEnvelope<'_> = serde_json::from_str(text).map_err(|e| strip_position(&e))?;
    let Some(ty) = raw.ty else {
        return Err("missing string field `type`".to_string());
    };
    if ty.is_empty() {
        return Err("`type` must be a non-empty string".to_string());
    }
    let mut issues = raw.issues;
    let mut meta = Meta::default();
    let mut meta_extra = Vec::new();
    for (key, value) in raw.meta {
        match &*key {
            "correlationId" => match serde_json::from_str::<String>(value.get()) {
                Ok(id) if id.len() > MAX_CORRELATION_ID => issues.push(Issue::new(
                    "meta.correlationId",
                    format!("must be at most {MAX_CORRELATION_ID} bytes"),
                )),
                Ok(id) => meta.correlation_id = Some(id.into()),
                Err(_) => issues.push(Issue::new("meta.correlationId", "must be a string")),
            },
            "timestamp" => match serde_json::from_str::<f64>(value.get()) {
                Ok(ts) => meta.timestamp = Some(ts),
                Err(_) => issues.push(Issue::new("meta.timestamp", "must be a number")),
            },
            "timeoutMs" => match serde_json::from_str::<u64>(value.get()) {
                Ok(ms) if ms > 0 => meta.timeout_ms = Some(ms),
                _ => issues.push(Issue::new("meta.timeoutMs", "must be a positive integer")),
            },
            "idempotencyKey" => match serde_json::from_str::<String>(value.get()) {
                Ok(key) => meta.idempotency_key = Some(key.into_boxed_str()),
                Err(_) => issues.push(Issue::new("meta.idempotencyKey", "must be a string")),
            },
            // Server-owned keys: stripped, never trusted, never rejected.
            "clientId" | "receivedAt" => {}
            _ => meta_extra.push((key, value)),
        }
    }
    Ok(Envelope {
        ty,
        payload: raw.payload,
        meta,
        meta_extra,
        issues,
    })
}

/// The type tag of a frame that opens with `{"type":"…"` (whitespace allowed), when the tag has no
/// escapes: the common shape, which lets the router pick the message type before parsing.
/// `None` for any other shape; the caller then parses the envelope in full.
pub(crate) fn peek_type(text: &str) -> Option<&str> {
    /// JSON's whitespace (not Unicode's, which `str::trim_start` would skip).
    fn ws(s: &str) -> &str {
        s.trim_start_matches([' ', '\t', '\n', '\r'])
    }
    // What `JSON.stringify` writes, checked first.
    let rest = match text.strip_prefix("{\"type\":\"") {
        Some(rest) => rest,
        None => {
            let rest = ws(ws(text).strip_prefix('{')?);
            let rest = ws(ws(rest.strip_prefix("\"type\"")?).strip_prefix(':')?);
            rest.strip_prefix('"')?
        }
    };
    let end = rest.bytes().position(|b| b == b'"' || b == b'\\')?;
    (rest.as_bytes()[end] == b'"').then(|| &rest[..end])
}

/// Decodes a whole frame as message `M` in one pass: root keys, standard meta, and the payload
/// straight into `M`'s fields, with the strict reader of [`crate::scan`].
///
/// This is the fast path for well-formed frames. It succeeds only on frames that the full path
/// (`parse_envelope` then `Message::__decode`) accepts too, with the same result; on anything
/// else — an unknown or duplicate key, an unknown meta key, an escape in a key or a plain
/// string, a bad value, a message whose derive has no direct decoder — it returns `None` and the
/// caller takes the full path, which finds and reports every issue.
pub(crate) fn decode_direct<M: Message>(text: &str) -> Option<(M, Meta)> {
    let mut s = Scan::new(text);
    let mut seen_type = false;
    let mut payload = None;
    let mut meta = None;
    // The raw values of the message's declared meta keys.
    let mut declared = Vec::new();
    let mut more = s.object()?;
    // `{"type":"…","payload":…,"meta":…}` in this order, as clients write it, with keys matched
    // as literals; anything else goes through the general loop below.
    if more && s.literal_key("\"type\":") {
        seen_type = true;
        s.str()?;
        more = s.next_entry()?;
        if more && s.literal_key("\"payload\":") {
            payload = Some(scan_payload::<M>(&mut s)?);
            more = s.next_entry()?;
            if more && s.literal_key("\"meta\":") {
                meta = Some(scan_meta(&mut s, M::__META_KEYS, &mut declared)?);
                more = s.next_entry()?;
            }
        }
    }
    while more {
        match s.key()? {
            // The router already read the tag; here it only has to be a string, once.
            "type" if !seen_type => {
                seen_type = true;
                s.str()?;
            }
            "payload" if payload.is_none() => payload = Some(scan_payload::<M>(&mut s)?),
            "meta" if meta.is_none() => {
                meta = Some(scan_meta(&mut s, M::__META_KEYS, &mut declared)?);
            }
            _ => return None,
        }
        more = s.next_entry()?;
    }
    if !seen_type || !s.at_end() {
        return None;
    }
    let message = match payload {
        Some(Payload::Read(message)) => message,
        Some(Payload::Text(Some(text))) => {
            let mut p = Scan::new(text);
            let message = M::__scan_payload(Some(&mut p), &declared)?;
            p.at_end().then_some(message)?
        }
        Some(Payload::Text(None)) | None => M::__scan_payload(None, &declared)?,
    };
    Some((message, meta.unwrap_or_default()))
}

/// A payload read in place, or (for a message with declared meta fields, which may follow it in
/// the frame) its text, read once the whole frame is.
enum Payload<'a, M> {
    Read(M),
    /// `None` for `"payload": null`.
    Text(Option<&'a str>),
}

/// The payload's value; `"payload": null` counts as absent, as on the full path.
fn scan_payload<'a, M: Message>(s: &mut Scan<'a>) -> Option<Payload<'a, M>> {
    let deferred = !M::__META_KEYS.is_empty();
    Some(match (s.null(), deferred) {
        (true, false) => Payload::Read(M::__scan_payload(None, &[])?),
        (false, false) => Payload::Read(M::__scan_payload(Some(s), &[])?),
        (true, true) => Payload::Text(None),
        (false, true) => Payload::Text(Some(s.raw_value()?)),
    })
}

/// The standard meta keys, decoded in place, and the raw values of the message's declared ones
/// (into `declared`); any other key, or a repeated one, declines.
fn scan_meta<'a>(
    s: &mut Scan<'a>,
    declared_keys: &[&str],
    declared: &mut Vec<(&'a str, &'a str)>,
) -> Option<Meta> {
    let mut meta = Meta::default();
    if s.null() {
        return Some(meta);
    }
    let mut seen = [false; 6];
    let mut more = s.object()?;
    while more {
        // The usual keys as literals first; the general key reader for the rest.
        let slot = if s.literal_key("\"correlationId\":") {
            0
        } else if s.literal_key("\"timestamp\":") {
            1
        } else if s.literal_key("\"timeoutMs\":") {
            2
        } else {
            match s.key()? {
                "correlationId" => 0,
                "timestamp" => 1,
                "timeoutMs" => 2,
                "idempotencyKey" => 3,
                "clientId" => 4,
                "receivedAt" => 5,
                key if declared_keys.contains(&key) => {
                    if declared.iter().any(|(k, _)| *k == key) {
                        return None;
                    }
                    declared.push((key, s.raw_value()?));
                    more = s.next_entry()?;
                    continue;
                }
                _ => return None,
            }
        };
        if std::mem::replace(&mut seen[slot], true) {
            return None;
        }
        match slot {
            0 => {
                let id = s.str()?;
                if id.len() > MAX_CORRELATION_ID {
                    return None;
                }
                meta.correlation_id = Some(id.into());
            }
            1 => meta.timestamp = Some(f64::scan(s)?),
            2 => match u64::scan(s)? {
                0 => return None,
                ms => meta.timeout_ms = Some(ms),
            },
            3 => meta.idempotency_key = Some(Box::<str>::scan(s)?),
            // Server-owned keys: stripped, whatever their value.
            _ => s.ignore_value()?,
        }
        more = s.next_entry()?;
    }
    Some(meta)
}

/// A parsed server → client frame, as a client reads it: the type, the correlation id, the raw
/// payload and the other meta entries (values raw; `correlationId` is not among them).
#[cfg_attr(not(any(feature = "client", feature = "testing")), allow(dead_code))]
pub(crate) struct ServerFrame<'a> {
    pub(crate) ty: Cow<'a, str>,
    pub(crate) correlation_id: Option<String>,
    pub(crate) payload: Option<&'a RawValue>,
    pub(crate) meta: Vec<(Cow<'a, str>, &'a RawValue)>,
}

/// Parses a frame a server sent (either key order). `Err` means it is not a JSON object with a
/// non-empty string `type`, or its `meta.correlationId` is not a string. Unknown root keys are
/// ignored: a client is lenient in what it reads.
// Used by the `client` and `testing` features.
#[cfg_attr(not(any(feature = "client", feature = "testing")), allow(dead_code))]
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

/// The first pass over a frame: the root object, with `payload` left raw.
struct RawEnvelope<'a> {
    ty: Option<Cow<'a, str>>,
    payload: Option<&'a RawValue>,
    meta: Vec<(Cow<'a, str>, &'a RawValue)>,
    issues: Vec<Issue>,
}

impl<'de> Deserialize<'de> for RawEnvelope<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(RootVisitor)
    }
}

struct RootVisitor;

impl<'de> Visitor<'de> for RootVisitor {
    type Value = RawEnvelope<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object with a string `type`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut env = RawEnvelope {
            ty: None,
            payload: None,
            meta: Vec::new(),
            issues: Vec::new(),
        };
        let mut seen_payload = false;
        let mut seen_meta = false;
        while let Some(CowStr(key)) = map.next_key()? {
            match &*key {
                "type" => {
                    if env.ty.is_some() {
                        return Err(de::Error::custom("duplicate key `type`"));
                    }
                    let CowStr(ty) = map
                        .next_value()
                        .map_err(|_| de::Error::custom("`type` must be a string"))?;
                    env.ty = Some(ty);
                }
                "payload" => {
                    if seen_payload {
                        return Err(de::Error::custom("duplicate key `payload`"));
                    }
                    seen_payload = true;
                    let raw: &RawValue = map.next_value()?;
                    // `"payload": null` counts as absent.
                    env.payload = (raw.get() != "null").then_some(raw);
                }
                "meta" => {
                    if seen_meta {
                        return Err(de::Error::custom("duplicate key `meta`"));
                    }
                    seen_meta = true;
                    let RawMeta(entries) = map.next_value()?;
                    env.meta = entries;
                }
                _ => {
                    map.next_value::<de::IgnoredAny>()?;
                    env.issues.push(Issue::new(key.into_owned(), "unknown key"));
                }
            }
        }
        Ok(env)
    }
}

/// The entries of `meta`, values left raw.
struct RawMeta<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for RawMeta<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MetaVisitor;
        impl<'de> Visitor<'de> for MetaVisitor {
            type Value = RawMeta<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`meta` to be an object")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(RawMeta(Vec::new()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(CowStr(key)) = map.next_key()? {
                    let value: &RawValue = map.next_value()?;
                    entries.push((key, value));
                }
                Ok(RawMeta(entries))
            }
        }
        d.deserialize_any(MetaVisitor)
    }
}

/// A string borrowed from the frame when it has no escapes.
struct CowStr<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// serde_json's message without the " at line 1 column 9" suffix.
pub(crate) fn strip_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Whether a client may not send this type (PROTOCOL.md section 6).
pub(crate) fn is_reserved(ty: &str) -> bool {
    ty.starts_with('$') || ty.starts_with("__") || ty == "ERROR" || ty == "RPC_ERROR"
}

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
        self.__serialize_meta(map)
    }
    fn is_empty(&self) -> bool {
        T::__META_KEYS.is_empty()
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

fn to_frame<T: Serialize>(value: &T) -> Result<Utf8Bytes, WsError> {
    serde_json::to_string(value)
        .map(Utf8Bytes::from)
        .map_err(|e| WsError::internal(format!("could not encode frame: {}", strip_position(&e))))
}

/// Encodes a message under its own type tag (send, reply, publication).
pub(crate) fn encode_message<M: Message>(
    msg: &M,
    meta: OutMeta<'_>,
    layout: Layout,
) -> Result<Utf8Bytes, WsError> {
    encode_message_as(M::TYPE, msg, meta, layout)
}

/// Encodes a message's payload under another type (progress frames).
pub(crate) fn encode_message_as<M: Message>(
    ty: &str,
    msg: &M,
    meta: OutMeta<'_>,
    layout: Layout,
) -> Result<Utf8Bytes, WsError> {
    let payload = crate::message::PayloadOf(msg);
    to_frame(&Frame {
        ty,
        meta,
        fields: &msg,
        payload: M::__HAS_PAYLOAD.then_some(&payload),
        layout,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_reserved_meta_and_collects_issues() {
        let env = parse_envelope(
            r#"{"type":"X","extra":1,"meta":{"clientId":"spoof","receivedAt":5,"correlationId":"c1","timeoutMs":0,"traceId":"t"}}"#,
        )
        .unwrap();
        assert_eq!(env.ty, "X");
        assert_eq!(env.meta.correlation_id.as_deref(), Some("c1"));
        assert_eq!(env.meta_extra.len(), 1);
        assert_eq!(env.meta_extra[0].0, "traceId");
        let paths: Vec<_> = env.issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, ["extra", "meta.timeoutMs"]);
    }

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

    #[test]
    fn peeks_the_type_of_plain_frames_only() {
        assert_eq!(peek_type(r#"{"type":"PING","payload":{}}"#), Some("PING"));
        assert_eq!(peek_type(" {\n\t\"type\" : \"PING\"}"), Some("PING"));
        assert_eq!(peek_type(r#"{"type":""}"#), Some(""));
        // Escapes, another first key, a non-string type, a truncated frame: the full parse decides.
        assert_eq!(peek_type(r#"{"type":"PI\u004eG"}"#), None);
        assert_eq!(peek_type(r#"{"payload":{},"type":"PING"}"#), None);
        assert_eq!(peek_type(r#"{"type":5}"#), None);
        assert_eq!(peek_type(r#"{"type":"PING"#), None);
        assert_eq!(peek_type("\u{a0}{\"type\":\"PING\"}"), None);
    }

    #[test]
    fn rejects_non_objects_and_missing_type() {
        assert!(parse_envelope("[1]").is_err());
        assert!(parse_envelope("nope").is_err());
        assert!(parse_envelope(r#"{"payload":{}}"#).is_err());
        assert!(parse_envelope(r#"{"type":5}"#).is_err());
    }

    /// A message with a field of every kind the fast path reads: its own readers (strings,
    /// integers, floats, booleans, options) and serde_json's (arrays, nested structs, values).
    #[derive(crate::Message, Debug, PartialEq)]
    #[message(type = "ALL")]
    struct All {
        s: String,
        b: bool,
        n: u8,
        i: i32,
        f: f64,
        o: Option<String>,
        v: Vec<u16>,
        nested: Inner,
        any: Value,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        k: Option<i64>,
    }

    /// A message with declared meta fields: read once the whole frame is (its `meta` may come
    /// after its `payload`).
    #[derive(crate::Message, Debug, PartialEq)]
    #[message(type = "TAGGED")]
    struct Tagged {
        n: u32,
        #[message(meta)]
        room: String,
        #[message(meta)]
        trace: Option<Vec<u8>>,
    }

    /// The full path's result for a frame: envelope, then the message's own decoder.
    fn full_path<M: Message>(text: &str) -> Option<(M, Meta)> {
        let env = parse_envelope(text).ok()?;
        if !env.issues.is_empty() || env.ty != M::TYPE {
            return None;
        }
        let message = M::__decode(env.payload, &env.meta_extra).ok()?;
        Some((message, env.meta))
    }

    /// Mutates `seeds` at random `rounds` times (one or two characters inserted, replaced or
    /// removed) and checks each result: whatever the fast path accepts, the full path accepts
    /// with the same message and meta. Returns how many frames each path accepted.
    fn mutate_and_compare<M: Message + PartialEq + std::fmt::Debug>(
        seeds: &[&str],
        rounds: usize,
    ) -> (usize, usize) {
        // Characters that matter to JSON, and a few that do not.
        let alphabet: Vec<char> = "{}[]\",:0159-.eE+ntrufalsx \t\né\u{1}\\".chars().collect();
        let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |bound: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % bound as u64) as usize
        };
        for seed in seeds {
            assert!(decode_direct::<M>(seed).is_some(), "seed declined: {seed}");
            assert_eq!(decode_direct::<M>(seed), full_path::<M>(seed), "{seed}");
        }
        let (mut fast_accepted, mut full_accepted) = (0, 0);
        for _ in 0..rounds {
            let mut chars: Vec<char> = seeds[next(seeds.len())].chars().collect();
            for _ in 0..1 + next(2) {
                let at = next(chars.len());
                match next(3) {
                    0 => chars[at] = alphabet[next(alphabet.len())],
                    1 => chars.insert(at, alphabet[next(alphabet.len())]),
                    _ => {
                        chars.remove(at);
                    }
                }
            }
            let text: String = chars.into_iter().collect();
            let full = full_path::<M>(&text);
            full_accepted += usize::from(full.is_some());
            if peek_type(&text) != Some(M::TYPE) {
                continue;
            }
            if let Some(fast) = decode_direct::<M>(&text) {
                fast_accepted += 1;
                let full = full
                    .unwrap_or_else(|| panic!("fast path accepted {text}; full path rejects it"));
                assert_eq!(fast, full, "{text}");
            }
        }
        (fast_accepted, full_accepted)
    }

    /// The fast path's promise, on frames mutated at random from valid ones: whatever it
    /// accepts, the full path accepts alike (it may decline more). The counts make sure a fast
    /// path that declines everything fails too.
    #[test]
    fn the_fast_path_accepts_only_what_the_full_path_accepts_alike() {
        let seeds = [
            r#"{"type":"ALL","payload":{"s":"hi","b":true,"n":7,"i":-3,"f":1.5,"o":null,"v":[1,2],"nested":{"k":5},"any":{"x":[1,"y"]}},"meta":{"correlationId":"c1","timestamp":1700000000000}}"#,
            r#"{"type":"ALL","payload":{"s":"","b":false,"n":255,"i":0,"f":-2e3,"o":"x","v":[],"nested":{},"any":null}}"#,
            r#"{"type":"ALL","payload":{"any":"\u00e9","nested":{"k":null},"v":[65535],"o":"é","f":0,"i":2147483647,"n":0,"b":true,"s":"a b"},"meta":{"timeoutMs":50,"idempotencyKey":"k","clientId":"z","receivedAt":1}}"#,
            r#"{ "type" : "ALL" , "payload" : { "s" : "t" , "b" : false , "n" : 1 , "i" : 1 , "f" : 1 , "v" : [ ] , "nested" : { } , "any" : 1 } , "meta" : null }"#,
        ];
        let (fast, full) = mutate_and_compare::<All>(&seeds, 40_000);
        // Most single mutations break a frame; a fair share must still be read by both.
        assert!(fast > 2_000, "fast path accepted only {fast}");
        assert!(full >= fast);

        let seeds = [
            r#"{"type":"TAGGED","payload":{"n":1},"meta":{"room":"r1","trace":[1,2],"correlationId":"c"}}"#,
            r#"{"type":"TAGGED","meta":{"room":"r"},"payload":{"n":0}}"#,
            r#"{"type":"TAGGED","payload":{"n":5},"meta":{"trace":null,"room":"x y","timestamp":1}}"#,
        ];
        let (fast, full) = mutate_and_compare::<Tagged>(&seeds, 40_000);
        assert!(fast > 1_000, "fast path accepted only {fast}");
        assert!(full >= fast);
    }
}
