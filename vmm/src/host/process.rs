//! Spawning a child process with a time limit, its output recorded line by line (each line
//! stamped with CLOCK_MONOTONIC when read): the one spawn-with-timeout helper of the VMM
//! (`bench boot`'s VMM and QEMU boots, `test mm --compare-qemu`) and the integration tests
//! (`faultline_tests::fixtures::run_with_timeout`).

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// CLOCK_MONOTONIC now, ns.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass and nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// The program could not be spawned or waited for.
#[derive(Debug, thiserror::Error)]
#[error("Cannot run {}: {source}; is it installed and executable?", program.display())]
pub struct SpawnError {
    /// The program.
    pub program: PathBuf,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

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
    /// The exit status.
    pub status: ExitStatus,
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

/// Spawns `cmd` (stdin closed) and records its output line by line until it exits or
/// `timeout` passes (then it is killed with SIGKILL and `timed_out` is set).
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Result<Capture, SpawnError> {
    let spawn_err = |cmd: &Command, source| SpawnError {
        program: PathBuf::from(cmd.get_program()),
        source,
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = monotonic_ns();
    let mut child = cmd.spawn().map_err(|e| spawn_err(&cmd, e))?;
    let out = child
        .stdout
        .take()
        .map(|o| std::thread::spawn(|| read_lines(o)));
    let err = child
        .stderr
        .take()
        .map(|e| std::thread::spawn(|| read_lines(e)));
    // Wait by polling, so the kill can only reach our own unreaped child (no pid reuse
    // race), at a cost of at most one poll interval in `exit_ns`.
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Ok(st),
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                let _ = child.kill();
                break child.wait();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => break Err(e),
        }
    };
    let exit_ns = monotonic_ns();
    let status = status.map_err(|e| spawn_err(&cmd, e))?;
    let join = |h: Option<std::thread::JoinHandle<Vec<Line>>>| {
        h.and_then(|h| h.join().ok()).unwrap_or_default()
    };
    Ok(Capture {
        t0,
        stdout: join(out),
        stderr: join(err),
        exit_ns,
        code: status.code(),
        status,
        timed_out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_recorded_line_by_line_and_a_slow_child_is_killed() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo one; echo two >&2; exit 3"]);
        let r = run_with_timeout(c, Duration::from_secs(30)).unwrap();
        assert_eq!(
            r.stdout.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
            ["one"]
        );
        assert_eq!(r.stderr[0].text, "two");
        assert_eq!((r.code, r.timed_out), (Some(3), false));
        // A line is stamped when its reader thread reads it, which may be after the exit.
        assert!(r.t0 <= r.stdout[0].t && r.t0 <= r.exit_ns);
        let mut c = Command::new("sleep");
        c.arg("30");
        let r = run_with_timeout(c, Duration::from_millis(200)).unwrap();
        assert!(r.timed_out && r.code.is_none(), "{r:?}");
        assert!(r.exit_ns - r.t0 < 10_000_000_000);
        let e = run_with_timeout(Command::new("/nonexistent/prog"), Duration::from_secs(1))
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/prog"), "{e}");
    }
}
