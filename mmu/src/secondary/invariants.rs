//! Reusable checks of the secondary MMU against the host (like vm-memory's `test_bitmap`
//! helpers), and the property test that drives them over random histories.

use super::spte::pages_at;
use super::Kvm;
use crate::host::Mm;
use crate::types::{Gfn, Hva, Pfn};

/// A broken invariant of the secondary MMU.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvariantViolation {
    /// Stale SPTE: gfn {gfn} (hva {hva}) maps pfn {spte_pfn} but the host maps {host_pfn:?}
    #[error(
        "Stale SPTE: gfn {gfn} (hva {hva}) maps pfn {spte_pfn} but the host maps {host_pfn:?}"
    )]
    Stale {
        /// Guest frame.
        gfn: Gfn,
        /// Host address.
        hva: Hva,
        /// pfn in the SPTE.
        spte_pfn: Pfn,
        /// pfn in the host PTE.
        host_pfn: Option<Pfn>,
    },
    /// Writable SPTE for gfn {gfn} over a host entry that does not allow writes
    #[error("Writable SPTE for gfn {gfn} over a host entry that does not allow writes")]
    WritableOverReadOnly {
        /// Guest frame.
        gfn: Gfn,
    },
    /// SPTE for gfn {0} outside every memslot
    #[error("SPTE for gfn {0} outside every memslot")]
    OutsideMemslot(Gfn),
    /// Level counters {counted:?} disagree with the table {actual:?}
    #[error("Level counters {counted:?} disagree with the table {actual:?}")]
    Counts {
        /// Live counters.
        counted: [u64; 3],
        /// Leaves found by a walk.
        actual: [u64; 3],
    },
    /// Dirty logging on, but gfn {gfn} has a {level}-level SPTE (must be 4K) or is writable without being logged
    #[error("Dirty logging on, but gfn {gfn} has a level-{level} SPTE (must be 4K) or is writable without being logged")]
    DirtyLog {
        /// Guest frame.
        gfn: Gfn,
        /// SPTE level number.
        level: u8,
    },
    /// Invalidation left open: in_progress {in_progress}, active {active}
    #[error("Invalidation left open: in_progress {in_progress}, active {active}")]
    Unbalanced {
        /// `mmu_invalidate_in_progress`.
        in_progress: u64,
        /// `mn_active_invalidate_count`.
        active: u64,
    },
}

/// Checks, with no invalidation in flight: every SPTE maps, page by page, the pfn the host
/// maps at the slot's hva; a writable SPTE sits over a writable host entry; SPTEs only
/// exist inside memslots; the per-level counters match the table; under dirty logging
/// SPTEs are 4K and writable ones are logged.
/// Models what `kvm_mmu_notifier_invalidate_range_start()` exists to guarantee.
pub fn check_secondary_mmu(kvm: &Kvm, mm: &Mm) -> Result<(), InvariantViolation> {
    if kvm.inval.in_progress != 0 || kvm.inval.active_invalidate_count != 0 {
        return Err(InvariantViolation::Unbalanced {
            in_progress: kvm.inval.in_progress,
            active: kvm.inval.active_invalidate_count,
        });
    }
    let mut actual = [0u64; 3];
    for (gfn, level, spte) in kvm.tdp.leaves() {
        actual[usize::from(level - 1)] += 1;
        let Some(slot) = kvm.slots.find(gfn) else {
            return Err(InvariantViolation::OutsideMemslot(gfn));
        };
        // Dirty logging: 4K only, and a writable SPTE means the page is in the log
        // (enable write-protects everything; every W transition logs the gfn).
        if slot.dirty_logging()
            && (level != 1 || (spte.is_writable() && !slot.dirty_gfns().contains(&gfn)))
        {
            return Err(InvariantViolation::DirtyLog { gfn, level });
        }
        for k in 0..pages_at(level) {
            let g = gfn.add(k);
            if !slot.contains(g) {
                return Err(InvariantViolation::OutsideMemslot(g));
            }
            let hva = slot.gfn_to_hva(g);
            let m = mm.lookup(hva).filter(|m| m.present && !m.protnone);
            let want = spte.pfn().add(k);
            if m.map(|m| m.pfn) != Some(want) {
                return Err(InvariantViolation::Stale {
                    gfn: g,
                    hva,
                    spte_pfn: want,
                    host_pfn: m.map(|m| m.pfn),
                });
            }
            if spte.is_writable() && !m.is_some_and(|m| m.writable) {
                return Err(InvariantViolation::WritableOverReadOnly { gfn: g });
            }
        }
    }
    let c = kvm.tdp.counts();
    let counted = [c.pages_4k, c.pages_2m, c.pages_1g];
    if counted != actual {
        return Err(InvariantViolation::Counts { counted, actual });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{self, Scenario, Step};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const BASE: u64 = 0x7f00_0000_0000;
    const SIZE: u64 = 8 << 20;

    #[derive(Clone, Debug)]
    enum Op {
        Touch {
            page: u64,
            write: bool,
        },
        Host {
            op: &'static str,
            page: u64,
            pages: u64,
            extra: u8,
        },
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        let pages = SIZE / 4096;
        prop_oneof![
            6 => (0..pages, any::<bool>()).prop_map(|(page, write)| Op::Touch { page, write }),
            3 => (
                prop::sample::select(vec![
                    "munmap", "mprotect", "madvise", "numa-scan", "migrate", "thp-split",
                    "clear-young", "fork", "dirty-log-enable", "dirty-log-get",
                ]),
                0..pages,
                prop::sample::select(vec![1u64, 2, 16, 512, 1024]),
                0u8..4,
            )
                .prop_map(|(op, page, pages, extra)| Op::Host { op, page, pages, extra }),
        ]
    }

    /// A typed step from its op and keys (only the keys the op takes).
    fn spec(op: &str, keys: &[(&str, toml::Value)]) -> Step {
        let mut t = toml::Table::new();
        t.insert("op".into(), op.into());
        for (k, v) in keys {
            t.insert((*k).into(), v.clone());
        }
        Step::from_table(0, t).unwrap()
    }

    fn setup(kernel: &str, thp: bool) -> Scenario {
        let text = format!(
            "kernel = \"{kernel}\"\n[[memslot]]\nid = 0\ngpa = 0\nsize = \"8M\"\nhva = \"{BASE:#x}\"\n\
             [[vma]]\nstart = \"{BASE:#x}\"\nsize = \"8M\"\nprot = \"rw\"\nkind = \"anon\"\nthp = {thp}\n"
        );
        Scenario::from_toml(&text).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Random host operations and guest touches: after every step the SPTEs agree with
        /// the host, and a completed touch leaves an SPTE mapping what the reference model
        /// (the host's pfn at touch time, dropped when a notifier covers it) says.
        #[test]
        fn secondary_mmu_tracks_the_host_over_random_histories(
            ops in prop::collection::vec(op_strategy(), 1..40),
            thp in any::<bool>(),
            kernel in prop::sample::select(vec!["6.12", "6.13", "6.18"]),
        ) {
            let sc = setup(kernel, thp);
            let (mut mm, mut kvm) = scenario::build(&sc).unwrap();
            let mut model: BTreeMap<Gfn, Pfn> = BTreeMap::new();
            for (i, op) in ops.iter().enumerate() {
                match op {
                    Op::Touch { page, write } => {
                        let gpa = toml::Value::Integer((page * 4096) as i64);
                        let s = spec(if *write { "write" } else { "read" }, &[("gpa", gpa)]);
                        let rec = scenario::run_step(&mut mm, &mut kvm, i, &s).unwrap();
                        for n in &rec.notifiers {
                            let lo = (u64::from_str_radix(&n.start[2..], 16).unwrap().clamp(BASE, BASE + SIZE) - BASE) / 4096;
                            let hi = (u64::from_str_radix(&n.end[2..], 16).unwrap().clamp(BASE, BASE + SIZE) - BASE).div_ceil(4096);
                            model.retain(|g, _| g.0 < lo || g.0 >= hi);
                        }
                        if matches!(rec.result.as_str(), "fixed" | "hit" | "spurious") {
                            let m = mm.lookup(Hva(BASE + page * 4096)).expect("host maps a touched page");
                            model.insert(Gfn(*page), m.pfn);
                            let (_, spte) = kvm.spte_at(crate::types::Gpa(page * 4096)).expect("SPTE after a completed touch");
                            prop_assert_eq!(spte.pfn().add(0), spte.pfn());
                            if *write {
                                prop_assert!(spte.is_writable(), "step {}: write completed on a read-only SPTE", i);
                            }
                        } else {
                            prop_assert!(matches!(rec.result.as_str(), "emulate" | "efault" | "retry"), "step {}: {}", i, rec.result);
                        }
                    }
                    Op::Host { op, page, pages, extra } => {
                        let pages = (*pages).min(SIZE / 4096 - page);
                        let start = ("start", toml::Value::Integer((BASE + page * 4096) as i64));
                        let size = ("size", toml::Value::Integer((pages * 4096) as i64));
                        let prot = ("prot", ["none", "r", "rw", "rwx"][usize::from(*extra)].into());
                        let advice = ("advice", ["dontneed", "free", "collapse", "dontneed"][usize::from(*extra)].into());
                        let node = ("node", toml::Value::Integer(i64::from(*extra % 2)));
                        let slot = ("memslot", toml::Value::Integer(0));
                        let s = match *op {
                            "mprotect" => spec(op, &[start, size, prot]),
                            "madvise" => spec(op, &[start, size, advice]),
                            "migrate" => spec(op, &[start, size, node]),
                            "fork" => spec(op, &[]),
                            "dirty-log-enable" | "dirty-log-get" => spec(op, &[slot]),
                            _ => spec(op, &[start, size]),
                        };
                        // Host ops may refuse a range (e.g. nothing mapped): that is fine.
                        if let Ok(rec) = scenario::run_step(&mut mm, &mut kvm, i, &s) {
                            for n in &rec.notifiers {
                                let lo = (u64::from_str_radix(&n.start[2..], 16).unwrap().clamp(BASE, BASE + SIZE) - BASE) / 4096;
                                let hi = (u64::from_str_radix(&n.end[2..], 16).unwrap().clamp(BASE, BASE + SIZE) - BASE).div_ceil(4096);
                                model.retain(|g, _| g.0 < lo || g.0 >= hi);
                            }
                        }
                    }
                }
                if let Err(e) = check_secondary_mmu(&kvm, &mm) {
                    return Err(TestCaseError::fail(format!("step {i} {op:?}: {e}")));
                }
                // The reference model: every gfn it holds is mapped by KVM at that pfn.
                for (g, p) in &model {
                    let (_, spte) = kvm.spte_at(g.gpa()).ok_or_else(|| TestCaseError::fail(format!("step {i}: gfn {g} lost its SPTE without a notifier")))?;
                    let lvl = kvm.tdp.lookup(*g).unwrap().1;
                    let off = g.0 - g.align_down(super::super::spte::level_of(lvl)).0;
                    prop_assert_eq!(spte.pfn().add(off), *p, "step {}: gfn {}", i, g);
                }
            }
        }
    }
}
