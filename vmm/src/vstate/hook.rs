//! The per-exit extension point of the vCPU loop: an [`ExitHook`] sees what the default
//! dispatch ([`super::vcpu::dispatch_exit`]) does not handle, on the vCPU thread, with a
//! [`VcpuControl`] over the vCPU.

use devices::exit::VmExit;
use kvm_bindings::{kvm_fpu, kvm_guest_debug, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;

/// `KVM_EXIT_MEMORY_FAULT`'s payload (`kvm_run.memory_fault`, include/uapi/linux/kvm.h), which
/// KVM fills when KVM_RUN fails with EFAULT or EHWPOISON on a guest memory access, from the
/// paths that call `kvm_mmu_prepare_memory_fault_exit()` (arch/x86/kvm/mmu/mmu.c; in 6.12
/// only private/shared-attribute mismatches and guest_memfd faults, not a plain unresolvable
/// hva, which returns a bare -EFAULT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryFault {
    /// Guest-physical address of the faulting range.
    pub gpa: u64,
    /// Size of the range in bytes.
    pub size: u64,
    /// `KVM_MEMORY_EXIT_FLAG_*` (bit 3: private memory).
    pub flags: u64,
}

/// `KVM_EXIT_DEBUG`'s payload (`kvm_run.debug.arch`, `struct kvm_debug_exit_arch`,
/// arch/x86/include/uapi/asm/kvm.h): which exception (1 = #DB, 3 = #BP), where, and the
/// guest's DR6/DR7 at the exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebugExit {
    /// Exception vector.
    pub exception: u32,
    /// Guest RIP of the exit.
    pub pc: u64,
    /// DR6: bits 0-3 say which of DR0-DR3 fired, bit 14 (BS) a single step.
    pub dr6: u64,
    /// DR7 at the exit.
    pub dr7: u64,
}

/// What the vCPU loop does after a hook ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookAction {
    /// Re-enter KVM_RUN (the hook fixed the cause, e.g. mapped the page, or wants a retry).
    Continue,
    /// What the VMM does without a hook: report the error or exit as a guest crash.
    Default,
    /// End the VM with this reason.
    Stop(VmExit),
}

/// Called on the vCPU thread for what the default dispatch does not handle.
///
/// One hook is shared by every vCPU of the VM ([`VcpuControl::index`] says which one called).
pub trait ExitHook: Send + Sync {
    /// KVM_RUN failed with `errno` (other than EINTR/EAGAIN, which the loop handles): e.g.
    /// EFAULT for a guest access KVM could not resolve through the memslot's mapping.
    /// `fault` is `KVM_EXIT_MEMORY_FAULT`'s info when KVM filled it (hosts with
    /// KVM_CAP_MEMORY_FAULT_INFO, and only for the paths that call
    /// `kvm_prepare_memory_fault_exit()`).
    fn on_run_error(
        &self,
        vcpu: &mut VcpuControl<'_>,
        errno: i32,
        fault: Option<MemoryFault>,
    ) -> HookAction;

    /// An exit the default dispatch would report as a crash: `what` names it
    /// (`KVM_EXIT_SHUTDOWN`, `KVM_EXIT_INTERNAL_ERROR`, `KVM_EXIT_FAIL_ENTRY`, or the
    /// unhandled exit's debug form).
    fn on_unhandled_exit(&self, vcpu: &mut VcpuControl<'_>, what: &str) -> HookAction {
        let _ = (vcpu, what);
        HookAction::Default
    }

    /// Before the vCPU's first KVM_RUN (a debugger holds the vCPU here until told to go).
    /// `Continue` and `Default` run it; `Stop` ends the VM.
    fn on_start(&self, vcpu: &mut VcpuControl<'_>) -> HookAction {
        let _ = vcpu;
        HookAction::Continue
    }

    /// KVM_RUN returned EINTR: the vCPU was kicked (by the stop path, the watchdog, or a
    /// hook's owner that wants the vCPU out of the guest, e.g. a debugger's pause).
    /// `Continue` and `Default` re-enter KVM_RUN; `Stop` ends the VM.
    fn on_kick(&self, vcpu: &mut VcpuControl<'_>) -> HookAction {
        let _ = vcpu;
        HookAction::Continue
    }

    /// `KVM_EXIT_DEBUG` (a hardware breakpoint, watchpoint or single step armed with
    /// KVM_SET_GUEST_DEBUG). `Default` reports it as an unexpected exit (a crash).
    fn on_debug_exit(&self, vcpu: &mut VcpuControl<'_>, exit: DebugExit) -> HookAction {
        let _ = (vcpu, exit);
        HookAction::Default
    }
}

/// A vCPU ioctl issued through [`VcpuControl`] failed.
#[derive(Debug, thiserror::Error)]
#[error("{what} on vCPU {index} failed: {source}")]
pub struct VcpuControlError {
    /// Which ioctl.
    pub what: &'static str,
    /// vCPU index.
    pub index: usize,
    /// KVM's error.
    #[source]
    pub source: kvm_ioctls::Error,
}

/// The vCPU, as an [`ExitHook`] sees it: its index and its register state.
pub struct VcpuControl<'a> {
    fd: &'a mut VcpuFd,
    index: usize,
}

impl std::fmt::Debug for VcpuControl<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuControl")
            .field("index", &self.index)
            .finish()
    }
}

impl<'a> VcpuControl<'a> {
    /// Wraps vCPU `index`'s fd.
    pub(crate) fn new(fd: &'a mut VcpuFd, index: usize) -> Self {
        VcpuControl { fd, index }
    }

    /// The vCPU's index (0 = boot vCPU).
    pub fn index(&self) -> usize {
        self.index
    }

    fn err(&self, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuControlError {
        let index = self.index;
        move |source| VcpuControlError {
            what,
            index,
            source,
        }
    }

    /// KVM_GET_REGS.
    pub fn get_regs(&self) -> Result<kvm_regs, VcpuControlError> {
        self.fd.get_regs().map_err(self.err("KVM_GET_REGS"))
    }

    /// KVM_SET_REGS (e.g. to skip the faulting instruction or hand the guest a result).
    pub fn set_regs(&self, regs: &kvm_regs) -> Result<(), VcpuControlError> {
        self.fd.set_regs(regs).map_err(self.err("KVM_SET_REGS"))
    }

    /// KVM_GET_SREGS.
    pub fn get_sregs(&self) -> Result<kvm_sregs, VcpuControlError> {
        self.fd.get_sregs().map_err(self.err("KVM_GET_SREGS"))
    }

    /// KVM_SET_SREGS.
    pub fn set_sregs(&self, sregs: &kvm_sregs) -> Result<(), VcpuControlError> {
        self.fd.set_sregs(sregs).map_err(self.err("KVM_SET_SREGS"))
    }

    /// KVM_GET_FPU (x87 and SSE state).
    pub fn get_fpu(&self) -> Result<kvm_fpu, VcpuControlError> {
        self.fd.get_fpu().map_err(self.err("KVM_GET_FPU"))
    }

    /// KVM_SET_GUEST_DEBUG: hardware breakpoints (DR0-DR3 and DR7 in `arch.debugreg`),
    /// single step, or `control` 0 to turn guest debugging off.
    pub fn set_guest_debug(&self, debug: &kvm_guest_debug) -> Result<(), VcpuControlError> {
        self.fd
            .set_guest_debug(debug)
            .map_err(self.err("KVM_SET_GUEST_DEBUG"))
    }

    /// KVM_TRANSLATE: the guest-physical address `gva` maps to in the vCPU's current page
    /// tables, or `None` when it is not mapped.
    pub fn translate_gva(&self, gva: u64) -> Result<Option<u64>, VcpuControlError> {
        let t = self
            .fd
            .translate_gva(gva)
            .map_err(self.err("KVM_TRANSLATE"))?;
        Ok((t.valid != 0).then_some(t.physical_address))
    }
}
