//! `recvfrom`, `__recvfrom_chk`, `recvmsg`, `recvmmsg`: a datagram from a
//! flow socket on `L` shows the remote app's overlay address as its source
//! (one from an app socket of this node shows `overlay_ip:port`). Only the
//! source address is rewritten, after the real call; the data and control
//! messages are the kernel's.

use std::net::{Ipv4Addr, SocketAddrV4};

use libc::{
    ENOSYS, MSG_ERRQUEUE, c_int, c_uint, c_void, mmsghdr, msghdr, size_t, sockaddr, socklen_t, ssize_t, timespec,
};

use super::{MAX_MMSG, is_udp, peer_of};
use crate::config::{self, Config};
use crate::inet::{self, Family};
use crate::{errno, fail, guard, real, set_errno};

/// The port of a received source address on the node's loopback address
/// `loopback`, and the app's family, from the app's buffer `name` of `cap`
/// bytes for which the kernel reported a full length `got`.
///
/// # Safety
/// `name` must point to `min(cap, got)` readable bytes.
unsafe fn source_on_node(
    name: *const sockaddr,
    cap: socklen_t,
    got: socklen_t,
    loopback: Ipv4Addr,
) -> Option<(u16, Family)> {
    // SAFETY: the kernel wrote `min(cap, got)` bytes.
    let (src, family) = unsafe { inet::read(name, cap.min(got)) }?;
    (*src.ip() == loopback).then_some((src.port(), family))
}

/// Writes `overlay` over a received source address in the app's buffer
/// with the kernel's contract: at most `cap` bytes, `*got` set to the
/// address's full length.
///
/// # Safety
/// `name` must point to `cap` writable bytes and `got` be valid.
unsafe fn write_source(
    name: *mut sockaddr,
    cap: socklen_t,
    got: *mut socklen_t,
    overlay: SocketAddrV4,
    family: Family,
) {
    let mut len = cap;
    // SAFETY: the caller's guarantee.
    unsafe {
        inet::write_out(overlay, family, name, &mut len);
        *got = len;
    }
}

/// Translates the source address of a received datagram in the app's
/// buffer `name` (capacity `cap`; the kernel set `*got` to the full
/// length): a flow socket on `L` becomes the remote app's overlay address,
/// written in the app's family.
///
/// # Safety
/// `name` must point to `cap` writable bytes and `got` be valid.
unsafe fn translate_source(config: &Config, fd: c_int, name: *mut sockaddr, cap: socklen_t, got: *mut socklen_t) {
    // SAFETY: the caller's guarantee.
    let Some((port, family)) = (unsafe { source_on_node(name, cap, *got, config.loopback) }) else { return };
    if !is_udp(fd) {
        return;
    }
    let saved = errno();
    let overlay = peer_of(config, port);
    set_errno(saved);
    if let Some(overlay) = overlay {
        // SAFETY: the caller's guarantee.
        unsafe { write_source(name, cap, got, overlay, family) };
    }
}

/// Runs [`translate_source`] unless there is nothing to translate.
///
/// # Safety
/// As [`translate_source`], when `name` is not null.
unsafe fn after_receive(fd: c_int, flags: c_int, name: *mut sockaddr, cap: socklen_t, got: *mut socklen_t) {
    // The error queue reports the destination of a failed send: left real.
    if name.is_null() || got.is_null() || flags & MSG_ERRQUEUE != 0 {
        return;
    }
    if let Some(config) = config::get() {
        // SAFETY: the caller's guarantee.
        guard(|| unsafe { translate_source(config, fd, name, cap, got) }, || ());
    }
}

/// `recvfrom`: a datagram from a flow socket shows the remote app's
/// overlay address.
///
/// # Safety
/// Called by C with the arguments of `recvfrom(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> ssize_t {
    let Some(real) = real::get().recvfrom else { return fail(ENOSYS) as ssize_t };
    // SAFETY: `len` is the caller's length pointer when `addr` is given.
    let cap = if addr.is_null() || len.is_null() { 0 } else { unsafe { *len } };
    // SAFETY: arguments passed through from the caller.
    let r = unsafe { real(fd, buf, n, flags, addr, len) };
    if r >= 0 {
        // SAFETY: the kernel filled the caller's buffer.
        unsafe { after_receive(fd, flags, addr, cap, len) };
    }
    r
}

/// `__recvfrom_chk`: the `_FORTIFY_SOURCE` form of [`recvfrom`], which
/// glibc's own `recvfrom` is not called from.
///
/// # Safety
/// Called by C with the arguments of `__recvfrom_chk`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __recvfrom_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    buflen: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> ssize_t {
    let Some(real) = real::get().__recvfrom_chk else { return fail(ENOSYS) as ssize_t };
    // SAFETY: `len` is the caller's length pointer when `addr` is given.
    let cap = if addr.is_null() || len.is_null() { 0 } else { unsafe { *len } };
    // SAFETY: arguments passed through from the caller.
    let r = unsafe { real(fd, buf, n, buflen, flags, addr, len) };
    if r >= 0 {
        // SAFETY: the kernel filled the caller's buffer.
        unsafe { after_receive(fd, flags, addr, cap, len) };
    }
    r
}

/// `recvmsg`: as [`recvfrom`]; `msg_namelen` is updated like the kernel does.
///
/// # Safety
/// Called by C with the arguments of `recvmsg(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    let Some(real) = real::get().recvmsg else { return fail(ENOSYS) as ssize_t };
    if msg.is_null() {
        // SAFETY: arguments passed through from the caller.
        return unsafe { real(fd, msg, flags) };
    }
    // SAFETY: the caller's valid msghdr.
    let (name, cap) = unsafe { ((*msg).msg_name.cast::<sockaddr>(), (*msg).msg_namelen) };
    let r = unsafe { real(fd, msg, flags) };
    if r >= 0 {
        // SAFETY: the kernel filled the caller's message.
        unsafe { after_receive(fd, flags, name, cap, &raw mut (*msg).msg_namelen) };
    }
    r
}

/// `recvmmsg`: as [`recvmsg`] for every message received.
///
/// # Safety
/// Called by C with the arguments of `recvmmsg(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvmmsg(
    fd: c_int,
    msgs: *mut mmsghdr,
    count: c_uint,
    flags: c_int,
    timeout: *mut timespec,
) -> c_int {
    let Some(real) = real::get().recvmmsg else { return fail(ENOSYS) };
    if msgs.is_null() || config::get().is_none() || flags & MSG_ERRQUEUE != 0 {
        // SAFETY: arguments passed through from the caller.
        return unsafe { real(fd, msgs, count, flags, timeout) };
    }
    let n = (count as usize).min(MAX_MMSG);
    let mut caps = [0 as socklen_t; MAX_MMSG];
    for (i, cap) in caps.iter_mut().enumerate().take(n) {
        // SAFETY: the caller's array of `count` messages.
        *cap = unsafe { (*msgs.add(i)).msg_hdr.msg_namelen };
    }
    // SAFETY: arguments passed through from the caller.
    let r = unsafe { real(fd, msgs, count, flags, timeout) };
    for (i, &cap) in caps.iter().enumerate().take((r.max(0) as usize).min(n)) {
        // SAFETY: message `i` was filled by the kernel.
        unsafe {
            let hdr = &raw mut (*msgs.add(i)).msg_hdr;
            after_receive(fd, flags, (*hdr).msg_name.cast(), cap, &raw mut (*hdr).msg_namelen);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Ipv4Addr = Ipv4Addr::new(127, 100, 0, 1);

    #[test]
    fn a_received_source_on_l_is_rewritten_with_the_length_contract() {
        let overlay: SocketAddrV4 = "100.96.0.9:4000".parse().unwrap();
        for family in [Family::V4, Family::V6Mapped] {
            let (mut name, full) = inet::build("127.100.0.1:41000".parse().unwrap(), family);
            let mut got = full;
            let found = unsafe { source_on_node((&raw const name).cast(), full, got, L) };
            assert_eq!(found, Some((41000, family)));
            unsafe { write_source((&raw mut name).cast(), full, &mut got, overlay, family) };
            assert_eq!(got, full);
            assert_eq!(unsafe { inet::read((&raw const name).cast(), got) }, Some((overlay, family)));
            // Not on `L`: nothing to translate.
            let (other, len) = inet::build("127.0.0.1:41000".parse().unwrap(), family);
            assert_eq!(unsafe { source_on_node((&raw const other).cast(), len, len, L) }, None);
        }
        // An RFC 2133 buffer (24 of 28 bytes) still names the source, gets
        // 24 bytes written and learns the full length.
        let (real, full) = inet::build("127.100.0.1:41000".parse().unwrap(), Family::V6Mapped);
        let mut buf = [0xaau8; 32];
        unsafe { std::ptr::copy_nonoverlapping((&raw const real).cast::<u8>(), buf.as_mut_ptr(), 24) };
        let mut got = full;
        let found = unsafe { source_on_node(buf.as_ptr().cast(), 24, got, L) };
        assert_eq!(found, Some((41000, Family::V6Mapped)));
        unsafe { write_source(buf.as_mut_ptr().cast(), 24, &mut got, overlay, Family::V6Mapped) };
        assert_eq!(got, full);
        assert_eq!(&buf[24..], &[0xaa; 8], "nothing written past the app's length");
        assert_eq!(unsafe { inet::read(buf.as_ptr().cast(), 24) }, Some((overlay, Family::V6Mapped)));
        // A buffer too short for the address: left alone.
        assert_eq!(unsafe { source_on_node(buf.as_ptr().cast(), 8, full, L) }, None);
    }
}
