//! Typed scenario steps: one enum variant per `op`, each with exactly its own keys.
//!
//! A `[[step]]` table is parsed by [`Step::from_table`]: serde's internally tagged
//! representation (`op = "..."`) picks the variant, and every payload struct is
//! `deny_unknown_fields`, so a key that belongs to another op (or to none) is an error naming
//! the step index and the key. The model runner ([`super::runner`]) and the explorer
//! ([`crate::explore`]) match the enum exhaustively.

use super::{MemslotFlag, Num};
use crate::host::Prot;
use crate::secondary::fault::Access;
use crate::types::Hva;
use serde::{Deserialize, Serialize};

/// A guest access (`read`, `write`, `exec`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestStep {
    /// Guest physical address.
    pub gpa: Num,
    /// vCPU performing it (recorded; the model has one set of fault state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu: Option<u32>,
    /// The gpa is deliberately outside every memslot (an MMIO access); without it such a
    /// gpa is a load-time error.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mmio: bool,
    /// Explorer: races with the other `race = true` steps.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub race: bool,
}

/// A guest store: a [`GuestStep`] plus the value written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteStep {
    /// Guest physical address.
    pub gpa: Num,
    /// vCPU performing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu: Option<u32>,
    /// The gpa is deliberately outside every memslot (an MMIO access); without it such a
    /// gpa is a load-time error.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mmio: bool,
    /// Explorer: races with the other `race = true` steps.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub race: bool,
    /// The 8-byte value stored at `gpa` (default: [`default_value`] of the gpa).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Num>,
}

/// The value a `write` step stores when it names none: the gpa with its top byte set to
/// 0xfa, so it is neither 0 nor the gpa itself.
pub const fn default_value(gpa: u64) -> u64 {
    gpa ^ 0xfa00_0000_0000_0000
}

/// A host range `[start, start + size)` that may race (invalidating operations).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaceRange {
    /// First hva.
    pub start: Num,
    /// Bytes.
    pub size: Num,
    /// Explorer: races with the other `race = true` steps.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub race: bool,
}

/// A host range `[start, start + size)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    /// First hva.
    pub start: Num,
    /// Bytes.
    pub size: Num,
}

/// One page at `start`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct At {
    /// The hva.
    pub start: Num,
}

/// No keys besides `op`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

/// `mprotect`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MprotectStep {
    /// First hva.
    pub start: Num,
    /// Bytes.
    pub size: Num,
    /// New protection: "none" | "r" | "rw" | "rx" | "rwx".
    #[serde(with = "prot_str")]
    pub prot: Prot,
    /// Explorer: races with the other `race = true` steps.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub race: bool,
}

pub(crate) mod prot_str {
    use crate::host::Prot;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(p: &Prot, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::super::prot_name(*p))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Prot, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// madvise advice as scenarios name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MadviseAdvice {
    /// MADV_DONTNEED
    Dontneed,
    /// MADV_FREE
    Free,
    /// MADV_HUGEPAGE
    Hugepage,
    /// MADV_NOHUGEPAGE
    Nohugepage,
    /// MADV_COLLAPSE
    Collapse,
    /// MADV_PAGEOUT
    Pageout,
    /// MADV_COLD
    Cold,
    /// MADV_POPULATE_READ
    PopulateRead,
    /// MADV_POPULATE_WRITE
    PopulateWrite,
    /// MADV_MERGEABLE (KSM)
    Mergeable,
    /// MADV_UNMERGEABLE (KSM)
    Unmergeable,
}

/// `madvise`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MadviseStep {
    /// First hva.
    pub start: Num,
    /// Bytes.
    pub size: Num,
    /// The advice.
    pub advice: MadviseAdvice,
    /// Explorer: races with the other `race = true` steps.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub race: bool,
}

/// `migrate`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateStep {
    /// First hva.
    pub start: Num,
    /// Bytes.
    pub size: Num,
    /// Target node.
    pub node: u16,
    /// Explorer: races with the other `race = true` steps.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub race: bool,
}

/// `fork`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForkStep {
    /// Explorer: races with the other `race = true` steps.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub race: bool,
}

/// `mremap`: move (and optionally resize) `[start, start + size)` to `new_start`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MremapStep {
    /// Old first hva.
    pub start: Num,
    /// Old size.
    pub size: Num,
    /// New first hva (MREMAP_MAYMOVE | MREMAP_FIXED).
    pub new_start: Num,
    /// New size (default: the old size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_size: Option<Num>,
}

/// The signal pending on the vCPU thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignalKind {
    /// None pending.
    None,
    /// A non-fatal signal.
    Pending,
    /// SIGKILL.
    Fatal,
}

/// `signal`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalStep {
    /// What is pending.
    pub signal: SignalKind,
}

/// A userfaultfd registration mode (`mode = ["missing", "wp", "minor"]`).
pub use crate::host::UffdMode;

fn default_modes() -> Vec<UffdMode> {
    vec![UffdMode::Missing]
}

/// `uffd-register`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UffdRegisterStep {
    /// First hva.
    pub start: Num,
    /// Bytes.
    pub size: Num,
    /// Modes (default `["missing"]`).
    #[serde(default = "default_modes")]
    pub mode: Vec<UffdMode>,
}

/// `uffdio-continue` (MINOR faults): `size` defaults to 4K.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UffdioContinueStep {
    /// First hva.
    pub start: Num,
    /// Bytes (default 4K).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Num>,
}

fn yes() -> bool {
    true
}

/// `uffdio-writeprotect`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UffdioWriteprotectStep {
    /// First hva.
    pub start: Num,
    /// Bytes.
    pub size: Num,
    /// true: protect (UFFDIO_WRITEPROTECT_MODE_WP); false: resolve.
    #[serde(default = "yes")]
    pub wp: bool,
}

/// A step naming one memslot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotStep {
    /// Memslot id.
    pub memslot: u16,
}

/// `memslot-move`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemslotMoveStep {
    /// Memslot id.
    pub memslot: u16,
    /// New guest physical base.
    pub gpa: Num,
}

/// `memslot-flags`: the slot's new flag set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemslotFlagsStep {
    /// Memslot id.
    pub memslot: u16,
    /// The new flags.
    #[serde(default)]
    pub flags: Vec<MemslotFlag>,
}

/// One `[[step]]`: the `op` key selects the variant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Step {
    /// A guest load.
    Read(GuestStep),
    /// A guest store.
    Write(WriteStep),
    /// A guest instruction fetch.
    Exec(GuestStep),
    /// `munmap()`.
    Munmap(RaceRange),
    /// `mprotect()`.
    Mprotect(MprotectStep),
    /// `madvise()`.
    Madvise(MadviseStep),
    /// `mremap()`.
    Mremap(MremapStep),
    /// A NUMA-balancing scan (`change_prot_numa()`).
    NumaScan(RaceRange),
    /// `migrate_pages()` of the range to a node.
    Migrate(MigrateStep),
    /// `split_huge_pmd()` over the range.
    ThpSplit(RaceRange),
    /// `unmap_mapping_range()`.
    UnmapMappingRange(RaceRange),
    /// Aging: `clear_young` notifier.
    ClearYoung(Range),
    /// Aging: `clear_flush_young` notifier.
    ClearFlushYoung(Range),
    /// Aging: `test_young` notifier.
    TestYoung(Range),
    /// `fork()`.
    Fork(ForkStep),
    /// The `release` notifier alone.
    Release(NoArgs),
    /// `exit_mmap()`.
    Exit(NoArgs),
    /// A signal pending on the vCPU thread.
    Signal(SignalStep),
    /// `memory_failure()` of the page mapped at `start`.
    MemoryFailure(At),
    /// `UFFDIO_REGISTER`.
    UffdRegister(UffdRegisterStep),
    /// `UFFDIO_COPY` of one page.
    UffdioCopy(At),
    /// `UFFDIO_ZEROPAGE` of one page.
    UffdioZeropage(At),
    /// `UFFDIO_CONTINUE`.
    UffdioContinue(UffdioContinueStep),
    /// `UFFDIO_WRITEPROTECT`.
    UffdioWriteprotect(UffdioWriteprotectStep),
    /// `fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)` on the file behind the range.
    FallocatePunchHole(Range),
    /// One full KSM scan (`ksm_do_scan()` over every mergeable range).
    KsmScan(NoArgs),
    /// `KVM_MEM_LOG_DIRTY_PAGES` on.
    DirtyLogEnable(SlotStep),
    /// `KVM_GET_DIRTY_LOG`.
    DirtyLogGet(SlotStep),
    /// `KVM_CLEAR_DIRTY_LOG` (whole slot).
    DirtyLogClear(SlotStep),
    /// `KVM_SET_USER_MEMORY_REGION` creating a slot.
    MemslotCreate(super::MemslotSpec),
    /// `KVM_SET_USER_MEMORY_REGION` with size 0.
    MemslotDelete(SlotStep),
    /// `KVM_MR_MOVE`.
    MemslotMove(MemslotMoveStep),
    /// `KVM_MR_FLAGS_ONLY`.
    MemslotFlags(MemslotFlagsStep),
}

/// Every op name, in schema order (what an unknown op's error lists).
pub const KNOWN_OPS: &[&str] = &[
    "read",
    "write",
    "exec",
    "munmap",
    "mprotect",
    "madvise",
    "mremap",
    "numa-scan",
    "migrate",
    "thp-split",
    "unmap-mapping-range",
    "clear-young",
    "clear-flush-young",
    "test-young",
    "fork",
    "release",
    "exit",
    "signal",
    "memory-failure",
    "uffd-register",
    "uffdio-copy",
    "uffdio-zeropage",
    "uffdio-continue",
    "uffdio-writeprotect",
    "fallocate-punch-hole",
    "ksm-scan",
    "dirty-log-enable",
    "dirty-log-get",
    "dirty-log-clear",
    "memslot-create",
    "memslot-delete",
    "memslot-move",
    "memslot-flags",
];

impl Step {
    /// Parses one `[[step]]` table; `index` names it in errors.
    pub fn from_table(index: usize, table: toml::Table) -> Result<Step, super::ScenarioError> {
        let op = match table.get("op") {
            Some(toml::Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(super::ScenarioError::StepParse {
                    step: index,
                    message: format!(
                        "op = {other}: op must be a string, one of {}",
                        KNOWN_OPS.join(", ")
                    ),
                })
            }
            None => {
                return Err(super::ScenarioError::StepParse {
                    step: index,
                    message: format!(
                        "missing op: add op = \"...\", one of {}",
                        KNOWN_OPS.join(", ")
                    ),
                })
            }
        };
        if !KNOWN_OPS.contains(&op.as_str()) {
            return Err(super::ScenarioError::StepParse {
                step: index,
                message: format!("unknown op {op:?}: use one of {}", KNOWN_OPS.join(", ")),
            });
        }
        Step::deserialize(toml::Value::Table(table)).map_err(|e| super::ScenarioError::StepParse {
            step: index,
            message: format!("op {op:?}: {}", e.message().trim_end()),
        })
    }

    /// The schema name of the op.
    pub fn name(&self) -> &'static str {
        match self {
            Step::Read(_) => "read",
            Step::Write(_) => "write",
            Step::Exec(_) => "exec",
            Step::Munmap(_) => "munmap",
            Step::Mprotect(_) => "mprotect",
            Step::Madvise(_) => "madvise",
            Step::Mremap(_) => "mremap",
            Step::NumaScan(_) => "numa-scan",
            Step::Migrate(_) => "migrate",
            Step::ThpSplit(_) => "thp-split",
            Step::UnmapMappingRange(_) => "unmap-mapping-range",
            Step::ClearYoung(_) => "clear-young",
            Step::ClearFlushYoung(_) => "clear-flush-young",
            Step::TestYoung(_) => "test-young",
            Step::Fork(_) => "fork",
            Step::Release(_) => "release",
            Step::Exit(_) => "exit",
            Step::Signal(_) => "signal",
            Step::MemoryFailure(_) => "memory-failure",
            Step::UffdRegister(_) => "uffd-register",
            Step::UffdioCopy(_) => "uffdio-copy",
            Step::UffdioZeropage(_) => "uffdio-zeropage",
            Step::UffdioContinue(_) => "uffdio-continue",
            Step::UffdioWriteprotect(_) => "uffdio-writeprotect",
            Step::FallocatePunchHole(_) => "fallocate-punch-hole",
            Step::KsmScan(_) => "ksm-scan",
            Step::DirtyLogEnable(_) => "dirty-log-enable",
            Step::DirtyLogGet(_) => "dirty-log-get",
            Step::DirtyLogClear(_) => "dirty-log-clear",
            Step::MemslotCreate(_) => "memslot-create",
            Step::MemslotDelete(_) => "memslot-delete",
            Step::MemslotMove(_) => "memslot-move",
            Step::MemslotFlags(_) => "memslot-flags",
        }
    }

    /// `mmio = true` on a guest step.
    pub fn declared_mmio(&self) -> bool {
        match self {
            Step::Read(g) | Step::Exec(g) => g.mmio,
            Step::Write(w) => w.mmio,
            _ => false,
        }
    }

    /// The guest access of a guest step: (kind, gpa, vcpu).
    pub fn guest_access(&self) -> Option<(Access, u64, Option<u32>)> {
        match self {
            Step::Read(g) => Some((Access::Read, g.gpa.0, g.vcpu)),
            Step::Exec(g) => Some((Access::Exec, g.gpa.0, g.vcpu)),
            Step::Write(w) => Some((Access::Write, w.gpa.0, w.vcpu)),
            _ => None,
        }
    }

    /// `race = true` (only guest accesses and invalidating host operations have the key).
    pub fn race(&self) -> bool {
        match self {
            Step::Read(g) | Step::Exec(g) => g.race,
            Step::Write(w) => w.race,
            Step::Munmap(r)
            | Step::NumaScan(r)
            | Step::ThpSplit(r)
            | Step::UnmapMappingRange(r) => r.race,
            Step::Mprotect(m) => m.race,
            Step::Madvise(m) => m.race,
            Step::Migrate(m) => m.race,
            Step::Fork(f) => f.race,
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
            | Step::MemslotFlags(_) => false,
        }
    }

    /// The host range a host step names, `[start, start + size)` (one 4K page for
    /// single-page ops; for `mremap` the old range). `None` for guest steps and for steps
    /// without an address (fork, memslot and dirty-log steps, ...).
    pub fn host_range(&self) -> Option<(Hva, u64)> {
        let r = |s: &Num, z: &Num| Some((Hva(s.0), z.0));
        match self {
            Step::Munmap(x)
            | Step::NumaScan(x)
            | Step::ThpSplit(x)
            | Step::UnmapMappingRange(x) => r(&x.start, &x.size),
            Step::ClearYoung(x)
            | Step::ClearFlushYoung(x)
            | Step::TestYoung(x)
            | Step::FallocatePunchHole(x) => r(&x.start, &x.size),
            Step::Mprotect(m) => r(&m.start, &m.size),
            Step::Madvise(m) => r(&m.start, &m.size),
            Step::Migrate(m) => r(&m.start, &m.size),
            Step::Mremap(m) => r(&m.start, &m.size),
            Step::UffdRegister(u) => r(&u.start, &u.size),
            Step::UffdioWriteprotect(u) => r(&u.start, &u.size),
            Step::UffdioContinue(u) => Some((
                Hva(u.start.0),
                u.size.map_or(crate::types::PAGE_SIZE, |n| n.0),
            )),
            Step::MemoryFailure(a) | Step::UffdioCopy(a) | Step::UffdioZeropage(a) => {
                Some((Hva(a.start.0), crate::types::PAGE_SIZE))
            }
            Step::Read(_)
            | Step::Write(_)
            | Step::Exec(_)
            | Step::Fork(_)
            | Step::Release(_)
            | Step::Exit(_)
            | Step::Signal(_)
            | Step::KsmScan(_)
            | Step::DirtyLogEnable(_)
            | Step::DirtyLogGet(_)
            | Step::DirtyLogClear(_)
            | Step::MemslotCreate(_)
            | Step::MemslotDelete(_)
            | Step::MemslotMove(_)
            | Step::MemslotFlags(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Step, crate::scenario::ScenarioError> {
        Step::from_table(3, toml::from_str(text).unwrap())
    }

    #[test]
    fn every_known_op_names_a_variant_and_back() {
        // A table with just `op` either parses or fails on a missing key, never on the op.
        for op in KNOWN_OPS {
            match parse(&format!("op = {op:?}")) {
                Ok(s) => assert_eq!(s.name(), *op),
                Err(e) => {
                    let m = e.to_string();
                    assert!(m.contains("missing field"), "{op}: {m}");
                }
            }
        }
    }

    #[test]
    fn unknown_keys_name_the_step_and_the_key() {
        let e = parse("op = \"read\"\ngpa = 0\nadvice = \"free\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("Step 3") && e.contains("advice"), "{e}");
        let e = parse("op = \"release\"\nstart = 0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("Step 3") && e.contains("start"), "{e}");
        let e = parse("op = \"clear-young\"\nstart = 0\nsize = 4096\nrace = true")
            .unwrap_err()
            .to_string();
        assert!(e.contains("race"), "{e}");
    }

    #[test]
    fn unknown_ops_list_the_known_ones() {
        let e = parse("op = \"frobnicate\"").unwrap_err().to_string();
        assert!(e.contains("Step 3") && e.contains("frobnicate"), "{e}");
        assert!(
            e.contains("clear-flush-young") && e.contains("memslot-flags"),
            "{e}"
        );
        let e = parse("gpa = 0").unwrap_err().to_string();
        assert!(e.contains("missing op"), "{e}");
    }

    #[test]
    fn values_parse_at_load_time() {
        let s =
            parse("op = \"mprotect\"\nstart = \"0x1000\"\nsize = \"4K\"\nprot = \"r\"").unwrap();
        assert_eq!(
            s,
            Step::Mprotect(MprotectStep {
                start: Num(0x1000),
                size: Num(4096),
                prot: Prot::R,
                race: false
            })
        );
        let e = parse("op = \"mprotect\"\nstart = 0\nsize = \"4Q\"\nprot = \"r\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("4Q") && e.contains("2M"), "{e}");
        let e = parse("op = \"madvise\"\nstart = 0\nsize = 1\nadvice = \"sideways\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sideways") && e.contains("populate-write"),
            "{e}"
        );
        let s = parse("op = \"write\"\ngpa = 8\nvcpu = 1\nrace = true").unwrap();
        assert_eq!(s.guest_access(), Some((Access::Write, 8, Some(1))));
        assert!(s.race());
    }
}
