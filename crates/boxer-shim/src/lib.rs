//! `libboxer_shim.so`: LD_PRELOAD into every application process of a node.
//!
//! It makes the overlay look like a real network to unmodified programs:
//! `connect` to an overlay address reaches the peer through the runtime;
//! `bind`/`listen`/`accept`/`getpeername`/`getsockname` show overlay
//! addresses; names resolve to overlay addresses; `getifaddrs` shows a
//! `boxer0` interface; UDP to an overlay address is sent to a runtime-owned
//! flow socket instead, and replies show the remote app's overlay address
//! ([`hooks::udp`]); broadcast and multicast fail with `ENETUNREACH`.
//!
//! The shim is never on the data path: a redirected socket stays the app's
//! own kernel TCP or UDP socket, talking to the runtime on the node's
//! private loopback address, so epoll, non-blocking connect, `SO_ERROR`,
//! `TCP_NODELAY`, `fork` and `exec` behave natively.
//!
//! Rules every hook follows: never unwind into C (each body runs under
//! [`guard`]); no threads and no async runtime; real symbols resolved once;
//! `errno` preserved except where the call's own result sets it; anything
//! that is not overlay traffic passes straight to libc. Without the
//! runtime's environment (see [`config`]) every hook is a pass-through.

pub mod config;
pub mod control;
pub mod flow_cache;
pub mod hooks;
pub mod inet;
pub mod real;

use std::panic::{AssertUnwindSafe, catch_unwind};

/// Reads the configuration and resolves the real symbols while the process
/// is still single-threaded, before `main`. Some servers (nginx) clear the
/// environment of their workers, so reading it lazily would be too late.
extern "C" fn init() {
    let _ = catch_unwind(|| {
        real::init();
        config::init();
    });
}

#[used]
#[unsafe(link_section = ".init_array")]
static INIT: extern "C" fn() = init;

/// Runs a hook body; if it panics (a bug), runs `fallback` instead so the
/// panic never crosses into C.
pub(crate) fn guard<T>(body: impl FnOnce() -> T, fallback: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|_| fallback())
}

/// The calling thread's `errno`.
pub(crate) fn errno() -> i32 {
    // SAFETY: glibc returns a valid thread-local pointer.
    unsafe { *libc::__errno_location() }
}

/// Sets the calling thread's `errno`.
pub(crate) fn set_errno(value: i32) {
    // SAFETY: glibc returns a valid thread-local pointer.
    unsafe { *libc::__errno_location() = value }
}

/// Fails a call the C way: sets `errno`, returns -1.
pub(crate) fn fail(err: i32) -> libc::c_int {
    set_errno(err);
    -1
}
