//! userfaultfd (mm/userfaultfd.c, fs/userfaultfd.c) and memory failure (mm/memory-failure.c):
//! the two ways a fault waits for, or is refused by, something outside the page tables.

use super::folio::ff;
use super::numa::ChangeKind;
use super::ops::{OpReport, RangeError};
use super::pagetable::set_leaf;
use super::pte::Entry;
use super::vma::VmFlags;
use super::Mm;
use crate::notifier::{MmuNotifier, NotifierEvent, NotifierRange};
use crate::types::{Hva, Level, Pfn, PAGE_SIZE, TASK_SIZE};
use serde::{Deserialize, Serialize};

/// One userfaultfd registration mode (`UFFDIO_REGISTER_MODE_*`): the one uffd-mode type of
/// the model's scenarios (`mode = ["missing", "wp"]`), `faultline bench faults -u` and the
/// VMM's fault service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UffdMode {
    /// `UFFDIO_REGISTER_MODE_MISSING`: no page at all (anon, shmem, hugetlbfs); resolved
    /// with `UFFDIO_COPY` or `UFFDIO_ZEROPAGE`.
    #[serde(alias = "MISSING", alias = "Missing")]
    Missing,
    /// `UFFDIO_REGISTER_MODE_WP`: a write to a write-protected page; resolved with
    /// `UFFDIO_WRITEPROTECT` off.
    #[serde(alias = "WP", alias = "Wp")]
    Wp,
    /// `UFFDIO_REGISTER_MODE_MINOR`: the page is in the page cache but not mapped here
    /// (shmem, hugetlbfs); resolved with `UFFDIO_CONTINUE`.
    #[serde(alias = "MINOR", alias = "Minor")]
    Minor,
}

impl UffdMode {
    /// The `UFFDIO_REGISTER_MODE_` suffix, as demand_paging_test's `-u` spells it.
    pub fn name(self) -> &'static str {
        match self {
            UffdMode::Missing => "MISSING",
            UffdMode::Wp => "WP",
            UffdMode::Minor => "MINOR",
        }
    }

    /// Parses `MISSING`, `WP` or `MINOR`, in any case.
    pub fn from_name(s: &str) -> Option<UffdMode> {
        [UffdMode::Missing, UffdMode::Wp, UffdMode::Minor]
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s.trim()))
    }
}

impl std::fmt::Display for UffdMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The UFFDIO_REGISTER modes of a modelled range (the modes the model has: MISSING and WP).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UffdModes {
    /// UFFDIO_REGISTER_MODE_MISSING: faults on empty anonymous entries wait for userspace.
    pub missing: bool,
    /// UFFDIO_REGISTER_MODE_WP: writes to uffd-wp entries wait for userspace.
    pub wp: bool,
    /// UFFDIO_REGISTER_MODE_MINOR: faults on shmem pages that are in the page cache but not
    /// mapped wait for userspace (UFFDIO_CONTINUE).
    pub minor: bool,
}

/// A userfaultfd ioctl failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UffdError {
    /// Bad range.
    #[error(transparent)]
    Range(#[from] RangeError),
    /// {0} is not in a userfaultfd-registered anonymous VMA (EINVAL)
    #[error("{0} is not in a userfaultfd-registered anonymous VMA (EINVAL): register it first")]
    NotRegistered(Hva),
    /// {0} is already populated (EEXIST)
    #[error("{0} is already populated (EEXIST)")]
    Exists(Hva),
    /// Out of memory (ENOMEM)
    #[error("Out of memory (ENOMEM)")]
    Oom,
    /// UFFDIO_REGISTER_MODE_MINOR on a VMA that is not shmem (EINVAL)
    #[error("{0}: UFFDIO_REGISTER_MODE_MINOR needs a shmem/memfd VMA in the model (EINVAL); register MISSING/WP on anonymous memory instead")]
    MinorNotShmem(Hva),
    /// UFFDIO_CONTINUE with no page-cache page (EFAULT)
    #[error("{0}: UFFDIO_CONTINUE found no page in the page cache (EFAULT); populate it through another mapping (or before MADV_DONTNEED) first")]
    NoPageCache(Hva),
}

/// `memory_failure()` failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemoryFailureError {
    /// pfn {0} has no struct page or no live folio
    #[error("pfn {0} has no struct page or no live folio")]
    NoFolio(Pfn),
    /// pfn {0} is in a large folio: splitting a poisoned THP is not modelled
    #[error("pfn {0} is in a large folio: splitting a poisoned THP is not modelled")]
    LargeFolio(Pfn),
}

#[allow(clippy::manual_is_multiple_of)] // u64::is_multiple_of needs Rust 1.87; rust-version is 1.80.
fn range(start: Hva, len: u64) -> Result<Hva, RangeError> {
    let err = |problem| RangeError {
        start,
        len,
        problem,
    };
    if len == 0 || len % PAGE_SIZE != 0 || !start.is_aligned(Level::Pte4K) {
        return Err(err("start and length must be 4K-aligned and non-zero"));
    }
    match start.0.checked_add(len) {
        Some(e) if e <= TASK_SIZE => Ok(Hva(e)),
        _ => Err(err("range ends beyond the 47-bit user address space")),
    }
}

/// A shmem/memfd VMA (`vma_is_shmem()`): file-backed, not hugetlb, not a device.
fn is_shmem(v: &super::Vma) -> bool {
    !v.is_anonymous() && v.device().is_none() && !v.flags.contains(VmFlags::HUGETLB)
}

impl Mm {
    /// Models UFFDIO_REGISTER (`userfaultfd_register()`, fs/userfaultfd.c): sets
    /// VM_UFFD_MISSING / VM_UFFD_WP on the anonymous VMAs of the range, VM_UFFD_MINOR on
    /// shmem VMAs (`vma_can_userfault()`), split at the edges. No notifier.
    pub fn uffd_register(
        &mut self,
        start: Hva,
        len: u64,
        mode: UffdModes,
    ) -> Result<OpReport, UffdError> {
        let end = range(start, len)?;
        let vmas = self.vmas_in(start, end);
        if vmas.is_empty() {
            return Err(UffdError::NotRegistered(start));
        }
        if mode.minor {
            if let Some(v) = vmas.iter().find(|v| !is_shmem(v)) {
                return Err(UffdError::MinorNotShmem(v.start.max(start)));
            }
        }
        if (mode.missing || mode.wp) && vmas.iter().any(|v| !v.is_anonymous()) {
            return Err(UffdError::NotRegistered(start));
        }
        self.split_vma_at(start);
        self.split_vma_at(end);
        let mut report = OpReport::new("uffd-register", start, end);
        for mut v in self.vmas_in(start, end) {
            if mode.missing {
                v.flags |= VmFlags::UFFD_MISSING;
            }
            if mode.wp {
                v.flags |= VmFlags::UFFD_WP;
            }
            if mode.minor {
                v.flags |= VmFlags::UFFD_MINOR;
            }
            self.space.vmas.insert(v.start.0, v);
            report.changed += 1;
        }
        Ok(report)
    }

    fn uffd_target(&self, hva: Hva) -> Result<super::Vma, UffdError> {
        let v = self
            .space
            .vma(hva)
            .filter(|v| {
                v.is_anonymous() && v.flags.intersects(VmFlags::UFFD_MISSING | VmFlags::UFFD_WP)
            })
            .cloned()
            .ok_or(UffdError::NotRegistered(hva))?;
        if self.lookup(hva).is_some() {
            return Err(UffdError::Exists(hva));
        }
        Ok(v)
    }

    /// Models UFFDIO_COPY of one page (`mfill_atomic_pte_copy()` (mm/userfaultfd.c)): a new anon
    /// page, writable if VM_WRITE (and not `wp`), installed without a notifier (none → present).
    pub fn uffdio_copy(&mut self, hva: Hva, wp: bool) -> Result<OpReport, UffdError> {
        let hva = hva.align_down(Level::Pte4K);
        let vma = self.uffd_target(hva)?;
        let id = self
            .frames
            .alloc(0, self.alloc_node(&vma))
            .ok_or(UffdError::Oom)?;
        self.new_anon_folio(id, &vma);
        let mut e = self.anon_entry(&vma, Pfn(self.frames.folios[id].pfn), Level::Pte4K);
        if wp {
            e = e.clear(Entry::WRITE).set(Entry::UFFD_WP);
        }
        self.set_pte(hva, e);
        let mut report = OpReport::new("uffdio-copy", hva, hva.add(PAGE_SIZE));
        report.changed = 1;
        Ok(report)
    }

    /// Models UFFDIO_ZEROPAGE of one page (`mfill_atomic_pte_zeropage()`, mm/userfaultfd.c):
    /// the shared zero page, special, read-only.
    pub fn uffdio_zeropage(&mut self, hva: Hva) -> Result<OpReport, UffdError> {
        let hva = hva.align_down(Level::Pte4K);
        let vma = self.uffd_target(hva)?;
        self.set_pte(
            hva,
            Entry::new(self.frames.zero_pfn, vma.page_prot() | Entry::SPECIAL),
        );
        let mut report = OpReport::new("uffdio-zeropage", hva, hva.add(PAGE_SIZE));
        report.changed = 1;
        Ok(report)
    }

    /// Whether a fault at `hva` is a minor userfault: a VM_UFFD_MINOR shmem VMA with the
    /// page in the page cache and nothing mapped (`shmem_get_folio_gfp()` calling
    /// `handle_userfault(vmf, VM_UFFD_MINOR)`, mm/shmem.c).
    pub fn uffd_minor_pending(&self, hva: Hva) -> bool {
        let Some(v) = self.space.vma(hva) else {
            return false;
        };
        v.flags.contains(VmFlags::UFFD_MINOR)
            && self
                .page_cache
                .contains_key(&(v.file, v.linear_page_index(hva)))
            && !self.lookup(hva).is_some_and(|m| m.present)
    }

    /// Models UFFDIO_CONTINUE (`mfill_atomic_pte_continue()` →
    /// `mfill_atomic_install_pte()`, mm/userfaultfd.c) on each page of the range: the
    /// page-cache folio already there is mapped, dirty, writable when the VMA is VM_WRITE and
    /// VM_SHARED, without a notifier (none → present). No folio is EFAULT, a mapped page
    /// EEXIST.
    pub fn uffdio_continue(&mut self, start: Hva, len: u64) -> Result<OpReport, UffdError> {
        let end = range(start, len)?;
        let mut report = OpReport::new("uffdio-continue", start, end);
        let mut hva = start;
        while hva.0 < end.0 {
            let v = self
                .space
                .vma(hva)
                .filter(|v| v.flags.contains(VmFlags::UFFD_MINOR))
                .cloned()
                .ok_or(UffdError::NotRegistered(hva))?;
            let Some(&id) = self.page_cache.get(&(v.file, v.linear_page_index(hva))) else {
                return Err(UffdError::NoPageCache(hva));
            };
            if self.lookup(hva).is_some_and(|m| m.present) {
                return Err(UffdError::Exists(hva));
            }
            let mut e = Entry::new(
                Pfn(self.frames.folios[id].pfn),
                v.page_prot() | Entry::DIRTY,
            );
            if v.flags.contains(VmFlags::WRITE) && v.flags.contains(VmFlags::SHARED) {
                e = e.set(Entry::WRITE);
            }
            self.frames.get(id, 1);
            self.frames.folios[id].mapcount += 1;
            self.set_pte(hva, e);
            report.changed += 1;
            hva = hva.add(PAGE_SIZE);
        }
        Ok(report)
    }

    /// Models UFFDIO_WRITEPROTECT (`mwriteprotect_range()` (mm/userfaultfd.c) →
    /// `change_protection()` with MM_CP_UFFD_WP or MM_CP_UFFD_WP_RESOLVE): PROTECTION_VMA like
    /// mprotect; `wp` marks entries uffd-wp and read-only, `!wp` clears the mark (writable again
    /// where allowed).
    pub fn uffdio_writeprotect(
        &mut self,
        start: Hva,
        len: u64,
        wp: bool,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<OpReport, UffdError> {
        let end = range(start, len)?;
        let vmas = self.vmas_in(start, end);
        if vmas.is_empty() || vmas.iter().any(|v| !v.flags.contains(VmFlags::UFFD_WP)) {
            return Err(UffdError::NotRegistered(start));
        }
        let mut report = OpReport::new("uffdio-writeprotect", start, end);
        for v in vmas {
            let c = self.change_protection(
                &v,
                start.max(v.start),
                end.min(v.end),
                ChangeKind::UffdWp { wp },
                notifier,
                &mut report.notifiers,
            );
            report.changed += c.changed;
        }
        Ok(report)
    }

    /// Models `memory_failure()` (mm/memory-failure.c) on an order-0 folio: `try_to_unmap_one()`
    /// sends CLEAR over each mapping's span and replaces the entry with a hwpoison entry; the folio
    /// keeps one reference (poisoned pages are never freed). Later faults return VM_FAULT_HWPOISON
    /// (GUP: -EHWPOISON with FOLL_HWPOISON, else -EFAULT).
    pub fn memory_failure(
        &mut self,
        pfn: Pfn,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<OpReport, MemoryFailureError> {
        let id = self
            .frames
            .folio_of(pfn)
            .ok_or(MemoryFailureError::NoFolio(pfn))?;
        if self.frames.folios[id].order > 0 {
            return Err(MemoryFailureError::LargeFolio(pfn));
        }
        let mut report = OpReport::new("memory-failure", Hva(0), Hva(0));
        let mut leaves = Vec::new();
        self.space
            .pt
            .for_each_leaf(Hva(0), Hva(TASK_SIZE), |va, level, e| {
                if e.is_present() && !e.is_special() && e.pfn() == pfn && level == Level::Pte4K {
                    leaves.push((va, e));
                }
            });
        self.frames.folios[id].flags |= ff::HWPOISON;
        self.frames.get(id, 1);
        for (va, e) in leaves {
            let r = NotifierRange::new(NotifierEvent::Clear, va, va.add(PAGE_SIZE));
            self.notify(notifier, &mut report.notifiers, r, |mm| {
                set_leaf(
                    &mut mm.space.pt,
                    va,
                    Level::Pte4K,
                    Entry::new(pfn, Entry::HWPOISON_ENTRY),
                );
                mm.drop_leaf_ref(e);
            });
            report.changed += 1;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gup::{self, FollFlags, GupError};

    #[test]
    fn one_uffd_mode_reads_the_scenario_and_the_cli_spellings() {
        #[derive(Deserialize)]
        struct M {
            mode: Vec<UffdMode>,
        }
        let m: M = toml::from_str(r#"mode = ["missing", "wp", "minor", "MISSING"]"#).unwrap();
        assert_eq!(
            m.mode,
            [
                UffdMode::Missing,
                UffdMode::Wp,
                UffdMode::Minor,
                UffdMode::Missing
            ]
        );
        assert_eq!(UffdMode::from_name("minor"), Some(UffdMode::Minor));
        assert_eq!(UffdMode::from_name("WP").map(UffdMode::name), Some("WP"));
        assert_eq!(UffdMode::from_name("async"), None);
    }
    use crate::host::testutil::*;
    use crate::host::FaultOutcome;
    use crate::notifier::{NoNotifier, NotifierEvent::*};
    use crate::types::KernelVersion;
    use std::collections::BTreeMap;

    /// Models `handle_userfault()`: a missing fault in a registered range returns
    /// VM_FAULT_RETRY; GUP (NOWAIT or not) returns 0 pages; UFFDIO_COPY installs the page
    /// with no notifier and GUP then succeeds.
    #[test]
    fn uffd_missing_fault_waits_until_uffdio_copy() {
        let mut m = mm(KernelVersion::V6_12);
        let a = anon(&mut m, M2, false);
        m.uffd_register(
            a,
            M2,
            UffdModes {
                missing: true,
                wp: false,
                minor: false,
            },
        )
        .unwrap();
        let r = gup::get_user_pages_unlocked(
            &mut m,
            a,
            FollFlags::WRITE | FollFlags::NOWAIT,
            &mut NoNotifier,
        );
        assert_eq!(r, Err(GupError::NoPage(a)));
        assert_eq!(
            m.last_gup().host_faults,
            vec![crate::host::HostFault::Userfault]
        );
        let c = m.uffdio_copy(a, false).unwrap();
        assert!(c.notifiers.is_empty());
        assert!(matches!(m.uffdio_copy(a, false), Err(UffdError::Exists(_))));
        let p = gup::get_user_pages_unlocked(&mut m, a, FollFlags::WRITE, &mut NoNotifier).unwrap();
        gup::put_page(&mut m, p);
        m.uffdio_zeropage(a.add(0x1000)).unwrap();
        assert!(m.lookup(a.add(0x1000)).unwrap().special);
        m.check_invariants(&BTreeMap::new()).unwrap();
    }

    /// Models UFFDIO_WRITEPROTECT + `userfaultfd_pte_wp()`: write-protecting sends
    /// PROTECTION_VMA; a write to a uffd-wp entry waits for userspace; resolving makes it
    /// writable again.
    #[test]
    fn uffd_wp_protects_with_protection_vma_and_write_faults_wait() {
        let mut m = mm(KernelVersion::V6_12);
        let a = anon(&mut m, M2, false);
        m.user_access(a, true, &mut NoNotifier).unwrap();
        m.uffd_register(
            a,
            M2,
            UffdModes {
                missing: false,
                wp: true,
                minor: false,
            },
        )
        .unwrap();
        let r = m.uffdio_writeprotect(a, M2, true, &mut NoNotifier).unwrap();
        assert_eq!(triples(&r.notifiers), vec![(ProtectionVma, a.0, a.0 + M2)]);
        let e = m.lookup(a).unwrap();
        assert!(e.entry.is_uffd_wp() && !e.writable);
        let f = m.handle_mm_fault(a, crate::host::FaultFlags::WRITE, &mut NoNotifier);
        assert_eq!(f.outcome, FaultOutcome::Retry);
        m.uffdio_writeprotect(a, M2, false, &mut NoNotifier)
            .unwrap();
        assert!(m.lookup(a).unwrap().writable);
    }

    /// Models `memory_failure()` + `faultin_page()`'s HWPOISON translation: CLEAR 4K over
    /// the mapping, then GUP gives -EHWPOISON with FOLL_HWPOISON and -EFAULT without.
    #[test]
    fn memory_failure_unmaps_and_gup_reports_hwpoison() {
        let mut m = mm(KernelVersion::V6_12);
        let a = anon(&mut m, M2, false);
        m.user_access(a.add(0x3000), true, &mut NoNotifier).unwrap();
        let pfn = m.lookup(a.add(0x3000)).unwrap().pfn;
        let r = m.memory_failure(pfn, &mut NoNotifier).unwrap();
        assert_eq!(
            triples(&r.notifiers),
            vec![(Clear, a.0 + 0x3000, a.0 + 0x4000)]
        );
        assert!(m.lookup(a.add(0x3000)).is_some_and(|e| !e.present));
        let e = gup::get_user_pages_unlocked(
            &mut m,
            a.add(0x3000),
            FollFlags::HWPOISON,
            &mut NoNotifier,
        );
        assert_eq!(e, Err(GupError::Ehwpoison(a.add(0x3000))));
        let e = gup::get_user_pages_unlocked(
            &mut m,
            a.add(0x3000),
            FollFlags::empty(),
            &mut NoNotifier,
        );
        assert_eq!(e, Err(GupError::Efault(a.add(0x3000))));
        m.check_invariants(&BTreeMap::new()).unwrap();
        m.munmap(a, M2, &mut NoNotifier).unwrap();
        assert!(
            m.folio_info(pfn).is_some(),
            "a poisoned page is never freed"
        );
    }
}
