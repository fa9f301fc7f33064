//! NUMA balancing: `change_prot_numa()` (the scanner) and the hinting-fault handlers
//! `do_numa_page()` / `do_huge_pmd_numa_page()`.
