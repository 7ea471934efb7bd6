//! Sealed delivery (docs/protocol.md 7b).
