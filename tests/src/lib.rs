//! Integration tests of ws-kit over real sockets: see `tests/`.
