//! The local provider: every node is a `boxer-runtime` process on this
//! machine, in the network namespace `boxer up` runs in (or its lab
//! device's), and, unless its service says `isolate = false`, in mount, PID
//! and UTS namespaces of its own (see `boxer_runtime::machine`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;

use super::{Join, NodeExit, Provider};
use crate::lab::{LabNet, NatKind, NatOptions};
use crate::spec::Service;

/// Lines of a runtime's log shown when it ends without an exit report.
const LOG_TAIL_LINES: usize = 3;

/// Runs nodes as local processes.
#[derive(Debug)]
pub struct LocalProvider {
    runtime: PathBuf,
    /// In `--net lab`: the lab and the NAT each node gets.
    lab: Option<(Arc<LabNet>, NatKind)>,
    state_dir: PathBuf,
    /// Whether nodes can get namespaces of their own (`--isolate`), as the
    /// runtime found when asked to try (`--probe-isolation`), or why not.
    can_isolate: Result<(), String>,
    pids: HashMap<String, i32>,
    exits: mpsc::UnboundedSender<NodeExit>,
}

/// The runtime binary: `BOXER_RUNTIME`, or `boxer-runtime` beside this executable.
pub fn runtime_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("BOXER_RUNTIME") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("locating the boxer executable")?;
    let beside = exe.with_file_name("boxer-runtime");
    anyhow::ensure!(
        beside.is_file(),
        "boxer-runtime not found beside {} (build it with `cargo build -p boxer-runtime -p boxer-shim`, or set BOXER_RUNTIME)",
        exe.display()
    );
    Ok(beside)
}

impl LocalProvider {
    /// A provider writing runtime logs under `state_dir/nodes`; process exits
    /// are reported on the returned channel.
    /// With `lab`, every node gets a device of its own behind a NAT of that
    /// kind; otherwise nodes share this process' namespace.
    pub fn new(
        state_dir: PathBuf,
        lab: Option<(Arc<LabNet>, NatKind)>,
    ) -> anyhow::Result<(Self, mpsc::UnboundedReceiver<NodeExit>)> {
        let (exits, rx) = mpsc::unbounded_channel();
        let runtime = runtime_binary()?;
        let can_isolate = probe_isolation(&runtime);
        Ok((Self { runtime, lab, state_dir, can_isolate, pids: HashMap::new(), exits }, rx))
    }

    /// Whether nodes of services with `isolate = true` (the default) get
    /// their own mount, PID and UTS namespaces, or why not (`--net host` as
    /// an ordinary user; a container without `CAP_SYS_ADMIN`).
    pub fn can_isolate(&self) -> Result<(), &str> {
        self.can_isolate.as_ref().map(|_| ()).map_err(String::as_str)
    }

    /// The runtime log of a node.
    pub fn runtime_log_path(&self, node: &str) -> PathBuf {
        self.state_dir.join("nodes").join(node).join("runtime.log")
    }

    /// The pid of node `node`'s runtime while it runs (for CPU and memory
    /// measurements of it and of the program under it).
    pub fn pid(&self, node: &str) -> Option<i32> {
        self.pids.get(node).copied()
    }
}

impl Provider for LocalProvider {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn launch(&mut self, join: &Join, service: &Service, index: u32) -> anyhow::Result<()> {
        let node = format!("{}-{index}", service.name);
        let dir = self.state_dir.join("nodes").join(&node);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log_path = self.runtime_log_path(&node);
        // Appended to: a replaced node's log keeps its predecessors'.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut cmd = tokio::process::Command::new(&self.runtime);
        cmd.arg("--rendezvous")
            .arg(join.rendezvous.to_string())
            .args(["--fingerprint", &join.fingerprint, "--cluster", &join.cluster])
            // In the environment, not on the command line, where every
            // process (a node's own, with `ps`) could read it.
            .env(boxer_runtime::supervise::JOIN_TOKEN_ENV, &join.token)
            .args(["--service", &service.name, "--index", &index.to_string()])
            .args(match self.lab {
                // Its own namespace: any interface, its NAT's mapping is what peers see.
                Some(_) => &["--bind", "0.0.0.0:0"][..],
                None => &["--bind", "127.0.0.1:0", "--shared-namespace"][..],
            });
        // No --run-dir: the runtime makes the node's run directory under the
        // system temp directory, where programs that switch users (servers
        // dropping root) can read it, and removes it when the node ends.
        if service.isolate && self.can_isolate.is_ok() {
            cmd.arg("--isolate");
            for dir in &service.private {
                cmd.arg("--private").arg(dir);
            }
        }
        for (name, port) in &service.wait_for {
            cmd.arg("--wait-for").arg(format!("{name}:{port}"));
        }
        if let Some(timeout) = service.wait_timeout {
            cmd.arg("--wait-timeout").arg(timeout.as_secs().to_string());
        }
        for port in &service.expose {
            cmd.arg("--expose").arg(port.to_string());
        }
        for f in &service.forward {
            cmd.arg("--forward").arg(format!("{}={}:{}", f.listen, f.target, f.port));
        }
        cmd.arg("--").args(&service.command);
        cmd.env_remove("BOXER_ISOLATE")
            .envs(super::node_env(service, index))
            .env("RUST_LOG", std::env::var("BOXER_RUNTIME_LOG").unwrap_or_else(|_| "info".into()))
            .current_dir(&service.workdir)
            .stdin(Stdio::null())
            // The program's output reaches us through the rendezvous; the
            // runtime's echo of it is not needed.
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        let what = || format!("starting {} for {node} in {}", self.runtime.display(), service.workdir.display());
        let mut child = match &self.lab {
            Some((lab, nat)) => {
                // Prepared with the others (`LabNet::add_nodes`), or made now.
                let device = match lab.device(&node) {
                    Some(device) => device,
                    None => lab.add_node(&node, NatOptions::new(service.nat.unwrap_or(*nat))).await?,
                };
                device.spawn_command(cmd).with_context(what)?
            }
            None => cmd.spawn().with_context(what)?,
        };
        if let Some(pid) = child.id() {
            self.pids.insert(node.clone(), pid as i32);
        }
        let exits = self.exits.clone();
        tokio::spawn(async move {
            let code = match child.wait().await {
                Ok(status) => {
                    use std::os::unix::process::ExitStatusExt;
                    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
                }
                Err(_) => 1,
            };
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let mut detail: Vec<String> = tail.lines().rev().take(LOG_TAIL_LINES).map(str::to_owned).collect();
            detail.reverse();
            detail.insert(0, format!("runtime exited with code {code} (log: {})", log_path.display()));
            let _ = exits.send(NodeExit { node, code, notes: vec![], detail, failed_to_start: false, instance: 0 });
        });
        Ok(())
    }

    fn exited(&mut self, node: &str) {
        self.pids.remove(node);
    }

    fn running(&self) -> usize {
        self.pids.len()
    }

    fn stop_all(&mut self, force: bool) {
        let signal = if force { libc::SIGKILL } else { libc::SIGTERM };
        for pid in self.pids.values() {
            // SAFETY: kill(2) on our own children.
            unsafe { libc::kill(*pid, signal) };
        }
    }

    fn stop_node(&mut self, node: &str) -> anyhow::Result<()> {
        let pid = self.pids.get(node).with_context(|| format!("node {node} is not running"))?;
        // SAFETY: kill(2) on our own child: its runtime stops the program
        // (SIGTERM, grace, SIGKILL), reports its exit and leaves.
        unsafe { libc::kill(*pid, libc::SIGTERM) };
        Ok(())
    }

    fn stops_through_rendezvous(&self) -> bool {
        false
    }

    fn stop_grace(&self) -> Duration {
        STOP_GRACE
    }

    fn runtime_log(&self, node: &str) -> String {
        self.runtime_log_path(node).display().to_string()
    }

    fn summary(&self) -> Vec<String> {
        vec![]
    }
}

/// Asks the runtime to create the namespaces of an isolated node, with
/// nothing in them (`--probe-isolation`): root is not enough (a container
/// without `CAP_SYS_ADMIN`, a `/proc` that may not be mounted again), and an
/// ordinary user can only do it in the user namespace of `--net lab` or
/// `--net shared`. The runtime's error, if any, says why not.
fn probe_isolation(runtime: &std::path::Path) -> Result<(), String> {
    let out = std::process::Command::new(runtime)
        .arg("--probe-isolation")
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", runtime.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let why = String::from_utf8_lossy(&out.stderr);
    Err(why.trim().strip_prefix("error: ").unwrap_or(why.trim()).to_owned())
}

/// Time a runtime gets to stop its program and report before SIGKILL: the
/// runtime's own grace for the program (10 s), draining output (2 s), the
/// exit report (3 s) and leaving (1 s), plus slack.
pub const STOP_GRACE: Duration = Duration::from_secs(20);
