//! The current process id without a system call per use: the pool and the
//! connections check it on every operation (a forked child must never use its
//! parent's sockets), which used to cost about seven `getpid` calls per
//! acquire+release. The id is cached and forgotten in the child of every
//! `fork` (a `pthread_atfork` handler), so the child reads its own again.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Once;

/// 0 = not known (never read, or forgotten by a fork).
static PID: AtomicU32 = AtomicU32::new(0);
static WATCH_FORKS: Once = Once::new();
/// Whether the fork handler is in place (else the id is never cached).
static FORK_AWARE: AtomicBool = AtomicBool::new(false);

/// Runs in the child right after `fork`; only an atomic store, which is
/// async-signal-safe as the handler must be.
extern "C" fn forget_in_child() {
    PID.store(0, Ordering::Relaxed);
}

/// This process's id.
pub fn id() -> u32 {
    WATCH_FORKS.call_once(|| {
        // SAFETY: registers a handler that only stores to an atomic. If the
        // registration fails (ENOMEM), `registered` stays false and every
        // call asks the kernel instead.
        let registered = unsafe { libc::pthread_atfork(None, None, Some(forget_in_child)) } == 0;
        FORK_AWARE.store(registered, Ordering::Relaxed);
    });
    let cached = PID.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    let pid = std::process::id();
    if FORK_AWARE.load(Ordering::Relaxed) {
        PID.store(pid, Ordering::Relaxed);
    }
    pid
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_forked_child_sees_its_own_id() {
        let parent = super::id();
        assert_eq!(parent, std::process::id());
        // SAFETY: the child only calls id() (atomics and getpid) and _exit.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork failed");
        if child == 0 {
            let ok = super::id() == std::process::id() && super::id() != parent;
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        unsafe { libc::waitpid(child, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child saw a stale id"
        );
        assert_eq!(super::id(), parent);
    }
}
