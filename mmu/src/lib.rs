//! faultline's secondary-MMU emulation (pure Rust, no KVM, no I/O).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod explore;
pub mod gup;
pub mod host;
pub mod notifier;
pub mod scenario;
pub mod secondary;
pub mod types;
