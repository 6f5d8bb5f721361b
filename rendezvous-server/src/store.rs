//! The rendezvous' clusters and members on disk, so that a restarted
//! rendezvous (same state directory) knows every cluster and member it had
//! and its runtimes can rejoin as the members they were.
//!
//! One JSON file, replaced atomically (written beside it, then renamed), so
//! a crash mid-write leaves the previous version. It holds join tokens and
//! probe keys, so it is owner-only like the TLS key.

use std::io::Write;
use std::path::{Path, PathBuf};

use boxer_proto::control::ClusterInfo;
use boxer_proto::disco::DiscoKey;
use boxer_proto::{Member, NodeId};
use serde::{Deserialize, Serialize};

/// File in the state directory with the clusters and their members.
pub const CLUSTERS_FILE: &str = "clusters.json";

/// Version of the file's layout; a file of another version is refused at
/// start rather than misread.
pub const FORMAT: u32 = 1;

/// Everything a restarted rendezvous needs to take its clusters back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    /// [`FORMAT`].
    pub format: u32,
    /// Every cluster.
    pub clusters: Vec<SavedCluster>,
}

/// One cluster as saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedCluster {
    /// Name, network and join token.
    pub info: ClusterInfo,
    /// The next node id to give out (ids are never reused).
    pub next_id: u32,
    /// Sequence number of the last membership change.
    pub seq: u64,
    /// Key of the members' path probes (they hold it; it must not change).
    pub disco_key: DiscoKey,
    /// Members, as last published.
    pub members: Vec<Member>,
}

/// Why the saved state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a saved rendezvous state of this version.
    #[error("{path}: not a saved rendezvous state this version can read ({why}); move it away to start empty")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// The clusters file of one state directory.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
}

impl Store {
    /// The store in `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Self { path: state_dir.join(CLUSTERS_FILE) }
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved state, or `None` when nothing was saved yet.
    pub fn load(&self) -> Result<Option<Saved>, StoreError> {
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Io { path: self.path.clone(), source }),
        };
        let invalid = |why: String| StoreError::Invalid { path: self.path.clone(), why };
        let saved: Saved = serde_json::from_slice(&text).map_err(|e| invalid(e.to_string()))?;
        if saved.format != FORMAT {
            return Err(invalid(format!("format {}, expected {FORMAT}", saved.format)));
        }
        check(&saved).map_err(invalid)?;
        Ok(Some(saved))
    }

    /// Replaces the file with `saved`: written to a temporary file in the
    /// same directory, flushed to disk, renamed over the old one, and the
    /// directory flushed.
    pub fn save(&self, saved: &Saved) -> Result<(), StoreError> {
        use std::os::unix::fs::OpenOptionsExt;
        let err = |source| StoreError::Io { path: self.path.clone(), source };
        let tmp = self.path.with_extension("json.tmp");
        let body = serde_json::to_vec(saved).map_err(|e| err(std::io::Error::other(e)))?;
        let mut file =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(err)?;
        file.write_all(&body).and_then(|()| file.sync_data()).map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        // The rename itself reaches the disk with the directory.
        match self.path.parent() {
            Some(dir) => std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err),
            None => Ok(()),
        }
    }
}

/// Checks what the rest of the rendezvous assumes of a cluster: ids below
/// `next_id`, unique ids, names and certificates.
fn check(saved: &Saved) -> Result<(), String> {
    let mut names = std::collections::HashSet::new();
    for c in &saved.clusters {
        if !names.insert(&c.info.name) {
            return Err(format!("cluster {:?} appears twice", c.info.name));
        }
        let mut ids = std::collections::HashSet::new();
        let mut replicas = std::collections::HashSet::new();
        let mut certs = std::collections::HashSet::new();
        for m in &c.members {
            let NodeId(id) = m.node_id;
            if id == 0 || id >= c.next_id {
                return Err(format!("cluster {:?}: member id {id} outside 1..{}", c.info.name, c.next_id));
            }
            if !ids.insert(id) || !replicas.insert((&m.service, m.index)) || !certs.insert(m.fingerprint) {
                return Err(format!("cluster {:?}: member {} appears twice", c.info.name, m.replica_name()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u32, service: &str, index: u32) -> Member {
        Member {
            node_id: NodeId(id),
            service: service.into(),
            index,
            overlay_ip: std::net::Ipv4Addr::new(100, 96, 0, id as u8),
            fingerprint: boxer_proto::Fingerprint([id as u8; 32]),
            reflexive: "192.0.2.1:5000".parse().unwrap(),
            local: vec![],
            listening: vec![80],
            disco_public: [id as u8; 32],
        }
    }

    fn saved(members: Vec<Member>) -> Saved {
        Saved {
            format: FORMAT,
            clusters: vec![SavedCluster {
                info: ClusterInfo {
                    name: "demo".into(),
                    network: "100.96.0.0/16".parse().unwrap(),
                    join_token: "t".into(),
                },
                next_id: 3,
                seq: 7,
                disco_key: [9; 32],
                members,
            }],
        }
    }

    #[test]
    fn saves_and_loads_and_refuses_what_it_cannot_trust() {
        let dir = std::env::temp_dir().join(format!("boxer-store-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::new(&dir);
        let _ = std::fs::remove_file(store.path());
        assert_eq!(store.load().unwrap(), None, "nothing saved yet");

        let state = saved(vec![member(1, "web", 0), member(2, "web", 1)]);
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), Some(state));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(store.path()).unwrap().permissions().mode() & 0o777, 0o600);

        store.save(&saved(vec![member(1, "web", 0), member(1, "db", 0)])).unwrap();
        let e = store.load().unwrap_err().to_string();
        assert!(e.contains("appears twice") && e.contains("move it away"), "{e}");
        store.save(&saved(vec![member(5, "web", 0)])).unwrap();
        assert!(store.load().unwrap_err().to_string().contains("outside 1..3"));

        std::fs::write(store.path(), b"{\"format\": 99, \"clusters\": []}").unwrap();
        assert!(store.load().unwrap_err().to_string().contains("format 99"));
        std::fs::write(store.path(), b"garbage").unwrap();
        assert!(matches!(store.load(), Err(StoreError::Invalid { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
