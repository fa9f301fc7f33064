//! Observers of the real kernel that `faultline check` compares with the model.
//!
//! - [`tracefs`]: mmu-notifier invalidations, aging, async page faults and (where the host's
//!   KVM traces them) SPTE installs, from a tracefs instance of faultline's own.
//! - [`pagemap`]: host page state behind an address (present, pfn, exclusive, soft-dirty,
//!   uffd-wp, folio kind and size) from /proc/self/pagemap, /proc/kpageflags and smaps.
//! - [`host`]: the host conditions the model must be run with (THP mode, huge zero page,
//!   NUMA, kernel version, TDP or shadow paging, hugetlb pools, KSM, swap).
//! - [`probe`]: which tracefs observables this host really delivers, found by running a VM.

pub mod host;
pub mod pagemap;
pub mod pagemap_scan;
pub mod probe;
pub mod tracefs;
