//! Models NUMA balancing's scan (`task_numa_work()`, kernel/sched/fair.c) and mm/migrate.c
//! `migrate_pages()` as user operations; the rules they share live in `host/numa.rs`.

use super::*;
use crate::host::numa::ChangeKind;
use crate::host::Mm;
use crate::notifier::MmuNotifier;
use crate::types::{Hva, Level, NodeId, PAGE_SIZE};

/// migrate failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigrateError {
    /// Bad range.
    #[error(transparent)]
    Range(#[from] RangeError),
    /// Node {node:?} does not exist (the machine has {nodes} nodes)
    #[error("Node {node:?} does not exist (the machine has {nodes} nodes)")]
    NoSuchNode {
        /// Requested node.
        node: NodeId,
        /// Nodes configured.
        nodes: u16,
    },
}

impl Mm {
    /// Models one `task_numa_work()` (kernel/sched/fair.c) pass over `[start, start+len)`: VMAs
    /// that are not migratable (VM_IO/VM_PFNMAP/VM_MIXEDMAP, devices), inaccessible, or read-only
    /// file mappings are skipped; each other VMA piece, with its end rounded up to 2M, goes through
    /// `change_prot_numa()` (PROTECTION_VMA first, then the per-entry skip rules).
    pub fn numa_scan(
        &mut self,
        start: Hva,
        len: u64,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<OpReport, RangeError> {
        let end = check_range(start, len)?;
        let mut report = OpReport::new("numa-scan", start, end);
        for v in self.vmas_in(start, end) {
            if Self::numa_scan_skips_vma(&v) {
                report.skipped += 1;
                continue;
            }
            let s = start.max(v.start);
            let e = end.align_up(Level::Pmd2M).min(v.end);
            let c = self.change_protection(
                &v,
                s,
                e,
                ChangeKind::ProtNuma,
                notifier,
                &mut report.notifiers,
            );
            report.changed += c.changed;
            report.skipped += c.skipped;
        }
        Ok(report)
    }

    /// Models `migrate_pages()` (mm/migrate.c) / `move_pages()` of every folio mapped in the range
    /// to `node`: CLEAR of each folio span, new entries without notifier; folios with extra
    /// references (GUP) or pins are skipped.
    pub fn migrate(
        &mut self,
        start: Hva,
        len: u64,
        node: NodeId,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<OpReport, MigrateError> {
        let end = check_range(start, len)?;
        if node.0 >= self.config.nodes {
            return Err(MigrateError::NoSuchNode {
                node,
                nodes: self.config.nodes,
            });
        }
        let mut report = OpReport::new("migrate", start, end);
        for v in self.vmas_in(start, end) {
            if v.hugetlb_level().is_some() {
                // Divergence: hugetlb migration (`migrate_hugetlbs()`) is not modelled.
                report.skipped += 1;
                continue;
            }
            let mut va = start.max(v.start);
            let e = end.min(v.end);
            while va < e {
                let m = self.lookup(va);
                let mut step = PAGE_SIZE;
                if let Some(m) = m {
                    step = m.leaf_start.add(m.level.size()).offset_from(va);
                    let folio = self
                        .vm_normal_page_entry(&v, va, m.entry, m.level)
                        .and_then(|p| self.frames.folio_of(p));
                    if let Some(id) = folio {
                        if self.frames.folios[id].node != node.0 {
                            let span = match m.level {
                                Level::Pte4K => self.folio_span(&v, va, id),
                                _ => (m.leaf_start, m.leaf_start.add(m.level.size())),
                            };
                            if self.migrate_folio(
                                &v,
                                id,
                                span,
                                node,
                                notifier,
                                &mut report.notifiers,
                            ) {
                                report.changed += 1;
                                step = span.1.offset_from(va).max(PAGE_SIZE);
                            } else {
                                report.skipped += 1;
                            }
                        }
                    }
                }
                va = va.add(step);
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use crate::gup;
    use crate::host::testutil::*;
    use crate::host::*;
    use crate::notifier::{NoNotifier, NotifierEvent::*};
    use crate::types::{Hva, KernelVersion, NodeId, Pfn};

    /// Models `task_numa_work()` + `change_prot_numa()`: PROTECTION_VMA is sent before the
    /// per-PTE skips, so a range holding only zero pages (all skipped) is still invalidated;
    /// the end is rounded up to 2M; pfnmap VMAs are skipped entirely.
    #[test]
    fn numa_scan_notifies_before_skipping_entries() {
        let mut mm = mm(KernelVersion::V6_12);
        let a = anon(&mut mm, 4 * M2, false);
        mm.user_access(a.add(0x3000), false, &mut NoNotifier)
            .unwrap();
        let r = mm
            .numa_scan(a.add(0x1000), 0x1000, &mut NoNotifier)
            .unwrap();
        assert_eq!(
            triples(&r.notifiers),
            vec![(ProtectionVma, a.0 + 0x1000, a.0 + M2)]
        );
        assert_eq!((r.changed, r.skipped), (0, 1));
        assert!(!mm.lookup(a.add(0x3000)).unwrap().protnone);
        let b = device(
            &mut mm,
            Hva(BASE.0 + G1),
            M2,
            true,
            DeviceSpec::pfnmap(Pfn(0x100)),
        );
        mm.user_access(b, false, &mut NoNotifier).unwrap();
        let r = mm.numa_scan(b, M2, &mut NoNotifier).unwrap();
        assert!(r.notifiers.is_empty());
    }

    /// Models `change_pte_range()`'s target-node skip: a single-threaded process's private
    /// folios already on its node are left alone (the notifier was still sent).
    #[test]
    fn numa_scan_skips_folios_on_target_node_when_single_threaded() {
        let mut mm = Mm::new(MmConfig {
            multi_threaded: false,
            ..Default::default()
        });
        let a = anon(&mut mm, M2, false);
        w(&mut mm, a);
        let r = mm.numa_scan(a, M2, &mut NoNotifier).unwrap();
        assert_eq!((r.changed, r.skipped, r.notifiers.len()), (0, 1, 1));
        assert!(!mm.lookup(a).unwrap().protnone);
    }

    /// Models `change_pte_range()`'s COW skip: in a COW mapping, a folio shared with a child
    /// (or maybe pinned) is not made protnone.
    #[test]
    fn numa_scan_skips_shared_cow_folios() {
        let mut mm = mm(KernelVersion::V6_12);
        let a = anon(&mut mm, M2, false);
        w(&mut mm, a);
        w(&mut mm, a.add(0x1000));
        mm.fork(&mut NoNotifier).unwrap();
        let p = gup::get_user_pages_fast(
            &mut mm,
            a.add(0x1000),
            gup::FollFlags::PIN | gup::FollFlags::WRITE,
            &mut NoNotifier,
        )
        .unwrap();
        let r = mm.numa_scan(a, M2, &mut NoNotifier).unwrap();
        assert_eq!((r.changed, r.skipped), (0, 2));
        gup::unpin_user_page(&mut mm, p);
    }

    /// Models `migrate_pages()`: CLEAR per folio span; a folio with a GUP reference is skipped.
    #[test]
    fn migrate_moves_folios_and_skips_referenced_ones() {
        let mut mm = mm(KernelVersion::V6_12);
        let a = anon(&mut mm, M2, false);
        w(&mut mm, a);
        w(&mut mm, a.add(0x1000));
        let p =
            gup::get_user_page_fast_only(&mut mm, a.add(0x1000), gup::FollFlags::empty()).unwrap();
        let r = mm.migrate(a, 0x2000, NodeId(1), &mut NoNotifier).unwrap();
        assert_eq!(triples(&r.notifiers), vec![(Clear, a.0, a.0 + 0x1000)]);
        assert_eq!((r.changed, r.skipped), (1, 1));
        let m = mm.lookup(a).unwrap();
        assert_eq!(mm.folio_info(m.pfn).unwrap().node, NodeId(1));
        assert!(
            m.writable,
            "writable migration entry restores a writable PTE"
        );
        gup::put_page(&mut mm, p);
        ok(&mm);
        assert!(mm.migrate(a, 0x1000, NodeId(7), &mut NoNotifier).is_err());
    }
}
