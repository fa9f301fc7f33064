//! Models mm/khugepaged.c: `madvise_collapse()` → `collapse_huge_page()`.

use super::*;
use crate::host::folio::ff;
use crate::host::pagetable::PmdSlot;
use crate::host::pte::Entry;
use crate::host::vma::{VmFlags, Vma};
use crate::host::Mm;
use crate::notifier::{MmuNotifier, NotifierEvent, NotifierRange};
use crate::types::{Hva, Level, Pfn, PAGE_SIZE};

impl Mm {
    /// Models `madvise_collapse()` → `collapse_huge_page()` (mm/khugepaged.c) for anonymous
    /// VMAs: each 2M-aligned block of the range that is PTE-mapped with at least one anon
    /// page becomes a THP under CLEAR [haddr, +2M). Fails (EAGAIN) when a page has extra
    /// references (GUP) or is shared; ENOMEM when the THP cannot be allocated.
    pub(super) fn madvise_collapse(
        &mut self,
        vma: &Vma,
        start: Hva,
        end: Hva,
        notifier: &mut dyn MmuNotifier,
        report: &mut OpReport,
    ) -> Result<(), MadviseError> {
        if !vma.is_anonymous() || vma.flags.contains(VmFlags::NOHUGEPAGE) {
            return Err(MadviseError::Collapse {
                reason: "only anonymous VMAs without MADV_NOHUGEPAGE collapse in this model",
            });
        }
        let mut haddr = start.align_up(Level::Pmd2M);
        while haddr.add(Level::Pmd2M.size()) <= end {
            let hend = haddr.add(Level::Pmd2M.size());
            if !matches!(self.space.pt.pmd_slot(haddr), Some(PmdSlot::Table(_))) {
                haddr = hend;
                continue;
            }
            let mut olds = Vec::new();
            let mut va = haddr;
            let mut ok = true;
            while va < hend {
                let e = self.space.pt.pte(va).unwrap_or(Entry::NONE);
                if !e.is_none() {
                    if e.is_protnone() || !e.is_present() {
                        ok = false;
                    } else if let Some(id) = self.leaf_ref_folio(e) {
                        let f = &self.frames.folios[id];
                        if !f.has(ff::ANON) || f.mapcount != 1 || f.refcount != 1 {
                            ok = false;
                        }
                        olds.push((va, e));
                    }
                }
                va = va.add(PAGE_SIZE);
            }
            if olds.is_empty() {
                haddr = hend;
                continue;
            }
            if !ok {
                return Err(MadviseError::Collapse {
                    reason: "a page is shared or has extra references (EAGAIN)",
                });
            }
            let Some(id) = self.frames.alloc(9, self.alloc_node(vma)) else {
                return Err(MadviseError::Collapse {
                    reason: "the THP allocation failed (ENOMEM)",
                });
            };
            let range = NotifierRange::new(NotifierEvent::Clear, haddr, hend);
            self.notify(notifier, &mut report.notifiers, range, |mm| {
                let mut va = haddr;
                while va < hend {
                    let e = mm.space.pt.pte(va).unwrap_or(Entry::NONE);
                    mm.drop_leaf_ref(e);
                    va = va.add(PAGE_SIZE);
                }
                if let Some(s) = mm.space.pt.pmd_slot_mut(haddr, false) {
                    *s = PmdSlot::None;
                    mm.space.pt.tables[2] -= 1;
                }
                mm.new_anon_folio(id, vma);
                let e = mm.anon_entry(vma, Pfn(mm.frames.folios[id].pfn), Level::Pmd2M);
                mm.set_pmd(haddr, e);
            });
            report.changed += 1;
            haddr = hend;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::gup;
    use crate::host::testutil::*;
    use crate::host::*;
    use crate::notifier::{NoNotifier, NotifierEvent::*};
    use crate::types::{KernelVersion, Level};

    /// Models `madvise_collapse()` → `collapse_huge_page()`: CLEAR [haddr, +2M), one THP
    /// replaces the PTE-mapped pages; a page with a GUP reference blocks it (EAGAIN).
    #[test]
    fn madv_collapse_replaces_ptes_with_thp_under_clear_2m() {
        let mut mm = mm(KernelVersion::V6_12);
        let a = anon(&mut mm, 2 * M2, false);
        w(&mut mm, a.add(0x1000));
        w(&mut mm, a.add(0x7000));
        let p =
            gup::get_user_page_fast_only(&mut mm, a.add(0x1000), gup::FollFlags::empty()).unwrap();
        assert!(mm
            .madvise(a, 2 * M2, Advice::Collapse, &mut NoNotifier)
            .is_err());
        gup::put_page(&mut mm, p);
        let r = mm
            .madvise(a, 2 * M2, Advice::Collapse, &mut NoNotifier)
            .unwrap();
        assert_eq!(triples(&r.notifiers), vec![(Clear, a.0, a.0 + M2)]);
        assert_eq!(mm.leaf_level(a.add(0x1000)), Some(Level::Pmd2M));
        ok(&mm);
    }
}
