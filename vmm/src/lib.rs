//! faultline's VMM: launches built-in guest programs and Linux kernels on KVM.
#![deny(missing_docs)]

pub mod boot;
pub mod config;
pub mod guests;
pub mod measure;
pub mod memory;
pub mod vstate;

pub use config::{KernelConfig, VmConfig};
pub use vstate::EntryPoint;
