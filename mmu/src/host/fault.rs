//! Host fault handling: `handle_mm_fault()` and what it dispatches to (mm/memory.c,
//! mm/huge_memory.c).

use super::device::DeviceKind;
use super::folio::ff;
use super::pagetable::{PmdSlot, PudSlot};
use super::pte::Entry;
use super::vma::{Backing, VmFlags, Vma};
use super::{Mm, ThpMode};
use crate::notifier::{MmuNotifier, NotifierEvent, NotifierRange};
use crate::types::{flag_set, Hva, Level, NodeId, Pfn};
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
    /// `handle_userfault()`: a missing or write-protect fault in a userfaultfd-registered
    /// range waits for userspace (VM_FAULT_RETRY).
    Userfault,
    /// A hwpoison entry: VM_FAULT_HWPOISON.
    Hwpoison,
    /// `hugetlb_no_page()`: a hugetlb folio mapped by a huge leaf (from the page cache or
    /// newly allocated and zeroed).
    Hugetlb,
    /// `hugetlb_wp()` making the huge entry writable in place (shared mapping, or an
    /// anonymous folio mapped once).
    HugetlbWp,
    /// `hugetlb_wp()` copying into a new anonymous huge folio (CLEAR over the huge page).
    HugetlbCow,
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
            HostFault::Userfault => "userfault",
            HostFault::Hwpoison => "hwpoison",
            HostFault::Hugetlb => "hugetlb",
            HostFault::HugetlbWp => "hugetlb-wp",
            HostFault::HugetlbCow => "hugetlb-cow",
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

/// Internal result of a handler: a final outcome or "fall back to the next level".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ret {
    Out(FaultOutcome),
    Fallback,
}

/// The fault in progress (`struct vm_fault`).
pub(crate) struct Vmf<'n> {
    pub hva: Hva,
    pub flags: FaultFlags,
    pub handlers: Vec<HostFault>,
    pub notifiers: Vec<NotifierRange>,
    pub notifier: &'n mut dyn MmuNotifier,
}

impl Vmf<'_> {
    pub(crate) fn write(&self) -> bool {
        self.flags.contains(FaultFlags::WRITE)
    }
    pub(crate) fn wants_wp(&self) -> bool {
        self.flags
            .intersects(FaultFlags::WRITE | FaultFlags::UNSHARE)
    }
}

impl Mm {
    /// Models `handle_mm_fault()` (mm/memory.c) for the process address space: looks the
    /// VMA up and dispatches as `__handle_mm_fault()` does (PUD, PMD, then PTE level).
    ///
    /// Access permission is the caller's business (the arch fault handler's
    /// `access_error()`, GUP's `check_vma_flags()`, `vma_permits_fault()`), as in Linux:
    /// FOLL_FORCE writes to a read-only private mapping reach `do_wp_page()`.
    pub fn handle_mm_fault(
        &mut self,
        hva: Hva,
        flags: FaultFlags,
        notifier: &mut dyn MmuNotifier,
    ) -> FaultReport {
        let mut vmf = Vmf {
            hva,
            flags,
            handlers: Vec::new(),
            notifiers: Vec::new(),
            notifier,
        };
        let outcome = match self.space.vma(hva).cloned() {
            None => FaultOutcome::Sigsegv,
            Some(vma) => self.__handle_mm_fault(&vma, &mut vmf),
        };
        FaultReport {
            hva,
            flags,
            outcome,
            handlers: vmf.handlers,
            notifiers: vmf.notifiers,
        }
    }

    /// Sends start, runs `f`, sends end; records the range in the fault.
    pub(crate) fn notify_vmf<R>(
        &mut self,
        vmf: &mut Vmf<'_>,
        range: NotifierRange,
        f: impl FnOnce(&mut Mm) -> R,
    ) -> R {
        self.notify(&mut *vmf.notifier, &mut vmf.notifiers, range, f)
    }

    /// `thp_vma_allowable_order()` + `thp_vma_suitable_order()` (include/linux/huge_mm.h):
    /// may a `level` leaf be created at `hva` by a fault in `vma`?
    pub(crate) fn thp_allowed(&self, vma: &Vma, hva: Hva, level: Level) -> bool {
        if vma.flags.contains(VmFlags::NOHUGEPAGE) {
            return false;
        }
        let haddr = hva.align_down(level);
        if haddr < vma.start || haddr.add(level.size()) > vma.end {
            return false;
        }
        match &vma.backing {
            Backing::Device(d) => d.max_level >= level && !d.remap,
            Backing::Anon if vma.is_anonymous() => {
                if level != Level::Pmd2M {
                    return false; // anon PUD THP does not exist: create_huge_pud() falls back.
                }
                match self.config.thp {
                    ThpMode::Always => true,
                    ThpMode::Madvise => vma.flags.contains(VmFlags::HUGEPAGE),
                    ThpMode::Never => false,
                }
            }
            // Divergence: shmem THP is not modelled.
            _ => false,
        }
    }

    /// The node a new page for `vma` comes from: the VMA's policy node if set, else the
    /// task's (`vma_alloc_folio()` → `policy_nodemask()`, mm/mempolicy.c).
    pub(crate) fn alloc_node(&self, vma: &Vma) -> NodeId {
        vma.node.unwrap_or(self.config.task_node)
    }

    /// Models `__handle_mm_fault()` (mm/memory.c).
    pub(crate) fn __handle_mm_fault(&mut self, vma: &Vma, vmf: &mut Vmf<'_>) -> FaultOutcome {
        if let Some(level) = vma.hugetlb_level() {
            // handle_mm_fault(): `if (unlikely(is_vm_hugetlb_page(vma))) hugetlb_fault()`.
            return self.hugetlb_fault(vma, level, vmf);
        }
        let hva = vmf.hva;
        // PUD level.
        let pud = match self.space.pt.pud_slot(hva) {
            None | Some(PudSlot::None) => None,
            Some(PudSlot::Leaf(e)) => Some(*e),
            Some(PudSlot::Table(_)) => Some(Entry::NONE),
        };
        match pud {
            None => {
                if self.thp_allowed(vma, hva, Level::Pud1G) {
                    if let Ret::Out(o) = self.create_huge(vma, vmf, Level::Pud1G) {
                        return o;
                    }
                }
            }
            Some(e) if !e.is_none() => {
                // A PUD leaf (THP-like: pfnmap/devmap).
                if vmf.write() && !e.is_write() {
                    // wp_huge_pud()
                    if !vma.is_anonymous() && vma.flags.contains(VmFlags::SHARED) {
                        if let Ret::Out(o) = self.device_huge_fault(vma, vmf, Level::Pud1G) {
                            return o;
                        }
                    }
                    self.split_huge_pud(vmf.hva, vmf.notifier, &mut vmf.notifiers);
                    vmf.handlers.push(HostFault::Split);
                } else {
                    self.set_leaf_accessed(hva, Level::Pud1G, vmf.write());
                    vmf.handlers.push(HostFault::Access);
                    return FaultOutcome::Done;
                }
            }
            Some(_) => {}
        }
        // PMD level.
        let pmd = match self.space.pt.pmd_slot(hva) {
            None | Some(PmdSlot::None) => None,
            Some(PmdSlot::Leaf(e)) => Some(*e),
            Some(PmdSlot::Table(_)) => Some(Entry::NONE),
        };
        match pmd {
            None => {
                if self.thp_allowed(vma, hva, Level::Pmd2M) {
                    if let Ret::Out(o) = self.create_huge(vma, vmf, Level::Pmd2M) {
                        return o;
                    }
                }
            }
            Some(e) if !e.is_none() => {
                if e.is_protnone() && vma.is_accessible() {
                    return self.do_huge_pmd_numa_page(vma, vmf, e);
                }
                if vmf.wants_wp() && !e.is_write() {
                    // wp_huge_pmd()
                    if vma.is_anonymous() {
                        if let Ret::Out(o) = self.do_huge_pmd_wp_page(vma, vmf, e) {
                            return o;
                        }
                    } else {
                        if vma.flags.contains(VmFlags::SHARED) && vma.device().is_some() {
                            if let Ret::Out(o) = self.device_huge_fault(vma, vmf, Level::Pmd2M) {
                                return o;
                            }
                        }
                        self.split_huge_pmd(vma, hva, vmf.notifier, &mut vmf.notifiers);
                        vmf.handlers.push(HostFault::Split);
                    }
                } else {
                    self.set_leaf_accessed(hva, Level::Pmd2M, vmf.write());
                    vmf.handlers.push(HostFault::Access);
                    return FaultOutcome::Done;
                }
            }
            Some(_) => {}
        }
        self.handle_pte_fault(vma, vmf)
    }

    /// `huge_pmd_set_accessed()` / `huge_pud_set_accessed()` / the tail of
    /// `handle_pte_fault()`: young, and dirty for a write. No notifier.
    fn set_leaf_accessed(&mut self, hva: Hva, level: Level, write: bool) {
        let bits = Entry::YOUNG | if write { Entry::DIRTY } else { 0 };
        match level {
            Level::Pud1G => {
                if let Some(PudSlot::Leaf(e)) = self.space.pt.pud_slot_mut(hva, false) {
                    *e = e.set(bits);
                }
            }
            Level::Pmd2M => {
                if let Some(PmdSlot::Leaf(e)) = self.space.pt.pmd_slot_mut(hva, false) {
                    *e = e.set(bits);
                }
            }
            Level::Pte4K => {
                if let Some(e) = self.space.pt.pte_mut(hva, false) {
                    *e = e.set(bits);
                }
            }
        }
    }

    /// `create_huge_pud()` / `create_huge_pmd()` (mm/memory.c).
    fn create_huge(&mut self, vma: &Vma, vmf: &mut Vmf<'_>, level: Level) -> Ret {
        if vma.is_anonymous() {
            if level == Level::Pmd2M {
                return self.do_huge_pmd_anonymous_page(vma, vmf);
            }
            return Ret::Fallback;
        }
        if vma.device().is_some() {
            return self.device_huge_fault(vma, vmf, level);
        }
        Ret::Fallback
    }

    /// Models `do_huge_pmd_anonymous_page()` (mm/huge_memory.c): a read maps the huge zero
    /// folio read-only (`set_huge_zero_folio()`, special from 6.18); a write allocates a
    /// THP (`vma_alloc_anon_folio_pmd()`), falling back to PTEs when that fails.
    fn do_huge_pmd_anonymous_page(&mut self, vma: &Vma, vmf: &mut Vmf<'_>) -> Ret {
        let haddr = vmf.hva.align_down(Level::Pmd2M);
        // vmf_anon_prepare() runs before the zero-page check: even a read sets anon_vma,
        // so fork copies (and notifies) THP-eligible VMAs that only saw reads.
        if let Some(v) = self.space.vmas.get_mut(&vma.start.0) {
            v.anon_vma = true;
        }
        if !vmf.write() && self.config.use_huge_zero_page {
            let mut bits = vma.page_prot() | Entry::HUGE;
            if self.config.kernel.huge_zero_pmd_special() {
                bits |= Entry::SPECIAL;
            }
            let e = Entry::new(self.frames.huge_zero_pfn, bits);
            self.set_pmd(haddr, e);
            vmf.handlers.push(HostFault::HugeZero);
            return Ret::Out(FaultOutcome::Done);
        }
        let Some(id) = self.frames.alloc(9, self.alloc_node(vma)) else {
            return Ret::Fallback;
        };
        self.new_anon_folio(id, vma);
        let e = self.anon_entry(vma, Pfn(self.frames.folios[id].pfn), Level::Pmd2M);
        self.set_pmd(haddr, e);
        vmf.handlers.push(HostFault::Thp);
        Ret::Out(FaultOutcome::Done)
    }

    /// A fresh anonymous folio now mapped once (the allocation reference becomes the
    /// mapping's reference).
    pub(crate) fn new_anon_folio(&mut self, id: usize, vma: &Vma) {
        let f = &mut self.frames.folios[id];
        f.flags |= ff::ANON | ff::ANON_EXCLUSIVE | ff::DIRTY;
        f.mapcount = 1;
        if let Some(v) = self.space.vmas.get_mut(&vma.start.0) {
            v.anon_vma = true;
        }
    }

    /// The entry for a freshly written anonymous page: young, dirty, writable if VM_WRITE.
    pub(crate) fn anon_entry(&self, vma: &Vma, pfn: Pfn, level: Level) -> Entry {
        let mut bits = vma.page_prot() | Entry::YOUNG | Entry::DIRTY | Entry::SOFT_DIRTY;
        if level != Level::Pte4K {
            bits |= Entry::HUGE;
        }
        vma.maybe_mkwrite(Entry::new(pfn, bits))
    }

    pub(crate) fn set_pmd(&mut self, haddr: Hva, e: Entry) {
        if let Some(slot) = self.space.pt.pmd_slot_mut(haddr, true) {
            *slot = PmdSlot::Leaf(e);
        }
    }

    pub(crate) fn set_pud(&mut self, haddr: Hva, e: Entry) {
        if let Some(slot) = self.space.pt.pud_slot_mut(haddr, true) {
            *slot = PudSlot::Leaf(e);
        }
    }

    pub(crate) fn set_pte(&mut self, hva: Hva, e: Entry) {
        if let Some(p) = self.space.pt.pte_mut(hva, true) {
            *p = e;
        }
    }

    /// Models `do_huge_pmd_wp_page()` (mm/huge_memory.c).
    ///
    /// Huge zero PMD: 6.12 splits (CLEAR 2M) and falls back to the PTE-level COW; 6.13+
    /// `do_huge_zero_wp_pmd()` allocates a THP under CLEAR [haddr, +2M), falling back to the
    /// split when allocation fails. Anon THP: reuse when exclusive (or the only reference),
    /// else split and fall back.
    fn do_huge_pmd_wp_page(&mut self, vma: &Vma, vmf: &mut Vmf<'_>, orig: Entry) -> Ret {
        let haddr = vmf.hva.align_down(Level::Pmd2M);
        if orig.is_uffd_wp() && vma.flags.contains(VmFlags::UFFD_WP) {
            // userfaultfd_huge_pmd_wp()
            vmf.handlers.push(HostFault::Userfault);
            return Ret::Out(FaultOutcome::Retry);
        }
        if self.frames.is_huge_zero_pfn(orig.pfn()) {
            if self.config.kernel.huge_zero_wp_allocates_thp() {
                if let Some(id) = self.frames.alloc(9, self.alloc_node(vma)) {
                    let range = NotifierRange::new(
                        NotifierEvent::Clear,
                        haddr,
                        haddr.add(Level::Pmd2M.size()),
                    );
                    self.notify_vmf(vmf, range, |mm| {
                        mm.new_anon_folio(id, vma);
                        let e = mm.anon_entry(vma, Pfn(mm.frames.folios[id].pfn), Level::Pmd2M);
                        mm.set_pmd(haddr, e);
                    });
                    vmf.handlers.push(HostFault::HugeZeroWpThp);
                    return Ret::Out(FaultOutcome::Done);
                }
            }
            self.split_huge_pmd(vma, vmf.hva, vmf.notifier, &mut vmf.notifiers);
            vmf.handlers.push(HostFault::Split);
            return Ret::Fallback;
        }
        if let Some(id) = self.frames.folio_of(orig.pfn()) {
            let f = &self.frames.folios[id];
            let reuse = f.has(ff::ANON)
                && (f.has(ff::ANON_EXCLUSIVE) || (f.refcount == 1 && f.mapcount == 1));
            if reuse && !vmf.flags.contains(FaultFlags::UNSHARE) {
                self.frames.folios[id].flags |= ff::ANON_EXCLUSIVE;
                let e =
                    vma.maybe_mkwrite(orig.set(Entry::YOUNG | Entry::DIRTY | Entry::SOFT_DIRTY));
                self.set_pmd(haddr, e);
                vmf.handlers.push(HostFault::WpReuse);
                return Ret::Out(FaultOutcome::Done);
            }
            if reuse {
                // UNSHARE of an exclusive page: nothing to do.
                self.frames.folios[id].flags |= ff::ANON_EXCLUSIVE;
                return Ret::Out(FaultOutcome::Done);
            }
        }
        self.split_huge_pmd(vma, vmf.hva, vmf.notifier, &mut vmf.notifiers);
        vmf.handlers.push(HostFault::Split);
        Ret::Fallback
    }

    /// Models `__split_huge_pmd()` (mm/huge_memory.c): CLEAR [haddr, +2M). An anon THP
    /// (or the huge zero folio, `__split_huge_zero_page_pmd()`) becomes 512 PTEs; any other
    /// leaf (pfnmap, devmap, file) is just cleared.
    pub(crate) fn split_huge_pmd(
        &mut self,
        vma: &Vma,
        hva: Hva,
        notifier: &mut dyn MmuNotifier,
        log: &mut Vec<NotifierRange>,
    ) {
        let haddr = hva.align_down(Level::Pmd2M);
        let Some(PmdSlot::Leaf(e)) = self.space.pt.pmd_slot(haddr).cloned() else {
            return;
        };
        let range = NotifierRange::new(NotifierEvent::Clear, haddr, haddr.add(Level::Pmd2M.size()));
        self.notify(notifier, log, range, |mm| {
            mm.split_pmd_locked(vma, haddr, e)
        });
    }

    /// `__split_huge_pmd_locked()` (mm/huge_memory.c).
    pub(crate) fn split_pmd_locked(&mut self, vma: &Vma, haddr: Hva, e: Entry) {
        let is_zero = self.frames.is_huge_zero_pfn(e.pfn());
        let folio = self.frames.folio_of(e.pfn());
        let anon = folio.is_some_and(|id| self.frames.folios[id].has(ff::ANON));
        if !(is_zero || (vma.is_anonymous() && anon)) {
            // Non-anon: the pmd is just cleared (zap_deposited_table); drop its reference.
            if let Some(slot) = self.space.pt.pmd_slot_mut(haddr, false) {
                *slot = PmdSlot::None;
            }
            self.drop_leaf_ref(e);
            return;
        }
        if let Some(slot) = self.space.pt.pmd_slot_mut(haddr, false) {
            *slot = PmdSlot::None;
        }
        let keep = e.clear(Entry::HUGE);
        for i in 0..512u64 {
            let va = haddr.add(i << 12);
            let pte = if is_zero {
                // __split_huge_zero_page_pmd(): special zero-page PTEs with vm_page_prot.
                Entry::new(self.frames.zero_pfn, vma.page_prot() | Entry::SPECIAL)
            } else {
                // The PMD's bits (write, dirty, young, protnone, soft-dirty) on every PTE.
                Entry::new(e.pfn().add(i), keep.0)
            };
            self.set_pte(va, pte);
        }
        if let Some(id) = folio {
            if !is_zero {
                // folio_ref_add(HPAGE_PMD_NR - 1) and one mapping per PTE.
                self.frames.folios[id].refcount += 511;
                self.frames.folios[id].mapcount += 511;
            }
        }
    }

    /// Models `__split_huge_pud()` (mm/huge_memory.c): CLEAR 1G; PUD leaves are never anonymous, so
    /// the pud is cleared.
    pub(crate) fn split_huge_pud(
        &mut self,
        hva: Hva,
        notifier: &mut dyn MmuNotifier,
        log: &mut Vec<NotifierRange>,
    ) {
        let haddr = hva.align_down(Level::Pud1G);
        let Some(PudSlot::Leaf(e)) = self.space.pt.pud_slot(haddr).cloned() else {
            return;
        };
        let range = NotifierRange::new(NotifierEvent::Clear, haddr, haddr.add(Level::Pud1G.size()));
        self.notify(notifier, log, range, |mm| {
            if let Some(s) = mm.space.pt.pud_slot_mut(haddr, false) {
                *s = PudSlot::None;
            }
            mm.drop_leaf_ref(e);
        });
    }

    /// The folio a leaf holds a reference (and mapcount) on: not special, not devmap, not
    /// the zero pages, and with a struct page.
    pub(crate) fn leaf_ref_folio(&self, e: Entry) -> Option<usize> {
        if !e.is_present() || e.is_special() || e.is_devmap() {
            return None;
        }
        let pfn = e.pfn();
        if self.frames.is_zero_pfn(pfn) || self.frames.is_huge_zero_pfn(pfn) {
            return None;
        }
        self.frames.folio_of(pfn)
    }

    /// Drops what a leaf held (`zap_present_ptes()` (mm/memory.c) / `zap_huge_pmd()`): mapcount and
    /// reference.
    pub(crate) fn drop_leaf_ref(&mut self, e: Entry) {
        if let Some(id) = self.leaf_ref_folio(e) {
            let f = &mut self.frames.folios[id];
            f.mapcount -= 1;
            if e.is_dirty() {
                f.flags |= ff::DIRTY;
            }
            self.frames.put(id, 1);
        }
    }

    /// Models `handle_pte_fault()` (mm/memory.c).
    fn handle_pte_fault(&mut self, vma: &Vma, vmf: &mut Vmf<'_>) -> FaultOutcome {
        let hva = vmf.hva;
        let e = self.space.pt.pte(hva).unwrap_or(Entry::NONE);
        if e.is_none() {
            return self.do_pte_missing(vma, vmf);
        }
        if !e.is_present() {
            if e.is_hwpoison() {
                vmf.handlers.push(HostFault::Hwpoison);
                return FaultOutcome::Hwpoison;
            }
            // Divergence: swap and migration entries are not modelled.
            return FaultOutcome::Sigbus;
        }
        if e.is_protnone() && vma.is_accessible() {
            return self.do_numa_page(vma, vmf, e);
        }
        if vmf.wants_wp() && !e.is_write() {
            return self.do_wp_page(vma, vmf, e);
        }
        self.set_leaf_accessed(hva, Level::Pte4K, vmf.write());
        vmf.handlers.push(HostFault::Access);
        FaultOutcome::Done
    }

    /// `do_pte_missing()`: anonymous or file/device fault.
    fn do_pte_missing(&mut self, vma: &Vma, vmf: &mut Vmf<'_>) -> FaultOutcome {
        if vma.is_anonymous() {
            return self.do_anonymous_page(vma, vmf);
        }
        if vma.device().is_some() {
            return self.device_fault(vma, vmf);
        }
        self.do_file_fault(vma, vmf)
    }

    /// Models `do_anonymous_page()` (mm/memory.c): a read maps the shared zero page
    /// (special, read-only); a write allocates a zeroed, exclusive, writable page.
    fn do_anonymous_page(&mut self, vma: &Vma, vmf: &mut Vmf<'_>) -> FaultOutcome {
        if vma.flags.contains(VmFlags::UFFD_MISSING) {
            // handle_userfault(): the fault waits for userspace (UFFDIO_COPY/ZEROPAGE).
            vmf.handlers.push(HostFault::Userfault);
            return FaultOutcome::Retry;
        }
        if !vmf.write() {
            let e = Entry::new(self.frames.zero_pfn, vma.page_prot() | Entry::SPECIAL);
            self.set_pte(vmf.hva, e);
            vmf.handlers.push(HostFault::AnonZero);
            return FaultOutcome::Done;
        }
        let Some(id) = self.frames.alloc(0, self.alloc_node(vma)) else {
            return FaultOutcome::Oom;
        };
        self.new_anon_folio(id, vma);
        let e = self.anon_entry(vma, Pfn(self.frames.folios[id].pfn), Level::Pte4K);
        self.set_pte(vmf.hva, e);
        vmf.handlers.push(HostFault::Anon);
        FaultOutcome::Done
    }

    /// The page-cache folio for (file, index), allocated on first use
    /// (`filemap_fault()` (mm/filemap.c) / `shmem_fault()`): the cache holds one reference. For a
    /// VM_MIXEDMAP driver the "cache" is the driver's own page array: its pages hold the
    /// driver's reference (DRIVER) and have no `mapping`, like `vm_insert_page()`d kernel
    /// pages.
    pub(crate) fn page_cache_folio(
        &mut self,
        file: u32,
        index: u64,
        node: NodeId,
        driver: bool,
    ) -> Option<usize> {
        if let Some(id) = self.page_cache.get(&(file, index)) {
            return Some(*id);
        }
        let id = self.frames.alloc(0, node)?;
        let f = &mut self.frames.folios[id];
        f.flags |= if driver { ff::DRIVER } else { ff::PAGECACHE };
        f.file = file;
        f.index = u32::try_from(index).unwrap_or(u32::MAX);
        self.page_cache.insert((file, index), id);
        Some(id)
    }

    /// Models `do_read_fault()`, `do_cow_fault()` and `do_shared_fault()` (mm/memory.c) for
    /// shmem / shared anonymous mappings (and mixedmap drivers that map RAM pages).
    fn do_file_fault(&mut self, vma: &Vma, vmf: &mut Vmf<'_>) -> FaultOutcome {
        let index = vma.linear_page_index(vmf.hva);
        if vma.flags.contains(VmFlags::UFFD_MINOR)
            && self.page_cache.contains_key(&(vma.file, index))
        {
            // shmem_get_folio_gfp(): the folio is cached, the VMA is VM_UFFD_MINOR:
            // handle_userfault(vmf, VM_UFFD_MINOR) (mm/shmem.c).
            vmf.handlers.push(HostFault::Userfault);
            return FaultOutcome::Retry;
        }
        let node = self.alloc_node(vma);
        let driver = vma.flags.contains(VmFlags::MIXEDMAP);
        let Some(pc) = self.page_cache_folio(vma.file, index, node, driver) else {
            return FaultOutcome::Oom;
        };
        let shared = vma.flags.contains(VmFlags::SHARED);
        if vmf.write() && !shared {
            // do_cow_fault(): a private anonymous copy.
            let Some(id) = self.frames.alloc(0, node) else {
                return FaultOutcome::Oom;
            };
            self.new_anon_folio(id, vma);
            let e = self.anon_entry(vma, Pfn(self.frames.folios[id].pfn), Level::Pte4K);
            self.set_pte(vmf.hva, e);
            vmf.handlers.push(HostFault::FileCow);
            return FaultOutcome::Done;
        }
        if vmf.write() && vma.device().is_some_and(|d| d.page_mkwrite) {
            // do_shared_fault(): ->page_mkwrite before mapping writable.
            self.driver_calls.page_mkwrite += 1;
        }
        self.frames.get(pc, 1);
        self.frames.folios[pc].mapcount += 1;
        let mut e = Entry::new(
            Pfn(self.frames.folios[pc].pfn),
            vma.page_prot() | Entry::YOUNG,
        );
        if vmf.write() {
            e = vma.maybe_mkwrite(e.set(Entry::DIRTY));
            self.frames.folios[pc].flags |= ff::DIRTY;
        }
        self.set_pte(vmf.hva, e);
        vmf.handlers.push(HostFault::File);
        FaultOutcome::Done
    }

    /// The device pfn behind `hva` (`base_pfn + linear_page_index`).
    fn device_pfn(&self, vma: &Vma, hva: Hva) -> Option<Pfn> {
        let d = vma.device()?;
        Some(d.base_pfn?.add(vma.linear_page_index(hva)))
    }

    /// Models a driver's `->fault` (vfio-pci `vfio_pci_mmap_fault()` / device-dax
    /// `__dev_dax_pte_fault()`) calling `vmf_insert_pfn_prot()` / `vmf_insert_mixed()`:
    /// returns VM_FAULT_NOPAGE.
    fn device_fault(&mut self, vma: &Vma, vmf: &mut Vmf<'_>) -> FaultOutcome {
        let Some(d) = vma.device().cloned() else {
            return FaultOutcome::Sigbus;
        };
        if d.remap {
            // remap_pfn_range() mappings have no ->fault.
            return FaultOutcome::Sigbus;
        }
        self.driver_calls.fault += 1;
        if d.kind == DeviceKind::Mixedmap && d.base_pfn.is_none() {
            // vm_insert_page() of driver-owned RAM pages.
            let out = self.do_file_fault(vma, vmf);
            if let Some(h) = vmf.handlers.last_mut() {
                *h = HostFault::Pfnmap;
            }
            return out;
        }
        let Some(pfn) = self.device_pfn(vma, vmf.hva) else {
            return FaultOutcome::Sigbus;
        };
        let mkwrite = d.mkwrite && vmf.write();
        // do_shared_fault() returns early on NOPAGE: page_mkwrite is skipped, so without
        // mkwrite a write installs a read-only entry and the access faults again.
        let out = self.insert_pfn(vma, vmf.hva, pfn, Level::Pte4K, mkwrite);
        vmf.handlers.push(HostFault::Pfnmap);
        out
    }

    /// Models a driver's `->huge_fault` (vfio-pci `vfio_pci_mmap_huge_fault()`, device-dax
    /// `dev_dax_huge_fault()`): inserts a PMD/PUD leaf with `vmf_insert_pfn_pmd/pud()` when
    /// the pfn and the VMA allow that order, else VM_FAULT_FALLBACK.
    fn device_huge_fault(&mut self, vma: &Vma, vmf: &mut Vmf<'_>, level: Level) -> Ret {
        let Some(d) = vma.device().cloned() else {
            return Ret::Fallback;
        };
        if d.max_level < level || d.remap {
            return Ret::Fallback;
        }
        let haddr = vmf.hva.align_down(level);
        if haddr < vma.start || haddr.add(level.size()) > vma.end {
            return Ret::Fallback;
        }
        let Some(pfn) = self.device_pfn(vma, haddr) else {
            return Ret::Fallback;
        };
        if pfn.align_down(level) != pfn {
            return Ret::Fallback;
        }
        self.driver_calls.huge_fault += 1;
        let out = self.insert_pfn(vma, haddr, pfn, level, vmf.write());
        vmf.handlers.push(HostFault::HugePfnmap);
        Ret::Out(out)
    }

    /// Models `insert_pfn()` / `insert_pfn_pmd()` / `insert_pfn_pud()` (mm/memory.c,
    /// mm/huge_memory.c): an empty slot gets `pfn | vm_page_prot | (devmap ? DEVMAP :
    /// SPECIAL)` (+young, dirty, maybe-write with mkwrite); a present entry for the same pfn
    /// is upgraded only with mkwrite. Returns VM_FAULT_NOPAGE. From 6.17, device-dax pages
    /// are mapped as normal folios (reference + mapcount).
    pub(crate) fn insert_pfn(
        &mut self,
        vma: &Vma,
        hva: Hva,
        pfn: Pfn,
        level: Level,
        mkwrite: bool,
    ) -> FaultOutcome {
        if !vma.contains(hva) {
            return FaultOutcome::Sigbus;
        }
        let devdax = vma.device().is_some_and(|d| d.kind == DeviceKind::DevDax);
        let current = match level {
            Level::Pte4K => self.space.pt.pte(hva).unwrap_or(Entry::NONE),
            Level::Pmd2M => match self.space.pt.pmd_slot(hva) {
                Some(PmdSlot::Leaf(e)) => *e,
                _ => Entry::NONE,
            },
            Level::Pud1G => match self.space.pt.pud_slot(hva) {
                Some(PudSlot::Leaf(e)) => *e,
                _ => Entry::NONE,
            },
        };
        let new = if !current.is_none() {
            if !mkwrite || current.pfn() != pfn {
                return FaultOutcome::Nopage;
            }
            vma.maybe_mkwrite(current.set(Entry::YOUNG | Entry::DIRTY | Entry::SOFT_DIRTY))
        } else {
            let mut bits = vma.page_prot();
            if level != Level::Pte4K {
                bits |= Entry::HUGE;
            }
            let mut refcounted = false;
            if devdax {
                if self.config.kernel.devmap_removed() {
                    refcounted = true;
                } else {
                    bits |= Entry::DEVMAP;
                }
            } else if !(vma.flags.contains(VmFlags::MIXEDMAP) && self.frames.pfn_valid(pfn)) {
                bits |= Entry::SPECIAL;
            } else {
                refcounted = true;
            }
            let mut e = Entry::new(pfn, bits);
            if mkwrite {
                e = vma.maybe_mkwrite(e.set(Entry::YOUNG | Entry::DIRTY | Entry::SOFT_DIRTY));
            }
            if refcounted {
                if let Some(id) = self.frames.folio_of(pfn) {
                    self.frames.get(id, 1);
                    self.frames.folios[id].mapcount += 1;
                }
            }
            e
        };
        match level {
            Level::Pte4K => self.set_pte(hva, new),
            Level::Pmd2M => self.set_pmd(hva.align_down(level), new),
            Level::Pud1G => self.set_pud(hva.align_down(level), new),
        }
        FaultOutcome::Nopage
    }

    /// Models `do_wp_page()` (mm/memory.c): write (or unshare) fault on a present
    /// read-only PTE.
    fn do_wp_page(&mut self, vma: &Vma, vmf: &mut Vmf<'_>, orig: Entry) -> FaultOutcome {
        let unshare = vmf.flags.contains(FaultFlags::UNSHARE) && !vmf.write();
        if !unshare && orig.is_uffd_wp() && vma.flags.contains(VmFlags::UFFD_WP) {
            // userfaultfd_pte_wp(): handle_userfault(VM_UFFD_WP).
            vmf.handlers.push(HostFault::Userfault);
            return FaultOutcome::Retry;
        }
        let page = self.vm_normal_page_entry(vma, vmf.hva, orig, Level::Pte4K);
        let shared = vma.flags.intersects(VmFlags::SHARED | VmFlags::MAYSHARE);
        if page.is_none() && shared && !unshare {
            // wp_pfn_shared()
            if vma.device().is_some_and(|d| d.pfn_mkwrite) {
                self.driver_calls.pfn_mkwrite += 1;
                // finish_mkwrite_fault() -> wp_page_reuse()
                let e =
                    vma.maybe_mkwrite(orig.set(Entry::YOUNG | Entry::DIRTY | Entry::SOFT_DIRTY));
                self.set_pte(vmf.hva, e);
                vmf.handlers.push(HostFault::PfnMkwrite);
                return FaultOutcome::Done;
            }
            let e = vma.maybe_mkwrite(orig.set(Entry::YOUNG | Entry::DIRTY | Entry::SOFT_DIRTY));
            self.set_pte(vmf.hva, e);
            vmf.handlers.push(HostFault::WpReuse);
            return FaultOutcome::Done;
        }
        if let Some(pfn) = page {
            let id = self.frames.folio_of(pfn).expect("normal page has a folio");
            if shared && !unshare {
                // wp_page_shared(): page_mkwrite, then reuse.
                if vma.device().is_some_and(|d| d.page_mkwrite) {
                    self.driver_calls.page_mkwrite += 1;
                }
                self.frames.folios[id].flags |= ff::DIRTY;
                let e =
                    vma.maybe_mkwrite(orig.set(Entry::YOUNG | Entry::DIRTY | Entry::SOFT_DIRTY));
                self.set_pte(vmf.hva, e);
                vmf.handlers.push(HostFault::WpReuse);
                return FaultOutcome::Done;
            }
            let f = &self.frames.folios[id];
            let can_reuse = f.has(ff::ANON)
                && (f.has(ff::ANON_EXCLUSIVE)
                    // wp_can_reuse_anon_folio(): small folio, only our reference.
                    || (f.order == 0 && !f.has(ff::KSM) && f.refcount == 1));
            if can_reuse {
                self.frames.folios[id].flags |= ff::ANON_EXCLUSIVE;
                if unshare {
                    return FaultOutcome::Done;
                }
                // wp_page_reuse(): no notifier.
                let e =
                    vma.maybe_mkwrite(orig.set(Entry::YOUNG | Entry::DIRTY | Entry::SOFT_DIRTY));
                self.set_pte(vmf.hva, e);
                vmf.handlers.push(HostFault::WpReuse);
                return FaultOutcome::Done;
            }
        }
        self.wp_page_copy(vma, vmf, orig, page)
    }

    /// Models `wp_page_copy()` (mm/memory.c): a new anonymous page replaces the old one
    /// under CLEAR [addr & PAGE_MASK, +4K). With UNSHARE the copy stays read-only.
    fn wp_page_copy(
        &mut self,
        vma: &Vma,
        vmf: &mut Vmf<'_>,
        orig: Entry,
        old_page: Option<Pfn>,
    ) -> FaultOutcome {
        let unshare = vmf.flags.contains(FaultFlags::UNSHARE) && !vmf.write();
        let Some(id) = self.frames.alloc(0, self.alloc_node(vma)) else {
            return FaultOutcome::Oom;
        };
        let addr = vmf.hva.align_down(Level::Pte4K);
        let range = NotifierRange::new(NotifierEvent::Clear, addr, addr.add(4096));
        let _ = old_page;
        self.notify_vmf(vmf, range, |mm| {
            mm.new_anon_folio(id, vma);
            let pfn = Pfn(mm.frames.folios[id].pfn);
            let e = if unshare {
                Entry::new(pfn, vma.page_prot() | Entry::YOUNG)
            } else {
                mm.anon_entry(vma, pfn, Level::Pte4K)
            };
            mm.set_pte(addr, e);
            mm.drop_leaf_ref(orig);
        });
        vmf.handlers.push(HostFault::WpCopy);
        FaultOutcome::Done
    }

    /// Models `vm_normal_page()` / `vm_normal_page_pmd()` / the PUD logic (mm/memory.c) for
    /// an entry of `vma` at `hva`: the pfn of the struct page to refcount, or None.
    ///
    /// With the special bit (x86): special → None; devmap → None (pmd/pud), page (pte, 6.12:
    /// "devmap ptes are NOT special"); zero/huge zero → None. Without it: the VM_MIXEDMAP
    /// `pfn_valid` rule and the VM_PFNMAP linear rule (`pfn == vm_pgoff + off` is the raw
    /// remap → None; otherwise a COWed anon page, only in COW mappings).
    pub(crate) fn vm_normal_page_entry(
        &self,
        vma: &Vma,
        hva: Hva,
        e: Entry,
        level: Level,
    ) -> Option<Pfn> {
        if !e.is_present() {
            return None;
        }
        let leaf_pfn = e.pfn();
        let pfn = leaf_pfn.add(hva.page_index_in(level));
        let is_zero = match level {
            Level::Pte4K => self.frames.is_zero_pfn(leaf_pfn),
            _ => self.frames.is_huge_zero_pfn(leaf_pfn),
        };
        if self.config.arch_has_pte_special || level != Level::Pte4K {
            if e.is_special() {
                return None;
            }
            if level == Level::Pte4K {
                // 6.12: a devmap PTE is not special: it has a page.
                if is_zero {
                    return None;
                }
                return self.frames.folio_of(pfn).map(|_| pfn);
            }
        }
        // Architectures without pte_special (and the 6.12 PMD/PUD rules).
        if vma.flags.contains(VmFlags::MIXEDMAP) {
            if !self.frames.pfn_valid(pfn) {
                return None;
            }
        } else if vma.flags.contains(VmFlags::PFNMAP) {
            let off = hva.align_down(level).offset_from(vma.start) >> 12;
            if leaf_pfn.0 == vma.pgoff + off {
                return None;
            }
            if !vma.is_cow_mapping() {
                return None;
            }
        }
        if e.is_devmap() && level != Level::Pte4K {
            return None;
        }
        if is_zero {
            return None;
        }
        self.frames.folio_of(pfn).map(|_| pfn)
    }

    /// Models `do_numa_page()` (mm/memory.c): restore the PTE (no notifier), or migrate the
    /// folio to the target node under CLEAR of the folio span (`try_to_migrate_one()`); the
    /// new PTE comes from `remove_migration_ptes()` without a notifier.
    fn do_numa_page(&mut self, vma: &Vma, vmf: &mut Vmf<'_>, orig: Entry) -> FaultOutcome {
        let restored = orig.modify(vma.page_prot());
        let writable = restored.is_write()
            || (vma.wants_manual_write_upgrade() && self.can_change_pte_writable(vma, restored));
        let folio = self
            .vm_normal_page_entry(vma, vmf.hva, restored, Level::Pte4K)
            .and_then(|p| self.frames.folio_of(p));
        if let Some(id) = folio {
            let target = self.alloc_node(vma);
            if self.frames.folios[id].zone == super::Zone::Normal
                && NodeId(self.frames.folios[id].node) != target
            {
                let span = self.folio_span(vma, vmf.hva, id);
                if self.migrate_folio(vma, id, span, target, vmf.notifier, &mut vmf.notifiers) {
                    vmf.handlers.push(HostFault::NumaMigrate);
                    return FaultOutcome::Done;
                }
            }
            if self.frames.folios[id].order > 0 {
                // numa_rebuild_large_mapping(): every protnone PTE of the folio in this PT.
                let span = self.folio_span(vma, vmf.hva, id);
                let table_start = vmf.hva.align_down(Level::Pmd2M);
                let table_end = table_start.add(Level::Pmd2M.size());
                let (s, t) = (span.0.max(table_start), span.1.min(table_end));
                let mut va = s;
                while va < t {
                    if let Some(p) = self.space.pt.pte_mut(va, false) {
                        if p.is_protnone() {
                            let mut n = p.modify(vma.page_prot());
                            if va == vmf.hva.align_down(Level::Pte4K) {
                                n = n.set(Entry::YOUNG);
                            }
                            if writable {
                                n = n.set(Entry::WRITE);
                            }
                            *p = n;
                        }
                    }
                    va = va.add(4096);
                }
                vmf.handlers.push(HostFault::Numa);
                return FaultOutcome::Done;
            }
        }
        let mut n = restored.set(Entry::YOUNG);
        if writable {
            n = n.set(Entry::WRITE);
        }
        self.set_pte(vmf.hva, n);
        vmf.handlers.push(HostFault::Numa);
        FaultOutcome::Done
    }

    /// Models `do_huge_pmd_numa_page()` (mm/huge_memory.c).
    fn do_huge_pmd_numa_page(&mut self, vma: &Vma, vmf: &mut Vmf<'_>, orig: Entry) -> FaultOutcome {
        let haddr = vmf.hva.align_down(Level::Pmd2M);
        let restored = orig.modify(vma.page_prot());
        let writable = restored.is_write()
            || (vma.wants_manual_write_upgrade() && self.can_change_pte_writable(vma, restored));
        let folio = self
            .vm_normal_page_entry(vma, haddr, restored, Level::Pmd2M)
            .and_then(|p| self.frames.folio_of(p));
        if let Some(id) = folio {
            let target = self.alloc_node(vma);
            if NodeId(self.frames.folios[id].node) != target {
                let span = (haddr, haddr.add(Level::Pmd2M.size()));
                if self.migrate_folio(vma, id, span, target, vmf.notifier, &mut vmf.notifiers) {
                    vmf.handlers.push(HostFault::NumaMigrate);
                    return FaultOutcome::Done;
                }
            }
        }
        let mut n = restored.set(Entry::YOUNG);
        if writable {
            n = n.set(Entry::WRITE);
        }
        self.set_pmd(haddr, n);
        vmf.handlers.push(HostFault::Numa);
        FaultOutcome::Done
    }

    /// `can_change_pte_writable()` (mm/mprotect.c): private → anon exclusive page;
    /// shared → already dirty.
    pub(crate) fn can_change_pte_writable(&self, vma: &Vma, e: Entry) -> bool {
        if e.is_protnone() || e.is_uffd_wp() {
            return false;
        }
        if !vma.flags.contains(VmFlags::SHARED) {
            return self.frames.folio_of(e.pfn()).is_some_and(|id| {
                let f = &self.frames.folios[id];
                f.has(ff::ANON) && f.has(ff::ANON_EXCLUSIVE)
            }) && !e.is_special();
        }
        e.is_dirty()
    }

    /// The virtual span `[start, end)` of the folio `id` mapped around `hva` in `vma`
    /// (`vma_address()` (mm/internal.h) .. `vma_address_end()`).
    pub(crate) fn folio_span(&self, vma: &Vma, hva: Hva, id: usize) -> (Hva, Hva) {
        let f = &self.frames.folios[id];
        let pfn = self.lookup(hva).map(|m| m.pfn).unwrap_or(Pfn(f.pfn));
        let idx = pfn.0.saturating_sub(f.pfn);
        let start = hva.align_down(Level::Pte4K).sub(idx << 12);
        let end = start.add(f.nr_pages() << 12);
        (start.max(vma.start), end.min(vma.end))
    }
}

#[cfg(test)]
#[path = "fault_tests.rs"]
mod tests;
