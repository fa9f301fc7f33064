//! `faultline test mm` on real KVM: the kernel's MM selftests in faultline's guest.
//!
//! Two boots (each ~100 s to init on the nested KVM here, then the tests):
//! - the smoke set plus a test that does not exist: every smoke test has a PASS row in the
//!   table and a `pass` entry in the JSON, the missing one is MISSING and the exit status is
//!   2 (a requested test that never reports must fail the run);
//! - a tiny extra script printing `not ok`, one that hangs, and mkdirty, with a 20 s
//!   limit: FAIL, TIMEOUT, PASS and exit status 1.
//!
//! Fixtures: the guest kernel and the static selftests are built on first use
//! (resources/guest-kernel/build.sh, resources/selftests/build.sh) and cached.

use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use faultline_tests::fixtures;

static BOOT_LOCK: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    BOOT_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// One `faultline test mm` run: the boot allowance plus its tests, on a loaded 2-core host.
const RUN_LIMIT: Duration = Duration::from_secs(1200);

fn test_mm(args: &[&str]) -> fixtures::RunOutput {
    fixtures::guest_kernel().unwrap_or_else(|e| panic!("the guest kernel fixture failed: {e}"));
    let mut cmd = Command::new(fixtures::faultline_bin());
    cmd.arg("test").arg("mm").args(args);
    eprintln!("test_mm: {cmd:?}");
    let out = fixtures::run_with_timeout(cmd, RUN_LIMIT);
    eprintln!(
        "test_mm: exited {:?} after {:.0} s",
        out.status,
        out.elapsed.as_secs_f64()
    );
    out
}

/// The table row of `name`: (result, reason).
fn row<'a>(table: &'a str, name: &str) -> Option<(&'a str, &'a str)> {
    table.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        if !rest.starts_with("  ") {
            return None;
        }
        let mut words = rest.split_whitespace();
        let result = words.next()?;
        let _secs = words.next()?;
        let reason_at = rest.find(result)? + result.len();
        Some((result, rest[reason_at..].trim()))
    })
}

#[test]
fn smoke_set_reports_each_test_and_a_missing_test_gives_2() {
    if !fixtures::kvm_available("smoke_set_reports_each_test_and_a_missing_test_gives_2") {
        return;
    }
    let _serial = one_at_a_time();
    let dir = std::env::temp_dir().join(format!("faultline-test-mm-{}", std::process::id()));
    let json = dir.join("mm.json");
    let junit = dir.join("mm.xml");
    let logs = dir.join("logs");
    std::fs::create_dir_all(&dir).unwrap();
    let mut args: Vec<&str> = vmm::selftests::catalogue::SMOKE.to_vec();
    args.push("no-such-mm-test");
    let (j, x, l) = (
        json.to_str().unwrap(),
        junit.to_str().unwrap(),
        logs.to_str().unwrap(),
    );
    args.extend_from_slice(&["--json", j, "--junit", x, "--output", l]);
    let out = test_mm(&args);
    let ctx = || out.transcript();
    assert_eq!(out.code(), 2, "a missing test must give exit 2\n{}", ctx());
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&json).unwrap_or_else(|e| panic!("no JSON ({e})\n{}", ctx())),
    )
    .unwrap();
    for name in vmm::selftests::catalogue::SMOKE {
        assert_eq!(
            row(&out.stdout, name).map(|r| r.0),
            Some("PASS"),
            "{name}\n{}",
            ctx()
        );
        assert_eq!(
            json["mm"][name]["result"],
            "pass",
            "{name} in the JSON\n{}",
            ctx()
        );
        assert!(json["mm"][name]["duration"].as_f64().unwrap() > 0.0);
        let log = logs.join(vmm::selftests::report::log_file_name(name));
        assert!(log.exists(), "{} missing", log.display());
    }
    // madv_populate's own TAP is parsed into subtests.
    assert!(
        json["mm.madv_populate"]
            .as_object()
            .is_some_and(|o| o.len() >= 3),
        "madv_populate's subtests\n{}",
        ctx()
    );
    let (res, reason) = row(&out.stdout, "no-such-mm-test").expect("missing test row");
    assert_eq!(res, "MISSING");
    assert!(reason.contains("not in the selftest directory"), "{reason}");
    assert_eq!(json["mm"]["no-such-mm-test"]["result"], "unknown");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("<testcase name=\"mkdirty\" classname=\"mm.mkdirty\""),
        "{xml}"
    );
    assert!(xml.contains("failures=\"1\""), "{xml}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failing_program_gives_1_and_a_hung_one_times_out() {
    if !fixtures::kvm_available("a_failing_program_gives_1_and_a_hung_one_times_out") {
        return;
    }
    let _serial = one_at_a_time();
    let dir = std::env::temp_dir().join(format!("faultline-test-mm-extra-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fail = dir.join("made-to-fail");
    let hang = dir.join("made-to-hang");
    std::fs::write(
        &fail,
        "#!/bin/sh\necho 'TAP version 13'\necho '1..2'\necho 'ok 1 fine'\necho 'not ok 2 made to fail'\nexit 1\n",
    )
    .unwrap();
    std::fs::write(
        &hang,
        "#!/bin/sh\necho 'TAP version 13'\necho '1..1'\nsleep 100000\n",
    )
    .unwrap();
    let (f, h) = (fail.to_str().unwrap(), hang.to_str().unwrap());
    let out = test_mm(&[
        "--extra",
        f,
        "--extra",
        h,
        "--timeout",
        "20",
        "made-to-fail",
        "made-to-hang",
        "mkdirty",
    ]);
    let ctx = || out.transcript();
    assert_eq!(
        out.code(),
        1,
        "a failed and a timed-out test give exit 1\n{}",
        ctx()
    );
    let (res, reason) = row(&out.stdout, "made-to-fail").expect("row");
    assert_eq!(res, "FAIL", "{}", ctx());
    assert!(
        reason.contains("2 made to fail"),
        "the failed subtest is named: {reason}"
    );
    assert_eq!(
        row(&out.stdout, "made-to-hang").map(|r| r.0),
        Some("TIMEOUT"),
        "{}",
        ctx()
    );
    assert_eq!(
        row(&out.stdout, "mkdirty").map(|r| r.0),
        Some("PASS"),
        "{}",
        ctx()
    );
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}
