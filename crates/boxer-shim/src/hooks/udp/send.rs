//! `sendto`, `sendmsg`, `sendmmsg`: a datagram to a remote overlay address
//! is sent to its flow socket instead, one to the node's own overlay
//! address to `L`; broadcast, multicast and overlay datagrams of sockets
//! that cannot take part fail with `ENETUNREACH`.
//!
//! A panic in a send hook (a bug) fails the call with `ENETUNREACH` instead
//! of calling libc with the app's arguments, so nothing is ever sent
//! towards the overlay range.

use std::net::{Ipv4Addr, SocketAddrV4};

use libc::{
    ENETUNREACH, ENOSYS, MSG_FASTOPEN, c_int, c_uint, c_void, iovec, mmsghdr, msghdr, size_t, sockaddr, socklen_t,
    ssize_t,
};

use super::cmsg::Rewrite;
use super::{Kind, Local, MAX_MMSG, bound_local, flow, flow_source, group_of, refuse_group, socket_kind};
use crate::config::{self, Config};
use crate::inet::{self, Family};
use crate::{errno, fail, guard, real, set_errno};

/// What to do with one outgoing datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Not overlay traffic: hand the app's arguments to libc.
    Pass,
    /// Fail the call with this `errno`; nothing is sent.
    Fail(c_int),
    /// Send to `to` (written in the app's address family) instead; `pin`:
    /// with an `IP_PKTINFO` source of `L`.
    To { to: SocketAddrV4, family: Family, pin: bool },
}

/// Routing state of one send call (`sendmmsg` routes many datagrams of one
/// socket; the socket's kind and binding are looked up once).
struct Sender {
    fd: c_int,
    config: Option<&'static Config>,
    kind: Option<Kind>,
    local: Option<Option<Local>>,
}

impl Sender {
    fn new(fd: c_int) -> Self {
        Self { fd, config: config::get(), kind: None, local: None }
    }

    fn kind(&mut self) -> Kind {
        *self.kind.get_or_insert_with(|| socket_kind(self.fd))
    }

    /// Where the socket is bound; an unbound socket is bound to the
    /// wildcard so it can still reach other addresses afterwards (to `L`
    /// when nodes share a namespace, as `bind` in net.rs narrows wildcard
    /// binds there, so ports of different nodes never clash).
    fn local(&mut self, config: &Config) -> Option<Local> {
        let bind_ip = if config.shared_namespace { config.loopback } else { Ipv4Addr::UNSPECIFIED };
        *self.local.get_or_insert_with(|| bound_local(config, self.fd, bind_ip))
    }

    /// Routes a datagram with destination `addr` (`len` bytes).
    ///
    /// # Safety
    /// `addr` must be null or point to `len` readable bytes.
    unsafe fn route(&mut self, flags: c_int, addr: *const sockaddr, len: socklen_t) -> Route {
        // SAFETY: the caller's address and length.
        let Some((dst, family)) = (unsafe { inet::read(addr, len) }) else { return Route::Pass };
        let ip = *dst.ip();
        let Some(config) = self.config else {
            // Loaded without the runtime's environment: the overlay is
            // unreachable, and must not be tried for real.
            if !config::in_default_overlay(ip) {
                return Route::Pass;
            }
            return match self.kind() {
                Kind::Stream if flags & MSG_FASTOPEN == 0 => Route::Pass,
                _ => Route::Fail(ENETUNREACH),
            };
        };
        let overlay = config.is_overlay(ip);
        let group = group_of(config.network, ip);
        if !overlay && group.is_none() {
            return Route::Pass;
        }
        match self.kind() {
            Kind::Udp => {}
            // A connected TCP socket ignores the address; a Fast Open SYN
            // would carry data towards the overlay for real.
            Kind::Stream if overlay && flags & MSG_FASTOPEN != 0 => return Route::Fail(ENETUNREACH),
            Kind::Stream => return Route::Pass,
            Kind::Other if overlay => return Route::Fail(ENETUNREACH),
            Kind::Other => return Route::Pass,
        }
        if let Some(group) = group {
            return Route::Fail(refuse_group(group, ip));
        }
        if ip == config.overlay_ip {
            // Our own address: the app's socket is on `L` (or the wildcard),
            // no flow is involved. A socket bound elsewhere (127.0.0.1)
            // reaches it too, so it is not refused.
            let to = SocketAddrV4::new(config.loopback, dst.port());
            let pin = matches!(self.local(config), Some(Local::Wildcard(_)));
            return Route::To { to, family, pin };
        }
        let local = self.local(config);
        match flow_source(config, self.fd, local).and_then(|(port, pin)| Ok((flow(config, port, dst)?, pin))) {
            Ok((to, pin)) => Route::To { to, family, pin },
            Err(e) => Route::Fail(e),
        }
    }
}

fn pin_src(config: Option<&Config>, pin: bool) -> Option<Ipv4Addr> {
    config.filter(|_| pin).map(|c| c.loopback)
}

/// `sendto`: a datagram to an overlay address goes to its flow socket.
///
/// # Safety
/// Called by C with the arguments of `sendto(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    n: size_t,
    flags: c_int,
    addr: *const sockaddr,
    len: socklen_t,
) -> ssize_t {
    let Some(real) = real::get().sendto else { return fail(ENOSYS) as ssize_t };
    if addr.is_null() {
        // SAFETY: arguments passed through from the caller.
        return unsafe { real(fd, buf, n, flags, addr, len) };
    }
    // A panic (a bug) must not send anything towards the overlay: fail.
    // SAFETY: arguments passed through from the caller.
    guard(|| unsafe { sendto_impl(real, fd, buf, n, flags, addr, len) }, || fail(ENETUNREACH) as ssize_t)
}

unsafe fn sendto_impl(
    real: unsafe extern "C" fn(c_int, *const c_void, size_t, c_int, *const sockaddr, socklen_t) -> ssize_t,
    fd: c_int,
    buf: *const c_void,
    n: size_t,
    flags: c_int,
    addr: *const sockaddr,
    len: socklen_t,
) -> ssize_t {
    let saved = errno();
    let mut sender = Sender::new(fd);
    // SAFETY: the caller's address and length.
    let route = unsafe { sender.route(flags, addr, len) };
    set_errno(saved);
    match route {
        // SAFETY: arguments passed through from the caller.
        Route::Pass => unsafe { real(fd, buf, n, flags, addr, len) },
        Route::Fail(e) => fail(e) as ssize_t,
        Route::To { to, family, pin } => {
            let src = pin_src(sender.config, pin);
            match (src, real::get().sendmsg) {
                (Some(src), Some(sendmsg)) => {
                    let mut iov = iovec { iov_base: buf.cast_mut(), iov_len: n };
                    // SAFETY: all-zero is a valid msghdr.
                    let mut app: msghdr = unsafe { std::mem::zeroed() };
                    app.msg_iov = &mut iov;
                    app.msg_iovlen = 1;
                    // SAFETY: `app` is a valid message without control data.
                    let mut rewrite = unsafe { Rewrite::new(&app, to, family, Some(src)) };
                    let hdr = rewrite.apply(&app);
                    // SAFETY: `hdr` points into `iov` and `rewrite`, alive here.
                    unsafe { sendmsg(fd, &hdr, flags) }
                }
                _ => {
                    let (s, slen) = inet::build(to, family);
                    // SAFETY: the app's data, our address.
                    unsafe { real(fd, buf, n, flags, (&raw const s).cast(), slen) }
                }
            }
        }
    }
}

/// `sendmsg`: as [`sendto`]; the app's `msghdr` is copied, never changed.
///
/// # Safety
/// Called by C with the arguments of `sendmsg(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    let Some(real) = real::get().sendmsg else { return fail(ENOSYS) as ssize_t };
    // SAFETY: `msg` is null or the caller's valid msghdr.
    if msg.is_null() || unsafe { (*msg).msg_name.is_null() } {
        return unsafe { real(fd, msg, flags) };
    }
    // SAFETY: arguments passed through from the caller.
    guard(|| unsafe { sendmsg_impl(real, fd, msg, flags) }, || fail(ENETUNREACH) as ssize_t)
}

unsafe fn sendmsg_impl(
    real: unsafe extern "C" fn(c_int, *const msghdr, c_int) -> ssize_t,
    fd: c_int,
    msg: *const msghdr,
    flags: c_int,
) -> ssize_t {
    let saved = errno();
    // SAFETY: the caller's valid msghdr.
    let app = unsafe { &*msg };
    let mut sender = Sender::new(fd);
    // SAFETY: the app's name and its length.
    let route = unsafe { sender.route(flags, app.msg_name.cast(), app.msg_namelen) };
    set_errno(saved);
    match route {
        // SAFETY: arguments passed through from the caller.
        Route::Pass => unsafe { real(fd, msg, flags) },
        Route::Fail(e) => fail(e) as ssize_t,
        Route::To { to, family, pin } => {
            // SAFETY: the app's valid message.
            let mut rewrite = unsafe { Rewrite::new(app, to, family, pin_src(sender.config, pin)) };
            let hdr = rewrite.apply(app);
            // SAFETY: `hdr` points into the app's buffers and `rewrite`.
            unsafe { real(fd, &hdr, flags) }
        }
    }
}

/// `sendmmsg`: each message is routed as by [`sendmsg`]. If one must fail,
/// the messages before it are sent and counted (the kernel's contract when
/// a later message fails); if it is the first, the call fails.
///
/// # Safety
/// Called by C with the arguments of `sendmmsg(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendmmsg(fd: c_int, msgs: *mut mmsghdr, count: c_uint, flags: c_int) -> c_int {
    let Some(real) = real::get().sendmmsg else { return fail(ENOSYS) };
    if msgs.is_null() || count == 0 {
        // SAFETY: arguments passed through from the caller.
        return unsafe { real(fd, msgs, count, flags) };
    }
    // SAFETY: arguments passed through from the caller.
    guard(|| unsafe { sendmmsg_impl(real, fd, msgs, count, flags) }, || fail(ENETUNREACH))
}

unsafe fn sendmmsg_impl(
    real: unsafe extern "C" fn(c_int, *mut mmsghdr, c_uint, c_int) -> c_int,
    fd: c_int,
    msgs: *mut mmsghdr,
    count: c_uint,
    flags: c_int,
) -> c_int {
    let saved = errno();
    let n = (count as usize).min(MAX_MMSG);
    let mut sender = Sender::new(fd);
    let mut routes = Vec::with_capacity(n);
    for i in 0..n {
        // SAFETY: the caller's array of `count` messages.
        let hdr = unsafe { &(*msgs.add(i)).msg_hdr };
        // SAFETY: the app's name and its length.
        let route = unsafe { sender.route(flags, hdr.msg_name.cast(), hdr.msg_namelen) };
        if let Route::Fail(e) = route {
            if i == 0 {
                return fail(e);
            }
            break;
        }
        routes.push(route);
    }
    set_errno(saved);
    let n = routes.len();
    if routes.iter().all(|r| *r == Route::Pass) {
        // SAFETY: the caller's array; `n <= count`.
        return unsafe { real(fd, msgs, n as c_uint, flags) };
    }
    let pin = |p: bool| pin_src(sender.config, p);
    // SAFETY: the caller's array of at least `n` messages.
    let app: Vec<mmsghdr> = (0..n).map(|i| unsafe { std::ptr::read(msgs.add(i)) }).collect();
    let mut rewrites: Vec<Option<Rewrite>> = (0..n)
        .map(|i| match routes[i] {
            // SAFETY: the app's valid message.
            Route::To { to, family, pin: p } => Some(unsafe { Rewrite::new(&app[i].msg_hdr, to, family, pin(p)) }),
            _ => None,
        })
        .collect();
    let mut copy: Vec<mmsghdr> = app
        .iter()
        .zip(rewrites.iter_mut())
        .map(|(m, rw)| mmsghdr { msg_hdr: rw.as_mut().map_or(m.msg_hdr, |rw| rw.apply(&m.msg_hdr)), msg_len: 0 })
        .collect();
    // SAFETY: `copy` points into the app's buffers and `rewrites`, alive here.
    let r = unsafe { real(fd, copy.as_mut_ptr(), n as c_uint, flags) };
    for (i, m) in copy.iter().enumerate().take(r.max(0) as usize) {
        // SAFETY: the result field of the caller's message `i < n`.
        unsafe { (*msgs.add(i)).msg_len = m.msg_len };
    }
    r
}
