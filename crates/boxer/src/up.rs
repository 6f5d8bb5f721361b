//! `boxer up`: start a rendezvous (or use one), create the cluster, launch
//! every node through a [`Provider`], show progress and output, end when the
//! main services exit, tear everything down.
//!
//! One orchestration for every provider: the rendezvous is the single
//! source of membership, output and exit reports (local nodes and Lambda
//! functions report the same way); a provider only starts nodes, says when
//! one ended, and stops them.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use boxer_net::rendezvous::{self, RendezvousAddr};
use boxer_net::{Identity, NodeEndpoint};
use boxer_proto::control::{
    ClusterInfo, CreateClusterRequest, DeleteClusterRequest, NodeState as ReportedState, PathReport, ServerMessage,
    StopMemberRequest, WatchRequest,
};
use boxer_proto::membership::{MemberChange, MembershipSnapshot};
use boxer_proto::{Fingerprint, FrameError, Member, NodeId};
use indicatif::{ProgressBar, ProgressStyle};
use rendezvous::RendezvousError;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::control::{self, ScaleAnswer, ScaleRequest};
use crate::lab::{LabNet, NatKind, NatOptions};
use crate::lambda::invoke::{LambdaOptions, LambdaProvider};
use crate::printer::Printer;
use crate::provider::{Join, LocalProvider, NodeExit, Provider};
use crate::spec::{Restart, Spec};
use crate::state::{self, NodeStatus, PathStatus, Status};

/// How long after a node's provider reports its end we wait for its exit
/// report (and last output lines) through the rendezvous before using the
/// provider's exit status.
const REPORT_WAIT: Duration = Duration::from_secs(2);

/// A node waiting for its `wait_for` targets gets a line once it has waited
/// this long: shorter waits are an ordinary start (a server taking a
/// moment to listen) and not worth a line each.
const WAIT_NOTE_FIRST: Duration = Duration::from_secs(3);

/// ... and another line this often while it keeps waiting: enough to see
/// it is still alive and for how long, few enough not to drown the output.
const WAIT_NOTE_EVERY: Duration = Duration::from_secs(10);

/// First wait before opening a lost watch session again. Short: the usual
/// loss is a restarting rendezvous that listens again within a second or
/// two, and a failed attempt costs a few handshake packets.
const RECONNECT_FIRST: Duration = Duration::from_millis(200);

/// Longest wait between reconnect attempts (the wait doubles from
/// [`RECONNECT_FIRST`] up to this). It bounds how long `boxer up` stays
/// blind once the rendezvous is back (this plus a handshake), and is the
/// runtimes' own cap, so the watch comes back about when the members have
/// rejoined. Longer would save nothing worth having: an attempt against an
/// unreachable rendezvous is a few packets (and itself takes the 5 s
/// handshake timeout).
const RECONNECT_CAP: Duration = Duration::from_secs(5);

/// Each wait is shortened by a random share up to this, so that several
/// `boxer up` watching one restarted rendezvous do not retry in step. Only
/// ever shorter: [`RECONNECT_CAP`] stays the longest wait.
const RECONNECT_JITTER: f64 = 0.2;

/// A reconnected watch session that ends sooner than this did not cure
/// anything: the next reconnect continues the back-off instead of starting
/// over at [`RECONNECT_FIRST`], so a rendezvous that accepts the watch and
/// drops it at once is neither hammered nor reported five times a second.
const RECONNECT_SETTLED: Duration = Duration::from_secs(10);

/// Network mode of the local provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NetMode {
    /// Every node on its own device behind its own NAT router, the
    /// rendezvous on a public router: a lab of network namespaces with no
    /// way out of the machine.
    Lab,
    /// All nodes in one fresh network namespace with only loopback.
    Shared,
    /// The caller's own network namespace.
    Host,
}

/// An external rendezvous to use instead of the embedded one.
#[derive(Debug, Clone)]
pub struct External {
    /// Address.
    pub addr: SocketAddr,
    /// Certificate fingerprint.
    pub fingerprint: Fingerprint,
    /// Its admin token.
    pub admin_token: String,
}

impl External {
    /// The rendezvous `--rendezvous`, `--fingerprint` and `--admin-token`
    /// name, when all three are given (clap makes them come together).
    pub fn from_flags(
        addr: Option<SocketAddr>,
        fingerprint: Option<Fingerprint>,
        admin_token: Option<&str>,
    ) -> Option<Self> {
        Some(Self { addr: addr?, fingerprint: fingerprint?, admin_token: admin_token?.to_owned() })
    }
}

impl ProviderChoice {
    /// The Lambda provider with `options`, checked: a rendezvous the
    /// functions can reach ([`check_lambda_rendezvous`]), a price that is
    /// a price.
    pub fn lambda(options: LambdaOptions, external: Option<&External>) -> anyhow::Result<Self> {
        check_lambda_rendezvous(external)?;
        if let Some(price) = options.price_per_gb_second {
            anyhow::ensure!(price.is_finite() && price >= 0.0, "--price-per-gb-second {price}: expected a price >= 0");
        }
        Ok(Self::Lambda(options))
    }
}

/// Checks that Lambda functions can reach `external`: there must be one
/// (functions cannot reach an embedded rendezvous on this machine), and
/// not on loopback; a private address gets a note (only a VPC reaches it).
pub fn check_lambda_rendezvous(external: Option<&External>) -> anyhow::Result<()> {
    let Some(ext) = external else {
        anyhow::bail!(
            "--provider lambda needs a rendezvous that Lambda functions can reach: run \
             `rendezvous-server` on a host with a public UDP port (docs/lambda.md) and pass \
             --rendezvous IP:PORT --fingerprint HEX --admin-token TOKEN (no embedded rendezvous: \
             functions cannot reach this machine)"
        );
    };
    let ip = ext.addr.ip();
    if ip.is_loopback() || ip.is_unspecified() {
        anyhow::bail!(
            "--rendezvous {}: Lambda functions cannot reach a loopback or unspecified address; give the rendezvous host's public IP",
            ext.addr
        );
    }
    if let std::net::IpAddr::V4(v4) = ip
        && v4.is_private()
    {
        eprintln!(
            "note: --rendezvous {} is a private address: only functions attached to that VPC can reach it",
            ext.addr
        );
    }
    Ok(())
}

/// Where the nodes run.
#[derive(Debug, Clone)]
pub enum ProviderChoice {
    /// Local processes (`--net` decides their network).
    Local,
    /// Invocations of the cluster's Lambda function.
    Lambda(LambdaOptions),
}

/// Options of `boxer up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Network mode of local nodes (the namespace is entered by `main`
    /// before this runs).
    pub net: NetMode,
    /// Use this rendezvous instead of an embedded one.
    pub external: Option<External>,
    /// NAT of every node in `--net lab`.
    pub nat: NatKind,
    /// Where the nodes run.
    pub provider: ProviderChoice,
}

/// Runs a cluster to completion; returns the exit code for the CLI.
pub async fn up(spec: Spec, options: UpOptions) -> anyhow::Result<i32> {
    let dir = state::cluster_dir(&spec.name);
    if let Some(pid) = state::running_pid(&dir) {
        anyhow::bail!(
            "cluster {:?} is already up (boxer up pid {pid}); stop it with `boxer down {}`",
            spec.name,
            spec.name
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating state directory {}", dir.display()))?;
    let _ = std::fs::remove_dir_all(dir.join("nodes"));
    std::fs::write(dir.join("up.pid"), std::process::id().to_string())
        .with_context(|| format!("writing {}", dir.join("up.pid").display()))?;
    let result = start(&spec, &options, &dir).await;
    let _ = std::fs::remove_file(dir.join("up.pid"));
    let _ = std::fs::remove_file(dir.join("join.json"));
    result
}

/// Says what local nodes will share with the host: all of it when this host
/// cannot isolate them (an error if a service needs `private` directories),
/// and `/tmp` content for a service whose working directory is a scratch
/// directory itself.
fn check_isolation(spec: &Spec, can: Result<(), &str>) -> anyhow::Result<()> {
    let isolated: Vec<&crate::spec::Service> = spec.services.iter().filter(|s| s.isolate).collect();
    if let Err(why) = can {
        if let Some(s) = isolated.iter().find(|s| !s.private.is_empty()) {
            anyhow::bail!(
                "services.{}.private needs the node's own mount namespace, which this host cannot create ({why}); \
                 run as root, use --net lab or --net shared, or remove `private`",
                s.name
            );
        }
        if !isolated.is_empty() {
            eprintln!(
                "note: nodes share this machine's /tmp, process table and hostname: it cannot give them their own ({why})"
            );
        }
        return Ok(());
    }
    for s in isolated {
        let workdir = s.workdir.canonicalize().unwrap_or_else(|_| s.workdir.clone());
        if boxer_runtime::machine::SCRATCH_DIRS.iter().any(|d| workdir == std::path::Path::new(d)) {
            eprintln!(
                "note: services.{} runs in {}, which each node has its own empty copy of: relative paths still \
                 reach the files there, absolute ones do not (move the spec into a directory of its own)",
                s.name,
                workdir.display()
            );
        }
    }
    Ok(())
}

/// Builds the network and the rendezvous, then runs the cluster on the
/// chosen provider.
async fn start(spec: &Spec, options: &UpOptions, dir: &Path) -> anyhow::Result<i32> {
    let started = Instant::now();
    let lab = match (&options.provider, options.net) {
        (ProviderChoice::Local, NetMode::Lab) => {
            anyhow::ensure!(
                options.external.is_none(),
                "--rendezvous cannot be used with --net lab: the lab has no way out of its namespaces (use --net shared or --net host)"
            );
            Some(Arc::new(LabNet::new().await?))
        }
        _ => {
            for s in spec.services.iter().filter(|s| s.nat.is_some()) {
                eprintln!("note: services.{}.nat is ignored without --net lab", s.name);
            }
            None
        }
    };
    // The provider before the cluster: a missing function or credentials
    // must not leave a cluster behind on the rendezvous.
    match &options.provider {
        ProviderChoice::Local => {
            let (provider, exits) = LocalProvider::new(dir.to_owned(), lab.clone().map(|l| (l, options.nat)))?;
            check_isolation(spec, provider.can_isolate())?;
            let rendezvous = ClusterRendezvous::start(spec, options, dir, lab.as_deref()).await?;
            run(spec, options, dir, started, rendezvous, lab.as_deref(), provider, exits).await
        }
        ProviderChoice::Lambda(lambda) => {
            let (provider, exits) = LambdaProvider::new(lambda.clone(), spec, dir).await?;
            if let Some(before) = spec.lambda.replace_before_deadline {
                let timeout = provider.function_timeout();
                anyhow::ensure!(
                    u64::from(before) < timeout.as_secs(),
                    "lambda.replace_before_deadline in {} is {before} s, but the function's timeout is {} s: \
                     every node would be replaced at once (lower it, or deploy with a longer timeout)",
                    spec.path.display(),
                    timeout.as_secs()
                );
            }
            let rendezvous = ClusterRendezvous::start(spec, options, dir, None).await?;
            run(spec, options, dir, started, rendezvous, None, provider, exits).await
        }
    }
}

/// The cluster's rendezvous as `boxer up` uses it: embedded or external,
/// with the cluster created and a client endpoint for admin requests.
pub(crate) struct ClusterRendezvous {
    addr: RendezvousAddr,
    admin_token: String,
    embedded: Option<::rendezvous::Rendezvous>,
    endpoint: NodeEndpoint,
    info: ClusterInfo,
    cluster: String,
}

impl ClusterRendezvous {
    /// Starts the embedded rendezvous (on the lab's public router in the
    /// lab) or uses the external one, and creates the cluster.
    pub(crate) async fn start(
        spec: &Spec,
        options: &UpOptions,
        dir: &Path,
        lab: Option<&LabNet>,
    ) -> anyhow::Result<Self> {
        let (addr, admin_token, embedded) = match &options.external {
            Some(ext) => {
                (RendezvousAddr { addr: ext.addr, fingerprint: ext.fingerprint }, ext.admin_token.clone(), None)
            }
            None => {
                let token = ::rendezvous::registry::random_token();
                let server = ::rendezvous::Rendezvous::bind(::rendezvous::Config {
                    listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                    state_dir: dir.join("rendezvous"),
                    admin_token: Some(token.clone()),
                    // In the lab the rendezvous lives on the public router's LAN.
                    socket: lab.map(|l| LabNet::udp_socket(l.rendezvous(), 0)).transpose()?,
                    // Its clusters end with this process: nothing to take back.
                    persist: false,
                    limits: ::rendezvous::limits::Limits::default(),
                })
                .with_context(|| format!("starting the embedded rendezvous in {}", dir.join("rendezvous").display()))?;
                let mut listen = server.local_addr()?;
                if let Some(lab) = lab {
                    listen.set_ip(lab.rendezvous_ip()?.into());
                }
                let addr = RendezvousAddr { addr: listen, fingerprint: server.fingerprint() };
                tokio::spawn(server.clone().run());
                (addr, token, Some(server))
            }
        };
        let bind_ip = match (&options.external, lab) {
            (_, Some(_)) => None,
            // An external rendezvous elsewhere is reached through any interface.
            (Some(ext), None) if !ext.addr.ip().is_loopback() => Some(Ipv4Addr::UNSPECIFIED),
            _ => Some(Ipv4Addr::LOCALHOST),
        };
        let endpoint = match (lab, bind_ip) {
            (Some(lab), _) => {
                NodeEndpoint::from_socket(LabNet::udp_socket(lab.rendezvous(), 0)?, Identity::generate()?)?
            }
            (None, ip) => {
                NodeEndpoint::bind(SocketAddr::from((ip.unwrap_or(Ipv4Addr::LOCALHOST), 0)), Identity::generate()?)?
            }
        };
        let info = rendezvous::create_cluster(
            &endpoint,
            addr,
            CreateClusterRequest {
                admin_token: admin_token.clone(),
                name: spec.name.clone(),
                network: spec.network,
                join_token: None,
            },
        )
        .await
        .with_context(|| format!("creating cluster {:?} on rendezvous {}", spec.name, addr.addr))?;
        Ok(Self { addr, admin_token, embedded, endpoint, info, cluster: spec.name.clone() })
    }

    /// Subscribes to membership and output; a task reads the session
    /// (frame reads are not cancel-safe) and opens it again when it is lost
    /// ([`keep_watching`]), the caller selects on a channel. A first watch
    /// that fails is the end: the cluster was created a moment ago, so the
    /// rendezvous was there.
    pub(crate) async fn watch(&self) -> anyhow::Result<(MembershipSnapshot, mpsc::Receiver<FeedItem>)> {
        let watcher = Watcher {
            endpoint: self.endpoint.clone(),
            addr: self.addr,
            request: WatchRequest { cluster: self.cluster.clone(), token: self.admin_token.clone(), logs: true },
        };
        let (snapshot, session) = watcher.open().await.context("subscribing to the cluster's membership and output")?;
        Ok((snapshot, spawn_feed_reader(session, watcher)))
    }

    /// How nodes join.
    pub(crate) fn join(&self) -> Join {
        Join {
            rendezvous: self.addr.addr,
            fingerprint: self.addr.fingerprint.to_string(),
            cluster: self.cluster.clone(),
            token: self.info.join_token.clone(),
        }
    }

    /// Deletes the cluster: every node still joined is disconnected.
    async fn delete_cluster(&self) {
        let request = DeleteClusterRequest { admin_token: self.admin_token.clone(), name: self.cluster.clone() };
        if let Err(e) = rendezvous::delete_cluster(&self.endpoint, self.addr, request).await {
            tracing::debug!("deleting cluster {}: {e}", self.cluster);
        }
    }

    /// Tells member `node` to stop (its program gets SIGTERM and its grace,
    /// then it reports its exit and leaves): `boxer scale` down where no
    /// process can be signalled.
    async fn stop_member(&self, node: &str) -> anyhow::Result<()> {
        let request = StopMemberRequest {
            admin_token: self.admin_token.clone(),
            cluster: self.cluster.clone(),
            node: node.to_owned(),
        };
        tokio::time::timeout(STOP_REQUEST_TIMEOUT, rendezvous::stop_member(&self.endpoint, self.addr, request))
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {STOP_REQUEST_TIMEOUT:?}"))?
            .with_context(|| format!("asking rendezvous {} to stop {node}", self.addr.addr))
    }

    /// Deletes the cluster and stops an embedded rendezvous.
    pub(crate) async fn close(&self) {
        self.delete_cluster().await;
        if let Some(server) = &self.embedded {
            server.close();
        }
    }
}

/// A node's wait for a `wait_for` target, as its runtime reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Waiting {
    target: String,
    port: u16,
    /// When it started waiting (its own count, moved to our clock).
    since: Instant,
    /// When to show it next.
    next_note: Instant,
}

impl Waiting {
    /// `db-0:5432`.
    fn what(&self) -> String {
        format!("{}:{}", self.target, self.port)
    }
}

/// One node as `boxer up` sees it.
struct NodeState {
    member: Option<Member>,
    /// Waiting for a `wait_for` target: its program has not started.
    waiting: Option<Waiting>,
    exit: Option<i32>,
    /// The provider's report of its end, and when it came.
    provider_exit: Option<(NodeExit, Instant)>,
    main: bool,
    paths: Vec<PathReport>,
    note: Option<String>,
    /// The provider lost track of it after it joined: leaving the cluster
    /// without an exit report then ends it.
    left_unreported: bool,
    /// Its service's restart policy, and how often it was replaced.
    restart: Restart,
    restarts: u32,
    /// The provider reported this instance's end (the process is gone,
    /// the invocation returned): a replacement may take its name.
    provider_ended: bool,
    /// When its exit was recorded.
    exited_at: Option<Instant>,
    /// Stopped by `boxer scale` down: its end is neither a failure nor a
    /// reason to restart, and it leaves the view once it ended.
    retiring: bool,
    /// When the rendezvous was last asked to stop it (providers that stop
    /// nodes through the rendezvous).
    stop_asked: Option<Instant>,
    /// When its current instance was launched, and how long that one took
    /// to join (a replacement is given as long to boot).
    launched_at: Instant,
    start_time: Option<Duration>,
    /// When its current instance joined.
    joined_at: Option<Instant>,
    /// Its replacement before the deadline, while under way.
    handover: Option<Handover>,
    /// The provider's number of its current instance once a takeover made
    /// it ([`NodeExit::instance`]): the end of any other instance is an
    /// earlier one's, already replaced.
    current_instance: Option<u64>,
    /// How often it was replaced before its deadline.
    handovers: u32,
    /// Its replacement before the deadline could not be started: it is
    /// replaced after its deadline instead (its `restart`).
    no_handover: bool,
}

/// A node being replaced before its deadline (`lambda.replace_before_deadline`):
/// its successor was launched while it still serves. The successor boots,
/// waits for the name; the old instance is told to stop; the successor
/// joins the moment it left, with the same name and address.
#[derive(Debug, Clone)]
struct Handover {
    /// The successor's [`NodeExit::instance`].
    successor: u64,
    /// When the successor was launched.
    launched: Instant,
    /// When to tell the old instance to stop: once the successor has had
    /// as long to boot as the node's last start took.
    stop_old_at: Instant,
    /// The old instance's exit code, once it reported one.
    old_exit: Option<i32>,
    /// The old instance's invocation returned.
    old_returned: bool,
    /// The successor joined in the old one's place.
    successor_joined: bool,
}

impl NodeState {
    /// A node of `service` that has not started yet.
    fn new(service: &crate::spec::Service, any_main: bool) -> Self {
        Self {
            member: None,
            waiting: None,
            exit: None,
            provider_exit: None,
            main: service.main || !any_main,
            paths: vec![],
            note: None,
            left_unreported: false,
            restart: service.restart,
            restarts: 0,
            provider_ended: false,
            exited_at: None,
            retiring: false,
            stop_asked: None,
            launched_at: Instant::now(),
            start_time: None,
            joined_at: None,
            handover: None,
            current_instance: None,
            handovers: 0,
            no_handover: false,
        }
    }

    /// Whether its recorded exit will be followed by a replacement.
    fn restart_pending(&self) -> bool {
        !self.retiring && self.exit.is_some_and(|code| self.restart.applies(code)) && self.restarts < MAX_RESTARTS
    }
}

/// How long the rendezvous may take to answer a stop request (it answers
/// at once; more means it is unreachable, and the next try comes later).
const STOP_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Time between asks to stop a retiring node that has not ended: the first
/// ask may have failed (the node was between connections to the
/// rendezvous), and asking again is harmless.
const STOP_RETRY: Duration = Duration::from_secs(5);

/// How long a replacement before the deadline gets to boot before the old
/// instance is told to stop, when the node's own start was not measured;
/// and the bounds on a measured one. The old instance's stop takes its
/// grace anyway, so an overestimate costs nothing but overlap, and a
/// successor that is not ready yet only widens the gap by its remaining
/// boot.
const HANDOVER_BOOT_DEFAULT: Duration = Duration::from_secs(2);
const HANDOVER_BOOT_MIN: Duration = Duration::from_millis(200);
const HANDOVER_BOOT_MAX: Duration = Duration::from_secs(10);

/// Most replacements of one node in one run: a node that keeps failing
/// this often will not start working by itself.
pub const MAX_RESTARTS: u32 = 10;

/// Time between a node's end and its replacement: room for its departure
/// to reach every peer, and no tight loop for a program failing at once.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// The cluster's nodes and what their ends mean for the run.
struct ClusterView {
    nodes: BTreeMap<String, NodeState>,
    /// Services some other service waits for, with the services that wait:
    /// if one of their nodes fails, the waiting nodes would never start, so
    /// the cluster fails.
    depended_on: BTreeMap<String, Vec<String>>,
    /// The first main (or depended-on) node that failed, and its code.
    failing: Option<(String, i32)>,
    /// Where to keep the nodes' output when the rendezvous is not ours (an
    /// embedded rendezvous keeps it itself), so `boxer logs` works alike.
    keep_output: Option<PathBuf>,
    /// Members the spec does not have: hybrid nodes started by hand
    /// (`boxer join-command`), `boxer port-forward`. Shown by `boxer
    /// status`; they never decide when the cluster ends.
    others: BTreeMap<String, OtherMember>,
    /// Whether the spec has a main service (else every node is main).
    any_main: bool,
}

/// The note `boxer status` shows on a member the spec does not have.
pub const OTHER_MEMBER_NOTE: &str = "not in the spec: joined by hand";

/// A member that is not one of the spec's nodes.
#[derive(Debug, Clone)]
struct OtherMember {
    member: Member,
    exit: Option<i32>,
    left: bool,
}

impl ClusterView {
    fn new(spec: &Spec) -> Self {
        let any_main = spec.services.iter().any(|s| s.main);
        let nodes = spec
            .nodes()
            .map(|(s, i)| {
                let state = NodeState::new(s, any_main);
                (format!("{}-{i}", s.name), state)
            })
            .collect();
        let mut depended_on: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for s in &spec.services {
            for (target, _) in &s.wait_for {
                let service = match boxer_proto::names::parse(target, &spec.name) {
                    Some(boxer_proto::names::NameQuery::Replica { service, .. }) => service,
                    Some(boxer_proto::names::NameQuery::Service(service)) => service,
                    _ => continue,
                };
                let waiters = depended_on.entry(service).or_default();
                if !waiters.contains(&s.name) {
                    waiters.push(s.name.clone());
                }
            }
        }
        Self { nodes, depended_on, failing: None, keep_output: None, others: BTreeMap::new(), any_main }
    }

    fn names(&self) -> Vec<String> {
        self.nodes.keys().cloned().collect()
    }

    /// Nodes that joined or already ended.
    fn settled(&self) -> usize {
        self.nodes.values().filter(|n| n.member.is_some() || n.exit.is_some()).count()
    }

    fn joined(&self) -> usize {
        self.nodes.values().filter(|n| n.member.is_some()).count()
    }

    fn mains_done(&self) -> bool {
        self.nodes.values().filter(|n| n.main).all(|n| n.exit.is_some() && !n.restart_pending())
    }

    /// Nodes whose end is final on both sides (exit recorded, provider
    /// done) for [`RESTART_DELAY`] and whose policy replaces them.
    fn due_restarts(&self) -> Vec<(String, i32)> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.restart_pending() && n.provider_ended)
            .filter(|(_, n)| n.exited_at.is_some_and(|at| at.elapsed() >= RESTART_DELAY))
            .map(|(name, n)| (name.clone(), n.exit.unwrap_or(1)))
            .collect()
    }

    /// Adds node `name` of `service` (`boxer scale` up).
    fn add_node(&mut self, name: String, service: &crate::spec::Service) {
        self.nodes.insert(name, NodeState::new(service, self.any_main));
    }

    /// Marks node `name` as stopped by `boxer scale` down.
    fn retire(&mut self, name: &str) {
        if let Some(n) = self.nodes.get_mut(name) {
            n.retiring = true;
        }
    }

    /// Nodes the rendezvous must tell to stop now (marked as asked at
    /// `now`), unless asked within [`STOP_RETRY`]: retiring nodes that are
    /// members and have not ended (a node scaled down before it joined is
    /// asked once it joins), and old instances being replaced whose
    /// successor has had its time to boot.
    fn stops_due(&mut self, now: Instant) -> Vec<String> {
        let mut due = Vec::new();
        for (name, n) in &mut self.nodes {
            let asked_lately = n.stop_asked.is_some_and(|at| now.saturating_duration_since(at) < STOP_RETRY);
            let retiring = n.retiring && n.member.is_some() && n.exit.is_none() && !n.provider_ended;
            let replaced = n
                .handover
                .as_ref()
                .is_some_and(|h| now >= h.stop_old_at && h.old_exit.is_none() && !h.successor_joined);
            if (retiring || replaced) && !asked_lately {
                n.stop_asked = Some(now);
                due.push(name.clone());
            }
        }
        due
    }

    /// Drops retired nodes that ended on both sides; their names.
    fn drop_retired(&mut self) -> Vec<String> {
        let gone: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.retiring && n.exit.is_some() && n.provider_ended)
            .map(|(name, _)| name.clone())
            .collect();
        for name in &gone {
            self.nodes.remove(name);
        }
        gone
    }

    /// Forgets node `node`'s ended instance before its replacement starts.
    fn reset_for_restart(&mut self, node: &str) -> u32 {
        let Some(n) = self.nodes.get_mut(node) else { return 0 };
        n.member = None;
        n.waiting = None;
        n.exit = None;
        n.provider_exit = None;
        n.provider_ended = false;
        n.exited_at = None;
        n.paths.clear();
        n.note = None;
        n.left_unreported = false;
        n.launched_at = Instant::now();
        n.joined_at = None;
        n.handover = None;
        n.current_instance = None;
        n.stop_asked = None;
        n.restarts += 1;
        n.restarts
    }

    /// Nodes due for replacement before their deadline: running, joined
    /// `lifetime - before` ago or more, of a service with `restart`, not
    /// being replaced or stopped already.
    fn handovers_due(&self, lifetime: Duration, before: Duration, now: Instant) -> Vec<String> {
        let Some(run_for) = lifetime.checked_sub(before) else { return vec![] };
        self.nodes
            .iter()
            .filter(|(_, n)| n.restart != Restart::Never && !n.retiring && !n.no_handover)
            .filter(|(_, n)| n.exit.is_none() && n.handover.is_none())
            .filter(|(_, n)| n.member.is_some() && n.joined_at.is_some_and(|at| now >= at + run_for))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Node `name`'s successor (the provider's instance `successor`) was
    /// launched at `now`.
    fn handover_started(&mut self, name: &str, successor: u64, now: Instant) {
        let Some(n) = self.nodes.get_mut(name) else { return };
        let boot = n.start_time.unwrap_or(HANDOVER_BOOT_DEFAULT).clamp(HANDOVER_BOOT_MIN, HANDOVER_BOOT_MAX);
        n.handover = Some(Handover {
            successor,
            launched: now,
            stop_old_at: now + boot,
            old_exit: None,
            old_returned: false,
            successor_joined: false,
        });
        n.stop_asked = None;
    }

    /// Node `name`'s successor could not be launched: no more tries.
    fn handover_failed(&mut self, name: &str) {
        if let Some(n) = self.nodes.get_mut(name) {
            n.no_handover = true;
        }
    }

    /// Ends node `name`'s handover once the old instance is gone and the
    /// successor joined; the successor is then the node.
    fn finish_handover(&mut self, name: &str, printer: &Printer, progress: &ProgressBar) {
        let Some(n) = self.nodes.get_mut(name) else { return };
        let Some(h) = &n.handover else { return };
        if !(h.successor_joined && h.old_returned) {
            return;
        }
        // What peers saw: from the old instance's stop to the new one's join.
        let gap = n.stop_asked.zip(n.joined_at).map(|(asked, joined)| joined.saturating_duration_since(asked));
        n.current_instance = Some(h.successor);
        n.handover = None;
        n.handovers += 1;
        n.stop_asked = None;
        let ip = n.member.as_ref().map(|m| m.overlay_ip.to_string()).unwrap_or_default();
        let line = format!(
            "replaced before its deadline (replacement {}): the new instance serves at {ip}{}",
            n.handovers,
            gap.map(|g| format!(", {:.2} s after the old one was told to stop", g.as_secs_f64())).unwrap_or_default()
        );
        progress.suspend(|| printer.note(name, &line));
    }

    /// A failed node that other services wait for.
    fn failed_dependency(&self) -> Option<(String, i32)> {
        self.nodes
            .iter()
            .find(|(name, n)| {
                n.exit.is_some_and(|c| c != 0)
                    && !n.retiring
                    && !n.restart_pending()
                    && name.rsplit_once('-').is_some_and(|(service, _)| self.depended_on.contains_key(service))
            })
            .map(|(name, n)| (name.clone(), n.exit.unwrap_or(1)))
    }

    /// The services that wait for `node`'s service, if any.
    fn waiters_of(&self, node: &str) -> Option<&[String]> {
        let (service, _) = node.rsplit_once('-')?;
        self.depended_on.get(service).map(Vec::as_slice)
    }

    /// Why the run failed, for its last line: which node, how, and why its
    /// failure ends the cluster (a main node, or one others wait for).
    fn failure_summary(&self) -> Option<String> {
        let (node, code) = self.failing.as_ref()?;
        let main = self.nodes.get(node).is_some_and(|n| n.main);
        Some(match (main, self.waiters_of(node)) {
            (true, _) | (false, None) => format!("node {node} failed with exit code {code}"),
            (false, Some(waiters)) => {
                format!("node {node} failed with exit code {code} (service(s) {} wait for it)", waiters.join(", "))
            }
        })
    }

    /// Records a node's reported state; `true` when the status changed.
    fn set_state(&mut self, node: &str, state: &ReportedState, printer: &Printer, progress: &ProgressBar) -> bool {
        let Some(n) = self.nodes.get_mut(node) else { return false };
        match state {
            ReportedState::Waiting { target, port, waited_secs } => {
                let now = Instant::now();
                let since = now.checked_sub(Duration::from_secs(u64::from(*waited_secs))).unwrap_or(now);
                let next_note = (since + WAIT_NOTE_FIRST).max(now);
                n.waiting = Some(Waiting { target: target.clone(), port: *port, since, next_note });
            }
            ReportedState::Running => n.waiting = None,
            ReportedState::GaveUp { reason } => {
                n.waiting = None;
                n.note = Some(reason.clone());
                progress.suspend(|| printer.note(node, reason));
            }
        }
        true
    }

    /// Shows the nodes that have been waiting for a while:
    /// `web-1 | waiting for db-0:5432 (12 s)`.
    fn note_waits(&mut self, printer: &Printer, progress: &ProgressBar) {
        let now = Instant::now();
        for (name, n) in &mut self.nodes {
            if n.exit.is_some() {
                continue;
            }
            if let Some(w) = &mut n.waiting
                && now >= w.next_note
            {
                let line = format!("waiting for {} ({} s)", w.what(), now.duration_since(w.since).as_secs());
                progress.suspend(|| printer.note(name, &line));
                while w.next_note <= now {
                    w.next_note += WAIT_NOTE_EVERY;
                }
            }
        }
    }

    /// Nodes still waiting for a `wait_for` target when the cluster
    /// stopped: they never ran their program. Each gets a note (kept in the
    /// status) and a line for the stop summary.
    fn never_started(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        for (name, n) in &mut self.nodes {
            if let Some(w) = n.waiting.take() {
                let why = format!(
                    "never started its program: still waiting for {} after {} s",
                    w.what(),
                    w.since.elapsed().as_secs()
                );
                lines.push(format!("{name} {why}"));
                n.note = Some(why);
            }
        }
        lines
    }

    fn record_exit(&mut self, node: &str, code: i32) {
        if let Some(n) = self.nodes.get_mut(node)
            && n.exit.is_none()
        {
            n.exit = Some(code);
            n.exited_at = Some(Instant::now());
            if n.main && code != 0 && !n.retiring && !n.restart_pending() && self.failing.is_none() {
                self.failing = Some((node.to_owned(), code));
            }
        }
    }

    /// Applies one message from the rendezvous; `true` when the status
    /// file should be rewritten.
    fn apply(&mut self, msg: &ServerMessage, printer: &Printer, progress: &ProgressBar) -> bool {
        match msg {
            ServerMessage::Paths { node, paths } => {
                if let Some(n) = self.nodes.get_mut(node) {
                    n.paths = paths.clone();
                    return true;
                }
            }
            ServerMessage::Event(event) => match &event.change {
                MemberChange::Joined(m) => {
                    let name = m.replica_name();
                    if let Some(n) = self.nodes.get_mut(&name) {
                        let now = Instant::now();
                        if let Some(h) = &mut n.handover {
                            // The old instance is a member until it left:
                            // a join under its name is the successor's.
                            h.successor_joined = true;
                            n.start_time = Some(now.saturating_duration_since(h.launched));
                            n.joined_at = Some(now);
                        } else if n.joined_at.is_none() {
                            n.start_time = Some(now.saturating_duration_since(n.launched_at));
                            n.joined_at = Some(now);
                        }
                        n.member = Some(m.clone());
                        self.finish_handover(&name, printer, progress);
                    } else {
                        self.others
                            .insert(m.replica_name(), OtherMember { member: m.clone(), exit: None, left: false });
                    }
                    return true;
                }
                MemberChange::Left { node_id } => {
                    let other = self.others.values_mut().find(|o| o.member.node_id == *node_id && !o.left);
                    if let Some(o) = other {
                        o.left = true;
                        return true;
                    }
                    return self.member_left(*node_id, printer, progress);
                }
                _ => {}
            },
            // Sent again to a watcher that fell behind: events may be missing.
            ServerMessage::Snapshot(s) => {
                self.resync(s, printer, progress);
                return true;
            }
            ServerMessage::Logs { node, lines } => {
                progress.suspend(|| {
                    for l in lines {
                        printer.line(node, &l.text);
                    }
                });
                if let Some(dir) = &self.keep_output
                    && (self.nodes.contains_key(node) || self.others.contains_key(node))
                {
                    keep_lines(&dir.join(format!("{node}.log")), lines.iter().map(|l| l.text.as_str()));
                }
            }
            ServerMessage::Exited { node, status } if self.others.contains_key(node) => {
                if let Some(o) = self.others.get_mut(node) {
                    o.exit = Some(status.code);
                }
                return true;
            }
            ServerMessage::Exited { node, status }
                if self
                    .nodes
                    .get(node)
                    .and_then(|n| n.handover.as_ref())
                    .is_some_and(|h| h.old_exit.is_none() && !h.successor_joined) =>
            {
                // The instance being replaced: its end is the handover's
                // middle, not the node's.
                if let Some(h) = self.nodes.get_mut(node).and_then(|n| n.handover.as_mut()) {
                    h.old_exit = Some(status.code);
                }
                let line = format!("the replaced instance exited with code {}", status.code);
                progress.suspend(|| printer.note(node, &line));
                return true;
            }
            ServerMessage::Exited { node, status } if self.nodes.get(node).is_some_and(|n| n.exit.is_none()) => {
                progress.suspend(|| printer.note(node, &format!("exited with code {}", status.code)));
                self.record_exit(node, status.code);
                return true;
            }
            ServerMessage::LogsDropped { batches } => {
                progress.suspend(|| eprintln!("(output fell behind: {batches} batches not shown; see boxer logs)"))
            }
            ServerMessage::State { node, state } if self.nodes.get(node).is_some_and(|n| n.exit.is_none()) => {
                return self.set_state(node, state, printer, progress);
            }
            _ => {}
        }
        false
    }

    /// Member `node_id` left the cluster. A node the provider lost track of
    /// ([`NodeState::left_unreported`]) ends with it: no exit report will
    /// come any more. For any other node this changes nothing: its exit
    /// report, or else its provider's, says how it ended. `true` when the
    /// status changed.
    fn member_left(&mut self, node_id: NodeId, printer: &Printer, progress: &ProgressBar) -> bool {
        let gone = self.nodes.iter().find(|(_, n)| {
            n.left_unreported && n.exit.is_none() && n.member.as_ref().is_some_and(|m| m.node_id == node_id)
        });
        let Some((name, _)) = gone else { return false };
        let name = name.clone();
        progress.suspend(|| printer.note(&name, "left the cluster without an exit report"));
        self.record_exit(&name, 1);
        true
    }

    /// Takes `snapshot` as the membership now, after events were missed (a
    /// new watch session after a lost one, or a snapshot the rendezvous sent
    /// again to a watcher that fell behind). Applies what the missed events
    /// would have: members no longer there left ([`ClusterView::member_left`];
    /// first, while their nodes still hold them), then members new to us
    /// joined. A member still there under the same id is the same node: it
    /// only gets its current addresses and ports, and nothing is said about
    /// it. Returns the difference, for a line.
    fn resync(&mut self, snapshot: &MembershipSnapshot, printer: &Printer, progress: &ProgressBar) -> MembershipDiff {
        let known: BTreeMap<String, Option<NodeId>> =
            self.nodes.iter().map(|(name, n)| (name.clone(), n.member.as_ref().map(|m| m.node_id))).collect();
        let diff = diff_membership(&known, &snapshot.members);
        for (_, id) in &diff.left {
            self.member_left(*id, printer, progress);
        }
        for m in diff.joined.iter().chain(&diff.kept) {
            if let Some(n) = self.nodes.get_mut(&m.replica_name()) {
                n.member = Some(m.clone());
            }
        }
        for o in self.others.values_mut() {
            o.left |= !snapshot.members.iter().any(|m| m.node_id == o.member.node_id);
        }
        for m in snapshot.members.iter().filter(|m| !self.nodes.contains_key(&m.replica_name())) {
            self.others.insert(m.replica_name(), OtherMember { member: m.clone(), exit: None, left: false });
        }
        diff
    }

    /// The provider says a node ended: a node that failed before its
    /// program ran is settled at once, others wait for the rendezvous' exit
    /// report for [`REPORT_WAIT`].
    fn provider_exit(&mut self, exit: NodeExit, printer: &Printer, progress: &ProgressBar) {
        if self.takeover_exit(&exit, printer, progress) {
            return;
        }
        if !exit.notes.is_empty() {
            progress.suspend(|| exit.notes.iter().for_each(|l| printer.note(&exit.node, l)));
        }
        let Some(n) = self.nodes.get_mut(&exit.node) else { return };
        n.provider_ended = true;
        if exit.failed_to_start && n.exit.is_none() && n.member.is_some() {
            // The provider lost track of a node that did join (e.g. the
            // invoke's connection broke): its exit report or its leaving
            // will come through the rendezvous.
            progress.suspend(|| {
                exit.detail.iter().for_each(|l| printer.note(&exit.node, l));
                printer.note(&exit.node, "the node joined; following it through the rendezvous");
            });
            n.left_unreported = true;
        } else if exit.failed_to_start && n.exit.is_none() {
            n.note = exit.detail.first().cloned();
            let (node, code) = (exit.node.clone(), exit.code);
            progress.suspend(|| exit.detail.iter().for_each(|l| printer.note(&node, l)));
            self.record_exit(&node, code);
        } else {
            n.provider_exit = Some((exit, Instant::now()));
        }
    }

    /// The provider's report of an instance's end while the node is being
    /// replaced, or of an instance already replaced; `true` when that is
    /// what `exit` is (and it was dealt with here).
    fn takeover_exit(&mut self, exit: &NodeExit, printer: &Printer, progress: &ProgressBar) -> bool {
        let Some(n) = self.nodes.get_mut(&exit.node) else { return false };
        let Some(h) = &mut n.handover else {
            // Ends of instances that a takeover made obsolete.
            return n.current_instance.is_some_and(|current| exit.instance != current);
        };
        if exit.instance != h.successor {
            // The old instance's invocation returned.
            h.old_returned = true;
            h.old_exit.get_or_insert(exit.code);
            self.finish_handover(&exit.node, printer, progress);
            return true;
        }
        // The successor ended before the handover was done.
        let h = n.handover.take().expect("matched above");
        progress.suspend(|| {
            exit.detail.iter().for_each(|l| printer.note(&exit.node, l));
            printer.note(&exit.node, "its replacement ended before taking over");
        });
        match h.old_exit {
            // The old instance keeps serving until its deadline; its end
            // is handled as usual then (restart).
            None => true,
            // Both are gone: the node ended as the old instance did.
            Some(code) => {
                n.provider_ended = h.old_returned;
                n.current_instance = Some(h.successor);
                self.record_exit(&exit.node, code);
                true
            }
        }
    }

    /// Nodes whose provider reported an end but whose rendezvous exit
    /// report never came (a crashed runtime): settle them with the
    /// provider's code and show why.
    fn settle_unreported(&mut self, printer: &Printer, progress: &ProgressBar) {
        let overdue: Vec<NodeExit> = self
            .nodes
            .values()
            .filter(|n| n.exit.is_none())
            .filter_map(|n| n.provider_exit.as_ref())
            .filter(|(_, at)| at.elapsed() > REPORT_WAIT)
            .map(|(exit, _)| exit.clone())
            .collect();
        for exit in overdue {
            progress.suspend(|| exit.detail.iter().for_each(|l| printer.note(&exit.node, l)));
            if let Some(n) = self.nodes.get_mut(&exit.node) {
                n.note = exit.detail.first().cloned();
            }
            self.record_exit(&exit.node, exit.code);
        }
    }

    /// The nodes as `status.json` shows them.
    fn status(&self, output_dir: &Path, provider: &impl Provider) -> Vec<NodeStatus> {
        self.nodes
            .iter()
            .map(|(name, n)| NodeStatus {
                name: name.clone(),
                id: n.member.as_ref().map(|m| m.node_id.to_string()),
                overlay_ip: n.member.as_ref().map(|m| m.overlay_ip.to_string()),
                state: match (n.exit, &n.member, &n.waiting) {
                    (Some(code), _, _) => format!("exited {code}"),
                    (None, Some(_), Some(w)) => format!("waiting for {}", w.what()),
                    (None, Some(_), None) => "running".into(),
                    (None, None, _) => "starting".into(),
                },
                output: output_dir.join(format!("{name}.log")).display().to_string(),
                runtime_log: provider.runtime_log(name),
                paths: n
                    .paths
                    .iter()
                    .map(|p| PathStatus {
                        peer: self
                            .nodes
                            .iter()
                            .find(|(_, other)| other.member.as_ref().is_some_and(|m| m.node_id == p.peer))
                            .map_or_else(|| p.peer.to_string(), |(name, _)| name.clone()),
                        path: p.kind.to_string(),
                        rtt_us: p.rtt_us,
                    })
                    .collect(),
                note: n.note.clone().or_else(|| match (&n.handover, n.handovers) {
                    (Some(_), _) => Some("being replaced before its deadline".into()),
                    (None, 0) => None,
                    (None, k) => Some(format!("replaced {k} time(s) before its deadline")),
                }),
            })
            .chain(self.others.iter().map(|(name, o)| NodeStatus {
                name: name.clone(),
                id: Some(o.member.node_id.to_string()),
                overlay_ip: Some(o.member.overlay_ip.to_string()),
                state: match (o.exit, o.left) {
                    (Some(code), _) => format!("exited {code}"),
                    (None, true) => "left".into(),
                    (None, false) => "running".into(),
                },
                output: output_dir.join(format!("{name}.log")).display().to_string(),
                runtime_log: "on its own host (not started by boxer up)".into(),
                paths: vec![],
                note: Some(OTHER_MEMBER_NOTE.into()),
            }))
            .collect()
    }
}

/// Runs the cluster on `provider` until its main services end, then tears
/// it down.
#[allow(clippy::too_many_arguments)]
async fn run<P: Provider>(
    spec: &Spec,
    options: &UpOptions,
    dir: &Path,
    started: Instant,
    rendezvous: ClusterRendezvous,
    lab: Option<&LabNet>,
    mut provider: P,
    mut exits: mpsc::UnboundedReceiver<NodeExit>,
) -> anyhow::Result<i32> {
    let (snapshot, mut feed) = match rendezvous.watch().await {
        Ok(w) => w,
        Err(e) => {
            rendezvous.close().await;
            return Err(e);
        }
    };
    let mut view = ClusterView::new(spec);
    let output_dir = dir.join("rendezvous").join("logs").join(&spec.name);
    if rendezvous.embedded.is_none() {
        let _ = std::fs::remove_dir_all(&output_dir);
        std::fs::create_dir_all(&output_dir).with_context(|| format!("creating {}", output_dir.display()))?;
        view.keep_output = Some(output_dir.clone());
    }
    view.apply(&ServerMessage::Snapshot(snapshot), &Printer::new(vec![]), &ProgressBar::hidden());
    let printer = Printer::new(view.names());
    let mut status = Status {
        cluster: spec.name.clone(),
        spec: spec.path.display().to_string(),
        pid: Some(std::process::id() as i32),
        state: "starting".into(),
        net: match options.provider {
            ProviderChoice::Local => format!("{:?}", options.net).to_lowercase(),
            ProviderChoice::Lambda(_) => "lambda".into(),
        },
        provider: provider.kind().into(),
        rendezvous: rendezvous.addr.addr.to_string(),
        nodes: vec![],
    };
    let write_status = |status: &mut Status, view: &ClusterView, provider: &P| {
        status.nodes = view.status(&output_dir, provider);
        let _ = status.write(dir);
    };

    // `boxer port-forward` joins from this namespace: ours, or in the lab
    // that of a placeholder process on the rendezvous' public network.
    let holder = match lab {
        Some(lab) => {
            let mut cmd = tokio::process::Command::new("sleep");
            cmd.arg("infinity").kill_on_drop(true).stdin(std::process::Stdio::null());
            Some(lab.rendezvous().spawn_command(cmd).context("starting the lab's port-forward placeholder (sleep)")?)
        }
        None => None,
    };
    let join = rendezvous.join();
    state::JoinInfo {
        rendezvous: join.rendezvous,
        fingerprint: join.fingerprint.clone(),
        cluster: join.cluster.clone(),
        token: join.token.clone(),
        pid: holder.as_ref().and_then(|h| h.id()).map_or(std::process::id() as i32, |p| p as i32),
        own_namespace: matches!(options.provider, ProviderChoice::Local) && options.net != NetMode::Host,
    }
    .write(dir)
    .with_context(|| format!("writing {}", dir.join("join.json").display()))?;

    // `boxer scale` reaches this run here; the shape it changes is this.
    let mut spec_now = spec.clone();
    let replace_before = spec.lambda.replace_before_deadline.map(|s| Duration::from_secs(u64::from(s)));
    let control = match control::listen(dir) {
        Ok(listener) => Some(listener),
        Err(e) => {
            eprintln!("note: boxer scale cannot reach this cluster: {e:#}");
            None
        }
    };

    let progress = ProgressBar::new(view.nodes.len() as u64);
    progress.set_style(
        ProgressStyle::with_template("{spinner} {prefix}: {pos}/{len} nodes joined {wide_msg}")
            .expect("valid template"),
    );
    progress.set_prefix(spec.name.clone());
    progress.enable_steady_tick(Duration::from_millis(100));
    let mut launch_error = None;
    if let Some(lab) = lab {
        // Every node's device at once: one after another as each node is
        // launched, the lab's set-up was most of the time to start a cluster.
        let nodes: Vec<_> = spec
            .nodes()
            .map(|(service, index)| {
                (format!("{}-{index}", service.name), NatOptions::new(service.nat.unwrap_or(options.nat)))
            })
            .collect();
        progress.set_message(format!("(preparing the lab's network for {} nodes)", nodes.len()));
        if let Err(e) = lab.add_nodes(&nodes).await {
            launch_error = Some(e.context("preparing the nodes' lab devices"));
        }
        progress.set_message("");
    }
    for (service, index) in spec.nodes() {
        if launch_error.is_some() {
            break;
        }
        if let Err(e) = provider.launch(&join, service, index).await {
            launch_error = Some(e.context(format!("starting node {}-{index}", service.name)));
        }
    }
    write_status(&mut status, &view, &provider);

    let mut all_joined = false;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // Made once, not per loop turn: a `ctrl_c()` future made anew each turn
    // misses a Ctrl-C that arrives while the loop body runs.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut interrupted = false;
    let outcome: anyhow::Result<()> = loop {
        if let Some(e) = launch_error.take() {
            break Err(e);
        }
        progress.set_position(view.settled() as u64);
        progress.set_message(provider.progress());
        if !all_joined && view.settled() == view.nodes.len() {
            all_joined = true;
            progress.finish_and_clear();
            eprintln!(
                "cluster {}: {}/{} nodes joined in {:.1?}",
                spec.name,
                view.joined(),
                view.nodes.len(),
                started.elapsed()
            );
            status.state = "running".into();
            write_status(&mut status, &view, &provider);
        }
        for (node, code) in view.due_restarts() {
            let Some((service, index)) = spec_now.nodes().find(|(s, i)| format!("{}-{i}", s.name) == node) else {
                continue;
            };
            let k = view.reset_for_restart(&node);
            progress.suspend(|| {
                printer.note(&node, &format!("ended with code {code}: replacing it (restart {k} of {MAX_RESTARTS})"))
            });
            if let Err(e) = provider.launch(&join, service, index).await {
                progress.suspend(|| printer.note(&node, &format!("the replacement did not start: {e:#}")));
                view.record_exit(&node, 1);
                view.provider_exit(NodeExit::failed(&node, format!("{e:#}")), &printer, &progress);
            }
            write_status(&mut status, &view, &provider);
        }
        if let (Some(lifetime), Some(before)) = (provider.lifetime(), replace_before) {
            for node in view.handovers_due(lifetime, before, Instant::now()) {
                let Some((service, index)) = spec_now.nodes().find(|(s, i)| format!("{}-{i}", s.name) == node) else {
                    continue;
                };
                match provider.launch_takeover(&join, service, index).await {
                    Ok(successor) => {
                        view.handover_started(&node, successor, Instant::now());
                        let line = format!("{} s before its deadline: starting its replacement", before.as_secs());
                        progress.suspend(|| printer.note(&node, &line));
                    }
                    Err(e) => {
                        // Not tried again: the node is replaced after its deadline instead.
                        progress.suspend(|| printer.note(&node, &format!("its replacement did not start: {e:#}")));
                        view.handover_failed(&node);
                    }
                }
            }
        }
        // Scaled-down nodes, and old instances being replaced (only
        // providers with a lifetime replace, and they stop this way).
        if provider.stops_through_rendezvous() {
            for node in view.stops_due(Instant::now()) {
                if let Err(e) = rendezvous.stop_member(&node).await {
                    progress
                        .suspend(|| printer.note(&node, &format!("could not be stopped yet ({e:#}); trying again")));
                }
            }
        }
        if view.mains_done() {
            break Ok(());
        }
        if let Some((name, code)) = view.failed_dependency() {
            let waiters = view.waiters_of(&name).map(|w| w.join(", ")).unwrap_or_default();
            eprintln!(
                "cluster {}: node {name} failed (exit code {code}) and service(s) {waiters} wait for it; stopping",
                spec.name
            );
            view.failing.get_or_insert((name, code));
            break Ok(());
        }
        tokio::select! {
            item = feed.recv() => match item {
                Some(FeedItem::Message(msg)) => {
                    if view.apply(&msg, &printer, &progress) {
                        write_status(&mut status, &view, &provider);
                    }
                }
                // The nodes do not need the rendezvous to keep running,
                // nor does this loop (Ctrl-C, provider exits): only news
                // from the rendezvous waits for the reconnect.
                Some(FeedItem::Lost { reason }) => {
                    tracing::debug!("watch lost ({reason}); reconnecting");
                    progress.suspend(|| {
                        eprintln!(
                            "cluster {}: rendezvous {} lost ({reason}); reconnecting, the cluster keeps running",
                            spec.name, rendezvous.addr.addr
                        )
                    });
                }
                Some(FeedItem::Reconnected { snapshot, after, announced }) => {
                    let diff = view.resync(&snapshot, &printer, &progress);
                    if announced {
                        progress.suspend(|| {
                            eprintln!(
                                "cluster {}: rendezvous {} reconnected after {:.1} s{}",
                                spec.name,
                                rendezvous.addr.addr,
                                after.as_secs_f64(),
                                diff.summary()
                            )
                        });
                    } else {
                        tracing::debug!("watch resumed after {after:.1?}{}", diff.summary());
                    }
                    write_status(&mut status, &view, &provider);
                }
                Some(FeedItem::Failed(e)) => break Err(e).context("lost the rendezvous"),
                None => break Err(anyhow::anyhow!("lost the rendezvous")),
            },
            Some(exit) = exits.recv() => {
                provider.exited(&exit.node);
                view.provider_exit(exit, &printer, &progress);
            }
            Ok((mut stream, _)) = async {
                match &control {
                    Some(listener) => listener.accept().await,
                    None => std::future::pending().await,
                }
            } => {
                let answer = match control::read_request(&mut stream).await {
                    Ok(request) => {
                        scale(&mut spec_now, &request, &mut view, &mut provider, &join, &printer, &progress).await
                    }
                    Err(e) => ScaleAnswer { ok: false, lines: vec![format!("{e:#}")] },
                };
                control::answer(&mut stream, &answer).await;
                progress.set_length(view.nodes.len() as u64);
            }
            _ = tick.tick() => {}
            _ = interrupt.recv() => { interrupted = true; break Ok(()); }
            _ = terminate.recv() => { interrupted = true; break Ok(()); }
        }
        view.note_waits(&printer, &progress);
        view.settle_unreported(&printer, &progress);
        for name in view.drop_retired() {
            progress.suspend(|| printer.note(&name, "removed (scaled down)"));
        }
        write_status(&mut status, &view, &provider);
    };
    if control.is_some() {
        let _ = std::fs::remove_file(control::socket_path(dir));
    }
    progress.finish_and_clear();
    if interrupted {
        eprintln!("stopping cluster {} (interrupted)", spec.name);
    }
    // Nodes ended by the teardown did not fail: a main node's 143 after
    // Ctrl-C is the stop, not the run's outcome.
    let failing = view.failing.clone();
    teardown(&mut provider, &mut exits, &mut feed, &mut view, &printer, &rendezvous).await;
    view.failing = failing;
    drop(holder);
    let never_started = view.never_started();
    for line in &never_started {
        eprintln!("cluster {}: {line}", spec.name);
    }
    outcome?;
    let code = match (&view.failing, interrupted) {
        (_, true) => 130,
        (Some((_, code)), _) => *code,
        (None, false) => 0,
    };
    status.state = format!("ended (exit {code})");
    status.pid = None;
    write_status(&mut status, &view, &provider);
    for line in provider.summary() {
        eprintln!("{line}");
    }
    if let Some(failure) = view.failure_summary() {
        eprintln!("cluster {}: {failure}", spec.name);
    }
    Ok(code)
}

/// Carries out a `boxer scale` request: new replicas are launched at once
/// (the highest indexes), removed ones are stopped (highest indexes first:
/// SIGTERM, their grace, leave) and leave the view once ended. Every
/// service and count is checked before anything changes.
async fn scale<P: Provider>(
    spec: &mut Spec,
    request: &ScaleRequest,
    view: &mut ClusterView,
    provider: &mut P,
    join: &Join,
    printer: &Printer,
    progress: &ProgressBar,
) -> ScaleAnswer {
    let refuse = |line: String| ScaleAnswer { ok: false, lines: vec![line] };
    if request.replicas.is_empty() {
        return refuse("nothing to scale: give SERVICE=N".into());
    }
    for (name, &n) in &request.replicas {
        let Some(service) = spec.services.iter().find(|s| s.name == *name) else {
            let known: Vec<&str> = spec.services.iter().map(|s| s.name.as_str()).collect();
            return refuse(format!("there is no service {name:?} (services: {})", known.join(", ")));
        };
        if n == 0 || n > crate::spec::MAX_REPLICAS {
            return refuse(format!("{name}={n}: replicas must be 1 to {}", crate::spec::MAX_REPLICAS));
        }
        // A name still held by a node that is stopping cannot be reused yet:
        // its end would be taken for the new node's.
        if let Some(busy) = (service.replicas..n)
            .map(|k| boxer_proto::names::replica_name(name, k))
            .find(|node| view.nodes.get(node).is_some_and(|s| s.retiring))
        {
            return refuse(format!("{name}={n}: {busy} is still stopping from the last scale; try again in a moment"));
        }
    }
    let mut lines = Vec::new();
    for (name, &n) in &request.replicas {
        let Some(i) = spec.services.iter().position(|s| s.name == *name) else { continue };
        let old = spec.services[i].replicas;
        spec.services[i].replicas = n;
        let service = spec.services[i].clone();
        let names = |range: std::ops::Range<u32>| {
            range.map(|k| boxer_proto::names::replica_name(name, k)).collect::<Vec<_>>().join(", ")
        };
        match n.cmp(&old) {
            std::cmp::Ordering::Equal => lines.push(format!("{name}: {n} replica(s), unchanged")),
            std::cmp::Ordering::Greater => {
                for index in old..n {
                    let node = boxer_proto::names::replica_name(name, index);
                    view.add_node(node.clone(), &service);
                    if let Err(e) = provider.launch(join, &service, index).await {
                        progress.suspend(|| printer.note(&node, &format!("did not start: {e:#}")));
                        view.provider_exit(NodeExit::failed(&node, format!("{e:#}")), printer, progress);
                    }
                }
                lines.push(format!("{name}: {old} -> {n} ({} starting)", names(old..n)));
            }
            std::cmp::Ordering::Less => {
                for index in (n..old).rev() {
                    let node = boxer_proto::names::replica_name(name, index);
                    let ended = view.nodes.get(&node).is_some_and(|s| s.exit.is_some());
                    view.retire(&node);
                    // Nodes stopped through the rendezvous are asked by the
                    // main loop ([`ClusterView::stops_due`]), also those
                    // that have not joined yet.
                    if !ended
                        && !provider.stops_through_rendezvous()
                        && let Err(e) = provider.stop_node(&node)
                    {
                        progress.suspend(|| printer.note(&node, &format!("could not be stopped: {e:#}")));
                    }
                }
                lines.push(format!("{name}: {old} -> {n} ({} stopping)", names(n..old)));
            }
        }
    }
    progress.suspend(|| lines.iter().for_each(|l| eprintln!("cluster {}: scale: {l}", spec.name)));
    ScaleAnswer { ok: true, lines }
}

/// Stops every node still running (signals, or deleting the cluster for
/// providers that stop through the rendezvous), waits up to the
/// provider's grace, deletes the cluster, stops an embedded rendezvous.
async fn teardown<P: Provider>(
    provider: &mut P,
    exits: &mut mpsc::UnboundedReceiver<NodeExit>,
    feed: &mut mpsc::Receiver<FeedItem>,
    view: &mut ClusterView,
    printer: &Printer,
    rendezvous: &ClusterRendezvous,
) {
    let hidden = ProgressBar::hidden();
    if provider.running() > 0 {
        if provider.stops_through_rendezvous() {
            rendezvous.delete_cluster().await;
        } else {
            provider.stop_all(false);
        }
        let grace = provider.stop_grace();
        let deadline = tokio::time::Instant::now() + grace;
        // A second Ctrl-C stops by force (one stream: none is missed).
        let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
        while provider.running() > 0 {
            tokio::select! {
                Some(exit) = exits.recv() => {
                    provider.exited(&exit.node);
                    let (node, code) = (exit.node.clone(), exit.code);
                    view.provider_exit(exit, printer, &hidden);
                    view.record_exit(&node, code);
                }
                // Only messages: a lost or regained watch changes nothing
                // about the stop (and a deleted cluster can look like one).
                Some(FeedItem::Message(msg)) = feed.recv() => {
                    view.apply(&msg, printer, &hidden);
                }
                _ = tokio::time::sleep_until(deadline) => {
                    eprintln!("{} node(s) did not stop within {grace:?}; stopping them by force", provider.running());
                    provider.stop_all(true);
                    break;
                }
                Some(_) = async { match interrupt.as_mut() { Some(i) => i.recv().await, None => std::future::pending().await } } => {
                    provider.stop_all(true);
                    if provider.stops_through_rendezvous() {
                        // Nothing more to do here: the nodes end on their own.
                        break;
                    }
                }
            }
        }
    }
    rendezvous.close().await;
}

/// Appends output lines to a node's log file; a failure to write costs the
/// stored copy, never the run.
fn keep_lines<'a>(path: &Path, lines: impl Iterator<Item = &'a str>) {
    use std::io::Write;
    let file = std::fs::OpenOptions::new().create(true).append(true).open(path);
    match file {
        Ok(mut f) => {
            let mut text = String::new();
            for l in lines {
                text.push_str(l);
                text.push('\n');
            }
            if let Err(e) = f.write_all(text.as_bytes()) {
                tracing::warn!("writing {}: {e}", path.display());
            }
        }
        Err(e) => tracing::warn!("opening {}: {e}", path.display()),
    }
}

/// How to open the cluster's watch session, first and after a loss.
#[derive(Debug, Clone)]
struct Watcher {
    endpoint: NodeEndpoint,
    addr: RendezvousAddr,
    request: WatchRequest,
}

impl Watcher {
    async fn open(&self) -> Result<(MembershipSnapshot, rendezvous::SessionReceiver), RendezvousError> {
        rendezvous::watch(&self.endpoint, self.addr, self.request.clone()).await
    }
}

/// What the watch task hands the main loop, in order.
#[derive(Debug)]
pub(crate) enum FeedItem {
    /// A message of the watch session.
    Message(ServerMessage),
    /// The session was lost to something a new one may cure
    /// ([`reconnectable`]); the task is reconnecting. `reason` is short and
    /// printable.
    Lost { reason: String },
    /// A new session is up, `after` the loss; `snapshot` is the membership
    /// now, to reconcile with ([`ClusterView::resync`]). `announced`: the
    /// loss was reported ([`FeedItem::Lost`]); an [`unexplained`] end is
    /// reported only if the first attempt fails.
    Reconnected { snapshot: MembershipSnapshot, after: Duration, announced: bool },
    /// The rendezvous refused us (a wrong token, a deleted or unknown
    /// cluster), or cannot be understood: the end. Nothing follows.
    Failed(RendezvousError),
}

/// Keeps the cluster's watch session open in its own task (frame reads are
/// not cancel-safe) and hands what comes to the returned channel, for as
/// long as the receiver lives.
///
/// A session lost to the network or to a restarting rendezvous
/// ([`reconnectable`]) is opened again, with [`reconnect_delay`] between
/// attempts, for as long as it takes: the nodes keep running meanwhile (the
/// rendezvous keeps their places while they rejoin), and refusals still end
/// it. The embedded rendezvous goes the same way (it is only ever lost when
/// `boxer up` stops it).
///
/// What the rendezvous published while no session was open is lost to
/// `boxer up`: it does not replay output to a new watcher (with `logs:
/// true` the new session carries lines from then on; earlier ones are
/// missing from the terminal and from the copy kept for `boxer logs` with
/// an external rendezvous), nor exit reports (a node that ended meanwhile
/// is settled from its provider's report, [`ClusterView::settle_unreported`]).
/// Current node states are sent again; membership comes back whole in the
/// new snapshot.
fn spawn_feed_reader(session: rendezvous::SessionReceiver, watcher: Watcher) -> mpsc::Receiver<FeedItem> {
    let (tx, rx) = mpsc::channel(256);
    let span = tracing::info_span!("watch", cluster = %watcher.request.cluster, rendezvous = %watcher.addr.addr);
    tokio::spawn(keep_watching(session, watcher, tx).instrument(span));
    rx
}

/// The watch task of [`spawn_feed_reader`].
async fn keep_watching(mut session: rendezvous::SessionReceiver, watcher: Watcher, tx: mpsc::Sender<FeedItem>) {
    // Reconnect attempts so far: the back-off goes on across sessions that
    // do not last (see [`RECONNECT_SETTLED`]).
    let mut attempt = 0u32;
    let mut opened = Instant::now();
    loop {
        let error = loop {
            let msg = tokio::select! {
                // Nobody reads any more: `boxer up` is ending.
                () = tx.closed() => return,
                msg = session.next() => msg,
            };
            match msg {
                Ok(msg) => {
                    if tx.send(FeedItem::Message(msg)).await.is_err() {
                        return;
                    }
                }
                Err(e) => break e,
            }
        };
        // Whatever is left of the connection goes now rather than at drop.
        session.connection().close(0u32.into(), b"reconnecting");
        if !reconnectable(&error) {
            tracing::info!("watch ended: {error}");
            let _ = tx.send(FeedItem::Failed(error)).await;
            return;
        }
        tracing::info!("watch lost: {error}");
        let reason = loss_reason(&error);
        // Said now, or after a first attempt for an end without a reason.
        let mut announced = false;
        if !unexplained(&error) {
            if tx.send(FeedItem::Lost { reason: reason.clone() }).await.is_err() {
                return;
            }
            announced = true;
        }
        let lost = Instant::now();
        if lost.duration_since(opened) >= RECONNECT_SETTLED {
            attempt = 0;
        }
        let (snapshot, fresh) = loop {
            let wait = jittered(reconnect_delay(attempt), random_fraction());
            attempt = attempt.saturating_add(1);
            let result = tokio::select! {
                () = tx.closed() => return,
                result = async {
                    tokio::time::sleep(wait).await;
                    watcher.open().await
                } => result,
            };
            match result {
                Ok(watch) => break watch,
                Err(e) if reconnectable(&e) => {
                    tracing::debug!(attempt, "reconnect failed after {:.1?}: {e}", lost.elapsed());
                    if !announced {
                        if tx.send(FeedItem::Lost { reason: reason.clone() }).await.is_err() {
                            return;
                        }
                        announced = true;
                    }
                }
                Err(e) => {
                    tracing::info!(attempt, "reconnect refused: {e}");
                    let _ = tx.send(FeedItem::Failed(e)).await;
                    return;
                }
            }
        };
        let after = lost.elapsed();
        tracing::info!(attempt, "watch reconnected after {after:.1?}");
        session = fresh;
        opened = Instant::now();
        if tx.send(FeedItem::Reconnected { snapshot, after, announced }).await.is_err() {
            return;
        }
    }
}

/// Whether a watch session that ended with `e` may come back by opening a
/// new one: the network or the rendezvous went away for a while (a
/// restart closes with code 0, "rendezvous shutting down", or resets; a
/// crash or a cut link times out; a stream that ends without a reason is a
/// session the rendezvous dropped). A new attempt that meets a refusal ends
/// it then.
///
/// Final: refusals (a wrong token, a deleted or unknown cluster: the
/// deleted cluster's close code comes as `Refused`), another protocol
/// version, a rendezvous that now presents another certificate (a local
/// TLS failure: the nodes pinned the old one and cannot rejoin either),
/// messages that cannot be read, and local failures to dial. Retrying
/// would repeat them.
fn reconnectable(e: &RendezvousError) -> bool {
    use quinn::ConnectionError as C;
    match e {
        RendezvousError::Connection { source, .. } => match source {
            C::TimedOut | C::Reset | C::ConnectionClosed(_) | C::CidsExhausted => true,
            // `ApplicationClosed` comes as `Closed` or `Refused`.
            C::ApplicationClosed(_) | C::VersionMismatch | C::TransportError(_) | C::LocallyClosed => false,
        },
        RendezvousError::Closed { .. } | RendezvousError::Timeout { .. } => true,
        RendezvousError::Frame { source, .. } => match source {
            FrameError::Io(_) | FrameError::Closed | FrameError::Truncated { .. } => true,
            FrameError::Oversize { .. } | FrameError::Decode(_) | FrameError::Encode(_) => false,
        },
        RendezvousError::Refused { .. }
        | RendezvousError::Hello { .. }
        | RendezvousError::Endpoint(_)
        | RendezvousError::Unexpected { .. } => false,
    }
}

/// Whether the rendezvous ended the session without saying why (no close
/// reason, or just the end of the stream). A deleted cluster's session can
/// end so, when the deletion races the refusal that says it: the first
/// reconnect attempt is made before the loss is reported, so that its
/// refusal ends the watch without a "reconnecting" line first.
fn unexplained(e: &RendezvousError) -> bool {
    match e {
        RendezvousError::Closed { reason } => reason.trim().is_empty(),
        RendezvousError::Frame { source, .. } => matches!(source, FrameError::Closed | FrameError::Truncated { .. }),
        _ => false,
    }
}

/// Longest reason shown for a lost watch.
const MAX_REASON: usize = 120;

/// Why a watch was lost, short (the line names the rendezvous already) and
/// safe to print: the rendezvous' close reason is its own text.
fn loss_reason(e: &RendezvousError) -> String {
    let reason = match e {
        RendezvousError::Connection { source, .. } => source.to_string(),
        RendezvousError::Closed { reason } if reason.trim().is_empty() => "it closed the connection".to_owned(),
        RendezvousError::Closed { reason } => reason.clone(),
        RendezvousError::Timeout { .. } => format!("no answer within {:?}", rendezvous::ANSWER_TIMEOUT),
        RendezvousError::Frame { source, .. } => source.to_string(),
        other => other.to_string(),
    };
    let mut short: String = reason.chars().map(|c| if c.is_control() { ' ' } else { c }).take(MAX_REASON).collect();
    if reason.chars().count() > MAX_REASON {
        short.push('…');
    }
    short
}

/// The wait before reconnect attempt `attempt` (0 first): [`RECONNECT_FIRST`]
/// doubled each time, at most [`RECONNECT_CAP`].
fn reconnect_delay(attempt: u32) -> Duration {
    RECONNECT_FIRST.saturating_mul(2u32.saturating_pow(attempt)).min(RECONNECT_CAP)
}

/// `wait` shortened by up to [`RECONNECT_JITTER`] of it, by `fraction`
/// (in `0.0..1.0`) of that.
fn jittered(wait: Duration, fraction: f64) -> Duration {
    wait.mul_f64(1.0 - RECONNECT_JITTER * fraction.clamp(0.0, 1.0))
}

/// A random number in `0.0..1.0`, good enough to spread retries (std's
/// randomly keyed hasher; no dependency for this).
fn random_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let bits = std::collections::hash_map::RandomState::new().build_hasher().finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// How a fresh snapshot differs from the members `boxer up` knew, for the
/// spec's nodes (other members, such as `boxer port-forward`, are not
/// followed).
#[derive(Debug, Default, PartialEq, Eq)]
struct MembershipDiff {
    /// Nodes whose member is not in the snapshot any more, with its id: it
    /// left while we did not see it.
    left: Vec<(String, NodeId)>,
    /// Members new to us: a node that had none, or one that joined again as
    /// a new member (its old id is in `left`).
    joined: Vec<Member>,
    /// Members known under the same id: the same node, still there (its
    /// addresses and ports may be newer). Not news.
    kept: Vec<Member>,
}

impl MembershipDiff {
    /// ` (meanwhile db-0 left; web-2 joined)`, or nothing when nothing
    /// changed. Long lists are cut short.
    fn summary(&self) -> String {
        /// Names shown per list; the rest are counted.
        const SHOWN: usize = 5;
        let list = |names: Vec<String>| {
            let more = names.len().saturating_sub(SHOWN);
            let mut text = names.into_iter().take(SHOWN).collect::<Vec<_>>().join(", ");
            if more > 0 {
                text.push_str(&format!(" and {more} more"));
            }
            text
        };
        let mut parts = Vec::new();
        if !self.left.is_empty() {
            parts.push(format!("{} left", list(self.left.iter().map(|(name, _)| name.clone()).collect())));
        }
        if !self.joined.is_empty() {
            parts.push(format!("{} joined", list(self.joined.iter().map(Member::replica_name).collect())));
        }
        if parts.is_empty() { String::new() } else { format!(" (meanwhile {})", parts.join("; ")) }
    }
}

/// Compares the members `known` (each node's member id, if it has joined)
/// with `members`, a fresh snapshot. A member is the same one only under
/// the same id and name: a node's id is never reused, and a node that
/// rejoins the rendezvous keeps it.
fn diff_membership(known: &BTreeMap<String, Option<NodeId>>, members: &[Member]) -> MembershipDiff {
    let mut diff = MembershipDiff::default();
    for (name, id) in known {
        if let Some(id) = *id
            && !members.iter().any(|m| m.node_id == id && m.replica_name() == *name)
        {
            diff.left.push((name.clone(), id));
        }
    }
    for m in members {
        match known.get(&m.replica_name()) {
            // Not one of the spec's nodes.
            None => {}
            Some(Some(id)) if *id == m.node_id => diff.kept.push(m.clone()),
            Some(_) => diff.joined.push(m.clone()),
        }
    }
    diff
}

/// Paths of a cluster's stored node output, for `boxer logs`.
pub fn output_files(cluster: &str) -> PathBuf {
    state::cluster_dir(cluster).join("rendezvous").join("logs").join(cluster)
}

#[cfg(test)]
mod tests {
    use boxer_proto::control::{ExitStatus, LogLine, Stream};

    use super::*;

    fn view() -> ClusterView {
        let spec = crate::spec::parse(
            Path::new("/x/boxer.toml"),
            "[cluster]\nname = \"c\"\n[services.db]\ncommand = [\"x\"]\n\
             [services.web]\ncommand = [\"x\"]\nwait_for = [\"db-0:5432\"]\nmain = true\n",
        )
        .unwrap();
        ClusterView::new(&spec)
    }

    fn state_of(view: &ClusterView, node: &str) -> String {
        let provider = LocalProviderStub;
        view.status(Path::new("/o"), &provider).into_iter().find(|n| n.name == node).unwrap().state
    }

    /// Just enough of a provider for [`ClusterView::status`].
    struct LocalProviderStub;

    impl Provider for LocalProviderStub {
        fn stop_node(&mut self, _: &str) -> anyhow::Result<()> {
            Ok(())
        }
        fn kind(&self) -> &'static str {
            "stub"
        }
        async fn launch(&mut self, _: &Join, _: &crate::spec::Service, _: u32) -> anyhow::Result<()> {
            Ok(())
        }
        fn exited(&mut self, _: &str) {}
        fn running(&self) -> usize {
            0
        }
        fn stop_all(&mut self, _: bool) {}
        fn stops_through_rendezvous(&self) -> bool {
            false
        }
        fn stop_grace(&self) -> Duration {
            Duration::ZERO
        }
        fn runtime_log(&self, _: &str) -> String {
            String::new()
        }
        fn summary(&self) -> Vec<String> {
            vec![]
        }
    }

    fn member(node: &str, id: u32) -> Member {
        let (service, index) = node.rsplit_once('-').unwrap();
        Member {
            node_id: boxer_proto::NodeId(id),
            service: service.into(),
            index: index.parse().unwrap(),
            overlay_ip: Ipv4Addr::new(100, 96, 0, id as u8),
            fingerprint: Fingerprint([id as u8; 32]),
            reflexive: "192.0.2.1:1".parse().unwrap(),
            local: vec![],
            listening: vec![],
            disco_public: [id as u8; 32],
        }
    }

    fn joined(view: &mut ClusterView, node: &str, id: u32) {
        view.nodes.get_mut(node).unwrap().member = Some(member(node, id));
    }

    #[test]
    fn a_waiting_node_is_shown_as_waiting_until_it_runs() {
        let (printer, hidden) = (Printer::new(vec![]), ProgressBar::hidden());
        let mut view = view();
        joined(&mut view, "db-0", 1);
        joined(&mut view, "web-0", 2);
        assert_eq!(state_of(&view, "web-0"), "running", "no state reported: joined is running");
        let waiting = ReportedState::Waiting { target: "db-0".into(), port: 5432, waited_secs: 12 };
        assert!(view.apply(&ServerMessage::State { node: "web-0".into(), state: waiting }, &printer, &hidden));
        assert_eq!(state_of(&view, "web-0"), "waiting for db-0:5432");
        let w = view.nodes["web-0"].waiting.clone().unwrap();
        // It had waited 12 s already: shown at once, next in 10 s.
        assert!(w.since.elapsed() >= Duration::from_secs(12) && w.next_note <= Instant::now());
        view.note_waits(&printer, &hidden);
        let w = view.nodes["web-0"].waiting.clone().unwrap();
        assert!(w.next_note > Instant::now() + Duration::from_secs(9), "next line in 10 s");
        view.apply(&ServerMessage::State { node: "web-0".into(), state: ReportedState::Running }, &printer, &hidden);
        assert_eq!(state_of(&view, "web-0"), "running");
        assert!(view.never_started().is_empty());
    }

    #[test]
    fn a_fresh_wait_is_shown_after_three_seconds_and_named_when_the_cluster_stops() {
        let (printer, hidden) = (Printer::new(vec![]), ProgressBar::hidden());
        let mut view = view();
        joined(&mut view, "web-0", 2);
        let waiting = ReportedState::Waiting { target: "db-0".into(), port: 5432, waited_secs: 0 };
        view.apply(&ServerMessage::State { node: "web-0".into(), state: waiting }, &printer, &hidden);
        let w = view.nodes["web-0"].waiting.clone().unwrap();
        assert!(w.next_note >= Instant::now() + Duration::from_secs(2), "not shown before 3 s");
        let lines = view.never_started();
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].starts_with("web-0 never started its program: still waiting for db-0:5432 after "),
            "{lines:?}"
        );
        assert!(view.nodes["web-0"].note.as_deref().unwrap().starts_with("never started its program"));
    }

    #[test]
    fn giving_up_is_noted_and_the_failure_names_its_role() {
        let (printer, hidden) = (Printer::new(vec![]), ProgressBar::hidden());
        let mut view = view();
        joined(&mut view, "web-0", 2);
        let reason = "gave up waiting for db-0:5432 after 5 s (wait_timeout); db-0 never listened on 5432".to_owned();
        let gave_up = ReportedState::GaveUp { reason: reason.clone() };
        view.apply(&ServerMessage::State { node: "web-0".into(), state: gave_up }, &printer, &hidden);
        let exited = ServerMessage::Exited { node: "web-0".into(), status: ExitStatus { code: 124 } };
        view.apply(&exited, &printer, &hidden);
        assert_eq!(state_of(&view, "web-0"), "exited 124");
        assert_eq!(view.nodes["web-0"].note.as_deref(), Some(reason.as_str()));
        assert_eq!(view.failure_summary().unwrap(), "node web-0 failed with exit code 124");
        // States after the exit change nothing; lines still print.
        let late = ServerMessage::State { node: "web-0".into(), state: ReportedState::Running };
        assert!(!view.apply(&late, &printer, &hidden));
        let line = LogLine { stream: Stream::Stdout, text: "x".into() };
        view.apply(&ServerMessage::Logs { node: "web-0".into(), lines: vec![line] }, &printer, &hidden);

        // A node others wait for, not main.
        let mut view = super::tests::view();
        view.record_exit("db-0", 1);
        let (name, code) = view.failed_dependency().unwrap();
        view.failing = Some((name, code));
        assert_eq!(view.failure_summary().unwrap(), "node db-0 failed with exit code 1 (service(s) web wait for it)");
    }

    #[tokio::test]
    async fn scaling_checks_first_retires_the_highest_and_waits_for_stopping_names() {
        let (printer, hidden) = (Printer::new(vec![]), ProgressBar::hidden());
        let mut spec = crate::spec::parse(
            Path::new("/x/boxer.toml"),
            "[cluster]\nname = \"c\"\n[services.web]\ncommand = [\"x\"]\nreplicas = 2\nrestart = \"always\"\n",
        )
        .unwrap();
        let mut view = ClusterView::new(&spec);
        let join = Join {
            rendezvous: "127.0.0.1:1".parse().unwrap(),
            fingerprint: String::new(),
            cluster: "c".into(),
            token: String::new(),
        };
        let mut provider = LocalProviderStub;
        let ask =
            |pairs: &[(&str, u32)]| ScaleRequest { replicas: pairs.iter().map(|(s, n)| (s.to_string(), *n)).collect() };
        let refused =
            scale(&mut spec, &ask(&[("web", 4), ("nosuch", 1)]), &mut view, &mut provider, &join, &printer, &hidden)
                .await;
        assert!(!refused.ok && refused.lines[0].contains("no service \"nosuch\""), "{refused:?}");
        assert_eq!((spec.services[0].replicas, view.nodes.len()), (2, 2), "nothing changed");

        let grown = scale(&mut spec, &ask(&[("web", 4)]), &mut view, &mut provider, &join, &printer, &hidden).await;
        assert!(grown.ok && grown.lines[0] == "web: 2 -> 4 (web-2, web-3 starting)", "{grown:?}");
        let shrunk = scale(&mut spec, &ask(&[("web", 2)]), &mut view, &mut provider, &join, &printer, &hidden).await;
        assert!(shrunk.ok && shrunk.lines[0] == "web: 4 -> 2 (web-2, web-3 stopping)", "{shrunk:?}");
        let busy = scale(&mut spec, &ask(&[("web", 3)]), &mut view, &mut provider, &join, &printer, &hidden).await;
        assert!(!busy.ok && busy.lines[0].contains("web-2 is still stopping"), "{busy:?}");
        // Through the rendezvous: a retiring member is asked, again only
        // after STOP_RETRY; one not joined yet is asked once it joins.
        joined(&mut view, "web-3", 4);
        let now = Instant::now();
        assert_eq!(view.stops_due(now), ["web-3"]);
        assert!(view.stops_due(now + Duration::from_secs(1)).is_empty());
        assert_eq!(view.stops_due(now + STOP_RETRY), ["web-3"]);
        joined(&mut view, "web-2", 3);
        assert_eq!(view.stops_due(now + STOP_RETRY), ["web-2"]);
        assert!(!view.stops_due(now + STOP_RETRY * 3).contains(&"web-0".to_string()), "kept nodes are left alone");
        // Their ends: no restart (restart = "always"), no failure, then gone.
        for node in ["web-2", "web-3"] {
            view.record_exit(node, 143);
            view.provider_exit(
                NodeExit {
                    node: node.into(),
                    code: 143,
                    notes: vec![],
                    detail: vec![],
                    failed_to_start: false,
                    instance: 0,
                },
                &printer,
                &hidden,
            );
        }
        assert!(view.due_restarts().is_empty() && view.failing.is_none());
        assert_eq!(view.drop_retired(), ["web-2", "web-3"]);
        let again = scale(&mut spec, &ask(&[("web", 3)]), &mut view, &mut provider, &join, &printer, &hidden).await;
        assert!(again.ok, "{again:?}");
        assert_eq!(view.names(), ["web-0", "web-1", "web-2"]);
    }

    #[test]
    fn a_node_is_replaced_before_its_deadline_by_a_successor_that_takes_its_place() {
        let (printer, hidden) = (Printer::new(vec![]), ProgressBar::hidden());
        let spec = crate::spec::parse(
            Path::new("/x/boxer.toml"),
            "[cluster]\nname = \"c\"\n[services.web]\ncommand = [\"x\"]\nrestart = \"always\"\n\
             [services.once]\ncommand = [\"x\"]\n",
        )
        .unwrap();
        let mut view = ClusterView::new(&spec);
        let event = |change| ServerMessage::Event(boxer_proto::membership::MembershipEvent { seq: 1, change });
        let exited = |code| ServerMessage::Exited { node: "web-0".into(), status: ExitStatus { code } };
        let ended = |instance, code| NodeExit {
            node: "web-0".into(),
            code,
            notes: vec![],
            detail: vec![],
            failed_to_start: false,
            instance,
        };
        view.apply(&event(MemberChange::Joined(member("web-0", 1))), &printer, &hidden);
        view.apply(&event(MemberChange::Joined(member("once-0", 2))), &printer, &hidden);
        let joined = view.nodes["web-0"].joined_at.unwrap();
        let (lifetime, before) = (Duration::from_secs(10), Duration::from_secs(4));
        assert!(view.handovers_due(lifetime, before, joined + Duration::from_secs(5)).is_empty());
        // Only the service with `restart`.
        let now = joined + Duration::from_secs(6);
        assert_eq!(view.handovers_due(lifetime, before, now), ["web-0"]);
        view.handover_started("web-0", 7, now);
        assert!(view.handovers_due(lifetime, before, now).is_empty(), "one handover at a time");
        assert!(view.stops_due(now).is_empty(), "the successor boots first");
        let boot = view.nodes["web-0"].handover.as_ref().unwrap().stop_old_at - now;
        assert!((HANDOVER_BOOT_MIN..=HANDOVER_BOOT_MAX).contains(&boot), "{boot:?}");
        assert_eq!(view.stops_due(now + boot), ["web-0"]);
        assert!(view.stops_due(now + boot).is_empty(), "asked once per STOP_RETRY");

        // The old instance stops: its exit and its invocation's end are the
        // handover's, not the node's.
        view.apply(&exited(143), &printer, &hidden);
        view.provider_exit(ended(1, 143), &printer, &hidden);
        let n = &view.nodes["web-0"];
        assert!(n.exit.is_none() && !n.provider_ended && view.due_restarts().is_empty());
        view.apply(&event(MemberChange::Left { node_id: boxer_proto::NodeId(1) }), &printer, &hidden);
        // The successor joins under the same name (and, from the rendezvous, address).
        view.apply(&event(MemberChange::Joined(member("web-0", 1))), &printer, &hidden);
        let n = &view.nodes["web-0"];
        assert!(n.handover.is_none() && n.handovers == 1 && n.current_instance == Some(7));
        let provider = LocalProviderStub;
        let row = view.status(Path::new("/o"), &provider).into_iter().find(|r| r.name == "web-0").unwrap();
        assert_eq!(
            (row.state.as_str(), row.note.as_deref()),
            ("running", Some("replaced 1 time(s) before its deadline"))
        );
        // A stale end of an older instance changes nothing; the successor's does.
        view.provider_exit(ended(1, 1), &printer, &hidden);
        assert!(!view.nodes["web-0"].provider_ended);
        view.apply(&exited(0), &printer, &hidden);
        view.provider_exit(ended(7, 0), &printer, &hidden);
        let n = &view.nodes["web-0"];
        assert!(n.exit == Some(0) && n.provider_ended);
    }

    #[test]
    fn a_successor_that_fails_leaves_the_old_instance_serving() {
        let (printer, hidden) = (Printer::new(vec![]), ProgressBar::hidden());
        let spec = crate::spec::parse(
            Path::new("/x/boxer.toml"),
            "[cluster]\nname = \"c\"\n[services.web]\ncommand = [\"x\"]\nrestart = \"always\"\n",
        )
        .unwrap();
        let mut view = ClusterView::new(&spec);
        joined(&mut view, "web-0", 1);
        view.handover_started("web-0", 9, Instant::now());
        let failed = NodeExit { instance: 9, ..NodeExit::failed("web-0", "throttled".into()) };
        view.provider_exit(failed, &printer, &hidden);
        let n = &view.nodes["web-0"];
        assert!(n.handover.is_none() && n.exit.is_none() && !n.provider_ended, "the old one still serves");
        // Its own end later is the node's, as without a handover.
        view.provider_exit(NodeExit { instance: 1, ..NodeExit::failed("web-0", "gone".into()) }, &printer, &hidden);
        assert!(view.nodes["web-0"].provider_ended);
        view.handover_failed("web-0");
        assert!(view.handovers_due(Duration::from_secs(1), Duration::ZERO, Instant::now()).is_empty());
    }

    #[test]
    fn members_not_in_the_spec_are_listed_and_never_end_the_cluster() {
        let (printer, hidden) = (Printer::new(vec![]), ProgressBar::hidden());
        let mut view = view();
        let event = |change| ServerMessage::Event(boxer_proto::membership::MembershipEvent { seq: 1, change });
        assert!(view.apply(&event(MemberChange::Joined(member("vm-0", 7))), &printer, &hidden));
        assert_eq!(state_of(&view, "vm-0"), "running");
        let provider = LocalProviderStub;
        let row = view.status(Path::new("/o"), &provider).into_iter().find(|n| n.name == "vm-0").unwrap();
        assert_eq!(row.overlay_ip.as_deref(), Some("100.96.0.7"));
        assert!(row.note.unwrap().contains("joined by hand"));
        let exited = ServerMessage::Exited { node: "vm-0".into(), status: ExitStatus { code: 3 } };
        assert!(view.apply(&exited, &printer, &hidden));
        assert_eq!(state_of(&view, "vm-0"), "exited 3");
        assert!(view.failure_summary().is_none(), "a hand-started node does not fail the cluster");
        assert!(view.apply(&event(MemberChange::Left { node_id: boxer_proto::NodeId(7) }), &printer, &hidden));
        assert!(!view.nodes.contains_key("vm-0"));
    }

    #[test]
    fn reconnects_back_off_from_200_ms_to_5_s() {
        let waits: Vec<u128> = (0..8).map(|a| reconnect_delay(a).as_millis()).collect();
        assert_eq!(waits, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(reconnect_delay(u32::MAX), RECONNECT_CAP, "no overflow however long it runs");
        assert_eq!(jittered(Duration::from_secs(5), 0.0), Duration::from_secs(5));
        assert_eq!(jittered(Duration::from_secs(5), 1.0), Duration::from_secs(4));
        assert_eq!(jittered(Duration::from_secs(5), 7.0), Duration::from_secs(4), "clamped");
        for _ in 0..100 {
            let f = random_fraction();
            assert!((0.0..1.0).contains(&f), "{f}");
        }
    }

    #[test]
    fn a_lost_connection_is_reconnected_and_a_refusal_is_final() {
        let addr: SocketAddr = "192.0.2.7:4740".parse().unwrap();
        let connection = |source| RendezvousError::Connection { addr, source };
        let frame = |source| RendezvousError::Frame { addr, source };
        for e in [
            connection(quinn::ConnectionError::TimedOut),
            connection(quinn::ConnectionError::Reset),
            RendezvousError::Closed { reason: "rendezvous shutting down".into() },
            RendezvousError::Closed { reason: String::new() },
            RendezvousError::Timeout { addr },
            frame(FrameError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset))),
            frame(FrameError::Closed),
        ] {
            assert!(reconnectable(&e), "{e}");
        }
        // Reported at once, or only once a first attempt fails.
        let said: Vec<bool> = [
            RendezvousError::Closed { reason: "rendezvous shutting down".into() },
            RendezvousError::Closed { reason: String::new() },
            frame(FrameError::Closed),
            connection(quinn::ConnectionError::TimedOut),
        ]
        .iter()
        .map(|e| !unexplained(e))
        .collect();
        assert_eq!(said, [true, false, false, true]);
        for e in [
            RendezvousError::Refused { code: 3, reason: "wrong token for cluster \"c\"".into() },
            RendezvousError::Refused { code: 4, reason: "no cluster \"c\"".into() },
            RendezvousError::Refused { code: 10, reason: "cluster \"c\" was deleted".into() },
            RendezvousError::Hello {
                addr,
                source: boxer_proto::hello::HelloError::VersionMismatch { ours: 5, theirs: 4 },
            },
            connection(quinn::ConnectionError::VersionMismatch),
            connection(quinn::ConnectionError::LocallyClosed),
            frame(FrameError::Oversize { len: 1 << 30 }),
            RendezvousError::Unexpected { addr, what: "Joined".into() },
        ] {
            assert!(!reconnectable(&e), "{e}");
        }
    }

    #[test]
    fn the_reason_for_a_loss_is_short_and_printable() {
        let addr: SocketAddr = "192.0.2.7:4740".parse().unwrap();
        let reason = |e| loss_reason(&e);
        assert_eq!(reason(RendezvousError::Connection { addr, source: quinn::ConnectionError::TimedOut }), "timed out");
        assert_eq!(
            reason(RendezvousError::Closed { reason: "rendezvous shutting down".into() }),
            "rendezvous shutting down"
        );
        assert_eq!(reason(RendezvousError::Closed { reason: " ".into() }), "it closed the connection");
        let hostile = reason(RendezvousError::Closed { reason: format!("\u{1b}[2Jbye\n{}", "é".repeat(500)) });
        assert!(hostile.starts_with(" [2Jbye "), "{hostile}");
        assert!(!hostile.chars().any(char::is_control), "{hostile:?}");
        assert_eq!(hostile.chars().count(), MAX_REASON + 1, "cut, with an ellipsis");
    }

    #[test]
    fn a_fresh_snapshot_is_compared_by_member_id() {
        let known: BTreeMap<String, Option<NodeId>> = [
            ("db-0".to_owned(), Some(NodeId(1))),
            ("web-0".to_owned(), Some(NodeId(2))),
            ("web-1".to_owned(), Some(NodeId(3))),
            ("web-2".to_owned(), None),
        ]
        .into();
        // db-0 still there (new address), web-0 gone, web-1 a new member
        // (it joined again), web-2 new, a port-forward member not ours.
        let mut db = member("db-0", 1);
        db.reflexive = "192.0.2.9:9".parse().unwrap();
        let members = [db.clone(), member("web-1", 7), member("web-2", 8), member("forward-0", 9)];
        let diff = diff_membership(&known, &members);
        assert_eq!(diff.kept, [db]);
        assert_eq!(diff.left, [("web-0".to_owned(), NodeId(2)), ("web-1".to_owned(), NodeId(3))]);
        assert_eq!(diff.joined, [member("web-1", 7), member("web-2", 8)]);
        assert_eq!(diff.summary(), " (meanwhile web-0, web-1 left; web-1, web-2 joined)");

        // Nothing changed: nothing to say.
        let same = diff_membership(&known, &[member("db-0", 1), member("web-0", 2), member("web-1", 3)]);
        assert!(same.left.is_empty() && same.joined.is_empty() && same.kept.len() == 3, "{same:?}");
        assert_eq!(same.summary(), "");

        let many: BTreeMap<String, Option<NodeId>> = (0..8).map(|i| (format!("w-{i}"), None)).collect();
        let members: Vec<Member> = (0..8).map(|i| member(&format!("w-{i}"), i + 1)).collect();
        assert_eq!(
            diff_membership(&many, &members).summary(),
            " (meanwhile w-0, w-1, w-2, w-3, w-4 and 3 more joined)"
        );
    }

    #[test]
    fn a_resync_settles_what_left_and_keeps_what_stayed() {
        let (printer, hidden) = (Printer::new(vec![]), ProgressBar::hidden());
        let mut view = view();
        joined(&mut view, "db-0", 1);
        joined(&mut view, "web-0", 2);
        // The provider lost track of db-0: only the rendezvous can say it left.
        view.nodes.get_mut("db-0").unwrap().left_unreported = true;

        // Both still there after the reconnect: nobody left, nobody is new.
        let snapshot = MembershipSnapshot { seq: 9, members: vec![member("db-0", 1), member("web-0", 2)] };
        let diff = view.resync(&snapshot, &printer, &hidden);
        assert_eq!((diff.left.len(), diff.joined.len(), diff.summary()), (0, 0, String::new()));
        assert_eq!(view.nodes["db-0"].exit, None);
        assert_eq!(state_of(&view, "web-0"), "running");

        // db-0 left while unseen: it ends as if its departure had come.
        let snapshot = MembershipSnapshot { seq: 12, members: vec![member("web-0", 2)] };
        let diff = view.resync(&snapshot, &printer, &hidden);
        assert_eq!(diff.summary(), " (meanwhile db-0 left)");
        assert_eq!(view.nodes["db-0"].exit, Some(1));
        assert_eq!(state_of(&view, "web-0"), "running");

        // The same through a snapshot resent mid-session; a new member of
        // web-0 replaces the old one.
        assert!(view.apply(
            &ServerMessage::Snapshot(MembershipSnapshot { seq: 15, members: vec![member("web-0", 5)] }),
            &printer,
            &hidden
        ));
        assert_eq!(view.nodes["web-0"].member.as_ref().map(|m| m.node_id), Some(NodeId(5)));
        assert_eq!(view.nodes["web-0"].exit, None, "web-0 was not left_unreported: its exit report decides");
    }

    /// A rendezvous on loopback keeping its clusters in `dir`, serving.
    fn serve_rendezvous(dir: &Path, port: u16) -> Result<::rendezvous::Rendezvous, ::rendezvous::ServerError> {
        let server = ::rendezvous::Rendezvous::bind(::rendezvous::Config {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            state_dir: dir.to_owned(),
            admin_token: Some("admin".into()),
            socket: None,
            persist: true,
            limits: ::rendezvous::limits::Limits::default(),
        })?;
        tokio::spawn(server.clone().run());
        Ok(server)
    }

    /// The next item that is not a message, within `within`.
    async fn next_news(rx: &mut mpsc::Receiver<FeedItem>, within: Duration) -> FeedItem {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(FeedItem::Message(_))) => {}
                Ok(Some(item)) => return item,
                Ok(None) => panic!("the watch task ended"),
                Err(_) => panic!("nothing within {within:?}"),
            }
        }
    }

    #[tokio::test]
    async fn the_watch_comes_back_after_a_restart_and_ends_with_its_reader() {
        let dir = std::env::temp_dir().join(format!("boxer-up-watch-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let server = serve_rendezvous(&dir, 0).unwrap();
        let addr = RendezvousAddr { addr: server.local_addr().unwrap(), fingerprint: server.fingerprint() };
        let endpoint =
            NodeEndpoint::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), Identity::generate().unwrap()).unwrap();
        let create =
            CreateClusterRequest { admin_token: "admin".into(), name: "c".into(), network: None, join_token: None };
        rendezvous::create_cluster(&endpoint, addr, create).await.unwrap();
        // The cluster must be on disk for the next process to know it.
        let saved = dir.join(::rendezvous::store::CLUSTERS_FILE);
        for _ in 0..100 {
            if std::fs::read_to_string(&saved).is_ok_and(|s| s.contains("\"c\"")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let request = WatchRequest { cluster: "c".into(), token: "admin".into(), logs: true };
        let watcher = Watcher { endpoint, addr, request };
        let (_, session) = watcher.open().await.unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let task = tokio::spawn(keep_watching(session, watcher, tx));

        server.close();
        drop(server);
        match next_news(&mut rx, Duration::from_secs(10)).await {
            FeedItem::Lost { reason } => assert_eq!(reason, "rendezvous shutting down"),
            other => panic!("{other:?}"),
        }
        // The same port once the old socket is gone.
        let mut tries = 0;
        let server = loop {
            match serve_rendezvous(&dir, addr.addr.port()) {
                Ok(server) => break server,
                Err(e) if tries < 100 => {
                    tries += 1;
                    tracing::debug!("rebinding: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("rebinding {}: {e}", addr.addr),
            }
        };
        assert_eq!(server.fingerprint(), addr.fingerprint);
        match next_news(&mut rx, Duration::from_secs(20)).await {
            FeedItem::Reconnected { snapshot, after, announced } => {
                assert!(announced);
                assert!(snapshot.members.is_empty());
                assert!(after >= RECONNECT_FIRST.mul_f64(1.0 - RECONNECT_JITTER), "{after:?}");
            }
            other => panic!("{other:?}"),
        }

        // Gone for good; the reader stops while the task waits to retry:
        // the task ends at once (as on Ctrl-C).
        server.close();
        drop(server);
        assert!(matches!(next_news(&mut rx, Duration::from_secs(10)).await, FeedItem::Lost { .. }));
        drop(rx);
        tokio::time::timeout(Duration::from_secs(1), task).await.expect("the task ended").unwrap();

        // Deleted meanwhile: a refusal, final.
        let server = loop {
            match serve_rendezvous(&dir, addr.addr.port()) {
                Ok(server) => break server,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let endpoint =
            NodeEndpoint::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), Identity::generate().unwrap()).unwrap();
        let request = WatchRequest { cluster: "c".into(), token: "admin".into(), logs: true };
        let watcher = Watcher { endpoint: endpoint.clone(), addr, request };
        let (_, session) = watcher.open().await.unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let task = tokio::spawn(keep_watching(session, watcher, tx));
        let delete = DeleteClusterRequest { admin_token: "admin".into(), name: "c".into() };
        rendezvous::delete_cluster(&endpoint, addr, delete).await.unwrap();
        // Whichever way the session ends, no "reconnecting" comes first.
        match next_news(&mut rx, Duration::from_secs(20)).await {
            FeedItem::Failed(e) => assert!(!reconnectable(&e), "{e}"),
            other => panic!("{other:?}"),
        }
        tokio::time::timeout(Duration::from_secs(1), task).await.expect("the task ended").unwrap();
        server.close();
        // Once the deletion is saved, nothing writes there any more.
        for _ in 0..100 {
            if std::fs::read_to_string(&saved).is_ok_and(|s| !s.contains("\"c\"")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
