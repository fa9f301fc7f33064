//! Bad input to `faultline run`: each gets a clear message naming the problem and the fix,
//! and a non-zero exit status, never a panic. Runs the real binary.
//!
//! The unreadable-device case runs the binary as uid 65534 when the tests run as root
//! (root can open anything); otherwise it points --kvm-device at a mode-000 file.

use faultline_tests::fixtures::RunOutput;
use faultline_tests::guest::{faultline, faultline_env};
use std::os::unix::fs::PermissionsExt;

#[track_caller]
fn assert_error(out: &RunOutput, status: i32, needles: &[&str]) {
    assert_eq!(
        out.code(),
        status,
        "stdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    for n in needles {
        assert!(
            out.stderr.contains(n),
            "expected {n:?} in stderr:\n{}",
            out.stderr
        );
    }
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

fn temp_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("faultline-test-{}-{name}", std::process::id()));
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn missing_kernel_file() {
    let out = faultline(&["run", "--kernel", "/nonexistent/bzImage"]);
    assert_error(
        &out,
        1,
        &["Kernel \"/nonexistent/bzImage\" not found", "--kernel"],
    );
}

#[test]
fn a_file_that_is_not_a_kernel() {
    let junk = temp_file("junk", &[0x5a; 4096]);
    let out = faultline(&["run", "--kernel", junk.to_str().unwrap()]);
    assert_error(
        &out,
        1,
        &[
            junk.to_str().unwrap(),
            "neither a bzImage nor an ELF vmlinux",
        ],
    );
    let _ = std::fs::remove_file(junk);
}

#[test]
fn missing_initrd() {
    let k = temp_file("k", b"x");
    let out = faultline(&[
        "run",
        "--kernel",
        k.to_str().unwrap(),
        "--initrd",
        "/nonexistent/initrd",
    ]);
    assert_error(
        &out,
        1,
        &["Initrd \"/nonexistent/initrd\" not found", "--initrd"],
    );
    let _ = std::fs::remove_file(k);
}

#[test]
fn initrd_or_command_without_kernel() {
    assert_error(
        &faultline(&["run", "--initrd", "/x"]),
        1,
        &["--initrd needs --kernel"],
    );
    assert_error(&faultline(&["run", "--", "ls"]), 1, &["needs --kernel"]);
}

#[test]
fn memory_zero() {
    assert_error(
        &faultline(&["run", "--memory", "0"]),
        1,
        &["--memory 0", "e.g. --memory 256M"],
    );
}

#[test]
fn memory_that_does_not_parse() {
    let out = faultline(&["run", "--memory", "lots"]);
    assert_error(&out, 2, &["\"lots\" does not parse", "256M"]);
}

#[test]
fn memory_above_host_ram() {
    assert_error(
        &faultline(&["run", "--memory", "100T"]),
        1,
        &["--memory 100T", "more than this host's RAM"],
    );
}

#[test]
fn vcpus_zero() {
    assert_error(
        &faultline(&["run", "--vcpus", "0"]),
        1,
        &["--vcpus 0", "at least one vCPU"],
    );
}

#[test]
fn vcpus_far_too_many() {
    assert_error(
        &faultline(&["run", "--vcpus", "100000"]),
        1,
        &["--vcpus 100000", "above the limit"],
    );
}

#[test]
fn unknown_guest_and_backing() {
    assert_error(
        &faultline(&["run", "--guest", "nope"]),
        1,
        &["Unknown built-in guest \"nope\"", "--list-guests"],
    );
    assert_error(
        &faultline(&["run", "--backing", "huge"]),
        2,
        &["anon, thp, shmem, hugetlb"],
    );
}

#[test]
fn kvm_device_that_does_not_exist() {
    let out = faultline(&["run", "--kvm-device", "/nonexistent/kvm"]);
    assert_error(
        &out,
        1,
        &[
            "KVM device \"/nonexistent/kvm\" does not exist",
            "modprobe",
            "--kvm-device",
        ],
    );
    let out = faultline_env(&["run"], &[("FAULTLINE_KVM_DEVICE", "/nonexistent/kvm2")]);
    assert_error(&out, 1, &["\"/nonexistent/kvm2\" does not exist"]);
}

#[test]
fn kvm_device_that_is_not_kvm() {
    assert_error(
        &faultline(&["run", "--kvm-device", "/dev/null"]),
        1,
        &["\"/dev/null\" is not a KVM device"],
    );
}

#[test]
fn kvm_device_without_permission() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let out = if root {
        // Root may open anything, and /dev/kvm may be world-accessible: run as `nobody`
        // against a private node of the KVM device (char 10:232) that only root may open,
        // so the refusal happens whatever the host's /dev/kvm allows.
        let dir = std::env::temp_dir().join(format!("faultline-kvm-node-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let node = dir.join("kvm");
        let _ = std::fs::remove_file(&node);
        let c_node = std::ffi::CString::new(node.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C path; mknod creates a device node and touches nothing else.
        let r = unsafe {
            libc::mknod(
                c_node.as_ptr(),
                libc::S_IFCHR | 0o600,
                libc::makedev(10, 232),
            )
        };
        assert_eq!(
            r,
            0,
            "mknod {}: {}",
            node.display(),
            std::io::Error::last_os_error()
        );
        let mut cmd = std::process::Command::new(faultline_tests::fixtures::faultline_bin());
        std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
        std::os::unix::process::CommandExt::gid(&mut cmd, 65534);
        cmd.args(["run", "--kvm-device"]).arg(&node);
        let out =
            faultline_tests::fixtures::run_with_timeout(cmd, std::time::Duration::from_secs(30));
        let _ = std::fs::remove_dir_all(&dir);
        out
    } else {
        let f = temp_file("kvm-000", b"");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o000)).unwrap();
        let out = faultline(&["run", "--kvm-device", f.to_str().unwrap()]);
        let _ = std::fs::remove_file(f);
        out
    };
    assert_error(
        &out,
        1,
        &[
            "No permission to open KVM device",
            "sudo usermod -aG kvm $USER",
        ],
    );
}
