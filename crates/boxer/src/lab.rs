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
use std::sync::{Arc, Mutex};

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

/// Threads [`LabNet::add_nodes`] builds on: a build's own work (creating
/// namespaces and their worker threads, sysctls, the `nft` process of a NAT
/// router) is CPU time of this process, so about one thread per core of the
/// 2-core machines this is measured on; more only adds switching.
const BUILD_THREADS: usize = 2;

/// Builds under way on each of those threads: most of a build is waiting
/// (for netlink replies, for `nft`), so a few overlap on one thread; with
/// 2 x 4, 100 nodes took 0.9 s against 1.2 s with 2 x 2 and 1.5 s with
/// 2 x 8 (with the `patchbay` that creates veth ends in their namespaces,
/// see [`LabNet::add_nodes`]; with patchbay 0.7 as released every link
/// move waits under the kernel's RTNL lock and no shape is faster than one
/// at a time, about 95 ms a node).
const BUILDS_PER_THREAD: usize = 4;

/// Enters a user namespace in which this process may create network
/// namespaces (also as root). Call before any thread exists.
pub fn init() -> anyhow::Result<()> {
    patchbay::init_userns().context("creating the user namespace for the NAT lab")
}

/// A lab: the public router, the rendezvous device, and node devices.
pub struct LabNet {
    parts: Parts,
    rendezvous: Device,
}

/// What adding a node needs, cheap to clone into the threads
/// [`LabNet::add_nodes`] builds on.
#[derive(Clone)]
struct Parts {
    lab: Lab,
    internet: Router,
    routers: Arc<Mutex<HashMap<String, Router>>>,
    devices: Arc<Mutex<HashMap<String, Device>>>,
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
        // Routed, not switched, between the hosts on the internet's LAN (see
        // `route_via_internet`): the router does not tell them about each other.
        run_sh(
            |c| internet.spawn_command_sync(c),
            "internet",
            "for f in /proc/sys/net/ipv4/conf/*/send_redirects; do echo 0 > $f; done",
        )?;
        let parts = Parts { lab, internet, routers: Arc::default(), devices: Arc::default() };
        route_via_internet(&parts.internet, |c| rendezvous.spawn_command_sync(c), "rendezvous", rendezvous.ip())?;
        Ok(Self { parts, rendezvous })
    }

    /// The rendezvous' device.
    pub fn rendezvous(&self) -> &Device {
        &self.rendezvous
    }

    /// The public router every NAT router and the rendezvous hang off (for
    /// nftables rules that cut paths through the lab's internet).
    pub fn internet(&self) -> &Router {
        &self.parts.internet
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
        self.parts.add_node(name, nat).await
    }

    /// Adds devices `name` behind NAT routers of their own, concurrently (as
    /// many at a time as is fast here), like [`LabNet::add_node`] for each;
    /// the devices in the order of `nodes`. On an error the nodes already
    /// built stay in the lab.
    ///
    /// What a node costs: two network namespaces (each with a thread of its
    /// own and a tokio runtime, a second thread for sysctls, and a private
    /// mount namespace per thread), one `nft` process for the router's NAT,
    /// one `sh` for its route through the internet router
    /// (`route_via_internet`), and a few dozen netlink requests; about 15 ms
    /// with the vendored patchbay, which creates veths in their namespaces
    /// (vendor/README.md: moving them cost ~95 ms a node, serialised).
    pub async fn add_nodes(&self, nodes: &[(String, NatOptions)]) -> anyhow::Result<Vec<Device>> {
        self.add_nodes_with(nodes, BUILD_THREADS, BUILDS_PER_THREAD).await
    }

    /// [`LabNet::add_nodes`] on `threads` threads with `per_thread` builds
    /// under way on each.
    async fn add_nodes_with(
        &self,
        nodes: &[(String, NatOptions)],
        threads: usize,
        per_thread: usize,
    ) -> anyhow::Result<Vec<Device>> {
        let parts = self.parts.clone();
        let nodes = nodes.to_vec();
        tokio::task::spawn_blocking(move || parts.add_nodes(&nodes, threads, per_thread))
            .await
            .context("the lab's build thread panicked")?
    }

    /// A device added by [`LabNet::add_node`], [`LabNet::add_nodes`] or
    /// [`LabNet::add_node_behind`], by name.
    pub fn device(&self, name: &str) -> Option<Device> {
        self.parts.devices.lock().expect("device table").get(name).cloned()
    }

    /// Adds device `name` behind the NAT router `router` (made by
    /// [`LabNet::add_nat`]): devices behind one NAT share a LAN.
    pub async fn add_node_behind(&self, name: &str, router: &str) -> anyhow::Result<Device> {
        let id = self
            .parts
            .routers
            .lock()
            .expect("router table")
            .get(router)
            .map(Router::id)
            .with_context(|| format!("no lab router named {router}"))?;
        self.parts.add_device_behind(name, id).await
    }

    /// Adds a NAT router called `name` on the public router.
    pub async fn add_nat(&self, name: &str, nat: NatOptions) -> anyhow::Result<Router> {
        self.parts.add_nat(name, nat).await
    }

    /// A router made by [`LabNet::add_nat`] or [`LabNet::add_node`] (named
    /// `nat-<node>`).
    pub fn router(&self, name: &str) -> Option<Router> {
        self.parts.routers.lock().expect("router table").get(name).cloned()
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

impl Parts {
    /// Builds `nodes` on `threads` threads of their own (each with a tokio
    /// runtime), `per_thread` builds under way on each; blocks until done.
    /// After a failure no further builds start; the first failure in the
    /// order of `nodes` is the error.
    fn add_nodes(
        &self,
        nodes: &[(String, NatOptions)],
        threads: usize,
        per_thread: usize,
    ) -> anyhow::Result<Vec<Device>> {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let results: Vec<std::sync::OnceLock<anyhow::Result<Device>>> =
            nodes.iter().map(|_| std::sync::OnceLock::new()).collect();
        let worker = || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(join_all((0..per_thread.max(1)).map(|_| async {
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((name, nat)) = nodes.get(i) else { break };
                    let built = self.add_node(name, *nat).await;
                    if built.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    let _ = results[i].set(built);
                }
            })));
            Ok(())
        };
        std::thread::scope(|scope| -> anyhow::Result<()> {
            let threads: Vec<_> = (0..threads.clamp(1, nodes.len().max(1)))
                .map(|i| std::thread::Builder::new().name(format!("lab-build-{i}")).spawn_scoped(scope, worker))
                .collect::<Result<_, _>>()
                .context("starting the lab's build threads")?;
            for thread in threads {
                thread.join().map_err(|_| anyhow::anyhow!("a lab build thread panicked"))??;
            }
            Ok(())
        })?;
        let mut devices = Vec::with_capacity(nodes.len());
        for result in results {
            match result.into_inner() {
                Some(built) => devices.push(built?),
                None => anyhow::bail!("the lab's build stopped early"),
            }
        }
        Ok(devices)
    }

    /// Adds device `name` behind a new NAT router of its own (or directly on
    /// the public router for [`NatKind::None`]).
    async fn add_node(&self, name: &str, nat: NatOptions) -> anyhow::Result<Device> {
        let upstream = match nat.kind {
            NatKind::None => self.internet.id(),
            _ => self.add_nat(&format!("nat-{name}"), nat).await?.id(),
        };
        let device = self.add_device_behind(name, upstream).await?;
        if nat.kind == NatKind::None {
            route_via_internet(&self.internet, |c| device.spawn_command_sync(c), name, device.ip())?;
        }
        Ok(device)
    }

    async fn add_device_behind(&self, name: &str, upstream: patchbay::NodeId) -> anyhow::Result<Device> {
        let device = self
            .lab
            .add_device(name)
            .uplink(upstream)
            .build()
            .await
            .with_context(|| format!("adding lab device {name}"))?;
        self.devices.lock().expect("device table").insert(name.to_owned(), device.clone());
        Ok(device)
    }

    /// Adds a NAT router called `name` on the public router.
    async fn add_nat(&self, name: &str, nat: NatOptions) -> anyhow::Result<Router> {
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
        // The router on the internet's LAN: this one, or its ISP router.
        let on_internet = if upstream == self.internet.id() { Some(router.clone()) } else { self.lab.router(upstream) };
        if let Some(r) = on_internet {
            route_via_internet(&self.internet, |c| r.spawn_command_sync(c), r.name(), r.uplink_ip())?;
        }
        self.routers.lock().expect("router table").insert(name.to_owned(), router.clone());
        Ok(router)
    }
}

/// Runs `futures` concurrently on the current task until all have ended.
async fn join_all<F: std::future::Future<Output = ()>>(futures: impl IntoIterator<Item = F>) {
    let mut futures: Vec<Option<std::pin::Pin<Box<F>>>> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    std::future::poll_fn(|cx| {
        for slot in &mut futures {
            if slot.as_mut().is_some_and(|f| f.as_mut().poll(cx).is_ready()) {
                *slot = None;
            }
        }
        if futures.iter().all(Option::is_none) { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
    })
    .await
}

/// Makes a host on the internet router's LAN (a NAT or ISP router, the
/// rendezvous, a node without NAT) send everything for that LAN through
/// the internet router instead of straight to its neighbours.
///
/// All of them share one L2 segment, so each would otherwise keep an ARP
/// entry for every other it talks to, and the kernel's neighbour table is
/// one for all namespaces (`net.ipv4.neigh.default.gc_thresh3`, 1024 by
/// default): a mesh of 100 lab nodes needs ~10,000 entries, the kernel
/// drops packets with "neighbor table overflow", and punches fail. Routed,
/// each host has one neighbour (the internet router) and the router one per
/// host, as on a real internet where NATs are never on one LAN.
fn route_via_internet(
    internet: &Router,
    spawn: impl Fn(std::process::Command) -> anyhow::Result<std::process::Child>,
    name: &str,
    ip: Option<Ipv4Addr>,
) -> anyhow::Result<()> {
    let (Some(ip), Some(lan), Some(gw)) = (ip, internet.downstream_cidr(), internet.downstream_gw()) else {
        anyhow::bail!("{name} or the internet router has no IPv4 address");
    };
    run_sh(
        spawn,
        name,
        &format!(
            "set -e
dev=$(ip -4 -o addr show | awk -v ip={ip}/ 'index($4, ip) == 1 {{print $2; exit}}')
test -n \"$dev\"
ip route replace {gw}/32 dev $dev scope link
ip route replace {lan} via {gw} dev $dev
for f in /proc/sys/net/ipv4/conf/*/accept_redirects; do echo 0 > $f; done"
        ),
    )
    .map(|_| ())
}

/// Runs `sh -c script` through `spawn` (a namespace's command spawner).
fn run_sh(
    spawn: impl Fn(std::process::Command) -> anyhow::Result<std::process::Child>,
    name: &str,
    script: &str,
) -> anyhow::Result<String> {
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", script]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let out = spawn(cmd).context("running sh")?.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "`{script}` failed in {name}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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

impl LabNet {
    /// Any router of the lab by name, also those [`LabNet::add_nat`] makes
    /// on its own (`isp-<name>` in front of a [`NatKind::Masquerade`]).
    pub fn any_router(&self, name: &str) -> Option<Router> {
        self.parts.lab.router_by_name(name)
    }

    /// Runs `sh -c script` in `router`'s namespace; its stdout, or an error
    /// with its stderr if it fails.
    pub fn sh(router: &Router, script: &str) -> anyhow::Result<String> {
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", script]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        let out = router.spawn_command_sync(cmd).context("running sh")?.wait_with_output()?;
        anyhow::ensure!(
            out.status.success(),
            "`{script}` failed in {}: {}",
            router.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Name of the TUN device of a [`DelayLine`].
pub const DELAY_IFACE: &str = "boxer-delay";

/// Name of the nftables table [`LabNet::random_loss`] adds.
const LOSS_TABLE: &str = "boxer_loss";

/// Packets a router forwards towards a subnet, held back for a fixed time
/// (made by [`LabNet::delay`]; removed on drop).
///
/// Without `netem`: kernels built without it (`CONFIG_NET_SCH_NETEM`
/// unset, no module support, as on the machines this was written on) have
/// no delaying qdisc at all (`tc qdisc add … netem` fails with "Specified
/// qdisc kind is unknown"; `patchbay`'s link conditions use netem and then
/// silently do nothing). Instead the router routes those packets into a TUN
/// device, and a thread of this
/// process reads each one and writes it back into the TUN device once it is
/// `delay` old; the router then forwards it on as usual. The router must
/// not NAT (a packet through it twice would be translated twice): an ISP
/// router, such as the one in front of a [`NatKind::Masquerade`] router.
pub struct DelayLine {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<u64>>>,
}

impl DelayLine {
    /// Stops the line (packets still held are dropped); returns how many
    /// packets it carried (written back successfully).
    pub fn stop(mut self) -> anyhow::Result<u64> {
        self.finish()
    }

    fn finish(&mut self) -> anyhow::Result<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        match self.thread.take() {
            Some(thread) => thread.join().map_err(|_| anyhow::anyhow!("the delay thread panicked"))?,
            None => Ok(0),
        }
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

impl std::fmt::Debug for DelayLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelayLine").finish_non_exhaustive()
    }
}

/// Opens TUN device [`DELAY_IFACE`] (no packet information header) in the
/// calling thread's network namespace.
fn open_tun() -> anyhow::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain syscalls on a path and on a descriptor this function owns;
    // `ifr` is a zeroed `ifreq` that outlives the ioctl.
    unsafe {
        let fd = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC);
        anyhow::ensure!(fd >= 0, "opening /dev/net/tun: {}", std::io::Error::last_os_error());
        let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (dst, src) in ifr.ifr_name.iter_mut().zip(DELAY_IFACE.as_bytes()) {
            *dst = *src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        let rc = libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&fd), libc::TUNSETIFF, &mut ifr);
        anyhow::ensure!(rc == 0, "creating TUN device {DELAY_IFACE}: {}", std::io::Error::last_os_error());
        Ok(fd)
    }
}

/// The delay thread: reads every packet the TUN device gets and writes it
/// back `delay` later, until `stop`; returns how many it carried.
fn delay_loop(
    fd: std::os::fd::OwnedFd,
    delay: std::time::Duration,
    stop: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<u64> {
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};
    let raw = fd.as_raw_fd();
    let mut held: std::collections::VecDeque<(Instant, Vec<u8>)> = Default::default();
    let mut buf = vec![0u8; 65536];
    let mut carried = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        // Wake for the next packet due, a new one, or every 20 ms for `stop`.
        let wait =
            held.front().map_or(Duration::from_millis(20), |(due, _)| due.saturating_duration_since(Instant::now()));
        let ts = libc::timespec { tv_sec: wait.as_secs() as libc::time_t, tv_nsec: wait.subsec_nanos() as _ };
        let mut pfd = libc::pollfd { fd: raw, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd; a null signal mask.
        let rc = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
        if rc < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            anyhow::bail!("poll on {DELAY_IFACE}: {}", std::io::Error::last_os_error());
        }
        loop {
            // SAFETY: reads into a buffer of the given length.
            let n = unsafe { libc::read(raw, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            held.push_back((Instant::now() + delay, buf[..n as usize].to_vec()));
        }
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            let (_, packet) = held.pop_front().expect("a packet is held");
            // SAFETY: writes a buffer of the given length. A failed write
            // is a lost packet, as on a real link.
            if unsafe { libc::write(raw, packet.as_ptr().cast(), packet.len()) } > 0 {
                carried += 1;
            }
        }
    }
    Ok(carried)
}

impl LabNet {
    /// Delays every packet `router` forwards to `subnet` (a CIDR it routes
    /// to, e.g. its LAN) by `delay`, until the returned line is dropped. See
    /// [`DelayLine`] for how, and for which routers this works.
    pub fn delay(router: &Router, subnet: &str, delay: std::time::Duration) -> anyhow::Result<DelayLine> {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let thread = router
            .spawn_thread(move || {
                let fd = match open_tun() {
                    Ok(fd) => fd,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("{e:#}")));
                        return Err(e);
                    }
                };
                let _ = ready_tx.send(Ok(()));
                delay_loop(fd, delay, &flag)
            })
            .context("starting the delay thread")?;
        let mut line = DelayLine { stop, thread: Some(thread) };
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => anyhow::bail!("{e}"),
            Err(_) => return Err(line.finish().err().unwrap_or_else(|| anyhow::anyhow!("the delay thread ended"))),
        }
        // What comes out of the TUN device is routed by the main table;
        // other packets for `subnet` go into it. Room for 20 000 packets
        // between the kernel and the thread.
        Self::sh(
            router,
            &format!(
                "ip link set {DELAY_IFACE} up txqueuelen 20000
ip route add {subnet} dev {DELAY_IFACE} table 4747
ip rule add iif {DELAY_IFACE} lookup main pref 4746
ip rule add to {subnet} lookup 4747 pref 4747
sysctl -qw net.ipv4.conf.{DELAY_IFACE}.rp_filter=0 net.ipv4.conf.all.rp_filter=0"
            ),
        )?;
        Ok(line)
    }

    /// Drops `percent` % of the UDP packets `router` forwards, at random
    /// (`numgen random`), in both directions; counts them for
    /// [`LabNet::loss_counts`]. Packets coming out of a [`DelayLine`] were
    /// already counted on their way in.
    pub fn random_loss(router: &Router, percent: u32) -> anyhow::Result<()> {
        anyhow::ensure!(percent <= 100, "{percent} % loss");
        Self::nft(
            router,
            &format!(
                "table inet {LOSS_TABLE} {{
    chain forward {{
        type filter hook forward priority -5; policy accept;
        iifname \"{DELAY_IFACE}\" accept
        meta l4proto udp counter
        meta l4proto udp numgen random mod 100 < {percent} counter drop
    }}
}}
"
            ),
        )
    }

    /// Undoes [`LabNet::random_loss`].
    pub fn stop_loss(router: &Router) -> anyhow::Result<()> {
        Self::nft(router, &format!("delete table inet {LOSS_TABLE}\n"))
    }

    /// UDP packets [`LabNet::random_loss`] has seen on `router`, and how
    /// many of them it dropped.
    pub fn loss_counts(router: &Router) -> anyhow::Result<(u64, u64)> {
        let table = Self::sh(router, &format!("nft list table inet {LOSS_TABLE}"))?;
        let packets: Vec<u64> = table
            .lines()
            .filter_map(|l| l.split("counter packets ").nth(1))
            .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
            .collect();
        match packets[..] {
            [seen, dropped] => Ok((seen, dropped)),
            _ => anyhow::bail!("unexpected counters in {table}"),
        }
    }
}

impl LabNet {
    /// Makes `device` put every packet on its uplink singly: the kernel
    /// splits UDP GSO batches (one sendmsg of up to 64 packets, which QUIC
    /// stacks use) when they leave the device, as a real NIC does, rather
    /// than carrying each batch through the lab as one packet, which a
    /// router's nftables rules would then see, count and drop as one.
    pub fn segment_on_send(device: &Device) -> anyhow::Result<()> {
        let iface = device.default_iface().with_context(|| format!("{} has no uplink", device.name()))?;
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["link", "set", "dev", iface.name(), "gso_max_segs", "1"]).stderr(std::process::Stdio::piped());
        let out = device.spawn_command_sync(cmd).context("running ip")?.wait_with_output()?;
        anyhow::ensure!(
            out.status.success(),
            "setting gso_max_segs on {}: {}",
            device.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    /// Every node built by `add_nodes` reaches the rendezvous device and
    /// hears back (root only; `--ignored`). `LAB_SIZES` as below.
    #[test]
    #[ignore]
    fn every_node_of_add_nodes_reaches_the_rendezvous() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let sizes = std::env::var("LAB_SIZES").unwrap_or_else(|_| "100".into());
        // One lab for all sizes, as `boxer bench` grows its lab run after run.
        let lab = rt.block_on(LabNet::new()).unwrap();
        let echo = LabNet::udp_socket(lab.rendezvous(), 4000).unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok((len, from)) = echo.recv_from(&mut buf) {
                let _ = echo.send_to(&buf[..len], from);
            }
        });
        let target = SocketAddr::from((lab.rendezvous_ip().unwrap(), 4000));
        for n in sizes.split(',').map(|n| n.parse::<usize>().unwrap()) {
            let nodes: Vec<_> = (0..n).map(|i| (format!("n{n}-{i}"), NatOptions::new(NatKind::Moderate))).collect();
            let devices = rt.block_on(lab.add_nodes(&nodes)).unwrap();
            let mut failed = Vec::new();
            for d in &devices {
                let ok = d
                    .run_sync(move || {
                        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
                        s.set_read_timeout(Some(std::time::Duration::from_millis(300)))?;
                        for _ in 0..3 {
                            s.send_to(b"ping", target)?;
                            let mut b = [0u8; 8];
                            if s.recv_from(&mut b).is_ok() {
                                return Ok(true);
                            }
                        }
                        Ok(false)
                    })
                    .unwrap_or(false);
                if !ok {
                    failed.push(format!("{} ({:?})", d.name(), d.ip()));
                }
            }
            assert!(failed.is_empty(), "{} of {n} nodes cannot reach the rendezvous: {failed:?}", failed.len());
        }
    }

    /// Time to add 10/50/100 nodes behind Moderate NATs (root only; run with
    /// `--ignored --nocapture`). `LAB_SHAPES=threads:per_thread,...`.
    #[test]
    #[ignore]
    fn lab_setup_time() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let shapes = std::env::var("LAB_SHAPES").unwrap_or_else(|_| "0:0,1:1,4:4".into());
        let sizes = std::env::var("LAB_SIZES").unwrap_or_else(|_| "10,50,100".into());
        for shape in shapes.split(',') {
            let (threads, per) = shape.split_once(':').unwrap();
            let (threads, per): (usize, usize) = (threads.parse().unwrap(), per.parse().unwrap());
            for n in sizes.split(',').map(|n| n.parse::<usize>().unwrap()) {
                let t = std::time::Instant::now();
                let lab = rt.block_on(LabNet::new()).unwrap();
                let base = t.elapsed();
                let nodes: Vec<_> = (0..n).map(|i| (format!("n-{i}"), NatOptions::new(NatKind::Moderate))).collect();
                let t = std::time::Instant::now();
                rt.block_on(async {
                    if threads == 0 {
                        for (name, nat) in &nodes {
                            lab.add_node(name, *nat).await.unwrap();
                        }
                    } else {
                        lab.add_nodes_with(&nodes, threads, per).await.unwrap();
                    }
                });
                let took = t.elapsed();
                let t = std::time::Instant::now();
                drop(lab);
                eprintln!("{threads}x{per} {n}: lab {base:.2?}, nodes {took:.2?}, drop {:.2?}", t.elapsed());
            }
        }
    }
}
