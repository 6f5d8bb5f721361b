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
}

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
    loop {
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
            };
            serde_json::to_string_pretty(&status).expect("status serialises")
        };
        if let Err(e) = write_atomically(&path, text.as_bytes()).await {
            warn!("cannot write status file {}: {e}", path.display());
        }
        if membership.changed().await.is_err() {
            return;
        }
    }
}

async fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, path).await
}
