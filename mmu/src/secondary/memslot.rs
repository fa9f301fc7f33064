//! Memslots: guest-physical ranges backed by host virtual memory.
//!
//! Models `struct kvm_memory_slot` (include/linux/kvm_host.h), `__gfn_to_hva_many()`
//! (virt/kvm/kvm_main.c), the x86 `lpage_info` built by `kvm_alloc_memslot_metadata()`
//! (arch/x86/kvm/x86.c) and the dirty bitmap.
//!
//! # Divergence
//! One address space (no SMM), no private/guest_memfd slots, no APIC-access slot; lookups
//! are binary searches over a sorted `Vec` instead of KVM's rb-trees / interval tree.

use crate::types::{Gfn, Gpa, Hva, Level, PAGE_SIZE};
use serde::{Deserialize, Serialize};

/// Flags of a memslot (`KVM_MEM_READONLY`, `KVM_MEM_LOG_DIRTY_PAGES`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemslotFlags {
    /// `KVM_MEM_READONLY`: guest writes exit to userspace as MMIO; never mapped writable.
    pub readonly: bool,
    /// `KVM_MEM_LOG_DIRTY_PAGES`.
    pub dirty_log: bool,
}

/// One memslot.
#[derive(Clone, Debug)]
pub struct Memslot {
    /// Slot id.
    pub id: u16,
    /// First gfn (`base_gfn`).
    pub base_gfn: Gfn,
    /// Number of 4K pages (`npages`).
    pub npages: u64,
    /// Host virtual address of `base_gfn` (`userspace_addr`).
    pub userspace_addr: Hva,
    /// Flags.
    pub flags: MemslotFlags,
    /// `KVM_MEMSLOT_INVALID`: being deleted or moved.
    pub invalid: bool,
    /// `lpage_info[level]` disallow counts for 2M (index 0) and 1G (index 1).
    lpage_disallow: [Vec<u32>; 2],
    /// Dirty bitmap, one bit per page, when dirty logging is enabled.
    dirty_bitmap: Option<Vec<u64>>,
}

/// Invalid memslot request (`kvm_set_memory_region()` checks).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemslotError {
    /// Memslot {id}: gpa {gpa:#x}, size {size:#x} and hva {hva:#x} must be 4K-aligned and size non-zero.
    #[error("Memslot {id}: gpa {gpa:#x}, size {size:#x} and hva {hva:#x} must be 4K-aligned and size non-zero")]
    Unaligned {
        /// Slot id.
        id: u16,
        /// Guest physical base.
        gpa: u64,
        /// Size in bytes.
        size: u64,
        /// Host virtual base.
        hva: u64,
    },
    /// Memslot {id} [{start:#x}, {end:#x}) overlaps memslot {other}: pick a free guest range.
    #[error(
        "Memslot {id} [{start:#x}, {end:#x}) overlaps memslot {other}: pick a free guest range"
    )]
    Overlap {
        /// Slot id.
        id: u16,
        /// First gpa.
        start: u64,
        /// End gpa.
        end: u64,
        /// The slot it overlaps.
        other: u16,
    },
    /// Memslot {id}: [{start:#x}, +{size:#x}) {problem}
    #[error("Memslot {id}: [{start:#x}, +{size:#x}) {problem}")]
    OutOfRange {
        /// Slot id.
        id: u16,
        /// Start (gpa or hva).
        start: u64,
        /// Size in bytes.
        size: u64,
        /// What is wrong.
        problem: &'static str,
    },
    /// Memslot {0} already exists: delete it first or use another id.
    #[error("Memslot {0} already exists: delete it first or use another id")]
    Exists(u16),
    /// Memslot {0} does not exist.
    #[error("Memslot {0} does not exist")]
    NoSuchSlot(u16),
    /// Memslot {id} change refused: {active} invalidation(s) in flight; KVM waits in kvm_swap_active_memslots() until invalidate_range_end.
    #[error("Memslot {id} change refused: {active} invalidation(s) in flight; KVM waits in kvm_swap_active_memslots() until invalidate_range_end")]
    InvalidationInFlight {
        /// Slot id.
        id: u16,
        /// `mn_active_invalidate_count`.
        active: u64,
    },
    /// Memslot {0}: dirty logging is not enabled.
    #[error("Memslot {0}: dirty logging is not enabled")]
    NotLogging(u16),
}

impl Memslot {
    /// Builds a slot and its metadata (`kvm_alloc_memslot_metadata()` (arch/x86/kvm/x86.c)).
    #[allow(clippy::manual_is_multiple_of)] // u64::is_multiple_of needs Rust 1.87; rust-version is 1.80.
    pub fn new(
        id: u16,
        gpa: Gpa,
        size: u64,
        hva: Hva,
        flags: MemslotFlags,
    ) -> Result<Self, MemslotError> {
        if size == 0 || size % PAGE_SIZE != 0 || gpa.0 % PAGE_SIZE != 0 || hva.0 % PAGE_SIZE != 0 {
            return Err(MemslotError::Unaligned {
                id,
                gpa: gpa.0,
                size,
                hva: hva.0,
            });
        }
        // kvm_set_memory_region(): access_ok(userspace_addr, size) and no gpa wrap; the
        // model caps guest physical addresses at 52 bits (MAXPHYADDR).
        if end_beyond(hva.0.checked_add(size), crate::types::TASK_SIZE) {
            return Err(MemslotError::OutOfRange {
                id,
                start: hva.0,
                size,
                problem: "hva range leaves the 47-bit user address space",
            });
        }
        if end_beyond(gpa.0.checked_add(size), 1 << 52) {
            return Err(MemslotError::OutOfRange {
                id,
                start: gpa.0,
                size,
                problem: "gpa range goes beyond 52-bit guest physical addresses",
            });
        }
        let base_gfn = gpa.gfn();
        let npages = size / PAGE_SIZE;
        let mut slot = Memslot {
            id,
            base_gfn,
            npages,
            userspace_addr: hva,
            flags,
            invalid: false,
            lpage_disallow: [Vec::new(), Vec::new()],
            dirty_bitmap: None,
        };
        for (k, level) in [Level::Pmd2M, Level::Pud1G].into_iter().enumerate() {
            slot.lpage_disallow[k] = build_lpage_info(base_gfn, npages, hva, level);
        }
        if flags.dirty_log {
            slot.dirty_bitmap = Some(vec![0; bitmap_words(npages)]);
        }
        Ok(slot)
    }

    /// One past the last gfn.
    pub fn end_gfn(&self) -> Gfn {
        self.base_gfn.add(self.npages)
    }

    /// One past the last hva.
    pub fn end_hva(&self) -> Hva {
        self.userspace_addr.add(self.npages * PAGE_SIZE)
    }

    /// True when `gfn` is inside the slot.
    #[inline]
    pub fn contains(&self, gfn: Gfn) -> bool {
        gfn >= self.base_gfn && gfn.0 < self.base_gfn.0 + self.npages
    }

    /// `__gfn_to_hva_memslot()` (include/linux/kvm_host.h).
    #[inline]
    pub fn gfn_to_hva(&self, gfn: Gfn) -> Hva {
        self.userspace_addr
            .add((gfn.0 - self.base_gfn.0) * PAGE_SIZE)
    }

    /// `hva_to_gfn_memslot()` (include/linux/kvm_host.h).
    #[inline]
    pub fn hva_to_gfn(&self, hva: Hva) -> Gfn {
        self.base_gfn
            .add((hva.0 - self.userspace_addr.0) / PAGE_SIZE)
    }

    /// `lpage_info_slot(gfn, slot, level)->disallow_lpage != 0` (arch/x86/kvm/mmu/mmu.c).
    #[allow(clippy::unnecessary_map_or)] // Option::is_none_or needs Rust 1.82; rust-version is 1.80.
    pub fn lpage_disallowed(&self, gfn: Gfn, level: Level) -> bool {
        let k = match level {
            Level::Pte4K => return false,
            Level::Pmd2M => 0,
            Level::Pud1G => 1,
        };
        let idx = (gfn.0 >> (level.shift() - 12)) - (self.base_gfn.0 >> (level.shift() - 12));
        let idx = usize::try_from(idx).unwrap_or(usize::MAX);
        self.lpage_disallow[k].get(idx).map_or(true, |c| *c != 0)
    }

    /// `kvm_slot_dirty_track_enabled()` (include/linux/kvm_host.h).
    pub fn dirty_logging(&self) -> bool {
        self.dirty_bitmap.is_some()
    }

    /// `mark_page_dirty_in_slot()` (virt/kvm/kvm_main.c).
    pub fn mark_dirty(&mut self, gfn: Gfn) {
        let rel = gfn.0 - self.base_gfn.0;
        if let Some(bm) = &mut self.dirty_bitmap {
            if let Ok(i) = usize::try_from(rel / 64) {
                bm[i] |= 1 << (rel % 64);
            }
        }
    }

    /// Enables or disables dirty logging (allocates / frees the bitmap).
    pub(crate) fn set_dirty_logging(&mut self, on: bool) {
        self.flags.dirty_log = on;
        self.dirty_bitmap = on.then(|| vec![0; bitmap_words(self.npages)]);
    }

    /// Copies and clears the dirty bitmap (`kvm_get_dirty_log_protect()` (virt/kvm/kvm_main.c)
    /// without manual protect); returns the dirty gfns.
    pub(crate) fn take_dirty(&mut self) -> Result<Vec<Gfn>, MemslotError> {
        let base = self.base_gfn;
        let bm = self
            .dirty_bitmap
            .as_mut()
            .ok_or(MemslotError::NotLogging(self.id))?;
        let mut out = Vec::new();
        for (w, word) in bm.iter_mut().enumerate() {
            let mut x = std::mem::take(word);
            while x != 0 {
                let b = u64::from(x.trailing_zeros());
                x &= x - 1;
                out.push(base.add(w as u64 * 64 + b));
            }
        }
        Ok(out)
    }

    /// The dirty gfns without clearing.
    pub fn dirty_gfns(&self) -> Vec<Gfn> {
        let mut out = Vec::new();
        if let Some(bm) = &self.dirty_bitmap {
            for (w, word) in bm.iter().enumerate() {
                let mut x = *word;
                while x != 0 {
                    let b = u64::from(x.trailing_zeros());
                    x &= x - 1;
                    out.push(self.base_gfn.add(w as u64 * 64 + b));
                }
            }
        }
        out
    }
}

/// True when an end address overflowed or lies beyond `limit`.
#[allow(clippy::unnecessary_map_or)] // Option::is_none_or needs Rust 1.82; rust-version is 1.80.
fn end_beyond(end: Option<u64>, limit: u64) -> bool {
    end.map_or(true, |v| v > limit)
}

fn bitmap_words(npages: u64) -> usize {
    usize::try_from(npages.div_ceil(64)).unwrap_or(usize::MAX)
}

/// `kvm_alloc_memslot_metadata()`'s lpage_info for one level: disallow an unaligned head and
/// tail, and every entry when gfn and hva are not congruent modulo the level size.
#[allow(clippy::manual_is_multiple_of)] // u64::is_multiple_of needs Rust 1.87; rust-version is 1.80.
fn build_lpage_info(base_gfn: Gfn, npages: u64, hva: Hva, level: Level) -> Vec<u32> {
    let shift = level.shift() - 12;
    let n = level.pages();
    let first = base_gfn.0 >> shift;
    let last = (base_gfn.0 + npages - 1) >> shift;
    let len = usize::try_from(last - first + 1).unwrap_or(0);
    let mut v = vec![0u32; len];
    if base_gfn.0 % n != 0 {
        v[0] = 1;
    }
    if (base_gfn.0 + npages) % n != 0 {
        v[len - 1] = 1;
    }
    if (base_gfn.0 ^ (hva.0 >> 12)) % n != 0 {
        v.iter_mut().for_each(|c| *c = 1);
    }
    v
}

/// The set of memslots of one address space (`struct kvm_memslots`).
#[derive(Clone, Debug, Default)]
pub struct Memslots {
    /// Slots sorted by `base_gfn`.
    slots: Vec<Memslot>,
    /// `generation`, bumped by every change.
    pub generation: u64,
}

impl Memslots {
    /// All slots, by ascending gfn.
    pub fn iter(&self) -> impl Iterator<Item = &Memslot> {
        self.slots.iter()
    }

    /// `__gfn_to_memslot()` (include/linux/kvm_host.h) (binary search, as `search_memslots()`).
    #[inline]
    pub fn find(&self, gfn: Gfn) -> Option<&Memslot> {
        let i = self.slots.partition_point(|s| s.base_gfn <= gfn);
        let s = self.slots.get(i.checked_sub(1)?)?;
        s.contains(gfn).then_some(s)
    }

    /// Mutable [`Self::find`].
    pub fn find_mut(&mut self, gfn: Gfn) -> Option<&mut Memslot> {
        let i = self.slots.partition_point(|s| s.base_gfn <= gfn);
        let s = self.slots.get_mut(i.checked_sub(1)?)?;
        s.contains(gfn).then_some(s)
    }

    /// The slot with `id`.
    pub fn by_id(&self, id: u16) -> Option<&Memslot> {
        self.slots.iter().find(|s| s.id == id)
    }

    /// Mutable [`Self::by_id`].
    pub fn by_id_mut(&mut self, id: u16) -> Option<&mut Memslot> {
        self.slots.iter_mut().find(|s| s.id == id)
    }

    /// Slots whose hva range intersects `[start, end)`, with the intersecting gfn range
    /// (`kvm_for_each_memslot_in_hva_range()` (virt/kvm/kvm_main.c) and the clamp in
    /// `__kvm_handle_hva_range()`).
    pub fn in_hva_range(&self, start: Hva, end: Hva) -> impl Iterator<Item = (&Memslot, Gfn, Gfn)> {
        self.slots.iter().filter_map(move |s| {
            if s.userspace_addr >= end || s.end_hva() <= start {
                return None;
            }
            let hs = start.max(s.userspace_addr);
            let he = end.min(s.end_hva());
            let gs = s.hva_to_gfn(hs);
            let ge = s.hva_to_gfn(Hva(he.0 + PAGE_SIZE - 1));
            Some((s, gs, ge))
        })
    }

    /// Inserts a slot, refusing overlaps and duplicate ids.
    pub(crate) fn insert(&mut self, slot: Memslot) -> Result<(), MemslotError> {
        if self.by_id(slot.id).is_some() {
            return Err(MemslotError::Exists(slot.id));
        }
        if let Some(o) = self
            .slots
            .iter()
            .find(|o| o.base_gfn < slot.end_gfn() && slot.base_gfn < o.end_gfn())
        {
            return Err(MemslotError::Overlap {
                id: slot.id,
                start: slot.base_gfn.gpa().0,
                end: slot.end_gfn().gpa().0,
                other: o.id,
            });
        }
        let i = self.slots.partition_point(|s| s.base_gfn < slot.base_gfn);
        self.slots.insert(i, slot);
        self.generation += 1;
        Ok(())
    }

    /// Removes the slot with `id`.
    pub(crate) fn remove(&mut self, id: u16) -> Result<Memslot, MemslotError> {
        let i = self
            .slots
            .iter()
            .position(|s| s.id == id)
            .ok_or(MemslotError::NoSuchSlot(id))?;
        self.generation += 1;
        Ok(self.slots.remove(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(gpa: u64, size: u64, hva: u64) -> Memslot {
        Memslot::new(0, Gpa(gpa), size, Hva(hva), MemslotFlags::default()).unwrap()
    }

    #[test]
    fn aligned_congruent_slot_allows_huge_pages() {
        let s = slot(0, 1 << 30, 0x7f00_0000_0000);
        assert!(!s.lpage_disallowed(Gfn(0), Level::Pmd2M));
        assert!(!s.lpage_disallowed(Gfn(0x3ffff), Level::Pud1G));
    }

    #[test]
    fn unaligned_head_and_tail_disallow_huge_pages() {
        // [1M, 5M): 2M entries 0 (head) and 2 (tail) are partial, entry 1 is whole.
        let s = slot(0x10_0000, 0x40_0000, 0x7f00_0010_0000);
        assert!(s.lpage_disallowed(Gfn(0x100), Level::Pmd2M));
        assert!(!s.lpage_disallowed(Gfn(0x200), Level::Pmd2M));
        assert!(s.lpage_disallowed(Gfn(0x400), Level::Pmd2M));
        assert!(s.lpage_disallowed(Gfn(0x200), Level::Pud1G));
    }

    #[test]
    fn incongruent_gfn_and_hva_disallow_every_entry() {
        let s = slot(0, 0x80_0000, 0x7f00_0000_1000);
        for g in [0u64, 0x200, 0x400, 0x600] {
            assert!(s.lpage_disallowed(Gfn(g), Level::Pmd2M));
        }
    }

    #[test]
    fn overlapping_slots_are_refused() {
        let mut m = Memslots::default();
        m.insert(slot(0, 0x20_0000, 0x1000_0000)).unwrap();
        let mut b = slot(0x10_0000, 0x20_0000, 0x2000_0000);
        b.id = 1;
        assert!(matches!(
            m.insert(b),
            Err(MemslotError::Overlap { other: 0, .. })
        ));
        assert!(Memslot::new(2, Gpa(0x123), 0x1000, Hva(0), MemslotFlags::default()).is_err());
        let e = Memslot::new(3, Gpa(0), 1 << 21, Hva(!0xfff), MemslotFlags::default()).unwrap_err();
        assert!(e.to_string().contains("user address space"), "{e}");
        assert!(Memslot::new(4, Gpa(1 << 52), 0x1000, Hva(0), MemslotFlags::default()).is_err());
    }

    #[test]
    fn hva_range_clamps_to_slot_and_rounds_end_up() {
        let mut m = Memslots::default();
        m.insert(slot(0x1000_0000, 0x10_0000, 0x7f00_0000_0000))
            .unwrap();
        let v: Vec<_> = m
            .in_hva_range(Hva(0x7f00_0000_1800), Hva(0x7f00_0000_2001))
            .map(|(_, a, b)| (a, b))
            .collect();
        assert_eq!(v, vec![(Gfn(0x10001), Gfn(0x10003))]);
        assert!(m.in_hva_range(Hva(0), Hva(0x1000)).next().is_none());
    }

    #[test]
    fn dirty_bitmap_collects_and_clears() {
        let mut s = slot(0, 0x10_0000, 0x1000_0000);
        s.set_dirty_logging(true);
        s.mark_dirty(Gfn(3));
        s.mark_dirty(Gfn(70));
        assert_eq!(s.take_dirty().unwrap(), vec![Gfn(3), Gfn(70)]);
        assert!(s.take_dirty().unwrap().is_empty());
    }
}
