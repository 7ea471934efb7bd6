//! The one-pass fast path: a whole frame decoded as one message type with the strict reader of
//! [`crate::scan`], declining (to the full path) on anything it does not fully understand.

use super::MAX_CORRELATION_ID;
use crate::message::{Message, Meta};
use crate::scan::{FastField, Scan};

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
/// (`parse_envelope` then `Codec::decode`) accepts too, with the same result; on anything
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
                meta = Some(scan_meta(&mut s, M::META_KEYS, &mut declared)?);
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
                meta = Some(scan_meta(&mut s, M::META_KEYS, &mut declared)?);
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
            let message = M::scan_payload(Some(&mut p), &declared)?;
            p.at_end().then_some(message)?
        }
        Some(Payload::Text(None)) | None => M::scan_payload(None, &declared)?,
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
    let deferred = !M::META_KEYS.is_empty();
    Some(match (s.null(), deferred) {
        (true, false) => Payload::Read(M::scan_payload(None, &[])?),
        (false, false) => Payload::Read(M::scan_payload(Some(s), &[])?),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::parse_envelope;
    use serde::{Deserialize, Serialize};
    use serde_json::Value;

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
        let message = M::decode(env.payload, &env.meta_extra).ok()?;
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
