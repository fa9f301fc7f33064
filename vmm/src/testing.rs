//! Test support shared by vmm's unit tests and the integration tests in `tests/`: the one
//! place that decides whether a test may run on this machine, and the one way a test skips.
//!
//! A skip prints exactly `SKIPPED <test name>: <reason>` on stderr (like kselftest's
//! `ksft_test_result_skip()`, tools/testing/selftests/kselftest.h) and the test returns.
//! Because a skipped Rust test counts as passed, CI sets `FAULTLINE_REQUIRE_KVM=1`: then a
//! skip on a machine that has /dev/kvm panics ("skip not allowed: ...") instead, so a
//! broken probe or a missing fixture cannot turn the run green.
//!
//! ```ignore
//! #[test]
//! fn runs_a_guest() {
//!     vmm::require_kvm!();
//!     // ... uses /dev/kvm ...
//! }
//! ```

/// The environment variable that turns skips into failures where /dev/kvm exists.
pub const REQUIRE_KVM_ENV: &str = "FAULTLINE_REQUIRE_KVM";

/// The KVM device the tests use.
pub const KVM_DEVICE: &str = "/dev/kvm";

/// `Ok` when /dev/kvm can be opened read-write and answers `KVM_GET_API_VERSION` with the
/// stable API version 12; otherwise why not, with the fix.
pub fn kvm_available() -> Result<(), String> {
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(KVM_DEVICE)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!(
                "{KVM_DEVICE} does not exist (load kvm_intel or kvm_amd, or run on a host with KVM)"
            ),
            std::io::ErrorKind::PermissionDenied => format!(
                "no permission to open {KVM_DEVICE} ({e}); add yourself to its group: sudo usermod -aG kvm $USER"
            ),
            _ => format!("cannot open {KVM_DEVICE}: {e}"),
        })?;
    // KVM_GET_API_VERSION = _IO(KVMIO, 0x00) (include/uapi/linux/kvm.h).
    const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns an int.
    let v = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&kvm),
            KVM_GET_API_VERSION,
            0,
        )
    };
    if v != 12 {
        return Err(format!(
            "{KVM_DEVICE} is not a KVM device with the stable API (KVM_GET_API_VERSION gave {v}, want 12)"
        ));
    }
    Ok(())
}

/// Whether skips are forbidden here: `FAULTLINE_REQUIRE_KVM=1` and /dev/kvm exists.
#[must_use]
pub fn skips_forbidden() -> bool {
    forbidden(
        std::env::var(REQUIRE_KVM_ENV).ok().as_deref(),
        std::path::Path::new(KVM_DEVICE).exists(),
    )
}

fn forbidden(require: Option<&str>, kvm_exists: bool) -> bool {
    require == Some("1") && kvm_exists
}

/// Skips test `test`: prints `SKIPPED <test>: <reason>` on stderr, or panics with
/// "skip not allowed: ..." when [`skips_forbidden`].
///
/// # Panics
/// When skips are forbidden (see the module docs).
pub fn skip(test: &str, reason: &str) {
    assert!(
        !skips_forbidden(),
        "skip not allowed: {test}: {reason} ({REQUIRE_KVM_ENV}=1 and {KVM_DEVICE} exists; fix the cause, or unset {REQUIRE_KVM_ENV} to allow skips)"
    );
    eprintln!("SKIPPED {test}: {reason}");
}

/// True when KVM is usable; otherwise skips `test` (see [`skip`]) and returns false.
#[must_use]
pub fn kvm_or_skip(test: &str) -> bool {
    match kvm_available() {
        Ok(()) => true,
        Err(reason) => {
            skip(test, &reason);
            false
        }
    }
}

/// The running test's name: libtest names each test's thread after the test's path;
/// `fallback` where it does not (`--test-threads=1` runs tests on the main thread).
#[must_use]
pub fn current_test_name(fallback: &str) -> String {
    match std::thread::current().name() {
        Some(n) if n != "main" => n.to_string(),
        _ => fallback.to_string(),
    }
}

/// Returns from the calling test, through [`skip`], when KVM is not usable.
#[macro_export]
macro_rules! require_kvm {
    () => {
        if !$crate::testing::kvm_or_skip(&$crate::testing::current_test_name(module_path!())) {
            return;
        }
    };
}

/// Returns from the calling test, through [`skip`], when `$result` is an `Err(reason)`
/// (a reason convertible to a string); evaluates to the `Ok` value otherwise.
#[macro_export]
macro_rules! skip_unless {
    ($result:expr) => {
        match $result {
            Ok(v) => v,
            Err(reason) => {
                $crate::testing::skip(
                    &$crate::testing::current_test_name(module_path!()),
                    &reason.to_string(),
                );
                return;
            }
        }
    };
}

/// The exact command that installs `pkgs` on Debian, for messages.
#[must_use]
pub fn apt_command(pkgs: &[&str]) -> String {
    format!("sudo apt-get install -y {}", pkgs.join(" "))
}

/// The Debian packages of `pkgs` that are not installed, or why that cannot be told.
fn missing_packages(pkgs: &[&str]) -> Result<Vec<String>, String> {
    let mut missing = Vec::new();
    for p in pkgs {
        let out = std::process::Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", p])
            .stderr(std::process::Stdio::null())
            .output()
            .map_err(|e| {
                format!(
                    "cannot run dpkg-query ({e}): this is not a Debian system; install the \
                     equivalents of the Debian packages {} with your package manager",
                    pkgs.join(" ")
                )
            })?;
        if !String::from_utf8_lossy(&out.stdout).contains("install ok installed") {
            missing.push((*p).to_string());
        }
    }
    Ok(missing)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// An exclusive `flock` on a file, released when dropped (the fd closes).
#[derive(Debug)]
struct FileLock {
    _file: std::fs::File,
}

impl FileLock {
    fn take(path: &std::path::Path) -> Result<Self, String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| format!("cannot open the lock file {}: {e}", path.display()))?;
        loop {
            // SAFETY: flock on an fd we own; blocks until the lock is ours.
            let r = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) };
            if r == 0 {
                return Ok(Self { _file: f });
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(format!("cannot lock {}: {e}", path.display()));
            }
        }
    }
}

/// What `resources/guest-kernel/build.sh` needs: the Linux 6.12 source and its toolchain
/// (the tests' fixtures and `faultline test mm` both build the guest kernel).
pub const KERNEL_BUILD_PACKAGES: &[&str] = &[
    "linux-source-6.12",
    "build-essential",
    "bc",
    "flex",
    "bison",
    "libelf-dev",
    "libssl-dev",
    "lz4",
    "xz-utils",
    "cpio",
];

/// Makes sure the Debian packages `pkgs` are installed. Where some are missing and we are
/// root on Debian, runs `apt-get update` (once per process) and `apt-get install -y` for
/// them, with apt's progress on stderr and the command printed first; test processes take
/// turns through a lock file (`~/.cache/faultline/apt.lock`), so two never run apt at once.
/// Where it cannot install (not root, no apt-get, another distribution), the error is the
/// exact command to run.
pub fn require_packages(pkgs: &[&str]) -> Result<(), String> {
    static UPDATED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    if missing_packages(pkgs)?.is_empty() {
        return Ok(());
    }
    let has_apt = std::process::Command::new("apt-get")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !is_root() || !has_apt {
        let missing = missing_packages(pkgs)?;
        let missing: Vec<&str> = missing.iter().map(String::as_str).collect();
        return Err(format!(
            "missing Debian package(s) {}; install them with: {}",
            missing.join(" "),
            apt_command(&missing)
        ));
    }
    // One apt at a time: threads of this process through the mutex, processes through flock.
    let mut updated = UPDATED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    let _lock = FileLock::take(&std::path::Path::new(&home).join(".cache/faultline/apt.lock"))?;
    let missing = missing_packages(pkgs)?;
    if missing.is_empty() {
        return Ok(());
    }
    let apt = |args: &[&str]| -> Result<(), String> {
        let mut cmd = std::process::Command::new("apt-get");
        cmd.args(["-o", "DPkg::Lock::Timeout=600"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(std::process::Stdio::null());
        // apt's progress goes to stderr, with the test's other messages.
        // SAFETY: dup of our own stderr fd; the new fd is owned by the Stdio.
        let err = unsafe { libc::dup(2) };
        if err >= 0 {
            // SAFETY: `err` is a fresh fd nothing else owns.
            cmd.stdout(unsafe {
                <std::process::Stdio as std::os::fd::FromRawFd>::from_raw_fd(err)
            });
        }
        eprintln!(
            "fixtures: running: apt-get -o DPkg::Lock::Timeout=600 {}",
            args.join(" ")
        );
        let status = cmd
            .status()
            .map_err(|e| format!("cannot run apt-get {}: {e}", args.join(" ")))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "apt-get {} failed ({status}); its messages are above",
                args.join(" ")
            ))
        }
    };
    if !*updated {
        apt(&["update"])?;
        *updated = true;
    }
    let mut args = vec!["install", "-y"];
    args.extend(missing.iter().map(String::as_str));
    apt(&args)?;
    let still = missing_packages(pkgs)?;
    if still.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "apt-get install reported success but {} is still not installed",
            still.join(" ")
        ))
    }
}

use crate::host::sysfs::pool_file;

fn read_pool(size_kib: u64, leaf: &str) -> Result<u64, String> {
    let path = pool_file(size_kib, leaf);
    std::fs::read_to_string(&path)
        .map_err(|e| {
            format!("cannot read {path} ({e}): this kernel has no {size_kib} KiB huge pages")
        })?
        .trim()
        .parse()
        .map_err(|e| format!("{path} does not hold a number: {e}"))
}

fn write_pool(size_kib: u64, n: u64) -> std::io::Result<()> {
    std::fs::write(pool_file(size_kib, "nr_hugepages"), n.to_string())
}

/// One page size's reservations in this process.
#[derive(Debug)]
struct Pool {
    size_kib: u64,
    /// Pages promised to the live guards.
    promised: u64,
    /// Pool size before the first live guard.
    nr_before: u64,
    /// Free pages before the first live guard (others' to use, or ours).
    free_before: u64,
}

static POOLS: std::sync::Mutex<Vec<Pool>> = std::sync::Mutex::new(Vec::new());

/// A reservation of huge pages by [`reserve_huge_pages`]; when the last guard of its page
/// size in this process drops, the pool goes back to the size it had before the first.
#[derive(Debug)]
#[must_use = "the pages are released when the guard drops"]
pub struct HugePages {
    size_kib: u64,
    count: u64,
}

impl Drop for HugePages {
    fn drop(&mut self) {
        let mut pools = POOLS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(i) = pools.iter().position(|p| p.size_kib == self.size_kib) else {
            return;
        };
        pools[i].promised -= self.count;
        if pools[i].promised > 0 {
            return;
        }
        let pool = pools.remove(i);
        if read_pool(self.size_kib, "nr_hugepages").ok() != Some(pool.nr_before) {
            match write_pool(self.size_kib, pool.nr_before) {
                Ok(()) => eprintln!(
                    "fixtures: restored {} to {}",
                    pool_file(self.size_kib, "nr_hugepages"),
                    pool.nr_before
                ),
                Err(e) => eprintln!(
                    "fixtures: cannot restore {} to {}: {e}",
                    pool_file(self.size_kib, "nr_hugepages"),
                    pool.nr_before
                ),
            }
        }
    }
}

/// Makes `count` huge pages of `size_kib` KiB (2048 or 1048576) available to the caller:
/// as root, raises `/sys/kernel/mm/hugepages/hugepages-<size>kB/nr_hugepages` so that the
/// pages free before the first reservation plus the added ones cover every live guard's
/// count (tests run in parallel threads, so reservations add up). The last guard of a size
/// to drop restores the pool. Where the pages cannot be had (not root, too little
/// contiguous memory), the error says how to reserve them, for the caller to [`skip`] with.
pub fn reserve_huge_pages(size_kib: u64, count: u64) -> Result<HugePages, String> {
    let mut pools = POOLS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let i = match pools.iter().position(|p| p.size_kib == size_kib) {
        Some(i) => i,
        None => {
            pools.push(Pool {
                size_kib,
                promised: 0,
                nr_before: read_pool(size_kib, "nr_hugepages")?,
                // Free but reserved by a mapping is not free for us.
                free_before: read_pool(size_kib, "free_hugepages")?
                    .saturating_sub(read_pool(size_kib, "resv_hugepages")?),
            });
            pools.len() - 1
        }
    };
    pools[i].promised += count;
    // From here on, the guard's drop undoes the promise (and restores the pool if last).
    let guard = HugePages { size_kib, count };
    let pool = &pools[i];
    let want = pool.nr_before + pool.promised.saturating_sub(pool.free_before);
    let nr = read_pool(size_kib, "nr_hugepages")?;
    if nr >= want {
        drop(pools);
        return Ok(guard);
    }
    let how = format!(
        "{count} free {size_kib} KiB huge pages are needed; reserve them with: echo {want} | sudo tee {}",
        pool_file(size_kib, "nr_hugepages")
    );
    if !is_root() {
        drop(pools);
        return Err(how);
    }
    let result = write_pool(size_kib, want)
        .map_err(|e| format!("{how} (writing it failed: {e})"))
        .and_then(|()| read_pool(size_kib, "nr_hugepages"));
    drop(pools);
    match result {
        Ok(got) if got >= want => {
            eprintln!(
                "fixtures: reserved {size_kib} KiB huge pages: {} = {want} (restored when the tests are done)",
                pool_file(size_kib, "nr_hugepages")
            );
            Ok(guard)
        }
        Ok(got) => Err(format!(
            "{how} (the kernel found memory for only {got}: too little contiguous free memory)"
        )),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_name_comes_from_the_libtest_thread() {
        let n = current_test_name("fallback");
        assert!(
            n == "fallback" || n.ends_with("test_name_comes_from_the_libtest_thread"),
            "{n}"
        );
    }

    #[test]
    fn kvm_probe_agrees_with_opening_the_device() {
        let opens = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(KVM_DEVICE)
            .is_ok();
        let probe = kvm_available();
        if !opens {
            assert!(probe.is_err());
        }
        if let Err(e) = probe {
            assert!(e.contains(KVM_DEVICE), "{e}");
        }
    }

    #[test]
    fn only_require_1_with_a_kvm_device_forbids_skips() {
        assert!(forbidden(Some("1"), true));
        assert!(!forbidden(Some("1"), false));
        assert!(!forbidden(Some("0"), true));
        assert!(!forbidden(Some(""), true));
        assert!(!forbidden(None, true));
    }

    #[test]
    fn skip_panics_only_when_forbidden() {
        let r = std::panic::catch_unwind(|| skip("t", "why"));
        assert_eq!(r.is_err(), skips_forbidden());
        if let Err(p) = r {
            let msg = p.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(msg.starts_with("skip not allowed: t: why"), "{msg}");
        }
    }

    #[test]
    fn huge_page_guards_raise_the_pool_and_the_last_one_restores_it() {
        let before = read_pool(2048, "nr_hugepages").unwrap();
        let a = crate::skip_unless!(reserve_huge_pages(2048, 2));
        let b = reserve_huge_pages(2048, 3).expect("a second reservation where the first worked");
        // Both promises are covered by the pool at once.
        let usable =
            read_pool(2048, "free_hugepages").unwrap() - read_pool(2048, "resv_hugepages").unwrap();
        assert!(usable >= 5, "{usable} usable 2M pages with 5 promised");
        drop(a);
        drop(b);
        let others = POOLS.lock().unwrap().iter().any(|p| p.size_kib == 2048);
        if !others {
            assert_eq!(read_pool(2048, "nr_hugepages").unwrap(), before);
        }
    }

    #[test]
    fn missing_packages_give_the_command_to_run() {
        assert_eq!(
            apt_command(&["busybox-static", "cpio"]),
            "sudo apt-get install -y busybox-static cpio"
        );
        if is_root() {
            return; // root would install it; the non-root message is what is checked here.
        }
        let e = require_packages(&["faultline-no-such-package"]).unwrap_err();
        assert!(
            e.contains("sudo apt-get install -y faultline-no-such-package")
                || e.contains("not a Debian system"),
            "{e}"
        );
    }
}
