//! Fault-handler rules, one test per rule. Each builds a small address space, faults, and
//! checks the resulting entry, the folio counts and the exact notifier ranges.
//!
//! Limits: one process, one fault at a time (a fault is an atomic step here; races between
//! a fault and an invalidation are the explorer's job, `crate::explore`), the model's own
//! drivers (`host::device`) stand in for real ones, and nothing is swapped or hugetlb-backed.

use super::super::testutil::*;
use super::super::*;
use crate::gup;
use crate::notifier::{NoNotifier, NotifierEvent::*, NotifierLog};
use crate::types::{Hva, KernelVersion, Level, NodeId, Pfn};
use std::collections::BTreeMap;

fn read(mm: &mut Mm, hva: Hva) -> OpReport {
    mm.user_access(hva, false, &mut NoNotifier).expect("read")
}
fn write(mm: &mut Mm, hva: Hva, log: &mut NotifierLog) -> OpReport {
    mm.user_access(hva, true, log).expect("write")
}
fn ok(mm: &Mm) {
    mm.check_invariants(&BTreeMap::new()).expect("invariants");
}

/// Models `do_anonymous_page()` (mm/memory.c): a read fault maps the shared zero page,
/// special and read-only, with no notifier.
#[test]
fn anon_read_fault_maps_special_zero_page() {
    let mut mm = mm(KernelVersion::V6_12);
    let a = anon(&mut mm, 1 << 20, false);
    let r = read(&mut mm, a);
    assert_eq!(r.host_faults, vec![HostFault::AnonZero]);
    let m = mm.lookup(a).unwrap();
    assert!(m.special && !m.writable && m.level == Level::Pte4K);
    assert_eq!(m.pfn, mm.zero_pfn());
    assert!(r.notifiers.is_empty());
    assert_eq!(gup::vm_normal_page(&mm, a), None, "zero page is not normal");
    ok(&mm);
}

/// Models `do_anonymous_page()` write: a new exclusive anon page, writable and dirty,
/// one reference and one mapping.
#[test]
fn anon_write_fault_allocates_exclusive_page() {
    let mut mm = mm(KernelVersion::V6_12);
    let a = anon(&mut mm, 1 << 20, false);
    let mut log = NotifierLog::new();
    let r = write(&mut mm, a, &mut log);
    assert_eq!(r.host_faults, vec![HostFault::Anon]);
    assert!(log.calls.is_empty(), "none -> present sends nothing");
    let m = mm.lookup(a).unwrap();
    assert!(m.writable && m.dirty && !m.special);
    let f = mm.folio_info(m.pfn).unwrap();
    assert_eq!((f.refcount, f.mapcount), (1, 1));
    assert!(f.anon && f.anon_exclusive);
    ok(&mm);
}

/// Models `wp_page_copy()` (mm/memory.c): writing over the zero page copies under CLEAR
/// [addr & PAGE_MASK, +4K) (spec trace 1).
#[test]
fn write_after_zero_page_read_copies_under_clear_4k() {
    let mut mm = mm(KernelVersion::V6_12);
    let a = anon(&mut mm, 1 << 20, false);
    read(&mut mm, a.add(0x1000));
    let mut log = NotifierLog::new();
    let r = write(&mut mm, a.add(0x1234), &mut log);
    assert_eq!(r.host_faults, vec![HostFault::WpCopy]);
    assert_eq!(
        log.start_triples(),
        vec![(Clear, a.0 + 0x1000, a.0 + 0x2000)]
    );
    assert!(log.balanced());
    assert!(mm.lookup(a.add(0x1000)).unwrap().writable);
    ok(&mm);
}

/// Models `do_huge_pmd_anonymous_page()` read + `do_huge_pmd_wp_page()` on 6.12: the huge
/// zero PMD is split (CLEAR 2M, 512 special zero PTEs) and the 4K page is COWed (CLEAR
/// 4K); the other 511 PTEs stay zero (spec trace 2).
#[test]
fn huge_zero_wp_fault_6_12_splits_then_cows_4k() {
    let mut mm = mm(KernelVersion::V6_12);
    let a = anon(&mut mm, 4 * M2, true);
    let r = read(&mut mm, a.add(0x5000));
    assert_eq!(r.host_faults, vec![HostFault::HugeZero]);
    let m = mm.lookup(a).unwrap();
    assert_eq!(m.level, Level::Pmd2M);
    assert!(!m.special, "6.12: the huge zero PMD is not special");
    assert_eq!(mm.leaf_level(a.add(0x5000)), Some(Level::Pmd2M));
    let mut log = NotifierLog::new();
    let r = write(&mut mm, a.add(0x5000), &mut log);
    assert_eq!(r.host_faults, vec![HostFault::Split, HostFault::WpCopy]);
    assert_eq!(
        log.start_triples(),
        vec![(Clear, a.0, a.0 + M2), (Clear, a.0 + 0x5000, a.0 + 0x6000)]
    );
    assert!(log.balanced());
    let w = mm.lookup(a.add(0x5000)).unwrap();
    assert!(w.level == Level::Pte4K && w.writable);
    let z = mm.lookup(a.add(0x6000)).unwrap();
    assert!(z.special && z.pfn == mm.zero_pfn());
    ok(&mm);
}

/// Models `do_huge_zero_wp_pmd()` (6.13+, "mm: allocate THP on hugezeropage wp-fault"): a
/// THP replaces the huge zero PMD under exactly one CLEAR [haddr, +2M).
#[test]
fn huge_zero_wp_fault_6_13_allocates_thp_under_clear_2m() {
    let mut mm = mm(KernelVersion::V6_13);
    let a = anon(&mut mm, 4 * M2, true);
    read(&mut mm, a.add(M2));
    let mut log = NotifierLog::new();
    let r = write(&mut mm, a.add(M2 + 0x3000), &mut log);
    assert_eq!(r.host_faults, vec![HostFault::HugeZeroWpThp]);
    assert_eq!(log.start_triples(), vec![(Clear, a.0 + M2, a.0 + 2 * M2)]);
    let m = mm.lookup(a.add(M2)).unwrap();
    assert!(m.level == Level::Pmd2M && m.writable && m.dirty);
    let f = mm.folio_info(m.pfn).unwrap();
    assert_eq!((f.order, f.refcount, f.mapcount), (9, 1, 1));
    ok(&mm);
}

/// Models the `do_huge_zero_wp_pmd()` fallback: when the THP allocation fails, 6.13+ splits
/// like 6.12 (CLEAR 2M, then CLEAR 4K).
#[test]
fn huge_zero_wp_fault_6_13_falls_back_to_split_when_thp_alloc_fails() {
    let mut mm = mm(KernelVersion::V6_13);
    let a = anon(&mut mm, 4 * M2, true);
    read(&mut mm, a);
    mm.set_alloc_failure(AllocFailure {
        thp: true,
        base_after: None,
    });
    let mut log = NotifierLog::new();
    let r = write(&mut mm, a, &mut log);
    assert_eq!(r.host_faults, vec![HostFault::Split, HostFault::WpCopy]);
    assert_eq!(
        log.start_triples(),
        vec![(Clear, a.0, a.0 + M2), (Clear, a.0, a.0 + 0x1000)]
    );
    ok(&mm);
}

/// Models `set_huge_zero_folio()` on 6.18: the huge zero PMD is `pmd_special`, so
/// `vm_normal_page_pmd()` returns no page (it never did for the huge zero folio).
#[test]
fn huge_zero_pmd_is_special_from_6_18() {
    let mut mm = mm(KernelVersion::V6_18);
    let a = anon(&mut mm, 2 * M2, true);
    read(&mut mm, a);
    assert!(mm.lookup(a).unwrap().special);
    assert_eq!(gup::vm_normal_page_pmd(&mm, a), None);
    ok(&mm);
}

/// Models `do_huge_pmd_anonymous_page()` write: a THP, writable, order 9.
#[test]
fn thp_write_fault_maps_writable_pmd() {
    let mut mm = mm(KernelVersion::V6_12);
    let a = anon(&mut mm, 2 * M2, true);
    let mut log = NotifierLog::new();
    let r = write(&mut mm, a.add(0x10_0000), &mut log);
    assert_eq!(r.host_faults, vec![HostFault::Thp]);
    assert!(log.calls.is_empty());
    assert_eq!(mm.leaf_level(a), Some(Level::Pmd2M));
    assert!(gup::vm_normal_page_pmd(&mm, a.add(0x3000)).is_some());
    ok(&mm);
}

/// Models `do_huge_pmd_wp_page()` reuse: after a fork's child is gone the THP is the only
/// reference, so the write reuses it in place (no notifier).
#[test]
fn anon_thp_wp_fault_reuses_when_only_reference() {
    let mut mm = mm(KernelVersion::V6_12);
    let a = anon(&mut mm, 2 * M2, true);
    let mut log = NotifierLog::new();
    write(&mut mm, a, &mut log);
    let (child, _) = mm.fork(&mut log).unwrap();
    assert!(
        !mm.lookup(a).unwrap().writable,
        "fork write-protected the THP"
    );
    assert!(mm.child_exit(child));
    log.clear();
    let r = write(&mut mm, a, &mut log);
    assert_eq!(r.host_faults, vec![HostFault::WpReuse]);
    assert!(log.calls.is_empty());
    assert_eq!(mm.leaf_level(a), Some(Level::Pmd2M));
    ok(&mm);
}

/// Models `do_huge_pmd_wp_page()` when the THP is shared with a child: split (CLEAR 2M) and
/// COW the 4K page (CLEAR 4K).
#[test]
fn anon_thp_wp_fault_splits_when_shared() {
    let mut mm = mm(KernelVersion::V6_12);
    let a = anon(&mut mm, 2 * M2, true);
    let mut log = NotifierLog::new();
    write(&mut mm, a, &mut log);
    let (_child, fork) = mm.fork(&mut log).unwrap();
    assert_eq!(
        triples(&fork.notifiers),
        vec![(ProtectionPage, a.0, a.0 + 2 * M2)]
    );
    log.clear();
    let r = write(&mut mm, a.add(0x2000), &mut log);
    assert_eq!(r.host_faults, vec![HostFault::Split, HostFault::WpCopy]);
    assert_eq!(
        log.start_triples(),
        vec![(Clear, a.0, a.0 + M2), (Clear, a.0 + 0x2000, a.0 + 0x3000)]
    );
    ok(&mm);
}

/// Models `change_prot_numa()` + `do_numa_page()` restore: the scan sends PROTECTION_VMA
/// over the chunk; the hinting fault on a folio already on the task's node restores the
/// PTE with no notifier.
#[test]
fn numa_hint_fault_restores_without_notifier() {
    let mut mm = mm(KernelVersion::V6_12);
    let a = anon(&mut mm, 1 << 20, false);
    let mut log = NotifierLog::new();
    write(&mut mm, a, &mut log);
    let scan = mm.numa_scan(a, 1 << 20, &mut log).unwrap();
    assert_eq!(
        triples(&scan.notifiers),
        vec![(ProtectionVma, a.0, a.0 + (1 << 20))]
    );
    assert!(mm.lookup(a).unwrap().protnone);
    log.clear();
    let r = write(&mut mm, a, &mut log);
    assert_eq!(r.host_faults, vec![HostFault::Numa]);
    assert!(log.calls.is_empty());
    let m = mm.lookup(a).unwrap();
    assert!(
        !m.protnone && m.writable,
        "exclusive anon page comes back writable"
    );
    ok(&mm);
}

/// Models `do_numa_page()` migration: the task moved to node 1, so the hinting fault
/// migrates the folio under CLEAR of its span; the new PTE needs no notifier.
#[test]
fn numa_hint_fault_migrates_misplaced_folio_under_clear() {
    let mut mm = mm(KernelVersion::V6_12);
    let a = anon(&mut mm, 1 << 20, false);
    let mut log = NotifierLog::new();
    write(&mut mm, a.add(0x3000), &mut log);
    let old = mm.lookup(a.add(0x3000)).unwrap().pfn;
    mm.numa_scan(a, 1 << 20, &mut log).unwrap();
    mm.set_task_node(NodeId(1));
    log.clear();
    let r = read(&mut mm, a.add(0x3000));
    assert_eq!(r.host_faults, vec![HostFault::NumaMigrate]);
    let f = mm.handle_mm_fault(a.add(0x3000), FaultFlags::empty(), &mut log);
    assert_eq!(f.handlers, vec![HostFault::Access]);
    let m = mm.lookup(a.add(0x3000)).unwrap();
    assert_ne!(m.pfn, old);
    assert_eq!(mm.folio_info(m.pfn).unwrap().node, NodeId(1));
    assert!(mm.folio_info(old).is_none(), "old folio freed");
    ok(&mm);
}

/// Models the CLEAR range of a NUMA migration (`try_to_migrate_one()`): the folio span.
#[test]
fn numa_migration_notifier_covers_folio_span() {
    let mut mm = mm(KernelVersion::V6_12);
    let a = anon(&mut mm, 4 * M2, true);
    let mut log = NotifierLog::new();
    write(&mut mm, a.add(M2), &mut log);
    mm.numa_scan(a, 4 * M2, &mut log).unwrap();
    mm.set_task_node(NodeId(1));
    log.clear();
    let f = mm.handle_mm_fault(a.add(M2 + 0x5000), FaultFlags::empty(), &mut log);
    assert_eq!(f.handlers, vec![HostFault::NumaMigrate]);
    assert_eq!(log.start_triples(), vec![(Clear, a.0 + M2, a.0 + 2 * M2)]);
    assert_eq!(mm.leaf_level(a.add(M2)), Some(Level::Pmd2M));
    ok(&mm);
}

/// Models `do_numa_page()`: a folio with an extra (GUP) reference cannot migrate
/// (`folio_migrate_mapping()` → -EAGAIN), so the PTE is restored instead.
#[test]
fn numa_migration_fails_with_gup_reference_and_restores() {
    let mut mm = mm(KernelVersion::V6_12);
    let a = anon(&mut mm, 1 << 20, false);
    let mut log = NotifierLog::new();
    write(&mut mm, a, &mut log);
    let page = gup::get_user_page_fast_only(&mut mm, a, gup::FollFlags::WRITE).unwrap();
    mm.numa_scan(a, 1 << 20, &mut log).unwrap();
    mm.set_task_node(NodeId(1));
    log.clear();
    let f = mm.handle_mm_fault(a, FaultFlags::empty(), &mut log);
    assert_eq!(f.handlers, vec![HostFault::Numa]);
    assert!(log.calls.is_empty());
    gup::put_page(&mut mm, page);
    ok(&mm);
}

/// Models `vmf_insert_pfn_prot()` without mkwrite in a write-notify mapping (the driver
/// has `pfn_mkwrite`): the write installs a read-only special PTE (NOPAGE), the access
/// faults again and `wp_pfn_shared()` calls `pfn_mkwrite` (seed 003).
#[test]
fn pfnmap_write_takes_second_fault_served_by_pfn_mkwrite() {
    let mut mm = mm(KernelVersion::V6_12);
    let mut spec = DeviceSpec::pfnmap(Pfn(0x10_0000));
    spec.pfn_mkwrite = true;
    let a = device(&mut mm, BASE, 1 << 20, true, spec);
    let mut log = NotifierLog::new();
    let r = write(&mut mm, a.add(0x2000), &mut log);
    assert_eq!(
        r.host_faults,
        vec![HostFault::Pfnmap, HostFault::PfnMkwrite]
    );
    assert!(log.calls.is_empty());
    let c = mm.driver_calls();
    assert_eq!((c.fault, c.pfn_mkwrite), (1, 1));
    let m = mm.lookup(a.add(0x2000)).unwrap();
    assert!(m.writable && m.dirty && m.special);
    assert_eq!(m.pfn, Pfn(0x10_0002));
    ok(&mm);
}

/// Models `vmf_insert_pfn_prot()` + `insert_pfn(mkwrite)`: a driver inserting with mkwrite
/// needs one fault.
#[test]
fn pfnmap_mkwrite_insert_needs_one_fault() {
    let mut mm = mm(KernelVersion::V6_12);
    let mut spec = DeviceSpec::pfnmap(Pfn(0x10_0000));
    spec.pfn_mkwrite = true;
    spec.mkwrite = true;
    let a = device(&mut mm, BASE, 1 << 20, true, spec);
    let mut log = NotifierLog::new();
    let r = write(&mut mm, a, &mut log);
    assert_eq!(r.host_faults, vec![HostFault::Pfnmap]);
    assert!(mm.lookup(a).unwrap().writable);
    assert_eq!(mm.driver_calls().pfn_mkwrite, 0);
}

/// Models `vm_get_page_prot()` without write-notify: the PTE inserted by the first fault
/// is already writable.
#[test]
fn pfnmap_without_writenotify_maps_writable_at_once() {
    let mut mm = mm(KernelVersion::V6_12);
    let a = device(
        &mut mm,
        BASE,
        1 << 20,
        true,
        DeviceSpec::pfnmap(Pfn(0x10_0000)),
    );
    let mut log = NotifierLog::new();
    let r = write(&mut mm, a, &mut log);
    assert_eq!(r.host_faults, vec![HostFault::Pfnmap]);
    assert!(mm.lookup(a).unwrap().writable);
}

/// Models `vmf_insert_pfn_pud()` from a driver's `huge_fault` (seed 000): a special 1G
/// leaf; `vm_normal_page_pud()` gives no page; `follow_pfnmap_start()` returns leaf pfn +
/// offset; GUP-fast bails (special) and slow GUP refuses VM_PFNMAP.
#[test]
fn huge_pfnmap_pud_leaf_is_special_and_follow_pfnmap_adds_offset() {
    let mut mm = mm(KernelVersion::V6_12);
    let spec = DeviceSpec::pfnmap(Pfn(0x4_0000)).with_max_level(Level::Pud1G);
    let a = device(&mut mm, BASE, 2 * G1, true, spec);
    let off = G1 + 0x1234_5000;
    let faults =
        gup::fixup_user_fault(&mut mm, a.add(off), FaultFlags::empty(), &mut NoNotifier).unwrap();
    assert_eq!(faults[0].handlers, vec![HostFault::HugePfnmap]);
    assert_eq!(mm.leaf_level(a.add(off)), Some(Level::Pud1G));
    let args = gup::follow_pfnmap_start(&mm, a.add(off)).unwrap();
    assert_eq!(args.pfn, Pfn(0x4_0000 + (off >> 12)));
    assert!(args.special && args.level == Level::Pud1G && args.writable);
    gup::follow_pfnmap_end(&mm, args);
    assert_eq!(gup::vm_normal_page_pud(&mm, a.add(off)), None);
    assert!(gup::get_user_page_fast_only(&mut mm, a.add(off), gup::FollFlags::empty()).is_none());
    assert_eq!(mm.last_gup().fast_bail, Some(gup::FastBail::Special));
    let slow = gup::get_user_pages_unlocked(
        &mut mm,
        a.add(off),
        gup::FollFlags::empty(),
        &mut NoNotifier,
    );
    assert!(matches!(slow, Err(gup::GupError::Efault(_))));
    ok(&mm);
}

/// Models `vmf_insert_pfn_pmd()`: a special 2M leaf; `vm_normal_page_pmd()` gives no page.
/// A misaligned pfn makes `huge_fault` fall back to 4K.
#[test]
fn huge_pfnmap_pmd_leaf_is_special_and_misaligned_pfn_falls_back() {
    let mut mm = mm(KernelVersion::V6_12);
    let spec = DeviceSpec::pfnmap(Pfn(0x4_0000)).with_max_level(Level::Pmd2M);
    let a = device(&mut mm, BASE, 4 * M2, true, spec);
    gup::fixup_user_fault(&mut mm, a.add(0x1000), FaultFlags::WRITE, &mut NoNotifier).unwrap();
    assert_eq!(mm.leaf_level(a), Some(Level::Pmd2M));
    assert_eq!(gup::vm_normal_page_pmd(&mm, a.add(0x1000)), None);
    let spec = DeviceSpec::pfnmap(Pfn(0x4_0001)).with_max_level(Level::Pmd2M);
    let b = device(&mut mm, Hva(BASE.0 + G1), 4 * M2, true, spec);
    let f = gup::fixup_user_fault(&mut mm, b, FaultFlags::empty(), &mut NoNotifier).unwrap();
    assert_eq!(f[0].handlers, vec![HostFault::Pfnmap]);
    assert_eq!(mm.leaf_level(b), Some(Level::Pte4K));
}

/// Models `remap_pfn_range()`'s COW rule and `vm_normal_page()` without pte_special: a
/// private remap sets `vm_pgoff = pfn`; the raw pfn (pfn == vm_pgoff + off) has no page;
/// after a write COWs it, the anon page is normal.
#[test]
fn pfnmap_cow_rule_uses_vm_pgoff() {
    let mut mm = Mm::new(MmConfig {
        arch_has_pte_special: false,
        ..Default::default()
    });
    let pfn = Pfn(0x9_0000);
    let a = device(
        &mut mm,
        BASE,
        0x10_000,
        false,
        DeviceSpec::pfnmap(pfn).remapped(),
    );
    let vma = mm.find_vma(a).unwrap();
    assert_eq!(vma.pgoff, pfn.0, "COW remap records the pfn in vm_pgoff");
    assert!(vma.flags.contains(VmFlags::IO | VmFlags::PFNMAP));
    assert_eq!(gup::vm_normal_page(&mm, a.add(0x3000)), None);
    let mut log = NotifierLog::new();
    let r = write(&mut mm, a.add(0x3000), &mut log);
    assert_eq!(r.host_faults, vec![HostFault::WpCopy]);
    let cowed = gup::vm_normal_page(&mm, a.add(0x3000)).expect("COWed page is normal");
    assert!(mm.folio_info(cowed).unwrap().anon);
    assert_eq!(gup::vm_normal_page(&mm, a.add(0x4000)), None);
    ok(&mm);
}

/// Models `remap_pfn_range_notrack()`: a COW mapping must be remapped whole.
#[test]
fn remap_pfn_range_refuses_partial_cow_mapping() {
    let mut mm = mm(KernelVersion::V6_12);
    let a = mm
        .mmap(MmapRequest {
            addr: Some(BASE),
            len: 0x10_000,
            prot: Prot::RW,
            shared: false,
            backing: Backing::Shmem,
            node: None,
            hugepage: false,
        })
        .unwrap();
    let e = mm.remap_pfn_range(a, Pfn(0x100), 0x1000).unwrap_err();
    assert_eq!(e, RemapPfnError::CowPartial);
}

/// Models `vmf_insert_mixed()` (mm/memory.c): in a VM_MIXEDMAP VMA an I/O pfn is mapped
/// special, while a driver RAM page is a normal, refcounted mapping.
#[test]
fn mixedmap_maps_io_pfn_special_and_ram_page_refcounted() {
    let mut mm = mm(KernelVersion::V6_12);
    let mut io = DeviceSpec::pfnmap(Pfn(0x2_0000));
    io.kind = DeviceKind::Mixedmap;
    let a = device(&mut mm, BASE, 0x10_000, true, io);
    read(&mut mm, a);
    assert!(mm.lookup(a).unwrap().special);
    assert_eq!(gup::vm_normal_page(&mm, a), None);
    let mut ram = DeviceSpec::pfnmap(Pfn(0));
    ram.kind = DeviceKind::Mixedmap;
    ram.base_pfn = None;
    let b = device(&mut mm, Hva(BASE.0 + G1), 0x10_000, true, ram);
    let r = read(&mut mm, b);
    assert_eq!(r.host_faults, vec![HostFault::Pfnmap]);
    let m = mm.lookup(b).unwrap();
    assert!(!m.special);
    assert_eq!(gup::vm_normal_page(&mm, b), Some(m.pfn));
    let f = mm.folio_info(m.pfn).unwrap();
    assert_eq!(
        (f.refcount, f.mapcount),
        (2, 1),
        "driver reference + mapping"
    );
    ok(&mm);
}

/// Models device-dax on 6.12 (ZONE_DEVICE + devmap): pages idle at refcount 1 (the extra
/// ZONE_DEVICE reference), mapped with devmap (not special) entries that take no
/// reference; `vm_normal_page()` returns the page for a devmap PTE.
#[test]
fn zone_device_6_12_devmap_mapping_takes_no_reference() {
    let mut mm = mm(KernelVersion::V6_12);
    let spec = DeviceSpec::devdax();
    let a = device(&mut mm, BASE, 0x10_000, true, spec);
    read(&mut mm, a);
    let m = mm.lookup(a).unwrap();
    assert!(m.devmap && !m.special);
    let f = mm.folio_info(m.pfn).unwrap();
    assert_eq!(f.zone, Zone::Device);
    assert!(f.reserved);
    assert_eq!((f.refcount, f.mapcount), (1, 0));
    assert_eq!(gup::vm_normal_page(&mm, a), Some(m.pfn));
    ok(&mm);
}

/// Models ZONE_DEVICE from 6.17 (devmap and pfn_t removed): plain refcounting, idle at 0,
/// each mapping a reference and a mapcount, no devmap bit.
#[test]
fn zone_device_6_18_pages_are_refcounted_normally() {
    let mut mm = mm(KernelVersion::V6_18);
    let spec = DeviceSpec::devdax();
    let a = device(&mut mm, BASE, 0x10_000, true, spec);
    let idle = mm
        .folio_info(mm.find_vma(a).unwrap().device().unwrap().base_pfn.unwrap())
        .unwrap();
    assert_eq!(idle.refcount, 0);
    read(&mut mm, a);
    let m = mm.lookup(a).unwrap();
    assert!(!m.devmap && !m.special);
    let f = mm.folio_info(m.pfn).unwrap();
    assert_eq!((f.refcount, f.mapcount), (1, 1));
    ok(&mm);
    mm.munmap(a, 0x10_000, &mut NoNotifier).unwrap();
    assert_eq!(mm.folio_info(m.pfn).unwrap().refcount, 0);
}

/// Models a driver remapping its own RAM pages into a VM_PFNMAP: the entries are special
/// (no reference per mapping) but the pfns have refcounted struct pages (the driver's
/// reference), which KVM 6.12's `kvm_try_get_pfn()` can grab.
#[test]
fn pfnmap_over_driver_ram_pages_is_special_but_refcounted() {
    let mut mm = mm(KernelVersion::V6_12);
    let mut spec = DeviceSpec::pfnmap(Pfn(0));
    spec.base_pfn = None;
    let a = device(&mut mm, BASE, 0x4000, true, spec);
    read(&mut mm, a.add(0x1000));
    let m = mm.lookup(a.add(0x1000)).unwrap();
    assert!(m.special);
    assert!(mm.pfn_valid(m.pfn));
    let f = mm.folio_info(m.pfn).unwrap();
    assert_eq!((f.refcount, f.mapcount, f.reserved), (1, 0, false));
    let base = mm.find_vma(a).unwrap().device().unwrap().base_pfn.unwrap();
    assert_eq!(m.pfn, base.add(1));
    let p = gup::get_page_unless_zero(&mut mm, m.pfn).unwrap();
    gup::put_page(&mut mm, p);
    ok(&mm);
}
