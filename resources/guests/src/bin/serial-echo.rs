//! Writes to the 16550 UART directly, then echoes one line of host stdin (polled) back by ucall.
#![no_std]
#![no_main]

use guest::{guest_main, inb, outb, print, println, Buf, Cpu};

const COM1: u16 = 0x3f8;
/// Line status register: bit 0 = data ready, bit 5 = transmit holding register empty.
const LSR: u16 = COM1 + 5;

fn uart_write(s: &str) {
    for b in s.bytes() {
        while inb(LSR) & 0x20 == 0 {}
        outb(COM1, b);
    }
}

fn main(cpu: &Cpu) -> u64 {
    if cpu.index != 0 {
        return 0;
    }
    uart_write("serial: ready for a line\n");
    let mut line = Buf::new();
    loop {
        if inb(LSR) & 1 == 0 {
            core::hint::spin_loop();
            continue;
        }
        let b = inb(COM1);
        if b == b'\n' {
            break;
        }
        let c = [b];
        let _ = core::fmt::Write::write_str(&mut line, core::str::from_utf8(&c).unwrap_or("?"));
    }
    print("echo: ");
    println!("{}", line.as_str());
    0
}

guest_main!(main);
