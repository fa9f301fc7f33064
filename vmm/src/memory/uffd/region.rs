//! The measured region of `faultline bench faults`: one host mapping with the backing under
//! test (demand_paging_test's `-s` names), plus, for shared backings, an alias mapping of the
//! same file through which MINOR-mode pages are filled.
//!
//! The rest of guest RAM (code, stacks, page tables) stays ordinary anonymous memory from
//! [`crate::memory::backing`]; only this region changes between runs.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

use super::fill_pattern;

const PAGE_4K: usize = 4096;
const PAGE_2M: usize = 2 << 20;
const PAGE_1G: usize = 1 << 30;

/// Every `-s` backing, in the order `--backing all` runs them.
pub use mmu::backing::ALL_SELFTEST_BACKINGS as ALL_BACKINGS;
/// The backing of the measured region (`-s/--backing`; the KVM selftests' names): the one
/// backing type, with its options.
pub use mmu::backing::{BackingError, BackingSpec};

/// The host page size of `b` in bytes (what uffd must install per fault at least).
pub fn page_size(b: BackingSpec) -> usize {
    match b.page_size {
        mmu::backing::PageSize::Size4K => PAGE_4K,
        mmu::backing::PageSize::Size2M => PAGE_2M,
        mmu::backing::PageSize::Size1G => PAGE_1G,
    }
}

/// Errors of [`MeasuredRegion::new`].
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// Region size {size} is not a non-zero multiple of the {backing} page size {page_size}; pick a size like {page_size}, 16M or 1G
    #[error("Region size {size} is not a non-zero multiple of the {backing} page size {page_size}; pick a size such as 16M or 1G that is a multiple of it")]
    BadSize {
        /// Requested size.
        size: usize,
        /// Backing name.
        backing: &'static str,
        /// Its page size.
        page_size: usize,
    },
    /// Not enough huge pages: {0}
    #[error("{0}")]
    HugePages(String),
    /// mmap of the {backing} region failed
    #[error("Mapping {size} bytes of {backing} memory failed: {source}{hint}")]
    Mmap {
        /// Backing name.
        backing: &'static str,
        /// Size.
        size: usize,
        /// A hint for the user.
        hint: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// memfd_create/ftruncate failed
    #[error("Creating the {backing} memfd of {size} bytes failed: {source}")]
    Memfd {
        /// Backing name.
        backing: &'static str,
        /// Size.
        size: usize,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// madvise failed
    #[error("madvise({advice}) on the {backing} region failed: {source}")]
    Madvise {
        /// Which advice.
        advice: &'static str,
        /// Backing name.
        backing: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The host mapping of the measured region; unmapped on drop.
#[derive(Debug)]
pub struct MeasuredRegion {
    backing: BackingSpec,
    addr: usize,
    len: usize,
    /// Alias mapping of the same file (shared backings only).
    alias: Option<usize>,
    _file: Option<File>,
}

fn huge_pages_free(page_size: usize) -> Option<(u64, u64)> {
    crate::host::sysfs::huge_pool(page_size as u64 / 1024).map(|p| (p.available(), p.nr))
}

fn mmap(len: usize, flags: i32, fd: i32) -> std::io::Result<usize> {
    // SAFETY: a new mapping at a kernel-chosen address; nothing else is affected. The result
    // is checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(p as usize)
    }
}

impl MeasuredRegion {
    /// Maps `len` bytes with `backing`; with `alias`, a shared backing is mapped a second
    /// time (for MINOR mode). `prefault` backings are populated here.
    pub fn new(backing: BackingSpec, len: usize, alias: bool) -> Result<Self, RegionError> {
        let page_size = page_size(backing);
        if len == 0 || !len.is_multiple_of(page_size) {
            return Err(RegionError::BadSize {
                size: len,
                backing: backing.name(),
                page_size,
            });
        }
        if backing.is_hugetlb() {
            let needed = (len / page_size) as u64;
            let (free, total) = huge_pages_free(page_size).unwrap_or((0, 0));
            if free < needed {
                let knob = if page_size == PAGE_2M {
                    "/proc/sys/vm/nr_hugepages".to_string()
                } else {
                    format!(
                        "/sys/kernel/mm/hugepages/hugepages-{}kB/nr_hugepages",
                        page_size / 1024
                    )
                };
                return Err(RegionError::HugePages(format!(
                    "Backing {} needs {needed} free {} MiB huge pages but {free} are free ({total} reserved); reserve them as root with: echo {} > {knob}",
                    backing.name(),
                    page_size >> 20,
                    total + needed - free,
                )));
            }
        }
        let name = backing.name();
        let mmap_err = |source, hint| RegionError::Mmap {
            backing: name,
            size: len,
            hint,
            source,
        };
        let hugetlb = backing.is_hugetlb();
        let (addr, file) = if !backing.shared {
            let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
            if hugetlb {
                flags |= libc::MAP_HUGETLB;
                flags |= if page_size == PAGE_1G {
                    libc::MAP_HUGE_1GB
                } else {
                    libc::MAP_HUGE_2MB
                };
            } else {
                flags |= libc::MAP_NORESERVE;
            }
            let hint = if hugetlb {
                "; are enough huge pages reserved (/proc/sys/vm/nr_hugepages)?"
            } else {
                ""
            };
            (mmap(len, flags, -1).map_err(|e| mmap_err(e, hint))?, None)
        } else {
            let mut flags = libc::MFD_CLOEXEC;
            if hugetlb {
                flags |= libc::MFD_HUGETLB;
                flags |= if page_size == PAGE_1G {
                    libc::MFD_HUGE_1GB
                } else {
                    libc::MFD_HUGE_2MB
                };
            }
            // SAFETY: the name is a NUL-terminated literal; the result is checked.
            let fd = unsafe { libc::memfd_create(c"faultline-measured".as_ptr(), flags) };
            if fd < 0 {
                return Err(RegionError::Memfd {
                    backing: name,
                    size: len,
                    source: std::io::Error::last_os_error(),
                });
            }
            // SAFETY: `fd` was just created and is owned by nobody else.
            let file = unsafe { File::from_raw_fd(fd) };
            file.set_len(len as u64)
                .map_err(|source| RegionError::Memfd {
                    backing: name,
                    size: len,
                    source,
                })?;
            let addr =
                mmap(len, libc::MAP_SHARED, file.as_raw_fd()).map_err(|e| mmap_err(e, ""))?;
            (addr, Some(file))
        };
        let mut region = Self {
            backing,
            addr,
            len,
            alias: None,
            _file: None,
        };
        if let Some(f) = &file {
            if alias {
                region.alias =
                    Some(mmap(len, libc::MAP_SHARED, f.as_raw_fd()).map_err(|e| mmap_err(e, ""))?);
            }
        }
        region._file = file;
        let advise = |advice: i32, what: &'static str| {
            // SAFETY: the range is exactly this region's own mapping; the advice changes how
            // it is backed (or populates it), never what it holds.
            if unsafe { libc::madvise(addr as *mut libc::c_void, len, advice) } != 0 {
                return Err(RegionError::Madvise {
                    advice: what,
                    backing: name,
                    source: std::io::Error::last_os_error(),
                });
            }
            Ok(())
        };
        use mmu::backing::Backing;
        match backing.backing {
            // Plain anonymous memory is measured at 4K: THP off for the range.
            Backing::Anon => advise(libc::MADV_NOHUGEPAGE, "MADV_NOHUGEPAGE")?,
            Backing::Thp => advise(libc::MADV_HUGEPAGE, "MADV_HUGEPAGE")?,
            _ => {}
        }
        if backing.prefault {
            advise(libc::MADV_POPULATE_WRITE, "MADV_POPULATE_WRITE")?;
        }
        Ok(region)
    }

    /// The backing.
    #[must_use]
    pub fn backing(&self) -> BackingSpec {
        self.backing
    }

    /// Host address of the mapping.
    #[must_use]
    pub fn addr(&self) -> usize {
        self.addr
    }

    /// Length in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false (regions are never empty); for clippy.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Host address of the alias mapping, if any.
    #[must_use]
    pub fn alias(&self) -> Option<usize> {
        self.alias
    }

    /// Writes the uffd pattern for tags starting at `tag` through the alias mapping (fills
    /// the page cache for MINOR mode without mapping anything in the main mapping).
    /// Returns false when there is no alias.
    pub fn fill_alias(&self, tag: u64) -> bool {
        let Some(alias) = self.alias else {
            return false;
        };
        // SAFETY: `alias` is this region's own shared mapping of `len` bytes; nothing else
        // holds a reference into it while we fill it.
        let buf = unsafe { std::slice::from_raw_parts_mut(alias as *mut u8, self.len) };
        fill_pattern(buf, tag);
        true
    }
}

impl Drop for MeasuredRegion {
    fn drop(&mut self) {
        // SAFETY: both mappings were created by `new` and are owned by this struct; the VM
        // using them is dropped before the region (the runner's drop order).
        unsafe {
            libc::munmap(self.addr as *mut libc::c_void, self.len);
            if let Some(a) = self.alias {
                libc::munmap(a as *mut libc::c_void, self.len);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_must_be_page_multiples() {
        let e = MeasuredRegion::new(BackingSpec::ANONYMOUS, 5000, false).unwrap_err();
        assert!(e.to_string().contains("multiple of"), "{e}");
        let e = MeasuredRegion::new(BackingSpec::SHARED_HUGETLB, 4096, false).unwrap_err();
        assert!(e.to_string().contains("2097152"), "{e}");
    }

    #[test]
    fn shmem_alias_shows_the_same_pages() {
        let r = MeasuredRegion::new(BackingSpec::SHMEM, 64 * 4096, true).unwrap();
        assert!(r.fill_alias(0x1000));
        // SAFETY: reading this region's own mapping.
        let w = unsafe { ((r.addr() + 4096) as *const u64).read_volatile() };
        assert_eq!(w, super::super::pattern_word(0x1000 + 4096));
    }

    #[test]
    fn hugetlb_without_reserved_pages_says_how_to_reserve() {
        match MeasuredRegion::new(BackingSpec::ANONYMOUS_HUGETLB_1GB, 1 << 30, false) {
            // A free 1G page: the mapping is one 1G hugetlb page that holds data.
            Ok(r) => {
                assert_eq!((r.len(), page_size(r.backing())), (1 << 30, 1 << 30));
                // SAFETY: writing then reading this region's own mapping.
                let w = unsafe {
                    ((r.addr() + 4096) as *mut u64).write_volatile(0x1d);
                    ((r.addr() + 4096) as *const u64).read_volatile()
                };
                assert_eq!(w, 0x1d);
            }
            Err(e) => {
                let m = e.to_string();
                assert!(m.contains("reserve them as root with: echo"), "{m}");
            }
        }
    }

    #[test]
    fn prefault_populates_the_host_page_tables() {
        let r = MeasuredRegion::new(BackingSpec::ANONYMOUS_PREFAULT, 256 * 4096, false).unwrap();
        let mut vec = vec![0u8; 256];
        // SAFETY: mincore on this region's own mapping, with a vector of one byte per page.
        let ret =
            unsafe { libc::mincore(r.addr() as *mut libc::c_void, r.len(), vec.as_mut_ptr()) };
        assert_eq!(ret, 0);
        assert!(
            vec.iter().all(|&b| b & 1 == 1),
            "every page resident after MADV_POPULATE_WRITE"
        );
    }
}
