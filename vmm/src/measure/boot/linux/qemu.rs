//! QEMU microvm's side: its command line for the same guest, and finding the binary.

use std::path::{Path, PathBuf};

/// QEMU's exit status when the guest wrote 0 to `isa-debug-exit`: `(0 << 1) | 1`.
pub const QEMU_DEBUG_EXIT_OK: i32 = 1;
/// The trace event that marks QEMU's firmware loading the kernel.
pub const QEMU_FW_CFG_TRACE: &str = "fw_cfg_select";

/// `qemu` as a runnable path: as given if it has a `/`, else looked up in PATH.
pub fn find_program(qemu: &Path) -> Option<PathBuf> {
    if qemu.components().count() > 1 {
        return qemu.is_file().then(|| qemu.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(qemu))
            .find(|p| p.is_file())
    })
}

/// QEMU's arguments for the same guest (see resources/bench/boot-qemu.sh).
///
/// `-cpu host,-arch-capabilities`: this host's KVM rejects QEMU's write of
/// MSR_IA32_ARCH_CAPABILITIES with plain `-cpu host`. `-no-reboot` turns a guest reset
/// into an exit.
pub fn qemu_args(
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
    memory: u64,
    vcpus: u32,
) -> Vec<String> {
    let port = devices::debug_exit::DEBUG_EXIT_PORT;
    [
        "-enable-kvm",
        "-cpu",
        "host,-arch-capabilities",
        "-m",
        &format!("{}M", memory >> 20),
        "-smp",
        &vcpus.to_string(),
        "-M",
        "microvm,x-option-roms=off,rtc=off,isa-serial=on",
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-device",
        &format!("isa-debug-exit,iobase={port:#x},iosize=1"),
        "-trace",
        &format!("enable={QEMU_FW_CFG_TRACE}"),
        "-kernel",
        &kernel.display().to_string(),
        "-initrd",
        &initrd.display().to_string(),
        "-append",
        cmdline,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}
#[cfg(test)]
mod tests {
    use crate::measure::boot::{linux, BenchBootError};

    #[test]
    fn qemu_gets_the_same_kernel_initrd_and_cmdline_with_debug_exit() {
        let cmdline = linux::default_cmdline();
        assert!(
            cmdline.starts_with(crate::config::DEFAULT_CMDLINE)
                && cmdline.contains("pvm_syscall_fixup")
                && cmdline.ends_with("faultline.exit_port=0xf4"),
            "{cmdline}"
        );
        let a = linux::qemu_args(
            std::path::Path::new("/k/vmlinux"),
            std::path::Path::new("/i.cpio"),
            &cmdline,
            256 << 20,
            1,
        );
        let after = |flag: &str| a[a.iter().position(|x| x == flag).unwrap() + 1].clone();
        assert_eq!(after("-kernel"), "/k/vmlinux");
        assert_eq!(after("-initrd"), "/i.cpio");
        assert_eq!(after("-append"), cmdline);
        assert_eq!(after("-m"), "256M");
        assert!(after("-M").starts_with("microvm"));
        assert_eq!(after("-device"), "isa-debug-exit,iobase=0xf4,iosize=1");
    }

    #[test]
    fn a_missing_qemu_is_not_found_and_a_present_one_is() {
        assert_eq!(
            linux::find_program(std::path::Path::new("no-such-qemu-xyz")),
            None
        );
        assert!(linux::find_program(std::path::Path::new("sh")).is_some());
        let e = BenchBootError::QemuMissing("no-such-qemu-xyz".into()).to_string();
        assert!(e.contains("apt-get install qemu-system-x86"), "{e}");
    }
}
