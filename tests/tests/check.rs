//! `faultline check` on real KVM: the shipped scenario suite, a deliberately wrong model rule,
//! and bad scenario files.
//!
//! What these tests check: every shipped scenario runs, compares at least one observable the
//! host offers (a scenario that compares nothing fails), and no observable diverges that is
//! not listed with its reason in resources/scenarios/known-divergences.toml; a model with a
//! rule known to be wrong (madvise(DONTNEED) sending no notifier) is caught as DIVERGE; bad
//! files end with status 2 and a message naming the file and the problem.
//! Limits: the host decides what is observable (see `faultline check`'s observables lines);
//! these tests do not assert which observables exist beyond notifier ranges and page states,
//! which this host (and any Linux host with tracefs and /proc/kpageflags) offers.

use faultline_tests::fixtures::{faultline_bin, run_with_timeout};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn scenarios() -> PathBuf {
    faultline_tests::fixtures::repo_root().join("resources/scenarios")
}

fn check(args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(faultline_bin());
    cmd.arg("check").args(args);
    let out = run_with_timeout(cmd, Duration::from_secs(600));
    (out.code(), out.stdout.clone(), out.stderr.clone())
}

#[test]
fn shipped_suite_agrees_with_the_kernel_and_compares_something_in_every_scenario() {
    if !vmm::testing::kvm_or_skip("shipped_suite_agrees_with_the_kernel") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("faultline-check-{}", std::process::id()));
    let json = dir.join("check.json");
    let (code, stdout, stderr) = check(&[
        scenarios().to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "faultline check failed:\n{stdout}\n{stderr}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let scenarios = v["scenarios"].as_array().unwrap();
    assert!(
        scenarios.len() >= 20,
        "only {} scenarios ran",
        scenarios.len()
    );
    let mut compared_notifiers = 0;
    let mut compared_pages = 0;
    for s in scenarios {
        let file = s["file"].as_str().unwrap();
        assert!(s["error"].is_null(), "{file}: {}", s["error"]);
        let obs: Vec<&serde_json::Value> = s["steps"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|st| st["observations"].as_array().unwrap())
            .collect();
        let compared = obs
            .iter()
            .filter(|o| {
                matches!(
                    o["verdict"].as_str(),
                    Some("agree" | "diverge" | "known-divergence")
                )
            })
            .count();
        // Scenarios made only of what this host cannot do (device pfnmaps, NUMA) may compare
        // nothing; they must say so step by step.
        if compared == 0 {
            assert!(
                obs.iter().all(|o| matches!(
                    o["verdict"].as_str(),
                    Some("not-executable" | "not-modelled")
                )),
                "{file} compared nothing: {obs:?}"
            );
        }
        for o in &obs {
            assert_ne!(
                o["verdict"], "diverge",
                "{file}: unexplained divergence {o}"
            );
            if o["observable"] == "notifiers" && o["verdict"] == "agree" {
                compared_notifiers += 1;
            }
            if o["observable"].as_str().unwrap().starts_with("page ") && o["verdict"] == "agree" {
                compared_pages += 1;
            }
        }
    }
    assert!(
        compared_notifiers > 20,
        "notifier ranges compared only {compared_notifiers} times"
    );
    assert!(
        compared_pages > 20,
        "page states compared only {compared_pages} times"
    );
    assert!(stdout.contains("check: "), "no summary line:\n{stdout}");
    let _ = std::fs::remove_dir_all(dir);
}

/// The userfaultfd scenarios run for real: each guest access that sleeps in
/// handle_userfault() is seen as such, its uffd event (address and flags) is compared, and
/// the step whose ioctl wakes it carries its outcome; KVM's binary stats are read per step.
#[test]
fn uffd_accesses_block_raise_their_event_and_end_on_the_resolving_ioctl() {
    if !vmm::testing::kvm_or_skip(
        "uffd_accesses_block_raise_their_event_and_end_on_the_resolving_ioctl",
    ) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("faultline-check-uffd-{}", std::process::id()));
    let json = dir.join("check.json");
    let files: Vec<String> = ["uffd-missing-write", "uffd-wp-anon", "uffd-minor-memfd"]
        .iter()
        .map(|f| scenarios().join(format!("{f}.toml")).display().to_string())
        .collect();
    let mut args: Vec<&str> = files.iter().map(String::as_str).collect();
    args.extend(["--json", json.to_str().unwrap()]);
    let (code, stdout, stderr) = check(&args);
    assert_eq!(code, 0, "faultline check failed:\n{stdout}\n{stderr}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let want = [
        "0x7f0000008000 write",
        "0x7f0000003000 write|wp",
        "0x7f0000004000 minor",
    ];
    for (s, event) in v["scenarios"].as_array().unwrap().iter().zip(want) {
        let file = s["file"].as_str().unwrap();
        let obs: Vec<&serde_json::Value> = s["steps"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|st| st["observations"].as_array().unwrap())
            .collect();
        let find = |name: &str| {
            obs.iter()
                .find(|o| o["observable"] == name)
                .unwrap_or_else(|| panic!("{file}: no {name} observation: {obs:?}"))
        };
        let ev = find("uffd event");
        assert_eq!(ev["verdict"], "agree", "{file}: {ev}");
        assert_eq!(ev["real"], event, "{file}: {ev}");
        let outcome = obs
            .iter()
            .find(|o| o["observable"] == "outcome" && o["real"] == "uffd-wait")
            .unwrap_or_else(|| panic!("{file}: no access seen asleep: {obs:?}"));
        assert_eq!(outcome["verdict"], "agree", "{file}: {outcome}");
        let woken = find("woken outcome");
        assert_eq!(woken["verdict"], "agree", "{file}: {woken}");
        assert!(
            woken["real"].as_str().unwrap().ends_with("completed"),
            "{file}: {woken}"
        );
        assert!(
            obs.iter()
                .any(|o| o["observable"].as_str().unwrap().starts_with("kvm ")),
            "{file}: no KVM stats observation"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_model_that_skips_the_dontneed_notifier_is_caught() {
    if !vmm::testing::kvm_or_skip("a_model_that_skips_the_dontneed_notifier_is_caught") {
        return;
    }
    let file = scenarios().join("kvm-anon-dontneed-2m-boundary.toml");
    let (code, stdout, stderr) = check(&[file.to_str().unwrap()]);
    assert_eq!(
        code, 0,
        "the true model must agree first:\n{stdout}\n{stderr}"
    );
    let (code, stdout, stderr) = check(&[
        file.to_str().unwrap(),
        "--model-bug",
        "skip-dontneed-notifier",
    ]);
    assert_eq!(code, 1, "a wrong model must diverge:\n{stdout}\n{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.contains("notifiers") && l.contains("DIVERGE"))
        .unwrap_or_else(|| panic!("no notifier divergence:\n{stdout}"));
    assert!(
        line.contains("none"),
        "the wrong model predicts no range: {line}"
    );
}

fn write_scenario(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("faultline-check-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const SLOT: &str = "[[memslot]]\nid = 0\ngpa = 0\nsize = \"2M\"\nhva = \"0x7f0000000000\"\n[[vma]]\nstart = \"0x7f0000000000\"\nsize = \"2M\"\n";

#[test]
fn bad_scenario_files_are_refused_with_file_and_step() {
    // No KVM needed to refuse a file? The check opens /dev/kvm first only after parsing
    // succeeded, so these run anywhere faultline runs.
    let cases: [(&str, String, &[&str]); 5] = [
        ("unknown-op.toml", format!("{SLOT}[[step]]\nop = \"poke\"\ngpa = 0\n"), &["step 0", "poke", "read"]),
        ("unknown-key.toml", format!("{SLOT}[[step]]\nop = \"read\"\ngpa = 0\nsize = \"4K\"\n"), &["step 0", "size"]),
        (
            "overlap.toml",
            format!("{SLOT}[[memslot]]\nid = 1\ngpa = \"0x1000\"\nsize = \"4K\"\nhva = \"0x7f0000000000\"\n"),
            &["overlap"],
        ),
        ("bad-size.toml", "[[vma]]\nstart = \"0x7f0000000000\"\nsize = \"2Q\"\n".into(), &["2Q"]),
        ("outside.toml", format!("{SLOT}[[step]]\nop = \"read\"\ngpa = \"0x40000000\"\n"), &["step 0", "0x40000000"]),
    ];
    for (name, text, needles) in cases {
        let p = write_scenario(name, &text);
        let (code, stdout, stderr) = check(&[p.to_str().unwrap()]);
        assert_eq!(code, 2, "{name}: want status 2\n{stdout}\n{stderr}");
        assert!(
            stderr.contains(name),
            "{name}: the error names the file:\n{stderr}"
        );
        for n in needles {
            assert!(
                stderr.to_lowercase().contains(&n.to_lowercase()),
                "{name}: the error mentions {n:?}:\n{stderr}"
            );
        }
    }
}

#[test]
fn without_root_the_check_compares_what_it_can_and_names_what_it_cannot() {
    if !vmm::testing::kvm_or_skip("without_root_the_check_compares_what_it_can") {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        vmm::testing::skip(
            "without_root_the_check_compares_what_it_can",
            "needs root to make a KVM node an unprivileged user may open",
        );
        return;
    }
    // A private KVM node (char 10:232) an unprivileged user may open, so the check runs as
    // `nobody`: no tracefs, no /proc/kpageflags, but KVM and the agent guest still work.
    let dir = std::env::temp_dir().join(format!("faultline-check-nobody-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let node = dir.join("kvm");
    let c = std::ffi::CString::new(node.to_str().unwrap()).unwrap();
    // SAFETY: mknod with a valid path; the node is removed below.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(10, 232)) };
    assert_eq!(rc, 0, "mknod: {}", std::io::Error::last_os_error());
    // SAFETY: chmod with a valid path (mknod's mode is filtered by the umask).
    unsafe { libc::chmod(c.as_ptr(), 0o666) };
    let scenario = scenarios().join("kvm-anon-dontneed-2m-boundary.toml");
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(faultline_bin())
        .args([
            "check",
            "--kvm-device",
            node.to_str().unwrap(),
            scenario.to_str().unwrap(),
        ]);
    let out = run_with_timeout(cmd, Duration::from_secs(300));
    let _ = std::fs::remove_dir_all(&dir);
    let (code, stdout) = (out.code(), out.stdout.clone());
    assert_eq!(code, 0, "{}", out.transcript());
    assert!(
        stdout.contains("notifiers") && stdout.contains("not observable here"),
        "{stdout}"
    );
    let agree = stdout
        .lines()
        .filter(|l| l.trim_end().ends_with("agree"))
        .count();
    assert!(
        agree >= 4,
        "outcomes and values are still compared:\n{stdout}"
    );
}

#[test]
fn record_writes_one_json_line_per_executed_step_with_model_addresses() {
    if !vmm::testing::kvm_or_skip("record_writes_one_json_line_per_executed_step") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("faultline-check-rec-{}", std::process::id()));
    let rec = dir.join("real.jsonl");
    let file = scenarios().join("kvm-fork-then-write.toml");
    let (code, stdout, stderr) =
        check(&[file.to_str().unwrap(), "--record", rec.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let text = std::fs::read_to_string(&rec).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{text}");
    // Step 1 (fork) invalidated the whole VMA, in the model's addresses.
    let inv = &lines[1]["record"]["real"]["invalidations"][0];
    assert_eq!(inv[0].as_u64(), Some(0x7f00_0000_0000), "{text}");
    assert_eq!(inv[1].as_u64(), Some(0x7f00_0040_0000), "{text}");
    assert_eq!(
        lines[0]["record"]["real"]["access"]["completed"]["value"],
        0
    );
    let _ = std::fs::remove_dir_all(dir);
}
