//! The wire format (docs/protocol.md sections 2–4): what the server reads ([`envelope`] for the full
//! path, [`direct`] for the one-pass fast path), what it writes ([`encode`]), and what a client
//! writes and reads ([`client_codec`], shared by the Rust client and the testing harness).

#[cfg(any(feature = "client", feature = "testing"))]
pub(crate) mod client_codec;
pub(crate) mod direct;
pub(crate) mod encode;
pub(crate) mod envelope;

pub(crate) use direct::{decode_direct, peek_type};
pub(crate) use encode::{
    Layout, OutMeta, encode_error, encode_message, encode_progress, heartbeat_ack,
};
pub(crate) use envelope::{Envelope, parse_envelope};

/// Longest accepted `meta.correlationId`, in bytes.
pub(crate) const MAX_CORRELATION_ID: usize = 128;

/// serde_json's message without the " at line 1 column 9" suffix.
pub(crate) fn strip_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Whether a client may not send this type (docs/protocol.md section 6).
pub(crate) fn is_reserved(ty: &str) -> bool {
    ty.starts_with('$') || ty.starts_with("__") || ty == "ERROR" || ty == "RPC_ERROR"
}
