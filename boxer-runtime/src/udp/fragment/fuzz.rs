//! Fuzz targets for reassembly, which takes fragments from any peer: a
//! member can send any header with any payload, in any order and amount.
//!
//! Bounded-time tests on stable (bolero's `check!`); docs/security.md says
//! how to run them longer.

use std::time::{Duration, Instant};

use bolero::{check, produce};
use boxer_proto::fuzz::{self, Input};
use bytes::{Bytes, BytesMut};

use super::*;

/// Largest fuzz input: room for a few hundred fragments.
const MAX_INPUT: usize = 2048;

/// Peers sending in one run: few, so that their datagrams collide.
const PEERS: u8 = 3;

/// Any sequence of fragments, waits, expiries and departures from a few
/// peers: reassembly never panics, never holds more than its limits, and
/// what it completes is at most a UDP datagram made of the fragments' bytes
/// in index order; at the end, expiry frees everything.
#[test]
fn reassembly_within_limits() {
    check!()
        .with_generator(produce::<Vec<u8>>().with().len(0usize..=MAX_INPUT))
        .with_test_time(fuzz::test_time())
        .for_each(|bytes: &Vec<u8>| {
            let mut input = Input::new(bytes);
            // Small limits make eviction happen; the real ones are checked too.
            let limits = match input.byte() % 3 {
                0 => Limits::default(),
                _ => Limits { per_peer: 24 << 10, total: 40 << 10, ..Limits::default() },
            };
            let mut r = Reassembler::new(limits);
            let start = Instant::now();
            let mut now = start;
            while !input.is_empty() {
                match input.byte() % 8 {
                    0 => now += Duration::from_millis(input.number(2)),
                    1 => {
                        r.expire(now);
                    }
                    2 => r.forget(input.byte() % PEERS),
                    _ => push(&mut r, &mut input, now),
                }
                assert!(r.held() <= limits.total, "{} held, limit {}", r.held(), limits.total);
                let by_peer: Vec<usize> = (0..PEERS).map(|p| r.held_by(p)).collect();
                assert!(by_peer.iter().all(|&h| h <= limits.per_peer), "{by_peer:?}, limit {}", limits.per_peer);
                assert_eq!(by_peer.iter().sum::<usize>(), r.held());
                assert_eq!(r.held() == 0, r.partials() == 0);
            }
            r.expire(now + limits.timeout);
            assert_eq!((r.held(), r.partials()), (0, 0));
        });
}

/// One fragment chosen by the input: mostly of datagrams of a few
/// fragments (so some complete), filled with its index.
fn push(r: &mut Reassembler<u8>, input: &mut Input<'_>, now: Instant) {
    let peer = input.byte() % PEERS;
    let id = u32::from(input.byte() % 4);
    let count = match input.byte() {
        c @ 0..192 => c % 4,
        c => c,
    };
    let index = input.byte() % count.saturating_add(1).max(1);
    // Mostly small, so a run holds many; sometimes up to past the UDP limit.
    let len = match input.byte() {
        0..224 => input.number(2) as usize % 2048,
        _ => (input.number(4) as usize).min(MAX_UDP_PAYLOAD + 1),
    };
    let header = UdpHeader { src_port: 5000, dst_port: 53, id, index, count };
    let fragment = Bytes::from(vec![index; len]);
    let held = r.held();
    match r.push(peer, header, fragment.clone(), now) {
        Push::Complete(whole) if count == 1 => assert_eq!(whole, fragment),
        Push::Complete(whole) => {
            assert!(whole.len() <= MAX_UDP_PAYLOAD);
            assert!(whole.is_sorted() && whole.iter().all(|&b| b < count), "fragments out of order");
        }
        Push::Pending => assert!(r.held() > held || r.partials() > 0),
        Push::Rejected(Reject::Bogus) => assert!(count == 0 || index >= count),
        Push::Rejected(_) => {}
    }
}

/// Any datagram size and path: it is cut into QUIC datagrams no larger than
/// the path takes, or refused for a stated reason; what is cut reassembles
/// to the datagram.
#[test]
fn split_and_reassemble() {
    check!().with_test_time(fuzz::test_time()).for_each(|bytes: &[u8]| {
        let mut input = Input::new(bytes);
        let len = input.number(4) as usize % (MAX_UDP_PAYLOAD + 2);
        let max = input.number(2) as usize;
        let s = match split(len, max) {
            Ok(s) => s,
            Err(SplitError::TooLarge(n)) => return assert!(n > MAX_UDP_PAYLOAD),
            Err(SplitError::PathTooSmall { .. }) => {
                let chunk = max.saturating_sub(UDP_HEADER_LEN);
                return assert!(chunk == 0 || len.div_ceil(chunk) > MAX_UDP_FRAGMENTS);
            }
        };
        assert!(s.count >= 1 && s.chunk + UDP_HEADER_LEN <= max && s.chunk * usize::from(s.count) >= len);
        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let base = UdpHeader { src_port: 1, dst_port: 2, id: 3, index: 0, count: 0 };
        let mut arena = BytesMut::new();
        let mut r = Reassembler::new(Limits::default());
        let now = Instant::now();
        let mut whole = None;
        for (h, part) in fragments(base, &payload, s) {
            let wire = encode(&h, part, &mut arena);
            assert!(wire.len() <= max);
            let header = UdpHeader::decode(&wire).expect("a header we wrote");
            if let Push::Complete(b) = r.push(0u8, header, wire.slice(UDP_HEADER_LEN..), now) {
                whole = Some(b);
            }
        }
        assert_eq!(whole.as_deref(), Some(&payload[..]));
    });
}
