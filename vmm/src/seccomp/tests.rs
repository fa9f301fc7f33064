use super::*;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[test]
fn every_kind_compiles_and_lists_each_call_once() {
    for kind in ThreadKind::ALL {
        let list = allowed_syscalls(kind);
        for (i, (nr, why)) in list.iter().enumerate() {
            assert!(!why.is_empty(), "{kind}: {nr} has no reason");
            assert!(syscall_name(*nr).is_some(), "{kind}: {nr} has no name");
            assert!(!list[..i].iter().any(|e| e.0 == *nr), "{kind}: {nr} twice");
        }
        assert!(!filter(kind).unwrap().is_empty(), "{kind}");
    }
    // What a guest-facing thread must never do.
    for kind in [
        ThreadKind::Vcpu,
        ThreadKind::EventLoop,
        ThreadKind::UffdReader,
    ] {
        let list = allowed_syscalls(kind);
        for nr in [
            libc::SYS_socket,
            libc::SYS_execve,
            libc::SYS_openat,
            libc::SYS_clone3,
            libc::SYS_mount,
        ] {
            assert!(!list.iter().any(|e| e.0 == nr), "{kind} allows {nr}");
        }
    }
    // Main spawns the vCPU and event-loop threads: their filters stack on its own.
    let main = allowed_syscalls(ThreadKind::Main);
    for kind in [ThreadKind::Vcpu, ThreadKind::EventLoop] {
        for (nr, _) in allowed_syscalls(kind) {
            assert!(main.iter().any(|e| e.0 == nr), "main lacks {kind}'s {nr}");
        }
    }
}

#[test]
fn names_come_from_libc_numbers() {
    assert_eq!(syscall_name(libc::SYS_socket), Some("socket"));
    assert_eq!(syscall_name(libc::SYS_read), Some("read"));
    assert_eq!(syscall_name(libc::SYS_mount), Some("mount"));
    assert_eq!(syscall_name(100_000), None);
    let v = Violation {
        kind: ThreadKind::UffdReader,
        nr: libc::SYS_mount,
    };
    assert_eq!(Violation::decode(v.encode()), Some(v));
    assert_eq!(Violation::decode(0), None);
    assert_eq!(
        Violation { nr: 9999, ..v }.syscall(),
        "syscall 9999",
        "unknown numbers are still reported"
    );
}

#[test]
fn the_handler_message_names_the_call_the_thread_and_the_fix() {
    let mut out = String::new();
    message(&mut out, Some(ThreadKind::Vcpu), libc::SYS_socket);
    assert!(out.contains("`socket` (41)"), "{out}");
    assert!(out.contains("vCPU thread"), "{out}");
    assert!(out.contains("faultline bug: report it"), "{out}");
    assert!(out.contains("--no-seccomp"), "{out}");
    assert!(out.contains("104"), "{out}");
    // It fits the handler's stack buffer whole.
    let mut buf = StackBuf {
        buf: [0; 512],
        len: 0,
    };
    message(&mut buf, Some(ThreadKind::LiveResolver), libc::SYS_socket);
    assert!(buf.len < buf.buf.len(), "{}", buf.len);
    let exit = Violation {
        kind: ThreadKind::Vcpu,
        nr: libc::SYS_socket,
    }
    .to_exit();
    assert_eq!(exit.status(), STATUS_SECCOMP_VIOLATION);
    let text = exit.to_string();
    assert!(
        text.contains("vCPU thread") && text.contains("`socket`"),
        "{text}"
    );
}

/// socket(2) on a filtered thread: it fails with EPERM, the thread goes on, and the
/// policy records the call and wakes its eventfd.
#[test]
fn a_forbidden_call_fails_with_eperm_and_is_recorded() {
    let wake = EventFd::new(EFD_NONBLOCK).unwrap();
    let policy = Seccomp::on(Some(&wake)).unwrap();
    assert!(policy.enabled() && policy.violation().is_none());
    let p = policy.clone();
    let (rc, errno, after) = std::thread::spawn(move || {
        p.apply(ThreadKind::UffdReader).unwrap();
        // SAFETY: plain socket(2); the fd (if any) is closed below.
        let rc = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
        let errno = std::io::Error::last_os_error().raw_os_error();
        if rc >= 0 {
            // SAFETY: our own fd.
            unsafe { libc::close(rc) };
        }
        // Allowed calls still work: allocation, a lock, a sleep.
        let m = std::sync::Mutex::new(vec![0u8; 1 << 20]);
        std::thread::sleep(std::time::Duration::from_millis(1));
        let after = m.lock().unwrap().len();
        (rc, errno, after)
    })
    .join()
    .unwrap();
    assert_eq!((rc, errno, after), (-1, Some(libc::EPERM), 1 << 20));
    assert_eq!(
        policy.violation(),
        Some(Violation {
            kind: ThreadKind::UffdReader,
            nr: libc::SYS_socket
        })
    );
    assert_eq!(wake.read().unwrap(), 1);
    // This thread is not filtered.
    // SAFETY: plain socket(2), closed at once.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
    assert!(fd >= 0);
    // SAFETY: our own fd.
    unsafe { libc::close(fd) };
}

#[test]
fn off_installs_nothing() {
    let policy = Seccomp::off();
    assert!(!policy.enabled());
    let fd = std::thread::spawn(move || {
        policy.apply(ThreadKind::Vcpu).unwrap();
        // SAFETY: plain socket(2), closed at once.
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
        if fd >= 0 {
            // SAFETY: our own fd.
            unsafe { libc::close(fd) };
        }
        fd
    })
    .join()
    .unwrap();
    assert!(fd >= 0);
}

/// Set in the child process of
/// [`a_thread_heap_shrinking_under_its_filter_makes_no_forbidden_call`].
const MALLOC_CHILD: &str = "FAULTLINE_SECCOMP_MALLOC_CHILD";

/// glibc's malloc opens `/proc/sys/vm/overcommit_memory` the first time, in the process,
/// that a thread's heap shrinks (`check_may_shrink_heap()`); a live resolver once did that
/// under its filter and ended the VM with status 104. The check needs a process in which no
/// heap has shrunk yet, so the test runs its other half in a fresh copy of this test binary.
#[test]
fn a_thread_heap_shrinking_under_its_filter_makes_no_forbidden_call() {
    if std::env::var_os(MALLOC_CHILD).is_some() {
        let policy = Seccomp::on(None::<&EventFd>).unwrap();
        let p = policy.clone();
        std::thread::spawn(move || {
            p.apply(ThreadKind::LiveResolver).unwrap();
            // Grow this thread's heap far past glibc's trim threshold with allocations below
            // its mmap threshold, then free them all: heap_trim() would shrink the heap.
            let v: Vec<Vec<u8>> = (0..512).map(|i| vec![i as u8; 64 << 10]).collect();
            let sum: usize = v.iter().map(|b| usize::from(b[1])).sum();
            assert_eq!(sum, (0..512).map(|i| i % 256).sum::<usize>());
            drop(v);
            let again: Vec<Vec<u8>> = (0..8).map(|_| vec![0u8; 1 << 10]).collect();
            drop(again);
        })
        .join()
        .unwrap();
        assert_eq!(
            policy.violation(),
            None,
            "a call outside the LiveResolver filter"
        );
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "seccomp::tests::a_thread_heap_shrinking_under_its_filter_makes_no_forbidden_call",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(MALLOC_CHILD, "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the child failed:\n{text}");
    assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
}
