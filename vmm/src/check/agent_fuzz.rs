//! Fuzz targets for the agent's host side (a child module of `agent.rs`, so it reaches the
//! private doorbell, recorder and EFAULT resume logic), run as property tests: mailboxes
//! of guest-chosen bytes (and guest RAM too small to hold them) read at a doorbell, MMIO of
//! any offset and size in a window, and `KVM_RUN` EFAULTs at any RIP/RSP against any
//! published access code. Run many with
//! `PROPTEST_CASES=100000 cargo test --profile fuzz -p vmm --lib fuzz_`.

// Test code: sizes here are small constants.
#![allow(clippy::cast_possible_truncation)]

use super::*;
use proptest::prelude::*;
use vm_memory::GuestMemoryMmap;

const WINDOW: (u64, u64) = (64 << 30, 2 << 20);

fn agent(mem: GuestMemoryMmap, closed: bool) -> Agent {
    let a = Agent::new(2, &[WINDOW]).unwrap();
    a.shared.mem.set(mem).unwrap();
    a.shared.closed.store(closed, Ordering::Release);
    a
}

fn command() -> impl Strategy<Value = Command> {
    (
        any::<u64>(),
        prop_oneof![1..=5u64, any::<u64>()],
        any::<u64>(),
        any::<u64>(),
        prop_oneof![1..=3u64, any::<u64>()],
        any::<u64>(),
    )
        .prop_map(|(seq, op, gva, value, loop_op, iterations)| Command {
            seq,
            op,
            gva,
            value,
            loop_op,
            iterations,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// A doorbell over a mailbox of random bytes, with RAM that may end before the
    /// mailbox: never a panic; the result and code are what the bytes say (or absent when
    /// RAM does not hold them); the posted command is handed over and written back.
    #[test]
    fn fuzz_agent_doorbell(
        ram_pages in prop_oneof![Just(0x400usize), 0x100usize..0x102, 1usize..0x400],
        index in 0..2usize,
        mailbox in prop::collection::vec(any::<u8>(), 512),
        posted in prop::option::of(command()),
        offset in any::<u64>(),
        data in prop::collection::vec(any::<u8>(), 0..8),
    ) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), ram_pages * 4096)]).unwrap();
        let base = mailbox_gpa(index as u64);
        let _ = mem.write_slice(&mailbox, GuestAddress(base));
        let holds = base + 512 <= (ram_pages * 4096) as u64;
        // Without a posted command the doorbell would wait for one: close the agent then,
        // so it hands the guest EXIT instead.
        let a = agent(mem.clone(), posted.is_none());
        a.shared.slots[index].lock().next = posted;
        let mut bell = Doorbell { shared: a.shared.clone(), index };
        bell.write(index, offset, &data);
        let st = a.shared.slots[index].lock();
        prop_assert!(!st.waiting);
        let handed = st.current.expect("a command is handed over");
        match posted {
            Some(c) => prop_assert_eq!(handed, c),
            None => prop_assert_eq!(handed.op, op::EXIT),
        }
        if holds {
            let r = &mailbox[RESULT_OFFSET as usize..RESULT_OFFSET as usize + RESULT_SIZE];
            let c = &mailbox[CODE_OFFSET as usize..CODE_OFFSET as usize + CODE_SIZE];
            prop_assert_eq!(st.result, Some(AgentResult::from_bytes(r)));
            prop_assert_eq!(st.code, Some(AccessCode::from_bytes(c)));
            let mut back = [0u8; 48];
            mem.read_slice(&mut back, GuestAddress(base + COMMAND_OFFSET)).unwrap();
            prop_assert_eq!(faultline_abi::agent::words::<6>(&back), handed.to_words());
        } else {
            prop_assert_eq!(st.result, None);
        }
    }

    /// MMIO in a window from any vCPU index, offset and size: answered with the pattern,
    /// recorded up to the cap, counted always.
    #[test]
    fn fuzz_agent_mmio_recorder(accesses in prop::collection::vec((0..4usize, any::<u64>(), 0..=8usize, any::<bool>()), 1..200)) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let a = agent(mem, true);
        let mut rec = MmioRecorder { shared: a.shared.clone(), base: WINDOW.0 };
        let mut n = [0u64; 2];
        for &(vcpu, off, len, write) in &accesses {
            let mut d = [0u8; 8];
            if write {
                rec.write(vcpu, off, &d[..len]);
            } else {
                rec.read(vcpu, off, &mut d[..len]);
                prop_assert_eq!(&d[..len], &MMIO_READ_PATTERN.to_le_bytes()[..len]);
            }
            if let Some(c) = n.get_mut(vcpu) {
                *c += 1;
            }
        }
        for (i, &count) in n.iter().enumerate() {
            let st = a.shared.slots[i].lock();
            prop_assert_eq!(st.mmio_count, count);
            prop_assert!(st.mmio.len() <= MAX_RECORDS);
        }
    }

    /// EFAULT at any RIP/RSP: the guest is resumed only at its published access (or the
    /// called gva of an exec with the agent's return address on the stack), and then at
    /// its published resume address.
    #[test]
    fn fuzz_resume_after_efault(
        rip in any::<u64>(), rsp in any::<u64>(), stack in prop::option::of(any::<u64>()),
        code in prop::array::uniform5(any::<u64>()), cur in prop::option::of(command()),
        pick in 0..4u8,
    ) {
        let code = AccessCode { read_insn: code[0], write_insn: code[1], exec_insn: code[2], exec_return: code[3], efault_resume: code[4] };
        // Steer RIP onto the interesting values a quarter of the time each.
        let rip = match (pick, cur) {
            (0, _) => code.read_insn,
            (1, _) => code.write_insn,
            (2, Some(c)) => c.gva,
            _ => rip,
        };
        let stack = if pick == 2 { stack.map(|_| code.exec_return) } else { stack };
        let regs = kvm_bindings::kvm_regs { rip, rsp, ..Default::default() };
        let got = resume_after_efault(&regs, &code, cur.as_ref(), |_| stack);
        let at_access = rip == code.read_insn || rip == code.write_insn;
        let exec = cur.is_some_and(|c| c.op == op::EXEC || (c.op == op::LOOP && c.loop_op == op::EXEC));
        let at_exec = exec && cur.is_some_and(|c| c.gva == rip) && stack == Some(code.exec_return);
        match got {
            Some(new) => {
                prop_assert!(at_access || at_exec);
                prop_assert_eq!(new.rip, code.efault_resume);
                let want_rsp = if at_access { rsp } else { rsp.wrapping_add(8) };
                prop_assert_eq!(new.rsp, want_rsp);
            }
            None => prop_assert!(!at_access && !at_exec),
        }
    }
}
