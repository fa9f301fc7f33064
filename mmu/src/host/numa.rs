//! NUMA balancing and protection changes: `change_protection()` (shared by mprotect and the
//! NUMA scanner's `change_prot_numa()`), and folio migration (`migrate_pages()` /
//! `try_to_migrate_one()` / `remove_migration_ptes()`).
//!
//! # Divergence
//! `numa_migrate_check()`'s cpupid two-access filter is not modelled: a hinting fault
//! migrates whenever the folio is not on the policy node (the VMA's bound node, else the
//! faulting task's node). Folios also mapped by a forked child are not migrated.

use super::folio::ff;
use super::pagetable::{PmdSlot, PudSlot};
use super::pte::Entry;
use super::vma::{VmFlags, Vma};
use super::{Mm, Zone};
use crate::notifier::{MmuNotifier, NotifierEvent, NotifierRange};
use crate::types::{Hva, Level, NodeId, Pfn};

/// How `change_protection()` is called (`MM_CP_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    /// mprotect: new protection from the (already updated) vma; try to keep writable.
    Mprotect { try_writable: bool },
    /// MM_CP_PROT_NUMA: PAGE_NONE with the NUMA skip rules.
    ProtNuma,
    /// MM_CP_UFFD_WP (`wp`) / MM_CP_UFFD_WP_RESOLVE: UFFDIO_WRITEPROTECT.
    UffdWp { wp: bool },
}

/// Counts of a protection change.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ChangeCount {
    pub changed: u64,
    pub skipped: u64,
}

impl Mm {
    /// Models `change_protection()` → `change_pud_range()` (mm/mprotect.c) over
    /// `[start, end)` of `vma`: per 512G PGD chunk, one PROTECTION_VMA range starting at the
    /// first non-none PUD entry and ending at the chunk end, sent **before** any per-entry
    /// check, so it covers entries that are then skipped. Partly covered huge leaves are
    /// split (CLEAR, nested inside).
    pub(crate) fn change_protection(
        &mut self,
        vma: &Vma,
        start: Hva,
        end: Hva,
        kind: ChangeKind,
        notifier: &mut dyn MmuNotifier,
        log: &mut Vec<NotifierRange>,
    ) -> ChangeCount {
        let mut count = ChangeCount::default();
        let pgd_size = 1u64 << 39;
        let mut chunk = start;
        while chunk < end {
            let chunk_end = Hva(((chunk.0 / pgd_size) + 1) * pgd_size).min(end);
            let mut range: Option<NotifierRange> = None;
            let mut addr = chunk;
            while addr < chunk_end {
                let next = addr
                    .align_down(Level::Pud1G)
                    .add(Level::Pud1G.size())
                    .min(chunk_end);
                let slot = self.space.pt.pud_slot(addr).cloned();
                let none = matches!(slot, None | Some(PudSlot::None));
                if !none && range.is_none() {
                    let r = NotifierRange::new(NotifierEvent::ProtectionVma, addr, chunk_end);
                    notifier.invalidate_range_start(&r);
                    log.push(r);
                    range = Some(r);
                }
                match slot {
                    Some(PudSlot::Leaf(e)) => {
                        if next.offset_from(addr) != Level::Pud1G.size() {
                            self.split_huge_pud(addr, notifier, log);
                        } else if kind == ChangeKind::ProtNuma || e.is_protnone() {
                            count.skipped += 1;
                        } else {
                            let n = self.new_prot_entry(vma, e, kind);
                            self.set_pud(addr, n);
                            count.changed += 1;
                        }
                    }
                    Some(PudSlot::Table(_)) => {
                        self.change_pmd_range(vma, addr, next, kind, notifier, log, &mut count);
                    }
                    _ => {}
                }
                addr = next;
            }
            if let Some(r) = range {
                notifier.invalidate_range_end(&r);
            }
            chunk = chunk_end;
        }
        count
    }

    /// The new entry under mprotect: `pte_modify(vm_page_prot)`, plus write when allowed
    /// (`MM_CP_TRY_CHANGE_WRITABLE` + `can_change_pte_writable()`).
    fn new_prot_entry(&self, vma: &Vma, e: Entry, kind: ChangeKind) -> Entry {
        match kind {
            ChangeKind::ProtNuma => e.modify(Entry::PROTNONE),
            ChangeKind::UffdWp { wp: true } => e
                .modify(vma.page_prot())
                .clear(Entry::WRITE)
                .set(Entry::UFFD_WP),
            ChangeKind::UffdWp { wp: false } => {
                let mut n = e.modify(vma.page_prot()).clear(Entry::UFFD_WP);
                if vma.wants_manual_write_upgrade()
                    && !n.is_write()
                    && self.can_change_pte_writable(vma, n)
                {
                    n = n.set(Entry::WRITE);
                }
                n
            }
            ChangeKind::Mprotect { try_writable } => {
                let mut n = e.modify(vma.page_prot());
                if try_writable && !n.is_write() && self.can_change_pte_writable(vma, n) {
                    n = n.set(Entry::WRITE);
                }
                n
            }
        }
    }

    /// `change_pmd_range()` + `change_huge_pmd()` (mm/mprotect.c, mm/huge_memory.c).
    #[allow(clippy::too_many_arguments)]
    fn change_pmd_range(
        &mut self,
        vma: &Vma,
        start: Hva,
        end: Hva,
        kind: ChangeKind,
        notifier: &mut dyn MmuNotifier,
        log: &mut Vec<NotifierRange>,
        count: &mut ChangeCount,
    ) {
        let mut addr = start;
        while addr < end {
            let next = addr
                .align_down(Level::Pmd2M)
                .add(Level::Pmd2M.size())
                .min(end);
            let slot = self.space.pt.pmd_slot(addr).cloned();
            match slot {
                Some(PmdSlot::Leaf(e)) => {
                    if next.offset_from(addr) != Level::Pmd2M.size() {
                        self.split_huge_pmd(vma, addr, notifier, log);
                        self.change_pte_range(vma, addr, next, kind, count);
                    } else if kind == ChangeKind::ProtNuma {
                        // change_huge_pmd(prot_numa): skip the huge zero page and protnone.
                        // (Top tier is skipped while balancing is off.)
                        if self.frames.is_huge_zero_pfn(e.pfn())
                            || e.is_protnone()
                            || !self.config.numa_balancing
                        {
                            count.skipped += 1;
                        } else {
                            self.set_pmd(addr, e.modify(Entry::PROTNONE));
                            count.changed += 1;
                        }
                    } else {
                        let n = self.new_prot_entry(vma, e, kind);
                        self.set_pmd(addr, n);
                        count.changed += 1;
                    }
                }
                Some(PmdSlot::Table(_)) => self.change_pte_range(vma, addr, next, kind, count),
                _ => {}
            }
            addr = next;
        }
    }

    /// Models `change_pte_range()` (mm/mprotect.c) with the prot_numa skip rules: already
    /// protnone; no normal folio (zero page, pfnmap); ZONE_DEVICE or KSM; in a COW mapping a
    /// maybe-pinned or shared folio; a dirty file folio; on the target node of a
    /// single-threaded private mm; top tier while balancing is off.
    fn change_pte_range(
        &mut self,
        vma: &Vma,
        start: Hva,
        end: Hva,
        kind: ChangeKind,
        count: &mut ChangeCount,
    ) {
        let target_node = (kind == ChangeKind::ProtNuma
            && !vma.flags.contains(VmFlags::SHARED)
            && !self.config.multi_threaded)
            .then_some(self.config.task_node);
        let mut addr = start;
        while addr < end {
            let e = self.space.pt.pte(addr).unwrap_or(Entry::NONE);
            if e.is_present() {
                if kind == ChangeKind::ProtNuma && self.numa_skip_pte(vma, addr, e, target_node) {
                    count.skipped += 1;
                    addr = addr.add(4096);
                    continue;
                }
                let n = self.new_prot_entry(vma, e, kind);
                self.set_pte(addr, n);
                count.changed += 1;
            }
            addr = addr.add(4096);
        }
    }

    fn numa_skip_pte(&self, vma: &Vma, addr: Hva, e: Entry, target: Option<NodeId>) -> bool {
        if e.is_protnone() {
            return true;
        }
        let Some(id) = self
            .vm_normal_page_entry(vma, addr, e, Level::Pte4K)
            .and_then(|p| self.frames.folio_of(p))
        else {
            return true;
        };
        let f = &self.frames.folios[id];
        if f.zone == Zone::Device || f.has(ff::KSM) {
            return true;
        }
        // folio_maybe_dma_pinned() || folio_likely_mapped_shared()
        if vma.is_cow_mapping() && (f.pincount > 0 || f.mapcount > 1) {
            return true;
        }
        if f.has(ff::PAGECACHE) && (f.has(ff::DIRTY) || e.is_dirty()) {
            return true;
        }
        if target == Some(NodeId(f.node)) {
            return true;
        }
        !self.config.numa_balancing
    }

    /// `vma_migratable()` and the other `task_numa_work()` VMA filters (kernel/sched/fair.c),
    /// hugetlb VMAs included (`is_vm_hugetlb_page()`).
    pub(crate) fn numa_scan_skips_vma(vma: &Vma) -> bool {
        vma.flags
            .intersects(VmFlags::IO | VmFlags::PFNMAP | VmFlags::MIXEDMAP | VmFlags::HUGETLB)
            || vma.device().is_some()
            || !vma.is_accessible()
            || (vma.file != 0
                && !vma.is_anonymous()
                && vma.flags.contains(VmFlags::READ)
                && !vma.flags.contains(VmFlags::WRITE))
    }

    /// Models `migrate_pages()` (mm/migrate.c) of one folio mapped at `span` in the process: fails
    /// when the folio has references beyond its mappings and page cache (GUP references, pins:
    /// `folio_migrate_mapping()` → -EAGAIN), when it is ZONE_DEVICE or shared with a child, or when
    /// the target allocation fails. Otherwise sends CLEAR over the folio span
    /// (`try_to_migrate_one()`), copies, and installs the new entries without a notifier
    /// (`remove_migration_ptes()`): same write/dirty/young bits, `vm_page_prot` (a protnone entry
    /// comes back accessible).
    pub(crate) fn migrate_folio(
        &mut self,
        vma: &Vma,
        id: usize,
        span: (Hva, Hva),
        target: NodeId,
        notifier: &mut dyn MmuNotifier,
        log: &mut Vec<NotifierRange>,
    ) -> bool {
        let f = self.frames.folios[id].clone();
        if f.zone == Zone::Device || f.has(ff::ZERO) || f.has(ff::HUGE_ZERO) {
            return false;
        }
        let cache_ref = i32::from(f.has(ff::PAGECACHE) || f.has(ff::DRIVER));
        if f.refcount != f.mapcount + cache_ref || f.pincount > 0 {
            return false;
        }
        // Leaves of this folio in the process, and check no one else maps it.
        let mut leaves = Vec::new();
        let (lo, hi) = (f.pfn, f.pfn + f.nr_pages());
        self.space.pt.for_each_leaf(span.0, span.1, |va, level, e| {
            if e.is_present() && !e.is_special() && (lo..hi).contains(&e.pfn().0) {
                leaves.push((va, level, e));
            }
        });
        if i32::try_from(leaves.len()).unwrap_or(i32::MAX) != f.mapcount {
            return false;
        }
        let Some(new) = self.frames.alloc(f.order, target) else {
            return false;
        };
        let range = NotifierRange::new(NotifierEvent::Clear, span.0, span.1);
        self.notify(notifier, log, range, |mm| {
            let new_pfn = mm.frames.folios[new].pfn;
            {
                let n = &mut mm.frames.folios[new];
                n.flags = f.flags;
                n.file = f.file;
                n.index = f.index;
                n.mapcount = f.mapcount;
                n.refcount = f.refcount;
            }
            if f.has(ff::PAGECACHE) || (f.has(ff::DRIVER) && f.file != 0) {
                mm.page_cache.insert((f.file, u64::from(f.index)), new);
            }
            for (va, level, e) in leaves {
                let pfn = Pfn(new_pfn + (e.pfn().0 - f.pfn));
                let mut bits = vma.page_prot();
                if level != Level::Pte4K {
                    bits |= Entry::HUGE;
                }
                let mut n = Entry::new(pfn, bits).clear(Entry::YOUNG | Entry::WRITE);
                for b in [Entry::WRITE, Entry::DIRTY, Entry::YOUNG, Entry::SOFT_DIRTY] {
                    if e.has(b) {
                        n = n.set(b);
                    }
                }
                match level {
                    Level::Pte4K => mm.set_pte(va, n),
                    Level::Pmd2M => mm.set_pmd(va, n),
                    Level::Pud1G => mm.set_pud(va, n),
                }
            }
            let old_refs = mm.frames.folios[id].refcount;
            mm.frames.folios[id].mapcount = 0;
            mm.frames.put(id, old_refs);
        });
        true
    }
}
