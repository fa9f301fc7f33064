//! Models aging through mm/rmap.c `folio_referenced_one()` and the young notifiers of
//! include/linux/mmu_notifier.h.

use super::*;
use crate::host::pagetable::set_leaf;
use crate::host::pte::Entry;
use crate::host::Mm;
use crate::notifier::MmuNotifier;
use crate::types::Hva;

/// Which young notifier an aging pass calls (see [`Mm::clear_flush_young`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Aging {
    /// `clear_flush_young`, young bits cleared.
    ClearFlush,
    /// `clear_young`, young bits cleared.
    Clear,
    /// `test_young`, nothing cleared.
    Test,
}

impl Mm {
    /// Models `folio_referenced_one()` aging (mm/rmap.c): per present leaf,
    /// `p?dp_clear_flush_young_notify()` clears the young bit and calls
    /// `clear_flush_young` on [leaf, +leaf size). `young` = any was young.
    pub fn clear_flush_young(
        &mut self,
        start: Hva,
        len: u64,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<OpReport, RangeError> {
        self.age(start, len, notifier, Aging::ClearFlush)
    }

    /// Models MGLRU / page_idle aging (`ptep_clear_young_notify()` (include/linux/mmu_notifier.h)):
    /// like [`Mm::clear_flush_young`] but calls `clear_young` (no TLB flush).
    pub fn clear_young(
        &mut self,
        start: Hva,
        len: u64,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<OpReport, RangeError> {
        self.age(start, len, notifier, Aging::Clear)
    }

    /// Models khugepaged's / DAMON's `mmu_notifier_test_young()` (include/linux/mmu_notifier.h)
    /// checks: per present leaf, young = `pte_young` or the subscriber's `test_young`; nothing is
    /// cleared.
    pub fn test_young(
        &mut self,
        start: Hva,
        len: u64,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<OpReport, RangeError> {
        self.age(start, len, notifier, Aging::Test)
    }

    fn age(
        &mut self,
        start: Hva,
        len: u64,
        notifier: &mut dyn MmuNotifier,
        kind: Aging,
    ) -> Result<OpReport, RangeError> {
        let end = check_range(start, len)?;
        let name = match kind {
            Aging::ClearFlush => "clear-flush-young",
            Aging::Clear => "clear-young",
            Aging::Test => "test-young",
        };
        let mut report = OpReport::new(name, start, end);
        let mut leaves = Vec::new();
        self.space.pt.for_each_leaf(start, end, |va, level, e| {
            if e.is_present() {
                leaves.push((va, level, e));
            }
        });
        let mut young = false;
        for (va, level, e) in leaves {
            let (s, t) = (va, va.add(level.size()));
            let y = match kind {
                Aging::ClearFlush => notifier.clear_flush_young(s, t),
                Aging::Clear => notifier.clear_young(s, t),
                Aging::Test => notifier.test_young(s, t),
            };
            young |= y | e.is_young();
            if kind != Aging::Test && e.is_young() {
                set_leaf(&mut self.space.pt, va, level, e.clear(Entry::YOUNG));
                report.changed += 1;
            }
        }
        report.young = Some(young);
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use crate::host::testutil::*;
    use crate::host::*;

    use crate::notifier::NotifierLog;
    use crate::types::{Hva, KernelVersion};

    /// Models `folio_referenced_one()` / `ptep_clear_young_notify()` / `test_young`: one
    /// callback per present leaf with the leaf's span; clearing clears the primary young bit.
    #[test]
    fn aging_calls_young_callbacks_per_leaf() {
        let mut mm = mm(KernelVersion::V6_12);
        let a = anon(&mut mm, 2 * M2, true);
        w(&mut mm, a);
        let b = mm.mmap(MmapRequest::anon(Hva(BASE.0 + G1), M2)).unwrap();
        w(&mut mm, b);
        let mut log = NotifierLog::new();
        let r = mm.clear_young(a, 2 * M2, &mut log).unwrap();
        assert_eq!(r.young, Some(true));
        assert_eq!(log.calls.len(), 1);
        assert!(!mm.lookup(a).unwrap().young);
        let r = mm.test_young(a, 2 * M2, &mut log).unwrap();
        assert_eq!(r.young, Some(false));
        let r = mm.clear_flush_young(b, M2, &mut log).unwrap();
        assert_eq!(r.young, Some(true));
        assert_eq!(log.calls.len(), 3);
    }
}
