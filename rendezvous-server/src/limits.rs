//! Limits that hold under abuse: what one source address, or one member,
//! may take of the rendezvous. Pure state (time is passed in), so the
//! arithmetic is tested without sockets; `lib.rs`, `session.rs` and
//! `relay.rs` apply it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Limits one rendezvous applies. The defaults are for the public internet:
/// far above what an honest cluster does, low enough that one abuser cannot
/// take the server from everyone else.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Connections open at once from one IP address. Many honest nodes can
    /// share an address (functions behind one NAT gateway, a lab): this
    /// allows a 1000-node cluster behind one NAT plus its watchers.
    pub connections_per_source: usize,
    /// New connections per second from one IP address, sustained. Every
    /// join and watch is a connection; beyond this they are refused before
    /// the TLS handshake, so a flood costs the server a packet each.
    pub new_connections_per_source: f64,
    /// New connections from one IP address at once: a whole cluster
    /// starting together behind one NAT.
    pub new_connections_burst: f64,
    /// Bytes per second one member may send through the relay (its peers
    /// without a direct path). Beyond it packets are dropped as on a full
    /// link, and QUIC slows down. 1 Gbit/s: more than one relayed pair
    /// reaches on a 2-core server (docs/benchmarks.md), so honest traffic
    /// is not shaped, and a member cannot take a big server's uplink.
    pub relay_bytes_per_sec: f64,
    /// Bytes of relayed packets one member may send at once.
    pub relay_burst: f64,
    /// Bytes per second of output lines one member may ship (stored on the
    /// rendezvous' disk and sent to every watcher). Beyond it lines are
    /// dropped, counted, and the count is written into the node's log.
    pub log_bytes_per_sec: f64,
    /// Bytes of output lines one member may ship at once (a program that
    /// prints its configuration at start).
    pub log_burst: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections_per_source: 2048,
            new_connections_per_source: 200.0,
            new_connections_burst: 1000.0,
            relay_bytes_per_sec: 125_000_000.0,
            relay_burst: 8.0 * 1024.0 * 1024.0,
            log_bytes_per_sec: 1024.0 * 1024.0,
            log_burst: 16.0 * 1024.0 * 1024.0,
        }
    }
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Self { rate, burst, tokens: burst, at: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = self.at.max(now);
    }

    /// Takes `amount` tokens if there are that many.
    pub fn take(&mut self, amount: f64, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= amount {
            self.tokens -= amount;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is full (nothing to remember about its owner).
    fn full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// Why a connection from a source was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceRefusal {
    /// Too many connections open from the address.
    TooManyOpen,
    /// Connections come from the address faster than the limit.
    TooFast,
}

/// Connections per source address.
#[derive(Debug)]
pub struct SourceLimits {
    limits: Limits,
    sources: HashMap<IpAddr, Source>,
    last_prune: Instant,
}

#[derive(Debug)]
struct Source {
    open: usize,
    new: TokenBucket,
}

/// How often idle sources are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

impl SourceLimits {
    /// No source seen yet.
    pub fn new(limits: Limits, now: Instant) -> Self {
        Self { limits, sources: HashMap::new(), last_prune: now }
    }

    /// A connection from `ip` arrives: counts it open, or says why not.
    pub fn open(&mut self, ip: IpAddr, now: Instant) -> Result<(), SourceRefusal> {
        self.prune(now);
        let limits = self.limits;
        let source = self.sources.entry(ip).or_insert_with(|| Source {
            open: 0,
            new: TokenBucket::new(limits.new_connections_per_source, limits.new_connections_burst, now),
        });
        if source.open >= limits.connections_per_source {
            return Err(SourceRefusal::TooManyOpen);
        }
        if !source.new.take(1.0, now) {
            return Err(SourceRefusal::TooFast);
        }
        source.open += 1;
        Ok(())
    }

    /// A connection [`SourceLimits::open`] admitted ended.
    pub fn close(&mut self, ip: IpAddr) {
        if let Some(source) = self.sources.get_mut(&ip) {
            source.open = source.open.saturating_sub(1);
        }
    }

    /// Forgets sources with nothing open and a full bucket, so memory is
    /// bounded by the sources active in the last few seconds.
    fn prune(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last_prune) < PRUNE_EVERY {
            return;
        }
        self.last_prune = now;
        self.sources.retain(|_, s| s.open > 0 || !s.new.full(now));
    }

    /// Sources remembered (for tests).
    pub fn tracked(&self) -> usize {
        self.sources.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 5.0, t0);
        assert!((0..5).all(|_| b.take(1.0, t0)));
        assert!(!b.take(1.0, t0), "the burst is spent");
        assert!(b.take(1.0, t0 + Duration::from_millis(100)), "one token per 100 ms");
        assert!(!b.take(1.0, t0 + Duration::from_millis(150)));
        assert!(!b.take(6.0, t0 + Duration::from_secs(60)), "never more than the burst");
        // A clock that goes back (another thread's `now`) takes nothing.
        assert!(!b.take(100.0, t0));
    }

    #[test]
    fn sources_are_limited_one_by_one_and_forgotten_when_idle() {
        let t0 = Instant::now();
        let limits = Limits {
            connections_per_source: 3,
            new_connections_per_source: 1.0,
            new_connections_burst: 4.0,
            ..Limits::default()
        };
        let mut s = SourceLimits::new(limits, t0);
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        assert!((0..3).all(|_| s.open(a, t0).is_ok()));
        assert_eq!(s.open(a, t0), Err(SourceRefusal::TooManyOpen));
        assert!(s.open(b, t0).is_ok(), "another source is not affected");
        s.close(a);
        assert!(s.open(a, t0).is_ok(), "the fourth of the burst");
        s.close(a);
        assert_eq!(s.open(a, t0), Err(SourceRefusal::TooFast));
        assert!(s.open(a, t0 + Duration::from_secs(1)).is_ok(), "one a second");
        for _ in 0..4 {
            s.close(a);
        }
        s.close(b);
        s.close(b);
        assert_eq!(s.tracked(), 2);
        let later = t0 + Duration::from_secs(60);
        s.open("192.0.2.3".parse().unwrap(), later).unwrap();
        assert_eq!(s.tracked(), 1, "idle sources are forgotten");
    }
}
