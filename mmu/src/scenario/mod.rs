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
//! kind = "anon"                    # "anon" | "shmem" | "memfd" | "file" | "hugetlb"
//!                                  # | "pfnmap" | "mixedmap" | "devdax"
//! page_size = "2M"                 # hugetlb: "2M" | "1G"
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
//! Each `[[step]]` is one [`Step`] variant with exactly its own keys (an unknown key or op is
//! an error naming the step index). Host steps: `munmap`, `mprotect` (`prot`), `madvise`
//! (`advice`: "dontneed" | "free" | "hugepage" | "nohugepage" | "collapse" | "pageout" |
//! "cold" | "populate-read" | "populate-write" | "mergeable" | "unmergeable"), `mremap`
//! (`start`, `size`, `new_start`, optional `new_size`), `fallocate-punch-hole`, `ksm-scan`, `numa-scan`, `migrate` (`node`), `thp-split`,
//! `unmap-mapping-range`, `clear-young`, `clear-flush-young`, `test-young`, each over
//! `start` + `size`; `fork`; `dirty-log-enable`, `dirty-log-get`, `dirty-log-clear`,
//! `memslot-delete` with `memslot = id`; `release` (the `release` notifier alone) and
//! `exit` (`exit_mmap()`: release, then every VMA unmapped); `signal` with `signal =
//! "none" | "pending" | "fatal"` (a signal pending on the vCPU thread); `memory-failure`
//! with `start` (poison the page mapped there: `memory_failure()`); `uffd-register`
//! (`start`, `size`, `mode = ["missing", "wp", "minor"]`), `uffdio-copy` and
//! `uffdio-zeropage` (`start`), `uffdio-continue` (`start`, optional `size`),
//! `uffdio-writeprotect` (`start`, `size`, `wp = true`): userfaultfd, as the VMM's
//! demand-paging service uses it; `memslot-create` (the keys of a `[[memslot]]`),
//! `memslot-move` (`memslot`, `gpa`), `memslot-flags` (`memslot`, `flags`). Guest steps
//! and the invalidating host steps take `race = true`; guest steps take `vcpu`, `write`
//! takes `value`; a guest step whose gpa is outside every memslot the file declares is an
//! error unless it says `mmio = true`. A step the model has no machinery for returns the result
//! "not-modelled" with the reason ([`StepRecord::not_modelled`]).
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
//! [`ScenarioRunner`] runs the steps one at a time (what `faultline check` drives), with
//! [`ModelOptions`] overriding the file's kernel and host conditions.
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

pub mod contents;
#[cfg(test)]
mod fuzz;
mod outcome;
mod runner;
pub mod step;

pub use outcome::{
    gup_path_name, result_name, GupOutcome, GupRecord, NotifierOut, StepOutcome, StepRecord,
    StepResult, UffdEventOut, WokenAccess, ZapOut,
};
pub use runner::{
    host_op, json_lines, render_table, run_step, HostConditions, HostOpOutcome, HostPage,
    HostPageKind, ModelBug, ModelOptions, ScenarioRun, ScenarioRunner,
};
pub use step::{Step, KNOWN_OPS};

use crate::host::{Backing, DeviceKind, DeviceSpec, Mm, MmConfig, MmapRequest, Prot, ThpMode};
use crate::secondary::memslot::MemslotFlags;
use crate::secondary::{Kvm, KvmConfig};
use crate::types::{Gpa, Hva, KernelVersion, Level, NodeId, Pfn};
use serde::{Deserialize, Serialize};

/// A scenario could not be parsed or run.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file is not valid TOML for the schema.
    #[error("Invalid scenario: {0}")]
    Parse(#[from] toml::de::Error),
    /// A value is wrong: {0}
    #[error("Invalid scenario: {0}")]
    Invalid(String),
    /// A `[[step]]` does not parse (unknown op, unknown or missing key, bad value).
    #[error("Step {step}: {message}")]
    StepParse {
        /// Step index (0-based, in file order).
        step: usize,
        /// What is wrong and how to fix it.
        message: String,
    },
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
    /// [`ScenarioRunner::step`] was called out of order.
    #[error("Step {asked} asked for, but the next step to run is {next}: run the steps in order, each once")]
    OutOfOrder {
        /// The index asked for.
        asked: usize,
        /// The next index to run.
        next: usize,
    },
}

/// A number: an integer, or a string in hex ("0x1000"), decimal, or with a K/M/G suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Num(pub u64);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Num;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number: an integer, \"0x...\" or a size like \"4K\", \"2M\", \"1G\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Num, E> {
                Ok(Num(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Num, E> {
                u64::try_from(v)
                    .map(Num)
                    .map_err(|_| E::custom(format!("negative number {v}")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Num, E> {
                parse_num(v).map(Num).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
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

/// The schema name of a protection ("none", "r", "rw", "rx", "rwx", ...).
pub fn prot_name(p: Prot) -> String {
    if p == Prot::NONE {
        return "none".into();
    }
    let mut s = String::new();
    if p.read {
        s.push('r');
    }
    if p.write {
        s.push('w');
    }
    if p.exec {
        s.push('x');
    }
    s
}

/// The scenario file, parsed and checked ([`Scenario::from_toml`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Scenario {
    /// Which rules apply (default 6.12).
    pub kernel: Option<KernelVersion>,
    /// `kvm_can_do_async_pf()`.
    pub async_pf: Option<bool>,
    /// A/D bits in the TDP tables.
    pub ad_bits: Option<bool>,
    /// The TDP MMU supports 1G leaves.
    pub tdp_1g: Option<bool>,
    /// `eager_page_split`.
    pub eager_page_split: Option<bool>,
    /// THP policy.
    pub thp: Option<ThpMode>,
    /// NUMA nodes.
    pub nodes: Option<u16>,
    /// Node of the VMM's tasks.
    pub task_node: Option<u16>,
    /// mm_users > 1.
    pub multi_threaded: Option<bool>,
    /// NUMA balancing on.
    pub numa_balancing: Option<bool>,
    /// transparent_hugepage/use_zero_page.
    pub huge_zero_page: Option<bool>,
    /// Memslots.
    pub memslot: Vec<MemslotSpec>,
    /// VMAs, mapped in order.
    pub vma: Vec<VmaSpec>,
    /// Steps.
    pub step: Vec<Step>,
}

/// The file as TOML sees it: steps are parsed one by one afterwards so their errors carry
/// the step index.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    #[serde(default)]
    kernel: Option<String>,
    #[serde(default)]
    async_pf: Option<bool>,
    #[serde(default)]
    ad_bits: Option<bool>,
    #[serde(default)]
    tdp_1g: Option<bool>,
    #[serde(default)]
    eager_page_split: Option<bool>,
    #[serde(default)]
    thp: Option<ThpMode>,
    #[serde(default)]
    nodes: Option<u16>,
    #[serde(default)]
    task_node: Option<u16>,
    #[serde(default)]
    multi_threaded: Option<bool>,
    #[serde(default)]
    numa_balancing: Option<bool>,
    #[serde(default)]
    huge_zero_page: Option<bool>,
    #[serde(default)]
    memslot: Vec<toml::Table>,
    #[serde(default)]
    vma: Vec<toml::Table>,
    #[serde(default)]
    step: Vec<toml::Table>,
}

/// Parses the `index`th `[[what]]` table, naming it in the error.
fn entry<T: serde::de::DeserializeOwned>(
    what: &str,
    index: usize,
    t: toml::Table,
) -> Result<T, ScenarioError> {
    T::deserialize(toml::Value::Table(t)).map_err(|e| ScenarioError::Setup {
        what: format!("[[{what}]] entry {index}"),
        message: e.message().trim_end().to_string(),
    })
}

/// A memslot flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemslotFlag {
    /// `KVM_MEM_READONLY`.
    Readonly,
    /// `KVM_MEM_LOG_DIRTY_PAGES`.
    DirtyLog,
}

/// The KVM flags of a flag list.
pub fn memslot_flags(flags: &[MemslotFlag]) -> MemslotFlags {
    let mut f = MemslotFlags::default();
    for x in flags {
        match x {
            MemslotFlag::Readonly => f.readonly = true,
            MemslotFlag::DirtyLog => f.dirty_log = true,
        }
    }
    f
}

/// `[[memslot]]` (and the `memslot-create` step).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    pub flags: Vec<MemslotFlag>,
}

/// What backs a `[[vma]]` (`kind`): the one [`Backing`](crate::backing::Backing) type, with
/// its kebab names (`anon`, `thp` (read as `anon` with `thp = true`), `shmem`, `memfd`,
/// `file`, `hugetlb`, `pfnmap`, `mixedmap`, `devdax`).
pub use crate::backing::Backing as VmaKind;
pub use crate::backing::PageSize;

/// The largest leaf a device driver inserts (`huge` of a pfnmap/mixedmap/devdax VMA).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HugeLevel {
    /// PTEs only.
    #[default]
    Pte,
    /// PMD leaves (`vmf_insert_pfn_pmd()`).
    Pmd,
    /// PUD leaves (`vmf_insert_pfn_pud()`).
    Pud,
}

impl HugeLevel {
    /// The level.
    pub fn level(self) -> Level {
        match self {
            HugeLevel::Pte => Level::Pte4K,
            HugeLevel::Pmd => Level::Pmd2M,
            HugeLevel::Pud => Level::Pud1G,
        }
    }
}

fn default_prot() -> Prot {
    Prot::RW
}

/// `[[vma]]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmaSpec {
    /// Start hva.
    pub start: Num,
    /// Size.
    pub size: Num,
    /// "none" | "r" | "rw" | "rx" | "rwx" (default "rw").
    #[serde(default = "default_prot", with = "step::prot_str")]
    pub prot: Prot,
    /// What backs it (default "anon").
    #[serde(default)]
    pub kind: VmaKind,
    /// MAP_SHARED.
    #[serde(default)]
    pub shared: bool,
    /// MADV_HUGEPAGE.
    #[serde(default)]
    pub thp: bool,
    /// hugetlb: the huge page size (default 2M).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_size: Option<PageSize>,
    /// NUMA node new pages come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u16>,
    /// pfnmap/mixedmap: first device pfn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pfn: Option<Num>,
    /// pfnmap/mixedmap/devdax: the largest leaf the driver inserts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge: Option<HugeLevel>,
    /// The driver inserts with mkwrite.
    #[serde(default)]
    pub mkwrite: bool,
    /// The driver has pfn_mkwrite.
    #[serde(default)]
    pub pfn_mkwrite: bool,
    /// pfnmap populated at mmap with remap_pfn_range().
    #[serde(default)]
    pub remap: bool,
    /// For `faultline check`: this pfnmap is the VMM's own `[vvar]` pages (a VM_PFNMAP|VM_IO
    /// mapping every x86 Linux host has, filled by its fault handler), the one real pfnmap a
    /// host without a device driver can run. The model ignores it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub vvar: bool,
}

impl VmaSpec {
    /// First hva.
    pub fn start(&self) -> Hva {
        Hva(self.start.0)
    }
    /// End hva (exclusive; saturating).
    pub fn end(&self) -> Hva {
        Hva(self.start.0.saturating_add(self.size.0))
    }
    /// True when `hva` is inside.
    pub fn contains(&self, hva: Hva) -> bool {
        hva >= self.start() && hva < self.end()
    }
    /// The backing with its options: kind, page size, sharing (the one type `--backing` and
    /// `bench faults -s` parse into too).
    pub fn backing_spec(&self) -> crate::backing::BackingSpec {
        let backing = if self.thp && self.kind == VmaKind::Anon {
            VmaKind::Thp
        } else {
            self.kind
        };
        crate::backing::BackingSpec {
            backing,
            page_size: self.hugetlb_size().unwrap_or(PageSize::Size4K),
            shared: self.shared || matches!(self.kind, VmaKind::Shmem | VmaKind::Memfd),
            prefault: false,
        }
    }
    /// The hugetlb page size (2M unless `page_size` says otherwise); `None` for other kinds.
    pub fn hugetlb_size(&self) -> Option<PageSize> {
        (self.kind == VmaKind::Hugetlb).then(|| self.page_size.unwrap_or(PageSize::Size2M))
    }
}

impl Scenario {
    /// Parses and checks a scenario file: every value is typed, every step checked (unknown
    /// op or key, sizes that do not parse), memslots must not overlap, and every guest
    /// access must fall in some memslot the file declares (`[[memslot]]`, `memslot-create`
    /// or a `memslot-move` target).
    pub fn from_toml(text: &str) -> Result<Scenario, ScenarioError> {
        let raw: RawScenario = toml::from_str(text)?;
        let kernel = raw
            .kernel
            .as_deref()
            .map(|k| {
                k.parse::<KernelVersion>()
                    .map_err(|e| ScenarioError::Invalid(e.to_string()))
            })
            .transpose()?;
        let step = raw
            .step
            .into_iter()
            .enumerate()
            .map(|(i, t)| Step::from_table(i, t))
            .collect::<Result<Vec<_>, _>>()?;
        let sc = Scenario {
            kernel,
            async_pf: raw.async_pf,
            ad_bits: raw.ad_bits,
            tdp_1g: raw.tdp_1g,
            eager_page_split: raw.eager_page_split,
            thp: raw.thp,
            nodes: raw.nodes,
            task_node: raw.task_node,
            multi_threaded: raw.multi_threaded,
            numa_balancing: raw.numa_balancing,
            huge_zero_page: raw.huge_zero_page,
            memslot: raw
                .memslot
                .into_iter()
                .enumerate()
                .map(|(i, t)| entry("memslot", i, t))
                .collect::<Result<_, _>>()?,
            vma: raw
                .vma
                .into_iter()
                .enumerate()
                .map(|(i, t)| {
                    // `kind = "thp"` is `kind = "anon"` with `thp = true`.
                    entry("vma", i, t).map(|mut v: VmaSpec| {
                        if v.kind == VmaKind::Thp {
                            (v.kind, v.thp) = (VmaKind::Anon, true);
                        }
                        v
                    })
                })
                .collect::<Result<_, _>>()?,
            step,
        };
        sc.validate()?;
        Ok(sc)
    }

    fn validate(&self) -> Result<(), ScenarioError> {
        for (i, v) in self.vma.iter().enumerate() {
            let what = || format!("vma {i} at {:#x}", v.start.0);
            let bad = |message: String| ScenarioError::Setup {
                what: what(),
                message,
            };
            let device = matches!(
                v.kind,
                VmaKind::Pfnmap | VmaKind::Mixedmap | VmaKind::Devdax
            );
            if v.kind == VmaKind::Pfnmap && v.pfn.is_none() {
                return Err(bad(
                    "a pfnmap vma needs pfn = \"0x...\" (its first device pfn)".into(),
                ));
            }
            if !device
                && (v.pfn.is_some() || v.huge.is_some() || v.mkwrite || v.pfn_mkwrite || v.remap)
            {
                return Err(bad(format!(
                    "pfn, huge, mkwrite, pfn_mkwrite and remap apply to pfnmap, mixedmap and \
                     devdax vmas only, not to kind = {:?}: remove them or change the kind",
                    kind_name(v.kind)
                )));
            }
            if v.vvar && (v.kind != VmaKind::Pfnmap || v.prot.write || v.remap) {
                return Err(bad(
                    "vvar = true needs kind = \"pfnmap\", prot = \"r\" and no remap: [vvar] is a read-only pfnmap filled on fault"
                        .into(),
                ));
            }
            if let Some(pfn) = v.pfn {
                // x86-64's MAX_PHYSMEM_BITS (52, arch/x86/include/asm/sparsemem.h): a device
                // pfn range past it cannot exist, and would overflow the model's pfn sums.
                const MAX_PFN: u64 = 1 << (52 - 12);
                let pages = v.size.0.div_ceil(4096);
                if !matches!(pfn.0.checked_add(pages), Some(end) if end <= MAX_PFN) {
                    return Err(bad(format!(
                        "pfn {:#x} + {pages} pages runs past the 52-bit physical address space \
                         (last pfn {:#x}): use a smaller pfn",
                        pfn.0,
                        MAX_PFN - 1
                    )));
                }
            }
            if v.page_size.is_some() && v.kind != VmaKind::Hugetlb {
                return Err(bad(
                    "page_size applies to kind = \"hugetlb\" only: remove it (use thp = true for THP)"
                        .into(),
                ));
            }
            if let Some(ps) = v.hugetlb_size() {
                let sz = ps.level().size();
                if v.start.0 % sz != 0 || v.size.0 % sz != 0 || v.size.0 == 0 {
                    return Err(bad(format!(
                        "a hugetlb vma must start and end on a {} boundary (MAP_HUGETLB rounds \
                         the length; mmap fails on an unaligned address)",
                        level_name(ps.level())
                    )));
                }
            }
        }
        let mut slots: Vec<(String, u64, u64)> = Vec::new();
        for m in &self.memslot {
            let end = m
                .gpa
                .0
                .checked_add(m.size.0)
                .ok_or_else(|| ScenarioError::Setup {
                    what: format!("memslot {}", m.id),
                    message: "gpa + size overflows".into(),
                })?;
            for (name, s, e) in &slots {
                if m.gpa.0 < *e && *s < end {
                    return Err(ScenarioError::Setup {
                        what: format!("memslot {}", m.id),
                        message: format!(
                            "[{:#x}, {end:#x}) overlaps {name} [{s:#x}, {e:#x}): pick a free \
                             guest range (KVM_SET_USER_MEMORY_REGION fails with EEXIST)",
                            m.gpa.0
                        ),
                    });
                }
            }
            slots.push((format!("memslot {}", m.id), m.gpa.0, end));
        }
        // Every range a slot can cover during the run.
        let mut ranges: Vec<(u64, u64)> = slots.iter().map(|(_, s, e)| (*s, *e)).collect();
        let size_of = |id: u16, ranges_src: &[MemslotSpec], created: &[MemslotSpec]| {
            ranges_src
                .iter()
                .chain(created)
                .find(|m| m.id == id)
                .map(|m| m.size.0)
        };
        let mut created: Vec<MemslotSpec> = Vec::new();
        for s in &self.step {
            match s {
                Step::MemslotCreate(m) => {
                    ranges.push((m.gpa.0, m.gpa.0.saturating_add(m.size.0)));
                    created.push(m.clone());
                }
                Step::MemslotMove(mv) => {
                    if let Some(sz) = size_of(mv.memslot, &self.memslot, &created) {
                        ranges.push((mv.gpa.0, mv.gpa.0.saturating_add(sz)));
                    }
                }
                _ => {}
            }
        }
        for (i, s) in self.step.iter().enumerate() {
            if let Some((_, gpa, _)) = s.guest_access() {
                if !s.declared_mmio() && !ranges.iter().any(|(a, b)| gpa >= *a && gpa < *b) {
                    return Err(ScenarioError::StepParse {
                        step: i,
                        message: format!(
                            "{} at gpa {gpa:#x} is outside every memslot the scenario declares: \
                             add a [[memslot]] covering it, fix the gpa, or add mmio = true \
                             if the access is meant to exit as MMIO",
                            s.name()
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// The kernel rules of the file (6.12 when it names none).
    pub fn kernel(&self) -> KernelVersion {
        self.kernel.unwrap_or(KernelVersion::V6_12)
    }

    /// The VMA spec covering `hva`, if any (as declared, before any step).
    pub fn vma_at(&self, hva: Hva) -> Option<&VmaSpec> {
        self.vma.iter().find(|v| v.contains(hva))
    }
}

/// The schema name of a VMA kind.
pub fn kind_name(k: VmaKind) -> &'static str {
    k.name()
}

fn level_name(l: Level) -> &'static str {
    l.name()
}

/// Parses and runs a scenario with the file's own settings.
pub fn run_scenario(text: &str) -> Result<ScenarioRun, ScenarioError> {
    let sc = Scenario::from_toml(text)?;
    runner::run(&sc, &ModelOptions::default())
}

/// Builds the host and the VM of a parsed scenario with its own settings.
pub fn build(sc: &Scenario) -> Result<(Mm, Kvm), ScenarioError> {
    build_with(sc, &ModelOptions::default())
}

/// Builds the host and the VM of a parsed scenario, `opts` overriding the file.
pub fn build_with(sc: &Scenario, opts: &ModelOptions) -> Result<(Mm, Kvm), ScenarioError> {
    let c = &opts.conditions;
    let kernel = opts.kernel.unwrap_or_else(|| sc.kernel());
    let mut mmc = MmConfig {
        kernel,
        thp: c.thp.or(sc.thp).unwrap_or(ThpMode::Madvise),
        ..MmConfig::default()
    };
    if let Some(n) = c.nodes.or(sc.nodes) {
        mmc.nodes = n;
    }
    if let Some(n) = sc.task_node {
        mmc.task_node = NodeId(n);
    }
    mmc.multi_threaded = sc.multi_threaded.unwrap_or(mmc.multi_threaded);
    mmc.numa_balancing = c
        .numa_balancing
        .or(sc.numa_balancing)
        .unwrap_or(mmc.numa_balancing);
    mmc.use_huge_zero_page = c
        .huge_zero_page
        .or(sc.huge_zero_page)
        .unwrap_or(mmc.use_huge_zero_page);
    let mut mm = Mm::new(mmc);
    let kc = KvmConfig {
        kernel,
        max_huge_page_level: if sc.tdp_1g.unwrap_or(true) {
            Level::Pud1G
        } else {
            Level::Pmd2M
        },
        ad_enabled: c.ad_bits.or(sc.ad_bits).unwrap_or(true),
        async_pf: c.async_pf.or(sc.async_pf).unwrap_or(true),
        eager_page_split: sc.eager_page_split.unwrap_or(true),
        ..KvmConfig::default()
    };
    let mut kvm = Kvm::new(kc);
    for (i, v) in sc.vma.iter().enumerate() {
        let what = format!("vma {i} at {:#x}", v.start.0);
        let device = |kind| {
            Backing::Device(DeviceSpec {
                kind,
                base_pfn: v.pfn.map(|p| Pfn(p.0)),
                max_level: v.huge.unwrap_or_default().level(),
                mkwrite: v.mkwrite,
                pfn_mkwrite: v.pfn_mkwrite,
                page_mkwrite: false,
                remap: v.remap,
            })
        };
        let (backing, hugepage) = match v.kind {
            VmaKind::Anon => (Backing::Anon, v.thp),
            VmaKind::Thp => (Backing::Anon, true),
            VmaKind::Shmem | VmaKind::Memfd | VmaKind::File => (Backing::Shmem, v.thp),
            VmaKind::Hugetlb => (
                Backing::Hugetlb(v.hugetlb_size().unwrap_or(PageSize::Size2M).level()),
                false,
            ),
            VmaKind::Pfnmap => (device(DeviceKind::Pfnmap), v.thp),
            VmaKind::Mixedmap => (device(DeviceKind::Mixedmap), v.thp),
            VmaKind::Devdax => (device(DeviceKind::DevDax), v.thp),
        };
        mm.mmap(MmapRequest {
            addr: Some(Hva(v.start.0)),
            len: v.size.0,
            prot: v.prot,
            shared: v.shared,
            backing,
            node: v.node.map(NodeId),
            hugepage,
        })
        .map_err(|e| ScenarioError::Setup {
            what,
            message: e.to_string(),
        })?;
    }
    for m in &sc.memslot {
        kvm.create_memslot(
            m.id,
            Gpa(m.gpa.0),
            m.size.0,
            Hva(m.hva.0),
            memslot_flags(&m.flags),
        )
        .map_err(|e| ScenarioError::Setup {
            what: format!("memslot {}", m.id),
            message: e.to_string(),
        })?;
    }
    kvm.start_trace();
    Ok((mm, kvm))
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
        let s = Scenario::from_toml("[[memslot]]\nid = 0\ngpa = 0\nsize = \"2M\"\nhva = 4096\n")
            .unwrap();
        assert_eq!(s.memslot[0].size, Num(2 << 20));
    }

    #[test]
    fn step_errors_name_the_step_and_the_missing_key() {
        let e = run_scenario("[[step]]\nop = \"munmap\"\nstart = 0\n").unwrap_err();
        assert!(
            e.to_string().contains("Step 0")
                && e.to_string().contains("munmap")
                && e.to_string().contains("missing field `size`"),
            "{e}"
        );
        let e = run_scenario("[[step]]\nop = \"frobnicate\"\n").unwrap_err();
        assert!(e.to_string().contains("unknown op"), "{e}");
        assert!(e.to_string().contains("clear-flush-young"), "{e}");
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let e = run_scenario("kernel = \"6.12\"\nbogus = 1\n").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = run_scenario("kernel = \"5.4\"\n").unwrap_err();
        assert!(e.to_string().contains("6.12"), "{e}");
        let e = run_scenario(&format!(
            "{SLOT}[[step]]\nop = \"write\"\ngpa = 0\nadvice = \"free\"\n"
        ))
        .unwrap_err();
        assert!(
            e.to_string().contains("Step 0") && e.to_string().contains("advice"),
            "{e}"
        );
        let e =
            run_scenario("[[vma]]\nstart = 0\nsize = \"2M\"\nkind = \"hugetlbfs\"\n").unwrap_err();
        assert!(
            e.to_string().contains("hugetlbfs") && e.to_string().contains("memfd"),
            "{e}"
        );
    }

    const SLOT: &str = "[[memslot]]\nid = 0\ngpa = 0\nsize = \"2M\"\nhva = \"0x7f0000000000\"\n";

    #[test]
    fn overlapping_memslots_are_refused_naming_both() {
        let e = Scenario::from_toml(&format!(
            "{SLOT}[[memslot]]\nid = 1\ngpa = \"1M\"\nsize = \"2M\"\nhva = \"0x7f1000000000\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("memslot 1") && e.contains("overlaps memslot 0"),
            "{e}"
        );
    }

    #[test]
    fn a_gpa_outside_every_slot_is_refused_naming_the_step() {
        let e = Scenario::from_toml(&format!(
            "{SLOT}[[step]]\nop = \"read\"\ngpa = 0\n[[step]]\nop = \"exec\"\ngpa = \"4M\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("Step 1") && e.contains("0x400000") && e.contains("outside every memslot"),
            "{e}"
        );
        // A slot created or moved by a step counts.
        Scenario::from_toml(&format!(
            "{SLOT}[[step]]\nop = \"memslot-move\"\nmemslot = 0\ngpa = \"4M\"\n\
             [[step]]\nop = \"exec\"\ngpa = \"4M\"\n"
        ))
        .unwrap();
    }

    #[test]
    fn sizes_that_do_not_parse_name_the_entry() {
        let e = Scenario::from_toml("[[memslot]]\nid = 0\ngpa = 0\nsize = \"2Q\"\nhva = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("2Q") && e.contains("memslot"), "{e}");
        let e = Scenario::from_toml(&format!(
            "{SLOT}[[step]]\nop = \"munmap\"\nstart = 0\nsize = \"lots\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("Step 0") && e.contains("lots"), "{e}");
    }

    #[test]
    fn hugetlb_vmas_must_be_aligned_to_their_page_size() {
        let e = Scenario::from_toml(
            "[[vma]]\nstart = \"2M\"\nsize = \"2M\"\nkind = \"hugetlb\"\npage_size = \"1G\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("1G boundary"), "{e}");
        let e = Scenario::from_toml("[[vma]]\nstart = 0\nsize = \"2M\"\npage_size = \"2M\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("page_size applies to kind = \"hugetlb\""), "{e}");
    }
}
