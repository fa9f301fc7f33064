//! Host model benchmarks: GUP-fast throughput over populated 4K and 2M ranges, full host
//! faults per second, and model memory per mapped 4K page.
//!
//! Run: `cargo bench -p mmu --bench host`. The memory figure is printed first: it is
//! measured twice, by the model's own accounting (`Mm::memory_use()`) and by the growth of
//! this process's resident set (/proc/self/statm) while 1 GiB (262144 pages) is faulted in.

use criterion::{black_box, criterion_group, BenchmarkId, Criterion, Throughput};
use mmu::gup::{self, FollFlags, PageRef};
use mmu::host::{Mm, MmConfig, MmapRequest};
use mmu::notifier::NoNotifier;
use mmu::types::Hva;
use std::time::{Duration, Instant};

const BASE: Hva = Hva(0x7f00_0000_0000);
const RANGE: u64 = 64 << 20; // 16384 pages

fn populated(thp: bool, len: u64) -> Mm {
    let mut mm = Mm::new(MmConfig::default());
    let mut req = MmapRequest::anon(BASE, len);
    req.hugepage = thp;
    mm.mmap(req).expect("mmap");
    let step = if thp { 2 << 20 } else { 4096 };
    let mut a = 0;
    while a < len {
        mm.user_access(BASE.add(a), true, &mut NoNotifier)
            .expect("fault");
        a += step;
    }
    mm
}

fn gup_fast(c: &mut Criterion) {
    let mut g = c.benchmark_group("gup_fast");
    let pages = usize::try_from(RANGE >> 12).expect("fits");
    g.throughput(Throughput::Elements(RANGE >> 12));
    for (name, thp) in [("4K", false), ("2M", true)] {
        let mut mm = populated(thp, RANGE);
        let mut out: Vec<PageRef> = Vec::with_capacity(pages);
        g.bench_function(BenchmarkId::new("pages", name), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let n = gup::get_user_pages_fast_only(
                        &mut mm,
                        BASE,
                        pages,
                        FollFlags::WRITE,
                        &mut out,
                    );
                    total += t.elapsed();
                    assert_eq!(n, pages);
                    for p in out.drain(..) {
                        gup::put_page(&mut mm, p);
                    }
                }
                total
            })
        });
    }
    // One page per call, as KVM's hva_to_pfn_fast() does.
    let mut mm = populated(false, RANGE);
    g.bench_function(BenchmarkId::new("single_page_calls", "4K"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let mut got = Vec::with_capacity(pages);
                for i in 0..RANGE >> 12 {
                    let p =
                        gup::get_user_page_fast_only(&mut mm, BASE.add(i << 12), FollFlags::WRITE);
                    got.push(p.expect("populated"));
                }
                total += t.elapsed();
                for p in got {
                    gup::put_page(&mut mm, p);
                }
            }
            total
        })
    });
    g.finish();
}

fn host_fault(c: &mut Criterion) {
    let mut g = c.benchmark_group("host_fault");
    const N: u64 = 4096;
    g.throughput(Throughput::Elements(N));
    g.bench_function("anon_write_4K", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut mm = Mm::new(MmConfig::default());
                mm.mmap(MmapRequest::anon(BASE, N << 12)).expect("mmap");
                let t = Instant::now();
                for i in 0..N {
                    let r = mm.user_access(BASE.add(i << 12), true, &mut NoNotifier);
                    black_box(r.is_ok());
                }
                total += t.elapsed();
            }
            total
        })
    });
    g.bench_function("anon_read_then_cow_4K", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut mm = Mm::new(MmConfig::default());
                mm.mmap(MmapRequest::anon(BASE, N << 12)).expect("mmap");
                let t = Instant::now();
                for i in 0..N {
                    black_box(
                        mm.user_access(BASE.add(i << 12), false, &mut NoNotifier)
                            .is_ok(),
                    );
                    black_box(
                        mm.user_access(BASE.add(i << 12), true, &mut NoNotifier)
                            .is_ok(),
                    );
                }
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
}

fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let resident: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(resident * 4096)
}

fn memory_report() {
    const LEN: u64 = 1 << 30;
    let before = rss_bytes();
    let mm = populated(false, LEN);
    let after = rss_bytes();
    let u = mm.memory_use();
    let pages = u.mapped_pages;
    let model = u.page_table_bytes + u.frame_bytes;
    println!(
        "model memory (accounting): {} bytes for {} mapped 4K pages = {:.1} bytes/page",
        model,
        pages,
        model as f64 / pages as f64
    );
    if let (Some(b), Some(a)) = (before, after) {
        println!(
            "model memory (RSS growth): {} bytes for {} mapped 4K pages = {:.1} bytes/page",
            a.saturating_sub(b),
            pages,
            a.saturating_sub(b) as f64 / pages as f64
        );
    }
    black_box(&mm);
    drop(mm);
    let before = rss_bytes();
    let mut mm = Mm::new(MmConfig::default());
    let mut req = MmapRequest::anon(BASE, 256 << 20);
    req.shared = true;
    mm.mmap(req).expect("mmap");
    for i in 0..(256u64 << 20) >> 12 {
        mm.user_access(BASE.add(i << 12), true, &mut NoNotifier)
            .expect("fault");
    }
    let after = rss_bytes();
    let u = mm.memory_use();
    if let (Some(b), Some(a)) = (before, after) {
        println!(
            "model memory, shared anon (shmem page cache) (RSS growth): {:.1} bytes/page over {} pages",
            a.saturating_sub(b) as f64 / u.mapped_pages as f64,
            u.mapped_pages
        );
    }
    black_box(&mm);
}

criterion_group!(benches, gup_fast, host_fault);

fn main() {
    memory_report();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
