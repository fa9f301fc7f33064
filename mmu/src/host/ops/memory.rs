//! Models mm/memory.c: `remap_pfn_range()`, `unmap_page_range()` (zapping),
//! `unmap_mapping_range()`, and user accesses through `handle_mm_fault()`.

use super::*;
use crate::host::fault::{FaultFlags, FaultOutcome, FaultReport};
use crate::host::folio::ff;
use crate::host::pagetable::set_leaf;
use crate::host::pagetable::{PmdSlot, PudSlot};
use crate::host::pte::Entry;
use crate::host::vma::{VmFlags, Vma};
use crate::host::Mm;
use crate::notifier::{MmuNotifier, NotifierEvent, NotifierRange};
use crate::types::{Hva, Level, Pfn, PAGE_SIZE};

/// remap_pfn_range failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemapPfnError {
    /// Bad range.
    #[error(transparent)]
    Range(#[from] RangeError),
    /// A COW mapping must be remapped whole (EINVAL): remap [vm_start, vm_end)
    #[error("A COW mapping must be remapped whole (EINVAL): remap [vm_start, vm_end)")]
    CowPartial,
    /// An entry in the range is already populated
    #[error("An entry at {0} is already populated")]
    Busy(Hva),
}

/// A user access (copy_to/from_user) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// The access at {hva} faulted with {outcome:?} (EFAULT)
    #[error("The access at {hva} faulted with {outcome:?} (EFAULT)")]
    Fault {
        /// Address.
        hva: Hva,
        /// Fault result.
        outcome: FaultOutcome,
        /// The faults taken.
        faults: Vec<FaultReport>,
    },
    /// The access at {hva} did not complete after {tries} faults
    #[error("The access at {hva} did not complete after {tries} faults")]
    Livelock {
        /// Address.
        hva: Hva,
        /// Faults taken.
        tries: usize,
    },
}

impl Mm {
    /// Models `remap_pfn_range()` (mm/memory.c): marks the VMA VM_IO|VM_PFNMAP|
    /// VM_DONTEXPAND, sets `vm_pgoff = pfn` for a COW mapping (which must be remapped
    /// whole), and fills every PTE with a special entry. No notifier (none → present).
    pub fn remap_pfn_range(
        &mut self,
        start: Hva,
        pfn: Pfn,
        len: u64,
    ) -> Result<OpReport, RemapPfnError> {
        let end = check_range(start, len)?;
        let Some(vma) = self.space.vma(start).cloned() else {
            return Err(RemapPfnError::Range(RangeError {
                start,
                len,
                problem: "no vma: mmap the range first",
            }));
        };
        if end > vma.end {
            return Err(RemapPfnError::Range(RangeError {
                start,
                len,
                problem: "range extends past the vma",
            }));
        }
        let mut vma = vma;
        if vma.is_cow_mapping() {
            if start != vma.start || end != vma.end {
                return Err(RemapPfnError::CowPartial);
            }
            vma.pgoff = pfn.0;
        }
        vma.flags |= VmFlags::IO | VmFlags::PFNMAP | VmFlags::DONTEXPAND;
        let mut va = start;
        while va < end {
            if self.space.pt.pte(va).is_some_and(|e| !e.is_none()) {
                return Err(RemapPfnError::Busy(va));
            }
            va = va.add(PAGE_SIZE);
        }
        self.space.vmas.insert(vma.start.0, vma.clone());
        let mut report = OpReport::new("remap-pfn-range", start, end);
        let mut va = start;
        let mut p = pfn;
        while va < end {
            self.set_pte(va, Entry::new(p, vma.page_prot() | Entry::SPECIAL));
            report.changed += 1;
            va = va.add(PAGE_SIZE);
            p = p.add(1);
        }
        Ok(report)
    }

    /// Zaps every leaf of `vma` in `[start, end)` (`unmap_page_range()` (mm/memory.c) →
    /// `zap_pud_range()`/`zap_pmd_range()`/`zap_pte_range()`): partly covered huge leaves are
    /// split first (a nested CLEAR; a non-anon huge leaf is then gone whole). Returns leaves
    /// zapped.
    pub(crate) fn zap_range(
        &mut self,
        vma: &Vma,
        start: Hva,
        end: Hva,
        even_cows: bool,
        notifier: &mut dyn MmuNotifier,
        log: &mut Vec<NotifierRange>,
    ) -> u64 {
        let mut n = 0;
        let mut leaves = Vec::new();
        self.space
            .pt
            .for_each_leaf(start, end, |va, level, e| leaves.push((va, level, e)));
        let hugetlb = vma.hugetlb_level().is_some();
        for (va, level, e) in leaves {
            let leaf_end = va.add(level.size());
            let partial = va < start || leaf_end > end;
            if hugetlb && partial {
                // __unmap_hugepage_range() only sees huge-aligned ranges (its callers round
                // or refuse); a partial huge leaf is never split.
                continue;
            }
            match level {
                Level::Pud1G => {
                    if partial {
                        self.split_huge_pud(va, notifier, log);
                    } else if let Some(s) = self.space.pt.pud_slot_mut(va, false) {
                        *s = PudSlot::None;
                        self.drop_leaf_ref(e);
                    }
                    n += 1;
                }
                Level::Pmd2M => {
                    if partial {
                        self.split_huge_pmd(vma, va, notifier, log);
                        n += self.zap_ptes(vma, start.max(va), end.min(leaf_end), even_cows);
                    } else {
                        if !even_cows && self.is_cow_anon(vma, e) {
                            continue;
                        }
                        if let Some(s) = self.space.pt.pmd_slot_mut(va, false) {
                            *s = PmdSlot::None;
                        }
                        self.drop_leaf_ref(e);
                        n += 1;
                    }
                }
                Level::Pte4K => {
                    if !even_cows && self.is_cow_anon(vma, e) {
                        continue;
                    }
                    if let Some(p) = self.space.pt.pte_mut(va, false) {
                        *p = Entry::NONE;
                    }
                    self.drop_leaf_ref(e);
                    n += 1;
                }
            }
        }
        n
    }

    fn is_cow_anon(&self, vma: &Vma, e: Entry) -> bool {
        !vma.is_anonymous()
            && self
                .leaf_ref_folio(e)
                .is_some_and(|id| self.frames.folios[id].has(ff::ANON))
    }

    fn zap_ptes(&mut self, vma: &Vma, start: Hva, end: Hva, even_cows: bool) -> u64 {
        let mut n = 0;
        let mut va = start;
        while va < end {
            let e = self.space.pt.pte(va).unwrap_or(Entry::NONE);
            if !e.is_none() && (even_cows || !self.is_cow_anon(vma, e)) {
                if let Some(p) = self.space.pt.pte_mut(va, false) {
                    *p = Entry::NONE;
                }
                self.drop_leaf_ref(e);
                n += 1;
            }
            va = va.add(PAGE_SIZE);
        }
        n
    }

    /// Models `unmap_mapping_range()` (mm/memory.c) → `unmap_mapping_range_vma()` →
    /// `zap_page_range_single()` (device revoke / truncate) over the file- or device-backed
    /// VMAs in the range: CLEAR [start, end) per VMA piece, even COWed anon pages.
    pub fn unmap_mapping_range(
        &mut self,
        start: Hva,
        len: u64,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<OpReport, RangeError> {
        let end = check_range(start, len)?;
        let mut report = OpReport::new("unmap-mapping-range", start, end);
        for v in self.vmas_in(start, end) {
            if v.is_anonymous() {
                continue;
            }
            let (s, e) = (start.max(v.start), end.min(v.end));
            let range = NotifierRange::new(NotifierEvent::Clear, s, e);
            report.changed +=
                self.notify_nested(notifier, &mut report.notifiers, range, |mm, n, log| {
                    mm.zap_range(&v, s, e, true, n, log)
                });
        }
        Ok(report)
    }

    /// A user access (`copy_to_user()` (include/linux/uaccess.h) / `copy_from_user()`, or a CPU
    /// access by the process): checks the VMA permits it (`access_error()`), then takes faults
    /// until the entry permits the access. This is what KVM's emulator does on RET_PF_EMULATE.
    pub fn user_access(
        &mut self,
        hva: Hva,
        write: bool,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<OpReport, AccessError> {
        let mut report = OpReport::new(
            if write { "user-write" } else { "user-read" },
            hva,
            hva.add(1),
        );
        let mut faults: Vec<FaultReport> = Vec::new();
        for _ in 0..8 {
            let Some(vma) = self.space.vma(hva) else {
                return Err(AccessError::Fault {
                    hva,
                    outcome: FaultOutcome::Sigsegv,
                    faults,
                });
            };
            let permitted = if write {
                vma.flags.contains(VmFlags::WRITE)
            } else {
                vma.is_accessible()
            };
            if !permitted {
                return Err(AccessError::Fault {
                    hva,
                    outcome: FaultOutcome::Sigsegv,
                    faults,
                });
            }
            if self
                .lookup(hva)
                .is_some_and(|m| m.entry.access_permitted(write))
            {
                // The hardware sets A (and D on a write).
                if let Some(m) = self.lookup(hva) {
                    let bits = Entry::YOUNG | if write { Entry::DIRTY } else { 0 };
                    set_leaf(&mut self.space.pt, m.leaf_start, m.level, m.entry.set(bits));
                }
                return Ok(report);
            }
            let flags = FaultFlags::USER
                | if write {
                    FaultFlags::WRITE
                } else {
                    FaultFlags::empty()
                };
            let f = self.handle_mm_fault(hva, flags, notifier);
            report.host_faults.extend(f.handlers.iter().copied());
            report.notifiers.extend(f.notifiers.iter().copied());
            let outcome = f.outcome;
            faults.push(f);
            if outcome.is_error() {
                return Err(AccessError::Fault {
                    hva,
                    outcome,
                    faults,
                });
            }
        }
        Err(AccessError::Livelock {
            hva,
            tries: faults.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::gup;
    use crate::host::testutil::*;
    use crate::host::*;
    use crate::notifier::{NoNotifier, NotifierEvent::*, NotifierLog};
    use crate::types::{KernelVersion, Level, Pfn};

    /// Models `zap_pmd_range()` → `__split_huge_pmd()` on a non-anon huge leaf: a partial
    /// DONTNEED of a huge pfnmap-like leaf (here MIXEDMAP is not huge; use unmap_mapping_range
    /// on a PMD pfnmap) clears the whole leaf, nesting a CLEAR 2M in the CLEAR range.
    #[test]
    fn partial_zap_of_huge_pfnmap_clears_whole_leaf() {
        let mut mm = mm(KernelVersion::V6_12);
        let spec = DeviceSpec::pfnmap(Pfn(0x4_0000)).with_max_level(Level::Pmd2M);
        let a = device(&mut mm, BASE, 4 * M2, true, spec);
        gup::fixup_user_fault(&mut mm, a, FaultFlags::empty(), &mut NoNotifier).unwrap();
        let mut log = NotifierLog::new();
        let r = mm
            .unmap_mapping_range(a.add(0x1000), 0x1000, &mut log)
            .unwrap();
        assert_eq!(
            triples(&r.notifiers),
            vec![(Clear, a.0 + 0x1000, a.0 + 0x2000), (Clear, a.0, a.0 + M2)],
            "the split's CLEAR 2M is nested"
        );
        assert!(log.balanced());
        assert!(
            mm.lookup(a.add(0x5000)).is_none(),
            "the whole 2M leaf is gone"
        );
    }
}
