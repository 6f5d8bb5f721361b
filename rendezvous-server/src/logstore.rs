//! Per-node output files: `<dir>/<cluster>/<node>.log` with every line the
//! node's program printed, and `<node>.exit` with its exit code once it ended.
//! They outlive the cluster, so `boxer logs` works after it ended.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use boxer_proto::control::{ExitStatus, LogLine};

/// Where a rendezvous keeps node output.
#[derive(Debug, Clone)]
pub struct LogStore {
    dir: PathBuf,
}

/// Most output stored per node; beyond it lines are still streamed to
/// watchers but not written, so a chatty program cannot fill the disk.
pub const MAX_NODE_LOG: u64 = 256 << 20;

/// One node's open log file.
#[derive(Debug)]
pub struct NodeLog {
    file: Option<File>,
    path: PathBuf,
    written: u64,
}

impl LogStore {
    /// A store under `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// Directory of a cluster's files.
    pub fn cluster_dir(&self, cluster: &str) -> PathBuf {
        self.dir.join(cluster)
    }

    fn log_path(&self, cluster: &str, node: &str) -> PathBuf {
        self.cluster_dir(cluster).join(format!("{node}.log"))
    }

    /// Opens (appending) the log of `node` in `cluster`. Failures are logged
    /// once and the node's output is then only streamed, not stored.
    pub fn open(&self, cluster: &str, node: &str) -> NodeLog {
        let dir = self.cluster_dir(cluster);
        let path = self.log_path(cluster, node);
        let file = std::fs::create_dir_all(&dir)
            .and_then(|()| OpenOptions::new().create(true).append(true).open(&path))
            .map_err(|e| tracing::warn!("cannot store output of {node} in {}: {e}", path.display()))
            .ok();
        let _ = std::fs::remove_file(dir.join(format!("{node}.exit")));
        let written = file.as_ref().and_then(|f| f.metadata().ok()).map_or(0, |m| m.len());
        NodeLog { file, path, written }
    }

    /// [`LogStore::open`] on tokio's blocking threads. Creating a file is
    /// file system metadata work, 10 µs on an idle disk but 600 µs on a busy
    /// ext4 (the admissions benchmark saw it take half the server's time):
    /// on the runtime thread, which serves every connection, it would hold
    /// up every other admission.
    pub async fn open_async(&self, cluster: &str, node: &str) -> NodeLog {
        let path = self.log_path(cluster, node);
        let (store, cluster, name) = (self.clone(), cluster.to_owned(), node.to_owned());
        match tokio::task::spawn_blocking(move || store.open(&cluster, &name)).await {
            Ok(log) => log,
            Err(e) => {
                tracing::warn!("cannot store output of {node} in {}: {e}", path.display());
                NodeLog { file: None, path, written: 0 }
            }
        }
    }
}

impl NodeLog {
    /// Appends lines.
    pub fn append(&mut self, lines: &[LogLine]) {
        if let Some(f) = &mut self.file {
            let mut buf = Vec::with_capacity(lines.iter().map(|l| l.text.len() + 1).sum());
            for l in lines {
                buf.extend_from_slice(l.text.as_bytes());
                buf.push(b'\n');
            }
            if self.written + buf.len() as u64 > MAX_NODE_LOG {
                buf = format!("[boxer: output beyond {} MiB is not stored]\n", MAX_NODE_LOG >> 20).into_bytes();
                let _ = f.write_all(&buf);
                self.file = None;
                return;
            }
            match f.write_all(&buf) {
                Ok(()) => self.written += buf.len() as u64,
                Err(e) => {
                    tracing::warn!("cannot write {}: {e}", self.path.display());
                    self.file = None;
                }
            }
        }
    }

    /// Records the exit status beside the log.
    pub fn exited(&mut self, status: ExitStatus) {
        let path = self.path.with_extension("exit");
        if let Err(e) = std::fs::write(&path, format!("{}\n", status.code)) {
            tracing::warn!("cannot write {}: {e}", path.display());
        }
    }

    /// The log file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_log_opened_off_the_runtime_is_the_same_log() {
        let dir = std::env::temp_dir().join(format!("boxer-logstore-test-{}", std::process::id()));
        let store = LogStore::new(dir.clone());
        let stale = store.cluster_dir("demo").join("web-0.exit");
        std::fs::create_dir_all(store.cluster_dir("demo")).unwrap();
        std::fs::write(&stale, "1\n").unwrap();
        let mut log = store.open_async("demo", "web-0").await;
        assert_eq!(log.path(), store.cluster_dir("demo").join("web-0.log"));
        assert!(log.path().exists(), "created at once, before any output");
        assert!(!stale.exists(), "an earlier member's exit is forgotten");
        log.append(&[LogLine { stream: boxer_proto::control::Stream::Stdout, text: "hi".into() }]);
        assert_eq!(std::fs::read_to_string(log.path()).unwrap(), "hi\n");
        let again = store.open_async("demo", "web-0").await;
        assert_eq!(again.written, 3, "appends after what is there");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
