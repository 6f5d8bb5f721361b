//! Which loopback connection belongs to which overlay connection.
//!
//! The shim registers an app socket's source port before connecting it to
//! the proxy; the proxy claims that registration when it accepts. The
//! runtime's own connections to local listeners are recorded before they
//! connect. Connections of the app to its own overlay address are
//! registered too. So every TCP connection on the node's loopback address
//! has a known role before the app can ask about it, and the shim's
//! `getpeername`/`accept` get the exact overlay address or an error, never a
//! guess.
//!
//! Each loopback port has at most one role: the latest registration on that
//! port replaces whatever was there. A finished connection's role is kept
//! for [`ENDED_GRACE`] (an app may ask for the peer of a socket whose peer
//! already closed) or until its port is used again, then forgotten, so a
//! later connection on that port that nobody registered (a process that
//! bypasses the shim) is never named after the old peer. Keyed by port, the
//! table never holds more than 65536 entries.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use boxer_proto::NodeId;

/// How long a registration waits for its connection. The shim connects right
/// after registering; one that never arrives (the app closed the socket) is
/// dropped after this.
pub const PENDING_TTL: Duration = Duration::from_secs(30);

/// How long the role of a finished connection is still answered: an app
/// asks for its peer's address when it accepts or soon after (to log it);
/// a minute covers a server that reads a closed connection's last request
/// before it asks.
pub const ENDED_GRACE: Duration = Duration::from_secs(60);

/// A connect the shim announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// The node the destination belongs to.
    pub peer: NodeId,
    /// Overlay destination.
    pub dst: SocketAddrV4,
    registered: Instant,
}

/// What a loopback port is, for a connection that used it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The app's source port of an outbound connection to `dst`.
    Outbound(SocketAddrV4),
    /// The runtime's source port of a connection from overlay `src`.
    Inbound(SocketAddrV4),
    /// The app's source port of a connection to its own overlay address.
    SelfConnect,
}

/// A port's role, and when its connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    role: Role,
    ended: Option<Instant>,
}

/// The tables, keyed by loopback port.
#[derive(Debug, Default)]
pub struct Registry {
    pending: HashMap<u16, Pending>,
    roles: HashMap<u16, Entry>,
}

impl Registry {
    /// Records that the app socket on `src_port` is about to connect to `dst` on `peer`.
    pub fn register(&mut self, src_port: u16, peer: NodeId, dst: SocketAddrV4) {
        let now = Instant::now();
        self.pending.retain(|_, p| now.duration_since(p.registered) < PENDING_TTL);
        self.roles.retain(|_, e| e.ended.is_none_or(|t| now.duration_since(t) < ENDED_GRACE));
        self.roles.remove(&src_port);
        self.pending.insert(src_port, Pending { peer, dst, registered: now });
    }

    /// Claims the registration of a connection accepted from `src_port`.
    pub fn claim(&mut self, src_port: u16) -> Option<Pending> {
        let p = self.pending.remove(&src_port)?;
        self.roles.insert(src_port, Entry { role: Role::Outbound(p.dst), ended: None });
        Some(p)
    }

    /// A connection from the runtime's `local_port`, for overlay `src`, about
    /// to be made to a local listener.
    pub fn inbound(&mut self, local_port: u16, src: SocketAddrV4) {
        self.pending.remove(&local_port);
        self.roles.insert(local_port, Entry { role: Role::Inbound(src), ended: None });
    }

    /// The app socket on `src_port` connects to the node's own overlay address.
    pub fn self_connect(&mut self, src_port: u16) {
        self.pending.remove(&src_port);
        self.roles.insert(src_port, Entry { role: Role::SelfConnect, ended: None });
    }

    /// A listener now holds `port`: no connection uses it as a source, so an
    /// older role of the port is stale.
    pub fn listening(&mut self, port: u16) {
        self.pending.remove(&port);
        self.roles.remove(&port);
    }

    /// A finished outbound connection: its role is answered for [`ENDED_GRACE`] more.
    pub fn end_outbound(&mut self, src_port: u16) {
        self.end(src_port, Instant::now());
    }

    /// A finished inbound connection: its role is answered for [`ENDED_GRACE`] more.
    pub fn end_inbound(&mut self, local_port: u16) {
        self.end(local_port, Instant::now());
    }

    fn end(&mut self, port: u16, now: Instant) {
        if let Some(e) = self.roles.get_mut(&port) {
            e.ended.get_or_insert(now);
        }
    }

    /// Overlay peer of an app socket with loopback `local` and `peer` ports
    /// on a node whose overlay address is `own`; `None` when neither port
    /// has a role (not a connection the runtime or the shim set up).
    pub fn lookup(&self, own: Ipv4Addr, local_port: u16, peer_port: u16) -> Option<SocketAddrV4> {
        self.lookup_at(own, local_port, peer_port, Instant::now())
    }

    fn lookup_at(&self, own: Ipv4Addr, local_port: u16, peer_port: u16, now: Instant) -> Option<SocketAddrV4> {
        if let Some(p) = self.pending.get(&local_port) {
            // Connected but not yet accepted by the proxy (the app may ask at once).
            return Some(p.dst);
        }
        let role = |port| {
            self.roles
                .get(&port)
                .filter(|e| e.ended.is_none_or(|t| now.duration_since(t) < ENDED_GRACE))
                .map(|e| e.role)
        };
        match (role(local_port).as_ref(), role(peer_port).as_ref()) {
            (Some(Role::Outbound(dst)), _) => Some(*dst),
            // Our socket to our own listener: its peer is that listener.
            (Some(Role::SelfConnect), _) => Some(SocketAddrV4::new(own, peer_port)),
            (_, Some(Role::Inbound(src))) => Some(*src),
            // Our listener accepted our own connection.
            (_, Some(Role::SelfConnect)) => Some(SocketAddrV4::new(own, peer_port)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: Ipv4Addr = Ipv4Addr::new(100, 96, 0, 1);

    #[test]
    fn register_claim_lookup_end() {
        let mut r = Registry::default();
        let dst: SocketAddrV4 = "100.96.0.2:6379".parse().unwrap();
        r.register(40000, NodeId(2), dst);
        assert_eq!(r.lookup(OWN, 40000, 5555), Some(dst), "known before the proxy accepts");
        assert_eq!(r.claim(40000).map(|p| p.dst), Some(dst));
        assert!(r.claim(40000).is_none(), "claimed once");
        assert_eq!(r.lookup(OWN, 40000, 5555), Some(dst));
        let src: SocketAddrV4 = "100.96.0.3:51000".parse().unwrap();
        r.inbound(41000, src);
        assert_eq!(r.lookup(OWN, 6379, 41000), Some(src));
        r.end_outbound(40000);
        r.end_inbound(41000);
        // A socket whose peer already closed still has its peer address ...
        assert_eq!(r.lookup(OWN, 40000, 5555), Some(dst));
        assert_eq!(r.lookup(OWN, 6379, 41000), Some(src));
        assert_eq!(r.lookup(OWN, 7000, 7001), None, "unknown ports are not guessed");
        // ... for a while: then an unregistered connection on that port is unknown.
        let later = Instant::now() + ENDED_GRACE;
        assert_eq!(r.lookup_at(OWN, 40000, 5555, later), None);
        assert_eq!(r.lookup_at(OWN, 6379, 41000, later), None);
    }

    #[test]
    fn self_connections_have_the_own_address_on_both_ends() {
        let mut r = Registry::default();
        r.self_connect(42000);
        // The connecting socket's peer is our listener on 8080 ...
        assert_eq!(r.lookup(OWN, 42000, 8080), Some(SocketAddrV4::new(OWN, 8080)));
        // ... and the accepted socket's peer is the connecting socket.
        assert_eq!(r.lookup(OWN, 8080, 42000), Some(SocketAddrV4::new(OWN, 42000)));
    }

    #[test]
    fn a_reused_port_takes_its_latest_role() {
        let mut r = Registry::default();
        let old: SocketAddrV4 = "100.96.0.3:51000".parse().unwrap();
        r.inbound(43000, old);
        r.end_inbound(43000);
        // The kernel gives 43000 to an app connection to itself.
        r.self_connect(43000);
        assert_eq!(r.lookup(OWN, 8080, 43000), Some(SocketAddrV4::new(OWN, 43000)));
        // Then to an outbound connection.
        let dst: SocketAddrV4 = "100.96.0.9:80".parse().unwrap();
        r.register(43000, NodeId(9), dst);
        r.claim(43000);
        assert_eq!(r.lookup(OWN, 43000, 1234), Some(dst));
        // A listener on a port once used as a source forgets that role.
        r.listening(43000);
        assert_eq!(r.lookup(OWN, 43000, 1234), None);
    }
}
