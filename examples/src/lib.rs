//! Example servers live in this package's `[[example]]` targets: `cargo run --example chat`.
