//! Shared helpers for faultline integration tests.
//!
//! - [`guest`]: run built-in guests in process or through the `faultline` binary, with
//!   guest assertions surfacing as host panics carrying the guest's file:line.
//! - [`fixtures`]: Linux kernels, initramfs, the binary, time-limited runs.
pub mod fixtures;
pub mod guest;
