//! Runs blocking Rust code without the GVL, interruptibly.
//!
//! Ruby calls the unblock function when the thread is killed or a Timeout
//! fires; it cancels the operation's `Interrupt`, which shuts down the sockets
//! the operation is blocked on. After the call Ruby raises any pending
//! interrupt; `protect` catches that jump so it unwinds through no Rust frame
//! that owns anything, and it is re-raised once our state is cleaned up.

use locking_core::Interrupt;
use std::ffi::c_void;
use std::panic::{self, AssertUnwindSafe};
use std::ptr;

struct Call<F, R> {
    func: Option<F>,
    result: Option<std::thread::Result<R>>,
}

unsafe extern "C" fn trampoline<F: FnOnce() -> R, R>(data: *mut c_void) -> *mut c_void {
    // SAFETY: `data` is the `Call` on `without_gvl`'s stack, alive for the call.
    let call = unsafe { &mut *(data as *mut Call<F, R>) };
    if let Some(func) = call.func.take() {
        call.result = Some(panic::catch_unwind(AssertUnwindSafe(func)));
    }
    ptr::null_mut()
}

unsafe extern "C" fn unblock(data: *mut c_void) {
    // SAFETY: `data` is the `Interrupt` borrowed by `without_gvl`; Ruby clears
    // the unblock function before that call returns.
    let interrupt = unsafe { &*(data as *const Interrupt) };
    interrupt.cancel();
}

/// What happened to a closure run without the GVL.
pub enum Outcome<R> {
    Finished(R),
    /// It panicked; the payload's message.
    Panicked(String),
    /// Ruby has an exception (Thread#kill, Timeout::Error ...) to raise now.
    Interrupted(magnus::Error),
}

pub fn without_gvl<F, R>(interrupt: &Interrupt, func: F) -> Outcome<R>
where
    F: FnOnce() -> R,
{
    let mut call = Call {
        func: Some(func),
        result: None,
    };
    let call_ptr = &mut call as *mut Call<F, R> as *mut c_void;
    let interrupt_ptr = interrupt as *const Interrupt as *mut c_void;
    // With a single Ruby thread, an unblock function makes Ruby start (and
    // join) a helper thread for every call, which costs more than a round
    // trip. Nothing but a signal (Ctrl-C) could need it then, and the socket
    // timeouts bound that wait; Thread#kill, Thread#raise and Timeout all
    // involve a second thread, and then the unblock function is passed.
    // SAFETY: called with the GVL held.
    let alone = unsafe { rb_sys::rb_thread_alone() } != 0;
    let ubf: Option<unsafe extern "C" fn(*mut c_void)> = if alone { None } else { Some(unblock) };
    let protected = magnus::rb_sys::protect(|| {
        // SAFETY: both pointers outlive this call (see `trampoline`, `unblock`).
        unsafe {
            rb_sys::rb_thread_call_without_gvl(
                Some(trampoline::<F, R>),
                call_ptr,
                ubf,
                interrupt_ptr,
            );
        }
        rb_sys::Qnil as rb_sys::VALUE
    });
    match (protected, call.result.take()) {
        (Err(jump), _) => Outcome::Interrupted(jump),
        (Ok(_), Some(Ok(value))) => Outcome::Finished(value),
        (Ok(_), Some(Err(payload))) => Outcome::Panicked(panic_message(&payload)),
        (Ok(_), None) => Outcome::Panicked("blocking call did not run".into()),
    }
}

fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_string()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "panic".to_string()
    }
}
