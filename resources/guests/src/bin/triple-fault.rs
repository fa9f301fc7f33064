//! Reads an unmapped address with no IDT: #PF, #DF, triple fault; the host reports a crash.
#![no_std]
#![no_main]

use guest::{guest_main, println, Cpu, Hex};

/// 1 TiB: outside the VMM's 4 GiB identity map, so the access page-faults.
const UNMAPPED: u64 = 1 << 40;

fn main(cpu: &Cpu) -> u64 {
    if cpu.index != 0 {
        return 0;
    }
    println!(
        "reading {}, which is not mapped; there is no IDT",
        Hex(UNMAPPED)
    );
    // SAFETY: deliberately faults; the VM ends with a triple fault.
    let v = unsafe { (UNMAPPED as *const u64).read_volatile() };
    v
}

guest_main!(main);
