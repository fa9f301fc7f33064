//! Operations users script: mmap, munmap, mprotect, madvise, mremap, fork, NUMA scan,
//! migration, THP split/collapse, unmap_mapping_range, remap_pfn_range and aging. Each
//! emits the notifier events and ranges of spec table 2.6.

use super::fault::{FaultReport, HostFault};
use super::vma::{Backing, Prot};
use super::{ChildId, Mm};
use crate::notifier::{MmuNotifier, NotifierRange};
use crate::types::{Hva, NodeId, Pfn};
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
    /// A pfnmap needs base_pfn: set it to the device's first pfn
    #[error("A pfnmap needs base_pfn: set it to the device's first pfn")]
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

#[allow(missing_docs)]
impl Mm {
    pub fn mmap(&mut self, req: MmapRequest) -> Result<Hva, MmapError> {
        todo!("mmap {req:?}")
    }
    pub fn munmap(
        &mut self,
        start: Hva,
        len: u64,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<OpReport, MunmapError> {
        let _ = notifier;
        todo!("munmap {start} {len}")
    }
    pub fn mprotect(
        &mut self,
        start: Hva,
        len: u64,
        prot: Prot,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<OpReport, MprotectError> {
        let _ = (notifier, prot);
        todo!("mprotect {start} {len}")
    }
    pub fn madvise(
        &mut self,
        start: Hva,
        len: u64,
        advice: Advice,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<OpReport, MadviseError> {
        let _ = (notifier, advice);
        todo!("madvise {start} {len}")
    }
    pub fn mremap(
        &mut self,
        old: Hva,
        old_len: u64,
        new_len: u64,
        new_addr: Option<Hva>,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<(Hva, OpReport), MremapError> {
        let _ = (notifier, new_addr, new_len);
        todo!("mremap {old} {old_len}")
    }
    pub fn fork(
        &mut self,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<(ChildId, OpReport), ForkError> {
        let _ = notifier;
        todo!("fork")
    }
    pub fn numa_scan(
        &mut self,
        start: Hva,
        len: u64,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<OpReport, RangeError> {
        let _ = notifier;
        todo!("numa_scan {start} {len}")
    }
    pub fn migrate(
        &mut self,
        start: Hva,
        len: u64,
        node: NodeId,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<OpReport, MigrateError> {
        let _ = (notifier, node);
        todo!("migrate {start} {len}")
    }
    pub fn thp_split(
        &mut self,
        start: Hva,
        len: u64,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<OpReport, RangeError> {
        let _ = notifier;
        todo!("split {start} {len}")
    }
    pub fn unmap_mapping_range(
        &mut self,
        start: Hva,
        len: u64,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<OpReport, RangeError> {
        let _ = notifier;
        todo!("unmap_mapping_range {start} {len}")
    }
    pub fn remap_pfn_range(
        &mut self,
        start: Hva,
        pfn: Pfn,
        len: u64,
    ) -> Result<OpReport, RemapPfnError> {
        todo!("remap {start} {pfn} {len}")
    }
    pub fn clear_young(
        &mut self,
        start: Hva,
        len: u64,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<OpReport, RangeError> {
        let _ = notifier;
        todo!("clear_young {start} {len}")
    }
    pub fn test_young(
        &mut self,
        start: Hva,
        len: u64,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<OpReport, RangeError> {
        let _ = notifier;
        todo!("test_young {start} {len}")
    }
    pub fn user_access(
        &mut self,
        hva: Hva,
        write: bool,
        notifier: &mut dyn MmuNotifier,
    ) -> Result<OpReport, AccessError> {
        let _ = notifier;
        todo!("user_access {hva} {write}")
    }
}
