//! Boxer's data plane.
//!
//! * [`identity`]: the self-signed certificate every node and rendezvous
//!   presents, and its SHA-256 [`Fingerprint`](boxer_proto::Fingerprint).
//! * [`tls`]: rustls configurations that pin those fingerprints (never "accept
//!   any certificate").
//! * [`transport`]: QUIC tuning, each constant with its reason.
//! * [`endpoint`]: the one UDP socket + quinn endpoint of a node, client and
//!   server at once.
//! * [`rendezvous`]: the client side of the rendezvous protocol.
//! * [`socket`]: the socket under quinn that routes each peer's packets
//!   directly or through the relay, and sorts out path probes.
//! * [`path`]: every peer's path state as a synchronous state machine
//!   (punch rounds, confirm, heartbeat, upgrade, fallback, liveness checks)
//!   that returns actions.
//! * [`punch`]: its driver: hole punching, relay fallback, heartbeats and
//!   upgrades on the real socket.
//! * [`pair_keys`]: the per-pair keys path probes are tagged with.
//! * [`relay`]: the relay stream on the rendezvous connection.
//! * [`peers`]: one QUIC connection per peer node, dialled on demand, with the
//!   peer's key pinned from membership.
//! * [`proxy`]: TCP connections carried as QUIC streams.

pub mod endpoint;
pub mod identity;
pub mod pair_keys;
pub mod path;
pub mod peers;
pub mod proxy;
pub mod punch;
pub mod relay;
pub mod rendezvous;
pub mod socket;
pub mod tls;
pub mod transport;

pub use endpoint::{EndpointError, NodeEndpoint};
pub use identity::Identity;
