//! Secondary-MMU throughput (single thread): emulated guest faults per second and the cost
//! of invalidating a 1 GiB range as a function of the SPTEs present.
//!
//! Run: `cargo bench -p mmu --bench secondary` (criterion prints time per iteration and
//! the throughput in faults/s or SPTEs/s). What is measured:
//! - `fault/4k_fixed`: write faults on an already-populated anonymous host (GUP-fast
//!   path), each installing a 4K SPTE; 16 384 faults per iteration, SPTEs zapped between
//!   iterations (outside the timing).
//! - `fault/2m_fixed`: the same on THP-backed memory, one 2M SPTE per fault.
//! - `fault/4k_mix_invalidate`: 4K faults with an `MADV_DONTNEED` of an earlier page every
//!   16 faults (host zap + notifier + SPTE zap, and a host fault when the page comes back).
//! - `invalidate_1g/{empty,few,many_4k,many_2m}`: `invalidate_range_start` + `_end` over
//!   1 GiB with 0, 8, 262 144 4K or 512 2M SPTEs present (KVM side only). The cost must
//!   follow the SPTEs present, not the size of the range.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use mmu::host::{Advice, Mm, MmConfig, MmapRequest};
use mmu::notifier::MmuNotifier;
use mmu::secondary::fault::Access;
use mmu::secondary::memslot::MemslotFlags;
use mmu::secondary::spte::{bits, Spte};
use mmu::secondary::{Kvm, KvmConfig};
use mmu::types::{Gfn, Gpa, Hva, Pfn};
use std::time::{Duration, Instant};

const HVA: u64 = 0x7f00_0000_0000;

fn vm(size: u64, thp: bool) -> (Mm, Kvm) {
    let mut mm = Mm::new(MmConfig::default());
    let mut req = MmapRequest::anon(Hva(HVA), size);
    req.hugepage = thp;
    mm.mmap(req).expect("mmap");
    let mut kvm = Kvm::new(KvmConfig::default());
    kvm.create_memslot(0, Gpa(0), size, Hva(HVA), MemslotFlags::default())
        .expect("memslot");
    (mm, kvm)
}

fn populate(mm: &mut Mm, kvm: &mut Kvm, size: u64, step: u64) {
    let mut off = 0;
    while off < size {
        mm.user_access(Hva(HVA + off), true, kvm).expect("populate");
        off += step;
    }
}

fn faults(c: &mut Criterion) {
    let mut g = c.benchmark_group("fault");
    g.sample_size(20).measurement_time(Duration::from_secs(4));

    const N4K: u64 = 16_384;
    let (mut mm, mut kvm) = vm(N4K * 4096, false);
    populate(&mut mm, &mut kvm, N4K * 4096, 4096);
    g.throughput(Throughput::Elements(N4K));
    g.bench_function("4k_fixed", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                kvm.release();
                let t = Instant::now();
                for p in 0..N4K {
                    let r = kvm.guest_access(&mut mm, Gpa(p * 4096), Access::Write);
                    debug_assert_eq!(r.result, mmu::secondary::fault::PfResult::Fixed);
                    std::hint::black_box(r);
                }
                total += t.elapsed();
            }
            total
        })
    });

    const N2M: u64 = 512;
    let (mut mm2, mut kvm2) = vm(N2M << 21, true);
    populate(&mut mm2, &mut kvm2, N2M << 21, 1 << 21);
    g.throughput(Throughput::Elements(N2M));
    g.bench_function("2m_fixed", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                kvm2.release();
                let t = Instant::now();
                for p in 0..N2M {
                    let r = kvm2.guest_access(&mut mm2, Gpa(p << 21), Access::Write);
                    std::hint::black_box(r);
                }
                total += t.elapsed();
            }
            assert_eq!(kvm2.stats().sptes.pages_2m, N2M, "2M SPTEs expected");
            total
        })
    });

    g.throughput(Throughput::Elements(N4K));
    g.bench_function("4k_mix_invalidate", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                kvm.release();
                let t = Instant::now();
                for p in 0..N4K {
                    let r = kvm.guest_access(&mut mm, Gpa(p * 4096), Access::Write);
                    std::hint::black_box(r);
                    if p % 16 == 15 {
                        mm.madvise(Hva(HVA + (p - 8) * 4096), 4096, Advice::Dontneed, &mut kvm)
                            .expect("madvise");
                    }
                }
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
}

fn invalidate(c: &mut Criterion) {
    let mut g = c.benchmark_group("invalidate_1g");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    let base = || {
        let mut k = Kvm::new(KvmConfig::default());
        k.create_memslot(0, Gpa(0), 1 << 30, Hva(HVA), MemslotFlags::default())
            .unwrap();
        k
    };
    let leaf = |pfn: u64, huge: bool| {
        Spte::leaf(Pfn(pfn), bits::ACCESSED | if huge { bits::HUGE } else { 0 })
    };
    let empty = base();
    let mut few = base();
    for i in 0..8u64 {
        few.tdp
            .map(Gfn(i * 32_768 + 5), 1, leaf(0x1000 + i, false), &mut |_| {});
    }
    let mut many4k = base();
    for p in 0..262_144u64 {
        many4k
            .tdp
            .map(Gfn(p), 1, leaf(0x10_0000 + p, false), &mut |_| {});
    }
    let mut many2m = base();
    for p in 0..512u64 {
        many2m.tdp.map(
            Gfn(p * 512),
            2,
            leaf(0x10_0000 + p * 512, true),
            &mut |_| {},
        );
    }
    for (name, k, n) in [
        ("empty", &empty, 1u64),
        ("few", &few, 8),
        ("many_4k", &many4k, 262_144),
        ("many_2m", &many2m, 512),
    ] {
        g.throughput(Throughput::Elements(n));
        g.bench_function(name, |b| {
            b.iter_batched(
                || k.clone(),
                |mut k| {
                    let r = mmu::notifier::NotifierRange::new(
                        mmu::notifier::NotifierEvent::Clear,
                        Hva(HVA),
                        Hva(HVA + (1 << 30)),
                    );
                    k.invalidate_range_start(&r);
                    k.invalidate_range_end(&r);
                    k
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, faults, invalidate);
criterion_main!(benches);
