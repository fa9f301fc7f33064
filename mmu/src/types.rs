//! Address newtypes, page-table levels, kernel versions and NUMA node ids.
//!
//! Each address space has its own newtype (`Hva`, `Gpa`, `Gfn`, `Pfn`); conversions between
//! them are named methods, never `as` casts.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Size of a base page (x86-64 `PAGE_SIZE`).
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`] (`PAGE_SHIFT`).
pub const PAGE_SHIFT: u32 = 12;
/// Number of entries in one page-table page (`PTRS_PER_PTE` etc.).
pub const PTRS_PER_TABLE: usize = 512;
/// Highest user virtual address + 1 (x86-64, 4-level paging: `TASK_SIZE_MAX` rounded).
pub const TASK_SIZE: u64 = 1 << 47;

/// Declares a `u32` flag set with named constants, set operations and serde as a list of
/// names (a small stand-in for the `bitflags` crate).
macro_rules! flag_set {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $flag:ident = $bit:expr,)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub struct $name(pub u32);

        #[allow(missing_docs)]
        impl $name {
            $($(#[$fm])* pub const $flag: $name = $name(1 << $bit);)*
            /// Every flag with its name.
            pub const NAMED: &'static [(&'static str, $name)] = &[$((stringify!($flag), $name::$flag),)*];
            /// No flag set.
            pub const fn empty() -> Self { $name(0) }
            /// True when every flag of `other` is set.
            pub const fn contains(self, other: Self) -> bool { self.0 & other.0 == other.0 }
            /// True when any flag of `other` is set.
            pub const fn intersects(self, other: Self) -> bool { self.0 & other.0 != 0 }
            /// Union.
            pub const fn union(self, other: Self) -> Self { $name(self.0 | other.0) }
            /// `self` without the flags of `other`.
            pub const fn without(self, other: Self) -> Self { $name(self.0 & !other.0) }
            /// True when no flag is set.
            pub const fn is_empty(self) -> bool { self.0 == 0 }
            /// Names of the set flags, in declaration order.
            pub fn names(self) -> Vec<&'static str> {
                Self::NAMED.iter().filter(|(_, f)| self.contains(*f)).map(|(n, _)| *n).collect()
            }
            /// Parses one flag name (as in [`Self::NAMED`], case-insensitive).
            pub fn from_name(name: &str) -> Option<Self> {
                Self::NAMED.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, f)| *f)
            }
        }

        impl std::ops::BitOr for $name {
            type Output = $name;
            fn bitor(self, rhs: $name) -> $name { $name(self.0 | rhs.0) }
        }
        impl std::ops::BitOrAssign for $name {
            fn bitor_assign(&mut self, rhs: $name) { self.0 |= rhs.0; }
        }
        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({})", stringify!($name), self.names().join("|"))
            }
        }
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.names())
            }
        }
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let names = <Vec<String> as serde::Deserialize>::deserialize(d)?;
                let mut out = $name::empty();
                for n in names {
                    out |= $name::from_name(&n).ok_or_else(|| {
                        serde::de::Error::custom(format!("unknown flag {n:?} for {}", stringify!($name)))
                    })?;
                }
                Ok(out)
            }
        }
    };
}
pub(crate) use flag_set;

macro_rules! addr_newtype {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(
            Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw value.
            pub const fn raw(self) -> u64 {
                self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:#x})", stringify!($name), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }
    };
}

addr_newtype!(
    /// A host virtual address (`unsigned long addr` in mm/).
    Hva
);
addr_newtype!(
    /// A guest physical address.
    Gpa
);
addr_newtype!(
    /// A guest frame number (`gfn_t`): a [`Gpa`] shifted right by [`PAGE_SHIFT`].
    Gfn
);
addr_newtype!(
    /// A host page frame number (`unsigned long pfn`).
    Pfn
);

impl Hva {
    /// Rounds down to the start of the `level` page containing this address.
    pub const fn align_down(self, level: Level) -> Hva {
        Hva(self.0 & !(level.size() - 1))
    }
    /// Rounds up to a `level` boundary.
    pub const fn align_up(self, level: Level) -> Hva {
        Hva((self.0 + level.size() - 1) & !(level.size() - 1))
    }
    /// True when the address is `level`-aligned.
    pub const fn is_aligned(self, level: Level) -> bool {
        self.0 & (level.size() - 1) == 0
    }
    /// The address `bytes` further on.
    pub const fn add(self, bytes: u64) -> Hva {
        Hva(self.0 + bytes)
    }
    /// The address `bytes` before.
    pub const fn sub(self, bytes: u64) -> Hva {
        Hva(self.0 - bytes)
    }
    /// Byte distance from `base` (`self - base`); `self >= base` is required.
    pub const fn offset_from(self, base: Hva) -> u64 {
        self.0 - base.0
    }
    /// Index of the 4K page within the `level` page containing the address.
    pub const fn page_index_in(self, level: Level) -> u64 {
        (self.0 & (level.size() - 1)) >> PAGE_SHIFT
    }
    /// Virtual page number (`addr >> PAGE_SHIFT`).
    pub const fn vpn(self) -> u64 {
        self.0 >> PAGE_SHIFT
    }
}

impl Gpa {
    /// The frame containing this address (`gpa_to_gfn()`).
    pub const fn gfn(self) -> Gfn {
        Gfn(self.0 >> PAGE_SHIFT)
    }
    /// The address `bytes` further on.
    pub const fn add(self, bytes: u64) -> Gpa {
        Gpa(self.0 + bytes)
    }
}

impl Gfn {
    /// First byte of the frame (`gfn_to_gpa()`).
    pub const fn gpa(self) -> Gpa {
        Gpa(self.0 << PAGE_SHIFT)
    }
    /// The frame `n` frames further on.
    pub const fn add(self, n: u64) -> Gfn {
        Gfn(self.0 + n)
    }
    /// Rounds down to the first gfn of the `level` page containing it.
    pub const fn align_down(self, level: Level) -> Gfn {
        Gfn(self.0 & !(level.pages() - 1))
    }
}

impl Pfn {
    /// The frame `n` frames further on.
    pub const fn add(self, n: u64) -> Pfn {
        Pfn(self.0 + n)
    }
    /// Rounds down to the first pfn of the `level` page containing it.
    pub const fn align_down(self, level: Level) -> Pfn {
        Pfn(self.0 & !(level.pages() - 1))
    }
    /// Host physical address of the frame (`PFN_PHYS()`).
    pub const fn phys(self) -> u64 {
        self.0 << PAGE_SHIFT
    }
}

/// The level of a leaf entry in a 4-level x86-64 page table (host) or TDP table (KVM).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub enum Level {
    /// A 4 KiB PTE leaf (`PG_LEVEL_4K`).
    #[serde(rename = "4K")]
    Pte4K,
    /// A 2 MiB PMD leaf (`PG_LEVEL_2M`).
    #[serde(rename = "2M")]
    Pmd2M,
    /// A 1 GiB PUD leaf (`PG_LEVEL_1G`).
    #[serde(rename = "1G")]
    Pud1G,
}

impl Level {
    /// All levels, smallest first.
    pub const ALL: [Level; 3] = [Level::Pte4K, Level::Pmd2M, Level::Pud1G];

    /// log2 of the mapping size.
    pub const fn shift(self) -> u32 {
        match self {
            Level::Pte4K => 12,
            Level::Pmd2M => 21,
            Level::Pud1G => 30,
        }
    }
    /// Bytes mapped by one leaf at this level.
    pub const fn size(self) -> u64 {
        1 << self.shift()
    }
    /// Number of 4K pages mapped by one leaf at this level.
    pub const fn pages(self) -> u64 {
        1 << (self.shift() - PAGE_SHIFT)
    }
    /// Folio order of a leaf at this level (0, 9, 18).
    pub const fn order(self) -> u8 {
        match self {
            Level::Pte4K => 0,
            Level::Pmd2M => 9,
            Level::Pud1G => 18,
        }
    }
    /// The name used in reports: "4K", "2M", "1G".
    pub const fn name(self) -> &'static str {
        match self {
            Level::Pte4K => "4K",
            Level::Pmd2M => "2M",
            Level::Pud1G => "1G",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which Linux rules apply where versions differ.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub enum KernelVersion {
    /// Linux 6.12: the baseline of the model.
    #[default]
    #[serde(rename = "6.12")]
    V6_12,
    /// Linux 6.13 to 6.16: huge-zero write faults allocate a THP (`do_huge_zero_wp_pmd()`).
    #[serde(rename = "6.13")]
    V6_13,
    /// Linux 6.18: pfn_t/devmap removed (6.17), ZONE_DEVICE pages refcounted normally, the
    /// huge zero PMD is `pmd_special`.
    #[serde(rename = "6.18")]
    V6_18,
}

impl KernelVersion {
    /// True from 6.13 on: a write fault on the huge zero PMD allocates a THP.
    pub const fn huge_zero_wp_allocates_thp(self) -> bool {
        !matches!(self, KernelVersion::V6_12)
    }
    /// True from 6.17 on: no `pte_devmap`/`pmd_devmap`; ZONE_DEVICE pages are mapped like
    /// normal folios (refcount + mapcount).
    pub const fn devmap_removed(self) -> bool {
        matches!(self, KernelVersion::V6_18)
    }
    /// True from 6.18 on: the huge zero PMD carries the special bit.
    pub const fn huge_zero_pmd_special(self) -> bool {
        matches!(self, KernelVersion::V6_18)
    }
    /// The version string ("6.12", "6.13", "6.18").
    pub const fn as_str(self) -> &'static str {
        match self {
            KernelVersion::V6_12 => "6.12",
            KernelVersion::V6_13 => "6.13",
            KernelVersion::V6_18 => "6.18",
        }
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Unknown kernel version {0:?}: use "6.12", "6.13" or "6.18".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Unknown kernel version {0:?}: use \"6.12\", \"6.13\" or \"6.18\"")]
pub struct ParseKernelVersionError(pub String);

impl FromStr for KernelVersion {
    type Err = ParseKernelVersionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "6.12" => Ok(KernelVersion::V6_12),
            "6.13" => Ok(KernelVersion::V6_13),
            "6.18" => Ok(KernelVersion::V6_18),
            other => Err(ParseKernelVersionError(other.to_string())),
        }
    }
}

/// A NUMA node id (`int nid`).
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct NodeId(pub u16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_sizes_match_x86_64() {
        assert_eq!(Level::Pte4K.size(), 4096);
        assert_eq!(Level::Pmd2M.size(), 2 << 20);
        assert_eq!(Level::Pud1G.size(), 1 << 30);
        assert_eq!(Level::Pmd2M.pages(), 512);
        assert_eq!(Level::Pud1G.order(), 18);
    }

    #[test]
    fn hva_alignment_helpers() {
        let a = Hva(0x7f00_0020_1234);
        assert_eq!(a.align_down(Level::Pmd2M), Hva(0x7f00_0020_0000));
        assert_eq!(a.align_up(Level::Pte4K), Hva(0x7f00_0020_2000));
        assert_eq!(a.page_index_in(Level::Pmd2M), 1);
        assert_eq!(Gpa(0x5123).gfn(), Gfn(5));
        assert_eq!(Gfn(5).gpa(), Gpa(0x5000));
    }

    #[test]
    fn kernel_version_parses_and_rejects_unknown() {
        assert_eq!("6.13".parse::<KernelVersion>(), Ok(KernelVersion::V6_13));
        let err = "5.4".parse::<KernelVersion>().unwrap_err();
        assert!(err.to_string().contains("6.12"));
        assert_eq!(
            serde_json::to_string(&KernelVersion::V6_18).unwrap(),
            "\"6.18\""
        );
    }
}
