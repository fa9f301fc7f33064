//! Models mm/vmscan.c `shrink_folio_list()` for what reclaim can do without swap.

use super::*;
use crate::host::folio::ff;
use crate::host::pagetable::set_leaf;
use crate::host::pte::Entry;
use crate::host::Mm;
use crate::notifier::{MmuNotifier, NotifierEvent, NotifierRange};
use crate::types::{Hva, Level, PAGE_SIZE};

impl Mm {
    /// Models reclaim of the range's folios (`shrink_folio_list()` (mm/vmscan.c) →
    /// `folio_referenced()` → `try_to_unmap_one()`) for what can go without swap: MADV_FREE'd
    /// (lazyfree) clean order-0 anon folios. A young one (PTE young or the subscriber's
    /// `clear_flush_young` on [addr, +4K)) is kept and aged; a re-dirtied or extra-referenced one
    /// is kept; others are discarded under CLEAR [addr, +4K) (the folio span) and freed, so the
    /// next read maps the zero page.
    pub fn reclaim(
        &mut self,
        start: Hva,
        len: u64,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<OpReport, RangeError> {
        let end = check_range(start, len)?;
        let mut report = OpReport::new("reclaim", start, end);
        let mut leaves = Vec::new();
        self.space.pt.for_each_leaf(start, end, |va, level, e| {
            if level == Level::Pte4K && e.is_present() && !e.is_protnone() {
                leaves.push((va, e));
            }
        });
        for (va, e) in leaves {
            let Some(id) = self.leaf_ref_folio(e) else {
                continue;
            };
            let f = &self.frames.folios[id];
            if !f.has(ff::ANON) || !f.has(ff::LAZYFREE) || f.order != 0 {
                continue;
            }
            let young = notifier.clear_flush_young(va, va.add(PAGE_SIZE)) | e.is_young();
            if young {
                self.set_pte(va, e.clear(Entry::YOUNG));
                report.skipped += 1;
                continue;
            }
            let f = &mut self.frames.folios[id];
            if e.is_dirty() || f.has(ff::DIRTY) || f.refcount != f.mapcount || f.mapcount != 1 {
                // Re-dirtied (or pinned/shared): back to swap-backed, kept.
                f.flags &= !ff::LAZYFREE;
                report.skipped += 1;
                continue;
            }
            let range = NotifierRange::new(NotifierEvent::Clear, va, va.add(PAGE_SIZE));
            self.notify(notifier, &mut report.notifiers, range, |mm| {
                set_leaf(&mut mm.space.pt, va, Level::Pte4K, Entry::NONE);
                mm.drop_leaf_ref(e);
            });
            report.changed += 1;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use crate::host::testutil::*;
    use crate::host::*;

    use crate::notifier::{NoNotifier, NotifierEvent::*, NotifierLog};
    use crate::types::KernelVersion;

    /// Models reclaim of MADV_FREE'd pages (`try_to_unmap_one()` discarding a clean lazyfree
    /// anon folio): CLEAR [addr, +4K), the page is freed and the next read maps the zero page;
    /// a young page is only aged, a re-dirtied page is kept.
    #[test]
    fn reclaim_discards_clean_lazyfree_pages_under_clear() {
        let mut mm = mm(KernelVersion::V6_12);
        let a = anon(&mut mm, M2, false);
        for i in 0..3 {
            w(&mut mm, a.add(i * 0x1000));
        }
        mm.madvise(a, 0x3000, Advice::Free, &mut NoNotifier)
            .unwrap();
        w(&mut mm, a.add(0x2000)); // re-dirtied after MADV_FREE
        mm.user_access(a.add(0x1000), false, &mut NoNotifier)
            .unwrap(); // young again
        let mut log = NotifierLog::new();
        let r = mm.reclaim(a, 0x3000, &mut log).unwrap();
        assert_eq!(triples(&r.notifiers), vec![(Clear, a.0, a.0 + 0x1000)]);
        assert_eq!((r.changed, r.skipped), (1, 2));
        assert!(mm.lookup(a).is_none());
        let rd = mm.user_access(a, false, &mut NoNotifier).unwrap();
        assert_eq!(rd.host_faults, vec![HostFault::AnonZero]);
        ok(&mm);
    }
}
