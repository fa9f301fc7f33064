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
//! hugetlbfs VMAs (2M and 1G, private and shared) have their own fault path and rules
//! (`host/hugetlb.rs`, mm/hugetlb.c), without pool accounting, PMD sharing, hugetlb
//! migration, userfaultfd or punch-hole.
//!
//! KSM (`host/ksm.rs`, mm/ksm.c): MADV_MERGEABLE and a scan merging identical 4K anonymous
//! pages, with the runner's page contents as ksmd's memcmp.
//!
//! Left out: swap, page cache writeback, shmem THP, mTHP, folio (as
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
//!
//! # The KVM side: `secondary`, `scenario`, `explore`
//!
//! [`secondary::Kvm`] models KVM's x86 TDP MMU for one VM: memslots with lpage_info and
//! dirty bitmaps, a compact 4-level SPTE table (4K/2M/1G leaves; present, writable,
//! host-writable, mmu-writable, accessed, dirty, huge), the fault path
//! (`fast_page_fault()`, the `mmu_invalidate_seq` snapshot, pre-check, `hva_to_pfn()` on
//! [`gup`] with its fast/slow/remapped paths and async-PF pass, post-check,
//! `is_page_fault_stale()`, mapping level from lpage_info and the host page table, map,
//! reference release by kernel version) and the mmu-notifier handlers (it implements
//! [`notifier::MmuNotifier`]; the event type is ignored, as KVM does). [`scenario`] parses
//! TOML scenario files into typed steps ([`scenario::Step`]) and replays them into per-step
//! records, all at once (`faultline sim`) or one step at a time
//! ([`scenario::ScenarioRunner`], with host conditions overriding the file, for `faultline
//! check`), predicting page contents too; [`explore`] (which uses `scenario`, never the
//! reverse) runs every interleaving of a few faults and invalidations and checks that no
//! SPTE is ever stale.
//!
//! Left out on that side: shadow paging and rmaps, private/guest_memfd memory, write
//! tracking, NX huge pages, the dirty ring and PML, multiple address spaces and vCPUs.
//!
//! ```
//! use mmu::host::{Mm, MmConfig, MmapRequest};
//! use mmu::secondary::fault::{Access, PfResult};
//! use mmu::secondary::memslot::MemslotFlags;
//! use mmu::secondary::{Kvm, KvmConfig};
//! use mmu::types::{Gpa, Hva};
//!
//! let mut mm = Mm::new(MmConfig::default());
//! mm.mmap(MmapRequest::anon(Hva(0x7f00_0000_0000), 2 << 20)).unwrap();
//! let mut kvm = Kvm::new(KvmConfig::default());
//! kvm.create_memslot(0, Gpa(0), 2 << 20, Hva(0x7f00_0000_0000), MemslotFlags::default())
//!     .unwrap();
//! let r = kvm.guest_access(&mut mm, Gpa(0x1000), Access::Write);
//! assert_eq!((r.result, r.retries), (PfResult::Fixed, 0));
//! assert!(kvm.spte_at(Gpa(0x1000)).unwrap().1.is_writable());
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod backing;
pub mod explore;
pub mod gup;
pub mod host;
pub mod notifier;
pub mod record;
pub mod replay;
pub mod scenario;
pub mod secondary;
pub mod types;
