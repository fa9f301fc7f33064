use super::*;
use crate::scenario::StepOutcome;

/// A THP read then write of the same 2M range (trace2 of the spec), recorded under `k`.
fn thp_read_then_write(k: KernelVersion) -> Recording {
    let sc = Scenario::from_toml(
        "[[memslot]]\nid = 0\ngpa = 0\nsize = \"1G\"\nhva = \"0x7f0000000000\"\n\
         [[vma]]\nstart = \"0x7f0000000000\"\nsize = \"1G\"\nkind = \"anon\"\nthp = true\n\
         [[step]]\nop = \"read\"\ngpa = \"0x200000\"\n\
         [[step]]\nop = \"write\"\ngpa = \"0x201000\"\n\
         [[step]]\nop = \"read\"\ngpa = \"0x202000\"\n",
    )
    .unwrap();
    record_scenario(&sc, Some(k), &RecordMeta::default()).unwrap()
}

const ALL: [KernelVersion; 3] = [
    KernelVersion::V6_12,
    KernelVersion::V6_13,
    KernelVersion::V6_18,
];

fn run(rec: &Recording, vs: &[KernelVersion]) -> ReplayReport {
    replay(rec, vs, &ReplayOptions::default(), &mut |_| {}).unwrap()
}

#[test]
fn thp_read_then_write_splits_on_6_12_and_maps_a_thp_on_6_13_on() {
    let rec = thp_read_then_write(KernelVersion::V6_12);
    let r = run(&rec, &ALL);
    assert!(r.determinism.is_clean(), "{:?}", r.determinism);
    assert_eq!(r.determinism.checked, 3);
    let [v12, v13, v18] = &r.versions[..] else {
        panic!("three summaries")
    };
    // 6.12: the huge zero PMD (2M), then split + COW (4K), then a 4K zero-page read.
    assert_eq!((v12.faults_by_level.m2, v12.faults_by_level.k4), (1, 2));
    assert_eq!(v12.host_faults.get("split"), Some(&1));
    // 6.13+: a fresh THP on the write (2M), the read after it hits the 2M SPTE.
    for v in [v13, v18] {
        assert_eq!(
            (v.faults_by_level.m2, v.faults_by_level.k4),
            (3, 0),
            "{v:?}"
        );
        assert_eq!(v.host_faults.get("huge-zero-wp-thp"), Some(&1));
        assert_eq!(v.results.get("hit"), Some(&1));
    }
    assert_eq!(v12.notifiers["Clear"].ranges, 2);
    assert_eq!(v13.notifiers["Clear"].ranges, 1);
    assert_eq!(v13.zapped_ranges.m2, 1);
    assert_eq!(v13.zapped_pages.m2, 512);
    // The diff starts at the write, and names each version's level and handlers.
    assert_eq!(r.differing_steps, 2);
    let d = &r.diffs[0];
    assert_eq!(
        (d.seq, d.op.as_str(), d.gpa.as_deref()),
        (1, "write", Some("0x201000"))
    );
    let levels: Vec<_> = d.versions.iter().map(|v| v.resolution.level).collect();
    assert_eq!(
        levels,
        vec![Some(Level::Pte4K), Some(Level::Pmd2M), Some(Level::Pmd2M)]
    );
    assert_eq!(
        d.versions[0].resolution.host_faults,
        vec!["split", "wp-copy"]
    );
    assert_eq!(
        d.versions[1].resolution.host_faults,
        vec!["huge-zero-wp-thp"]
    );
    // Faults over time: 6.12 has its two 4K faults after the first record's time.
    let k4: u64 = r.series.counts[0].iter().map(|c| c.k4).sum();
    assert_eq!(k4, 2);
}

#[test]
fn the_recorded_rules_are_checked_even_when_not_asked_for() {
    let rec = thp_read_then_write(KernelVersion::V6_13);
    let r = run(&rec, &[KernelVersion::V6_12]);
    assert_eq!(r.versions.len(), 1);
    assert_eq!(r.determinism.kernel, KernelVersion::V6_13);
    assert!(r.determinism.is_clean(), "{:?}", r.determinism);
    // The 6.12 replay of a 6.13 recording differs from the record, but that is a version
    // difference, not a determinism failure; with one version there is nothing to diff.
    assert_eq!(r.differing_steps, 0);
    // Replaying a 6.13 recording as if it were 6.12 is a mismatch at the write.
    let mut lie = rec.clone();
    lie.header.kernel_rules = KernelVersion::V6_12;
    let r = run(&lie, &[KernelVersion::V6_13]);
    assert_eq!(r.determinism.mismatches, 2);
    assert_eq!(r.determinism.first[0].seq, 1);
}

#[test]
fn a_tampered_record_is_reported_as_a_mismatch() {
    let mut rec = thp_read_then_write(KernelVersion::V6_18);
    rec.records[2].model.result = "spurious".into();
    rec.records[0].model.host_faults.push("do-numa-page".into());
    let r = run(&rec, &ALL);
    let d = &r.determinism;
    assert_eq!((d.checked, d.mismatches), (3, 2));
    assert_eq!(d.first[0].seq, 0);
    assert!(
        d.first[0].fields[0].starts_with("host_faults: recorded"),
        "{:?}",
        d.first
    );
    assert_eq!(
        d.first[1].fields,
        vec!["result: recorded spurious, replayed hit"]
    );
    // Tampering with a notifier range is caught too.
    let mut rec = thp_read_then_write(KernelVersion::V6_18);
    rec.records[1].model.notifiers[0] = "Clear 0x7f0000200000 0x7f0000201000".into();
    let r = run(&rec, &[KernelVersion::V6_18]);
    assert_eq!(r.determinism.mismatches, 1);
    assert!(r.determinism.first[0].fields[0].starts_with("notifiers:"));
}

#[test]
fn recordings_round_trip_through_jsonl() {
    let rec = thp_read_then_write(KernelVersion::V6_12);
    let text = to_jsonl(&rec).unwrap();
    let back = Recording::parse(&text).unwrap();
    assert_eq!(back.header, rec.header);
    assert_eq!(back.records, rec.records);
    assert_eq!(back.mirror, rec.mirror);
    assert_eq!(back.scenario().step.len(), 3);
}

#[test]
fn bad_replays_say_what_to_do() {
    let mut rec = thp_read_then_write(KernelVersion::V6_12);
    let e = replay(&rec, &[], &ReplayOptions::default(), &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("--kernel-rules"), "{e}");
    rec.records.clear();
    let e = replay(&rec, &ALL, &ReplayOptions::default(), &mut |_| {}).unwrap_err();
    assert!(matches!(e, ReplayError::NoRecords));
    assert!(e.to_string().contains("--record-from"), "{e}");
}

#[test]
fn the_synthetic_workload_faults_everywhere_and_replays_deterministically() {
    let sc = synthetic_workload(20_000, 1).unwrap();
    let guest = sc
        .step
        .iter()
        .filter(|s| s.guest_access().is_some())
        .count();
    assert!((20_000..20_100).contains(&guest), "{guest}");
    assert!(sc.step.iter().any(|s| matches!(s, Step::Madvise(_))));
    let rec = record_scenario(&sc, Some(KernelVersion::V6_12), &RecordMeta::default()).unwrap();
    let mut seen = 0;
    let r = replay(&rec, &ALL, &ReplayOptions::default(), &mut |n| seen = n).unwrap();
    assert_eq!(seen, rec.records.len() as u64);
    assert!(r.determinism.is_clean(), "{:?}", r.determinism.first);
    let v12 = &r.versions[0];
    let v13 = &r.versions[1];
    assert_eq!(v12.guest_accesses, guest as u64);
    // Nearly every access is a fault; the THP half gives 2M mappings.
    assert!(
        v12.results["fixed"] > guest as u64 * 9 / 10,
        "{:?}",
        v12.results
    );
    assert!(
        v13.faults_by_level.m2 > v12.faults_by_level.m2,
        "{v12:?} {v13:?}"
    );
    assert!(r.differing_steps > 0);
    assert!(v12.notifiers["Clear"].ranges > 0);
    // The same seed gives the same stream.
    assert_eq!(synthetic_workload(20_000, 1).unwrap(), sc);
}

/// The summary the way it was gathered before [`Tally`]: from [`StepRecord`]s, keyed by
/// their strings (the reference the typed tally is checked against).
fn summary_from_records(kernel: KernelVersion, recs: &[StepRecord]) -> VersionSummary {
    let hexv = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
    let mut v = VersionSummary {
        kernel,
        ..VersionSummary::default()
    };
    for r in recs {
        v.steps += 1;
        *v.results.entry(r.result.clone()).or_insert(0) += 1;
        if r.access.is_some() {
            v.guest_accesses += 1;
            match r.level {
                Some(l) => v.faults_by_level.add(l, 1),
                None => v.unmapped += 1,
            }
            v.retries += u64::from(r.retries);
            v.retried_accesses += u64::from(r.retries > 0);
        }
        if let Some(g) = &r.gup {
            *v.gup_paths.entry(g.path.clone()).or_insert(0) += 1;
        }
        for h in &r.host_faults {
            *v.host_faults.entry(h.to_string()).or_insert(0) += 1;
        }
        for n in &r.notifiers {
            let e = v.notifiers.entry(format!("{:?}", n.event)).or_default();
            e.ranges += 1;
            e.bytes += hexv(&n.end) - hexv(&n.start);
        }
        for z in &r.zapped {
            v.zapped_ranges.add(z.level, 1);
            v.zapped_pages
                .add(z.level, hexv(&z.gfn_end) - hexv(&z.gfn_start));
        }
    }
    v
}

/// Every shipped scenario (that runs) and a synthetic stream, under each rule set.
fn corpus() -> Vec<(String, Scenario)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/scenarios");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let text = std::fs::read_to_string(&p).unwrap();
            if let Ok(sc) = Scenario::from_toml(&text) {
                out.push((p.display().to_string(), sc));
            }
        }
    }
    assert!(out.len() > 20, "{}", out.len());
    out.push(("synthetic".into(), synthetic_workload(3000, 3).unwrap()));
    out
}

/// Runs `sc` under `k` to the first error: each step's outcome and record.
fn outcomes(sc: &Scenario, k: KernelVersion) -> Vec<(StepOutcome, StepRecord)> {
    let opts = ModelOptions {
        kernel: Some(k),
        ..ModelOptions::default()
    };
    let Ok(mut r) = ScenarioRunner::new(sc, &opts) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for i in 0..sc.step.len() {
        match r.step_outcome(i) {
            Ok(o) => out.push((o.clone(), StepRecord::from(o))),
            Err(_) => break,
        }
    }
    out
}

/// The typed fast paths of the replay (the tally, [`StepOutcome::same_resolution`],
/// [`reproduces`]) agree with their string-based references on every step of the corpus,
/// across rule sets (so both equal and differing resolutions are compared).
#[test]
fn typed_replay_paths_agree_with_the_string_records() {
    let mut buf = String::new();
    let (mut same, mut differ, mut mismatched) = (0, 0, 0);
    for (name, sc) in corpus() {
        let runs: Vec<_> = ALL.iter().map(|&k| outcomes(&sc, k)).collect();
        for (k, run) in ALL.iter().zip(&runs) {
            let mut t = Tally::default();
            for (o, _) in run {
                t.add(o);
            }
            let recs: Vec<StepRecord> = run.iter().map(|(_, r)| r.clone()).collect();
            assert_eq!(t.summary(*k), summary_from_records(*k, &recs), "{name} {k}");
        }
        for a in &runs {
            for b in &runs {
                for ((oa, ra), (ob, rb)) in a.iter().zip(b) {
                    let s = same_resolution(ra, rb);
                    assert_eq!(oa.same_resolution(ob), s, "{name} step {}", oa.step);
                    let recorded = Resolution::from(ra);
                    let m = resolution_mismatch(&recorded, rb);
                    assert_eq!(
                        reproduces(&recorded, ob, &mut buf),
                        m.is_empty(),
                        "{name} step {}: {m:?}",
                        oa.step
                    );
                    if s {
                        same += 1;
                    } else {
                        differ += 1;
                    }
                    mismatched += usize::from(!m.is_empty());
                }
            }
        }
    }
    assert!(
        same > 1000 && differ > 50 && mismatched > 50,
        "{same} {differ} {mismatched}"
    );
}

/// A recording with a KSM scan replays deterministically: the replay keeps following page
/// contents there (ksmd merges pages by contents; without them the scan is not modelled).
#[test]
fn a_ksm_recording_replays_with_contents() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../resources/scenarios/kvm-ksm-merge-then-write.toml");
    let sc = Scenario::from_toml(&std::fs::read_to_string(path).unwrap()).unwrap();
    let rec = record_scenario(&sc, None, &RecordMeta::default()).unwrap();
    let scan = rec
        .records
        .iter()
        .find(|r| matches!(r.step, Step::KsmScan(_)))
        .unwrap();
    assert_eq!(scan.model.result, "ok");
    assert!(!scan.model.notifiers.is_empty(), "the scan merged pages");
    let r = run(&rec, &ALL);
    assert!(r.determinism.is_clean(), "{:?}", r.determinism.first);
    assert_eq!(r.determinism.checked, rec.records.len() as u64);
}

/// Page contents feed no resolution but KSM's: with contents off every step of the corpus
/// (KSM scans aside) resolves as with them on, under each rule set.
#[test]
fn contents_tracking_changes_no_resolution() {
    let mut compared = 0;
    for (name, sc) in corpus() {
        for k in ALL {
            let opts = ModelOptions {
                kernel: Some(k),
                ..ModelOptions::default()
            };
            let (Ok(mut on), Ok(mut off)) = (
                ScenarioRunner::new(&sc, &opts),
                ScenarioRunner::new(&sc, &opts),
            ) else {
                continue;
            };
            off.set_track_contents(false);
            for (i, st) in sc.step.iter().enumerate() {
                let (a, b) = match (on.step_outcome(i), off.step_outcome(i)) {
                    (Ok(a), Ok(b)) => (a.clone(), b.clone()),
                    (Err(a), Err(b)) => {
                        assert_eq!(a.to_string(), b.to_string(), "{name} {k} step {i}");
                        break;
                    }
                    (a, b) => panic!("{name} {k} step {i}: {a:?} vs {b:?}"),
                };
                if matches!(st, Step::KsmScan(_)) {
                    assert!(b.is_not_modelled(), "{name} {k} step {i}");
                    break;
                }
                assert!(a.same_resolution(&b), "{name} {k} step {i}: {a:?} vs {b:?}");
                assert_eq!(b.value, None);
                compared += 1;
            }
        }
    }
    assert!(compared > 5000, "{compared}");
}

#[test]
fn the_fast_formatters_match_std_fmt() {
    let mut b = String::new();
    for v in [
        0u64,
        1,
        0xf,
        0x10,
        0x7f00_0000_1000,
        u64::MAX,
        1 << 63,
        0xabc_def0,
    ] {
        b.clear();
        push_hex(&mut b, v);
        assert_eq!(b, format!("{v:#x}"));
    }
    for l in [Level::Pte4K, Level::Pmd2M, Level::Pud1G] {
        assert_eq!(level_debug(l), format!("{l:?}"));
    }
    use crate::notifier::NotifierEvent as E;
    for e in [
        E::Unmap,
        E::Clear,
        E::ProtectionVma,
        E::ProtectionPage,
        E::SoftDirty,
        E::Release,
        E::Migrate,
        E::Exclusive,
    ] {
        assert_eq!(event_name(e), format!("{e:?}"));
    }
}
