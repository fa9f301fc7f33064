//! Fault-latency workload (`faultline bench faults`): each vCPU touches its own region once per page, then verifies it.
//!
//! Parameters come in guest memory at [`PARAMS_GPA`] (written by vmm::measure::workload
//! before the vCPUs start; layout `faultline_abi::touch::TouchParams`, all little-endian
//! u64). vCPU `i` touches
//! `region_gpa + i * bytes_per_vcpu .. + bytes_per_vcpu`, one 8-byte access every `stride`
//! bytes, in sequential or pseudo-random order, as a read, a write or a read then a write.
//!
//! The host times the touch loop from outside (platform.md: guest TSC is unreliable here):
//! the guest writes stage numbers to [`MARK_PORT`] right before and right after the loop,
//! and the host timestamps those two port-I/O exits (exit-to-exit, clock_gettime).
//!
//! Data checks (a mismatch is a guest assertion with the address):
//! - `expect = 0`: every first read sees zero (fresh anon/shmem/hugetlb, UFFDIO_ZEROPAGE);
//! - `expect = 1`: every first read sees the uffd handler's pattern, `PATTERN_MAGIC ^ gpa`
//!   (UFFDIO_COPY, or MINOR pages filled through the alias mapping);
//! - writes store `PATTERN_MAGIC ^ gpa`, and a verification pass after the timed loop reads
//!   every touched word back.
//!
//! # The loop
//! Each mode has its own loop so the hot path has no mode branches. The sequential read
//! loop is, per page: `mov rax,[rdi]` / `xor rax,rdi&pmask` / `xor rax,pval` / `or rbx,rax` /
//! `add rdi,stride` / `cmp rdi,end` / `jb` — read errors are OR-ed into one word and checked
//! once after the loop (the slow path then finds the first bad page). The write loop is
//! `mov rax,rdi` / `xor rax,MAGIC` / `mov [rdi],rax` / `add` / `cmp` / `jb`. On a host with
//! a shadow MMU (this project's dev machines) KVM write-protects guest page tables and
//! emulates some accesses; our page tables live elsewhere and the loop touches only data
//! pages, so what KVM emulates is its own business (pf_emulate in the stats shows it).
//!
//! Guest code runs without SSE (resources/guests/.cargo/config.toml): numbers in messages
//! go through `guest::{Dec, Hex}`.
//!
//! Random order walks page indices with a full-period LCG modulo the next power of two
//! (x = a·x + c, a ≡ 1 mod 4, c odd) and skips indices past the end (cycle walking), so every
//! page is touched exactly once in a scattered order without any table in memory.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use guest::{guest_assert, guest_assert_eq, guest_main, outl, Cpu, Dec, Hex};

pub use guest::abi::touch::{
    TouchParams as Params, ACCESS_READ, ACCESS_READ_WRITE, ACCESS_WRITE, MARK_PORT, PARAMS_GPA,
    PARAMS_MAGIC, STAGE_END, STAGE_START, STAGE_VERIFIED,
};
pub use guest::abi::PATTERN_MAGIC;

fn params() -> &'static Params {
    // SAFETY: the host wrote a `Params` at PARAMS_GPA (identity mapped) before start; the
    // guest only reads it, except through `finished()` and its own `touched` slot.
    unsafe { &*(PARAMS_GPA as *const Params) }
}

/// `Params::finished`, updated atomically by every vCPU.
fn finished(prm: &'static Params) -> &'static AtomicU64 {
    // SAFETY: the field is an aligned u64 in guest memory that lives for the whole run and
    // is only accessed atomically by the guest (the host writes it before start).
    unsafe { AtomicU64::from_ptr(core::ptr::addr_of!(prm.finished) as *mut u64) }
}

fn mark(stage: u32) {
    outl(MARK_PORT, stage);
}

/// Expected first-read value at `addr`: `(addr & pmask) ^ pval`.
fn masks(expect: u64) -> (u64, u64) {
    if expect == 1 {
        (u64::MAX, PATTERN_MAGIC)
    } else {
        (0, 0)
    }
}

/// Sequential read; returns the OR of all mismatches (0 = all good).
#[inline(never)]
fn seq_read(start: u64, end: u64, stride: u64, pmask: u64, pval: u64) -> u64 {
    let mut bad = 0;
    let mut p = start;
    while p < end {
        // SAFETY: `p` is inside this vCPU's region, identity mapped guest memory.
        let v = unsafe { (p as *const u64).read_volatile() };
        bad |= v ^ (p & pmask) ^ pval;
        p += stride;
    }
    bad
}

#[inline(never)]
fn seq_write(start: u64, end: u64, stride: u64) {
    let mut p = start;
    while p < end {
        // SAFETY: as `seq_read`.
        unsafe { (p as *mut u64).write_volatile(p ^ PATTERN_MAGIC) };
        p += stride;
    }
}

#[inline(never)]
fn seq_read_write(start: u64, end: u64, stride: u64, pmask: u64, pval: u64) -> u64 {
    let mut bad = 0;
    let mut p = start;
    while p < end {
        // SAFETY: as `seq_read`.
        let v = unsafe { (p as *const u64).read_volatile() };
        bad |= v ^ (p & pmask) ^ pval;
        // SAFETY: as `seq_read`.
        unsafe { (p as *mut u64).write_volatile(p ^ PATTERN_MAGIC) };
        p += stride;
    }
    bad
}

const LCG_A: u64 = 6_364_136_223_846_793_005;

/// Random order over `n` accesses; `op(addr)` per access, returns the OR of its results.
#[inline(always)]
fn random_walk(start: u64, n: u64, stride: u64, seed: u64, mut op: impl FnMut(u64) -> u64) -> u64 {
    let m = n.next_power_of_two();
    let c = seed | 1;
    let mut x = seed & (m - 1);
    let mut bad = 0;
    for _ in 0..m {
        x = x.wrapping_mul(LCG_A).wrapping_add(c) & (m - 1);
        if x < n {
            bad |= op(start + x * stride);
        }
    }
    bad
}

/// First address in `start..end` whose first read did not match (the slow path).
fn first_bad(start: u64, end: u64, stride: u64, pmask: u64, pval: u64) -> (u64, u64) {
    let mut p = start;
    while p < end {
        // SAFETY: as `seq_read`.
        let v = unsafe { (p as *const u64).read_volatile() };
        if v ^ (p & pmask) ^ pval != 0 {
            return (p, v);
        }
        p += stride;
    }
    (0, 0)
}

fn main(cpu: &Cpu) -> u64 {
    let prm = params();
    guest_assert_eq!(
        prm.magic,
        PARAMS_MAGIC,
        "touch parameters missing at {}",
        Hex(PARAMS_GPA)
    );
    guest_assert!(
        cpu.index < guest::MAX_VCPUS as u64,
        "vCPU index {} beyond the parameter block",
        Dec(cpu.index)
    );
    guest_assert!(
        prm.stride >= 8 && prm.stride.is_multiple_of(8),
        "stride {} must be a multiple of 8",
        Dec(prm.stride)
    );
    let start = prm.region_gpa + cpu.index * prm.bytes_per_vcpu;
    let end = start + prm.bytes_per_vcpu;
    let stride = prm.stride;
    let n = prm.bytes_per_vcpu / stride;
    let (pmask, pval) = masks(prm.expect);

    mark(STAGE_START);
    let bad = match (prm.access, prm.random != 0) {
        (ACCESS_READ, false) => seq_read(start, end, stride, pmask, pval),
        (ACCESS_WRITE, false) => {
            seq_write(start, end, stride);
            0
        }
        (ACCESS_READ_WRITE, false) => seq_read_write(start, end, stride, pmask, pval),
        (ACCESS_READ, true) => random_walk(start, n, stride, prm.seed, |p| {
            // SAFETY: as `seq_read`.
            let v = unsafe { (p as *const u64).read_volatile() };
            v ^ (p & pmask) ^ pval
        }),
        (ACCESS_WRITE, true) => random_walk(start, n, stride, prm.seed, |p| {
            // SAFETY: as `seq_read`.
            unsafe { (p as *mut u64).write_volatile(p ^ PATTERN_MAGIC) };
            0
        }),
        (ACCESS_READ_WRITE, true) => random_walk(start, n, stride, prm.seed, |p| {
            // SAFETY: as `seq_read`.
            let v = unsafe { (p as *const u64).read_volatile() };
            // SAFETY: as `seq_read`.
            unsafe { (p as *mut u64).write_volatile(p ^ PATTERN_MAGIC) };
            v ^ (p & pmask) ^ pval
        }),
        (other, _) => guest::assert_failed(
            file!(),
            line!(),
            if other > 2 {
                "unknown access kind"
            } else {
                "?"
            },
        ),
    };
    mark(STAGE_END);

    if bad != 0 {
        // Only read-only runs can still show the first bad value; after a write it is gone.
        let (addr, got) = first_bad(start, end, stride, pmask, pval);
        guest_assert!(
            false,
            "first read of vCPU {}'s region saw unexpected data (expect mode {}), e.g. {} at {}",
            Dec(cpu.index),
            Dec(prm.expect),
            Hex(got),
            Hex(addr)
        );
    }
    if prm.access != ACCESS_READ {
        let (addr, got) = first_bad(start, end, stride, u64::MAX, PATTERN_MAGIC);
        guest_assert!(
            addr == 0,
            "written word at {} reads back {}",
            Hex(addr),
            Hex(got)
        );
    }
    // SAFETY: each vCPU writes only its own slot.
    unsafe {
        let slot = core::ptr::addr_of!(prm.touched[cpu.index as usize]) as *mut u64;
        slot.write_volatile(n);
    }
    mark(STAGE_VERIFIED);
    finished(prm).fetch_add(1, Ordering::SeqCst);
    if cpu.index == 0 {
        while finished(prm).load(Ordering::SeqCst) < cpu.count {
            core::hint::spin_loop();
        }
    }
    0
}

guest_main!(main);
