//! Spawning a VMM and recording its output line by line, each line stamped when read.

use crate::measure::boot::monotonic_ns;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One line of a child's output with CLOCK_MONOTONIC when it was read, ns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// When it was read.
    pub t: u64,
    /// The text, without the line end.
    pub text: String,
}

/// What one boot printed and when it ended.
#[derive(Debug, Clone)]
pub struct Capture {
    /// CLOCK_MONOTONIC right before the spawn, ns.
    pub t0: u64,
    /// The console (stdout).
    pub stdout: Vec<Line>,
    /// stderr.
    pub stderr: Vec<Line>,
    /// CLOCK_MONOTONIC when the process was reaped, ns.
    pub exit_ns: u64,
    /// Exit status code (None: killed by a signal).
    pub code: Option<i32>,
    /// Killed after `--timeout`.
    pub timed_out: bool,
}

impl Capture {
    /// The last lines of stdout and stderr, for error messages.
    pub fn tail(&self) -> String {
        let last = |v: &[Line], n: usize| {
            v[v.len().saturating_sub(n)..]
                .iter()
                .map(|l| format!("  {}", l.text))
                .collect::<Vec<_>>()
                .join("\n")
        };
        format!("{}\n{}", last(&self.stdout, 8), last(&self.stderr, 4))
    }
}

fn read_lines(r: impl std::io::Read) -> Vec<Line> {
    let mut r = std::io::BufReader::new(r);
    let mut out = Vec::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let t = monotonic_ns();
                let text = String::from_utf8_lossy(&buf);
                out.push(Line {
                    t,
                    text: text.trim_end_matches(['\r', '\n']).to_string(),
                });
            }
        }
    }
    out
}

/// Spawns `cmd` and records its output line by line until it exits or `timeout` passes
/// (then it is killed).
pub fn capture(mut cmd: Command, timeout: Duration) -> Result<Capture, (PathBuf, std::io::Error)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = monotonic_ns();
    let mut child = cmd
        .spawn()
        .map_err(|e| (PathBuf::from(cmd.get_program()), e))?;
    let out = child
        .stdout
        .take()
        .map(|o| std::thread::spawn(|| read_lines(o)));
    let err = child
        .stderr
        .take()
        .map(|e| std::thread::spawn(|| read_lines(e)));
    let pid = child.id();
    let timed_out = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let watchdog = {
        let timed_out = timed_out.clone();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(timeout) {
                timed_out.store(true, Ordering::Release);
                if let Ok(pid) = libc::pid_t::try_from(pid) {
                    // SAFETY: kill() on our own child's pid (not yet reaped: the main
                    // thread is still in wait(), so the pid cannot have been reused).
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        })
    };
    let status = child.wait();
    let exit_ns = monotonic_ns();
    let _ = tx.send(());
    let _ = watchdog.join();
    let status = status.map_err(|e| (PathBuf::from(cmd.get_program()), e))?;
    let join = |h: Option<std::thread::JoinHandle<Vec<Line>>>| {
        h.and_then(|h| h.join().ok()).unwrap_or_default()
    };
    Ok(Capture {
        t0,
        stdout: join(out),
        stderr: join(err),
        exit_ns,
        code: status.code(),
        timed_out: timed_out.load(Ordering::Acquire),
    })
}
