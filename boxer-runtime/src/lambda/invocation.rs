//! One invocation: one node joins, runs its program, reports, leaves.
//!
//! Each invocation joins afresh (a warm instance is reused for whatever node
//! the next event names) and leaves nothing behind: its scratch directory is
//! removed and the node has left the cluster before the answer is posted.
//! Every failure becomes an `ErrorBody` whose `errorType` tells the CLI what
//! happened (bad event, refused, unreachable, bad command), never a panic or
//! an exit: the instance serves the next invocation either way.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use boxer_net::rendezvous::RendezvousError;
use boxer_proto::control::CloseCode;
use boxer_proto::lambda::{
    ERROR_BAD_COMMAND, ERROR_JOIN_REFUSED, ERROR_RUNTIME, ERROR_UNREACHABLE, ErrorBody, NodeReport, StopCause,
    TAKEOVER_RETRY_MS, TAKEOVER_WAIT_SECS,
};
use tokio::signal::unix::Signal;
use tokio::time::Instant;
use tracing::{info, warn};

use super::api::Invocation;
use super::deadline;
use super::event::{self, BadEvent, NodeRequest};
use super::task::{self, Scratch};
use crate::host::Host;
use crate::supervise::{self, Program, SuperviseError};
use crate::{Node, NodeConfig, NodeError, app, wait};

/// How long a node may take to join. A join is one QUIC handshake and a
/// table insert at the rendezvous: well under a second between any two
/// regions. 10 s covers a handshake that needs several retransmissions
/// (quinn's first probe timeout is ~1 s, doubling) and still leaves an
/// invocation whose rendezvous is gone to fail fast instead of idling,
/// billed, until its deadline.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound on shipping the last output and exit status after the program
/// ended: what [`deadline::REPORT_MARGIN`] keeps, less 1 s for leaving the
/// cluster (`Node::shutdown` waits up to 1 s) and 1 s for reaping the
/// program and posting the answer.
const FINISH_WITHIN: Duration = Duration::from_secs(deadline::REPORT_MARGIN.as_secs() - 2);

/// What lives as long as the instance: host facts, where the shim is.
#[derive(Debug)]
pub struct Instance {
    /// What the host allows; reported with every answer.
    pub host: Host,
    /// The shim library.
    pub shim: PathBuf,
    /// The function's code directory.
    pub task_root: PathBuf,
    /// Invocations served so far (names scratch directories).
    pub served: u64,
    /// The runtime got SIGTERM: answer, then exit.
    pub terminated: bool,
}

/// Handles one invocation, received at `received` (`now_ms`: the wall clock
/// then, ms since the epoch).
pub async fn handle(
    instance: &mut Instance,
    invocation: &Invocation,
    received: Instant,
    now_ms: u64,
    terminate: &mut Signal,
) -> Result<NodeReport, ErrorBody> {
    instance.served += 1;
    let request = event::parse(&invocation.body).map_err(|e| {
        warn!("{e}");
        e.body()
    })?;
    let name = request.event.node_name();
    let plan = deadline::plan(invocation.deadline_ms, now_ms, request.timeout, request.grace);
    info!(node = %name, budget = ?plan.budget, source = ?plan.source, sigterm_after = ?plan.sigterm_after, grace = ?plan.grace, "invocation");
    let stop_at = received + plan.sigterm_after;

    let env = &request.event.env;
    let inherited_path = env.get("PATH").map(OsString::from).or_else(|| std::env::var_os("PATH"));
    let path = task::program_path(&instance.task_root, inherited_path.as_deref());
    let command = &request.event.command;
    // Explicit expose/forward ports: static and Go programs run without the shim.
    let explicit = !request.event.expose.is_empty() || !request.forwards.is_empty();
    let (program_path, shim) = app::resolve_command_in(&command[0], &path)
        .and_then(|p| {
            let shim = app::shim_for(&p, &request.event.service, instance.shim.clone(), explicit)?;
            Ok((p, shim))
        })
        .map_err(|e| error(ERROR_BAD_COMMAND, format!("node {name}: {e}")))?;
    let scratch = Scratch::create(&name, instance.served)
        .map_err(|e| error(ERROR_RUNTIME, format!("cannot create a scratch directory under /tmp: {e}")))?;
    let workdir = match &request.event.workdir {
        Some(rel) => {
            let dir = instance.task_root.join(rel);
            if !dir.is_dir() {
                return Err(BadEvent(format!(
                    "field `workdir`: {} is not a directory of the function's code",
                    dir.display()
                ))
                .body());
            }
            dir
        }
        None => scratch.work_dir(),
    };

    let node = join(&request, scratch.run_dir()).await?;
    let (gso, gro) = node.udp_offload();
    instance.host.note_udp_offload(gso, gro);

    if !request.wait_for.is_empty() {
        let waiting = wait::wait_for(&node, &request.wait_for, request.wait_timeout);
        let failure = tokio::select! {
            r = waiting => match r {
                Ok(()) => None,
                Err(e @ wait::WaitError::TimedOut { .. }) => {
                    // An ending of the node's own: reported like a program's
                    // exit (code 124), the reason on the node's line.
                    warn!("{name}: {e}");
                    let exit_code = wait::give_up(&node, &e).await;
                    return Ok(NodeReport {
                        node: name.clone(),
                        exit_code,
                        run_ms: 0,
                        stopped: None,
                        killed_after_grace: false,
                        last_output: vec![format!("{name}: {e}")],
                        host: instance.host.facts.clone(),
                    });
                }
                Err(e) => Some(format!("node {name} did not start its program: {e}")),
            },
            _ = tokio::time::sleep_until(stop_at) => {
                Some(format!("the invocation's deadline came while {name} waited for its wait_for targets; the program never started"))
            }
            _ = terminate.recv() => {
                instance.terminated = true;
                Some(format!("the runtime was terminated while {name} waited for its wait_for targets"))
            }
            () = node.stop_requested() => {
                // Scaled down before its program started: an ordinary
                // stop, reported as SIGTERM would end it.
                info!("{name}: asked to stop while waiting for its wait_for targets");
                let exit_code = 128 + libc::SIGTERM;
                node.report_exit(exit_code).await;
                node.shutdown().await;
                return Ok(NodeReport {
                    node: name.clone(),
                    exit_code,
                    run_ms: 0,
                    stopped: Some(StopCause::Requested),
                    killed_after_grace: false,
                    last_output: vec![],
                    host: instance.host.facts.clone(),
                });
            }
        };
        if let Some(failure) = failure {
            node.shutdown().await;
            return Err(error(ERROR_RUNTIME, failure));
        }
    }

    let mut program_env: Vec<(OsString, OsString)> = vec![("PATH".into(), path)];
    if let Some(home) = task::home_override(std::env::var_os("HOME").as_deref()) {
        program_env.push(("HOME".into(), home));
    }
    program_env.extend(env.iter().filter(|(k, _)| *k != "PATH").map(|(k, v)| (k.into(), v.into())));
    let program = Program {
        path: program_path,
        args: command[1..].to_vec(),
        shim,
        env: program_env,
        workdir: Some(workdir),
        grace: plan.grace,
        finish_within: FINISH_WITHIN,
        pdeathsig: instance.host.pdeathsig,
    };
    let terminated = &mut instance.terminated;
    let stop = async {
        tokio::select! {
            _ = tokio::time::sleep_until(stop_at) => {
                info!("the invocation's deadline is near");
                StopCause::Deadline
            }
            _ = terminate.recv() => {
                *terminated = true;
                info!("terminated");
                StopCause::Terminated
            }
        }
    };
    let outcome = supervise::run(&node, &program, stop).await.map_err(|e| {
        node_left(&node);
        match e {
            SuperviseError::Spawn { .. } => error(ERROR_BAD_COMMAND, e.to_string()),
            _ => error(ERROR_RUNTIME, e.to_string()),
        }
    })?;
    if !outcome.own_group {
        instance.host.note_refused("setpgid: refused".to_owned());
    }
    drop(scratch);
    Ok(NodeReport {
        node: name,
        exit_code: outcome.exit_code,
        run_ms: u64::try_from(outcome.run_time.as_millis()).unwrap_or(u64::MAX),
        stopped: outcome.stopped,
        killed_after_grace: outcome.killed_after_grace,
        last_output: outcome.last_output,
        host: instance.host.facts.clone(),
    })
}

/// Leaves the cluster in the background (the error path of a program that
/// did not start: the answer should not wait for it).
fn node_left(node: &Node) {
    let node = node.clone();
    tokio::spawn(async move { node.shutdown().await });
}

/// Joins the cluster within [`JOIN_TIMEOUT`].
async fn join(request: &NodeRequest, run_dir: PathBuf) -> Result<Node, ErrorBody> {
    let event = &request.event;
    let config = NodeConfig {
        rendezvous: request.rendezvous,
        cluster: event.cluster.clone(),
        join_token: event.token.clone(),
        service: event.service.clone(),
        index: event.index,
        bind: SocketAddr::from(([0, 0, 0, 0], 0)),
        forwards: request.forwards.clone(),
        expose: event.expose.clone(),
        status_file: None,
        run_dir: Some(run_dir),
        shared_namespace: false,
    };
    let addr = request.rendezvous.addr;
    if event.takes_over {
        return take_over(config, addr).await;
    }
    match tokio::time::timeout(JOIN_TIMEOUT, Node::start(config)).await {
        Ok(Ok(node)) => Ok(node),
        Ok(Err(e)) => Err(join_error(&e, addr)),
        Err(_) => Err(error(
            ERROR_UNREACHABLE,
            format!(
                "rendezvous {addr} did not answer within {JOIN_TIMEOUT:?} (is it running, and reachable from Lambda?)"
            ),
        )),
    }
}

/// Joins in place of a predecessor that is still a member under the same
/// name: asks again every [`TAKEOVER_RETRY_MS`] while the rendezvous refuses
/// the name as taken, for up to [`TAKEOVER_WAIT_SECS`].
async fn take_over(config: NodeConfig, addr: SocketAddr) -> Result<Node, ErrorBody> {
    let name = boxer_proto::names::replica_name(&config.service, config.index);
    let wait = Duration::from_secs(TAKEOVER_WAIT_SECS);
    let started = Instant::now();
    let mut refused = 0u32;
    loop {
        match tokio::time::timeout(JOIN_TIMEOUT, Node::start(config.clone())).await {
            Ok(Ok(node)) => {
                info!(node = %name, after = ?started.elapsed(), refused, "took over from the previous instance");
                return Ok(node);
            }
            Ok(Err(NodeError::Rendezvous(RendezvousError::Refused { code, .. })))
                if code == CloseCode::Conflict.code() as u64 && started.elapsed() < wait =>
            {
                if refused == 0 {
                    info!(node = %name, "the previous instance still holds the name; waiting for it to leave");
                }
                refused += 1;
                tokio::time::sleep(Duration::from_millis(TAKEOVER_RETRY_MS)).await;
            }
            Ok(Err(NodeError::Rendezvous(RendezvousError::Refused { code, reason })))
                if code == CloseCode::Conflict.code() as u64 =>
            {
                return Err(error(
                    ERROR_JOIN_REFUSED,
                    format!("{name}: the previous instance did not leave within {wait:?}: {reason}"),
                ));
            }
            Ok(Err(e)) => return Err(join_error(&e, addr)),
            Err(_) => {
                return Err(error(
                    ERROR_UNREACHABLE,
                    format!("rendezvous {addr} did not answer within {JOIN_TIMEOUT:?}"),
                ));
            }
        }
    }
}

/// The `/error` body of a failed join: refused (with the rendezvous' own
/// reason), unreachable, or a runtime failure.
fn join_error(e: &NodeError, addr: SocketAddr) -> ErrorBody {
    use quinn::ConnectionError as C;
    let kind = match e {
        NodeError::Rendezvous(r) => match r {
            RendezvousError::Refused { .. } | RendezvousError::Closed { .. } | RendezvousError::Hello { .. } => {
                ERROR_JOIN_REFUSED
            }
            // The TLS handshake failed: the server's certificate is not the
            // one the event pinned, or the peer is not a rendezvous.
            RendezvousError::Connection { source: C::TransportError(_) | C::ConnectionClosed(_), .. } => {
                ERROR_JOIN_REFUSED
            }
            RendezvousError::Connection { .. } | RendezvousError::Timeout { .. } => ERROR_UNREACHABLE,
            _ => ERROR_RUNTIME,
        },
        _ => ERROR_RUNTIME,
    };
    error(kind, format!("joining through rendezvous {addr}: {e}"))
}

fn error(kind: &str, message: String) -> ErrorBody {
    warn!(error_type = kind, "{message}");
    ErrorBody { error_type: kind.to_owned(), error_message: message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::udp::tests::{CLUSTER, Scratch, start_rendezvous};

    /// The takeover join against a real rendezvous: refused while the
    /// holder is a member, without piling up sockets (a function has 1024
    /// descriptors), then admitted at once with the holder's address.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_takeover_waits_for_the_name_then_gets_its_address() {
        let dir = Scratch(std::env::temp_dir().join(format!("boxer-takeover-test-{}", std::process::id())));
        let (rendezvous, token) = start_rendezvous(&dir).await;
        let config = || NodeConfig {
            rendezvous,
            cluster: CLUSTER.into(),
            join_token: token.clone(),
            service: "web".into(),
            index: 0,
            bind: (std::net::Ipv4Addr::LOCALHOST, 0).into(),
            forwards: Vec::new(),
            expose: Vec::new(),
            status_file: None,
            run_dir: None,
            shared_namespace: false,
        };
        let holder = Node::start(config()).await.expect("holder joins");
        let ip = holder.joined().overlay_ip;
        let fds = || std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
        let before = fds();
        let takeover = tokio::spawn(take_over(config(), rendezvous.addr));
        let mut most = before;
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            most = most.max(fds());
        }
        assert!(!takeover.is_finished(), "joined while the name was taken");
        assert!(most < before + 64, "refused attempts pile up descriptors: {before} -> {most}");
        holder.shutdown().await;
        let node = tokio::time::timeout(Duration::from_secs(10), takeover)
            .await
            .expect("joined once the holder left")
            .expect("task")
            .expect("admitted");
        assert_eq!(node.joined().overlay_ip, ip, "the holder's address");
        node.shutdown().await;
    }

    #[test]
    fn join_failures_are_told_apart() {
        let addr: SocketAddr = "127.0.0.1:4740".parse().unwrap();
        let refused = NodeError::Rendezvous(RendezvousError::Refused {
            code: 3,
            reason: "wrong token for cluster \"demo\"".into(),
        });
        let body = join_error(&refused, addr);
        assert_eq!(body.error_type, ERROR_JOIN_REFUSED);
        assert!(body.error_message.contains("wrong token for cluster"), "{}", body.error_message);
        let gone =
            NodeError::Rendezvous(RendezvousError::Connection { addr, source: quinn::ConnectionError::TimedOut });
        assert_eq!(join_error(&gone, addr).error_type, ERROR_UNREACHABLE);
        assert_eq!(join_error(&NodeError::Stopped, addr).error_type, ERROR_RUNTIME);
    }
}
