//! `faultline bench check`: how long `faultline check` takes, per scenario and in all, and how
//! many race rounds per second the race scenarios reach. Prints a text table and, with
//! `--json`, the figures (medians over `--runs`).

use super::exec::{self, CheckEnv, CheckOptions};
use clap::Args;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// Options of `faultline bench check`.
#[derive(Debug, Args)]
pub struct BenchCheckArgs {
    /// Scenario files or directories.
    #[arg(value_name = "FILE|DIR", default_value = "resources/scenarios")]
    pub paths: Vec<PathBuf>,
    /// Runs of the whole suite (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Write the figures as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Run without seccomp filters on the VMM's threads (they are on by default; a system
    /// call outside a thread's filter ends the VM with status 104).
    #[arg(long)]
    pub no_seccomp: bool,
}

/// One scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioFigures {
    /// File.
    pub file: String,
    /// Median seconds: set-up (mappings, VM, agent), steps, total.
    pub setup_s: f64,
    /// Steps with their observers.
    pub steps_s: f64,
    /// Whole scenario.
    pub total_s: f64,
    /// Median race rounds per second (race scenarios).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub race_rounds_per_s: Option<f64>,
}

/// The whole benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct BenchCheck {
    /// Suite wall time per run, seconds.
    pub suite_s: Vec<f64>,
    /// Median suite wall time.
    pub suite_median_s: f64,
    /// Per scenario.
    pub scenarios: Vec<ScenarioFigures>,
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the benchmark; returns the exit status.
pub fn run(args: &BenchCheckArgs) -> i32 {
    let files = match super::cli::scenario_files(&args.paths) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("faultline bench check: {e}");
            return 2;
        }
    };
    let opts = CheckOptions::default();
    let env = CheckEnv::read();
    let runs = args.runs.max(1);
    let bar = indicatif::ProgressBar::new((runs * files.len()) as u64);
    let mut suite = Vec::new();
    let mut per: Vec<Vec<(f64, f64, f64, Option<f64>)>> = vec![Vec::new(); files.len()];
    for _ in 0..runs {
        let t0 = Instant::now();
        for (i, f) in files.iter().enumerate() {
            match exec::check_file(f, &opts, &env) {
                Ok(c) => per[i].push((
                    c.timing.setup_s,
                    c.timing.steps_s,
                    c.timing.total_s,
                    c.timing.race_rounds_per_s,
                )),
                Err(e) => {
                    bar.finish_and_clear();
                    eprintln!("faultline bench check: {e}");
                    return 2;
                }
            }
            bar.inc(1);
        }
        suite.push(t0.elapsed().as_secs_f64());
    }
    bar.finish_and_clear();
    let scenarios: Vec<ScenarioFigures> = files
        .iter()
        .zip(per)
        .map(|(f, v)| {
            let col = |k: usize| -> Vec<f64> {
                v.iter()
                    .map(|t| match k {
                        0 => t.0,
                        1 => t.1,
                        _ => t.2,
                    })
                    .collect()
            };
            let mut races: Vec<f64> = v.iter().filter_map(|t| t.3).collect();
            ScenarioFigures {
                file: f.display().to_string(),
                setup_s: median(&mut col(0)),
                steps_s: median(&mut col(1)),
                total_s: median(&mut col(2)),
                race_rounds_per_s: (!races.is_empty()).then(|| median(&mut races)),
            }
        })
        .collect();
    let mut s = suite.clone();
    let out = BenchCheck {
        suite_median_s: median(&mut s),
        suite_s: suite,
        scenarios,
    };
    println!(
        "{:<60} {:>9} {:>9} {:>9} {:>12}",
        "scenario", "setup ms", "steps ms", "total ms", "race rnd/s"
    );
    for sc in &out.scenarios {
        println!(
            "{:<60} {:>9.1} {:>9.1} {:>9.1} {:>12}",
            sc.file,
            sc.setup_s * 1e3,
            sc.steps_s * 1e3,
            sc.total_s * 1e3,
            sc.race_rounds_per_s
                .map_or("-".into(), |r| format!("{r:.0}"))
        );
    }
    println!(
        "suite: {} scenarios, median {:.2} s over {} runs",
        out.scenarios.len(),
        out.suite_median_s,
        runs
    );
    if let Some(p) = &args.json {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        let text = serde_json::to_string_pretty(&out).unwrap_or_default();
        if let Err(e) = std::fs::write(p, text) {
            eprintln!("faultline bench check: cannot write {}: {e}", p.display());
            return 2;
        }
    }
    0
}
