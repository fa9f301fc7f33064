//! The host-guest ABI of faultline: what the VMM (`vmm`, `devices`) and the built-in guests
//! (`resources/guests`) must agree on, in one place, as KVM selftests share
//! `ucall_common.h` between host and guest.
//!
//! - [`ucall`]: the ucall port, its commands and the in-guest-memory record;
//! - [`DEBUG_EXIT_PORT`], [`MAX_VCPUS`], [`PATTERN_MAGIC`];
//! - [`touch`]: the `touch` guest's parameter block (`vmm::measure::workload`);
//! - [`agent`]: the `agent` guest's per-vCPU mailbox (`vmm::check::agent`).
//!
//! Everything is little-endian x86-64, `#[repr(C)]`, and made of `u64` fields so the
//! layout has no padding and the host can read or write it as plain words. The crate is
//! `no_std` with no dependencies; guests build it without SSE.
#![no_std]
#![deny(missing_docs)]

/// Most vCPUs a built-in guest supports (its runtime has one stack each).
pub const MAX_VCPUS: usize = 64;

/// I/O port of the debug-exit device: a write of a value ends the VM with that status.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// XOR-ed with a word's guest-physical address to make the data pattern the uffd handler
/// copies in and the `touch` guest writes and checks ("faultlin").
pub const PATTERN_MAGIC: u64 = 0x6661_756c_746c_696e;

/// The ucall port (see `devices::ucall` for the wire protocol).
pub mod ucall {
    /// I/O port of the ucall device.
    pub const UCALL_PORT: u16 = 0xe0;
    /// Length of the ucall port range.
    pub const UCALL_LEN: u16 = 4;
    /// Longest string a ucall may pass.
    pub const MAX_STR: u64 = 4096;

    /// Command numbers (`UcallRaw::cmd`).
    pub mod cmd {
        /// Print a string.
        pub const PRINT: u64 = 1;
        /// Report reaching a stage.
        pub const SYNC: u64 = 2;
        /// End with a status.
        pub const DONE: u64 = 3;
        /// A failed assertion.
        pub const ASSERT: u64 = 4;
    }

    /// The in-guest-memory ucall structure, as the guest lays it out.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    #[repr(C, align(8))]
    pub struct UcallRaw {
        /// Command ([`cmd`]).
        pub cmd: u64,
        /// Arguments (see `devices::ucall`).
        pub args: [u64; 6],
    }

    /// Size of [`UcallRaw`] in guest memory.
    pub const UCALL_SIZE: usize = core::mem::size_of::<UcallRaw>();
    const _: () = assert!(UCALL_SIZE == 56);
}

/// The `touch` guest (`faultline bench faults`): its parameter block and stage marks.
pub mod touch {
    /// Guest-physical address of [`TouchParams`].
    pub const PARAMS_GPA: u64 = 0x10_0000;
    /// Port whose writes the host timestamps (the `STAGE_*` numbers).
    pub const MARK_PORT: u16 = 0xe8;
    /// Stage written right before the timed loop.
    pub const STAGE_START: u32 = 1;
    /// Stage written right after the timed loop.
    pub const STAGE_END: u32 = 2;
    /// Stage written after the verification pass.
    pub const STAGE_VERIFIED: u32 = 3;
    /// `TouchParams::magic` ("touchPRM").
    pub const PARAMS_MAGIC: u64 = 0x4d52_5068_6375_6f74;

    /// `TouchParams::access`: read only.
    pub const ACCESS_READ: u64 = 0;
    /// Write only.
    pub const ACCESS_WRITE: u64 = 1;
    /// Read (and check), then write, each page.
    pub const ACCESS_READ_WRITE: u64 = 2;

    /// The parameter block at [`PARAMS_GPA`], written by the host before the vCPUs start.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[repr(C)]
    pub struct TouchParams {
        /// [`PARAMS_MAGIC`].
        pub magic: u64,
        /// First byte of vCPU 0's region.
        pub region_gpa: u64,
        /// Bytes per vCPU.
        pub bytes_per_vcpu: u64,
        /// Bytes between accesses (4096: one per page).
        pub stride: u64,
        /// `ACCESS_*`.
        pub access: u64,
        /// 0 sequential, 1 random.
        pub random: u64,
        /// 0: first reads see zero; 1: they see the pattern.
        pub expect: u64,
        /// Seed of the random order.
        pub seed: u64,
        /// vCPUs that finished verifying (the guest updates it atomically; the barrier
        /// before vCPU 0 reports done).
        pub finished: u64,
        /// Accesses made per vCPU (written by the guest, checked by the host).
        pub touched: [u64; super::MAX_VCPUS],
    }

    /// Offset of [`TouchParams::touched`] in the block.
    pub const TOUCHED_OFFSET: u64 = core::mem::offset_of!(TouchParams, touched) as u64;
    /// Offset of [`TouchParams::finished`] in the block.
    pub const FINISHED_OFFSET: u64 = core::mem::offset_of!(TouchParams, finished) as u64;
    const _: () = assert!(TOUCHED_OFFSET == 9 * 8);

    impl TouchParams {
        /// The block as the little-endian words the guest reads (host side).
        pub fn to_words(&self) -> [u64; 9 + super::MAX_VCPUS] {
            let mut w = [0u64; 9 + super::MAX_VCPUS];
            let head = [
                self.magic,
                self.region_gpa,
                self.bytes_per_vcpu,
                self.stride,
                self.access,
                self.random,
                self.expect,
                self.seed,
                self.finished,
            ];
            w[..9].copy_from_slice(&head);
            w[9..].copy_from_slice(&self.touched);
            w
        }
    }
}

/// The `agent` guest (`vmm::check::agent`): performs single guest accesses on command.
///
/// # Protocol
///
/// Each vCPU `i` owns a [`Mailbox`] at [`mailbox_gpa`]`(i)` in the agent's own RAM. At start
/// the guest fills `magic`, `vcpu` and [`AccessCode`] (where its access instructions are),
/// sets `result.status = READY` and writes `i` (one byte) to its doorbell port
/// [`DOORBELL_PORT_BASE`]` + i`. The host's doorbell device does not return from that port
/// write until it has put the next [`Command`] into the mailbox, so the `out` both says
/// "result ready" and "give me the next command"; one port per vCPU keeps a blocked vCPU
/// from holding up the others on the bus. The guest then performs the command, writes the
/// [`AgentResult`] (same `seq`) and rings again.
///
/// # Accesses
///
/// Reads and writes are one 8-byte `mov rax, [rbx]` / `mov [rbx], rax` at the published
/// addresses; exec is `call r11` with every other general register holding
/// [`EXEC_POISON`] (non-canonical), so a zero page's `00 00` (`add [rax], al`) raises #GP at
/// once and a `ret` (0xc3) returns. An exception (the guest installs an IDT for vectors
/// 0..32) ends the access with status `EXCEPTION`. When `KVM_RUN` fails with `EFAULT` at a
/// published access instruction (or, for exec, at the called gva), the host sets RIP to
/// [`AccessCode::efault_resume`] (for exec also RSP += 8, popping the return address) and
/// the guest reports `SKIPPED_BY_HOST`.
pub mod agent {
    /// Guest-physical address of vCPU 0's mailbox (below the guest image at 2 MiB).
    pub const MAILBOX_GPA: u64 = 0x10_0000;
    /// Bytes between consecutive vCPUs' mailboxes.
    pub const MAILBOX_STRIDE: u64 = 512;
    /// `Mailbox::magic` once the guest has set it up ("agentMBX").
    pub const MAILBOX_MAGIC: u64 = 0x5842_4d74_6e65_6761;
    /// vCPU `i` rings port `DOORBELL_PORT_BASE + i` (an 8-bit `out` of `i`).
    pub const DOORBELL_PORT_BASE: u16 = 0x600;
    /// Ports in the doorbell range (one per possible vCPU).
    #[allow(clippy::cast_possible_truncation)] // checked just below
    pub const DOORBELL_PORTS: u16 = super::MAX_VCPUS as u16;
    const _: () = assert!(super::MAX_VCPUS <= 256 && DOORBELL_PORT_BASE as usize + 256 <= 0x10000);
    /// The host writes the page tables mapping scenario windows (gva == gpa) from here on.
    pub const PT_POOL_GPA: u64 = 0x100_0000;
    /// End of the page-table pool: the agent needs at least this much RAM.
    pub const PT_POOL_END: u64 = 0x300_0000;
    /// Lowest gpa a scenario window may start at (above the guest's 4 GiB identity map).
    pub const WINDOW_MIN_GPA: u64 = 4 << 30;
    /// What the host's MMIO recorder returns for a read of a gpa without a memslot
    /// ("mmiommio", truncated to the access size).
    pub const MMIO_READ_PATTERN: u64 = 0x6f69_6d6d_6f69_6d6d;
    /// Every general register but RSP and the target holds this during an exec: a
    /// non-canonical address, so any memory operand through it raises #GP.
    pub const EXEC_POISON: u64 = 0x0bad_0000_0bad_0000;

    /// Guest-physical address of vCPU `index`'s mailbox.
    pub const fn mailbox_gpa(index: u64) -> u64 {
        MAILBOX_GPA + index * MAILBOX_STRIDE
    }

    /// `Command::op` values.
    pub mod op {
        /// 8-byte read at `gva`; the result's `value` is what was read.
        pub const READ8: u64 = 1;
        /// 8-byte write of `value` at `gva`.
        pub const WRITE8: u64 = 2;
        /// `call gva`.
        pub const EXEC: u64 = 3;
        /// Repeat the access `loop_op` (READ8/WRITE8/EXEC) at `gva` `iterations` times, or
        /// until the host sets `Mailbox::stop` when `iterations` is 0, counting outcomes.
        pub const LOOP: u64 = 4;
        /// Stop: vCPU 0 ends the VM with status 0, other vCPUs halt.
        pub const EXIT: u64 = 5;
    }

    /// `AgentResult::status` values.
    pub mod status {
        /// The guest is set up and waits for its first command.
        pub const READY: u64 = 0;
        /// The access completed (`value` holds what a read returned).
        pub const COMPLETED: u64 = 1;
        /// The access raised an exception (`vector`, `error_code`, `cr2`, `rip`).
        pub const EXCEPTION: u64 = 2;
        /// KVM_RUN failed at the access and the host resumed the guest past it.
        pub const SKIPPED_BY_HOST: u64 = 3;
        /// The command was not understood (unknown `op`).
        pub const BAD_COMMAND: u64 = 4;
        /// A loop finished (counts in the result).
        pub const LOOP_DONE: u64 = 5;
    }

    /// What the host asks (host-written, guest-read).
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    #[repr(C)]
    pub struct Command {
        /// Increases by one per command; the result carries it back.
        pub seq: u64,
        /// [`op`].
        pub op: u64,
        /// Guest-virtual address of the access (scenario windows map gva == gpa).
        pub gva: u64,
        /// Value a write stores.
        pub value: u64,
        /// For `LOOP`: the access to repeat.
        pub loop_op: u64,
        /// For `LOOP`: iterations, 0 = until `Mailbox::stop`.
        pub iterations: u64,
    }

    /// What the guest reports (guest-written, host-read).
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    #[repr(C)]
    pub struct AgentResult {
        /// The command's `seq`.
        pub seq: u64,
        /// [`status`].
        pub status: u64,
        /// Value read.
        pub value: u64,
        /// Exception vector.
        pub vector: u64,
        /// Exception error code (0 for vectors without one).
        pub error_code: u64,
        /// CR2 at the exception (the faulting address for #PF).
        pub cr2: u64,
        /// RIP of the faulting instruction.
        pub rip: u64,
        /// Loop: iterations run.
        pub iterations: u64,
        /// Loop: accesses that completed.
        pub completed: u64,
        /// Loop: accesses that raised an exception.
        pub exceptions: u64,
        /// Loop: accesses the host skipped (KVM_RUN failed).
        pub skipped: u64,
    }

    /// Where the guest's access instructions are (guest-published at start).
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    #[repr(C)]
    pub struct AccessCode {
        /// The `mov rax, [rbx]` of a read.
        pub read_insn: u64,
        /// The `mov [rbx], rax` of a write.
        pub write_insn: u64,
        /// The `call r11` of an exec.
        pub exec_insn: u64,
        /// The instruction after `call r11` (where a `ret` at the target returns).
        pub exec_return: u64,
        /// Where the host resumes the guest after KVM_RUN failed at an access.
        pub efault_resume: u64,
    }

    /// Guest-private state (the exception handler's scratch), documented for debugging.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    #[repr(C)]
    pub struct Scratch {
        /// RSP inside the access routine (0 outside an access).
        pub saved_rsp: u64,
        /// Last exception vector.
        pub vector: u64,
        /// Last exception error code.
        pub error_code: u64,
        /// Last CR2.
        pub cr2: u64,
        /// Last faulting RIP.
        pub rip: u64,
        /// Accesses the last `agent_access` call completed (it repeats a read or write
        /// in a tight loop, so a race loop costs a few instructions per access).
        pub completed: u64,
    }

    /// One vCPU's mailbox at [`mailbox_gpa`].
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    #[repr(C, align(64))]
    pub struct Mailbox {
        /// [`MAILBOX_MAGIC`] once the guest set it up.
        pub magic: u64,
        /// The vCPU's index.
        pub vcpu: u64,
        /// Host-written: nonzero ends a `LOOP` with `iterations == 0`.
        pub stop: u64,
        /// Reserved.
        pub reserved: u64,
        /// The current command.
        pub command: Command,
        /// The last result.
        pub result: AgentResult,
        /// Guest-published code addresses.
        pub code: AccessCode,
        /// Guest-private.
        pub scratch: Scratch,
    }

    /// Offset of [`Mailbox::stop`].
    pub const STOP_OFFSET: u64 = core::mem::offset_of!(Mailbox, stop) as u64;
    /// Offset of [`Mailbox::command`].
    pub const COMMAND_OFFSET: u64 = core::mem::offset_of!(Mailbox, command) as u64;
    /// Offset of [`Mailbox::result`].
    pub const RESULT_OFFSET: u64 = core::mem::offset_of!(Mailbox, result) as u64;
    /// Offset of [`Mailbox::code`].
    pub const CODE_OFFSET: u64 = core::mem::offset_of!(Mailbox, code) as u64;
    /// Offset of [`Mailbox::scratch`].
    pub const SCRATCH_OFFSET: u64 = core::mem::offset_of!(Mailbox, scratch) as u64;
    /// Size of a [`Mailbox`].
    pub const MAILBOX_SIZE: u64 = core::mem::size_of::<Mailbox>() as u64;
    const _: () = assert!(MAILBOX_SIZE <= MAILBOX_STRIDE);
    const _: () = assert!(
        mailbox_gpa(super::MAX_VCPUS as u64) <= 0x20_0000,
        "mailboxes must stay below the guest image"
    );
    const _: () = assert!(SCRATCH_OFFSET == 26 * 8);
    /// Offset of [`Scratch::completed`] in the scratch area.
    pub const SCRATCH_COMPLETED: u64 = core::mem::offset_of!(Scratch, completed) as u64;

    /// Reads `N` little-endian words from `bytes` (host side; short input gives zeros).
    pub fn words<const N: usize>(bytes: &[u8]) -> [u64; N] {
        let mut w = [0u64; N];
        for (i, c) in bytes.chunks_exact(8).take(N).enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            w[i] = u64::from_le_bytes(b);
        }
        w
    }

    impl Command {
        /// The command as the words the guest reads.
        pub fn to_words(&self) -> [u64; 6] {
            [
                self.seq,
                self.op,
                self.gva,
                self.value,
                self.loop_op,
                self.iterations,
            ]
        }
    }

    impl AgentResult {
        /// Decodes a result from its little-endian bytes.
        pub fn from_bytes(bytes: &[u8]) -> Self {
            let w: [u64; 11] = words(bytes);
            AgentResult {
                seq: w[0],
                status: w[1],
                value: w[2],
                vector: w[3],
                error_code: w[4],
                cr2: w[5],
                rip: w[6],
                iterations: w[7],
                completed: w[8],
                exceptions: w[9],
                skipped: w[10],
            }
        }
    }

    impl AccessCode {
        /// Decodes the published addresses from their little-endian bytes.
        pub fn from_bytes(bytes: &[u8]) -> Self {
            let w: [u64; 5] = words(bytes);
            AccessCode {
                read_insn: w[0],
                write_insn: w[1],
                exec_insn: w[2],
                exec_return: w[3],
                efault_resume: w[4],
            }
        }
    }

    /// Size in bytes of [`AgentResult`].
    pub const RESULT_SIZE: usize = core::mem::size_of::<AgentResult>();
    /// Size in bytes of [`AccessCode`].
    pub const CODE_SIZE: usize = core::mem::size_of::<AccessCode>();
    /// Size in bytes of [`Command`].
    pub const COMMAND_SIZE: usize = core::mem::size_of::<Command>();
}

#[cfg(test)]
mod tests {
    use super::agent::*;

    #[test]
    fn mailbox_layout_is_the_documented_one() {
        assert_eq!(COMMAND_OFFSET, 32);
        assert_eq!(RESULT_OFFSET, 32 + 48);
        assert_eq!(CODE_OFFSET, 32 + 48 + 88);
        assert_eq!(MAILBOX_SIZE, 256);
        assert_eq!(mailbox_gpa(3), 0x10_0000 + 3 * 512);
    }

    #[test]
    fn result_and_code_decode_from_le_bytes() {
        let mut b = [0u8; RESULT_SIZE];
        for i in 0..11u64 {
            b[i as usize * 8..i as usize * 8 + 8].copy_from_slice(&(i + 100).to_le_bytes());
        }
        let r = AgentResult::from_bytes(&b);
        assert_eq!((r.seq, r.status, r.skipped), (100, 101, 110));
        let c = AccessCode::from_bytes(&b[..CODE_SIZE]);
        assert_eq!((c.read_insn, c.efault_resume), (100, 104));
        // Short input decodes what is there and zeros the rest, never panics.
        let r = AgentResult::from_bytes(&b[..12]);
        assert_eq!((r.seq, r.status), (100, 0));
    }

    #[test]
    fn touch_params_words_match_the_struct_order() {
        let p = super::touch::TouchParams {
            magic: super::touch::PARAMS_MAGIC,
            region_gpa: 1,
            bytes_per_vcpu: 2,
            stride: 3,
            access: 4,
            random: 5,
            expect: 6,
            seed: 7,
            finished: 8,
            touched: [9; super::MAX_VCPUS],
        };
        let w = p.to_words();
        assert_eq!(w[0], super::touch::PARAMS_MAGIC);
        assert_eq!(w[8], 8);
        assert_eq!(w[super::touch::TOUCHED_OFFSET as usize / 8], 9);
        assert_eq!(
            core::mem::size_of::<super::touch::TouchParams>(),
            w.len() * 8
        );
    }
}
