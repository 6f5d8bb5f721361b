//! The path to every peer as one synchronous state machine: no sockets, no
//! tasks, no clock of its own (the split of quinn-proto and quinn).
//!
//! [`Paths`] owns all path state of a node: each peer's route (none, the
//! relay, or a direct UDP address with its last pong and RTT), the punch
//! under way with it, a liveness check ([`Paths::check_alive`]) and the pings
//! still waiting for a pong. It is driven by inputs that carry the time
//! (`now`), and answers with [`Action`]s taken one at a time from
//! [`Paths::poll_action`]; [`Paths::poll_timeout`] is the next instant it
//! wants [`Paths::handle_timeout`] called. The driver
//! ([`crate::punch::Pathfinder`]) owns the socket, the probe keys and
//! membership: it authenticates probes, feeds them in as transaction ids and
//! peers, and performs the actions (sends the probes, writes the socket's
//! route table, talks to the rendezvous). Nothing else writes a route.
//!
//! What the machine does (see [`crate::punch`] for the why):
//!
//! * **Punch** ([`Paths::start_punch`]): pings every candidate on
//!   [`PUNCH_SCHEDULE`] (round 0 with [`LOW_TTL`]) and ends at the first pong
//!   since its start (direct) or at [`PUNCH_TIMEOUT`] (relayed, unless an older
//!   direct path still answers). The dialling side is told once per punch
//!   ([`Action::Ready`]).
//! * **Confirm** (a pong that echoes one of our pings, from the pinged peer):
//!   its source becomes the direct route, unless another direct path answered
//!   within two heartbeats (then the current one stays: no flapping between
//!   two live paths). A move from one direct address to another (a NAT
//!   rebinding) never passes through the relay.
//! * **Heartbeat** (every [`HEARTBEAT_INTERVAL`]): pings each direct route; a
//!   route without a pong for [`DIRECT_STALE`] falls back to the relay, is
//!   reported lost and is punched again.
//! * **Upgrade** (every [`UPGRADE_INTERVAL`]): a relayed peer with a higher
//!   id than ours is punched again (the other side of the pair does not ask,
//!   so a pair punches once per interval).
//! * **Check alive** ([`Paths::check_alive`]): [`ALIVE_PINGS`] pings on the
//!   direct route within [`ALIVE_WINDOW`]; silence is reported once.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use boxer_proto::NodeId;
use boxer_proto::disco::TX_LEN;
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use crate::socket::Route;

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

/// How long an away peer ([`Paths::check_alive`]) has to answer
/// [`ALIVE_PINGS`] pings before it is reported lost: a live peer answers
/// in one round trip; the rest covers a lost ping or two.
pub const ALIVE_WINDOW: Duration = Duration::from_secs(3);

/// Pings sent to an away peer within [`ALIVE_WINDOW`].
pub const ALIVE_PINGS: u32 = 3;

/// Pings older than this are forgotten unanswered.
pub const PING_MEMORY: Duration = Duration::from_secs(10);

/// Most unanswered pings remembered; beyond it the oldest are forgotten (a
/// peer with many candidates cannot make us keep unbounded state).
pub const MAX_PENDING_PINGS: usize = 4096;

/// A ping's transaction id, echoed by its pong.
pub type Tx = [u8; TX_LEN];

/// What the driver does for the state machine, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send a ping with transaction id `tx` to `peer` at `addr`, with IP TTL
    /// `ttl` when given.
    SendPing {
        /// The peer.
        peer: NodeId,
        /// Where to.
        addr: SocketAddr,
        /// The transaction id its pong must echo.
        tx: Tx,
        /// IP TTL of this one datagram ([`LOW_TTL`] in a punch's round 0).
        ttl: Option<u8>,
    },
    /// Answer `peer`'s ping `tx`, which came from `addr` (also the address
    /// the pong reports as observed).
    SendPong {
        /// The peer.
        peer: NodeId,
        /// Where the ping came from (and the pong goes).
        addr: SocketAddr,
        /// The ping's transaction id.
        tx: Tx,
    },
    /// Send `peer`'s packets along `route` from now on.
    SetRoute {
        /// The peer.
        peer: NodeId,
        /// Its route.
        route: Route,
    },
    /// Attribute packets from `addr` to `peer` (an address an authenticated
    /// ping came from).
    Learn {
        /// The peer.
        peer: NodeId,
        /// Its address.
        addr: SocketAddr,
    },
    /// Drop every route and address of `peer`.
    ForgetRoutes {
        /// The peer.
        peer: NodeId,
    },
    /// Ask the rendezvous to have this node and `peer` punch.
    RequestPunch {
        /// The peer.
        peer: NodeId,
    },
    /// A punch with `peer` started: the dialling side connects now.
    Ready {
        /// The peer.
        peer: NodeId,
    },
    /// `peer`'s direct path stopped answering (evidence that it may be gone).
    ReportLost {
        /// The peer.
        peer: NodeId,
    },
}

/// The route state of one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathState {
    /// No route chosen: not heartbeaten, not upgraded (a new peer, or one
    /// forgotten or idle). The socket sends its packets, if any, to the relay.
    Unknown,
    /// Through the relay; punched again every [`UPGRADE_INTERVAL`].
    Relayed,
    /// Straight to `addr`, which last answered at `last_pong` in `rtt`.
    Direct {
        /// The peer's address.
        addr: SocketAddr,
        /// When a pong last came from it.
        last_pong: Instant,
        /// The round-trip time of that pong's ping.
        rtt: Duration,
    },
}

impl PathState {
    /// The route the socket has for this state.
    pub fn route(&self) -> Option<Route> {
        match self {
            PathState::Unknown => None,
            PathState::Relayed => Some(Route::Relay),
            PathState::Direct { addr, .. } => Some(Route::Direct(*addr)),
        }
    }
}

/// A punch under way.
#[derive(Debug, Clone)]
struct Punch {
    since: Instant,
    /// The next round of [`PUNCH_SCHEDULE`] to send.
    round: usize,
    candidates: Vec<SocketAddr>,
}

impl Punch {
    fn deadline(&self) -> Instant {
        self.since + PUNCH_SCHEDULE.get(self.round).copied().unwrap_or(PUNCH_TIMEOUT)
    }
}

/// A liveness check under way ([`Paths::check_alive`]).
#[derive(Debug, Clone, Copy)]
struct AliveCheck {
    since: Instant,
    /// Pings sent so far.
    pings: u32,
    /// When the next ping goes out, or (after the last one) the verdict.
    next: Instant,
}

#[derive(Debug, Clone)]
struct Peer {
    state: PathState,
    punch: Option<Punch>,
    alive: Option<AliveCheck>,
}

impl Peer {
    fn is_empty(&self) -> bool {
        self.state == PathState::Unknown && self.punch.is_none() && self.alive.is_none()
    }
}

impl Default for Peer {
    fn default() -> Self {
        Self { state: PathState::Unknown, punch: None, alive: None }
    }
}

#[derive(Debug, Clone, Copy)]
struct SentPing {
    peer: NodeId,
    sent: Instant,
}

/// The paths of one node to all its peers (see the module docs).
#[derive(Debug)]
pub struct Paths {
    me: NodeId,
    /// Peers with any state (an entry back to nothing is removed).
    peers: BTreeMap<NodeId, Peer>,
    pings: HashMap<Tx, SentPing>,
    next_heartbeat: Instant,
    next_upgrade: Instant,
    tx_seed: [u8; 32],
    tx_count: u64,
    actions: VecDeque<Action>,
}

impl Paths {
    /// The paths of node `me`, created at `now` (the first heartbeat and
    /// upgrade are due at once). Transaction ids are derived from `tx_seed`,
    /// which should be random.
    pub fn new(me: NodeId, now: Instant, tx_seed: [u8; 32]) -> Self {
        Self {
            me,
            peers: BTreeMap::new(),
            pings: HashMap::new(),
            next_heartbeat: now,
            next_upgrade: now,
            tx_seed,
            tx_count: 0,
            actions: VecDeque::new(),
        }
    }

    /// The next action for the driver, oldest first.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Paths::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Instant {
        let mut at = self.next_heartbeat.min(self.next_upgrade);
        for peer in self.peers.values() {
            if let Some(p) = &peer.punch {
                at = at.min(p.deadline());
            }
            if let Some(a) = &peer.alive {
                at = at.min(a.next);
            }
        }
        at
    }

    /// The route chosen for `peer`, as the socket has it.
    pub fn route(&self, peer: NodeId) -> Option<Route> {
        self.state(peer).route()
    }

    /// `peer`'s route state.
    pub fn state(&self, peer: NodeId) -> PathState {
        self.peers.get(&peer).map_or(PathState::Unknown, |p| p.state)
    }

    /// Whether a punch with `peer` is under way.
    pub fn is_punching(&self, peer: NodeId) -> bool {
        self.peers.get(&peer).is_some_and(|p| p.punch.is_some())
    }

    /// Unanswered pings remembered.
    pub fn pending_pings(&self) -> usize {
        self.pings.len()
    }

    fn push(&mut self, action: Action) {
        self.actions.push_back(action);
    }

    fn peer(&mut self, peer: NodeId) -> &mut Peer {
        self.peers.entry(peer).or_default()
    }

    /// Removes `peer`'s entry if nothing is left in it.
    fn tidy(&mut self, peer: NodeId) {
        if self.peers.get(&peer).is_some_and(Peer::is_empty) {
            self.peers.remove(&peer);
        }
    }

    fn set_state(&mut self, peer: NodeId, state: PathState) {
        let before = self.state(peer).route();
        self.peer(peer).state = state;
        if let Some(route) = state.route()
            && before != Some(route)
        {
            self.push(Action::SetRoute { peer, route });
        }
    }

    fn next_tx(&mut self) -> Tx {
        self.tx_count += 1;
        let digest = Sha256::new_with_prefix(self.tx_seed).chain_update(self.tx_count.to_le_bytes()).finalize();
        let mut tx = [0; TX_LEN];
        tx.copy_from_slice(&digest[..TX_LEN]);
        tx
    }

    /// Pings `peer` at `addr` once (with IP TTL `ttl` when given), and
    /// remembers the ping for its pong.
    pub fn ping(&mut self, now: Instant, peer: NodeId, addr: SocketAddr, ttl: Option<u8>) {
        if self.pings.len() >= MAX_PENDING_PINGS {
            // The oldest first: everything but the last tenth of the memory,
            // then, if pings come faster than that, the oldest tenth (a
            // tenth at a time, so a flood does not sort on every ping).
            let cutoff = now.checked_sub(PING_MEMORY / 10).unwrap_or(now);
            self.pings.retain(|_, p| p.sent > cutoff);
            if self.pings.len() >= MAX_PENDING_PINGS {
                let mut by_age: Vec<(Instant, Tx)> = self.pings.iter().map(|(tx, p)| (p.sent, *tx)).collect();
                by_age.sort_unstable();
                let excess = by_age.len() - (MAX_PENDING_PINGS - MAX_PENDING_PINGS / 10);
                for (_, tx) in &by_age[..excess] {
                    self.pings.remove(tx);
                }
            }
        }
        let tx = self.next_tx();
        self.pings.insert(tx, SentPing { peer, sent: now });
        self.push(Action::SendPing { peer, addr, tx, ttl });
    }

    /// The rendezvous started a punch with `peer`, whose candidate addresses
    /// are `candidates` (`None`: not a member, nothing to ping). A punch
    /// already under way is not doubled.
    pub fn start_punch(&mut self, now: Instant, peer: NodeId, candidates: Option<Vec<SocketAddr>>) {
        if peer == self.me || self.is_punching(peer) {
            return;
        }
        // The peer wants a connection (or we do): the dialling side starts it now.
        self.push(Action::Ready { peer });
        let Some(candidates) = candidates else {
            debug!(%peer, "not punching: not a member");
            return;
        };
        debug!(%peer, ?candidates, "punching");
        self.peer(peer).punch = Some(Punch { since: now, round: 0, candidates });
        self.advance_punch(now, peer);
    }

    /// A connection needs a route to `peer`: asks for a punch unless there is
    /// a route or a punch already.
    pub fn need_route(&mut self, peer: NodeId) {
        if self.route(peer).is_none() && !self.is_punching(peer) {
            self.push(Action::RequestPunch { peer });
        }
    }

    /// A connection waited long enough for a punch: `peer` goes through the
    /// relay unless it has a route by now (a punch that succeeds later moves
    /// it to the direct path).
    pub fn use_relay(&mut self, peer: NodeId) {
        if self.state(peer) == PathState::Unknown {
            debug!(%peer, "no direct path yet; starting on the relay");
            self.set_state(peer, PathState::Relayed);
        }
    }

    /// An authenticated ping `tx` from `peer` came from `from`: answered,
    /// the address attributed to the peer, and, if it is not the peer's
    /// direct route, pinged back (a peer-reflexive candidate: a symmetric
    /// NAT's new mapping).
    pub fn ping_received(&mut self, now: Instant, peer: NodeId, from: SocketAddr, tx: Tx) {
        if peer == self.me {
            return;
        }
        self.push(Action::Learn { peer, addr: from });
        self.push(Action::SendPong { peer, addr: from, tx });
        if !matches!(self.state(peer), PathState::Direct { addr, .. } if addr == from) {
            self.ping(now, peer, from, None);
        }
    }

    /// An authenticated pong from `peer` echoing `tx` came from `from`; the
    /// peer saw our ping come from `observed`. A pong for no ping of ours, or
    /// for a ping to another peer, changes nothing.
    pub fn pong_received(&mut self, now: Instant, peer: NodeId, from: SocketAddr, tx: Tx, observed: SocketAddr) {
        let Some(sent) = self.pings.remove(&tx) else {
            tracing::trace!(%peer, %from, "pong for no ping of ours");
            return;
        };
        if sent.peer != peer {
            debug!(%peer, %from, "pong from another node than pinged");
            return;
        }
        self.confirm(now, peer, from, now.saturating_duration_since(sent.sent), observed);
    }

    fn confirm(&mut self, now: Instant, peer: NodeId, addr: SocketAddr, rtt: Duration, observed: SocketAddr) {
        let before = self.state(peer);
        let take = match before {
            PathState::Direct { addr: current, .. } if current == addr => true,
            // Another path answered: keep the current one while it lives.
            PathState::Direct { last_pong, .. } => now.saturating_duration_since(last_pong) > HEARTBEAT_INTERVAL * 2,
            PathState::Unknown | PathState::Relayed => true,
        };
        if !take {
            return;
        }
        if before.route() != Some(Route::Direct(addr)) {
            info!(%peer, %addr, rtt_us = rtt.as_micros() as u64, %observed, before = ?before.route(), "direct path confirmed");
        }
        self.set_state(peer, PathState::Direct { addr, last_pong: now, rtt });
        let p = self.peer(peer);
        if p.alive.is_some_and(|a| now > a.since) {
            p.alive = None;
        }
        if let Some(punch) = p.punch.take_if(|punch| now >= punch.since) {
            info!(%peer, route = ?Route::Direct(addr), took_ms = now.saturating_duration_since(punch.since).as_millis() as u64, "punched a direct path");
        }
    }

    /// The rendezvous published new addresses for `peer` (its NAT mapping
    /// changed): a peer we route is punched again at once, since its old
    /// direct path is probably dead and its NAT would filter our packets to
    /// the new one until both sides send.
    pub fn peer_moved(&mut self, peer: NodeId) {
        if self.state(peer) != PathState::Unknown {
            info!(%peer, "peer's addresses changed; punching again");
            self.push(Action::RequestPunch { peer });
        }
    }

    /// The peer has no connection any more: it is forgotten (no heartbeats,
    /// no upgrades; the next connection punches afresh since NAT mappings
    /// of an idle path expire), unless a punch with it is under way (a
    /// connection is about to be made).
    pub fn idle(&mut self, peer: NodeId) {
        if !self.is_punching(peer) {
            self.forget(peer);
        }
    }

    /// Forgets `peer` (it left): its route, punch, liveness check and
    /// pending pings.
    pub fn forget(&mut self, peer: NodeId) {
        self.peers.remove(&peer);
        self.pings.retain(|_, p| p.peer != peer);
        self.push(Action::ForgetRoutes { peer });
    }

    /// `peer` lost its rendezvous connection: if there is a direct path to
    /// it, it is pinged [`ALIVE_PINGS`] times and reported lost if it has not
    /// answered within [`ALIVE_WINDOW`]. Without a direct path there is
    /// nothing to tell a dead peer from an unreachable one. A check under way
    /// is not doubled.
    pub fn check_alive(&mut self, now: Instant, peer: NodeId) {
        let Some(p) = self.peers.get_mut(&peer) else { return };
        if !matches!(p.state, PathState::Direct { .. }) || p.alive.is_some() {
            return;
        }
        p.alive = Some(AliveCheck { since: now, pings: 0, next: now });
        self.advance_alive(now, peer);
    }

    /// Runs what is due at `now`: heartbeats, upgrades, punch rounds and
    /// ends, liveness pings and verdicts.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut fell_back = Vec::new();
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + HEARTBEAT_INTERVAL;
            fell_back = self.heartbeat(now);
        }
        if now >= self.next_upgrade {
            self.next_upgrade = now + UPGRADE_INTERVAL;
            self.upgrade(&fell_back);
        }
        let due: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.punch.as_ref().is_some_and(|x| now >= x.deadline()) || p.alive.is_some_and(|a| now >= a.next)
            })
            .map(|(id, _)| *id)
            .collect();
        for peer in due {
            self.advance_punch(now, peer);
            self.advance_alive(now, peer);
        }
    }

    /// Pings direct routes; returns the peers whose route went stale (moved
    /// to the relay, a punch requested).
    fn heartbeat(&mut self, now: Instant) -> Vec<NodeId> {
        self.pings.retain(|_, p| now.saturating_duration_since(p.sent) < PING_MEMORY);
        let direct: Vec<(NodeId, SocketAddr, Instant)> = self
            .peers
            .iter()
            .filter_map(|(id, p)| match p.state {
                PathState::Direct { addr, last_pong, .. } => Some((*id, addr, last_pong)),
                _ => None,
            })
            .collect();
        let mut stale = Vec::new();
        for (peer, addr, last_pong) in direct {
            if now.saturating_duration_since(last_pong) > DIRECT_STALE {
                warn!(%peer, "direct path stopped answering; using the relay while looking for a new one");
                self.push(Action::ReportLost { peer });
                self.set_state(peer, PathState::Relayed);
                self.peer(peer).alive = None;
                self.push(Action::RequestPunch { peer });
                stale.push(peer);
            } else {
                self.ping(now, peer, addr, None);
            }
        }
        stale
    }

    /// Asks for a punch with every relayed peer of a higher id, but those
    /// `just_asked` for by this tick's heartbeat.
    fn upgrade(&mut self, just_asked: &[NodeId]) {
        let me = self.me;
        let relayed: Vec<NodeId> = self
            .peers
            .iter()
            // One side asks, so a pair does not punch twice per interval.
            .filter(|(id, p)| {
                p.state == PathState::Relayed && p.punch.is_none() && me < **id && !just_asked.contains(id)
            })
            .map(|(id, _)| *id)
            .collect();
        for peer in relayed {
            debug!(%peer, "relayed: trying to go direct");
            self.push(Action::RequestPunch { peer });
        }
    }

    /// Sends the punch rounds due by `now`; ends the punch at its timeout.
    fn advance_punch(&mut self, now: Instant, peer: NodeId) {
        let Some(punch) = self.peers.get_mut(&peer).and_then(|p| p.punch.as_mut()) else { return };
        let mut pings = Vec::new();
        while let Some(offset) = PUNCH_SCHEDULE.get(punch.round)
            && now >= punch.since + *offset
        {
            let ttl = (punch.round == 0).then_some(LOW_TTL);
            pings.extend(punch.candidates.iter().map(|addr| (*addr, ttl)));
            punch.round += 1;
        }
        let over = punch.round == PUNCH_SCHEDULE.len() && now >= punch.since + PUNCH_TIMEOUT;
        for (addr, ttl) in pings {
            self.ping(now, peer, addr, ttl);
        }
        if over {
            self.peer(peer).punch = None;
            // A direct path found by this punch ended it at its pong; an
            // older one that still answers is kept.
            if !matches!(self.state(peer), PathState::Direct { .. }) {
                info!(%peer, "no direct path found; using the relay");
                self.set_state(peer, PathState::Relayed);
            }
        }
    }

    /// Sends the liveness ping due by `now`, or gives the verdict.
    fn advance_alive(&mut self, now: Instant, peer: NodeId) {
        let Some(p) = self.peers.get_mut(&peer) else { return };
        let Some(check) = p.alive.as_mut().filter(|a| now >= a.next) else { return };
        let PathState::Direct { addr, last_pong, .. } = p.state else {
            p.alive = None;
            return;
        };
        if last_pong > check.since {
            p.alive = None;
        } else if check.pings < ALIVE_PINGS {
            check.pings += 1;
            check.next = now + ALIVE_WINDOW / ALIVE_PINGS;
            self.ping(now, peer, addr, None);
        } else {
            p.alive = None;
            info!(%peer, "away peer does not answer on its direct path: reporting it lost");
            self.push(Action::ReportLost { peer });
        }
        self.tidy(peer);
    }
}

#[cfg(test)]
mod tests {
    //! The state machine alone: synthetic instants, no sockets, no tasks.

    use super::*;

    /// This node; it has the lower id, so it dials and asks for upgrades.
    const ME: NodeId = NodeId(1);
    const PEER: NodeId = NodeId(2);
    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A machine created at `t0`, past its first (empty) timer tick.
    fn machine() -> (Paths, Instant) {
        let t0 = Instant::now();
        let mut paths = Paths::new(ME, t0, [7; 32]);
        paths.handle_timeout(t0);
        assert_eq!(drain(&mut paths), []);
        (paths, t0)
    }

    fn drain(paths: &mut Paths) -> Vec<Action> {
        std::iter::from_fn(|| paths.poll_action()).collect()
    }

    /// The pings among `actions`: (address, tx, ttl).
    fn pings(actions: &[Action]) -> Vec<(SocketAddr, Tx, Option<u8>)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::SendPing { addr, tx, ttl, .. } => Some((*addr, *tx, *ttl)),
                _ => None,
            })
            .collect()
    }

    /// The actions among `actions` that are not pings or pongs.
    fn decisions(actions: &[Action]) -> Vec<Action> {
        actions.iter().filter(|a| !matches!(a, Action::SendPing { .. } | Action::SendPong { .. })).cloned().collect()
    }

    /// Runs the timers from `from` to `to` as the driver does (sleeping
    /// exactly until [`Paths::poll_timeout`]), with the actions at each
    /// instant.
    fn run_timers(paths: &mut Paths, from: Instant, to: Instant) -> Vec<(Instant, Action)> {
        let mut out = Vec::new();
        let mut now = from;
        loop {
            let next = paths.poll_timeout().max(now);
            if next > to {
                return out;
            }
            now = next;
            paths.handle_timeout(now);
            out.extend(drain(paths).into_iter().map(|a| (now, a)));
        }
    }

    /// `peer` made direct at `addr` at `at` (through a pong to a ping).
    fn go_direct(paths: &mut Paths, at: Instant, peer: NodeId, to: SocketAddr) {
        paths.ping(at, peer, to, None);
        let (_, tx, _) = pings(&drain(paths))[0];
        paths.pong_received(at + MS, peer, to, tx, addr("198.51.100.1:4000"));
        assert_eq!(drain(paths), [Action::SetRoute { peer, route: Route::Direct(to) }]);
    }

    #[test]
    fn relay_to_direct_a_punch_pong_makes_the_route_direct_and_ready_is_sent_once() {
        let (mut p, t0) = machine();
        let (x, y) = (addr("192.0.2.10:4000"), addr("10.0.0.2:4000"));
        // A connection wants the peer: a punch is asked for once.
        p.need_route(PEER);
        assert_eq!(drain(&mut p), [Action::RequestPunch { peer: PEER }]);
        // No punch within RELAY_AFTER: the relay meanwhile.
        p.use_relay(PEER);
        assert_eq!(drain(&mut p), [Action::SetRoute { peer: PEER, route: Route::Relay }]);
        p.use_relay(PEER);
        p.need_route(PEER);
        assert_eq!(drain(&mut p), [], "a relayed peer has a route");

        // The punch starts: Ready, and round 0 at once, low TTL, to every candidate.
        let t1 = t0 + RELAY_AFTER + 10 * MS;
        p.start_punch(t1, PEER, Some(vec![x, y]));
        let actions = drain(&mut p);
        assert_eq!(decisions(&actions), [Action::Ready { peer: PEER }]);
        let round0 = pings(&actions);
        assert_eq!(
            round0.iter().map(|(a, _, ttl)| (*a, *ttl)).collect::<Vec<_>>(),
            [(x, Some(LOW_TTL)), (y, Some(LOW_TTL))]
        );
        // Asked again while it runs: not doubled, no second Ready.
        p.start_punch(t1 + MS, PEER, Some(vec![x, y]));
        assert_eq!(drain(&mut p), []);
        assert_eq!(p.poll_timeout(), t1 + PUNCH_SCHEDULE[1]);

        // Round 1 at 20 ms, normal TTL; x answers it 5 ms later.
        let round1 = run_timers(&mut p, t1, t1 + PUNCH_SCHEDULE[1]);
        assert!(round1.iter().all(|(at, _)| *at == t1 + PUNCH_SCHEDULE[1]));
        let round1: Vec<_> = round1.into_iter().map(|(_, a)| a).collect();
        assert_eq!(pings(&round1).iter().map(|(a, _, ttl)| (*a, *ttl)).collect::<Vec<_>>(), [(x, None), (y, None)]);
        let tx = pings(&round1)[0].1;
        let t2 = t1 + PUNCH_SCHEDULE[1] + 5 * MS;
        p.pong_received(t2, PEER, x, tx, addr("198.51.100.1:4000"));
        assert_eq!(drain(&mut p), [Action::SetRoute { peer: PEER, route: Route::Direct(x) }]);
        assert_eq!(p.state(PEER), PathState::Direct { addr: x, last_pong: t2, rtt: 5 * MS });
        assert!(!p.is_punching(PEER), "the first pong ends the punch");

        // A late pong from the other candidate does not move a live path;
        // the same pong twice is ignored.
        p.pong_received(t2 + MS, PEER, y, round0[1].1, addr("198.51.100.1:4000"));
        p.pong_received(t2 + MS, PEER, x, tx, addr("198.51.100.1:4000"));
        assert_eq!(drain(&mut p), []);
        assert_eq!(p.route(PEER), Some(Route::Direct(x)));

        // Nothing more until the heartbeat: no rounds, no fallback, no Ready.
        let later = run_timers(&mut p, t2, t0 + HEARTBEAT_INTERVAL - MS);
        assert_eq!(later, []);
        let heartbeat = run_timers(&mut p, t2, t0 + HEARTBEAT_INTERVAL);
        assert_eq!(heartbeat.len(), 1);
        assert!(matches!(heartbeat[0].1, Action::SendPing { addr, ttl: None, .. } if addr == x));
    }

    #[test]
    fn a_punch_without_pongs_follows_the_schedule_then_falls_back_to_the_relay() {
        let (mut p, t0) = machine();
        let (x, y) = (addr("192.0.2.10:4000"), addr("10.0.0.2:4000"));
        let t1 = t0 + 3 * MS;
        p.start_punch(t1, PEER, Some(vec![x, y]));
        let mut all: Vec<(Instant, Action)> = drain(&mut p).into_iter().map(|a| (t1, a)).collect();
        all.extend(run_timers(&mut p, t1, t1 + PUNCH_TIMEOUT + SEC));
        // Every round at its offset, to both candidates, only round 0 low.
        for (round, offset) in PUNCH_SCHEDULE.iter().enumerate() {
            let sent: Vec<_> = all
                .iter()
                .filter(|(at, _)| *at == t1 + *offset)
                .filter_map(|(_, a)| match a {
                    Action::SendPing { addr, ttl, .. } => Some((*addr, *ttl)),
                    _ => None,
                })
                .collect();
            let ttl = (round == 0).then_some(LOW_TTL);
            assert_eq!(sent, [(x, ttl), (y, ttl)], "round {round}");
        }
        assert_eq!(pings(&all.iter().map(|(_, a)| a.clone()).collect::<Vec<_>>()).len(), 2 * PUNCH_SCHEDULE.len());
        // At the timeout: the relay.
        let fallback: Vec<_> = all.iter().filter(|(_, a)| matches!(a, Action::SetRoute { .. })).cloned().collect();
        assert_eq!(fallback, [(t1 + PUNCH_TIMEOUT, Action::SetRoute { peer: PEER, route: Route::Relay })]);
        assert_eq!(p.state(PEER), PathState::Relayed);
        assert!(!p.is_punching(PEER));
        // A non-member: Ready (the dialler tries anyway), nothing to ping.
        let other = NodeId(9);
        p.start_punch(t1, other, None);
        assert_eq!(drain(&mut p), [Action::Ready { peer: other }]);
        assert!(!p.is_punching(other));
        // Never with ourselves.
        p.start_punch(t1, ME, Some(vec![x]));
        assert_eq!(drain(&mut p), []);
    }

    #[test]
    fn a_punch_that_fails_keeps_an_older_direct_path_that_still_answers() {
        let (mut p, t0) = machine();
        let x = addr("192.0.2.10:4000");
        go_direct(&mut p, t0, PEER, x);
        // The peer moved: punch again; the new candidate never answers.
        p.peer_moved(PEER);
        assert_eq!(drain(&mut p), [Action::RequestPunch { peer: PEER }]);
        p.start_punch(t0 + SEC, PEER, Some(vec![addr("192.0.2.99:1")]));
        assert_eq!(decisions(&drain(&mut p)), [Action::Ready { peer: PEER }]);
        let out = run_timers(&mut p, t0 + SEC, t0 + SEC + PUNCH_TIMEOUT);
        assert!(out.iter().all(|(_, a)| matches!(a, Action::SendPing { .. })), "{out:?}");
        assert!(!p.is_punching(PEER));
        assert_eq!(p.route(PEER), Some(Route::Direct(x)));
    }

    #[test]
    fn direct_to_relay_a_silent_path_falls_back_is_reported_and_punched_once() {
        let (mut p, t0) = machine();
        let x = addr("192.0.2.10:4000");
        go_direct(&mut p, t0, PEER, x);
        let last_pong = t0 + MS;
        let out = run_timers(&mut p, t0, t0 + 60 * SEC);
        let heartbeats: Vec<Instant> = out
            .iter()
            .filter(|(_, a)| matches!(a, Action::SendPing { addr, .. } if *addr == x))
            .map(|(at, _)| *at)
            .collect();
        // Heartbeats every 5 s while the path is not yet stale.
        let expected: Vec<Instant> = (1..=3).map(|n| t0 + HEARTBEAT_INTERVAL * n).collect();
        assert_eq!(heartbeats, expected);
        // The first heartbeat past DIRECT_STALE: lost, relay, punch, in that order, once.
        let stale_at = t0 + HEARTBEAT_INTERVAL * 4;
        assert!(stale_at - last_pong > DIRECT_STALE);
        let decided: Vec<(Instant, Action)> =
            out.iter().filter(|(_, a)| !matches!(a, Action::SendPing { .. })).cloned().collect();
        assert_eq!(
            decided[..3],
            [
                (stale_at, Action::ReportLost { peer: PEER }),
                (stale_at, Action::SetRoute { peer: PEER, route: Route::Relay }),
                (stale_at, Action::RequestPunch { peer: PEER }),
            ]
        );
        // Then only upgrades: one request per UPGRADE_INTERVAL (not a second
        // one at the same tick), never another report or route.
        let upgrades: Vec<Instant> = decided[3..]
            .iter()
            .map(|(at, a)| {
                assert_eq!(*a, Action::RequestPunch { peer: PEER });
                *at
            })
            .collect();
        assert_eq!(upgrades, [t0 + 30 * SEC, t0 + 40 * SEC, t0 + 50 * SEC, t0 + 60 * SEC]);
        assert_eq!(p.state(PEER), PathState::Relayed);
    }

    #[test]
    fn rebinding_a_pong_from_a_new_address_moves_the_direct_route_without_the_relay() {
        let (mut p, t0) = machine();
        let (x, y) = (addr("192.0.2.10:4000"), addr("192.0.2.10:4711"));
        go_direct(&mut p, t0, PEER, x);
        let last_x = t0 + MS;
        // The peer's NAT rebinds: its pings now come from y. Answered,
        // attributed and pinged back, but x answered recently: it stays.
        let t1 = t0 + 2 * SEC;
        p.ping_received(t1, PEER, y, [5; TX_LEN]);
        let actions = drain(&mut p);
        assert_eq!(
            actions[..2],
            [Action::Learn { peer: PEER, addr: y }, Action::SendPong { peer: PEER, addr: y, tx: [5; TX_LEN] }]
        );
        let back = pings(&actions);
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].0, y);
        p.pong_received(t1 + MS, PEER, y, back[0].1, addr("198.51.100.1:4000"));
        assert_eq!(drain(&mut p), []);
        assert_eq!(p.route(PEER), Some(Route::Direct(x)));

        // Two heartbeats later x still has not answered: the next pong from
        // y moves the route straight to y.
        let t2 = last_x + HEARTBEAT_INTERVAL * 2 + MS;
        let timers = run_timers(&mut p, t1, t2);
        assert!(timers.iter().all(|(_, a)| matches!(a, Action::SendPing { addr, .. } if *addr == x)));
        p.ping_received(t2, PEER, y, [6; TX_LEN]);
        let back = pings(&drain(&mut p));
        p.pong_received(t2 + MS, PEER, y, back[0].1, addr("198.51.100.1:4000"));
        assert_eq!(drain(&mut p), [Action::SetRoute { peer: PEER, route: Route::Direct(y) }]);
        assert_eq!(p.route(PEER), Some(Route::Direct(y)));
        // A ping from the current route is answered, not pinged back.
        p.ping_received(t2 + 2 * MS, PEER, y, [7; TX_LEN]);
        assert_eq!(
            drain(&mut p),
            [Action::Learn { peer: PEER, addr: y }, Action::SendPong { peer: PEER, addr: y, tx: [7; TX_LEN] }]
        );
        // Heartbeats follow y, and nothing falls back.
        let after = run_timers(&mut p, t2, t2 + 6 * SEC);
        assert!(!after.is_empty());
        assert!(after.iter().all(|(_, a)| matches!(a, Action::SendPing { addr, .. } if *addr == y)), "{after:?}");
    }

    /// A peer at `x` that answers every ping while `up(t)` (after `RTT`), and
    /// a rendezvous that starts a punch `RTT` after each request.
    struct World {
        paths: Paths,
        events: Vec<(Instant, Event)>,
        log: Vec<(Instant, Action)>,
    }

    enum Event {
        Pong(SocketAddr, Tx),
        Punch,
    }

    const RTT: Duration = Duration::from_millis(10);

    impl World {
        fn run(&mut self, from: Instant, to: Instant, x: SocketAddr, up: impl Fn(Instant) -> bool) {
            let mut now = from;
            self.absorb(now, x, &up);
            loop {
                self.events.sort_by_key(|(at, _)| *at);
                let timer = self.paths.poll_timeout().max(now);
                let event = self.events.first().map(|(at, _)| *at);
                let next = event.map_or(timer, |e| e.min(timer));
                if next > to {
                    return;
                }
                now = next;
                if event == Some(now) {
                    match self.events.remove(0).1 {
                        Event::Pong(from, tx) => {
                            self.paths.pong_received(now, PEER, from, tx, addr("198.51.100.1:4000"))
                        }
                        Event::Punch => self.paths.start_punch(now, PEER, Some(vec![x])),
                    }
                } else {
                    self.paths.handle_timeout(now);
                }
                self.absorb(now, x, &up);
            }
        }

        /// Takes the machine's actions at `now`: pings to `x` answered while
        /// it is up (not the low-TTL ones, which stop short of the peer),
        /// punch requests granted.
        fn absorb(&mut self, now: Instant, x: SocketAddr, up: &impl Fn(Instant) -> bool) {
            for action in drain(&mut self.paths) {
                match &action {
                    Action::SendPing { addr, tx, ttl, .. } if *addr == x && ttl.is_none() && up(now) => {
                        self.events.push((now + RTT, Event::Pong(*addr, *tx)))
                    }
                    Action::RequestPunch { .. } => self.events.push((now + RTT, Event::Punch)),
                    _ => {}
                }
                self.log.push((now, action));
            }
        }

        fn count(&self, f: impl Fn(&Action) -> bool) -> usize {
            self.log.iter().filter(|(_, a)| f(a)).count()
        }
    }

    #[test]
    fn flapping_paths_switch_routes_correctly_without_a_storm_of_punches() {
        let (paths, t0) = machine();
        let x = addr("192.0.2.10:4000");
        let mut w = World { paths, events: vec![], log: vec![] };
        w.paths.need_route(PEER);
        w.run(t0, t0 + 5 * SEC, x, |_| true);
        assert_eq!(w.paths.route(PEER), Some(Route::Direct(x)));

        // Lossy: every other ping is lost, but never three heartbeats in a
        // row: the path stays, nothing is asked for.
        let before = w.log.len();
        let lossy = |t: Instant| ((t - t0).as_secs() / 5).is_multiple_of(2);
        w.run(t0 + 5 * SEC, t0 + 65 * SEC, x, lossy);
        let phase: Vec<_> = w.log[before..].iter().map(|(_, a)| a.clone()).collect();
        assert_eq!(decisions(&phase), [], "a lossy path that still answers keeps its route");

        // Up and down: 40 s silent, 40 s answering, five times.
        let start = t0 + 65 * SEC;
        let end = start + 400 * SEC;
        let before = w.log.len();
        let up = move |t: Instant| t < start || (t - start).as_secs() / 40 % 2 == 1;
        w.run(start, end, x, up);
        let log = &w.log[before..];
        let routes: Vec<(Instant, Route)> = log
            .iter()
            .filter_map(|(at, a)| match a {
                Action::SetRoute { route, .. } => Some((*at, *route)),
                _ => None,
            })
            .collect();
        // Each down goes to the relay once, each up comes back once: the
        // routes alternate, starting with the relay.
        assert_eq!(routes.len(), 10, "{routes:?}");
        for (i, (at, route)) in routes.iter().enumerate() {
            let expected = if i % 2 == 0 { Route::Relay } else { Route::Direct(x) };
            assert_eq!(*route, expected, "switch {i} at {:?}", *at - start);
            let phase_start = start + 40 * SEC * i as u32;
            let bound = if i % 2 == 0 {
                // Stale: DIRECT_STALE after the last pong, on a heartbeat.
                DIRECT_STALE + HEARTBEAT_INTERVAL
            } else {
                // Back: at the next upgrade's punch.
                UPGRADE_INTERVAL + PUNCH_SCHEDULE[1] + RTT * 3
            };
            assert!(*at >= phase_start && *at <= phase_start + bound, "switch {i} at {:?}", *at - start);
        }
        let lost = log.iter().filter(|(_, a)| matches!(a, Action::ReportLost { .. })).count();
        assert_eq!(lost, 5, "each fall to the relay reported once");
        // Punches: one per fallback plus at most one per upgrade interval.
        let requests: Vec<Instant> =
            log.iter().filter(|(_, a)| matches!(a, Action::RequestPunch { .. })).map(|(at, _)| *at).collect();
        assert!(requests.len() <= 5 + 400 / 10, "{} requests", requests.len());
        for pair in requests.windows(3) {
            assert!(pair[2] - pair[0] >= UPGRADE_INTERVAL, "a storm of punch requests: {requests:?}");
        }
        // Each punch started sends its schedule once to the one candidate.
        let punches = log.iter().filter(|(_, a)| matches!(a, Action::Ready { .. })).count();
        let low = log.iter().filter(|(_, a)| matches!(a, Action::SendPing { ttl: Some(_), .. })).count();
        assert_eq!(low, punches);
        assert!(w.count(|a| matches!(a, Action::Ready { .. })) <= requests.len() + 1);
        assert!(w.paths.pending_pings() <= 2 * PUNCH_SCHEDULE.len() + 4);
    }

    #[test]
    fn a_relayed_peer_is_upgraded_every_interval_by_the_lower_id_only() {
        let (mut p, t0) = machine();
        let (higher, lower) = (NodeId(5), NodeId(0));
        p.use_relay(higher);
        p.use_relay(lower);
        assert_eq!(decisions(&drain(&mut p)).len(), 2);
        let out = run_timers(&mut p, t0, t0 + 35 * SEC);
        assert_eq!(
            out,
            [
                (t0 + 10 * SEC, Action::RequestPunch { peer: higher }),
                (t0 + 20 * SEC, Action::RequestPunch { peer: higher }),
                (t0 + 30 * SEC, Action::RequestPunch { peer: higher }),
            ]
        );
        // Not while a punch runs.
        p.start_punch(t0 + 39 * SEC, higher, Some(vec![addr("192.0.2.10:4000")]));
        drain(&mut p);
        let out = run_timers(&mut p, t0 + 39 * SEC, t0 + 40 * SEC);
        assert!(!out.iter().any(|(_, a)| matches!(a, Action::RequestPunch { .. })), "{out:?}");
    }

    #[test]
    fn check_alive_reports_a_silent_direct_peer_once_and_an_answering_one_never() {
        let (mut p, t0) = machine();
        let x = addr("192.0.2.10:4000");
        go_direct(&mut p, t0, PEER, x);
        // Answered: the first ping's pong ends the check.
        let t1 = t0 + SEC;
        p.check_alive(t1, PEER);
        let first = pings(&drain(&mut p));
        assert_eq!(first.len(), 1);
        p.pong_received(t1 + 20 * MS, PEER, x, first[0].1, addr("198.51.100.1:4000"));
        assert_eq!(drain(&mut p), []);
        let out = run_timers(&mut p, t1, t1 + ALIVE_WINDOW + SEC / 2);
        assert_eq!(out, [], "answered: no more pings, no report");

        // Silent: ALIVE_PINGS pings within the window, then one report.
        let t2 = t0 + HEARTBEAT_INTERVAL + SEC / 2;
        run_timers(&mut p, t1 + ALIVE_WINDOW + SEC / 2, t2);
        p.check_alive(t2, PEER);
        let mut out: Vec<(Instant, Action)> = drain(&mut p).into_iter().map(|a| (t2, a)).collect();
        p.check_alive(t2 + 10 * MS, PEER);
        assert_eq!(drain(&mut p), [], "a check under way is not doubled");
        out.extend(run_timers(&mut p, t2, t2 + ALIVE_WINDOW * 2));
        let alive_pings: Vec<Instant> = out
            .iter()
            .filter(|(at, a)| matches!(a, Action::SendPing { .. }) && *at < t2 + ALIVE_WINDOW)
            .map(|(at, _)| *at)
            .collect();
        assert_eq!(alive_pings, [t2, t2 + SEC, t2 + 2 * SEC]);
        let reports: Vec<_> = out.iter().filter(|(_, a)| matches!(a, Action::ReportLost { .. })).collect();
        assert_eq!(reports, [&(t2 + ALIVE_WINDOW, Action::ReportLost { peer: PEER })]);
        // The check changes no route (heartbeats decide that).
        assert_eq!(p.route(PEER), Some(Route::Direct(x)));

        // A relayed or unknown peer: nothing to tell, nothing done.
        p.use_relay(NodeId(3));
        drain(&mut p);
        p.check_alive(t2, NodeId(3));
        p.check_alive(t2, NodeId(4));
        assert_eq!(drain(&mut p), []);
    }

    #[test]
    fn forgetting_a_peer_drops_all_its_state_and_pending_pings() {
        let (mut p, t0) = machine();
        let (x, other_addr) = (addr("192.0.2.10:4000"), addr("192.0.2.11:4000"));
        let other = NodeId(3);
        go_direct(&mut p, t0, PEER, x);
        go_direct(&mut p, t0, other, other_addr);
        p.check_alive(t0 + SEC, PEER);
        p.start_punch(t0 + SEC, PEER, Some(vec![addr("192.0.2.12:1")]));
        let mine = pings(&drain(&mut p));
        p.ping(t0 + SEC, other, other_addr, None);
        let theirs = pings(&drain(&mut p));
        assert_eq!(p.pending_pings(), mine.len() + theirs.len());

        // Idle while punching: kept (a connection is about to be made).
        p.idle(PEER);
        assert_eq!(drain(&mut p), []);
        assert!(p.is_punching(PEER));

        p.forget(PEER);
        assert_eq!(drain(&mut p), [Action::ForgetRoutes { peer: PEER }]);
        assert_eq!(p.state(PEER), PathState::Unknown);
        assert!(!p.is_punching(PEER));
        assert_eq!(p.pending_pings(), theirs.len());
        // Its old pongs do nothing; its timers are gone.
        p.pong_received(t0 + SEC + MS, PEER, x, mine[0].1, addr("198.51.100.1:4000"));
        assert_eq!(drain(&mut p), []);
        assert_eq!(p.poll_timeout(), t0 + HEARTBEAT_INTERVAL);
        let out = run_timers(&mut p, t0 + SEC, t0 + 60 * SEC);
        assert!(out.iter().all(|(_, a)| match a {
            Action::SendPing { peer, .. } | Action::ReportLost { peer } | Action::SetRoute { peer, .. } =>
                *peer == other,
            Action::RequestPunch { peer } => *peer == other,
            _ => false,
        }));
        assert_eq!(p.route(other), Some(Route::Relay), "the other peer went stale on its own");

        // An idle peer with no punch is forgotten too.
        p.idle(other);
        assert_eq!(drain(&mut p), [Action::ForgetRoutes { peer: other }]);
        assert_eq!(p.state(other), PathState::Unknown);
        // peer_moved for a peer we do not route: nothing.
        p.peer_moved(other);
        assert_eq!(drain(&mut p), []);
    }

    #[test]
    fn the_pending_ping_memory_is_bounded_and_keeps_the_newest() {
        let (mut p, t0) = machine();
        // A peer pings us from ever new addresses: each is pinged back.
        let mut last = None;
        for i in 0..(MAX_PENDING_PINGS as u32 + 500) {
            let from = SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 4000 + (i % 7) as u16));
            let at = t0 + Duration::from_micros(i.into());
            p.ping_received(at, PEER, from, [1; TX_LEN]);
            last = Some((from, pings(&drain(&mut p))[0].1));
            assert!(p.pending_pings() <= MAX_PENDING_PINGS);
        }
        assert!(p.pending_pings() > MAX_PENDING_PINGS - MAX_PENDING_PINGS / 10);
        // The newest ping is still remembered: its pong works.
        let (from, tx) = last.unwrap();
        p.pong_received(t0 + SEC, PEER, from, tx, addr("198.51.100.1:4000"));
        assert_eq!(drain(&mut p), [Action::SetRoute { peer: PEER, route: Route::Direct(from) }]);
        // Pings older than PING_MEMORY are dropped at the next heartbeat.
        run_timers(&mut p, t0, t0 + PING_MEMORY + HEARTBEAT_INTERVAL);
        assert!(p.pending_pings() <= 3, "{}", p.pending_pings());
    }

    #[test]
    fn pongs_count_only_for_our_own_pings_to_that_peer() {
        let (mut p, t0) = machine();
        let x = addr("192.0.2.10:4000");
        p.ping(t0, PEER, x, None);
        let tx = pings(&drain(&mut p))[0].1;
        // Unknown transaction, and another peer echoing our ping: nothing.
        p.pong_received(t0 + MS, PEER, x, [9; TX_LEN], x);
        p.pong_received(t0 + MS, NodeId(3), x, tx, x);
        assert_eq!(drain(&mut p), []);
        assert_eq!(p.route(PEER), None);
        // The transaction is spent by the wrong pong.
        p.pong_received(t0 + 2 * MS, PEER, x, tx, x);
        assert_eq!(drain(&mut p), []);
        // Transaction ids differ.
        p.ping(t0, PEER, x, None);
        p.ping(t0, PEER, x, None);
        let txs = pings(&drain(&mut p));
        assert_ne!(txs[0].1, txs[1].1);
    }
}
