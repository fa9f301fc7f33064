//! Linux boot: loads a bzImage or an ELF vmlinux with linux-loader, places the initrd and
//! the command line, writes the boot information the kernel reads (zero page or PVH start
//! info, e820 map, MP table) and returns the [`EntryPoint`] the boot vCPU starts at.
//!
//! Three ways in, picked from the image:
//!
//! | image | protocol | entry | boot information |
//! |---|---|---|---|
//! | bzImage | x86 boot protocol, 64-bit entry | `code32_start + 0x200` in long mode | zero page (`struct boot_params`) in RSI |
//! | ELF vmlinux (`--boot-protocol linux`, the default) | 64-bit boot protocol | `e_entry` in long mode | zero page in RSI |
//! | ELF vmlinux with a PVH note, `--boot-protocol pvh` | PVH (`XEN_ELFNOTE_PHYS32_ENTRY`) | the note's address, 32-bit flat, paging off | `struct hvm_start_info` in EBX |
//!
//! Zero-page boots carry a `SETUP_RNG_SEED` (see [`write_rng_seed`]); PVH has no
//! `setup_data`, so a PVH boot's CRNG starts unseeded, which on this host costs the boot
//! about 7% (README "Known problems"). That is why `linux` is the default for a vmlinux.
//!
//! Guest-physical layout (below 1 MiB `vstate` owns [`crate::vstate::entry::GDT_START`] and
//! the page tables at `PML4_START..LOW_RESERVED_END`):
//!
//! ```text
//! 0x6000  hvm_start_info, then the PVH module list (0x6040) and memory map (0x6080..0x7000)
//! 0x7000  zero page (struct boot_params)
//! 0x8000  setup_data: a SETUP_RNG_SEED of 32 fresh random bytes (zero-page boots only)
//! 0x20000 command line
//! 0xf0000 MP table (floating pointer + configuration table), outside the e820 RAM
//! 1 MiB   kernel (bzImage: the compressed kernel at code32_start; vmlinux: its p_paddr)
//! top     initrd, page aligned, as high as the kernel allows (below 4 GiB)
//! ```
//!
//! The kernel command line is `KernelConfig::cmdline` followed by the options this platform
//! needs ([`PLATFORM_CMDLINE`], from `resources/guest-kernel/cmdline.txt`) that it does not
//! already set. With a command to run (`init_command`) and no initrd, the busybox initramfs
//! of [`initramfs`] carries it; with an initrd, the command is appended to it as a second
//! cpio archive (the initrd's `/init` must be ours to run it). With a command, the command
//! line also gets `faultline.exit_port=` ([`DEBUG_EXIT_PORT`]) for that `/init`.

pub mod initramfs;
pub mod mptable;
pub mod printk;

use std::fs::File;
use std::path::PathBuf;

use linux_loader::cmdline::{Cmdline, Error as CmdlineError};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{BzImage, KernelLoader};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use crate::config::{BootProtocol, KernelConfig};
use crate::vstate::EntryPoint;
use devices::debug_exit::DEBUG_EXIT_PORT;

/// The options this platform's KVM needs on every Linux command line (see
/// `shared/reference/platform.md`): clear the CPU features KVM's emulator cannot handle at
/// CPL0 here, let faultline's guest kernel fix up user SYSCALLs (`pvm_syscall_fixup`) and
/// drop missed periodic ticks instead of catching them up one by one (`pvm_tick_skip_missed`,
/// the early-boot stall: README "Known problems"), and give RCU's stall detector 300 s
/// (at its 21 s default, emulated interrupts-off stretches under load trip it and its NMI
/// backtrace locks the boot up). Unknown to a stock kernel, the two `pvm_` options are
/// passed on to its init, harmlessly.
pub const PLATFORM_CMDLINE: &str = include_str!("../../../resources/guest-kernel/cmdline.txt");

/// Where `struct hvm_start_info` goes (PVH).
pub const PVH_INFO_START: u64 = 0x6000;
/// Where the PVH module list (the initrd) goes.
pub const PVH_MODLIST_START: u64 = 0x6040;
/// Where the PVH memory map goes; it may grow up to [`ZERO_PAGE_START`].
pub const PVH_MEMMAP_START: u64 = 0x6080;
/// Where the zero page (`struct boot_params`) goes.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Where the RNG seed's `struct setup_data` goes (zero-page boots), between the zero page
/// and the page tables.
pub const SETUP_DATA_START: u64 = 0x8000;
/// Bytes of RNG seed: 256 bits, what Linux's CRNG needs to be ready.
pub const RNG_SEED_LEN: usize = 32;
/// Where the command line goes.
pub const CMDLINE_START: u64 = 0x2_0000;
/// Most command-line bytes (with the NUL) faultline writes at [`CMDLINE_START`], whatever
/// the image's `cmdline_size` claims: 64 KiB, far above any kernel's `COMMAND_LINE_SIZE`
/// (2048 on x86), and well below the legacy hole at [`EBDA_START`].
pub const CMDLINE_MAX_SIZE: usize = 0x1_0000;
/// Start of the legacy hole: RAM below it is usable, 0x9fc00..1 MiB is not RAM in the e820
/// map (EBDA, VGA, BIOS; our MP table sits in the BIOS area).
pub const EBDA_START: u64 = 0x9_fc00;
/// Start of high memory: kernels load at or above it.
pub const HIMEM_START: u64 = 0x10_0000;

/// e820 type of usable RAM (`E820_TYPE_RAM`, arch/x86/include/asm/e820/types.h).
const E820_RAM: u32 = 1;
/// e820 type of reserved memory (`E820_TYPE_RESERVED`).
const E820_RESERVED: u32 = 2;
/// `struct boot_params` holds at most this many e820 entries (`E820_MAX_ENTRIES_ZEROPAGE`).
const E820_MAX_ENTRIES_ZEROPAGE: usize = 128;
/// Offset of the 64-bit entry (`startup_64`) from the protected-mode kernel's start
/// (Documentation/arch/x86/boot.rst, "64-bit BOOT PROTOCOL").
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// `xloadflags` bit: the kernel has the legacy 64-bit entry at +0x200 (`XLF_KERNEL_64`).
const XLF_KERNEL_64: u16 = 1 << 0;
/// The boot sector signature in `setup_header.boot_flag`.
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// "HdrS" in `setup_header.header`.
const HDRS_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader` for a boot loader without an assigned id.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// Boot protocol version we claim in a synthesised setup header (vmlinux, no PVH).
const BOOT_PROTOCOL_VERSION: u16 = 0x020f;
/// `SETUP_RNG_SEED`, arch/x86/include/uapi/asm/bootparam.h.
const SETUP_RNG_SEED: u32 = 9;
/// The first boot protocol with `setup_data` (2.09).
const SETUP_DATA_PROTOCOL: u16 = 0x0209;
/// x86 `COMMAND_LINE_SIZE` (including the NUL) when the image does not say.
const DEFAULT_CMDLINE_SIZE: usize = 2048;
/// Highest initrd address when the image does not say (`initrd_addr_max` of boot protocol
/// 2.03+ kernels).
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;
/// `hvm_start_info.magic` (`XEN_HVM_START_MAGIC_VALUE`).
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// The 32-bit boundary: initrds stay below it.
const FOUR_GIB: u64 = 1 << 32;

/// Loading a Linux kernel into guest memory failed.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Kernel missing or unreadable.
    #[error("Cannot read kernel {path:?} ({source}); pass a bzImage or vmlinux with --kernel")]
    KernelUnreadable {
        /// The kernel path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Initrd missing or unreadable.
    #[error("Cannot read initrd {path:?} ({source}); pass an initramfs (cpio) with --initrd")]
    InitrdUnreadable {
        /// The initrd path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is neither a bzImage nor an ELF.
    #[error("{path:?} is neither a bzImage nor an ELF vmlinux; pass a Linux kernel image with --kernel (e.g. arch/x86/boot/bzImage or vmlinux)")]
    NotAKernel {
        /// The kernel path.
        path: PathBuf,
    },
    /// The bzImage has no 64-bit entry point.
    #[error("{path:?} is a bzImage without a 64-bit entry point (xloadflags lacks XLF_KERNEL_64); build an x86-64 kernel")]
    Not64Bit {
        /// The kernel path.
        path: PathBuf,
    },
    /// `--boot-protocol pvh` for an image without a PVH entry.
    #[error(
        "--boot-protocol pvh: {path:?} has no PVH entry (a bzImage, or an ELF vmlinux without \
         the XEN_ELFNOTE_PHYS32_ENTRY note of CONFIG_PVH); boot it with --boot-protocol linux"
    )]
    NoPvhEntry {
        /// The kernel path.
        path: PathBuf,
    },
    /// linux-loader could not load an image of the right type.
    #[error("Cannot load {format} {path:?} into guest memory: {source}")]
    KernelLoad {
        /// "bzImage" or "ELF vmlinux".
        format: &'static str,
        /// The kernel path.
        path: PathBuf,
        /// linux-loader's error.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// The kernel (or the memory it decompresses into) does not fit in guest memory.
    #[error("Kernel {path:?} needs guest memory up to {} MiB (image and decompression space) but the guest has {} MiB; raise --memory (e.g. --memory 512M)", .needed >> 20, .memory >> 20)]
    KernelTooLarge {
        /// The kernel path.
        path: PathBuf,
        /// Highest guest-physical address the kernel needs.
        needed: u64,
        /// Guest RAM in bytes.
        memory: u64,
    },
    /// No room for the initrd.
    #[error("Initrd {what} is {} KiB but only {} KiB of guest memory is free between the kernel and {:#x} (guest RAM {} MiB); raise --memory (e.g. --memory {}M)", .size >> 10, .free >> 10, .limit, .memory >> 20, suggest_mib(*.memory, *.size, *.free))]
    InitrdTooLarge {
        /// The initrd path or "built-in busybox initramfs".
        what: String,
        /// Initrd bytes.
        size: u64,
        /// Largest free space found for it.
        free: u64,
        /// Highest address the kernel accepts for it.
        limit: u64,
        /// Guest RAM in bytes.
        memory: u64,
    },
    /// Building the busybox initramfs for the command failed.
    #[error("Cannot build the initramfs for the guest command: {0}")]
    Initramfs(#[from] initramfs::InitramfsError),
    /// The command line is too long for the kernel.
    #[error("Kernel command line is {len} bytes, more than the {max} bytes this kernel accepts; shorten --cmdline")]
    CmdlineTooLong {
        /// Its length in bytes.
        len: usize,
        /// The kernel's limit (without the NUL).
        max: usize,
    },
    /// The command line has characters the kernel cannot take.
    #[error("Kernel command line {cmdline:?} is invalid ({source}); use printable ASCII only")]
    CmdlineInvalid {
        /// The command line.
        cmdline: String,
        /// linux-loader's reason.
        #[source]
        source: CmdlineError,
    },
    /// Writing boot information into guest memory failed.
    #[error("Cannot write {what} into guest memory: {reason}; guest RAM may be too small (raise --memory)")]
    GuestMemory {
        /// Which structure.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The MP table could not be written.
    #[error("Cannot write the MP table: {0}")]
    Mptable(#[from] mptable::MptableError),
    /// More memory-map entries than the boot structures hold.
    #[error("Guest memory has {0} e820 entries, more than the {E820_MAX_ENTRIES_ZEROPAGE} a zero page holds")]
    TooManyE820Entries(usize),
}

/// The `--memory` to suggest when the initrd does not fit: enough for it twice over, in MiB.
fn suggest_mib(memory: u64, size: u64, free: u64) -> u64 {
    let need = memory + size.saturating_sub(free) + size;
    need.div_ceil(256 << 20) * 256
}

/// Which boot protocol a kernel image is entered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// bzImage, 64-bit boot protocol with a zero page.
    BzImage,
    /// ELF vmlinux with a PVH note and `--boot-protocol pvh`: PVH boot with
    /// `hvm_start_info`.
    ElfPvh,
    /// ELF vmlinux (`--boot-protocol linux`, the default, or no PVH note): 64-bit boot
    /// protocol with a zero page.
    Elf64,
}

impl std::fmt::Display for KernelFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KernelFormat::BzImage => "bzImage (64-bit boot protocol)",
            KernelFormat::ElfPvh => "ELF vmlinux (PVH entry)",
            KernelFormat::Elf64 => "ELF vmlinux (64-bit boot protocol)",
        })
    }
}

/// What [`load_kernel`] put into guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedKernel {
    /// Where the boot vCPU starts.
    pub entry: EntryPoint,
    /// How the image is entered.
    pub format: KernelFormat,
    /// The command line the kernel gets.
    pub cmdline: String,
    /// Guest-physical start and size of the initrd, if any.
    pub initrd: Option<(u64, u64)>,
    /// End of the loaded kernel image (guest-physical).
    pub kernel_end: u64,
}

/// Loads the kernel of `cfg` for a guest with `vcpus` vCPUs and returns where to enter it.
///
/// Convenience wrapper of [`load_kernel`] for the launch flow.
pub fn load(
    mem: &GuestMemoryMmap,
    cfg: &KernelConfig,
    vcpus: u32,
) -> Result<EntryPoint, BootError> {
    load_kernel(mem, cfg, vcpus).map(|k| k.entry)
}

/// Total guest RAM in bytes.
fn ram_size(mem: &GuestMemoryMmap) -> u64 {
    mem.iter().map(GuestMemoryRegion::len).sum()
}

/// Loads the kernel, initrd and command line of `cfg` and writes the boot information for
/// `vcpus` vCPUs; see the module docs for the layout.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    cfg: &KernelConfig,
    vcpus: u32,
) -> Result<LoadedKernel, BootError> {
    let path = cfg.kernel.as_path();
    let unreadable = |source| BootError::KernelUnreadable {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(unreadable)?;
    let file_len = file.metadata().map_err(unreadable)?.len();
    let memory = ram_size(mem);
    if file_len > memory {
        return Err(BootError::KernelTooLarge {
            path: path.to_path_buf(),
            needed: HIMEM_START + file_len,
            memory,
        });
    }
    let is_elf = is_elf(&mut file);

    let (format, result) = if is_elf {
        let r =
            Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(|source| {
                BootError::KernelLoad {
                    format: "ELF vmlinux",
                    path: path.to_path_buf(),
                    source,
                }
            })?;
        let pvh = matches!(r.pvh_boot_cap, PvhBootCapability::PvhEntryPresent(_));
        let format = match (cfg.boot_protocol, pvh) {
            (BootProtocol::Pvh, true) => KernelFormat::ElfPvh,
            (BootProtocol::Pvh, false) => {
                return Err(BootError::NoPvhEntry {
                    path: path.to_path_buf(),
                })
            }
            (BootProtocol::Linux, _) => KernelFormat::Elf64,
        };
        (format, r)
    } else {
        let r = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(
            |source| match source {
                linux_loader::loader::Error::Bzimage(
                    linux_loader::loader::bzimage::Error::InvalidBzImage
                    | linux_loader::loader::bzimage::Error::ReadBzImageHeader
                    | linux_loader::loader::bzimage::Error::Underflow,
                ) => BootError::NotAKernel {
                    path: path.to_path_buf(),
                },
                source => BootError::KernelLoad {
                    format: "bzImage",
                    path: path.to_path_buf(),
                    source,
                },
            },
        )?;
        if cfg.boot_protocol == BootProtocol::Pvh {
            return Err(BootError::NoPvhEntry {
                path: path.to_path_buf(),
            });
        }
        (KernelFormat::BzImage, r)
    };

    let hdr = result.setup_header;
    if let Some(h) = hdr {
        if h.xloadflags & XLF_KERNEL_64 == 0 {
            return Err(BootError::Not64Bit {
                path: path.to_path_buf(),
            });
        }
    }
    // The lowest address the initrd may start at: after the image and, for a bzImage, after
    // the area the kernel decompresses itself into (pref_address + init_size).
    let mut kernel_end = result.kernel_end;
    if let Some(h) = hdr {
        // Both come from the image: saturate, so a hostile header reads as "too large".
        let decompressed_end = h
            .pref_address
            .max(result.kernel_load.raw_value())
            .saturating_add(u64::from(h.init_size));
        kernel_end = kernel_end.max(decompressed_end);
    }
    if kernel_end > mem.last_addr().raw_value() + 1 {
        return Err(BootError::KernelTooLarge {
            path: path.to_path_buf(),
            needed: kernel_end,
            memory,
        });
    }

    // Initrd: the user's, the user's plus the command, or the busybox one with the command.
    let (initrd_what, initrd_bytes) = initrd_image(cfg)?;
    let initrd_limit = hdr
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|&m| m != 0)
        .unwrap_or(DEFAULT_INITRD_ADDR_MAX)
        .min(FOUR_GIB - 1);
    let initrd = match &initrd_bytes {
        Some(bytes) => {
            let size = bytes.len() as u64;
            let addr = place_initrd(mem, size, kernel_end, initrd_limit).map_err(|free| {
                BootError::InitrdTooLarge {
                    what: initrd_what.clone(),
                    size,
                    free,
                    limit: initrd_limit,
                    memory,
                }
            })?;
            mem.write_slice(bytes, GuestAddress(addr))
                .map_err(|e| BootError::GuestMemory {
                    what: "the initrd",
                    reason: e.to_string(),
                })?;
            Some((addr, size))
        }
        None => None,
    };

    // Command line; our /init learns the debug-exit port from it.
    let mut cmdline = full_cmdline(&cfg.cmdline);
    if !cfg.init_command.is_empty() && !cmdline.contains("faultline.exit_port=") {
        cmdline.push_str(&format!(" faultline.exit_port={DEBUG_EXIT_PORT:#x}"));
    }
    // The image says how long a line its kernel takes; a hostile header must not make us
    // write over the memory after the command line.
    let max = hdr
        .map(|h| h.cmdline_size as usize)
        .filter(|&m| m != 0)
        .unwrap_or(DEFAULT_CMDLINE_SIZE - 1)
        .min(CMDLINE_MAX_SIZE - 1);
    write_cmdline(mem, &cmdline, max)?;

    mptable::write(mem, vcpus)?;
    let e820 = e820_map(mem)?;

    let entry = match format {
        KernelFormat::ElfPvh => {
            let PvhBootCapability::PvhEntryPresent(pvh_entry) = result.pvh_boot_cap else {
                unreachable!("format is ElfPvh only with a PVH note");
            };
            write_pvh_info(mem, &e820, initrd)?;
            EntryPoint::Pvh32 {
                rip: pvh_entry.raw_value(),
                rbx: PVH_INFO_START,
            }
        }
        KernelFormat::BzImage | KernelFormat::Elf64 => {
            let mut params = zero_page(hdr, &cmdline, initrd, &e820);
            if params.hdr.version >= SETUP_DATA_PROTOCOL {
                write_rng_seed(mem)?;
                params.hdr.setup_data = SETUP_DATA_START;
            }
            LinuxBootConfigurator::write_bootparams(
                &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
                mem,
            )
            .map_err(|e| BootError::GuestMemory {
                what: "the zero page",
                reason: e.to_string(),
            })?;
            let rip = match format {
                KernelFormat::BzImage => {
                    result.kernel_load.raw_value() + BZIMAGE_64BIT_ENTRY_OFFSET
                }
                _ => result.kernel_load.raw_value(),
            };
            EntryPoint::Long64 {
                rip,
                rsi: ZERO_PAGE_START,
            }
        }
    };
    Ok(LoadedKernel {
        entry,
        format,
        cmdline,
        initrd,
        kernel_end: result.kernel_end,
    })
}

/// The initrd to load, with a name for messages: the user's `--initrd` (plus the command
/// archive when there is a command), the busybox initramfs for a command, or none.
fn initrd_image(cfg: &KernelConfig) -> Result<(String, Option<Vec<u8>>), BootError> {
    match &cfg.initrd {
        Some(p) => {
            let mut bytes = std::fs::read(p).map_err(|source| BootError::InitrdUnreadable {
                path: p.clone(),
                source,
            })?;
            if !cfg.init_command.is_empty() {
                // Concatenated archives must each start 4-byte aligned.
                bytes.resize(bytes.len().next_multiple_of(4), 0);
                bytes.extend_from_slice(&initramfs::command_cpio(&cfg.init_command)?);
            }
            Ok((format!("{p:?}"), Some(bytes)))
        }
        None if !cfg.init_command.is_empty() => {
            let bb = initramfs::busybox_path();
            let bytes = initramfs::build(&bb, &cfg.init_command, initramfs::Applets::Shell)?;
            Ok(("built-in busybox initramfs".to_string(), Some(bytes)))
        }
        None => Ok((String::new(), None)),
    }
}

/// `base` followed by each option of [`PLATFORM_CMDLINE`] whose key `base` does not set.
pub fn full_cmdline(base: &str) -> String {
    let key = |opt: &str| opt.split('=').next().unwrap_or(opt).to_string();
    let present: Vec<String> = base.split_whitespace().map(key).collect();
    let mut out = base.trim().to_string();
    for opt in PLATFORM_CMDLINE.split_whitespace() {
        if !present.contains(&key(opt)) {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(opt);
        }
    }
    out
}

/// Checks `cmdline` against the kernel's limit of `max` bytes (without the NUL) and writes it
/// NUL-terminated at [`CMDLINE_START`].
fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str, max: usize) -> Result<(), BootError> {
    if cmdline.len() > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let invalid = |source| BootError::CmdlineInvalid {
        cmdline: cmdline.to_string(),
        source,
    };
    // Cmdline::try_from checks the length only; the kernel takes printable ASCII.
    if !cmdline.chars().all(|c| (' '..='~').contains(&c)) {
        return Err(invalid(CmdlineError::InvalidAscii));
    }
    let cl = Cmdline::try_from(cmdline, max + 1).map_err(|e| match e {
        CmdlineError::TooLarge => BootError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        },
        e => invalid(e),
    })?;
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &cl).map_err(|e| {
        BootError::GuestMemory {
            what: "the command line",
            reason: e.to_string(),
        }
    })
}

/// The highest page-aligned address in `[lowest, limit]` where `size` bytes fit in one RAM
/// region; on failure, the largest free space found.
fn place_initrd(mem: &GuestMemoryMmap, size: u64, lowest: u64, limit: u64) -> Result<u64, u64> {
    let mut best_free = 0;
    let mut regions: Vec<(u64, u64)> = mem
        .iter()
        .map(|r| {
            (
                r.start_addr().raw_value(),
                r.start_addr().raw_value() + r.len(),
            )
        })
        .collect();
    regions.sort_unstable();
    for &(start, end) in regions.iter().rev() {
        let top = end.min(limit.saturating_add(1));
        let bottom = start.max(lowest).next_multiple_of(4096);
        if top <= bottom {
            continue;
        }
        best_free = best_free.max(top - bottom);
        if let Some(addr) = top.checked_sub(size).map(|a| a & !0xfff) {
            if addr >= bottom {
                return Ok(addr);
            }
        }
    }
    Err(best_free)
}

/// One e820 entry: start, size, type.
type E820Entry = (u64, u64, u32);

/// The guest's e820 map: RAM below the EBDA, the MP table area reserved, and all RAM from
/// 1 MiB up, following guest memory's regions (and so any hole H1's layout leaves).
///
/// Models what a PC BIOS reports through `INT 15h, E820h` and what Linux's
/// `e820__memory_setup_default()` (arch/x86/kernel/e820.c) reads from `boot_params`.
pub fn e820_map(mem: &GuestMemoryMmap) -> Result<Vec<E820Entry>, BootError> {
    let mut map = Vec::new();
    let mut regions: Vec<(u64, u64)> = mem
        .iter()
        .map(|r| {
            (
                r.start_addr().raw_value(),
                r.start_addr().raw_value() + r.len(),
            )
        })
        .collect();
    regions.sort_unstable();
    for &(start, end) in &regions {
        if start < EBDA_START {
            map.push((start, end.min(EBDA_START) - start, E820_RAM));
        }
        // The whole legacy ISA hole (EBDA, VGA, option ROMs, BIOS; the MP table inside it)
        // is reserved, as Linux's own PVH entry reserves it (`init_pvh_bootparams()`): left
        // out of the map, the kernel's direct-map set-up asks e820 about each of its pages
        // (`phys_pte_init()` -> `e820__mapped_any()`), about 0.25 M instructions that this
        // host emulates (README "Known problems").
        if start <= mptable::MPTABLE_START && end >= mptable::MPTABLE_END {
            map.push((EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED));
        }
        if end > HIMEM_START {
            let s = start.max(HIMEM_START);
            map.push((s, end - s, E820_RAM));
        }
    }
    if map.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(BootError::TooManyE820Entries(map.len()));
    }
    Ok(map)
}

/// Builds `struct boot_params` for the 64-bit boot protocol (Documentation/arch/x86/boot.rst,
/// "64-bit BOOT PROTOCOL"; Linux reads it in `copy_bootdata()` and `setup_arch()`).
///
/// With a bzImage, `hdr` is the image's setup header as linux-loader read it; for a vmlinux
/// without a PVH note there is none and a minimal one is synthesised.
pub fn zero_page(
    hdr: Option<setup_header>,
    cmdline: &str,
    initrd: Option<(u64, u64)>,
    e820: &[E820Entry],
) -> boot_params {
    let mut params = boot_params {
        hdr: hdr.unwrap_or_else(|| setup_header {
            boot_flag: BOOT_FLAG_MAGIC,
            header: HDRS_MAGIC,
            version: BOOT_PROTOCOL_VERSION,
            kernel_alignment: 0x20_0000,
            ..Default::default()
        }),
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    // Both fit in 32 bits: CMDLINE_START is a constant below 1 MiB and place_initrd keeps
    // the initrd below 4 GiB; the ext_ fields carry the high halves for completeness.
    params.hdr.cmd_line_ptr = low32(CMDLINE_START);
    params.ext_cmd_line_ptr = high32(CMDLINE_START);
    if params.hdr.cmdline_size == 0 {
        params.hdr.cmdline_size = u32::try_from(cmdline.len() + 1).unwrap_or(u32::MAX);
    }
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = low32(addr);
        params.ext_ramdisk_image = high32(addr);
        params.hdr.ramdisk_size = low32(size);
        params.ext_ramdisk_size = high32(size);
    }
    for (i, &(addr, size, kind)) in e820.iter().take(E820_MAX_ENTRIES_ZEROPAGE).enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr,
            size,
            r#type: kind,
        };
    }
    params.e820_entries =
        u8::try_from(e820.len().min(E820_MAX_ENTRIES_ZEROPAGE)).unwrap_or(u8::MAX);
    params
}

/// Writes a `SETUP_RNG_SEED` `struct setup_data` of [`RNG_SEED_LEN`] fresh random bytes at
/// [`SETUP_DATA_START`], as a bootloader does. Linux mixes it in and, with
/// `random.trust_bootloader` (its default), credits it (`add_bootloader_randomness()`,
/// called from `parse_setup_data()`), so its CRNG is ready at the first `get_random_bytes()`.
/// Without a seed, on this host (no RDRAND for the guest: `clearcpuid=rdrand`) the CRNG
/// stays unseeded for the whole boot and every `get_random_bytes()` runs `extract_entropy()`
/// (BLAKE2s under a spinlock, interrupts off: emulated here), about a tenth of a boot's
/// emulated instructions (README "Known problems").
fn write_rng_seed(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    let mut seed = [0u8; RNG_SEED_LEN];
    let mut got = 0;
    while got < seed.len() {
        // SAFETY: getrandom writes at most the given length into the buffer it is handed.
        let n = unsafe { libc::getrandom(seed[got..].as_mut_ptr().cast(), seed.len() - got, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(BootError::GuestMemory {
                what: "the RNG seed (getrandom failed)",
                reason: e.to_string(),
            });
        }
        got += n as usize;
    }
    // struct setup_data { u64 next; u32 type; u32 len; u8 data[]; }
    let mut blob = Vec::with_capacity(16 + RNG_SEED_LEN);
    blob.extend_from_slice(&0u64.to_le_bytes());
    blob.extend_from_slice(&SETUP_RNG_SEED.to_le_bytes());
    blob.extend_from_slice(&u32::try_from(seed.len()).unwrap_or(u32::MAX).to_le_bytes());
    blob.extend_from_slice(&seed);
    mem.write_slice(&blob, GuestAddress(SETUP_DATA_START))
        .map_err(|e| BootError::GuestMemory {
            what: "the RNG seed",
            reason: e.to_string(),
        })
}

/// Whether `image` starts with the ELF magic (else [`load_kernel`] takes it for a bzImage).
pub fn is_elf(image: &mut impl std::io::Read) -> bool {
    let mut magic = [0u8; 4];
    image.read_exact(&mut magic).is_ok() && magic == *b"\x7fELF"
}

fn low32(v: u64) -> u32 {
    (v & 0xffff_ffff) as u32
}

fn high32(v: u64) -> u32 {
    (v >> 32) as u32
}

/// Writes `struct hvm_start_info`, its module list (the initrd) and memory map for a PVH
/// entry (xen/include/public/arch-x86/hvm/start_info.h; Linux reads them in
/// `init_pvh_bootparams()`, arch/x86/platform/pvh/enlighten.c).
fn write_pvh_info(
    mem: &GuestMemoryMmap,
    e820: &[E820Entry],
    initrd: Option<(u64, u64)>,
) -> Result<(), BootError> {
    let max_entries = usize::try_from(ZERO_PAGE_START - PVH_MEMMAP_START).unwrap_or(0)
        / std::mem::size_of::<hvm_memmap_table_entry>();
    if e820.len() > max_entries {
        return Err(BootError::TooManyE820Entries(e820.len()));
    }
    let memmap: Vec<hvm_memmap_table_entry> = e820
        .iter()
        .map(|&(addr, size, kind)| hvm_memmap_table_entry {
            addr,
            size,
            type_: kind,
            reserved: 0,
        })
        .collect();
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: u32::try_from(memmap.len()).unwrap_or(u32::MAX),
        ..Default::default()
    };
    let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
    if let Some((paddr, size)) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
        params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
        params.set_modules(
            &[hvm_modlist_entry {
                paddr,
                size,
                ..Default::default()
            }],
            GuestAddress(PVH_MODLIST_START),
        );
    }
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(|e| BootError::GuestMemory {
        what: "the PVH start info",
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests;
