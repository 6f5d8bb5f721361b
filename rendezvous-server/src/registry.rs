//! The rendezvous' state: clusters, their members, and the membership feed.
//!
//! Pure state, no I/O: connection handlers call in with what a client asked
//! and get back an answer or a [`Refusal`]. Every change to a cluster's
//! membership is numbered and broadcast to that cluster's subscribers.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};

use boxer_proto::control::{
    CloseCode, ClusterInfo, CreateClusterRequest, DEFAULT_OVERLAY, ExitStatus, JoinRequest, Joined, LogLine, NodeState,
    PathReport, WatchRequest,
};
use boxer_proto::disco::DiscoKey;
use boxer_proto::membership::{MemberChange, MembershipEvent, MembershipSnapshot};
use boxer_proto::{Fingerprint, Member, NodeId, names};
use ipnet::Ipv4Net;
use tokio::sync::{broadcast, mpsc, watch};

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
}

/// Punch requests delivered to one member's session.
pub const PUNCH_QUEUE: usize = 64;

/// Relayed packets queued for one member; more are dropped like on a
/// congested UDP path (and QUIC slows down).
pub const RELAY_QUEUE: usize = 2048;

#[derive(Debug, Clone)]
struct MailboxSenders {
    punch: mpsc::Sender<NodeId>,
    relay: mpsc::Sender<RelayPacket>,
}

/// A relayed packet: the other node and its QUIC packet.
pub type RelayPacket = (NodeId, Vec<u8>);

/// What other members send one member through the rendezvous.
#[derive(Debug)]
pub struct Mailbox {
    /// Peers to punch with now.
    pub punch: mpsc::Receiver<NodeId>,
    /// Packets relayed from peers.
    pub relay: mpsc::Receiver<RelayPacket>,
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

impl Registry {
    /// An empty registry guarded by `admin_token`.
    pub fn new(admin_token: String) -> Self {
        Self { admin_token, clusters: HashMap::new() }
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
        let cluster = Cluster {
            info: info.clone(),
            next_id: 1,
            seq: 0,
            members: BTreeMap::new(),
            events: broadcast::channel(EVENT_BUFFER).0,
            deleted: watch::channel(false).0,
            output: broadcast::channel(LOG_BUFFER).0,
            lifecycle: broadcast::channel(LIFECYCLE_BUFFER).0,
            states: HashMap::new(),
            disco_key: random_key(),
            mailboxes: HashMap::new(),
        };
        self.clusters.insert(req.name, cluster);
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
        let replica = names::replica_name(&req.service, req.index);
        if let Some(m) = cluster.members.values().find(|m| m.service == req.service && m.index == req.index) {
            return Err(Refusal::new(
                CloseCode::Conflict,
                format!("{replica} is already a member of cluster {cluster_name:?} ({})", m.node_id),
            ));
        }
        if let Some(m) = cluster.members.values().find(|m| m.fingerprint == fingerprint) {
            return Err(Refusal::new(
                CloseCode::Conflict,
                format!("this certificate already belongs to {} ({})", m.replica_name(), m.node_id),
            ));
        }
        let id = cluster.next_id;
        let overlay_ip = cluster.address_of(id).ok_or_else(|| {
            Refusal::new(
                CloseCode::Capacity,
                format!("cluster {cluster_name:?} has used every address of {}", cluster.info.network),
            )
        })?;
        cluster.next_id += 1;
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
        Ok((joined, feed))
    }

    /// Removes a node (its connection ended). Unknown nodes are ignored: the
    /// cluster may have been deleted meanwhile.
    pub fn leave(&mut self, cluster: &str, node_id: NodeId) {
        if let Some(c) = self.clusters.get_mut(cluster) {
            c.mailboxes.remove(&node_id);
            c.states.remove(&node_id);
            if c.members.contains_key(&node_id) {
                c.publish(MemberChange::Left { node_id });
            }
        }
    }

    /// The mailbox of a member that just joined (once per member).
    pub fn open_mailbox(&mut self, cluster: &str, node_id: NodeId) -> Option<Mailbox> {
        let c = self.clusters.get_mut(cluster)?;
        if !c.members.contains_key(&node_id) {
            return None;
        }
        let (punch, punch_rx) = mpsc::channel(PUNCH_QUEUE);
        let (relay, relay_rx) = mpsc::channel(RELAY_QUEUE);
        c.mailboxes.insert(node_id, MailboxSenders { punch, relay });
        Some(Mailbox { punch: punch_rx, relay: relay_rx })
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
        }
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

        r.leave("demo", NodeId(1));
        r.leave("demo", NodeId(1));
        let ev = feed_a.events.try_recv().unwrap();
        assert_eq!(ev.change, MemberChange::Left { node_id: NodeId(1) });
        assert!(feed_a.events.try_recv().is_err(), "second leave is a no-op");

        // The replica name is free again, with a new id and address.
        let (c, _) = r.join(join_req("demo", "web", 0), Fingerprint([3; 32]), addr()).unwrap();
        assert_eq!(c.node_id, NodeId(3));
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
        r.leave("demo", a.node_id);
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
        r.leave("demo", b.node_id);
        assert!(r.relay_to("demo", b.node_id).is_none(), "a member that left gets nothing");
        r.punch("demo", a.node_id, b.node_id).unwrap();
        assert!(ma.punch.try_recv().is_err(), "no punch with a member that left");
    }
}
