//! Property tests over random operation sequences (proptest-state-machine style, without
//! the extra crate): after every step the model's invariants hold (no leaf maps a freed
//! folio, a special entry never yields a struct page, mapcounts match the page tables,
//! refcounts equal mappings + page cache + the GUP references still held), every notifier
//! start has its end; after all GUP references are put, refcounts equal mappings.
//!
//! Limits: one process (+ forked children), fixed VMA layout, sizes of a few MiB.

use super::testutil::*;
use super::*;
use crate::gup::{self, FollFlags, PageRef};
use crate::notifier::NotifierLog;
use crate::types::{Hva, KernelVersion, Level, NodeId, Pfn};
use proptest::prelude::*;
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
enum Op {
    Touch {
        vma: usize,
        page: u64,
        write: bool,
    },
    GupFast {
        vma: usize,
        page: u64,
        write: bool,
        pin: bool,
    },
    GupSlow {
        vma: usize,
        page: u64,
        write: bool,
        numa: bool,
    },
    Put {
        idx: usize,
    },
    Dontneed {
        vma: usize,
        page: u64,
        pages: u64,
    },
    Free {
        page: u64,
        pages: u64,
    },
    Collapse,
    Mprotect {
        vma: usize,
        write: bool,
    },
    NumaScan {
        vma: usize,
    },
    TaskNode {
        node: u16,
    },
    Migrate {
        vma: usize,
        node: u16,
    },
    Split {
        vma: usize,
    },
    Fork,
    ChildWrite {
        page: u64,
        hugetlb: bool,
    },
    ChildExit,
    Revoke {
        vma: usize,
    },
    Age {
        vma: usize,
    },
    Munmap {
        vma: usize,
        page: u64,
        pages: u64,
    },
    Poison {
        vma: usize,
        page: u64,
    },
    Reclaim,
    ClearRefs,
    SplitFolio {
        vma: usize,
    },
}

/// (start, pages) of the fixed layout: anon THP 8M, anon 4M, shmem shared 2M, huge pfnmap
/// 4M, device-dax 2M, private hugetlb 2M-pages 4M, shared hugetlb 2M-pages 4M.
const LAYOUT: [(u64, u64); 7] = [
    (0x7f00_0000_0000, 2048),
    (0x7f00_4000_0000, 1024),
    (0x7f00_8000_0000, 512),
    (0x7f00_c000_0000, 1024),
    (0x7f01_0000_0000, 512),
    (0x7f01_4000_0000, 1024),
    (0x7f01_8000_0000, 1024),
];

/// The hugetlb VMAs of [`LAYOUT`].
const HUGETLB: [usize; 2] = [5, 6];

fn setup(kernel: KernelVersion) -> Mm {
    let mut mm = mm(kernel);
    let mut a = MmapRequest::anon(Hva(LAYOUT[0].0), LAYOUT[0].1 << 12);
    a.hugepage = true;
    mm.mmap(a).unwrap();
    mm.mmap(MmapRequest::anon(Hva(LAYOUT[1].0), LAYOUT[1].1 << 12))
        .unwrap();
    let mut s = MmapRequest::anon(Hva(LAYOUT[2].0), LAYOUT[2].1 << 12);
    s.shared = true;
    mm.mmap(s).unwrap();
    let spec = DeviceSpec::pfnmap(Pfn(0x8_0000)).with_max_level(Level::Pmd2M);
    device(&mut mm, Hva(LAYOUT[3].0), LAYOUT[3].1 << 12, true, spec);
    let dax = DeviceSpec::devdax().with_max_level(Level::Pmd2M);
    device(&mut mm, Hva(LAYOUT[4].0), LAYOUT[4].1 << 12, true, dax);
    for (i, shared) in HUGETLB.into_iter().zip([false, true]) {
        let mut h = MmapRequest::anon(Hva(LAYOUT[i].0), LAYOUT[i].1 << 12);
        h.backing = Backing::Hugetlb(Level::Pmd2M);
        h.shared = shared;
        mm.mmap(h).unwrap();
    }
    mm
}

fn addr(vma: usize, page: u64) -> Hva {
    let (s, n) = LAYOUT[vma % LAYOUT.len()];
    Hva(s + ((page % n) << 12))
}

fn op() -> impl Strategy<Value = Op> {
    let v = 0usize..LAYOUT.len();
    let p = 0u64..2048;
    prop_oneof![
        4 => (v.clone(), p.clone(), any::<bool>()).prop_map(|(vma, page, write)| Op::Touch { vma, page, write }),
        3 => (v.clone(), p.clone(), any::<bool>(), any::<bool>()).prop_map(|(vma, page, write, pin)| Op::GupFast { vma, page, write, pin }),
        3 => (v.clone(), p.clone(), any::<bool>(), any::<bool>()).prop_map(|(vma, page, write, numa)| Op::GupSlow { vma, page, write, numa }),
        2 => (0usize..16).prop_map(|idx| Op::Put { idx }),
        1 => (v.clone(), p.clone(), 1u64..600).prop_map(|(vma, page, pages)| Op::Dontneed { vma, page, pages }),
        1 => (p.clone(), 1u64..600).prop_map(|(page, pages)| Op::Free { page, pages }),
        1 => Just(Op::Collapse),
        1 => (v.clone(), any::<bool>()).prop_map(|(vma, write)| Op::Mprotect { vma, write }),
        2 => v.clone().prop_map(|vma| Op::NumaScan { vma }),
        1 => (0u16..2).prop_map(|node| Op::TaskNode { node }),
        1 => (v.clone(), 0u16..2).prop_map(|(vma, node)| Op::Migrate { vma, node }),
        1 => v.clone().prop_map(|vma| Op::Split { vma }),
        1 => Just(Op::Fork),
        1 => (p.clone(), any::<bool>()).prop_map(|(page, hugetlb)| Op::ChildWrite { page, hugetlb }),
        1 => Just(Op::ChildExit),
        1 => v.clone().prop_map(|vma| Op::Revoke { vma }),
        1 => v.clone().prop_map(|vma| Op::Age { vma }),
        1 => (v.clone(), p.clone(), 1u64..100).prop_map(|(vma, page, pages)| Op::Munmap { vma, page, pages }),
        1 => (v, p).prop_map(|(vma, page)| Op::Poison { vma, page }),
        1 => Just(Op::Reclaim),
        1 => (0usize..LAYOUT.len()).prop_map(|vma| Op::SplitFolio { vma }),
        1 => Just(Op::ClearRefs),
    ]
}

fn held_map(mm: &Mm, refs: &[PageRef]) -> BTreeMap<Pfn, i32> {
    let mut m = BTreeMap::new();
    for r in refs {
        if let Some(f) = mm.folio_info(r.pfn()) {
            if !f.zero && !f.huge_zero {
                *m.entry(f.head).or_insert(0) += 1;
            }
        }
    }
    m
}

fn run(kernel: KernelVersion, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut mm = setup(kernel);
    let mut log = NotifierLog::new();
    let mut refs: Vec<PageRef> = Vec::new();
    let mut child: Option<ChildId> = None;
    for op in ops {
        match op.clone() {
            Op::Touch { vma, page, write } => {
                let _ = mm.user_access(addr(vma, page), write, &mut log);
            }
            Op::GupFast {
                vma,
                page,
                write,
                pin,
            } => {
                let mut f = if write {
                    FollFlags::WRITE
                } else {
                    FollFlags::empty()
                };
                if pin {
                    f |= FollFlags::PIN;
                    if let Ok(r) = gup::get_user_pages_fast(&mut mm, addr(vma, page), f, &mut log) {
                        refs.push(r);
                    }
                } else if let Some(r) = gup::get_user_page_fast_only(&mut mm, addr(vma, page), f) {
                    refs.push(r);
                }
            }
            Op::GupSlow {
                vma,
                page,
                write,
                numa,
            } => {
                let mut f = FollFlags::HWPOISON;
                if write {
                    f |= FollFlags::WRITE;
                }
                if numa {
                    f |= FollFlags::HONOR_NUMA_FAULT;
                }
                if let Ok(r) = gup::get_user_pages_unlocked(&mut mm, addr(vma, page), f, &mut log) {
                    refs.push(r);
                }
            }
            Op::Put { idx } => {
                if !refs.is_empty() {
                    let r = refs.swap_remove(idx % refs.len());
                    gup::put_page(&mut mm, r);
                }
            }
            Op::Dontneed { vma, page, pages } => {
                let a = addr(vma, page);
                let _ = mm.madvise(a, pages << 12, Advice::Dontneed, &mut log);
            }
            Op::Free { page, pages } => {
                let _ = mm.madvise(addr(1, page), pages << 12, Advice::Free, &mut log);
            }
            Op::Collapse => {
                let _ = mm.madvise(addr(1, 0), LAYOUT[1].1 << 12, Advice::Collapse, &mut log);
            }
            Op::Mprotect { vma, write } => {
                let prot = if write { Prot::RW } else { Prot::R };
                let (s, n) = LAYOUT[vma];
                let _ = mm.mprotect(Hva(s), n << 12, prot, &mut log);
            }
            Op::NumaScan { vma } => {
                let (s, n) = LAYOUT[vma];
                let _ = mm.numa_scan(Hva(s), n << 12, &mut log);
            }
            Op::TaskNode { node } => mm.set_task_node(NodeId(node)),
            Op::Migrate { vma, node } => {
                let (s, n) = LAYOUT[vma];
                let _ = mm.migrate(Hva(s), n << 12, NodeId(node), &mut log);
            }
            Op::Split { vma } => {
                let (s, n) = LAYOUT[vma];
                let _ = mm.thp_split(Hva(s), n << 12, &mut log);
            }
            Op::Fork => {
                if child.is_none() {
                    child = mm.fork(&mut log).ok().map(|(c, _)| c);
                }
            }
            Op::ChildWrite { page, hugetlb } => {
                if let Some(c) = child {
                    let vma = if hugetlb { HUGETLB[0] } else { 0 };
                    let _ = mm.child_access(c, addr(vma, page), true);
                }
            }
            Op::ChildExit => {
                if let Some(c) = child.take() {
                    mm.child_exit(c);
                }
            }
            Op::Revoke { vma } => {
                let (s, n) = LAYOUT[vma];
                let _ = mm.unmap_mapping_range(Hva(s), n << 12, &mut log);
            }
            Op::Age { vma } => {
                let (s, n) = LAYOUT[vma];
                let _ = mm.clear_young(Hva(s), n << 12, &mut log);
            }
            Op::Munmap { vma, page, pages } => {
                let _ = mm.munmap(addr(vma, page), pages << 12, &mut log);
            }
            Op::SplitFolio { vma } => {
                let (s, n) = LAYOUT[vma];
                let _ = mm.split_huge_page(Hva(s), n << 12, &mut log);
            }
            Op::Reclaim => {
                let _ = mm.reclaim(Hva(LAYOUT[1].0), LAYOUT[1].1 << 12, &mut log);
            }
            Op::ClearRefs => {
                mm.clear_refs_soft_dirty(&mut log);
            }
            // Divergence: hugetlb memory failure is not modelled.
            Op::Poison { vma, .. } if HUGETLB.contains(&(vma % LAYOUT.len())) => {}
            Op::Poison { vma, page } => {
                if let Some(m) = mm.lookup(addr(vma, page)) {
                    if m.present && !m.special {
                        let _ = mm.memory_failure(m.pfn, &mut log);
                    }
                }
            }
        }
        prop_assert!(log.balanced(), "unbalanced notifier after {:?}", op);
        if let Err(e) = mm.check_invariants(&held_map(&mm, &refs)) {
            return Err(TestCaseError::fail(format!("after {op:?}: {e}")));
        }
    }
    for r in refs.drain(..) {
        gup::put_page(&mut mm, r);
    }
    if let Some(c) = child {
        mm.child_exit(c);
    }
    if let Err(e) = mm.check_invariants(&BTreeMap::new()) {
        return Err(TestCaseError::fail(format!(
            "after releasing all references: {e}"
        )));
    }
    Ok(())
}

fn kernel() -> impl Strategy<Value = KernelVersion> {
    prop_oneof![
        Just(KernelVersion::V6_12),
        Just(KernelVersion::V6_13),
        Just(KernelVersion::V6_18)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Refcounts balance, special entries never yield pages, no leaf maps a freed folio,
    /// notifier starts are matched by ends — over random operation sequences.
    #[test]
    fn random_operation_sequences_keep_the_model_consistent(
        k in kernel(),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        run(k, ops)?;
    }
}
