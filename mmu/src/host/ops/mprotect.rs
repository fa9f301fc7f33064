//! Models mm/mprotect.c: `mprotect()` (`mprotect_fixup()` → `change_protection()`).

use super::*;
use crate::host::numa::ChangeKind;
use crate::host::vma::{Prot, VmFlags};
use crate::host::Mm;
use crate::notifier::MmuNotifier;
use crate::types::Hva;

/// mprotect failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MprotectError {
    /// Bad range.
    #[error(transparent)]
    Range(#[from] RangeError),
    /// [{start}, {end}) is not fully mapped (ENOMEM): mmap the hole first
    #[error("[{start}, {end}) is not fully mapped (ENOMEM): mmap the hole first")]
    Hole {
        /// Start.
        start: Hva,
        /// End.
        end: Hva,
    },
    /// {addr} splits a hugetlb VMA off its huge page size (EINVAL, `hugetlb_vm_op_split()`)
    #[error("{addr} is inside a hugetlb VMA but not on its huge page size (EINVAL, hugetlb_vm_op_split()): align the range to the huge page size")]
    HugetlbSplit {
        /// The unaligned address.
        addr: Hva,
    },
    /// PROT_WRITE on a shared mapping without VM_MAYWRITE (EACCES)
    #[error("PROT_WRITE on a mapping without VM_MAYWRITE (EACCES)")]
    NotMayWrite,
}

impl Mm {
    /// Models `mprotect()` (mm/mprotect.c) (`mprotect_fixup()` → `change_protection()`): per VMA
    /// piece, a PROTECTION_VMA range (see `change_protection`), entries rebuilt from the new
    /// `vm_page_prot`, kept writable where `can_change_pte_writable()` allows.
    pub fn mprotect(
        &mut self,
        start: Hva,
        len: u64,
        prot: Prot,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<OpReport, MprotectError> {
        let end = check_range(start, len)?;
        if !self.covered(start, end) {
            return Err(MprotectError::Hole { start, end });
        }
        for v in self.vmas_in(start, end) {
            if prot.write && !v.flags.contains(VmFlags::MAYWRITE) {
                return Err(MprotectError::NotMayWrite);
            }
        }
        if let Some(addr) = [start, end]
            .into_iter()
            .find(|&a| self.hugetlb_split_refused(a))
        {
            return Err(MprotectError::HugetlbSplit { addr });
        }
        self.split_vma_at(start);
        self.split_vma_at(end);
        let mut report = OpReport::new("mprotect", start, end);
        for mut v in self.vmas_in(start, end) {
            let keep = v
                .flags
                .without(VmFlags::READ | VmFlags::WRITE | VmFlags::EXEC);
            v.flags = keep;
            if prot.read {
                v.flags |= VmFlags::READ;
            }
            if prot.write {
                v.flags |= VmFlags::WRITE;
            }
            if prot.exec {
                v.flags |= VmFlags::EXEC;
            }
            self.space.vmas.insert(v.start.0, v.clone());
            if v.hugetlb_level().is_some() {
                // change_protection(): `if (is_vm_hugetlb_page(vma)) hugetlb_change_protection()`.
                report.changed += self.hugetlb_change_protection(
                    &v,
                    v.start,
                    v.end,
                    notifier,
                    &mut report.notifiers,
                );
                continue;
            }
            let try_writable = v.wants_manual_write_upgrade();
            let c = self.change_protection(
                &v,
                v.start,
                v.end,
                ChangeKind::Mprotect { try_writable },
                notifier,
                &mut report.notifiers,
            );
            report.changed += c.changed;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use crate::host::testutil::*;
    use crate::host::*;

    use crate::notifier::{NoNotifier, NotifierEvent::*};
    use crate::types::KernelVersion;

    /// Models `change_pud_range()` under mprotect: PROTECTION_VMA from the first non-none PUD
    /// entry's address to the end of the 512G chunk (clipped to the range), entries
    /// write-protected; back to RW, exclusive anon pages become writable again
    /// (`can_change_pte_writable()`).
    #[test]
    fn mprotect_sends_protection_vma_from_first_populated_pud() {
        let mut mm = mm(KernelVersion::V6_12);
        let a = mm.mmap(MmapRequest::anon(BASE, 4 * G1)).unwrap();
        w(&mut mm, a.add(2 * G1 + 0x5000));
        let r = mm.mprotect(a, 4 * G1, Prot::R, &mut NoNotifier).unwrap();
        assert_eq!(
            triples(&r.notifiers),
            vec![(ProtectionVma, a.0 + 2 * G1, a.0 + 4 * G1)]
        );
        assert!(!mm.lookup(a.add(2 * G1 + 0x5000)).unwrap().writable);
        let r = mm.mprotect(a, 4 * G1, Prot::RW, &mut NoNotifier).unwrap();
        assert_eq!(r.changed, 1);
        assert!(mm.lookup(a.add(2 * G1 + 0x5000)).unwrap().writable);
        let e = mm
            .mprotect(a, 8 * G1, Prot::R, &mut NoNotifier)
            .unwrap_err();
        assert!(matches!(e, MprotectError::Hole { .. }));
        ok(&mm);
    }
}
