//! What can go wrong in `faultline bench boot`.

/// A boot could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum BenchBootError {
    /// Spawning the child failed.
    #[error("Cannot run {exe:?}: {source}")]
    Spawn {
        /// The executable.
        exe: std::path::PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The child failed.
    #[error("`faultline run --guest {guest}` exited with {status}: {stderr}")]
    Child {
        /// Guest.
        guest: String,
        /// Exit status.
        status: std::process::ExitStatus,
        /// Its stderr.
        stderr: String,
    },
    /// The child printed no timeline.
    #[error("`faultline run` printed no timeline line; stderr was: {0}")]
    NoTimeline(String),
    /// --runs 0.
    #[error("--runs 0: measure at least one boot (e.g. --runs 10)")]
    NoRuns,
    /// The --kernel file cannot be read.
    #[error("Cannot read --kernel {path:?}: {source}")]
    Kernel {
        /// Path.
        path: std::path::PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// Building the default initramfs failed.
    #[error("Building the benchmark's busybox initramfs failed: {0} (or pass --initrd)")]
    Initramfs(#[from] crate::boot::initramfs::InitramfsError),
    /// QEMU is not installed.
    #[error(
        "{0:?} not found: apt-get install qemu-system-x86 (or pass --qemu PATH, or --no-qemu)"
    )]
    QemuMissing(std::path::PathBuf),
    /// A Linux boot failed.
    #[error("{vmm} boot failed ({status}); its last output:\n{tail}")]
    Boot {
        /// faultline or QEMU.
        vmm: &'static str,
        /// How it ended.
        status: String,
        /// Last lines of its output.
        tail: String,
    },
    /// A Linux boot ended without printing the init marker.
    #[error("{vmm} boot ended without the init marker {marker:?} (check --init-marker and the initramfs); its last output:\n{tail}")]
    NoMarker {
        /// faultline or QEMU.
        vmm: &'static str,
        /// The marker.
        marker: String,
        /// Last lines of its output.
        tail: String,
    },
    /// Writing the JSON failed.
    #[error("Writing {path:?} failed: {source}")]
    Write {
        /// Path.
        path: std::path::PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
}
