//! GUP: get_user_pages and friends (mm/gup.c), `vm_normal_page*()` (mm/memory.c) and
//! `follow_pfnmap_start/end()`.
//!
//! References are real: a [`PageRef`] holds a folio reference (`FOLL_GET`) or a pin
//! (`FOLL_PIN`) and must be given back with [`put_page`] / [`unpin_user_page`].

use crate::host::{FaultFlags, FaultReport, HostFault, Mm};
use crate::notifier::{MmuNotifier, NotifierRange};
use crate::types::{flag_set, Hva, Level, Pfn};
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

/// The kind of reference a [`PageRef`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefKind {
    /// A folio reference (FOLL_GET).
    Get,
    /// A pin (FOLL_PIN): refcount +1 and pincount +1 (zero page: nothing).
    Pin,
}

/// A page taken by GUP. Give it back with [`put_page`] or [`unpin_user_page`].
#[must_use = "a GUP reference must be released with put_page()/unpin_user_page()"]
#[derive(Debug, PartialEq, Eq)]
pub struct PageRef {
    pfn: Pfn,
    kind: RefKind,
    writable: bool,
    pgmap: u16,
}

impl PageRef {
    /// The 4K page's pfn.
    pub fn pfn(&self) -> Pfn {
        self.pfn
    }
    /// Get or pin.
    pub fn kind(&self) -> RefKind {
        self.kind
    }
    /// True when the mapping it came from allowed writes (the call had FOLL_WRITE or the
    /// entry was writable).
    pub fn writable(&self) -> bool {
        self.writable
    }
}

/// A GUP slow-path error (`-E*` of `__get_user_pages()`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GupError {
    /// -EFAULT at {0}: no vma, access not permitted by the vma, VM_IO|VM_PFNMAP, or the fault failed
    #[error("-EFAULT at {0}: no vma, access not permitted, VM_IO|VM_PFNMAP, or the fault failed")]
    Efault(Hva),
    /// -ENOMEM at {0}
    #[error("-ENOMEM at {0}: out of memory while faulting")]
    Enomem(Hva),
    /// -EHWPOISON at {0}
    #[error("-EHWPOISON at {0}: the page is poisoned")]
    Ehwpoison(Hva),
    /// -EINTR at {0}
    #[error("-EINTR at {0}: a fatal signal is pending")]
    Eintr(Hva),
    /// -EOPNOTSUPP at {0}: FOLL_LONGTERM on fsdax
    #[error("-EOPNOTSUPP at {0}: FOLL_LONGTERM on fsdax")]
    Eopnotsupp(Hva),
    /// -EEXIST at {0}: no struct page behind the entry
    #[error("-EEXIST at {0}: no struct page behind the entry")]
    Eexist(Hva),
    /// 0 pages at {0}: the fault needs to wait (FOLL_NOWAIT) or the lock was dropped
    #[error("0 pages at {0}: the fault would block (FOLL_NOWAIT) or the lock was dropped")]
    NoPage(Hva),
}

/// `fixup_user_fault()` failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FixupError {
    /// -EFAULT at {0}: no vma, or the vma does not permit the access
    #[error("-EFAULT at {0}: no vma, or the vma does not permit the access")]
    Efault(Hva),
    /// -ENOMEM at {0}
    #[error("-ENOMEM at {0}")]
    Enomem(Hva),
    /// -EHWPOISON at {0}
    #[error("-EHWPOISON at {0}")]
    Ehwpoison(Hva),
    /// -EINTR at {0}
    #[error("-EINTR at {0}")]
    Eintr(Hva),
}

/// What `follow_pfnmap_start()` returns (`struct follow_pfnmap_args`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PfnmapArgs {
    /// pfn of the 4K page at the address (leaf pfn + offset).
    pub pfn: Pfn,
    /// The entry is writable.
    pub writable: bool,
    /// The entry is special.
    pub special: bool,
    /// Level of the leaf.
    pub level: Level,
}

/// `follow_pfnmap_start()` failed (-EINVAL).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FollowPfnmapError {
    /// No vma at {0}
    #[error("No vma at {0}")]
    NoVma(Hva),
    /// The vma at {0} is not VM_IO|VM_PFNMAP
    #[error("The vma at {0} is not VM_IO|VM_PFNMAP")]
    NotPfnmap(Hva),
    /// Nothing present at {0}
    #[error("Nothing present at {0}")]
    NotPresent(Hva),
}

/// What `follow_page()` found (a walk that never faults).
#[derive(Debug, PartialEq, Eq)]
pub enum FollowPage {
    /// A page, with a reference if FOLL_GET/FOLL_PIN was passed.
    Page {
        /// The page's pfn.
        pfn: Pfn,
        /// The reference, when one was requested.
        page_ref: Option<PageRef>,
    },
    /// NULL: would need a fault (none, protnone honoured, write to read-only, ...).
    NoPage,
    /// -EEXIST: mapped but no struct page (special/pfnmap).
    NoStructPage,
    /// -EMLINK: must unshare first.
    MustUnshare,
    /// -EFAULT (FOLL_DUMP hole etc.).
    Efault,
}

/// Models `get_user_page_fast_only()` (mm/gup.c): GUP-fast for one page with
/// `FOLL_GET|FOLL_FAST_ONLY` plus `flags`; never faults, never takes locks.
pub fn get_user_page_fast_only(mm: &mut Mm, hva: Hva, flags: FollFlags) -> Option<PageRef> {
    let _ = (mm, hva, flags);
    todo!()
}

/// Models `get_user_pages_fast_only()` over `nr` pages: stops at the first page GUP-fast
/// cannot take. Returns how many were taken (appended to `out`).
pub fn get_user_pages_fast_only(
    mm: &mut Mm,
    start: Hva,
    nr: usize,
    flags: FollFlags,
    out: &mut Vec<PageRef>,
) -> usize {
    let _ = (mm, start, nr, flags, out);
    todo!()
}

/// Models `get_user_pages_unlocked()` (mm/gup.c) for one page: GUP-fast is NOT tried;
/// `FOLL_TOUCH|FOLL_UNLOCKABLE|FOLL_GET` are added; faults go to `notifier`.
pub fn get_user_pages_unlocked(
    mm: &mut Mm,
    hva: Hva,
    flags: FollFlags,
    notifier: &mut dyn MmuNotifier,
) -> Result<PageRef, GupError> {
    let _ = (mm, hva, flags, notifier);
    todo!()
}

/// Models `get_user_pages_fast()` / `pin_user_pages_fast()` for one page: GUP-fast, then
/// the slow path on failure.
pub fn get_user_pages_fast(
    mm: &mut Mm,
    hva: Hva,
    flags: FollFlags,
    notifier: &mut dyn MmuNotifier,
) -> Result<PageRef, GupError> {
    let _ = (mm, hva, flags, notifier);
    todo!()
}

/// Models `follow_page()` (`follow_page_mask()` without faulting, FOLL_HONOR_NUMA_FAULT
/// not set unless passed).
pub fn follow_page(mm: &mut Mm, hva: Hva, flags: FollFlags) -> FollowPage {
    let _ = (mm, hva, flags);
    todo!()
}

/// Models `fixup_user_fault()` (mm/gup.c).
pub fn fixup_user_fault(
    mm: &mut Mm,
    hva: Hva,
    flags: FaultFlags,
    notifier: &mut dyn MmuNotifier,
) -> Result<Vec<FaultReport>, FixupError> {
    let _ = (mm, hva, flags, notifier);
    todo!()
}

/// Models `follow_pfnmap_start()` (mm/memory.c).
pub fn follow_pfnmap_start(mm: &Mm, hva: Hva) -> Result<PfnmapArgs, FollowPfnmapError> {
    let _ = (mm, hva);
    todo!()
}

/// Models `follow_pfnmap_end()`: drops the page-table lock (nothing to do in the model).
pub fn follow_pfnmap_end(mm: &Mm, args: PfnmapArgs) {
    let _ = (mm, args);
}

/// Models `put_page()` / `folio_put()` for a GUP reference (also unpins a pin).
pub fn put_page(mm: &mut Mm, page: PageRef) {
    let _ = (mm, page);
    todo!()
}

/// Models `unpin_user_page()`.
pub fn unpin_user_page(mm: &mut Mm, page: PageRef) {
    put_page(mm, page)
}

/// Models `set_page_dirty_lock()` / `kvm_set_page_dirty()` on a referenced page.
pub fn set_page_dirty(mm: &mut Mm, page: &PageRef) {
    let _ = (mm, page);
    todo!()
}

/// Models `mark_page_accessed()` on a referenced page.
pub fn mark_page_accessed(mm: &mut Mm, page: &PageRef) {
    let _ = (mm, page);
    todo!()
}

/// Models `vm_normal_page()` on the PTE mapping `hva`: the pfn of its struct page, or None
/// (no PTE leaf, special, zero page, raw pfnmap).
pub fn vm_normal_page(mm: &Mm, hva: Hva) -> Option<Pfn> {
    let _ = (mm, hva);
    todo!()
}

/// Models `vm_normal_page_pmd()` on the PMD leaf mapping `hva` (the subpage's pfn).
pub fn vm_normal_page_pmd(mm: &Mm, hva: Hva) -> Option<Pfn> {
    let _ = (mm, hva);
    todo!()
}

/// Models `vm_normal_page_pud()` (6.18; the 6.12 logic of `follow_huge_pud()`).
pub fn vm_normal_page_pud(mm: &Mm, hva: Hva) -> Option<Pfn> {
    let _ = (mm, hva);
    todo!()
}
