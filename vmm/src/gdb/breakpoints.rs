//! Hardware breakpoints and watchpoints in the four x86 debug address registers (DR0-DR3),
//! armed through KVM_SET_GUEST_DEBUG with `KVM_GUESTDBG_USE_HW_BP`, and what a
//! `KVM_EXIT_DEBUG` meant.
//!
//! Software breakpoints (int3) are refused: on this platform's KVM a guest `int3` ends
//! KVM_RUN with an emulation failure (see shared/reference/platform.md), so `break` would
//! kill the guest. gdb's `hbreak` uses a debug register instead.

use gdbstub::target::ext::breakpoints::WatchKind;
use kvm_bindings::{
    kvm_guest_debug, KVM_GUESTDBG_BLOCKIRQ, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP,
    KVM_GUESTDBG_USE_HW_BP,
};

use crate::vstate::hook::DebugExit;

/// What one debug register watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// An instruction breakpoint (`hbreak`).
    Exec(u64),
    /// A data watchpoint of 1, 2, 4 or 8 bytes (`watch`, `rwatch`, `awatch`).
    Watch {
        /// Watched address (aligned to `len`).
        addr: u64,
        /// 1, 2, 4 or 8.
        len: u64,
        /// What gdb asked for.
        kind: WatchKind,
    },
}

/// The four debug registers' contents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HwBreakpoints {
    slots: [Option<Slot>; 4],
}

/// What stopped a vCPU, decoded from a `KVM_EXIT_DEBUG`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebugStop {
    /// A hardware breakpoint fired.
    Break,
    /// A watchpoint fired.
    Watch {
        /// The watched address.
        addr: u64,
        /// Its kind.
        kind: WatchKind,
    },
    /// A single step finished.
    Step,
    /// Something else (another exception, or a #DB none of ours explains).
    Other,
}

/// DR6.BS: the #DB came from a single step.
const DR6_BS: u64 = 1 << 14;

impl HwBreakpoints {
    /// Arms `slot` in a free debug register; `false` when all four are in use or the
    /// watchpoint cannot be expressed (length not 1/2/4/8 or address not aligned to it).
    pub fn add(&mut self, slot: Slot) -> bool {
        if let Slot::Watch { addr, len, .. } = slot {
            if !matches!(len, 1 | 2 | 4 | 8) || addr % len != 0 {
                return false;
            }
        }
        if self.slots.contains(&Some(slot)) {
            return true;
        }
        match self.slots.iter_mut().find(|s| s.is_none()) {
            Some(free) => {
                *free = Some(slot);
                true
            }
            None => false,
        }
    }

    /// Disarms `slot`; `false` when it was not armed.
    pub fn remove(&mut self, slot: Slot) -> bool {
        match self.slots.iter_mut().find(|s| **s == Some(slot)) {
            Some(s) => {
                *s = None;
                true
            }
            None => false,
        }
    }

    /// Whether an instruction breakpoint sits at `rip`.
    pub fn breaks_at(&self, rip: u64) -> bool {
        self.slots.contains(&Some(Slot::Exec(rip)))
    }

    /// These breakpoints without the instruction breakpoint at `rip` (to step over it).
    pub fn without(&self, rip: u64) -> HwBreakpoints {
        let mut b = self.clone();
        b.remove(Slot::Exec(rip));
        b
    }

    /// DR7 for the armed slots: local enable L*n* (bit 2n), R/W*n* at bits 16+4n (00
    /// execute, 01 write, 11 read or write: x86 has no read-only watch) and LEN*n* at
    /// 18+4n (00 = 1, 01 = 2, 11 = 4, 10 = 8 bytes), the layout `ptrace_fill_bp_fields()`
    /// and `encode_dr7()` (arch/x86/kernel/hw_breakpoint.c) produce.
    pub fn dr7(&self) -> u64 {
        let mut dr7 = 0u64;
        for (n, s) in self.slots.iter().enumerate() {
            let (rw, len) = match s {
                None => continue,
                Some(Slot::Exec(_)) => (0b00, 0b00),
                Some(Slot::Watch { len, kind, .. }) => {
                    let rw = match kind {
                        WatchKind::Write => 0b01,
                        WatchKind::Read | WatchKind::ReadWrite => 0b11,
                    };
                    let len = match len {
                        1 => 0b00,
                        2 => 0b01,
                        8 => 0b10,
                        _ => 0b11,
                    };
                    (rw, len)
                }
            };
            dr7 |= 1 << (2 * n);
            dr7 |= rw << (16 + 4 * n);
            dr7 |= len << (18 + 4 * n);
        }
        dr7
    }

    /// The KVM_SET_GUEST_DEBUG argument: debug registers armed when any slot is, single
    /// step (with interrupts blocked, `KVM_GUESTDBG_BLOCKIRQ`, so a step does not land in
    /// the timer handler) when `step`; `control` 0 when neither.
    pub fn guest_debug(&self, step: bool) -> kvm_guest_debug {
        let mut d = kvm_guest_debug::default();
        let any = self.slots.iter().any(Option::is_some);
        if any {
            d.control |= KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP;
            for (n, s) in self.slots.iter().enumerate() {
                d.arch.debugreg[n] = match s {
                    Some(Slot::Exec(a)) | Some(Slot::Watch { addr: a, .. }) => *a,
                    None => 0,
                };
            }
            d.arch.debugreg[7] = self.dr7();
        }
        if step {
            d.control |= KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP | KVM_GUESTDBG_BLOCKIRQ;
        }
        d
    }

    /// What a `KVM_EXIT_DEBUG` with `exit` means (DR6 bits 0-3 name the debug register that
    /// fired, bit 14 a single step; exception 1 is #DB).
    pub fn decode(&self, exit: &DebugExit) -> DebugStop {
        if exit.exception != 1 {
            return DebugStop::Other;
        }
        for (n, s) in self.slots.iter().enumerate() {
            if exit.dr6 & (1 << n) == 0 {
                continue;
            }
            match s {
                Some(Slot::Exec(_)) => return DebugStop::Break,
                Some(Slot::Watch { addr, kind, .. }) => {
                    return DebugStop::Watch {
                        addr: *addr,
                        kind: *kind,
                    }
                }
                None => {}
            }
        }
        if exit.dr6 & DR6_BS != 0 {
            DebugStop::Step
        } else {
            DebugStop::Other
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(dr6: u64) -> DebugExit {
        DebugExit {
            exception: 1,
            pc: 0,
            dr6,
            dr7: 0,
        }
    }

    #[test]
    fn four_slots_then_full_and_bad_watches_refused() {
        let mut bp = HwBreakpoints::default();
        for a in 0..4 {
            assert!(bp.add(Slot::Exec(0x1000 + a)));
        }
        assert!(bp.add(Slot::Exec(0x1000)), "re-adding is idempotent");
        assert!(!bp.add(Slot::Exec(0x2000)), "all four in use");
        assert!(bp.remove(Slot::Exec(0x1002)));
        assert!(!bp.remove(Slot::Exec(0x1002)));
        let w = |addr, len| Slot::Watch {
            addr,
            len,
            kind: WatchKind::Write,
        };
        assert!(!bp.add(w(0x3001, 4)), "misaligned");
        assert!(!bp.add(w(0x3000, 3)), "odd length");
        assert!(bp.add(w(0x3000, 8)));
    }

    #[test]
    fn dr7_encodes_enable_type_and_length_per_slot() {
        let mut bp = HwBreakpoints::default();
        bp.add(Slot::Exec(0x20_0090));
        bp.add(Slot::Watch {
            addr: 0x5000,
            len: 4,
            kind: WatchKind::Write,
        });
        bp.add(Slot::Watch {
            addr: 0x6000,
            len: 8,
            kind: WatchKind::Read,
        });
        // slot 0: L0, RW 00, LEN 00; slot 1: L1, RW 01, LEN 11; slot 2: L2, RW 11, LEN 10.
        let want = 0b01 | 0b0100 | 0b01_0000;
        let want = want | (0b1101 << 20) | (0b1011 << 24);
        assert_eq!(bp.dr7(), want, "{:#x}", bp.dr7());
        let d = bp.guest_debug(false);
        assert_eq!(d.control, KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP);
        assert_eq!(&d.arch.debugreg[..3], &[0x20_0090, 0x5000, 0x6000]);
        assert_eq!(d.arch.debugreg[7], want);
        let none = HwBreakpoints::default();
        assert_eq!(none.guest_debug(false).control, 0, "debugging off");
        assert_ne!(none.guest_debug(true).control & KVM_GUESTDBG_SINGLESTEP, 0);
    }

    #[test]
    fn debug_exits_decode_to_break_watch_or_step() {
        let mut bp = HwBreakpoints::default();
        bp.add(Slot::Watch {
            addr: 0x5000,
            len: 4,
            kind: WatchKind::Write,
        });
        bp.add(Slot::Exec(0x20_0090));
        assert_eq!(bp.decode(&exit(0xffff_0ff2)), DebugStop::Break);
        assert_eq!(
            bp.decode(&exit(0xffff_0ff1)),
            DebugStop::Watch {
                addr: 0x5000,
                kind: WatchKind::Write
            }
        );
        assert_eq!(bp.decode(&exit(0xffff_4ff0)), DebugStop::Step);
        assert_eq!(bp.decode(&exit(0xffff_0ff8)), DebugStop::Other);
        let mut bp3 = exit(0);
        bp3.exception = 3;
        assert_eq!(bp.decode(&bp3), DebugStop::Other);
        assert!(bp.breaks_at(0x20_0090) && !bp.breaks_at(0x5000));
        let over = bp.without(0x20_0090);
        assert!(!over.breaks_at(0x20_0090) && bp.breaks_at(0x20_0090));
        assert_eq!(over.dr7(), bp.dr7() & !0b1100, "slot 1 off, slot 0 kept");
    }
}
