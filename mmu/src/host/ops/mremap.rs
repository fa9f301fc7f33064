//! Models mm/mremap.c: `mremap()` (shrink, grow in place, `move_vma()`).

use super::*;
use crate::host::pagetable::{PmdSlot, PudSlot};
use crate::host::pte::Entry;
use crate::host::vma::VmFlags;
use crate::host::Mm;
use crate::notifier::{MmuNotifier, NotifierEvent, NotifierRange};
use crate::types::{Hva, Level, TASK_SIZE};

/// mremap failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MremapError {
    /// Bad range.
    #[error(transparent)]
    Range(#[from] RangeError),
    /// The old range must lie within one vma (EFAULT)
    #[error("The old range [{start}, +{len:#x}) must lie within one vma (EFAULT)")]
    NotOneVma {
        /// Start.
        start: Hva,
        /// Length.
        len: u64,
    },
    /// mremap of a hugetlb VMA is not modelled
    #[error("not implemented yet: mremap of a hugetlb VMA (mremap_to() / move_hugetlb_page_tables(), mm/mremap.c) is not modelled; munmap and mmap it instead")]
    HugetlbNotModelled,
    /// Growing a VM_DONTEXPAND (driver) mapping (EFAULT)
    #[error("Growing a VM_DONTEXPAND (driver) mapping is refused (EFAULT): mmap a new one")]
    DontExpand,
    /// The new range [{start}, {end}) overlaps another mapping
    #[error("The new range [{start}, {end}) overlaps another mapping")]
    Overlap {
        /// Start.
        start: Hva,
        /// End.
        end: Hva,
    },
}

impl Mm {
    /// Models `mremap()` (mm/mremap.c). Shrinking unmaps the tail (UNMAP); growing in place
    /// needs no notifier; a move (MREMAP_MAYMOVE when the tail is taken, or MREMAP_FIXED
    /// with `new_addr`) moves the page tables under UNMAP [old, old+len) and then unmaps
    /// the old range (a second UNMAP).
    pub fn mremap(
        &mut self,
        old: Hva,
        old_len: u64,
        new_len: u64,
        new_addr: Option<Hva>,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<(Hva, OpReport), MremapError> {
        let old_end = check_range(old, old_len)?;
        check_range(old, new_len)?;
        let Some(vma) = self.space.vma(old).cloned() else {
            return Err(MremapError::NotOneVma {
                start: old,
                len: old_len,
            });
        };
        if old_end > vma.end {
            return Err(MremapError::NotOneVma {
                start: old,
                len: old_len,
            });
        }
        if vma.hugetlb_level().is_some() {
            return Err(MremapError::HugetlbNotModelled);
        }
        if new_len > old_len && vma.flags.contains(VmFlags::DONTEXPAND) {
            // vma_to_resize(): VM_DONTEXPAND | VM_PFNMAP cannot grow.
            return Err(MremapError::DontExpand);
        }
        let mut report = OpReport::new("mremap", old, old_end);
        if new_addr.is_none() && new_len <= old_len {
            if new_len < old_len {
                self.do_munmap(old.add(new_len), old_end, notifier, &mut report);
            }
            return Ok((old, report));
        }
        if new_addr.is_none() && old_end == vma.end {
            let grow_end = old.add(new_len);
            if self.vmas_in(old_end, grow_end).is_empty() && grow_end.0 <= TASK_SIZE {
                let mut v = vma.clone();
                v.end = grow_end;
                self.space.vmas.insert(v.start.0, v);
                return Ok((old, report));
            }
        }
        // Move.
        let dest = match new_addr {
            Some(a) => a,
            None => {
                let last = self
                    .space
                    .vmas
                    .values()
                    .next_back()
                    .map(|v| v.end)
                    .unwrap_or(Hva(MMAP_BASE));
                last.align_up(Level::Pud1G)
            }
        };
        let dest_end = check_range(dest, new_len)?;
        if !self.vmas_in(dest, dest_end).is_empty() {
            return Err(MremapError::Overlap {
                start: dest,
                end: dest_end,
            });
        }
        self.split_vma_at(old);
        self.split_vma_at(old_end);
        let moved_len = old_len.min(new_len);
        let src = self.space.vma(old).cloned().expect("split vma exists");
        let mut nv = src.clone();
        nv.start = dest;
        nv.end = dest_end;
        self.space.vmas.insert(dest.0, nv);
        // move_page_tables(): UNMAP over the old range while entries move.
        let range = NotifierRange::new(NotifierEvent::Unmap, old, old.add(old_len));
        self.notify(notifier, &mut report.notifiers, range, |mm| {
            let mut leaves = Vec::new();
            mm.space
                .pt
                .for_each_leaf(old, old.add(moved_len), |va, level, e| {
                    leaves.push((va, level, e))
                });
            for (va, level, e) in leaves {
                let to = dest.add(va.offset_from(old));
                let aligned = to.is_aligned(level);
                match level {
                    Level::Pte4K => {
                        if let Some(p) = mm.space.pt.pte_mut(va, false) {
                            *p = Entry::NONE;
                        }
                        mm.set_pte(to, e);
                    }
                    Level::Pmd2M if aligned && va.add(level.size()) <= old.add(moved_len) => {
                        if let Some(s) = mm.space.pt.pmd_slot_mut(va, false) {
                            *s = PmdSlot::None;
                        }
                        mm.set_pmd(to, e);
                    }
                    Level::Pud1G if aligned && va.add(level.size()) <= old.add(moved_len) => {
                        if let Some(s) = mm.space.pt.pud_slot_mut(va, false) {
                            *s = PudSlot::None;
                        }
                        mm.set_pud(to, e);
                    }
                    _ => {
                        // Misaligned huge leaf: drop it (the fault path re-creates it).
                        match level {
                            Level::Pmd2M => {
                                if let Some(s) = mm.space.pt.pmd_slot_mut(va, false) {
                                    *s = PmdSlot::None;
                                }
                            }
                            _ => {
                                if let Some(s) = mm.space.pt.pud_slot_mut(va, false) {
                                    *s = PudSlot::None;
                                }
                            }
                        }
                        mm.drop_leaf_ref(e);
                    }
                }
            }
        });
        self.do_munmap(old, old_end, notifier, &mut report);
        report.start = dest;
        report.end = dest_end;
        Ok((dest, report))
    }
}

#[cfg(test)]
mod tests {
    use crate::host::testutil::*;
    use crate::host::*;

    use crate::notifier::{NoNotifier, NotifierEvent::*, NotifierLog};
    use crate::types::{Hva, KernelVersion, Pfn};

    /// Models `move_vma()`: `move_page_tables()` sends UNMAP over the old range, then the old
    /// range is unmapped (a second UNMAP); the pages move with their entries.
    #[test]
    fn mremap_move_sends_unmap_twice_and_moves_entries() {
        let mut mm = mm(KernelVersion::V6_12);
        let a = anon(&mut mm, M2, false);
        w(&mut mm, a.add(0x2000));
        let pfn = mm.lookup(a.add(0x2000)).unwrap().pfn;
        let dest = Hva(BASE.0 + G1);
        let (to, r) = mm.mremap(a, M2, M2, Some(dest), &mut NoNotifier).unwrap();
        assert_eq!(to, dest);
        assert_eq!(
            triples(&r.notifiers),
            vec![(Unmap, a.0, a.0 + M2), (Unmap, a.0, a.0 + M2)]
        );
        assert_eq!(mm.lookup(dest.add(0x2000)).unwrap().pfn, pfn);
        assert!(mm.lookup(a.add(0x2000)).is_none());
        ok(&mm);
        let (same, r) = mm.mremap(dest, M2, 0x1000, None, &mut NoNotifier).unwrap();
        assert_eq!(same, dest);
        assert_eq!(
            triples(&r.notifiers),
            vec![(Unmap, dest.0 + 0x1000, dest.0 + M2)]
        );
    }

    /// Models `mremap()` growing in place (`vma_expand()`): no notifier; a VM_DONTEXPAND
    /// driver mapping cannot grow (`vma_to_resize()` → EFAULT).
    #[test]
    fn mremap_grows_in_place_without_notifier_but_not_driver_mappings() {
        let mut mm = mm(KernelVersion::V6_12);
        let a = anon(&mut mm, M2, false);
        w(&mut mm, a);
        let mut log = NotifierLog::new();
        let (to, r) = mm.mremap(a, M2, 2 * M2, None, &mut log).unwrap();
        assert_eq!(to, a);
        assert!(r.notifiers.is_empty() && log.calls.is_empty());
        assert_eq!(mm.find_vma(a.add(M2)).unwrap().end, a.add(2 * M2));
        let b = device(
            &mut mm,
            Hva(BASE.0 + G1),
            M2,
            true,
            DeviceSpec::pfnmap(Pfn(0x100)),
        );
        assert_eq!(
            mm.mremap(b, M2, 2 * M2, None, &mut log),
            Err(MremapError::DontExpand)
        );
        ok(&mm);
    }
}
