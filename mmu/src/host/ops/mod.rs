//! Operations users script, one module per Linux source file: mmap/munmap/exit
//! ([`mmap`], mm/mmap.c + mm/vma.c), remap_pfn_range/zap/unmap_mapping_range/user access
//! ([`memory`], mm/memory.c), [`mprotect`], [`madvise`], MADV_COLLAPSE ([`khugepaged`]),
//! [`mremap`], [`fork`] (kernel/fork.c), NUMA scan and migration ([`migrate`]), THP splits
//! ([`huge_memory`]), aging ([`rmap`]), reclaim ([`vmscan`]) and soft-dirty clearing
//! ([`task_mmu`]). Each emits the notifier events and ranges of spec table 2.6. This module
//! holds what they share: [`OpReport`], [`RangeError`] and the range and VMA helpers.

pub mod fork;
pub mod huge_memory;
pub mod khugepaged;
pub mod madvise;
pub mod memory;
pub mod migrate;
pub mod mmap;
pub mod mprotect;
pub mod mremap;
pub mod rmap;
pub mod task_mmu;
pub mod vmscan;

pub use fork::ForkError;
pub use madvise::{Advice, MadviseError};
pub use memory::{AccessError, RemapPfnError};
pub use migrate::MigrateError;
pub use mmap::{MmapError, MmapRequest, MunmapError};
pub use mprotect::MprotectError;
pub use mremap::MremapError;

use crate::host::fault::HostFault;
use crate::host::vma::Vma;
use crate::host::Mm;
use crate::notifier::NotifierRange;
use crate::types::{Hva, Level, PAGE_SIZE, TASK_SIZE};
use serde::{Deserialize, Serialize};

/// What an operation did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpReport {
    /// Operation name ("munmap", "numa-scan", ...).
    pub op: String,
    /// Range operated on.
    pub start: Hva,
    /// End of the range.
    pub end: Hva,
    /// Notifier ranges sent, in order.
    pub notifiers: Vec<NotifierRange>,
    /// Host fault handlers that ran (user_access only).
    pub host_faults: Vec<HostFault>,
    /// Leaves changed.
    pub changed: u64,
    /// Leaves skipped (NUMA scan skip rules, migration failures).
    pub skipped: u64,
    /// Young answer (aging operations).
    pub young: Option<bool>,
}

/// Bad range: [{start}, +{len:#x}) {problem}
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Bad range [{start}, +{len:#x}): {problem}")]
pub struct RangeError {
    /// Start.
    pub start: Hva,
    /// Length.
    pub len: u64,
    /// What is wrong and how to fix it.
    pub problem: &'static str,
}

/// Where the model places mappings when no address is given.
pub(super) const MMAP_BASE: u64 = 0x7f00_0000_0000;

#[allow(clippy::manual_is_multiple_of)] // u64::is_multiple_of needs Rust 1.87; rust-version is 1.80.
pub(crate) fn check_range(start: Hva, len: u64) -> Result<Hva, RangeError> {
    let err = |problem| RangeError {
        start,
        len,
        problem,
    };
    if len == 0 {
        return Err(err("length is 0: give a positive multiple of 4K"));
    }
    if !start.is_aligned(Level::Pte4K) {
        return Err(err("start is not 4K-aligned"));
    }
    if len % PAGE_SIZE != 0 {
        return Err(err("length is not a multiple of 4K"));
    }
    match start.0.checked_add(len) {
        Some(end) if end <= TASK_SIZE => Ok(Hva(end)),
        _ => Err(err("range ends beyond the 47-bit user address space")),
    }
}

impl OpReport {
    /// An empty report for `op` over `[start, end)`.
    pub(crate) fn new(op: &str, start: Hva, end: Hva) -> Self {
        OpReport {
            op: op.to_string(),
            start,
            end,
            ..Default::default()
        }
    }
}

impl Mm {
    /// The VMAs intersecting `[start, end)`, cloned, in address order.
    pub(crate) fn vmas_in(&self, start: Hva, end: Hva) -> Vec<Vma> {
        self.space
            .vmas
            .values()
            .filter(|v| v.start < end && start < v.end)
            .cloned()
            .collect()
    }

    /// True when `[start, end)` is fully covered by VMAs.
    pub(crate) fn covered(&self, start: Hva, end: Hva) -> bool {
        let mut at = start;
        for v in self.vmas_in(start, end) {
            if v.start > at {
                return false;
            }
            at = v.end;
        }
        at >= end
    }

    /// `split_vma()` at `addr` when a VMA strictly contains it (mm/vma.c).
    pub(crate) fn split_vma_at(&mut self, addr: Hva) {
        let Some(v) = self.space.vma(addr).cloned() else {
            return;
        };
        if v.start == addr {
            return;
        }
        let mut lo = v.clone();
        lo.end = addr;
        let mut hi = v;
        hi.pgoff += addr.offset_from(hi.start) >> 12;
        hi.start = addr;
        self.space.vmas.insert(lo.start.0, lo);
        self.space.vmas.insert(hi.start.0, hi);
    }
}

#[cfg(test)]
mod tests {
    use crate::host::testutil::*;
    use crate::host::*;

    use crate::notifier::NoNotifier;
    use crate::types::{Hva, KernelVersion, Pfn};

    /// Bad ranges are errors naming the problem.
    #[test]
    fn bad_ranges_are_reported_not_panics() {
        let mut mm = mm(KernelVersion::V6_12);
        let e = mm.munmap(Hva(0x1001), 0x1000, &mut NoNotifier).unwrap_err();
        assert!(e.to_string().contains("4K-aligned"), "{e}");
        let e = mm.mmap(MmapRequest::anon(BASE, 0)).unwrap_err();
        assert!(e.to_string().contains("length is 0"), "{e}");
        anon(&mut mm, M2, false);
        assert!(matches!(
            mm.mmap(MmapRequest::anon(BASE, M2)),
            Err(MmapError::Overlap { .. })
        ));
        let mut req = MmapRequest::anon(Hva(BASE.0 + G1), M2);
        req.backing = Backing::Device(DeviceSpec::pfnmap(Pfn(0x100)));
        assert_eq!(mm.mmap(req), Err(MmapError::PrivatePfnmap));
    }
}
