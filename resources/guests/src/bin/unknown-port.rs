//! Pokes unclaimed I/O ports and MMIO addresses (the host logs them once) and ends with done(0).
#![no_std]
#![no_main]

use guest::{guest_assert_eq, guest_main, inb, outb, println, Cpu};

/// In the MMIO hole below 4 GiB: identity mapped, not RAM, no device.
const HOLE: u64 = 0xd000_0000;

fn main(cpu: &Cpu) -> u64 {
    if cpu.index != 0 {
        return 0;
    }
    for _ in 0..3 {
        outb(0x80, 0x12); // POST code port: nobody there (logged once, not three times)
    }
    guest_assert_eq!(inb(0x2f8), 0xff_u8, "unclaimed port reads as all ones");
    // SAFETY: an MMIO exit to the VMM; no memory behind it.
    unsafe { (HOLE as *mut u32).write_volatile(0x1234_5678) };
    // SAFETY: as above.
    let v = unsafe { (HOLE as *const u32).read_volatile() };
    guest_assert_eq!(v, 0xffff_ffff_u32, "unclaimed MMIO reads as all ones");
    println!("unknown port and MMIO accesses were ignored");
    0
}

guest_main!(main);
