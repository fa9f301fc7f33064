//! Exit dispatch: [`dispatch_exit`] is a free function over a `VcpuExit` so it can be tested
//! with made-up exits and no `/dev/kvm` (like firecracker's `handle_kvm_exit`).

use super::crash::CrashKind;
use crate::vstate::hook::DebugExit;
use devices::bus::Bus;
use devices::exit::{ExitSignal, VmExit};
use kvm_bindings::{KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::VcpuExit;

/// What the vCPU loop does after an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitAction {
    /// Run the vCPU again.
    Continue,
    /// The VM has ended (a device or the guest asked); stop this vCPU.
    Stop,
    /// The guest crashed; the loop reports it with the vCPU's registers.
    Crash(CrashKind),
}
/// Everything an exit may touch.
#[derive(Debug)]
pub struct ExitContext<'a> {
    /// Index of the vCPU that exited.
    pub vcpu: usize,
    /// Port-I/O devices.
    pub pio: &'a Bus,
    /// MMIO devices.
    pub mmio: &'a Bus,
    /// The VM's end signal.
    pub exit: &'a ExitSignal,
}

/// Handles one vCPU exit. Models the userspace half of `kvm_arch_vcpu_ioctl_run()`'s
/// exits (arch/x86/kvm/x86.c): port and MMIO accesses go to the buses (unknown addresses
/// are logged once, not fatal), system events end the VM, and crashes are returned for
/// the caller to report with register state.
pub fn dispatch_exit(exit: VcpuExit<'_>, ctx: &ExitContext<'_>) -> ExitAction {
    let action = match exit {
        VcpuExit::IoOut(port, data) => {
            ctx.pio.write(ctx.vcpu, u64::from(port), data);
            ExitAction::Continue
        }
        VcpuExit::IoIn(port, data) => {
            ctx.pio.read(ctx.vcpu, u64::from(port), data);
            ExitAction::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            ctx.mmio.write(ctx.vcpu, addr, data);
            ExitAction::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            ctx.mmio.read(ctx.vcpu, addr, data);
            ExitAction::Continue
        }
        VcpuExit::Hlt | VcpuExit::IrqWindowOpen | VcpuExit::Intr => ExitAction::Continue,
        VcpuExit::Shutdown => ExitAction::Crash(CrashKind::Shutdown),
        VcpuExit::FailEntry(reason, cpu) => ExitAction::Crash(CrashKind::FailEntry { reason, cpu }),
        VcpuExit::InternalError => ExitAction::Crash(CrashKind::InternalError),
        VcpuExit::SystemEvent(kind, _)
            if kind == KVM_SYSTEM_EVENT_RESET || kind == KVM_SYSTEM_EVENT_SHUTDOWN =>
        {
            ctx.exit.request(VmExit::Reset);
            ExitAction::Stop
        }
        VcpuExit::Debug(d) => ExitAction::Crash(CrashKind::Debug(DebugExit {
            exception: d.exception,
            pc: d.pc,
            dr6: d.dr6,
            dr7: d.dr7,
        })),
        other => ExitAction::Crash(CrashKind::Unexpected(format!("{other:?}"))),
    };
    if action == ExitAction::Continue && ctx.exit.fired() {
        return ExitAction::Stop;
    }
    action
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::bus::BusDevice;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Rec(Vec<(usize, u64, Vec<u8>)>);
    impl BusDevice for Rec {
        fn read(&mut self, _: usize, _: u64, data: &mut [u8]) {
            data.fill(0x42);
        }
        fn write(&mut self, vcpu: usize, offset: u64, data: &[u8]) {
            self.0.push((vcpu, offset, data.to_vec()));
        }
    }

    fn setup() -> (Bus, Bus, ExitSignal, Arc<Mutex<Rec>>) {
        let rec = Arc::new(Mutex::new(Rec::default()));
        let mut pio = Bus::new("port");
        pio.insert(0x3f8, 8, rec.clone()).unwrap();
        (pio, Bus::new("MMIO"), ExitSignal::new().unwrap(), rec)
    }

    #[test]
    fn io_exits_reach_the_device_with_vcpu_and_offset() {
        let (pio, mmio, exit, rec) = setup();
        let ctx = ExitContext {
            vcpu: 2,
            pio: &pio,
            mmio: &mmio,
            exit: &exit,
        };
        assert_eq!(
            dispatch_exit(VcpuExit::IoOut(0x3f9, &[7]), &ctx),
            ExitAction::Continue
        );
        let mut d = [0u8; 1];
        assert_eq!(
            dispatch_exit(VcpuExit::IoIn(0x3f8, &mut d), &ctx),
            ExitAction::Continue
        );
        assert_eq!(d, [0x42]);
        assert_eq!(rec.lock().unwrap().0, vec![(2, 1, vec![7])]);
    }

    #[test]
    fn unknown_port_and_mmio_are_logged_not_fatal() {
        let (pio, mmio, exit, _) = setup();
        let ctx = ExitContext {
            vcpu: 0,
            pio: &pio,
            mmio: &mmio,
            exit: &exit,
        };
        let mut d = [0u8; 4];
        assert_eq!(
            dispatch_exit(VcpuExit::IoIn(0x80, &mut d[..1]), &ctx),
            ExitAction::Continue
        );
        assert_eq!(d[0], 0xff);
        assert_eq!(
            dispatch_exit(VcpuExit::MmioWrite(0xd000_0000, &[1, 2, 3, 4]), &ctx),
            ExitAction::Continue
        );
        assert_eq!(
            dispatch_exit(VcpuExit::MmioRead(0xd000_0000, &mut d), &ctx),
            ExitAction::Continue
        );
        assert_eq!(d, [0xff; 4]);
        assert_eq!(pio.unknown_accesses(), vec![0x80]);
        assert_eq!(mmio.unknown_accesses(), vec![0xd000_0000]);
        assert!(!exit.fired());
    }

    #[test]
    fn crashes_are_reported_as_crashes() {
        let (pio, mmio, exit, _) = setup();
        let ctx = ExitContext {
            vcpu: 0,
            pio: &pio,
            mmio: &mmio,
            exit: &exit,
        };
        assert_eq!(
            dispatch_exit(VcpuExit::Shutdown, &ctx),
            ExitAction::Crash(CrashKind::Shutdown)
        );
        assert_eq!(
            dispatch_exit(VcpuExit::InternalError, &ctx),
            ExitAction::Crash(CrashKind::InternalError)
        );
        assert_eq!(
            dispatch_exit(VcpuExit::FailEntry(0x21, 1), &ctx),
            ExitAction::Crash(CrashKind::FailEntry {
                reason: 0x21,
                cpu: 1
            })
        );
        assert!(matches!(
            dispatch_exit(VcpuExit::Watchdog, &ctx),
            ExitAction::Crash(CrashKind::Unexpected(_))
        ));
    }

    #[test]
    fn system_reset_ends_the_vm_cleanly_and_others_stop_after() {
        let (pio, mmio, exit, _) = setup();
        let ctx = ExitContext {
            vcpu: 1,
            pio: &pio,
            mmio: &mmio,
            exit: &exit,
        };
        assert_eq!(
            dispatch_exit(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, &[]), &ctx),
            ExitAction::Stop
        );
        assert_eq!(exit.reason(), Some(VmExit::Reset));
        assert_eq!(
            dispatch_exit(VcpuExit::IoOut(0x3f8, &[1]), &ctx),
            ExitAction::Stop
        );
    }

    /// Fuzz target for [`dispatch_exit`], run as a property test: sequences of made-up
    /// exits (port and MMIO accesses of any address and size, including the real devices'
    /// ports, system events of any type, crash exits, exits faultline does not handle) on
    /// the machine's real port devices. Run many with
    /// `PROPTEST_CASES=100000 cargo test --profile fuzz -p vmm --lib fuzz_`.
    mod fuzz {
        use super::*;
        use devices::console::Console;
        use devices::debug_exit::{DebugExit, DEBUG_EXIT_PORT};
        use devices::i8042::{I8042, I8042_BASE, I8042_LEN};
        use devices::serial::{SerialPort, COM1_BASE, COM1_LEN};
        use devices::ucall::{UcallPort, UCALL_LEN, UCALL_PORT};
        use proptest::prelude::*;
        use vm_memory::{GuestAddress, GuestMemoryMmap};
        use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

        #[derive(Debug, Clone)]
        enum Exit {
            Out(u16, Vec<u8>),
            In(u16, usize),
            MmioW(u64, Vec<u8>),
            MmioR(u64, usize),
            Event(u32, Vec<u64>),
            Simple(u8),
            FailEntry(u64, u32),
        }

        fn port() -> impl Strategy<Value = u16> {
            prop_oneof![
                Just(COM1_BASE),
                COM1_BASE..COM1_BASE + COM1_LEN,
                I8042_BASE..I8042_BASE + I8042_LEN,
                DEBUG_EXIT_PORT..DEBUG_EXIT_PORT + 4,
                UCALL_PORT..UCALL_PORT + UCALL_LEN,
                any::<u16>(),
            ]
        }

        fn exit() -> impl Strategy<Value = Exit> {
            let data = prop::collection::vec(any::<u8>(), 0..=8);
            prop_oneof![
                8 => (port(), data.clone()).prop_map(|(p, d)| Exit::Out(p, d)),
                4 => (port(), 0..=8usize).prop_map(|(p, n)| Exit::In(p, n)),
                2 => (any::<u64>(), data).prop_map(|(a, d)| Exit::MmioW(a, d)),
                2 => (any::<u64>(), 0..=8usize).prop_map(|(a, n)| Exit::MmioR(a, n)),
                1 => (prop_oneof![1..=10u32, any::<u32>()], prop::collection::vec(any::<u64>(), 0..4))
                    .prop_map(|(k, d)| Exit::Event(k, d)),
                2 => (0..10u8).prop_map(Exit::Simple),
                1 => (any::<u64>(), any::<u32>()).prop_map(|(r, c)| Exit::FailEntry(r, c)),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            /// No panic; crashes only for crash exits; once the VM has ended every exit
            /// stops the vCPU; unclaimed reads return all ones.
            #[test]
            fn fuzz_dispatch_exit(seq in prop::collection::vec(exit(), 1..48), vcpu in 0..4usize) {
                let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
                let end = Arc::new(ExitSignal::new().unwrap());
                let console = Console::new(Box::new(std::io::sink()));
                let irq = EventFd::new(EFD_NONBLOCK).unwrap();
                let mut pio = Bus::new("port");
                pio.insert(COM1_BASE.into(), COM1_LEN.into(), Arc::new(Mutex::new(SerialPort::new(irq, console.clone())))).unwrap();
                pio.insert(I8042_BASE.into(), I8042_LEN.into(), Arc::new(Mutex::new(I8042::new(end.clone())))).unwrap();
                pio.insert(DEBUG_EXIT_PORT.into(), 4, Arc::new(Mutex::new(DebugExit::new(end.clone())))).unwrap();
                pio.insert(UCALL_PORT.into(), UCALL_LEN.into(), Arc::new(Mutex::new(UcallPort::new(mem, console, end.clone())))).unwrap();
                let mmio = Bus::new("MMIO");
                let ctx = ExitContext { vcpu, pio: &pio, mmio: &mmio, exit: &end };
                for e in &seq {
                    let was_fired = end.fired();
                    let mut buf = [0u8; 8];
                    let (action, crash_exit) = match e {
                        Exit::Out(p, d) => (dispatch_exit(VcpuExit::IoOut(*p, d), &ctx), false),
                        Exit::In(p, n) => (dispatch_exit(VcpuExit::IoIn(*p, &mut buf[..*n]), &ctx), false),
                        Exit::MmioW(a, d) => (dispatch_exit(VcpuExit::MmioWrite(*a, d), &ctx), false),
                        Exit::MmioR(a, n) => {
                            let a = dispatch_exit(VcpuExit::MmioRead(*a, &mut buf[..*n]), &ctx);
                            prop_assert!(buf[..*n].iter().all(|&b| b == 0xff));
                            (a, false)
                        }
                        Exit::Event(k, d) => (dispatch_exit(VcpuExit::SystemEvent(*k, d), &ctx), *k != KVM_SYSTEM_EVENT_RESET && *k != KVM_SYSTEM_EVENT_SHUTDOWN),
                        Exit::Simple(i) => {
                            let x = match i {
                                0 => VcpuExit::Hlt,
                                1 => VcpuExit::IrqWindowOpen,
                                2 => VcpuExit::Intr,
                                3 => VcpuExit::Shutdown,
                                4 => VcpuExit::InternalError,
                                5 => VcpuExit::Unknown,
                                6 => VcpuExit::Exception,
                                7 => VcpuExit::Nmi,
                                8 => VcpuExit::Watchdog,
                                _ => VcpuExit::IoapicEoi(*i),
                            };
                            (dispatch_exit(x, &ctx), *i >= 3)
                        }
                        Exit::FailEntry(r, c) => (dispatch_exit(VcpuExit::FailEntry(*r, *c), &ctx), true),
                    };
                    match action {
                        ExitAction::Crash(_) => prop_assert!(crash_exit, "{e:?} crashed"),
                        ExitAction::Continue => prop_assert!(!was_fired && !end.fired(), "{e:?} continued after the end"),
                        ExitAction::Stop => prop_assert!(end.fired()),
                    }
                }
            }
        }
    }
}
