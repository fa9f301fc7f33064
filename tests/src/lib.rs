//! Shared helpers for faultline integration tests.
