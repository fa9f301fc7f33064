//! The userfaultfd steps of `faultline check` on the real side: `uffd-register`,
//! `uffdio-copy`, `uffdio-zeropage`, `uffdio-continue`, `uffdio-writeprotect` with the real
//! ioctls (over [`crate::memory::uffd::sys::Uffd`]), and the events a guest access raises.
//!
//! A guest access that reaches `handle_userfault()` sleeps inside `KVM_RUN` (the agent guest
//! has no async PF) until an ioctl wakes it, so the executor starts it, waits (bounded) for
//! either its outcome or a uffd event, and in the second case leaves it [`Pending`]: the
//! steps after it run while the vCPU sleeps, and the access's outcome is attached to the
//! step during which it ended. Events are read from a non-blocking uffd (`read(2)` of
//! `struct uffd_msg`), addresses turned back into model addresses.

use super::agent::{AccessKind, AccessOutcome, Agent, AgentError};
use super::space::RealSpace;
use crate::memory::uffd::sys::{self, RegisterModes, Uffd, UffdEvent};
use mmu::scenario::step::UffdMode;
use mmu::scenario::{Scenario, Step};
use std::time::{Duration, Instant};

/// How often the executor looks at the uffd while an access has not ended.
const POLL: Duration = Duration::from_millis(2);
/// How long a step that should not wake a pending access waits to see whether it did.
const GLANCE: Duration = Duration::from_millis(20);

/// One userfaultfd page-fault event, in model addresses.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RealUffdEvent {
    /// The faulting address (page aligned), model hva; the real one if it maps to no model
    /// address.
    pub address: u64,
    /// `UFFD_PAGEFAULT_FLAG_WRITE`.
    pub write: bool,
    /// `UFFD_PAGEFAULT_FLAG_WP`.
    pub wp: bool,
    /// `UFFD_PAGEFAULT_FLAG_MINOR`.
    pub minor: bool,
}

impl RealUffdEvent {
    /// The text the comparison uses (the model's event is printed the same way).
    pub fn text(&self) -> String {
        event_text(self.address, self.write, self.wp, self.minor)
    }
}

/// `ADDR [write] [wp] [minor]`, or `ADDR read` for a plain read fault.
pub fn event_text(address: u64, write: bool, wp: bool, minor: bool) -> String {
    let mut flags = Vec::new();
    if write {
        flags.push("write");
    }
    if wp {
        flags.push("wp");
    }
    if minor {
        flags.push("minor");
    }
    if flags.is_empty() {
        flags.push("read");
    }
    format!("{address:#x} {}", flags.join("|"))
}

/// A guest access asleep in `handle_userfault()`.
#[derive(Debug, Clone, Copy)]
pub struct Pending {
    /// The step that started it.
    pub step: usize,
    /// Its vCPU.
    pub vcpu: u32,
    /// The agent's sequence number.
    pub seq: u64,
    /// Its kind.
    pub kind: AccessKind,
    /// The real gpa.
    pub gpa: u64,
    /// The model hva of the page it waits on.
    pub hva: u64,
}

/// One guest access for [`UffdExec::access`]: the step and vCPU it belongs to, the access,
/// and the model page it touches.
#[derive(Debug, Clone, Copy)]
pub struct AccessRequest {
    /// The step that runs it.
    pub step: usize,
    /// Its vCPU.
    pub vcpu: u32,
    /// Its kind.
    pub kind: AccessKind,
    /// The real gpa.
    pub gpa: u64,
    /// The value a write stores.
    pub value: u64,
    /// The model hva of the page.
    pub hva: u64,
}

/// What a guest access did: ended (the outcome), or sleeps with the events it raised.
#[derive(Debug)]
pub enum Started {
    /// It ended; events read meanwhile (none unless something else faulted).
    Ended(AccessOutcome, Vec<RealUffdEvent>),
    /// It sleeps in `handle_userfault()`.
    Blocked(Pending, Vec<RealUffdEvent>),
}

/// The executor's userfaultfd, created at the scenario's first `uffd-register`.
#[derive(Debug, Default)]
pub struct UffdExec {
    uffd: Option<Uffd>,
    features: u64,
    /// The access asleep in `handle_userfault()`, if any.
    pub pending: Option<Pending>,
}

impl UffdExec {
    /// The features the scenario's registrations need (`UFFD_FEATURE_MINOR_SHMEM` for MINOR).
    pub fn for_scenario(sc: &Scenario) -> Self {
        let minor = sc
            .step
            .iter()
            .any(|s| matches!(s, Step::UffdRegister(u) if u.mode.contains(&UffdMode::Minor)));
        UffdExec {
            uffd: None,
            features: if minor { sys::FEATURE_MINOR_SHMEM } else { 0 },
            pending: None,
        }
    }

    /// A uffd exists (so guest accesses may block).
    pub fn active(&self) -> bool {
        self.uffd.is_some()
    }

    fn fd(&self) -> Result<&Uffd, String> {
        self.uffd.as_ref().ok_or_else(|| {
            "no range is registered with userfaultfd: add a uffd-register step before it"
                .to_string()
        })
    }

    /// `UFFDIO_REGISTER` of the real range `real..real+len` with `modes`.
    pub fn register(&mut self, real: u64, len: u64, modes: &[UffdMode]) -> Result<(), String> {
        if self.uffd.is_none() {
            self.uffd = Some(Uffd::new(self.features, true).map_err(|e| e.to_string())?);
        }
        let mut m = RegisterModes::default();
        for mode in modes {
            m = m | match mode {
                UffdMode::Missing => RegisterModes::MISSING,
                UffdMode::Wp => RegisterModes::WP,
                UffdMode::Minor => RegisterModes::MINOR,
            };
        }
        self.fd()?
            .register(addr(real), addr(len), m)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// `UFFDIO_COPY` of one page at `real`, filled as the model fills it: the first 8
    /// bytes `uffdio_copy_value(model)`, the rest zero.
    pub fn copy(&self, real: u64, model: u64) -> Result<(), String> {
        let mut src = vec![0u8; 4096];
        src[..8].copy_from_slice(&mmu::scenario::contents::uffdio_copy_value(model).to_ne_bytes());
        // SAFETY: `real` is a page of a scenario mapping registered with this uffd; the
        // executor holds no reference into guest RAM, whose contents the kernel now fills.
        unsafe { self.fd()?.copy(addr(real), &src, false) }
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// `UFFDIO_ZEROPAGE` of one page at `real`.
    pub fn zeropage(&self, real: u64) -> Result<(), String> {
        // SAFETY: as for `copy`: a registered scenario page nothing references.
        unsafe { self.fd()?.zeropage(addr(real), 4096) }
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// `UFFDIO_CONTINUE` of `real..real+len`.
    pub fn continue_(&self, real: u64, len: u64) -> Result<(), String> {
        // SAFETY: as for `copy`: registered scenario pages nothing references; their contents
        // become the page cache's, which is what the scenario asks.
        unsafe { self.fd()?.continue_(addr(real), addr(len)) }
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// `UFFDIO_WRITEPROTECT` of `real..real+len` on (`wp`) or off.
    pub fn writeprotect(&self, real: u64, len: u64, wp: bool) -> Result<(), String> {
        self.fd()?
            .writeprotect(addr(real), addr(len), wp)
            .map_err(|e| e.to_string())
    }

    /// Every page-fault event queued now (non-blocking), in model addresses.
    pub fn events(&self, space: &RealSpace) -> Result<Vec<RealUffdEvent>, String> {
        let Some(u) = self.uffd.as_ref() else {
            return Ok(Vec::new());
        };
        let mut buf = [0u8; 16 * sys::MSG_SIZE];
        let mut out = Vec::new();
        loop {
            let batch = u.read_events(&mut buf).map_err(|e| e.to_string())?;
            if batch.is_empty() {
                return Ok(out);
            }
            for ev in batch {
                if let UffdEvent::Pagefault {
                    addr,
                    write,
                    wp,
                    minor,
                    ..
                } = ev
                {
                    let real = addr as u64 & !0xfff;
                    out.push(RealUffdEvent {
                        address: space.model(real).unwrap_or(real),
                        write,
                        wp,
                        minor,
                    });
                }
            }
        }
    }

    /// Runs one guest access that may block: posts it, then waits at most `timeout` for its
    /// outcome or a uffd event (then it is [`Started::Blocked`]).
    pub fn access(
        &self,
        agent: &Agent,
        space: &RealSpace,
        req: AccessRequest,
        timeout: Duration,
    ) -> Result<Started, String> {
        let AccessRequest {
            step,
            vcpu,
            kind,
            gpa,
            value,
            hva,
        } = req;
        let seq = agent
            .start_access(vcpu, kind, gpa, value, timeout)
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + timeout;
        let mut events = Vec::new();
        loop {
            match agent.finish_access(vcpu, seq, kind, gpa, POLL) {
                Ok(o) => {
                    events.extend(self.events(space)?);
                    return Ok(Started::Ended(o, events));
                }
                Err(AgentError::Timeout { .. }) => {}
                Err(e) => return Err(e.to_string()),
            }
            let new = self.events(space)?;
            if !new.is_empty() {
                events.extend(new);
                let p = Pending {
                    step,
                    vcpu,
                    seq,
                    kind,
                    gpa,
                    hva,
                };
                return Ok(Started::Blocked(p, events));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the {kind:?} at gpa {gpa:#x} neither ended nor raised a userfaultfd event within {timeout:?}; raise --access-timeout or check the scenario's uffd steps"
                ));
            }
        }
    }

    /// After a step: whether the pending access ended, waiting up to `timeout` when the step
    /// should have woken it and [`GLANCE`] otherwise. Returns its step and outcome.
    pub fn collect(
        &mut self,
        agent: &Agent,
        wakes: bool,
        timeout: Duration,
    ) -> Option<(usize, Result<AccessOutcome, String>)> {
        let p = self.pending?;
        let wait = if wakes { timeout } else { GLANCE };
        match agent.finish_access(p.vcpu, p.seq, p.kind, p.gpa, wait) {
            Err(AgentError::Timeout { .. }) => None,
            r => {
                self.pending = None;
                Some((p.step, r.map_err(|e| e.to_string())))
            }
        }
    }

    /// Closes the uffd (which wakes every waiter; `userfaultfd_release()`), then lets the
    /// pending access end, so that no vCPU stays asleep when the VM is torn down.
    pub fn close(&mut self, agent: &Agent, timeout: Duration) {
        self.uffd = None;
        if let Some(p) = self.pending.take() {
            let _ = agent.finish_access(p.vcpu, p.seq, p.kind, p.gpa, timeout);
        }
    }
}

fn addr(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_print_their_flags() {
        assert_eq!(
            event_text(0x7f00_0000_5000, false, false, false),
            "0x7f0000005000 read"
        );
        assert_eq!(event_text(0x1000, true, true, false), "0x1000 write|wp");
        assert_eq!(event_text(0x1000, false, false, true), "0x1000 minor");
    }

    #[test]
    fn minor_registrations_ask_for_minor_shmem() {
        let sc = Scenario::from_toml(
            "[[vma]]\nstart = \"0x7f0000000000\"\nsize = \"2M\"\nkind = \"memfd\"\n\
             [[step]]\nop = \"uffd-register\"\nstart = \"0x7f0000000000\"\nsize = \"2M\"\nmode = [\"minor\"]\n",
        )
        .unwrap();
        assert_eq!(
            UffdExec::for_scenario(&sc).features,
            sys::FEATURE_MINOR_SHMEM
        );
        let sc = Scenario::from_toml("").unwrap();
        let u = UffdExec::for_scenario(&sc);
        assert_eq!(u.features, 0);
        assert!(!u.active());
        assert!(u
            .copy(0x1000, 0x1000)
            .unwrap_err()
            .contains("uffd-register"));
    }
}
