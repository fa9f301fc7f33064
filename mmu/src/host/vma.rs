//! Virtual memory areas: flags, `vm_pgoff`, backing and the derived `vm_page_prot`.

use super::device::DeviceSpec;
use super::pte::Entry;
use crate::types::{flag_set, Hva, Level, NodeId};
use serde::{Deserialize, Serialize};

flag_set!(
    /// `vm_flags_t` (include/linux/mm.h).
    VmFlags {
        /// VM_READ
        READ = 0,
        /// VM_WRITE
        WRITE = 1,
        /// VM_EXEC
        EXEC = 2,
        /// VM_SHARED
        SHARED = 3,
        /// VM_MAYREAD
        MAYREAD = 4,
        /// VM_MAYWRITE
        MAYWRITE = 5,
        /// VM_MAYEXEC
        MAYEXEC = 6,
        /// VM_MAYSHARE
        MAYSHARE = 7,
        /// VM_UFFD_MISSING
        UFFD_MISSING = 9,
        /// VM_PFNMAP: raw pfns, no struct page to be refcounted.
        PFNMAP = 10,
        /// VM_UFFD_WP
        UFFD_WP = 12,
        /// VM_IO: memory-mapped I/O.
        IO = 14,
        /// VM_DONTCOPY
        DONTCOPY = 17,
        /// VM_DONTEXPAND
        DONTEXPAND = 18,
        /// VM_MIXEDMAP: pfns with or without struct page.
        MIXEDMAP = 28,
        /// VM_HUGEPAGE (MADV_HUGEPAGE).
        HUGEPAGE = 29,
        /// VM_NOHUGEPAGE (MADV_NOHUGEPAGE).
        NOHUGEPAGE = 30,
        /// VM_SOFTDIRTY
        SOFTDIRTY = 27,
        /// VM_HUGETLB: a hugetlbfs mapping.
        HUGETLB = 22,
        /// VM_MERGEABLE: MADV_MERGEABLE, KSM may merge its anonymous pages.
        MERGEABLE = 31,
        /// VM_UFFD_MINOR (bit 41 in Linux, which the model's 32-bit set lacks: a free bit
        /// here).
        UFFD_MINOR = 26,
    }
);

/// `PROT_*` of mmap/mprotect.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
pub struct Prot {
    /// PROT_READ
    pub read: bool,
    /// PROT_WRITE
    pub write: bool,
    /// PROT_EXEC
    pub exec: bool,
}

impl Prot {
    /// PROT_NONE
    pub const NONE: Prot = Prot {
        read: false,
        write: false,
        exec: false,
    };
    /// PROT_READ
    pub const R: Prot = Prot {
        read: true,
        write: false,
        exec: false,
    };
    /// PROT_READ|PROT_WRITE
    pub const RW: Prot = Prot {
        read: true,
        write: true,
        exec: false,
    };
    /// PROT_READ|PROT_WRITE|PROT_EXEC
    pub const RWX: Prot = Prot {
        read: true,
        write: true,
        exec: true,
    };
}

/// Unknown protection {0:?}: use "none", "r", "rw", "rx" or "rwx".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Unknown protection {0:?}: use \"none\", \"r\", \"rw\", \"rx\" or \"rwx\"")]
pub struct ParseProtError(pub String);

impl std::str::FromStr for Prot {
    type Err = ParseProtError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t == "none" {
            return Ok(Prot::NONE);
        }
        let mut p = Prot::NONE;
        for c in t.chars() {
            match c {
                'r' if !p.read => p.read = true,
                'w' if !p.write => p.write = true,
                'x' if !p.exec => p.exec = true,
                _ => return Err(ParseProtError(s.to_string())),
            }
        }
        if t.is_empty() {
            return Err(ParseProtError(s.to_string()));
        }
        Ok(p)
    }
}

/// What backs a mapping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backing {
    /// Anonymous memory (private: COW; shared: shmem).
    Anon,
    /// A shmem file (memfd); private mappings of it COW on write.
    Shmem,
    /// A device driver mapping (pfnmap, mixedmap or device-dax).
    Device(DeviceSpec),
    /// A hugetlbfs file (`MAP_HUGETLB` or `memfd_create(MFD_HUGETLB)`) with huge pages of
    /// this level's size (2M or 1G).
    Hugetlb(Level),
}

/// One VMA (`struct vm_area_struct`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vma {
    /// `vm_start`
    pub start: Hva,
    /// `vm_end`
    pub end: Hva,
    /// `vm_flags`
    pub flags: VmFlags,
    /// `vm_pgoff`: file page offset of `start`; for a COW remap_pfn_range, the first pfn.
    pub pgoff: u64,
    /// What backs it.
    pub backing: Backing,
    /// Page-cache file id (shmem, and anonymous shared mappings).
    pub file: u32,
    /// Memory policy: the node new pages come from (`None`: the faulting task's node).
    pub node: Option<NodeId>,
    /// `vma->anon_vma` is set (anonymous pages were mapped): fork must copy the tables.
    pub anon_vma: bool,
}

impl Vma {
    /// `vma_is_anonymous()` (include/linux/mm.h): no vm_ops (private anonymous memory).
    pub fn is_anonymous(&self) -> bool {
        matches!(self.backing, Backing::Anon)
            && !self.flags.contains(VmFlags::SHARED)
            && self.file == 0
    }
    /// `vma_is_accessible()` (include/linux/mm.h): any of READ, WRITE, EXEC.
    pub fn is_accessible(&self) -> bool {
        self.flags
            .intersects(VmFlags::READ | VmFlags::WRITE | VmFlags::EXEC)
    }
    /// `is_cow_mapping()` (include/linux/mm.h): private and may be written.
    pub fn is_cow_mapping(&self) -> bool {
        is_cow_mapping(self.flags)
    }
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end.0 - self.start.0
    }
    /// True for an empty vma (never stored).
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
    /// True when `hva` lies in `[start, end)`.
    pub fn contains(&self, hva: Hva) -> bool {
        self.start <= hva && hva < self.end
    }
    /// The device behind a driver mapping.
    pub fn device(&self) -> Option<&DeviceSpec> {
        match &self.backing {
            Backing::Device(d) => Some(d),
            _ => None,
        }
    }
    /// `linear_page_index()` (include/linux/pagemap.h): file page offset of `hva`.
    pub fn linear_page_index(&self, hva: Hva) -> u64 {
        self.pgoff + (hva.offset_from(self.start) >> 12)
    }
    /// `vma_wants_writenotify()` (mm/mmap.c): a shared writable mapping whose driver wants
    /// to hear about writes (`page_mkwrite`/`pfn_mkwrite`), or soft-dirty/uffd-wp tracking.
    pub fn wants_writenotify(&self) -> bool {
        if !self.flags.contains(VmFlags::WRITE | VmFlags::SHARED) {
            return false;
        }
        if let Some(d) = self.device() {
            if d.pfn_mkwrite || d.page_mkwrite {
                return true;
            }
        }
        // vma_soft_dirty_enabled(): clear_refs cleared VM_SOFTDIRTY.
        self.flags.contains(VmFlags::UFFD_WP) || !self.flags.contains(VmFlags::SOFTDIRTY)
    }
    /// `vm_get_page_prot()` (arch/x86/mm/pgprot.c) + writenotify: the entry bits a fresh mapping
    /// gets. Private mappings are never writable here (COW happens on write); PROT_NONE maps
    /// protnone.
    pub fn page_prot(&self) -> u64 {
        if !self.is_accessible() {
            return Entry::PROTNONE | Entry::YOUNG;
        }
        // x86 protection_map entries carry _PAGE_ACCESSED.
        let mut p = Entry::PRESENT | Entry::USER | Entry::YOUNG;
        if self.flags.contains(VmFlags::SHARED | VmFlags::WRITE) && !self.wants_writenotify() {
            p |= Entry::WRITE;
        }
        p
    }
    /// `vma_wants_manual_pte_write_upgrade()` (mm/vma.h): writable but `vm_page_prot` lacks RW.
    pub fn wants_manual_write_upgrade(&self) -> bool {
        if self.flags.contains(VmFlags::SHARED) {
            self.wants_writenotify()
        } else {
            self.flags.contains(VmFlags::WRITE)
        }
    }
    /// `maybe_mkwrite()` (include/linux/mm.h): RW only if VM_WRITE.
    pub fn maybe_mkwrite(&self, e: Entry) -> Entry {
        if self.flags.contains(VmFlags::WRITE) {
            e.set(Entry::WRITE)
        } else {
            e
        }
    }
}

/// `is_cow_mapping()` (include/linux/mm.h): `(flags & (VM_SHARED|VM_MAYWRITE)) == VM_MAYWRITE`.
pub fn is_cow_mapping(flags: VmFlags) -> bool {
    flags.contains(VmFlags::MAYWRITE) && !flags.contains(VmFlags::SHARED)
}

/// `calc_vm_prot_bits()` (include/linux/mman.h) + `calc_vm_flag_bits()` for an mmap.
pub fn vm_flags_for(prot: Prot, shared: bool) -> VmFlags {
    let mut f = VmFlags::MAYREAD | VmFlags::MAYWRITE | VmFlags::MAYEXEC | VmFlags::SOFTDIRTY;
    if prot.read {
        f |= VmFlags::READ;
    }
    if prot.write {
        f |= VmFlags::WRITE;
    }
    if prot.exec {
        f |= VmFlags::EXEC;
    }
    if shared {
        f |= VmFlags::SHARED | VmFlags::MAYSHARE;
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Models `is_cow_mapping()` (include/linux/mm.h).
    #[test]
    fn cow_mapping_is_private_maywrite() {
        assert!(is_cow_mapping(vm_flags_for(Prot::R, false)));
        assert!(!is_cow_mapping(vm_flags_for(Prot::RW, true)));
        assert_eq!("rw".parse::<Prot>(), Ok(Prot::RW));
        assert!("rq".parse::<Prot>().is_err());
    }
}
