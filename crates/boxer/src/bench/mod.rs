//! `boxer bench`: one suite that measures a cluster in the NAT lab the way
//! the Boxer paper did (function-to-function throughput, RTT, connection
//! set-up, time to scale), with the alternatives in the same run:
//!
//! ```text
//!                    internet (public router, no uplink)
//!     ┌────────────┬───────────┼─────────────┬──────────────┬─────────────┐
//! rendezvous   nat-client-0  nat-server-0  nat-fresh-i   nat-rclient-0  nebula-lighthouse
//!  (embedded)      │        (port forward)   │          (symmetric)
//!              client-0      server-0      fresh-i       rclient-0 ...
//! ```
//!
//! - **Boxer direct**: `client-0` and `server-0` behind port-restricted
//!   NATs (like Lambda's), a punched path; the client is the node's program
//!   under the shim, talking to the server by name.
//! - **Boxer relayed**: `rclient-0` and `rserver-0` behind symmetric NATs:
//!   punching cannot work and the rendezvous relays.
//! - **direct**: the same two devices as Boxer direct, the client reaching
//!   unshimmed servers on `server-0` through a TCP port forward on its NAT
//!   router: the lab's physical limit.
//! - **Nebula**: the same two devices again, through Nebula (lighthouse on
//!   the public router, punchy on), when it is installed.
//!
//! Every path is measured by the same client ([`worker`]). Then the
//! elasticity runs (N nodes up until all joined and all pairs exchanged a
//! message) and the rendezvous' admission rate ([`admissions`]).

pub mod admissions;
pub mod lambda;
pub mod nebula;
pub mod report;

pub use boxer_runtime::bench_worker as worker;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::lab::{LabNet, NatKind, NatOptions};
use crate::provider::{Join, LocalProvider, NodeExit, Provider};
use crate::spec::Service;
use worker::PathResult;

/// Hello/echo port of the Boxer servers.
const PORT: u16 = 7000;
/// iperf3 port of the Boxer servers (iperf3's default).
const IPERF_PORT: u16 = 5201;
/// redis port of the Boxer servers (redis' default).
const REDIS_PORT: u16 = 6379;
/// The unshimmed servers of the direct and Nebula paths listen on the Boxer
/// ports plus this, beside the shimmed ones on the same device.
const UNSHIMMED_OFFSET: u16 = 10_000;
/// Cluster of the path measurements.
const CLUSTER: &str = "bench";
/// Most nodes the elasticity runs of one `boxer bench` may start in all.
/// Each node is a lab device behind a NAT router of its own, and every NAT
/// router is a host on the lab's internet LAN: one /24, whose addresses
/// patchbay hands out once (.2 to .254: 253 hosts), and a run's devices
/// stay in the lab until the bench ends (the lab cannot remove them). The
/// path measurements already put about 15 hosts there (the rendezvous, the
/// NAT routers of the servers, fresh peers and clients, Nebula's
/// lighthouse), and adding devices failed at about 230 hosts: 200 leaves
/// room.
const MAX_ELASTIC_NODES: u32 = 200;
/// Name of the nftables table of the direct path's port forward.
const FORWARD_TABLE: &str = "boxer_bench_forward";

/// Options of `boxer bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// A short run (under 3 minutes): shorter transfers, fewer samples, one
    /// elasticity run of 10 nodes.
    #[arg(long)]
    pub quick: bool,
    /// Where to write results.json and results.svg (default: a new
    /// directory under the system temp directory).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Seconds each iperf3 run lasts (default: 3 with --quick, else 10).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u32).range(1..=600))]
    pub seconds: Option<u32>,
    /// Node counts of the elasticity runs (default: 10 with --quick, else 10,50,100).
    #[arg(long, value_name = "N,N,...", value_delimiter = ',', value_parser = clap::value_parser!(u32).range(2..=500))]
    pub nodes: Vec<u32>,
    /// Simulated joiners of the admissions run (default: 2000 with --quick, else 20000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub joiners: Option<u32>,
    /// Leave out the Nebula column even when nebula is installed.
    #[arg(long)]
    pub no_nebula: bool,
    /// Where the Boxer nodes run: `local` (the NAT lab, every column) or
    /// `lambda` (invocations of a deployed function: the Boxer column only,
    /// with the built-in bulk test instead of iperf3 and redis-benchmark;
    /// needs --rendezvous on a host Lambda can reach; docs/benchmarks.md).
    #[arg(long, value_enum, default_value = "local")]
    pub provider: BenchProvider,
    /// With --provider lambda: the rendezvous the functions join.
    #[arg(long, value_name = "IP:PORT", requires_all = ["fingerprint", "admin_token"])]
    pub rendezvous: Option<SocketAddr>,
    /// Certificate fingerprint of --rendezvous.
    #[arg(long, value_name = "HEX")]
    pub fingerprint: Option<boxer_proto::Fingerprint>,
    /// Admin token of --rendezvous.
    #[arg(long, env = "BOXER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// With --provider lambda: the function to invoke (deployed with
    /// `boxer deploy examples/bench/boxer.toml`).
    #[arg(long, value_name = "NAME", default_value = lambda::DEFAULT_FUNCTION)]
    pub function: String,
    #[command(flatten)]
    pub aws: crate::lambda::aws::AwsArgs,
}

/// Where `boxer bench` runs the Boxer nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchProvider {
    /// Local processes in the NAT lab.
    Local,
    /// Invocations of a Lambda function.
    Lambda,
}

/// Sizes of one run, from the options.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// Seconds per iperf3 run.
    pub seconds: u32,
    /// RTT round trips.
    pub round_trips: usize,
    /// Known-peer connects.
    pub connects: usize,
    /// Requests per redis-benchmark test.
    pub redis_requests: u32,
    /// Never-contacted peers for first contact (besides the server).
    pub fresh_peers: u32,
    /// Node counts of the elasticity runs, each once, in order.
    pub nodes: Vec<u32>,
    /// Simulated joiners of the admissions run.
    pub joiners: usize,
}

impl Plan {
    /// The plan for `args`.
    pub fn new(args: &BenchArgs) -> Self {
        let quick = args.quick;
        Self {
            seconds: args.seconds.unwrap_or(if quick { 3 } else { 10 }),
            round_trips: if quick { 2_000 } else { 20_000 },
            connects: if quick { 100 } else { 500 },
            redis_requests: if quick { 20_000 } else { 100_000 },
            fresh_peers: if quick { 2 } else { 8 },
            nodes: if args.nodes.is_empty() {
                if quick { vec![10] } else { vec![10, 50, 100] }
            } else {
                // Once each, in the order given: a run's devices stay in the
                // lab under its nodes' names, so a second run of the same
                // size could not add its own.
                let mut nodes: Vec<u32> = Vec::with_capacity(args.nodes.len());
                for &n in &args.nodes {
                    if !nodes.contains(&n) {
                        nodes.push(n);
                    }
                }
                nodes
            },
            joiners: args.joiners.map_or(if quick { 2_000 } else { 20_000 }, |n| n as usize),
        }
    }
}

/// One column of the table: a path's results, or why it has none.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PathOutcome {
    /// What the client measured.
    pub result: Option<PathResult>,
    /// Why there is no result (not installed, failed to start).
    pub missing: Option<String>,
}

/// One elasticity run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ElasticRun {
    /// Nodes started.
    pub nodes: u32,
    /// Seconds to create the nodes' lab devices and NAT routers.
    pub lab_s: f64,
    /// Seconds from the start (lab set-up included) until every node had joined.
    pub all_joined_s: Option<f64>,
    /// Seconds from the start until every node had exchanged a message with every other.
    pub all_pairs_s: Option<f64>,
    /// (seconds, nodes joined) at each join.
    pub joined: Vec<(f64, u32)>,
    /// (seconds, nodes done) as nodes finished contacting every peer.
    pub ready: Vec<(f64, u32)>,
    /// Contact attempts that failed before succeeding, all nodes.
    pub retries: u64,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// Everything one `boxer bench` run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// When, Unix seconds.
    pub unix_time: u64,
    /// What ran it: CPUs, kernel, build.
    pub machine: String,
    /// Sizes.
    pub plan: Plan,
    /// Columns by name: "boxer", "boxer-relayed", "direct", "nebula".
    pub paths: BTreeMap<String, PathOutcome>,
    /// Nebula's version, or why it did not run.
    pub nebula: Result<String, String>,
    /// Elasticity runs.
    pub elastic: Vec<ElasticRun>,
    /// Rendezvous admissions.
    pub admissions: Option<admissions::AdmissionStats>,
    /// Why the admissions run failed.
    pub admissions_error: Option<String>,
    /// Seconds the whole run took.
    pub total_s: f64,
}

/// Steps shown while the suite runs: a spinner on a terminal, else one line each.
struct Progress {
    bar: indicatif::ProgressBar,
    steps: u64,
    step: u64,
    started: Instant,
}

impl Progress {
    fn new(steps: u64) -> Self {
        let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        } else {
            indicatif::ProgressBar::hidden()
        };
        Self { bar, steps, step: 0, started: Instant::now() }
    }

    /// Starts the next step.
    fn step(&mut self, what: &str) {
        self.step += 1;
        let line = format!("[{}/{}] {what}", self.step, self.steps);
        if self.bar.is_hidden() {
            eprintln!("{line} ({:.0} s)", self.started.elapsed().as_secs_f64());
        } else {
            self.bar.set_message(line);
        }
    }

    /// A line that stays (a warning, a skipped column).
    fn note(&self, text: &str) {
        self.bar.suspend(|| eprintln!("{text}"));
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// The lab, its rendezvous and the nodes of one `boxer bench` run.
struct Bench {
    lab: Arc<LabNet>,
    server: rendezvous::Rendezvous,
    rendezvous: SocketAddr,
    dir: PathBuf,
    provider: LocalProvider,
    exits: mpsc::UnboundedReceiver<NodeExit>,
    exe: PathBuf,
    /// The servers of the direct and Nebula paths, once started.
    unshimmed: Option<tokio::process::Child>,
}

/// Runs the suite; writes `results.json` and `results.svg` under the output
/// directory and prints the table.
pub async fn run(args: BenchArgs) -> anyhow::Result<Results> {
    let plan = Plan::new(&args);
    let elastic_nodes: u32 = plan.nodes.iter().sum();
    anyhow::ensure!(
        elastic_nodes <= MAX_ELASTIC_NODES,
        "--nodes {} starts {elastic_nodes} nodes in all, but the lab's internet LAN holds at most \
         {MAX_ELASTIC_NODES} nodes over all --nodes runs (each node adds a NAT router there, and \
         they stay until the bench ends): give fewer or smaller sizes, or run boxer bench once per size",
        plan.nodes.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
    );
    let dir = match &args.out {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("boxer-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating the output directory {}", dir.display()))?;
    let dir = dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))?;
    let nebula_status = if args.no_nebula { Err("left out (--no-nebula)".to_owned()) } else { nebula::available() };
    let started = Instant::now();
    // The lab, Boxer direct, Boxer relayed, direct, Nebula (or its skip),
    // one per elasticity run, and the admissions.
    let mut progress = Progress::new(5 + plan.nodes.len() as u64 + 1);
    progress.step("building the NAT lab and starting the Boxer nodes");
    let mut bench = Bench::start(&dir).await?;
    let mut paths = BTreeMap::new();
    let outcome = bench.boxer_paths(&plan, &mut progress).await;
    let (direct_ok, relayed) = match outcome {
        Ok(pair) => pair,
        Err(e) => {
            bench.stop().await;
            return Err(e);
        }
    };
    paths.insert("boxer".to_owned(), direct_ok);
    paths.insert("boxer-relayed".to_owned(), relayed);
    progress.step("direct: the same devices through a port forward on the server's NAT");
    paths.insert("direct".to_owned(), bench.direct_path(&plan).await.unwrap_or_else(failed));
    match &nebula_status {
        Ok(version) => {
            progress.step(&format!("Nebula {version}: the same devices through Nebula"));
            paths.insert("nebula".to_owned(), bench.nebula_path(&plan).await.unwrap_or_else(failed));
        }
        Err(why) => {
            progress.step("Nebula: skipped");
            progress.note(&format!("note: no Nebula column: {why}"));
            paths.insert("nebula".to_owned(), PathOutcome { result: None, missing: Some(why.clone()) });
        }
    }
    let mut elastic = Vec::new();
    for &n in &plan.nodes {
        progress.step(&format!("elasticity: {n} nodes up until every pair has exchanged a message"));
        elastic.push(bench.elastic(n).await);
    }
    bench.stop().await;
    progress.step(&format!("rendezvous admissions: {} simulated joiners", plan.joiners));
    let joiners = plan.joiners;
    let admitted = tokio::task::spawn_blocking(move || admissions::measure(joiners, 64))
        .await
        .map_err(|e| anyhow::anyhow!("the admissions run panicked: {e}"))
        .and_then(|r| r);
    let (admissions, admissions_error) = match admitted {
        Ok(stats) => (Some(stats), None),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    progress.finish();
    let results = Results {
        unix_time: worker::unix_ms(SystemTime::now()) / 1000,
        machine: machine(),
        plan,
        paths,
        nebula: nebula_status,
        elastic,
        admissions,
        admissions_error,
        total_s: started.elapsed().as_secs_f64(),
    };
    let json = dir.join("results.json");
    std::fs::write(&json, serde_json::to_vec_pretty(&results)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let svg = dir.join("results.svg");
    report::plot(&results, &svg).with_context(|| format!("drawing {}", svg.display()))?;
    print!("{}", report::table(&results));
    println!("\nresults: {}\nplot:    {}", json.display(), svg.display());
    Ok(results)
}

/// A path that could not be measured.
fn failed(e: anyhow::Error) -> PathOutcome {
    PathOutcome { result: None, missing: Some(format!("{e:#}")) }
}

/// A short description of this machine for the results.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let build = if cfg!(debug_assertions) { "debug build" } else { "release build" };
    format!("{cpus} CPUs ({model}), Linux {}, {build}", kernel.trim())
}

/// A service of the bench cluster: the worker under the runtime, not
/// isolated (so the runtime's pid is the process whose CPU and memory are
/// measured, and the worker's parent).
fn service(name: &str, replicas: u32, nat: NatKind, command: Vec<String>, dir: &Path) -> Service {
    let mut s = Service::plain(name, replicas, command);
    s.workdir = dir.to_owned();
    s.nat = Some(nat);
    s
}

impl Bench {
    /// The lab with its embedded rendezvous and the local provider.
    async fn start(dir: &Path) -> anyhow::Result<Self> {
        let lab = Arc::new(LabNet::new().await?);
        let server = rendezvous::Rendezvous::bind(rendezvous::Config {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            state_dir: dir.join("rendezvous"),
            admin_token: Some(rendezvous::registry::random_token()),
            socket: Some(LabNet::udp_socket(lab.rendezvous(), 0)?),
            persist: false,
            limits: rendezvous::limits::Limits::default(),
        })
        .with_context(|| format!("starting the rendezvous in {}", dir.join("rendezvous").display()))?;
        let mut addr = server.local_addr()?;
        addr.set_ip(lab.rendezvous_ip()?.into());
        tokio::spawn(server.clone().run());
        let (provider, exits) = LocalProvider::new(dir.join("state"), Some((lab.clone(), NatKind::Moderate)))?;
        let exe = std::env::current_exe().context("locating the boxer executable")?;
        Ok(Self { lab, server, rendezvous: addr, dir: dir.to_owned(), provider, exits, exe, unshimmed: None })
    }

    /// Creates cluster `name` on the rendezvous; how nodes join it.
    fn cluster(&self, name: &str) -> anyhow::Result<Join> {
        let admin = self.server.admin_token().to_owned();
        let info = self
            .server
            .registry()
            .lock()
            .map_err(|_| anyhow::anyhow!("the rendezvous registry is poisoned"))?
            .create_cluster(boxer_proto::control::CreateClusterRequest {
                admin_token: admin,
                name: name.to_owned(),
                network: None,
                join_token: None,
            })
            .map_err(|e| anyhow::anyhow!("creating cluster {name}: {e:?}"))?;
        Ok(Join {
            rendezvous: self.rendezvous,
            fingerprint: self.server.fingerprint().to_string(),
            cluster: name.to_owned(),
            token: info.join_token,
        })
    }

    /// Members of `cluster` with the ports they listen on.
    fn listening(&self, cluster: &str) -> BTreeMap<String, Vec<u16>> {
        let Ok(mut registry) = self.server.registry().lock() else { return BTreeMap::new() };
        let request = boxer_proto::control::WatchRequest {
            cluster: cluster.to_owned(),
            token: self.server.admin_token().to_owned(),
            logs: false,
        };
        match registry.watch(&request) {
            Ok((snapshot, _feed)) => snapshot.members.iter().map(|m| (m.replica_name(), m.listening.clone())).collect(),
            Err(_) => BTreeMap::new(),
        }
    }

    /// Waits until every `(node, port)` is listening in `cluster`.
    async fn wait_listening(&mut self, cluster: &str, want: &[(String, u16)], within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let now = self.listening(cluster);
            let missing: Vec<String> = want
                .iter()
                .filter(|(node, port)| !now.get(node).is_some_and(|ports| ports.contains(port)))
                .map(|(node, port)| format!("{node}:{port}"))
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if let Ok(exit) = self.exits.try_recv() {
                self.provider.exited(&exit.node);
                anyhow::bail!(
                    "{} ended with code {} before listening: {}",
                    exit.node,
                    exit.code,
                    exit.detail.join("; ")
                );
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "not listening after {} s: {} (runtime logs under {})",
                within.as_secs(),
                missing.join(", "),
                self.dir.join("state/nodes").display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `boxer bench-worker ARGS…` as a node's command.
    fn worker(&self, args: &[String]) -> Vec<String> {
        let mut cmd = vec![self.exe.display().to_string(), "bench-worker".to_owned()];
        cmd.extend(args.iter().cloned());
        cmd
    }

    /// Waits for node `name` to end; its exit.
    async fn wait_exit(&mut self, name: &str, within: Duration) -> anyhow::Result<NodeExit> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.exits.recv()).await {
                Ok(Some(exit)) if exit.node == name => {
                    self.provider.exited(name);
                    return Ok(exit);
                }
                Ok(Some(exit)) => {
                    self.provider.exited(&exit.node);
                    tracing::warn!(node = %exit.node, code = exit.code, "a bench node ended early");
                }
                Ok(None) => anyhow::bail!("the provider ended"),
                Err(_) => anyhow::bail!("{name} did not finish within {} s", within.as_secs()),
            }
        }
    }

    /// Boxer direct and relayed: servers, fresh peers, then each client as
    /// a node program; returns both columns.
    async fn boxer_paths(
        &mut self,
        plan: &Plan,
        progress: &mut Progress,
    ) -> anyhow::Result<(PathOutcome, PathOutcome)> {
        let join = self.cluster(CLUSTER)?;
        let full_server = self.worker(&[
            "serve".into(),
            "--port".into(),
            PORT.to_string(),
            "--iperf-port".into(),
            IPERF_PORT.to_string(),
            "--redis-port".into(),
            REDIS_PORT.to_string(),
        ]);
        let hello_only = self.worker(&["serve".into(), "--port".into(), PORT.to_string()]);
        let relay_server = self.worker(&[
            "serve".into(),
            "--port".into(),
            PORT.to_string(),
            "--iperf-port".into(),
            IPERF_PORT.to_string(),
        ]);
        let servers = [
            service("server", 1, NatKind::Moderate, full_server, &self.dir),
            service("fresh", plan.fresh_peers, NatKind::Moderate, hello_only, &self.dir),
            service("rserver", 1, NatKind::Strict, relay_server, &self.dir),
        ];
        let mut want = Vec::new();
        for s in &servers {
            for i in 0..s.replicas {
                self.provider.launch(&join, s, i).await?;
                want.push((format!("{}-{i}", s.name), PORT));
            }
        }
        want.push(("server-0".into(), IPERF_PORT));
        want.push(("server-0".into(), REDIS_PORT));
        want.push(("rserver-0".into(), IPERF_PORT));
        self.wait_listening(CLUSTER, &want, Duration::from_secs(60)).await?;
        // The client devices exist before the clients start: the direct and
        // Nebula paths reuse client-0's.
        progress.step("Boxer direct: punched path between two port-restricted NATs");
        let fresh: Vec<String> = (0..plan.fresh_peers).map(|i| format!("fresh-{i}")).collect();
        let server_pid = self.provider.pid("server-0").map(|p| p.to_string()).unwrap_or_default();
        let direct = self
            .client_node(&join, "client", NatKind::Moderate, "server-0", &fresh, plan, false, &server_pid)
            .await
            .unwrap_or_else(failed);
        progress.step("Boxer relayed: symmetric NATs, through the rendezvous");
        let rserver_pid = self.provider.pid("rserver-0").map(|p| p.to_string()).unwrap_or_default();
        let relayed = self
            .client_node(&join, "rclient", NatKind::Strict, "rserver-0", &[], plan, true, &rserver_pid)
            .await
            .unwrap_or_else(failed);
        Ok((direct, relayed))
    }

    /// Runs the client as node `<name>-0`'s program and reads its results.
    #[allow(clippy::too_many_arguments)]
    async fn client_node(
        &mut self,
        join: &Join,
        name: &str,
        nat: NatKind,
        target: &str,
        fresh: &[String],
        plan: &Plan,
        relayed: bool,
        server_pid: &str,
    ) -> anyhow::Result<PathOutcome> {
        let out = self.dir.join(format!("{name}.json"));
        let _ = std::fs::remove_file(&out);
        let mut args = vec!["client".to_owned()];
        args.extend(client_args(target, PORT, plan, &out));
        args.push("--iperf-port".into());
        args.push(IPERF_PORT.to_string());
        if relayed {
            args.push("--one-stream".into());
        } else {
            args.push("--redis-port".into());
            args.push(REDIS_PORT.to_string());
            if !fresh.is_empty() {
                args.push("--fresh".into());
                args.push(fresh.join(","));
            }
        }
        args.push("--parent".into());
        if !server_pid.is_empty() {
            args.push("--pids".into());
            args.push(server_pid.to_owned());
        }
        let node = format!("{name}-0");
        let svc = service(name, 1, nat, self.worker(&args), &self.dir);
        self.provider.launch(join, &svc, 0).await?;
        let exit = match self.wait_exit(&node, client_budget(plan)).await {
            Ok(exit) => exit,
            Err(e) => {
                // Not left running into the next measurement.
                self.kill_nodes(std::slice::from_ref(&node)).await;
                return Err(e);
            }
        };
        read_result(&out).with_context(|| format!("{node} exited with code {}: {}", exit.code, exit.detail.join("; ")))
    }

    /// The direct path: unshimmed servers on server-0 behind a port forward
    /// on its NAT router, the client unshimmed on client-0.
    async fn direct_path(&mut self, plan: &Plan) -> anyhow::Result<PathOutcome> {
        let router = self.lab.router("nat-server-0").context("the lab has no router nat-server-0")?;
        let server = self.lab.device("server-0").context("the lab has no device server-0")?;
        let server_ip = server.ip().context("server-0 has no address")?;
        let public = router.uplink_ip().context("nat-server-0 has no public address")?;
        let ports: Vec<String> =
            [PORT, IPERF_PORT, REDIS_PORT].iter().map(|p| (p + UNSHIMMED_OFFSET).to_string()).collect();
        // DNAT the ports to server-0, and let those flows through the NAT's
        // inbound filter (which drops anything not established); only TCP,
        // so the NAT's UDP behaviour, and with it Boxer's path, is unchanged.
        LabNet::nft(
            &router,
            &format!(
                "table ip {FORWARD_TABLE} {{
    chain prerouting {{
        type nat hook prerouting priority dstnat - 1; policy accept;
        tcp dport {{ {} }} dnat to {server_ip}
    }}
}}
insert rule ip filter forward meta l4proto tcp ct status dnat accept
",
                ports.join(", ")
            ),
        )
        .context("installing the port forward on nat-server-0")?;
        self.unshimmed_servers().await?;
        self.unshimmed_client(&public.to_string(), plan, "direct", &[]).await
    }

    /// Starts the unshimmed servers on server-0 (once; shared by the direct
    /// and Nebula paths).
    async fn unshimmed_servers(&mut self) -> anyhow::Result<()> {
        if self.unshimmed.is_some() {
            return Ok(());
        }
        let server = self.lab.device("server-0").context("the lab has no device server-0")?;
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.args(["bench-worker", "serve", "--port"])
            .arg((PORT + UNSHIMMED_OFFSET).to_string())
            .arg("--iperf-port")
            .arg((IPERF_PORT + UNSHIMMED_OFFSET).to_string())
            .arg("--redis-port")
            .arg((REDIS_PORT + UNSHIMMED_OFFSET).to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true);
        let mut child = server.spawn_command(cmd).context("starting the unshimmed servers on server-0")?;
        // Kept only once they listen: a later call (the Nebula path after a
        // failed direct one) then tries again instead of going on without.
        match wait_unshimmed(&server, &mut child).await {
            Ok(()) => {
                self.unshimmed = Some(child);
                Ok(())
            }
            Err(e) => {
                let _ = child.kill().await;
                Err(e)
            }
        }
    }

    /// Runs the client unshimmed on client-0 against `target`.
    async fn unshimmed_client(
        &mut self,
        target: &str,
        plan: &Plan,
        label: &str,
        pids: &[u32],
    ) -> anyhow::Result<PathOutcome> {
        let client = self.lab.device("client-0").context("the lab has no device client-0")?;
        let out = self.dir.join(format!("{label}.json"));
        let _ = std::fs::remove_file(&out);
        let mut args = client_args(target, PORT + UNSHIMMED_OFFSET, plan, &out);
        args.extend([
            "--iperf-port".into(),
            (IPERF_PORT + UNSHIMMED_OFFSET).to_string(),
            "--redis-port".into(),
            (REDIS_PORT + UNSHIMMED_OFFSET).to_string(),
        ]);
        if !pids.is_empty() {
            args.push("--pids".into());
            args.push(pids.iter().map(u32::to_string).collect::<Vec<_>>().join(","));
        }
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("bench-worker")
            .arg("client")
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let child = client.spawn_command(cmd).with_context(|| format!("starting the {label} client on client-0"))?;
        let output =
            tokio::time::timeout(client_budget(plan), child.wait_with_output()).await.with_context(|| {
                format!("the {label} client did not finish within {} s", client_budget(plan).as_secs())
            })??;
        read_result(&out).with_context(|| {
            format!(
                "the {label} client exited with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )
        })
    }

    /// Nebula on client-0 and server-0, then the client through it.
    async fn nebula_path(&mut self, plan: &Plan) -> anyhow::Result<PathOutcome> {
        self.unshimmed_servers().await?;
        let client = self.lab.device("client-0").context("the lab has no device client-0")?;
        let server = self.lab.device("server-0").context("the lab has no device server-0")?;
        let net = nebula::NebulaNet::start(
            &self.lab,
            &self.dir.join("nebula"),
            &[("client-0", &client), ("server-0", &server)],
        )
        .await?;
        let target = net.ip("server-0").context("nebula gave server-0 no address")?;
        let pids: Vec<u32> = ["client-0", "server-0"].iter().filter_map(|n| net.pid(n)).collect();
        let outcome = self.unshimmed_client(&target.to_string(), plan, "nebula", &pids).await;
        drop(net);
        outcome
    }

    /// Starts `n` mesh nodes and times them until every node joined and
    /// every pair exchanged a message; then stops them, whatever the outcome
    /// (a failed run's nodes would otherwise go on beside the next run's).
    async fn elastic(&mut self, n: u32) -> ElasticRun {
        let mut run = ElasticRun { nodes: n, ..Default::default() };
        let name = format!("e{n}");
        let outcome = self.elastic_run(n, &name, &mut run).await;
        self.stop_nodes(&name, n).await;
        if let Err(e) = outcome {
            run.error = Some(format!("{e:#}"));
        }
        run
    }

    /// One elasticity run of `n` nodes of service `name`, into `run`; leaves
    /// the nodes running.
    async fn elastic_run(&mut self, n: u32, name: &str, run: &mut ElasticRun) -> anyhow::Result<()> {
        let cluster = format!("elastic-{n}");
        let prefix = format!("{name}-");
        let join = self.cluster(&cluster)?;
        let out = self.dir.join(&cluster);
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        let command = self.worker(&[
            "mesh".into(),
            "--service".into(),
            name.to_owned(),
            "--count".into(),
            n.to_string(),
            "--port".into(),
            PORT.to_string(),
            "--out".into(),
            out.display().to_string(),
        ]);
        let svc = service(name, n, NatKind::Moderate, command, &self.dir);
        let start = Instant::now();
        let start_unix = worker::unix_ms(SystemTime::now());
        let devices: Vec<(String, NatOptions)> =
            (0..n).map(|i| (format!("{name}-{i}"), NatOptions::new(NatKind::Moderate))).collect();
        self.lab.add_nodes(&devices).await?;
        run.lab_s = start.elapsed().as_secs_f64();
        for i in 0..n {
            self.provider.launch(&join, &svc, i).await?;
        }
        let deadline = start + elastic_budget(n);
        let mut ready = BTreeMap::new();
        let mut joined_count = 0;
        loop {
            let members = self.members(&cluster);
            let t = start.elapsed().as_secs_f64();
            if members > joined_count {
                joined_count = members;
                run.joined.push((t, members));
                if members == n && run.all_joined_s.is_none() {
                    run.all_joined_s = Some(t);
                }
            }
            for i in 0..n {
                let node = format!("{name}-{i}");
                if ready.contains_key(&node) {
                    continue;
                }
                if let Ok(text) = std::fs::read(out.join(format!("{node}.json")))
                    && let Ok(r) = serde_json::from_slice::<worker::MeshReady>(&text)
                {
                    ready.insert(node, r);
                }
            }
            if ready.len() as u32 == n {
                break;
            }
            while let Ok(exit) = self.exits.try_recv() {
                self.provider.exited(&exit.node);
                // A node of another run (one that outlived its stop) is not
                // this run's failure.
                if exit.node.starts_with(&prefix) {
                    anyhow::bail!("{} ended with code {}: {}", exit.node, exit.code, exit.detail.join("; "));
                }
                tracing::warn!(node = %exit.node, code = exit.code, "a node of another run ended");
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "{} of {n} nodes joined and {} had reached every peer after {} s",
                    joined_count,
                    ready.len(),
                    elastic_budget(n).as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut times: Vec<f64> =
            ready.values().map(|r| r.ready_unix_ms.saturating_sub(start_unix) as f64 / 1000.0).collect();
        times.sort_by(f64::total_cmp);
        run.ready = times.iter().enumerate().map(|(i, t)| (*t, i as u32 + 1)).collect();
        run.all_pairs_s = times.last().copied();
        run.retries = ready.values().map(|r| r.retries).sum();
        Ok(())
    }

    /// Members `cluster` has now.
    fn members(&self, cluster: &str) -> u32 {
        self.server
            .registry()
            .lock()
            .map(|r| r.clusters().into_iter().find(|(c, _)| c == cluster).map_or(0, |(_, n)| n as u32))
            .unwrap_or(0)
    }

    /// Stops every node of the run (SIGTERM, then SIGKILL after the grace).
    async fn stop(&mut self) {
        self.provider.stop_all(false);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.provider.running() > 0 {
            match tokio::time::timeout_at(deadline, self.exits.recv()).await {
                Ok(Some(exit)) => self.provider.exited(&exit.node),
                _ => break,
            }
        }
        self.provider.stop_all(true);
        if let Some(mut child) = self.unshimmed.take() {
            let _ = child.kill().await;
        }
        self.server.close();
    }

    /// Stops the nodes `<service>-0..n` of an elasticity run.
    async fn stop_nodes(&mut self, service: &str, n: u32) {
        let nodes: Vec<String> = (0..n).map(|i| format!("{service}-{i}")).collect();
        self.kill_nodes(&nodes).await;
    }

    /// Kills those of `nodes` still running (SIGKILL) and waits, up to 10 s,
    /// until the provider reported each one's exit.
    async fn kill_nodes(&mut self, nodes: &[String]) {
        let mut left: BTreeSet<&str> = BTreeSet::new();
        for node in nodes {
            if let Some(pid) = self.provider.pid(node) {
                // SAFETY: kill(2) on a runtime this process started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                left.insert(node);
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !left.is_empty() {
            match tokio::time::timeout_at(deadline, self.exits.recv()).await {
                Ok(Some(exit)) => {
                    self.provider.exited(&exit.node);
                    left.remove(exit.node.as_str());
                }
                _ => break,
            }
        }
    }
}

/// Waits until the unshimmed servers (`child`, on `server`) listen on each
/// of their ports, reached from inside the device's namespace.
async fn wait_unshimmed(server: &patchbay::Device, child: &mut tokio::process::Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    for port in [PORT, IPERF_PORT, REDIS_PORT] {
        let port = port + UNSHIMMED_OFFSET;
        loop {
            let up = server
                .run_sync(move || Ok(std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok()))
                .unwrap_or(false);
            if up {
                break;
            }
            if let Some(status) = child.try_wait().context("waiting for the unshimmed servers on server-0")? {
                anyhow::bail!("the unshimmed servers on server-0 exited with {status} before listening on {port}");
            }
            anyhow::ensure!(Instant::now() < deadline, "the unshimmed server on server-0 is not listening on {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// The client's arguments common to every path.
fn client_args(target: &str, port: u16, plan: &Plan, out: &Path) -> Vec<String> {
    vec![
        "--target".into(),
        target.to_owned(),
        "--port".into(),
        port.to_string(),
        "--seconds".into(),
        plan.seconds.to_string(),
        "--round-trips".into(),
        plan.round_trips.to_string(),
        "--connects".into(),
        plan.connects.to_string(),
        "--redis-requests".into(),
        plan.redis_requests.to_string(),
        "--out".into(),
        out.display().to_string(),
    ]
}

/// Longest one client may run: the sum of what the worker gives each of
/// its workloads, so that one that hangs until the worker gives up on it
/// still leaves the client time to end (and write what the others
/// measured) before it is killed:
///
/// - first contact with the server and each fresh peer, up to
///   [`FIRST_CONTACT_S`] each;
/// - the known-peer connects and the RTT round trips: [`CONNECTS_AND_RTT_S`];
/// - 4 iperf3 runs (1 and 4 streams, each way), each up to its seconds
///   plus the worker's 30 s slack;
/// - redis-benchmark: up to 4 minutes plus the same slack.
fn client_budget(plan: &Plan) -> Duration {
    const TOOL_SLACK_S: u64 = 30;
    let contacts = (1 + u64::from(plan.fresh_peers)) * FIRST_CONTACT_S;
    let iperf = 4 * (u64::from(plan.seconds) + TOOL_SLACK_S);
    let redis = 4 * 60 + TOOL_SLACK_S;
    Duration::from_secs(contacts + CONNECTS_AND_RTT_S + iperf + redis)
}

/// Longest a first contact with one peer may take in the worker (its
/// timeout for the first byte back).
const FIRST_CONTACT_S: u64 = 15;

/// Room for the known-peer connects and the RTT round trips (a few
/// seconds each in a full run; more on a loaded machine).
const CONNECTS_AND_RTT_S: u64 = 90;

/// Longest an elasticity run of `n` nodes may take.
fn elastic_budget(n: u32) -> Duration {
    Duration::from_secs(60 + u64::from(n) * 2)
}

/// A client's results file.
fn read_result(path: &Path) -> anyhow::Result<PathOutcome> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let result: PathResult = serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(PathOutcome { result: Some(result), missing: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `boxer bench ARGS…`'s options.
    fn args(line: &[&str]) -> BenchArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let argv = std::iter::once("bench").chain(line.iter().copied());
        <Cli as clap::Parser>::try_parse_from(argv).unwrap().bench
    }

    #[test]
    fn node_counts_are_kept_once_in_order() {
        assert_eq!(Plan::new(&args(&["--nodes", "50,10,50,10,20"])).nodes, vec![50, 10, 20]);
        assert_eq!(Plan::new(&args(&[])).nodes, vec![10, 50, 100]);
        assert_eq!(Plan::new(&args(&["--quick"])).nodes, vec![10]);
    }

    #[test]
    fn the_default_runs_fit_in_the_lab() {
        assert!(Plan::new(&args(&[])).nodes.iter().sum::<u32>() <= MAX_ELASTIC_NODES);
    }

    #[test]
    fn a_client_has_time_for_every_workload() {
        let plan = Plan::new(&args(&["--seconds", "10"]));
        // 4 iperf3 runs with their slack, redis-benchmark with its own, and
        // more than nothing for the rest.
        let tools = 4 * (10 + 30) + (4 * 60 + 30);
        assert!(client_budget(&plan).as_secs() > tools + 60, "{:?}", client_budget(&plan));
    }

    fn results(elastic: Vec<ElasticRun>, admissions: Option<admissions::AdmissionStats>) -> Results {
        Results {
            unix_time: 0,
            machine: String::new(),
            plan: Plan::new(&args(&[])),
            paths: BTreeMap::new(),
            nebula: Err("left out".into()),
            elastic,
            admissions,
            admissions_error: None,
            total_s: 0.0,
        }
    }

    fn target(results: &Results, what: &str) -> report::Target {
        report::targets(results).into_iter().find(|t| t.what.starts_with(what)).unwrap()
    }

    #[test]
    fn the_hundred_node_target_shows_the_time_without_the_lab() {
        let run = ElasticRun { nodes: 100, lab_s: 1.25, all_pairs_s: Some(4.5), ..Default::default() };
        let t = target(&results(vec![run], None), "100 nodes");
        assert_eq!(t.met, Some(true));
        assert!(
            t.measured.contains("4.50 s") && t.measured.contains("3.25 s after the lab's 1.25 s"),
            "{}",
            t.measured
        );
        let t = target(&results(vec![], None), "100 nodes");
        assert_eq!(t.met, None);
    }

    #[test]
    fn the_admissions_target_counts_all_of_the_rendezvous_cpu() {
        let stats = admissions::AdmissionStats {
            joiners: 100,
            concurrency: 8,
            client_threads: 2,
            seconds: 1.0,
            admissions_per_sec: 100.0,
            server_cpu_seconds: 0.009,
            server_io_cpu_seconds: 0.002,
            server_busy: 0.009,
            admissions_per_server_cpu_sec: 11_111.0,
            admissions_per_server_total_cpu_sec: 9_091.0,
            join_p50_ms: 1.0,
            join_p99_ms: 2.0,
            join_max_ms: 3.0,
            registry_joins: 20_000,
            registry_admissions_per_sec: 80_000.0,
            debug_build: false,
            state_dir: String::new(),
        };
        let t = target(&results(vec![], Some(stats)), "rendezvous admissions");
        assert_eq!(t.met, Some(false), "the thread alone is above 10k/s, the whole server is not");
        assert!(t.measured.starts_with("9091/s per CPU-second of the rendezvous"), "{}", t.measured);
        assert!(t.measured.contains("11111/s per CPU-second of its thread alone"), "{}", t.measured);
    }
}
