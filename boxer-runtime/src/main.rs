//! `boxer-runtime`: joins a Boxer cluster and carries overlay TCP connections.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use boxer_net::rendezvous::RendezvousAddr;
use boxer_proto::Fingerprint;
use boxer_runtime::{ForwardSpec, Node, NodeConfig};
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
}

fn main() -> anyhow::Result<()> {
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

async fn run(args: Args) -> anyhow::Result<()> {
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
    };
    let node = Node::start(config).await.with_context(|| {
        format!(
            "joining cluster {:?} as {}-{} through rendezvous {}",
            args.cluster, args.service, args.index, args.rendezvous
        )
    })?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        e = node.stopped() => {
            return Err(anyhow::anyhow!("{e}")).context(format!("node {} stopped", node.joined().names[0]));
        }
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted, leaving the cluster"),
        _ = terminate.recv() => tracing::info!("terminated, leaving the cluster"),
    }
    node.shutdown().await;
    Ok(())
}
