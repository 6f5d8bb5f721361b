//! `boxer-runtime`: joins a Boxer cluster and carries overlay TCP connections,
//! as a local process (join flags) or as an AWS Lambda custom runtime.

mod local_cli;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use boxer_net::rendezvous::RendezvousAddr;
use boxer_proto::Fingerprint;
use boxer_runtime::lambda::{self, api};
use boxer_runtime::{ForwardSpec, NodeConfig};
use clap::Parser;

/// Boxer runtime: makes this process a node of a Boxer cluster.
///
/// It joins the cluster through the rendezvous, learns every other node's
/// overlay address and keys, and carries TCP connections to and from them over
/// one QUIC connection per peer. Without the shim, two explicit proxy modes:
///
///   --forward 7000=db-0:6379   local port 7000 reaches port 6379 on node db-0
///   --expose 6379              other nodes may connect to local port 6379
///
/// With a command after `--`, the runtime starts it with the Boxer shim
/// preloaded: the program sees overlay addresses and names (`db-0`), its
/// listening ports are announced, its connections to other nodes go over
/// QUIC. The runtime exits with the program's exit status.
///
///   boxer-runtime [join flags] -- redis-server --port 6379
///
/// Every join flag can also come from the environment (BOXER_*).
///
/// Without join flags and with AWS_LAMBDA_RUNTIME_API set, it is an AWS
/// Lambda custom runtime (`bootstrap`): each invocation's event names the
/// node to start and the program to run, the answer reports how it ended.
#[derive(Debug, Parser)]
#[command(version, about, long_about, verbatim_doc_comment)]
#[command(
    override_usage = "boxer-runtime [OPTIONS] --rendezvous <RENDEZVOUS> --fingerprint <FINGERPRINT> --cluster <CLUSTER> --token <TOKEN> --service <SERVICE> [-- <COMMAND>...]"
)]
struct Args {
    /// Rendezvous UDP address.
    #[arg(long, env = "BOXER_RENDEZVOUS")]
    rendezvous: Option<SocketAddr>,
    /// SHA-256 fingerprint of the rendezvous certificate (printed by the server at start).
    #[arg(long, env = "BOXER_FINGERPRINT")]
    fingerprint: Option<Fingerprint>,
    /// Cluster to join.
    #[arg(long, env = "BOXER_CLUSTER")]
    cluster: Option<String>,
    /// The cluster's join token.
    #[arg(long, env = "BOXER_JOIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Service this node is a replica of (its name becomes SERVICE-INDEX).
    #[arg(long, env = "BOXER_SERVICE")]
    service: Option<String>,
    /// Replica index within the service.
    #[arg(long, env = "BOXER_INDEX", default_value_t = 0)]
    index: u32,
    /// UDP address of the node's socket (rendezvous and all peers).
    #[arg(long, env = "BOXER_BIND", default_value = "0.0.0.0:0")]
    bind: SocketAddr,
    /// Carry connections to a local address to NAME:PORT in the cluster:
    /// [ADDR:]PORT=NAME:PORT. Repeatable.
    #[arg(long = "forward", value_name = "[ADDR:]PORT=NAME:PORT")]
    forwards: Vec<ForwardSpec>,
    /// Accept overlay connections to this port and connect them to 127.0.0.1:PORT. Repeatable.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    expose: Vec<u16>,
    /// Keep a JSON copy of this node's membership table at this path.
    #[arg(long, value_name = "PATH")]
    status_file: Option<PathBuf>,
    /// Where to make the node's run directory, with the /etc files the shim
    /// shows the program (default: $TMPDIR). The node creates a fresh
    /// `boxer-<node>-<random>` directory inside, readable by every user so
    /// servers that drop root still see the files, and removes it when the
    /// node ends; DIR itself is never changed. The control socket is in the
    /// abstract namespace.
    #[arg(long, value_name = "DIR", env = "BOXER_RUN_DIR")]
    run_dir: Option<PathBuf>,
    /// Other nodes share this network namespace: narrow the app's wildcard
    /// binds to this node's own loopback address so equal ports do not clash.
    #[arg(long, env = "BOXER_SHARED_NAMESPACE")]
    shared_namespace: bool,
    /// The shim library (default: libboxer_shim.so beside this executable).
    #[arg(long, value_name = "PATH", env = "BOXER_SHIM")]
    shim: Option<PathBuf>,
    /// Start the program only once NAME resolves to a node listening on PORT. Repeatable.
    #[arg(long, value_name = "NAME:PORT", value_parser = boxer_runtime::wait::parse_target)]
    wait_for: Vec<(String, u16)>,
    /// Give up after waiting this long for the --wait-for targets: the node
    /// reports why and exits with code 124 without starting the program.
    #[arg(
        long,
        value_name = "SECONDS",
        requires = "wait_for",
        value_parser = clap::value_parser!(u64).range(1..=boxer_runtime::wait::MAX_WAIT_TIMEOUT_SECS)
    )]
    wait_timeout: Option<u64>,
    /// Make the node a machine of its own before joining: its own mount
    /// namespace with empty private /tmp, /var/tmp and /dev/shm, its own PID
    /// namespace (the runtime is its PID 1; `ps` shows the node's processes
    /// only) and its own hostname (the node's name). Needs root or a user
    /// namespace of its own (`boxer up` passes it in --net lab and shared).
    #[arg(long)]
    isolate: bool,
    /// Check that this host can give nodes their own namespaces (what
    /// --isolate does, with nothing to run), exit 0 if so.
    #[arg(long, hide = true, conflicts_with_all = ["rendezvous", "command"])]
    probe_isolation: bool,
    /// With --isolate: give the node its own empty, writable DIR (same owner
    /// and mode as the host's, which must exist). Repeatable.
    #[arg(long = "private", value_name = "DIR", requires = "isolate")]
    private: Vec<PathBuf>,
    /// Seconds the program gets between SIGTERM and SIGKILL when the runtime stops.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    grace: u64,
    /// The program to run on the overlay, with its arguments.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// What this process is.
enum Mode {
    /// A local node joining with the flags.
    Local(Box<local_cli::LocalRun>),
    /// A Lambda custom runtime serving the Runtime API at this endpoint.
    Lambda(http::Uri),
}

impl Args {
    /// Local with join flags; Lambda without them when the Runtime API is
    /// there; otherwise an error that says what to give.
    fn mode(self) -> anyhow::Result<Mode> {
        let given = self.rendezvous.is_some()
            || self.fingerprint.is_some()
            || self.cluster.is_some()
            || self.token.is_some()
            || self.service.is_some();
        if !given {
            return match std::env::var(api::RUNTIME_API_ENV) {
                Ok(value) if !value.is_empty() => {
                    if !self.command.is_empty() || !self.forwards.is_empty() || !self.expose.is_empty() {
                        tracing::warn!(
                            "as a Lambda runtime the events name the program; the command line's is ignored"
                        );
                    }
                    Ok(Mode::Lambda(api::parse_endpoint(&value)?))
                }
                _ => Err(anyhow::anyhow!(
                    "no cluster to join: give --rendezvous, --fingerprint, --cluster, --token and --service \
                     (or BOXER_RENDEZVOUS, BOXER_FINGERPRINT, BOXER_CLUSTER, BOXER_JOIN_TOKEN, BOXER_SERVICE), \
                     or run as an AWS Lambda custom runtime ({} set)",
                    api::RUNTIME_API_ENV
                )),
            };
        }
        let (Some(addr), Some(fingerprint), Some(cluster), Some(join_token), Some(service)) =
            (self.rendezvous, self.fingerprint, self.cluster.clone(), self.token.clone(), self.service.clone())
        else {
            let missing: Vec<&str> = [
                (self.rendezvous.is_none(), "--rendezvous"),
                (self.fingerprint.is_none(), "--fingerprint"),
                (self.cluster.is_none(), "--cluster"),
                (self.token.is_none(), "--token"),
                (self.service.is_none(), "--service"),
            ]
            .into_iter()
            .filter_map(|(missing, flag)| missing.then_some(flag))
            .collect();
            anyhow::bail!("missing {} (every join flag is needed to join a cluster)", missing.join(", "));
        };
        let config = NodeConfig {
            rendezvous: RendezvousAddr { addr, fingerprint },
            cluster,
            join_token,
            service,
            index: self.index,
            bind: self.bind,
            forwards: self.forwards,
            expose: self.expose,
            status_file: self.status_file,
            run_dir: self.run_dir,
            shared_namespace: self.shared_namespace,
        };
        Ok(Mode::Local(Box::new(local_cli::LocalRun {
            config,
            command: self.command,
            shim: self.shim,
            wait_for: self.wait_for,
            wait_timeout: self.wait_timeout.map(std::time::Duration::from_secs),
            grace: self.grace,
        })))
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
    // `bootstrap bench-worker …`: `boxer bench`'s programs, carried in the
    // runtime so that every function has them (see bench_worker).
    if std::env::args_os().nth(1).is_some_and(|a| a == "bench-worker") {
        let cli = boxer_runtime::bench_worker::WorkerCli::parse_from(std::env::args_os().skip(1));
        return cli.command.run().map(|()| 0);
    }
    // `bootstrap map-item …`: one item of `boxer map` (see map_item).
    if std::env::args_os().nth(1).is_some_and(|a| a == "map-item") {
        let args = boxer_runtime::map_item::MapItemArgs::parse_from(std::env::args_os().skip(1));
        return Ok(boxer_runtime::map_item::run(&args));
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    if args.probe_isolation {
        let probe = boxer_runtime::machine::Machine { hostname: "probe".into(), private: vec![], keep: vec![] };
        boxer_runtime::machine::enter(&probe)?;
        return Ok(0);
    }
    let shim = args.shim.clone();
    let machine = args.isolate.then(|| boxer_runtime::machine::Machine {
        hostname: boxer_runtime::machine::hostname_for(&boxer_proto::names::replica_name(
            args.service.as_deref().unwrap_or_default(),
            args.index,
        )),
        private: args.private.clone(),
        keep: [std::env::current_dir().ok(), Some(args.shim.clone().unwrap_or_else(boxer_runtime::app::default_shim))]
            .into_iter()
            .flatten()
            .filter_map(|p| p.canonicalize().ok())
            .collect(),
    });
    let mode = args.mode()?;
    if let (Some(machine), Mode::Local(_)) = (&machine, &mode) {
        // Before any thread exists: this forks, and only the child returns.
        boxer_runtime::machine::enter(machine)?;
    }
    // One current-thread runtime per process: QUIC bulk transfer was 10-80%
    // slower on a multi-thread runtime (cross-thread wakeups per packet).
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match mode {
        Mode::Local(run) => runtime.block_on(local_cli::run(*run)),
        Mode::Lambda(endpoint) => {
            let api = api::RuntimeApi::new(endpoint.clone());
            runtime
                .block_on(lambda::serve(api, shim))
                .with_context(|| format!("serving the Lambda Runtime API at {endpoint}"))?;
            Ok(0)
        }
    }
}
