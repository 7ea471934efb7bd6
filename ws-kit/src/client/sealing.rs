//! Sealed delivery on the client's side (docs/protocol.md 7b): the client's key pair, and one
//! session's key — what a server frame becomes before it is routed, what a frame becomes as it is
//! written.

use crate::seal::{KeyPair, SealError, SealKey, from_object, is_sealed_frame};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// The client's key pair (kept for the client's life, across reconnects) and its public key as
/// it goes on the wire.
pub(super) struct Sealing {
    keys: KeyPair,
    pub(super) public_key: String,
}

impl Sealing {
    pub(super) fn generate() -> Self {
        let keys = KeyPair::generate();
        let public_key = keys.public_key_base64();
        Sealing { keys, public_key }
    }
}

/// One session's sealing: clear until the authentication reply brings the server's key, sealed
/// both ways from then on. The reader (`inbound`) sets the key, the writer (`outbound`) reads it;
/// both run on the session's task, and the key is set once, so a frame the writer seals is never
/// followed by one in clear.
pub(super) struct SessionSeal<'a> {
    sealing: Option<&'a Sealing>,
    key: OnceLock<SealKey>,
    /// `Client::is_sealed`: set with the key, cleared when the session ends.
    flag: &'a AtomicBool,
}

/// Why a frame from the server was dropped.
#[derive(Debug)]
pub(super) enum Rejected {
    /// A sealed frame that does not open.
    Unopened(SealError),
    /// A frame in clear after the server started sealing.
    Clear,
    /// A sealed frame before the authentication reply brought the key.
    NoKey,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejected::Unopened(e) => e.fmt(f),
            Rejected::Clear => f.write_str("a frame in clear after sealing started"),
            Rejected::NoKey => f.write_str("a sealed frame before the server's key arrived"),
        }
    }
}

impl<'a> SessionSeal<'a> {
    /// A session's sealing, in clear; `None`: the client does not seal (frames pass untouched).
    pub(super) fn new(sealing: Option<&'a Sealing>, flag: &'a AtomicBool) -> Self {
        flag.store(false, Ordering::Release);
        SessionSeal {
            sealing,
            key: OnceLock::new(),
            flag,
        }
    }

    /// A frame from the server as it is to be routed: opened once sealing started; before that,
    /// as it came, and if it is the authentication reply (`serverPublicKey` and `salt` in its
    /// payload) the key is derived first, so the frame after it can be read.
    pub(super) fn inbound<'t>(&self, text: &'t str) -> Result<Cow<'t, str>, Rejected> {
        let Some(sealing) = self.sealing else {
            return Ok(Cow::Borrowed(text));
        };
        if let Some(key) = self.key.get() {
            if !is_sealed_frame(text) {
                return Err(Rejected::Clear);
            }
            return key.open(text).map(Cow::Owned).map_err(Rejected::Unopened);
        }
        if is_sealed_frame(text) {
            return Err(Rejected::NoKey);
        }
        if let Some(offer) = offer_in(text) {
            match sealing.keys.agree(&offer.server_public_key, &offer.salt) {
                Ok(key) => {
                    let _ = self.key.set(key);
                    self.flag.store(true, Ordering::Release);
                }
                Err(e) => tracing::warn!(
                    "ws-kit client: the server's sealing offer is unusable ({e}); frames stay in clear"
                ),
            }
        }
        Ok(Cow::Borrowed(text))
    }

    /// A frame as it is written: sealed once the key is known.
    pub(super) fn outbound(&self, text: String) -> String {
        match self.key.get() {
            Some(key) => key.seal(&text),
            None => text,
        }
    }
}

impl Drop for SessionSeal<'_> {
    fn drop(&mut self) {
        self.flag.store(false, Ordering::Release);
    }
}

/// `serverPublicKey` and `salt` of a frame's payload, when both are strings.
fn offer_in(text: &str) -> Option<Offer<'_>> {
    #[derive(Deserialize)]
    struct Frame<'a> {
        #[serde(borrow)]
        payload: Option<&'a RawValue>,
    }
    #[derive(Deserialize)]
    struct PayloadPeek<'a> {
        #[serde(rename = "serverPublicKey", borrow)]
        server_public_key: Option<Cow<'a, str>>,
        #[serde(borrow)]
        salt: Option<Cow<'a, str>>,
    }
    let frame: Frame<'_> = from_object(text)?;
    let payload: PayloadPeek<'_> = from_object(frame.payload?.get())?;
    Some(Offer {
        server_public_key: payload.server_public_key?,
        salt: payload.salt?,
    })
}

struct Offer<'a> {
    server_public_key: Cow<'a, str>,
    salt: Cow<'a, str>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal;
    use serde_json::json;

    const WELCOME: &str = r#"{"type":"WELCOME","meta":{},"payload":{"message":"hi"}}"#;

    fn reply(offer: &seal::Offer) -> String {
        json!({
            "type": "AUTH_OK",
            "meta": {"correlationId": "c1"},
            "payload": {"serverPublicKey": offer.server_public_key, "salt": offer.salt},
        })
        .to_string()
    }

    #[test]
    fn without_sealing_frames_pass_untouched() {
        let flag = AtomicBool::new(false);
        let session = SessionSeal::new(None, &flag);
        let sealing = Sealing::generate();
        let (key, offer) = seal::accept(&sealing.public_key).unwrap();
        let sealed = key.seal(WELCOME);
        for text in [WELCOME, &reply(&offer), &sealed] {
            assert!(matches!(session.inbound(text), Ok(Cow::Borrowed(t)) if t == text));
        }
        assert_eq!(session.outbound(WELCOME.into()), WELCOME);
        assert!(!flag.load(Ordering::Acquire));
    }

    #[test]
    fn the_authentication_reply_starts_sealing_both_ways() {
        let sealing = Sealing::generate();
        let flag = AtomicBool::new(false);
        let session = SessionSeal::new(Some(&sealing), &flag);
        let (server, offer) = seal::accept(&sealing.public_key).unwrap();

        // Clear until the reply; frames written meanwhile go in clear.
        assert_eq!(session.inbound(WELCOME).unwrap(), WELCOME);
        assert_eq!(
            session.outbound("{\"type\":\"PING\"}".into()),
            "{\"type\":\"PING\"}"
        );
        assert!(matches!(
            session.inbound(&server.seal(WELCOME)),
            Err(Rejected::NoKey)
        ));
        assert!(!flag.load(Ordering::Acquire));

        // The reply itself is routed as it came, and the key is there before it is.
        let reply = reply(&offer);
        assert_eq!(session.inbound(&reply).unwrap(), reply);
        assert!(flag.load(Ordering::Acquire));

        // Server → client: opened; clear or unopenable frames are dropped.
        assert_eq!(session.inbound(&server.seal(WELCOME)).unwrap(), WELCOME);
        assert!(matches!(session.inbound(WELCOME), Err(Rejected::Clear)));
        let (stranger, _) = seal::accept(&sealing.public_key).unwrap();
        assert!(matches!(
            session.inbound(&stranger.seal(WELCOME)),
            Err(Rejected::Unopened(SealError::OpenFailed))
        ));
        let malformed = r#"{"type":"$ws:encrypted","payload":{}}"#;
        assert!(matches!(
            session.inbound(malformed),
            Err(Rejected::Unopened(SealError::InvalidFrame))
        ));

        // Client → server: sealed with the same key, a fresh IV each time.
        let heartbeat = "{\"type\":\"__heartbeat\",\"meta\":{\"timestamp\":1}}";
        let a = session.outbound(heartbeat.into());
        let b = session.outbound(heartbeat.into());
        assert_ne!(a, b);
        assert_eq!(server.open(&a).unwrap(), heartbeat);
        assert_eq!(server.open(&b).unwrap(), heartbeat);

        // A second offer on the same session changes nothing (it arrives sealed or is refused).
        let (_, other) = seal::accept(&sealing.public_key).unwrap();
        assert!(matches!(
            session.inbound(&self::reply(&other)),
            Err(Rejected::Clear)
        ));
        assert_eq!(session.inbound(&server.seal(WELCOME)).unwrap(), WELCOME);

        // The next session (a reconnect) starts in clear, with the same key pair.
        drop(session);
        assert!(!flag.load(Ordering::Acquire));
        let next = SessionSeal::new(Some(&sealing), &flag);
        assert_eq!(next.inbound(WELCOME).unwrap(), WELCOME);
        assert_eq!(next.outbound(WELCOME.into()), WELCOME);
        let (server2, offer2) = seal::accept(&sealing.public_key).unwrap();
        next.inbound(&self::reply(&offer2)).unwrap();
        assert_eq!(
            server2.open(&next.outbound(WELCOME.into())).unwrap(),
            WELCOME
        );
        assert!(
            server.open(&next.outbound(WELCOME.into())).is_err(),
            "a new salt, a new key"
        );
    }

    #[test]
    fn an_unusable_offer_leaves_the_session_in_clear() {
        let sealing = Sealing::generate();
        let flag = AtomicBool::new(false);
        let session = SessionSeal::new(Some(&sealing), &flag);
        let bad =
            json!({"type": "AUTH_OK", "payload": {"serverPublicKey": "AAAA", "salt": "AAAA"}})
                .to_string();
        assert_eq!(session.inbound(&bad).unwrap(), bad);
        assert!(!flag.load(Ordering::Acquire));
        assert_eq!(session.outbound(WELCOME.into()), WELCOME);
        assert_eq!(session.inbound(WELCOME).unwrap(), WELCOME);
    }

    #[test]
    fn only_string_fields_of_the_payload_make_an_offer() {
        let yes = [
            r#"{"type":"A","payload":{"serverPublicKey":"k","salt":"s"}}"#,
            r#"{"payload":{"salt":"s","x":[1,{"y":2}],"serverPublicKey":"k"},"meta":{},"type":"A"}"#,
            r#"{ "payload" : { "server\u0050ublicKey" : "k" , "salt" : "s" } }"#,
        ];
        for text in yes {
            let offer = offer_in(text).unwrap_or_else(|| panic!("{text}"));
            assert_eq!((&*offer.server_public_key, &*offer.salt), ("k", "s"));
        }
        let no = [
            r#"{"type":"A","payload":{"serverPublicKey":"k"}}"#,
            r#"{"type":"A","payload":{"salt":"s"}}"#,
            r#"{"type":"A","payload":{"serverPublicKey":1,"salt":"s"}}"#,
            r#"{"type":"A","payload":{"serverPublicKey":"k","salt":null}}"#,
            r#"{"type":"A","payload":{"inner":{"serverPublicKey":"k","salt":"s"}}}"#,
            r#"{"type":"A","meta":{"serverPublicKey":"k","salt":"s"}}"#,
            r#"{"type":"A","serverPublicKey":"k","salt":"s"}"#,
            r#"{"type":"A","payload":"x"}"#,
            r#"{"type":"A","payload":["k","s"]}"#,
            r#"[{"serverPublicKey":"k","salt":"s"}]"#,
            r#"{"type":"A"}"#,
            "not json",
        ];
        for text in no {
            assert!(offer_in(text).is_none(), "{text}");
        }
    }
}
