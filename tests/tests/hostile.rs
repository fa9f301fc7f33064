//! The built-in `hostile` guest against the real VMM: random values to random ports and
//! MMIO addresses, a console flood (64 KiB to the UART without a newline, 1 MiB of ucall
//! prints), 3000 sync ucalls, then a ucall whose string lies outside guest RAM.
//!
//! The VMM must report, never panic or hang: the run ends within the time limit as a guest
//! crash naming the malformed ucall; the unknown-address log and the ucall log stay
//! bounded; all the guest's output reaches the console. Needs /dev/kvm (SKIPPED without).

use faultline_tests::guest::{faultline, kvm_available, try_run_guest, VmExit};

/// Bytes the guest writes to the UART (resources/guests/src/bin/hostile.rs).
const SERIAL_FLOOD: usize = 64 * 1024;

#[test]
fn hostile_guest_is_reported_not_fatal_to_the_vmm() {
    if !kvm_available("hostile_guest_is_reported_not_fatal_to_the_vmm") {
        return;
    }
    let out = faultline(&["run", "--guest", "hostile"]);
    assert_eq!(out.code(), 102, "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert!(
        out.stderr.contains("malformed ucall") && out.stderr.contains("outside guest RAM"),
        "{}",
        out.stderr
    );
    for bus in ["port", "MMIO"] {
        let capped =
            format!("more than 64 unknown {bus} addresses accessed; further ones are not logged");
        assert_eq!(out.stderr.matches(&capped).count(), 1, "{}", out.stderr);
    }
    // 64 + 64 unknown-address lines and a few others: bounded, whatever the guest does.
    assert!(
        out.stderr.len() < 32 * 1024,
        "stderr is {} bytes",
        out.stderr.len()
    );
    let flood = "abcdefghijklmnopqrstuvwxyz".repeat(SERIAL_FLOOD / 26);
    assert!(
        out.stdout.contains(&flood),
        "serial flood missing from stdout"
    );
    assert!(
        out.stdout.len() >= SERIAL_FLOOD + (1 << 20),
        "stdout only {} bytes",
        out.stdout.len()
    );
}

#[test]
fn hostile_guest_through_the_library_keeps_its_logs_bounded() {
    if !kvm_available("hostile_guest_through_the_library_keeps_its_logs_bounded") {
        return;
    }
    let run = try_run_guest("hostile", 1).unwrap();
    match &run.outcome.exit {
        VmExit::Crash { vcpu: 0, reason } => {
            assert!(reason.contains("malformed ucall"), "{reason}");
        }
        other => panic!("expected a malformed-ucall crash, got {other:?}"),
    }
    assert_eq!(run.outcome.ucalls.len(), devices::ucall::MAX_LOGGED);
    assert_eq!(
        run.outcome.unknown_ports.len(),
        devices::bus::MAX_UNKNOWN_LOGGED
    );
    assert_eq!(
        run.outcome.unknown_mmio.len(),
        devices::bus::MAX_UNKNOWN_LOGGED
    );
}

#[test]
fn hostile_is_a_listed_builtin_guest() {
    let out = faultline(&["run", "--list-guests"]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(
        out.stdout.lines().any(|l| l.starts_with("hostile")),
        "{}",
        out.stdout
    );
}
