//! Scenario agent for `faultline check`: performs single reads, writes and execs at gpas on host command.
//!
//! The protocol, mailbox layout and constants are `faultline_abi::agent` (shared with the
//! host driver, vmm::check::agent). In short, per vCPU:
//!
//! 1. set up: install an IDT for vectors 0..32, fill the mailbox at
//!    `mailbox_gpa(index)` (magic, index, the addresses of the access instructions), set the
//!    result to READY;
//! 2. ring the doorbell `DOORBELL_PORT_BASE + index`; the host returns from that `out` only
//!    once it has written the next command into the mailbox;
//! 3. perform the command, write the result, go to 2. EXIT ends the loop: vCPU 0 returns
//!    (the runtime reports done(0)), the others halt. A zero command means nobody answered
//!    the doorbell (run without the host driver): vCPU 0 says so and ends with status 3.
//!
//! # The accesses
//!
//! One routine, `agent_access(op, gva, value, mailbox, count)`, in assembly so its
//! instructions are fixed and published (reads and writes repeat `count` times, or until the
//! mailbox's stop flag, in a 6-instruction loop, so a race loop stays cheap):
//!
//! - read: `mov rax, [rbx]` at `agent_read_insn` (rbx = gva);
//! - write: `mov [rbx], rax` at `agent_write_insn` (rax = value);
//! - exec: `call r11` at `agent_exec_insn` (r11 = gva) with every other general register but
//!   RSP set to `EXEC_POISON` (non-canonical), so the zero page's `00 00` (`add [rax], al`)
//!   takes #GP on its first instruction and a `ret` (0xc3) comes back to `agent_exec_return`.
//!
//! The routine saves RSP in the mailbox's scratch area. An exception during the access
//! enters a stub of our IDT (interrupt gates, no IST, on this vCPU's stack), which finds the
//! vCPU from the stack address, stores vector, error code, CR2 and RIP in the scratch area,
//! sets RSP back to the saved value and jumps to `agent_exc_resume` (status EXCEPTION). An
//! exception outside an access loads an empty IDT and executes `ud2`: a triple fault the
//! host reports as a crash with RIP. When KVM_RUN fails at an access (EFAULT) the host sets
//! RIP to `agent_efault_resume` (RSP += 8 for an exec, whose `call` pushed its return
//! address) and the routine returns SKIPPED_BY_HOST.
//!
//! Guest rules (lib.rs): no SSE, no int3, no rdtsc, no xsave.
#![no_std]
#![no_main]

use core::ptr::{addr_of, addr_of_mut};
use guest::abi::agent::{
    mailbox_gpa, op, status, AccessCode, AgentResult, Command, Mailbox, DOORBELL_PORT_BASE,
    EXEC_POISON, MAILBOX_MAGIC, MAILBOX_STRIDE, SCRATCH_COMPLETED, SCRATCH_OFFSET, STOP_OFFSET,
};
use guest::{guest_main, halt, println, Cpu, MAX_VCPUS};

/// vCPU 0's status when no host driver answers the doorbell.
const NO_DRIVER: u64 = 3;

/// What `agent_access` returns (RAX, RDX in the SysV ABI).
#[repr(C)]
struct AccessRet {
    value: u64,
    status: u64,
}

extern "sysv64" {
    /// `count` accesses (0: until `mb.stop`; exec: always one): `op` READ8/WRITE8/EXEC at
    /// `gva`, writing `value`, ending at the first that does not complete; `mb` is this
    /// vCPU's mailbox (its scratch area holds the saved RSP, the exception details and
    /// how many accesses completed).
    fn agent_access(op: u64, gva: u64, value: u64, mb: *mut Mailbox, count: u64) -> AccessRet;
    /// Writes the addresses of the access instructions to `code`.
    fn agent_publish(code: *mut AccessCode);
    /// First exception stub; stub `v` is at `agent_vectors + 16 * v`.
    fn agent_vectors();
}

const GDT_CODE64: u16 = 0x10;
const EXC_VECTORS: usize = 32;

core::arch::global_asm!(
    ".section .text.agent, \"ax\"",
    // agent_access(rdi = op, rsi = gva, rdx = value, rcx = mailbox, r8 = count)
    //   -> (rax = value, rdx = status); scratch.completed = accesses completed.
    // Reads and writes repeat `count` times (0: until the mailbox's stop flag is set) and
    // stop at the first that does not complete; exec runs once.
    ".global agent_access",
    "agent_access:",
    "    push rbx",
    "    push rbp",
    "    push r12",
    "    push r13",
    "    push r14",
    "    push r15",
    "    push rcx",                          // [saved_rsp] = mailbox, for the epilogue
    "    mov [rcx + {scratch}], rsp",        // scratch.saved_rsp
    "    mov rbx, rsi",
    "    mov r12, r8",                       // r12 = count (0 = until stop)
    "    xor r13d, r13d",                    // r13 = completed
    "    mov r14, rcx",                      // r14 = mailbox
    "    cmp rdi, {op_write}",
    "    je 2f",
    "    cmp rdi, {op_exec}",
    "    je 3f",
    "1:  xor eax, eax",
    ".global agent_read_insn",
    "agent_read_insn:",
    "    mov rax, [rbx]",
    "    inc r13",
    "    test r12, r12",
    "    jz 4f",
    "    cmp r13, r12",
    "    jb 1b",
    "    jmp 7f",
    "4:  cmp qword ptr [r14 + {stop}], 0",
    "    je 1b",
    "    jmp 7f",
    "2:  mov rax, rdx",
    ".global agent_write_insn",
    "agent_write_insn:",
    "    mov [rbx], rax",
    "    inc r13",
    "    test r12, r12",
    "    jz 5f",
    "    cmp r13, r12",
    "    jb agent_write_insn",
    "    jmp 6f",
    "5:  cmp qword ptr [r14 + {stop}], 0",
    "    je agent_write_insn",
    "6:  xor eax, eax",
    "7:  mov edx, {st_ok}",
    "    jmp 9f",
    "3:  mov r11, rsi",
    "    movabs rax, {poison}",
    "    mov rbx, rax",
    "    mov rcx, rax",
    "    mov rdx, rax",
    "    mov rsi, rax",
    "    mov rdi, rax",
    "    mov rbp, rax",
    "    mov r8, rax",
    "    mov r9, rax",
    "    mov r10, rax",
    "    mov r12, rax",
    "    mov r13, rax",
    "    mov r14, rax",
    "    mov r15, rax",
    ".global agent_exec_insn",
    "agent_exec_insn:",
    "    call r11",
    ".global agent_exec_return",
    "agent_exec_return:",
    "    xor eax, eax",
    "    mov r13d, 1",
    "    mov edx, {st_ok}",
    "    jmp 9f",
    ".global agent_efault_resume",
    "agent_efault_resume:",
    "    xor eax, eax",
    "    mov edx, {st_skipped}",
    "    jmp 9f",
    "agent_exc_resume:",
    "    xor eax, eax",
    "    mov edx, {st_exc}",
    // Here RSP is the saved one again, whichever way the access ended. After an exec that
    // did not return, r13 is poison: the caller counts an exec from its status.
    "9:  mov rcx, [rsp]",
    "    mov qword ptr [rcx + {scratch}], 0",
    "    mov [rcx + {scratch} + {completed}], r13",
    "    add rsp, 8",
    "    pop r15",
    "    pop r14",
    "    pop r13",
    "    pop r12",
    "    pop rbp",
    "    pop rbx",
    "    ret",
    // agent_publish(rdi = *mut AccessCode)
    ".global agent_publish",
    "agent_publish:",
    "    lea rax, [rip + agent_read_insn]",
    "    mov [rdi], rax",
    "    lea rax, [rip + agent_write_insn]",
    "    mov [rdi + 8], rax",
    "    lea rax, [rip + agent_exec_insn]",
    "    mov [rdi + 16], rax",
    "    lea rax, [rip + agent_exec_return]",
    "    mov [rdi + 24], rax",
    "    lea rax, [rip + agent_efault_resume]",
    "    mov [rdi + 32], rax",
    "    ret",
    // Exception stubs, 16 bytes apart: push a zero error code where the CPU pushes none,
    // push the vector, go to the common handler.
    ".balign 16",
    ".global agent_vectors",
    "agent_vectors:",
    ".irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    ".balign 16",
    ".if (\\v != 8) && (\\v != 10) && (\\v != 11) && (\\v != 12) && (\\v != 13) && (\\v != 14) && (\\v != 17) && (\\v != 21) && (\\v != 29) && (\\v != 30)",
    "    push 0",
    ".endif",
    "    push \\v",
    "    jmp agent_exc_common",
    ".endr",
    // [rsp] = vector, [rsp+8] = error code, [rsp+16] = RIP, then CS, RFLAGS, RSP, SS.
    "agent_exc_common:",
    "    lea rax, [rip + GUEST_STACKS]",
    "    mov rcx, rsp",
    "    sub rcx, rax",
    "    shr rcx, {stack_shift}",             // vCPU index from the stack we are on
    "    cmp rcx, {max_vcpus}",
    "    jae 8f",
    "    imul rax, rcx, {stride}",
    "    add rax, {mailbox0}",                // rax = this vCPU's mailbox
    "    mov rdx, [rax + {scratch}]",         // saved RSP, 0 outside an access
    "    test rdx, rdx",
    "    jz 8f",
    "    mov rcx, [rsp]",
    "    mov [rax + {scratch} + 8], rcx",
    "    mov rcx, [rsp + 8]",
    "    mov [rax + {scratch} + 16], rcx",
    "    mov rcx, cr2",
    "    mov [rax + {scratch} + 24], rcx",
    "    mov rcx, [rsp + 16]",
    "    mov [rax + {scratch} + 32], rcx",
    "    mov rsp, rdx",
    "    jmp agent_exc_resume",
    // Not in an access (or a wild stack): make it a triple fault the host reports.
    "8:  lidt [rip + {null_idtr}]",
    "    ud2",
    scratch = const SCRATCH_OFFSET,
    completed = const SCRATCH_COMPLETED,
    stop = const STOP_OFFSET,
    op_write = const op::WRITE8,
    op_exec = const op::EXEC,
    st_ok = const status::COMPLETED,
    st_skipped = const status::SKIPPED_BY_HOST,
    st_exc = const status::EXCEPTION,
    poison = const EXEC_POISON,
    stack_shift = const 14,
    max_vcpus = const MAX_VCPUS,
    stride = const MAILBOX_STRIDE,
    mailbox0 = const guest::abi::agent::MAILBOX_GPA,
    null_idtr = sym NULL_IDTR,
);

const _: () = assert!(guest::STACK_SIZE == 1 << 14);

/// The operand of `lidt`: limit, base.
#[repr(C, packed)]
struct Idtr {
    limit: u16,
    base: u64,
}

static NULL_IDTR: Idtr = Idtr { limit: 0, base: 0 };

/// One 64-bit interrupt gate.
#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    lo: u64,
    hi: u64,
}

/// Interrupt gate to `handler` in the 64-bit code segment: present, DPL 0, type 0xe.
fn gate(handler: u64) -> Gate {
    let lo = (handler & 0xffff)
        | (u64::from(GDT_CODE64) << 16)
        | (0x8e << 40)
        | (((handler >> 16) & 0xffff) << 48);
    Gate {
        lo,
        hi: handler >> 32,
    }
}

#[repr(C, align(4096))]
struct Idts([[Gate; EXC_VECTORS]; MAX_VCPUS]);

/// One IDT per vCPU, so no vCPU writes a table another one uses.
static mut IDTS: Idts = Idts([[Gate { lo: 0, hi: 0 }; EXC_VECTORS]; MAX_VCPUS]);

fn install_idt(index: usize) {
    let base = agent_vectors as *const () as u64;
    // SAFETY: each vCPU writes only its own row of IDTS, before loading it.
    let table = unsafe { &mut (*addr_of_mut!(IDTS)).0[index] };
    for (v, g) in (0u64..).zip(table.iter_mut()) {
        *g = gate(base + 16 * v);
    }
    let idtr = Idtr {
        limit: (EXC_VECTORS * 16 - 1) as u16,
        base: table.as_ptr() as u64,
    };
    // SAFETY: the table holds valid gates to our stubs and lives forever.
    unsafe { core::arch::asm!("lidt [{}]", in(reg) &idtr, options(nostack, readonly)) };
}

/// Rings the doorbell. Not `nomem`: the result must be stored before the `out`, and the
/// command the host writes during it must be read after.
fn ring(index: u64) {
    let port = DOORBELL_PORT_BASE + index as u16;
    // SAFETY: port I/O exits to the VMM, which writes only our mailbox meanwhile.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") port, in("al") index as u8, options(nostack))
    };
}

/// `count` accesses (see `agent_access`): the last status and value, the exception
/// details if it raised one, and how many completed.
fn access(
    op: u64,
    gva: u64,
    value: u64,
    mb: *mut Mailbox,
    count: u64,
) -> (AccessRet, [u64; 4], u64) {
    // SAFETY: agent_access follows the SysV ABI; exceptions and host skips come back
    // through its epilogue; gva is whatever the host asked for (faults are the point).
    let r = unsafe { agent_access(op, gva, value, mb, count) };
    // SAFETY: mb is this vCPU's mailbox; agent_access and the handler wrote the scratch area.
    let s = unsafe { addr_of!((*mb).scratch).read_volatile() };
    let exc = if r.status == status::EXCEPTION {
        [s.vector, s.error_code, s.cr2, s.rip]
    } else {
        [0; 4]
    };
    let completed = if op == op::EXEC {
        u64::from(r.status == status::COMPLETED)
    } else {
        s.completed
    };
    (r, exc, completed)
}

fn one(cmd: &Command, mb: *mut Mailbox) -> AgentResult {
    let mut res = AgentResult {
        seq: cmd.seq,
        ..AgentResult::default()
    };
    match cmd.op {
        op::READ8 | op::WRITE8 | op::EXEC => {
            let (r, e, _) = access(cmd.op, cmd.gva, cmd.value, mb, 1);
            res.status = r.status;
            res.value = r.value;
            [res.vector, res.error_code, res.cr2, res.rip] = e;
        }
        op::LOOP if matches!(cmd.loop_op, op::READ8 | op::WRITE8 | op::EXEC) => {
            res.status = status::LOOP_DONE;
            loop {
                if cmd.iterations != 0 && res.iterations >= cmd.iterations {
                    break;
                }
                // SAFETY: the host writes `stop` while we run; read it fresh each time.
                if cmd.iterations == 0 && unsafe { addr_of!((*mb).stop).read_volatile() } != 0 {
                    break;
                }
                // The rest of a counted loop, or until stop, in one call.
                let count = cmd.iterations.saturating_sub(res.iterations);
                let (r, e, done) = access(cmd.loop_op, cmd.gva, cmd.value, mb, count);
                res.iterations += done;
                res.completed += done;
                res.value = r.value;
                match r.status {
                    status::COMPLETED => {}
                    status::EXCEPTION => {
                        res.iterations += 1;
                        res.exceptions += 1;
                        [res.vector, res.error_code, res.cr2, res.rip] = e;
                    }
                    _ => {
                        res.iterations += 1;
                        res.skipped += 1;
                    }
                }
            }
        }
        _ => res.status = status::BAD_COMMAND,
    }
    res
}

fn main(cpu: &Cpu) -> u64 {
    if cpu.index >= MAX_VCPUS as u64 {
        halt();
    }
    install_idt(cpu.index as usize);
    let mb = mailbox_gpa(cpu.index) as *mut Mailbox;
    // SAFETY: the mailbox is this vCPU's own (identity-mapped agent RAM below the image).
    unsafe {
        addr_of_mut!((*mb).vcpu).write_volatile(cpu.index);
        agent_publish(addr_of_mut!((*mb).code));
        addr_of_mut!((*mb).scratch.saved_rsp).write_volatile(0);
        addr_of_mut!((*mb).result).write_volatile(AgentResult {
            status: status::READY,
            ..AgentResult::default()
        });
        addr_of_mut!((*mb).magic).write_volatile(MAILBOX_MAGIC);
    }
    loop {
        ring(cpu.index);
        // SAFETY: the host wrote the command during the `out`.
        let cmd = unsafe { addr_of!((*mb).command).read_volatile() };
        if cmd.op == 0 {
            // Nobody answered the doorbell (`faultline run --guest agent` alone): say so
            // instead of spinning.
            if cpu.index == 0 {
                println!("agent: no host driver answered the doorbell; the agent is driven by vmm::check::agent (faultline check)");
                return NO_DRIVER;
            }
            halt();
        }
        if cmd.op == op::EXIT {
            if cpu.index == 0 {
                return 0;
            }
            halt();
        }
        let res = one(&cmd, mb);
        // SAFETY: as above; the host reads it during the next `out`.
        unsafe { addr_of_mut!((*mb).result).write_volatile(res) };
    }
}

guest_main!(main);
