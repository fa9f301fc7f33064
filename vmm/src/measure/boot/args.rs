//! The options of `faultline bench boot`, beside the bench's code.

use crate::config::parse_size;
use crate::guests;
use clap::Args;
use std::path::PathBuf;

/// Options of `faultline bench boot`.
#[derive(Debug, Args)]
pub struct BenchBootArgs {
    /// Number of boots to time.
    #[arg(long, default_value_t = 10)]
    pub runs: u32,
    /// Built-in guest to boot.
    #[arg(long, default_value = guests::DEFAULT_GUEST)]
    pub guest: String,
    /// Guest RAM.
    #[arg(long, value_parser = parse_size, default_value = "256M")]
    pub memory: u64,
    /// Write the JSON report here as well as printing it.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// KVM device node [env: FAULTLINE_KVM_DEVICE] [default: /dev/kvm].
    #[arg(long, value_name = "PATH")]
    pub kvm_device: Option<PathBuf>,
    /// Run without seccomp filters on the VMM's threads (they are on by default; a system
    /// call outside a thread's filter ends the VM with status 104).
    #[arg(long)]
    pub no_seccomp: bool,
    /// Built-in guest: another `faultline` binary to alternate runs with (before/after).
    #[arg(long, value_name = "PATH", conflicts_with = "kernel")]
    pub baseline: Option<PathBuf>,
    /// Boot this Linux kernel (bzImage or PVH vmlinux) instead of a built-in guest, side by
    /// side with QEMU microvm.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initramfs for --kernel [default: the busybox initramfs running `true`]. Its /init
    /// must print --init-marker and end the VM (debug-exit port 0xf4 or reset).
    #[arg(long, value_name = "PATH", requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line for --kernel [default: faultline's default plus the platform
    /// options and faultline.exit_port=0xf4].
    #[arg(long, value_name = "STR", requires = "kernel")]
    pub cmdline: Option<String>,
    /// The serial line that marks "init started".
    #[arg(long, value_name = "STR", default_value = "faultline-init: running")]
    pub init_marker: String,
    /// Number of vCPUs for --kernel.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub vcpus: u32,
    /// How faultline enters an ELF vmlinux (`run --boot-protocol`): `linux` (64-bit boot
    /// protocol, with an RNG seed) or `pvh` (as QEMU microvm always does).
    #[arg(long, value_name = "PROTOCOL", value_enum, default_value_t)]
    pub boot_protocol: crate::config::BootProtocol,
    /// QEMU binary to compare with.
    #[arg(long, value_name = "PATH", default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,
    /// Do not run QEMU (faultline only).
    #[arg(long)]
    pub no_qemu: bool,
    /// Give up on one boot after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub timeout: u64,
    /// faultline's `run --watchdog SECS` for --kernel boots: a guest with no vCPU exit for
    /// this long is a stall, counted in the report (0 = off; QEMU boots killed after
    /// --timeout count as stalls too).
    #[arg(long, value_name = "SECS", default_value_t = 180)]
    pub watchdog: u64,
    /// ELF with the kernel's symbols for the watchdog's report (`run --symbols`).
    #[arg(long, value_name = "PATH", requires = "kernel")]
    pub symbols: Option<PathBuf>,
    /// After the timed boots, one more per VMM with `initcall_debug` (and
    /// `initramfs_async=0`), untimed, and a table of the N slowest initcalls (0 = off).
    #[arg(long, value_name = "N", default_value_t = 0, requires = "kernel")]
    pub initcalls: usize,
}
