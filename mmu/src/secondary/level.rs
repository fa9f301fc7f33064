//! Mapping level: how large an SPTE a fault may install.
//!
//! Models `__kvm_mmu_max_mapping_level()`, `host_pfn_mapping_level()` and
//! `kvm_mmu_hugepage_adjust()` (arch/x86/kvm/mmu/mmu.c).

use super::memslot::Memslot;
use crate::host::Mm;
use crate::types::{Gfn, Level};

/// `host_pfn_mapping_level()` (arch/x86/kvm/mmu/mmu.c): the level of the host leaf mapping the
/// slot's hva for `gfn`, found by a lockless walk of the host page table. PUD and PMD leaves of any
/// kind count (THP, hugetlb, DAX, huge pfnmap, huge zero); `special`, `write` and `protnone` are
/// not looked at. Anything else is 4K.
pub fn host_pfn_mapping_level(mm: &Mm, slot: &Memslot, gfn: Gfn) -> Level {
    mm.leaf_level(slot.gfn_to_hva(gfn)).unwrap_or(Level::Pte4K)
}

/// `__kvm_mmu_max_mapping_level()` (arch/x86/kvm/mmu/mmu.c): clamp `max` to `max_huge_page_level`,
/// step down while `lpage_info` disallows the level, then bound by the host mapping level.
pub fn max_mapping_level(
    mm: &Mm,
    slot: &Memslot,
    gfn: Gfn,
    max: Level,
    max_huge_page_level: Level,
) -> Level {
    let mut max = max.min(max_huge_page_level);
    while max > Level::Pte4K && slot.lpage_disallowed(gfn, max) {
        max = match max {
            Level::Pud1G => Level::Pmd2M,
            _ => Level::Pte4K,
        };
    }
    if max == Level::Pte4K {
        return Level::Pte4K;
    }
    max.min(host_pfn_mapping_level(mm, slot, gfn))
}
