//! The Boxer runtime: what runs in every node.
//!
//! It joins the cluster through the rendezvous from its one UDP socket, keeps
//! the membership table current, keeps one QUIC connection per peer, and
//! carries TCP connections between nodes as QUIC streams: outbound from
//! `--forward` listeners, inbound to `--expose`d local ports. It runs the
//! node's program under the shim ([`supervise`]), as a local process or as
//! an AWS Lambda custom runtime ([`lambda`]).

pub mod app;
pub mod bench_worker;
pub mod caller;
pub mod config;
mod control;
pub mod etc;
mod forward;
pub mod host;
mod inbound;
pub mod interfaces;
pub mod lambda;
mod link;
pub mod machine;
pub mod map_item;
pub mod node;
mod outbound;
pub mod output;
pub mod registry;
pub mod s3;
pub mod stage;
pub mod status;
pub mod supervise;
mod udp;
pub mod wait;

pub use config::{ForwardSpec, NodeConfig};
pub use node::{Node, NodeError, ShimFiles};
