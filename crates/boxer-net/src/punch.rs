//! Finding and keeping a path to each peer: hole punching with probes,
//! relay fallback, heartbeats and upgrades.
//!
//! When a node needs a peer it has no route to, it asks the rendezvous for a
//! punch ([`PunchRequests`]); the rendezvous tells *both* nodes at once, and
//! each sends [`Probe::Ping`]s from its one UDP socket to every candidate
//! address of the other (the reflexive address the rendezvous saw, then its
//! local addresses) on [`PUNCH_SCHEDULE`]. Each outgoing ping opens (or keeps
//! open) the sender's NAT mapping towards that address; once both mappings
//! exist, pings get through and are answered. The first [`Probe::Pong`] that
//! echoes one of our pings makes its source address the peer's direct route.
//! A ping from an address we never heard of (a peer behind an
//! address-dependent NAT uses a new mapping towards us) is answered and
//! pinged back, which is how one open side can still reach a symmetric one.
//!
//! A new connection that has no direct path after [`RELAY_AFTER`] starts on
//! the relay while the punch goes on; if no pong arrives within
//! [`PUNCH_TIMEOUT`], the peer stays on the relay. A relayed peer is punched again every [`UPGRADE_INTERVAL`]; a direct
//! route is pinged every [`HEARTBEAT_INTERVAL`] (which also keeps NAT
//! mappings alive) and falls back to the relay when it stops answering. Route
//! changes happen under the QUIC connection (see [`crate::socket`]), so open
//! streams survive them.
//!
//! Which side dials QUIC is decided by node id (the lower id dials), so a pair
//! ends with exactly one connection even when both start at once.
//!
//! The decisions (when to ping, which route, when to give up) are made by the
//! synchronous state machine in [`crate::path`]; the [`Pathfinder`] here is its
//! driver: it owns the socket, the probe keys and membership, feeds the state
//! machine with authenticated probes, requests and the time, and performs the
//! [`Action`]s it returns. The socket's route table is written only that way.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use boxer_proto::disco::{DiscoKey, Probe, claimed_sender};
use boxer_proto::{Membership, NodeId};
use tokio::sync::{Notify, mpsc, watch};
use tracing::{debug, trace};

use crate::pair_keys::{DiscoSecret, PairKeys};
pub use crate::path::{
    ALIVE_PINGS, ALIVE_WINDOW, DIRECT_STALE, HEARTBEAT_INTERVAL, LOW_TTL, PUNCH_REQUEST_SLACK, PUNCH_SCHEDULE,
    PUNCH_TIMEOUT, RELAY_AFTER, UPGRADE_INTERVAL,
};
use crate::path::{Action, Paths};
use crate::socket::{PeerSocket, ReceivedProbe, Route};

/// Punch requests from this node to the rendezvous (`NodeMessage::Punch`).
pub type PunchRequests = mpsc::Sender<NodeId>;

/// Lost peers buffered for a slow reader; an older report dropped is only a
/// slower removal (the rendezvous' grace still ends the member).
const LOST_BUFFER: usize = 256;

/// Punches from not-yet-known peers held at once ([`Pathfinder::start_punch`]):
/// more than any cluster starts meeting at once, and a bound on what a
/// flood of punch notifications can make a node keep.
const DEFERRED_PUNCHES: usize = 4096;

/// Finds and keeps routes to peers (see the module docs).
#[derive(Debug)]
pub struct Pathfinder {
    me: NodeId,
    /// Probe keys, one per pair ([`crate::pair_keys`]).
    keys: Mutex<PairKeys>,
    socket: Arc<PeerSocket>,
    membership: watch::Receiver<Membership>,
    requests: PunchRequests,
    /// All path state: the one owner of every route.
    paths: Mutex<Paths>,
    /// Punches the rendezvous started with a peer this node did not know
    /// yet, by when they were asked for ([`Pathfinder::members_changed`]).
    deferred: Mutex<std::collections::HashMap<NodeId, Instant>>,
    /// Wakes [`Pathfinder::run`] when an input made the next deadline earlier.
    wake: Notify,
    /// Bumped whenever a route is chosen.
    changed: watch::Sender<u64>,
    /// Peers a punch started with (the dialling side connects to them).
    ready: mpsc::UnboundedSender<NodeId>,
    /// Peers whose direct path stopped answering ([`Pathfinder::lost_peers`]).
    lost: tokio::sync::broadcast::Sender<NodeId>,
}

impl Pathfinder {
    /// A pathfinder for node `me`. Call [`Pathfinder::run`] with the socket's
    /// probe channel. Peers a punch started with arrive on the returned
    /// channel.
    pub fn new(
        me: NodeId,
        key: DiscoKey,
        secret: DiscoSecret,
        socket: Arc<PeerSocket>,
        membership: watch::Receiver<Membership>,
        requests: PunchRequests,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<NodeId>) {
        let (ready, ready_rx) = mpsc::unbounded_channel();
        let mut tx_seed = [0u8; 32];
        if let Err(e) = getrandom::fill(&mut tx_seed) {
            // Transaction ids need not be secret (probes are authenticated by
            // the pair key); they must only differ, which the counter ensures.
            debug!("no randomness for probe transaction ids ({e}); using a fixed seed");
        }
        let this = Self {
            me,
            keys: Mutex::new(PairKeys::new(me, key, secret)),
            socket,
            membership,
            requests,
            paths: Mutex::new(Paths::new(me, Instant::now(), tx_seed)),
            deferred: Mutex::default(),
            wake: Notify::new(),
            changed: watch::channel(0).0,
            ready,
            lost: tokio::sync::broadcast::channel(LOST_BUFFER).0,
        };
        (Arc::new(this), ready_rx)
    }

    fn paths(&self) -> std::sync::MutexGuard<'_, Paths> {
        self.paths.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Feeds one input to the state machine at the current time and performs
    /// the actions it returns. They are performed under the state machine's
    /// lock, so the socket's routes change in the order they were decided
    /// (the socket, keys and channels it touches never wait for this lock).
    fn drive<R>(&self, input: impl FnOnce(&mut Paths, Instant) -> R) -> R {
        let mut paths = self.paths();
        let deadline = paths.poll_timeout();
        let out = input(&mut paths, Instant::now());
        while let Some(action) = paths.poll_action() {
            self.perform(action);
        }
        if paths.poll_timeout() < deadline {
            self.wake.notify_one();
        }
        out
    }

    fn perform(&self, action: Action) {
        match action {
            Action::SendPing { peer, addr, tx, ttl } => {
                let Some(key) = self.pair_key(peer) else {
                    debug!(%peer, "no probe key for this peer (not a member, or a degenerate key): not pinging");
                    return;
                };
                let packet = Probe::Ping { from: self.me, tx }.encode(&key);
                if let Err(e) = self.socket.send_probe(addr, &packet, ttl) {
                    trace!(%peer, %addr, "ping not sent: {e}");
                }
            }
            Action::SendPong { peer, addr, tx } => {
                let Some(key) = self.pair_key(peer) else { return };
                let pong = Probe::Pong { from: self.me, tx, observed: addr }.encode(&key);
                if let Err(e) = self.socket.send_probe(addr, &pong, None) {
                    trace!(%peer, %addr, "pong not sent: {e}");
                }
            }
            Action::SetRoute { peer, route } => {
                self.socket.set_route(peer, route);
                self.changed.send_modify(|n| *n += 1);
            }
            Action::Learn { peer, addr } => self.socket.learn(addr, peer),
            Action::ForgetRoutes { peer } => self.socket.forget(peer),
            Action::RequestPunch { peer } => self.request_punch(peer),
            Action::Ready { peer } => {
                let _ = self.ready.send(peer);
            }
            Action::ReportLost { peer } => {
                let _ = self.lost.send(peer);
            }
        }
    }

    /// The probe key of the pair (this node, `peer`), from the key `peer`
    /// published in membership; `None` for a non-member or a degenerate key.
    fn pair_key(&self, peer: NodeId) -> Option<DiscoKey> {
        let public = self.membership.borrow().get(peer)?.disco_public;
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).key(peer, &public)
    }

    /// This node's id.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// The route to `peer`, punching (through the rendezvous) if there is
    /// none yet. A punch that has not found a direct path within
    /// [`RELAY_AFTER`] leaves the peer on the relay meanwhile; if it succeeds
    /// later, the peer moves to the direct path under its open connection.
    pub async fn ensure_route(&self, peer: NodeId) -> Route {
        if let Some(route) = self.socket.route(peer) {
            return route;
        }
        let mut changed = self.changed.subscribe();
        self.drive(|p, _| p.need_route(peer));
        let wait_for = if self.socket.has_relay() { RELAY_AFTER } else { PUNCH_TIMEOUT + PUNCH_REQUEST_SLACK };
        let wait = tokio::time::timeout(wait_for, async {
            loop {
                if let Some(route) = self.socket.route(peer) {
                    return route;
                }
                if changed.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        });
        match wait.await {
            Ok(route) => route,
            Err(_) => {
                self.drive(|p, _| p.use_relay(peer));
                Route::Relay
            }
        }
    }

    /// Asks the rendezvous to have this node and `peer` punch now (the
    /// non-dialling side uses this to make the dialling side connect).
    pub fn request_punch(&self, peer: NodeId) {
        if self.requests.try_send(peer).is_err() {
            debug!(%peer, "punch request not sent (rendezvous queue full or closed)");
        }
    }

    /// The peer has no connection any more: it is no longer heartbeaten or
    /// upgraded, and the next connection punches afresh (NAT mappings of an
    /// idle path expire).
    pub fn idle(&self, peer: NodeId) {
        self.drive(|p, _| p.idle(peer));
    }

    /// The rendezvous published new addresses for `peer` (its NAT mapping
    /// changed): a peer we route is punched again at once, since its old
    /// direct path is probably dead and its NAT would filter our packets to
    /// the new one until both sides send.
    pub fn peer_moved(&self, peer: NodeId) {
        self.drive(|p, _| p.peer_moved(peer));
    }

    /// Forgets a peer that left.
    pub fn forget(&self, peer: NodeId) {
        self.drive(|p, _| p.forget(peer));
    }

    /// Starts punching `peer` (the rendezvous said so). A punch already
    /// under way for that peer is not doubled.
    pub fn start_punch(self: &Arc<Self>, peer: NodeId) {
        if peer == self.me {
            return;
        }
        let candidates = self.membership.borrow().get(peer).map(|m| m.candidates());
        if candidates.is_none() {
            // The rendezvous sends punches and membership on separate
            // queues, so a punch can overtake the peer's `Joined`. Without
            // its addresses and probe key this side cannot ping, the peer's
            // pings die at this node's NAT, and the punch fails one-sided (a
            // 100-node mesh starting at once ran almost all on the relay).
            // It starts when the peer becomes known, while the other side
            // is still punching.
            let mut deferred = self.deferred.lock().expect("deferred punches");
            let now = Instant::now();
            if deferred.len() >= DEFERRED_PUNCHES {
                deferred.retain(|_, at| now.duration_since(*at) < PUNCH_TIMEOUT);
            }
            if deferred.len() < DEFERRED_PUNCHES {
                debug!(%peer, "punch from a peer not yet known: starts when it joins");
                deferred.insert(peer, now);
            }
            return;
        }
        self.drive(|p, now| p.start_punch(now, peer, candidates));
    }

    /// Membership changed: starts the punches deferred until their peer was
    /// known ([`Pathfinder::start_punch`]), unless the other side has given
    /// up by now ([`PUNCH_TIMEOUT`]).
    pub fn members_changed(self: &Arc<Self>) {
        let due: Vec<NodeId> = {
            let mut deferred = self.deferred.lock().expect("deferred punches");
            if deferred.is_empty() {
                return;
            }
            let now = Instant::now();
            deferred.retain(|_, at| now.duration_since(*at) < PUNCH_TIMEOUT);
            let membership = self.membership.borrow();
            let known: Vec<NodeId> = deferred.keys().filter(|p| membership.get(**p).is_some()).copied().collect();
            for peer in &known {
                deferred.remove(peer);
            }
            known
        };
        for peer in due {
            self.start_punch(peer);
        }
    }

    /// Pings `peer` at `addr` once.
    #[cfg(test)]
    fn ping(&self, peer: NodeId, addr: SocketAddr, ttl: Option<u8>) {
        self.drive(|p, now| p.ping(now, peer, addr, ttl));
    }

    /// Handles received probes and runs the state machine's timers
    /// (punch rounds, heartbeats, upgrades, liveness checks) until the socket
    /// closes.
    pub async fn run(self: Arc<Self>, mut probes: mpsc::Receiver<ReceivedProbe>) {
        loop {
            let deadline = self.paths().poll_timeout();
            tokio::select! {
                probe = probes.recv() => match probe {
                    Some((from, bytes)) => self.handle_probe(from, &bytes),
                    None => return,
                },
                _ = tokio::time::sleep_until(deadline.into()) => self.drive(|p, now| p.handle_timeout(now)),
                _ = self.wake.notified() => {}
            }
        }
    }

    fn handle_probe(&self, from: SocketAddr, bytes: &[u8]) {
        // Checked under the key of the pair the probe claims: only that
        // peer (and we) could have tagged it.
        let Some(claimed) = claimed_sender(bytes) else { return };
        let key = match self.pair_key(claimed) {
            Some(key) if claimed != self.me => key,
            _ => {
                debug!(%from, peer = %claimed, "dropped probe from a non-member");
                return;
            }
        };
        let probe = match Probe::decode(bytes, &key) {
            Ok(p) => p,
            Err(e) => {
                debug!(%from, peer = %claimed, "dropped probe: {e}");
                return;
            }
        };
        let peer = probe.from();
        match probe {
            Probe::Ping { tx, .. } => self.drive(|p, now| p.ping_received(now, peer, from, tx)),
            Probe::Pong { tx, observed, .. } => self.drive(|p, now| p.pong_received(now, peer, from, tx, observed)),
        }
    }

    /// Peers whose direct path stopped answering: on heartbeats (the path
    /// went stale) or a [`Pathfinder::check_alive`]. Evidence for the
    /// rendezvous that the peer may be gone; relayed peers are never
    /// reported (their path depends on the rendezvous itself).
    pub fn lost_peers(&self) -> tokio::sync::broadcast::Receiver<NodeId> {
        self.lost.subscribe()
    }

    /// `peer` lost its rendezvous connection: if there is a direct path to
    /// it, probe it now and report it lost ([`Pathfinder::lost_peers`]) if it
    /// does not answer within [`ALIVE_WINDOW`]. Without a direct path
    /// there is nothing to tell a dead peer from an unreachable one.
    pub fn check_alive(self: &Arc<Self>, peer: NodeId) {
        self.drive(|p, now| p.check_alive(now, peer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use boxer_proto::disco::DiscoPublic;
    use boxer_proto::disco::TX_LEN;
    use boxer_proto::membership::MembershipSnapshot;
    use boxer_proto::{Fingerprint, Member};
    use std::time::Duration;

    const CLUSTER: DiscoKey = [4; 32];

    fn member(id: u32, public: DiscoPublic) -> Member {
        Member {
            node_id: NodeId(id),
            service: "n".into(),
            index: id,
            overlay_ip: std::net::Ipv4Addr::new(100, 96, 0, id as u8),
            fingerprint: Fingerprint([id as u8; 32]),
            reflexive: "192.0.2.1:1".parse().unwrap(),
            local: vec![],
            listening: vec![],
            disco_public: public,
        }
    }

    /// What a member knows: its secret's public half and its pair keys.
    fn keys(id: u32) -> (DiscoPublic, PairKeys) {
        let secret = DiscoSecret::generate().unwrap();
        (secret.public(), PairKeys::new(NodeId(id), CLUSTER, secret))
    }

    async fn probe_at(sock: &tokio::net::UdpSocket) -> Option<Vec<u8>> {
        let mut buf = [0u8; 256];
        let got = tokio::time::timeout(Duration::from_millis(300), sock.recv_from(&mut buf)).await.ok()?;
        Some(buf[..got.ok()?.0].to_vec())
    }

    /// Member C knows the cluster key and its own pair keys, sees B's ping
    /// to A, and answers and pings in A's name: B takes none of it, while
    /// A's own probes work.
    #[tokio::test]
    async fn a_member_forging_probes_in_another_members_name_changes_no_path() {
        let (a, b) = (NodeId(1), NodeId(2));
        let (a_pub, mut a_keys) = keys(1);
        let (c_pub, mut c_keys) = keys(3);
        let b_secret = DiscoSecret::generate().unwrap();
        let b_pub = b_secret.public();
        let snapshot =
            MembershipSnapshot { seq: 3, members: vec![member(1, a_pub), member(2, b_pub), member(3, c_pub)] };
        let (_members_tx, members) = watch::channel(Membership::from_snapshot("demo", snapshot));
        let (socket, _probes) = PeerSocket::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
        let (punch_tx, _punch_rx) = mpsc::channel(8);
        let (b_finder, _ready) = Pathfinder::new(b, CLUSTER, b_secret, socket.clone(), members, punch_tx);
        let a_sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let c_sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (a_addr, c_addr) = (a_sock.local_addr().unwrap(), c_sock.local_addr().unwrap());
        let (ab, cb) = (a_keys.key(b, &b_pub).unwrap(), c_keys.key(b, &b_pub).unwrap());

        // A forged ping "from A" (under C's key with B, or the cluster key):
        // not answered, C's address not taken for A's.
        for key in [cb, CLUSTER] {
            let forged = Probe::Ping { from: a, tx: [1; TX_LEN] }.encode(&key);
            b_finder.handle_probe(c_addr, &forged);
            assert_eq!(probe_at(&c_sock).await, None, "a forged ping was answered");
            assert_eq!(socket.peer_at(c_addr), None);
        }

        // B pings A; C, seeing the ping's transaction id on the path, answers
        // in A's name first: no path. A's own answer: the direct path.
        b_finder.ping(a, a_addr, None);
        let ping = probe_at(&a_sock).await.expect("B pings A");
        let Ok(Probe::Ping { from, tx }) = Probe::decode(&ping, &ab) else { panic!("not a ping under the pair key") };
        assert_eq!(from, b);
        for key in [cb, CLUSTER] {
            let forged = Probe::Pong { from: a, tx, observed: a_addr }.encode(&key);
            b_finder.handle_probe(c_addr, &forged);
            assert_eq!(socket.route(a), None, "a forged pong chose a path");
        }
        let pong = Probe::Pong { from: a, tx, observed: a_addr }.encode(&ab);
        b_finder.handle_probe(a_addr, &pong);
        assert_eq!(socket.route(a), Some(Route::Direct(a_addr)));

        // A genuine ping from A is answered under the pair key.
        let ping = Probe::Ping { from: a, tx: [2; TX_LEN] }.encode(&ab);
        b_finder.handle_probe(a_addr, &ping);
        let pong = probe_at(&a_sock).await.expect("B answers A");
        assert!(matches!(Probe::decode(&pong, &ab), Ok(Probe::Pong { from, .. }) if from == b));
    }

    /// The rendezvous' punch for A reaches B before A's `Joined` does: B
    /// pings A once A is known (it used to drop the punch: one-sided, it
    /// failed).
    #[tokio::test]
    async fn a_punch_that_overtakes_the_peers_join_starts_when_the_peer_is_known() {
        let (a, b) = (NodeId(1), NodeId(2));
        let (a_pub, mut a_keys) = keys(1);
        let b_secret = DiscoSecret::generate().unwrap();
        let b_pub = b_secret.public();
        let a_sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut a_member = member(1, a_pub);
        a_member.reflexive = a_sock.local_addr().unwrap();
        let only_b = MembershipSnapshot { seq: 1, members: vec![member(2, b_pub)] };
        let (members_tx, members) = watch::channel(Membership::from_snapshot("demo", only_b));
        let (socket, _probes) = PeerSocket::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
        let (punch_tx, _punch_rx) = mpsc::channel(8);
        let (b_finder, _ready) = Pathfinder::new(b, CLUSTER, b_secret, socket, members, punch_tx);
        b_finder.start_punch(a);
        b_finder.members_changed();
        assert_eq!(probe_at(&a_sock).await, None, "pinged a peer it cannot know");
        members_tx.send_modify(|m| {
            *m = Membership::from_snapshot(
                "demo",
                MembershipSnapshot { seq: 2, members: vec![member(2, b_pub), a_member] },
            )
        });
        b_finder.members_changed();
        let ping = probe_at(&a_sock).await.expect("B pings A once A is known");
        let ab = a_keys.key(b, &b_pub).unwrap();
        assert!(matches!(Probe::decode(&ping, &ab), Ok(Probe::Ping { from, .. }) if from == b));
    }
}
