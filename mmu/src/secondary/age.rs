//! Aging: `kvm_age_gfn()` / `kvm_test_age_gfn()` (arch/x86/kvm/mmu/tdp_mmu.c
//! `age_gfn_range()`, `test_age_gfn()`), reached through the young notifiers.

use super::spte::{bits, Spte};
use super::Kvm;
use crate::types::Hva;

impl Kvm {
    /// `kvm_handle_hva_range(kvm_age_gfn)` (virt/kvm/kvm_main.c): for every memslot in range, clear
    /// the Accessed bit of each accessed leaf (A/D enabled) or mark it for access tracking (A/D
    /// disabled; `mark_spte_for_access_track()`). Returns true when any leaf was young.
    pub fn age_hva_range(&mut self, start: Hva, end: Hva) -> bool {
        let ad = self.config.ad_enabled;
        let mut young = false;
        self.update_leafs_in_hva_range(start, end, &mut |s: Spte| {
            if !s.is_accessed() {
                return None;
            }
            young = true;
            Some(if ad {
                s.without(bits::ACCESSED)
            } else {
                s.with(bits::ACCESS_TRACKED)
            })
        });
        young
    }

    /// `kvm_handle_hva_range_no_flush(kvm_test_age_gfn)` (virt/kvm/kvm_main.c): true when a leaf in
    /// range is accessed.
    pub fn test_age_hva_range(&mut self, start: Hva, end: Hva) -> bool {
        let mut young = false;
        self.update_leafs_in_hva_range(start, end, &mut |s: Spte| {
            young |= s.is_accessed();
            None
        });
        young
    }

    /// `kvm_handle_hva_range()`'s walk: for every memslot intersecting `[start, end)`, lets
    /// `f` rewrite each present leaf over the intersecting gfns (`Some(new)`) or keep it.
    fn update_leafs_in_hva_range(
        &mut self,
        start: Hva,
        end: Hva,
        f: &mut dyn FnMut(Spte) -> Option<Spte>,
    ) {
        let ranges: Vec<_> = self
            .slots
            .in_hva_range(start, end)
            .map(|(_, a, b)| (a, b))
            .collect();
        for (gs, ge) in ranges {
            self.tdp.update_leafs(gs, ge, &mut |_, _, s: Spte| f(s));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::notifier::MmuNotifier;
    use crate::secondary::memslot::MemslotFlags;
    use crate::secondary::spte::{bits, Spte};
    use crate::secondary::{Kvm, KvmConfig};
    use crate::types::{Gfn, Gpa, Hva, KernelVersion, Pfn};

    fn vm(cfg: KvmConfig) -> Kvm {
        let mut k = Kvm::new(cfg);
        k.create_memslot(
            0,
            Gpa(0),
            1 << 21,
            Hva(0x10_0000_0000),
            MemslotFlags::default(),
        )
        .unwrap();
        k.tdp
            .map(Gfn(1), 1, Spte::leaf(Pfn(5), bits::ACCESSED), &mut |_| {});
        k
    }

    #[test]
    fn clear_young_clears_accessed_and_reports_young_once() {
        let mut k = vm(KvmConfig::default());
        let (s, e) = (Hva(0x10_0000_0000), Hva(0x10_0020_0000));
        assert!(k.test_young(s, e));
        assert!(k.clear_young(s, e));
        assert!(!k.test_young(s, e));
        assert!(!k.clear_young(s, e));
        assert_eq!(k.stats().tlb_flushes, 0);
    }

    #[test]
    fn clear_flush_young_flushes_on_6_12_but_not_from_6_13() {
        for (kernel, flushes) in [(KernelVersion::V6_12, 1), (KernelVersion::V6_13, 0)] {
            let mut k = vm(KvmConfig {
                kernel,
                ..KvmConfig::default()
            });
            assert!(k.clear_flush_young(Hva(0x10_0000_0000), Hva(0x10_0000_2000)));
            assert_eq!(k.stats().tlb_flushes, flushes, "{kernel}");
        }
    }

    #[test]
    fn without_ad_bits_aging_marks_for_access_tracking() {
        let mut k = vm(KvmConfig {
            ad_enabled: false,
            ..KvmConfig::default()
        });
        assert!(k.clear_young(Hva(0x10_0000_0000), Hva(0x10_0000_2000)));
        assert!(k.tdp.lookup(Gfn(1)).unwrap().0.is_access_tracked());
    }
}
