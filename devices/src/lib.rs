//! Guest devices for the faultline VMM.
//!
//! Everything here is plain userspace emulation: no KVM ioctls. The VMM routes a vCPU's
//! port-I/O exits through a [`bus::Bus`] to these devices:
//!
//! | ports | device | what it does |
//! |---|---|---|
//! | 0x3f8..0x400 | [`serial::SerialPort`] | 16550 UART (vm-superio); IRQ 4 through an `EventFd` the VMM registers as an irqfd |
//! | 0x60..0x65 | [`i8042::I8042`] | keyboard controller; `outb 0xfe -> 0x64` resets = ends the VM with status 0 |
//! | 0xf4..0xf8 | [`debug_exit::DebugExit`] | guest writes a status; the VM ends with it |
//! | 0xe0..0xe4 | [`ucall::UcallPort`] | guest programs' calls to the host (print, sync, done, assert) |
//!
//! Devices that end the VM do so through one [`exit::ExitSignal`]: the first reason wins,
//! and its `EventFd` wakes the VMM's event loop.
//!
//! Accesses to ports no device claims are logged once per port and are not fatal
//! (reads return all ones, as on real hardware with nothing on the bus).
//!
//! ```
//! use devices::bus::Bus;
//! use devices::exit::{ExitSignal, VmExit};
//! use devices::debug_exit::DebugExit;
//! use std::sync::{Arc, Mutex};
//!
//! let exit = Arc::new(ExitSignal::new().unwrap());
//! let mut bus = Bus::new("port");
//! bus.insert(0xf4, 4, Arc::new(Mutex::new(DebugExit::new(exit.clone())))).unwrap();
//! bus.write(0, 0xf4, &[7]);
//! assert_eq!(exit.reason(), Some(VmExit::DebugExit(7)));
//! ```
#![deny(missing_docs)]

pub mod bus;
pub mod console;
pub mod debug_exit;
pub mod exit;
pub mod i8042;
pub mod serial;
pub mod ucall;

#[cfg(test)]
mod fuzz;
