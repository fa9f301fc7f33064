//! Live-mode data check: the vCPUs write a pattern to every page of 16 MiB (each its own slice), then read it back 64 times with pauses; a host DONTNEED in between must not lose a page's data.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use guest::{guest_assert_eq, guest_main, inb, println, Cpu, Dec, Hex};

/// First byte of the checked range (above the image and stacks).
const START: u64 = 8 << 20;
/// Bytes checked at most.
const LEN: u64 = 16 << 20;
/// Read-back rounds.
const ROUNDS: u64 = 64;
/// Port reads between rounds: each is an exit to the VMM (tens of µs on this nested host),
/// so a round lasts a few ms and host events land in between. Port 0x80 is the classic
/// unclaimed delay port.
const PAUSE_EXITS: u32 = 100;
const PAGE: u64 = 4096;

fn pattern(addr: u64) -> u64 {
    addr ^ 0x7772_6974_6562_6163
}

/// vCPUs other than 0 that have checked their slice (vCPU 0 ends the VM after them).
static CHECKED: AtomicU64 = AtomicU64::new(0);

fn main(cpu: &Cpu) -> u64 {
    let total = cpu.ram.min(START + LEN).saturating_sub(START) / PAGE;
    let per = total / cpu.count.max(1);
    let start = START + cpu.index * per * PAGE;
    let end = if cpu.index + 1 == cpu.count {
        START + total * PAGE
    } else {
        start + per * PAGE
    };
    let mut addr = start;
    while addr < end {
        // SAFETY: identity-mapped guest RAM above the image, used by nothing else.
        unsafe { (addr as *mut u64).write_volatile(pattern(addr)) };
        addr += PAGE;
    }
    for round in 0..ROUNDS {
        let mut addr = start;
        let mut bad = 0u64;
        while addr < end {
            // SAFETY: as above.
            let got = unsafe { (addr as *const u64).read_volatile() };
            bad |= got ^ pattern(addr);
            addr += PAGE;
        }
        if bad != 0 {
            // Find the first bad word for the message.
            let mut addr = start;
            while addr < end {
                // SAFETY: as above.
                let got = unsafe { (addr as *const u64).read_volatile() };
                guest_assert_eq!(got, pattern(addr), "round {} page at {}", Dec(round), Hex(addr));
                addr += PAGE;
            }
        }
        for _ in 0..PAUSE_EXITS {
            let _ = inb(0x80);
        }
    }
    if cpu.index != 0 {
        CHECKED.fetch_add(1, Ordering::SeqCst);
        return 0;
    }
    while CHECKED.load(Ordering::SeqCst) + 1 < cpu.count {
        core::hint::spin_loop();
    }
    println!(
        "Wrote {} MiB at {} on {} vCPU(s) and read it back {} times; all good",
        Dec((total * PAGE) >> 20),
        Hex(START),
        Dec(cpu.count),
        Dec(ROUNDS)
    );
    0
}

guest_main!(main);
