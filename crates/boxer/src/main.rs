//! `boxer`: the Boxer command line.
//!
//! This first version manages clusters on a rendezvous and watches their
//! membership; `boxer up` (launching whole clusters) comes with the launcher.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Context;
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

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
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
            let (snapshot, mut feed) =
                rendezvous::watch(&endpoint, rendezvous.addr(), WatchRequest { cluster: cluster.clone(), token, logs: false })
                    .await
                    .with_context(|| format!("watching cluster {cluster:?} on rendezvous {}", rendezvous.rendezvous))?;
            let mut membership = Membership::from_snapshot(&cluster, snapshot);
            print_members(&membership);
            if !watch {
                return Ok(());
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
    Ok(())
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
