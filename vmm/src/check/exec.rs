//! The real executor: one scenario on real KVM, step by step, next to the model.
//!
//! Set-up: each `[[vma]]` becomes a real mapping of its kind ([`RealSpace`]); each
//! `[[memslot]]` a real KVM memslot over it at `gpa + GPA_OFFSET` (the agent guest's own RAM,
//! code and page tables sit below 64 GiB, outside every scenario range; the offset is a
//! multiple of 1 GiB, so every alignment the rules care about is kept); the agent guest
//! performs the guest steps; host steps run on the real mappings (and memslots) between them,
//! from the controller thread while the vCPUs wait in the agent's doorbell.
//!
//! After every step the observers read what the kernel did: the tracefs instance's events
//! since the previous step, and the pagemap/kpageflags state of the pages of interest (every
//! page a guest step touched so far that lies in the step's range, and the page a guest step
//! accessed). The model ([`mmu::scenario::ScenarioRunner`]) runs the same step with the host's
//! rule set and conditions, and [`super::compare::compare_step`] compares.

use super::agent::{AccessKind, AccessOutcome, Agent};
use super::compare::{self, Capabilities, RealAccess, RealPage, RealStep, PRESENT_ONLY};
use super::observe::host::HostConditions as RealConditions;
use super::observe::pagemap::{PageKind, PageMap};
use super::observe::tracefs::{PidFilter, TraceEvent, TraceSession};
use super::report::{Observation, ScenarioCheck, StepCheck, Timing, Verdict};
use super::space::{RealKind, RealSpace, RealVmaSpec, SpaceError};
use crate::launch::{ExtraMemslot, VmBuilder, VmIo};
use mmu::scenario::step::{default_value, MadviseAdvice};
use mmu::scenario::{
    HostConditions, ModelBug, ModelOptions, Scenario, ScenarioError, ScenarioRunner, Step, VmaKind,
};
use mmu::types::{Hva, KernelVersion};
use std::path::Path;
use std::time::{Duration, Instant};

/// Real gpa = model gpa + this.
pub const GPA_OFFSET: u64 = 64 << 30;

/// Options of one check.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Model rule set; `None`: the host kernel's.
    pub kernel_rules: Option<KernelVersion>,
    /// A deliberately wrong model rule (tests prove the checker catches it).
    pub bug: Option<ModelBug>,
    /// How long one guest access may take before the agent counts as hung.
    pub access_timeout: Duration,
    /// KVM device node.
    pub kvm_device: std::path::PathBuf,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            kernel_rules: None,
            bug: None,
            access_timeout: Duration::from_secs(10),
            kvm_device: crate::config::default_kvm_device(),
        }
    }
}

/// Why a scenario could not be checked at all (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The file could not be read.
    #[error("Cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The scenario is invalid.
    #[error("{path}: {source}")]
    Scenario {
        /// The file.
        path: String,
        /// What is wrong.
        #[source]
        source: ScenarioError,
    },
    /// known-divergences.toml is invalid.
    #[error("{0}")]
    Known(String),
    /// /dev/kvm cannot be used.
    #[error("{0}")]
    NoKvm(String),
}

/// `/sys/kernel/mm/transparent_hugepage/enabled` ("always [madvise] never") -> the mode.
fn thp_mode_of(s: &str) -> Option<mmu::host::ThpMode> {
    let sel = s
        .split_whitespace()
        .find(|w| w.starts_with('['))
        .unwrap_or(s.trim());
    match sel.trim_matches(['[', ']']) {
        "always" => Some(mmu::host::ThpMode::Always),
        "madvise" => Some(mmu::host::ThpMode::Madvise),
        "never" => Some(mmu::host::ThpMode::Never),
        _ => None,
    }
}

/// The model's rule set for the host's kernel release.
pub fn rules_for(major: u32, minor: u32) -> KernelVersion {
    match (major, minor) {
        (m, _) if m > 6 => KernelVersion::V6_18,
        (6, n) if n >= 18 => KernelVersion::V6_18,
        (6, n) if n >= 13 => KernelVersion::V6_13,
        _ => KernelVersion::V6_12,
    }
}

/// The host, read once per `faultline check`.
#[derive(Debug)]
pub struct CheckEnv {
    /// Its conditions.
    pub host: RealConditions,
}

impl CheckEnv {
    /// Reads the host.
    pub fn read() -> Self {
        CheckEnv {
            host: RealConditions::read(),
        }
    }
}

/// Why a VMA cannot be made for real here (None: it can).
fn vma_real_kind(kind: VmaKind, page_size: u64, vvar: bool) -> Result<RealKind, String> {
    match kind {
        VmaKind::Pfnmap if vvar => Ok(RealKind::Vvar),
        VmaKind::Anon | VmaKind::Thp => Ok(RealKind::Anon),
        VmaKind::Shmem | VmaKind::Memfd => Ok(RealKind::Memfd),
        VmaKind::File => Ok(RealKind::File),
        VmaKind::Hugetlb => Ok(RealKind::Hugetlb { page_size }),
        VmaKind::Pfnmap => Err(
            "a device VM_PFNMAP mapping needs a driver; the only pfnmap this host offers is [vvar] (vvar = true)"
                .into(),
        ),
        VmaKind::Mixedmap => Err("a VM_MIXEDMAP mapping needs a driver this host does not have".into()),
        VmaKind::Devdax => Err("device-dax (ZONE_DEVICE) needs persistent memory this host does not have".into()),
    }
}

fn prot_bits(p: mmu::host::Prot) -> i32 {
    let mut b = libc::PROT_NONE;
    if p.read {
        b |= libc::PROT_READ;
    }
    if p.write {
        b |= libc::PROT_WRITE;
    }
    if p.exec {
        b |= libc::PROT_EXEC;
    }
    b
}

/// Why a host step cannot run for real here, or `None` when it can.
fn step_not_executable(step: &Step, env: &CheckEnv) -> Option<String> {
    let nodes = env.host.numa_nodes.value.as_ref().map_or(1, Vec::len);
    match step {
        Step::Read(_) | Step::Write(_) | Step::Exec(_) => None,
        Step::Munmap(_) | Step::Mprotect(_) | Step::Madvise(_) | Step::Mremap(_) => None,
        Step::Fork(_) | Step::FallocatePunchHole(_) => None,
        Step::DirtyLogEnable(_) | Step::DirtyLogGet(_) | Step::DirtyLogClear(_) => None,
        Step::MemslotDelete(_) | Step::MemslotMove(_) | Step::MemslotFlags(_) | Step::MemslotCreate(_) => None,
        Step::NumaScan(_) | Step::Migrate(_) if nodes < 2 => Some(format!(
            "the host has {nodes} NUMA node(s); NUMA hinting and migration need 2"
        )),
        Step::NumaScan(_) => Some("task_numa_work() cannot be triggered on demand from userspace".into()),
        Step::Migrate(_) => Some("move_pages(2) is not wired into the executor yet".into()),
        Step::ThpSplit(_) => Some("no user interface splits only the PMD (split_huge_pmd()); debugfs split_huge_pages splits the folio".into()),
        Step::UnmapMappingRange(_) => Some("unmap_mapping_range() alone has no user interface (punch-hole also frees the pages)".into()),
        Step::ClearYoung(_) => Some(aging_unavailable(std::path::Path::new(PAGE_IDLE_BITMAP))),
        Step::TestYoung(_) => Some(
            "no user interface calls mmu_notifier_test_young() for a chosen range: reading \
             /sys/kernel/mm/page_idle/bitmap (page_idle_bitmap_read(), mm/page_idle.c) clears \
             young through ptep_clear_young_notify() instead, and MGLRU's lru_gen_look_around() \
             is not addressable"
                .into(),
        ),
        Step::ClearFlushYoung(_) => Some(
            "no user interface reaches mmu_notifier_clear_flush_young() alone: reclaim's \
             folio_referenced_one() (mm/rmap.c) runs it, under MADV_PAGEOUT together with \
             unmapping the page"
                .into(),
        ),
        Step::Release(_) | Step::Exit(_) => Some("it would tear down the VMM's own mm".into()),
        Step::Signal(_) => Some("signal delivery to a vCPU thread mid-fault is not wired into the executor yet".into()),
        Step::MemoryFailure(_) => Some("memory_failure() poisons a real page; not done without opt-in".into()),
        Step::UffdRegister(_)
        | Step::UffdioCopy(_)
        | Step::UffdioZeropage(_)
        | Step::UffdioContinue(_)
        | Step::UffdioWriteprotect(_) => None,
        Step::KsmScan(_) => super::ksm::unavailable(),
    }
}

/// The idle page tracking bitmap (`CONFIG_IDLE_PAGE_TRACKING`, mm/page_idle.c).
const PAGE_IDLE_BITMAP: &str = "/sys/kernel/mm/page_idle/bitmap";

/// Why a `clear-young` step cannot run here. The one user interface that reaches
/// `mmu_notifier_clear_young()` for chosen pages is the page_idle bitmap: setting a pfn's
/// bit runs `page_idle_clear_pte_refs()` → `ptep_clear_young_notify()` on each of its
/// mappings (`page_idle_bitmap_write()`).
fn aging_unavailable(bitmap: &Path) -> String {
    if bitmap.exists() {
        // The pfns would come from pagemap and the ranges from tracefs kvm:kvm_age_hva; the
        // development host has no page_idle to test that path on.
        format!(
            "not implemented yet: {} exists here, but clear-young through it is not wired into the executor",
            bitmap.display()
        )
    } else {
        format!(
            "{} is absent (host kernel built without CONFIG_IDLE_PAGE_TRACKING), and no other user interface reaches mmu_notifier_clear_young() for a chosen range",
            bitmap.display()
        )
    }
}

/// Reserves the huge pages a scenario's hugetlb VMAs need (every huge page of each VMA, twice
/// when the scenario forks, since the parent's writes then COW whole huge pages), with
/// [`crate::testing::reserve_huge_pages`]: the guards put the pools back when dropped. The
/// second value is why the pages could not be had (then the hugetlb VMAs are not made).
fn reserve_scenario_huge_pages(sc: &Scenario) -> (Vec<crate::testing::HugePages>, Option<String>) {
    let forks = sc.step.iter().any(|s| matches!(s, Step::Fork(_)));
    let mut need: Vec<(u64, u64)> = Vec::new();
    for v in sc.vma.iter().filter(|v| v.kind == VmaKind::Hugetlb) {
        let size = v.page_size.map_or(2 << 20, page_bytes);
        let pages = v.size.0.div_ceil(size) * if forks { 2 } else { 1 };
        match need.iter_mut().find(|(s, _)| *s == size) {
            Some((_, n)) => *n += pages,
            None => need.push((size, pages)),
        }
    }
    let mut guards = Vec::new();
    for (size, pages) in need {
        match crate::testing::reserve_huge_pages(size >> 10, pages) {
            Ok(g) => guards.push(g),
            Err(e) => return (guards, Some(e)),
        }
    }
    (guards, None)
}

fn page_bytes(p: mmu::scenario::PageSize) -> u64 {
    match p {
        mmu::scenario::PageSize::Size4K => 4 << 10,
        mmu::scenario::PageSize::Size2M => 2 << 20,
        mmu::scenario::PageSize::Size1G => 1 << 30,
    }
}

/// One model memslot as the executor uses it.
#[derive(Debug, Clone, Copy)]
struct Slot {
    id: u16,
    gpa: u64,
    size: u64,
    hva: u64,
    real_slot: u32,
    /// Made by a `memslot-create` step, not at VM set-up.
    created: bool,
    /// Its flags (set-up or creation).
    readonly: bool,
}

impl Slot {
    /// `KVM_SET_USER_MEMORY_REGION` for this slot at model gpa `gpa`, over its real mapping,
    /// with `flags` (what memslot-create, -move, -flags and dirty-log-enable do).
    fn set(
        &self,
        vm: &crate::vstate::vm::Vm,
        space: &RealSpace,
        gpa: u64,
        flags: crate::vstate::vm::MemslotFlags,
    ) -> Result<(), crate::vstate::vm::VmError> {
        vm.set_memslot(
            self.real_slot,
            gpa + GPA_OFFSET,
            self.size,
            space.real_any(self.hva),
            flags,
        )
    }
}

/// The real side of one scenario's run: what every step executes against.
struct Executor<'a, 'h> {
    /// The scenario's VMAs as real mappings in this process.
    space: &'a mut RealSpace,
    /// The agent guest that performs the guest accesses.
    agent: &'a Agent,
    /// The running VM.
    h: &'a crate::launch::VmHandle<'h>,
    /// The model memslots and their real slots.
    slots: &'a [Slot],
    /// The check's options.
    opts: &'a CheckOptions,
    /// The host's environment.
    env: &'a CheckEnv,
    /// The userfaultfd and the guest access asleep in `handle_userfault()`.
    uffd: super::uffd::UffdExec,
}

/// Checks one scenario file: runs it on the model and on real KVM and compares.
pub fn check_file(
    path: &Path,
    opts: &CheckOptions,
    env: &CheckEnv,
) -> Result<ScenarioCheck, CheckError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| CheckError::Read {
        path: name.clone(),
        source,
    })?;
    let scenario = Scenario::from_toml(&text).map_err(|source| CheckError::Scenario {
        path: name.clone(),
        source,
    })?;
    let known = path
        .parent()
        .map(super::known::load)
        .transpose()
        .map_err(|e| CheckError::Known(e.to_string()))?
        .unwrap_or_default();
    let mut check = check_scenario(&name, &scenario, opts, env);
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    for st in &mut check.steps {
        super::known::apply(&known, &file, st.step, &mut st.observations);
    }
    Ok(check)
}

/// Checks a parsed scenario.
pub fn check_scenario(
    name: &str,
    sc: &Scenario,
    opts: &CheckOptions,
    env: &CheckEnv,
) -> ScenarioCheck {
    let t0 = Instant::now();
    let mut check = ScenarioCheck {
        file: name.to_string(),
        rules: String::new(),
        notes: Vec::new(),
        observables: Vec::new(),
        steps: Vec::new(),
        real_trace: Vec::new(),
        error: None,
        timing: Timing::default(),
    };
    let (model_opts, rules, notes) = model_options(sc, opts, env);
    check.rules = rules;
    check.notes = notes;
    let result = run_real(sc, &model_opts, opts, env, &mut check, t0);
    if let Err(e) = result {
        check.error = Some(e);
    }
    check.timing.total_s = t0.elapsed().as_secs_f64();
    check
}

/// The model's options for this host, without a scenario (live mode: `faultline run
/// --live`): the rule set (`kernel_rules`, else the host kernel's) and the host's THP mode,
/// huge zero page, NUMA nodes and balancing, paging mode; async PF off. Returns the options
/// and where the rule set came from.
pub fn host_model_options(
    kernel_rules: Option<KernelVersion>,
    env: &CheckEnv,
) -> (ModelOptions, String) {
    let opts = CheckOptions {
        kernel_rules,
        ..CheckOptions::default()
    };
    // An empty scenario names no conditions, so nothing overrides the host's.
    match Scenario::from_toml("") {
        Ok(empty) => {
            let (m, why, _) = model_options(&empty, &opts, env);
            (m, why)
        }
        Err(e) => (
            ModelOptions::default(),
            format!("host conditions unknown: {e}"),
        ),
    }
}

/// The model's options from the host's real conditions, and notes where the scenario
/// assumes otherwise.
fn model_options(
    sc: &Scenario,
    opts: &CheckOptions,
    env: &CheckEnv,
) -> (ModelOptions, String, Vec<String>) {
    let h = &env.host;
    let mut notes = Vec::new();
    let (kernel, why) = match (opts.kernel_rules, h.kernel_version.value) {
        (Some(k), _) => (k, "from --kernel-rules".to_string()),
        (None, Some(v)) => (
            rules_for(v.major, v.minor),
            format!("host kernel {}.{}", v.major, v.minor),
        ),
        (None, None) => (KernelVersion::V6_12, "host kernel unknown".to_string()),
    };
    if let Some(k) = sc.kernel {
        if k != kernel {
            notes.push(format!(
                "scenario names kernel {k}, the model runs {kernel}'s rules ({why})"
            ));
        }
    }
    let thp = h.thp_enabled.value.as_deref().and_then(thp_mode_of);
    if let (Some(s), Some(r)) = (sc.thp, thp) {
        if s != r {
            notes.push(format!("scenario assumes thp={s:?}, host has {r:?}"));
        }
    }
    let huge_zero = h.use_zero_page.value;
    if let (Some(s), Some(r)) = (sc.huge_zero_page, huge_zero) {
        if s != r {
            notes.push(format!("scenario assumes huge_zero_page={s}, host has {r}"));
        }
    }
    let tdp = h
        .paging
        .value
        .map(|p| matches!(p, super::observe::host::PagingMode::Tdp { .. }));
    let nodes = h
        .numa_nodes
        .value
        .as_ref()
        .map(|n| u16::try_from(n.len()).unwrap_or(u16::MAX));
    if let (Some(s), Some(r)) = (sc.nodes, nodes) {
        if s != r {
            notes.push(format!("scenario assumes {s} NUMA nodes, host has {r}"));
        }
    }
    let numa_balancing = h.numa_balancing.value.map(|v| v != 0);
    if sc.async_pf == Some(true) {
        notes.push(
            "scenario assumes async page faults; the agent guest does not enable them".into(),
        );
    }
    let conditions = HostConditions {
        thp,
        huge_zero_page: huge_zero,
        // The agent guest never enables KVM's PV async PF (MSR_KVM_ASYNC_PF_EN).
        async_pf: Some(false),
        tdp,
        ad_bits: None,
        nodes,
        numa_balancing,
    };
    if let Some(b) = opts.bug {
        notes.push(format!("model runs with the deliberate bug {b:?}"));
    }
    (
        ModelOptions {
            kernel: Some(kernel),
            conditions,
            bug: opts.bug,
        },
        format!("{kernel} ({why})"),
        notes,
    )
}

fn real_page(pm: &PageMap, addr: u64) -> Option<RealPage> {
    let st = pm.state(addr).ok()?;
    if std::env::var_os("FAULTLINE_CHECK_DEBUG").is_some() {
        eprintln!("check: page {addr:#x}: {st:?}");
    }
    if !st.present {
        return None;
    }
    if st.flags.is_none() && !matches!(st.kind, PageKind::Pfnmap) {
        // No /proc/kpageflags (it needs root): presence is all pagemap tells.
        return Some(RealPage {
            present: true,
            kind: PRESENT_ONLY.into(),
            size: 0,
        });
    }
    let kind = match st.kind {
        PageKind::Zero => "zero",
        PageKind::HugeZero => "huge-zero",
        PageKind::Anon => "anon",
        PageKind::AnonThp { .. } => "anon-thp",
        PageKind::Shmem => "shmem",
        PageKind::File => "file",
        PageKind::Hugetlb { .. } => "hugetlb",
        PageKind::NotPresent | PageKind::Swapped => return None,
        PageKind::Ksm => "ksm",
        PageKind::Pfnmap => "pfnmap",
        PageKind::Unknown => "unknown",
    };
    // The mapping size, not the folio's: a PTE-mapped THP subpage is a 4K mapping.
    let size = match super::observe::pagemap_scan::mapping_is_huge(addr) {
        Some(true) => st.size.max(2 << 20),
        Some(false) => 4096,
        None => st.size,
    };
    Some(RealPage {
        present: true,
        kind: kind.into(),
        size,
    })
}

fn run_real(
    sc: &Scenario,
    model_opts: &ModelOptions,
    opts: &CheckOptions,
    env: &CheckEnv,
    check: &mut ScenarioCheck,
    t0: Instant,
) -> Result<(), String> {
    let mut runner = ScenarioRunner::new(sc, model_opts).map_err(|e| format!("model: {e}"))?;

    // The real VMAs, and which model ranges could not be made.
    let mut specs = Vec::new();
    let mut absent: Vec<(u64, u64, String)> = Vec::new();
    // Huge pages for the hugetlb VMAs (and the COW copies a fork makes), put back afterwards.
    let (_huge_pages, no_huge_pages) = reserve_scenario_huge_pages(sc);
    for v in &sc.vma {
        if let (VmaKind::Hugetlb, Some(reason)) = (v.kind, &no_huge_pages) {
            check.notes.push(format!(
                "VMA {:#x}+{:#x} (Hugetlb) not executable here: {reason}",
                v.start.0, v.size.0
            ));
            absent.push((v.start.0, v.start.0 + v.size.0, reason.clone()));
            continue;
        }
        match vma_real_kind(v.kind, v.page_size.map_or(2 << 20, page_bytes), v.vvar) {
            Ok(kind) => specs.push(RealVmaSpec {
                start: v.start.0,
                size: v.size.0,
                kind,
                prot: prot_bits(v.prot),
                shared: v.shared || matches!(v.kind, VmaKind::Shmem | VmaKind::Memfd),
                thp: v.thp,
            }),
            Err(reason) => {
                check.notes.push(format!(
                    "VMA {:#x}+{:#x} ({:?}) not executable here: {reason}",
                    v.start.0, v.size.0, v.kind
                ));
                absent.push((v.start.0, v.start.0 + v.size.0, reason));
            }
        }
    }
    let reserve: Vec<(u64, u64)> = sc
        .step
        .iter()
        .filter_map(|st| match st {
            Step::Mremap(m) => Some((m.new_start.0, m.new_size.map_or(m.size.0, |n| n.0))),
            _ => None,
        })
        .collect();
    let mut space = RealSpace::new(&specs, &reserve).map_err(|e: SpaceError| e.to_string())?;

    // The set-up slots, then the ones `memslot-create` steps make (their windows are mapped
    // by the agent from the start; until the step, accesses there are MMIO, as in the model).
    let created = sc.step.iter().filter_map(|st| match st {
        Step::MemslotCreate(m) => Some((m, true)),
        _ => None,
    });
    let slots: Vec<Slot> = sc
        .memslot
        .iter()
        .map(|m| (m, false))
        .chain(created)
        .enumerate()
        .map(|(i, (m, created))| Slot {
            id: m.id,
            gpa: m.gpa.0,
            size: m.size.0,
            hva: m.hva.0,
            real_slot: u32::try_from(i + 1).unwrap_or(u32::MAX),
            created,
            readonly: m.flags.contains(&mmu::scenario::MemslotFlag::Readonly),
        })
        .collect();
    let vcpus = sc
        .step
        .iter()
        .filter_map(|s| s.guest_access().and_then(|a| a.2))
        .max()
        .map_or(1, |m| m + 1);
    let windows: Vec<(u64, u64)> = slots.iter().map(|s| (s.gpa + GPA_OFFSET, s.size)).collect();
    let agent = Agent::new(vcpus, &windows).map_err(|e| e.to_string())?;

    let mut config = agent.config();
    config.kvm_device = opts.kvm_device.clone();
    let (io, _console) = VmIo::captured();
    let mut builder = VmBuilder::new(config, io);
    for s in slots.iter().filter(|s| !s.created) {
        let flags = &sc
            .memslot
            .iter()
            .find(|m| m.id == s.id)
            .map(|m| m.flags.clone())
            .unwrap_or_default();
        builder = builder.memslot(ExtraMemslot {
            slot: None,
            gpa: s.gpa + GPA_OFFSET,
            size: s.size,
            host_addr: space.real_any(s.hva),
            readonly: flags.contains(&mmu::scenario::MemslotFlag::Readonly),
            dirty_log: flags.contains(&mmu::scenario::MemslotFlag::DirtyLog),
        });
    }
    builder = agent.attach(builder);
    let vmm = builder.build().map_err(|e| format!("VM set-up: {e}"))?;
    agent.prepare(&vmm).map_err(|e| e.to_string())?;

    // Observers.
    let mut caps = Capabilities::default();
    // The mm daemons too: khugepaged or ksmd acting on the scenario's range during a step is
    // something the model does not do, and the report must say so rather than diverge.
    let daemons = super::observe::tracefs::mm_daemon_pids();
    let mut trace = match TraceSession::start(PidFilter::ThisProcessAnd(
        daemons.iter().map(|d| d.1).collect(),
    )) {
        Ok(mut t) => {
            if let Some((lo, hi)) = space.real_window() {
                t.set_hva_ranges(vec![lo..hi]);
            }
            let enabled: Vec<String> = t.enabled_events().iter().map(|e| e.to_string()).collect();
            check
                .observables
                .push(format!("tracefs events enabled: {}", enabled.join(", ")));
            if !t.absent_events().is_empty() {
                let absent: Vec<String> = t.absent_events().iter().map(|e| e.to_string()).collect();
                check.observables.push(format!(
                    "tracefs events this kernel lacks: {}",
                    absent.join(", ")
                ));
            }
            if !enabled.iter().any(|e| e == "kvm:kvm_unmap_hva_range") {
                caps.notifiers =
                    Some("the host kernel has no kvm:kvm_unmap_hva_range event".into());
            }
            Some(t)
        }
        Err(e) => {
            caps.notifiers = Some(format!("no tracefs: {e}"));
            check
                .observables
                .push(format!("notifier ranges not observable: {e}"));
            None
        }
    };
    let pagemap = match PageMap::open() {
        Ok(p) => Some(p),
        Err(e) => {
            caps.pages = Some(format!("{e}"));
            check
                .observables
                .push(format!("page states not observable: {e}"));
            None
        }
    };
    check.timing.setup_s = t0.elapsed().as_secs_f64();
    let t_steps = Instant::now();

    let steps = &sc.step;
    let first_race = steps.iter().position(Step::race);
    let race_allowed = match first_race {
        Some(_) => super::race::model_allowed(sc, model_opts),
        None => Ok(Default::default()),
    };
    let mut spte_seen = false;
    let (_outcome, results) = agent
        .run_with(vmm, |h| {
            let mut out: Vec<StepCheck> = Vec::new();
            let mut interest: Vec<u64> = Vec::new();
            let mut skipped: Vec<usize> = Vec::new();
            let mut perturbed: Vec<(String, u64, u64)> = Vec::new();
            let mut race_rate = None;
            let mut trace_out: Vec<serde_json::Value> = Vec::new();
            let mut ex = Executor {
                space: &mut space,
                agent: &agent,
                h,
                slots: &slots,
                opts,
                env,
                uffd: super::uffd::UffdExec::for_scenario(sc),
            };
            let mut kstats = super::stats::StepStats::open(h);
            let mut stat_recs: Vec<(usize, super::stats::StepStatsRecord)> = Vec::new();
            if let Some(t) = trace.as_mut() {
                let _ = t.drain();
            }
            for (i, step) in steps.iter().enumerate() {
                if let Some(first) = first_race {
                    if i == first {
                        let (st, rate) = ex.run_race(steps, &race_allowed, &mut runner);
                        race_rate = rate;
                        out.push(st);
                        if let Some(t) = trace.as_mut() {
                            let _ = t.drain();
                        }
                        continue;
                    }
                    if step.race() {
                        continue;
                    }
                    if i > first {
                        let _ = runner.skip(i);
                        out.push(StepCheck {
                            step: i,
                            what: describe(step),
                            observations: vec![Observation::uncompared(
                                "step",
                                "-",
                                None,
                                None,
                                Verdict::NotExecutable(
                                    "it follows a race, after which the real state is one of many".into(),
                                ),
                            )],
                        });
                        continue;
                    }
                }
                // A step the host cannot perform is skipped on both sides, so the steps
                // after it still compare like with like.
                let touched = step
                    .guest_access()
                    .and_then(|(_, gpa, _)| {
                        slots
                            .iter()
                            .find(|s| gpa >= s.gpa && gpa - s.gpa < s.size)
                            .map(|s| s.hva + (gpa - s.gpa))
                    })
                    .or(step.host_range().map(|(s, _)| s.0));
                let reason = touched
                    .and_then(|a| absent.iter().find(|(s, e, _)| a >= *s && a < *e))
                    .map(|(_, _, r)| r.clone())
                    .or_else(|| step_not_executable(step, env));
                if let Some(reason) = reason {
                    let _ = runner.skip(i);
                    skipped.push(i);
                    out.push(StepCheck {
                        step: i,
                        what: describe(step),
                        observations: vec![Observation::uncompared(
                            "step",
                            "-",
                            Some("skipped".into()),
                            Some("skipped".into()),
                            Verdict::NotExecutable(reason),
                        )],
                    });
                    if let Some(t) = trace.as_mut() {
                        let _ = t.drain();
                    }
                    continue;
                }
                let model_before = runner.stats();
                if let Ok(k) = kstats.as_mut() {
                    // The baseline: what moved since the last step is not this step's.
                    let _ = k.step();
                }
                let rec = match runner.step(i) {
                    Ok(r) => r,
                    Err(e) => {
                        out.push(StepCheck {
                            step: i,
                            what: describe(step),
                            observations: vec![Observation::uncompared(
                                "step",
                                "model",
                                Some(format!("error: {e}")),
                                None,
                                Verdict::NotModelled(e.to_string()),
                            )],
                        });
                        continue;
                    }
                };
                let mut real = RealStep::default();
                if rec.not_modelled.is_none() {
                    ex.execute_step(i, step, &rec, &mut real);
                }
                // Observers, after the step: the pages first, then the trace, so that a
                // kernel thread that changed a page before it was read is in this step's trace.
                // Pages of interest.
                if let Some(hva) = rec.hva {
                    let page = hva.0 & !0xfff;
                    if !interest.contains(&page) {
                        interest.push(page);
                    }
                }
                let pages: Vec<u64> = match (rec.hva, rec.range) {
                    (Some(hva), _) => vec![hva.0 & !0xfff],
                    (None, Some((s, len))) => interest
                        .iter()
                        .copied()
                        .filter(|p| *p >= s.0 && *p < s.0 + len)
                        .collect(),
                    (None, None) => interest.clone(),
                };
                let model_pages: Vec<_> = pages.iter().map(|p| runner.host_page(Hva(*p))).collect();
                real.unobservable_pages = pages
                    .iter()
                    .filter(|p| {
                        ex.space
                            .vmas()
                            .iter()
                            .any(|v| v.spec.kind == RealKind::Vvar && **p >= v.spec.start && **p - v.spec.start < v.spec.size)
                    })
                    .map(|p| {
                        (
                            *p,
                            "pagemap skips VM_PFNMAP VMAs (walk_page_test(), mm/pagewalk.c): it reports a hole whatever is mapped".to_string(),
                        )
                    })
                    .collect();
                if real.not_executable.is_none() {
                    if let Some(pm) = pagemap.as_ref() {
                        real.pages = pages
                            .iter()
                            .map(|p| (*p, ex.space.real(*p).ok().and_then(|r| real_page(pm, r))))
                            .collect();
                    } else {
                        real.pages = pages.iter().map(|p| (*p, None)).collect();
                    }
                }
                if let Some(t) = trace.as_mut() {
                    match t.drain() {
                        Ok(batch) => {
                            let mut inv = Vec::new();
                            let mut by_daemon = Vec::new();
                            let mut levels = Vec::new();
                            for r in &batch.records {
                                match &r.event {
                                    TraceEvent::UnmapHvaRange { start, end } => {
                                        // The part of the range inside the scenario's VMAs.
                                        for (s, e) in ex.space.model_ranges(*start, *end) {
                                            match daemons.iter().find(|d| d.1 == r.pid) {
                                                // A ksm-scan step's invalidations are ksmd's.
                                                Some(d) if matches!(step, Step::KsmScan(_)) && d.0 == "ksmd" => {
                                                    inv.push((s, e))
                                                }
                                                Some(d) => by_daemon.push((d.0.clone(), s, e)),
                                                None => inv.push((s, e)),
                                            }
                                        }
                                    }
                                    TraceEvent::SetSpte { level, .. } => {
                                        spte_seen = true;
                                        if let Some(l) = level_from(*level) {
                                            levels.push(l);
                                        }
                                    }
                                    _ => {}
                                }
                            }
                            real.invalidations = Some(inv);
                            perturbed.extend(by_daemon.iter().cloned());
                            real.by_daemon = by_daemon;
                            real.spte_levels = Some(levels);
                        }
                        Err(e) => caps.notifiers = Some(format!("reading the trace failed: {e}")),
                    }
                }
                if !spte_seen {
                    caps.levels = Some(
                        "kvmmmu:kvm_mmu_set_spte has not fired (KVM's shadow MMU does not emit it here)".into(),
                    );
                } else {
                    caps.levels = None;
                }
                real.perturbed = perturbed.clone();
                if real.not_executable.is_none() && rec.not_modelled.is_none() {
                    let (realk, error) = match kstats.as_mut() {
                        Ok(k) => match k.step() {
                            Ok(d) => (Some(d), None),
                            Err(e) => (None, Some(format!("reading KVM stats failed: {e}"))),
                        },
                        Err(e) => (None, Some(format!("no KVM binary stats: {e}"))),
                    };
                    stat_recs.push((
                        out.len(),
                        super::stats::StepStatsRecord {
                            real: realk,
                            error,
                            model_before: Some(model_before),
                            model_after: Some(runner.stats()),
                        },
                    ));
                }
                let moved: std::collections::BTreeMap<String, u64> = stat_recs
                    .last()
                    .filter(|(idx, _)| *idx == out.len())
                    .and_then(|(_, r)| r.real.as_ref())
                    .map(|m| m.iter().filter(|(_, v)| **v != 0).map(|(k, v)| (k.clone(), *v)).collect())
                    .unwrap_or_default();
                trace_out.push(serde_json::json!({ "step": i, "what": describe(step), "real": &real, "kvm_stats": moved }));
                let observations = compare::compare_step(&rec, &model_pages, &real, &caps);
                out.push(StepCheck {
                    step: i,
                    what: describe(step),
                    observations,
                });
            }
            // Closing the uffd wakes a vCPU still asleep in handle_userfault(), so the VM
            // can end.
            ex.uffd.close(&agent, opts.access_timeout);
            let recs: Vec<super::stats::StepStatsRecord> =
                stat_recs.iter().map(|(_, r)| r.clone()).collect();
            for ((idx, _), obs) in stat_recs.iter().zip(super::stats::finish(&recs)) {
                if let Some(st) = out.get_mut(*idx) {
                    st.observations.extend(obs);
                }
            }
            (out, skipped, race_rate, trace_out)
        })
        .map_err(|e| format!("VM run: {e}"))?;
    let (steps_checked, skipped, race_rate, trace_out) = results.unwrap_or_default();
    check.real_trace = trace_out;
    check.timing.race_rounds_per_s = race_rate;
    check.steps = steps_checked;
    if let Some(first) = skipped.first() {
        if *first + 1 < sc.step.len() {
            check.notes.push(format!(
                "step(s) {skipped:?} cannot run here and were skipped on both sides; the steps after them run without them"
            ));
        }
    }
    check.timing.steps_s = t_steps.elapsed().as_secs_f64();
    drop(space);
    Ok(())
}

fn level_from(level: u8) -> Option<mmu::types::Level> {
    match level {
        1 => Some(mmu::types::Level::Pte4K),
        2 => Some(mmu::types::Level::Pmd2M),
        3 => Some(mmu::types::Level::Pud1G),
        _ => None,
    }
}

/// A step as one short line.
pub fn describe(step: &Step) -> String {
    let name = step.name();
    if let Some((_, gpa, vcpu)) = step.guest_access() {
        return match vcpu {
            Some(v) => format!("{name} {gpa:#x} (vcpu {v})"),
            None => format!("{name} {gpa:#x}"),
        };
    }
    match step {
        Step::Madvise(m) => {
            format!("madvise {:?} {:#x}+{:#x}", m.advice, m.start.0, m.size.0).to_lowercase()
        }
        _ => match step.host_range() {
            Some((s, len)) => format!("{name} {:#x}+{len:#x}", s.0),
            None => name.to_string(),
        },
    }
}

fn madvise_value(a: MadviseAdvice) -> (i32, &'static str) {
    match a {
        MadviseAdvice::Dontneed => (libc::MADV_DONTNEED, "MADV_DONTNEED"),
        MadviseAdvice::Free => (libc::MADV_FREE, "MADV_FREE"),
        MadviseAdvice::Hugepage => (libc::MADV_HUGEPAGE, "MADV_HUGEPAGE"),
        MadviseAdvice::Nohugepage => (libc::MADV_NOHUGEPAGE, "MADV_NOHUGEPAGE"),
        MadviseAdvice::Collapse => (25, "MADV_COLLAPSE"),
        MadviseAdvice::Pageout => (libc::MADV_PAGEOUT, "MADV_PAGEOUT"),
        MadviseAdvice::Cold => (libc::MADV_COLD, "MADV_COLD"),
        MadviseAdvice::PopulateRead => (22, "MADV_POPULATE_READ"),
        MadviseAdvice::PopulateWrite => (23, "MADV_POPULATE_WRITE"),
        MadviseAdvice::Mergeable => (libc::MADV_MERGEABLE, "MADV_MERGEABLE"),
        MadviseAdvice::Unmergeable => (libc::MADV_UNMERGEABLE, "MADV_UNMERGEABLE"),
    }
}

impl Executor<'_, '_> {
    /// Runs one modelled step for real: the guest access (watched when userfaultfd may make it
    /// sleep) or the host operation, then whether it woke the access asleep in
    /// `handle_userfault()`, and the userfaultfd events it raised.
    fn execute_step(
        &mut self,
        i: usize,
        step: &Step,
        rec: &mmu::scenario::StepRecord,
        real: &mut RealStep,
    ) {
        if self.uffd.active() && step.guest_access().is_some() {
            self.guest_access_may_block(i, step, rec, real);
        } else {
            self.execute_with_uffd(step, &rec.op, real);
        }
        if step.guest_access().is_none() && self.uffd.pending.is_some() {
            // Did this step end the access asleep in handle_userfault()?
            let wakes = self.uffd.pending.is_some_and(|p| wakes_page(step, p.hva));
            if let Some((from, r)) = self
                .uffd
                .collect(self.agent, wakes, self.opts.access_timeout)
            {
                real.woken = Some((from, r.map_or_else(RealAccess::Crash, real_access)));
            }
        }
        if self.uffd.active() {
            match self.uffd.events(self.space) {
                Ok(ev) => real.uffd_events.get_or_insert_with(Vec::new).extend(ev),
                Err(e) => real.host_error = Some(format!("reading the userfaultfd: {e}")),
            }
        }
    }

    /// Runs one executable step for real.
    fn execute(&mut self, step: &Step, op: &str, real: &mut RealStep) {
        let host = |r: Result<(), SpaceError>, real: &mut RealStep| {
            if let Err(e) = r {
                real.host_error = Some(e.to_string());
            }
        };
        match step {
            Step::Read(g) | Step::Exec(g) => {
                let kind = if matches!(step, Step::Read(_)) {
                    AccessKind::Read
                } else {
                    AccessKind::Exec
                };
                real.access = Some(self.access(g.vcpu.unwrap_or(0), kind, g.gpa.0, 0));
            }
            Step::Write(w) => {
                let value = w.value.map_or_else(|| default_value(w.gpa.0), |v| v.0);
                real.access =
                    Some(self.access(w.vcpu.unwrap_or(0), AccessKind::Write, w.gpa.0, value));
            }
            Step::Munmap(r) => host(self.space.munmap(r.start.0, r.size.0), real),
            Step::Mprotect(m) => host(
                self.space.mprotect(m.start.0, m.size.0, prot_bits(m.prot)),
                real,
            ),
            Step::Madvise(m) => {
                let (v, name) = madvise_value(m.advice);
                host(self.space.madvise(m.start.0, m.size.0, v, name), real);
            }
            Step::Mremap(m) => host(self.space.mremap(m.start.0, m.size.0, m.new_start.0), real),
            Step::Fork(_) => host(self.space.fork(), real),
            Step::KsmScan(_) => {
                if let Err(e) = super::ksm::scan(std::time::Duration::from_secs(20)) {
                    real.host_error = Some(e.to_string());
                }
            }
            Step::FallocatePunchHole(r) => host(self.space.punch_hole(r.start.0, r.size.0), real),
            Step::DirtyLogEnable(s)
            | Step::DirtyLogGet(s)
            | Step::DirtyLogClear(s)
            | Step::MemslotDelete(s) => {
                let Some(slot) = self.slots.iter().find(|x| x.id == s.memslot) else {
                    real.host_error = Some(format!("no memslot {}", s.memslot));
                    return;
                };
                let vm = self.h.vm();
                let r = match step {
                    Step::MemslotDelete(_) => {
                        vm.delete_memslot(slot.real_slot).map_err(|e| e.to_string())
                    }
                    Step::DirtyLogEnable(_) => slot
                        .set(
                            vm,
                            self.space,
                            slot.gpa,
                            crate::vstate::vm::MemslotFlags {
                                readonly: false,
                                dirty_log: true,
                            },
                        )
                        .map_err(|e| e.to_string()),
                    // dirty-log-get and -clear both read and clear the log, as the model's
                    // `dirty_log_get()` does: with manual protection (KVM_CAP_MANUAL_DIRTY_LOG_
                    // PROTECT2) GET leaves the bits set, so KVM_CLEAR_DIRTY_LOG clears what it
                    // returned and write-protects those pages again.
                    _ => vm
                        .get_dirty_log(slot.real_slot, slot.size)
                        .and_then(|bitmap| {
                            if !vm.dirty_log_get_clears() {
                                let pages = u32::try_from(slot.size / 4096).unwrap_or(u32::MAX);
                                vm.clear_dirty_log(slot.real_slot, 0, pages, &bitmap)?;
                            }
                            Ok(bitmap)
                        })
                        .map(|bitmap| {
                            real.dirty =
                                Some(super::compare::dirty_bitmap_gfns(slot.gpa >> 12, &bitmap));
                        })
                        .map_err(|e| e.to_string()),
                };
                if let Err(e) = r {
                    real.host_error = Some(e);
                }
            }
            Step::MemslotMove(m) => {
                let Some(slot) = self.slots.iter().find(|x| x.id == m.memslot) else {
                    real.host_error = Some(format!("no memslot {}", m.memslot));
                    return;
                };
                let vm = self.h.vm();
                let r = vm.delete_memslot(slot.real_slot).and_then(|()| {
                    slot.set(
                        vm,
                        self.space,
                        m.gpa.0,
                        crate::vstate::vm::MemslotFlags::default(),
                    )
                });
                if let Err(e) = r {
                    real.host_error = Some(e.to_string());
                }
            }
            Step::MemslotCreate(m) => {
                let Some(slot) = self.slots.iter().find(|x| x.created && x.id == m.id) else {
                    real.host_error = Some(format!("no memslot {} to create", m.id));
                    return;
                };
                let flags = crate::vstate::vm::MemslotFlags {
                    readonly: slot.readonly,
                    dirty_log: m.flags.contains(&mmu::scenario::MemslotFlag::DirtyLog),
                };
                if let Err(e) = slot.set(self.h.vm(), self.space, slot.gpa, flags) {
                    real.host_error = Some(e.to_string());
                }
            }
            Step::MemslotFlags(f) => {
                // KVM_SET_USER_MEMORY_REGION with the same base, size and hva and new flags
                // (KVM_MR_FLAGS_ONLY, kvm_set_memslot()). The slot's set-up gpa: a slot moved
                // earlier in the scenario is not followed.
                let Some(slot) = self.slots.iter().rev().find(|x| x.id == f.memslot) else {
                    real.host_error = Some(format!("no memslot {}", f.memslot));
                    return;
                };
                let flags = crate::vstate::vm::MemslotFlags {
                    readonly: f.flags.contains(&mmu::scenario::MemslotFlag::Readonly),
                    dirty_log: f.flags.contains(&mmu::scenario::MemslotFlag::DirtyLog),
                };
                if let Err(e) = slot.set(self.h.vm(), self.space, slot.gpa, flags) {
                    real.host_error = Some(e.to_string());
                }
            }
            // Everything else was filtered out by `step_not_executable`.
            _ => {
                real.not_executable = Some(format!("{op} is not executable here"));
            }
        }
    }

    /// One guest access by the agent, at model gpa `gpa`.
    fn access(&self, vcpu: u32, kind: AccessKind, gpa: u64, value: u64) -> RealAccess {
        match self.agent.access(
            vcpu,
            kind,
            gpa + GPA_OFFSET,
            value,
            self.opts.access_timeout,
        ) {
            Ok(o) => real_access(o),
            Err(e) => RealAccess::Crash(e.to_string()),
        }
    }
}

/// The comparison's view of an agent outcome (model gpas).
fn real_access(o: AccessOutcome) -> RealAccess {
    match o {
        AccessOutcome::Completed { value } => RealAccess::Completed { value },
        AccessOutcome::Mmio { write, .. } => RealAccess::Mmio { write },
        AccessOutcome::Efault { fault } => RealAccess::Efault {
            gpa: fault.map(|f| f.gpa.wrapping_sub(GPA_OFFSET)),
        },
        AccessOutcome::Exception { vector, .. } => RealAccess::Exception { vector },
        AccessOutcome::Crash(r) => RealAccess::Crash(r),
    }
}

/// Whether `step` resolves the page `hva` and wakes its waiters (`wake_userfault()` from
/// `UFFDIO_COPY`/`ZEROPAGE`/`CONTINUE` and an un-protecting `UFFDIO_WRITEPROTECT`,
/// fs/userfaultfd.c).
fn wakes_page(step: &Step, hva: u64) -> bool {
    let wakes = match step {
        Step::UffdioCopy(_) | Step::UffdioZeropage(_) | Step::UffdioContinue(_) => true,
        Step::UffdioWriteprotect(w) => !w.wp,
        _ => false,
    };
    wakes
        && step
            .host_range()
            .is_some_and(|(s, len)| hva >= s.0 && hva - s.0 < len)
}

/// A guest step while a range is registered with userfaultfd: the access may sleep in
/// `handle_userfault()`, so it is started and watched ([`super::uffd::UffdExec::access`]).
impl Executor<'_, '_> {
    fn guest_access_may_block(
        &mut self,
        i: usize,
        step: &Step,
        rec: &mmu::scenario::StepRecord,
        real: &mut RealStep,
    ) {
        let Some((kind, gpa, vcpu)) = step.guest_access() else {
            return;
        };
        let value = match step {
            Step::Write(w) => w.value.map_or_else(|| default_value(w.gpa.0), |v| v.0),
            _ => 0,
        };
        let hva = rec.hva.map(|h| h.0 & !0xfff).or_else(|| {
            self.slots
                .iter()
                .find(|s| gpa >= s.gpa && gpa - s.gpa < s.size)
                .map(|s| (s.hva + (gpa - s.gpa)) & !0xfff)
        });
        let req = super::uffd::AccessRequest {
            step: i,
            vcpu: vcpu.unwrap_or(0),
            kind,
            gpa: gpa + GPA_OFFSET,
            value,
            hva: hva.unwrap_or(0),
        };
        let started = self
            .uffd
            .access(self.agent, self.space, req, self.opts.access_timeout);
        match started {
            Ok(super::uffd::Started::Ended(o, ev)) => {
                real.access = Some(real_access(o));
                real.uffd_events = Some(ev);
            }
            Ok(super::uffd::Started::Blocked(p, ev)) => {
                real.access = Some(RealAccess::UffdWait);
                real.uffd_events = Some(ev);
                self.uffd.pending = Some(p);
            }
            Err(e) => real.access = Some(RealAccess::Crash(e)),
        }
    }

    /// [`Executor::execute`], with the userfaultfd steps.
    fn execute_with_uffd(&mut self, step: &Step, op: &str, real: &mut RealStep) {
        let space: &RealSpace = self.space;
        let uffd = &mut self.uffd;
        let real_of = |model: u64| space.real(model).map_err(|e| e.to_string());
        let r = match step {
            Step::UffdRegister(u) => {
                real_of(u.start.0).and_then(|a| uffd.register(a, u.size.0, &u.mode))
            }
            Step::UffdioCopy(a) => {
                real_of(a.start.0 & !0xfff).and_then(|r| uffd.copy(r, a.start.0 & !0xfff))
            }
            Step::UffdioZeropage(a) => real_of(a.start.0 & !0xfff).and_then(|r| uffd.zeropage(r)),
            Step::UffdioContinue(c) => {
                real_of(c.start.0).and_then(|r| uffd.continue_(r, c.size.map_or(4096, |n| n.0)))
            }
            Step::UffdioWriteprotect(w) => {
                real_of(w.start.0).and_then(|r| uffd.writeprotect(r, w.size.0, w.wp))
            }
            _ => {
                self.execute(step, op, real);
                return;
            }
        };
        if let Err(e) = r {
            real.host_error = Some(e);
        }
    }
}

/// How many times the host operations of a race run against the guest's loop.
pub const RACE_ROUNDS: u64 = 500;

/// The pause before each race round (see `Executor::run_race`).
pub const RACE_GAP: Duration = Duration::from_micros(40);

/// Runs the scenario's race group: one guest access, repeated by the agent in a loop, against
/// the group's host operations, [`RACE_ROUNDS`] times; compares the outcome classes seen with
/// the set the explorer allows.
impl Executor<'_, '_> {
    fn run_race(
        &mut self,
        steps: &[Step],
        allowed: &Result<std::collections::BTreeSet<String>, String>,
        runner: &mut ScenarioRunner,
    ) -> (StepCheck, Option<f64>) {
        let group: Vec<(usize, &Step)> =
            steps.iter().enumerate().filter(|(_, s)| s.race()).collect();
        for (i, _) in &group {
            let _ = runner.skip(*i);
        }
        let what = format!(
            "race: {}",
            group
                .iter()
                .map(|(_, s)| describe(s))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let step = group.first().map_or(0, |g| g.0);
        let fail = |v: Verdict| {
            (
                StepCheck {
                    step,
                    what: what.clone(),
                    observations: vec![Observation::uncompared(
                        "race outcomes",
                        "-",
                        None,
                        None,
                        v,
                    )],
                },
                None,
            )
        };
        let guests: Vec<&(usize, &Step)> = group
            .iter()
            .filter(|(_, s)| s.guest_access().is_some())
            .collect();
        let hosts: Vec<&(usize, &Step)> = group
            .iter()
            .filter(|(_, s)| s.guest_access().is_none())
            .collect();
        if guests.len() != 1 || hosts.is_empty() {
            return fail(Verdict::NotExecutable(
                "faultline check races one guest access against one or more host operations".into(),
            ));
        }
        if let Some(reason) = hosts
            .iter()
            .find_map(|(_, s)| step_not_executable(s, self.env))
        {
            return fail(Verdict::NotExecutable(reason));
        }
        let allowed = match allowed {
            Ok(a) => a,
            Err(e) => return fail(Verdict::NotModelled(format!("the explorer failed: {e}"))),
        };
        let Some((kind, gpa, vcpu)) = guests[0].1.guest_access() else {
            return fail(Verdict::NotExecutable("no guest access".into()));
        };
        let value = match guests[0].1 {
            Step::Write(w) => w.value.map_or_else(|| default_value(w.gpa.0), |v| v.0),
            _ => 0,
        };
        let vcpu = vcpu.unwrap_or(0);
        if let Err(e) = self.agent.start_loop(
            vcpu,
            kind,
            gpa + GPA_OFFSET,
            value,
            None,
            self.opts.access_timeout,
        ) {
            return fail(Verdict::NotExecutable(format!(
                "the agent's loop did not start: {e}"
            )));
        }
        let t0 = Instant::now();
        let mut host_error = None;
        for _ in 0..RACE_ROUNDS {
            // Give the guest's loop time to run into the new state before the next round (a few
            // guest accesses at this host's ~5-40 us each), so every round is a race.
            let gap = Instant::now();
            while gap.elapsed() < RACE_GAP {
                std::hint::spin_loop();
            }
            for (_, s) in &hosts {
                let mut real = RealStep::default();
                self.execute(s, s.name(), &mut real);
                if let Some(e) = real.host_error.or(real.not_executable) {
                    host_error.get_or_insert(e);
                }
            }
        }
        let seconds = t0.elapsed().as_secs_f64();
        let counts = match self.agent.stop_loop(vcpu, self.opts.access_timeout) {
            Ok(c) => c,
            Err(e) => {
                return fail(Verdict::NotExecutable(format!(
                    "the agent's loop did not stop: {e}"
                )))
            }
        };
        let mut obs = vec![super::race::verdict(
            allowed,
            &super::race::Observed::from_loop(&counts, RACE_ROUNDS, seconds),
        )];
        if let Some(e) = host_error {
            obs.push(Observation::compare("result", "syscall", "ok", e));
        }
        (
            StepCheck {
                step,
                what,
                observations: obs,
            },
            (seconds > 0.0).then(|| RACE_ROUNDS as f64 / seconds),
        )
    }
}
