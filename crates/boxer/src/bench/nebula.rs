//! Nebula beside Boxer in the NAT lab: the same nodes, behind the same NAT
//! routers, joined by a [Nebula](https://github.com/slackhq/nebula) network
//! instead of Boxer's overlay, so `boxer bench` can put the two side by side.
//!
//! ```text
//!            internet (public router)
//!        ┌──────────┼───────────────────┐
//!  nebula-lighthouse   nat-a             nat-b
//!  10.42.0.1           │                 │
//!                    node-a            node-b
//!                    10.42.0.2         10.42.0.3      (tun `nebula1`)
//! ```
//!
//! [`NebulaNet::start`] makes a CA and a certificate per host with
//! `nebula-cert`, starts the lighthouse on a public device of its own, then
//! `nebula` on each node, and returns once every node has a tunnel to the
//! lighthouse (which then knows the node's address as its NAT shows it), and
//! before any node has talked to another: first contact between two nodes
//! is the caller's to measure.
//!
//! The configuration is Nebula's defaults plus what makes it comparable
//! with Boxer: hole punching on (`punchy.punch`, `punchy.respond`), a
//! firewall that lets everything through, one fixed UDP port per host,
//! and UDP socket buffers as large as Boxer's ([`SOCKET_BUFFER`]). The
//! MTU ([`TUN_MTU`]) and punch delay ([`PUNCH_DELAY`]) are Nebula's
//! defaults, written out.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use patchbay::Device;
use tokio::process::{Child, Command};

use crate::lab::{LabNet, NatKind, NatOptions};

/// Name of the lighthouse: its lab device, certificate and files under the
/// directory given to [`NebulaNet::start`] (so no node may have it).
pub const LIGHTHOUSE: &str = "nebula-lighthouse";

/// UDP port every Nebula host listens on (Nebula's customary port).
pub const PORT: u16 = 4242;

/// Name of the TUN device Nebula makes in each host's namespace.
pub const TUN_DEV: &str = "nebula1";

/// Network of the Nebula overlay, with [`OVERLAY_PREFIX`]: 10.42.0.0/16.
/// Free in the lab: `patchbay` numbers its public side in 198.18.0.0/15 and
/// the LANs behind NAT routers in 10.0.0.0/16 (`10.0.<n>.0/24`), and
/// Boxer's overlay is 100.96.0.0/12 (`boxer_proto::control::DEFAULT_OVERLAY`).
pub const OVERLAY_NET: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 0);

/// Prefix length of the Nebula overlay (room for 65 533 hosts).
pub const OVERLAY_PREFIX: u8 = 16;

/// MTU of the `nebula1` devices: Nebula's default, 1300, kept as is so the
/// comparison is with Nebula as users run it. Nebula does no path MTU
/// discovery; 1300 leaves room for its own 60 bytes (IPv4 + UDP headers,
/// a 16-byte Nebula header and a 16-byte AEAD tag) below any common
/// internet path MTU, tunnels and PPPoE included. (Boxer's QUIC paths
/// start at 1200 bytes and discover more: quinn's defaults.)
pub const TUN_MTU: u32 = 1300;

/// How long a node waits, when the lighthouse tells it that another wants
/// to reach it, before punching towards that one (`punchy.delay`):
/// Nebula's default, 1 s, written out because it dominates first contact
/// between two nodes behind port-restricted NATs (the initiator's
/// handshakes are dropped by the peer's NAT until the punch, then the next
/// handshake retry gets through): 1.3-1.5 s with it in the lab, ~0.4 s
/// with 0 (then the handshake retry interval dominates). Nebula delays on
/// purpose ("for misbehaving NATs"), so the bench keeps it.
pub const PUNCH_DELAY: Duration = Duration::from_secs(1);

/// UDP socket buffers of every Nebula host (`listen.read_buffer`,
/// `listen.write_buffer`; Nebula forces them past `net.core.rmem_max` as
/// root): the size Boxer's peer socket asks for,
/// [`boxer_net::endpoint::SOCKET_BUFFER`]. With the kernel's default
/// (~208 KiB) a Nebula receiver drops packets at its socket under a bulk
/// TCP transfer (`RcvbufErrors` in the lab), so a comparison with defaults
/// would measure socket buffers rather than the overlays.
pub const SOCKET_BUFFER: usize = boxer_net::endpoint::SOCKET_BUFFER;

/// How long [`NebulaNet::start`] waits for the lighthouse to come up and
/// for each node to register with it.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

/// How often logs are read while waiting.
const POLL: Duration = Duration::from_millis(20);

/// Whether Nebula can run here: `Ok` with the version of `nebula` (e.g.
/// `"1.6.1"`), or `Err` saying why not (e.g. `"nebula is not installed
/// (apt-get install nebula)"`). Both `nebula` and `nebula-cert` must run.
pub fn available() -> Result<String, String> {
    let version = |bin: &str| -> Result<String, String> {
        let out = std::process::Command::new(bin).arg("-version").stdin(Stdio::null()).output().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                format!("{bin} is not installed (apt-get install nebula)")
            } else {
                format!("running `{bin} -version`: {e}")
            }
        })?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!(
                "`{bin} -version` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        text.lines()
            .find_map(|l| l.trim().strip_prefix("Version:"))
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("`{bin} -version` printed no version: {}", text.trim()))
    };
    let nebula = version("nebula")?;
    version("nebula-cert")?;
    Ok(nebula)
}

/// One Nebula host: its overlay address and its process.
struct Host {
    ip: Ipv4Addr,
    pid: u32,
    /// Killed on drop (`kill_on_drop`).
    child: Child,
}

/// A Nebula network in the lab: a lighthouse on a device of its own on the
/// lab's public router, and one `nebula` process on each given device.
/// Processes are killed on drop.
pub struct NebulaNet {
    dir: PathBuf,
    hosts: HashMap<String, Host>,
    lighthouse: Device,
}

impl std::fmt::Debug for NebulaNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hosts: HashMap<_, _> = self.hosts.iter().map(|(name, h)| (name.as_str(), (h.ip, h.pid))).collect();
        f.debug_struct("NebulaNet")
            .field("dir", &self.dir)
            .field("lighthouse", &self.lighthouse.ip())
            .field("hosts", &hosts)
            .finish()
    }
}

impl NebulaNet {
    /// Makes a CA and per-host certificates with `nebula-cert` under `dir`
    /// (created if missing; earlier files of the same names are replaced),
    /// writes a config per host there, starts the lighthouse on a new lab
    /// device [`LIGHTHOUSE`] with a public address on the lab's internet
    /// router, then `nebula` on each of `nodes` (name, device): devices the
    /// lab has already put behind NAT routers. Each host logs to
    /// `dir/<name>.log` (see [`NebulaNet::log`]).
    ///
    /// Returns once every node is registered with the lighthouse: its log
    /// shows the lighthouse's answer to its handshake (stage 2 from the
    /// lighthouse's overlay address), and the lighthouse, which sends that
    /// answer only after recording the address the handshake came from (the
    /// node's NAT mapping), can then introduce the node to any other. No
    /// node has talked to another yet.
    ///
    /// Fails on bad names (empty, duplicated, [`LIGHTHOUSE`], or other than
    /// ASCII letters, digits, `.`, `_`, `-`), if `nebula-cert` or `nebula`
    /// fails, or if a host is not up within [`START_TIMEOUT`]: the error
    /// names the host and its log file. One per lab: the lighthouse's
    /// device name is fixed.
    pub async fn start(lab: &LabNet, dir: &Path, nodes: &[(&str, &Device)]) -> anyhow::Result<Self> {
        check_names(nodes)?;
        anyhow::ensure!(
            nodes.len() < (1usize << (32 - OVERLAY_PREFIX)) - 2,
            "{} nodes do not fit in the Nebula overlay {OVERLAY_NET}/{OVERLAY_PREFIX}",
            nodes.len()
        );
        available().map_err(|e| anyhow::anyhow!("Nebula cannot run here: {e}"))?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating the Nebula directory {}", dir.display()))?;
        let dir = dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))?;
        let started = Instant::now();

        // Certificates: the lighthouse first (the overlay's first address),
        // then the nodes in order.
        let hosts: Vec<(&str, Ipv4Addr)> = std::iter::once(LIGHTHOUSE)
            .chain(nodes.iter().map(|(name, _)| *name))
            .enumerate()
            .map(|(i, name)| (name, overlay_ip(i)))
            .collect();
        make_certificates(&dir, &hosts).await?;
        let lighthouse_ip = overlay_ip(0);

        let device = lab
            .add_node(LIGHTHOUSE, NatOptions::new(NatKind::None))
            .await
            .context("adding the Nebula lighthouse's lab device")?;
        let public = device.ip().context("the Nebula lighthouse's lab device has no IPv4 address")?;
        tracing::info!(lighthouse = %public, nodes = nodes.len(), dir = %dir.display(), "starting Nebula");

        let mut running = HashMap::new();
        let yaml = config(&dir, LIGHTHOUSE, None);
        let child = spawn(&dir, LIGHTHOUSE, &device, &yaml)?;
        let mut lighthouse = Host { ip: lighthouse_ip, pid: child.id().unwrap_or_default(), child };
        wait_for(&dir, &mut [(LIGHTHOUSE, &mut lighthouse)], "start-up", |log| log.contains(ACTIVE)).await?;
        tracing::debug!(elapsed = ?started.elapsed(), "Nebula lighthouse up");
        running.insert(LIGHTHOUSE.to_owned(), lighthouse);

        let mut pending = Vec::new();
        for ((name, node), (_, ip)) in nodes.iter().zip(&hosts[1..]) {
            let yaml = config(&dir, name, Some((lighthouse_ip, public)));
            let child = spawn(&dir, name, node, &yaml)?;
            pending.push((*name, Host { ip: *ip, pid: child.id().unwrap_or_default(), child }));
        }
        let mut waiting: Vec<(&str, &mut Host)> = pending.iter_mut().map(|(name, host)| (*name, host)).collect();
        let what = format!("registration with the lighthouse ({lighthouse_ip}, {public}:{PORT})");
        wait_for(&dir, &mut waiting, &what, |log| registered(log, lighthouse_ip)).await?;
        running.extend(pending.into_iter().map(|(name, host)| (name.to_owned(), host)));
        tracing::info!(elapsed = ?started.elapsed(), nodes = nodes.len(), "Nebula up, every node registered");
        Ok(Self { dir, hosts: running, lighthouse: device })
    }

    /// Overlay (Nebula) IPv4 address of a node (or of [`LIGHTHOUSE`]).
    pub fn ip(&self, name: &str) -> Option<Ipv4Addr> {
        self.hosts.get(name).map(|h| h.ip)
    }

    /// Pid of the `nebula` process of a node (or of [`LIGHTHOUSE`]), for CPU
    /// and RSS measurements.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.hosts.get(name).map(|h| h.pid)
    }

    /// Path of a node's (or [`LIGHTHOUSE`]'s) Nebula log: its stdout and
    /// stderr, timestamps to the microsecond.
    pub fn log(&self, name: &str) -> PathBuf {
        log_path(&self.dir, name)
    }

    /// The lighthouse's lab device.
    pub fn lighthouse(&self) -> &Device {
        &self.lighthouse
    }
}

impl Drop for NebulaNet {
    fn drop(&mut self) {
        for (name, host) in &mut self.hosts {
            if let Err(e) = host.child.start_kill() {
                tracing::debug!(%name, "killing nebula: {e}");
            }
        }
    }
}

/// What Nebula logs once its TUN device and UDP socket are up.
const ACTIVE: &str = "Nebula interface is active";

/// Overlay address of the `i`-th host (0: the lighthouse, `.1`).
fn overlay_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(OVERLAY_NET) + 1 + i as u32)
}

/// Names must be unique, not the lighthouse's, and safe in file names,
/// certificates and YAML.
fn check_names(nodes: &[(&str, &Device)]) -> anyhow::Result<()> {
    let mut seen = HashSet::new();
    for (name, _) in nodes {
        anyhow::ensure!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')),
            "Nebula node name {name:?}: only ASCII letters, digits, '.', '_' and '-' are allowed"
        );
        anyhow::ensure!(*name != LIGHTHOUSE && !name.starts_with('.'), "Nebula node name {name:?} is reserved");
        anyhow::ensure!(seen.insert(*name), "Nebula node name {name:?} is given twice");
    }
    Ok(())
}

fn log_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.log"))
}

/// Runs `nebula-cert` with `args` (no network involved).
async fn nebula_cert(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("nebula-cert")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .context("running nebula-cert (apt-get install nebula)")?;
    anyhow::ensure!(
        out.status.success(),
        "`nebula-cert {}` failed ({}): {}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    );
    Ok(())
}

/// A CA (`ca.crt`, `ca.key`) and, signed by it, `<name>.crt`/`<name>.key`
/// for each host with its overlay address. `nebula-cert` refuses to
/// overwrite files, so those of an earlier run are removed first.
async fn make_certificates(dir: &Path, hosts: &[(&str, Ipv4Addr)]) -> anyhow::Result<()> {
    let files = ["ca".to_owned()].into_iter().chain(hosts.iter().map(|(name, _)| (*name).to_owned()));
    for stem in files {
        for ext in ["crt", "key"] {
            let path = dir.join(format!("{stem}.{ext}"));
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing the old {}", path.display()));
                }
                _ => {}
            }
        }
    }
    let path = |file: String| dir.join(file).to_string_lossy().into_owned();
    let (ca_crt, ca_key) = (path("ca.crt".into()), path("ca.key".into()));
    nebula_cert(&["ca", "-name", "boxer-bench", "-out-crt", &ca_crt, "-out-key", &ca_key])
        .await
        .with_context(|| format!("making the Nebula CA in {}", dir.display()))?;
    for (name, ip) in hosts {
        let (crt, key) = (path(format!("{name}.crt")), path(format!("{name}.key")));
        let ip = format!("{ip}/{OVERLAY_PREFIX}");
        nebula_cert(&[
            "sign", "-ca-crt", &ca_crt, "-ca-key", &ca_key, "-name", name, "-ip", &ip, "-out-crt", &crt, "-out-key",
            &key,
        ])
        .await
        .with_context(|| format!("making the Nebula certificate of {name} in {}", dir.display()))?;
    }
    Ok(())
}

/// A YAML single-quoted string.
fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The config of host `name`: a lighthouse when `lighthouse` is `None`,
/// else a node that knows the lighthouse by (overlay address, public
/// address).
fn config(dir: &Path, name: &str, lighthouse: Option<(Ipv4Addr, Ipv4Addr)>) -> String {
    let file = |ext: &str| quoted(&dir.join(format!("{name}.{ext}")).to_string_lossy());
    let ca = quoted(&dir.join("ca.crt").to_string_lossy());
    let (am_lighthouse, hosts, static_map) = match lighthouse {
        None => ("true", "[]".to_owned(), "{}".to_owned()),
        Some((overlay, public)) => ("false", format!("['{overlay}']"), format!("\n  '{overlay}': ['{public}:{PORT}']")),
    };
    format!(
        "# Written by boxer bench (crates/boxer/src/bench/nebula.rs) for {name}.
pki:
  ca: {ca}
  cert: {cert}
  key: {key}
static_host_map: {static_map}
lighthouse:
  am_lighthouse: {am_lighthouse}
  hosts: {hosts}
listen:
  host: 0.0.0.0
  port: {PORT}
  read_buffer: {SOCKET_BUFFER}
  write_buffer: {SOCKET_BUFFER}
punchy:
  punch: true
  respond: true
  delay: {punch_delay}ms
tun:
  dev: {TUN_DEV}
  mtu: {TUN_MTU}
logging:
  level: info
  format: text
  timestamp_format: '2006-01-02T15:04:05.000000Z07:00'
firewall:
  outbound:
    - port: any
      proto: any
      host: any
  inbound:
    - port: any
      proto: any
      host: any
",
        punch_delay = PUNCH_DELAY.as_millis(),
        cert = file("crt"),
        key = file("key"),
    )
}

/// Writes `config` to `dir/<name>.yml` and starts `nebula` with it on
/// `device`, logging to `dir/<name>.log`.
fn spawn(dir: &Path, name: &str, device: &Device, config: &str) -> anyhow::Result<Child> {
    let path = dir.join(format!("{name}.yml"));
    std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
    let log = log_path(dir, name);
    let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone().with_context(|| format!("opening {}", log.display()))?;
    let mut cmd = Command::new("nebula");
    cmd.arg("-config").arg(&path).stdin(Stdio::null()).stdout(out).stderr(err).kill_on_drop(true);
    let child = device
        .spawn_command(cmd)
        .with_context(|| format!("starting nebula for {name} on lab device {}", device.name()))?;
    tracing::debug!(%name, device = device.name(), pid = ?child.id(), log = %log.display(), "nebula started");
    Ok(child)
}

/// Waits until `done` holds for the log of each of `hosts` (`what` says
/// what that is); fails if one exits first or [`START_TIMEOUT`] passes,
/// naming it and its log.
async fn wait_for(
    dir: &Path,
    hosts: &mut [(&str, &mut Host)],
    what: &str,
    done: impl Fn(&str) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    let mut ready = vec![false; hosts.len()];
    loop {
        for ((name, host), ready) in hosts.iter_mut().zip(&mut ready) {
            if *ready {
                continue;
            }
            let log = log_path(dir, name);
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if done(&text) {
                tracing::debug!(%name, "nebula: {what} done");
                *ready = true;
                continue;
            }
            if let Some(status) = host.child.try_wait().with_context(|| format!("checking nebula of {name}"))? {
                anyhow::bail!(
                    "nebula of {name} exited ({status}) while waiting for its {what}; see {}:\n{}",
                    log.display(),
                    tail(&text)
                );
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "nebula of {name}: no {what} within {START_TIMEOUT:?}; see {}:\n{}",
                    log.display(),
                    tail(&text)
                );
            }
        }
        if ready.iter().all(|r| *r) {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The last lines of a log, for error messages.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// Whether a node's log shows its handshake with the lighthouse completed:
/// the lighthouse's answer (stage 2) received from its overlay address.
fn registered(log: &str, lighthouse: Ipv4Addr) -> bool {
    let field = format!("vpnIp={lighthouse}");
    log.lines().any(|line| {
        line.contains("msg=\"Handshake message received\"")
            && line.contains("stage:2")
            && line.split_whitespace().any(|word| word == field)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines of a node's log from a lab run (fingerprints shortened).
    const NODE_LOG: &str = r#"time="2026-11-30T22:49:11.494028Z" level=info msg="Nebula interface is active" build=1.6.1 interface=nebula1 network=10.42.0.2/16 udpAddr="0.0.0.0:4242"
time="2026-11-30T22:49:11.495674Z" level=info msg="Handshake message sent" handshake="map[stage:1 style:ix_psk0]" initiatorIndex=365253503 udpAddrs="[198.18.1.5:4242]" vpnIp=10.42.0.1
time="2026-11-30T22:49:11.496044Z" level=info msg="Handshake message received" certName=nebula-lighthouse durationNs=1417118 fingerprint=e817 handshake="map[stage:2 style:ix_psk0]" initiatorIndex=365253503 issuer=91b8 remoteIndex=365253503 responderIndex=508081454 sentCachedPackets=1 udpAddr="198.18.1.5:4242" vpnIp=10.42.0.1
"#;

    #[test]
    fn registration_is_the_lighthouses_stage_2_answer() {
        let lighthouse = overlay_ip(0);
        assert_eq!(lighthouse, Ipv4Addr::new(10, 42, 0, 1));
        assert!(registered(NODE_LOG, lighthouse));
        // Only the handshake sent so far.
        let sent: String = NODE_LOG.lines().take(2).map(|l| format!("{l}\n")).collect();
        assert!(!registered(&sent, lighthouse));
        // Another host's answer, or a longer address with the same prefix.
        assert!(!registered(NODE_LOG, Ipv4Addr::new(10, 42, 0, 3)));
        assert!(!registered(&NODE_LOG.replace("vpnIp=10.42.0.1", "vpnIp=10.42.0.10"), lighthouse));
    }

    #[test]
    fn hosts_get_consecutive_addresses_in_the_overlay() {
        assert_eq!(overlay_ip(2), Ipv4Addr::new(10, 42, 0, 3));
        assert_eq!(overlay_ip(300), Ipv4Addr::new(10, 42, 1, 45));
    }

    #[test]
    fn configs_quote_paths_and_name_the_lighthouse() {
        let dir = Path::new("/tmp/it's here");
        let node = config(dir, "a", Some((overlay_ip(0), Ipv4Addr::new(198, 18, 1, 5))));
        assert!(node.contains("cert: '/tmp/it''s here/a.crt'"), "{node}");
        assert!(node.contains("'10.42.0.1': ['198.18.1.5:4242']"), "{node}");
        assert!(node.contains("am_lighthouse: false"), "{node}");
        let lighthouse = config(dir, LIGHTHOUSE, None);
        assert!(lighthouse.contains("am_lighthouse: true") && lighthouse.contains("hosts: []"), "{lighthouse}");
    }
}
