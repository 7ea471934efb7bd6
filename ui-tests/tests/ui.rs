//! Compile-fail and compile-pass tests of the ws-kit macros.
//!
//! Each case is `ui/<macro>/{pass,fail}/<the_mistake>.rs`, one mistake per file. Regenerate the
//! expected errors with `TRYBUILD=overwrite cargo test -p ws-kit-ui-tests` and read the diff.
//!
//! The `.stderr` files were produced by `rustc 1.95.0 (59807616e 2026-04-14)`; compiler wording
//! changes between releases, so regenerate them when the pinned toolchain moves.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/*/pass/*.rs");
    t.compile_fail("tests/ui/*/fail/*.rs");
}
