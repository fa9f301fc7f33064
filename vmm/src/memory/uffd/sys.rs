//! A small safe wrapper over the userfaultfd ABI (include/uapi/linux/userfaultfd.h).
//!
//! The structs, ioctl numbers and feature bits come pre-generated from `linux-raw-sys`, so
//! building needs neither bindgen nor libclang. [`Uffd`] owns one userfaultfd: it is created
//! with the `userfaultfd(2)` syscall, or through /dev/userfaultfd's `USERFAULTFD_IOC_NEW`
//! when the syscall is refused (`vm.unprivileged_userfaultfd=0` without `CAP_SYS_PTRACE`),
//! and the API handshake (`UFFDIO_API`) is done before it is handed out.
//!
//! Events are read as raw `struct uffd_msg` bytes and decoded by [`UffdEvent::decode`],
//! which never trusts the bytes: an unknown event type becomes [`UffdEvent::Unknown`].
//!
//! Errors keep the errno values the callers act on apart: [`UffdError::Exists`] (`EEXIST`,
//! the range is already mapped) and [`UffdError::Again`] (`EAGAIN`, the mapping changed
//! under the ioctl, retry).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use linux_raw_sys::general as uapi;
use linux_raw_sys::ioctl as nr;

/// `UFFD_FEATURE_PAGEFAULT_FLAG_WP`: write-protect faults are reported.
pub const FEATURE_PAGEFAULT_FLAG_WP: u64 = uapi::UFFD_FEATURE_PAGEFAULT_FLAG_WP as u64;
/// `UFFD_FEATURE_EVENT_FORK`: a fork of the process reports a new uffd.
pub const FEATURE_EVENT_FORK: u64 = uapi::UFFD_FEATURE_EVENT_FORK as u64;
/// `UFFD_FEATURE_EVENT_REMAP`: mremap of a registered range is reported.
pub const FEATURE_EVENT_REMAP: u64 = uapi::UFFD_FEATURE_EVENT_REMAP as u64;
/// `UFFD_FEATURE_EVENT_REMOVE`: MADV_DONTNEED/MADV_REMOVE of a registered range is reported.
pub const FEATURE_EVENT_REMOVE: u64 = uapi::UFFD_FEATURE_EVENT_REMOVE as u64;
/// `UFFD_FEATURE_MISSING_HUGETLBFS`: MISSING mode on hugetlbfs.
pub const FEATURE_MISSING_HUGETLBFS: u64 = uapi::UFFD_FEATURE_MISSING_HUGETLBFS as u64;
/// `UFFD_FEATURE_MISSING_SHMEM`: MISSING mode on shmem.
pub const FEATURE_MISSING_SHMEM: u64 = uapi::UFFD_FEATURE_MISSING_SHMEM as u64;
/// `UFFD_FEATURE_EVENT_UNMAP`: munmap of a registered range is reported.
pub const FEATURE_EVENT_UNMAP: u64 = uapi::UFFD_FEATURE_EVENT_UNMAP as u64;
/// `UFFD_FEATURE_SIGBUS`: faults raise SIGBUS instead of being reported.
pub const FEATURE_SIGBUS: u64 = uapi::UFFD_FEATURE_SIGBUS as u64;
/// `UFFD_FEATURE_THREAD_ID`: page-fault events carry the faulting thread's id.
pub const FEATURE_THREAD_ID: u64 = uapi::UFFD_FEATURE_THREAD_ID as u64;
/// `UFFD_FEATURE_MINOR_HUGETLBFS`: MINOR mode on hugetlbfs.
pub const FEATURE_MINOR_HUGETLBFS: u64 = uapi::UFFD_FEATURE_MINOR_HUGETLBFS as u64;
/// `UFFD_FEATURE_MINOR_SHMEM`: MINOR mode on shmem.
pub const FEATURE_MINOR_SHMEM: u64 = uapi::UFFD_FEATURE_MINOR_SHMEM as u64;
/// `UFFD_FEATURE_EXACT_ADDRESS`: page-fault addresses are not rounded down to the page.
pub const FEATURE_EXACT_ADDRESS: u64 = uapi::UFFD_FEATURE_EXACT_ADDRESS as u64;
/// `UFFD_FEATURE_WP_HUGETLBFS_SHMEM`: WP mode on hugetlbfs and shmem.
pub const FEATURE_WP_HUGETLBFS_SHMEM: u64 = uapi::UFFD_FEATURE_WP_HUGETLBFS_SHMEM as u64;
/// `UFFD_FEATURE_WP_UNPOPULATED`: WP also covers never-populated anonymous pages.
pub const FEATURE_WP_UNPOPULATED: u64 = uapi::UFFD_FEATURE_WP_UNPOPULATED as u64;

/// `UFFDIO_REGISTER_MODE_*` bits for [`Uffd::register`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegisterModes(pub u64);

impl RegisterModes {
    /// `UFFDIO_REGISTER_MODE_MISSING`: faults on pages that are not there at all.
    pub const MISSING: Self = Self(uapi::UFFDIO_REGISTER_MODE_MISSING as u64);
    /// `UFFDIO_REGISTER_MODE_WP`: writes to write-protected pages.
    pub const WP: Self = Self(uapi::UFFDIO_REGISTER_MODE_WP as u64);
    /// `UFFDIO_REGISTER_MODE_MINOR`: pages in the page cache but not mapped here.
    pub const MINOR: Self = Self(uapi::UFFDIO_REGISTER_MODE_MINOR as u64);
}

impl std::ops::BitOr for RegisterModes {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// The ioctls a registered range supports, as `UFFDIO_REGISTER` reports them (bit
/// `_UFFDIO_*` set for each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeIoctls(pub u64);

impl RangeIoctls {
    fn has(self, bit: u32) -> bool {
        self.0 & (1u64 << bit) != 0
    }
    /// `UFFDIO_COPY` works on the range.
    #[must_use]
    pub fn copy(self) -> bool {
        self.has(uapi::_UFFDIO_COPY)
    }
    /// `UFFDIO_ZEROPAGE` works on the range (not on hugetlbfs).
    #[must_use]
    pub fn zeropage(self) -> bool {
        self.has(uapi::_UFFDIO_ZEROPAGE)
    }
    /// `UFFDIO_CONTINUE` works on the range (MINOR registrations).
    #[must_use]
    pub fn continue_(self) -> bool {
        self.has(uapi::_UFFDIO_CONTINUE)
    }
    /// `UFFDIO_WRITEPROTECT` works on the range (WP registrations).
    #[must_use]
    pub fn writeprotect(self) -> bool {
        self.has(uapi::_UFFDIO_WRITEPROTECT)
    }
    /// `UFFDIO_WAKE` works on the range.
    #[must_use]
    pub fn wake(self) -> bool {
        self.has(uapi::_UFFDIO_WAKE)
    }
}

// Mode bits linux-raw-sys does not export (include/uapi/linux/userfaultfd.h).
/// `UFFDIO_WRITEPROTECT_MODE_WP`.
const WRITEPROTECT_MODE_WP: u64 = 1 << 0;
/// `UFFDIO_CONTINUE_MODE_WP`: map the page write-protected.
const CONTINUE_MODE_WP: u64 = 1 << 1;
/// `USERFAULTFD_IOC_NEW` = `_IO(USERFAULTFD_IOC, 0x00)` (include/uapi/linux/userfaultfd.h):
/// no size and no direction bits, so just the type byte shifted into place.
const USERFAULTFD_IOC_NEW: u32 = uapi::USERFAULTFD_IOC << 8;

/// Size of one `struct uffd_msg`.
pub const MSG_SIZE: usize = std::mem::size_of::<uapi::uffd_msg>();
const _: () = assert!(MSG_SIZE == 32);
/// Offset of the event argument union in `struct uffd_msg`.
const ARG: usize = std::mem::offset_of!(uapi::uffd_msg, arg);
const _: () = assert!(ARG == 8);

/// Errors of [`Uffd`].
#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    /// Cannot create a userfaultfd: userfaultfd(2) said {syscall}, /dev/userfaultfd said {dev}; it needs root or CAP_SYS_PTRACE, sysctl vm.unprivileged_userfaultfd=1 or read-write access to /dev/userfaultfd, and a kernel with CONFIG_USERFAULTFD
    #[error("Cannot create a userfaultfd: userfaultfd(2) said {syscall}, /dev/userfaultfd said {dev}; it needs root or CAP_SYS_PTRACE, sysctl vm.unprivileged_userfaultfd=1 or read-write access to /dev/userfaultfd, and a kernel with CONFIG_USERFAULTFD")]
    Create {
        /// The syscall's error.
        syscall: io::Error,
        /// The /dev/userfaultfd route's error.
        dev: io::Error,
    },
    /// The kernel's userfaultfd lacks features {missing:#x} (it offers {available:#x}); a newer kernel is needed
    #[error("The kernel's userfaultfd lacks features {missing:#x} (it offers {available:#x}); a newer kernel is needed")]
    FeaturesUnsupported {
        /// Requested bits the kernel does not offer.
        missing: u64,
        /// Every feature the kernel offers.
        available: u64,
    },
    /// The UFFDIO_API handshake failed: {0}
    #[error("The UFFDIO_API handshake failed: {0}")]
    Api(#[source] io::Error),
    /// {op} of {len:#x} bytes at {start:#x}: the range is already mapped (EEXIST)
    #[error("{op} of {len:#x} bytes at {start:#x}: the range is already mapped (EEXIST)")]
    Exists {
        /// The ioctl, e.g. `UFFDIO_COPY`.
        op: &'static str,
        /// Start of the range.
        start: usize,
        /// Length of the range.
        len: usize,
    },
    /// {op} of {len:#x} bytes at {start:#x} did {done} bytes, then the mapping changed under it (EAGAIN); retry the rest
    #[error("{op} of {len:#x} bytes at {start:#x} did {done} bytes, then the mapping changed under it (EAGAIN); retry the rest")]
    Again {
        /// The ioctl.
        op: &'static str,
        /// Start of the range.
        start: usize,
        /// Length of the range.
        len: usize,
        /// Bytes done before the kernel gave up (0 when it does not say).
        done: usize,
    },
    /// {op} of {len:#x} bytes at {start:#x} failed: {source}
    #[error("{op} of {len:#x} bytes at {start:#x} failed: {source}")]
    Ioctl {
        /// The ioctl.
        op: &'static str,
        /// Start of the range.
        start: usize,
        /// Length of the range.
        len: usize,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// Reading events from the userfaultfd failed: {0}
    #[error("Reading events from the userfaultfd failed: {0}")]
    Read(#[source] io::Error),
    /// The event buffer holds {len} bytes, less than one uffd_msg (32); pass a larger buffer
    #[error(
        "The event buffer holds {len} bytes, less than one uffd_msg (32); pass a larger buffer"
    )]
    BufferTooSmall {
        /// The buffer's length.
        len: usize,
    },
}

impl UffdError {
    /// The errno behind the error, where there is one.
    #[must_use]
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Exists { .. } => Some(libc::EEXIST),
            Self::Again { .. } => Some(libc::EAGAIN),
            Self::Ioctl { source, .. } | Self::Api(source) | Self::Read(source) => {
                source.raw_os_error()
            }
            Self::Create { syscall, .. } => syscall.raw_os_error(),
            Self::FeaturesUnsupported { .. } | Self::BufferTooSmall { .. } => None,
        }
    }
}

/// One event read from a userfaultfd, decoded from `struct uffd_msg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UffdEvent {
    /// `UFFD_EVENT_PAGEFAULT`.
    Pagefault {
        /// Faulting address (page aligned unless `UFFD_FEATURE_EXACT_ADDRESS`).
        addr: usize,
        /// `UFFD_PAGEFAULT_FLAG_WRITE`: a write fault.
        write: bool,
        /// `UFFD_PAGEFAULT_FLAG_WP`: a write to a write-protected page.
        wp: bool,
        /// `UFFD_PAGEFAULT_FLAG_MINOR`: the page is in the page cache (MINOR mode).
        minor: bool,
        /// Faulting thread (`UFFD_FEATURE_THREAD_ID`; 0 without it).
        thread_id: u32,
    },
    /// `UFFD_EVENT_FORK`: the child's userfaultfd, installed in this process's fd table;
    /// the reader owns it and must close it.
    Fork {
        /// The new uffd.
        ufd: RawFd,
    },
    /// `UFFD_EVENT_REMAP`: mremap moved a registered range.
    Remap {
        /// Old start.
        from: usize,
        /// New start.
        to: usize,
        /// Length.
        len: usize,
    },
    /// `UFFD_EVENT_REMOVE`: MADV_DONTNEED/MADV_REMOVE dropped `start..end`.
    Remove {
        /// Start of the range.
        start: usize,
        /// End of the range (exclusive).
        end: usize,
    },
    /// `UFFD_EVENT_UNMAP`: munmap of `start..end`.
    Unmap {
        /// Start of the range.
        start: usize,
        /// End of the range (exclusive).
        end: usize,
    },
    /// An event type this code does not know.
    Unknown(u8),
}

fn u64_at(msg: &[u8; MSG_SIZE], off: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&msg[off..off + 8]);
    u64::from_ne_bytes(b)
}

fn u32_at(msg: &[u8; MSG_SIZE], off: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&msg[off..off + 4]);
    u32::from_ne_bytes(b)
}

/// Converts a kernel-supplied address to `usize` (lossless on 64-bit hosts, saturating
/// elsewhere so that a bad value is visibly out of range rather than wrapped).
fn addr(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

impl UffdEvent {
    /// Decodes one `struct uffd_msg` (`userfaultfd_read()`'s output, fs/userfaultfd.c).
    /// Any 32 bytes decode to some event: an unknown type gives [`UffdEvent::Unknown`].
    #[must_use]
    pub fn decode(msg: &[u8; MSG_SIZE]) -> Self {
        let event = msg[0];
        // Layout of the union members (include/uapi/linux/userfaultfd.h): pagefault is
        // { u64 flags; u64 address; u32 ptid }, fork { u32 ufd }, remap { u64 from, to, len },
        // remove/unmap { u64 start, end }.
        match u32::from(event) {
            uapi::UFFD_EVENT_PAGEFAULT => {
                let flags = u64_at(msg, ARG);
                Self::Pagefault {
                    addr: addr(u64_at(msg, ARG + 8)),
                    write: flags & u64::from(uapi::UFFD_PAGEFAULT_FLAG_WRITE) != 0,
                    wp: flags & u64::from(uapi::UFFD_PAGEFAULT_FLAG_WP) != 0,
                    minor: flags & u64::from(uapi::UFFD_PAGEFAULT_FLAG_MINOR) != 0,
                    thread_id: u32_at(msg, ARG + 16),
                }
            }
            uapi::UFFD_EVENT_FORK => Self::Fork {
                // An fd number is a non-negative int; anything else is reported as -1.
                ufd: RawFd::try_from(u32_at(msg, ARG)).unwrap_or(-1),
            },
            uapi::UFFD_EVENT_REMAP => Self::Remap {
                from: addr(u64_at(msg, ARG)),
                to: addr(u64_at(msg, ARG + 8)),
                len: addr(u64_at(msg, ARG + 16)),
            },
            uapi::UFFD_EVENT_REMOVE => Self::Remove {
                start: addr(u64_at(msg, ARG)),
                end: addr(u64_at(msg, ARG + 8)),
            },
            uapi::UFFD_EVENT_UNMAP => Self::Unmap {
                start: addr(u64_at(msg, ARG)),
                end: addr(u64_at(msg, ARG + 8)),
            },
            _ => Self::Unknown(event),
        }
    }

    /// Decodes every whole `uffd_msg` in `bytes` (a trailing partial message is ignored).
    pub fn decode_all(bytes: &[u8]) -> impl Iterator<Item = Self> + '_ {
        bytes.chunks_exact(MSG_SIZE).map(|c| {
            let mut m = [0u8; MSG_SIZE];
            m.copy_from_slice(c);
            Self::decode(&m)
        })
    }
}

/// One userfaultfd, after the `UFFDIO_API` handshake.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
    features: u64,
    available: u64,
    ioctls: u64,
}

/// Issues `ioctl(fd, request, arg)`.
///
/// # Safety
/// `arg` must point to the struct `request` expects, valid for the kernel to read and write.
unsafe fn ioctl<T>(fd: BorrowedFd<'_>, request: u32, arg: *mut T) -> io::Result<libc::c_int> {
    // SAFETY: the caller guarantees `arg` matches `request`; `fd` is open.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::c_ulong::from(request), arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Opens a userfaultfd without the handshake: `userfaultfd(2)`, then /dev/userfaultfd.
fn open_raw(flags: libc::c_int) -> Result<OwnedFd, UffdError> {
    // SAFETY: userfaultfd(2) takes one int of flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if fd >= 0 {
        // An fd always fits an int; the conversion cannot fail for a real answer.
        if let Ok(fd) = RawFd::try_from(fd) {
            // SAFETY: the syscall returned a new fd that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    let syscall = io::Error::last_os_error();
    open_dev(flags).map_err(|dev| UffdError::Create { syscall, dev })
}

/// Opens a userfaultfd through /dev/userfaultfd (Linux 6.1+), whose file permissions, not
/// `vm.unprivileged_userfaultfd`, decide who may handle kernel-mode faults.
fn open_dev(flags: libc::c_int) -> io::Result<OwnedFd> {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/userfaultfd")?;
    // SAFETY: USERFAULTFD_IOC_NEW takes the flags as its integer argument and returns a new
    // fd (`userfaultfd_dev_ioctl()`, fs/userfaultfd.c).
    let fd = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            libc::c_ulong::from(USERFAULTFD_IOC_NEW),
            flags,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the ioctl returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Uffd {
    /// Creates a userfaultfd that reports faults taken in user and kernel mode (no
    /// `UFFD_USER_MODE_ONLY`: KVM's GUP faults must be seen too) and enables `features`
    /// (`FEATURE_*`) with `UFFDIO_API`. `nonblocking` sets `O_NONBLOCK`, so that
    /// [`Uffd::read_events`] returns no events instead of waiting. Models nothing: wraps
    /// `userfaultfd(2)` / `new_userfaultfd()` and `userfaultfd_api()` (fs/userfaultfd.c).
    pub fn new(features: u64, nonblocking: bool) -> Result<Self, UffdError> {
        let mut flags = libc::O_CLOEXEC;
        if nonblocking {
            flags |= libc::O_NONBLOCK;
        }
        let fd = open_raw(flags)?;
        let mut api = uapi::uffdio_api {
            api: u64::from(uapi::UFFD_API),
            features,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API takes a `struct uffdio_api`, which `api` is.
        if let Err(e) = unsafe { ioctl(fd.as_fd(), nr::UFFDIO_API, &mut api) } {
            if e.raw_os_error() == Some(libc::EINVAL) && features != 0 {
                // Unknown feature bits make the handshake fail; ask a fresh fd what the
                // kernel has so the error can name the missing bits.
                if let Ok(probe) = Self::new(0, true) {
                    let missing = features & !probe.available;
                    if missing != 0 {
                        return Err(UffdError::FeaturesUnsupported {
                            missing,
                            available: probe.available,
                        });
                    }
                }
            }
            return Err(UffdError::Api(e));
        }
        Ok(Self {
            fd,
            features,
            // The kernel answers with every feature it offers (and its ioctls).
            available: api.features,
            ioctls: api.ioctls,
        })
    }

    /// The features enabled on this uffd (what [`Uffd::new`] asked for and was granted).
    #[must_use]
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Every feature the kernel offers.
    #[must_use]
    pub fn available_features(&self) -> u64 {
        self.available
    }

    /// The `_UFFDIO_*` bits of the ioctls the fd itself supports (`UFFDIO_API`'s answer).
    #[must_use]
    pub fn api_ioctls(&self) -> u64 {
        self.ioctls
    }

    /// Registers `addr..addr+len` (page aligned) for the faults in `modes`
    /// (`UFFDIO_REGISTER`, `userfaultfd_register()`); returns the ioctls the range supports.
    pub fn register(
        &self,
        addr: usize,
        len: usize,
        modes: RegisterModes,
    ) -> Result<RangeIoctls, UffdError> {
        let mut reg = uapi::uffdio_register {
            range: range(addr, len),
            mode: modes.0,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER takes a `struct uffdio_register`. Registration only
        // changes how faults in the range are handled.
        unsafe { ioctl(self.fd.as_fd(), nr::UFFDIO_REGISTER, &mut reg) }
            .map_err(|e| classify("UFFDIO_REGISTER", addr, len, 0, e))?;
        Ok(RangeIoctls(reg.ioctls))
    }

    /// Unregisters `addr..addr+len` (`UFFDIO_UNREGISTER`); blocked faulting threads are woken.
    pub fn unregister(&self, addr: usize, len: usize) -> Result<(), UffdError> {
        let mut r = range(addr, len);
        // SAFETY: UFFDIO_UNREGISTER takes a `struct uffdio_range`.
        unsafe { ioctl(self.fd.as_fd(), nr::UFFDIO_UNREGISTER, &mut r) }
            .map_err(|e| classify("UFFDIO_UNREGISTER", addr, len, 0, e))?;
        Ok(())
    }

    /// Atomically fills the missing pages at `dst..dst+src.len()` with `src` and wakes the
    /// threads waiting on them (`UFFDIO_COPY`, `mfill_atomic_copy()` in mm/userfaultfd.c);
    /// `wp` maps them write-protected. Returns the bytes copied.
    ///
    /// # Safety
    /// `dst..dst+src.len()` must lie in a range registered with this uffd whose contents the
    /// caller owns: the kernel fills the pages there, so no Rust reference may rely on them.
    pub unsafe fn copy(&self, dst: usize, src: &[u8], wp: bool) -> Result<usize, UffdError> {
        let mut c = uapi::uffdio_copy {
            dst: dst as u64,
            src: src.as_ptr() as u64,
            len: src.len() as u64,
            mode: if wp {
                u64::from(uapi::UFFDIO_COPY_MODE_WP)
            } else {
                0
            },
            copy: 0,
        };
        // SAFETY: UFFDIO_COPY takes a `struct uffdio_copy`; `src` is readable for its
        // length; the caller vouches for `dst`.
        let r = unsafe { ioctl(self.fd.as_fd(), nr::UFFDIO_COPY, &mut c) };
        let done = usize::try_from(c.copy).unwrap_or(0);
        r.map_err(|e| classify("UFFDIO_COPY", dst, src.len(), done, e))?;
        Ok(done)
    }

    /// Maps the zero page at the missing pages of `dst..dst+len` and wakes the waiters
    /// (`UFFDIO_ZEROPAGE`, `mfill_atomic_zeropage()`); not supported on hugetlbfs.
    ///
    /// # Safety
    /// As for [`Uffd::copy`].
    pub unsafe fn zeropage(&self, dst: usize, len: usize) -> Result<usize, UffdError> {
        // SAFETY: the caller's guarantee is passed on unchanged.
        unsafe { self.zeropage_mode(dst, len, false) }
    }

    /// [`Uffd::zeropage`] without waking the waiters (`UFFDIO_ZEROPAGE_MODE_DONTWAKE`):
    /// the caller write-protects the page first, then wakes them with [`Uffd::wake`].
    ///
    /// # Safety
    /// As for [`Uffd::copy`].
    pub unsafe fn zeropage_dontwake(&self, dst: usize, len: usize) -> Result<usize, UffdError> {
        // SAFETY: the caller's guarantee is passed on unchanged.
        unsafe { self.zeropage_mode(dst, len, true) }
    }

    unsafe fn zeropage_mode(
        &self,
        dst: usize,
        len: usize,
        dontwake: bool,
    ) -> Result<usize, UffdError> {
        let mut z = uapi::uffdio_zeropage {
            range: range(dst, len),
            mode: if dontwake {
                u64::from(uapi::UFFDIO_ZEROPAGE_MODE_DONTWAKE)
            } else {
                0
            },
            zeropage: 0,
        };
        // SAFETY: UFFDIO_ZEROPAGE takes a `struct uffdio_zeropage`; the caller vouches for
        // the range.
        let r = unsafe { ioctl(self.fd.as_fd(), nr::UFFDIO_ZEROPAGE, &mut z) };
        let done = usize::try_from(z.zeropage).unwrap_or(0);
        r.map_err(|e| classify("UFFDIO_ZEROPAGE", dst, len, done, e))?;
        Ok(done)
    }

    /// Maps the page-cache pages already backing `addr..addr+len` (MINOR faults) and wakes
    /// the waiters (`UFFDIO_CONTINUE`, `mfill_atomic_continue()`); returns the bytes mapped.
    ///
    /// # Safety
    /// As for [`Uffd::copy`]: the range's contents become the page cache's.
    pub unsafe fn continue_(&self, addr: usize, len: usize) -> Result<usize, UffdError> {
        self.continue_mode(addr, len, false)
    }

    /// [`Uffd::continue_`], mapping the pages write-protected (`UFFDIO_CONTINUE_MODE_WP`).
    ///
    /// # Safety
    /// As for [`Uffd::copy`].
    pub unsafe fn continue_wp(&self, addr: usize, len: usize) -> Result<usize, UffdError> {
        self.continue_mode(addr, len, true)
    }

    fn continue_mode(&self, addr: usize, len: usize, wp: bool) -> Result<usize, UffdError> {
        let mut c = uapi::uffdio_continue {
            range: range(addr, len),
            mode: if wp { CONTINUE_MODE_WP } else { 0 },
            mapped: 0,
        };
        // SAFETY: UFFDIO_CONTINUE takes a `struct uffdio_continue`; the public callers are
        // unsafe fns whose callers vouch for the range.
        let r = unsafe { ioctl(self.fd.as_fd(), nr::UFFDIO_CONTINUE, &mut c) };
        let done = usize::try_from(c.mapped).unwrap_or(0);
        r.map_err(|e| classify("UFFDIO_CONTINUE", addr, len, done, e))?;
        Ok(done)
    }

    /// Write-protects (`on`) or unprotects `addr..addr+len` (`UFFDIO_WRITEPROTECT`,
    /// `mwriteprotect_range()`); unprotecting wakes the threads waiting on the range.
    pub fn writeprotect(&self, addr: usize, len: usize, on: bool) -> Result<(), UffdError> {
        let mut w = uapi::uffdio_writeprotect {
            range: range(addr, len),
            mode: if on { WRITEPROTECT_MODE_WP } else { 0 },
        };
        // SAFETY: UFFDIO_WRITEPROTECT takes a `struct uffdio_writeprotect`; it changes only
        // the protection of pages, never their contents.
        unsafe { ioctl(self.fd.as_fd(), nr::UFFDIO_WRITEPROTECT, &mut w) }
            .map_err(|e| classify("UFFDIO_WRITEPROTECT", addr, len, 0, e))?;
        Ok(())
    }

    /// Wakes the threads waiting on faults in `addr..addr+len` (`UFFDIO_WAKE`), e.g. after
    /// another reader resolved the range.
    pub fn wake(&self, addr: usize, len: usize) -> Result<(), UffdError> {
        let mut r = range(addr, len);
        // SAFETY: UFFDIO_WAKE takes a `struct uffdio_range` and only wakes waiters.
        unsafe { ioctl(self.fd.as_fd(), nr::UFFDIO_WAKE, &mut r) }
            .map_err(|e| classify("UFFDIO_WAKE", addr, len, 0, e))?;
        Ok(())
    }

    /// Reads as many events as fit in `buf` (whole 32-byte `uffd_msg`s). A non-blocking
    /// uffd with nothing pending gives an empty list; a blocking one waits for one event.
    /// `EINTR` is retried.
    pub fn read_events(&self, buf: &mut [u8]) -> Result<Vec<UffdEvent>, UffdError> {
        let want = buf.len() / MSG_SIZE * MSG_SIZE;
        if want == 0 {
            return Err(UffdError::BufferTooSmall { len: buf.len() });
        }
        loop {
            // SAFETY: `buf` is writable for `want` bytes.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), want) };
            if n >= 0 {
                let n = usize::try_from(n).unwrap_or(0).min(want);
                return Ok(UffdEvent::decode_all(&buf[..n]).collect());
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => return Ok(Vec::new()),
                Some(libc::EINTR) => continue,
                _ => return Err(UffdError::Read(e)),
            }
        }
    }
}

impl AsRawFd for Uffd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Uffd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn range(start: usize, len: usize) -> uapi::uffdio_range {
    uapi::uffdio_range {
        start: start as u64,
        len: len as u64,
    }
}

fn classify(op: &'static str, start: usize, len: usize, done: usize, e: io::Error) -> UffdError {
    match e.raw_os_error() {
        Some(libc::EEXIST) => UffdError::Exists { op, start, len },
        Some(libc::EAGAIN) => UffdError::Again {
            op,
            start,
            len,
            done,
        },
        _ => UffdError::Ioctl {
            op,
            start,
            len,
            source: e,
        },
    }
}

#[cfg(test)]
mod tests {
    //! The decoder on hand-built `uffd_msg` bytes, and the wrapper on a real userfaultfd
    //! (anonymous memory, no KVM): register, a fault, copy, EEXIST, zeropage, unregister.

    use super::*;

    fn msg(event: u32, words: [u64; 3]) -> [u8; MSG_SIZE] {
        let mut m = [0u8; MSG_SIZE];
        m[0] = u8::try_from(event).expect("event types are one byte");
        for (i, w) in words.iter().enumerate() {
            m[8 + 8 * i..16 + 8 * i].copy_from_slice(&w.to_ne_bytes());
        }
        m
    }

    #[test]
    fn decodes_a_pagefault_with_its_flags_and_thread_id() {
        let flags = u64::from(uapi::UFFD_PAGEFAULT_FLAG_WRITE | uapi::UFFD_PAGEFAULT_FLAG_MINOR);
        let ev = UffdEvent::decode(&msg(
            uapi::UFFD_EVENT_PAGEFAULT,
            [flags, 0x7f00_1234_5000, 4321],
        ));
        assert_eq!(
            ev,
            UffdEvent::Pagefault {
                addr: 0x7f00_1234_5000,
                write: true,
                wp: false,
                minor: true,
                thread_id: 4321
            }
        );
        let ev = UffdEvent::decode(&msg(
            uapi::UFFD_EVENT_PAGEFAULT,
            [u64::from(uapi::UFFD_PAGEFAULT_FLAG_WP), 0x1000, 0],
        ));
        assert!(matches!(
            ev,
            UffdEvent::Pagefault {
                write: false,
                wp: true,
                minor: false,
                ..
            }
        ));
    }

    #[test]
    fn decodes_fork_remap_remove_unmap() {
        assert_eq!(
            UffdEvent::decode(&msg(uapi::UFFD_EVENT_FORK, [17, 0, 0])),
            UffdEvent::Fork { ufd: 17 }
        );
        assert_eq!(
            UffdEvent::decode(&msg(uapi::UFFD_EVENT_REMAP, [0x1000, 0x9000, 0x2000])),
            UffdEvent::Remap {
                from: 0x1000,
                to: 0x9000,
                len: 0x2000
            }
        );
        assert_eq!(
            UffdEvent::decode(&msg(uapi::UFFD_EVENT_REMOVE, [0x1000, 0x3000, 0])),
            UffdEvent::Remove {
                start: 0x1000,
                end: 0x3000
            }
        );
        assert_eq!(
            UffdEvent::decode(&msg(uapi::UFFD_EVENT_UNMAP, [0x4000, 0x5000, 0])),
            UffdEvent::Unmap {
                start: 0x4000,
                end: 0x5000
            }
        );
    }

    #[test]
    fn any_bytes_decode_without_panicking() {
        for event in 0..=u8::MAX {
            let ev = UffdEvent::decode(&msg(u32::from(event), [u64::MAX, u64::MAX, u64::MAX]));
            if !(18..=22).contains(&event) {
                assert_eq!(ev, UffdEvent::Unknown(event));
            }
        }
        // A fork whose fd does not fit an int is reported as -1, not wrapped.
        let mut m = msg(uapi::UFFD_EVENT_FORK, [0, 0, 0]);
        m[8..12].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(UffdEvent::decode(&m), UffdEvent::Fork { ufd: -1 });
        // Whole messages only; a trailing partial one is dropped.
        let mut bytes = msg(uapi::UFFD_EVENT_UNMAP, [1, 2, 0]).to_vec();
        bytes.extend_from_slice(&[18u8; 31]);
        assert_eq!(UffdEvent::decode_all(&bytes).count(), 1);
    }

    #[test]
    fn real_uffd_fault_copy_eexist_zeropage() {
        // Real userfaultfds need root, CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1.
        crate::skip_unless!(Uffd::new(0, true).map(drop));
        let uffd = Uffd::new(FEATURE_THREAD_ID, true).expect("create a userfaultfd");
        assert_eq!(uffd.features(), FEATURE_THREAD_ID);
        assert_ne!(uffd.available_features() & FEATURE_THREAD_ID, 0);
        let m = crate::memory::uffd::tests::Mapping::anon(2 * 4096);
        let ioctls = uffd
            .register(m.addr, m.len, RegisterModes::MISSING)
            .expect("register");
        assert!(ioctls.copy() && ioctls.zeropage() && ioctls.wake());
        let mut buf = [0u8; 4 * MSG_SIZE];
        assert!(uffd.read_events(&mut buf).unwrap().is_empty());
        let page = m.addr;
        let toucher = std::thread::spawn(move || {
            // SAFETY: inside the live mapping; the read blocks until the page is copied in.
            unsafe { std::ptr::read_volatile(page as *const u64) }
        });
        let ev = loop {
            if let Some(ev) = uffd.read_events(&mut buf).unwrap().into_iter().next() {
                break ev;
            }
            std::thread::yield_now();
        };
        let UffdEvent::Pagefault {
            addr,
            write,
            thread_id,
            ..
        } = ev
        else {
            panic!("expected a page fault, got {ev:?}");
        };
        assert_eq!(addr, page);
        assert!(!write);
        assert_ne!(thread_id, 0);
        let src = [0x5au8; 4096];
        // SAFETY: the page is in our registered mapping; nothing references it.
        assert_eq!(unsafe { uffd.copy(page, &src, false) }.unwrap(), 4096);
        assert_eq!(toucher.join().unwrap(), 0x5a5a_5a5a_5a5a_5a5a);
        // SAFETY: as above.
        let e = unsafe { uffd.copy(page, &src, false) }.unwrap_err();
        assert!(matches!(e, UffdError::Exists { .. }), "{e}");
        assert_eq!(e.errno(), Some(libc::EEXIST));
        // SAFETY: the second page is registered and untouched.
        assert_eq!(unsafe { uffd.zeropage(page + 4096, 4096) }.unwrap(), 4096);
        uffd.unregister(m.addr, m.len).expect("unregister");
        // SAFETY: the page is mapped now.
        let second = unsafe { std::ptr::read_volatile((page + 4096) as *const u64) };
        assert_eq!(second, 0);
    }

    #[test]
    fn misuse_gets_named_errors() {
        // Real userfaultfds need root, CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1.
        crate::skip_unless!(Uffd::new(0, true).map(drop));
        let uffd = Uffd::new(0, true).unwrap();
        let e = uffd
            .register(0x1001, 4096, RegisterModes::MISSING)
            .unwrap_err();
        assert!(
            matches!(
                e,
                UffdError::Ioctl {
                    op: "UFFDIO_REGISTER",
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(e.errno(), Some(libc::EINVAL));
        let e = uffd.read_events(&mut [0u8; 16]).unwrap_err();
        assert!(matches!(e, UffdError::BufferTooSmall { len: 16 }));
        let e = Uffd::new(1 << 62, true).unwrap_err();
        assert!(
            matches!(e, UffdError::FeaturesUnsupported { missing, .. } if missing == 1 << 62),
            "{e}"
        );
    }

    #[test]
    fn dev_userfaultfd_route_gives_a_working_uffd() {
        let fd = match open_dev(libc::O_CLOEXEC | libc::O_NONBLOCK) {
            Ok(fd) => fd,
            Err(e) => {
                crate::testing::skip(
                    "memory::uffd::sys::tests::dev_userfaultfd_route_gives_a_working_uffd",
                    &format!("/dev/userfaultfd cannot be used here ({e}); it needs Linux 6.1+ and read-write access to it"),
                );
                return;
            }
        };
        let mut api = uapi::uffdio_api {
            api: u64::from(uapi::UFFD_API),
            features: 0,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API takes a `struct uffdio_api`.
        unsafe { ioctl(fd.as_fd(), nr::UFFDIO_API, &mut api) }.expect("UFFDIO_API");
        assert_ne!(api.ioctls & (1 << uapi::_UFFDIO_REGISTER), 0);
    }
}
