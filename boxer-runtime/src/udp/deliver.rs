//! Datagrams from peers: reassembled, then handed to the local app from the
//! flow socket of their pair (opened on demand).
//!
//! A peer's datagram opens a flow (a socket and a task) only when a local
//! UDP socket holds its destination port, and only within the peer's share
//! of the table ([`super::flows::PEER_FLOW_SHARE`]): otherwise it is
//! dropped, as UDP drops a datagram nothing listens for, and a member
//! cannot fill the table by spraying ports.
//!
//! One task takes every peer's datagrams. It owns the reassembly state and a
//! cache of the flows it delivers to, so a datagram costs no lock of the
//! node's tables unless it opens a new flow.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boxer_net::peers::InboundDatagram;
use boxer_proto::NodeId;
use boxer_proto::peer::{UDP_HEADER_LEN, UdpHeader};
use tokio::sync::mpsc;
use tracing::{debug, trace};

use super::flows::{Flow, FlowKey};
use super::fragment::{Limits, Push, Reassembler};
use crate::node::Shared;

/// Datagrams from peers waiting for this task (the channel the peer table
/// fills; full means dropped). 1024 is ~120 ms of a 50 Mbit/s stream of
/// 1460-byte datagrams (two QUIC datagrams each); the task shares the node's
/// thread with the readers that fill it, so it seldom holds more than a few.
pub(crate) const INBOUND_BUFFER: usize = 1024;

/// How often timed-out partial datagrams and idle flows are dropped: a
/// fraction of the 2 s reassembly timeout, cheap (a scan of at most a few
/// thousand entries).
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

/// How long a port found without a local socket refuses peers' datagrams
/// without looking again. A flood to a closed port then costs one read of
/// `/proc/net/udp{,6}` per second instead of one per datagram; an app
/// that binds the port meanwhile misses at most a second of datagrams, as
/// if it had started that much later.
const UNBOUND_TTL: Duration = Duration::from_secs(1);

/// A reading of the bound ports younger than this answers for any port
/// without reading again, so a flood spread over many closed ports costs
/// at most ten reads a second (each a line per socket of the node, its
/// flow sockets included: up to a few hundred KiB).
const PORTS_REREAD: Duration = Duration::from_millis(100);

/// Delivers peers' datagrams until the channel closes.
pub(crate) async fn serve(shared: Arc<Shared>, mut datagrams: mpsc::Receiver<InboundDatagram>) {
    let mut demux = Demux {
        reassembler: Reassembler::new(Limits::default()),
        flows: HashMap::new(),
        ips: HashMap::new(),
        ports: PortProbe::default(),
    };
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            received = datagrams.recv() => match received {
                Some(d) => demux.deliver(&shared, d),
                None => return,
            },
            _ = sweep.tick() => demux.sweep(&shared),
        }
    }
}

/// State of the delivering task.
struct Demux {
    reassembler: Reassembler<NodeId>,
    /// Flows delivered to recently; closed ones are dropped on sight and at
    /// each sweep.
    flows: HashMap<FlowKey, Arc<Flow>>,
    /// Overlay address of each peer (fixed for a node id).
    ips: HashMap<NodeId, Ipv4Addr>,
    /// Which local ports have a socket, for datagrams that would open a
    /// flow.
    ports: PortProbe,
}

impl Demux {
    fn deliver(&mut self, shared: &Shared, datagram: InboundDatagram) {
        let from = datagram.from;
        let header = match UdpHeader::decode(&datagram.data) {
            Ok(h) => h,
            Err(e) => return debug!(peer = %from, "dropped a datagram: {e}"),
        };
        let now = Instant::now();
        let fragment = datagram.data.slice(UDP_HEADER_LEN..);
        let payload = match self.reassembler.push(from, header, fragment, now) {
            Push::Complete(p) => p,
            Push::Pending => return,
            Push::Rejected(why) => return debug!(peer = %from, id = header.id, "dropped a fragment: {why}"),
        };
        if header.src_port == 0 || header.dst_port == 0 {
            return debug!(peer = %from, "dropped a datagram with port 0");
        }
        let Some(flow) = self.flow(shared, from, header, now) else { return };
        flow.touch(now);
        let to = SocketAddr::V4(flow.app_addr(shared.loopback));
        // A direct non-blocking send: tokio's `try_send_to` reports
        // `WouldBlock` until the socket was once polled writable, which a
        // fresh flow socket never was. On loopback the send completes or
        // fails at once; only a full receive buffer makes it `WouldBlock`.
        if let Err(e) = socket2::SockRef::from(&flow.socket).send_to(&payload, &to.into()) {
            // Nothing bound there, or its buffer is full: lost, as UDP may be.
            debug!(port = header.dst_port, len = payload.len(), "datagram from {} lost: {e}", flow.key.remote);
        }
    }

    /// The flow for a datagram from `from` with `header`: cached, or found
    /// or opened in the node's table.
    fn flow(&mut self, shared: &Shared, from: NodeId, header: UdpHeader, now: Instant) -> Option<Arc<Flow>> {
        if let Some(&ip) = self.ips.get(&from) {
            let key = FlowKey { local_port: header.dst_port, remote: SocketAddrV4::new(ip, header.src_port) };
            match self.flows.get(&key) {
                Some(flow) if !flow.is_closed() => return Some(flow.clone()),
                Some(_) => {
                    self.flows.remove(&key);
                }
                None => {}
            }
        }
        // Not cached: the sender must still be a member to get a flow.
        let Some(ip) = shared.membership.borrow().get(from).map(|m| m.overlay_ip) else {
            self.ips.remove(&from);
            self.reassembler.forget(from);
            debug!(peer = %from, "dropped a datagram: the sender is no longer a member");
            return None;
        };
        self.ips.insert(from, ip);
        let key = FlowKey { local_port: header.dst_port, remote: SocketAddrV4::new(ip, header.src_port) };
        if let Some(flow) = shared.udp.existing(&key, now) {
            self.flows.insert(key, flow.clone());
            return Some(flow);
        }
        // A new flow: only for a port an app listens on.
        if !self.ports.is_bound(key.local_port, now, super::bound_udp_ports) {
            debug!(port = key.local_port, remote = %key.remote, "dropped a datagram: no local UDP socket on its port");
            return None;
        }
        match shared.udp.inbound_flow(key, from, now) {
            Ok(flow) => {
                self.flows.insert(key, flow.clone());
                Some(flow)
            }
            Err(e) => {
                debug!(port = header.dst_port, remote = %key.remote, "dropped a datagram: {e}");
                None
            }
        }
    }

    fn sweep(&mut self, shared: &Shared) {
        let now = Instant::now();
        let expired = self.reassembler.expire(now);
        if expired > 0 {
            debug!(expired, "incomplete datagrams timed out");
        }
        trace!(held = self.reassembler.held(), partials = self.reassembler.partials(), "reassembly");
        shared.udp.expire(now);
        self.flows.retain(|_, f| !f.is_closed());
        self.ports.sweep(now);
    }
}

/// Which local ports have a UDP socket, read from the system on demand with
/// the limits of [`UNBOUND_TTL`] and [`PORTS_REREAD`]; sans-IO: the reading
/// is passed in.
#[derive(Debug, Default)]
struct PortProbe {
    /// The last reading and when it was taken.
    reading: Option<(Instant, HashSet<u16>)>,
    /// Ports found without a socket, and the time of that reading.
    unbound: HashMap<u16, Instant>,
}

impl PortProbe {
    /// Whether a socket holds `port` at `now`, calling `read` for the set
    /// of bound ports unless a recent answer serves.
    fn is_bound(&mut self, port: u16, now: Instant, read: impl FnOnce() -> HashSet<u16>) -> bool {
        if self.unbound.get(&port).is_some_and(|&at| now.saturating_duration_since(at) < UNBOUND_TTL) {
            return false;
        }
        let fresh = self.reading.as_ref().is_some_and(|(at, _)| now.saturating_duration_since(*at) < PORTS_REREAD);
        if !fresh {
            self.reading = Some((now, read()));
        }
        let Some((at, ports)) = &self.reading else { return false };
        let bound = ports.contains(&port);
        if !bound {
            self.unbound.insert(port, *at);
        }
        bound
    }

    /// Forgets the answers too old to be used at `now`.
    fn sweep(&mut self, now: Instant) {
        self.unbound.retain(|_, at| now.saturating_duration_since(*at) < UNBOUND_TTL);
        if self.reading.as_ref().is_some_and(|(at, _)| now.saturating_duration_since(*at) >= PORTS_REREAD) {
            self.reading = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn closed_ports_are_read_once_per_ttl() {
        let start = Instant::now();
        let mut probe = PortProbe::default();
        let reads = Cell::new(0);
        let read = |ports: &[u16]| {
            reads.set(reads.get() + 1);
            ports.iter().copied().collect::<HashSet<u16>>()
        };
        assert!(probe.is_bound(53, start, || read(&[53])));
        assert!(!probe.is_bound(54, start, || read(&[53])));
        assert_eq!(reads.get(), 1, "one reading serves every port for a while");
        // Past PORTS_REREAD a bound port is read again; a closed one is not,
        // even if an app bound it meanwhile, until UNBOUND_TTL.
        let later = start + PORTS_REREAD;
        assert!(!probe.is_bound(54, later, || read(&[53, 54])));
        assert_eq!(reads.get(), 1);
        assert!(probe.is_bound(53, later, || read(&[53, 54])));
        assert_eq!(reads.get(), 2);
        // A flood of closed ports costs at most one reading per PORTS_REREAD.
        for port in 1000..2000 {
            assert!(!probe.is_bound(port, later, || read(&[53, 54])));
        }
        assert_eq!(reads.get(), 2);
        probe.sweep(start + UNBOUND_TTL);
        assert!(!probe.unbound.contains_key(&54) && probe.reading.is_none());
        assert!(probe.is_bound(54, start + UNBOUND_TTL, || read(&[53, 54])));
        assert_eq!(reads.get(), 3);
    }
}
