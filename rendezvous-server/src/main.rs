//! `rendezvous-server`: the Boxer rendezvous as a standalone program.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
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
        server.run().await;
        Ok(0)
    })
}
