//! The vCPU side of the stub: an [`ExitHook`] that parks vCPU threads while gdb has the
//! guest stopped (all-stop mode) and serves gdb's register and translation requests on the
//! vCPU's own thread, through its [`VcpuControl`].
//!
//! A vCPU parks before its first KVM_RUN ([`ExitHook::on_start`]: the guest starts halted,
//! like QEMU's `-S`), on a `KVM_EXIT_DEBUG` (a breakpoint, watchpoint or finished step),
//! and after a kick while a pause is requested (Ctrl-C, or another vCPU stopped). It
//! leaves when gdb resumes it, arming its debug registers on the way out, when the stub
//! lets go (detach, kill, gdb gone), or when the VM ends.

use super::breakpoints::{DebugStop, HwBreakpoints};
use super::registers;
use super::translate::Paging;
use crate::vstate::hook::{DebugExit, ExitHook, HookAction, MemoryFault, VcpuControl};
use devices::exit::ExitSignal;
use gdbstub_arch::x86::reg::X86_64CoreRegs;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// RFLAGS.RF: the next instruction does not raise an instruction-breakpoint #DB.
const RFLAGS_RF: u64 = 1 << 16;

/// What gdb asks a parked vCPU.
#[derive(Debug, Clone)]
pub enum Request {
    /// Its registers.
    ReadRegs,
    /// New general registers, RIP and EFLAGS.
    WriteRegs(Box<X86_64CoreRegs>),
    /// KVM_TRANSLATE of a guest-virtual address, and the paging controls for a walk.
    Translate(u64),
}

/// A parked vCPU's answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// The registers.
    Regs(Box<X86_64CoreRegs>),
    /// Written.
    Written,
    /// KVM_TRANSLATE's answer (`None`: failed or not mapped) and the paging controls.
    Translated {
        /// KVM's guest-physical address.
        kvm: Option<u64>,
        /// CR0, CR3, CR4, EFER.
        paging: Paging,
    },
    /// An ioctl failed.
    Failed(String),
}

/// How gdb resumes one vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Stay parked.
    Stay,
    /// Run.
    Continue,
    /// Run one instruction.
    Step,
}

#[derive(Debug)]
struct Slot {
    parked: bool,
    request: Option<Request>,
    reply: Option<Reply>,
    action: Action,
    resumed: u64,
}

#[derive(Debug)]
struct State {
    slots: Vec<Slot>,
    /// vCPUs must park at their next chance.
    pause: bool,
    /// Bumped by every resume.
    generation: u64,
    stops: VecDeque<(usize, DebugStop)>,
    bps: HwBreakpoints,
    /// The stub let go: never park again, debugging off.
    released: bool,
}

/// The hook and the state it shares with the gdb thread.
#[derive(Debug)]
pub struct GdbVcpus {
    state: Mutex<State>,
    cv: Condvar,
    exit: OnceLock<Arc<ExitSignal>>,
}

/// A parked vCPU did not answer in time (or the VM ended first).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The vCPU did not park.
    #[error("vCPU {0} is running, not stopped; interrupt it first (Ctrl-C)")]
    NotParked(usize),
    /// No such vCPU.
    #[error("There is no vCPU {0}")]
    NoSuchVcpu(usize),
    /// The ioctl failed.
    #[error("{0}")]
    Failed(String),
}

impl GdbVcpus {
    /// State for `n` vCPUs, all to be held at their start.
    pub fn new(n: usize) -> Self {
        let slots = (0..n)
            .map(|_| Slot {
                parked: false,
                request: None,
                reply: None,
                action: Action::Stay,
                resumed: 0,
            })
            .collect();
        GdbVcpus {
            state: Mutex::new(State {
                slots,
                pause: true,
                generation: 0,
                stops: VecDeque::new(),
                bps: HwBreakpoints::default(),
                released: false,
            }),
            cv: Condvar::new(),
            exit: OnceLock::new(),
        }
    }

    /// The VM's end signal: parked vCPUs let go once it fires.
    pub fn bind_exit(&self, exit: Arc<ExitSignal>) {
        let _ = self.exit.set(exit);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn vm_ended(&self) -> bool {
        self.exit.get().is_some_and(|e| e.fired())
    }

    /// Parks the calling vCPU until gdb resumes it.
    fn park(&self, vcpu: &mut VcpuControl<'_>) -> HookAction {
        let i = vcpu.index();
        let mut st = self.lock();
        if st.released || i >= st.slots.len() {
            return HookAction::Continue;
        }
        st.slots[i].parked = true;
        self.cv.notify_all();
        loop {
            if st.released || self.vm_ended() {
                break;
            }
            if let Some(req) = st.slots[i].request.take() {
                st.slots[i].reply = Some(serve(vcpu, req));
                self.cv.notify_all();
                continue;
            }
            let s = &st.slots[i];
            if s.action != Action::Stay && s.resumed != st.generation {
                break;
            }
            st = self
                .cv
                .wait_timeout(st, Duration::from_millis(20))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let generation = st.generation;
        let released = st.released || self.vm_ended();
        let slot = &mut st.slots[i];
        slot.resumed = generation;
        slot.parked = false;
        let step = slot.action == Action::Step && !released;
        let debug = if released {
            kvm_bindings::kvm_guest_debug::default()
        } else {
            st.bps.guest_debug(step)
        };
        if vcpu.set_guest_debug(&debug).is_err() && step {
            // A KVM without KVM_GUESTDBG_BLOCKIRQ: step with interrupts open.
            let mut d = debug;
            d.control &= !kvm_bindings::KVM_GUESTDBG_BLOCKIRQ;
            if let Err(e) = vcpu.set_guest_debug(&d) {
                eprintln!("faultline: gdb: {e}");
            }
        }
        // Continuing from a breakpoint's own address: don't hit it again at once.
        if !released {
            if let Ok(mut regs) = vcpu.get_regs() {
                if st.bps.breaks_at(regs.rip) {
                    regs.rflags |= RFLAGS_RF;
                    let _ = vcpu.set_regs(&regs);
                }
            }
        }
        self.cv.notify_all();
        HookAction::Continue
    }

    /// Asks parked vCPU `i` (waiting up to 5 s for it to park).
    pub fn request(&self, i: usize, req: Request) -> Result<Reply, RequestError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut st = self.lock();
        if i >= st.slots.len() {
            return Err(RequestError::NoSuchVcpu(i));
        }
        while !st.slots[i].parked {
            if Instant::now() > deadline || self.vm_ended() {
                return Err(RequestError::NotParked(i));
            }
            st = self
                .cv
                .wait_timeout(st, Duration::from_millis(10))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        st.slots[i].reply = None;
        st.slots[i].request = Some(req);
        self.cv.notify_all();
        loop {
            if let Some(r) = st.slots[i].reply.take() {
                return match r {
                    Reply::Failed(m) => Err(RequestError::Failed(m)),
                    r => Ok(r),
                };
            }
            if Instant::now() > deadline || self.vm_ended() || !st.slots[i].parked {
                st.slots[i].request = None;
                return Err(RequestError::NotParked(i));
            }
            st = self
                .cv
                .wait_timeout(st, Duration::from_millis(10))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Resumes the vCPUs with `actions` (one per vCPU).
    pub fn resume(&self, actions: &[Action]) {
        let mut st = self.lock();
        for (s, a) in st.slots.iter_mut().zip(actions) {
            s.action = *a;
        }
        st.generation += 1;
        st.pause = false;
        st.stops.clear();
        self.cv.notify_all();
    }

    /// Asks every vCPU to park at its next chance (the caller kicks them).
    pub fn request_pause(&self) {
        self.lock().pause = true;
    }

    /// Whether every vCPU not in `finished` is parked.
    pub fn all_parked(&self, finished: &[bool]) -> bool {
        let st = self.lock();
        st.slots
            .iter()
            .zip(finished.iter().chain(std::iter::repeat(&false)))
            .all(|(s, f)| s.parked || *f)
    }

    /// The first parked vCPU, if any.
    pub fn first_parked(&self) -> Option<usize> {
        self.lock().slots.iter().position(|s| s.parked)
    }

    /// The oldest stop a vCPU reported since the last resume.
    pub fn take_stop(&self) -> Option<(usize, DebugStop)> {
        self.lock().stops.pop_front()
    }

    /// Changes the debug registers (taking effect as each vCPU resumes).
    pub fn with_breakpoints<T>(&self, f: impl FnOnce(&mut HwBreakpoints) -> T) -> T {
        f(&mut self.lock().bps)
    }

    /// Lets every vCPU go, debugging off, for good (detach, kill, gdb gone).
    pub fn release(&self) {
        let mut st = self.lock();
        st.released = true;
        st.bps = HwBreakpoints::default();
        self.cv.notify_all();
    }
}

/// Serves `req` on the vCPU's thread.
fn serve(vcpu: &mut VcpuControl<'_>, req: Request) -> Reply {
    let r = (|| -> Result<Reply, crate::vstate::hook::VcpuControlError> {
        Ok(match req {
            Request::ReadRegs => {
                let regs = vcpu.get_regs()?;
                let sregs = vcpu.get_sregs()?;
                let fpu = vcpu.get_fpu().unwrap_or_default();
                Reply::Regs(Box::new(registers::to_gdb(&regs, &sregs, &fpu)))
            }
            Request::WriteRegs(g) => {
                let mut regs = vcpu.get_regs()?;
                registers::apply_gdb(&g, &mut regs);
                vcpu.set_regs(&regs)?;
                Reply::Written
            }
            Request::Translate(gva) => {
                let s = vcpu.get_sregs()?;
                Reply::Translated {
                    kvm: vcpu.translate_gva(gva).ok().flatten(),
                    paging: Paging {
                        cr0: s.cr0,
                        cr3: s.cr3,
                        cr4: s.cr4,
                        efer: s.efer,
                    },
                }
            }
        })
    })();
    r.unwrap_or_else(|e| Reply::Failed(e.to_string()))
}

impl ExitHook for GdbVcpus {
    fn on_run_error(
        &self,
        _vcpu: &mut VcpuControl<'_>,
        _errno: i32,
        _fault: Option<MemoryFault>,
    ) -> HookAction {
        HookAction::Default
    }

    fn on_start(&self, vcpu: &mut VcpuControl<'_>) -> HookAction {
        self.park(vcpu)
    }

    fn on_kick(&self, vcpu: &mut VcpuControl<'_>) -> HookAction {
        let pause = {
            let st = self.lock();
            st.pause && !st.released
        };
        if pause {
            self.park(vcpu)
        } else {
            HookAction::Continue
        }
    }

    fn on_debug_exit(&self, vcpu: &mut VcpuControl<'_>, exit: DebugExit) -> HookAction {
        {
            let mut st = self.lock();
            if st.released {
                drop(st);
                // A leftover arming: turn debugging off and go on.
                let _ = vcpu.set_guest_debug(&kvm_bindings::kvm_guest_debug::default());
                return HookAction::Continue;
            }
            let stop = st.bps.decode(&exit);
            st.stops.push_back((vcpu.index(), stop));
            st.pause = true;
        }
        self.park(vcpu)
    }
}
