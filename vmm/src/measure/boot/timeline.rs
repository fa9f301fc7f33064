//! The timeline `faultline run` prints for the benchmark, and the clock both sides read.

use serde::Serialize;
use std::time::Instant;

/// Set in the child's environment to make `faultline run` print its timeline.
pub const TIMELINE_ENV: &str = "FAULTLINE_BENCH_TIMELINE";
/// Prefix of the child's timeline line on stderr.
pub const TIMELINE_PREFIX: &str = "faultline-timeline ";

/// CLOCK_MONOTONIC now, in nanoseconds.
pub use crate::host::process::monotonic_ns;

/// CLOCK_MONOTONIC of an earlier `Instant` (both count the same clock on Linux).
pub fn instant_to_monotonic_ns(t: Instant) -> u64 {
    let now_i = Instant::now();
    let now_m = monotonic_ns();
    now_m.saturating_sub(u64::try_from(now_i.duration_since(t).as_nanos()).unwrap_or(0))
}

/// What the child reports.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ChildTimeline {
    /// CLOCK_MONOTONIC when `Vmm::new` started (after exec, dynamic loading and CLI), ns.
    pub vmm_start_ns: u64,
    /// CLOCK_MONOTONIC when the vCPU threads were about to start (KVM, RAM, devices,
    /// payload and vCPUs all set up), ns.
    pub vcpus_started_ns: u64,
    /// CLOCK_MONOTONIC of the first vCPU exit, ns.
    pub first_exit_ns: u64,
    /// CLOCK_MONOTONIC of the VM's end, ns.
    pub end_ns: u64,
    /// VmRSS, bytes.
    pub rss: u64,
    /// Guest RAM resident, bytes.
    pub guest_resident: u64,
}

/// The line `faultline run` prints when [`TIMELINE_ENV`] is set.
pub fn timeline_line(o: &crate::RunOutcome) -> String {
    let t = ChildTimeline {
        vmm_start_ns: instant_to_monotonic_ns(o.timeline.start),
        vcpus_started_ns: instant_to_monotonic_ns(o.timeline.vcpus_started),
        first_exit_ns: o
            .timeline
            .first_exit
            .map(instant_to_monotonic_ns)
            .unwrap_or(0),
        end_ns: instant_to_monotonic_ns(o.timeline.end),
        rss: o.memory.rss,
        guest_resident: o.memory.guest_resident,
    };
    format!(
        "{TIMELINE_PREFIX}{}",
        serde_json::to_string(&t).unwrap_or_default()
    )
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_convert_to_the_monotonic_clock() {
        let i = Instant::now();
        let m = monotonic_ns();
        let c = instant_to_monotonic_ns(i);
        assert!(c.abs_diff(m) < 5_000_000, "{c} vs {m}");
    }
}
