//! Ends the VM through the debug-exit port with status 42.
#![no_std]
#![no_main]

use guest::{debug_exit, guest_main, println, Cpu, Dec};

/// The status this guest exits with.
const STATUS: u32 = 42;

fn main(cpu: &Cpu) -> u64 {
    if cpu.index != 0 {
        return 0;
    }
    println!(
        "exiting through the debug-exit port with status {}",
        Dec(u64::from(STATUS))
    );
    debug_exit(STATUS)
}

guest_main!(main);
