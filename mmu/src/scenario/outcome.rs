//! The compact, typed outcome of one step ([`StepOutcome`]): what the runner fills in place
//! for every step, with no string formatting and buffers it reuses from step to step.
//!
//! [`StepRecord`] (the schema's strings, what `faultline sim --json` prints and the golden
//! `.expected.jsonl` files hold) is derived from it only when a caller asks
//! (`StepRecord::from(&outcome)`); the replay ([`crate::replay`]) reads outcomes directly.

use super::step::Step;
use crate::gup::{FollFlags, GupPath};
use crate::host::HostFault;
use crate::secondary::fault::{Access, PfResult};
use crate::secondary::{NotifierRecord, ZapRecord};
use crate::types::{Gfn, Gpa, Hva, Level};
use serde::Serialize;

/// A hex-formatted address in the schema's output (`0x1000`).
pub(crate) fn hex(v: u64) -> String {
    format!("{v:#x}")
}

/// How a step ended, as the schema's `result` names it ([`StepResult::name`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum StepResult {
    /// A host step that ran ("ok").
    #[default]
    Ok,
    /// The model has no machinery for the step ("not-modelled").
    NotModelled,
    /// A guest access: the page-fault result ("hit", "fixed", ...).
    Fault(PfResult),
}

impl StepResult {
    /// The schema name ("ok", "not-modelled", "fixed", ...).
    pub fn name(self) -> &'static str {
        match self {
            StepResult::Ok => "ok",
            StepResult::NotModelled => "not-modelled",
            StepResult::Fault(r) => result_name(r),
        }
    }

    /// True for a guest access that completed (hit, fixed, spurious).
    pub fn completed(self) -> bool {
        matches!(
            self,
            StepResult::Fault(PfResult::Hit | PfResult::Fixed | PfResult::Spurious)
        )
    }
}

/// The schema name of a GUP path ("fast", "slow", "remapped", "none").
pub fn gup_path_name(p: GupPath) -> &'static str {
    match p {
        GupPath::Fast => "fast",
        GupPath::Slow => "slow",
        GupPath::Remapped => "remapped",
        GupPath::None => "none",
    }
}

/// The GUP call of a guest access's last fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GupOutcome {
    /// Where the page came from.
    pub path: GupPath,
    /// The FOLL flags used.
    pub flags: FollFlags,
}

/// What one step did, typed: the source [`StepRecord`] is derived from.
///
/// [`crate::scenario::ScenarioRunner::step_outcome`] fills one in place per step, reusing
/// the vectors' buffers, so a long run allocates nothing per step on its common paths.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepOutcome {
    /// Step index.
    pub step: usize,
    /// The op name ([`Step::name`]).
    pub op: &'static str,
    /// Guest steps: the access kind.
    pub access: Option<Access>,
    /// Guest steps: the vCPU named by the step.
    pub vcpu: Option<u32>,
    /// Guest steps: the guest address.
    pub gpa: Option<Gpa>,
    /// Guest steps: the hva the gpa translates to through the memslots at the time of the
    /// access (set by the runner, not by [`crate::scenario::run_step`]).
    pub hva: Option<Hva>,
    /// Host steps: the range the step names, `[start, start + size)`.
    pub range: Option<(Hva, u64)>,
    /// How the step ended.
    pub result: StepResult,
    /// `RET_PF_RETRY` rounds.
    pub retries: u32,
    /// Level of the SPTE now mapping `gpa` (guest steps).
    pub level: Option<Level>,
    /// Whether that SPTE is writable.
    pub writable: Option<bool>,
    /// GUP of the last fault.
    pub gup: Option<GupOutcome>,
    /// Host fault handlers that ran, in order.
    pub host_faults: Vec<HostFault>,
    /// Notifier ranges received, in order.
    pub notifiers: Vec<NotifierRecord>,
    /// SPTEs zapped, in order.
    pub zapped: Vec<ZapRecord>,
    /// Young answer (aging steps).
    pub young: Option<bool>,
    /// Dirty gfns (dirty-log-get / -clear).
    pub dirty: Option<Vec<Gfn>>,
    /// Async page faults queued (guest steps, when any).
    pub async_pf: Option<u32>,
    /// Guest steps that completed: the first 8 bytes of the page, when contents are
    /// tracked (see [`super::contents`]).
    pub value: Option<u64>,
    /// Why the model cannot run this step (result [`StepResult::NotModelled`]).
    pub not_modelled: Option<String>,
    /// Guest steps that went to sleep in `handle_userfault()` (result "uffd-wait"): the
    /// uffd event userspace reads. Rare, so kept in the record's own form.
    pub uffd_event: Option<UffdEventOut>,
    /// The access asleep in `handle_userfault()` that this step woke (see
    /// `Kvm::uffd_wake`).
    pub woken: Option<WokenAccess>,
}

impl StepOutcome {
    /// Starts step `i` (`st`): every field reset, the vectors' buffers kept.
    pub(crate) fn reset(&mut self, i: usize, st: &Step) {
        let guest = st.guest_access();
        self.step = i;
        self.op = st.name();
        self.access = guest.map(|a| a.0);
        self.vcpu = guest.and_then(|a| a.2);
        self.gpa = guest.map(|a| Gpa(a.1));
        self.hva = None;
        self.range = st.host_range();
        self.result = StepResult::Ok;
        self.retries = 0;
        self.level = None;
        self.writable = None;
        self.gup = None;
        self.host_faults.clear();
        self.notifiers.clear();
        self.zapped.clear();
        self.young = None;
        self.dirty = None;
        self.async_pf = None;
        self.value = None;
        self.not_modelled = None;
        self.uffd_event = None;
        self.woken = None;
    }

    /// A fresh outcome for step `i`.
    pub(crate) fn new(i: usize, st: &Step) -> Self {
        let mut o = StepOutcome::default();
        o.reset(i, st);
        o
    }

    /// True when the model could not run the step.
    pub fn is_not_modelled(&self) -> bool {
        self.result == StepResult::NotModelled
    }

    /// True when the two steps were resolved the same way: the fields of
    /// [`crate::record::Resolution`] (result, level, writability, GUP path and flags, host
    /// faults, notifier ranges, zapped SPTEs, retries).
    pub fn same_resolution(&self, o: &StepOutcome) -> bool {
        self.result == o.result
            && self.level == o.level
            && self.writable == o.writable
            && self.gup == o.gup
            && self.host_faults == o.host_faults
            && self.retries == o.retries
            && self.notifiers.len() == o.notifiers.len()
            && self
                .notifiers
                .iter()
                .zip(&o.notifiers)
                .all(|(a, b)| (a.event, a.start, a.end) == (b.event, b.start, b.end))
            && self.zapped == o.zapped
            && self.uffd_event == o.uffd_event
            && self
                .woken
                .as_ref()
                .map(|w| (&w.result, w.retries, w.level, w.writable, &w.host_faults))
                == o.woken
                    .as_ref()
                    .map(|w| (&w.result, w.retries, w.level, w.writable, &w.host_faults))
    }

    /// The schema's record of the step.
    pub fn record(&self) -> StepRecord {
        StepRecord::from(self)
    }
}

impl From<&StepOutcome> for StepRecord {
    fn from(o: &StepOutcome) -> Self {
        StepRecord {
            step: o.step,
            op: o.op.to_string(),
            gpa: o.gpa.map(|g| hex(g.0)),
            result: o.result.name().to_string(),
            retries: o.retries,
            level: o.level,
            writable: o.writable,
            gup: o.gup.map(|g| GupRecord {
                path: gup_path_name(g.path).to_string(),
                flags: g.flags.names(),
            }),
            host_faults: o.host_faults.iter().map(|h| h.name()).collect(),
            notifiers: o
                .notifiers
                .iter()
                .map(|n| NotifierOut {
                    event: n.event,
                    start: hex(n.start.0),
                    end: hex(n.end.0),
                })
                .collect(),
            zapped: o
                .zapped
                .iter()
                .map(|z| ZapOut {
                    gfn_start: hex(z.gfn_start.0),
                    gfn_end: hex(z.gfn_end.0),
                    level: z.level,
                })
                .collect(),
            young: o.young,
            dirty: o
                .dirty
                .as_ref()
                .map(|d| d.iter().map(|g| hex(g.0)).collect()),
            async_pf: o.async_pf,
            access: o.access,
            vcpu: o.vcpu,
            hva: o.hva,
            range: o.range,
            value: o.value,
            not_modelled: o.not_modelled.clone(),
            uffd_event: o.uffd_event.clone(),
            woken: o.woken.clone(),
        }
    }
}

/// GUP summary in a step record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GupRecord {
    /// "fast" | "slow" | "remapped".
    pub path: String,
    /// FOLL flags.
    pub flags: Vec<&'static str>,
}

/// A notifier range in a step record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NotifierOut {
    /// Event name.
    pub event: crate::notifier::NotifierEvent,
    /// Start hva.
    pub start: String,
    /// End hva.
    pub end: String,
}

/// A zapped SPTE in a step record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ZapOut {
    /// First gfn.
    pub gfn_start: String,
    /// End gfn.
    pub gfn_end: String,
    /// Level.
    pub level: Level,
}

/// What one step did.
///
/// The JSON form (`faultline sim --json`, the `.expected.jsonl` files) is unchanged by the
/// fields marked "not serialized", which the Rust API carries for `faultline check`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StepRecord {
    /// Step index.
    pub step: usize,
    /// Operation.
    pub op: String,
    /// Guest address (guest steps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpa: Option<String>,
    /// "hit", "fixed", ... for guest steps; "ok" for host steps; "not-modelled" when the
    /// model has no machinery for the step (see [`StepRecord::not_modelled`]).
    pub result: String,
    /// RET_PF_RETRY rounds.
    pub retries: u32,
    /// Level of the SPTE now mapping `gpa` (guest steps).
    pub level: Option<Level>,
    /// Whether that SPTE is writable.
    pub writable: Option<bool>,
    /// GUP of the last fault.
    pub gup: Option<GupRecord>,
    /// Host fault handlers that ran.
    pub host_faults: Vec<&'static str>,
    /// Notifier ranges received, in order.
    pub notifiers: Vec<NotifierOut>,
    /// SPTEs zapped, in order.
    pub zapped: Vec<ZapOut>,
    /// Young answer (aging steps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub young: Option<bool>,
    /// Dirty gfns (dirty-log-get / -clear).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dirty: Option<Vec<String>>,
    /// Async page faults queued (guest steps, when any).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub async_pf: Option<u32>,
    /// Guest steps: the access kind (not serialized).
    #[serde(skip)]
    pub access: Option<Access>,
    /// Guest steps: the vCPU named by the step (not serialized).
    #[serde(skip)]
    pub vcpu: Option<u32>,
    /// Guest steps: the hva the gpa translates to through the memslots at the time of the
    /// access, if any slot covers it (not serialized).
    #[serde(skip)]
    pub hva: Option<Hva>,
    /// Host steps: the range the step names, `[start, start + size)` (not serialized).
    #[serde(skip)]
    pub range: Option<(Hva, u64)>,
    /// Guest steps that completed (hit, fixed, spurious): the first 8 bytes of the page,
    /// read or written (see [`super::contents`]); not serialized.
    #[serde(skip)]
    pub value: Option<u64>,
    /// Why the model cannot run this step (result "not-modelled"); not serialized unless
    /// set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_modelled: Option<String>,
    /// Guest steps whose result is "uffd-wait": the fault the vCPU waits on (the uffd event
    /// userspace reads); serialized only when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uffd_event: Option<UffdEventOut>,
    /// A guest access asleep in `handle_userfault()` since an earlier step that this step
    /// woke and that has ended (see `Kvm::uffd_wake`); serialized only when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub woken: Option<WokenAccess>,
}

/// The userfaultfd event a blocked guest access queued (`uffd_msg`, fs/userfaultfd.c
/// `userfault_msg()`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UffdEventOut {
    /// Page-aligned address.
    pub address: String,
    /// `UFFD_PAGEFAULT_FLAG_WRITE`.
    pub write: bool,
    /// `UFFD_PAGEFAULT_FLAG_WP`.
    pub wp: bool,
    /// `UFFD_PAGEFAULT_FLAG_MINOR`.
    pub minor: bool,
}

/// How a guest access that waited in `handle_userfault()` ended, recorded on the step that
/// woke it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WokenAccess {
    /// The step that made the access.
    pub step: usize,
    /// Its gpa.
    pub gpa: String,
    /// Final result ("fixed", "spurious", ..., or "uffd-wait" again).
    pub result: String,
    /// RET_PF_RETRY rounds, the wait included.
    pub retries: u32,
    /// Level of the SPTE now mapping the gpa.
    pub level: Option<Level>,
    /// Whether that SPTE is writable.
    pub writable: Option<bool>,
    /// Host fault handlers that ran since the wake-up.
    pub host_faults: Vec<&'static str>,
    /// The access kind (not serialized).
    #[serde(skip)]
    pub access: Option<Access>,
    /// The hva (not serialized).
    #[serde(skip)]
    pub hva: Option<Hva>,
    /// Completed accesses: the first 8 bytes of the page (not serialized).
    #[serde(skip)]
    pub value: Option<u64>,
}

pub(crate) fn uffd_event_out(b: &crate::secondary::fault::UffdBlocked) -> UffdEventOut {
    use crate::host::UffdMode;
    UffdEventOut {
        address: hex(b.hva.0),
        write: b.write,
        wp: b.reason == UffdMode::Wp,
        minor: b.reason == UffdMode::Minor,
    }
}

impl StepRecord {
    /// True when the model could not run the step.
    pub fn is_not_modelled(&self) -> bool {
        self.not_modelled.is_some()
    }
}

/// The schema name of a result.
pub fn result_name(r: PfResult) -> &'static str {
    match r {
        PfResult::Hit => "hit",
        PfResult::Fixed => "fixed",
        PfResult::Spurious => "spurious",
        PfResult::Retry => "retry",
        PfResult::Emulate => "emulate",
        PfResult::Efault => "efault",
        PfResult::Mmio => "mmio",
        PfResult::WriteProtected => "write-protected",
        PfResult::Intr => "intr",
        PfResult::Hwpoison => "hwpoison",
        PfResult::UffdWait => "uffd-wait",
    }
}
