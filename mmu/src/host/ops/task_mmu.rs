//! Models fs/proc/task_mmu.c `clear_refs_write()` (CLEAR_REFS_SOFT_DIRTY).

use super::*;
use crate::host::folio::ff;
use crate::host::pagetable::set_leaf;
use crate::host::pte::Entry;
use crate::host::vma::{VmFlags, Vma};
use crate::host::Mm;
use crate::notifier::{MmuNotifier, NotifierEvent, NotifierRange};
use crate::types::Hva;

impl Mm {
    /// Models `clear_refs_write()` with CLEAR_REFS_SOFT_DIRTY (fs/proc/task_mmu.c): one
    /// SOFT_DIRTY range [0, -1), VM_SOFTDIRTY cleared on every VMA (shared writable
    /// mappings become write-notify), every present entry write-protected with its
    /// soft-dirty bit cleared, except pinned exclusive anon pages in COW mappings.
    pub fn clear_refs_soft_dirty(&mut self, notifier: &mut dyn MmuNotifier) -> OpReport {
        let mut report = OpReport::new("clear-refs-soft-dirty", Hva(0), Hva(u64::MAX));
        let range = NotifierRange::new(NotifierEvent::SoftDirty, Hva(0), Hva(u64::MAX));
        let vmas: Vec<Vma> = self.space.vmas.values().cloned().collect();
        self.notify(notifier, &mut report.notifiers, range, |mm| {
            for mut v in vmas {
                if v.hugetlb_level().is_some() {
                    // clear_refs_pte_range() has no hugetlb_entry: hugetlb VMAs are walked
                    // over untouched.
                    continue;
                }
                v.flags = v.flags.without(VmFlags::SOFTDIRTY);
                mm.space.vmas.insert(v.start.0, v.clone());
                let mut leaves = Vec::new();
                mm.space.pt.for_each_leaf(v.start, v.end, |va, level, e| {
                    if e.is_present() {
                        leaves.push((va, level, e));
                    }
                });
                for (va, level, e) in leaves {
                    let pinned = v.is_cow_mapping()
                        && mm.leaf_ref_folio(e).is_some_and(|id| {
                            let f = &mm.frames.folios[id];
                            f.has(ff::ANON) && f.pincount > 0
                        });
                    if pinned {
                        continue;
                    }
                    set_leaf(
                        &mut mm.space.pt,
                        va,
                        level,
                        e.clear(Entry::WRITE | Entry::SOFT_DIRTY),
                    );
                    report.changed += 1;
                }
            }
        });
        report
    }
}

#[cfg(test)]
mod tests {
    use crate::host::testutil::*;
    use crate::host::*;

    use crate::notifier::{NoNotifier, NotifierEvent::*, NotifierLog};
    use crate::types::KernelVersion;

    /// Models `clear_refs_write(CLEAR_REFS_SOFT_DIRTY)`: SOFT_DIRTY [0, -1); entries are
    /// write-protected; the next write reuses the page (no notifier) and sets soft-dirty.
    #[test]
    fn clear_refs_soft_dirty_write_protects_under_soft_dirty_range() {
        let mut mm = mm(KernelVersion::V6_12);
        let a = anon(&mut mm, M2, false);
        w(&mut mm, a);
        assert!(mm.lookup(a).unwrap().entry.is_soft_dirty());
        let r = mm.clear_refs_soft_dirty(&mut NoNotifier);
        assert_eq!(triples(&r.notifiers), vec![(SoftDirty, 0, u64::MAX)]);
        let e = mm.lookup(a).unwrap();
        assert!(!e.writable && !e.entry.is_soft_dirty());
        let mut log = NotifierLog::new();
        let f = mm.user_access(a, true, &mut log).unwrap();
        assert_eq!(f.host_faults, vec![HostFault::WpReuse]);
        assert!(log.calls.is_empty());
        assert!(mm.lookup(a).unwrap().entry.is_soft_dirty());
    }
}
