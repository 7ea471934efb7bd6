//! The Rust client (feature `client`). Work in progress.
