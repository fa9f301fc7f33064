//! Fault-latency measurement: `faultline bench faults`.
//!
//! - [`kvm_stats`]: KVM binary stats (VM and vCPU) read by name, before/after deltas.
//! - [`host`]: the host settings recorded with every result.
//! - [`report`]: results, text table, JSON and PNG/SVG plots.

pub mod host;
pub mod kvm_stats;
pub mod report;
