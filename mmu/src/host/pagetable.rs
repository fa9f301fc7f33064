//! The 4-level page table (PGD -> PUD -> PMD -> PTE) with leaves at PUD (1G), PMD (2M)
//! or PTE (4K) level.
//!
//! Storage is dense: a PTE table is a boxed `[Entry; 512]` (8 bytes per mapped 4K page),
//! PMD and PUD tables are boxed arrays of 16-byte slots. Empty tables are freed by
//! `free_pgtables` at munmap.
//!
//! # Divergence
//! The top level only covers the 47-bit user half; the P4D level is folded (as on 4-level
//! x86-64).

use super::pte::Entry;
use crate::types::{Hva, Level, PTRS_PER_TABLE};

/// A page of PTEs.
#[derive(Clone)]
pub(crate) struct PteTable {
    pub e: [Entry; PTRS_PER_TABLE],
}

/// A PMD slot: empty, a 2M leaf, or a PTE table.
#[derive(Clone, Default)]
pub(crate) enum PmdSlot {
    #[default]
    None,
    Leaf(Entry),
    Table(Box<PteTable>),
}

/// A page of PMD slots.
#[derive(Clone)]
pub(crate) struct PmdTable {
    pub e: [PmdSlot; PTRS_PER_TABLE],
}

/// A PUD slot: empty, a 1G leaf, or a PMD table.
#[derive(Clone, Default)]
pub(crate) enum PudSlot {
    #[default]
    None,
    Leaf(Entry),
    Table(Box<PmdTable>),
}

/// A page of PUD slots.
#[derive(Clone)]
pub(crate) struct PudTable {
    pub e: [PudSlot; PTRS_PER_TABLE],
}

/// What a walk finds at an address.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Walk {
    /// No leaf: the walk stopped at an empty slot of this level.
    None(Level),
    /// A leaf (present or not-present but non-none) at this level.
    Leaf(Level, Entry),
}

/// The page table of one address space.
#[derive(Clone)]
pub(crate) struct PageTable {
    pgd: Vec<Option<Box<PudTable>>>,
    /// Number of PUD/PMD/PTE table pages allocated (for accounting).
    pub tables: [u64; 3],
}

const fn idx(va: u64, shift: u32) -> usize {
    // The index is masked to 9 bits, so the truncation is intended and lossless.
    ((va >> shift) & 511) as usize
}

fn new_pte_table() -> Box<PteTable> {
    Box::new(PteTable {
        e: [Entry::NONE; PTRS_PER_TABLE],
    })
}
fn new_pmd_table() -> Box<PmdTable> {
    Box::new(PmdTable {
        e: std::array::from_fn(|_| PmdSlot::None),
    })
}
fn new_pud_table() -> Box<PudTable> {
    Box::new(PudTable {
        e: std::array::from_fn(|_| PudSlot::None),
    })
}

impl PageTable {
    pub fn new() -> Self {
        PageTable {
            pgd: (0..256).map(|_| None).collect(),
            tables: [0; 3],
        }
    }

    /// Bytes used by table pages.
    pub fn bytes(&self) -> u64 {
        let pud = std::mem::size_of::<PudTable>() as u64;
        let pmd = std::mem::size_of::<PmdTable>() as u64;
        let pte = std::mem::size_of::<PteTable>() as u64;
        self.tables[0] * pud
            + self.tables[1] * pmd
            + self.tables[2] * pte
            + 256 * std::mem::size_of::<Option<Box<PudTable>>>() as u64
    }

    pub fn pud_slot(&self, va: Hva) -> Option<&PudSlot> {
        let t = self.pgd.get(idx(va.0, 39))?.as_ref()?;
        Some(&t.e[idx(va.0, 30)])
    }

    pub fn pud_slot_mut(&mut self, va: Hva, alloc: bool) -> Option<&mut PudSlot> {
        let g = self.pgd.get_mut(idx(va.0, 39))?;
        if g.is_none() {
            if !alloc {
                return None;
            }
            *g = Some(new_pud_table());
            self.tables[0] += 1;
        }
        Some(&mut g.as_mut()?.e[idx(va.0, 30)])
    }

    /// The PMD slot for `va`, if a PMD table exists (not when the PUD is a leaf).
    pub fn pmd_slot(&self, va: Hva) -> Option<&PmdSlot> {
        match self.pud_slot(va)? {
            PudSlot::Table(t) => Some(&t.e[idx(va.0, 21)]),
            _ => None,
        }
    }

    /// The PMD slot for `va`; with `alloc`, creates the PMD table under an empty PUD.
    /// Returns None when the PUD is a leaf.
    pub fn pmd_slot_mut(&mut self, va: Hva, alloc: bool) -> Option<&mut PmdSlot> {
        let mut created = false;
        let slot = self.pud_slot_mut(va, alloc)?;
        if matches!(slot, PudSlot::None) {
            if !alloc {
                return None;
            }
            *slot = PudSlot::Table(new_pmd_table());
            created = true;
        }
        if created {
            self.tables[1] += 1;
        }
        match self.pud_slot_mut(va, false)? {
            PudSlot::Table(t) => Some(&mut t.e[idx(va.0, 21)]),
            _ => None,
        }
    }

    pub fn pte(&self, va: Hva) -> Option<Entry> {
        match self.pmd_slot(va)? {
            PmdSlot::Table(t) => Some(t.e[idx(va.0, 12)]),
            _ => None,
        }
    }

    /// The PTE for `va`; with `alloc`, creates the tables down to the PTE table. Returns
    /// None when a PUD or PMD leaf covers `va`.
    pub fn pte_mut(&mut self, va: Hva, alloc: bool) -> Option<&mut Entry> {
        let need_table = matches!(self.pmd_slot_mut(va, alloc)?, PmdSlot::None);
        if need_table {
            if !alloc {
                return None;
            }
            *self.pmd_slot_mut(va, false)? = PmdSlot::Table(new_pte_table());
            self.tables[2] += 1;
        }
        match self.pmd_slot_mut(va, false)? {
            PmdSlot::Table(t) => Some(&mut t.e[idx(va.0, 12)]),
            _ => None,
        }
    }

    /// Walks to the leaf covering `va` (`folio_walk_start`-like, any kind of leaf).
    pub fn walk(&self, va: Hva) -> Walk {
        let Some(Some(pud_t)) = self.pgd.get(idx(va.0, 39)) else {
            return Walk::None(Level::Pud1G);
        };
        match &pud_t.e[idx(va.0, 30)] {
            PudSlot::None => Walk::None(Level::Pud1G),
            PudSlot::Leaf(e) => Walk::Leaf(Level::Pud1G, *e),
            PudSlot::Table(pmd_t) => match &pmd_t.e[idx(va.0, 21)] {
                PmdSlot::None => Walk::None(Level::Pmd2M),
                PmdSlot::Leaf(e) => Walk::Leaf(Level::Pmd2M, *e),
                PmdSlot::Table(pte_t) => {
                    let e = pte_t.e[idx(va.0, 12)];
                    if e.is_none() {
                        Walk::None(Level::Pte4K)
                    } else {
                        Walk::Leaf(Level::Pte4K, e)
                    }
                }
            },
        }
    }

    /// Frees PTE and PMD tables that hold no entry and lie within `[start, end)` rounded
    /// out to their span (`free_pgtables()` (mm/memory.c)).
    pub fn free_empty_tables(&mut self, start: Hva, end: Hva) {
        let mut va = start.align_down(Level::Pmd2M);
        while va < end {
            let mut drop_pte = false;
            if let Some(PmdSlot::Table(t)) = self.pmd_slot(va) {
                drop_pte = t.e.iter().all(|e| e.is_none());
            }
            if drop_pte {
                if let Some(s) = self.pmd_slot_mut(va, false) {
                    *s = PmdSlot::None;
                    self.tables[2] -= 1;
                }
            }
            va = va.add(Level::Pmd2M.size());
        }
        let mut va = start.align_down(Level::Pud1G);
        while va < end {
            let mut drop_pmd = false;
            if let Some(PudSlot::Table(t)) = self.pud_slot(va) {
                drop_pmd = t.e.iter().all(|s| matches!(s, PmdSlot::None));
            }
            if drop_pmd {
                if let Some(s) = self.pud_slot_mut(va, false) {
                    *s = PudSlot::None;
                    self.tables[1] -= 1;
                }
            }
            va = va.add(Level::Pud1G.size());
        }
    }

    /// Calls `f(va, level, entry)` for every non-none leaf in `[start, end)`, in address
    /// order. Leaves that start before `start` but cover it are included.
    pub fn for_each_leaf(&self, start: Hva, end: Hva, mut f: impl FnMut(Hva, Level, Entry)) {
        // No leaf lies above the user address space; a caller's end past it (a range from
        // untrusted input, saturated) must not walk, or overflow, beyond it.
        let end = Hva(end.0.min(crate::types::TASK_SIZE));
        let mut va = start.align_down(Level::Pte4K);
        while va < end {
            let Some(Some(pud_t)) = self.pgd.get(idx(va.0, 39)) else {
                va = va.align_down(Level::Pud1G).add(512 * Level::Pud1G.size());
                va = Hva(va.0 & !((1u64 << 39) - 1));
                if va.0 >= crate::types::TASK_SIZE {
                    break;
                }
                continue;
            };
            match &pud_t.e[idx(va.0, 30)] {
                PudSlot::None => {
                    va = va.align_down(Level::Pud1G).add(Level::Pud1G.size());
                }
                PudSlot::Leaf(e) => {
                    f(va.align_down(Level::Pud1G), Level::Pud1G, *e);
                    va = va.align_down(Level::Pud1G).add(Level::Pud1G.size());
                }
                PudSlot::Table(pmd_t) => match &pmd_t.e[idx(va.0, 21)] {
                    PmdSlot::None => va = va.align_down(Level::Pmd2M).add(Level::Pmd2M.size()),
                    PmdSlot::Leaf(e) => {
                        f(va.align_down(Level::Pmd2M), Level::Pmd2M, *e);
                        va = va.align_down(Level::Pmd2M).add(Level::Pmd2M.size());
                    }
                    PmdSlot::Table(t) => {
                        let table_end = va.align_down(Level::Pmd2M).add(Level::Pmd2M.size());
                        let stop = if end < table_end { end } else { table_end };
                        while va < stop {
                            let e = t.e[idx(va.0, 12)];
                            if !e.is_none() {
                                f(va, Level::Pte4K, e);
                            }
                            va = va.add(Level::Pte4K.size());
                        }
                    }
                },
            }
        }
    }
}

/// Writes a leaf at `level` (the slot must already exist for huge leaves).
pub(crate) fn set_leaf(pt: &mut PageTable, va: Hva, level: Level, e: Entry) {
    match level {
        Level::Pte4K => {
            if let Some(p) = pt.pte_mut(va, true) {
                *p = e;
            }
        }
        Level::Pmd2M => {
            if let Some(s) = pt.pmd_slot_mut(va, !e.is_none()) {
                *s = if e.is_none() {
                    PmdSlot::None
                } else {
                    PmdSlot::Leaf(e)
                };
            }
        }
        Level::Pud1G => {
            if let Some(s) = pt.pud_slot_mut(va, !e.is_none()) {
                *s = if e.is_none() {
                    PudSlot::None
                } else {
                    PudSlot::Leaf(e)
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_finds_leaves_at_each_level() {
        let mut pt = PageTable::new();
        let a = Hva(0x7f00_0000_0000);
        *pt.pte_mut(a.add(0x1000), true).unwrap() = Entry(0x5000 | Entry::PRESENT);
        assert!(matches!(
            pt.walk(a.add(0x1000)),
            Walk::Leaf(Level::Pte4K, _)
        ));
        assert_eq!(pt.walk(a), Walk::None(Level::Pte4K));
        let b = a.add(Level::Pmd2M.size());
        *pt.pmd_slot_mut(b, true).unwrap() = PmdSlot::Leaf(Entry(Entry::PRESENT | Entry::HUGE));
        assert!(matches!(
            pt.walk(b.add(0x3000)),
            Walk::Leaf(Level::Pmd2M, _)
        ));
        assert!(pt.pte_mut(b, true).is_none(), "a PMD leaf has no PTE table");
        let mut n = 0;
        pt.for_each_leaf(a, a.add(Level::Pud1G.size()), |_, _, _| n += 1);
        assert_eq!(n, 2);
        assert_eq!(pt.tables, [1, 1, 1]);
    }
}
