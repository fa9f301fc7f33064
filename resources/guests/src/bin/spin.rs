//! Spins forever with interrupts off and never exits to the VMM (for the watchdog's test).
#![no_std]
#![no_main]

use guest::{guest_main, Cpu};

/// The loop the watchdog must name: `cli` once, then a jump to itself.
#[no_mangle]
#[inline(never)]
pub extern "C" fn spin_forever() -> ! {
    // SAFETY: masking interrupts and spinning touches no memory.
    unsafe { core::arch::asm!("cli", "2:", "jmp 2b", options(noreturn)) }
}

fn main(_cpu: &Cpu) -> u64 {
    spin_forever()
}

guest_main!(main);
