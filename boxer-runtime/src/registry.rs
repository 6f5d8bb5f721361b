//! Which loopback connection belongs to which overlay connection.
//!
//! The shim registers an app socket's source port before connecting it to
//! the proxy; the proxy claims that registration when it accepts. While a
//! proxied connection lives, its overlay addresses are kept so the shim can
//! answer `getpeername`/`accept` with them.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use boxer_proto::NodeId;

/// How long a registration waits for its connection. The shim connects right
/// after registering; one that never arrives (the app closed the socket) is
/// dropped after this.
pub const PENDING_TTL: Duration = Duration::from_secs(30);

/// A connect the shim announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// The node the destination belongs to.
    pub peer: NodeId,
    /// Overlay destination.
    pub dst: SocketAddrV4,
    registered: Instant,
}

/// The tables, keyed by loopback port.
#[derive(Debug, Default)]
pub struct Registry {
    pending: HashMap<u16, Pending>,
    /// App source port -> overlay destination, for live outbound connections.
    outbound: HashMap<u16, SocketAddrV4>,
    /// Runtime source port -> overlay source, for live inbound connections.
    inbound: HashMap<u16, SocketAddrV4>,
}

impl Registry {
    /// Records that the app socket on `src_port` is about to connect to `dst` on `peer`.
    pub fn register(&mut self, src_port: u16, peer: NodeId, dst: SocketAddrV4) {
        let now = Instant::now();
        self.pending.retain(|_, p| now.duration_since(p.registered) < PENDING_TTL);
        self.pending.insert(src_port, Pending { peer, dst, registered: now });
    }

    /// Claims the registration of a connection accepted from `src_port`.
    pub fn claim(&mut self, src_port: u16) -> Option<Pending> {
        let p = self.pending.remove(&src_port)?;
        self.outbound.insert(src_port, p.dst);
        Some(p)
    }

    /// A live inbound connection from the runtime's `local_port`, for overlay `src`.
    pub fn inbound(&mut self, local_port: u16, src: SocketAddrV4) {
        self.inbound.insert(local_port, src);
    }

    /// Forgets a finished outbound connection.
    pub fn end_outbound(&mut self, src_port: u16) {
        self.outbound.remove(&src_port);
    }

    /// Forgets a finished inbound connection.
    pub fn end_inbound(&mut self, local_port: u16) {
        self.inbound.remove(&local_port);
    }

    /// Overlay peer of an app socket with loopback `local` and `peer` ports.
    pub fn lookup(&self, local_port: u16, peer_port: u16) -> Option<SocketAddrV4> {
        self.outbound
            .get(&local_port)
            // Connected but not yet accepted by the proxy (the app may ask at once).
            .or_else(|| self.pending.get(&local_port).map(|p| &p.dst))
            .or_else(|| self.inbound.get(&peer_port))
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_claim_lookup_end() {
        let mut r = Registry::default();
        let dst: SocketAddrV4 = "100.96.0.2:6379".parse().unwrap();
        r.register(40000, NodeId(2), dst);
        assert_eq!(r.lookup(40000, 5555), Some(dst), "known before the proxy accepts");
        assert_eq!(r.claim(40000).map(|p| p.dst), Some(dst));
        assert!(r.claim(40000).is_none(), "claimed once");
        assert_eq!(r.lookup(40000, 5555), Some(dst));
        let src: SocketAddrV4 = "100.96.0.3:51000".parse().unwrap();
        r.inbound(41000, src);
        assert_eq!(r.lookup(6379, 41000), Some(src));
        r.end_outbound(40000);
        r.end_inbound(41000);
        assert_eq!(r.lookup(40000, 41000), None);
    }
}
