//! faultline's VMM: launches built-in guest programs and Linux kernels on KVM.
#![deny(missing_docs)]

pub mod boot;
pub mod check;
pub mod cli;
pub mod config;
pub mod gdb;
pub mod guests;
pub mod host;
pub mod launch;
pub mod live;
pub mod measure;
pub mod memory;
pub mod replay;
pub mod seccomp;
pub mod selftests;
pub mod sim;
#[doc(hidden)]
pub mod testing;
pub mod vstate;

pub use config::{KernelConfig, VmConfig};
pub use launch::{
    run, ExitHook, ExtraMemslot, HookAction, MemoryFault, RunOutcome, VcpuControl, VmBuilder,
    VmHandle, VmIo, Vmm, VmmError,
};
pub use vstate::EntryPoint;
