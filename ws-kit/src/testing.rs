//! The testing harness (feature `testing`). Work in progress.
