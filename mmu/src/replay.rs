//! Replaying a live-mode recording ([`crate::record`]) under other kernel rule sets.
//!
//! [`replay`] runs a [`Recording`]'s steps, in order, on [`Recording::scenario`] (the header's
//! guest-RAM mirror with its conditions) once per requested [`KernelVersion`], all versions in
//! lockstep through [`ScenarioRunner`], and gathers:
//! - a [`VersionSummary`] per version: guest faults by the level of the SPTE left mapping the
//!   gpa, GUP paths, `RET_PF_RETRY` rounds, notifier ranges by event, SPTEs zapped by level,
//!   results and host fault handlers;
//! - the first [`ReplayOptions::max_diffs`] steps where the versions resolved a step
//!   differently ([`StepDiff`]), and how many did;
//! - a [`Determinism`] check: under the recorded rule set ([`RecordHeader::kernel_rules`],
//!   replayed even when not asked for) every record's `model` resolution must come out again;
//!   mismatches are counted and the first few kept, never dropped;
//! - faults over time ([`FaultSeries`], by the records' `t_ns`) per version and level, for
//!   plots.
//!
//! The module is pure (no I/O); [`synthetic_workload`] and [`record_scenario`] build
//! recordings from scenarios (tests, benchmarks, users without KVM).
//!
//! [`RecordHeader::kernel_rules`]: crate::record::RecordHeader::kernel_rules

use crate::gup::GupPath;
use crate::host::HostFault;
use crate::notifier::NotifierEvent;
use crate::record::{FaultRecord, RecordHeader, Recording, Resolution, RECORD_FORMAT};
use crate::scenario::{
    gup_path_name, MemslotSpec, ModelOptions, Num, Scenario, ScenarioError, ScenarioRunner, Step,
    StepOutcome, StepRecord, StepResult, VmaSpec,
};
use crate::types::{KernelVersion, Level};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// How much of the comparison to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayOptions {
    /// Steps where versions differ to keep (all are counted).
    pub max_diffs: usize,
    /// Determinism mismatches to keep (all are counted).
    pub max_mismatches: usize,
    /// Time bins of [`FaultSeries`].
    pub time_bins: usize,
    /// Replay under the recorded rule set too when it was not asked for, for the
    /// [`Determinism`] check (off: only benchmarks, which time one rule set alone; the
    /// check then covers the records only if the recorded rule set was asked for).
    pub check_recorded: bool,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            max_diffs: 20,
            max_mismatches: 10,
            time_bins: 200,
            check_recorded: true,
        }
    }
}

/// A replay that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// No rule set was asked for.
    #[error(
        "no kernel rule set to replay under: name at least one, e.g. --kernel-rules 6.12,6.13,6.18"
    )]
    NoVersions,
    /// The recording has a header and no records.
    #[error("the recording has a header but no fault records: record a run that faults (`faultline run --live --record FILE`), or generate one with `faultline sim --record-from SCENARIO.toml --record FILE`")]
    NoRecords,
    /// The mirror or a step does not run on the model.
    #[error("under the {kernel} rules: {source}")]
    Model {
        /// The rule set that failed.
        kernel: KernelVersion,
        /// The model's error (it names the step).
        #[source]
        source: ScenarioError,
    },
}

/// Counts by mapping level.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LevelCounts {
    /// 4K.
    #[serde(rename = "4K")]
    pub k4: u64,
    /// 2M.
    #[serde(rename = "2M")]
    pub m2: u64,
    /// 1G.
    #[serde(rename = "1G")]
    pub g1: u64,
}

impl LevelCounts {
    fn add(&mut self, l: Level, n: u64) {
        match l {
            Level::Pte4K => self.k4 += n,
            Level::Pmd2M => self.m2 += n,
            Level::Pud1G => self.g1 += n,
        }
    }

    /// The count at `l`.
    pub fn get(&self, l: Level) -> u64 {
        match l {
            Level::Pte4K => self.k4,
            Level::Pmd2M => self.m2,
            Level::Pud1G => self.g1,
        }
    }

    /// Sum over the levels.
    pub fn total(&self) -> u64 {
        self.k4 + self.m2 + self.g1
    }
}

/// Notifier ranges of one event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NotifierCount {
    /// Ranges received.
    pub ranges: u64,
    /// Bytes they covered.
    pub bytes: u64,
}

/// What one rule set did with the whole recording.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VersionSummary {
    /// The rule set.
    pub kernel: KernelVersion,
    /// Steps replayed.
    pub steps: u64,
    /// Guest accesses (read, write, exec) among them.
    pub guest_accesses: u64,
    /// Guest accesses by the level of the SPTE mapping the gpa afterwards.
    pub faults_by_level: LevelCounts,
    /// Guest accesses that left no SPTE mapping the gpa (mmio, efault, retry, ...).
    pub unmapped: u64,
    /// Guest accesses by result ("fixed", "spurious", "retry", ...); host steps by "ok" or
    /// "not-modelled".
    pub results: BTreeMap<String, u64>,
    /// GUP calls by path ("fast", "slow", "remapped").
    pub gup_paths: BTreeMap<String, u64>,
    /// `RET_PF_RETRY` rounds in all.
    pub retries: u64,
    /// Guest accesses that were retried at least once.
    pub retried_accesses: u64,
    /// Notifier ranges by event (`Clear`, `Unmap`, ...).
    pub notifiers: BTreeMap<String, NotifierCount>,
    /// SPTE ranges zapped, by level.
    pub zapped_ranges: LevelCounts,
    /// 4K pages covered by the zapped ranges, by level.
    pub zapped_pages: LevelCounts,
    /// Host fault handlers that ran, by name.
    pub host_faults: BTreeMap<String, u64>,
}

/// A [`VersionSummary`] being gathered: counts kept by typed key in small vectors (a few
/// distinct keys each, searched linearly), turned into the summary's maps at the end
/// ([`Tally::summary`]). The replay keeps one per rule set; live mode one for its model.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    steps: u64,
    guest_accesses: u64,
    faults_by_level: LevelCounts,
    unmapped: u64,
    results: Vec<(StepResult, u64)>,
    gup_paths: Vec<(GupPath, u64)>,
    retries: u64,
    retried_accesses: u64,
    notifiers: Vec<(NotifierEvent, NotifierCount)>,
    zapped_ranges: LevelCounts,
    zapped_pages: LevelCounts,
    host_faults: Vec<(HostFault, u64)>,
}

/// Adds `n` to the count of `key` in a small typed tally.
fn bump<K: PartialEq + Copy>(v: &mut Vec<(K, u64)>, key: K, n: u64) {
    match v.iter_mut().find(|(k, _)| *k == key) {
        Some((_, c)) => *c += n,
        None => v.push((key, n)),
    }
}

impl Tally {
    /// Counts one step's outcome.
    pub fn add(&mut self, r: &StepOutcome) {
        self.steps += 1;
        bump(&mut self.results, r.result, 1);
        if r.access.is_some() {
            self.guest_accesses += 1;
            match r.level {
                Some(l) => self.faults_by_level.add(l, 1),
                None => self.unmapped += 1,
            }
            self.retries += u64::from(r.retries);
            if r.retries > 0 {
                self.retried_accesses += 1;
            }
        }
        if let Some(g) = &r.gup {
            bump(&mut self.gup_paths, g.path, 1);
        }
        for &h in &r.host_faults {
            bump(&mut self.host_faults, h, 1);
        }
        for n in &r.notifiers {
            let bytes = n.end.0.saturating_sub(n.start.0);
            match self.notifiers.iter_mut().find(|(e, _)| *e == n.event) {
                Some((_, c)) => {
                    c.ranges += 1;
                    c.bytes += bytes;
                }
                None => self
                    .notifiers
                    .push((n.event, NotifierCount { ranges: 1, bytes })),
            }
        }
        for z in &r.zapped {
            self.zapped_ranges.add(z.level, 1);
            let pages = z.gfn_end.0.saturating_sub(z.gfn_start.0);
            self.zapped_pages.add(z.level, pages);
        }
    }

    /// The summary of what was counted, under rule set `kernel`.
    pub fn summary(&self, kernel: KernelVersion) -> VersionSummary {
        fn map<K: Copy>(v: &[(K, u64)], name: impl Fn(K) -> &'static str) -> BTreeMap<String, u64> {
            let mut m = BTreeMap::new();
            for &(k, n) in v {
                *m.entry(name(k).to_string()).or_insert(0) += n;
            }
            m
        }
        VersionSummary {
            kernel,
            steps: self.steps,
            guest_accesses: self.guest_accesses,
            faults_by_level: self.faults_by_level,
            unmapped: self.unmapped,
            results: map(&self.results, StepResult::name),
            gup_paths: map(&self.gup_paths, gup_path_name),
            retries: self.retries,
            retried_accesses: self.retried_accesses,
            notifiers: self
                .notifiers
                .iter()
                .map(|(e, c)| (event_name(*e).to_string(), *c))
                .collect(),
            zapped_ranges: self.zapped_ranges,
            zapped_pages: self.zapped_pages,
            host_faults: map(&self.host_faults, HostFault::name),
        }
    }
}

/// One version's resolution of a step, in a [`StepDiff`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VersionResolution {
    /// The rule set.
    pub kernel: KernelVersion,
    /// How it resolved the step.
    #[serde(flatten)]
    pub resolution: Resolution,
}

/// A step the versions resolved differently.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StepDiff {
    /// The record's `seq`.
    pub seq: u64,
    /// The record's time.
    pub t_ns: u64,
    /// The op.
    pub op: String,
    /// The guest address (guest steps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpa: Option<String>,
    /// Each version's resolution, in the order asked for.
    pub versions: Vec<VersionResolution>,
}

/// A record the recorded rule set did not reproduce.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    /// The record's `seq`.
    pub seq: u64,
    /// The op.
    pub op: String,
    /// The guest address (guest steps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpa: Option<String>,
    /// What differs, one `field: recorded X, replayed Y` each.
    pub fields: Vec<String>,
}

/// The determinism check under the recorded rule set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Determinism {
    /// The recorded rule set.
    pub kernel: KernelVersion,
    /// Records compared.
    pub checked: u64,
    /// Records whose replayed resolution differs from the recorded one.
    pub mismatches: u64,
    /// The first of them.
    pub first: Vec<Mismatch>,
}

impl Determinism {
    /// True when every record was reproduced.
    pub fn is_clean(&self) -> bool {
        self.mismatches == 0
    }
}

/// Guest accesses over time, by version and level: `counts[v][bin]` for the versions of
/// [`ReplayReport::versions`], bins of [`FaultSeries::bin_ns`] from [`FaultSeries::t0_ns`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FaultSeries {
    /// Time of the first record.
    pub t0_ns: u64,
    /// Width of one bin.
    pub bin_ns: u64,
    /// Per version, per bin: accesses that left an SPTE of each level.
    pub counts: Vec<Vec<LevelCounts>>,
}

/// Everything a replay found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// The recording's header (guest-RAM mirror included).
    pub header: RecordHeader,
    /// Records replayed.
    pub records: u64,
    /// One summary per version asked for, in that order.
    pub versions: Vec<VersionSummary>,
    /// Steps where at least two versions differ.
    pub differing_steps: u64,
    /// The first of them.
    pub diffs: Vec<StepDiff>,
    /// The recorded rule set against the recording.
    pub determinism: Determinism,
    /// Faults over time.
    pub series: FaultSeries,
}

/// True when two records resolved the step the same way (the fields of [`Resolution`]).
pub fn same_resolution(a: &StepRecord, b: &StepRecord) -> bool {
    a.result == b.result
        && a.level == b.level
        && a.writable == b.writable
        && a.gup == b.gup
        && a.host_faults == b.host_faults
        && a.notifiers == b.notifiers
        && a.zapped == b.zapped
        && a.retries == b.retries
}

fn same_strs(a: &[String], b: &[&str]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// True when `rec` is the sequence `it` yields.
fn names_eq(rec: &[String], mut it: impl Iterator<Item = &'static str>) -> bool {
    for r in rec {
        match it.next() {
            Some(x) if x == r => {}
            _ => return false,
        }
    }
    it.next().is_none()
}

/// True when `o` reproduces `recorded` ([`resolution_mismatch`] is empty), checked without
/// building a [`StepRecord`]; `buf` is scratch space for the notifier and zap strings.
pub fn reproduces(recorded: &Resolution, o: &StepOutcome, buf: &mut String) -> bool {
    if recorded.result != o.result.name()
        || recorded.level != o.level
        || recorded.writable != o.writable
        || recorded.retries != o.retries
        || recorded.gup_path.as_deref() != o.gup.map(|g| gup_path_name(g.path))
        || recorded.notifiers.len() != o.notifiers.len()
        || recorded.zapped.len() != o.zapped.len()
    {
        return false;
    }
    let flags = o.gup.map(|g| g.flags).unwrap_or_default();
    let set = crate::gup::FollFlags::NAMED
        .iter()
        .filter(|(_, f)| flags.contains(*f))
        .map(|(n, _)| *n);
    if !names_eq(&recorded.gup_flags, set)
        || !names_eq(
            &recorded.host_faults,
            o.host_faults.iter().map(|h| h.name()),
        )
    {
        return false;
    }
    let notifiers_eq = recorded.notifiers.iter().zip(&o.notifiers).all(|(r, n)| {
        // Resolution's "{:?} {} {}" of the event and the hex hvas.
        buf.clear();
        buf.push_str(event_name(n.event));
        buf.push(' ');
        push_hex(buf, n.start.0);
        buf.push(' ');
        push_hex(buf, n.end.0);
        *r == *buf
    });
    notifiers_eq
        && recorded.zapped.iter().zip(&o.zapped).all(|(r, z)| {
            // Resolution's "{} {} {:?}" of the hex gfns and the level.
            buf.clear();
            push_hex(buf, z.gfn_start.0);
            buf.push(' ');
            push_hex(buf, z.gfn_end.0);
            buf.push(' ');
            buf.push_str(level_debug(z.level));
            *r == *buf
        })
}

/// Appends `v` as `{:#x}` does (`0x` and lowercase digits, no leading zeros).
fn push_hex(buf: &mut String, v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    buf.push_str("0x");
    let n = (64 - v.leading_zeros()).div_ceil(4).max(1);
    for i in (0..n).rev() {
        buf.push(char::from(DIGITS[((v >> (4 * i)) & 0xf) as usize]));
    }
}

/// `{:?}` of a level.
fn level_debug(l: Level) -> &'static str {
    match l {
        Level::Pte4K => "Pte4K",
        Level::Pmd2M => "Pmd2M",
        Level::Pud1G => "Pud1G",
    }
}

/// The name of a notifier event as [`Resolution::notifiers`] spells it (`Clear`, ...).
fn event_name(e: crate::notifier::NotifierEvent) -> &'static str {
    use crate::notifier::NotifierEvent as E;
    match e {
        E::Unmap => "Unmap",
        E::Clear => "Clear",
        E::ProtectionVma => "ProtectionVma",
        E::ProtectionPage => "ProtectionPage",
        E::SoftDirty => "SoftDirty",
        E::Release => "Release",
        E::Migrate => "Migrate",
        E::Exclusive => "Exclusive",
    }
}

/// The fields where `replayed` differs from `recorded` (empty when it reproduces it).
pub fn resolution_mismatch(recorded: &Resolution, replayed: &StepRecord) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = |name: &str, rec: String, rep: String| {
        out.push(format!("{name}: recorded {rec}, replayed {rep}"));
    };
    if recorded.result != replayed.result {
        field("result", recorded.result.clone(), replayed.result.clone());
    }
    if recorded.level != replayed.level {
        field(
            "level",
            format!("{:?}", recorded.level.map(Level::name)),
            format!("{:?}", replayed.level.map(Level::name)),
        );
    }
    if recorded.writable != replayed.writable {
        field(
            "writable",
            format!("{:?}", recorded.writable),
            format!("{:?}", replayed.writable),
        );
    }
    let path = replayed.gup.as_ref().map(|g| g.path.as_str());
    if recorded.gup_path.as_deref() != path {
        field(
            "gup_path",
            format!("{:?}", recorded.gup_path),
            format!("{path:?}"),
        );
    }
    let flags = replayed.gup.as_ref().map_or(&[][..], |g| &g.flags[..]);
    if !same_strs(&recorded.gup_flags, flags) {
        field(
            "gup_flags",
            format!("{:?}", recorded.gup_flags),
            format!("{flags:?}"),
        );
    }
    if !same_strs(&recorded.host_faults, &replayed.host_faults) {
        field(
            "host_faults",
            format!("{:?}", recorded.host_faults),
            format!("{:?}", replayed.host_faults),
        );
    }
    if recorded.retries != replayed.retries {
        field(
            "retries",
            recorded.retries.to_string(),
            replayed.retries.to_string(),
        );
    }
    let mut buf = String::new();
    let same_notifiers = recorded.notifiers.len() == replayed.notifiers.len()
        && recorded
            .notifiers
            .iter()
            .zip(&replayed.notifiers)
            .all(|(r, n)| {
                buf.clear();
                let _ = write!(buf, "{:?} {} {}", n.event, n.start, n.end);
                *r == buf
            });
    if !same_notifiers {
        let rep = Resolution::from(replayed);
        field(
            "notifiers",
            format!("{:?}", recorded.notifiers),
            format!("{:?}", rep.notifiers),
        );
    }
    let same_zapped = recorded.zapped.len() == replayed.zapped.len()
        && recorded.zapped.iter().zip(&replayed.zapped).all(|(r, z)| {
            buf.clear();
            let _ = write!(buf, "{} {} {:?}", z.gfn_start, z.gfn_end, z.level);
            *r == buf
        });
    if !same_zapped {
        let rep = Resolution::from(replayed);
        field(
            "zapped",
            format!("{:?}", recorded.zapped),
            format!("{:?}", rep.zapped),
        );
    }
    out
}

/// The runs of one replay, stepped in lockstep.
struct Lockstep {
    runners: Vec<ScenarioRunner>,
    /// Index in `runners` of the recorded rule set, when it runs.
    recorded: Option<usize>,
    /// How many of `runners` were asked for (the recorded one may be extra, last).
    asked: usize,
}

/// Replays `rec` under each of `versions` (in that order; duplicates are dropped) and under
/// the recorded rule set; `progress` is called with the number of records done every few
/// thousand records and at the end.
pub fn replay(
    rec: &Recording,
    versions: &[KernelVersion],
    opts: &ReplayOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<ReplayReport, ReplayError> {
    let mut vs: Vec<KernelVersion> = Vec::new();
    for v in versions {
        if !vs.contains(v) {
            vs.push(*v);
        }
    }
    if vs.is_empty() {
        return Err(ReplayError::NoVersions);
    }
    if rec.records.is_empty() {
        return Err(ReplayError::NoRecords);
    }
    let recorded_kernel = rec.header.kernel_rules;
    let asked = vs.len();
    let mut all = vs.clone();
    if opts.check_recorded && !all.contains(&recorded_kernel) {
        all.push(recorded_kernel);
    }
    let recorded = all.iter().position(|v| *v == recorded_kernel);
    // The runners start from the mirror and run the records' steps borrowed (no copy of
    // the stream per rule set).
    // (A mirror is written without steps; one that has some replays without them, as
    // Recording::scenario() replaces them.)
    let stepless;
    let scenario = if rec.mirror.step.is_empty() {
        &rec.mirror
    } else {
        let mut m = rec.mirror.clone();
        m.step.clear();
        stepless = m;
        &stepless
    };
    let needs_contents = rec
        .records
        .iter()
        .any(|r| matches!(r.step, Step::KsmScan(_)));
    let mut ls = Lockstep {
        runners: Vec::with_capacity(all.len()),
        recorded,
        asked,
    };
    for &kernel in &all {
        let opts = ModelOptions {
            kernel: Some(kernel),
            ..ModelOptions::default()
        };
        let mut r = ScenarioRunner::new(scenario, &opts)
            .map_err(|source| ReplayError::Model { kernel, source })?;
        // Page contents feed no resolution, only ksmd's page comparison: followed only
        // when the recording has a KSM scan.
        r.set_track_contents(needs_contents);
        ls.runners.push(r);
    }

    let t0 = rec.records.first().map_or(0, |r| r.t_ns);
    let t1 = rec.records.iter().map(|r| r.t_ns).max().unwrap_or(t0);
    let bins = opts.time_bins.max(1);
    let bin_ns = ((t1 - t0) / bins as u64 + 1).max(1);
    let mut series = FaultSeries {
        t0_ns: t0,
        bin_ns,
        counts: vec![vec![LevelCounts::default(); bins]; asked],
    };
    let mut tallies: Vec<Tally> = vec![Tally::default(); asked];
    let mut det = Determinism {
        kernel: recorded_kernel,
        checked: 0,
        mismatches: 0,
        first: Vec::new(),
    };
    let mut diffs = Vec::new();
    let mut differing = 0u64;
    let mut buf = String::new();
    for (i, fr) in rec.records.iter().enumerate() {
        for (k, r) in ls.runners.iter_mut().enumerate() {
            r.run_borrowed(&fr.step)
                .map_err(|source| ReplayError::Model {
                    kernel: all[k],
                    source,
                })?;
        }
        let out = |k: usize| ls.runners[k].outcome();
        let bin = usize::try_from(fr.t_ns.saturating_sub(t0) / bin_ns)
            .unwrap_or(usize::MAX)
            .min(bins - 1);
        for (k, t) in tallies.iter_mut().enumerate() {
            let s = out(k);
            t.add(s);
            if let (Some(_), Some(l)) = (s.access, s.level) {
                series.counts[k][bin].add(l, 1);
            }
        }
        let first = out(0);
        if (1..ls.asked).any(|k| !first.same_resolution(out(k))) {
            differing += 1;
            if diffs.len() < opts.max_diffs {
                diffs.push(StepDiff {
                    seq: fr.seq,
                    t_ns: fr.t_ns,
                    op: first.op.to_string(),
                    gpa: first.gpa.map(|g| format!("{:#x}", g.0)),
                    versions: (0..ls.asked)
                        .zip(&vs)
                        .map(|(k, v)| VersionResolution {
                            kernel: *v,
                            resolution: Resolution::from(&StepRecord::from(out(k))),
                        })
                        .collect(),
                });
            }
        }
        if let Some(k) = ls.recorded {
            det.checked += 1;
            let o = out(k);
            if !reproduces(&fr.model, o, &mut buf) {
                let rec = StepRecord::from(o);
                let fields = resolution_mismatch(&fr.model, &rec);
                debug_assert!(
                    !fields.is_empty(),
                    "reproduces() and resolution_mismatch() agree"
                );
                det.mismatches += u64::from(!fields.is_empty());
                if !fields.is_empty() && det.first.len() < opts.max_mismatches {
                    det.first.push(Mismatch {
                        seq: fr.seq,
                        op: rec.op,
                        gpa: rec.gpa,
                        fields,
                    });
                }
            }
        }
        if i % 4096 == 4095 {
            progress(i as u64 + 1);
        }
    }
    progress(rec.records.len() as u64);
    Ok(ReplayReport {
        header: rec.header.clone(),
        records: rec.records.len() as u64,
        versions: tallies
            .iter()
            .zip(&vs)
            .map(|(t, v)| t.summary(*v))
            .collect(),
        differing_steps: differing,
        diffs,
        determinism: det,
        series,
    })
}

/// What [`record_scenario`] writes into the header besides the rule set and the mirror.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordMeta {
    /// [`RecordHeader::faultline`].
    pub faultline: String,
    /// [`RecordHeader::host_kernel`].
    pub host_kernel: String,
    /// [`RecordHeader::guest`].
    pub guest: String,
    /// Nanoseconds between consecutive records' `t_ns` (the model has no clock).
    pub step_ns: u64,
}

impl Default for RecordMeta {
    fn default() -> Self {
        RecordMeta {
            faultline: "model".into(),
            host_kernel: "none (generated on the model)".into(),
            guest: "scenario".into(),
            step_ns: 1000,
        }
    }
}

/// The scenario without its steps, as TOML: a recording header's mirror.
pub fn mirror_toml(sc: &Scenario) -> Result<String, ScenarioError> {
    let mut m = sc.clone();
    m.step.clear();
    toml::to_string(&MirrorToml::from(&m))
        .map_err(|e| ScenarioError::Invalid(format!("cannot write the scenario as TOML: {e}")))
}

/// The scenario's top-level keys, memslots and VMAs as the TOML schema spells them (no
/// `[[step]]`, no unset keys).
#[derive(Serialize)]
struct MirrorToml<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel: Option<KernelVersion>,
    #[serde(skip_serializing_if = "Option::is_none")]
    async_pf: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ad_bits: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tdp_1g: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eager_page_split: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thp: Option<crate::host::ThpMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nodes: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_node: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    multi_threaded: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    numa_balancing: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    huge_zero_page: Option<bool>,
    memslot: &'a [MemslotSpec],
    vma: &'a [VmaSpec],
}

impl<'a> From<&'a Scenario> for MirrorToml<'a> {
    fn from(s: &'a Scenario) -> Self {
        MirrorToml {
            kernel: s.kernel,
            async_pf: s.async_pf,
            ad_bits: s.ad_bits,
            tdp_1g: s.tdp_1g,
            eager_page_split: s.eager_page_split,
            thp: s.thp,
            nodes: s.nodes,
            task_node: s.task_node,
            multi_threaded: s.multi_threaded,
            numa_balancing: s.numa_balancing,
            huge_zero_page: s.huge_zero_page,
            memslot: &s.memslot,
            vma: &s.vma,
        }
    }
}

/// Runs `sc` on the model under `kernel` (the file's rules when `None`) and writes it as a
/// recording: the header's mirror is the scenario without its steps, each step one record
/// with the model's resolution, `t_ns = seq * meta.step_ns`, no uffd event and
/// `model_only` set (nothing real was touched).
pub fn record_scenario(
    sc: &Scenario,
    kernel: Option<KernelVersion>,
    meta: &RecordMeta,
) -> Result<Recording, ScenarioError> {
    let opts = ModelOptions {
        kernel,
        ..ModelOptions::default()
    };
    let mut r = ScenarioRunner::new(sc, &opts)?;
    let header = RecordHeader {
        format: RECORD_FORMAT,
        faultline: meta.faultline.clone(),
        kernel_rules: r.kernel(),
        host_kernel: meta.host_kernel.clone(),
        backing: sc
            .vma
            .first()
            .map_or("anon", |v| crate::scenario::kind_name(v.kind))
            .to_string(),
        vcpus: 1,
        guest: meta.guest.clone(),
        scenario: mirror_toml(sc)?,
    };
    let mut mirror = sc.clone();
    mirror.step.clear();
    let mut records = Vec::with_capacity(sc.step.len());
    for (i, st) in sc.step.iter().enumerate() {
        let s = r.step(i)?;
        records.push(FaultRecord {
            seq: i as u64,
            t_ns: i as u64 * meta.step_ns,
            step: st.clone(),
            uffd: None,
            hva: s.hva.map(|h| h.0).or(s.range.map(|(h, _)| h.0)),
            model: Resolution::from(&s),
            applied: None,
            model_only: true,
            real: None,
            disagreements: Vec::new(),
        });
    }
    Ok(Recording {
        header,
        mirror,
        records,
    })
}

/// A recording as JSON Lines text (header, then one record per line), what
/// [`Recording::parse`] reads back.
pub fn to_jsonl(rec: &Recording) -> Result<String, serde_json::Error> {
    let mut out = serde_json::to_string(&rec.header)?;
    out.push('\n');
    for r in &rec.records {
        out.push_str(&serde_json::to_string(r)?);
        out.push('\n');
    }
    Ok(out)
}

/// Base hva of [`synthetic_workload`]'s guest RAM.
pub const SYNTHETIC_HVA: u64 = 0x7f00_0000_0000;

/// A realistic guest fault stream over 1 GiB of anonymous guest RAM (one memslot; the low
/// 512 MiB plain anon, the high 512 MiB `MADV_HUGEPAGE`), about `faults` guest accesses, as
/// a live run raises them (each a fault, never a hit): first-touch reads, first-touch
/// writes and read-then-write pairs in a shuffled order over the 4K half; reads of the
/// huge zero page then writes (where 6.12 and 6.13+ differ) and first writes over the THP
/// half; every 1/16 of the stream an `MADV_DONTNEED` of a 2M range already touched,
/// whose pages are touched again later. `seed` picks the order.
pub fn synthetic_workload(faults: usize, seed: u64) -> Result<Scenario, ScenarioError> {
    const MIB: u64 = 1 << 20;
    let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        // xorshift64*
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let small_pages = 512 * MIB / 4096;
    let thp_ranges = 512 * MIB / (2 * MIB);
    let mut steps = Vec::with_capacity(faults + 64);
    let read = |gpa: u64| {
        Step::Read(crate::scenario::step::GuestStep {
            gpa: Num(gpa),
            vcpu: None,
            mmio: false,
            race: false,
        })
    };
    let write = |gpa: u64| {
        Step::Write(crate::scenario::step::WriteStep {
            gpa: Num(gpa),
            vcpu: None,
            mmio: false,
            race: false,
            value: None,
        })
    };
    let dontneed = |gpa: u64| {
        Step::Madvise(crate::scenario::step::MadviseStep {
            start: Num(SYNTHETIC_HVA + gpa),
            size: Num(2 * MIB),
            advice: crate::scenario::step::MadviseAdvice::Dontneed,
            race: false,
        })
    };
    // A shuffled walk over the 4K half (pages visited once per pass; later passes
    // follow DONTNEED of their range in a real guest, so every access is a fault).
    let mut order: Vec<u64> = (0..small_pages).collect();
    for i in (1..order.len()).rev() {
        let j = usize::try_from(next() % (i as u64 + 1)).unwrap_or(0);
        order.swap(i, j);
    }
    let mut touched_2m: Vec<u64> = Vec::new();
    let mut thp_next = 0u64;
    let mut pos = 0usize;
    let mut guest = 0usize;
    let dontneed_every = (faults / 16).max(1);
    let mut since_dontneed = 0usize;
    while guest < faults {
        let roll = next() % 100;
        if roll < 4 && thp_next < thp_ranges {
            // The THP half: huge-zero read then write, or a first write.
            let gpa = 512 * MIB + thp_next * 2 * MIB + (next() % 512) * 4096;
            thp_next += 1;
            if next() % 2 == 0 {
                steps.push(read(gpa));
                guest += 1;
            }
            steps.push(write(gpa));
            guest += 1;
            since_dontneed += 1;
            continue;
        }
        if pos == order.len() {
            // Every page touched: DONTNEED the whole 4K half and start another pass.
            for i in 0..(512 * MIB / (2 * MIB)) {
                steps.push(dontneed(i * 2 * MIB));
            }
            pos = 0;
            touched_2m.clear();
        }
        let page = order[pos];
        pos += 1;
        let gpa = page * 4096;
        let r2m = gpa & !(2 * MIB - 1);
        if !touched_2m.contains(&r2m) && touched_2m.len() < 64 {
            touched_2m.push(r2m);
        }
        match roll % 3 {
            0 => {
                steps.push(read(gpa));
                guest += 1;
            }
            1 => {
                steps.push(write(gpa));
                guest += 1;
            }
            _ => {
                steps.push(read(gpa));
                steps.push(write(gpa));
                guest += 2;
            }
        }
        since_dontneed += 1;
        if since_dontneed >= dontneed_every && !touched_2m.is_empty() {
            since_dontneed = 0;
            let k = usize::try_from(next() % touched_2m.len() as u64).unwrap_or(0);
            let r = touched_2m.swap_remove(k);
            steps.push(dontneed(r));
            // The guest touches a few pages of the range again.
            for p in 0..8 {
                steps.push(write(r + p * 4096 * 61 % (2 * MIB)));
                guest += 1;
            }
        }
    }
    let mut sc = Scenario::from_toml(&format!(
        "[[memslot]]\nid = 0\ngpa = 0\nsize = \"1G\"\nhva = \"{SYNTHETIC_HVA:#x}\"\n\
         [[vma]]\nstart = \"{SYNTHETIC_HVA:#x}\"\nsize = \"512M\"\nkind = \"anon\"\n\
         [[vma]]\nstart = \"{:#x}\"\nsize = \"512M\"\nkind = \"anon\"\nthp = true\n",
        SYNTHETIC_HVA + 512 * MIB
    ))?;
    sc.step = steps;
    Ok(sc)
}

#[cfg(test)]
mod tests;
