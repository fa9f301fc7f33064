//! Guest RAM: the host mapping behind each guest-physical range (`--backing`).
//!
//! Guest-physical layout: RAM starts at 0. Up to [`MMIO_HOLE_START`] (3 GiB) it is one
//! region; above that the rest of RAM moves to 4 GiB, leaving the usual x86 hole
//! 3 GiB..4 GiB for MMIO (where the LAPIC and IOAPIC live).
//!
//! Each region is one host mapping wrapped in a vm-memory `MmapRegion`:
//!
//! | backing | mapping |
//! |---|---|
//! | anon | `mmap(MAP_PRIVATE \| MAP_ANONYMOUS \| MAP_NORESERVE)` |
//! | thp | the same plus `madvise(MADV_HUGEPAGE)` |
//! | shmem | `memfd_create()` + `ftruncate()`, `mmap(MAP_SHARED)` |
//! | hugetlb | `memfd_create(MFD_HUGETLB \| MFD_HUGE_2MB)`, `mmap(MAP_SHARED)`; needs reserved 2 MiB pages |

use crate::config::{format_size, Backing, MemoryConfig};
use std::fs::File;
use std::os::fd::FromRawFd;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

/// Start of the MMIO hole below 4 GiB.
pub const MMIO_HOLE_START: u64 = 3 << 30;
/// End of the MMIO hole (RAM resumes here).
pub const MMIO_HOLE_END: u64 = 4 << 30;
/// Size of a hugetlb page used by the hugetlb backing.
pub const HUGE_PAGE_SIZE: u64 = 2 << 20;

/// Errors creating guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum GuestRamError {
    /// Not enough free huge pages for the hugetlb backing.
    #[error(
        "--backing hugetlb needs {needed} free 2 MiB huge pages for {}, but only {free} are free \
         (vm.nr_hugepages = {total}); reserve them with: echo {want} | sudo tee /proc/sys/vm/nr_hugepages",
        format_size(*.needed * HUGE_PAGE_SIZE), want = *.total + *.needed - *.free
    )]
    NotEnoughHugePages {
        /// Pages needed.
        needed: u64,
        /// Pages free.
        free: u64,
        /// Pages in the pool.
        total: u64,
    },
    /// memfd_create failed.
    #[error("memfd_create for the {backing} backing failed: {source}")]
    Memfd {
        /// Backing.
        backing: Backing,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// ftruncate failed.
    #[error("Sizing the {backing} memfd to {} failed: {source}", format_size(*.size))]
    Truncate {
        /// Backing.
        backing: Backing,
        /// Size.
        size: u64,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// mmap failed.
    #[error("Mapping {} of guest RAM ({backing} backing) failed: {source}; try a smaller --memory", format_size(*.size))]
    Mmap {
        /// Backing.
        backing: Backing,
        /// Size.
        size: u64,
        /// vm-memory's error.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// madvise failed.
    #[error("madvise(MADV_HUGEPAGE) on guest RAM failed: {0}; is THP disabled (/sys/kernel/mm/transparent_hugepage/enabled = never)?")]
    Madvise(#[source] std::io::Error),
    /// A backing guest RAM cannot have (`VmConfig::validate` refuses it first).
    #[error("Guest RAM cannot be backed by {0}: use anon, thp, shmem or hugetlb")]
    Unsupported(Backing),
    /// vm-memory rejected the region layout.
    #[error("Guest RAM layout rejected: {0}")]
    Layout(String),
}

/// The guest-physical RAM ranges for `size` bytes: `(start, len)`.
pub fn ram_ranges(size: u64) -> Vec<(u64, u64)> {
    if size <= MMIO_HOLE_START {
        vec![(0, size)]
    } else {
        vec![
            (0, MMIO_HOLE_START),
            (MMIO_HOLE_END, size - MMIO_HOLE_START),
        ]
    }
}

/// Checks that `size` bytes of 2 MiB hugetlb pages are free right now.
pub fn check_huge_pages(size: u64) -> Result<(), GuestRamError> {
    let pool = crate::host::sysfs::huge_pool(HUGE_PAGE_SIZE >> 10);
    let total = pool.map_or(0, |p| p.nr);
    let free = pool.map_or(0, |p| p.available());
    let needed = size.div_ceil(HUGE_PAGE_SIZE);
    if needed > free {
        return Err(GuestRamError::NotEnoughHugePages {
            needed,
            free,
            total,
        });
    }
    Ok(())
}

fn memfd(backing: Backing, size: u64) -> Result<File, GuestRamError> {
    let mut flags = libc::MFD_CLOEXEC;
    if backing == Backing::Hugetlb {
        flags |= libc::MFD_HUGETLB | libc::MFD_HUGE_2MB;
    }
    // SAFETY: memfd_create reads the NUL-terminated name and returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(c"faultline-guest-ram".as_ptr(), flags) };
    if fd < 0 {
        return Err(GuestRamError::Memfd {
            backing,
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)
        .map_err(|source| GuestRamError::Truncate {
            backing,
            size,
            source,
        })?;
    Ok(file)
}

fn map_region(backing: Backing, size: u64) -> Result<MmapRegion, GuestRamError> {
    let len = usize::try_from(size).map_err(|_| GuestRamError::Layout(format!("{size} bytes")))?;
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let builder = vm_memory::mmap::MmapRegionBuilder::new(len).with_mmap_prot(prot);
    let mmap_err = |source| GuestRamError::Mmap {
        backing,
        size,
        source,
    };
    let region = match backing {
        Backing::Anon | Backing::Thp => builder
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
            .build()
            .map_err(mmap_err)?,
        other @ (Backing::Memfd
        | Backing::File
        | Backing::Pfnmap
        | Backing::Mixedmap
        | Backing::Devdax) => return Err(GuestRamError::Unsupported(other)),
        Backing::Shmem | Backing::Hugetlb => builder
            .with_file_offset(FileOffset::new(memfd(backing, size)?, 0))
            .with_mmap_flags(libc::MAP_SHARED)
            .with_hugetlbfs(backing == Backing::Hugetlb)
            .build()
            .map_err(mmap_err)?,
    };
    if backing == Backing::Thp {
        // SAFETY: the range is exactly the mapping `region` owns; MADV_HUGEPAGE only
        // changes how the kernel backs it, never its contents.
        let ret =
            unsafe { libc::madvise(region.as_ptr().cast(), region.size(), libc::MADV_HUGEPAGE) };
        if ret != 0 {
            return Err(GuestRamError::Madvise(std::io::Error::last_os_error()));
        }
    }
    Ok(region)
}

/// Creates guest RAM as `cfg` says.
pub fn create_guest_memory(cfg: &MemoryConfig) -> Result<GuestMemoryMmap, GuestRamError> {
    if cfg.backing == Backing::Hugetlb {
        check_huge_pages(cfg.size)?;
    }
    let mut regions = Vec::new();
    for (start, len) in ram_ranges(cfg.size) {
        let mapping = map_region(cfg.backing, len)?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(start))
            .ok_or_else(|| GuestRamError::Layout(format!("region at {start:#x} overflows")))?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| GuestRamError::Layout(e.to_string()))
}

/// Bytes of guest RAM resident in this process's page tables or page cache right now
/// (`mincore()` over every region), for RSS accounting.
pub fn resident_bytes(mem: &GuestMemoryMmap) -> u64 {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    // SAFETY: sysconf has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let mut total = 0;
    for r in mem.iter() {
        let len = r.len();
        let pages = usize::try_from(len.div_ceil(page)).unwrap_or(0);
        let mut vec = vec![0u8; pages];
        // SAFETY: the range is exactly the region's live mapping and `vec` has one byte per
        // page of it, as mincore requires.
        let ret = unsafe { libc::mincore(r.as_ptr().cast(), r.size(), vec.as_mut_ptr()) };
        if ret == 0 {
            total += vec.iter().filter(|b| **b & 1 != 0).count() as u64 * page;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn resident_bytes_counts_touched_pages() {
        let mem = create_guest_memory(&MemoryConfig {
            size: 16 << 20,
            backing: Backing::Anon,
        })
        .unwrap();
        assert_eq!(resident_bytes(&mem), 0);
        for i in 0..10u64 {
            mem.write_obj(1u8, GuestAddress(i * 4096)).unwrap();
        }
        assert_eq!(resident_bytes(&mem), 10 * 4096);
    }

    #[test]
    fn ram_above_3g_moves_past_the_mmio_hole() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(ram_ranges(3 << 30), vec![(0, 3 << 30)]);
        assert_eq!(ram_ranges(5 << 30), vec![(0, 3 << 30), (4 << 30, 2 << 30)]);
    }

    fn roundtrip(backing: Backing) {
        let mem = create_guest_memory(&MemoryConfig {
            size: 16 << 20,
            backing,
        })
        .unwrap();
        assert_eq!(mem.num_regions(), 1);
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x10_0000))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x10_0000)).unwrap(),
            0xdead_beef
        );
        let r = mem.iter().next().unwrap();
        assert_eq!(r.len(), 16 << 20);
    }

    #[test]
    fn anon_thp_and_shmem_backings_hold_data() {
        roundtrip(Backing::Anon);
        roundtrip(Backing::Thp);
        roundtrip(Backing::Shmem);
    }

    #[test]
    fn hugetlb_backing_holds_data() {
        let _pages = crate::skip_unless!(crate::testing::reserve_huge_pages(2048, 8));
        let mem = create_guest_memory(&MemoryConfig {
            size: 16 << 20,
            backing: Backing::Hugetlb,
        })
        .expect("16M of hugetlb guest memory with 8 reserved 2M pages");
        mem.write_obj(7u64, GuestAddress(0)).unwrap();
        assert_eq!(mem.read_obj::<u64>(GuestAddress(0)).unwrap(), 7);
    }

    #[test]
    fn too_many_huge_pages_is_a_clear_error() {
        let e = check_huge_pages(1 << 50).unwrap_err().to_string();
        assert!(e.contains("echo") && e.contains("nr_hugepages"), "{e}");
    }
}
