//! Operation rules: each operation's exact notifier events and ranges (spec table 2.6) and
//! its effect on entries and folios.
//!
//! Limits: each operation runs as one atomic step on a single-threaded model (no concurrent
//! fault inside it), over a few MiB laid out as below; a forked child's own mappings have
//! no subscriber, so only the parent's notifier events are checked.
//!
//! ```text
//!   BASE            +2M             +4M             +6M             +8M
//!   |  anon 8M (THP allowed where the test asks)                       |
//! ```

use super::super::testutil::*;
use super::super::*;
use crate::gup;
use crate::notifier::{NoNotifier, NotifierEvent::*, NotifierLog};
use crate::types::{Hva, KernelVersion, Level, NodeId, Pfn};
use std::collections::BTreeMap;

fn w(mm: &mut Mm, hva: Hva) {
    mm.user_access(hva, true, &mut NoNotifier).unwrap();
}
fn ok(mm: &Mm) {
    mm.check_invariants(&BTreeMap::new()).unwrap();
}

/// Models `unmap_vmas()` via munmap: one UNMAP [start, end) across VMAs; pages freed.
#[test]
fn munmap_sends_one_unmap_over_the_range_and_frees() {
    let mut mm = mm(KernelVersion::V6_12);
    let a = anon(&mut mm, 8 * M2, false);
    w(&mut mm, a.add(0x1000));
    let pfn = mm.lookup(a.add(0x1000)).unwrap().pfn;
    let mut log = NotifierLog::new();
    let r = mm.munmap(a, 2 * M2, &mut log).unwrap();
    assert_eq!(triples(&r.notifiers), vec![(Unmap, a.0, a.0 + 2 * M2)]);
    assert_eq!(log.start_triples(), triples(&r.notifiers));
    assert!(mm.folio_info(pfn).is_none());
    assert_eq!(
        mm.find_vma(a.add(2 * M2)).unwrap().start,
        a.add(2 * M2),
        "vma split"
    );
    assert!(mm.find_vma(a).is_none());
    ok(&mm);
    let r = mm.munmap(a, M2, &mut log).unwrap();
    assert!(r.notifiers.is_empty(), "no vma, no notifier");
}

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

/// Models `copy_page_range()`: PROTECTION_PAGE over each COW VMA that has anon pages;
/// VMAs without anon_vma (only zero pages) and shared VMAs get no notifier.
#[test]
fn fork_sends_protection_page_for_cow_vmas_with_anon_pages() {
    let mut mm = mm(KernelVersion::V6_12);
    let a = anon(&mut mm, M2, false);
    let b = mm.mmap(MmapRequest::anon(Hva(BASE.0 + G1), M2)).unwrap();
    let mut shm = MmapRequest::anon(Hva(BASE.0 + 2 * G1), M2);
    shm.shared = true;
    let c = mm.mmap(shm).unwrap();
    w(&mut mm, a);
    mm.user_access(b, false, &mut NoNotifier).unwrap();
    w(&mut mm, c);
    let (child, r) = mm.fork(&mut NoNotifier).unwrap();
    assert_eq!(triples(&r.notifiers), vec![(ProtectionPage, a.0, a.0 + M2)]);
    let f = mm.folio_info(mm.lookup(a).unwrap().pfn).unwrap();
    assert_eq!((f.refcount, f.mapcount, f.anon_exclusive), (2, 2, false));
    assert!(mm.lookup(c).unwrap().writable, "shared mapping untouched");
    ok(&mm);
    // The child writes: COW in the child, parent page now exclusive-able.
    mm.child_access(child, a, true).unwrap().unwrap();
    ok(&mm);
    assert!(mm.child_exit(child));
    ok(&mm);
}

/// Models `copy_present_page()`: a maybe-pinned anon page is copied for the child at fork,
/// so the parent's page stays exclusive and writable.
#[test]
fn fork_copies_pinned_page_for_child() {
    let mut mm = mm(KernelVersion::V6_12);
    let a = anon(&mut mm, M2, false);
    w(&mut mm, a);
    let p = gup::get_user_pages_fast(
        &mut mm,
        a,
        gup::FollFlags::PIN | gup::FollFlags::WRITE,
        &mut NoNotifier,
    )
    .unwrap();
    mm.fork(&mut NoNotifier).unwrap();
    let m = mm.lookup(a).unwrap();
    assert!(m.writable);
    assert!(mm.folio_info(m.pfn).unwrap().anon_exclusive);
    gup::unpin_user_page(&mut mm, p);
    ok(&mm);
}

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

/// Models `madvise_collapse()` → `collapse_huge_page()`: CLEAR [haddr, +2M), one THP
/// replaces the PTE-mapped pages; a page with a GUP reference blocks it (EAGAIN).
#[test]
fn madv_collapse_replaces_ptes_with_thp_under_clear_2m() {
    let mut mm = mm(KernelVersion::V6_12);
    let a = anon(&mut mm, 2 * M2, false);
    w(&mut mm, a.add(0x1000));
    w(&mut mm, a.add(0x7000));
    let p = gup::get_user_page_fast_only(&mut mm, a.add(0x1000), gup::FollFlags::empty()).unwrap();
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

/// Models `migrate_pages()`: CLEAR per folio span; a folio with a GUP reference is skipped.
#[test]
fn migrate_moves_folios_and_skips_referenced_ones() {
    let mut mm = mm(KernelVersion::V6_12);
    let a = anon(&mut mm, M2, false);
    w(&mut mm, a);
    w(&mut mm, a.add(0x1000));
    let p = gup::get_user_page_fast_only(&mut mm, a.add(0x1000), gup::FollFlags::empty()).unwrap();
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

/// Models `folio_referenced_one()` / `ptep_clear_young_notify()` / `test_young`: one
/// callback per present leaf with the leaf's span; clearing clears the primary young bit.
#[test]
fn aging_calls_young_callbacks_per_leaf() {
    let mut mm = mm(KernelVersion::V6_12);
    let a = anon(&mut mm, 2 * M2, true);
    w(&mut mm, a);
    let b = mm.mmap(MmapRequest::anon(Hva(BASE.0 + G1), M2)).unwrap();
    w(&mut mm, b);
    let mut log = NotifierLog::new();
    let r = mm.clear_young(a, 2 * M2, &mut log).unwrap();
    assert_eq!(r.young, Some(true));
    assert_eq!(log.calls.len(), 1);
    assert!(!mm.lookup(a).unwrap().young);
    let r = mm.test_young(a, 2 * M2, &mut log).unwrap();
    assert_eq!(r.young, Some(false));
    let r = mm.clear_flush_young(b, M2, &mut log).unwrap();
    assert_eq!(r.young, Some(true));
    assert_eq!(log.calls.len(), 3);
}

/// Models `exit_mmap()`: release() reaches the subscriber, no UNMAP; everything is freed.
#[test]
fn exit_sends_release_only() {
    let mut mm = mm(KernelVersion::V6_12);
    let a = anon(&mut mm, M2, false);
    w(&mut mm, a);
    let mut log = NotifierLog::new();
    mm.exit(&mut log);
    assert_eq!(log.calls, vec![crate::notifier::NotifierCall::Release]);
    assert_eq!(mm.memory_use().allocated_pages, 0);
}

/// Bad ranges are errors naming the problem.
#[test]
fn bad_ranges_are_reported_not_panics() {
    let mut mm = mm(KernelVersion::V6_12);
    let e = mm.munmap(Hva(0x1001), 0x1000, &mut NoNotifier).unwrap_err();
    assert!(e.to_string().contains("4K-aligned"), "{e}");
    let e = mm.mmap(MmapRequest::anon(BASE, 0)).unwrap_err();
    assert!(e.to_string().contains("length is 0"), "{e}");
    anon(&mut mm, M2, false);
    assert!(matches!(
        mm.mmap(MmapRequest::anon(BASE, M2)),
        Err(MmapError::Overlap { .. })
    ));
    let mut req = MmapRequest::anon(Hva(BASE.0 + G1), M2);
    req.backing = Backing::Device(DeviceSpec::pfnmap(Pfn(0x100)));
    assert_eq!(mm.mmap(req), Err(MmapError::PrivatePfnmap));
}

/// Models reclaim of MADV_FREE'd pages (`try_to_unmap_one()` discarding a clean lazyfree
/// anon folio): CLEAR [addr, +4K), the page is freed and the next read maps the zero page;
/// a young page is only aged, a re-dirtied page is kept.
#[test]
fn reclaim_discards_clean_lazyfree_pages_under_clear() {
    let mut mm = mm(KernelVersion::V6_12);
    let a = anon(&mut mm, M2, false);
    for i in 0..3 {
        w(&mut mm, a.add(i * 0x1000));
    }
    mm.madvise(a, 0x3000, Advice::Free, &mut NoNotifier)
        .unwrap();
    w(&mut mm, a.add(0x2000)); // re-dirtied after MADV_FREE
    mm.user_access(a.add(0x1000), false, &mut NoNotifier)
        .unwrap(); // young again
    let mut log = NotifierLog::new();
    let r = mm.reclaim(a, 0x3000, &mut log).unwrap();
    assert_eq!(triples(&r.notifiers), vec![(Clear, a.0, a.0 + 0x1000)]);
    assert_eq!((r.changed, r.skipped), (1, 2));
    assert!(mm.lookup(a).is_none());
    let rd = mm.user_access(a, false, &mut NoNotifier).unwrap();
    assert_eq!(rd.host_faults, vec![HostFault::AnonZero]);
    ok(&mm);
}

/// Models `clear_refs_write(CLEAR_REFS_SOFT_DIRTY)`: SOFT_DIRTY [0, -1); entries are
/// write-protected; the next write reuses the page (no notifier) and sets soft-dirty.
#[test]
fn clear_refs_soft_dirty_write_protects_under_soft_dirty_range() {
    let mut mm = mm(KernelVersion::V6_12);
    let a = anon(&mut mm, M2, false);
    w(&mut mm, a);
    assert!(mm.lookup(a).unwrap().entry.is_soft_dirty());
    let r = mm.clear_refs_soft_dirty(&mut NoNotifier);
    assert_eq!(triples(&r.notifiers), vec![(SoftDirty, 0, u64::MAX)]);
    let e = mm.lookup(a).unwrap();
    assert!(!e.writable && !e.entry.is_soft_dirty());
    let mut log = NotifierLog::new();
    let f = mm.user_access(a, true, &mut log).unwrap();
    assert_eq!(f.host_faults, vec![HostFault::WpReuse]);
    assert!(log.calls.is_empty());
    assert!(mm.lookup(a).unwrap().entry.is_soft_dirty());
}

/// Models `vma_needs_copy()` after a THP read fault: `do_huge_pmd_anonymous_page()` set
/// anon_vma before mapping the huge zero PMD, so fork copies and notifies that VMA
/// (PROTECTION_PAGE) although it holds no anon page; the huge zero PMD is shared as is.
#[test]
fn fork_notifies_thp_vma_that_only_mapped_huge_zero() {
    let mut mm = mm(KernelVersion::V6_12);
    let a = anon(&mut mm, 2 * M2, true);
    mm.user_access(a, false, &mut NoNotifier).unwrap();
    let (_c, r) = mm.fork(&mut NoNotifier).unwrap();
    assert_eq!(
        triples(&r.notifiers),
        vec![(ProtectionPage, a.0, a.0 + 2 * M2)]
    );
    assert_eq!(mm.lookup(a).unwrap().pfn, mm.huge_zero_pfn());
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

/// Models `_install_special_mapping()` of the vDSO's [vvar]: a private, read-only,
/// fault-driven VM_PFNMAP is allowed (nothing can COW it); a private writable one is not
/// (vfio-pci's rule).
#[test]
fn a_private_read_only_fault_driven_pfnmap_is_allowed() {
    let mut mm = mm(KernelVersion::V6_18);
    let mut req = MmapRequest::anon(BASE, 0x4000);
    req.prot = Prot::R;
    req.backing = Backing::Device(DeviceSpec::pfnmap(Pfn(0x100)));
    assert!(mm.mmap(req).is_ok());
    let mut req = MmapRequest::anon(Hva(BASE.0 + G1), 0x4000);
    req.backing = Backing::Device(DeviceSpec::pfnmap(Pfn(0x200)));
    assert_eq!(mm.mmap(req), Err(MmapError::PrivatePfnmap));
}
