//! Models mm/mmap.c and mm/vma.c: `mmap()`, `munmap()` (`do_vmi_munmap()`) and `exit_mmap()`.

use super::*;
use crate::host::device::DeviceKind;
use crate::host::folio::{ff, RAM_BASE_PFN, RAM_MAX_PAGES};
use crate::host::pagetable::PageTable;
use crate::host::vma::{vm_flags_for, Backing, Prot, VmFlags, Vma};
use crate::host::Mm;
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
    /// A hugetlb mapping must start and end on its huge page size (EINVAL)
    #[error("A hugetlb mapping [{start}, +{len:#x}) must start and end on a {level:?} boundary (EINVAL): align it to the huge page size")]
    HugetlbUnaligned {
        /// Start.
        start: Hva,
        /// Length.
        len: u64,
        /// The huge page size (PMD 2M or PUD 1G; 4K is no hugetlb size).
        level: Level,
    },
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
    /// {addr} splits a hugetlb VMA off its huge page size (EINVAL, `hugetlb_vm_op_split()`)
    #[error("{addr} is inside a hugetlb VMA but not on its huge page size (EINVAL, hugetlb_vm_op_split()): align the range to the huge page size")]
    HugetlbSplit {
        /// The unaligned address.
        addr: Hva,
    },
}

impl Mm {
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
            Backing::Hugetlb(level) => {
                // hugetlbfs_file_mmap() / hugetlb_get_unmapped_area(): the address and the
                // length must be huge-page aligned (EINVAL); the VMA gets
                // VM_HUGETLB | VM_DONTEXPAND and its own hugetlbfs file.
                let level = *level;
                if level == Level::Pte4K || !start.is_aligned(level) || req.len % level.size() != 0
                {
                    return Err(MmapError::HugetlbUnaligned {
                        start,
                        len: req.len,
                        level,
                    });
                }
                flags |= VmFlags::HUGETLB | VmFlags::DONTEXPAND;
                file = self.new_file();
            }
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
        if let Some(addr) = [start, end]
            .into_iter()
            .find(|&a| self.hugetlb_split_refused(a))
        {
            return Err(MunmapError::HugetlbSplit { addr });
        }
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
    pub(super) fn drop_unused_files(&mut self) {
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
}

#[cfg(test)]
mod tests {
    use crate::host::testutil::*;
    use crate::host::*;

    use crate::notifier::{NotifierEvent::*, NotifierLog};
    use crate::types::{Hva, KernelVersion, Pfn};

    /// Models `unmap_vmas()` via munmap: one UNMAP [start, end) across VMAs; pages freed.
    #[test]
    fn munmap_sends_one_unmap_over_the_range_and_frees() {
        let mut mm = mm(KernelVersion::V6_12);
        let a = anon(&mut mm, 8 * M2, false);
        w(&mut mm, a.add(0x1000));
        let pfn = mm.lookup(a.add(0x1000)).unwrap().pfn;
        let mut log = NotifierLog::new();
        let r = mm.munmap(a, 2 * M2, &mut log).unwrap();
        assert_eq!(triples(&r.notifiers), vec![(Unmap, a.0, a.0 + 2 * M2)]);
        assert_eq!(log.start_triples(), triples(&r.notifiers));
        assert!(mm.folio_info(pfn).is_none());
        assert_eq!(
            mm.find_vma(a.add(2 * M2)).unwrap().start,
            a.add(2 * M2),
            "vma split"
        );
        assert!(mm.find_vma(a).is_none());
        ok(&mm);
        let r = mm.munmap(a, M2, &mut log).unwrap();
        assert!(r.notifiers.is_empty(), "no vma, no notifier");
    }

    /// Models `exit_mmap()`: release() reaches the subscriber, no UNMAP; everything is freed.
    #[test]
    fn exit_sends_release_only() {
        let mut mm = mm(KernelVersion::V6_12);
        let a = anon(&mut mm, M2, false);
        w(&mut mm, a);
        let mut log = NotifierLog::new();
        mm.exit(&mut log);
        assert_eq!(log.calls, vec![crate::notifier::NotifierCall::Release]);
        assert_eq!(mm.memory_use().allocated_pages, 0);
    }

    /// Models `_install_special_mapping()` of the vDSO's [vvar]: a private, read-only,
    /// fault-driven VM_PFNMAP is allowed (nothing can COW it); a private writable one is not
    /// (vfio-pci's rule).
    #[test]
    fn a_private_read_only_fault_driven_pfnmap_is_allowed() {
        let mut mm = mm(KernelVersion::V6_18);
        let mut req = MmapRequest::anon(BASE, 0x4000);
        req.prot = Prot::R;
        req.backing = Backing::Device(DeviceSpec::pfnmap(Pfn(0x100)));
        assert!(mm.mmap(req).is_ok());
        let mut req = MmapRequest::anon(Hva(BASE.0 + G1), 0x4000);
        req.backing = Backing::Device(DeviceSpec::pfnmap(Pfn(0x200)));
        assert_eq!(mm.mmap(req), Err(MmapError::PrivatePfnmap));
    }
}
