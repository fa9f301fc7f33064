//! `faultline run --gdb ADDR`: a gdb stub (the remote serial protocol through the gdbstub
//! crate), the way QEMU's `-s -S` works. The VM is built, its vCPUs are held before their
//! first instruction, faultline prints `waiting for gdb on ...`, and gdb's `continue`
//! starts the guest.
//!
//! - [`connection`]: the TCP port or unix socket gdb connects to.
//! - [`vcpus`]: the exit hook that parks vCPU threads while gdb has the guest stopped and
//!   serves register and translation requests on them.
//! - [`target`]: gdbstub's target (threads = vCPUs, registers, memory at guest-virtual
//!   addresses, breakpoints, resume, single step) and the all-stop event loop.
//! - [`registers`], [`breakpoints`], [`translate`]: the pure parts (register marshalling,
//!   DR0-DR3/DR7, page-table walk), unit-tested without KVM.
//!
//! It runs through the one launch path: an [`ExitHook`](crate::vstate::hook::ExitHook) on
//! the [`VmBuilder`] and a [`Vmm::run_with`](crate::launch::Vmm::run_with) controller
//! thread that speaks to gdb.
//!
//! ```no_run
//! use vmm::{config::VmConfig, launch::{VmBuilder, VmIo}, gdb};
//! let listener = gdb::connection::GdbListener::bind(&"1234".parse().unwrap()).unwrap();
//! let outcome = gdb::run(VmBuilder::new(VmConfig::default(), VmIo::stdio()), 1, listener).unwrap();
//! std::process::exit(outcome.exit.status());
//! ```
//!
//! Limits: software breakpoints are refused (int3 cannot run on this platform's KVM; use
//! `hbreak`); 4 hardware breakpoints/watchpoints in all; register writes change the
//! general registers, RIP and EFLAGS only; the register set is gdb's x86-64 core + SSE
//! (no control registers).

pub mod breakpoints;
pub mod connection;
pub mod registers;
pub mod target;
pub mod translate;
pub mod vcpus;

use crate::launch::{RunOutcome, VmBuilder, VmHandle, VmmError};
use connection::GdbListener;
use devices::exit::VmExit;
use gdbstub::stub::{DisconnectReason, GdbStub};
use std::sync::Arc;
use target::{GdbEventLoop, GdbTarget};
use vcpus::GdbVcpus;

/// Runs the VM `builder` describes (with `vcpus` vCPUs) under gdb: holds the vCPUs, waits
/// for gdb on `listener`, and serves it until it detaches (the guest runs on), kills the VM,
/// or the guest ends.
pub fn run(
    builder: VmBuilder,
    vcpus: usize,
    listener: GdbListener,
) -> Result<RunOutcome, VmmError> {
    let hook = Arc::new(GdbVcpus::new(vcpus));
    let vmm = builder.exit_hook(hook.clone()).build()?;
    hook.bind_exit(vmm.exit_signal());
    let addr = listener.local_addr();
    eprintln!("faultline: waiting for gdb on {addr} (in gdb: target remote {addr})");
    let (outcome, _) = vmm.run_with(|h| session(&hook, h, &listener, vcpus))?;
    Ok(outcome)
}

/// One gdb session on the controller thread.
fn session(hook: &GdbVcpus, h: &VmHandle<'_>, listener: &GdbListener, n: usize) {
    let conn = match listener.accept() {
        Ok(c) => c,
        Err(e) => {
            hook.release();
            h.request_stop(VmExit::Crash {
                vcpu: 0,
                reason: e.to_string(),
            });
            return;
        }
    };
    eprintln!("faultline: gdb connected");
    // Set up (listener bound, connection accepted): from here the thread only speaks the
    // protocol over its socket and drives the vCPUs.
    if let Err(e) = h.seccomp().apply(crate::seccomp::ThreadKind::Gdb) {
        hook.release();
        h.request_stop(VmExit::Crash {
            vcpu: 0,
            reason: e.to_string(),
        });
        return;
    }
    let mut target = GdbTarget::new(hook, h, n);
    let result = GdbStub::new(conn).run_blocking::<GdbEventLoop<'_>>(&mut target);
    hook.release();
    match result {
        Ok(DisconnectReason::Kill) => {
            h.request_stop(VmExit::Crash {
                vcpu: 0,
                reason: "killed from gdb".into(),
            });
            return;
        }
        Ok(DisconnectReason::Disconnect) => {
            eprintln!("faultline: gdb detached; the guest runs on");
        }
        Ok(DisconnectReason::TargetExited(_)) | Ok(DisconnectReason::TargetTerminated(_)) => {}
        Err(e) => {
            eprintln!("faultline: gdb session ended: {e}; the guest runs on");
        }
    }
    while !h.stopped() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
