//! The host settings that change fault-latency results, captured with every report.
//!
//! The sysfs/procfs readers are [`crate::host::sysfs`]'s, which
//! [`crate::check::observe::host`] also uses for the full
//! [`HostConditions`](crate::check::observe::host::HostConditions) the checker needs.

use serde::{Deserialize, Serialize};

/// Host facts recorded next to every measurement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSettings {
    /// `uname -r`.
    pub kernel: String,
    /// The bracketed choice of /sys/kernel/mm/transparent_hugepage/enabled.
    pub thp_enabled: String,
    /// The bracketed choice of /sys/kernel/mm/transparent_hugepage/shmem_enabled.
    pub thp_shmem_enabled: String,
    /// /proc/sys/vm/nr_hugepages (2M pages reserved).
    pub nr_hugepages_2m: u64,
    /// Free 2M huge pages (/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages).
    pub free_hugepages_2m: u64,
    /// Reserved 1G huge pages, if the host has the pool.
    pub nr_hugepages_1g: Option<u64>,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// Online CPUs.
    pub cpus: usize,
    /// KVM module parameter tdp_mmu (Y/N), when present.
    pub kvm_tdp_mmu: Option<String>,
    /// Whether /proc/cpuinfo shows vmx or svm (hardware virtualisation visible to this host).
    pub hw_virt_flag: bool,
    /// How vCPU threads are placed (faultline does not pin them: the scheduler decides).
    pub vcpu_pinning: String,
}

use crate::host::sysfs::{huge_pool, read_trim, read_u64, thp_setting};

impl HostSettings {
    /// Reads the settings from /proc and /sys; missing files read as "unknown" or 0.
    #[must_use]
    pub fn capture() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let hw_virt_flag = cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
        Self {
            kernel: read_trim("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into()),
            thp_enabled: thp_setting("enabled").unwrap_or_else(|| "unavailable".into()),
            thp_shmem_enabled: thp_setting("shmem_enabled").unwrap_or_else(|| "unavailable".into()),
            nr_hugepages_2m: read_u64("/proc/sys/vm/nr_hugepages").unwrap_or(0),
            free_hugepages_2m: huge_pool(2048).map_or(0, |p| p.free),
            nr_hugepages_1g: huge_pool(1 << 20).map(|p| p.nr),
            cpu_model,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kvm_tdp_mmu: read_trim("/sys/module/kvm/parameters/tdp_mmu"),
            hw_virt_flag,
            vcpu_pinning: "none (scheduler-placed)".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_reads_this_host() {
        let h = HostSettings::capture();
        assert_eq!(h.kernel, read_trim("/proc/sys/kernel/osrelease").unwrap());
        assert!(h.cpus >= 1);
        assert_ne!(h.cpu_model, "");
        assert!(["always", "madvise", "never", "unavailable"].contains(&h.thp_enabled.as_str()));
    }
}
