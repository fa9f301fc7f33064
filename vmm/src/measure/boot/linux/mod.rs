//! `faultline bench boot --kernel`: a Linux boot's timeline under faultline and under
//! `qemu-system-x86_64 -M microvm`, same kernel, initramfs and command line, alternating.
//!
//! Every phase is measured from the host on CLOCK_MONOTONIC, from the spawn of the VMM
//! process (t0); the serial console (the child's stdout) is read as it arrives and each line
//! is stamped when it is read:
//!
//! - **kernel entry**: faultline: the vCPU threads start, and the boot vCPU's first KVM_RUN
//!   enters the kernel's entry point (there is no firmware). QEMU: the last `fw_cfg_select`
//!   of its firmware (qboot, which loads the kernel and initrd through fw_cfg and then jumps
//!   to the kernel), seen through QEMU's `-trace enable=fw_cfg_select` on stderr.
//! - **first KVM exit** (faultline only): the first exit of a vCPU to userspace.
//! - **first serial line**: the first complete line on the console.
//! - **init started**: the first line containing `--init-marker` (our `/init` prints
//!   `faultline-init: running ...` before it runs its command).
//! - **VM exit**: the VMM process was reaped (our `/init` writes the status to the
//!   debug-exit port 0xf4; QEMU has `isa-debug-exit` there and exits with `(status << 1) | 1`).
//!
//! - [`capture`]: spawning a VMM and stamping each output line.
//! - [`initcalls`]: `--initcalls N`, one more boot per VMM timing each initcall.
//! - [`phases`]: one boot's phases from its console and stderr.
//! - [`qemu`]: QEMU's command line and where to find it.
//! - [`report`]: summaries, ratios and the table.

pub mod capture;
pub mod initcalls;
pub mod phases;
pub mod qemu;
pub mod report;

pub use capture::{capture, Capture, Line};
pub use phases::{outcome_of, sample_of, LinuxSample, Outcome, Stall};
pub use qemu::{find_program, qemu_args, QEMU_DEBUG_EXIT_OK, QEMU_FW_CFG_TRACE};
pub use report::{LinuxReport, LinuxSummary};

use super::{emit_json, progress, BenchBootError, TIMELINE_ENV};
use crate::measure::boot::args::BenchBootArgs;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Which VMM booted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Vmm {
    /// faultline.
    Faultline,
    /// QEMU microvm.
    Qemu,
}

impl Vmm {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Vmm::Faultline => "faultline",
            Vmm::Qemu => "QEMU microvm",
        }
    }
}

/// Removes a file when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The busybox initramfs running `command` (applets by name, only `/bin/sh` linked), in a
/// temporary file named after `tag` that is removed when dropped.
fn busybox_initrd(command: &str, tag: &str) -> Result<TempFile, BenchBootError> {
    let bytes = crate::boot::initramfs::build(
        &crate::boot::initramfs::busybox_path(),
        &[command.to_string()],
        crate::boot::initramfs::Applets::Shell,
    )?;
    let path = std::env::temp_dir().join(format!("faultline-{tag}-{}.cpio", std::process::id()));
    std::fs::write(&path, bytes).map_err(|source| BenchBootError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(TempFile(path))
}

/// The default command line: faultline's default, the platform options and our init's
/// debug-exit port.
pub fn default_cmdline() -> String {
    format!(
        "{} faultline.exit_port={:#x}",
        crate::boot::full_cmdline(crate::config::DEFAULT_CMDLINE),
        devices::debug_exit::DEBUG_EXIT_PORT
    )
}

/// `faultline run` of `kernel` as the bench boots it.
fn faultline_command(
    args: &BenchBootArgs,
    exe: &Path,
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("run")
        .arg("--kernel")
        .arg(kernel)
        .arg("--initrd")
        .arg(initrd)
        .arg("--cmdline")
        .arg(cmdline)
        .arg("--memory")
        .arg(args.memory.to_string())
        .arg("--vcpus")
        .arg(args.vcpus.to_string())
        .arg("--watchdog")
        .arg(args.watchdog.to_string())
        .arg("--boot-protocol")
        .arg(args.boot_protocol.to_string())
        .env(TIMELINE_ENV, "1");
    if let Some(sym) = &args.symbols {
        cmd.arg("--symbols").arg(sym);
    }
    if let Some(dev) = &args.kvm_device {
        cmd.arg("--kvm-device").arg(dev);
    }
    if args.no_seccomp {
        cmd.arg("--no-seccomp");
    }
    cmd
}

fn boot_faultline(
    args: &BenchBootArgs,
    exe: &Path,
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
    run: u32,
) -> Result<Outcome, BenchBootError> {
    let cmd = faultline_command(args, exe, kernel, initrd, cmdline);
    let c = capture(cmd, Duration::from_secs(args.timeout))
        .map_err(|(exe, source)| BenchBootError::Spawn { exe, source })?;
    outcome_of(
        Vmm::Faultline,
        run,
        &c,
        &args.init_marker,
        c.code == Some(0),
    )
}

fn boot_qemu(
    args: &BenchBootArgs,
    qemu: &Path,
    qargs: &[String],
    run: u32,
) -> Result<Outcome, BenchBootError> {
    let mut cmd = Command::new(qemu);
    cmd.args(qargs);
    let c = capture(cmd, Duration::from_secs(args.timeout))
        .map_err(|(exe, source)| BenchBootError::Spawn { exe, source })?;
    let ok = matches!(c.code, Some(0) | Some(QEMU_DEBUG_EXIT_OK));
    outcome_of(Vmm::Qemu, run, &c, &args.init_marker, ok)
}

/// `--initcalls`: one untimed boot per VMM with [`initcalls::CMDLINE_EXTRA`] and an
/// initramfs that prints the kernel log (`dmesg`), and the initcalls each one timed.
fn initcall_boots(
    args: &BenchBootArgs,
    exe: &Path,
    kernel: &Path,
    cmdline: &str,
    qemu: Option<&Path>,
) -> Result<initcalls::InitcallReport, BenchBootError> {
    let initrd = busybox_initrd("dmesg", "bench-boot-initcalls")?;
    let path = &initrd.0;
    let diag_cmdline = format!("{cmdline} {}", initcalls::CMDLINE_EXTRA);
    let timeout = Duration::from_secs(args.timeout);
    // The initcalls one boot printed, or why there are none.
    let read = |cmd: Command| -> (Vec<initcalls::Initcall>, Option<String>) {
        match capture(cmd, timeout) {
            Err((exe, e)) => (
                Vec::new(),
                Some(format!("cannot run {}: {e}", exe.display())),
            ),
            Ok(c) => {
                let got = initcalls::parse(c.stdout.iter().map(|l| l.text.as_str()));
                let why = if c.timed_out {
                    Some(format!("killed after --timeout {} s", args.timeout))
                } else if got.is_empty() {
                    Some(format!(
                        "its console had no `initcall ... returned` line (exit status {:?})",
                        c.code
                    ))
                } else {
                    None
                };
                (got, why)
            }
        }
    };
    let bar = progress(1 + u64::from(qemu.is_some()));
    bar.set_message("faultline (initcall_debug)");
    let (faultline, faultline_error) =
        read(faultline_command(args, exe, kernel, path, &diag_cmdline));
    bar.inc(1);
    let (qemu, qemu_error) = match qemu {
        Some(q) => {
            bar.set_message("QEMU microvm (initcall_debug)");
            let mut cmd = Command::new(q);
            cmd.args(qemu_args(
                kernel,
                path,
                &diag_cmdline,
                args.memory,
                args.vcpus,
            ));
            let (got, why) = read(cmd);
            bar.inc(1);
            (Some(got), why)
        }
        None => (None, None),
    };
    bar.finish_and_clear();
    Ok(initcalls::InitcallReport {
        cmdline_extra: initcalls::CMDLINE_EXTRA.to_string(),
        faultline,
        qemu,
        faultline_error,
        qemu_error,
    })
}

/// Runs the Linux benchmark, prints the table and JSON.
pub fn run(args: &BenchBootArgs, kernel: &Path) -> Result<(), BenchBootError> {
    std::fs::File::open(kernel).map_err(|source| BenchBootError::Kernel {
        path: kernel.to_path_buf(),
        source,
    })?;
    let qemu = if args.no_qemu {
        None
    } else {
        Some(
            find_program(&args.qemu)
                .ok_or_else(|| BenchBootError::QemuMissing(args.qemu.clone()))?,
        )
    };
    let exe = super::current_exe()?;
    let _temp;
    let initrd = match &args.initrd {
        Some(p) => p.clone(),
        None => {
            let t = busybox_initrd("true", "bench-boot")?;
            let path = t.0.clone();
            _temp = t;
            path
        }
    };
    let cmdline = args.cmdline.clone().unwrap_or_else(default_cmdline);
    let qargs = qemu_args(kernel, &initrd, &cmdline, args.memory, args.vcpus);
    let per_run = if qemu.is_some() { 2 } else { 1 };
    let bar = progress(u64::from(args.runs) * per_run);
    let (mut fl, mut qm, mut stalls) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..args.runs {
        let mut order = vec![Vmm::Faultline];
        if qemu.is_some() {
            order.push(Vmm::Qemu);
            if i % 2 == 1 {
                order.reverse();
            }
        }
        for vmm in order {
            bar.set_message(format!("{} (run {})", vmm.name(), i + 1));
            let outcome = match (vmm, &qemu) {
                (Vmm::Qemu, Some(q)) => boot_qemu(args, q, &qargs, i + 1)?,
                _ => boot_faultline(args, &exe, kernel, &initrd, &cmdline, i + 1)?,
            };
            match (outcome, vmm) {
                (Outcome::Completed(s), Vmm::Qemu) => qm.push(s),
                (Outcome::Completed(s), Vmm::Faultline) => fl.push(s),
                (Outcome::Stalled(s), _) => {
                    bar.suspend(|| {
                        eprintln!(
                            "bench boot: {} run {} stalled ({}); last console line: {}",
                            vmm.name(),
                            i + 1,
                            s.detected_by,
                            s.last_console
                                .last()
                                .map(String::as_str)
                                .unwrap_or("(none)")
                        );
                        for v in &s.vcpus {
                            eprintln!("  {v}");
                        }
                    });
                    stalls.push(s);
                }
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let shown_qemu = qemu.as_ref().map(|q| {
        let mut v = vec![q.display().to_string()];
        v.extend(qargs.iter().map(|a| {
            if *a == initrd.display().to_string() && args.initrd.is_none() {
                "<initrd>".to_string()
            } else {
                a.clone()
            }
        }));
        v
    });
    let mut report = LinuxReport::new(args, kernel, &cmdline, shown_qemu, fl, qm, stalls);
    print!("{}", report.table());
    if args.initcalls > 0 {
        let diag = initcall_boots(args, &exe, kernel, &cmdline, qemu.as_deref())?;
        print!("{}", diag.table(args.initcalls));
        report.initcalls = Some(diag);
    }
    emit_json(
        args.json.as_deref(),
        &serde_json::to_string_pretty(&report).unwrap_or_default(),
    )
}
