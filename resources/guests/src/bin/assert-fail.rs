//! A guest assertion fails: the host reports this file, the line and the message, and exits 101.
#![no_std]
#![no_main]

use guest::{guest_assert_eq, guest_main, println, Cpu};

fn main(cpu: &Cpu) -> u64 {
    if cpu.index != 0 {
        return 0;
    }
    println!("about to fail an assertion");
    let two = core::hint::black_box(1) + 1;
    guest_assert_eq!(two, 3, "arithmetic works in the guest");
    0
}

guest_main!(main);
