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

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use boxer_proto::disco::{DiscoKey, Probe, TX_LEN, claimed_sender};
use boxer_proto::{Membership, NodeId};
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, debug, info, trace, warn};

use crate::pair_keys::{DiscoSecret, PairKeys};
use crate::socket::{PeerSocket, ReceivedProbe, Route};

/// IP TTL of the first round of pings. It must carry a ping through our own
/// NAT (creating our mapping) but not into the peer's NAT: a Linux
/// `masquerade` NAT without an inbound filter answers an unsolicited packet by
/// creating a conntrack entry for itself, and that entry then collides with the
/// mapping its own host needs, so the host's packets leave from another port
/// and the punch fails (ZeroTier's "low TTL first packet" trick). Two hops is
/// the host's NAT plus one router: the same value ZeroTier uses.
pub const LOW_TTL: u8 = 2;

/// When each round of pings goes out, from the punch start. Round 0 is sent
/// with [`LOW_TTL`] only; normal pings start after the peer had time to open
/// its own mapping (both sides start within the rendezvous' delivery skew,
/// well under 20 ms in a region). Then the gaps double, so that a lost ping
/// or a late peer costs little, and the rounds end before the timeout.
pub const PUNCH_SCHEDULE: [Duration; 9] = [
    Duration::from_millis(0),
    Duration::from_millis(20),
    Duration::from_millis(40),
    Duration::from_millis(80),
    Duration::from_millis(160),
    Duration::from_millis(320),
    Duration::from_millis(640),
    Duration::from_millis(1280),
    Duration::from_millis(2000),
];

/// A punch with no pong by then has failed and the peer goes through the
/// relay. Generous against RTTs (the last ping leaves at 2 s and has 500 ms
/// to come back); short enough that a symmetric-NAT peer is reachable within
/// 3 s of the first connect.
pub const PUNCH_TIMEOUT: Duration = Duration::from_millis(2500);

/// How long a new connection waits for a punch before it starts on the
/// relay (and moves to the direct path if the punch succeeds later). Punches
/// that work finish within the 20 ms low-TTL round plus a round trip or two
/// in a region; waiting longer would only delay peers that need the relay
/// (Tailscale likewise starts on DERP and upgrades).
pub const RELAY_AFTER: Duration = Duration::from_millis(150);

/// How long a node waits for the rendezvous to start a punch it asked for
/// before it uses the relay anyway (the rendezvous may have dropped the
/// request under its rate limit).
pub const PUNCH_REQUEST_SLACK: Duration = Duration::from_secs(1);

/// Pings on every direct route: liveness, RTT, and NAT mappings kept fresh at
/// a sixth of the common 30 s UDP mapping timeout (Tailscale pings every 3 s,
/// ZeroTier every 20 s).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// A direct route without a pong for this long is dead (three heartbeats
/// lost): its peer goes through the relay until a punch finds a new path. Well
/// inside the peer connections' 30 s idle timeout.
pub const DIRECT_STALE: Duration = Duration::from_secs(16);

/// How often a relayed pair tries again to go direct. NAT state changes
/// rarely; a punch costs a few dozen small packets.
pub const UPGRADE_INTERVAL: Duration = Duration::from_secs(10);

/// Pings older than this are forgotten unanswered.
const PING_MEMORY: Duration = Duration::from_secs(10);

/// Most unanswered pings remembered; beyond it the oldest are forgotten (a
/// peer with many candidates cannot make us keep unbounded state).
const MAX_PENDING_PINGS: usize = 4096;

/// Punch requests from this node to the rendezvous (`NodeMessage::Punch`).
pub type PunchRequests = mpsc::Sender<NodeId>;

#[derive(Debug)]
struct SentPing {
    peer: NodeId,
    sent: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Direct {
    addr: SocketAddr,
    last_pong: Instant,
}

#[derive(Debug, Default)]
struct State {
    pings: HashMap<[u8; TX_LEN], SentPing>,
    punching: HashSet<NodeId>,
    direct: HashMap<NodeId, Direct>,
    /// Peers we route (direct or relayed), for heartbeats and upgrades.
    known: HashSet<NodeId>,
}

/// Finds and keeps routes to peers (see the module docs).
#[derive(Debug)]
pub struct Pathfinder {
    me: NodeId,
    /// Probe keys, one per pair ([`crate::pair_keys`]).
    keys: Mutex<PairKeys>,
    socket: Arc<PeerSocket>,
    membership: watch::Receiver<Membership>,
    requests: PunchRequests,
    state: Mutex<State>,
    /// Bumped whenever a route is chosen or a punch ends.
    changed: watch::Sender<u64>,
    /// Peers a punch started with (the dialling side connects to them).
    ready: mpsc::UnboundedSender<NodeId>,
    /// Peers whose direct path stopped answering ([`Pathfinder::lost_peers`]).
    lost: tokio::sync::broadcast::Sender<NodeId>,
}

/// How long an away peer ([`Pathfinder::check_alive`]) has to answer
/// [`ALIVE_PINGS`] pings before it is reported lost: a live peer answers
/// in one round trip; the rest covers a lost ping or two.
pub const ALIVE_WINDOW: Duration = Duration::from_secs(3);

/// Pings sent to an away peer within [`ALIVE_WINDOW`].
pub const ALIVE_PINGS: u32 = 3;

/// Lost peers buffered for a slow reader; an older report dropped is only a
/// slower removal (the rendezvous' grace still ends the member).
const LOST_BUFFER: usize = 256;

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
        let this = Self {
            me,
            keys: Mutex::new(PairKeys::new(me, key, secret)),
            socket,
            membership,
            requests,
            state: Mutex::default(),
            changed: watch::channel(0).0,
            ready,
            lost: tokio::sync::broadcast::channel(LOST_BUFFER).0,
        };
        (Arc::new(this), ready_rx)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The probe key of the pair (this node, `peer`), from the key `peer`
    /// published in membership; `None` for a non-member or a degenerate key.
    fn pair_key(&self, peer: NodeId) -> Option<DiscoKey> {
        let public = self.membership.borrow().get(peer)?.disco_public;
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).key(peer, &public)
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
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
        if !self.state().punching.contains(&peer) {
            self.request_punch(peer);
        }
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
                debug!(%peer, "no direct path yet; starting on the relay");
                self.use_relay(peer);
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

    fn use_relay(&self, peer: NodeId) {
        if self.socket.route(peer).is_none() {
            self.socket.set_route(peer, Route::Relay);
        }
        self.state().known.insert(peer);
        self.bump();
    }

    /// The peer has no connection any more: it is no longer heartbeaten or
    /// upgraded, and the next connection punches afresh (NAT mappings of an
    /// idle path expire).
    pub fn idle(&self, peer: NodeId) {
        if self.state().punching.contains(&peer) {
            return;
        }
        self.forget(peer);
    }

    /// The rendezvous published new addresses for `peer` (its NAT mapping
    /// changed): a peer we route is punched again at once, since its old
    /// direct path is probably dead and its NAT would filter our packets to
    /// the new one until both sides send.
    pub fn peer_moved(&self, peer: NodeId) {
        if self.state().known.contains(&peer) {
            info!(%peer, "peer's addresses changed; punching again");
            self.request_punch(peer);
        }
    }

    /// Forgets a peer that left.
    pub fn forget(&self, peer: NodeId) {
        let mut s = self.state();
        s.direct.remove(&peer);
        s.known.remove(&peer);
        s.pings.retain(|_, p| p.peer != peer);
        drop(s);
        self.socket.forget(peer);
    }

    /// Starts punching `peer` (the rendezvous said so). A punch already
    /// under way for that peer is not doubled.
    pub fn start_punch(self: &Arc<Self>, peer: NodeId) {
        if peer == self.me || !self.state().punching.insert(peer) {
            return;
        }
        // The peer wants a connection (or we do): the dialling side starts it now.
        let _ = self.ready.send(peer);
        let this = self.clone();
        tokio::spawn(async move {
            this.punch(peer).await;
            this.state().punching.remove(&peer);
            this.bump();
        });
    }

    async fn punch(&self, peer: NodeId) {
        let Some(member) = self.membership.borrow().get(peer).cloned() else {
            debug!(%peer, "not punching: not a member");
            return;
        };
        let candidates = member.candidates();
        let start = Instant::now();
        debug!(%peer, ?candidates, "punching");
        let mut changed = self.changed.subscribe();
        // Waits until `at` or until a direct path is confirmed (then `true`).
        let mut wait_direct = async |at: Instant| {
            while !self.direct_since(peer, start) {
                if tokio::time::timeout_at(at.into(), changed.changed()).await.is_err() {
                    return false;
                }
            }
            true
        };
        let mut direct = false;
        for (round, offset) in PUNCH_SCHEDULE.iter().enumerate() {
            if wait_direct(start + *offset).await {
                direct = true;
                break;
            }
            let ttl = (round == 0).then_some(LOW_TTL);
            for &addr in &candidates {
                self.ping(peer, addr, ttl);
            }
        }
        if !direct {
            wait_direct(start + PUNCH_TIMEOUT).await;
        }
        self.state().known.insert(peer);
        if self.direct_since(peer, start) {
            let route = self.socket.route(peer);
            info!(%peer, ?route, took_ms = start.elapsed().as_millis() as u64, "punched a direct path");
        } else if self.socket.route(peer).is_none_or(|r| r == Route::Relay) {
            info!(%peer, "no direct path found; using the relay");
            self.socket.set_route(peer, Route::Relay);
        }
    }

    fn direct_since(&self, peer: NodeId, since: Instant) -> bool {
        self.state().direct.get(&peer).is_some_and(|d| d.last_pong >= since)
            && matches!(self.socket.route(peer), Some(Route::Direct(_)))
    }

    fn ping(&self, peer: NodeId, addr: SocketAddr, ttl: Option<u8>) {
        let Some(key) = self.pair_key(peer) else {
            debug!(%peer, "no probe key for this peer (not a member, or a degenerate key): not pinging");
            return;
        };
        let mut tx = [0u8; TX_LEN];
        if getrandom::fill(&mut tx).is_err() {
            return;
        }
        {
            let mut s = self.state();
            if s.pings.len() >= MAX_PENDING_PINGS {
                let cutoff = Instant::now() - PING_MEMORY / 10;
                s.pings.retain(|_, p| p.sent > cutoff);
            }
            s.pings.insert(tx, SentPing { peer, sent: Instant::now() });
        }
        let packet = Probe::Ping { from: self.me, tx }.encode(&key);
        if let Err(e) = self.socket.send_probe(addr, &packet, ttl) {
            trace!(%peer, %addr, "ping not sent: {e}");
        }
    }

    /// Handles received probes and sends heartbeats until the socket closes.
    pub async fn run(self: Arc<Self>, mut probes: mpsc::Receiver<ReceivedProbe>) {
        let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut upgrade = tokio::time::interval(UPGRADE_INTERVAL);
        upgrade.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                probe = probes.recv() => match probe {
                    Some((from, bytes)) => self.handle_probe(from, &bytes),
                    None => return,
                },
                _ = heartbeat.tick() => self.heartbeat(),
                _ = upgrade.tick() => self.upgrade(),
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
            Probe::Ping { tx, .. } => {
                self.socket.learn(from, peer);
                let pong = Probe::Pong { from: self.me, tx, observed: from }.encode(&key);
                if let Err(e) = self.socket.send_probe(from, &pong, None) {
                    trace!(%peer, %from, "pong not sent: {e}");
                }
                // A new address of the peer: find out whether it works our way too.
                let known = self.state().direct.get(&peer).is_some_and(|d| d.addr == from);
                if !known {
                    self.ping(peer, from, None);
                }
            }
            Probe::Pong { tx, observed, .. } => {
                let Some(sent) = self.state().pings.remove(&tx) else {
                    trace!(%peer, %from, "pong for no ping of ours");
                    return;
                };
                if sent.peer != peer {
                    debug!(%peer, %from, "pong from another node than pinged");
                    return;
                }
                self.confirm(peer, from, sent.sent.elapsed(), observed);
            }
        }
    }

    fn confirm(&self, peer: NodeId, addr: SocketAddr, rtt: Duration, observed: SocketAddr) {
        let now = Instant::now();
        let switch = {
            let mut s = self.state();
            let current = s.direct.get(&peer).copied();
            let switch = match current {
                None => true,
                Some(d) if d.addr == addr => false,
                // Another path answered: keep the current one while it lives.
                Some(d) => now.duration_since(d.last_pong) > HEARTBEAT_INTERVAL * 2,
            };
            if switch || current.is_some_and(|d| d.addr == addr) {
                s.direct.insert(peer, Direct { addr, last_pong: now });
            }
            s.known.insert(peer);
            switch
        };
        let before = self.socket.route(peer);
        if switch || before.is_none_or(|r| r == Route::Relay) {
            info!(%peer, %addr, rtt_us = rtt.as_micros() as u64, %observed, ?before, "direct path confirmed");
            self.socket.set_route(peer, Route::Direct(addr));
        }
        self.bump();
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
        let Some(start) = self.state().direct.get(&peer).map(|_| Instant::now()) else { return };
        let this = self.clone();
        tokio::spawn(
            async move {
                for _ in 0..ALIVE_PINGS {
                    let Some(d) = this.state().direct.get(&peer).copied() else { return };
                    if d.last_pong > start {
                        return;
                    }
                    this.ping(peer, d.addr, None);
                    tokio::time::sleep(ALIVE_WINDOW / ALIVE_PINGS).await;
                }
                let silent = this.state().direct.get(&peer).is_some_and(|d| d.last_pong <= start);
                if silent {
                    info!(%peer, "away peer does not answer on its direct path: reporting it lost");
                    let _ = this.lost.send(peer);
                }
            }
            .in_current_span(),
        );
    }

    fn heartbeat(&self) {
        let now = Instant::now();
        let mut stale = Vec::new();
        let direct: Vec<(NodeId, Direct)> = {
            let mut s = self.state();
            s.pings.retain(|_, p| now.duration_since(p.sent) < PING_MEMORY);
            s.direct.iter().map(|(p, d)| (*p, *d)).collect()
        };
        for (peer, d) in direct {
            if now.duration_since(d.last_pong) > DIRECT_STALE {
                stale.push(peer);
            } else {
                self.ping(peer, d.addr, None);
            }
        }
        for peer in stale {
            warn!(%peer, "direct path stopped answering; using the relay while looking for a new one");
            let _ = self.lost.send(peer);
            self.state().direct.remove(&peer);
            self.socket.set_route(peer, Route::Relay);
            self.bump();
            self.request_punch(peer);
        }
    }

    fn upgrade(&self) {
        let relayed: Vec<NodeId> = {
            let s = self.state();
            s.known.iter().copied().filter(|p| !s.direct.contains_key(p) && !s.punching.contains(p)).collect()
        };
        for peer in relayed {
            // One side asks, so a pair does not punch twice per interval.
            if self.me < peer && self.socket.route(peer) == Some(Route::Relay) {
                debug!(%peer, "relayed: trying to go direct");
                let _ = self.requests.try_send(peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use boxer_proto::disco::DiscoPublic;
    use boxer_proto::membership::MembershipSnapshot;
    use boxer_proto::{Fingerprint, Member};

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
}
