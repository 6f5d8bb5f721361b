//! `boxer up`: start a rendezvous (or use one), create the cluster, launch
//! every node, show progress and output, end when the main services exit,
//! tear everything down.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use boxer_net::rendezvous::{self, RendezvousAddr};
use boxer_net::{Identity, NodeEndpoint};
use boxer_proto::control::{CreateClusterRequest, DeleteClusterRequest, PathReport, ServerMessage, WatchRequest};
use boxer_proto::membership::MemberChange;
use boxer_proto::{Fingerprint, Member};
use indicatif::{ProgressBar, ProgressStyle};

use crate::lab::{LabNet, NatKind};
use crate::printer::Printer;
use crate::provider::{Join, LocalProvider, ProcessExit, STOP_GRACE};
use crate::spec::Spec;
use crate::state::{self, NodeStatus, PathStatus, Status};

/// How long after a node's runtime exits we wait for its exit report (and
/// last output lines) through the rendezvous before using the process status.
const REPORT_WAIT: Duration = Duration::from_secs(2);

/// Network mode of the local provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NetMode {
    /// Every node on its own device behind its own NAT router, the
    /// rendezvous on a public router: a lab of network namespaces with no
    /// way out of the machine.
    Lab,
    /// All nodes in one fresh network namespace with only loopback.
    Shared,
    /// The caller's own network namespace.
    Host,
}

/// An external rendezvous to use instead of the embedded one.
#[derive(Debug, Clone)]
pub struct External {
    /// Address.
    pub addr: SocketAddr,
    /// Certificate fingerprint.
    pub fingerprint: Fingerprint,
    /// Its admin token.
    pub admin_token: String,
}

/// Options of `boxer up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Network mode (the namespace is entered by `main` before this runs).
    pub net: NetMode,
    /// Use this rendezvous instead of an embedded one.
    pub external: Option<External>,
    /// NAT of every node in `--net lab`.
    pub nat: NatKind,
}

struct NodeState {
    member: Option<Member>,
    exit: Option<i32>,
    process_exit: Option<(i32, Instant)>,
    main: bool,
    paths: Vec<PathReport>,
}

/// Runs a cluster to completion; returns the exit code for the CLI.
pub async fn up(spec: Spec, options: UpOptions) -> anyhow::Result<i32> {
    let dir = state::cluster_dir(&spec.name);
    if let Some(pid) = state::running_pid(&dir) {
        anyhow::bail!(
            "cluster {:?} is already up (boxer up pid {pid}); stop it with `boxer down {}`",
            spec.name,
            spec.name
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating state directory {}", dir.display()))?;
    let _ = std::fs::remove_dir_all(dir.join("nodes"));
    std::fs::write(dir.join("up.pid"), std::process::id().to_string())
        .with_context(|| format!("writing {}", dir.join("up.pid").display()))?;
    let result = run(&spec, &options, &dir).await;
    let _ = std::fs::remove_file(dir.join("up.pid"));
    let _ = std::fs::remove_file(dir.join("join.json"));
    result
}

async fn run(spec: &Spec, options: &UpOptions, dir: &std::path::Path) -> anyhow::Result<i32> {
    let started = Instant::now();
    let lab = match options.net {
        NetMode::Lab => {
            anyhow::ensure!(
                options.external.is_none(),
                "--rendezvous cannot be used with --net lab: the lab has no way out of its namespaces (use --net shared or --net host)"
            );
            Some(Arc::new(LabNet::new().await?))
        }
        _ => {
            for s in spec.services.iter().filter(|s| s.nat.is_some()) {
                eprintln!("note: services.{}.nat is ignored without --net lab", s.name);
            }
            None
        }
    };
    // The rendezvous: embedded (this process) or external.
    let (addr, admin_token, embedded) = match &options.external {
        Some(ext) => (RendezvousAddr { addr: ext.addr, fingerprint: ext.fingerprint }, ext.admin_token.clone(), None),
        None => {
            let token = ::rendezvous::registry::random_token();
            let server = ::rendezvous::Rendezvous::bind(::rendezvous::Config {
                listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                state_dir: dir.join("rendezvous"),
                admin_token: Some(token.clone()),
                // In the lab the rendezvous lives on the public router's LAN.
                socket: lab.as_ref().map(|l| LabNet::udp_socket(l.rendezvous(), 0)).transpose()?,
            })
            .with_context(|| format!("starting the embedded rendezvous in {}", dir.join("rendezvous").display()))?;
            let mut listen = server.local_addr()?;
            if let Some(lab) = &lab {
                listen.set_ip(lab.rendezvous_ip()?.into());
            }
            let addr = RendezvousAddr { addr: listen, fingerprint: server.fingerprint() };
            tokio::spawn(server.clone().run());
            (addr, token, Some(server))
        }
    };
    let endpoint = match &lab {
        Some(lab) => NodeEndpoint::from_socket(LabNet::udp_socket(lab.rendezvous(), 0)?, Identity::generate()?)?,
        None => NodeEndpoint::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), Identity::generate()?)?,
    };
    let info = rendezvous::create_cluster(
        &endpoint,
        addr,
        CreateClusterRequest {
            admin_token: admin_token.clone(),
            name: spec.name.clone(),
            network: spec.network,
            join_token: None,
        },
    )
    .await
    .with_context(|| format!("creating cluster {:?} on rendezvous {}", spec.name, addr.addr))?;
    let (snapshot, feed_session) = rendezvous::watch(
        &endpoint,
        addr,
        WatchRequest { cluster: spec.name.clone(), token: admin_token.clone(), logs: true },
    )
    .await
    .context("subscribing to the cluster's membership and output")?;
    // Frame reads are not cancel-safe: a task reads, the loop selects on a channel.
    let mut feed = spawn_feed_reader(feed_session);

    let (mut provider, mut exits) = LocalProvider::new(dir.to_owned(), lab.clone().map(|l| (l, options.nat)))?;
    let join = Join {
        rendezvous: addr.addr,
        fingerprint: addr.fingerprint.to_string(),
        cluster: spec.name.clone(),
        token: info.join_token.clone(),
    };
    let names: Vec<String> = spec.nodes().map(|(s, i)| format!("{}-{i}", s.name)).collect();
    let any_main = spec.services.iter().any(|s| s.main);
    let mut nodes: BTreeMap<String, NodeState> = spec
        .nodes()
        .map(|(s, i)| {
            (
                format!("{}-{i}", s.name),
                NodeState { member: None, exit: None, process_exit: None, main: s.main || !any_main, paths: vec![] },
            )
        })
        .collect();
    for m in snapshot.members {
        if let Some(n) = nodes.get_mut(&m.replica_name()) {
            n.member = Some(m);
        }
    }
    // Services some other service waits for: if one of their nodes fails,
    // the waiting nodes would never start, so the cluster fails.
    let depended_on: std::collections::HashSet<String> = spec
        .services
        .iter()
        .flat_map(|s| s.wait_for.iter())
        .filter_map(|(target, _)| match boxer_proto::names::parse(target, &spec.name) {
            Some(boxer_proto::names::NameQuery::Replica { service, .. }) => Some(service),
            Some(boxer_proto::names::NameQuery::Service(service)) => Some(service),
            _ => None,
        })
        .collect();
    let printer = Printer::new(names.clone());
    let mut status = Status {
        cluster: spec.name.clone(),
        spec: spec.path.display().to_string(),
        pid: Some(std::process::id() as i32),
        state: "starting".into(),
        net: format!("{:?}", options.net).to_lowercase(),
        rendezvous: addr.addr.to_string(),
        nodes: vec![],
    };
    let output_dir = dir.join("rendezvous").join("logs").join(&spec.name);
    let write_status = |status: &mut Status, nodes: &BTreeMap<String, NodeState>, provider: &LocalProvider| {
        status.nodes = nodes
            .iter()
            .map(|(name, n)| NodeStatus {
                name: name.clone(),
                id: n.member.as_ref().map(|m| m.node_id.to_string()),
                overlay_ip: n.member.as_ref().map(|m| m.overlay_ip.to_string()),
                state: match (n.exit, &n.member) {
                    (Some(code), _) => format!("exited {code}"),
                    (None, Some(_)) => "running".into(),
                    (None, None) => "starting".into(),
                },
                output: output_dir.join(format!("{name}.log")).display().to_string(),
                runtime_log: provider.runtime_log(name).display().to_string(),
                paths: n
                    .paths
                    .iter()
                    .map(|p| PathStatus {
                        peer: nodes
                            .iter()
                            .find(|(_, other)| other.member.as_ref().is_some_and(|m| m.node_id == p.peer))
                            .map_or_else(|| p.peer.to_string(), |(name, _)| name.clone()),
                        path: p.kind.to_string(),
                        rtt_us: p.rtt_us,
                    })
                    .collect(),
            })
            .collect();
        let _ = status.write(dir);
    };

    // `boxer port-forward` joins from this namespace: ours, or in the lab
    // that of a placeholder process on the rendezvous' public network.
    let holder = match &lab {
        Some(lab) => {
            let mut cmd = tokio::process::Command::new("sleep");
            cmd.arg("infinity").kill_on_drop(true).stdin(std::process::Stdio::null());
            Some(lab.rendezvous().spawn_command(cmd).context("starting the lab's port-forward placeholder (sleep)")?)
        }
        None => None,
    };
    state::JoinInfo {
        rendezvous: join.rendezvous,
        fingerprint: join.fingerprint.clone(),
        cluster: join.cluster.clone(),
        token: join.token.clone(),
        pid: holder.as_ref().and_then(|h| h.id()).map_or(std::process::id() as i32, |p| p as i32),
        own_namespace: options.net != NetMode::Host,
    }
    .write(dir)
    .with_context(|| format!("writing {}", dir.join("join.json").display()))?;
    for (service, index) in spec.nodes() {
        provider.launch(&join, service, index).await?;
    }
    write_status(&mut status, &nodes, &provider);

    let progress = ProgressBar::new(names.len() as u64);
    progress.set_style(
        ProgressStyle::with_template("{spinner} {prefix}: {pos}/{len} nodes joined {wide_msg}")
            .expect("valid template"),
    );
    progress.set_prefix(spec.name.clone());
    progress.enable_steady_tick(Duration::from_millis(100));
    let mut all_joined = false;

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut failing_main: Option<(String, i32)> = None;
    let mut interrupted = false;
    let outcome: anyhow::Result<()> = loop {
        let joined = nodes.values().filter(|n| n.member.is_some() || n.exit.is_some()).count();
        progress.set_position(joined as u64);
        if !all_joined && joined == nodes.len() {
            all_joined = true;
            progress.finish_and_clear();
            let up = nodes.values().filter(|n| n.member.is_some()).count();
            eprintln!("cluster {}: {up}/{} nodes joined in {:.1?}", spec.name, nodes.len(), started.elapsed());
            status.state = "running".into();
            write_status(&mut status, &nodes, &provider);
        }
        if nodes.values().filter(|n| n.main).all(|n| n.exit.is_some()) {
            break Ok(());
        }
        let failed_dependency = nodes.iter().find(|(name, n)| {
            n.exit.is_some_and(|c| c != 0)
                && name.rsplit_once('-').is_some_and(|(service, _)| depended_on.contains(service))
        });
        if let Some((name, n)) = failed_dependency {
            let code = n.exit.unwrap_or(1);
            eprintln!(
                "cluster {}: {name} failed (exit code {code}) and other services wait for it; stopping",
                spec.name
            );
            failing_main.get_or_insert((name.clone(), code));
            break Ok(());
        }
        tokio::select! {
            msg = feed.recv() => match msg {
                Some(Ok(msg)) => {
                    if handle(&msg, &mut nodes, &printer, &progress, &mut failing_main) {
                        write_status(&mut status, &nodes, &provider);
                    }
                }
                Some(Err(e)) => break Err(e).context("lost the rendezvous"),
                None => break Err(anyhow::anyhow!("lost the rendezvous")),
            },
            Some(ProcessExit { node, code }) = exits.recv() => {
                provider.exited(&node);
                if let Some(n) = nodes.get_mut(&node)
                    && n.exit.is_none()
                {
                    n.process_exit = Some((code, Instant::now()));
                }
            }
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => { interrupted = true; break Ok(()); }
            _ = terminate.recv() => { interrupted = true; break Ok(()); }
        }
        // Runtimes that ended without reporting (join refused, crash).
        for (name, n) in nodes.iter_mut() {
            if let Some((code, at)) = n.process_exit
                && n.exit.is_none()
                && at.elapsed() > REPORT_WAIT
            {
                n.exit = Some(code);
                let log = provider.runtime_log(name);
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let last: Vec<&str> = tail.lines().rev().take(3).collect();
                progress.suspend(|| {
                    printer.note(name, &format!("runtime exited with code {code} (log: {})", log.display()));
                    for l in last.iter().rev() {
                        printer.note(name, l);
                    }
                });
                if n.main && code != 0 && failing_main.is_none() {
                    failing_main = Some((name.clone(), code));
                }
            }
        }
        write_status(&mut status, &nodes, &provider);
    };
    progress.finish_and_clear();

    // Teardown: stop every node, delete the cluster, stop the rendezvous.
    if provider.running() > 0 {
        if interrupted {
            eprintln!("stopping cluster {} (interrupted)", spec.name);
        }
        provider.signal_all(libc::SIGTERM);
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        while provider.running() > 0 {
            tokio::select! {
                Some(ProcessExit { node, .. }) = exits.recv() => provider.exited(&node),
                Some(Ok(msg)) = feed.recv() => {
                    handle(&msg, &mut nodes, &printer, &progress, &mut failing_main);
                }
                _ = tokio::time::sleep_until(deadline) => {
                    eprintln!("nodes did not stop within {STOP_GRACE:?}; killing them");
                    provider.signal_all(libc::SIGKILL);
                    break;
                }
                _ = tokio::signal::ctrl_c() => provider.signal_all(libc::SIGKILL),
            }
        }
    }
    let _ = rendezvous::delete_cluster(&endpoint, addr, DeleteClusterRequest { admin_token, name: spec.name.clone() })
        .await;
    if let Some(server) = embedded {
        server.close();
    }
    outcome?;
    let code = match (&failing_main, interrupted) {
        (_, true) => 130,
        (Some((_, code)), _) => *code,
        (None, false) => 0,
    };
    status.state = format!("ended (exit {code})");
    status.pid = None;
    write_status(&mut status, &nodes, &provider);
    if let Some((node, code)) = failing_main {
        eprintln!("cluster {}: main service node {node} failed with exit code {code}", spec.name);
    }
    Ok(code)
}

/// Reads the watch session in its own task; ends after the first error.
fn spawn_feed_reader(
    mut session: rendezvous::SessionReceiver,
) -> tokio::sync::mpsc::Receiver<Result<ServerMessage, rendezvous::RendezvousError>> {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(async move {
        loop {
            let msg = session.next().await;
            let end = msg.is_err();
            if tx.send(msg).await.is_err() || end {
                return;
            }
        }
    });
    rx
}

/// Applies one message from the rendezvous; `true` when paths changed (the
/// status file is rewritten then).
fn handle(
    msg: &ServerMessage,
    nodes: &mut BTreeMap<String, NodeState>,
    printer: &Printer,
    progress: &ProgressBar,
    failing_main: &mut Option<(String, i32)>,
) -> bool {
    match msg {
        ServerMessage::Paths { node, paths } => {
            if let Some(n) = nodes.get_mut(node) {
                n.paths = paths.clone();
                return true;
            }
        }
        ServerMessage::Event(event) => {
            if let MemberChange::Joined(m) = &event.change
                && let Some(n) = nodes.get_mut(&m.replica_name())
            {
                n.member = Some(m.clone());
            }
        }
        ServerMessage::Snapshot(s) => {
            for m in &s.members {
                if let Some(n) = nodes.get_mut(&m.replica_name()) {
                    n.member = Some(m.clone());
                }
            }
        }
        ServerMessage::Logs { node, lines } => progress.suspend(|| {
            for l in lines {
                printer.line(node, &l.text);
            }
        }),
        ServerMessage::Exited { node, status } => {
            if let Some(n) = nodes.get_mut(node)
                && n.exit.is_none()
            {
                n.exit = Some(status.code);
                progress.suspend(|| printer.note(node, &format!("exited with code {}", status.code)));
                if n.main && status.code != 0 && failing_main.is_none() {
                    *failing_main = Some((node.clone(), status.code));
                }
            }
        }
        ServerMessage::LogsDropped { batches } => {
            progress.suspend(|| eprintln!("(output fell behind: {batches} batches not shown; see boxer logs)"))
        }
        _ => {}
    }
    false
}

/// Paths of a cluster's stored node output, for `boxer logs`.
pub fn output_files(cluster: &str) -> PathBuf {
    state::cluster_dir(cluster).join("rendezvous").join("logs").join(cluster)
}
