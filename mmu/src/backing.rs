//! What backs a range of memory: the one type `faultline run --backing`, `faultline bench
//! faults -s/--backing` and a scenario's `[[vma]] kind` all parse into.
//!
//! | [`Backing`] | `--backing` (guest RAM) | `bench faults -s` (KVM selftests' `vm_mem_backing_src_alias` names) | scenario `kind` |
//! |---|---|---|---|
//! | `Anon` | `anon`, `anonymous` | `anonymous`, `anonymous_prefault` (+ [`BackingSpec::prefault`]) | `anon` |
//! | `Thp` | `thp`, `anonymous_thp` | `anonymous_thp` | `anon` with `thp = true`, or `thp` |
//! | `Shmem` | `shmem` | `shmem` | `shmem` |
//! | `Memfd`, `File` | refused (scenario kinds) | refused | `memfd`, `file` |
//! | `Hugetlb` | `hugetlb`, `shared_hugetlb` (a 2M memfd) | `anonymous_hugetlb`, `anonymous_hugetlb_2mb`, `anonymous_hugetlb_1gb` (private), `shared_hugetlb`, `hugetlb` (shared) | `hugetlb` with `page_size`, `shared` |
//! | `Pfnmap`, `Mixedmap`, `Devdax` | refused (device mappings) | refused | `pfnmap`, `mixedmap`, `devdax` |
//!
//! A [`Backing`] is the kind of memory; the options some names carry (hugetlb page size,
//! private or shared, prefault) are the fields of [`BackingSpec`], the full answer for a
//! mapping. A scenario's `[[vma]]` keeps them as their own keys (`page_size`, `shared`,
//! `thp`) and gives its spec with [`crate::scenario::VmaSpec::backing_spec`].
//!
//! # Relation to `host::vma::Backing`
//!
//! [`crate::host::Backing`] is what a modelled VMA maps inside the model (anonymous pages,
//! shmem's page cache, a hugetlb page size, a device driver's pfns with its options): the
//! model's internal form, which a scenario's [`Backing`] is lowered into when the model's
//! VMAs are built (`scenario::build`; `Memfd` and `File` become shmem there, see
//! [`Backing::File`]). This type names memory as a user or the VMM asks for it; that one,
//! as the model keeps it.

use crate::types::Level;
use serde::{Deserialize, Serialize};

/// A hugetlb (or leaf) page size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PageSize {
    /// 4 KiB.
    #[serde(rename = "4K")]
    Size4K,
    /// 2 MiB.
    #[serde(rename = "2M")]
    Size2M,
    /// 1 GiB.
    #[serde(rename = "1G")]
    Size1G,
}

impl PageSize {
    /// The page-table level of a leaf of this size.
    pub fn level(self) -> Level {
        match self {
            PageSize::Size4K => Level::Pte4K,
            PageSize::Size2M => Level::Pmd2M,
            PageSize::Size1G => Level::Pud1G,
        }
    }

    /// Bytes.
    pub fn bytes(self) -> u64 {
        self.level().size()
    }
}

/// The kind of memory behind a range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backing {
    /// Private anonymous memory (`MAP_ANONYMOUS`; with `shared`, shmem).
    #[default]
    #[serde(alias = "anonymous")]
    Anon,
    /// Anonymous memory with `madvise(MADV_HUGEPAGE)`: transparent huge pages. A scenario
    /// says `kind = "anon"` with `thp = true` (or `kind = "thp"`, read as that).
    #[serde(alias = "anonymous_thp")]
    Thp,
    /// Shared memory: a memfd or a shmem file mapped `MAP_SHARED`.
    Shmem,
    /// A `memfd_create()` file: shmem underneath.
    Memfd,
    /// A regular file.
    ///
    /// # Divergence
    /// The model has one page cache, shmem's: a file mapping is modelled as shmem (no
    /// writeback, no `->page_mkwrite`, no readahead).
    File,
    /// hugetlbfs (`MAP_HUGETLB` or a `MFD_HUGETLB` memfd); page size and sharing in
    /// [`BackingSpec`] (2M and, for guest RAM, a shared memfd by default).
    ///
    /// # Divergence
    /// The model has `hugetlb_fault()` (mm/hugetlb.c), fork, munmap, mprotect,
    /// MADV_DONTNEED and aging on hugetlb; mremap, migration, memory failure, userfaultfd
    /// and punch-hole steps touching a hugetlb VMA return "not-modelled".
    Hugetlb,
    /// A driver's `VM_PFNMAP` mapping.
    Pfnmap,
    /// A driver's `VM_MIXEDMAP` mapping.
    Mixedmap,
    /// device-dax (ZONE_DEVICE pages).
    Devdax,
}

/// Every kind, in the scenario schema's order.
pub const ALL_KINDS: [Backing; 9] = [
    Backing::Anon,
    Backing::Thp,
    Backing::Shmem,
    Backing::Memfd,
    Backing::File,
    Backing::Hugetlb,
    Backing::Pfnmap,
    Backing::Mixedmap,
    Backing::Devdax,
];

/// A backing name that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackingError {
    /// Not a backing name at all.
    #[error("Unknown backing {name:?}: use one of {accepted}")]
    Unknown {
        /// What was given.
        name: String,
        /// The names this place accepts.
        accepted: &'static str,
    },
    /// A name that carries options this place cannot take (e.g. a 1G private hugetlb for
    /// guest RAM).
    #[error("Backing {name:?} is {what}, which {place} does not take: {fix}")]
    NotHere {
        /// What was given.
        name: String,
        /// What it means.
        what: &'static str,
        /// Where it was given.
        place: &'static str,
        /// What to use instead.
        fix: &'static str,
    },
}

/// The names `faultline run --backing` accepts.
pub const RAM_NAMES: &str =
    "anon, thp, shmem, hugetlb (or the KVM selftests' anonymous, anonymous_thp, shared_hugetlb)";
/// The names `faultline bench faults -s` accepts.
pub const SELFTEST_NAMES: &str = "anonymous, anonymous_thp, anonymous_hugetlb, anonymous_hugetlb_2mb, anonymous_hugetlb_1gb, shmem, shared_hugetlb, anonymous_prefault (or anon, thp, hugetlb, prefault; a comma list)";

impl Backing {
    /// The canonical name (`--backing` and the scenario's `kind`).
    pub fn name(self) -> &'static str {
        match self {
            Backing::Anon => "anon",
            Backing::Thp => "thp",
            Backing::Shmem => "shmem",
            Backing::Memfd => "memfd",
            Backing::File => "file",
            Backing::Hugetlb => "hugetlb",
            Backing::Pfnmap => "pfnmap",
            Backing::Mixedmap => "mixedmap",
            Backing::Devdax => "devdax",
        }
    }

    /// True for the kinds a device driver provides (no struct page, or ZONE_DEVICE).
    pub fn is_device(self) -> bool {
        matches!(self, Backing::Pfnmap | Backing::Mixedmap | Backing::Devdax)
    }

    /// True for the kinds whose pages live in a page cache (shared mappings see one copy).
    pub fn is_file(self) -> bool {
        matches!(self, Backing::Shmem | Backing::Memfd | Backing::File)
    }

    /// Parses a guest-RAM backing (`faultline run --backing`): the four kinds the VMM can
    /// put guest RAM in, by their names or the KVM selftests' ones for the same memory.
    pub fn parse_ram(name: &str) -> Result<Backing, BackingError> {
        let spec = BackingSpec::from_name(name).map_err(|_| BackingError::Unknown {
            name: name.to_string(),
            accepted: RAM_NAMES,
        })?;
        let not_here = |what, fix| BackingError::NotHere {
            name: name.to_string(),
            what,
            place: "guest RAM (--backing)",
            fix,
        };
        match spec {
            BackingSpec { prefault: true, .. } => Err(not_here(
                "anonymous memory populated before the run",
                "use anon here, or bench faults -s anonymous_prefault",
            )),
            BackingSpec { backing: Backing::Hugetlb, shared: false, .. } => Err(not_here(
                "private hugetlb memory",
                "use hugetlb (a shared 2M hugetlb memfd) here, or bench faults -s for private and 1G hugetlb",
            )),
            BackingSpec { backing: Backing::Hugetlb, page_size, .. } if page_size != PageSize::Size2M => {
                Err(not_here("1G hugetlb memory", "use hugetlb (2M) here, or bench faults -s anonymous_hugetlb_1gb"))
            }
            BackingSpec { backing, .. } => Ok(backing),
        }
    }
}

impl std::fmt::Display for Backing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Backing {
    type Err = BackingError;
    /// [`Backing::parse_ram`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Backing::parse_ram(s)
    }
}

/// A backing with its options: what one mapping is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackingSpec {
    /// The kind of memory.
    pub backing: Backing,
    /// The page size: the hugetlb page size for [`Backing::Hugetlb`], 4K otherwise.
    pub page_size: PageSize,
    /// `MAP_SHARED` (always for shmem and memfd).
    pub shared: bool,
    /// Populated (`MADV_POPULATE_WRITE`) before use: host page tables filled, KVM's still
    /// empty (the selftests' `anonymous_prefault`).
    pub prefault: bool,
}

/// Every `bench faults -s` backing, in the order `--backing all` runs them.
pub const ALL_SELFTEST_BACKINGS: [BackingSpec; 7] = [
    BackingSpec::ANONYMOUS,
    BackingSpec::ANONYMOUS_THP,
    BackingSpec::ANONYMOUS_HUGETLB,
    BackingSpec::ANONYMOUS_HUGETLB_1GB,
    BackingSpec::SHMEM,
    BackingSpec::SHARED_HUGETLB,
    BackingSpec::ANONYMOUS_PREFAULT,
];

const fn spec(backing: Backing, page_size: PageSize, shared: bool, prefault: bool) -> BackingSpec {
    BackingSpec {
        backing,
        page_size,
        shared,
        prefault,
    }
}

impl BackingSpec {
    /// `anonymous`: private anonymous memory, 4K pages.
    pub const ANONYMOUS: BackingSpec = spec(Backing::Anon, PageSize::Size4K, false, false);
    /// `anonymous_thp`: private anonymous memory with `MADV_HUGEPAGE`.
    pub const ANONYMOUS_THP: BackingSpec = spec(Backing::Thp, PageSize::Size4K, false, false);
    /// `anonymous_hugetlb` (= `anonymous_hugetlb_2mb`): `MAP_PRIVATE | MAP_HUGETLB`, 2M.
    pub const ANONYMOUS_HUGETLB: BackingSpec =
        spec(Backing::Hugetlb, PageSize::Size2M, false, false);
    /// `anonymous_hugetlb_1gb`: `MAP_HUGETLB | MAP_HUGE_1GB`.
    pub const ANONYMOUS_HUGETLB_1GB: BackingSpec =
        spec(Backing::Hugetlb, PageSize::Size1G, false, false);
    /// `shmem`: a memfd mapped `MAP_SHARED`.
    pub const SHMEM: BackingSpec = spec(Backing::Shmem, PageSize::Size4K, true, false);
    /// `shared_hugetlb`: a 2M hugetlb memfd mapped `MAP_SHARED`.
    pub const SHARED_HUGETLB: BackingSpec = spec(Backing::Hugetlb, PageSize::Size2M, true, false);
    /// `anonymous_prefault`: `anonymous`, populated before the run.
    pub const ANONYMOUS_PREFAULT: BackingSpec = spec(Backing::Anon, PageSize::Size4K, false, true);

    /// The spec a bare kind means: 2M shared for hugetlb (guest RAM's memfd), shared for
    /// shmem and memfd, private otherwise.
    pub fn of(backing: Backing) -> BackingSpec {
        match backing {
            Backing::Hugetlb => Self::SHARED_HUGETLB,
            b => spec(
                b,
                PageSize::Size4K,
                matches!(b, Backing::Shmem | Backing::Memfd),
                false,
            ),
        }
    }

    /// Parses any backing name: the KVM selftests' (`anonymous_hugetlb_1gb` ...), the
    /// `--backing` ones and the scenario kinds.
    pub fn from_name(name: &str) -> Result<BackingSpec, BackingError> {
        Ok(match name.trim() {
            "anonymous" | "anon" => Self::ANONYMOUS,
            "anonymous_thp" | "thp" => Self::ANONYMOUS_THP,
            "anonymous_hugetlb" | "anonymous_hugetlb_2mb" => Self::ANONYMOUS_HUGETLB,
            "anonymous_hugetlb_1gb" => Self::ANONYMOUS_HUGETLB_1GB,
            "shmem" => Self::SHMEM,
            "shared_hugetlb" | "hugetlb" => Self::SHARED_HUGETLB,
            "anonymous_prefault" | "prefault" => Self::ANONYMOUS_PREFAULT,
            other => match ALL_KINDS.into_iter().find(|k| k.name() == other) {
                Some(k) => Self::of(k),
                None => {
                    return Err(BackingError::Unknown {
                        name: other.to_string(),
                        accepted: SELFTEST_NAMES,
                    })
                }
            },
        })
    }

    /// Parses a `bench faults -s` backing: [`BackingSpec::from_name`] for memory the VMM
    /// can map itself (not memfd/file/device kinds, which only a scenario describes).
    pub fn parse_selftest(name: &str) -> Result<BackingSpec, BackingError> {
        let s = Self::from_name(name)?;
        if matches!(s.backing, Backing::Memfd | Backing::File) || s.backing.is_device() {
            return Err(BackingError::NotHere {
                name: name.to_string(),
                what: "a scenario kind",
                place: "bench faults -s",
                fix: "use one of anonymous, anonymous_thp, anonymous_hugetlb, anonymous_hugetlb_1gb, shmem, shared_hugetlb, anonymous_prefault",
            });
        }
        Ok(s)
    }

    /// The KVM selftests' name where it has one (`anonymous_hugetlb_1gb`), else the kind's.
    pub fn name(self) -> &'static str {
        match self {
            Self::ANONYMOUS => "anonymous",
            Self::ANONYMOUS_THP => "anonymous_thp",
            Self::ANONYMOUS_HUGETLB => "anonymous_hugetlb",
            Self::ANONYMOUS_HUGETLB_1GB => "anonymous_hugetlb_1gb",
            Self::SHMEM => "shmem",
            Self::SHARED_HUGETLB => "shared_hugetlb",
            Self::ANONYMOUS_PREFAULT => "anonymous_prefault",
            s => s.backing.name(),
        }
    }

    /// The host page size in bytes (what uffd must install per fault at least).
    pub fn page_bytes(self) -> u64 {
        self.page_size.bytes()
    }

    /// A hugetlb backing.
    pub fn is_hugetlb(self) -> bool {
        self.backing == Backing::Hugetlb
    }

    /// A shared file behind the mapping (MINOR faults need one).
    pub fn is_shared(self) -> bool {
        self.shared
    }
}

impl std::fmt::Display for BackingSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for BackingSpec {
    type Err = BackingError;
    /// [`BackingSpec::parse_selftest`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_selftest(s)
    }
}

/// Serialized as its name (`"anonymous_hugetlb_1gb"`), as `bench faults` JSON has it.
impl Serialize for BackingSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for BackingSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        BackingSpec::from_name(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_selftest_name_round_trips_and_aliases_agree() {
        for b in ALL_SELFTEST_BACKINGS {
            assert_eq!(BackingSpec::parse_selftest(b.name()), Ok(b));
        }
        assert_eq!(
            BackingSpec::from_name("anonymous_hugetlb_2mb"),
            Ok(BackingSpec::ANONYMOUS_HUGETLB)
        );
        assert_eq!(
            BackingSpec::from_name("hugetlb"),
            Ok(BackingSpec::SHARED_HUGETLB)
        );
        assert_eq!(
            BackingSpec::from_name("prefault"),
            Ok(BackingSpec::ANONYMOUS_PREFAULT)
        );
        assert_eq!(BackingSpec::ANONYMOUS_HUGETLB_1GB.page_bytes(), 1 << 30);
        let e = BackingSpec::parse_selftest("anonymous_huge")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"anonymous_huge\"") && e.contains("anonymous_thp"),
            "{e}"
        );
        let e = BackingSpec::parse_selftest("pfnmap")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("scenario kind") && e.contains("anonymous_thp"),
            "{e}"
        );
    }

    #[test]
    fn guest_ram_takes_its_four_kinds_under_either_name_and_says_why_not_the_rest() {
        for (n, b) in [
            ("anon", Backing::Anon),
            ("anonymous", Backing::Anon),
            ("thp", Backing::Thp),
            ("anonymous_thp", Backing::Thp),
            ("shmem", Backing::Shmem),
            ("hugetlb", Backing::Hugetlb),
            ("shared_hugetlb", Backing::Hugetlb),
        ] {
            assert_eq!(n.parse::<Backing>(), Ok(b), "{n}");
        }
        let e = "anonymous_hugetlb_1gb"
            .parse::<Backing>()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("private hugetlb") && e.contains("use hugetlb"),
            "{e}"
        );
        let e = "anonymous_prefault"
            .parse::<Backing>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("bench faults -s anonymous_prefault"), "{e}");
        let e = "huge".parse::<Backing>().unwrap_err().to_string();
        assert!(
            e.contains("\"huge\"") && e.contains("anon, thp, shmem, hugetlb"),
            "{e}"
        );
    }

    #[test]
    fn scenario_kinds_deserialize_by_kebab_name_and_alias() {
        #[derive(Deserialize)]
        struct K {
            kind: Backing,
        }
        for k in ALL_KINDS {
            let t: K = toml::from_str(&format!("kind = \"{}\"", k.name())).unwrap();
            assert_eq!(t.kind, k);
        }
        let t: K = toml::from_str("kind = \"anonymous\"").unwrap();
        assert_eq!(t.kind, Backing::Anon);
        assert!(toml::from_str::<K>("kind = \"ram\"").is_err());
    }

    #[test]
    fn a_scenario_vma_of_kind_thp_is_anon_with_thp_and_its_spec_says_so() {
        let shipped =
            include_str!("../../resources/scenarios/trace2-thp-read-then-write-6.12.toml");
        assert!(shipped.contains("kind = \"anon\"\nthp = true"));
        let a = crate::scenario::Scenario::from_toml(shipped).unwrap();
        let b = crate::scenario::Scenario::from_toml(
            &shipped.replace("kind = \"anon\"\nthp = true", "kind = \"thp\""),
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.vma[0].backing_spec(), BackingSpec::ANONYMOUS_THP);
        let c = crate::scenario::Scenario::from_toml(
            &shipped.replace("kind = \"anon\"\nthp = true", "kind = \"anonymous\""),
        )
        .unwrap();
        assert_eq!(c.vma[0].backing_spec(), BackingSpec::ANONYMOUS);
    }

    #[test]
    fn specs_serialize_as_their_names() {
        let j = serde_json::to_string(&BackingSpec::ANONYMOUS_HUGETLB_1GB).unwrap();
        assert_eq!(j, "\"anonymous_hugetlb_1gb\"");
        assert_eq!(
            serde_json::from_str::<BackingSpec>(&j).unwrap(),
            BackingSpec::ANONYMOUS_HUGETLB_1GB
        );
    }
}
