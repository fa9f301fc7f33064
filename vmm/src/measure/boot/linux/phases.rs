//! One boot's phases, read from its console (stdout) and stderr.

use super::{Capture, Vmm, QEMU_FW_CFG_TRACE};
use crate::measure::boot::{BenchBootError, ChildTimeline, TIMELINE_PREFIX};
use serde::Serialize;

/// One boot's phases, µs from spawn.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LinuxSample {
    /// Spawn -> the kernel's first instruction (see the module docs per VMM).
    pub kernel_entry_us: Option<f64>,
    /// Spawn -> first vCPU exit to userspace (faultline only).
    pub first_exit_us: Option<f64>,
    /// Spawn -> first serial line.
    pub first_serial_line_us: f64,
    /// Spawn -> the console's "Unpacking initramfs..." line, if printed.
    pub initramfs_start_us: Option<f64>,
    /// Spawn -> the console's "Freeing initrd memory" line, if printed.
    pub initramfs_done_us: Option<f64>,
    /// Spawn -> init's marker line.
    pub init_us: f64,
    /// Spawn -> process reaped.
    pub exit_us: f64,
    /// Whether the kernel's CRNG was ready at its first timestamp ("random: crng init
    /// done" at `[    0.000000]`): a boot loader's seed (`SETUP_RNG_SEED`) does that, and
    /// without one the CRNG stays unseeded here for the whole boot (README "Known
    /// problems"). Read from the console, so it says what the guest saw, per VMM.
    pub crng_seeded_at_boot: bool,
}

/// The console line Linux prints when its CRNG becomes ready (`crng_set_ready()` /
/// `_credit_init_bits()` in drivers/char/random.c).
pub const CRNG_READY: &str = "random: crng init done";

/// Whether a console line is printk's `[    0.000000] ...`: printed before the clock ran.
fn at_time_zero(line: &str) -> bool {
    crate::boot::printk::split(line.trim_start()).and_then(|(stamp, _)| stamp.parse::<f64>().ok())
        == Some(0.0)
}

/// The console line Linux prints when it starts unpacking the initramfs
/// (`do_populate_rootfs()` in init/initramfs.c).
pub const INITRAMFS_START: &str = "Unpacking initramfs...";
/// The console line Linux prints when it frees the initrd after unpacking it
/// (`free_initrd_mem()` via `free_reserved_area()`).
pub const INITRAMFS_DONE: &str = "Freeing initrd memory";

/// When the first console line containing `text` was read, ns.
fn console_line(c: &Capture, text: &str) -> Option<u64> {
    c.stdout.iter().find(|l| l.text.contains(text)).map(|l| l.t)
}

/// A boot that never reached init: the guest stopped making progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stall {
    /// Which VMM.
    pub vmm: Vmm,
    /// Run number (1-based).
    pub run: u32,
    /// How it was detected: faultline's watchdog (exit status 103) or `--timeout`.
    pub detected_by: String,
    /// Where the vCPUs were (the watchdog's `vCPU N: RIP ...` lines; empty for QEMU).
    pub vcpus: Vec<String>,
    /// The last console lines.
    pub last_console: Vec<String>,
}

/// One boot: it reached init, or it stalled.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Reached init and ended.
    Completed(LinuxSample),
    /// Stalled (watchdog or timeout).
    Stalled(Stall),
}

/// Classifies a capture: a stall (faultline's watchdog status, or killed after --timeout),
/// a completed boot, or an error (any other failure).
pub fn outcome_of(
    vmm: Vmm,
    run: u32,
    c: &Capture,
    marker: &str,
    ok: bool,
) -> Result<Outcome, BenchBootError> {
    let watchdog = vmm == Vmm::Faultline && c.code == Some(devices::exit::STATUS_GUEST_STALLED);
    if watchdog || c.timed_out {
        let last_console = c.stdout[c.stdout.len().saturating_sub(5)..]
            .iter()
            .map(|l| l.text.clone())
            .collect();
        let vcpus = c
            .stderr
            .iter()
            .filter_map(|l| {
                l.text
                    .trim_start()
                    .strip_prefix("vCPU ")
                    .map(|r| format!("vCPU {r}"))
            })
            .filter(|l| l.contains("RIP"))
            .collect();
        return Ok(Outcome::Stalled(Stall {
            vmm,
            run,
            detected_by: if watchdog {
                "faultline watchdog (no vCPU exit; exit status 103)".to_string()
            } else {
                "killed after --timeout".to_string()
            },
            vcpus,
            last_console,
        }));
    }
    sample_of(vmm, c, marker, ok).map(Outcome::Completed)
}

/// Turns a capture into a sample; `ok` says whether the exit status means success.
pub fn sample_of(
    vmm: Vmm,
    c: &Capture,
    marker: &str,
    ok: bool,
) -> Result<LinuxSample, BenchBootError> {
    let us = |t: u64| t.saturating_sub(c.t0) as f64 / 1000.0;
    if c.timed_out || !ok {
        let status = if c.timed_out {
            "killed after --timeout".to_string()
        } else {
            match c.code {
                Some(code) => format!("exit status {code}"),
                None => "killed by a signal".to_string(),
            }
        };
        return Err(BenchBootError::Boot {
            vmm: vmm.name(),
            status,
            tail: c.tail(),
        });
    }
    let no_marker = || BenchBootError::NoMarker {
        vmm: vmm.name(),
        marker: marker.to_string(),
        tail: c.tail(),
    };
    let first_line = c.stdout.first().ok_or_else(no_marker)?;
    let init = c
        .stdout
        .iter()
        .find(|l| l.text.contains(marker))
        .ok_or_else(no_marker)?;
    let (kernel_entry, first_exit) = match vmm {
        Vmm::Faultline => {
            let t = c
                .stderr
                .iter()
                .find_map(|l| l.text.strip_prefix(TIMELINE_PREFIX))
                .and_then(|j| serde_json::from_str::<ChildTimeline>(j).ok());
            (
                t.map(|t| us(t.vcpus_started_ns)),
                t.filter(|t| t.first_exit_ns != 0)
                    .map(|t| us(t.first_exit_ns)),
            )
        }
        Vmm::Qemu => (
            c.stderr
                .iter()
                .rfind(|l| l.t <= first_line.t && l.text.contains(QEMU_FW_CFG_TRACE))
                .map(|l| us(l.t)),
            None,
        ),
    };
    Ok(LinuxSample {
        kernel_entry_us: kernel_entry,
        first_exit_us: first_exit,
        first_serial_line_us: us(first_line.t),
        initramfs_start_us: console_line(c, INITRAMFS_START).map(us),
        initramfs_done_us: console_line(c, INITRAMFS_DONE).map(us),
        init_us: us(init.t),
        exit_us: us(c.exit_ns),
        crng_seeded_at_boot: c
            .stdout
            .iter()
            .any(|l| l.text.contains(CRNG_READY) && at_time_zero(&l.text)),
    })
}

#[cfg(test)]
mod tests {
    use crate::measure::boot::{linux, ChildTimeline, TIMELINE_PREFIX};

    fn line(t: u64, text: &str) -> linux::Line {
        linux::Line {
            t,
            text: text.to_string(),
        }
    }

    fn capture(stdout: Vec<linux::Line>, stderr: Vec<linux::Line>) -> linux::Capture {
        linux::Capture {
            t0: 1_000_000,
            stdout,
            stderr,
            exit_ns: 9_000_000,
            code: Some(0),
            status: std::os::unix::process::ExitStatusExt::from_raw(0),
            timed_out: false,
        }
    }

    #[test]
    fn faultline_linux_phases_come_from_its_timeline_and_console() {
        let t = ChildTimeline {
            vmm_start_ns: 1_500_000,
            vcpus_started_ns: 2_000_000,
            first_exit_ns: 3_000_000,
            end_ns: 8_000_000,
            rss: 0,
            guest_resident: 0,
        };
        let c = capture(
            vec![
                line(4_000_000, "[    0.000000] Linux version 6.12"),
                line(4_500_000, "[    0.000000] random: crng init done"),
                line(6_000_000, "faultline-init: running 'true'"),
            ],
            vec![line(
                8_500_000,
                &format!("{TIMELINE_PREFIX}{}", serde_json::to_string(&t).unwrap()),
            )],
        );
        let s =
            linux::sample_of(linux::Vmm::Faultline, &c, "faultline-init: running", true).unwrap();
        assert_eq!(
            s,
            linux::LinuxSample {
                kernel_entry_us: Some(1000.0),
                first_exit_us: Some(2000.0),
                first_serial_line_us: 3000.0,
                initramfs_start_us: None,
                initramfs_done_us: None,
                init_us: 5000.0,
                exit_us: 8000.0,
                crng_seeded_at_boot: true,
            }
        );
    }

    #[test]
    fn a_crng_that_becomes_ready_later_was_not_seeded_at_boot() {
        let c = capture(
            vec![
                line(4_000_000, "[    0.000000] Linux version 6.12"),
                line(5_000_000, "[   12.345678] random: crng init done"),
                line(6_000_000, "faultline-init: running 'true'"),
            ],
            vec![],
        );
        let s = linux::sample_of(linux::Vmm::Qemu, &c, "faultline-init: running", true).unwrap();
        assert!(!s.crng_seeded_at_boot);
        assert!(super::at_time_zero("[    0.000000] x"));
        assert!(!super::at_time_zero("random: crng init done"));
        assert!(!super::at_time_zero("[ garbage ] x"));
    }

    #[test]
    fn qemu_kernel_entry_is_the_last_fw_cfg_access_before_the_console() {
        let c = capture(
            vec![
                line(5_000_000, "Linux version"),
                line(7_000_000, "faultline-init: running 'true'"),
            ],
            vec![
                line(2_000_000, "fw_cfg_select 0x... key 0x19"),
                line(3_000_000, "fw_cfg_select 0x... key 0x8"),
                line(6_000_000, "fw_cfg_select late"),
            ],
        );
        let s = linux::sample_of(linux::Vmm::Qemu, &c, "faultline-init: running", true).unwrap();
        assert_eq!(s.kernel_entry_us, Some(2000.0));
        assert_eq!(s.first_exit_us, None);
        assert_eq!(s.init_us, 6000.0);
    }

    #[test]
    fn a_boot_without_the_marker_or_with_a_bad_status_is_an_error_with_its_output() {
        let c = capture(vec![line(5_000_000, "Kernel panic - not syncing")], vec![]);
        let e = linux::sample_of(linux::Vmm::Qemu, &c, "faultline-init: running", true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("without the init marker") && e.contains("Kernel panic"),
            "{e}"
        );
        let e = linux::sample_of(linux::Vmm::Faultline, &c, "x", false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("faultline boot failed (exit status 0)") && e.contains("Kernel panic"),
            "{e}"
        );
    }

    #[test]
    fn a_watchdog_status_or_a_timeout_is_a_stall_with_where_the_vcpus_were() {
        let mut c = capture(
            vec![
                line(2_000_000, "Unpacking initramfs..."),
                line(3_000_000, "HugeTLB: registered 2.00 MiB page size"),
            ],
            vec![line(
                4_000_000,
                "  vCPU 0: RIP 0xffffffff812c42a1 <pvclock_clocksource_read_nowd+0x21> RSP 0x1",
            )],
        );
        c.code = Some(devices::exit::STATUS_GUEST_STALLED);
        let o = linux::outcome_of(linux::Vmm::Faultline, 3, &c, "faultline-init", false).unwrap();
        let linux::Outcome::Stalled(s) = o else {
            panic!("not a stall: {o:?}")
        };
        assert_eq!(s.run, 3);
        assert!(s.detected_by.contains("watchdog"), "{s:?}");
        assert_eq!(s.vcpus.len(), 1);
        assert!(s.vcpus[0].starts_with("vCPU 0: RIP") && s.vcpus[0].contains("pvclock"));
        assert_eq!(
            s.last_console.last().unwrap(),
            "HugeTLB: registered 2.00 MiB page size"
        );
        // QEMU has no watchdog: the same status is a failure, a timeout is a stall.
        assert!(linux::outcome_of(linux::Vmm::Qemu, 1, &c, "x", false).is_err());
        c.timed_out = true;
        let o = linux::outcome_of(linux::Vmm::Qemu, 1, &c, "x", false).unwrap();
        assert!(matches!(o, linux::Outcome::Stalled(ref s) if s.detected_by.contains("--timeout")));
        // A completed boot carries the initramfs phase.
        let mut c = capture(
            vec![
                line(2_000_000, "Unpacking initramfs..."),
                line(5_000_000, "Freeing initrd memory: 2048K"),
                line(6_000_000, "faultline-init: running 'true'"),
            ],
            vec![],
        );
        c.code = Some(0);
        let linux::Outcome::Completed(s) =
            linux::outcome_of(linux::Vmm::Qemu, 1, &c, "faultline-init", true).unwrap()
        else {
            panic!("not completed")
        };
        assert_eq!(s.initramfs_start_us, Some(1000.0));
        assert_eq!(s.initramfs_done_us, Some(4000.0));
    }
}
