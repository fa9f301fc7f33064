//! Host fault handling: `handle_mm_fault()` and what it dispatches to (mm/memory.c,
//! mm/huge_memory.c).

use super::Mm;
use crate::notifier::{MmuNotifier, NotifierRange};
use crate::types::{flag_set, Hva};
use serde::{Deserialize, Serialize};

flag_set!(
    /// `enum fault_flag` (include/linux/mm_types.h).
    FaultFlags {
        /// FAULT_FLAG_WRITE
        WRITE = 0,
        /// FAULT_FLAG_MKWRITE
        MKWRITE = 1,
        /// FAULT_FLAG_ALLOW_RETRY
        ALLOW_RETRY = 2,
        /// FAULT_FLAG_RETRY_NOWAIT
        RETRY_NOWAIT = 3,
        /// FAULT_FLAG_KILLABLE
        KILLABLE = 4,
        /// FAULT_FLAG_TRIED
        TRIED = 5,
        /// FAULT_FLAG_USER
        USER = 6,
        /// FAULT_FLAG_REMOTE
        REMOTE = 7,
        /// FAULT_FLAG_INSTRUCTION
        INSTRUCTION = 8,
        /// FAULT_FLAG_INTERRUPTIBLE
        INTERRUPTIBLE = 9,
        /// FAULT_FLAG_UNSHARE
        UNSHARE = 10,
    }
);

/// What a fault returned (`vm_fault_t`, reduced to what callers act on).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultOutcome {
    /// 0: the entry now allows the access (or was already fixed by someone else).
    Done,
    /// VM_FAULT_NOPAGE: a driver installed the entry itself; the access may still fault
    /// again (e.g. a read-only pfnmap PTE under a write).
    Nopage,
    /// VM_FAULT_RETRY: the lock was (or would have to be) dropped; retry.
    Retry,
    /// VM_FAULT_COMPLETED: done, lock dropped.
    Completed,
    /// VM_FAULT_SIGBUS.
    Sigbus,
    /// VM_FAULT_SIGSEGV (no VMA, or access not permitted).
    Sigsegv,
    /// VM_FAULT_OOM.
    Oom,
    /// VM_FAULT_HWPOISON.
    Hwpoison,
}

impl FaultOutcome {
    /// `VM_FAULT_ERROR`.
    pub fn is_error(self) -> bool {
        matches!(
            self,
            FaultOutcome::Sigbus
                | FaultOutcome::Sigsegv
                | FaultOutcome::Oom
                | FaultOutcome::Hwpoison
        )
    }
}

/// A host fault handler that ran (names of the scenario schema).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostFault {
    /// `do_anonymous_page()` read: the shared zero page, special, read-only.
    AnonZero,
    /// `do_anonymous_page()` write: a new anonymous page.
    Anon,
    /// `wp_page_copy()`: COW into a new page (CLEAR 4K).
    WpCopy,
    /// `wp_page_reuse()` / `do_huge_pmd_wp_page()` reuse: upgrade in place, no notifier.
    WpReuse,
    /// `do_numa_page()` / `do_huge_pmd_numa_page()` restoring the entry.
    Numa,
    /// NUMA hinting fault that migrated the folio (CLEAR of the folio span).
    NumaMigrate,
    /// `do_huge_pmd_anonymous_page()` read: the huge zero PMD.
    HugeZero,
    /// `do_huge_pmd_anonymous_page()` write: a new THP.
    Thp,
    /// [6.13+] `do_huge_zero_wp_pmd()`: a THP replaces the huge zero PMD (CLEAR 2M).
    HugeZeroWpThp,
    /// `__split_huge_pmd()` from a fault (CLEAR 2M), then the PTE-level handler.
    Split,
    /// `->fault` of a pfnmap/mixedmap driver (`vmf_insert_pfn_prot()`/`vmf_insert_mixed()`).
    Pfnmap,
    /// `->huge_fault` inserting a PMD/PUD leaf (`vmf_insert_pfn_pmd/pud()`).
    HugePfnmap,
    /// `wp_pfn_shared()` calling `->pfn_mkwrite` (or reusing in place).
    PfnMkwrite,
    /// `do_read_fault()` / `do_shared_fault()`: a page-cache page mapped.
    File,
    /// `do_cow_fault()`: a private copy of a page-cache page.
    FileCow,
    /// `handle_pte_fault()` / `huge_pmd_set_accessed()` with nothing to do but set A/D.
    Access,
}

impl HostFault {
    /// Name as in the scenario schema.
    pub fn name(self) -> &'static str {
        match self {
            HostFault::AnonZero => "anon-zero",
            HostFault::Anon => "anon",
            HostFault::WpCopy => "wp-copy",
            HostFault::WpReuse => "wp-reuse",
            HostFault::Numa => "numa",
            HostFault::NumaMigrate => "numa-migrate",
            HostFault::HugeZero => "huge-zero",
            HostFault::Thp => "thp",
            HostFault::HugeZeroWpThp => "huge-zero-wp-thp",
            HostFault::Split => "split",
            HostFault::Pfnmap => "pfnmap",
            HostFault::HugePfnmap => "huge-pfnmap",
            HostFault::PfnMkwrite => "pfn-mkwrite",
            HostFault::File => "file",
            HostFault::FileCow => "file-cow",
            HostFault::Access => "access",
        }
    }
}

/// What one `handle_mm_fault()` call did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultReport {
    /// Faulting address.
    pub hva: Hva,
    /// Fault flags.
    pub flags: FaultFlags,
    /// Result.
    pub outcome: FaultOutcome,
    /// Handlers that ran, in order.
    pub handlers: Vec<HostFault>,
    /// Notifier ranges sent, in order.
    pub notifiers: Vec<NotifierRange>,
}

impl Mm {
    /// Models `handle_mm_fault()` (mm/memory.c) for the process address space.
    pub fn handle_mm_fault(
        &mut self,
        hva: Hva,
        flags: FaultFlags,
        notifier: &mut dyn MmuNotifier,
    ) -> FaultReport {
        let _ = notifier;
        todo!("handle_mm_fault {hva} {flags:?}")
    }
}
