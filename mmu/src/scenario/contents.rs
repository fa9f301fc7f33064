//! Page contents: the model's prediction of the first 8 bytes of every 4K page the guest
//! wrote, so a `read` step predicts the value the guest loads.
//!
//! Contents belong to physical pages (pfns), as in the kernel, so mappings that share a page
//! (the page cache of a shmem file, a forked child before COW, a split THP) see the same
//! value without further rules. What the runner adds around each step:
//! - a page that is not tracked reads 0: the zero page and the huge zero folio
//!   (`do_anonymous_page()` / `do_huge_pmd_anonymous_page()` map them for reads), and every
//!   freshly allocated anonymous folio (`vma_alloc_zeroed_movable_folio()`,
//!   `folio_zero_user()`); so after MADV_DONTNEED of private anon (`zap_pte_range()` frees the
//!   folio) the next read sees 0 again, while a shmem page stays in the page cache
//!   (`shmem_fault()` finds it) and keeps its value;
//! - when a step moves an address to a new page and the old page had a value, the new page
//!   gets a copy: COW (`wp_page_copy()` copies with `__wp_page_copy_user()`), migration
//!   (`migrate_folio()` → `folio_copy()`), collapse (`collapse_huge_page()` →
//!   `__collapse_huge_page_copy()`); a write step then stores its value;
//! - `uffdio-copy` fills the page with [`uffdio_copy_value`] of its address (the source
//!   buffer a real executor must prepare the same way; `mfill_atomic_pte_copy()`);
//!   `uffdio-zeropage` maps the zero page (reads 0);
//! - a page freed during a step (`free_unref_folio()`) forgets its value.
//!
//! # Divergence
//! Only the parent address space is followed: a forked child's pages keep their values (the
//! child keeps the old data) but no step reads them. Writes that the model resolves by
//! emulation (result "emulate") are not applied. A page freed and reused for another
//! address within one step keeps the old value.

use crate::host::Mm;
use crate::types::{Hva, Pfn, PAGE_SIZE, TASK_SIZE};
use std::collections::BTreeMap;

/// The value `uffdio-copy` places in the page at `hva` (a function of the address so the
/// model and a real executor agree without a key).
pub const fn uffdio_copy_value(hva: u64) -> u64 {
    hva ^ 0xc0_0000_0000_0000
}

/// The tracked contents.
#[derive(Clone, Debug, Default)]
pub(crate) struct Contents {
    data: BTreeMap<u64, u64>,
    /// A value was stored for a pfn without a folio: the free rule must run once.
    stale_insert: bool,
    /// Tests: always snapshot the whole address space (the reference the scoped snapshot
    /// is checked against).
    pub(crate) exhaustive: bool,
}

/// Which part of the address space a step can remap: the pages whose mapping can move to
/// another pfn while staying present (COW, migration, collapse) lie inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Nothing present can be remapped.
    Nothing,
    /// `[start, end)` (leaves covering `start` included).
    Range(u64, u64),
    /// Anywhere.
    All,
}

/// (4K-aligned hva, pfn, value) of every mapped page with a value.
pub(crate) type Snapshot = Vec<(u64, u64, u64)>;

impl Contents {
    /// The first 8 bytes of the page at `pfn` (0 for a page never written).
    pub fn value_of(&self, pfn: crate::types::Pfn) -> u64 {
        self.data.get(&pfn.0).copied().unwrap_or(0)
    }

    /// Every present page in the parent's page table whose pfn has a value, within `scope`
    /// (the whole address space when [`Contents::exhaustive`]).
    pub fn snapshot(&self, mm: &Mm, scope: Scope) -> Snapshot {
        let mut out = Vec::new();
        if self.data.is_empty() {
            return out;
        }
        let (start, end) = match (self.exhaustive, scope) {
            (false, Scope::Nothing) => return out,
            (false, Scope::Range(s, e)) => (s, e),
            _ => (0, TASK_SIZE),
        };
        if end.saturating_sub(start) == PAGE_SIZE {
            // One page: a lookup, not a walk.
            if let Some(m) = mm.lookup(Hva(start)).filter(|m| m.present) {
                if let Some(&v) = self.data.get(&m.pfn.0) {
                    out.push((start, m.pfn.0, v));
                }
            }
            return out;
        }
        mm.space
            .pt
            .for_each_leaf(Hva(start), Hva(end), |va, level, e| {
                if !e.is_present() {
                    return;
                }
                let base = e.pfn().0;
                let n = level.size() / PAGE_SIZE;
                for (&pfn, &v) in self.data.range(base..base + n) {
                    out.push((va.0 + (pfn - base) * PAGE_SIZE, pfn, v));
                }
            });
        out
    }

    /// Applies the copy and free rules after a step, given the snapshot taken before it.
    pub fn after_step(&mut self, mm: &Mm, before: &Snapshot) {
        for &(hva, old, v) in before {
            let Some(m) = mm.lookup(Hva(hva)).filter(|m| m.present) else {
                continue;
            };
            let new = m.pfn;
            if new.0 != old
                && !mm.is_zero_pfn(new)
                && !mm.folio_info(new).is_some_and(|f| f.huge_zero)
            {
                self.data.entry(new.0).or_insert(v);
            }
        }
        // free_unref_folio(): a freed folio's pages forget their values. Only a free takes a
        // tracked pfn's folio away, so only the pages freed during the step (the runner's
        // free log) are checked, unless the log overflowed or a value went to a pfn without
        // a folio; the predicate is the same either way.
        let frames = &mm.frames;
        let gone = |p: u64| mm.pfn_valid(Pfn(p)) && mm.folio_info(Pfn(p)).is_none();
        if self.exhaustive || self.stale_insert || !frames.log_frees || frames.freed_log_overflow {
            self.data.retain(|&p, _| !gone(p));
            self.stale_insert = false;
        } else {
            for &(head, n) in &frames.freed_log {
                let hit: Vec<u64> = self
                    .data
                    .range(head..head.saturating_add(n))
                    .map(|(&p, _)| p)
                    .filter(|&p| gone(p))
                    .collect();
                for p in hit {
                    self.data.remove(&p);
                }
            }
        }
    }

    /// Stores `v` in the page mapped at `hva` (after the access that made it writable).
    pub fn write(&mut self, mm: &Mm, hva: Hva, v: u64) {
        if let Some(m) = mm.lookup(hva).filter(|m| m.present) {
            self.data.insert(m.pfn.0, v);
            if mm.pfn_valid(m.pfn) && mm.folio_info(m.pfn).is_none() {
                self.stale_insert = true;
            }
        }
    }

    /// The value of the page mapped at `hva`; `None` when nothing is mapped there.
    pub fn read(&self, mm: &Mm, hva: Hva) -> Option<u64> {
        // Device memory behind a VM_PFNMAP / VM_MIXEDMAP mapping holds what the device puts
        // there: the model has no contents for it.
        let device = crate::host::VmFlags::PFNMAP | crate::host::VmFlags::MIXEDMAP;
        if mm.find_vma(hva).is_some_and(|v| v.flags.intersects(device)) {
            return None;
        }
        let m = mm.lookup(hva).filter(|m| m.present)?;
        Some(self.data.get(&m.pfn.0).copied().unwrap_or(0))
    }
}
