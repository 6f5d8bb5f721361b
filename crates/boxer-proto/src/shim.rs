//! Messages between the LD_PRELOAD shim and its runtime, over a Unix socket.
//!
//! One short connection per request: the shim writes a [`crate::Hello`] and a
//! [`ShimRequest`], the runtime answers with a hello and a [`ShimResponse`]
//! and closes. A connection per call keeps the shim free of shared state, so
//! threads and `fork` need no care; it costs one local round trip (~20 us).

use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize};

/// Address of the runtime's control socket: a path, or `@name` for a socket
/// in the abstract namespace (see [`abstract_name`]).
pub const ENV_CONTROL: &str = "BOXER_CONTROL_SOCKET";
/// The node's overlay IPv4 address.
pub const ENV_OVERLAY_IP: &str = "BOXER_OVERLAY_IP";
/// The cluster's overlay network (CIDR).
pub const ENV_NETWORK: &str = "BOXER_NETWORK";
/// The node's private loopback address (see [`loopback_for`]).
pub const ENV_LOOPBACK: &str = "BOXER_LOOPBACK";
/// The node's hostname (`<service>-<index>`).
pub const ENV_HOSTNAME: &str = "BOXER_HOSTNAME";
/// The cluster name.
pub const ENV_CLUSTER: &str = "BOXER_CLUSTER";
/// Directory with the runtime-written `hosts`, `hostname`, `resolv.conf`.
pub const ENV_ETC_DIR: &str = "BOXER_ETC_DIR";
/// `1` when other nodes share this network namespace: wildcard binds are
/// narrowed to the node's loopback address so equal ports do not collide.
pub const ENV_SHARED_NAMESPACE: &str = "BOXER_SHARED_NAMESPACE";

/// The node's private loopback address: `127.100.<id / 256>.<id % 256>`.
///
/// Overlay traffic between the app and its runtime uses this address on both
/// ends, which is how the shim tells overlay sockets from the app's own
/// 127.0.0.1 traffic without keeping per-socket state, and how nodes that
/// share a namespace keep their listeners apart.
pub fn loopback_for(node_id: u32) -> Ipv4Addr {
    let id = node_id.min(u16::MAX as u32) as u16;
    Ipv4Addr::new(127, 100, (id >> 8) as u8, id as u8)
}

/// The abstract-namespace name in an [`ENV_CONTROL`] value of the form
/// `@name`, or `None` for a filesystem path.
///
/// Runtimes listen in the abstract namespace: such a socket has no file and
/// so no permissions, and processes of the node that switched to another
/// user (servers dropping root) still reach it. It is visible only inside
/// the runtime's network namespace; the runtime checks each caller with
/// `SO_PEERCRED` (see docs/shim.md).
pub fn abstract_name(control: &str) -> Option<&str> {
    control.strip_prefix('@')
}

/// A request from the shim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShimRequest {
    /// The app connects a TCP socket bound to `src` (a loopback address) to
    /// the overlay address `dst`.
    Connect {
        /// Local address of the app's socket.
        src: SocketAddrV4,
        /// Overlay destination.
        dst: SocketAddrV4,
    },
    /// The app listens on `port` (on the wildcard, overlay or node loopback address).
    Listen {
        /// The port.
        port: u16,
    },
    /// Overlay addresses of a socket whose real addresses are on the node's
    /// loopback address.
    Lookup {
        /// Real local address.
        local: SocketAddrV4,
        /// Real peer address.
        peer: SocketAddrV4,
    },
    /// Resolve a host name.
    Resolve {
        /// The name as the app gave it.
        name: String,
    },
    /// Names of an overlay address.
    Reverse {
        /// The address.
        ip: Ipv4Addr,
    },
    /// The app's UDP socket on local port `src_port` sends to (or connects
    /// to) the overlay address `dst`. Answer: [`ShimResponse::Proxy`] with
    /// the runtime's flow socket for this pair, to which the app's datagrams
    /// are sent instead (and from which the peer's datagrams arrive);
    /// [`ShimResponse::Unreachable`] when no node has that address.
    UdpFlow {
        /// Local port of the app's UDP socket (bound before asking).
        src_port: u16,
        /// Overlay destination.
        dst: SocketAddrV4,
    },
    /// Who sends from the runtime's UDP flow socket on loopback port `port`
    /// (the source of a datagram the app received). Answer:
    /// [`ShimResponse::Peer`] with the remote app's overlay address and port,
    /// or [`ShimResponse::Unknown`] when no flow has that port.
    UdpPeer {
        /// The flow socket's port on the node's loopback address.
        port: u16,
    },
}

/// The runtime's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShimResponse {
    /// Connect the app's socket to this address (the runtime's proxy).
    Proxy(SocketAddrV4),
    /// Nothing listens on that port of that node: `ECONNREFUSED`.
    Refused,
    /// No node has that address: `EHOSTUNREACH`.
    Unreachable,
    /// Done.
    Ok,
    /// The socket's overlay peer address.
    Peer(SocketAddrV4),
    /// The name's overlay addresses, in replica order.
    Addresses(Vec<Ipv4Addr>),
    /// A Boxer name with no current member: fail the lookup.
    NotFound,
    /// Not a Boxer name: use the real resolver.
    NotBoxer,
    /// Names of an address, primary first.
    Names(Vec<String>),
    /// The request was malformed or could not be served.
    Error(String),
    /// The runtime does not know the address asked about ([`ShimRequest::Lookup`],
    /// [`ShimRequest::UdpPeer`]): the shim reports an error rather than guess.
    Unknown,
    /// The caller is not a process of this node: the request was ignored.
    Denied(String),
}
