//! KVM tracepoints of this process, from a tracefs instance of faultline's own.
//!
//! What it observes: the mmu-notifier invalidations KVM sees on the VMM's mm
//! (`kvm:kvm_unmap_hva_range`, fired by `kvm_mmu_notifier_invalidate_range_start()`,
//! virt/kvm/kvm_main.c, for every invalidation, before any memslot lookup), aging
//! (`kvm:kvm_age_hva`, `kvm:kvm_test_age_hva`), async page faults (`kvm:kvm_try_async_get_page`,
//! `kvm:kvm_async_pf_*`), and where the host's KVM traces them, guest page faults and SPTE
//! installs (`kvm:kvm_page_fault`, `kvmmmu:kvm_mmu_set_spte`, `kvmmmu:kvm_mmu_spte_requested`,
//! `kvmmmu:fast_page_fault`, `kvmmmu:kvm_tdp_mmu_spte_changed`).
//!
//! Where it comes from: [`TraceSession::start`] finds tracefs (/sys/kernel/tracing, then
//! /sys/kernel/debug/tracing, else mounts it on /sys/kernel/tracing), creates
//! `instances/faultline-<pid>-<n>` (its own ring buffer, so other tracers are untouched),
//! enables those of the events above that `available_events` lists and reports the others as
//! absent. [`TraceSession::drain`] reads the instance's `trace_pipe` without blocking: a
//! consuming read, merged across CPUs in timestamp order, so each drain returns exactly the
//! events recorded since the previous one, in order. Lost events (a full per-CPU buffer) are
//! counted, never hidden. Dropping the session disables the events, clears the pid filter and
//! removes the instance.
//!
//! Limits:
//! - `kvm_unmap_hva_range` and `kvm_age_hva` fire once per KVM VM registered on the mm (each
//!   VM has its own mmu notifier): with two VMs in the process every invalidation appears
//!   twice in a row. Invalidations of non-guest memory (malloc arenas, thread stacks at
//!   thread exit) appear too: they are the same mm. Fence them with
//!   [`TraceSession::set_hva_ranges`].
//! - The pid filter ([`PidFilter::ThisProcess`]) lists every thread of this process at start
//!   and sets `options/event-fork`, so threads they create later (vCPU threads) are followed.
//!   Events that run in *other* tasks on this process's behalf are missed: invalidations
//!   started by khugepaged (collapse), ksmd (KSM merge), kswapd and kcompactd (reclaim,
//!   compaction, hence most `kvm_age_hva`), and the async-PF worker (`kvm_async_pf_completed`
//!   runs in a kworker). Use [`PidFilter::ThisProcessAnd`] with their pids, or
//!   [`PidFilter::None`] together with hva ranges ([`TraceSession::set_hva_ranges`]) as the
//!   second fence, since other VMs run on this machine.
//! - Only tracepoints: no function tracing (not permitted on this host).
//! - Event text formats are those of Linux 6.12 to 6.18 (include/trace/events/kvm.h,
//!   arch/x86/kvm/trace.h, arch/x86/kvm/mmu/mmutrace.h); a line that does not parse is kept
//!   verbatim in [`Batch::unparsed`].

use serde::{Deserialize, Serialize};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::ops::Range;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// Where tracefs is looked for, in order; the first is where it gets mounted.
pub const TRACEFS_DIRS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Per-CPU ring-buffer size of a session's instance, in KiB.
pub const BUFFER_KB: u32 = 4096;

/// The events a session enables when the host has them (system, name). A name ending in `*`
/// stands for every available event with that prefix.
pub const WANTED_EVENTS: &[(&str, &str)] = &[
    ("kvm", "kvm_unmap_hva_range"),
    ("kvm", "kvm_age_hva"),
    ("kvm", "kvm_test_age_hva"),
    ("kvm", "kvm_try_async_get_page"),
    ("kvm", "kvm_async_pf_*"),
    ("kvm", "kvm_page_fault"),
    ("kvmmmu", "kvm_mmu_set_spte"),
    ("kvmmmu", "kvm_mmu_spte_requested"),
    ("kvmmmu", "fast_page_fault"),
    ("kvmmmu", "kvm_tdp_mmu_spte_changed"),
];

/// A tracepoint, `system:name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EventId {
    /// Subsystem (`kvm`, `kvmmmu`).
    pub system: String,
    /// Event name (`kvm_unmap_hva_range`).
    pub name: String,
}

impl EventId {
    /// `EventId::new("kvm", "kvm_age_hva")`.
    pub fn new(system: &str, name: &str) -> Self {
        Self {
            system: system.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.system, self.name)
    }
}

/// Which tasks' events a session records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PidFilter {
    /// Every thread of this process now, and (event-fork) every thread they create.
    ThisProcess,
    /// This process's threads plus the given pids (e.g. khugepaged, ksmd, kswapd).
    ThisProcessAnd(Vec<u32>),
    /// No pid filter: every task on the machine (filter by hva range instead).
    None,
}

/// A tracing session could not be set up or read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// tracefs is not mounted and mounting failed.
    #[error("tracefs is not mounted and mounting it on {path} failed: {source}; run as root or mount it: mount -t tracefs nodev /sys/kernel/tracing")]
    Mount {
        /// Mount point tried.
        path: PathBuf,
        /// The mount(2) error.
        #[source]
        source: std::io::Error,
    },
    /// A tracefs file could not be read or written.
    #[error("tracefs {path}: {source}; faultline needs root (CAP_SYS_ADMIN) to trace")]
    Io {
        /// The tracefs file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// None of the wanted KVM events exist (kvm module not loaded?).
    #[error("tracefs at {0} has no KVM events; load the kvm module (modprobe kvm) to trace KVM")]
    NoKvmEvents(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TraceError + '_ {
    move |source| TraceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_file(path: &Path, text: &str) -> Result<(), TraceError> {
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(text.as_bytes()).map_err(io_err(path))
}

fn is_tracefs(dir: &Path) -> bool {
    dir.join("available_events").exists() && dir.join("instances").is_dir()
}

/// Finds a mounted tracefs, or mounts it on /sys/kernel/tracing.
pub fn find_or_mount_tracefs() -> Result<PathBuf, TraceError> {
    if let Some(d) = TRACEFS_DIRS.iter().map(Path::new).find(|d| is_tracefs(d)) {
        return Ok(d.to_path_buf());
    }
    let target = Path::new(TRACEFS_DIRS[0]);
    mount_tracefs(target)?;
    if is_tracefs(target) {
        Ok(target.to_path_buf())
    } else {
        Err(TraceError::Mount {
            path: target.into(),
            source: std::io::Error::other("mounted, but no available_events appeared"),
        })
    }
}

fn mount_tracefs(target: &Path) -> Result<(), TraceError> {
    use std::os::unix::ffi::OsStrExt;
    let err = |source| TraceError::Mount {
        path: target.into(),
        source,
    };
    let c = |s: &[u8]| std::ffi::CString::new(s).map_err(|e| err(std::io::Error::other(e)));
    let (src, dir, fstype) = (
        c(b"nodev")?,
        c(target.as_os_str().as_bytes())?,
        c(b"tracefs")?,
    );
    // SAFETY: the three pointers are valid NUL-terminated strings that outlive the call, and
    // a null data pointer is allowed for tracefs (no mount options).
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dir.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(err(std::io::Error::last_os_error()))
    }
}

/// Every event tracefs lists in `available_events`.
pub fn available_events(root: &Path) -> Result<Vec<EventId>, TraceError> {
    let path = root.join("available_events");
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    Ok(text
        .lines()
        .filter_map(|l| l.trim().split_once(':'))
        .map(|(s, n)| EventId::new(s, n))
        .collect())
}

/// Splits [`WANTED_EVENTS`] into those `available` has (patterns expanded) and those it
/// lacks (patterns kept as written).
pub fn select_events(available: &[EventId]) -> (Vec<EventId>, Vec<EventId>) {
    let (mut present, mut absent) = (Vec::new(), Vec::new());
    for &(system, name) in WANTED_EVENTS {
        let hits: Vec<EventId> = match name.strip_suffix('*') {
            Some(prefix) => available
                .iter()
                .filter(|e| e.system == system && e.name.starts_with(prefix))
                .cloned()
                .collect(),
            None => available
                .iter()
                .filter(|e| e.system == system && e.name == name)
                .cloned()
                .collect(),
        };
        if hits.is_empty() {
            absent.push(EventId::new(system, name));
        }
        present.extend(hits);
    }
    present.sort();
    present.dedup();
    (present, absent)
}

/// The thread ids of this process (/proc/self/task).
pub fn this_process_threads() -> Result<Vec<u32>, TraceError> {
    let path = Path::new("/proc/self/task");
    let mut tids: Vec<u32> = std::fs::read_dir(path)
        .map_err(io_err(path))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    Ok(tids)
}

/// Kernel threads that invalidate or age a process's memory on its behalf (comm prefixes):
/// THP collapse, KSM, reclaim, compaction. [`PidFilter::ThisProcess`] misses their events.
pub const MM_DAEMONS: &[&str] = &["khugepaged", "ksmd", "kswapd", "kcompactd"];

/// The (comm, pid) of every running kernel thread named by [`MM_DAEMONS`] (`kswapd0`,
/// `kcompactd0`, ...), for [`PidFilter::ThisProcessAnd`].
pub fn mm_daemon_pids() -> Vec<(String, u32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<(String, u32)> = dir
        .filter_map(|e| {
            let e = e.ok()?;
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            let comm = comm.trim();
            MM_DAEMONS
                .iter()
                .any(|d| comm.starts_with(d))
                .then(|| (comm.to_string(), pid))
        })
        .collect();
    out.sort_by_key(|(_, p)| *p);
    out
}

/// Removes `instances/faultline-<pid>-<n>` left by processes that no longer exist (killed
/// before their session's Drop ran); returns how many it removed.
pub fn remove_stale_instances(root: &Path) -> usize {
    let Ok(dir) = std::fs::read_dir(root.join("instances")) else {
        return 0;
    };
    let mut removed = 0;
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("faultline-"))
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = write_file(&e.path().join("events/enable"), "0");
        if std::fs::remove_dir(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// What one [`TraceSession::drain`] returns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Parsed records, in the kernel's (timestamp) order.
    pub records: Vec<TraceRecord>,
    /// Lines that did not parse, verbatim (a format this parser does not know).
    pub unparsed: Vec<String>,
    /// Events the kernel dropped because a per-CPU buffer was full (`[LOST n EVENTS]`).
    pub lost: u64,
    /// Records left out by the hva-range fence.
    pub filtered_out: usize,
}

/// A tracing session on an instance of its own; removed on drop.
#[derive(Debug)]
pub struct TraceSession {
    root: PathBuf,
    dir: PathBuf,
    pipe: Option<File>,
    enabled: Vec<EventId>,
    absent: Vec<EventId>,
    hva_ranges: Vec<Range<u64>>,
    partial: String,
}

static INSTANCE_COUNTER: AtomicU32 = AtomicU32::new(0);

impl TraceSession {
    /// Sets up a session: tracefs (mounted if need be), a new instance, the available
    /// [`WANTED_EVENTS`] enabled, the pid filter set, and the pipe opened.
    pub fn start(filter: PidFilter) -> Result<Self, TraceError> {
        let root = find_or_mount_tracefs()?;
        let (enabled, absent) = select_events(&available_events(&root)?);
        if enabled.is_empty() {
            return Err(TraceError::NoKvmEvents(root));
        }
        remove_stale_instances(&root);
        let n = INSTANCE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = root
            .join("instances")
            .join(format!("faultline-{}-{n}", std::process::id()));
        std::fs::create_dir(&dir).map_err(io_err(&dir))?;
        // From here on, Drop removes the instance whatever fails.
        let mut s = Self {
            root,
            dir,
            pipe: None,
            enabled,
            absent,
            hva_ranges: Vec::new(),
            partial: String::new(),
        };
        s.configure(&filter)?;
        Ok(s)
    }

    fn configure(&mut self, filter: &PidFilter) -> Result<(), TraceError> {
        write_file(&self.dir.join("buffer_size_kb"), &BUFFER_KB.to_string())?;
        let pids = match filter {
            PidFilter::ThisProcess => Some(this_process_threads()?),
            PidFilter::ThisProcessAnd(extra) => {
                let mut p = this_process_threads()?;
                p.extend(extra);
                Some(p)
            }
            PidFilter::None => None,
        };
        if let Some(pids) = pids {
            write_file(&self.dir.join("options/event-fork"), "1")?;
            let list: Vec<String> = pids.iter().map(u32::to_string).collect();
            write_file(&self.dir.join("set_event_pid"), &list.join(" "))?;
        }
        for e in &self.enabled {
            write_file(
                &self
                    .dir
                    .join("events")
                    .join(&e.system)
                    .join(&e.name)
                    .join("enable"),
                "1",
            )?;
        }
        let pipe_path = self.dir.join("trace_pipe");
        let pipe = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&pipe_path)
            .map_err(io_err(&pipe_path))?;
        self.pipe = Some(pipe);
        Ok(())
    }

    /// The tracefs mount this session uses.
    pub fn tracefs(&self) -> &Path {
        &self.root
    }

    /// The instance directory.
    pub fn instance(&self) -> &Path {
        &self.dir
    }

    /// The events enabled (wanted and available).
    pub fn enabled_events(&self) -> &[EventId] {
        &self.enabled
    }

    /// The wanted events this host does not have.
    pub fn absent_events(&self) -> &[EventId] {
        &self.absent
    }

    /// Keeps, from now on, only hva-carrying records ([`TraceEvent::hva_range`]) that overlap
    /// one of `ranges`; an empty list keeps everything. Records without an hva are kept.
    pub fn set_hva_ranges(&mut self, ranges: Vec<Range<u64>>) {
        self.hva_ranges = ranges;
    }

    /// Every event recorded since the previous drain (or the start), in order.
    pub fn drain(&mut self) -> Result<Batch, TraceError> {
        let path = self.dir.join("trace_pipe");
        let Some(pipe) = self.pipe.as_mut() else {
            return Ok(Batch::default());
        };
        let mut bytes = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        let mut text = std::mem::take(&mut self.partial);
        text.push_str(&String::from_utf8_lossy(&bytes));
        let complete = match text.rfind('\n') {
            Some(i) => {
                self.partial = text[i + 1..].to_string();
                &text[..i]
            }
            None => {
                self.partial = text;
                return Ok(Batch::default());
            }
        };
        let mut batch = parse_text(complete);
        if !self.hva_ranges.is_empty() {
            let before = batch.records.len();
            let ranges = &self.hva_ranges;
            batch.records.retain(|r| match r.event.hva_range() {
                Some(h) => ranges.iter().any(|g| h.start < g.end && g.start < h.end),
                None => true,
            });
            batch.filtered_out = before - batch.records.len();
        }
        Ok(batch)
    }

    fn teardown(&mut self) {
        // Best effort: the instance may already be half set up.
        let _ = write_file(&self.dir.join("events/enable"), "0");
        let _ = write_file(&self.dir.join("set_event_pid"), "");
        self.pipe = None;
        let _ = std::fs::remove_dir(&self.dir);
    }
}

impl Drop for TraceSession {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Parses `trace_pipe` text (whole lines): records, lost-event markers, unparsed lines.
pub fn parse_text(text: &str) -> Batch {
    let mut batch = Batch::default();
    for line in text.lines() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(n) = parse_lost(line) {
            batch.lost += n;
            continue;
        }
        match parse_line(line) {
            Ok(r) => batch.records.push(r),
            Err(_) => batch.unparsed.push(line.to_string()),
        }
    }
    batch
}

/// `CPU:1 [LOST 42 EVENTS]` -> 42 (print_lost_event() in kernel/trace/trace.c).
fn parse_lost(line: &str) -> Option<u64> {
    let rest = line.trim().strip_prefix("CPU:")?;
    let (_, rest) = rest.split_once("[LOST ")?;
    rest.strip_suffix(" EVENTS]")?.trim().parse().ok()
}

/// One line of trace text: the task/pid/cpu/timestamp prefix and the event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceRecord {
    /// Task name (`comm`; `<...>` when the kernel no longer knows it).
    pub task: String,
    /// Thread id.
    pub pid: u32,
    /// CPU the event was recorded on.
    pub cpu: u32,
    /// The irq-info flags column (`d..1.`), empty if absent.
    pub flags: String,
    /// Timestamp in nanoseconds (trace clock; `local` by default).
    pub timestamp_ns: u64,
    /// The event.
    pub event: TraceEvent,
}

/// Which async-PF tracepoint a [`TraceEvent::AsyncPf`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AsyncPfKind {
    /// `kvm_try_async_get_page`: KVM tries to queue an async fault for a gfn.
    TryGetPage,
    /// `kvm_async_pf_repeated_fault`: the gfn already has an async fault in flight.
    RepeatedFault,
    /// `kvm_async_pf_not_present`: "page not present" injected into the guest.
    NotPresent,
    /// `kvm_async_pf_ready`: "page ready" injected into the guest.
    Ready,
    /// `kvm_async_pf_completed`: the worker faulted the page in.
    Completed,
}

/// A parsed event. Numbers are as the kernel printed them (hex in the formats that say so).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TraceEvent {
    /// `kvm:kvm_unmap_hva_range`: an mmu-notifier invalidation of `[start, end)`.
    UnmapHvaRange {
        /// First hva.
        start: u64,
        /// End hva (exclusive).
        end: u64,
    },
    /// `kvm:kvm_age_hva`: clear_flush_young / clear_young over `[start, end)`.
    AgeHva {
        /// First hva.
        start: u64,
        /// End hva (exclusive).
        end: u64,
    },
    /// `kvm:kvm_test_age_hva`: test_young of one hva.
    TestAgeHva {
        /// The hva.
        hva: u64,
    },
    /// `kvm:kvm_try_async_get_page` and `kvm:kvm_async_pf_*`.
    AsyncPf {
        /// Which tracepoint.
        kind: AsyncPfKind,
        /// Guest virtual address.
        gva: u64,
        /// Guest frame (TryGetPage, RepeatedFault).
        gfn: Option<u64>,
        /// Async-PF token (NotPresent, Ready).
        token: Option<u64>,
        /// Host virtual address (Completed).
        address: Option<u64>,
    },
    /// `kvm:kvm_page_fault`: a guest page fault KVM handles.
    PageFault {
        /// vCPU id.
        vcpu: u32,
        /// Guest RIP.
        rip: u64,
        /// Faulting address (gpa under TDP, gva under shadow paging).
        addr: u64,
        /// x86 page-fault error code (PFERR_*).
        error_code: u64,
    },
    /// `kvmmmu:kvm_mmu_set_spte`: an SPTE installed.
    SetSpte {
        /// Guest frame.
        gfn: u64,
        /// The SPTE value.
        spte: u64,
        /// Mapping level (1 = 4K, 2 = 2M, 3 = 1G).
        level: u8,
        /// `r` shown.
        readable: bool,
        /// `w` shown (PT_WRITABLE_MASK).
        writable: bool,
        /// `x` shown.
        executable: bool,
        /// `u` shown; `None` where the format leaves it out (EPT).
        user: Option<bool>,
        /// Host address of the SPTE.
        sptep: u64,
    },
    /// `kvmmmu:kvm_mmu_spte_requested`: the level KVM wants to map a fault at.
    SpteRequested {
        /// Guest frame.
        gfn: u64,
        /// Host pfn.
        pfn: u64,
        /// Requested level.
        level: u8,
    },
    /// `kvmmmu:fast_page_fault`: the lockless fast path's result.
    FastPageFault {
        /// vCPU id.
        vcpu: i32,
        /// `cr2_or_gpa`.
        gva: u64,
        /// The error-code flags as printed (`P|W`).
        error_code: String,
        /// Old SPTE.
        old_spte: u64,
        /// New SPTE.
        new_spte: u64,
        /// RET_PF_SPURIOUS.
        spurious: bool,
        /// RET_PF_FIXED.
        fixed: bool,
    },
    /// `kvmmmu:kvm_tdp_mmu_spte_changed`: a TDP MMU SPTE changed.
    TdpSpteChanged {
        /// Address space id (0 normal, 1 SMM).
        as_id: u8,
        /// Guest frame.
        gfn: u64,
        /// Level.
        level: u8,
        /// Old SPTE.
        old_spte: u64,
        /// New SPTE.
        new_spte: u64,
    },
    /// Any other event (or a known one whose text did not parse: `fields` verbatim).
    Other {
        /// Subsystem when known from the name, else empty.
        system: String,
        /// Event name.
        name: String,
        /// The text after `name: `.
        fields: String,
    },
}

impl TraceEvent {
    /// The hva range an event is about, when it carries one.
    pub fn hva_range(&self) -> Option<Range<u64>> {
        match *self {
            Self::UnmapHvaRange { start, end } | Self::AgeHva { start, end } => Some(start..end),
            Self::TestAgeHva { hva } => Some(hva..hva.saturating_add(1)),
            Self::AsyncPf {
                address: Some(a), ..
            } => Some(a..a.saturating_add(1)),
            _ => None,
        }
    }

    /// The tracepoint this is (`system:name`).
    pub fn id(&self) -> EventId {
        let (s, n) = match self {
            Self::UnmapHvaRange { .. } => ("kvm", "kvm_unmap_hva_range"),
            Self::AgeHva { .. } => ("kvm", "kvm_age_hva"),
            Self::TestAgeHva { .. } => ("kvm", "kvm_test_age_hva"),
            Self::AsyncPf { kind, .. } => ("kvm", async_pf_name(*kind)),
            Self::PageFault { .. } => ("kvm", "kvm_page_fault"),
            Self::SetSpte { .. } => ("kvmmmu", "kvm_mmu_set_spte"),
            Self::SpteRequested { .. } => ("kvmmmu", "kvm_mmu_spte_requested"),
            Self::FastPageFault { .. } => ("kvmmmu", "fast_page_fault"),
            Self::TdpSpteChanged { .. } => ("kvmmmu", "kvm_tdp_mmu_spte_changed"),
            Self::Other { system, name, .. } => return EventId::new(system, name),
        };
        EventId::new(s, n)
    }
}

fn async_pf_name(kind: AsyncPfKind) -> &'static str {
    match kind {
        AsyncPfKind::TryGetPage => "kvm_try_async_get_page",
        AsyncPfKind::RepeatedFault => "kvm_async_pf_repeated_fault",
        AsyncPfKind::NotPresent => "kvm_async_pf_not_present",
        AsyncPfKind::Ready => "kvm_async_pf_ready",
        AsyncPfKind::Completed => "kvm_async_pf_completed",
    }
}

/// A trace line that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The `task-pid [cpu] flags timestamp: name:` prefix is not there.
    #[error("Trace line has no `task-pid [cpu] timestamp: event:` prefix: {0:?}")]
    Prefix(String),
    /// A known event's fields do not match its format (a kernel format change?).
    #[error("Trace event {event} has fields this parser does not know: {fields:?}; compare with events/{event}/format")]
    Fields {
        /// The event.
        event: String,
        /// Its text.
        fields: String,
    },
}

/// Parses one line of trace text, e.g.
/// `faultline-1234 [001] ..... 567.000123: kvm_unmap_hva_range: mmu notifier unmap range: 0x7f0000000000 -- 0x7f0000001000`.
pub fn parse_line(line: &str) -> Result<TraceRecord, ParseError> {
    let bad = || ParseError::Prefix(line.to_string());
    let (task, pid, cpu, rest) = split_task_cpu(line).ok_or_else(bad)?;
    let mut rest = rest.trim_start();
    // Optional irq-info flags column, then `secs.frac:`.
    let mut flags = "";
    let first = rest.split(' ').next().ok_or_else(bad)?;
    if !first.ends_with(':') {
        flags = first;
        rest = rest[first.len()..].trim_start();
    }
    let (ts, rest) = rest.split_once(": ").ok_or_else(bad)?;
    let timestamp_ns = parse_timestamp(ts).ok_or_else(bad)?;
    let (name, fields) = match rest.split_once(": ") {
        Some((n, f)) => (n, f),
        None => (rest.strip_suffix(':').ok_or_else(bad)?, ""),
    };
    let name = name.trim();
    if name.is_empty() || name.contains(' ') {
        return Err(bad());
    }
    let event = parse_event(name, fields.trim_end())?;
    Ok(TraceRecord {
        task: task.to_string(),
        pid,
        cpu,
        flags: flags.to_string(),
        timestamp_ns,
        event,
    })
}

/// `  comm-with-dashes-123   [001] rest` -> (comm, 123, 1, rest). The comm may contain
/// spaces, dashes and brackets; the first ` [digits] ` preceded by `-digits` ends it.
fn split_task_cpu(line: &str) -> Option<(&str, u32, u32, &str)> {
    let mut from = 0;
    while let Some(off) = line[from..].find('[') {
        let open = from + off;
        from = open + 1;
        let Some(close) = line[open..].find(']').map(|c| open + c) else {
            break;
        };
        let Ok(cpu) = line[open + 1..close].parse::<u32>() else {
            continue;
        };
        let head = line[..open].trim_end();
        let Some(dash) = head.rfind('-') else {
            continue;
        };
        let Ok(pid) = head[dash + 1..].parse::<u32>() else {
            continue;
        };
        return Some((head[..dash].trim_start(), pid, cpu, &line[close + 1..]));
    }
    None
}

/// `567.000123` -> ns. Accepts any number of fraction digits up to 9.
fn parse_timestamp(s: &str) -> Option<u64> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: u64 = secs.parse().ok()?;
    let frac_ns: u64 = if frac.is_empty() {
        0
    } else {
        frac.parse::<u64>().ok()? * 10u64.pow(9 - u32::try_from(frac.len()).ok()?)
    };
    secs.checked_mul(1_000_000_000)?.checked_add(frac_ns)
}

/// Hex with or without `0x` (`%#lx` prints 0 as `0`, `%llx` never has the prefix).
fn hex(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if digits.is_empty() {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// Reads `key value` pairs in order from a whitespace-split format; `None` on a mismatch.
struct Fields<'a> {
    words: std::str::SplitWhitespace<'a>,
}

impl<'a> Fields<'a> {
    fn new(s: &'a str) -> Self {
        Self {
            words: s.split_whitespace(),
        }
    }
    /// Expects the literal words `lit` then returns the next word.
    fn after(&mut self, lit: &str) -> Option<&'a str> {
        for w in lit.split_whitespace() {
            if self.words.next()? != w {
                return None;
            }
        }
        self.words.next()
    }
    fn hex(&mut self, lit: &str) -> Option<u64> {
        hex(self.after(lit)?.trim_end_matches(','))
    }
    fn dec<T: std::str::FromStr>(&mut self, lit: &str) -> Option<T> {
        self.after(lit)?.trim_end_matches(',').parse().ok()
    }
    fn end(mut self) -> Option<()> {
        self.words.next().is_none().then_some(())
    }
}

fn system_of(name: &str) -> &'static str {
    match name {
        "kvm_mmu_set_spte"
        | "kvm_mmu_spte_requested"
        | "fast_page_fault"
        | "kvm_tdp_mmu_spte_changed"
        | "kvm_mmu_pagetable_walk"
        | "kvm_mmu_paging_element"
        | "kvm_mmu_get_page"
        | "kvm_mmu_prepare_zap_page"
        | "kvm_mmu_set_accessed_bit"
        | "kvm_mmu_set_dirty_bit"
        | "kvm_mmu_split_huge_page"
        | "kvm_mmu_sync_page"
        | "kvm_mmu_unsync_page"
        | "kvm_mmu_walker_error"
        | "kvm_mmu_zap_all_fast"
        | "mark_mmio_spte"
        | "handle_mmio_page_fault"
        | "check_mmio_spte" => "kvmmmu",
        n if n.starts_with("kvm_") || n == "vcpu_match_mmio" => "kvm",
        _ => "",
    }
}

/// Parses an event's fields by its name (formats: include/trace/events/kvm.h,
/// arch/x86/kvm/trace.h, arch/x86/kvm/mmu/mmutrace.h).
pub fn parse_event(name: &str, fields: &str) -> Result<TraceEvent, ParseError> {
    let known = |parsed: Option<TraceEvent>| {
        parsed.ok_or_else(|| ParseError::Fields {
            event: format!("{}:{name}", system_of(name)),
            fields: fields.to_string(),
        })
    };
    let async_pf = |kind: AsyncPfKind| -> Option<TraceEvent> {
        let mut f = Fields::new(fields);
        let ev = match kind {
            AsyncPfKind::TryGetPage | AsyncPfKind::RepeatedFault => {
                let gva = f.hex("gva =")?;
                let gfn = f.hex("gfn =")?;
                TraceEvent::AsyncPf {
                    kind,
                    gva,
                    gfn: Some(gfn),
                    token: None,
                    address: None,
                }
            }
            AsyncPfKind::NotPresent | AsyncPfKind::Ready => {
                let token = f.hex("token")?;
                let gva = f.hex("gva")?;
                TraceEvent::AsyncPf {
                    kind,
                    gva,
                    gfn: None,
                    token: Some(token),
                    address: None,
                }
            }
            AsyncPfKind::Completed => {
                let gva = f.hex("gva")?;
                let address = f.hex("address")?;
                TraceEvent::AsyncPf {
                    kind,
                    gva,
                    gfn: None,
                    token: None,
                    address: Some(address),
                }
            }
        };
        f.end()?;
        Some(ev)
    };
    match name {
        "kvm_unmap_hva_range" | "kvm_age_hva" => known((|| {
            let prefix = if name == "kvm_age_hva" {
                "mmu notifier age hva:"
            } else {
                "mmu notifier unmap range:"
            };
            let mut f = Fields::new(fields);
            let start = f.hex(prefix)?;
            let end = f.hex("--")?;
            f.end()?;
            Some(if name == "kvm_age_hva" {
                TraceEvent::AgeHva { start, end }
            } else {
                TraceEvent::UnmapHvaRange { start, end }
            })
        })()),
        "kvm_test_age_hva" => known((|| {
            let mut f = Fields::new(fields);
            let hva = f.hex("mmu notifier test age hva:")?;
            f.end()?;
            Some(TraceEvent::TestAgeHva { hva })
        })()),
        "kvm_try_async_get_page" => known(async_pf(AsyncPfKind::TryGetPage)),
        "kvm_async_pf_repeated_fault" => known(async_pf(AsyncPfKind::RepeatedFault)),
        "kvm_async_pf_not_present" => known(async_pf(AsyncPfKind::NotPresent)),
        "kvm_async_pf_ready" => known(async_pf(AsyncPfKind::Ready)),
        "kvm_async_pf_completed" => known(async_pf(AsyncPfKind::Completed)),
        "kvm_page_fault" => known((|| {
            let mut f = Fields::new(fields);
            let vcpu = f.dec("vcpu")?;
            let rip = f.hex("rip")?;
            let addr = f.hex("address")?;
            let error_code = f.hex("error_code")?;
            f.end()?;
            Some(TraceEvent::PageFault {
                vcpu,
                rip,
                addr,
                error_code,
            })
        })()),
        "kvm_mmu_set_spte" => known((|| {
            let mut f = Fields::new(fields);
            let gfn = f.hex("gfn")?;
            let spte = f.hex("spte")?;
            let perms = f.words.next()?.strip_prefix('(')?.strip_suffix(')')?;
            let p = perms.as_bytes();
            if !(3..=4).contains(&p.len()) {
                return None;
            }
            let bit = |i: usize, c: u8| match p[i] {
                b'-' => Some(false),
                x if x == c => Some(true),
                _ => None,
            };
            let (readable, writable, executable) = (bit(0, b'r')?, bit(1, b'w')?, bit(2, b'x')?);
            let user = if p.len() == 4 {
                Some(bit(3, b'u')?)
            } else {
                None
            };
            let level = f.dec("level")?;
            let sptep = f.hex("at")?;
            f.end()?;
            Some(TraceEvent::SetSpte {
                gfn,
                spte,
                level,
                readable,
                writable,
                executable,
                user,
                sptep,
            })
        })()),
        "kvm_mmu_spte_requested" => known((|| {
            let mut f = Fields::new(fields);
            let gfn = f.hex("gfn")?;
            let pfn = f.hex("pfn")?;
            let level = f.dec("level")?;
            f.end()?;
            Some(TraceEvent::SpteRequested { gfn, pfn, level })
        })()),
        "fast_page_fault" => known((|| {
            let mut f = Fields::new(fields);
            let vcpu = f.dec("vcpu")?;
            let gva = f.hex("gva")?;
            let error_code = f.after("error_code")?.to_string();
            f.after("sptep")?; // %p: a hashed pointer, of no use
            let old_spte = f.hex("old")?;
            let new_spte = f.hex("new")?;
            let spurious = f.dec::<u8>("spurious")? != 0;
            let fixed = f.dec::<u8>("fixed")? != 0;
            f.end()?;
            Some(TraceEvent::FastPageFault {
                vcpu,
                gva,
                error_code,
                old_spte,
                new_spte,
                spurious,
                fixed,
            })
        })()),
        "kvm_tdp_mmu_spte_changed" => known((|| {
            let mut f = Fields::new(fields);
            let as_id = f.dec("as id")?;
            let gfn = f.hex("gfn")?;
            let level = f.dec("level")?;
            let old_spte = f.hex("old_spte")?;
            let new_spte = f.hex("new_spte")?;
            f.end()?;
            Some(TraceEvent::TdpSpteChanged {
                as_id,
                gfn,
                level,
                old_spte,
                new_spte,
            })
        })()),
        _ => Ok(TraceEvent::Other {
            system: system_of(name).to_string(),
            name: name.to_string(),
            fields: fields.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_unmap_with_a_comm_that_has_dashes_and_spaces() {
        let r = parse_line(
            "  vm-setup my-thread-42   [001] d..1.  1234.567890: kvm_unmap_hva_range: mmu notifier unmap range: 0x007f0000200000 -- 0x007f0000400000",
        )
        .unwrap();
        assert_eq!(r.task, "vm-setup my-thread");
        assert_eq!(r.pid, 42);
        assert_eq!(r.cpu, 1);
        assert_eq!(r.flags, "d..1.");
        assert_eq!(r.timestamp_ns, 1_234_567_890_000);
        assert_eq!(
            r.event,
            TraceEvent::UnmapHvaRange {
                start: 0x7f00_0020_0000,
                end: 0x7f00_0040_0000
            }
        );
        assert_eq!(
            r.event.hva_range(),
            Some(0x7f00_0020_0000..0x7f00_0040_0000)
        );
    }

    #[test]
    fn parses_each_known_format() {
        let cases: &[(&str, &str, TraceEvent)] = &[
            (
                "kvm_age_hva",
                "mmu notifier age hva: 0x00000000001000 -- 0x00000000003000",
                TraceEvent::AgeHva { start: 0x1000, end: 0x3000 },
            ),
            (
                "kvm_test_age_hva",
                "mmu notifier test age hva: 0000000000000000",
                TraceEvent::TestAgeHva { hva: 0 },
            ),
            (
                "kvm_try_async_get_page",
                "gva = 0x7fff0000, gfn = 0x1234",
                TraceEvent::AsyncPf {
                    kind: AsyncPfKind::TryGetPage,
                    gva: 0x7fff_0000,
                    gfn: Some(0x1234),
                    token: None,
                    address: None,
                },
            ),
            (
                "kvm_async_pf_ready",
                "token 0x80000001 gva 0x4000",
                TraceEvent::AsyncPf {
                    kind: AsyncPfKind::Ready,
                    gva: 0x4000,
                    gfn: None,
                    token: Some(0x8000_0001),
                    address: None,
                },
            ),
            (
                "kvm_async_pf_completed",
                "gva 0x4000 address 0x7f1234567000",
                TraceEvent::AsyncPf {
                    kind: AsyncPfKind::Completed,
                    gva: 0x4000,
                    gfn: None,
                    token: None,
                    address: Some(0x7f12_3456_7000),
                },
            ),
            (
                "kvm_page_fault",
                "vcpu 0 rip 0x200010 address 0x0000000000401000 error_code 0x6",
                TraceEvent::PageFault { vcpu: 0, rip: 0x20_0010, addr: 0x40_1000, error_code: 6 },
            ),
            (
                "kvm_mmu_set_spte",
                "gfn 401 spte 600000012345b77 (rwxu) level 2 at ffff888101234008",
                TraceEvent::SetSpte {
                    gfn: 0x401,
                    spte: 0x0600_0000_1234_5b77,
                    level: 2,
                    readable: true,
                    writable: true,
                    executable: true,
                    user: Some(true),
                    sptep: 0xffff_8881_0123_4008,
                },
            ),
            (
                "kvm_mmu_set_spte",
                "gfn 401 spte 12345b75 (r-x) level 1 at ffff888101234008",
                TraceEvent::SetSpte {
                    gfn: 0x401,
                    spte: 0x1234_5b75,
                    level: 1,
                    readable: true,
                    writable: false,
                    executable: true,
                    user: None,
                    sptep: 0xffff_8881_0123_4008,
                },
            ),
            (
                "kvm_mmu_spte_requested",
                "gfn 400 pfn 12345 level 2",
                TraceEvent::SpteRequested { gfn: 0x400, pfn: 0x12345, level: 2 },
            ),
            (
                "fast_page_fault",
                "vcpu 1 gva 401000 error_code P|W sptep 00000000deadbeef old 0x12345b75 new 12345b77 spurious 0 fixed 1",
                TraceEvent::FastPageFault {
                    vcpu: 1,
                    gva: 0x40_1000,
                    error_code: "P|W".into(),
                    old_spte: 0x1234_5b75,
                    new_spte: 0x1234_5b77,
                    spurious: false,
                    fixed: true,
                },
            ),
            (
                "kvm_tdp_mmu_spte_changed",
                "as id 0 gfn 400 level 2 old_spte 5a0 new_spte 6000000123456f7",
                TraceEvent::TdpSpteChanged {
                    as_id: 0,
                    gfn: 0x400,
                    level: 2,
                    old_spte: 0x5a0,
                    new_spte: 0x0600_0000_1234_56f7,
                },
            ),
        ];
        for (name, fields, want) in cases {
            assert_eq!(
                &parse_event(name, fields).unwrap(),
                want,
                "{name}: {fields}"
            );
            assert_eq!(want.id().name, *name);
        }
    }

    #[test]
    fn a_known_event_with_unknown_fields_is_an_error_and_others_are_kept() {
        assert!(matches!(
            parse_event("kvm_unmap_hva_range", "mmu notifier unmap range: zz -- 0x1"),
            Err(ParseError::Fields { .. })
        ));
        assert!(parse_event("kvm_mmu_set_spte", "gfn 1 spte 2 (rwq) level 1 at 3").is_err());
        assert_eq!(
            parse_event("kvm_emulate_insn", "0:200010: 89 07 (prot64)").unwrap(),
            TraceEvent::Other {
                system: "kvm".into(),
                name: "kvm_emulate_insn".into(),
                fields: "0:200010: 89 07 (prot64)".into()
            }
        );
        assert_eq!(
            parse_event("kvm_mmu_pagetable_walk", "addr 401000 pferr 6 W")
                .unwrap()
                .id(),
            EventId::new("kvmmmu", "kvm_mmu_pagetable_walk")
        );
    }

    #[test]
    fn text_counts_lost_events_and_keeps_unparsed_lines() {
        let text = "\
# tracer: nop
 faultline-7 [000] ..... 1.5: kvm_test_age_hva: mmu notifier test age hva: 0x1000
CPU:1 [LOST 17 EVENTS]
garbage line
 faultline-7 [000] ..... 1.6: kvm_test_age_hva: mmu notifier test age hva: 0x2000
";
        let b = parse_text(text);
        assert_eq!(b.records.len(), 2);
        assert_eq!(b.records[0].timestamp_ns, 1_500_000_000);
        assert_eq!(b.records[1].event, TraceEvent::TestAgeHva { hva: 0x2000 });
        assert_eq!(b.lost, 17);
        assert_eq!(b.unparsed, vec!["garbage line".to_string()]);
    }

    #[test]
    fn selects_available_events_and_names_the_absent_ones() {
        let avail: Vec<EventId> = [
            ("kvm", "kvm_unmap_hva_range"),
            ("kvm", "kvm_async_pf_ready"),
            ("kvm", "kvm_async_pf_completed"),
            ("kvmmmu", "kvm_mmu_set_spte"),
            ("sched", "sched_switch"),
        ]
        .iter()
        .map(|(s, n)| EventId::new(s, n))
        .collect();
        let (present, absent) = select_events(&avail);
        assert_eq!(present.len(), 4);
        assert!(present.contains(&EventId::new("kvm", "kvm_async_pf_ready")));
        assert!(!present.contains(&EventId::new("sched", "sched_switch")));
        assert!(absent.contains(&EventId::new("kvmmmu", "fast_page_fault")));
        assert!(!absent.contains(&EventId::new("kvm", "kvm_async_pf_*")));
        let (_, absent) = select_events(&[]);
        assert!(absent.contains(&EventId::new("kvm", "kvm_async_pf_*")));
    }

    /// Recorded on this host (6.18.44, PVM, shadow MMU) from an instance with every kvm and
    /// kvmmmu event enabled while the probe VM ran. Note the comm with `::` (a test thread
    /// name), the `.N...` flags, a trailing space, and the lost-events marker.
    const RECORDED: &str = " check::observe:-21840   [001] d..1.  1707.193207: kvm_update_master_clock: masterclock 0 hostclock tsc offsetmatched 0
 check::observe:-21840   [001] .....  1707.193585: kvm_unmap_hva_range: mmu notifier unmap range: 0x007f9355808000 -- 0x007f9355a08000
        vm-setup-21841   [001] .....  1707.193646: kvm_unmap_hva_range: mmu notifier unmap range: 0x007f9348000000 -- 0x007f934c000000
 check::observe:-21840   [001] .N...  1707.193243: kvm_apicv_inhibit_changed: set reason=0, inhibits=0x1 DISABLED
           vcpu0-21842   [001] ...1.  1707.198939: kvm_mmu_get_page: sp gen 0 gfn 9 l4 8-byte q0 wux nxe ad root 0 sync new
           vcpu0-21842   [001] .....  1707.198945: kvm_mmu_pagetable_walk: addr 200000 pferr 10 F
           vcpu0-21842   [001] .....  1707.198953: kvm_emulate_insn: 0:200000:48 83 ff 40 (prot64)
CPU:1 [LOST 6354 EVENTS]
           vcpu0-21842   [000] .....  1707.654410: kvm_pio: pio_write at 0xe0 size 4 count 1 val 0x207de8 
           vcpu0-21842   [000] .....  1707.658733: kvm_unmap_hva_range: mmu notifier unmap range: 0x007f9355804000 -- 0x007f9355807000
";

    #[test]
    fn parses_text_recorded_on_this_host() {
        let b = parse_text(RECORDED);
        assert!(b.unparsed.is_empty(), "{:?}", b.unparsed);
        assert_eq!(b.lost, 6354);
        assert_eq!(b.records.len(), 9);
        let r = &b.records[1];
        assert_eq!(
            (r.task.as_str(), r.pid, r.cpu),
            ("check::observe:", 21840, 1)
        );
        assert_eq!(r.timestamp_ns, 1_707_193_585_000);
        assert_eq!(
            r.event,
            TraceEvent::UnmapHvaRange {
                start: 0x7f93_5580_8000,
                end: 0x7f93_55a0_8000
            }
        );
        assert_eq!(b.records[2].task, "vm-setup");
        assert_eq!(b.records[3].flags, ".N...");
        assert_eq!(
            b.records[5].event.id(),
            EventId::new("kvmmmu", "kvm_mmu_pagetable_walk")
        );
        let TraceEvent::Other { fields, .. } = &b.records[7].event else {
            panic!("{:?}", b.records[7]);
        };
        assert_eq!(fields, "pio_write at 0xe0 size 4 count 1 val 0x207de8");
        assert_eq!(b.records[8].cpu, 0);
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in "\\PC*") {
            let _ = parse_line(&s);
            let _ = parse_text(&s);
        }

        #[test]
        fn arbitrary_fields_of_known_events_never_panic(
            name in prop::sample::select(vec![
                "kvm_unmap_hva_range", "kvm_age_hva", "kvm_test_age_hva", "kvm_try_async_get_page",
                "kvm_async_pf_ready", "kvm_async_pf_completed", "kvm_page_fault", "kvm_mmu_set_spte",
                "kvm_mmu_spte_requested", "fast_page_fault", "kvm_tdp_mmu_spte_changed", "x"]),
            fields in "[ -~]{0,80}",
        ) {
            let _ = parse_event(name, &fields);
            let line = format!("t-1 [0] ..... 1.0: {name}: {fields}");
            let _ = parse_line(&line);
        }

        #[test]
        fn unmap_round_trips(start in any::<u64>(), end in any::<u64>(), pid in any::<u32>(), cpu in 0u32..1024) {
            let line = format!(
                "comm-{pid} [{cpu:03}] d..1. 99.000001: kvm_unmap_hva_range: mmu notifier unmap range: {start:#016x} -- {end:#016x}"
            );
            let r = parse_line(&line).unwrap();
            prop_assert_eq!(r.pid, pid);
            prop_assert_eq!(r.cpu, cpu);
            prop_assert_eq!(r.event, TraceEvent::UnmapHvaRange { start, end });
        }
    }

    /// Real: a session on this host, a madvise(DONTNEED) of our own memory shows up only
    /// when a KVM VM exists in this process (the notifier is KVM's); see probe.rs for that.
    /// Here: the session sets up, lists its events, drains without error, and cleans up.
    #[test]
    fn real_session_starts_drains_and_removes_its_instance() {
        let s = match TraceSession::start(PidFilter::ThisProcess) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("SKIPPED real_session_starts_drains_and_removes_its_instance: {e}");
                return;
            }
        };
        let dir = s.instance().to_path_buf();
        assert!(dir.is_dir());
        assert!(s
            .enabled_events()
            .contains(&EventId::new("kvm", "kvm_unmap_hva_range")));
        let pids = std::fs::read_to_string(dir.join("set_event_pid")).unwrap();
        let me = std::process::id().to_string();
        assert!(pids.split_whitespace().any(|p| p == me), "{pids}");
        let mut s = s;
        let b = s.drain().unwrap();
        assert_eq!(b.lost, 0);
        drop(s);
        assert!(!dir.exists(), "instance {} left behind", dir.display());
    }

    /// A VM in this process (so KVM's mmu notifier is registered on our mm), then steps of
    /// madvise(DONTNEED) on guest RAM: each drain returns exactly that step's invalidations,
    /// in order, including those made by a thread created after the session started
    /// (event-fork); a DONTNEED outside guest RAM is fenced off by the hva ranges.
    #[test]
    fn real_drain_returns_each_steps_invalidations_in_order() {
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        if !Path::new("/dev/kvm").exists() {
            eprintln!("SKIPPED real_drain: no /dev/kvm");
            return;
        }
        let t = std::time::Instant::now();
        let mut s = match TraceSession::start(PidFilter::ThisProcess) {
            Ok(s) => {
                eprintln!("session start: {:?}", t.elapsed());
                s
            }
            Err(e) => {
                eprintln!("SKIPPED real_drain: {e}");
                return;
            }
        };
        let config = crate::config::VmConfig {
            memory: crate::config::MemoryConfig {
                size: 32 << 20,
                ..Default::default()
            },
            ..Default::default()
        };
        let vmm = crate::launch::Vmm::new(config, crate::launch::VmIo::captured().0).unwrap();
        let region = vmm.guest_memory().iter().next().unwrap();
        let (base, len) = (region.as_ptr() as u64, region.len());
        s.set_hva_ranges(std::iter::once(base..base + len).collect());
        s.drain().unwrap(); // set-up noise
        let dontneed = |hva: u64, len: usize| {
            // SAFETY: [hva, hva + len) lies in guest RAM (owned by `vmm`, alive) or in
            // `other` below; no vCPU runs, and DONTNEED only drops pages.
            let rc = unsafe { libc::madvise(hva as *mut libc::c_void, len, libc::MADV_DONTNEED) };
            assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        };
        let page = |i: u64| base + (16 << 20) + i * 4096;
        for step in 0..6u64 {
            let hvas: Vec<u64> = (0..=step % 3).map(|k| page(step * 4 + k)).collect();
            if step % 2 == 1 {
                let h = hvas.clone();
                std::thread::spawn(move || {
                    for a in h {
                        dontneed(a, 4096);
                    }
                })
                .join()
                .unwrap();
            } else {
                for &a in &hvas {
                    dontneed(a, 4096);
                }
            }
            let b = s.drain().unwrap();
            let got: Vec<TraceEvent> = b.records.iter().map(|r| r.event.clone()).collect();
            // Each KVM VM alive in this process has its own notifier and traces the
            // invalidation once (tests run in parallel threads, and others create VMs):
            // every range comes k times in a row, k >= 1.
            let k = (got.len() / hvas.len()).max(1);
            let want: Vec<TraceEvent> = hvas
                .iter()
                .flat_map(|&a| {
                    std::iter::repeat_n(
                        TraceEvent::UnmapHvaRange {
                            start: a,
                            end: a + 4096,
                        },
                        k,
                    )
                })
                .collect();
            assert_eq!(got, want, "step {step}: {b:?}");
            assert!(b
                .records
                .windows(2)
                .all(|w| w[0].timestamp_ns <= w[1].timestamp_ns));
            assert_eq!(b.lost, 0);
        }
        // Cost of a step's drain when nothing happened, and of one DONTNEED + drain.
        let t = std::time::Instant::now();
        for _ in 0..1000 {
            s.drain().unwrap();
        }
        let empty = t.elapsed() / 1000;
        let t = std::time::Instant::now();
        for i in 0..200 {
            dontneed(page(100 + i % 50), 4096);
            assert!(!s.drain().unwrap().records.is_empty());
        }
        eprintln!(
            "drain: {empty:?} empty; {:?} per DONTNEED + drain of its event",
            t.elapsed() / 200
        );
        // Outside guest RAM: traced (same mm), but fenced off.
        let other = crate::check::observe::pagemap::tests::anon_for_tests(1 << 20);
        dontneed(other, 4096);
        let b = s.drain().unwrap();
        assert!(b.records.is_empty(), "{b:?}");
        assert!(b.filtered_out >= 1);
        drop(vmm);
    }

    #[test]
    fn real_session_can_follow_the_mm_daemons_too() {
        let daemons = mm_daemon_pids();
        eprintln!("mm daemons: {daemons:?}");
        let pids: Vec<u32> = daemons.iter().map(|(_, p)| *p).collect();
        let s = match TraceSession::start(PidFilter::ThisProcessAnd(pids.clone())) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("SKIPPED real_session_can_follow_the_mm_daemons_too: {e}");
                return;
            }
        };
        let listed = std::fs::read_to_string(s.instance().join("set_event_pid")).unwrap();
        let listed: Vec<u32> = listed
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        for p in pids.iter().chain([std::process::id()].iter()) {
            assert!(
                listed.contains(p),
                "pid {p} not in set_event_pid {listed:?}"
            );
        }
        let none = TraceSession::start(PidFilter::None).unwrap();
        let listed = std::fs::read_to_string(none.instance().join("set_event_pid")).unwrap();
        assert!(listed.trim().is_empty(), "{listed}");
    }

    #[test]
    fn real_stale_instances_of_dead_processes_are_removed() {
        let Ok(root) = find_or_mount_tracefs() else {
            eprintln!("SKIPPED real_stale_instances: no tracefs");
            return;
        };
        // A pid that does not exist: above pid_max.
        let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(4_194_304);
        let dead = root
            .join("instances")
            .join(format!("faultline-{}-0", max + 1));
        let mine = TraceSession::start(PidFilter::ThisProcess).unwrap();
        if std::fs::create_dir(&dead).is_err() {
            eprintln!(
                "SKIPPED real_stale_instances: cannot create {}",
                dead.display()
            );
            return;
        }
        assert!(remove_stale_instances(&root) >= 1);
        assert!(!dead.exists());
        assert!(
            mine.instance().exists(),
            "a live session's instance must stay"
        );
    }
}
