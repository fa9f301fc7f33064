//! Driving the host's KSM daemon for a `ksm-scan` step: `/sys/kernel/mm/ksm`
//! (Documentation/admin-guide/mm/ksm.rst).
//!
//! ksmd merges a page only once its checksum stayed the same over one whole pass and an
//! identical page is found on the next (`cmp_and_merge_page()`, mm/ksm.c), so a scan step
//! starts ksmd and waits until `full_scans` has advanced three times (the first pass may
//! have started mid-way), then puts `run`, `pages_to_scan` and `sleep_millisecs` back as
//! they were (with `run` back at 0 merged pages stay merged).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::host::sysfs::KSM_DIR;

/// A KSM scan could not be run.
#[derive(Debug, thiserror::Error)]
pub enum KsmError {
    /// The host kernel has no KSM.
    #[error("{KSM_DIR} does not exist: the host kernel has no KSM (CONFIG_KSM)")]
    NoKsm,
    /// A sysfs file could not be read or written.
    #[error("{what} {path}: {source} (KSM needs root: run faultline check as root)")]
    Sysfs {
        /// "reading" or "writing".
        what: &'static str,
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// ksmd did not finish its passes in time.
    #[error("ksmd did not complete 3 full scans within {0:?} (full_scans {1} -> {2}); the host may be too busy")]
    Timeout(Duration, u64, u64),
}

fn path(name: &str) -> String {
    format!("{KSM_DIR}/{name}")
}

fn read(name: &str) -> Result<u64, KsmError> {
    let p = path(name);
    let text = std::fs::read_to_string(&p).map_err(|source| KsmError::Sysfs {
        what: "reading",
        path: p.clone(),
        source,
    })?;
    text.trim().parse().map_err(|_| KsmError::Sysfs {
        what: "parsing",
        path: p,
        source: std::io::Error::other(format!("not a number: {text:?}")),
    })
}

fn write(name: &str, value: u64) -> Result<(), KsmError> {
    let p = path(name);
    std::fs::write(&p, format!("{value}\n")).map_err(|source| KsmError::Sysfs {
        what: "writing",
        path: p,
        source,
    })
}

/// Why a `ksm-scan` cannot run here, or `None` when it can.
pub fn unavailable() -> Option<String> {
    if !Path::new(KSM_DIR).exists() {
        return Some(KsmError::NoKsm.to_string());
    }
    // SAFETY: geteuid() has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some(format!("driving ksmd through {KSM_DIR} needs root"));
    }
    None
}

/// Runs ksmd until `full_scans` advanced by 3 (or `timeout`), then restores the settings.
pub fn scan(timeout: Duration) -> Result<(), KsmError> {
    let saved = [
        ("run", read("run")?),
        ("pages_to_scan", read("pages_to_scan")?),
        ("sleep_millisecs", read("sleep_millisecs")?),
    ];
    let result = (|| {
        let start = read("full_scans")?;
        write("pages_to_scan", 4096)?;
        write("sleep_millisecs", 1)?;
        write("run", 1)?;
        let t0 = Instant::now();
        loop {
            let now = read("full_scans")?;
            if now >= start + 3 {
                return Ok(());
            }
            if t0.elapsed() > timeout {
                return Err(KsmError::Timeout(timeout, start, now));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    })();
    // Restore in reverse order: stop ksmd first (run = 0 keeps merged pages merged).
    let mut restore = Ok(());
    for (name, v) in saved.iter().rev() {
        if let Err(e) = write(name, *v) {
            restore = Err(e);
        }
    }
    result.and(restore)
}
