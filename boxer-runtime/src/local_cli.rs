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
use tokio::signal::unix::{Signal, SignalKind, signal};

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
    // Handlers first: as PID 1 of its own namespace (--isolate) the runtime
    // gets no signal it has no handler for, so they were kept blocked until
    // now; stopping must work from the first moment, also while joining.
    let mut stops = StopSignals::register()?;
    boxer_runtime::machine::unblock_stop_signals();
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
    let node = tokio::select! {
        node = Node::start(run.config) => node
            .with_context(|| format!("joining cluster {cluster:?} as {replica} through rendezvous {rendezvous}"))?,
        (code, what) = stops.recv() => {
            tracing::info!("{what} while joining");
            return Ok(code);
        }
    };
    let name = node.joined().names[0].clone();
    let Some((path, shim)) = app else {
        tokio::select! {
            e = node.stopped() => {
                return Err(anyhow::anyhow!("{e}")).context(format!("node {name} stopped"));
            }
            (_, what) = stops.recv() => tracing::info!("{what}, leaving the cluster"),
            () = node.stop_requested() => tracing::info!("asked to stop by the cluster's owner, leaving the cluster"),
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
            (code, what) = stops.recv() => {
                tracing::info!("{what} while waiting");
                node.shutdown().await;
                return Ok(code);
            }
            () = node.stop_requested() => {
                tracing::info!("asked to stop by the cluster's owner while waiting");
                let code = 128 + libc::SIGTERM;
                node.report_exit(code).await;
                node.shutdown().await;
                return Ok(code);
            }
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
        let (_, what) = stops.recv().await;
        tracing::info!("{what}");
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

/// The signals that stop a local node (SIGTERM, SIGINT, SIGHUP, SIGQUIT:
/// [`boxer_runtime::machine::STOP_SIGNALS`]), handled from the start.
struct StopSignals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
    quit: Signal,
}

impl StopSignals {
    fn register() -> anyhow::Result<Self> {
        let on = |kind: SignalKind| signal(kind).context("installing the runtime's signal handlers");
        Ok(Self {
            terminate: on(SignalKind::terminate())?,
            interrupt: on(SignalKind::interrupt())?,
            hangup: on(SignalKind::hangup())?,
            quit: on(SignalKind::quit())?,
        })
    }

    /// The next stop signal: the exit code a shell reports for it (128 + n)
    /// and what it was.
    async fn recv(&mut self) -> (i32, &'static str) {
        tokio::select! {
            _ = self.terminate.recv() => (128 + libc::SIGTERM, "terminated"),
            _ = self.interrupt.recv() => (128 + libc::SIGINT, "interrupted"),
            _ = self.hangup.recv() => (128 + libc::SIGHUP, "hung up"),
            _ = self.quit.recv() => (128 + libc::SIGQUIT, "quit"),
        }
    }
}
