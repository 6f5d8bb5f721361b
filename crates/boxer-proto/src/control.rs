//! Messages between the rendezvous and its clients (runtimes, CLI).
//!
//! A client opens one bidirectional stream per connection. Both sides first
//! send a [`crate::Hello`]; the client then sends one [`Request`]. What follows
//! depends on the request:
//!
//! * [`Request::Join`]: the server answers [`ServerMessage::Joined`] with a
//!   membership snapshot, then pushes [`ServerMessage::Event`]s for as long as
//!   the connection lives. The node sends [`NodeMessage`]s (listening ports,
//!   addresses, barrier waits, output, its [`NodeState`]). Closing the
//!   connection is leaving.
//! * [`Request::Watch`]: a snapshot, then events, read-only (CLI subscribers).
//! * [`Request::CreateCluster`] / [`Request::DeleteCluster`] /
//!   [`Request::StopMember`]: one answer.
//!
//! Refusals are not messages: the server closes the connection with a
//! [`CloseCode`] and a human-readable reason.

use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::membership::{MembershipEvent, MembershipSnapshot, NodeId};

/// The one request a client makes after the hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Become a member of a cluster.
    Join(JoinRequest),
    /// Read a cluster's membership (snapshot then events).
    Watch(WatchRequest),
    /// Create a cluster (admin).
    CreateCluster(CreateClusterRequest),
    /// Delete a cluster and disconnect its members (admin).
    DeleteCluster(DeleteClusterRequest),
    /// Ask one member to stop its program and leave (admin): `boxer scale`
    /// down where no process can be signalled (Lambda). New in protocol
    /// version 6, as the last variant.
    StopMember(StopMemberRequest),
}

/// Admission request of a node. Its public identity is the certificate it
/// presented in the TLS handshake, not a field here, so it cannot claim another
/// node's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// Cluster name.
    pub cluster: String,
    /// The cluster's join token.
    pub join_token: String,
    /// Service this node is a replica of.
    pub service: String,
    /// Replica index.
    pub index: u32,
    /// Addresses the node's UDP socket is bound to on its own interfaces.
    pub local: Vec<SocketAddr>,
    /// TCP ports the node accepts overlay connections on from the start.
    pub listening: Vec<u16>,
    /// The node's public key for probe authentication, published to the
    /// other members ([`crate::disco::pair_key`]).
    pub disco_public: crate::disco::DiscoPublic,
    /// `Some(id)` when this node was already admitted as `id` and lost its
    /// connection to the rendezvous (the rendezvous restarted or was
    /// unreachable): it asks to be the same member again, with the same id,
    /// address and names. The rendezvous agrees only if it knows member
    /// `id` with this connection's certificate, `service` and `index`;
    /// otherwise it refuses and never admits the node as someone new.
    /// New in protocol version 5.
    pub rejoin: Option<crate::NodeId>,
}

/// Read-only subscription to a cluster's membership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchRequest {
    /// Cluster name.
    pub cluster: String,
    /// The cluster's join token, or the admin token.
    pub token: String,
    /// Also stream every node's output lines and exit statuses.
    pub logs: bool,
}

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line of a node program's output (without its newline).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Which stream.
    pub stream: Stream,
    /// The text, lossily UTF-8.
    pub text: String,
}

/// Longest log line carried; longer lines are split.
pub const MAX_LOG_LINE: usize = 16 << 10;

/// Most lines in one [`NodeMessage::Logs`].
pub const MAX_LOG_BATCH_LINES: usize = 256;

/// Most text bytes in one [`NodeMessage::Logs`]: a quarter of a frame, so a
/// batch re-sent with its node name to watchers always fits.
pub const MAX_LOG_BATCH_BYTES: usize = 256 << 10;

/// Most names in a [`Barrier::Names`].
pub const MAX_BARRIER_NAMES: usize = 256;

/// Longest name in a [`Barrier::Names`] or a [`NodeState::Waiting`] target
/// (a DNS name).
pub const MAX_NAME_LEN: usize = 253;

/// Longest [`NodeState::GaveUp`] reason: one sentence for a person (a
/// target name, a port, what was seen), with room to spare, and small
/// enough that a flood of states cannot fill a watcher's queue with much.
pub const MAX_STATE_REASON: usize = 1024;

impl NodeMessage {
    /// Checks the size limits a server enforces; `Err` says which was broken.
    pub fn check_limits(&self) -> Result<(), String> {
        match self {
            NodeMessage::Logs(lines) => {
                let bytes: usize = lines.iter().map(|l| l.text.len()).sum();
                if lines.len() > MAX_LOG_BATCH_LINES || bytes > MAX_LOG_BATCH_BYTES {
                    return Err(format!(
                        "log batch of {} lines / {bytes} bytes exceeds {MAX_LOG_BATCH_LINES} lines / {MAX_LOG_BATCH_BYTES} bytes",
                        lines.len()
                    ));
                }
                if lines.iter().any(|l| l.text.len() > MAX_LOG_LINE) {
                    return Err(format!("log line longer than {MAX_LOG_LINE} bytes"));
                }
            }
            NodeMessage::Wait { barrier: Barrier::Names(names), .. }
                if names.len() > MAX_BARRIER_NAMES || names.iter().any(|n| n.len() > MAX_NAME_LEN) =>
            {
                return Err(format!(
                    "barrier of {} names exceeds {MAX_BARRIER_NAMES} names of up to {MAX_NAME_LEN} bytes",
                    names.len()
                ));
            }
            NodeMessage::Paths(paths) if paths.len() > MAX_PATH_REPORTS => {
                return Err(format!("path report of {} peers exceeds {MAX_PATH_REPORTS}", paths.len()));
            }
            NodeMessage::State(NodeState::Waiting { target, .. }) if target.len() > MAX_NAME_LEN => {
                return Err(format!("waiting target of {} bytes exceeds {MAX_NAME_LEN}", target.len()));
            }
            NodeMessage::State(NodeState::GaveUp { reason }) if reason.len() > MAX_STATE_REASON => {
                return Err(format!("reason of {} bytes exceeds {MAX_STATE_REASON}", reason.len()));
            }
            _ => {}
        }
        Ok(())
    }
}

/// Most peers in one [`NodeMessage::Paths`].
pub const MAX_PATH_REPORTS: usize = 1024;

/// How a node reaches one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathKind {
    /// Straight over UDP to this address (same network or hole punched).
    Direct(SocketAddr),
    /// Through the rendezvous' relay.
    Relayed,
}

impl std::fmt::Display for PathKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathKind::Direct(addr) => write!(f, "direct {addr}"),
            PathKind::Relayed => f.write_str("relayed"),
        }
    }
}

/// One entry of [`NodeMessage::Paths`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathReport {
    /// The peer.
    pub peer: NodeId,
    /// The path in use.
    pub kind: PathKind,
    /// Smoothed round-trip time of the QUIC connection, in microseconds.
    pub rtt_us: u32,
}

/// Where a node is before and while its program runs, for `boxer up`'s
/// progress lines and `boxer status`. A node without `wait_for` sends none:
/// joined means running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// Its program waits for `target` to listen on `port` (`wait_for`).
    Waiting {
        /// The name waited for (`db-0`, `db`), at most [`MAX_NAME_LEN`] bytes.
        target: String,
        /// The port.
        port: u16,
        /// Seconds the node had already waited when it sent this (waits
        /// for several targets add up). A duration, not a time: the
        /// node's clock and the watcher's need not agree.
        waited_secs: u32,
    },
    /// Its program has been started.
    Running,
    /// It gave up before starting its program (`wait_timeout`); its exit
    /// report follows.
    GaveUp {
        /// Why, for people, at most [`MAX_STATE_REASON`] bytes.
        reason: String,
    },
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeState::Waiting { target, port, .. } => write!(f, "waiting for {target}:{port}"),
            NodeState::Running => f.write_str("running"),
            NodeState::GaveUp { .. } => f.write_str("gave up waiting"),
        }
    }
}

/// How a node's program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Shell-style exit code: the program's code, or 128 + signal.
    pub code: i32,
}

/// Admin request to create a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateClusterRequest {
    /// The rendezvous' admin token.
    pub admin_token: String,
    /// Cluster name (a DNS label).
    pub name: String,
    /// Overlay network; `None` for [`DEFAULT_OVERLAY`].
    pub network: Option<ipnet::Ipv4Net>,
    /// Join token to require; `None` to let the server generate one.
    pub join_token: Option<String>,
}

/// Admin request to delete a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteClusterRequest {
    /// The rendezvous' admin token.
    pub admin_token: String,
    /// Cluster name.
    pub name: String,
}

/// Admin request to stop one member: the member gets [`ServerMessage::Stop`]
/// and stops as on SIGTERM (its program gets SIGTERM and its grace, its exit
/// is reported, it leaves).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopMemberRequest {
    /// The rendezvous' admin token.
    pub admin_token: String,
    /// Cluster name.
    pub cluster: String,
    /// The member's `<service>-<index>` name.
    pub node: String,
}

/// Default overlay network of a cluster: inside the carrier-grade NAT range
/// 100.64.0.0/10, which no cloud function or home network routes publicly.
pub const DEFAULT_OVERLAY: &str = "100.96.0.0/12";

/// A cluster as the rendezvous describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// Cluster name.
    pub name: String,
    /// Overlay network.
    pub network: ipnet::Ipv4Net,
    /// Join token.
    pub join_token: String,
}

/// What a node learns when it is admitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Joined {
    /// The node's id.
    pub node_id: NodeId,
    /// The node's overlay address.
    pub overlay_ip: Ipv4Addr,
    /// The overlay network.
    pub network: ipnet::Ipv4Net,
    /// Every name of the node (see [`crate::names::all_names`]).
    pub names: Vec<String>,
    /// The node's address as the rendezvous observed it.
    pub reflexive: SocketAddr,
    /// Membership at admission, the node itself included.
    pub snapshot: MembershipSnapshot,
    /// The cluster's key for path probes ([`crate::disco`]); members only.
    /// Probes are tagged with per-pair keys derived under it.
    pub disco_key: crate::disco::DiscoKey,
}

/// A condition a node can wait for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Barrier {
    /// At least this many members are present.
    Count(u32),
    /// Every one of these names resolves to a present member.
    Names(Vec<String>),
}

/// Messages a joined node sends after [`Request::Join`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeMessage {
    /// The full new set of listening ports.
    Listening(Vec<u16>),
    /// New local addresses.
    Addresses(Vec<SocketAddr>),
    /// Tell me ([`ServerMessage::BarrierReached`]) when `barrier` holds.
    Wait {
        /// Chosen by the node, echoed back.
        request_id: u32,
        /// The condition.
        barrier: Barrier,
    },
    /// Output lines of the node's program, in order.
    Logs(Vec<LogLine>),
    /// The node's program ended; the server records it and closes the
    /// connection (which is the node leaving).
    Exited(ExitStatus),
    /// Ask the rendezvous to start a hole punch with `peer`: both nodes get
    /// [`ServerMessage::Punch`] at once and probe each other.
    Punch {
        /// The node to punch to.
        peer: NodeId,
    },
    /// The node's current path to each peer it has a connection with, for
    /// `boxer status`.
    Paths(Vec<PathReport>),
    /// The node's state changed (waiting for a `wait_for` target, running,
    /// gave up). New in protocol version 3, as the last variant, so every
    /// earlier message encodes as before.
    State(NodeState),
    /// The node's direct path to `peer` stopped answering its probes
    /// (after [`ServerMessage::Away`], or on its own heartbeats). Evidence
    /// that `peer` is gone: the rendezvous ends an away member (one whose
    /// own connection to the rendezvous was lost) at once instead of
    /// waiting out its grace to rejoin. It changes nothing for a member
    /// that is still connected. New in protocol version 5.
    PeerLost {
        /// The silent peer.
        peer: NodeId,
    },
}

/// Messages from the server after a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMessage {
    /// Answer to [`Request::Join`].
    Joined(Joined),
    /// Answer to [`Request::Watch`].
    Snapshot(MembershipSnapshot),
    /// A membership change, after `Joined` or `Snapshot`.
    Event(MembershipEvent),
    /// A [`NodeMessage::Wait`] condition holds.
    BarrierReached {
        /// The request's id.
        request_id: u32,
    },
    /// Answer to [`Request::CreateCluster`].
    ClusterCreated(ClusterInfo),
    /// Answer to [`Request::DeleteCluster`].
    ClusterDeleted {
        /// Cluster name.
        name: String,
    },
    /// Output of a node's program (watchers that asked for logs).
    Logs {
        /// The node's `<service>-<index>` name.
        node: String,
        /// The lines.
        lines: Vec<LogLine>,
    },
    /// A node's program ended (watchers that asked for logs).
    Exited {
        /// The node's `<service>-<index>` name.
        node: String,
        /// How it ended.
        status: ExitStatus,
    },
    /// Start probing `peer` now (it was told the same).
    Punch {
        /// The other node.
        peer: NodeId,
    },
    /// A node's paths to its peers (watchers that asked for output).
    Paths {
        /// `<service>-<index>`.
        node: String,
        /// Its paths.
        paths: Vec<PathReport>,
    },
    /// Some log lines were dropped because this watcher fell behind.
    LogsDropped {
        /// How many batches were lost.
        batches: u64,
    },
    /// A node's state (watchers that asked for output): every change as it
    /// happens, and after the snapshot the current state of each member
    /// that sent one. Ordered with the node's output and exit: a node's
    /// exit report comes after its last lines and states.
    State {
        /// `<service>-<index>`.
        node: String,
        /// Its state.
        state: NodeState,
    },
    /// `peer`'s connection to the rendezvous was lost: it is away, kept in
    /// membership while it may reconnect. A member with a direct path to it
    /// probes it now and answers [`NodeMessage::PeerLost`] if it is silent,
    /// so that a dead member leaves in seconds, not after the grace. New in
    /// protocol version 5.
    Away {
        /// The away member.
        peer: NodeId,
    },
    /// To a member: stop as on SIGTERM. The program gets SIGTERM and its
    /// grace, the exit is reported, the member leaves (an admin's
    /// [`Request::StopMember`]). New in protocol version 6.
    Stop,
    /// Answer to [`Request::StopMember`]: the member was told to stop.
    MemberStopping {
        /// The member's `<service>-<index>` name.
        node: String,
    },
}

/// Application close codes of Boxer connections, with the reason text beside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum CloseCode {
    /// Orderly close.
    Normal = 0,
    /// Malformed frame, unexpected message, or bad hello.
    Protocol = 1,
    /// Incompatible protocol versions.
    Version = 2,
    /// Wrong join or admin token.
    Unauthorized = 3,
    /// No such cluster.
    UnknownCluster = 4,
    /// Name or cluster already taken.
    Conflict = 5,
    /// Invalid names or parameters.
    Invalid = 6,
    /// The peer is not a member of our cluster.
    NotAMember = 7,
    /// The cluster is full or the server at capacity.
    Capacity = 8,
    /// The client was too slow to say what it wants.
    Timeout = 9,
    /// The cluster was deleted.
    ClusterDeleted = 10,
    /// A runtime drops a connection it will replace at once (it reconnects):
    /// not a departure, the rendezvous keeps the member's place. New in
    /// protocol version 5.
    Reconnecting = 11,
}

impl CloseCode {
    /// The code as sent on the wire.
    pub fn code(self) -> u32 {
        self as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_limits() {
        let waiting = |target: String| NodeMessage::State(NodeState::Waiting { target, port: 5432, waited_secs: 3 });
        waiting("db-0".into()).check_limits().unwrap();
        let e = waiting("d".repeat(MAX_NAME_LEN + 1)).check_limits().unwrap_err();
        assert!(e.contains("waiting target"), "{e}");
        let gave_up = |reason: String| NodeMessage::State(NodeState::GaveUp { reason });
        gave_up("x".repeat(MAX_STATE_REASON)).check_limits().unwrap();
        assert!(gave_up("x".repeat(MAX_STATE_REASON + 1)).check_limits().is_err());
        NodeMessage::State(NodeState::Running).check_limits().unwrap();
    }

    #[test]
    fn new_variants_leave_old_encodings_alone() {
        // Variant tags are positions: State came last, so an exit report
        // still encodes as in version 2.
        let exit = postcard::to_stdvec(&NodeMessage::Exited(ExitStatus { code: 3 })).unwrap();
        assert_eq!(exit, [4, 6]);
        let state = postcard::to_stdvec(&NodeMessage::State(NodeState::Running)).unwrap();
        assert_eq!(state, [7, 1]);
        let dropped = postcard::to_stdvec(&ServerMessage::LogsDropped { batches: 2 }).unwrap();
        assert_eq!(dropped, [10, 2]);
        let msg = ServerMessage::State {
            node: "web-1".into(),
            state: NodeState::Waiting { target: "db-0".into(), port: 5432, waited_secs: 12 },
        };
        let back: ServerMessage = postcard::from_bytes(&postcard::to_stdvec(&msg).unwrap()).unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn states_read_as_status() {
        let w = NodeState::Waiting { target: "db-0".into(), port: 5432, waited_secs: 0 };
        assert_eq!(w.to_string(), "waiting for db-0:5432");
        assert_eq!(NodeState::Running.to_string(), "running");
    }
}
