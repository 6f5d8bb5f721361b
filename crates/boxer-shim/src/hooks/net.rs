//! Socket calls: `connect`, `bind`, `listen`, `accept`, `accept4`,
//! `getpeername`, `getsockname`. Datagram sockets are handed to
//! [`super::udp`] (which also holds the send and receive hooks).
//!
//! A redirected connect binds the app's socket to the node's loopback address
//! (so the runtime can tell it apart), registers `source -> overlay
//! destination` with the runtime in one round trip, and connects the socket
//! to the runtime's proxy. Every later address query of that socket sees the
//! loopback address and translates it back. `getsockname` also shows the
//! overlay address where the kernel would show the machine's real interface
//! address (a socket connected outside the overlay): the node's own address
//! is its overlay address by every route.

use std::net::SocketAddrV4;

use boxer_proto::shim::{ShimRequest, ShimResponse};
use libc::{
    AF_INET6, ECONNREFUSED, EHOSTUNREACH, ENETUNREACH, ENOSYS, SO_TYPE, SOCK_STREAM, SOL_SOCKET, c_int, sockaddr,
    sockaddr_storage, socklen_t,
};

use super::{AddrFn, real_name, sockopt_int, towards_overlay};
use crate::config::{self, Config};
use crate::inet::{self, Family};
use crate::{control, errno, fail, guard, real, set_errno};

fn socket_type(fd: c_int) -> Option<c_int> {
    sockopt_int(fd, SOL_SOCKET, SO_TYPE)
}

fn local_v4(fd: c_int) -> Option<SocketAddrV4> {
    let (s, len) = real_name(real::get().getsockname, fd)?;
    // SAFETY: `s` holds `len` bytes written by getsockname.
    unsafe { inet::read((&raw const s).cast(), len) }.map(|(a, _)| a)
}

fn v6_only(fd: c_int) -> bool {
    let mut on: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as socklen_t;
    // SAFETY: valid out-pointers of the right size.
    let r = unsafe { libc::getsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, (&raw mut on).cast(), &mut len) };
    r == 0 && on != 0
}

/// The port of a real IPv6 wildcard address `[::]:port`.
unsafe fn v6_wildcard_port(addr: *const sockaddr, len: socklen_t) -> Option<u16> {
    if addr.is_null() || (len as usize) < inet::SIN6_LEN_RFC2133 {
        return None;
    }
    // SAFETY: length checked.
    let sin6 = unsafe { inet::read_sin6(addr, len) };
    (sin6.sin6_family as c_int == AF_INET6 && sin6.sin6_addr.s6_addr == [0; 16]).then(|| u16::from_be(sin6.sin6_port))
}

/// The local port of `fd` whatever its family (0 if unbound).
fn local_port(fd: c_int) -> Option<u16> {
    let (s, len) = real_name(real::get().getsockname, fd)?;
    let ptr: *const sockaddr = (&raw const s).cast();
    // SAFETY: `s` holds `len` bytes written by getsockname.
    unsafe { inet::read(ptr, len).map(|(a, _)| a.port()).or_else(|| v6_wildcard_port(ptr, len)) }
}

/// Whether a TCP socket is past `TCP_CLOSE`: connecting or connected. Such a
/// socket's `connect` goes straight to the kernel, which answers `EALREADY`
/// or `EISCONN` without sending anything.
fn already_connecting(fd: c_int) -> bool {
    // SAFETY: zeroed tcp_info is valid; we pass its size.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as socklen_t;
    let r = unsafe { libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, (&raw mut info).cast(), &mut len) };
    const TCP_CLOSE: u8 = 7;
    r == 0 && info.tcpi_state != TCP_CLOSE
}

fn call_real(
    real: unsafe extern "C" fn(c_int, *const sockaddr, socklen_t) -> c_int,
    fd: c_int,
    addr: SocketAddrV4,
    family: Family,
) -> c_int {
    let (s, len) = inet::build(addr, family);
    // SAFETY: `s` is a valid address of `len` bytes.
    unsafe { real(fd, (&raw const s).cast(), len) }
}

/// `connect`: overlay destinations go through the runtime.
///
/// If the hook panics (a bug), a destination the overlay handles fails with
/// `ENETUNREACH` ([`towards_overlay`]): the real `connect` towards it would
/// reach (TCP) or fix as the target of later unhooked `send`/`write` (UDP)
/// the overlay range on the real network. Other destinations pass to libc.
/// The real `connect` is the body's last step, so it never runs twice.
///
/// # Safety
/// Called by C with the arguments of `connect(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let Some(real) = real::get().connect else { return fail(ENOSYS) };
    // SAFETY: arguments passed through from the caller.
    guard(
        || unsafe { connect_impl(real, fd, addr, len) },
        || if unsafe { towards_overlay(addr, len) } { fail(ENETUNREACH) } else { unsafe { real(fd, addr, len) } },
    )
}

unsafe fn connect_impl(
    real: unsafe extern "C" fn(c_int, *const sockaddr, socklen_t) -> c_int,
    fd: c_int,
    addr: *const sockaddr,
    len: socklen_t,
) -> c_int {
    let passthrough = || unsafe { real(fd, addr, len) };
    let Some((dst, family)) = (unsafe { inet::read(addr, len) }) else { return passthrough() };
    let Some(config) = config::get() else {
        // Loaded without its runtime's environment (a child that cleared
        // it): the overlay is unreachable, and must not be tried for real.
        return if config::in_default_overlay(*dst.ip()) { fail(ENETUNREACH) } else { passthrough() };
    };
    if (config.is_overlay(*dst.ip()) || super::udp::is_group(config, *dst.ip())) && socket_type(fd) != Some(SOCK_STREAM)
    {
        // Datagram sockets: overlay UDP flows, broadcast/multicast refused (udp).
        return unsafe { super::udp::connect_dgram(real, config, fd, addr, len, dst, family) };
    }
    if !config.is_overlay(*dst.ip()) {
        return passthrough();
    }
    if already_connecting(fd) {
        // A repeated connect (event loops poll with it): the kernel answers.
        return passthrough();
    }
    let saved = errno();
    let port = match local_port(fd) {
        Some(p) if p != 0 => p,
        _ => {
            if let Some(bind) = real::get().bind {
                call_real(bind, fd, SocketAddrV4::new(config.loopback, 0), family);
            }
            match local_port(fd) {
                Some(p) if p != 0 => p,
                _ => return fail(ENETUNREACH),
            }
        }
    };
    // The runtime matches the accepted connection by its source port. A
    // connection to our own overlay address is registered as well (the
    // runtime answers with our listener's loopback address), so both of its
    // ends can later be named exactly.
    let src = SocketAddrV4::new(config.loopback, port);
    set_errno(saved);
    match control::ask(config, &ShimRequest::Connect { src, dst }) {
        Some(ShimResponse::Proxy(proxy)) => call_real(real, fd, proxy, family),
        Some(ShimResponse::Refused) => fail(ECONNREFUSED),
        Some(ShimResponse::Unreachable) => fail(EHOSTUNREACH),
        _ => fail(ENETUNREACH),
    }
}

/// `bind`: the overlay address (and, when nodes share a namespace, the
/// wildcard) becomes the node's loopback address.
///
/// If the hook panics (a bug), the app's arguments go to the real `bind`:
/// binding sends nothing (the kernel refuses an overlay address that is not
/// on this machine with `EADDRNOTAVAIL`), and the socket's connects and
/// sends stay hooked.
///
/// # Safety
/// Called by C with the arguments of `bind(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let Some(real) = real::get().bind else { return fail(ENOSYS) };
    // SAFETY: arguments passed through from the caller.
    guard(|| unsafe { bind_impl(real, fd, addr, len) }, || unsafe { real(fd, addr, len) })
}

unsafe fn bind_impl(
    real: unsafe extern "C" fn(c_int, *const sockaddr, socklen_t) -> c_int,
    fd: c_int,
    addr: *const sockaddr,
    len: socklen_t,
) -> c_int {
    let passthrough = || unsafe { real(fd, addr, len) };
    let Some(config) = config::get() else { return passthrough() };
    match unsafe { inet::read(addr, len) } {
        Some((a, family)) if *a.ip() == config.overlay_ip || (a.ip().is_unspecified() && config.shared_namespace) => {
            call_real(real, fd, SocketAddrV4::new(config.loopback, a.port()), family)
        }
        None if config.shared_namespace && unsafe { v6_wildcard_port(addr, len) }.is_some() => {
            if v6_only(fd) {
                // An IPv6-only listener cannot serve the (IPv4) overlay, and
                // every node's would collide on [::]:port in a shared
                // namespace: report "no IPv6 here", which servers that try
                // both families (redis, nginx) handle by skipping IPv6.
                return fail(libc::EADDRNOTAVAIL);
            }
            let port = unsafe { v6_wildcard_port(addr, len) }.unwrap_or(0);
            call_real(real, fd, SocketAddrV4::new(config.loopback, port), Family::V6Mapped)
        }
        _ => passthrough(),
    }
}

/// `listen`: announce the port to the cluster unless the socket is bound to
/// a loopback address other than the node's own (a local-only service).
///
/// # Safety
/// Called by C with the arguments of `listen(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    let Some(real) = real::get().listen else { return fail(ENOSYS) };
    // SAFETY: arguments passed through from the caller.
    let r = unsafe { real(fd, backlog) };
    if r == 0
        && let Some(config) = config::get()
    {
        guard(|| announce_listener(config, fd), || ());
    }
    r
}

fn announce_listener(config: &Config, fd: c_int) {
    let saved = errno();
    if socket_type(fd) == Some(SOCK_STREAM)
        && let Some((s, len)) = real_name(real::get().getsockname, fd)
    {
        let ptr: *const sockaddr = (&raw const s).cast();
        // SAFETY: `s` holds `len` bytes written by getsockname.
        let port = match unsafe { inet::read(ptr, len) } {
            Some((a, _)) if a.ip().is_unspecified() || *a.ip() == config.loopback => Some(a.port()),
            None => unsafe { v6_wildcard_port(ptr, len) },
            _ => None,
        };
        if let Some(port) = port {
            control::ask(config, &ShimRequest::Listen { port });
        }
    }
    set_errno(saved);
}

/// The overlay address of the peer of a socket whose real peer is on the
/// node's loopback address; `None` when the runtime cannot say (it is
/// unreachable, or the connection is not one it or the shim set up): the
/// caller reports an error rather than a made-up address.
fn overlay_peer(config: &Config, fd: c_int, peer: SocketAddrV4) -> Option<SocketAddrV4> {
    let local = local_v4(fd)?;
    match control::ask(config, &ShimRequest::Lookup { local, peer }) {
        Some(ShimResponse::Peer(p)) => Some(p),
        _ => None,
    }
}

/// What `getsockname` shows for a local address `addr` that is not on the
/// node's loopback address: an address of the machine's real interface
/// becomes the overlay address, port kept. That is where the socket's
/// traffic comes from as far as the app can tell (the idiom "connect a UDP
/// socket to 8.8.8.8:80, read its local address" and a TCP connection to a
/// host outside the overlay both end up here), and the node has no other
/// address its peers can reach. Loopback, the wildcard, multicast and
/// broadcast addresses are not the node's address and stay as they are.
fn own_address(config: &Config, addr: SocketAddrV4) -> Option<SocketAddrV4> {
    let ip = *addr.ip();
    let real_interface =
        !(ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || ip == config.overlay_ip);
    real_interface.then(|| SocketAddrV4::new(config.overlay_ip, addr.port()))
}

/// An address on the node's loopback address whose overlay identity is unknown.
struct Untranslatable;

/// Writes the address in `s` to the app's buffer, translated to the overlay if
/// it is on the node's loopback address (`peer`: ask the runtime who it is)
/// or, for the local end (`!peer`), if it is the machine's real interface
/// address ([`own_address`]). Fails when a peer on the loopback address
/// cannot be identified.
unsafe fn report(
    fd: c_int,
    s: &sockaddr_storage,
    len: socklen_t,
    out: *mut sockaddr,
    out_len: *mut socklen_t,
    peer: bool,
) -> Result<(), Untranslatable> {
    if out.is_null() || out_len.is_null() {
        return Ok(());
    }
    let translated = match config::get() {
        None => None,
        Some(config) => {
            // SAFETY: `s` holds `len` bytes written by the kernel.
            match unsafe { inet::read((s as *const sockaddr_storage).cast(), len) } {
                // UDP sockets name their overlay flows themselves (udp).
                Some((addr, family)) if addr.ip().is_loopback() && super::udp::is_udp(fd) => {
                    super::udp::overlay_name(config, fd, addr, peer).map(|a| (a, family))
                }
                Some((addr, family)) if *addr.ip() == config.loopback => {
                    let saved = errno();
                    let overlay = if peer {
                        overlay_peer(config, fd, addr)
                    } else {
                        Some(SocketAddrV4::new(config.overlay_ip, addr.port()))
                    };
                    set_errno(saved);
                    Some((overlay.ok_or(Untranslatable)?, family))
                }
                Some((addr, family)) if !peer => own_address(config, addr).map(|a| (a, family)),
                _ => None,
            }
        }
    };
    // SAFETY: the caller passed a buffer of `*out_len` bytes.
    unsafe {
        match translated {
            Some((addr, family)) => inet::write_out(addr, family, out, out_len),
            None => {
                let n = (*out_len).min(len) as usize;
                std::ptr::copy_nonoverlapping((s as *const sockaddr_storage).cast::<u8>(), out.cast::<u8>(), n);
                *out_len = len;
            }
        }
    }
    Ok(())
}

unsafe fn accept_common(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    call: impl FnOnce(*mut sockaddr, *mut socklen_t) -> c_int,
) -> c_int {
    if addr.is_null() || config::get().is_none() {
        return call(addr, len);
    }
    // SAFETY: zeroed storage is valid; we pass its true size.
    let mut s: sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut slen = std::mem::size_of::<sockaddr_storage>() as socklen_t;
    let new_fd = call((&raw mut s).cast(), &mut slen);
    if new_fd >= 0 {
        let _ = fd;
        // SAFETY: `addr`/`len` are the caller's buffer.
        if guard(|| unsafe { report(new_fd, &s, slen, addr, len, true) }, || Err(Untranslatable)).is_err() {
            // Who connected is unknown: rather than hand the server a wrong
            // client address (its access rules and logs rely on it), drop
            // the connection as aborted, which servers retry past.
            // SAFETY: `new_fd` is the descriptor we just accepted.
            unsafe { libc::close(new_fd) };
            return fail(libc::ECONNABORTED);
        }
    }
    new_fd
}

/// `accept`: the peer address is the connecting node's overlay address.
///
/// # Safety
/// Called by C with the arguments of `accept(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    let Some(real) = real::get().accept else { return fail(ENOSYS) };
    // SAFETY: arguments passed through from the caller.
    unsafe { accept_common(fd, addr, len, |a, l| real(fd, a, l)) }
}

/// `accept4`: as [`accept`].
///
/// # Safety
/// Called by C with the arguments of `accept4(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int {
    let Some(real) = real::get().accept4 else { return fail(ENOSYS) };
    // SAFETY: arguments passed through from the caller.
    unsafe { accept_common(fd, addr, len, |a, l| real(fd, a, l, flags)) }
}

unsafe fn name_common(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, real: Option<AddrFn>, peer: bool) -> c_int {
    let Some(real) = real else { return fail(ENOSYS) };
    if addr.is_null() || len.is_null() || config::get().is_none() {
        // SAFETY: arguments passed through from the caller.
        return unsafe { real(fd, addr, len) };
    }
    // SAFETY: zeroed storage is valid; we pass its true size.
    let mut s: sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut slen = std::mem::size_of::<sockaddr_storage>() as socklen_t;
    let r = unsafe { real(fd, (&raw mut s).cast(), &mut slen) };
    if r == 0
        // SAFETY: `addr`/`len` are the caller's buffer.
        && guard(|| unsafe { report(fd, &s, slen, addr, len, peer) }, || Err(Untranslatable)).is_err()
    {
        // A peer on our loopback address that nobody can name: say the
        // socket has no (known) peer rather than invent one.
        return fail(libc::ENOTCONN);
    }
    r
}

/// `getpeername`: overlay address of the other node.
///
/// # Safety
/// Called by C with the arguments of `getpeername(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: arguments passed through from the caller.
    unsafe { name_common(fd, addr, len, real::get().getpeername, true) }
}

/// `getsockname`: the node's overlay address instead of its loopback address
/// or its real interface address.
///
/// # Safety
/// Called by C with the arguments of `getsockname(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: arguments passed through from the caller.
    unsafe { name_common(fd, addr, len, real::get().getsockname, false) }
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;
    use std::net::Ipv4Addr;

    use super::*;

    fn config() -> Config {
        Config {
            control: "/x".into(),
            overlay_ip: Ipv4Addr::new(100, 96, 0, 7),
            network: "100.96.0.0/12".parse().unwrap(),
            loopback: Ipv4Addr::new(127, 100, 0, 7),
            hostname: CString::new("web-0").unwrap(),
            cluster: "demo".into(),
            etc_dir: None,
            shared_namespace: false,
        }
    }

    #[test]
    fn a_real_interface_address_is_shown_as_the_overlay_address() {
        let c = config();
        let own = |s: &str| own_address(&c, s.parse().unwrap());
        // The lab device's, a Lambda function's, a public and a link-local address.
        for real in ["10.0.1.2:40000", "169.254.76.1:5353", "198.18.0.9:1", "203.0.113.4:443"] {
            let port = real.rsplit_once(':').unwrap().1;
            assert_eq!(own(real), Some(format!("100.96.0.7:{port}").parse().unwrap()), "{real}");
        }
        // Not the node's address: loopback (any, including the node's own
        // loopback address, translated elsewhere), the wildcard, groups;
        // and the overlay address is already right.
        for keep in
            ["127.0.0.1:80", "127.100.0.7:80", "0.0.0.0:80", "224.0.0.251:5353", "255.255.255.255:67", "100.96.0.7:80"]
        {
            assert_eq!(own(keep), None, "{keep}");
        }
    }
}
