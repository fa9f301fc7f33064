//! `faultline check FILE... | DIR`: the arguments and the top-level flow.
//!
//! Exit status: 0 when every scenario compared something and nothing diverged; 1 on a
//! divergence (or a scenario that compared nothing or failed to run); 2 when the check could
//! not run at all (a scenario file that does not parse, no /dev/kvm), with the fix.

use super::exec::{self, CheckEnv, CheckError, CheckOptions};
use super::report::CheckReport;
use clap::Args;
use mmu::scenario::ModelBug;
use mmu::types::KernelVersion;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Options of `faultline check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Scenario files or directories of them (every `*.toml` inside, sorted).
    #[arg(value_name = "FILE|DIR", required = true)]
    pub paths: Vec<PathBuf>,
    /// Write everything (model, real, verdict per observable) as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write what the real kernel showed, step by step, as JSON lines to this file.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// The model's rule set: 6.12, 6.13 or 6.18 (default: the host kernel's).
    #[arg(long, value_name = "VERSION", value_parser = parse_rules)]
    pub kernel_rules: Option<KernelVersion>,
    /// Run the model with a deliberately wrong rule (proves the checker catches it):
    /// skip-dontneed-notifier.
    #[arg(long, value_name = "BUG", value_parser = parse_bug, hide = true)]
    pub model_bug: Option<ModelBug>,
    /// Seconds one guest access may take before the agent counts as hung.
    #[arg(long, default_value_t = 10)]
    pub access_timeout: u64,
    /// Only print the summary line and the scenarios that diverged, compared nothing or failed.
    #[arg(long, short)]
    pub quiet: bool,
    /// KVM device node.
    #[arg(long, default_value_os_t = crate::config::default_kvm_device())]
    pub kvm_device: PathBuf,
    /// Run without seccomp filters on the VMM's threads (they are on by default; a system
    /// call outside a thread's filter ends the VM with status 104).
    #[arg(long)]
    pub no_seccomp: bool,
}

pub use crate::config::parse_rules;

fn parse_bug(s: &str) -> Result<ModelBug, String> {
    match s.trim() {
        "skip-dontneed-notifier" => Ok(ModelBug::SkipDontneedNotifier),
        other => Err(format!(
            "unknown model bug {other:?}: use skip-dontneed-notifier"
        )),
    }
}

/// The scenario files named by `paths` (directories expand to their `*.toml`, sorted).
pub fn scenario_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| format!("Cannot read directory {}: {e}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "toml"))
                .filter(|f| f.file_name().is_some_and(|n| n != "known-divergences.toml"))
                .collect();
            v.sort();
            if v.is_empty() {
                return Err(format!(
                    "{} holds no *.toml scenario files (examples are in resources/scenarios/)",
                    p.display()
                ));
            }
            out.extend(v);
        } else if p.exists() {
            out.push(p.clone());
        } else {
            return Err(format!(
                "{} does not exist: give a scenario file or a directory of them (examples are in resources/scenarios/)",
                p.display()
            ));
        }
    }
    Ok(out)
}

fn kvm_usable(dev: &Path) -> Result<(), String> {
    crate::vstate::kvm::open_kvm(dev)
        .map(drop)
        .map_err(|e| format!("{e} (faultline check runs every scenario on real KVM)"))
}

/// Runs `faultline check`; returns the exit status.
pub fn run(args: &CheckArgs) -> i32 {
    let files = match scenario_files(&args.paths) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("faultline check: {e}");
            return 2;
        }
    };
    if let Err(e) = kvm_usable(&args.kvm_device) {
        eprintln!("faultline check: {e}");
        return 2;
    }
    let opts = CheckOptions {
        kernel_rules: args.kernel_rules,
        bug: args.model_bug,
        access_timeout: Duration::from_secs(args.access_timeout.max(1)),
        kvm_device: args.kvm_device.clone(),
    };
    let env = CheckEnv::read();
    let bar = indicatif::ProgressBar::new(files.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut report = CheckReport {
        scenarios: Vec::new(),
    };
    for f in &files {
        bar.set_message(
            f.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        match exec::check_file(f, &opts, &env) {
            Ok(c) => {
                let quiet_ok = matches!(
                    c.verdict(),
                    super::report::ScenarioVerdict::Agrees
                        | super::report::ScenarioVerdict::NotExecutable
                );
                if !args.quiet || !quiet_ok {
                    bar.suspend(|| print!("{}", c.render()));
                }
                report.scenarios.push(c);
            }
            Err(
                e @ (CheckError::Scenario { .. }
                | CheckError::Read { .. }
                | CheckError::Known(_)
                | CheckError::NoKvm(_)),
            ) => {
                bar.finish_and_clear();
                eprintln!("faultline check: {e}");
                return 2;
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!("{}", report.summary_line());
    if let Some(path) = &args.record {
        let mut text = String::new();
        for c in &report.scenarios {
            for r in &c.real_trace {
                let line = serde_json::json!({ "file": c.file, "record": r });
                text.push_str(&line.to_string());
                text.push('\n');
            }
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("faultline check: cannot write {}: {e}", path.display());
            return 2;
        }
    }
    if let Some(path) = &args.json {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = std::fs::write(path, report.json()) {
            eprintln!("faultline check: cannot write {}: {e}", path.display());
            return 2;
        }
    }
    report.status()
}
