//! Operations users script: mmap, munmap, mprotect, madvise, mremap, fork, NUMA scan,
//! migration, THP split/collapse, unmap_mapping_range, remap_pfn_range and aging. Each
//! emits the notifier events and ranges of spec table 2.6.

use super::device::DeviceKind;
use super::fault::{FaultFlags, FaultOutcome, FaultReport, HostFault};
use super::folio::{ff, RAM_BASE_PFN, RAM_MAX_PAGES};
use super::numa::ChangeKind;
use super::pagetable::set_leaf;
use super::pagetable::{PageTable, PmdSlot, PudSlot};
use super::pte::Entry;
use super::vma::{vm_flags_for, Backing, Prot, VmFlags, Vma};
use super::{AddrSpace, ChildId, Mm};
use crate::notifier::{MmuNotifier, NoNotifier, NotifierEvent, NotifierRange};
use crate::types::{Hva, Level, NodeId, Pfn, PAGE_SIZE, TASK_SIZE};
use serde::{Deserialize, Serialize};

/// An mmap request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmapRequest {
    /// MAP_FIXED_NOREPLACE address (None: the model picks one, 1G-aligned).
    pub addr: Option<Hva>,
    /// Length in bytes (multiple of 4K).
    pub len: u64,
    /// Protection.
    pub prot: Prot,
    /// MAP_SHARED.
    pub shared: bool,
    /// Backing.
    pub backing: Backing,
    /// mbind(MPOL_BIND) node for new pages (None: the task's node).
    pub node: Option<NodeId>,
    /// Apply MADV_HUGEPAGE right away.
    pub hugepage: bool,
}

impl MmapRequest {
    /// Private anonymous read-write memory of `len` bytes at `addr`.
    pub fn anon(addr: Hva, len: u64) -> Self {
        MmapRequest {
            addr: Some(addr),
            len,
            prot: Prot::RW,
            shared: false,
            backing: Backing::Anon,
            node: None,
            hugepage: false,
        }
    }
}

/// madvise advice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Advice {
    /// MADV_DONTNEED
    Dontneed,
    /// MADV_FREE
    Free,
    /// MADV_HUGEPAGE
    Hugepage,
    /// MADV_NOHUGEPAGE
    Nohugepage,
    /// MADV_COLLAPSE
    Collapse,
}

/// What an operation did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpReport {
    /// Operation name ("munmap", "numa-scan", ...).
    pub op: String,
    /// Range operated on.
    pub start: Hva,
    /// End of the range.
    pub end: Hva,
    /// Notifier ranges sent, in order.
    pub notifiers: Vec<NotifierRange>,
    /// Host fault handlers that ran (user_access only).
    pub host_faults: Vec<HostFault>,
    /// Leaves changed.
    pub changed: u64,
    /// Leaves skipped (NUMA scan skip rules, migration failures).
    pub skipped: u64,
    /// Young answer (aging operations).
    pub young: Option<bool>,
}

/// Bad range: [{start}, +{len:#x}) {problem}
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Bad range [{start}, +{len:#x}): {problem}")]
pub struct RangeError {
    /// Start.
    pub start: Hva,
    /// Length.
    pub len: u64,
    /// What is wrong and how to fix it.
    pub problem: &'static str,
}

/// mmap failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MmapError {
    /// Bad range.
    #[error(transparent)]
    Range(#[from] RangeError),
    /// [{start}, {end}) overlaps an existing mapping: munmap it first or pick another address
    #[error(
        "[{start}, {end}) overlaps an existing mapping: munmap it first or pick another address"
    )]
    Overlap {
        /// Start.
        start: Hva,
        /// End.
        end: Hva,
    },
    /// A fault-driven pfnmap must be MAP_SHARED (vfio-pci refuses private maps): set shared or remap
    #[error("A fault-driven pfnmap must be MAP_SHARED (vfio-pci refuses private maps): set shared = true or remap = true")]
    PrivatePfnmap,
    /// Device pfn range [{start}, +{pages}) overlaps modelled RAM: pick a pfn below 0x10000000
    #[error("Device pfn range [{start}, +{pages:#x}) overlaps modelled RAM: pick a pfn below 0x10000000")]
    DevicePfnInRam {
        /// First pfn.
        start: Pfn,
        /// Pages.
        pages: u64,
    },
    /// Out of model RAM for the driver's pages
    #[error("Out of model RAM for the driver's pages: map less")]
    MissingPfn,
    /// Device-dax mappings must be MAP_SHARED
    #[error("Device-dax mappings must be MAP_SHARED")]
    PrivateDevDax,
}

/// munmap failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MunmapError {
    /// Bad range.
    #[error(transparent)]
    Range(#[from] RangeError),
}

/// mprotect failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MprotectError {
    /// Bad range.
    #[error(transparent)]
    Range(#[from] RangeError),
    /// [{start}, {end}) is not fully mapped (ENOMEM): mmap the hole first
    #[error("[{start}, {end}) is not fully mapped (ENOMEM): mmap the hole first")]
    Hole {
        /// Start.
        start: Hva,
        /// End.
        end: Hva,
    },
    /// PROT_WRITE on a shared mapping without VM_MAYWRITE (EACCES)
    #[error("PROT_WRITE on a mapping without VM_MAYWRITE (EACCES)")]
    NotMayWrite,
}

/// madvise failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MadviseError {
    /// Bad range.
    #[error(transparent)]
    Range(#[from] RangeError),
    /// [{start}, {end}) is not fully mapped (ENOMEM)
    #[error("[{start}, {end}) is not fully mapped (ENOMEM)")]
    Hole {
        /// Start.
        start: Hva,
        /// End.
        end: Hva,
    },
    /// MADV_DONTNEED/FREE on a VM_PFNMAP|VM_LOCKED vma (EINVAL): use unmap_mapping_range
    #[error("{advice:?} is not allowed on a VM_PFNMAP vma (EINVAL): use unmap-mapping-range")]
    Pfnmap {
        /// The advice.
        advice: Advice,
    },
    /// MADV_COLD/MADV_PAGEOUT on a VM_PFNMAP|VM_LOCKED vma (EINVAL, `can_madv_lru_vma()`)
    #[error("MADV_COLD and MADV_PAGEOUT are not allowed on a VM_PFNMAP or VM_LOCKED vma (EINVAL): age the range with clear-young instead")]
    NotLru,
    /// MADV_COLLAPSE failed: {reason}
    #[error("MADV_COLLAPSE failed: {reason}")]
    Collapse {
        /// Why.
        reason: &'static str,
    },
}

/// mremap failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MremapError {
    /// Bad range.
    #[error(transparent)]
    Range(#[from] RangeError),
    /// The old range must lie within one vma (EFAULT)
    #[error("The old range [{start}, +{len:#x}) must lie within one vma (EFAULT)")]
    NotOneVma {
        /// Start.
        start: Hva,
        /// Length.
        len: u64,
    },
    /// Growing a VM_DONTEXPAND (driver) mapping (EFAULT)
    #[error("Growing a VM_DONTEXPAND (driver) mapping is refused (EFAULT): mmap a new one")]
    DontExpand,
    /// The new range [{start}, {end}) overlaps another mapping
    #[error("The new range [{start}, {end}) overlaps another mapping")]
    Overlap {
        /// Start.
        start: Hva,
        /// End.
        end: Hva,
    },
}

/// fork failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForkError {
    /// Out of memory copying a pinned page
    #[error("Out of memory copying a maybe-pinned page during fork")]
    Oom,
}

/// migrate failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigrateError {
    /// Bad range.
    #[error(transparent)]
    Range(#[from] RangeError),
    /// Node {node:?} does not exist (the machine has {nodes} nodes)
    #[error("Node {node:?} does not exist (the machine has {nodes} nodes)")]
    NoSuchNode {
        /// Requested node.
        node: NodeId,
        /// Nodes configured.
        nodes: u16,
    },
}

/// remap_pfn_range failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemapPfnError {
    /// Bad range.
    #[error(transparent)]
    Range(#[from] RangeError),
    /// A COW mapping must be remapped whole (EINVAL): remap [vm_start, vm_end)
    #[error("A COW mapping must be remapped whole (EINVAL): remap [vm_start, vm_end)")]
    CowPartial,
    /// An entry in the range is already populated
    #[error("An entry at {0} is already populated")]
    Busy(Hva),
}

/// A user access (copy_to/from_user) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// The access at {hva} faulted with {outcome:?} (EFAULT)
    #[error("The access at {hva} faulted with {outcome:?} (EFAULT)")]
    Fault {
        /// Address.
        hva: Hva,
        /// Fault result.
        outcome: super::FaultOutcome,
        /// The faults taken.
        faults: Vec<FaultReport>,
    },
    /// The access at {hva} did not complete after {tries} faults
    #[error("The access at {hva} did not complete after {tries} faults")]
    Livelock {
        /// Address.
        hva: Hva,
        /// Faults taken.
        tries: usize,
    },
}

/// Where the model places mappings when no address is given.
const MMAP_BASE: u64 = 0x7f00_0000_0000;

#[allow(clippy::manual_is_multiple_of)] // u64::is_multiple_of needs Rust 1.87; rust-version is 1.80.
pub(crate) fn check_range(start: Hva, len: u64) -> Result<Hva, RangeError> {
    let err = |problem| RangeError {
        start,
        len,
        problem,
    };
    if len == 0 {
        return Err(err("length is 0: give a positive multiple of 4K"));
    }
    if !start.is_aligned(Level::Pte4K) {
        return Err(err("start is not 4K-aligned"));
    }
    if len % PAGE_SIZE != 0 {
        return Err(err("length is not a multiple of 4K"));
    }
    match start.0.checked_add(len) {
        Some(end) if end <= TASK_SIZE => Ok(Hva(end)),
        _ => Err(err("range ends beyond the 47-bit user address space")),
    }
}

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

impl OpReport {
    /// An empty report for `op` over `[start, end)`.
    pub(crate) fn new(op: &str, start: Hva, end: Hva) -> Self {
        OpReport {
            op: op.to_string(),
            start,
            end,
            ..Default::default()
        }
    }
}

impl Mm {
    /// The VMAs intersecting `[start, end)`, cloned, in address order.
    pub(crate) fn vmas_in(&self, start: Hva, end: Hva) -> Vec<Vma> {
        self.space
            .vmas
            .values()
            .filter(|v| v.start < end && start < v.end)
            .cloned()
            .collect()
    }

    /// True when `[start, end)` is fully covered by VMAs.
    pub(crate) fn covered(&self, start: Hva, end: Hva) -> bool {
        let mut at = start;
        for v in self.vmas_in(start, end) {
            if v.start > at {
                return false;
            }
            at = v.end;
        }
        at >= end
    }

    /// `split_vma()` at `addr` when a VMA strictly contains it (mm/vma.c).
    pub(crate) fn split_vma_at(&mut self, addr: Hva) {
        let Some(v) = self.space.vma(addr).cloned() else {
            return;
        };
        if v.start == addr {
            return;
        }
        let mut lo = v.clone();
        lo.end = addr;
        let mut hi = v;
        hi.pgoff += addr.offset_from(hi.start) >> 12;
        hi.start = addr;
        self.space.vmas.insert(lo.start.0, lo);
        self.space.vmas.insert(hi.start.0, hi);
    }

    /// Models `mmap()` (mm/mmap.c `do_mmap()` + the driver's `->mmap`): creates the VMA;
    /// device mappings get VM_IO|VM_PFNMAP / VM_MIXEDMAP, device-dax gets ZONE_DEVICE
    /// pages; `remap` drivers populate everything with `remap_pfn_range()`.
    #[allow(clippy::manual_is_multiple_of)] // u64::is_multiple_of needs Rust 1.87; rust-version is 1.80.
    pub fn mmap(&mut self, req: MmapRequest) -> Result<Hva, MmapError> {
        let start = match req.addr {
            Some(a) => a,
            None => {
                let mut a = Hva(MMAP_BASE);
                if let Some(last) = self.space.vmas.values().next_back() {
                    a = a.max(last.end.align_up(Level::Pud1G));
                }
                a
            }
        };
        let end = check_range(start, req.len)?;
        if !self.vmas_in(start, end).is_empty() {
            return Err(MmapError::Overlap { start, end });
        }
        let mut flags = vm_flags_for(req.prot, req.shared);
        if req.hugepage {
            flags |= VmFlags::HUGEPAGE;
        }
        let mut file = 0;
        let mut backing = req.backing.clone();
        let mut pgoff = 0;
        let mut remap = None;
        match &mut backing {
            Backing::Anon => {
                if req.shared {
                    file = self.new_file();
                }
            }
            Backing::Shmem => file = self.new_file(),
            Backing::Device(d) => {
                let pages = req.len / PAGE_SIZE;
                match d.kind {
                    DeviceKind::Pfnmap | DeviceKind::Mixedmap => {
                        if let Some(base) = d.base_pfn {
                            let top = base.0.saturating_add(pages);
                            if top > RAM_BASE_PFN && base.0 < RAM_BASE_PFN + RAM_MAX_PAGES {
                                return Err(MmapError::DevicePfnInRam { start: base, pages });
                            }
                        } else if d.kind == DeviceKind::Pfnmap {
                            // The driver remaps RAM pages it owns (refcounted struct pages
                            // behind special entries).
                            let node = self.alloc_node_for(req.node);
                            let base = self
                                .frames
                                .alloc_driver_pages(pages, node)
                                .ok_or(MmapError::MissingPfn)?;
                            d.base_pfn = Some(base);
                        }
                        if d.kind == DeviceKind::Pfnmap {
                            flags |= VmFlags::IO | VmFlags::PFNMAP | VmFlags::DONTEXPAND;
                            if d.remap {
                                remap = d.base_pfn;
                            } else if !req.shared && req.prot.write {
                                // A driver's fault-driven pfnmap must be shared (vfio-pci
                                // refuses private maps: a private writable one would need COW of
                                // pfns). A read-only private one is what
                                // `_install_special_mapping()` makes for the vDSO's [vvar]
                                // (no VM_MAYWRITE: nothing can COW it), so it is allowed.
                                return Err(MmapError::PrivatePfnmap);
                            }
                        } else {
                            flags |= VmFlags::MIXEDMAP;
                            if d.base_pfn.is_none() {
                                file = self.new_file();
                            }
                        }
                    }
                    DeviceKind::DevDax => {
                        if !req.shared {
                            return Err(MmapError::PrivateDevDax);
                        }
                        let idle = if self.config.kernel.devmap_removed() {
                            0
                        } else {
                            1
                        };
                        let order = if pages % d.max_level.pages() == 0 {
                            d.max_level.order()
                        } else {
                            0
                        };
                        let (first, _) = self
                            .frames
                            .add_device_memory(pages, order, idle)
                            .ok_or(MmapError::MissingPfn)?;
                        d.base_pfn = Some(first);
                        flags |= VmFlags::HUGEPAGE;
                    }
                }
            }
        }
        let vma = Vma {
            start,
            end,
            flags,
            pgoff,
            backing,
            file,
            node: req.node,
            anon_vma: false,
        };
        self.space.vmas.insert(start.0, vma);
        if let Some(pfn) = remap {
            self.remap_pfn_range(start, pfn, req.len)
                .map_err(|_| MmapError::Overlap { start, end })?;
        }
        pgoff = 0;
        let _ = pgoff;
        Ok(start)
    }

    fn alloc_node_for(&self, node: Option<NodeId>) -> NodeId {
        node.unwrap_or(self.config.task_node)
    }

    fn new_file(&mut self) -> u32 {
        let f = self.next_file;
        self.next_file += 1;
        f
    }

    /// Models `remap_pfn_range()` (mm/memory.c): marks the VMA VM_IO|VM_PFNMAP|
    /// VM_DONTEXPAND, sets `vm_pgoff = pfn` for a COW mapping (which must be remapped
    /// whole), and fills every PTE with a special entry. No notifier (none → present).
    pub fn remap_pfn_range(
        &mut self,
        start: Hva,
        pfn: Pfn,
        len: u64,
    ) -> Result<OpReport, RemapPfnError> {
        let end = check_range(start, len)?;
        let Some(vma) = self.space.vma(start).cloned() else {
            return Err(RemapPfnError::Range(RangeError {
                start,
                len,
                problem: "no vma: mmap the range first",
            }));
        };
        if end > vma.end {
            return Err(RemapPfnError::Range(RangeError {
                start,
                len,
                problem: "range extends past the vma",
            }));
        }
        let mut vma = vma;
        if vma.is_cow_mapping() {
            if start != vma.start || end != vma.end {
                return Err(RemapPfnError::CowPartial);
            }
            vma.pgoff = pfn.0;
        }
        vma.flags |= VmFlags::IO | VmFlags::PFNMAP | VmFlags::DONTEXPAND;
        let mut va = start;
        while va < end {
            if self.space.pt.pte(va).is_some_and(|e| !e.is_none()) {
                return Err(RemapPfnError::Busy(va));
            }
            va = va.add(PAGE_SIZE);
        }
        self.space.vmas.insert(vma.start.0, vma.clone());
        let mut report = OpReport::new("remap-pfn-range", start, end);
        let mut va = start;
        let mut p = pfn;
        while va < end {
            self.set_pte(va, Entry::new(p, vma.page_prot() | Entry::SPECIAL));
            report.changed += 1;
            va = va.add(PAGE_SIZE);
            p = p.add(1);
        }
        Ok(report)
    }

    /// Zaps every leaf of `vma` in `[start, end)` (`unmap_page_range()` (mm/memory.c) →
    /// `zap_pud_range()`/`zap_pmd_range()`/`zap_pte_range()`): partly covered huge leaves are
    /// split first (a nested CLEAR; a non-anon huge leaf is then gone whole). Returns leaves
    /// zapped.
    pub(crate) fn zap_range(
        &mut self,
        vma: &Vma,
        start: Hva,
        end: Hva,
        even_cows: bool,
        notifier: &mut dyn MmuNotifier,
        log: &mut Vec<NotifierRange>,
    ) -> u64 {
        let mut n = 0;
        let mut leaves = Vec::new();
        self.space
            .pt
            .for_each_leaf(start, end, |va, level, e| leaves.push((va, level, e)));
        for (va, level, e) in leaves {
            let leaf_end = va.add(level.size());
            let partial = va < start || leaf_end > end;
            match level {
                Level::Pud1G => {
                    if partial {
                        self.split_huge_pud(va, notifier, log);
                    } else if let Some(s) = self.space.pt.pud_slot_mut(va, false) {
                        *s = PudSlot::None;
                        self.drop_leaf_ref(e);
                    }
                    n += 1;
                }
                Level::Pmd2M => {
                    if partial {
                        self.split_huge_pmd(vma, va, notifier, log);
                        n += self.zap_ptes(vma, start.max(va), end.min(leaf_end), even_cows);
                    } else {
                        if !even_cows && self.is_cow_anon(vma, e) {
                            continue;
                        }
                        if let Some(s) = self.space.pt.pmd_slot_mut(va, false) {
                            *s = PmdSlot::None;
                        }
                        self.drop_leaf_ref(e);
                        n += 1;
                    }
                }
                Level::Pte4K => {
                    if !even_cows && self.is_cow_anon(vma, e) {
                        continue;
                    }
                    if let Some(p) = self.space.pt.pte_mut(va, false) {
                        *p = Entry::NONE;
                    }
                    self.drop_leaf_ref(e);
                    n += 1;
                }
            }
        }
        n
    }

    fn is_cow_anon(&self, vma: &Vma, e: Entry) -> bool {
        !vma.is_anonymous()
            && self
                .leaf_ref_folio(e)
                .is_some_and(|id| self.frames.folios[id].has(ff::ANON))
    }

    fn zap_ptes(&mut self, vma: &Vma, start: Hva, end: Hva, even_cows: bool) -> u64 {
        let mut n = 0;
        let mut va = start;
        while va < end {
            let e = self.space.pt.pte(va).unwrap_or(Entry::NONE);
            if !e.is_none() && (even_cows || !self.is_cow_anon(vma, e)) {
                if let Some(p) = self.space.pt.pte_mut(va, false) {
                    *p = Entry::NONE;
                }
                self.drop_leaf_ref(e);
                n += 1;
            }
            va = va.add(PAGE_SIZE);
        }
        n
    }

    /// Models `munmap()` (mm/mmap.c) (`do_vmi_munmap()` → `unmap_vmas()`): one UNMAP [start, end)
    /// when any VMA intersects, then the VMAs are removed (split at the edges) and empty page
    /// tables freed.
    pub fn munmap(
        &mut self,
        start: Hva,
        len: u64,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<OpReport, MunmapError> {
        let end = check_range(start, len)?;
        let mut report = OpReport::new("munmap", start, end);
        self.do_munmap(start, end, notifier, &mut report);
        Ok(report)
    }

    /// `do_vmi_munmap()` (mm/vma.c) over `[start, end)`, adding its events and count to
    /// `report` (shared by [`Mm::munmap`] and [`Mm::mremap`]).
    pub(crate) fn do_munmap(
        &mut self,
        start: Hva,
        end: Hva,
        notifier: &mut dyn MmuNotifier,
        report: &mut OpReport,
    ) {
        if self.vmas_in(start, end).is_empty() {
            return;
        }
        self.split_vma_at(start);
        self.split_vma_at(end);
        let vmas = self.vmas_in(start, end);
        let range = NotifierRange::new(NotifierEvent::Unmap, start, end);
        let changed = self.notify_nested(notifier, &mut report.notifiers, range, |mm, n, log| {
            let mut changed = 0;
            for v in &vmas {
                changed += mm.zap_range(v, v.start, v.end, true, n, log);
            }
            changed
        });
        for v in &vmas {
            self.space.vmas.remove(&v.start.0);
        }
        self.space.pt.free_empty_tables(start, end);
        self.drop_unused_files();
        report.changed += changed;
    }

    /// Frees page caches no VMA refers to any more (the shmem file is closed).
    fn drop_unused_files(&mut self) {
        let mut used = std::collections::BTreeSet::new();
        for v in self.space.vmas.values() {
            used.insert(v.file);
        }
        for c in self.children.iter().flatten() {
            for v in c.vmas.values() {
                used.insert(v.file);
            }
        }
        let dead: Vec<(u32, u64)> = self
            .page_cache
            .keys()
            .filter(|(f, _)| !used.contains(f))
            .copied()
            .collect();
        for k in dead {
            if let Some(id) = self.page_cache.remove(&k) {
                self.frames.folios[id].flags &= !(ff::PAGECACHE | ff::DRIVER);
                self.frames.put(id, 1);
            }
        }
    }

    /// Models `mprotect()` (mm/mprotect.c) (`mprotect_fixup()` → `change_protection()`): per VMA
    /// piece, a PROTECTION_VMA range (see `change_protection`), entries rebuilt from the new
    /// `vm_page_prot`, kept writable where `can_change_pte_writable()` allows.
    pub fn mprotect(
        &mut self,
        start: Hva,
        len: u64,
        prot: Prot,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<OpReport, MprotectError> {
        let end = check_range(start, len)?;
        if !self.covered(start, end) {
            return Err(MprotectError::Hole { start, end });
        }
        for v in self.vmas_in(start, end) {
            if prot.write && !v.flags.contains(VmFlags::MAYWRITE) {
                return Err(MprotectError::NotMayWrite);
            }
        }
        self.split_vma_at(start);
        self.split_vma_at(end);
        let mut report = OpReport::new("mprotect", start, end);
        for mut v in self.vmas_in(start, end) {
            let keep = v
                .flags
                .without(VmFlags::READ | VmFlags::WRITE | VmFlags::EXEC);
            v.flags = keep;
            if prot.read {
                v.flags |= VmFlags::READ;
            }
            if prot.write {
                v.flags |= VmFlags::WRITE;
            }
            if prot.exec {
                v.flags |= VmFlags::EXEC;
            }
            self.space.vmas.insert(v.start.0, v.clone());
            let try_writable = v.wants_manual_write_upgrade();
            let c = self.change_protection(
                &v,
                v.start,
                v.end,
                ChangeKind::Mprotect { try_writable },
                notifier,
                &mut report.notifiers,
            );
            report.changed += c.changed;
        }
        Ok(report)
    }

    /// Models `madvise()` (mm/madvise.c): DONTNEED → `zap_page_range_single()` CLEAR per
    /// VMA piece; FREE → CLEAR per VMA piece, anon pages marked clean and old (lazy free);
    /// HUGEPAGE/NOHUGEPAGE → VMA flags only; COLLAPSE → `madvise_collapse()`.
    pub fn madvise(
        &mut self,
        start: Hva,
        len: u64,
        advice: Advice,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<OpReport, MadviseError> {
        let end = check_range(start, len)?;
        if !self.covered(start, end) {
            return Err(MadviseError::Hole { start, end });
        }
        let name = match advice {
            Advice::Dontneed => "madvise-dontneed",
            Advice::Free => "madvise-free",
            Advice::Hugepage => "madvise-hugepage",
            Advice::Nohugepage => "madvise-nohugepage",
            Advice::Collapse => "madvise-collapse",
        };
        let mut report = OpReport::new(name, start, end);
        let vmas = self.vmas_in(start, end);
        match advice {
            Advice::Dontneed | Advice::Free => {
                for v in &vmas {
                    if v.flags.contains(VmFlags::PFNMAP) {
                        return Err(MadviseError::Pfnmap { advice });
                    }
                    if advice == Advice::Free && !v.is_anonymous() {
                        return Err(MadviseError::Pfnmap { advice });
                    }
                }
                for v in vmas {
                    let (s, e) = (start.max(v.start), end.min(v.end));
                    let range = NotifierRange::new(NotifierEvent::Clear, s, e);
                    let log = &mut report.notifiers;
                    report.changed += self.notify_nested(notifier, log, range, |mm, n, log| {
                        if advice == Advice::Dontneed {
                            mm.zap_range(&v, s, e, true, n, log)
                        } else {
                            mm.lazyfree_range(&v, s, e, n, log)
                        }
                    });
                }
            }
            Advice::Hugepage | Advice::Nohugepage => {
                self.split_vma_at(start);
                self.split_vma_at(end);
                for mut v in self.vmas_in(start, end) {
                    if advice == Advice::Hugepage {
                        v.flags = v.flags.without(VmFlags::NOHUGEPAGE) | VmFlags::HUGEPAGE;
                    } else {
                        v.flags = v.flags.without(VmFlags::HUGEPAGE) | VmFlags::NOHUGEPAGE;
                    }
                    self.space.vmas.insert(v.start.0, v);
                    report.changed += 1;
                }
            }
            Advice::Collapse => {
                for v in vmas {
                    self.madvise_collapse(
                        &v,
                        start.max(v.start),
                        end.min(v.end),
                        notifier,
                        &mut report,
                    )?;
                }
            }
        }
        Ok(report)
    }

    /// `madvise_free_pte_range()` / `madvise_free_huge_pmd()`: exclusively mapped anon
    /// folios become clean and old; partly covered THPs are split.
    fn lazyfree_range(
        &mut self,
        vma: &Vma,
        start: Hva,
        end: Hva,
        notifier: &mut dyn MmuNotifier,
        nested: &mut Vec<NotifierRange>,
    ) -> u64 {
        let mut n = 0;
        let mut leaves = Vec::new();
        self.space
            .pt
            .for_each_leaf(start, end, |va, level, e| leaves.push((va, level, e)));
        for (va, level, e) in leaves {
            if level == Level::Pmd2M && (va < start || va.add(level.size()) > end) {
                self.split_huge_pmd(vma, va, notifier, nested);
                let mut a = start.max(va);
                while a < end.min(va.add(level.size())) {
                    if let Some(p) = self.space.pt.pte_mut(a, false) {
                        *p = p.clear(Entry::DIRTY | Entry::YOUNG);
                    }
                    a = a.add(PAGE_SIZE);
                    n += 1;
                }
                continue;
            }
            let Some(id) = self.leaf_ref_folio(e) else {
                continue;
            };
            if self.frames.folios[id].mapcount != 1
                && level == Level::Pte4K
                && self.frames.folios[id].order == 0
            {
                continue;
            }
            self.frames.folios[id].flags &= !ff::DIRTY;
            self.frames.folios[id].flags |= ff::LAZYFREE;
            let ne = e.clear(Entry::DIRTY | Entry::YOUNG);
            match level {
                Level::Pte4K => self.set_pte(va, ne),
                Level::Pmd2M => self.set_pmd(va, ne),
                Level::Pud1G => self.set_pud(va, ne),
            }
            n += 1;
        }
        n
    }

    /// Models `madvise_collapse()` → `collapse_huge_page()` (mm/khugepaged.c) for anonymous
    /// VMAs: each 2M-aligned block of the range that is PTE-mapped with at least one anon
    /// page becomes a THP under CLEAR [haddr, +2M). Fails (EAGAIN) when a page has extra
    /// references (GUP) or is shared; ENOMEM when the THP cannot be allocated.
    fn madvise_collapse(
        &mut self,
        vma: &Vma,
        start: Hva,
        end: Hva,
        notifier: &mut dyn MmuNotifier,
        report: &mut OpReport,
    ) -> Result<(), MadviseError> {
        if !vma.is_anonymous() || vma.flags.contains(VmFlags::NOHUGEPAGE) {
            return Err(MadviseError::Collapse {
                reason: "only anonymous VMAs without MADV_NOHUGEPAGE collapse in this model",
            });
        }
        let mut haddr = start.align_up(Level::Pmd2M);
        while haddr.add(Level::Pmd2M.size()) <= end {
            let hend = haddr.add(Level::Pmd2M.size());
            if !matches!(self.space.pt.pmd_slot(haddr), Some(PmdSlot::Table(_))) {
                haddr = hend;
                continue;
            }
            let mut olds = Vec::new();
            let mut va = haddr;
            let mut ok = true;
            while va < hend {
                let e = self.space.pt.pte(va).unwrap_or(Entry::NONE);
                if !e.is_none() {
                    if e.is_protnone() || !e.is_present() {
                        ok = false;
                    } else if let Some(id) = self.leaf_ref_folio(e) {
                        let f = &self.frames.folios[id];
                        if !f.has(ff::ANON) || f.mapcount != 1 || f.refcount != 1 {
                            ok = false;
                        }
                        olds.push((va, e));
                    }
                }
                va = va.add(PAGE_SIZE);
            }
            if olds.is_empty() {
                haddr = hend;
                continue;
            }
            if !ok {
                return Err(MadviseError::Collapse {
                    reason: "a page is shared or has extra references (EAGAIN)",
                });
            }
            let Some(id) = self.frames.alloc(9, self.alloc_node(vma)) else {
                return Err(MadviseError::Collapse {
                    reason: "the THP allocation failed (ENOMEM)",
                });
            };
            let range = NotifierRange::new(NotifierEvent::Clear, haddr, hend);
            self.notify(notifier, &mut report.notifiers, range, |mm| {
                let mut va = haddr;
                while va < hend {
                    let e = mm.space.pt.pte(va).unwrap_or(Entry::NONE);
                    mm.drop_leaf_ref(e);
                    va = va.add(PAGE_SIZE);
                }
                if let Some(s) = mm.space.pt.pmd_slot_mut(haddr, false) {
                    *s = PmdSlot::None;
                    mm.space.pt.tables[2] -= 1;
                }
                mm.new_anon_folio(id, vma);
                let e = mm.anon_entry(vma, Pfn(mm.frames.folios[id].pfn), Level::Pmd2M);
                mm.set_pmd(haddr, e);
            });
            report.changed += 1;
            haddr = hend;
        }
        Ok(())
    }

    /// Models `mremap()` (mm/mremap.c). Shrinking unmaps the tail (UNMAP); growing in place
    /// needs no notifier; a move (MREMAP_MAYMOVE when the tail is taken, or MREMAP_FIXED
    /// with `new_addr`) moves the page tables under UNMAP [old, old+len) and then unmaps
    /// the old range (a second UNMAP).
    pub fn mremap(
        &mut self,
        old: Hva,
        old_len: u64,
        new_len: u64,
        new_addr: Option<Hva>,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<(Hva, OpReport), MremapError> {
        let old_end = check_range(old, old_len)?;
        check_range(old, new_len)?;
        let Some(vma) = self.space.vma(old).cloned() else {
            return Err(MremapError::NotOneVma {
                start: old,
                len: old_len,
            });
        };
        if old_end > vma.end {
            return Err(MremapError::NotOneVma {
                start: old,
                len: old_len,
            });
        }
        if new_len > old_len && vma.flags.contains(VmFlags::DONTEXPAND) {
            // vma_to_resize(): VM_DONTEXPAND | VM_PFNMAP cannot grow.
            return Err(MremapError::DontExpand);
        }
        let mut report = OpReport::new("mremap", old, old_end);
        if new_addr.is_none() && new_len <= old_len {
            if new_len < old_len {
                self.do_munmap(old.add(new_len), old_end, notifier, &mut report);
            }
            return Ok((old, report));
        }
        if new_addr.is_none() && old_end == vma.end {
            let grow_end = old.add(new_len);
            if self.vmas_in(old_end, grow_end).is_empty() && grow_end.0 <= TASK_SIZE {
                let mut v = vma.clone();
                v.end = grow_end;
                self.space.vmas.insert(v.start.0, v);
                return Ok((old, report));
            }
        }
        // Move.
        let dest = match new_addr {
            Some(a) => a,
            None => {
                let last = self
                    .space
                    .vmas
                    .values()
                    .next_back()
                    .map(|v| v.end)
                    .unwrap_or(Hva(MMAP_BASE));
                last.align_up(Level::Pud1G)
            }
        };
        let dest_end = check_range(dest, new_len)?;
        if !self.vmas_in(dest, dest_end).is_empty() {
            return Err(MremapError::Overlap {
                start: dest,
                end: dest_end,
            });
        }
        self.split_vma_at(old);
        self.split_vma_at(old_end);
        let moved_len = old_len.min(new_len);
        let src = self.space.vma(old).cloned().expect("split vma exists");
        let mut nv = src.clone();
        nv.start = dest;
        nv.end = dest_end;
        self.space.vmas.insert(dest.0, nv);
        // move_page_tables(): UNMAP over the old range while entries move.
        let range = NotifierRange::new(NotifierEvent::Unmap, old, old.add(old_len));
        self.notify(notifier, &mut report.notifiers, range, |mm| {
            let mut leaves = Vec::new();
            mm.space
                .pt
                .for_each_leaf(old, old.add(moved_len), |va, level, e| {
                    leaves.push((va, level, e))
                });
            for (va, level, e) in leaves {
                let to = dest.add(va.offset_from(old));
                let aligned = to.is_aligned(level);
                match level {
                    Level::Pte4K => {
                        if let Some(p) = mm.space.pt.pte_mut(va, false) {
                            *p = Entry::NONE;
                        }
                        mm.set_pte(to, e);
                    }
                    Level::Pmd2M if aligned && va.add(level.size()) <= old.add(moved_len) => {
                        if let Some(s) = mm.space.pt.pmd_slot_mut(va, false) {
                            *s = PmdSlot::None;
                        }
                        mm.set_pmd(to, e);
                    }
                    Level::Pud1G if aligned && va.add(level.size()) <= old.add(moved_len) => {
                        if let Some(s) = mm.space.pt.pud_slot_mut(va, false) {
                            *s = PudSlot::None;
                        }
                        mm.set_pud(to, e);
                    }
                    _ => {
                        // Misaligned huge leaf: drop it (the fault path re-creates it).
                        match level {
                            Level::Pmd2M => {
                                if let Some(s) = mm.space.pt.pmd_slot_mut(va, false) {
                                    *s = PmdSlot::None;
                                }
                            }
                            _ => {
                                if let Some(s) = mm.space.pt.pud_slot_mut(va, false) {
                                    *s = PudSlot::None;
                                }
                            }
                        }
                        mm.drop_leaf_ref(e);
                    }
                }
            }
        });
        self.do_munmap(old, old_end, notifier, &mut report);
        report.start = dest;
        report.end = dest_end;
        Ok((dest, report))
    }

    /// Models `fork()` → `dup_mmap()` → `copy_page_range()` (mm/memory.c): for each VMA
    /// that needs copying (anon_vma, PFNMAP/MIXEDMAP, uffd-wp), a COW VMA gets
    /// PROTECTION_PAGE [vm_start, vm_end) while its writable anon entries are
    /// write-protected in parent and child and the folios lose PageAnonExclusive; a
    /// maybe-pinned anon page is copied for the child right away (`copy_present_page()`).
    /// Shared and file mappings without anon pages are not copied (the child faults).
    pub fn fork(
        &mut self,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<(ChildId, OpReport), ForkError> {
        let mut report = OpReport::new("fork", Hva(0), Hva(TASK_SIZE));
        let mut child = AddrSpace {
            vmas: Default::default(),
            pt: PageTable::new(),
            write_protect_seq: 0,
        };
        self.space.write_protect_seq += 1;
        let vmas: Vec<Vma> = self.space.vmas.values().cloned().collect();
        for v in vmas {
            if v.flags.contains(VmFlags::DONTCOPY) {
                continue;
            }
            child.vmas.insert(v.start.0, v.clone());
            let needs_copy = v.anon_vma
                || v.flags
                    .intersects(VmFlags::PFNMAP | VmFlags::MIXEDMAP | VmFlags::UFFD_WP);
            if !needs_copy {
                continue;
            }
            let cow = v.is_cow_mapping();
            let range = NotifierRange::new(NotifierEvent::ProtectionPage, v.start, v.end);
            if cow {
                notifier.invalidate_range_start(&range);
                report.notifiers.push(range);
            }
            let r = self.copy_vma_tables(&v, cow, &mut child, notifier, &mut report);
            if cow {
                notifier.invalidate_range_end(&range);
            }
            r?;
        }
        self.space.write_protect_seq += 1;
        self.children.push(Some(child));
        Ok((ChildId(self.children.len() - 1), report))
    }

    fn copy_vma_tables(
        &mut self,
        v: &Vma,
        cow: bool,
        child: &mut AddrSpace,
        notifier: &mut dyn MmuNotifier,
        report: &mut OpReport,
    ) -> Result<(), ForkError> {
        // Pinned THPs are split first (copy_huge_pmd() returns -EAGAIN).
        let mut leaves = Vec::new();
        self.space
            .pt
            .for_each_leaf(v.start, v.end, |va, level, e| leaves.push((va, level, e)));
        for (va, level, e) in &leaves {
            if *level == Level::Pmd2M && cow {
                if let Some(id) = self.leaf_ref_folio(*e) {
                    if self.frames.folios[id].pincount > 0 && self.frames.folios[id].has(ff::ANON) {
                        self.split_huge_pmd(v, *va, notifier, &mut report.notifiers);
                    }
                }
            }
        }
        let mut leaves = Vec::new();
        self.space
            .pt
            .for_each_leaf(v.start, v.end, |va, level, e| leaves.push((va, level, e)));
        for (va, level, e) in leaves {
            let mut ce = e;
            if e.is_present() {
                if let Some(id) = self.leaf_ref_folio(e) {
                    let f = &self.frames.folios[id];
                    if f.has(ff::ANON) && cow && f.pincount > 0 && level == Level::Pte4K {
                        // copy_present_page(): the child gets its own copy now.
                        let nid = self.frames.alloc(0, NodeId(f.node)).ok_or(ForkError::Oom)?;
                        let nf = &mut self.frames.folios[nid];
                        nf.flags |= ff::ANON | ff::ANON_EXCLUSIVE | ff::DIRTY;
                        nf.mapcount = 1;
                        let pfn = Pfn(nf.pfn);
                        let child_e = v.maybe_mkwrite(Entry::new(pfn, e.0).set(Entry::DIRTY));
                        set_leaf(&mut child.pt, va, level, child_e);
                        continue;
                    }
                    self.frames.get(id, 1);
                    let f = &mut self.frames.folios[id];
                    f.mapcount += 1;
                    if f.has(ff::ANON) {
                        f.flags &= !ff::ANON_EXCLUSIVE;
                    }
                    if cow && e.is_write() {
                        let wp = e.clear(Entry::WRITE);
                        set_leaf(&mut self.space.pt, va, level, wp);
                        ce = wp;
                    }
                } else if cow && e.is_write() {
                    let wp = e.clear(Entry::WRITE);
                    set_leaf(&mut self.space.pt, va, level, wp);
                    ce = wp;
                }
            }
            if v.flags.contains(VmFlags::SHARED) {
                ce = ce.clear(Entry::DIRTY);
            }
            ce = ce.clear(Entry::YOUNG);
            set_leaf(&mut child.pt, va, level, ce);
        }
        Ok(())
    }

    /// The child's view: runs `f` with the child's address space swapped in.
    fn with_child<R>(&mut self, id: ChildId, f: impl FnOnce(&mut Mm) -> R) -> Option<R> {
        let mut space = self.children.get_mut(id.0)?.take()?;
        std::mem::swap(&mut self.space, &mut space);
        let r = f(self);
        std::mem::swap(&mut self.space, &mut space);
        self.children[id.0] = Some(space);
        Some(r)
    }

    /// A user access by the forked child (its faults notify no one).
    pub fn child_access(
        &mut self,
        id: ChildId,
        hva: Hva,
        write: bool,
    ) -> Option<Result<OpReport, AccessError>> {
        self.with_child(id, |mm| mm.user_access(hva, write, &mut NoNotifier))
    }

    /// The forked child exits (`exit_mmap()` (mm/mmap.c)): its mappings are dropped.
    pub fn child_exit(&mut self, id: ChildId) -> bool {
        let done = self
            .with_child(id, |mm| {
                let vmas: Vec<Vma> = mm.space.vmas.values().cloned().collect();
                for v in vmas {
                    mm.zap_range(&v, v.start, v.end, true, &mut NoNotifier, &mut Vec::new());
                }
                mm.space.vmas.clear();
            })
            .is_some();
        if done {
            self.children[id.0] = None;
            self.drop_unused_files();
        }
        done
    }

    /// Models `exit_mmap()` (mm/mmap.c): `mmu_notifier_release()` (subscribers are gone before
    /// `unmap_vmas()`, so they see no UNMAP), then every mapping is dropped.
    pub fn exit(&mut self, notifier: &mut dyn MmuNotifier) -> OpReport {
        notifier.release();
        let mut report = OpReport::new("exit", Hva(0), Hva(TASK_SIZE));
        let vmas: Vec<Vma> = self.space.vmas.values().cloned().collect();
        for v in vmas {
            report.changed +=
                self.zap_range(&v, v.start, v.end, true, &mut NoNotifier, &mut Vec::new());
        }
        self.space.vmas.clear();
        self.space.pt = PageTable::new();
        self.drop_unused_files();
        report
    }

    /// Models one `task_numa_work()` (kernel/sched/fair.c) pass over `[start, start+len)`: VMAs
    /// that are not migratable (VM_IO/VM_PFNMAP/VM_MIXEDMAP, devices), inaccessible, or read-only
    /// file mappings are skipped; each other VMA piece, with its end rounded up to 2M, goes through
    /// `change_prot_numa()` (PROTECTION_VMA first, then the per-entry skip rules).
    pub fn numa_scan(
        &mut self,
        start: Hva,
        len: u64,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<OpReport, RangeError> {
        let end = check_range(start, len)?;
        let mut report = OpReport::new("numa-scan", start, end);
        for v in self.vmas_in(start, end) {
            if Self::numa_scan_skips_vma(&v) {
                report.skipped += 1;
                continue;
            }
            let s = start.max(v.start);
            let e = end.align_up(Level::Pmd2M).min(v.end);
            let c = self.change_protection(
                &v,
                s,
                e,
                ChangeKind::ProtNuma,
                notifier,
                &mut report.notifiers,
            );
            report.changed += c.changed;
            report.skipped += c.skipped;
        }
        Ok(report)
    }

    /// Models `migrate_pages()` (mm/migrate.c) / `move_pages()` of every folio mapped in the range
    /// to `node`: CLEAR of each folio span, new entries without notifier; folios with extra
    /// references (GUP) or pins are skipped.
    pub fn migrate(
        &mut self,
        start: Hva,
        len: u64,
        node: NodeId,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<OpReport, MigrateError> {
        let end = check_range(start, len)?;
        if node.0 >= self.config.nodes {
            return Err(MigrateError::NoSuchNode {
                node,
                nodes: self.config.nodes,
            });
        }
        let mut report = OpReport::new("migrate", start, end);
        for v in self.vmas_in(start, end) {
            let mut va = start.max(v.start);
            let e = end.min(v.end);
            while va < e {
                let m = self.lookup(va);
                let mut step = PAGE_SIZE;
                if let Some(m) = m {
                    step = m.leaf_start.add(m.level.size()).offset_from(va);
                    let folio = self
                        .vm_normal_page_entry(&v, va, m.entry, m.level)
                        .and_then(|p| self.frames.folio_of(p));
                    if let Some(id) = folio {
                        if self.frames.folios[id].node != node.0 {
                            let span = match m.level {
                                Level::Pte4K => self.folio_span(&v, va, id),
                                _ => (m.leaf_start, m.leaf_start.add(m.level.size())),
                            };
                            if self.migrate_folio(
                                &v,
                                id,
                                span,
                                node,
                                notifier,
                                &mut report.notifiers,
                            ) {
                                report.changed += 1;
                                step = span.1.offset_from(va).max(PAGE_SIZE);
                            } else {
                                report.skipped += 1;
                            }
                        }
                    }
                }
                va = va.add(step);
            }
        }
        Ok(report)
    }

    /// Models `split_huge_pmd()` (include/linux/huge_mm.h) over the range (e.g. the
    /// debugfs/`split_huge_pages` PMD step): CLEAR [haddr, +2M) per PMD leaf; PUD leaves: CLEAR 1G
    /// (cleared).
    pub fn thp_split(
        &mut self,
        start: Hva,
        len: u64,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<OpReport, RangeError> {
        let end = check_range(start, len)?;
        let mut report = OpReport::new("thp-split", start, end);
        for v in self.vmas_in(start, end) {
            let mut leaves = Vec::new();
            self.space
                .pt
                .for_each_leaf(start.max(v.start), end.min(v.end), |va, level, _| {
                    if level != Level::Pte4K {
                        leaves.push((va, level));
                    }
                });
            for (va, level) in leaves {
                if level == Level::Pmd2M {
                    self.split_huge_pmd(&v, va, notifier, &mut report.notifiers);
                } else {
                    self.split_huge_pud(va, notifier, &mut report.notifiers);
                }
                report.changed += 1;
            }
        }
        Ok(report)
    }

    /// Models `unmap_mapping_range()` (mm/memory.c) → `unmap_mapping_range_vma()` →
    /// `zap_page_range_single()` (device revoke / truncate) over the file- or device-backed
    /// VMAs in the range: CLEAR [start, end) per VMA piece, even COWed anon pages.
    pub fn unmap_mapping_range(
        &mut self,
        start: Hva,
        len: u64,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<OpReport, RangeError> {
        let end = check_range(start, len)?;
        let mut report = OpReport::new("unmap-mapping-range", start, end);
        for v in self.vmas_in(start, end) {
            if v.is_anonymous() {
                continue;
            }
            let (s, e) = (start.max(v.start), end.min(v.end));
            let range = NotifierRange::new(NotifierEvent::Clear, s, e);
            report.changed +=
                self.notify_nested(notifier, &mut report.notifiers, range, |mm, n, log| {
                    mm.zap_range(&v, s, e, true, n, log)
                });
        }
        Ok(report)
    }

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

    /// A user access (`copy_to_user()` (include/linux/uaccess.h) / `copy_from_user()`, or a CPU
    /// access by the process): checks the VMA permits it (`access_error()`), then takes faults
    /// until the entry permits the access. This is what KVM's emulator does on RET_PF_EMULATE.
    pub fn user_access(
        &mut self,
        hva: Hva,
        write: bool,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<OpReport, AccessError> {
        let mut report = OpReport::new(
            if write { "user-write" } else { "user-read" },
            hva,
            hva.add(1),
        );
        let mut faults: Vec<FaultReport> = Vec::new();
        for _ in 0..8 {
            let Some(vma) = self.space.vma(hva) else {
                return Err(AccessError::Fault {
                    hva,
                    outcome: FaultOutcome::Sigsegv,
                    faults,
                });
            };
            let permitted = if write {
                vma.flags.contains(VmFlags::WRITE)
            } else {
                vma.is_accessible()
            };
            if !permitted {
                return Err(AccessError::Fault {
                    hva,
                    outcome: FaultOutcome::Sigsegv,
                    faults,
                });
            }
            if self
                .lookup(hva)
                .is_some_and(|m| m.entry.access_permitted(write))
            {
                // The hardware sets A (and D on a write).
                if let Some(m) = self.lookup(hva) {
                    let bits = Entry::YOUNG | if write { Entry::DIRTY } else { 0 };
                    set_leaf(&mut self.space.pt, m.leaf_start, m.level, m.entry.set(bits));
                }
                return Ok(report);
            }
            let flags = FaultFlags::USER
                | if write {
                    FaultFlags::WRITE
                } else {
                    FaultFlags::empty()
                };
            let f = self.handle_mm_fault(hva, flags, notifier);
            report.host_faults.extend(f.handlers.iter().copied());
            report.notifiers.extend(f.notifiers.iter().copied());
            let outcome = f.outcome;
            faults.push(f);
            if outcome.is_error() {
                return Err(AccessError::Fault {
                    hva,
                    outcome,
                    faults,
                });
            }
        }
        Err(AccessError::Livelock {
            hva,
            tries: faults.len(),
        })
    }
}

impl Mm {
    /// Models reclaim of the range's folios (`shrink_folio_list()` (mm/vmscan.c) →
    /// `folio_referenced()` → `try_to_unmap_one()`) for what can go without swap: MADV_FREE'd
    /// (lazyfree) clean order-0 anon folios. A young one (PTE young or the subscriber's
    /// `clear_flush_young` on [addr, +4K)) is kept and aged; a re-dirtied or extra-referenced one
    /// is kept; others are discarded under CLEAR [addr, +4K) (the folio span) and freed, so the
    /// next read maps the zero page.
    pub fn reclaim(
        &mut self,
        start: Hva,
        len: u64,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<OpReport, RangeError> {
        let end = check_range(start, len)?;
        let mut report = OpReport::new("reclaim", start, end);
        let mut leaves = Vec::new();
        self.space.pt.for_each_leaf(start, end, |va, level, e| {
            if level == Level::Pte4K && e.is_present() && !e.is_protnone() {
                leaves.push((va, e));
            }
        });
        for (va, e) in leaves {
            let Some(id) = self.leaf_ref_folio(e) else {
                continue;
            };
            let f = &self.frames.folios[id];
            if !f.has(ff::ANON) || !f.has(ff::LAZYFREE) || f.order != 0 {
                continue;
            }
            let young = notifier.clear_flush_young(va, va.add(PAGE_SIZE)) | e.is_young();
            if young {
                self.set_pte(va, e.clear(Entry::YOUNG));
                report.skipped += 1;
                continue;
            }
            let f = &mut self.frames.folios[id];
            if e.is_dirty() || f.has(ff::DIRTY) || f.refcount != f.mapcount || f.mapcount != 1 {
                // Re-dirtied (or pinned/shared): back to swap-backed, kept.
                f.flags &= !ff::LAZYFREE;
                report.skipped += 1;
                continue;
            }
            let range = NotifierRange::new(NotifierEvent::Clear, va, va.add(PAGE_SIZE));
            self.notify(notifier, &mut report.notifiers, range, |mm| {
                set_leaf(&mut mm.space.pt, va, Level::Pte4K, Entry::NONE);
                mm.drop_leaf_ref(e);
            });
            report.changed += 1;
        }
        Ok(report)
    }

    /// Models `clear_refs_write()` with CLEAR_REFS_SOFT_DIRTY (fs/proc/task_mmu.c): one
    /// SOFT_DIRTY range [0, -1), VM_SOFTDIRTY cleared on every VMA (shared writable
    /// mappings become write-notify), every present entry write-protected with its
    /// soft-dirty bit cleared, except pinned exclusive anon pages in COW mappings.
    pub fn clear_refs_soft_dirty(&mut self, notifier: &mut dyn MmuNotifier) -> OpReport {
        let mut report = OpReport::new("clear-refs-soft-dirty", Hva(0), Hva(u64::MAX));
        let range = NotifierRange::new(NotifierEvent::SoftDirty, Hva(0), Hva(u64::MAX));
        let vmas: Vec<Vma> = self.space.vmas.values().cloned().collect();
        self.notify(notifier, &mut report.notifiers, range, |mm| {
            for mut v in vmas {
                v.flags = v.flags.without(VmFlags::SOFTDIRTY);
                mm.space.vmas.insert(v.start.0, v.clone());
                let mut leaves = Vec::new();
                mm.space.pt.for_each_leaf(v.start, v.end, |va, level, e| {
                    if e.is_present() {
                        leaves.push((va, level, e));
                    }
                });
                for (va, level, e) in leaves {
                    let pinned = v.is_cow_mapping()
                        && mm.leaf_ref_folio(e).is_some_and(|id| {
                            let f = &mm.frames.folios[id];
                            f.has(ff::ANON) && f.pincount > 0
                        });
                    if pinned {
                        continue;
                    }
                    set_leaf(
                        &mut mm.space.pt,
                        va,
                        level,
                        e.clear(Entry::WRITE | Entry::SOFT_DIRTY),
                    );
                    report.changed += 1;
                }
            }
        });
        report
    }
}

impl Mm {
    /// Models `split_huge_page()` / `split_folio()` (mm/huge_memory.c, e.g. the deferred
    /// split queue or debugfs `split_huge_pages`) of every large anonymous folio mapped in
    /// the range: `unmap_folio()` → `try_to_migrate(TTU_SPLIT_HUGE_PMD)` splits a PMD
    /// mapping first (CLEAR [haddr, +2M), frozen) and then sends CLEAR over the folio span;
    /// the folio becomes order-0 folios and `remap_page()` restores the entries without a
    /// notifier. Subpages no longer mapped anywhere are freed. A folio with extra
    /// references or pins cannot be split (`can_split_folio()` → -EAGAIN) and is skipped.
    pub fn split_huge_page(
        &mut self,
        start: Hva,
        len: u64,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<OpReport, RangeError> {
        let end = check_range(start, len)?;
        let mut report = OpReport::new("split-huge-page", start, end);
        let mut seen = std::collections::BTreeSet::new();
        let mut todo = Vec::new();
        self.space
            .pt
            .for_each_leaf(start, end, |va, _, e| todo.push((va, e)));
        for (va, e) in todo {
            let Some(id) = self.leaf_ref_folio(e) else {
                continue;
            };
            let f = &self.frames.folios[id];
            if f.order == 0 || !f.has(ff::ANON) || !seen.insert(f.pfn) {
                continue;
            }
            if f.refcount != f.mapcount || f.pincount > 0 {
                report.skipped += 1;
                continue;
            }
            let Some(vma) = self.space.vma(va).cloned() else {
                continue;
            };
            let head = Pfn(f.pfn);
            let pages = f.nr_pages();
            let span = self.folio_span(&vma, va, id);
            if matches!(
                self.space.pt.walk(va),
                super::pagetable::Walk::Leaf(Level::Pmd2M, _)
            ) {
                self.split_huge_pmd(&vma, va, notifier, &mut report.notifiers);
            }
            let range = NotifierRange::new(NotifierEvent::Clear, span.0, span.1);
            self.notify(notifier, &mut report.notifiers, range, |mm| {
                // Children's PMD mappings are split too (their mm has no subscriber here).
                for c in 0..mm.children.len() {
                    mm.with_child(ChildId(c), |cm| {
                        let mut pmds = Vec::new();
                        cm.space
                            .pt
                            .for_each_leaf(Hva(0), Hva(TASK_SIZE), |cva, level, ce| {
                                if level == Level::Pmd2M && ce.pfn() == head {
                                    pmds.push(cva);
                                }
                            });
                        for cva in pmds {
                            if let Some(cv) = cm.space.vma(cva).cloned() {
                                cm.split_huge_pmd(&cv, cva, &mut NoNotifier, &mut Vec::new());
                            }
                        }
                    });
                }
                // Count the mappings of each subpage in every address space.
                let mut counts = vec![0i32; usize::try_from(pages).unwrap_or(0)];
                let spaces = std::iter::once(&mm.space).chain(mm.children.iter().flatten());
                for sp in spaces {
                    sp.pt.for_each_leaf(Hva(0), Hva(TASK_SIZE), |_, level, le| {
                        let p = le.pfn().0;
                        if level == Level::Pte4K
                            && le.is_present()
                            && !le.is_special()
                            && p >= head.0
                            && p < head.0 + pages
                        {
                            counts[usize::try_from(p - head.0).unwrap_or(0)] += 1;
                        }
                    });
                }
                let ids = mm.frames.split_folio(id);
                for (sub, c) in ids.into_iter().zip(counts) {
                    let f = &mut mm.frames.folios[sub];
                    f.mapcount = c;
                    f.refcount = c;
                    if c == 0 {
                        // Unmapped tail pages go back to the allocator.
                        f.refcount = 1;
                        mm.frames.put(sub, 1);
                    }
                }
            });
            report.changed += 1;
        }
        Ok(report)
    }
}

#[cfg(test)]
#[path = "ops_tests.rs"]
mod tests;
