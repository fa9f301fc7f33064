//! seccomp filters for the VMM's threads: one allowlist per [`ThreadKind`], compiled with
//! seccompiler, installed by each thread once it has opened what it needs, on by default
//! (`--no-seccomp` / [`crate::VmBuilder::seccomp`] turn it off), as Firecracker does.
//!
//! A system call outside a thread's list does not run: the kernel raises SIGSYS
//! (`SECCOMP_RET_TRAP`) and `on_sigsys` (async-signal-safe: no allocation, no lock)
//!
//! 1. writes a preformatted message to stderr at once, naming the call, the thread kind and
//!    the fix (so the user sees it even if that thread then misbehaves),
//! 2. makes the call return `-EPERM` (without this the caller would see the syscall number
//!    in RAX as if it had succeeded: the kernel's `syscall_rollback()`),
//! 3. records the violation in the VM's [`Seccomp`] (an atomic) and wakes its event loop
//!    through an eventfd (write(2) is async-signal-safe).
//!
//! The event loop then ends the VM with [`VmExit::SeccompViolation`] (exit status
//! [`STATUS_SECCOMP_VIOLATION`], 104), and `Vmm::run` reports that violation whatever else
//! the VM's threads requested meanwhile. Why not `_exit()` in the handler: the VMM then
//! tears the VM down the ordinary way (tracefs instances, huge page pools and uffd services
//! are put back; `cargo test` processes running several VMs survive), and the report is a
//! normal [`crate::launch::RunOutcome`] a test can assert on. The price is that the trapped
//! call fails with EPERM and its thread goes on until the VM ends (within one event-loop
//! round, 200 ms at most).
//!
//! Which threads are filtered (grep `thread::Builder`/`thread::spawn` in vmm/src):
//!
//! | thread | kind | installed |
//! |---|---|---|
//! | `vcpuN` (launch.rs) | [`ThreadKind::Vcpu`] | first thing in the thread: its vCPU fd and `kvm_run` mapping exist already |
//! | `vmm-event` (launch.rs: the event loop, stdin, the watchdog's kicks and report) | [`ThreadKind::EventLoop`] | after its epoll set is built |
//! | `uffdN-rM`, `uffd-spinN` (memory/uffd.rs) | [`ThreadKind::UffdReader`] | first thing in the thread: the uffds are registered |
//! | the thread that calls `Vmm::run` in `faultline run` (main.rs) | [`ThreadKind::Main`] | after `build()`; it spawns the others, so its list is a superset of theirs (filters stack) |
//! | `vm-controller` under `faultline run --gdb` (gdb/mod.rs: the gdb server) | [`ThreadKind::Gdb`] | once gdb has connected (listener bound, connection accepted) |
//! | `live-resolverN` (live/mod.rs: live mode's resolvers beyond the first) | [`ThreadKind::LiveResolver`] | once its epoll instance is set up |
//! | `vm-controller` ([`crate::Vmm::run_with`]) elsewhere | none | it runs the caller's code: `check`'s host operations (munmap, mprotect, madvise, mremap, fork, memfd/fallocate, tracefs, /proc), `test mm`'s, live mode's resolver: a list would be the whole syscall table |
//! | the thread calling `Vmm::run` elsewhere (bench faults, check, test mm) | none | it builds the next VM and writes the reports after this one: it only waits while the VM runs |
//! | `vm-setup` (launch.rs) | none | ends before any vCPU runs |
//!
//! The lists were found by reading the code and with `strace -f` over `faultline run`
//! (built-in guests) and `bench faults`, then checked by running with the filters on: Linux
//! boots (PVH and bzImage, `-- CMD`), every built-in guest and RAM backing, `bench faults`
//! with every backing (2M and 1G hugetlb included), uffd MISSING (copy, zeropage) and
//! MINOR, every wait mode, `check` on the shipped suite, `test mm`, `bench boot`, and the
//! test suites. Each entry says why it is there. A thread spawned by a filtered thread
//! without a kind of its own inherits its parent's filter; a violation there cannot be tied
//! to a VM, so the handler `_exit`s the process with 104 after its message.

mod names;

pub use names::syscall_name;

use devices::exit::VmExit;
pub use devices::exit::STATUS_SECCOMP_VIOLATION;
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// The kinds of thread the VMM runs, each with its own allowlist ([`allowed_syscalls`]).
///
/// To add a kind: a variant here, its name in [`ThreadKind::name`], its list in
/// [`allowed_syscalls`], and one `seccomp.apply(ThreadKind::X)` at the top of the thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ThreadKind {
    /// A vCPU thread: KVM_RUN and the exit dispatch (port/MMIO devices, ucalls, the console,
    /// exit hooks).
    Vcpu,
    /// The event loop: the VM's end signal, host stdin to the serial port, the watchdog.
    EventLoop,
    /// A userfaultfd reader of the demand-paging service (memory/uffd.rs).
    UffdReader,
    /// The thread that runs a single VM for the whole process (`faultline run`): it spawns
    /// the vCPU and event-loop threads, waits, and reports.
    Main,
    /// The gdb server thread (socket read/write, vCPU ioctls), filtered once gdb has
    /// connected (`tests/tests/gdb.rs` runs whole sessions under it).
    Gdb,
    /// A live-mode uffd resolver thread of its own (`live-resolverN`: UFFDIO_* ioctls, uffd
    /// reads, epoll/poll waits, pagemap/kpageflags preads). Resolver 0 runs in live mode's
    /// `run_with` controller, which also injects host events (fork, DONTNEED, tracefs), and
    /// stays unfiltered.
    LiveResolver,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 6] = [
        ThreadKind::Vcpu,
        ThreadKind::EventLoop,
        ThreadKind::UffdReader,
        ThreadKind::Main,
        ThreadKind::Gdb,
        ThreadKind::LiveResolver,
    ];

    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vCPU",
            ThreadKind::EventLoop => "event-loop",
            ThreadKind::UffdReader => "uffd reader",
            ThreadKind::Main => "main",
            ThreadKind::Gdb => "gdb server",
            ThreadKind::LiveResolver => "live uffd resolver",
        }
    }

    fn index(self) -> usize {
        ThreadKind::ALL
            .iter()
            .position(|k| *k == self)
            .unwrap_or_default()
    }
}

impl std::fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What every thread does, whatever its kind: the Rust runtime, glibc and the allocator.
#[rustfmt::skip]
const COMMON: &[(i64, &str)] = &[
    (libc::SYS_brk, "malloc grows the main heap"),
    (libc::SYS_mmap, "malloc arenas and large allocations"),
    (libc::SYS_munmap, "free of large allocations; thread exit unmaps its signal stack"),
    (libc::SYS_mremap, "realloc of large allocations"),
    (libc::SYS_mprotect, "malloc grows a thread arena"),
    (libc::SYS_madvise, "malloc trims arenas; glibc frees an exiting thread's stack"),
    (libc::SYS_futex, "Mutex, Condvar, Once, thread join"),
    (libc::SYS_sched_yield, "spin-then-yield loops (uffd busy readers)"),
    (libc::SYS_sched_getaffinity, "glibc's pthread_getattr_np (std's thread start)"),
    (libc::SYS_nanosleep, "thread::sleep (older glibc)"),
    (libc::SYS_clock_nanosleep, "thread::sleep"),
    (libc::SYS_clock_gettime, "Instant::now when the vDSO falls back"),
    (libc::SYS_gettimeofday, "SystemTime::now when the vDSO falls back"),
    (libc::SYS_restart_syscall, "a sleep or futex wait restarted after the vCPU kick signal"),
    (libc::SYS_rt_sigreturn, "returning from the kick and SIGSYS handlers"),
    (libc::SYS_rt_sigprocmask, "glibc blocks signals around thread exit and abort"),
    (libc::SYS_sigaltstack, "std disables the thread's signal stack at exit"),
    (libc::SYS_exit, "thread exit"),
    (libc::SYS_exit_group, "process exit"),
    (libc::SYS_write, "eprintln!, panic messages, the console, eventfd signals"),
    (libc::SYS_close, "dropping an fd"),
    (libc::SYS_fcntl, "debug builds' std checks an fd is open (F_GETFD) before closing it; File::try_clone"),
    (libc::SYS_getrandom, "HashMap's RandomState, seeded per thread on first use"),
    (libc::SYS_getpid, "abort() (a panic under panic=abort) raises SIGABRT"),
    (libc::SYS_gettid, "abort(); thread ids for the watchdog and tracefs"),
    (libc::SYS_tgkill, "abort() raises SIGABRT on itself"),
];

/// vCPU threads, beyond [`COMMON`].
#[rustfmt::skip]
const VCPU: &[(i64, &str)] = &[
    (libc::SYS_ioctl, "KVM_RUN, KVM_GET/SET_REGS/SREGS, KVM_TRANSLATE, KVM_INTERRUPT ...; UFFDIO_COPY/ZEROPAGE/CONTINUE of faults resolved on the vCPU (--uffd-wait vcpu)"),
    (libc::SYS_writev, "console output through std's buffered writers"),
    (libc::SYS_read, "an exit hook's reads of its own fds"),
    (libc::SYS_pread64, "KVM binary stats (KVM_GET_STATS_FD) read by bench faults' mark device"),
];

/// The event loop, beyond [`COMMON`].
#[rustfmt::skip]
const EVENT_LOOP: &[(i64, &str)] = &[
    (libc::SYS_epoll_wait, "event-manager's run_with_timeout"),
    (libc::SYS_epoll_pwait, "epoll_wait where glibc implements it with epoll_pwait"),
    (libc::SYS_epoll_ctl, "dropping stdin from the set at EOF"),
    (libc::SYS_read, "the end-signal eventfd; host stdin"),
    (libc::SYS_writev, "console output"),
    (libc::SYS_ioctl, "terminal ioctls on stdin/stdout (isatty)"),
];

/// uffd readers, beyond [`COMMON`].
#[rustfmt::skip]
const UFFD_READER: &[(i64, &str)] = &[
    (libc::SYS_ioctl, "UFFDIO_COPY, UFFDIO_ZEROPAGE, UFFDIO_CONTINUE, UFFDIO_WAKE"),
    (libc::SYS_read, "uffd messages; the stop eventfd"),
    (libc::SYS_poll, "--uffd-wait poll: the uffd and the stop eventfd"),
    (libc::SYS_ppoll, "poll where glibc implements it with ppoll"),
];

/// The `faultline run` main thread, beyond the union of [`VCPU`] and [`EVENT_LOOP`] (the
/// threads it spawns inherit its filter, so it must allow what they do).
#[rustfmt::skip]
const MAIN: &[(i64, &str)] = &[
    (libc::SYS_clone3, "spawning the vCPU and event-loop threads"),
    (libc::SYS_clone, "spawning threads where clone3 is refused"),
    (libc::SYS_set_robust_list, "a new thread's start in glibc"),
    (libc::SYS_rseq, "a new thread's start in glibc"),
    (libc::SYS_prctl, "naming a new thread (PR_SET_NAME); PR_SET_NO_NEW_PRIVS before its filter"),
    (libc::SYS_seccomp, "the threads it spawns install their own filters"),
    (libc::SYS_epoll_create1, "the event-loop thread builds its epoll set before its filter"),
    (libc::SYS_eventfd2, "event-manager's wake-up eventfd, before the event loop's filter"),
    (libc::SYS_rt_sigaction, "installing the vCPU kick handler in Vmm::run"),
    (libc::SYS_openat, "/proc/self/status for the run's memory sample"),
    (libc::SYS_mincore, "guest RAM residency for the run's memory sample"),
    (libc::SYS_newfstatat, "std's File::read_to_string sizes its buffer"),
    (libc::SYS_statx, "std's File::read_to_string sizes its buffer"),
    (libc::SYS_lseek, "std's File::read_to_string"),
];

/// The gdb server, beyond [`COMMON`] (a first list: see [`ThreadKind::Gdb`]).
#[rustfmt::skip]
const GDB: &[(i64, &str)] = &[
    (libc::SYS_accept, "the debugger's connection"),
    (libc::SYS_accept4, "the debugger's connection"),
    (libc::SYS_read, "gdb remote protocol packets"),
    (libc::SYS_recvfrom, "gdb remote protocol packets"),
    (libc::SYS_sendto, "replies"),
    (libc::SYS_writev, "replies"),
    (libc::SYS_poll, "waiting for the debugger or a stop"),
    (libc::SYS_ppoll, "poll where glibc implements it with ppoll"),
    (libc::SYS_setsockopt, "TCP_NODELAY"),
    (libc::SYS_shutdown, "closing the connection"),
    (libc::SYS_ioctl, "vCPU register and debug ioctls"),
];

/// The live uffd resolver, beyond [`COMMON`] (a first list: see
/// [`ThreadKind::LiveResolver`]).
#[rustfmt::skip]
const LIVE_RESOLVER: &[(i64, &str)] = &[
    (libc::SYS_ioctl, "UFFDIO_COPY, UFFDIO_ZEROPAGE, UFFDIO_CONTINUE, UFFDIO_WRITEPROTECT"),
    (libc::SYS_read, "uffd messages; its stop eventfd"),
    (libc::SYS_pread64, "/proc/self/pagemap and /proc/kpageflags"),
    (libc::SYS_poll, "waiting on the uffd and a stop eventfd"),
    (libc::SYS_ppoll, "poll where glibc implements it with ppoll"),
    (libc::SYS_epoll_wait, "waiting on a uffd shared with other resolvers (EPOLLEXCLUSIVE)"),
    (libc::SYS_epoll_pwait, "epoll_wait where glibc implements it with epoll_pwait"),
];

/// Every system call `kind` may make, each with why.
pub fn allowed_syscalls(kind: ThreadKind) -> Vec<(i64, &'static str)> {
    let own: &[&[(i64, &str)]] = match kind {
        ThreadKind::Vcpu => &[VCPU],
        ThreadKind::EventLoop => &[EVENT_LOOP],
        ThreadKind::UffdReader => &[UFFD_READER],
        ThreadKind::Main => &[VCPU, EVENT_LOOP, MAIN],
        ThreadKind::Gdb => &[GDB],
        ThreadKind::LiveResolver => &[LIVE_RESOLVER],
    };
    let mut v: Vec<(i64, &'static str)> = COMMON.to_vec();
    for list in own {
        for e in *list {
            if !v.iter().any(|x| x.0 == e.0) {
                v.push(*e);
            }
        }
    }
    v
}

/// Errors compiling or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler refused the filter (a faultline bug).
    #[error("Compiling the seccomp filter for {kind} threads failed: {source}; this is a faultline bug: report it (`--no-seccomp` runs without filters)")]
    Compile {
        /// The thread kind.
        kind: ThreadKind,
        /// seccompiler's error.
        #[source]
        source: seccompiler::Error,
    },
    /// The kernel refused the filter (no CONFIG_SECCOMP_FILTER, or a container forbids it).
    #[error("Installing the seccomp filter on a {kind} thread failed: {source}; the host kernel needs CONFIG_SECCOMP_FILTER (pass --no-seccomp to run without filters)")]
    Install {
        /// The thread kind.
        kind: ThreadKind,
        /// seccompiler's error.
        #[source]
        source: seccompiler::Error,
    },
    /// The SIGSYS handler could not be installed.
    #[error("Installing the SIGSYS handler for seccomp failed: {0}; pass --no-seccomp to run without filters")]
    Handler(#[source] std::io::Error),
    /// The VM's end-signal eventfd could not be duplicated for the SIGSYS handler.
    #[error("Duplicating the VM's end-signal eventfd for the seccomp handler failed: {0}; raise the open-file limit (ulimit -n) or pass --no-seccomp")]
    WakeFd(#[source] std::io::Error),
}

/// Whether [`crate::VmBuilder`] filters by default (true unless the command line said
/// `--no-seccomp`).
static DEFAULT_ON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Sets the process-wide default of [`crate::VmBuilder::seccomp`]: the CLI calls it once
/// with `!--no-seccomp`, so every VM a subcommand builds (bench faults' fresh VM per
/// configuration, check's per scenario, test mm's) follows the flag.
pub fn set_default_enabled(on: bool) {
    DEFAULT_ON.store(on, Ordering::Relaxed);
}

/// The process-wide default (see [`set_default_enabled`]).
pub fn default_enabled() -> bool {
    DEFAULT_ON.load(Ordering::Relaxed)
}

/// The compiled filter of `kind` (compiled once per process).
pub fn filter(kind: ThreadKind) -> Result<&'static BpfProgram, SeccompError> {
    static CACHE: [OnceLock<BpfProgram>; ThreadKind::ALL.len()] =
        [const { OnceLock::new() }; ThreadKind::ALL.len()];
    let slot = &CACHE[kind.index()];
    if let Some(p) = slot.get() {
        return Ok(p);
    }
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = allowed_syscalls(kind)
        .into_iter()
        .map(|(nr, _)| (nr, Vec::new()))
        .collect();
    let compile = |source| SeccompError::Compile { kind, source };
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e: seccompiler::BackendError| compile(e.into()))?;
    let f = SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, arch)
        .map_err(|e| compile(e.into()))?;
    let prog: BpfProgram = f
        .try_into()
        .map_err(|e: seccompiler::BackendError| compile(e.into()))?;
    Ok(slot.get_or_init(|| prog))
}

/// A system call a filter refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    /// The thread kind that made it.
    pub kind: ThreadKind,
    /// The x86_64 system call number.
    pub nr: i64,
}

impl Violation {
    /// The call's name (`syscall 1234` for a number libc does not know).
    pub fn syscall(&self) -> String {
        syscall_name(self.nr).map_or_else(|| format!("syscall {}", self.nr), str::to_string)
    }

    /// The exit this violation ends the VM with.
    pub fn to_exit(self) -> VmExit {
        VmExit::SeccompViolation {
            thread: self.kind.name().to_string(),
            syscall: self.syscall(),
            nr: self.nr,
        }
    }

    // seccomp_data.nr is a 32-bit int: the number fits the low half.
    #[allow(clippy::cast_possible_truncation)]
    fn encode(self) -> u64 {
        ((self.kind.index() as u64 + 1) << 32) | u64::from(self.nr as u32)
    }

    #[allow(clippy::cast_possible_truncation)]
    fn decode(v: u64) -> Option<Violation> {
        let k = (v >> 32).checked_sub(1)?;
        Some(Violation {
            kind: *ThreadKind::ALL.get(usize::try_from(k).ok()?)?,
            nr: i64::from(v as u32 as i32),
        })
    }
}

/// Where the SIGSYS handler reports a VM's violations.
#[derive(Debug)]
struct Sink {
    /// The first violation ([`Violation::encode`]), 0 while there is none.
    violation: AtomicU64,
    /// A duplicate of the VM's end-signal eventfd: writing it wakes the event loop.
    wake: Option<OwnedFd>,
}

/// One VM's seccomp policy: whether its threads are filtered, and where their violations
/// go. Cheap to clone; every thread of the VM applies its filter through it.
#[derive(Debug, Clone)]
pub struct Seccomp {
    sink: Option<Arc<Sink>>,
}

impl Seccomp {
    /// No filtering: [`Seccomp::apply`] does nothing.
    pub fn off() -> Self {
        Seccomp { sink: None }
    }

    /// Filtering on, with violations reported to this policy only and `wake` (an eventfd,
    /// duplicated here) written when one happens. `None`: no wake-up (poll
    /// [`Seccomp::violation`]).
    pub fn on(wake: Option<&impl AsRawFd>) -> Result<Self, SeccompError> {
        settle_allocator();
        let wake = match wake {
            None => None,
            Some(fd) => {
                // SAFETY: the caller's fd is open for the duration of this call.
                let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd.as_raw_fd()) };
                Some(b.try_clone_to_owned().map_err(SeccompError::WakeFd)?)
            }
        };
        Ok(Seccomp {
            sink: Some(Arc::new(Sink {
                violation: AtomicU64::new(0),
                wake,
            })),
        })
    }

    /// Whether threads are filtered.
    pub fn enabled(&self) -> bool {
        self.sink.is_some()
    }

    /// Installs `kind`'s filter on the calling thread (for good: a thread cannot drop its
    /// filter, and threads it spawns inherit it). Does nothing when filtering is off.
    pub fn apply(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        let Some(sink) = &self.sink else {
            return Ok(());
        };
        install_handler()?;
        let prog = filter(kind)?;
        // Bind the thread to this VM's sink before the filter can fire.
        OWNER.with(|o| {
            *o.borrow_mut() = Some(Owner {
                _sink: Arc::clone(sink),
            })
        });
        // ThreadKind::ALL has a handful of entries: the index fits a u8.
        #[allow(clippy::cast_possible_truncation)]
        let k = kind.index() as u8 + 1;
        CURRENT.with(|c| c.set((k, Arc::as_ptr(sink))));
        seccompiler::apply_filter(prog).map_err(|source| SeccompError::Install { kind, source })
    }

    /// The first violation so far, if any.
    pub fn violation(&self) -> Option<Violation> {
        let s = self.sink.as_ref()?;
        Violation::decode(s.violation.load(Ordering::Acquire))
    }
}

/// glibc's malloc opens files lazily, once per process: `/proc/sys/vm/overcommit_memory`
/// the first time a thread's heap shrinks (`check_may_shrink_heap()`, malloc/arena.c), and
/// the CPU list where the arena limit is first derived from the CPU count (`arena_get2()`).
/// A filtered thread that gets there first makes a call outside its filter (a live
/// resolver's `openat` ended a VM so). Fixing the trim threshold (no heap is shrunk: freed
/// memory at a heap's top stays mapped for reuse) and the arena limit (glibc's own default,
/// 8 per CPU) before the first filter keeps malloc off both paths. Idempotent.
fn settle_allocator() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let arenas = libc::c_int::try_from(8 * cpus).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets malloc's tunables; both values are in range.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
            libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
        }
    });
}

thread_local! {
    /// (kind index + 1, the VM's sink) of a filtered thread; (0, null) otherwise. Const and
    /// without a destructor, so the SIGSYS handler can read it.
    static CURRENT: Cell<(u8, *const Sink)> = const { Cell::new((0, std::ptr::null())) };
    /// Keeps the sink alive while the thread lives (touched only outside the handler).
    static OWNER: std::cell::RefCell<Option<Owner>> = const { std::cell::RefCell::new(None) };
}

/// The thread's reference on its sink; unbinds the handler before releasing it.
struct Owner {
    _sink: Arc<Sink>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        // Keep the kind: a violation in the thread's last moments is still reported.
        let _ = CURRENT.try_with(|c| c.set((c.get().0, std::ptr::null())));
    }
}

fn install_handler() -> Result<(), SeccompError> {
    static DONE: OnceLock<Result<(), i32>> = OnceLock::new();
    let r = DONE.get_or_init(|| {
        // SAFETY: a zeroed sigaction is a valid starting point; the handler is an
        // `extern "C"` function with the SA_SIGINFO signature and async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigsys as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
            }
        }
        Ok(())
    });
    r.map_err(|e| SeccompError::Handler(std::io::Error::from_raw_os_error(e)))
}

/// `siginfo_t` as the kernel fills it for SIGSYS on x86_64 (`_sigsys` in
/// include/uapi/asm-generic/siginfo.h).
#[repr(C)]
#[allow(dead_code)] // the kernel's layout: every field is read through the pointer
struct SigsysInfo {
    signo: i32,
    errno: i32,
    code: i32,
    _pad: i32,
    call_addr: usize,
    syscall: i32,
    arch: u32,
}

/// `SYS_SECCOMP`: si_code of a seccomp SIGSYS (include/uapi/asm-generic/siginfo.h).
const SYS_SECCOMP: i32 = 1;

/// A `fmt::Write` into a fixed buffer, for the handler (no allocation).
struct StackBuf {
    buf: [u8; 512],
    len: usize,
}

impl std::fmt::Write for StackBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// The message the handler writes to stderr.
fn message(out: &mut impl std::fmt::Write, kind: Option<ThreadKind>, nr: i64) {
    let kind = kind.map_or(
        "(no kind of its own: it inherited its parent's filter)",
        ThreadKind::name,
    );
    let _ = match syscall_name(nr) {
        Some(name) => write!(out, "\nfaultline: seccomp: the {kind} thread made the system call `{name}` ({nr}), which its filter does not allow: it failed with EPERM and the VM is ending with exit status {STATUS_SECCOMP_VIOLATION}. This is a faultline bug: report it; `--no-seccomp` turns filtering off.\n"),
        None => write!(out, "\nfaultline: seccomp: the {kind} thread made system call number {nr}, which its filter does not allow: it failed with EPERM and the VM is ending with exit status {STATUS_SECCOMP_VIOLATION}. This is a faultline bug: report it; `--no-seccomp` turns filtering off.\n"),
    };
}

/// The SIGSYS handler (async-signal-safe: stack buffer, write(2), atomics, no lock).
extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers; SIGSYS fills
    // `_sigsys`, laid out as SigsysInfo.
    let si = unsafe { &*(info as *const SigsysInfo) };
    if si.code != SYS_SECCOMP {
        return;
    }
    let nr = i64::from(si.syscall);
    let (k, sink) = CURRENT
        .try_with(|c| c.get())
        .unwrap_or((0, std::ptr::null()));
    let kind = usize::from(k)
        .checked_sub(1)
        .and_then(|i| ThreadKind::ALL.get(i).copied());
    let mut out = StackBuf {
        buf: [0; 512],
        len: 0,
    };
    message(&mut out, kind, nr);
    // SAFETY: writes our own stack buffer to stderr; write(2) is async-signal-safe.
    unsafe { libc::write(2, out.buf.as_ptr().cast(), out.len) };
    // SAFETY: `ctx` is the ucontext_t the kernel passed; RAX holds the call's return value
    // when the handler returns.
    unsafe {
        let uc = &mut *(ctx as *mut libc::ucontext_t);
        uc.uc_mcontext.gregs[libc::REG_RAX as usize] = -i64::from(libc::EPERM);
    }
    match (kind, sink.is_null()) {
        (Some(kind), false) => {
            // SAFETY: the thread's Owner keeps the sink alive while CURRENT points to it.
            let sink = unsafe { &*sink };
            let _ = sink.violation.compare_exchange(
                0,
                Violation { kind, nr }.encode(),
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            if let Some(fd) = &sink.wake {
                let one = 1u64.to_ne_bytes();
                // SAFETY: writes 8 bytes from the stack to the sink's own eventfd.
                unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
            }
        }
        // The thread is exiting (its sink released): the message is all we can do.
        (Some(_), true) => {}
        // A thread that inherited a filter without applying one of its own (a thread
        // spawned by a filtered thread): no VM to end cleanly.
        // SAFETY: _exit is async-signal-safe.
        (None, _) => unsafe { libc::_exit(STATUS_SECCOMP_VIOLATION) },
    }
}

#[cfg(test)]
mod tests;
