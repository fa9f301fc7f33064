//! An untrusted guest: random values to random ports and MMIO, console floods, random ucalls, then a malformed one.
//!
//! Phases (vCPU 0; other vCPUs halt), all driven by a fixed-seed xorshift generator so a
//! run is reproducible:
//!
//! 1. [`RANDOM_ACCESSES`] port and MMIO accesses of random size, address and value: any
//!    port except the ones that end the VM (i8042 reset command, debug-exit, ucall), and
//!    any address of the hole between RAM and the IOAPIC (identity mapped, not RAM).
//! 2. A console flood: [`SERIAL_FLOOD`] bytes to the UART without a newline, then
//!    [`PRINT_FLOOD`] ucall prints of a page of random RAM each.
//! 3. [`SYNC_FLOOD`] sync ucalls with random stages (more than the host keeps).
//! 4. A print whose string lies outside guest RAM: the host must end the VM as a guest
//!    crash ("malformed ucall"), so reaching `main`'s end is a host bug (status 3).
#![no_std]
#![no_main]

use guest::{cmd, guest_main, inb, outb, ucall, Cpu, DEBUG_EXIT_PORT, UCALL_PORT};

/// Random port/MMIO accesses in phase 1.
const RANDOM_ACCESSES: u32 = 20_000;
/// Bytes written to the UART without a newline in phase 2.
const SERIAL_FLOOD: u32 = 64 * 1024;
/// Page-sized ucall prints in phase 2 (1 MiB in all).
const PRINT_FLOOD: u32 = 256;
/// Sync ucalls in phase 3.
const SYNC_FLOOD: u32 = 3000;
/// Where the IOAPIC and LAPIC start: random MMIO stays below (their registers belong to
/// KVM's in-kernel irqchip, not to the VMM).
const IRQCHIP_BASE: u64 = 0xfec0_0000;
const COM1: u16 = 0x3f8;

/// xorshift64 (Marsaglia), fixed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// Ports whose writes end the VM: the i8042 (0xfe resets), debug-exit and ucall.
fn ends_the_vm(port: u16) -> bool {
    (0x60..=0x64).contains(&port)
        || (DEBUG_EXIT_PORT..DEBUG_EXIT_PORT + 4).contains(&port)
        || (UCALL_PORT..UCALL_PORT + 4).contains(&port)
}

fn outw(port: u16, v: u16) {
    // SAFETY: port I/O exits to the VMM; it cannot touch guest memory.
    unsafe { core::arch::asm!("out dx, ax", in("dx") port, in("ax") v, options(nomem, nostack)) };
}

fn outl(port: u16, v: u32) {
    // SAFETY: as `outw`.
    unsafe { core::arch::asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack)) };
}

fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: as `outw`.
    unsafe { core::arch::asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack)) };
    v
}

fn random_port_access(rng: &mut Rng) {
    let r = rng.next();
    let port = (r >> 16) as u16;
    if ends_the_vm(port) {
        return;
    }
    let v = (r >> 32) as u32;
    match r & 7 {
        0 => outb(port, v as u8),
        1 => outw(port, v as u16),
        2 => outl(port, v),
        3 | 4 => {
            core::hint::black_box(inb(port));
        }
        _ => {
            core::hint::black_box(inl(port));
        }
    }
}

fn random_mmio_access(rng: &mut Rng, ram: u64) {
    let r = rng.next();
    let span = IRQCHIP_BASE - ram;
    let addr = ram + (r >> 8) % (span - 8);
    let v = rng.next();
    // SAFETY: `addr` is in the hole between RAM and the irqchip: identity mapped, no
    // memory behind it, so every access is an MMIO exit to the VMM.
    unsafe {
        match r & 7 {
            0 => (addr as *mut u8).write_volatile(v as u8),
            1 => (addr as *mut u16).write_volatile(v as u16),
            2 => (addr as *mut u32).write_volatile(v as u32),
            3 => (addr as *mut u64).write_volatile(v),
            4 => {
                core::hint::black_box((addr as *const u8).read_volatile());
            }
            5 => {
                core::hint::black_box((addr as *const u16).read_volatile());
            }
            6 => {
                core::hint::black_box((addr as *const u32).read_volatile());
            }
            _ => {
                core::hint::black_box((addr as *const u64).read_volatile());
            }
        }
    }
}

fn main(cpu: &Cpu) -> u64 {
    if cpu.index != 0 {
        return 0;
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let ram = cpu.ram.min(IRQCHIP_BASE - (1 << 20));
    for _ in 0..RANDOM_ACCESSES {
        if rng.next() & 1 == 0 {
            random_port_access(&mut rng);
        } else {
            random_mmio_access(&mut rng, ram);
        }
    }
    // Put the UART back into a state that transmits (8N1, no loopback).
    outb(COM1 + 3, 0x03);
    outb(COM1 + 4, 0x00);
    outb(COM1 + 1, 0x00);
    for i in 0..SERIAL_FLOOD {
        outb(COM1, b'a' + (i % 26) as u8);
    }
    for _ in 0..PRINT_FLOOD {
        let gpa = (rng.next() % (ram - 4096)) & !7;
        ucall(cmd::PRINT, [gpa, 4096, 0, 0, 0, 0]);
    }
    for _ in 0..SYNC_FLOOD {
        ucall(cmd::SYNC, [rng.next(), 0, 0, 0, 0, 0]);
    }
    // A string past the end of RAM: the host ends the VM here.
    ucall(cmd::PRINT, [ram + (rng.next() & 0xffff), 16, 0, 0, 0, 0]);
    3
}

guest_main!(main);
