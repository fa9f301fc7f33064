//! Measurement: `faultline bench faults` (fault latency) and `faultline bench boot`.
//!
//! - [`boot`]: `bench boot`: VMM start-up and Linux boot phases, side by side with QEMU microvm.
//! - [`cli`]: the `bench faults` options and command.
//! - [`kvm_stats`]: KVM binary stats (VM and vCPU) read by name, before/after deltas.
//! - [`host`]: the host settings recorded with every result.
//! - [`report`]: results, text table, JSON and PNG/SVG plots.
//! - [`workload`]: the driver: a fresh VM per backing and uffd mode running the `touch` guest.

pub mod boot;
pub mod cli;
pub mod host;
pub mod live;
pub mod report;
pub mod workload;
