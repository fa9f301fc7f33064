//! SPTEs and the TDP paging structure (leaves at 4K, 2M and 1G).
//!
//! Models the x86 TDP MMU's paging structure: `arch/x86/kvm/mmu/spte.h` (SPTE bits),
//! `spte.c:make_spte()` and `tdp_mmu.c` (walk, link, split, zap). A leaf at level L maps
//! `512^(L-1)` 4K pages; level 4 is the root (`PG_LEVEL_512G`).
//!
//! Storage is compact: each table node keeps a bitmap of its non-empty entries, so walks that
//! visit a range (zap, age, write-protect) cost what is present, not the size of the range.
//!
//! # Divergence
//! One root, one address space; no shadow pages, no rmaps, no NX-huge-page recovery, no
//! frozen (`REMOVED_SPTE`) state: the model's SPTE updates are atomic steps, so the cmpxchg
//! failures of the TDP MMU are not reachable.

use crate::types::{Gfn, Level, Pfn};
use serde::Serialize;

/// Number of table levels in the TDP structure (4-level EPT/NPT).
pub const ROOT_LEVEL: u8 = 4;
const ENTRIES: usize = 512;

/// Bits of an SPTE (a subset of `spte.h`'s masks, in a model-private layout).
pub mod bits {
    /// `shadow_present_mask`: the entry maps something (hardware-present, or access-tracked).
    pub const PRESENT: u64 = 1 << 0;
    /// `PT_WRITABLE_MASK`: the guest may write through this entry now.
    pub const WRITABLE: u64 = 1 << 1;
    /// `PT_PAGE_SIZE_MASK`: a 2M/1G leaf.
    pub const HUGE: u64 = 1 << 7;
    /// `shadow_accessed_mask`.
    pub const ACCESSED: u64 = 1 << 8;
    /// `shadow_dirty_mask`.
    pub const DIRTY: u64 = 1 << 9;
    /// `shadow_host_writable_mask`: the host mapping allowed writes when the SPTE was made.
    pub const HOST_WRITABLE: u64 = 1 << 57;
    /// `shadow_mmu_writable_mask`: KVM itself allows writes (not write-tracked/protected).
    pub const MMU_WRITABLE: u64 = 1 << 58;
    /// Access-tracked (`SHADOW_ACC_TRACK_SAVED_BITS`): present in software, the hardware
    /// sees no permission (A/D-disabled aging).
    pub const ACCESS_TRACKED: u64 = 1 << 60;
    /// An MMIO SPTE (`shadow_mmio_value`): not present, caches "no memslot".
    pub const MMIO: u64 = 1 << 62;
    /// pfn field mask (bits 12..52).
    pub const PFN_MASK: u64 = ((1u64 << 52) - 1) & !0xfff;
}

/// One shadow page-table entry.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Spte(pub u64);

impl std::fmt::Debug for Spte {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Spte(pfn={:#x}", self.pfn().0)?;
        for (n, b) in [
            ("P", bits::PRESENT),
            ("W", bits::WRITABLE),
            ("PS", bits::HUGE),
            ("A", bits::ACCESSED),
            ("D", bits::DIRTY),
            ("HW", bits::HOST_WRITABLE),
            ("MW", bits::MMU_WRITABLE),
            ("AT", bits::ACCESS_TRACKED),
            ("MMIO", bits::MMIO),
        ] {
            if self.0 & b != 0 {
                write!(f, " {n}")?;
            }
        }
        write!(f, ")")
    }
}

impl Spte {
    /// A present leaf for `pfn` with the given bits.
    pub const fn leaf(pfn: Pfn, flags: u64) -> Spte {
        Spte((pfn.0 << 12) & bits::PFN_MASK | flags | bits::PRESENT)
    }
    /// An MMIO SPTE (`make_mmio_spte()`).
    pub const fn mmio(gfn: Gfn) -> Spte {
        Spte((gfn.0 << 12) & bits::PFN_MASK | bits::MMIO)
    }
    /// The mapped frame.
    pub const fn pfn(self) -> Pfn {
        Pfn((self.0 & bits::PFN_MASK) >> 12)
    }
    /// `is_shadow_present_pte()`.
    pub const fn is_present(self) -> bool {
        self.0 & bits::PRESENT != 0
    }
    /// `is_mmio_spte()`.
    pub const fn is_mmio(self) -> bool {
        self.0 & bits::MMIO != 0
    }
    /// `is_writable_pte()`.
    pub const fn is_writable(self) -> bool {
        self.0 & bits::WRITABLE != 0
    }
    /// `is_mmu_writable_spte()`.
    pub const fn is_mmu_writable(self) -> bool {
        self.0 & bits::MMU_WRITABLE != 0
    }
    /// Host-writable bit.
    pub const fn is_host_writable(self) -> bool {
        self.0 & bits::HOST_WRITABLE != 0
    }
    /// `is_access_track_spte()`.
    pub const fn is_access_tracked(self) -> bool {
        self.0 & bits::ACCESS_TRACKED != 0
    }
    /// `is_accessed_spte()`: accessed bit set (A/D) or not access-tracked.
    pub const fn is_accessed(self) -> bool {
        self.0 & bits::ACCESSED != 0 && !self.is_access_tracked()
    }
    /// `is_dirty_spte()`.
    pub const fn is_dirty(self) -> bool {
        self.0 & bits::DIRTY != 0
    }
    /// True when the bits in `mask` are set.
    pub const fn has(self, mask: u64) -> bool {
        self.0 & mask == mask
    }
    /// The SPTE with `mask` set.
    pub const fn with(self, mask: u64) -> Spte {
        Spte(self.0 | mask)
    }
    /// The SPTE with `mask` cleared.
    pub const fn without(self, mask: u64) -> Spte {
        Spte(self.0 & !mask)
    }
    /// The same SPTE mapping another frame (split children).
    pub const fn with_pfn(self, pfn: Pfn) -> Spte {
        Spte(self.0 & !bits::PFN_MASK | ((pfn.0 << 12) & bits::PFN_MASK))
    }
}

/// Converts a model level (1 = 4K ... 4 = root) into a leaf [`Level`].
pub fn level_of(l: u8) -> Level {
    match l {
        1 => Level::Pte4K,
        2 => Level::Pmd2M,
        _ => Level::Pud1G,
    }
}

/// Converts a leaf [`Level`] into the model's level number (`PG_LEVEL_*`).
pub const fn level_num(l: Level) -> u8 {
    match l {
        Level::Pte4K => 1,
        Level::Pmd2M => 2,
        Level::Pud1G => 3,
    }
}

/// 4K pages covered by one entry at `level`.
#[inline]
pub const fn pages_at(level: u8) -> u64 {
    1u64 << (9 * (level as u32 - 1))
}

#[inline]
fn index(level: u8, gfn: u64) -> usize {
    // Bounded by the mask: always < 512.
    usize::try_from((gfn >> (9 * (u32::from(level) - 1))) & 511).unwrap_or(0)
}

enum Entry {
    Empty,
    Leaf(Spte),
    Table(Box<Node>),
}

struct Node {
    entries: [Entry; ENTRIES],
    /// Bitmap of non-empty entries.
    present: [u64; 8],
}

impl Node {
    fn new() -> Box<Node> {
        Box::new(Node {
            entries: std::array::from_fn(|_| Entry::Empty),
            present: [0; 8],
        })
    }
    #[inline]
    fn set_bit(&mut self, i: usize) {
        self.present[i / 64] |= 1 << (i % 64);
    }
    fn is_empty(&self) -> bool {
        self.present.iter().all(|w| *w == 0)
    }
    fn for_each_present(&self, lo: usize, hi: usize, f: impl FnMut(usize)) {
        for_each_bit(self.present, lo, hi, f)
    }
}

/// Indices of set bits of `present` in `[lo, hi]`, ascending.
#[inline]
fn for_each_bit(present: [u64; 8], lo: usize, hi: usize, mut f: impl FnMut(usize)) {
    {
        let mut w = lo / 64;
        while w <= hi / 64 {
            let mut word = present[w];
            if w == lo / 64 {
                word &= !0u64 << (lo % 64);
            }
            if w == hi / 64 && hi % 64 != 63 {
                word &= (1u64 << (hi % 64 + 1)) - 1;
            }
            while word != 0 {
                let b = word.trailing_zeros() as usize;
                word &= word - 1;
                f(w * 64 + b);
            }
            w += 1;
        }
    }
}

/// A leaf that was removed or changed: its first gfn, level and old value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeafChange {
    /// First gfn the leaf mapped.
    pub gfn: Gfn,
    /// Level number (1 = 4K, 2 = 2M, 3 = 1G).
    pub level: u8,
    /// The SPTE before the change.
    pub old: Spte,
}

/// What [`TdpTable::map`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapOutcome {
    /// `new == old`: `RET_PF_SPURIOUS`.
    Spurious,
    /// The leaf was installed.
    Installed {
        /// The leaf it replaced (non-present, a leaf, or a table).
        old: Option<Spte>,
        /// A present non-leaf was replaced by a huge leaf: `kvm_flush_remote_tlbs_gfn()`.
        replaced_table: bool,
        /// Huge SPTEs split on the way down (`tdp_mmu_split_huge_page()`).
        splits: u32,
        /// Tables linked on the way down (`tdp_mmu_link_sp()`).
        linked: u32,
    },
}

/// Live counts kept by the table (KVM's `pages_4k/2m/1g` stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TableCounts {
    /// Present 4K leaves.
    pub pages_4k: u64,
    /// Present 2M leaves.
    pub pages_2m: u64,
    /// Present 1G leaves.
    pub pages_1g: u64,
    /// Non-root tables allocated (`kvm_mmu_page`s).
    pub tables: u64,
}

impl TableCounts {
    fn adj(&mut self, level: u8, add: bool) {
        let c = match level {
            1 => &mut self.pages_4k,
            2 => &mut self.pages_2m,
            _ => &mut self.pages_1g,
        };
        if add {
            *c += 1;
        } else {
            *c -= 1;
        }
    }
}

/// The TDP paging structure of one address space (one root).
pub struct TdpTable {
    root: Box<Node>,
    counts: TableCounts,
}

impl std::fmt::Debug for TdpTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TdpTable")
            .field("counts", &self.counts)
            .finish()
    }
}

impl Default for TdpTable {
    fn default() -> Self {
        Self::new()
    }
}

impl Clone for TdpTable {
    fn clone(&self) -> Self {
        fn clone_node(n: &Node) -> Box<Node> {
            let mut out = Node::new();
            out.present = n.present;
            for (i, e) in n.entries.iter().enumerate() {
                out.entries[i] = match e {
                    Entry::Empty => Entry::Empty,
                    Entry::Leaf(s) => Entry::Leaf(*s),
                    Entry::Table(c) => Entry::Table(clone_node(c)),
                };
            }
            out
        }
        TdpTable {
            root: clone_node(&self.root),
            counts: self.counts,
        }
    }
}

impl TdpTable {
    /// An empty structure (a fresh root).
    pub fn new() -> Self {
        TdpTable {
            root: Node::new(),
            counts: TableCounts::default(),
        }
    }

    /// Live leaf and table counts.
    pub fn counts(&self) -> TableCounts {
        self.counts
    }

    /// The last SPTE on the walk to `gfn` (`kvm_tdp_mmu_fast_pf_get_last_sptep()`
    /// (arch/x86/kvm/mmu/tdp_mmu.c) / `kvm_tdp_mmu_get_walk()`): the leaf and its level, or `None`
    /// when the walk ends at a non-present entry. MMIO SPTEs are returned too.
    #[inline]
    pub fn lookup(&self, gfn: Gfn) -> Option<(Spte, u8)> {
        let mut node: &Node = &self.root;
        let mut level = ROOT_LEVEL;
        loop {
            match &node.entries[index(level, gfn.0)] {
                Entry::Empty => return None,
                Entry::Leaf(s) => return Some((*s, level)),
                Entry::Table(c) => {
                    node = c;
                    level -= 1;
                }
            }
        }
    }

    /// Replaces the leaf mapping `gfn` at `level` (which must exist) with `new`.
    /// Used by fast_page_fault and aging (the cmpxchg of `try_cmpxchg64`).
    pub fn update_leaf(&mut self, gfn: Gfn, level: u8, new: Spte) -> bool {
        let mut node: &mut Node = &mut self.root;
        let mut l = ROOT_LEVEL;
        loop {
            let i = index(l, gfn.0);
            if l == level {
                return match &mut node.entries[i] {
                    Entry::Leaf(s) => {
                        *s = new;
                        true
                    }
                    _ => false,
                };
            }
            match &mut node.entries[i] {
                Entry::Table(c) => {
                    node = c;
                    l -= 1;
                }
                _ => return false,
            }
        }
    }

    /// Installs `new` as the leaf for `gfn` at `goal` (1..=3): models the walk of
    /// `kvm_tdp_mmu_map()` (arch/x86/kvm/mmu/tdp_mmu.c) (descend; split a huge SPTE in the way with
    /// `tdp_mmu_split_huge_page()`, or link a new table with `tdp_mmu_link_sp()`) and
    /// `tdp_mmu_map_handle_target_level()` (spurious if unchanged; replacing a present
    /// non-leaf requires a TLB flush). Children of a replaced table are reported through
    /// `removed` (`handle_removed_pt()`).
    pub fn map(
        &mut self,
        gfn: Gfn,
        goal: u8,
        new: Spte,
        removed: &mut dyn FnMut(LeafChange),
    ) -> MapOutcome {
        let mut splits = 0;
        let mut linked = 0;
        let counts = &mut self.counts;
        let mut node: &mut Node = &mut self.root;
        let mut level = ROOT_LEVEL;
        while level > goal {
            let i = index(level, gfn.0);
            let base = gfn.0 & !(pages_at(level) - 1);
            match &node.entries[i] {
                Entry::Table(_) => {}
                Entry::Leaf(old) if old.is_present() => {
                    let child = split_leaf(*old, level);
                    counts.adj(level, false);
                    for _ in 0..ENTRIES {
                        counts.adj(level - 1, true);
                    }
                    counts.tables += 1;
                    splits += 1;
                    node.entries[i] = Entry::Table(child);
                }
                Entry::Leaf(old) => {
                    // MMIO SPTE in the way: replaced by a table.
                    let _ = base;
                    let _ = old;
                    node.entries[i] = Entry::Table(Node::new());
                    node.set_bit(i);
                    counts.tables += 1;
                    linked += 1;
                }
                Entry::Empty => {
                    node.entries[i] = Entry::Table(Node::new());
                    node.set_bit(i);
                    counts.tables += 1;
                    linked += 1;
                }
            }
            node = match &mut node.entries[i] {
                Entry::Table(c) => c,
                _ => unreachable!("just linked"),
            };
            level -= 1;
        }
        let i = index(goal, gfn.0);
        let base = gfn.0 & !(pages_at(goal) - 1);
        let slot = &mut node.entries[i];
        let (old, replaced_table) = match slot {
            Entry::Empty => (None, false),
            Entry::Leaf(s) => {
                if *s == new {
                    return MapOutcome::Spurious;
                }
                (Some(*s), false)
            }
            Entry::Table(t) => {
                remove_subtree(t, goal - 1, base, counts, removed);
                (None, true)
            }
        };
        if let Some(o) = old {
            if o.is_present() {
                counts.adj(goal, false);
            }
        }
        if replaced_table {
            counts.tables -= 1;
        }
        if new.is_present() {
            counts.adj(goal, true);
        }
        *slot = Entry::Leaf(new);
        node.set_bit(i);
        MapOutcome::Installed {
            old,
            replaced_table,
            splits,
            linked,
        }
    }

    /// Zaps every present leaf, at any level, whose span intersects `[start, end)`
    /// (`tdp_mmu_zap_leafs()` (arch/x86/kvm/mmu/tdp_mmu.c)): a huge SPTE only partly covered is
    /// zapped whole; non-leaf tables are kept; MMIO SPTEs are skipped. Each zapped leaf is reported
    /// to `zapped`. Returns the number of leaves zapped.
    pub fn zap_leafs(&mut self, start: Gfn, end: Gfn, zapped: &mut dyn FnMut(LeafChange)) -> u64 {
        if start >= end {
            return 0;
        }
        let counts = &mut self.counts;
        zap_node(
            &mut self.root,
            ROOT_LEVEL,
            0,
            start.0,
            end.0,
            counts,
            zapped,
        )
    }

    /// Zaps everything, MMIO SPTEs and tables included (`kvm_tdp_mmu_zap_all()`
    /// (arch/x86/kvm/mmu/tdp_mmu.c)). Returns the number of present leaves zapped.
    pub fn zap_all(&mut self, zapped: &mut dyn FnMut(LeafChange)) -> u64 {
        let before = self.counts;
        let counts = &mut self.counts;
        remove_subtree(&mut self.root, ROOT_LEVEL, 0, counts, zapped);
        self.root = Node::new();
        self.counts.tables = 0;
        before.pages_4k + before.pages_2m + before.pages_1g
    }

    /// Visits every present leaf intersecting `[start, end)` and lets `f` rewrite it
    /// (return `Some(new)`); used by aging, write-protection and dirty-log clearing.
    /// `f` gets (first gfn, level, spte). Returns how many leaves were rewritten.
    pub fn update_leafs(
        &mut self,
        start: Gfn,
        end: Gfn,
        f: &mut dyn FnMut(Gfn, u8, Spte) -> Option<Spte>,
    ) -> u64 {
        if start >= end {
            return 0;
        }
        update_node(&mut self.root, ROOT_LEVEL, 0, start.0, end.0, f)
    }

    /// Splits every huge leaf intersecting `[start, end)` down to 4K
    /// (`kvm_tdp_mmu_try_split_huge_pages()` (arch/x86/kvm/mmu/tdp_mmu.c), eager page splitting).
    /// Returns the splits done.
    pub fn split_huge_range(&mut self, start: Gfn, end: Gfn) -> u64 {
        if start >= end {
            return 0;
        }
        let counts = &mut self.counts;
        split_node(&mut self.root, ROOT_LEVEL, 0, start.0, end.0, counts)
    }

    /// Removes every MMIO SPTE (memslot generation change).
    pub fn remove_mmio(&mut self) {
        fn walk(n: &mut Node) {
            let present = n.present;
            for_each_bit(present, 0, ENTRIES - 1, |i| match &mut n.entries[i] {
                Entry::Leaf(s) if s.is_mmio() => {
                    n.entries[i] = Entry::Empty;
                    n.present[i / 64] &= !(1 << (i % 64));
                }
                Entry::Table(c) => walk(c),
                _ => {}
            });
        }
        walk(&mut self.root);
    }

    /// Every present leaf as (first gfn, level, spte), ascending (for invariant checks).
    pub fn leaves(&self) -> Vec<(Gfn, u8, Spte)> {
        fn walk(n: &Node, level: u8, base: u64, out: &mut Vec<(Gfn, u8, Spte)>) {
            n.for_each_present(0, ENTRIES - 1, |i| {
                let g = base + pages_at(level) * i as u64;
                match &n.entries[i] {
                    Entry::Leaf(s) if s.is_present() => out.push((Gfn(g), level, *s)),
                    Entry::Table(c) => walk(c, level - 1, g, out),
                    _ => {}
                }
            });
        }
        let mut out = Vec::new();
        walk(&self.root, ROOT_LEVEL, 0, &mut out);
        out
    }
}

/// Builds the child table of a huge leaf (`tdp_mmu_split_huge_page()` →
/// `make_huge_page_split_spte()`): each child maps its part of the frame with the same bits.
fn split_leaf(huge: Spte, level: u8) -> Box<Node> {
    let mut child = Node::new();
    let child_level = level - 1;
    let step = pages_at(child_level);
    let bits = if child_level == 1 {
        huge.without(bits::HUGE)
    } else {
        huge
    };
    for (i, e) in child.entries.iter_mut().enumerate() {
        *e = Entry::Leaf(bits.with_pfn(huge.pfn().add(step * i as u64)));
    }
    child.present = [!0; 8];
    child
}

fn entry_range(level: u8, base: u64, start: u64, end: u64) -> (usize, usize) {
    let span = pages_at(level);
    let lo = if start > base {
        (start - base) / span
    } else {
        0
    };
    let hi = ((end - 1).saturating_sub(base) / span).min(511);
    // Bounded by 511 above.
    (
        usize::try_from(lo.min(511)).unwrap_or(511),
        usize::try_from(hi).unwrap_or(511),
    )
}

fn zap_node(
    n: &mut Node,
    level: u8,
    base: u64,
    start: u64,
    end: u64,
    counts: &mut TableCounts,
    zapped: &mut dyn FnMut(LeafChange),
) -> u64 {
    if end <= base || start >= base + pages_at(level) * 512 {
        return 0;
    }
    let (lo, hi) = entry_range(level, base, start, end);
    let span = pages_at(level);
    let mut total = 0;
    let mut cleared = [0u64; 8];
    let entries = &mut n.entries;
    let present = n.present;
    for_each_bit(present, lo, hi, |i| {
        let g = base + span * i as u64;
        match &mut entries[i] {
            Entry::Leaf(s) if s.is_present() => {
                zapped(LeafChange {
                    gfn: Gfn(g),
                    level,
                    old: *s,
                });
                counts.adj(level, false);
                entries[i] = Entry::Empty;
                cleared[i / 64] |= 1 << (i % 64);
                total += 1;
            }
            Entry::Table(c) if !c.is_empty() => {
                total += zap_node(c, level - 1, g, start, end, counts, zapped);
            }
            _ => {}
        }
    });
    for (w, c) in n.present.iter_mut().zip(cleared) {
        *w &= !c;
    }
    total
}

fn remove_subtree(
    n: &mut Node,
    level: u8,
    base: u64,
    counts: &mut TableCounts,
    removed: &mut dyn FnMut(LeafChange),
) {
    let span = pages_at(level);
    let present = n.present;
    for (w, &bits) in present.iter().enumerate() {
        let mut word = bits;
        while word != 0 {
            let i = w * 64 + word.trailing_zeros() as usize;
            word &= word - 1;
            let g = base + span * i as u64;
            match std::mem::replace(&mut n.entries[i], Entry::Empty) {
                Entry::Leaf(s) if s.is_present() => {
                    counts.adj(level, false);
                    removed(LeafChange {
                        gfn: Gfn(g),
                        level,
                        old: s,
                    });
                }
                Entry::Table(mut c) => {
                    remove_subtree(&mut c, level - 1, g, counts, removed);
                    counts.tables = counts.tables.saturating_sub(1);
                }
                _ => {}
            }
        }
    }
    n.present = [0; 8];
}

fn update_node(
    n: &mut Node,
    level: u8,
    base: u64,
    start: u64,
    end: u64,
    f: &mut dyn FnMut(Gfn, u8, Spte) -> Option<Spte>,
) -> u64 {
    let (lo, hi) = entry_range(level, base, start, end);
    let span = pages_at(level);
    let mut total = 0;
    let entries = &mut n.entries;
    for_each_bit(n.present, lo, hi, |i| {
        let g = base + span * i as u64;
        match &mut entries[i] {
            Entry::Leaf(s) if s.is_present() => {
                if let Some(new) = f(Gfn(g), level, *s) {
                    *s = new;
                    total += 1;
                }
            }
            Entry::Table(c) if !c.is_empty() => {
                total += update_node(c, level - 1, g, start, end, f);
            }
            _ => {}
        }
    });
    total
}

fn split_node(
    n: &mut Node,
    level: u8,
    base: u64,
    start: u64,
    end: u64,
    counts: &mut TableCounts,
) -> u64 {
    let (lo, hi) = entry_range(level, base, start, end);
    let span = pages_at(level);
    let mut total = 0;
    let entries = &mut n.entries;
    for_each_bit(n.present, lo, hi, |i| {
        let g = base + span * i as u64;
        if level > 1 {
            if let Entry::Leaf(s) = &entries[i] {
                if s.is_present() {
                    let child = split_leaf(*s, level);
                    counts.adj(level, false);
                    for _ in 0..ENTRIES {
                        counts.adj(level - 1, true);
                    }
                    counts.tables += 1;
                    entries[i] = Entry::Table(child);
                    total += 1;
                }
            }
        }
        if let Entry::Table(c) = &mut entries[i] {
            if level > 2 && !c.is_empty() {
                total += split_node(c, level - 1, g, start, end, counts);
            }
        }
    });
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(pfn: u64) -> Spte {
        Spte::leaf(Pfn(pfn), bits::ACCESSED)
    }

    #[test]
    fn map_links_tables_and_lookup_finds_leaf() {
        let mut t = TdpTable::new();
        let r = t.map(Gfn(0x1234), 1, leaf(0x99), &mut |_| {});
        assert!(matches!(r, MapOutcome::Installed { linked: 3, .. }));
        assert_eq!(t.lookup(Gfn(0x1234)), Some((leaf(0x99), 1)));
        assert_eq!(t.lookup(Gfn(0x1235)), None);
        assert_eq!(t.counts().pages_4k, 1);
        assert_eq!(
            t.map(Gfn(0x1234), 1, leaf(0x99), &mut |_| {}),
            MapOutcome::Spurious
        );
    }

    #[test]
    fn mapping_4k_under_a_huge_leaf_splits_it() {
        let mut t = TdpTable::new();
        t.map(Gfn(0x200), 2, leaf(0x1000).with(bits::HUGE), &mut |_| {});
        assert_eq!(t.counts().pages_2m, 1);
        let r = t.map(Gfn(0x201), 1, leaf(0x5), &mut |_| {});
        assert!(matches!(r, MapOutcome::Installed { splits: 1, .. }));
        assert_eq!(t.counts().pages_2m, 0);
        assert_eq!(t.counts().pages_4k, 512);
        // Siblings keep their part of the frame.
        assert_eq!(t.lookup(Gfn(0x203)).unwrap().0.pfn(), Pfn(0x1003));
        assert_eq!(t.lookup(Gfn(0x201)).unwrap().0.pfn(), Pfn(0x5));
    }

    #[test]
    fn huge_leaf_over_a_table_reports_removed_children_and_flush() {
        let mut t = TdpTable::new();
        t.map(Gfn(0x200), 1, leaf(1), &mut |_| {});
        t.map(Gfn(0x3ff), 1, leaf(2), &mut |_| {});
        let mut removed = Vec::new();
        let r = t.map(Gfn(0x200), 2, leaf(0x400).with(bits::HUGE), &mut |c| {
            removed.push(c)
        });
        assert!(matches!(
            r,
            MapOutcome::Installed {
                replaced_table: true,
                ..
            }
        ));
        assert_eq!(removed.len(), 2);
        assert_eq!(t.counts().pages_4k, 0);
        assert_eq!(t.counts().pages_2m, 1);
    }

    #[test]
    fn zap_partly_covered_huge_leaf_zaps_it_whole() {
        let mut t = TdpTable::new();
        t.map(Gfn(0x200), 2, leaf(0x400).with(bits::HUGE), &mut |_| {});
        t.map(Gfn(0x5), 1, leaf(7), &mut |_| {});
        let mut z = Vec::new();
        let n = t.zap_leafs(Gfn(0x3ff), Gfn(0x400), &mut |c| z.push(c));
        assert_eq!(n, 1);
        assert_eq!(z[0].gfn, Gfn(0x200));
        assert_eq!(z[0].level, 2);
        assert!(t.lookup(Gfn(0x5)).is_some());
        assert_eq!(t.zap_leafs(Gfn(0), Gfn(0x200), &mut |_| {}), 1);
        assert_eq!(t.leaves(), vec![]);
    }

    #[test]
    fn zap_skips_mmio_sptes_but_zap_all_removes_them() {
        let mut t = TdpTable::new();
        t.map(Gfn(9), 1, Spte::mmio(Gfn(9)), &mut |_| {});
        assert_eq!(t.zap_leafs(Gfn(0), Gfn(100), &mut |_| {}), 0);
        assert!(t.lookup(Gfn(9)).is_some());
        t.zap_all(&mut |_| {});
        assert!(t.lookup(Gfn(9)).is_none());
    }

    #[test]
    fn split_range_splits_1g_to_4k() {
        let mut t = TdpTable::new();
        t.map(Gfn(0), 3, leaf(0x40000).with(bits::HUGE), &mut |_| {});
        t.split_huge_range(Gfn(0), Gfn(1));
        assert_eq!(t.counts().pages_1g, 0);
        assert_eq!(t.counts().pages_2m, 511);
        assert_eq!(t.counts().pages_4k, 512);
        assert_eq!(t.lookup(Gfn(0x201)).unwrap().1, 2);
        assert_eq!(t.lookup(Gfn(1)).unwrap(), (leaf(0x40001), 1));
    }
}
