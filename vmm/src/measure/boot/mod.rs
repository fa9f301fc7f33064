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
//!
//! - [`timeline`]: the child's timeline line and the clock both sides read.
//! - [`summary`]: min / median / max over runs.
//! - [`builtin`]: the built-in guest runner and its report (with `--baseline`).
//! - [`linux`]: `--kernel`: Linux under faultline and QEMU microvm, console phases, report.
//! - [`error`]: what can go wrong.

pub mod args;
pub mod builtin;
pub mod error;
pub mod linux;
pub mod summary;
pub mod timeline;

pub use builtin::{measure_once, measure_once_with, BaselineReport, Report, Sample};
pub use error::BenchBootError;
pub use summary::Summary;
pub use timeline::{
    instant_to_monotonic_ns, monotonic_ns, timeline_line, ChildTimeline, TIMELINE_ENV,
    TIMELINE_PREFIX,
};

use args::BenchBootArgs;
use builtin::run_builtin;

/// This `faultline` binary.
fn current_exe() -> Result<std::path::PathBuf, BenchBootError> {
    std::env::current_exe().map_err(|source| BenchBootError::Spawn {
        exe: "faultline".into(),
        source,
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
