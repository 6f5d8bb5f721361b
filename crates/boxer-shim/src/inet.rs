//! Reading and writing `sockaddr`s the way the app passed them: IPv4, or
//! IPv6 carrying an IPv4-mapped address (`::ffff:a.b.c.d`).

use std::net::{Ipv4Addr, SocketAddrV4};

use libc::{AF_INET, AF_INET6, sa_family_t, sockaddr, sockaddr_in, sockaddr_in6, sockaddr_storage, socklen_t};

/// Address family of an app socket address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `AF_INET`.
    V4,
    /// `AF_INET6` with an IPv4-mapped address.
    V6Mapped,
}

/// The IPv4 address in `addr`, if it is `AF_INET` or IPv4-mapped `AF_INET6`.
///
/// # Safety
/// `addr` must be null or point to `len` readable bytes.
pub unsafe fn read(addr: *const sockaddr, len: socklen_t) -> Option<(SocketAddrV4, Family)> {
    if addr.is_null() || (len as usize) < std::mem::size_of::<sa_family_t>() {
        return None;
    }
    // SAFETY: at least the family is readable (checked above); the full
    // structure is read only when `len` covers it. Unaligned reads because the
    // app's buffer may be a byte array.
    unsafe {
        let family = std::ptr::read_unaligned(std::ptr::addr_of!((*addr).sa_family)) as i32;
        match family {
            AF_INET if len as usize >= std::mem::size_of::<sockaddr_in>() => {
                let sin = std::ptr::read_unaligned(addr.cast::<sockaddr_in>());
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                Some((SocketAddrV4::new(ip, u16::from_be(sin.sin_port)), Family::V4))
            }
            // Linux accepts the 24-byte RFC 2133 form (no scope id) too.
            AF_INET6 if len as usize >= SIN6_LEN_RFC2133 => {
                let sin6 = read_sin6(addr, len);
                let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr).to_ipv4_mapped()?;
                Some((SocketAddrV4::new(ip, u16::from_be(sin6.sin6_port)), Family::V6Mapped))
            }
            _ => None,
        }
    }
}

/// Shortest IPv6 socket address the kernel accepts: without `sin6_scope_id`.
pub const SIN6_LEN_RFC2133: usize = 24;

/// Copies an app's IPv6 address (24 or 28 bytes) into a full structure.
///
/// # Safety
/// `addr` must point to `len >= 24` readable bytes.
pub unsafe fn read_sin6(addr: *const sockaddr, len: socklen_t) -> sockaddr_in6 {
    // SAFETY: all-zero is a valid sockaddr_in6; we copy at most its size.
    unsafe {
        let mut sin6: sockaddr_in6 = std::mem::zeroed();
        let n = (len as usize).min(std::mem::size_of::<sockaddr_in6>());
        std::ptr::copy_nonoverlapping(addr.cast::<u8>(), (&raw mut sin6).cast::<u8>(), n);
        sin6
    }
}

/// Builds a socket address of `family` for `addr`; returns it and its length.
pub fn build(addr: SocketAddrV4, family: Family) -> (sockaddr_storage, socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match family {
        Family::V4 => {
            let sin = sockaddr_in {
                sin_family: AF_INET as sa_family_t,
                sin_port: addr.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from(*addr.ip()).to_be() },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&raw mut storage).cast::<sockaddr_in>(), sin) };
            std::mem::size_of::<sockaddr_in>()
        }
        Family::V6Mapped => {
            let sin6 = sockaddr_in6 {
                sin6_family: AF_INET6 as sa_family_t,
                sin6_port: addr.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: addr.ip().to_ipv6_mapped().octets() },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&raw mut storage).cast::<sockaddr_in6>(), sin6) };
            std::mem::size_of::<sockaddr_in6>()
        }
    };
    (storage, len as socklen_t)
}

/// Writes `addr` into an app's result buffer with the `accept`/`getpeername`
/// contract: at most `*len` bytes are written, and `*len` is set to the full
/// size of the address.
///
/// # Safety
/// `out` must be null or point to `*len` writable bytes; `len` must be valid
/// when `out` is not null.
pub unsafe fn write_out(addr: SocketAddrV4, family: Family, out: *mut sockaddr, len: *mut socklen_t) {
    if out.is_null() || len.is_null() {
        return;
    }
    let (storage, full) = build(addr, family);
    // SAFETY: caller guarantees `*len` writable bytes at `out`.
    unsafe {
        let n = (*len).min(full) as usize;
        std::ptr::copy_nonoverlapping((&raw const storage).cast::<u8>(), out.cast::<u8>(), n);
        *len = full;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_both_families() {
        let a: SocketAddrV4 = "100.96.0.5:6379".parse().unwrap();
        for family in [Family::V4, Family::V6Mapped] {
            let (s, len) = build(a, family);
            let back = unsafe { read((&raw const s).cast(), len) };
            assert_eq!(back, Some((a, family)));
            // A short buffer is truncated, and the full length reported.
            let mut small = [0u8; 4];
            let mut small_len: socklen_t = 4;
            unsafe { write_out(a, family, small.as_mut_ptr().cast(), &mut small_len) };
            assert_eq!(small_len, len);
        }
        assert!(unsafe { read(std::ptr::null(), 16) }.is_none());
        let (s, _) = build(a, Family::V4);
        assert!(unsafe { read((&raw const s).cast(), 4) }.is_none(), "short length");
    }
}
