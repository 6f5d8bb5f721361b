//! Overlay UDP: `sendto`, `sendmsg`, `sendmmsg`, `recvfrom`,
//! `__recvfrom_chk`, `recvmsg`, `recvmmsg`, and the datagram branches of
//! `connect`, `getpeername` and `getsockname` (called from `net.rs`).
//!
//! The runtime owns one *flow socket* `L:Y` on the node's loopback address
//! per pair (local port of the app's socket, remote overlay endpoint). The
//! app's datagrams for the remote endpoint are sent to `L:Y` instead; the
//! runtime carries them to the remote node and delivers the remote app's
//! datagrams to the app's socket from `L:Y`. So the shim only rewrites
//! addresses: a destination `D` becomes `L:Y` on the way out (one `UdpFlow`
//! request, then cached), and a source `L:Y` becomes `D` on the way in (one
//! `UdpPeer` request, or the cached `UdpFlow` answer). The data never passes
//! through the shim, and the app's own buffers are never modified.
//!
//! Datagrams a socket sends from the wildcard address to `L` would leave
//! from 127.0.0.1 (the kernel's source for every 127/8 route), so such
//! sends carry an `IP_PKTINFO` control message that makes their source `L`:
//! every overlay datagram on the node then travels between addresses on
//! `L`, and the kernel matches replies to connected sockets.
//!
//! Broadcast and multicast are not carried: sends to the overlay network's
//! broadcast address, 255.255.255.255 or 224.0.0.0/4 fail with
//! `ENETUNREACH` (one line on stderr per process and kind).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use boxer_proto::shim::{ShimRequest, ShimResponse};
use ipnet::Ipv4Net;
use libc::{
    AF_INET6, EACCES, EHOSTUNREACH, ENETUNREACH, ENOSYS, IPPROTO_IP, IPPROTO_IPV6, IPPROTO_TCP, IPPROTO_UDP,
    MSG_ERRQUEUE, MSG_FASTOPEN, SO_TYPE, SOCK_STREAM, SOL_SOCKET, c_int, c_uint, c_void, cmsghdr, iovec, mmsghdr,
    msghdr, sa_family_t, size_t, sockaddr, sockaddr_in6, sockaddr_storage, socklen_t, ssize_t, timespec,
};

use crate::config::{self, Config};
use crate::inet::{self, Family};
use crate::{control, errno, fail, flow_cache, guard, real, set_errno};

/// `SO_PROTOCOL` (Linux 2.6.32+; the same value on every architecture the
/// shim builds for). Spelled out because the `libc` crate does not export
/// it for glibc targets.
const SO_PROTOCOL: c_int = 38;

/// `IPPROTO_MPTCP`: a stream socket like TCP.
const IPPROTO_MPTCP: c_int = 262;

/// Most messages one `sendmmsg`/`recvmmsg` handles (`UIO_MAXIOV`); the
/// kernel silently caps `vlen` at this value.
const MAX_MMSG: usize = libc::UIO_MAXIOV as usize;

/// What a socket is, as far as the overlay cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A UDP socket: overlay flows.
    Udp,
    /// TCP (or MPTCP): handled by `net.rs`; a destination on a send is
    /// ignored by the kernel once connected.
    Stream,
    /// Anything else (raw, ICMP "ping" datagram sockets, UDP-Lite, SCTP,
    /// not a socket): never sent towards the overlay.
    Other,
}

fn sockopt_int(fd: c_int, level: c_int, name: c_int) -> Option<c_int> {
    let mut value: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as socklen_t;
    // SAFETY: valid out-pointers of the right size.
    let r = unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast(), &mut len) };
    (r == 0).then_some(value)
}

/// The kind of `fd`: one `getsockopt` for UDP and TCP sockets.
fn socket_kind(fd: c_int) -> Kind {
    match sockopt_int(fd, SOL_SOCKET, SO_PROTOCOL) {
        Some(IPPROTO_UDP) => Kind::Udp,
        Some(IPPROTO_TCP | IPPROTO_MPTCP) => Kind::Stream,
        _ if sockopt_int(fd, SOL_SOCKET, SO_TYPE) == Some(SOCK_STREAM) => Kind::Stream,
        _ => Kind::Other,
    }
}

/// Whether `fd` is a UDP socket (for `net.rs`).
pub(crate) fn is_udp(fd: c_int) -> bool {
    socket_kind(fd) == Kind::Udp
}

/// A destination the overlay refuses to carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Group {
    /// 255.255.255.255 or the overlay network's broadcast address.
    Broadcast,
    /// 224.0.0.0/4.
    Multicast,
}

/// Whether `ip` is a broadcast or multicast address for a node on `network`.
/// A /31 or /32 network has no broadcast address.
fn group_of(network: Ipv4Net, ip: Ipv4Addr) -> Option<Group> {
    if ip.is_multicast() {
        Some(Group::Multicast)
    } else if ip.is_broadcast() || (network.prefix_len() < 31 && ip == network.broadcast()) {
        Some(Group::Broadcast)
    } else {
        None
    }
}

/// Whether a datagram to `ip` is refused as broadcast or multicast (for
/// `net.rs`: such a `connect` is handed to [`connect_dgram`]).
pub(crate) fn is_group(config: &Config, ip: Ipv4Addr) -> bool {
    group_of(config.network, ip).is_some()
}

static WARNED_BROADCAST: AtomicBool = AtomicBool::new(false);
static WARNED_MULTICAST: AtomicBool = AtomicBool::new(false);
static WARNED_BOUND: AtomicBool = AtomicBool::new(false);

/// Writes `line()` to stderr the first time `flag` is raised in this process.
fn say_once(flag: &AtomicBool, line: impl FnOnce() -> String) {
    if !flag.swap(true, Ordering::Relaxed) {
        let line = line();
        // SAFETY: writing a buffer we own to fd 2.
        unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
    }
}

/// Refuses a datagram to a broadcast or multicast address.
fn refuse_group(group: Group, ip: Ipv4Addr) -> c_int {
    let (flag, kind) = match group {
        Group::Broadcast => (&WARNED_BROADCAST, "broadcast"),
        Group::Multicast => (&WARNED_MULTICAST, "multicast"),
    };
    say_once(flag, || {
        format!(
            "boxer-shim: broadcast/multicast is not carried by the Boxer overlay: UDP to {ip} ({kind}) fails with \
             ENETUNREACH; send to each member's overlay address instead\n"
        )
    });
    ENETUNREACH
}

/// Where a UDP socket is bound, as far as overlay flows care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Local {
    /// Not bound yet (port 0); `v6`: an `AF_INET6` socket.
    Unbound { v6: bool },
    /// Bound to 0.0.0.0, `[::]` or `[::ffff:0.0.0.0]`.
    Wildcard(u16),
    /// Bound to the node's loopback address `L`.
    Node(u16),
    /// Bound (or, connected, fixed) to another address: 127.0.0.1, a real
    /// interface, an IPv6 address.
    Elsewhere(SocketAddr),
}

/// Classifies a socket's real local address (`addr`, `len` bytes, as
/// written by `getsockname`).
///
/// # Safety
/// `addr` must point to `len` readable bytes.
unsafe fn classify_local(addr: *const sockaddr, len: socklen_t, loopback: Ipv4Addr) -> Option<Local> {
    // SAFETY: the caller's address; the family is read only if `len` covers it.
    if (len as usize) < std::mem::size_of::<sa_family_t>() {
        return None;
    }
    let family = unsafe { std::ptr::read_unaligned(std::ptr::addr_of!((*addr).sa_family)) } as c_int;
    let (ip, port, v6) = if family == AF_INET6 && len as usize >= inet::SIN6_LEN_RFC2133 {
        // SAFETY: length checked.
        let sin6 = unsafe { inet::read_sin6(addr, len) };
        let ip6 = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
        let port = u16::from_be(sin6.sin6_port);
        match ip6.to_ipv4_mapped() {
            Some(ip) => (ip, port, true),
            None if ip6.is_unspecified() => (Ipv4Addr::UNSPECIFIED, port, true),
            None => return Some(Local::Elsewhere(SocketAddrV6::new(ip6, port, 0, sin6.sin6_scope_id).into())),
        }
    } else {
        // SAFETY: the caller's address and length.
        let (a, _) = unsafe { inet::read(addr, len) }?;
        (*a.ip(), a.port(), false)
    };
    Some(if port == 0 {
        Local::Unbound { v6 }
    } else if ip.is_unspecified() {
        Local::Wildcard(port)
    } else if ip == loopback {
        Local::Node(port)
    } else {
        Local::Elsewhere(SocketAddrV4::new(ip, port).into())
    })
}

type AddrFn = unsafe extern "C" fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int;

/// The real address `query` (getsockname or getpeername) reports for `fd`.
fn real_name(query: Option<AddrFn>, fd: c_int) -> Option<(sockaddr_storage, socklen_t)> {
    let query = query?;
    // SAFETY: zeroed storage is valid; we pass its true size.
    let mut storage: sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<sockaddr_storage>() as socklen_t;
    let r = unsafe { query(fd, (&raw mut storage).cast(), &mut len) };
    (r == 0).then_some((storage, len))
}

fn local_of(config: &Config, fd: c_int) -> Option<Local> {
    let (s, len) = real_name(real::get().getsockname, fd)?;
    // SAFETY: `s` holds `len` bytes written by getsockname.
    unsafe { classify_local((&raw const s).cast(), len, config.loopback) }
}

/// Whether `fd`'s real peer is on the node's loopback address (a socket
/// connected to a flow socket, or to its own node).
fn peer_on_node(config: &Config, fd: c_int) -> bool {
    real_name(real::get().getpeername, fd).is_some_and(|(s, len)| {
        // SAFETY: `s` holds `len` bytes written by getpeername.
        unsafe { inet::read((&raw const s).cast(), len) }.is_some_and(|(a, _)| *a.ip() == config.loopback)
    })
}

/// Binds an unbound socket to `ip:0` (IPv4-mapped for an `AF_INET6`
/// socket, or `[::]:0` for the wildcard there) and classifies it again.
fn bind_any_port(config: &Config, fd: c_int, ip: Ipv4Addr, v6: bool) -> Option<Local> {
    let bind = real::get().bind?;
    let (mut s, mut len) = inet::build(SocketAddrV4::new(ip, 0), if v6 { Family::V6Mapped } else { Family::V4 });
    if v6 && ip.is_unspecified() {
        // `[::]:0`, not `[::ffff:0.0.0.0]:0`: the socket can still reach IPv6
        // destinations afterwards.
        // SAFETY: all-zero is a valid sockaddr_in6; storage is large enough.
        let mut sin6: sockaddr_in6 = unsafe { std::mem::zeroed() };
        sin6.sin6_family = AF_INET6 as sa_family_t;
        unsafe { std::ptr::write((&raw mut s).cast::<sockaddr_in6>(), sin6) };
        len = std::mem::size_of::<sockaddr_in6>() as socklen_t;
    }
    // SAFETY: `s` is a valid address of `len` bytes.
    unsafe { bind(fd, (&raw const s).cast(), len) };
    local_of(config, fd)
}

/// Refuses overlay traffic on a socket fixed to an address replies from the
/// runtime cannot reach.
fn refuse_bound(config: &Config, at: SocketAddr) -> c_int {
    say_once(&WARNED_BOUND, || {
        format!(
            "boxer-shim: a UDP socket bound to {at} cannot use the Boxer overlay (its datagrams travel through {}); \
             bind the wildcard or the overlay address instead. Overlay sends from it fail with ENETUNREACH\n",
            config.loopback
        )
    });
    ENETUNREACH
}

/// Where `fd` is bound, binding it to `bind_ip:0` first if it is not.
fn bound_local(config: &Config, fd: c_int, bind_ip: Ipv4Addr) -> Option<Local> {
    match local_of(config, fd) {
        Some(Local::Unbound { v6 }) => bind_any_port(config, fd, bind_ip, v6),
        other => other,
    }
}

/// The local port of a socket bound at `local` that is about to exchange
/// datagrams with a remote overlay address, and whether its sends must be
/// pinned to `L` (it is wildcard-bound); refuses a socket fixed to an
/// address the runtime's datagrams do not reach.
fn flow_source(config: &Config, fd: c_int, local: Option<Local>) -> Result<(u16, bool), c_int> {
    match local {
        Some(Local::Wildcard(port)) => Ok((port, true)),
        Some(Local::Node(port)) => Ok((port, false)),
        // Connected to a flow (a wildcard-bound socket's source became
        // 127.0.0.1 when it connected): the runtime already talks to it.
        Some(Local::Elsewhere(at)) if peer_on_node(config, fd) => Ok((at.port(), false)),
        Some(Local::Elsewhere(at)) => Err(refuse_bound(config, at)),
        Some(Local::Unbound { .. }) | None => Err(ENETUNREACH),
    }
}

/// The flow socket for datagrams from local port `src_port` to the remote
/// overlay address `dst`: cached, else asked of the runtime.
fn flow(config: &Config, src_port: u16, dst: SocketAddrV4) -> Result<SocketAddrV4, c_int> {
    let now = Instant::now();
    if let Some(Some(proxy)) = flow_cache::with(|c| c.flow(src_port, dst, now)) {
        return Ok(proxy);
    }
    match control::ask(config, &ShimRequest::UdpFlow { src_port, dst }) {
        // Only ever a loopback address: nothing is sent off the machine
        // even if a runtime answered nonsense.
        Some(ShimResponse::Proxy(proxy)) if proxy.ip().is_loopback() => {
            flow_cache::with(|c| {
                c.insert_flow(src_port, dst, proxy, now);
                if *proxy.ip() == config.loopback {
                    c.insert_peer(proxy.port(), dst, now);
                }
            });
            Ok(proxy)
        }
        Some(ShimResponse::Unreachable) => Err(EHOSTUNREACH),
        Some(ShimResponse::Denied(_)) => Err(EACCES),
        _ => Err(ENETUNREACH),
    }
}

/// Who sends from `L:port`: the remote app behind a flow socket, or (the
/// runtime knows no flow there) an app socket of this node, reported as
/// `overlay_ip:port`. `None` if the runtime cannot be asked: the caller
/// then shows the real address rather than a made-up one.
fn peer_of(config: &Config, port: u16) -> Option<SocketAddrV4> {
    let now = Instant::now();
    if let Some(Some(peer)) = flow_cache::with(|c| c.peer(port, now)) {
        return Some(peer);
    }
    match control::ask(config, &ShimRequest::UdpPeer { port }) {
        Some(ShimResponse::Peer(peer)) => {
            flow_cache::with(|c| c.insert_peer(port, peer, now));
            Some(peer)
        }
        Some(ShimResponse::Unknown) => Some(SocketAddrV4::new(config.overlay_ip, port)),
        _ => None,
    }
}

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

/// Rounds up to the alignment of a control message header.
fn cmsg_align(n: usize) -> usize {
    let a = std::mem::align_of::<cmsghdr>().max(std::mem::size_of::<usize>());
    n.div_ceil(a) * a
}

/// A control buffer: the app's control messages (`app`, copied) followed by
/// an `IP_PKTINFO` message that sets the datagram's source address to
/// `src`. Returns the buffer (8-byte aligned) and its length in bytes.
///
/// `SOL_IP`/`IP_PKTINFO` also works on an `AF_INET6` socket sending to an
/// IPv4-mapped address: the kernel hands such datagrams to the IPv4 path.
fn pktinfo_control(app: &[u8], src: Ipv4Addr) -> (Vec<u64>, usize) {
    let payload = std::mem::size_of::<libc::in_pktinfo>() as c_uint;
    let start = cmsg_align(app.len());
    // SAFETY: pure arithmetic.
    let total = start + unsafe { libc::CMSG_SPACE(payload) } as usize;
    let mut buf = vec![0u64; total.div_ceil(8)];
    let bytes = buf.as_mut_ptr().cast::<u8>();
    // SAFETY: `buf` holds `total` bytes; `app` fits before `start`; the
    // header at `start` is aligned (`start` is a multiple of 8, `buf` is
    // 8-aligned) and its payload fits in CMSG_SPACE.
    unsafe {
        std::ptr::copy_nonoverlapping(app.as_ptr(), bytes, app.len());
        let cmsg = bytes.add(start).cast::<cmsghdr>();
        (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as _;
        (*cmsg).cmsg_level = IPPROTO_IP;
        (*cmsg).cmsg_type = libc::IP_PKTINFO;
        let info = libc::in_pktinfo {
            ipi_ifindex: 0,
            ipi_spec_dst: libc::in_addr { s_addr: u32::from(src).to_be() },
            ipi_addr: libc::in_addr { s_addr: 0 },
        };
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in_pktinfo>(), info);
    }
    (buf, total)
}

/// Whether the app's message already chooses its source address
/// (`IP_PKTINFO` or `IPV6_PKTINFO`); the shim then adds none.
///
/// # Safety
/// `hdr` must describe a valid control buffer (as `sendmsg` requires).
unsafe fn has_pktinfo(hdr: &msghdr) -> bool {
    if hdr.msg_control.is_null() {
        return false;
    }
    // SAFETY: walking the app's control buffer with the libc macros, which
    // stay within `msg_controllen`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        while !cmsg.is_null() {
            let (level, ty) = ((*cmsg).cmsg_level, (*cmsg).cmsg_type);
            if (level == IPPROTO_IP && ty == libc::IP_PKTINFO) || (level == IPPROTO_IPV6 && ty == libc::IPV6_PKTINFO) {
                return true;
            }
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
    }
    false
}

/// The app's control bytes.
///
/// # Safety
/// `hdr`'s control pointer must be null or point to `msg_controllen` bytes.
unsafe fn control_bytes(hdr: &msghdr) -> &[u8] {
    if hdr.msg_control.is_null() || hdr.msg_controllen == 0 {
        return &[];
    }
    // `msg_controllen` is a `size_t` in glibc but a `socklen_t` elsewhere.
    #[allow(clippy::unnecessary_cast)]
    let len = hdr.msg_controllen as usize;
    // SAFETY: the caller's guarantee.
    unsafe { std::slice::from_raw_parts(hdr.msg_control.cast::<u8>(), len) }
}

/// Storage a rewritten message points into; must outlive the send.
struct Rewrite {
    name: sockaddr_storage,
    name_len: socklen_t,
    control: Option<(Vec<u64>, usize)>,
}

impl Rewrite {
    /// The new destination `to` and, if `pin` and the app chose no source
    /// itself, a control buffer with the app's messages plus `IP_PKTINFO`.
    ///
    /// # Safety
    /// `app` must be a valid message (as `sendmsg` requires).
    unsafe fn new(app: &msghdr, to: SocketAddrV4, family: Family, pin: Option<Ipv4Addr>) -> Self {
        let (name, name_len) = inet::build(to, family);
        // SAFETY: the caller's valid message.
        let control = pin.filter(|_| !unsafe { has_pktinfo(app) }).map(|src| unsafe {
            // SAFETY: as above.
            pktinfo_control(control_bytes(app), src)
        });
        Self { name, name_len, control }
    }

    /// A copy of `app` pointing at this rewrite's name (and control
    /// buffer); the app's data (`msg_iov`) and flags are shared.
    fn apply(&mut self, app: &msghdr) -> msghdr {
        let mut hdr = *app;
        hdr.msg_name = (&raw mut self.name).cast();
        hdr.msg_namelen = self.name_len;
        if let Some((buf, len)) = &mut self.control {
            hdr.msg_control = buf.as_mut_ptr().cast();
            hdr.msg_controllen = *len as _;
        }
        hdr
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

/// `connect` of a datagram socket to an overlay, broadcast or multicast
/// address (called by `connect` in net.rs).
///
/// UDP to a remote overlay address: an unbound socket is bound to `L:0`,
/// the flow is asked for (`UdpFlow`) and the socket is connected to the
/// flow socket. Errors: unknown address `EHOSTUNREACH`; runtime
/// unreachable or failing `ENETUNREACH`; request refused `EACCES`; socket
/// bound to another specific address `ENETUNREACH`. Our own overlay
/// address connects to `L:port` directly. Broadcast and multicast fail
/// with `ENETUNREACH`. Other datagram sockets (raw, ICMP) never connect
/// towards the overlay (`ENETUNREACH`), and pass through otherwise.
///
/// # Safety
/// `addr`/`len` are the caller's arguments to `connect`, read as `dst`.
pub(crate) unsafe fn connect_dgram(
    real: unsafe extern "C" fn(c_int, *const sockaddr, socklen_t) -> c_int,
    config: &Config,
    fd: c_int,
    addr: *const sockaddr,
    len: socklen_t,
    dst: SocketAddrV4,
    family: Family,
) -> c_int {
    let ip = *dst.ip();
    let saved = errno();
    let kind = socket_kind(fd);
    set_errno(saved);
    if kind != Kind::Udp {
        // SAFETY: arguments passed through from the caller.
        return if config.is_overlay(ip) { fail(ENETUNREACH) } else { unsafe { real(fd, addr, len) } };
    }
    if let Some(group) = group_of(config.network, ip) {
        return fail(refuse_group(group, ip));
    }
    // The socket's datagrams must leave from `L` (replies arrive there).
    let target = if ip == config.overlay_ip {
        bound_local(config, fd, config.loopback);
        Ok(SocketAddrV4::new(config.loopback, dst.port()))
    } else {
        let local = bound_local(config, fd, config.loopback);
        flow_source(config, fd, local).and_then(|(port, _)| flow(config, port, dst))
    };
    set_errno(saved);
    match target {
        Ok(to) => {
            let (s, slen) = inet::build(to, family);
            // SAFETY: `s` is a valid address of `slen` bytes.
            unsafe { real(fd, (&raw const s).cast(), slen) }
        }
        Err(e) => fail(e),
    }
}

/// The overlay name of a UDP socket's real address `addr` (for
/// `getpeername` when `peer`, else `getsockname`), or `None` to report the
/// real one (called by net.rs for loopback addresses of UDP sockets).
///
/// * peer on `L`: the remote app behind the flow socket (`UdpPeer`), or
///   `overlay_ip:port` for a socket of this node; the real address if the
///   runtime cannot be asked;
/// * local on `L`, or local 127.0.0.1 with the peer on `L` (a
///   wildcard-bound socket connected to a flow): `overlay_ip:port`.
pub(crate) fn overlay_name(config: &Config, fd: c_int, addr: SocketAddrV4, peer: bool) -> Option<SocketAddrV4> {
    let saved = errno();
    let on_node = *addr.ip() == config.loopback;
    let name = if peer {
        on_node.then(|| peer_of(config, addr.port())).flatten()
    } else {
        (on_node || peer_on_node(config, fd)).then(|| SocketAddrV4::new(config.overlay_ip, addr.port()))
    };
    set_errno(saved);
    name
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    use super::*;

    const L: Ipv4Addr = Ipv4Addr::new(127, 100, 0, 1);

    #[test]
    fn broadcast_and_multicast_are_groups() {
        let net: Ipv4Net = "100.96.0.0/12".parse().unwrap();
        assert_eq!(group_of(net, "100.111.255.255".parse().unwrap()), Some(Group::Broadcast));
        assert_eq!(group_of(net, Ipv4Addr::BROADCAST), Some(Group::Broadcast));
        assert_eq!(group_of(net, "224.0.0.251".parse().unwrap()), Some(Group::Multicast));
        assert_eq!(group_of(net, "239.255.255.250".parse().unwrap()), Some(Group::Multicast));
        assert_eq!(group_of(net, "100.96.0.5".parse().unwrap()), None);
        assert_eq!(group_of(net, "10.255.255.255".parse().unwrap()), None, "another network's broadcast");
        let tiny: Ipv4Net = "100.96.0.0/31".parse().unwrap();
        assert_eq!(group_of(tiny, "100.96.0.1".parse().unwrap()), None, "a /31 has no broadcast");
    }

    #[test]
    fn local_addresses_are_classified() {
        let v4 = |s: &str| inet::build(s.parse().unwrap(), Family::V4);
        let mapped = |s: &str| inet::build(s.parse().unwrap(), Family::V6Mapped);
        let classify =
            |(s, len): (sockaddr_storage, socklen_t)| unsafe { classify_local((&raw const s).cast(), len, L) };
        assert_eq!(classify(v4("0.0.0.0:0")), Some(Local::Unbound { v6: false }));
        assert_eq!(classify(v4("0.0.0.0:5000")), Some(Local::Wildcard(5000)));
        assert_eq!(classify(v4("127.100.0.1:5000")), Some(Local::Node(5000)));
        assert_eq!(classify(v4("127.0.0.1:5000")), Some(Local::Elsewhere("127.0.0.1:5000".parse().unwrap())));
        assert_eq!(classify(mapped("127.100.0.1:7")), Some(Local::Node(7)));
        assert_eq!(classify(mapped("0.0.0.0:7")), Some(Local::Wildcard(7)));
        let mut sin6: sockaddr_in6 = unsafe { std::mem::zeroed() };
        sin6.sin6_family = AF_INET6 as sa_family_t;
        let raw6 = |sin6: &sockaddr_in6| unsafe {
            classify_local((sin6 as *const sockaddr_in6).cast(), std::mem::size_of::<sockaddr_in6>() as socklen_t, L)
        };
        assert_eq!(raw6(&sin6), Some(Local::Unbound { v6: true }));
        sin6.sin6_port = 9u16.to_be();
        assert_eq!(raw6(&sin6), Some(Local::Wildcard(9)));
        sin6.sin6_addr.s6_addr[15] = 1;
        assert_eq!(raw6(&sin6), Some(Local::Elsewhere("[::1]:9".parse().unwrap())));
        let (s, _) = v4("0.0.0.0:1");
        assert_eq!(unsafe { classify_local((&raw const s).cast(), 1, L) }, None, "too short");
    }

    /// Walks a control buffer: (level, type, data) per message.
    fn cmsgs(buf: &mut [u64], len: usize) -> Vec<(c_int, c_int, Vec<u8>)> {
        let mut hdr: msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_control = buf.as_mut_ptr().cast();
        hdr.msg_controllen = len as _;
        let mut out = Vec::new();
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&hdr);
            while !c.is_null() {
                let data_len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = std::slice::from_raw_parts(libc::CMSG_DATA(c), data_len).to_vec();
                out.push(((*c).cmsg_level, (*c).cmsg_type, data));
                c = libc::CMSG_NXTHDR(&hdr, c);
            }
        }
        out
    }

    /// An app control buffer with one `IP_TOS` message (20 bytes: not a
    /// multiple of 8, as apps may pass it).
    fn tos_control() -> (Vec<u64>, usize) {
        let mut buf = vec![0u64; 4];
        let len = unsafe { libc::CMSG_LEN(4) } as usize;
        unsafe {
            let c = buf.as_mut_ptr().cast::<cmsghdr>();
            (*c).cmsg_len = len as _;
            (*c).cmsg_level = IPPROTO_IP;
            (*c).cmsg_type = libc::IP_TOS;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<c_int>(), 0x10);
        }
        (buf, len)
    }

    #[test]
    fn pktinfo_is_appended_after_the_apps_messages() {
        let (mut alone, len) = pktinfo_control(&[], L);
        let got = cmsgs(&mut alone, len);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].0, got[0].1), (IPPROTO_IP, libc::IP_PKTINFO));
        assert_eq!(&got[0].2[4..8], &L.octets(), "ipi_spec_dst is the source");

        let (app, app_len) = tos_control();
        let app_bytes = unsafe { std::slice::from_raw_parts(app.as_ptr().cast::<u8>(), app_len) };
        let (mut both, len) = pktinfo_control(app_bytes, L);
        assert_eq!(len % 8, 0);
        let got = cmsgs(&mut both, len);
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].0, got[0].1, got[0].2.clone()), (IPPROTO_IP, libc::IP_TOS, 0x10i32.to_ne_bytes().to_vec()));
        assert_eq!((got[1].0, got[1].1), (IPPROTO_IP, libc::IP_PKTINFO));
        assert_eq!(&got[1].2[4..8], &L.octets());
    }

    #[test]
    fn rewrite_copies_the_header_and_leaves_the_apps_alone() {
        let (mut control, control_len) = tos_control();
        let mut data = *b"hello";
        let mut iov = iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
        let (mut name, name_len) = inet::build("100.96.0.5:53".parse().unwrap(), Family::V6Mapped);
        let mut app: msghdr = unsafe { std::mem::zeroed() };
        app.msg_name = (&raw mut name).cast();
        app.msg_namelen = name_len;
        app.msg_iov = &mut iov;
        app.msg_iovlen = 1;
        app.msg_control = control.as_mut_ptr().cast();
        app.msg_controllen = control_len as _;
        app.msg_flags = 0x40;
        let before = app;
        let to: SocketAddrV4 = "127.100.0.1:41000".parse().unwrap();

        let mut rw = unsafe { Rewrite::new(&app, to, Family::V6Mapped, Some(L)) };
        let hdr = rw.apply(&app);
        assert_eq!(unsafe { inet::read(hdr.msg_name.cast(), hdr.msg_namelen) }, Some((to, Family::V6Mapped)));
        assert_eq!(hdr.msg_iov, app.msg_iov);
        assert_eq!(hdr.msg_iovlen, 1);
        assert_eq!(hdr.msg_flags, 0x40);
        assert_ne!(hdr.msg_control, app.msg_control, "a new control buffer");
        assert!(unsafe { has_pktinfo(&hdr) });
        assert!(!unsafe { has_pktinfo(&app) });
        // The app's header, name and control buffer are untouched.
        assert_eq!(
            (app.msg_name, app.msg_namelen, app.msg_control),
            (before.msg_name, before.msg_namelen, before.msg_control)
        );
        assert_eq!(
            unsafe { inet::read(app.msg_name.cast(), app.msg_namelen) },
            Some(("100.96.0.5:53".parse().unwrap(), Family::V6Mapped))
        );
        assert_eq!(cmsgs(&mut control, control_len).len(), 1);

        // Without pinning, or when the app pinned a source itself, the
        // app's control buffer is used as is.
        let mut rw = unsafe { Rewrite::new(&app, to, Family::V6Mapped, None) };
        assert_eq!(rw.apply(&app).msg_control, app.msg_control);
        let (mut pinned, pinned_len) = pktinfo_control(&[], "127.0.0.1".parse().unwrap());
        app.msg_control = pinned.as_mut_ptr().cast();
        app.msg_controllen = pinned_len as _;
        let mut rw = unsafe { Rewrite::new(&app, to, Family::V4, Some(L)) };
        let hdr = rw.apply(&app);
        assert_eq!(hdr.msg_control, app.msg_control);
        assert_eq!(hdr.msg_namelen as usize, std::mem::size_of::<libc::sockaddr_in>());
    }

    /// The kernel behaviour the pinning relies on, on loopback only: a
    /// wildcard-bound socket's datagram with `IP_PKTINFO` leaves from the
    /// pinned loopback address, for `AF_INET` and for `AF_INET6` sending to
    /// an IPv4-mapped address.
    #[test]
    fn pinned_sends_leave_from_the_node_address() {
        let node = Ipv4Addr::new(127, 100, 0, 77);
        let rx = UdpSocket::bind((node, 0)).unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let to = match rx.local_addr().unwrap() {
            SocketAddr::V4(a) => a,
            _ => unreachable!(),
        };
        let sendmsg = real::get().sendmsg.unwrap();
        for (tx, family) in [
            (UdpSocket::bind("0.0.0.0:0").unwrap(), Family::V4),
            (UdpSocket::bind("[::]:0").unwrap(), Family::V6Mapped),
        ] {
            let mut data = *b"pinned";
            let mut iov = iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
            let mut app: msghdr = unsafe { std::mem::zeroed() };
            app.msg_iov = &mut iov;
            app.msg_iovlen = 1;
            let mut rw = unsafe { Rewrite::new(&app, to, family, Some(node)) };
            let hdr = rw.apply(&app);
            let sent = unsafe { sendmsg(tx.as_raw_fd(), &hdr, 0) };
            assert_eq!(sent, 6, "{family:?}: errno {}", errno());
            let mut buf = [0u8; 16];
            let (n, from) = rx.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"pinned");
            assert_eq!(from.ip(), std::net::IpAddr::V4(node), "{family:?}");
            assert_eq!(from.port(), tx.local_addr().unwrap().port());
        }
    }

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

    #[test]
    fn sockets_know_their_kind() {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(socket_kind(udp.as_raw_fd()), Kind::Udp);
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(socket_kind(tcp.as_raw_fd()), Kind::Stream);
        assert_eq!(socket_kind(-1), Kind::Other);
        let icmp = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP) };
        if icmp >= 0 {
            assert_eq!(socket_kind(icmp), Kind::Other, "ping sockets are not UDP");
            unsafe { libc::close(icmp) };
        }
    }
}
