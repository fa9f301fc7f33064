//! The fault-latency workload driver: one fresh VM per (backing, uffd mode), running the
//! `touch` built-in guest (resources/guests/src/bin/touch.rs) over a measured region that
//! has its own memslot.
//!
//! Guest-physical layout: ordinary anonymous RAM `0..BASE_RAM` holds the guest image,
//! stacks, page tables and the parameter block; the measured region starts at
//! [`REGION_GPA`] (1 GiB) inside the identity map and holds `vcpus × bytes_per_vcpu` bytes,
//! vCPU `i`'s slice at `REGION_GPA + i × bytes_per_vcpu`.
//!
//! Timing is host-side: the guest writes stage numbers to [`MARK_PORT`] right before and
//! right after its touch loop; the [`Marks`] device timestamps those exits (exit-to-exit,
//! `Instant::now()` in the vCPU thread right after KVM_RUN returned). KVM binary stats are
//! read at the first vCPU's start mark and the last vCPU's end mark, so their deltas cover
//! the touch stage only.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use devices::bus::BusDevice;
use devices::exit::VmExit;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::report::{BenchReport, RunResult, UffdSummary, VcpuResult};
use crate::config::{Backing, MemoryConfig, Payload, VmConfig};
use crate::launch::{ExtraMemslot, VmBuilder, VmIo};
use crate::memory::uffd::region::{MeasuredRegion, RegionError};
use crate::memory::uffd::vcpu::{BareFaultHook, FaultDevice};
use crate::memory::uffd::{
    MissingResolve, UffdConfig, UffdMode, UffdRegion, UffdService, UffdStartError, UffdStopError,
    WaitMode,
};
use crate::vstate::stats::stats_fd;
use crate::vstate::stats::{StatsReader, StatsSnapshot};
use mmu::backing::BackingSpec;
use mmu::secondary::fault::Access;

/// Guest-physical start of the measured region.
pub const REGION_GPA: u64 = 1 << 30;
/// Most bytes the measured region may span (1 GiB..3 GiB, below the MMIO hole).
pub const MAX_REGION: u64 = 2 << 30;
/// Ordinary guest RAM for the image, stacks and page tables.
pub const BASE_RAM: u64 = 32 << 20;
/// Where the `touch` guest reads its parameters (its `PARAMS_GPA`).
pub const PARAMS_GPA: u64 = 0x10_0000;
/// The port the guest marks its stages on (its `MARK_PORT`).
pub const MARK_PORT: u16 = 0xe8;
/// `Params::magic` of the guest.
const PARAMS_MAGIC: u64 = 0x4d52_5068_6375_6f74;
/// The guest's stage right before its timed loop.
pub const STAGE_START: u32 = 1;
/// The guest's stage right after its timed loop.
pub const STAGE_END: u32 = 2;
/// Offset of `Params::touched` in the guest's parameter block.
const TOUCHED_OFFSET: u64 = 9 * 8;

/// What each touch of the `touch` guest does: one access, or a read then a write, each of
/// the model's one access kind [`Access`] (`mmu::secondary::fault::Access`; the guest does
/// not execute from the region, so there is no exec pattern).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessPattern(&'static [Access]);

impl AccessPattern {
    /// Read and check the data.
    pub const READ: AccessPattern = AccessPattern(&[Access::Read]);
    /// Write (checked in a pass after the timed loop).
    pub const WRITE: AccessPattern = AccessPattern(&[Access::Write]);
    /// Read and check, then write.
    pub const READ_WRITE: AccessPattern = AccessPattern(&[Access::Read, Access::Write]);

    /// The accesses of one touch, in order.
    #[must_use]
    pub fn accesses(self) -> &'static [Access] {
        self.0
    }

    /// The guest's code for it (`Params::access`).
    fn code(self) -> u64 {
        match self.0 {
            [Access::Read] => 0,
            [Access::Write] => 1,
            _ => 2,
        }
    }

    /// `read`, `write` or `read-write`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self.0 {
            [Access::Read] => "read",
            [Access::Write] => "write",
            _ => "read-write",
        }
    }

    /// Parses `read`, `write`, `read-write` (or `rw`).
    #[must_use]
    pub fn from_name(s: &str) -> Option<AccessPattern> {
        match s {
            "read" => Some(Self::READ),
            "write" => Some(Self::WRITE),
            "read-write" | "rw" => Some(Self::READ_WRITE),
            _ => None,
        }
    }
}

/// One `faultline bench faults` invocation.
#[derive(Debug, Clone)]
pub struct FaultBench {
    /// Backings, run in turn.
    pub backings: Vec<BackingSpec>,
    /// uffd modes, run in turn for each backing (`None` = no uffd).
    pub uffd_modes: Vec<Option<UffdMode>>,
    /// Bytes touched per vCPU.
    pub bytes_per_vcpu: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Bytes between two accesses.
    pub stride: u64,
    /// Access kind.
    pub access: AccessPattern,
    /// Random order instead of sequential.
    pub random: bool,
    /// Seed of the random order.
    pub seed: u64,
    /// uffd knobs (mode is set per run; `chunk` 0 = the backing's page size).
    pub uffd: UffdConfig,
    /// The KVM device node.
    pub kvm_device: PathBuf,
}

impl Default for FaultBench {
    fn default() -> Self {
        Self {
            backings: vec![BackingSpec::ANONYMOUS],
            uffd_modes: vec![None],
            bytes_per_vcpu: 1 << 30,
            vcpus: 1,
            stride: 4096,
            access: AccessPattern::WRITE,
            random: false,
            seed: 0x5eed,
            uffd: UffdConfig {
                chunk: 0,
                ..UffdConfig::default()
            },
            kvm_device: PathBuf::from("/dev/kvm"),
        }
    }
}

/// Errors of a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// --size {size} per vCPU × {vcpus} vCPUs does not fit the measured area ({max} bytes at 1 GiB); use a smaller --size or fewer --vcpus
    #[error("--size {size} per vCPU × {vcpus} vCPUs = {total} bytes does not fit the {max}-byte measured area; use a smaller --size or fewer --vcpus")]
    TooLarge {
        /// Bytes per vCPU.
        size: u64,
        /// vCPUs.
        vcpus: u32,
        /// Their product.
        total: u64,
        /// The limit.
        max: u64,
    },
    /// Bad numeric argument.
    #[error("{0}")]
    BadArgument(String),
    /// MINOR needs a shared backing.
    #[error("--uffd MINOR needs a shared backing (shmem or shared_hugetlb), not {0}: minor faults only exist for pages already in a page cache")]
    MinorNeedsShared(&'static str),
    /// The measured region could not be mapped.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// Base guest RAM could not be created.
    #[error("Guest RAM: {0}")]
    GuestRam(String),
    /// The touch guest is missing from this build.
    #[error(
        "The built-in guest `touch` is missing from this build (resources/guests/src/bin/touch.rs)"
    )]
    NoGuest,
    /// Setting up KVM failed.
    #[error("{0}")]
    Kvm(String),
    /// The uffd service did not start.
    #[error("userfaultfd: {0}")]
    UffdStart(#[from] UffdStartError),
    /// The uffd service failed.
    #[error("userfaultfd: {0}")]
    UffdStop(#[from] UffdStopError),
    /// The guest's data check failed.
    #[error("Guest assertion failed on vCPU {vcpu} at {file}:{line}: {msg}")]
    GuestAssert {
        /// vCPU.
        vcpu: usize,
        /// Guest file.
        file: String,
        /// Guest line.
        line: u32,
        /// Message.
        msg: String,
    },
    /// The guest ended some other way.
    #[error("The touch guest ended unexpectedly: {0}")]
    GuestEnded(String),
    /// A VMM thread broke its seccomp filter (`faultline bench faults` exits with 104).
    #[error("{0}")]
    Seccomp(VmExit),
    /// The guest did not mark its stages.
    #[error("The touch guest did not mark start and end on every vCPU (marks: {0:?})")]
    MissingMarks(Vec<(usize, u32)>),
    /// The guest touched a different number of pages than configured.
    #[error("vCPU {vcpu} reports {got} accesses, expected {want}")]
    WrongCount {
        /// vCPU.
        vcpu: usize,
        /// Reported.
        got: u64,
        /// Expected.
        want: u64,
    },
    /// The uffd handler did not serve every page exactly once.
    #[error("The uffd handler installed {installed} pages ({twice} twice, {untouched} never) for {expected} pages")]
    UffdCount {
        /// Pages installed.
        installed: u64,
        /// Installed twice.
        twice: u64,
        /// Never installed.
        untouched: u64,
        /// Expected.
        expected: u64,
    },
}

/// The `touch` guest's parameter block (its `Params`, at [`PARAMS_GPA`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TouchParams {
    /// First byte of vCPU 0's region.
    pub region_gpa: u64,
    /// Bytes per vCPU.
    pub bytes_per_vcpu: u64,
    /// Bytes between accesses.
    pub stride: u64,
    /// Access kind.
    pub access: AccessPattern,
    /// Random order.
    pub random: bool,
    /// 0: first reads see zero; 1: they see `PATTERN_MAGIC ^ gpa`.
    pub expect: u64,
    /// Seed of the random order.
    pub seed: u64,
}

impl TouchParams {
    /// Writes the block (and zeroes the guest's counters) into guest RAM.
    pub fn write(&self, mem: &GuestMemoryMmap) -> Result<(), vm_memory::GuestMemoryError> {
        let params = [
            PARAMS_MAGIC,
            self.region_gpa,
            self.bytes_per_vcpu,
            self.stride,
            self.access.code(),
            u64::from(self.random),
            self.expect,
            self.seed,
            0,
        ];
        for (i, v) in params.iter().enumerate() {
            mem.write_obj(*v, GuestAddress(PARAMS_GPA + 8 * i as u64))?;
        }
        Ok(())
    }
}

/// `PATTERN_MAGIC` of the guest: writes store `PATTERN_MAGIC ^ gpa`.
pub const PATTERN_MAGIC: u64 = 0x6661_756c_746c_696e;
/// The guest's stage after its verification pass.
pub const STAGE_VERIFIED: u32 = 3;

/// Timestamps of the guest's stage marks, and KVM stats read at the first start and last end.
struct Marks {
    vcpus: usize,
    marks: Vec<(usize, u32, Instant)>,
    started: usize,
    ended: usize,
    readers: Vec<StatsReader>,
    /// VM stats then per-vCPU stats, at the first start mark.
    before: Option<Vec<StatsSnapshot>>,
    /// The same at the last end mark.
    after: Option<Vec<StatsSnapshot>>,
}

impl Marks {
    fn snapshot(&self) -> Option<Vec<StatsSnapshot>> {
        self.readers.iter().map(|r| r.read().ok()).collect()
    }
}

impl BusDevice for Marks {
    fn read(&mut self, _vcpu: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, vcpu: usize, _offset: u64, data: &[u8]) {
        let now = Instant::now();
        let mut b = [0u8; 4];
        let n = data.len().min(4);
        b[..n].copy_from_slice(&data[..n]);
        let stage = u32::from_le_bytes(b);
        self.marks.push((vcpu, stage, now));
        match stage {
            STAGE_START => {
                if self.started == 0 {
                    self.before = self.snapshot();
                }
                self.started += 1;
            }
            STAGE_END => {
                self.ended += 1;
                if self.ended == self.vcpus {
                    self.after = self.snapshot();
                }
            }
            _ => {}
        }
    }
}

fn label(backing: BackingSpec, uffd: Option<UffdMode>) -> String {
    match uffd {
        None => backing.name().to_string(),
        Some(m) => format!("{}/{}", backing.name(), m.name()),
    }
}

/// Name of a uffd mode as the CLI spells it.
#[must_use]
pub fn uffd_name(m: Option<UffdMode>) -> &'static str {
    match m {
        None => "none",
        Some(m) => m.name(),
    }
}

impl FaultBench {
    /// Checks what can be checked before any VM is created.
    pub fn validate(&self) -> Result<(), BenchError> {
        if self.vcpus == 0 || self.vcpus > 64 {
            return Err(BenchError::BadArgument(format!(
                "--vcpus {}: use 1 to 64",
                self.vcpus
            )));
        }
        if self.stride < 8 || !self.stride.is_multiple_of(8) || self.stride > self.bytes_per_vcpu {
            return Err(BenchError::BadArgument(format!(
                "--stride {}: use a multiple of 8 between 8 and --size (4096 = one access per page)",
                self.stride
            )));
        }
        if self.bytes_per_vcpu == 0 || !self.bytes_per_vcpu.is_multiple_of(4096) {
            return Err(BenchError::BadArgument(format!(
                "--size {}: use a non-zero multiple of 4K, e.g. 16M or 1G",
                self.bytes_per_vcpu
            )));
        }
        let total = self.bytes_per_vcpu * u64::from(self.vcpus);
        if total > MAX_REGION {
            return Err(BenchError::TooLarge {
                size: self.bytes_per_vcpu,
                vcpus: self.vcpus,
                total,
                max: MAX_REGION,
            });
        }
        for &b in &self.backings {
            if !self.bytes_per_vcpu.is_multiple_of(b.page_bytes()) {
                return Err(BenchError::BadArgument(format!(
                    "--size {} is not a multiple of the {} page size ({} bytes)",
                    self.bytes_per_vcpu,
                    b.name(),
                    b.page_bytes()
                )));
            }
            for &u in &self.uffd_modes {
                if u == Some(UffdMode::Minor) && !b.is_shared() {
                    return Err(BenchError::MinorNeedsShared(b.name()));
                }
            }
        }
        Ok(())
    }

    /// Runs every (backing, uffd mode) in turn, a fresh VM each, with a progress bar on a
    /// terminal unless `quiet`.
    pub fn run_all(&self, command: String, quiet: bool) -> Result<BenchReport, BenchError> {
        self.validate()?;
        let mut report = BenchReport::new(command);
        let runs: Vec<_> = self
            .backings
            .iter()
            .flat_map(|&b| self.uffd_modes.iter().map(move |&u| (b, u)))
            .collect();
        let bar = if quiet || !std::io::stdout().is_terminal() {
            indicatif::ProgressBar::hidden()
        } else {
            let bar = indicatif::ProgressBar::new(runs.len() as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} runs, now: {msg}")
                    .expect("valid template"),
            );
            bar
        };
        for (backing, uffd) in runs {
            bar.set_message(label(backing, uffd));
            report.runs.push(self.run_one(backing, uffd)?);
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(report)
    }

    /// One run: a fresh VM whose measured region has `backing`, served by uffd `mode`.
    pub fn run_one(
        &self,
        backing: BackingSpec,
        mode: Option<UffdMode>,
    ) -> Result<RunResult, BenchError> {
        let vcpus = self.vcpus as usize;
        let per = usize::try_from(self.bytes_per_vcpu)
            .map_err(|_| BenchError::BadArgument("--size too large".into()))?;
        let total = per * vcpus;
        if mode == Some(UffdMode::Minor) && !backing.is_shared() {
            return Err(BenchError::MinorNeedsShared(backing.name()));
        }
        let region = MeasuredRegion::new(backing, total, mode == Some(UffdMode::Minor))?;
        if mode == Some(UffdMode::Minor) {
            region.fill_alias(REGION_GPA);
        }

        // The VM: ordinary RAM for the guest, the measured region as its own memslot over
        // `region` (which outlives the Vmm: it is dropped at the end of this function), and
        // the mark port.
        crate::guests::find("touch").ok_or(BenchError::NoGuest)?;
        let kvm_err = |e: &dyn std::fmt::Display| BenchError::Kvm(e.to_string());
        let config = VmConfig {
            memory: MemoryConfig {
                size: BASE_RAM,
                backing: Backing::Anon,
            },
            vcpus: self.vcpus,
            payload: Payload::Guest("touch".into()),
            kvm_device: self.kvm_device.clone(),
        };
        let (io, output) = VmIo::captured();
        let marks = Arc::new(Mutex::new(Marks {
            vcpus,
            marks: Vec::new(),
            started: 0,
            ended: 0,
            readers: Vec::new(),
            before: None,
            after: None,
        }));
        // The uffd service's configuration and regions (one per vCPU's slice).
        let uffd = mode.map(|m| {
            let page_size = crate::memory::uffd::region::page_size(backing);
            let cfg = UffdConfig {
                mode: m,
                page_size,
                chunk: if self.uffd.chunk == 0 {
                    page_size
                } else {
                    self.uffd.chunk
                },
                ..self.uffd
            };
            let regions: Vec<UffdRegion> = (0..vcpus)
                .map(|i| UffdRegion {
                    addr: region.addr() + i * per,
                    len: per,
                    pattern_base: REGION_GPA + (i * per) as u64,
                })
                .collect();
            (cfg, regions)
        });
        let mut builder = VmBuilder::new(config, io)
            .memslot(ExtraMemslot {
                slot: None,
                gpa: REGION_GPA,
                size: total as u64,
                host_addr: region.addr() as u64,
                readonly: false,
                dirty_log: false,
            })
            .pio_device(MARK_PORT, 4, marks.clone());
        // --uffd-wait vcpu: the service has no readers; each vCPU's slice gets a device
        // that resolves the faults KVM hands to the vCPU's thread as MMIO exits.
        let mut service = None;
        let mut fault_devices = Vec::new();
        if let Some((cfg, regions)) = uffd.as_ref().filter(|(c, _)| c.wait == WaitMode::Vcpu) {
            // SAFETY: `region` stays mapped until after `stop` below and outlives the VM and
            // its devices (dropped when `run` returns); its contents are the service's.
            let s = unsafe { UffdService::start(*cfg, regions) }?;
            let resolvers = s.vcpu_resolvers();
            for (r, res) in regions.iter().zip(resolvers) {
                let gpa = r.pattern_base;
                // SAFETY: as above: `r` is a slice of `region`.
                let dev = Arc::new(Mutex::new(unsafe {
                    FaultDevice::new(res, r.addr, r.len as u64)
                }));
                builder = builder.mmio_device(gpa, r.len as u64, dev.clone());
                fault_devices.push(dev);
            }
            service = Some((*cfg, s));
            builder = builder.exit_hook(Arc::new(BareFaultHook));
        }
        let vmm = builder.build().map_err(|e| kvm_err(&e))?;
        for dev in &fault_devices {
            dev.lock()
                .unwrap_or_else(|e| e.into_inner())
                .stop_on_error(vmm.exit_signal());
        }
        let mem = vmm.guest_memory().clone();
        let expect = match (mode, self.uffd.resolve) {
            (Some(UffdMode::Missing), MissingResolve::Copy) | (Some(UffdMode::Minor), _) => 1u64,
            _ => 0,
        };
        TouchParams {
            region_gpa: REGION_GPA,
            bytes_per_vcpu: self.bytes_per_vcpu,
            stride: self.stride,
            access: self.access,
            random: self.random,
            expect,
            seed: self.seed,
        }
        .write(&mem)
        .map_err(|e| BenchError::GuestRam(e.to_string()))?;
        let mut readers = vec![
            StatsReader::new(stats_fd(vmm.vm().fd()).map_err(|e| kvm_err(&e))?)
                .map_err(|e| kvm_err(&e))?,
        ];
        for f in vmm.vcpu_stats_files().map_err(|e| kvm_err(&e))? {
            readers.push(StatsReader::new(f).map_err(|e| kvm_err(&e))?);
        }
        marks.lock().unwrap_or_else(|e| e.into_inner()).readers = readers;

        // The reader-thread service, registered before anything can touch the region.
        if let Some((cfg, regions)) = uffd.filter(|_| service.is_none()) {
            // SAFETY: `region` stays mapped until after `stop` below; its contents are the
            // service's to fill.
            service = Some((cfg, unsafe {
                UffdService::start_filtered(cfg, &regions, vmm.seccomp().clone())
            }?));
        }

        let outcome = vmm.run().map_err(|e| kvm_err(&e));
        let uffd_stats = match service {
            Some((cfg, s)) => Some((cfg, s.stop()?)),
            None => None,
        };
        let outcome = outcome?;
        match outcome.exit {
            VmExit::Done(0) => {}
            VmExit::AssertFailed {
                vcpu,
                file,
                line,
                msg,
            } => {
                return Err(BenchError::GuestAssert {
                    vcpu,
                    file,
                    line,
                    msg,
                })
            }
            e @ VmExit::SeccompViolation { .. } => return Err(BenchError::Seccomp(e)),
            other => {
                let out =
                    String::from_utf8_lossy(&output.lock().unwrap_or_else(|e| e.into_inner()))
                        .into_owned();
                return Err(BenchError::GuestEnded(format!(
                    "{other:?}; guest output: {out:?}"
                )));
            }
        }

        // Per-vCPU timing from the marks.
        let marks = marks.lock().unwrap_or_else(|e| e.into_inner());
        let want = self.bytes_per_vcpu / self.stride;
        let mut per_vcpu = Vec::with_capacity(vcpus);
        let (mut first, mut last) = (None::<Instant>, None::<Instant>);
        for i in 0..vcpus {
            let at = |stage| {
                marks
                    .marks
                    .iter()
                    .find(|m| m.0 == i && m.1 == stage)
                    .map(|m| m.2)
            };
            let (Some(s), Some(e)) = (at(STAGE_START), at(STAGE_END)) else {
                return Err(BenchError::MissingMarks(
                    marks.marks.iter().map(|m| (m.0, m.1)).collect(),
                ));
            };
            first = Some(first.map_or(s, |f| f.min(s)));
            last = Some(last.map_or(e, |l| l.max(e)));
            let got: u64 = mem
                .read_obj(GuestAddress(PARAMS_GPA + TOUCHED_OFFSET + 8 * i as u64))
                .map_err(|e| BenchError::GuestRam(e.to_string()))?;
            if got != want {
                return Err(BenchError::WrongCount { vcpu: i, got, want });
            }
            per_vcpu.push(VcpuResult {
                vcpu: i,
                pages: got,
                seconds: (e - s).as_secs_f64(),
            });
        }
        let wall = match (first, last) {
            (Some(f), Some(l)) => (l - f).as_secs_f64(),
            _ => 0.0,
        };
        let (kvm_vm, kvm_vcpu) = match (&marks.before, &marks.after) {
            (Some(b), Some(a)) => {
                let vm = a[0].delta(&b[0]);
                let mut sum = StatsSnapshot::default();
                for (bb, aa) in b[1..].iter().zip(&a[1..]) {
                    let d = StatsSnapshot {
                        values: aa.delta(bb),
                        kinds: aa.kinds.clone(),
                    };
                    sum.accumulate(&d);
                }
                (vm, sum.values)
            }
            _ => Default::default(),
        };

        let uffd_summary = match uffd_stats {
            None => None,
            Some((cfg, st)) => {
                let expected = (total / cfg.page_size) as u64;
                if !st.every_page_once() || st.pages_installed != expected {
                    return Err(BenchError::UffdCount {
                        installed: st.pages_installed,
                        twice: st.pages_installed_twice,
                        untouched: st.pages_untouched,
                        expected,
                    });
                }
                let mut s = UffdSummary {
                    mode: uffd_name(Some(cfg.mode)).into(),
                    resolve: match (cfg.mode, cfg.resolve) {
                        (UffdMode::Minor, _) => "continue".into(),
                        (_, MissingResolve::Copy) => "copy".into(),
                        (_, MissingResolve::ZeroPage) => "zeropage".into(),
                    },
                    wait: format!("{:?}", cfg.wait),
                    readers: if cfg.wait == WaitMode::Vcpu {
                        0
                    } else {
                        cfg.readers
                    },
                    single_uffd: cfg.single_uffd,
                    delay_us: u64::try_from(cfg.delay.as_micros()).unwrap_or(u64::MAX),
                    chunk_bytes: cfg.chunk,
                    faults: st.faults,
                    already_resolved: st.already_resolved,
                    pages_installed: st.pages_installed,
                    faults_per_reader: st.faults_per_reader.clone(),
                    mean_ns: 0.0,
                    p50_ns: 0,
                    p90_ns: 0,
                    p99_ns: 0,
                    p999_ns: 0,
                    max_ns: 0,
                    cdf: Vec::new(),
                };
                s.set_histogram(&st.service_ns);
                Some(s)
            }
        };
        drop(marks);
        drop(mem);
        drop(region);
        Ok(RunResult {
            backing: backing.name().into(),
            uffd: uffd_name(mode).into(),
            vcpus,
            bytes_per_vcpu: self.bytes_per_vcpu,
            stride: self.stride,
            access: self.access.name().into(),
            order: if self.random { "random" } else { "sequential" }.into(),
            per_vcpu,
            wall_seconds: wall,
            uffd_summary,
            kvm_vm,
            kvm_vcpu,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_sizes_and_combinations_are_rejected_before_any_vm() {
        let b = FaultBench {
            bytes_per_vcpu: 5000,
            ..FaultBench::default()
        };
        assert!(b
            .validate()
            .unwrap_err()
            .to_string()
            .contains("multiple of 4K"));
        let b = FaultBench {
            bytes_per_vcpu: 2 << 30,
            vcpus: 2,
            ..FaultBench::default()
        };
        assert!(matches!(b.validate(), Err(BenchError::TooLarge { .. })));
        let b = FaultBench {
            uffd_modes: vec![Some(UffdMode::Minor)],
            ..FaultBench::default()
        };
        assert!(b
            .validate()
            .unwrap_err()
            .to_string()
            .contains("shared backing"));
        let b = FaultBench {
            backings: vec![BackingSpec::SHARED_HUGETLB],
            bytes_per_vcpu: (2 << 20) + 4096,
            ..FaultBench::default()
        };
        assert!(b.validate().unwrap_err().to_string().contains("page size"));
        let b = FaultBench {
            vcpus: 0,
            ..FaultBench::default()
        };
        assert!(b.validate().unwrap_err().to_string().contains("--vcpus 0"));
    }

    #[test]
    fn small_anonymous_run_touches_every_page() {
        crate::require_kvm!();
        let b = FaultBench {
            bytes_per_vcpu: 4 << 20,
            ..FaultBench::default()
        };
        let r = b
            .run_one(BackingSpec::ANONYMOUS, Some(UffdMode::Missing))
            .unwrap();
        assert_eq!(r.total_pages(), 1024);
        assert_eq!(r.uffd_summary.as_ref().unwrap().pages_installed, 1024);
        eprintln!("{r:?}");
    }
}

/// Default `touch` parameters in live mode: each vCPU reads then writes its own 16 MiB (less
/// if RAM is small) at 64 MiB, every page once, so every page takes a MISSING fault and,
/// with write-protect, a WP fault.
pub fn live_touch_params(ram: u64, vcpus: u32) -> TouchParams {
    let region = 64 << 20;
    let per = (ram.saturating_sub(region) / u64::from(vcpus.max(1))).min(16 << 20) & !(4096 - 1);
    TouchParams {
        region_gpa: region,
        bytes_per_vcpu: per,
        stride: 4096,
        access: AccessPattern::READ_WRITE,
        random: false,
        expect: 0,
        seed: 1,
    }
}
