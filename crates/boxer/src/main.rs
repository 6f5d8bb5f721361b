//! `boxer`: the Boxer command line.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use boxer::lab::NatKind;
use boxer::lambda::aws::AwsArgs;
use boxer::lambda::invoke::LambdaOptions;
use boxer::up::{External, NetMode, ProviderChoice, UpOptions};
use boxer::{netns, printer, spec, state, up};
use boxer_net::rendezvous::{self, RendezvousAddr};
use boxer_net::{Identity, NodeEndpoint};
use boxer_proto::control::{CreateClusterRequest, DeleteClusterRequest, ServerMessage, WatchRequest};
use boxer_proto::{Fingerprint, Membership};
use clap::{Args, Parser, Subcommand};

/// Boxer: run unmodified servers across serverless functions as one cluster.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the cluster described by a spec file until its main services exit.
    ///
    /// Starts an embedded rendezvous (or uses --rendezvous), creates the
    /// cluster, starts every node, streams their output prefixed with the
    /// node name, and exits with the first failing main service's exit code
    /// (0 if all succeed). Ctrl-C stops everything.
    ///
    /// Locally (the default) every node is a process behind its own
    /// simulated NAT. With --provider lambda every node is one invocation
    /// of the function `boxer deploy` created, and the rendezvous must run
    /// where Lambda can reach it:
    ///
    ///   boxer up --provider lambda --rendezvous 203.0.113.7:4740 \
    ///       --fingerprint HEX --admin-token TOKEN boxer.toml
    #[command(verbatim_doc_comment)]
    Up {
        /// The spec file.
        #[arg(default_value = "boxer.toml")]
        file: PathBuf,
        #[command(flatten)]
        launch: LaunchArgs,
    },
    /// Run one command as a cluster of N nodes (a one-service `boxer up`).
    Run {
        /// Number of nodes.
        #[arg(short = 'n', long = "replicas", default_value_t = 1)]
        replicas: u32,
        /// Cluster and service name (nodes are NAME-0, NAME-1, ...).
        #[arg(long, default_value = "run")]
        name: String,
        #[command(flatten)]
        launch: LaunchArgs,
        /// The command and its arguments.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Show a cluster's nodes, addresses, states and log paths.
    Status {
        /// Cluster name (default: the most recent).
        cluster: Option<String>,
    },
    /// Print a node's output (all nodes without NODE), also after the cluster ended.
    Logs {
        /// Node name, e.g. db-0.
        node: Option<String>,
        /// Cluster name (default: the most recent).
        #[arg(long)]
        cluster: Option<String>,
        /// Keep printing new output until the cluster ends.
        #[arg(short, long)]
        follow: bool,
    },
    /// Reach a port of a node in a running cluster from this machine.
    ///
    /// Joins the cluster as a member (`port-forward-<i>`) and carries every
    /// connection to LOCAL_PORT (default: the same port) on --address to
    /// NAME:PORT over the overlay, like `ssh -L`. Runs until Ctrl-C or until
    /// the cluster ends.
    PortForward {
        /// The target, e.g. db-0:6379 (a bare service name picks its first replica).
        #[arg(value_name = "NAME:PORT")]
        target: String,
        /// Local port to listen on (default: PORT).
        local_port: Option<u16>,
        /// Local address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        address: std::net::IpAddr,
        /// Cluster name (default: the most recent).
        #[arg(long)]
        cluster: Option<String>,
    },
    /// Change the number of nodes of services of a running cluster.
    ///
    ///   boxer scale web=6            # web-2 ... web-5 join; `web` resolves to all six
    ///   boxer scale web=3 db=1       # web-5, web-4, web-3 stop (highest first)
    ///
    /// New nodes start at once and are waited for until they joined;
    /// removed nodes get SIGTERM, their grace to end, and leave. Nodes that
    /// stay keep their connections. `boxer status` shows the new shape.
    /// On Lambda the rendezvous tells each removed function to stop.
    #[command(verbatim_doc_comment)]
    Scale {
        /// SERVICE=N, one or more.
        #[arg(required = true, value_name = "SERVICE=N", value_parser = boxer::control::parse_change)]
        changes: Vec<(String, u32)>,
        /// Cluster name (default: the most recent).
        #[arg(long)]
        cluster: Option<String>,
        /// Longest to wait for the new shape, in seconds.
        #[arg(long, default_value_t = 120, value_name = "SECONDS")]
        timeout: u64,
    },
    /// Stop a running cluster (the `boxer up` that runs it tears it down).
    Down {
        /// Cluster name (default: the most recent).
        cluster: Option<String>,
    },
    /// Upload files, and directories recursively, to an S3 bucket.
    ///
    ///   boxer put photos/ s3://my-input/batch-1/     # photos/a.jpg -> batch-1/a.jpg
    ///   boxer put report.pdf s3://my-output/report.pdf
    ///
    /// AWS credentials, region and endpoint as for boxer deploy.
    #[command(verbatim_doc_comment)]
    Put {
        #[command(flatten)]
        args: boxer::s3::PutArgs,
    },
    /// Download every object under an S3 prefix into a directory.
    ///
    ///   boxer get s3://my-output/batch-1/ results/
    ///
    /// Keys become paths relative to the prefix; a key that would land
    /// outside the directory (`..`) is skipped and reported.
    #[command(verbatim_doc_comment)]
    Get {
        #[command(flatten)]
        args: boxer::s3::GetArgs,
    },
    /// Run a command over every object under an S3 prefix (or every local
    /// file), one node per item, and collect its results (SCAR's fan-out).
    ///
    ///   boxer put photos/ s3://my-input/batch-1/
    ///   boxer map --input s3://my-input/batch-1/ --output s3://my-output/thumbs/ \
    ///       -n 8 --retries 1 -- sh -c 'convert "$BOXER_INPUT" -resize 64x64 \
    ///       "$BOXER_OUTPUT_DIR/$(basename "$BOXER_INPUT")"'
    ///   boxer get s3://my-output/thumbs/ thumbs/
    ///
    /// Each node downloads its object ({} and $BOXER_INPUT are its local
    /// path; the command runs without a shell, hence `sh -c` for variables),
    /// runs it, and when it succeeds uploads every file the
    /// command wrote to $BOXER_OUTPUT_DIR under the output prefix (the
    /// command names its results: give them names that differ per item).
    /// BOXER_RANK, BOXER_SIZE and BOXER_ATTEMPT number the item, the items
    /// and the try. Prints a line per item and a summary (done, failed,
    /// retried, time, cost); exits 1 when an item failed every attempt.
    ///
    /// --provider local runs the items as processes here; --provider lambda
    /// invokes a function `boxer deploy` made (examples/map/boxer.toml makes
    /// boxer-map) through a rendezvous the functions can reach.
    ///
    /// Local files, no S3 (local provider): the nodes fetch their inputs from
    /// and send their results to boxer map's own node, stage-0, over the overlay.
    ///
    ///   boxer map --input data/ --output results/ -- sh -c 'wc -l < {} > "$BOXER_OUTPUT_DIR/$BOXER_INPUT_KEY"'
    ///   boxer map --input 'logs/*.gz' --output counts/ -n 4 -- ./count.sh {}
    #[command(verbatim_doc_comment)]
    Map {
        #[command(flatten)]
        args: boxer::map::MapArgs,
    },
    /// Print the command that joins a running cluster from another machine.
    ///
    /// A hybrid node: boxer-runtime started by hand on any Linux host (a
    /// VM, a laptop) that can reach the cluster's rendezvous becomes node
    /// <service>-<index> of the cluster beside its functions or local
    /// nodes, with a name, an overlay address and direct connections. The
    /// command holds the cluster's join token: treat it as a secret.
    ///
    ///   boxer join-command redis-bench --service vm -- redis-server
    ///
    /// The rendezvous must be reachable from that host: an external one
    /// (`--rendezvous`, as Lambda clusters use), not the embedded one of a
    /// `--net lab` or `--net shared` cluster, which lives in a network
    /// namespace of this machine.
    #[command(verbatim_doc_comment, name = "join-command")]
    JoinLine {
        /// Cluster name (default: the most recent).
        cluster: Option<String>,
        /// The new node's service (its name is <service>-<index>).
        #[arg(long, default_value = "host")]
        service: String,
        /// The new node's index.
        #[arg(long, default_value_t = 0)]
        index: u32,
        /// The program the node runs (default: none, a proxy-only node).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Create or update the cluster's AWS Lambda function (--delete removes it).
    ///
    /// One function serves the whole cluster: every node is one invocation
    /// of it, with boxer-runtime as the function's custom runtime. Its
    /// settings come from flags, else the spec's [lambda] table, else
    /// defaults (1769 MB = one vCPU, 900 s, x86_64, 512 MB /tmp); the
    /// execution role from --role, BOXER_LAMBDA_ROLE or [lambda] role.
    ///
    /// Zip (the default): the package holds `bootstrap` (boxer-runtime),
    /// libboxer_shim.so and the files of [lambda] files, on the
    /// provided.al2023 runtime. The uploaded zip is kept in the cluster's
    /// state directory and its path printed.
    ///
    /// Container image (--image BASE or [lambda] image): a build context
    /// FROM BASE with the runtime as entrypoint is written to the state
    /// directory; with docker or podman on PATH it is built and pushed to
    /// ECR (repository created if missing) and deployed. Without one, or
    /// with --no-push, the commands to build and push it by hand are
    /// printed, ending with `boxer deploy --image-uri URI`.
    ///
    /// The binaries come from --runtime-dir (BOXER_LAMBDA_BUILD), else
    /// target/<arch>-unknown-linux-gnu/release/ of the target directory this
    /// boxer runs from. They must be built for Lambda's glibc 2.34:
    ///
    ///   pip install cargo-zigbuild
    ///   cargo zigbuild --release --target x86_64-unknown-linux-gnu.2.34 \
    ///       -p boxer-runtime -p boxer-shim
    ///
    /// (aarch64-unknown-linux-gnu.2.34 for arm64); deploy checks them and
    /// refuses what would not start on Lambda. AWS credentials, region and
    /// endpoint come from the standard AWS chain (AWS_PROFILE, AWS_REGION,
    /// ~/.aws/config, SSO, AWS_ENDPOINT_URL) with --profile, --region and
    /// --endpoint-url on top.
    #[command(verbatim_doc_comment)]
    Deploy {
        #[command(flatten)]
        args: boxer::lambda::deploy::DeployArgs,
    },
    /// Benchmark Boxer in the NAT lab side by side with a direct path and Nebula.
    ///
    /// Builds a NAT lab (network namespaces with no way out of the machine)
    /// and measures, with the same client on every path: iperf3 (1 and 4
    /// streams, both directions), TCP ping-pong RTT, redis-benchmark,
    /// connect to first byte (known and never-contacted peers), runtime
    /// memory and CPU per GB. Paths: Boxer punched between two
    /// port-restricted NATs, Boxer relayed (symmetric NATs), the same two
    /// devices through a port forward (direct, the lab's limit), and Nebula
    /// on the same devices (`apt-get install nebula`; skipped otherwise).
    /// Then elasticity (N nodes up until every pair has talked) and the
    /// rendezvous' admissions per second. Prints a table with ratios and
    /// the performance targets, writes results.json and results.svg.
    ///
    /// With --provider lambda, the Boxer column runs on Lambda functions
    /// instead (the function of `boxer deploy examples/bench/boxer.toml`,
    /// a rendezvous Lambda can reach): bulk TCP (1 and 4 streams, both
    /// directions), RTT, connect times, the runtime's memory and CPU, and
    /// the time from the first invoke until N functions are ready.
    ///
    ///   boxer bench --quick            # under 3 minutes
    ///   boxer bench --out bench-results
    ///   boxer bench --provider lambda --rendezvous 203.0.113.7:4740 \
    ///       --fingerprint HEX --admin-token TOKEN --quick
    #[command(verbatim_doc_comment)]
    Bench {
        #[command(flatten)]
        args: boxer::bench::BenchArgs,
    },
    /// The programs `boxer bench` runs on lab devices (internal).
    #[command(subcommand, hide = true)]
    BenchWorker(boxer::bench::worker::WorkerCommand),
    /// Create, or delete, clusters on a rendezvous (needs its admin token).
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Print a cluster's members; with --watch, keep printing changes.
    Members {
        #[command(flatten)]
        rendezvous: RendezvousArgs,
        /// Cluster name.
        #[arg(long, env = "BOXER_CLUSTER")]
        cluster: String,
        /// The cluster's join token (or the admin token).
        #[arg(long, env = "BOXER_JOIN_TOKEN", hide_env_values = true)]
        token: String,
        /// Keep running and print every membership change.
        #[arg(long)]
        watch: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Create a cluster and print its join token.
    Create {
        #[command(flatten)]
        rendezvous: RendezvousArgs,
        /// Admin token of the rendezvous (printed by it at start).
        #[arg(long, env = "BOXER_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: String,
        /// Cluster name (lowercase letters, digits, '-').
        name: String,
        /// Overlay network of the cluster.
        #[arg(long, default_value = boxer_proto::control::DEFAULT_OVERLAY)]
        network: ipnet::Ipv4Net,
        /// Join token to require (default: a random one).
        #[arg(long)]
        join_token: Option<String>,
    },
    /// Delete a cluster; its nodes are disconnected.
    Delete {
        #[command(flatten)]
        rendezvous: RendezvousArgs,
        /// Admin token of the rendezvous.
        #[arg(long, env = "BOXER_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: String,
        /// Cluster name.
        name: String,
    },
}

/// Where nodes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ProviderKind {
    /// Processes on this machine (see --net).
    Local,
    /// Invocations of the cluster's Lambda function (`boxer deploy` first;
    /// needs --rendezvous on a host Lambda can reach).
    Lambda,
}

/// How `boxer up` and `boxer run` launch nodes.
#[derive(Debug, Args)]
struct LaunchArgs {
    /// Where nodes run: `local` processes, or `lambda` functions (each node
    /// one invocation of the function `boxer deploy` made; see docs/lambda.md).
    #[arg(long, value_enum, default_value = "local")]
    provider: ProviderKind,
    /// Network: `lab` puts every node behind its own simulated NAT router
    /// and the rendezvous on a public one (network namespaces with no way
    /// out); `shared` puts every node in one fresh network namespace with
    /// only loopback; `host` uses this machine's network namespace.
    #[arg(long, value_enum, default_value = "lab")]
    net: NetMode,
    /// NAT of every node with `--net lab`: `moderate` behaves like AWS
    /// Lambda's (port-restricted cone); `strict` (symmetric) forces the
    /// relay; `masquerade` is plain Linux masquerade.
    #[arg(long, value_enum, default_value = "moderate")]
    nat: NatKind,
    /// Use this rendezvous instead of starting one (needs --fingerprint and --admin-token).
    #[arg(long, requires_all = ["fingerprint", "admin_token"])]
    rendezvous: Option<SocketAddr>,
    /// Certificate fingerprint of --rendezvous.
    #[arg(long)]
    fingerprint: Option<Fingerprint>,
    /// Admin token of --rendezvous.
    #[arg(long, env = "BOXER_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// With --provider lambda: the function to invoke (default: `[lambda]
    /// function` of the spec, else boxer-<cluster>).
    #[arg(long, value_name = "NAME")]
    function: Option<String>,
    /// With --provider lambda: price per GB-second for the closing cost
    /// estimate (default: Lambda's list price for the function's architecture).
    #[arg(long, value_name = "USD")]
    price_per_gb_second: Option<f64>,
    #[command(flatten)]
    aws: AwsArgs,
}

impl LaunchArgs {
    fn options(&self) -> anyhow::Result<UpOptions> {
        let external = External::from_flags(self.rendezvous, self.fingerprint, self.admin_token.as_deref());
        let provider = match self.provider {
            ProviderKind::Local => ProviderChoice::Local,
            ProviderKind::Lambda => {
                let lambda = LambdaOptions {
                    aws: self.aws.clone(),
                    function: self.function.clone(),
                    price_per_gb_second: self.price_per_gb_second,
                };
                ProviderChoice::lambda(lambda, external.as_ref())?
            }
        };
        Ok(UpOptions { net: self.net, external, nat: self.nat, provider })
    }

    /// Whether this launch runs local nodes in a namespace of their own.
    fn own_namespace(&self) -> bool {
        self.provider == ProviderKind::Local && self.net != NetMode::Host
    }
}

/// Where the rendezvous is.
#[derive(Debug, Args)]
struct RendezvousArgs {
    /// Rendezvous UDP address.
    #[arg(long, env = "BOXER_RENDEZVOUS")]
    rendezvous: SocketAddr,
    /// SHA-256 fingerprint of the rendezvous certificate.
    #[arg(long, env = "BOXER_FINGERPRINT")]
    fingerprint: Fingerprint,
}

impl RendezvousArgs {
    fn addr(&self) -> RendezvousAddr {
        RendezvousAddr { addr: self.rendezvous, fingerprint: self.fingerprint }
    }

    /// A client endpoint with a throwaway identity, bound to the wildcard of
    /// the rendezvous' address family.
    fn endpoint(&self) -> anyhow::Result<NodeEndpoint> {
        let bind = match self.rendezvous {
            SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
        };
        Ok(NodeEndpoint::bind(bind, Identity::generate()?)?)
    }
}

fn main() {
    // Errors are for people: the cause chain on one line, no backtrace.
    let code = match run_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code)
}

fn run_main() -> anyhow::Result<i32> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if let Command::BenchWorker(worker) = &cli.command {
        // Plain blocking programs: no runtime, no namespace of their own.
        return worker.run().map(|()| 0);
    }
    if let Command::Bench { args } = &cli.command
        && args.provider == boxer::bench::BenchProvider::Lambda
    {
        // Functions, an external rendezvous and AWS: no lab, no namespace.
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        return match runtime.block_on(boxer::bench::lambda::run(args.clone())) {
            Ok(_) => Ok(0),
            Err(e) if e.is::<boxer::bench::lambda::Interrupted>() => {
                eprintln!("{e}");
                Ok(130)
            }
            Err(e) => Err(e),
        };
    }
    if let Command::Bench { args } = &cli.command {
        // The lab, as for `boxer up --net lab`, from a namespace of its own.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            boxer::lab::init()?;
        }
        netns::enter().map_err(|e| anyhow::anyhow!("cannot create the bench's network namespace: {e}"))?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let result = runtime.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let mut interrupt = signal(SignalKind::interrupt())?;
            let mut terminate = signal(SignalKind::terminate())?;
            tokio::select! {
                result = boxer::bench::run(args.clone()) => result.map(|_| 0),
                // Dropping the run kills every process it started (runtimes,
                // servers, nebula: all kill-on-drop; the runtimes' programs
                // die with them), and the lab's namespaces go with this process.
                _ = interrupt.recv() => {
                    eprintln!("interrupted: stopping the bench's nodes and lab");
                    Ok(130)
                }
                _ = terminate.recv() => Ok(143),
            }
        });
        // The run, its nodes and its lab are gone by now (dropped in
        // block_on). Dropping the runtime would wait for its blocking tasks,
        // and the admissions run is one that does not stop when its task is
        // dropped: after a signal, waiting for it would keep the process
        // running for minutes. main exits the process right after.
        runtime.shutdown_timeout(std::time::Duration::from_secs(2));
        return result;
    }
    // Specs are checked before anything starts.
    let launch = match &cli.command {
        Command::Up { file, launch } => Some((spec::load(file)?, launch)),
        Command::Run { replicas, name, launch, command } => {
            let cwd = std::env::current_dir().context("reading the current directory")?;
            Some((spec::single(name, *replicas, command.clone(), cwd)?, launch))
        }
        _ => None,
    };
    let launch = match launch {
        Some((spec, args)) => Some((spec, args.options()?, args.own_namespace())),
        None => None,
    };
    if let Some((_, options, _)) = &launch
        && matches!(options.provider, ProviderChoice::Local)
        && options.net == NetMode::Lab
        // SAFETY: geteuid has no preconditions.
        && unsafe { libc::geteuid() } != 0
    {
        // Lets an ordinary user create the lab's namespaces.
        boxer::lab::init()?;
    }
    if let Some((_, _, true)) = &launch {
        // In the lab too: this process itself then has no network but
        // loopback, so nothing it opens by mistake can leave the machine.
        // Before any thread exists: the namespace is entered by the whole process.
        netns::enter().map_err(|e| {
            anyhow::anyhow!(
                "cannot create the cluster's network namespace: {e} (is unprivileged user namespace creation allowed? try --net host)"
            )
        })?;
    }
    let forward = match &cli.command {
        Command::PortForward { target, local_port, address, cluster } => {
            Some(prepare_port_forward(target, *local_port, *address, cluster.clone())?)
        }
        _ => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    if let Some(forward) = forward {
        return runtime.block_on(port_forward(forward));
    }
    match launch {
        Some((spec, options, _)) => runtime.block_on(up::up(spec, options)),
        None => runtime.block_on(run(cli)),
    }
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Up { .. }
        | Command::Run { .. }
        | Command::PortForward { .. }
        | Command::Bench { .. }
        | Command::BenchWorker(_) => unreachable!("handled in main"),
        Command::Status { cluster } => status(cluster)?,
        Command::Logs { node, cluster, follow } => logs(node, cluster, follow).await?,
        Command::Down { cluster } => down(cluster).await?,
        Command::Scale { changes, cluster, timeout } => return scale(changes, cluster, timeout).await,
        Command::JoinLine { cluster, service, index, command } => join_command(cluster, &service, index, &command)?,
        Command::Deploy { args } => return boxer::lambda::deploy::run(args).await,
        Command::Put { args } => {
            boxer::s3::put(&args).await?;
        }
        Command::Map { args } => return boxer::map::run(args).await,
        Command::Get { args } => {
            boxer::s3::get(&args).await?;
        }
        Command::Cluster(ClusterCommand::Create { rendezvous, admin_token, name, network, join_token }) => {
            let endpoint = rendezvous.endpoint()?;
            let info = rendezvous::create_cluster(
                &endpoint,
                rendezvous.addr(),
                CreateClusterRequest { admin_token, name: name.clone(), network: Some(network), join_token },
            )
            .await
            .with_context(|| format!("creating cluster {name:?} on rendezvous {}", rendezvous.rendezvous))?;
            println!("cluster:    {}", info.name);
            println!("network:    {}", info.network);
            println!("join token: {}", info.join_token);
        }
        Command::Cluster(ClusterCommand::Delete { rendezvous, admin_token, name }) => {
            let endpoint = rendezvous.endpoint()?;
            rendezvous::delete_cluster(
                &endpoint,
                rendezvous.addr(),
                DeleteClusterRequest { admin_token, name: name.clone() },
            )
            .await
            .with_context(|| format!("deleting cluster {name:?} on rendezvous {}", rendezvous.rendezvous))?;
            println!("deleted cluster {name}");
        }
        Command::Members { rendezvous, cluster, token, watch } => {
            let endpoint = rendezvous.endpoint()?;
            let (snapshot, mut feed) = rendezvous::watch(
                &endpoint,
                rendezvous.addr(),
                WatchRequest { cluster: cluster.clone(), token, logs: false },
            )
            .await
            .with_context(|| format!("watching cluster {cluster:?} on rendezvous {}", rendezvous.rendezvous))?;
            let mut membership = Membership::from_snapshot(&cluster, snapshot);
            print_members(&membership);
            if !watch {
                return Ok(0);
            }
            loop {
                match feed.next().await.with_context(|| format!("watching cluster {cluster:?}"))? {
                    ServerMessage::Event(event) => {
                        println!("-- {:?}", event.change);
                        membership.apply(event)?;
                    }
                    ServerMessage::Snapshot(s) => {
                        membership = Membership::from_snapshot(&cluster, s);
                        print_members(&membership);
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(0)
}

fn pick_cluster(cluster: Option<String>) -> anyhow::Result<String> {
    match cluster.or_else(state::latest) {
        Some(c) => Ok(c),
        None => anyhow::bail!("no cluster has been run here yet ({})", looked_in(&state::root())),
    }
}

/// Where a command looked for a cluster's state and how to look elsewhere:
/// a `boxer up` run with another `BOXER_STATE_DIR` (or `XDG_STATE_HOME`,
/// or `HOME`) keeps its state in another directory.
fn looked_in(dir: &std::path::Path) -> String {
    format!(
        "looked in {}; for a cluster started with another state directory, set BOXER_STATE_DIR to it",
        dir.display()
    )
}

fn status(cluster: Option<String>) -> anyhow::Result<()> {
    let cluster = pick_cluster(cluster)?;
    let dir = state::cluster_dir(&cluster);
    let s = state::Status::read(&dir)
        .with_context(|| format!("reading the status of cluster {cluster:?} in {}", dir.display()))?;
    let running = state::running_pid(&dir).is_some();
    println!("cluster:    {}{}", s.cluster, if running { "" } else { " (not running)" });
    println!("spec:       {}", s.spec);
    println!("state:      {}", s.state);
    println!("network:    {}", s.net);
    println!("rendezvous: {}", s.rendezvous);
    println!();
    // States such as "waiting for db-0:5432" are wider than "running".
    let w = s.nodes.iter().map(|n| n.state.len()).max().unwrap_or(0).max(12);
    println!("{:<16} {:<9} {:<15} {:<w$} OUTPUT", "NODE", "ID", "OVERLAY", "STATE");
    for n in &s.nodes {
        println!(
            "{:<16} {:<9} {:<15} {:<w$} {}",
            n.name,
            n.id.as_deref().unwrap_or("-"),
            n.overlay_ip.as_deref().unwrap_or("-"),
            n.state,
            n.output
        );
    }
    let notes: Vec<_> = s.nodes.iter().filter_map(|n| n.note.as_ref().map(|note| (&n.name, note))).collect();
    if !notes.is_empty() {
        println!();
        for (node, note) in notes {
            println!("{node}: {note}");
        }
    }
    let paths: Vec<_> = s.nodes.iter().flat_map(|n| n.paths.iter().map(move |p| (&n.name, p))).collect();
    if !paths.is_empty() {
        println!();
        println!("{:<16} {:<16} {:<28} RTT", "NODE", "PEER", "PATH");
        for (node, p) in paths {
            println!("{:<16} {:<16} {:<28} {:.2} ms", node, p.peer, p.path, f64::from(p.rtt_us) / 1000.0);
        }
    }
    Ok(())
}

async fn logs(node: Option<String>, cluster: Option<String>, follow: bool) -> anyhow::Result<()> {
    let cluster = pick_cluster(cluster)?;
    let dir = up::output_files(&cluster);
    let mut files: Vec<(String, PathBuf)> = match &node {
        Some(n) => vec![(n.clone(), dir.join(format!("{n}.log")))],
        None => {
            let mut v: Vec<_> = std::fs::read_dir(&dir)
                .with_context(|| format!("no output stored for cluster {cluster:?} in {}", dir.display()))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .map(|p| (p.file_stem().unwrap_or_default().to_string_lossy().into_owned(), p))
                .collect();
            v.sort();
            v
        }
    };
    if let Some(n) = &node
        && !files[0].1.exists()
    {
        anyhow::bail!("no output stored for node {n:?} of cluster {cluster:?} (looked for {})", files[0].1.display());
    }
    let printer = printer::Printer::new(files.iter().map(|(n, _)| n.clone()).collect());
    let mut offsets = vec![0usize; files.len()];
    loop {
        for (i, (name, path)) in files.iter().enumerate() {
            let text = std::fs::read(path).unwrap_or_default();
            if text.len() > offsets[i] {
                let new = &text[offsets[i]..];
                // Only whole lines; a partial last line waits for its end.
                let end = new.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
                for line in String::from_utf8_lossy(&new[..end]).lines() {
                    printer.line(name, line);
                }
                offsets[i] += end;
            }
        }
        if !follow || state::running_pid(&state::cluster_dir(&cluster)).is_none() {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        if node.is_none() {
            // Nodes that started writing since.
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for p in entries.flatten().map(|e| e.path()) {
                    let name = p.file_stem().unwrap_or_default().to_string_lossy().into_owned();
                    if p.extension().is_some_and(|x| x == "log") && !files.iter().any(|(n, _)| *n == name) {
                        files.push((name, p));
                        offsets.push(0);
                    }
                }
            }
        }
    }
}

/// A port-forward set up before the runtime starts: the listener is bound in
/// the caller's namespace, then the process enters the cluster's.
struct PortForward {
    listener: std::net::TcpListener,
    join: state::JoinInfo,
    target: String,
    port: u16,
}

fn prepare_port_forward(
    target: &str,
    local_port: Option<u16>,
    address: std::net::IpAddr,
    cluster: Option<String>,
) -> anyhow::Result<PortForward> {
    let (name, port) = target
        .rsplit_once(':')
        .and_then(|(n, p)| Some((n.to_owned(), p.parse::<u16>().ok().filter(|p| *p != 0)?)))
        .filter(|(n, _)| !n.is_empty())
        .with_context(|| format!("{target:?}: expected NAME:PORT, e.g. db-0:6379"))?;
    let cluster = pick_cluster(cluster)?;
    let dir = state::cluster_dir(&cluster);
    anyhow::ensure!(
        state::running_pid(&dir).is_some(),
        "cluster {cluster} is not running (start it with boxer up; {})",
        looked_in(&dir)
    );
    let join = state::JoinInfo::read(&dir).with_context(|| format!("reading {}", dir.join("join.json").display()))?;
    let local = SocketAddr::new(address, local_port.unwrap_or(port));
    // Bound here, in the caller's namespace: it stays there after we enter the cluster's.
    let listener = std::net::TcpListener::bind(local).with_context(|| format!("listening on {local}"))?;
    if join.own_namespace {
        netns::join(join.pid).map_err(|e| anyhow::anyhow!("entering the namespace of cluster {cluster}: {e}"))?;
    }
    Ok(PortForward { listener, join, target: name, port })
}

async fn port_forward(f: PortForward) -> anyhow::Result<i32> {
    use boxer_runtime::{ForwardSpec, Node, NodeConfig};
    let fingerprint: Fingerprint = f.join.fingerprint.parse()?;
    let local = f.listener.local_addr()?;
    let mut index = 0;
    let node = loop {
        let config = NodeConfig {
            rendezvous: RendezvousAddr { addr: f.join.rendezvous, fingerprint },
            cluster: f.join.cluster.clone(),
            join_token: f.join.token.clone(),
            service: "port-forward".into(),
            index,
            // Loopback for a rendezvous on loopback, else any interface (the lab).
            bind: SocketAddr::from((
                if f.join.rendezvous.ip().is_loopback() { Ipv4Addr::LOCALHOST } else { Ipv4Addr::UNSPECIFIED },
                0,
            )),
            forwards: vec![],
            expose: vec![],
            status_file: None,
            run_dir: None,
            shared_namespace: false,
        };
        match Node::start(config).await {
            Ok(node) => break node,
            // Another port-forward holds this index: take the next.
            Err(boxer_runtime::NodeError::Rendezvous(rendezvous::RendezvousError::Refused { code, .. }))
                if code == boxer_proto::control::CloseCode::Conflict.code() as u64 && index < 255 =>
            {
                index += 1;
            }
            Err(e) => return Err(e).context(format!("joining cluster {}", f.join.cluster)),
        }
    };
    f.listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(f.listener)?;
    node.forward(listener, ForwardSpec { listen: local, target: f.target.clone(), port: f.port });
    eprintln!(
        "forwarding {local} -> {}:{} in cluster {} as {} (Ctrl-C to stop)",
        f.target,
        f.port,
        f.join.cluster,
        node.joined().names[0]
    );
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        e = node.stopped() => eprintln!("cluster {} ended: {e}", f.join.cluster),
    }
    node.shutdown().await;
    Ok(0)
}

/// `boxer join-command`: prints the boxer-runtime command line that joins
/// the running cluster as `<service>-<index>`.
fn join_command(cluster: Option<String>, service: &str, index: u32, command: &[String]) -> anyhow::Result<()> {
    boxer_proto::names::validate_service(service).map_err(|e| anyhow::anyhow!("--service: {e}"))?;
    let cluster = pick_cluster(cluster)?;
    let dir = state::cluster_dir(&cluster);
    if state::running_pid(&dir).is_none() {
        anyhow::bail!("cluster {cluster} is not running ({}): start it with `boxer up`", looked_in(&dir));
    }
    let join = state::JoinInfo::read(&dir).with_context(|| format!("reading {}", dir.join("join.json").display()))?;
    if join.own_namespace {
        eprintln!(
            "note: cluster {cluster}'s rendezvous ({}) is inside a network namespace of this machine (--net lab or \
             shared): only processes in that namespace reach it. For nodes on other hosts, run the cluster with \
             --net host and --rendezvous on a reachable host",
            join.rendezvous
        );
    }
    if join.rendezvous.ip().is_loopback() {
        eprintln!(
            "note: cluster {cluster}'s rendezvous is on loopback ({}): only this machine reaches it. For nodes on \
             other hosts, start the cluster with --rendezvous on an address they reach",
            join.rendezvous
        );
    }
    // The other host's runtime, found on its PATH (this one's path means
    // nothing there).
    let mut line = vec![
        "boxer-runtime".to_owned(),
        "--rendezvous".to_owned(),
        join.rendezvous.to_string(),
        "--fingerprint".to_owned(),
        join.fingerprint,
        "--cluster".to_owned(),
        join.cluster,
        "--token".to_owned(),
        join.token,
        "--service".to_owned(),
        service.to_owned(),
        "--index".to_owned(),
        index.to_string(),
    ];
    if !command.is_empty() {
        line.push("--".to_owned());
        line.extend(command.iter().cloned());
    }
    println!("{}", line.iter().map(|w| shell_quote(w)).collect::<Vec<_>>().join(" "));
    Ok(())
}

/// `word` as one word for a POSIX shell.
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%".contains(c));
    if plain { word.to_owned() } else { format!("'{}'", word.replace('\'', "'\\''")) }
}

/// `boxer scale`: asks the cluster's `boxer up` for the new shape, then
/// waits until `status.json` shows it (new nodes joined, removed ones
/// gone); exit 1 when it did not within `timeout`.
async fn scale(changes: Vec<(String, u32)>, cluster: Option<String>, timeout: u64) -> anyhow::Result<i32> {
    let cluster = pick_cluster(cluster)?;
    let dir = state::cluster_dir(&cluster);
    anyhow::ensure!(state::running_pid(&dir).is_some(), "cluster {cluster} is not running ({})", looked_in(&dir));
    let request = boxer::control::ScaleRequest { replicas: changes.iter().cloned().collect() };
    let answer = boxer::control::scale(&dir, &request).await.with_context(|| format!("scaling cluster {cluster}"))?;
    for line in &answer.lines {
        println!("{line}");
    }
    if !answer.ok {
        return Ok(1);
    }
    let started = std::time::Instant::now();
    let deadline = started + std::time::Duration::from_secs(timeout);
    loop {
        let status =
            state::Status::read(&dir).with_context(|| format!("reading {}", dir.join("status.json").display()))?;
        let mut waiting = Vec::new();
        for (service, n) in &changes {
            let nodes: Vec<_> = status
                .nodes
                .iter()
                .filter(|node| node.name.rsplit_once('-').is_some_and(|(s, _)| s == service))
                .filter(|node| node.note.as_deref() != Some(up::OTHER_MEMBER_NOTE))
                .collect();
            let joined = nodes.iter().filter(|node| node.id.is_some()).count();
            if nodes.len() != *n as usize || joined < *n as usize {
                waiting.push(format!("{service}: {joined} joined of {} (want {n})", nodes.len()));
            }
        }
        if waiting.is_empty() {
            println!("cluster {cluster}: new shape in {:.1} s", started.elapsed().as_secs_f64());
            return Ok(0);
        }
        if std::time::Instant::now() > deadline {
            eprintln!("cluster {cluster}: not there after {timeout} s: {}", waiting.join("; "));
            return Ok(1);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

async fn down(cluster: Option<String>) -> anyhow::Result<()> {
    let cluster = pick_cluster(cluster)?;
    let dir = state::cluster_dir(&cluster);
    let Some(pid) = state::running_pid(&dir) else {
        println!("cluster {cluster} is not running ({})", looked_in(&dir));
        return Ok(());
    };
    // SAFETY: kill(2) on the pid recorded by `boxer up`.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    eprintln!("stopping cluster {cluster} (boxer up pid {pid})...");
    for _ in 0..300 {
        if state::running_pid(&dir).is_none() {
            println!("cluster {cluster} stopped");
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    anyhow::bail!("cluster {cluster} did not stop within 30 s (boxer up pid {pid})")
}

fn print_members(membership: &Membership) {
    println!("{:<8} {:<20} {:<16} {:<22} LISTENING", "NODE", "NAME", "OVERLAY", "REFLEXIVE");
    for m in membership.members() {
        let ports: Vec<String> = m.listening.iter().map(u16::to_string).collect();
        println!(
            "{:<8} {:<20} {:<16} {:<22} {}",
            m.node_id.to_string(),
            m.replica_name(),
            m.overlay_ip.to_string(),
            m.reflexive.to_string(),
            ports.join(",")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn words_are_quoted_for_a_posix_shell_only_when_needed() {
        assert_eq!(shell_quote("--token"), "--token");
        assert_eq!(shell_quote("203.0.113.7:4740"), "203.0.113.7:4740");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's $HOME"), r"'it'\''s $HOME'");
        assert_eq!(shell_quote(""), "''");
    }
}
