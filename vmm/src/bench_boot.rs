//! `faultline bench boot`: how fast a built-in guest starts and how much memory the VMM
//! itself uses.
//!
//! Each run spawns `faultline run --guest G` as a fresh process (so exec, dynamic loading
//! and KVM setup are all counted) with [`TIMELINE_ENV`] set; the child then prints one
//! line `faultline-timeline {json}` on stderr with CLOCK_MONOTONIC timestamps of its first
//! vCPU exit and of the VM's end, and its RSS split into guest RAM and the rest. The
//! parent takes CLOCK_MONOTONIC right before spawning, so:
//!
//! - **Vmm::new called**: spawn -> the library starts (exec, dynamic loading, CLI parsing).
//! - **VM set up**: spawn -> KVM opened, guest RAM mapped, VM/irqchip/PIT/memslots, devices,
//!   payload loaded, vCPUs configured; the vCPU threads start next.
//! - **first guest exit**: spawn -> the first exit of any vCPU to userspace. The guest has
//!   run its first instructions before it; for `hello` that exit is its first ucall, a few
//!   hundred instructions in, so this bounds "time to first guest instruction" from above.
//! - **guest done**: spawn -> the VM ended (ucall done / debug-exit / reset, vCPUs stopped).
//! - **process exit**: spawn -> the child was reaped.
//! - **RSS overhead**: VmRSS minus guest RAM resident (mincore), when the vCPUs had stopped.
//!
//! Report: a table (min / median / max over the runs) and JSON (`--json`), format:
//! `{"guest", "memory", "runs", "vmm_start_us", "vcpus_started_us", "first_exit_us": {min, median, max}, "done_us": {..},
//! "process_exit_us": {..}, "rss_overhead_kib": {..}, "samples": [..]}`.

use crate::cli::BenchBootArgs;
use serde::Serialize;
use std::process::{Command, Stdio};
use std::time::Instant;

/// Set in the child's environment to make `faultline run` print its timeline.
pub const TIMELINE_ENV: &str = "FAULTLINE_BENCH_TIMELINE";
/// Prefix of the child's timeline line on stderr.
pub const TIMELINE_PREFIX: &str = "faultline-timeline ";

/// CLOCK_MONOTONIC now, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass and nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

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

/// One measured boot.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Sample {
    /// Spawn -> `Vmm::new` (exec, dynamic loading, CLI parsing), µs.
    pub vmm_start_us: f64,
    /// Spawn -> vCPU threads starting (KVM, guest RAM, devices, payload, vCPUs set up), µs.
    pub vcpus_started_us: f64,
    /// Spawn -> first guest exit, µs.
    pub first_exit_us: f64,
    /// Spawn -> VM ended, µs.
    pub done_us: f64,
    /// Spawn -> process reaped, µs.
    pub process_exit_us: f64,
    /// RSS minus resident guest RAM, KiB.
    pub rss_overhead_kib: f64,
}

/// min / median / max.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Summary {
    /// Smallest.
    pub min: f64,
    /// Median.
    pub median: f64,
    /// Largest.
    pub max: f64,
}

impl Summary {
    /// Summarises `v` (must be non-empty).
    pub fn of(mut v: Vec<f64>) -> Summary {
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Summary {
            min: v[0],
            median,
            max: v[n - 1],
        }
    }
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Guest booted.
    pub guest: String,
    /// Guest RAM, bytes.
    pub memory: u64,
    /// Number of runs.
    pub runs: usize,
    /// Spawn -> `Vmm::new`.
    pub vmm_start_us: Summary,
    /// Spawn -> vCPU threads starting.
    pub vcpus_started_us: Summary,
    /// Spawn -> first guest exit.
    pub first_exit_us: Summary,
    /// Spawn -> VM ended.
    pub done_us: Summary,
    /// Spawn -> process reaped.
    pub process_exit_us: Summary,
    /// VMM RSS beyond guest RAM.
    pub rss_overhead_kib: Summary,
    /// Every run.
    pub samples: Vec<Sample>,
}

impl Report {
    /// Builds the report from samples (at least one).
    pub fn new(guest: &str, memory: u64, samples: Vec<Sample>) -> Report {
        let col = |f: fn(&Sample) -> f64| Summary::of(samples.iter().map(f).collect());
        Report {
            guest: guest.to_string(),
            memory,
            runs: samples.len(),
            vmm_start_us: col(|s| s.vmm_start_us),
            vcpus_started_us: col(|s| s.vcpus_started_us),
            first_exit_us: col(|s| s.first_exit_us),
            done_us: col(|s| s.done_us),
            process_exit_us: col(|s| s.process_exit_us),
            rss_overhead_kib: col(|s| s.rss_overhead_kib),
            samples,
        }
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "faultline bench boot: guest {}, {} RAM, {} runs (spawn = t0)\n",
            self.guest,
            crate::config::format_size(self.memory),
            self.runs
        );
        s.push_str(&format!(
            "{:<28} {:>10} {:>10} {:>10}  target\n",
            "", "min", "median", "max"
        ));
        let row = |name: &str, unit: &str, v: &Summary, target: &str| {
            format!(
                "{:<28} {:>10.1} {:>10.1} {:>10.1}  {target}\n",
                format!("{name} ({unit})"),
                v.min,
                v.median,
                v.max
            )
        };
        s.push_str(&row("Vmm::new called", "ms", &ms(&self.vmm_start_us), ""));
        s.push_str(&row(
            "VM set up, vCPUs start",
            "ms",
            &ms(&self.vcpus_started_us),
            "",
        ));
        s.push_str(&row(
            "first guest exit",
            "ms",
            &ms(&self.first_exit_us),
            "<= 5 ms",
        ));
        s.push_str(&row("guest done", "ms", &ms(&self.done_us), ""));
        s.push_str(&row("process exit", "ms", &ms(&self.process_exit_us), ""));
        s.push_str(&row(
            "VMM RSS beyond guest RAM",
            "MiB",
            &mib(&self.rss_overhead_kib),
            "<= 5 MiB",
        ));
        s
    }
}

fn ms(v: &Summary) -> Summary {
    Summary {
        min: v.min / 1000.0,
        median: v.median / 1000.0,
        max: v.max / 1000.0,
    }
}

fn mib(v: &Summary) -> Summary {
    Summary {
        min: v.min / 1024.0,
        median: v.median / 1024.0,
        max: v.max / 1024.0,
    }
}

/// A boot could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum BenchBootError {
    /// Spawning the child failed.
    #[error("Cannot run {exe:?}: {source}")]
    Spawn {
        /// The executable.
        exe: std::path::PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The child failed.
    #[error("`faultline run --guest {guest}` exited with {status}: {stderr}")]
    Child {
        /// Guest.
        guest: String,
        /// Exit status.
        status: std::process::ExitStatus,
        /// Its stderr.
        stderr: String,
    },
    /// The child printed no timeline.
    #[error("`faultline run` printed no timeline line; stderr was: {0}")]
    NoTimeline(String),
    /// --runs 0.
    #[error("--runs 0: measure at least one boot (e.g. --runs 10)")]
    NoRuns,
    /// Writing the JSON failed.
    #[error("Writing {path:?} failed: {source}")]
    Write {
        /// Path.
        path: std::path::PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Boots once and measures.
pub fn measure_once(args: &BenchBootArgs) -> Result<Sample, BenchBootError> {
    let exe = std::env::current_exe().map_err(|source| BenchBootError::Spawn {
        exe: "faultline".into(),
        source,
    })?;
    let mut cmd = Command::new(&exe);
    cmd.args(["run", "--guest", &args.guest, "--memory"])
        .arg(args.memory.to_string())
        .env(TIMELINE_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(dev) = &args.kvm_device {
        cmd.arg("--kvm-device").arg(dev);
    }
    let t0 = monotonic_ns();
    let out = cmd
        .output()
        .map_err(|source| BenchBootError::Spawn { exe, source })?;
    let t_exit = monotonic_ns();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(BenchBootError::Child {
            guest: args.guest.clone(),
            status: out.status,
            stderr,
        });
    }
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix(TIMELINE_PREFIX))
        .ok_or_else(|| BenchBootError::NoTimeline(stderr.clone()))?;
    let t: ChildTimeline =
        serde_json::from_str(line).map_err(|_| BenchBootError::NoTimeline(stderr.clone()))?;
    let us = |ns: u64| ns.saturating_sub(t0) as f64 / 1000.0;
    Ok(Sample {
        vmm_start_us: us(t.vmm_start_ns),
        vcpus_started_us: us(t.vcpus_started_ns),
        first_exit_us: us(t.first_exit_ns),
        done_us: us(t.end_ns),
        process_exit_us: us(t_exit),
        rss_overhead_kib: t.rss.saturating_sub(t.guest_resident) as f64 / 1024.0,
    })
}

/// Runs the benchmark and prints the table (and JSON).
pub fn run(args: &BenchBootArgs) -> Result<Report, BenchBootError> {
    if args.runs == 0 {
        return Err(BenchBootError::NoRuns);
    }
    let samples = (0..args.runs)
        .map(|_| measure_once(args))
        .collect::<Result<Vec<_>, _>>()?;
    let report = Report::new(&args.guest, args.memory, samples);
    print!("{}", report.table());
    let json = serde_json::to_string_pretty(&report).unwrap_or_default();
    if let Some(path) = &args.json {
        std::fs::write(path, &json).map_err(|source| BenchBootError::Write {
            path: path.clone(),
            source,
        })?;
    }
    println!("{json}");
    Ok(report)
}

/// `faultline bench boot` entry: exit status.
pub fn main(args: &BenchBootArgs) -> i32 {
    match run(args) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("faultline: error: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_takes_min_median_max() {
        assert_eq!(
            Summary::of(vec![3.0, 1.0, 2.0]),
            Summary {
                min: 1.0,
                median: 2.0,
                max: 3.0
            }
        );
        assert_eq!(Summary::of(vec![4.0, 1.0, 2.0, 3.0]).median, 2.5);
    }

    #[test]
    fn instants_convert_to_the_monotonic_clock() {
        let i = Instant::now();
        let m = monotonic_ns();
        let c = instant_to_monotonic_ns(i);
        assert!(c.abs_diff(m) < 5_000_000, "{c} vs {m}");
    }

    #[test]
    fn table_names_targets() {
        let s = Sample {
            vmm_start_us: 1000.0,
            vcpus_started_us: 2000.0,
            first_exit_us: 3000.0,
            done_us: 9000.0,
            process_exit_us: 10000.0,
            rss_overhead_kib: 2048.0,
        };
        let t = Report::new("hello", 256 << 20, vec![s]).table();
        assert!(
            t.contains("first guest exit (ms)") && t.contains("3.0") && t.contains("<= 5 MiB"),
            "{t}"
        );
    }
}
