//! The launch flow: `VmConfig` -> KVM -> guest RAM -> devices -> loader -> vCPU threads ->
//! event loop -> the guest's exit.
//!
//! ```no_run
//! use vmm::{config::VmConfig, launch::{Vmm, VmIo}};
//! let outcome = Vmm::new(VmConfig::default(), VmIo::stdio()).unwrap().run().unwrap();
//! std::process::exit(outcome.exit.status());
//! ```

use crate::boot::{self, BootError};
use crate::config::{Payload, ValidationError, VmConfig};
use crate::guests::{self, GuestLoadError};
use crate::memory::{create_guest_memory, GuestRamError};
use crate::vstate::kvm::{open_kvm, KvmOpenError};
use crate::vstate::vcpu::{self, ExitContext, VcpuSetupError, VcpuStats};
use crate::vstate::vm::{Vm, VmError};
use crate::vstate::{ApStartup, EntryPoint};
use devices::bus::Bus;
use devices::console::Console;
use devices::debug_exit::{DebugExit, DEBUG_EXIT_PORT};
use devices::exit::{ExitSignal, VmExit};
use devices::i8042::{I8042, I8042_BASE, I8042_LEN};
use devices::serial::{SerialPort, COM1_BASE, COM1_IRQ, COM1_LEN};
use devices::ucall::{UcallPort, UcallRecord, UCALL_LEN, UCALL_PORT};
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Errors launching or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ValidationError),
    /// KVM could not be opened.
    #[error(transparent)]
    Kvm(#[from] KvmOpenError),
    /// Guest RAM could not be created.
    #[error(transparent)]
    Memory(#[from] GuestRamError),
    /// VM setup failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// vCPU setup failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuSetupError),
    /// A built-in guest did not load.
    #[error(transparent)]
    Guest(#[from] GuestLoadError),
    /// The kernel did not load.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// Device setup failed.
    #[error("Setting up devices failed: {0}")]
    Devices(#[source] std::io::Error),
    /// The event loop failed.
    #[error("Event loop failed: {0}")]
    EventLoop(String),
}

/// Where the guest console goes and whether host stdin feeds the serial port.
#[derive(Debug, Clone)]
pub struct VmIo {
    /// Serial output and ucall prints.
    pub console: Console,
    /// Forward the process's stdin to the serial port.
    pub stdin: bool,
}

impl VmIo {
    /// stdout and stdin.
    pub fn stdio() -> Self {
        VmIo {
            console: Console::stdout(),
            stdin: true,
        }
    }

    /// A console captured in a buffer (tests), no stdin.
    pub fn captured() -> (Self, Arc<Mutex<Vec<u8>>>) {
        let (console, buf) = Console::buffer();
        (
            VmIo {
                console,
                stdin: false,
            },
            buf,
        )
    }
}

/// Host-side timestamps of one run (for `faultline bench boot`).
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    /// `Vmm::new` was called.
    pub start: Instant,
    /// The vCPUs were about to enter the guest.
    pub vcpus_started: Instant,
    /// The first vCPU exit to userspace (the guest ran its first instructions before it).
    pub first_exit: Option<Instant>,
    /// The VM ended.
    pub end: Instant,
}

/// This process's resident memory and how much of it is guest RAM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemorySample {
    /// VmRSS from /proc/self/status, bytes.
    pub rss: u64,
    /// Guest RAM resident (mincore), bytes.
    pub guest_resident: u64,
}

impl MemorySample {
    /// Resident memory that is not guest RAM: the VMM's own overhead.
    pub fn overhead(&self) -> u64 {
        self.rss.saturating_sub(self.guest_resident)
    }

    fn take(mem: &GuestMemoryMmap) -> Self {
        let rss = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .unwrap_or(0)
            * 1024;
        MemorySample {
            rss,
            guest_resident: crate::memory::backing::resident_bytes(mem),
        }
    }
}

/// What a finished VM reports.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// Why it ended; `exit.status()` is the process exit status.
    pub exit: VmExit,
    /// Every ucall, with the vCPU that made it.
    pub ucalls: Vec<UcallRecord>,
    /// Unclaimed ports the guest accessed.
    pub unknown_ports: Vec<u64>,
    /// Unclaimed MMIO addresses the guest accessed.
    pub unknown_mmio: Vec<u64>,
    /// Per-vCPU counters.
    pub vcpu_stats: Vec<VcpuStats>,
    /// Process memory when the vCPUs had stopped, before guest RAM was unmapped.
    pub memory: MemorySample,
    /// Timestamps.
    pub timeline: Timeline,
}

/// What [`Vmm::setup`] builds.
struct Parts {
    exit: Arc<ExitSignal>,
    pio: Bus,
    serial: Arc<Mutex<SerialPort>>,
    ucalls: Arc<Mutex<Vec<UcallRecord>>>,
    vcpus: Vec<kvm_ioctls::VcpuFd>,
}

/// A VM ready to run.
pub struct Vmm {
    config: VmConfig,
    io: VmIo,
    start: Instant,
    mem: GuestMemoryMmap,
    vm: Vm,
    vcpus: Vec<kvm_ioctls::VcpuFd>,
    exit: Arc<ExitSignal>,
    pio: Bus,
    mmio: Bus,
    serial: Arc<Mutex<SerialPort>>,
    ucalls: Arc<Mutex<Vec<UcallRecord>>>,
}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm").field("config", &self.config).finish()
    }
}

impl Vmm {
    /// Validates `config`, opens KVM, creates guest RAM, devices and vCPUs and loads the
    /// payload.
    ///
    /// Registering guest RAM with KVM waits for an SRCU grace period (several ms on a busy
    /// nested host, whatever the size), so a second thread does it while this one sets up
    /// the devices, loads the payload and creates the vCPUs; both finish before any vCPU
    /// runs. The PIT (another grace period) is created on that thread too, and only for a
    /// Linux kernel: the built-in guests never program it.
    pub fn new(config: VmConfig, io: VmIo) -> Result<Vmm, VmmError> {
        let start = Instant::now();
        config.validate()?;
        let kvm = open_kvm(&config.kvm_device)?;
        let mem = create_guest_memory(&config.memory)?;
        let vm = Vm::create(&kvm, config.vcpus)?;
        let parts = std::thread::scope(|s| {
            // The side thread's own start-up (clone, malloc arena) takes ~1 ms here, so the
            // grace-period waits start on this thread right away and the setup goes aside.
            let setup = std::thread::Builder::new()
                .name("vm-setup".into())
                .spawn_scoped(s, || Self::setup(&config, &io, &kvm, &mem, &vm));
            match setup {
                Ok(h) => {
                    let slots = Self::memslots_and_pit(&config, &vm, &mem);
                    let parts = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
                    slots?;
                    parts
                }
                // No thread: one after the other.
                Err(_) => {
                    Self::memslots_and_pit(&config, &vm, &mem)?;
                    Self::setup(&config, &io, &kvm, &mem, &vm)
                }
            }
        })?;
        let Parts {
            exit,
            pio,
            serial,
            ucalls,
            vcpus,
        } = parts;
        Ok(Vmm {
            config,
            io,
            start,
            mem,
            vm,
            vcpus,
            exit,
            pio,
            mmio: Bus::new("MMIO"),
            serial,
            ucalls,
        })
    }

    /// Registers guest RAM and, for a Linux kernel, creates the PIT.
    fn memslots_and_pit(config: &VmConfig, vm: &Vm, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        vm.register_memory(mem)?;
        if matches!(config.payload, Payload::Kernel(_)) {
            vm.create_pit()?;
        }
        Ok(())
    }

    /// Everything but guest RAM registration and the PIT: devices, payload, vCPUs.
    fn setup(
        config: &VmConfig,
        io: &VmIo,
        kvm: &kvm_ioctls::Kvm,
        mem: &GuestMemoryMmap,
        vm: &Vm,
    ) -> Result<Parts, VmmError> {
        let exit = Arc::new(ExitSignal::new().map_err(VmmError::Devices)?);
        let irq = EventFd::new(EFD_NONBLOCK).map_err(VmmError::Devices)?;
        vm.register_irqfd(&irq, COM1_IRQ)?;
        let serial = Arc::new(Mutex::new(SerialPort::new(irq, io.console.clone())));
        let ucall = UcallPort::new(mem.clone(), io.console.clone(), exit.clone());
        let ucalls = ucall.log();
        let mut pio = Bus::new("port");
        let insert = |bus: &mut Bus, base: u16, len: u16, dev: devices::bus::SharedDevice| {
            bus.insert(u64::from(base), u64::from(len), dev)
                .map_err(|e| VmmError::Devices(std::io::Error::other(e)))
        };
        insert(&mut pio, COM1_BASE, COM1_LEN, serial.clone())?;
        insert(
            &mut pio,
            I8042_BASE,
            I8042_LEN,
            Arc::new(Mutex::new(I8042::new(exit.clone()))),
        )?;
        insert(
            &mut pio,
            DEBUG_EXIT_PORT,
            4,
            Arc::new(Mutex::new(DebugExit::new(exit.clone()))),
        )?;
        insert(&mut pio, UCALL_PORT, UCALL_LEN, Arc::new(Mutex::new(ucall)))?;

        vcpu::write_entry_tables(mem)?;
        let (entry, aps) = load_payload(config, mem)?;
        let cpuid = vcpu::supported_cpuid(kvm)?;
        let vcpus = (0..config.vcpus)
            .map(|i| vcpu::create_vcpu(vm.fd(), &cpuid, i, config.vcpus, &entry, aps))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Parts {
            exit,
            pio,
            serial,
            ucalls,
            vcpus,
        })
    }

    /// Guest memory (e.g. for a userfaultfd service or inspection).
    pub fn guest_memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The VM (e.g. for KVM stats).
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// Runs the vCPUs and the event loop until the guest ends the VM.
    pub fn run(mut self) -> Result<RunOutcome, VmmError> {
        vcpu::install_kick_handler().map_err(VmmError::Devices)?;
        let n = self.vcpus.len();
        let finished: Vec<AtomicBool> = (0..n).map(|_| AtomicBool::new(false)).collect();
        let tids: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
        let vcpus = std::mem::take(&mut self.vcpus);
        let vcpus_started = Instant::now();
        let this = &self;
        let (stats, loop_result) = std::thread::scope(|s| {
            let handles: Result<Vec<_>, _> = vcpus
                .into_iter()
                .enumerate()
                .map(|(i, fd)| {
                    let (fin, tid) = (&finished[i], &tids[i]);
                    std::thread::Builder::new()
                        .name(format!("vcpu{i}"))
                        .spawn_scoped(s, move || {
                            tid.store(vcpu::current_thread_id(), Ordering::Release);
                            let ctx = ExitContext {
                                vcpu: i,
                                pio: &this.pio,
                                mmio: &this.mmio,
                                exit: &this.exit,
                            };
                            vcpu::run_vcpu(fd, ctx, &this.mem, fin)
                        })
                })
                .collect::<Result<_, _>>();
            let handles: Vec<_> = match handles {
                Ok(h) => h,
                Err(e) => {
                    this.exit.request(VmExit::Crash {
                        vcpu: 0,
                        reason: format!("spawning a vCPU thread failed: {e}"),
                    });
                    Vec::new()
                }
            };
            let loop_result = this.event_loop();
            // However the loop ended, the VM ends now.
            this.exit.request(VmExit::Crash {
                vcpu: 0,
                reason: "the event loop stopped".into(),
            });
            vcpu::stop_vcpus(&tids, &finished);
            let stats: Vec<VcpuStats> = handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect();
            (stats, loop_result)
        });
        loop_result?;
        let end = Instant::now();
        let memory = MemorySample::take(&self.mem);
        let exit = match self.exit.reason().unwrap_or(VmExit::Reset) {
            // With panic=-1 a panicking Linux guest resets: that is a crash, not a clean end.
            VmExit::Reset => match self.io.console.kernel_panic() {
                Some(line) => VmExit::Crash {
                    vcpu: 0,
                    reason: format!("the guest kernel panicked, then reset the machine: {line}"),
                },
                None => VmExit::Reset,
            },
            other => other,
        };
        let ucalls = self
            .ucalls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Ok(RunOutcome {
            exit,
            ucalls,
            unknown_ports: self.pio.unknown_accesses(),
            unknown_mmio: self.mmio.unknown_accesses(),
            timeline: Timeline {
                start: self.start,
                vcpus_started,
                first_exit: stats.iter().filter_map(|s| s.first_exit).min(),
                end,
            },
            vcpu_stats: stats,
            memory,
        })
    }

    fn event_loop(&self) -> Result<(), VmmError> {
        let err = |e: event_manager::Error| VmmError::EventLoop(format!("{e:?}"));
        let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
            EventManager::new().map_err(err)?;
        let exit_sub = Arc::new(Mutex::new(ExitWatcher(self.exit.clone())));
        em.add_subscriber(exit_sub);
        if self.io.stdin {
            em.add_subscriber(Arc::new(Mutex::new(StdinToSerial(self.serial.clone()))));
        }
        while !self.exit.fired() {
            em.run_with_timeout(200).map_err(err)?;
        }
        Ok(())
    }
}

/// Wakes the event loop when the VM ends.
struct ExitWatcher(Arc<ExitSignal>);

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.eventfd().read();
    }
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(self.0.eventfd(), EventSet::IN));
    }
}

/// Feeds host stdin to the serial port.
struct StdinToSerial(Arc<Mutex<SerialPort>>);

impl MutEventSubscriber for StdinToSerial {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        let mut serial = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let room = serial.input_capacity().min(buf.len());
        if room == 0 {
            return;
        }
        match std::io::stdin().lock().read(&mut buf[..room]) {
            Ok(0) | Err(_) => {
                // EOF or an unreadable stdin: stop watching it.
                let _ = ops.remove(events);
            }
            Ok(n) => {
                let _ = serial.enqueue(&buf[..n]);
            }
        }
    }
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&std::io::stdin(), EventSet::IN));
    }
}

/// Loads what `config` runs and says how the vCPUs start.
fn load_payload(
    config: &VmConfig,
    mem: &GuestMemoryMmap,
) -> Result<(EntryPoint, ApStartup), VmmError> {
    match &config.payload {
        Payload::Guest(name) => {
            let g =
                guests::find(name).ok_or_else(|| ValidationError::UnknownGuest(name.clone()))?;
            Ok((guests::load(mem, g, config.vcpus)?, ApStartup::SameEntry))
        }
        Payload::Kernel(k) => Ok((boot::load(mem, k, config.vcpus)?, ApStartup::WaitForSipi)),
    }
}

/// Launches `config` and waits for it: `Vmm::new(config, io)?.run()`.
pub fn run(config: VmConfig, io: VmIo) -> Result<RunOutcome, VmmError> {
    Vmm::new(config, io)?.run()
}
