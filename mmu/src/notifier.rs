//! MMU notifiers: the events the primary MMU sends to secondary MMUs.
//!
//! Models `include/linux/mmu_notifier.h`: `enum mmu_notifier_event`, `struct
//! mmu_notifier_range` and the `invalidate_range_start/end`, `clear_flush_young`,
//! `clear_young`, `test_young` and `release` callbacks of `struct mmu_notifier_ops`.
//!
//! Host operations and host faults that invalidate take `notifier: &mut dyn MmuNotifier`
//! explicitly. Every `invalidate_range_start` is followed by exactly one
//! `invalidate_range_end` with the same range (the model never returns in between).
//!
//! # Divergence
//! Linux keeps a list of subscribers per mm; the model passes one subscriber per call.
//! Use [`NotifierFanout`] to deliver to several.

use crate::types::Hva;
use serde::{Deserialize, Serialize};

/// Why a range is invalidated (`enum mmu_notifier_event`). KVM ignores it; the host
/// model reports it so tests can check who sent what.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NotifierEvent {
    /// `MMU_NOTIFY_UNMAP`: munmap, exit, mremap move, OOM reaper.
    Unmap,
    /// `MMU_NOTIFY_CLEAR`: entries cleared (zap, COW, split, collapse, migration, reclaim).
    Clear,
    /// `MMU_NOTIFY_PROTECTION_VMA`: mprotect / change_protection (incl. NUMA scan).
    ProtectionVma,
    /// `MMU_NOTIFY_PROTECTION_PAGE`: per-page write protection (fork COW, mkclean).
    ProtectionPage,
    /// `MMU_NOTIFY_SOFT_DIRTY`: clear_refs soft-dirty.
    SoftDirty,
    /// `MMU_NOTIFY_RELEASE`: interval notifiers at mm teardown.
    Release,
    /// `MMU_NOTIFY_MIGRATE`: device-private migration (carries an owner).
    Migrate,
    /// `MMU_NOTIFY_EXCLUSIVE`: device-exclusive access.
    Exclusive,
}

/// One invalidation range (`struct mmu_notifier_range`): `[start, end)` host virtual
/// addresses.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct NotifierRange {
    /// Why the range is invalidated.
    pub event: NotifierEvent,
    /// First byte of the range.
    pub start: Hva,
    /// One past the last byte.
    pub end: Hva,
    /// `MMU_NOTIFIER_RANGE_BLOCKABLE`: false only for the OOM reaper.
    pub blockable: bool,
    /// `owner` (MIGRATE / EXCLUSIVE ranges only), an opaque device id.
    pub owner: Option<u64>,
}

impl NotifierRange {
    /// A blockable range with no owner (`mmu_notifier_range_init()`).
    pub const fn new(event: NotifierEvent, start: Hva, end: Hva) -> Self {
        NotifierRange {
            event,
            start,
            end,
            blockable: true,
            owner: None,
        }
    }
    /// True when `[start, end)` intersects this range.
    pub const fn intersects(&self, start: Hva, end: Hva) -> bool {
        self.start.0 < end.0 && start.0 < self.end.0
    }
    /// Length in bytes.
    pub const fn len(&self) -> u64 {
        self.end.0 - self.start.0
    }
    /// True for an empty range.
    pub const fn is_empty(&self) -> bool {
        self.end.0 <= self.start.0
    }
}

/// A secondary MMU subscribed to an address space (`struct mmu_notifier_ops`).
pub trait MmuNotifier {
    /// `invalidate_range_start`: entries in the range are about to change.
    fn invalidate_range_start(&mut self, range: &NotifierRange);
    /// `invalidate_range_end`: the change is complete.
    fn invalidate_range_end(&mut self, range: &NotifierRange);
    /// `clear_flush_young`: test and clear the accessed bits, flushing TLBs.
    fn clear_flush_young(&mut self, start: Hva, end: Hva) -> bool;
    /// `clear_young`: test and clear the accessed bits, no flush.
    fn clear_young(&mut self, start: Hva, end: Hva) -> bool;
    /// `test_young`: test the accessed bits.
    fn test_young(&mut self, start: Hva, end: Hva) -> bool;
    /// `release`: the address space is being torn down (`exit_mmap()`).
    fn release(&mut self);
}

/// A subscriber that ignores everything (the no-op default, like vm-superio's `NoEvents`).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoNotifier;

impl MmuNotifier for NoNotifier {
    fn invalidate_range_start(&mut self, _range: &NotifierRange) {}
    fn invalidate_range_end(&mut self, _range: &NotifierRange) {}
    fn clear_flush_young(&mut self, _start: Hva, _end: Hva) -> bool {
        false
    }
    fn clear_young(&mut self, _start: Hva, _end: Hva) -> bool {
        false
    }
    fn test_young(&mut self, _start: Hva, _end: Hva) -> bool {
        false
    }
    fn release(&mut self) {}
}

/// One recorded notifier call.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum NotifierCall {
    /// `invalidate_range_start(range)`.
    Start(NotifierRange),
    /// `invalidate_range_end(range)`.
    End(NotifierRange),
    /// `clear_flush_young(start, end)` and what the subscriber answered.
    ClearFlushYoung {
        /// First byte.
        start: Hva,
        /// One past the last byte.
        end: Hva,
        /// The subscriber's answer.
        young: bool,
    },
    /// `clear_young(start, end)` and the answer.
    ClearYoung {
        /// First byte.
        start: Hva,
        /// One past the last byte.
        end: Hva,
        /// The subscriber's answer.
        young: bool,
    },
    /// `test_young(start, end)` and the answer.
    TestYoung {
        /// First byte.
        start: Hva,
        /// One past the last byte.
        end: Hva,
        /// The subscriber's answer.
        young: bool,
    },
    /// `release()`.
    Release,
}

/// Records every call (and answers "not young"). Serialisable, for tests and reports.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifierLog {
    /// Calls in order.
    pub calls: Vec<NotifierCall>,
    /// What the young callbacks answer.
    pub young_answer: bool,
}

impl NotifierLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }
    /// The ranges passed to `invalidate_range_start`, in order.
    pub fn starts(&self) -> Vec<NotifierRange> {
        self.calls
            .iter()
            .filter_map(|c| match c {
                NotifierCall::Start(r) => Some(*r),
                _ => None,
            })
            .collect()
    }
    /// `(event, start, end)` of every start, for compact assertions.
    pub fn start_triples(&self) -> Vec<(NotifierEvent, u64, u64)> {
        self.starts()
            .iter()
            .map(|r| (r.event, r.start.0, r.end.0))
            .collect()
    }
    /// True when every start is matched by an end with the same range, in LIFO order, and
    /// nothing is left open.
    pub fn balanced(&self) -> bool {
        let mut open: Vec<NotifierRange> = Vec::new();
        for c in &self.calls {
            match c {
                NotifierCall::Start(r) => open.push(*r),
                NotifierCall::End(r) if open.pop() != Some(*r) => return false,
                _ => {}
            }
        }
        open.is_empty()
    }
    /// Forgets every recorded call.
    pub fn clear(&mut self) {
        self.calls.clear();
    }
}

impl MmuNotifier for NotifierLog {
    fn invalidate_range_start(&mut self, range: &NotifierRange) {
        self.calls.push(NotifierCall::Start(*range));
    }
    fn invalidate_range_end(&mut self, range: &NotifierRange) {
        self.calls.push(NotifierCall::End(*range));
    }
    fn clear_flush_young(&mut self, start: Hva, end: Hva) -> bool {
        let young = self.young_answer;
        self.calls
            .push(NotifierCall::ClearFlushYoung { start, end, young });
        young
    }
    fn clear_young(&mut self, start: Hva, end: Hva) -> bool {
        let young = self.young_answer;
        self.calls
            .push(NotifierCall::ClearYoung { start, end, young });
        young
    }
    fn test_young(&mut self, start: Hva, end: Hva) -> bool {
        let young = self.young_answer;
        self.calls
            .push(NotifierCall::TestYoung { start, end, young });
        young
    }
    fn release(&mut self) {
        self.calls.push(NotifierCall::Release);
    }
}

/// Delivers every call to several subscribers in order (the per-mm subscriber list);
/// young callbacks return the OR of the answers, as `__mmu_notifier_clear_young()` does.
#[derive(Default)]
pub struct NotifierFanout<'a> {
    /// The subscribers.
    pub subscribers: Vec<&'a mut dyn MmuNotifier>,
}

impl std::fmt::Debug for NotifierFanout<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifierFanout")
            .field("subscribers", &self.subscribers.len())
            .finish()
    }
}

impl MmuNotifier for NotifierFanout<'_> {
    fn invalidate_range_start(&mut self, range: &NotifierRange) {
        for s in self.subscribers.iter_mut() {
            s.invalidate_range_start(range);
        }
    }
    fn invalidate_range_end(&mut self, range: &NotifierRange) {
        for s in self.subscribers.iter_mut() {
            s.invalidate_range_end(range);
        }
    }
    fn clear_flush_young(&mut self, start: Hva, end: Hva) -> bool {
        let mut young = false;
        for s in self.subscribers.iter_mut() {
            young |= s.clear_flush_young(start, end);
        }
        young
    }
    fn clear_young(&mut self, start: Hva, end: Hva) -> bool {
        let mut young = false;
        for s in self.subscribers.iter_mut() {
            young |= s.clear_young(start, end);
        }
        young
    }
    fn test_young(&mut self, start: Hva, end: Hva) -> bool {
        let mut young = false;
        for s in self.subscribers.iter_mut() {
            young |= s.test_young(start, end);
        }
        young
    }
    fn release(&mut self) {
        for s in self.subscribers.iter_mut() {
            s.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_detects_unbalanced_start() {
        let mut log = NotifierLog::new();
        let r = NotifierRange::new(NotifierEvent::Clear, Hva(0x1000), Hva(0x2000));
        log.invalidate_range_start(&r);
        assert!(!log.balanced());
        log.invalidate_range_end(&r);
        assert!(log.balanced());
        assert_eq!(
            log.start_triples(),
            vec![(NotifierEvent::Clear, 0x1000, 0x2000)]
        );
    }

    #[test]
    fn event_serialises_with_kernel_name() {
        let s = serde_json::to_string(&NotifierEvent::ProtectionVma).unwrap();
        assert_eq!(s, "\"PROTECTION_VMA\"");
    }

    #[test]
    fn fanout_ors_young_answers() {
        let mut a = NotifierLog::new();
        let mut b = NotifierLog {
            young_answer: true,
            ..Default::default()
        };
        let mut f = NotifierFanout {
            subscribers: vec![&mut a, &mut b],
        };
        assert!(f.clear_young(Hva(0), Hva(0x1000)));
        drop(f);
        assert_eq!(a.calls.len(), 1);
    }
}
