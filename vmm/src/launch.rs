//! The launch flow: `VmConfig` -> KVM -> guest RAM -> devices -> loader -> vCPU threads ->
//! event loop -> the guest's exit.
//!
//! Every VM faultline runs is built here, by one [`VmBuilder`]: `faultline run`, `bench
//! faults` (an extra memslot over its measured region plus a PIO mark device) and `bench
//! boot` (which spawns `faultline run`). Extension points: extra memslots over caller-made
//! mappings ([`VmBuilder::memslot`]), extra devices ([`VmBuilder::pio_device`],
//! [`VmBuilder::mmio_device`]), a per-exit hook ([`VmBuilder::exit_hook`]), and a controller
//! thread with a handle to the live VM ([`Vmm::run_with`]).
//!
//! ```no_run
//! use vmm::{config::VmConfig, launch::{VmBuilder, VmIo}};
//! let outcome = VmBuilder::new(VmConfig::default(), VmIo::stdio()).build().unwrap().run().unwrap();
//! std::process::exit(outcome.exit.status());
//! ```

use crate::boot::{self, BootError};
use crate::config::{Payload, ValidationError, VmConfig};
use crate::guests::{self, GuestLoadError};
use crate::memory::{create_guest_memory, GuestRamError};
use crate::seccomp::ThreadKind;
pub use crate::vstate::hook::{ExitHook, HookAction, MemoryFault, VcpuControl, VcpuControlError};
use crate::vstate::kvm::{open_kvm, KvmOpenError};
use crate::vstate::vcpu::{self, ExitContext, VcpuSetupError, VcpuStats};
use crate::vstate::vm::{MemslotFlags, Vm, VmError, KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};
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
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
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
    /// An extra memslot is malformed or collides with guest RAM or another slot.
    #[error(transparent)]
    Memslot(#[from] ExtraMemslotError),
    /// A seccomp filter could not be set up.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// An extra device overlaps a built-in device or another extra device.
    #[error("Cannot add {bus} device at {base:#x}+{len:#x}: {reason}; pick a free range")]
    DeviceRange {
        /// `port` or `MMIO`.
        bus: &'static str,
        /// Base address.
        base: u64,
        /// Length.
        len: u64,
        /// The bus's complaint.
        reason: String,
    },
}

/// An extra KVM memslot over a mapping the caller made and keeps alive: it must stay mapped
/// until the [`Vmm`] (and so the VM) is dropped, or until the slot is deleted through
/// [`VmHandle::vm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtraMemslot {
    /// KVM slot id; `None` = the next free one after guest RAM's (guest RAM takes slots
    /// `0..regions`, one per region).
    pub slot: Option<u32>,
    /// Guest-physical start (page aligned, outside guest RAM and other slots).
    pub gpa: u64,
    /// Bytes (a non-zero multiple of 4 KiB).
    pub size: u64,
    /// Host virtual address of the caller's mapping (page aligned).
    pub host_addr: u64,
    /// KVM_MEM_READONLY: guest writes exit as MMIO.
    pub readonly: bool,
    /// KVM_MEM_LOG_DIRTY_PAGES.
    pub dirty_log: bool,
}

impl ExtraMemslot {
    /// The slot's KVM flags.
    pub fn flags(&self) -> MemslotFlags {
        MemslotFlags {
            readonly: self.readonly,
            dirty_log: self.dirty_log,
        }
    }
}

/// An [`ExtraMemslot`] that cannot be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtraMemslotError {
    /// Zero size or not page aligned.
    #[error("Extra memslot at guest {gpa:#x} (host {host_addr:#x}, {size:#x} bytes): gpa, host address and size must be 4 KiB aligned and size non-zero")]
    Misaligned {
        /// Guest-physical start.
        gpa: u64,
        /// Host address.
        host_addr: u64,
        /// Size.
        size: u64,
    },
    /// The range overlaps guest RAM or another extra slot.
    #[error("Extra memslot at guest {gpa:#x}+{size:#x} overlaps {other} at {other_gpa:#x}+{other_size:#x}; move it to a free guest-physical range")]
    Overlap {
        /// Guest-physical start.
        gpa: u64,
        /// Size.
        size: u64,
        /// What it overlaps (`guest RAM` or `memslot N`).
        other: String,
        /// The other range's start.
        other_gpa: u64,
        /// The other range's size.
        other_size: u64,
    },
    /// The slot id is taken.
    #[error(
        "Extra memslot id {slot} is already used by {by}; use slot: None for the next free id"
    )]
    SlotTaken {
        /// Slot id.
        slot: u32,
        /// Who has it.
        by: String,
    },
}

/// Resolves the slot ids of `extra` (guest RAM has `0..ram.len()`) and checks ranges.
fn assign_slots(
    ram: &[(u64, u64)],
    extra: &[ExtraMemslot],
) -> Result<Vec<(u32, ExtraMemslot)>, ExtraMemslotError> {
    const PAGE: u64 = 4096;
    let ram_slots = u32::try_from(ram.len()).unwrap_or(u32::MAX);
    let mut used: Vec<(u32, u64, u64)> = (0..ram_slots)
        .zip(ram.iter())
        .map(|(i, &(g, s))| (i, g, s))
        .collect();
    let mut out = Vec::with_capacity(extra.len());
    // Explicit ids first, so None never takes an id asked for later.
    let taken: Vec<u32> = extra.iter().filter_map(|e| e.slot).collect();
    let mut next = ram_slots;
    for e in extra {
        if e.size == 0 || e.size % PAGE != 0 || e.gpa % PAGE != 0 || e.host_addr % PAGE != 0 {
            return Err(ExtraMemslotError::Misaligned {
                gpa: e.gpa,
                host_addr: e.host_addr,
                size: e.size,
            });
        }
        let slot = match e.slot {
            Some(s) => s,
            None => {
                while taken.contains(&next) || used.iter().any(|u| u.0 == next) {
                    next += 1;
                }
                next
            }
        };
        let name = |s: u32| {
            if s < ram_slots {
                "guest RAM".to_string()
            } else {
                format!("memslot {s}")
            }
        };
        if let Some(u) = used.iter().find(|u| u.0 == slot) {
            return Err(ExtraMemslotError::SlotTaken {
                slot,
                by: name(u.0),
            });
        }
        let end = e.gpa.saturating_add(e.size);
        if let Some(u) = used.iter().find(|u| e.gpa < u.1 + u.2 && u.1 < end) {
            return Err(ExtraMemslotError::Overlap {
                gpa: e.gpa,
                size: e.size,
                other: name(u.0),
                other_gpa: u.1,
                other_size: u.2,
            });
        }
        // KVM's identity-map page and 3 TSS pages (Vm::create sets them; KVM_SET_TSS_ADDR).
        let (rs, re) = (KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS + 3 * PAGE);
        if e.gpa < re && rs < end {
            return Err(ExtraMemslotError::Overlap {
                gpa: e.gpa,
                size: e.size,
                other: "KVM's TSS and identity-map pages".into(),
                other_gpa: rs,
                other_size: re - rs,
            });
        }
        used.push((slot, e.gpa, e.size));
        out.push((slot, *e));
    }
    Ok(out)
}

/// Builds a [`Vmm`]: the one place a VM is set up.
pub struct VmBuilder {
    config: VmConfig,
    io: VmIo,
    memslots: Vec<ExtraMemslot>,
    pio: Vec<(u16, u16, devices::bus::SharedDevice)>,
    mmio: Vec<(u64, u64, devices::bus::SharedDevice)>,
    hook: Option<Arc<dyn ExitHook>>,
    watchdog: Option<(std::time::Duration, crate::vstate::watchdog::Symbols)>,
    seccomp: bool,
}

impl std::fmt::Debug for VmBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmBuilder")
            .field("config", &self.config)
            .field("memslots", &self.memslots)
            .field(
                "pio",
                &self.pio.iter().map(|d| (d.0, d.1)).collect::<Vec<_>>(),
            )
            .field(
                "mmio",
                &self.mmio.iter().map(|d| (d.0, d.1)).collect::<Vec<_>>(),
            )
            .field("hook", &self.hook.is_some())
            .field("seccomp", &self.seccomp)
            .finish()
    }
}

impl VmBuilder {
    /// A VM running `config` with its console on `io`, and nothing extra.
    pub fn new(config: VmConfig, io: VmIo) -> Self {
        VmBuilder {
            config,
            io,
            memslots: Vec::new(),
            pio: Vec::new(),
            mmio: Vec::new(),
            hook: None,
            watchdog: None,
            seccomp: crate::seccomp::default_enabled(),
        }
    }

    /// seccomp filters on the VM's threads (on by default, unless
    /// [`crate::seccomp::set_default_enabled`] said otherwise; see [`crate::seccomp`]): each
    /// vCPU and the event loop install their thread kind's allowlist once set up, and a
    /// system call outside it ends the VM with [`VmExit::SeccompViolation`] (status 104).
    /// `false` (`--no-seccomp`) runs without filters.
    pub fn seccomp(mut self, on: bool) -> Self {
        self.seccomp = on;
        self
    }

    /// A watchdog: when no vCPU exits to userspace for `limit`, the VM ends with
    /// `VmExit::Stalled` and each vCPU's RIP, RSP, CR3, RFLAGS and instruction bytes,
    /// symbolized with `symbols` (see [`crate::vstate::watchdog`]).
    pub fn watchdog(
        mut self,
        limit: std::time::Duration,
        symbols: crate::vstate::watchdog::Symbols,
    ) -> Self {
        self.watchdog = Some((limit, symbols));
        self
    }

    /// An extra KVM memslot over a mapping the caller made and keeps alive (it must outlive
    /// the [`Vmm`]). Registered on the setup side thread like guest RAM, before any vCPU runs.
    pub fn memslot(mut self, slot: ExtraMemslot) -> Self {
        self.memslots.push(slot);
        self
    }

    /// An extra port-I/O device at `base..base + len`.
    pub fn pio_device(mut self, base: u16, len: u16, dev: devices::bus::SharedDevice) -> Self {
        self.pio.push((base, len, dev));
        self
    }

    /// An extra MMIO device at `base..base + len` (for guest-physical addresses no memslot
    /// covers).
    pub fn mmio_device(mut self, base: u64, len: u64, dev: devices::bus::SharedDevice) -> Self {
        self.mmio.push((base, len, dev));
        self
    }

    /// Called on the vCPU thread for what the default dispatch does not handle: KVM_RUN
    /// errors (EFAULT with or without KVM_EXIT_MEMORY_FAULT info, ...) and exits
    /// `dispatch_exit` would treat as a crash or unexpected.
    pub fn exit_hook(mut self, hook: Arc<dyn ExitHook>) -> Self {
        self.hook = Some(hook);
        self
    }

    /// Validates the config, opens KVM, creates guest RAM, the VM, its memslots, devices
    /// and vCPUs, and loads the payload.
    ///
    /// Registering a memslot waits for an SRCU grace period (several ms on a busy nested
    /// host, whatever the size), so a second thread does it (guest RAM and the extra slots)
    /// while this one sets up the devices, loads the payload and creates the vCPUs; both
    /// finish before any vCPU runs. The PIT (another grace period) is created on that thread
    /// too, and only for a Linux kernel: the built-in guests never program it.
    pub fn build(self) -> Result<Vmm, VmmError> {
        let start = Instant::now();
        let VmBuilder {
            config,
            io,
            memslots,
            pio: extra_pio,
            mmio: extra_mmio,
            hook,
            watchdog,
            seccomp,
        } = self;
        config.validate()?;
        let kvm = open_kvm(&config.kvm_device)?;
        let mem = create_guest_memory(&config.memory)?;
        let ram: Vec<(u64, u64)> = mem.iter().map(|r| (r.start_addr().0, r.len())).collect();
        let extra = assign_slots(&ram, &memslots)?;
        let vm = Vm::create(&kvm, config.vcpus)?;
        let parts = std::thread::scope(|s| {
            // The side thread's own start-up (clone, malloc arena) takes ~1 ms here, so the
            // grace-period waits start on this thread right away and the setup goes aside.
            let setup = std::thread::Builder::new()
                .name("vm-setup".into())
                .spawn_scoped(s, || {
                    Vmm::setup(&config, &io, &kvm, &mem, &vm, &extra_pio, &extra_mmio)
                });
            match setup {
                Ok(h) => {
                    let slots = Vmm::memslots_and_pit(&config, &vm, &mem, &extra);
                    let parts = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
                    slots?;
                    parts
                }
                // No thread: one after the other.
                Err(_) => {
                    Vmm::memslots_and_pit(&config, &vm, &mem, &extra)?;
                    Vmm::setup(&config, &io, &kvm, &mem, &vm, &extra_pio, &extra_mmio)
                }
            }
        })?;
        let Parts {
            exit,
            pio,
            mmio,
            serial,
            ucalls,
            vcpus,
        } = parts;
        // Violations wake the event loop through (a duplicate of) the end signal's eventfd.
        let seccomp = if seccomp {
            crate::seccomp::Seccomp::on(Some(exit.eventfd()))?
        } else {
            crate::seccomp::Seccomp::off()
        };
        Ok(Vmm {
            config,
            io,
            start,
            mem,
            vm,
            vcpus,
            exit,
            pio,
            mmio,
            serial,
            ucalls,
            hook,
            extra_slots: extra.iter().map(|e| e.0).collect(),
            watchdog: watchdog
                .map(|(limit, syms)| (crate::vstate::watchdog::Watchdog::new(limit), syms)),
            seccomp,
        })
    }
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
    /// [`VmBuilder::build`] (or `Vmm::new`) started.
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
    /// [`Vmm::run_with`]'s controller returned before the guest ended the VM, so faultline
    /// stopped it (`exit` is then [`VmExit::Reset`] unless the controller requested another
    /// reason).
    pub stopped_by_controller: bool,
}

/// What [`Vmm::setup`] builds.
struct Parts {
    exit: Arc<ExitSignal>,
    pio: Bus,
    mmio: Bus,
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
    hook: Option<Arc<dyn ExitHook>>,
    extra_slots: Vec<u32>,
    watchdog: Option<(
        crate::vstate::watchdog::Watchdog,
        crate::vstate::watchdog::Symbols,
    )>,
    seccomp: crate::seccomp::Seccomp,
}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm").field("config", &self.config).finish()
    }
}

impl Vmm {
    /// Validates `config`, opens KVM, creates guest RAM, devices and vCPUs and loads the
    /// payload: `VmBuilder::new(config, io).build()`.
    pub fn new(config: VmConfig, io: VmIo) -> Result<Vmm, VmmError> {
        VmBuilder::new(config, io).build()
    }

    /// Registers guest RAM and the extra memslots and, for a Linux kernel, creates the PIT.
    fn memslots_and_pit(
        config: &VmConfig,
        vm: &Vm,
        mem: &GuestMemoryMmap,
        extra: &[(u32, ExtraMemslot)],
    ) -> Result<(), VmError> {
        vm.register_memory(mem)?;
        for (slot, e) in extra {
            // The caller keeps the mapping alive longer than the Vmm (ExtraMemslot's contract).
            vm.set_memslot(*slot, e.gpa, e.size, e.host_addr, e.flags())?;
        }
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
        extra_pio: &[(u16, u16, devices::bus::SharedDevice)],
        extra_mmio: &[(u64, u64, devices::bus::SharedDevice)],
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
        for (base, len, dev) in extra_pio {
            pio.insert(u64::from(*base), u64::from(*len), dev.clone())
                .map_err(|e| VmmError::DeviceRange {
                    bus: "port",
                    base: u64::from(*base),
                    len: u64::from(*len),
                    reason: e.to_string(),
                })?;
        }
        let mut mmio = Bus::new("MMIO");
        for (base, len, dev) in extra_mmio {
            mmio.insert(*base, *len, dev.clone())
                .map_err(|e| VmmError::DeviceRange {
                    bus: "MMIO",
                    base: *base,
                    len: *len,
                    reason: e.to_string(),
                })?;
        }

        vcpu::write_entry_tables(mem)?;
        let (entry, aps) = load_payload(config, mem)?;
        let cpuid = vcpu::supported_cpuid(kvm)?;
        let vcpus = (0..config.vcpus)
            .map(|i| vcpu::create_vcpu(vm.fd(), &cpuid, i, config.vcpus, &entry, aps))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Parts {
            exit,
            pio,
            mmio,
            serial,
            ucalls,
            vcpus,
        })
    }

    /// Number of vCPUs.
    pub fn vcpu_count(&self) -> u32 {
        self.config.vcpus
    }

    /// Guest memory (e.g. for a userfaultfd service or inspection).
    pub fn guest_memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The VM (e.g. for KVM stats).
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// The VM's end signal (an [`ExitHook`] that blocks a vCPU thread watches it, so the
    /// thread lets go when the VM ends).
    pub fn exit_signal(&self) -> Arc<ExitSignal> {
        self.exit.clone()
    }

    /// The extra memslots' KVM slot ids, in the order they were given to the builder.
    pub fn extra_memslots(&self) -> &[u32] {
        &self.extra_slots
    }

    /// The VM's seccomp policy: threads that serve this VM outside the builder (uffd
    /// readers, a gdb server) call `seccomp().apply(kind)` once set up, so a violation of
    /// theirs ends this VM too. Off when built with `.seccomp(false)`.
    pub fn seccomp(&self) -> &crate::seccomp::Seccomp {
        &self.seccomp
    }

    /// The binary stats files (KVM_GET_STATS_FD) of every vCPU, in vCPU order (the VM's own
    /// is `stats_fd(vmm.vm().fd())`).
    pub fn vcpu_stats_files(
        &self,
    ) -> Result<Vec<std::fs::File>, crate::vstate::stats::StatsFdError> {
        self.vcpus
            .iter()
            .map(crate::vstate::stats::stats_fd)
            .collect()
    }

    /// Runs the vCPUs and the event loop until the guest ends the VM.
    pub fn run(self) -> Result<RunOutcome, VmmError> {
        self.run_inner(None::<fn(&VmHandle<'_>)>).map(|(o, _)| o)
    }

    /// Runs the VM; `controller` runs on its own thread with a handle to the live VM
    /// (memslot set/delete/move/flags and dirty logs through [`VmHandle::vm`], KVM stats,
    /// guest memory) while the vCPUs run. It starts once every vCPU thread has started
    /// (so [`VmHandle::vcpu_thread_ids`] is complete); the guest may already be running.
    /// When it returns, the VM is stopped (exit [`VmExit::Reset`] unless it called
    /// [`VmHandle::request_stop`], and [`RunOutcome::stopped_by_controller`] set); when the
    /// guest ends the VM first, the run waits for the controller to return (watch
    /// [`VmHandle::stopped`]). Returns the outcome and the controller's value (`None` when
    /// it panicked: the VM then ends as a crash naming that).
    pub fn run_with<T: Send>(
        self,
        controller: impl FnOnce(&VmHandle<'_>) -> T + Send,
    ) -> Result<(RunOutcome, Option<T>), VmmError> {
        self.run_inner(Some(controller))
    }

    fn run_inner<T: Send, F: FnOnce(&VmHandle<'_>) -> T + Send>(
        mut self,
        controller: Option<F>,
    ) -> Result<(RunOutcome, Option<T>), VmmError> {
        vcpu::install_kick_handler().map_err(VmmError::Devices)?;
        let n = self.vcpus.len();
        let finished: Vec<AtomicBool> = (0..n).map(|_| AtomicBool::new(false)).collect();
        let tids: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
        let ktids: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
        let controller_stopped = AtomicBool::new(false);
        // The vCPU fds move to their threads: a controller gets their stats files now.
        let vcpu_stats: Vec<std::fs::File> = if controller.is_some() {
            self.vcpu_stats_files().unwrap_or_default()
        } else {
            Vec::new()
        };
        let vcpus = std::mem::take(&mut self.vcpus);
        let vcpus_started = Instant::now();
        let this = &self;
        let hook: Option<&dyn ExitHook> = this.hook.as_deref();
        let (stats, loop_result, value) = std::thread::scope(|s| {
            let handles: Result<Vec<_>, _> = vcpus
                .into_iter()
                .enumerate()
                .map(|(i, fd)| {
                    let (fin, tid, ktid) = (&finished[i], &tids[i], &ktids[i]);
                    std::thread::Builder::new()
                        .name(format!("vcpu{i}"))
                        .spawn_scoped(s, move || {
                            tid.store(vcpu::current_thread_id(), Ordering::Release);
                            ktid.store(vcpu::current_kernel_tid(), Ordering::Release);
                            // The vCPU fd and its kvm_run mapping exist: filter from here.
                            if let Err(e) = this.seccomp.apply(ThreadKind::Vcpu) {
                                this.exit.request(VmExit::Crash {
                                    vcpu: i,
                                    reason: e.to_string(),
                                });
                                fin.store(true, Ordering::Release);
                                return VcpuStats::default();
                            }
                            let ctx = ExitContext {
                                vcpu: i,
                                pio: &this.pio,
                                mmio: &this.mmio,
                                exit: &this.exit,
                            };
                            let watch = this.watchdog.as_ref().map(|w| &w.0);
                            vcpu::run_vcpu(fd, ctx, &this.mem, fin, hook, watch)
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
            let control = controller.map(|f| {
                let (ktids, finished, stopped) = (&ktids, &finished, &controller_stopped);
                let tids = &tids;
                let vcpu_stats = &vcpu_stats;
                std::thread::Builder::new()
                    .name("vm-controller".into())
                    .spawn_scoped(s, move || {
                        // Every vCPU thread has recorded its id (or already finished).
                        while !ktids.iter().zip(finished).all(|(t, f)| {
                            t.load(Ordering::Acquire) != 0 || f.load(Ordering::Acquire)
                        }) && !this.exit.fired()
                        {
                            std::thread::sleep(std::time::Duration::from_micros(100));
                        }
                        let handle = VmHandle {
                            vm: &this.vm,
                            mem: &this.mem,
                            exit: &this.exit,
                            ktids,
                            tids,
                            finished,
                            extra_slots: &this.extra_slots,
                            controller_stopped: stopped,
                            vcpu_stats,
                            seccomp: &this.seccomp,
                        };
                        let r =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&handle)));
                        match r {
                            Ok(v) => {
                                handle.request_stop(VmExit::Reset);
                                Some(v)
                            }
                            Err(_) => {
                                handle.request_stop(VmExit::Crash {
                                    vcpu: 0,
                                    reason: "the run_with controller panicked".into(),
                                });
                                None
                            }
                        }
                    })
            });
            let control = match control {
                None => None,
                Some(Ok(h)) => Some(h),
                Some(Err(e)) => {
                    this.exit.request(VmExit::Crash {
                        vcpu: 0,
                        reason: format!("spawning the run_with controller thread failed: {e}"),
                    });
                    None
                }
            };
            // The event loop gets a thread of its own, filtered, so this one stays free for
            // the caller's work after the VM (the next VM, the reports).
            let (tids, finished) = (&tids, &finished);
            let loop_result = match std::thread::Builder::new()
                .name("vmm-event".into())
                .spawn_scoped(s, move || this.event_loop(tids, finished, true))
            {
                Ok(h) => h.join().unwrap_or_else(|_| {
                    Err(VmmError::EventLoop("the event-loop thread panicked".into()))
                }),
                // No thread: the loop runs here, unfiltered (this thread outlives the VM).
                Err(_) => this.event_loop(tids, finished, false),
            };
            // However the loop ended, the VM ends now.
            this.exit.request(VmExit::Crash {
                vcpu: 0,
                reason: "the event loop stopped".into(),
            });
            vcpu::stop_vcpus(tids, finished);
            let stats: Vec<VcpuStats> = handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect();
            let value = control.and_then(|h| h.join().ok().flatten());
            (stats, loop_result, value)
        });
        loop_result?;
        let end = Instant::now();
        let memory = MemorySample::take(&self.mem);
        let reason = match self.seccomp.violation() {
            // Whatever the VM's threads requested after the violation, it is why the VM ended.
            Some(v) => v.to_exit(),
            None => self.exit.reason().unwrap_or(VmExit::Reset),
        };
        let exit = match reason {
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
        let outcome = RunOutcome {
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
            stopped_by_controller: controller_stopped.load(Ordering::Acquire),
        };
        Ok((outcome, value))
    }

    /// Runs until the VM ends; `filter`: install the event-loop seccomp filter on this
    /// thread once the epoll set is built (the loop's own thread only).
    fn event_loop(
        &self,
        tids: &[AtomicU64],
        finished: &[AtomicBool],
        filter: bool,
    ) -> Result<(), VmmError> {
        let err = |e: event_manager::Error| VmmError::EventLoop(format!("{e:?}"));
        let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
            EventManager::new().map_err(err)?;
        let exit_sub = Arc::new(Mutex::new(ExitWatcher(self.exit.clone())));
        em.add_subscriber(exit_sub);
        if self.io.stdin {
            em.add_subscriber(Arc::new(Mutex::new(StdinToSerial(self.serial.clone()))));
        }
        if let Some((w, _)) = &self.watchdog {
            w.touch();
        }
        if filter {
            self.seccomp.apply(ThreadKind::EventLoop)?;
        }
        while !self.exit.fired() {
            em.run_with_timeout(200).map_err(err)?;
            if let Some(v) = self.seccomp.violation() {
                self.exit.request(v.to_exit());
            }
            if let Some((w, syms)) = &self.watchdog {
                if w.expired() && !self.exit.fired() {
                    self.report_stall(w, syms, tids, finished);
                }
            }
        }
        Ok(())
    }

    /// Kicks every vCPU out of KVM_RUN so each records where it is, waits up to 2 s for them,
    /// and ends the VM with the report.
    fn report_stall(
        &self,
        w: &crate::vstate::watchdog::Watchdog,
        syms: &crate::vstate::watchdog::Symbols,
        tids: &[AtomicU64],
        finished: &[AtomicBool],
    ) {
        w.request_dump();
        let n = tids.len();
        let deadline = Instant::now() + std::time::Duration::from_secs(2);
        while w.dumps().len() < n && Instant::now() < deadline {
            vcpu::kick_vcpus(tids, finished);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mut report = crate::vstate::watchdog::report(w.limit(), &w.dumps(), n, syms);
        let tail = self.io.console.tail(10);
        if !tail.is_empty() {
            report.push_str("\n  last console lines:");
            for l in tail {
                report.push_str("\n    ");
                report.push_str(&l);
            }
        }
        self.exit.request(VmExit::Stalled { report });
    }
}

/// The live VM, as [`Vmm::run_with`]'s controller sees it.
pub struct VmHandle<'a> {
    vm: &'a Vm,
    mem: &'a GuestMemoryMmap,
    exit: &'a ExitSignal,
    ktids: &'a [AtomicU32],
    tids: &'a [AtomicU64],
    finished: &'a [AtomicBool],
    extra_slots: &'a [u32],
    controller_stopped: &'a AtomicBool,
    vcpu_stats: &'a [std::fs::File],
    seccomp: &'a crate::seccomp::Seccomp,
}

impl std::fmt::Debug for VmHandle<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmHandle")
            .field("extra_slots", &self.extra_slots)
            .finish()
    }
}

impl VmHandle<'_> {
    /// The VM: memslot set/delete/move/flags, dirty logs, its fd for KVM stats.
    pub fn vm(&self) -> &Vm {
        self.vm
    }

    /// Guest RAM (the config's; extra memslots are the caller's own mappings).
    pub fn guest_memory(&self) -> &GuestMemoryMmap {
        self.mem
    }

    /// The VM's end signal (`fired()` once the VM is ending).
    pub fn exit_signal(&self) -> &ExitSignal {
        self.exit
    }

    /// Whether the VM has ended or is ending (the guest ended it, a vCPU crashed, or a
    /// stop was requested).
    pub fn stopped(&self) -> bool {
        self.exit.fired()
    }

    /// Ends the VM with `reason` (ignored if it has already ended). Returns whether this
    /// call ended it.
    pub fn request_stop(&self, reason: VmExit) -> bool {
        let won = self.exit.request(reason);
        if won {
            self.controller_stopped.store(true, Ordering::Release);
        }
        won
    }

    /// The kernel thread ids (gettid(2), as tracefs `set_event_pid` wants) of the vCPU
    /// threads, in vCPU order; 0 for a vCPU thread that ended before recording its id.
    pub fn vcpu_thread_ids(&self) -> Vec<u32> {
        self.ktids
            .iter()
            .map(|t| t.load(Ordering::Acquire))
            .collect()
    }

    /// The extra memslots' KVM slot ids, in the order they were given to the builder.
    pub fn extra_memslots(&self) -> &[u32] {
        self.extra_slots
    }

    /// Kicks every running vCPU thread out of KVM_RUN once (the thread's [`ExitHook::on_kick`]
    /// runs, then it re-enters the guest unless the hook says otherwise).
    pub fn kick_vcpus(&self) {
        vcpu::kick_vcpus(self.tids, self.finished);
    }

    /// Which vCPU threads have finished (left their run loop), in vCPU order.
    pub fn vcpus_finished(&self) -> Vec<bool> {
        self.finished
            .iter()
            .map(|f| f.load(Ordering::Acquire))
            .collect()
    }

    /// A new binary stats file of the VM (KVM_GET_STATS_FD; parse it with
    /// `vstate::stats::StatsReader`).
    pub fn vm_stats_file(&self) -> Result<std::fs::File, crate::vstate::stats::StatsFdError> {
        crate::vstate::stats::stats_fd(self.vm.fd())
    }

    /// The vCPUs' binary stats files, in vCPU order (opened before the vCPUs started; empty
    /// if KVM_GET_STATS_FD failed).
    pub fn vcpu_stats_files(&self) -> &[std::fs::File] {
        self.vcpu_stats
    }

    /// The VM's seccomp policy, for threads the controller starts to serve the VM (a gdb
    /// server, a live uffd resolver): `h.seccomp().apply(ThreadKind::Gdb)` once set up.
    /// The controller thread itself is not filtered (it runs the caller's code).
    pub fn seccomp(&self) -> &crate::seccomp::Seccomp {
        self.seccomp
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

/// Launches `config` and waits for it: `VmBuilder::new(config, io).build()?.run()`.
pub fn run(config: VmConfig, io: VmIo) -> Result<RunOutcome, VmmError> {
    VmBuilder::new(config, io).build()?.run()
}

#[cfg(test)]
mod tests {
    //! Builder extension points on real KVM with the `touch` guest (skipped without
    //! /dev/kvm): an extra memslot and PIO device, an exit hook seeing KVM_RUN's EFAULT, and
    //! a run_with controller deleting a memslot while the guest runs.
    use super::*;
    use crate::config::{Backing, MemoryConfig};
    use crate::measure::workload::{
        AccessPattern, TouchParams, MARK_PORT, PATTERN_MAGIC, REGION_GPA, STAGE_START,
        STAGE_VERIFIED,
    };
    use devices::bus::BusDevice;
    use std::sync::mpsc;
    use vm_memory::MmapRegion;

    fn kvm_present() -> bool {
        let ok = std::fs::File::options()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        if !ok {
            eprintln!("SKIPPED: /dev/kvm is not usable");
        }
        ok
    }

    fn touch_config() -> VmConfig {
        VmConfig {
            memory: MemoryConfig {
                size: 32 << 20,
                backing: Backing::Anon,
            },
            vcpus: 1,
            payload: Payload::Guest("touch".into()),
            ..VmConfig::default()
        }
    }

    fn touch_params(bytes: u64, access: AccessPattern) -> TouchParams {
        TouchParams {
            region_gpa: REGION_GPA,
            bytes_per_vcpu: bytes,
            stride: 4096,
            access,
            random: false,
            expect: 0,
            seed: 1,
        }
    }

    /// Records the stages written to the mark port; optionally holds the vCPU at
    /// STAGE_START until `release` says go.
    #[derive(Default)]
    struct Stages {
        seen: Vec<u32>,
        at_start: Option<mpsc::Sender<()>>,
        release: Option<mpsc::Receiver<()>>,
    }
    impl BusDevice for Stages {
        fn read(&mut self, _: usize, _: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write(&mut self, _: usize, _: u64, data: &[u8]) {
            let mut b = [0u8; 4];
            let n = data.len().min(4);
            b[..n].copy_from_slice(&data[..n]);
            let stage = u32::from_le_bytes(b);
            self.seen.push(stage);
            if stage == STAGE_START {
                if let Some(tx) = self.at_start.take() {
                    let _ = tx.send(());
                }
                if let Some(rx) = self.release.take() {
                    let _ = rx.recv_timeout(std::time::Duration::from_secs(30));
                }
            }
        }
    }

    fn anon(size: usize, prot: i32) -> MmapRegion {
        MmapRegion::build(None, size, prot, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS).unwrap()
    }

    fn region_slot(r: &MmapRegion) -> ExtraMemslot {
        ExtraMemslot {
            slot: None,
            gpa: REGION_GPA,
            size: r.size() as u64,
            host_addr: r.as_ptr() as u64,
            readonly: false,
            dirty_log: false,
        }
    }

    #[test]
    fn extra_memslot_and_pio_device_serve_the_touch_guest() {
        if !kvm_present() {
            return;
        }
        let size = 1 << 20;
        let region = anon(size, libc::PROT_READ | libc::PROT_WRITE);
        let stages = Arc::new(Mutex::new(Stages::default()));
        let (io, _out) = VmIo::captured();
        let vmm = VmBuilder::new(touch_config(), io)
            .memslot(ExtraMemslot {
                dirty_log: true,
                ..region_slot(&region)
            })
            .pio_device(MARK_PORT, 4, stages.clone())
            .build()
            .unwrap();
        // Guest RAM is one region (slot 0): the extra slot is the next free id.
        assert_eq!(vmm.extra_memslots(), &[1]);
        touch_params(size as u64, AccessPattern::WRITE)
            .write(vmm.guest_memory())
            .unwrap();
        let (outcome, bitmap) = vmm
            .run_with(|h| {
                while !h.stopped() {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                h.vm().get_dirty_log(1, size as u64)
            })
            .unwrap();
        assert_eq!(outcome.exit, VmExit::Done(0), "{:?}", outcome.exit);
        assert!(!outcome.stopped_by_controller);
        assert_eq!(stages.lock().unwrap().seen, vec![1, 2, STAGE_VERIFIED]);
        // The guest's writes landed in the caller's mapping ...
        for page in 0..(size / 4096) {
            let off = page * 4096;
            // SAFETY: `off` is inside the live `region` mapping; u64-aligned.
            let v = unsafe { (region.as_ptr().add(off) as *const u64).read_volatile() };
            assert_eq!(v, (REGION_GPA + off as u64) ^ PATTERN_MAGIC, "page {page}");
        }
        // ... and KVM logged every page of the slot dirty.
        let bitmap = bitmap.unwrap().unwrap();
        let dirty: u32 = bitmap.iter().map(|w| w.count_ones()).sum();
        assert_eq!(dirty as usize, size / 4096, "{bitmap:x?}");
    }

    /// (vCPU, errno, memory fault, RIP) of one on_run_error call.
    type RunError = (usize, i32, Option<MemoryFault>, u64);

    /// Records what the hook saw and stops the VM.
    #[derive(Default)]
    struct RecordingHook {
        run_errors: Mutex<Vec<RunError>>,
        unhandled: Mutex<Vec<(usize, String, u64)>>,
    }
    impl ExitHook for RecordingHook {
        fn on_run_error(
            &self,
            vcpu: &mut VcpuControl<'_>,
            errno: i32,
            fault: Option<MemoryFault>,
        ) -> HookAction {
            let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
            self.run_errors
                .lock()
                .unwrap()
                .push((vcpu.index(), errno, fault, rip));
            HookAction::Stop(VmExit::Done(77))
        }
        fn on_unhandled_exit(&self, vcpu: &mut VcpuControl<'_>, what: &str) -> HookAction {
            let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
            self.unhandled
                .lock()
                .unwrap()
                .push((vcpu.index(), what.to_string(), rip));
            HookAction::Stop(VmExit::Done(55))
        }
    }

    /// This development host's KVM is PVM (module kvm_pvm), see platform.md.
    fn pvm_host() -> bool {
        std::path::Path::new("/sys/module/kvm_pvm").exists()
    }

    /// A writable memslot over a PROT_READ mapping, written by the guest. Upstream KVM's
    /// fault path (hva_to_pfn() -> KVM_PFN_ERR_FAULT, kvm_handle_error_pfn() in
    /// arch/x86/kvm/mmu/mmu.c) ends KVM_RUN with -EFAULT (6.12 fills no
    /// KVM_EXIT_MEMORY_FAULT for it; a kernel that does must name the region's gpa).
    /// Measured on this PVM host (shadow MMU, host 6.18): no EFAULT at all; KVM emulates
    /// the access, the emulator's guest write fails, and emulator_read_write_onepage()
    /// (arch/x86/kvm/x86.c) hands it to userspace as KVM_EXIT_MMIO. Reads of PROT_NONE or
    /// unmapped hvas likewise became MMIO reads (checked by hand, not tested here).
    #[test]
    fn a_write_to_a_read_only_mapping_is_efault_upstream_and_mmio_on_pvm() {
        if !kvm_present() {
            return;
        }
        let size = 64 << 10;
        let region = anon(size, libc::PROT_READ);
        let hook = Arc::new(RecordingHook::default());
        let (io, _out) = VmIo::captured();
        let vmm = VmBuilder::new(touch_config(), io)
            .memslot(region_slot(&region))
            .pio_device(MARK_PORT, 4, Arc::new(Mutex::new(Stages::default())))
            .exit_hook(hook.clone())
            .build()
            .unwrap();
        let info = vmm.vm().memory_fault_info();
        touch_params(size as u64, AccessPattern::WRITE)
            .write(vmm.guest_memory())
            .unwrap();
        let outcome = vmm.run().unwrap();
        let errors = hook.run_errors.lock().unwrap().clone();
        eprintln!(
            "KVM_CAP_MEMORY_FAULT_INFO: {info}; run errors {errors:?}; exit {:?}; MMIO {:x?}",
            outcome.exit, outcome.unknown_mmio
        );
        if pvm_host() {
            assert!(errors.is_empty(), "{errors:?}");
            let pages: Vec<u64> = (0..(size as u64 / 4096))
                .map(|p| REGION_GPA + p * 4096)
                .collect();
            assert_eq!(outcome.unknown_mmio, pages);
            // The writes went nowhere: the guest's check reads back the zero page.
            let VmExit::AssertFailed { msg, .. } = &outcome.exit else {
                panic!("{:?}", outcome.exit)
            };
            assert!(msg.contains("reads back 0x0"), "{msg}");
        } else {
            assert_eq!(outcome.exit, VmExit::Done(77), "{:?}", outcome.exit);
            assert_eq!(errors.len(), 1, "{errors:?}");
            let (vcpu, errno, fault, rip) = errors[0];
            assert_eq!((vcpu, errno), (0, libc::EFAULT), "{errors:?}");
            assert!(rip > 0, "{errors:?}");
            if let Some(f) = fault {
                assert!(
                    info,
                    "memory fault info without KVM_CAP_MEMORY_FAULT_INFO: {f:?}"
                );
                assert_eq!(f.gpa, REGION_GPA, "{f:?}");
            }
        }
    }

    #[test]
    fn exit_hook_sees_a_triple_fault_and_chooses_the_exit() {
        if !kvm_present() {
            return;
        }
        let config = VmConfig {
            payload: Payload::Guest("triple-fault".into()),
            ..touch_config()
        };
        let hook = Arc::new(RecordingHook::default());
        let (io, _out) = VmIo::captured();
        let outcome = VmBuilder::new(config, io)
            .exit_hook(hook.clone())
            .build()
            .unwrap()
            .run()
            .unwrap();
        assert_eq!(outcome.exit, VmExit::Done(55));
        let seen = hook.unhandled.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!((seen[0].0, seen[0].1.as_str()), (0, "KVM_EXIT_SHUTDOWN"));
        assert!(seen[0].2 > 0, "{seen:?}");
    }

    /// Calls socket(2) from the vCPU thread (a call no vCPU filter allows) when the guest
    /// triple-faults, then ends the VM as Done(0).
    struct SocketHook(Mutex<Option<i32>>);
    impl ExitHook for SocketHook {
        fn on_run_error(
            &self,
            _: &mut VcpuControl<'_>,
            _: i32,
            _: Option<MemoryFault>,
        ) -> HookAction {
            HookAction::Default
        }
        fn on_unhandled_exit(&self, _: &mut VcpuControl<'_>, _: &str) -> HookAction {
            // SAFETY: plain socket(2); a returned fd is closed at once.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            let errno = if fd >= 0 {
                // SAFETY: our own fd.
                unsafe { libc::close(fd) };
                0
            } else {
                std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
            };
            *self.0.lock().unwrap() = Some(errno);
            HookAction::Stop(VmExit::Done(0))
        }
    }

    #[test]
    fn a_forbidden_syscall_on_a_vcpu_thread_ends_the_vm_naming_it() {
        if !kvm_present() {
            return;
        }
        let config = VmConfig {
            payload: Payload::Guest("triple-fault".into()),
            ..touch_config()
        };
        let run = |seccomp: bool| {
            let hook = Arc::new(SocketHook(Mutex::new(None)));
            let (io, _out) = VmIo::captured();
            let vmm = VmBuilder::new(config.clone(), io)
                .exit_hook(hook.clone())
                .seccomp(seccomp)
                .build()
                .unwrap();
            assert_eq!(vmm.seccomp().enabled(), seccomp);
            let outcome = vmm.run().unwrap();
            let errno = *hook.0.lock().unwrap();
            (outcome, errno)
        };
        let (outcome, errno) = run(true);
        assert_eq!(
            errno,
            Some(libc::EPERM),
            "socket(2) must fail under the filter"
        );
        assert_eq!(
            outcome.exit,
            VmExit::SeccompViolation {
                thread: "vCPU".into(),
                syscall: "socket".into(),
                nr: libc::SYS_socket,
            }
        );
        assert_eq!(
            outcome.exit.status(),
            devices::exit::STATUS_SECCOMP_VIOLATION
        );
        let text = outcome.exit.to_string();
        assert!(
            text.contains("`socket`")
                && text.contains("vCPU thread")
                && text.contains("--no-seccomp"),
            "{text}"
        );
        // The same VM without filters runs as the hook says.
        let (outcome, errno) = run(false);
        assert_eq!(errno, Some(0), "socket(2) works without the filter");
        assert_eq!(outcome.exit, VmExit::Done(0));
    }

    #[test]
    fn controller_deletes_a_memslot_and_the_guest_then_sees_mmio() {
        if !kvm_present() {
            return;
        }
        let size = 64 << 10;
        let region = anon(size, libc::PROT_READ | libc::PROT_WRITE);
        let (at_start_tx, at_start) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let stages = Arc::new(Mutex::new(Stages {
            seen: Vec::new(),
            at_start: Some(at_start_tx),
            release: Some(release_rx),
        }));
        let (io, _out) = VmIo::captured();
        let vmm = VmBuilder::new(touch_config(), io)
            .memslot(region_slot(&region))
            .pio_device(MARK_PORT, 4, stages.clone())
            .build()
            .unwrap();
        touch_params(size as u64, AccessPattern::READ)
            .write(vmm.guest_memory())
            .unwrap();
        let (outcome, deleted) = vmm
            .run_with(move |h| {
                assert_eq!(h.vcpu_thread_ids().len(), 1);
                assert!(h.vcpu_thread_ids()[0] != 0);
                // The guest is parked in its STAGE_START port write.
                at_start.recv().unwrap();
                let slot = h.extra_memslots()[0];
                let r = h.vm().delete_memslot(slot);
                release.send(()).unwrap();
                while !h.stopped() {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                r.is_ok()
            })
            .unwrap();
        assert_eq!(deleted, Some(true));
        // With the slot gone the reads become MMIO exits (unclaimed: all ones), so the
        // guest's zero check fails on the region's first word.
        let VmExit::AssertFailed { msg, .. } = &outcome.exit else {
            panic!("{:?}", outcome.exit)
        };
        assert!(outcome.unknown_mmio.contains(&REGION_GPA), "{outcome:?}");
        assert!(!outcome.stopped_by_controller);
        eprintln!("guest: {msg}");
    }

    #[test]
    fn controller_return_stops_a_running_vm() {
        if !kvm_present() {
            return;
        }
        // serial-echo polls the UART for a line forever without stdin: only the
        // controller can end this VM.
        let config = VmConfig {
            payload: Payload::Guest("serial-echo".into()),
            ..touch_config()
        };
        let (io, out) = VmIo::captured();
        let vmm = VmBuilder::new(config, io).build().unwrap();
        let (outcome, v) = vmm
            .run_with(|h| {
                let t = Instant::now();
                while out.lock().unwrap().is_empty() && t.elapsed().as_secs() < 30 {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                assert!(!h.stopped());
                assert_eq!(h.vcpu_stats_files().len(), 1);
                let vm_stats =
                    crate::vstate::stats::StatsReader::new(h.vm_stats_file().unwrap()).unwrap();
                let vcpu_stats = crate::vstate::stats::StatsReader::new(
                    h.vcpu_stats_files()[0].try_clone().unwrap(),
                )
                .unwrap();
                assert!(vm_stats.read().is_ok());
                // serial-echo polls the UART: the vCPU's exits count up. (This PVM host
                // counts them in `exits` and `insn_emulation`; `io_exits` stays 0.)
                let exits = vcpu_stats.read().unwrap().get("exits");
                assert!(exits.is_some_and(|n| n > 0), "{exits:?}");
                h.guest_memory().num_regions()
            })
            .unwrap();
        assert_eq!(v, Some(1));
        assert!(outcome.stopped_by_controller);
        assert_eq!(outcome.exit, VmExit::Reset);
    }

    /// Counts MMIO reads and answers zero.
    #[derive(Default)]
    struct ZeroMmio(Vec<u64>);
    impl BusDevice for ZeroMmio {
        fn read(&mut self, _: usize, offset: u64, data: &mut [u8]) {
            self.0.push(offset);
            data.fill(0);
        }
        fn write(&mut self, _: usize, _: u64, _: &[u8]) {}
    }

    #[test]
    fn mmio_device_answers_guest_reads_where_no_memslot_is() {
        if !kvm_present() {
            return;
        }
        let size = 16 * 4096u64;
        let dev = Arc::new(Mutex::new(ZeroMmio::default()));
        let (io, _out) = VmIo::captured();
        let vmm = VmBuilder::new(touch_config(), io)
            .mmio_device(REGION_GPA, size, dev.clone())
            .pio_device(MARK_PORT, 4, Arc::new(Mutex::new(Stages::default())))
            .build()
            .unwrap();
        assert!(vmm.extra_memslots().is_empty());
        touch_params(size, AccessPattern::READ)
            .write(vmm.guest_memory())
            .unwrap();
        let outcome = vmm.run().unwrap();
        assert_eq!(outcome.exit, VmExit::Done(0), "{:?}", outcome.exit);
        assert!(outcome.unknown_mmio.is_empty(), "{outcome:?}");
        let reads = dev.lock().unwrap().0.clone();
        // One 8-byte read per page, at each page's offset in the device.
        let pages: Vec<u64> = (0..16).map(|p| p * 4096).collect();
        assert!(reads.starts_with(&pages), "{reads:x?}");
        assert!(outcome.vcpu_stats[0].exit_mmio >= 16);
    }

    #[test]
    fn overlapping_or_taken_memslots_are_refused_before_any_vm() {
        let ram = [(0u64, 32u64 << 20)];
        let slot = |slot, gpa, size| ExtraMemslot {
            slot,
            gpa,
            size,
            host_addr: 0x7f00_0000_0000,
            readonly: false,
            dirty_log: false,
        };
        let e = assign_slots(&ram, &[slot(None, 16 << 20, 4096)]).unwrap_err();
        assert!(e.to_string().contains("overlaps guest RAM"), "{e}");
        let e = assign_slots(&ram, &[slot(Some(0), 1 << 30, 4096)]).unwrap_err();
        assert!(e.to_string().contains("already used by guest RAM"), "{e}");
        let e = assign_slots(&ram, &[slot(None, 0xfff0_0000, 1 << 20)]).unwrap_err();
        assert!(e.to_string().contains("TSS"), "{e}");
        let e = assign_slots(&ram, &[slot(None, 1 << 30, 100)]).unwrap_err();
        assert!(e.to_string().contains("4 KiB aligned"), "{e}");
        let got = assign_slots(
            &ram,
            &[slot(None, 1 << 30, 4096), slot(Some(1), 2 << 30, 4096)],
        )
        .unwrap();
        // The explicit id 1 is kept free: the None slot takes 2.
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![2, 1]);
        let e = assign_slots(
            &ram,
            &[
                slot(None, 1 << 30, 8192),
                slot(None, (1 << 30) + 4096, 4096),
            ],
        )
        .unwrap_err();
        assert!(e.to_string().contains("overlaps memslot 1"), "{e}");
    }
}
