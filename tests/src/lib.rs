//! Shared helpers for faultline integration tests.
pub mod fixtures;
