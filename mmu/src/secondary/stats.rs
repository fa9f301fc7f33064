//! Counters of the secondary MMU (KVM's binary stats: `pf_fixed`, `pf_spurious`,
//! `pf_emulate`, `pages_4k/2m/1g`, `remote_tlb_flush`, plus model-specific ones).

use super::spte::TableCounts;
use serde::Serialize;

/// Faults by final result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FaultCounts {
    /// `RET_PF_FIXED` (`pf_fixed`).
    pub fixed: u64,
    /// `RET_PF_SPURIOUS` (`pf_spurious`).
    pub spurious: u64,
    /// `RET_PF_RETRY` rounds.
    pub retry: u64,
    /// `RET_PF_EMULATE` (`pf_emulate`), MMIO emulation excluded.
    pub emulate: u64,
    /// MMIO (no memslot / MMIO SPTE) emulations.
    pub mmio: u64,
    /// -EFAULT returned to userspace.
    pub efault: u64,
    /// `RET_PF_WRITE_PROTECTED`.
    pub write_protected: u64,
    /// Exits to userspace for a pending signal (-EINTR).
    pub intr: u64,
    /// Poisoned pages (SIGBUS queued).
    pub hwpoison: u64,
    /// Fixed by `fast_page_fault()` (`pf_fast`).
    pub fast: u64,
}

/// GUP calls by path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GupCounts {
    /// `get_user_page_fast_only()` calls that returned a page.
    pub fast: u64,
    /// `get_user_pages_unlocked()` calls.
    pub slow: u64,
    /// `hva_to_pfn_remapped()` calls.
    pub remapped: u64,
}

/// All counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KvmStats {
    /// Faults by result.
    pub faults: FaultCounts,
    /// Live SPTEs by level and tables.
    pub sptes: TableCounts,
    /// Leaf SPTEs zapped (notifiers, memslot deletion, release).
    pub zaps: u64,
    /// Remote TLB flushes (`remote_tlb_flush`).
    pub tlb_flushes: u64,
    /// `RET_PF_RETRY` rounds taken by guest accesses.
    pub retries: u64,
    /// GUP calls by path.
    pub gup: GupCounts,
    /// `invalidate_range_start` calls received.
    pub invalidations: u64,
    /// Of those, calls that intersected a memslot (and so bumped `mmu_invalidate_seq`).
    pub invalidations_in_slots: u64,
    /// Huge SPTEs split (fault path and eager splitting).
    pub splits: u64,
    /// Current `mmu_invalidate_seq`.
    pub mmu_invalidate_seq: u64,
}
