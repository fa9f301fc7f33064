//! Device-driver mappings: the `vm_operations_struct` callbacks of a pfnmap, mixedmap or
//! device-dax VMA, as declarative behaviour.
//!
//! A driver here is data (which pfns it maps, the largest leaf its `huge_fault` inserts,
//! whether it inserts with mkwrite, whether it has `pfn_mkwrite`), so scenarios can describe
//! it and fork can copy it. The fault handlers that act on it live in `host::fault`
//! (`device_fault`, `device_huge_fault`), modelled on vfio-pci's `vfio_pci_mmap_huge_fault()`
//! and device-dax's `dev_dax_huge_fault()`.

use crate::types::{Level, Pfn};
use serde::{Deserialize, Serialize};

/// Which kind of driver mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceKind {
    /// VM_PFNMAP|VM_IO: raw pfns, inserted at fault time with `vmf_insert_pfn_prot()` /
    /// `vmf_insert_pfn_pmd/pud()` (vfio-pci BARs), or all at once with `remap_pfn_range()`
    /// at mmap when [`DeviceSpec::remap`] is set.
    Pfnmap,
    /// VM_MIXEDMAP: `vmf_insert_mixed()`; pfns with a struct page are mapped as normal
    /// refcounted pages, others as special entries.
    Mixedmap,
    /// device-dax: ZONE_DEVICE pages (created at mmap) mapped with devmap entries (6.12) or
    /// as normal folios (6.17+).
    DevDax,
}

/// A driver mapping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSpec {
    /// Kind of mapping.
    pub kind: DeviceKind,
    /// pfn mapped at file offset 0 (`vm_pgoff` 0). For `DevDax`, filled in at mmap with the
    /// first ZONE_DEVICE pfn; for `Mixedmap`, `None` means "the driver allocates RAM pages"
    /// (`vm_insert_page()` style); for `Pfnmap`, `None` means the driver allocates
    /// contiguous RAM pages it keeps a reference on and maps them as special pfnmap
    /// entries (struct pages behind a VM_PFNMAP; filled in at mmap).
    pub base_pfn: Option<Pfn>,
    /// Largest leaf the driver's `huge_fault` inserts (`Pte4K`: no `huge_fault`).
    pub max_level: Level,
    /// The driver inserts with mkwrite on a write fault (`vmf_insert_mixed_mkwrite()`), so
    /// one fault suffices.
    pub mkwrite: bool,
    /// The driver has `pfn_mkwrite` (so a shared writable mapping is write-notify).
    pub pfn_mkwrite: bool,
    /// The driver has `page_mkwrite` (write-notify too).
    pub page_mkwrite: bool,
    /// Populate everything at mmap with `remap_pfn_range()` (like /dev/mem); no `fault`.
    pub remap: bool,
}

impl DeviceSpec {
    /// A fault-driven pfnmap of `base_pfn` (vfio-pci style), 4K only, no mkwrite.
    pub fn pfnmap(base_pfn: Pfn) -> Self {
        DeviceSpec {
            kind: DeviceKind::Pfnmap,
            base_pfn: Some(base_pfn),
            max_level: Level::Pte4K,
            mkwrite: false,
            pfn_mkwrite: false,
            page_mkwrite: false,
            remap: false,
        }
    }
    /// A device-dax mapping (`drivers/dax/device.c`): the driver allocates ZONE_DEVICE
    /// pages behind a new pgmap, 4K only, no mkwrite.
    pub fn devdax() -> Self {
        DeviceSpec {
            kind: DeviceKind::DevDax,
            base_pfn: None,
            ..DeviceSpec::pfnmap(Pfn(0))
        }
    }
    /// `self` with a different largest leaf.
    pub fn with_max_level(mut self, level: Level) -> Self {
        self.max_level = level;
        self
    }
    /// `self` populated with `remap_pfn_range()` (mm/memory.c) at mmap.
    pub fn remapped(mut self) -> Self {
        self.remap = true;
        self
    }
}
