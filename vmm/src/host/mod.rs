//! What the VMM reads about the host it runs on.
//!
//! [`sysfs`] holds the one set of sysfs/procfs readers (THP settings, hugetlb pools, KSM,
//! NUMA, KVM module parameters, meminfo) that guest RAM, `bench faults`, `check`'s host
//! conditions, `live` and the test fixtures use.

pub mod sysfs;
