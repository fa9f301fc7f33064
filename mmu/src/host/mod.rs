//! The host's primary MMU: one process address space (VMAs + page table), the physical
//! frames behind it, the fault handler and the operations users script.
//!
//! Models mm/ of Linux 6.12 (with the 6.13+ and 6.18 differences selected by
//! [`KernelVersion`]). Every operation that invalidates takes the subscriber explicitly as
//! `notifier: &mut dyn MmuNotifier` and returns a serde [`OpReport`] with the notifier
//! ranges it sent, in order; faults return a [`FaultReport`] naming the handlers that ran.
//!
//! ```text
//!  Mm ── space: AddrSpace { vmas: BTreeMap<start, Vma>, pt: PageTable }   (the process)
//!     ├─ children: forked address spaces sharing folios (COW)
//!     └─ frames: Frames { folio slab, pfn -> folio index, zero page, huge zero folio,
//!                         ZONE_DEVICE pgmaps, allocator with failure injection }
//! ```

pub(crate) mod cold;
pub mod device;
pub(crate) mod fault;
pub mod folio;
pub mod gup_state;
pub(crate) mod hugetlb;
pub(crate) mod ksm;
pub(crate) mod numa;
pub mod ops;
pub(crate) mod pagetable;
#[cfg(test)]
mod proptests;
pub mod pte;
#[cfg(test)]
pub(crate) mod testutil;
pub mod uffd;
pub mod vma;

pub use cold::ColdOutcome;
pub use device::{DeviceKind, DeviceSpec};
pub use fault::{FaultFlags, FaultOutcome, FaultReport, HostFault};
pub use folio::{AllocFailure, FolioInfo, Zone};
pub use ops::{
    AccessError, Advice, ForkError, MadviseError, MigrateError, MmapError, MmapRequest,
    MprotectError, MremapError, MunmapError, OpReport, RangeError, RemapPfnError,
};
pub use pte::Entry;
pub use uffd::{MemoryFailureError, UffdError, UffdMode, UffdModes};
pub use vma::{Backing, Prot, VmFlags, Vma};

use crate::notifier::{MmuNotifier, NotifierRange};
use crate::types::{Hva, KernelVersion, Level, NodeId, Pfn};
use folio::Frames;
use gup_state::GupReport;
use pagetable::{PageTable, Walk};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Transparent hugepage policy (`/sys/kernel/mm/transparent_hugepage/enabled`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ThpMode {
    /// THP for every eligible anonymous VMA.
    Always,
    /// THP only for VMAs with MADV_HUGEPAGE (VM_HUGEPAGE).
    #[default]
    Madvise,
    /// No THP.
    Never,
}

/// How the modelled machine and process are set up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MmConfig {
    /// Which Linux rules apply.
    pub kernel: KernelVersion,
    /// NUMA nodes.
    pub nodes: u16,
    /// Node the process's tasks run on (`numa_node_id()` at fault time).
    pub task_node: NodeId,
    /// `mm_users > 1` (a VMM with vCPU threads): affects NUMA-scan skip rules.
    pub multi_threaded: bool,
    /// THP policy.
    pub thp: ThpMode,
    /// `transparent_hugepage/use_zero_page`.
    pub use_huge_zero_page: bool,
    /// `CONFIG_ARCH_HAS_PTE_SPECIAL` (x86: true). False selects the `vm_normal_page()` rules
    /// of architectures without a special bit (the VM_PFNMAP linear/COW rule via vm_pgoff).
    pub arch_has_pte_special: bool,
    /// `NUMA_BALANCING_NORMAL` in `kernel.numa_balancing`. False models the
    /// memory-tiering-only mode, where `change_prot_numa()` still runs (and still sends
    /// PROTECTION_VMA) but skips every top-tier folio (all nodes are top tier here).
    pub numa_balancing: bool,
}

impl Default for MmConfig {
    fn default() -> Self {
        MmConfig {
            kernel: KernelVersion::V6_12,
            nodes: 2,
            task_node: NodeId(0),
            multi_threaded: true,
            thp: ThpMode::Madvise,
            use_huge_zero_page: true,
            arch_has_pte_special: true,
            numa_balancing: true,
        }
    }
}

/// One address space: VMAs and page table.
#[derive(Clone)]
pub(crate) struct AddrSpace {
    pub vmas: BTreeMap<u64, Vma>,
    pub pt: PageTable,
    /// `mm->write_protect_seq` (odd while fork copies page tables).
    pub write_protect_seq: u64,
}

impl AddrSpace {
    fn new() -> Self {
        AddrSpace {
            vmas: BTreeMap::new(),
            pt: PageTable::new(),
            write_protect_seq: 0,
        }
    }
    /// `vma_lookup()`.
    pub fn vma(&self, hva: Hva) -> Option<&Vma> {
        let (_, v) = self.vmas.range(..=hva.0).next_back()?;
        v.contains(hva).then_some(v)
    }
}

/// A signal pending on the task doing GUP (for `-EINTR`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PendingSignal {
    /// No signal.
    #[default]
    None,
    /// A non-fatal signal: interrupts only FOLL_INTERRUPTIBLE retries.
    NonFatal,
    /// SIGKILL: `fatal_signal_pending()`.
    Fatal,
}

/// A forked child address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChildId(pub usize);

/// What maps an address right now (a lockless walk of the host table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    /// Level of the leaf.
    pub level: Level,
    /// First address the leaf maps.
    pub leaf_start: Hva,
    /// The raw leaf entry.
    pub entry: Entry,
    /// pfn of the 4K page at the looked-up address (leaf pfn + offset).
    pub pfn: Pfn,
    /// `pte_present` (true for protnone too).
    pub present: bool,
    /// `pte_protnone`.
    pub protnone: bool,
    /// `pte_write`.
    pub writable: bool,
    /// `pte_special`.
    pub special: bool,
    /// `pte_devmap`.
    pub devmap: bool,
    /// `pte_dirty`.
    pub dirty: bool,
    /// `pte_young`.
    pub young: bool,
}

/// Model memory accounting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryUse {
    /// Bytes in page-table pages.
    pub page_table_bytes: u64,
    /// Bytes in the folio slab and pfn index.
    pub frame_bytes: u64,
    /// 4K pages mapped by present leaves (a 2M leaf counts 512).
    pub mapped_pages: u64,
    /// Frames allocated.
    pub allocated_pages: u64,
}

/// A broken model invariant (found by [`Mm::check_invariants`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvariantError {
    /// A hugetlb rule is broken: {what}
    #[error("A hugetlb folio or VMA is mapped against hugetlb's rules (a model bug): {what}")]
    Hugetlb {
        /// The offending leaf.
        what: String,
    },
    /// Leaf at {hva} maps pfn {pfn} whose folio was freed
    #[error("Leaf at {hva} maps pfn {pfn} whose folio was freed")]
    MappedButFreed {
        /// Address of the leaf.
        hva: Hva,
        /// The pfn.
        pfn: Pfn,
    },
    /// Folio {pfn}: refcount {refcount} but {expected} expected (mapcount {mapcount})
    #[error("Folio {pfn}: refcount {refcount} but {expected} expected (mapcount {mapcount})")]
    RefcountMismatch {
        /// Head pfn.
        pfn: Pfn,
        /// Actual refcount.
        refcount: i32,
        /// What the mappings and page cache account for.
        expected: i32,
        /// Mapcount.
        mapcount: i32,
    },
    /// Folio {pfn}: mapcount {mapcount} but {counted} leaves map it
    #[error("Folio {pfn}: mapcount {mapcount} but {counted} leaves map it")]
    MapcountMismatch {
        /// Head pfn.
        pfn: Pfn,
        /// Recorded mapcount.
        mapcount: i32,
        /// Leaves found.
        counted: i32,
    },
    /// Special leaf at {hva} maps pfn {pfn} but vm_normal_page() returned a page
    #[error("Special leaf at {hva} maps pfn {pfn} but vm_normal_page() returned a page")]
    SpecialHasPage {
        /// Address.
        hva: Hva,
        /// pfn.
        pfn: Pfn,
    },
}

/// The modelled process address space and machine.
#[derive(Clone)]
pub struct Mm {
    pub(crate) config: MmConfig,
    pub(crate) frames: Frames,
    pub(crate) space: AddrSpace,
    pub(crate) children: Vec<Option<AddrSpace>>,
    /// Next page-cache file id.
    pub(crate) next_file: u32,
    /// Page caches: (file, index) -> folio id.
    pub(crate) page_cache: BTreeMap<(u32, u64), usize>,
    pub(crate) last_gup: GupReport,
    /// Driver callback counters: (fault, huge_fault, pfn_mkwrite) calls.
    pub(crate) driver_calls: DriverCalls,
    /// Test hook: the next GUP-fast grab races with a zap of its entry.
    pub(crate) gup_fast_race: bool,
    /// Signal pending on the GUP caller.
    pub(crate) signal: PendingSignal,
}

/// How often driver callbacks ran (for tests of the double fault).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriverCalls {
    /// `vm_ops->fault`.
    pub fault: u64,
    /// `vm_ops->huge_fault`.
    pub huge_fault: u64,
    /// `vm_ops->pfn_mkwrite`.
    pub pfn_mkwrite: u64,
    /// `vm_ops->page_mkwrite`.
    pub page_mkwrite: u64,
}

impl std::fmt::Debug for Mm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mm")
            .field("config", &self.config)
            .field("vmas", &self.space.vmas.values().collect::<Vec<_>>())
            .field("memory", &self.memory_use())
            .finish()
    }
}

impl Default for Mm {
    fn default() -> Self {
        Mm::new(MmConfig::default())
    }
}

impl Mm {
    /// An empty address space on a fresh machine.
    pub fn new(config: MmConfig) -> Self {
        Mm {
            config,
            frames: Frames::new(),
            space: AddrSpace::new(),
            children: Vec::new(),
            next_file: 1,
            page_cache: BTreeMap::new(),
            last_gup: GupReport::default(),
            driver_calls: DriverCalls::default(),
            gup_fast_race: false,
            signal: PendingSignal::None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &MmConfig {
        &self.config
    }

    /// Which Linux rules apply.
    pub fn kernel(&self) -> KernelVersion {
        self.config.kernel
    }

    /// `vma_lookup()`: the VMA containing `hva`.
    pub fn find_vma(&self, hva: Hva) -> Option<&Vma> {
        self.space.vma(hva)
    }

    /// All VMAs in address order.
    pub fn vmas(&self) -> impl Iterator<Item = &Vma> {
        self.space.vmas.values()
    }

    /// What maps `hva` now (any leaf level; non-present non-none leaves included).
    pub fn lookup(&self, hva: Hva) -> Option<Mapping> {
        match self.space.pt.walk(hva) {
            Walk::None(_) => None,
            Walk::Leaf(level, e) => Some(Mapping {
                level,
                leaf_start: hva.align_down(level),
                entry: e,
                pfn: e.pfn().add(hva.page_index_in(level)),
                present: e.is_present(),
                protnone: e.is_protnone(),
                writable: e.is_write(),
                special: e.is_special(),
                devmap: e.is_devmap(),
                dirty: e.is_dirty(),
                young: e.is_young(),
            }),
        }
    }

    /// Level of the leaf mapping `hva`, of any kind (THP, huge pfnmap, devmap, zero), as
    /// KVM's `host_pfn_mapping_level()` walks it. None when nothing is mapped.
    pub fn leaf_level(&self, hva: Hva) -> Option<Level> {
        match self.space.pt.walk(hva) {
            Walk::Leaf(level, e) if e.is_present() => Some(level),
            _ => None,
        }
    }

    /// `pfn_valid()`: the pfn has a struct page.
    pub fn pfn_valid(&self, pfn: Pfn) -> bool {
        self.frames.pfn_valid(pfn)
    }

    /// `is_zero_pfn()`.
    pub fn is_zero_pfn(&self, pfn: Pfn) -> bool {
        self.frames.is_zero_pfn(pfn)
    }

    /// pfn of the shared zero page.
    pub fn zero_pfn(&self) -> Pfn {
        self.frames.zero_pfn
    }

    /// Head pfn of the huge zero folio.
    pub fn huge_zero_pfn(&self) -> Pfn {
        self.frames.huge_zero_pfn
    }

    /// The folio containing `pfn` (None without struct page, or when free).
    pub fn folio_info(&self, pfn: Pfn) -> Option<FolioInfo> {
        self.frames.folio_of(pfn).map(|id| self.frames.info(id))
    }

    /// Allocation failure injection (e.g. make THP allocation fail).
    pub fn set_alloc_failure(&mut self, fail: AllocFailure) {
        self.frames.fail = fail;
    }

    /// `folio_ref_freeze()` as a racing split/migration would: the refcount reads 0 until
    /// [`Mm::unfreeze_folio`]. Returns the refcount that was frozen.
    pub fn freeze_folio(&mut self, pfn: Pfn) -> Option<i32> {
        let id = self.frames.folio_of(pfn)?;
        let r = self.frames.folios[id].refcount;
        self.frames.folios[id].refcount = 0;
        Some(r)
    }

    /// `folio_ref_unfreeze()`.
    pub fn unfreeze_folio(&mut self, pfn: Pfn, refcount: i32) {
        if let Some(id) = self.frames.folio_of(pfn) {
            self.frames.folios[id].refcount = refcount;
        }
    }

    /// `memunmap_pages()` / `kill_dev_pagemap()`: the pgmap of `pfn` dies, so
    /// `get_dev_pagemap()` fails from now on. Returns false when `pfn` is not ZONE_DEVICE.
    pub fn kill_pgmap(&mut self, pfn: Pfn) -> bool {
        let Some(id) = self.frames.folio_of(pfn) else {
            return false;
        };
        let pg = self.frames.folios[id].pgmap;
        if pg == 0 {
            return false;
        }
        self.frames.pgmaps[usize::from(pg) - 1].alive = false;
        true
    }

    /// Test hook: the next GUP-fast call finds its entry zapped between grabbing the folio
    /// and re-reading the entry (a racing `zap_pte_range()`), so its re-check must fail.
    pub fn inject_gup_fast_race(&mut self) {
        self.gup_fast_race = true;
    }

    /// The racing zap of [`Mm::inject_gup_fast_race`]: clears the leaf at `hva` and drops
    /// what it held (no notifier: the point is GUP-fast's re-check, not KVM).
    pub(crate) fn race_zap(&mut self, hva: Hva) {
        if let Some(m) = self.lookup(hva) {
            pagetable::set_leaf(&mut self.space.pt, m.leaf_start, m.level, Entry::NONE);
            self.drop_leaf_ref(m.entry);
        }
    }

    /// The process's tasks move to `node` (later faults allocate there and NUMA hinting
    /// faults migrate towards it).
    pub fn set_task_node(&mut self, node: NodeId) {
        self.config.task_node = node;
    }

    /// Sets the signal pending on the task that calls GUP (`fatal_signal_pending()`,
    /// `signal_pending()`).
    pub fn set_pending_signal(&mut self, signal: PendingSignal) {
        self.signal = signal;
    }

    /// How often driver callbacks ran.
    pub fn driver_calls(&self) -> DriverCalls {
        self.driver_calls
    }

    /// The report of the last GUP call (`gup::*`).
    pub fn last_gup(&self) -> &GupReport {
        &self.last_gup
    }

    /// Model memory use.
    pub fn memory_use(&self) -> MemoryUse {
        let mut mapped = 0;
        let mut pt = self.space.pt.bytes();
        for c in self.children.iter().flatten() {
            pt += c.pt.bytes();
        }
        self.space
            .pt
            .for_each_leaf(Hva(0), Hva(crate::types::TASK_SIZE), |_, level, e| {
                if e.is_present() {
                    mapped += level.pages();
                }
            });
        MemoryUse {
            page_table_bytes: pt,
            frame_bytes: self.frames.bytes(),
            mapped_pages: mapped,
            allocated_pages: self.frames.allocated_pages,
        }
    }

    /// Checks the model's invariants: every present leaf maps a live folio (or a pfn without
    /// struct page, or a special/zero entry), special leaves never yield a page from
    /// `vm_normal_page*()`, each folio's mapcount equals the leaves mapping it, and its
    /// refcount equals mapcount + page-cache reference + `extra_refs` (GUP references the
    /// caller still holds, keyed by head pfn).
    pub fn check_invariants(&self, extra_refs: &BTreeMap<Pfn, i32>) -> Result<(), InvariantError> {
        let mut maps: BTreeMap<usize, i32> = BTreeMap::new();
        let spaces = std::iter::once(&self.space).chain(self.children.iter().flatten());
        let mut err = None;
        for space in spaces {
            space
                .pt
                .for_each_leaf(Hva(0), Hva(crate::types::TASK_SIZE), |va, level, e| {
                    if err.is_some() || !e.is_present() {
                        return;
                    }
                    let pfn = e.pfn();
                    if e.is_special() {
                        if let Some(v) = space.vma(va) {
                            if self.vm_normal_page_entry(v, va, e, level).is_some() {
                                err = Some(InvariantError::SpecialHasPage { hva: va, pfn });
                            }
                        }
                    }
                    if self.frames.pfn_valid(pfn) && self.frames.folio_of(pfn).is_none() {
                        err = Some(InvariantError::MappedButFreed { hva: va, pfn });
                        return;
                    }
                    if let Some(id) = self.leaf_ref_folio(e) {
                        *maps.entry(id).or_default() += 1;
                    }
                });
        }
        if let Some(e) = err {
            return Err(e);
        }
        self.check_hugetlb_invariants()
            .map_err(|what| InvariantError::Hugetlb { what })?;
        for id in self.frames.live_ids() {
            let f = &self.frames.folios[id];
            let counted = maps.get(&id).copied().unwrap_or(0);
            if f.mapcount != counted {
                return Err(InvariantError::MapcountMismatch {
                    pfn: Pfn(f.pfn),
                    mapcount: f.mapcount,
                    counted,
                });
            }
            let idle = if f.zone == Zone::Device && !self.config.kernel.devmap_removed() {
                1
            } else {
                0
            };
            let expected = f.mapcount
                + i32::from(f.has(folio::ff::PAGECACHE))
                + i32::from(f.has(folio::ff::HWPOISON))
                + i32::from(f.has(folio::ff::DRIVER))
                + idle
                + extra_refs.get(&Pfn(f.pfn)).copied().unwrap_or(0);
            if f.refcount != expected {
                return Err(InvariantError::RefcountMismatch {
                    pfn: Pfn(f.pfn),
                    refcount: f.refcount,
                    expected,
                    mapcount: f.mapcount,
                });
            }
        }
        Ok(())
    }

    /// Sends one invalidation: start, the change (`f`), end. Records the range.
    pub(crate) fn notify<R>(
        &mut self,
        notifier: &mut dyn MmuNotifier,
        log: &mut Vec<NotifierRange>,
        range: NotifierRange,
        f: impl FnOnce(&mut Mm) -> R,
    ) -> R {
        self.notify_nested(notifier, log, range, |mm, _, _| f(mm))
    }

    /// Like [`Mm::notify`], for a change that may send invalidations of its own inside the
    /// outer one (a zap that splits a partly covered huge leaf): `f` gets the notifier and
    /// the log, so nested ranges are recorded after the outer one, in emission order.
    pub(crate) fn notify_nested<R>(
        &mut self,
        notifier: &mut dyn MmuNotifier,
        log: &mut Vec<NotifierRange>,
        range: NotifierRange,
        f: impl FnOnce(&mut Mm, &mut dyn MmuNotifier, &mut Vec<NotifierRange>) -> R,
    ) -> R {
        notifier.invalidate_range_start(&range);
        log.push(range);
        let r = f(self, &mut *notifier, &mut *log);
        notifier.invalidate_range_end(&range);
        r
    }
}
