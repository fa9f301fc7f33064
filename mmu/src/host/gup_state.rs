//! The GUP state a process keeps: the `FOLL_*` flags and the report of the last GUP call
//! ([`crate::host::Mm::last_gup`]). The GUP functions themselves are in [`crate::gup`], which
//! re-exports these types; they live here so that `host` does not depend on `gup`.

use crate::host::HostFault;
use crate::notifier::NotifierRange;
use crate::types::{flag_set, Hva};
use serde::{Deserialize, Serialize};

flag_set!(
    /// `FOLL_*` (include/linux/mm_types.h and mm/internal.h).
    FollFlags {
        /// FOLL_WRITE: check the pte is writable.
        WRITE = 0,
        /// FOLL_GET: take a folio reference.
        GET = 1,
        /// FOLL_DUMP: give an error for holes.
        DUMP = 2,
        /// FOLL_FORCE: get_user_pages read/write w/o permission.
        FORCE = 3,
        /// FOLL_NOWAIT: if a disk transfer is needed, start the IO and return without waiting.
        NOWAIT = 4,
        /// FOLL_NOFAULT: do not fault in pages.
        NOFAULT = 5,
        /// FOLL_HWPOISON: return -EHWPOISON for poisoned pages.
        HWPOISON = 6,
        /// FOLL_ANON: do not follow file mappings.
        ANON = 7,
        /// FOLL_LONGTERM: the pin is long term.
        LONGTERM = 8,
        /// FOLL_SPLIT_PMD: split a huge pmd first.
        SPLIT_PMD = 9,
        /// FOLL_PCI_P2PDMA: allow P2PDMA pages.
        PCI_P2PDMA = 10,
        /// FOLL_INTERRUPTIBLE: any signal interrupts a retry.
        INTERRUPTIBLE = 11,
        /// FOLL_HONOR_NUMA_FAULT: fault on protnone (NUMA hinting) entries.
        HONOR_NUMA_FAULT = 12,
        /// FOLL_TOUCH: mark the page accessed (and dirty for a write).
        TOUCH = 16,
        /// FOLL_TRIED: a retry.
        TRIED = 17,
        /// FOLL_REMOTE: another process's mm.
        REMOTE = 18,
        /// FOLL_PIN: pin (pincount) instead of get.
        PIN = 19,
        /// FOLL_FAST_ONLY: GUP-fast only.
        FAST_ONLY = 20,
        /// FOLL_UNLOCKABLE: the mmap lock may be dropped.
        UNLOCKABLE = 21,
        /// FOLL_MADV_POPULATE
        MADV_POPULATE = 22,
    }
);

/// How the page was found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GupPath {
    /// Not attempted / nothing found.
    #[default]
    None,
    /// GUP-fast (lockless walk).
    Fast,
    /// The slow path (`__get_user_pages()`).
    Slow,
    /// `follow_pfnmap_start()` on a VM_IO|VM_PFNMAP vma (KVM's `hva_to_pfn_remapped()`).
    Remapped,
}

/// Why GUP-fast bailed (for reports).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FastBail {
    /// No present leaf (none / swap / migration).
    NotPresent,
    /// `p?d_protnone`.
    Protnone,
    /// `!pte_access_permitted()`.
    AccessNotPermitted,
    /// devmap with FOLL_LONGTERM.
    DevmapLongterm,
    /// devmap whose `get_dev_pagemap()` failed.
    DevmapNoPgmap,
    /// `p?d_special`.
    Special,
    /// `try_grab_folio_fast()` failed: refcount 0 (freed or frozen).
    RefcountZero,
    /// The entry changed under us (re-check).
    Changed,
    /// `gup_fast_folio_allowed()` refused (secretmem, non-anon/shmem LONGTERM write pin,
    /// truncated).
    FolioNotAllowed,
    /// PIN of a read-only entry that must be unshared.
    MustUnshare,
    /// FOLL_PIN while fork is copying page tables (`write_protect_seq`).
    ForkInProgress,
}

/// What a GUP call did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GupReport {
    /// Address asked for.
    pub hva: Hva,
    /// Flags used (including the implicit ones).
    pub flags: FollFlags,
    /// Where the page came from.
    pub path: GupPath,
    /// GUP-fast bail reason, when it bailed.
    pub fast_bail: Option<FastBail>,
    /// Host fault handlers that ran (via `faultin_page()` / `fixup_user_fault()`).
    pub host_faults: Vec<HostFault>,
    /// Notifier ranges sent by those faults, in order.
    pub notifiers: Vec<NotifierRange>,
    /// `faultin_page()` calls.
    pub faultin_calls: u32,
}
