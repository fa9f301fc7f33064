//! Guest-virtual to guest-physical translation for the debugger's memory accesses.
//!
//! The vCPU's own KVM_TRANSLATE is asked first; when it fails or says "not mapped" the
//! stub walks the guest's page tables itself with [`walk`] (some KVMs, nested or
//! paravirtualised ones among them, do not implement KVM_TRANSLATE for every mode).

/// CR0.PG.
const CR0_PG: u64 = 1 << 31;
/// CR4.PSE (4 MiB pages in 32-bit paging).
const CR4_PSE: u64 = 1 << 4;
/// CR4.PAE.
const CR4_PAE: u64 = 1 << 5;
/// CR4.LA57 (5-level paging).
const CR4_LA57: u64 = 1 << 12;
/// EFER.LMA.
const EFER_LMA: u64 = 1 << 10;
/// Present.
const PTE_P: u64 = 1;
/// Page size (a leaf above the last level).
const PTE_PS: u64 = 1 << 7;
/// Physical-address bits of an entry (bits 12..52).
const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;

/// The paging controls of a vCPU (from KVM_GET_SREGS).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Paging {
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
}

/// Why an address did not translate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    /// An entry on the way is not present.
    #[error(
        "Guest virtual address {gva:#x} is not mapped (level {level} entry {entry:#x} not present)"
    )]
    NotMapped {
        /// The address.
        gva: u64,
        /// The page-table level (1 = PTE).
        level: u32,
        /// The entry's value.
        entry: u64,
    },
    /// A page-table page lies outside guest RAM.
    #[error("Guest page table at guest-physical {gpa:#x} (walking {gva:#x}) is outside guest RAM")]
    TableOutsideRam {
        /// The address being walked.
        gva: u64,
        /// The table entry's guest-physical address.
        gpa: u64,
    },
}

/// Translates `gva` through the guest's page tables as the MMU would (`paging64_walk_addr`
/// / `FNAME(walk_addr_generic)`, arch/x86/kvm/mmu/paging_tmpl.h): no paging = identity;
/// 32-bit paging (4K and, with CR4.PSE, 4M pages); PAE; 4- and 5-level long mode with 2M
/// and 1G leaves. `read` reads a little-endian entry of `size` (4 or 8) bytes at a
/// guest-physical address, `None` outside RAM.
///
/// # Divergence
/// Access rights (U/S, R/W, NX) and reserved bits are not checked: a debugger reads what
/// the tables map, whatever the guest's privilege.
pub fn walk(
    p: &Paging,
    gva: u64,
    read: impl Fn(u64, usize) -> Option<u64>,
) -> Result<u64, WalkError> {
    if p.cr0 & CR0_PG == 0 {
        return Ok(gva);
    }
    // (levels, bits per level, entry size, table base mask)
    let (levels, bits, size, base) = if p.efer & EFER_LMA != 0 {
        let levels = if p.cr4 & CR4_LA57 != 0 { 5 } else { 4 };
        (levels, 9, 8usize, p.cr3 & PTE_ADDR)
    } else if p.cr4 & CR4_PAE != 0 {
        (3, 9, 8usize, p.cr3 & 0xffff_ffe0)
    } else {
        (2, 10, 4usize, p.cr3 & 0xffff_f000)
    };
    let gva = if size == 4 || levels == 3 {
        gva & 0xffff_ffff
    } else {
        gva
    };
    let mut table = base;
    for level in (1..=levels).rev() {
        let shift = 12 + bits * (level - 1);
        let index_bits = if levels == 3 && level == 3 { 2 } else { bits };
        let index = (gva >> shift) & ((1 << index_bits) - 1);
        let gpa = table + index * size as u64;
        let entry = read(gpa, size).ok_or(WalkError::TableOutsideRam { gva, gpa })?;
        if entry & PTE_P == 0 {
            return Err(WalkError::NotMapped { gva, level, entry });
        }
        // PAE's PDPTEs have no PS bit; 32-bit paging has 4M leaves only with CR4.PSE.
        let leaf_allowed = match (size, level) {
            (_, 1) => false,
            (4, 2) => p.cr4 & CR4_PSE != 0,
            (8, 3) if levels == 3 => false,
            (8, 2) | (8, 3) => true,
            _ => false,
        };
        if leaf_allowed && entry & PTE_PS != 0 {
            let page = 1u64 << shift;
            let frame = if size == 4 {
                // 4M page: bits 22..32 (bits 13..21 hold PA bits 32..40).
                (entry & 0xffc0_0000) | ((entry & 0x001f_e000) << 19)
            } else {
                entry & PTE_ADDR & !(page - 1)
            };
            return Ok(frame | (gva & (page - 1)));
        }
        let mask = if size == 4 { 0xffff_f000 } else { PTE_ADDR };
        table = entry & mask;
        if level == 1 {
            return Ok(table | (gva & 0xfff));
        }
    }
    unreachable_walk(gva)
}

/// The loop always returns at level 1; this keeps the function total without a panic.
fn unreachable_walk(gva: u64) -> Result<u64, WalkError> {
    Err(WalkError::NotMapped {
        gva,
        level: 0,
        entry: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Mem(HashMap<u64, u64>);
    impl Mem {
        fn read(&self, gpa: u64, _size: usize) -> Option<u64> {
            if gpa >= 0x100_0000 {
                return None;
            }
            Some(self.0.get(&gpa).copied().unwrap_or(0))
        }
    }

    fn long_mode(cr3: u64) -> Paging {
        Paging {
            cr0: CR0_PG | 1,
            cr3,
            cr4: CR4_PAE,
            efer: EFER_LMA | (1 << 8),
        }
    }

    #[test]
    fn long_mode_4k_2m_and_1g_leaves() {
        let gva: u64 = 0xffff_8000_0020_1234;
        let (l4, l3, l2, l1) = (
            (gva >> 39) & 511,
            (gva >> 30) & 511,
            (gva >> 21) & 511,
            (gva >> 12) & 511,
        );
        let mut m = HashMap::new();
        m.insert(0x1000 + l4 * 8, 0x2000 | 3);
        m.insert(0x2000 + l3 * 8, 0x3000 | 3);
        m.insert(0x3000 + l2 * 8, 0x4000 | 3);
        m.insert(0x4000 + l1 * 8, 0xab_c000 | 3);
        let mem = Mem(m);
        let p = long_mode(0x1000);
        assert_eq!(walk(&p, gva, |a, s| mem.read(a, s)), Ok(0xab_c234));
        // The same address through a 2M leaf at the PD level.
        let mut mem2 = Mem(mem.0.clone());
        mem2.0.insert(0x3000 + l2 * 8, 0x60_0000 | 0x83);
        assert_eq!(
            walk(&p, gva, |a, s| mem2.read(a, s)),
            Ok(0x60_0000 | (gva & 0x1f_ffff))
        );
        // And through a 1G leaf at the PDPT level.
        mem2.0.insert(0x2000 + l3 * 8, 0x4000_0000 | 0x83);
        assert_eq!(
            walk(&p, gva, |a, s| mem2.read(a, s)),
            Ok(0x4000_0000 | (gva & 0x3fff_ffff))
        );
    }

    #[test]
    fn not_present_and_tables_outside_ram_are_errors() {
        let mem = Mem(HashMap::from([(0x1000, 0x200_0000 | 3)]));
        let p = long_mode(0x1000);
        assert_eq!(
            walk(&p, 0x8000_0000_0000 >> 1, |a, s| mem.read(a, s)),
            Err(WalkError::NotMapped {
                gva: 0x4000_0000_0000,
                level: 4,
                entry: 0
            })
        );
        assert!(matches!(
            walk(&p, 0x1000, |a, s| mem.read(a, s)),
            Err(WalkError::TableOutsideRam {
                gpa: 0x200_0000,
                ..
            })
        ));
    }

    #[test]
    fn no_paging_is_identity_and_32bit_modes_walk() {
        let off = Paging::default();
        assert_eq!(walk(&off, 0x1234_5678, |_, _| None), Ok(0x1234_5678));
        // 32-bit paging, 4K: PDE 0x1000[0x300] -> PT 0x2000, PTE[0x45] -> 0x9000.
        let gva = (0x300 << 22) | (0x45 << 12) | 0x21;
        let mem = Mem(HashMap::from([
            (0x1000 + 0x300 * 4, 0x2000 | 3),
            (0x2000 + 0x45 * 4, 0x9000 | 3),
        ]));
        let p32 = Paging {
            cr0: CR0_PG | 1,
            cr3: 0x1000,
            ..Default::default()
        };
        assert_eq!(walk(&p32, gva, |a, s| mem.read(a, s)), Ok(0x9021));
        // With CR4.PSE a PDE with PS is a 4M page.
        let mem4m = Mem(HashMap::from([(0x1000 + 0x300 * 4, 0x80_0000 | 0x83)]));
        let pse = Paging {
            cr4: CR4_PSE,
            ..p32
        };
        assert_eq!(
            walk(&pse, gva, |a, s| mem4m.read(a, s)),
            Ok(0x80_0000 | (gva & 0x3f_ffff))
        );
        // PAE: PDPTE[2] -> PD 0x3000, PDE[1] 2M leaf.
        let gva = (2 << 30) | (1 << 21) | 0x777;
        let mem = Mem(HashMap::from([
            (0x1000 + 2 * 8, 0x3000 | 1),
            (0x3000 + 8, 0xa0_0000 | 0x83),
        ]));
        let pae = Paging {
            cr4: CR4_PAE,
            ..p32
        };
        assert_eq!(walk(&pae, gva, |a, s| mem.read(a, s)), Ok(0xa0_0777));
    }
}
