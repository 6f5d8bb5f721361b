//! A JSON copy of what the node knows, rewritten atomically on every change,
//! for people and tests to read (`--status-file`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tracing::warn;

use crate::node::Shared;

/// The file's content.
#[derive(Debug, Serialize)]
pub struct Status<'a> {
    /// Cluster name.
    pub cluster: &'a str,
    /// This node's id.
    pub node_id: u32,
    /// This node's names.
    pub names: &'a [String],
    /// This node's overlay address.
    pub overlay_ip: Ipv4Addr,
    /// Membership `seq` this reflects.
    pub seq: u64,
    /// Every member.
    pub members: Vec<MemberStatus>,
    /// The path to each peer with a live connection.
    pub paths: Vec<PathStatus>,
}

/// One peer path in the status file.
#[derive(Debug, Serialize, PartialEq)]
pub struct PathStatus {
    /// The peer's node id.
    pub peer: u32,
    /// `direct <addr>` or `relayed`.
    pub path: String,
    /// Round-trip time of the QUIC connection in microseconds.
    pub rtt_us: u32,
}

/// How often paths are checked for the status file (they change without a
/// membership change: punches, upgrades, fallbacks).
const PATH_CHECK: std::time::Duration = std::time::Duration::from_millis(500);

/// One member in the status file.
#[derive(Debug, Serialize)]
pub struct MemberStatus {
    /// Node id.
    pub node_id: u32,
    /// `<service>-<index>`.
    pub name: String,
    /// Overlay address.
    pub overlay_ip: Ipv4Addr,
    /// Address seen by the rendezvous.
    pub reflexive: SocketAddr,
    /// Listening ports.
    pub listening: Vec<u16>,
    /// Certificate fingerprint (hex).
    pub fingerprint: String,
}

pub(crate) async fn keep_written(shared: Arc<Shared>, path: PathBuf) {
    let mut membership = shared.membership.clone();
    let mut tick = tokio::time::interval(PATH_CHECK);
    let mut last_paths: Vec<(u32, String)>;
    loop {
        let paths: Vec<PathStatus> = shared
            .peers
            .paths()
            .into_iter()
            .map(|p| PathStatus { peer: p.peer.0, path: p.kind.to_string(), rtt_us: p.rtt_us })
            .collect();
        last_paths = paths.iter().map(|p| (p.peer, p.path.clone())).collect();
        let text = {
            let m = membership.borrow_and_update();
            let status = Status {
                cluster: m.cluster(),
                node_id: shared.joined.node_id.0,
                names: &shared.joined.names,
                overlay_ip: shared.joined.overlay_ip,
                seq: m.seq(),
                members: m
                    .members()
                    .map(|m| MemberStatus {
                        node_id: m.node_id.0,
                        name: m.replica_name(),
                        overlay_ip: m.overlay_ip,
                        reflexive: m.reflexive,
                        listening: m.listening.clone(),
                        fingerprint: m.fingerprint.to_string(),
                    })
                    .collect(),
                paths,
            };
            serde_json::to_string_pretty(&status).expect("status serialises")
        };
        if let Err(e) = write_atomically(&path, text.as_bytes()).await {
            warn!("cannot write status file {}: {e}", path.display());
        }
        loop {
            tokio::select! {
                changed = membership.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
                _ = tick.tick() => {
                    let now: Vec<(u32, String)> =
                        shared.peers.paths().into_iter().map(|p| (p.peer.0, p.kind.to_string())).collect();
                    if now != last_paths {
                        break;
                    }
                }
            }
        }
    }
}

async fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, path).await
}
