//! MADV_COLD (mm/madvise.c), for the folios the model can age without splitting.

use super::folio::ff;
use super::ops::{check_range, MadviseError, OpReport};
use super::pte::Entry;
use super::vma::VmFlags;
use super::Mm;
use crate::types::{Hva, Level};

/// What MADV_COLD did, or why the model cannot do it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ColdOutcome {
    /// Done: the entries made old (no notifier is sent).
    Done(OpReport),
    /// The range holds a large folio that Linux would split first (`split_folio()`): not
    /// modelled. The string says where.
    NeedsSplit(String),
}

impl Mm {
    /// Models `madvise_cold()` → `madvise_cold_or_pageout_pte_range()` with `pageout =
    /// false` (mm/madvise.c, 6.12): refused (EINVAL) on VM_PFNMAP / VM_LOCKED VMAs
    /// (`can_madv_lru_vma()`); for each present entry of a normal, not shared folio
    /// (`folio_likely_mapped_shared()` skips shared ones; the zero page, the huge zero PMD
    /// and special entries are skipped by `vm_normal_folio()` / `is_huge_zero_pmd()`), the
    /// young bit is cleared (`clear_young_dirty_ptes(CYDP_CLEAR_YOUNG)`, or `pmd_mkold()`
    /// for a PMD that the range covers whole) and PG_referenced cleared; the folio is
    /// deactivated. No mmu notifier is called, so a secondary MMU keeps its accessed state.
    ///
    /// A PMD THP the range covers only in part, or a PTE-mapped large folio, is split by
    /// Linux first; the model reports [`ColdOutcome::NeedsSplit`] instead and changes
    /// nothing.
    pub fn madvise_cold(&mut self, start: Hva, len: u64) -> Result<ColdOutcome, MadviseError> {
        let end = check_range(start, len)?;
        if !self.covered(start, end) {
            return Err(MadviseError::Hole { start, end });
        }
        if self
            .vmas_in(start, end)
            .iter()
            .any(|v| v.flags.intersects(VmFlags::PFNMAP | VmFlags::HUGETLB))
        {
            return Err(MadviseError::NotLru);
        }
        let mut leaves = Vec::new();
        self.space.pt.for_each_leaf(start, end, |va, level, e| {
            if e.is_present() && !e.is_protnone() {
                leaves.push((va, level, e));
            }
        });
        // First pass: refuse what needs a split, before changing anything.
        for &(va, level, e) in &leaves {
            let Some(id) = self.leaf_ref_folio(e) else {
                continue;
            };
            let f = &self.frames.folios[id];
            if f.mapcount > 1 {
                continue;
            }
            let whole = va >= start && va.add(level.size()) <= end;
            if (level == Level::Pmd2M && !whole) || (level == Level::Pte4K && f.order > 0) {
                return Ok(ColdOutcome::NeedsSplit(format!(
                    "the large folio mapped at {va} ({}) would be split by split_folio()",
                    level.name()
                )));
            }
        }
        let mut report = OpReport::new("madvise-cold", start, end);
        for (va, level, e) in leaves {
            let Some(id) = self.leaf_ref_folio(e) else {
                continue;
            };
            if self.frames.folios[id].mapcount > 1 {
                report.skipped += 1;
                continue;
            }
            self.frames.folios[id].flags &= !ff::REFERENCED;
            if e.is_young() {
                let old = e.clear(Entry::YOUNG);
                match level {
                    Level::Pte4K => self.set_pte(va, old),
                    Level::Pmd2M => self.set_pmd(va, old),
                    Level::Pud1G => self.set_pud(va, old),
                }
                report.changed += 1;
            }
        }
        Ok(ColdOutcome::Done(report))
    }
}
