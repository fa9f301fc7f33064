//! The built-in guest runner: `faultline run --guest G` spawned per run, its timeline read.

use super::summary::{mib, ms};
use super::{current_exe, emit_json, progress, BenchBootError, ChildTimeline, Summary};
use super::{monotonic_ns, TIMELINE_ENV, TIMELINE_PREFIX};
use crate::measure::boot::args::BenchBootArgs;
use serde::Serialize;
use std::process::{Command, Stdio};

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

/// Boots the built-in guest once with this binary and measures.
pub fn measure_once(args: &BenchBootArgs) -> Result<Sample, BenchBootError> {
    measure_once_with(&current_exe()?, args)
}

/// Boots the built-in guest once with the `faultline` binary `exe` and measures.
pub fn measure_once_with(
    exe: &std::path::Path,
    args: &BenchBootArgs,
) -> Result<Sample, BenchBootError> {
    let exe = exe.to_path_buf();
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
    if args.no_seccomp {
        cmd.arg("--no-seccomp");
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

/// The built-in guest report, and with `--baseline` the baseline binary's, measured in
/// alternating runs.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineReport {
    /// This binary.
    pub current: Report,
    /// The `--baseline` binary.
    pub baseline: Report,
    /// The baseline binary's path.
    pub baseline_exe: std::path::PathBuf,
}

impl BaselineReport {
    /// Both tables and the medians side by side.
    pub fn table(&self) -> String {
        let mut s = format!("this binary:\n{}\n", self.current.table());
        s.push_str(&format!(
            "baseline {}:\n{}\n",
            self.baseline_exe.display(),
            self.baseline.table()
        ));
        s.push_str(&format!(
            "{:<28} {:>10} {:>10} {:>8}\n",
            "median (ms)", "this", "baseline", "ratio"
        ));
        type Median = fn(&Report) -> f64;
        let rows: [(&str, Median); 4] = [
            ("VM set up, vCPUs start", |r| r.vcpus_started_us.median),
            ("first guest exit", |r| r.first_exit_us.median),
            ("guest done", |r| r.done_us.median),
            ("process exit", |r| r.process_exit_us.median),
        ];
        for (name, f) in rows {
            let (a, b) = (f(&self.current) / 1000.0, f(&self.baseline) / 1000.0);
            s.push_str(&format!("{name:<28} {a:>10.1} {b:>10.1} {:>8.2}\n", a / b));
        }
        s
    }
}

/// Runs the built-in guest benchmark (alternating with `--baseline` if given), prints the
/// table and JSON.
pub(super) fn run_builtin(args: &BenchBootArgs) -> Result<(), BenchBootError> {
    let exe = current_exe()?;
    let per_run = if args.baseline.is_some() { 2 } else { 1 };
    let bar = progress(u64::from(args.runs) * per_run);
    let (mut current, mut baseline) = (Vec::new(), Vec::new());
    for i in 0..args.runs {
        // Alternate which binary goes first so neither always runs on a warmer cache.
        let mut order = vec![(&exe, false)];
        if let Some(b) = &args.baseline {
            order.push((b, true));
            if i % 2 == 1 {
                order.reverse();
            }
        }
        for (bin, is_baseline) in order {
            bar.set_message(if is_baseline {
                "baseline"
            } else {
                "this binary"
            });
            let s = measure_once_with(bin, args)?;
            if is_baseline {
                baseline.push(s);
            } else {
                current.push(s);
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let current = Report::new(&args.guest, args.memory, current);
    let json = match &args.baseline {
        None => {
            print!("{}", current.table());
            serde_json::to_string_pretty(&current)
        }
        Some(b) => {
            let r = BaselineReport {
                current,
                baseline: Report::new(&args.guest, args.memory, baseline),
                baseline_exe: b.clone(),
            };
            print!("{}", r.table());
            serde_json::to_string_pretty(&r)
        }
    };
    emit_json(args.json.as_deref(), &json.unwrap_or_default())
}
#[cfg(test)]
mod tests {
    use super::*;

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
