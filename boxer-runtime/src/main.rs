//! `boxer-runtime`: joins a Boxer cluster and carries overlay TCP connections.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use boxer_net::rendezvous::RendezvousAddr;
use boxer_proto::Fingerprint;
use boxer_proto::control::Stream;
use boxer_runtime::{ForwardSpec, Node, NodeConfig, app, output};
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
#[derive(Debug, Parser)]
#[command(version, about, long_about, verbatim_doc_comment)]
struct Args {
    /// Rendezvous UDP address.
    #[arg(long, env = "BOXER_RENDEZVOUS")]
    rendezvous: SocketAddr,
    /// SHA-256 fingerprint of the rendezvous certificate (printed by the server at start).
    #[arg(long, env = "BOXER_FINGERPRINT")]
    fingerprint: Fingerprint,
    /// Cluster to join.
    #[arg(long, env = "BOXER_CLUSTER")]
    cluster: String,
    /// The cluster's join token.
    #[arg(long, env = "BOXER_JOIN_TOKEN", hide_env_values = true)]
    token: String,
    /// Service this node is a replica of (its name becomes SERVICE-INDEX).
    #[arg(long, env = "BOXER_SERVICE")]
    service: String,
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
    /// Directory for the shim's control socket and /etc files (default: a
    /// fresh directory under $TMPDIR, removed at exit).
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
    #[arg(long, value_name = "NAME:PORT", value_parser = parse_wait_for)]
    wait_for: Vec<(String, u16)>,
    /// Seconds the program gets between SIGTERM and SIGKILL when the runtime stops.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    grace: u64,
    /// The program to run on the overlay, with its arguments.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

fn parse_wait_for(s: &str) -> Result<(String, u16), String> {
    let (name, port) = s.rsplit_once(':').ok_or_else(|| format!("{s:?}: expected NAME:PORT, e.g. db-0:6379"))?;
    let port = port.parse().map_err(|_| format!("{s:?}: {port:?} is not a port number"))?;
    if name.is_empty() {
        return Err(format!("{s:?}: empty name"));
    }
    Ok((name.to_owned(), port))
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
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    // One current-thread runtime per process: QUIC bulk transfer was 10-80%
    // slower on a multi-thread runtime (cross-thread wakeups per packet).
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run(args))
}

/// A run directory we created, removed on drop.
struct TempRunDir(PathBuf);

impl Drop for TempRunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Exit code of a finished program, shell style (128 + signal).
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

async fn run(args: Args) -> anyhow::Result<i32> {
    // Check the program before joining, so a mistake costs no cluster slot.
    let app = match args.command.first() {
        Some(cmd) => {
            let path = app::resolve_command(cmd)?;
            app::check_executable(&path)?;
            let shim = args.shim.clone().unwrap_or_else(app::default_shim);
            if !shim.is_file() {
                return Err(app::AppError::NoShim(shim).into());
            }
            Some((path, shim))
        }
        None => None,
    };
    let mut _temp = None;
    let run_dir = match (&args.run_dir, &app) {
        (Some(dir), _) => Some(dir.clone()),
        (None, Some(_)) => {
            let dir = std::env::temp_dir().join(format!(
                "boxer-{}-{}-{}-{}",
                args.cluster,
                args.service,
                args.index,
                std::process::id()
            ));
            _temp = Some(TempRunDir(dir.clone()));
            Some(dir)
        }
        (None, None) => None,
    };
    let config = NodeConfig {
        rendezvous: RendezvousAddr { addr: args.rendezvous, fingerprint: args.fingerprint },
        cluster: args.cluster.clone(),
        join_token: args.token,
        service: args.service.clone(),
        index: args.index,
        bind: args.bind,
        forwards: args.forwards,
        expose: args.expose,
        status_file: args.status_file,
        run_dir,
        shared_namespace: args.shared_namespace,
    };
    let node = Node::start(config).await.with_context(|| {
        format!(
            "joining cluster {:?} as {}-{} through rendezvous {}",
            args.cluster, args.service, args.index, args.rendezvous
        )
    })?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let name = node.joined().names[0].clone();
    let Some((path, shim)) = app else {
        tokio::select! {
            e = node.stopped() => {
                return Err(anyhow::anyhow!("{e}")).context(format!("node {name} stopped"));
            }
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted, leaving the cluster"),
            _ = terminate.recv() => tracing::info!("terminated, leaving the cluster"),
        }
        node.shutdown().await;
        return Ok(0);
    };

    for (target, port) in &args.wait_for {
        tracing::info!("waiting for {target}:{port} to listen");
        tokio::select! {
            r = node.wait_listening(target, *port) => r.with_context(|| format!("waiting for {target}:{port}"))?,
            _ = tokio::signal::ctrl_c() => { node.shutdown().await; return Ok(130); }
            _ = terminate.recv() => { node.shutdown().await; return Ok(143); }
        }
    }

    let mut command = tokio::process::Command::new(&path);
    command.args(&args.command[1..]).kill_on_drop(true);
    command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    if std::env::var_os("PYTHONUNBUFFERED").is_none() {
        // Output goes to a pipe, not a terminal: without this Python holds
        // its prints until exit and the cluster's logs arrive late.
        command.env("PYTHONUNBUFFERED", "1");
    }
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            // Its own process group, so the runtime can stop every process the
            // program forks; and killed if the runtime dies without cleaning up.
            if libc::setpgid(0, 0) != 0 || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.env("LD_PRELOAD", app::ld_preload(&shim, std::env::var_os("LD_PRELOAD")));
    for (key, value) in node.app_env().expect("a run directory is set when a command is given") {
        command.env(key, value);
    }
    let mut child = command.spawn().with_context(|| format!("starting {} on node {name}", path.display()))?;
    let pid = child.id();
    let mut relays = Vec::new();
    if let Some(out) = child.stdout.take() {
        relays.push(tokio::spawn(output::relay(node.clone(), out, Stream::Stdout, tokio::io::stdout())));
    }
    if let Some(err) = child.stderr.take() {
        relays.push(tokio::spawn(output::relay(node.clone(), err, Stream::Stderr, tokio::io::stderr())));
    }
    // Ships the rest of the output, then the exit status.
    let finish = |code: i32| {
        let node = node.clone();
        async move {
            for r in relays {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), r).await;
            }
            node.report_exit(code).await;
            node.shutdown().await;
        }
    };
    tracing::info!(pid, command = ?args.command, "program started");
    // Signals the program's whole process group.
    let signal_group = |sig: i32| {
        if let Some(pid) = pid {
            // SAFETY: kill(2) on the process group we created for the program.
            unsafe { libc::kill(-(pid as i32), sig) };
        }
    };
    let stop_reason = tokio::select! {
        status = child.wait() => {
            let code = exit_code(status.with_context(|| format!("waiting for {}", path.display()))?);
            tracing::info!(code, "program exited");
            // Nothing the program started outlives it.
            signal_group(libc::SIGKILL);
            finish(code).await;
            return Ok(code);
        }
        e = node.stopped() => Err(anyhow::anyhow!("{e}")),
        _ = tokio::signal::ctrl_c() => Ok("interrupted"),
        _ = terminate.recv() => Ok("terminated"),
    };
    // Stop the program: SIGTERM, then SIGKILL after the grace period.
    signal_group(libc::SIGTERM);
    let grace = std::time::Duration::from_secs(args.grace);
    let status = match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status?,
        Err(_) => {
            tracing::warn!("program did not exit within {grace:?} of SIGTERM; killing it");
            signal_group(libc::SIGKILL);
            child.wait().await?
        }
    };
    signal_group(libc::SIGKILL);
    let code = exit_code(status);
    finish(code).await;
    match stop_reason {
        Ok(why) => {
            tracing::info!(code, "{why}: program stopped");
            Ok(code)
        }
        Err(e) => Err(e).context(format!("node {name} stopped")),
    }
}
