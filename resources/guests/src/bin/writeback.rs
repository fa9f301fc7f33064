//! Live-mode data check: vCPU 0 writes a pattern to every page of 16 MiB, then reads it back 64 times with pauses; a host DONTNEED in between must not lose a page's data.
#![no_std]
#![no_main]

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

fn main(cpu: &Cpu) -> u64 {
    if cpu.index != 0 {
        return 0;
    }
    let end = cpu.ram.min(START + LEN);
    let mut addr = START;
    while addr < end {
        // SAFETY: identity-mapped guest RAM above the image, used by nothing else.
        unsafe { (addr as *mut u64).write_volatile(pattern(addr)) };
        addr += PAGE;
    }
    for round in 0..ROUNDS {
        let mut addr = START;
        let mut bad = 0u64;
        while addr < end {
            // SAFETY: as above.
            let got = unsafe { (addr as *const u64).read_volatile() };
            bad |= got ^ pattern(addr);
            addr += PAGE;
        }
        if bad != 0 {
            // Find the first bad word for the message.
            let mut addr = START;
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
    println!(
        "Wrote {} MiB at {} and read it back {} times; all good",
        Dec((end - START) >> 20),
        Hex(START),
        Dec(ROUNDS)
    );
    0
}

guest_main!(main);
