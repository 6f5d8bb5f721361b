//! Cutting application datagrams into QUIC datagrams and putting them back
//! together, like IP fragmentation: lose one fragment, lose the datagram.
//!
//! Sans-IO: plain functions and a state machine that is told the time, so
//! every limit is tested without sockets or clocks.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::time::{Duration, Instant};

use boxer_proto::peer::{MAX_UDP_FRAGMENTS, MAX_UDP_PAYLOAD, UDP_HEADER_LEN, UdpHeader};
use bytes::{BufMut, Bytes, BytesMut};

/// How long a partly received datagram waits for its missing fragments.
/// A sender writes the fragments of one datagram back to back, so they
/// arrive within milliseconds of each other on any path; one missing after
/// 2 s is lost, and its siblings' memory is better freed (IP's 30 s dates
/// from slow links).
pub(crate) const REASSEMBLY_TIMEOUT: Duration = Duration::from_secs(2);

/// Memory partial datagrams of one peer may hold. 1 MiB is 16 maximum-size
/// datagrams missing fragments at once, far more than back-to-back
/// fragments need; it is also all a hostile peer can make us hold.
pub(crate) const PEER_REASSEMBLY_BYTES: usize = 1 << 20;

/// Memory partial datagrams of all peers together may hold, so that many
/// peers (hostile or on a lossy path) cannot add up to much.
pub(crate) const TOTAL_REASSEMBLY_BYTES: usize = 8 << 20;

/// Bookkeeping charged per stored fragment on top of its bytes, so that
/// empty fragments are not free.
const FRAGMENT_COST: usize = 64;

/// Bookkeeping charged per partial datagram on top of its fragment slots.
const PARTIAL_COST: usize = 128;

/// Why a datagram cannot be sent in fragments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SplitError {
    /// Larger than any UDP datagram.
    #[error("datagram of {0} bytes is larger than UDP allows ({MAX_UDP_PAYLOAD})")]
    TooLarge(usize),
    /// The connection's datagrams are too small for this one.
    #[error("QUIC datagrams of {max} bytes cannot carry {len} bytes in {MAX_UDP_FRAGMENTS} fragments")]
    PathTooSmall {
        /// The datagram's size.
        len: usize,
        /// Largest QUIC datagram of the connection.
        max: usize,
    },
}

/// How a datagram is cut: payload bytes per fragment (the last may hold
/// fewer) and number of fragments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Split {
    /// Payload bytes per fragment.
    pub(crate) chunk: usize,
    /// Number of fragments, at least 1 (an empty datagram is one fragment).
    pub(crate) count: u8,
}

/// How to cut a datagram of `len` bytes into QUIC datagrams of at most
/// `max_datagram` bytes, header included.
pub(crate) fn split(len: usize, max_datagram: usize) -> Result<Split, SplitError> {
    if len > MAX_UDP_PAYLOAD {
        return Err(SplitError::TooLarge(len));
    }
    let too_small = SplitError::PathTooSmall { len, max: max_datagram };
    let chunk = max_datagram.checked_sub(UDP_HEADER_LEN).filter(|&c| c > 0).ok_or(too_small)?;
    let count = len.div_ceil(chunk).max(1);
    let count = u8::try_from(count).map_err(|_| too_small)?;
    Ok(Split { chunk, count })
}

/// The fragments of `payload` cut as `split` says, each with its header:
/// `base`'s ports and id, and its own index and count.
pub(crate) fn fragments(base: UdpHeader, payload: &[u8], split: Split) -> impl Iterator<Item = (UdpHeader, &[u8])> {
    (0..split.count).map(move |index| {
        let start = (index as usize * split.chunk).min(payload.len());
        let end = (start + split.chunk).min(payload.len());
        (UdpHeader { index, count: split.count, ..base }, &payload[start..end])
    })
}

/// One QUIC datagram: `header` then `part`, written into `arena` and split
/// off it. The arena's allocation is shared by the datagrams cut from it,
/// so a busy flow allocates once per ~64 KiB rather than once per datagram.
pub(crate) fn encode(header: &UdpHeader, part: &[u8], arena: &mut BytesMut) -> Bytes {
    arena.reserve(UDP_HEADER_LEN + part.len());
    arena.put_slice(&header.encode());
    arena.put_slice(part);
    arena.split().freeze()
}

/// Memory limits of a [`Reassembler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// How long a partial datagram waits for its other fragments.
    pub(crate) timeout: Duration,
    /// Memory one peer's partial datagrams may hold.
    pub(crate) per_peer: usize,
    /// Memory all partial datagrams may hold.
    pub(crate) total: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { timeout: REASSEMBLY_TIMEOUT, per_peer: PEER_REASSEMBLY_BYTES, total: TOTAL_REASSEMBLY_BYTES }
    }
}

/// What became of a fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Push {
    /// The datagram is complete: its payload.
    Complete(Bytes),
    /// Stored; the datagram waits for more fragments.
    Pending,
    /// Not stored.
    Rejected(Reject),
}

/// Why a fragment was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Reject {
    /// Index and count do not describe a fragment.
    #[error("bad fragment index or count")]
    Bogus,
    /// This fragment arrived before.
    #[error("duplicate fragment")]
    Duplicate,
    /// The fragment's count differs from its siblings': the partial datagram
    /// is dropped too.
    #[error("fragment count differs from the datagram's other fragments")]
    Mismatch,
    /// The datagram would be larger than UDP allows: it is dropped.
    #[error("reassembled datagram would exceed {MAX_UDP_PAYLOAD} bytes")]
    Oversize,
    /// No room within the memory limits, even after dropping older partial
    /// datagrams.
    #[error("reassembly memory limit reached")]
    OverLimit,
}

/// Identifies a datagram among one peer's: ports and id.
type Key = (u16, u16, u32);

/// One datagram's fragments so far.
#[derive(Debug)]
struct Partial {
    /// Creation order within the reassembler (the key of `order`).
    seq: u64,
    started: Instant,
    parts: Vec<Option<Bytes>>,
    received: usize,
    len: usize,
    cost: usize,
}

#[derive(Debug, Default)]
struct PeerState {
    partials: HashMap<Key, Partial>,
    /// Partial datagrams oldest first.
    order: BTreeMap<u64, Key>,
    cost: usize,
}

/// Puts fragmented datagrams back together, within memory limits, for
/// peers identified by `P`.
///
/// Untrusted input never panics and never holds more than [`Limits`]
/// allow: when a fragment does not fit, the oldest partial datagrams of its
/// peer go first, then those of the peer holding the most.
#[derive(Debug)]
pub(crate) struct Reassembler<P> {
    limits: Limits,
    peers: HashMap<P, PeerState>,
    cost: usize,
    next_seq: u64,
}

impl<P: Copy + Eq + Hash> Reassembler<P> {
    /// An empty reassembler.
    pub(crate) fn new(limits: Limits) -> Self {
        Self { limits, peers: HashMap::new(), cost: 0, next_seq: 0 }
    }

    /// Memory held by partial datagrams (bytes plus bookkeeping).
    pub(crate) fn held(&self) -> usize {
        self.cost
    }

    /// Memory held by `peer`'s partial datagrams.
    #[cfg(test)]
    pub(crate) fn held_by(&self, peer: P) -> usize {
        self.peers.get(&peer).map_or(0, |p| p.cost)
    }

    /// Number of partial datagrams.
    pub(crate) fn partials(&self) -> usize {
        self.peers.values().map(|p| p.partials.len()).sum()
    }

    /// Takes fragment `header.index` of a datagram from `peer`, with its
    /// payload `fragment`, received at `now`.
    pub(crate) fn push(&mut self, peer: P, header: UdpHeader, fragment: Bytes, now: Instant) -> Push {
        if header.count == 0 || header.index >= header.count {
            return Push::Rejected(Reject::Bogus);
        }
        if fragment.len() > MAX_UDP_PAYLOAD {
            return Push::Rejected(Reject::Oversize);
        }
        if header.count == 1 {
            // The common case: a whole datagram, nothing to store or copy.
            return Push::Complete(fragment);
        }
        let key = (header.src_port, header.dst_port, header.id);
        let index = header.index as usize;
        let count = header.count as usize;
        let exists = match self.peers.get(&peer).and_then(|p| p.partials.get(&key)) {
            Some(partial) if partial.parts.len() != count => {
                self.remove(peer, key);
                return Push::Rejected(Reject::Mismatch);
            }
            Some(partial) if partial.parts[index].is_some() => return Push::Rejected(Reject::Duplicate),
            Some(partial) if partial.len + fragment.len() > MAX_UDP_PAYLOAD => {
                self.remove(peer, key);
                return Push::Rejected(Reject::Oversize);
            }
            Some(_) => true,
            None => false,
        };
        let mut add = fragment.len() + FRAGMENT_COST;
        if !exists {
            add += PARTIAL_COST + count * std::mem::size_of::<Option<Bytes>>();
        }
        if !self.make_room(peer, key, add) {
            if exists {
                // It cannot complete without this fragment.
                self.remove(peer, key);
            }
            return Push::Rejected(Reject::OverLimit);
        }
        if !exists {
            let seq = self.next_seq;
            self.next_seq += 1;
            let state = self.peers.entry(peer).or_default();
            state.order.insert(seq, key);
            let partial = Partial { seq, started: now, parts: vec![None; count], received: 0, len: 0, cost: 0 };
            state.partials.insert(key, partial);
        }
        let state = self.peers.get_mut(&peer).expect("peer state was just created or found");
        let partial = state.partials.get_mut(&key).expect("partial was just created or found");
        // A copy: the received datagram's buffer may be much larger than the
        // fragment (quinn receives in batches), and is not ours to pin.
        partial.len += fragment.len();
        partial.parts[index] = Some(Bytes::copy_from_slice(&fragment));
        partial.received += 1;
        partial.cost += add;
        state.cost += add;
        self.cost += add;
        if partial.received < count {
            return Push::Pending;
        }
        let partial = self.remove(peer, key).expect("partial is present");
        let mut whole = BytesMut::with_capacity(partial.len);
        for part in partial.parts.iter().flatten() {
            whole.put_slice(part);
        }
        Push::Complete(whole.freeze())
    }

    /// Drops partial datagrams older than the timeout at `now`; returns how
    /// many were dropped.
    pub(crate) fn expire(&mut self, now: Instant) -> usize {
        let timeout = self.limits.timeout;
        let mut expired = Vec::new();
        for (peer, state) in &self.peers {
            for key in state.order.values() {
                let started = state.partials.get(key).map(|p| p.started);
                if started.is_some_and(|s| now.saturating_duration_since(s) < timeout) {
                    break;
                }
                expired.push((*peer, *key));
            }
        }
        for &(peer, key) in &expired {
            self.remove(peer, key);
        }
        expired.len()
    }

    /// Drops every partial datagram of `peer`.
    pub(crate) fn forget(&mut self, peer: P) {
        if let Some(state) = self.peers.remove(&peer) {
            self.cost -= state.cost;
        }
    }

    /// Frees memory for `add` more bytes of `peer`'s datagram `keep`:
    /// `peer`'s oldest partial datagrams first, then the oldest of whichever
    /// peer holds the most. False if that is not enough.
    fn make_room(&mut self, peer: P, keep: Key, add: usize) -> bool {
        if add > self.limits.per_peer || add > self.limits.total {
            return false;
        }
        while self.peers.get(&peer).map_or(0, |p| p.cost) + add > self.limits.per_peer {
            if !self.evict_oldest(peer, keep) {
                return false;
            }
        }
        while self.cost + add > self.limits.total {
            let heaviest = self.peers.iter().max_by_key(|(_, s)| s.cost).map(|(p, _)| *p);
            if !heaviest.is_some_and(|h| self.evict_oldest(h, keep)) {
                return false;
            }
        }
        true
    }

    /// Drops `peer`'s oldest partial datagram other than `keep` (when it is
    /// `peer`'s); false if there is none.
    fn evict_oldest(&mut self, peer: P, keep: Key) -> bool {
        let Some(state) = self.peers.get(&peer) else { return false };
        let victim = state.order.values().find(|&&k| k != keep).copied();
        match victim {
            Some(key) => self.remove(peer, key).is_some(),
            None => false,
        }
    }

    fn remove(&mut self, peer: P, key: Key) -> Option<Partial> {
        let state = self.peers.get_mut(&peer)?;
        let partial = state.partials.remove(&key)?;
        state.order.remove(&partial.seq);
        state.cost -= partial.cost;
        self.cost -= partial.cost;
        if state.partials.is_empty() {
            self.peers.remove(&peer);
        }
        Some(partial)
    }
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    /// A typical QUIC datagram size on a 1500-byte MTU path.
    const MAX: usize = 1400;

    fn base() -> UdpHeader {
        UdpHeader { src_port: 4000, dst_port: 53, id: 7, index: 0, count: 0 }
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// Cuts `data` and pushes the fragments (in `order` of indices, all if
    /// empty) into `r` through the wire encoding.
    fn cut(data: &[u8], max: usize) -> Vec<(UdpHeader, Bytes)> {
        let split = split(data.len(), max).expect("fits");
        let mut arena = BytesMut::new();
        fragments(base(), data, split)
            .map(|(h, part)| {
                let wire = encode(&h, part, &mut arena);
                assert!(wire.len() <= max, "{} > {max}", wire.len());
                let decoded = UdpHeader::decode(&wire).expect("valid header");
                assert_eq!(decoded, h);
                (decoded, wire.slice(UDP_HEADER_LEN..))
            })
            .collect()
    }

    fn reassemble(parts: Vec<(UdpHeader, Bytes)>) -> Option<Bytes> {
        let mut r = Reassembler::new(Limits::default());
        let now = Instant::now();
        let mut out = None;
        for (h, body) in parts {
            match r.push(1u32, h, body, now) {
                Push::Complete(b) => out = Some(b),
                Push::Pending => {}
                Push::Rejected(why) => panic!("rejected: {why}"),
            }
        }
        assert_eq!(r.held(), 0, "nothing left behind");
        out
    }

    #[test]
    fn round_trips_every_edge_size() {
        let one = MAX - UDP_HEADER_LEN;
        for len in [0, 1, one - 1, one, one + 1, 2 * one, 2 * one + 1, 1460, MAX_UDP_PAYLOAD] {
            let data = payload(len);
            let parts = cut(&data, MAX);
            assert_eq!(parts.len(), len.div_ceil(one).max(1), "len {len}");
            assert_eq!(reassemble(parts).as_deref(), Some(&data[..]), "len {len}");
        }
    }

    #[test]
    fn largest_datagram_at_minimum_quic_mtu() {
        // ~1150 bytes per QUIC datagram at the 1200-byte minimum MTU.
        let data = payload(MAX_UDP_PAYLOAD);
        let parts = cut(&data, 1150);
        assert_eq!(parts.len(), 58);
        assert_eq!(reassemble(parts).as_deref(), Some(&data[..]));
    }

    #[test]
    fn split_refuses_what_cannot_be_carried() {
        assert_eq!(split(MAX_UDP_PAYLOAD + 1, MAX), Err(SplitError::TooLarge(MAX_UDP_PAYLOAD + 1)));
        assert!(matches!(split(1, UDP_HEADER_LEN), Err(SplitError::PathTooSmall { .. })));
        assert!(matches!(split(1, 3), Err(SplitError::PathTooSmall { .. })));
        // 255 fragments of 100 bytes hold 25500 bytes, not more.
        assert_eq!(split(25_500, 100 + UDP_HEADER_LEN), Ok(Split { chunk: 100, count: 255 }));
        assert!(matches!(split(25_501, 100 + UDP_HEADER_LEN), Err(SplitError::PathTooSmall { .. })));
        assert_eq!(split(0, UDP_HEADER_LEN + 1), Ok(Split { chunk: 1, count: 1 }));
    }

    #[test]
    fn out_of_order_fragments_reassemble() {
        let data = payload(5000);
        let mut parts = cut(&data, MAX);
        parts.reverse();
        parts.swap(0, 2);
        assert_eq!(reassemble(parts).as_deref(), Some(&data[..]));
    }

    #[test]
    fn duplicate_fragments_are_ignored() {
        let data = payload(3000);
        let parts = cut(&data, MAX);
        let mut r = Reassembler::new(Limits::default());
        let now = Instant::now();
        assert_eq!(r.push(1u32, parts[0].0, parts[0].1.clone(), now), Push::Pending);
        let held = r.held();
        assert_eq!(r.push(1, parts[0].0, parts[0].1.clone(), now), Push::Rejected(Reject::Duplicate));
        assert_eq!(r.held(), held, "a duplicate costs nothing");
        assert_eq!(r.push(1, parts[1].0, parts[1].1.clone(), now), Push::Pending);
        assert_eq!(r.push(1, parts[2].0, parts[2].1.clone(), now), Push::Complete(Bytes::from(data)));
        // A late duplicate of a completed datagram starts a new partial that
        // only times out.
        assert_eq!(r.push(1, parts[1].0, parts[1].1.clone(), now), Push::Pending);
        assert_eq!(r.expire(now + REASSEMBLY_TIMEOUT), 1);
        assert_eq!(r.held(), 0);
    }

    #[test]
    fn a_lost_fragment_times_out_and_frees_memory() {
        let data = payload(4000);
        let parts = cut(&data, MAX);
        let mut r = Reassembler::new(Limits::default());
        let start = Instant::now();
        for (h, body) in parts.iter().skip(1) {
            assert_eq!(r.push(1u32, *h, body.clone(), start), Push::Pending);
        }
        assert!(r.held() > 4000 - MAX);
        assert_eq!(r.expire(start + REASSEMBLY_TIMEOUT - Duration::from_millis(1)), 0);
        assert_eq!(r.partials(), 1);
        assert_eq!(r.expire(start + REASSEMBLY_TIMEOUT), 1);
        assert_eq!((r.held(), r.partials()), (0, 0));
        // The missing fragment arriving late starts over rather than completing.
        assert_eq!(r.push(1, parts[0].0, parts[0].1.clone(), start + REASSEMBLY_TIMEOUT), Push::Pending);
    }

    #[test]
    fn expiry_keeps_younger_datagrams() {
        let mut r = Reassembler::new(Limits::default());
        let start = Instant::now();
        let h = |id| UdpHeader { id, index: 0, count: 2, ..base() };
        r.push(1u32, h(1), Bytes::from_static(b"old"), start);
        r.push(1u32, h(2), Bytes::from_static(b"new"), start + Duration::from_secs(1));
        assert_eq!(r.expire(start + REASSEMBLY_TIMEOUT), 1);
        assert_eq!(r.partials(), 1);
        let last = UdpHeader { index: 1, ..h(2) };
        assert_eq!(r.push(1, last, Bytes::from_static(b"!"), start), Push::Complete(Bytes::from_static(b"new!")));
    }

    #[test]
    fn bogus_fragments_are_rejected_without_panic() {
        let mut r = Reassembler::new(Limits::default());
        let now = Instant::now();
        let body = Bytes::from_static(b"x");
        let h = |index, count| UdpHeader { index, count, ..base() };
        assert_eq!(r.push(1u32, h(0, 0), body.clone(), now), Push::Rejected(Reject::Bogus));
        assert_eq!(r.push(1, h(3, 3), body.clone(), now), Push::Rejected(Reject::Bogus));
        assert_eq!(r.push(1, h(255, 255), body.clone(), now), Push::Rejected(Reject::Bogus));
        // Count changes between fragments of one id: the partial goes too.
        assert_eq!(r.push(1, h(0, 3), body.clone(), now), Push::Pending);
        assert_eq!(r.push(1, h(1, 4), body.clone(), now), Push::Rejected(Reject::Mismatch));
        assert_eq!((r.held(), r.partials()), (0, 0));
        // One fragment larger than any datagram.
        let huge = Bytes::from(vec![0u8; MAX_UDP_PAYLOAD + 1]);
        assert_eq!(r.push(1, h(0, 2), huge.clone(), now), Push::Rejected(Reject::Oversize));
        assert_eq!(r.push(1, h(0, 1), huge, now), Push::Rejected(Reject::Oversize));
        // Fragments that add up to more than a datagram.
        let big = Bytes::from(vec![0u8; 40_000]);
        assert_eq!(r.push(1, h(0, 3), big.clone(), now), Push::Pending);
        assert_eq!(r.push(1, h(1, 3), big, now), Push::Rejected(Reject::Oversize));
        assert_eq!((r.held(), r.partials()), (0, 0));
    }

    #[test]
    fn garbage_never_panics() {
        // Every header shape with small and empty bodies, ids colliding.
        let mut r = Reassembler::new(Limits { per_peer: 64 << 10, ..Limits::default() });
        let now = Instant::now();
        for count in [0u8, 1, 2, 3, 255] {
            for index in [0u8, 1, 2, 254, 255] {
                for len in [0usize, 1, 1000] {
                    let h = UdpHeader { index, count, ..base() };
                    let _ = r.push(len as u32 % 2, h, Bytes::from(vec![0u8; len]), now);
                }
            }
        }
        assert!(r.held_by(0) <= 64 << 10 && r.held_by(1) <= 64 << 10);
        r.expire(now + REASSEMBLY_TIMEOUT);
        assert_eq!(r.held(), 0);
    }

    #[test]
    fn memory_cap_per_peer_is_enforced_oldest_first() {
        let limits = Limits { per_peer: 100_000, total: 1_000_000, ..Limits::default() };
        let mut r = Reassembler::new(limits);
        let now = Instant::now();
        // A hostile peer starts many datagrams and never finishes them.
        for id in 0..1000u32 {
            let h = UdpHeader { id, index: 0, count: 255, ..base() };
            let pushed = r.push(9u32, h, Bytes::from(vec![0u8; 1000]), now);
            assert_eq!(pushed, Push::Pending);
            assert!(r.held_by(9) <= limits.per_peer);
        }
        assert!(r.partials() < 1000);
        // The newest survive; the oldest were dropped to make room.
        let last = UdpHeader { id: 999, index: 1, count: 255, ..base() };
        assert_eq!(r.push(9, last, Bytes::from_static(b"x"), now), Push::Pending);
        let first = UdpHeader { id: 0, index: 1, count: 255, ..base() };
        let before = r.partials();
        r.push(9, first, Bytes::from_static(b"x"), now);
        assert_eq!(r.partials(), before, "id 0 was gone: it started anew and pushed out another");
        // Another peer is unaffected by the first one's cap.
        let data = payload(3000);
        let mut done = None;
        for (h, body) in cut(&data, MAX) {
            if let Push::Complete(b) = r.push(2, h, body, now) {
                done = Some(b);
            }
        }
        assert_eq!(done.as_deref(), Some(&data[..]));
    }

    #[test]
    fn total_memory_cap_takes_from_the_heaviest_peer() {
        let limits = Limits { per_peer: 60_000, total: 100_000, ..Limits::default() };
        let mut r = Reassembler::new(limits);
        let now = Instant::now();
        let start = |r: &mut Reassembler<u32>, peer, id| {
            let h = UdpHeader { id, index: 0, count: 2, ..base() };
            r.push(peer, h, Bytes::from(vec![0u8; 9000]), now)
        };
        for id in 0..6 {
            assert_eq!(start(&mut r, 1, id), Push::Pending);
        }
        for id in 0..5 {
            assert_eq!(start(&mut r, 2, id), Push::Pending);
            assert!(r.held() <= limits.total);
        }
        assert!(r.held_by(1) < r.held_by(2) + 10_000, "peer 1 paid for peer 2's datagrams");
        // A single fragment larger than a peer's share is refused outright.
        let h = UdpHeader { id: 99, index: 0, count: 2, ..base() };
        assert_eq!(r.push(3, h, Bytes::from(vec![0u8; 61_000]), now), Push::Rejected(Reject::OverLimit));
        assert_eq!(r.held_by(3), 0);
    }

    #[test]
    fn forget_frees_a_peer() {
        let mut r = Reassembler::new(Limits::default());
        let h = UdpHeader { index: 0, count: 2, ..base() };
        r.push(5u32, h, Bytes::from_static(b"abc"), Instant::now());
        assert!(r.held() > 0);
        r.forget(5);
        assert_eq!((r.held(), r.partials()), (0, 0));
    }
}
