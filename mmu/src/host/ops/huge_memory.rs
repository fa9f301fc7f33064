//! Models mm/huge_memory.c: `split_huge_pmd()` / `split_huge_pud()` as an operation and
//! `split_huge_page()`.

use super::*;
use crate::host::folio::ff;
use crate::host::{ChildId, Mm};
use crate::notifier::{MmuNotifier, NoNotifier, NotifierEvent, NotifierRange};
use crate::types::{Hva, Level, Pfn, TASK_SIZE};

impl Mm {
    /// Models `split_huge_pmd()` (include/linux/huge_mm.h) over the range (e.g. the
    /// debugfs/`split_huge_pages` PMD step): CLEAR [haddr, +2M) per PMD leaf; PUD leaves: CLEAR 1G
    /// (cleared).
    pub fn thp_split(
        &mut self,
        start: Hva,
        len: u64,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<OpReport, RangeError> {
        let end = check_range(start, len)?;
        let mut report = OpReport::new("thp-split", start, end);
        for v in self.vmas_in(start, end) {
            if v.hugetlb_level().is_some() {
                // hugetlb leaves are never split (`split_huge_pmd()` is for THPs).
                continue;
            }
            let mut leaves = Vec::new();
            self.space
                .pt
                .for_each_leaf(start.max(v.start), end.min(v.end), |va, level, _| {
                    if level != Level::Pte4K {
                        leaves.push((va, level));
                    }
                });
            for (va, level) in leaves {
                if level == Level::Pmd2M {
                    self.split_huge_pmd(&v, va, notifier, &mut report.notifiers);
                } else {
                    self.split_huge_pud(va, notifier, &mut report.notifiers);
                }
                report.changed += 1;
            }
        }
        Ok(report)
    }

    /// Models `split_huge_page()` / `split_folio()` (mm/huge_memory.c, e.g. the deferred
    /// split queue or debugfs `split_huge_pages`) of every large anonymous folio mapped in
    /// the range: `unmap_folio()` → `try_to_migrate(TTU_SPLIT_HUGE_PMD)` splits a PMD
    /// mapping first (CLEAR [haddr, +2M), frozen) and then sends CLEAR over the folio span;
    /// the folio becomes order-0 folios and `remap_page()` restores the entries without a
    /// notifier. Subpages no longer mapped anywhere are freed. A folio with extra
    /// references or pins cannot be split (`can_split_folio()` → -EAGAIN) and is skipped.
    pub fn split_huge_page(
        &mut self,
        start: Hva,
        len: u64,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<OpReport, RangeError> {
        let end = check_range(start, len)?;
        let mut report = OpReport::new("split-huge-page", start, end);
        let mut seen = std::collections::BTreeSet::new();
        let mut todo = Vec::new();
        self.space
            .pt
            .for_each_leaf(start, end, |va, _, e| todo.push((va, e)));
        for (va, e) in todo {
            let Some(id) = self.leaf_ref_folio(e) else {
                continue;
            };
            let f = &self.frames.folios[id];
            // A hugetlb folio is no THP: split_huge_pages_pid() skips hugetlb VMAs.
            if f.order == 0 || !f.has(ff::ANON) || f.has(ff::HUGETLB) || !seen.insert(f.pfn) {
                continue;
            }
            if f.refcount != f.mapcount || f.pincount > 0 {
                report.skipped += 1;
                continue;
            }
            let Some(vma) = self.space.vma(va).cloned() else {
                continue;
            };
            let head = Pfn(f.pfn);
            let pages = f.nr_pages();
            let span = self.folio_span(&vma, va, id);
            if matches!(
                self.space.pt.walk(va),
                crate::host::pagetable::Walk::Leaf(Level::Pmd2M, _)
            ) {
                self.split_huge_pmd(&vma, va, notifier, &mut report.notifiers);
            }
            let range = NotifierRange::new(NotifierEvent::Clear, span.0, span.1);
            self.notify(notifier, &mut report.notifiers, range, |mm| {
                // Children's PMD mappings are split too (their mm has no subscriber here).
                for c in 0..mm.children.len() {
                    mm.with_child(ChildId(c), |cm| {
                        let mut pmds = Vec::new();
                        cm.space
                            .pt
                            .for_each_leaf(Hva(0), Hva(TASK_SIZE), |cva, level, ce| {
                                if level == Level::Pmd2M && ce.pfn() == head {
                                    pmds.push(cva);
                                }
                            });
                        for cva in pmds {
                            if let Some(cv) = cm.space.vma(cva).cloned() {
                                cm.split_huge_pmd(&cv, cva, &mut NoNotifier, &mut Vec::new());
                            }
                        }
                    });
                }
                // Count the mappings of each subpage in every address space.
                let mut counts = vec![0i32; usize::try_from(pages).unwrap_or(0)];
                let spaces = std::iter::once(&mm.space).chain(mm.children.iter().flatten());
                for sp in spaces {
                    sp.pt.for_each_leaf(Hva(0), Hva(TASK_SIZE), |_, level, le| {
                        let p = le.pfn().0;
                        if level == Level::Pte4K
                            && le.is_present()
                            && !le.is_special()
                            && p >= head.0
                            && p < head.0 + pages
                        {
                            counts[usize::try_from(p - head.0).unwrap_or(0)] += 1;
                        }
                    });
                }
                let ids = mm.frames.split_folio(id);
                for (sub, c) in ids.into_iter().zip(counts) {
                    let f = &mut mm.frames.folios[sub];
                    f.mapcount = c;
                    f.refcount = c;
                    if c == 0 {
                        // Unmapped tail pages go back to the allocator.
                        f.refcount = 1;
                        mm.frames.put(sub, 1);
                    }
                }
            });
            report.changed += 1;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use crate::host::testutil::*;

    use crate::gup;
    use crate::notifier::{NoNotifier, NotifierEvent::*};
    use crate::types::{KernelVersion, Level};

    /// Models `__split_huge_pmd()` as an operation: CLEAR [haddr, +2M) per PMD leaf; the
    /// THP's reference and mapcount become 512.
    #[test]
    fn thp_split_sends_clear_2m_and_keeps_refcounts_balanced() {
        let mut mm = mm(KernelVersion::V6_12);
        let a = anon(&mut mm, 2 * M2, true);
        w(&mut mm, a);
        let r = mm.thp_split(a, 2 * M2, &mut NoNotifier).unwrap();
        assert_eq!(triples(&r.notifiers), vec![(Clear, a.0, a.0 + M2)]);
        let m = mm.lookup(a.add(0x5000)).unwrap();
        assert_eq!(m.level, Level::Pte4K);
        let f = mm.folio_info(m.pfn).unwrap();
        assert_eq!((f.order, f.refcount, f.mapcount), (9, 512, 512));
        ok(&mm);
    }

    /// Models `split_huge_page()` of a PMD-mapped THP: CLEAR 2M for the frozen PMD split, then
    /// CLEAR over the folio span from `try_to_migrate_one()`; 512 order-0 folios remain, each
    /// mapped once. A GUP reference makes the split fail.
    #[test]
    fn split_huge_page_splits_folio_under_two_clears() {
        let mut mm = mm(KernelVersion::V6_12);
        let a = anon(&mut mm, 2 * M2, true);
        w(&mut mm, a);
        let p = gup::get_user_page_fast_only(&mut mm, a, gup::FollFlags::empty()).unwrap();
        let r = mm.split_huge_page(a, 2 * M2, &mut NoNotifier).unwrap();
        assert_eq!((r.changed, r.skipped), (0, 1));
        gup::put_page(&mut mm, p);
        let r = mm.split_huge_page(a, 2 * M2, &mut NoNotifier).unwrap();
        assert_eq!(
            triples(&r.notifiers),
            vec![(Clear, a.0, a.0 + M2), (Clear, a.0, a.0 + M2)]
        );
        let m = mm.lookup(a.add(0x5000)).unwrap();
        assert_eq!(m.level, Level::Pte4K);
        let f = mm.folio_info(m.pfn).unwrap();
        assert_eq!((f.order, f.refcount, f.mapcount), (0, 1, 1));
        ok(&mm);
    }

    /// Models the deferred split of a partly unmapped THP: after munmap of half of a
    /// PTE-mapped THP, splitting frees the unmapped subpages.
    #[test]
    fn split_huge_page_frees_unmapped_subpages() {
        let mut mm = mm(KernelVersion::V6_12);
        let a = anon(&mut mm, 2 * M2, true);
        w(&mut mm, a);
        let before = mm.memory_use().allocated_pages;
        mm.munmap(a.add(M2 / 2), M2 / 2, &mut NoNotifier).unwrap();
        ok(&mm);
        assert_eq!(
            mm.memory_use().allocated_pages,
            before,
            "still one 2M folio"
        );
        let r = mm.split_huge_page(a, M2 / 2, &mut NoNotifier).unwrap();
        assert_eq!(triples(&r.notifiers), vec![(Clear, a.0, a.0 + M2 / 2)]);
        assert_eq!(mm.memory_use().allocated_pages, before - 256);
        ok(&mm);
    }
}
