//! `faultline run` with each built-in guest, through the real binary and the library API.
//!
//! Checks the exit status each guest asks for (done, debug-exit, assertion, triple fault),
//! the console output, that unknown ports/MMIO are logged once and are not fatal, that a
//! guest assertion becomes a host failure naming the guest's file:line, and that every RAM
//! backing runs the default guest. Needs /dev/kvm; each test prints SKIPPED without it.
//! Limits: one short guest per test; timing is not checked here (see `faultline bench boot`).

use faultline_tests::guest::{
    faultline, guest_config, kvm_available, run_guest, try_run_guest, try_run_vm, VmExit,
};

#[test]
fn default_guest_prints_touches_memory_and_exits_0() {
    if !kvm_available("default_guest_prints_touches_memory_and_exits_0") {
        return;
    }
    let out = faultline(&["run"]);
    assert_eq!(out.code(), 0, "stderr: {}", out.stderr);
    assert!(
        out.stdout
            .contains("Hello from faultline's guest: vCPU 0 of 1, 256 MiB of RAM"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("Wrote and verified 8192 pages (32 MiB)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("guest program done with status 0"),
        "{}",
        out.stderr
    );
}

#[test]
fn list_guests_names_every_builtin_guest() {
    let out = faultline(&["run", "--list-guests"]);
    assert_eq!(out.code(), 0);
    for g in [
        "hello",
        "smp",
        "assert-fail",
        "exit-code",
        "triple-fault",
        "unknown-port",
    ] {
        assert!(
            out.stdout.lines().any(|l| l.starts_with(g)),
            "{g} missing from:\n{}",
            out.stdout
        );
    }
}

#[test]
fn exit_code_guest_exits_with_its_debug_exit_value() {
    if !kvm_available("exit_code_guest_exits_with_its_debug_exit_value") {
        return;
    }
    let out = faultline(&["run", "--guest", "exit-code"]);
    assert_eq!(out.code(), 42, "stderr: {}", out.stderr);
    assert!(
        out.stderr.contains("guest wrote 42 to the debug-exit port"),
        "{}",
        out.stderr
    );
}

#[test]
fn guest_assertion_reports_file_line_and_message_and_fails() {
    if !kvm_available("guest_assertion_reports_file_line_and_message_and_fails") {
        return;
    }
    let out = faultline(&["run", "--guest", "assert-fail"]);
    assert_eq!(
        out.code(),
        devices::exit::STATUS_GUEST_ASSERT,
        "stderr: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("guest assertion failed on vCPU 0 at src/bin/assert-fail.rs:13: arithmetic works in the guest: 2 (0x2) != 3 (0x3)"),
        "{}",
        out.stderr
    );
}

#[test]
#[should_panic(
    expected = "guest assertion failed at src/bin/assert-fail.rs:13 (vCPU 0): arithmetic works in the guest"
)]
fn guest_assertion_fails_the_host_test_with_the_guest_location() {
    if !kvm_available("guest_assertion_fails_the_host_test_with_the_guest_location") {
        panic!("guest assertion failed at src/bin/assert-fail.rs:13 (vCPU 0): arithmetic works in the guest (skipped: no KVM)");
    }
    run_guest("assert-fail", 1);
}

#[test]
fn triple_fault_is_reported_as_a_crash_with_rip_and_bytes() {
    if !kvm_available("triple_fault_is_reported_as_a_crash_with_rip_and_bytes") {
        return;
    }
    let out = faultline(&["run", "--guest", "triple-fault"]);
    assert_eq!(
        out.code(),
        devices::exit::STATUS_GUEST_CRASH,
        "stderr: {}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("KVM_EXIT_SHUTDOWN (triple fault) at RIP 0x2"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("instruction bytes ["), "{}", out.stderr);
}

#[test]
fn unknown_ports_and_mmio_are_logged_once_and_not_fatal() {
    if !kvm_available("unknown_ports_and_mmio_are_logged_once_and_not_fatal") {
        return;
    }
    let out = faultline(&["run", "--guest", "unknown-port"]);
    assert_eq!(out.code(), 0, "stderr: {}", out.stderr);
    assert_eq!(
        out.stderr.matches("unknown port address 0x80 ").count(),
        1,
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("read of unknown port address 0x2f8"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("write of unknown MMIO address 0xd0000000"),
        "{}",
        out.stderr
    );

    let run = try_run_guest("unknown-port", 1).unwrap();
    assert_eq!(run.outcome.exit, VmExit::Done(0));
    assert_eq!(run.outcome.unknown_ports, vec![0x80, 0x2f8]);
    assert_eq!(run.outcome.unknown_mmio, vec![0xd000_0000]);
}

#[test]
fn library_run_reports_ucalls_and_timeline() {
    if !kvm_available("library_run_reports_ucalls_and_timeline") {
        return;
    }
    let run = run_guest("hello", 1);
    assert!(run.console.contains("all good"), "{}", run.console);
    let t = run.outcome.timeline;
    let first = t.first_exit.expect("the guest made at least one exit");
    assert!(t.start <= t.vcpus_started && t.vcpus_started <= first && first <= t.end);
    assert!(
        run.outcome.vcpu_stats[0].exit_io >= 3,
        "{:?}",
        run.outcome.vcpu_stats
    );
}

#[test]
fn every_backing_runs_the_default_guest() {
    if !kvm_available("every_backing_runs_the_default_guest") {
        return;
    }
    // 64 MiB of guest RAM in 2 MiB pages for the hugetlb backing.
    let _pages = vmm::skip_unless!(faultline_tests::fixtures::reserve_huge_pages(2048, 32));
    for backing in vmm::config::RAM_BACKINGS {
        let mut cfg = guest_config("hello", 1);
        cfg.memory.size = 64 << 20;
        cfg.memory.backing = backing;
        match try_run_vm(cfg) {
            Ok(run) => assert_eq!(
                run.outcome.exit,
                VmExit::Done(0),
                "{backing}: {}",
                run.console
            ),
            Err(e) => panic!("{backing}: {e}"),
        }
    }
}

#[test]
fn host_stdin_reaches_the_guest_serial_port_and_uart_output_reaches_stdout() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    if !kvm_available("host_stdin_reaches_the_guest_serial_port_and_uart_output_reaches_stdout") {
        return;
    }
    let mut child = Command::new(faultline_tests::fixtures::faultline_bin())
        .args(["run", "--guest", "serial-echo"])
        .env_remove("FAULTLINE_KVM_DEVICE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello from the host\n")
        .unwrap();
    // The guest polls the UART; a hang would fail the whole test run, so bound it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("serial-echo did not finish within 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("serial: ready for a line"), "{stdout}");
    assert!(stdout.contains("echo: hello from the host"), "{stdout}");
}

/// `Seccomp:` of every thread of `pid`, by thread name (2 = a filter is installed).
fn seccomp_modes(pid: u32) -> Vec<(String, String)> {
    let mut v = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return v;
    };
    for t in dir.flatten() {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        v.push((field("Name:"), field("Seccomp:")));
    }
    v.sort();
    v
}

/// With filters on (the default) the main, vCPU and event-loop threads of a running
/// `faultline run` have a seccomp filter; with `--no-seccomp` none has, and both runs end
/// normally.
#[test]
fn run_filters_its_threads_by_default_and_not_with_no_seccomp() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    if !kvm_available("run_filters_its_threads_by_default_and_not_with_no_seccomp") {
        return;
    }
    for no_seccomp in [false, true] {
        let mut args = vec!["run", "--guest", "serial-echo"];
        if no_seccomp {
            args.push("--no-seccomp");
        }
        // serial-echo waits for a line on stdin: the threads can be inspected meanwhile.
        let mut child = Command::new(faultline_tests::fixtures::faultline_bin())
            .args(&args)
            .env_remove("FAULTLINE_KVM_DEVICE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut modes = seccomp_modes(child.id());
        while !modes.iter().any(|m| m.0 == "vmm-event") && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
            modes = seccomp_modes(child.id());
        }
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"hi\n").unwrap();
        drop(stdin);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("serial-echo did not finish within 60 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("seccomp"), "{args:?}: {stderr}");
        let want = if no_seccomp { "0" } else { "2" };
        for name in ["faultline", "vcpu0", "vmm-event"] {
            let m = modes.iter().find(|m| m.0 == name);
            assert_eq!(
                m.map(|m| m.1.as_str()),
                Some(want),
                "{args:?}: thread {name}: {modes:?}"
            );
        }
    }
}
