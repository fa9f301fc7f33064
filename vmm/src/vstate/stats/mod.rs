//! KVM binary statistics: `KVM_GET_STATS_FD` on a VM or vCPU fd.
//!
//! This module does the ioctl; [`reader`] parses the stats file (header, descriptors, values
//! by name).

pub mod reader;
pub use reader::*;

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

/// `KVM_GET_STATS_FD`, `_IO(KVMIO, 0xce)` (include/uapi/linux/kvm.h, Linux 5.14+).
const KVM_GET_STATS_FD: libc::c_ulong = 0xae_ce;

/// Errors of [`stats_fd`].
#[derive(Debug, thiserror::Error)]
pub enum StatsFdError {
    /// KVM_GET_STATS_FD failed ({0}); the host kernel needs binary stats (Linux 5.14+)
    #[error("KVM_GET_STATS_FD failed ({0}); the host kernel needs binary stats (Linux 5.14+)")]
    Ioctl(#[source] std::io::Error),
}

/// Opens the binary stats file of a VM or vCPU (`kvm_vm_ioctl_get_stats_fd()` /
/// `kvm_vcpu_ioctl_get_stats_fd()`, virt/kvm/kvm_main.c).
pub fn stats_fd(fd: &impl AsRawFd) -> Result<File, StatsFdError> {
    // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd or -1; `fd` is a live
    // fd owned by the caller. A non-KVM fd just fails with ENOTTY.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), KVM_GET_STATS_FD as _, 0) };
    if ret < 0 {
        return Err(StatsFdError::Ioctl(std::io::Error::last_os_error()));
    }
    // SAFETY: `ret` is a fresh fd the kernel just handed us; nothing else owns it.
    Ok(unsafe { File::from_raw_fd(ret) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_fd_of_a_real_vm_and_vcpu_opens() {
        crate::require_kvm!();
        let kvm = kvm_ioctls::Kvm::new().expect("open /dev/kvm");
        let vm = kvm.create_vm().expect("create VM");
        let vcpu = vm.create_vcpu(0).expect("create vCPU");
        let vm_stats = crate::vstate::stats::StatsReader::new(stats_fd(&vm).unwrap())
            .expect("parse VM stats header");
        let vcpu_stats = crate::vstate::stats::StatsReader::new(stats_fd(&vcpu).unwrap())
            .expect("parse vCPU stats header");
        // Generic stats every KVM since 5.14 exposes (include/linux/kvm_host.h).
        assert!(vm_stats.id().starts_with("kvm-"), "{}", vm_stats.id());
        assert!(vm_stats.names().any(|n| n == "remote_tlb_flush"));
        assert!(vcpu_stats
            .names()
            .any(|n| n == "halt_exits" || n == "exits"));
        let snap = vcpu_stats.read().expect("read vCPU stats");
        assert_eq!(snap.values.len(), vcpu_stats.names().count());
    }

    #[test]
    fn stats_fd_on_a_non_kvm_fd_fails_cleanly() {
        let f = File::open("/dev/null").unwrap();
        let e = stats_fd(&f).unwrap_err();
        assert!(e.to_string().contains("KVM_GET_STATS_FD failed"), "{e}");
    }
}
