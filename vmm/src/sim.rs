//! `faultline sim`: replays a scenario file through the secondary-MMU emulation
//! (`mmu::scenario`) or explores its racing steps (`mmu::explore`).
//!
//! The scenario schema and the JSON it prints are documented in `mmu::scenario`; this module
//! only reads the file and chooses the output form.

use clap::Args;
use std::path::PathBuf;

/// Options of `faultline sim`.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Scenario file (TOML; see resources/scenarios/ for examples).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Print one JSON object per step, then one `{"stats": {...}}` object.
    #[arg(long)]
    pub json: bool,
    /// Run every interleaving of the steps marked `race = true` and check for stale SPTEs.
    #[arg(long)]
    pub explore: bool,
    /// With --explore: model a KVM without the invalidation stale check (shows the bug it prevents).
    #[arg(long, requires = "explore")]
    pub no_stale_check: bool,
    /// With --explore: stop after this many schedules.
    #[arg(long, default_value_t = 2_000_000, requires = "explore")]
    pub max_schedules: u64,
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
}

/// Runs `faultline sim` and returns the text to print. With `--explore`, the exit status is
/// non-zero (`Ok(false)`) when a stale SPTE was found.
pub fn run(args: &SimArgs) -> Result<(String, bool), SimError> {
    let text = std::fs::read_to_string(&args.file).map_err(|source| SimError::Read {
        path: args.file.clone(),
        source,
    })?;
    let scenario_err = |source| SimError::Scenario {
        path: args.file.clone(),
        source,
    };
    if args.explore {
        let opts = mmu::explore::ExploreOptions {
            stale_check: !args.no_stale_check,
            max_schedules: args.max_schedules,
        };
        let report = mmu::explore::explore_scenario(&text, opts).map_err(scenario_err)?;
        let out = if args.json {
            report.json()
        } else {
            report.render()
        };
        return Ok((out, report.is_clean()));
    }
    let run = mmu::scenario::run_scenario(&text).map_err(scenario_err)?;
    let out = if args.json {
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
            file,
            json: true,
            explore: false,
            no_stale_check: false,
            max_schedules: 2_000_000,
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
