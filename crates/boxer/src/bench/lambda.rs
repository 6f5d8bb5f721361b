//! `boxer bench --provider lambda`: the Boxer column of the suite on Lambda
//! functions, with the paper's table: function-to-function throughput, RTT,
//! connection set-up, and the time from the first invoke until N functions
//! are ready.
//!
//! Every node is one invocation of a deployed function (through the same
//! [`LambdaProvider`] as `boxer up --provider lambda`), joined to a
//! rendezvous the functions can reach. The worker is the function's own
//! runtime binary (`bootstrap bench-worker …`, see [`super::worker`]), so
//! any function `boxer deploy` made can be measured; a function has no
//! iperf3 or redis, so bulk throughput comes from the worker's built-in test
//! and there is no redis row. Results come back through the cluster's
//! output: the client prints one line ([`worker::RESULT_LINE`]), each mesh
//! member one line when it has reached every peer ([`worker::MESH_LINE`]),
//! and this process reads them from the rendezvous' watch session, as
//! `boxer up` shows a node's output. Times are taken on this machine's
//! clock, as the lines and membership events arrive, so the functions'
//! clocks do not matter.
//!
//! Two phases, each its own cluster (deleted at the end, which stops its
//! invocations):
//! 1. **Paths**: `server-0` (echo and bulk servers), `fresh-i` (echo
//!    servers never contacted before the client's first-contact samples)
//!    and `client-0`, which waits (through the rendezvous, without contact)
//!    until they listen, then measures.
//! 2. **Elasticity** for each N: N mesh members invoked at once; the time
//!    from the first invoke until all joined and until every pair talked.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use boxer_net::rendezvous::{self, RendezvousAddr, RendezvousError};
use boxer_net::{Identity, NodeEndpoint};
use boxer_proto::control::{CreateClusterRequest, DeleteClusterRequest, ServerMessage, Stream, WatchRequest};
use boxer_proto::membership::MemberChange;
use serde::Serialize;
use tokio::sync::mpsc;

use super::worker::{self, MeshReady, PathResult};
use super::{BenchArgs, ElasticRun, PathOutcome, Plan};
use crate::interrupt::Interrupt;
use crate::lambda::invoke::{LambdaOptions, LambdaProvider};
use crate::provider::{Join, NodeExit, Provider};
use crate::spec::{LambdaSpec, Service, Spec};

/// The function `boxer bench --provider lambda` invokes unless told
/// otherwise: the one `boxer deploy examples/bench/boxer.toml` creates.
pub const DEFAULT_FUNCTION: &str = "boxer-bench";

/// The worker inside a function: the runtime binary itself, which the
/// runtime finds first on the program's `PATH` (the task root).
const WORKER: &str = "bootstrap";
/// Echo port of the servers (first byte, RTT, mesh contacts).
const PORT: u16 = 7000;
/// Bulk port of the server.
const BULK_PORT: u16 = 7001;
/// Longest the nodes of one phase may take to be invoked, start, join and
/// listen: cold starts take about a second on Lambda, throttled invokes
/// are retried for minutes ([`LambdaProvider`]), so generous.
const START_BUDGET: Duration = Duration::from_secs(180);
/// How long the client's result line may trail its invocation's answer
/// (both leave the function within milliseconds, by different routes).
const RESULT_GRACE: Duration = Duration::from_secs(3);
/// How often a long elasticity run says how far it got.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Lines of a node's output kept to explain a failure.
const KEPT_LINES: usize = 20;

/// Everything one `boxer bench --provider lambda` run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LambdaResults {
    /// When, Unix seconds.
    pub unix_time: u64,
    /// The function invoked.
    pub function: String,
    /// The rendezvous the functions joined.
    pub rendezvous: SocketAddr,
    /// Sizes.
    pub plan: Plan,
    /// The Boxer path between two functions (`bulk` instead of `iperf`,
    /// no redis).
    pub boxer: PathOutcome,
    /// Elasticity runs (`lab_s` is 0: no lab; times from the first invoke).
    pub elastic: Vec<ElasticRun>,
    /// The provider's closing lines: invocations, billed time, cost.
    pub cost: Vec<String>,
    /// Seconds the whole run took.
    pub total_s: f64,
}

/// What the watch task hands on: messages in order, then the end.
type Feed = mpsc::Receiver<Result<ServerMessage, RendezvousError>>;

/// One phase's cluster on the rendezvous, with its watch session.
struct Phase {
    name: String,
    join: Join,
    feed: Feed,
    /// The nodes invoked and not yet returned.
    running: Vec<String>,
    /// Last lines of each node's output.
    output: BTreeMap<String, VecDeque<String>>,
}

impl Phase {
    /// Keeps `line` of `node` for [`Phase::explain`].
    fn keep(&mut self, node: &str, line: &str) {
        let lines = self.output.entry(node.to_owned()).or_default();
        lines.push_back(line.to_owned());
        if lines.len() > KEPT_LINES {
            lines.pop_front();
        }
    }

    /// `node`'s last lines, for an error.
    fn explain(&self, node: &str) -> String {
        match self.output.get(node) {
            Some(lines) if !lines.is_empty() => {
                format!("; its last output: {}", lines.iter().cloned().collect::<Vec<_>>().join(" | "))
            }
            _ => String::new(),
        }
    }
}

/// The rendezvous, the provider and what has been invoked.
struct LambdaBench {
    endpoint: NodeEndpoint,
    addr: RendezvousAddr,
    admin_token: String,
    provider: LambdaProvider,
    exits: mpsc::UnboundedReceiver<NodeExit>,
    interrupt: Interrupt,
    /// Prefix of this run's cluster names.
    run_id: String,
}

/// Runs the Boxer column on Lambda; writes `results.json` and
/// `results.svg` under the output directory and prints the table.
pub async fn run(args: BenchArgs) -> anyhow::Result<LambdaResults> {
    let (Some(rendezvous), Some(fingerprint), Some(admin_token)) =
        (args.rendezvous, args.fingerprint, args.admin_token.clone())
    else {
        anyhow::bail!(
            "--provider lambda needs a rendezvous that Lambda functions can reach: run `rendezvous-server` on a host \
             with a public UDP port (docs/lambda.md) and pass --rendezvous IP:PORT --fingerprint HEX --admin-token TOKEN"
        );
    };
    anyhow::ensure!(
        !rendezvous.ip().is_loopback() && !rendezvous.ip().is_unspecified(),
        "--rendezvous {rendezvous}: Lambda functions cannot reach a loopback or unspecified address; give the \
         rendezvous host's public IP"
    );
    crate::lambda::validate_function_name(&args.function).map_err(|e| anyhow::anyhow!("--function: {e}"))?;
    let plan = Plan::new(&args);
    if args.joiners.is_some() {
        eprintln!("note: --joiners is for the local run (the rendezvous' admissions); ignored on Lambda");
    }
    let dir = match &args.out {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("boxer-bench-lambda-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating the output directory {}", dir.display()))?;
    let started = Instant::now();
    let mut bench = LambdaBench::start(&args, rendezvous, fingerprint, admin_token, &dir).await?;
    let timeout = bench.provider.function_timeout();
    // The client's workloads alone take 4 bulk runs of --seconds, plus the
    // connects and round trips: a function stopped at its timeout before
    // that would only fail late.
    let least = Duration::from_secs(u64::from(plan.seconds) * 4 + 60);
    anyhow::ensure!(
        least < timeout,
        "function {}'s timeout ({} s) is shorter than the client needs (about {} s with --seconds {}): lower \
         --seconds or raise the timeout (`timeout` in [lambda], then boxer deploy)",
        args.function,
        timeout.as_secs(),
        least.as_secs(),
        plan.seconds
    );
    let steps = 1 + plan.nodes.len();
    eprintln!("[1/{steps}] Boxer between two functions: bulk TCP, RTT, connect times (function {})", args.function);
    let boxer = match bench.paths(&plan).await {
        Ok(result) => PathOutcome { result: Some(result), missing: None },
        Err(e) if e.is::<Interrupted>() => return Err(e),
        Err(e) => {
            eprintln!("the path measurement failed: {e:#}");
            PathOutcome { result: None, missing: Some(format!("{e:#}")) }
        }
    };
    let mut elastic = Vec::new();
    for (i, &n) in plan.nodes.iter().enumerate() {
        eprintln!("[{}/{steps}] elasticity: {n} functions invoked at once until every pair has talked", i + 2);
        let mut run = ElasticRun { nodes: n, ..Default::default() };
        if let Err(e) = bench.elastic(n, &mut run).await {
            if e.is::<Interrupted>() {
                return Err(e);
            }
            run.error = Some(format!("{e:#}"));
        }
        elastic.push(run);
    }
    let results = LambdaResults {
        unix_time: worker::unix_ms(SystemTime::now()) / 1000,
        function: args.function.clone(),
        rendezvous,
        plan,
        boxer,
        elastic,
        cost: bench.provider.summary(),
        total_s: started.elapsed().as_secs_f64(),
    };
    let json = dir.join("results.json");
    std::fs::write(&json, serde_json::to_vec_pretty(&results)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let svg = dir.join("results.svg");
    super::report::plot_elastic(&results.elastic, "functions ready after the first invoke (Lambda)", &svg)
        .with_context(|| format!("drawing {}", svg.display()))?;
    print!("{}", table(&results));
    println!("\nresults: {}\nplot:    {}", json.display(), svg.display());
    Ok(results)
}

/// The run was interrupted (Ctrl-C, SIGTERM); its clusters are deleted.
#[derive(Debug, thiserror::Error)]
#[error("interrupted: the bench's clusters were deleted, which stops their invocations")]
pub struct Interrupted;

impl LambdaBench {
    async fn start(
        args: &BenchArgs,
        rendezvous: SocketAddr,
        fingerprint: boxer_proto::Fingerprint,
        admin_token: String,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        // The provider has no spec to take defaults from: the function is named.
        let spec = Spec {
            path: PathBuf::from("boxer bench"),
            name: "bench".to_owned(),
            network: None,
            services: vec![],
            lambda: LambdaSpec::default(),
        };
        let options =
            LambdaOptions { aws: args.aws.clone(), function: Some(args.function.clone()), price_per_gb_second: None };
        let (provider, exits) = LambdaProvider::new(options, &spec, dir).await?;
        let endpoint = NodeEndpoint::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), Identity::generate()?)
            .context("opening a UDP socket for the rendezvous")?;
        Ok(Self {
            endpoint,
            addr: RendezvousAddr { addr: rendezvous, fingerprint },
            admin_token,
            provider,
            exits,
            interrupt: Interrupt::new(
                "interrupted again: exiting (invocations still running end at the function's timeout)",
            )?,
            run_id: format!("bench-{}", &::rendezvous::registry::random_token()[..8]),
        })
    }

    /// Creates cluster `<run>-<suffix>` and watches its membership and output.
    async fn phase(&self, suffix: &str) -> anyhow::Result<Phase> {
        if self.interrupt.fired() {
            return Err(Interrupted.into());
        }
        let name = format!("{}-{suffix}", self.run_id);
        let info = rendezvous::create_cluster(
            &self.endpoint,
            self.addr,
            CreateClusterRequest {
                admin_token: self.admin_token.clone(),
                name: name.clone(),
                network: None,
                join_token: None,
            },
        )
        .await
        .with_context(|| format!("creating cluster {name} on rendezvous {}", self.addr.addr))?;
        let request = WatchRequest { cluster: name.clone(), token: self.admin_token.clone(), logs: true };
        let (_, mut session) = rendezvous::watch(&self.endpoint, self.addr, request)
            .await
            .with_context(|| format!("watching cluster {name} on rendezvous {}", self.addr.addr))?;
        // Frame reads are not cancel-safe: one task reads, the bench selects on a channel.
        let (tx, feed) = mpsc::channel(1024);
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    () = tx.closed() => return,
                    msg = session.next() => msg,
                };
                let end = msg.is_err();
                if tx.send(msg).await.is_err() || end {
                    return;
                }
            }
        });
        let join = Join {
            rendezvous: self.addr.addr,
            fingerprint: self.addr.fingerprint.to_string(),
            cluster: name.clone(),
            token: info.join_token,
        };
        Ok(Phase { name, join, feed, running: Vec::new(), output: BTreeMap::new() })
    }

    /// Invokes replica `index` of `service` in `phase`.
    async fn launch(&mut self, phase: &mut Phase, service: &Service, index: u32) -> anyhow::Result<()> {
        if self.interrupt.fired() {
            eprintln!("interrupted: deleting the bench's cluster {} (its invocations stop)", phase.name);
            self.end(phase).await;
            return Err(Interrupted.into());
        }
        self.provider.launch(&phase.join, service, index).await?;
        phase.running.push(boxer_proto::names::replica_name(&service.name, index));
        Ok(())
    }

    /// The next thing that happens in `phase`: a message, an invocation
    /// that returned, or the end of the wait.
    async fn next(&mut self, phase: &mut Phase, deadline: tokio::time::Instant) -> anyhow::Result<Happened> {
        tokio::select! {
            msg = phase.feed.recv() => match msg {
                Some(Ok(msg)) => Ok(Happened::Message(msg)),
                Some(Err(e)) => Err(anyhow::anyhow!("the rendezvous' watch session of cluster {} ended: {e}", phase.name)),
                None => Err(anyhow::anyhow!("the rendezvous' watch session of cluster {} ended", phase.name)),
            },
            exit = self.exits.recv() => match exit {
                Some(exit) => {
                    self.provider.exited(&exit.node);
                    // A late answer of an earlier phase's node is not this phase's business.
                    if !phase.running.contains(&exit.node) {
                        tracing::debug!(node = %exit.node, "an invocation of an earlier phase returned");
                        return Ok(Happened::Ignored);
                    }
                    phase.running.retain(|n| *n != exit.node);
                    Ok(Happened::Returned(exit))
                }
                None => Err(anyhow::anyhow!("the Lambda provider ended")),
            },
            () = tokio::time::sleep_until(deadline) => Ok(Happened::TimedOut),
            () = self.interrupt.wait() => {
                eprintln!("interrupted: deleting the bench's cluster {} (its invocations stop)", phase.name);
                self.end(phase).await;
                Err(Interrupted.into())
            }
        }
    }

    /// Deletes the phase's cluster and waits for its invocations to return
    /// (each node stops its program, ships its output and answers).
    async fn end(&mut self, phase: &mut Phase) {
        let request = DeleteClusterRequest { admin_token: self.admin_token.clone(), name: phase.name.clone() };
        if let Err(e) = rendezvous::delete_cluster(&self.endpoint, self.addr, request).await {
            eprintln!("warning: deleting cluster {} on {}: {e}", phase.name, self.addr.addr);
        }
        let deadline = tokio::time::Instant::now() + self.provider.stop_grace();
        while !phase.running.is_empty() {
            match tokio::time::timeout_at(deadline, self.exits.recv()).await {
                Ok(Some(exit)) => {
                    self.provider.exited(&exit.node);
                    phase.running.retain(|n| *n != exit.node);
                }
                _ => break,
            }
        }
        if !phase.running.is_empty() {
            eprintln!(
                "warning: {} invocation(s) of cluster {} have not returned ({}); they end at the function's timeout",
                phase.running.len(),
                phase.name,
                phase.running.join(", ")
            );
        }
    }

    /// The path phase: servers, fresh peers and the client; the client's result.
    async fn paths(&mut self, plan: &Plan) -> anyhow::Result<PathResult> {
        let mut phase = self.phase("paths").await?;
        let outcome = self.paths_in(&mut phase, plan).await;
        if !outcome.as_ref().is_err_and(|e| e.is::<Interrupted>()) {
            self.end(&mut phase).await;
        }
        outcome
    }

    async fn paths_in(&mut self, phase: &mut Phase, plan: &Plan) -> anyhow::Result<PathResult> {
        let port = PORT.to_string();
        let server = service("server", 1, worker(&["serve", "--port", &port, "--bulk-port", &BULK_PORT.to_string()]));
        let fresh = service("fresh", plan.fresh_peers, worker(&["serve", "--port", &port]));
        let fresh_names: Vec<String> = (0..plan.fresh_peers).map(|i| format!("fresh-{i}")).collect();
        let mut client_args: Vec<String> = [
            "client",
            "--target",
            "server-0",
            "--port",
            &port,
            "--bulk-port",
            &BULK_PORT.to_string(),
            "--seconds",
            &plan.seconds.to_string(),
            "--round-trips",
            &plan.round_trips.to_string(),
            "--connects",
            &plan.connects.to_string(),
            "--parent",
            "--print",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if !fresh_names.is_empty() {
            client_args.extend(["--fresh".to_owned(), fresh_names.join(",")]);
        }
        let mut client = service("client", 1, worker(&client_args.iter().map(String::as_str).collect::<Vec<_>>()));
        client.wait_for = vec![("server-0".into(), PORT), ("server-0".into(), BULK_PORT)];
        client.wait_for.extend(fresh_names.iter().map(|n| (n.clone(), PORT)));
        client.wait_timeout = Some(START_BUDGET);
        for s in [&server, &fresh, &client] {
            for i in 0..s.replicas {
                self.launch(phase, s, i).await?;
            }
        }
        let mut deadline = tokio::time::Instant::now() + START_BUDGET + client_budget(plan);
        let mut client_returned = None;
        // What the client had measured at its last workload, if it never finishes.
        let mut partial: Option<PathResult> = None;
        let invoked = Instant::now();
        let why = loop {
            match self.next(phase, deadline).await? {
                Happened::Message(ServerMessage::Event(event)) => {
                    if let MemberChange::Joined(m) = event.change {
                        eprintln!(
                            "  {} joined ({:.1} s after the first invoke)",
                            m.replica_name(),
                            invoked.elapsed().as_secs_f64()
                        );
                    }
                }
                Happened::Message(ServerMessage::Logs { node, lines }) => {
                    for line in lines {
                        if node == "client-0" && line.stream == Stream::Stdout {
                            if let Some(json) = line.text.strip_prefix(worker::RESULT_LINE) {
                                return serde_json::from_str(json)
                                    .with_context(|| format!("client-0 printed a result that cannot be read: {json}"));
                            }
                            if let Some(json) = line.text.strip_prefix(worker::PARTIAL_LINE) {
                                partial = serde_json::from_str(json).ok();
                                continue;
                            }
                        }
                        phase.keep(&node, &line.text);
                    }
                }
                Happened::Message(ServerMessage::LogsDropped { batches }) => {
                    eprintln!(
                        "warning: the bench's watch of cluster {} fell behind ({batches} batches of output lost)",
                        phase.name
                    );
                }
                Happened::Message(ServerMessage::Exited { node, status }) if node == "client-0" => {
                    break format!("client-0 ended ({status:?}) without a result{}", phase.explain(&node));
                }
                Happened::Message(_) | Happened::Ignored => {}
                // The answer may overtake the result line on its way
                // through the rendezvous: give the line a moment.
                Happened::Returned(exit) if exit.node == "client-0" && client_returned.is_none() => {
                    deadline = deadline.min(tokio::time::Instant::now() + RESULT_GRACE);
                    client_returned = Some(exit);
                }
                Happened::Returned(exit) => {
                    break format!(
                        "{}'s invocation returned (code {}) before the client's result: {}{}",
                        exit.node,
                        exit.code,
                        exit.detail.join("; "),
                        phase.explain(&exit.node)
                    );
                }
                Happened::TimedOut => {
                    break match client_returned {
                        Some(exit) => format!(
                            "client-0's invocation returned (code {}) without a result: {}{}",
                            exit.code,
                            exit.detail.join("; "),
                            phase.explain("client-0")
                        ),
                        None => format!(
                            "no result from client-0 within {} s{}",
                            (START_BUDGET + client_budget(plan)).as_secs(),
                            phase.explain("client-0")
                        ),
                    };
                }
            }
        };
        match partial {
            Some(mut result) => {
                result.errors.push(format!("the client did not finish: {why}"));
                Ok(result)
            }
            None => Err(anyhow::anyhow!(why)),
        }
    }

    /// One elasticity run of `n` functions.
    async fn elastic(&mut self, n: u32, run: &mut ElasticRun) -> anyhow::Result<()> {
        let mut phase = self.phase(&format!("n{n}")).await?;
        let outcome = self.elastic_in(&mut phase, n, run).await;
        if !outcome.as_ref().is_err_and(|e| e.is::<Interrupted>()) {
            self.end(&mut phase).await;
        }
        outcome
    }

    async fn elastic_in(&mut self, phase: &mut Phase, n: u32, run: &mut ElasticRun) -> anyhow::Result<()> {
        // Names of their own per run: the provider keeps each node's billed
        // time by name, and a late answer must not be taken for another run's.
        let name = format!("e{n}");
        let prefix = format!("{name}-");
        let mesh = service(
            &name,
            n,
            worker(&["mesh", "--service", &name, "--count", &n.to_string(), "--port", &PORT.to_string(), "--print"]),
        );
        let start = Instant::now();
        for i in 0..n {
            self.launch(phase, &mesh, i).await?;
        }
        let deadline = tokio::time::Instant::now() + START_BUDGET + elastic_budget(n);
        let mut joined = BTreeSet::new();
        let mut ready = BTreeSet::new();
        let mut said = Instant::now();
        loop {
            let happened = self.next(phase, deadline.min(tokio::time::Instant::now() + PROGRESS_EVERY)).await?;
            let t = start.elapsed().as_secs_f64();
            if said.elapsed() >= PROGRESS_EVERY {
                eprintln!("  {t:.0} s: {}/{n} joined, {} reached every peer", joined.len(), ready.len());
                said = Instant::now();
            }
            match happened {
                Happened::Message(ServerMessage::Event(event)) => {
                    if let MemberChange::Joined(m) = event.change
                        && joined.insert(m.replica_name())
                    {
                        run.joined.push((t, joined.len() as u32));
                        if joined.len() as u32 == n {
                            run.all_joined_s = Some(t);
                        }
                    }
                }
                Happened::Message(ServerMessage::Logs { node, lines }) => {
                    for line in lines {
                        let mesh_line = line.text.strip_prefix(worker::MESH_LINE);
                        match mesh_line {
                            Some(json) if line.stream == Stream::Stdout && node.starts_with(&prefix) => {
                                let r: MeshReady = serde_json::from_str(json).with_context(|| {
                                    format!("{node} printed a mesh line that cannot be read: {json}")
                                })?;
                                if ready.insert(node.clone()) {
                                    run.retries += r.retries;
                                    run.ready.push((t, ready.len() as u32));
                                }
                            }
                            _ => phase.keep(&node, &line.text),
                        }
                    }
                    if ready.len() as u32 == n {
                        run.all_pairs_s = Some(t);
                        return Ok(());
                    }
                }
                Happened::Message(ServerMessage::LogsDropped { batches }) => anyhow::bail!(
                    "the bench's watch fell behind and lost {batches} batches of output: readiness lines may be missing"
                ),
                Happened::Message(ServerMessage::Exited { node, status }) => {
                    anyhow::bail!("{node} ended ({status:?}) before every pair talked{}", phase.explain(&node));
                }
                Happened::Message(_) | Happened::Ignored => {}
                Happened::Returned(exit) => anyhow::bail!(
                    "{}'s invocation returned (code {}) before every pair talked: {}{}",
                    exit.node,
                    exit.code,
                    exit.detail.join("; "),
                    phase.explain(&exit.node)
                ),
                Happened::TimedOut if tokio::time::Instant::now() < deadline => {}
                Happened::TimedOut => anyhow::bail!(
                    "{} of {n} functions joined and {} had reached every peer after {} s",
                    joined.len(),
                    ready.len(),
                    (START_BUDGET + elastic_budget(n)).as_secs()
                ),
            }
        }
    }
}

/// What [`LambdaBench::next`] saw.
enum Happened {
    /// A message of the phase's watch session.
    Message(ServerMessage),
    /// One of the phase's invocations returned.
    Returned(NodeExit),
    /// The deadline passed.
    TimedOut,
    /// Nothing of this phase's (a late answer of an earlier one).
    Ignored,
}

/// `bootstrap bench-worker ARGS…`.
fn worker(args: &[&str]) -> Vec<String> {
    [WORKER, "bench-worker"].iter().chain(args).map(|s| s.to_string()).collect()
}

/// A service of a bench cluster (the working directory is the function's).
fn service(name: &str, replicas: u32, command: Vec<String>) -> Service {
    Service::plain(name, replicas, command)
}

/// Longest the client may measure once it started: 4 bulk runs, the
/// connects and round trips, with room for a slow path.
fn client_budget(plan: &Plan) -> Duration {
    Duration::from_secs(u64::from(plan.seconds) * 4 + 120)
}

/// Longest the mesh of `n` functions may take once all are invoked.
fn elastic_budget(n: u32) -> Duration {
    Duration::from_secs(60 + u64::from(n) * 2)
}

/// The paper's table for one run.
pub fn table(results: &LambdaResults) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nboxer bench --provider lambda: function {} via rendezvous {} ({:.0} s)",
        results.function, results.rendezvous, results.total_s
    );
    let Some(r) = &results.boxer.result else {
        let _ =
            writeln!(out, "Boxer between functions: not measured: {}", results.boxer.missing.as_deref().unwrap_or("?"));
        return elastic_table(out, results);
    };
    let row = |out: &mut String, label: &str, v: Option<f64>, digits: usize| {
        let _ = match v {
            Some(v) => writeln!(out, "{label:<40}{v:>12.digits$}"),
            None => writeln!(out, "{label:<40}{:>12}", "-"),
        };
    };
    let _ = writeln!(out, "\nfunction to function (Boxer, punched or relayed as the NATs allow)");
    for (streams, reverse) in [(1, false), (1, true), (4, false), (4, true)] {
        let run = r.bulk.iter().find(|b| b.streams == streams && b.reverse == reverse);
        let label = format!(
            "bulk TCP, {streams} stream{}{} (Gbit/s)",
            if streams > 1 { "s" } else { "" },
            if reverse { ", reverse" } else { "" }
        );
        row(&mut out, &label, run.map(|b| b.gbit_s), 2);
    }
    row(&mut out, "RTT p50 (us)", r.rtt_us.map(|p| p.p50), 0);
    row(&mut out, "RTT p99 (us)", r.rtt_us.map(|p| p.p99), 0);
    row(&mut out, "first contact p50 (ms)", worker::Percentiles::of(r.first_contact_ms.clone()).map(|p| p.p50), 1);
    row(&mut out, "connect, known peer, p50 (us)", r.known_connect_us.map(|p| p.p50), 0);
    row(&mut out, "connect, known peer, p99 (us)", r.known_connect_us.map(|p| p.p99), 0);
    row(&mut out, "runtime RSS idle (MiB)", r.rss_idle_kib.map(|k| k as f64 / 1024.0), 1);
    row(&mut out, "runtime RSS peak (MiB)", r.rss_peak_kib.map(|k| k as f64 / 1024.0), 1);
    let cpu = r.bulk.iter().find(|b| b.streams == 1 && !b.reverse).and_then(|b| b.cpu_s_per_gb);
    row(&mut out, "client runtime CPU s per GB, 1 stream", cpu, 2);
    for e in &r.errors {
        let _ = writeln!(out, "failed: {e}");
    }
    elastic_table(out, results)
}

fn elastic_table(mut out: String, results: &LambdaResults) -> String {
    use std::fmt::Write as _;
    if !results.elastic.is_empty() {
        let _ = writeln!(out, "\nelasticity: seconds from the first invoke");
        let _ = writeln!(out, "{:>8}{:>14}{:>18}{:>10}", "nodes", "all joined", "all pairs talked", "retries");
        for e in &results.elastic {
            let s = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
            let _ = writeln!(out, "{:>8}{:>14}{:>18}{:>10}", e.nodes, s(e.all_joined_s), s(e.all_pairs_s), e.retries);
            if let Some(why) = &e.error {
                let _ = writeln!(out, "{:>8}  failed: {why}", e.nodes);
            }
        }
    }
    if !results.cost.is_empty() {
        let _ = writeln!(out);
        for line in &results.cost {
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `boxer bench --quick`'s options.
    fn quick() -> BenchArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        <Cli as clap::Parser>::parse_from(["bench", "--quick"]).bench
    }

    #[test]
    fn the_worker_is_the_functions_runtime() {
        assert_eq!(worker(&["serve", "--port", "7000"]), ["bootstrap", "bench-worker", "serve", "--port", "7000"]);
    }

    #[test]
    fn the_table_has_every_row_and_the_failures() {
        let result = PathResult {
            first_contact_ms: vec![20.0, 30.0],
            rtt_us: worker::Percentiles::of(vec![200.0, 300.0]),
            bulk: vec![worker::IperfRun { streams: 1, reverse: false, gbit_s: 2.5, bytes: 1, cpu_s_per_gb: Some(3.0) }],
            errors: vec!["bulk -P 4: no data arrived".into()],
            ..Default::default()
        };
        let results = LambdaResults {
            unix_time: 0,
            function: "boxer-bench".into(),
            rendezvous: "203.0.113.7:4740".parse().unwrap(),
            plan: Plan::new(&quick()),
            boxer: PathOutcome { result: Some(result), missing: None },
            elastic: vec![ElasticRun {
                nodes: 3,
                all_joined_s: Some(0.5),
                all_pairs_s: Some(0.9),
                ..Default::default()
            }],
            cost: vec!["total ~1 GB-s".into()],
            total_s: 10.0,
        };
        let t = table(&results);
        assert!(t.contains("bulk TCP, 1 stream (Gbit/s)") && t.contains("2.50"), "{t}");
        assert!(t.contains("bulk TCP, 4 streams, reverse (Gbit/s)"), "{t}");
        assert!(t.contains("failed: bulk -P 4: no data arrived"), "{t}");
        assert!(t.contains("0.50") && t.contains("0.90") && t.contains("total ~1 GB-s"), "{t}");
    }
}
