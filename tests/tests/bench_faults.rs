//! `faultline bench faults` on real KVM: short runs (16M per vCPU) of the `touch` guest over
//! each backing and uffd mode.
//!
//! What each run checks:
//! - the guest touched every page as configured (it reports its access count, which the
//!   driver compares with size/stride) and verified the data it read: zero pages read zero,
//!   UFFDIO_COPY'd and MINOR pages read the handler's pattern (`PATTERN_MAGIC ^ gpa`), written
//!   words read back — a mismatch is a guest assertion and fails the run;
//! - with uffd, the handler installed every page exactly once (its bitmap) and the number of
//!   fault events matches the pages (4K per fault);
//! - KVM's binary stats moved with the touch stage: some per-fault stat (`pf_fixed` on TDP
//!   or classic shadow hosts; `mmu_pte_write`/`insn_emulation` on this project's
//!   paravirtualised nested host, where `pf_*` stay 0) moved by at least the pages touched.
//!
//! Through the binary: the table is printed, JSON and plots are written and well-formed, and
//! bad input fails with a clear message and a non-zero status.
//!
//! Limits: timings are not asserted (benchmarks measure speed, tests do not). hugetlb runs
//! need reserved huge pages: without them the test asserts the "how to reserve" error
//! instead (.ci/run reserves 128).

use std::process::Command;
use std::sync::Mutex;

use faultline_tests::fixtures;
use mmu::backing::BackingSpec;
use vmm::measure::report::RunResult;
use vmm::measure::workload::{AccessPattern, FaultBench};
use vmm::memory::uffd::{MissingResolve, UffdMode, WaitMode};

const SIZE: u64 = 16 << 20;

/// One VM at a time: on 2 cores parallel runs only slow each other down.
static VM_LOCK: Mutex<()> = Mutex::new(());

fn bench(backing: BackingSpec, uffd: Option<UffdMode>) -> FaultBench {
    FaultBench {
        backings: vec![backing],
        uffd_modes: vec![uffd],
        bytes_per_vcpu: SIZE,
        ..FaultBench::default()
    }
}

fn run(b: &FaultBench) -> RunResult {
    let _one = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    b.validate().expect("valid bench");
    let r = b
        .run_one(b.backings[0], b.uffd_modes[0])
        .unwrap_or_else(|e| panic!("{:?}/{:?}: {e}", b.backings[0], b.uffd_modes[0]));
    eprintln!(
        "{}: {:.0} pages/s, pf_fixed {:?}, pf_taken {:?}",
        r.label(),
        r.pages_per_sec(),
        r.stat("pf_fixed"),
        r.stat("pf_taken")
    );
    r
}

fn pages(b: &FaultBench) -> u64 {
    b.bytes_per_vcpu / b.stride * u64::from(b.vcpus)
}

fn check_common(b: &FaultBench, r: &RunResult) {
    assert_eq!(r.total_pages(), pages(b));
    assert_eq!(r.per_vcpu.len(), b.vcpus as usize);
    assert!(r.per_vcpu.iter().all(|v| v.seconds > 0.0));
    assert!(r.wall_seconds > 0.0);
    // The VM's stats were read (the names are the host kernel's).
    assert!(
        !r.kvm_vm.is_empty() && !r.kvm_vcpu.is_empty(),
        "no KVM stats"
    );
}

/// KVM did work for every page touched. Which stat shows it depends on the host's MMU:
/// with TDP or a classic shadow MMU `pf_fixed` counts each mapping KVM built; on the
/// paravirtualised nested KVM of the development machines (kvm_pvm, shadow paging) the
/// `pf_*` stats stay 0 and each first touch shows instead as a write-tracked page-table
/// update (`mmu_pte_write` ≈ pages) plus ~6 emulated instructions (`insn_emulation`).
fn check_kvm_worked_per_page(b: &FaultBench, r: &RunResult) {
    let names = ["pf_fixed", "pf_taken", "mmu_pte_write", "insn_emulation"];
    let best = names
        .iter()
        .filter_map(|n| r.stat(n).map(|v| (*n, v)))
        .max_by_key(|&(_, v)| v)
        .expect("the host exposes none of pf_fixed, pf_taken, mmu_pte_write, insn_emulation");
    assert!(
        best.1 >= pages(b),
        "{}: no KVM stat moved by the {} pages touched (largest: {} = {})",
        r.label(),
        pages(b),
        best.0,
        best.1
    );
}

#[test]
fn each_4k_backing_first_touch_maps_every_page() {
    vmm::require_kvm!();
    for backing in [
        BackingSpec::ANONYMOUS,
        BackingSpec::SHMEM,
        BackingSpec::ANONYMOUS_PREFAULT,
    ] {
        let b = bench(backing, None);
        let r = run(&b);
        check_common(&b, &r);
        check_kvm_worked_per_page(&b, &r);
        assert!(r.uffd_summary.is_none());
    }
}

#[test]
fn thp_backing_touches_every_page() {
    vmm::require_kvm!();
    let b = bench(BackingSpec::ANONYMOUS_THP, None);
    let r = run(&b);
    check_common(&b, &r);
    // With THP, KVM may map 2M at once on TDP hosts (fewer faults than pages): only check
    // that the VM's stats were read.
    assert!(r.stat("exits").is_some());
}

#[test]
fn hugetlb_2m_backings_touch_every_page() {
    vmm::require_kvm!();
    // One region of SIZE per run, one run at a time.
    let _pages = vmm::skip_unless!(fixtures::reserve_huge_pages(2048, SIZE / (2 << 20)));
    for backing in [BackingSpec::ANONYMOUS_HUGETLB, BackingSpec::SHARED_HUGETLB] {
        let b = bench(backing, None);
        let r = run(&b);
        check_common(&b, &r);
    }
}

#[test]
fn hugetlb_1g_backing_runs_through_the_binary() {
    vmm::require_kvm!();
    // `-b 1G -v 1`: one 1G page for the one vCPU's region.
    let _pages = vmm::skip_unless!(fixtures::reserve_huge_pages(1 << 20, 1));
    let out = {
        let _one = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        fixtures::run_with_timeout(
            {
                let mut c = Command::new(fixtures::faultline_bin());
                c.args([
                    "bench",
                    "faults",
                    "-q",
                    "-b",
                    "1G",
                    "-v",
                    "1",
                    "-s",
                    "anonymous_hugetlb_1gb",
                    "-u",
                    "none,MISSING",
                ]);
                c
            },
            std::time::Duration::from_secs(300),
        )
    };
    assert_eq!(out.code(), 0, "{}", out.transcript());
    let rows: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("anonymous_hugetlb_1gb"))
        .collect();
    assert_eq!(rows.len(), 2, "{}", out.transcript());
    eprintln!("{}", rows.join("\n"));
}

#[test]
fn uffd_missing_copy_serves_each_page_once_and_the_guest_reads_the_pattern() {
    vmm::require_kvm!();
    for access in [AccessPattern::READ, AccessPattern::WRITE] {
        let mut b = bench(BackingSpec::ANONYMOUS, Some(UffdMode::Missing));
        b.access = access;
        let r = run(&b);
        check_common(&b, &r);
        let u = r.uffd_summary.as_ref().expect("uffd summary");
        assert_eq!(u.pages_installed, pages(&b));
        assert_eq!(u.faults - u.already_resolved, pages(&b));
        assert_eq!(u.resolve, "copy");
        assert!(u.p50_ns > 0 && u.p99_ns >= u.p50_ns && u.max_ns >= u.p99_ns);
        check_kvm_worked_per_page(&b, &r);
    }
}

#[test]
fn uffd_missing_zeropage_reads_zero() {
    vmm::require_kvm!();
    let mut b = bench(BackingSpec::ANONYMOUS, Some(UffdMode::Missing));
    b.access = AccessPattern::READ;
    b.uffd.resolve = MissingResolve::ZeroPage;
    let r = run(&b);
    check_common(&b, &r);
    let u = r.uffd_summary.as_ref().unwrap();
    assert_eq!(u.resolve, "zeropage");
    assert_eq!(u.pages_installed, pages(&b));
}

#[test]
fn uffd_missing_on_shmem_and_minor_on_shmem_read_the_pattern() {
    vmm::require_kvm!();
    for mode in [UffdMode::Missing, UffdMode::Minor] {
        let mut b = bench(BackingSpec::SHMEM, Some(mode));
        b.access = AccessPattern::READ_WRITE;
        let r = run(&b);
        check_common(&b, &r);
        let u = r.uffd_summary.as_ref().unwrap();
        assert_eq!(u.pages_installed, pages(&b), "{mode:?}");
        if mode == UffdMode::Minor {
            assert_eq!(u.resolve, "continue");
        }
    }
}

#[test]
fn uffd_two_vcpus_one_uffd_two_readers_in_each_wait_mode() {
    vmm::require_kvm!();
    for wait in [WaitMode::BusyPoll, WaitMode::Poll, WaitMode::Blocking] {
        let mut b = bench(BackingSpec::ANONYMOUS, Some(UffdMode::Missing));
        b.vcpus = 2;
        b.uffd.single_uffd = true;
        b.uffd.readers = 2;
        b.uffd.wait = wait;
        b.random = true;
        let r = run(&b);
        check_common(&b, &r);
        let u = r.uffd_summary.as_ref().unwrap();
        assert_eq!(u.pages_installed, pages(&b), "{wait:?}");
        assert_eq!(u.faults_per_reader.len(), 2);
    }
}

/// `--uffd-wait vcpu`: no reader threads. Each fault fails at once (UFFD_FEATURE_SIGBUS),
/// KVM's emulator hands the access to the vCPU's own thread as an MMIO exit, and that
/// thread installs the page and completes the access. Every page is installed once, per
/// vCPU's own resolver, and the guest's checks of the data (the pattern on reads, its own
/// writes read back) pass in each access kind and with MINOR on shmem.
#[test]
fn uffd_resolved_on_the_faulting_vcpu_serves_each_page_once() {
    vmm::require_kvm!();
    let cases = [
        (
            BackingSpec::ANONYMOUS,
            UffdMode::Missing,
            AccessPattern::READ,
            false,
        ),
        (
            BackingSpec::ANONYMOUS,
            UffdMode::Missing,
            AccessPattern::WRITE,
            true,
        ),
        (
            BackingSpec::ANONYMOUS,
            UffdMode::Missing,
            AccessPattern::READ_WRITE,
            false,
        ),
        (
            BackingSpec::SHMEM,
            UffdMode::Minor,
            AccessPattern::READ_WRITE,
            true,
        ),
    ];
    // Each case with one uffd per vCPU, and the last one also with one uffd for both (`-a`).
    let runs = cases
        .iter()
        .map(|&c| (c, false))
        .chain(std::iter::once((cases[3], true)));
    for ((backing, mode, access, random), single_uffd) in runs {
        let mut b = bench(backing, Some(mode));
        b.uffd.single_uffd = single_uffd;
        b.vcpus = 2;
        b.access = access;
        b.random = random;
        b.uffd.wait = WaitMode::Vcpu;
        let r = run(&b);
        check_common(&b, &r);
        let what = format!(
            "{} {} {}",
            r.label(),
            access.name(),
            if random { "random" } else { "sequential" }
        ) + if single_uffd { " one uffd" } else { "" };
        let u = r.uffd_summary.as_ref().expect("uffd summary");
        assert_eq!(u.pages_installed, pages(&b), "{what}");
        assert_eq!(u.faults - u.already_resolved, pages(&b), "{what}");
        assert_eq!(
            u.faults_per_reader.len(),
            2,
            "{what}: one resolver per vCPU's region"
        );
        assert_eq!(
            (u.wait.as_str(), u.readers),
            ("Vcpu", 0),
            "{what}: no reader threads"
        );
        assert!(
            u.faults_per_reader.iter().all(|&f| f >= pages(&b) / 2),
            "{what}: {:?}",
            u.faults_per_reader
        );
        // Each fault reached userspace as an exit of the vCPU that took it.
        let exits = r.stat("exits").expect("exits stat");
        assert!(
            exits >= pages(&b),
            "{what}: {exits} exits for {} pages",
            pages(&b)
        );
    }
}

#[test]
fn uffd_larger_chunks_take_fewer_faults() {
    vmm::require_kvm!();
    let mut b = bench(BackingSpec::ANONYMOUS, Some(UffdMode::Missing));
    b.uffd.chunk = 64 << 10;
    let r = run(&b);
    check_common(&b, &r);
    let u = r.uffd_summary.as_ref().unwrap();
    assert_eq!(u.faults - u.already_resolved, pages(&b) / 16);
}

#[test]
fn cli_prints_the_table_and_writes_json_and_plots() {
    vmm::require_kvm!();
    // The plots' labels need a TrueType font.
    vmm::skip_unless!(fixtures::require_packages(fixtures::PLOT_PACKAGES));
    let dir = std::env::temp_dir().join(format!("faultline-bench-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("out.json");
    let plots = dir.join("plots");
    let out = {
        let _one = VM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        Command::new(fixtures::faultline_bin())
            .args([
                "bench",
                "faults",
                "-b",
                "16M",
                "-s",
                "anonymous,shmem",
                "-u",
                "none,MISSING",
            ])
            .arg("--json")
            .arg(&json)
            .arg("--plot")
            .arg(&plots)
            .output()
            .expect("run faultline")
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("anonymous") || l.starts_with("shmem"))
        .collect();
    assert_eq!(rows.len(), 4, "{stdout}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["runs"].as_array().unwrap().len(), 4);
    assert_eq!(v["runs"][1]["uffd"], "MISSING");
    assert!(v["host"]["kernel"].as_str().is_some());
    // The levels plot exists exactly when KVM's level stats moved (not under a shadow MMU).
    let levels_moved = v["runs"].as_array().unwrap().iter().any(|r| {
        ["pages_4k", "pages_2m", "pages_1g"]
            .iter()
            .any(|n| r["kvm_vm"][n].as_u64().unwrap_or(0) != 0)
    });
    assert_eq!(
        plots.join("kvm_mapping_levels.png").exists(),
        levels_moved,
        "a levels plot only where levels were measured:\n{stdout}"
    );
    if !levels_moved {
        assert!(
            stdout.contains("KVM mapping levels: not observable here"),
            "{stdout}"
        );
    }
    let mut names = vec!["pages_per_sec", "uffd_service_cdf"];
    if levels_moved {
        names.push("kvm_mapping_levels");
    }
    for name in names {
        let png = std::fs::read(plots.join(format!("{name}.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{name}.png");
        let svg = std::fs::read_to_string(plots.join(format!("{name}.svg"))).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{name}.svg"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cli_rejects_bad_input_with_clear_messages() {
    let cases: &[(&[&str], &str)] = &[
        (&["-s", "anonymous,bogus"], "Unknown backing \"bogus\""),
        (&["-u", "SOMETIMES"], "none, MISSING or MINOR"),
        (&["-b", "5000"], "multiple of 4K"),
        (&["-b", "2G", "-v", "2"], "does not fit"),
        (
            &["-s", "anonymous", "-u", "MINOR"],
            "needs a shared backing",
        ),
        (&["-b", "3M", "-s", "shared_hugetlb"], "page size"),
        (&["-v", "0"], "--vcpus 0"),
    ];
    for (args, want) in cases {
        let out = Command::new(fixtures::faultline_bin())
            .args(["bench", "faults", "-q"])
            .args(*args)
            .output()
            .expect("run faultline");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
