//! The model runner: replays [`Step`]s through [`crate::host`] and [`crate::secondary`], one
//! record per step, all at once ([`run`]) or step by step ([`ScenarioRunner`], what
//! `faultline check` drives against real KVM).

use super::contents::{uffdio_copy_value, Contents, Scope};
use super::outcome::{
    hex, result_name, uffd_event_out, GupOutcome, StepOutcome, StepRecord, StepResult, WokenAccess,
};
use super::step::default_value;
use super::step::{MadviseAdvice, SignalKind};
use super::{memslot_flags, Scenario, ScenarioError, Step, VmaKind};
use crate::host::{Advice, Mm, PendingSignal, ThpMode, UffdMode, UffdModes};
use crate::notifier::{MmuNotifier, NotifierLog};
use crate::secondary::fault::Access;
use crate::secondary::stats::KvmStats;
use crate::secondary::Kvm;
use crate::types::{Gpa, Hva, KernelVersion, Level, NodeId, Pfn, PAGE_SIZE};
use serde::Serialize;
use std::fmt::Write as _;

/// A finished run.
#[derive(Debug)]
pub struct ScenarioRun {
    /// One record per step.
    pub steps: Vec<StepRecord>,
    /// Final counters.
    pub stats: KvmStats,
    /// The final secondary MMU.
    pub kvm: Kvm,
    /// The final host.
    pub mm: Mm,
}

/// Host conditions that override the scenario file's (each when `Some`): what the real
/// host has, read by the checker from sysfs and KVM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HostConditions {
    /// `/sys/kernel/mm/transparent_hugepage/enabled`.
    pub thp: Option<ThpMode>,
    /// `/sys/kernel/mm/transparent_hugepage/use_zero_page`.
    pub huge_zero_page: Option<bool>,
    /// The guest can take async page faults (`kvm_can_do_async_pf()`).
    pub async_pf: Option<bool>,
    /// TDP (EPT/NPT) in use; `false` means shadow paging.
    ///
    /// # Divergence
    /// The model has only the TDP MMU: with `Some(false)` the host-side predictions
    /// (notifiers, host faults, host page state) still hold, but SPTE levels and
    /// writability are TDP's. [`ScenarioRunner::shadow_paging`] reports the setting.
    pub tdp: Option<bool>,
    /// A/D bits in the TDP tables.
    pub ad_bits: Option<bool>,
    /// NUMA nodes.
    pub nodes: Option<u16>,
    /// `kernel.numa_balancing` (NUMA_BALANCING_NORMAL).
    pub numa_balancing: Option<bool>,
}

/// Test-only deliberately wrong rules, to prove the checker catches a wrong model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelBug {
    /// `madvise(MADV_DONTNEED)` sends no mmu-notifier range (KVM keeps its SPTEs).
    SkipDontneedNotifier,
}

/// How to run the model: overrides of the scenario file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ModelOptions {
    /// Kernel rules (overrides the file's `kernel`).
    pub kernel: Option<KernelVersion>,
    /// Host conditions (each overrides the file when `Some`).
    pub conditions: HostConditions,
    /// A deliberately wrong rule (tests of the checker only).
    pub bug: Option<ModelBug>,
}

/// The kind of page mapped at an address, as the host's page flags tell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostPageKind {
    /// The shared zero page.
    Zero,
    /// The huge zero folio.
    HugeZero,
    /// An order-0 anonymous folio.
    Anon,
    /// A PMD-sized (or PTE-mapped large) anonymous folio.
    AnonThp,
    /// A shmem / memfd page-cache folio.
    Shmem,
    /// A regular file's page-cache folio.
    File,
    /// A hugetlb folio (private or shared: kpageflags HUGE comes first).
    Hugetlb,
    /// A KSM page (`ksm-scan` merged it).
    Ksm,
    /// A ZONE_DEVICE page (device-dax).
    Device,
    /// A pfn without `struct page` (a driver's pfnmap / mixedmap pfn).
    Pfnmap,
}

/// The host page state at one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct HostPage {
    /// pfn of the 4K page at the address.
    pub pfn: Pfn,
    /// What it is.
    pub kind: HostPageKind,
    /// Size of the leaf mapping it.
    pub leaf: Level,
    /// `pte_write`.
    pub writable: bool,
    /// `pte_dirty`.
    pub dirty: bool,
    /// `pte_young`.
    pub young: bool,
    /// `pte_uffd_wp`.
    pub uffd_wp: bool,
    /// `pte_soft_dirty`.
    pub soft_dirty: bool,
}

/// Runs a scenario's steps one at a time.
///
/// ```
/// use mmu::scenario::{ModelOptions, Scenario, ScenarioRunner, HostPageKind};
/// use mmu::types::Hva;
/// let sc = Scenario::from_toml(r#"
/// [[memslot]]
/// id = 0
/// gpa = 0
/// size = "2M"
/// hva = "0x7f0000000000"
/// [[vma]]
/// start = "0x7f0000000000"
/// size = "2M"
/// [[step]]
/// op = "read"
/// gpa = "0x1000"
/// "#).unwrap();
/// let mut r = ScenarioRunner::new(&sc, &ModelOptions::default()).unwrap();
/// let rec = r.step(0).unwrap();
/// assert_eq!(rec.result, "fixed");
/// let p = r.host_page(Hva(0x7f00_0000_1000)).unwrap();
/// assert_eq!(p.kind, HostPageKind::Zero);
/// ```
#[derive(Debug)]
pub struct ScenarioRunner {
    scenario: Scenario,
    opts: ModelOptions,
    mm: Mm,
    kvm: Kvm,
    next: usize,
    contents: Contents,
    track_contents: bool,
    /// The last step's outcome; its buffers are reused by the next step.
    out: StepOutcome,
}

impl ScenarioRunner {
    /// Builds the host and the VM (VMAs, memslots), `opts` overriding the file.
    pub fn new(scenario: &Scenario, opts: &ModelOptions) -> Result<Self, ScenarioError> {
        let (mut mm, kvm) = super::build_with(scenario, opts)?;
        mm.frames.log_frees = true;
        Ok(ScenarioRunner {
            scenario: scenario.clone(),
            opts: *opts,
            mm,
            kvm,
            next: 0,
            contents: Contents::default(),
            track_contents: true,
            out: StepOutcome::default(),
        })
    }

    /// Tests: follow page contents over the whole address space at every step (the
    /// reference for the scoped rule of [`contents_scope`]).
    #[cfg(test)]
    pub(crate) fn exhaustive_contents(mut self) -> Self {
        self.contents.exhaustive = true;
        self
    }

    /// Skips step `index` (in order) without running it: what `faultline check` does on both
    /// sides with a step the real host cannot perform, so the steps after it stay comparable.
    pub fn skip(&mut self, index: usize) -> Result<(), ScenarioError> {
        if index != self.next || index >= self.scenario.step.len() {
            return Err(ScenarioError::OutOfOrder {
                asked: index,
                next: self.next,
            });
        }
        self.next += 1;
        Ok(())
    }

    /// Runs step `index`; steps run in order, each once.
    pub fn step(&mut self, index: usize) -> Result<StepRecord, ScenarioError> {
        self.step_outcome(index).map(StepRecord::from)
    }

    /// Runs step `index` like [`ScenarioRunner::step`] and returns its typed outcome, which
    /// stays readable ([`ScenarioRunner::outcome`]) until the next step; nothing is
    /// formatted and the outcome's buffers are reused, so this is the call for long runs
    /// (a replay). `StepRecord::from(outcome)` gives the record.
    pub fn step_outcome(&mut self, index: usize) -> Result<&StepOutcome, ScenarioError> {
        if index != self.next || index >= self.scenario.step.len() {
            return Err(ScenarioError::OutOfOrder {
                asked: index,
                next: self.next,
            });
        }
        self.next += 1;
        self.run_index(index)?;
        Ok(&self.out)
    }

    /// Appends `step` to the scenario and runs it: what live mode (`faultline run --live`)
    /// does with each fault the real kernel raises and each injected host event. Every
    /// step already in the scenario must have run (or been skipped) first.
    pub fn push(&mut self, step: Step) -> Result<StepRecord, ScenarioError> {
        self.push_outcome(step).map(StepRecord::from)
    }

    /// [`ScenarioRunner::push`] returning the typed outcome (see
    /// [`ScenarioRunner::step_outcome`]).
    pub fn push_outcome(&mut self, step: Step) -> Result<&StepOutcome, ScenarioError> {
        if self.next != self.scenario.step.len() {
            return Err(ScenarioError::OutOfOrder {
                asked: self.scenario.step.len(),
                next: self.next,
            });
        }
        let index = self.scenario.step.len();
        self.scenario.step.push(step);
        self.next += 1;
        self.run_index(index)?;
        Ok(&self.out)
    }

    /// Runs `step` after every step of the scenario, like [`ScenarioRunner::push_outcome`],
    /// without keeping a copy of it: what a replay does with the recording's steps, which it
    /// owns already. The step takes the next index but is not added to
    /// [`ScenarioRunner::scenario`], so [`ScenarioRunner::step`] and
    /// [`ScenarioRunner::push`] refuse to run after it (out of order); further steps go
    /// through this call.
    pub fn run_borrowed(&mut self, step: &Step) -> Result<&StepOutcome, ScenarioError> {
        if self.next < self.scenario.step.len() {
            return Err(ScenarioError::OutOfOrder {
                asked: self.scenario.step.len(),
                next: self.next,
            });
        }
        let index = self.next;
        self.next += 1;
        let (parts, out) = self.parts();
        step_with(parts, index, step, out)?;
        Ok(&self.out)
    }

    /// The outcome of the last step run (a default one before the first).
    pub fn outcome(&self) -> &StepOutcome {
        &self.out
    }

    /// Runs `scenario.step[index]` into `self.out`, the runner's parts borrowed apart so
    /// the step is not cloned.
    fn run_index(&mut self, index: usize) -> Result<(), ScenarioError> {
        let (parts, out) = self.parts();
        let scenario: &Scenario = parts.scenario;
        step_with(parts, index, &scenario.step[index], out)
    }

    /// The runner's parts borrowed apart: what a step runs on, and where its outcome goes.
    fn parts(&mut self) -> (Parts<'_>, &mut StepOutcome) {
        let ScenarioRunner {
            scenario,
            opts,
            mm,
            kvm,
            contents,
            track_contents,
            out,
            ..
        } = self;
        let parts = Parts {
            scenario,
            bug: opts.bug,
            mm,
            kvm,
            contents: track_contents.then_some(contents),
        };
        (parts, out)
    }

    /// Turns the page-contents prediction ([`super::contents`]) off or on. It costs a walk of
    /// every mapped page per step, which live mode (where the real pages hold the data, and
    /// a run maps up to all of guest RAM) does not need; off, [`StepRecord::value`] and
    /// [`ScenarioRunner::page_value`] say nothing (`None` / 0), and a `ksm-scan` step (ksmd
    /// compares contents) is "not-modelled". Nothing else depends on it.
    pub fn set_track_contents(&mut self, on: bool) {
        self.track_contents = on;
        // The free log only feeds the contents' free rule.
        self.mm.frames.log_frees = on;
        self.mm.frames.freed_log.clear();
        self.mm.frames.freed_log_overflow = false;
    }

    /// Runs every remaining step.
    pub fn run_all(&mut self) -> Result<Vec<StepRecord>, ScenarioError> {
        (self.next..self.scenario.step.len())
            .map(|i| self.step(i))
            .collect()
    }

    /// The index of the next step to run.
    pub fn next_step(&self) -> usize {
        self.next
    }

    /// The scenario being run.
    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }

    /// The kernel rules in force (options, else the file's).
    pub fn kernel(&self) -> KernelVersion {
        self.mm.kernel()
    }

    /// True when the options say the host uses shadow paging (see [`HostConditions::tdp`]).
    pub fn shadow_paging(&self) -> bool {
        self.opts.conditions.tdp == Some(false)
    }

    /// The host.
    pub fn mm(&self) -> &Mm {
        &self.mm
    }

    /// The secondary MMU.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// Both, mutably (the explorer drives them directly after the setup steps).
    pub fn parts_mut(&mut self) -> (&mut Mm, &mut Kvm) {
        (&mut self.mm, &mut self.kvm)
    }

    /// The model's host page state at `hva`: `None` if unmapped or not present.
    pub fn host_page(&self, hva: Hva) -> Option<HostPage> {
        let m = self.mm.lookup(hva).filter(|m| m.present && !m.protnone)?;
        let file_kind = match self.mm.find_vma(hva).and(self.scenario.vma_at(hva)) {
            Some(v) if v.kind == VmaKind::File => HostPageKind::File,
            Some(v) if v.kind == VmaKind::Hugetlb => HostPageKind::Hugetlb,
            _ => HostPageKind::Shmem,
        };
        let kind = match self.mm.folio_info(m.pfn) {
            None => HostPageKind::Pfnmap,
            Some(f) if f.zero => HostPageKind::Zero,
            Some(f) if f.huge_zero => HostPageKind::HugeZero,
            Some(f) if f.zone == crate::host::folio::Zone::Device => HostPageKind::Device,
            Some(f) if f.hugetlb => HostPageKind::Hugetlb,
            Some(f) if f.ksm => HostPageKind::Ksm,
            Some(f) if f.anon && f.order > 0 => HostPageKind::AnonThp,
            Some(f) if f.anon => HostPageKind::Anon,
            Some(_) if m.special => HostPageKind::Pfnmap,
            Some(_) => file_kind,
        };
        Some(HostPage {
            pfn: m.pfn,
            kind,
            leaf: m.level,
            writable: m.writable,
            dirty: m.dirty,
            young: m.young,
            uffd_wp: m.entry.is_uffd_wp(),
            soft_dirty: m.entry.is_soft_dirty(),
        })
    }

    /// The model's prediction of the first 8 bytes of the page mapped at `hva` (0 for a page
    /// never written); `None` when nothing is mapped there.
    pub fn page_value(&self, hva: Hva) -> Option<u64> {
        self.contents.read(&self.mm, hva)
    }

    /// The final counters.
    pub fn stats(&self) -> KvmStats {
        self.kvm.stats()
    }

    /// Ends the run, giving back the host and the VM.
    pub fn into_parts(self) -> (Mm, Kvm) {
        (self.mm, self.kvm)
    }
}

/// The hugetlb VMA (as declared in `sc`) that `[start, start + len)` touches, if any.
fn hugetlb_touched(sc: &Scenario, start: Hva, len: u64) -> Option<&super::VmaSpec> {
    let end = start.0.saturating_add(len.max(1));
    sc.vma
        .iter()
        .find(|v| v.kind == VmaKind::Hugetlb && v.start.0 < end && start.0 < v.end().0)
}

/// The parts of a [`ScenarioRunner`] a step uses, borrowed apart from its scenario.
struct Parts<'a> {
    scenario: &'a Scenario,
    bug: Option<ModelBug>,
    mm: &'a mut Mm,
    kvm: &'a mut Kvm,
    /// The page contents, when tracked.
    contents: Option<&'a mut Contents>,
}

/// Runs a whole scenario (what `faultline sim` prints).
pub(super) fn run(sc: &Scenario, opts: &ModelOptions) -> Result<ScenarioRun, ScenarioError> {
    let mut r = ScenarioRunner::new(sc, opts)?;
    let steps = r.run_all()?;
    let stats = r.stats();
    let (mm, kvm) = r.into_parts();
    Ok(ScenarioRun {
        steps,
        stats,
        kvm,
        mm,
    })
}

fn step_err(step: usize, op: &str, message: impl Into<String>) -> ScenarioError {
    ScenarioError::Step {
        step,
        op: op.to_string(),
        message: message.into(),
    }
}

/// Why a step on a hugetlb VMA is not modelled, for the steps whose hugetlb rules the model
/// lacks (it has `hugetlb_fault()`, fork, munmap, mprotect, MADV_DONTNEED and aging).
fn hugetlb_not_modelled(st: &Step) -> Option<&'static str> {
    Some(match st {
        Step::Mremap(_) => "mremap of hugetlb (mremap_to()/move_hugetlb_page_tables(), mm/mremap.c) is not modelled",
        Step::Migrate(_) => "hugetlb migration (migrate_hugetlbs(), mm/migrate.c) is not modelled",
        Step::MemoryFailure(_) => "hugetlb memory failure (try_memory_failure_hugetlb(), mm/memory-failure.c) is not modelled",
        Step::UffdRegister(_)
        | Step::UffdioCopy(_)
        | Step::UffdioZeropage(_)
        | Step::UffdioContinue(_)
        | Step::UffdioWriteprotect(_) => "userfaultfd on hugetlb (mfill_atomic_hugetlb(), mm/userfaultfd.c) is not modelled",
        Step::FallocatePunchHole(_) => "hugetlbfs punch-hole (hugetlbfs_punch_hole(), fs/hugetlbfs/inode.c) is not modelled",
        _ => return None,
    })
}

fn step_with(
    r: Parts<'_>,
    i: usize,
    st: &Step,
    out: &mut StepOutcome,
) -> Result<(), ScenarioError> {
    out.reset(i, st);
    if let Some(gpa) = out.gpa {
        out.hva = r
            .kvm
            .slots
            .find(gpa.gfn())
            .map(|s| Hva(s.gfn_to_hva(gpa.gfn()).0 + (gpa.0 & (PAGE_SIZE - 1))));
    }
    let touched = out
        .hva
        .map(|h| (h, 1))
        .or(out.range)
        .and_then(|(s, l)| hugetlb_touched(r.scenario, s, l));
    if let Some(why) = touched.and(hugetlb_not_modelled(st)) {
        r.kvm.clear_trace();
        out.result = StepResult::NotModelled;
        out.not_modelled = Some(why.into());
        return Ok(());
    }
    let Some(contents) = r.contents else {
        return run_step_impl(r.mm, r.kvm, i, st, r.bug, None, out);
    };
    let before = contents.snapshot(r.mm, contents_scope(r.mm, st, out.hva));
    r.mm.frames.freed_log.clear();
    r.mm.frames.freed_log_overflow = false;
    // ksmd compares page contents, which only the runner knows (the first 8 bytes; the
    // rest of every page the guest wrote is zero).
    {
        let contents = &*contents;
        let same = |a: Pfn, b: Pfn| contents.value_of(a) == contents.value_of(b);
        run_step_impl(r.mm, r.kvm, i, st, r.bug, Some(&same), out)?;
    }
    contents.after_step(r.mm, &before);
    let completed = out.result.completed();
    match (st, out.hva) {
        (Step::Write(w), Some(hva)) if completed => {
            let v = w.value.map_or_else(|| default_value(w.gpa.0), |n| n.0);
            contents.write(r.mm, hva, v);
            out.value = Some(v);
        }
        (Step::Read(_) | Step::Exec(_), Some(hva)) if completed => {
            out.value = contents.read(r.mm, hva);
        }
        (Step::UffdioCopy(a), _) => {
            contents.write(r.mm, Hva(a.start.0), uffdio_copy_value(a.start.0));
        }
        _ => {}
    }
    if let Some(w) = out.woken.as_mut() {
        if let (true, Some(hva)) = (
            matches!(w.result.as_str(), "hit" | "fixed" | "spurious"),
            w.hva,
        ) {
            match (w.access, r.scenario.step.get(w.step)) {
                (Some(Access::Write), Some(Step::Write(ws))) => {
                    let v = ws.value.map_or_else(|| default_value(ws.gpa.0), |n| n.0);
                    contents.write(r.mm, hva, v);
                    w.value = Some(v);
                }
                _ => w.value = contents.read(r.mm, hva),
            }
        }
    }
    Ok(())
}

/// The part of the address space where step `st` can move a present page to another pfn
/// (so page contents must be followed there).
///
/// A guest access faults at one hva: a page not present there is only filled
/// (`do_anonymous_page()`, `do_huge_pmd_anonymous_page()` need a none entry, fault-around
/// fills none PTEs); an order-0 page is copied or reused in place (`wp_page_copy()`); a
/// PMD/PUD leaf is split, copied or migrated within itself (`do_huge_pmd_wp_page()`,
/// `do_huge_zero_wp_pmd()`, `do_huge_pmd_numa_page()`); a PTE-mapped large folio may be
/// migrated whole (`do_numa_page()`) wherever it is mapped, so anything goes. Range
/// operations that only zap, protect, age, split or collapse inside their range
/// (`madvise()` rounds collapse to whole PMDs inside it) act within the range rounded out
/// to 2M; every other host step (mremap, migrate, unmap_mapping_range, fork, ...) anywhere.
#[allow(clippy::unnecessary_map_or)] // Option::is_none_or needs Rust 1.82; rust-version is 1.80.
fn contents_scope(mm: &Mm, st: &Step, hva: Option<Hva>) -> Scope {
    const M2: u64 = 2 << 20;
    if st.guest_access().is_some() {
        let Some(hva) = hva else {
            return Scope::Nothing;
        };
        let Some(m) = mm.lookup(hva).filter(|m| m.present) else {
            return Scope::Nothing;
        };
        return match m.level {
            Level::Pte4K if mm.folio_info(m.pfn).map_or(true, |f| f.order == 0) => {
                let p = hva.0 & !(PAGE_SIZE - 1);
                Scope::Range(p, p + PAGE_SIZE)
            }
            Level::Pte4K => Scope::All,
            l => Scope::Range(m.leaf_start.0, m.leaf_start.0.saturating_add(l.size())),
        };
    }
    match st {
        Step::Munmap(_)
        | Step::Mprotect(_)
        | Step::Madvise(_)
        | Step::NumaScan(_)
        | Step::ThpSplit(_)
        | Step::ClearYoung(_)
        | Step::ClearFlushYoung(_)
        | Step::TestYoung(_)
        | Step::UffdioWriteprotect(_)
        | Step::UffdioCopy(_)
        | Step::UffdioZeropage(_) => match st.host_range() {
            Some((s, len)) => Scope::Range(
                s.0 & !(M2 - 1),
                s.0.saturating_add(len).saturating_add(M2 - 1) & !(M2 - 1),
            ),
            None => Scope::All,
        },
        _ => Scope::All,
    }
}

/// Runs one step on `mm` and `kvm` and records it (no hugetlb check, no model bug).
pub fn run_step(
    mm: &mut Mm,
    kvm: &mut Kvm,
    i: usize,
    st: &Step,
) -> Result<StepRecord, ScenarioError> {
    let mut out = StepOutcome::new(i, st);
    run_step_impl(mm, kvm, i, st, None, None, &mut out)?;
    Ok(StepRecord::from(&out))
}

fn run_step_impl(
    mm: &mut Mm,
    kvm: &mut Kvm,
    i: usize,
    st: &Step,
    bug: Option<ModelBug>,
    same_page: Option<&dyn Fn(Pfn, Pfn) -> bool>,
    rec: &mut StepOutcome,
) -> Result<(), ScenarioError> {
    let op = st.name();
    kvm.clear_trace();
    let e = |m: String| step_err(i, op, m);
    let mut not_modelled: Option<String> = None;
    match st {
        Step::Read(_) | Step::Write(_) | Step::Exec(_) => {
            let (access, gpa, vcpu) = st.guest_access().unwrap_or((Access::Read, 0, None));
            if let Some(b) = &kvm.uffd_blocked {
                if b.vcpu == vcpu.unwrap_or(0) {
                    return Err(e(format!(
                        "vCPU {} is still asleep in handle_userfault() since step {} (gpa {}); resolve the fault (uffdio-copy, -zeropage, -continue, -writeprotect with wp = false) before its next access",
                        b.vcpu,
                        b.step.map_or("?".into(), |s| s.to_string()),
                        hex(b.gpa.0)
                    )));
                }
                rec.result = StepResult::NotModelled;
                rec.not_modelled =
                    Some("two vCPUs asleep in handle_userfault() at once are not modelled".into());
                return Ok(());
            }
            let gpa = Gpa(gpa);
            let r = kvm.guest_access(mm, gpa, access);
            if let Some(b) = kvm.uffd_blocked.as_mut() {
                b.step = Some(i);
                b.vcpu = vcpu.unwrap_or(0);
                rec.uffd_event = Some(uffd_event_out(b));
            }
            rec.gpa = Some(gpa);
            rec.result = StepResult::Fault(r.result);
            rec.retries = r.retries;
            rec.gup = r.gup.map(|g| GupOutcome {
                path: g.path,
                flags: g.flags,
            });
            rec.host_faults = r.host_faults;
            if r.async_pf > 0 {
                rec.async_pf = Some(r.async_pf);
            }
            if let Some((l, s)) = kvm.spte_at(gpa) {
                rec.level = Some(l);
                rec.writable = Some(s.is_writable());
            }
        }
        Step::Munmap(_)
        | Step::Mprotect(_)
        | Step::Madvise(_)
        | Step::Mremap(_)
        | Step::NumaScan(_)
        | Step::Migrate(_)
        | Step::ThpSplit(_)
        | Step::UnmapMappingRange(_)
        | Step::ClearYoung(_)
        | Step::ClearFlushYoung(_)
        | Step::TestYoung(_)
        | Step::Fork(_)
        | Step::UffdioWriteprotect(_)
        | Step::FallocatePunchHole(_) => {
            let out = if bug == Some(ModelBug::SkipDontneedNotifier)
                && matches!(st, Step::Madvise(m) if m.advice == MadviseAdvice::Dontneed)
            {
                // The deliberate bug: the host zaps, KVM is never told.
                host_op(mm, i, st, &mut NotifierLog::new())?
            } else {
                host_op(mm, i, st, kvm)?
            };
            rec.young = out.young;
            not_modelled = out.not_modelled;
            if let Step::UffdioWriteprotect(u) = st {
                // Un-protecting wakes the waiters (userfaultfd_writeprotect()).
                if !u.wp {
                    rec.woken = wake(mm, kvm, st);
                }
            }
        }
        Step::KsmScan(_) => match same_page {
            Some(same) => {
                mm.ksm_scan(same, kvm);
            }
            None => {
                not_modelled =
                    Some("KSM needs page contents: run the scenario with ScenarioRunner".into())
            }
        },
        Step::Release(_) => {
            kvm.release();
        }
        Step::Exit(_) => {
            mm.exit(kvm);
        }
        Step::UffdRegister(u) => {
            let mut mode = UffdModes::default();
            for m in &u.mode {
                match m {
                    UffdMode::Missing => mode.missing = true,
                    UffdMode::Wp => mode.wp = true,
                    UffdMode::Minor => mode.minor = true,
                }
            }
            mm.uffd_register(Hva(u.start.0), u.size.0, mode)
                .map_err(|x| e(x.to_string()))?;
        }
        Step::UffdioCopy(a) => {
            mm.uffdio_copy(Hva(a.start.0), false)
                .map_err(|x| e(x.to_string()))?;
            rec.woken = wake(mm, kvm, st);
        }
        Step::UffdioZeropage(a) => {
            mm.uffdio_zeropage(Hva(a.start.0))
                .map_err(|x| e(x.to_string()))?;
            rec.woken = wake(mm, kvm, st);
        }
        Step::UffdioContinue(u) => {
            mm.uffdio_continue(Hva(u.start.0), u.size.map_or(PAGE_SIZE, |n| n.0))
                .map_err(|x| e(x.to_string()))?;
            rec.woken = wake(mm, kvm, st);
        }
        Step::MemoryFailure(a) => {
            let hva = Hva(a.start.0);
            let m = mm
                .lookup(hva)
                .filter(|m| m.present)
                .ok_or_else(|| e(format!("nothing is mapped at {hva} to poison")))?;
            mm.memory_failure(m.pfn, kvm)
                .map_err(|x| e(x.to_string()))?;
        }
        Step::Signal(s) => {
            mm.set_pending_signal(match s.signal {
                SignalKind::None => PendingSignal::None,
                SignalKind::Pending => PendingSignal::NonFatal,
                SignalKind::Fatal => PendingSignal::Fatal,
            });
        }
        Step::DirtyLogEnable(s) => {
            kvm.dirty_log_enable(s.memslot)
                .map_err(|x| e(x.to_string()))?;
        }
        Step::DirtyLogGet(s) => {
            let d = kvm.dirty_log_get(s.memslot).map_err(|x| e(x.to_string()))?;
            rec.dirty = Some(d);
        }
        Step::DirtyLogClear(s) => {
            let d = kvm
                .dirty_log_clear(s.memslot)
                .map_err(|x| e(x.to_string()))?;
            rec.dirty = Some(d);
        }
        Step::MemslotCreate(m) => {
            kvm.create_memslot(
                m.id,
                Gpa(m.gpa.0),
                m.size.0,
                Hva(m.hva.0),
                memslot_flags(&m.flags),
            )
            .map_err(|x| e(x.to_string()))?;
        }
        Step::MemslotDelete(s) => {
            kvm.delete_memslot(s.memslot)
                .map_err(|x| e(x.to_string()))?;
        }
        Step::MemslotMove(m) => {
            kvm.move_memslot(m.memslot, Gpa(m.gpa.0))
                .map_err(|x| e(x.to_string()))?;
        }
        Step::MemslotFlags(f) => {
            let new = memslot_flags(&f.flags);
            let old = kvm
                .slots
                .by_id(f.memslot)
                .map(|s| s.flags)
                .ok_or_else(|| e(format!("no memslot {}: create it first", f.memslot)))?;
            if old.readonly != new.readonly {
                // kvm_set_memory_region(): "(mem->flags ^ old->flags) & KVM_MEM_READONLY"
                // is -EINVAL.
                return Err(e(format!(
                    "KVM refuses to change KVM_MEM_READONLY of an existing memslot (EINVAL): \
                     delete memslot {} and create it again",
                    f.memslot
                )));
            }
            if new.dirty_log && !old.dirty_log {
                kvm.dirty_log_enable(f.memslot)
                    .map_err(|x| e(x.to_string()))?;
            } else if !new.dirty_log && old.dirty_log {
                not_modelled = Some(
                    "turning dirty logging off is not modelled (kvm_mmu_slot_apply_flags() → \
                     kvm_mmu_recover_huge_pages())"
                        .into(),
                );
            }
        }
    }
    kvm.take_trace_into(&mut rec.notifiers, &mut rec.zapped);
    if let Some(reason) = not_modelled {
        rec.result = StepResult::NotModelled;
        rec.not_modelled = Some(reason);
    }
    Ok(())
}

/// What a host operation step returned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostOpOutcome {
    /// The young answer of aging operations.
    pub young: Option<bool>,
    /// Set when the model cannot perform the operation: why.
    pub not_modelled: Option<String>,
}

fn not_modelled(reason: &str) -> HostOpOutcome {
    HostOpOutcome {
        young: None,
        not_modelled: Some(reason.to_string()),
    }
}

/// Runs a host operation step with `notifier` as the subscriber. Steps that are not host
/// operations of the address space (guest accesses, memslot and dirty-log steps, uffd
/// registration, signals, release/exit) are an error.
pub fn host_op(
    mm: &mut Mm,
    i: usize,
    st: &Step,
    notifier: &mut dyn MmuNotifier,
) -> Result<HostOpOutcome, ScenarioError> {
    let op = st.name();
    let e = |m: String| step_err(i, op, m);
    let kvm = notifier;
    let mut out = HostOpOutcome::default();
    match st {
        Step::Munmap(r) => {
            mm.munmap(Hva(r.start.0), r.size.0, kvm)
                .map_err(|x| e(x.to_string()))?;
        }
        Step::Mprotect(m) => {
            mm.mprotect(Hva(m.start.0), m.size.0, m.prot, kvm)
                .map_err(|x| e(x.to_string()))?;
        }
        Step::Madvise(m) => {
            let (s, z) = (Hva(m.start.0), m.size.0);
            let advice = match m.advice {
                MadviseAdvice::Dontneed => Some(Advice::Dontneed),
                MadviseAdvice::Free => Some(Advice::Free),
                MadviseAdvice::Hugepage => Some(Advice::Hugepage),
                MadviseAdvice::Nohugepage => Some(Advice::Nohugepage),
                MadviseAdvice::Collapse => Some(Advice::Collapse),
                MadviseAdvice::Pageout => {
                    return Ok(not_modelled(
                        "MADV_PAGEOUT is not modelled: reclaim_pages() swaps anonymous and \
                         writes back file folios; the model has no swap or writeback",
                    ))
                }
                MadviseAdvice::Cold => {
                    return match mm.madvise_cold(s, z).map_err(|x| e(x.to_string()))? {
                        crate::host::ColdOutcome::Done(_) => Ok(out),
                        crate::host::ColdOutcome::NeedsSplit(why) => Ok(not_modelled(&format!(
                            "MADV_COLD of part of a large folio is not modelled: {why}"
                        ))),
                    };
                }
                MadviseAdvice::PopulateRead | MadviseAdvice::PopulateWrite => None,
                MadviseAdvice::Mergeable | MadviseAdvice::Unmergeable => {
                    let on = m.advice == MadviseAdvice::Mergeable;
                    mm.ksm_madvise(s, z, on).map_err(|x| e(x.to_string()))?;
                    return Ok(out);
                }
            };
            match advice {
                Some(a) => {
                    mm.madvise(s, z, a, kvm).map_err(|x| e(x.to_string()))?;
                }
                None => {
                    // madvise_populate() (mm/madvise.c): faultin_page_range() page by page,
                    // each a GUP fault (FOLL_WRITE for populate-write) that stops at the first
                    // error; pages already mapped suitably take no fault.
                    let write = m.advice == MadviseAdvice::PopulateWrite;
                    let end =
                        s.0.checked_add(z)
                            .ok_or_else(|| e("start + size overflows".into()))?;
                    let mut a = s.0 & !(PAGE_SIZE - 1);
                    while a < end {
                        mm.user_access(Hva(a), write, kvm)
                            .map_err(|x| e(format!("madvise_populate at {a:#x}: {x}")))?;
                        a += PAGE_SIZE;
                    }
                }
            }
        }
        Step::Mremap(m) => {
            let new_len = m.new_size.map_or(m.size.0, |n| n.0);
            // mremap_to() (mm/mremap.c): MREMAP_FIXED first unmaps whatever is mapped at the
            // target (do_munmap()).
            let (ns, ne) = (m.new_start.0, m.new_start.0.saturating_add(new_len));
            if mm.vmas().any(|v| v.start.0 < ne && ns < v.end.0) {
                mm.munmap(Hva(ns), new_len, kvm)
                    .map_err(|x| e(format!("unmapping the mremap target: {x}")))?;
            }
            mm.mremap(
                Hva(m.start.0),
                m.size.0,
                new_len,
                Some(Hva(m.new_start.0)),
                kvm,
            )
            .map_err(|x| e(x.to_string()))?;
        }
        Step::NumaScan(r) => {
            mm.numa_scan(Hva(r.start.0), r.size.0, kvm)
                .map_err(|x| e(x.to_string()))?;
        }
        Step::Migrate(m) => {
            mm.migrate(Hva(m.start.0), m.size.0, NodeId(m.node), kvm)
                .map_err(|x| e(x.to_string()))?;
        }
        Step::ThpSplit(r) => {
            mm.thp_split(Hva(r.start.0), r.size.0, kvm)
                .map_err(|x| e(x.to_string()))?;
        }
        Step::UnmapMappingRange(r) => {
            mm.unmap_mapping_range(Hva(r.start.0), r.size.0, kvm)
                .map_err(|x| e(x.to_string()))?;
        }
        Step::ClearYoung(r) => {
            out.young = mm
                .clear_young(Hva(r.start.0), r.size.0, kvm)
                .map_err(|x| e(x.to_string()))?
                .young;
        }
        Step::ClearFlushYoung(r) => {
            out.young = mm
                .clear_flush_young(Hva(r.start.0), r.size.0, kvm)
                .map_err(|x| e(x.to_string()))?
                .young;
        }
        Step::TestYoung(r) => {
            out.young = mm
                .test_young(Hva(r.start.0), r.size.0, kvm)
                .map_err(|x| e(x.to_string()))?
                .young;
        }
        Step::Fork(_) => {
            mm.fork(kvm).map_err(|x| e(x.to_string()))?;
        }
        Step::UffdioWriteprotect(u) => {
            mm.uffdio_writeprotect(Hva(u.start.0), u.size.0, u.wp, kvm)
                .map_err(|x| e(x.to_string()))?;
        }
        Step::FallocatePunchHole(_) => {
            return Ok(not_modelled(
                "fallocate(PUNCH_HOLE) is not modelled: shmem_fallocate() → \
                 shmem_truncate_range() removes page-cache folios, and the model's page \
                 cache cannot drop folios",
            ))
        }
        Step::KsmScan(_) => return Ok(not_modelled("KSM is not modelled (ksm_do_scan())")),
        Step::Read(_)
        | Step::Write(_)
        | Step::Exec(_)
        | Step::Release(_)
        | Step::Exit(_)
        | Step::Signal(_)
        | Step::MemoryFailure(_)
        | Step::UffdRegister(_)
        | Step::UffdioCopy(_)
        | Step::UffdioZeropage(_)
        | Step::UffdioContinue(_)
        | Step::DirtyLogEnable(_)
        | Step::DirtyLogGet(_)
        | Step::DirtyLogClear(_)
        | Step::MemslotCreate(_)
        | Step::MemslotDelete(_)
        | Step::MemslotMove(_)
        | Step::MemslotFlags(_) => return Err(step_err(i, op, "not a host operation")),
    }
    Ok(out)
}

/// Wakes a vCPU asleep in `handle_userfault()` on the range of the resolving ioctl `st`
/// (`Kvm::uffd_wake`), and records how its access ended.
fn wake(mm: &mut Mm, kvm: &mut Kvm, st: &Step) -> Option<WokenAccess> {
    let (start, len) = st.host_range()?;
    let b = kvm.uffd_blocked.clone()?;
    let r = kvm.uffd_wake(mm, start, len)?;
    let hva = kvm
        .slots
        .find(b.gpa.gfn())
        .map(|s| Hva(s.gfn_to_hva(b.gpa.gfn()).0 + (b.gpa.0 & (PAGE_SIZE - 1))));
    let spte = kvm.spte_at(b.gpa);
    Some(WokenAccess {
        step: b.step.unwrap_or(0),
        gpa: hex(b.gpa.0),
        result: result_name(r.result).to_string(),
        retries: r.retries,
        level: spte.map(|(l, _)| l),
        writable: spte.map(|(_, s)| s.is_writable()),
        host_faults: r.host_faults.iter().map(|h| h.name()).collect(),
        access: Some(b.access),
        hva,
        value: None,
    })
}

impl ScenarioRun {
    /// One JSON object per step, then `{"stats": {...}}`, newline-terminated.
    pub fn json_lines(&self) -> String {
        json_lines(self)
    }

    /// A human-readable table.
    pub fn render_table(&self) -> String {
        render_table(self)
    }
}

/// See [`ScenarioRun::json_lines`].
pub fn json_lines(run: &ScenarioRun) -> String {
    let mut out = String::new();
    for s in &run.steps {
        out.push_str(&serde_json::to_string(s).unwrap_or_default());
        out.push('\n');
    }
    let stats = serde_json::json!({ "stats": run.stats });
    out.push_str(&stats.to_string());
    out.push('\n');
    out
}

/// See [`ScenarioRun::render_table`].
pub fn render_table(run: &ScenarioRun) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>4}  {:<20} {:<16} {:<15} {:>3} {:>3} {:<2} {:<9} {:<28} notifiers / zapped",
        "step", "op", "target", "result", "rty", "lvl", "w", "gup", "host faults"
    );
    for s in &run.steps {
        let target = s.gpa.clone().unwrap_or_default();
        let lvl = s.level.map(|l| l.name()).unwrap_or("-");
        let w = match s.writable {
            Some(true) => "W",
            Some(false) => "RO",
            None => "-",
        };
        let gup = s.gup.as_ref().map(|g| g.path.as_str()).unwrap_or("-");
        let hf = if s.host_faults.is_empty() {
            "-".to_string()
        } else {
            s.host_faults.join(",")
        };
        let mut ev: Vec<String> = s
            .notifiers
            .iter()
            .map(|n| {
                format!(
                    "{} [{}, {})",
                    serde_json::to_string(&n.event)
                        .unwrap_or_default()
                        .trim_matches('"'),
                    n.start,
                    n.end
                )
            })
            .collect();
        ev.extend(
            s.zapped
                .iter()
                .map(|z| format!("zap {} gfn [{}, {})", z.level, z.gfn_start, z.gfn_end)),
        );
        if let Some(y) = s.young {
            ev.push(format!("young={y}"));
        }
        if let Some(d) = &s.dirty {
            ev.push(format!("dirty={}", d.join(",")));
        }
        let _ = writeln!(
            out,
            "{:>4}  {:<20} {:<16} {:<15} {:>3} {:>3} {:<2} {:<9} {:<28} {}",
            s.step,
            s.op,
            target,
            s.result,
            s.retries,
            lvl,
            w,
            gup,
            hf,
            ev.join("; ")
        );
    }
    let st = &run.stats;
    let _ = writeln!(
        out,
        "faults: fixed {} spurious {} retry {} emulate {} mmio {} efault {} fast {} | sptes 4K {} 2M {} 1G {} | zaps {} tlb flushes {} | gup fast {} slow {} remapped {}",
        st.faults.fixed,
        st.faults.spurious,
        st.faults.retry,
        st.faults.emulate,
        st.faults.mmio,
        st.faults.efault,
        st.faults.fast,
        st.sptes.pages_4k,
        st.sptes.pages_2m,
        st.sptes.pages_1g,
        st.zaps,
        st.tlb_flushes,
        st.gup.fast,
        st.gup.slow,
        st.gup.remapped
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[[memslot]]
id = 0
gpa = 0
size = "4M"
hva = "0x7f0000000000"
[[vma]]
start = "0x7f0000000000"
size = "4M"
"#;

    fn runner(steps: &str, opts: ModelOptions) -> ScenarioRunner {
        let sc = Scenario::from_toml(&format!("{BASE}{steps}")).unwrap();
        ScenarioRunner::new(&sc, &opts).unwrap()
    }

    fn step(op: &str, keys: &str) -> String {
        format!("[[step]]\nop = \"{op}\"\n{keys}\n")
    }

    const PAGE: Hva = Hva(0x7f00_0000_1000);

    #[test]
    fn steps_run_in_order_and_carry_access_and_range() {
        let mut r = runner(
            &(step("write", "gpa = \"0x1000\"\nvcpu = 2")
                + &step(
                    "madvise",
                    "start = \"0x7f0000001000\"\nsize = \"4K\"\nadvice = \"dontneed\"",
                )),
            ModelOptions::default(),
        );
        let e = r.step(1).unwrap_err().to_string();
        assert!(e.contains("next step to run is 0"), "{e}");
        let w = r.step(0).unwrap();
        assert_eq!(
            (w.access, w.vcpu, w.hva),
            (Some(Access::Write), Some(2), Some(PAGE))
        );
        let p = r.host_page(PAGE).unwrap();
        assert_eq!(
            (p.kind, p.leaf, p.writable),
            (HostPageKind::Anon, Level::Pte4K, true)
        );
        let m = r.step(1).unwrap();
        assert_eq!(m.range, Some((PAGE, 4096)));
        assert_eq!(m.access, None);
        assert_eq!(m.notifiers.len(), 1);
        assert!(r.host_page(PAGE).is_none());
        assert!(r.step(2).is_err());
    }

    #[test]
    fn push_appends_and_runs_after_the_file_steps() {
        let mut r = runner(&step("read", "gpa = \"0x1000\""), ModelOptions::default());
        let read = |gpa: u64| {
            Step::from_table(
                0,
                toml::from_str(&format!("op = \"read\"\ngpa = {gpa}")).unwrap(),
            )
            .unwrap()
        };
        // Step 0 of the file has not run yet: a push would reorder the run.
        let e = r.push(read(0x2000)).unwrap_err().to_string();
        assert!(e.contains("next step to run is 0"), "{e}");
        assert_eq!(r.step(0).unwrap().result, "fixed");
        let p = r.push(read(0x2000)).unwrap();
        assert_eq!((p.step, p.result.as_str()), (1, "fixed"));
        assert_eq!(r.scenario().step.len(), 2);
        assert_eq!(
            r.host_page(Hva(0x7f00_0000_2000)).unwrap().kind,
            HostPageKind::Zero
        );
        let w = r
            .push(
                Step::from_table(0, toml::from_str("op = \"write\"\ngpa = 0x2000").unwrap())
                    .unwrap(),
            )
            .unwrap();
        assert_eq!(w.step, 2);
        assert_eq!(
            r.host_page(Hva(0x7f00_0000_2000)).unwrap().kind,
            HostPageKind::Anon
        );
        assert_eq!(r.next_step(), 3);
    }

    #[test]
    fn borrowed_steps_run_after_the_file_and_are_not_kept() {
        let mut r = runner(&step("read", "gpa = \"0x1000\""), ModelOptions::default());
        let write =
            Step::from_table(0, toml::from_str("op = \"write\"\ngpa = 0x2000").unwrap()).unwrap();
        // Step 0 of the file has not run yet.
        let e = r.run_borrowed(&write).unwrap_err().to_string();
        assert!(e.contains("next step to run is 0"), "{e}");
        r.step(0).unwrap();
        let o = r.run_borrowed(&write).unwrap();
        assert_eq!((o.step, o.result.name()), (1, "fixed"));
        assert_eq!(o.hva, Some(Hva(0x7f00_0000_2000)));
        assert_eq!(r.outcome().step, 1);
        assert_eq!(r.scenario().step.len(), 1, "not kept");
        assert_eq!(r.next_step(), 2);
        assert!(r.push(write.clone()).is_err(), "push after a borrowed step");
        assert_eq!(r.run_borrowed(&write).unwrap().result.name(), "hit");
    }

    #[test]
    fn the_dontneed_bug_drops_the_notifier_and_leaves_the_spte() {
        let steps = step("write", "gpa = \"0x1000\"")
            + &step(
                "madvise",
                "start = \"0x7f0000001000\"\nsize = \"4K\"\nadvice = \"dontneed\"",
            );
        let mut good = runner(&steps, ModelOptions::default());
        let mut bad = runner(
            &steps,
            ModelOptions {
                bug: Some(ModelBug::SkipDontneedNotifier),
                ..ModelOptions::default()
            },
        );
        for r in [&mut good, &mut bad] {
            r.step(0).unwrap();
        }
        let (g, b) = (good.step(1).unwrap(), bad.step(1).unwrap());
        assert_eq!(g.notifiers.len(), 1);
        assert!(b.notifiers.is_empty() && b.zapped.is_empty());
        assert!(good.kvm().spte_at(Gpa(0x1000)).is_none());
        assert!(
            bad.kvm().spte_at(Gpa(0x1000)).is_some(),
            "the bug keeps a stale SPTE"
        );
    }

    #[test]
    fn clear_flush_young_runs_now() {
        let mut r = runner(
            &(step("read", "gpa = \"0x1000\"")
                + &step(
                    "clear-flush-young",
                    "start = \"0x7f0000001000\"\nsize = \"4K\"",
                )),
            ModelOptions::default(),
        );
        r.step(0).unwrap();
        let rec = r.step(1).unwrap();
        assert_eq!(rec.result, "ok");
        assert!(rec.young.is_some());
    }

    #[test]
    fn conditions_override_the_file() {
        // THP never: a read of a MADV_HUGEPAGE range maps the 4K zero page, not the huge one.
        let sc = Scenario::from_toml(
            "thp = \"always\"\n[[memslot]]\nid = 0\ngpa = 0\nsize = \"2M\"\nhva = \"0x7f0000000000\"\n\
             [[vma]]\nstart = \"0x7f0000000000\"\nsize = \"2M\"\nthp = true\n\
             [[step]]\nop = \"read\"\ngpa = 0\n",
        )
        .unwrap();
        let mut file = ScenarioRunner::new(&sc, &ModelOptions::default()).unwrap();
        file.step(0).unwrap();
        assert_eq!(
            file.host_page(Hva(0x7f00_0000_0000)).unwrap().kind,
            HostPageKind::HugeZero
        );
        let opts = ModelOptions {
            kernel: Some(KernelVersion::V6_18),
            conditions: HostConditions {
                thp: Some(ThpMode::Never),
                ..HostConditions::default()
            },
            bug: None,
        };
        let mut host = ScenarioRunner::new(&sc, &opts).unwrap();
        assert_eq!(host.kernel(), KernelVersion::V6_18);
        host.step(0).unwrap();
        let p = host.host_page(Hva(0x7f00_0000_0000)).unwrap();
        assert_eq!((p.kind, p.leaf), (HostPageKind::Zero, Level::Pte4K));
    }

    #[test]
    fn hugetlb_faults_are_modelled_and_mremap_is_not() {
        let sc = Scenario::from_toml(
            "[[memslot]]\nid = 0\ngpa = 0\nsize = \"2M\"\nhva = \"0x7f0000000000\"\n\
             [[vma]]\nstart = \"0x7f0000000000\"\nsize = \"2M\"\nkind = \"hugetlb\"\n\
             [[step]]\nop = \"write\"\ngpa = 0\n\
             [[step]]\nop = \"mremap\"\nstart = \"0x7f0000000000\"\nsize = \"2M\"\nnew_start = \"0x7f0040000000\"\n",
        )
        .unwrap();
        let mut r = ScenarioRunner::new(&sc, &ModelOptions::default()).unwrap();
        let rec = r.step(0).unwrap();
        assert_eq!(rec.result, "fixed");
        let p = r.host_page(Hva(0x7f00_0000_0000)).unwrap();
        assert_eq!((p.kind, p.leaf), (HostPageKind::Hugetlb, Level::Pmd2M));
        let rec = r.step(1).unwrap();
        assert_eq!(rec.result, "not-modelled");
        assert!(rec.not_modelled.as_deref().unwrap().contains("mremap"));
    }

    fn no_async_pf() -> ModelOptions {
        let mut o = ModelOptions::default();
        o.conditions.async_pf = Some(false);
        o
    }

    const SLOT_AND_VMA: &str =
        "[[memslot]]\nid = 0\ngpa = 0\nsize = \"2M\"\nhva = \"0x7f0000000000\"\n\
        [[vma]]\nstart = \"0x7f0000000000\"\nsize = \"2M\"\n";

    /// Pins `handle_userfault()` without async PF: the blocking GUP sleeps (one event, no
    /// EFAULT), UFFDIO_COPY of another page does not wake it, UFFDIO_COPY of its page does,
    /// and the access ends fixed, writable (the read's FOLL_WRITE fallback), reading the
    /// copied bytes.
    #[test]
    fn a_missing_fault_without_async_pf_waits_until_its_page_is_copied() {
        let sc = Scenario::from_toml(&format!(
            "{SLOT_AND_VMA}kind = \"anon\"\n\
             [[step]]\nop = \"uffd-register\"\nstart = \"0x7f0000000000\"\nsize = \"2M\"\n\
             [[step]]\nop = \"read\"\ngpa = \"0x5000\"\n\
             [[step]]\nop = \"uffdio-copy\"\nstart = \"0x7f0000009000\"\n\
             [[step]]\nop = \"uffdio-copy\"\nstart = \"0x7f0000005000\"\n\
             [[step]]\nop = \"write\"\ngpa = \"0x5000\"\n"
        ))
        .unwrap();
        let mut r = ScenarioRunner::new(&sc, &no_async_pf()).unwrap();
        r.step(0).unwrap();
        let rec = r.step(1).unwrap();
        assert_eq!(rec.result, "uffd-wait");
        let ev = rec.uffd_event.unwrap();
        assert_eq!(ev.address, "0x7f0000005000");
        assert!(!ev.write && !ev.wp && !ev.minor);
        assert!(r.step(2).unwrap().woken.is_none());
        let w = r.step(3).unwrap().woken.expect("the copy wakes the read");
        assert_eq!((w.step, w.result.as_str()), (1, "fixed"));
        assert_eq!((w.level, w.writable), (Some(Level::Pte4K), Some(true)));
        assert_eq!(w.value, Some(uffdio_copy_value(0x7f00_0000_5000)));
        assert_eq!(r.step(4).unwrap().result, "hit");
    }

    /// Pins the WP flow: a write to a uffd-wp page sleeps with a WRITE|WP event; the
    /// un-protecting UFFDIO_WRITEPROTECT (PROTECTION_VMA notifier) wakes it, the fault
    /// snapshot is stale (RET_PF_RETRY) and the retried write maps the page writable.
    #[test]
    fn a_wp_fault_waits_until_the_page_is_unprotected() {
        let sc = Scenario::from_toml(&format!(
            "{SLOT_AND_VMA}kind = \"anon\"\n\
             [[step]]\nop = \"write\"\ngpa = \"0x3000\"\n\
             [[step]]\nop = \"uffd-register\"\nstart = \"0x7f0000000000\"\nsize = \"2M\"\nmode = [\"wp\"]\n\
             [[step]]\nop = \"uffdio-writeprotect\"\nstart = \"0x7f0000003000\"\nsize = \"4K\"\n\
             [[step]]\nop = \"write\"\ngpa = \"0x3000\"\nvalue = \"0x77\"\n\
             [[step]]\nop = \"uffdio-writeprotect\"\nstart = \"0x7f0000003000\"\nsize = \"4K\"\nwp = false\n"
        ))
        .unwrap();
        let mut r = ScenarioRunner::new(&sc, &no_async_pf()).unwrap();
        for i in 0..3 {
            r.step(i).unwrap();
        }
        let rec = r.step(3).unwrap();
        assert_eq!(rec.result, "uffd-wait");
        let ev = rec.uffd_event.unwrap();
        assert!(ev.write && ev.wp && !ev.minor);
        let rec = r.step(4).unwrap();
        assert_eq!(rec.notifiers.len(), 1);
        let w = rec.woken.expect("un-protecting wakes the write");
        assert_eq!((w.result.as_str(), w.retries), ("fixed", 1));
        assert_eq!((w.writable, w.value), (Some(true), Some(0x77)));
    }

    /// Pins MINOR on shmem: registering MINOR on anonymous memory is refused; a read of a
    /// page that is in the page cache but not mapped sleeps with a MINOR event;
    /// UFFDIO_CONTINUE maps the cached page (shared + VM_WRITE: writable) and wakes it.
    #[test]
    fn a_minor_fault_on_memfd_waits_until_uffdio_continue() {
        let mut r = runner(
            &step(
                "uffd-register",
                "start = \"0x7f0000000000\"\nsize = \"4K\"\nmode = [\"minor\"]",
            ),
            ModelOptions::default(),
        );
        assert!(r.step(0).is_err(), "MINOR on anonymous memory is EINVAL");
        let sc = Scenario::from_toml(&format!(
            "{SLOT_AND_VMA}kind = \"memfd\"\nshared = true\n\
             [[step]]\nop = \"write\"\ngpa = \"0x4000\"\nvalue = \"0x1234\"\n\
             [[step]]\nop = \"madvise\"\nadvice = \"dontneed\"\nstart = \"0x7f0000004000\"\nsize = \"4K\"\n\
             [[step]]\nop = \"uffd-register\"\nstart = \"0x7f0000000000\"\nsize = \"2M\"\nmode = [\"minor\"]\n\
             [[step]]\nop = \"read\"\ngpa = \"0x4000\"\n\
             [[step]]\nop = \"uffdio-continue\"\nstart = \"0x7f0000004000\"\n"
        ))
        .unwrap();
        let mut r = ScenarioRunner::new(&sc, &no_async_pf()).unwrap();
        for i in 0..3 {
            r.step(i).unwrap();
        }
        let rec = r.step(3).unwrap();
        assert_eq!(rec.result, "uffd-wait");
        assert!(rec.uffd_event.unwrap().minor);
        let rec = r.step(4).unwrap();
        assert!(rec.notifiers.is_empty());
        let w = rec.woken.expect("UFFDIO_CONTINUE wakes the read");
        assert_eq!(
            (w.result.as_str(), w.writable, w.value),
            ("fixed", Some(true), Some(0x1234))
        );
    }

    #[test]
    fn steps_without_machinery_say_not_modelled() {
        for (op, keys) in [
            (
                "fallocate-punch-hole",
                "start = \"0x7f0000000000\"\nsize = \"4K\"",
            ),
            (
                "madvise",
                "start = \"0x7f0000000000\"\nsize = \"4K\"\nadvice = \"pageout\"",
            ),
        ] {
            let mut r = runner(&step(op, keys), ModelOptions::default());
            let rec = r.step(0).unwrap();
            assert_eq!(rec.result, "not-modelled", "{op}");
            assert!(rec.not_modelled.unwrap().contains("not modelled"), "{op}");
        }
    }

    #[test]
    fn memslot_steps_create_move_and_change_flags() {
        let mut r = runner(
            &(step(
                "memslot-create",
                "id = 1\ngpa = \"1G\"\nsize = \"2M\"\nhva = \"0x7f0000200000\"",
            ) + &step("write", "gpa = \"0x40001000\"")
                + &step("memslot-move", "memslot = 1\ngpa = \"2G\"")
                + &step("read", "gpa = \"0x40001000\"")
                + &step("memslot-flags", "memslot = 0\nflags = [\"dirty-log\"]")
                + &step("memslot-flags", "memslot = 0\nflags = [\"readonly\"]")),
            ModelOptions::default(),
        );
        r.step(0).unwrap();
        let w = r.step(1).unwrap();
        assert_eq!(w.result, "fixed");
        assert_eq!(w.hva, Some(Hva(0x7f00_0020_1000)));
        let mv = r.step(2).unwrap();
        assert!(!mv.zapped.is_empty(), "the move zaps the old range");
        assert_eq!(r.step(3).unwrap().result, "mmio");
        r.step(4).unwrap();
        assert!(r.kvm().slots.by_id(0).unwrap().dirty_logging());
        let e = r.step(5).unwrap_err().to_string();
        assert!(e.contains("KVM_MEM_READONLY"), "{e}");
    }

    #[test]
    fn mremap_populate_and_writeprotect_are_modelled() {
        let mut r = runner(
            &(step(
                "madvise",
                "start = \"0x7f0000000000\"\nsize = \"8K\"\nadvice = \"populate-write\"",
            ) + &step(
                "mremap",
                "start = \"0x7f0000000000\"\nsize = \"4K\"\nnew_start = \"0x7f0000300000\"",
            ) + &step(
                "uffd-register",
                "start = \"0x7f0000001000\"\nsize = \"4K\"\nmode = [\"wp\"]",
            ) + &step(
                "uffdio-writeprotect",
                "start = \"0x7f0000001000\"\nsize = \"4K\"",
            )),
            ModelOptions::default(),
        );
        r.step(0).unwrap();
        assert_eq!(
            r.host_page(Hva(0x7f00_0000_0000)).unwrap().kind,
            HostPageKind::Anon
        );
        let pfn = r.host_page(Hva(0x7f00_0000_0000)).unwrap().pfn;
        let m = r.step(1).unwrap();
        assert!(!m.notifiers.is_empty());
        assert!(r.host_page(Hva(0x7f00_0000_0000)).is_none());
        assert_eq!(r.host_page(Hva(0x7f00_0030_0000)).unwrap().pfn, pfn);
        r.step(2).unwrap();
        r.step(3).unwrap();
        let p = r.host_page(PAGE).unwrap();
        assert!(p.uffd_wp && !p.writable, "{p:?}");
    }

    fn values(vma: &str, steps: &str) -> Vec<Option<u64>> {
        let sc = Scenario::from_toml(&format!(
            "[[memslot]]\nid = 0\ngpa = 0\nsize = \"4M\"\nhva = \"0x7f0000000000\"\n\
             [[vma]]\nstart = \"0x7f0000000000\"\nsize = \"4M\"\n{vma}\n{steps}"
        ))
        .unwrap();
        let mut r = ScenarioRunner::new(&sc, &ModelOptions::default()).unwrap();
        r.run_all().unwrap().into_iter().map(|x| x.value).collect()
    }

    const DONTNEED: &str = "start = \"0x7f0000001000\"\nsize = \"4K\"\nadvice = \"dontneed\"";

    #[test]
    fn reads_see_zero_then_the_written_value() {
        let v = values(
            "",
            &(step("read", "gpa = \"0x1000\"")
                + &step("write", "gpa = \"0x1000\"\nvalue = 42")
                + &step("read", "gpa = \"0x1000\"")
                + &step("write", "gpa = \"0x2000\"")
                + &step("read", "gpa = \"0x2000\"")),
        );
        let d = default_value(0x2000);
        assert_eq!(v, vec![Some(0), Some(42), Some(42), Some(d), Some(d)]);
    }

    #[test]
    fn dontneed_zeroes_private_anon_but_not_shmem() {
        let steps = step("write", "gpa = \"0x1000\"\nvalue = 7")
            + &step("madvise", DONTNEED)
            + &step("read", "gpa = \"0x1000\"");
        assert_eq!(values("", &steps)[2], Some(0));
        assert_eq!(
            values("kind = \"shmem\"\nshared = true", &steps)[2],
            Some(7)
        );
        assert_eq!(
            values("kind = \"memfd\"\nshared = true", &steps)[2],
            Some(7)
        );
    }

    #[test]
    fn cow_after_fork_copies_then_overwrites_and_migration_copies() {
        let v = values(
            "",
            &(step("write", "gpa = \"0x1000\"\nvalue = 1")
                + &step("fork", "")
                + &step("read", "gpa = \"0x1000\"")
                + &step("write", "gpa = \"0x1000\"\nvalue = 2")
                + &step(
                    "migrate",
                    "start = \"0x7f0000001000\"\nsize = \"4K\"\nnode = 1",
                )
                + &step("read", "gpa = \"0x1000\"")),
        );
        assert_eq!(v[2], Some(1));
        assert_eq!(v[3], Some(2));
        assert_eq!(v[5], Some(2), "migration copies the page");
        // The copy rule was really exercised: migration moved the page to a new pfn.
        let mut r = runner(
            &(step("write", "gpa = \"0x1000\"\nvalue = 3")
                + &step(
                    "migrate",
                    "start = \"0x7f0000001000\"\nsize = \"4K\"\nnode = 1",
                )),
            ModelOptions::default(),
        );
        r.step(0).unwrap();
        let before = r.host_page(PAGE).unwrap().pfn;
        r.step(1).unwrap();
        assert_ne!(r.host_page(PAGE).unwrap().pfn, before);
        assert_eq!(r.page_value(PAGE), Some(3));
    }

    #[test]
    fn thp_split_keeps_values_and_uffd_fills_pages() {
        let v = values(
            "thp = true",
            &(step("write", "gpa = \"0x3000\"\nvalue = 9")
                + &step("read", "gpa = \"0x4000\"")
                + &step("thp-split", "start = \"0x7f0000000000\"\nsize = \"2M\"")
                + &step("read", "gpa = \"0x3000\"")),
        );
        assert_eq!((v[1], v[3]), (Some(0), Some(9)));
        // The split was really exercised: the write mapped a THP, the split left 4K PTEs.
        let sc = Scenario::from_toml(&format!(
            "{}thp = true\n{}{}",
            BASE,
            step("write", "gpa = \"0x3000\""),
            step("thp-split", "start = \"0x7f0000000000\"\nsize = \"2M\"")
        ))
        .unwrap();
        let mut r = ScenarioRunner::new(&sc, &ModelOptions::default()).unwrap();
        r.step(0).unwrap();
        let p = r.host_page(Hva(0x7f00_0000_3000)).unwrap();
        assert_eq!((p.kind, p.leaf), (HostPageKind::AnonThp, Level::Pmd2M));
        r.step(1).unwrap();
        assert_eq!(
            r.host_page(Hva(0x7f00_0000_3000)).unwrap().leaf,
            Level::Pte4K
        );
        assert_eq!(
            r.page_value(Hva(0x7f00_0000_3000)),
            Some(default_value(0x3000))
        );
        let v = values(
            "",
            &(step("uffd-register", "start = \"0x7f0000200000\"\nsize = \"8K\"")
                + &step("uffdio-copy", "start = \"0x7f0000200000\"")
                + &step("uffdio-zeropage", "start = \"0x7f0000201000\"")
                + &step("read", "gpa = \"0x200000\"")
                + &step("read", "gpa = \"0x201000\"")),
        );
        assert_eq!(
            v[3],
            Some(super::super::contents::uffdio_copy_value(0x7f00_0020_0000))
        );
        assert_eq!(v[4], Some(0));
    }

    /// Page values with the scoped contents rule equal the exhaustive ones on every shipped
    /// scenario and on a synthetic stream with forks, mremap, migration and THP splits.
    #[test]
    fn scoped_contents_match_the_exhaustive_rule() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/scenarios");
        let mut scenarios: Vec<(String, Scenario)> = Vec::new();
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") && !p.ends_with("known-divergences.toml")
            {
                let text = std::fs::read_to_string(&p).unwrap();
                if let Ok(sc) = Scenario::from_toml(&text) {
                    scenarios.push((p.display().to_string(), sc));
                }
            }
        }
        assert!(scenarios.len() > 20);
        let mut mixed = crate::replay::synthetic_workload(3000, 7).unwrap();
        let extra = [
            "op = \"fork\"",
            "op = \"write\"\ngpa = \"0x1000\"",
            "op = \"migrate\"\nstart = \"0x7f0000000000\"\nsize = \"4M\"\nnode = 1",
            "op = \"thp-split\"\nstart = \"0x7f0020000000\"\nsize = \"8M\"",
            "op = \"mremap\"\nstart = \"0x7f0000400000\"\nsize = \"2M\"\nnew_start = \"0x7f0000800000\"",
            "op = \"numa-scan\"\nstart = \"0x7f0020000000\"\nsize = \"64M\"",
        ];
        let n = mixed.step.len();
        for (k, x) in extra.iter().enumerate() {
            let st = Step::from_table(0, toml::from_str(x).unwrap()).unwrap();
            mixed.step.insert(n * (k + 1) / (extra.len() + 1), st);
        }
        mixed.nodes = Some(2);
        let rw: Vec<Step> = mixed.step[..n / 2]
            .iter()
            .filter(|s| s.guest_access().is_some())
            .take(500)
            .cloned()
            .collect();
        mixed.step.extend(rw.iter().map(|s| match s {
            Step::Write(w) => Step::Read(super::super::step::GuestStep {
                gpa: w.gpa,
                vcpu: None,
                mmio: false,
                race: false,
            }),
            o => o.clone(),
        }));
        scenarios.push(("synthetic".into(), mixed));
        let mut compared = 0;
        for (name, sc) in &scenarios {
            let opts = ModelOptions::default();
            let (Ok(a), Ok(b)) = (
                ScenarioRunner::new(sc, &opts),
                ScenarioRunner::new(sc, &opts),
            ) else {
                continue;
            };
            let (mut a, mut b) = (a, b.exhaustive_contents());
            for i in 0..sc.step.len() {
                let (x, y) = (a.step(i), b.step(i));
                match (x, y) {
                    (Ok(x), Ok(y)) => {
                        assert_eq!(x.value, y.value, "{name} step {i}");
                        compared += usize::from(x.value.is_some());
                    }
                    (Err(_), Err(_)) => break,
                    (x, y) => panic!("{name} step {i}: {x:?} vs {y:?}"),
                }
            }
        }
        assert!(compared > 3000, "{compared}");
    }

    #[test]
    fn madv_cold_makes_pages_old_without_a_notifier() {
        let mut r = runner(
            &(step("write", "gpa = \"0x1000\"")
                + &step(
                    "madvise",
                    "start = \"0x7f0000000000\"\nsize = \"8K\"\nadvice = \"cold\"",
                )),
            ModelOptions::default(),
        );
        r.step(0).unwrap();
        assert!(r.host_page(PAGE).unwrap().young);
        let rec = r.step(1).unwrap();
        assert_eq!(rec.result, "ok");
        assert!(rec.notifiers.is_empty() && rec.zapped.is_empty());
        assert!(!r.host_page(PAGE).unwrap().young);
        assert!(r.kvm().spte_at(Gpa(0x1000)).is_some(), "KVM is not told");
    }

    #[test]
    fn madv_cold_of_part_of_a_thp_is_not_modelled() {
        let sc = Scenario::from_toml(&format!(
            "{BASE}thp = true\n{}{}",
            step("write", "gpa = 0"),
            step(
                "madvise",
                "start = \"0x7f0000000000\"\nsize = \"4K\"\nadvice = \"cold\""
            )
        ))
        .unwrap();
        let mut r = ScenarioRunner::new(&sc, &ModelOptions::default()).unwrap();
        r.step(0).unwrap();
        let rec = r.step(1).unwrap();
        assert_eq!(rec.result, "not-modelled");
        assert!(rec.not_modelled.unwrap().contains("split_folio()"));
        assert!(
            r.host_page(Hva(0x7f00_0000_0000)).unwrap().young,
            "nothing changed"
        );
    }
}
