//! The real address space a scenario runs in: one host mapping per `[[vma]]`, made in this
//! process with the kind the scenario names, and the host operations of its steps applied to
//! those mappings.
//!
//! Model addresses are translated to real ones by a fixed offset per VMA: every ordinary VMA
//! (anon, THP, shmem, memfd, hugetlb, file) moves by one offset that is a multiple of 1 GiB,
//! so 2M and 1G alignment (and with it gfn/hva congruence) is kept; a `vvar` VMA maps onto
//! this process's real `[vvar]` pages, a VM_PFNMAP|VM_IO mapping every x86 Linux host has,
//! wherever the kernel put it. Reports use model addresses.
//!
//! The space is built inside a PROT_NONE reservation, which is released around the VMAs once
//! they are mapped, so gaps are really unmapped, as in the model.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

const GIB: u64 = 1 << 30;
const PAGE: u64 = 4096;

/// What a real VMA is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RealKind {
    /// Anonymous memory: `MAP_PRIVATE|MAP_ANONYMOUS` (or `MAP_SHARED|MAP_ANONYMOUS`, which the
    /// kernel backs with shmem).
    Anon,
    /// A memfd (shmem) mapped with the VMA's sharing.
    Memfd,
    /// A hugetlbfs memfd (`MFD_HUGETLB`) with 2M or 1G pages.
    Hugetlb {
        /// Huge page size in bytes.
        page_size: u64,
    },
    /// A regular file in the temporary directory, `size` bytes of zeros.
    File,
    /// This process's `[vvar]` pages (VM_PFNMAP|VM_IO), not created but found.
    Vvar,
}

/// One VMA to create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RealVmaSpec {
    /// Model start address.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
    /// Kind.
    pub kind: RealKind,
    /// `PROT_*` bits.
    pub prot: i32,
    /// `MAP_SHARED` instead of `MAP_PRIVATE`.
    pub shared: bool,
    /// `MADV_HUGEPAGE` after mapping.
    pub thp: bool,
}

/// Errors building the space or running a host operation on it.
#[derive(Debug, thiserror::Error)]
pub enum SpaceError {
    /// A VMA's start or size is not page aligned, or it overlaps another.
    #[error("VMA at {start:#x}+{size:#x} is not usable: {reason}")]
    BadVma {
        /// Model start.
        start: u64,
        /// Size.
        size: u64,
        /// Why.
        reason: String,
    },
    /// A system call failed.
    #[error("{call} failed: {source}")]
    Sys {
        /// The call, with its arguments in model addresses.
        call: String,
        /// errno.
        #[source]
        source: std::io::Error,
    },
    /// Too few free huge pages.
    #[error("{needed} free {size_kib} kB huge pages are needed but {free} are free; reserve them with: echo {needed} > /sys/kernel/mm/hugepages/hugepages-{size_kib}kB/nr_hugepages")]
    HugePages {
        /// Page size in KiB.
        size_kib: u64,
        /// Pages needed.
        needed: u64,
        /// Pages free.
        free: u64,
    },
    /// The host has no `[vvar]` mapping.
    #[error("This process has no [vvar] mapping (not an x86 Linux host?)")]
    NoVvar,
    /// A model address is not inside any VMA the space made.
    #[error("Address {0:#x} is outside every VMA of the scenario")]
    Outside(u64),
    /// An operation that needs a file-backed VMA was given another.
    #[error("{0}")]
    Unsupported(String),
}

/// A byte count for a libc length argument (this crate targets 64-bit hosts).
fn bytes(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn sys(call: impl Into<String>) -> SpaceError {
    SpaceError::Sys {
        call: call.into(),
        source: std::io::Error::last_os_error(),
    }
}

/// A real VMA the space made.
#[derive(Debug)]
pub struct RealVma {
    /// What was asked for.
    pub spec: RealVmaSpec,
    /// Real start address (model start + offset).
    pub real_start: u64,
    /// The file behind a memfd, hugetlb or file VMA.
    file: Option<File>,
}

impl RealVma {
    /// Model -> real offset of this VMA (real = model + offset, wrapping).
    pub fn offset(&self) -> u64 {
        self.real_start.wrapping_sub(self.spec.start)
    }
    fn contains(&self, model: u64) -> bool {
        model >= self.spec.start && model - self.spec.start < self.spec.size
    }
}

/// The scenario's host address space, for real.
#[derive(Debug)]
pub struct RealSpace {
    vmas: Vec<RealVma>,
    /// The offset of ordinary VMAs.
    offset: u64,
    /// Forked children holding the pages, released on drop.
    children: Vec<ForkChild>,
    /// Real ranges kept reserved (PROT_NONE) for later steps, e.g. mremap targets.
    reserved: Vec<(u64, u64)>,
}

/// Where this process's `[vvar]` is (`/proc/self/smaps`).
pub fn find_vvar() -> Option<(u64, u64)> {
    let smaps = super::observe::pagemap::Smaps::read().ok()?;
    smaps.named("[vvar]").map(|v| (v.start, v.end))
}

/// Free huge pages of `size` bytes, if the host has that pool.
pub fn free_huge_pages(size: u64) -> Option<u64> {
    super::observe::host::pool(&format!("{}kB", size / 1024))
        .value
        .map(|p| p.free)
}

impl RealSpace {
    /// Maps every VMA of `specs` for real, and keeps the model ranges `reserve` (targets of
    /// later steps such as mremap) reserved as PROT_NONE, so that those steps can never land
    /// on memory of the VMM's own.
    pub fn new(specs: &[RealVmaSpec], reserve: &[(u64, u64)]) -> Result<RealSpace, SpaceError> {
        for (i, s) in specs.iter().enumerate() {
            let align = match s.kind {
                RealKind::Hugetlb { page_size } => page_size,
                _ => PAGE,
            };
            if s.size == 0 || s.start % align != 0 || s.size % align != 0 {
                return Err(SpaceError::BadVma {
                    start: s.start,
                    size: s.size,
                    reason: format!("start and size must be non-zero multiples of {align:#x}"),
                });
            }
            if let Some(o) = specs[..i]
                .iter()
                .find(|o| s.start < o.start + o.size && o.start < s.start + s.size)
            {
                return Err(SpaceError::BadVma {
                    start: s.start,
                    size: s.size,
                    reason: format!("overlaps the VMA at {:#x}+{:#x}", o.start, o.size),
                });
            }
        }
        // Huge pages are checked up front, so a short pool gives the fix, not a SIGBUS.
        for page_size in [2 << 20, GIB] {
            let needed: u64 = specs
                .iter()
                .filter(|s| s.kind == RealKind::Hugetlb { page_size })
                .map(|s| s.size / page_size)
                .sum();
            if needed > 0 {
                let free = free_huge_pages(page_size).unwrap_or(0);
                if free < needed {
                    return Err(SpaceError::HugePages {
                        size_kib: page_size / 1024,
                        needed,
                        free,
                    });
                }
            }
        }
        let ordinary: Vec<&RealVmaSpec> =
            specs.iter().filter(|s| s.kind != RealKind::Vvar).collect();
        let mut space = RealSpace {
            vmas: Vec::new(),
            offset: 0,
            children: Vec::new(),
            reserved: Vec::new(),
        };
        if let (Some(lo), Some(hi)) = (
            ordinary
                .iter()
                .map(|s| s.start)
                .chain(reserve.iter().map(|r| r.0))
                .min(),
            ordinary
                .iter()
                .map(|s| s.start + s.size)
                .chain(reserve.iter().map(|r| r.0 + r.1))
                .max(),
        ) {
            let lo_aligned = lo & !(GIB - 1);
            let span = hi - lo_aligned;
            let base = reserve_aligned(span, GIB)?;
            space.offset = base.wrapping_sub(lo_aligned);
            let made = ordinary
                .iter()
                .map(|s| map_one(s, s.start.wrapping_add(space.offset)))
                .collect::<Result<Vec<_>, _>>();
            // Release the parts of the reservation no VMA took (a failed map releases all).
            space.reserved = reserve
                .iter()
                .map(|&(s, len)| {
                    let a = s & !(PAGE - 1);
                    let e = (s + len + PAGE - 1) & !(PAGE - 1);
                    (a.wrapping_add(space.offset), e - a)
                })
                .collect();
            let mut taken: Vec<(u64, u64)> = match &made {
                Ok(v) => v
                    .iter()
                    .map(|v| (v.real_start, v.spec.size))
                    .chain(space.reserved.iter().copied())
                    .collect(),
                Err(_) => Vec::new(),
            };
            taken.sort_unstable();
            let mut cursor = base;
            for (start, size) in taken.into_iter().chain([(base + span, 0)]) {
                if start > cursor {
                    // SAFETY: [cursor, start) is part of our own PROT_NONE reservation that no
                    // VMA took; nothing in this process refers to it.
                    unsafe { libc::munmap(cursor as *mut libc::c_void, bytes(start - cursor)) };
                }
                cursor = cursor.max(start + size);
            }
            space.vmas = made?;
        }
        for s in specs.iter().filter(|s| s.kind == RealKind::Vvar) {
            let (start, end) = find_vvar().ok_or(SpaceError::NoVvar)?;
            if s.size > end - start {
                return Err(SpaceError::BadVma {
                    start: s.start,
                    size: s.size,
                    reason: format!("[vvar] here is only {:#x} bytes", end - start),
                });
            }
            space.vmas.push(RealVma {
                spec: *s,
                real_start: start,
                file: None,
            });
        }
        Ok(space)
    }

    /// The VMAs made, in the order given.
    pub fn vmas(&self) -> &[RealVma] {
        &self.vmas
    }

    /// The offset of ordinary (non-`[vvar]`) VMAs.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The real address of model address `model`.
    pub fn real(&self, model: u64) -> Result<u64, SpaceError> {
        self.vmas
            .iter()
            .find(|v| v.contains(model))
            .map(|v| model.wrapping_add(v.offset()))
            .ok_or(SpaceError::Outside(model))
    }

    /// The real address of model address `model`, also for addresses the scenario unmapped or
    /// never mapped (the ordinary offset applies).
    pub fn real_any(&self, model: u64) -> u64 {
        self.real(model)
            .unwrap_or_else(|_| model.wrapping_add(self.offset))
    }

    /// The model address of real address `real`, when it lies in a VMA of the space (or in the
    /// ordinary window).
    pub fn model(&self, real: u64) -> Option<u64> {
        self.vmas
            .iter()
            .find(|v| real >= v.real_start && real - v.real_start < v.spec.size)
            .map(|v| real.wrapping_sub(v.offset()))
    }

    /// The model ranges of real range `[start, end)`: its overlap with each VMA of the space,
    /// in model addresses, contiguous pieces joined, in order. The kernel may merge a VMA of
    /// the scenario with an adjacent mapping of this process that the scenario knows nothing
    /// of (a malloc arena, a thread stack placed next to it: `vma_merge_new_range()`,
    /// mm/vma.c), and then invalidates the merged VMA whole (a fork's
    /// `copy_page_range()`); only the part inside the scenario's VMAs is the scenario's.
    pub fn model_ranges(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut pieces: Vec<(u64, u64)> = self
            .vmas
            .iter()
            .filter_map(|v| {
                let (s, e) = (start.max(v.real_start), end.min(v.real_start + v.spec.size));
                (s < e).then(|| (s.wrapping_sub(v.offset()), e.wrapping_sub(v.offset())))
            })
            .collect();
        pieces.sort_unstable();
        let mut joined: Vec<(u64, u64)> = Vec::with_capacity(pieces.len());
        for (s, e) in pieces {
            match joined.last_mut() {
                Some(last) if last.1 == s => last.1 = e,
                _ => joined.push((s, e)),
            }
        }
        joined
    }

    /// The model range `[lo, hi)` covered by the space's ordinary VMAs, translated to real.
    pub fn real_window(&self) -> Option<(u64, u64)> {
        let lo = self.vmas.iter().map(|v| v.real_start).min()?;
        let hi = self.vmas.iter().map(|v| v.real_start + v.spec.size).max()?;
        Some((lo, hi))
    }

    /// `munmap()` of a model range.
    pub fn munmap(&self, start: u64, size: u64) -> Result<(), SpaceError> {
        let r = self.real_any(start);
        // SAFETY: the range is inside the scenario's own mappings (or already unmapped); no Rust
        // reference points into guest RAM, and KVM copes with memory vanishing under a memslot.
        if unsafe { libc::munmap(r as *mut libc::c_void, bytes(size)) } != 0 {
            return Err(sys(format!("munmap({start:#x}, {size:#x})")));
        }
        Ok(())
    }

    /// `mprotect()` of a model range.
    pub fn mprotect(&self, start: u64, size: u64, prot: i32) -> Result<(), SpaceError> {
        let r = self.real_any(start);
        // SAFETY: as for munmap: guest RAM only, never referenced from Rust.
        if unsafe { libc::mprotect(r as *mut libc::c_void, bytes(size), prot) } != 0 {
            return Err(sys(format!("mprotect({start:#x}, {size:#x}, {prot:#x})")));
        }
        Ok(())
    }

    /// `madvise()` of a model range with a raw `MADV_*` value.
    pub fn madvise(
        &self,
        start: u64,
        size: u64,
        advice: i32,
        name: &str,
    ) -> Result<(), SpaceError> {
        let r = self.real_any(start);
        // SAFETY: as for munmap: guest RAM only, never referenced from Rust.
        if unsafe { libc::madvise(r as *mut libc::c_void, bytes(size), advice) } != 0 {
            return Err(sys(format!("madvise({start:#x}, {size:#x}, {name})")));
        }
        Ok(())
    }

    /// `mremap(old, size, size, MREMAP_MAYMOVE|MREMAP_FIXED, new)` in model addresses; the
    /// VMA record follows the move.
    pub fn mremap(&mut self, old: u64, size: u64, new: u64) -> Result<(), SpaceError> {
        let r_old = self.real(old)?;
        let r_new = new.wrapping_add(self.offset);
        let inside = |(s, len): (u64, u64)| r_new >= s && r_new + size <= s + len;
        if !self.reserved.iter().copied().any(inside)
            && !self
                .vmas
                .iter()
                .map(|v| (v.real_start, v.spec.size))
                .any(inside)
        {
            return Err(SpaceError::Unsupported(format!(
                "mremap target {new:#x}+{size:#x} is outside the scenario's address space (not reserved at set-up)"
            )));
        }
        // SAFETY: moves part of the scenario's own mapping to a target inside its window;
        // MREMAP_FIXED replaces what was there, which is scenario memory or nothing.
        let p = unsafe {
            libc::mremap(
                r_old as *mut libc::c_void,
                bytes(size),
                bytes(size),
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                r_new as *mut libc::c_void,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(sys(format!("mremap({old:#x}, {size:#x}, {new:#x})")));
        }
        // Record the moved part as a VMA of its own (same kind, at the new place).
        let src = self
            .vmas
            .iter()
            .find(|v| v.contains(old))
            .map(|v| v.spec)
            .ok_or(SpaceError::Outside(old))?;
        self.vmas.push(RealVma {
            spec: RealVmaSpec {
                start: new,
                size,
                ..src
            },
            real_start: r_new,
            file: None,
        });
        Ok(())
    }

    /// `fallocate(FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE)` of the file behind a model range.
    pub fn punch_hole(&self, start: u64, size: u64) -> Result<(), SpaceError> {
        let v = self
            .vmas
            .iter()
            .find(|v| v.contains(start))
            .ok_or(SpaceError::Outside(start))?;
        let file = v.file.as_ref().ok_or_else(|| {
            SpaceError::Unsupported(format!(
                "fallocate punch-hole at {start:#x}: the VMA is not file-backed (use kind = \"memfd\", \"shmem\" or \"hugetlb\")"
            ))
        })?;
        let off = (start - v.spec.start) as libc::off_t;
        // SAFETY: plain syscall on a file we own.
        let rc = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                size as libc::off_t,
            )
        };
        if rc != 0 {
            return Err(sys(format!("fallocate(punch-hole, {start:#x}, {size:#x})")));
        }
        Ok(())
    }

    /// `fork()`: a child that keeps a copy of the address space (COW) until the space is
    /// dropped or [`RealSpace::release_children`] is called.
    pub fn fork(&mut self) -> Result<(), SpaceError> {
        self.children.push(ForkChild::spawn()?);
        Ok(())
    }

    /// Lets every forked child exit and reaps it.
    pub fn release_children(&mut self) {
        self.children.clear();
    }

    /// Clears the soft-dirty bits of this process (`echo 4 > /proc/self/clear_refs`).
    pub fn clear_soft_dirty(&self) -> Result<(), SpaceError> {
        std::fs::write("/proc/self/clear_refs", "4").map_err(|source| SpaceError::Sys {
            call: "write 4 to /proc/self/clear_refs".into(),
            source,
        })
    }

    /// Reads 8 bytes of real memory at model address `model` (a host-side read: it faults the
    /// page in like any access of the VMM would).
    pub fn read_u64(&self, model: u64) -> Result<u64, SpaceError> {
        let r = self.real(model)?;
        let mut buf = [0u8; 8];
        read_process_memory(r, &mut buf).map_err(|source| SpaceError::Sys {
            call: format!("read of {model:#x}"),
            source,
        })?;
        Ok(u64::from_ne_bytes(buf))
    }
}

impl Drop for RealSpace {
    fn drop(&mut self) {
        self.children.clear();
        for &(s, len) in &self.reserved {
            // SAFETY: our own reservation (or what a step moved into it).
            unsafe { libc::munmap(s as *mut libc::c_void, bytes(len)) };
        }
        for v in &self.vmas {
            if v.spec.kind != RealKind::Vvar {
                // SAFETY: our own mappings; the VM using them is gone before the space is
                // dropped (the executor drops the Vmm first).
                unsafe { libc::munmap(v.real_start as *mut libc::c_void, bytes(v.spec.size)) };
            }
        }
    }
}

/// Reads memory through /proc/self/mem, which returns EIO instead of raising SIGSEGV when
/// the range is unmapped or PROT_NONE.
fn read_process_memory(addr: u64, buf: &mut [u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = File::open("/proc/self/mem")?;
    f.read_exact_at(buf, addr)
}

/// Reserves `size` bytes of PROT_NONE address space aligned to `align`.
fn reserve_aligned(size: u64, align: u64) -> Result<u64, SpaceError> {
    let len = bytes(size + align);
    // SAFETY: a fresh anonymous PROT_NONE reservation at an address of the kernel's choosing.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(sys(format!("mmap reservation of {len:#x} bytes")));
    }
    let raw = p as u64;
    let base = (raw + align - 1) & !(align - 1);
    // SAFETY: trimming the unaligned head and the tail of our own fresh reservation.
    unsafe {
        if base > raw {
            libc::munmap(raw as *mut libc::c_void, bytes(base - raw));
        }
        let end = raw + len as u64;
        if end > base + size {
            libc::munmap((base + size) as *mut libc::c_void, bytes(end - base - size));
        }
    }
    Ok(base)
}

fn memfd(name: &std::ffi::CStr, flags: libc::c_uint, size: u64) -> Result<File, SpaceError> {
    // SAFETY: memfd_create with a valid C string; the fd is owned by the File below.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags | libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(sys(format!("memfd_create({name:?})")));
    }
    // SAFETY: fd was just created and is not owned elsewhere.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(|source| SpaceError::Sys {
        call: format!("ftruncate of {name:?} to {size:#x}"),
        source,
    })?;
    Ok(file)
}

/// Maps `s` at real address `at` (inside the reservation) with MAP_FIXED.
fn map_one(s: &RealVmaSpec, at: u64) -> Result<RealVma, SpaceError> {
    let share = if s.shared {
        libc::MAP_SHARED
    } else {
        libc::MAP_PRIVATE
    };
    let (file, flags) = match s.kind {
        RealKind::Anon => (None, share | libc::MAP_ANONYMOUS),
        RealKind::Memfd => (Some(memfd(c"faultline-check", 0, s.size)?), share),
        RealKind::Hugetlb { page_size } => {
            let log2 = page_size.trailing_zeros();
            let f = memfd(
                c"faultline-check-hugetlb",
                libc::MFD_HUGETLB | (log2 << libc::MFD_HUGE_SHIFT),
                s.size,
            )?;
            (Some(f), share)
        }
        RealKind::File => {
            let f = tempfile_of(s.size)?;
            (Some(f), share)
        }
        RealKind::Vvar => unreachable!("vvar is found, not mapped"),
    };
    let fd = file.as_ref().map_or(-1, |f| f.as_raw_fd());
    // SAFETY: MAP_FIXED inside our own PROT_NONE reservation: it replaces nothing else.
    let p = unsafe {
        libc::mmap(
            at as *mut libc::c_void,
            bytes(s.size),
            s.prot,
            flags | libc::MAP_FIXED,
            fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(sys(format!(
            "mmap of the VMA at {:#x}+{:#x}",
            s.start, s.size
        )));
    }
    let advice = if s.thp {
        Some((libc::MADV_HUGEPAGE, "MADV_HUGEPAGE"))
    } else if s.kind == RealKind::Anon && !s.shared {
        // The model's anon VMA without `thp` never gets a THP; on a host in THP "always" mode
        // only MADV_NOHUGEPAGE makes that true.
        Some((libc::MADV_NOHUGEPAGE, "MADV_NOHUGEPAGE"))
    } else {
        None
    };
    if let Some((a, name)) = advice {
        // SAFETY: advice on the mapping just made.
        if unsafe { libc::madvise(p, bytes(s.size), a) } != 0 {
            return Err(sys(format!(
                "madvise({:#x}, {:#x}, {name})",
                s.start, s.size
            )));
        }
    }
    Ok(RealVma {
        spec: *s,
        real_start: at,
        file,
    })
}

/// An unlinked temporary file of `size` zero bytes.
fn tempfile_of(size: u64) -> Result<File, SpaceError> {
    let dir = std::env::temp_dir();
    let path = dir.join(format!(
        "faultline-check-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|source| SpaceError::Sys {
            call: format!("create {}", path.display()),
            source,
        })?;
    let _ = std::fs::remove_file(&path);
    f.set_len(size).map_err(|source| SpaceError::Sys {
        call: format!("set_len of {}", path.display()),
        source,
    })?;
    Ok(f)
}

/// A forked child that holds a COW copy of the address space until dropped.
#[derive(Debug)]
pub struct ForkChild {
    pid: libc::pid_t,
    release: i32,
}

impl ForkChild {
    pub(crate) fn spawn() -> Result<ForkChild, SpaceError> {
        let mut fds = [0i32; 2];
        // SAFETY: pipe2 fills the two-element array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(sys("pipe2"));
        }
        // SAFETY: the child only calls async-signal-safe functions (read, _exit) before it
        // exits, as a child of a multi-threaded process must.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(sys("fork"));
        }
        if pid == 0 {
            let mut b = 0u8;
            // SAFETY: async-signal-safe calls only; the parent's write end closing (or one
            // byte) releases the child.
            unsafe {
                libc::close(fds[1]);
                libc::read(fds[0], std::ptr::addr_of_mut!(b).cast(), 1);
                libc::_exit(0);
            }
        }
        // SAFETY: the parent does not read.
        unsafe { libc::close(fds[0]) };
        Ok(ForkChild {
            pid,
            release: fds[1],
        })
    }
}

impl Drop for ForkChild {
    fn drop(&mut self) {
        // SAFETY: closing our write end wakes the child's read with EOF; then reap it.
        unsafe {
            libc::close(self.release);
            let mut status = 0;
            libc::waitpid(self.pid, &mut status, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RW: i32 = libc::PROT_READ | libc::PROT_WRITE;

    fn anon(start: u64, size: u64) -> RealVmaSpec {
        RealVmaSpec {
            start,
            size,
            kind: RealKind::Anon,
            prot: RW,
            shared: false,
            thp: false,
        }
    }

    #[test]
    fn a_real_range_is_clipped_to_the_scenarios_vmas_and_joined() {
        // Two adjacent VMAs (one range in the model) and one 8M further on.
        let s = RealSpace::new(
            &[
                anon(0x7f00_0000_0000, 4 << 20),
                anon(0x7f00_0040_0000, 2 << 20),
                anon(0x7f00_00e0_0000, 2 << 20),
            ],
            &[],
        )
        .unwrap();
        let real = |m: u64| s.real(m).unwrap();
        let (lo, end1) = (real(0x7f00_0000_0000), real(0x7f00_005f_f000) + 0x1000);
        // Inside: unchanged.
        let a = real(0x7f00_0000_1000);
        assert_eq!(
            s.model_ranges(a, a + 0x1000),
            vec![(0x7f00_0000_1000, 0x7f00_0000_2000)]
        );
        // A merged real VMA reaching 1M below and above the scenario's first two VMAs: the
        // part inside them, as one model range.
        assert_eq!(
            s.model_ranges(lo - (1 << 20), end1 + (1 << 20)),
            vec![(0x7f00_0000_0000, 0x7f00_0060_0000)]
        );
        // Across the gap: two ranges.
        assert_eq!(
            s.model_ranges(lo, real(0x7f00_00e0_0000) + 0x1000),
            vec![
                (0x7f00_0000_0000, 0x7f00_0060_0000),
                (0x7f00_00e0_0000, 0x7f00_00e0_1000)
            ]
        );
        // Outside every VMA: nothing.
        assert!(s.model_ranges(end1, end1 + 0x1000).is_empty());
        assert!(s.model_ranges(lo - 0x2000, lo).is_empty());
    }

    #[test]
    fn offsets_keep_1g_alignment_and_translate_both_ways() {
        let s = RealSpace::new(
            &[
                anon(0x7f00_0000_0000, 4 << 20),
                anon(0x7f00_0040_0000, 2 << 20),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(s.offset() % GIB, 0);
        let r = s.real(0x7f00_0000_1000).unwrap();
        assert_eq!(r % (2 << 20), 0x1000);
        assert_eq!(s.model(r), Some(0x7f00_0000_1000));
        assert!(matches!(
            s.real(0x7f00_0080_0000),
            Err(SpaceError::Outside(_))
        ));
        // The memory is really there and writable.
        // SAFETY: r is inside a fresh RW mapping of the space.
        unsafe { (r as *mut u64).write_volatile(42) };
        assert_eq!(s.read_u64(0x7f00_0000_1000).unwrap(), 42);
    }

    #[test]
    fn gaps_between_vmas_are_unmapped() {
        let s = RealSpace::new(
            &[
                anon(0x7f00_0000_0000, 1 << 20),
                anon(0x7f00_0100_0000, 1 << 20),
            ],
            &[],
        )
        .unwrap();
        assert!(s.read_u64(0x7f00_0080_0000).is_err());
        let gap = s.real_any(0x7f00_0080_0000);
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let mapped = maps.lines().any(|l| {
            let (a, b) = l
                .split_whitespace()
                .next()
                .unwrap()
                .split_once('-')
                .unwrap();
            let (a, b) = (
                u64::from_str_radix(a, 16).unwrap(),
                u64::from_str_radix(b, 16).unwrap(),
            );
            gap >= a && gap < b
        });
        assert!(!mapped, "the gap at {gap:#x} is still mapped");
    }

    #[test]
    fn bad_vmas_are_refused_with_the_reason() {
        let e = RealSpace::new(&[anon(0x1000, 0x800)], &[]).unwrap_err();
        assert!(e.to_string().contains("multiples of 0x1000"), "{e}");
        let e = RealSpace::new(&[anon(0x10000, 0x4000), anon(0x12000, 0x4000)], &[]).unwrap_err();
        assert!(e.to_string().contains("overlaps"), "{e}");
    }

    #[test]
    fn munmap_mprotect_and_fork_act_on_the_real_mapping() {
        let mut s = RealSpace::new(&[anon(0x7f10_0000_0000, 1 << 20)], &[]).unwrap();
        let r = s.real(0x7f10_0000_0000).unwrap();
        // SAFETY: r is inside a fresh RW mapping of the space.
        unsafe { (r as *mut u64).write_volatile(7) };
        s.fork().unwrap();
        s.mprotect(0x7f10_0000_0000, 0x1000, libc::PROT_NONE)
            .unwrap();
        assert!(
            s.read_u64(0x7f10_0000_0000).is_ok(),
            "/proc/self/mem ignores protection"
        );
        s.munmap(0x7f10_0000_0000, 0x1000).unwrap();
        assert!(s.read_u64(0x7f10_0000_0000).is_err());
        s.release_children();
    }

    #[test]
    fn memfd_punch_hole_drops_the_page_cache() {
        let s = RealSpace::new(
            &[RealVmaSpec {
                kind: RealKind::Memfd,
                shared: true,
                ..anon(0x7f20_0000_0000, 1 << 20)
            }],
            &[],
        )
        .unwrap();
        let r = s.real(0x7f20_0000_0000).unwrap();
        // SAFETY: r is inside a fresh RW shared mapping of the space.
        unsafe { (r as *mut u64).write_volatile(9) };
        s.punch_hole(0x7f20_0000_0000, 0x1000).unwrap();
        assert_eq!(s.read_u64(0x7f20_0000_0000).unwrap(), 0);
        let e = RealSpace::new(&[anon(0x7f30_0000_0000, 0x1000)], &[])
            .unwrap()
            .punch_hole(0x7f30_0000_0000, 0x1000)
            .unwrap_err();
        assert!(e.to_string().contains("not file-backed"), "{e}");
    }

    #[test]
    fn vvar_is_found() {
        let (a, b) = find_vvar().expect("x86 Linux has [vvar]");
        assert!(b > a);
        let s = RealSpace::new(
            &[RealVmaSpec {
                kind: RealKind::Vvar,
                prot: libc::PROT_READ,
                ..anon(0x7f40_0000_0000, 0x1000)
            }],
            &[],
        )
        .unwrap();
        assert_eq!(s.real(0x7f40_0000_0000).unwrap(), a);
    }
}
