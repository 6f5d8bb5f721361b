//! Overlay UDP, the runtime's side.
//!
//! The shim asks for a *flow* (`ShimRequest::UdpFlow`) when an app's UDP
//! socket on local port X sends to an overlay address D:p. A flow is a
//! runtime socket on the node's loopback address L, dedicated to the pair
//! (X, D:p): the app's datagrams go to it instead of D:p, and the peer's
//! datagrams come from it, so the shim maps the flow's port back to D:p
//! (`ShimRequest::UdpPeer`). Between the nodes each datagram travels as
//! QUIC datagrams on the peer connection, cut into fragments when it is
//! larger than one (see [`boxer_proto::peer::UdpHeader`]).
//!
//! * [`flows`]: the table of flows, their limits, idle expiry and linger.
//! * [`send`]: a flow's task, app to peer.
//! * [`deliver`]: peers' datagrams to the app.
//! * [`fragment`]: cutting and reassembly (sans-IO).

mod deliver;
mod flows;
mod fragment;
mod send;
#[cfg(test)]
pub(crate) mod tests;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU32, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use boxer_net::peers::Peers;
use boxer_proto::NodeId;
use boxer_proto::shim::ShimResponse;
use tokio::net::UdpSocket;
use tracing::{Instrument, debug, info_span};

pub(crate) use deliver::{INBOUND_BUFFER, serve};
use flows::{Flow, FlowKey, FlowTable, MAX_FLOWS, Opener, PeerQuota, TableFull};

use crate::node::Shared;

/// Receive buffer asked for each flow socket, where the app's datagrams
/// wait while the node's one thread does other work. 1 MiB would hold ~450
/// datagrams of 1460 bytes (~100 ms of a 50 Mbit/s stream); the kernel caps
/// the request at twice `net.core.rmem_max` (~416 KiB by default), which is
/// still twice its default.
const FLOW_RECEIVE_BUFFER: usize = 1 << 20;

/// Why no flow could be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FlowError {
    /// The table is full.
    #[error(transparent)]
    Full(#[from] TableFull),
    /// The peer's datagrams already opened their share of the table.
    #[error(transparent)]
    PeerQuota(#[from] PeerQuota),
    /// A peer's datagram is addressed to a port of the runtime's own flow
    /// sockets, which no app can receive on.
    #[error("port {0} is a flow socket's, not an app's")]
    FlowPort(u16),
    /// The node is stopping.
    #[error("the node is stopping")]
    Stopped,
    /// The flow socket could not be opened.
    #[error("cannot open a UDP flow socket on {addr}: {source}")]
    Socket {
        /// The node's loopback address.
        addr: Ipv4Addr,
        /// The error.
        source: std::io::Error,
    },
}

/// The node's overlay UDP state.
#[derive(Debug)]
pub(crate) struct Udp {
    loopback: Ipv4Addr,
    peers: Arc<Peers>,
    /// The node's span, parent of every flow's.
    span: tracing::Span,
    /// The flows; `None` once the node stopped (no flow opens after that:
    /// nothing would close it).
    flows: Mutex<Option<FlowTable>>,
    /// Bytes the flows queue while waiting for peer connections (see
    /// [`send::PENDING_BYTES`]).
    pending_bytes: AtomicUsize,
    /// Id of the next datagram sent, for every flow: ids never repeat
    /// within a reassembly timeout, even when a flow is reopened.
    next_id: AtomicU32,
}

impl Udp {
    /// Overlay UDP for a node with loopback address `loopback`, reaching
    /// peers through `peers`; flows log under `span`.
    pub(crate) fn new(loopback: Ipv4Addr, peers: Arc<Peers>, span: tracing::Span) -> Self {
        Self {
            loopback,
            peers,
            span,
            flows: Mutex::new(Some(FlowTable::new(flow_limit()))),
            pending_bytes: AtomicUsize::new(0),
            next_id: AtomicU32::new(0),
        }
    }

    /// The flow of `key` (to `peer`) the local app asks for, opened if
    /// there is none, active at `now`.
    pub(crate) fn flow(self: &Arc<Self>, key: FlowKey, peer: NodeId, now: Instant) -> Result<Arc<Flow>, FlowError> {
        self.open(key, peer, Opener::App, now)
    }

    /// The flow of `key` for a datagram of `peer`, opened if there is none
    /// and the peer's share of the table allows, active at `now`. The caller
    /// checked that an app socket holds `key.local_port`.
    pub(crate) fn inbound_flow(
        self: &Arc<Self>,
        key: FlowKey,
        peer: NodeId,
        now: Instant,
    ) -> Result<Arc<Flow>, FlowError> {
        self.open(key, peer, Opener::Peer, now)
    }

    /// The open flow of `key`, if any, marked active at `now`.
    pub(crate) fn existing(&self, key: &FlowKey, now: Instant) -> Option<Arc<Flow>> {
        let guard = self.flows.lock().expect("flow table lock");
        let flow = guard.as_ref()?.get(key)?;
        flow.touch(now);
        Some(flow.clone())
    }

    /// The open flow of `key`, else a new one opened by `opener`: within
    /// the table's limit (freeing a forgotten flow's socket if full) and,
    /// for a peer, within its share.
    fn open(
        self: &Arc<Self>,
        key: FlowKey,
        peer: NodeId,
        opener: Opener,
        now: Instant,
    ) -> Result<Arc<Flow>, FlowError> {
        let full = {
            let mut guard = self.flows.lock().expect("flow table lock");
            let Some(table) = guard.as_mut() else { return Err(FlowError::Stopped) };
            if let Some(flow) = table.get(&key) {
                flow.touch(now);
                return Ok(flow.clone());
            }
            table.is_full(now)
        };
        // Only a full table needs the app sockets, read outside the lock.
        let bound = full.then(bound_udp_ports);
        let mut guard = self.flows.lock().expect("flow table lock");
        let Some(table) = guard.as_mut() else { return Err(FlowError::Stopped) };
        if let Some(flow) = table.get(&key) {
            flow.touch(now);
            return Ok(flow.clone());
        }
        if opener == Opener::Peer {
            if table.by_port(key.local_port).is_some() {
                return Err(FlowError::FlowPort(key.local_port));
            }
            table.check_quota(peer)?;
        }
        // Not read (the table filled up meanwhile): every app port counts
        // as in use, so nothing is evicted on a guess.
        let in_use = |port| bound.as_ref().is_none_or(|b| b.contains(&port));
        if let Some(freed) = table.make_room(now, in_use)? {
            debug!(port = freed.key.local_port, remote = %freed.key.remote, flow = freed.port, "UDP flow socket freed to make room");
        }
        let socket = bind(self.loopback).map_err(|source| FlowError::Socket { addr: self.loopback, source })?;
        let flow = Flow::new(key, peer, opener, socket, now)
            .map_err(|source| FlowError::Socket { addr: self.loopback, source })?;
        let flow = Arc::new(flow);
        table.insert(flow.clone(), now);
        let flows = table.len();
        drop(guard);
        let span = info_span!(parent: &self.span, "udp", port = key.local_port, remote = %key.remote, flow = flow.port);
        span.in_scope(|| debug!(%peer, ?opener, flows, "UDP flow opened"));
        let task = tokio::spawn(send::run(flow.clone(), self.clone()).instrument(span));
        flow.set_task(task.abort_handle());
        Ok(flow)
    }

    /// The remote endpoint of the flow (open or lingering) whose socket is
    /// on `port`, for an answer to the shim at `now` (see
    /// [`FlowTable::peer_of`]).
    pub(crate) fn remote_of(&self, port: u16, now: Instant) -> Option<SocketAddrV4> {
        self.flows.lock().expect("flow table lock").as_mut()?.peer_of(port, now)
    }

    /// Closes `flow`, whose task ended by itself at `now` (its socket
    /// failed, or the task panicked): it lingers like any closed flow and
    /// the next `UdpFlow` for its pair opens a new one. Never panics (it
    /// runs from a drop).
    pub(crate) fn task_ended(&self, flow: &Arc<Flow>, now: Instant) {
        let Ok(mut guard) = self.flows.lock() else { return };
        if guard.as_mut().is_some_and(|t| t.close_flow(flow, now)) {
            debug!(port = flow.key.local_port, remote = %flow.key.remote, flow = flow.port, "UDP flow closed: its task ended");
        }
    }

    /// Releases the sockets of flows whose linger is over at `now`, and
    /// closes (to linger) the flows idle too long whose app socket is gone.
    pub(crate) fn expire(&self, now: Instant) {
        let any_idle = {
            let mut guard = self.flows.lock().expect("flow table lock");
            let Some(table) = guard.as_mut() else { return };
            let released = table.sweep(now);
            if !released.is_empty() {
                debug!(flows = released.len(), "UDP flow sockets released after their linger");
            }
            table.any_idle(now)
        };
        if !any_idle {
            return;
        }
        // Read outside the lock: the app's sockets in this network namespace.
        let bound = bound_udp_ports();
        let closed = self
            .flows
            .lock()
            .expect("flow table lock")
            .as_mut()
            .map(|t| t.expire(now, |port| bound.contains(&port)))
            .unwrap_or_default();
        for flow in closed {
            debug!(port = flow.key.local_port, remote = %flow.key.remote, "UDP flow closed: idle");
        }
    }

    /// Closes the flows to a peer that left (they linger, see
    /// [`flows::FLOW_LINGER`]).
    pub(crate) fn peer_left(&self, peer: NodeId) {
        let now = Instant::now();
        let closed =
            self.flows.lock().expect("flow table lock").as_mut().map(|t| t.remove_peer(peer, now)).unwrap_or_default();
        if !closed.is_empty() {
            debug!(%peer, flows = closed.len(), "UDP flows closed: the peer left");
        }
    }

    /// Closes every flow and releases every socket at once, lingering ones
    /// included, and opens no more (the node stops).
    pub(crate) fn shutdown(&self) {
        if let Some(mut table) = self.flows.lock().expect("flow table lock").take() {
            table.clear();
        }
    }
}

/// Local ports of every UDP socket in this network namespace (the node's),
/// from `/proc/net/udp` and `/proc/net/udp6`; empty if they cannot be read.
/// Costs a read of a line per socket (the flow sockets included): only
/// called when a flow might be closed or opened for a peer.
fn bound_udp_ports() -> std::collections::HashSet<u16> {
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|text| parse_proc_net_udp(&text))
        .collect()
}

/// The local ports in the text of `/proc/net/udp{,6}`: after the header
/// line, the second column is `ADDR:PORT` with the port in hex.
fn parse_proc_net_udp(text: &str) -> Vec<u16> {
    text.lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(1)?.rsplit_once(':'))
        .filter_map(|(_, port)| u16::from_str_radix(port, 16).ok())
        .collect()
}

/// Opens a flow socket on the node's loopback address.
fn bind(loopback: Ipv4Addr) -> std::io::Result<UdpSocket> {
    let socket = std::net::UdpSocket::bind((loopback, 0))?;
    socket.set_nonblocking(true)?;
    if let Err(e) = socket2::SockRef::from(&socket).set_recv_buffer_size(FLOW_RECEIVE_BUFFER) {
        debug!("flow socket keeps its default receive buffer: {e}");
    }
    UdpSocket::from_std(socket)
}

/// Most flows this process can afford: [`MAX_FLOWS`], and at most half the
/// file descriptor limit, so flows never take the descriptors the TCP proxy
/// and the node itself need (Lambda allows 1024).
fn flow_limit() -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the limit into the struct we pass.
    let nofile = (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit.rlim_cur);
    match nofile {
        Some(n) if n != libc::RLIM_INFINITY => MAX_FLOWS.min(usize::try_from(n / 2).unwrap_or(MAX_FLOWS)).max(1),
        _ => MAX_FLOWS,
    }
}

/// Answers `ShimRequest::UdpFlow`: the flow socket the app's socket on
/// `src_port` sends to instead of the overlay address `dst`.
///
/// `dst` on this node itself: `Proxy(L:dst.port)`, straight to the local
/// app, no flow. No member with that address: `Unreachable`. Otherwise the
/// pair's flow socket, `Proxy(L:Y)`, the same while the flow is open
/// (asking again keeps it alive).
pub(crate) fn answer_flow(shared: &Shared, src_port: u16, dst: SocketAddrV4) -> ShimResponse {
    if src_port == 0 || dst.port() == 0 {
        return ShimResponse::Error(format!("UDP flow with port 0 ({src_port} to {dst})"));
    }
    if *dst.ip() == shared.joined.overlay_ip {
        return ShimResponse::Proxy(SocketAddrV4::new(shared.loopback, dst.port()));
    }
    let Some(peer) = shared.membership.borrow().by_ip(*dst.ip()).map(|m| m.node_id) else {
        return ShimResponse::Unreachable;
    };
    match shared.udp.flow(FlowKey { local_port: src_port, remote: dst }, peer, Instant::now()) {
        Ok(flow) => ShimResponse::Proxy(SocketAddrV4::new(shared.loopback, flow.port)),
        Err(e) => ShimResponse::Error(e.to_string()),
    }
}

/// Answers `ShimRequest::UdpPeer`: the overlay endpoint behind the flow
/// socket on `port` (open or lingering), or `Unknown`.
pub(crate) fn answer_peer(shared: &Shared, port: u16) -> ShimResponse {
    match shared.udp.remote_of(port, Instant::now()) {
        Some(remote) => ShimResponse::Peer(remote),
        None => ShimResponse::Unknown,
    }
}

#[cfg(test)]
mod proc_tests {
    #[test]
    fn ports_are_read_from_proc_net_udp() {
        let text = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
                    \x20 12: 00000000:1451 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0 0\n\
                    \x20 40: 0100647F:9C40 0200647F:8235 01 00000000:00000000 00:00000000 00000000     0        0 1 2 0 0\n";
        assert_eq!(super::parse_proc_net_udp(text), [5201, 40000]);
        assert!(super::parse_proc_net_udp("header only\n").is_empty());
        // This very socket shows up in the live table.
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(super::bound_udp_ports().contains(&s.local_addr().unwrap().port()));
    }
}
