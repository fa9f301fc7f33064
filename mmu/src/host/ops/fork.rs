//! Models kernel/fork.c `dup_mmap()` → `copy_page_range()` (mm/memory.c), and the forked child's
//! accesses and exit.

use super::*;
use crate::host::folio::ff;
use crate::host::pagetable::set_leaf;
use crate::host::pagetable::PageTable;
use crate::host::pte::Entry;
use crate::host::vma::{VmFlags, Vma};
use crate::host::{AddrSpace, ChildId, Mm};
use crate::notifier::{MmuNotifier, NoNotifier, NotifierEvent, NotifierRange};
use crate::types::{Hva, Level, NodeId, Pfn, TASK_SIZE};

/// fork failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForkError {
    /// Out of memory copying a pinned page
    #[error("Out of memory copying a maybe-pinned page during fork")]
    Oom,
}

impl Mm {
    /// Models `fork()` → `dup_mmap()` → `copy_page_range()` (mm/memory.c): for each VMA
    /// that needs copying (anon_vma, PFNMAP/MIXEDMAP, uffd-wp), a COW VMA gets
    /// PROTECTION_PAGE [vm_start, vm_end) while its writable anon entries are
    /// write-protected in parent and child and the folios lose PageAnonExclusive; a
    /// maybe-pinned anon page is copied for the child right away (`copy_present_page()`).
    /// Shared and file mappings without anon pages are not copied (the child faults).
    pub fn fork(
        &mut self,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<(ChildId, OpReport), ForkError> {
        let mut report = OpReport::new("fork", Hva(0), Hva(TASK_SIZE));
        let mut child = AddrSpace {
            vmas: Default::default(),
            pt: PageTable::new(),
            write_protect_seq: 0,
        };
        self.space.write_protect_seq += 1;
        let vmas: Vec<Vma> = self.space.vmas.values().cloned().collect();
        for v in vmas {
            if v.flags.contains(VmFlags::DONTCOPY) {
                continue;
            }
            child.vmas.insert(v.start.0, v.clone());
            let needs_copy = v.anon_vma
                || v.flags
                    .intersects(VmFlags::PFNMAP | VmFlags::MIXEDMAP | VmFlags::UFFD_WP);
            if !needs_copy {
                continue;
            }
            if v.hugetlb_level().is_some() {
                // copy_page_range(): `if (is_vm_hugetlb_page(src_vma)) copy_hugetlb_page_range()`.
                self.copy_hugetlb_page_range(&v, &mut child, notifier, &mut report.notifiers)?;
                continue;
            }
            let cow = v.is_cow_mapping();
            let range = NotifierRange::new(NotifierEvent::ProtectionPage, v.start, v.end);
            if cow {
                notifier.invalidate_range_start(&range);
                report.notifiers.push(range);
            }
            let r = self.copy_vma_tables(&v, cow, &mut child, notifier, &mut report);
            if cow {
                notifier.invalidate_range_end(&range);
            }
            r?;
        }
        self.space.write_protect_seq += 1;
        self.children.push(Some(child));
        Ok((ChildId(self.children.len() - 1), report))
    }

    fn copy_vma_tables(
        &mut self,
        v: &Vma,
        cow: bool,
        child: &mut AddrSpace,
        notifier: &mut dyn MmuNotifier,
        report: &mut OpReport,
    ) -> Result<(), ForkError> {
        // Pinned THPs are split first (copy_huge_pmd() returns -EAGAIN).
        let mut leaves = Vec::new();
        self.space
            .pt
            .for_each_leaf(v.start, v.end, |va, level, e| leaves.push((va, level, e)));
        for (va, level, e) in &leaves {
            if *level == Level::Pmd2M && cow {
                if let Some(id) = self.leaf_ref_folio(*e) {
                    if self.frames.folios[id].pincount > 0 && self.frames.folios[id].has(ff::ANON) {
                        self.split_huge_pmd(v, *va, notifier, &mut report.notifiers);
                    }
                }
            }
        }
        let mut leaves = Vec::new();
        self.space
            .pt
            .for_each_leaf(v.start, v.end, |va, level, e| leaves.push((va, level, e)));
        for (va, level, e) in leaves {
            let mut ce = e;
            if e.is_present() {
                if let Some(id) = self.leaf_ref_folio(e) {
                    let f = &self.frames.folios[id];
                    if f.has(ff::ANON) && cow && f.pincount > 0 && level == Level::Pte4K {
                        // copy_present_page(): the child gets its own copy now.
                        let nid = self.frames.alloc(0, NodeId(f.node)).ok_or(ForkError::Oom)?;
                        let nf = &mut self.frames.folios[nid];
                        nf.flags |= ff::ANON | ff::ANON_EXCLUSIVE | ff::DIRTY;
                        nf.mapcount = 1;
                        let pfn = Pfn(nf.pfn);
                        let child_e = v.maybe_mkwrite(Entry::new(pfn, e.0).set(Entry::DIRTY));
                        set_leaf(&mut child.pt, va, level, child_e);
                        continue;
                    }
                    self.frames.get(id, 1);
                    let f = &mut self.frames.folios[id];
                    f.mapcount += 1;
                    if f.has(ff::ANON) {
                        f.flags &= !ff::ANON_EXCLUSIVE;
                    }
                    if cow && e.is_write() {
                        let wp = e.clear(Entry::WRITE);
                        set_leaf(&mut self.space.pt, va, level, wp);
                        ce = wp;
                    }
                } else if cow && e.is_write() {
                    let wp = e.clear(Entry::WRITE);
                    set_leaf(&mut self.space.pt, va, level, wp);
                    ce = wp;
                }
            }
            if v.flags.contains(VmFlags::SHARED) {
                ce = ce.clear(Entry::DIRTY);
            }
            ce = ce.clear(Entry::YOUNG);
            set_leaf(&mut child.pt, va, level, ce);
        }
        Ok(())
    }

    /// The child's view: runs `f` with the child's address space swapped in.
    pub(super) fn with_child<R>(&mut self, id: ChildId, f: impl FnOnce(&mut Mm) -> R) -> Option<R> {
        let mut space = self.children.get_mut(id.0)?.take()?;
        std::mem::swap(&mut self.space, &mut space);
        let r = f(self);
        std::mem::swap(&mut self.space, &mut space);
        self.children[id.0] = Some(space);
        Some(r)
    }

    /// A user access by the forked child (its faults notify no one).
    pub fn child_access(
        &mut self,
        id: ChildId,
        hva: Hva,
        write: bool,
    ) -> Option<Result<OpReport, AccessError>> {
        self.with_child(id, |mm| mm.user_access(hva, write, &mut NoNotifier))
    }

    /// The forked child exits (`exit_mmap()` (mm/mmap.c)): its mappings are dropped.
    pub fn child_exit(&mut self, id: ChildId) -> bool {
        let done = self
            .with_child(id, |mm| {
                let vmas: Vec<Vma> = mm.space.vmas.values().cloned().collect();
                for v in vmas {
                    mm.zap_range(&v, v.start, v.end, true, &mut NoNotifier, &mut Vec::new());
                }
                mm.space.vmas.clear();
            })
            .is_some();
        if done {
            self.children[id.0] = None;
            self.drop_unused_files();
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use crate::gup;
    use crate::host::testutil::*;
    use crate::host::*;
    use crate::notifier::{NoNotifier, NotifierEvent::*};
    use crate::types::{Hva, KernelVersion};

    /// Models `copy_page_range()`: PROTECTION_PAGE over each COW VMA that has anon pages;
    /// VMAs without anon_vma (only zero pages) and shared VMAs get no notifier.
    #[test]
    fn fork_sends_protection_page_for_cow_vmas_with_anon_pages() {
        let mut mm = mm(KernelVersion::V6_12);
        let a = anon(&mut mm, M2, false);
        let b = mm.mmap(MmapRequest::anon(Hva(BASE.0 + G1), M2)).unwrap();
        let mut shm = MmapRequest::anon(Hva(BASE.0 + 2 * G1), M2);
        shm.shared = true;
        let c = mm.mmap(shm).unwrap();
        w(&mut mm, a);
        mm.user_access(b, false, &mut NoNotifier).unwrap();
        w(&mut mm, c);
        let (child, r) = mm.fork(&mut NoNotifier).unwrap();
        assert_eq!(triples(&r.notifiers), vec![(ProtectionPage, a.0, a.0 + M2)]);
        let f = mm.folio_info(mm.lookup(a).unwrap().pfn).unwrap();
        assert_eq!((f.refcount, f.mapcount, f.anon_exclusive), (2, 2, false));
        assert!(mm.lookup(c).unwrap().writable, "shared mapping untouched");
        ok(&mm);
        // The child writes: COW in the child, parent page now exclusive-able.
        mm.child_access(child, a, true).unwrap().unwrap();
        ok(&mm);
        assert!(mm.child_exit(child));
        ok(&mm);
    }

    /// Models `copy_present_page()`: a maybe-pinned anon page is copied for the child at fork,
    /// so the parent's page stays exclusive and writable.
    #[test]
    fn fork_copies_pinned_page_for_child() {
        let mut mm = mm(KernelVersion::V6_12);
        let a = anon(&mut mm, M2, false);
        w(&mut mm, a);
        let p = gup::get_user_pages_fast(
            &mut mm,
            a,
            gup::FollFlags::PIN | gup::FollFlags::WRITE,
            &mut NoNotifier,
        )
        .unwrap();
        mm.fork(&mut NoNotifier).unwrap();
        let m = mm.lookup(a).unwrap();
        assert!(m.writable);
        assert!(mm.folio_info(m.pfn).unwrap().anon_exclusive);
        gup::unpin_user_page(&mut mm, p);
        ok(&mm);
    }

    /// Models `vma_needs_copy()` after a THP read fault: `do_huge_pmd_anonymous_page()` set
    /// anon_vma before mapping the huge zero PMD, so fork copies and notifies that VMA
    /// (PROTECTION_PAGE) although it holds no anon page; the huge zero PMD is shared as is.
    #[test]
    fn fork_notifies_thp_vma_that_only_mapped_huge_zero() {
        let mut mm = mm(KernelVersion::V6_12);
        let a = anon(&mut mm, 2 * M2, true);
        mm.user_access(a, false, &mut NoNotifier).unwrap();
        let (_c, r) = mm.fork(&mut NoNotifier).unwrap();
        assert_eq!(
            triples(&r.notifiers),
            vec![(ProtectionPage, a.0, a.0 + 2 * M2)]
        );
        assert_eq!(mm.lookup(a).unwrap().pfn, mm.huge_zero_pfn());
        ok(&mm);
    }
}
