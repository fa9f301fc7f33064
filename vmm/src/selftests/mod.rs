//! `faultline test mm`: the kernel's MM selftests (tools/testing/selftests/mm) in a faultline
//! guest, with a verdict a CI can trust.
//!
//! The host builds (or finds in its cache) faultline's guest kernel and the static selftest
//! binaries (`resources/selftests/build.sh`), packs them with busybox and bash into an
//! initramfs whose `/init` (`resources/selftests/init`) runs each chosen test under a
//! time limit and prints KTAP on the serial console, boots it, and parses the console
//! ([`ktap`]). Results come from the per-test KTAP lines, never from run_vmtests.sh's exit
//! code. See [`evaluate`] for the exit status.

pub mod catalogue;
pub mod ktap;
pub mod report;

use crate::config::{Backing, KernelConfig, MemoryConfig, Payload, VmConfig};
use catalogue::MmTest;
use clap::Args;
use ktap::{Outcome, TestResult};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The guest's `/init` for the selftests.
pub const INIT_SCRIPT: &str = include_str!("../../../resources/selftests/init");
/// Marker the init prints before each test.
pub const START_MARKER: &str = "# faultline-mm: start ";
/// Marker the init prints after each test: `NAME status S seconds T`.
pub const END_MARKER: &str = "# faultline-mm: end ";
/// Marker the init prints after the last test.
pub const DONE_MARKER: &str = "# faultline-mm: done";
/// Huge pages (2 MiB) the guest reserves on its command line (`hugepages=`).
pub const GUEST_HUGEPAGES: u32 = 128;
/// kselftest's per-test timeout when the selftest directory has no `settings` file.
pub const DEFAULT_TIMEOUT: u64 = 180;
/// Time allowed for the guest kernel to boot to /init on top of the tests' own limits
/// (boots take ~100 s on the nested KVM here).
pub const BOOT_ALLOWANCE: Duration = Duration::from_secs(400);

/// Options of `faultline test mm`.
#[derive(Debug, Args, Clone)]
pub struct MmArgs {
    /// Tests to run, by name (`gup_test -u`) or by program (`gup_test` selects all its
    /// variants); a name that is neither runs `./NAME` from the selftest directory
    /// [default: the smoke set].
    #[arg(value_name = "TEST")]
    pub tests: Vec<String>,
    /// Run everything run_vmtests.sh runs.
    #[arg(long, conflicts_with = "tests")]
    pub all: bool,
    /// Run the tests of run_vmtests.sh category CATEGORY (repeatable; see --list).
    #[arg(short = 't', long = "category", value_name = "CATEGORY")]
    pub categories: Vec<String>,
    /// List the tests and categories, with what is skipped and why, and exit.
    #[arg(long)]
    pub list: bool,
    /// Per-test time limit in seconds [default: kselftest's `settings`, 180].
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Write one log per test (and console.log) into DIR.
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Write results as JSON in tuxrun's shape (suite -> case -> {result, duration}).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write results as JUnit XML.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Guest RAM.
    #[arg(long, value_name = "SIZE", value_parser = crate::config::parse_size, default_value = "1536M")]
    pub memory: u64,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub vcpus: u32,
    /// Skip file: `NAME REASON` per line [default: resources/selftests/mm-skip.txt].
    #[arg(long, value_name = "FILE")]
    pub skip_file: Option<PathBuf>,
    /// Guest kernel (vmlinux or bzImage) [default: resources/guest-kernel/build.sh's vmlinux].
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Directory of built selftests [default: resources/selftests/build.sh's output].
    #[arg(long, value_name = "DIR")]
    pub selftests: Option<PathBuf>,
    /// Extra program or script to put next to the selftests (repeatable); run it by naming
    /// its file name as a TEST.
    #[arg(long, value_name = "PATH")]
    pub extra: Vec<PathBuf>,
    /// Copy the guest console to stderr as it arrives.
    #[arg(long)]
    pub console: bool,
    /// KVM device node [default: /dev/kvm].
    #[arg(long, value_name = "PATH")]
    pub kvm_device: Option<PathBuf>,
    /// Then boot the same kernel, initramfs and command line in QEMU microvm (Debian's
    /// qemu-system-x86, installed when missing) and print both runs side by side. The exit
    /// status stays faultline's verdict.
    #[arg(long)]
    pub compare_qemu: bool,
    /// QEMU binary for --compare-qemu (a path, or a name looked up in PATH).
    #[arg(long, value_name = "PATH", default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,
    /// Run without seccomp filters on the VMM's threads (they are on by default; a system
    /// call outside a thread's filter ends the VM with status 104).
    #[arg(long)]
    pub no_seccomp: bool,
}

/// `faultline test mm` could not run.
#[derive(Debug, thiserror::Error)]
pub enum MmTestError {
    /// A resources/ build script failed.
    #[error("{script} failed ({status}); its messages are above. Fix what it says, or pass --kernel/--selftests with prebuilt ones")]
    Script {
        /// The script.
        script: PathBuf,
        /// How it ended.
        status: String,
    },
    /// A file could not be read or written.
    #[error("{what} {path:?}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The skip file is malformed.
    #[error(transparent)]
    SkipFile(#[from] catalogue::SkipFileError),
    /// A `-t` category run_vmtests.sh does not have.
    #[error("unknown category {0:?}; `faultline test mm --list` shows the categories")]
    UnknownCategory(String),
    /// Packages could not be installed.
    #[error("{0}")]
    Packages(String),
    /// The initramfs could not be built.
    #[error(transparent)]
    Initramfs(#[from] crate::boot::initramfs::InitramfsError),
    /// The VM could not be started.
    #[error(transparent)]
    Vmm(#[from] crate::VmmError),
    /// QEMU could not be found or started for --compare-qemu.
    #[error("--compare-qemu: cannot run {path:?}: {message} (apt-get install qemu-system-x86, or pass --qemu PATH)")]
    Qemu {
        /// The QEMU binary.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// One test chosen to run (or skipped before the boot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// The test.
    pub test: MmTest,
    /// Its time limit, seconds.
    pub timeout: u64,
    /// Why it is not run (skip file, or the build's unavailable.txt).
    pub skip: Option<String>,
}

/// The result of one planned test.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseReport {
    /// Test name.
    pub name: String,
    /// Its category.
    pub category: String,
    /// PASS, FAIL, SKIP, TIMEOUT, XFAIL, ERROR, or MISSING (never reported).
    pub result: String,
    /// Guest-measured seconds (0 when it did not run).
    pub seconds: f64,
    /// Why it was skipped, failed or is missing.
    pub reason: Option<String>,
    /// Its own KTAP subtests.
    pub subtests: Vec<TestResult>,
    /// Its console lines (its output, and kernel messages printed meanwhile).
    pub log: String,
}

/// A guest kernel failure seen on the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelFailure {
    /// The console line that shows it.
    pub line: String,
    /// The test that was running, if any.
    pub running: Option<String>,
    /// The last console lines.
    pub tail: String,
}

/// All results and the exit status.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// One per planned test, in plan order.
    pub cases: Vec<CaseReport>,
    /// A panic, oops or stall, if the console shows one.
    pub kernel_failure: Option<KernelFailure>,
    /// Why the VM ended, when not through the init's clean exit.
    pub vm_end: Option<String>,
    /// 0 all passed or skipped with a reason; 1 a failure, timeout or kernel failure; 2 a
    /// requested test never reported.
    pub exit_code: i32,
}

/// Kernel messages that mean the guest kernel itself failed (checked only on printk lines,
/// `[ seconds] ...`, so a test printing these words does not trip it). Models what
/// `panic()`, `die()`/`oops_begin()`, `report_bug()`'s BUG, the RCU stall detector
/// (`print_cpu_stall()`) and the soft/hard lockup watchdog print.
const KERNEL_FAILURE_PATTERNS: &[&str] = &[
    "Kernel panic - not syncing",
    "Oops:",
    "BUG:",
    "kernel BUG at",
    "general protection fault",
    "rcu: INFO: rcu_",
    "self-detected stall",
    "watchdog: BUG: soft lockup",
    "hard LOCKUP",
];

/// The printk text of a `[    1.234567] text` line, if it is one.
fn printk_body(line: &str) -> Option<&str> {
    crate::boot::printk::split(line).map(|(_, text)| text)
}

/// Decides the run from the console text: per test its KTAP result, its guest-measured
/// time and its log; a test with no result line is MISSING. Exit status: 1 when the kernel
/// panicked/oopsed/stalled (with the running test and console tail); else 2 when a
/// requested test never reported; else 1 when any test failed, errored or timed out; else 0.
pub fn evaluate(plan: &[Planned], console: &str, vm_end: Option<String>) -> Verdict {
    let report = ktap::parse(console);
    // Split the console at the start markers: each test's log runs to the next marker.
    let mut logs: Vec<(String, String)> = Vec::new();
    let mut seconds: std::collections::HashMap<String, f64> = Default::default();
    let mut running: Option<String> = None;
    let mut kernel_failure = None;
    let lines: Vec<&str> = console.lines().collect();
    for (i, raw) in lines.iter().enumerate() {
        let line = raw.trim_end_matches('\r');
        if let Some(name) = line.strip_prefix(START_MARKER) {
            logs.push((name.to_string(), String::new()));
            running = Some(name.to_string());
        } else if let Some(rest) = line.strip_prefix(END_MARKER) {
            // NAME status S seconds T: NAME may contain spaces, so parse from the right.
            let words: Vec<&str> = rest.rsplitn(5, ' ').collect();
            if let [secs, "seconds", _status, "status", name] = words.as_slice() {
                if let Ok(s) = secs.parse::<f64>() {
                    seconds.insert((*name).to_string(), s);
                }
            }
            running = None;
        } else if line.starts_with(DONE_MARKER) {
            running = None;
        }
        if let Some((_, log)) = logs.last_mut() {
            log.push_str(line);
            log.push('\n');
        }
        if kernel_failure.is_none() {
            if let Some(body) = printk_body(line) {
                if KERNEL_FAILURE_PATTERNS.iter().any(|p| body.contains(p)) {
                    let from = i.saturating_sub(5);
                    let to = (i + 40).min(lines.len());
                    kernel_failure = Some(KernelFailure {
                        line: body.to_string(),
                        running: running.clone(),
                        tail: lines[from..to].join("\n"),
                    });
                }
            }
        }
    }
    let tail_start = lines.len().saturating_sub(40);
    let console_tail = lines[tail_start..].join("\n");
    if kernel_failure.is_none() {
        if let Some(end) = &vm_end {
            if end.contains("panicked") {
                kernel_failure = Some(KernelFailure {
                    line: end.clone(),
                    running: running.clone(),
                    tail: console_tail.clone(),
                });
            }
        }
    }

    let mut cases = Vec::new();
    let (mut missing, mut failed) = (false, false);
    for p in plan {
        let name = &p.test.name;
        let log = logs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, l)| l.clone())
            .unwrap_or_default();
        if let Some(reason) = &p.skip {
            cases.push(CaseReport {
                name: name.clone(),
                category: p.test.category.clone(),
                result: "SKIP".into(),
                seconds: 0.0,
                reason: Some(reason.clone()),
                subtests: vec![],
                log,
            });
            continue;
        }
        let result = report.results.iter().find(|r| &r.name == name);
        let case = match result {
            Some(r) => {
                let mut reason = r.reason.clone();
                if r.outcome == Outcome::Skip {
                    // The test's own `ok N # SKIP why` (ksft_exit_skip) says more than exit 4.
                    if let Some(own) = r
                        .subtests
                        .iter()
                        .rev()
                        .find(|s| s.outcome == Outcome::Skip && s.reason.is_some())
                    {
                        reason = own.reason.clone();
                    }
                } else if r.outcome == Outcome::Fail {
                    let failed_subs: Vec<String> = r
                        .subtests
                        .iter()
                        .filter(|s| !s.outcome.is_success())
                        .map(|s| format!("{} {}", s.number, s.name))
                        .collect();
                    if !failed_subs.is_empty() {
                        reason = Some(format!(
                            "{}; failed subtests: {}",
                            reason.unwrap_or_default(),
                            failed_subs.join(", ")
                        ));
                    } else if reason.is_none() {
                        reason = Some("exited non-zero".into());
                    }
                    if let Some(d) = console_reason(&log) {
                        reason = Some(format!("{}; {d}", reason.unwrap_or_default()));
                    }
                }
                if !r.outcome.is_success() {
                    failed = true;
                }
                CaseReport {
                    name: name.clone(),
                    category: p.test.category.clone(),
                    result: r.outcome.label().into(),
                    seconds: seconds.get(name).copied().unwrap_or(0.0),
                    reason,
                    subtests: r.subtests.clone(),
                    log,
                }
            }
            None => {
                missing = true;
                let why = if log.contains("is not in the initramfs") {
                    format!(
                        "never reported: {} is not in the selftest directory",
                        p.test.program
                    )
                } else if kernel_failure.as_ref().and_then(|k| k.running.as_ref()) == Some(name) {
                    "never reported: the guest kernel failed while it ran".to_string()
                } else if !log.is_empty() {
                    "never reported: it started but printed no result (the VM ended)".to_string()
                } else {
                    "never reported: the guest never started it".to_string()
                };
                CaseReport {
                    name: name.clone(),
                    category: p.test.category.clone(),
                    result: "MISSING".into(),
                    seconds: 0.0,
                    reason: Some(why),
                    subtests: report
                        .unfinished
                        .iter()
                        .filter(|_| running.as_deref() == Some(name.as_str()))
                        .cloned()
                        .collect(),
                    log,
                }
            }
        };
        cases.push(case);
    }
    let exit_code = if kernel_failure.is_some() {
        1
    } else if missing {
        2
    } else if failed {
        1
    } else {
        0
    };
    Verdict {
        cases,
        kernel_failure,
        vm_end,
        exit_code,
    }
}

/// The last `# ` diagnostic that looks like an error in a test's log, to show with FAIL.
fn console_reason(log: &str) -> Option<String> {
    log.lines()
        .filter_map(|l| l.trim_start().strip_prefix("# "))
        .rfind(|l| {
            let low = l.to_ascii_lowercase();
            (low.contains("fail") || low.contains("error") || low.contains("unable"))
                && !l.starts_with("Totals")
                && !l.starts_with("faultline-mm")
        })
        .map(|s| s.chars().take(160).collect())
}

/// Picks the tests the options ask for, with their time limits and skip reasons.
/// `unavailable` lists tests the build could not produce (`NAME<TAB>REASON`).
pub fn plan(
    args: &MmArgs,
    skip_file: &[(String, String)],
    unavailable: &[(String, String)],
    default_timeout: u64,
) -> Result<Vec<Planned>, MmTestError> {
    let all = catalogue::all();
    let cats = catalogue::categories();
    for c in &args.categories {
        if !cats.contains(c) {
            return Err(MmTestError::UnknownCategory(c.clone()));
        }
    }
    let mut chosen: Vec<MmTest> = Vec::new();
    let push = |t: &MmTest, chosen: &mut Vec<MmTest>| {
        if !chosen.iter().any(|c| c.name == t.name) {
            chosen.push(t.clone());
        }
    };
    if args.all {
        for t in &all {
            push(t, &mut chosen);
        }
    }
    for c in &args.categories {
        for t in all.iter().filter(|t| &t.category == c) {
            push(t, &mut chosen);
        }
    }
    for want in &args.tests {
        let matches: Vec<&MmTest> = all
            .iter()
            .filter(|t| &t.name == want || &t.program == want)
            .collect();
        if matches.is_empty() {
            let custom = MmTest {
                name: want.clone(),
                category: "extra".into(),
                program: want.clone(),
                command: format!(
                    "./{}",
                    crate::boot::initramfs::shell_quote(std::slice::from_ref(want))
                ),
            };
            push(&custom, &mut chosen);
        } else {
            for t in matches {
                push(t, &mut chosen);
            }
        }
    }
    if chosen.is_empty() {
        for s in catalogue::SMOKE {
            if let Some(t) = all.iter().find(|t| t.name == *s) {
                push(t, &mut chosen);
            }
        }
    }
    let timeout = args.timeout.unwrap_or(default_timeout).max(1);
    Ok(chosen
        .into_iter()
        .map(|test| {
            let skip = skip_file
                .iter()
                .find(|(n, _)| *n == test.name)
                .map(|(_, r)| r.clone())
                .or_else(|| {
                    unavailable
                        .iter()
                        .find(|(n, _)| *n == test.program)
                        .map(|(_, r)| format!("{} {r}", test.program))
                });
            Planned {
                test,
                timeout,
                skip,
            }
        })
        .collect())
}

/// The `/faultline/tests` file the guest init reads (tests to run, skipped ones left out).
pub fn tests_file(plan: &[Planned]) -> String {
    let mut s = String::new();
    for p in plan.iter().filter(|p| p.skip.is_none()) {
        let clean = |x: &str| x.replace(['\t', '\n'], " ");
        s.push_str(&format!(
            "{}\t{}\t{}\t{}\n",
            clean(&p.test.name),
            p.timeout,
            clean(&p.test.program),
            clean(&p.test.command)
        ));
    }
    s
}

fn repo_resources() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("resources")
}

/// Runs a resources/ build script (progress on stderr) and returns its stdout.
fn run_script(script: &Path) -> Result<String, MmTestError> {
    eprintln!("faultline test mm: running {}", script.display());
    let out = std::process::Command::new("bash")
        .arg(script)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|source| MmTestError::Io {
            what: "cannot run",
            path: script.to_path_buf(),
            source,
        })?;
    if !out.status.success() {
        return Err(MmTestError::Script {
            script: script.to_path_buf(),
            status: out.status.to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Debian packages the selftests and their initramfs need besides the guest kernel's
/// ([`crate::testing::KERNEL_BUILD_PACKAGES`]).
pub const SELFTEST_PACKAGES: &[&str] = &[
    "file",
    "busybox-static",
    "bash-static",
    "libcap-dev",
    "libnuma-dev",
];
fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, MmTestError> {
    std::fs::read(path).map_err(|source| MmTestError::Io {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// The selftest directory's `unavailable.txt` (`NAME<TAB>REASON`), deduplicated.
pub fn read_unavailable(dir: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(dir.join("unavailable.txt")).unwrap_or_default();
    let mut out: Vec<(String, String)> = Vec::new();
    for l in text.lines() {
        if let Some((n, r)) = l.split_once('\t') {
            if !out.iter().any(|(o, _)| o == n) {
                out.push((n.to_string(), r.to_string()));
            }
        }
    }
    out
}

/// kselftest's `settings` `timeout=` in `dir`, else [`DEFAULT_TIMEOUT`].
pub fn settings_timeout(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("settings"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.trim().strip_prefix("timeout=")?.parse().ok())
        })
        .unwrap_or(DEFAULT_TIMEOUT)
}

/// Builds the initramfs: the busybox base archive, then one with /init, bash, the
/// selftest directory as /mm, the extras and /faultline/tests (a later archive's files
/// replace an earlier one's, as `init/initramfs.c` unpacks them in order).
pub fn build_initramfs(
    selftests: &Path,
    extras: &[PathBuf],
    tests: &str,
) -> Result<Vec<u8>, MmTestError> {
    use crate::boot::initramfs::{self, CpioWriter, Entry};
    // The selftests' bash finds busybox's tools through PATH: every applet gets its link.
    let mut archive = initramfs::build(&initramfs::busybox_path(), &[], initramfs::Applets::All)?;
    let bash = read(
        Path::new("/bin/bash-static"),
        "cannot read bash-static (apt-get install bash-static)",
    )?;
    let mut w = CpioWriter::new();
    for dir in ["mm", "faultline", "mnt", "run"] {
        w.add(&Entry::Dir {
            name: dir,
            mode: 0o755,
        })?;
    }
    w.add(&Entry::File {
        name: "init",
        mode: 0o755,
        data: INIT_SCRIPT.as_bytes(),
    })?;
    w.add(&Entry::File {
        name: "bin/bash",
        mode: 0o755,
        data: &bash,
    })?;
    w.add(&Entry::File {
        name: "faultline/tests",
        mode: 0o644,
        data: tests.as_bytes(),
    })?;
    let entries = std::fs::read_dir(selftests).map_err(|source| MmTestError::Io {
        what: "cannot list the selftest directory",
        path: selftests.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    files.extend(extras.iter().cloned());
    for f in files {
        let Some(fname) = f.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
            continue;
        };
        if !f.is_file() || fname == "build.log" {
            continue;
        }
        let data = read(&f, "cannot read")?;
        let name = format!("mm/{fname}");
        w.add(&Entry::File {
            name: &name,
            mode: 0o755,
            data: &data,
        })?;
    }
    archive.extend_from_slice(&w.finish());
    Ok(archive)
}

/// A console writer that keeps everything, optionally echoes it, and reports each test start.
struct Tee {
    buf: Arc<Mutex<Vec<u8>>>,
    echo: bool,
    line: Vec<u8>,
}

impl Write for Tee {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(data);
        if self.echo {
            let _ = std::io::stderr().write_all(data);
        }
        for &b in data {
            if b == b'\n' {
                let l = String::from_utf8_lossy(&self.line);
                if let Some(n) = l.trim_end().strip_prefix(START_MARKER) {
                    if !self.echo {
                        eprintln!("faultline test mm: running {n}");
                    }
                }
                self.line.clear();
            } else if self.line.len() < 4096 {
                self.line.push(b);
            }
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The guest kernel's command line before the VMM adds its platform options
/// ([`crate::boot::full_cmdline`]).
fn guest_cmdline() -> String {
    format!(
        "{} hugepages={GUEST_HUGEPAGES} faultline.exit_port={:#x}",
        crate::config::DEFAULT_CMDLINE,
        devices::debug_exit::DEBUG_EXIT_PORT
    )
}

/// Boots the same kernel and initramfs in QEMU microvm with the command line faultline's
/// guest gets (platform options included) and returns the console and, if QEMU did not end
/// through the init's clean exit, why. QEMU is killed after `limit`.
fn boot_qemu(
    args: &MmArgs,
    kernel: &Path,
    initrd: &Path,
    limit: Duration,
) -> Result<(String, Option<String>), MmTestError> {
    use crate::measure::boot::linux::{capture, find_program, qemu_args, QEMU_DEBUG_EXIT_OK};
    let qemu = find_program(&args.qemu).ok_or_else(|| MmTestError::Qemu {
        path: args.qemu.clone(),
        message: "not found".into(),
    })?;
    let cmdline = crate::boot::full_cmdline(&guest_cmdline());
    let mut cmd = std::process::Command::new(&qemu);
    cmd.args(qemu_args(kernel, initrd, &cmdline, args.memory, args.vcpus));
    let c = capture(cmd, limit).map_err(|(path, e)| MmTestError::Qemu {
        path,
        message: e.to_string(),
    })?;
    let mut console = String::new();
    for l in &c.stdout {
        console.push_str(&l.text);
        console.push('\n');
    }
    let end = if c.timed_out {
        Some(format!(
            "faultline test mm killed QEMU after {} s (the tests' limits plus the boot allowance)",
            limit.as_secs()
        ))
    } else if c.code == Some(QEMU_DEBUG_EXIT_OK) {
        None
    } else {
        Some(format!(
            "QEMU exited with status {:?}; its last lines:\n{}",
            c.code,
            c.tail()
        ))
    };
    Ok((console, end))
}

/// Boots the guest with `initrd` and returns the console and, if it did not end cleanly,
/// why. Stops the VM after `limit`.
fn boot(
    args: &MmArgs,
    kernel: &Path,
    initrd: &Path,
    limit: Duration,
) -> Result<(String, Option<String>), MmTestError> {
    let cmdline = guest_cmdline();
    let config = VmConfig {
        memory: MemoryConfig {
            size: args.memory,
            backing: Backing::Anon,
        },
        vcpus: args.vcpus,
        payload: Payload::Kernel(KernelConfig {
            kernel: kernel.to_path_buf(),
            initrd: Some(initrd.to_path_buf()),
            cmdline,
            init_command: vec![],
            boot_protocol: crate::config::BootProtocol::default(),
        }),
        kvm_device: args
            .kvm_device
            .clone()
            .unwrap_or_else(crate::config::default_kvm_device),
    };
    let buf = Arc::new(Mutex::new(Vec::new()));
    let tee = Tee {
        buf: buf.clone(),
        echo: args.console,
        line: Vec::new(),
    };
    let io = crate::VmIo {
        console: devices::console::Console::new(Box::new(tee)),
        stdin: false,
    };
    let vmm = crate::VmBuilder::new(config, io).build()?;
    let start = Instant::now();
    let (outcome, _) = vmm.run_with(|h| {
        while !h.stopped() {
            if start.elapsed() > limit {
                h.request_stop(devices::exit::VmExit::Crash {
                    vcpu: 0,
                    reason: format!("faultline test mm stopped the guest after {} s (the tests' limits plus the boot allowance)", limit.as_secs()),
                });
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })?;
    let console =
        String::from_utf8_lossy(&buf.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    let end = match &outcome.exit {
        devices::exit::VmExit::DebugExit(0) => None,
        other => Some(other.to_string()),
    };
    Ok((console, end))
}

/// `faultline test mm`: returns the process exit status.
pub fn main(args: &MmArgs) -> i32 {
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("faultline test mm: error: {e}");
            2
        }
    }
}

fn run(args: &MmArgs) -> Result<i32, MmTestError> {
    let skip_text = match &args.skip_file {
        Some(p) => String::from_utf8_lossy(&read(p, "cannot read the skip file")?).into_owned(),
        None => catalogue::DEFAULT_SKIP_FILE.to_string(),
    };
    let skips = catalogue::parse_skip_file(&skip_text)?;
    if args.list {
        let unavailable = args
            .selftests
            .as_deref()
            .map(read_unavailable)
            .unwrap_or_default();
        let planned = plan(
            &MmArgs {
                all: true,
                tests: vec![],
                ..args.clone()
            },
            &skips,
            &unavailable,
            DEFAULT_TIMEOUT,
        )?;
        print!("{}", report::list(&planned));
        return Ok(0);
    }
    // Bad options fail before minutes of kernel and selftest builds.
    plan(args, &skips, &[], DEFAULT_TIMEOUT)?;
    let needed: Vec<&str> = crate::testing::KERNEL_BUILD_PACKAGES
        .iter()
        .chain(SELFTEST_PACKAGES)
        .copied()
        .filter(|p| match *p {
            "linux-source-6.12" => args.kernel.is_none() || args.selftests.is_none(),
            "busybox-static" => std::env::var_os(crate::boot::initramfs::BUSYBOX_ENV).is_none(),
            _ => true,
        })
        .chain(
            (args.compare_qemu && crate::measure::boot::linux::find_program(&args.qemu).is_none())
                .then_some("qemu-system-x86"),
        )
        .collect();
    crate::testing::require_packages(&needed).map_err(MmTestError::Packages)?;
    let kernel = match &args.kernel {
        Some(k) => k.clone(),
        None => {
            let script = repo_resources().join("guest-kernel/build.sh");
            let out = run_script(&script)?;
            out.lines()
                .find_map(|l| l.strip_prefix("vmlinux="))
                .map(PathBuf::from)
                .ok_or(MmTestError::Script {
                    script,
                    status: format!("printed no vmlinux= line: {out:?}"),
                })?
        }
    };
    let selftests = match &args.selftests {
        Some(d) => d.clone(),
        None => {
            let script = repo_resources().join("selftests/build.sh");
            let out = run_script(&script)?;
            PathBuf::from(out.trim())
        }
    };
    let unavailable = read_unavailable(&selftests);
    let planned = plan(args, &skips, &unavailable, settings_timeout(&selftests))?;
    let tests = tests_file(&planned);
    let initrd_bytes = build_initramfs(&selftests, &args.extra, &tests)?;
    let initrd = std::env::temp_dir().join(format!("faultline-mm-{}.cpio", std::process::id()));
    std::fs::write(&initrd, &initrd_bytes).map_err(|source| MmTestError::Io {
        what: "cannot write the initramfs",
        path: initrd.clone(),
        source,
    })?;
    let limit = BOOT_ALLOWANCE
        + planned
            .iter()
            .filter(|p| p.skip.is_none())
            .map(|p| Duration::from_secs(p.timeout + 10))
            .sum::<Duration>();
    let n_run = planned.iter().filter(|p| p.skip.is_none()).count();
    eprintln!(
        "faultline test mm: booting {} with {} tests ({} skipped), {} vCPUs, {} MiB; initramfs {} MiB",
        kernel.display(),
        n_run,
        planned.len() - n_run,
        args.vcpus,
        args.memory >> 20,
        initrd_bytes.len() >> 20
    );
    let started = Instant::now();
    let booted = boot(args, &kernel, &initrd, limit);
    let wall = started.elapsed();
    let qemu = match (&booted, args.compare_qemu) {
        (Ok(_), true) => {
            eprintln!(
                "faultline test mm: booting the same kernel, initramfs and command line in QEMU microvm"
            );
            let started = Instant::now();
            let q = boot_qemu(args, &kernel, &initrd, limit);
            Some((q, started.elapsed()))
        }
        _ => None,
    };
    let _ = std::fs::remove_file(&initrd);
    let (console, vm_end) = booted?;
    let verdict = evaluate(&planned, &console, vm_end);
    if let Some(dir) = &args.output {
        report::write_logs(dir, &verdict, &console)?;
    }
    if let Some(p) = &args.json {
        report::write_file(p, &report::json(&verdict))?;
    }
    if let Some(p) = &args.junit {
        report::write_file(p, &report::junit(&verdict))?;
    }
    print!("{}", report::table(&verdict, wall));
    if let Some((q, q_wall)) = qemu {
        let (q_console, q_end) = q?;
        let q_verdict = evaluate(&planned, &q_console, q_end);
        if let Some(p) = &args.json {
            report::write_file(&report::qemu_path(p), &report::json(&q_verdict))?;
        }
        print!(
            "{}",
            report::compare_table(&verdict, wall, &q_verdict, q_wall)
        );
    }
    Ok(verdict.exit_code)
}

#[cfg(test)]
mod tests;
