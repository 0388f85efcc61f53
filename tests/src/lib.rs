//! Helpers shared by Baton's cross-crate integration tests.
