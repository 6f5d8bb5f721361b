//! Helpers for end-to-end tests: build and start the real binaries, read
//! their output, and clean up (every child is killed on drop).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub mod lab;
pub mod lambdalab;
pub mod natlab;
pub mod up;

/// Set to `1` to build and use release binaries (benchmarks do).
pub const RELEASE_ENV: &str = "BOXER_E2E_RELEASE";

/// Directory of the workspace's binaries, built once per process (so
/// `cargo test` alone never runs stale binaries): debug, or release when
/// [`RELEASE_ENV`] is `1`.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let release = std::env::var(RELEASE_ENV).is_ok_and(|v| v == "1");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "--offline", "-p", "boxer", "-p", "boxer-runtime", "-p", "rendezvous-server"])
            .args(["-p", "boxer-shim"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        // What `cargo test` sets for this test binary would reach build
        // scripts (ring's reads CARGO_MANIFEST_DIR) and make this build and
        // the next plain `cargo build` rebuild each other's dependencies.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key == "OUT_DIR"
                || key == "CARGO_MANIFEST_DIR"
                || key == "CARGO_MANIFEST_PATH"
                || key == "CARGO_CRATE_NAME"
                || key == "CARGO_PRIMARY_PACKAGE"
                || key == "CARGO_TARGET_TMPDIR"
                || key.starts_with("CARGO_PKG_")
                || key.starts_with("CARGO_BIN_")
            {
                cmd.env_remove(key.as_ref());
            }
        }
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo runs");
        assert!(status.success(), "building the binaries failed");
        // <target>/<profile>/deps/<exe> -> <target>/<profile>, then the wanted profile beside it.
        let exe = std::env::current_exe().expect("test binary path");
        let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<exe>");
        let target = profile_dir.parent().expect("target dir");
        target.join(if release { "release" } else { "debug" })
    })
}

/// Path of a workspace binary.
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// A fresh scratch directory, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    /// Creates `$TMPDIR/boxer-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("boxer-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Self(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // BOXER_KEEP_SCRATCH=1 keeps it (logs of a failed lab run).
        if std::env::var_os("BOXER_KEEP_SCRATCH").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc {
    /// The child.
    pub child: Child,
    /// What it is, for messages.
    pub name: String,
    /// File its stderr goes to.
    pub stderr: PathBuf,
}

impl Proc {
    /// Its stderr so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits up to `timeout` for it to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                bail!("{} still running after {timeout:?}; stderr:\n{}", self.name, self.stderr_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it the polite way: SIGTERM, up to 3 s to exit, then SIGKILL.
    pub fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = self.wait_exit(Duration::from_secs(3));
        }
        self.kill();
    }

    /// SIGKILL now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running `rendezvous-server` and what it printed.
pub struct RendezvousProc {
    /// The process.
    pub proc: Proc,
    /// Its UDP address.
    pub addr: SocketAddr,
    /// Its certificate fingerprint.
    pub fingerprint: String,
    /// Its admin token.
    pub admin_token: String,
}

/// Starts a rendezvous on a free loopback port with state in `dir`.
pub fn start_rendezvous(dir: &Path) -> anyhow::Result<RendezvousProc> {
    start_rendezvous_with(dir, &[])
}

/// [`start_rendezvous`] with `extra` arguments (limits).
pub fn start_rendezvous_with(dir: &Path, extra: &[&str]) -> anyhow::Result<RendezvousProc> {
    let stderr = dir.join("rendezvous.log");
    let mut child = Command::new(bin("rendezvous-server"))
        .args(["--listen", "127.0.0.1:0", "--state-dir"])
        .arg(dir.join("rendezvous-state"))
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr)?)
        .spawn()
        .context("starting rendezvous-server")?;
    let stdout = child.stdout.take().expect("piped");
    let mut proc = Proc { child, name: "rendezvous".into(), stderr };
    let (mut addr, mut fingerprint, mut admin_token) = (None, None, None);
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(v) = line.strip_prefix("listening:") {
            addr = Some(v.trim().parse()?);
        } else if let Some(v) = line.strip_prefix("fingerprint:") {
            fingerprint = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("admin token:") {
            admin_token = v.split_whitespace().next().map(str::to_owned);
            break;
        }
    }
    match (addr, fingerprint, admin_token) {
        (Some(addr), Some(fingerprint), Some(admin_token)) => {
            Ok(RendezvousProc { proc, addr, fingerprint, admin_token })
        }
        _ => {
            proc.kill();
            bail!("rendezvous did not print its address; stderr:\n{}", proc.stderr_text())
        }
    }
}

impl RendezvousProc {
    /// Creates a cluster with the `boxer` CLI; returns its join token.
    pub fn create_cluster(&self, name: &str) -> anyhow::Result<String> {
        let out = Command::new(bin("boxer"))
            .args(["cluster", "create", name, "--rendezvous", &self.addr.to_string()])
            .args(["--fingerprint", &self.fingerprint, "--admin-token", &self.admin_token])
            .output()?;
        if !out.status.success() {
            bail!("boxer cluster create failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let text = String::from_utf8(out.stdout)?;
        text.lines()
            .find_map(|l| l.strip_prefix("join token:"))
            .map(|t| t.trim().to_owned())
            .context("no join token printed")
    }

    /// A `boxer-runtime` command with the join flags filled in.
    pub fn runtime_command(&self, cluster: &str, token: &str, service: &str, index: u32) -> Command {
        let mut cmd = Command::new(bin("boxer-runtime"));
        cmd.args(["--rendezvous", &self.addr.to_string(), "--fingerprint", &self.fingerprint])
            .args(["--cluster", cluster, "--token", token, "--service", service])
            .args(["--index", &index.to_string(), "--bind", "127.0.0.1:0"])
            .env("RUST_LOG", "info,boxer_net=debug");
        cmd
    }
}

/// Starts `cmd` with stderr to `dir/<name>.log` and stdout to `dir/<name>.out`.
pub fn spawn(mut cmd: Command, dir: &Path, name: &str) -> anyhow::Result<Proc> {
    let stderr = dir.join(format!("{name}.log"));
    let child = cmd
        .stdout(std::fs::File::create(dir.join(format!("{name}.out")))?)
        .stderr(std::fs::File::create(&stderr)?)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    Ok(Proc { child, name: name.into(), stderr })
}

/// Polls `check` every 20 ms until it returns `Some`, or fails after `timeout`
/// with `what` and the last state in the message.
pub fn wait_until<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Result<T, String>) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(last) if Instant::now() > deadline => bail!("timed out after {timeout:?} waiting for {what}: {last}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Reads a runtime's `--status-file`.
pub fn read_status(path: &Path) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads a file, empty if missing.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A rendezvous with one cluster, and the nodes started on it.
pub struct Cluster {
    /// Scratch directory (logs, outputs, status files).
    pub dir: Scratch,
    /// The rendezvous.
    pub rdv: RendezvousProc,
    /// Cluster name.
    pub name: String,
    /// Join token.
    pub token: String,
    /// Running nodes, killed on drop.
    pub nodes: Vec<Proc>,
}

/// A started node.
pub struct NodeInfo {
    /// `<service>-<index>`.
    pub name: String,
    /// Its status file.
    pub status: PathBuf,
    /// Its program's stdout.
    pub stdout: PathBuf,
    /// Its stderr (runtime log and program stderr).
    pub stderr: PathBuf,
    /// Index in [`Cluster::nodes`].
    pub proc: usize,
}

impl Cluster {
    /// Starts a rendezvous in a fresh scratch directory and creates cluster `name`.
    pub fn start(name: &str) -> anyhow::Result<Self> {
        let dir = Scratch::new(name);
        let rdv = start_rendezvous(dir.path())?;
        let token = rdv.create_cluster(name)?;
        Ok(Self { dir, rdv, name: name.to_owned(), token, nodes: Vec::new() })
    }

    /// Starts node `<service>-<index>` running `command` under the shim, and
    /// waits until it has joined.
    pub fn node(&mut self, service: &str, index: u32, command: &[&str]) -> anyhow::Result<NodeInfo> {
        let name = format!("{service}-{index}");
        let status = self.dir.path().join(format!("{name}.json"));
        let mut cmd = self.rdv.runtime_command(&self.name, &self.token, service, index);
        cmd.arg("--status-file").arg(&status).arg("--run-dir").arg(self.dir.path().join(format!("{name}.run")));
        cmd.arg("--").args(command);
        let proc = spawn(cmd, self.dir.path(), &name)?;
        let stderr = proc.stderr.clone();
        self.nodes.push(proc);
        let info = NodeInfo {
            name: name.clone(),
            status: status.clone(),
            stdout: self.dir.path().join(format!("{name}.out")),
            stderr,
            proc: self.nodes.len() - 1,
        };
        wait_until(Duration::from_secs(20), &format!("{name} to join"), || {
            read_status(&status).map(|_| ()).map_err(|e| format!("{e}; log:\n{}", read(&info.stderr)))
        })?;
        Ok(info)
    }

    /// Waits until `node` announces `port` as listening (seen in its own status).
    pub fn wait_listening(&self, node: &NodeInfo, port: u16) -> anyhow::Result<()> {
        wait_until(Duration::from_secs(20), &format!("{} to listen on {port}", node.name), || {
            let s = read_status(&node.status)?;
            let me = s["node_id"].clone();
            let listening = s["members"]
                .as_array()
                .and_then(|m| m.iter().find(|m| m["node_id"] == me))
                .map(|m| m["listening"].clone())
                .unwrap_or_default();
            if listening.as_array().is_some_and(|a| a.iter().any(|p| p == port)) {
                Ok(())
            } else {
                Err(format!("listening {listening}; log:\n{}", read(&node.stderr)))
            }
        })
    }

    /// Waits for a node's program to exit; returns its code and stdout.
    pub fn wait_exit(&mut self, node: &NodeInfo, timeout: Duration) -> anyhow::Result<(Option<i32>, String)> {
        let code = self.nodes[node.proc].wait_exit(timeout)?;
        Ok((code, read(&node.stdout)))
    }
}
