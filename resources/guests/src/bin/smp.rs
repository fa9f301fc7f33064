//! Every vCPU checks its APIC id, prints and syncs its index; vCPU 0 waits for all, then done(0).
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use guest::{guest_assert_eq, guest_main, println, sync, Cpu, Dec};

static ARRIVED: AtomicU64 = AtomicU64::new(0);

fn main(cpu: &Cpu) -> u64 {
    // The VMM gives each vCPU its index as APIC id (CPUID leaf 1 EBX[31:24]).
    guest_assert_eq!(
        guest::apic_id(),
        cpu.index,
        "APIC id of vCPU {}",
        Dec(cpu.index)
    );
    println!(
        "vCPU {} of {} running guest code",
        Dec(cpu.index),
        Dec(cpu.count)
    );
    sync(cpu.index);
    ARRIVED.fetch_add(1, Ordering::SeqCst);
    if cpu.index == 0 {
        while ARRIVED.load(Ordering::SeqCst) < cpu.count {
            core::hint::spin_loop();
        }
        println!("all {} vCPUs reported", Dec(cpu.count));
    }
    0
}

guest_main!(main);
