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
    /// Stepping over an armed breakpoint at its own address before doing `action`.
    over: Option<Action>,
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
                over: None,
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
        st.slots[i].resumed = generation;
        st.slots[i].parked = false;
        let action = st.slots[i].action;
        let debug = if released {
            HwBreakpoints::default().guest_debug(false)
        } else {
            // Resuming on an armed breakpoint's own address would hit it again at once
            // (RFLAGS.RF is not honoured here): step over it with it disarmed first.
            let rip = vcpu.get_regs().map(|r| r.rip).ok();
            match rip.filter(|r| st.bps.breaks_at(*r)) {
                Some(rip) => {
                    st.slots[i].over = Some(action);
                    st.bps.without(rip).guest_debug(true)
                }
                None => st.bps.guest_debug(action == Action::Step),
            }
        };
        drop(st);
        arm(vcpu, &debug);
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

/// KVM_SET_GUEST_DEBUG, retrying a single step without KVM_GUESTDBG_BLOCKIRQ for a KVM
/// that lacks it.
fn arm(vcpu: &mut VcpuControl<'_>, debug: &kvm_bindings::kvm_guest_debug) {
    if vcpu.set_guest_debug(debug).is_ok() {
        return;
    }
    let mut d = *debug;
    d.control &= !kvm_bindings::KVM_GUESTDBG_BLOCKIRQ;
    if let Err(e) = vcpu.set_guest_debug(&d) {
        eprintln!("faultline: gdb: {e}");
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
            let i = vcpu.index();
            let mut stop = st.bps.decode(&exit);
            if let Some(then) = st.slots.get_mut(i).and_then(|s| s.over.take()) {
                // The step over a breakpoint finished.
                if then == Action::Continue && !st.pause {
                    let debug = st.bps.guest_debug(false);
                    drop(st);
                    arm(vcpu, &debug);
                    return HookAction::Continue;
                }
                stop = DebugStop::Step;
            }
            st.stops.push_back((i, stop));
            st.pause = true;
        }
        self.park(vcpu)
    }
}

#[cfg(test)]
mod tests {
    //! The hook on real KVM, without gdb: the built-in `smp` guest with 2 vCPUs is held at
    //! its start, a hardware breakpoint on its `__guest_main` stops a vCPU there
    //! (KVM_EXIT_DEBUG), registers are read and written through the parked vCPU, the
    //! other vCPU parks after a kick, a single step moves RIP, and after `release` the
    //! guest finishes normally. Skips without /dev/kvm.
    use super::*;
    use crate::config::{MemoryConfig, Payload, VmConfig};
    use crate::gdb::breakpoints::Slot;
    use crate::launch::{VmBuilder, VmIo};

    fn symbol(elf: &[u8], name: &str) -> u64 {
        use object::{Object, ObjectSymbol};
        let file = object::File::parse(elf).expect("guest ELF");
        let sym = file.symbols().find(|s| s.name() == Ok(name));
        sym.expect("symbol").address()
    }

    fn wait(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn regs(v: &GdbVcpus, i: usize) -> X86_64CoreRegs {
        match v.request(i, Request::ReadRegs) {
            Ok(Reply::Regs(r)) => *r,
            other => panic!("vCPU {i}: {other:?}"),
        }
    }

    #[test]
    fn vcpus_start_parked_stop_at_a_hardware_breakpoint_and_step() {
        if !crate::testing::kvm_or_skip("vcpus_start_parked_stop_at_a_hardware_breakpoint_and_step")
        {
            return;
        }
        let guest = crate::guests::find("smp").expect("smp guest");
        let main = symbol(guest.elf, "__guest_main");
        let config = VmConfig {
            memory: MemoryConfig {
                size: 64 << 20,
                ..MemoryConfig::default()
            },
            vcpus: 2,
            payload: Payload::Guest("smp".into()),
            ..VmConfig::default()
        };
        let hook = Arc::new(GdbVcpus::new(2));
        let (io, out) = VmIo::captured();
        let vmm = VmBuilder::new(config, io)
            .exit_hook(hook.clone())
            .build()
            .unwrap();
        hook.bind_exit(vmm.exit_signal());
        let (outcome, _) = vmm
            .run_with(|h| {
                wait("both vCPUs parked at start", || {
                    hook.all_parked(&h.vcpus_finished())
                });
                let entry = regs(&hook, 0).rip;
                assert_eq!(regs(&hook, 1).rip, entry, "both at the entry point");
                assert_ne!(entry, main);
                assert!(hook.with_breakpoints(|b| b.add(Slot::Exec(main))));
                // Only vCPU 0 runs (the other stays parked).
                hook.resume(&[Action::Continue, Action::Stay]);
                wait("the breakpoint", || hook.lock().stops.front().is_some());
                assert_eq!(hook.take_stop(), Some((0, DebugStop::Break)));
                wait("vCPU 0 parked", || hook.lock().slots[0].parked);
                let at = regs(&hook, 0);
                assert_eq!(at.rip, main, "stopped on the breakpoint");
                // A register write goes through the parked vCPU.
                let mut w = at.clone();
                w.regs[1] = 0x1234; // rbx
                hook.request(0, Request::WriteRegs(Box::new(w))).unwrap();
                assert_eq!(regs(&hook, 0).regs[1], 0x1234);
                hook.request(0, Request::WriteRegs(Box::new(at.clone())))
                    .unwrap();
                // The stack is guest-virtual = guest-physical here (identity map).
                match hook.request(0, Request::Translate(at.regs[7])) {
                    Ok(Reply::Translated { kvm, paging }) => {
                        let gpa = kvm.unwrap_or_else(|| {
                            crate::gdb::translate::walk(&paging, at.regs[7], |a, s| {
                                let mut b = [0u8; 8];
                                vm_memory::Bytes::read_slice(
                                    h.guest_memory(),
                                    &mut b[..s],
                                    vm_memory::GuestAddress(a),
                                )
                                .ok()?;
                                Some(u64::from_le_bytes(b))
                            })
                            .unwrap()
                        });
                        assert_eq!(gpa, at.regs[7]);
                    }
                    other => panic!("{other:?}"),
                }
                // One step, the breakpoint still armed: the stub steps over it.
                hook.resume(&[Action::Step, Action::Stay]);
                wait("the step", || hook.lock().stops.front().is_some());
                assert_eq!(hook.take_stop(), Some((0, DebugStop::Step)));
                wait("vCPU 0 parked", || hook.lock().slots[0].parked);
                let stepped = regs(&hook, 0).rip;
                assert!(stepped > main && stepped < main + 16, "{stepped:#x}");
                // Both run: vCPU 1 (still at the entry) hits the breakpoint.
                hook.resume(&[Action::Continue, Action::Continue]);
                wait("vCPU 1's breakpoint", || {
                    hook.lock().stops.front().is_some()
                });
                assert_eq!(hook.take_stop(), Some((1, DebugStop::Break)));
                wait("vCPU 1 parked", || hook.lock().slots[1].parked);
                // Continuing from the breakpoint's own address steps over it silently.
                hook.resume(&[Action::Continue, Action::Continue]);
                wait("both vCPUs done", || {
                    h.stopped() || hook.lock().stops.front().is_some()
                });
                assert_eq!(hook.take_stop(), None, "no second hit");
                hook.release();
                wait("the guest's end", || h.stopped());
            })
            .unwrap();
        let console = String::from_utf8_lossy(&out.lock().unwrap()).into_owned();
        assert_eq!(outcome.exit.status(), 0, "{} / {console}", outcome.exit);
        assert!(console.contains("all 2 vCPUs reported"), "{console}");
    }
}
