//! Interleaving explorer: every schedule of a few guest faults racing a few invalidations.
//!
//! A guest fault is split into the steps KVM executes without holding `mmu_lock` in
//! between ([`FaultStep`]): the `mmu_invalidate_seq` snapshot (after `fast_page_fault()`),
//! the lockless pre-check, GUP (with the post-check), taking `mmu_lock` for read, the
//! `is_page_fault_stale()` check, and the install (`kvm_tdp_mmu_map()`, unlock, release).
//! An invalidation is split into ([`InvalStep`]): `invalidate_range_start` (begin,
//! range_add and zap, atomically under `mmu_lock` for write), the host page-table change,
//! and `invalidate_range_end`. The write-locked steps cannot run while a fault holds the
//! read lock — including a GUP step whose host fault sends a notifier (e.g. a COW break):
//! such schedules are counted as infeasible; every other interleaving is run.
//!
//! After every step the explorer checks the secondary-MMU invariant: no SPTE maps a pfn
//! that the host no longer maps at the corresponding address ([`check_no_stale_spte`]).
//!
//! The configuration is a scenario file ([`crate::scenario`]): steps without `race = true`
//! run first, in order, as setup; the `race = true` steps are the racing threads (guest
//! accesses become faults, host operations become invalidations). Keep it small: the
//! number of schedules is the multinomial of the step counts (1 fault + 1 invalidation:
//! 84; 2 + 1: 420 420).
//!
//! # Divergence
//! Schedules are replayed from scratch (a GUP reference cannot be cloned). The host change
//! is the whole host operation, run with its own notifier calls absorbed; KVM receives the
//! step's declared range `[start, start + size)` instead, and the explorer fails if the
//! operation invalidated anything outside it. An operation that emits nothing in some
//! schedule (e.g. a migration refused because GUP holds a reference) still notifies KVM,
//! which is conservative.

use crate::host::Mm;
use crate::notifier::NotifierLog;
use crate::scenario::{self, ModelOptions, Scenario, ScenarioError, ScenarioRunner, Step};
use crate::secondary::fault::{Access, PageFault, PfResult};
use crate::secondary::spte::pages_at;
use crate::secondary::Kvm;
use crate::types::{Gfn, Gpa, Hva, Pfn};
use serde::Serialize;
use std::collections::BTreeSet;

/// The steps of a guest fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultStep {
    /// `fast_page_fault()` and the `mmu_invalidate_seq` snapshot.
    Snapshot,
    /// `mmu_invalidate_retry_gfn_unsafe()` before GUP.
    PreCheck,
    /// `__kvm_faultin_pfn()` and the post-check.
    Gup,
    /// `read_lock(mmu_lock)`.
    Lock,
    /// `is_page_fault_stale()`.
    StaleCheck,
    /// `kvm_tdp_mmu_map()`, unlock, release the page.
    Install,
}

const FAULT_STEPS: [FaultStep; 6] = [
    FaultStep::Snapshot,
    FaultStep::PreCheck,
    FaultStep::Gup,
    FaultStep::Lock,
    FaultStep::StaleCheck,
    FaultStep::Install,
];

/// The steps of an invalidation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InvalStep {
    /// `invalidate_range_start`: begin, range_add, zap, flush.
    Start,
    /// The host page-table change.
    HostChange,
    /// `invalidate_range_end`: seq++, in_progress--.
    End,
}

const INVAL_STEPS: [InvalStep; 3] = [InvalStep::Start, InvalStep::HostChange, InvalStep::End];

/// One step of a schedule, for reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ScheduledStep {
    /// "fault N" or "inval N".
    pub thread: String,
    /// Step name.
    pub step: String,
}

/// An SPTE that maps a pfn the host does not map at that address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StaleSpte {
    /// Guest frame.
    pub gfn: Gfn,
    /// Host address it corresponds to.
    pub hva: Hva,
    /// pfn in the SPTE.
    pub spte_pfn: Pfn,
    /// pfn the host maps there now (None: nothing present).
    pub host_pfn: Option<Pfn>,
}

/// What one schedule ended with.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Outcome {
    /// Result of each fault, in thread order.
    pub faults: Vec<String>,
    /// True when some step left a stale SPTE.
    pub stale: bool,
}

/// What the exploration found.
#[derive(Clone, Debug, Serialize)]
pub struct ExploreReport {
    /// Schedules run to completion.
    pub schedules: u64,
    /// Schedules cut short because a write-locked step met a read-locked fault.
    pub infeasible: u64,
    /// Distinct outcomes.
    pub outcomes: BTreeSet<Outcome>,
    /// The first schedule that produced a stale SPTE, with the stale entry.
    pub first_stale: Option<(Vec<ScheduledStep>, StaleSpte)>,
    /// True when [`ExploreOptions::max_schedules`] stopped the exploration early.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

impl ExploreReport {
    /// True when no schedule produced a stale SPTE.
    pub fn is_clean(&self) -> bool {
        self.first_stale.is_none()
    }
    /// True when some fault returned `result` in some schedule.
    pub fn reaches(&self, result: PfResult) -> bool {
        let name = scenario::result_name(result);
        self.outcomes
            .iter()
            .any(|o| o.faults.iter().any(|f| f == name))
    }
    /// The report as one line of JSON (newline-terminated).
    pub fn json(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// A human-readable summary.
    pub fn render(&self) -> String {
        let mut s = format!(
            "schedules: {} (+{} infeasible under mmu_lock){}\noutcomes:\n",
            self.schedules,
            self.infeasible,
            if self.truncated {
                " - TRUNCATED at max_schedules: shrink the racing steps"
            } else {
                ""
            }
        );
        for o in &self.outcomes {
            s.push_str(&format!(
                "  faults [{}]{}\n",
                o.faults.join(", "),
                if o.stale { "  STALE SPTE" } else { "" }
            ));
        }
        match &self.first_stale {
            None => s.push_str("no stale SPTE in any schedule\n"),
            Some((sched, st)) => {
                s.push_str(&format!(
                    "STALE SPTE: gfn {} (hva {}) maps pfn {} but the host maps {}\nschedule:\n",
                    st.gfn,
                    st.hva,
                    st.spte_pfn,
                    st.host_pfn.map_or("nothing".to_string(), |p| p.to_string())
                ));
                for (i, x) in sched.iter().enumerate() {
                    s.push_str(&format!("  {i:>2}. {:<8} {}\n", x.thread, x.step));
                }
            }
        }
        s
    }
}

/// Explorer knobs.
#[derive(Clone, Copy, Debug)]
pub struct ExploreOptions {
    /// Run KVM with its stale checks (false models a broken KVM).
    pub stale_check: bool,
    /// Stop after this many schedules.
    pub max_schedules: u64,
}

impl Default for ExploreOptions {
    fn default() -> Self {
        ExploreOptions {
            stale_check: true,
            max_schedules: 2_000_000,
        }
    }
}

/// Checks that every SPTE maps what the host maps at the slot's hva (every 4K page of a
/// huge SPTE). Returns the first violation.
pub fn check_no_stale_spte(kvm: &Kvm, mm: &Mm) -> Option<StaleSpte> {
    for (gfn, level, spte) in kvm.tdp.leaves() {
        let Some(slot) = kvm.slots.find(gfn) else {
            continue;
        };
        for k in 0..pages_at(level) {
            let g = gfn.add(k);
            if !slot.contains(g) {
                continue;
            }
            let hva = slot.gfn_to_hva(g);
            let want = spte.pfn().add(k);
            let host = mm.lookup(hva).filter(|m| m.present).map(|m| m.pfn);
            if host != Some(want) {
                return Some(StaleSpte {
                    gfn: g,
                    hva,
                    spte_pfn: want,
                    host_pfn: host,
                });
            }
        }
    }
    None
}

enum Thread {
    Fault {
        gpa: Gpa,
        access: Access,
        pc: usize,
        state: Option<PageFault>,
        holds_lock: bool,
        result: Option<PfResult>,
    },
    Inval {
        step: Step,
        pc: usize,
        range: Option<(Hva, Hva)>,
    },
}

/// Explores every interleaving of the `race = true` steps of a scenario.
pub fn explore_scenario(text: &str, opts: ExploreOptions) -> Result<ExploreReport, ScenarioError> {
    let sc = Scenario::from_toml(text)?;
    explore(&sc, opts)
}

/// [`explore_scenario`] on a parsed scenario.
pub fn explore(sc: &Scenario, opts: ExploreOptions) -> Result<ExploreReport, ScenarioError> {
    let any_race = sc.step.iter().any(Step::race);
    let (setup, racing): (Vec<_>, Vec<_>) = sc
        .step
        .iter()
        .cloned()
        .enumerate()
        .partition(|(_, s)| any_race && !s.race());
    let mut lens = Vec::with_capacity(racing.len());
    for (i, s) in &racing {
        let cannot = |why: &str| ScenarioError::Step {
            step: *i,
            op: s.name().to_string(),
            message: format!("cannot race: {why}"),
        };
        lens.push(match s {
            Step::Read(_) | Step::Write(_) | Step::Exec(_) => FAULT_STEPS.len(),
            Step::Munmap(_)
            | Step::Mprotect(_)
            | Step::Madvise(_)
            | Step::NumaScan(_)
            | Step::Migrate(_)
            | Step::ThpSplit(_)
            | Step::UnmapMappingRange(_) => INVAL_STEPS.len(),
            Step::Fork(_) => {
                return Err(cannot(
                    "fork invalidates every VMA it copies, not a declared range: run it as a setup step",
                ))
            }
            // Steps without `race` never get here; listed to keep the match exhaustive.
            Step::Mremap(_)
            | Step::ClearYoung(_)
            | Step::ClearFlushYoung(_)
            | Step::TestYoung(_)
            | Step::Release(_)
            | Step::Exit(_)
            | Step::Signal(_)
            | Step::MemoryFailure(_)
            | Step::UffdRegister(_)
            | Step::UffdioCopy(_)
            | Step::UffdioZeropage(_)
            | Step::UffdioContinue(_)
            | Step::UffdioWriteprotect(_)
            | Step::FallocatePunchHole(_)
            | Step::KsmScan(_)
            | Step::DirtyLogEnable(_)
            | Step::DirtyLogGet(_)
            | Step::DirtyLogClear(_)
            | Step::MemslotCreate(_)
            | Step::MemslotDelete(_)
            | Step::MemslotMove(_)
            | Step::MemslotFlags(_) => {
                return Err(cannot("use a guest access or an invalidating host op"))
            }
        });
    }
    let mut report = ExploreReport {
        schedules: 0,
        infeasible: 0,
        outcomes: BTreeSet::new(),
        first_stale: None,
        truncated: false,
    };
    let mut remaining = lens.clone();
    let mut sched = Vec::new();
    let total: usize = lens.iter().sum();
    enumerate(
        &mut remaining,
        &mut sched,
        total,
        &mut |order: &[usize]| {
            if report.schedules + report.infeasible >= opts.max_schedules {
                return Ok(());
            }
            run_schedule(sc, &setup, &racing, order, opts, &mut report)
        },
    )?;
    Ok(report)
}

fn enumerate(
    remaining: &mut [usize],
    sched: &mut Vec<usize>,
    total: usize,
    f: &mut dyn FnMut(&[usize]) -> Result<(), ScenarioError>,
) -> Result<(), ScenarioError> {
    if sched.len() == total {
        return f(sched);
    }
    for t in 0..remaining.len() {
        if remaining[t] > 0 {
            remaining[t] -= 1;
            sched.push(t);
            enumerate(remaining, sched, total, f)?;
            sched.pop();
            remaining[t] += 1;
        }
    }
    Ok(())
}

fn run_schedule(
    sc: &Scenario,
    setup: &[(usize, Step)],
    racing: &[(usize, Step)],
    order: &[usize],
    opts: ExploreOptions,
    report: &mut ExploreReport,
) -> Result<(), ScenarioError> {
    let setup_only = Scenario {
        step: setup.iter().map(|(_, s)| s.clone()).collect(),
        ..sc.clone()
    };
    let mut runner = ScenarioRunner::new(&setup_only, &ModelOptions::default())?;
    runner.parts_mut().1.config.stale_check = opts.stale_check;
    for (k, (i, _)) in setup.iter().enumerate() {
        let rec = runner.step(k).map_err(|e| renumber(e, *i))?;
        if let Some(why) = rec.not_modelled {
            return Err(ScenarioError::Step {
                step: *i,
                op: rec.op,
                message: format!("not modelled, so it cannot set up a race: {why}"),
            });
        }
    }
    let (mut mm, mut kvm) = runner.into_parts();
    let mut threads: Vec<Thread> = racing
        .iter()
        .map(|(_, s)| match s.guest_access() {
            Some((access, gpa, _)) => Thread::Fault {
                gpa: Gpa(gpa),
                access,
                pc: 0,
                state: None,
                holds_lock: false,
                result: None,
            },
            None => Thread::Inval {
                step: s.clone(),
                pc: 0,
                range: None,
            },
        })
        .collect();
    let mut trail = Vec::with_capacity(order.len());
    let mut stale: Option<StaleSpte> = None;
    for &t in order {
        let lock_held = threads.iter().any(|th| {
            matches!(
                th,
                Thread::Fault {
                    holds_lock: true,
                    ..
                }
            )
        });
        let (idx, racing_idx) = (t, racing[t].0);
        let th = &mut threads[idx];
        match th {
            Thread::Fault {
                gpa,
                access,
                pc,
                state,
                holds_lock,
                result,
            } => {
                let step = FAULT_STEPS[*pc];
                *pc += 1;
                if result.is_some() {
                    continue; // finished early: the remaining steps are no-ops
                }
                trail.push(ScheduledStep {
                    thread: format!("fault {idx}"),
                    step: format!("{step:?}"),
                });
                let before = kvm.stats().invalidations;
                fault_step(
                    &mut kvm, &mut mm, step, *gpa, *access, state, holds_lock, result,
                );
                // A host fault inside GUP that sent a notifier took mmu_lock for write: not
                // possible while another fault holds it for read (that fault installs first,
                // which another schedule covers).
                if kvm.stats().invalidations != before && lock_held {
                    report.infeasible += 1;
                    return Ok(());
                }
            }
            Thread::Inval { step, pc, range } => {
                let s = INVAL_STEPS[*pc];
                if s != InvalStep::HostChange && lock_held {
                    report.infeasible += 1;
                    return Ok(());
                }
                *pc += 1;
                trail.push(ScheduledStep {
                    thread: format!("inval {idx}"),
                    step: format!("{s:?}"),
                });
                match s {
                    InvalStep::Start => {
                        // KVM is told the declared range; the host change must stay in it.
                        let (lo, len) = step.host_range().unwrap_or((Hva(0), 0));
                        let hi = Hva(lo.0.checked_add(len).ok_or_else(|| ScenarioError::Step {
                            step: racing_idx,
                            op: step.name().to_string(),
                            message: "start + size overflows".into(),
                        })?);
                        *range = Some((lo, hi));
                        kvm.notifier_invalidate_range_start(lo, hi);
                    }
                    InvalStep::HostChange => {
                        let mut sink = NotifierLog::new();
                        let out = scenario::host_op(&mut mm, racing_idx, step, &mut sink)?;
                        if let Some(why) = out.not_modelled {
                            return Err(ScenarioError::Step {
                                step: racing_idx,
                                op: step.name().to_string(),
                                message: format!("cannot race: not modelled: {why}"),
                            });
                        }
                        let (lo, hi) = range.unwrap_or((Hva(0), Hva(0)));
                        if let Some(r) = sink.starts().iter().find(|r| r.start < lo || r.end > hi) {
                            return Err(ScenarioError::Step {
                                step: racing_idx,
                                op: step.name().to_string(),
                                message: format!(
                                    "the host operation invalidated [{}, {}), outside its declared \
                                     range [{lo}, {hi}): widen start/size to cover it",
                                    r.start, r.end
                                ),
                            });
                        }
                    }
                    InvalStep::End => {
                        let (lo, hi) = range.take().unwrap_or((Hva(0), Hva(0)));
                        kvm.notifier_invalidate_range_end(lo, hi);
                    }
                }
            }
        }
        if stale.is_none() {
            stale = check_no_stale_spte(&kvm, &mm);
        }
    }
    if stale.is_none() {
        stale = check_no_stale_spte(&kvm, &mm);
    }
    report.schedules += 1;
    let faults = threads
        .iter()
        .filter_map(|t| match t {
            Thread::Fault { result, .. } => Some(
                result
                    .map(scenario::result_name)
                    .unwrap_or("unfinished")
                    .to_string(),
            ),
            Thread::Inval { .. } => None,
        })
        .collect();
    report.outcomes.insert(Outcome {
        faults,
        stale: stale.is_some(),
    });
    if let Some(st) = stale {
        if report.first_stale.is_none() {
            report.first_stale = Some((trail, st));
        }
    }
    Ok(())
}

/// A setup step's error carries its index in the setup-only scenario: give it back the
/// file's index.
fn renumber(e: ScenarioError, file_index: usize) -> ScenarioError {
    match e {
        ScenarioError::Step { op, message, .. } => ScenarioError::Step {
            step: file_index,
            op,
            message,
        },
        other => other,
    }
}

#[allow(clippy::too_many_arguments)]
fn fault_step(
    kvm: &mut Kvm,
    mm: &mut Mm,
    step: FaultStep,
    gpa: Gpa,
    access: Access,
    state: &mut Option<PageFault>,
    holds_lock: &mut bool,
    result: &mut Option<PfResult>,
) {
    let mut finish = |kvm: &mut Kvm, mm: &mut Mm, st: &mut Option<PageFault>, r: PfResult| {
        if let Some(mut f) = st.take() {
            kvm.fault_finish(&mut f, mm, r);
        }
        *result = Some(r);
    };
    match step {
        FaultStep::Snapshot => {
            let present = kvm
                .tdp
                .lookup(gpa.gfn())
                .is_some_and(|(s, _)| s.is_present() && !s.is_access_tracked());
            match kvm.fault_snapshot(gpa, access, present) {
                Ok(f) => *state = Some(f),
                Err(r) => *result = Some(r),
            }
        }
        FaultStep::PreCheck | FaultStep::Gup | FaultStep::StaleCheck => {
            let Some(f) = state.as_mut() else { return };
            let r = match step {
                FaultStep::PreCheck => kvm.fault_precheck(f, mm),
                FaultStep::Gup => kvm.fault_gup(f, mm),
                _ => kvm.fault_stale_check(f),
            };
            if let Err(r) = r {
                *holds_lock = false;
                finish(kvm, mm, state, r);
            }
        }
        FaultStep::Lock => *holds_lock = true,
        FaultStep::Install => {
            let Some(f) = state.as_mut() else { return };
            let r = kvm.fault_install(f, mm);
            *holds_lock = false;
            finish(kvm, mm, state, r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::run_scenario;

    fn scenario_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/scenarios")
    }

    /// Every `resources/scenarios/*.toml` replays to exactly its `*.expected.jsonl`
    /// (every event, range, result and counter). `FAULTLINE_BLESS=1` rewrites the expected
    /// files; review the diff before committing.
    #[test]
    fn shipped_scenarios_match_expected_output() {
        let bless = std::env::var_os("FAULTLINE_BLESS").is_some();
        let mut names: Vec<_> = std::fs::read_dir(scenario_dir())
            .expect("resources/scenarios exists")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            // Not a scenario: `faultline check`'s list of explained divergences.
            .filter(|p| p.file_name().is_some_and(|n| n != "known-divergences.toml"))
            .collect();
        names.sort();
        assert!(
            bless || names.len() >= 9,
            "expected the canonical traces and seed scenarios"
        );
        let mut failures = Vec::new();
        for p in names {
            let text = std::fs::read_to_string(&p).unwrap();
            let (got, table) = if text.contains("race = true") {
                let r = explore_scenario(&text, Default::default())
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                (r.json(), r.render())
            } else {
                let run = run_scenario(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                (run.json_lines(), run.render_table())
            };
            let exp_path = p.with_extension("expected.jsonl");
            if bless {
                std::fs::write(&exp_path, &got).unwrap();
                println!("{}\n{}", p.display(), table);
                continue;
            }
            let want = std::fs::read_to_string(&exp_path)
                .unwrap_or_else(|_| panic!("missing {}", exp_path.display()));
            if got != want {
                failures.push(format!(
                    "{}:\n--- expected\n{want}--- got\n{got}{}",
                    p.display(),
                    table
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// One 4K anonymous page, populated and writable on the host; the guest writes it while
    /// the host zaps it (MADV_DONTNEED) and the guest faults it back.
    const RACE: &str = r#"
kernel = "6.12"
[[memslot]]
id = 0
gpa = "0x0"
size = "2M"
hva = "0x7f0000000000"
[[vma]]
start = "0x7f0000000000"
size = "2M"
prot = "rw"
kind = "anon"
[[step]]
op = "write"
gpa = "0x1000"
[[step]]
op = "madvise"
advice = "dontneed"
start = "0x7f0000001000"
size = "4K"
[[step]]
op = "write"
gpa = "0x1000"
race = true
[[step]]
op = "madvise"
advice = "dontneed"
start = "0x7f0000001000"
size = "4K"
race = true
"#;

    #[test]
    fn real_protocol_never_leaves_a_stale_spte_and_can_retry() {
        let r = explore_scenario(RACE, ExploreOptions::default()).unwrap();
        assert!(r.is_clean(), "{}", r.render());
        assert!(r.reaches(PfResult::Retry), "{}", r.render());
        assert!(r.reaches(PfResult::Fixed), "{}", r.render());
        assert_eq!(r.schedules + r.infeasible, 84);
    }

    fn trace4_plus(extra: &str) -> String {
        let base = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../resources/scenarios/trace4-concurrent-invalidate.toml"),
        )
        .unwrap();
        base + extra
    }

    /// Two faults (a write and a read of the same page) racing a migration: 420 420
    /// schedules. The write's GUP can break COW and send a notifier while the read holds
    /// mmu_lock; the explorer must treat that as blocked (it once reported a false stale
    /// SPTE here).
    #[test]
    fn two_faults_racing_a_migration_never_leave_a_stale_spte() {
        let r = explore_scenario(
            &trace4_plus("[[step]]\nop = \"read\"\ngpa = \"0x1000\"\nrace = true\n"),
            ExploreOptions::default(),
        )
        .unwrap();
        assert_eq!(r.schedules + r.infeasible, 420_420);
        assert!(r.is_clean(), "{}", r.render());
        assert!(r.reaches(PfResult::Retry));
    }

    #[test]
    fn a_fault_racing_two_invalidations_never_leaves_a_stale_spte() {
        let r = explore_scenario(
            &trace4_plus(
                "[[step]]\nop = \"madvise\"\nadvice = \"dontneed\"\nstart = \"0x7f0000001000\"\n\
                 size = \"4K\"\nrace = true\n",
            ),
            ExploreOptions::default(),
        )
        .unwrap();
        assert_eq!(r.schedules + r.infeasible, 18_480);
        assert!(r.is_clean(), "{}", r.render());
    }

    #[test]
    fn without_the_stale_check_the_explorer_reports_the_racing_schedule() {
        let r = explore_scenario(
            RACE,
            ExploreOptions {
                stale_check: false,
                ..ExploreOptions::default()
            },
        )
        .unwrap();
        let (sched, st) = r.first_stale.clone().expect("a stale SPTE must be found");
        // The bad schedule: GUP takes the old page before the host zaps it, and the
        // install happens after invalidate_range_end.
        let pos = |th: &str, step: &str| {
            sched
                .iter()
                .position(|s| s.thread.starts_with(th) && s.step == step)
                .unwrap()
        };
        assert!(
            pos("fault", "Gup") < pos("inval", "HostChange"),
            "{}",
            r.render()
        );
        assert!(
            pos("fault", "Install") > pos("inval", "Start"),
            "{}",
            r.render()
        );
        assert_ne!(Some(st.spte_pfn), st.host_pfn);
    }
}
