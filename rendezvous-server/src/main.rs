//! `rendezvous-server`: the Boxer rendezvous as a standalone program.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use rendezvous::limits::Limits;
use rendezvous::{Config, Rendezvous};

/// Boxer rendezvous server: admits nodes into clusters, assigns overlay
/// addresses and names, and pushes membership to every node.
///
/// Clients pin the certificate fingerprint this prints at start. The TLS key
/// is kept in the state directory, so the fingerprint survives restarts.
/// Clusters and their members are saved there too (clusters.json): a
/// rendezvous restarted on the same state directory and address takes them
/// back, and the runtimes reconnect and rejoin as the members they were.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// UDP address to listen on.
    #[arg(long, default_value = "0.0.0.0:4740", env = "BOXER_RENDEZVOUS_LISTEN")]
    listen: SocketAddr,
    /// Directory for the TLS key, its certificate, a generated admin token
    /// and the saved clusters.
    #[arg(long, default_value = "rendezvous-state", env = "BOXER_RENDEZVOUS_STATE")]
    state_dir: PathBuf,
    /// Token that authorises creating and deleting clusters. Without it, the
    /// token saved in the state directory is used, or a new one generated.
    #[arg(long, env = "BOXER_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Connections open at once from one IP address (many nodes can share
    /// one: functions behind a NAT gateway).
    #[arg(long, default_value_t = Limits::default().connections_per_source, value_name = "N")]
    max_connections_per_source: usize,
    /// New connections (joins, watches) per second from one IP address;
    /// beyond it they are refused before the handshake.
    #[arg(long, default_value_t = Limits::default().new_connections_per_source, value_name = "N",
          value_parser = positive)]
    connections_per_source_per_sec: f64,
    /// New connections one IP address may make at once (a cluster starting
    /// behind one NAT).
    #[arg(long, default_value_t = Limits::default().new_connections_burst, value_name = "N", value_parser = positive)]
    connection_burst_per_source: f64,
    /// Relayed traffic one node may send, in megabits per second (a 16th of
    /// a second's worth at once); beyond it packets are dropped like on a
    /// full link.
    #[arg(long, default_value_t = Limits::default().relay_bytes_per_sec * 8.0 / 1e6, value_name = "MBIT",
          value_parser = positive)]
    relay_mbit_per_node: f64,
    /// Output one node may ship, in KiB per second (16 s worth at once); beyond
    /// it lines are dropped and the count written into its log.
    #[arg(long, default_value_t = Limits::default().log_bytes_per_sec / 1024.0, value_name = "KIB",
          value_parser = positive)]
    log_kib_per_node: f64,
}

/// The relay burst is this fraction of a second's worth (the default's 8 MiB
/// is about a 16th of 1 Gbit/s): enough for a congestion window in flight.
const RELAY_BURST_FRACTION: f64 = 16.0;

/// The log burst is this many seconds' worth (the default's 16 MiB).
const LOG_BURST_SECONDS: f64 = 16.0;

/// A finite number above zero.
fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a number above zero")),
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
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let server = Rendezvous::bind(Config {
            listen: args.listen,
            state_dir: args.state_dir.clone(),
            admin_token: args.admin_token.clone(),
            socket: None,
            persist: true,
            limits: Limits {
                connections_per_source: args.max_connections_per_source,
                new_connections_per_source: args.connections_per_source_per_sec,
                new_connections_burst: args.connection_burst_per_source,
                relay_bytes_per_sec: args.relay_mbit_per_node * 1e6 / 8.0,
                relay_burst: args.relay_mbit_per_node * 1e6 / 8.0 / RELAY_BURST_FRACTION,
                log_bytes_per_sec: args.log_kib_per_node * 1024.0,
                log_burst: args.log_kib_per_node * 1024.0 * LOG_BURST_SECONDS,
            },
        })
        .with_context(|| format!("starting rendezvous on {} (state in {})", args.listen, args.state_dir.display()))?;
        let addr = server.local_addr().context("reading the bound address")?;
        println!("boxer rendezvous {} (protocol {})", env!("CARGO_PKG_VERSION"), boxer_proto::PROTOCOL_VERSION);
        println!("listening:   {addr}");
        println!("fingerprint: {}", server.fingerprint());
        match &args.admin_token {
            Some(_) => println!("admin token: (as given)"),
            None => println!(
                "admin token: {} (kept in {})",
                server.admin_token(),
                args.state_dir.join(rendezvous::ADMIN_TOKEN_FILE).display()
            ),
        }
        let closer = server.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("interrupted, shutting down");
            closer.close();
        });
        let waiter = server.clone();
        server.run().await;
        waiter.wait_closed().await;
        Ok(0)
    })
}
