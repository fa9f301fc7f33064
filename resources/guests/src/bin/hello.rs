//! Default guest: prints from every vCPU; vCPU 0 writes and verifies a pattern over 32 MiB of RAM, then done(0).
#![no_std]
#![no_main]

use guest::{guest_assert_eq, guest_main, println, Cpu, Dec, Hex};

/// First byte of the touched range (above the image and stacks).
const TOUCH_START: u64 = 8 << 20;
/// Bytes touched at most.
const TOUCH_LEN: u64 = 32 << 20;
const PAGE: u64 = 4096;

fn pattern(addr: u64) -> u64 {
    addr ^ 0x5a5a_5a5a_0000_0000
}

fn main(cpu: &Cpu) -> u64 {
    println!(
        "Hello from faultline's guest: vCPU {} of {}, {} MiB of RAM",
        Dec(cpu.index),
        Dec(cpu.count),
        Dec(cpu.ram >> 20)
    );
    if cpu.index != 0 {
        return 0;
    }
    let end = cpu.ram.min(TOUCH_START + TOUCH_LEN);
    let mut addr = TOUCH_START;
    while addr < end {
        // SAFETY: identity mapped guest RAM above the image, used by nothing else.
        unsafe { (addr as *mut u64).write_volatile(pattern(addr)) };
        addr += PAGE;
    }
    let mut addr = TOUCH_START;
    while addr < end {
        // SAFETY: as above.
        let got = unsafe { (addr as *const u64).read_volatile() };
        guest_assert_eq!(got, pattern(addr), "pattern at {}", Hex(addr));
        addr += PAGE;
    }
    println!(
        "Wrote and verified {} pages ({} MiB) at {}; all good",
        Dec((end - TOUCH_START) / PAGE),
        Dec((end - TOUCH_START) >> 20),
        Hex(TOUCH_START)
    );
    0
}

guest_main!(main);
