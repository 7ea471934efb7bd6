//! Rate limits (docs/protocol.md 7a): token buckets as middleware.
