//! `faultline sim --record-from` then `faultline sim --replay` on the real binary, and its
//! bad input: a recording that does not parse (with the line), an unknown rule set, an empty
//! recording, a tampered record. Needs no KVM.

use faultline_tests::guest::faultline;

fn dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "faultline-sim-replay-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn scenario(name: &str) -> String {
    format!(
        "{}/../resources/scenarios/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// Records the THP read-then-write trace under 6.12 into `d/thp.jsonl`.
fn record(d: &std::path::Path) -> std::path::PathBuf {
    let rec = d.join("thp.jsonl");
    let out = faultline(&[
        "sim",
        "--record-from",
        &scenario("trace2-thp-read-then-write-6.12.toml"),
        "--record",
        s(&rec),
    ]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(out.stdout.contains("recorded 3 steps"), "{}", out.stdout);
    rec
}

#[test]
fn replay_shows_the_thp_difference_between_versions() {
    let d = dir("thp");
    let rec = record(&d);
    let json = d.join("replay.json");
    let plots = d.join("plots");
    let out = faultline(&[
        "sim",
        "--replay",
        s(&rec),
        "--kernel-rules",
        "6.12,6.13,6.18",
        "--json",
        s(&json),
        "--plot",
        s(&plots),
    ]);
    assert_eq!(out.code(), 0, "{}\n{}", out.stdout, out.stderr);
    let t = &out.stdout;
    assert!(t.contains("6.12 (recorded)"), "{t}");
    assert!(t.contains("differences: 2 of 3 records"), "{t}");
    assert!(t.contains("host faults [split,wp-copy]"), "{t}");
    assert!(t.contains("host faults [huge-zero-wp-thp]"), "{t}");
    assert!(
        t.contains("determinism: ok, the recorded 6.12 rules reproduce all 3 records"),
        "{t}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["versions"][0]["faults_by_level"]["4K"], 2);
    assert_eq!(v["versions"][2]["faults_by_level"]["2M"], 3);
    assert_eq!(v["determinism"]["mismatches"], 0);
    for ext in ["png", "svg"] {
        let p = plots.join(format!("replay_faults_over_time.{ext}"));
        assert!(std::fs::metadata(&p).unwrap().len() > 1000, "{p:?}");
    }
    // --json without a file: the report on stdout, as JSON.
    let out = faultline(&["sim", "--replay", s(&rec), "--json"]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["versions"].as_array().unwrap().len(), 3);
    // The old spelling still runs a scenario.
    let out = faultline(&[
        "sim",
        "--json",
        &scenario("trace1-anon-4k-read-then-write.toml"),
    ]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("{\"step\":0"), "{}", out.stdout);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_tampered_recording_fails_the_determinism_check() {
    let d = dir("tamper");
    let rec = record(&d);
    let text = std::fs::read_to_string(&rec).unwrap();
    let tampered = text.replacen("\"huge-zero\"", "\"anon-zero\"", 1);
    assert_ne!(text, tampered);
    std::fs::write(&rec, tampered).unwrap();
    let out = faultline(&["sim", "--replay", s(&rec), "--kernel-rules", "6.13"]);
    assert_eq!(out.code(), 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("determinism: MISMATCH")
            && out.stdout.contains("do not reproduce 1 of 3 records")
            && out
                .stdout
                .contains("host_faults: recorded [\"anon-zero\"], replayed [\"huge-zero\"]"),
        "{}",
        out.stdout
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bad_recordings_and_rule_sets_exit_2_with_the_reason() {
    let d = dir("bad");
    let rec = record(&d);
    let mut lines: Vec<String> = std::fs::read_to_string(&rec)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines[2] = "{\"seq\": 1, \"t_ns\": oops}".into();
    let bad = d.join("bad.jsonl");
    std::fs::write(&bad, lines.join("\n")).unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["sim", "--replay", s(&bad)], "line 3:"),
        (
            vec!["sim", "--replay", s(&rec), "--kernel-rules", "6.12,5.4"],
            "unknown rule set \"5.4\": use 6.12, 6.13 or 6.18",
        ),
        (
            vec!["sim", "--replay", "/nonexistent/rec.jsonl"],
            "Cannot read recording /nonexistent/rec.jsonl",
        ),
    ];
    let empty = d.join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let header_only = d.join("header.jsonl");
    std::fs::write(&header_only, format!("{}\n", lines[0])).unwrap();
    let mut cases = cases;
    cases.push((vec!["sim", "--replay", s(&empty)], "the recording is empty"));
    cases.push((
        vec!["sim", "--replay", s(&header_only)],
        "has a header but no fault records",
    ));
    for (args, needle) in cases {
        let out = faultline(&args);
        assert_eq!(out.code(), 2, "{args:?}\n{}", out.stderr);
        assert!(
            out.stderr.contains(needle),
            "{args:?}: expected {needle:?} in\n{}",
            out.stderr
        );
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
    let _ = std::fs::remove_dir_all(&d);
}
