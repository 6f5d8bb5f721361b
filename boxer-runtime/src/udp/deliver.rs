//! Datagrams from peers: reassembled, then handed to the local app from the
//! flow socket of their pair (opened on demand).
//!
//! One task takes every peer's datagrams. It owns the reassembly state and a
//! cache of the flows it delivers to, so a datagram costs no lock of the
//! node's tables unless it opens a new flow.

use std::collections::HashMap;
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

/// Delivers peers' datagrams until the channel closes.
pub(crate) async fn serve(shared: Arc<Shared>, mut datagrams: mpsc::Receiver<InboundDatagram>) {
    let mut demux =
        Demux { reassembler: Reassembler::new(Limits::default()), flows: HashMap::new(), ips: HashMap::new() };
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
        match shared.udp.flow(key, from, now) {
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
    }
}
