//! Scenario files: a host address space, memslots and a list of host operations and guest
//! accesses, replayed deterministically through [`crate::host`] and [`crate::secondary`].
//!
//! The TOML schema is a public interface (other programs generate these files):
//!
//! ```toml
//! kernel = "6.12"                  # "6.12" | "6.13" | "6.18"
//! [[memslot]]
//! id = 0
//! gpa = "0x0"                      # hex strings or integers; sizes like "4K", "2M", "1G"
//! size = "1G"
//! hva = "0x7f0000000000"
//! flags = []                       # "readonly", "dirty-log"
//! [[vma]]
//! start = "0x7f0000000000"
//! size = "1G"
//! prot = "rw"                      # "none" | "r" | "rw" | "rwx"
//! kind = "anon"                    # "anon" | "shmem" | "pfnmap" | "mixedmap" | "devdax"
//! shared = false
//! thp = false                      # MADV_HUGEPAGE
//! node = 0
//! pfn = "0x100000"                 # pfnmap/mixedmap: first device pfn
//! huge = "pte"                     # pfnmap: "pte" | "pmd" | "pud"
//! mkwrite = false
//! pfn_mkwrite = false
//! [[step]]
//! op = "write"                     # "read" | "write" | "exec" with gpa (and vcpu)
//! gpa = "0x1000"
//! ```
//!
//! Host steps: `munmap`, `mprotect` (`prot`), `madvise` (`advice`: "dontneed" | "free" |
//! "hugepage" | "nohugepage" | "collapse"), `numa-scan`, `migrate` (`node`), `thp-split`,
//! `unmap-mapping-range`, `clear-young`, `clear-flush-young`, `test-young`, each over
//! `start` + `size`; `fork`; `dirty-log-enable`, `dirty-log-get`, `dirty-log-clear`,
//! `memslot-delete` with `memslot = id`; `release` (the `release` notifier alone) and
//! `exit` (`exit_mmap()`: release, then every VMA unmapped); `signal` with `signal =
//! "none" | "pending" | "fatal"` (a signal pending on the vCPU thread); `memory-failure`
//! with `start` (poison the page mapped there: `memory_failure()`); `uffd-register`
//! (`start`, `size`, `mode = ["missing", "wp"]`), `uffdio-copy` and `uffdio-zeropage`
//! (`start`): userfaultfd, as the VMM's demand-paging service uses it.
//!
//! Guest results: "hit", "fixed", "spurious", "retry" (gave up after
//! [`MAX_ROUNDS`](crate::secondary::fault::MAX_ROUNDS) rounds), "emulate", "efault",
//! "mmio", "write-protected", "intr" (signal pending: KVM_RUN returns -EINTR) and
//! "hwpoison" (SIGBUS queued).
//!
//! Optional top-level keys (defaults after the `=`): `async_pf = true`, `ad_bits = true`,
//! `tdp_1g = true`, `eager_page_split = true`, `thp = "madvise"`, `nodes = 2`,
//! `task_node = 0`, `multi_threaded = true`, `numa_balancing = true`,
//! `huge_zero_page = true`.
//!
//! Output, one record per step ([`StepRecord`]), then the final [`KvmStats`]:
//! [`ScenarioRun::json_lines`] prints one JSON object per line, then `{"stats": {...}}`;
//! [`ScenarioRun::render_table`] prints a table. Addresses are hex strings.
//! [`sim`] is what `faultline sim FILE [--json] [--explore]` prints.
//!
//! # Example
//! ```
//! let text = r#"
//! kernel = "6.12"
//! [[memslot]]
//! id = 0
//! gpa = 0
//! size = "2M"
//! hva = "0x7f0000000000"
//! [[vma]]
//! start = "0x7f0000000000"
//! size = "2M"
//! [[step]]
//! op = "read"
//! gpa = "0x1000"
//! [[step]]
//! op = "write"
//! gpa = "0x1000"
//! "#;
//! let run = mmu::scenario::run_scenario(text).unwrap();
//! // Read: the zero page, mapped read-only. Write: COW (CLEAR 4K) zaps it, the fault is
//! // stale and retried once, then a writable SPTE.
//! assert_eq!(run.steps[0].writable, Some(false));
//! assert_eq!((run.steps[1].result.as_str(), run.steps[1].retries), ("fixed", 1));
//! assert_eq!(run.steps[1].notifiers[0].start, "0x7f0000001000");
//! print!("{}", run.render_table());
//! ```

use crate::host::{
    Advice, Backing, DeviceKind, DeviceSpec, Mm, MmConfig, MmapRequest, Prot, ThpMode,
};
use crate::notifier::MmuNotifier;
use crate::secondary::fault::{Access, PfResult};
use crate::secondary::memslot::MemslotFlags;
use crate::secondary::stats::KvmStats;
use crate::secondary::{Kvm, KvmConfig};
use crate::types::{Gpa, Hva, KernelVersion, Level, NodeId, Pfn};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// A scenario could not be parsed or run.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file is not valid TOML for the schema.
    #[error("Invalid scenario: {0}")]
    Parse(#[from] toml::de::Error),
    /// A value is wrong: {0}
    #[error("Invalid scenario: {0}")]
    Invalid(String),
    /// Setting up memslot or vma {what} failed: {message}
    #[error("Setting up {what} failed: {message}")]
    Setup {
        /// Which entry.
        what: String,
        /// Why.
        message: String,
    },
    /// Step {step} ({op}) failed: {message}
    #[error("Step {step} ({op}) failed: {message}")]
    Step {
        /// Step index.
        step: usize,
        /// Operation.
        op: String,
        /// Why.
        message: String,
    },
}

/// A number: an integer, or a string in hex ("0x1000"), decimal, or with a K/M/G suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Num(pub u64);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            I(i64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::I(i) => u64::try_from(i)
                .map(Num)
                .map_err(|_| serde::de::Error::custom(format!("negative number {i}"))),
            Raw::S(s) => parse_num(&s).map(Num).map_err(serde::de::Error::custom),
        }
    }
}

/// Parses "0x1f", "4096", "4K", "2M", "1G" (also "4KiB"...).
pub fn parse_num(s: &str) -> Result<u64, String> {
    let t = s.trim().replace('_', "");
    let bad = || {
        format!("bad number {s:?}: use an integer, \"0x...\" or a size like \"4K\", \"2M\", \"1G\"")
    };
    if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return u64::from_str_radix(h, 16).map_err(|_| bad());
    }
    let t = t.trim_end_matches("iB").trim_end_matches('B');
    let (digits, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        Some('T' | 't') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(bad)
}

/// The scenario file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Which rules apply.
    #[serde(default)]
    pub kernel: Option<String>,
    /// `kvm_can_do_async_pf()`.
    #[serde(default)]
    pub async_pf: Option<bool>,
    /// A/D bits in the TDP tables.
    #[serde(default)]
    pub ad_bits: Option<bool>,
    /// The TDP MMU supports 1G leaves.
    #[serde(default)]
    pub tdp_1g: Option<bool>,
    /// `eager_page_split`.
    #[serde(default)]
    pub eager_page_split: Option<bool>,
    /// THP policy: "always" | "madvise" | "never".
    #[serde(default)]
    pub thp: Option<String>,
    /// NUMA nodes.
    #[serde(default)]
    pub nodes: Option<u16>,
    /// Node of the VMM's tasks.
    #[serde(default)]
    pub task_node: Option<u16>,
    /// mm_users > 1.
    #[serde(default)]
    pub multi_threaded: Option<bool>,
    /// NUMA balancing on.
    #[serde(default)]
    pub numa_balancing: Option<bool>,
    /// transparent_hugepage/use_zero_page.
    #[serde(default)]
    pub huge_zero_page: Option<bool>,
    /// Memslots.
    #[serde(default)]
    pub memslot: Vec<MemslotSpec>,
    /// VMAs, mapped in order.
    #[serde(default)]
    pub vma: Vec<VmaSpec>,
    /// Steps.
    #[serde(default)]
    pub step: Vec<StepSpec>,
}

/// `[[memslot]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemslotSpec {
    /// Slot id.
    pub id: u16,
    /// Guest physical base.
    pub gpa: Num,
    /// Size.
    pub size: Num,
    /// Host virtual base.
    pub hva: Num,
    /// "readonly", "dirty-log".
    #[serde(default)]
    pub flags: Vec<String>,
}

/// `[[vma]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmaSpec {
    /// Start hva.
    pub start: Num,
    /// Size.
    pub size: Num,
    /// "none" | "r" | "rw" | "rwx".
    #[serde(default = "default_prot")]
    pub prot: String,
    /// "anon" | "shmem" | "pfnmap" | "mixedmap".
    #[serde(default = "default_kind")]
    pub kind: String,
    /// MAP_SHARED.
    #[serde(default)]
    pub shared: bool,
    /// MADV_HUGEPAGE.
    #[serde(default)]
    pub thp: bool,
    /// NUMA node new pages come from.
    #[serde(default)]
    pub node: Option<u16>,
    /// pfnmap/mixedmap: first device pfn.
    #[serde(default)]
    pub pfn: Option<Num>,
    /// pfnmap: "pte" | "pmd" | "pud".
    #[serde(default)]
    pub huge: Option<String>,
    /// The driver inserts with mkwrite.
    #[serde(default)]
    pub mkwrite: bool,
    /// The driver has pfn_mkwrite.
    #[serde(default)]
    pub pfn_mkwrite: bool,
    /// pfnmap populated at mmap with remap_pfn_range().
    #[serde(default)]
    pub remap: bool,
}

fn default_prot() -> String {
    "rw".into()
}
fn default_kind() -> String {
    "anon".into()
}

/// `[[step]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// Operation name.
    pub op: String,
    /// Guest access address.
    #[serde(default)]
    pub gpa: Option<Num>,
    /// vCPU (recorded; the model has one set of fault state).
    #[serde(default)]
    pub vcpu: Option<u32>,
    /// Host range start.
    #[serde(default)]
    pub start: Option<Num>,
    /// Host range size.
    #[serde(default)]
    pub size: Option<Num>,
    /// mprotect protection.
    #[serde(default)]
    pub prot: Option<String>,
    /// madvise advice.
    #[serde(default)]
    pub advice: Option<String>,
    /// migrate target node.
    #[serde(default)]
    pub node: Option<u16>,
    /// Memslot id.
    #[serde(default)]
    pub memslot: Option<u16>,
    /// `uffd-register` modes: "missing", "wp".
    #[serde(default)]
    pub mode: Option<Vec<String>>,
    /// `signal` step: "none" | "pending" | "fatal" (the VMM thread's pending signal).
    #[serde(default)]
    pub signal: Option<String>,
    /// Explorer: this step races with the other `race = true` steps (see
    /// [`crate::explore`]); ignored by plain replay.
    #[serde(default)]
    pub race: bool,
}

/// A hex-formatted address in the output.
fn hex(v: u64) -> String {
    format!("{v:#x}")
}

/// GUP summary in a step record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GupRecord {
    /// "fast" | "slow" | "remapped".
    pub path: String,
    /// FOLL flags.
    pub flags: Vec<String>,
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StepRecord {
    /// Step index.
    pub step: usize,
    /// Operation.
    pub op: String,
    /// Guest address (guest steps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpa: Option<String>,
    /// "hit", "fixed", ... for guest steps; "ok" for host steps.
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
    pub host_faults: Vec<String>,
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
}

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

/// What `faultline sim FILE [--json] [--explore]` prints, given the file's text: the step
/// table (or JSON lines with `json`), or with `explore` the interleaving explorer's report
/// over the file's `race = true` steps (one JSON object with `json`).
pub fn sim(text: &str, json: bool, explore: bool) -> Result<String, ScenarioError> {
    if explore {
        let r = crate::explore::explore_scenario(text, crate::explore::ExploreOptions::default())?;
        return Ok(if json { r.json() } else { r.render() });
    }
    let run = run_scenario(text)?;
    Ok(if json {
        run.json_lines()
    } else {
        run.render_table()
    })
}

/// Parses and runs a scenario.
pub fn run_scenario(text: &str) -> Result<ScenarioRun, ScenarioError> {
    let sc: Scenario = toml::from_str(text)?;
    run(&sc)
}

fn bool_or(v: Option<bool>, d: bool) -> bool {
    v.unwrap_or(d)
}

/// Builds the host and the VM of a parsed scenario.
pub fn build(sc: &Scenario) -> Result<(Mm, Kvm), ScenarioError> {
    let kernel: KernelVersion = match &sc.kernel {
        Some(k) => k
            .parse()
            .map_err(|e: crate::types::ParseKernelVersionError| {
                ScenarioError::Invalid(e.to_string())
            })?,
        None => KernelVersion::V6_12,
    };
    let thp = match sc.thp.as_deref().unwrap_or("madvise") {
        "always" => ThpMode::Always,
        "madvise" => ThpMode::Madvise,
        "never" => ThpMode::Never,
        o => {
            return Err(ScenarioError::Invalid(format!(
                "thp = {o:?}: use \"always\", \"madvise\" or \"never\""
            )))
        }
    };
    let mut mmc = MmConfig {
        kernel,
        thp,
        ..MmConfig::default()
    };
    if let Some(n) = sc.nodes {
        mmc.nodes = n;
    }
    if let Some(n) = sc.task_node {
        mmc.task_node = NodeId(n);
    }
    mmc.multi_threaded = bool_or(sc.multi_threaded, mmc.multi_threaded);
    mmc.numa_balancing = bool_or(sc.numa_balancing, mmc.numa_balancing);
    mmc.use_huge_zero_page = bool_or(sc.huge_zero_page, mmc.use_huge_zero_page);
    let mut mm = Mm::new(mmc);
    let kc = KvmConfig {
        kernel,
        max_huge_page_level: if bool_or(sc.tdp_1g, true) {
            Level::Pud1G
        } else {
            Level::Pmd2M
        },
        ad_enabled: bool_or(sc.ad_bits, true),
        async_pf: bool_or(sc.async_pf, true),
        eager_page_split: bool_or(sc.eager_page_split, true),
        ..KvmConfig::default()
    };
    let mut kvm = Kvm::new(kc);
    for (i, v) in sc.vma.iter().enumerate() {
        let what = format!("vma {i} at {:#x}", v.start.0);
        let prot: Prot = v
            .prot
            .parse()
            .map_err(|e: crate::host::vma::ParseProtError| ScenarioError::Setup {
                what: what.clone(),
                message: e.to_string(),
            })?;
        let backing = match v.kind.as_str() {
            "anon" => Backing::Anon,
            "shmem" => Backing::Shmem,
            "pfnmap" | "mixedmap" | "devdax" => {
                let max_level = match v.huge.as_deref().unwrap_or("pte") {
                    "pte" => Level::Pte4K,
                    "pmd" => Level::Pmd2M,
                    "pud" => Level::Pud1G,
                    o => {
                        return Err(ScenarioError::Setup {
                            what,
                            message: format!("huge = {o:?}: use \"pte\", \"pmd\" or \"pud\""),
                        })
                    }
                };
                Backing::Device(DeviceSpec {
                    kind: match v.kind.as_str() {
                        "pfnmap" => DeviceKind::Pfnmap,
                        "mixedmap" => DeviceKind::Mixedmap,
                        _ => DeviceKind::DevDax,
                    },
                    base_pfn: v.pfn.map(|p| Pfn(p.0)),
                    max_level,
                    mkwrite: v.mkwrite,
                    pfn_mkwrite: v.pfn_mkwrite,
                    page_mkwrite: false,
                    remap: v.remap,
                })
            }
            o => {
                return Err(ScenarioError::Setup {
                    what,
                    message: format!(
                    "kind = {o:?}: use \"anon\", \"shmem\", \"pfnmap\", \"mixedmap\" or \"devdax\""
                ),
                })
            }
        };
        if v.kind == "pfnmap" && v.pfn.is_none() {
            return Err(ScenarioError::Setup {
                what,
                message: "a pfnmap vma needs pfn = \"0x...\" (its first device pfn)".into(),
            });
        }
        mm.mmap(MmapRequest {
            addr: Some(Hva(v.start.0)),
            len: v.size.0,
            prot,
            shared: v.shared,
            backing,
            node: v.node.map(NodeId),
            hugepage: v.thp,
        })
        .map_err(|e| ScenarioError::Setup {
            what,
            message: e.to_string(),
        })?;
    }
    for m in &sc.memslot {
        let mut flags = MemslotFlags::default();
        for f in &m.flags {
            match f.as_str() {
                "readonly" => flags.readonly = true,
                "dirty-log" => flags.dirty_log = true,
                o => {
                    return Err(ScenarioError::Setup {
                        what: format!("memslot {}", m.id),
                        message: format!("flag {o:?}: use \"readonly\" or \"dirty-log\""),
                    })
                }
            }
        }
        kvm.create_memslot(m.id, Gpa(m.gpa.0), m.size.0, Hva(m.hva.0), flags)
            .map_err(|e| ScenarioError::Setup {
                what: format!("memslot {}", m.id),
                message: e.to_string(),
            })?;
    }
    kvm.start_trace();
    Ok((mm, kvm))
}

fn run(sc: &Scenario) -> Result<ScenarioRun, ScenarioError> {
    let (mut mm, mut kvm) = build(sc)?;
    let mut steps = Vec::with_capacity(sc.step.len());
    for (i, st) in sc.step.iter().enumerate() {
        let rec = run_step(&mut mm, &mut kvm, i, st)?;
        steps.push(rec);
    }
    Ok(ScenarioRun {
        steps,
        stats: kvm.stats(),
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

/// Runs one step and records it.
pub fn run_step(
    mm: &mut Mm,
    kvm: &mut Kvm,
    i: usize,
    st: &StepSpec,
) -> Result<StepRecord, ScenarioError> {
    let op = st.op.as_str();
    let _ = kvm.take_trace();
    let mut rec = StepRecord {
        step: i,
        op: st.op.clone(),
        gpa: None,
        result: "ok".into(),
        retries: 0,
        level: None,
        writable: None,
        gup: None,
        host_faults: Vec::new(),
        notifiers: Vec::new(),
        zapped: Vec::new(),
        young: None,
        dirty: None,
        async_pf: None,
    };
    let slot_id = || {
        st.memslot
            .ok_or_else(|| step_err(i, op, "needs memslot = <id>"))
    };
    let e = |m: String| step_err(i, op, m);
    let mut host_faults = Vec::new();
    match op {
        "read" | "write" | "exec" => {
            let gpa = Gpa(st
                .gpa
                .ok_or_else(|| step_err(i, op, "needs gpa = \"0x...\""))?
                .0);
            let access = match op {
                "read" => Access::Read,
                "write" => Access::Write,
                _ => Access::Exec,
            };
            let r = kvm.guest_access(mm, gpa, access);
            rec.gpa = Some(hex(gpa.0));
            rec.result = result_name(r.result).into();
            rec.retries = r.retries;
            rec.gup = r.gup.map(|g| GupRecord {
                path: match g.path {
                    crate::gup::GupPath::Fast => "fast",
                    crate::gup::GupPath::Slow => "slow",
                    crate::gup::GupPath::Remapped => "remapped",
                    crate::gup::GupPath::None => "none",
                }
                .into(),
                flags: g.flags.names().iter().map(|s| s.to_string()).collect(),
            });
            host_faults = r.host_faults;
            if r.async_pf > 0 {
                rec.async_pf = Some(r.async_pf);
            }
            if let Some((l, s)) = kvm.spte_at(gpa) {
                rec.level = Some(l);
                rec.writable = Some(s.is_writable());
            }
        }
        "munmap"
        | "mprotect"
        | "madvise"
        | "numa-scan"
        | "migrate"
        | "thp-split"
        | "unmap-mapping-range"
        | "clear-young"
        | "test-young"
        | "fork" => {
            rec.young = host_op(mm, i, st, kvm)?;
        }
        "release" => {
            kvm.release();
        }
        "exit" => {
            mm.exit(kvm);
        }
        "uffd-register" => {
            let s = st
                .start
                .ok_or_else(|| step_err(i, op, "needs start = \"0x...\""))?;
            let z = st
                .size
                .ok_or_else(|| step_err(i, op, "needs size = \"2M\""))?;
            let mut mode = crate::host::UffdMode::default();
            for m in st.mode.as_deref().unwrap_or(&["missing".to_string()]) {
                match m.as_str() {
                    "missing" => mode.missing = true,
                    "wp" => mode.wp = true,
                    o => return Err(e(format!("mode {o:?}: use \"missing\" and/or \"wp\""))),
                }
            }
            mm.uffd_register(Hva(s.0), z.0, mode)
                .map_err(|x| e(x.to_string()))?;
        }
        "uffdio-copy" | "uffdio-zeropage" => {
            let s = st
                .start
                .ok_or_else(|| step_err(i, op, "needs start = \"0x...\""))?;
            if op == "uffdio-copy" {
                mm.uffdio_copy(Hva(s.0), false)
            } else {
                mm.uffdio_zeropage(Hva(s.0))
            }
            .map_err(|x| e(x.to_string()))?;
        }
        "memory-failure" => {
            let hva = Hva(st
                .start
                .ok_or_else(|| step_err(i, op, "needs start = \"0x...\" (the hva of the page)"))?
                .0);
            let m = mm
                .lookup(hva)
                .filter(|m| m.present)
                .ok_or_else(|| e(format!("nothing is mapped at {hva} to poison")))?;
            mm.memory_failure(m.pfn, kvm)
                .map_err(|x| e(x.to_string()))?;
        }
        "signal" => {
            use crate::host::PendingSignal;
            let sig = match st.signal.as_deref() {
                Some("none") => PendingSignal::None,
                Some("pending") => PendingSignal::NonFatal,
                Some("fatal") => PendingSignal::Fatal,
                o => {
                    return Err(e(format!(
                        "signal = {o:?}: use \"none\", \"pending\" or \"fatal\""
                    )))
                }
            };
            mm.set_pending_signal(sig);
        }
        "dirty-log-enable" => {
            kvm.dirty_log_enable(slot_id()?)
                .map_err(|x| e(x.to_string()))?;
        }
        "dirty-log-get" | "dirty-log-clear" => {
            let id = slot_id()?;
            let d = if op == "dirty-log-get" {
                kvm.dirty_log_get(id)
            } else {
                kvm.dirty_log_clear(id)
            }
            .map_err(|x| e(x.to_string()))?;
            rec.dirty = Some(d.iter().map(|g| hex(g.0)).collect());
        }
        "memslot-delete" => {
            kvm.delete_memslot(slot_id()?)
                .map_err(|x| e(x.to_string()))?;
        }
        other => {
            return Err(step_err(
                i,
                other,
                "unknown op: use read|write|exec, munmap, mprotect, madvise, numa-scan, migrate, \
                 thp-split, fork, unmap-mapping-range, clear-young, clear-flush-young, \
                 test-young, release, exit, signal, memory-failure, uffd-register, uffdio-copy, \
                 uffdio-zeropage, dirty-log-enable|get|clear, memslot-delete",
            ))
        }
    }
    let t = kvm.take_trace();
    rec.host_faults = host_faults.iter().map(|h| h.name().to_string()).collect();
    rec.notifiers = t
        .notifiers
        .iter()
        .map(|n| NotifierOut {
            event: n.event,
            start: hex(n.start.0),
            end: hex(n.end.0),
        })
        .collect();
    rec.zapped = t
        .zapped
        .iter()
        .map(|z| ZapOut {
            gfn_start: hex(z.gfn_start.0),
            gfn_end: hex(z.gfn_end.0),
            level: z.level,
        })
        .collect();
    Ok(rec)
}

/// Runs a host operation step with `notifier` as the subscriber; returns the young answer
/// of aging operations.
pub fn host_op(
    mm: &mut Mm,
    i: usize,
    st: &StepSpec,
    notifier: &mut dyn MmuNotifier,
) -> Result<Option<bool>, ScenarioError> {
    let op = st.op.as_str();
    let e = |m: String| step_err(i, op, m);
    let range = || -> Result<(Hva, u64), ScenarioError> {
        let s = st
            .start
            .ok_or_else(|| step_err(i, op, "needs start = \"0x...\" (a host virtual address)"))?;
        let z = st
            .size
            .ok_or_else(|| step_err(i, op, "needs size = \"4K\" (bytes, or 4K/2M/1G)"))?;
        Ok((Hva(s.0), z.0))
    };
    let kvm = notifier;
    let mut young = None;
    match op {
        "munmap" => {
            let (s, z) = range()?;
            mm.munmap(s, z, kvm).map_err(|x| e(x.to_string()))?;
        }
        "mprotect" => {
            let (s, z) = range()?;
            let p: Prot = st
                .prot
                .as_deref()
                .ok_or_else(|| step_err(i, op, "needs prot = \"r\" (none|r|rw|rwx)"))?
                .parse()
                .map_err(|x: crate::host::vma::ParseProtError| e(x.to_string()))?;
            mm.mprotect(s, z, p, kvm).map_err(|x| e(x.to_string()))?;
        }
        "madvise" => {
            let (s, z) = range()?;
            let a = match st.advice.as_deref() {
                Some("dontneed") => Advice::Dontneed,
                Some("free") => Advice::Free,
                Some("hugepage") => Advice::Hugepage,
                Some("nohugepage") => Advice::Nohugepage,
                Some("collapse") => Advice::Collapse,
                o => {
                    return Err(e(format!(
                        "advice = {o:?}: use dontneed|free|hugepage|nohugepage|collapse"
                    )))
                }
            };
            mm.madvise(s, z, a, kvm).map_err(|x| e(x.to_string()))?;
        }
        "numa-scan" => {
            let (s, z) = range()?;
            mm.numa_scan(s, z, kvm).map_err(|x| e(x.to_string()))?;
        }
        "migrate" => {
            let (s, z) = range()?;
            let n = st
                .node
                .ok_or_else(|| step_err(i, op, "needs node = <target node>"))?;
            mm.migrate(s, z, NodeId(n), kvm)
                .map_err(|x| e(x.to_string()))?;
        }
        "thp-split" => {
            let (s, z) = range()?;
            mm.thp_split(s, z, kvm).map_err(|x| e(x.to_string()))?;
        }
        "unmap-mapping-range" => {
            let (s, z) = range()?;
            mm.unmap_mapping_range(s, z, kvm)
                .map_err(|x| e(x.to_string()))?;
        }
        "clear-young" => {
            let (s, z) = range()?;
            let r = mm.clear_young(s, z, kvm).map_err(|x| e(x.to_string()))?;
            young = r.young;
        }
        "fork" => {
            mm.fork(kvm).map_err(|x| e(x.to_string()))?;
        }
        "test-young" => {
            let (s, z) = range()?;
            let r = mm.test_young(s, z, kvm).map_err(|x| e(x.to_string()))?;
            young = r.young;
        }
        "clear-flush-young" => {
            let (s, z) = range()?;
            let r = mm
                .clear_flush_young(s, z, kvm)
                .map_err(|x| e(x.to_string()))?;
            young = r.young;
        }
        other => return Err(step_err(i, other, "not a host operation")),
    }
    Ok(young)
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
    }
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

    #[test]
    fn numbers_accept_hex_decimal_sizes_and_integers() {
        assert_eq!(parse_num("0x1000"), Ok(0x1000));
        assert_eq!(parse_num("4K"), Ok(4096));
        assert_eq!(parse_num("2M"), Ok(2 << 20));
        assert_eq!(parse_num("1G"), Ok(1 << 30));
        assert_eq!(parse_num("12"), Ok(12));
        assert!(parse_num("0xzz").unwrap_err().contains("\"0x...\""));
        let s: Scenario =
            toml::from_str("[[memslot]]\nid = 0\ngpa = 0\nsize = \"2M\"\nhva = 4096\n").unwrap();
        assert_eq!(s.memslot[0].size, Num(2 << 20));
    }

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
                let r = crate::explore::explore_scenario(&text, Default::default())
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

    #[test]
    fn sim_prints_a_table_json_lines_or_the_explorer_report() {
        let text =
            std::fs::read_to_string(scenario_dir().join("trace1-anon-4k-read-then-write.toml"))
                .unwrap();
        let table = sim(&text, false, false).unwrap();
        assert!(table.contains("wp-copy"), "{table}");
        let json = sim(&text, true, false).unwrap();
        let last = json.lines().last().unwrap();
        let v: serde_json::Value = serde_json::from_str(last).unwrap();
        assert_eq!(v["stats"]["faults"]["retry"], 1);
        assert_eq!(json.lines().count(), 4);
        let text =
            std::fs::read_to_string(scenario_dir().join("trace4-concurrent-invalidate.toml"))
                .unwrap();
        assert!(sim(&text, false, true).unwrap().contains("no stale SPTE"));
    }

    #[test]
    fn step_errors_name_the_step_and_the_missing_key() {
        let e = run_scenario("[[step]]\nop = \"munmap\"\nstart = 0\n").unwrap_err();
        assert!(
            e.to_string().contains("Step 0 (munmap)") && e.to_string().contains("size"),
            "{e}"
        );
        let e = run_scenario("[[step]]\nop = \"frobnicate\"\n").unwrap_err();
        assert!(e.to_string().contains("unknown op"), "{e}");
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let e = run_scenario("kernel = \"6.12\"\nbogus = 1\n").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = run_scenario("kernel = \"5.4\"\n").unwrap_err();
        assert!(e.to_string().contains("6.12"), "{e}");
    }
}
