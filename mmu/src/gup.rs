//! GUP: get_user_pages and friends (mm/gup.c), `vm_normal_page*()` (mm/memory.c) and
//! `follow_pfnmap_start/end()`.
//!
//! References are real: a [`PageRef`] holds a folio reference (`FOLL_GET`) or a pin
//! (`FOLL_PIN`) and must be given back with [`put_page`] / [`unpin_user_page`].
//!
//! # Divergence
//! - A pin adds 1 to the refcount and 1 to `pincount` (Linux adds `GUP_PIN_COUNTING_BIAS`
//!   to small folios' refcount instead).
//! - Folio splits (`Mm::split_huge_page`) are atomic steps, so `try_grab_folio_fast()`'s
//!   "folio changed under us" retry cannot happen; the entry re-check is modelled (see
//!   `Mm::inject_gup_fast_race`).
//! - No secretmem, fsdax (FOLL_LONGTERM -EOPNOTSUPP), P2PDMA, movable-zone migration of
//!   long-term pins, or hugetlb.
//! - The slow path handles one page per call (KVM's usage); GUP-fast also has a range
//!   form.

use crate::host::folio::ff;
use crate::host::pagetable::Walk;
use crate::host::{
    Entry, FaultFlags, FaultOutcome, FaultReport, Mm, PendingSignal, VmFlags, Vma, Zone,
};
use crate::notifier::{MmuNotifier, NotifierRange};
use crate::types::{Hva, Level, Pfn};
use serde::{Deserialize, Serialize};

pub use crate::host::gup_state::{FastBail, FollFlags, GupPath, GupReport};

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
    /// False for a pin of the zero page (no reference was taken).
    counted: bool,
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

/// Where GUP-fast puts the references it takes (a Vec for ranges, an Option for one page,
/// so the single-page path does not allocate).
trait RefSink {
    fn push_ref(&mut self, r: PageRef);
}

impl RefSink for Vec<PageRef> {
    fn push_ref(&mut self, r: PageRef) {
        self.push(r);
    }
}

impl RefSink for Option<PageRef> {
    fn push_ref(&mut self, r: PageRef) {
        debug_assert!(self.is_none(), "one page only");
        *self = Some(r);
    }
}

/// `gup_fast_folio_allowed()` (mm/gup.c).
fn gup_fast_folio_allowed(mm: &Mm, id: usize, flags: FollFlags) -> bool {
    let f = &mm.frames.folios[id];
    let reject_file = flags.contains(FollFlags::PIN | FollFlags::LONGTERM | FollFlags::WRITE);
    let check_secretmem = f.order == 0;
    if !reject_file && !check_secretmem {
        return true;
    }
    if f.has(ff::ANON) {
        return true;
    }
    let has_mapping = f.has(ff::PAGECACHE) || f.zone == Zone::Device;
    if !has_mapping {
        // No mapping: truncated, or a driver page inserted with vm_insert_page().
        return false;
    }
    if f.has(ff::SECRETMEM) {
        return false;
    }
    // The page cache in this model is shmem, which is allowed.
    true
}

/// `gup_must_unshare()` (mm/internal.h); `vma` is None for GUP-fast.
#[allow(clippy::unnecessary_map_or)] // Option::is_none_or needs Rust 1.82; rust-version is 1.80.
fn gup_must_unshare(mm: &Mm, vma: Option<&Vma>, flags: FollFlags, id: usize) -> bool {
    if !flags.contains(FollFlags::PIN) || flags.contains(FollFlags::WRITE) {
        return false;
    }
    let f = &mm.frames.folios[id];
    if !f.has(ff::ANON) {
        if !flags.contains(FollFlags::LONGTERM) {
            return false;
        }
        return vma.map_or(true, |v| v.is_cow_mapping());
    }
    !f.has(ff::ANON_EXCLUSIVE)
}

/// `try_grab_folio()` / `try_grab_folio_fast()`: GET → refcount; PIN → refcount and
/// pincount (nothing for the zero page). Fails at refcount 0.
fn try_grab(mm: &mut Mm, id: usize, refs: i32, flags: FollFlags) -> Option<bool> {
    let f = &mm.frames.folios[id];
    if flags.contains(FollFlags::PIN) && (f.has(ff::ZERO) || f.has(ff::HUGE_ZERO)) {
        return Some(false);
    }
    if !mm.frames.try_get(id, refs) {
        return None;
    }
    if flags.contains(FollFlags::PIN) {
        mm.frames.folios[id].pincount += refs;
    }
    Some(true)
}

fn make_ref(pfn: Pfn, flags: FollFlags, writable: bool, counted: bool) -> PageRef {
    PageRef {
        pfn,
        kind: if flags.contains(FollFlags::PIN) {
            RefKind::Pin
        } else {
            RefKind::Get
        },
        writable,
        counted,
    }
}

/// Models the per-leaf checks of `gup_fast_pte_range()` / `gup_fast_pmd_leaf()` /
/// `gup_fast_pud_leaf()` (mm/gup.c) for `nr` pages starting at `hva` within one leaf.
fn gup_fast_leaf<S: RefSink>(
    mm: &mut Mm,
    hva: Hva,
    level: Level,
    e: Entry,
    nr: usize,
    flags: FollFlags,
    out: &mut S,
) -> Result<(), FastBail> {
    let write = flags.contains(FollFlags::WRITE);
    if e.is_none() || !e.is_present() {
        return Err(FastBail::NotPresent);
    }
    // pte_protnone / pmd_protnone: always bail, FOLL_HONOR_NUMA_FAULT or not. (The PUD
    // leaf has no protnone check in Linux; a protnone PUD fails the access check.)
    if e.is_protnone() && level != Level::Pud1G {
        return Err(FastBail::Protnone);
    }
    if !e.access_permitted(write) {
        return Err(FastBail::AccessNotPermitted);
    }
    let pfn = e.pfn().add(hva.page_index_in(level));
    if e.is_devmap() {
        if flags.contains(FollFlags::LONGTERM) {
            return Err(FastBail::DevmapLongterm);
        }
        match mm.frames.get_dev_pagemap(pfn) {
            Some(pg) => mm.frames.put_dev_pagemap(pg),
            None => return Err(FastBail::DevmapNoPgmap),
        }
    } else if e.is_special() {
        return Err(FastBail::Special);
    }
    let Some(id) = mm.frames.folio_of(pfn) else {
        return Err(FastBail::RefcountZero);
    };
    let refs = i32::try_from(nr).expect("nr fits i32");
    let Some(counted) = try_grab(mm, id, refs, flags) else {
        return Err(FastBail::RefcountZero);
    };
    let undo = |mm: &mut Mm| {
        if counted {
            if flags.contains(FollFlags::PIN) {
                mm.frames.folios[id].pincount -= refs;
            }
            mm.frames.put(id, refs);
        }
    };
    // Re-read the entry: a racing zap/split/migration makes it differ.
    if mm.gup_fast_race {
        mm.gup_fast_race = false;
        mm.race_zap(hva);
    }
    let now = match mm.space.pt.walk(hva) {
        Walk::Leaf(l, n) if l == level => n,
        _ => Entry::NONE,
    };
    if now != e {
        undo(mm);
        return Err(FastBail::Changed);
    }
    if !gup_fast_folio_allowed(mm, id, flags) {
        undo(mm);
        return Err(FastBail::FolioNotAllowed);
    }
    if !e.is_write() && gup_must_unshare(mm, None, flags, id) {
        undo(mm);
        return Err(FastBail::MustUnshare);
    }
    mm.frames.folios[id].flags |= ff::REFERENCED;
    for i in 0..nr {
        out.push_ref(make_ref(pfn.add(i as u64), flags, e.is_write(), counted));
    }
    Ok(())
}

fn gup_fast_range<S: RefSink>(
    mm: &mut Mm,
    start: Hva,
    nr: usize,
    flags: FollFlags,
    out: &mut S,
) -> (usize, Option<FastBail>) {
    if flags.contains(FollFlags::PIN) && mm.space.write_protect_seq % 2 == 1 {
        return (0, Some(FastBail::ForkInProgress));
    }
    let mut done = 0;
    while done < nr {
        let va = start.add((done as u64) << 12);
        let (level, e) = match mm.space.pt.walk(va) {
            Walk::None(_) => return (done, Some(FastBail::NotPresent)),
            Walk::Leaf(l, e) => (l, e),
        };
        let in_leaf = usize::try_from(level.pages() - va.page_index_in(level)).unwrap_or(1);
        let n = in_leaf.min(nr - done);
        if let Err(b) = gup_fast_leaf(mm, va, level, e, n, flags, out) {
            return (done, Some(b));
        }
        done += n;
    }
    (done, None)
}

/// Models `get_user_page_fast_only()` (include/linux/mm.h → `get_user_pages_fast_only()`,
/// mm/gup.c): GUP-fast for one page with `FOLL_GET|FOLL_FAST_ONLY` plus `flags`; never
/// faults, never takes locks. Bails (None) on none/protnone/not-permitted/special entries,
/// devmap without pgmap (or LONGTERM), refcount 0, a changed entry, a disallowed folio,
/// or a PIN needing unshare.
pub fn get_user_page_fast_only(mm: &mut Mm, hva: Hva, flags: FollFlags) -> Option<PageRef> {
    let flags = flags | FollFlags::GET | FollFlags::FAST_ONLY;
    let mut out: Option<PageRef> = None;
    let (n, bail) = gup_fast_range(mm, hva.align_down(Level::Pte4K), 1, flags, &mut out);
    mm.last_gup = GupReport {
        hva,
        flags,
        path: if n == 1 { GupPath::Fast } else { GupPath::None },
        fast_bail: bail,
        ..Default::default()
    };
    out
}

/// Models `get_user_pages_fast_only()` (mm/gup.c) over `nr` pages: stops at the first page GUP-fast
/// cannot take. Returns how many were taken (appended to `out`). Huge leaves are grabbed
/// with one refcount add per leaf, as `gup_fast_pmd_leaf()` does.
pub fn get_user_pages_fast_only(
    mm: &mut Mm,
    start: Hva,
    nr: usize,
    flags: FollFlags,
    out: &mut Vec<PageRef>,
) -> usize {
    let flags = flags | FollFlags::GET | FollFlags::FAST_ONLY;
    let (n, bail) = gup_fast_range(mm, start.align_down(Level::Pte4K), nr, flags, out);
    mm.last_gup = GupReport {
        hva: start,
        flags,
        path: if n > 0 { GupPath::Fast } else { GupPath::None },
        fast_bail: bail,
        ..Default::default()
    };
    n
}

/// Models `gup_can_follow_protnone()` (include/linux/mm.h): without
/// FOLL_HONOR_NUMA_FAULT a protnone entry is followed; with it, only in an inaccessible
/// (PROT_NONE) VMA.
pub fn gup_can_follow_protnone(vma: &Vma, flags: FollFlags) -> bool {
    if !flags.contains(FollFlags::HONOR_NUMA_FAULT) {
        return true;
    }
    !vma.is_accessible()
}

/// Models `can_follow_write_pte()` / `can_follow_write_pmd()` (mm/gup.c): a writable
/// entry, or FOLL_FORCE on a private, may-write, not-writable VMA whose page is an
/// exclusive anon page (and not uffd-wp).
fn can_follow_write(mm: &Mm, e: Entry, page: Option<Pfn>, vma: &Vma, flags: FollFlags) -> bool {
    if e.is_write() {
        return true;
    }
    if !flags.contains(FollFlags::FORCE) {
        return false;
    }
    if vma.flags.contains(VmFlags::MAYSHARE) {
        return false;
    }
    if !vma.flags.contains(VmFlags::MAYWRITE) || vma.flags.contains(VmFlags::WRITE) {
        return false;
    }
    let Some(id) = page.and_then(|p| mm.frames.folio_of(p)) else {
        return false;
    };
    let f = &mm.frames.folios[id];
    if !f.has(ff::ANON) || !f.has(ff::ANON_EXCLUSIVE) {
        return false;
    }
    !e.is_uffd_wp()
}

/// Models `check_vma_flags()` (mm/gup.c).
fn check_vma_flags(vma: &Vma, flags: FollFlags, hva: Hva) -> Result<(), GupError> {
    if vma.flags.intersects(VmFlags::IO | VmFlags::PFNMAP) {
        return Err(GupError::Efault(hva));
    }
    if flags.contains(FollFlags::ANON) && !vma.is_anonymous() {
        return Err(GupError::Efault(hva));
    }
    if flags.contains(FollFlags::WRITE) {
        if !vma.flags.contains(VmFlags::WRITE) {
            if !flags.contains(FollFlags::FORCE) {
                return Err(GupError::Efault(hva));
            }
            // hugetlb does not support FOLL_FORCE|FOLL_WRITE.
            if vma.hugetlb_level().is_some() {
                return Err(GupError::Efault(hva));
            }
            if !vma.is_cow_mapping() {
                return Err(GupError::Efault(hva));
            }
        }
    } else if !vma.flags.contains(VmFlags::READ) {
        if !flags.contains(FollFlags::FORCE) {
            return Err(GupError::Efault(hva));
        }
        if !vma.flags.contains(VmFlags::MAYREAD) {
            return Err(GupError::Efault(hva));
        }
    }
    Ok(())
}

/// Internal follow result.
enum Follow {
    Page(PageRef),
    NoPage,
    NoStructPage,
    Unshare,
    Efault,
    Enomem,
}

/// Models `follow_page_mask()` → `follow_pud_mask()` / `follow_pmd_mask()` /
/// `follow_page_pte()` (mm/gup.c), including `follow_huge_pud()`, `follow_huge_pmd()`,
/// `follow_devmap_pmd()` and the FOLL_TOUCH side effects.
fn follow_page_mask(
    mm: &mut Mm,
    vma: &Vma,
    hva: Hva,
    flags: FollFlags,
    notifier: &mut dyn MmuNotifier,
    log: &mut Vec<NotifierRange>,
) -> Follow {
    let write = flags.contains(FollFlags::WRITE);
    let no_page_table = if flags.contains(FollFlags::DUMP) {
        Follow::Efault
    } else {
        Follow::NoPage
    };
    let (level, e) = match mm.space.pt.walk(hva) {
        Walk::None(_) => return no_page_table,
        Walk::Leaf(level, e) => (level, e),
    };
    if e.is_none() {
        return no_page_table;
    }
    if !e.is_present() {
        return Follow::NoPage;
    }
    let pfn = e.pfn().add(hva.page_index_in(level));
    let get = flags.intersects(FollFlags::GET | FollFlags::PIN);
    if level == Level::Pmd2M && flags.contains(FollFlags::SPLIT_PMD) && !e.is_devmap() {
        // split_huge_pmd() (CLEAR 2M), then the PTE path.
        mm.split_huge_pmd(vma, hva, notifier, log);
        return follow_page_mask(
            mm,
            vma,
            hva,
            flags.without(FollFlags::SPLIT_PMD),
            notifier,
            log,
        );
    }
    // Devmap PMD/PUD leaves (6.12): follow_devmap_pmd() / follow_huge_pud()'s devmap branch
    // (a reference is required, and the pgmap must be alive). A devmap PTE is not special,
    // so vm_normal_page() returns its page and it takes the normal path below.
    if e.is_devmap() && level != Level::Pte4K {
        if write && !e.is_write() {
            return Follow::NoPage;
        }
        if flags.contains(FollFlags::TOUCH) {
            touch(mm, hva, level, e, write);
        }
        if !get {
            return Follow::NoStructPage;
        }
        match mm.frames.get_dev_pagemap(pfn) {
            Some(pg) => mm.frames.put_dev_pagemap(pg),
            None => return Follow::Efault,
        }
        return grab_followed(mm, pfn, flags, e.is_write());
    }
    if e.is_protnone() && !gup_can_follow_protnone(vma, flags) {
        return Follow::NoPage;
    }
    let page = mm.vm_normal_page_entry(vma, hva, e, level);
    if write && !can_follow_write(mm, e, page, vma, flags) {
        return Follow::NoPage;
    }
    let page = match (page, level) {
        (Some(p), _) => p,
        (None, Level::Pmd2M) if mm.frames.is_huge_zero_pfn(e.pfn()) => {
            // follow_huge_pmd() uses pmd_page(): the huge zero folio is grabbed like any
            // folio (also from 6.18 when the huge zero PMD is special).
            if flags.contains(FollFlags::DUMP) {
                return Follow::Efault;
            }
            pfn
        }
        (None, _) => {
            if flags.contains(FollFlags::DUMP) {
                return Follow::Efault;
            }
            if level == Level::Pte4K && mm.frames.is_zero_pfn(e.pfn()) {
                mm.frames.zero_pfn
            } else {
                // follow_pfn_pte(): touch, then -EEXIST.
                if flags.contains(FollFlags::TOUCH) {
                    touch(mm, hva, level, e, write);
                }
                return Follow::NoStructPage;
            }
        }
    };
    let Some(id) = mm.frames.folio_of(page) else {
        return Follow::NoStructPage;
    };
    if !e.is_write() && gup_must_unshare(mm, Some(vma), flags, id) {
        return Follow::Unshare;
    }
    let r = grab_followed(mm, page, flags, e.is_write() || write);
    if let Follow::Page(_) = r {
        if flags.contains(FollFlags::TOUCH) {
            if level != Level::Pte4K {
                touch(mm, hva, level, e, write);
            }
            let f = &mut mm.frames.folios[id];
            if write {
                f.flags |= ff::DIRTY;
            }
            f.flags |= ff::REFERENCED;
        }
    }
    r
}

fn grab_followed(mm: &mut Mm, pfn: Pfn, flags: FollFlags, writable: bool) -> Follow {
    let Some(id) = mm.frames.folio_of(pfn) else {
        return Follow::NoStructPage;
    };
    if !flags.intersects(FollFlags::GET | FollFlags::PIN) {
        return Follow::Page(PageRef {
            pfn,
            kind: RefKind::Get,
            writable,
            counted: false,
        });
    }
    match try_grab(mm, id, 1, flags) {
        Some(counted) => Follow::Page(make_ref(pfn, flags, writable, counted)),
        None => Follow::Enomem,
    }
}

/// `touch_pud()` / `touch_pmd()` / `follow_pfn_pte()`: young, and dirty for a write.
fn touch(mm: &mut Mm, hva: Hva, level: Level, e: Entry, write: bool) {
    let bits = Entry::YOUNG | if write { Entry::DIRTY } else { 0 };
    crate::host::pagetable::set_leaf(&mut mm.space.pt, hva.align_down(level), level, e.set(bits));
}

/// Models `faultin_page()` (mm/gup.c): FOLL_* → FAULT_FLAG_* translation, one
/// `handle_mm_fault()`, result → errno. Ok(()) means "retry the follow".
fn faultin_page(
    mm: &mut Mm,
    hva: Hva,
    flags: FollFlags,
    unshare: bool,
    notifier: &mut dyn MmuNotifier,
    report: &mut GupReport,
) -> Result<(), GupError> {
    if flags.contains(FollFlags::NOFAULT) {
        return Err(GupError::Efault(hva));
    }
    let mut ff_ = FaultFlags::empty();
    if flags.contains(FollFlags::WRITE) {
        ff_ |= FaultFlags::WRITE;
    }
    if flags.contains(FollFlags::REMOTE) {
        ff_ |= FaultFlags::REMOTE;
    }
    if flags.contains(FollFlags::UNLOCKABLE) {
        ff_ |= FaultFlags::ALLOW_RETRY | FaultFlags::KILLABLE;
        if flags.contains(FollFlags::INTERRUPTIBLE) {
            ff_ |= FaultFlags::INTERRUPTIBLE;
        }
    }
    if flags.contains(FollFlags::NOWAIT) {
        ff_ |= FaultFlags::ALLOW_RETRY | FaultFlags::RETRY_NOWAIT;
    }
    if flags.contains(FollFlags::TRIED) {
        ff_ |= FaultFlags::TRIED;
    }
    if unshare {
        ff_ |= FaultFlags::UNSHARE;
    }
    let mut f = mm.handle_mm_fault(hva, ff_, notifier);
    report.faultin_calls += 1;
    // Append the fault's handlers and ranges; into an empty report, by taking the buffers.
    if report.host_faults.is_empty() {
        std::mem::swap(&mut report.host_faults, &mut f.handlers);
    } else {
        report.host_faults.extend(f.handlers.iter().copied());
    }
    if report.notifiers.is_empty() {
        std::mem::swap(&mut report.notifiers, &mut f.notifiers);
    } else {
        report.notifiers.extend(f.notifiers.iter().copied());
    }
    match f.outcome {
        FaultOutcome::Done | FaultOutcome::Nopage => Ok(()),
        // COMPLETED / RETRY: the lock is gone (or, with NOWAIT, the fault would block).
        // __get_user_pages_locked() then checks gup_signal_pending() (SIGKILL, or any
        // signal with FOLL_INTERRUPTIBLE) → -EINTR; a retry with FOLL_TRIED would wait
        // for userspace (userfaultfd), which the model reports as "0 pages".
        FaultOutcome::Completed | FaultOutcome::Retry => {
            let interrupted = match mm.signal {
                PendingSignal::Fatal => !flags.contains(FollFlags::NOWAIT),
                PendingSignal::NonFatal => {
                    flags.contains(FollFlags::INTERRUPTIBLE) && !flags.contains(FollFlags::NOWAIT)
                }
                PendingSignal::None => false,
            };
            if interrupted {
                Err(GupError::Eintr(hva))
            } else {
                Err(GupError::NoPage(hva))
            }
        }
        FaultOutcome::Oom => Err(GupError::Enomem(hva)),
        FaultOutcome::Hwpoison if flags.contains(FollFlags::HWPOISON) => {
            Err(GupError::Ehwpoison(hva))
        }
        FaultOutcome::Hwpoison | FaultOutcome::Sigbus | FaultOutcome::Sigsegv => {
            Err(GupError::Efault(hva))
        }
    }
}

/// Models `__get_user_pages()` (mm/gup.c) for one page: `check_vma_flags()`, then
/// `follow_page_mask()`; NULL or -EMLINK → `faultin_page()` and retry; -EEXIST (no struct
/// page) is an error since pages are wanted.
fn get_user_pages_slow(
    mm: &mut Mm,
    hva: Hva,
    flags: FollFlags,
    notifier: &mut dyn MmuNotifier,
    report: &mut GupReport,
) -> Result<PageRef, GupError> {
    let Some(vma) = mm.space.vma(hva).cloned() else {
        return Err(GupError::Efault(hva));
    };
    check_vma_flags(&vma, flags, hva)?;
    report.path = GupPath::Slow;
    for _ in 0..8 {
        // retry: fatal_signal_pending() → -EINTR.
        if mm.signal == PendingSignal::Fatal {
            return Err(GupError::Eintr(hva));
        }
        // A fault may have changed the VMA (e.g. anon_vma); re-read it.
        let vma = mm.space.vma(hva).cloned().ok_or(GupError::Efault(hva))?;
        match follow_page_mask(mm, &vma, hva, flags, notifier, &mut report.notifiers) {
            Follow::Page(p) => return Ok(p),
            Follow::NoPage => faultin_page(mm, hva, flags, false, notifier, report)?,
            Follow::Unshare => faultin_page(mm, hva, flags, true, notifier, report)?,
            Follow::NoStructPage => return Err(GupError::Eexist(hva)),
            Follow::Efault => return Err(GupError::Efault(hva)),
            Follow::Enomem => return Err(GupError::Enomem(hva)),
        }
    }
    Err(GupError::Efault(hva))
}

/// Models `get_user_pages_unlocked()` (mm/gup.c) for one page: GUP-fast is NOT tried;
/// `FOLL_TOUCH|FOLL_UNLOCKABLE|FOLL_GET` are added; faults go to `notifier`.
/// This is what KVM's `hva_to_pfn_slow()` calls (with HONOR_NUMA_FAULT|HWPOISON, +WRITE,
/// +NOWAIT for the async pass).
pub fn get_user_pages_unlocked(
    mm: &mut Mm,
    hva: Hva,
    flags: FollFlags,
    notifier: &mut dyn MmuNotifier,
) -> Result<PageRef, GupError> {
    let flags = flags | FollFlags::TOUCH | FollFlags::UNLOCKABLE | FollFlags::GET;
    let mut report = GupReport {
        hva,
        flags,
        ..Default::default()
    };
    let r = get_user_pages_slow(mm, hva, flags, notifier, &mut report);
    mm.last_gup = report;
    r
}

/// Models `get_user_pages_fast()` (mm/gup.c) / `pin_user_pages_fast()` for one page
/// (`gup_fast_fallback()`): GUP-fast, then the slow path with TOUCH|UNLOCKABLE.
/// Pass `FollFlags::PIN` to pin; otherwise FOLL_GET is added.
pub fn get_user_pages_fast(
    mm: &mut Mm,
    hva: Hva,
    flags: FollFlags,
    notifier: &mut dyn MmuNotifier,
) -> Result<PageRef, GupError> {
    let flags = if flags.contains(FollFlags::PIN) {
        flags
    } else {
        flags | FollFlags::GET
    };
    let mut out: Option<PageRef> = None;
    let (_, bail) = gup_fast_range(mm, hva.align_down(Level::Pte4K), 1, flags, &mut out);
    if let Some(p) = out {
        mm.last_gup = GupReport {
            hva,
            flags,
            path: GupPath::Fast,
            ..Default::default()
        };
        return Ok(p);
    }
    let flags = flags | FollFlags::TOUCH | FollFlags::UNLOCKABLE;
    let mut report = GupReport {
        hva,
        flags,
        fast_bail: bail,
        ..Default::default()
    };
    let r = get_user_pages_slow(mm, hva, flags, notifier, &mut report);
    mm.last_gup = report;
    r
}

/// Models `follow_page()` (mm/gup.c): `follow_page_mask()` without faulting;
/// FOLL_HONOR_NUMA_FAULT is not set unless passed (so protnone entries are followed, the
/// smaps / KSM behaviour restored in 6.6). FOLL_SPLIT_PMD is not allowed here (it would
/// need a notifier); use the slow GUP path for it.
pub fn follow_page(mm: &mut Mm, hva: Hva, flags: FollFlags) -> FollowPage {
    let Some(vma) = mm.space.vma(hva).cloned() else {
        return FollowPage::NoPage;
    };
    let flags = flags.without(FollFlags::SPLIT_PMD);
    let mut nothing = Vec::new();
    match follow_page_mask(
        mm,
        &vma,
        hva,
        flags,
        &mut crate::notifier::NoNotifier,
        &mut nothing,
    ) {
        Follow::Page(p) => {
            let pfn = p.pfn;
            if p.counted {
                FollowPage::Page {
                    pfn,
                    page_ref: Some(p),
                }
            } else {
                // No reference was taken (no GET/PIN, or a pinned zero page).
                let zero_pin = flags.contains(FollFlags::PIN);
                FollowPage::Page {
                    pfn,
                    page_ref: zero_pin.then_some(p),
                }
            }
        }
        Follow::NoPage => FollowPage::NoPage,
        Follow::NoStructPage => FollowPage::NoStructPage,
        Follow::Unshare => FollowPage::MustUnshare,
        Follow::Efault | Follow::Enomem => FollowPage::Efault,
    }
}

/// Models `fixup_user_fault()` (mm/gup.c): `vma_permits_fault()` (VM_WRITE for a write,
/// VM_READ otherwise), then `handle_mm_fault()` until it does not ask for a retry. It does
/// not re-check the resulting entry: a NOPAGE that left a read-only PTE is success.
pub fn fixup_user_fault(
    mm: &mut Mm,
    hva: Hva,
    flags: FaultFlags,
    notifier: &mut dyn MmuNotifier,
) -> Result<Vec<FaultReport>, FixupError> {
    let Some(vma) = mm.space.vma(hva) else {
        return Err(FixupError::Efault(hva));
    };
    let need = if flags.contains(FaultFlags::WRITE) {
        VmFlags::WRITE
    } else {
        VmFlags::READ
    };
    if !vma.flags.contains(need) {
        return Err(FixupError::Efault(hva));
    }
    let mut flags = flags | FaultFlags::ALLOW_RETRY | FaultFlags::KILLABLE;
    let mut faults = Vec::new();
    let mut report = GupReport {
        hva,
        path: GupPath::Remapped,
        ..Default::default()
    };
    for _ in 0..4 {
        let f = mm.handle_mm_fault(hva, flags, notifier);
        report.faultin_calls += 1;
        report.host_faults.extend(f.handlers.iter().copied());
        report.notifiers.extend(f.notifiers.iter().copied());
        let outcome = f.outcome;
        faults.push(f);
        match outcome {
            FaultOutcome::Retry => {
                flags |= FaultFlags::TRIED;
                // userfaultfd waits are not modelled: a second RETRY is an error.
                if faults.len() > 1 {
                    mm.last_gup = report;
                    return Err(FixupError::Efault(hva));
                }
            }
            FaultOutcome::Oom => {
                mm.last_gup = report;
                return Err(FixupError::Enomem(hva));
            }
            FaultOutcome::Hwpoison => {
                mm.last_gup = report;
                return Err(FixupError::Ehwpoison(hva));
            }
            FaultOutcome::Sigbus | FaultOutcome::Sigsegv => {
                mm.last_gup = report;
                return Err(FixupError::Efault(hva));
            }
            FaultOutcome::Done | FaultOutcome::Nopage | FaultOutcome::Completed => {
                mm.last_gup = report;
                return Ok(faults);
            }
        }
    }
    mm.last_gup = report;
    Err(FixupError::Efault(hva))
}

/// Models `follow_pfnmap_start()` (mm/memory.c): on a VM_IO|VM_PFNMAP VMA, the pfn of the
/// 4K page at `hva` from whatever leaf maps it (PUD/PMD leaves give leaf pfn + offset),
/// with writable and special.
pub fn follow_pfnmap_start(mm: &Mm, hva: Hva) -> Result<PfnmapArgs, FollowPfnmapError> {
    let Some(vma) = mm.space.vma(hva) else {
        return Err(FollowPfnmapError::NoVma(hva));
    };
    if !vma.flags.intersects(VmFlags::IO | VmFlags::PFNMAP) {
        return Err(FollowPfnmapError::NotPfnmap(hva));
    }
    match mm.space.pt.walk(hva) {
        Walk::Leaf(level, e) if e.is_present() => Ok(PfnmapArgs {
            pfn: e.pfn().add(hva.page_index_in(level)),
            writable: e.is_write(),
            special: e.is_special(),
            level,
        }),
        _ => Err(FollowPfnmapError::NotPresent(hva)),
    }
}

/// Models `follow_pfnmap_end()` (mm/memory.c): drops the page-table lock (nothing to do in the
/// model).
pub fn follow_pfnmap_end(mm: &Mm, args: PfnmapArgs) {
    let _ = (mm, args);
}

/// Models `put_page()` (include/linux/mm.h) / `unpin_user_page()` for a GUP reference: drops the
/// reference (and the pin); frees the folio at refcount 0.
pub fn put_page(mm: &mut Mm, page: PageRef) {
    if !page.counted {
        return;
    }
    let Some(id) = mm.frames.folio_of(page.pfn) else {
        return;
    };
    if page.kind == RefKind::Pin {
        mm.frames.folios[id].pincount -= 1;
    }
    mm.frames.put(id, 1);
}

/// Models `get_page_unless_zero(pfn_to_page(pfn))` (include/linux/mm.h) (KVM 6.12
/// `kvm_try_get_pfn()` on a remapped pfn with a struct page): a reference unless the refcount is 0
/// or the pfn has no struct page.
pub fn get_page_unless_zero(mm: &mut Mm, pfn: Pfn) -> Option<PageRef> {
    let id = mm.frames.folio_of(pfn)?;
    if !mm.frames.try_get(id, 1) {
        return None;
    }
    Some(PageRef {
        pfn,
        kind: RefKind::Get,
        writable: false,
        counted: true,
    })
}

/// Models `unpin_user_page()` (mm/gup.c).
pub fn unpin_user_page(mm: &mut Mm, page: PageRef) {
    put_page(mm, page)
}

/// Models `set_page_dirty_lock()` (mm/page-writeback.c) / `kvm_set_page_dirty()` on a referenced
/// page.
pub fn set_page_dirty(mm: &mut Mm, page: &PageRef) {
    if let Some(id) = mm.frames.folio_of(page.pfn) {
        mm.frames.folios[id].flags |= ff::DIRTY;
    }
}

/// Models `mark_page_accessed()` (mm/folio-compat.c) on a referenced page.
pub fn mark_page_accessed(mm: &mut Mm, page: &PageRef) {
    if let Some(id) = mm.frames.folio_of(page.pfn) {
        mm.frames.folios[id].flags |= ff::REFERENCED;
    }
}

fn normal_page_at(mm: &Mm, hva: Hva, want: Level) -> Option<Pfn> {
    let vma = mm.space.vma(hva)?;
    match mm.space.pt.walk(hva) {
        Walk::Leaf(level, e) if level == want => mm.vm_normal_page_entry(vma, hva, e, level),
        _ => None,
    }
}

/// Models `vm_normal_page()` (mm/memory.c) on the PTE mapping `hva`: the pfn of its struct
/// page, or None (no PTE leaf, special, zero page, raw pfnmap).
pub fn vm_normal_page(mm: &Mm, hva: Hva) -> Option<Pfn> {
    normal_page_at(mm, hva, Level::Pte4K)
}

/// Models `vm_normal_page_pmd()` (mm/memory.c) on the PMD leaf mapping `hva`: None for
/// special (huge pfnmap; 6.18 huge zero), devmap and the huge zero folio; else the subpage.
pub fn vm_normal_page_pmd(mm: &Mm, hva: Hva) -> Option<Pfn> {
    normal_page_at(mm, hva, Level::Pmd2M)
}

/// Models `vm_normal_page_pud()` (6.18 mm/memory.c; the same rules as the PMD variant).
pub fn vm_normal_page_pud(mm: &Mm, hva: Hva) -> Option<Pfn> {
    normal_page_at(mm, hva, Level::Pud1G)
}

#[cfg(test)]
mod tests {
    //! GUP rules, one test per rule: GUP-fast's bail-outs, the slow path's follow/fault
    //! loop, FOLL_* semantics and reference accounting.
    use super::*;
    use crate::host::testutil::*;
    use crate::host::HostFault;
    use crate::host::{DeviceKind, DeviceSpec, MmapRequest};
    use crate::notifier::{NoNotifier, NotifierEvent, NotifierLog};
    use crate::types::KernelVersion;
    use std::collections::BTreeMap;

    fn touch_write(mm: &mut Mm, hva: Hva) {
        mm.user_access(hva, true, &mut NoNotifier).unwrap();
    }
    fn invariants(mm: &Mm) {
        mm.check_invariants(&BTreeMap::new()).unwrap();
    }

    /// Models `gup_fast_pte_range()`: a protnone (NUMA hint) PTE fails GUP-fast whatever
    /// the flags, FOLL_HONOR_NUMA_FAULT included.
    #[test]
    fn gup_fast_bails_on_protnone() {
        let mut m = mm(KernelVersion::V6_12);
        let a = anon(&mut m, 1 << 20, false);
        touch_write(&mut m, a);
        m.numa_scan(a, 1 << 20, &mut NoNotifier).unwrap();
        for flags in [FollFlags::empty(), FollFlags::HONOR_NUMA_FAULT] {
            assert!(get_user_page_fast_only(&mut m, a, flags).is_none());
            assert_eq!(m.last_gup().fast_bail, Some(FastBail::Protnone));
        }
        invariants(&m);
    }

    /// Models `gup_fast_pte_range()`: a special PTE (the zero page) fails GUP-fast.
    #[test]
    fn gup_fast_bails_on_special_zero_page() {
        let mut m = mm(KernelVersion::V6_12);
        let a = anon(&mut m, 1 << 20, false);
        m.user_access(a, false, &mut NoNotifier).unwrap();
        assert!(get_user_page_fast_only(&mut m, a, FollFlags::empty()).is_none());
        assert_eq!(m.last_gup().fast_bail, Some(FastBail::Special));
        // And FOLL_WRITE on the read-only zero page fails the access check first.
        assert!(get_user_page_fast_only(&mut m, a, FollFlags::WRITE).is_none());
        assert_eq!(m.last_gup().fast_bail, Some(FastBail::AccessNotPermitted));
    }

    fn devdax(m: &mut Mm) -> Hva {
        device(m, BASE, 0x10_000, true, DeviceSpec::devdax())
    }

    /// Models `gup_fast_pte_range()` devmap rules (6.12): `get_dev_pagemap()` must succeed
    /// (a killed pgmap fails), and FOLL_LONGTERM always fails; with a live pgmap the page is
    /// grabbed (refcount 1 → 2) and released back to the idle 1.
    #[test]
    fn gup_fast_devmap_needs_pgmap_and_refuses_longterm() {
        let mut m = mm(KernelVersion::V6_12);
        let a = devdax(&mut m);
        m.user_access(a, false, &mut NoNotifier).unwrap();
        let pfn = m.lookup(a).unwrap().pfn;
        assert!(get_user_page_fast_only(&mut m, a, FollFlags::LONGTERM).is_none());
        assert_eq!(m.last_gup().fast_bail, Some(FastBail::DevmapLongterm));
        let p = get_user_page_fast_only(&mut m, a, FollFlags::empty()).unwrap();
        assert_eq!(m.folio_info(pfn).unwrap().refcount, 2);
        put_page(&mut m, p);
        assert_eq!(
            m.folio_info(pfn).unwrap().refcount,
            1,
            "6.12 idle ZONE_DEVICE refcount"
        );
        assert!(m.kill_pgmap(pfn));
        assert!(get_user_page_fast_only(&mut m, a, FollFlags::empty()).is_none());
        assert_eq!(m.last_gup().fast_bail, Some(FastBail::DevmapNoPgmap));
        assert_eq!(m.folio_info(pfn).unwrap().refcount, 1);
        invariants(&m);
    }

    /// Models `follow_devmap_pmd()` (6.12): a devmap PMD needs FOLL_GET/PIN (-EEXIST
    /// otherwise) and a live pgmap (-EFAULT otherwise); a devmap PTE is a normal page to
    /// the slow path (`vm_normal_page()` returns it), pgmap or not.
    #[test]
    fn slow_gup_devmap_pmd_needs_get_and_pgmap() {
        let mut m = mm(KernelVersion::V6_12);
        let a = device(
            &mut m,
            BASE,
            2 * M2,
            true,
            DeviceSpec::devdax().with_max_level(Level::Pmd2M),
        );
        m.user_access(a, false, &mut NoNotifier).unwrap();
        assert_eq!(m.leaf_level(a), Some(Level::Pmd2M));
        assert!(m.lookup(a).unwrap().devmap);
        assert_eq!(
            follow_page(&mut m, a, FollFlags::empty()),
            FollowPage::NoStructPage
        );
        let p = get_user_pages_unlocked(&mut m, a.add(0x2000), FollFlags::empty(), &mut NoNotifier)
            .unwrap();
        put_page(&mut m, p);
        let pfn = m.lookup(a).unwrap().pfn;
        m.kill_pgmap(pfn);
        let e = get_user_pages_unlocked(&mut m, a, FollFlags::empty(), &mut NoNotifier);
        assert_eq!(e, Err(GupError::Efault(a)));
        invariants(&m);
    }

    /// Models 6.18 ZONE_DEVICE (no devmap): GUP-fast takes plain references.
    #[test]
    fn gup_fast_zone_device_6_18_is_plain_refcounting() {
        let mut m = mm(KernelVersion::V6_18);
        let a = devdax(&mut m);
        m.user_access(a, false, &mut NoNotifier).unwrap();
        let pfn = m.lookup(a).unwrap().pfn;
        let p = get_user_page_fast_only(&mut m, a, FollFlags::LONGTERM).unwrap();
        assert_eq!(m.folio_info(pfn).unwrap().refcount, 2);
        put_page(&mut m, p);
        assert_eq!(m.folio_info(pfn).unwrap().refcount, 1);
        invariants(&m);
    }

    /// Models `try_grab_folio_fast()` → `folio_ref_try_add()`: a folio frozen at refcount 0
    /// (split/migration in progress) cannot be grabbed.
    #[test]
    fn gup_fast_bails_on_refcount_zero() {
        let mut m = mm(KernelVersion::V6_12);
        let a = anon(&mut m, 1 << 20, false);
        touch_write(&mut m, a);
        let pfn = m.lookup(a).unwrap().pfn;
        let frozen = m.freeze_folio(pfn).unwrap();
        assert!(get_user_page_fast_only(&mut m, a, FollFlags::WRITE).is_none());
        assert_eq!(m.last_gup().fast_bail, Some(FastBail::RefcountZero));
        m.unfreeze_folio(pfn, frozen);
        let p = get_user_page_fast_only(&mut m, a, FollFlags::WRITE).unwrap();
        put_page(&mut m, p);
        invariants(&m);
    }

    /// Models the re-check in `gup_fast_pte_range()`: when the PTE changed after the grab
    /// (a racing zap), the reference is put back and GUP-fast fails.
    #[test]
    fn gup_fast_recheck_drops_reference_when_entry_changed() {
        let mut m = mm(KernelVersion::V6_12);
        let a = anon(&mut m, 1 << 20, false);
        touch_write(&mut m, a);
        let pfn = m.lookup(a).unwrap().pfn;
        let p = get_user_page_fast_only(&mut m, a, FollFlags::empty()).unwrap();
        m.inject_gup_fast_race();
        assert!(get_user_page_fast_only(&mut m, a, FollFlags::empty()).is_none());
        assert_eq!(m.last_gup().fast_bail, Some(FastBail::Changed));
        // Only our first reference keeps the (now unmapped) folio alive.
        let f = m.folio_info(pfn).unwrap();
        assert_eq!((f.refcount, f.mapcount), (1, 0));
        put_page(&mut m, p);
        assert!(m.folio_info(pfn).is_none(), "freed with the last reference");
        invariants(&m);
    }

    /// Models `gup_can_follow_protnone()` + `faultin_page()`: with FOLL_HONOR_NUMA_FAULT
    /// (KVM's `hva_to_pfn_slow()`) a protnone PTE is not followed but faulted (NUMA hinting
    /// fault), while `follow_page()` without the flag follows it (seed 002).
    #[test]
    fn honor_numa_fault_faults_protnone_while_follow_page_follows_it() {
        let mut m = mm(KernelVersion::V6_12);
        let a = anon(&mut m, 1 << 20, false);
        touch_write(&mut m, a);
        m.numa_scan(a, 1 << 20, &mut NoNotifier).unwrap();
        assert!(m.lookup(a).unwrap().protnone);
        let FollowPage::Page { page_ref, .. } = follow_page(&mut m, a, FollFlags::empty()) else {
            panic!("follow_page must follow a protnone PTE");
        };
        assert!(page_ref.is_none());
        assert!(m.lookup(a).unwrap().protnone, "follow_page does not fault");
        assert_eq!(
            follow_page(&mut m, a, FollFlags::HONOR_NUMA_FAULT),
            FollowPage::NoPage
        );
        let mut log = NotifierLog::new();
        let p = get_user_pages_unlocked(&mut m, a, FollFlags::HONOR_NUMA_FAULT, &mut log).unwrap();
        assert_eq!(m.last_gup().host_faults, vec![HostFault::Numa]);
        assert_eq!(m.last_gup().path, GupPath::Slow);
        assert!(!m.lookup(a).unwrap().protnone);
        put_page(&mut m, p);
        invariants(&m);
    }

    /// Models the slow path of spec trace 1: a read GUP faults in the zero page and
    /// `follow_page_pte()` returns it (referenced with FOLL_GET); GUP-fast FOLL_WRITE then
    /// fails, and a write GUP COWs under CLEAR 4K.
    #[test]
    fn slow_gup_returns_zero_page_then_write_gup_cows() {
        let mut m = mm(KernelVersion::V6_12);
        let a = anon(&mut m, 1 << 20, false);
        let mut log = NotifierLog::new();
        let p = get_user_pages_unlocked(&mut m, a, FollFlags::HONOR_NUMA_FAULT, &mut log).unwrap();
        assert_eq!(p.pfn(), m.zero_pfn());
        assert_eq!(m.last_gup().host_faults, vec![HostFault::AnonZero]);
        put_page(&mut m, p);
        assert!(get_user_page_fast_only(&mut m, a, FollFlags::WRITE).is_none());
        let w = get_user_pages_unlocked(
            &mut m,
            a,
            FollFlags::WRITE | FollFlags::HONOR_NUMA_FAULT,
            &mut log,
        )
        .unwrap();
        assert_eq!(m.last_gup().host_faults, vec![HostFault::WpCopy]);
        assert_eq!(
            log.start_triples(),
            vec![(NotifierEvent::Clear, a.0, a.0 + 0x1000)]
        );
        assert!(w.writable());
        put_page(&mut m, w);
        let f = get_user_page_fast_only(&mut m, a, FollFlags::WRITE).unwrap();
        put_page(&mut m, f);
        invariants(&m);
    }

    /// Models `check_vma_flags()`: a write GUP on a read-only mapping is -EFAULT without
    /// FOLL_FORCE; with FOLL_FORCE on a private mapping the COW is broken and
    /// `can_follow_write_pte()` accepts the exclusive anon page although the PTE stays
    /// read-only.
    #[test]
    fn foll_force_writes_through_readonly_private_mapping() {
        let mut m = mm(KernelVersion::V6_12);
        let mut req = MmapRequest::anon(BASE, 1 << 20);
        req.prot = crate::host::Prot::R;
        let a = m.mmap(req).unwrap();
        let e = get_user_pages_unlocked(&mut m, a, FollFlags::WRITE, &mut NoNotifier);
        assert!(matches!(e, Err(GupError::Efault(_))));
        let p = get_user_pages_unlocked(
            &mut m,
            a,
            FollFlags::WRITE | FollFlags::FORCE,
            &mut NoNotifier,
        )
        .unwrap();
        let mm_entry = m.lookup(a).unwrap();
        assert!(
            !mm_entry.writable,
            "FOLL_FORCE never makes the PTE writable"
        );
        assert_eq!(p.pfn(), mm_entry.pfn);
        assert!(m.folio_info(p.pfn()).unwrap().anon_exclusive);
        put_page(&mut m, p);
        invariants(&m);
    }

    /// Models `gup_must_unshare()` + FAULT_FLAG_UNSHARE: a read-only FOLL_PIN of an anon
    /// page shared with a forked child must unshare first (-EMLINK → `do_wp_page()` copy
    /// that stays read-only), so the pin is on an exclusive page.
    #[test]
    fn readonly_pin_of_shared_anon_page_unshares_first() {
        let mut m = mm(KernelVersion::V6_12);
        let a = anon(&mut m, 1 << 20, false);
        touch_write(&mut m, a);
        let (_child, _) = m.fork(&mut NoNotifier).unwrap();
        let old = m.lookup(a).unwrap().pfn;
        assert_eq!(
            follow_page(&mut m, a, FollFlags::PIN),
            FollowPage::MustUnshare
        );
        assert!(get_user_page_fast_only(&mut m, a, FollFlags::PIN).is_none());
        assert_eq!(m.last_gup().fast_bail, Some(FastBail::MustUnshare));
        let mut log = NotifierLog::new();
        let p = get_user_pages_fast(&mut m, a, FollFlags::PIN, &mut log).unwrap();
        assert_eq!(m.last_gup().host_faults, vec![HostFault::WpCopy]);
        assert_ne!(p.pfn(), old);
        assert!(
            !m.lookup(a).unwrap().writable,
            "unshare keeps the PTE read-only"
        );
        let f = m.folio_info(p.pfn()).unwrap();
        assert_eq!((f.pincount, f.refcount), (1, 2));
        unpin_user_page(&mut m, p);
        invariants(&m);
    }

    /// Models `gup_fast_pmd_leaf()`: a THP range is grabbed with one refcount add per leaf
    /// and every reference is released by `put_page()`.
    #[test]
    fn gup_fast_range_over_thp_takes_one_ref_per_page() {
        let mut m = mm(KernelVersion::V6_12);
        let a = anon(&mut m, 2 * M2, true);
        touch_write(&mut m, a);
        let head = m.lookup(a).unwrap().pfn;
        let mut out = Vec::new();
        assert_eq!(
            get_user_pages_fast_only(&mut m, a, 512, FollFlags::WRITE, &mut out),
            512
        );
        assert_eq!(m.folio_info(head).unwrap().refcount, 513);
        assert_eq!(out[7].pfn(), head.add(7));
        for p in out {
            put_page(&mut m, p);
        }
        assert_eq!(m.folio_info(head).unwrap().refcount, 1);
        invariants(&m);
    }

    /// Models `follow_huge_pmd()`: slow GUP grabs the huge zero folio through `pmd_page()`
    /// on 6.12 and on 6.18 (where the PMD is special and GUP-fast bails).
    #[test]
    fn slow_gup_grabs_huge_zero_folio_on_6_12_and_6_18() {
        for k in [KernelVersion::V6_12, KernelVersion::V6_18] {
            let mut m = mm(k);
            let a = anon(&mut m, 2 * M2, true);
            m.user_access(a, false, &mut NoNotifier).unwrap();
            let fast = get_user_page_fast_only(&mut m, a.add(0x3000), FollFlags::empty());
            if k == KernelVersion::V6_18 {
                assert!(fast.is_none());
                assert_eq!(m.last_gup().fast_bail, Some(FastBail::Special));
            } else {
                put_page(&mut m, fast.expect("6.12: huge zero PMD is not special"));
            }
            let p =
                get_user_pages_unlocked(&mut m, a.add(0x3000), FollFlags::empty(), &mut NoNotifier)
                    .unwrap();
            assert_eq!(p.pfn(), m.huge_zero_pfn().add(3));
            put_page(&mut m, p);
        }
    }

    /// Models `faultin_page()`'s flag translation through a device fault: a write GUP on a
    /// MIXEDMAP I/O pfn with write-notify faults twice (insert read-only, then
    /// `pfn_mkwrite`) and ends in -EEXIST (no struct page).
    #[test]
    fn slow_gup_on_mixedmap_io_pfn_is_eexist_after_two_faults() {
        let mut m = mm(KernelVersion::V6_12);
        let mut spec = DeviceSpec::pfnmap(Pfn(0x2_0000));
        spec.kind = DeviceKind::Mixedmap;
        spec.pfn_mkwrite = true;
        let a = device(&mut m, BASE, 0x10_000, true, spec);
        let r = get_user_pages_unlocked(&mut m, a, FollFlags::WRITE, &mut NoNotifier);
        assert_eq!(r, Err(GupError::Eexist(a)));
        assert_eq!(
            m.last_gup().host_faults,
            vec![HostFault::Pfnmap, HostFault::PfnMkwrite]
        );
        assert_eq!(m.last_gup().faultin_calls, 2);
    }

    /// Models `fixup_user_fault()`: it does not re-check writability, so a write fixup on a
    /// write-notify pfnmap returns after the NOPAGE fault with a read-only PTE (KVM then
    /// sees a present read-only entry: RO_FAULT → emulation).
    #[test]
    fn fixup_user_fault_accepts_readonly_nopage_result() {
        let mut m = mm(KernelVersion::V6_12);
        let mut spec = DeviceSpec::pfnmap(Pfn(0x10_0000));
        spec.pfn_mkwrite = true;
        let a = device(&mut m, BASE, 1 << 20, true, spec);
        let f = fixup_user_fault(&mut m, a, FaultFlags::WRITE, &mut NoNotifier).unwrap();
        assert_eq!(f.len(), 1);
        let args = follow_pfnmap_start(&m, a).unwrap();
        assert!(!args.writable && args.special);
        assert_eq!(args.pfn, Pfn(0x10_0000));
    }

    /// Models `follow_pfnmap_start()`'s -EINVAL cases.
    #[test]
    fn follow_pfnmap_refuses_non_pfnmap_and_absent() {
        let mut m = mm(KernelVersion::V6_12);
        let a = anon(&mut m, 1 << 20, false);
        assert_eq!(
            follow_pfnmap_start(&m, a),
            Err(FollowPfnmapError::NotPfnmap(a))
        );
        let b = device(
            &mut m,
            Hva(BASE.0 + G1),
            1 << 20,
            true,
            DeviceSpec::pfnmap(Pfn(0x100)),
        );
        assert_eq!(
            follow_pfnmap_start(&m, b),
            Err(FollowPfnmapError::NotPresent(b))
        );
    }

    /// Models `mprotect(PROT_NONE)` + `gup_can_follow_protnone()`: entries of an inaccessible
    /// VMA are protnone; GUP-fast bails, a plain read GUP is -EFAULT (`check_vma_flags()`),
    /// FOLL_FORCE follows the entry even with FOLL_HONOR_NUMA_FAULT (not a NUMA hint: the
    /// VMA is inaccessible) without faulting.
    #[test]
    fn prot_none_vma_is_followed_only_with_force() {
        let mut m = mm(KernelVersion::V6_12);
        let a = anon(&mut m, 1 << 20, false);
        touch_write(&mut m, a);
        m.mprotect(a, 1 << 20, crate::host::Prot::NONE, &mut NoNotifier)
            .unwrap();
        assert!(m.lookup(a).unwrap().protnone);
        assert!(get_user_page_fast_only(&mut m, a, FollFlags::empty()).is_none());
        let e = get_user_pages_unlocked(&mut m, a, FollFlags::empty(), &mut NoNotifier);
        assert_eq!(e, Err(GupError::Efault(a)));
        let p = get_user_pages_unlocked(
            &mut m,
            a,
            FollFlags::FORCE | FollFlags::HONOR_NUMA_FAULT,
            &mut NoNotifier,
        )
        .unwrap();
        assert_eq!(m.last_gup().faultin_calls, 0);
        assert!(m.lookup(a).unwrap().protnone);
        put_page(&mut m, p);
        invariants(&m);
    }

    /// Models `do_huge_pmd_numa_page()` restore via slow GUP with FOLL_HONOR_NUMA_FAULT on a
    /// protnone THP: no notifier, the PMD comes back (writable: exclusive anon).
    #[test]
    fn honor_numa_fault_on_protnone_thp_restores_pmd_without_notifier() {
        let mut m = mm(KernelVersion::V6_12);
        let a = anon(&mut m, 2 * M2, true);
        touch_write(&mut m, a);
        m.numa_scan(a, 2 * M2, &mut NoNotifier).unwrap();
        assert!(m.lookup(a).unwrap().protnone);
        let mut log = NotifierLog::new();
        let p = get_user_pages_unlocked(
            &mut m,
            a.add(0x7000),
            FollFlags::WRITE | FollFlags::HONOR_NUMA_FAULT,
            &mut log,
        )
        .unwrap();
        assert_eq!(m.last_gup().host_faults, vec![HostFault::Numa]);
        assert!(log.calls.is_empty());
        let e = m.lookup(a).unwrap();
        assert!(e.level == Level::Pmd2M && e.writable && !e.protnone);
        put_page(&mut m, p);
        invariants(&m);
    }

    /// Models FOLL_TOUCH in `follow_huge_pmd()` (`touch_pmd()`): an old PMD becomes young,
    /// and dirty for a write GUP; the folio is marked dirty/referenced.
    #[test]
    fn foll_touch_marks_pmd_young_and_dirty() {
        let mut m = mm(KernelVersion::V6_12);
        let a = anon(&mut m, 2 * M2, true);
        touch_write(&mut m, a);
        m.clear_young(a, 2 * M2, &mut NoNotifier).unwrap();
        assert!(!m.lookup(a).unwrap().young);
        let p = get_user_pages_unlocked(&mut m, a, FollFlags::WRITE, &mut NoNotifier).unwrap();
        let e = m.lookup(a).unwrap();
        assert!(e.young && e.dirty);
        assert!(m.folio_info(p.pfn()).unwrap().referenced);
        put_page(&mut m, p);
    }

    /// Models `__get_user_pages()`'s `fatal_signal_pending()` check and
    /// `gup_signal_pending()` after a dropped lock: SIGKILL gives -EINTR; a non-fatal signal
    /// only interrupts a FOLL_INTERRUPTIBLE wait (here a userfaultfd wait).
    #[test]
    fn pending_signals_interrupt_gup() {
        let mut m = mm(KernelVersion::V6_12);
        let a = anon(&mut m, 1 << 20, false);
        m.set_pending_signal(crate::host::PendingSignal::Fatal);
        let e = get_user_pages_unlocked(&mut m, a, FollFlags::empty(), &mut NoNotifier);
        assert_eq!(e, Err(GupError::Eintr(a)));
        m.set_pending_signal(crate::host::PendingSignal::NonFatal);
        m.uffd_register(
            a,
            1 << 20,
            crate::host::UffdModes {
                missing: true,
                wp: false,
                minor: false,
            },
        )
        .unwrap();
        let e = get_user_pages_unlocked(&mut m, a, FollFlags::empty(), &mut NoNotifier);
        assert_eq!(e, Err(GupError::NoPage(a)));
        let e = get_user_pages_unlocked(&mut m, a, FollFlags::INTERRUPTIBLE, &mut NoNotifier);
        assert_eq!(e, Err(GupError::Eintr(a)));
    }

    /// Models FOLL_SPLIT_PMD in `follow_pmd_mask()`: the THP is split (CLEAR 2M) and the
    /// page is taken from the PTE level.
    #[test]
    fn foll_split_pmd_splits_under_clear_2m() {
        let mut m = mm(KernelVersion::V6_12);
        let a = anon(&mut m, 2 * M2, true);
        touch_write(&mut m, a);
        let mut log = NotifierLog::new();
        let p =
            get_user_pages_unlocked(&mut m, a.add(0x4000), FollFlags::SPLIT_PMD, &mut log).unwrap();
        assert_eq!(
            log.start_triples(),
            vec![(NotifierEvent::Clear, a.0, a.0 + M2)]
        );
        assert_eq!(m.last_gup().notifiers.len(), 1);
        assert_eq!(m.leaf_level(a), Some(Level::Pte4K));
        put_page(&mut m, p);
        invariants(&m);
    }

    /// Models `gup_fast_folio_allowed()`: an order-0 folio must be checked for secretmem,
    /// which needs `folio->mapping`; a driver page inserted with `vm_insert_page()` has
    /// none, so GUP-fast refuses it and the slow path (which has the VMA) takes it.
    #[test]
    fn gup_fast_refuses_order0_folio_without_mapping() {
        let mut m = mm(KernelVersion::V6_12);
        let mut spec = DeviceSpec::pfnmap(Pfn(0));
        spec.kind = DeviceKind::Mixedmap;
        spec.base_pfn = None;
        let a = device(&mut m, BASE, 0x10_000, true, spec);
        m.user_access(a, true, &mut NoNotifier).unwrap();
        assert!(get_user_page_fast_only(&mut m, a, FollFlags::WRITE).is_none());
        assert_eq!(m.last_gup().fast_bail, Some(FastBail::FolioNotAllowed));
        let p = get_user_pages_fast(&mut m, a, FollFlags::WRITE, &mut NoNotifier).unwrap();
        assert_eq!(m.last_gup().path, GupPath::Slow);
        assert_eq!(
            m.folio_info(p.pfn()).unwrap().refcount,
            3,
            "driver + mapping + GUP"
        );
        put_page(&mut m, p);
        invariants(&m);
    }

    /// Models `get_page_unless_zero()`.
    #[test]
    fn get_page_unless_zero_fails_on_free_or_io_pfn() {
        let mut m = mm(KernelVersion::V6_12);
        let a = anon(&mut m, 1 << 20, false);
        touch_write(&mut m, a);
        let pfn = m.lookup(a).unwrap().pfn;
        let p = get_page_unless_zero(&mut m, pfn).unwrap();
        put_page(&mut m, p);
        assert!(get_page_unless_zero(&mut m, Pfn(0x100)).is_none());
        let f = m.freeze_folio(pfn).unwrap();
        assert!(get_page_unless_zero(&mut m, pfn).is_none());
        m.unfreeze_folio(pfn, f);
    }
}
