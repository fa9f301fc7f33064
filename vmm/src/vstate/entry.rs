//! How a vCPU enters guest code: the contract between the loaders and `vstate`.
//!
//! A loader (`vmm::boot` for Linux, `vmm::guests` for the built-in programs) copies its
//! image into guest memory and returns an [`EntryPoint`]. `vstate::vcpu` turns it into
//! register state: segment descriptors, control registers, page tables and the general
//! registers named below. The loader never touches KVM.

/// Where and in which CPU mode the boot vCPU starts.
///
/// Everything not named here is set up by `vstate` (see `vstate::vcpu::setup_entry`):
///
/// | | `Long64` | `Pvh32` |
/// |---|---|---|
/// | mode | 64-bit long mode, CPL 0 | 32-bit protected mode, flat, paging off |
/// | CS / DS,ES,SS | 0x10 / 0x18 (Linux `__BOOT_CS`/`__BOOT_DS`) | 0x08 / 0x18 |
/// | paging | identity map of the first 4 GiB with 2 MiB pages, PML4 at [`PML4_START`] | off |
/// | GDT | at [`GDT_START`] | at [`GDT_START`] |
/// | IDT | limit 0 (any exception triple-faults) | limit 0 |
/// | RFLAGS | 0x2 (interrupts off) | 0x2 |
///
/// `vstate` writes its own tables to guest memory at `GDT_START..GDT_START + 0x100` and
/// `PML4_START..LOW_RESERVED_END`; a loader must not put anything there. The usual Linux
/// spots (zero page at 0x7000, command line at 0x20000, kernel at 1 MiB and up) are free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryPoint {
    /// Linux x86-64 boot protocol 64-bit entry (`startup_64`, Documentation/arch/x86/boot.rst
    /// "64-bit boot protocol") or any 64-bit ELF entry point such as a built-in guest.
    Long64 {
        /// Guest-physical (= virtual, identity mapped) address of the first instruction.
        /// For a bzImage this is the 64-bit entry, `code32_start + 0x200`; for an ELF
        /// vmlinux its `e_entry`.
        rip: u64,
        /// Value for RSI: the guest-physical address of the zero page (`struct boot_params`)
        /// for Linux. Built-in guests ignore it (they get their vCPU index in RDI instead).
        rsi: u64,
    },
    /// PVH entry (`XEN_ELFNOTE_PHYS32_ENTRY`, Documentation/arch/x86/boot.rst / xen pvh.h):
    /// 32-bit flat protected mode with paging off.
    Pvh32 {
        /// Guest-physical address of the PVH entry, from the ELF note.
        rip: u64,
        /// Value for EBX: the guest-physical address of the `hvm_start_info` structure.
        rbx: u64,
    },
}

impl EntryPoint {
    /// The address of the first guest instruction.
    pub fn rip(&self) -> u64 {
        match *self {
            EntryPoint::Long64 { rip, .. } | EntryPoint::Pvh32 { rip, .. } => rip,
        }
    }
}

/// How the vCPUs other than vCPU 0 start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApStartup {
    /// APs wait for INIT/SIPI from the boot vCPU (what a Linux kernel expects: it wakes
    /// them through the local APIC after reading the MP table / MADT).
    WaitForSipi,
    /// Every vCPU starts at the same [`EntryPoint`] at once, with RDI = its vCPU index and
    /// RDX = the number of vCPUs (the built-in guests' convention).
    SameEntry,
}

/// Guest-physical address of the GDT written by `vstate` (reserved).
pub const GDT_START: u64 = 0x500;
/// Guest-physical address of the PML4 written by `vstate` for `Long64` (reserved); the
/// PDPT follows at +0x1000 and four page directories at +0x2000..+0x6000.
pub const PML4_START: u64 = 0x9000;
/// End of the page-table area `vstate` reserves (`PML4_START..LOW_RESERVED_END`).
pub const LOW_RESERVED_END: u64 = 0xf000;
