//! The `faultline` binary's commands that need no /dev/kvm: `--help` and `faultline sim`.
//!
//! Having an integration test here also makes `cargo test --workspace` build
//! `target/<profile>/faultline`, which the KVM tests in `tests/` run as a child process.

use std::process::Command;

fn faultline(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("run faultline")
}

#[test]
fn help_lists_every_subcommand() {
    let out = faultline(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["run", "sim", "bench"] {
        assert!(text.contains(cmd), "`{cmd}` missing from --help:\n{text}");
    }
}

#[test]
fn sim_prints_a_table_and_json_lines_ending_in_stats() {
    let file = "resources/scenarios/trace1-anon-4k-read-then-write.toml";
    let table = faultline(&["sim", file]);
    assert!(table.status.success(), "{table:?}");
    assert!(String::from_utf8_lossy(&table.stdout).contains("write"));

    let json = faultline(&["sim", "--json", file]);
    assert!(json.status.success(), "{json:?}");
    let text = String::from_utf8_lossy(&json.stdout);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is a JSON object"))
        .collect();
    let (last, steps) = lines.split_last().expect("at least the stats line");
    assert!(
        last.get("stats").is_some(),
        "last line must be {{\"stats\": ...}}: {last}"
    );
    assert!(!steps.is_empty());
    for (i, s) in steps.iter().enumerate() {
        for key in [
            "step",
            "op",
            "result",
            "retries",
            "level",
            "notifiers",
            "zapped",
        ] {
            assert!(s.get(key).is_some(), "step {i} lacks `{key}`: {s}");
        }
    }
}

#[test]
fn sim_explore_exit_status_says_whether_a_stale_spte_was_found() {
    let file = "resources/scenarios/trace4-concurrent-invalidate.toml";
    assert!(faultline(&["sim", "--explore", file]).status.success());
    let broken = faultline(&["sim", "--explore", "--no-stale-check", file]);
    assert_eq!(broken.status.code(), Some(1), "{broken:?}");
}

#[test]
fn sim_with_a_missing_file_fails_with_the_path() {
    let out = faultline(&["sim", "/nonexistent/scenario.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/scenario.toml"), "{err}");
}
