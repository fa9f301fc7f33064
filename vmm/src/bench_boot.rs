//! `faultline bench boot`: how fast a built-in guest starts and how much memory the VMM
//! itself uses.
//!
//! Each run spawns `faultline run --guest G` as a fresh process (so exec, dynamic loading
//! and KVM setup are all counted; its VM comes from `launch::VmBuilder`, the one launch
//! path, and this module sets up no VM of its own) with [`TIMELINE_ENV`] set; the child then prints one
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
    /// The --kernel file cannot be read.
    #[error("Cannot read --kernel {path:?}: {source}")]
    Kernel {
        /// Path.
        path: std::path::PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// Building the default initramfs failed.
    #[error("Building the benchmark's busybox initramfs failed: {0} (or pass --initrd)")]
    Initramfs(#[from] crate::boot::initramfs::InitramfsError),
    /// QEMU is not installed.
    #[error(
        "{0:?} not found: apt-get install qemu-system-x86 (or pass --qemu PATH, or --no-qemu)"
    )]
    QemuMissing(std::path::PathBuf),
    /// A Linux boot failed.
    #[error("{vmm} boot failed ({status}); its last output:\n{tail}")]
    Boot {
        /// faultline or QEMU.
        vmm: &'static str,
        /// How it ended.
        status: String,
        /// Last lines of its output.
        tail: String,
    },
    /// A Linux boot ended without printing the init marker.
    #[error("{vmm} boot ended without the init marker {marker:?} (check --init-marker and the initramfs); its last output:\n{tail}")]
    NoMarker {
        /// faultline or QEMU.
        vmm: &'static str,
        /// The marker.
        marker: String,
        /// Last lines of its output.
        tail: String,
    },
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

/// This `faultline` binary.
fn current_exe() -> Result<std::path::PathBuf, BenchBootError> {
    std::env::current_exe().map_err(|source| BenchBootError::Spawn {
        exe: "faultline".into(),
        source,
    })
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

/// A progress bar over `len` steps on a terminal, hidden otherwise.
fn progress(len: u64) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} boots, now: {msg}")
    {
        bar.set_style(style);
    }
    bar
}

/// Writes `json` to `path` if given, and prints it.
fn emit_json(path: Option<&std::path::Path>, json: &str) -> Result<(), BenchBootError> {
    if let Some(path) = path {
        std::fs::write(path, json).map_err(|source| BenchBootError::Write {
            path: path.to_path_buf(),
            source,
        })?;
    }
    println!("{json}");
    Ok(())
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
fn run_builtin(args: &BenchBootArgs) -> Result<(), BenchBootError> {
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

/// Runs the benchmark (built-in guest, or with `--kernel` Linux vs QEMU) and prints the
/// table and JSON.
pub fn run(args: &BenchBootArgs) -> Result<(), BenchBootError> {
    if args.runs == 0 {
        return Err(BenchBootError::NoRuns);
    }
    match &args.kernel {
        None => run_builtin(args),
        Some(kernel) => linux::run(args, kernel),
    }
}

/// `faultline bench boot` entry: exit status.
pub fn main(args: &BenchBootArgs) -> i32 {
    match run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("faultline: error: {e}");
            1
        }
    }
}

/// `faultline bench boot --kernel`: a Linux boot's timeline under faultline and under
/// `qemu-system-x86_64 -M microvm`, same kernel, initramfs and command line, alternating.
///
/// Every phase is measured from the host on CLOCK_MONOTONIC, from the spawn of the VMM
/// process (t0); the serial console (the child's stdout) is read as it arrives and each line
/// is stamped when it is read:
///
/// - **kernel entry**: faultline: the vCPU threads start, and the boot vCPU's first KVM_RUN
///   enters the kernel's entry point (there is no firmware). QEMU: the last `fw_cfg_select`
///   of its firmware (qboot, which loads the kernel and initrd through fw_cfg and then jumps
///   to the kernel), seen through QEMU's `-trace enable=fw_cfg_select` on stderr.
/// - **first KVM exit** (faultline only): the first exit of a vCPU to userspace.
/// - **first serial line**: the first complete line on the console.
/// - **init started**: the first line containing `--init-marker` (our `/init` prints
///   `faultline-init: running ...` before it runs its command).
/// - **VM exit**: the VMM process was reaped (our `/init` writes the status to the
///   debug-exit port 0xf4; QEMU has `isa-debug-exit` there and exits with `(status << 1) | 1`).
pub mod linux {
    use super::{emit_json, monotonic_ns, progress, BenchBootError, ChildTimeline, Summary};
    use super::{TIMELINE_ENV, TIMELINE_PREFIX};
    use crate::cli::BenchBootArgs;
    use serde::Serialize;
    use std::io::BufRead;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// QEMU's exit status when the guest wrote 0 to `isa-debug-exit`: `(0 << 1) | 1`.
    pub const QEMU_DEBUG_EXIT_OK: i32 = 1;
    /// The trace event that marks QEMU's firmware loading the kernel.
    pub const QEMU_FW_CFG_TRACE: &str = "fw_cfg_select";

    /// Which VMM booted.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
    pub enum Vmm {
        /// faultline.
        Faultline,
        /// QEMU microvm.
        Qemu,
    }

    impl Vmm {
        fn name(self) -> &'static str {
            match self {
                Vmm::Faultline => "faultline",
                Vmm::Qemu => "QEMU microvm",
            }
        }
    }

    /// One line of a child's output with CLOCK_MONOTONIC when it was read, ns.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Line {
        /// When it was read.
        pub t: u64,
        /// The text, without the line end.
        pub text: String,
    }

    /// What one boot printed and when it ended.
    #[derive(Debug, Clone)]
    pub struct Capture {
        /// CLOCK_MONOTONIC right before the spawn, ns.
        pub t0: u64,
        /// The console (stdout).
        pub stdout: Vec<Line>,
        /// stderr.
        pub stderr: Vec<Line>,
        /// CLOCK_MONOTONIC when the process was reaped, ns.
        pub exit_ns: u64,
        /// Exit status code (None: killed by a signal).
        pub code: Option<i32>,
        /// Killed after `--timeout`.
        pub timed_out: bool,
    }

    impl Capture {
        /// The last lines of stdout and stderr, for error messages.
        pub fn tail(&self) -> String {
            let last = |v: &[Line], n: usize| {
                v[v.len().saturating_sub(n)..]
                    .iter()
                    .map(|l| format!("  {}", l.text))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            format!("{}\n{}", last(&self.stdout, 8), last(&self.stderr, 4))
        }
    }

    fn read_lines(r: impl std::io::Read) -> Vec<Line> {
        let mut r = std::io::BufReader::new(r);
        let mut out = Vec::new();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let t = monotonic_ns();
                    let text = String::from_utf8_lossy(&buf);
                    out.push(Line {
                        t,
                        text: text.trim_end_matches(['\r', '\n']).to_string(),
                    });
                }
            }
        }
        out
    }

    /// Spawns `cmd` and records its output line by line until it exits or `timeout` passes
    /// (then it is killed).
    pub fn capture(
        mut cmd: Command,
        timeout: Duration,
    ) -> Result<Capture, (PathBuf, std::io::Error)> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let t0 = monotonic_ns();
        let mut child = cmd
            .spawn()
            .map_err(|e| (PathBuf::from(cmd.get_program()), e))?;
        let out = child
            .stdout
            .take()
            .map(|o| std::thread::spawn(|| read_lines(o)));
        let err = child
            .stderr
            .take()
            .map(|e| std::thread::spawn(|| read_lines(e)));
        let pid = child.id();
        let timed_out = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let watchdog = {
            let timed_out = timed_out.clone();
            std::thread::spawn(move || {
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(timeout) {
                    timed_out.store(true, Ordering::Release);
                    if let Ok(pid) = libc::pid_t::try_from(pid) {
                        // SAFETY: kill() on our own child's pid (not yet reaped: the main
                        // thread is still in wait(), so the pid cannot have been reused).
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            })
        };
        let status = child.wait();
        let exit_ns = monotonic_ns();
        let _ = tx.send(());
        let _ = watchdog.join();
        let status = status.map_err(|e| (PathBuf::from(cmd.get_program()), e))?;
        let join = |h: Option<std::thread::JoinHandle<Vec<Line>>>| {
            h.and_then(|h| h.join().ok()).unwrap_or_default()
        };
        Ok(Capture {
            t0,
            stdout: join(out),
            stderr: join(err),
            exit_ns,
            code: status.code(),
            timed_out: timed_out.load(Ordering::Acquire),
        })
    }

    /// One boot's phases, µs from spawn.
    #[derive(Debug, Clone, Copy, PartialEq, Serialize)]
    pub struct LinuxSample {
        /// Spawn -> the kernel's first instruction (see the module docs per VMM).
        pub kernel_entry_us: Option<f64>,
        /// Spawn -> first vCPU exit to userspace (faultline only).
        pub first_exit_us: Option<f64>,
        /// Spawn -> first serial line.
        pub first_serial_line_us: f64,
        /// Spawn -> init's marker line.
        pub init_us: f64,
        /// Spawn -> process reaped.
        pub exit_us: f64,
    }

    /// Turns a capture into a sample; `ok` says whether the exit status means success.
    pub fn sample_of(
        vmm: Vmm,
        c: &Capture,
        marker: &str,
        ok: bool,
    ) -> Result<LinuxSample, BenchBootError> {
        let us = |t: u64| t.saturating_sub(c.t0) as f64 / 1000.0;
        if c.timed_out || !ok {
            let status = if c.timed_out {
                "killed after --timeout".to_string()
            } else {
                match c.code {
                    Some(code) => format!("exit status {code}"),
                    None => "killed by a signal".to_string(),
                }
            };
            return Err(BenchBootError::Boot {
                vmm: vmm.name(),
                status,
                tail: c.tail(),
            });
        }
        let no_marker = || BenchBootError::NoMarker {
            vmm: vmm.name(),
            marker: marker.to_string(),
            tail: c.tail(),
        };
        let first_line = c.stdout.first().ok_or_else(no_marker)?;
        let init = c
            .stdout
            .iter()
            .find(|l| l.text.contains(marker))
            .ok_or_else(no_marker)?;
        let (kernel_entry, first_exit) = match vmm {
            Vmm::Faultline => {
                let t = c
                    .stderr
                    .iter()
                    .find_map(|l| l.text.strip_prefix(TIMELINE_PREFIX))
                    .and_then(|j| serde_json::from_str::<ChildTimeline>(j).ok());
                (
                    t.map(|t| us(t.vcpus_started_ns)),
                    t.filter(|t| t.first_exit_ns != 0)
                        .map(|t| us(t.first_exit_ns)),
                )
            }
            Vmm::Qemu => (
                c.stderr
                    .iter()
                    .rfind(|l| l.t <= first_line.t && l.text.contains(QEMU_FW_CFG_TRACE))
                    .map(|l| us(l.t)),
                None,
            ),
        };
        Ok(LinuxSample {
            kernel_entry_us: kernel_entry,
            first_exit_us: first_exit,
            first_serial_line_us: us(first_line.t),
            init_us: us(init.t),
            exit_us: us(c.exit_ns),
        })
    }

    /// Summaries of each phase over the runs.
    #[derive(Debug, Clone, Copy, PartialEq, Serialize)]
    pub struct LinuxSummary {
        /// Spawn -> kernel entry (µs).
        pub kernel_entry_us: Option<Summary>,
        /// Spawn -> first vCPU exit (µs).
        pub first_exit_us: Option<Summary>,
        /// Spawn -> first serial line (µs).
        pub first_serial_line_us: Summary,
        /// Spawn -> init started (µs).
        pub init_us: Summary,
        /// Spawn -> process exit (µs).
        pub exit_us: Summary,
    }

    impl LinuxSummary {
        /// Summarises `v` (non-empty).
        pub fn of(v: &[LinuxSample]) -> LinuxSummary {
            let opt = |f: fn(&LinuxSample) -> Option<f64>| {
                let x: Vec<f64> = v.iter().filter_map(f).collect();
                (!x.is_empty()).then(|| Summary::of(x))
            };
            let all = |f: fn(&LinuxSample) -> f64| Summary::of(v.iter().map(f).collect());
            LinuxSummary {
                kernel_entry_us: opt(|s| s.kernel_entry_us),
                first_exit_us: opt(|s| s.first_exit_us),
                first_serial_line_us: all(|s| s.first_serial_line_us),
                init_us: all(|s| s.init_us),
                exit_us: all(|s| s.exit_us),
            }
        }

        fn phases(&self) -> [(&'static str, Option<Summary>); 5] {
            [
                ("kernel entry", self.kernel_entry_us),
                ("first KVM exit", self.first_exit_us),
                ("first serial line", Some(self.first_serial_line_us)),
                ("init started (marker)", Some(self.init_us)),
                ("VM exit (process reaped)", Some(self.exit_us)),
            ]
        }
    }

    /// The Linux boot report.
    #[derive(Debug, Clone, Serialize)]
    pub struct LinuxReport {
        /// Kernel image.
        pub kernel: PathBuf,
        /// Initramfs (None: the built-in busybox one, running `true`).
        pub initrd: Option<PathBuf>,
        /// Command line both VMMs passed.
        pub cmdline: String,
        /// Guest RAM, bytes.
        pub memory: u64,
        /// vCPUs.
        pub vcpus: u32,
        /// Boots per VMM.
        pub runs: usize,
        /// The QEMU command (with `<initrd>` for the initramfs path), if QEMU ran.
        pub qemu_command: Option<Vec<String>>,
        /// faultline's phases.
        pub faultline: LinuxSummary,
        /// QEMU's phases.
        pub qemu: Option<LinuxSummary>,
        /// faultline / QEMU median per phase (lower is better for faultline).
        pub ratio_faultline_over_qemu: Vec<(String, Option<f64>)>,
        /// Every faultline boot.
        pub faultline_samples: Vec<LinuxSample>,
        /// Every QEMU boot.
        pub qemu_samples: Vec<LinuxSample>,
    }

    impl LinuxReport {
        /// Builds the report.
        pub fn new(
            args: &BenchBootArgs,
            kernel: &Path,
            cmdline: &str,
            qemu_command: Option<Vec<String>>,
            faultline_samples: Vec<LinuxSample>,
            qemu_samples: Vec<LinuxSample>,
        ) -> LinuxReport {
            let faultline = LinuxSummary::of(&faultline_samples);
            let qemu = (!qemu_samples.is_empty()).then(|| LinuxSummary::of(&qemu_samples));
            let ratio = faultline
                .phases()
                .iter()
                .enumerate()
                .map(|(i, (name, f))| {
                    let q = qemu.and_then(|q| q.phases()[i].1);
                    let r = f.zip(q).map(|(f, q)| f.median / q.median);
                    (name.to_string(), r)
                })
                .collect();
            LinuxReport {
                kernel: kernel.to_path_buf(),
                initrd: args.initrd.clone(),
                cmdline: cmdline.to_string(),
                memory: args.memory,
                vcpus: args.vcpus,
                runs: faultline_samples.len(),
                qemu_command,
                faultline,
                qemu,
                ratio_faultline_over_qemu: ratio,
                faultline_samples,
                qemu_samples,
            }
        }

        /// The human-readable table: median [min..max] in ms per phase and VMM, and the ratio.
        pub fn table(&self) -> String {
            let initrd = match &self.initrd {
                Some(p) => p.display().to_string(),
                None => "busybox initramfs running `true`".to_string(),
            };
            let mut s = format!(
                "faultline bench boot: kernel {}, initrd {initrd}, {} RAM, {} vCPU, {} boots per VMM, alternating\n\
                 times from the VMM's spawn, ms: median [min..max]\n",
                self.kernel.display(),
                crate::config::format_size(self.memory),
                self.vcpus,
                self.runs,
            );
            let cell = |v: Option<Summary>| match v {
                Some(v) => format!(
                    "{:.1} [{:.1}..{:.1}]",
                    v.median / 1000.0,
                    v.min / 1000.0,
                    v.max / 1000.0
                ),
                None => "-".to_string(),
            };
            s.push_str(&format!(
                "{:<26} {:>30} {:>30} {:>15}\n",
                "phase", "faultline", "QEMU microvm", "faultline/QEMU"
            ));
            let q = self.qemu.map(|q| q.phases());
            for (i, (name, f)) in self.faultline.phases().iter().enumerate() {
                let qv = q.and_then(|q| q[i].1);
                let ratio = match self.ratio_faultline_over_qemu.get(i).and_then(|r| r.1) {
                    Some(r) => format!("{r:.2}"),
                    None => "-".to_string(),
                };
                s.push_str(&format!(
                    "{name:<26} {:>30} {:>30} {ratio:>15}\n",
                    cell(*f),
                    cell(qv)
                ));
            }
            s.push_str(
                "target: init started no later than QEMU microvm's (ratio <= 1.00)\n\
                 kernel entry: faultline = first KVM_RUN at the kernel entry; QEMU = its qboot firmware's last fw_cfg access\n",
            );
            s
        }
    }

    /// Removes a file when dropped.
    struct TempFile(PathBuf);

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// The default command line: faultline's default, the platform options and our init's
    /// debug-exit port.
    pub fn default_cmdline() -> String {
        format!(
            "{} faultline.exit_port={:#x}",
            crate::boot::full_cmdline(crate::config::DEFAULT_CMDLINE),
            devices::debug_exit::DEBUG_EXIT_PORT
        )
    }

    /// `qemu` as a runnable path: as given if it has a `/`, else looked up in PATH.
    pub fn find_program(qemu: &Path) -> Option<PathBuf> {
        if qemu.components().count() > 1 {
            return qemu.is_file().then(|| qemu.to_path_buf());
        }
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(qemu))
                .find(|p| p.is_file())
        })
    }

    /// QEMU's arguments for the same guest (see resources/bench/boot-qemu.sh).
    ///
    /// `-cpu host,-arch-capabilities`: this host's KVM rejects QEMU's write of
    /// MSR_IA32_ARCH_CAPABILITIES with plain `-cpu host`. `-no-reboot` turns a guest reset
    /// into an exit.
    pub fn qemu_args(
        kernel: &Path,
        initrd: &Path,
        cmdline: &str,
        memory: u64,
        vcpus: u32,
    ) -> Vec<String> {
        let port = devices::debug_exit::DEBUG_EXIT_PORT;
        [
            "-enable-kvm",
            "-cpu",
            "host,-arch-capabilities",
            "-m",
            &format!("{}M", memory >> 20),
            "-smp",
            &vcpus.to_string(),
            "-M",
            "microvm,x-option-roms=off,rtc=off,isa-serial=on",
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-device",
            &format!("isa-debug-exit,iobase={port:#x},iosize=1"),
            "-trace",
            &format!("enable={QEMU_FW_CFG_TRACE}"),
            "-kernel",
            &kernel.display().to_string(),
            "-initrd",
            &initrd.display().to_string(),
            "-append",
            cmdline,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn boot_faultline(
        args: &BenchBootArgs,
        exe: &Path,
        kernel: &Path,
        initrd: &Path,
        cmdline: &str,
    ) -> Result<LinuxSample, BenchBootError> {
        let mut cmd = Command::new(exe);
        cmd.arg("run")
            .arg("--kernel")
            .arg(kernel)
            .arg("--initrd")
            .arg(initrd)
            .arg("--cmdline")
            .arg(cmdline)
            .arg("--memory")
            .arg(args.memory.to_string())
            .arg("--vcpus")
            .arg(args.vcpus.to_string())
            .env(TIMELINE_ENV, "1");
        if let Some(dev) = &args.kvm_device {
            cmd.arg("--kvm-device").arg(dev);
        }
        if args.no_seccomp {
            cmd.arg("--no-seccomp");
        }
        let c = capture(cmd, Duration::from_secs(args.timeout))
            .map_err(|(exe, source)| BenchBootError::Spawn { exe, source })?;
        sample_of(Vmm::Faultline, &c, &args.init_marker, c.code == Some(0))
    }

    fn boot_qemu(
        args: &BenchBootArgs,
        qemu: &Path,
        qargs: &[String],
    ) -> Result<LinuxSample, BenchBootError> {
        let mut cmd = Command::new(qemu);
        cmd.args(qargs);
        let c = capture(cmd, Duration::from_secs(args.timeout))
            .map_err(|(exe, source)| BenchBootError::Spawn { exe, source })?;
        let ok = matches!(c.code, Some(0) | Some(QEMU_DEBUG_EXIT_OK));
        sample_of(Vmm::Qemu, &c, &args.init_marker, ok)
    }

    /// Runs the Linux benchmark, prints the table and JSON.
    pub fn run(args: &BenchBootArgs, kernel: &Path) -> Result<(), BenchBootError> {
        std::fs::File::open(kernel).map_err(|source| BenchBootError::Kernel {
            path: kernel.to_path_buf(),
            source,
        })?;
        let qemu = if args.no_qemu {
            None
        } else {
            Some(
                find_program(&args.qemu)
                    .ok_or_else(|| BenchBootError::QemuMissing(args.qemu.clone()))?,
            )
        };
        let exe = super::current_exe()?;
        let _temp;
        let initrd = match &args.initrd {
            Some(p) => p.clone(),
            None => {
                let bytes = crate::boot::initramfs::build(
                    &crate::boot::initramfs::busybox_path(),
                    &["true".to_string()],
                )?;
                let path = std::env::temp_dir()
                    .join(format!("faultline-bench-boot-{}.cpio", std::process::id()));
                std::fs::write(&path, bytes).map_err(|source| BenchBootError::Write {
                    path: path.clone(),
                    source,
                })?;
                _temp = TempFile(path.clone());
                path
            }
        };
        let cmdline = args.cmdline.clone().unwrap_or_else(default_cmdline);
        let qargs = qemu_args(kernel, &initrd, &cmdline, args.memory, args.vcpus);
        let per_run = if qemu.is_some() { 2 } else { 1 };
        let bar = progress(u64::from(args.runs) * per_run);
        let (mut fl, mut qm) = (Vec::new(), Vec::new());
        for i in 0..args.runs {
            let mut order = vec![Vmm::Faultline];
            if qemu.is_some() {
                order.push(Vmm::Qemu);
                if i % 2 == 1 {
                    order.reverse();
                }
            }
            for vmm in order {
                bar.set_message(format!("{} (run {})", vmm.name(), i + 1));
                match (vmm, &qemu) {
                    (Vmm::Qemu, Some(q)) => qm.push(boot_qemu(args, q, &qargs)?),
                    _ => fl.push(boot_faultline(args, &exe, kernel, &initrd, &cmdline)?),
                }
                bar.inc(1);
            }
        }
        bar.finish_and_clear();
        let shown_qemu = qemu.map(|q| {
            let mut v = vec![q.display().to_string()];
            v.extend(qargs.iter().map(|a| {
                if *a == initrd.display().to_string() && args.initrd.is_none() {
                    "<initrd>".to_string()
                } else {
                    a.clone()
                }
            }));
            v
        });
        let report = LinuxReport::new(args, kernel, &cmdline, shown_qemu, fl, qm);
        print!("{}", report.table());
        emit_json(
            args.json.as_deref(),
            &serde_json::to_string_pretty(&report).unwrap_or_default(),
        )
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

    fn line(t: u64, text: &str) -> linux::Line {
        linux::Line {
            t,
            text: text.to_string(),
        }
    }

    fn capture(stdout: Vec<linux::Line>, stderr: Vec<linux::Line>) -> linux::Capture {
        linux::Capture {
            t0: 1_000_000,
            stdout,
            stderr,
            exit_ns: 9_000_000,
            code: Some(0),
            timed_out: false,
        }
    }

    #[test]
    fn faultline_linux_phases_come_from_its_timeline_and_console() {
        let t = ChildTimeline {
            vmm_start_ns: 1_500_000,
            vcpus_started_ns: 2_000_000,
            first_exit_ns: 3_000_000,
            end_ns: 8_000_000,
            rss: 0,
            guest_resident: 0,
        };
        let c = capture(
            vec![
                line(4_000_000, "[    0.000000] Linux version 6.12"),
                line(6_000_000, "faultline-init: running 'true'"),
            ],
            vec![line(
                8_500_000,
                &format!("{TIMELINE_PREFIX}{}", serde_json::to_string(&t).unwrap()),
            )],
        );
        let s =
            linux::sample_of(linux::Vmm::Faultline, &c, "faultline-init: running", true).unwrap();
        assert_eq!(
            s,
            linux::LinuxSample {
                kernel_entry_us: Some(1000.0),
                first_exit_us: Some(2000.0),
                first_serial_line_us: 3000.0,
                init_us: 5000.0,
                exit_us: 8000.0,
            }
        );
    }

    #[test]
    fn qemu_kernel_entry_is_the_last_fw_cfg_access_before_the_console() {
        let c = capture(
            vec![
                line(5_000_000, "Linux version"),
                line(7_000_000, "faultline-init: running 'true'"),
            ],
            vec![
                line(2_000_000, "fw_cfg_select 0x... key 0x19"),
                line(3_000_000, "fw_cfg_select 0x... key 0x8"),
                line(6_000_000, "fw_cfg_select late"),
            ],
        );
        let s = linux::sample_of(linux::Vmm::Qemu, &c, "faultline-init: running", true).unwrap();
        assert_eq!(s.kernel_entry_us, Some(2000.0));
        assert_eq!(s.first_exit_us, None);
        assert_eq!(s.init_us, 6000.0);
    }

    #[test]
    fn a_boot_without_the_marker_or_with_a_bad_status_is_an_error_with_its_output() {
        let c = capture(vec![line(5_000_000, "Kernel panic - not syncing")], vec![]);
        let e = linux::sample_of(linux::Vmm::Qemu, &c, "faultline-init: running", true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("without the init marker") && e.contains("Kernel panic"),
            "{e}"
        );
        let e = linux::sample_of(linux::Vmm::Faultline, &c, "x", false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("faultline boot failed (exit status 0)") && e.contains("Kernel panic"),
            "{e}"
        );
    }

    #[test]
    fn qemu_gets_the_same_kernel_initrd_and_cmdline_with_debug_exit() {
        let cmdline = linux::default_cmdline();
        assert!(
            cmdline.starts_with(crate::config::DEFAULT_CMDLINE)
                && cmdline.contains("pvm_syscall_fixup")
                && cmdline.ends_with("faultline.exit_port=0xf4"),
            "{cmdline}"
        );
        let a = linux::qemu_args(
            std::path::Path::new("/k/vmlinux"),
            std::path::Path::new("/i.cpio"),
            &cmdline,
            256 << 20,
            1,
        );
        let after = |flag: &str| a[a.iter().position(|x| x == flag).unwrap() + 1].clone();
        assert_eq!(after("-kernel"), "/k/vmlinux");
        assert_eq!(after("-initrd"), "/i.cpio");
        assert_eq!(after("-append"), cmdline);
        assert_eq!(after("-m"), "256M");
        assert!(after("-M").starts_with("microvm"));
        assert_eq!(after("-device"), "isa-debug-exit,iobase=0xf4,iosize=1");
    }

    #[test]
    fn linux_table_shows_medians_ratios_and_missing_phases() {
        let s = |k: f64| linux::LinuxSample {
            kernel_entry_us: Some(k),
            first_exit_us: None,
            first_serial_line_us: 2000.0 * k,
            init_us: 4000.0 * k,
            exit_us: 5000.0 * k,
        };
        let args = <crate::cli::Cli as clap::Parser>::try_parse_from([
            "faultline",
            "bench",
            "boot",
            "--kernel",
            "/k",
        ])
        .unwrap();
        let crate::cli::Command::Bench(crate::cli::BenchCommand::Boot(args)) = args.command else {
            panic!("not bench boot")
        };
        let r = linux::LinuxReport::new(
            &args,
            std::path::Path::new("/k"),
            "c",
            None,
            vec![s(1.0), s(1.0), s(1.0)],
            vec![s(2.0)],
        );
        let t = r.table();
        assert!(t.contains("init started (marker)"), "{t}");
        assert!(t.contains("0.50"), "ratio 1/2 per phase: {t}");
        assert!(t.contains("first KVM exit"), "{t}");
        assert_eq!(r.runs, 3);
    }

    #[test]
    fn a_missing_qemu_is_not_found_and_a_present_one_is() {
        assert_eq!(
            linux::find_program(std::path::Path::new("no-such-qemu-xyz")),
            None
        );
        assert!(linux::find_program(std::path::Path::new("sh")).is_some());
        let e = BenchBootError::QemuMissing("no-such-qemu-xyz".into()).to_string();
        assert!(e.contains("apt-get install qemu-system-x86"), "{e}");
    }
}
