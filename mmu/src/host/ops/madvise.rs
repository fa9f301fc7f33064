//! Models mm/madvise.c: MADV_DONTNEED, MADV_FREE, MADV_HUGEPAGE/NOHUGEPAGE and the dispatch of
//! MADV_COLLAPSE.

use super::*;
use crate::host::folio::ff;
use crate::host::pte::Entry;
use crate::host::vma::{VmFlags, Vma};
use crate::host::Mm;
use crate::notifier::{MmuNotifier, NotifierEvent, NotifierRange};
use crate::types::{Hva, Level, PAGE_SIZE};
use serde::{Deserialize, Serialize};

/// madvise advice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Advice {
    /// MADV_DONTNEED
    Dontneed,
    /// MADV_FREE
    Free,
    /// MADV_HUGEPAGE
    Hugepage,
    /// MADV_NOHUGEPAGE
    Nohugepage,
    /// MADV_COLLAPSE
    Collapse,
}

/// madvise failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MadviseError {
    /// Bad range.
    #[error(transparent)]
    Range(#[from] RangeError),
    /// [{start}, {end}) is not fully mapped (ENOMEM)
    #[error("[{start}, {end}) is not fully mapped (ENOMEM)")]
    Hole {
        /// Start.
        start: Hva,
        /// End.
        end: Hva,
    },
    /// MADV_DONTNEED/FREE on a VM_PFNMAP|VM_LOCKED vma (EINVAL): use unmap_mapping_range
    #[error("{advice:?} is not allowed on a VM_PFNMAP vma (EINVAL): use unmap-mapping-range")]
    Pfnmap {
        /// The advice.
        advice: Advice,
    },
    /// MADV_COLD/MADV_PAGEOUT on a VM_PFNMAP|VM_LOCKED vma (EINVAL, `can_madv_lru_vma()`)
    #[error("MADV_COLD and MADV_PAGEOUT are not allowed on a VM_PFNMAP or VM_LOCKED vma (EINVAL): age the range with clear-young instead")]
    NotLru,
    /// {advice:?} on a hugetlb VMA (EINVAL, `madvise_dontneed_free_valid_vma()`): {problem}
    #[error("{advice:?} on the hugetlb VMA at {start} is refused (EINVAL, madvise_dontneed_free_valid_vma()): {problem}")]
    Hugetlb {
        /// The advice.
        advice: Advice,
        /// Where the VMA piece starts.
        start: Hva,
        /// What is wrong and how to fix it.
        problem: &'static str,
    },
    /// {addr} splits a hugetlb VMA off its huge page size (EINVAL, `hugetlb_vm_op_split()`)
    #[error("{addr} is inside a hugetlb VMA but not on its huge page size (EINVAL, hugetlb_vm_op_split()): align the range to the huge page size")]
    HugetlbSplit {
        /// The unaligned address.
        addr: Hva,
    },
    /// MADV_COLLAPSE failed: {reason}
    #[error("MADV_COLLAPSE failed: {reason}")]
    Collapse {
        /// Why.
        reason: &'static str,
    },
}

impl Mm {
    /// Models `madvise()` (mm/madvise.c): DONTNEED → `zap_page_range_single()` CLEAR per
    /// VMA piece; FREE → CLEAR per VMA piece, anon pages marked clean and old (lazy free);
    /// HUGEPAGE/NOHUGEPAGE → VMA flags only; COLLAPSE → `madvise_collapse()`.
    pub fn madvise(
        &mut self,
        start: Hva,
        len: u64,
        advice: Advice,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<OpReport, MadviseError> {
        let end = check_range(start, len)?;
        if !self.covered(start, end) {
            return Err(MadviseError::Hole { start, end });
        }
        let name = match advice {
            Advice::Dontneed => "madvise-dontneed",
            Advice::Free => "madvise-free",
            Advice::Hugepage => "madvise-hugepage",
            Advice::Nohugepage => "madvise-nohugepage",
            Advice::Collapse => "madvise-collapse",
        };
        let mut report = OpReport::new(name, start, end);
        let vmas = self.vmas_in(start, end);
        match advice {
            Advice::Dontneed | Advice::Free => {
                for v in &vmas {
                    if v.flags.contains(VmFlags::PFNMAP) {
                        return Err(MadviseError::Pfnmap { advice });
                    }
                    if let Some(level) = v.hugetlb_level() {
                        let s = start.max(v.start);
                        let problem = if advice == Advice::Free {
                            Some("hugetlb supports MADV_DONTNEED only: use dontneed")
                        } else if !s.is_aligned(level) {
                            Some("the start is not aligned to the huge page size: align it")
                        } else {
                            None
                        };
                        if let Some(problem) = problem {
                            return Err(MadviseError::Hugetlb {
                                advice,
                                start: s,
                                problem,
                            });
                        }
                    } else if advice == Advice::Free && !v.is_anonymous() {
                        return Err(MadviseError::Pfnmap { advice });
                    }
                }
                for v in vmas {
                    let (s, mut e) = (start.max(v.start), end.min(v.end));
                    if let Some(level) = v.hugetlb_level() {
                        // madvise_dontneed_free_valid_vma(): the end is rounded down to the
                        // huge page size (no partial huge page is freed); nothing left, no
                        // zap and no notifier (`if (start == end) return 0`).
                        e = e.align_down(level);
                        if e <= s {
                            continue;
                        }
                    }
                    // zap_page_range_single() → hugetlb_zap_begin(): the notifier range is
                    // widened where PMD sharing is possible.
                    let (ns, ne) = if v.hugetlb_level().is_some() {
                        crate::host::hugetlb::pmd_sharing_range(&v, s, e)
                    } else {
                        (s, e)
                    };
                    let range = NotifierRange::new(NotifierEvent::Clear, ns, ne);
                    let log = &mut report.notifiers;
                    report.changed += self.notify_nested(notifier, log, range, |mm, n, log| {
                        if advice == Advice::Dontneed {
                            mm.zap_range(&v, s, e, true, n, log)
                        } else {
                            mm.lazyfree_range(&v, s, e, n, log)
                        }
                    });
                }
            }
            Advice::Hugepage | Advice::Nohugepage => {
                if let Some(addr) = [start, end]
                    .into_iter()
                    .find(|&a| self.hugetlb_split_refused(a))
                {
                    return Err(MadviseError::HugetlbSplit { addr });
                }
                self.split_vma_at(start);
                self.split_vma_at(end);
                for mut v in self.vmas_in(start, end) {
                    if advice == Advice::Hugepage {
                        v.flags = v.flags.without(VmFlags::NOHUGEPAGE) | VmFlags::HUGEPAGE;
                    } else {
                        v.flags = v.flags.without(VmFlags::HUGEPAGE) | VmFlags::NOHUGEPAGE;
                    }
                    self.space.vmas.insert(v.start.0, v);
                    report.changed += 1;
                }
            }
            Advice::Collapse => {
                for v in vmas {
                    self.madvise_collapse(
                        &v,
                        start.max(v.start),
                        end.min(v.end),
                        notifier,
                        &mut report,
                    )?;
                }
            }
        }
        Ok(report)
    }

    /// `madvise_free_pte_range()` / `madvise_free_huge_pmd()`: exclusively mapped anon
    /// folios become clean and old; partly covered THPs are split.
    fn lazyfree_range(
        &mut self,
        vma: &Vma,
        start: Hva,
        end: Hva,
        notifier: &mut dyn MmuNotifier,
        nested: &mut Vec<NotifierRange>,
    ) -> u64 {
        let mut n = 0;
        let mut leaves = Vec::new();
        self.space
            .pt
            .for_each_leaf(start, end, |va, level, e| leaves.push((va, level, e)));
        for (va, level, e) in leaves {
            if level == Level::Pmd2M && (va < start || va.add(level.size()) > end) {
                self.split_huge_pmd(vma, va, notifier, nested);
                let mut a = start.max(va);
                while a < end.min(va.add(level.size())) {
                    if let Some(p) = self.space.pt.pte_mut(a, false) {
                        *p = p.clear(Entry::DIRTY | Entry::YOUNG);
                    }
                    a = a.add(PAGE_SIZE);
                    n += 1;
                }
                continue;
            }
            let Some(id) = self.leaf_ref_folio(e) else {
                continue;
            };
            if self.frames.folios[id].mapcount != 1
                && level == Level::Pte4K
                && self.frames.folios[id].order == 0
            {
                continue;
            }
            self.frames.folios[id].flags &= !ff::DIRTY;
            self.frames.folios[id].flags |= ff::LAZYFREE;
            let ne = e.clear(Entry::DIRTY | Entry::YOUNG);
            match level {
                Level::Pte4K => self.set_pte(va, ne),
                Level::Pmd2M => self.set_pmd(va, ne),
                Level::Pud1G => self.set_pud(va, ne),
            }
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use crate::host::testutil::*;
    use crate::host::*;

    use crate::notifier::{NoNotifier, NotifierEvent::*};
    use crate::types::{Hva, KernelVersion, Level, Pfn};

    /// Models `madvise_dontneed_single_vma()` → `zap_page_range_single()`: CLEAR per VMA
    /// piece; the next read maps the zero page again.
    #[test]
    fn madv_dontneed_clears_per_vma_piece() {
        let mut mm = mm(KernelVersion::V6_12);
        let a = anon(&mut mm, 4 * M2, false);
        mm.mprotect(a.add(M2), M2, Prot::R, &mut NoNotifier)
            .unwrap();
        w(&mut mm, a);
        let r = mm
            .madvise(a.add(0x1000), 2 * M2, Advice::Dontneed, &mut NoNotifier)
            .unwrap();
        assert_eq!(
            triples(&r.notifiers),
            vec![
                (Clear, a.0 + 0x1000, a.0 + M2),
                (Clear, a.0 + M2, a.0 + 2 * M2),
                (Clear, a.0 + 2 * M2, a.0 + 2 * M2 + 0x1000)
            ]
        );
        assert!(mm.lookup(a).is_some(), "outside the range");
        ok(&mm);
    }

    /// Models `madvise_free_single_vma()`: CLEAR [start, end) and the exclusive anon pages
    /// become clean and old; MADV_FREE on a non-anonymous VMA is EINVAL.
    #[test]
    fn madv_free_clears_range_and_cleans_pages() {
        let mut mm = mm(KernelVersion::V6_12);
        let a = anon(&mut mm, 2 * M2, false);
        w(&mut mm, a);
        let r = mm
            .madvise(a, 0x2000, Advice::Free, &mut NoNotifier)
            .unwrap();
        assert_eq!(triples(&r.notifiers), vec![(Clear, a.0, a.0 + 0x2000)]);
        let m = mm.lookup(a).unwrap();
        assert!(!m.dirty && !m.young);
        let b = device(
            &mut mm,
            Hva(BASE.0 + G1),
            M2,
            true,
            DeviceSpec::pfnmap(Pfn(0x100)),
        );
        assert!(mm.madvise(b, M2, Advice::Free, &mut NoNotifier).is_err());
        assert!(matches!(
            mm.madvise(b, M2, Advice::Dontneed, &mut NoNotifier),
            Err(MadviseError::Pfnmap { .. })
        ));
        ok(&mm);
    }

    /// Models MADV_HUGEPAGE / MADV_NOHUGEPAGE: VMA flags only (split at the edges), no
    /// notifier; NOHUGEPAGE stops THP faults.
    #[test]
    fn madv_hugepage_flags_control_thp_faults() {
        let mut mm = mm(KernelVersion::V6_12);
        let a = anon(&mut mm, 4 * M2, false);
        let r = mm
            .madvise(a, 2 * M2, Advice::Hugepage, &mut NoNotifier)
            .unwrap();
        assert!(r.notifiers.is_empty());
        w(&mut mm, a);
        w(&mut mm, a.add(2 * M2));
        assert_eq!(mm.leaf_level(a), Some(Level::Pmd2M));
        assert_eq!(mm.leaf_level(a.add(2 * M2)), Some(Level::Pte4K));
        mm.madvise(a, 2 * M2, Advice::Nohugepage, &mut NoNotifier)
            .unwrap();
        w(&mut mm, a.add(M2));
        assert_eq!(mm.leaf_level(a.add(M2)), Some(Level::Pte4K));
    }
}
