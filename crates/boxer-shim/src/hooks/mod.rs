//! The exported libc replacements, by area, and the socket queries they
//! share.

pub mod files;
pub mod ifaddrs;
pub mod net;
pub mod resolve;
pub mod udp;

use std::panic::{AssertUnwindSafe, catch_unwind};

use libc::{c_int, sockaddr, sockaddr_storage, socklen_t};

use crate::{config, inet};

/// `getsockname` or `getpeername`.
pub(crate) type AddrFn = unsafe extern "C" fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int;

/// The real address `query` (the real `getsockname` or `getpeername`)
/// reports for `fd`.
pub(crate) fn real_name(query: Option<AddrFn>, fd: c_int) -> Option<(sockaddr_storage, socklen_t)> {
    let query = query?;
    // SAFETY: zeroed storage is valid; we pass its true size.
    let mut storage: sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<sockaddr_storage>() as socklen_t;
    let r = unsafe { query(fd, (&raw mut storage).cast(), &mut len) };
    (r == 0).then_some((storage, len))
}

/// An integer socket option of `fd`.
pub(crate) fn sockopt_int(fd: c_int, level: c_int, name: c_int) -> Option<c_int> {
    let mut value: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as socklen_t;
    // SAFETY: valid out-pointers of the right size.
    let r = unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast(), &mut len) };
    (r == 0).then_some(value)
}

/// Whether the app's destination `addr` (`len` bytes) is one the overlay
/// handles: an overlay address or a broadcast/multicast address the UDP
/// hooks refuse, or, without the runtime's environment, an address in
/// Boxer's default overlay range.
///
/// This is the decision a hook that connects or sends takes when its body
/// panicked (a bug): such a call then fails with `ENETUNREACH` instead of
/// reaching libc with the app's arguments, which would connect or send
/// towards the overlay range for real. It never panics: if the check
/// itself did, the answer is "yes" (fail closed).
///
/// # Safety
/// `addr` must be null or point to `len` readable bytes.
pub(crate) unsafe fn towards_overlay(addr: *const sockaddr, len: socklen_t) -> bool {
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the caller's address and length.
        let Some((dst, _)) = (unsafe { inet::read(addr, len) }) else { return false };
        let ip = *dst.ip();
        match config::get() {
            Some(config) => config.is_overlay(ip) || udp::is_group(config, ip),
            None => config::in_default_overlay(ip),
        }
    }))
    .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inet::Family;

    /// Tests run without the runtime's environment: Boxer's default overlay
    /// range is what a panicking `connect` refuses.
    #[test]
    fn a_panicking_connect_refuses_the_default_overlay_range_without_config() {
        assert!(config::get().is_none(), "tests run without BOXER_* variables");
        let towards = |s: &str, family| {
            let (a, len) = inet::build(s.parse().unwrap(), family);
            unsafe { towards_overlay((&raw const a).cast(), len) }
        };
        for family in [Family::V4, Family::V6Mapped] {
            assert!(towards("100.96.0.5:53", family));
            assert!(towards("100.111.255.255:53", family));
            assert!(!towards("100.112.0.1:53", family));
            assert!(!towards("127.0.0.1:53", family));
        }
        assert!(!unsafe { towards_overlay(std::ptr::null(), 16) });
        let (a, _) = inet::build("100.96.0.5:53".parse().unwrap(), Family::V4);
        assert!(!unsafe { towards_overlay((&raw const a).cast(), 4) }, "too short to be an address");
    }
}
