//! The host's sysfs and procfs, read one way for everyone.
//!
//! Every reader returns `None` for a file that is missing or does not hold what it should
//! (a kernel without the feature, a container without /sys): callers decide what that means.
//!
//! | reader | file |
//! |---|---|
//! | [`thp_setting`] | `/sys/kernel/mm/transparent_hugepage/FILE` (the bracketed choice) |
//! | [`huge_pool`], [`pool_file`] | `/sys/kernel/mm/hugepages/hugepages-SIZEkB/{nr,free,resv,surplus}_hugepages` |
//! | [`ksm`] | `/sys/kernel/mm/ksm/FILE` |
//! | [`numa_online`] | `/sys/devices/system/node/online` |
//! | [`kvm_param`] | `/sys/module/MODULE/parameters/NAME` (`Y`/`N`/`1`/`0`) |
//! | [`meminfo_kb`] | a `/proc/meminfo` line |

/// Where the THP settings live.
pub const THP_DIR: &str = "/sys/kernel/mm/transparent_hugepage";
/// Where the KSM settings and counters live.
pub const KSM_DIR: &str = "/sys/kernel/mm/ksm";
/// The online NUMA nodes.
pub const NODE_ONLINE: &str = "/sys/devices/system/node/online";

/// Reads a file, trimmed.
pub fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Reads a file holding one unsigned number.
pub fn read_u64(path: &str) -> Option<u64> {
    read_trim(path).and_then(|s| s.parse().ok())
}

/// The active choice of a sysfs multiple-choice file: `always [madvise] never` -> `madvise`
/// (the whole text when nothing is bracketed).
pub fn bracketed(s: &str) -> String {
    s.split_whitespace()
        .find(|w| w.starts_with('['))
        .map(|w| w.trim_matches(['[', ']']).to_string())
        .unwrap_or_else(|| s.trim().to_string())
}

/// `Y`/`N`/`1`/`0` (module parameters, sysfs booleans).
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim() {
        "Y" | "y" | "1" => Some(true),
        "N" | "n" | "0" => Some(false),
        _ => None,
    }
}

/// `0-1,3` -> [0, 1, 3] (a sysfs cpulist/nodelist); `None` for a malformed or absurd list.
pub fn parse_list(s: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                if b < a || b - a > 65_536 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

/// The value in kB of `key` in /proc/meminfo's text (`MemTotal`, `SwapFree` ...).
pub fn meminfo_kb(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `key` of this host's /proc/meminfo, in kB.
pub fn meminfo(key: &str) -> Option<u64> {
    meminfo_kb(&std::fs::read_to_string("/proc/meminfo").ok()?, key)
}

/// The active choice of a THP setting (`enabled`, `defrag`, `shmem_enabled`,
/// `hugepages-64kB/enabled` ...).
pub fn thp_setting(file: &str) -> Option<String> {
    read_trim(&format!("{THP_DIR}/{file}")).map(|s| bracketed(&s))
}

/// A KSM file (`run`, `pages_shared` ...) as a number.
pub fn ksm(file: &str) -> Option<u64> {
    read_u64(&format!("{KSM_DIR}/{file}"))
}

/// The online NUMA nodes.
pub fn numa_online() -> Option<Vec<u32>> {
    read_trim(NODE_ONLINE).and_then(|s| parse_list(&s))
}

/// A KVM module parameter as a boolean (`kvm`, `tdp_mmu`; `kvm_intel`, `ept`).
pub fn kvm_param(module: &str, name: &str) -> Option<bool> {
    read_trim(&format!("/sys/module/{module}/parameters/{name}")).and_then(|s| parse_bool(&s))
}

/// The sysfs file `leaf` (`nr_hugepages`, `free_hugepages` ...) of the `size_kib` hugetlb pool.
pub fn pool_file(size_kib: u64, leaf: &str) -> String {
    format!("/sys/kernel/mm/hugepages/hugepages-{size_kib}kB/{leaf}")
}

/// One hugetlb pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HugePool {
    /// `nr_hugepages`: pages in the pool.
    pub nr: u64,
    /// `free_hugepages`: pages not faulted in.
    pub free: u64,
    /// `resv_hugepages`: free pages promised to mappings (0 when unreadable).
    pub resv: u64,
}

impl HugePool {
    /// Pages a new mapping can still get: free minus reserved.
    pub fn available(&self) -> u64 {
        self.free.saturating_sub(self.resv)
    }
}

/// The pool of `size_kib` huge pages (2048, 1048576); `None` when the kernel has no such
/// pool.
pub fn huge_pool(size_kib: u64) -> Option<HugePool> {
    Some(HugePool {
        nr: read_u64(&pool_file(size_kib, "nr_hugepages"))?,
        free: read_u64(&pool_file(size_kib, "free_hugepages"))?,
        resv: read_u64(&pool_file(size_kib, "resv_hugepages")).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers_read_what_sysfs_and_procfs_write() {
        assert_eq!(bracketed("always [madvise] never"), "madvise");
        assert_eq!(bracketed("[never]"), "never");
        assert_eq!(bracketed("4096\n"), "4096");
        assert_eq!(parse_bool("Y\n"), Some(true));
        assert_eq!(parse_bool("0"), Some(false));
        assert_eq!(parse_bool("maybe"), None);
        assert_eq!(parse_list("0-1,3\n"), Some(vec![0, 1, 3]));
        assert_eq!(parse_list("3-1"), None);
        assert_eq!(parse_list("0-4294967295"), None);
        let mi = "MemTotal:       16384 kB\nSwapFree:   0 kB\n";
        assert_eq!(meminfo_kb(mi, "MemTotal"), Some(16384));
        assert_eq!(meminfo_kb(mi, "SwapFree"), Some(0));
        assert_eq!(meminfo_kb(mi, "Mem"), None);
        assert_eq!(
            HugePool {
                nr: 4,
                free: 3,
                resv: 5
            }
            .available(),
            0
        );
    }

    #[test]
    fn this_hosts_files_read_consistently() {
        // Whatever this host has, the readers agree with each other.
        if let Some(p) = huge_pool(2048) {
            assert!(p.free <= p.nr, "{p:?}");
            assert_eq!(read_u64(&pool_file(2048, "nr_hugepages")), Some(p.nr));
        }
        if let Some(t) = thp_setting("enabled") {
            assert!(["always", "madvise", "never"].contains(&t.as_str()), "{t}");
        }
        if let Some(n) = numa_online() {
            assert!(n.contains(&0), "{n:?}");
        }
        assert!(meminfo("MemTotal").is_some_and(|kb| kb > 0));
    }
}
