//! vCPUs: entry state (GDT, page tables, CPUID, MSRs, registers), the run loop on its own
//! thread, stopping, and exit dispatch.
//!
//! [`dispatch_exit`] is a free function over a `VcpuExit` so it can be tested with made-up
//! exits and no `/dev/kvm` (like firecracker's `handle_kvm_exit`).

use super::entry::{ApStartup, EntryPoint, GDT_START, PML4_START};
use super::hook::{ExitHook, HookAction, MemoryFault, VcpuControl};
use devices::bus::Bus;
use devices::exit::{ExitSignal, VmExit};
use kvm_bindings::{
    kvm_fpu, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, CpuId, Msrs,
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, KVM_MAX_CPUID_ENTRIES,
    KVM_MP_STATE_RUNNABLE, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use std::sync::atomic::{AtomicBool, Ordering};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

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

// GDT layout (selector = index * 8).
const GDT_CODE32: u16 = 0x08;
const GDT_CODE64: u16 = 0x10;
const GDT_DATA: u16 = 0x18;
const GDT_TSS: u16 = 0x20;

/// Builds a GDT descriptor from flags (access byte in bits 0..8, flags in 12..16), base
/// and limit, the encoding of `GDT_ENTRY()` (arch/x86/include/asm/segment.h).
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let flags = u64::from(flags);
    let base = u64::from(base);
    let limit = u64::from(limit);
    ((base & 0xff00_0000) << (56 - 24))
        | ((flags & 0x0000_f0ff) << 40)
        | ((limit & 0x000f_0000) << (48 - 16))
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

fn gdt() -> [u64; 5] {
    [
        0,
        gdt_entry(0xc09b, 0, 0xfffff), // 0x08: 32-bit code, flat
        gdt_entry(0xa09b, 0, 0xfffff), // 0x10: 64-bit code
        gdt_entry(0xc093, 0, 0xfffff), // 0x18: data, flat
        gdt_entry(0x808b, 0, 0xfffff), // 0x20: TSS (busy), needed for VM entry
    ]
}

/// The `kvm_segment` KVM wants for GDT entry `selector`.
pub fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = (entry & 0xffff) | ((entry >> 32) & 0x000f_0000);
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (limit_raw << 12) | 0xfff
    } else {
        limit_raw
    };
    kvm_segment {
        base,
        limit: u32::try_from(limit).unwrap_or(u32::MAX),
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(((entry >> 47) & 1) == 0),
        padding: 0,
    }
}

/// Writes the GDT and the identity-mapping page tables (first 4 GiB, 2 MiB pages) that
/// every entry mode uses (see [`EntryPoint`] for the layout).
pub fn write_entry_tables(mem: &GuestMemoryMmap) -> Result<(), VcpuSetupError> {
    let err = |gpa| move |source| VcpuSetupError::Tables { gpa, source };
    for (i, e) in gdt().iter().enumerate() {
        let gpa = GDT_START + 8 * i as u64;
        mem.write_obj(*e, GuestAddress(gpa)).map_err(err(gpa))?;
    }
    let pdpt = PML4_START + 0x1000;
    let pd = PML4_START + 0x2000;
    // PML4[0] -> PDPT, present + writable.
    mem.write_obj(pdpt | 0x3, GuestAddress(PML4_START))
        .map_err(err(PML4_START))?;
    for i in 0..4u64 {
        let pd_i = pd + i * 0x1000;
        mem.write_obj(pd_i | 0x3, GuestAddress(pdpt + i * 8))
            .map_err(err(pdpt))?;
        let mut table = [0u8; 4096];
        for (j, slot) in (0u64..).zip(table.chunks_exact_mut(8)) {
            // 2 MiB page: present, writable, PS.
            let e = ((i << 30) | (j << 21)) | 0x83;
            slot.copy_from_slice(&e.to_le_bytes());
        }
        mem.write_slice(&table, GuestAddress(pd_i))
            .map_err(err(pd_i))?;
    }
    Ok(())
}

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_MP: u64 = 1 << 1;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_NE: u64 = 1 << 5;
const X86_CR0_WP: u64 = 1 << 16;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const X86_CR4_OSFXSR: u64 = 1 << 9;
const X86_CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Applies the segment, control-register and descriptor-table part of `entry` to `sregs`.
pub fn entry_sregs(entry: &EntryPoint, sregs: &mut kvm_sregs) {
    let g = gdt();
    let seg = |sel: u16| segment_from_gdt(g[usize::from(sel / 8)], sel);
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = u16::try_from(g.len() * 8 - 1).unwrap_or(u16::MAX);
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.tr = seg(GDT_TSS);
    let data = seg(GDT_DATA);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    match entry {
        EntryPoint::Long64 { .. } => {
            sregs.cs = seg(GDT_CODE64);
            sregs.cr3 = PML4_START;
            sregs.cr4 = X86_CR4_PAE | X86_CR4_OSFXSR | X86_CR4_OSXMMEXCPT;
            sregs.cr0 = X86_CR0_PE | X86_CR0_MP | X86_CR0_ET | X86_CR0_NE | X86_CR0_WP | X86_CR0_PG;
            sregs.efer = EFER_LME | EFER_LMA;
        }
        EntryPoint::Pvh32 { .. } => {
            sregs.cs = seg(GDT_CODE32);
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.efer = 0;
        }
    }
}

/// The general registers for `entry` on vCPU `index` of `count` (see [`ApStartup::SameEntry`]
/// for the built-in guests' RDI/RDX convention).
pub fn entry_regs(entry: &EntryPoint, index: u32, count: u32) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry.rip(),
        ..Default::default()
    };
    match *entry {
        EntryPoint::Long64 { rsi, .. } => {
            regs.rsi = rsi;
            // Linux's startup_64 sets up its own stack; 0x8ff0 is free and below the
            // page tables for anything that pushes before that.
            regs.rsp = 0x8ff0;
            regs.rbp = 0x8ff0;
            regs.rdi = u64::from(index);
            regs.rdx = u64::from(count);
        }
        EntryPoint::Pvh32 { rbx, .. } => {
            regs.rbx = rbx;
        }
    }
    regs
}

/// CPUID for vCPU `index`: KVM's supported set with this vCPU's APIC id (leaf 1 EBX[31:24],
/// leaves 0xb/0x1f EDX, AMD leaf 0x8000001e EAX), the hypervisor bit, and the logical
/// processor count.
pub fn vcpu_cpuid(supported: &CpuId, index: u32, count: u32) -> CpuId {
    let mut cpuid = supported.clone();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (index << 24) | (count.min(255) << 16);
                e.ecx |= 1 << 31; // hypervisor present
                e.edx |= 1 << 28; // HTT: the count in EBX[23:16] is valid
            }
            // x2APIC id in the extended topology leaves (Intel) ...
            0xb | 0x1f => e.edx = index,
            // ... and the extended APIC id (AMD), which Linux checks against the APIC.
            0x8000_001e => e.eax = index,
            _ => {}
        }
    }
    cpuid
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;

fn boot_msrs() -> Vec<kvm_msr_entry> {
    let e = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        e(MSR_IA32_SYSENTER_CS, 0),
        e(MSR_IA32_SYSENTER_ESP, 0),
        e(MSR_IA32_SYSENTER_EIP, 0),
        e(MSR_STAR, 0),
        e(MSR_CSTAR, 0),
        e(MSR_KERNEL_GS_BASE, 0),
        e(MSR_SYSCALL_MASK, 0),
        e(MSR_LSTAR, 0),
        e(MSR_IA32_TSC, 0),
        e(MSR_IA32_MISC_ENABLE, 1),          // fast strings
        e(MSR_MTRR_DEF_TYPE, (1 << 11) | 6), // MTRRs on, default write-back
    ]
}

/// Local APIC register offsets and delivery modes for LINT0/LINT1.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

fn set_lvt_mode(regs: &mut [std::os::raw::c_char], off: usize, mode: u32) {
    let mut b = [0u8; 4];
    for (i, x) in b.iter_mut().enumerate() {
        *x = regs[off + i] as u8;
    }
    let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
    for (i, x) in v.to_le_bytes().iter().enumerate() {
        regs[off + i] = *x as std::os::raw::c_char;
    }
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
    let entries = boot_msrs();
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
    set_lvt_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_lvt_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
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

/// KVM_GET_SUPPORTED_CPUID.
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, VcpuSetupError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(VcpuSetupError::SupportedCpuid)
}

/// What the vCPU loop does after an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitAction {
    /// Run the vCPU again.
    Continue,
    /// The VM has ended (a device or the guest asked); stop this vCPU.
    Stop,
    /// The guest crashed; the loop reports it with the vCPU's registers.
    Crash(CrashKind),
}

/// How a guest crashed, as KVM reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrashKind {
    /// KVM_EXIT_INTERNAL_ERROR (details come from `kvm_run.internal`).
    InternalError,
    /// KVM_EXIT_SHUTDOWN: a triple fault.
    Shutdown,
    /// KVM_EXIT_FAIL_ENTRY with the hardware reason.
    FailEntry {
        /// `hardware_entry_failure_reason`.
        reason: u64,
        /// Physical CPU.
        cpu: u32,
    },
    /// An exit faultline does not handle.
    Unexpected(String),
}

impl CrashKind {
    /// The exit's KVM name (what [`ExitHook::on_unhandled_exit`] gets).
    pub fn name(&self) -> String {
        match self {
            CrashKind::InternalError => "KVM_EXIT_INTERNAL_ERROR".into(),
            CrashKind::Shutdown => "KVM_EXIT_SHUTDOWN".into(),
            CrashKind::FailEntry { .. } => "KVM_EXIT_FAIL_ENTRY".into(),
            CrashKind::Unexpected(what) => what.clone(),
        }
    }
}

/// Everything an exit may touch.
#[derive(Debug)]
pub struct ExitContext<'a> {
    /// Index of the vCPU that exited.
    pub vcpu: usize,
    /// Port-I/O devices.
    pub pio: &'a Bus,
    /// MMIO devices.
    pub mmio: &'a Bus,
    /// The VM's end signal.
    pub exit: &'a ExitSignal,
}

/// Handles one vCPU exit. Models the userspace half of `kvm_arch_vcpu_ioctl_run()`'s
/// exits (arch/x86/kvm/x86.c): port and MMIO accesses go to the buses (unknown addresses
/// are logged once, not fatal), system events end the VM, and crashes are returned for
/// the caller to report with register state.
pub fn dispatch_exit(exit: VcpuExit<'_>, ctx: &ExitContext<'_>) -> ExitAction {
    let action = match exit {
        VcpuExit::IoOut(port, data) => {
            ctx.pio.write(ctx.vcpu, u64::from(port), data);
            ExitAction::Continue
        }
        VcpuExit::IoIn(port, data) => {
            ctx.pio.read(ctx.vcpu, u64::from(port), data);
            ExitAction::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            ctx.mmio.write(ctx.vcpu, addr, data);
            ExitAction::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            ctx.mmio.read(ctx.vcpu, addr, data);
            ExitAction::Continue
        }
        VcpuExit::Hlt | VcpuExit::IrqWindowOpen | VcpuExit::Intr => ExitAction::Continue,
        VcpuExit::Shutdown => ExitAction::Crash(CrashKind::Shutdown),
        VcpuExit::FailEntry(reason, cpu) => ExitAction::Crash(CrashKind::FailEntry { reason, cpu }),
        VcpuExit::InternalError => ExitAction::Crash(CrashKind::InternalError),
        VcpuExit::SystemEvent(kind, _)
            if kind == KVM_SYSTEM_EVENT_RESET || kind == KVM_SYSTEM_EVENT_SHUTDOWN =>
        {
            ctx.exit.request(VmExit::Reset);
            ExitAction::Stop
        }
        other => ExitAction::Crash(CrashKind::Unexpected(format!("{other:?}"))),
    };
    if action == ExitAction::Continue && ctx.exit.fired() {
        return ExitAction::Stop;
    }
    action
}

/// What the crash report includes besides the kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrashState {
    /// Guest RIP.
    pub rip: u64,
    /// `kvm_run.internal.suberror` (internal errors only).
    pub suberror: Option<u32>,
    /// `kvm_run.internal.data[..ndata]`.
    pub data: Vec<u64>,
    /// Instruction bytes at RIP (from KVM's emulation-failure data, else guest memory).
    pub insn: Vec<u8>,
}

/// Names KVM's internal-error suberrors (`KVM_INTERNAL_ERROR_*`, include/uapi/linux/kvm.h).
pub fn suberror_name(s: u32) -> &'static str {
    match s {
        1 => "emulation failure",
        2 => "simultaneous exceptions",
        3 => "delivery event failure",
        4 => "unexpected exit reason",
        _ => "unknown",
    }
}

/// The user-facing crash message.
pub fn format_crash(kind: &CrashKind, st: &CrashState) -> String {
    let bytes = if st.insn.is_empty() {
        "unavailable".to_string()
    } else {
        st.insn
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    match kind {
        CrashKind::InternalError => {
            let sub = st.suberror.unwrap_or(0);
            let data = st
                .data
                .iter()
                .map(|d| format!("{d:#x}"))
                .collect::<Vec<_>>()
                .join(" ");
            format!(
                "KVM_EXIT_INTERNAL_ERROR suberror {sub} ({}) at RIP {:#x}, instruction bytes [{bytes}], data [{data}]",
                suberror_name(sub),
                st.rip
            )
        }
        CrashKind::Shutdown => format!(
            "KVM_EXIT_SHUTDOWN (triple fault) at RIP {:#x}, instruction bytes [{bytes}]",
            st.rip
        ),
        CrashKind::FailEntry { reason, cpu } => format!(
            "KVM_EXIT_FAIL_ENTRY hardware reason {reason:#x} on host CPU {cpu} at RIP {:#x}",
            st.rip
        ),
        CrashKind::Unexpected(what) => format!("unhandled exit {what} at RIP {:#x}", st.rip),
    }
}

/// Gathers [`CrashState`] from a vCPU after a crash exit.
pub fn crash_state(vcpu: &mut VcpuFd, kind: &CrashKind, mem: &GuestMemoryMmap) -> CrashState {
    let mut st = CrashState::default();
    if let CrashKind::InternalError = kind {
        let run = vcpu.get_kvm_run();
        // SAFETY: after KVM_EXIT_INTERNAL_ERROR the kernel filled the `internal` member
        // (and, for emulation failures with the flag set, `emulation_failure`, which
        // overlays it); both are plain integers.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        st.suberror = Some(internal.suberror);
        let n = (internal.ndata as usize).min(internal.data.len());
        st.data = internal.data[..n].to_vec();
        // SAFETY: as above; the overlay is only read when KVM says it holds bytes.
        let emu = unsafe { run.__bindgen_anon_1.emulation_failure };
        if internal.suberror == 1
            && internal.ndata >= 3
            && emu.flags & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) != 0
        {
            // SAFETY: the union has a single member.
            let b = unsafe { emu.__bindgen_anon_1.__bindgen_anon_1 };
            let n = usize::from(b.insn_size).min(b.insn_bytes.len());
            st.insn = b.insn_bytes[..n].to_vec();
        }
    }
    if let Ok(regs) = vcpu.get_regs() {
        st.rip = regs.rip;
        if st.insn.is_empty() {
            let gpa = vcpu
                .translate_gva(regs.rip)
                .ok()
                .filter(|t| t.valid != 0)
                .map(|t| t.physical_address)
                .unwrap_or(regs.rip);
            let mut buf = [0u8; 15];
            if mem.read_slice(&mut buf, GuestAddress(gpa)).is_ok() {
                st.insn = buf.to_vec();
            }
        }
    }
    st
}

// Kicking a vCPU out of KVM_RUN: a real-time signal whose handler sets `immediate_exit` in
// this thread's kvm_run, so a kick that lands just before KVM_RUN is not lost.
thread_local! {
    static KVM_RUN: std::cell::Cell<*mut u8> = const { std::cell::Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let p = KVM_RUN.with(|c| c.get());
    if !p.is_null() {
        // SAFETY: `p` points at this thread's live kvm_run's `immediate_exit` byte; it is
        // set below before the first KVM_RUN and cleared before the VcpuFd is dropped.
        unsafe { p.write_volatile(1) };
    }
}

/// The signal used to kick vCPU threads.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

/// Installs the kick handler (once per process).
pub fn install_kick_handler() -> std::io::Result<()> {
    static INSTALLED: std::sync::OnceLock<Result<(), i32>> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler)
                .map_err(|e| e.errno())
        })
        .map_err(std::io::Error::from_raw_os_error)
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
/// info, ...) and the exits [`dispatch_exit`] reports as crashes, before the default action.
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
    KVM_RUN.with(|c| c.set(run_ptr));
    while !ctx.exit.fired() {
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
                Ok(ExitAction::Continue)
            }
            Err(e) => Err((e.errno(), None)),
        };
        let (action, hook_said) = match outcome {
            Ok(ExitAction::Crash(kind)) => {
                let said = hook.map(|h| {
                    h.on_unhandled_exit(&mut VcpuControl::new(&mut vcpu, ctx.vcpu), &kind.name())
                });
                (ExitAction::Crash(kind), said)
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
    KVM_RUN.with(|c| c.set(std::ptr::null_mut()));
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

/// The calling thread's kernel thread id (gettid(2); what tracefs `set_event_pid` takes).
pub fn current_kernel_tid() -> u32 {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    u32::try_from(tid).unwrap_or(0)
}

/// The calling thread's pthread id (for [`stop_vcpus`]).
pub fn current_thread_id() -> u64 {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() as u64 }
}

/// Kicks every vCPU thread that has not finished out of KVM_RUN once (KVM_RUN returns EINTR
/// and the thread carries on).
pub fn kick_vcpus(tids: &[std::sync::atomic::AtomicU64], finished: &[AtomicBool]) {
    for (tid, f) in tids.iter().zip(finished) {
        let t = tid.load(Ordering::Acquire);
        if t != 0 && !f.load(Ordering::Acquire) {
            // SAFETY: `t` is the pthread id of a scoped vCPU thread that has not finished
            // (and so has not been joined): it is still valid.
            unsafe { libc::pthread_kill(t as libc::pthread_t, kick_signal()) };
        }
    }
}

/// Kicks every vCPU thread (by the ids they stored with [`current_thread_id`]) whose
/// `finished` flag is not yet set, until all are done. A kick makes KVM_RUN return EINTR
/// (or not start, through `immediate_exit`); the loop then sees the VM has ended.
pub fn stop_vcpus(tids: &[std::sync::atomic::AtomicU64], finished: &[AtomicBool]) {
    loop {
        let mut all = true;
        for (tid, f) in tids.iter().zip(finished) {
            if f.load(Ordering::Acquire) {
                continue;
            }
            all = false;
            let t = tid.load(Ordering::Acquire);
            if t != 0 {
                // SAFETY: `t` is the pthread id of a scoped vCPU thread that has not been
                // joined yet (the caller joins after this returns), so it is still valid.
                unsafe { libc::pthread_kill(t as libc::pthread_t, kick_signal()) };
            }
        }
        if all {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::bus::BusDevice;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Rec(Vec<(usize, u64, Vec<u8>)>);
    impl BusDevice for Rec {
        fn read(&mut self, _: usize, _: u64, data: &mut [u8]) {
            data.fill(0x42);
        }
        fn write(&mut self, vcpu: usize, offset: u64, data: &[u8]) {
            self.0.push((vcpu, offset, data.to_vec()));
        }
    }

    fn setup() -> (Bus, Bus, ExitSignal, Arc<Mutex<Rec>>) {
        let rec = Arc::new(Mutex::new(Rec::default()));
        let mut pio = Bus::new("port");
        pio.insert(0x3f8, 8, rec.clone()).unwrap();
        (pio, Bus::new("MMIO"), ExitSignal::new().unwrap(), rec)
    }

    #[test]
    fn io_exits_reach_the_device_with_vcpu_and_offset() {
        let (pio, mmio, exit, rec) = setup();
        let ctx = ExitContext {
            vcpu: 2,
            pio: &pio,
            mmio: &mmio,
            exit: &exit,
        };
        assert_eq!(
            dispatch_exit(VcpuExit::IoOut(0x3f9, &[7]), &ctx),
            ExitAction::Continue
        );
        let mut d = [0u8; 1];
        assert_eq!(
            dispatch_exit(VcpuExit::IoIn(0x3f8, &mut d), &ctx),
            ExitAction::Continue
        );
        assert_eq!(d, [0x42]);
        assert_eq!(rec.lock().unwrap().0, vec![(2, 1, vec![7])]);
    }

    #[test]
    fn unknown_port_and_mmio_are_logged_not_fatal() {
        let (pio, mmio, exit, _) = setup();
        let ctx = ExitContext {
            vcpu: 0,
            pio: &pio,
            mmio: &mmio,
            exit: &exit,
        };
        let mut d = [0u8; 4];
        assert_eq!(
            dispatch_exit(VcpuExit::IoIn(0x80, &mut d[..1]), &ctx),
            ExitAction::Continue
        );
        assert_eq!(d[0], 0xff);
        assert_eq!(
            dispatch_exit(VcpuExit::MmioWrite(0xd000_0000, &[1, 2, 3, 4]), &ctx),
            ExitAction::Continue
        );
        assert_eq!(
            dispatch_exit(VcpuExit::MmioRead(0xd000_0000, &mut d), &ctx),
            ExitAction::Continue
        );
        assert_eq!(d, [0xff; 4]);
        assert_eq!(pio.unknown_accesses(), vec![0x80]);
        assert_eq!(mmio.unknown_accesses(), vec![0xd000_0000]);
        assert!(!exit.fired());
    }

    #[test]
    fn crashes_are_reported_as_crashes() {
        let (pio, mmio, exit, _) = setup();
        let ctx = ExitContext {
            vcpu: 0,
            pio: &pio,
            mmio: &mmio,
            exit: &exit,
        };
        assert_eq!(
            dispatch_exit(VcpuExit::Shutdown, &ctx),
            ExitAction::Crash(CrashKind::Shutdown)
        );
        assert_eq!(
            dispatch_exit(VcpuExit::InternalError, &ctx),
            ExitAction::Crash(CrashKind::InternalError)
        );
        assert_eq!(
            dispatch_exit(VcpuExit::FailEntry(0x21, 1), &ctx),
            ExitAction::Crash(CrashKind::FailEntry {
                reason: 0x21,
                cpu: 1
            })
        );
        assert!(matches!(
            dispatch_exit(VcpuExit::Watchdog, &ctx),
            ExitAction::Crash(CrashKind::Unexpected(_))
        ));
    }

    #[test]
    fn system_reset_ends_the_vm_cleanly_and_others_stop_after() {
        let (pio, mmio, exit, _) = setup();
        let ctx = ExitContext {
            vcpu: 1,
            pio: &pio,
            mmio: &mmio,
            exit: &exit,
        };
        assert_eq!(
            dispatch_exit(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, &[]), &ctx),
            ExitAction::Stop
        );
        assert_eq!(exit.reason(), Some(VmExit::Reset));
        assert_eq!(
            dispatch_exit(VcpuExit::IoOut(0x3f8, &[1]), &ctx),
            ExitAction::Stop
        );
    }

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

    #[test]
    fn crash_messages_name_exit_rip_and_bytes() {
        let st = CrashState {
            rip: 0x20_1000,
            suberror: Some(1),
            data: vec![0x1],
            insn: vec![0xcc],
        };
        let m = format_crash(&CrashKind::InternalError, &st);
        assert!(
            m.contains("KVM_EXIT_INTERNAL_ERROR suberror 1 (emulation failure)"),
            "{m}"
        );
        assert!(m.contains("RIP 0x201000") && m.contains("[cc]"), "{m}");
        let m = format_crash(&CrashKind::Shutdown, &st);
        assert!(m.contains("triple fault"), "{m}");
        let m = format_crash(
            &CrashKind::FailEntry {
                reason: 0x21,
                cpu: 3,
            },
            &st,
        );
        assert!(m.contains("0x21") && m.contains("CPU 3"), "{m}");
    }

    #[test]
    fn gdt_entries_decode_to_the_segments_kvm_expects() {
        let cs = segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), 0x10);
        assert_eq!(
            (cs.l, cs.db, cs.present, cs.type_, cs.g, cs.limit),
            (1, 0, 1, 0xb, 1, 0xffff_ffff)
        );
        let ds = segment_from_gdt(gdt_entry(0xc093, 0, 0xfffff), 0x18);
        assert_eq!((ds.l, ds.db, ds.type_, ds.s), (0, 1, 3, 1));
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
    }

    #[test]
    fn cpuid_carries_each_vcpus_apic_id() {
        let mut supported = CpuId::new(2).unwrap();
        supported.as_mut_slice()[0].function = 1;
        supported.as_mut_slice()[0].ebx = 0xff00_0800;
        supported.as_mut_slice()[1].function = 0xb;
        let c = vcpu_cpuid(&supported, 3, 4);
        assert_eq!(c.as_slice()[0].ebx >> 24, 3);
        assert_eq!((c.as_slice()[0].ebx >> 16) & 0xff, 4);
        assert_eq!(c.as_slice()[0].ebx & 0xffff, 0x0800);
        assert_eq!(c.as_slice()[1].edx, 3);
    }

    #[test]
    fn page_tables_identity_map_4g_with_2m_pages() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_entry_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4 & !0xfff, PML4_START + 0x1000);
        let pd3: u64 = mem
            .read_obj(GuestAddress(PML4_START + 0x1000 + 3 * 8))
            .unwrap();
        let last: u64 = mem
            .read_obj(GuestAddress((pd3 & !0xfff) + 511 * 8))
            .unwrap();
        assert_eq!(last, (3 << 30) | (511 << 21) | 0x83);
    }

    /// Fuzz target for [`dispatch_exit`], run as a property test: sequences of made-up
    /// exits (port and MMIO accesses of any address and size, including the real devices'
    /// ports, system events of any type, crash exits, exits faultline does not handle) on
    /// the machine's real port devices. Run many with
    /// `PROPTEST_CASES=100000 cargo test --profile fuzz -p vmm --lib fuzz_`.
    mod fuzz {
        use super::*;
        use devices::console::Console;
        use devices::debug_exit::{DebugExit, DEBUG_EXIT_PORT};
        use devices::i8042::{I8042, I8042_BASE, I8042_LEN};
        use devices::serial::{SerialPort, COM1_BASE, COM1_LEN};
        use devices::ucall::{UcallPort, UCALL_LEN, UCALL_PORT};
        use proptest::prelude::*;
        use vm_memory::GuestAddress;
        use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

        #[derive(Debug, Clone)]
        enum Exit {
            Out(u16, Vec<u8>),
            In(u16, usize),
            MmioW(u64, Vec<u8>),
            MmioR(u64, usize),
            Event(u32, Vec<u64>),
            Simple(u8),
            FailEntry(u64, u32),
        }

        fn port() -> impl Strategy<Value = u16> {
            prop_oneof![
                Just(COM1_BASE),
                COM1_BASE..COM1_BASE + COM1_LEN,
                I8042_BASE..I8042_BASE + I8042_LEN,
                DEBUG_EXIT_PORT..DEBUG_EXIT_PORT + 4,
                UCALL_PORT..UCALL_PORT + UCALL_LEN,
                any::<u16>(),
            ]
        }

        fn exit() -> impl Strategy<Value = Exit> {
            let data = prop::collection::vec(any::<u8>(), 0..=8);
            prop_oneof![
                8 => (port(), data.clone()).prop_map(|(p, d)| Exit::Out(p, d)),
                4 => (port(), 0..=8usize).prop_map(|(p, n)| Exit::In(p, n)),
                2 => (any::<u64>(), data).prop_map(|(a, d)| Exit::MmioW(a, d)),
                2 => (any::<u64>(), 0..=8usize).prop_map(|(a, n)| Exit::MmioR(a, n)),
                1 => (prop_oneof![1..=10u32, any::<u32>()], prop::collection::vec(any::<u64>(), 0..4))
                    .prop_map(|(k, d)| Exit::Event(k, d)),
                2 => (0..10u8).prop_map(Exit::Simple),
                1 => (any::<u64>(), any::<u32>()).prop_map(|(r, c)| Exit::FailEntry(r, c)),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            /// No panic; crashes only for crash exits; once the VM has ended every exit
            /// stops the vCPU; unclaimed reads return all ones.
            #[test]
            fn fuzz_dispatch_exit(seq in prop::collection::vec(exit(), 1..48), vcpu in 0..4usize) {
                let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
                let end = Arc::new(ExitSignal::new().unwrap());
                let console = Console::new(Box::new(std::io::sink()));
                let irq = EventFd::new(EFD_NONBLOCK).unwrap();
                let mut pio = Bus::new("port");
                pio.insert(COM1_BASE.into(), COM1_LEN.into(), Arc::new(Mutex::new(SerialPort::new(irq, console.clone())))).unwrap();
                pio.insert(I8042_BASE.into(), I8042_LEN.into(), Arc::new(Mutex::new(I8042::new(end.clone())))).unwrap();
                pio.insert(DEBUG_EXIT_PORT.into(), 4, Arc::new(Mutex::new(DebugExit::new(end.clone())))).unwrap();
                pio.insert(UCALL_PORT.into(), UCALL_LEN.into(), Arc::new(Mutex::new(UcallPort::new(mem, console, end.clone())))).unwrap();
                let mmio = Bus::new("MMIO");
                let ctx = ExitContext { vcpu, pio: &pio, mmio: &mmio, exit: &end };
                for e in &seq {
                    let was_fired = end.fired();
                    let mut buf = [0u8; 8];
                    let (action, crash_exit) = match e {
                        Exit::Out(p, d) => (dispatch_exit(VcpuExit::IoOut(*p, d), &ctx), false),
                        Exit::In(p, n) => (dispatch_exit(VcpuExit::IoIn(*p, &mut buf[..*n]), &ctx), false),
                        Exit::MmioW(a, d) => (dispatch_exit(VcpuExit::MmioWrite(*a, d), &ctx), false),
                        Exit::MmioR(a, n) => {
                            let a = dispatch_exit(VcpuExit::MmioRead(*a, &mut buf[..*n]), &ctx);
                            prop_assert!(buf[..*n].iter().all(|&b| b == 0xff));
                            (a, false)
                        }
                        Exit::Event(k, d) => (dispatch_exit(VcpuExit::SystemEvent(*k, d), &ctx), *k != KVM_SYSTEM_EVENT_RESET && *k != KVM_SYSTEM_EVENT_SHUTDOWN),
                        Exit::Simple(i) => {
                            let x = match i {
                                0 => VcpuExit::Hlt,
                                1 => VcpuExit::IrqWindowOpen,
                                2 => VcpuExit::Intr,
                                3 => VcpuExit::Shutdown,
                                4 => VcpuExit::InternalError,
                                5 => VcpuExit::Unknown,
                                6 => VcpuExit::Exception,
                                7 => VcpuExit::Nmi,
                                8 => VcpuExit::Watchdog,
                                _ => VcpuExit::IoapicEoi(*i),
                            };
                            (dispatch_exit(x, &ctx), *i >= 3)
                        }
                        Exit::FailEntry(r, c) => (dispatch_exit(VcpuExit::FailEntry(*r, *c), &ctx), true),
                    };
                    match action {
                        ExitAction::Crash(_) => prop_assert!(crash_exit, "{e:?} crashed"),
                        ExitAction::Continue => prop_assert!(!was_fired && !end.fired(), "{e:?} continued after the end"),
                        ExitAction::Stop => prop_assert!(end.fired()),
                    }
                }
            }
        }
    }
}
