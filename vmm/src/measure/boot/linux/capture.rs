//! Spawning a VMM and recording its output line by line, each line stamped when read:
//! [`crate::host::process`], the shared spawn-with-timeout helper.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

pub use crate::host::process::{Capture, Line};

/// Spawns `cmd` and records its output line by line until it exits or `timeout` passes
/// (then it is killed): [`crate::host::process::run_with_timeout`].
pub fn capture(cmd: Command, timeout: Duration) -> Result<Capture, (PathBuf, std::io::Error)> {
    crate::host::process::run_with_timeout(cmd, timeout).map_err(|e| (e.program, e.source))
}
