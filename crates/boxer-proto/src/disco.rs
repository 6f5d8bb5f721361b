//! Path discovery probes between runtimes ("disco", after Tailscale's).
//!
//! Two runtimes that want a direct path send each other [`Probe::Ping`]s
//! from their one UDP socket to every candidate address of the other, and
//! answer every ping with a [`Probe::Pong`] to the address it came from. A
//! pong that echoes one of our pings proves the path works both ways; its
//! round-trip time ranks paths.
//!
//! Probes share the socket with QUIC, so they must never be mistaken for QUIC:
//! the first byte is `0x00`, and every QUIC packet has its fixed bit (`0x40`)
//! set (RFC 9000, 17.2 and 17.3). Probes are authenticated with a truncated
//! HMAC-SHA256 under the cluster's disco key, which the rendezvous hands to
//! members only: an outsider can neither forge a ping (to make us attribute
//! its address to a member) nor a pong (to confirm a path that does not
//! exist). The QUIC connection on top is authenticated on its own; a forged
//! probe could at worst cost a failed path, never data.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::NodeId;

/// First bytes of every probe. `0x00` keeps the QUIC fixed bit clear.
pub const MAGIC: [u8; 4] = [0x00, b'B', b'X', b'D'];

/// Bytes of the transaction id: random, so an off-path host cannot guess a
/// pong for a ping it did not see.
pub const TX_LEN: usize = 12;

/// Bytes of the truncated HMAC-SHA256 tag (128 bits, as in RFC 2104's advice
/// to keep at least half the hash).
pub const TAG_LEN: usize = 16;

/// Length of a cluster's disco key.
pub const KEY_LEN: usize = 32;

/// A cluster's disco key, given to every member at admission.
pub type DiscoKey = [u8; KEY_LEN];

/// A node's public X25519 key for probe authentication, published in
/// membership. Each pair of nodes tags its probes with a key only the two
/// can derive ([`pair_key`]), so a member cannot forge probes in another
/// member's name.
pub type DiscoPublic = [u8; 32];

/// Label of the pair key derivation (changes with the derivation).
const PAIR_LABEL: &[u8] = b"boxer disco pair key v1";

/// The probe key of nodes `a` and `b`: HMAC-SHA256 under the cluster's key
/// of the pair's X25519 shared secret and both ids, lower id first, so both
/// ends derive the same key and another cluster's pair never does.
pub fn pair_key(cluster: &DiscoKey, shared: &[u8; 32], a: NodeId, b: NodeId) -> DiscoKey {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(cluster).expect("HMAC takes any key length");
    mac.update(PAIR_LABEL);
    mac.update(shared);
    mac.update(&lo.0.to_be_bytes());
    mac.update(&hi.0.to_be_bytes());
    mac.finalize().into_bytes().into()
}

/// The sender a probe claims, before it is checked: the receiver uses it to
/// pick the pair key that [`Probe::decode`] then verifies the whole probe
/// (this id included) under. `None` if `packet` is no probe.
pub fn claimed_sender(packet: &[u8]) -> Option<NodeId> {
    if !is_probe(packet) {
        return None;
    }
    let id = packet.get(MAGIC.len() + 1..MAGIC.len() + 5)?;
    Some(NodeId(u32::from_be_bytes(id.try_into().ok()?)))
}

/// Largest encoded probe (a pong carrying an IPv6 address).
pub const MAX_PROBE_LEN: usize = MAGIC.len() + 1 + 4 + TX_LEN + 1 + 16 + 2 + TAG_LEN;

const KIND_PING: u8 = 1;
const KIND_PONG: u8 = 2;

/// One probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// "Can you hear me on this path?"
    Ping {
        /// The sending node.
        from: NodeId,
        /// Transaction id, echoed by the pong.
        tx: [u8; TX_LEN],
    },
    /// The answer to a ping.
    Pong {
        /// The answering node.
        from: NodeId,
        /// The ping's transaction id.
        tx: [u8; TX_LEN],
        /// The address the ping came from, as the answering node saw it: the
        /// pinger's mapping on that path.
        observed: SocketAddr,
    },
}

/// Why bytes are not a valid probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// Not a probe at all (QUIC or noise): leave it to QUIC.
    #[error("not a probe")]
    NotAProbe,
    /// Looks like a probe but is cut short or has an unknown kind.
    #[error("malformed probe")]
    Malformed,
    /// The tag does not match: not from a member of this cluster.
    #[error("probe with a bad authentication tag")]
    BadTag,
}

/// Whether `packet` starts like a probe (cheap check on the receive path).
pub fn is_probe(packet: &[u8]) -> bool {
    packet.len() >= MAGIC.len() && packet[..MAGIC.len()] == MAGIC
}

fn tag(key: &DiscoKey, body: &[u8]) -> [u8; TAG_LEN] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(body);
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(&full[..TAG_LEN]);
    out
}

impl Probe {
    /// Encodes and authenticates the probe.
    pub fn encode(&self, key: &DiscoKey) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_PROBE_LEN);
        out.extend_from_slice(&MAGIC);
        match self {
            Probe::Ping { from, tx } => {
                out.push(KIND_PING);
                out.extend_from_slice(&from.0.to_be_bytes());
                out.extend_from_slice(tx);
            }
            Probe::Pong { from, tx, observed } => {
                out.push(KIND_PONG);
                out.extend_from_slice(&from.0.to_be_bytes());
                out.extend_from_slice(tx);
                match observed.ip() {
                    IpAddr::V4(ip) => {
                        out.push(4);
                        out.extend_from_slice(&ip.octets());
                    }
                    IpAddr::V6(ip) => {
                        out.push(6);
                        out.extend_from_slice(&ip.octets());
                    }
                }
                out.extend_from_slice(&observed.port().to_be_bytes());
            }
        }
        let t = tag(key, &out);
        out.extend_from_slice(&t);
        out
    }

    /// Decodes and checks a probe. Never panics on any input.
    pub fn decode(packet: &[u8], key: &DiscoKey) -> Result<Self, ProbeError> {
        if !is_probe(packet) {
            return Err(ProbeError::NotAProbe);
        }
        if packet.len() < MAGIC.len() + TAG_LEN {
            return Err(ProbeError::Malformed);
        }
        let (body, received) = packet.split_at(packet.len() - TAG_LEN);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(body);
        // Constant-time comparison of the truncated tag.
        mac.verify_truncated_left(received).map_err(|_| ProbeError::BadTag)?;
        let mut r = Reader(&body[MAGIC.len()..]);
        let kind = r.take::<1>()?[0];
        let from = NodeId(u32::from_be_bytes(r.take::<4>()?));
        let tx = r.take::<TX_LEN>()?;
        let probe = match kind {
            KIND_PING => Probe::Ping { from, tx },
            KIND_PONG => {
                let ip = match r.take::<1>()?[0] {
                    4 => IpAddr::V4(Ipv4Addr::from(r.take::<4>()?)),
                    6 => IpAddr::V6(Ipv6Addr::from(r.take::<16>()?)),
                    _ => return Err(ProbeError::Malformed),
                };
                let port = u16::from_be_bytes(r.take::<2>()?);
                Probe::Pong { from, tx, observed: SocketAddr::new(ip, port) }
            }
            _ => return Err(ProbeError::Malformed),
        };
        if !r.0.is_empty() {
            return Err(ProbeError::Malformed);
        }
        Ok(probe)
    }

    /// The sending node.
    pub fn from(&self) -> NodeId {
        match self {
            Probe::Ping { from, .. } | Probe::Pong { from, .. } => *from,
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], ProbeError> {
        if self.0.len() < N {
            return Err(ProbeError::Malformed);
        }
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        Ok(head.try_into().expect("split at N"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: DiscoKey = [7; KEY_LEN];

    #[test]
    fn pair_keys_agree_between_the_two_and_differ_for_anyone_else() {
        let shared = [5u8; 32];
        let ab = pair_key(&KEY, &shared, NodeId(1), NodeId(2));
        assert_eq!(ab, pair_key(&KEY, &shared, NodeId(2), NodeId(1)));
        assert_ne!(ab, pair_key(&KEY, &shared, NodeId(1), NodeId(3)));
        assert_ne!(ab, pair_key(&[8; KEY_LEN], &shared, NodeId(1), NodeId(2)));
        assert_ne!(ab, pair_key(&KEY, &[6; 32], NodeId(1), NodeId(2)));
        let probe = Probe::Ping { from: NodeId(1), tx: [3; TX_LEN] }.encode(&ab);
        assert_eq!(claimed_sender(&probe), Some(NodeId(1)));
        assert_eq!(claimed_sender(b"QUIC"), None);
        assert_eq!(claimed_sender(&MAGIC), None);
    }

    #[test]
    fn round_trip() {
        let probes = [
            Probe::Ping { from: NodeId(3), tx: [1; TX_LEN] },
            Probe::Pong { from: NodeId(9), tx: [2; TX_LEN], observed: "203.0.113.7:4242".parse().unwrap() },
            Probe::Pong { from: NodeId(9), tx: [2; TX_LEN], observed: "[2001:db8::1]:80".parse().unwrap() },
        ];
        for p in probes {
            let bytes = p.encode(&KEY);
            assert!(bytes.len() <= MAX_PROBE_LEN);
            assert!(is_probe(&bytes));
            assert_eq!(bytes[0] & 0x40, 0, "QUIC fixed bit must be clear");
            assert_eq!(Probe::decode(&bytes, &KEY), Ok(p));
        }
    }

    #[test]
    fn another_key_or_a_flipped_bit_is_refused() {
        let bytes = Probe::Ping { from: NodeId(3), tx: [1; TX_LEN] }.encode(&KEY);
        assert_eq!(Probe::decode(&bytes, &[8; KEY_LEN]), Err(ProbeError::BadTag));
        for i in MAGIC.len()..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 1;
            assert_eq!(Probe::decode(&b, &KEY), Err(ProbeError::BadTag), "byte {i}");
        }
    }

    #[test]
    fn quic_and_garbage_are_not_probes() {
        assert_eq!(Probe::decode(&[0xc3, 0, 0, 0, 1], &KEY), Err(ProbeError::NotAProbe));
        assert_eq!(Probe::decode(&[], &KEY), Err(ProbeError::NotAProbe));
        assert_eq!(Probe::decode(&MAGIC, &KEY), Err(ProbeError::Malformed));
        // Every truncation of a valid probe is refused without a panic.
        let bytes = Probe::Pong { from: NodeId(1), tx: [0; TX_LEN], observed: "[::1]:1".parse().unwrap() }.encode(&KEY);
        for n in 0..bytes.len() {
            assert!(Probe::decode(&bytes[..n], &KEY).is_err());
        }
    }
}
