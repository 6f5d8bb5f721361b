//! The flow table: which runtime socket carries the datagrams of which pair
//! (local app port, remote overlay endpoint).
//!
//! A flow is keyed by the pair whichever side started it, so an app's reply
//! to a datagram it received goes out through the socket that datagram came
//! from. The table is only touched to open, find and close flows; the data
//! path marks activity on the flow itself (an atomic), never under the lock.
//!
//! A closed flow *lingers* ([`FLOW_LINGER`]): its task is stopped and its
//! pair is free for a new flow, but its socket stays bound and its port
//! still names its remote endpoint, so nothing the shim may still hold
//! about that port turns into a wrong answer. The table is sans-IO apart
//! from the sockets it holds: every call takes the current time.

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

/// How long a closed flow keeps its socket bound and keeps answering which
/// remote endpoint its port stands for.
///
/// The shim caches "flow port Y -> remote endpoint" and "(app port, dst)
/// -> L:Y" for up to 10 s (`CACHE_TTL` in the shim's `flow_cache.rs`), and a
/// datagram the flow delivered may still wait in the app's receive buffer.
/// Were Y released at once, the kernel could give it to a new flow within
/// those 10 s: a cached answer would then send the app's datagrams into
/// the wrong flow, or label the new flow's datagrams with the old remote.
/// 15 s outlives every cached answer given before the close with margin; an
/// answer given *during* the linger extends it to 15 s from then (see
/// [`FlowTable::peer_of`]).
pub(crate) const FLOW_LINGER: Duration = Duration::from_secs(15);

/// Most flows per node (each is one socket of the runtime). Apps that use a
/// fresh source port per request (DNS clients) leave many idle flows
/// behind; the table also stays below half the process's descriptor limit
/// (Lambda: 1024), see `udp::flow_limit`. Lingering flows count: they hold
/// their socket.
pub(crate) const MAX_FLOWS: usize = 4096;

/// A full table frees the socket of a flow (open or lingering) that nothing
/// can name any more: idle this long and its app socket gone. Three times
/// the shim's 10 s answer cache, and every answer marks the flow active, so
/// no cached answer points at it; with the app socket gone no datagram from
/// it waits in a receive buffer either. Such a flow is closed without
/// lingering (the linger would protect nothing and would keep the socket
/// the table needs).
pub(crate) const FLOW_EVICT_IDLE: Duration = Duration::from_secs(30);

/// One peer's datagrams may open at most 1/`PEER_FLOW_SHARE` of the table
/// (1024 flows with [`MAX_FLOWS`]), so one member sending from many ports
/// cannot take every flow of the node. Flows the local app asks for do not
/// count.
pub(crate) const PEER_FLOW_SHARE: usize = 4;

/// Who made a flow open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opener {
    /// The local app, through the shim (`UdpFlow`).
    App,
    /// A peer's datagram to a local app's port.
    Peer,
}

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
    /// Who opened it (for the per-peer quota).
    pub(crate) opener: Opener,
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
    /// A flow for `key` to `peer`, opened by `opener`, on `socket`, active
    /// at `now`.
    pub(crate) fn new(
        key: FlowKey,
        peer: NodeId,
        opener: Opener,
        socket: UdpSocket,
        now: Instant,
    ) -> std::io::Result<Self> {
        let port = socket.local_addr()?.port();
        Ok(Self {
            key,
            peer,
            opener,
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

    /// True once the flow was closed (it may still linger: its socket
    /// stays bound, its task is stopped).
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

    /// The flow's task, for tests that end it behind the flow's back.
    #[cfg(test)]
    pub(crate) fn task(&self) -> Option<AbortHandle> {
        self.task.lock().expect("flow task lock").clone()
    }

    /// Marks the flow closed and ends its task; the socket closes when the
    /// last reference goes (the table keeps one while the flow lingers).
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

/// The table holds as many flow sockets as it may, none of which can be
/// freed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many UDP flows ({0}) on this node: none both idle for {FLOW_EVICT_IDLE:?} and without its app socket")]
pub(crate) struct TableFull(pub(crate) usize);

/// A peer's datagrams already opened their share of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{peer} already opened {flows} UDP flows on this node")]
pub(crate) struct PeerQuota {
    /// The peer.
    pub(crate) peer: NodeId,
    /// Flows its datagrams opened.
    pub(crate) flows: usize,
}

/// Open flows by pair, open and lingering flows by socket port.
#[derive(Debug)]
pub(crate) struct FlowTable {
    /// Open flows.
    by_key: HashMap<FlowKey, Arc<Flow>>,
    /// Every flow that holds a socket: open and lingering.
    by_port: HashMap<u16, Arc<Flow>>,
    /// Lingering flows' ports and when their linger ends.
    lingering: HashMap<u16, Instant>,
    /// Open flows opened by each peer's datagrams.
    by_peer: HashMap<NodeId, usize>,
    /// Most sockets (open and lingering flows).
    limit: usize,
    /// Most open flows one peer's datagrams may have opened.
    peer_quota: usize,
}

impl FlowTable {
    /// An empty table of at most `limit` flow sockets.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            by_key: HashMap::new(),
            by_port: HashMap::new(),
            lingering: HashMap::new(),
            by_peer: HashMap::new(),
            limit,
            peer_quota: (limit / PEER_FLOW_SHARE).max(1),
        }
    }

    /// Number of open flows.
    pub(crate) fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Number of flow sockets: open and lingering flows.
    pub(crate) fn sockets(&self) -> usize {
        self.by_port.len()
    }

    /// The open flow of a pair.
    pub(crate) fn get(&self, key: &FlowKey) -> Option<&Arc<Flow>> {
        self.by_key.get(key)
    }

    /// The flow, open or lingering, whose socket is on `port`.
    pub(crate) fn by_port(&self, port: u16) -> Option<&Arc<Flow>> {
        self.by_port.get(&port)
    }

    /// The remote endpoint `port` stands for (a flow's, open or lingering),
    /// for an answer to the shim given at `now`: the flow is marked active,
    /// and a lingering one lingers [`FLOW_LINGER`] from `now` at least, so
    /// the shim's cached copy of this answer expires before the port can be
    /// reused.
    pub(crate) fn peer_of(&mut self, port: u16, now: Instant) -> Option<SocketAddrV4> {
        let flow = self.by_port.get(&port)?;
        flow.touch(now);
        if let Some(until) = self.lingering.get_mut(&port) {
            *until = (*until).max(now + FLOW_LINGER);
        }
        Some(flow.key.remote)
    }

    /// Whether one more flow needs a socket freed first, at `now` (lingers
    /// over by then end first).
    pub(crate) fn is_full(&mut self, now: Instant) -> bool {
        self.sweep(now);
        self.sockets() >= self.limit
    }

    /// Makes room for one more flow at `now`: nothing to do below the limit
    /// (once lingers over by `now` ended); else the socket of a flow nothing
    /// can name any more is freed (and the flow returned): idle for
    /// [`FLOW_EVICT_IDLE`] and its app port not `in_use`, lingering ones
    /// first, then the idlest. Such a flow is closed without lingering (see
    /// [`FLOW_EVICT_IDLE`]). `in_use` is only called when the table is full.
    pub(crate) fn make_room(
        &mut self,
        now: Instant,
        in_use: impl Fn(u16) -> bool,
    ) -> Result<Option<Arc<Flow>>, TableFull> {
        if !self.is_full(now) {
            return Ok(None);
        }
        let port = self
            .by_port
            .values()
            .filter(|f| f.idle(now) >= FLOW_EVICT_IDLE && !in_use(f.key.local_port))
            .max_by_key(|f| (f.is_closed(), f.idle(now)))
            .map(|f| f.port);
        let Some(port) = port else { return Err(TableFull(self.limit)) };
        Ok(self.discard(port))
    }

    /// Whether `peer`'s datagrams may open one more flow.
    pub(crate) fn check_quota(&self, peer: NodeId) -> Result<(), PeerQuota> {
        let flows = self.by_peer.get(&peer).copied().unwrap_or(0);
        if flows >= self.peer_quota { Err(PeerQuota { peer, flows }) } else { Ok(()) }
    }

    /// Adds `flow`, closing any open flow of the same pair at `now` (it
    /// lingers). Call [`FlowTable::make_room`] (and for a peer's flow
    /// [`FlowTable::check_quota`]) first.
    pub(crate) fn insert(&mut self, flow: Arc<Flow>, now: Instant) {
        self.close(&flow.key, now);
        // A socket's port is unique while it is bound; this is only a guard
        // against a stale linger deadline ending the new flow's entry.
        self.lingering.remove(&flow.port);
        if flow.opener == Opener::Peer {
            *self.by_peer.entry(flow.peer).or_default() += 1;
        }
        self.by_port.insert(flow.port, flow.clone());
        self.by_key.insert(flow.key, flow);
    }

    /// Closes the open flow of a pair at `now`: its task ends, its pair is
    /// free for a new flow, and it lingers for [`FLOW_LINGER`].
    pub(crate) fn close(&mut self, key: &FlowKey, now: Instant) -> Option<Arc<Flow>> {
        let flow = self.unlink(key)?;
        if self.by_port.get(&flow.port).is_some_and(|f| Arc::ptr_eq(f, &flow)) {
            self.lingering.insert(flow.port, now + FLOW_LINGER);
        }
        Some(flow)
    }

    /// Closes `flow` at `now` if it is the open flow of its pair (it may
    /// have been replaced or closed meanwhile); true if it was.
    pub(crate) fn close_flow(&mut self, flow: &Arc<Flow>, now: Instant) -> bool {
        let current = self.by_key.get(&flow.key).is_some_and(|f| Arc::ptr_eq(f, flow));
        current && self.close(&flow.key, now).is_some()
    }

    /// Ends the lingers over at `now`: those sockets are released. Returns
    /// their flows.
    pub(crate) fn sweep(&mut self, now: Instant) -> Vec<Arc<Flow>> {
        let over: Vec<u16> = self.lingering.iter().filter(|&(_, &until)| until <= now).map(|(&p, _)| p).collect();
        over.into_iter().filter_map(|port| self.discard(port)).collect()
    }

    /// Whether an open flow has been idle for [`FLOW_IDLE`] at `now`.
    pub(crate) fn any_idle(&self, now: Instant) -> bool {
        self.by_key.values().any(|f| f.idle(now) >= FLOW_IDLE)
    }

    /// Closes (to linger) every open flow idle for [`FLOW_IDLE`] at `now`
    /// whose app port is no longer in use (`in_use`); idle flows whose app
    /// socket still exists are kept and marked active.
    pub(crate) fn expire(&mut self, now: Instant, in_use: impl Fn(u16) -> bool) -> Vec<Arc<Flow>> {
        for f in self.by_key.values().filter(|f| f.idle(now) >= FLOW_IDLE && in_use(f.key.local_port)) {
            f.touch(now);
        }
        self.close_where(now, |f| f.idle(now) >= FLOW_IDLE)
    }

    /// Closes (to linger) every open flow to `peer`.
    pub(crate) fn remove_peer(&mut self, peer: NodeId, now: Instant) -> Vec<Arc<Flow>> {
        self.close_where(now, |f| f.peer == peer)
    }

    /// Closes every flow and releases every socket at once, lingering ones
    /// included (the node stops: nothing will ask about them again).
    pub(crate) fn clear(&mut self) -> Vec<Arc<Flow>> {
        let ports: Vec<u16> = self.by_port.keys().copied().collect();
        ports.into_iter().filter_map(|port| self.discard(port)).collect()
    }

    fn close_where(&mut self, now: Instant, doomed: impl Fn(&Flow) -> bool) -> Vec<Arc<Flow>> {
        let keys: Vec<FlowKey> = self.by_key.values().filter(|f| doomed(f)).map(|f| f.key).collect();
        keys.iter().filter_map(|k| self.close(k, now)).collect()
    }

    /// Takes the open flow of a pair out of the pair map and the quota, and
    /// closes it; its socket stays in `by_port`.
    fn unlink(&mut self, key: &FlowKey) -> Option<Arc<Flow>> {
        let flow = self.by_key.remove(key)?;
        if flow.opener == Opener::Peer
            && let Some(n) = self.by_peer.get_mut(&flow.peer)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.by_peer.remove(&flow.peer);
            }
        }
        flow.close();
        Some(flow)
    }

    /// Forgets the flow on `port` entirely, open or lingering: closed, and
    /// its socket released once the last other reference goes.
    fn discard(&mut self, port: u16) -> Option<Arc<Flow>> {
        let flow = self.by_port.remove(&port)?;
        self.lingering.remove(&port);
        if self.by_key.get(&flow.key).is_some_and(|f| Arc::ptr_eq(f, &flow)) {
            self.unlink(&flow.key);
        }
        flow.close();
        Some(flow)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn key(local_port: u16, remote_port: u16) -> FlowKey {
        FlowKey { local_port, remote: SocketAddrV4::new(Ipv4Addr::new(100, 96, 0, 2), remote_port) }
    }

    async fn opened_by(key: FlowKey, peer: NodeId, opener: Opener, now: Instant) -> Arc<Flow> {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind");
        Arc::new(Flow::new(key, peer, opener, socket, now).expect("flow"))
    }

    async fn flow(key: FlowKey, now: Instant) -> Arc<Flow> {
        opened_by(key, NodeId(2), Opener::App, now).await
    }

    /// Whether the flow's socket is still bound: its port cannot be taken.
    fn port_held(port: u16) -> bool {
        std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_err()
    }

    #[tokio::test]
    async fn same_pair_same_flow() {
        let now = Instant::now();
        let mut table = FlowTable::new(8);
        let f = flow(key(5000, 53), now).await;
        table.insert(f.clone(), now);
        let other = flow(key(5000, 54), now).await;
        table.insert(other.clone(), now);
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
        table.insert(busy.clone(), start);
        table.insert(quiet.clone(), start);
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
        // Closed, but lingering: the pair is free, the port still answers.
        assert!(table.get(&busy.key).is_none());
        assert!(Arc::ptr_eq(table.by_port(busy.port).expect("lingers"), &busy));
        assert_eq!(table.expire(start + 2 * FLOW_IDLE, |_| false).len(), 1);
        assert_eq!(table.len(), 0);
        table.sweep(start + 2 * FLOW_IDLE + FLOW_LINGER);
        assert_eq!(table.sockets(), 0);
    }

    #[tokio::test]
    async fn closed_flows_linger_then_release_their_port() {
        let start = Instant::now();
        let mut table = FlowTable::new(8);
        let f = flow(key(1, 1), start).await;
        let task = tokio::spawn(std::future::pending::<()>());
        f.set_task(task.abort_handle());
        table.insert(f.clone(), start);
        let (port, remote) = (f.port, f.key.remote);
        assert_eq!(table.remove_peer(NodeId(2), start).len(), 1);
        // The task stops at once; the pair is free.
        assert!(task.await.expect_err("aborted").is_cancelled());
        assert!(f.is_closed());
        assert!(table.get(&f.key).is_none());
        assert_eq!(table.len(), 0);
        // The socket stays bound and its port still names its remote.
        drop(f);
        assert!(port_held(port));
        assert_eq!(table.peer_of(port, start), Some(remote));
        // A new flow for the same pair is a new socket.
        let again = flow(key(1, 1), start).await;
        table.insert(again.clone(), start);
        assert_ne!(again.port, port);
        assert_eq!(table.sockets(), 2);
        // An answer late in the linger extends it past that answer's cache life.
        let late = start + FLOW_LINGER - Duration::from_secs(1);
        assert_eq!(table.peer_of(port, late), Some(remote));
        assert!(table.sweep(start + FLOW_LINGER).is_empty());
        assert!(port_held(port));
        let released = table.sweep(late + FLOW_LINGER);
        assert_eq!(released.len(), 1);
        drop(released);
        assert_eq!(table.peer_of(port, late + FLOW_LINGER), None);
        assert!(!port_held(port), "the socket is closed after the linger");
        assert!(Arc::ptr_eq(table.get(&key(1, 1)).expect("new flow"), &again));
    }

    #[tokio::test]
    async fn closing_ends_the_task() {
        let now = Instant::now();
        let mut table = FlowTable::new(8);
        let f = flow(key(1, 1), now).await;
        let task = tokio::spawn(std::future::pending::<()>());
        f.set_task(task.abort_handle());
        table.insert(f.clone(), now);
        table.remove_peer(NodeId(2), now);
        assert!(task.await.expect_err("aborted").is_cancelled());
        // A task given to an already closed flow ends at once.
        let late = tokio::spawn(std::future::pending::<()>());
        f.set_task(late.abort_handle());
        assert!(late.await.expect_err("aborted").is_cancelled());
    }

    #[tokio::test]
    async fn a_flow_whose_task_ended_is_closed_once() {
        let now = Instant::now();
        let mut table = FlowTable::new(8);
        let old = flow(key(1, 1), now).await;
        table.insert(old.clone(), now);
        let new = flow(key(1, 1), now).await;
        table.insert(new.clone(), now);
        // The replaced flow's task ending does not close its successor.
        assert!(!table.close_flow(&old, now));
        assert!(!new.is_closed());
        assert!(table.close_flow(&new, now));
        assert!(new.is_closed() && table.get(&new.key).is_none());
        assert!(table.by_port(new.port).is_some(), "it lingers like any closed flow");
        assert!(!table.close_flow(&new, now));
    }

    #[tokio::test]
    async fn cap_refuses_busy_flows_and_evicts_idle_ones() {
        let start = Instant::now();
        let mut table = FlowTable::new(2);
        let a = flow(key(1, 1), start).await;
        let b = flow(key(2, 2), start).await;
        assert!(table.make_room(start, |_| unreachable!("not full")).expect("room").is_none());
        table.insert(a.clone(), start);
        table.insert(b.clone(), start);
        assert_eq!(table.make_room(start + FLOW_EVICT_IDLE / 2, |_| false).map(|_| ()), Err(TableFull(2)));
        a.touch(start + FLOW_EVICT_IDLE);
        let evicted = table.make_room(start + FLOW_EVICT_IDLE, |_| false).expect("b is idle").expect("evicted");
        assert!(Arc::ptr_eq(&evicted, &b));
        // Evicted without lingering: nothing can name it any more.
        assert!(b.is_closed() && table.by_port(b.port).is_none());
        assert_eq!((table.len(), table.sockets()), (1, 1));
        assert_eq!(table.make_room(start + FLOW_EVICT_IDLE, |_| false).map(|e| e.is_none()), Ok(true));
    }

    #[tokio::test]
    async fn eviction_spares_flows_whose_app_socket_exists() {
        let start = Instant::now();
        let mut table = FlowTable::new(2);
        let a = flow(key(1, 1), start).await;
        let b = flow(key(2, 2), start).await;
        table.insert(a.clone(), start);
        table.insert(b.clone(), start);
        let later = start + 2 * FLOW_EVICT_IDLE;
        // Both idle, both app sockets still there: refused.
        assert_eq!(table.make_room(later, |_| true).map(|_| ()), Err(TableFull(2)));
        assert!(!a.is_closed() && !b.is_closed());
        // Only port 2's socket is gone: b goes, though a is as idle.
        let evicted = table.make_room(later, |port| port == 1).expect("room").expect("evicted");
        assert!(Arc::ptr_eq(&evicted, &b));
        assert!(!a.is_closed());
    }

    #[tokio::test]
    async fn lingering_flows_hold_their_slot_until_nothing_can_name_them() {
        let start = Instant::now();
        let mut table = FlowTable::new(2);
        let a = flow(key(1, 1), start).await;
        let b = flow(key(2, 2), start).await;
        table.insert(a.clone(), start);
        table.insert(b.clone(), start);
        // b closes while in use: it lingers and keeps its socket (and slot).
        table.close(&b.key, start);
        assert!(table.is_full(start));
        assert_eq!(table.make_room(start, |_| false).map(|_| ()), Err(TableFull(2)));
        // Its linger over, the slot is free again.
        assert!(!table.is_full(start + FLOW_LINGER));
        assert!(table.by_port(b.port).is_none());
        // A lingering flow that went quiet long ago is freed before an open one.
        let c = flow(key(3, 3), start).await;
        table.insert(c.clone(), start);
        let quiet = start + FLOW_EVICT_IDLE;
        table.close(&c.key, quiet - FLOW_LINGER / 2);
        let freed = table.make_room(quiet, |_| false).expect("room").expect("freed");
        assert!(Arc::ptr_eq(&freed, &c));
        assert!(!a.is_closed());
    }

    #[tokio::test]
    async fn a_peer_opens_at_most_its_share() {
        let now = Instant::now();
        let mut table = FlowTable::new(2 * PEER_FLOW_SHARE);
        let (greedy, other) = (NodeId(7), NodeId(8));
        for port in 1..=2 {
            assert_eq!(table.check_quota(greedy), Ok(()));
            table.insert(opened_by(key(port, port), greedy, Opener::Peer, now).await, now);
        }
        assert_eq!(table.check_quota(greedy), Err(PeerQuota { peer: greedy, flows: 2 }));
        assert_eq!(table.check_quota(other), Ok(()));
        // Flows the app opened to that peer do not count.
        table.insert(opened_by(key(9, 9), greedy, Opener::App, now).await, now);
        assert_eq!(table.check_quota(greedy), Err(PeerQuota { peer: greedy, flows: 2 }));
        // A closed flow gives its share back.
        table.close(&key(1, 1), now);
        assert_eq!(table.check_quota(greedy), Ok(()));
        // A tiny table still lets each peer open one.
        assert_eq!(FlowTable::new(1).check_quota(greedy), Ok(()));
    }

    #[tokio::test]
    async fn replacing_a_pair_closes_the_old_flow() {
        let now = Instant::now();
        let mut table = FlowTable::new(4);
        let old = flow(key(1, 1), now).await;
        let new = flow(key(1, 1), now).await;
        table.insert(old.clone(), now);
        table.insert(new.clone(), now);
        assert!(old.is_closed());
        assert!(Arc::ptr_eq(table.by_port(old.port).expect("lingers"), &old));
        assert_eq!(table.len(), 1);
        assert_eq!(table.clear().len(), 2);
        assert!(new.is_closed());
        assert_eq!(table.sockets(), 0);
    }
}
