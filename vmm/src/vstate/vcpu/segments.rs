//! The 64-bit (and PVH 32-bit) entry state: the GDT, the segments KVM wants for it, the
//! identity-mapping page tables, and the control registers and general registers at entry.

use super::VcpuSetupError;
#[cfg(doc)]
use crate::vstate::entry::ApStartup;
use crate::vstate::entry::{EntryPoint, GDT_START, PML4_START};
use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

// GDT layout (selector = index * 8).
const GDT_CODE32: u16 = 0x08;
const GDT_CODE64: u16 = 0x10;
const GDT_DATA: u16 = 0x18;
const GDT_TSS: u16 = 0x20;

/// Builds a GDT descriptor from flags (access byte in bits 0..8, flags in 12..16), base
/// and limit, the encoding of `GDT_ENTRY()` (arch/x86/include/asm/segment.h).
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let flags = u64::from(flags);
    let base = u64::from(base);
    let limit = u64::from(limit);
    ((base & 0xff00_0000) << (56 - 24))
        | ((flags & 0x0000_f0ff) << 40)
        | ((limit & 0x000f_0000) << (48 - 16))
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

fn gdt() -> [u64; 5] {
    [
        0,
        gdt_entry(0xc09b, 0, 0xfffff), // 0x08: 32-bit code, flat
        gdt_entry(0xa09b, 0, 0xfffff), // 0x10: 64-bit code
        gdt_entry(0xc093, 0, 0xfffff), // 0x18: data, flat
        gdt_entry(0x808b, 0, 0xfffff), // 0x20: TSS (busy), needed for VM entry
    ]
}

/// The `kvm_segment` KVM wants for GDT entry `selector`.
pub fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = (entry & 0xffff) | ((entry >> 32) & 0x000f_0000);
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (limit_raw << 12) | 0xfff
    } else {
        limit_raw
    };
    kvm_segment {
        base,
        limit: u32::try_from(limit).unwrap_or(u32::MAX),
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(((entry >> 47) & 1) == 0),
        padding: 0,
    }
}

/// Writes the GDT and the identity-mapping page tables (first 4 GiB, 2 MiB pages) that
/// every entry mode uses (see [`EntryPoint`] for the layout).
pub fn write_entry_tables(mem: &GuestMemoryMmap) -> Result<(), VcpuSetupError> {
    let err = |gpa| move |source| VcpuSetupError::Tables { gpa, source };
    for (i, e) in gdt().iter().enumerate() {
        let gpa = GDT_START + 8 * i as u64;
        mem.write_obj(*e, GuestAddress(gpa)).map_err(err(gpa))?;
    }
    let pdpt = PML4_START + 0x1000;
    let pd = PML4_START + 0x2000;
    // PML4[0] -> PDPT, present + writable.
    mem.write_obj(pdpt | 0x3, GuestAddress(PML4_START))
        .map_err(err(PML4_START))?;
    for i in 0..4u64 {
        let pd_i = pd + i * 0x1000;
        mem.write_obj(pd_i | 0x3, GuestAddress(pdpt + i * 8))
            .map_err(err(pdpt))?;
        let mut table = [0u8; 4096];
        for (j, slot) in (0u64..).zip(table.chunks_exact_mut(8)) {
            // 2 MiB page: present, writable, PS.
            let e = ((i << 30) | (j << 21)) | 0x83;
            slot.copy_from_slice(&e.to_le_bytes());
        }
        mem.write_slice(&table, GuestAddress(pd_i))
            .map_err(err(pd_i))?;
    }
    Ok(())
}

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_MP: u64 = 1 << 1;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_NE: u64 = 1 << 5;
const X86_CR0_WP: u64 = 1 << 16;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const X86_CR4_OSFXSR: u64 = 1 << 9;
const X86_CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Applies the segment, control-register and descriptor-table part of `entry` to `sregs`.
pub fn entry_sregs(entry: &EntryPoint, sregs: &mut kvm_sregs) {
    let g = gdt();
    let seg = |sel: u16| segment_from_gdt(g[usize::from(sel / 8)], sel);
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = u16::try_from(g.len() * 8 - 1).unwrap_or(u16::MAX);
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.tr = seg(GDT_TSS);
    let data = seg(GDT_DATA);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    match entry {
        EntryPoint::Long64 { .. } => {
            sregs.cs = seg(GDT_CODE64);
            sregs.cr3 = PML4_START;
            sregs.cr4 = X86_CR4_PAE | X86_CR4_OSFXSR | X86_CR4_OSXMMEXCPT;
            sregs.cr0 = X86_CR0_PE | X86_CR0_MP | X86_CR0_ET | X86_CR0_NE | X86_CR0_WP | X86_CR0_PG;
            sregs.efer = EFER_LME | EFER_LMA;
        }
        EntryPoint::Pvh32 { .. } => {
            sregs.cs = seg(GDT_CODE32);
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.efer = 0;
        }
    }
}

/// The general registers for `entry` on vCPU `index` of `count` (see [`ApStartup::SameEntry`]
/// for the built-in guests' RDI/RDX convention).
pub fn entry_regs(entry: &EntryPoint, index: u32, count: u32) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry.rip(),
        ..Default::default()
    };
    match *entry {
        EntryPoint::Long64 { rsi, .. } => {
            regs.rsi = rsi;
            // Linux's startup_64 sets up its own stack; 0x8ff0 is free and below the
            // page tables for anything that pushes before that.
            regs.rsp = 0x8ff0;
            regs.rbp = 0x8ff0;
            regs.rdi = u64::from(index);
            regs.rdx = u64::from(count);
        }
        EntryPoint::Pvh32 { rbx, .. } => {
            regs.rbx = rbx;
        }
    }
    regs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_the_segments_kvm_expects() {
        let cs = segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), 0x10);
        assert_eq!(
            (cs.l, cs.db, cs.present, cs.type_, cs.g, cs.limit),
            (1, 0, 1, 0xb, 1, 0xffff_ffff)
        );
        let ds = segment_from_gdt(gdt_entry(0xc093, 0, 0xfffff), 0x18);
        assert_eq!((ds.l, ds.db, ds.type_, ds.s), (0, 1, 3, 1));
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
    }

    #[test]
    fn page_tables_identity_map_4g_with_2m_pages() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_entry_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4 & !0xfff, PML4_START + 0x1000);
        let pd3: u64 = mem
            .read_obj(GuestAddress(PML4_START + 0x1000 + 3 * 8))
            .unwrap();
        let last: u64 = mem
            .read_obj(GuestAddress((pd3 & !0xfff) + 511 * 8))
            .unwrap();
        assert_eq!(last, (3 << 30) | (511 << 21) | 0x83);
    }
}
