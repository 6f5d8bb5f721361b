//! Running the node's program on the overlay, the same way in every mode.
//!
//! The local CLI mode and the Lambda mode both start the program with the
//! shim preloaded, in its own process group, with its output relayed to the
//! rendezvous; both stop it the same way (SIGTERM to the group, a grace
//! period, SIGKILL) and both report its exit to the rendezvous before leaving
//! the cluster. [`run`] does all of that and returns what a report needs
//! ([`Outcome`]); what makes it stop early is the caller's business (a
//! signal, the invocation deadline), passed in as a future.

use std::ffi::OsString;
use std::future::Future;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use boxer_proto::control::Stream;
use boxer_proto::lambda::StopCause;
use tracing::{info, warn};

use crate::output::{self, SharedTail};
use crate::{Node, app};

/// How long each output relay may take to ship what the program wrote after
/// it ended (the pipes close at once unless a stray process holds them).
const RELAY_DRAIN: Duration = Duration::from_secs(2);

/// What to run.
#[derive(Debug, Clone)]
pub struct Program {
    /// The resolved executable.
    pub path: PathBuf,
    /// Its arguments (without the program name).
    pub args: Vec<String>,
    /// The shim library to preload; `None` runs the program without it (a
    /// node in explicit mode: its `--expose`/`--forward` ports only, see
    /// [`app::shim_for`]).
    pub shim: Option<PathBuf>,
    /// Environment on top of the runtime's own, in order (a later value
    /// wins; `LD_PRELOAD` here gets the shim appended).
    pub env: Vec<(OsString, OsString)>,
    /// Working directory (default: the runtime's).
    pub workdir: Option<PathBuf>,
    /// Time between SIGTERM and SIGKILL when the program must stop.
    pub grace: Duration,
    /// Bound on shipping the last output and the exit status once the
    /// program ended.
    pub finish_within: Duration,
    /// Ask the kernel to kill the program when the runtime dies
    /// (`prctl(PR_SET_PDEATHSIG)`; off where the host refuses it).
    pub pdeathsig: bool,
}

/// How the program ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Exit code, shell style (128 + signal).
    pub exit_code: i32,
    /// From start to end.
    pub run_time: Duration,
    /// Why it was stopped, if it did not exit by itself.
    pub stopped: Option<StopCause>,
    /// It ignored SIGTERM and was killed after the grace period.
    pub killed_after_grace: bool,
    /// Its last lines of output.
    pub last_output: Vec<String>,
    /// It got its own process group (`setpgid` was allowed); without one
    /// only the program itself was signalled, not what it forked.
    pub own_group: bool,
}

/// Why the program could not be run.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// The node was started without a run directory, so the shim has no
    /// control socket to talk to.
    #[error("node {0} has no run directory for the shim")]
    NoShimSide(String),
    /// `fork`/`exec` failed.
    #[error("cannot start {path} on node {node}: {source}")]
    Spawn {
        /// The executable.
        path: PathBuf,
        /// The node.
        node: String,
        /// The error.
        source: std::io::Error,
    },
    /// Waiting for the program failed.
    #[error("waiting for {path}: {source}")]
    Wait {
        /// The executable.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Exit code of a finished program, shell style (128 + signal).
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Runs `program` on `node` until it exits, the node stops, or `stop`
/// resolves; then reports its exit to the rendezvous and leaves the cluster.
///
/// Made for the runtime process, which starts no other processes: the
/// process becomes a child subreaper, and when the program ends every
/// remaining child of the process is killed.
pub async fn run(
    node: &Node,
    program: &Program,
    stop: impl Future<Output = StopCause>,
) -> Result<Outcome, SuperviseError> {
    let name = node.joined().names[0].clone();
    let app_env = match &program.shim {
        Some(_) => node.app_env().ok_or_else(|| SuperviseError::NoShimSide(name.clone()))?,
        None => Vec::new(),
    };
    let mut command = tokio::process::Command::new(&program.path);
    command.args(&program.args).kill_on_drop(true);
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(dir) = &program.workdir {
        command.current_dir(dir);
    }
    // The join token admits members to the cluster: the runtime may get it
    // in its environment (kept off `ps`), the program does not inherit it.
    command.env_remove(JOIN_TOKEN_ENV);
    let has = |key: &str| program.env.iter().any(|(k, _)| k == key) || std::env::var_os(key).is_some();
    if !has("PYTHONUNBUFFERED") {
        // Output goes to a pipe, not a terminal: without this Python holds
        // its prints until exit and the cluster's logs arrive late.
        command.env("PYTHONUNBUFFERED", "1");
    }
    for (key, value) in &program.env {
        command.env(key, value);
    }
    if let Some(shim) = &program.shim {
        let preload = program.env.iter().rev().find(|(k, _)| k == "LD_PRELOAD").map(|(_, v)| v.clone());
        command.env("LD_PRELOAD", app::ld_preload(shim, preload.or_else(|| std::env::var_os("LD_PRELOAD"))));
    }
    for (key, value) in app_env {
        command.env(key, value);
    }
    let pdeathsig = program.pdeathsig;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            // Its own process group, so the runtime can stop every process
            // the program forks (checked by the parent below: a refusal cannot
            // be logged from here); and killed if the runtime dies without
            // cleaning up, where the host allows it (probed in `host`).
            libc::setpgid(0, 0);
            if pdeathsig {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            }
            Ok(())
        });
    }
    become_subreaper();
    let started = Instant::now();
    let mut child = command.spawn().map_err(|source| SuperviseError::Spawn {
        path: program.path.clone(),
        node: name.clone(),
        source,
    })?;
    let pid = child.id().map(|p| p as libc::pid_t);
    // SAFETY: getpgid on our own child (not yet reaped: exec succeeded).
    let own_group = pid.is_some_and(|p| unsafe { libc::getpgid(p) } == p);
    if !own_group {
        warn!("setpgid refused: the program shares the runtime's process group; only the program itself is signalled");
    }
    let reaper = pid.map(|p| tokio::spawn(reap_adopted(p)));
    let tail = SharedTail::default();
    let mut relays = Vec::new();
    if let Some(out) = child.stdout.take() {
        relays.push(tokio::spawn(output::relay(node.clone(), out, Stream::Stdout, tokio::io::stdout(), tail.clone())));
    }
    if let Some(err) = child.stderr.take() {
        relays.push(tokio::spawn(output::relay(node.clone(), err, Stream::Stderr, tokio::io::stderr(), tail.clone())));
    }
    info!(pid, program = %program.path.display(), args = ?program.args, "program started");
    // Signals the program's process group, or the program alone without one.
    // Only called while the program is not yet reaped, or (for the group)
    // while the group may still have members.
    let signal = |sig: libc::c_int, group_only: bool| match pid {
        // SAFETY: kill(2) on the process group we created for the program.
        Some(p) if own_group => unsafe {
            libc::kill(-p, sig);
        },
        // SAFETY: kill(2) on our own child, not yet waited for.
        Some(p) if !group_only => unsafe {
            libc::kill(p, sig);
        },
        _ => {}
    };
    let wait_error = |source| SuperviseError::Wait { path: program.path.clone(), source };

    let stopped = tokio::select! {
        status = child.wait() => Err(status.map_err(wait_error)?),
        e = node.stopped() => {
            warn!("node stopped: {e}");
            Ok(StopCause::ClusterStopped)
        }
        cause = stop => Ok(cause),
        () = node.stop_requested() => Ok(StopCause::Requested),
    };
    let mut killed_after_grace = false;
    let (status, stopped) = match stopped {
        Err(status) => (status, None),
        Ok(cause) => {
            info!(?cause, grace = ?program.grace, "stopping the program: SIGTERM");
            signal(libc::SIGTERM, false);
            let status = match tokio::time::timeout(program.grace, child.wait()).await {
                Ok(status) => status.map_err(wait_error)?,
                Err(_) => {
                    warn!("program did not exit within {:?} of SIGTERM; killing it", program.grace);
                    killed_after_grace = true;
                    signal(libc::SIGKILL, false);
                    child.wait().await.map_err(wait_error)?
                }
            };
            (status, Some(cause))
        }
    };
    let run_time = started.elapsed();
    // Nothing the program started outlives it.
    signal(libc::SIGKILL, true);
    if let Some(reaper) = reaper {
        reaper.abort();
    }
    // Daemons that left the group (setsid) were adopted by the runtime as
    // subreaper: they end here too.
    kill_adopted().await;
    let code = exit_code(status);
    info!(code, ?run_time, "program ended");
    // Ship the rest of the output, then the exit status, within the bound.
    let shipped = tokio::time::timeout(program.finish_within, async {
        for relay in relays {
            let _ = tokio::time::timeout(RELAY_DRAIN, relay).await;
        }
        node.report_exit(code).await;
    })
    .await;
    if shipped.is_err() {
        warn!("the last output or the exit status did not reach the rendezvous within {:?}", program.finish_within);
    }
    node.shutdown().await;
    let last_output = tail.lock().unwrap_or_else(|e| e.into_inner()).lines();
    Ok(Outcome { exit_code: code, run_time, stopped, killed_after_grace, last_output, own_group })
}

/// The environment variable that carries the join token to the runtime.
pub const JOIN_TOKEN_ENV: &str = "BOXER_JOIN_TOKEN";

/// Makes the runtime the child subreaper of everything the program starts:
/// a daemon that double-forks is re-parented to the runtime instead of init,
/// so it stays a process of the node (the control socket serves only the
/// runtime's descendants, see [`crate::caller`]). Process-wide and
/// idempotent. Where the host refuses it, such daemons lose the overlay,
/// which is logged once.
fn become_subreaper() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            warn!(
                "PR_SET_CHILD_SUBREAPER refused ({}): processes of the program that daemonize (double fork) lose the overlay",
                std::io::Error::last_os_error()
            );
        }
    });
}

/// Reaps the orphans the runtime adopted as subreaper, whenever a child
/// changes state, so exited daemons do not stay zombies. The program itself
/// is left to tokio, which waits for it by pid: each zombie is first looked
/// at without reaping (`WNOWAIT`) and only reaped if it is not the program.
async fn reap_adopted(program: libc::pid_t) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut children) = signal(SignalKind::child()) else { return };
    loop {
        loop {
            // SAFETY: zeroed siginfo is valid; waitid fills it.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: waitid with a valid out-pointer; WNOWAIT leaves the zombie.
            let r = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT) };
            // SAFETY: si_pid is valid for SIGCHLD-kind siginfo filled by waitid.
            let zombie = unsafe { info.si_pid() };
            if r != 0 || zombie == 0 || zombie == program {
                break;
            }
            // SAFETY: reaping a zombie child that is not the program.
            unsafe { libc::waitpid(zombie, std::ptr::null_mut(), libc::WNOHANG) };
        }
        if children.recv().await.is_none() {
            return;
        }
    }
}

/// Rounds of [`kill_adopted`]: each kill re-parents the victim's children to
/// the runtime, one generation per round; daemons are rarely deeper than two.
const ADOPTED_KILL_ROUNDS: usize = 8;

/// Kills and reaps every remaining child of the runtime: processes of the
/// program that left its process group and were adopted (the program itself
/// is already reaped). The runtime starts no other processes.
async fn kill_adopted() {
    let me = std::process::id() as i32;
    for _ in 0..ADOPTED_KILL_ROUNDS {
        let children = children_of(me);
        if children.is_empty() {
            return;
        }
        for pid in &children {
            warn!(pid, "killing a process the program left behind");
            // SAFETY: kill(2) on our own (adopted) child.
            if unsafe { libc::kill(*pid, libc::SIGKILL) } != 0 {
                warn!(pid, "cannot kill it: {}", std::io::Error::last_os_error());
            }
        }
        // Reap without blocking: a process in uninterruptible sleep must not
        // hold up the node's exit report.
        let deadline = Instant::now() + ADOPTED_REAP_WAIT;
        let mut left = children;
        while !left.is_empty() && Instant::now() < deadline {
            // SAFETY: waitpid(2) with WNOHANG on our own children.
            left.retain(|pid| unsafe { libc::waitpid(*pid, std::ptr::null_mut(), libc::WNOHANG) } == 0);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !left.is_empty() {
            warn!(pids = ?left, "processes left behind did not die within {ADOPTED_REAP_WAIT:?}");
            return;
        }
    }
}

/// How long [`kill_adopted`] waits per round for killed processes to die.
const ADOPTED_REAP_WAIT: Duration = Duration::from_secs(1);

/// Pids whose parent is `parent`, from `/proc`.
fn children_of(parent: i32) -> Vec<i32> {
    if !crate::machine::proc_matches_pid_namespace() {
        warn!("/proc is another PID namespace's: not looking for processes left behind there");
        return vec![];
    }
    let Ok(dir) = std::fs::read_dir("/proc") else { return vec![] };
    dir.flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            (crate::caller::parse_ppid(&stat)? == parent).then_some(pid)
        })
        .collect()
}
