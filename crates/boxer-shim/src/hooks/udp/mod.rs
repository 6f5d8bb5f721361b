//! Overlay UDP: the send hooks ([`send`]: `sendto`, `sendmsg`, `sendmmsg`),
//! the receive hooks ([`recv`]: `recvfrom`, `__recvfrom_chk`, `recvmsg`,
//! `recvmmsg`), and here the datagram branches of `connect`, `getpeername`
//! and `getsockname` (called from `net.rs`), with what they share: which
//! sockets and destinations take part, where a socket is bound, and the
//! runtime's flows.
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
//! sends carry an `IP_PKTINFO` control message that makes their source `L`
//! ([`cmsg`]): every overlay datagram on the node then travels between
//! addresses on `L`, and the kernel matches replies to connected sockets.
//!
//! Broadcast and multicast are not carried: sends to the overlay network's
//! broadcast address, 255.255.255.255 or 224.0.0.0/4 fail with
//! `ENETUNREACH` (one line on stderr per process and kind).

mod cmsg;
pub mod recv;
pub mod send;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use boxer_proto::shim::{ShimRequest, ShimResponse};
use ipnet::Ipv4Net;
use libc::{
    AF_INET6, EHOSTUNREACH, ENETUNREACH, IPPROTO_TCP, IPPROTO_UDP, SO_TYPE, SOCK_STREAM, SOL_SOCKET, c_int,
    sa_family_t, sockaddr, sockaddr_in6, socklen_t,
};

use super::{real_name, sockopt_int};
use crate::config::Config;
use crate::inet::{self, Family};
use crate::{control, errno, fail, flow_cache, real, set_errno};

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

/// Refuses a datagram to a broadcast or multicast address.
fn refuse_group(group: Group, ip: Ipv4Addr) -> c_int {
    let (flag, kind) = match group {
        Group::Broadcast => (&WARNED_BROADCAST, "broadcast"),
        Group::Multicast => (&WARNED_MULTICAST, "multicast"),
    };
    control::say_once(flag, || {
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
    control::say_once(&WARNED_BOUND, || {
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
///
/// Errors: the runtime knows no such address, `EHOSTUNREACH`; anything else
/// (the runtime unreachable, refusing this process, answering nonsense),
/// `ENETUNREACH`. [`control::ask`] already said once on stderr why.
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
        _ => Err(ENETUNREACH),
    }
}

/// Who sends from `L:port`: the remote app behind a flow socket, or an app
/// socket of this node, reported as `overlay_ip:port`. `None` if the
/// runtime cannot be asked: the caller then shows the real address rather
/// than a made-up one.
///
/// The `Unknown` mapping is exact, not a guess. Only two kinds of socket
/// send from an address on `L`: the runtime's flow sockets and app sockets
/// of this node bound to `L` (every node has its own `L`, and nothing else
/// binds there). The runtime answers `Peer` for a flow port for as long as
/// that port is bound, including the linger period after its flow closed,
/// so a datagram still in flight from a closed flow is named by its remote
/// app. `Unknown` therefore means no flow socket holds the port, and the
/// sender is an app socket of this node, whose overlay name is
/// `overlay_ip:port` (what `getsockname` shows for it).
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

/// `connect` of a datagram socket to an overlay, broadcast or multicast
/// address (called by `connect` in net.rs).
///
/// UDP to a remote overlay address: an unbound socket is bound to `L:0`,
/// the flow is asked for (`UdpFlow`) and the socket is connected to the
/// flow socket. Errors: unknown address `EHOSTUNREACH`; runtime
/// unreachable, failing or refusing this process (said once on stderr)
/// `ENETUNREACH`; socket bound to another specific address `ENETUNREACH`.
/// Our own overlay address connects to `L:port` directly. Broadcast and
/// multicast fail with `ENETUNREACH`. Other datagram sockets (raw, ICMP)
/// never connect towards the overlay (`ENETUNREACH`), and pass through
/// otherwise.
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
/// * peer on `L`: the remote app behind the flow socket, or
///   `overlay_ip:port` for a socket of this node (see [`peer_of`]); the
///   real address if the runtime cannot be asked;
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

    use libc::sockaddr_storage;

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
