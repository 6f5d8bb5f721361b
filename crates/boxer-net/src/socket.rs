//! The node's UDP socket as quinn sees it: one address per peer, whatever
//! path its packets take.
//!
//! quinn is given a [`PeerSocket`] instead of the bare UDP socket. Peer
//! connections are dialled to a *peer address* ([`peer_addr`]: a reserved,
//! never-routed `240.0.0.0/4` address that encodes the node id), and the
//! socket decides per packet where it really goes: straight to the peer's
//! current UDP address (a direct or hole-punched path) or into the relay
//! stream through the rendezvous. Packets arriving from a peer's known UDP
//! address or from the relay are reported to quinn as coming from the peer
//! address. A QUIC connection therefore never notices a path change: a relayed
//! connection that is upgraded to a punched path, or a NAT rebinding, keeps
//! its streams (the idea of iroh's magicsock).
//!
//! The socket also separates path probes ([`boxer_proto::disco`]) from QUIC
//! and hands them to the [`crate::punch::Pathfinder`]. Everything else (the
//! rendezvous connection) passes through untouched.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use boxer_proto::{NodeId, disco};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::mpsc;

/// First address of the block peer addresses are taken from: 240.0.0.0/4 is
/// reserved (RFC 1112) and no host routes it, so a bug that let a peer address
/// reach the kernel could not send anything anywhere.
const PEER_BLOCK: u32 = 0xF000_0000;

/// Port of every peer address (any nonzero port; quinn refuses port 0).
const PEER_PORT: u16 = 1;

/// Largest node id with a peer address (the 28 bits below the /4 prefix).
pub const MAX_PEER_ID: u32 = !PEER_BLOCK;

/// Packets waiting for the relay writer. A full queue drops packets like a
/// congested link; QUIC's congestion control then slows down.
const RELAY_QUEUE: usize = 1024;

/// Probes waiting for the pathfinder; more are dropped (a flood of probes
/// must not grow memory).
const PROBE_QUEUE: usize = 256;

/// The address quinn uses for peer `id`.
pub fn peer_addr(id: NodeId) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(PEER_BLOCK | (id.0 & MAX_PEER_ID))), PEER_PORT)
}

/// The peer a [`peer_addr`] stands for.
pub fn peer_of(addr: SocketAddr) -> Option<NodeId> {
    match addr {
        SocketAddr::V4(a) if u32::from(*a.ip()) & PEER_BLOCK == PEER_BLOCK && a.port() == PEER_PORT => {
            Some(NodeId(u32::from(*a.ip()) & MAX_PEER_ID))
        }
        _ => None,
    }
}

/// Where packets for a peer go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Straight to this UDP address.
    Direct(SocketAddr),
    /// Through the rendezvous' relay.
    Relay,
}

/// A probe as received: its source and bytes.
pub type ReceivedProbe = (SocketAddr, Vec<u8>);

/// A packet to or from the relay: the peer and the QUIC packet.
pub type RelayPacket = (NodeId, Vec<u8>);

/// The route table. Written only by the pathfinder performing its state
/// machine's actions ([`crate::path::Action`]): the state machine decides,
/// the socket executes.
#[derive(Debug, Default)]
struct Routes {
    to_peer: HashMap<NodeId, Route>,
    from_addr: HashMap<SocketAddr, NodeId>,
}

/// quinn's UDP socket with per-peer routing (see the module docs).
pub struct PeerSocket {
    udp: Arc<dyn AsyncUdpSocket>,
    /// The same socket (a `dup`), for probes sent with a chosen TTL.
    raw: OwnedFd,
    ipv6: bool,
    routes: Mutex<Routes>,
    probes: mpsc::Sender<ReceivedProbe>,
    relay_out: Mutex<Option<mpsc::Sender<RelayPacket>>>,
    relay_in: Mutex<mpsc::Receiver<RelayPacket>>,
    relay_in_tx: mpsc::Sender<RelayPacket>,
}

impl fmt::Debug for PeerSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerSocket").field("routes", &self.routes).finish_non_exhaustive()
    }
}

impl PeerSocket {
    /// Wraps a bound UDP socket; probes received on it go to the returned
    /// channel.
    pub fn new(socket: std::net::UdpSocket) -> io::Result<(Arc<Self>, mpsc::Receiver<ReceivedProbe>)> {
        let raw = OwnedFd::from(socket.try_clone()?);
        let ipv6 = socket.local_addr()?.is_ipv6();
        let udp = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, socket)?;
        let (probes, probe_rx) = mpsc::channel(PROBE_QUEUE);
        let (relay_in_tx, relay_in) = mpsc::channel(RELAY_QUEUE);
        let socket = Self {
            udp,
            raw,
            ipv6,
            routes: Mutex::default(),
            probes,
            relay_out: Mutex::new(None),
            relay_in: Mutex::new(relay_in),
            relay_in_tx,
        };
        Ok((Arc::new(socket), probe_rx))
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The route to `peer`, if one was chosen.
    pub fn route(&self, peer: NodeId) -> Option<Route> {
        self.routes().to_peer.get(&peer).copied()
    }

    /// Sends `peer`'s packets along `route` from now on
    /// ([`crate::path::Action::SetRoute`]).
    pub(crate) fn set_route(&self, peer: NodeId, route: Route) {
        let mut r = self.routes();
        if let Some(Route::Direct(old)) = r.to_peer.insert(peer, route)
            && route != Route::Direct(old)
        {
            // Keep accepting the old address: packets in flight still use it.
            r.from_addr.entry(old).or_insert(peer);
        }
        if let Route::Direct(addr) = route {
            r.from_addr.insert(addr, peer);
        }
    }

    /// Attributes packets from `addr` to `peer` (a peer-reflexive address
    /// learnt from an authenticated probe; [`crate::path::Action::Learn`]).
    pub(crate) fn learn(&self, addr: SocketAddr, peer: NodeId) {
        self.routes().from_addr.insert(addr, peer);
    }

    /// The peer packets from `addr` are attributed to, if any.
    pub fn peer_at(&self, addr: SocketAddr) -> Option<NodeId> {
        self.routes().from_addr.get(&addr).copied()
    }

    /// Forgets every route of a peer that left
    /// ([`crate::path::Action::ForgetRoutes`]).
    pub(crate) fn forget(&self, peer: NodeId) {
        let mut r = self.routes();
        r.to_peer.remove(&peer);
        r.from_addr.retain(|_, p| *p != peer);
    }

    /// Connects the relay: packets for relayed peers go to `out`; packets
    /// from the relay are delivered through [`PeerSocket::relay_inbox`].
    pub fn attach_relay(&self, out: mpsc::Sender<RelayPacket>) {
        *self.relay_out.lock().unwrap_or_else(|e| e.into_inner()) = Some(out);
    }

    /// Where the relay reader puts packets from peers.
    pub fn relay_inbox(&self) -> mpsc::Sender<RelayPacket> {
        self.relay_in_tx.clone()
    }

    /// Whether a relay is attached.
    pub fn has_relay(&self) -> bool {
        self.relay_out.lock().unwrap_or_else(|e| e.into_inner()).as_ref().is_some_and(|s| !s.is_closed())
    }

    /// Sends a probe to `to`, with IP TTL `ttl` when given (see
    /// [`crate::path::LOW_TTL`]). A full socket buffer drops it: probes are
    /// repeated.
    pub fn send_probe(&self, to: SocketAddr, packet: &[u8], ttl: Option<u8>) -> io::Result<()> {
        let to = if self.ipv6 {
            match to {
                SocketAddr::V4(a) => SocketAddr::new(IpAddr::V6(a.ip().to_ipv6_mapped()), a.port()),
                v6 => v6,
            }
        } else if to.is_ipv6() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "IPv6 candidate on an IPv4 socket"));
        } else {
            to
        };
        match send_with_ttl(self.raw.as_raw_fd(), packet, to, ttl) {
            // A host that refuses the per-packet TTL (a sandbox filtering
            // control messages) still gets the probe, at the default TTL:
            // punching works without the low-TTL refinement.
            Err(e) if ttl.is_some() && ttl_refused(&e) => {
                let plain = send_with_ttl(self.raw.as_raw_fd(), packet, to, None);
                if plain.is_ok() {
                    static NOTED: std::sync::Once = std::sync::Once::new();
                    NOTED.call_once(|| {
                        tracing::warn!("this host refuses a per-packet IP TTL ({e}); probes use the default TTL")
                    });
                }
                plain
            }
            other => other,
        }
    }

    fn relay(&self, peer: NodeId, transmit: &Transmit) {
        let out = self.relay_out.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(out) = out else { return };
        let size = transmit.segment_size.unwrap_or(transmit.contents.len()).max(1);
        for segment in transmit.contents.chunks(size) {
            if out.try_send((peer, segment.to_vec())).is_err() {
                return;
            }
        }
    }

    /// Hands probes to the pathfinder, rewrites sources of peer packets.
    fn sort_received(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta], n: usize) {
        let routes = self.routes();
        for (buf, m) in bufs.iter_mut().zip(meta.iter_mut()).take(n) {
            // A probe travels alone, or last in a GRO batch (it is shorter
            // than the QUIC packets before it from the same address).
            let last =
                if m.stride > 0 && m.len > m.stride && m.len % m.stride != 0 { m.len - m.len % m.stride } else { 0 };
            let tail = &buf[last..m.len];
            if disco::is_probe(tail) {
                let _ = self.probes.try_send((m.addr, tail.to_vec()));
                m.len = last;
                if m.len == 0 {
                    continue;
                }
            }
            if let Some(peer) = routes.from_addr.get(&m.addr) {
                m.addr = peer_addr(*peer);
            }
        }
    }
}

impl AsyncUdpSocket for PeerSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.udp.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let Some(peer) = peer_of(transmit.destination) else {
            return self.udp.try_send(transmit);
        };
        match self.route(peer) {
            // No source IP: quinn pins the local address a connection was
            // first reached on, which is gone after our interface changed;
            // the kernel picks the right one for the current path.
            Some(Route::Direct(addr)) => self.udp.try_send(&Transmit { destination: addr, src_ip: None, ..*transmit }),
            // Without a chosen route the relay is the one path that may work.
            Some(Route::Relay) | None => {
                self.relay(peer, transmit);
                Ok(())
            }
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        // UDP first: the hot path of direct peers never touches the relay
        // queue (whose polling would also spend the task's coop budget).
        match self.udp.poll_recv(cx, bufs, meta) {
            Poll::Ready(Ok(n)) => {
                self.sort_received(bufs, meta, n);
                return Poll::Ready(Ok(n));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        let mut relay = self.relay_in.lock().unwrap_or_else(|e| e.into_inner());
        match relay.poll_recv(cx) {
            Poll::Ready(Some((peer, packet))) => {
                let (Some(buf), Some(m)) = (bufs.first_mut(), meta.first_mut()) else { return Poll::Pending };
                let len = packet.len().min(buf.len());
                buf[..len].copy_from_slice(&packet[..len]);
                *m = RecvMeta { addr: peer_addr(peer), len, stride: len, ecn: None, dst_ip: None };
                Poll::Ready(Ok(1))
            }
            // Both sources have registered the waker.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.udp.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.udp.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.udp.may_fragment()
    }
}

/// Errors that may mean "no per-packet TTL here" (confirmed when the same
/// packet then goes out without one).
fn ttl_refused(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM | libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP))
}

/// `sendmsg` with an `IP_TTL` / `IPV6_HOPLIMIT` control message, so one
/// datagram gets its own TTL without touching the socket's (which quinn's
/// packets use concurrently).
fn send_with_ttl(fd: i32, packet: &[u8], to: SocketAddr, ttl: Option<u8>) -> io::Result<()> {
    let addr = socket2::SockAddr::from(to);
    let mut iov = libc::iovec { iov_base: packet.as_ptr() as *mut libc::c_void, iov_len: packet.len() };
    // SAFETY: all-zero is a valid msghdr; the pointers below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = addr.as_ptr() as *mut libc::c_void;
    msg.msg_namelen = addr.len();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    // Room for one cmsg carrying an int, aligned as the kernel expects.
    let mut control = [0u64; 4];
    if let Some(ttl) = ttl {
        let (level, kind) =
            if to.is_ipv6() { (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT) } else { (libc::IPPROTO_IP, libc::IP_TTL) };
        // SAFETY: CMSG_* on a buffer large enough for one int cmsg.
        unsafe {
            let space = libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as usize;
            msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = level;
            (*cmsg).cmsg_type = kind;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut libc::c_int, ttl as libc::c_int);
        }
    }
    // SAFETY: msg points at live buffers; fd is our own socket.
    let sent = unsafe { libc::sendmsg(fd, &msg, 0) };
    if sent < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_addresses_round_trip_and_stay_apart_from_real_ones() {
        for id in [1, 5, 4096, MAX_PEER_ID] {
            assert_eq!(peer_of(peer_addr(NodeId(id))), Some(NodeId(id)));
        }
        assert_eq!(peer_of("127.0.0.1:1".parse().unwrap()), None);
        assert_eq!(peer_of("100.96.0.5:1".parse().unwrap()), None);
        assert_eq!(peer_of("240.0.0.5:4740".parse().unwrap()), None, "other ports are not peer addresses");
    }

    #[tokio::test]
    async fn probes_are_sorted_out_and_sent_with_a_ttl() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (sock, mut probes) = PeerSocket::new(a).unwrap();
        let b = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b_addr = b.local_addr().unwrap();
        sock.send_probe(b_addr, b"\x00BXDhello", Some(3)).unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = b.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"\x00BXDhello");
        b.send_to(b"\x00BXDback", from).await.unwrap();
        // A probe is taken out of quinn's stream and handed over.
        let sock2 = sock.clone();
        let poll = tokio::spawn(async move {
            let mut data = [0u8; 2048];
            let mut meta = [RecvMeta::default()];
            std::future::poll_fn(|cx| {
                let mut bufs = [IoSliceMut::new(&mut data)];
                sock2.poll_recv(cx, &mut bufs, &mut meta)
            })
            .await
            .unwrap();
            meta[0].len
        });
        assert_eq!(poll.await.unwrap(), 0, "quinn sees an empty datagram");
        assert_eq!(probes.recv().await.unwrap(), (b_addr, b"\x00BXDback".to_vec()));
    }
}
