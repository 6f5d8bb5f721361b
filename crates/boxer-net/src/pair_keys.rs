//! Per-pair probe keys: a member can only tag probes for the pairs it is
//! part of.
//!
//! Every node makes an X25519 key pair when it starts and publishes the
//! public half with its join ([`boxer_proto::Member::disco_public`]). The
//! probes between nodes A and B are tagged with
//! [`boxer_proto::disco::pair_key`] of their shared secret, which only A and
//! B can compute; the cluster's disco key goes into the derivation too, so
//! the key also belongs to this cluster. A member that knows the cluster key
//! (every member does) can therefore no longer forge a probe in another
//! member's name: the receiver checks it under the key of the pair the probe
//! claims, and the forger does not have that key.

use std::collections::HashMap;

use boxer_proto::NodeId;
use boxer_proto::disco::{DiscoKey, DiscoPublic, pair_key};
use x25519_dalek::{PublicKey, StaticSecret};

/// This node's probe secret.
pub struct DiscoSecret(StaticSecret);

impl std::fmt::Debug for DiscoSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DiscoSecret").field(&"<secret>").finish()
    }
}

impl DiscoSecret {
    /// A fresh secret from the system's random source.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)?;
        Ok(Self(StaticSecret::from(bytes)))
    }

    /// The public half, for the join request.
    pub fn public(&self) -> DiscoPublic {
        PublicKey::from(&self.0).to_bytes()
    }
}

/// Largest number of pair keys kept: a peer that changes its published key
/// (it never does; a new node has a new id) would otherwise add entries.
/// Far above any cluster's size, so eviction is a safety net only.
const MAX_PAIR_KEYS: usize = 65_536;

/// The probe keys of this node's pairs, derived once per peer and key.
#[derive(Debug)]
pub struct PairKeys {
    me: NodeId,
    cluster: DiscoKey,
    secret: DiscoSecret,
    cache: HashMap<(NodeId, DiscoPublic), Option<DiscoKey>>,
}

impl PairKeys {
    /// Keys for node `me` of a cluster with key `cluster`.
    pub fn new(me: NodeId, cluster: DiscoKey, secret: DiscoSecret) -> Self {
        Self { me, cluster, secret, cache: HashMap::new() }
    }

    /// The key of the pair (this node, `peer`) for the peer's published
    /// `public` key. `None` when the peer's key is degenerate (a low-order
    /// point gives a shared secret anyone can compute): that peer gets no
    /// probes and none of its probes are accepted.
    pub fn key(&mut self, peer: NodeId, public: &DiscoPublic) -> Option<DiscoKey> {
        if let Some(key) = self.cache.get(&(peer, *public)) {
            return *key;
        }
        let shared = self.secret.0.diffie_hellman(&PublicKey::from(*public));
        let key = shared.was_contributory().then(|| pair_key(&self.cluster, shared.as_bytes(), self.me, peer));
        if self.cache.len() >= MAX_PAIR_KEYS {
            self.cache.clear();
        }
        self.cache.insert((peer, *public), key);
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use boxer_proto::disco::{Probe, ProbeError, TX_LEN, claimed_sender};

    const CLUSTER: DiscoKey = [9; 32];

    fn node(id: u32) -> (NodeId, DiscoPublic, PairKeys) {
        let secret = DiscoSecret::generate().unwrap();
        let public = secret.public();
        (NodeId(id), public, PairKeys::new(NodeId(id), CLUSTER, secret))
    }

    #[test]
    fn both_ends_derive_one_key_and_a_third_member_cannot_speak_for_either() {
        let (a, a_pub, mut a_keys) = node(1);
        let (b, b_pub, mut b_keys) = node(2);
        let (_, _, mut c_keys) = node(3);
        let ab = a_keys.key(b, &b_pub).unwrap();
        assert_eq!(Some(ab), b_keys.key(a, &a_pub));
        // A probe from A reaches B under their key.
        let ping = Probe::Ping { from: a, tx: [1; TX_LEN] }.encode(&ab);
        let claimed = claimed_sender(&ping).unwrap();
        assert_eq!(Probe::decode(&ping, &b_keys.key(claimed, &a_pub).unwrap()).unwrap().from(), a);
        // C, a member with the cluster key and its own pair keys, forges a
        // ping "from A" to B with every key it has: B, checking under the
        // key of the claimed pair (A, B), refuses them all.
        let forged_keys = [c_keys.key(b, &b_pub).unwrap(), c_keys.key(a, &a_pub).unwrap(), CLUSTER];
        for key in forged_keys {
            let forged = Probe::Ping { from: a, tx: [2; TX_LEN] }.encode(&key);
            let claimed = claimed_sender(&forged).unwrap();
            assert_eq!(Probe::decode(&forged, &b_keys.key(claimed, &a_pub).unwrap()), Err(ProbeError::BadTag));
        }
        // Another cluster's pair with the same secrets has another key.
        let mut other = PairKeys::new(a, [1; 32], DiscoSecret(a_keys.secret.0.clone()));
        assert_ne!(other.key(b, &b_pub), Some(ab));
    }

    #[test]
    fn a_degenerate_public_key_gets_no_pair_key() {
        let (_, _, mut keys) = node(1);
        // The identity point: a "shared secret" of zeros, known to all.
        assert_eq!(keys.key(NodeId(2), &[0; 32]), None);
        assert_eq!(keys.key(NodeId(2), &[0; 32]), None, "cached as refused");
    }
}
