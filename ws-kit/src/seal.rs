//! Sealed delivery (docs/protocol.md 7b): frames encrypted end to end, for deployments where TLS
//! ends before the application (a CDN, a proxy).
//!
//! The client puts its public key (an ephemeral P-256 key, [`KeyPair`]) in its authentication
//! request as `publicKey`; the server answers with its own public key and a salt ([`accept`],
//! [`Offer`]) and both sides derive the same [`SealKey`]: AES-256-GCM, 32 bytes from HKDF-SHA256
//! over the ECDH shared secret's x-coordinate, with that salt and the info `ws-kit e2e v1`. From
//! then on each frame travels as
//!
//! ```json
//! {"type":"$ws:encrypted","payload":{"iv":"<base64, 12 bytes>","data":"<base64 of ciphertext||tag>"}}
//! ```
//!
//! whose plaintext is the exact frame text that would have been sent in clear. Every frame gets a
//! fresh random IV; there is no associated data; base64 is the standard alphabet with padding. A
//! browser does the same with WebCrypto (`ECDH` P-256, `HKDF` SHA-256, `AES-GCM`).
//!
//! ```
//! use ws_kit::seal::{self, KeyPair};
//!
//! // Client: a key pair; its public key goes into the authentication request.
//! let client = KeyPair::generate();
//! // Server: a key of its own and a salt, sent back in the reply.
//! let (server_key, offer) = seal::accept(&client.public_key_base64())?;
//! // Client: the same key, from the reply.
//! let client_key = client.agree(&offer.server_public_key, &offer.salt)?;
//!
//! let sealed = server_key.seal(r#"{"type":"WELCOME","meta":{},"payload":{"text":"hi"}}"#);
//! assert!(seal::is_sealed_frame(&sealed));
//! assert_eq!(
//!     client_key.open(&sealed)?,
//!     r#"{"type":"WELCOME","meta":{},"payload":{"text":"hi"}}"#
//! );
//! # Ok::<(), ws_kit::seal::SealError>(())
//! ```
//!
//! The key exchange is not authenticated by itself: it keeps frames sealed from whatever sits
//! between the two ends (a CDN that terminates TLS), and relies on the authentication request
//! (a token the server checks) to know who asked.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hkdf::Hkdf;
use p256::elliptic_curve::Generate;
use p256::elliptic_curve::sec1::ToSec1Point;
use p256::elliptic_curve::zeroize::Zeroizing;
use p256::{PublicKey, SecretKey};
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::Sha256;
use std::borrow::Cow;
use std::fmt;

/// The type tag of a sealed frame.
pub const SEALED_TYPE: &str = "$ws:encrypted";

/// HKDF's info: the ASCII bytes `ws-kit e2e v1`.
const INFO: &[u8] = b"ws-kit e2e v1";
/// An uncompressed SEC1 P-256 point: `0x04 || x || y`.
const PUBLIC_KEY_LEN: usize = 65;
const SALT_LEN: usize = 16;
const IV_LEN: usize = 12;
/// AES-GCM's tag, after the ciphertext in `data`.
const TAG_LEN: usize = 16;

/// Why a key could not be agreed or a frame could not be opened.
///
/// The messages say what was wrong with the input and nothing about the keys, so they are safe
/// to send back to the peer (in an `INVALID_ARGUMENT` error, say).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SealError {
    /// A public key that is not base64 of an uncompressed P-256 point (65 bytes, `0x04 || x || y`)
    /// on the curve.
    InvalidPublicKey,
    /// A salt that is not base64 of 16 bytes.
    InvalidSalt,
    /// A frame that is not `{"type":"$ws:encrypted","payload":{"iv":..,"data":..}}` with base64
    /// strings, a 12-byte IV and data at least as long as the tag.
    InvalidFrame,
    /// The frame did not open: sealed with another key, or altered on the way.
    OpenFailed,
    /// The frame opened, but its plaintext is not UTF-8 text.
    NotText,
}

impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SealError::InvalidPublicKey => {
                "invalid public key: expected base64 of an uncompressed P-256 point (65 bytes)"
            }
            SealError::InvalidSalt => "invalid salt: expected base64 of 16 bytes",
            SealError::InvalidFrame => {
                "invalid sealed frame: expected {\"type\":\"$ws:encrypted\",\"payload\":{\"iv\",\"data\"}} with base64 strings and a 12-byte iv"
            }
            SealError::OpenFailed => {
                "the sealed frame did not open (another key, or altered on the way)"
            }
            SealError::NotText => "the sealed frame does not hold UTF-8 text",
        })
    }
}

impl std::error::Error for SealError {}

/// The AES-256-GCM key of one sealed connection: seals frames and opens them.
///
/// A clone copies the expanded key (a few hundred bytes). Its `Debug` output shows no key
/// material, and each copy is wiped when it is dropped.
#[derive(Clone)]
pub struct SealKey {
    cipher: Aes256Gcm,
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealKey").finish_non_exhaustive()
    }
}

impl SealKey {
    /// The key both sides derive: HKDF-SHA256 over the shared x-coordinate, with the salt and
    /// the info `ws-kit e2e v1`, expanded to 32 bytes.
    fn derive(shared_x: &[u8], salt: &[u8]) -> SealKey {
        let mut key = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(Some(salt), shared_x)
            .expand(INFO, key.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        SealKey {
            cipher: Aes256Gcm::new((&*key).into()),
        }
    }

    /// Seals one frame: the whole `$ws:encrypted` frame text, with a fresh random IV.
    ///
    /// Panics only if the operating system's random source fails.
    pub fn seal(&self, frame: &str) -> String {
        self.seal_with_iv(frame, &<[u8; IV_LEN]>::generate())
    }

    fn seal_with_iv(&self, frame: &str, iv: &[u8; IV_LEN]) -> String {
        let data = self
            .cipher
            .encrypt(&Nonce::from(*iv), frame.as_bytes())
            .expect("AES-GCM seals any frame a WebSocket can carry (< 64 GiB)");
        // Base64 needs no JSON escaping.
        format!(
            "{{\"type\":\"{SEALED_TYPE}\",\"payload\":{{\"iv\":\"{}\",\"data\":\"{}\"}}}}",
            STANDARD.encode(iv),
            STANDARD.encode(data)
        )
    }

    /// Opens a sealed frame and returns the frame text it holds.
    ///
    /// The frame must be a JSON object of exactly `type` (`$ws:encrypted`) and `payload`, the
    /// payload exactly `iv` (base64 of 12 bytes) and `data` (base64 of ciphertext and tag), in any
    /// key order and spacing. Never panics, whatever the input.
    pub fn open(&self, frame: &str) -> Result<String, SealError> {
        let sealed: SealedFrame<'_> = from_object(frame).ok_or(SealError::InvalidFrame)?;
        let payload: SealedPayload<'_> =
            from_object(sealed.payload.get()).ok_or(SealError::InvalidFrame)?;
        if sealed.ty != SEALED_TYPE {
            return Err(SealError::InvalidFrame);
        }
        let iv: [u8; IV_LEN] = decode_exact(&payload.iv).ok_or(SealError::InvalidFrame)?;
        let data = STANDARD
            .decode(payload.data.as_bytes())
            .map_err(|_| SealError::InvalidFrame)?;
        if data.len() < TAG_LEN {
            return Err(SealError::InvalidFrame);
        }
        let plain = self
            .cipher
            .decrypt(&Nonce::from(iv), data.as_slice())
            .map_err(|_| SealError::OpenFailed)?;
        String::from_utf8(plain).map_err(|_| SealError::NotText)
    }
}

/// A sealed frame as [`SealKey::open`] reads it: nothing more, nothing less.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedFrame<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(borrow)]
    payload: &'a RawValue,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedPayload<'a> {
    #[serde(borrow)]
    iv: Cow<'a, str>,
    #[serde(borrow)]
    data: Cow<'a, str>,
}

/// `T` from a JSON object: a derived `Deserialize` alone would take an array as well.
pub(crate) fn from_object<'a, T: Deserialize<'a>>(json: &'a str) -> Option<T> {
    if !json.trim_start().starts_with('{') {
        return None;
    }
    serde_json::from_str(json).ok()
}

/// Whether a frame claims to be sealed: a JSON object whose `type` is `$ws:encrypted`, in any key
/// order and spacing. Whether it really opens is [`SealKey::open`]'s business.
///
/// Cheap: a frame that starts `{"type":"` (as `JSON.stringify` and ws-kit write them) is decided
/// by its first bytes; any other layout takes one parse that skips everything but `type`.
pub fn is_sealed_frame(text: &str) -> bool {
    const OPENING: &str = "{\"type\":\"";
    if let Some(rest) = text.strip_prefix(OPENING)
        && let Some(end) = rest.find(['"', '\\'])
        && rest.as_bytes()[end] == b'"'
    {
        // A plain (unescaped) first `type`: a later duplicate makes the frame invalid anyway.
        return &rest[..end] == SEALED_TYPE;
    }
    #[derive(Deserialize)]
    struct Peek<'a> {
        #[serde(rename = "type", borrow)]
        ty: Option<Cow<'a, str>>,
    }
    from_object::<Peek<'_>>(text).is_some_and(|peek| peek.ty.as_deref() == Some(SEALED_TYPE))
}

/// An ephemeral P-256 key pair: a client's side of the exchange.
///
/// Its `Debug` output shows the public key only; the secret is wiped when the pair is dropped.
pub struct KeyPair {
    secret: SecretKey,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public_key", &self.public_key_base64())
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// A fresh key pair from the operating system's random source (panics only if that fails).
    pub fn generate() -> KeyPair {
        KeyPair {
            secret: SecretKey::generate(),
        }
    }

    /// The public key as it goes on the wire (`publicKey`, `serverPublicKey`): base64 of the
    /// uncompressed SEC1 point, 65 bytes.
    pub fn public_key_base64(&self) -> String {
        encode_public_key(&self.secret.public_key())
    }

    /// The key this pair shares with the peer whose public key and salt are given (both base64,
    /// as on the wire: a server's `serverPublicKey` and `salt`). Fails on a key that is not base64
    /// of an uncompressed P-256 point on the curve, or a salt that is not base64 of 16 bytes.
    pub fn agree(&self, peer_public_base64: &str, salt_base64: &str) -> Result<SealKey, SealError> {
        let peer = decode_public_key(peer_public_base64)?;
        let salt: [u8; SALT_LEN] = decode_exact(salt_base64).ok_or(SealError::InvalidSalt)?;
        let shared = self.secret.diffie_hellman(&peer);
        Ok(SealKey::derive(shared.raw_secret_bytes(), &salt))
    }
}

/// A server's answer to a client's public key, as it goes into the authentication reply.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Offer {
    /// `serverPublicKey`: base64 of the server's uncompressed P-256 point, 65 bytes.
    pub server_public_key: String,
    /// `salt`: base64 of 16 random bytes.
    pub salt: String,
}

/// The server's side of the exchange: takes the client's `publicKey` (base64), makes a fresh key
/// pair and a 16-byte salt, and returns the connection's key with the [`Offer`] to send back.
///
/// Fails only on a `publicKey` that is not base64 of an uncompressed P-256 point on the curve
/// ([`SealError::InvalidPublicKey`]).
pub fn accept(client_public_base64: &str) -> Result<(SealKey, Offer), SealError> {
    let client = decode_public_key(client_public_base64)?;
    let server = KeyPair::generate();
    let salt = <[u8; SALT_LEN]>::generate();
    let shared = server.secret.diffie_hellman(&client);
    let key = SealKey::derive(shared.raw_secret_bytes(), &salt);
    let offer = Offer {
        server_public_key: server.public_key_base64(),
        salt: STANDARD.encode(salt),
    };
    Ok((key, offer))
}

fn encode_public_key(key: &PublicKey) -> String {
    STANDARD.encode(key.to_sec1_point(false).as_bytes())
}

/// Only the uncompressed form (`0x04 || x || y`), as WebCrypto's `raw` export writes it; the
/// point must be on the curve and not the identity.
fn decode_public_key(base64: &str) -> Result<PublicKey, SealError> {
    let bytes: [u8; PUBLIC_KEY_LEN] = decode_exact(base64).ok_or(SealError::InvalidPublicKey)?;
    if bytes[0] != 0x04 {
        return Err(SealError::InvalidPublicKey);
    }
    PublicKey::from_sec1_bytes(&bytes).map_err(|_| SealError::InvalidPublicKey)
}

/// Standard base64 (with padding) of exactly `N` bytes.
fn decode_exact<const N: usize>(base64: &str) -> Option<[u8; N]> {
    // Base64 of N bytes is 4 * ceil(N / 3) characters: no need to decode anything longer.
    if base64.len() != N.div_ceil(3) * 4 {
        return None;
    }
    let bytes = STANDARD.decode(base64.as_bytes()).ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ProjectivePoint;
    use p256::elliptic_curve::point::AffineCoordinates;
    use serde_json::{Value, json};

    const FRAME: &str = r#"{"type":"WELCOME","meta":{},"payload":{"text":"héllo"}}"#;

    fn pair() -> (SealKey, SealKey) {
        let client = KeyPair::generate();
        let (server_key, offer) = accept(&client.public_key_base64()).unwrap();
        let client_key = client.agree(&offer.server_public_key, &offer.salt).unwrap();
        (client_key, server_key)
    }

    fn b64(bytes: &[u8]) -> String {
        STANDARD.encode(bytes)
    }

    #[test]
    fn both_sides_agree_and_frames_round_trip_both_ways() {
        let (client, server) = pair();
        let down = server.seal(FRAME);
        assert_eq!(client.open(&down).unwrap(), FRAME);
        let up = client.seal(r#"{"type":"PING","meta":{"correlationId":"c1"}}"#);
        assert_eq!(
            server.open(&up).unwrap(),
            r#"{"type":"PING","meta":{"correlationId":"c1"}}"#
        );
        // A key opens what it sealed itself, too: one key per connection, both directions.
        assert_eq!(server.open(&server.seal("x")).unwrap(), "x");
        assert_eq!(client.open(&client.seal("")).unwrap(), "");
    }

    #[test]
    fn the_frame_text_is_exactly_type_then_payload_iv_then_data() {
        let (client, server) = pair();
        let sealed = server.seal(FRAME);
        let prefix = r#"{"type":"$ws:encrypted","payload":{"iv":""#;
        assert!(sealed.starts_with(prefix), "{sealed}");
        let rest = &sealed[prefix.len()..];
        let (iv, rest) = rest.split_once('"').unwrap();
        let rest = rest.strip_prefix(r#","data":""#).unwrap();
        let (data, rest) = rest.split_once('"').unwrap();
        assert_eq!(rest, "}}");
        assert_eq!(STANDARD.decode(iv).unwrap().len(), IV_LEN);
        assert_eq!(
            STANDARD.decode(data).unwrap().len(),
            FRAME.len() + TAG_LEN,
            "ciphertext || tag"
        );
        // It is JSON, too.
        let value: Value = serde_json::from_str(&sealed).unwrap();
        assert_eq!(value["type"], SEALED_TYPE);
        assert_eq!(client.open(&sealed).unwrap(), FRAME);
    }

    #[test]
    fn every_seal_has_a_fresh_iv() {
        let (_, server) = pair();
        let a = server.seal(FRAME);
        let b = server.seal(FRAME);
        assert_ne!(a, b);
        let iv = |s: &str| serde_json::from_str::<Value>(s).unwrap()["payload"]["iv"].clone();
        assert_ne!(iv(&a), iv(&b));
    }

    #[test]
    fn tampering_and_other_keys_fail_to_open() {
        let (client, server) = pair();
        let sealed: Value = serde_json::from_str(&server.seal(FRAME)).unwrap();
        let iv = STANDARD
            .decode(sealed["payload"]["iv"].as_str().unwrap())
            .unwrap();
        let data = STANDARD
            .decode(sealed["payload"]["data"].as_str().unwrap())
            .unwrap();
        let frame = |iv: &[u8], data: &[u8]| {
            json!({"type": SEALED_TYPE, "payload": {"iv": b64(iv), "data": b64(data)}}).to_string()
        };
        assert_eq!(client.open(&frame(&iv, &data)).unwrap(), FRAME);
        for i in [0, data.len() / 2, data.len() - 1] {
            let mut bad = data.clone();
            bad[i] ^= 1;
            assert_eq!(
                client.open(&frame(&iv, &bad)),
                Err(SealError::OpenFailed),
                "byte {i}"
            );
        }
        let mut bad_iv = iv.clone();
        bad_iv[0] ^= 0x80;
        assert_eq!(
            client.open(&frame(&bad_iv, &data)),
            Err(SealError::OpenFailed)
        );
        assert_eq!(
            client.open(&frame(&iv, &data[..data.len() - 1])),
            Err(SealError::OpenFailed),
            "truncated"
        );
        let (stranger, _) = pair();
        assert_eq!(
            stranger.open(&frame(&iv, &data)),
            Err(SealError::OpenFailed)
        );
    }

    #[test]
    fn malformed_frames_are_errors_never_panics() {
        let (client, _) = pair();
        let iv = b64(&[7; IV_LEN]);
        let data = b64(&[9; 40]);
        let cases = [
            String::new(),
            "not json".into(),
            "[]".into(),
            "null".into(),
            r#"{"type":"$ws:encrypted"}"#.into(),
            format!(r#"{{"payload":{{"iv":"{iv}","data":"{data}"}}}}"#),
            format!(r#"{{"type":"OTHER","payload":{{"iv":"{iv}","data":"{data}"}}}}"#),
            format!(r#"{{"type":"$ws:encrypted","payload":{{"data":"{data}"}}}}"#),
            format!(r#"{{"type":"$ws:encrypted","payload":{{"iv":"{iv}"}}}}"#),
            format!(r#"{{"type":"$ws:encrypted","payload":{{"iv":7,"data":"{data}"}}}}"#),
            format!(r#"{{"type":"$ws:encrypted","payload":{{"iv":"{iv}","data":null}}}}"#),
            r#"{"type":"$ws:encrypted","payload":"x"}"#.into(),
            // Arrays where objects belong (serde's derives would take them).
            format!(r#"["$ws:encrypted",{{"iv":"{iv}","data":"{data}"}}]"#),
            format!(r#"{{"type":"$ws:encrypted","payload":["{iv}","{data}"]}}"#),
            // Not base64, base64 without padding, the URL-safe alphabet.
            format!(
                r#"{{"type":"$ws:encrypted","payload":{{"iv":"!!!!!!!!!!!!!!!!","data":"{data}"}}}}"#
            ),
            format!(r#"{{"type":"$ws:encrypted","payload":{{"iv":"{iv}","data":"%%%%"}}}}"#),
            format!(
                r#"{{"type":"$ws:encrypted","payload":{{"iv":"{iv}","data":"{}"}}}}"#,
                data.trim_end_matches('=')
            ),
            format!(
                r#"{{"type":"$ws:encrypted","payload":{{"iv":"{}","data":"{data}"}}}}"#,
                b64(&[0xfb; IV_LEN]).replace('+', "-").replace('/', "_")
            ),
            // Wrong IV lengths.
            format!(
                r#"{{"type":"$ws:encrypted","payload":{{"iv":"{}","data":"{data}"}}}}"#,
                b64(&[7; 11])
            ),
            format!(
                r#"{{"type":"$ws:encrypted","payload":{{"iv":"{}","data":"{data}"}}}}"#,
                b64(&[7; 16])
            ),
            // Data shorter than the tag.
            format!(
                r#"{{"type":"$ws:encrypted","payload":{{"iv":"{iv}","data":"{}"}}}}"#,
                b64(&[1; 15])
            ),
            // Unknown keys, duplicate keys.
            format!(
                r#"{{"type":"$ws:encrypted","payload":{{"iv":"{iv}","data":"{data}","x":1}}}}"#
            ),
            format!(
                r#"{{"type":"$ws:encrypted","meta":{{}},"payload":{{"iv":"{iv}","data":"{data}"}}}}"#
            ),
            format!(
                r#"{{"type":"$ws:encrypted","type":"$ws:encrypted","payload":{{"iv":"{iv}","data":"{data}"}}}}"#
            ),
            format!(
                r#"{{"type":"$ws:encrypted","payload":{{"iv":"{iv}","data":"{data}"}}}} trailing"#
            ),
        ];
        for case in &cases {
            assert_eq!(client.open(case), Err(SealError::InvalidFrame), "{case}");
        }
        // Well formed, wrong key: the tag check fails.
        let ok_shape =
            format!(r#"{{"type":"$ws:encrypted","payload":{{"iv":"{iv}","data":"{data}"}}}}"#);
        assert_eq!(client.open(&ok_shape), Err(SealError::OpenFailed));
        // Every prefix of a real sealed frame, and every one-byte change of it: errors, no panic.
        let sealed = client.seal(FRAME);
        for end in 0..sealed.len() {
            if sealed.is_char_boundary(end) {
                assert!(client.open(&sealed[..end]).is_err());
            }
        }
        let bytes = sealed.as_bytes();
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x20] {
                let mut changed = bytes.to_vec();
                changed[i] ^= flip;
                if let Ok(text) = std::str::from_utf8(&changed) {
                    // Only JSON's insignificant changes could still open; none here may panic.
                    let _ = client.open(text);
                }
            }
        }
    }

    #[test]
    fn any_key_order_and_spacing_opens() {
        let (client, server) = pair();
        let sealed: Value = serde_json::from_str(&server.seal(FRAME)).unwrap();
        let (iv, data) = (
            sealed["payload"]["iv"].as_str().unwrap(),
            sealed["payload"]["data"].as_str().unwrap(),
        );
        let reordered = format!(
            "{{ \"payload\" : {{ \"data\" : \"{data}\" ,\n \"iv\":\"{iv}\" }} , \"type\" : \"$ws:encrypted\" }}"
        );
        assert!(is_sealed_frame(&reordered));
        assert_eq!(client.open(&reordered).unwrap(), FRAME);
        let escaped =
            format!(r#"{{"type":"\u0024ws:encrypted","payload":{{"iv":"{iv}","data":"{data}"}}}}"#);
        assert!(is_sealed_frame(&escaped));
        assert_eq!(client.open(&escaped).unwrap(), FRAME);
    }

    #[test]
    fn plaintext_that_is_not_utf8_is_refused() {
        let (client, server) = pair();
        let iv = [3u8; IV_LEN];
        let data = server
            .cipher
            .encrypt(&Nonce::from(iv), &[0xff, 0xfe][..])
            .unwrap();
        let frame = json!({"type": SEALED_TYPE, "payload": {"iv": b64(&iv), "data": b64(&data)}});
        assert_eq!(client.open(&frame.to_string()), Err(SealError::NotText));
    }

    #[test]
    fn sealed_frames_are_recognised_cheaply_and_correctly() {
        let (_, server) = pair();
        assert!(is_sealed_frame(&server.seal(FRAME)));
        for yes in [
            r#"{"type":"$ws:encrypted"}"#,
            r#"{"payload":{},"type":"$ws:encrypted"}"#,
            r#" { "type" : "$ws:encrypted" , "payload" : 1 } "#,
            r#"{"meta":{"type":"x"},"type":"$ws:encrypted"}"#,
        ] {
            assert!(is_sealed_frame(yes), "{yes}");
        }
        for no in [
            "",
            "{",
            "not json",
            r#"["$ws:encrypted"]"#,
            r#"{"type":"WELCOME","payload":{"type":"$ws:encrypted"}}"#,
            r#"{"payload":{"type":"$ws:encrypted"},"type":"WELCOME"}"#,
            r#"{"type":"$ws:encrypted2"}"#,
            r#"{"type":"$ws:encrypte"}"#,
            r#"{"type":"$ws:encrypted"#,
            r#"{"type":null}"#,
            r#"{"type":1,"x":"$ws:encrypted"}"#,
            FRAME,
        ] {
            assert!(!is_sealed_frame(no), "{no}");
        }
    }

    #[test]
    fn bad_public_keys_and_salts_are_refused() {
        let client = KeyPair::generate();
        let (_, offer) = accept(&client.public_key_base64()).unwrap();
        let raw = STANDARD.decode(client.public_key_base64()).unwrap();
        assert_eq!(raw.len(), PUBLIC_KEY_LEN);
        assert_eq!(raw[0], 0x04);

        let compressed = {
            let key = client.secret.public_key();
            b64(key.to_sec1_point(true).as_bytes())
        };
        let mut off_curve = raw.clone();
        off_curve[64] ^= 1;
        let mut identity = vec![0u8; PUBLIC_KEY_LEN];
        identity[0] = 0x04;
        for bad in [
            String::new(),
            "not base64!".into(),
            compressed,
            b64(&raw[..64]),
            b64(&[raw.as_slice(), &[0]].concat()),
            b64(&off_curve),
            b64(&identity),
            client.public_key_base64().trim_end_matches('=').to_string(),
        ] {
            assert_eq!(
                accept(&bad).map(|_| ()),
                Err(SealError::InvalidPublicKey),
                "{bad}"
            );
            assert_eq!(
                client.agree(&bad, &offer.salt).map(|_| ()),
                Err(SealError::InvalidPublicKey),
                "{bad}"
            );
        }
        for bad in [
            String::new(),
            b64(&[1; 15]),
            b64(&[1; 17]),
            b64(&[1; 32]),
            "!!!!!!!!!!!!!!!!!!!!!!!!".into(),
            b64(&[1; 16]).trim_end_matches('=').to_string(),
        ] {
            assert_eq!(
                client.agree(&offer.server_public_key, &bad).map(|_| ()),
                Err(SealError::InvalidSalt),
                "{bad}"
            );
        }
    }

    /// The derivation, done here with the primitives themselves: the x-coordinate of
    /// `client_secret × server_public`, HKDF-SHA256 with the salt and `ws-kit e2e v1`, 32 bytes,
    /// AES-256-GCM over the frame text without associated data.
    #[test]
    fn the_key_is_hkdf_sha256_of_the_shared_x_coordinate() {
        let client = KeyPair::generate();
        let server = KeyPair::generate();
        let salt = [0x5au8; SALT_LEN];
        let key = client
            .agree(&server.public_key_base64(), &b64(&salt))
            .unwrap();

        let point = (ProjectivePoint::from(*server.secret.public_key().as_affine())
            * *client.secret.to_nonzero_scalar())
        .to_affine();
        let x = point.x();
        let other_way = (ProjectivePoint::from(*client.secret.public_key().as_affine())
            * *server.secret.to_nonzero_scalar())
        .to_affine()
        .x();
        assert_eq!(x, other_way);
        let mut okm = [0u8; 32];
        hkdf::Hkdf::<sha2::Sha256>::new(Some(&salt), &x)
            .expand(b"ws-kit e2e v1", &mut okm)
            .unwrap();
        let cipher = Aes256Gcm::new(&okm.into());

        let iv = [0x11u8; IV_LEN];
        let expected = cipher.encrypt(&Nonce::from(iv), FRAME.as_bytes()).unwrap();
        let sealed: Value = serde_json::from_str(&key.seal_with_iv(FRAME, &iv)).unwrap();
        assert_eq!(sealed["payload"]["data"], b64(&expected));
        assert_eq!(sealed["payload"]["iv"], b64(&iv));
        // And the other side's key is the same one.
        let from_server = server
            .agree(&client.public_key_base64(), &b64(&salt))
            .unwrap();
        assert_eq!(from_server.open(&key.seal(FRAME)).unwrap(), FRAME);
    }

    /// Fixed keys, salt and IV; the expected values were computed with WebCrypto (Node 20:
    /// `ECDH` P-256 `deriveBits` 256, `HKDF` SHA-256, `AES-GCM` 256), not with this module.
    #[test]
    fn known_answer_from_webcrypto() {
        let client = KeyPair {
            secret: SecretKey::from_slice(&core::array::from_fn::<u8, 32, _>(|i| i as u8 + 1))
                .unwrap(),
        };
        let server = KeyPair {
            secret: SecretKey::from_slice(&core::array::from_fn::<u8, 32, _>(|i| 0xa0 - i as u8))
                .unwrap(),
        };
        let salt = b64(&core::array::from_fn::<u8, 16, _>(|i| i as u8));
        assert_eq!(client.public_key_base64(), KAT_CLIENT_PUBLIC);
        assert_eq!(server.public_key_base64(), KAT_SERVER_PUBLIC);
        let key = client.agree(KAT_SERVER_PUBLIC, &salt).unwrap();
        let iv = core::array::from_fn::<u8, 12, _>(|i| 0xc0 + i as u8);
        assert_eq!(key.seal_with_iv(FRAME, &iv), KAT_SEALED);
        let key = server.agree(KAT_CLIENT_PUBLIC, &salt).unwrap();
        assert_eq!(key.open(KAT_SEALED).unwrap(), FRAME);
    }

    const KAT_CLIENT_PUBLIC: &str =
        "BFFcPW6545a5BNP+yn9U/c0MwemXvzddylFa0KbDtANfRTa+OlDzGPv5pUdZAqIhUCvvDVfgjFOyzApW8X2fk1Q=";
    const KAT_SERVER_PUBLIC: &str =
        "BEbXWG9PeO4pz5rlpfpMTt79L3zOTtobAwvgNNCr1KRZuHa7hf/IYF6/bcBh6IW0TUheqGt49kNB36Ay/YUXR3Y=";
    const KAT_SEALED: &str = r#"{"type":"$ws:encrypted","payload":{"iv":"wMHCw8TFxsfIycrL","data":"HovluSkLkoRXZ9LjhbZ1LpeOpx09V+bSbVsfGjsCICf0zLLl38haBf72y6I/p8zDqDcE/vO5yS2DkfXUTDVarLLZo/WCu2N4"}}"#;

    #[test]
    fn debug_output_shows_no_secrets() {
        let pair = KeyPair::generate();
        let shown = format!("{pair:?}");
        assert!(shown.contains(&pair.public_key_base64()), "{shown}");
        assert!(!shown.contains(&b64(&pair.secret.to_bytes())), "{shown}");
        let (key, _) = accept(&pair.public_key_base64()).unwrap();
        assert_eq!(format!("{key:?}"), "SealKey { .. }");
        let error = SealError::OpenFailed;
        assert!(!error.to_string().is_empty());
    }
}
