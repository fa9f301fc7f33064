//! Crash decoding: what KVM said when a guest crashed, the state gathered from the vCPU,
//! and the user-facing message.

use crate::vstate::hook::DebugExit;
#[cfg(doc)]
use crate::vstate::hook::ExitHook;
use kvm_bindings::KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES;
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

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
    /// KVM_EXIT_DEBUG with no debugger to take it.
    Debug(DebugExit),
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
            CrashKind::Debug(_) => "KVM_EXIT_DEBUG".into(),
            CrashKind::Unexpected(what) => what.clone(),
        }
    }
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
        CrashKind::Debug(d) => format!(
            "unhandled exit KVM_EXIT_DEBUG (exception {}, DR6 {:#x}) at RIP {:#x}",
            d.exception, d.dr6, st.rip
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
