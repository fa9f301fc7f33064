//! Running built-in guests from tests, in process (library API) or as the real binary.
//!
//! Helpers come in pairs (kvm selftests' `vm_ioctl`/`__vm_ioctl`): [`run_guest`] panics
//! on a VMM error and turns a guest assertion into a host panic with the guest's
//! file:line and message (`REPORT_GUEST_ASSERT`); [`try_run_guest`] returns everything for
//! negative tests.

use crate::fixtures::{faultline_bin, run_with_timeout, RunOutput};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vmm::config::{MemoryConfig, Payload, VmConfig};
use vmm::{RunOutcome, VmIo, VmmError};

pub use devices::exit::VmExit;
pub use devices::ucall::{Ucall, UcallRecord};

/// How long a built-in guest may run before its test fails.
pub const GUEST_TIME_LIMIT: Duration = Duration::from_secs(60);

/// Whether /dev/kvm is usable; prints a SKIPPED line naming `test` when it is not.
pub fn kvm_available(test: &str) -> bool {
    crate::fixtures::kvm_available(test)
}

/// A finished in-process run: the outcome and the guest console text.
#[derive(Debug)]
pub struct GuestRun {
    /// What the VMM reported.
    pub outcome: RunOutcome,
    /// Serial output and ucall prints.
    pub console: String,
}

/// A VmConfig for built-in guest `name` with `vcpus` vCPUs and default memory.
pub fn guest_config(name: &str, vcpus: u32) -> VmConfig {
    VmConfig {
        memory: MemoryConfig::default(),
        vcpus,
        payload: Payload::Guest(name.to_string()),
        ..VmConfig::default()
    }
}

/// Runs `config` in this process with a captured console.
pub fn try_run_vm(config: VmConfig) -> Result<GuestRun, VmmError> {
    let (io, buf): (VmIo, Arc<Mutex<Vec<u8>>>) = VmIo::captured();
    let outcome = vmm::run(config, io)?;
    let console = String::from_utf8_lossy(&buf.lock().unwrap()).into_owned();
    Ok(GuestRun { outcome, console })
}

/// Runs built-in guest `name`; errors are returned, not raised.
pub fn try_run_guest(name: &str, vcpus: u32) -> Result<GuestRun, VmmError> {
    try_run_vm(guest_config(name, vcpus))
}

/// Runs `config` and requires a clean `done(0)` / status 0; a guest assertion becomes a
/// panic with the guest's file:line: message, a crash a panic with the crash report.
pub fn run_vm(config: VmConfig) -> GuestRun {
    let run = try_run_vm(config).unwrap_or_else(|e| panic!("VMM error: {e}"));
    match &run.outcome.exit {
        VmExit::AssertFailed {
            vcpu,
            file,
            line,
            msg,
        } => panic!(
            "guest assertion failed at {file}:{line} (vCPU {vcpu}): {msg}\n--- guest console ---\n{}",
            run.console
        ),
        e if e.status() != 0 => panic!("guest did not succeed: {e}\n--- guest console ---\n{}", run.console),
        _ => run,
    }
}

/// [`run_vm`] for built-in guest `name`.
pub fn run_guest(name: &str, vcpus: u32) -> GuestRun {
    run_vm(guest_config(name, vcpus))
}

/// Runs the real `faultline` binary with `args` (stdin closed) under [`GUEST_TIME_LIMIT`].
pub fn faultline(args: &[&str]) -> RunOutput {
    faultline_env(args, &[])
}

/// [`faultline`] with extra environment variables.
pub fn faultline_env(args: &[&str], env: &[(&str, &str)]) -> RunOutput {
    let mut cmd = Command::new(faultline_bin());
    cmd.args(args).env_remove("FAULTLINE_KVM_DEVICE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_with_timeout(cmd, GUEST_TIME_LIMIT)
}
