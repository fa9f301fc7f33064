//! Kernel samepage merging: mm/ksm.c.
//!
//! `MADV_MERGEABLE` marks a VMA VM_MERGEABLE ([`Mm::ksm_madvise`]); a KSM scan
//! ([`Mm::ksm_scan`]) then merges its identical anonymous pages into write-protected KSM
//! pages, which the next write COW-breaks (`do_wp_page()` never reuses a KSM folio).
//!
//! # Divergence
//! One [`Mm::ksm_scan`] stands for as many ksmd passes as it takes to merge every page that
//! stays unchanged between two passes (checksums are not modelled); large folios are skipped
//! (ksmd would split them first); pages are merged within this process only; no
//! `use_zero_pages`, no `MADV_UNMERGEABLE` of merged pages.

use super::folio::ff;
use super::ops::{check_range, OpReport, RangeError};
use super::pte::Entry;
use super::vma::VmFlags;
use super::Mm;
use crate::notifier::{MmuNotifier, NotifierEvent, NotifierRange};
use crate::types::{Hva, Level, Pfn, PAGE_SIZE};

impl Mm {
    /// Models `ksm_madvise()` (mm/ksm.c): MADV_MERGEABLE sets VM_MERGEABLE on the
    /// KSM-compatible VMAs of the range (`vma_ksm_compatible()`: not shared, not
    /// VM_PFNMAP/VM_IO/VM_MIXEDMAP/VM_DONTEXPAND/VM_HUGETLB; others are left alone, no
    /// error); MADV_UNMERGEABLE clears it. No notifier.
    pub fn ksm_madvise(
        &mut self,
        start: Hva,
        len: u64,
        mergeable: bool,
    ) -> Result<OpReport, RangeError> {
        let end = check_range(start, len)?;
        let name = if mergeable {
            "madvise-mergeable"
        } else {
            "madvise-unmergeable"
        };
        let mut report = OpReport::new(name, start, end);
        let incompatible = VmFlags::SHARED
            | VmFlags::MAYSHARE
            | VmFlags::PFNMAP
            | VmFlags::IO
            | VmFlags::DONTEXPAND
            | VmFlags::HUGETLB
            | VmFlags::MIXEDMAP;
        self.split_vma_at(start);
        self.split_vma_at(end);
        for mut v in self.vmas_in(start, end) {
            if v.flags.intersects(incompatible) || v.device().is_some() {
                continue;
            }
            v.flags = if mergeable {
                v.flags | VmFlags::MERGEABLE
            } else {
                v.flags.without(VmFlags::MERGEABLE)
            };
            self.space.vmas.insert(v.start.0, v);
            report.changed += 1;
        }
        Ok(report)
    }

    /// Models `write_protect_page()` (mm/ksm.c): CLEAR [addr, +4K) around making the PTE
    /// read-only and clean and the folio shared (no longer PageAnonExclusive). A folio with
    /// references beyond its mappings (a GUP pin) is left as it was (-EBUSY), after the
    /// notifier. Returns whether it was protected.
    fn ksm_write_protect(
        &mut self,
        addr: Hva,
        id: usize,
        notifier: &mut dyn MmuNotifier,
        log: &mut Vec<NotifierRange>,
    ) -> bool {
        let range = NotifierRange::new(NotifierEvent::Clear, addr, addr.add(PAGE_SIZE));
        self.notify(notifier, log, range, |mm| {
            let f = &mm.frames.folios[id];
            if f.mapcount != f.refcount || f.pincount > 0 {
                return false;
            }
            let Some(e) = mm.space.pt.pte(addr) else {
                return false;
            };
            if e.is_dirty() {
                mm.frames.folios[id].flags |= ff::DIRTY;
            }
            mm.set_pte(addr, e.clear(Entry::WRITE | Entry::DIRTY));
            mm.frames.folios[id].flags &= !ff::ANON_EXCLUSIVE;
            true
        })
    }

    /// Models `replace_page()` (mm/ksm.c): CLEAR [addr, +4K) around pointing the PTE at the
    /// KSM page (`mk_pte(kpage, vm_page_prot)`: read-only), taking a mapping and a
    /// reference on it and dropping the old page's.
    fn ksm_replace_page(
        &mut self,
        addr: Hva,
        kpage: usize,
        notifier: &mut dyn MmuNotifier,
        log: &mut Vec<NotifierRange>,
    ) {
        let Some(vma) = self.space.vma(addr).cloned() else {
            return;
        };
        let range = NotifierRange::new(NotifierEvent::Clear, addr, addr.add(PAGE_SIZE));
        self.notify(notifier, log, range, |mm| {
            let old = mm.space.pt.pte(addr).unwrap_or(Entry::NONE);
            let pfn = Pfn(mm.frames.folios[kpage].pfn);
            mm.frames.get(kpage, 1);
            mm.frames.folios[kpage].mapcount += 1;
            mm.set_pte(addr, Entry::new(pfn, vma.page_prot()));
            mm.drop_leaf_ref(old);
        });
    }

    /// Models ksmd's passes over the VM_MERGEABLE anonymous VMAs (`ksm_do_scan()` →
    /// `cmp_and_merge_page()`, mm/ksm.c), in address order: a page identical to a KSM page
    /// (stable tree) is merged into it (`try_to_merge_with_ksm_page()`: write-protect, then
    /// replace); a page identical to an earlier unmerged one (unstable tree) becomes a KSM
    /// page itself and the earlier one is merged into it (`try_to_merge_two_pages()`:
    /// CLEAR of this page, then CLEAR and CLEAR of the earlier one); any other page waits in
    /// the unstable tree. `same(a, b)` says whether the pages at pfns `a` and `b` hold the
    /// same data (the model has no page contents itself). `changed` counts merged pages.
    pub fn ksm_scan(
        &mut self,
        same: &dyn Fn(Pfn, Pfn) -> bool,
        notifier: &mut dyn MmuNotifier,
    ) -> OpReport {
        let mut report = OpReport::new("ksm-scan", Hva(0), Hva(crate::types::TASK_SIZE));
        let mut candidates = Vec::new();
        for v in self.space.vmas.values() {
            if !v.flags.contains(VmFlags::MERGEABLE) || !v.is_anonymous() {
                continue;
            }
            self.space.pt.for_each_leaf(v.start, v.end, |va, level, e| {
                if e.is_present() && !e.is_protnone() {
                    candidates.push((va, level, e));
                }
            });
        }
        let mut stable: Vec<usize> = Vec::new();
        let mut unstable: Vec<(Hva, usize)> = Vec::new();
        for (va, level, e) in candidates {
            let Some(id) = self.leaf_ref_folio(e) else {
                continue; // the zero page, special entries: not anon pages
            };
            let f = &self.frames.folios[id];
            if !f.has(ff::ANON) {
                continue;
            }
            if level != Level::Pte4K || f.order != 0 {
                report.skipped += 1; // a THP: ksmd splits it first (not modelled)
                continue;
            }
            if f.has(ff::KSM) {
                if !stable.contains(&id) {
                    stable.push(id);
                }
                continue;
            }
            let pfn = Pfn(f.pfn);
            let log = &mut report.notifiers;
            if let Some(&k) = stable
                .iter()
                .find(|&&k| same(pfn, Pfn(self.frames.folios[k].pfn)))
            {
                if self.ksm_write_protect(va, id, notifier, log) {
                    self.ksm_replace_page(va, k, notifier, log);
                    report.changed += 1;
                } else {
                    report.skipped += 1;
                }
                continue;
            }
            let twin = unstable
                .iter()
                .position(|&(_, u)| same(pfn, Pfn(self.frames.folios[u].pfn)));
            match twin {
                Some(i) => {
                    let (ua, u) = unstable.remove(i);
                    if !self.ksm_write_protect(va, id, notifier, log) {
                        report.skipped += 1;
                        unstable.push((ua, u));
                        continue;
                    }
                    self.frames.folios[id].flags |= ff::KSM;
                    stable.push(id);
                    if self.ksm_write_protect(ua, u, notifier, log) {
                        self.ksm_replace_page(ua, id, notifier, log);
                        report.changed += 2;
                    } else {
                        report.changed += 1;
                        report.skipped += 1;
                    }
                }
                None => unstable.push((va, id)),
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use crate::host::testutil::*;
    use crate::host::*;
    use crate::notifier::{NoNotifier, NotifierEvent::*};
    use crate::types::{Hva, KernelVersion, Pfn};

    /// Models `try_to_merge_two_pages()` then a stable-tree merge: with pages a < b < c of the
    /// same content, b becomes the KSM page (CLEAR b), a is merged into it (CLEAR a, CLEAR a),
    /// then c (CLEAR c, CLEAR c); all three map one read-only KSM folio with mapcount 3;
    /// a write then COWs (`do_wp_page()` never reuses a KSM folio) under CLEAR 4K.
    #[test]
    fn identical_pages_merge_into_one_ksm_page_and_a_write_breaks_cow() {
        let mut mm = mm(KernelVersion::V6_12);
        let base = anon(&mut mm, 16 * 4096, false);
        let (a, b, c, d) = (base, base.add(0x2000), base.add(0x5000), base.add(0x7000));
        for p in [a, b, c, d] {
            w(&mut mm, p);
        }
        mm.ksm_madvise(base, 16 * 4096, true).unwrap();
        let odd = mm.lookup(d).unwrap().pfn;
        // Content: every page but d holds the same data.
        let same = |x: Pfn, y: Pfn| (x == odd) == (y == odd);
        let r = mm.ksm_scan(&same, &mut NoNotifier);
        let k = |h: Hva| (Clear, h.0, h.0 + 0x1000);
        assert_eq!(triples(&r.notifiers), vec![k(b), k(a), k(a), k(c), k(c)]);
        assert_eq!(r.changed, 3);
        let kp = mm.lookup(b).unwrap();
        assert!([a, c].iter().all(|&h| mm.lookup(h).unwrap().pfn == kp.pfn));
        assert!(!kp.writable);
        let f = mm.folio_info(kp.pfn).unwrap();
        assert_eq!((f.mapcount, f.refcount, f.anon_exclusive), (3, 3, false));
        assert!(mm.lookup(d).unwrap().writable, "the odd page stays");
        ok(&mm);
        let r = mm.user_access(a, true, &mut NoNotifier).unwrap();
        assert_eq!(r.notifiers.len(), 1);
        assert_ne!(mm.lookup(a).unwrap().pfn, kp.pfn);
        assert_eq!(mm.folio_info(kp.pfn).unwrap().mapcount, 2);
        ok(&mm);
    }

    /// `vma_ksm_compatible()`: MADV_MERGEABLE leaves shared mappings alone, so their pages
    /// never merge.
    #[test]
    fn shared_mappings_are_not_mergeable() {
        let mut mm = mm(KernelVersion::V6_12);
        let mut req = MmapRequest::anon(BASE, 4 * 4096);
        req.shared = true;
        let a = mm.mmap(req).unwrap();
        w(&mut mm, a);
        w(&mut mm, a.add(0x1000));
        let r = mm.ksm_madvise(a, 4 * 4096, true).unwrap();
        assert_eq!(r.changed, 0);
        let r = mm.ksm_scan(&|_, _| true, &mut NoNotifier);
        assert!(r.notifiers.is_empty());
        ok(&mm);
    }
}
