//! The userfaultfd demand-paging service.
//!
//! A [`UffdService`] owns one or more userfaultfds (one for all regions, or one per region,
//! typically one per vCPU), registers the given host mappings with them and runs reader
//! threads that resolve every fault:
//!
//! - `MISSING` with `UFFDIO_COPY`: the handler fills a buffer with a verifiable pattern
//!   ([`pattern_word`]) and copies it in, `chunk` bytes per fault (4K up to whole huge pages);
//! - `MISSING` with `UFFDIO_ZEROPAGE`: the page reads as zero;
//! - `MINOR` on shmem/hugetlbfs: the page cache already holds the data (written through an
//!   alias mapping of the same file, see [`fill_pattern`]); the handler maps it with
//!   `UFFDIO_CONTINUE`.
//!
//! Every fault's service time (event read -> page installed and faulting thread woken) goes
//! into an HDR histogram, and a per-page bitmap checks that each page was installed exactly
//! once.
//!
//! # Waiting for events
//! Wake-ups are the dominant cost on nested or paravirtualised hosts (on the development
//! machine a reader blocked in `read()` costs ~95 µs per fault against ~37 µs for a reader
//! that busy-polls a non-blocking uffd). [`WaitMode::BusyPoll`] is therefore the default: the
//! reader spins on a non-blocking `read()`, calling `sched_yield()` between empty reads so
//! that a runnable vCPU thread on the same core is not starved. [`WaitMode::Poll`] (what the
//! kernel's `demand_paging_test` does) and [`WaitMode::Blocking`] are there to measure the
//! difference. Busy-polling only pays while the spinners do not take CPUs the vCPUs need:
//! on the 2-CPU development host, 1 vCPU + 1 spinner ran ~5x demand_paging_test's rate, but
//! 2 vCPUs + a spinner only ~1.3x, where poll() ran ~7x (`faultline bench faults` picks
//! busy-poll only when vCPUs + spinners fit the CPUs: `--uffd-wait auto`).
//!
//! Faults that KVM takes on behalf of a guest come from the kernel (GUP), so the uffds are
//! created without `UFFD_USER_MODE_ONLY`; that needs root (or `CAP_SYS_PTRACE`), or
//! `vm.unprivileged_userfaultfd=1`, or access to /dev/userfaultfd.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub mod region;
pub mod sys;
pub mod vcpu;

use hdrhistogram::Histogram;
use sys::{RegisterModes, Uffd, UffdError, UffdEvent};
use vmm_sys_util::eventfd::EventFd;

/// XOR-ed with the tag of every 8-byte word the handler copies in ("faultlin").
pub use faultline_abi::PATTERN_MAGIC;

/// The 8-byte word the handler writes at a location with tag `tag` (the region's
/// `pattern_base` plus the byte offset into the region, e.g. the guest physical address).
#[must_use]
pub fn pattern_word(tag: u64) -> u64 {
    PATTERN_MAGIC ^ tag
}

/// Fills `buf` with the pattern for the bytes starting at tag `tag` (see [`pattern_word`]).
/// `buf` is filled whole 8-byte words at a time; a trailing partial word is left as is.
pub fn fill_pattern(buf: &mut [u8], tag: u64) {
    for (i, word) in buf.chunks_exact_mut(8).enumerate() {
        word.copy_from_slice(&pattern_word(tag + 8 * i as u64).to_ne_bytes());
    }
}

/// Which faults the uffd reports (`UFFDIO_REGISTER_MODE_*`): the model's type, shared with
/// the scenarios. The service resolves MISSING and MINOR faults; WP alone is refused by
/// [`UffdService::start`] (the live mode, `vmm::live`, drives WP itself).
pub use mmu::host::UffdMode;

/// How a `MISSING` fault is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MissingResolve {
    /// `UFFDIO_COPY` of a buffer holding [`pattern_word`]s.
    Copy,
    /// `UFFDIO_ZEROPAGE` (4K pages only: hugetlbfs does not support it).
    ZeroPage,
}

/// How reader threads wait for fault events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum WaitMode {
    /// Spin on a non-blocking `read()`, `sched_yield()` between empty reads. Lowest latency
    /// where wake-ups are expensive; burns a core per reader.
    #[default]
    BusyPoll,
    /// `poll()` on the uffd and a stop eventfd, then a non-blocking `read()`
    /// (`demand_paging_test`'s handler).
    Poll,
    /// A blocking `read()` per batch of events.
    Blocking,
    /// No reader threads: the faulting vCPU resolves its own fault. The uffds are created
    /// with `UFFD_FEATURE_SIGBUS`, so an access to a missing page fails at once in
    /// `handle_userfault()` instead of sleeping there; KVM then hands the access to the
    /// vCPU's thread (the emulator turns a guest access it cannot complete into an MMIO exit,
    /// `emulator_read_write_onepage()` in arch/x86/kvm/x86.c), which resolves the page
    /// through a [`VcpuResolver`], completes the access ([`vcpu::FaultDevice`]) and
    /// re-enters the guest: no event queue and no wake-up at all. KVM must hand the fault
    /// over with its address: an access KVM resolves through its own page fault instead
    /// fails KVM_RUN with a bare EFAULT (`kvm_handle_error_pfn()`, arch/x86/kvm/mmu/mmu.c),
    /// which this mode cannot serve.
    Vcpu,
}

/// One host mapping whose faults the service resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UffdRegion {
    /// Host virtual address of the registered mapping (aligned to the page size).
    pub addr: usize,
    /// Length in bytes (a multiple of the page size).
    pub len: usize,
    /// Tag of the region's first byte for [`pattern_word`] (e.g. its guest physical address).
    pub pattern_base: u64,
}

/// Knobs of the demand-paging service (`demand_paging_test`'s `-u`, `-d`, `-r`, `-a`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UffdConfig {
    /// Which faults are reported.
    pub mode: UffdMode,
    /// How `MISSING` faults are resolved (ignored for `MINOR`).
    pub resolve: MissingResolve,
    /// How readers wait for events.
    pub wait: WaitMode,
    /// Artificial delay before resolving each fault (`-d`).
    pub delay: Duration,
    /// Reader threads per uffd (`-r`) for [`WaitMode::Poll`] and [`WaitMode::Blocking`];
    /// with [`WaitMode::BusyPoll`], spinning threads in all, each sweeping every uffd;
    /// ignored with [`WaitMode::Vcpu`] (no readers).
    pub readers: usize,
    /// One uffd for every region (`-a`) instead of one per region.
    pub single_uffd: bool,
    /// Backing page size: 4K, 2M or 1G.
    pub page_size: usize,
    /// Bytes installed per fault, a multiple of `page_size` (the aligned chunk around the
    /// faulting address, clipped to the region).
    pub chunk: usize,
}

impl Default for UffdConfig {
    fn default() -> Self {
        Self {
            mode: UffdMode::Missing,
            resolve: MissingResolve::Copy,
            wait: WaitMode::BusyPoll,
            delay: Duration::ZERO,
            readers: 1,
            single_uffd: false,
            page_size: 4096,
            chunk: 4096,
        }
    }
}

/// Errors of [`UffdService::start`].
#[derive(Debug, thiserror::Error)]
pub enum UffdStartError {
    /// WP alone is not a fault-service mode.
    #[error("Not implemented yet: the uffd fault service resolves MISSING and MINOR faults; WP-only registration is not wired (use -u MISSING or MINOR)")]
    WpOnly,
    /// The uffd service cannot start: {0}
    #[error("The uffd service cannot start: {0}")]
    Create(#[source] UffdError),
    /// The kernel's userfaultfd lacks minor-fault support for shmem (UFFD_FEATURE_MINOR_SHMEM, Linux 5.14+): {0}
    #[error("The kernel's userfaultfd lacks minor-fault support for shmem (UFFD_FEATURE_MINOR_SHMEM, Linux 5.14+): {0}")]
    MinorUnsupported(#[source] UffdError),
    /// Cannot register {len:#x} bytes at {addr:#x} with userfaultfd in {mode:?} mode: {source} (MINOR needs a shmem or hugetlbfs mapping; the range must be page aligned)
    #[error("Cannot register {len:#x} bytes at {addr:#x} with userfaultfd in {mode:?} mode: {source} (MINOR needs a shmem or hugetlbfs mapping; the range must be page aligned)")]
    Register {
        /// Start of the range.
        addr: usize,
        /// Length of the range.
        len: usize,
        /// Registration mode.
        mode: UffdMode,
        /// The kernel's answer.
        #[source]
        source: UffdError,
    },
    /// Chunk size {chunk} is not a non-zero multiple of the page size {page_size}
    #[error("Chunk size {chunk} is not a non-zero multiple of the page size {page_size}")]
    BadChunk {
        /// Bytes per fault.
        chunk: usize,
        /// Backing page size.
        page_size: usize,
    },
    /// Region {addr:#x}+{len:#x} is not aligned to the page size {page_size}
    #[error("Region {addr:#x}+{len:#x} is not aligned to the page size {page_size}")]
    Unaligned {
        /// Start of the region.
        addr: usize,
        /// Length of the region.
        len: usize,
        /// Backing page size.
        page_size: usize,
    },
    /// UFFDIO_ZEROPAGE only works on 4K pages; use UFFDIO_COPY for {page_size}-byte pages
    #[error("UFFDIO_ZEROPAGE only works on 4K pages; use UFFDIO_COPY for {page_size}-byte pages")]
    ZeroPageHuge {
        /// Backing page size.
        page_size: usize,
    },
    /// The number of reader threads must be at least 1
    #[error("The number of reader threads must be at least 1")]
    NoReaders,
    /// Cannot create the stop eventfd or the stop pages: {0}
    #[error("Cannot create the stop eventfd or the stop pages: {0}")]
    StopSetup(#[source] std::io::Error),
    /// Cannot spawn a uffd reader thread: {0}
    #[error("Cannot spawn a uffd reader thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// A fault the service could not resolve; the reader that hit it stopped.
#[derive(Debug, thiserror::Error)]
pub enum UffdHandlerError {
    /// Reading uffd events failed: {0}
    #[error("Reading uffd events failed: {0}")]
    Read(#[source] UffdError),
    /// Fault at {addr:#x} is outside every registered region
    #[error("Fault at {addr:#x} is outside every registered region")]
    Stray {
        /// Faulting address.
        addr: usize,
    },
    /// Resolving the fault at {addr:#x} ({len:#x} bytes) failed: {source}
    #[error("Resolving the fault at {addr:#x} ({len:#x} bytes) failed: {source}")]
    Resolve {
        /// Start of the installed chunk.
        addr: usize,
        /// Length of the installed chunk.
        len: usize,
        /// The ioctl's error.
        #[source]
        source: UffdError,
    },
    /// Unexpected uffd event {0}
    #[error("Unexpected uffd event {0}")]
    UnexpectedEvent(String),
    /// poll() on the uffd failed: {0}
    #[error("poll() on the uffd failed: {0}")]
    Poll(#[source] std::io::Error),
    /// The reader's seccomp filter could not be installed.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
}

/// Errors of [`UffdService::stop`].
#[derive(Debug, thiserror::Error)]
pub enum UffdStopError {
    /// A uffd reader failed: {0}
    #[error("A uffd reader failed: {0}")]
    Handler(#[source] UffdHandlerError),
    /// A uffd reader thread panicked
    #[error("A uffd reader thread panicked")]
    ReaderPanicked,
    /// Cannot wake the uffd readers to stop them: {0}
    #[error("Cannot wake the uffd readers to stop them: {0}")]
    Wake(#[source] std::io::Error),
}

/// What the service did, gathered from all readers at [`UffdService::stop`].
#[derive(Debug, Clone)]
pub struct UffdStats {
    /// Page-fault events handled (including ones already resolved by another reader).
    pub faults: u64,
    /// Events whose range was already installed (`EEXIST`), resolved by a `UFFDIO_WAKE`.
    pub already_resolved: u64,
    /// Pages (of `page_size`) installed.
    pub pages_installed: u64,
    /// Pages installed more than once (must be 0).
    pub pages_installed_twice: u64,
    /// Pages of the registered regions that were never installed.
    pub pages_untouched: u64,
    /// Faults per reader thread.
    pub faults_per_reader: Vec<u64>,
    /// Service time per fault in nanoseconds: event read -> installed and woken.
    pub service_ns: Histogram<u64>,
}

impl UffdStats {
    /// True when every page was installed exactly once.
    #[must_use]
    pub fn every_page_once(&self) -> bool {
        self.pages_untouched == 0 && self.pages_installed_twice == 0
    }
}

/// A region plus the bitmap of its installed pages.
#[derive(Debug)]
struct Tracked {
    region: UffdRegion,
    installed: Vec<AtomicU64>,
}

/// The page-installed bitmap shared by the readers of all uffds.
#[derive(Debug)]
struct Shared {
    cfg: UffdConfig,
    regions: Vec<Tracked>,
    /// Pages installed more than once.
    twice: AtomicU64,
    stop: AtomicBool,
    stop_event: EventFd,
    /// Stop pages for [`WaitMode::Blocking`]: a reader that sees a fault here exits.
    stop_pages: Option<StopPages>,
}

/// An anonymous mapping whose pages wake blocked readers: the stopper touches one page per
/// reader; the reader that gets the fault installs a zero page and exits.
#[derive(Debug)]
struct StopPages {
    addr: usize,
    len: usize,
}

impl Drop for StopPages {
    fn drop(&mut self) {
        // SAFETY: `addr`/`len` describe a mapping this struct created with mmap and owns.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// What one reader thread hands back.
struct ReaderResult {
    faults: u64,
    already_resolved: u64,
    hist: Histogram<u64>,
    error: Option<UffdHandlerError>,
}

/// A running demand-paging service. Call [`UffdService::stop`] to end it and get its
/// [`UffdStats`]; dropping it stops the readers too (and discards the stats).
#[derive(Debug)]
pub struct UffdService {
    shared: Arc<Shared>,
    uffds: Vec<Arc<Uffd>>,
    readers: Vec<JoinHandle<ReaderResult>>,
    /// [`WaitMode::Vcpu`]: what each region's [`VcpuResolver`] did, one per region.
    vcpu_results: Vec<Arc<std::sync::Mutex<ReaderResult>>>,
}

/// Resolves the faults of one region on the thread that took them
/// ([`WaitMode::Vcpu`]): the same resolution as a reader's (pattern copy, zero page or
/// continue, the installed-page bitmap, the service-time histogram), called by the vCPU
/// thread KVM handed the fault to. Get them from [`UffdService::vcpu_resolvers`].
#[derive(Debug)]
pub struct VcpuResolver {
    shared: Arc<Shared>,
    uffd: Arc<Uffd>,
    buf: Vec<u8>,
    result: Arc<std::sync::Mutex<ReaderResult>>,
}

impl VcpuResolver {
    /// Installs the chunk around host address `addr` (inside one of this uffd's regions),
    /// as a reader would for a fault event there. A chunk already installed counts as
    /// already resolved, not as an error. A failure is kept for [`UffdService::stop`] (the
    /// first one) and returned as text for the caller's own report.
    pub fn resolve(&mut self, addr: usize) -> Result<(), String> {
        let t0 = Instant::now();
        let mut res = self.result.lock().unwrap_or_else(|e| e.into_inner());
        match resolve(&self.shared, &self.uffd, addr, &mut self.buf, &mut res) {
            Ok(()) => {
                res.faults += 1;
                let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
                res.hist.saturating_record(ns.max(1));
                Ok(())
            }
            Err(e) => {
                let text = e.to_string();
                res.error.get_or_insert(e);
                Err(text)
            }
        }
    }

    /// Whether host address `addr` lies in one of the service's regions.
    #[must_use]
    pub fn covers(&self, addr: usize) -> bool {
        self.shared
            .regions
            .iter()
            .any(|t| addr >= t.region.addr && addr < t.region.addr + t.region.len)
    }
}

impl std::fmt::Debug for ReaderResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReaderResult")
            .field("faults", &self.faults)
            .finish_non_exhaustive()
    }
}

impl ReaderResult {
    fn new() -> Self {
        ReaderResult {
            faults: 0,
            already_resolved: 0,
            hist: new_histogram(),
            error: None,
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    // 1 ns .. 100 s at 3 significant digits; the bounds are valid constants.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

impl UffdService {
    /// Creates the uffds, registers `regions` and starts the readers.
    ///
    /// # Safety
    /// Every region must be a live mapping owned by the caller that stays mapped until the
    /// service is stopped; for [`UffdMode::Missing`] the service writes into it with
    /// `UFFDIO_COPY`/`UFFDIO_ZEROPAGE`, so nothing may rely on its current contents.
    pub unsafe fn start(cfg: UffdConfig, regions: &[UffdRegion]) -> Result<Self, UffdStartError> {
        // SAFETY: the caller's guarantees, passed on.
        unsafe { Self::start_filtered(cfg, regions, crate::seccomp::Seccomp::off()) }
    }

    /// [`UffdService::start`], with each reader thread filtered by `seccomp`
    /// ([`crate::seccomp::ThreadKind::UffdReader`]; pass the VM's, `Vmm::seccomp()`, so a
    /// violation ends that VM).
    ///
    /// # Safety
    /// As for [`UffdService::start`].
    pub unsafe fn start_filtered(
        cfg: UffdConfig,
        regions: &[UffdRegion],
        seccomp: crate::seccomp::Seccomp,
    ) -> Result<Self, UffdStartError> {
        if cfg.readers == 0 {
            return Err(UffdStartError::NoReaders);
        }
        if cfg.page_size == 0 || cfg.chunk == 0 || cfg.chunk % cfg.page_size != 0 {
            return Err(UffdStartError::BadChunk {
                chunk: cfg.chunk,
                page_size: cfg.page_size,
            });
        }
        if cfg.mode == UffdMode::Missing
            && cfg.resolve == MissingResolve::ZeroPage
            && cfg.page_size != 4096
        {
            return Err(UffdStartError::ZeroPageHuge {
                page_size: cfg.page_size,
            });
        }
        for r in regions {
            if r.addr % cfg.page_size != 0 || r.len % cfg.page_size != 0 || r.len == 0 {
                return Err(UffdStartError::Unaligned {
                    addr: r.addr,
                    len: r.len,
                    page_size: cfg.page_size,
                });
            }
        }
        let n_uffds = if cfg.single_uffd {
            1
        } else {
            regions.len().max(1)
        };
        let mut features = if cfg.mode == UffdMode::Minor {
            sys::FEATURE_MINOR_SHMEM
        } else {
            0
        };
        if cfg.wait == WaitMode::Vcpu {
            features |= sys::FEATURE_SIGBUS;
        }
        let mut uffds = Vec::with_capacity(n_uffds);
        for _ in 0..n_uffds {
            let uffd =
                Uffd::new(features, cfg.wait != WaitMode::Blocking).map_err(|e| match e {
                    UffdError::FeaturesUnsupported { .. } => UffdStartError::MinorUnsupported(e),
                    e => UffdStartError::Create(e),
                })?;
            uffds.push(Arc::new(uffd));
        }
        let reg_mode = match cfg.mode {
            UffdMode::Missing => RegisterModes::MISSING,
            UffdMode::Minor => RegisterModes::MINOR,
            UffdMode::Wp => return Err(UffdStartError::WpOnly),
        };
        for (i, r) in regions.iter().enumerate() {
            let uffd = &uffds[if cfg.single_uffd { 0 } else { i }];
            uffd.register(r.addr, r.len, reg_mode)
                .map_err(|source| UffdStartError::Register {
                    addr: r.addr,
                    len: r.len,
                    mode: cfg.mode,
                    source,
                })?;
        }
        let stop_pages = if cfg.wait == WaitMode::Blocking {
            let len = cfg.readers * 4096;
            // SAFETY: a fresh private anonymous mapping; the result is checked below.
            let addr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len * uffds.len(),
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if addr == libc::MAP_FAILED {
                return Err(UffdStartError::StopSetup(std::io::Error::last_os_error()));
            }
            let pages = StopPages {
                addr: addr as usize,
                len: len * uffds.len(),
            };
            for (i, uffd) in uffds.iter().enumerate() {
                uffd.register(pages.addr + i * len, len, RegisterModes::MISSING)
                    .map_err(|source| UffdStartError::Register {
                        addr: pages.addr + i * len,
                        len,
                        mode: UffdMode::Missing,
                        source,
                    })?;
            }
            Some(pages)
        } else {
            None
        };
        let shared = Arc::new(Shared {
            cfg,
            regions: regions
                .iter()
                .map(|&region| Tracked {
                    region,
                    installed: (0..(region.len / cfg.page_size).div_ceil(64))
                        .map(|_| AtomicU64::new(0))
                        .collect(),
                })
                .collect(),
            twice: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            stop_event: EventFd::new(libc::EFD_NONBLOCK).map_err(UffdStartError::StopSetup)?,
            stop_pages,
        });
        let mut service = Self {
            vcpu_results: (0..if cfg.wait == WaitMode::Vcpu {
                regions.len()
            } else {
                0
            })
                .map(|_| Arc::new(std::sync::Mutex::new(ReaderResult::new())))
                .collect(),
            shared,
            uffds,
            readers: Vec::new(),
        };
        if cfg.wait == WaitMode::Vcpu {
            return Ok(service);
        }
        // Busy-polling readers sweep every uffd (so `readers` spinning threads serve all
        // vCPUs: on a host with few cores, one spinner per vCPU would steal the vCPUs'
        // CPUs); poll/blocking readers wait on one uffd each (demand_paging_test's layout).
        let groups: Vec<(String, Vec<Arc<Uffd>>)> = if cfg.wait == WaitMode::BusyPoll {
            (0..cfg.readers)
                .map(|r| (format!("uffd-spin{r}"), service.uffds.clone()))
                .collect()
        } else {
            service
                .uffds
                .iter()
                .enumerate()
                .flat_map(|(u, uffd)| {
                    (0..cfg.readers).map(move |r| (format!("uffd{u}-r{r}"), vec![Arc::clone(uffd)]))
                })
                .collect()
        };
        for (name, uffds) in groups {
            let shared = Arc::clone(&service.shared);
            let seccomp = seccomp.clone();
            let handle = std::thread::Builder::new()
                .name(name)
                .spawn(move || reader(&shared, &uffds, &seccomp))
                .map_err(UffdStartError::Spawn)?;
            service.readers.push(handle);
        }
        Ok(service)
    }

    /// [`WaitMode::Vcpu`]: one resolver per region, in the order of the regions, each on its
    /// region's uffd (its own, or the one for all with `single_uffd`); empty in the other
    /// modes.
    #[must_use]
    pub fn vcpu_resolvers(&self) -> Vec<VcpuResolver> {
        self.vcpu_results
            .iter()
            .enumerate()
            .map(|(i, result)| VcpuResolver {
                shared: Arc::clone(&self.shared),
                uffd: Arc::clone(&self.uffds[if self.shared.cfg.single_uffd { 0 } else { i }]),
                buf: vec![0u8; self.shared.cfg.chunk],
                result: Arc::clone(result),
            })
            .collect()
    }

    /// The raw fds of the service's uffds (for diagnostics).
    #[must_use]
    pub fn fds(&self) -> Vec<i32> {
        self.uffds.iter().map(|u| u.as_raw_fd()).collect()
    }

    /// Faults resolved so far are not visible until `stop`; this stops the readers, closes
    /// the uffds (unregistering the regions) and returns the statistics.
    pub fn stop(mut self) -> Result<UffdStats, UffdStopError> {
        self.signal_stop().map_err(UffdStopError::Wake)?;
        let mut stats = UffdStats {
            faults: 0,
            already_resolved: 0,
            pages_installed: 0,
            pages_installed_twice: 0,
            pages_untouched: 0,
            faults_per_reader: Vec::new(),
            service_ns: new_histogram(),
        };
        let mut first_error = None;
        let vcpu_results = std::mem::take(&mut self.vcpu_results).into_iter().map(|r| {
            let mut r = r.lock().unwrap_or_else(|e| e.into_inner());
            Ok(std::mem::replace(&mut *r, ReaderResult::new()))
        });
        let joined = std::mem::take(&mut self.readers)
            .into_iter()
            .map(|h| h.join().map_err(|_| UffdStopError::ReaderPanicked));
        for r in joined.chain(vcpu_results) {
            let r = r?;
            stats.faults += r.faults;
            stats.already_resolved += r.already_resolved;
            stats.faults_per_reader.push(r.faults);
            // Both histograms share the same bounds, so adding cannot fail.
            let _ = stats.service_ns.add(&r.hist);
            if first_error.is_none() {
                first_error = r.error;
            }
        }
        if let Some(e) = first_error {
            return Err(UffdStopError::Handler(e));
        }
        for t in &self.shared.regions {
            let pages = t.region.len / self.shared.cfg.page_size;
            let installed: u64 = t
                .installed
                .iter()
                .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
                .sum();
            stats.pages_installed += installed;
            stats.pages_untouched += pages as u64 - installed;
        }
        stats.pages_installed_twice = self.shared.twice.load(Ordering::Relaxed);
        Ok(stats)
    }

    fn signal_stop(&self) -> std::io::Result<()> {
        self.shared.stop.store(true, Ordering::SeqCst);
        match self.shared.cfg.wait {
            WaitMode::BusyPoll | WaitMode::Vcpu => Ok(()),
            WaitMode::Poll => self.shared.stop_event.write(1),
            WaitMode::Blocking => {
                let pages = self
                    .shared
                    .stop_pages
                    .as_ref()
                    .expect("blocking has stop pages");
                let per_uffd = self.shared.cfg.readers * 4096;
                for u in 0..self.uffds.len() {
                    for r in 0..self.shared.cfg.readers {
                        let p = (pages.addr + u * per_uffd + r * 4096) as *const u8;
                        // SAFETY: `p` is inside the stop mapping owned by `shared`; the read
                        // faults, a reader of uffd `u` installs a zero page and exits.
                        unsafe { std::ptr::read_volatile(p) };
                    }
                }
                Ok(())
            }
        }
    }
}

impl Drop for UffdService {
    fn drop(&mut self) {
        if self.readers.is_empty() {
            return;
        }
        let _ = self.signal_stop();
        for h in self.readers.drain(..) {
            let _ = h.join();
        }
    }
}

fn reader(shared: &Shared, uffds: &[Arc<Uffd>], seccomp: &crate::seccomp::Seccomp) -> ReaderResult {
    let mut res = ReaderResult::new();
    // The uffds are registered and the stop eventfd made: filter from here.
    if let Err(e) = seccomp.apply(crate::seccomp::ThreadKind::UffdReader) {
        res.error = Some(e.into());
        shared.stop.store(true, Ordering::SeqCst);
        return res;
    }
    let mut buf = vec![0u8; shared.cfg.chunk];
    let mut events = vec![0u8; 64 * sys::MSG_SIZE];
    if let Err(e) = reader_loop(shared, uffds, &mut res, &mut buf, &mut events) {
        res.error = Some(e);
        // Let the other readers and the stopper know; faults of this uffd are now unserved.
        shared.stop.store(true, Ordering::SeqCst);
    }
    res
}

fn reader_loop(
    shared: &Shared,
    uffds: &[Arc<Uffd>],
    res: &mut ReaderResult,
    buf: &mut [u8],
    events: &mut [u8],
) -> Result<(), UffdHandlerError> {
    let mut next = 0;
    let mut sweep_events = 0;
    loop {
        // Busy-poll readers take the uffds in turn; the others have exactly one.
        let uffd = &*uffds[next];
        next = (next + 1) % uffds.len();
        match shared.cfg.wait {
            WaitMode::BusyPoll => {}
            WaitMode::Poll => {
                let mut fds = [
                    libc::pollfd {
                        fd: uffd.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                    libc::pollfd {
                        fd: shared.stop_event.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                ];
                // SAFETY: `fds` is a valid array of two pollfds for the duration of the call.
                let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
                if n < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(UffdHandlerError::Poll(e));
                }
                if fds[1].revents != 0 {
                    return Ok(());
                }
            }
            WaitMode::Blocking => {}
            // No readers are started in this mode.
            WaitMode::Vcpu => return Ok(()),
        }
        let mut got = 0;
        for ev in uffd.read_events(events).map_err(UffdHandlerError::Read)? {
            got += 1;
            let t0 = Instant::now();
            let addr = match ev {
                UffdEvent::Pagefault { addr, .. } => addr,
                other => return Err(UffdHandlerError::UnexpectedEvent(format!("{other:?}"))),
            };
            if let Some(pages) = &shared.stop_pages {
                if addr >= pages.addr && addr < pages.addr + pages.len {
                    let page = addr & !4095;
                    // SAFETY: the stop page is inside the stop mapping this service owns.
                    unsafe { uffd.zeropage(page, 4096) }.map_err(|source| {
                        UffdHandlerError::Resolve {
                            addr: page,
                            len: 4096,
                            source,
                        }
                    })?;
                    return Ok(());
                }
            }
            resolve(shared, uffd, addr, buf, res)?;
            res.faults += 1;
            // Service times beyond the histogram's range are clamped to its maximum.
            let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
            res.hist.saturating_record(ns.max(1));
        }
        sweep_events += got;
        if next != 0 {
            continue;
        }
        if std::mem::take(&mut sweep_events) == 0 {
            if shared.stop.load(Ordering::Relaxed) && shared.cfg.wait != WaitMode::Blocking {
                return Ok(());
            }
            if shared.cfg.wait == WaitMode::BusyPoll {
                std::thread::yield_now();
            }
        }
    }
}

fn resolve(
    shared: &Shared,
    uffd: &Uffd,
    addr: usize,
    buf: &mut [u8],
    res: &mut ReaderResult,
) -> Result<(), UffdHandlerError> {
    let cfg = &shared.cfg;
    let tracked = shared
        .regions
        .iter()
        .find(|t| addr >= t.region.addr && addr < t.region.addr + t.region.len)
        .ok_or(UffdHandlerError::Stray { addr })?;
    let region = tracked.region;
    // Chunks are aligned to the region start, so they never overlap.
    let start = region.addr + (addr - region.addr) / cfg.chunk * cfg.chunk;
    let len = cfg.chunk.min(region.addr + region.len - start);
    if !cfg.delay.is_zero() {
        delay(cfg.delay);
    }
    let dst = start;
    let outcome = match (cfg.mode, cfg.resolve) {
        (UffdMode::Missing, MissingResolve::Copy) => {
            let buf = &mut buf[..len];
            fill_pattern(buf, region.pattern_base + (start - region.addr) as u64);
            // SAFETY: `dst..dst+len` lies in a registered region the caller of `start` handed
            // over for the service to fill; `buf` holds `len` readable bytes.
            unsafe { uffd.copy(dst, buf, false) }.map(|_| ())
        }
        (UffdMode::Missing, MissingResolve::ZeroPage) => {
            // SAFETY: as above; installs zero pages.
            unsafe { uffd.zeropage(dst, len) }.map(|_| ())
        }
        // SAFETY: as above; maps the page-cache pages the caller filled through its alias.
        (UffdMode::Minor, _) => unsafe { uffd.continue_(dst, len) }.map(|_| ()),
        // Not registered (`start` refuses WP); a write-protect fault is resolved by lifting
        // the protection.
        (UffdMode::Wp, _) => uffd.writeprotect(dst, len, false),
    };
    match outcome {
        Ok(()) => {
            let first = (start - region.addr) / cfg.page_size;
            for page in first..first + len / cfg.page_size {
                let bit = 1u64 << (page % 64);
                if tracked.installed[page / 64].fetch_or(bit, Ordering::Relaxed) & bit != 0 {
                    shared.twice.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        }
        // Another reader, or a larger chunk installed earlier, got there first.
        Err(UffdError::Exists { .. }) => {
            res.already_resolved += 1;
            uffd.wake(dst, len)
                .map_err(|source| UffdHandlerError::Resolve {
                    addr: start,
                    len,
                    source,
                })
        }
        Err(source) => Err(UffdHandlerError::Resolve {
            addr: start,
            len,
            source,
        }),
    }
}

/// Waits `d`: spins for delays under a millisecond (a sleep costs more than that on a
/// nested host), sleeps otherwise.
fn delay(d: Duration) {
    if d >= Duration::from_millis(1) {
        std::thread::sleep(d);
    } else {
        let end = Instant::now() + d;
        while Instant::now() < end {
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! Real userfaultfd, no KVM: host threads touch a registered region, one access per page,
    //! while the service resolves the faults. Checks that every page was installed exactly
    //! once and that the data read back is what the mode promises.

    use super::*;

    const PAGE: usize = 4096;

    /// An mmap'ed test region (anonymous private, or a shared memfd with an alias mapping),
    /// unmapped on drop; the uffd module's tests share it.
    pub(crate) struct Mapping {
        pub(crate) addr: usize,
        pub(crate) len: usize,
        alias: Option<usize>,
    }

    impl Mapping {
        pub(crate) fn anon(len: usize) -> Self {
            // SAFETY: a fresh anonymous mapping; checked below.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(p, libc::MAP_FAILED);
            Self {
                addr: p as usize,
                len,
                alias: None,
            }
        }

        /// A memfd mapped twice, shared: the registered mapping and an alias.
        fn memfd(len: usize) -> Self {
            // SAFETY: the name is a valid C string; the fd is checked and closed below.
            let fd = unsafe { libc::memfd_create(c"uffd-test".as_ptr(), libc::MFD_CLOEXEC) };
            assert!(fd >= 0);
            // SAFETY: `fd` is ours.
            assert_eq!(unsafe { libc::ftruncate(fd, len as libc::off_t) }, 0);
            let map = || {
                // SAFETY: a fresh shared mapping of our memfd; checked below.
                let p = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        len,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_SHARED,
                        fd,
                        0,
                    )
                };
                assert_ne!(p, libc::MAP_FAILED);
                p as usize
            };
            let (addr, alias) = (map(), map());
            // SAFETY: the mappings keep the file alive.
            unsafe { libc::close(fd) };
            Self {
                addr,
                len,
                alias: Some(alias),
            }
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: mappings this struct created.
            unsafe {
                libc::munmap(self.addr as *mut libc::c_void, self.len);
                if let Some(a) = self.alias {
                    libc::munmap(a as *mut libc::c_void, self.len);
                }
            }
        }
    }

    const BASE: u64 = 0x1_0000_0000;

    /// `threads` threads each touch their own slice of `m`, one read per page, and return
    /// the first word of every page.
    fn touch_all(m: &Mapping, threads: usize) -> Vec<u64> {
        let per = m.len / threads;
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let start = m.addr + t * per;
                std::thread::spawn(move || {
                    (0..per / PAGE)
                        .map(|p| {
                            // SAFETY: inside the live mapping `m`, which outlives the join.
                            unsafe { std::ptr::read_volatile((start + p * PAGE) as *const u64) }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    }

    fn run(cfg: UffdConfig, m: &Mapping, regions: usize) -> (UffdStats, Vec<u64>) {
        let per = m.len / regions;
        let regs: Vec<_> = (0..regions)
            .map(|i| UffdRegion {
                addr: m.addr + i * per,
                len: per,
                pattern_base: BASE + (i * per) as u64,
            })
            .collect();
        // SAFETY: `m` stays mapped until after `stop`.
        let svc = unsafe { UffdService::start(cfg, &regs) }.expect("start uffd service");
        let words = touch_all(m, regions);
        (svc.stop().expect("stop uffd service"), words)
    }

    fn assert_pattern(words: &[u64], step: usize) {
        for (i, w) in words.iter().enumerate() {
            assert_eq!(*w, pattern_word(BASE + (i * step) as u64), "page {i}");
        }
    }

    #[test]
    fn missing_copy_serves_every_page_once_in_every_wait_mode() {
        // Real userfaultfds need root, CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1.
        crate::skip_unless!(super::sys::Uffd::new(0, true).map(drop));
        for wait in [WaitMode::BusyPoll, WaitMode::Poll, WaitMode::Blocking] {
            let m = Mapping::anon(256 * PAGE);
            let cfg = UffdConfig {
                wait,
                ..UffdConfig::default()
            };
            let (stats, words) = run(cfg, &m, 2);
            assert_eq!(stats.faults, 256, "{wait:?}");
            assert_eq!(stats.pages_installed, 256, "{wait:?}");
            assert!(stats.every_page_once(), "{wait:?}: {stats:?}");
            assert_eq!(stats.service_ns.len(), 256);
            assert_pattern(&words, PAGE);
        }
    }

    /// A kernel copy into a missing page of `addr` (a `read()` from /dev/zero): `Ok` or the
    /// errno. This is what KVM's emulator does with a guest access.
    fn kernel_write_into(addr: usize) -> Result<(), i32> {
        let zero = std::fs::File::open("/dev/zero").expect("/dev/zero");
        // SAFETY: `addr` is 8 writable bytes of a live test mapping.
        let n = unsafe { libc::read(zero.as_raw_fd(), addr as *mut libc::c_void, 8) };
        if n == 8 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        }
    }

    #[test]
    fn vcpu_mode_fails_missing_accesses_at_once_and_its_resolvers_install_each_page_once() {
        // Real userfaultfds need root, CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1.
        crate::skip_unless!(super::sys::Uffd::new(0, true).map(drop));
        // One uffd per region, and one for both (`-a`): a resolver per region either way.
        for single_uffd in [false, true] {
            vcpu_mode_serves_two_regions(single_uffd);
        }
    }

    fn vcpu_mode_serves_two_regions(single_uffd: bool) {
        let m = Mapping::anon(64 * PAGE);
        let regs: Vec<_> = (0..2)
            .map(|i| UffdRegion {
                addr: m.addr + i * 32 * PAGE,
                len: 32 * PAGE,
                pattern_base: BASE + (i * 32 * PAGE) as u64,
            })
            .collect();
        let cfg = UffdConfig {
            wait: WaitMode::Vcpu,
            single_uffd,
            ..UffdConfig::default()
        };
        // SAFETY: `m` stays mapped until after `stop`.
        let svc = unsafe { UffdService::start(cfg, &regs) }.expect("start uffd service");
        let mut resolvers = svc.vcpu_resolvers();
        assert_eq!(resolvers.len(), 2, "one resolver per region");
        assert_eq!(svc.fds().len(), if single_uffd { 1 } else { 2 });
        // No reader waits for it: the kernel's access fails instead of sleeping.
        assert_eq!(kernel_write_into(m.addr + 5 * PAGE), Err(libc::EFAULT));
        for (i, r) in resolvers.iter_mut().enumerate() {
            assert!(r.covers(m.addr + i * 32 * PAGE) && !r.covers(m.addr + m.len));
            for p in 0..32 {
                r.resolve(m.addr + (i * 32 + p) * PAGE + 8 * p).unwrap();
            }
        }
        // Twice is not an error: the page is there already.
        resolvers[0].resolve(m.addr + 5 * PAGE).unwrap();
        assert_eq!(kernel_write_into(m.addr + 5 * PAGE), Ok(()));
        let words: Vec<u64> = (0..64)
            // SAFETY: inside `m`; every page is installed now.
            .map(|p| unsafe { std::ptr::read_volatile((m.addr + p * PAGE) as *const u64) })
            .collect();
        assert_eq!(words[5], 0, "overwritten by the kernel write above");
        for (p, w) in words.iter().enumerate().filter(|&(p, _)| p != 5) {
            assert_eq!(*w, pattern_word(BASE + (p * PAGE) as u64), "page {p}");
        }
        let stats = svc.stop().expect("stop");
        assert_eq!(
            stats.faults, 65,
            "the repeat counts as a fault, already resolved"
        );
        assert_eq!(stats.already_resolved, 1);
        assert_eq!(stats.service_ns.len(), 65);
        assert!(stats.every_page_once(), "{stats:?}");
        assert_eq!(stats.faults_per_reader, vec![33, 32], "per region");
    }

    #[test]
    fn vcpu_mode_reports_a_stray_fault_at_stop() {
        // Real userfaultfds need root, CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1.
        crate::skip_unless!(super::sys::Uffd::new(0, true).map(drop));
        let m = Mapping::anon(4 * PAGE);
        let regs = [UffdRegion {
            addr: m.addr,
            len: 2 * PAGE,
            pattern_base: BASE,
        }];
        let cfg = UffdConfig {
            wait: WaitMode::Vcpu,
            ..UffdConfig::default()
        };
        // SAFETY: `m` stays mapped until after `stop`.
        let svc = unsafe { UffdService::start(cfg, &regs) }.expect("start uffd service");
        let mut r = svc.vcpu_resolvers().remove(0);
        let e = r.resolve(m.addr + 3 * PAGE).unwrap_err();
        assert!(e.contains("outside every registered region"), "{e}");
        let e = svc.stop().unwrap_err();
        assert!(
            matches!(e, UffdStopError::Handler(UffdHandlerError::Stray { .. })),
            "{e}"
        );
    }

    #[test]
    fn missing_zeropage_reads_zero() {
        // Real userfaultfds need root, CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1.
        crate::skip_unless!(super::sys::Uffd::new(0, true).map(drop));
        let m = Mapping::anon(64 * PAGE);
        let cfg = UffdConfig {
            resolve: MissingResolve::ZeroPage,
            ..UffdConfig::default()
        };
        let (stats, words) = run(cfg, &m, 1);
        assert_eq!(stats.faults, 64);
        assert!(stats.every_page_once());
        assert!(words.iter().all(|&w| w == 0));
    }

    #[test]
    fn larger_chunk_takes_fewer_faults() {
        // Real userfaultfds need root, CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1.
        crate::skip_unless!(super::sys::Uffd::new(0, true).map(drop));
        let m = Mapping::anon(256 * PAGE);
        let cfg = UffdConfig {
            chunk: 16 * PAGE,
            ..UffdConfig::default()
        };
        let (stats, words) = run(cfg, &m, 1);
        assert_eq!(stats.faults, 16);
        assert_eq!(stats.pages_installed, 256);
        assert!(stats.every_page_once());
        assert_pattern(&words, PAGE);
    }

    #[test]
    fn single_uffd_with_several_readers_serves_every_page_once() {
        // Real userfaultfds need root, CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1.
        crate::skip_unless!(super::sys::Uffd::new(0, true).map(drop));
        let m = Mapping::anon(512 * PAGE);
        let cfg = UffdConfig {
            readers: 2,
            single_uffd: true,
            wait: WaitMode::Poll,
            ..UffdConfig::default()
        };
        let (stats, words) = run(cfg, &m, 2);
        assert_eq!(stats.faults_per_reader.len(), 2);
        assert_eq!(stats.faults - stats.already_resolved, 512);
        assert!(stats.every_page_once(), "{stats:?}");
        assert_pattern(&words, PAGE);
    }

    #[test]
    fn minor_on_shmem_maps_what_the_alias_wrote() {
        // Real userfaultfds need root, CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1.
        crate::skip_unless!(super::sys::Uffd::new(0, true).map(drop));
        let m = Mapping::memfd(128 * PAGE);
        let alias = m.alias.unwrap();
        // SAFETY: the alias mapping is live and `m.len` bytes long.
        let buf = unsafe { std::slice::from_raw_parts_mut(alias as *mut u8, m.len) };
        fill_pattern(buf, BASE);
        let cfg = UffdConfig {
            mode: UffdMode::Minor,
            ..UffdConfig::default()
        };
        let (stats, words) = run(cfg, &m, 1);
        assert_eq!(stats.faults, 128);
        assert!(stats.every_page_once());
        assert_pattern(&words, PAGE);
    }

    #[test]
    fn delay_shows_in_service_time() {
        // Real userfaultfds need root, CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1.
        crate::skip_unless!(super::sys::Uffd::new(0, true).map(drop));
        let m = Mapping::anon(8 * PAGE);
        let cfg = UffdConfig {
            delay: Duration::from_micros(200),
            ..UffdConfig::default()
        };
        let (stats, _) = run(cfg, &m, 1);
        assert!(
            stats.service_ns.min() >= 200_000,
            "{}",
            stats.service_ns.min()
        );
    }

    #[test]
    fn bad_configs_are_rejected_with_clear_errors() {
        // Real userfaultfds need root, CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1.
        crate::skip_unless!(super::sys::Uffd::new(0, true).map(drop));
        let m = Mapping::anon(16 * PAGE);
        let region = [UffdRegion {
            addr: m.addr,
            len: m.len,
            pattern_base: 0,
        }];
        let start = |cfg| {
            // SAFETY: `m` outlives the (failed or dropped) service.
            unsafe { UffdService::start(cfg, &region) }.map(drop)
        };
        let e = start(UffdConfig {
            readers: 0,
            ..UffdConfig::default()
        })
        .unwrap_err();
        assert!(matches!(e, UffdStartError::NoReaders));
        let e = start(UffdConfig {
            chunk: 6000,
            ..UffdConfig::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("multiple of the page size"), "{e}");
        let e = start(UffdConfig {
            page_size: 2 << 20,
            chunk: 2 << 20,
            resolve: MissingResolve::ZeroPage,
            ..UffdConfig::default()
        })
        .unwrap_err();
        assert!(
            e.to_string().contains("UFFDIO_ZEROPAGE only works on 4K"),
            "{e}"
        );
        // MINOR on private anonymous memory is refused by the kernel.
        let e = start(UffdConfig {
            mode: UffdMode::Minor,
            ..UffdConfig::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("MINOR needs a shmem"), "{e}");
    }
}
