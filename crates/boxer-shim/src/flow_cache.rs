//! Process-wide memory of the runtime's answers about overlay UDP flows.
//!
//! Asking the runtime costs one Unix-socket round trip (about 20 us), far
//! too slow to pay per datagram. This cache keeps, for at most
//! [`CACHE_TTL`] from the runtime's answer:
//!
//! * flows: (local port of the app's socket, overlay destination) -> the
//!   runtime's flow socket `L:Y` the datagrams are sent to instead;
//! * peers: flow port `Y` -> the remote app's overlay address and port,
//!   which is what a datagram from `L:Y` is reported as coming from.
//!
//! Negative answers are never cached (see [`FlowCache::insert_peer`]).
//!
//! The shim has no threads of its own but the app may; the global cache is a
//! `std::sync::Mutex` taken with `try_lock` only ([`with_cache`]). On
//! contention the caller asks the runtime instead of waiting, so a `fork`
//! that happened while another thread held the lock cannot deadlock the
//! child: its copy of the lock stays taken, and the child just asks the
//! runtime every time.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::sync::{Mutex, TryLockError};
use std::time::{Duration, Instant};

/// How long an answer of the runtime is used without asking again.
///
/// Safe because the runtime never frees a flow's port `Y` within 10 s of
/// an answer naming it: an open flow is closed only after 120 s idle (and
/// not while the app's socket holds its port), evicted only after 30 s
/// idle with the app's socket gone, and a closed flow keeps its socket
/// bound and its answer for a 15 s linger, extended by every answer (see
/// docs/shim.md, "UDP"). An entry is at most 10 s old (counted from before
/// the request was sent), so the flow it names still holds `Y`. Short
/// enough that the app re-asks (and so keeps the flow alive in the
/// runtime) several times per idle timeout even if it only ever hits the
/// cache.
pub const CACHE_TTL: Duration = Duration::from_secs(10);

/// Most entries per map. An app with more concurrent UDP flows than this
/// (a DNS-like server answering many clients) still works: when a map is
/// full, expired entries go first, and if that frees nothing the map is
/// cleared, costing each flow one more round trip. 1024 entries are about
/// 40 KiB, and the scan that clears them runs at most once per 1024 misses.
pub const CACHE_CAPACITY: usize = 1024;

/// An answer and when it was asked for.
#[derive(Debug, Clone, Copy)]
struct Entry {
    addr: SocketAddrV4,
    asked_at: Instant,
}

impl Entry {
    fn fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.asked_at) < CACHE_TTL
    }
}

/// The two maps; sans-IO: every call takes the current time.
#[derive(Debug, Default)]
pub struct FlowCache {
    flows: HashMap<(u16, SocketAddrV4), Entry>,
    peers: HashMap<u16, Entry>,
}

impl FlowCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The flow socket for datagrams from local port `src_port` to the
    /// overlay address `dst`, if known and fresh at `now`.
    pub fn flow(&self, src_port: u16, dst: SocketAddrV4, now: Instant) -> Option<SocketAddrV4> {
        self.flows.get(&(src_port, dst)).filter(|e| e.fresh(now)).map(|e| e.addr)
    }

    /// Remembers the runtime's `UdpFlow` answer `proxy`, asked at `asked_at`.
    pub fn insert_flow(&mut self, src_port: u16, dst: SocketAddrV4, proxy: SocketAddrV4, asked_at: Instant) {
        make_room(&mut self.flows, &(src_port, dst), asked_at);
        self.flows.insert((src_port, dst), Entry { addr: proxy, asked_at });
    }

    /// The overlay address behind flow port `port`, if known and fresh.
    pub fn peer(&self, port: u16, now: Instant) -> Option<SocketAddrV4> {
        self.peers.get(&port).filter(|e| e.fresh(now)).map(|e| e.addr)
    }

    /// Remembers that flow port `port` carries datagrams of the overlay
    /// address `peer` (a `UdpPeer` answer, or the destination of a
    /// `UdpFlow` answer). Only positive answers are kept: "no flow on that
    /// port" can stop being true the moment the runtime opens a new flow
    /// socket, and the port may be reused.
    pub fn insert_peer(&mut self, port: u16, peer: SocketAddrV4, asked_at: Instant) {
        make_room(&mut self.peers, &port, asked_at);
        self.peers.insert(port, Entry { addr: peer, asked_at });
    }

    /// Number of entries in both maps (expired ones included).
    pub fn len(&self) -> usize {
        self.flows.len() + self.peers.len()
    }

    /// Whether both maps are empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.flows.clear();
        self.peers.clear();
    }
}

/// Keeps `map` within [`CACHE_CAPACITY`] before `key` is inserted: drops
/// expired entries, then everything if it is still full.
fn make_room<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Entry>, key: &K, now: Instant) {
    if map.len() < CACHE_CAPACITY || map.contains_key(key) {
        return;
    }
    map.retain(|_, e| e.fresh(now));
    if map.len() >= CACHE_CAPACITY {
        map.clear();
    }
}

/// The process's cache; created on first use.
static CACHE: Mutex<Option<FlowCache>> = Mutex::new(None);

/// Runs `f` on the process's cache, or returns `None` without waiting if
/// another thread holds it (the caller then asks the runtime).
pub fn with<T>(f: impl FnOnce(&mut FlowCache) -> T) -> Option<T> {
    with_cache(&CACHE, f)
}

/// [`with`] on a given lock (tests use their own).
///
/// Never blocks. A lock poisoned by a panic (a bug: nothing panics while
/// holding it) is taken over with its contents cleared.
pub fn with_cache<T>(lock: &Mutex<Option<FlowCache>>, f: impl FnOnce(&mut FlowCache) -> T) -> Option<T> {
    let mut guard = match lock.try_lock() {
        Ok(guard) => guard,
        Err(TryLockError::WouldBlock) => return None,
        Err(TryLockError::Poisoned(poisoned)) => {
            let mut guard = poisoned.into_inner();
            guard.take();
            lock.clear_poison();
            guard
        }
    };
    Some(f(guard.get_or_insert_with(FlowCache::new)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn answers_live_for_the_ttl_from_when_they_were_asked() {
        let t0 = Instant::now();
        let mut c = FlowCache::new();
        let dst = addr("100.96.0.5:53");
        c.insert_flow(4000, dst, addr("127.100.0.1:41000"), t0);
        c.insert_peer(41000, dst, t0);
        assert_eq!(c.flow(4000, dst, t0), Some(addr("127.100.0.1:41000")));
        assert_eq!(c.flow(4000, dst, t0 + CACHE_TTL - Duration::from_millis(1)), Some(addr("127.100.0.1:41000")));
        assert_eq!(c.flow(4000, dst, t0 + CACHE_TTL), None, "expired exactly at the TTL");
        assert_eq!(c.peer(41000, t0 + Duration::from_secs(3)), Some(dst));
        assert_eq!(c.peer(41000, t0 + CACHE_TTL), None);
        // Keys are exact: another local port or destination is another flow.
        assert_eq!(c.flow(4001, dst, t0), None);
        assert_eq!(c.flow(4000, addr("100.96.0.5:54"), t0), None);
        assert_eq!(c.peer(41001, t0), None);
        // A clock that went "backwards" (an answer stamped later) stays fresh.
        assert!(c.flow(4000, dst, t0.checked_sub(Duration::from_secs(1)).unwrap_or(t0)).is_some());
        // A new answer replaces the old one and restarts its lifetime.
        let t1 = t0 + Duration::from_secs(8);
        c.insert_flow(4000, dst, addr("127.100.0.1:42000"), t1);
        assert_eq!(c.flow(4000, dst, t0 + CACHE_TTL + Duration::from_secs(1)), Some(addr("127.100.0.1:42000")));
    }

    #[test]
    fn size_is_bounded_expired_first_then_whole() {
        let t0 = Instant::now();
        let mut c = FlowCache::new();
        let dst = |i: usize| SocketAddrV4::new([100, 96, (i >> 8) as u8, i as u8].into(), 9);
        // Half old, half recent.
        for i in 0..CACHE_CAPACITY {
            let at = if i < CACHE_CAPACITY / 2 { t0 } else { t0 + Duration::from_secs(6) };
            c.insert_flow(1, dst(i), addr("127.100.0.1:1"), at);
            c.insert_peer(i as u16, dst(i), at);
        }
        assert_eq!(c.len(), 2 * CACHE_CAPACITY);
        // Replacing an existing key never evicts.
        c.insert_flow(1, dst(0), addr("127.100.0.1:2"), t0);
        assert_eq!(c.len(), 2 * CACHE_CAPACITY);
        // Full, at a time when the old half expired: only it goes.
        let later = t0 + CACHE_TTL + Duration::from_secs(1);
        c.insert_flow(2, dst(1), addr("127.100.0.1:3"), later);
        c.insert_peer(60000, dst(1), later);
        assert_eq!(c.flow(1, dst(CACHE_CAPACITY - 1), later), Some(addr("127.100.0.1:1")));
        assert_eq!(c.peer(CACHE_CAPACITY as u16 - 1, later), Some(dst(CACHE_CAPACITY - 1)));
        assert_eq!(c.len(), 2 * (CACHE_CAPACITY / 2 + 1));
        // Full of fresh entries: cleared, the new one kept.
        let mut c = FlowCache::new();
        for i in 0..CACHE_CAPACITY {
            c.insert_peer(i as u16, dst(i), t0);
        }
        c.insert_peer(60000, dst(7), t0);
        assert_eq!(c.len(), 1);
        assert_eq!(c.peer(60000, t0), Some(dst(7)));
        assert!(!c.is_empty());
        c.clear();
        assert!(c.is_empty());
    }

    #[test]
    fn contention_answers_none_without_waiting() {
        let lock = Mutex::new(None);
        let t0 = Instant::now();
        with_cache(&lock, |c| c.insert_peer(7, addr("100.96.0.2:7"), t0)).unwrap();
        let held = lock.lock().unwrap();
        assert!(with_cache(&lock, |c| c.peer(7, t0)).is_none(), "a held lock is not waited for");
        // Another thread holding it: same answer, immediately.
        std::thread::scope(|s| {
            s.spawn(|| assert!(with_cache(&lock, |_| ()).is_none()));
        });
        drop(held);
        assert_eq!(with_cache(&lock, |c| c.peer(7, t0)), Some(Some(addr("100.96.0.2:7"))));
    }

    #[test]
    fn a_poisoned_lock_is_taken_over_empty() {
        let lock = Mutex::new(None);
        let t0 = Instant::now();
        with_cache(&lock, |c| c.insert_peer(7, addr("100.96.0.2:7"), t0)).unwrap();
        let _ = std::panic::catch_unwind(|| {
            let _g = lock.lock().unwrap();
            panic!("poison it");
        });
        assert!(lock.is_poisoned());
        assert_eq!(with_cache(&lock, |c| c.peer(7, t0)), Some(None));
        assert!(!lock.is_poisoned());
    }
}
