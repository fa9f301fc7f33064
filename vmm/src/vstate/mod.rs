//! Everything that touches KVM: the only module that imports `kvm-ioctls`.
//!
//! - [`kvm`]: opening the KVM device node with a clear error.
//! - [`vm`]: the VM (irqchip, PIT, memslots).
//! - [`vcpu`]: vCPU register setup, threads, and exit dispatch ([`vcpu::dispatch_exit`],
//!   a free function testable with made-up exits).
//! - [`hook`]: the per-exit extension point ([`hook::ExitHook`]) and its vCPU view.
//! - [`entry`]: the [`EntryPoint`] contract with the loaders.

pub mod entry;
pub mod hook;
pub mod kvm;
pub mod stats;
pub mod vcpu;
pub mod vm;
pub mod watchdog;

pub use entry::{ApStartup, EntryPoint};
