//! `faultline sim`: replays a scenario file through the secondary-MMU emulation
//! (`mmu::scenario`) or explores its racing steps (`mmu::explore`).
//!
//! The scenario schema and the JSON it prints are documented in `mmu::scenario`; this module
//! only reads the file and chooses the output form.

use clap::Args;
use mmu::types::KernelVersion;
use std::path::PathBuf;

/// Options of `faultline sim`.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Scenario file (TOML; see resources/scenarios/ for examples).
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Print one JSON object per step, then one `{"stats": {...}}` object. With --replay:
    /// the whole report as JSON, into OUT when given (the table is printed too), else
    /// instead of the table.
    #[arg(long, num_args = 0..=1, value_name = "OUT")]
    pub json: Option<Option<PathBuf>>,
    /// Run every interleaving of the steps marked `race = true` and check for stale SPTEs.
    #[arg(long)]
    pub explore: bool,
    /// With --explore: model a KVM without the invalidation stale check (shows the bug it prevents).
    #[arg(long, requires = "explore")]
    pub no_stale_check: bool,
    /// With --explore: stop after this many schedules.
    #[arg(long, default_value_t = 2_000_000, requires = "explore")]
    pub max_schedules: u64,
    /// Replay a recording (`faultline run --live --record FILE`) under --kernel-rules.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["explore", "record_from"])]
    pub replay: Option<PathBuf>,
    /// Rule sets, comma-separated: with --replay the versions to compare [default: 6.12,6.13,6.18];
    /// with --record-from the one to record under [default: the scenario's].
    #[arg(long, value_delimiter = ',', value_parser = crate::replay::parse_rules, value_name = "RULES")]
    pub kernel_rules: Vec<KernelVersion>,
    /// With --replay: write plots (PNG and SVG) of faults over time into DIR.
    #[arg(long, value_name = "DIR", requires = "replay")]
    pub plot: Option<PathBuf>,
    /// Run this scenario on the model and write it as a recording (with --record).
    #[arg(
        long,
        value_name = "SCENARIO",
        requires = "record",
        conflicts_with = "explore"
    )]
    pub record_from: Option<PathBuf>,
    /// With --record-from: the recording to write (JSON Lines).
    #[arg(long, value_name = "OUT", requires = "record_from")]
    pub record: Option<PathBuf>,
}

/// Why `faultline sim` failed.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The scenario file could not be read.
    #[error("Cannot read scenario file {path}: {source}. Check the path (examples are in resources/scenarios/)")]
    Read {
        /// The file given.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The scenario is invalid or a step failed.
    #[error("{path}: {source}")]
    Scenario {
        /// The file given.
        path: PathBuf,
        /// What the model reported.
        #[source]
        source: mmu::scenario::ScenarioError,
    },
    /// A replay or a recording failed.
    #[error(transparent)]
    Replay(#[from] crate::replay::ReplayCliError),
    /// The options do not go together.
    #[error("{0}")]
    Usage(String),
}

impl SimError {
    /// The exit status: 2 for a recording, a replay or options that cannot be used (bad
    /// input), 1 for a scenario that does not run.
    pub fn exit_status(&self) -> i32 {
        match self {
            SimError::Replay(_) | SimError::Usage(_) => 2,
            SimError::Read { .. } | SimError::Scenario { .. } => 1,
        }
    }
}

/// Runs `faultline sim` and returns the text to print. With `--explore`, the exit status is
/// non-zero (`Ok(false)`) when a stale SPTE was found.
///
/// With `--replay`, the exit status is non-zero when the recorded rule set did not
/// reproduce every record; with `--record-from`, the text is a one-line summary.
pub fn run(args: &SimArgs) -> Result<(String, bool), SimError> {
    if let Some(rec) = &args.replay {
        if args.file.is_some() {
            return Err(SimError::Usage(
                "--replay takes the recording as its value; drop the scenario FILE".into(),
            ));
        }
        let rules = if args.kernel_rules.is_empty() {
            crate::replay::ALL_RULES.to_vec()
        } else {
            args.kernel_rules.clone()
        };
        let json = match &args.json {
            None => crate::replay::JsonOut::None,
            Some(None) => crate::replay::JsonOut::Stdout,
            Some(Some(p)) => crate::replay::JsonOut::File(p.clone()),
        };
        let o = crate::replay::replay_file(rec, &rules, &json, args.plot.as_deref())?;
        return Ok((o.text, o.deterministic));
    }
    if let (Some(sc), Some(out)) = (&args.record_from, &args.record) {
        if args.kernel_rules.len() > 1 {
            return Err(SimError::Usage(
                "--record-from records under one rule set: give --kernel-rules one of 6.12, 6.13, 6.18".into(),
            ));
        }
        let text = crate::replay::record_from(sc, out, args.kernel_rules.first().copied())?;
        return Ok((text, true));
    }
    if !args.kernel_rules.is_empty() {
        return Err(SimError::Usage(
            "--kernel-rules applies to --replay and --record-from; a scenario names its rules with kernel = \"...\"".into(),
        ));
    }
    // `faultline sim --json FILE.toml`: --json takes an optional value, so the scenario may
    // arrive as it.
    let (file, json) = match (&args.file, &args.json) {
        (Some(f), j) => (f.clone(), j.is_some()),
        (None, Some(Some(f))) => (f.clone(), true),
        (None, _) => {
            return Err(SimError::Usage(
                "no scenario file: give one (examples are in resources/scenarios/), or --replay RECORDING, or --record-from SCENARIO --record OUT".into(),
            ))
        }
    };
    if let (Some(_), Some(Some(p))) = (&args.file, &args.json) {
        return Err(SimError::Usage(format!(
            "--json {} : without --replay, --json prints to stdout and takes no file; redirect the output instead",
            p.display()
        )));
    }
    let text = std::fs::read_to_string(&file).map_err(|source| SimError::Read {
        path: file.clone(),
        source,
    })?;
    let scenario_err = |source| SimError::Scenario {
        path: file.clone(),
        source,
    };
    if args.explore {
        let opts = mmu::explore::ExploreOptions {
            stale_check: !args.no_stale_check,
            max_schedules: args.max_schedules,
        };
        let report = mmu::explore::explore_scenario(&text, opts).map_err(scenario_err)?;
        let out = if json { report.json() } else { report.render() };
        return Ok((out, report.is_clean()));
    }
    let run = mmu::scenario::run_scenario(&text).map_err(scenario_err)?;
    let out = if json {
        run.json_lines()
    } else {
        run.render_table()
    };
    Ok((out, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../resources/scenarios")
            .join(name)
    }

    fn args(file: PathBuf) -> SimArgs {
        SimArgs {
            file: Some(file),
            json: Some(None),
            explore: false,
            no_stale_check: false,
            max_schedules: 2_000_000,
            replay: None,
            kernel_rules: Vec::new(),
            plot: None,
            record_from: None,
            record: None,
        }
    }

    #[test]
    fn sim_json_matches_the_expected_trace() {
        let (out, ok) = run(&args(scenario("trace1-anon-4k-read-then-write.toml"))).unwrap();
        let expected =
            std::fs::read_to_string(scenario("trace1-anon-4k-read-then-write.expected.jsonl"))
                .unwrap();
        assert!(ok);
        let parse = |s: &str| -> Vec<serde_json::Value> {
            s.lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        };
        assert_eq!(parse(&out), parse(&expected));
    }

    #[test]
    fn missing_scenario_file_names_the_path() {
        let err = run(&args(PathBuf::from("/nonexistent/x.toml"))).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/x.toml"), "{msg}");
        assert!(msg.contains("resources/scenarios"), "{msg}");
    }

    #[test]
    fn explore_without_stale_check_reports_a_stale_spte() {
        let mut a = args(scenario("trace4-concurrent-invalidate.toml"));
        a.explore = true;
        let (_, clean) = run(&a).unwrap();
        assert!(clean, "the real protocol must leave no stale SPTE");
        a.no_stale_check = true;
        let (_, clean) = run(&a).unwrap();
        assert!(
            !clean,
            "without the stale check the explorer must find a stale SPTE"
        );
    }
}
