//! The stuck-guest watchdog on real KVM: a built-in guest that spins with interrupts off
//! never exits to the VMM; `--watchdog` ends it with status 103 and names the guest's loop
//! (from the guest's ELF symbols) with each vCPU's registers. Limits: the report's RIP is
//! wherever the kick found the vCPU, which for this guest is always inside its loop.

use faultline_tests::fixtures::{faultline_bin, run_with_timeout};
use std::process::Command;
use std::time::Duration;

#[test]
fn a_guest_spinning_with_interrupts_off_is_reported_where_it_spins() {
    if !vmm::testing::kvm_or_skip("a_guest_spinning_with_interrupts_off_is_reported") {
        return;
    }
    let mut cmd = Command::new(faultline_bin());
    cmd.args(["run", "--guest", "spin", "--vcpus", "2", "--watchdog", "2"]);
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    assert_eq!(
        out.code(),
        devices::exit::STATUS_GUEST_STALLED,
        "{}",
        out.transcript()
    );
    for v in ["vCPU 0: RIP", "vCPU 1: RIP"] {
        let line = out
            .stderr
            .lines()
            .find(|l| l.contains(v))
            .unwrap_or_else(|| panic!("no {v} line:\n{}", out.transcript()));
        assert!(line.contains("<spin_forever+"), "names the loop: {line}");
        assert!(
            line.contains("RSP") && line.contains("CR3") && line.contains("RFLAGS"),
            "{line}"
        );
        assert!(
            line.contains("eb fe"),
            "the bytes at RIP are the jump to itself: {line}"
        );
    }
    // Without the switch a built-in guest has no watchdog; with 0 it is off.
    let mut cmd = Command::new(faultline_bin());
    cmd.args(["run", "--guest", "hello", "--watchdog", "0"]);
    assert_eq!(run_with_timeout(cmd, Duration::from_secs(60)).code(), 0);
}
