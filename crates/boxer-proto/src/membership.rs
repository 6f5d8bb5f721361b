//! Cluster membership: who is in the cluster, at which addresses, listening on
//! which ports; and the table every runtime keeps from the rendezvous feed.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::names::{self, NameQuery};

/// A node's id within its cluster, assigned by the rendezvous (never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&names::node_name(self.0))
    }
}

/// SHA-256 of a DER certificate. Nodes and the rendezvous are identified by the
/// fingerprint of their self-signed certificate, as WebRTC does: the TLS
/// handshake proves possession of the certificate's key, and the fingerprint
/// pins the certificate.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint(pub [u8; 32]);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", &hex::encode(self.0)[..16])
    }
}

/// Why a fingerprint string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid fingerprint {0:?}: expected 64 hex digits (a SHA-256), colons allowed")]
pub struct FingerprintParseError(pub String);

impl FromStr for Fingerprint {
    type Err = FingerprintParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let clean: String = s.trim().chars().filter(|&c| c != ':').collect();
        let mut out = [0u8; 32];
        hex::decode_to_slice(&clean, &mut out).map_err(|_| FingerprintParseError(s.to_owned()))?;
        Ok(Self(out))
    }
}

/// One node as every other node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Id assigned by the rendezvous.
    pub node_id: NodeId,
    /// Service the node is a replica of.
    pub service: String,
    /// Replica index within the service.
    pub index: u32,
    /// The node's overlay address.
    pub overlay_ip: Ipv4Addr,
    /// Fingerprint of the certificate the node presents to peers.
    pub fingerprint: Fingerprint,
    /// The node's address as observed by the rendezvous (its NAT mapping).
    pub reflexive: SocketAddr,
    /// Addresses the node's socket is bound to on its own interfaces.
    pub local: Vec<SocketAddr>,
    /// TCP ports the node accepts overlay connections on, sorted.
    pub listening: Vec<u16>,
    /// The node's public key for probe authentication ([`crate::disco`]).
    pub disco_public: crate::disco::DiscoPublic,
}

impl Member {
    /// `<service>-<index>`.
    pub fn replica_name(&self) -> String {
        names::replica_name(&self.service, self.index)
    }

    /// Candidate addresses to reach this node at, best first.
    pub fn candidates(&self) -> Vec<SocketAddr> {
        let mut out = vec![self.reflexive];
        out.extend(self.local.iter().copied().filter(|a| *a != self.reflexive));
        out
    }
}

/// A change to the membership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberChange {
    /// A node was admitted.
    Joined(Member),
    /// A node left: its connection closed or went idle.
    Left {
        /// The node that left.
        node_id: NodeId,
    },
    /// A node's set of listening ports changed (full new set).
    Listening {
        /// The node.
        node_id: NodeId,
        /// The new sorted set of ports.
        ports: Vec<u16>,
    },
    /// A node's addresses changed.
    Addresses {
        /// The node.
        node_id: NodeId,
        /// New reflexive address.
        reflexive: SocketAddr,
        /// New local addresses.
        local: Vec<SocketAddr>,
    },
}

/// A numbered change; `seq` increases by one per change within a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipEvent {
    /// Position of this change in the cluster's history.
    pub seq: u64,
    /// The change.
    pub change: MemberChange,
}

/// A full copy of the membership at one point of its history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipSnapshot {
    /// `seq` of the last change included.
    pub seq: u64,
    /// All current members, by node id.
    pub members: Vec<Member>,
}

/// Why an event could not be applied to a [`Membership`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// A change was skipped: the receiver must resynchronise from a snapshot.
    #[error("membership event {got} out of order (expected {expected})")]
    Gap {
        /// The next expected sequence number.
        expected: u64,
        /// The one received.
        got: u64,
    },
}

/// The membership table a node or CLI keeps, fed by a snapshot then events.
#[derive(Debug, Clone, Default)]
pub struct Membership {
    cluster: String,
    seq: u64,
    members: BTreeMap<NodeId, Member>,
}

impl Membership {
    /// Builds the table of `cluster` from a snapshot.
    pub fn from_snapshot(cluster: &str, snapshot: MembershipSnapshot) -> Self {
        Self {
            cluster: cluster.to_owned(),
            seq: snapshot.seq,
            members: snapshot.members.into_iter().map(|m| (m.node_id, m)).collect(),
        }
    }

    /// Applies one event. Events at or below the current `seq` are ignored (a
    /// snapshot may already include them); a gap is an error.
    pub fn apply(&mut self, event: MembershipEvent) -> Result<(), ApplyError> {
        if event.seq <= self.seq {
            return Ok(());
        }
        if event.seq != self.seq + 1 {
            return Err(ApplyError::Gap { expected: self.seq + 1, got: event.seq });
        }
        self.seq = event.seq;
        match event.change {
            MemberChange::Joined(m) => {
                self.members.insert(m.node_id, m);
            }
            MemberChange::Left { node_id } => {
                self.members.remove(&node_id);
            }
            MemberChange::Listening { node_id, ports } => {
                if let Some(m) = self.members.get_mut(&node_id) {
                    m.listening = ports;
                }
            }
            MemberChange::Addresses { node_id, reflexive, local } => {
                if let Some(m) = self.members.get_mut(&node_id) {
                    m.reflexive = reflexive;
                    m.local = local;
                }
            }
        }
        Ok(())
    }

    /// The cluster's name.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// `seq` of the last applied change.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// All members, by node id.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The member with this id.
    pub fn get(&self, node_id: NodeId) -> Option<&Member> {
        self.members.get(&node_id)
    }

    /// The member with this overlay address.
    pub fn by_ip(&self, ip: Ipv4Addr) -> Option<&Member> {
        self.members.values().find(|m| m.overlay_ip == ip)
    }

    /// The member presenting this certificate fingerprint.
    pub fn by_fingerprint(&self, fp: &Fingerprint) -> Option<&Member> {
        self.members.values().find(|m| &m.fingerprint == fp)
    }

    /// Every member a name refers to, in replica-index order. Empty if the
    /// name is a Boxer name with no current member, `None` if it is not a
    /// Boxer name of this cluster at all.
    pub fn resolve(&self, name: &str) -> Option<Vec<&Member>> {
        let query = names::parse(name, &self.cluster)?;
        let mut found: Vec<&Member> = match &query {
            NameQuery::Node(id) => self.members.get(&NodeId(*id)).into_iter().collect(),
            NameQuery::Replica { service, index } => {
                self.members.values().filter(|m| &m.service == service && m.index == *index).collect()
            }
            NameQuery::Service(service) => self.members.values().filter(|m| &m.service == service).collect(),
        };
        found.sort_by_key(|m| (m.index, m.node_id));
        Some(found)
    }

    /// A copy of the table as a snapshot.
    pub fn snapshot(&self) -> MembershipSnapshot {
        MembershipSnapshot { seq: self.seq, members: self.members.values().cloned().collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u32, service: &str, index: u32) -> Member {
        Member {
            node_id: NodeId(id),
            service: service.into(),
            index,
            overlay_ip: Ipv4Addr::new(100, 96, 0, id as u8),
            fingerprint: Fingerprint([id as u8; 32]),
            reflexive: "127.0.0.1:1000".parse().unwrap(),
            local: vec![],
            listening: vec![],
            disco_public: [id as u8; 32],
        }
    }

    #[test]
    fn snapshot_then_events() {
        let mut m = Membership::from_snapshot(
            "demo",
            MembershipSnapshot { seq: 2, members: vec![member(1, "web", 1), member(2, "web", 0)] },
        );
        // Already included in the snapshot: ignored.
        m.apply(MembershipEvent { seq: 2, change: MemberChange::Left { node_id: NodeId(1) } }).unwrap();
        assert_eq!(m.len(), 2);
        m.apply(MembershipEvent { seq: 3, change: MemberChange::Joined(member(3, "db", 0)) }).unwrap();
        m.apply(MembershipEvent { seq: 4, change: MemberChange::Listening { node_id: NodeId(3), ports: vec![6379] } })
            .unwrap();
        assert_eq!(m.get(NodeId(3)).unwrap().listening, [6379]);
        let gap = m.apply(MembershipEvent { seq: 9, change: MemberChange::Left { node_id: NodeId(3) } });
        assert_eq!(gap, Err(ApplyError::Gap { expected: 5, got: 9 }));

        let web: Vec<_> = m.resolve("web").unwrap().iter().map(|m| m.node_id.0).collect();
        assert_eq!(web, [2, 1], "index order");
        assert_eq!(m.resolve("db-0.demo.boxer").unwrap()[0].node_id, NodeId(3));
        assert_eq!(m.resolve("node-1").unwrap()[0].service, "web");
        assert!(m.resolve("db-1").unwrap().is_empty());
        assert!(m.resolve("example.org").is_none());
        assert_eq!(m.by_ip(Ipv4Addr::new(100, 96, 0, 3)).unwrap().node_id, NodeId(3));
    }

    #[test]
    fn fingerprint_text() {
        let fp = Fingerprint([0xab; 32]);
        let text = fp.to_string();
        assert_eq!(text.parse::<Fingerprint>().unwrap(), fp);
        let colons = text.as_bytes().chunks(2).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join(":");
        assert_eq!(colons.to_uppercase().parse::<Fingerprint>().unwrap(), fp);
        assert!("abc".parse::<Fingerprint>().is_err());
    }
}
