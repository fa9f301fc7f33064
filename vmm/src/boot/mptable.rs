//! The Intel MultiProcessor (MP 1.4) table that tells a Linux guest without ACPI how many
//! vCPUs it has and where the I/O APIC sits.
//!
//! Linux finds it in `default_find_smp_config()` (arch/x86/kernel/mpparse.c), which scans
//! the first KiB of memory, the last KiB below 640 KiB and the BIOS area 0xf0000-0xfffff for
//! the `_MP_` floating pointer, then parses the `PCMP` configuration table in
//! `smp_read_mpc()`: one processor entry per CPU (`MP_PROCESSOR`), the buses, the I/O APIC
//! and the interrupt routing. We put both structures in the BIOS area, which the e820 map
//! leaves out of RAM, so no vCPU count is too large for the space.
//!
//! The layout matches KVM's in-kernel irqchip (`KVM_CREATE_IRQCHIP`): local APICs at
//! 0xfee00000 with ids 0..n, one I/O APIC at 0xfec00000 whose pins 0-23 are GSIs 0-23 (the
//! default routing of `kvm_setup_default_irq_routing()`), the 8259 on LINT0 (ExtINT) and NMI
//! on LINT1.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Where the `_MP_` floating pointer goes (start of the BIOS area scanned by Linux).
pub const MPTABLE_START: u64 = 0xf0000;
/// End of the area the table may use (exclusive): the BIOS area ends at 1 MiB.
pub const MPTABLE_END: u64 = 0x10_0000;
/// The local APIC base address.
pub const APIC_DEFAULT_PHYS_BASE: u32 = 0xfee0_0000;
/// The I/O APIC base address of KVM's in-kernel irqchip.
pub const IO_APIC_DEFAULT_PHYS_BASE: u32 = 0xfec0_0000;
/// Number of I/O APIC pins of KVM's in-kernel I/O APIC (`KVM_IOAPIC_NUM_PINS`).
pub const IOAPIC_PINS: u8 = 24;

const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const MPC_APIC_USABLE: u8 = 1;
const MP_IRQTYPE_INT: u8 = 0;
const MP_IRQTYPE_NMI: u8 = 1;
const MP_IRQTYPE_EXTINT: u8 = 3;
/// Local APIC version reported for each CPU (an integrated xAPIC).
const APIC_VERSION: u8 = 0x14;
/// I/O APIC version of KVM's in-kernel I/O APIC.
const IOAPIC_VERSION: u8 = 0x11;
/// CPU signature and feature flags in processor entries: family 6, FPU and APIC present.
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURE_APIC: u32 = 0x200;
const CPU_FEATURE_FPU: u32 = 0x001;

/// Writing the MP table failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MptableError {
    /// Too many vCPUs for xAPIC ids.
    #[error("{0} vCPUs do not fit an MP table (xAPIC ids stop at 254); use fewer vCPUs")]
    TooManyCpus(u32),
    /// Guest memory does not cover the BIOS area.
    #[error("Guest memory does not cover the MP table area {MPTABLE_START:#x}-{MPTABLE_END:#x}")]
    NoMemory,
}

/// Sum of bytes, as the MP spec's checksums are defined (the byte that makes the sum 0).
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

/// Builds the floating pointer and the configuration table for `vcpus` CPUs, as bytes to
/// put at [`MPTABLE_START`].
///
/// Models the structures `smp_scan_config()` and `smp_read_mpc()` (arch/x86/kernel/mpparse.c)
/// read: `struct mpf_intel`, `struct mpc_table` and its entries (arch/x86/include/asm/mpspec_def.h).
pub fn build(vcpus: u32) -> Result<Vec<u8>, MptableError> {
    if vcpus == 0 || vcpus > 254 {
        return Err(MptableError::TooManyCpus(vcpus));
    }
    let ncpus = u8::try_from(vcpus).map_err(|_| MptableError::TooManyCpus(vcpus))?;
    // The first id after the CPUs (254 CPUs use 0..=253, the I/O APIC 254; 255 is broadcast).
    let ioapic_id = ncpus;

    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    // struct mpc_cpu: type, apicid, apicver, cpuflag, cpufeature, featureflag, reserved[2].
    for id in 0..ncpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[MP_PROCESSOR, id, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_STEPPING.to_le_bytes());
        entries.extend_from_slice(&(CPU_FEATURE_APIC | CPU_FEATURE_FPU).to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    // struct mpc_bus: type, busid, bustype[6].
    entries.extend_from_slice(&[MP_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    // struct mpc_ioapic: type, apicid, apicver, flags, apicaddr.
    entries.extend_from_slice(&[MP_IOAPIC, ioapic_id, IOAPIC_VERSION, MPC_APIC_USABLE]);
    entries.extend_from_slice(&IO_APIC_DEFAULT_PHYS_BASE.to_le_bytes());
    count += 1;
    // struct mpc_intsrc: type, irqtype, irqflag (u16, 0 = bus default polarity/trigger),
    // srcbus, srcbusirq, dstapic, dstirq. ISA IRQ n -> I/O APIC pin n.
    for pin in 0..IOAPIC_PINS {
        entries.extend_from_slice(&[MP_INTSRC, MP_IRQTYPE_INT, 0, 0, 0, pin, ioapic_id, pin]);
        count += 1;
    }
    // struct mpc_lintsrc: type, irqtype, irqflag, srcbusid, srcbusirq, destapic (0xff: all),
    // destapiclint. The 8259 on LINT0, NMI on LINT1.
    entries.extend_from_slice(&[MP_LINTSRC, MP_IRQTYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[MP_LINTSRC, MP_IRQTYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    // struct mpc_table: signature "PCMP", length, spec (4 = MP 1.4), checksum, oem[8],
    // productid[12], oemptr, oemsize, oemcount (entries), lapic, reserved.
    let table_len =
        u16::try_from(44 + entries.len()).map_err(|_| MptableError::TooManyCpus(vcpus))?;
    let mut table = Vec::with_capacity(usize::from(table_len));
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&table_len.to_le_bytes());
    table.extend_from_slice(&[4, 0]);
    table.extend_from_slice(b"FAULTLIN");
    table.extend_from_slice(b"VMM         ");
    table.extend_from_slice(&0u32.to_le_bytes());
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&APIC_DEFAULT_PHYS_BASE.to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes());
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    // struct mpf_intel: signature "_MP_", physptr, length (16-byte units), specification,
    // checksum, feature1..5 (feature1 = 0: a configuration table is present).
    let table_addr = u32::try_from(MPTABLE_START + 16).map_err(|_| MptableError::NoMemory)?;
    let mut mpf = Vec::with_capacity(16);
    mpf.extend_from_slice(b"_MP_");
    mpf.extend_from_slice(&table_addr.to_le_bytes());
    mpf.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]);
    mpf[10] = checksum(&mpf);

    mpf.extend_from_slice(&table);
    Ok(mpf)
}

/// Writes the MP table for `vcpus` CPUs at [`MPTABLE_START`].
pub fn write(mem: &GuestMemoryMmap, vcpus: u32) -> Result<(), MptableError> {
    let bytes = build(vcpus)?;
    debug_assert!(MPTABLE_START + bytes.len() as u64 <= MPTABLE_END);
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(|_| MptableError::NoMemory)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn floating_pointer_and_table_checksums_are_zero() {
        for n in [1, 2, 4, 254] {
            let t = build(n).unwrap();
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0, "mpf checksum, {n} cpus");
            let len = usize::from(u16::from_le_bytes([t[20], t[21]]));
            assert_eq!(&t[16..20], b"PCMP");
            assert_eq!(16 + len, t.len());
            assert_eq!(sum(&t[16..]), 0, "table checksum, {n} cpus");
            assert!(MPTABLE_START + t.len() as u64 <= MPTABLE_END);
        }
    }

    #[test]
    fn one_processor_entry_per_vcpu_with_only_cpu0_as_bsp() {
        let t = build(3).unwrap();
        let count = u16::from_le_bytes([t[16 + 34], t[16 + 35]]);
        // 3 CPUs + bus + I/O APIC + 24 pins + 2 local interrupts.
        assert_eq!(count, 3 + 1 + 1 + 24 + 2);
        let cpus = &t[16 + 44..16 + 44 + 60];
        for (i, e) in cpus.chunks(20).enumerate() {
            assert_eq!(e[0], MP_PROCESSOR);
            assert_eq!(usize::from(e[1]), i, "apic id");
            let bsp = e[3] & CPU_BOOTPROCESSOR != 0;
            assert_eq!(bsp, i == 0);
            assert!(e[3] & CPU_ENABLED != 0);
        }
        assert_eq!(t[16 + 44 + 60], MP_BUS);
        let ioapic = &t[16 + 44 + 68..16 + 44 + 76];
        assert_eq!(ioapic[0], MP_IOAPIC);
        assert_eq!(ioapic[1], 3, "I/O APIC id follows the CPUs");
    }

    #[test]
    fn vcpu_counts_out_of_range_are_rejected() {
        assert_eq!(build(0), Err(MptableError::TooManyCpus(0)));
        assert_eq!(build(255), Err(MptableError::TooManyCpus(255)));
    }
}
