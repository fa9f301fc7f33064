//! Dirty logging: `KVM_MEM_LOG_DIRTY_PAGES`, `KVM_GET_DIRTY_LOG`, `KVM_CLEAR_DIRTY_LOG`.
//!
//! Models `kvm_mmu_slot_apply_flags()` (arch/x86/kvm/x86.c: eager split, then
//! `kvm_mmu_slot_remove_write_access()`), `kvm_get_dirty_log_protect()` and
//! `kvm_clear_dirty_log_protect()` (virt/kvm/kvm_main.c) with
//! `kvm_tdp_mmu_clear_dirty_pt_masked()` write-protecting the logged pages.
//!
//! # Divergence
//! No dirty ring, no PML, no `KVM_DIRTY_LOG_INITIALLY_SET`. `dirty-log-get` behaves as
//! without manual protect (copy, clear, re-protect); `dirty-log-clear` as
//! `KVM_CLEAR_DIRTY_LOG` over the whole slot.

use super::memslot::MemslotError;
use super::spte::{bits, Spte};
use super::Kvm;
use crate::types::Gfn;

impl Kvm {
    /// Enables dirty logging on memslot `id` (a `KVM_MR_FLAGS_ONLY` change,
    /// `kvm_mmu_slot_apply_flags()` in arch/x86/kvm/x86.c): with `eager_page_split`, huge
    /// SPTEs are split to 4K; then every leaf is write-protected (W cleared, MMU-writable
    /// kept, so `fast_page_fault()` can restore it and log the page). Refused while an
    /// invalidation is in flight. Returns the leaves protected.
    pub fn dirty_log_enable(&mut self, id: u16) -> Result<u64, MemslotError> {
        self.check_no_invalidation(id)?;
        let slot = self
            .slots
            .by_id_mut(id)
            .ok_or(MemslotError::NoSuchSlot(id))?;
        if slot.dirty_logging() {
            return Ok(0);
        }
        slot.set_dirty_logging(true);
        let (s, e) = (slot.base_gfn, slot.end_gfn());
        self.slots.generation += 1;
        // A flags-only change is a memslot update too: kvm_arch_memslots_updated() makes the
        // MMIO SPTEs stale (kvm_mmu_invalidate_mmio_sptes()).
        self.zap_mmio_sptes();
        if self.config.eager_page_split {
            let n = self.tdp.split_huge_range(s, e);
            self.stats.splits += n;
        }
        let n = self.write_protect_range(s, e);
        if n > 0 {
            self.flush_remote_tlbs();
        }
        Ok(n)
    }

    /// Clears W on every writable leaf in `[s, e)` (`tdp_mmu_write_protect_gfn_range()`).
    fn write_protect_range(&mut self, s: Gfn, e: Gfn) -> u64 {
        self.tdp.update_leafs(s, e, &mut |_, _, sp: Spte| {
            sp.is_writable().then(|| sp.without(bits::WRITABLE))
        })
    }

    /// `KVM_GET_DIRTY_LOG` (`kvm_get_dirty_log_protect()`, virt/kvm/kvm_main.c, without manual
    /// protect): returns the dirty gfns, clears the
    /// bitmap and write-protects those pages again, flushing if any.
    pub fn dirty_log_get(&mut self, id: u16) -> Result<Vec<Gfn>, MemslotError> {
        let slot = self
            .slots
            .by_id_mut(id)
            .ok_or(MemslotError::NoSuchSlot(id))?;
        let dirty = slot.take_dirty()?;
        self.protect_gfns(&dirty);
        Ok(dirty)
    }

    /// `KVM_CLEAR_DIRTY_LOG` (`kvm_clear_dirty_log_protect()`, virt/kvm/kvm_main.c) over the
    /// whole slot: clears the bits and write-protects the
    /// pages that were dirty. Returns the gfns cleared.
    pub fn dirty_log_clear(&mut self, id: u16) -> Result<Vec<Gfn>, MemslotError> {
        self.dirty_log_get(id)
    }

    fn protect_gfns(&mut self, gfns: &[Gfn]) {
        let mut n = 0;
        for g in gfns {
            n += self.write_protect_range(*g, g.add(1));
        }
        if n > 0 {
            self.flush_remote_tlbs();
        }
    }

    /// The dirty gfns of memslot `id` without clearing them.
    pub fn dirty_log_peek(&self, id: u16) -> Result<Vec<Gfn>, MemslotError> {
        let slot = self.slots.by_id(id).ok_or(MemslotError::NoSuchSlot(id))?;
        if !slot.dirty_logging() {
            return Err(MemslotError::NotLogging(id));
        }
        Ok(slot.dirty_gfns())
    }
}

#[cfg(test)]
mod tests {
    use crate::secondary::memslot::MemslotFlags;
    use crate::secondary::spte::{bits, Spte};
    use crate::secondary::{Kvm, KvmConfig};
    use crate::types::{Gfn, Gpa, Hva, Pfn};

    #[test]
    fn enabling_dirty_log_splits_huge_sptes_and_write_protects() {
        let mut k = Kvm::new(KvmConfig::default());
        k.create_memslot(
            0,
            Gpa(0),
            1 << 22,
            Hva(0x4000_0000),
            MemslotFlags::default(),
        )
        .unwrap();
        let w = bits::WRITABLE | bits::MMU_WRITABLE | bits::HOST_WRITABLE | bits::ACCESSED;
        k.tdp.map(
            Gfn(0x200),
            2,
            Spte::leaf(Pfn(0x800), w | bits::HUGE),
            &mut |_| {},
        );
        k.dirty_log_enable(0).unwrap();
        let (s, l) = k.tdp.lookup(Gfn(0x201)).unwrap();
        assert_eq!(l, 1);
        assert!(!s.is_writable() && s.is_mmu_writable());
        assert_eq!(k.stats().sptes.pages_4k, 512);
        assert!(k.dirty_log_get(0).unwrap().is_empty());
        assert!(k.dirty_log_get(1).is_err());
    }
}
