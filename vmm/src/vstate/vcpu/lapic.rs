//! The local APIC's LINT0/LINT1 set-up (ExtINT and NMI, as a PC's BIOS leaves them).

use kvm_bindings::kvm_lapic_state;

/// Local APIC register offsets and delivery modes for LINT0/LINT1.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

fn set_lvt_mode(regs: &mut [std::os::raw::c_char], off: usize, mode: u32) {
    let mut b = [0u8; 4];
    for (i, x) in b.iter_mut().enumerate() {
        *x = regs[off + i] as u8;
    }
    let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
    for (i, x) in v.to_le_bytes().iter().enumerate() {
        regs[off + i] = *x as std::os::raw::c_char;
    }
}

/// LINT0 to ExtINT and LINT1 to NMI, the virtual-wire mode Linux expects from the BIOS.
pub(super) fn set_lint_modes(lapic: &mut kvm_lapic_state) {
    set_lvt_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_lvt_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
}
