//! The mapping size behind an address, from the `PAGEMAP_SCAN` ioctl on /proc/self/pagemap
//! (Linux 6.7+, fs/proc/task_mmu.c `do_pagemap_scan()`).
//!
//! /proc/self/pagemap and /proc/kpageflags tell what a page *is* (a THP subpage, the huge
//! zero page) but not how it is *mapped*: a THP after `split_huge_pmd()` is still a 2M folio,
//! mapped by 512 PTEs. `PAGEMAP_SCAN` reports `PAGE_IS_HUGE` for an address mapped by a
//! PMD leaf (`pagemap_thp_category()`) or a hugetlb entry (`pagemap_hugetlb_category()`), so
//! the mapping level is observable per address. Kernels without the ioctl answer ENOTTY:
//! [`mapping_is_huge`] then returns `None` and the caller says the level is not observable.

use std::os::fd::AsRawFd;

/// `PAGE_IS_PRESENT` (include/uapi/linux/fs.h).
const PAGE_IS_PRESENT: u64 = 1 << 3;
/// `PAGE_IS_HUGE`.
const PAGE_IS_HUGE: u64 = 1 << 6;

/// `struct pm_scan_arg` (include/uapi/linux/fs.h).
#[repr(C)]
#[derive(Debug, Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `struct page_region`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// `PAGEMAP_SCAN = _IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: libc::c_ulong = (3 << 30)
    | ((std::mem::size_of::<PmScanArg>() as libc::c_ulong) << 16)
    | ((b'f' as libc::c_ulong) << 8)
    | 16;

/// Whether the page at `addr` (this process) is mapped by a huge leaf: `Some(true)` for a PMD
/// or hugetlb mapping, `Some(false)` for a PTE or nothing, `None` when the kernel has no
/// `PAGEMAP_SCAN` (or /proc/self/pagemap cannot be opened).
pub fn mapping_is_huge(addr: u64) -> Option<bool> {
    let f = std::fs::File::open("/proc/self/pagemap").ok()?;
    let page = addr & !0xfff;
    let mut region = [PageRegion::default(); 1];
    let mut arg = PmScanArg {
        size: std::mem::size_of::<PmScanArg>() as u64,
        start: page,
        end: page + 4096,
        vec: region.as_mut_ptr() as u64,
        vec_len: 1,
        return_mask: PAGE_IS_PRESENT | PAGE_IS_HUGE,
        ..PmScanArg::default()
    };
    // SAFETY: PAGEMAP_SCAN reads `arg` and writes at most `vec_len` page_regions into
    // `region`, which outlives the call; both have the kernel's layout (repr(C), u64s).
    let n = unsafe { libc::ioctl(f.as_raw_fd(), PAGEMAP_SCAN, &mut arg as *mut PmScanArg) };
    if n < 0 {
        return None;
    }
    if n == 0 {
        return Some(false);
    }
    let r = region[0];
    Some(r.start <= page && page < r.end && r.categories & PAGE_IS_HUGE != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_number_matches_the_uapi_header() {
        // _IOWR('f', 16, struct pm_scan_arg) with a 96-byte struct.
        assert_eq!(std::mem::size_of::<PmScanArg>(), 96);
        assert_eq!(PAGEMAP_SCAN, 0xc060_6610);
    }

    #[test]
    fn a_pmd_mapped_thp_is_huge_and_a_4k_page_is_not() {
        let thp_mode = crate::host::sysfs::thp_setting("enabled").unwrap_or_default();
        if thp_mode == "never" {
            eprintln!("SKIPPED a_pmd_mapped_thp_is_huge: THP is disabled on this host");
            return;
        }
        let len = 4usize << 20;
        // SAFETY: a fresh private anonymous mapping, unmapped at the end of the test.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let base = p as u64;
        let al = (base + (2 << 20) - 1) & !((2 << 20) - 1);
        // SAFETY: advice and writes inside the mapping made above.
        unsafe {
            libc::madvise(al as *mut libc::c_void, 2 << 20, libc::MADV_HUGEPAGE);
            (al as *mut u8).write_volatile(1);
        }
        let Some(huge) = mapping_is_huge(al) else {
            eprintln!("SKIPPED a_pmd_mapped_thp_is_huge: no PAGEMAP_SCAN on this kernel");
            // SAFETY: our own mapping.
            unsafe { libc::munmap(p, len) };
            return;
        };
        assert!(huge, "a written MADV_HUGEPAGE range maps a PMD THP");
        // SAFETY: split the PMD by protecting one 4K page, inside our own mapping.
        unsafe { libc::mprotect((al + 4096) as *mut libc::c_void, 4096, libc::PROT_READ) };
        assert_eq!(
            mapping_is_huge(al),
            Some(false),
            "after split_huge_pmd the THP is PTE-mapped"
        );
        // SAFETY: our own mapping.
        unsafe { libc::munmap(p, len) };
    }
}
