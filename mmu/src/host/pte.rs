//! Page-table entries: one `u64` format for PTEs and PMD/PUD leaves.
//!
//! Models the x86-64 entry bits used by mm/ (`arch/x86/include/asm/pgtable_types.h`):
//! present, write, user, young (accessed), dirty, huge (PSE), protnone (the global bit
//! reused while present is clear), special, devmap, uffd-wp and soft-dirty, with the pfn
//! in bits 12..52.

use crate::types::Pfn;
use serde::{Deserialize, Serialize};

/// One page-table entry (`pte_t`, `pmd_t` or `pud_t` leaf). `0` is `p?d_none`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Entry(pub u64);

impl Entry {
    /// `_PAGE_PRESENT`.
    pub const PRESENT: u64 = 1 << 0;
    /// `_PAGE_RW`.
    pub const WRITE: u64 = 1 << 1;
    /// `_PAGE_USER`.
    pub const USER: u64 = 1 << 2;
    /// `_PAGE_ACCESSED`.
    pub const YOUNG: u64 = 1 << 5;
    /// `_PAGE_DIRTY`.
    pub const DIRTY: u64 = 1 << 6;
    /// `_PAGE_PSE`: a PMD/PUD leaf.
    pub const HUGE: u64 = 1 << 7;
    /// `_PAGE_PROTNONE` (the global bit while present is clear).
    pub const PROTNONE: u64 = 1 << 8;
    /// `_PAGE_SPECIAL`: no struct page to be refcounted behind it.
    pub const SPECIAL: u64 = 1 << 9;
    /// `_PAGE_UFFD_WP`.
    pub const UFFD_WP: u64 = 1 << 10;
    /// `_PAGE_SOFT_DIRTY`.
    pub const SOFT_DIRTY: u64 = 1 << 11;
    /// `_PAGE_DEVMAP` (removed in 6.17).
    pub const DEVMAP: u64 = 1 << 58;
    /// Marks a non-present hwpoison swap entry (`make_hwpoison_entry()`); the model's
    /// only non-present, non-none entry.
    pub const HWPOISON_ENTRY: u64 = 1 << 61;
    const PFN_MASK: u64 = ((1 << 40) - 1) << 12;

    /// The empty entry (`p?d_none`).
    pub const NONE: Entry = Entry(0);

    /// An entry mapping `pfn` with the given bits (`pfn_pte(pfn, prot)`).
    pub const fn new(pfn: Pfn, bits: u64) -> Entry {
        Entry(((pfn.0 << 12) & Self::PFN_MASK) | (bits & !Self::PFN_MASK))
    }
    /// `p?d_none`.
    pub const fn is_none(self) -> bool {
        self.0 == 0
    }
    /// `pte_present`: present or protnone.
    pub const fn is_present(self) -> bool {
        self.0 & (Self::PRESENT | Self::PROTNONE) != 0
    }
    /// `pte_protnone`: a NUMA-hint / PROT_NONE entry (protnone without present).
    pub const fn is_protnone(self) -> bool {
        self.0 & (Self::PRESENT | Self::PROTNONE) == Self::PROTNONE
    }
    /// `pte_write`.
    pub const fn is_write(self) -> bool {
        self.0 & Self::WRITE != 0
    }
    /// `pte_dirty`.
    pub const fn is_dirty(self) -> bool {
        self.0 & Self::DIRTY != 0
    }
    /// `pte_young`.
    pub const fn is_young(self) -> bool {
        self.0 & Self::YOUNG != 0
    }
    /// `pte_special`.
    pub const fn is_special(self) -> bool {
        self.0 & Self::SPECIAL != 0
    }
    /// `pte_devmap`.
    pub const fn is_devmap(self) -> bool {
        self.0 & Self::DEVMAP != 0
    }
    /// `is_hwpoison_entry()`: a non-present entry left by `memory_failure()`.
    pub const fn is_hwpoison(self) -> bool {
        self.0 & Self::HWPOISON_ENTRY != 0 && !self.is_present()
    }
    /// `pte_uffd_wp`.
    pub const fn is_uffd_wp(self) -> bool {
        self.0 & Self::UFFD_WP != 0
    }
    /// `pte_soft_dirty`.
    pub const fn is_soft_dirty(self) -> bool {
        self.0 & Self::SOFT_DIRTY != 0
    }
    /// `pte_pfn`.
    pub const fn pfn(self) -> Pfn {
        Pfn((self.0 & Self::PFN_MASK) >> 12)
    }
    /// True when `bit` is set.
    pub const fn has(self, bit: u64) -> bool {
        self.0 & bit != 0
    }
    /// The entry with `bits` set.
    #[must_use]
    pub const fn set(self, bits: u64) -> Entry {
        Entry(self.0 | bits)
    }
    /// The entry with `bits` cleared.
    #[must_use]
    pub const fn clear(self, bits: u64) -> Entry {
        Entry(self.0 & !bits)
    }
    /// `pte_access_permitted(pte, write)` on x86: present and user (+RW for a write).
    pub const fn access_permitted(self, write: bool) -> bool {
        let need = Self::PRESENT | Self::USER | if write { Self::WRITE } else { 0 };
        self.0 & need == need
    }
    /// `pte_modify(pte, newprot)`: keeps pfn and `_PAGE_CHG_MASK` bits (young, dirty,
    /// special, devmap, soft-dirty, uffd-wp, huge), takes present/protnone/user/write from
    /// `prot`.
    #[must_use]
    pub const fn modify(self, prot: u64) -> Entry {
        let keep = Self::PFN_MASK
            | Self::YOUNG
            | Self::DIRTY
            | Self::SPECIAL
            | Self::DEVMAP
            | Self::SOFT_DIRTY
            | Self::UFFD_WP
            | Self::HUGE;
        let take = Self::PRESENT | Self::PROTNONE | Self::USER | Self::WRITE;
        Entry((self.0 & keep) | (prot & take))
    }
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_none() {
            return f.write_str("Entry(none)");
        }
        let names = [
            (Self::PRESENT, "P"),
            (Self::WRITE, "W"),
            (Self::USER, "U"),
            (Self::YOUNG, "A"),
            (Self::DIRTY, "D"),
            (Self::HUGE, "PSE"),
            (Self::PROTNONE, "PROTNONE"),
            (Self::SPECIAL, "SPECIAL"),
            (Self::UFFD_WP, "UFFD_WP"),
            (Self::SOFT_DIRTY, "SD"),
            (Self::DEVMAP, "DEVMAP"),
        ];
        let bits: Vec<&str> = names
            .iter()
            .filter(|(b, _)| self.has(*b))
            .map(|(_, n)| *n)
            .collect();
        write!(f, "Entry(pfn={:#x} {})", self.pfn().0, bits.join("|"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Models `pte_protnone()` (arch/x86/include/asm/pgtable.h): protnone is "present" to
    /// mm/ but not to the hardware.
    #[test]
    fn protnone_entry_is_present_but_not_accessible() {
        let e = Entry::new(Pfn(5), Entry::PROTNONE | Entry::USER | Entry::YOUNG);
        assert!(e.is_present());
        assert!(e.is_protnone());
        assert!(!e.access_permitted(false));
        let back = e.modify(Entry::PRESENT | Entry::USER | Entry::WRITE);
        assert!(!back.is_protnone());
        assert!(back.access_permitted(true));
        assert_eq!(back.pfn(), Pfn(5));
        assert!(back.is_young());
    }
}
