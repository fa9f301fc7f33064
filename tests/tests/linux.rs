//! Linux guests on real KVM, through the `faultline` binary.
//!
//! - A stock Debian cloud kernel: the loader and the entry state are right if its banner
//!   ("Linux version") reaches the serial port; on the nested KVM of the development machines
//!   it then dies early (an instruction KVM cannot emulate, see shared/reference/platform.md),
//!   and faultline must report that with a non-zero status and a message, not hang.
//! - faultline's own guest kernel (resources/guest-kernel/), as a bzImage (64-bit boot
//!   protocol, zero page) and as an ELF vmlinux (the 64-bit boot protocol by default, and
//!   `--boot-protocol pvh`: PVH entry, hvm_start_info), with 1 and 2 vCPUs: it reaches
//!   busybox userspace, runs the command given after `--`, and `faultline run` exits with
//!   the command's status. A zero-page boot's kernel reports its CRNG ready at time zero
//!   (faultline's SETUP_RNG_SEED); a PVH boot's does not.
//!
//! Fixtures (the guest kernel build takes ~6-8 minutes on 2 cores the first time, the Debian
//! kernel a download) are built on first use by the resources/ scripts and cached outside
//! the repo; see `faultline_tests::fixtures`. Boots take 17-40 s each on the nested KVM here
//! with nothing else running (80-150 s before the boot fixes of sessions 4-6), so the tests
//! run one at a time (BOOT_LOCK) and the set is kept small: 5 boots of our kernel (one panics
//! on purpose), 2 more in `bench boot --initcalls`, and 1 of Debian's. Each boot has a time limit; a hung guest fails its test.
//!
//! Limits: the tests check what reaches the serial console and the exit status, not the
//! boot's speed (that is `faultline bench boot`). Boots are not retried: a stall fails its
//! test with the watchdog's report (vCPU RIPs, last console lines). The early-boot stall
//! these tests used to retry was the periodic tick's catch-up loop in
//! `tick_handle_periodic()`, which never ends on this host when one emulated tick takes
//! longer than its period, and RCU's stall report locking up both vCPUs; the guest kernel's
//! `pvm_tick_skip_missed` option (resources/guest-kernel/pvm-guest.patch) and
//! `rcupdate.rcu_cpu_stall_timeout=300` (cmdline.txt) end them (README, Known problems).

use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use faultline_tests::fixtures::{self, RunOutput};

/// One test at a time, fixture builds included: on 2 cores a boot racing the kernel build
/// or another boot only slows both down.
static BOOT_LOCK: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    BOOT_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Time limit of one boot: a safety net against hangs. An unloaded boot of faultline's
/// kernel takes ~20-40 s here (QEMU microvm's figures in shared/reference/platform.md) and
/// Debian's a minute or two; with several VMs and builds sharing the 2 cores, boots took
/// 3-6 minutes and a few hung for good in early boot (see the module docs). Five boots at
/// this limit stay well inside CI's 90 minutes.
const BOOT_LIMIT: Duration = Duration::from_secs(300);

/// The command run in the guest: prints a marker and the number of CPUs Linux brought up,
/// then exits with 7.
const GUEST_SCRIPT: &str =
    "echo hello-from-guest; echo cpus=$(grep -c ^processor /proc/cpuinfo); exit 7";

fn boot(kernel: &Path, extra: &[&str], guest_cmd: &[&str]) -> RunOutput {
    let mut cmd = Command::new(fixtures::faultline_bin());
    cmd.arg("run").arg("--kernel").arg(kernel).args(extra);
    if !guest_cmd.is_empty() {
        cmd.arg("--").args(guest_cmd);
    }
    eprintln!("linux: {cmd:?}");
    let out = fixtures::run_with_timeout(cmd, BOOT_LIMIT);
    eprintln!(
        "linux: {} exited {:?} after {:.1} s",
        kernel.display(),
        out.status,
        out.elapsed.as_secs_f64()
    );
    // No retry: the watchdog (on by default with `-- CMD`) ends a stuck guest with status
    // 103 and says where its vCPUs are; that fails the test with its report.
    let stalled = out.status.and_then(|s| s.code()) == Some(devices::exit::STATUS_GUEST_STALLED);
    assert!(
        !stalled,
        "the guest stalled (the watchdog's report is in stderr)\n{}",
        out.transcript()
    );
    out
}

fn guest_kernel_or_fail() -> fixtures::GuestKernel {
    fixtures::guest_kernel().unwrap_or_else(|e| panic!("the guest kernel fixture failed: {e}"))
}

/// Boots faultline's kernel and checks the command ran on `vcpus` CPUs and its status came
/// back.
fn check_guest_kernel_runs_command(kernel: &Path, vcpus: u32, extra: &[&str]) {
    let vcpus_arg = vcpus.to_string();
    let mut args = vec!["--vcpus", vcpus_arg.as_str()];
    args.extend_from_slice(extra);
    let out = boot(kernel, &args, &["sh", "-c", GUEST_SCRIPT]);
    let code = out.code();
    let lines: Vec<&str> = out.stdout.lines().map(str::trim).collect();
    let ctx = || out.transcript();
    assert!(
        out.stdout.contains("Linux version"),
        "no kernel banner on the serial port\n{}",
        ctx()
    );
    assert!(
        lines.contains(&"hello-from-guest"),
        "the guest command's output is missing\n{}",
        ctx()
    );
    let want = format!("cpus={vcpus}");
    assert!(
        lines.contains(&want.as_str()),
        "the guest did not see {vcpus} CPUs ({want} missing)\n{}",
        ctx()
    );
    assert_eq!(
        code,
        7,
        "faultline run must exit with the command's status\n{}",
        ctx()
    );
    // The seed faultline puts in the zero page (setup_data SETUP_RNG_SEED) made the CRNG
    // ready before the kernel's clock ran; PVH carries no setup_data.
    let pvh = extra.windows(2).any(|w| w == ["--boot-protocol", "pvh"]);
    let seeded = lines
        .iter()
        .any(|l| l.starts_with("[    0.000000] random: crng init done"));
    assert_eq!(
        seeded,
        !pvh,
        "CRNG seeded at boot: expected {} with {}\n{}",
        !pvh,
        if pvh { "PVH" } else { "a zero page" },
        ctx()
    );
}

#[test]
fn guest_kernel_bzimage_runs_a_command_on_1_vcpu() {
    if !fixtures::kvm_available("guest_kernel_bzimage_runs_a_command_on_1_vcpu") {
        return;
    }
    let _serial = one_at_a_time();
    let k = guest_kernel_or_fail();
    check_guest_kernel_runs_command(&k.bzimage, 1, &[]);
}

#[test]
fn guest_kernel_bzimage_runs_a_command_on_2_vcpus() {
    if !fixtures::kvm_available("guest_kernel_bzimage_runs_a_command_on_2_vcpus") {
        return;
    }
    let _serial = one_at_a_time();
    let k = guest_kernel_or_fail();
    check_guest_kernel_runs_command(&k.bzimage, 2, &[]);
}

#[test]
fn guest_kernel_pvh_vmlinux_runs_a_command_on_1_vcpu() {
    if !fixtures::kvm_available("guest_kernel_pvh_vmlinux_runs_a_command_on_1_vcpu") {
        return;
    }
    let _serial = one_at_a_time();
    let k = guest_kernel_or_fail();
    check_guest_kernel_runs_command(&k.vmlinux, 1, &["--boot-protocol", "pvh"]);
}

/// Also covers a hand-built initramfs (resources/initramfs/build.sh) given with --initrd:
/// the command after `--` is appended to it as a second cpio archive.
#[test]
fn guest_kernel_vmlinux_runs_a_command_on_2_vcpus_with_script_built_initrd() {
    if !fixtures::kvm_available("guest_kernel_vmlinux_runs_a_command_on_2_vcpus") {
        return;
    }
    let _serial = one_at_a_time();
    let k = guest_kernel_or_fail();
    let initrd =
        fixtures::base_initramfs().unwrap_or_else(|e| panic!("the initramfs fixture failed: {e}"));
    let initrd = initrd.to_str().expect("UTF-8 cache path");
    check_guest_kernel_runs_command(&k.vmlinux, 2, &["--initrd", initrd]);
}

#[test]
fn debian_cloud_kernel_prints_its_banner_and_its_failure_is_reported() {
    if !fixtures::kvm_available("debian_cloud_kernel_prints_its_banner_and_its_failure_is_reported")
    {
        return;
    }
    let _serial = one_at_a_time();
    let kernel = fixtures::debian_kernel()
        .unwrap_or_else(|e| panic!("the Debian kernel fixture failed: {e}"));
    let out = boot(&kernel, &["--memory", "512M"], &[]);
    let code = out.code();
    let ctx = || out.transcript();
    assert!(
        out.stdout.contains("Linux version"),
        "no kernel banner on the serial port\n{}",
        ctx()
    );
    // Whatever kills it here (KVM internal error, triple fault, panic -> reset), the VMM
    // must say so and fail; a stock kernel cannot reach an init in this setup.
    assert_ne!(code, 0, "a guest that died must not exit 0\n{}", ctx());
    assert!(
        !out.stderr.trim().is_empty(),
        "the VMM printed no reason for the failure\n{}",
        ctx()
    );
}

/// A kernel that panics (here: no initramfs and no root device) resets the machine because
/// of `panic=-1`; faultline must report that as a crash with the panic line, not as a clean
/// reset with status 0.
#[test]
fn guest_kernel_panic_is_reported_as_a_crash() {
    if !fixtures::kvm_available("guest_kernel_panic_is_reported_as_a_crash") {
        return;
    }
    let _serial = one_at_a_time();
    let k = guest_kernel_or_fail();
    let out = boot(
        &k.vmlinux,
        &["--cmdline", "console=ttyS0 reboot=k panic=-1"],
        &[],
    );
    let ctx = || out.transcript();
    assert!(
        out.stdout.contains("Kernel panic - not syncing"),
        "the guest was expected to panic (no root device)\n{}",
        ctx()
    );
    assert_eq!(
        out.code(),
        102,
        "a panic must exit with the crash status\n{}",
        ctx()
    );
    assert!(
        out.stderr.contains("the guest kernel panicked"),
        "the VMM must say the guest panicked\n{}",
        ctx()
    );
}

/// `faultline bench boot` on faultline's kernel, faultline only (`--no-qemu`), one timed
/// boot and `--initcalls`: the timed boot reaches init without a stall, and the diagnostic
/// boot's kernel log gives each initcall's time, the initramfs unpack (`populate_rootfs`,
/// synchronous under `initramfs_async=0`) among them.
#[test]
fn bench_boot_times_a_boot_and_its_initcalls() {
    if !fixtures::kvm_available("bench_boot_times_a_boot_and_its_initcalls") {
        return;
    }
    let _serial = one_at_a_time();
    let k = guest_kernel_or_fail();
    let json = std::env::temp_dir().join(format!("bench-boot-{}.json", std::process::id()));
    let mut cmd = Command::new(fixtures::faultline_bin());
    cmd.args([
        "bench",
        "boot",
        "--no-qemu",
        "--runs",
        "1",
        "--initcalls",
        "5",
    ])
    .arg("--kernel")
    .arg(&k.vmlinux)
    .arg("--json")
    .arg(&json);
    let out = fixtures::run_with_timeout(cmd, 2 * BOOT_LIMIT);
    let ctx = || out.transcript();
    assert_eq!(out.code(), 0, "bench boot failed\n{}", ctx());
    assert!(
        out.stdout.contains("stalls: faultline 0 of 1 boots"),
        "{}",
        ctx()
    );
    assert!(
        out.stdout.contains("slowest 5:"),
        "no initcall table\n{}",
        ctx()
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON report"))
            .expect("the JSON report parses");
    let _ = std::fs::remove_file(&json);
    assert!(
        report["faultline"]["init_us"]["median"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0,
        "{report}"
    );
    let calls = report["initcalls"]["faultline"]
        .as_array()
        .expect("initcalls");
    assert!(
        calls.len() > 50,
        "only {} initcalls parsed\n{}",
        calls.len(),
        ctx()
    );
    let unpack = calls
        .iter()
        .find(|c| c["name"] == "populate_rootfs")
        .unwrap_or_else(|| panic!("no populate_rootfs among the initcalls\n{}", ctx()));
    assert!(unpack["usecs"].as_u64().unwrap_or(0) > 0, "{unpack}");
}
