//! The rendezvous' state: clusters, their members, and the membership feed.
//!
//! Pure state, no I/O: connection handlers call in with what a client asked
//! and get back an answer or a [`Refusal`]. Every change to a cluster's
//! membership is numbered and broadcast to that cluster's subscribers.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boxer_proto::control::{
    CloseCode, ClusterInfo, CreateClusterRequest, DEFAULT_OVERLAY, ExitStatus, JoinRequest, Joined, LogLine, NodeState,
    PathReport, WatchRequest,
};
use boxer_proto::disco::DiscoKey;
use boxer_proto::membership::{MemberChange, MembershipEvent, MembershipSnapshot};
use boxer_proto::{Fingerprint, Member, NodeId, names};
use ipnet::Ipv4Net;
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};

use crate::store::{FORMAT, Saved, SavedCluster};

/// Events buffered per cluster for slow subscribers. A subscriber that falls
/// further behind gets a fresh snapshot instead (see `Lagged`), so this only
/// trades memory for fewer resyncs: 4096 covers a 1000-node cluster starting
/// at once (a join and a listening change per node) without any.
pub const EVENT_BUFFER: usize = 4096;

/// Log batches buffered per cluster for watchers; a watcher further behind
/// is told how many batches it lost (the files keep everything). With
/// batches of at most 256 KiB this bounds the memory to 32 MiB per cluster.
pub const LOG_BUFFER: usize = 128;

/// State changes and exit reports buffered per cluster. A node sends a
/// state per `wait_for` target it waits on, then `Running` or `GaveUp`, and
/// one exit report: a 1000-node cluster starting and ending at once (one
/// wait each: 3000 messages) stays well under this, so a watcher would
/// have to fall far behind to lose one.
pub const LIFECYCLE_BUFFER: usize = 8192;

/// Output or exit of one node, as broadcast to a cluster's log watchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeOutput {
    /// Output lines.
    Lines {
        /// `<service>-<index>`.
        node: String,
        /// The lines.
        lines: Vec<LogLine>,
    },
    /// The node's paths to its peers changed.
    Paths {
        /// `<service>-<index>`.
        node: String,
        /// Its paths.
        paths: Vec<PathReport>,
    },
    /// The program ended.
    Exited {
        /// `<service>-<index>`.
        node: String,
        /// How.
        status: ExitStatus,
    },
    /// The node's state changed (waiting, running, gave up).
    State {
        /// `<service>-<index>`.
        node: String,
        /// The new state.
        state: NodeState,
    },
}

/// How long a member whose connection to the rendezvous was lost keeps its
/// place (id, address, names) while its runtime reconnects. The others do
/// not see it leave meanwhile, so their connections to it are untouched.
/// It covers the cases a runtime survives: a restarted rendezvous (every
/// member starts away), and one unreachable for 30 s: loss noticed after the
/// 5 s idle timeout, plus the outage, plus the runtimes' 5 s back-off cap,
/// with room to spare. A member that is really gone is ended sooner by a
/// [`Registry::peer_lost`] report when anyone had a direct connection to it.
pub const AWAY_GRACE: Duration = Duration::from_secs(60);

/// How long after a member's connection was lost a peer's report that it is
/// silent ([`Registry::peer_lost`]) counts. A peer told it went away probes
/// it for 3 s; a direct path found stale on heartbeats is noticed up to
/// 21 s after the last answer. Older reports are about another time.
pub const REPORT_WINDOW: Duration = Duration::from_secs(30);

/// A member whose connection to the rendezvous was lost.
#[derive(Debug)]
struct Away {
    /// Removed at this time unless it rejoins.
    until: Instant,
    /// When its connection was lost, and the members told so at that time
    /// (the only ones whose report that it is silent counts). `None` for
    /// members taken back from disk: nobody was told, and a report then is
    /// about the time before the restart.
    lost: Option<(Instant, std::collections::HashSet<NodeId>)>,
}

/// How a member's session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// It closed its connection, or the rendezvous did (exit recorded,
    /// refusal, cluster deleted): it is gone.
    Left,
    /// Its connection went silent: it may come back within [`AWAY_GRACE`].
    Lost,
}

/// What [`Registry::leave`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveOutcome {
    /// The member was removed and its departure published.
    Removed,
    /// The member is away: kept for [`AWAY_GRACE`] while it reconnects.
    Away,
    /// Nothing: a newer session of the member took over, the member or its
    /// cluster was already gone, or the rendezvous is shutting down (its
    /// members are to rejoin the next rendezvous process).
    Unchanged,
}

/// Longest accepted join or admin token.
pub const MAX_TOKEN_LEN: usize = 256;

/// Largest number of local addresses a node may announce.
pub const MAX_LOCAL_ADDRS: usize = 16;

/// Largest number of listening ports a node may announce. At up to 3 bytes
/// each this keeps a member under 2 KiB, so a snapshot of several hundred
/// members fits one frame.
pub const MAX_LISTENING: usize = 512;

/// A refused request: the close code and the reason shown to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Refusal {
    /// Close code sent with the reason.
    pub code: CloseCode,
    /// Human-readable reason.
    pub reason: String,
}

impl Refusal {
    fn new(code: CloseCode, reason: impl Into<String>) -> Self {
        Self { code, reason: reason.into() }
    }
}

/// A live subscription to a cluster's changes.
#[derive(Debug)]
pub struct Feed {
    /// Numbered changes after the snapshot the subscriber got.
    pub events: broadcast::Receiver<MembershipEvent>,
    /// Becomes `true` when the cluster is deleted.
    pub deleted: watch::Receiver<bool>,
    /// Node output lines and paths, for watchers that asked for them.
    pub output: Option<broadcast::Receiver<NodeOutput>>,
    /// Node states and exits, for watchers that asked for output: on their
    /// own channel so that a watcher behind on output loses lines, not these.
    pub lifecycle: Option<broadcast::Receiver<NodeOutput>>,
}

#[derive(Debug)]
struct Cluster {
    info: ClusterInfo,
    next_id: u32,
    seq: u64,
    members: BTreeMap<NodeId, Member>,
    events: broadcast::Sender<MembershipEvent>,
    deleted: watch::Sender<bool>,
    output: broadcast::Sender<NodeOutput>,
    lifecycle: broadcast::Sender<NodeOutput>,
    /// The last state each member sent, for watchers that come later.
    states: HashMap<NodeId, (String, NodeState)>,
    /// Key of the members' path probes.
    disco_key: DiscoKey,
    /// Direct delivery to each member's session.
    mailboxes: HashMap<NodeId, MailboxSenders>,
    /// Members whose connection was lost, with the time they are removed
    /// unless they rejoin.
    away: HashMap<NodeId, Away>,
    /// The id each replica name had when its member was removed: a new
    /// node under that name (a replacement) gets it back, with its overlay
    /// address, so that peers reaching it by name or by a cached address
    /// find the new one. Kept in memory only: after a rendezvous restart a
    /// replacement gets a new address.
    retired: HashMap<String, u32>,
}

/// Punch requests queued for one member's session; more are dropped.
///
/// A member meeting every peer of a cluster at once (a mesh starting, a
/// framework's workers all dialling each other) gets a notification per
/// pair from its own requests and its peers' (up to two per peer) within a
/// few hundred ms, while its session may be slow to write them out (a busy
/// machine). A dropped notification is a one-sided punch: the peer never
/// pings back through its NAT, the punch fails, and the pair runs on the
/// relay until the next upgrade attempt 10 s later (at 64, a 100-node mesh
/// in the lab ran nearly all on the relay: 30,000 failed punches). 1024
/// covers a 500-node mesh starting at once; an entry is a node id, and the
/// channel only allocates what is queued. Each member's own requests are
/// rate-limited (`session::PUNCH_RATE`), so this is not a lever for abuse.
pub const PUNCH_QUEUE: usize = 1024;

/// Relayed packets queued for one member; more are dropped like on a
/// congested UDP path (and QUIC slows down).
pub const RELAY_QUEUE: usize = 2048;

#[derive(Debug)]
struct MailboxSenders {
    punch: mpsc::Sender<NodeId>,
    away: mpsc::Sender<NodeId>,
    relay: mpsc::Sender<RelayPacket>,
    /// An admin asked the member to stop ([`Registry::stop_member`]).
    stop: mpsc::Sender<()>,
    /// The session this mailbox belongs to.
    session: u64,
    /// Dropped when a newer session of the member replaces this one.
    _current: oneshot::Sender<()>,
}

/// A relayed packet: the other node and its QUIC packet.
pub type RelayPacket = (NodeId, Vec<u8>);

/// What other members send one member through the rendezvous.
#[derive(Debug)]
pub struct Mailbox {
    /// Peers to punch with now.
    pub punch: mpsc::Receiver<NodeId>,
    /// Members that just went away: probe them, report them if silent.
    pub away: mpsc::Receiver<NodeId>,
    /// Packets relayed from peers.
    pub relay: mpsc::Receiver<RelayPacket>,
    /// Tell the member to stop ([`boxer_proto::control::ServerMessage::Stop`]).
    pub stop: mpsc::Receiver<()>,
    /// Identifies the session to [`Registry::leave`].
    pub session: u64,
    /// Resolves (with an error) when a newer session of the same member
    /// took over: this one must end.
    pub superseded: oneshot::Receiver<()>,
}

impl Cluster {
    fn snapshot(&self) -> MembershipSnapshot {
        MembershipSnapshot { seq: self.seq, members: self.members.values().cloned().collect() }
    }

    /// A subscription; `output` only for watchers that read it (an unread
    /// receiver would only pin memory).
    fn feed(&self, output: bool) -> Feed {
        Feed {
            events: self.events.subscribe(),
            deleted: self.deleted.subscribe(),
            output: output.then(|| self.output.subscribe()),
            lifecycle: output.then(|| self.lifecycle.subscribe()),
        }
    }

    fn publish(&mut self, change: MemberChange) {
        match &change {
            MemberChange::Joined(m) => {
                self.members.insert(m.node_id, m.clone());
            }
            MemberChange::Left { node_id } => {
                self.members.remove(node_id);
            }
            MemberChange::Listening { node_id, ports } => {
                if let Some(m) = self.members.get_mut(node_id) {
                    m.listening = ports.clone();
                }
            }
            MemberChange::Addresses { node_id, reflexive, local } => {
                if let Some(m) = self.members.get_mut(node_id) {
                    m.reflexive = *reflexive;
                    m.local = local.clone();
                }
            }
        }
        self.seq += 1;
        // No receivers is fine: nobody is listening yet.
        let _ = self.events.send(MembershipEvent { seq: self.seq, change });
    }

    /// Overlay address of node `id`: the network address plus the id, so
    /// `node-5` is `100.96.0.5` in the default network.
    fn address_of(&self, id: u32) -> Option<Ipv4Addr> {
        let net = self.info.network;
        // Host ids run from 1 to size - 2 (network and broadcast excluded).
        let size = 1u64 << (32 - net.prefix_len());
        if (id as u64) == 0 || (id as u64) + 1 >= size {
            return None;
        }
        Some(Ipv4Addr::from(u32::from(net.network()) + id))
    }
}

/// Every cluster of one rendezvous.
#[derive(Debug)]
pub struct Registry {
    admin_token: String,
    clusters: HashMap<String, Cluster>,
    /// Counts changes worth saving (see [`Registry::version`]).
    version: u64,
    /// Woken on every such change.
    changed: Arc<Notify>,
    /// The last session number given out.
    sessions: u64,
    /// Set by [`Registry::close`].
    closing: bool,
}

/// Compares two secrets in time independent of where they differ.
fn secret_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A fresh random token: 128 bits, hex.
/// A fresh random disco key.
fn random_key() -> DiscoKey {
    let mut key = DiscoKey::default();
    getrandom::fill(&mut key).expect("the OS random source is available");
    key
}

/// A fresh random token.
pub fn random_token() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    hex::encode(bytes)
}

impl Cluster {
    fn new(info: ClusterInfo, disco_key: DiscoKey) -> Self {
        Self {
            info,
            next_id: 1,
            seq: 0,
            members: BTreeMap::new(),
            events: broadcast::channel(EVENT_BUFFER).0,
            deleted: watch::channel(false).0,
            output: broadcast::channel(LOG_BUFFER).0,
            lifecycle: broadcast::channel(LIFECYCLE_BUFFER).0,
            states: HashMap::new(),
            disco_key,
            mailboxes: HashMap::new(),
            away: HashMap::new(),
            retired: HashMap::new(),
        }
    }

    /// Removes a member and publishes that it left.
    fn remove(&mut self, node_id: NodeId) {
        self.mailboxes.remove(&node_id);
        self.states.remove(&node_id);
        self.away.remove(&node_id);
        if let Some(m) = self.members.get(&node_id) {
            self.retired.insert(m.replica_name(), node_id.0);
            self.publish(MemberChange::Left { node_id });
        }
    }
}

impl Registry {
    /// An empty registry guarded by `admin_token`.
    pub fn new(admin_token: String) -> Self {
        Self { admin_token, clusters: HashMap::new(), version: 0, changed: Arc::default(), sessions: 0, closing: false }
    }

    /// A registry with the clusters of `saved` (a restarted rendezvous).
    /// Every member is away until it rejoins, for at most [`AWAY_GRACE`]
    /// from `now`.
    pub fn restore(admin_token: String, saved: Saved, now: Instant) -> Self {
        let mut registry = Self::new(admin_token);
        for c in saved.clusters {
            let mut cluster = Cluster::new(c.info, c.disco_key);
            cluster.next_id = c.next_id;
            cluster.seq = c.seq;
            for m in c.members {
                cluster.away.insert(m.node_id, Away { until: now + AWAY_GRACE, lost: None });
                cluster.members.insert(m.node_id, m);
            }
            registry.clusters.insert(cluster.info.name.clone(), cluster);
        }
        registry
    }

    /// What [`Registry::restore`] needs, as of now.
    pub fn saved(&self) -> Saved {
        let mut clusters: Vec<SavedCluster> = self
            .clusters
            .values()
            .map(|c| SavedCluster {
                info: c.info.clone(),
                next_id: c.next_id,
                seq: c.seq,
                disco_key: c.disco_key,
                members: c.members.values().cloned().collect(),
            })
            .collect();
        clusters.sort_by(|a, b| a.info.name.cmp(&b.info.name));
        Saved { format: FORMAT, clusters }
    }

    /// Counts every change to what [`Registry::saved`] returns: clusters,
    /// members and their addresses and ports. A saver compares it with the
    /// version it last wrote.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Woken whenever [`Registry::version`] moves.
    pub fn changed(&self) -> Arc<Notify> {
        self.changed.clone()
    }

    fn touch(&mut self) {
        self.version += 1;
        self.changed.notify_one();
    }

    /// The rendezvous is shutting down: sessions that end from now on leave
    /// their members in place (saved), to rejoin the next process.
    pub fn close(&mut self) {
        self.closing = true;
    }

    fn check_admin(&self, token: &str) -> Result<(), Refusal> {
        if secret_eq(token, &self.admin_token) {
            Ok(())
        } else {
            Err(Refusal::new(CloseCode::Unauthorized, "wrong admin token"))
        }
    }

    fn cluster_mut(&mut self, name: &str) -> Result<&mut Cluster, Refusal> {
        self.clusters
            .get_mut(name)
            .ok_or_else(|| Refusal::new(CloseCode::UnknownCluster, format!("no cluster named {name:?}")))
    }

    /// Creates a cluster.
    pub fn create_cluster(&mut self, req: CreateClusterRequest) -> Result<ClusterInfo, Refusal> {
        self.check_admin(&req.admin_token)?;
        names::validate_cluster(&req.name).map_err(|e| Refusal::new(CloseCode::Invalid, e.to_string()))?;
        if self.clusters.contains_key(&req.name) {
            return Err(Refusal::new(CloseCode::Conflict, format!("cluster {:?} already exists", req.name)));
        }
        let network = req.network.unwrap_or_else(|| DEFAULT_OVERLAY.parse().expect("valid default"));
        if network.prefix_len() > 30 {
            return Err(Refusal::new(
                CloseCode::Invalid,
                format!("overlay network {network} is too small: use a prefix of /30 or shorter"),
            ));
        }
        let network = Ipv4Net::new(network.network(), network.prefix_len()).expect("same prefix");
        let join_token = match req.join_token {
            Some(t) if t.is_empty() || t.len() > MAX_TOKEN_LEN => {
                return Err(Refusal::new(CloseCode::Invalid, format!("join token must be 1-{MAX_TOKEN_LEN} bytes")));
            }
            Some(t) => t,
            None => random_token(),
        };
        let info = ClusterInfo { name: req.name.clone(), network, join_token };
        self.clusters.insert(req.name, Cluster::new(info.clone(), random_key()));
        self.touch();
        Ok(info)
    }

    /// Deletes a cluster; its members' feeds see `deleted`.
    pub fn delete_cluster(&mut self, admin_token: &str, name: &str) -> Result<(), Refusal> {
        self.check_admin(admin_token)?;
        let cluster = self
            .clusters
            .remove(name)
            .ok_or_else(|| Refusal::new(CloseCode::UnknownCluster, format!("no cluster named {name:?}")))?;
        cluster.deleted.send_replace(true);
        self.touch();
        Ok(())
    }

    /// Admits a node presenting certificate `fingerprint`, seen at `reflexive`.
    pub fn join(
        &mut self,
        req: JoinRequest,
        fingerprint: Fingerprint,
        reflexive: SocketAddr,
    ) -> Result<(Joined, Feed), Refusal> {
        names::validate_service(&req.service).map_err(|e| Refusal::new(CloseCode::Invalid, e.to_string()))?;
        if req.local.len() > MAX_LOCAL_ADDRS || req.listening.len() > MAX_LISTENING {
            return Err(Refusal::new(CloseCode::Invalid, "too many local addresses or listening ports"));
        }
        let cluster_name = req.cluster.clone();
        let cluster = self.cluster_mut(&cluster_name)?;
        if !secret_eq(&req.join_token, &cluster.info.join_token) {
            return Err(Refusal::new(
                CloseCode::Unauthorized,
                format!("wrong join token for cluster {cluster_name:?}"),
            ));
        }
        if let Some(id) = req.rejoin {
            let joined = Self::rejoin(cluster, req, id, fingerprint, reflexive)?;
            self.touch();
            let feed = self.clusters.get(&cluster_name).expect("found above").feed(false);
            return Ok((joined, feed));
        }
        let replica = names::replica_name(&req.service, req.index);
        if let Some(m) = cluster.members.values().find(|m| m.service == req.service && m.index == req.index) {
            let away = if cluster.away.contains_key(&m.node_id) {
                format!(", away: it keeps its place for up to {AWAY_GRACE:?} after losing the rendezvous")
            } else {
                String::new()
            };
            return Err(Refusal::new(
                CloseCode::Conflict,
                format!("{replica} is already a member of cluster {cluster_name:?} ({}{away})", m.node_id),
            ));
        }
        if let Some(m) = cluster.members.values().find(|m| m.fingerprint == fingerprint) {
            return Err(Refusal::new(
                CloseCode::Conflict,
                format!("this certificate already belongs to {} ({})", m.replica_name(), m.node_id),
            ));
        }
        // A replacement takes its predecessor's id and address back.
        let reused = cluster.retired.get(&replica).copied().filter(|id| !cluster.members.contains_key(&NodeId(*id)));
        let id = reused.unwrap_or(cluster.next_id);
        let overlay_ip = cluster.address_of(id).ok_or_else(|| {
            Refusal::new(
                CloseCode::Capacity,
                format!("cluster {cluster_name:?} has used every address of {}", cluster.info.network),
            )
        })?;
        if reused.is_some() {
            cluster.retired.remove(&replica);
        } else {
            cluster.next_id += 1;
        }
        let node_id = NodeId(id);
        let mut listening = req.listening;
        listening.sort_unstable();
        listening.dedup();
        let member = Member {
            node_id,
            service: req.service.clone(),
            index: req.index,
            overlay_ip,
            fingerprint,
            reflexive,
            local: req.local,
            listening,
            disco_public: req.disco_public,
        };
        let feed = cluster.feed(false);
        cluster.publish(MemberChange::Joined(member));
        let joined = Joined {
            node_id,
            overlay_ip,
            network: cluster.info.network,
            names: names::all_names(&req.service, req.index, id, &cluster_name),
            reflexive,
            snapshot: cluster.snapshot(),
            disco_key: cluster.disco_key,
        };
        self.touch();
        Ok((joined, feed))
    }

    /// Takes member `id` back for the node that proved (by its certificate)
    /// to be it: same id, address and names; its addresses and ports are
    /// brought up to date. Anyone else asking for `id` is refused.
    fn rejoin(
        cluster: &mut Cluster,
        req: JoinRequest,
        id: NodeId,
        fingerprint: Fingerprint,
        reflexive: SocketAddr,
    ) -> Result<Joined, Refusal> {
        let name = cluster.info.name.clone();
        let Some(member) = cluster.members.get(&id).cloned() else {
            return Err(Refusal::new(
                CloseCode::NotAMember,
                format!(
                    "cluster {name:?} has no member {id} any more: it was away longer than {AWAY_GRACE:?}, or a peer found it gone; start the node again to join as a new member"
                ),
            ));
        };
        if member.fingerprint != fingerprint {
            return Err(Refusal::new(
                CloseCode::Unauthorized,
                format!(
                    "member {id} ({}) of cluster {name:?} has another certificate: a node can rejoin only as itself",
                    member.replica_name()
                ),
            ));
        }
        if member.service != req.service || member.index != req.index || member.disco_public != req.disco_public {
            return Err(Refusal::new(
                CloseCode::Invalid,
                format!("member {id} ({}) asked to rejoin with another name or probe key", member.replica_name()),
            ));
        }
        cluster.away.remove(&id);
        let mut listening = req.listening;
        listening.sort_unstable();
        listening.dedup();
        if member.reflexive != reflexive || member.local != req.local {
            cluster.publish(MemberChange::Addresses { node_id: id, reflexive, local: req.local });
        }
        if cluster.members.get(&id).is_some_and(|m| m.listening != listening) {
            cluster.publish(MemberChange::Listening { node_id: id, ports: listening });
        }
        Ok(Joined {
            node_id: id,
            overlay_ip: member.overlay_ip,
            network: cluster.info.network,
            names: names::all_names(&member.service, member.index, id.0, &name),
            reflexive,
            snapshot: cluster.snapshot(),
            disco_key: cluster.disco_key,
        })
    }

    /// A member's session `session` ended, as `departure` says. A member
    /// that [`Departure::Left`] is removed; one whose connection was
    /// [`Departure::Lost`] is kept away for [`AWAY_GRACE`] from `now`, and
    /// the other members are told to check on it. Unknown
    /// members are ignored: the cluster may have been deleted meanwhile.
    pub fn leave(
        &mut self,
        cluster: &str,
        node_id: NodeId,
        session: u64,
        departure: Departure,
        now: Instant,
    ) -> LeaveOutcome {
        if self.closing {
            return LeaveOutcome::Unchanged;
        }
        let Some(c) = self.clusters.get_mut(cluster) else { return LeaveOutcome::Unchanged };
        if c.mailboxes.get(&node_id).is_none_or(|m| m.session != session) {
            // A newer session has the member, or it is gone already.
            return LeaveOutcome::Unchanged;
        }
        if departure == Departure::Lost {
            c.mailboxes.remove(&node_id);
            // The others check whether it is really gone. A full queue
            // drops the notice (that member's report will not count): the
            // grace still ends it.
            let told =
                c.mailboxes.iter().filter(|(_, m)| m.away.try_send(node_id).is_ok()).map(|(&id, _)| id).collect();
            c.away.insert(node_id, Away { until: now + AWAY_GRACE, lost: Some((now, told)) });
            return LeaveOutcome::Away;
        }
        c.remove(node_id);
        self.touch();
        LeaveOutcome::Removed
    }

    /// Member `reporter` says its direct path to `peer` went silent. It
    /// counts only for a `peer` whose connection was lost less than
    /// [`REPORT_WINDOW`] ago, from a member that was told so at the time:
    /// then `peer` is removed at once (returns `true`). Anything else
    /// changes nothing: a connected member, one taken back from disk after
    /// a restart, a report from someone who was not asked, a stale one.
    pub fn peer_lost(&mut self, cluster: &str, reporter: NodeId, peer: NodeId, now: Instant) -> bool {
        let Some(c) = self.clusters.get_mut(cluster) else { return false };
        let counts =
            c.away.get(&peer).and_then(|a| a.lost.as_ref()).is_some_and(|(at, told)| {
                told.contains(&reporter) && now.saturating_duration_since(*at) < REPORT_WINDOW
            });
        if !counts || reporter == peer {
            return false;
        }
        c.remove(peer);
        self.touch();
        true
    }

    /// Removes the away members whose grace ended by `now`; returns them.
    pub fn expire(&mut self, now: Instant) -> Vec<(String, NodeId)> {
        let mut gone = Vec::new();
        for (name, c) in &mut self.clusters {
            let due: Vec<NodeId> = c.away.iter().filter(|(_, a)| a.until <= now).map(|(&id, _)| id).collect();
            for id in due {
                c.remove(id);
                gone.push((name.clone(), id));
            }
        }
        if !gone.is_empty() {
            self.touch();
        }
        gone
    }

    /// Whether member `node_id` is away (its connection lost, not yet back).
    pub fn is_away(&self, cluster: &str, node_id: NodeId) -> bool {
        self.clusters.get(cluster).is_some_and(|c| c.away.contains_key(&node_id))
    }

    /// The mailbox of a member that just joined or rejoined. A mailbox of an
    /// earlier session of the member is replaced, which tells that session
    /// to end ([`Mailbox::superseded`]).
    pub fn open_mailbox(&mut self, cluster: &str, node_id: NodeId) -> Option<Mailbox> {
        let c = self.clusters.get_mut(cluster)?;
        if !c.members.contains_key(&node_id) {
            return None;
        }
        self.sessions += 1;
        let session = self.sessions;
        let (punch, punch_rx) = mpsc::channel(PUNCH_QUEUE);
        let (relay, relay_rx) = mpsc::channel(RELAY_QUEUE);
        let (away, away_rx) = mpsc::channel(PUNCH_QUEUE);
        // One pending stop is enough: asking twice changes nothing.
        let (stop, stop_rx) = mpsc::channel(1);
        let (current, superseded) = oneshot::channel();
        c.mailboxes.insert(node_id, MailboxSenders { punch, away, relay, stop, session, _current: current });
        Some(Mailbox { punch: punch_rx, away: away_rx, relay: relay_rx, stop: stop_rx, session, superseded })
    }

    /// Tells member `node` (`<service>-<index>`) of `cluster` to stop
    /// (admin). Returns its id once its session has the request; asking a
    /// member that is already stopping again is not an error.
    pub fn stop_member(&self, admin_token: &str, cluster: &str, node: &str) -> Result<NodeId, Refusal> {
        self.check_admin(admin_token)?;
        let c = self
            .clusters
            .get(cluster)
            .ok_or_else(|| Refusal::new(CloseCode::UnknownCluster, format!("no cluster named {cluster:?}")))?;
        let member = c.members.values().find(|m| m.replica_name() == node).ok_or_else(|| {
            Refusal::new(CloseCode::NotAMember, format!("cluster {cluster:?} has no member {node:?}"))
        })?;
        let Some(mailbox) = c.mailboxes.get(&member.node_id) else {
            return Err(Refusal::new(
                CloseCode::Conflict,
                format!("{node} lost its connection to the rendezvous; it can be told to stop once it is back"),
            ));
        };
        // Full: it was told already. Closed: its session is ending, so it
        // is leaving already. Either way the member stops.
        let _ = mailbox.stop.try_send(());
        Ok(member.node_id)
    }

    /// Tells `from` and `to` to punch each other now. Both must be members
    /// of `cluster`; a full queue drops the request (punches are retried).
    pub fn punch(&self, cluster: &str, from: NodeId, to: NodeId) -> Result<(), Refusal> {
        let c = self.clusters.get(cluster).ok_or_else(|| Refusal::new(CloseCode::UnknownCluster, "cluster deleted"))?;
        if from == to {
            return Err(Refusal::new(CloseCode::Invalid, "a node cannot punch to itself"));
        }
        let (Some(a), Some(b)) = (c.mailboxes.get(&from), c.mailboxes.get(&to)) else {
            // The peer left (or never was): nothing to do; its Left event explains.
            return Ok(());
        };
        let _ = b.punch.try_send(from);
        let _ = a.punch.try_send(to);
        Ok(())
    }

    /// Where packets relayed to `to` go, if it is a member of `cluster`.
    pub fn relay_to(&self, cluster: &str, to: NodeId) -> Option<mpsc::Sender<RelayPacket>> {
        self.clusters.get(cluster)?.mailboxes.get(&to).map(|m| m.relay.clone())
    }

    /// Records a member's new reflexive address (its NAT mapping changed).
    pub fn set_reflexive(&mut self, cluster: &str, node_id: NodeId, reflexive: SocketAddr) {
        if let Some(c) = self.clusters.get_mut(cluster)
            && let Some(m) = c.members.get(&node_id)
            && m.reflexive != reflexive
        {
            let local = m.local.clone();
            c.publish(MemberChange::Addresses { node_id, reflexive, local });
            self.touch();
        }
    }

    /// Replaces a node's set of listening ports.
    pub fn set_listening(&mut self, cluster: &str, node_id: NodeId, mut ports: Vec<u16>) -> Result<(), Refusal> {
        if ports.len() > MAX_LISTENING {
            return Err(Refusal::new(CloseCode::Invalid, "too many listening ports"));
        }
        ports.sort_unstable();
        ports.dedup();
        if let Some(c) = self.clusters.get_mut(cluster)
            && c.members.get(&node_id).is_some_and(|m| m.listening != ports)
        {
            c.publish(MemberChange::Listening { node_id, ports });
            self.touch();
        }
        Ok(())
    }

    /// Replaces a node's local addresses.
    pub fn set_addresses(&mut self, cluster: &str, node_id: NodeId, local: Vec<SocketAddr>) -> Result<(), Refusal> {
        if local.len() > MAX_LOCAL_ADDRS {
            return Err(Refusal::new(CloseCode::Invalid, "too many local addresses"));
        }
        if let Some(c) = self.clusters.get_mut(cluster)
            && let Some(m) = c.members.get(&node_id)
            && m.local != local
        {
            let reflexive = m.reflexive;
            c.publish(MemberChange::Addresses { node_id, reflexive, local });
            self.touch();
        }
        Ok(())
    }

    /// Broadcasts a node's output to the cluster's log watchers.
    pub fn publish_output(&self, cluster: &str, output: NodeOutput) {
        if let Some(c) = self.clusters.get(cluster) {
            let channel = match output {
                NodeOutput::Lines { .. } | NodeOutput::Paths { .. } => &c.output,
                NodeOutput::Exited { .. } | NodeOutput::State { .. } => &c.lifecycle,
            };
            let _ = channel.send(output);
        }
    }

    /// Records a member's state (`node` is its `<service>-<index>`) and
    /// tells the cluster's log watchers, unless it is the state already
    /// recorded.
    pub fn set_state(&mut self, cluster: &str, node_id: NodeId, node: &str, state: NodeState) {
        if let Some(c) = self.clusters.get_mut(cluster)
            && c.members.contains_key(&node_id)
            && c.states.get(&node_id).is_none_or(|(_, s)| *s != state)
        {
            c.states.insert(node_id, (node.to_owned(), state.clone()));
            let _ = c.lifecycle.send(NodeOutput::State { node: node.to_owned(), state });
        }
    }

    /// The last state of every member that sent one, by node name: what a
    /// watcher that subscribes now has missed.
    pub fn states(&self, cluster: &str) -> Vec<(String, NodeState)> {
        let mut states: Vec<_> =
            self.clusters.get(cluster).map(|c| c.states.values().cloned().collect()).unwrap_or_default();
        states.sort_by(|a, b| a.0.cmp(&b.0));
        states
    }

    /// Subscribes to a cluster (join token or admin token).
    pub fn watch(&mut self, req: &WatchRequest) -> Result<(MembershipSnapshot, Feed), Refusal> {
        let admin = secret_eq(&req.token, &self.admin_token);
        let cluster = self.cluster_mut(&req.cluster)?;
        if !admin && !secret_eq(&req.token, &cluster.info.join_token) {
            return Err(Refusal::new(CloseCode::Unauthorized, format!("wrong token for cluster {:?}", req.cluster)));
        }
        Ok((cluster.snapshot(), cluster.feed(req.logs)))
    }

    /// A fresh snapshot and feed, for a subscriber that fell behind.
    pub fn resync(&mut self, cluster: &str) -> Option<(MembershipSnapshot, Feed)> {
        self.clusters.get(cluster).map(|c| (c.snapshot(), c.feed(false)))
    }

    /// Names of all clusters with their member counts.
    pub fn clusters(&self) -> Vec<(String, usize)> {
        let mut out: Vec<_> = self.clusters.values().map(|c| (c.info.name.clone(), c.members.len())).collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: &str = "admin-secret";

    fn registry_with(cluster: &str, network: Option<&str>) -> (Registry, ClusterInfo) {
        let mut r = Registry::new(ADMIN.into());
        let info = r
            .create_cluster(CreateClusterRequest {
                admin_token: ADMIN.into(),
                name: cluster.into(),
                network: network.map(|n| n.parse().unwrap()),
                join_token: Some("join".into()),
            })
            .unwrap();
        (r, info)
    }

    fn join_req(cluster: &str, service: &str, index: u32) -> JoinRequest {
        JoinRequest {
            cluster: cluster.into(),
            join_token: "join".into(),
            service: service.into(),
            index,
            local: vec![],
            listening: vec![80, 22, 80],
            disco_public: [7; 32],
            rejoin: None,
        }
    }

    /// Ends member `id`'s current session the way `departure` says.
    fn depart(r: &mut Registry, cluster: &str, id: NodeId, departure: Departure, now: Instant) -> LeaveOutcome {
        let session = r.open_mailbox(cluster, id).map_or(0, |m| m.session);
        r.leave(cluster, id, session, departure, now)
    }

    fn addr() -> SocketAddr {
        "192.0.2.1:5000".parse().unwrap()
    }

    #[test]
    fn admission_assigns_ids_addresses_and_names() {
        let (mut r, _) = registry_with("demo", None);
        let (a, mut feed_a) = r.join(join_req("demo", "web", 0), Fingerprint([1; 32]), addr()).unwrap();
        assert_eq!(a.node_id, NodeId(1));
        assert_eq!(a.overlay_ip, Ipv4Addr::new(100, 96, 0, 1));
        assert_eq!(a.names, ["web-0", "node-1", "web-0.demo.boxer", "node-1.demo.boxer"]);
        assert_eq!(a.reflexive, addr());
        assert_eq!(a.snapshot.members.len(), 1);
        assert_eq!(a.snapshot.members[0].listening, [22, 80]);

        let (b, _) = r.join(join_req("demo", "web", 1), Fingerprint([2; 32]), addr()).unwrap();
        assert_eq!(b.overlay_ip, Ipv4Addr::new(100, 96, 0, 2));
        assert_eq!(b.snapshot.seq, 2);
        // A's feed saw its own join and B's.
        assert_eq!(feed_a.events.try_recv().unwrap().seq, 1);
        let ev = feed_a.events.try_recv().unwrap();
        assert!(matches!(ev.change, MemberChange::Joined(ref m) if m.node_id == NodeId(2)));

        assert_eq!(depart(&mut r, "demo", NodeId(1), Departure::Left, Instant::now()), LeaveOutcome::Removed);
        assert_eq!(depart(&mut r, "demo", NodeId(1), Departure::Left, Instant::now()), LeaveOutcome::Unchanged);
        let ev = feed_a.events.try_recv().unwrap();
        assert_eq!(ev.change, MemberChange::Left { node_id: NodeId(1) });
        assert!(feed_a.events.try_recv().is_err(), "second leave is a no-op");

        // The replica name is free again; a new node under it (a
        // replacement) gets its id and address back; other names get new ones.
        let (c, _) = r.join(join_req("demo", "web", 0), Fingerprint([3; 32]), addr()).unwrap();
        assert_eq!((c.node_id, c.overlay_ip), (NodeId(1), a.overlay_ip));
        let (d, _) = r.join(join_req("demo", "web", 5), Fingerprint([4; 32]), addr()).unwrap();
        assert_eq!(d.node_id, NodeId(3));
    }

    #[test]
    fn refusals_are_clear() {
        let (mut r, _) = registry_with("demo", None);
        let mut bad_token = join_req("demo", "web", 0);
        bad_token.join_token = "nope".into();
        let e = r.join(bad_token, Fingerprint([1; 32]), addr()).unwrap_err();
        assert_eq!(e.code, CloseCode::Unauthorized);
        assert!(e.reason.contains("wrong join token"), "{e}");

        let e = r.join(join_req("other", "web", 0), Fingerprint([1; 32]), addr()).unwrap_err();
        assert_eq!(e.code, CloseCode::UnknownCluster);
        assert!(e.reason.contains("\"other\""), "{e}");

        let e = r.join(join_req("demo", "Web", 0), Fingerprint([1; 32]), addr()).unwrap_err();
        assert_eq!(e.code, CloseCode::Invalid);

        r.join(join_req("demo", "web", 0), Fingerprint([1; 32]), addr()).unwrap();
        let e = r.join(join_req("demo", "web", 0), Fingerprint([2; 32]), addr()).unwrap_err();
        assert_eq!(e.code, CloseCode::Conflict);
        assert!(e.reason.contains("web-0 is already a member"), "{e}");
        let e = r.join(join_req("demo", "web", 1), Fingerprint([1; 32]), addr()).unwrap_err();
        assert_eq!(e.code, CloseCode::Conflict);

        let e = r
            .create_cluster(CreateClusterRequest {
                admin_token: "guess".into(),
                name: "x".into(),
                network: None,
                join_token: None,
            })
            .unwrap_err();
        assert_eq!(e.code, CloseCode::Unauthorized);
    }

    #[test]
    fn small_network_runs_out_of_addresses() {
        let (mut r, info) = registry_with("tiny", Some("10.1.2.0/30"));
        assert_eq!(info.network.to_string(), "10.1.2.0/30");
        let a = r.join(join_req("tiny", "a", 0), Fingerprint([1; 32]), addr()).unwrap().0;
        let b = r.join(join_req("tiny", "a", 1), Fingerprint([2; 32]), addr()).unwrap().0;
        assert_eq!((a.overlay_ip, b.overlay_ip), ("10.1.2.1".parse().unwrap(), "10.1.2.2".parse().unwrap()));
        let e = r.join(join_req("tiny", "a", 2), Fingerprint([3; 32]), addr()).unwrap_err();
        assert_eq!(e.code, CloseCode::Capacity);
    }

    #[test]
    fn listening_changes_are_published_once() {
        let (mut r, _) = registry_with("demo", None);
        let (_, mut feed) = r.join(join_req("demo", "db", 0), Fingerprint([1; 32]), addr()).unwrap();
        feed.events.try_recv().unwrap();
        r.set_listening("demo", NodeId(1), vec![6379, 6379]).unwrap();
        r.set_listening("demo", NodeId(1), vec![6379]).unwrap();
        let ev = feed.events.try_recv().unwrap();
        assert_eq!(ev.change, MemberChange::Listening { node_id: NodeId(1), ports: vec![6379] });
        assert!(feed.events.try_recv().is_err());
    }

    #[test]
    fn states_are_kept_for_late_watchers_and_published_once() {
        let (mut r, _) = registry_with("demo", None);
        let (a, _) = r.join(join_req("demo", "web", 0), Fingerprint([1; 32]), addr()).unwrap();
        let watch = WatchRequest { cluster: "demo".into(), token: ADMIN.into(), logs: true };
        let (_, mut feed) = r.watch(&watch).unwrap();
        let waiting = NodeState::Waiting { target: "db-0".into(), port: 5432, waited_secs: 0 };
        r.set_state("demo", a.node_id, "web-0", waiting.clone());
        r.set_state("demo", a.node_id, "web-0", waiting.clone());
        let lifecycle = feed.lifecycle.as_mut().unwrap();
        assert_eq!(lifecycle.try_recv().unwrap(), NodeOutput::State { node: "web-0".into(), state: waiting.clone() });
        assert!(lifecycle.try_recv().is_err(), "an unchanged state is not published again");
        assert_eq!(r.states("demo"), [("web-0".to_owned(), waiting)]);
        // Exits travel with states, not with the lossy output.
        r.publish_output("demo", NodeOutput::Exited { node: "web-0".into(), status: ExitStatus { code: 124 } });
        assert!(matches!(feed.lifecycle.as_mut().unwrap().try_recv(), Ok(NodeOutput::Exited { .. })));
        assert!(feed.output.as_mut().unwrap().try_recv().is_err());
        depart(&mut r, "demo", a.node_id, Departure::Left, Instant::now());
        assert!(r.states("demo").is_empty(), "a member that left has no state");
        r.set_state("demo", a.node_id, "web-0", NodeState::Running);
        assert!(r.states("demo").is_empty(), "nor gets one after leaving");
    }

    #[test]
    fn delete_signals_feeds() {
        let (mut r, _) = registry_with("demo", None);
        let (_, feed) = r.join(join_req("demo", "db", 0), Fingerprint([1; 32]), addr()).unwrap();
        r.delete_cluster(ADMIN, "demo").unwrap();
        assert!(*feed.deleted.borrow());
        assert!(r.clusters().is_empty());
    }

    #[test]
    fn an_admin_can_stop_one_member_and_nobody_else_can() {
        let (mut r, _) = registry_with("demo", None);
        let (a, _) = r.join(join_req("demo", "web", 0), Fingerprint([1; 32]), addr()).unwrap();
        let (b, _) = r.join(join_req("demo", "web", 1), Fingerprint([2; 32]), addr()).unwrap();
        let mut ma = r.open_mailbox("demo", a.node_id).unwrap();
        let mut mb = r.open_mailbox("demo", b.node_id).unwrap();
        assert_eq!(r.stop_member("wrong", "demo", "web-1").unwrap_err().code, CloseCode::Unauthorized);
        assert_eq!(r.stop_member(ADMIN, "nope", "web-1").unwrap_err().code, CloseCode::UnknownCluster);
        let e = r.stop_member(ADMIN, "demo", "web-7").unwrap_err();
        assert_eq!(e.code, CloseCode::NotAMember);
        assert!(e.reason.contains("web-7"), "{}", e.reason);
        assert_eq!(r.stop_member(ADMIN, "demo", "web-1").unwrap(), b.node_id);
        assert_eq!(r.stop_member(ADMIN, "demo", "web-1").unwrap(), b.node_id, "asking twice is fine");
        assert!(mb.stop.try_recv().is_ok());
        assert!(mb.stop.try_recv().is_err(), "one stop queued, not two");
        assert!(ma.stop.try_recv().is_err(), "the other member is left alone");
        // A member whose connection was lost cannot be told until it is back.
        let session = ma.session;
        r.leave("demo", a.node_id, session, Departure::Lost, Instant::now());
        assert_eq!(r.stop_member(ADMIN, "demo", "web-0").unwrap_err().code, CloseCode::Conflict);
    }

    #[test]
    fn punches_reach_both_members_and_relays_stay_inside_a_cluster() {
        let (mut r, _) = registry_with("demo", None);
        r.create_cluster(CreateClusterRequest {
            admin_token: ADMIN.into(),
            name: "other".into(),
            network: None,
            join_token: Some("join".into()),
        })
        .unwrap();
        let (a, _) = r.join(join_req("demo", "web", 0), Fingerprint([1; 32]), addr()).unwrap();
        let (b, _) = r.join(join_req("demo", "web", 1), Fingerprint([2; 32]), addr()).unwrap();
        let (x, _) = r.join(join_req("other", "web", 0), Fingerprint([3; 32]), addr()).unwrap();
        let mut ma = r.open_mailbox("demo", a.node_id).unwrap();
        let mut mb = r.open_mailbox("demo", b.node_id).unwrap();
        let _mx = r.open_mailbox("other", x.node_id).unwrap();
        assert_eq!(a.disco_key, b.disco_key, "one key per cluster");
        assert_ne!(a.disco_key, x.disco_key, "clusters do not share keys");

        r.punch("demo", a.node_id, b.node_id).unwrap();
        assert_eq!(ma.punch.try_recv().unwrap(), b.node_id);
        assert_eq!(mb.punch.try_recv().unwrap(), a.node_id);
        assert!(r.punch("demo", a.node_id, a.node_id).is_err(), "no punch to oneself");

        // x has node id 1 in its own cluster, like a: ids do not cross clusters.
        r.relay_to("demo", b.node_id).unwrap().try_send((a.node_id, vec![1])).unwrap();
        assert_eq!(mb.relay.try_recv().unwrap(), (a.node_id, vec![1]));
        assert!(r.relay_to("demo", NodeId(99)).is_none());
        let session = mb.session;
        r.leave("demo", b.node_id, session, Departure::Left, Instant::now());
        assert!(r.relay_to("demo", b.node_id).is_none(), "a member that left gets nothing");
        r.punch("demo", a.node_id, b.node_id).unwrap();
        assert!(ma.punch.try_recv().is_err(), "no punch with a member that left");
    }

    #[test]
    fn a_lost_member_keeps_its_place_and_rejoins_only_as_itself() {
        let (mut r, _) = registry_with("demo", None);
        let t0 = Instant::now();
        let (a, _) = r.join(join_req("demo", "web", 0), Fingerprint([1; 32]), addr()).unwrap();
        let (b, mut feed) = r.join(join_req("demo", "web", 1), Fingerprint([2; 32]), addr()).unwrap();
        while feed.events.try_recv().is_ok() {}
        let old = r.open_mailbox("demo", a.node_id).unwrap();
        assert_eq!(r.leave("demo", a.node_id, old.session, Departure::Lost, t0), LeaveOutcome::Away);
        assert!(r.is_away("demo", a.node_id));
        assert!(feed.events.try_recv().is_err(), "the others do not see an away member leave");

        // A fresh join under its name is refused while it is away.
        let e = r.join(join_req("demo", "web", 0), Fingerprint([3; 32]), addr()).unwrap_err();
        assert!(e.reason.contains("away"), "{e}");
        // Another certificate claiming its id is refused and named.
        let mut claim = join_req("demo", "web", 0);
        claim.rejoin = Some(a.node_id);
        let e = r.join(claim.clone(), Fingerprint([3; 32]), addr()).unwrap_err();
        assert_eq!(e.code, CloseCode::Unauthorized);
        assert!(e.reason.contains("only as itself"), "{e}");
        // So is its own certificate under another name.
        let mut renamed = claim.clone();
        renamed.index = 5;
        assert_eq!(r.join(renamed, Fingerprint([1; 32]), addr()).unwrap_err().code, CloseCode::Invalid);

        // The node itself comes back from a new address, listening on more.
        let moved: SocketAddr = "192.0.2.9:7000".parse().unwrap();
        claim.listening = vec![22, 80, 443];
        let (back, _) = r.join(claim, Fingerprint([1; 32]), moved).unwrap();
        assert_eq!((back.node_id, back.overlay_ip, &back.names), (a.node_id, a.overlay_ip, &a.names));
        assert_eq!(back.disco_key, a.disco_key);
        assert!(!r.is_away("demo", a.node_id));
        let changes: Vec<_> = std::iter::from_fn(|| feed.events.try_recv().ok()).map(|e| e.change).collect();
        assert_eq!(
            changes,
            [
                MemberChange::Addresses { node_id: a.node_id, reflexive: moved, local: vec![] },
                MemberChange::Listening { node_id: a.node_id, ports: vec![22, 80, 443] },
            ],
            "a rejoin publishes what changed, never a leave and a join"
        );
        // The old session is told to end, and its end changes nothing.
        let new = r.open_mailbox("demo", a.node_id).unwrap();
        let mut superseded = old.superseded;
        assert!(superseded.try_recv().is_err_and(|e| e == oneshot::error::TryRecvError::Closed));
        assert_eq!(r.leave("demo", a.node_id, old.session, Departure::Left, t0), LeaveOutcome::Unchanged);
        assert!(r.leave("demo", a.node_id, new.session, Departure::Left, t0) == LeaveOutcome::Removed);

        // A member that never comes back is removed after the grace.
        let mb = r.open_mailbox("demo", b.node_id).unwrap();
        r.leave("demo", b.node_id, mb.session, Departure::Lost, t0);
        assert!(r.expire(t0 + AWAY_GRACE - Duration::from_secs(1)).is_empty());
        assert_eq!(r.expire(t0 + AWAY_GRACE), [("demo".to_owned(), b.node_id)]);
        let mut claim = join_req("demo", "web", 1);
        claim.rejoin = Some(b.node_id);
        let e = r.join(claim, Fingerprint([2; 32]), addr()).unwrap_err();
        assert_eq!(e.code, CloseCode::NotAMember);
        assert!(e.reason.contains("start the node again"), "{e}");
    }

    #[test]
    fn a_peers_report_ends_an_away_member_at_once() {
        let (mut r, _) = registry_with("demo", None);
        let t0 = Instant::now();
        let (a, _) = r.join(join_req("demo", "web", 0), Fingerprint([1; 32]), addr()).unwrap();
        let (b, _) = r.join(join_req("demo", "web", 1), Fingerprint([2; 32]), addr()).unwrap();
        let (c, _) = r.join(join_req("demo", "web", 2), Fingerprint([3; 32]), addr()).unwrap();
        let ma = r.open_mailbox("demo", a.node_id).unwrap();
        let mut mb = r.open_mailbox("demo", b.node_id).unwrap();
        // A report about a connected member changes nothing, now or later.
        assert!(!r.peer_lost("demo", b.node_id, a.node_id, t0));
        r.leave("demo", a.node_id, ma.session, Departure::Lost, t0);
        assert_eq!(mb.away.try_recv().unwrap(), a.node_id, "the others are asked to check on it");
        assert!(r.is_away("demo", a.node_id), "an earlier report did not make it a suspect");
        assert!(!r.peer_lost("demo", a.node_id, a.node_id, t0), "nobody reports itself");
        // c was not told (no session): its report does not count.
        assert!(!r.peer_lost("demo", c.node_id, a.node_id, t0));
        // Nor does b's once the window is over.
        assert!(!r.peer_lost("demo", b.node_id, a.node_id, t0 + REPORT_WINDOW));
        assert!(r.peer_lost("demo", b.node_id, a.node_id, t0 + Duration::from_secs(3)));
        assert!(r.saved().clusters[0].members.iter().all(|m| m.node_id != a.node_id));
        // After a restart nobody was told: reports (a rejoining member's,
        // stale or hostile) cannot remove a member before it is back.
        let mut restarted = Registry::restore(ADMIN.into(), r.saved(), t0);
        let _mb = restarted.open_mailbox("demo", b.node_id).unwrap();
        assert!(!restarted.peer_lost("demo", b.node_id, c.node_id, t0));
        assert!(restarted.is_away("demo", c.node_id));
    }

    #[test]
    fn a_restored_registry_has_every_member_away_until_it_rejoins() {
        let (mut r, info) = registry_with("demo", None);
        let (a, _) = r.join(join_req("demo", "web", 0), Fingerprint([1; 32]), addr()).unwrap();
        let (b, _) = r.join(join_req("demo", "web", 1), Fingerprint([2; 32]), addr()).unwrap();
        let version = r.version();
        r.set_listening("demo", b.node_id, vec![9000]).unwrap();
        assert!(r.version() > version, "a saved field changed");
        let t0 = Instant::now();
        let mut restarted = Registry::restore(ADMIN.into(), r.saved(), t0);
        assert_eq!(restarted.saved(), r.saved());
        assert!(restarted.is_away("demo", a.node_id) && restarted.is_away("demo", b.node_id));
        let mut claim = join_req("demo", "web", 0);
        claim.rejoin = Some(a.node_id);
        claim.listening = vec![22, 80];
        let (back, _) = restarted.join(claim, Fingerprint([1; 32]), addr()).unwrap();
        assert_eq!((back.node_id, back.overlay_ip, back.disco_key), (a.node_id, a.overlay_ip, a.disco_key));
        assert_eq!(back.snapshot.members.len(), 2, "the member still away is in the snapshot");
        // The join token still works, and ids go on where they were.
        let mut fresh = join_req("demo", "db", 0);
        fresh.join_token = info.join_token;
        let (c, _) = restarted.join(fresh, Fingerprint([3; 32]), addr()).unwrap();
        assert_eq!(c.node_id, NodeId(3));
        assert_eq!(restarted.expire(t0 + AWAY_GRACE), [("demo".to_owned(), b.node_id)]);
        // A rendezvous shutting down keeps its members for the next one.
        restarted.close();
        let mc = restarted.open_mailbox("demo", c.node_id).unwrap();
        assert_eq!(restarted.leave("demo", c.node_id, mc.session, Departure::Left, t0), LeaveOutcome::Unchanged);
    }
}
