//! Kicking vCPU threads out of KVM_RUN (the stop path, the watchdog, a debugger's pause).

use std::sync::atomic::{AtomicBool, Ordering};

// Kicking a vCPU out of KVM_RUN: a real-time signal whose handler sets `immediate_exit` in
// this thread's kvm_run, so a kick that lands just before KVM_RUN is not lost.
thread_local! {
    static KVM_RUN: std::cell::Cell<*mut u8> = const { std::cell::Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let p = KVM_RUN.with(|c| c.get());
    if !p.is_null() {
        // SAFETY: `p` points at this thread's live kvm_run's `immediate_exit` byte; it is
        // set below before the first KVM_RUN and cleared before the VcpuFd is dropped.
        unsafe { p.write_volatile(1) };
    }
}

/// The signal used to kick vCPU threads.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

/// Installs the kick handler (once per process).
pub fn install_kick_handler() -> std::io::Result<()> {
    static INSTALLED: std::sync::OnceLock<Result<(), i32>> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler)
                .map_err(|e| e.errno())
        })
        .map_err(std::io::Error::from_raw_os_error)
}

/// The calling thread's kernel thread id (gettid(2); what tracefs `set_event_pid` takes).
pub fn current_kernel_tid() -> u32 {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    u32::try_from(tid).unwrap_or(0)
}

/// The calling thread's pthread id (for [`stop_vcpus`]).
pub fn current_thread_id() -> u64 {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() as u64 }
}

/// Kicks every vCPU thread that has not finished out of KVM_RUN once (KVM_RUN returns EINTR
/// and the thread carries on).
pub fn kick_vcpus(tids: &[std::sync::atomic::AtomicU64], finished: &[AtomicBool]) {
    for (tid, f) in tids.iter().zip(finished) {
        let t = tid.load(Ordering::Acquire);
        if t != 0 && !f.load(Ordering::Acquire) {
            // SAFETY: `t` is the pthread id of a scoped vCPU thread that has not finished
            // (and so has not been joined): it is still valid.
            unsafe { libc::pthread_kill(t as libc::pthread_t, kick_signal()) };
        }
    }
}

/// Kicks every vCPU thread (by the ids they stored with [`current_thread_id`]) whose
/// `finished` flag is not yet set, until all are done. A kick makes KVM_RUN return EINTR
/// (or not start, through `immediate_exit`); the loop then sees the VM has ended.
pub fn stop_vcpus(tids: &[std::sync::atomic::AtomicU64], finished: &[AtomicBool]) {
    loop {
        let mut all = true;
        for (tid, f) in tids.iter().zip(finished) {
            if f.load(Ordering::Acquire) {
                continue;
            }
            all = false;
            let t = tid.load(Ordering::Acquire);
            if t != 0 {
                // SAFETY: `t` is the pthread id of a scoped vCPU thread that has not been
                // joined yet (the caller joins after this returns), so it is still valid.
                unsafe { libc::pthread_kill(t as libc::pthread_t, kick_signal()) };
            }
        }
        if all {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Points this thread's kick handler at `immediate_exit` (`kvm_run`'s byte), or at nothing
/// (null) before the vCPU fd is dropped.
pub(super) fn set_kick_target(immediate_exit: *mut u8) {
    KVM_RUN.with(|c| c.set(immediate_exit));
}
