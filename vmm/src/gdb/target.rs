//! The gdbstub [`Target`]: one gdb thread per vCPU (thread id = vCPU index + 1), x86-64
//! core registers, memory at guest-virtual addresses, hardware breakpoints and
//! watchpoints, continue, single step, and the all-stop event loop (Ctrl-C kicks every
//! vCPU out of KVM_RUN the way the stop path does).

use super::breakpoints::{DebugStop, Slot};
use super::connection::GdbConnection;
use super::translate::{walk, WalkError};
use super::vcpus::{Action, GdbVcpus, Reply, Request, RequestError};
use crate::launch::VmHandle;
use gdbstub::common::{Signal, Tid};
use gdbstub::conn::{Connection, ConnectionExt};
use gdbstub::stub::run_blocking::{BlockingEventLoop, Event, WaitForStopReasonError};
use gdbstub::stub::MultiThreadStopReason;
use gdbstub::target::ext::base::multithread::{
    MultiThreadBase, MultiThreadResume, MultiThreadResumeOps, MultiThreadSchedulerLocking,
    MultiThreadSchedulerLockingOps, MultiThreadSingleStep, MultiThreadSingleStepOps,
};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, HwBreakpoint, HwBreakpointOps, HwWatchpoint, HwWatchpointOps,
    SwBreakpoint, SwBreakpointOps, WatchKind,
};
use gdbstub::target::{Target, TargetError, TargetResult};
use gdbstub_arch::x86::reg::X86_64CoreRegs;
use gdbstub_arch::x86::X86_64_SSE;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};

/// EFAULT: gdb shows "Cannot access memory at address ...".
const EFAULT: u8 = 14;
/// EIO: a register request failed.
const EIO: u8 = 5;

/// A fatal error of the stub (the session ends).
#[derive(Debug, thiserror::Error)]
pub enum GdbTargetError {
    /// The vCPUs did not stop.
    #[error("The vCPUs did not stop within 2 s of a pause; the guest keeps running")]
    PauseTimeout,
}

/// The VM as gdb sees it.
pub struct GdbTarget<'a> {
    vcpus: &'a GdbVcpus,
    handle: &'a VmHandle<'a>,
    n: usize,
    /// Per vCPU: the action gdb gave it (`None`: the default).
    actions: Vec<Option<Action>>,
    /// No wildcard continue: vCPUs without an action stay stopped.
    locked: bool,
    /// Told the user once that `break` cannot work here.
    warned_sw: bool,
    /// Told the user once about watchpoints on this platform.
    warned_watch: bool,
}

impl std::fmt::Debug for GdbTarget<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GdbTarget").field("n", &self.n).finish()
    }
}

fn tid_of(i: usize) -> Tid {
    Tid::new(i + 1).unwrap_or(Tid::MIN)
}

impl<'a> GdbTarget<'a> {
    /// A target over `n` vCPUs parked through `vcpus`, in the VM of `handle`.
    pub fn new(vcpus: &'a GdbVcpus, handle: &'a VmHandle<'a>, n: usize) -> Self {
        GdbTarget {
            vcpus,
            handle,
            n,
            actions: vec![None; n],
            locked: false,
            warned_sw: false,
            warned_watch: false,
        }
    }

    fn index(&self, tid: Tid) -> usize {
        tid.get() - 1
    }

    /// Kicks the vCPUs until all have parked (or finished); `false` after 2 s.
    pub fn pause_all(&self) -> bool {
        self.vcpus.request_pause();
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if self.vcpus.all_parked(&self.handle.vcpus_finished()) {
                return true;
            }
            if Instant::now() > deadline || self.handle.stopped() {
                return false;
            }
            self.handle.kick_vcpus();
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The guest-physical address of `gva` as vCPU `i` sees it: KVM_TRANSLATE, else a walk
    /// of its page tables.
    fn translate(&self, i: usize, gva: u64) -> Result<u64, TargetError<GdbTargetError>> {
        let (kvm, paging) = match self.vcpus.request(i, Request::Translate(gva)) {
            Ok(Reply::Translated { kvm, paging }) => (kvm, paging),
            Ok(_) | Err(_) => return Err(TargetError::Errno(EFAULT)),
        };
        if let Some(gpa) = kvm {
            return Ok(gpa);
        }
        let mem = self.handle.guest_memory();
        let read = |gpa: u64, size: usize| -> Option<u64> {
            let mut b = [0u8; 8];
            mem.read_slice(&mut b[..size], GuestAddress(gpa)).ok()?;
            Some(u64::from_le_bytes(b))
        };
        walk(&paging, gva, read).map_err(|_: WalkError| TargetError::Errno(EFAULT))
    }

    /// Guest-virtual page-sized pieces of `[start, start + len)`.
    fn pieces(start: u64, len: usize) -> impl Iterator<Item = (u64, std::ops::Range<usize>)> {
        let mut off = 0usize;
        std::iter::from_fn(move || {
            if off >= len {
                return None;
            }
            let gva = start.wrapping_add(off as u64);
            // At most 4096: fits any usize.
            let in_page = usize::try_from(0x1000 - (gva & 0xfff)).unwrap_or(1);
            let n = in_page.min(len - off);
            let r = off..off + n;
            off += n;
            Some((gva, r))
        })
    }
}

impl Target for GdbTarget<'_> {
    type Arch = X86_64_SSE;
    type Error = GdbTargetError;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::MultiThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }
}

fn request_err(e: RequestError) -> TargetError<GdbTargetError> {
    eprintln!("faultline: gdb: {e}");
    TargetError::Errno(EIO)
}

impl MultiThreadBase for GdbTarget<'_> {
    fn read_registers(&mut self, regs: &mut X86_64CoreRegs, tid: Tid) -> TargetResult<(), Self> {
        match self.vcpus.request(self.index(tid), Request::ReadRegs) {
            Ok(Reply::Regs(r)) => {
                *regs = *r;
                Ok(())
            }
            Ok(_) => Err(TargetError::Errno(EIO)),
            Err(e) => Err(request_err(e)),
        }
    }

    fn write_registers(&mut self, regs: &X86_64CoreRegs, tid: Tid) -> TargetResult<(), Self> {
        let req = Request::WriteRegs(Box::new(regs.clone()));
        match self.vcpus.request(self.index(tid), req) {
            Ok(_) => Ok(()),
            Err(e) => Err(request_err(e)),
        }
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8], tid: Tid) -> TargetResult<usize, Self> {
        let i = self.index(tid);
        let mem = self.handle.guest_memory();
        let mut done = 0;
        for (gva, r) in Self::pieces(start, data.len()) {
            let ok = self
                .translate(i, gva)
                .ok()
                .and_then(|gpa| mem.read_slice(&mut data[r.clone()], GuestAddress(gpa)).ok());
            match ok {
                Some(()) => done = r.end,
                None if done > 0 => return Ok(done),
                None => return Err(TargetError::Errno(EFAULT)),
            }
        }
        Ok(done)
    }

    fn write_addrs(&mut self, start: u64, data: &[u8], tid: Tid) -> TargetResult<(), Self> {
        let i = self.index(tid);
        // Translate every piece first, so a write is all or nothing.
        let mut targets = Vec::new();
        for (gva, r) in Self::pieces(start, data.len()) {
            targets.push((self.translate(i, gva)?, r));
        }
        let mem = self.handle.guest_memory();
        for (gpa, r) in targets {
            mem.write_slice(&data[r], GuestAddress(gpa))
                .map_err(|_| TargetError::Errno(EFAULT))?;
        }
        Ok(())
    }

    fn list_active_threads(&mut self, active: &mut dyn FnMut(Tid)) -> Result<(), Self::Error> {
        let finished = self.handle.vcpus_finished();
        for i in 0..self.n {
            if !finished.get(i).copied().unwrap_or(false) {
                active(tid_of(i));
            }
        }
        Ok(())
    }

    fn support_resume(&mut self) -> Option<MultiThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadResume for GdbTarget<'_> {
    fn resume(&mut self) -> Result<(), Self::Error> {
        let default = if self.locked {
            Action::Stay
        } else {
            Action::Continue
        };
        let actions: Vec<Action> = self.actions.iter().map(|a| a.unwrap_or(default)).collect();
        self.vcpus.resume(&actions);
        Ok(())
    }

    fn clear_resume_actions(&mut self) -> Result<(), Self::Error> {
        self.actions = vec![None; self.n];
        self.locked = false;
        Ok(())
    }

    fn set_resume_action_continue(
        &mut self,
        tid: Tid,
        _signal: Option<Signal>,
    ) -> Result<(), Self::Error> {
        let i = self.index(tid);
        if let Some(a) = self.actions.get_mut(i) {
            *a = Some(Action::Continue);
        }
        Ok(())
    }

    fn support_single_step(&mut self) -> Option<MultiThreadSingleStepOps<'_, Self>> {
        Some(self)
    }

    fn support_scheduler_locking(&mut self) -> Option<MultiThreadSchedulerLockingOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadSingleStep for GdbTarget<'_> {
    fn set_resume_action_step(
        &mut self,
        tid: Tid,
        _signal: Option<Signal>,
    ) -> Result<(), Self::Error> {
        let i = self.index(tid);
        if let Some(a) = self.actions.get_mut(i) {
            *a = Some(Action::Step);
        }
        Ok(())
    }
}

impl MultiThreadSchedulerLocking for GdbTarget<'_> {
    fn set_resume_action_scheduler_lock(&mut self) -> Result<(), Self::Error> {
        self.locked = true;
        Ok(())
    }
}

impl Breakpoints for GdbTarget<'_> {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

/// What faultline prints when gdb asks for a software breakpoint.
pub const SW_BREAKPOINT_REFUSED: &str = "software breakpoints (gdb's `break`) are not supported: \
this host's KVM cannot run a guest int3 (it ends the VM with an emulation failure); \
use `hbreak` (hardware breakpoint, 4 at most) instead";

/// What faultline prints when gdb sets its first hardware watchpoint.
pub const WATCHPOINT_CAVEAT: &str = "armed in a debug register; on nested, paravirtualised \
KVM (kvm_pvm) data breakpoints were seen never to fire: if gdb does not stop, \
`set can-use-hw-watchpoints 0` makes gdb single-step and compare instead (slow)";

impl SwBreakpoint for GdbTarget<'_> {
    /// Refused (gdb reports that it cannot insert the breakpoint); answered as such rather
    /// than "unsupported", which would make gdb write an int3 into guest memory itself.
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        if !self.warned_sw {
            eprintln!("faultline: gdb: breakpoint at {addr:#x}: {SW_BREAKPOINT_REFUSED}");
            self.warned_sw = true;
        }
        Ok(false)
    }

    fn remove_sw_breakpoint(&mut self, _addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(false)
    }
}

impl HwBreakpoint for GdbTarget<'_> {
    fn add_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.vcpus.with_breakpoints(|b| b.add(Slot::Exec(addr))))
    }

    fn remove_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.vcpus.with_breakpoints(|b| b.remove(Slot::Exec(addr))))
    }
}

impl HwWatchpoint for GdbTarget<'_> {
    fn add_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        if !self.warned_watch {
            eprintln!("faultline: gdb: watchpoint at {addr:#x}: {WATCHPOINT_CAVEAT}");
            self.warned_watch = true;
        }
        Ok(self
            .vcpus
            .with_breakpoints(|b| b.add(Slot::Watch { addr, len, kind })))
    }

    fn remove_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        Ok(self
            .vcpus
            .with_breakpoints(|b| b.remove(Slot::Watch { addr, len, kind })))
    }
}

/// The stop gdb is told about for vCPU `i`'s `stop`.
pub fn stop_reason(i: usize, stop: DebugStop) -> MultiThreadStopReason<u64> {
    let tid = tid_of(i);
    match stop {
        DebugStop::Break => MultiThreadStopReason::HwBreak(tid),
        DebugStop::Watch { addr, kind } => MultiThreadStopReason::Watch { tid, kind, addr },
        DebugStop::Step | DebugStop::Other => MultiThreadStopReason::SignalWithThread {
            tid,
            signal: Signal::SIGTRAP,
        },
    }
}

/// The blocking all-stop event loop.
#[derive(Debug)]
pub enum GdbEventLoop<'a> {
    #[doc(hidden)]
    _Marker(std::marker::PhantomData<&'a ()>),
}

impl<'a> BlockingEventLoop for GdbEventLoop<'a> {
    type Target = GdbTarget<'a>;
    type Connection = GdbConnection;
    type StopReason = MultiThreadStopReason<u64>;

    fn wait_for_stop_reason(
        target: &mut Self::Target,
        conn: &mut Self::Connection,
    ) -> Result<
        Event<Self::StopReason>,
        WaitForStopReasonError<GdbTargetError, <GdbConnection as Connection>::Error>,
    > {
        loop {
            if target.handle.stopped() {
                let status = target
                    .handle
                    .exit_signal()
                    .reason()
                    .map(|r| r.status())
                    .unwrap_or(0);
                return Ok(Event::TargetStopped(MultiThreadStopReason::Exited(
                    u8::try_from(status & 0xff).unwrap_or(0),
                )));
            }
            if let Some((i, stop)) = target.vcpus.take_stop() {
                if !target.pause_all() && !target.handle.stopped() {
                    return Err(WaitForStopReasonError::Target(GdbTargetError::PauseTimeout));
                }
                return Ok(Event::TargetStopped(stop_reason(i, stop)));
            }
            if conn
                .readable(Duration::from_millis(10))
                .map_err(WaitForStopReasonError::Connection)?
            {
                let b = conn.read().map_err(WaitForStopReasonError::Connection)?;
                return Ok(Event::IncomingData(b));
            }
        }
    }

    fn on_interrupt(target: &mut Self::Target) -> Result<Option<Self::StopReason>, GdbTargetError> {
        if !target.pause_all() {
            if target.handle.stopped() {
                return Ok(None);
            }
            return Err(GdbTargetError::PauseTimeout);
        }
        let i = target.vcpus.first_parked().unwrap_or(0);
        Ok(Some(MultiThreadStopReason::SignalWithThread {
            tid: tid_of(i),
            signal: Signal::SIGINT,
        }))
    }
}
