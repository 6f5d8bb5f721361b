//! Where `boxer up` keeps a cluster's files, so `status`, `logs` and `down`
//! work from another terminal and after the cluster ended:
//!
//! ```text
//! $XDG_STATE_HOME/boxer/<cluster>/      (default ~/.local/state/boxer/<cluster>)
//!   up.pid                 pid of the running `boxer up`
//!   status.json            nodes, addresses, states, paths
//!   rendezvous/            embedded rendezvous: TLS key, logs/<cluster>/<node>.log|.exit
//!   nodes/<node>/runtime.log   the node runtime's own log
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Root of all clusters' state directories.
pub fn root() -> PathBuf {
    if let Some(dir) = std::env::var_os("BOXER_STATE_DIR") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local").join("state")));
    base.unwrap_or_else(std::env::temp_dir).join("boxer")
}

/// A cluster's state directory.
pub fn cluster_dir(cluster: &str) -> PathBuf {
    root().join(cluster)
}

/// The cluster whose state was written last, for commands given no name.
pub fn latest() -> Option<String> {
    let entries = std::fs::read_dir(root()).ok()?;
    entries
        .flatten()
        .filter(|e| e.path().join("status.json").is_file())
        .max_by_key(|e| e.path().join("status.json").metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
}

/// The pid of a running `boxer up` of this cluster, if any.
pub fn running_pid(dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.join("up.pid")).ok()?.trim().parse().ok()?;
    // SAFETY: signal 0 only checks that the process exists.
    (unsafe { libc::kill(pid, 0) } == 0).then_some(pid)
}

/// What `boxer status` shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    /// Cluster name.
    pub cluster: String,
    /// The spec file.
    pub spec: String,
    /// Pid of `boxer up` while it runs.
    pub pid: Option<i32>,
    /// `running`, or `ended (exit N)`.
    pub state: String,
    /// Network mode.
    pub net: String,
    /// Where the nodes run: `local` or `lambda`.
    #[serde(default)]
    pub provider: String,
    /// Rendezvous address.
    pub rendezvous: String,
    /// One entry per node.
    pub nodes: Vec<NodeStatus>,
}

/// One node in `status.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeStatus {
    /// `<service>-<index>`.
    pub name: String,
    /// `node-<id>` once joined.
    pub id: Option<String>,
    /// Overlay address once joined.
    pub overlay_ip: Option<String>,
    /// `starting`, `joined`, `exited N`, `lost`.
    pub state: String,
    /// The program's output file.
    pub output: String,
    /// The runtime's own log.
    pub runtime_log: String,
    /// Paths to the peers it has connections with.
    #[serde(default)]
    pub paths: Vec<PathStatus>,
    /// Why it failed, when it failed before its program ran (e.g. a
    /// function error).
    #[serde(default)]
    pub note: Option<String>,
}

impl Status {
    /// Writes `status.json` atomically.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        write_json(dir, "status.json", self, 0o666)
    }

    /// Reads `status.json`.
    pub fn read(dir: &Path) -> std::io::Result<Self> {
        serde_json::from_slice(&std::fs::read(dir.join("status.json"))?).map_err(std::io::Error::other)
    }
}

/// Writes `value` as `dir/name` with `mode` (for a new file), beside and
/// then renamed: a reader never sees half of it.
fn write_json(dir: &Path, name: &str, value: &impl Serialize, mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?)?;
    std::fs::rename(&tmp, dir.join(name))
}

/// How to join a running cluster (`join.json`, readable by the owner only):
/// what `boxer port-forward` needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinInfo {
    /// Rendezvous address.
    pub rendezvous: std::net::SocketAddr,
    /// Its certificate fingerprint (hex).
    pub fingerprint: String,
    /// Cluster name.
    pub cluster: String,
    /// Join token.
    pub token: String,
    /// Pid of `boxer up`, whose network namespace the cluster lives in.
    pub pid: i32,
    /// Whether the cluster has its own namespace (`--net shared`).
    pub own_namespace: bool,
}

impl JoinInfo {
    /// Writes `join.json` with mode 0600, atomically.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        write_json(dir, "join.json", self, 0o600)
    }

    /// Reads `join.json`.
    pub fn read(dir: &Path) -> std::io::Result<Self> {
        serde_json::from_slice(&std::fs::read(dir.join("join.json"))?).map_err(std::io::Error::other)
    }
}

/// How a node reaches one peer, as `boxer status` shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PathStatus {
    /// The peer's name.
    pub peer: String,
    /// `direct <addr>` or `relayed`.
    pub path: String,
    /// Round-trip time in microseconds.
    pub rtt_us: u32,
}
