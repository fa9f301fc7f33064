//! What the VMM reads about, and runs on, the host.
//!
//! [`sysfs`] holds the one set of sysfs/procfs readers (THP settings, hugetlb pools, KSM,
//! NUMA, KVM module parameters, meminfo) that guest RAM, `bench faults`, `check`'s host
//! conditions, `live` and the test fixtures use; [`process`] the one spawn-with-timeout
//! helper.

pub mod process;
pub mod sysfs;
