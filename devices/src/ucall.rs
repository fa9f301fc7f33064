//! The ucall port: how built-in guest programs talk to the host.
//!
//! Follows the KVM selftests' ucall (tools/testing/selftests/kvm/lib/ucall_common.c,
//! lib/x86_64/ucall.c), which pass a pointer to a `struct ucall` through a PIO write.
//!
//! # Wire protocol
//!
//! The guest fills a [`UcallRaw`] in its memory (little-endian, 8-byte aligned, 56 bytes)
//!
//! ```text
//! offset  field    PRINT (1)    SYNC (2)   DONE (3)   ASSERT (4)
//! 0       cmd      1            2          3          4
//! 8       args[0]  str gpa      stage      status     file gpa
//! 16      args[1]  str len      -          -          file len
//! 24      args[2]  -            -          -          line
//! 32      args[3]  -            -          -          msg gpa
//! 40      args[4]  -            -          -          msg len
//! 48      args[5]  -            -          -          -
//! ```
//!
//! and writes its guest-physical address as a 32-bit `out` to port [`UCALL_PORT`] (0xe0).
//! The structure and the strings must lie below 4 GiB in guest RAM (guests run identity
//! mapped, so their pointers are guest-physical addresses). Strings are UTF-8 (invalid
//! bytes are replaced), at most [`MAX_STR`] bytes; an empty string reads no memory, whatever its address. The host handles the call before the
//! `out` instruction completes, so the guest may reuse the structure right after.
//!
//! PRINT writes the string to the console. SYNC records the stage (and the calling vCPU).
//! DONE ends the VM with the status ([`VmExit::Done`]). ASSERT ends it with
//! [`VmExit::AssertFailed`]. A call the host cannot decode (bad address, unknown command)
//! ends the VM as a guest crash naming the problem. Every call is recorded
//! ([`UcallPort::log`]) with the index of the vCPU that made it, which the host knows
//! from the exit itself, so a test can check which vCPU ran what. The guest chooses how
//! many calls it makes, so the log keeps the first [`MAX_LOGGED`] and counts the rest
//! ([`UcallPort::unlogged`]): a guest looping on ucalls cannot grow the VMM without bound.

use crate::bus::BusDevice;
use crate::console::Console;
use crate::exit::{ExitSignal, VmExit};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

// The wire format lives in the host-guest ABI crate, shared with the guests' runtime.
pub use faultline_abi::ucall::{cmd, UcallRaw, MAX_STR, UCALL_LEN, UCALL_PORT, UCALL_SIZE};

/// Most ucalls [`UcallPort::log`] keeps (each may hold two strings of up to [`MAX_STR`]
/// bytes, so the log stays below 8 MiB whatever the guest does).
pub const MAX_LOGGED: usize = 1024;

/// A decoded ucall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ucall {
    /// Print.
    Print(String),
    /// Reached a stage.
    Sync(u64),
    /// Done with a status.
    Done(u64),
    /// Assertion failed.
    Assert {
        /// Guest source file.
        file: String,
        /// Line.
        line: u32,
        /// Message.
        msg: String,
    },
}

/// A ucall with the vCPU that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UcallRecord {
    /// Index of the vCPU whose `out` carried the call.
    pub vcpu: usize,
    /// The call.
    pub call: Ucall,
}

/// A ucall the host could not decode.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UcallError {
    /// The structure's address is outside guest RAM.
    #[error("ucall structure at {gpa:#x} is outside guest RAM")]
    BadStruct {
        /// Its address.
        gpa: u64,
    },
    /// A string argument is outside guest RAM or too long.
    #[error("ucall string at {gpa:#x} (len {len}) is outside guest RAM or longer than {MAX_STR}")]
    BadString {
        /// Its address.
        gpa: u64,
        /// Its length.
        len: u64,
    },
    /// Unknown command number.
    #[error("unknown ucall command {0}")]
    UnknownCommand(u64),
    /// The `out` was not 4 bytes at offset 0.
    #[error("ucall port written with {size} bytes at offset {offset}; write a 32-bit address to offset 0")]
    BadAccess {
        /// Offset written.
        offset: u64,
        /// Bytes written.
        size: usize,
    },
}

fn read_string<M: GuestMemory>(mem: &M, gpa: u64, len: u64) -> Result<String, UcallError> {
    if len > MAX_STR {
        return Err(UcallError::BadString { gpa, len });
    }
    let n = usize::try_from(len).map_err(|_| UcallError::BadString { gpa, len })?;
    let mut buf = vec![0u8; n];
    mem.read_slice(&mut buf, GuestAddress(gpa))
        .map_err(|_| UcallError::BadString { gpa, len })?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Reads and decodes the ucall structure at `gpa`.
pub fn decode<M: GuestMemory>(mem: &M, gpa: u64) -> Result<Ucall, UcallError> {
    let mut raw = [0u8; UCALL_SIZE];
    mem.read_slice(&mut raw, GuestAddress(gpa))
        .map_err(|_| UcallError::BadStruct { gpa })?;
    let word = |i: usize| u64::from_le_bytes(raw[i * 8..i * 8 + 8].try_into().unwrap());
    let arg = |i: usize| word(i + 1);
    match word(0) {
        cmd::PRINT => Ok(Ucall::Print(read_string(mem, arg(0), arg(1))?)),
        cmd::SYNC => Ok(Ucall::Sync(arg(0))),
        cmd::DONE => Ok(Ucall::Done(arg(0))),
        cmd::ASSERT => Ok(Ucall::Assert {
            file: read_string(mem, arg(0), arg(1))?,
            line: u32::try_from(arg(2)).unwrap_or(u32::MAX),
            msg: read_string(mem, arg(3), arg(4))?,
        }),
        other => Err(UcallError::UnknownCommand(other)),
    }
}

/// The ucall device.
pub struct UcallPort<M> {
    mem: M,
    console: Console,
    exit: Arc<ExitSignal>,
    log: Arc<Mutex<Vec<UcallRecord>>>,
    unlogged: Arc<AtomicU64>,
}

impl<M> std::fmt::Debug for UcallPort<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UcallPort")
    }
}

impl<M: GuestMemory + Send> UcallPort<M> {
    /// A ucall device reading guest memory `mem`, printing to `console`, ending the VM
    /// through `exit`.
    pub fn new(mem: M, console: Console, exit: Arc<ExitSignal>) -> Self {
        UcallPort {
            mem,
            console,
            exit,
            log: Arc::new(Mutex::new(Vec::new())),
            unlogged: Arc::default(),
        }
    }

    /// The shared record of the first [`MAX_LOGGED`] ucalls.
    pub fn log(&self) -> Arc<Mutex<Vec<UcallRecord>>> {
        self.log.clone()
    }

    /// How many ucalls were handled but not logged because the log was full.
    pub fn unlogged(&self) -> u64 {
        self.unlogged.load(Ordering::Relaxed)
    }

    fn handle(&mut self, vcpu: usize, gpa: u64) -> Result<(), UcallError> {
        let call = decode(&self.mem, gpa)?;
        match &call {
            Ucall::Print(s) => {
                let _ = self.console.write_all(s.as_bytes());
            }
            Ucall::Sync(_) => {}
            Ucall::Done(status) => {
                self.exit.request(VmExit::Done(*status));
            }
            Ucall::Assert { file, line, msg } => {
                self.exit.request(VmExit::AssertFailed {
                    vcpu,
                    file: file.clone(),
                    line: *line,
                    msg: msg.clone(),
                });
            }
        }
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() < MAX_LOGGED {
            log.push(UcallRecord { vcpu, call });
        } else {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

impl<M: GuestMemory + Send> BusDevice for UcallPort<M> {
    fn read(&mut self, _vcpu: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, vcpu: usize, offset: u64, data: &[u8]) {
        let res = if offset != 0 || data.len() != 4 {
            Err(UcallError::BadAccess {
                offset,
                size: data.len(),
            })
        } else {
            let gpa = u64::from(u32::from_le_bytes(data.try_into().unwrap()));
            self.handle(vcpu, gpa)
        };
        if let Err(e) = res {
            self.exit.request(VmExit::Crash {
                vcpu,
                reason: format!("malformed ucall: {e}"),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn put(mem: &GuestMemoryMmap, gpa: u64, raw: UcallRaw) {
        let mut b = Vec::new();
        b.extend_from_slice(&raw.cmd.to_le_bytes());
        for a in raw.args {
            b.extend_from_slice(&a.to_le_bytes());
        }
        mem.write_slice(&b, GuestAddress(gpa)).unwrap();
    }

    fn port(
        m: &GuestMemoryMmap,
    ) -> (
        UcallPort<GuestMemoryMmap>,
        Arc<ExitSignal>,
        Arc<Mutex<Vec<u8>>>,
    ) {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let (console, buf) = Console::buffer();
        (UcallPort::new(m.clone(), console, exit.clone()), exit, buf)
    }

    #[test]
    fn print_sync_done_round_trip_through_guest_memory() {
        let m = mem();
        let (mut p, exit, out) = port(&m);
        m.write_slice(b"hello\n", GuestAddress(0x2000)).unwrap();
        put(
            &m,
            0x1000,
            UcallRaw {
                cmd: cmd::PRINT,
                args: [0x2000, 6, 0, 0, 0, 0],
            },
        );
        p.write(0, 0, &0x1000u32.to_le_bytes());
        put(
            &m,
            0x1000,
            UcallRaw {
                cmd: cmd::SYNC,
                args: [7, 0, 0, 0, 0, 0],
            },
        );
        p.write(3, 0, &0x1000u32.to_le_bytes());
        assert_eq!(&*out.lock().unwrap(), b"hello\n");
        assert_eq!(exit.reason(), None);
        put(
            &m,
            0x1000,
            UcallRaw {
                cmd: cmd::DONE,
                args: [0, 0, 0, 0, 0, 0],
            },
        );
        p.write(0, 0, &0x1000u32.to_le_bytes());
        assert_eq!(exit.reason(), Some(VmExit::Done(0)));
        let log = p.log();
        let log = log.lock().unwrap();
        assert_eq!(
            log[1],
            UcallRecord {
                vcpu: 3,
                call: Ucall::Sync(7)
            }
        );
    }

    #[test]
    fn assert_carries_file_line_and_message() {
        let m = mem();
        let (mut p, exit, _) = port(&m);
        m.write_slice(b"src/bin/x.rs", GuestAddress(0x2000))
            .unwrap();
        m.write_slice(b"1 != 2", GuestAddress(0x3000)).unwrap();
        put(
            &m,
            0x1000,
            UcallRaw {
                cmd: cmd::ASSERT,
                args: [0x2000, 12, 42, 0x3000, 6, 0],
            },
        );
        p.write(1, 0, &0x1000u32.to_le_bytes());
        assert_eq!(
            exit.reason(),
            Some(VmExit::AssertFailed {
                vcpu: 1,
                file: "src/bin/x.rs".into(),
                line: 42,
                msg: "1 != 2".into()
            })
        );
    }

    #[test]
    fn malformed_calls_crash_the_vm_with_the_reason() {
        let m = mem();
        let (mut p, exit, _) = port(&m);
        p.write(0, 0, &0xfff_0000u32.to_le_bytes());
        let r = exit.reason().unwrap().to_string();
        assert!(r.contains("outside guest RAM"), "{r}");

        let (mut p, exit, _) = port(&m);
        put(
            &m,
            0x1000,
            UcallRaw {
                cmd: 99,
                args: [0; 6],
            },
        );
        p.write(0, 0, &0x1000u32.to_le_bytes());
        assert!(exit
            .reason()
            .unwrap()
            .to_string()
            .contains("unknown ucall command 99"));

        let (mut p, exit, _) = port(&m);
        put(
            &m,
            0x1000,
            UcallRaw {
                cmd: cmd::PRINT,
                args: [0x2000, MAX_STR + 1, 0, 0, 0, 0],
            },
        );
        p.write(0, 0, &0x1000u32.to_le_bytes());
        assert!(exit.reason().unwrap().to_string().contains("longer than"));

        let (mut p, exit, _) = port(&m);
        p.write(0, 0, &[1]);
        assert!(exit.reason().unwrap().to_string().contains("32-bit"));
    }
}
