//! Test fixtures that are built or fetched on first use and cached outside the repository:
//! faultline's guest kernel (`resources/guest-kernel/build.sh`), a stock Debian cloud kernel
//! (`resources/debian-kernel/fetch.sh`) and the busybox initramfs
//! (`resources/initramfs/build.sh`). Each script takes its own lock, prints progress on
//! stderr and its results on stdout, and is what a developer runs by hand; this module only
//! calls it (once per test process) and parses the paths it prints.
//!
//! Before a script runs, [`require_packages`] installs the Debian packages it needs (as
//! root on Debian; elsewhere the error is the command to run), so `cargo test --workspace`
//! needs nothing installed by hand. [`reserve_huge_pages`] does the same for huge pages.
//! Both live in [`vmm::testing`] so that vmm's unit tests use the same ones.
//!
//! Also here: finding the `faultline` binary and running it with a time limit, so a guest
//! that hangs fails its test instead of the whole run.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The repository root (the workspace directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

pub use vmm::testing::{
    apt_command, require_packages, reserve_huge_pages, HugePages, KERNEL_BUILD_PACKAGES,
};

/// What `resources/initramfs/build.sh` needs.
pub const INITRAMFS_PACKAGES: &[&str] = &["busybox-static", "cpio"];

/// What `faultline bench faults --plot` needs for its labels.
pub const PLOT_PACKAGES: &[&str] = &["fonts-dejavu-core"];

/// Runs a resources/ script with stderr passed through (its progress) and returns its stdout.
fn run_script(script: &str, args: &[&str]) -> Result<String, String> {
    let path = repo_root().join(script);
    eprintln!("fixtures: running {} {}", path.display(), args.join(" "));
    let out = Command::new("bash")
        .arg(&path)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}); its messages are above",
            path.display(),
            out.status
        ));
    }
    String::from_utf8(out.stdout).map_err(|e| format!("{script} printed non-UTF-8: {e}"))
}

/// faultline's guest kernel, in its three forms.
#[derive(Debug, Clone)]
pub struct GuestKernel {
    /// Compressed kernel for the 64-bit boot protocol.
    pub bzimage: PathBuf,
    /// Stripped ELF with its PVH note.
    pub vmlinux: PathBuf,
    /// Unstripped ELF, to map a guest RIP to a symbol.
    pub vmlinux_debug: PathBuf,
}

/// Builds (first time, ~6-8 minutes on 2 cores) or finds faultline's guest kernel.
pub fn guest_kernel() -> Result<GuestKernel, String> {
    static KERNEL: OnceLock<Result<GuestKernel, String>> = OnceLock::new();
    KERNEL
        .get_or_init(|| {
            // LINUX_SOURCE_TARBALL points the script at a source tree of the user's choosing.
            if std::env::var_os("LINUX_SOURCE_TARBALL").is_none() {
                require_packages(KERNEL_BUILD_PACKAGES)?;
            } else {
                require_packages(&KERNEL_BUILD_PACKAGES[1..])?;
            }
            // Every user of the kernel boots it through `faultline run --kernel -- CMD`,
            // whose initramfs is built from the static busybox.
            require_packages(INITRAMFS_PACKAGES)?;
            let out = run_script("resources/guest-kernel/build.sh", &[])?;
            let get = |key: &str| {
                out.lines()
                    .find_map(|l| l.strip_prefix(&format!("{key}=")))
                    .map(PathBuf::from)
                    .ok_or_else(|| format!("build.sh printed no {key}= line: {out:?}"))
            };
            Ok(GuestKernel {
                bzimage: get("bzImage")?,
                vmlinux: get("vmlinux")?,
                vmlinux_debug: get("vmlinux_debug")?,
            })
        })
        .clone()
}

/// Fetches (first time) or finds the stock Debian cloud kernel (a bzImage).
pub fn debian_kernel() -> Result<PathBuf, String> {
    static KERNEL: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    KERNEL
        .get_or_init(|| {
            let out = run_script("resources/debian-kernel/fetch.sh", &[])?;
            Ok(PathBuf::from(out.trim()))
        })
        .clone()
}

/// The base busybox initramfs built by `resources/initramfs/build.sh` (no command baked in).
pub fn base_initramfs() -> Result<PathBuf, String> {
    static BASE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BASE.get_or_init(|| {
        if std::env::var_os("FAULTLINE_BUSYBOX").is_none() {
            require_packages(INITRAMFS_PACKAGES)?;
        }
        let out = run_script("resources/initramfs/build.sh", &[])?;
        Ok(PathBuf::from(out.trim()))
    })
    .clone()
}

/// True if KVM is usable; otherwise skips `test` through [`vmm::testing::skip`] (which
/// panics instead under `FAULTLINE_REQUIRE_KVM=1`).
pub fn kvm_available(test: &str) -> bool {
    vmm::testing::kvm_or_skip(test)
}

/// The `faultline` binary of this build (target/<profile>/faultline). `cargo test
/// --workspace` builds it, but `cargo test -p faultline-tests` does not and would run a
/// stale one, so the first call in a process runs `cargo build -p vmm --bin faultline`
/// (a no-op when it is up to date).
pub fn faultline_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // current_exe is target/<profile>/deps/<test>-<hash>.
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary lives in target/<profile>/deps");
        let bin = profile_dir.join("faultline");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "-q", "-p", "vmm", "--bin", "faultline"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build
            .current_dir(repo_root())
            .status()
            .expect("run cargo build");
        assert!(
            status.success(),
            "cargo build -p vmm --bin faultline failed"
        );
        assert!(
            bin.exists(),
            "cargo build did not produce {}",
            bin.display()
        );
        bin
    })
    .clone()
}

/// What a time-limited run produced.
#[derive(Debug)]
pub struct RunOutput {
    /// Exit status; `None` if the time limit killed it.
    pub status: Option<ExitStatus>,
    /// Everything it printed on stdout (the guest's serial console).
    pub stdout: String,
    /// Everything it printed on stderr (the VMM's messages).
    pub stderr: String,
    /// Wall time from spawn to exit (or kill).
    pub elapsed: Duration,
}

impl RunOutput {
    /// Both output streams, labelled, for a failing assertion's message.
    pub fn transcript(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout, self.stderr
        )
    }

    /// The exit code, or a panic naming what happened instead.
    pub fn code(&self) -> i32 {
        match self.status {
            None => panic!("timed out after {:?}\n{}", self.elapsed, self.transcript()),
            Some(s) => s
                .code()
                .unwrap_or_else(|| panic!("killed by {s}\n{}", self.transcript())),
        }
    }
}

/// Runs `cmd` (stdin closed, stdout/stderr captured) and kills it after `limit`: the VMM's
/// spawn-with-timeout helper, [`vmm::host::process::run_with_timeout`], with the output
/// joined back into text.
pub fn run_with_timeout(cmd: Command, limit: Duration) -> RunOutput {
    let c = vmm::host::process::run_with_timeout(cmd, limit).unwrap_or_else(|e| panic!("{e}"));
    let text = |lines: &[vmm::host::process::Line]| {
        lines
            .iter()
            .map(|l| format!("{}\n", l.text))
            .collect::<String>()
    };
    RunOutput {
        status: (!c.timed_out).then_some(c.status),
        stdout: text(&c.stdout),
        stderr: text(&c.stderr),
        elapsed: Duration::from_nanos(c.exit_ns.saturating_sub(c.t0)),
    }
}
