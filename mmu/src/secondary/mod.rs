//! The KVM-like secondary MMU: memslots, the TDP table, the fault path and the
//! mmu-notifier handlers.
//!
//! [`Kvm`] is one VM with one vCPU's worth of fault state. It implements
//! [`MmuNotifier`](crate::notifier::MmuNotifier) (see [`invalidate`]) and resolves guest
//! faults through [`crate::gup`] on a [`crate::host::Mm`] (see [`fault`]).
//!
//! # Divergence
//! One address space, one root, TDP only (no shadow paging, no rmaps); `mmu_lock` is
//! implicit because every model step is atomic. The interleavings that the real lock
//! allows are explored by [`crate::explore`], which drives the fault in its steps.

pub mod age;
pub mod dirty;
pub mod fault;
pub mod invalidate;
pub mod invariants;
pub mod level;
pub mod memslot;
pub mod spte;
pub mod stats;

use crate::types::{Gfn, Gpa, Hva, KernelVersion, Level};
use memslot::{Memslot, MemslotError, MemslotFlags, Memslots};
use serde::Serialize;
use spte::{LeafChange, TdpTable};
use stats::KvmStats;

/// `INVALID_GPA` as a gfn: the empty invalidation range.
pub const INVALID_GFN: Gfn = Gfn(u64::MAX);

/// Host and module configuration that changes the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvmConfig {
    /// Which kernel's rules apply.
    pub kernel: KernelVersion,
    /// `tdp_huge_page_level` / `max_huge_page_level`: 1G when EPT/NPT supports it.
    pub max_huge_page_level: Level,
    /// `kvm_ad_enabled`: A/D bits in hardware (else aging uses access tracking).
    pub ad_enabled: bool,
    /// `kvm_can_do_async_pf()`: in-kernel LAPIC, interrupts allowed, nothing pending.
    pub async_pf: bool,
    /// `eager_page_split` module parameter (default on).
    pub eager_page_split: bool,
    /// `enable_mmio_caching`.
    pub mmio_caching: bool,
    /// Model switch for the explorer: when false, `is_page_fault_stale()` and the post-GUP
    /// check are skipped (a deliberately broken KVM).
    pub stale_check: bool,
}

impl Default for KvmConfig {
    fn default() -> Self {
        KvmConfig {
            kernel: KernelVersion::V6_12,
            max_huge_page_level: Level::Pud1G,
            ad_enabled: true,
            async_pf: true,
            eager_page_split: true,
            mmio_caching: true,
            stale_check: true,
        }
    }
}

/// Invalidation bookkeeping (`kvm->mmu_invalidate_*`, `mn_active_invalidate_count`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct InvalidateState {
    /// `mmu_invalidate_seq`.
    pub seq: u64,
    /// `mmu_invalidate_in_progress`.
    pub in_progress: u64,
    /// `mmu_invalidate_range_start` (inclusive gfn).
    pub range_start: Gfn,
    /// `mmu_invalidate_range_end` (exclusive gfn).
    pub range_end: Gfn,
    /// `mn_active_invalidate_count`: starts not yet ended, slot or no slot.
    pub active_invalidate_count: u64,
}

impl Default for InvalidateState {
    fn default() -> Self {
        InvalidateState {
            seq: 0,
            in_progress: 0,
            range_start: INVALID_GFN,
            range_end: INVALID_GFN,
            active_invalidate_count: 0,
        }
    }
}

impl InvalidateState {
    /// `mmu_invalidate_retry_gfn_unsafe()` (include/linux/kvm_host.h): lockless check before and
    /// after GUP.
    #[inline]
    pub fn retry_gfn_unsafe(&self, mmu_seq: u64, gfn: Gfn) -> bool {
        (self.in_progress != 0 && self.range_start <= gfn && gfn < self.range_end)
            || self.seq != mmu_seq
    }

    /// `mmu_invalidate_retry_gfn()` (include/linux/kvm_host.h): the check under `mmu_lock`. An
    /// in-progress invalidation with an unset range retries (the WARN case).
    #[inline]
    pub fn retry_gfn(&self, mmu_seq: u64, gfn: Gfn) -> bool {
        if self.in_progress != 0 {
            if self.range_start == INVALID_GFN || self.range_end == INVALID_GFN {
                return true;
            }
            if self.range_start <= gfn && gfn < self.range_end {
                return true;
            }
        }
        self.seq != mmu_seq
    }
}

/// A notifier call as received (scenario output).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NotifierRecord {
    /// The event name (`"CLEAR"`, ...), which KVM ignores.
    pub event: crate::notifier::NotifierEvent,
    /// First hva.
    pub start: Hva,
    /// End hva.
    pub end: Hva,
}

/// A zapped leaf as reported in scenario output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ZapRecord {
    /// First gfn mapped by the leaf.
    pub gfn_start: Gfn,
    /// One past the last gfn.
    pub gfn_end: Gfn,
    /// Leaf level.
    pub level: Level,
}

/// What happened in the secondary MMU since the trace was last taken.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KvmTrace {
    /// `invalidate_range_start` calls, in order.
    pub notifiers: Vec<NotifierRecord>,
    /// Leaves zapped, in order.
    pub zapped: Vec<ZapRecord>,
}

/// One VM's secondary MMU.
#[derive(Clone, Debug)]
pub struct Kvm {
    /// Rules in force.
    pub config: KvmConfig,
    /// Memslots (one address space).
    pub slots: Memslots,
    /// The TDP paging structure.
    pub tdp: TdpTable,
    /// Invalidation state.
    pub inval: InvalidateState,
    /// Counters (`sptes` is refreshed by [`Kvm::stats`]).
    stats: KvmStats,
    /// Trace being recorded, if any.
    trace: Option<KvmTrace>,
    /// An async page fault was queued by the last fault.
    async_pf_pending: bool,
    /// A vCPU asleep in `handle_userfault()` (no async PF): see [`fault::UffdBlocked`].
    pub uffd_blocked: Option<fault::UffdBlocked>,
}

impl Kvm {
    /// A VM with no memslots.
    pub fn new(config: KvmConfig) -> Self {
        Kvm {
            config,
            slots: Memslots::default(),
            tdp: TdpTable::new(),
            inval: InvalidateState::default(),
            stats: KvmStats::default(),
            trace: None,
            async_pf_pending: false,
            uffd_blocked: None,
        }
    }

    /// Counters, with the live SPTE counts.
    pub fn stats(&self) -> KvmStats {
        let mut s = self.stats;
        s.sptes = self.tdp.counts();
        s.mmu_invalidate_seq = self.inval.seq;
        s
    }

    /// Starts recording a [`KvmTrace`] (costs an allocation per event).
    pub fn start_trace(&mut self) {
        self.trace = Some(KvmTrace::default());
    }

    /// Returns what was recorded since the last call and keeps recording.
    pub fn take_trace(&mut self) -> KvmTrace {
        self.trace.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Drops what was recorded since the last take and keeps recording (no allocation).
    pub fn clear_trace(&mut self) {
        if let Some(t) = &mut self.trace {
            t.notifiers.clear();
            t.zapped.clear();
        }
    }

    /// [`Kvm::take_trace`] into the caller's vectors (cleared first): the trace's and the
    /// caller's buffers are swapped, so a caller that takes every step allocates nothing.
    pub fn take_trace_into(
        &mut self,
        notifiers: &mut Vec<NotifierRecord>,
        zapped: &mut Vec<ZapRecord>,
    ) {
        notifiers.clear();
        zapped.clear();
        if let Some(t) = &mut self.trace {
            std::mem::swap(&mut t.notifiers, notifiers);
            std::mem::swap(&mut t.zapped, zapped);
        }
    }

    pub(crate) fn trace_notifier(&mut self, r: &crate::notifier::NotifierRange) {
        if let Some(t) = &mut self.trace {
            t.notifiers.push(NotifierRecord {
                event: r.event,
                start: r.start,
                end: r.end,
            });
        }
    }

    pub(crate) fn record_zap(trace: &mut Option<KvmTrace>, c: LeafChange) {
        if let Some(t) = trace {
            t.zapped.push(ZapRecord {
                gfn_start: c.gfn,
                gfn_end: c.gfn.add(spte::pages_at(c.level)),
                level: spte::level_of(c.level),
            });
        }
    }

    /// `kvm_flush_remote_tlbs()` (virt/kvm/kvm_main.c).
    pub(crate) fn flush_remote_tlbs(&mut self) {
        self.stats.tlb_flushes += 1;
    }

    /// `KVM_SET_USER_MEMORY_REGION` creating a slot (`kvm_set_memslot()` with `KVM_MR_CREATE`,
    /// virt/kvm/kvm_main.c).
    ///
    /// Refused while an invalidation is in flight: KVM's `kvm_swap_active_memslots()` waits
    /// for `mn_active_invalidate_count` to reach 0; a deterministic model cannot wait, so it
    /// reports the conflict.
    pub fn create_memslot(
        &mut self,
        id: u16,
        gpa: Gpa,
        size: u64,
        hva: Hva,
        flags: MemslotFlags,
    ) -> Result<(), MemslotError> {
        self.check_no_invalidation(id)?;
        let slot = Memslot::new(id, gpa, size, hva, flags)?;
        self.slots.insert(slot)?;
        // kvm_swap_active_memslots() → kvm_arch_memslots_updated() →
        // kvm_mmu_invalidate_mmio_sptes(): the new generation makes every cached MMIO SPTE
        // stale (check_mmio_spte() fails, the next access faults normally).
        self.zap_mmio_sptes();
        Ok(())
    }

    /// `KVM_SET_USER_MEMORY_REGION` with size 0 (`KVM_MR_DELETE`): the slot is marked
    /// invalid, swapped out, and every SPTE in it is zapped
    /// (`kvm_arch_flush_shadow_memslot()` → `kvm_unmap_gfn_range()` over the slot,
    /// arch/x86/kvm/mmu/mmu.c), with a TLB flush.
    /// MMIO SPTEs die with the memslot generation change (modelled as zapping them all).
    ///
    /// # Divergence
    ///
    /// The model takes the per-slot branch, as KVM does once userspace disables
    /// `KVM_X86_QUIRK_SLOT_ZAP_ALL`. With the quirk on (the default for
    /// `KVM_X86_DEFAULT_VM`), 6.12 instead fast-zaps every root
    /// (`__kvm_mmu_zap_all_fast_front_half()`), so the SPTEs of other memslots go too.
    pub fn delete_memslot(&mut self, id: u16) -> Result<Memslot, MemslotError> {
        self.check_no_invalidation(id)?;
        let slot = self.slots.remove(id)?;
        let trace = &mut self.trace;
        let n = self.tdp.zap_leafs(slot.base_gfn, slot.end_gfn(), &mut |c| {
            Kvm::record_zap(trace, c)
        });
        self.stats.zaps += n;
        if n > 0 {
            self.flush_remote_tlbs();
        }
        self.zap_mmio_sptes();
        Ok(slot)
    }

    /// `KVM_MR_MOVE` (`kvm_set_memslot()`, virt/kvm/kvm_main.c): delete then re-create at
    /// `new_gpa` with the same hva and flags.
    pub fn move_memslot(&mut self, id: u16, new_gpa: Gpa) -> Result<(), MemslotError> {
        self.check_no_invalidation(id)?;
        let old = self
            .slots
            .by_id(id)
            .cloned()
            .ok_or(MemslotError::NoSuchSlot(id))?;
        let fresh = Memslot::new(
            id,
            new_gpa,
            old.npages * crate::types::PAGE_SIZE,
            old.userspace_addr,
            old.flags,
        )?;
        self.delete_memslot(id)?;
        if let Err(e) = self.slots.insert(fresh) {
            // Put the old slot back, as KVM restores the old memslots on failure.
            let _ = self.slots.insert(old);
            return Err(e);
        }
        Ok(())
    }

    fn check_no_invalidation(&self, id: u16) -> Result<(), MemslotError> {
        if self.inval.active_invalidate_count != 0 {
            return Err(MemslotError::InvalidationInFlight {
                id,
                active: self.inval.active_invalidate_count,
            });
        }
        Ok(())
    }

    /// MMIO SPTEs are invalidated by a memslot generation change
    /// (`kvm_mmu_invalidate_mmio_sptes()`); the model drops them.
    fn zap_mmio_sptes(&mut self) {
        self.tdp.remove_mmio();
    }

    /// The SPTE mapping `gpa`, if present: (level, writable).
    pub fn spte_at(&self, gpa: Gpa) -> Option<(Level, spte::Spte)> {
        match self.tdp.lookup(gpa.gfn()) {
            Some((s, l)) if s.is_present() => Some((spte::level_of(l), s)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Pfn;
    use spte::{bits, Spte};

    #[test]
    fn deleting_a_memslot_zaps_its_sptes_and_mmio_sptes_and_flushes() {
        let mut k = Kvm::new(KvmConfig::default());
        k.create_memslot(
            0,
            Gpa(0),
            1 << 21,
            Hva(0x1000_0000),
            MemslotFlags::default(),
        )
        .unwrap();
        k.tdp
            .map(Gfn(3), 1, Spte::leaf(Pfn(7), bits::ACCESSED), &mut |_| {});
        k.tdp
            .map(Gfn(0x9000), 1, Spte::mmio(Gfn(0x9000)), &mut |_| {});
        let s = k.delete_memslot(0).unwrap();
        assert_eq!(s.id, 0);
        assert!(k.tdp.lookup(Gfn(3)).is_none());
        assert!(k.tdp.lookup(Gfn(0x9000)).is_none());
        assert_eq!(k.stats().tlb_flushes, 1);
        assert!(k.delete_memslot(0).is_err());
    }

    /// Pins kvm_arch_memslots_updated() → kvm_mmu_invalidate_mmio_sptes(): creating a slot
    /// over a gpa whose MMIO SPTE is cached makes the next access fault normally (found by
    /// `faultline check` on kvm-memslot-create-flags.toml: real KVM read guest RAM).
    #[test]
    fn creating_a_memslot_drops_cached_mmio_sptes() {
        let mut k = Kvm::new(KvmConfig::default());
        k.tdp
            .map(Gfn(0x200), 1, Spte::mmio(Gfn(0x200)), &mut |_| {});
        k.create_memslot(
            1,
            Gpa(0x20_0000),
            1 << 20,
            Hva(0x1000_0000),
            MemslotFlags::default(),
        )
        .unwrap();
        assert!(k.tdp.lookup(Gfn(0x200)).is_none());
    }

    #[test]
    fn moving_a_memslot_drops_old_sptes_and_keeps_the_hva() {
        let mut k = Kvm::new(KvmConfig::default());
        k.create_memslot(
            0,
            Gpa(0),
            1 << 21,
            Hva(0x1000_0000),
            MemslotFlags::default(),
        )
        .unwrap();
        k.tdp
            .map(Gfn(3), 1, Spte::leaf(Pfn(7), bits::ACCESSED), &mut |_| {});
        k.move_memslot(0, Gpa(1 << 30)).unwrap();
        assert!(k.tdp.lookup(Gfn(3)).is_none());
        let s = k.slots.find(Gpa(1 << 30).gfn()).unwrap();
        assert_eq!(s.userspace_addr, Hva(0x1000_0000));
        assert!(k.slots.find(Gfn(3)).is_none());
    }
}
