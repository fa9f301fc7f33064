//! faultline's secondary-MMU emulation (pure Rust, no KVM, no I/O).
//!
//! # The host side: `host`, `gup`, `notifier`, `types`
//!
//! [`host::Mm`] models one Linux process address space (6.12 rules; 6.13+ and 6.18
//! differences selected by [`types::KernelVersion`]): VMAs with flags, `vm_pgoff` and a
//! backing (anonymous, shmem, or a device driver: pfnmap, mixedmap, device-dax); a 4-level
//! page table whose leaves are PUD (1G), PMD (2M) or PTE (4K) entries with present, write,
//! dirty, young, special, devmap, protnone, uffd-wp and soft-dirty bits; folios with order,
//! refcount, mapcount, pincount, node and zone (ZONE_DEVICE with a pgmap), the shared zero
//! page, the huge zero folio, and pfns without struct page.
//!
//! Faults ([`host::Mm::handle_mm_fault`]) dispatch as `__handle_mm_fault()` does: anonymous
//! zero-page reads and writes, THP (huge zero PMD, 6.12 split + COW vs 6.13+ THP on the
//! huge-zero write fault), COW, NUMA hinting (restore or migrate), pfnmap `->fault` /
//! `->huge_fault` with the pfn_mkwrite double fault, userfaultfd waits and hwpoison.
//! Operations (munmap, mprotect, madvise, mremap, fork, NUMA scan, migrate, THP
//! split/collapse, unmap_mapping_range, aging) send the mmu-notifier ranges of spec table
//! 2.6 to the `&mut dyn` [`notifier::MmuNotifier`] they are given. [`gup`] models GUP-fast,
//! the slow path, `fixup_user_fault()`, `follow_pfnmap_start()` and `vm_normal_page*()`,
//! taking real references.
//!
//! Left out: swap, page cache writeback, hugetlbfs, KSM, shmem THP, mTHP, folio (as
//! opposed to PMD) splitting, device-private memory, and concurrency inside one operation
//! (operations are atomic steps; races are explored between steps).
//!
//! ```
//! use mmu::gup::{self, FollFlags};
//! use mmu::host::{Mm, MmConfig, MmapRequest};
//! use mmu::notifier::{NotifierEvent, NotifierLog};
//! use mmu::types::{Hva, KernelVersion};
//!
//! let mut mm = Mm::new(MmConfig { kernel: KernelVersion::V6_12, ..Default::default() });
//! let a = mm.mmap(MmapRequest::anon(Hva(0x7f00_0000_0000), 2 << 20)).unwrap();
//! let mut kvm = NotifierLog::new(); // stands in for a secondary MMU
//! // Read: the zero page; GUP-fast refuses it (special), the slow path returns it.
//! let p = gup::get_user_pages_unlocked(&mut mm, a, FollFlags::HONOR_NUMA_FAULT, &mut kvm).unwrap();
//! assert_eq!(p.pfn(), mm.zero_pfn());
//! gup::put_page(&mut mm, p);
//! // Write: COW under CLEAR [a, a+4K).
//! let w = gup::get_user_pages_unlocked(&mut mm, a, FollFlags::WRITE, &mut kvm).unwrap();
//! assert_eq!(kvm.start_triples(), vec![(NotifierEvent::Clear, a.0, a.0 + 4096)]);
//! gup::put_page(&mut mm, w);
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod explore;
pub mod gup;
pub mod host;
pub mod notifier;
pub mod scenario;
pub mod secondary;
pub mod types;
