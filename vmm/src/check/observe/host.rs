//! The host's real conditions, which the model must be run with instead of its defaults.
//!
//! What it observes: THP mode and defrag, huge-zero-page use, shmem THP, NUMA nodes and
//! balancing, the kernel version, KVM's paging mode (TDP with EPT/NPT, TDP MMU or not, or
//! shadow paging), the hugetlb pools, KSM and swap.
//!
//! Where it comes from: sysfs and procfs files, each named in [`Observed::source`] next to
//! its value. A file that is missing or unreadable gives `value: None`, never an error: the
//! checker then says the condition is unknown.
//!
//! Limits: a snapshot at [`HostConditions::read`] time; a condition that changes mid-run (an
//! admin toggling THP) is not seen. The paging mode is inferred from module parameters: a
//! `kvm_pvm` module (paravirtualised KVM) always means shadow paging.

/// The shared readers (`crate::host::sysfs`), re-exported for the checker's modules.
pub use crate::host::sysfs::{
    self, bracketed, meminfo_kb, parse_bool, parse_list, read_trim, read_u64,
};
use serde::{Deserialize, Serialize};

/// A value read from a file, with the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed<T> {
    /// The value; `None` when the file is absent or did not parse.
    pub value: Option<T>,
    /// Where it came from (a path, or paths joined by `+`).
    pub source: String,
}

impl<T> Observed<T> {
    fn new(value: Option<T>, source: impl Into<String>) -> Self {
        Self {
            value,
            source: source.into(),
        }
    }
}

/// The kernel's major.minor, from the uname release (`6.18.44-fc-v857`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KernelVersion {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
}

impl KernelVersion {
    /// Parses the leading `major.minor` of a release string.
    pub fn parse(release: &str) -> Option<Self> {
        let mut it = release.trim().split(['.', '-', '+']);
        let major = it.next()?.parse().ok()?;
        let minor_s: String = it
            .next()?
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        Some(Self {
            major,
            minor: minor_s.parse().ok()?,
        })
    }
}

/// How KVM maps guest memory on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PagingMode {
    /// Two-dimensional paging (EPT/NPT); `tdp_mmu` says which MMU code runs it.
    Tdp {
        /// kvm.tdp_mmu.
        tdp_mmu: bool,
    },
    /// Shadow paging (no EPT/NPT, ept=N/npt=N, or PVM).
    Shadow,
}

/// A hugetlb pool of one page size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HugetlbPool {
    /// nr_hugepages.
    pub nr: u64,
    /// free_hugepages.
    pub free: u64,
}

/// Swap space (/proc/meminfo).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Swap {
    /// SwapTotal in KiB.
    pub total_kb: u64,
    /// SwapFree in KiB.
    pub free_kb: u64,
}

/// The host conditions the model needs, each with its source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostConditions {
    /// The uname release (`6.18.44-fc-v857`).
    pub kernel_release: Observed<String>,
    /// Its major.minor.
    pub kernel_version: Observed<KernelVersion>,
    /// THP mode: `always`, `madvise` or `never`.
    pub thp_enabled: Observed<String>,
    /// THP defrag: `always`, `defer`, `defer+madvise`, `madvise`, `never`.
    pub thp_defrag: Observed<String>,
    /// Whether a read fault of a THP-eligible range maps the huge zero page.
    pub use_zero_page: Observed<bool>,
    /// shmem THP: `always`, `within_size`, `advise`, `never`, `deny`, `force`.
    pub shmem_enabled: Observed<String>,
    /// Online NUMA nodes.
    pub numa_nodes: Observed<Vec<u32>>,
    /// kernel.numa_balancing (0 off, 1 normal, 2 memory tiering, 3 both).
    pub numa_balancing: Observed<u32>,
    /// kvm.tdp_mmu.
    pub kvm_tdp_mmu: Observed<bool>,
    /// kvm_intel.ept, when kvm_intel is loaded.
    pub kvm_intel_ept: Observed<bool>,
    /// kvm_amd.npt, when kvm_amd is loaded.
    pub kvm_amd_npt: Observed<bool>,
    /// Whether the paravirtualised kvm_pvm module is loaded.
    pub kvm_pvm: Observed<bool>,
    /// TDP or shadow paging, inferred from the four above.
    pub paging: Observed<PagingMode>,
    /// The 2M hugetlb pool.
    pub hugetlb_2m: Observed<HugetlbPool>,
    /// The 1G hugetlb pool.
    pub hugetlb_1g: Observed<HugetlbPool>,
    /// /sys/kernel/mm/ksm/run (0 stopped, 1 running, 2 unmerge).
    pub ksm_run: Observed<u32>,
    /// Swap.
    pub swap: Observed<Swap>,
    /// PMD THP size in bytes (hpage_pmd_size).
    pub hpage_pmd_size: Observed<u64>,
    /// Per-size anon THP (mTHP) modes, `hugepages-<size>kB/enabled`: `always`, `inherit`,
    /// `madvise` or `never` (6.8+; empty before).
    pub mthp: Observed<Vec<MthpSize>>,
    /// khugepaged/max_ptes_none: how many empty PTEs a collapse may fill.
    pub khugepaged_max_ptes_none: Observed<u64>,
    /// Other files of /sys/kernel/mm/transparent_hugepage this reader does not interpret
    /// (e.g. a vendor kernel's `anon_beside_full`), raw, so a report can show them.
    pub thp_other: Observed<Vec<(String, String)>>,
}

/// One mTHP size's mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MthpSize {
    /// Folio size in KiB.
    pub size_kb: u64,
    /// Its mode.
    pub enabled: String,
}

/// Reads the per-size mTHP modes and the uninterpreted files under `dir`.
fn read_thp_dir(dir: &str) -> (Option<Vec<MthpSize>>, Option<Vec<(String, String)>>) {
    const KNOWN: [&str; 6] = [
        "enabled",
        "defrag",
        "use_zero_page",
        "shmem_enabled",
        "hpage_pmd_size",
        "khugepaged",
    ];
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (None, None);
    };
    let (mut mthp, mut other) = (Vec::new(), Vec::new());
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(kb) = name
            .strip_prefix("hugepages-")
            .and_then(|n| n.strip_suffix("kB"))
            .and_then(|n| n.parse().ok())
        {
            if let Some(v) = read_trim(&format!("{dir}/{name}/enabled")) {
                mthp.push(MthpSize {
                    size_kb: kb,
                    enabled: bracketed(&v),
                });
            }
        } else if !KNOWN.contains(&name.as_str()) && e.path().is_file() {
            if let Some(v) = read_trim(&format!("{dir}/{name}")) {
                other.push((name, v));
            }
        }
    }
    mthp.sort_by_key(|m| m.size_kb);
    other.sort();
    (Some(mthp), Some(other))
}

/// Infers KVM's paging mode from module parameters (`tdp_enabled`, arch/x86/kvm/mmu/mmu.c).
pub fn paging_mode(
    pvm: Option<bool>,
    ept: Option<bool>,
    npt: Option<bool>,
    tdp_mmu: Option<bool>,
) -> Option<PagingMode> {
    if pvm == Some(true) {
        return Some(PagingMode::Shadow);
    }
    match ept.or(npt)? {
        true => Some(PagingMode::Tdp {
            tdp_mmu: tdp_mmu.unwrap_or(false),
        }),
        false => Some(PagingMode::Shadow),
    }
}

/// The hugetlb pool of page size `size` (`"2048kB"`, `"1048576kB"`).
pub(crate) fn pool(size: &str) -> Observed<HugetlbPool> {
    let dir = format!("/sys/kernel/mm/hugepages/hugepages-{size}");
    let kib = size.trim_end_matches("kB").parse().unwrap_or(0);
    Observed::new(
        sysfs::huge_pool(kib).map(|p| HugetlbPool {
            nr: p.nr,
            free: p.free,
        }),
        format!("{dir}/{{nr,free}}_hugepages"),
    )
}

impl HostConditions {
    /// Reads every condition from this host.
    #[must_use]
    pub fn read() -> Self {
        const THP: &str = "/sys/kernel/mm/transparent_hugepage";
        let choice = |file: &str| {
            let path = format!("{THP}/{file}");
            Observed::new(read_trim(&path).map(|s| bracketed(&s)), path)
        };
        let boolean =
            |path: &str| Observed::new(read_trim(path).and_then(|s| parse_bool(&s)), path);
        let release = read_trim("/proc/sys/kernel/osrelease");
        let kvm_tdp_mmu = boolean("/sys/module/kvm/parameters/tdp_mmu");
        let kvm_intel_ept = boolean("/sys/module/kvm_intel/parameters/ept");
        let kvm_amd_npt = boolean("/sys/module/kvm_amd/parameters/npt");
        let kvm_pvm = Observed::new(
            Some(std::path::Path::new("/sys/module/kvm_pvm").exists()),
            "/sys/module/kvm_pvm",
        );
        let paging = Observed::new(
            paging_mode(
                kvm_pvm.value,
                kvm_intel_ept.value,
                kvm_amd_npt.value,
                kvm_tdp_mmu.value,
            ),
            "/sys/module/{kvm_pvm,kvm_intel/parameters/ept,kvm_amd/parameters/npt,kvm/parameters/tdp_mmu}",
        );
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
        let (mthp, thp_other) = read_thp_dir(THP);
        let swap = meminfo.as_deref().and_then(|m| {
            Some(Swap {
                total_kb: meminfo_kb(m, "SwapTotal")?,
                free_kb: meminfo_kb(m, "SwapFree")?,
            })
        });
        Self {
            kernel_version: Observed::new(
                release.as_deref().and_then(KernelVersion::parse),
                "/proc/sys/kernel/osrelease",
            ),
            kernel_release: Observed::new(release, "/proc/sys/kernel/osrelease"),
            thp_enabled: choice("enabled"),
            thp_defrag: choice("defrag"),
            use_zero_page: boolean("/sys/kernel/mm/transparent_hugepage/use_zero_page"),
            shmem_enabled: choice("shmem_enabled"),
            numa_nodes: Observed::new(sysfs::numa_online(), "/sys/devices/system/node/online"),
            numa_balancing: Observed::new(
                read_u64("/proc/sys/kernel/numa_balancing").and_then(|v| u32::try_from(v).ok()),
                "/proc/sys/kernel/numa_balancing",
            ),
            kvm_tdp_mmu,
            kvm_intel_ept,
            kvm_amd_npt,
            kvm_pvm,
            paging,
            hugetlb_2m: pool("2048kB"),
            hugetlb_1g: pool("1048576kB"),
            ksm_run: Observed::new(
                sysfs::ksm("run").and_then(|v| u32::try_from(v).ok()),
                "/sys/kernel/mm/ksm/run",
            ),
            swap: Observed::new(swap, "/proc/meminfo SwapTotal+SwapFree"),
            hpage_pmd_size: Observed::new(
                read_u64(&format!("{THP}/hpage_pmd_size")),
                format!("{THP}/hpage_pmd_size"),
            ),
            mthp: Observed::new(mthp, format!("{THP}/hugepages-*kB/enabled")),
            khugepaged_max_ptes_none: Observed::new(
                read_u64(&format!("{THP}/khugepaged/max_ptes_none")),
                format!("{THP}/khugepaged/max_ptes_none"),
            ),
            thp_other: Observed::new(thp_other, format!("{THP}/*")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers() {
        assert_eq!(bracketed("always [madvise] never"), "madvise");
        assert_eq!(
            bracketed("always defer defer+madvise [madvise] never"),
            "madvise"
        );
        assert_eq!(
            KernelVersion::parse("6.18.44-fc-v857"),
            Some(KernelVersion {
                major: 6,
                minor: 18
            })
        );
        assert_eq!(
            KernelVersion::parse("6.12.0+"),
            Some(KernelVersion {
                major: 6,
                minor: 12
            })
        );
        assert_eq!(KernelVersion::parse("6"), None);
        assert_eq!(parse_list("0"), Some(vec![0]));
        assert_eq!(parse_list("0-2,5"), Some(vec![0, 1, 2, 5]));
        assert_eq!(parse_list("3-1"), None);
        assert_eq!(parse_list("x"), None);
        assert_eq!(
            meminfo_kb("SwapTotal:      1024 kB\n", "SwapTotal"),
            Some(1024)
        );
    }

    #[test]
    fn paging_mode_from_parameters() {
        assert_eq!(
            paging_mode(Some(true), None, None, Some(false)),
            Some(PagingMode::Shadow)
        );
        assert_eq!(
            paging_mode(Some(false), Some(true), None, Some(true)),
            Some(PagingMode::Tdp { tdp_mmu: true })
        );
        assert_eq!(
            paging_mode(Some(false), None, Some(false), Some(true)),
            Some(PagingMode::Shadow)
        );
        assert_eq!(paging_mode(Some(false), None, None, Some(true)), None);
    }

    #[test]
    fn reads_this_host() {
        let h = HostConditions::read();
        let rel = read_trim("/proc/sys/kernel/osrelease").unwrap();
        assert_eq!(h.kernel_release.value.as_deref(), Some(rel.as_str()));
        assert!(h.kernel_version.value.unwrap().major >= 5);
        let thp = h.thp_enabled.value.clone().expect("THP sysfs");
        assert!(
            ["always", "madvise", "never"].contains(&thp.as_str()),
            "{thp}"
        );
        assert_eq!(
            h.thp_enabled.source,
            "/sys/kernel/mm/transparent_hugepage/enabled"
        );
        assert!(!h.numa_nodes.value.clone().unwrap().is_empty());
        if std::path::Path::new("/sys/module/kvm_pvm").exists() {
            // This development host: paravirtualised KVM, shadow MMU.
            assert_eq!(h.paging.value, Some(PagingMode::Shadow));
        }
        assert!(h.hugetlb_2m.value.is_some());
        assert!(h.swap.value.is_some());
        if let Some(m) = &h.mthp.value {
            let pmd = m.iter().find(|m| m.size_kb == 2048);
            assert!(m.is_empty() || pmd.is_some(), "{m:?}");
            assert!(!h
                .thp_other
                .value
                .clone()
                .unwrap()
                .iter()
                .any(|(n, _)| n == "enabled"));
        }
        assert_eq!(h.hpage_pmd_size.value, Some(2 << 20));
        eprintln!("{}", serde_json::to_string_pretty(&h).unwrap());
    }
}
