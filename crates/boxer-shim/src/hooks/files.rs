//! Opens of `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` are
//! redirected to the files the runtime writes: in Lambda `/etc` is read-only,
//! and programs that parse these files themselves should see the cluster.
//!
//! `open` is variadic in C; on the x86-64 and AArch64 Linux ABIs the optional
//! `mode` travels in the same register as a fixed third argument, so taking it
//! as one and passing it on is exact.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;

use libc::{FILE, c_char, c_int, mode_t};

use crate::{config, fail, guard, real};

/// The runtime's replacement for `path`, if it is one of the redirected files.
fn redirect(path: *const c_char) -> Option<CString> {
    let dir = config::get()?.etc_dir.as_ref()?;
    if path.is_null() {
        return None;
    }
    // SAFETY: the caller's NUL-terminated path.
    let name = match unsafe { CStr::from_ptr(path) }.to_bytes() {
        b"/etc/hosts" => "hosts",
        b"/etc/hostname" => "hostname",
        b"/etc/resolv.conf" => "resolv.conf",
        _ => return None,
    };
    CString::new(dir.join(name).as_os_str().as_bytes()).ok()
}

/// Calls `f` with the redirected path, or the original one.
fn with_path<T>(path: *const c_char, f: impl Fn(*const c_char) -> T) -> T {
    guard(
        || match redirect(path) {
            Some(p) => f(p.as_ptr()),
            None => f(path),
        },
        || f(path),
    )
}

macro_rules! open_hook {
    ($name:ident) => {
        /// Redirecting `open` variant.
        ///
        /// # Safety
        /// Called by C with the arguments of `open(2)`.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
            let Some(real) = real::get().$name else { return fail(libc::ENOSYS) };
            with_path(path, |p| unsafe { real(p, flags, mode) })
        }
    };
}

macro_rules! openat_hook {
    ($name:ident) => {
        /// Redirecting `openat` variant (absolute paths only).
        ///
        /// # Safety
        /// Called by C with the arguments of `openat(2)`.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(dirfd: c_int, path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
            let Some(real) = real::get().$name else { return fail(libc::ENOSYS) };
            with_path(path, |p| unsafe { real(dirfd, p, flags, mode) })
        }
    };
}

macro_rules! fopen_hook {
    ($name:ident) => {
        /// Redirecting `fopen` variant.
        ///
        /// # Safety
        /// Called by C with the arguments of `fopen(3)`.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(path: *const c_char, mode: *const c_char) -> *mut FILE {
            let Some(real) = real::get().$name else {
                crate::set_errno(libc::ENOSYS);
                return std::ptr::null_mut();
            };
            with_path(path, |p| unsafe { real(p, mode) })
        }
    };
}

macro_rules! fortify_open_hook {
    ($name:ident) => {
        /// Redirecting `_FORTIFY_SOURCE` entry point of two-argument `open`.
        ///
        /// # Safety
        /// Called by C with the arguments of `open(2)` without a mode.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(path: *const c_char, flags: c_int) -> c_int {
            let Some(real) = real::get().$name else { return fail(libc::ENOSYS) };
            with_path(path, |p| unsafe { real(p, flags) })
        }
    };
}

macro_rules! fortify_openat_hook {
    ($name:ident) => {
        /// Redirecting `_FORTIFY_SOURCE` entry point of two-argument `openat`.
        ///
        /// # Safety
        /// Called by C with the arguments of `openat(2)` without a mode.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
            let Some(real) = real::get().$name else { return fail(libc::ENOSYS) };
            with_path(path, |p| unsafe { real(dirfd, p, flags) })
        }
    };
}

fortify_open_hook!(__open_2);
fortify_open_hook!(__open64_2);
fortify_openat_hook!(__openat_2);
fortify_openat_hook!(__openat64_2);
open_hook!(open);
open_hook!(open64);
openat_hook!(openat);
openat_hook!(openat64);
fopen_hook!(fopen);
fopen_hook!(fopen64);
