//! Live mode (`faultline run --live`): the model's secondary MMU resolves a running guest's
//! faults.
//!
//! Guest RAM is registered with userfaultfd after the VMM has loaded the payload (the pages
//! already present are told to the model as `madvise populate-write` steps). Every fault KVM's
//! GUP (or the VMM) raises on it arrives as a uffd event and becomes a typed `read` / `write`
//! step pushed through a [`ScenarioRunner`] whose host mirrors guest RAM at the real hvas
//! ([`mirror`]). The model's resolution is applied to the real mapping:
//!
//! | model's host page after the step | real mapping |
//! |---|---|
//! | zero page / huge zero page | `UFFDIO_ZEROPAGE` (4K), then `UFFDIO_WRITEPROTECT` so the first write faults too |
//! | a new or COWed anon folio (4K or THP) | `UFFDIO_COPY` (4K) from the [`store::SourceStore`] (zeros, or the data saved before a drop); write-protected when the model maps it read-only |
//! | a shmem page-cache folio (MINOR fault) | `UFFDIO_CONTINUE` |
//! | a write to a write-protected page (WP fault) | `UFFDIO_WRITEPROTECT` off: the kernel completes the write |
//!
//! The actuator installs 4K pages only (anon/shmem uffd); where the model maps 2M the run
//! counts a size mismatch. A page the store holds data for is restored with `UFFDIO_COPY`
//! although the model (which dropped the data with the DONTNEED) maps the zero page: a
//! store restore, counted too.
//!
//! Honesty: after a fault that installed a page, the real page (pagemap + kpageflags) is
//! compared with the model's (present, zero page); after an injected event, the model's
//! notifier ranges with tracefs `kvm:kvm_unmap_hva_range`. Disagreements are counted and
//! listed with gfn and step. Hugetlb is refused: the mirror and the actuator do not do hugetlb yet.
//!
//! Parallel resolution: one resolver thread per vCPU (or per uffd, [`LiveOptions::split`]),
//! each serving its events from the read to the ioctl. The model and the rest of the shared
//! state (`Live`) sit behind one lock, held for the model's step and the decision (and, a
//! fault later, for the first fault's counters and record), never during an ioctl, so the
//! ioctls of different vCPUs overlap. The seq of a record is taken with its model step, and
//! the recording is written in seq order, so a replay runs the steps in the model's order.
//! Two faults on one page are served one after the other; an injected event waits until no
//! fault is between its model step and its page check.

// Host addresses and lengths are u64 in the model and usize in the uffd ABI: equal widths on
// x86_64, the only target a KVM x86 VMM builds for.
#![allow(clippy::cast_possible_truncation)]

pub mod inject;
pub mod mirror;
pub mod profile;
pub mod record;
pub mod store;

use crate::check::exec::{host_model_options, CheckEnv};
use crate::check::observe::pagemap::{PageKind, PageMap};
use crate::check::observe::tracefs::{PidFilter, TraceEvent, TraceSession};
use crate::config::Backing;
use crate::launch::{RunOutcome, VmHandle, Vmm, VmmError};
use crate::memory::uffd::sys::{self as uffd_sys, RegisterModes, Uffd, UffdError, UffdEvent};
use inject::{EventKind, Injection, Timer};
use mirror::RamRegion;
use mmu::record::{FaultRecord, RealPage, RecordHeader, Resolution, UffdEventRecord};
use mmu::replay::{Tally, VersionSummary};
use mmu::scenario::step::{
    ForkStep, GuestStep, MadviseAdvice, MadviseStep, MemslotFlagsStep, RaceRange, Range, WriteStep,
};
use mmu::scenario::{
    HostPage, HostPageKind, MemslotFlag, ModelOptions, Num, ScenarioError, ScenarioRunner, Step,
    StepOutcome, StepRecord,
};
use mmu::types::{Hva, KernelVersion, Level};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

const PAGE: u64 = 4096;

/// How to run live.
#[derive(Debug, Clone, Default)]
pub struct LiveOptions {
    /// Model rule set (`None`: the host kernel's, as `faultline check` picks it).
    pub kernel_rules: Option<KernelVersion>,
    /// Host events to inject.
    pub inject: Vec<Injection>,
    /// Write the recording here.
    pub record: Option<PathBuf>,
    /// What the guest is (for the recording's header).
    pub guest: String,
    /// Skip the pagemap comparison after each fault (faster; nothing is compared).
    pub no_verify: bool,
    /// Spin on the uffd (non-blocking reads, `sched_yield()` between empty ones) instead of
    /// sleeping in `poll()`: the plain uffd service's default wait, lowest latency, burns a
    /// core (`bench faults --live` uses it to compare like with like).
    pub busy_poll: bool,
    /// Time each phase of the service loop ([`profile::Phases`], in the summary).
    pub profile: bool,
    /// Resolver threads reading the uffd (0: one per vCPU). Each serves a fault from the
    /// read to its ioctl; the model is shared behind a lock held for the step and the
    /// decision only, so the ioctls of different vCPUs' faults overlap.
    pub resolvers: usize,
    /// Guest-physical ranges `(gpa, len)` registered each with a userfaultfd of its own
    /// (the rest of guest RAM shares one): `bench faults --live` gives each vCPU's touched
    /// region, as the plain `-u MISSING` run registers them. One uffd shared by several
    /// vCPUs is slower (its wait queues and their locks are shared; plain `-a -r 2`
    /// measured half the rate of a uffd per vCPU here). Each must lie inside one
    /// guest-RAM region, 4K-aligned, not overlapping.
    pub split: Vec<(u64, u64)>,
}

/// Live mode cannot start.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// The backing is one userfaultfd (or the model) cannot serve.
    #[error("--live cannot serve --backing {backing}: {why}")]
    Backing {
        /// The backing.
        backing: Backing,
        /// Why.
        why: String,
    },
    /// userfaultfd could not be set up.
    #[error("--live: {what}: {source}")]
    Uffd {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: UffdError,
    },
    /// The model's mirror does not load (a bug: the mirror is generated).
    #[error("--live: the model's mirror of guest RAM does not load: {0}")]
    Mirror(#[from] ScenarioError),
    /// An injected event's range is not guest RAM.
    #[error("--inject {kind} {gpa:#x}+{len:#x}: the range is not inside one guest-RAM region (guest RAM: {ram}); pick a range inside --memory")]
    Range {
        /// The event.
        kind: &'static str,
        /// Start.
        gpa: u64,
        /// Length.
        len: u64,
        /// The RAM regions.
        ram: String,
    },
    /// A range to give its own uffd is not a piece of guest RAM.
    #[error("live mode: the range {gpa:#x}+{len:#x} to register with a userfaultfd of its own {why}; give 4K-aligned, non-overlapping ranges inside one guest-RAM region")]
    Split {
        /// Start.
        gpa: u64,
        /// Length.
        len: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// The recording cannot be written.
    #[error(transparent)]
    Record(#[from] record::RecordWriteError),
    /// The VM failed.
    #[error(transparent)]
    Vmm(#[from] VmmError),
}

/// One disagreement between the model and the kernel.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Disagreement {
    /// Record seq (or step index without a recording).
    pub step: u64,
    /// Guest frame number, for a fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gfn: Option<u64>,
    /// What differed.
    pub what: String,
}

/// What a live run saw: the model's steps counted as a replay counts them
/// ([`VersionSummary`], so a live run and the replay of its recording compare field by
/// field), plus what only live mode has (uffd events and ioctls, the store, the checks
/// against the kernel, costs).
#[derive(Debug, Clone, Default, Serialize)]
pub struct LiveSummary {
    /// Rule set and where it came from.
    pub rules: String,
    /// Resolver threads that served the uffds.
    pub resolvers: u64,
    /// Userfaultfds guest RAM was registered with.
    pub uffds: u64,
    /// Every model step of the run (faults, injected events, the pages present at start):
    /// results, guest accesses by level, GUP paths, retries, notifiers, zaps, host fault
    /// handlers.
    pub model: VersionSummary,
    /// Page-fault events read from the uffd.
    pub uffd_events: u64,
    /// Events resolved through the model (one model step each).
    pub model_resolutions: u64,
    /// WP events on pages an injected event had dropped meanwhile: woken, not resolved (the
    /// thread faults again as MISSING).
    pub stale_events: u64,
    /// Pages present before registration, told to the model.
    pub present_at_start: u64,
    /// uffd ioctls issued, by kind.
    pub ioctls: BTreeMap<String, u64>,
    /// Faults where the model mapped more than the actuator could install (e.g. THP 2M vs 4K).
    pub size_mismatches: u64,
    /// Faults served from the source store although the model maps the zero page.
    pub store_restores: u64,
    /// Injected events applied, by kind.
    pub injected: BTreeMap<String, u64>,
    /// Of those, applied to the model alone.
    pub model_only: u64,
    /// Pages compared with pagemap.
    pub pages_compared: u64,
    /// Injected events whose notifiers were compared with tracefs.
    pub notifiers_compared: u64,
    /// Disagreements (count).
    pub disagreement_count: u64,
    /// Disagreements (the first 100).
    pub disagreements: Vec<Disagreement>,
    /// What could not be observed or done, once each.
    pub notes: Vec<String>,
    /// Errors while serving (ioctls that failed, model errors), the first 100.
    pub errors: Vec<String>,
    /// Nanoseconds spent in the model resolving faults, in all.
    pub model_ns: u64,
    /// Nanoseconds from the model step to the end of the fault's resolution (model, ioctls,
    /// pagemap check; not the recording), in all.
    pub serve_ns: u64,
    /// Nanoseconds from the model step to the end of the fault's ioctls, in all: what the
    /// faulting thread waits for beyond reading the event (the plain uffd service's
    /// service time is the same span for its `UFFDIO_COPY`).
    pub critical_ns: u64,
    /// Where the service thread's time went, per phase (with [`LiveOptions::profile`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phases: Option<profile::Phases>,
}

impl LiveSummary {
    fn note(&mut self, n: impl Into<String>) {
        let n = n.into();
        if !self.notes.contains(&n) {
            self.notes.push(n);
        }
    }

    fn error(&mut self, e: impl Into<String>) {
        if self.errors.len() < 100 {
            self.errors.push(e.into());
        }
    }

    fn disagree(&mut self, d: Disagreement) {
        self.disagreement_count += 1;
        if self.disagreements.len() < 100 {
            self.disagreements.push(d);
        }
    }

    fn ioctl(&mut self, name: &str) {
        bump(&mut self.ioctls, name);
    }

    /// The text summary printed after a live run.
    pub fn render(&self) -> String {
        let map = |m: &BTreeMap<String, u64>| {
            if m.is_empty() {
                "-".to_string()
            } else {
                m.iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let mut s = format!(
            "live: model rules {}, {} resolver thread(s), {} uffd(s)\n  uffd events {}, model resolutions {}, stale {}, pages present at start {}\n",
            self.rules, self.resolvers, self.uffds, self.uffd_events, self.model_resolutions, self.stale_events, self.present_at_start
        );
        let m = &self.model;
        s += &format!(
            "  model steps {}, guest accesses {} (retried {}, {} retries), results: {}\n",
            m.steps,
            m.guest_accesses,
            m.retried_accesses,
            m.retries,
            map(&m.results)
        );
        let levels: Vec<String> = [Level::Pte4K, Level::Pmd2M, Level::Pud1G]
            .into_iter()
            .filter(|l| m.faults_by_level.get(*l) > 0)
            .map(|l| format!("{} {}", level_name(l), m.faults_by_level.get(l)))
            .chain((m.unmapped > 0).then(|| format!("unmapped {}", m.unmapped)))
            .collect();
        s += &format!(
            "  faults by model level: {}\n",
            if levels.is_empty() {
                "-".to_string()
            } else {
                levels.join(", ")
            }
        );
        s += &format!("  GUP paths: {}\n", map(&m.gup_paths));
        s += &format!("  host fault handlers: {}\n", map(&m.host_faults));
        s += &format!("  uffd ioctls: {}\n", map(&self.ioctls));
        s += &format!(
            "  model larger than actuator (size mismatches): {}, served from the source store: {}\n",
            self.size_mismatches, self.store_restores
        );
        s += &format!(
            "  injected: {} ({} model only)\n",
            map(&self.injected),
            self.model_only
        );
        s += &format!(
            "  compared: {} pages (pagemap), {} events (tracefs); disagreements: {}\n",
            self.pages_compared, self.notifiers_compared, self.disagreement_count
        );
        for d in &self.disagreements {
            match d.gfn {
                Some(g) => s += &format!("    step {} gfn {g:#x}: {}\n", d.step, d.what),
                None => s += &format!("    step {}: {}\n", d.step, d.what),
            }
        }
        if let (Some(m), Some(w)) = (
            self.model_ns.checked_div(self.model_resolutions),
            self.serve_ns.checked_div(self.model_resolutions),
        ) {
            let c = self.critical_ns / self.model_resolutions.max(1);
            s += &format!(
                "  cost per fault: model {m} ns, model to end of ioctl {c} ns, whole service {w} ns\n"
            );
        }
        if let Some(p) = &self.phases {
            s += &p.render();
        }
        for n in &self.notes {
            s += &format!("  note: {n}\n");
        }
        for e in &self.errors {
            s += &format!("  error: {e}\n");
        }
        s
    }
}

/// The end of a live run.
#[derive(Debug)]
pub struct LiveOutcome {
    /// The VM's outcome.
    pub outcome: RunOutcome,
    /// What live mode saw.
    pub summary: LiveSummary,
}

/// Why `backing` cannot run live, if it cannot.
pub fn unsupported_backing(backing: Backing) -> Option<String> {
    match backing {
        Backing::Hugetlb => Some(
            "live mode has no hugetlb support yet: the model resolves hugetlb faults \
             (mmu::host::hugetlb), but the live mirror does not map guest RAM as a hugetlb VMA \
             and the actuator does not install whole 2M pages; use --backing anon, thp or shmem"
                .into(),
        ),
        _ => None,
    }
}

/// The live state every resolver shares, behind one lock ([`Shared::live`]): the model, the
/// store, the write-protected pages, the summary, the recording. A resolver holds it for the
/// model's step and the decision, and again for the accounting after the ioctl; never
/// during the ioctl.
struct Live {
    runner: ScenarioRunner,
    /// The userfaultfds; [`Live::parts`] says which serves which range.
    uffds: Vec<Arc<Uffd>>,
    /// Registered ranges `(uffd index, hva, len)`, by hva.
    parts: Vec<(usize, u64, u64)>,
    regions: Vec<RamRegion>,
    backing: Backing,
    wp: bool,
    store: store::SourceStore,
    /// Pages installed write-protected (a superset: a page is added when a resolver decides
    /// to protect it, before its ioctl, so no WP event on it is ever taken as stale).
    wp_pages: HashSet<u64>,
    pagemap: Option<Arc<PageMap>>,
    trace: Option<TraceSession>,
    writer: Option<record::RecordWriter>,
    summary: LiveSummary,
    /// The model's steps counted as they run ([`LiveSummary::model`] at the end).
    tally: Tally,
    start: Instant,
    verify: bool,
    busy_poll: bool,
    steps: u64,
    /// vCPU thread ids as last read from the VM (index = vCPU).
    vcpu_tids: Vec<u32>,
    /// The resolvers' phase timers, summed (with [`LiveOptions::profile`]).
    phases: Option<profile::Phases>,
}

/// What the resolver threads share.
struct Shared {
    live: Mutex<Live>,
    /// Held (read) by a resolver from its decision to the end of its page check, and
    /// (write) by an injected event: an event never runs between a fault's model step and
    /// its ioctl, so model and real mapping see the two in the same order.
    gate: RwLock<()>,
    uffds: Vec<Arc<Uffd>>,
    pagemap: Option<Arc<PageMap>>,
    verify: bool,
    busy_poll: bool,
    resolvers: usize,
    start: Instant,
    /// The page each resolver has between its model step and the end of its page check
    /// (hva + 1; 0: none): another fault on that page waits, so each page's model steps,
    /// ioctls and checks run in model order. Set under the lock, cleared without it.
    in_flight: Vec<AtomicU64>,
}

/// One fault between its model step and its accounting.
struct Job {
    page: u64,
    gpa: u64,
    seq: u64,
    /// The step, kept for the record.
    step: Option<Step>,
    /// The model's result name ("model-error" when the step failed).
    result: &'static str,
    /// The model's outcome, kept for the record.
    outcome: Option<Box<StepOutcome>>,
    hp: Option<HostPage>,
    decision: Decision,
    /// The store's contents for the page, taken out for the `UFFDIO_COPY`.
    data: Option<Box<[u8; store::PAGE]>>,
    model_ns: u64,
    t0: Instant,
    write: bool,
    wp: bool,
    minor: bool,
    thread_id: u32,
}

/// What [`Live::prepare`] made of an event.
enum Prepared {
    /// Another resolver has the page in flight: try again once it is done.
    Busy,
    /// Handled (woken, counted) without a model step.
    Done,
    /// Resolved by the model: apply it.
    Job(Box<Job>),
}

/// The uffd ioctls one fault's resolution issued, counted in the summary afterwards.
#[derive(Debug, Default)]
struct Ioctls {
    names: [&'static str; 4],
    n: usize,
}

impl Ioctls {
    fn push(&mut self, name: &'static str) {
        if let Some(slot) = self.names.get_mut(self.n) {
            *slot = name;
            self.n += 1;
        }
    }

    fn names(&self) -> &[&'static str] {
        &self.names[..self.n]
    }
}

/// Adds one to `m[k]`, allocating the key only the first time.
fn bump(m: &mut BTreeMap<String, u64>, k: &str) {
    match m.get_mut(k) {
        Some(v) => *v += 1,
        None => {
            m.insert(k.to_string(), 1);
        }
    }
}

/// The source of a `UFFDIO_COPY` for a page the store holds nothing for.
static ZEROS: [u8; store::PAGE] = [0; store::PAGE];

/// The actuator's decision for one fault, and what it noticed on the way.
#[derive(Debug, Clone, Copy)]
struct Decision {
    action: Action,
    /// Served from the store although the model maps the zero page.
    restore: bool,
    /// A WP fault after which the model keeps the page read-only.
    read_only_after_write: bool,
    /// The model left the page unmapped (served anyway).
    unmapped: bool,
}

fn level_bytes(l: Level) -> u64 {
    match l {
        Level::Pte4K => 4 << 10,
        Level::Pmd2M => 2 << 20,
        Level::Pud1G => 1 << 30,
    }
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::Pte4K => "4K",
        Level::Pmd2M => "2M",
        Level::Pud1G => "1G",
    }
}

fn hex_of(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}

/// What the actuator does for one fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Zeropage { wp: bool },
    Copy { wp: bool, from_store: bool },
    Continue { wp: bool },
    Unprotect,
}

impl Action {
    fn describe(self) -> String {
        match self {
            Action::Zeropage { wp: false } => "UFFDIO_ZEROPAGE 4K".into(),
            Action::Zeropage { wp: true } => "UFFDIO_ZEROPAGE 4K + UFFDIO_WRITEPROTECT".into(),
            Action::Copy { wp, from_store } => format!(
                "UFFDIO_COPY 4K{}{}",
                if wp { " MODE_WP" } else { "" },
                if from_store { " (source store)" } else { "" }
            ),
            Action::Continue { wp: false } => "UFFDIO_CONTINUE 4K".into(),
            Action::Continue { wp: true } => "UFFDIO_CONTINUE 4K MODE_WP".into(),
            Action::Unprotect => "UFFDIO_WRITEPROTECT off 4K".into(),
        }
    }
}

/// Runs `vmm` live: registers guest RAM with userfaultfd, serves every fault through the
/// model, applies the injected events, writes the recording; returns when the guest ends.
pub fn run(vmm: Vmm, backing: Backing, opts: &LiveOptions) -> Result<LiveOutcome, LiveError> {
    if let Some(why) = unsupported_backing(backing) {
        return Err(LiveError::Backing { backing, why });
    }
    let env = CheckEnv::read();
    let (model_opts, rules) = host_model_options(opts.kernel_rules, &env);
    let regions = RamRegion::of(vmm.guest_memory());
    let (mirror_text, mirror) = mirror::mirror(&regions, backing, &model_opts)?;
    let mut runner = ScenarioRunner::new(
        &mirror,
        &ModelOptions {
            bug: None,
            ..model_opts
        },
    )?;
    // The real pages hold the data; the model's contents prediction would cost a walk of
    // every mapped page per fault.
    runner.set_track_contents(false);
    for e in &opts.inject {
        if let Some((gpa, len)) = e.range {
            if mirror::hva_range(&regions, gpa, len).is_none() {
                return Err(LiveError::Range {
                    kind: e.kind.name(),
                    gpa,
                    len,
                    ram: regions
                        .iter()
                        .map(|r| format!("{:#x}+{:#x}", r.gpa, r.size))
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
    }
    let uerr = |what: &str| {
        let what = what.to_string();
        move |source| LiveError::Uffd { what, source }
    };
    let probe = Uffd::new(0, true).map_err(uerr("opening a userfaultfd"))?;
    let avail = probe.available_features();
    drop(probe);
    let mut features = uffd_sys::FEATURE_THREAD_ID & avail;
    if backing == Backing::Shmem {
        for (f, name) in [
            (
                uffd_sys::FEATURE_MISSING_SHMEM,
                "UFFD_FEATURE_MISSING_SHMEM",
            ),
            (uffd_sys::FEATURE_MINOR_SHMEM, "UFFD_FEATURE_MINOR_SHMEM"),
        ] {
            if avail & f == 0 {
                return Err(LiveError::Backing {
                    backing,
                    why: format!("this kernel's userfaultfd lacks {name}"),
                });
            }
            features |= f;
        }
        features |= uffd_sys::FEATURE_WP_HUGETLBFS_SHMEM & avail;
    }
    let parts = split_parts(&regions, &opts.split)?;
    let n_uffds = parts.iter().map(|p| p.0 + 1).max().unwrap_or(1);
    let uffds = (0..n_uffds)
        .map(|_| Uffd::new(features, true).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()
        .map_err(uerr("opening a userfaultfd"))?;
    let mut summary = LiveSummary {
        rules,
        ..LiveSummary::default()
    };
    // What is already present (the loaded payload): tell the model, before registering.
    let pagemap = match PageMap::open() {
        Ok(p) => Some(p),
        Err(e) => {
            summary.note(format!("pagemap unavailable, real pages not compared: {e}"));
            None
        }
    };
    let header = RecordHeader {
        format: mmu::record::RECORD_FORMAT,
        faultline: env!("CARGO_PKG_VERSION").to_string(),
        kernel_rules: runner.kernel(),
        host_kernel: env.host.kernel_release.value.clone().unwrap_or_default(),
        backing: backing.name().to_string(),
        vcpus: vmm.vcpu_count(),
        guest: opts.guest.clone(),
        scenario: mirror_text,
    };
    let writer = match &opts.record {
        Some(p) => Some(record::RecordWriter::create(p, &header)?),
        None => None,
    };
    let base_modes = match backing {
        Backing::Shmem => RegisterModes(RegisterModes::MISSING.0 | RegisterModes::MINOR.0),
        _ => RegisterModes::MISSING,
    };
    let mut wp = true;
    let with_wp = RegisterModes(base_modes.0 | RegisterModes::WP.0);
    for (i, &(u, hva, len)) in parts.iter().enumerate() {
        let (addr, len) = (hva as usize, len as usize);
        if wp && uffds[u].register(addr, len, with_wp).is_ok() {
            continue;
        }
        if wp {
            wp = false;
            // Ranges registered with WP before stay so; drop them to register uniformly.
            for &(du, dhva, dlen) in &parts[..i] {
                let _ = uffds[du].unregister(dhva as usize, dlen as usize);
                uffds[du]
                    .register(dhva as usize, dlen as usize, base_modes)
                    .map_err(uerr("registering guest RAM"))?;
            }
            summary.note(format!(
                "UFFDIO_REGISTER_MODE_WP is not available for {} here: a first write after a read is not seen",
                backing.name()
            ));
        }
        uffds[u]
            .register(addr, len, base_modes)
            .map_err(uerr("registering guest RAM"))?;
    }
    // tracefs is read only around injected events. Without any, no session is started: its
    // pid filter hooks every context switch and wake-up of the machine (the sched_switch /
    // sched_wakeup probes of set_event_pid), and each fault's ioctl wakes a vCPU.
    let trace = match TraceSession::start(PidFilter::ThisProcess) {
        _ if opts.inject.is_empty() => None,
        Ok(mut t) => {
            t.set_hva_ranges(regions.iter().map(|r| r.hva..r.hva + r.size).collect());
            Some(t)
        }
        Err(e) => {
            summary.note(format!(
                "tracefs unavailable, notifier ranges not compared: {e}"
            ));
            None
        }
    };
    let resolvers = match opts.resolvers {
        0 => (vmm.vcpu_count() as usize).max(uffds.len()),
        n => n,
    }
    .max(1);
    summary.resolvers = resolvers as u64;
    summary.uffds = uffds.len() as u64;
    let mut live = Live {
        runner,
        uffds,
        parts,
        regions,
        backing,
        wp,
        store: store::SourceStore::default(),
        wp_pages: HashSet::new(),
        pagemap: pagemap.map(Arc::new),
        trace,
        writer,
        summary,
        tally: Tally::default(),
        start: Instant::now(),
        verify: !opts.no_verify,
        busy_poll: opts.busy_poll,
        steps: 0,
        vcpu_tids: Vec::new(),
        phases: None,
    };
    live.tell_present();
    let (profile, events) = (opts.profile, opts.inject.clone());
    let (outcome, live) = vmm.run_with(move |h| {
        live.start = Instant::now();
        let shared = Shared {
            gate: RwLock::new(()),
            uffds: live.uffds.clone(),
            pagemap: live.pagemap.clone(),
            verify: live.verify,
            busy_poll: live.busy_poll,
            resolvers,
            start: live.start,
            in_flight: (0..resolvers).map(|_| AtomicU64::new(0)).collect(),
            live: Mutex::new(live),
        };
        std::thread::scope(|s| {
            let shared = &shared;
            let helpers: Vec<_> = (1..resolvers)
                .map(|i| {
                    std::thread::Builder::new()
                        .name(format!("live-resolver{i}"))
                        .spawn_scoped(s, move || Resolver::new(shared, i, profile, None).serve(h))
                })
                .collect();
            Resolver::new(shared, 0, profile, Some((Timer::new(&events), events))).serve(h);
            for t in helpers {
                let failed = match t {
                    Ok(j) => j
                        .join()
                        .err()
                        .map(|_| "a live resolver thread panicked".to_string()),
                    // The others serve its share: they all read the one uffd.
                    Err(e) => Some(format!("spawning a live resolver thread failed: {e}")),
                };
                if let Some(f) = failed {
                    lock_live(&shared.live).summary.error(f);
                }
            }
        });
        shared
            .live
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
    })?;
    let Some(live) = live else {
        return Err(LiveError::Vmm(VmmError::EventLoop(
            "the live-mode fault server panicked".into(),
        )));
    };
    let Live {
        writer,
        mut summary,
        tally,
        runner,
        phases,
        ..
    } = live;
    summary.model = tally.summary(runner.kernel());
    summary.phases = phases;
    if let Some(w) = writer {
        w.finish()?;
    }
    Ok(LiveOutcome { outcome, summary })
}

/// How long a resolver spins for the live state's lock before it sleeps on it.
const LOCK_SPIN: Duration = Duration::from_micros(50);

/// Locks the live state; a resolver that panicked while holding it leaves it usable (its
/// fault is lost, the counters stand).
///
/// The lock is held for a model step (1-2 µs), so a resolver spins for it first: a
/// sleeping waiter is woken by the holder's unlock, and that wake-up pulls the two
/// resolvers, and then their vCPUs (woken by the resolvers' ioctls), onto one CPU (wake
/// affinity). `bench faults --live -v 2`, 3 x 10 alternating pairs each, load 3.3-3.5:
/// 0.92-0.93x plain with the spin, 0.81-0.89x with the std lock alone.
fn lock_live(m: &Mutex<Live>) -> MutexGuard<'_, Live> {
    let mut t0 = None;
    loop {
        for _ in 0..64 {
            match m.try_lock() {
                Ok(g) => return g,
                Err(std::sync::TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => std::hint::spin_loop(),
            }
        }
        if t0.get_or_insert_with(Instant::now).elapsed() > LOCK_SPIN {
            return m.lock().unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Live {
    fn t_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn write(&mut self, rec: FaultRecord) {
        if let Some(w) = self.writer.as_mut() {
            if let Err(e) = w.write(rec) {
                self.summary.error(e.to_string());
                self.writer = None;
            }
        }
    }

    /// The seq of the next record (or the step count without a recording), taken: the
    /// caller hands the record in with [`Live::write_at`].
    fn reserve_seq(&mut self) -> u64 {
        match self.writer.as_mut() {
            Some(w) => w.reserve(),
            None => self.steps,
        }
    }

    /// Hands in the record of a reserved seq (its resolution made from the model's
    /// `outcome` by the writer thread, when given).
    fn write_at(&mut self, seq: u64, rec: FaultRecord, outcome: Option<Box<StepOutcome>>) {
        if let Some(w) = self.writer.as_mut() {
            let r = match outcome {
                Some(o) => w.write_outcome_reserved(seq, rec, o),
                None => w.write_reserved(seq, rec),
            };
            if let Err(e) = r {
                self.summary.error(e.to_string());
                self.writer = None;
            }
        }
    }

    /// Tells the model about the pages present before registration (populate-write runs).
    fn tell_present(&mut self) {
        let Some(pm) = self.pagemap.as_ref() else {
            self.summary
                .note("without pagemap the model does not know which pages the loader wrote");
            return;
        };
        let mut runs = Vec::new();
        for r in &self.regions {
            let n = (r.size / PAGE) as usize;
            let Ok(entries) = pm.entries(r.hva, n) else {
                continue;
            };
            let mut i = 0;
            while i < n {
                if !entries[i].present() {
                    i += 1;
                    continue;
                }
                let s = i;
                while i < n && entries[i].present() {
                    i += 1;
                }
                runs.push((r.hva + s as u64 * PAGE, (i - s) as u64 * PAGE));
            }
        }
        for (start, size) in runs {
            self.summary.present_at_start += size / PAGE;
            let step = Step::Madvise(MadviseStep {
                start: Num(start),
                size: Num(size),
                advice: MadviseAdvice::PopulateWrite,
                race: false,
            });
            let model = self.push(step.clone());
            let rec = FaultRecord {
                seq: 0,
                t_ns: 0,
                step,
                uffd: None,
                hva: Some(start),
                model,
                applied: Some("already present before registration (loaded by the VMM)".into()),
                model_only: false,
                real: None,
                disagreements: vec![],
            };
            self.write(rec);
        }
    }

    /// Runs one step on the model; an error is reported and gives a "model-error" result.
    fn push(&mut self, step: Step) -> Resolution {
        match self.push_record(step) {
            Some(r) => Resolution::from(&r),
            None => Resolution {
                result: "model-error".into(),
                ..Resolution::default()
            },
        }
    }

    /// Runs one step on the model and counts it in the summary; an error is reported and
    /// gives `None`.
    fn push_record(&mut self, step: Step) -> Option<StepRecord> {
        self.steps += 1;
        match self.runner.push(step) {
            Ok(r) => {
                self.tally.add(self.runner.outcome());
                Some(r)
            }
            Err(e) => {
                self.summary.error(format!("model: {e}"));
                None
            }
        }
    }

    /// `[hva, hva + len)` cut into the pieces each uffd serves: `(uffd index, hva, len)`.
    fn pieces(&self, hva: u64, len: u64) -> Vec<(usize, u64, u64)> {
        let end = hva.saturating_add(len);
        self.parts
            .iter()
            .filter_map(|&(u, s, l)| {
                let (a, b) = (s.max(hva), (s + l).min(end));
                (a < b).then_some((u, a, b - a))
            })
            .collect()
    }

    fn region_of(&self, hva: u64) -> Option<RamRegion> {
        self.regions
            .iter()
            .copied()
            .find(|r| r.gpa_of(hva).is_some())
    }

    /// The vCPU whose thread raised a fault (`None` for the VMM's own threads); looks the
    /// thread ids up again only when `tid` is not among those seen so far.
    fn vcpu_of(&mut self, tid: u32, h: &VmHandle<'_>) -> Option<u32> {
        if tid == 0 {
            return None;
        }
        let find = |ids: &[u32]| ids.iter().position(|t| *t == tid);
        let i = match find(&self.vcpu_tids) {
            Some(i) => i,
            None => {
                self.vcpu_tids = h.vcpu_thread_ids();
                find(&self.vcpu_tids)?
            }
        };
        u32::try_from(i).ok()
    }

    /// What the actuator does for a fault, from the model's host page after the step (`hp`)
    /// and whether the store holds data for the page.
    fn decide(&self, hp: Option<HostPage>, wp: bool, minor: bool, has_data: bool) -> Decision {
        let read_only = hp.is_some_and(|p| !p.writable);
        let mut d = Decision {
            action: Action::Unprotect,
            restore: false,
            read_only_after_write: false,
            unmapped: false,
        };
        d.action = if wp {
            d.read_only_after_write = read_only;
            Action::Unprotect
        } else if minor {
            Action::Continue {
                wp: self.wp && read_only,
            }
        } else if self.backing == Backing::Shmem {
            // shmem's UFFDIO_ZEROPAGE allocates a zeroed page-cache page (no zero page).
            Action::Zeropage {
                wp: self.wp && read_only,
            }
        } else {
            match hp.map(|p| p.kind) {
                Some(HostPageKind::Zero | HostPageKind::HugeZero) if !has_data => {
                    Action::Zeropage { wp: self.wp }
                }
                Some(HostPageKind::Zero | HostPageKind::HugeZero) => {
                    d.restore = true;
                    Action::Copy {
                        wp: self.wp,
                        from_store: true,
                    }
                }
                Some(_) => Action::Copy {
                    wp: self.wp && read_only,
                    from_store: has_data,
                },
                None => {
                    d.unmapped = true;
                    if has_data {
                        Action::Copy {
                            wp: false,
                            from_store: true,
                        }
                    } else {
                        Action::Zeropage { wp: false }
                    }
                }
            }
        };
        d
    }

    /// The first half of serving one page fault, under the lock: the checks, the model's
    /// step, the decision from its host page. What the guest waits for beyond this is the
    /// ioctl, which the resolver issues after dropping the lock.
    #[allow(clippy::too_many_arguments)]
    fn prepare(
        &mut self,
        page: u64,
        write: bool,
        wp: bool,
        minor: bool,
        thread_id: u32,
        uffd: &Uffd,
        h: &VmHandle<'_>,
        in_flight: (&[AtomicU64], usize),
        prof: &mut profile::Profiler,
    ) -> Prepared {
        let (slots, me) = in_flight;
        if slots.iter().any(|s| s.load(Ordering::Acquire) == page + 1) {
            return Prepared::Busy;
        }
        self.summary.uffd_events += 1;
        let Some(region) = self.region_of(page) else {
            self.summary
                .error(format!("fault at {page:#x} outside guest RAM: woken"));
            let _ = uffd.wake(page as usize, PAGE as usize);
            return Prepared::Done;
        };
        if wp && !self.wp_pages.contains(&page) {
            // Dropped by an injected event after the fault was queued: the thread faults
            // again (MISSING) once woken.
            self.summary.stale_events += 1;
            self.summary.ioctl("UFFDIO_WAKE");
            let _ = uffd.wake(page as usize, PAGE as usize);
            return Prepared::Done;
        }
        let gpa = region.gpa_of(page).unwrap_or(0);
        let vcpu = self.vcpu_of(thread_id, h);
        let step = if write || wp {
            Step::Write(WriteStep {
                gpa: Num(gpa),
                vcpu,
                mmio: false,
                race: false,
                value: None,
            })
        } else {
            Step::Read(GuestStep {
                gpa: Num(gpa),
                vcpu,
                mmio: false,
                race: false,
            })
        };
        // The seq is the model's order: taken with the step, under the same lock.
        let seq = self.reserve_seq();
        // The record needs the step after the model has taken it.
        let kept = self.writer.is_some().then(|| step.clone());
        prof.lap(profile::Phase::Prepare);
        let t0 = Instant::now();
        // The typed outcome only: the step record's strings are made for the recording,
        // by its writer thread.
        self.steps += 1;
        let (result, outcome) = match self.runner.push_outcome(step) {
            Ok(o) => {
                self.tally.add(o);
                let kept = self.writer.is_some().then(|| Box::new(o.clone()));
                (o.result.name(), kept)
            }
            Err(e) => {
                self.summary.error(format!("model: {e}"));
                ("model-error", None)
            }
        };
        let model_ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(0);
        prof.lap(profile::Phase::Model);
        let hp = self.runner.host_page(Hva(page));
        let decision = self.decide(hp, wp, minor, self.store.get(page).is_some());
        let data = match decision.action {
            Action::Copy {
                from_store: true, ..
            } => self.store.take(page),
            _ => None,
        };
        match decision.action {
            Action::Zeropage { wp: true }
            | Action::Copy { wp: true, .. }
            | Action::Continue { wp: true } => {
                self.wp_pages.insert(page);
            }
            Action::Unprotect => {
                self.wp_pages.remove(&page);
            }
            _ => {}
        }
        if let Some(s) = slots.get(me) {
            s.store(page + 1, Ordering::Release);
        }
        prof.lap(profile::Phase::Decide);
        Prepared::Job(Box::new(Job {
            page,
            gpa,
            seq,
            step: kept,
            result,
            outcome,
            hp,
            decision,
            data,
            model_ns,
            t0,
            write,
            wp,
            minor,
            thread_id,
        }))
    }

    /// The second half, under the lock again once the guest runs on: the summary's
    /// counters, the store and WP bookkeeping of a failed ioctl, the disagreements, the
    /// record.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &mut self,
        job: Job,
        installed: Result<bool, String>,
        ioctls: &Ioctls,
        real: Option<RealPage>,
        page_dis: Option<String>,
        (critical_ns, serve_ns, t_ns): (u64, u64, u64),
        prof: &mut profile::Profiler,
    ) {
        let Job {
            page,
            gpa,
            seq,
            step,
            result,
            outcome,
            hp,
            decision,
            data,
            model_ns,
            write,
            wp,
            minor,
            thread_id,
            ..
        } = job;
        let action = decision.action;
        for name in ioctls.names() {
            self.summary.ioctl(name);
        }
        if installed != Ok(true) {
            if let Some(d) = data {
                self.store.put_back(page, d);
            }
        }
        if let Err(e) = &installed {
            self.summary.error(e.clone());
            if action == Action::Unprotect {
                // Still protected: its next WP event must not be taken as stale.
                self.wp_pages.insert(page);
            }
        }
        self.summary.critical_ns += critical_ns;
        self.summary.model_ns += model_ns;
        self.summary.model_resolutions += 1;
        if decision.restore {
            self.summary.store_restores += 1;
        }
        let mismatch = hp
            .map(|p| p.leaf)
            .filter(|l| level_bytes(*l) > PAGE && action != Action::Unprotect);
        if mismatch.is_some() {
            self.summary.size_mismatches += 1;
        }
        let mut disagreements = Vec::new();
        if decision.read_only_after_write {
            disagreements.push("the model keeps the page read-only after the write".to_string());
        }
        if decision.unmapped {
            disagreements.push(format!(
                "the model left the page unmapped ({result}); served anyway"
            ));
        }
        if real.is_some() {
            self.summary.pages_compared += 1;
        }
        disagreements.extend(page_dis);
        self.summary.serve_ns += serve_ns;
        for d in &disagreements {
            self.summary.disagree(Disagreement {
                step: seq,
                gfn: Some(gpa / PAGE),
                what: d.clone(),
            });
        }
        prof.lap(profile::Phase::Account);
        let Some(step) = step else {
            return;
        };
        let model = match outcome {
            Some(_) => Resolution::default(),
            None => Resolution {
                result: result.into(),
                ..Resolution::default()
            },
        };
        let mut applied = action.describe();
        if let Some(l) = mismatch {
            applied += &format!(" (model maps {})", level_name(l));
        }
        if let Err(e) = &installed {
            applied += &format!(" failed: {e}");
        }
        let flags = u64::from(write) | (u64::from(wp) << 1) | (u64::from(minor) << 2);
        let kind = if wp {
            "wp"
        } else if minor {
            "minor"
        } else {
            "missing"
        };
        let record = FaultRecord {
            seq,
            t_ns,
            step,
            uffd: Some(UffdEventRecord {
                kind: kind.into(),
                flags,
                address: page,
                tid: (thread_id != 0).then_some(thread_id),
            }),
            hva: Some(page),
            model,
            applied: Some(applied),
            model_only: false,
            real,
            disagreements,
        };
        // The resolution's strings are made by the writer thread.
        self.write_at(seq, record, outcome);
        prof.lap(profile::Phase::Record);
    }

    /// Copies the present pages of `[hva, hva + len)` into the store (anon: DONTNEED loses
    /// them otherwise). Reads only pages pagemap says are present, so the server never
    /// faults on a registered page.
    fn save_present(&mut self, hva: u64, len: u64) {
        let Some(pm) = self.pagemap.as_ref() else {
            self.summary
                .note("without pagemap, data of dropped pages is not kept (guest sees zeros)");
            return;
        };
        let n = (len / PAGE) as usize;
        let Ok(entries) = pm.entries(hva, n) else {
            return;
        };
        let mut buf = [0u8; store::PAGE];
        for (i, e) in entries.iter().enumerate() {
            let page = hva + i as u64 * PAGE;
            if !e.present() {
                continue;
            }
            // SAFETY: the page is inside guest RAM and present (pagemap), so reading it
            // cannot fault into this uffd; the guest may write it concurrently unless it is
            // write-protected (the caller protects the range first), and a torn read only
            // affects guest data, never this process.
            unsafe {
                std::ptr::copy_nonoverlapping(page as *const u8, buf.as_mut_ptr(), store::PAGE)
            };
            self.store.save(page, &buf);
        }
    }

    fn drain_trace(&mut self) -> Option<Vec<(u64, u64)>> {
        let t = self.trace.as_mut()?;
        match t.drain() {
            Ok(b) => Some(
                b.records
                    .iter()
                    .filter_map(|r| match r.event {
                        TraceEvent::UnmapHvaRange { start, end } => Some((start, end)),
                        _ => None,
                    })
                    .collect(),
            ),
            Err(e) => {
                let msg = format!("reading tracefs failed: {e}");
                self.summary.note(msg);
                None
            }
        }
    }

    fn inject(&mut self, ev: &Injection, h: &VmHandle<'_>) {
        let seq = self.reserve_seq();
        let range = ev
            .range
            .and_then(|(g, l)| mirror::hva_range(&self.regions, g, l));
        let (hva, len) = range.unwrap_or((0, 0));
        *self
            .summary
            .injected
            .entry(ev.kind.name().into())
            .or_default() += 1;
        let anon = matches!(self.backing, Backing::Anon | Backing::Thp);
        if matches!(ev.kind, EventKind::Dontneed) && anon && self.wp {
            // Writes wait while the data is copied out, so none is lost.
            self.summary.ioctl("UFFDIO_WRITEPROTECT");
            for (u, a, l) in self.pieces(hva, len) {
                if let Err(e) = self.uffds[u].writeprotect(a as usize, l as usize, true) {
                    self.summary.error(e.to_string());
                }
            }
        }
        let _ = self.drain_trace();
        let mut child = None;
        let (step, applied) = match ev.kind {
            EventKind::Dontneed => {
                if anon {
                    self.save_present(hva, len);
                }
                // SAFETY: the range is guest RAM; DONTNEED drops pages the store (anon) or the
                // page cache (shmem) still has, never memory this process relies on.
                let rc = unsafe {
                    libc::madvise(hva as *mut libc::c_void, len as usize, libc::MADV_DONTNEED)
                };
                (
                    Step::Madvise(MadviseStep {
                        start: Num(hva),
                        size: Num(len),
                        advice: MadviseAdvice::Dontneed,
                        race: false,
                    }),
                    errno_text("madvise(MADV_DONTNEED)", rc),
                )
            }
            EventKind::ThpCollapse => {
                // SAFETY: as above; MADV_COLLAPSE keeps the contents.
                let rc = unsafe {
                    libc::madvise(hva as *mut libc::c_void, len as usize, libc::MADV_COLLAPSE)
                };
                (
                    Step::Madvise(MadviseStep {
                        start: Num(hva),
                        size: Num(len),
                        advice: MadviseAdvice::Collapse,
                        race: false,
                    }),
                    errno_text("madvise(MADV_COLLAPSE)", rc),
                )
            }
            EventKind::Aging => (
                Step::ClearFlushYoung(Range {
                    start: Num(hva),
                    size: Num(len),
                }),
                String::new(),
            ),
            EventKind::NumaScan => (
                Step::NumaScan(RaceRange {
                    start: Num(hva),
                    size: Num(len),
                    race: false,
                }),
                String::new(),
            ),
            EventKind::Fork => {
                let applied = match crate::check::space::ForkChild::spawn() {
                    Ok(c) => {
                        child = Some(c);
                        "fork()".to_string()
                    }
                    Err(e) => format!("fork() failed: {e}"),
                };
                (Step::Fork(ForkStep { race: false }), applied)
            }
            EventKind::DirtyLogOn | EventKind::DirtyLogOff => {
                let on = ev.kind == EventKind::DirtyLogOn;
                let mut applied = Vec::new();
                for r in self.regions.clone() {
                    let flags = crate::vstate::vm::MemslotFlags {
                        readonly: false,
                        dirty_log: on,
                    };
                    match h.vm().set_memslot(r.slot, r.gpa, r.size, r.hva, flags) {
                        Ok(()) => applied.push(format!("slot {} dirty-log {on}", r.slot)),
                        Err(e) => applied.push(format!("slot {} failed: {e}", r.slot)),
                    }
                }
                // The model's slots are the same ids; one step per slot.
                for r in self.regions.clone().iter().skip(1) {
                    let _ = self.push(memslot_flags_step(r.slot, on));
                }
                (
                    memslot_flags_step(self.regions[0].slot, on),
                    applied.join(", "),
                )
            }
        };
        let model_only = ev.kind.model_only();
        let rec = self.push_record(step.clone());
        let model = rec.as_ref().map(Resolution::from).unwrap_or_default();
        let real_ranges = self.drain_trace();
        drop(child);
        let mut disagreements = Vec::new();
        if let (None, Some(real)) = (model_only, real_ranges) {
            let mut want: Vec<(u64, u64)> = rec
                .as_ref()
                .map(|r| {
                    r.notifiers
                        .iter()
                        .filter_map(|n| Some((hex_of(&n.start)?, hex_of(&n.end)?)))
                        .collect()
                })
                .unwrap_or_default();
            let mut got = real;
            want.sort_unstable();
            want.dedup();
            got.sort_unstable();
            got.dedup();
            self.summary.notifiers_compared += 1;
            if want != got {
                let show = |v: &[(u64, u64)]| {
                    v.iter()
                        .map(|(s, e)| format!("[{s:#x},{e:#x})"))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                disagreements.push(format!(
                    "notifiers: model {}, real (kvm_unmap_hva_range) {}",
                    show(&want),
                    show(&got)
                ));
            }
        }
        if matches!(ev.kind, EventKind::Dontneed) {
            self.wp_pages.retain(|p| *p < hva || *p >= hva + len);
            if anon && self.wp {
                self.summary.ioctl("UFFDIO_WAKE");
                for (u, a, l) in self.pieces(hva, len) {
                    let _ = self.uffds[u].wake(a as usize, l as usize);
                }
            }
        }
        if model_only.is_some() {
            self.summary.model_only += 1;
        }
        for d in &disagreements {
            self.summary.disagree(Disagreement {
                step: seq,
                gfn: None,
                what: format!("{}: {d}", ev.kind.name()),
            });
        }
        let applied = model_only.map(str::to_string).unwrap_or(applied);
        let t_ns = self.t_ns();
        self.write_at(
            seq,
            FaultRecord {
                seq,
                t_ns,
                step,
                uffd: None,
                hva: range.map(|r| r.0),
                model,
                applied: Some(applied),
                model_only: model_only.is_some(),
                real: None,
                disagreements,
            },
            None,
        );
    }
}

/// One resolver thread: reads uffd events and serves each (model step and decision under
/// the lock, the ioctl outside it). Resolver 0 also fires the injected events.
struct Resolver<'a> {
    shared: &'a Shared,
    /// This resolver's slot in [`Shared::in_flight`].
    index: usize,
    prof: profile::Profiler,
    /// The injections and their clock (resolver 0 only).
    timers: Option<(Timer, Vec<Injection>)>,
    /// A served fault not accounted for yet: its counters and record are added the next
    /// time this resolver holds the lock anyway (one lock per fault, not two).
    pending: Option<Served>,
}

/// A fault whose ioctl and page check are done, waiting for [`Live::finish`].
struct Served {
    job: Box<Job>,
    installed: Result<bool, String>,
    ioctls: Ioctls,
    real: Option<RealPage>,
    page_dis: Option<String>,
    critical_ns: u64,
    serve_ns: u64,
    /// When it was served (ns since the guest started), for the record.
    t_ns: u64,
}

impl<'a> Resolver<'a> {
    fn new(
        shared: &'a Shared,
        index: usize,
        profile: bool,
        timers: Option<(Timer, Vec<Injection>)>,
    ) -> Self {
        Resolver {
            shared,
            index,
            prof: profile::Profiler::new(profile),
            timers,
            pending: None,
        }
    }

    /// The live state, locked, with this resolver's pending fault accounted for; the wait
    /// counts as [`profile::Phase::Lock`].
    fn lock(&mut self) -> MutexGuard<'a, Live> {
        let mut g = lock_live(&self.shared.live);
        self.prof.lap(profile::Phase::Lock);
        if let Some(p) = self.pending.take() {
            g.finish(
                *p.job,
                p.installed,
                &p.ioctls,
                p.real,
                p.page_dis,
                (p.critical_ns, p.serve_ns, p.t_ns),
                &mut self.prof,
            );
        }
        g
    }

    /// The loop: uffd events (and, on resolver 0, due injections) until the VM stops.
    fn serve(mut self, h: &VmHandle<'_>) {
        let sh = self.shared;
        let (n_res, n_uffd) = (sh.resolvers.max(1), sh.uffds.len().max(1));
        // The uffds this resolver reads: its own when there are as many resolvers as
        // uffds, one shared with others when there are more, several when fewer.
        let mine: Vec<usize> = if n_res >= n_uffd {
            vec![self.index % n_uffd]
        } else {
            (0..n_uffd).filter(|u| u % n_res == self.index).collect()
        };
        let shared_uffd = n_res > n_uffd;
        // With several resolvers on one uffd each read takes one event, so the next event
        // goes to another resolver while this one waits for its ioctl.
        let per_read = if shared_uffd { 1 } else { 64 };
        let mut buf = vec![0u8; uffd_sys::MSG_SIZE * per_read];
        let mut pfds: Vec<libc::pollfd> = mine
            .iter()
            .map(|&u| libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&*sh.uffds[u]),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // Several resolvers waiting in poll() on one uffd would all wake for each fault
        // (handle_userfault wakes the uffd's whole wait queue); an epoll instance per
        // resolver with EPOLLEXCLUSIVE wakes one waiting resolver per fault instead.
        let epoll = if shared_uffd && !sh.busy_poll {
            match exclusive_epoll(pfds[0].fd) {
                Ok(e) => Some(e),
                Err(e) => {
                    self.lock().summary.note(format!(
                        "EPOLLEXCLUSIVE wait unavailable ({e}): every resolver wakes for every fault"
                    ));
                    None
                }
            }
        } else {
            None
        };
        if self.index > 0 {
            // A thread of its own, set up: filter from here (resolver 0 is the controller,
            // which injects host events, and stays unfiltered).
            if let Err(e) = h.seccomp().apply(crate::seccomp::ThreadKind::LiveResolver) {
                self.lock()
                    .summary
                    .note(format!("live-resolver{} runs unfiltered: {e}", self.index));
            }
        }
        while !h.stopped() {
            let wait = match &self.timers {
                Some((t, _)) => t
                    .next_due()
                    .map_or(Duration::from_millis(20), |d| {
                        d.saturating_sub(sh.start.elapsed())
                    })
                    .min(Duration::from_millis(20)),
                None => Duration::from_millis(20),
            };
            self.prof.lap(profile::Phase::Loop);
            let ms = libc::c_int::try_from(wait.as_millis()).unwrap_or(20);
            let mut ready = true;
            if let Some(ep) = &epoll {
                let mut ev = libc::epoll_event { events: 0, u64: 0 };
                // SAFETY: `ep` is an epoll fd this thread owns; one event slot, valid for the
                // duration of the call.
                let n = unsafe {
                    libc::epoll_wait(std::os::fd::AsRawFd::as_raw_fd(ep), &mut ev, 1, ms)
                };
                ready = n > 0;
                self.prof.lap(profile::Phase::Wait);
            } else if !sh.busy_poll {
                for p in &mut pfds {
                    p.revents = 0;
                }
                let n = libc::nfds_t::try_from(pfds.len()).unwrap_or(1);
                // SAFETY: `pfds` is a valid array of `n` pollfds for the duration of the call.
                let rc = unsafe { libc::poll(pfds.as_mut_ptr(), n, ms) };
                ready = rc > 0;
                self.prof.lap(profile::Phase::Wait);
            }
            let mut got = 0;
            for (k, &u) in mine.iter().enumerate() {
                let polled = epoll.is_none() && !sh.busy_poll;
                if !ready || (polled && pfds[k].revents == 0) {
                    continue;
                }
                match sh.uffds[u].read_events(&mut buf) {
                    Ok(events) if events.is_empty() => self.prof.lap(profile::Phase::Wait),
                    Ok(events) => {
                        got += events.len();
                        self.prof.lap(profile::Phase::Read);
                        for ev in events {
                            self.handle(ev, u, h);
                        }
                    }
                    Err(e) => {
                        self.prof.lap(profile::Phase::Read);
                        self.lock()
                            .summary
                            .error(format!("reading uffd events: {e}"));
                        std::thread::sleep(Duration::from_millis(1));
                        self.prof.lap(profile::Phase::Wait);
                    }
                }
            }
            if sh.busy_poll && got == 0 {
                // A sweep of every uffd found nothing: let a vCPU on this core run.
                // SAFETY: sched_yield has no preconditions.
                unsafe { libc::sched_yield() };
                self.prof.lap(profile::Phase::Wait);
            }
            let due: Vec<Injection> = match self.timers.as_mut() {
                Some((t, evs)) => t
                    .due(evs, sh.start.elapsed())
                    .into_iter()
                    .map(|i| evs[i].clone())
                    .collect(),
                None => Vec::new(),
            };
            for ev in due {
                self.prof.lap(profile::Phase::Loop);
                let mut live = self.lock();
                // No fault between its decision and its page check from here on.
                let gate = sh.gate.write().unwrap_or_else(PoisonError::into_inner);
                live.inject(&ev, h);
                drop(gate);
                drop(live);
                self.prof.lap(profile::Phase::Inject);
            }
        }
        // The last fault's counters and record.
        let mut live = self.lock();
        if self.prof.on() {
            live.phases
                .get_or_insert_with(profile::Phases::default)
                .add(&self.prof.phases);
        }
    }

    /// Serves one uffd event: the model's step and decision under the lock; the ioctl (what
    /// the guest waits for) and the page check outside it, so other resolvers' ioctls
    /// overlap; the counters and the record under the lock again.
    fn handle(&mut self, ev: UffdEvent, u: usize, h: &VmHandle<'_>) {
        let UffdEvent::Pagefault {
            addr,
            write,
            wp,
            minor,
            thread_id,
        } = ev
        else {
            self.lock()
                .summary
                .note(format!("ignored uffd event {ev:?}"));
            return;
        };
        let sh = self.shared;
        let page = addr as u64 & !(PAGE - 1);
        self.prof.lap(profile::Phase::Prepare);
        let (job, gate) = loop {
            let mut live = self.lock();
            let slots = (&sh.in_flight[..], self.index);
            let uffd = &*sh.uffds[u];
            match live.prepare(
                page,
                write,
                wp,
                minor,
                thread_id,
                uffd,
                h,
                slots,
                &mut self.prof,
            ) {
                Prepared::Busy => {
                    drop(live);
                    std::thread::yield_now();
                    self.prof.lap(profile::Phase::Lock);
                }
                Prepared::Done => {
                    drop(live);
                    self.prof.lap(profile::Phase::Prepare);
                    return;
                }
                Prepared::Job(job) => {
                    // Taken before the lock is dropped: no injected event can come between
                    // the model's step and the ioctl.
                    let gate = sh.gate.read().unwrap_or_else(PoisonError::into_inner);
                    drop(live);
                    break (job, gate);
                }
            }
        };
        let mut ioctls = Ioctls::default();
        let action = job.decision.action;
        let installed = apply(&sh.uffds[u], page, action, job.data.as_deref(), &mut ioctls);
        let critical_ns = u64::try_from(job.t0.elapsed().as_nanos()).unwrap_or(0);
        self.prof.lap(profile::Phase::Ioctl);
        self.prof.fault();
        // The guest runs again from here on.
        let (mut real, mut page_dis) = (None, None);
        if installed == Ok(true) && sh.verify {
            if let Some(pm) = sh.pagemap.as_deref() {
                if let Ok(st) = real_page(pm, page) {
                    page_dis = page_disagreement(&st, job.hp, action);
                    real = Some(st);
                }
            }
        }
        let serve_ns = u64::try_from(job.t0.elapsed().as_nanos()).unwrap_or(0);
        drop(gate);
        self.prof.lap(profile::Phase::Verify);
        // A failed ioctl puts the store's data (and a page's protection) back before the
        // page is free for another fault; a served one is accounted for later.
        let eager = installed.is_err() || (installed == Ok(false) && job.data.is_some());
        self.pending = Some(Served {
            job,
            installed,
            ioctls,
            real,
            page_dis,
            critical_ns,
            serve_ns,
            t_ns: u64::try_from(sh.start.elapsed().as_nanos()).unwrap_or(u64::MAX),
        });
        if eager {
            drop(self.lock());
        }
        if let Some(s) = sh.in_flight.get(self.index) {
            s.store(0, Ordering::Release);
        }
    }
}

/// Guest RAM cut into the ranges each uffd serves, `(uffd index, hva, len)` by hva: uffd
/// `i + 1` has the `i`th range of `split`, uffd 0 the rest.
fn split_parts(
    regions: &[RamRegion],
    split: &[(u64, u64)],
) -> Result<Vec<(usize, u64, u64)>, LiveError> {
    let mut cuts: Vec<(u64, u64, usize)> = Vec::new();
    for (i, &(gpa, len)) in split.iter().enumerate() {
        let bad = |why| LiveError::Split { gpa, len, why };
        if gpa % PAGE != 0 || len % PAGE != 0 || len == 0 {
            return Err(bad("is empty or not 4K-aligned"));
        }
        let (hva, l) = mirror::hva_range(regions, gpa, len)
            .ok_or_else(|| bad("is not inside one guest-RAM region"))?;
        if cuts.iter().any(|&(s, e, _)| hva < e && s < hva + l) {
            return Err(bad("overlaps another"));
        }
        cuts.push((hva, hva + l, i + 1));
    }
    cuts.sort_unstable();
    let mut out = Vec::new();
    for r in regions {
        let (mut at, end) = (r.hva, r.hva + r.size);
        for &(s, e, u) in cuts.iter().filter(|c| c.0 >= r.hva && c.1 <= end) {
            if s > at {
                out.push((0, at, s - at));
            }
            out.push((u, s, e - s));
            at = e;
        }
        if at < end {
            out.push((0, at, end - at));
        }
    }
    Ok(out)
}

/// A new epoll instance watching `fd` for input with `EPOLLEXCLUSIVE` (Linux 4.5+).
fn exclusive_epoll(fd: std::os::fd::RawFd) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain epoll_create1; the result is checked.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `ep` is a fresh fd nothing else owns.
    let ep = unsafe { std::os::fd::OwnedFd::from_raw_fd(ep) };
    let mut ev = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32,
        u64: 0,
    };
    // SAFETY: both fds are open; `ev` is valid for the call.
    let rc = unsafe {
        libc::epoll_ctl(
            std::os::fd::AsRawFd::as_raw_fd(&ep),
            libc::EPOLL_CTL_ADD,
            fd,
            &mut ev,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ep)
}

/// Applies `action` at `page` (`data` from the store, zeros without); `Ok(true)` when it
/// installed a page there, `Ok(false)` when another fault's resolution had (the faulting
/// thread is woken) or for a WP fault. Records the ioctls issued in `ioctls`.
fn apply(
    uffd: &Uffd,
    page: u64,
    action: Action,
    data: Option<&[u8; store::PAGE]>,
    ioctls: &mut Ioctls,
) -> Result<bool, String> {
    let (p, n) = (page as usize, PAGE as usize);
    let r = match action {
        Action::Zeropage { wp } => {
            let r = if wp {
                // SAFETY: `page` lies in guest RAM, registered with this uffd; the guest owns
                // its contents and no Rust reference points into it.
                unsafe { uffd.zeropage_dontwake(p, n) }
            } else {
                // SAFETY: as above.
                unsafe { uffd.zeropage(p, n) }
            };
            ioctls.push("UFFDIO_ZEROPAGE");
            match r {
                Ok(_) if wp => {
                    let w = uffd.writeprotect(p, n, true);
                    let _ = uffd.wake(p, n);
                    ioctls.push("UFFDIO_WRITEPROTECT");
                    ioctls.push("UFFDIO_WAKE");
                    w
                }
                other => other.map(|_| ()),
            }
        }
        Action::Copy { wp, .. } => {
            let src = data.unwrap_or(&ZEROS);
            // SAFETY: as above.
            let r = unsafe { uffd.copy(p, src, wp) };
            ioctls.push("UFFDIO_COPY");
            r.map(|_| ())
        }
        Action::Continue { wp } => {
            let r = if wp {
                // SAFETY: as above; the page cache already holds the guest's page.
                unsafe { uffd.continue_wp(p, n) }
            } else {
                // SAFETY: as above.
                unsafe { uffd.continue_(p, n) }
            };
            ioctls.push("UFFDIO_CONTINUE");
            r.map(|_| ())
        }
        Action::Unprotect => {
            let r = uffd.writeprotect(p, n, false);
            ioctls.push("UFFDIO_WRITEPROTECT");
            return r.map(|()| false).map_err(|e| {
                let _ = uffd.wake(p, n);
                e.to_string()
            });
        }
    };
    match r {
        Ok(()) => Ok(true),
        // Another vCPU's fault on the same page was served first.
        Err(UffdError::Exists { .. }) => {
            let _ = uffd.wake(p, n);
            ioctls.push("UFFDIO_WAKE");
            Ok(false)
        }
        Err(e) => {
            let _ = uffd.wake(p, n);
            Err(e.to_string())
        }
    }
}

/// The injections of `--inject` and `--schedule`.
pub fn injections(
    specs: &[String],
    schedule: Option<&std::path::Path>,
) -> Result<Vec<Injection>, String> {
    let mut out = Vec::new();
    for s in specs {
        out.push(Injection::parse(s).map_err(|e| e.to_string())?);
    }
    if let Some(f) = schedule {
        let text = std::fs::read_to_string(f)
            .map_err(|e| format!("cannot read the schedule {}: {e}", f.display()))?;
        out.extend(
            Injection::parse_schedule(&f.display().to_string(), &text)
                .map_err(|e| e.to_string())?,
        );
    }
    Ok(out)
}

/// The real page at `page` from pagemap and kpageflags alone (no smaps read: this runs per
/// fault). The size is 4K for a small page; for a compound page (THP, large folio) it is
/// the PMD size, an upper bound for an mTHP.
fn real_page(pm: &PageMap, page: u64) -> Result<RealPage, String> {
    use crate::check::observe::pagemap::classify;
    let entry = *pm
        .entries(page, 1)
        .map_err(|e| e.to_string())?
        .first()
        .ok_or("pagemap gave no entry")?;
    if !entry.present() {
        return Ok(RealPage {
            present: false,
            size: None,
            zero_page: false,
        });
    }
    let flags = match entry.pfn() {
        Some(pfn) => pm
            .flags(pfn, 1)
            .map_err(|e| e.to_string())?
            .and_then(|f| f.first().copied()),
        None => None,
    };
    let kind = classify(entry, flags, false);
    let compound = flags.is_some_and(|f| f.compound());
    Ok(RealPage {
        present: true,
        size: Some(if compound { 2 << 20 } else { PAGE }),
        zero_page: matches!(kind, PageKind::Zero | PageKind::HugeZero),
    })
}

/// What differs between the real page `st` after `action` and the model's host page `hp`
/// (present; zero page or folio), if anything. A store restore maps a folio where the model
/// (which lost the data with the DONTNEED) has the zero page: not a disagreement.
fn page_disagreement(st: &RealPage, hp: Option<HostPage>, action: Action) -> Option<String> {
    let model_zero =
        hp.is_some_and(|p| matches!(p.kind, HostPageKind::Zero | HostPageKind::HugeZero));
    let restore = matches!(
        action,
        Action::Copy {
            from_store: true,
            ..
        }
    );
    if !st.present {
        Some("the real page is not present after the ioctl".into())
    } else if hp.is_some() && model_zero != st.zero_page && !restore {
        Some(format!(
            "page: model {}, real {}",
            if model_zero { "zero page" } else { "a folio" },
            if st.zero_page { "zero page" } else { "a folio" }
        ))
    } else {
        None
    }
}

fn memslot_flags_step(slot: u32, on: bool) -> Step {
    Step::MemslotFlags(MemslotFlagsStep {
        memslot: u16::try_from(slot).unwrap_or(u16::MAX),
        flags: if on {
            vec![MemslotFlag::DirtyLog]
        } else {
            vec![]
        },
    })
}

fn errno_text(call: &str, rc: libc::c_int) -> String {
    if rc == 0 {
        call.to_string()
    } else {
        format!("{call} failed: {}", std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_ranges_get_their_own_uffd_and_the_rest_shares_one() {
        let regions = [RamRegion {
            slot: 0,
            gpa: 0,
            hva: 0x10_0000_0000,
            size: 256 << 20,
        }];
        let base = 0x10_0000_0000u64;
        let p = split_parts(&regions, &[(128 << 20, 64 << 20), (64 << 20, 64 << 20)]).unwrap();
        assert_eq!(
            p,
            vec![
                (0, base, 64 << 20),
                (2, base + (64 << 20), 64 << 20),
                (1, base + (128 << 20), 64 << 20),
                (0, base + (192 << 20), 64 << 20),
            ]
        );
        assert_eq!(
            split_parts(&regions, &[]).unwrap(),
            vec![(0, base, 256 << 20)]
        );
        for (bad, why) in [
            (vec![(0x1001, 4096)], "4K-aligned"),
            (vec![(0, 512 << 20)], "inside one guest-RAM region"),
            (vec![(0, 8192), (4096, 4096)], "overlaps"),
        ] {
            let e = split_parts(&regions, &bad).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("give 4K-aligned"), "{e}");
        }
    }

    #[test]
    fn hugetlb_is_refused_with_the_reason() {
        let why = unsupported_backing(Backing::Hugetlb).unwrap();
        assert!(
            why.contains("no hugetlb") && why.contains("anon, thp or shmem"),
            "{why}"
        );
        assert!(unsupported_backing(Backing::Anon).is_none());
        assert!(unsupported_backing(Backing::Shmem).is_none());
    }

    #[test]
    fn the_summary_lists_disagreements_with_gfn_and_step() {
        let mut s = LiveSummary::default();
        s.disagree(Disagreement {
            step: 7,
            gfn: Some(0x123),
            what: "page: model zero page, real a folio".into(),
        });
        s.ioctl("UFFDIO_COPY");
        let t = s.render();
        assert!(t.contains("step 7 gfn 0x123: page: model zero page"), "{t}");
        assert!(
            t.contains("UFFDIO_COPY 1") && t.contains("disagreements: 1"),
            "{t}"
        );
    }
}
