//! Why a VM ended, and the one-shot signal devices and vCPUs use to end it.

use std::sync::Mutex;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Process exit status for a guest assertion failure (ucall assert-failed).
pub const STATUS_GUEST_ASSERT: i32 = 101;
/// Process exit status for a guest crash (KVM internal error, triple fault, failed entry).
pub const STATUS_GUEST_CRASH: i32 = 102;
/// Exit status when the watchdog found the guest stuck (no userspace exit for its limit).
pub const STATUS_GUEST_STALLED: i32 = 103;
/// Exit status when a VMM thread made a system call its seccomp filter does not allow.
pub const STATUS_SECCOMP_VIOLATION: i32 = 104;

/// Why the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reset the machine (i8042 0xfe, or a reboot); a clean end: status 0.
    Reset,
    /// The guest wrote this value to the debug-exit port.
    DebugExit(u32),
    /// A guest program's ucall `done(status)`.
    Done(u64),
    /// A guest program's assertion failed (ucall assert-failed).
    AssertFailed {
        /// vCPU index that reported it.
        vcpu: usize,
        /// Guest source file.
        file: String,
        /// Guest source line.
        line: u32,
        /// Assertion message.
        msg: String,
    },
    /// The guest stopped making progress: no vCPU exited to userspace for the watchdog's
    /// limit; the report says where each vCPU was.
    Stalled {
        /// The watchdog's report, already formatted for the user.
        report: String,
    },
    /// A VMM thread made a system call outside its seccomp filter (a faultline bug).
    SeccompViolation {
        /// The thread kind (`vCPU`, `event-loop`, ...).
        thread: String,
        /// The system call's name.
        syscall: String,
        /// Its x86_64 number.
        nr: i64,
    },
    /// The guest crashed: the text says how (exit reason, RIP, instruction bytes).
    Crash {
        /// vCPU index that crashed.
        vcpu: usize,
        /// What happened, already formatted for the user.
        reason: String,
    },
}

impl VmExit {
    /// The process exit status for this end: 0 for a clean reset, the debug-exit value
    /// (low 8 bits, as processes only have those), the `done` status (non-zero statuses that
    /// would truncate to 0 become 1), [`STATUS_GUEST_ASSERT`] and [`STATUS_GUEST_CRASH`].
    pub fn status(&self) -> i32 {
        let clamp = |v: u64| -> i32 {
            match v {
                0 => 0,
                v if v & 0xff == 0 => 1,
                v => (v & 0xff) as i32,
            }
        };
        match self {
            VmExit::Reset => 0,
            VmExit::DebugExit(v) => clamp(u64::from(*v)),
            VmExit::Done(v) => clamp(*v),
            VmExit::AssertFailed { .. } => STATUS_GUEST_ASSERT,
            VmExit::Crash { .. } => STATUS_GUEST_CRASH,
            VmExit::Stalled { .. } => STATUS_GUEST_STALLED,
            VmExit::SeccompViolation { .. } => STATUS_SECCOMP_VIOLATION,
        }
    }
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmExit::Reset => write!(f, "guest reset the machine"),
            VmExit::DebugExit(v) => write!(f, "guest wrote {v} to the debug-exit port"),
            VmExit::Done(v) => write!(f, "guest program done with status {v}"),
            VmExit::AssertFailed {
                vcpu,
                file,
                line,
                msg,
            } => write!(
                f,
                "guest assertion failed on vCPU {vcpu} at {file}:{line}: {msg}"
            ),
            VmExit::Crash { vcpu, reason } => write!(f, "guest crashed on vCPU {vcpu}: {reason}"),
            VmExit::Stalled { report } => write!(f, "guest stalled: {report}"),
            VmExit::SeccompViolation {
                thread,
                syscall,
                nr,
            } => write!(
                f,
                "the VMM's {thread} thread made the system call `{syscall}` ({nr}), which its seccomp filter does not allow; this is a faultline bug: report it (`--no-seccomp` turns filtering off)"
            ),
        }
    }
}

/// A one-shot "end the VM" signal: the first [`VmExit`] wins, later ones are ignored;
/// the `EventFd` becomes readable when it fires.
#[derive(Debug)]
pub struct ExitSignal {
    reason: Mutex<Option<VmExit>>,
    evt: EventFd,
}

impl ExitSignal {
    /// A signal that has not fired.
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitSignal {
            reason: Mutex::new(None),
            evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Ends the VM with `reason` unless it already ended; returns whether this call won.
    pub fn request(&self, reason: VmExit) -> bool {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_some() {
            return false;
        }
        *r = Some(reason);
        drop(r);
        // A failed write leaves the reason recorded; the vCPU threads still see it.
        let _ = self.evt.write(1);
        true
    }

    /// The reason, once the VM has ended.
    pub fn reason(&self) -> Option<VmExit> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the VM has ended.
    pub fn fired(&self) -> bool {
        self.reason().is_some()
    }

    /// The eventfd that becomes readable when the signal fires.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_eventfd_fires() {
        let s = ExitSignal::new().unwrap();
        assert!(s.eventfd().read().is_err(), "not readable before firing");
        assert!(s.request(VmExit::DebugExit(3)));
        assert!(!s.request(VmExit::Reset));
        assert_eq!(s.reason(), Some(VmExit::DebugExit(3)));
        assert_eq!(s.eventfd().read().unwrap(), 1);
    }

    #[test]
    fn statuses_map_to_process_exit_codes() {
        assert_eq!(VmExit::Reset.status(), 0);
        assert_eq!(VmExit::DebugExit(42).status(), 42);
        assert_eq!(
            VmExit::DebugExit(0x100).status(),
            1,
            "must not truncate to success"
        );
        assert_eq!(VmExit::Done(0).status(), 0);
        assert_eq!(VmExit::Done(0x1_0000_0000).status(), 1);
        let crash = VmExit::Crash {
            vcpu: 0,
            reason: "x".into(),
        };
        assert_eq!(crash.status(), STATUS_GUEST_CRASH);
    }
}
