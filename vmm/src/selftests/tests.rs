//! Unit tests of planning and of the verdict on recorded consoles (no KVM).

use super::*;

fn args(tests: &[&str]) -> MmArgs {
    use clap::Parser;
    #[derive(Parser)]
    struct W {
        #[command(flatten)]
        a: MmArgs,
    }
    let mut v = vec!["x"];
    v.extend_from_slice(tests);
    W::try_parse_from(v).unwrap().a
}

fn planned(names: &[&str]) -> Vec<Planned> {
    plan(&args(names), &[], &[], 30).unwrap()
}

#[test]
fn plan_defaults_to_smoke_and_selects_by_program_category_and_skips() {
    let p = planned(&[]);
    assert_eq!(p.len(), catalogue::SMOKE.len());
    let gup = planned(&["gup_test"]);
    assert_eq!(gup.len(), 3, "gup_test selects its three variants");
    let uffd = plan(&args(&["-t", "userfaultfd"]), &[], &[], 30).unwrap();
    assert!(uffd.iter().all(|p| p.test.category == "userfaultfd") && uffd.len() == 6);
    let e = plan(&args(&["-t", "nope"]), &[], &[], 30).unwrap_err();
    assert!(e.to_string().contains("--list"), "{e}");
    let skips = vec![("cow".to_string(), "hangs".to_string())];
    let unavail = vec![("khugepaged".to_string(), "did not build: x".to_string())];
    let p = plan(&args(&["cow", "khugepaged", "mine"]), &skips, &unavail, 30).unwrap();
    assert_eq!(p[0].skip.as_deref(), Some("hangs"));
    assert_eq!(p[1].skip.as_deref(), Some("khugepaged did not build: x"));
    assert_eq!(p[2].test.name, "khugepaged -s 2");
    assert!(
        p[2].skip.is_some(),
        "every variant of an unavailable program is skipped"
    );
    assert_eq!(
        (p[3].test.category.as_str(), p[3].test.command.as_str()),
        ("extra", "./'mine'")
    );
    let tf = tests_file(&p);
    assert_eq!(tf, "mine\t30\tmine\t./'mine'\n");
}

const CONSOLE: &str = "\
[   90.1] Run /init as init process
faultline-init: running mm selftests
KTAP version 1
1..3
# faultline-mm: start mkdirty
  TAP version 13
  1..2
  ok 1 ptrace write
  ok 2 # SKIP MAP_HUGETLB unsupported
# faultline-mm: end mkdirty status 0 seconds 1.25
ok 1 mkdirty
# faultline-mm: start fails
  not ok 1 made to fail
  # error: it was told to
# faultline-mm: end fails status 1 seconds 0.03
not ok 2 fails # exit=1
# faultline-mm: start hang
[  100.0] hang (pid 80) some printk
# faultline-mm: end hang status 143 seconds 5.00
not ok 3 hang # TIMEOUT after 5 s
# faultline-mm: start nothere
# faultline-mm: nothere: /mm/nothere is not in the initramfs
# faultline-mm: done
";

fn custom(names: &[&str]) -> Vec<Planned> {
    let mut p = planned(&["mkdirty"]);
    for n in names {
        p.extend(planned(&[n]));
    }
    p
}

#[test]
fn verdict_results_times_logs_and_missing() {
    let v = evaluate(&custom(&["fails", "hang", "nothere"]), CONSOLE, None);
    let r: Vec<(&str, &str)> = v
        .cases
        .iter()
        .map(|c| (c.name.as_str(), c.result.as_str()))
        .collect();
    assert_eq!(
        r,
        vec![
            ("mkdirty", "PASS"),
            ("fails", "FAIL"),
            ("hang", "TIMEOUT"),
            ("nothere", "MISSING")
        ]
    );
    assert_eq!(v.cases[0].seconds, 1.25);
    assert_eq!(v.cases[0].subtests.len(), 2);
    assert!(v.cases[1]
        .reason
        .as_deref()
        .unwrap()
        .contains("1 made to fail"));
    assert!(
        v.cases[2].log.contains("some printk"),
        "printk lines stay in the running test's log"
    );
    assert!(v.cases[3]
        .reason
        .as_deref()
        .unwrap()
        .contains("not in the selftest directory"));
    assert_eq!(v.exit_code, 2, "a missing test wins over a failure");
    let v = evaluate(&custom(&["fails", "hang"]), CONSOLE, None);
    assert_eq!(v.exit_code, 1);
    let v = evaluate(&custom(&[]), CONSOLE, None);
    assert_eq!(v.exit_code, 0);
    let json = report::json(&v);
    let j: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(j["mm"]["mkdirty"]["result"], "pass");
    assert_eq!(j["mm"]["mkdirty"]["duration"], 1.25);
    assert_eq!(j["mm.mkdirty"]["ptrace write"]["result"], "pass");
    let x = report::junit(&evaluate(&custom(&["fails"]), CONSOLE, None));
    assert!(
        x.contains("<testcase name=\"fails\" classname=\"mm.extra\"")
            && x.contains("failures=\"1\""),
        "{x}"
    );
}

#[test]
fn a_kernel_oops_fails_the_run_and_names_the_running_test() {
    let console = "KTAP version 1\n1..1\n# faultline-mm: start mkdirty\n  ok 1 x\n\
                   [  101.5] BUG: unable to handle page fault for address: 0000000000001000\n\
                   [  101.5] Oops: 0000 [#1] SMP\n# faultline-mm: end mkdirty status 0 seconds 1.00\nok 1 mkdirty\n";
    let v = evaluate(&planned(&["mkdirty"]), console, None);
    let k = v.kernel_failure.as_ref().expect("oops seen");
    assert_eq!(k.running.as_deref(), Some("mkdirty"));
    assert!(k.line.starts_with("BUG: unable"));
    assert_eq!(v.exit_code, 1);
    // A test printing the same words is not a kernel failure.
    let v = evaluate(
        &planned(&["mkdirty"]),
        &console.replace("[  101.5] ", "  "),
        None,
    );
    assert!(v.kernel_failure.is_none());
    assert_eq!(v.exit_code, 0);
    // A panic that reset the VM: the running test never reports, the status is 1 not 2.
    let v = evaluate(
        &planned(&["mkdirty"]),
        "KTAP version 1\n1..1\n# faultline-mm: start mkdirty\n",
        Some("the guest kernel panicked, then reset the machine: Kernel panic".into()),
    );
    assert_eq!(v.exit_code, 1);
    assert_eq!(v.cases[0].result, "MISSING");
    let t = report::table(&v, Duration::from_secs(3));
    assert!(t.contains("while running mkdirty"), "{t}");
}

#[test]
fn compare_qemu_marks_differing_results_and_names_the_json() {
    let plan = custom(&["fails"]);
    let fl = evaluate(&plan, CONSOLE, None);
    // QEMU's run of the same plan: mkdirty failed there, fails failed too.
    let qemu_console = CONSOLE
        .replace("status 0 seconds 1.25", "status 1 seconds 2.50")
        .replace("ok 1 mkdirty", "not ok 1 mkdirty # exit=1");
    let q = evaluate(
        &plan,
        &qemu_console,
        Some("QEMU exited with status Some(3)".into()),
    );
    assert_eq!(
        (fl.cases[0].result.as_str(), q.cases[0].result.as_str()),
        ("PASS", "FAIL")
    );
    let t = report::compare_table(&fl, Duration::from_secs(100), &q, Duration::from_secs(50));
    let marked: Vec<&str> = t.lines().filter(|l| l.ends_with("<- differs")).collect();
    assert_eq!(marked.len(), 1, "{t}");
    assert!(marked[0].starts_with("mkdirty"), "{t}");
    assert!(t.contains("faultline/QEMU 2.00"), "{t}");
    assert!(t.contains("1 of 2 results differ"), "{t}");
    assert!(t.contains("QEMU did not end through the test init"), "{t}");
    assert_eq!(
        report::qemu_path(Path::new("/tmp/mm.json")),
        Path::new("/tmp/mm.qemu.json")
    );
    assert_eq!(report::qemu_path(Path::new("out")), Path::new("out.qemu"));
}
