//! The binary's local mode: join with the flags given, run the command (if
//! any) under supervision, exit with its status.
//!
//! Part of the `boxer-runtime` binary, not the library: it turns the join flags
//! into a node and a [`supervise::Program`], and errors into messages for the
//! person at the terminal (anyhow with context).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use boxer_proto::lambda::StopCause;
use boxer_runtime::supervise::{self, Program};
use boxer_runtime::{Node, NodeConfig, app, host::Host, wait};
use tokio::signal::unix::{SignalKind, signal};

/// How long the last output and the exit status may take to reach the
/// rendezvous: each relay drains for up to 2 s, and the rendezvous confirms
/// the exit within 3 s.
const FINISH_WITHIN: Duration = Duration::from_secs(5);

/// What the local mode needs beyond the node's configuration.
#[derive(Debug)]
pub struct LocalRun {
    /// The node to start (run directory filled in here when a command runs).
    pub config: NodeConfig,
    /// Program and arguments; empty for a forward/expose-only node.
    pub command: Vec<String>,
    /// The shim library, if not the default.
    pub shim: Option<PathBuf>,
    /// `NAME:PORT`s that must listen before the program starts.
    pub wait_for: Vec<(String, u16)>,
    /// How long to wait for them before giving up (exit code
    /// [`wait::WAIT_TIMEOUT_EXIT_CODE`]); `None`: as long as it takes.
    pub wait_timeout: Option<Duration>,
    /// Seconds between SIGTERM and SIGKILL.
    pub grace: u64,
}

/// Joins, runs the command, returns its exit code.
pub async fn run(mut run: LocalRun) -> anyhow::Result<i32> {
    // Check the program before joining, so a mistake costs no cluster slot.
    let app = match run.command.first() {
        Some(cmd) => {
            let path = app::resolve_command(cmd)?;
            // Explicit --expose/--forward ports: static and Go programs run
            // without the shim.
            let explicit = !run.config.expose.is_empty() || !run.config.forwards.is_empty();
            let shim = run.shim.clone().unwrap_or_else(app::default_shim);
            let shim = app::shim_for(&path, &run.config.service, shim, explicit)?;
            Some((path, shim))
        }
        None => None,
    };
    let host = Host::probe();
    let config = &mut run.config;
    if config.run_dir.is_none() && app.is_some() {
        // The node makes its own directory inside, and removes it at the end.
        config.run_dir = Some(std::env::temp_dir());
    }
    let (cluster, replica, rendezvous) =
        (config.cluster.clone(), format!("{}-{}", config.service, config.index), config.rendezvous.addr);
    let node = Node::start(run.config)
        .await
        .with_context(|| format!("joining cluster {cluster:?} as {replica} through rendezvous {rendezvous}"))?;
    let mut terminate = signal(SignalKind::terminate())?;
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

    if !run.wait_for.is_empty() {
        tokio::select! {
            r = wait::wait_for(&node, &run.wait_for, run.wait_timeout) => match r {
                Ok(()) => {}
                Err(e @ wait::WaitError::TimedOut { .. }) => {
                    tracing::error!("{name}: {e}");
                    return Ok(wait::give_up(&node, &e).await);
                }
                Err(e) => return Err(e).context(format!("node {name} did not start its program")),
            },
            _ = tokio::signal::ctrl_c() => { node.shutdown().await; return Ok(130); }
            _ = terminate.recv() => { node.shutdown().await; return Ok(143); }
        }
    }

    let program = Program {
        path,
        args: run.command[1..].to_vec(),
        shim,
        env: Vec::new(),
        workdir: None,
        grace: Duration::from_secs(run.grace),
        finish_within: FINISH_WITHIN,
        pdeathsig: host.pdeathsig,
    };
    let stop = async {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
            _ = terminate.recv() => tracing::info!("terminated"),
        }
        StopCause::Terminated
    };
    let outcome = supervise::run(&node, &program, stop).await?;
    match outcome.stopped {
        Some(StopCause::ClusterStopped) => {
            Err(anyhow::anyhow!("{}", node.stopped().await)).context(format!("node {name} stopped"))
        }
        Some(_) => {
            tracing::info!(code = outcome.exit_code, "program stopped");
            Ok(outcome.exit_code)
        }
        None => Ok(outcome.exit_code),
    }
}
