//! The NAT lab: every node on its own device behind its own NAT router, the
//! rendezvous on a public router, all in network namespaces this process
//! creates with `patchbay` and that have no way out of the machine.
//!
//! ```text
//!            internet (public router, 198.18.x.0/24, no uplink)
//!        ┌──────────┼──────────────────┬───────────────────────┐
//!   rendezvous   nat-a (open)      isp-b ── nat-b (masquerade)  node-c (no NAT)
//!                  │                          │
//!                node-a                     node-b
//! ```
//!
//! A masquerading router sits behind an ISP router of its own: a real home
//! router is always a few hops away from any peer's, which is what lets a
//! low-TTL first probe open its mapping without reaching the peer's NAT
//! (see `boxer_net::punch::LOW_TTL`).
//!
//! [`init`] must run while the process has one thread (before tokio starts).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Mutex;

use anyhow::Context;
use patchbay::{Device, Lab, Nat, NatConfig, NatFiltering, NatMapping, Router};

/// How a node's NAT router behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NatKind {
    /// No NAT: the node has a public address.
    None,
    /// Full cone: one mapping per socket, anyone may send to it.
    Open,
    /// Port-restricted cone: one mapping per socket, only contacted
    /// address:port pairs may send to it (home routers, AWS Lambda).
    Moderate,
    /// Symmetric: a new random mapping per destination (punching fails; the
    /// relay carries the traffic).
    Strict,
    /// Plain Linux `masquerade` without an inbound filter: port-preserving,
    /// but an unsolicited packet creates a conntrack entry that collides with
    /// the host's own mapping.
    Masquerade,
}

impl std::fmt::Display for NatKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            NatKind::None => "none",
            NatKind::Open => "open",
            NatKind::Moderate => "moderate",
            NatKind::Strict => "strict",
            NatKind::Masquerade => "masquerade",
        };
        f.write_str(name)
    }
}

/// Options of a NAT router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatOptions {
    /// Its behaviour.
    pub kind: NatKind,
    /// Its UDP conntrack timeout in seconds, for replied and unreplied flows
    /// alike (Linux defaults to 30 s and 120 s).
    pub udp_timeout: u32,
}

impl NatOptions {
    /// `kind` with the common 30 s UDP timeout.
    pub fn new(kind: NatKind) -> Self {
        Self { kind, udp_timeout: DEFAULT_UDP_TIMEOUT }
    }
}

/// UDP mapping lifetime of lab NATs: 30 s, the common value of home routers
/// and of Linux conntrack for unreplied UDP, and the budget peer keepalives
/// are designed against.
pub const DEFAULT_UDP_TIMEOUT: u32 = 30;

/// Enters a user namespace in which this process may create network
/// namespaces (also as root). Call before any thread exists.
pub fn init() -> anyhow::Result<()> {
    patchbay::init_userns().context("creating the user namespace for the NAT lab")
}

/// A lab: the public router, the rendezvous device, and node devices.
pub struct LabNet {
    lab: Lab,
    internet: Router,
    rendezvous: Device,
    routers: Mutex<HashMap<String, Router>>,
}

impl std::fmt::Debug for LabNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabNet").field("rendezvous", &self.rendezvous.ip()).finish_non_exhaustive()
    }
}

impl LabNet {
    /// Builds the public router and the rendezvous' device.
    pub async fn new() -> anyhow::Result<Self> {
        let lab = Lab::builder()
            .allow_real_root()
            .build()
            .await
            .context("building the NAT lab (needs nftables: `apt-get install nftables`, and user namespaces)")?;
        let internet = lab.add_router("internet").build().await.context("adding the public router")?;
        let rendezvous =
            lab.add_device("rendezvous").uplink(internet.id()).build().await.context("adding the rendezvous device")?;
        Ok(Self { lab, internet, rendezvous, routers: Mutex::default() })
    }

    /// The rendezvous' device.
    pub fn rendezvous(&self) -> &Device {
        &self.rendezvous
    }

    /// The public router every NAT router and the rendezvous hang off (for
    /// nftables rules that cut paths through the lab's internet).
    pub fn internet(&self) -> &Router {
        &self.internet
    }

    /// The rendezvous device's address.
    pub fn rendezvous_ip(&self) -> anyhow::Result<Ipv4Addr> {
        self.rendezvous.ip().context("the rendezvous device has no IPv4 address")
    }

    /// A UDP socket bound to `port` (0: any) inside `device`'s namespace.
    pub fn udp_socket(device: &Device, port: u16) -> anyhow::Result<UdpSocket> {
        device
            .run_sync(move || Ok(UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))?))
            .with_context(|| format!("binding UDP port {port} in lab device {}", device.name()))
    }

    /// Adds device `name` behind a new NAT router of its own (or directly on
    /// the public router for [`NatKind::None`]).
    pub async fn add_node(&self, name: &str, nat: NatOptions) -> anyhow::Result<Device> {
        let upstream = match nat.kind {
            NatKind::None => self.internet.id(),
            _ => self.add_nat(&format!("nat-{name}"), nat).await?.id(),
        };
        self.add_device_behind(name, upstream).await
    }

    /// Adds device `name` behind the NAT router `router` (made by
    /// [`LabNet::add_nat`]): devices behind one NAT share a LAN.
    pub async fn add_node_behind(&self, name: &str, router: &str) -> anyhow::Result<Device> {
        let id = self
            .routers
            .lock()
            .expect("router table")
            .get(router)
            .map(Router::id)
            .with_context(|| format!("no lab router named {router}"))?;
        self.add_device_behind(name, id).await
    }

    async fn add_device_behind(&self, name: &str, upstream: patchbay::NodeId) -> anyhow::Result<Device> {
        self.lab.add_device(name).uplink(upstream).build().await.with_context(|| format!("adding lab device {name}"))
    }

    /// Adds a NAT router called `name` on the public router.
    pub async fn add_nat(&self, name: &str, nat: NatOptions) -> anyhow::Result<Router> {
        let (mapping, filtering) = match nat.kind {
            NatKind::Open => (NatMapping::EndpointIndependent, NatFiltering::EndpointIndependent),
            NatKind::Strict => (NatMapping::EndpointDependent, NatFiltering::AddressAndPortDependent),
            // Masquerade's rules replace these below.
            NatKind::Moderate | NatKind::Masquerade | NatKind::None => {
                (NatMapping::EndpointIndependent, NatFiltering::AddressAndPortDependent)
            }
        };
        let config = NatConfig::builder()
            .mapping(mapping)
            .filtering(filtering)
            .udp_timeout(nat.udp_timeout)
            .udp_stream_timeout(nat.udp_timeout)
            .build()
            .map_err(|e| anyhow::anyhow!("NAT configuration for {name}: {e}"))?;
        let upstream = if nat.kind == NatKind::Masquerade {
            let isp = self
                .lab
                .add_router(&format!("isp-{name}"))
                .upstream(self.internet.id())
                .build()
                .await
                .with_context(|| format!("adding the ISP router of {name}"))?;
            isp.id()
        } else {
            self.internet.id()
        };
        let router = self
            .lab
            .add_router(name)
            .upstream(upstream)
            .nat(Nat::Custom(config))
            .build()
            .await
            .with_context(|| format!("adding NAT router {name}"))?;
        if nat.kind == NatKind::Masquerade {
            plain_masquerade(&router).with_context(|| format!("installing masquerade on {name}"))?;
        }
        self.routers.lock().expect("router table").insert(name.to_owned(), router.clone());
        Ok(router)
    }

    /// A router made by [`LabNet::add_nat`] or [`LabNet::add_node`] (named
    /// `nat-<node>`).
    pub fn router(&self, name: &str) -> Option<Router> {
        self.routers.lock().expect("router table").get(name).cloned()
    }

    /// Runs `nft -f -` with `script` in `router`'s namespace.
    pub fn nft(router: &Router, script: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let mut cmd = std::process::Command::new("nft");
        cmd.args(["-f", "-"]).stdin(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        let mut child = router.spawn_command_sync(cmd).context("running nft (is nftables installed?)")?;
        child.stdin.take().context("nft stdin")?.write_all(script.as_bytes())?;
        let out = child.wait_with_output()?;
        anyhow::ensure!(out.status.success(), "nft failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        Ok(())
    }
}

/// Replaces a router's NAT with plain `masquerade`: source ports kept where
/// free, no inbound filter, so unsolicited packets reach the router itself.
fn plain_masquerade(router: &Router) -> anyhow::Result<()> {
    let lan = router.downstream_cidr().context("the router has no LAN")?;
    LabNet::nft(
        router,
        &format!(
            "flush ruleset
table ip nat {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {lan} ip daddr != {lan} masquerade
    }}
}}
"
        ),
    )
}
