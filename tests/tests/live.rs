//! `faultline run --live` on real KVM: the model resolves every fault of a running guest.
//!
//! - the `touch` guest runs to completion, and every uffd event was resolved through the
//!   model exactly once (events = resolutions; the recording has one fault record each);
//! - the `writeback` guest reads back every word it wrote while DONTNEED drops its pages
//!   every 100 ms (the source store serves them back);
//! - the recording parses with `mmu::record::Recording::parse`, and re-running its steps on
//!   its own mirror under its rule set gives every record's `model` again;
//! - a Linux guest (`-- true`, 2 vCPUs) boots and runs under --live, and its recording
//!   replays to the same resolutions;
//! - a THP recording replays with the 6.12 (split) vs 6.13+ (fresh THP) difference;
//! - bad input: `--live --backing hugetlb`, a schedule with an unknown event;
//! - 2 vCPUs, one resolver thread each: every uffd event resolved through the model once,
//!   the recording in seq order with both vCPUs' faults, and `sim --replay` of it under its
//!   rule set gives the live run's per-level counts; the `writeback` guest on 2 vCPUs reads
//!   back what it wrote while DONTNEED drops its pages.

use faultline_tests::fixtures::{self, RunOutput};
use faultline_tests::guest::faultline;
use mmu::record::{Recording, Resolution};
use mmu::scenario::{ModelOptions, ScenarioRunner};
use std::time::Duration;

fn temp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("faultline-live-{}-{name}", std::process::id()))
}

/// The number after `key ` in the summary on stderr.
fn summary_number(out: &RunOutput, key: &str) -> u64 {
    let at = out
        .stderr
        .find(key)
        .unwrap_or_else(|| panic!("no {key:?} in the summary:\n{}", out.transcript()));
    out.stderr[at + key.len()..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {key:?}:\n{}", out.transcript()))
}

/// An injected DONTNEED ran, and a page it dropped was served again from the source store.
fn assert_dropped_pages_came_back_from_the_store(out: &RunOutput) {
    assert!(summary_number(out, "dontneed") >= 1, "{}", out.transcript());
    assert!(
        summary_number(out, "served from the source store:") >= 1,
        "no page came back from the store: {}",
        out.transcript()
    );
}

/// Re-runs a recording's steps on its mirror under its rule set: each record's `model` must
/// come out again. Returns the number of records.
fn replays_to_the_same_resolutions(path: &std::path::Path) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    let rec = Recording::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let opts = ModelOptions {
        kernel: Some(rec.header.kernel_rules),
        ..ModelOptions::default()
    };
    let mut runner = ScenarioRunner::new(&rec.mirror, &opts).unwrap();
    for r in &rec.records {
        let again = runner.push(r.step.clone()).unwrap();
        assert_eq!(
            Resolution::from(&again),
            r.model,
            "record {} ({:?}) resolves differently on replay",
            r.seq,
            r.step
        );
    }
    rec.records.len()
}

#[test]
fn touch_runs_live_and_every_fault_goes_through_the_model_once() {
    if !fixtures::kvm_available("touch_runs_live_and_every_fault_goes_through_the_model_once") {
        return;
    }
    let record = temp("touch.jsonl");
    let out = faultline(&[
        "run",
        "--live",
        "--guest",
        "touch",
        "--record",
        record.to_str().unwrap(),
    ]);
    assert_eq!(out.code(), 0, "{}", out.transcript());
    let events = summary_number(&out, "uffd events");
    let resolutions = summary_number(&out, "model resolutions");
    assert_eq!(events, resolutions, "{}", out.transcript());
    // 16 MiB read then written: a MISSING and a WP fault per page at least.
    assert!(events >= 2 * 4096, "{}", out.transcript());
    assert_eq!(
        summary_number(&out, "disagreements:"),
        0,
        "{}",
        out.transcript()
    );
    let text = std::fs::read_to_string(&record).unwrap();
    let rec = Recording::parse(&text).unwrap();
    let faults = rec.records.iter().filter(|r| r.uffd.is_some()).count() as u64;
    assert_eq!(faults, events, "one fault record per uffd event");
    assert_eq!(rec.header.guest, "touch");
    // The summary counts the model's steps as a replay does (mmu::replay::VersionSummary):
    // one per record, and the guest accesses by level as the records' resolutions say.
    assert_eq!(
        summary_number(&out, "model steps"),
        rec.records.len() as u64,
        "{}",
        out.transcript()
    );
    let at_4k = rec
        .records
        .iter()
        .filter(|r| r.uffd.is_some() && r.model.level == Some(mmu::types::Level::Pte4K))
        .count() as u64;
    assert_eq!(
        summary_number(&out, "faults by model level: 4K"),
        at_4k,
        "{}",
        out.transcript()
    );
    assert!(replays_to_the_same_resolutions(&record) > 8192);
    let _ = std::fs::remove_file(&record);
}

#[test]
fn the_guest_reads_back_what_it_wrote_after_injected_dontneeds() {
    if !fixtures::kvm_available("the_guest_reads_back_what_it_wrote_after_injected_dontneeds") {
        return;
    }
    let record = temp("writeback.jsonl");
    let out = faultline(&[
        "run",
        "--live",
        "--guest",
        "writeback",
        "--inject",
        "dontneed:0x800000+1M@every=100ms,count=5",
        "--record",
        record.to_str().unwrap(),
    ]);
    assert_eq!(out.code(), 0, "{}", out.transcript());
    assert!(
        out.stdout.contains("read it back 64 times; all good"),
        "{}",
        out.transcript()
    );
    assert_dropped_pages_came_back_from_the_store(&out);
    assert_eq!(
        summary_number(&out, "disagreements:"),
        0,
        "{}",
        out.transcript()
    );
    let n = replays_to_the_same_resolutions(&record);
    let text = std::fs::read_to_string(&record).unwrap();
    let rec = Recording::parse(&text).unwrap();
    assert!(rec
        .records
        .iter()
        .any(|r| r.uffd.is_none() && r.step.name() == "madvise"));
    assert!(n > 4096);
    let _ = std::fs::remove_file(&record);
}

/// The vCPU of a recorded guest access.
fn step_vcpu(step: &mmu::scenario::Step) -> Option<u32> {
    match step {
        mmu::scenario::Step::Read(g) => g.vcpu,
        mmu::scenario::Step::Write(w) => w.vcpu,
        _ => None,
    }
}

#[test]
fn two_vcpus_are_resolved_in_parallel_and_replay_to_the_same_counts() {
    if !fixtures::kvm_available("two_vcpus_are_resolved_in_parallel_and_replay_to_the_same_counts")
    {
        return;
    }
    let record = temp("touch2.jsonl");
    let json = temp("touch2-replay.json");
    let out = faultline(&[
        "run",
        "--live",
        "--guest",
        "touch",
        "--vcpus",
        "2",
        "--record",
        record.to_str().unwrap(),
    ]);
    assert_eq!(out.code(), 0, "{}", out.transcript());
    assert!(
        out.stderr.contains("2 resolver thread(s)"),
        "{}",
        out.transcript()
    );
    let events = summary_number(&out, "uffd events");
    assert_eq!(
        events,
        summary_number(&out, "model resolutions") + summary_number(&out, ", stale"),
        "{}",
        out.transcript()
    );
    // 2 x 16 MiB read then written: a MISSING and a WP fault per page at least.
    assert!(events >= 2 * 2 * 4096, "{}", out.transcript());
    assert_eq!(
        summary_number(&out, "disagreements:"),
        0,
        "{}",
        out.transcript()
    );
    let rec = Recording::parse(&std::fs::read_to_string(&record).unwrap()).unwrap();
    assert_eq!(rec.header.vcpus, 2);
    // In seq order, one record per seq, although two resolvers handed them in.
    for (i, r) in rec.records.iter().enumerate() {
        assert_eq!(r.seq, i as u64, "records out of seq order at {i}");
    }
    let faults: Vec<_> = rec.records.iter().filter(|r| r.uffd.is_some()).collect();
    assert_eq!(
        faults.len() as u64,
        summary_number(&out, "model resolutions"),
        "one fault record per model resolution"
    );
    for v in [0, 1] {
        assert!(
            faults
                .iter()
                .filter(|r| step_vcpu(&r.step) == Some(v))
                .count()
                >= 2 * 4096,
            "vCPU {v}'s faults are not all in the recording"
        );
    }
    assert!(replays_to_the_same_resolutions(&record) > 4 * 4096);
    let replay = faultline(&[
        "sim",
        "--replay",
        record.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(replay.code(), 0, "{}", replay.transcript());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let version = &report["versions"][0];
    assert_eq!(
        version["faults_by_level"]["4K"].as_u64(),
        Some(summary_number(&out, "faults by model level: 4K")),
        "the replay under the recorded rules counts the live run's 4K faults: {version}\n{}",
        out.transcript()
    );
    assert_eq!(
        version["steps"].as_u64(),
        Some(summary_number(&out, "model steps")),
        "{version}"
    );
    let _ = std::fs::remove_file(&record);
    let _ = std::fs::remove_file(&json);
}

#[test]
fn two_vcpus_read_back_what_they_wrote_after_injected_dontneeds() {
    if !fixtures::kvm_available("two_vcpus_read_back_what_they_wrote_after_injected_dontneeds") {
        return;
    }
    let record = temp("writeback2.jsonl");
    let out = faultline(&[
        "run",
        "--live",
        "--guest",
        "writeback",
        "--vcpus",
        "2",
        "--inject",
        "dontneed:0x800000+16M@every=50ms,count=8",
        "--record",
        record.to_str().unwrap(),
    ]);
    assert_eq!(out.code(), 0, "{}", out.transcript());
    assert!(
        out.stdout
            .contains("on 2 vCPU(s) and read it back 64 times; all good"),
        "{}",
        out.transcript()
    );
    assert!(
        out.stderr.contains("2 resolver thread(s)"),
        "{}",
        out.transcript()
    );
    assert_dropped_pages_came_back_from_the_store(&out);
    assert_eq!(
        summary_number(&out, "uffd events"),
        summary_number(&out, "model resolutions") + summary_number(&out, ", stale"),
        "{}",
        out.transcript()
    );
    assert_eq!(
        summary_number(&out, "disagreements:"),
        0,
        "{}",
        out.transcript()
    );
    assert!(replays_to_the_same_resolutions(&record) > 4096);
    let _ = std::fs::remove_file(&record);
}

#[test]
fn model_only_events_are_marked() {
    if !fixtures::kvm_available("model_only_events_are_marked") {
        return;
    }
    let record = temp("numa.jsonl");
    let out = faultline(&[
        "run",
        "--live",
        "--inject",
        "numa-scan:0x800000+2M@at=0ms",
        "--record",
        record.to_str().unwrap(),
    ]);
    assert_eq!(out.code(), 0, "{}", out.transcript());
    let rec = Recording::parse(&std::fs::read_to_string(&record).unwrap()).unwrap();
    let numa: Vec<_> = rec
        .records
        .iter()
        .filter(|r| r.step.name() == "numa-scan")
        .collect();
    assert_eq!(numa.len(), 1, "{}", out.transcript());
    assert!(numa[0].model_only);
    assert!(numa[0].applied.as_deref().unwrap_or("").contains("one"));
    let _ = std::fs::remove_file(&record);
}

#[test]
fn live_refuses_hugetlb_and_unknown_schedule_events() {
    if !fixtures::kvm_available("live_refuses_hugetlb_and_unknown_schedule_events") {
        return;
    }
    let out = faultline(&["run", "--live", "--backing", "hugetlb"]);
    assert_eq!(out.code(), 1, "{}", out.transcript());
    assert!(
        out.stderr.contains("--live cannot serve --backing hugetlb")
            && out.stderr.contains("no hugetlb"),
        "{}",
        out.transcript()
    );
    let sched = temp("bad.toml");
    std::fs::write(&sched, "[[event]]\nkind = \"ksm-merge\"\nat = \"1ms\"\n").unwrap();
    let out = faultline(&["run", "--live", "--schedule", sched.to_str().unwrap()]);
    assert_eq!(out.code(), 1, "{}", out.transcript());
    assert!(
        out.stderr.contains("ksm-merge") && out.stderr.contains("dontneed, thp-collapse"),
        "{}",
        out.transcript()
    );
    let out = faultline(&["run", "--live", "--inject", "dontneed:0x40000000+4K@at=1ms"]);
    assert_eq!(out.code(), 1, "{}", out.transcript());
    assert!(
        out.stderr.contains("not inside one guest-RAM region"),
        "{}",
        out.transcript()
    );
    let _ = std::fs::remove_file(&sched);
}

#[test]
fn a_linux_guest_runs_under_live() {
    if !fixtures::kvm_available("a_linux_guest_runs_under_live") {
        return;
    }
    let k =
        fixtures::guest_kernel().unwrap_or_else(|e| panic!("the guest kernel fixture failed: {e}"));
    let record = temp("linux.jsonl");
    let mut cmd = std::process::Command::new(fixtures::faultline_bin());
    // Two vCPUs: an SMP boot, its faults served by two resolver threads.
    cmd.args(["run", "--live", "--vcpus", "2", "--record"])
        .arg(&record)
        .arg("--kernel")
        .arg(&k.vmlinux)
        .args(["--", "true"]);
    let out = fixtures::run_with_timeout(cmd, Duration::from_secs(900));
    assert_eq!(out.code(), 0, "{}", out.transcript());
    let events = summary_number(&out, "uffd events");
    assert_eq!(events, summary_number(&out, "model resolutions"));
    assert!(events > 1000, "{}", out.transcript());
    assert!(
        out.stderr.contains("2 resolver thread(s)"),
        "{}",
        out.transcript()
    );
    let rec = Recording::parse(&std::fs::read_to_string(&record).unwrap()).unwrap();
    assert!(rec.records.len() as u64 >= events);
    assert_eq!(rec.header.vcpus, 2);
    assert!(replays_to_the_same_resolutions(&record) as u64 >= events);
    let _ = std::fs::remove_file(&record);
}

/// A live recording of the `touch` guest on THP-backed RAM (read, then write, each 2M range)
/// replays with the version difference the rules predict: 6.12 splits the huge zero PMD and
/// COWs a 4K page (`do_huge_pmd_wp_page()` → `__split_huge_pmd()`), 6.13+ maps a fresh THP
/// (`do_huge_zero_wp_pmd()`).
#[test]
fn a_live_thp_recording_replays_with_the_6_12_vs_6_13_difference() {
    if !fixtures::kvm_available("a_live_thp_recording_replays_with_the_6_12_vs_6_13_difference") {
        return;
    }
    let record = temp("thp.jsonl");
    let json = temp("thp-replay.json");
    let out = faultline(&[
        "run",
        "--live",
        "--backing",
        "thp",
        "--guest",
        "touch",
        "--record",
        record.to_str().unwrap(),
    ]);
    assert_eq!(out.code(), 0, "{}", out.transcript());
    let replay = faultline(&[
        "sim",
        "--replay",
        record.to_str().unwrap(),
        "--kernel-rules",
        "6.12,6.13",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(replay.code(), 0, "{}", replay.transcript());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let handlers = |v: &str| {
        report["versions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["kernel"] == v)
            .unwrap_or_else(|| panic!("no {v} in the replay report"))["host_faults"]
            .clone()
    };
    let (old, new) = (handlers("6.12"), handlers("6.13"));
    assert!(
        old["split"].as_u64() > Some(0) && old["huge-zero-wp-thp"].is_null(),
        "6.12 splits the huge zero PMD: {old}\n{}",
        replay.transcript()
    );
    assert!(
        new["huge-zero-wp-thp"].as_u64() > Some(0) && new["split"].is_null(),
        "6.13 maps a THP on the huge-zero write fault: {new}\n{}",
        replay.transcript()
    );
    assert!(report["differing_steps"].as_u64() > Some(0), "{report}");
    let _ = std::fs::remove_file(&record);
    let _ = std::fs::remove_file(&json);
}
