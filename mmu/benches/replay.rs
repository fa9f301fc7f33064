//! Replay rate of `faultline sim --replay`: a synthetic recording (100k guest faults over
//! 1 GiB: first-touch reads, writes, read-then-write, THP ranges, DONTNEED events) replayed
//! under each rule set alone, single thread. Elements are recorded guest faults.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mmu::replay::{record_scenario, replay, synthetic_workload, RecordMeta, ReplayOptions};
use mmu::types::KernelVersion;

fn bench(c: &mut Criterion) {
    let faults = 100_000;
    let sc = synthetic_workload(faults, 1).expect("the synthetic workload builds");
    let rec = record_scenario(&sc, Some(KernelVersion::V6_12), &RecordMeta::default())
        .expect("the synthetic workload runs");
    let opts = ReplayOptions {
        check_recorded: false,
        ..ReplayOptions::default()
    };
    let mut g = c.benchmark_group("replay");
    g.sample_size(10);
    g.throughput(Throughput::Elements(faults as u64));
    for v in [
        KernelVersion::V6_12,
        KernelVersion::V6_13,
        KernelVersion::V6_18,
    ] {
        g.bench_function(v.as_str(), |b| {
            b.iter(|| replay(&rec, &[v], &opts, &mut |_| {}).expect("replays"))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
