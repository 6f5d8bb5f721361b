//! The Boxer wire protocol.
//!
//! Every message that crosses a process boundary in Boxer is defined here:
//! between a runtime and the rendezvous ([`control`]), between two runtimes
//! ([`peer`]), path probes on the UDP socket ([`disco`]), packets relayed
//! through the rendezvous ([`relay`]), and the membership data both carry
//! ([`membership`]), and the JSON of a Lambda invocation ([`lambda`]). Messages are
//! serde types encoded with postcard inside length-prefixed frames ([`frame`]).
//!
//! Every stream starts with a [`Hello`] frame carrying [`PROTOCOL_VERSION`], so
//! two programs of different versions fail with an error naming both versions
//! instead of misreading each other's bytes.

pub mod control;
pub mod disco;
pub mod frame;
#[cfg(feature = "fuzz")]
pub mod fuzz;
pub mod hello;
pub mod lambda;
pub mod membership;
pub mod names;
pub mod peer;
pub mod relay;
pub mod shim;

pub use frame::{FrameError, MAX_FRAME_LEN};
pub use hello::{Hello, PROTOCOL_VERSION};
pub use membership::{Fingerprint, Member, MemberChange, Membership, MembershipEvent, NodeId};

/// ALPN protocol of a connection from a runtime or CLI to the rendezvous.
pub const ALPN_RENDEZVOUS: &[u8] = b"boxer-rendezvous";
/// ALPN protocol of a connection between two runtimes.
pub const ALPN_PEER: &[u8] = b"boxer-peer";
/// TLS server name used on every Boxer connection. Certificates are pinned by
/// fingerprint, so the name carries no trust; it only has to be a valid DNS name.
pub const TLS_SERVER_NAME: &str = "boxer";
