//! Parsing a client → server envelope on the full path: the root object once, `payload` and
//! non-standard meta left raw until the message type is known. The same first pass reads server
//! frames for clients ([`super::client_codec`]).

use super::{MAX_CORRELATION_ID, strip_position};
use crate::error::Issue;
use crate::message::Meta;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// A parsed client → server envelope; `payload` and unknown meta keys stay raw until the message
/// type is known.
#[derive(Debug)]
pub(crate) struct Envelope<'a> {
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

/// The first pass over a frame: the root object, with `payload` left raw.
pub(super) struct RawEnvelope<'a> {
    pub(super) ty: Option<Cow<'a, str>>,
    pub(super) payload: Option<&'a RawValue>,
    pub(super) meta: Vec<(Cow<'a, str>, &'a RawValue)>,
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
    fn rejects_non_objects_and_missing_type() {
        assert!(parse_envelope("[1]").is_err());
        assert!(parse_envelope("nope").is_err());
        assert!(parse_envelope(r#"{"payload":{}}"#).is_err());
        assert!(parse_envelope(r#"{"type":5}"#).is_err());
    }
}
