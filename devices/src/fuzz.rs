//! Fuzz targets for everything a guest drives on the port bus, run as property tests.
//!
//! `cargo test -p devices` runs a few hundred cases each; the `fuzz` profile runs many:
//!
//! ```text
//! PROPTEST_CASES=100000 cargo test --profile fuzz -p devices fuzz_
//! ```
//!
//! Properties: no panic; a ucall decodes exactly when its structure and strings lie in
//! guest RAM and the strings are at most `MAX_STR` bytes; the VM ends only through a
//! device that ends it, with a reason that device gives; memory the devices keep is bounded.

// Test code: sizes here are small constants.
#![allow(clippy::cast_possible_truncation)]

use crate::bus::{Bus, MAX_UNKNOWN_LOGGED};
use crate::console::Console;
use crate::debug_exit::{DebugExit, DEBUG_EXIT_PORT};
use crate::exit::{ExitSignal, VmExit};
use crate::i8042::{I8042, I8042_BASE, I8042_LEN};
use crate::serial::{SerialPort, COM1_BASE, COM1_LEN};
use crate::ucall::{
    cmd, decode, Ucall, UcallError, UcallPort, MAX_LOGGED, MAX_STR, UCALL_LEN, UCALL_PORT,
    UCALL_SIZE,
};
use proptest::prelude::*;
use std::sync::{Arc, Mutex};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest RAM of the fuzzed VM: two regions with a hole, so ranges can straddle it.
const LOW: (u64, u64) = (0, 0x1_0000);
const HIGH: (u64, u64) = (0x2_0000, 0x1_0000);

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(LOW.0), LOW.1 as usize),
        (GuestAddress(HIGH.0), HIGH.1 as usize),
    ])
    .unwrap()
}

/// Whether `[gpa, gpa+len)` lies inside one region of [`mem`].
fn in_ram(gpa: u64, len: u64) -> bool {
    [LOW, HIGH]
        .iter()
        .any(|&(b, l)| gpa >= b && gpa.checked_add(len).is_some_and(|e| e <= b + l))
}

/// Guest-chosen addresses: mostly near the edges of RAM and of the address space.
fn gpa() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..LOW.1 + 0x100,
        (HIGH.0 - 0x100)..(HIGH.0 + HIGH.1 + 0x100),
        (LOW.1 - 0x200)..(LOW.1 + 0x10),
        Just(u64::MAX),
        (u64::MAX - 0x1000)..=u64::MAX,
        any::<u64>(),
    ]
}

/// Guest-chosen lengths: around `MAX_STR`, small, huge.
fn len() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..64u64,
        (MAX_STR - 2)..(MAX_STR + 2),
        0..0x2_0000u64,
        Just(u64::MAX),
        any::<u64>(),
    ]
}

fn command() -> impl Strategy<Value = u64> {
    prop_oneof![1..=4u64, 1..=4u64, any::<u64>()]
}

fn write_raw(m: &GuestMemoryMmap, at: u64, words: &[u64; 7]) {
    let mut b = Vec::with_capacity(UCALL_SIZE);
    for w in words {
        b.extend_from_slice(&w.to_le_bytes());
    }
    // A structure outside RAM is the case under test; nothing to write then.
    let _ = m.write_slice(&b, GuestAddress(at));
}

/// What `decode` must answer for these words at `at`, judged from the layout alone.
fn expected(at: u64, w: &[u64; 7]) -> Result<(), UcallError> {
    if !in_ram(at, UCALL_SIZE as u64) {
        return Err(UcallError::BadStruct { gpa: at });
    }
    let s = |gpa: u64, len: u64| {
        // An empty string reads no memory, so its address does not matter.
        if len == 0 || (len <= MAX_STR && in_ram(gpa, len)) {
            Ok(())
        } else {
            Err(UcallError::BadString { gpa, len })
        }
    };
    match w[0] {
        cmd::PRINT => s(w[1], w[2]),
        cmd::SYNC | cmd::DONE => Ok(()),
        cmd::ASSERT => s(w[1], w[2]).and_then(|()| s(w[4], w[5])),
        other => Err(UcallError::UnknownCommand(other)),
    }
}

/// One guest port access.
#[derive(Debug, Clone)]
enum Access {
    Out { port: u16, data: Vec<u8> },
    In { port: u16, len: usize },
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![
        COM1_BASE..COM1_BASE + COM1_LEN + 1,
        I8042_BASE..I8042_BASE + I8042_LEN + 1,
        DEBUG_EXIT_PORT - 1..DEBUG_EXIT_PORT + 5,
        UCALL_PORT - 1..UCALL_PORT + UCALL_LEN + 1,
        any::<u16>(),
    ]
}

fn access() -> impl Strategy<Value = Access> {
    prop_oneof![
        4 => (port(), prop::collection::vec(any::<u8>(), 0..=8))
            .prop_map(|(port, data)| Access::Out { port, data }),
        1 => (port(), prop_oneof![Just(4usize), 0..=8usize])
            .prop_map(|(port, data)| Access::Out { port, data: vec![0; data] }),
        2 => (port(), 0..=8usize).prop_map(|(port, len)| Access::In { port, len }),
    ]
}

/// The port bus `launch.rs` builds, over `m`, writing the console to a sink.
fn machine(m: &GuestMemoryMmap) -> (Bus, Arc<ExitSignal>, Arc<Mutex<UcallPort<GuestMemoryMmap>>>) {
    let exit = Arc::new(ExitSignal::new().unwrap());
    let console = Console::new(Box::new(std::io::sink()));
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let ucall = Arc::new(Mutex::new(UcallPort::new(
        m.clone(),
        console.clone(),
        exit.clone(),
    )));
    let mut bus = Bus::new("port");
    let serial = SerialPort::new(irq, console);
    bus.insert(
        COM1_BASE.into(),
        COM1_LEN.into(),
        Arc::new(Mutex::new(serial)),
    )
    .unwrap();
    bus.insert(
        I8042_BASE.into(),
        I8042_LEN.into(),
        Arc::new(Mutex::new(I8042::new(exit.clone()))),
    )
    .unwrap();
    bus.insert(
        DEBUG_EXIT_PORT.into(),
        4,
        Arc::new(Mutex::new(DebugExit::new(exit.clone()))),
    )
    .unwrap();
    bus.insert(UCALL_PORT.into(), UCALL_LEN.into(), ucall.clone())
        .unwrap();
    (bus, exit, ucall)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Ucall records with guest-chosen commands, addresses and lengths: `decode` agrees
    /// with the layout rule and never panics.
    #[test]
    fn fuzz_ucall_decode(
        at in gpa(),
        c in command(),
        a1 in gpa(), l1 in len(), line in any::<u64>(), a2 in gpa(), l2 in len(), a5 in any::<u64>(),
        fill in any::<u8>(),
    ) {
        let m = mem();
        m.write_slice(&[fill; 0x1000], GuestAddress(0x8000)).unwrap();
        let words = [c, a1, l1, line, a2, l2, a5];
        write_raw(&m, at, &words);
        let got = decode(&m, at);
        match (&got, expected(at, &words)) {
            (Ok(call), Ok(())) => {
                if let Ucall::Print(s) = call {
                    // Lossy UTF-8 turns each bad byte into a 3-byte U+FFFD at worst.
                    prop_assert!(s.len() <= 3 * MAX_STR as usize);
                }
            }
            (Err(e), Err(want)) => prop_assert_eq!(e, &want),
            (got, want) => prop_assert!(false, "decode {:?}, expected {:?}", got, want),
        }
    }

    /// Random raw bytes as the ucall structure.
    #[test]
    fn fuzz_ucall_raw_bytes(bytes in prop::collection::vec(any::<u8>(), UCALL_SIZE), at in 0..LOW.1) {
        let m = mem();
        let _ = m.write_slice(&bytes, GuestAddress(at));
        let _ = decode(&m, at);
    }

    /// Sequences of port writes and reads over serial, i8042, debug-exit and ucall: no
    /// panic, reads of unclaimed ports return all ones, the VM ends only for a reason one
    /// of the devices gives, and the bus and ucall log stay bounded.
    #[test]
    fn fuzz_pio_sequences(seq in prop::collection::vec(access(), 1..64), ucall_at in gpa(), words in prop::array::uniform7(any::<u64>())) {
        let m = mem();
        write_raw(&m, ucall_at & 0xffff, &words);
        let (bus, exit, ucall) = machine(&m);
        for a in &seq {
            match a {
                Access::Out { port, data } => {
                    bus.write(0, u64::from(*port), data);
                }
                Access::In { port, len } => {
                    let mut d = vec![0u8; *len];
                    if !bus.read(0, u64::from(*port), &mut d) {
                        prop_assert!(d.iter().all(|&b| b == 0xff));
                    }
                }
            }
        }
        prop_assert!(bus.unknown_accesses().len() <= MAX_UNKNOWN_LOGGED);
        prop_assert!(ucall.lock().unwrap().log().lock().unwrap().len() <= MAX_LOGGED);
        match exit.reason() {
            None | Some(VmExit::Reset | VmExit::DebugExit(_) | VmExit::Done(_)) => {}
            Some(VmExit::AssertFailed { vcpu, .. }) => prop_assert_eq!(vcpu, 0),
            Some(VmExit::Crash { reason, .. }) => prop_assert!(reason.starts_with("malformed ucall"), "{}", reason),
            // Only the VMM's watchdog ends a VM as stalled, never a device.
            Some(VmExit::Stalled { report }) => prop_assert!(false, "a device ended the VM as stalled: {}", report),
            // Only the VMM's seccomp handling ends a VM so, never a device.
            Some(e @ VmExit::SeccompViolation { .. }) => prop_assert!(false, "a device ended the VM as a seccomp violation: {}", e),
        }
    }
}

/// A guest that makes ucalls without end: the log keeps [`MAX_LOGGED`], counts the rest.
#[test]
fn ucall_flood_is_bounded() {
    let m = mem();
    m.write_slice(&[b'x'; MAX_STR as usize], GuestAddress(0x4000))
        .unwrap();
    write_raw(&m, 0x1000, &[cmd::PRINT, 0x4000, MAX_STR, 0, 0, 0, 0]);
    let (bus, exit, ucall) = machine(&m);
    for _ in 0..3 * MAX_LOGGED {
        bus.write(0, UCALL_PORT.into(), &0x1000u32.to_le_bytes());
    }
    let u = ucall.lock().unwrap();
    assert_eq!(u.log().lock().unwrap().len(), MAX_LOGGED);
    assert_eq!(u.unlogged(), 2 * MAX_LOGGED as u64);
    assert_eq!(exit.reason(), None);
}

/// A string one byte longer than a page (and than `MAX_STR`) ends the VM as a malformed
/// ucall instead of being read; one exactly `MAX_STR` long is printed.
#[test]
fn ucall_string_longer_than_a_page_is_refused() {
    let m = mem();
    let (console, out) = Console::buffer();
    let exit = Arc::new(ExitSignal::new().unwrap());
    let mut p = UcallPort::new(m.clone(), console, exit.clone());
    m.write_slice(&[b'y'; 2 * 4096], GuestAddress(0x4000))
        .unwrap();
    write_raw(&m, 0x1000, &[cmd::PRINT, 0x4000, MAX_STR, 0, 0, 0, 0]);
    crate::bus::BusDevice::write(&mut p, 0, 0, &0x1000u32.to_le_bytes());
    assert_eq!(out.lock().unwrap().len(), MAX_STR as usize);
    assert_eq!(exit.reason(), None);
    write_raw(&m, 0x1000, &[cmd::PRINT, 0x4000, 4096 + 1, 0, 0, 0, 0]);
    crate::bus::BusDevice::write(&mut p, 0, 0, &0x1000u32.to_le_bytes());
    let r = exit.reason().unwrap().to_string();
    assert!(r.contains("longer than 4096"), "{r}");
    assert_eq!(
        out.lock().unwrap().len(),
        MAX_STR as usize,
        "nothing more printed"
    );
}

/// Ucall structures and strings outside RAM (past its end, in the hole, straddling the
/// end) are reported, never read or written.
#[test]
fn ucall_addresses_outside_ram_are_reported() {
    let m = mem();
    for at in [LOW.1 - 8, LOW.1, HIGH.0 - 1, 0xffff_fff0] {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut p = UcallPort::new(
            m.clone(),
            Console::new(Box::new(std::io::sink())),
            exit.clone(),
        );
        crate::bus::BusDevice::write(&mut p, 0, 0, &u32::try_from(at).unwrap().to_le_bytes());
        let r = exit.reason().unwrap().to_string();
        assert!(r.contains("outside guest RAM"), "{at:#x}: {r}");
    }
    for (gpa, len) in [
        (LOW.1 - 4, 8),
        (HIGH.0 + HIGH.1, 1),
        (u64::MAX, 2),
        (u64::MAX - 1, 4),
    ] {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut p = UcallPort::new(
            m.clone(),
            Console::new(Box::new(std::io::sink())),
            exit.clone(),
        );
        write_raw(&m, 0x1000, &[cmd::PRINT, gpa, len, 0, 0, 0, 0]);
        crate::bus::BusDevice::write(&mut p, 0, 0, &0x1000u32.to_le_bytes());
        let r = exit.reason().unwrap().to_string();
        assert!(r.contains("outside guest RAM"), "{gpa:#x}+{len}: {r}");
    }
}
