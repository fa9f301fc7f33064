//! `faultline check`: one scenario on the model and on real KVM, compared observable by
//! observable.
//!
//! - [`space`]: the scenario's VMAs as real mappings in this process, and the host operations;
//! - [`agent`]: the built-in agent guest that performs the guest accesses on command;
//! - [`observe`]: what the real kernel shows (tracefs, pagemap/kpageflags, host conditions);
//! - [`compare`]: one step's model record against the real observations;
//! - [`exec`]: the executor that drives a VM, the agent guest, the model and the observers;
//! - [`uffd`]: the userfaultfd steps and the guest accesses that sleep in `handle_userfault()`;
//! - [`stats`]: KVM binary stats deltas per step;
//! - [`report`]: verdicts, tables, JSON; [`cli`]: `faultline check`.

pub mod agent;
pub mod bench;
pub mod cli;
pub mod compare;
pub mod exec;
pub mod known;
pub mod ksm;
pub mod observe;
pub mod race;
pub mod report;
pub mod space;
pub mod stats;
pub mod uffd;
