//! A running node: admission, membership feed, peer table, proxies.

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use boxer_net::peers::Peers;
use boxer_net::punch::Pathfinder;
use boxer_net::rendezvous::{self, RendezvousError};
use boxer_net::{EndpointError, Identity, NodeEndpoint};
use boxer_proto::control::{Barrier, JoinRequest, Joined, NodeMessage};
use boxer_proto::{Membership, NodeId};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{Instrument, error, info, info_span, warn};

use crate::config::NodeConfig;
use crate::registry::Registry;
use crate::{control, etc, forward, inbound, link, outbound, status, udp};

/// Streams from peers waiting for the runtime to take them.
const INBOUND_BUFFER: usize = 256;

/// Messages to the rendezvous waiting to be sent.
const OUTBOUND_BUFFER: usize = 64;

/// Punch requests waiting to be sent to the rendezvous; more are dropped
/// (the caller falls back to the relay, and upgrades retry).
const PUNCH_REQUEST_BUFFER: usize = 256;

/// How often the node checks whether its peer paths changed, for
/// `boxer status`.
const PATH_REPORT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Paths are re-sent at least this often while they exist (RTTs move).
const PATH_REPORT_REFRESH: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a node failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The node's identity could not be created.
    #[error("cannot create the node's certificate: {0}")]
    Identity(#[from] boxer_net::identity::IdentityError),
    /// The node's probe key could not be made (no system randomness).
    #[error("cannot create the node's probe key: {0}")]
    ProbeKey(getrandom::Error),
    /// The UDP endpoint could not be set up.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// A `--forward` listener could not be bound.
    #[error("cannot listen on {addr} for --forward: {source}")]
    ForwardBind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// Admission failed or the rendezvous connection broke.
    #[error(transparent)]
    Rendezvous(#[from] RendezvousError),
    /// The membership feed broke its own ordering.
    #[error("membership feed from the rendezvous is inconsistent: {0}")]
    Feed(String),
    /// The shim-facing side (loopback proxy, control socket) could not start.
    #[error("{what} {path}: {source}")]
    Local {
        /// What failed.
        what: &'static str,
        /// The address or path involved.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The node was asked to stop.
    #[error("node stopped")]
    Stopped,
}

/// Barrier waits: the last request id, and the open waits by id (the
/// condition, sent again after a rejoin, and the waiter).
type Barriers = (u32, HashMap<u32, (Barrier, oneshot::Sender<()>)>);

/// State shared by the node's tasks.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) joined: Joined,
    pub(crate) membership: watch::Receiver<Membership>,
    pub(crate) peers: Arc<Peers>,
    pathfinder: Arc<Pathfinder>,
    /// Local ports other nodes may reach, with the address to connect to.
    pub(crate) exposed: Mutex<HashMap<u16, SocketAddr>>,
    /// This node's private loopback address (see `boxer_proto::shim::loopback_for`).
    pub(crate) loopback: Ipv4Addr,
    /// Where the loopback proxy listens for redirected app connections.
    pub(crate) proxy_addr: SocketAddrV4,
    /// Loopback connections and their overlay identities.
    pub(crate) registry: Mutex<Registry>,
    /// Overlay UDP flows.
    pub(crate) udp: Arc<udp::Udp>,
    to_rendezvous: mpsc::Sender<NodeMessage>,
    /// Barrier waits not answered yet, by request id: the condition (sent
    /// again after a rejoin) and the waiter.
    barriers: Mutex<Barriers>,
    /// Set once the program's exit is reported: the rendezvous then closes
    /// the connection, and the link must not reconnect.
    pub(crate) leaving: std::sync::atomic::AtomicBool,
    /// Set when the rendezvous told the node to stop (`ServerMessage::Stop`).
    stop_requested: watch::Sender<bool>,
}

impl Shared {
    /// The node's path finder.
    pub(crate) fn pathfinder(&self) -> &Arc<Pathfinder> {
        &self.pathfinder
    }

    /// The barrier waits not answered yet, oldest first.
    pub(crate) fn pending_barriers(&self) -> Vec<(u32, Barrier)> {
        let mut waits: Vec<(u32, Barrier)> =
            self.barriers.lock().expect("barrier lock").1.iter().map(|(&id, (b, _))| (id, b.clone())).collect();
        waits.sort_by_key(|(id, _)| *id);
        waits
    }

    /// The rendezvous told the node to stop: its program is stopped as on
    /// SIGTERM ([`Node::stop_requested`]).
    pub(crate) fn request_stop(&self) {
        self.stop_requested.send_replace(true);
    }

    /// Wakes the waiter of barrier `request_id`.
    pub(crate) fn barrier_reached(&self, request_id: u32) {
        let waiter = self.barriers.lock().expect("barrier lock").1.remove(&request_id);
        if let Some((_, tx)) = waiter {
            let _ = tx.send(());
        }
    }

    /// The ports the node accepts overlay connections on, sorted.
    pub(crate) fn listening_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.exposed.lock().expect("exposed lock").keys().copied().collect();
        ports.sort_unstable();
        ports
    }

    /// Accepts overlay connections to `port`, delivered to `target`, and
    /// announces the port if it is new.
    pub(crate) async fn listen(&self, port: u16, target: SocketAddr) {
        let ports = {
            let mut exposed = self.exposed.lock().expect("exposed lock");
            if exposed.insert(port, target) == Some(target) {
                return;
            }
            exposed.keys().copied().collect::<Vec<_>>()
        };
        info!(port, %target, "listening");
        let _ = self.to_rendezvous.send(NodeMessage::Listening(ports)).await;
    }

    /// Stops announcing `port` (its listener is gone).
    pub(crate) async fn unlisten(&self, port: u16) {
        let ports = {
            let mut exposed = self.exposed.lock().expect("exposed lock");
            if exposed.remove(&port).is_none() {
                return;
            }
            exposed.keys().copied().collect::<Vec<_>>()
        };
        info!(port, "no longer listening");
        let _ = self.to_rendezvous.send(NodeMessage::Listening(ports)).await;
    }
}

/// What the shim needs: the control socket and the node's run directory.
#[derive(Debug, Clone)]
pub struct ShimFiles {
    /// The control socket's address as the shim reads it (`@name`: abstract).
    pub control: String,
    /// Directory with `hosts`, `hostname`, `resolv.conf`.
    pub etc_dir: PathBuf,
    /// The node's run directory, removed when the node shuts down or the
    /// last handle to the node is dropped.
    run_dir: Arc<RunDir>,
}

/// A run directory the node created; removed when dropped.
#[derive(Debug)]
struct RunDir(PathBuf);

impl RunDir {
    fn remove(&self) {
        match std::fs::remove_dir_all(&self.0) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!("cannot remove the run directory {}: {e}", self.0.display()),
        }
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A running node.
#[derive(Debug, Clone)]
pub struct Node {
    shared: Arc<Shared>,
    endpoint: NodeEndpoint,
    failed: watch::Receiver<Option<Arc<NodeError>>>,
    failed_tx: Arc<watch::Sender<Option<Arc<NodeError>>>>,
    shim: Option<ShimFiles>,
    shared_namespace: bool,
    /// The node's background tasks, aborted by [`Node::shutdown`].
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

/// Spawns `task` and keeps its abort handle in `tasks`.
fn spawn_tracked<T: Send + 'static>(
    tasks: &mut Vec<tokio::task::AbortHandle>,
    task: impl std::future::Future<Output = T> + Send + 'static,
) {
    tasks.push(tokio::spawn(task).abort_handle());
}

impl Node {
    /// Binds the socket and the forward listeners, joins the cluster and
    /// starts every task. Returns once the node is a member.
    pub async fn start(config: NodeConfig) -> Result<Self, NodeError> {
        let identity = Identity::generate()?;
        let disco_secret = boxer_net::pair_keys::DiscoSecret::generate().map_err(NodeError::ProbeKey)?;
        let endpoint = NodeEndpoint::bind(config.bind, identity)?;
        let mut listeners = Vec::new();
        for spec in &config.forwards {
            let listener = TcpListener::bind(spec.listen)
                .await
                .map_err(|source| NodeError::ForwardBind { addr: spec.listen, source })?;
            listeners.push((listener, spec.clone()));
        }
        let local_addr = endpoint.local_addr().map_err(|source| EndpointError::Bind { addr: config.bind, source })?;
        let local = crate::interfaces::candidates(local_addr);
        let mut exposed: BTreeSet<u16> = config.expose.iter().copied().collect();
        exposed.remove(&0);
        let request = JoinRequest {
            cluster: config.cluster.clone(),
            join_token: config.join_token.clone(),
            service: config.service.clone(),
            index: config.index,
            local,
            listening: exposed.iter().copied().collect(),
            disco_public: disco_secret.public(),
            rejoin: None,
        };
        let (joined, session) = rendezvous::join(&endpoint, config.rendezvous, request.clone()).await?;
        let span = info_span!("node", name = %joined.names[0], id = %joined.node_id);
        span.in_scope(|| info!(ip = %joined.overlay_ip, reflexive = %joined.reflexive, names = ?joined.names, "joined cluster {}", config.cluster));

        let (membership_tx, membership) =
            watch::channel(Membership::from_snapshot(&config.cluster, joined.snapshot.clone()));
        let loopback = boxer_proto::shim::loopback_for(joined.node_id.0);
        let proxy = TcpListener::bind((loopback, 0)).await.map_err(|source| NodeError::Local {
            what: "cannot listen for redirected connections on",
            path: loopback.to_string(),
            source,
        })?;
        let proxy_addr = match proxy.local_addr() {
            Ok(SocketAddr::V4(a)) => a,
            _ => SocketAddrV4::new(loopback, 0),
        };
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_BUFFER);
        let (datagram_tx, datagram_rx) = mpsc::channel(udp::INBOUND_BUFFER);
        let (punch_tx, punch_rx) = mpsc::channel(PUNCH_REQUEST_BUFFER);
        let (pathfinder, ready) = Pathfinder::new(
            joined.node_id,
            joined.disco_key,
            disco_secret,
            endpoint.socket().clone(),
            membership.clone(),
            punch_tx,
        );
        let peers = Peers::new(endpoint.clone(), membership.clone(), pathfinder.clone(), inbound_tx, datagram_tx);
        let udp = Arc::new(udp::Udp::new(loopback, peers.clone(), span.clone()));
        let (to_rendezvous, outbound_rx) = mpsc::channel(OUTBOUND_BUFFER);
        let shared = Arc::new(Shared {
            joined,
            membership,
            peers: peers.clone(),
            pathfinder: pathfinder.clone(),
            exposed: Mutex::new(exposed.iter().map(|&p| (p, SocketAddr::from((Ipv4Addr::LOCALHOST, p)))).collect()),
            loopback,
            proxy_addr,
            registry: Mutex::default(),
            udp,
            to_rendezvous,
            barriers: Mutex::default(),
            stop_requested: watch::Sender::new(false),
            leaving: Default::default(),
        });
        let (failed_tx, failed) = watch::channel(None);
        let failed_tx = Arc::new(failed_tx);
        let rejoin =
            link::Rejoin { endpoint: endpoint.clone(), rendezvous: config.rendezvous, request, bound: local_addr };

        let fail = {
            let failed_tx = failed_tx.clone();
            let shared = shared.clone();
            move |e: NodeError| {
                // Only the first failure counts; errors after a shutdown are its echo.
                failed_tx.send_if_modified(|f| {
                    if f.is_some() {
                        return false;
                    }
                    // A leaving node's connection closed by the rendezvous
                    // once its exit is recorded: the orderly end, not an error.
                    let orderly = shared.leaving.load(std::sync::atomic::Ordering::Relaxed)
                        && matches!(e, NodeError::Rendezvous(boxer_net::rendezvous::RendezvousError::Closed { .. }));
                    if orderly {
                        info!("{e}");
                    } else {
                        error!("{e}");
                    }
                    *f = Some(Arc::new(e));
                    true
                });
            }
        };
        // Every task of this node ends with it: a warm Lambda instance runs
        // one node after another in the same process.
        let mut tasks = Vec::new();
        spawn_tracked(
            &mut tasks,
            link::run(shared.clone(), session, outbound_rx, membership_tx, rejoin, fail).instrument(span.clone()),
        );
        spawn_tracked(&mut tasks, report_lost_peers(shared.clone()).instrument(span.clone()));
        spawn_tracked(&mut tasks, peers.run(ready).instrument(span.clone()));
        if let Some(probes) = endpoint.take_probes() {
            spawn_tracked(&mut tasks, pathfinder.clone().run(probes).instrument(span.clone()));
        }
        spawn_tracked(
            &mut tasks,
            forward_punch_requests(punch_rx, shared.to_rendezvous.clone()).instrument(span.clone()),
        );
        spawn_tracked(&mut tasks, report_paths(shared.clone()).instrument(span.clone()));
        spawn_tracked(&mut tasks, inbound::serve(shared.clone(), inbound_rx).instrument(span.clone()));
        spawn_tracked(&mut tasks, udp::serve(shared.clone(), datagram_rx).instrument(span.clone()));
        for (listener, spec) in listeners {
            spawn_tracked(&mut tasks, forward::serve(shared.clone(), listener, spec).instrument(span.clone()));
        }
        spawn_tracked(&mut tasks, outbound::serve(shared.clone(), proxy).instrument(span.clone()));
        let shim = match &config.run_dir {
            Some(dir) => Some(start_shim_side(&shared, dir, &span, &mut tasks)?),
            None => None,
        };
        if let Some(path) = config.status_file {
            spawn_tracked(&mut tasks, status::keep_written(shared.clone(), path).instrument(span));
        }
        Ok(Self {
            shared,
            endpoint,
            failed,
            failed_tx,
            shim,
            shared_namespace: config.shared_namespace,
            tasks: Arc::new(std::sync::Mutex::new(tasks)),
        })
    }

    /// The state the node's tasks share (for in-crate tests).
    #[cfg(test)]
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// What the rendezvous said when admitting this node.
    pub fn joined(&self) -> &Joined {
        &self.shared.joined
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.shared.joined.node_id
    }

    /// The live membership table.
    pub fn membership(&self) -> watch::Receiver<Membership> {
        self.shared.membership.clone()
    }

    /// The environment that puts an application on the overlay through the
    /// shim (everything but `LD_PRELOAD`). `None` without a run directory.
    pub fn app_env(&self) -> Option<Vec<(&'static str, String)>> {
        use boxer_proto::shim::*;
        let files = self.shim.as_ref()?;
        let joined = &self.shared.joined;
        let cluster = self.shared.membership.borrow().cluster().to_owned();
        Some(vec![
            (ENV_CONTROL, files.control.clone()),
            (ENV_OVERLAY_IP, joined.overlay_ip.to_string()),
            (ENV_NETWORK, joined.network.to_string()),
            (ENV_LOOPBACK, self.shared.loopback.to_string()),
            (ENV_HOSTNAME, joined.names[0].clone()),
            (ENV_CLUSTER, cluster),
            (ENV_ETC_DIR, files.etc_dir.display().to_string()),
            (ENV_SHARED_NAMESPACE, if self.shared_namespace { "1" } else { "0" }.to_owned()),
        ])
    }

    /// UDP offload of the node's socket: (segments per send, segments per
    /// receive), 1 where the kernel offers no GSO/GRO (quinn-udp probes both
    /// and falls back by itself).
    pub fn udp_offload(&self) -> (usize, usize) {
        use quinn::AsyncUdpSocket;
        let socket = self.endpoint.socket();
        (socket.max_transmit_segments(), socket.max_receive_segments())
    }

    /// Number of peers with a live QUIC connection.
    pub fn connected_peers(&self) -> usize {
        self.shared.peers.connected()
    }

    /// Waits until `barrier` holds at the rendezvous.
    pub async fn wait(&self, barrier: Barrier) -> Result<(), NodeError> {
        let (tx, rx) = oneshot::channel();
        let request_id = {
            let mut b = self.shared.barriers.lock().expect("barrier lock");
            b.0 += 1;
            let id = b.0;
            b.1.insert(id, (barrier.clone(), tx));
            id
        };
        self.shared
            .to_rendezvous
            .send(NodeMessage::Wait { request_id, barrier })
            .await
            .map_err(|_| NodeError::Stopped)?;
        let mut failed = self.failed.clone();
        tokio::select! {
            r = rx => r.map_err(|_| NodeError::Stopped),
            _ = failed.wait_for(Option::is_some) => Err(NodeError::Stopped),
        }
    }

    /// Makes local `port` (on 127.0.0.1) reachable from other nodes and announces it.
    pub async fn expose(&self, port: u16) {
        self.shared.listen(port, SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await;
    }

    /// Carries connections accepted on `listener` to `spec.target:spec.port`
    /// (`spec.listen` is informational). The listener may live in another
    /// network namespace than the node.
    pub fn forward(&self, listener: TcpListener, spec: crate::ForwardSpec) {
        let handle = tokio::spawn(forward::serve(self.shared.clone(), listener, spec)).abort_handle();
        self.tasks.lock().expect("task list").push(handle);
    }

    /// Ships output lines of the node's program to the rendezvous.
    pub async fn ship_logs(&self, lines: Vec<boxer_proto::control::LogLine>) {
        let _ = self.shared.to_rendezvous.send(NodeMessage::Logs(lines)).await;
    }

    /// Tells the rendezvous (and through it `boxer up` and `boxer status`)
    /// where the node is: waiting for a `wait_for` target, running, gave up.
    pub async fn report_state(&self, state: boxer_proto::control::NodeState) {
        let _ = self.shared.to_rendezvous.send(NodeMessage::State(state)).await;
    }

    /// Reports how the program ended and waits (up to 3 s) for the
    /// rendezvous to record it, which it confirms by closing the connection.
    pub async fn report_exit(&self, code: i32) {
        let status = boxer_proto::control::ExitStatus { code };
        self.shared.leaving.store(true, std::sync::atomic::Ordering::Relaxed);
        if self.shared.to_rendezvous.send(NodeMessage::Exited(status)).await.is_ok() {
            let mut failed = self.failed.clone();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(3), failed.wait_for(Option::is_some)).await;
        }
    }

    /// Waits until `name` resolves to a member listening on `port`.
    pub async fn wait_listening(&self, name: &str, port: u16) -> Result<(), NodeError> {
        let mut membership = self.shared.membership.clone();
        let ready = |m: &Membership| {
            m.resolve(name).is_some_and(|found| found.iter().any(|member| member.listening.contains(&port)))
        };
        let mut failed = self.failed.clone();
        tokio::select! {
            r = membership.wait_for(ready) => r.map(|_| ()).map_err(|_| NodeError::Stopped),
            _ = failed.wait_for(Option::is_some) => Err(NodeError::Stopped),
        }
    }

    /// Resolves once the cluster's owner asked this node to stop
    /// (`boxer scale` down through the rendezvous); at once if it did
    /// already. Never resolves otherwise.
    pub async fn stop_requested(&self) {
        let mut asked = self.shared.stop_requested.subscribe();
        if asked.wait_for(|&a| a).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Runs until the node fails (rendezvous lost) or [`Node::shutdown`].
    pub async fn stopped(&self) -> Arc<NodeError> {
        let mut failed = self.failed.clone();
        let result = failed.wait_for(Option::is_some).await;
        match result {
            Ok(f) => f.clone().expect("checked by wait_for"),
            Err(_) => Arc::new(NodeError::Stopped),
        }
    }

    /// Leaves the cluster: closes every connection (the rendezvous sees the
    /// node leave at once) and waits briefly for the close to be sent.
    pub async fn shutdown(&self) {
        self.failed_tx.send_if_modified(|f| f.is_none() && f.replace(Arc::new(NodeError::Stopped)).is_none());
        self.endpoint.quinn().close(0u32.into(), b"node shutting down");
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.endpoint.quinn().wait_idle()).await;
        // Listeners, loops and the socket they hold end here, not at exit.
        for task in self.tasks.lock().expect("task list").drain(..) {
            task.abort();
        }
        self.shared.udp.shutdown();
        // Nothing of the run directory outlives the node.
        if let Some(files) = &self.shim {
            files.run_dir.remove();
        }
    }
}

/// Mode of the node's run directory and its `etc` directory: everyone may
/// read and traverse, so processes of the node that switched to another user
/// (servers dropping root) still read the `/etc` files the shim redirects to.
/// Nothing secret is in it; only the runtime's user may write.
const RUN_DIR_MODE: u32 = 0o755;

/// Creates the node's run directory under `parent` with the `/etc` files,
/// and the control socket, and serves them.
///
/// The run directory is a fresh directory with a random name that only this
/// node uses (`parent` itself, which the user may have chosen, is never
/// changed or removed). The control socket is in the abstract namespace,
/// named with 64 random bits so no other process can claim the name first;
/// it is reachable from the node's network namespace only, and
/// [`control::serve`] answers only processes of this node.
fn start_shim_side(
    shared: &Arc<Shared>,
    parent: &std::path::Path,
    span: &tracing::Span,
    tasks: &mut Vec<tokio::task::AbortHandle>,
) -> Result<ShimFiles, NodeError> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let local = |what: &'static str, path: &std::path::Path| {
        let path = path.display().to_string();
        move |source| NodeError::Local { what, path, source }
    };
    let random_hex = || -> Result<String, NodeError> {
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|e| NodeError::Local {
            what: "no randomness for the run directory and control socket names:",
            path: String::new(),
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok(random.iter().map(|b| format!("{b:02x}")).collect())
    };
    std::fs::create_dir_all(parent).map_err(local("cannot create", parent))?;
    let dir = parent.join(format!("boxer-{}-{}", shared.joined.names[0], random_hex()?));
    // `create`, not `create_all`: the name is new, and an existing one is an error.
    std::fs::DirBuilder::new().mode(RUN_DIR_MODE).create(&dir).map_err(local("cannot create", &dir))?;
    let guard = Arc::new(RunDir(dir.clone()));
    let etc_dir = dir.join("etc");
    std::fs::DirBuilder::new().mode(RUN_DIR_MODE).create(&etc_dir).map_err(local("cannot create", &etc_dir))?;
    // Whatever the umask was.
    for d in [dir.as_path(), etc_dir.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(RUN_DIR_MODE))
            .map_err(local("cannot make readable", d))?;
    }
    if let Some(closed) = unreadable_ancestor(&dir) {
        warn!(
            "{} is not searchable by other users, so programs of this node that switch users cannot read their /etc files; use a run directory under {}",
            closed.display(),
            std::env::temp_dir().display()
        );
    }
    let name = format!("boxer/{}/{}/{}", shared.membership.borrow().cluster(), shared.joined.names[0], random_hex()?);
    let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .map_err(local("invalid control socket name", std::path::Path::new(&name)))?;
    let listener = std::os::unix::net::UnixListener::bind_addr(&address)
        .and_then(|l| {
            l.set_nonblocking(true)?;
            UnixListener::from_std(l)
        })
        .map_err(local("cannot listen on control socket @", std::path::Path::new(&name)))?;
    let control = format!("@{name}");
    spawn_tracked(tasks, control::serve(shared.clone(), listener, control.clone()).instrument(span.clone()));
    spawn_tracked(tasks, etc::keep_written(shared.clone(), etc_dir.clone()).instrument(span.clone()));
    Ok(ShimFiles { control, etc_dir, run_dir: guard })
}

/// The first directory on the way to `dir` that other users cannot search.
fn unreadable_ancestor(dir: &std::path::Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    dir.ancestors()
        .skip(1)
        .find(|d| std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 == 0))
        .map(|d| d.to_owned())
}

async fn forward_punch_requests(mut requests: mpsc::Receiver<NodeId>, to_rendezvous: mpsc::Sender<NodeMessage>) {
    while let Some(peer) = requests.recv().await {
        if to_rendezvous.send(NodeMessage::Punch { peer }).await.is_err() {
            return;
        }
    }
}

/// Tells the rendezvous about peers whose direct path went silent, so that
/// one which is gone for good leaves the membership in seconds.
async fn report_lost_peers(shared: Arc<Shared>) {
    let mut lost = shared.pathfinder.lost_peers();
    loop {
        match lost.recv().await {
            Ok(peer) => {
                if shared.to_rendezvous.send(NodeMessage::PeerLost { peer }).await.is_err() {
                    return;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Sends the node's peer paths to the rendezvous when they change.
async fn report_paths(shared: Arc<Shared>) {
    let mut last: Vec<(NodeId, boxer_proto::control::PathKind)> = Vec::new();
    let mut sent_at = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(PATH_REPORT_INTERVAL);
    loop {
        tick.tick().await;
        let paths = shared.peers.paths();
        let kinds: Vec<_> = paths.iter().map(|p| (p.peer, p.kind)).collect();
        if kinds != last || (!paths.is_empty() && sent_at.elapsed() >= PATH_REPORT_REFRESH) {
            last = kinds;
            sent_at = tokio::time::Instant::now();
            if shared.to_rendezvous.send(NodeMessage::Paths(paths)).await.is_err() {
                return;
            }
        }
    }
}
