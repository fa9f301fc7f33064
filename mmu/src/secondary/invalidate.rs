//! The mmu-notifier handlers of KVM (`virt/kvm/kvm_main.c`).
//!
//! KVM ignores `range.event`: the handlers below never look at it (it is only recorded
//! for the scenario trace).

use super::{Kvm, INVALID_GFN};
use crate::notifier::{MmuNotifier, NotifierRange};
use crate::types::{Gfn, Hva};

impl Kvm {
    /// `kvm_mmu_invalidate_begin()` (virt/kvm/kvm_main.c): `in_progress++`; the first one resets
    /// the range.
    pub fn invalidate_begin(&mut self) {
        self.inval.in_progress += 1;
        if self.inval.in_progress == 1 {
            self.inval.range_start = INVALID_GFN;
            self.inval.range_end = INVALID_GFN;
        }
    }

    /// `kvm_mmu_invalidate_range_add()` (virt/kvm/kvm_main.c): the union of every range since
    /// `in_progress` left 0.
    pub fn invalidate_range_add(&mut self, start: Gfn, end: Gfn) {
        if self.inval.range_start == INVALID_GFN {
            self.inval.range_start = start;
            self.inval.range_end = end;
        } else {
            self.inval.range_start = self.inval.range_start.min(start);
            self.inval.range_end = self.inval.range_end.max(end);
        }
    }

    /// `kvm_mmu_invalidate_end()` (virt/kvm/kvm_main.c): `seq++` strictly before `in_progress--`.
    pub fn invalidate_end(&mut self) {
        self.inval.seq += 1;
        // smp_wmb(): the model's steps are sequentially consistent.
        self.inval.in_progress = self.inval.in_progress.saturating_sub(1);
    }

    /// `kvm_unmap_gfn_range()` (arch/x86/kvm/mmu/mmu.c) → `kvm_tdp_mmu_unmap_gfn_range()`: zaps
    /// every leaf whose span intersects `[start, end)`. Returns true when a flush is needed.
    pub fn unmap_gfn_range(&mut self, start: Gfn, end: Gfn) -> bool {
        let trace = &mut self.trace;
        let n = self
            .tdp
            .zap_leafs(start, end, &mut |c| Kvm::record_zap(trace, c));
        self.stats.zaps += n;
        n > 0
    }

    /// The "start" half of `kvm_mmu_notifier_invalidate_range_start()` (virt/kvm/kvm_main.c) as one
    /// atomic step: `mn_active_invalidate_count++`, then — only if a memslot intersects — under
    /// `mmu_lock`: `invalidate_begin`, then per slot `range_add` + zap, and one TLB flush if
    /// anything was zapped (`__kvm_handle_hva_range()` with `flush_on_ret`). Returns whether a
    /// memslot intersected.
    pub fn notifier_invalidate_range_start(&mut self, start: Hva, end: Hva) -> bool {
        self.stats.invalidations += 1;
        self.inval.active_invalidate_count += 1;
        let mut found = false;
        let mut flush = false;
        let mut i = 0;
        while let Some((gs, ge)) = self.nth_slot_range(start, end, i) {
            i += 1;
            if !found {
                found = true;
                self.invalidate_begin();
            }
            self.invalidate_range_add(gs, ge);
            flush |= self.unmap_gfn_range(gs, ge);
        }
        if flush {
            self.flush_remote_tlbs();
        }
        if found {
            self.stats.invalidations_in_slots += 1;
        }
        found
    }

    /// `kvm_mmu_notifier_invalidate_range_end()` (virt/kvm/kvm_main.c): `invalidate_end` under
    /// `mmu_lock` if a memslot intersects, then `mn_active_invalidate_count--`.
    pub fn notifier_invalidate_range_end(&mut self, start: Hva, end: Hva) {
        if self.nth_slot_range(start, end, 0).is_some() {
            self.invalidate_end();
        }
        self.inval.active_invalidate_count = self.inval.active_invalidate_count.saturating_sub(1);
    }

    /// The `i`-th memslot intersecting `[start, end)` as a gfn range.
    fn nth_slot_range(&self, start: Hva, end: Hva, i: usize) -> Option<(Gfn, Gfn)> {
        self.slots
            .in_hva_range(start, end)
            .nth(i)
            .map(|(_, a, b)| (a, b))
    }
}

impl MmuNotifier for Kvm {
    /// `kvm_mmu_notifier_invalidate_range_start()` (virt/kvm/kvm_main.c).
    fn invalidate_range_start(&mut self, range: &NotifierRange) {
        self.trace_notifier(range);
        self.notifier_invalidate_range_start(range.start, range.end);
    }

    /// `kvm_mmu_notifier_invalidate_range_end()` (virt/kvm/kvm_main.c).
    fn invalidate_range_end(&mut self, range: &NotifierRange) {
        self.notifier_invalidate_range_end(range.start, range.end);
    }

    /// `kvm_mmu_notifier_clear_flush_young()`: flushes if anything was young, except from
    /// 6.13 on (`KVM_ELIDE_TLB_FLUSH_IF_YOUNG`).
    fn clear_flush_young(&mut self, start: Hva, end: Hva) -> bool {
        let young = self.age_hva_range(start, end);
        if young && self.config.kernel < crate::types::KernelVersion::V6_13 {
            self.flush_remote_tlbs();
        }
        young
    }

    /// `kvm_mmu_notifier_clear_young()`: never flushes.
    fn clear_young(&mut self, start: Hva, end: Hva) -> bool {
        self.age_hva_range(start, end)
    }

    /// `kvm_mmu_notifier_test_young()`.
    fn test_young(&mut self, start: Hva, end: Hva) -> bool {
        self.test_age_hva_range(start, end)
    }

    /// `kvm_mmu_notifier_release()` → `kvm_flush_shadow_all()` → `kvm_mmu_zap_all()`.
    fn release(&mut self) {
        let trace = &mut self.trace;
        let n = self.tdp.zap_all(&mut |c| Kvm::record_zap(trace, c));
        self.stats.zaps += n;
        self.flush_remote_tlbs();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notifier::NotifierEvent;
    use crate::secondary::memslot::MemslotFlags;
    use crate::secondary::spte::{bits, Spte};
    use crate::secondary::KvmConfig;
    use crate::types::{Gpa, Pfn};

    const HVA: u64 = 0x7f00_0000_0000;

    fn vm() -> Kvm {
        let mut k = Kvm::new(KvmConfig::default());
        k.create_memslot(0, Gpa(0), 1 << 30, Hva(HVA), MemslotFlags::default())
            .unwrap();
        k
    }

    fn range(ev: NotifierEvent, s: u64, e: u64) -> NotifierRange {
        NotifierRange::new(ev, Hva(HVA + s), Hva(HVA + e))
    }

    #[test]
    fn range_outside_memslots_touches_nothing() {
        let mut k = vm();
        let r = NotifierRange::new(NotifierEvent::Unmap, Hva(0x1000), Hva(0x2000));
        k.invalidate_range_start(&r);
        assert_eq!(k.inval.in_progress, 0);
        assert_eq!(k.inval.active_invalidate_count, 1);
        k.invalidate_range_end(&r);
        assert_eq!(k.inval.seq, 0, "no memslot: no seq bump");
        assert_eq!(k.inval.active_invalidate_count, 0);
    }

    #[test]
    fn start_zaps_partly_covered_huge_spte_and_end_bumps_seq_then_drops_in_progress() {
        let mut k = vm();
        k.tdp.map(
            Gfn(0x200),
            2,
            Spte::leaf(Pfn(0x1000), bits::HUGE | bits::ACCESSED),
            &mut |_| {},
        );
        k.start_trace();
        let r = range(NotifierEvent::Clear, 0x20_1000, 0x20_2000);
        k.invalidate_range_start(&r);
        assert_eq!(k.inval.in_progress, 1);
        assert_eq!(
            (k.inval.range_start, k.inval.range_end),
            (Gfn(0x201), Gfn(0x202))
        );
        assert!(k.tdp.lookup(Gfn(0x200)).is_none());
        assert_eq!(k.stats().tlb_flushes, 1);
        assert!(k.inval.retry_gfn(0, Gfn(0x201)));
        assert!(!k.inval.retry_gfn(0, Gfn(0x300)));
        k.invalidate_range_end(&r);
        assert_eq!((k.inval.seq, k.inval.in_progress), (1, 0));
        let t = k.take_trace();
        assert_eq!(t.zapped.len(), 1);
        assert_eq!(t.zapped[0].gfn_end, Gfn(0x400));
    }

    #[test]
    fn nested_ranges_accumulate_their_union_until_in_progress_returns_to_zero() {
        let mut k = vm();
        let a = range(NotifierEvent::Clear, 0x1000, 0x2000);
        let b = range(NotifierEvent::Unmap, 0x9000, 0xa000);
        k.invalidate_range_start(&a);
        k.invalidate_range_start(&b);
        assert_eq!((k.inval.range_start, k.inval.range_end), (Gfn(1), Gfn(0xa)));
        k.invalidate_range_end(&b);
        assert_eq!(k.inval.in_progress, 1);
        assert!(k.inval.retry_gfn_unsafe(2, Gfn(5)));
        k.invalidate_range_end(&a);
        let c = range(NotifierEvent::Clear, 0x5000, 0x6000);
        k.invalidate_range_start(&c);
        assert_eq!((k.inval.range_start, k.inval.range_end), (Gfn(5), Gfn(6)));
    }

    #[test]
    fn memslot_changes_are_refused_while_an_invalidation_is_in_flight() {
        let mut k = vm();
        let r = NotifierRange::new(NotifierEvent::Unmap, Hva(0x1000), Hva(0x2000));
        k.invalidate_range_start(&r);
        let e = k
            .create_memslot(
                1,
                Gpa(1 << 32),
                0x1000,
                Hva(0x1000),
                MemslotFlags::default(),
            )
            .unwrap_err();
        assert!(e.to_string().contains("in flight"));
        assert!(k.delete_memslot(0).is_err());
        k.invalidate_range_end(&r);
        k.delete_memslot(0).unwrap();
    }

    #[test]
    fn event_type_is_ignored() {
        let mut outcomes = Vec::new();
        for ev in [
            NotifierEvent::Unmap,
            NotifierEvent::Clear,
            NotifierEvent::ProtectionVma,
            NotifierEvent::ProtectionPage,
            NotifierEvent::SoftDirty,
            NotifierEvent::Migrate,
        ] {
            let mut k = vm();
            k.tdp
                .map(Gfn(3), 1, Spte::leaf(Pfn(9), bits::ACCESSED), &mut |_| {});
            let r = range(ev, 0x3000, 0x4000);
            k.invalidate_range_start(&r);
            k.invalidate_range_end(&r);
            outcomes.push((k.tdp.lookup(Gfn(3)), k.inval.seq, k.stats().zaps));
        }
        assert!(outcomes.windows(2).all(|w| w[0] == w[1]));
    }
}
