//! A cluster in the NAT lab for tests and benchmarks: a real
//! `rendezvous-server` on the lab's public router and real `boxer-runtime`s,
//! each on its own device behind its own NAT router (`boxer::lab`). Every
//! process runs inside the lab's namespaces, which have no way out.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
pub use boxer::lab::{LabNet, NatKind, NatOptions};
use patchbay::Device;

use crate::{Proc, Scratch, bin, read, read_status, wait_until};

/// Port the rendezvous listens on inside its device.
pub const RENDEZVOUS_PORT: u16 = 4740;

/// A lab with a rendezvous and one cluster.
pub struct LabCluster {
    /// The lab (dropped after the processes are stopped, before the runtime).
    pub lab: LabNet,
    /// The tokio runtime patchbay's handles were made on.
    pub rt: tokio::runtime::Runtime,
    /// Logs and status files.
    pub dir: Scratch,
    /// Rendezvous address inside the lab.
    pub rendezvous: SocketAddr,
    fingerprint: String,
    token: String,
    procs: Vec<Proc>,
}

/// Starts `rendezvous-server` on the lab's rendezvous device, listening on
/// [`RENDEZVOUS_PORT`] with its state and log in `dir`; returns it with its
/// fingerprint and admin token (read from its output). A restarted server
/// (same `dir`) appends to the log of the one before.
pub fn start_lab_rendezvous(lab: &LabNet, dir: &Path) -> anyhow::Result<(Proc, String, String)> {
    let log = dir.join("rendezvous.log");
    let mut cmd = Command::new(bin("rendezvous-server"));
    cmd.args(["--listen", &format!("0.0.0.0:{RENDEZVOUS_PORT}"), "--state-dir"])
        .arg(dir.join("rendezvous-state"))
        .env("RUST_LOG", std::env::var("BOXER_LAB_LOG").unwrap_or_else(|_| "info".into()))
        .stdout(Stdio::piped())
        .stderr(std::fs::OpenOptions::new().create(true).append(true).open(&log)?);
    let mut child = lab.rendezvous().spawn_command_sync(cmd).context("starting rendezvous-server in the lab")?;
    let stdout = child.stdout.take().context("piped stdout")?;
    let mut proc = Proc { child, name: "rendezvous".into(), stderr: log };
    let (mut fingerprint, mut admin) = (None, None);
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(v) = line.strip_prefix("fingerprint:") {
            fingerprint = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("admin token:") {
            admin = v.split_whitespace().next().map(str::to_owned);
            break;
        }
    }
    let (Some(fingerprint), Some(admin)) = (fingerprint, admin) else {
        proc.kill();
        bail!("rendezvous did not start: {}", proc.stderr_text());
    };
    Ok((proc, fingerprint, admin))
}

/// A node started by [`LabCluster::node`].
pub struct LabNode {
    /// `<service>-<index>`.
    pub name: String,
    /// Its device.
    pub device: Device,
    /// Its `--status-file`.
    pub status: PathBuf,
    /// Its runtime log.
    pub log: PathBuf,
}

impl LabCluster {
    /// Builds a lab and starts the rendezvous with cluster `name`.
    pub fn start(name: &str) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let lab = rt.block_on(LabNet::new())?;
        let dir = Scratch::new(&format!("lab-{name}"));
        let (proc, fingerprint, admin) = start_lab_rendezvous(&lab, dir.path())?;
        let rendezvous = SocketAddr::from((lab.rendezvous_ip()?, RENDEZVOUS_PORT));
        let mut create = Command::new(bin("boxer"));
        create
            .args(["cluster", "create", name, "--rendezvous", &rendezvous.to_string()])
            .args(["--fingerprint", &fingerprint, "--admin-token", &admin])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = lab.rendezvous().spawn_command_sync(create)?.wait_with_output()?;
        anyhow::ensure!(out.status.success(), "cluster create failed: {}", String::from_utf8_lossy(&out.stderr));
        let token = String::from_utf8(out.stdout)?
            .lines()
            .find_map(|l| l.strip_prefix("join token:"))
            .map(|t| t.trim().to_owned())
            .context("no join token printed")?;
        Ok(Self { lab, rt, dir, rendezvous, fingerprint, token, procs: vec![proc] })
    }

    /// A `boxer-runtime` command with the join flags for `cluster` filled in.
    fn runtime_command(&self, cluster: &str, service: &str, index: u32) -> Command {
        let mut cmd = Command::new(bin("boxer-runtime"));
        cmd.args(["--rendezvous", &self.rendezvous.to_string(), "--fingerprint", &self.fingerprint])
            .args(["--cluster", cluster, "--token", &self.token, "--service", service])
            .args(["--index", &index.to_string(), "--bind", "0.0.0.0:0"])
            .env("RUST_LOG", "info,boxer_net=debug");
        cmd
    }

    /// A device for a node behind a NAT of its own.
    pub fn device(&self, name: &str, nat: NatOptions) -> anyhow::Result<Device> {
        self.rt.block_on(self.lab.add_node(name, nat))
    }

    /// A device behind the existing NAT router `router`.
    pub fn device_behind(&self, name: &str, router: &str) -> anyhow::Result<Device> {
        self.rt.block_on(self.lab.add_node_behind(name, router))
    }

    /// Starts `boxer-runtime` for `<service>-<index>` of `cluster` on
    /// `device` with `extra` arguments, and waits until it has joined.
    pub fn node(
        &mut self,
        cluster: &str,
        device: Device,
        service: &str,
        index: u32,
        extra: &[&str],
    ) -> anyhow::Result<LabNode> {
        let name = format!("{service}-{index}");
        let status = self.dir.path().join(format!("{name}.json"));
        let log = self.dir.path().join(format!("{name}.log"));
        let mut cmd = self.runtime_command(cluster, service, index);
        cmd.arg("--status-file").arg(&status).args(extra);
        cmd.stdout(std::fs::File::create(self.dir.path().join(format!("{name}.out")))?)
            .stderr(std::fs::File::create(&log)?);
        let child = device.spawn_command_sync(cmd).with_context(|| format!("starting {name}"))?;
        self.procs.push(Proc { child, name: name.clone(), stderr: log.clone() });
        wait_until(Duration::from_secs(20), &format!("{name} to join"), || {
            read_status(&status).map(|_| ()).map_err(|e| format!("{e}; log:\n{}", read(&log)))
        })?;
        Ok(LabNode { name, device, status, log })
    }

    /// Waits until `node` sees `peer` as a member listening on `port`.
    pub fn wait_listening(&self, node: &LabNode, peer: &str, port: u16) -> anyhow::Result<()> {
        wait_until(Duration::from_secs(20), &format!("{} to see {peer} listening on {port}", node.name), || {
            let status = read_status(&node.status)?;
            let listening = status["members"].as_array().and_then(|members| {
                members.iter().find(|m| m["name"] == peer).map(|m| {
                    m["listening"].as_array().is_some_and(|ports| ports.iter().any(|p| p.as_u64() == Some(port as u64)))
                })
            });
            if listening == Some(true) { Ok(()) } else { Err(format!("{status}")) }
        })
    }

    /// The path `node` uses to `peer` (`direct <addr>` or `relayed`), once
    /// it has a connection.
    pub fn path(&self, node: &LabNode, peer: &str) -> anyhow::Result<String> {
        wait_until(Duration::from_secs(10), &format!("{}'s path to {peer}", node.name), || {
            let status = read_status(&node.status)?;
            let id = status["members"]
                .as_array()
                .and_then(|m| m.iter().find(|m| m["name"] == peer))
                .and_then(|m| m["node_id"].as_u64())
                .ok_or_else(|| format!("{peer} is not a member: {status}"))?;
            status["paths"]
                .as_array()
                .and_then(|p| p.iter().find(|p| p["peer"].as_u64() == Some(id)))
                .and_then(|p| p["path"].as_str().map(str::to_owned))
                .ok_or_else(|| format!("no path to {peer}: {status}"))
        })
    }

    /// Runs `f` on `device`'s runtime (sockets it makes live in the device's
    /// namespace) and waits for its result.
    pub fn run_in<T, F, Fut>(&self, device: &Device, f: F) -> anyhow::Result<T>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let handle = device.spawn(move |_| f())?;
        self.rt.block_on(handle).context("lab task panicked or was cancelled")?
    }

    /// Starts `f` on `device`'s runtime without waiting.
    pub fn spawn_in<F, Fut>(&self, device: &Device, f: F) -> anyhow::Result<()>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        device.spawn(move |_| f())?;
        Ok(())
    }

    /// The rendezvous' certificate fingerprint (as the nodes pin it).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Kills the rendezvous with SIGKILL (no goodbye to anyone) and reaps it.
    pub fn kill_rendezvous(&mut self) {
        // The rendezvous is the first process, started by `start`.
        self.procs[0].kill();
    }

    /// Starts the rendezvous again on the same port with the same state
    /// directory (after [`LabCluster::kill_rendezvous`]); returns the
    /// fingerprint it printed.
    pub fn restart_rendezvous(&mut self) -> anyhow::Result<String> {
        self.kill_rendezvous();
        let (proc, fingerprint, _admin) = start_lab_rendezvous(&self.lab, self.dir.path())?;
        self.procs[0] = proc;
        Ok(fingerprint)
    }

    /// Whether the rendezvous process is running.
    pub fn rendezvous_running(&mut self) -> bool {
        matches!(self.procs[0].child.try_wait(), Ok(None))
    }

    /// `Ok` while `node`'s runtime process is running, else how it ended.
    pub fn running(&mut self, node: &LabNode) -> Result<(), String> {
        let proc = self.procs.iter_mut().find(|p| p.name == node.name).ok_or(format!("no process {}", node.name))?;
        match proc.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("{} exited: {status}", node.name)),
            Err(e) => Err(format!("{}: {e}", node.name)),
        }
    }

    /// Name of the nftables tables [`LabCluster::cut_rendezvous`] adds.
    const CUT_TABLE: &str = "boxer_cut_rendezvous";

    /// Makes the rendezvous unreachable without stopping it: the public
    /// router drops everything to or from it (packets vanish, as on a broken
    /// link; nobody is told). NAT routers and the rendezvous share the public
    /// router's LAN but send to each other through the public router (the
    /// lab routes them, `route_via_internet` in `boxer::lab`), so the inet
    /// family's forward hook sees their packets. The rule is in the bridge
    /// family too, for a packet switched on the LAN without that route (as
    /// all were before the lab routed them), which the inet hook sees only
    /// where `br_netfilter` is loaded.
    pub fn cut_rendezvous(&self) -> anyhow::Result<()> {
        let ip = self.rendezvous.ip();
        let table = |family: &str| {
            format!(
                "table {family} {table} {{
    chain forward {{
        type filter hook forward priority -10; policy accept;
        ip daddr {ip} drop
        ip saddr {ip} drop
    }}
}}
",
                table = Self::CUT_TABLE
            )
        };
        LabNet::nft(self.lab.internet(), &(table("inet") + &table("bridge")))
    }

    /// Undoes [`LabCluster::cut_rendezvous`].
    pub fn reconnect_rendezvous(&self) -> anyhow::Result<()> {
        let table = Self::CUT_TABLE;
        LabNet::nft(self.lab.internet(), &format!("delete table inet {table}\ndelete table bridge {table}\n"))
    }

    /// Whether a UDP datagram from `device` reaches the rendezvous' device
    /// (a spare port there, not the rendezvous itself), tried 3 times within
    /// 600 ms.
    pub fn rendezvous_reachable(&self, device: &Device) -> anyhow::Result<bool> {
        const PROBE_PORT: u16 = RENDEZVOUS_PORT + 1;
        let listener = LabNet::udp_socket(self.lab.rendezvous(), PROBE_PORT)?;
        listener.set_read_timeout(Some(Duration::from_millis(200)))?;
        let sender = LabNet::udp_socket(device, 0)?;
        let to = SocketAddr::from((self.rendezvous.ip(), PROBE_PORT));
        let mut buf = [0u8; 16];
        for _ in 0..3 {
            sender.send_to(b"probe", to)?;
            if let Ok((n, _)) = listener.recv_from(&mut buf)
                && &buf[..n] == b"probe"
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Every process' log, for failure messages.
    pub fn logs(&self) -> String {
        self.procs.iter().map(|p| format!("--- {}:\n{}\n", p.name, tail(&p.stderr_text(), 60))).collect()
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for LabCluster {
    fn drop(&mut self) {
        // Runtimes first (they leave cleanly), the rendezvous last.
        for p in self.procs.iter_mut().rev() {
            p.stop();
        }
    }
}

/// A local address in a device: `127.0.0.1:port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// What [`LabCluster::udp_echo_probe`] saw.
#[derive(Debug, Clone)]
pub struct EchoProbe {
    /// Datagrams sent.
    pub sent: u32,
    /// Echoes received back.
    pub echoed: u32,
    /// Round-trip times of the echoes, sorted.
    pub rtts: Vec<Duration>,
}

impl EchoProbe {
    /// Share of datagrams that did not come back, in %.
    pub fn loss_percent(&self) -> f64 {
        100.0 * (self.sent - self.echoed) as f64 / self.sent as f64
    }

    /// Median round-trip time.
    pub fn median_rtt(&self) -> Option<Duration> {
        self.rtts.get(self.rtts.len() / 2).copied()
    }
}

impl LabCluster {
    /// Sends `count` UDP datagrams, one per millisecond, from `device` to a
    /// spare port of the rendezvous' device, where they are echoed back;
    /// counts the echoes and their round-trip times (a path's loss and
    /// delay, both ways). Both sockets live in the lab.
    pub fn udp_echo_probe(&self, device: &Device, count: u32) -> anyhow::Result<EchoProbe> {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::time::Instant;
        const ECHO_PORT: u16 = RENDEZVOUS_PORT + 2;
        let echo = LabNet::udp_socket(self.lab.rendezvous(), ECHO_PORT)?;
        echo.set_read_timeout(Some(Duration::from_millis(50)))?;
        let sender = LabNet::udp_socket(device, 0)?;
        sender.set_read_timeout(Some(Duration::from_millis(50)))?;
        let done = Arc::new(AtomicBool::new(false));
        let echo_done = done.clone();
        let echoer = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !echo_done.load(Ordering::Relaxed) {
                if let Ok((n, from)) = echo.recv_from(&mut buf) {
                    let _ = echo.send_to(&buf[..n], from);
                }
            }
        });
        let receiver_socket = sender.try_clone()?;
        let start = Instant::now();
        let receive_done = done.clone();
        let receiver = std::thread::spawn(move || {
            let mut rtts = Vec::new();
            let mut seen = std::collections::HashSet::new();
            let mut buf = [0u8; 64];
            while !receive_done.load(Ordering::Relaxed) {
                if let Ok(n) = receiver_socket.recv(&mut buf)
                    && n == 12
                {
                    let seq = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes"));
                    let sent_at = Duration::from_nanos(u64::from_le_bytes(buf[4..12].try_into().expect("8 bytes")));
                    if seen.insert(seq) {
                        rtts.push(start.elapsed().saturating_sub(sent_at));
                    }
                }
            }
            rtts
        });
        let to = SocketAddr::from((self.rendezvous.ip(), ECHO_PORT));
        for seq in 0..count {
            let mut msg = [0u8; 12];
            msg[..4].copy_from_slice(&seq.to_le_bytes());
            msg[4..].copy_from_slice(&(start.elapsed().as_nanos() as u64).to_le_bytes());
            sender.send_to(&msg, to)?;
            std::thread::sleep(Duration::from_millis(1));
        }
        // Late echoes: a second is far longer than any lab delay.
        std::thread::sleep(Duration::from_secs(1));
        done.store(true, Ordering::Relaxed);
        let mut rtts = receiver.join().map_err(|_| anyhow::anyhow!("probe receiver panicked"))?;
        echoer.join().map_err(|_| anyhow::anyhow!("probe echoer panicked"))?;
        rtts.sort();
        Ok(EchoProbe { sent: count, echoed: rtts.len() as u32, rtts })
    }
}
