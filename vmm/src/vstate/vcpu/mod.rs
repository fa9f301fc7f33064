//! vCPUs: creation and entry state, the run loop on its own thread, and stopping.
//!
//! One module per concept: [`segments`] (GDT, segments, page tables, long-mode entry state),
//! [`cpuid`], [`msrs`], [`lapic`], [`exit`] (exit dispatch, [`dispatch_exit`], a free function
//! over a `VcpuExit` testable with made-up exits and no `/dev/kvm`, like firecracker's
//! `handle_kvm_exit`), [`crash`] (crash decoding), [`kick`] (kicking threads out of KVM_RUN).

pub mod cpuid;
pub mod crash;
pub mod exit;
pub mod kick;
pub mod lapic;
pub mod msrs;
pub mod segments;

pub use cpuid::{supported_cpuid, vcpu_cpuid};
pub use crash::{crash_state, format_crash, suberror_name, CrashKind, CrashState};
pub use exit::{dispatch_exit, ExitAction, ExitContext};
pub use kick::{
    current_kernel_tid, current_thread_id, install_kick_handler, kick_signal, kick_vcpus,
    stop_vcpus,
};
pub use segments::{entry_regs, entry_sregs, gdt_entry, segment_from_gdt, write_entry_tables};

use super::entry::{ApStartup, EntryPoint};
use super::hook::{ExitHook, HookAction, MemoryFault, VcpuControl};
use devices::exit::{ExitSignal, VmExit};
use kvm_bindings::{kvm_fpu, kvm_mp_state, CpuId, Msrs, KVM_MP_STATE_RUNNABLE};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use std::sync::atomic::{AtomicBool, Ordering};
use vm_memory::GuestMemoryMmap;

/// Errors setting up a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuSetupError {
    /// KVM_CREATE_VCPU failed.
    #[error("KVM_CREATE_VCPU {index} failed: {source}")]
    Create {
        /// vCPU index.
        index: u32,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM_GET_SUPPORTED_CPUID failed.
    #[error("KVM_GET_SUPPORTED_CPUID failed: {0}")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
    /// A register-setting ioctl failed.
    #[error("{what} on vCPU {index} failed: {source}")]
    Ioctl {
        /// Which ioctl.
        what: &'static str,
        /// vCPU index.
        index: u32,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM_SET_MSRS did not take every MSR.
    #[error("KVM_SET_MSRS on vCPU {index} set {set} of {wanted} MSRs")]
    Msrs {
        /// vCPU index.
        index: u32,
        /// MSRs set.
        set: usize,
        /// MSRs given.
        wanted: usize,
    },
    /// Writing the GDT or page tables to guest memory failed.
    #[error("Writing the entry tables to guest memory at {gpa:#x} failed: {source}")]
    Tables {
        /// Where.
        gpa: u64,
        /// vm-memory's error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Creates and configures vCPU `index` of `count` for `entry`.
pub fn create_vcpu(
    vm: &VmFd,
    supported_cpuid: &CpuId,
    index: u32,
    count: u32,
    entry: &EntryPoint,
    aps: ApStartup,
) -> Result<VcpuFd, VcpuSetupError> {
    let ioctl = |what| {
        move |source| VcpuSetupError::Ioctl {
            what,
            index,
            source,
        }
    };
    let vcpu = vm
        .create_vcpu(u64::from(index))
        .map_err(|source| VcpuSetupError::Create { index, source })?;
    vcpu.set_cpuid2(&vcpu_cpuid(supported_cpuid, index, count))
        .map_err(ioctl("KVM_SET_CPUID2"))?;
    let entries = msrs::boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuSetupError::Msrs {
        index,
        set: 0,
        wanted: entries.len(),
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(ioctl("KVM_SET_MSRS"))?;
    if set != entries.len() {
        return Err(VcpuSetupError::Msrs {
            index,
            set,
            wanted: entries.len(),
        });
    }
    let mut lapic = vcpu.get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?;
    lapic::set_lint_modes(&mut lapic);
    vcpu.set_lapic(&lapic).map_err(ioctl("KVM_SET_LAPIC"))?;

    let starts_now = index == 0 || aps == ApStartup::SameEntry;
    if starts_now {
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        vcpu.set_fpu(&fpu).map_err(ioctl("KVM_SET_FPU"))?;
        let mut sregs = vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
        entry_sregs(entry, &mut sregs);
        vcpu.set_sregs(&sregs).map_err(ioctl("KVM_SET_SREGS"))?;
        vcpu.set_regs(&entry_regs(entry, index, count))
            .map_err(ioctl("KVM_SET_REGS"))?;
        if index != 0 {
            // With an in-kernel irqchip APs start in wait-for-SIPI; these start now.
            vcpu.set_mp_state(kvm_mp_state {
                mp_state: KVM_MP_STATE_RUNNABLE,
            })
            .map_err(ioctl("KVM_SET_MP_STATE"))?;
        }
    }
    Ok(vcpu)
}

/// Counters one vCPU thread keeps.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VcpuStats {
    /// Port-I/O exits.
    pub exit_io: u64,
    /// MMIO exits.
    pub exit_mmio: u64,
    /// Time of the first exit after start (the first guest instruction ran before it).
    pub first_exit: Option<std::time::Instant>,
}

/// Runs vCPU `index` until the VM ends; reports crashes through `ctx.exit`.
///
/// `hook`, when given, sees KVM_RUN errors (EFAULT with or without `KVM_EXIT_MEMORY_FAULT`
/// info, ...) and the exits [`dispatch_exit`] reports as crashes, before the default action;
/// it is also asked before the first KVM_RUN ([`ExitHook::on_start`]), after a kick
/// ([`ExitHook::on_kick`]) and on `KVM_EXIT_DEBUG` ([`ExitHook::on_debug_exit`]).
pub fn run_vcpu(
    mut vcpu: VcpuFd,
    ctx: ExitContext<'_>,
    mem: &GuestMemoryMmap,
    finished: &AtomicBool,
    hook: Option<&dyn ExitHook>,
    watch: Option<&super::watchdog::Watchdog>,
) -> VcpuStats {
    let mut dumped = false;
    let mut stats = VcpuStats::default();
    let run_ptr: *mut u8 = &mut vcpu.get_kvm_run().immediate_exit;
    kick::set_kick_target(run_ptr);
    if let Some(h) = hook {
        let said = h.on_start(&mut VcpuControl::new(&mut vcpu, ctx.vcpu));
        apply_hook(ExitAction::Continue, Some(said), ctx.exit);
    }
    while !ctx.exit.fired() {
        let mut kicked = false;
        // KVM leaves exit_reason stale on errors that carry no KVM_EXIT_MEMORY_FAULT, so
        // clear it: kvm-ioctls reads it after an EFAULT to decide whether `memory_fault` is
        // valid.
        vcpu.get_kvm_run().exit_reason = 0;
        let res = vcpu.run();
        // Read right away: errno of a failed KVM_RUN (kvm-ioctls hides it for MemoryFault).
        let os_errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        if let (Some(w), true) = (watch, res.is_ok()) {
            w.touch();
        }
        if stats.first_exit.is_none() {
            stats.first_exit = Some(std::time::Instant::now());
        }
        // (errno, memory fault info) of a failed KVM_RUN, or the dispatched action.
        let outcome: Result<ExitAction, (i32, Option<MemoryFault>)> = match res {
            Ok(VcpuExit::MemoryFault { flags, gpa, size }) => {
                let errno = if os_errno == libc::EHWPOISON {
                    libc::EHWPOISON
                } else {
                    libc::EFAULT
                };
                Err((errno, Some(MemoryFault { gpa, size, flags })))
            }
            Ok(exit) => {
                match &exit {
                    VcpuExit::IoIn(..) | VcpuExit::IoOut(..) => stats.exit_io += 1,
                    VcpuExit::MmioRead(..) | VcpuExit::MmioWrite(..) => stats.exit_mmio += 1,
                    _ => {}
                }
                Ok(dispatch_exit(exit, &ctx))
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
                if let Some(w) = watch.filter(|w| w.dump_requested() && !dumped) {
                    // Kicked by the watchdog: say where the guest is.
                    w.record(super::watchdog::dump_vcpu(&vcpu, ctx.vcpu, mem));
                    dumped = true;
                }
                kicked = true;
                Ok(ExitAction::Continue)
            }
            Err(e) => Err((e.errno(), None)),
        };
        let (action, hook_said) = match outcome {
            Ok(ExitAction::Crash(kind)) => {
                let said = hook.map(|h| {
                    let ctl = &mut VcpuControl::new(&mut vcpu, ctx.vcpu);
                    match &kind {
                        CrashKind::Debug(d) => h.on_debug_exit(ctl, *d),
                        _ => h.on_unhandled_exit(ctl, &kind.name()),
                    }
                });
                (ExitAction::Crash(kind), said)
            }
            Ok(ExitAction::Continue) if kicked && !ctx.exit.fired() => {
                let said = hook.map(|h| h.on_kick(&mut VcpuControl::new(&mut vcpu, ctx.vcpu)));
                (ExitAction::Continue, said)
            }
            Ok(a) => (a, None),
            Err((errno, fault)) => {
                let said = hook.map(|h| {
                    h.on_run_error(&mut VcpuControl::new(&mut vcpu, ctx.vcpu), errno, fault)
                });
                let err = std::io::Error::from_raw_os_error(errno);
                let what = match fault {
                    Some(f) => format!(
                        "KVM_RUN failed: {err} (KVM_EXIT_MEMORY_FAULT gpa {:#x} size {:#x} flags {:#x})",
                        f.gpa, f.size, f.flags
                    ),
                    None => format!("KVM_RUN failed: {err}"),
                };
                (ExitAction::Crash(CrashKind::Unexpected(what)), said)
            }
        };
        let action = apply_hook(action, hook_said, ctx.exit);
        match action {
            ExitAction::Continue => {}
            ExitAction::Stop => break,
            ExitAction::Crash(kind) => {
                let st = crash_state(&mut vcpu, &kind, mem);
                ctx.exit.request(VmExit::Crash {
                    vcpu: ctx.vcpu,
                    reason: format_crash(&kind, &st),
                });
                break;
            }
        }
    }
    kick::set_kick_target(std::ptr::null_mut());
    finished.store(true, Ordering::Release);
    drop(vcpu);
    stats
}

/// What the loop does with `action` (the default for a crash or a KVM_RUN error) once the
/// hook answered `said` (`None`: no hook): Default keeps it, Continue re-enters KVM_RUN, Stop
/// ends the VM with the hook's reason (if the VM has not ended already).
pub fn apply_hook(action: ExitAction, said: Option<HookAction>, exit: &ExitSignal) -> ExitAction {
    match said {
        None | Some(HookAction::Default) => action,
        Some(HookAction::Continue) => ExitAction::Continue,
        Some(HookAction::Stop(reason)) => {
            exit.request(reason);
            ExitAction::Stop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_answers_override_the_default_action() {
        let crash = || ExitAction::Crash(CrashKind::Unexpected("KVM_RUN failed: EFAULT".into()));
        let exit = ExitSignal::new().unwrap();
        assert_eq!(apply_hook(crash(), None, &exit), crash());
        assert_eq!(
            apply_hook(crash(), Some(HookAction::Default), &exit),
            crash()
        );
        assert_eq!(
            apply_hook(crash(), Some(HookAction::Continue), &exit),
            ExitAction::Continue
        );
        assert!(!exit.fired());
        assert_eq!(
            apply_hook(crash(), Some(HookAction::Stop(VmExit::Done(9))), &exit),
            ExitAction::Stop
        );
        assert_eq!(exit.reason(), Some(VmExit::Done(9)));
        assert_eq!(CrashKind::Shutdown.name(), "KVM_EXIT_SHUTDOWN");
    }
}
