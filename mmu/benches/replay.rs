//! Replay rate of `faultline sim --replay`: a synthetic recording (100k guest faults over
//! 1 GiB: first-touch reads, writes, read-then-write, THP ranges, DONTNEED events), single
//! thread. Elements are recorded guest faults per rule set:
//! - `replay/6.12`, `replay/6.13`, `replay/6.18`: each rule set alone (no determinism check
//!   unless the rule set is the recorded 6.12, which checks every record);
//! - `replay/lockstep-3`: the three together with the determinism check and the diffs, as
//!   `faultline sim --replay FILE --kernel-rules 6.12,6.13,6.18` runs them (3 × 100k
//!   elements, so the rate is per rule set).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mmu::replay::{record_scenario, replay, synthetic_workload, RecordMeta, ReplayOptions};
use mmu::types::KernelVersion;

const ALL: [KernelVersion; 3] = [
    KernelVersion::V6_12,
    KernelVersion::V6_13,
    KernelVersion::V6_18,
];

fn bench(c: &mut Criterion) {
    let faults = 100_000;
    let sc = synthetic_workload(faults, 1).expect("the synthetic workload builds");
    let rec = record_scenario(&sc, Some(KernelVersion::V6_12), &RecordMeta::default())
        .expect("the synthetic workload runs");
    let alone = ReplayOptions {
        check_recorded: false,
        ..ReplayOptions::default()
    };
    let mut g = c.benchmark_group("replay");
    g.sample_size(10);
    g.throughput(Throughput::Elements(faults as u64));
    for v in ALL {
        g.bench_function(v.as_str(), |b| {
            b.iter(|| replay(&rec, &[v], &alone, &mut |_| {}).expect("replays"))
        });
    }
    g.throughput(Throughput::Elements(3 * faults as u64));
    g.bench_function("lockstep-3", |b| {
        b.iter(|| {
            let r = replay(&rec, &ALL, &ReplayOptions::default(), &mut |_| {}).expect("replays");
            assert!(r.determinism.is_clean());
            r
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
