//! The flow table: which runtime socket carries the datagrams of which pair
//! (local app port, remote overlay endpoint).
//!
//! A flow is keyed by the pair whichever side started it, so an app's reply
//! to a datagram it received goes out through the socket that datagram came
//! from. The table is only touched to open, find and close flows; the data
//! path marks activity on the flow itself (an atomic), never under the lock.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use boxer_proto::NodeId;
use tokio::net::UdpSocket;
use tokio::task::AbortHandle;

/// A flow without traffic or shim registration for this long is closed,
/// unless the app's socket still holds its local port: a connected app
/// socket sends to its flow socket without asking again, so closing its flow
/// under it would send its next datagram to a closed port, or to another
/// flow that got the same port. The shim caches a flow answer for at most
/// 10 s, so any cached answer is long gone by then.
pub(crate) const FLOW_IDLE: Duration = Duration::from_secs(120);

/// Most flows per node (each is one socket of the runtime). Apps that use a
/// fresh source port per request (DNS clients) leave many idle flows
/// behind; the table also stays below half the process's descriptor limit
/// (Lambda: 1024), see `udp::flow_limit`.
pub(crate) const MAX_FLOWS: usize = 4096;

/// A full table makes room by closing its longest idle flow if that one has
/// been idle this long: three times the shim's 10 s answer cache, so no
/// cached answer can still point at it.
pub(crate) const FLOW_EVICT_IDLE: Duration = Duration::from_secs(30);

/// The pair a flow carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FlowKey {
    /// The app socket's port on this node.
    pub(crate) local_port: u16,
    /// The remote app's overlay address and port.
    pub(crate) remote: SocketAddrV4,
}

/// One flow: its socket on the node's loopback address and its activity.
#[derive(Debug)]
pub(crate) struct Flow {
    /// The pair.
    pub(crate) key: FlowKey,
    /// The node that has `key.remote`'s address.
    pub(crate) peer: NodeId,
    /// The flow socket: the app sends to it, and receives the peer's
    /// datagrams from it.
    pub(crate) socket: UdpSocket,
    /// The socket's port.
    pub(crate) port: u16,
    /// Address the app's datagrams last came from (0: none yet).
    app_ip: AtomicU32,
    opened: Instant,
    /// Milliseconds from `opened` to the last activity.
    last: AtomicU64,
    closed: AtomicBool,
    task: Mutex<Option<AbortHandle>>,
}

impl Flow {
    /// A flow for `key` to `peer` on `socket`, active at `now`.
    pub(crate) fn new(key: FlowKey, peer: NodeId, socket: UdpSocket, now: Instant) -> std::io::Result<Self> {
        let port = socket.local_addr()?.port();
        Ok(Self {
            key,
            peer,
            socket,
            port,
            app_ip: AtomicU32::new(0),
            opened: now,
            last: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            task: Mutex::new(None),
        })
    }

    /// Records activity at `now` (traffic or a registration).
    pub(crate) fn touch(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.opened).as_millis();
        self.last.fetch_max(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Records the loopback address the app's datagram came from; others
    /// are ignored (delivery never leaves loopback).
    pub(crate) fn app_sent_from(&self, ip: Ipv4Addr) {
        if ip.is_loopback() {
            self.app_ip.store(ip.to_bits(), Ordering::Relaxed);
        }
    }

    /// Where the peer's datagrams go: the address the app's datagrams came
    /// from, else `loopback` (the node's), on the app's port.
    ///
    /// Usually the same thing, but a wildcard-bound app socket that
    /// connected to the flow sends from 127.0.0.1 (the source the kernel
    /// picks for 127/8) and from then on accepts only datagrams addressed
    /// to 127.0.0.1.
    pub(crate) fn app_addr(&self, loopback: Ipv4Addr) -> SocketAddrV4 {
        let ip = match self.app_ip.load(Ordering::Relaxed) {
            0 => loopback,
            bits => Ipv4Addr::from_bits(bits),
        };
        SocketAddrV4::new(ip, self.key.local_port)
    }

    /// Time since the last activity, at `now`.
    pub(crate) fn idle(&self, now: Instant) -> Duration {
        let last = self.opened + Duration::from_millis(self.last.load(Ordering::Relaxed));
        now.saturating_duration_since(last)
    }

    /// True once the flow was removed from its table.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Gives the flow its task, ended when the flow closes (at once if it
    /// already did).
    pub(crate) fn set_task(&self, task: AbortHandle) {
        let mut slot = self.task.lock().expect("flow task lock");
        if self.is_closed() {
            task.abort();
        } else {
            *slot = Some(task);
        }
    }

    /// Marks the flow closed and ends its task; the socket closes when the
    /// last reference goes.
    fn close(&self) {
        let task = {
            let mut slot = self.task.lock().expect("flow task lock");
            self.closed.store(true, Ordering::Release);
            slot.take()
        };
        if let Some(task) = task {
            task.abort();
        }
    }
}

/// The table is full of flows in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many UDP flows ({0}) on this node, none idle for {FLOW_EVICT_IDLE:?}")]
pub(crate) struct TableFull(pub(crate) usize);

/// Flows by pair and by socket port.
#[derive(Debug)]
pub(crate) struct FlowTable {
    by_key: HashMap<FlowKey, Arc<Flow>>,
    by_port: HashMap<u16, Arc<Flow>>,
    limit: usize,
}

impl FlowTable {
    /// An empty table of at most `limit` flows.
    pub(crate) fn new(limit: usize) -> Self {
        Self { by_key: HashMap::new(), by_port: HashMap::new(), limit }
    }

    /// Number of flows.
    pub(crate) fn len(&self) -> usize {
        self.by_key.len()
    }

    /// The flow of a pair.
    pub(crate) fn get(&self, key: &FlowKey) -> Option<&Arc<Flow>> {
        self.by_key.get(key)
    }

    /// The flow whose socket is on `port`.
    pub(crate) fn by_port(&self, port: u16) -> Option<&Arc<Flow>> {
        self.by_port.get(&port)
    }

    /// Makes room for one more flow: nothing to do below the limit, else the
    /// longest idle flow is closed if it has been idle [`FLOW_EVICT_IDLE`]
    /// (and returned).
    pub(crate) fn make_room(&mut self, now: Instant) -> Result<Option<Arc<Flow>>, TableFull> {
        if self.by_key.len() < self.limit {
            return Ok(None);
        }
        let idlest = self.by_key.values().max_by_key(|f| f.idle(now)).filter(|f| f.idle(now) >= FLOW_EVICT_IDLE);
        let Some(key) = idlest.map(|f| f.key) else { return Err(TableFull(self.limit)) };
        Ok(self.remove(&key))
    }

    /// Adds `flow`, replacing (and closing) any flow of the same pair.
    /// Call [`FlowTable::make_room`] first.
    pub(crate) fn insert(&mut self, flow: Arc<Flow>) {
        if let Some(old) = self.remove(&flow.key) {
            old.close();
        }
        self.by_port.insert(flow.port, flow.clone());
        self.by_key.insert(flow.key, flow);
    }

    /// Removes and closes the flow of a pair.
    pub(crate) fn remove(&mut self, key: &FlowKey) -> Option<Arc<Flow>> {
        let flow = self.by_key.remove(key)?;
        if self.by_port.get(&flow.port).is_some_and(|f| Arc::ptr_eq(f, &flow)) {
            self.by_port.remove(&flow.port);
        }
        flow.close();
        Some(flow)
    }

    /// Whether a flow has been idle for [`FLOW_IDLE`] at `now`.
    pub(crate) fn any_idle(&self, now: Instant) -> bool {
        self.by_key.values().any(|f| f.idle(now) >= FLOW_IDLE)
    }

    /// Removes and closes every flow idle for [`FLOW_IDLE`] at `now` whose
    /// app port is no longer in use (`in_use`); idle flows whose app socket
    /// still exists are kept and marked active.
    pub(crate) fn expire(&mut self, now: Instant, in_use: impl Fn(u16) -> bool) -> Vec<Arc<Flow>> {
        for f in self.by_key.values().filter(|f| f.idle(now) >= FLOW_IDLE && in_use(f.key.local_port)) {
            f.touch(now);
        }
        self.remove_where(|f| f.idle(now) >= FLOW_IDLE)
    }

    /// Removes and closes every flow to `peer`.
    pub(crate) fn remove_peer(&mut self, peer: NodeId) -> Vec<Arc<Flow>> {
        self.remove_where(|f| f.peer == peer)
    }

    /// Removes and closes every flow.
    pub(crate) fn clear(&mut self) -> Vec<Arc<Flow>> {
        self.remove_where(|_| true)
    }

    fn remove_where(&mut self, doomed: impl Fn(&Flow) -> bool) -> Vec<Arc<Flow>> {
        let keys: Vec<FlowKey> = self.by_key.values().filter(|f| doomed(f)).map(|f| f.key).collect();
        keys.iter().filter_map(|k| self.remove(k)).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn key(local_port: u16, remote_port: u16) -> FlowKey {
        FlowKey { local_port, remote: SocketAddrV4::new(Ipv4Addr::new(100, 96, 0, 2), remote_port) }
    }

    async fn flow(key: FlowKey, now: Instant) -> Arc<Flow> {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind");
        Arc::new(Flow::new(key, NodeId(2), socket, now).expect("flow"))
    }

    #[tokio::test]
    async fn same_pair_same_flow() {
        let now = Instant::now();
        let mut table = FlowTable::new(8);
        let f = flow(key(5000, 53), now).await;
        table.insert(f.clone());
        let other = flow(key(5000, 54), now).await;
        table.insert(other.clone());
        assert!(Arc::ptr_eq(table.get(&key(5000, 53)).expect("found"), &f));
        assert!(Arc::ptr_eq(table.by_port(f.port).expect("by port"), &f));
        assert!(Arc::ptr_eq(table.get(&key(5000, 54)).expect("found"), &other));
        assert_ne!(f.port, other.port);
        assert_eq!(table.len(), 2);
        assert!(table.get(&key(5001, 53)).is_none());
    }

    #[tokio::test]
    async fn delivery_goes_where_the_app_sends_from() {
        let f = flow(key(5000, 53), Instant::now()).await;
        let node = Ipv4Addr::new(127, 100, 0, 1);
        assert_eq!(f.app_addr(node), SocketAddrV4::new(node, 5000));
        f.app_sent_from(Ipv4Addr::LOCALHOST);
        assert_eq!(f.app_addr(node), SocketAddrV4::new(Ipv4Addr::LOCALHOST, 5000));
        f.app_sent_from(Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(f.app_addr(node), SocketAddrV4::new(Ipv4Addr::LOCALHOST, 5000), "only loopback sources count");
        f.app_sent_from(node);
        assert_eq!(f.app_addr(node), SocketAddrV4::new(node, 5000));
    }

    #[tokio::test]
    async fn idle_flows_expire_and_activity_keeps_them() {
        let start = Instant::now();
        let mut table = FlowTable::new(8);
        let busy = flow(key(1, 1), start).await;
        let quiet = flow(key(2, 2), start).await;
        table.insert(busy.clone());
        table.insert(quiet.clone());
        busy.touch(start + FLOW_IDLE / 2);
        // An older activity report does not move the clock back.
        busy.touch(start);
        assert!(table.expire(start + FLOW_IDLE - Duration::from_millis(1), |_| false).is_empty());
        // At FLOW_IDLE `quiet` is idle, but its app socket (port 2) still exists: kept.
        assert!(table.expire(start + FLOW_IDLE, |port| port == 2).is_empty());
        // Half a period later `busy` is idle too, and its socket is gone.
        let gone = table.expire(start + FLOW_IDLE + FLOW_IDLE / 2, |_| false);
        assert_eq!(gone.len(), 1);
        assert!(Arc::ptr_eq(&gone[0], &busy));
        assert!(busy.is_closed() && !quiet.is_closed());
        assert!(table.get(&busy.key).is_none() && table.by_port(busy.port).is_none());
        assert_eq!(table.expire(start + 2 * FLOW_IDLE, |_| false).len(), 1);
        assert_eq!(table.len(), 0);
    }

    #[tokio::test]
    async fn closing_ends_the_task() {
        let now = Instant::now();
        let mut table = FlowTable::new(8);
        let f = flow(key(1, 1), now).await;
        let task = tokio::spawn(std::future::pending::<()>());
        f.set_task(task.abort_handle());
        table.insert(f.clone());
        table.remove_peer(NodeId(2));
        assert!(task.await.expect_err("aborted").is_cancelled());
        // A task given to an already closed flow ends at once.
        let late = tokio::spawn(std::future::pending::<()>());
        f.set_task(late.abort_handle());
        assert!(late.await.expect_err("aborted").is_cancelled());
    }

    #[tokio::test]
    async fn cap_refuses_busy_flows_and_evicts_idle_ones() {
        let start = Instant::now();
        let mut table = FlowTable::new(2);
        let a = flow(key(1, 1), start).await;
        let b = flow(key(2, 2), start).await;
        assert!(table.make_room(start).expect("room").is_none());
        table.insert(a.clone());
        table.insert(b.clone());
        assert_eq!(table.make_room(start + FLOW_EVICT_IDLE / 2).map(|_| ()), Err(TableFull(2)));
        a.touch(start + FLOW_EVICT_IDLE);
        let evicted = table.make_room(start + FLOW_EVICT_IDLE).expect("b is idle long enough").expect("evicted");
        assert!(Arc::ptr_eq(&evicted, &b));
        assert!(b.is_closed());
        assert_eq!(table.len(), 1);
        assert_eq!(table.make_room(start + FLOW_EVICT_IDLE).map(|e| e.is_none()), Ok(true));
    }

    #[tokio::test]
    async fn replacing_a_pair_closes_the_old_flow() {
        let now = Instant::now();
        let mut table = FlowTable::new(4);
        let old = flow(key(1, 1), now).await;
        let new = flow(key(1, 1), now).await;
        table.insert(old.clone());
        table.insert(new.clone());
        assert!(old.is_closed());
        assert!(table.by_port(old.port).is_none());
        assert_eq!(table.len(), 1);
        assert_eq!(table.clear().len(), 1);
        assert!(new.is_closed());
    }
}
