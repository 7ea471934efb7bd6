//! Compile-fail and compile-pass tests of the ws-kit macros: see `tests/ui.rs`.
