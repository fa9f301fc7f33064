//! hugetlbfs (`MAP_HUGETLB`, `memfd_create(MFD_HUGETLB)`) VMAs: mm/hugetlb.c.
//!
//! A hugetlb VMA (flag VM_HUGETLB, [`super::Backing::Hugetlb`]) is mapped only by huge
//! leaves of its page size (2M PMD or 1G PUD), never by PTEs: a fault allocates a whole,
//! zeroed huge folio (there is no hugetlb zero page), shared mappings keep their folios in
//! the file's page cache, private ones get anonymous folios that COW as a whole
//! (`hugetlb_wp()`). Every range an operation works on is huge-page aligned: a split at an
//! unaligned address is EINVAL (`hugetlb_vm_op_split()`), MADV_DONTNEED needs an aligned
//! start and rounds the end down (`madvise_dontneed_free_valid_vma()`).
//!
//! # Divergence
//! No pool accounting or reservations (`alloc_hugetlb_folio()` only fails with the model's
//! THP failure injection), no PMD sharing itself (only the notifier widening it causes,
//! `adjust_range_if_pmd_sharing_possible()`), no hugetlb migration, userfaultfd or
//! punch-hole: the scenario runner reports those steps as not modelled.

use super::fault::{FaultOutcome, HostFault, Vmf};
use super::folio::ff;
use super::pagetable::{set_leaf, PmdSlot, PudSlot};
use super::pte::Entry;
use super::vma::{VmFlags, Vma};
use super::{ChildId, Mm};
use crate::notifier::{MmuNotifier, NotifierEvent, NotifierRange};
use crate::types::{Hva, Level, NodeId, Pfn};

impl Vma {
    /// `is_vm_hugetlb_page()` (include/linux/hugetlb_inline.h): the huge page size's level
    /// (`hstate_vma()`) of a hugetlb VMA, `None` for every other VMA.
    pub fn hugetlb_level(&self) -> Option<Level> {
        match self.backing {
            super::Backing::Hugetlb(level) if self.flags.contains(VmFlags::HUGETLB) => Some(level),
            _ => None,
        }
    }
}

/// `adjust_range_if_pmd_sharing_possible()` (mm/hugetlb.c): for a shared hugetlb VMA that
/// spans at least one whole PUD-aligned 1G block, a range touching such a block is widened
/// to 1G boundaries (a shared PMD table may be unshared), else left alone.
pub(crate) fn pmd_sharing_range(vma: &Vma, start: Hva, end: Hva) -> (Hva, Hva) {
    let v_start = vma.start.align_up(Level::Pud1G);
    let v_end = vma.end.align_down(Level::Pud1G);
    if !vma.flags.contains(VmFlags::MAYSHARE)
        || v_end <= v_start
        || end <= v_start
        || start >= v_end
    {
        return (start, end);
    }
    let s = if start > v_start {
        start.align_down(Level::Pud1G)
    } else {
        start
    };
    let e = if end < v_end {
        end.align_up(Level::Pud1G)
    } else {
        end
    };
    (s, e)
}

impl Mm {
    /// The huge leaf mapping `haddr` at `level`, `Entry::NONE` when none.
    fn huge_ptep_get(&self, haddr: Hva, level: Level) -> Entry {
        match level {
            Level::Pud1G => match self.space.pt.pud_slot(haddr) {
                Some(PudSlot::Leaf(e)) => *e,
                _ => Entry::NONE,
            },
            _ => match self.space.pt.pmd_slot(haddr) {
                Some(PmdSlot::Leaf(e)) => *e,
                _ => Entry::NONE,
            },
        }
    }

    fn set_huge_pte_at(&mut self, haddr: Hva, level: Level, e: Entry) {
        match level {
            Level::Pud1G => self.set_pud(haddr, e),
            _ => self.set_pmd(haddr, e),
        }
    }

    /// `make_huge_pte()` (mm/hugetlb.c): `vm_page_prot` with the huge bit, young; writable
    /// (and dirty) only when asked, else write-protected.
    fn make_huge_pte(vma: &Vma, pfn: Pfn, writable: bool) -> Entry {
        let e = Entry::new(pfn, vma.page_prot() | Entry::HUGE | Entry::YOUNG).clear(Entry::WRITE);
        if writable {
            e.set(Entry::WRITE | Entry::DIRTY)
        } else {
            e
        }
    }

    /// `alloc_hugetlb_folio()` + `folio_zero_user()` (mm/hugetlb.c): a zeroed huge folio of
    /// `level`'s size, refcount 1, unmapped.
    fn alloc_hugetlb_folio(&mut self, vma: &Vma, level: Level) -> Option<usize> {
        let id = self.frames.alloc(level.order(), self.alloc_node(vma))?;
        self.frames.folios[id].flags |= ff::HUGETLB;
        Some(id)
    }

    /// Models `hugetlb_fault()` (mm/hugetlb.c): the fault address is rounded down to the
    /// huge page (`vmf.address = address & huge_page_mask(h)`); an empty entry goes to
    /// [`Mm::hugetlb_no_page`]; a write (or unshare) to a write-protected entry to
    /// [`Mm::hugetlb_wp`]; anything else only sets young (and dirty for a write).
    pub(crate) fn hugetlb_fault(
        &mut self,
        vma: &Vma,
        level: Level,
        vmf: &mut Vmf<'_>,
    ) -> FaultOutcome {
        let haddr = vmf.hva.align_down(level);
        let orig = self.huge_ptep_get(haddr, level);
        if orig.is_none() {
            return self.hugetlb_no_page(vma, level, haddr, vmf);
        }
        if !orig.is_present() {
            if orig.is_hwpoison() {
                vmf.handlers.push(HostFault::Hwpoison);
                return FaultOutcome::Hwpoison;
            }
            return FaultOutcome::Sigbus;
        }
        let write = vmf.write();
        if vmf.wants_wp() && !orig.is_write() {
            return self.hugetlb_wp(vma, level, haddr, orig, !write, vmf);
        }
        let mut e = orig.set(Entry::YOUNG);
        if write {
            e = e.set(Entry::DIRTY);
        }
        self.set_huge_pte_at(haddr, level, e);
        vmf.handlers.push(HostFault::Access);
        FaultOutcome::Done
    }

    /// Models `hugetlb_no_page()` (mm/hugetlb.c): the folio comes from the file's page cache
    /// (`filemap_lock_hugetlb_folio()`), else a new zeroed one is allocated, added to the
    /// page cache for a VM_MAYSHARE mapping and made anonymous (exclusive) for a private one;
    /// `make_huge_pte()` maps it writable only in a shared writable mapping. A private write
    /// fault then runs `hugetlb_wp()` at once (a new anon folio is reused in place). No
    /// notifier: none → present.
    fn hugetlb_no_page(
        &mut self,
        vma: &Vma,
        level: Level,
        haddr: Hva,
        vmf: &mut Vmf<'_>,
    ) -> FaultOutcome {
        let index = vma.linear_page_index(haddr);
        let shared = vma.flags.contains(VmFlags::MAYSHARE);
        let cached = self.page_cache.get(&(vma.file, index)).copied();
        let id = match cached {
            Some(id) => {
                self.frames.get(id, 1);
                self.frames.folios[id].mapcount += 1;
                id
            }
            None => {
                if vma.flags.contains(VmFlags::UFFD_MISSING) {
                    // hugetlb_handle_userfault(VM_UFFD_MISSING)
                    vmf.handlers.push(HostFault::Userfault);
                    return FaultOutcome::Retry;
                }
                let Some(id) = self.alloc_hugetlb_folio(vma, level) else {
                    return FaultOutcome::Oom;
                };
                if shared {
                    // hugetlb_add_to_page_cache(): the cache's reference, then the mapping's.
                    let f = &mut self.frames.folios[id];
                    f.flags |= ff::PAGECACHE;
                    f.file = vma.file;
                    f.index = u32::try_from(index).unwrap_or(u32::MAX);
                    f.mapcount = 1;
                    self.page_cache.insert((vma.file, index), id);
                    self.frames.get(id, 1);
                } else {
                    // __vmf_anon_prepare() + hugetlb_add_new_anon_rmap().
                    self.new_anon_folio(id, vma);
                }
                id
            }
        };
        let pfn = Pfn(self.frames.folios[id].pfn);
        let writable = vma.flags.contains(VmFlags::WRITE) && vma.flags.contains(VmFlags::SHARED);
        let e = Self::make_huge_pte(vma, pfn, writable);
        self.set_huge_pte_at(haddr, level, e);
        vmf.handlers.push(HostFault::Hugetlb);
        if vmf.write() && !vma.flags.contains(VmFlags::SHARED) {
            return self.hugetlb_wp(vma, level, haddr, e, false, vmf);
        }
        FaultOutcome::Done
    }

    /// Models `hugetlb_wp()` (mm/hugetlb.c): a VM_MAYSHARE mapping is made writable in place;
    /// an anonymous folio mapped once is reused (made exclusive, and writable unless this is
    /// an unshare); anything else is copied into a new anonymous huge folio under CLEAR
    /// [haddr, +huge page size) (`copy_user_large_folio()`). A write without VM_WRITE is
    /// SIGSEGV (hugetlb has no FOLL_FORCE-style write).
    fn hugetlb_wp(
        &mut self,
        vma: &Vma,
        level: Level,
        haddr: Hva,
        orig: Entry,
        unshare: bool,
        vmf: &mut Vmf<'_>,
    ) -> FaultOutcome {
        if !unshare && orig.is_uffd_wp() && vma.flags.contains(VmFlags::UFFD_WP) {
            vmf.handlers.push(HostFault::Userfault);
            return FaultOutcome::Retry;
        }
        if !unshare && !vma.flags.contains(VmFlags::WRITE) {
            return FaultOutcome::Sigsegv;
        }
        let writable = orig.set(Entry::WRITE | Entry::DIRTY | Entry::YOUNG);
        if vma.flags.contains(VmFlags::MAYSHARE) {
            self.set_huge_pte_at(haddr, level, writable);
            vmf.handlers.push(HostFault::HugetlbWp);
            return FaultOutcome::Done;
        }
        let Some(old) = self.leaf_ref_folio(orig) else {
            return FaultOutcome::Sigbus;
        };
        let f = &self.frames.folios[old];
        if f.mapcount == 1 && f.has(ff::ANON) {
            self.frames.folios[old].flags |= ff::ANON_EXCLUSIVE;
            if !unshare {
                self.set_huge_pte_at(haddr, level, writable);
            }
            vmf.handlers.push(HostFault::HugetlbWp);
            return FaultOutcome::Done;
        }
        let Some(new) = self.alloc_hugetlb_folio(vma, level) else {
            return FaultOutcome::Oom;
        };
        let range = NotifierRange::new(NotifierEvent::Clear, haddr, haddr.add(level.size()));
        self.notify_vmf(vmf, range, |mm| {
            mm.drop_leaf_ref(orig);
            mm.new_anon_folio(new, vma);
            let pfn = Pfn(mm.frames.folios[new].pfn);
            let e = Self::make_huge_pte(vma, pfn, !unshare);
            mm.set_huge_pte_at(haddr, level, e);
        });
        vmf.handlers.push(HostFault::HugetlbCow);
        FaultOutcome::Done
    }

    /// Models `hugetlb_change_protection()` (mm/hugetlb.c) for mprotect: one PROTECTION_VMA
    /// over `[start, end)` (widened by `adjust_range_if_pmd_sharing_possible()`), sent even
    /// when nothing is mapped, and every present huge entry rebuilt from the new
    /// `vm_page_prot` (`huge_pte_modify()`): private mappings stay write-protected (no
    /// MM_CP_TRY_CHANGE_WRITABLE for hugetlb; the next write goes through `hugetlb_wp()`).
    pub(crate) fn hugetlb_change_protection(
        &mut self,
        vma: &Vma,
        start: Hva,
        end: Hva,
        notifier: &mut dyn MmuNotifier,
        log: &mut Vec<NotifierRange>,
    ) -> u64 {
        let (s, e) = pmd_sharing_range(vma, start, end);
        let range = NotifierRange::new(NotifierEvent::ProtectionVma, s, e);
        self.notify(notifier, log, range, |mm| {
            let mut leaves = Vec::new();
            mm.space.pt.for_each_leaf(start, end, |va, level, e| {
                if e.is_present() || e.is_protnone() {
                    leaves.push((va, level, e));
                }
            });
            let mut n = 0;
            for (va, level, e) in leaves {
                set_leaf(&mut mm.space.pt, va, level, e.modify(vma.page_prot()));
                n += 1;
            }
            n
        })
    }

    /// Models `copy_hugetlb_page_range()` (mm/hugetlb.c) for fork of a hugetlb VMA that needs
    /// copying (it has anon pages): a COW mapping is invalidated with CLEAR [vm_start,
    /// vm_end) (not PROTECTION_PAGE as for other VMAs); each entry is shared with the child,
    /// write-protected in both for COW, its anon folio losing PageAnonExclusive, except a
    /// maybe-pinned anon folio, which the child gets a copy of now
    /// (`hugetlb_try_dup_anon_rmap()` fails → `copy_user_large_folio()`).
    pub(crate) fn copy_hugetlb_page_range(
        &mut self,
        v: &Vma,
        child: &mut super::AddrSpace,
        notifier: &mut dyn MmuNotifier,
        log: &mut Vec<NotifierRange>,
    ) -> Result<(), super::ForkError> {
        let cow = v.is_cow_mapping();
        let range = NotifierRange::new(NotifierEvent::Clear, v.start, v.end);
        if cow {
            notifier.invalidate_range_start(&range);
            log.push(range);
        }
        let mut leaves = Vec::new();
        self.space
            .pt
            .for_each_leaf(v.start, v.end, |va, level, e| leaves.push((va, level, e)));
        let mut result = Ok(());
        for (va, level, e) in leaves {
            let mut ce = e;
            if let Some(id) = self.leaf_ref_folio(e) {
                let f = &self.frames.folios[id];
                if f.has(ff::ANON) && f.has(ff::ANON_EXCLUSIVE) && f.pincount > 0 {
                    let node = NodeId(f.node);
                    let Some(nid) = self.frames.alloc(level.order(), node) else {
                        result = Err(super::ForkError::Oom);
                        break;
                    };
                    let nf = &mut self.frames.folios[nid];
                    nf.flags |= ff::HUGETLB | ff::ANON | ff::ANON_EXCLUSIVE | ff::DIRTY;
                    nf.mapcount = 1;
                    let pfn = Pfn(nf.pfn);
                    // hugetlb_install_folio(): make_huge_pte(vma, new, 1), dirty.
                    set_leaf(&mut child.pt, va, level, Self::make_huge_pte(v, pfn, true));
                    continue;
                }
                self.frames.get(id, 1);
                let f = &mut self.frames.folios[id];
                f.mapcount += 1;
                if f.has(ff::ANON) {
                    f.flags &= !ff::ANON_EXCLUSIVE;
                }
            }
            if cow && e.is_write() {
                ce = e.clear(Entry::WRITE);
                set_leaf(&mut self.space.pt, va, level, ce);
            }
            set_leaf(&mut child.pt, va, level, ce);
        }
        if cow {
            notifier.invalidate_range_end(&range);
        }
        result
    }

    /// True when a hugetlb VMA contains `addr` strictly inside and `addr` is not aligned to
    /// its huge page size: `hugetlb_vm_op_split()` (mm/hugetlb.c) refuses such a split
    /// with EINVAL, so munmap, mprotect and madvise fail there.
    pub(crate) fn hugetlb_split_refused(&self, addr: Hva) -> bool {
        self.space.vma(addr).is_some_and(|v| {
            v.start != addr && v.hugetlb_level().is_some_and(|l| !addr.is_aligned(l))
        })
    }

    /// Checks the model's hugetlb invariants: every hugetlb folio is mapped only by leaves
    /// of its own size at addresses aligned to it, in hugetlb VMAs of that page size, and
    /// a hugetlb VMA holds no PTE-level leaf. Returns the first violation.
    pub fn check_hugetlb_invariants(&self) -> Result<(), String> {
        let mut err = None;
        let spaces = std::iter::once((None, &self.space)).chain(
            self.children
                .iter()
                .enumerate()
                .filter_map(|(i, c)| c.as_ref().map(|c| (Some(ChildId(i)), c))),
        );
        for (who, sp) in spaces {
            for v in sp.vmas.values() {
                let want = v.hugetlb_level();
                sp.pt.for_each_leaf(v.start, v.end, |va, level, e| {
                    if err.is_some() || !e.is_present() {
                        return;
                    }
                    let hugetlb_folio = self
                        .leaf_ref_folio(e)
                        .is_some_and(|id| self.frames.folios[id].has(ff::HUGETLB));
                    let bad = match want {
                        Some(l) => level != l || !va.is_aligned(l) || !hugetlb_folio,
                        None => hugetlb_folio,
                    };
                    if bad {
                        err = Some(format!(
                            "{who:?}: leaf {level:?} at {va} (pfn {:?}) in vma [{}, {}) with hugetlb page size {want:?}",
                            e.pfn(),
                            v.start,
                            v.end
                        ));
                    }
                });
            }
        }
        err.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use crate::gup::{self, FollFlags, GupError};
    use crate::host::testutil::*;
    use crate::host::*;
    use crate::notifier::{NoNotifier, NotifierEvent::*, NotifierLog};
    use crate::types::{Hva, KernelVersion, Level};

    /// A 4M hugetlb VMA with 2M pages at BASE.
    fn hugetlb(mm: &mut Mm, shared: bool) -> Hva {
        let mut req = MmapRequest::anon(BASE, 2 * M2);
        req.backing = Backing::Hugetlb(Level::Pmd2M);
        req.shared = shared;
        mm.mmap(req).expect("mmap hugetlb")
    }

    fn access(mm: &mut Mm, hva: Hva, write: bool) -> OpReport {
        mm.user_access(hva, write, &mut NoNotifier).expect("access")
    }

    fn names(r: &OpReport) -> Vec<&'static str> {
        r.host_faults.iter().map(|h| h.name()).collect()
    }

    /// Models `hugetlb_no_page()`: a read fault of a private hugetlb VMA allocates a whole
    /// zeroed huge folio (no zero page), maps it with a PMD leaf, write-protected, as an
    /// exclusive anon folio; no notifier. The next write reuses it in place
    /// (`hugetlb_wp()`: mapcount 1 and anon), still without a notifier.
    #[test]
    fn private_read_maps_a_whole_huge_folio_then_write_reuses_it() {
        let mut mm = mm(KernelVersion::V6_12);
        let a = hugetlb(&mut mm, false);
        let r = access(&mut mm, a.add(0x1000), false);
        assert_eq!(names(&r), vec!["hugetlb"]);
        assert!(r.notifiers.is_empty());
        let m = mm.lookup(a.add(0x1000)).unwrap();
        assert_eq!(
            (m.level, m.leaf_start, m.writable),
            (Level::Pmd2M, a, false)
        );
        let f = mm.folio_info(m.pfn).unwrap();
        assert!(f.hugetlb && f.anon && f.anon_exclusive && !f.zero);
        assert_eq!((f.order, f.refcount, f.mapcount), (9, 1, 1));
        let w = access(&mut mm, a.add(0x3000), true);
        assert_eq!(names(&w), vec!["hugetlb-wp"]);
        assert!(w.notifiers.is_empty());
        let m2 = mm.lookup(a).unwrap();
        assert_eq!(
            (m2.pfn, m2.writable),
            (m.pfn.add(0).align_down(Level::Pmd2M), true)
        );
        ok(&mm);
    }

    /// Models `hugetlb_no_page()` → `hugetlb_wp()` for a private write fault: one fault maps
    /// the new folio writable.
    #[test]
    fn private_write_fault_maps_writable_at_once() {
        let mut mm = mm(KernelVersion::V6_18);
        let a = hugetlb(&mut mm, false);
        let r = access(&mut mm, a.add(M2 + 0x5000), true);
        assert_eq!(names(&r), vec!["hugetlb", "hugetlb-wp"]);
        let m = mm.lookup(a.add(M2)).unwrap();
        assert_eq!(
            (m.level, m.leaf_start, m.writable),
            (Level::Pmd2M, a.add(M2), true)
        );
        assert!(mm.lookup(a).is_none(), "the other huge page stays unmapped");
        ok(&mm);
    }

    /// Models `hugetlb_no_page()` for VM_MAYSHARE: the folio goes into the page cache
    /// (`hugetlb_add_to_page_cache()`) and `make_huge_pte()` maps it writable; after
    /// MADV_DONTNEED the next read finds the same folio (the data stays), while a private
    /// mapping's folio is freed and a new one allocated.
    #[test]
    fn dontneed_keeps_shared_folios_and_frees_private_ones() {
        for shared in [true, false] {
            let mut mm = mm(KernelVersion::V6_12);
            let a = hugetlb(&mut mm, shared);
            access(&mut mm, a, true);
            let before = mm.lookup(a).unwrap();
            assert!(before.writable);
            let f = mm.folio_info(before.pfn).unwrap();
            assert_eq!((f.anon, f.refcount), (!shared, if shared { 2 } else { 1 }));
            let r = mm
                .madvise(a, M2, Advice::Dontneed, &mut NoNotifier)
                .unwrap();
            assert_eq!(triples(&r.notifiers), vec![(Clear, a.0, a.0 + M2)]);
            assert!(mm.lookup(a).is_none());
            assert_eq!(
                mm.folio_info(before.pfn).is_some(),
                shared,
                "shared={shared}"
            );
            access(&mut mm, a, false);
            let after = mm.lookup(a).unwrap();
            if shared {
                assert_eq!(after.pfn, before.pfn, "the page cache's folio again");
            }
            ok(&mm);
        }
    }

    /// Models `madvise_dontneed_free_valid_vma()`: MADV_DONTNEED on hugetlb needs a
    /// huge-aligned start (EINVAL) and rounds the end down, so a partial huge page is never
    /// freed: [haddr, +4K) does nothing and sends no notifier, [haddr, +2M+4K) clears one
    /// huge page. MADV_FREE is EINVAL.
    #[test]
    fn dontneed_rounds_the_end_down_and_refuses_unaligned_starts() {
        let mut mm = mm(KernelVersion::V6_12);
        let a = hugetlb(&mut mm, false);
        access(&mut mm, a, true);
        access(&mut mm, a.add(M2), true);
        let r = mm
            .madvise(a, 0x1000, Advice::Dontneed, &mut NoNotifier)
            .unwrap();
        assert!(r.notifiers.is_empty());
        assert!(mm.lookup(a).is_some(), "nothing freed");
        let e = mm.madvise(a.add(0x1000), 0x1000, Advice::Dontneed, &mut NoNotifier);
        assert!(matches!(e, Err(MadviseError::Hugetlb { .. })), "{e:?}");
        let e = mm.madvise(a, M2, Advice::Free, &mut NoNotifier);
        assert!(matches!(e, Err(MadviseError::Hugetlb { .. })), "{e:?}");
        let r = mm
            .madvise(a, M2 + 0x1000, Advice::Dontneed, &mut NoNotifier)
            .unwrap();
        assert_eq!(triples(&r.notifiers), vec![(Clear, a.0, a.0 + M2)]);
        assert!(mm.lookup(a).is_none());
        assert!(
            mm.lookup(a.add(M2)).is_some(),
            "the partly covered page stays"
        );
        ok(&mm);
    }

    /// Models `hugetlb_change_protection()`: one PROTECTION_VMA over exactly the range, sent
    /// even where nothing is mapped; private entries stay write-protected after PROT_WRITE
    /// comes back (no MM_CP_TRY_CHANGE_WRITABLE), so the next write goes through
    /// `hugetlb_wp()` (reuse, no notifier). A split off the huge page size is EINVAL
    /// (`hugetlb_vm_op_split()`), for mprotect and munmap alike.
    #[test]
    fn mprotect_sends_the_exact_range_and_needs_aligned_splits() {
        let mut mm = mm(KernelVersion::V6_12);
        let a = hugetlb(&mut mm, false);
        access(&mut mm, a, true);
        let r = mm.mprotect(a, 2 * M2, Prot::R, &mut NoNotifier).unwrap();
        assert_eq!(
            triples(&r.notifiers),
            vec![(ProtectionVma, a.0, a.0 + 2 * M2)]
        );
        assert!(!mm.lookup(a).unwrap().writable);
        assert!(
            mm.user_access(a, true, &mut NoNotifier).is_err(),
            "PROT_READ: SIGSEGV"
        );
        let r = mm.mprotect(a, 2 * M2, Prot::RW, &mut NoNotifier).unwrap();
        assert_eq!(r.notifiers.len(), 1);
        assert!(
            !mm.lookup(a).unwrap().writable,
            "no writable upgrade for hugetlb"
        );
        let w = access(&mut mm, a, true);
        assert_eq!((names(&w), w.notifiers.len()), (vec!["hugetlb-wp"], 0));
        let e = mm.mprotect(a.add(0x1000), 0x1000, Prot::R, &mut NoNotifier);
        assert!(
            matches!(e, Err(MprotectError::HugetlbSplit { .. })),
            "{e:?}"
        );
        let e = mm.munmap(a, 0x1000, &mut NoNotifier);
        assert!(matches!(e, Err(MunmapError::HugetlbSplit { .. })), "{e:?}");
        let r = mm.munmap(a, M2, &mut NoNotifier).unwrap();
        assert_eq!(triples(&r.notifiers), vec![(Unmap, a.0, a.0 + M2)]);
        ok(&mm);
    }

    /// Models `copy_hugetlb_page_range()`: fork of a private hugetlb VMA with pages sends
    /// CLEAR [vm_start, vm_end) (not PROTECTION_PAGE) and write-protects the entries in
    /// both; the parent's next write copies the whole huge page under CLEAR [haddr, +2M)
    /// (`hugetlb_wp()` → `copy_user_large_folio()`), the child keeps the old folio.
    #[test]
    fn fork_clears_the_vma_and_a_write_copies_the_huge_page() {
        let mut mm = mm(KernelVersion::V6_12);
        let a = hugetlb(&mut mm, false);
        access(&mut mm, a, true);
        let old = mm.lookup(a).unwrap().pfn;
        let (child, r) = mm.fork(&mut NoNotifier).unwrap();
        assert_eq!(triples(&r.notifiers), vec![(Clear, a.0, a.0 + 2 * M2)]);
        let f = mm.folio_info(old).unwrap();
        assert_eq!((f.refcount, f.mapcount, f.anon_exclusive), (2, 2, false));
        ok(&mm);
        let mut log = NotifierLog::new();
        let w = mm.user_access(a.add(0x2000), true, &mut log).unwrap();
        assert_eq!(names(&w), vec!["hugetlb-cow"]);
        assert_eq!(triples(&w.notifiers), vec![(Clear, a.0, a.0 + M2)]);
        let new = mm.lookup(a).unwrap();
        assert!(new.writable && new.pfn != old && new.level == Level::Pmd2M);
        assert_eq!(
            mm.folio_info(old).unwrap().mapcount,
            1,
            "the child's mapping"
        );
        ok(&mm);
        assert!(mm.child_exit(child));
        assert!(mm.folio_info(old).is_none(), "freed with the child");
        ok(&mm);
    }

    /// Models `vma_needs_copy()`: a shared hugetlb VMA has no anon_vma, so fork copies
    /// nothing and sends no notifier.
    #[test]
    fn fork_does_not_copy_shared_hugetlb() {
        let mut mm = mm(KernelVersion::V6_12);
        let a = hugetlb(&mut mm, true);
        access(&mut mm, a, true);
        let (_, r) = mm.fork(&mut NoNotifier).unwrap();
        assert!(r.notifiers.is_empty());
        assert!(mm.lookup(a).unwrap().writable);
        ok(&mm);
    }

    /// Models GUP on hugetlb (6.12's `follow_page_mask()` → `follow_huge_pmd()` and GUP-fast
    /// `gup_fast_pmd_leaf()`): the 4K subpage of the huge folio, one reference on the folio;
    /// FOLL_FORCE writes are refused (`check_vma_flags()`: hugetlb does not support
    /// FOLL_FORCE|FOLL_WRITE). KVM's `host_pfn_mapping_level()` sees the PMD leaf.
    #[test]
    fn gup_returns_the_subpage_and_refuses_forced_writes() {
        let mut mm = mm(KernelVersion::V6_12);
        let a = hugetlb(&mut mm, false);
        let r =
            gup::get_user_pages_unlocked(&mut mm, a.add(0x3000), FollFlags::WRITE, &mut NoNotifier)
                .unwrap();
        let head = mm.lookup(a).unwrap().pfn;
        assert_eq!(r.pfn(), head.add(3));
        assert_eq!(mm.folio_info(head).unwrap().refcount, 2);
        assert_eq!(mm.leaf_level(a.add(0x3000)), Some(Level::Pmd2M));
        gup::put_page(&mut mm, r);
        mm.mprotect(a, 2 * M2, Prot::R, &mut NoNotifier).unwrap();
        let e = gup::get_user_pages_unlocked(
            &mut mm,
            a,
            FollFlags::WRITE | FollFlags::FORCE,
            &mut NoNotifier,
        );
        assert!(matches!(e, Err(GupError::Efault(_))), "{e:?}");
        ok(&mm);
    }

    /// hugetlb mappings must be aligned to their page size (`hugetlbfs_file_mmap()` /
    /// `hugetlb_get_unmapped_area()`: EINVAL).
    #[test]
    fn unaligned_hugetlb_mmap_is_refused() {
        let mut mm = mm(KernelVersion::V6_12);
        let mut req = MmapRequest::anon(BASE.add(0x1000), M2);
        req.backing = Backing::Hugetlb(Level::Pmd2M);
        assert!(matches!(
            mm.mmap(req.clone()),
            Err(MmapError::HugetlbUnaligned { .. })
        ));
        req.addr = Some(BASE);
        req.len = M2 + 0x1000;
        assert!(matches!(
            mm.mmap(req),
            Err(MmapError::HugetlbUnaligned { .. })
        ));
    }

    /// `adjust_range_if_pmd_sharing_possible()`: only a shared VMA spanning a whole 1G block
    /// widens ranges, to 1G boundaries.
    #[test]
    fn pmd_sharing_widens_only_shared_vmas_with_a_whole_pud() {
        let mut mm = mm(KernelVersion::V6_12);
        let mut req = MmapRequest::anon(BASE, G1);
        req.backing = Backing::Hugetlb(Level::Pmd2M);
        req.shared = true;
        let a = mm.mmap(req).unwrap();
        access(&mut mm, a.add(M2), true);
        let r = mm
            .madvise(a.add(M2), M2, Advice::Dontneed, &mut NoNotifier)
            .unwrap();
        assert_eq!(triples(&r.notifiers), vec![(Clear, a.0, a.0 + G1)]);
        let v = mm.find_vma(a).unwrap().clone();
        let mut private = v.clone();
        private.flags = private.flags.without(VmFlags::MAYSHARE | VmFlags::SHARED);
        assert_eq!(
            super::pmd_sharing_range(&private, a.add(M2), a.add(2 * M2)),
            (a.add(M2), a.add(2 * M2))
        );
        ok(&mm);
    }

    /// 1G hugetlb: the fault maps a PUD leaf of a whole 1G folio; MADV_DONTNEED of 2M at
    /// the 1G-aligned start rounds down to nothing (`madvise_dontneed_free_valid_vma()`),
    /// of the whole 1G clears it; mprotect of 2M is a refused split (EINVAL).
    #[test]
    fn one_gig_pages_are_pud_leaves_with_1g_rules() {
        let mut mm = mm(KernelVersion::V6_12);
        let mut req = MmapRequest::anon(BASE, G1);
        req.backing = Backing::Hugetlb(Level::Pud1G);
        let a = mm.mmap(req).unwrap();
        let r = access(&mut mm, a.add(5 * M2), true);
        assert_eq!(names(&r), vec!["hugetlb", "hugetlb-wp"]);
        let m = mm.lookup(a.add(5 * M2)).unwrap();
        assert_eq!((m.level, m.leaf_start), (Level::Pud1G, a));
        assert_eq!(mm.folio_info(m.pfn).unwrap().order, 18);
        let r = mm
            .madvise(a, M2, Advice::Dontneed, &mut NoNotifier)
            .unwrap();
        assert!(r.notifiers.is_empty() && mm.lookup(a).is_some());
        let e = mm.mprotect(a, M2, Prot::R, &mut NoNotifier);
        assert!(
            matches!(e, Err(MprotectError::HugetlbSplit { .. })),
            "{e:?}"
        );
        let r = mm
            .madvise(a, G1, Advice::Dontneed, &mut NoNotifier)
            .unwrap();
        assert_eq!(triples(&r.notifiers), vec![(Clear, a.0, a.0 + G1)]);
        assert!(mm.lookup(a).is_none());
        ok(&mm);
    }
}
