//! `faultline sim --replay FILE`, `faultline sim --record-from SCENARIO --record OUT` and
//! `faultline bench replay`: the I/O around [`mmu::replay`] (reading and writing recordings,
//! the text table, JSON, plots, the progress bar and the replay-rate benchmark).
//!
//! # Plots (PNG and SVG, same name)
//! - `replay_faults_over_time`: guest faults replayed, cumulative over the records' `t_ns`,
//!   one panel per SPTE level that occurred under some replayed version, one line per
//!   version. Only replayed versions and levels that occurred are drawn.

use crate::measure::report::{ensure_font, ReportError};
use mmu::record::{RecordError, Recording};
use mmu::replay::{self, ReplayError, ReplayOptions, ReplayReport, VersionSummary};
use mmu::types::{KernelVersion, Level};
use plotters::prelude::*;
use serde::Serialize;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Every rule set the model has, the default of `--kernel-rules` for a replay.
pub const ALL_RULES: [KernelVersion; 3] = [
    KernelVersion::V6_12,
    KernelVersion::V6_13,
    KernelVersion::V6_18,
];

/// Parses one rule set name (`--kernel-rules` takes a comma-separated list of them).
pub use crate::config::parse_rules;

/// Why a replay, a recording or the benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayCliError {
    /// The recording could not be read.
    #[error("Cannot read recording {path}: {source}. Check the path (a recording is written by `faultline run --live --record FILE` or `faultline sim --record-from SCENARIO.toml --record FILE`)")]
    Read {
        /// The file given.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The recording does not parse.
    #[error("{path}: {source}")]
    Parse {
        /// The file given.
        path: PathBuf,
        /// What is wrong, with the line.
        #[source]
        source: RecordError,
    },
    /// The replay could not run.
    #[error("{path}: {source}")]
    Replay {
        /// The file given.
        path: PathBuf,
        /// Why.
        #[source]
        source: ReplayError,
    },
    /// The scenario to record from could not be read or run.
    #[error("{path}: {message}")]
    Scenario {
        /// The file given.
        path: PathBuf,
        /// What the model reported.
        message: String,
    },
    /// An output file could not be written.
    #[error("Cannot write {path}: {source}. Check that the directory exists and is writable")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A plot could not be drawn.
    #[error(transparent)]
    Plot(#[from] ReportError),
}

/// Reads and parses a recording.
pub fn read_recording(path: &Path) -> Result<Recording, ReplayCliError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReplayCliError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Recording::parse(&text).map_err(|source| ReplayCliError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

fn write_file(path: &Path, text: &str) -> Result<(), ReplayCliError> {
    std::fs::write(path, text).map_err(|source| ReplayCliError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// A progress bar over `len` records on a terminal (stderr), hidden otherwise or for short
/// recordings.
fn progress_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if len < 50_000 || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(len),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
        "{{bar:30}} {{pos}}/{{len}} records {what} ({{per_sec}}, {{eta}} left)"
    )) {
        bar.set_style(style);
    }
    bar
}

/// The outcome of `faultline sim --replay`: the text to print and whether the recorded rule
/// set reproduced every record.
#[derive(Debug)]
pub struct ReplayOutcome {
    /// The table (or the JSON, when asked for on stdout).
    pub text: String,
    /// Every record was reproduced under the recorded rules.
    pub deterministic: bool,
    /// The replay itself.
    pub report: ReplayReport,
    /// Plot files written.
    pub plots: Vec<PathBuf>,
}

/// Where `--json` goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonOut {
    /// No JSON.
    None,
    /// Instead of the table, on stdout.
    Stdout,
    /// Into this file (the table is printed too).
    File(PathBuf),
}

/// Replays `path` under `versions` and renders the result.
pub fn replay_file(
    path: &Path,
    versions: &[KernelVersion],
    json: &JsonOut,
    plot: Option<&Path>,
) -> Result<ReplayOutcome, ReplayCliError> {
    let rec = read_recording(path)?;
    let bar = progress_bar(rec.records.len() as u64, "replayed");
    let report = replay::replay(&rec, versions, &ReplayOptions::default(), &mut |n| {
        bar.set_position(n)
    })
    .map_err(|source| ReplayCliError::Replay {
        path: path.to_path_buf(),
        source,
    })?;
    bar.finish_and_clear();
    let mut plots = Vec::new();
    if let Some(dir) = plot {
        plots = write_plots(&report, dir)?;
    }
    let json_text = || serde_json::to_string_pretty(&report).unwrap_or_default() + "\n";
    let text = match json {
        JsonOut::Stdout => json_text(),
        JsonOut::File(p) => {
            write_file(p, &json_text())?;
            render(&report, path)
        }
        JsonOut::None => render(&report, path),
    };
    let mut text = text;
    if *json != JsonOut::Stdout {
        for p in &plots {
            let _ = writeln!(text, "plot: {}", p.display());
        }
    }
    Ok(ReplayOutcome {
        text,
        deterministic: report.determinism.is_clean(),
        report,
        plots,
    })
}

fn row(out: &mut String, name: &str, cells: &[String]) {
    let _ = write!(out, "  {name:<34}");
    for c in cells {
        let _ = write!(out, " {c:>16}");
    }
    out.push('\n');
}

/// The text report: one column per version, then the differences and the determinism line.
pub fn render(r: &ReplayReport, path: &Path) -> String {
    let mut out = String::new();
    let h = &r.header;
    let guest: u64 = r.versions.first().map_or(0, |v| v.guest_accesses);
    let _ = writeln!(
        out,
        "replay {}: {} records ({} guest accesses), recorded under the {} rules on host kernel {} \
         (backing {}, {} vCPU{}, guest {}, faultline {})",
        path.display(),
        r.records,
        guest,
        h.kernel_rules,
        h.host_kernel,
        h.backing,
        h.vcpus,
        if h.vcpus == 1 { "" } else { "s" },
        h.guest,
        h.faultline
    );
    let vs = &r.versions;
    let cells = |f: &dyn Fn(&VersionSummary) -> String| vs.iter().map(f).collect::<Vec<_>>();
    row(
        &mut out,
        "rules",
        &cells(&|v| {
            if v.kernel == h.kernel_rules {
                format!("{} (recorded)", v.kernel)
            } else {
                v.kernel.to_string()
            }
        }),
    );
    row(
        &mut out,
        "guest accesses",
        &cells(&|v| v.guest_accesses.to_string()),
    );
    for l in [Level::Pte4K, Level::Pmd2M, Level::Pud1G] {
        row(
            &mut out,
            &format!("  mapped {} afterwards", l.name()),
            &cells(&|v| v.faults_by_level.get(l).to_string()),
        );
    }
    row(
        &mut out,
        "  left unmapped",
        &cells(&|v| v.unmapped.to_string()),
    );
    let keys = |f: &dyn Fn(&VersionSummary) -> Vec<String>| {
        vs.iter().flat_map(f).collect::<BTreeSet<String>>()
    };
    row(&mut out, "results", &cells(&|_| String::new()));
    for k in keys(&|v| v.results.keys().cloned().collect()) {
        row(
            &mut out,
            &format!("  {k}"),
            &cells(&|v| v.results.get(&k).copied().unwrap_or(0).to_string()),
        );
    }
    row(&mut out, "GUP paths", &cells(&|_| String::new()));
    for k in keys(&|v| v.gup_paths.keys().cloned().collect()) {
        row(
            &mut out,
            &format!("  {k}"),
            &cells(&|v| v.gup_paths.get(&k).copied().unwrap_or(0).to_string()),
        );
    }
    row(
        &mut out,
        "retries (accesses retried)",
        &cells(&|v| format!("{} ({})", v.retries, v.retried_accesses)),
    );
    row(
        &mut out,
        "notifier ranges (MiB)",
        &cells(&|_| String::new()),
    );
    for k in keys(&|v| v.notifiers.keys().cloned().collect()) {
        row(
            &mut out,
            &format!("  {k}"),
            &cells(&|v| {
                let n = v.notifiers.get(&k).copied().unwrap_or_default();
                format!("{} ({:.1})", n.ranges, n.bytes as f64 / (1 << 20) as f64)
            }),
        );
    }
    row(
        &mut out,
        "SPTEs zapped: ranges (4K pages)",
        &cells(&|_| String::new()),
    );
    for l in [Level::Pte4K, Level::Pmd2M, Level::Pud1G] {
        row(
            &mut out,
            &format!("  {}", l.name()),
            &cells(&|v| format!("{} ({})", v.zapped_ranges.get(l), v.zapped_pages.get(l))),
        );
    }
    row(&mut out, "host fault handlers", &cells(&|_| String::new()));
    for k in keys(&|v| v.host_faults.keys().cloned().collect()) {
        row(
            &mut out,
            &format!("  {k}"),
            &cells(&|v| v.host_faults.get(&k).copied().unwrap_or(0).to_string()),
        );
    }
    if vs.len() > 1 {
        let _ = writeln!(
            out,
            "differences: {} of {} records resolved differently{}",
            r.differing_steps,
            r.records,
            if r.diffs.is_empty() {
                String::new()
            } else {
                format!("; the first {}:", r.diffs.len())
            }
        );
        for d in &r.diffs {
            let _ = writeln!(
                out,
                "  seq {:>7}  t {:>12} ns  {} {}",
                d.seq,
                d.t_ns,
                d.op,
                d.gpa.as_deref().unwrap_or("")
            );
            for v in &d.versions {
                let x = &v.resolution;
                let _ = writeln!(
                    out,
                    "      {:<5} {:<10} level {:<3} {} gup {:<8} retries {} host faults [{}]{}",
                    v.kernel.to_string(),
                    x.result,
                    x.level.map_or("-", Level::name),
                    match x.writable {
                        Some(true) => "W ",
                        Some(false) => "RO",
                        None => "- ",
                    },
                    x.gup_path.as_deref().unwrap_or("-"),
                    x.retries,
                    x.host_faults.join(","),
                    if x.notifiers.is_empty() {
                        String::new()
                    } else {
                        format!(" notifiers {}", x.notifiers.join("; "))
                    }
                );
            }
        }
    }
    let d = &r.determinism;
    if d.checked == 0 {
        let _ = writeln!(
            out,
            "determinism: not checked (the recorded {} rules were not replayed)",
            d.kernel
        );
    } else if d.is_clean() {
        let _ = writeln!(
            out,
            "determinism: ok, the recorded {} rules reproduce all {} records",
            d.kernel, d.checked
        );
    } else {
        let _ = writeln!(
            out,
            "determinism: MISMATCH, the recorded {} rules do not reproduce {} of {} records \
             (the model changed since the recording, or the file was edited); the first {}:",
            d.kernel,
            d.mismatches,
            d.checked,
            d.first.len()
        );
        for m in &d.first {
            let _ = writeln!(
                out,
                "  seq {:>7}  {} {}: {}",
                m.seq,
                m.op,
                m.gpa.as_deref().unwrap_or(""),
                m.fields.join("; ")
            );
        }
    }
    out
}

/// Draws the plots of a replay into `dir` (created if needed); returns the files written
/// (none when no guest access was mapped under any version: nothing to show).
pub fn write_plots(r: &ReplayReport, dir: &Path) -> Result<Vec<PathBuf>, ReplayCliError> {
    let levels: Vec<Level> = [Level::Pte4K, Level::Pmd2M, Level::Pud1G]
        .into_iter()
        .filter(|l| r.versions.iter().any(|v| v.faults_by_level.get(*l) > 0))
        .collect();
    if levels.is_empty() {
        return Ok(Vec::new());
    }
    std::fs::create_dir_all(dir).map_err(|source| ReplayCliError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    ensure_font()?;
    let mut files = Vec::new();
    for ext in ["png", "svg"] {
        let p = dir.join(format!("replay_faults_over_time.{ext}"));
        plot_over_time(r, &levels, &p)?;
        files.push(p);
    }
    Ok(files)
}

fn plot_over_time(r: &ReplayReport, levels: &[Level], path: &Path) -> Result<(), ReportError> {
    let err = |msg: String| ReportError::Draw {
        path: path.to_path_buf(),
        msg,
    };
    // Wide enough for the title over a single panel too.
    let size = ((420 * levels.len() as u32 + 80).max(760), 520);
    if path.extension().is_some_and(|e| e == "svg") {
        let root = SVGBackend::new(path, size).into_drawing_area();
        draw_over_time(&root, r, levels).map_err(err)?;
        root.present().map_err(|e| err(e.to_string()))
    } else {
        let root = BitMapBackend::new(path, size).into_drawing_area();
        draw_over_time(&root, r, levels).map_err(err)?;
        root.present().map_err(|e| err(e.to_string()))
    }
}

fn draw_over_time<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    r: &ReplayReport,
    levels: &[Level],
) -> Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root
        .titled(
            &format!(
                "Replayed faults over time by SPTE level ({} records, recorded under {})",
                r.records, r.header.kernel_rules
            ),
            ("sans-serif", 18),
        )
        .map_err(|e| e.to_string())?;
    let panels = root.split_evenly((1, levels.len()));
    let s = &r.series;
    let bins = s.counts.first().map_or(0, Vec::len);
    let ms = |b: usize| (b as f64 + 1.0) * s.bin_ns as f64 / 1e6;
    let xmax = ms(bins.saturating_sub(1)).max(1e-6);
    for (panel, &l) in panels.iter().zip(levels) {
        let curves: Vec<Vec<(f64, f64)>> = s
            .counts
            .iter()
            .map(|v| {
                let mut acc = 0u64;
                std::iter::once((0.0, 0.0))
                    .chain(v.iter().enumerate().map(|(b, c)| {
                        acc += c.get(l);
                        (ms(b), acc as f64)
                    }))
                    .collect()
            })
            .collect();
        let ymax = curves
            .iter()
            .filter_map(|c| c.last().map(|p| p.1))
            .fold(1.0f64, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("mapped {}", l.name()), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0f64..xmax, 0.0f64..ymax)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("time since the first record (ms)")
            .y_desc("faults (cumulative)")
            .x_labels(6)
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, (v, c)) in r.versions.iter().zip(&curves).enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let total = v.faults_by_level.get(l);
            chart
                .draw_series(LineSeries::new(
                    c.iter().copied(),
                    color.stroke_width(5u32.saturating_sub(2 * i as u32).max(1)),
                ))
                .map_err(|e| e.to_string())?
                .label(format!("{} ({total})", v.kernel))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `faultline sim --record-from SCENARIO --record OUT`: runs the scenario on the model (its
/// own rules, or `kernel`) and writes it as a recording. Returns a one-line summary.
pub fn record_from(
    scenario: &Path,
    out: &Path,
    kernel: Option<KernelVersion>,
) -> Result<String, ReplayCliError> {
    let bad = |message: String| ReplayCliError::Scenario {
        path: scenario.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(scenario)
        .map_err(|e| bad(format!("cannot read the scenario: {e}")))?;
    let sc = mmu::scenario::Scenario::from_toml(&text).map_err(|e| bad(e.to_string()))?;
    if sc.step.is_empty() {
        return Err(bad(
            "the scenario has no [[step]]: a recording needs at least one step".into(),
        ));
    }
    let meta = replay::RecordMeta {
        faultline: env!("CARGO_PKG_VERSION").into(),
        guest: format!("faultline sim --record-from {}", scenario.display()),
        ..replay::RecordMeta::default()
    };
    let rec = replay::record_scenario(&sc, kernel, &meta).map_err(|e| bad(e.to_string()))?;
    let jsonl = replay::to_jsonl(&rec).map_err(|e| bad(e.to_string()))?;
    write_file(out, &jsonl)?;
    Ok(format!(
        "recorded {} steps of {} under the {} rules into {}\n",
        rec.records.len(),
        scenario.display(),
        rec.header.kernel_rules,
        out.display()
    ))
}

/// One rule set's figure in `faultline bench replay`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplayRate {
    /// The rule set.
    pub kernel: KernelVersion,
    /// Guest-access records replayed.
    pub faults: u64,
    /// Records replayed in all (host events included).
    pub records: u64,
    /// Best wall time of the runs.
    pub seconds: f64,
    /// `faults / seconds`.
    pub faults_per_sec: f64,
    /// Every run's wall time.
    pub run_seconds: Vec<f64>,
    /// Best CPU time of the replaying thread (`CLOCK_THREAD_CPUTIME_ID`): on a shared
    /// machine the wall time includes waiting for a core.
    pub cpu_seconds: f64,
    /// `faults / cpu_seconds`.
    pub faults_per_cpu_sec: f64,
}

/// CPU time of the calling thread, in seconds.
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// The lockstep figure of `faultline bench replay`: every rule set asked for replayed
/// together, as `faultline sim --replay FILE --kernel-rules ...` does (the determinism check
/// under the recorded rules and the cross-version diff included).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LockstepRate {
    /// The rule sets, in lockstep.
    pub kernels: Vec<KernelVersion>,
    /// Rule sets that ran (the recorded one is added when not asked for).
    pub rule_sets_run: usize,
    /// Guest-access records replayed (each under every rule set).
    pub faults: u64,
    /// Best wall time of the runs.
    pub seconds: f64,
    /// Every run's wall time.
    pub run_seconds: Vec<f64>,
    /// Best CPU time of the replaying thread.
    pub cpu_seconds: f64,
    /// `faults * rule_sets_run / seconds`: the rate per rule set, the goal's figure.
    pub faults_per_sec_per_rule_set: f64,
    /// `faults * rule_sets_run / cpu_seconds`.
    pub faults_per_cpu_sec_per_rule_set: f64,
}

/// The JSON of `faultline bench replay`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplayBench {
    /// Tool name.
    pub tool: &'static str,
    /// faultline version.
    pub version: &'static str,
    /// The recording replayed, or "synthetic".
    pub recording: String,
    /// Records in it.
    pub records: u64,
    /// Seconds to read and parse it (0 for a synthetic one).
    pub parse_seconds: f64,
    /// Goal: faults/s per rule set, single thread.
    pub goal_faults_per_sec: f64,
    /// One entry per rule set.
    pub rates: Vec<ReplayRate>,
    /// All the rule sets together (when more than one was asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lockstep: Option<LockstepRate>,
    /// `/proc/loadavg`'s 1-minute load average at the end (the machine is shared; wall
    /// times include waiting for a core).
    pub load_average: Option<f64>,
}

/// The 1-minute load average, if `/proc/loadavg` reads.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `faultline bench replay`: replays `file` (or a [`replay::synthetic_workload`] of
/// `synthetic_faults` guest faults recorded under 6.12) under each rule set alone, `runs`
/// times, single thread, and reports faults/s (best run).
pub fn bench(
    file: Option<&Path>,
    synthetic_faults: usize,
    versions: &[KernelVersion],
    runs: u32,
) -> Result<ReplayBench, ReplayCliError> {
    let t = Instant::now();
    let (rec, name) = match file {
        Some(p) => (read_recording(p)?, p.display().to_string()),
        None => {
            let sc = replay::synthetic_workload(synthetic_faults, 1).map_err(|e| {
                ReplayCliError::Scenario {
                    path: "synthetic".into(),
                    message: e.to_string(),
                }
            })?;
            let rec = replay::record_scenario(
                &sc,
                Some(KernelVersion::V6_12),
                &replay::RecordMeta::default(),
            )
            .map_err(|e| ReplayCliError::Scenario {
                path: "synthetic".into(),
                message: e.to_string(),
            })?;
            (
                rec,
                format!("synthetic ({synthetic_faults} faults over 1 GiB)"),
            )
        }
    };
    let parse_seconds = if file.is_some() {
        t.elapsed().as_secs_f64()
    } else {
        0.0
    };
    let opts = ReplayOptions {
        check_recorded: false,
        ..ReplayOptions::default()
    };
    let mut rates = Vec::new();
    for &v in versions {
        let mut run_seconds = Vec::new();
        let mut cpu = f64::INFINITY;
        let mut faults = 0;
        for _ in 0..runs.max(1) {
            let t = Instant::now();
            let c = thread_cpu_seconds();
            let r = replay::replay(&rec, &[v], &opts, &mut |_| {}).map_err(|source| {
                ReplayCliError::Replay {
                    path: name.clone().into(),
                    source,
                }
            })?;
            run_seconds.push(t.elapsed().as_secs_f64());
            cpu = cpu.min(thread_cpu_seconds() - c);
            faults = r.versions[0].guest_accesses;
        }
        let seconds = run_seconds.iter().copied().fold(f64::INFINITY, f64::min);
        rates.push(ReplayRate {
            kernel: v,
            faults,
            records: rec.records.len() as u64,
            seconds,
            faults_per_sec: if seconds > 0.0 {
                faults as f64 / seconds
            } else {
                0.0
            },
            run_seconds,
            cpu_seconds: cpu,
            faults_per_cpu_sec: if cpu > 0.0 { faults as f64 / cpu } else { 0.0 },
        });
    }
    let lockstep = if versions.len() > 1 {
        let mut run_seconds = Vec::new();
        let mut cpu = f64::INFINITY;
        let mut faults = 0;
        let mut sets = versions.len();
        for _ in 0..runs.max(1) {
            let t = Instant::now();
            let c = thread_cpu_seconds();
            let r = replay::replay(&rec, versions, &ReplayOptions::default(), &mut |_| {})
                .map_err(|source| ReplayCliError::Replay {
                    path: name.clone().into(),
                    source,
                })?;
            run_seconds.push(t.elapsed().as_secs_f64());
            cpu = cpu.min(thread_cpu_seconds() - c);
            faults = r.versions[0].guest_accesses;
            sets = versions.len() + usize::from(!versions.contains(&r.determinism.kernel));
        }
        let seconds = run_seconds.iter().copied().fold(f64::INFINITY, f64::min);
        let per = |t: f64| {
            if t > 0.0 {
                (faults * sets as u64) as f64 / t
            } else {
                0.0
            }
        };
        Some(LockstepRate {
            kernels: versions.to_vec(),
            rule_sets_run: sets,
            faults,
            seconds,
            run_seconds,
            cpu_seconds: cpu,
            faults_per_sec_per_rule_set: per(seconds),
            faults_per_cpu_sec_per_rule_set: per(cpu),
        })
    } else {
        None
    };
    Ok(ReplayBench {
        tool: "faultline",
        version: env!("CARGO_PKG_VERSION"),
        recording: name,
        records: rec.records.len() as u64,
        parse_seconds,
        goal_faults_per_sec: 1e6,
        rates,
        lockstep,
        load_average: load_average(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../resources/scenarios")
            .join(name)
    }

    #[test]
    fn record_then_replay_a_thp_read_then_write() {
        let dir = std::env::temp_dir().join(format!("faultline-replay-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rec = dir.join("thp.jsonl");
        let msg = record_from(
            &scenario("trace2-thp-read-then-write-6.12.toml"),
            &rec,
            None,
        )
        .unwrap();
        assert!(
            msg.contains("recorded 3 steps") && msg.contains("6.12"),
            "{msg}"
        );
        let json = dir.join("out.json");
        let plots = dir.join("plots");
        let o = replay_file(&rec, &ALL_RULES, &JsonOut::File(json.clone()), Some(&plots)).unwrap();
        assert!(o.deterministic);
        assert!(o.text.contains("determinism: ok"), "{}", o.text);
        assert!(o.text.contains("differences: 2 of 3 records"), "{}", o.text);
        assert!(o.text.contains("split,wp-copy") && o.text.contains("huge-zero-wp-thp"));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(v["versions"][1]["faults_by_level"]["2M"], 3);
        assert_eq!(v["diffs"][0]["versions"][0]["level"], "4K");
        assert_eq!(o.plots.len(), 2);
        let png = std::fs::read(&o.plots[0]).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let svg = std::fs::read_to_string(&o.plots[1]).unwrap();
        assert!(svg.contains("<svg") && svg.contains("mapped 2M") && svg.contains("mapped 4K"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bench_reports_each_rule_set_and_the_lockstep_rate() {
        let b = bench(None, 2000, &ALL_RULES, 1).unwrap();
        assert_eq!(b.rates.len(), 3);
        for r in &b.rates {
            assert!((2000..2100).contains(&r.faults), "{r:?}");
            assert!(
                r.faults_per_sec > 0.0 && r.faults_per_cpu_sec > 0.0,
                "{r:?}"
            );
        }
        let l = b.lockstep.expect("three rule sets: a lockstep figure");
        assert_eq!((l.rule_sets_run, l.faults), (3, b.rates[0].faults));
        assert!(l.faults_per_sec_per_rule_set > 0.0, "{l:?}");
        // One rule set that is not the recorded 6.12: no lockstep figure.
        let one = bench(None, 500, &[KernelVersion::V6_13], 1).unwrap();
        assert!(one.lockstep.is_none());
        // Two rule sets without the recorded one: it runs too, and is counted.
        let two = bench(None, 500, &[KernelVersion::V6_13, KernelVersion::V6_18], 1).unwrap();
        assert_eq!(two.lockstep.unwrap().rule_sets_run, 3);
    }

    #[test]
    fn bad_recordings_name_the_problem() {
        let dir = std::env::temp_dir().join(format!("faultline-replay-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = replay_file(&dir.join("missing.jsonl"), &ALL_RULES, &JsonOut::None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.jsonl") && e.contains("--record"), "{e}");
        let f = dir.join("bad.jsonl");
        std::fs::write(&f, "not json\n").unwrap();
        let e = replay_file(&f, &ALL_RULES, &JsonOut::None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1"), "{e}");
        std::fs::write(&f, "").unwrap();
        let e = replay_file(&f, &ALL_RULES, &JsonOut::None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty"), "{e}");
        assert!(parse_rules("6.14")
            .unwrap_err()
            .contains("6.12, 6.13 or 6.18"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Options of `faultline bench replay`.
#[derive(Debug, clap::Args)]
pub struct BenchReplayArgs {
    /// Recording to replay [default: a synthetic 1 GiB workload, see --faults].
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Guest faults of the synthetic workload.
    #[arg(long, default_value_t = 300_000, conflicts_with = "file")]
    pub faults: usize,
    /// Rule sets to time, each alone (comma-separated).
    #[arg(long, value_delimiter = ',', value_parser = parse_rules, default_value = "6.12,6.13,6.18")]
    pub kernel_rules: Vec<KernelVersion>,
    /// Replays per rule set (the best is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
    /// Write the JSON here as well as printing it.
    #[arg(long, value_name = "OUT")]
    pub json: Option<PathBuf>,
}

/// Runs `faultline bench replay`; returns the exit status (0, or 2 when it could not run).
pub fn bench_main(args: &BenchReplayArgs) -> i32 {
    let out = bench(
        args.file.as_deref(),
        args.faults,
        &args.kernel_rules,
        args.runs,
    )
    .and_then(|b| {
        let text = serde_json::to_string_pretty(&b).unwrap_or_default() + "\n";
        if let Some(p) = &args.json {
            write_file(p, &text)?;
        }
        Ok(text)
    });
    match out {
        Ok(text) => {
            print!("{text}");
            0
        }
        Err(e) => {
            eprintln!("faultline: error: {e}");
            2
        }
    }
}
