//! Register marshalling between KVM's structures (`kvm_regs`, `kvm_sregs`, `kvm_fpu`) and
//! gdb's x86-64 core register set (`gdbstub_arch::x86::reg::X86_64CoreRegs`, the order of
//! gdb's `64bit-core.xml` and `64bit-sse.xml`: rax rbx rcx rdx rsi rdi rbp rsp r8-r15, rip,
//! eflags, cs ss ds es fs gs, st0-7, the x87 control registers, xmm0-15, mxcsr).

use gdbstub_arch::x86::reg::X86_64CoreRegs;
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};

/// gdb's register set from the vCPU's state.
pub fn to_gdb(regs: &kvm_regs, sregs: &kvm_sregs, fpu: &kvm_fpu) -> X86_64CoreRegs {
    let mut g = X86_64CoreRegs {
        regs: [
            regs.rax, regs.rbx, regs.rcx, regs.rdx, regs.rsi, regs.rdi, regs.rbp, regs.rsp,
            regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
        ],
        // gdb's eflags is 32 bits wide; RFLAGS' upper half is reserved (zero).
        eflags: (regs.rflags & 0xffff_ffff) as u32,
        rip: regs.rip,
        ..Default::default()
    };
    g.segments.cs = u32::from(sregs.cs.selector);
    g.segments.ss = u32::from(sregs.ss.selector);
    g.segments.ds = u32::from(sregs.ds.selector);
    g.segments.es = u32::from(sregs.es.selector);
    g.segments.fs = u32::from(sregs.fs.selector);
    g.segments.gs = u32::from(sregs.gs.selector);
    for (st, fpr) in g.st.iter_mut().zip(&fpu.fpr) {
        st.copy_from_slice(&fpr[..10]);
    }
    g.fpu.fctrl = u32::from(fpu.fcw);
    g.fpu.fstat = u32::from(fpu.fsw);
    g.fpu.ftag = full_tag_word(fpu.ftwx);
    g.fpu.fop = u32::from(fpu.last_opcode);
    g.fpu.fioff = (fpu.last_ip & 0xffff_ffff) as u32;
    g.fpu.fooff = (fpu.last_dp & 0xffff_ffff) as u32;
    for (x, k) in g.xmm.iter_mut().zip(&fpu.xmm) {
        *x = u128::from_le_bytes(*k);
    }
    g.mxcsr = fpu.mxcsr;
    g
}

/// Applies gdb's general registers, RIP and EFLAGS to `regs` (what `set $rax = ...` or a
/// `G` packet changes). Segment selectors, x87 and SSE state are not written back: a
/// selector without its descriptor means nothing to KVM.
pub fn apply_gdb(g: &X86_64CoreRegs, regs: &mut kvm_regs) {
    let r = &g.regs;
    regs.rax = r[0];
    regs.rbx = r[1];
    regs.rcx = r[2];
    regs.rdx = r[3];
    regs.rsi = r[4];
    regs.rdi = r[5];
    regs.rbp = r[6];
    regs.rsp = r[7];
    regs.r8 = r[8];
    regs.r9 = r[9];
    regs.r10 = r[10];
    regs.r11 = r[11];
    regs.r12 = r[12];
    regs.r13 = r[13];
    regs.r14 = r[14];
    regs.r15 = r[15];
    regs.rip = g.rip;
    // Bit 1 of RFLAGS is always set.
    regs.rflags = (regs.rflags & !0xffff_ffff) | u64::from(g.eflags) | 0x2;
}

/// The x87 tag word gdb shows (2 bits per register, 11 = empty) from FXSAVE's abridged one
/// (1 bit per register, 1 = in use), as `i387_supply_fxsave()` (gdb/i387-tdep.c) does
/// without classifying the value: in-use registers show as valid (00).
fn full_tag_word(abridged: u8) -> u32 {
    (0..8).fold(0u32, |tag, i| {
        if abridged & (1 << i) != 0 {
            tag
        } else {
            tag | (0b11 << (2 * i))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gdbstub::arch::Registers;

    fn sample() -> (kvm_regs, kvm_sregs, kvm_fpu) {
        let regs = kvm_regs {
            rax: 1,
            rbx: 2,
            rcx: 3,
            rdx: 4,
            rsi: 5,
            rdi: 6,
            rbp: 7,
            rsp: 8,
            r8: 9,
            r15: 16,
            rip: 0x20_0090,
            rflags: 0x246,
            ..Default::default()
        };
        let mut sregs = kvm_sregs::default();
        sregs.cs.selector = 0x10;
        sregs.ss.selector = 0x18;
        let mut fpu = kvm_fpu {
            fcw: 0x37f,
            ftwx: 0b0000_0001,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        fpu.xmm[1][0] = 0xaa;
        fpu.fpr[0][9] = 0x40;
        (regs, sregs, fpu)
    }

    #[test]
    fn kvm_state_lands_in_gdbs_register_order() {
        let (regs, sregs, fpu) = sample();
        let g = to_gdb(&regs, &sregs, &fpu);
        assert_eq!(&g.regs[..9], &[1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(g.regs[15], 16);
        assert_eq!((g.rip, g.eflags), (0x20_0090, 0x246));
        assert_eq!((g.segments.cs, g.segments.ss), (0x10, 0x18));
        assert_eq!(g.fpu.fctrl, 0x37f);
        assert_eq!(g.fpu.ftag, 0xfffc, "st0 in use, the rest empty");
        assert_eq!(g.st[0][9], 0x40);
        assert_eq!(g.xmm[1], 0xaa);
        assert_eq!(g.mxcsr, 0x1f80);
        // The wire format: rax first, little-endian; rip is the 17th 8-byte register.
        let mut bytes = Vec::new();
        g.gdb_serialize(|b| bytes.push(b.unwrap_or(0)));
        assert_eq!(&bytes[..8], &1u64.to_le_bytes());
        assert_eq!(&bytes[16 * 8..17 * 8], &0x20_0090u64.to_le_bytes());
        assert_eq!(&bytes[17 * 8..17 * 8 + 4], &0x246u32.to_le_bytes());
    }

    #[test]
    fn gdbs_writes_change_gprs_rip_and_flags_only() {
        let (regs, sregs, fpu) = sample();
        let mut g = to_gdb(&regs, &sregs, &fpu);
        g.regs[0] = 0xdead;
        g.regs[7] = 0x9000;
        g.rip = 0x20_1000;
        g.eflags = 0x200; // IF, with bit 1 cleared by a careless client
        let mut out = regs;
        out.rflags |= 1 << 40; // a (reserved) upper bit survives
        apply_gdb(&g, &mut out);
        assert_eq!((out.rax, out.rsp, out.rip), (0xdead, 0x9000, 0x20_1000));
        assert_eq!(out.rflags, (1 << 40) | 0x202);
        assert_eq!((out.rbx, out.r15), (2, 16));
        // A round trip of an unchanged set is the identity.
        let mut same = regs;
        apply_gdb(&to_gdb(&regs, &sregs, &fpu), &mut same);
        assert_eq!(same, regs);
    }
}
