//! The Boxer rendezvous server, as a library so `boxer up` can embed it.
//!
//! One quinn endpoint on one UDP port. Clients (runtimes, the CLI) connect with
//! a client certificate, open one control stream and make one request (see
//! [`boxer_proto::control`]). The [`registry`] holds the state; [`session`]
//! runs each connection.

pub mod limits;
pub mod logstore;
pub mod registry;
pub mod relay;
pub mod session;
pub mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use boxer_net::Identity;
use boxer_net::identity::IdentityError;
use boxer_net::tls::TlsError;
use boxer_proto::{ALPN_RENDEZVOUS, Fingerprint};
use tokio::sync::watch;
use tracing::{Instrument, error, info, info_span, warn};

pub use registry::{Refusal, Registry};

/// Most client connections served at once. Each costs a task and a few KiB;
/// beyond this new connections are refused rather than exhausting memory.
pub const MAX_CONNECTIONS: usize = 16_384;

/// File in the state directory that keeps a generated admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The TLS identity could not be loaded or created.
    #[error("state directory {dir}: {source}")]
    Identity {
        /// The state directory.
        dir: PathBuf,
        /// The error.
        source: IdentityError,
    },
    /// The admin token file could not be read or written.
    #[error("{path}: {source}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The saved clusters could not be read.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The UDP port could not be bound.
    #[error("cannot listen on UDP {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// How to start a rendezvous.
#[derive(Debug)]
pub struct Config {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Directory for the TLS key and certificate (and a generated admin token).
    pub state_dir: PathBuf,
    /// Admin token; `None` to load the one in the state directory or generate one.
    pub admin_token: Option<String>,
    /// An already bound socket to serve on instead of binding `listen` (an
    /// embedding program that made it in another network namespace).
    pub socket: Option<std::net::UdpSocket>,
    /// Keep clusters and members in the state directory
    /// ([`store::CLUSTERS_FILE`]) and take them back at start, so runtimes
    /// survive a restart. An embedding program whose clusters end with it
    /// (`boxer up`) has nothing to take back and says `false`.
    pub persist: bool,
    /// What one source address or member may take ([`limits::Limits`]).
    pub limits: limits::Limits,
}

/// Shortest time between two stateless resets (see `Rendezvous::bind`).
pub const MIN_RESET_INTERVAL: std::time::Duration = std::time::Duration::from_micros(200);

/// How often away members whose grace ended are removed.
pub const EXPIRY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Receive and send buffers asked for on the rendezvous' UDP socket, as on
/// a node's ([`boxer_net::endpoint::SOCKET_BUFFER`]). The kernel's default
/// (about 208 KiB, some 50 handshake packets on loopback) overflows when
/// many runtimes join at once: a cluster starting, or every member
/// rejoining a restarted rendezvous. Each dropped Initial or client
/// certificate costs its joiner a retransmission timeout (hundreds of ms to
/// seconds); at 64 joins in flight the admissions benchmark lost about one
/// datagram for every three joins (p99 join latency 1 s instead of 0.15 s).
pub const SOCKET_BUFFER: usize = boxer_net::endpoint::SOCKET_BUFFER;

/// Asks for [`SOCKET_BUFFER`] both ways. Best effort: a smaller buffer
/// only costs retransmissions under bursts. Warns (once per process) when
/// the kernel gave less.
fn grow_buffers(socket: &std::net::UdpSocket) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    use boxer_net::endpoint::{SocketBuffer, grow_buffer};
    let recv = grow_buffer(socket, SocketBuffer::Receive, SOCKET_BUFFER, true);
    let send = grow_buffer(socket, SocketBuffer::Send, SOCKET_BUFFER, true);
    let short = |r: &std::io::Result<usize>| !r.as_ref().is_ok_and(|&n| n >= SOCKET_BUFFER);
    if short(&recv) || short(&send) {
        let show = |r: std::io::Result<usize>| match r {
            Ok(n) => format!("{} KiB", n >> 10),
            Err(e) => format!("unknown ({e})"),
        };
        let (recv, send) = (show(recv), show(send));
        WARNED.call_once(|| {
            warn!(
                "the UDP socket's buffers are smaller than the {} KiB asked for (receive {recv}, send {send}): \
                 joins in bursts may be dropped and retried; run as root (or with CAP_NET_ADMIN), or raise \
                 net.core.rmem_max and net.core.wmem_max",
                SOCKET_BUFFER >> 10
            )
        });
    }
}

/// A running rendezvous.
#[derive(Debug, Clone)]
pub struct Rendezvous {
    endpoint: quinn::Endpoint,
    fingerprint: Fingerprint,
    admin_token: String,
    registry: Arc<Mutex<Registry>>,
    logs: logstore::LogStore,
    /// Where clusters are saved, when they are.
    store: Option<store::Store>,
    limits: limits::Limits,
}

fn load_or_create_token(state_dir: &Path) -> Result<String, ServerError> {
    let path = state_dir.join(ADMIN_TOKEN_FILE);
    let err = |source| ServerError::TokenFile { path: path.clone(), source };
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_owned()),
        Ok(_) => Err(err(std::io::Error::other("file is empty"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = registry::random_token();
            // Owner-only, like the TLS key: the token creates and deletes clusters.
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .and_then(|mut f| f.write_all(format!("{token}\n").as_bytes()))
                .map_err(err)?;
            Ok(token)
        }
        Err(e) => Err(err(e)),
    }
}

impl Rendezvous {
    /// Loads or creates the identity in the state directory and binds the port.
    /// Call [`Rendezvous::run`] to serve.
    pub fn bind(config: Config) -> Result<Self, ServerError> {
        let dir = config.state_dir;
        let identity =
            Identity::load_or_generate(&dir).map_err(|source| ServerError::Identity { dir: dir.clone(), source })?;
        let admin_token = match config.admin_token {
            Some(t) => t,
            None => load_or_create_token(&dir)?,
        };
        let server = boxer_net::tls::server_config(&identity, ALPN_RENDEZVOUS, boxer_net::transport::rendezvous())?;
        let bind_error = |source| ServerError::Bind { addr: config.listen, source };
        let socket = match config.socket {
            Some(s) => s,
            None => std::net::UdpSocket::bind(config.listen).map_err(bind_error)?,
        };
        grow_buffers(&socket);
        let reset_key = Arc::new(ResetKey::derive(&identity));
        let mut endpoint_config = quinn::EndpointConfig::new(reset_key.clone());
        // quinn sends at most one stateless reset per interval, for all
        // connections together (20 ms by default): after a restart, 1000
        // runtimes would wait up to 20 s for theirs. A reset is smaller
        // than the packet that caused it, so a short interval amplifies
        // nothing.
        endpoint_config.min_reset_interval(MIN_RESET_INTERVAL);
        // Connection ids carry a keyed hash that quinn checks before it
        // answers an unknown id; with the key from the TLS key too, a
        // restarted rendezvous recognises its old ids and resets them.
        let cid_key = reset_key.cid_key();
        endpoint_config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
        let endpoint = quinn::Endpoint::new(endpoint_config, Some(server), socket, Arc::new(quinn::TokioRuntime))
            .map_err(bind_error)?;
        let store = config.persist.then(|| store::Store::new(&dir));
        let registry = match store.as_ref().map(store::Store::load).transpose()?.flatten() {
            Some(saved) => {
                let members: usize = saved.clusters.iter().map(|c| c.members.len()).sum();
                info!(
                    clusters = saved.clusters.len(),
                    members,
                    "took back the saved clusters; their members have {:?} to rejoin",
                    registry::AWAY_GRACE
                );
                Registry::restore(admin_token.clone(), saved, std::time::Instant::now())
            }
            None => Registry::new(admin_token.clone()),
        };
        Ok(Self {
            endpoint,
            fingerprint: identity.fingerprint(),
            registry: Arc::new(Mutex::new(registry)),
            admin_token,
            logs: logstore::LogStore::new(dir.join("logs")),
            store,
            limits: config.limits,
        })
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Fingerprint of the certificate clients must pin.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The admin token.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Where node output is stored (`<state dir>/logs/<cluster>/<node>.log`).
    pub fn log_store(&self) -> &logstore::LogStore {
        &self.logs
    }

    /// The registry, for an embedding program that manages clusters directly.
    pub fn registry(&self) -> &Arc<Mutex<Registry>> {
        &self.registry
    }

    /// Serves connections until [`Rendezvous::close`] is called.
    pub async fn run(self) {
        info!(addr = ?self.local_addr().ok(), fingerprint = %self.fingerprint, "rendezvous serving");
        let saved = self.store.clone().map(|store| {
            let (written, saved) = watch::channel(session::lock(&self.registry).version());
            tokio::spawn(keep_saved(self.registry.clone(), store, written).in_current_span());
            saved
        });
        tokio::spawn(expire_away(self.registry.clone()).in_current_span());
        let sources = Arc::new(Mutex::new(limits::SourceLimits::new(self.limits, std::time::Instant::now())));
        let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
        tokio::spawn(report_refusals(refused.clone()).in_current_span());
        let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        while let Some(incoming) = self.endpoint.accept().await {
            use std::sync::atomic::Ordering;
            if active.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                tracing::warn!(remote = %incoming.remote_address(), "refusing connection: {MAX_CONNECTIONS} connections open");
                incoming.refuse();
                continue;
            }
            // Before the handshake: a refusal costs one packet.
            let ip = incoming.remote_address().ip();
            let admitted = sources.lock().unwrap_or_else(|e| e.into_inner()).open(ip, std::time::Instant::now());
            if let Err(why) = admitted {
                tracing::debug!(%ip, ?why, "refusing connection over the per-source limits");
                refused.fetch_add(1, Ordering::Relaxed);
                incoming.refuse();
                continue;
            }
            active.fetch_add(1, Ordering::Relaxed);
            let active = active.clone();
            let sources = sources.clone();
            let limits = self.limits;
            let registry = self.registry.clone();
            let remote = incoming.remote_address();
            let logs = self.logs.clone();
            let saved = saved.clone();
            tokio::spawn(
                async move {
                    session::serve(registry, logs, saved, limits, incoming).await;
                    sources.lock().unwrap_or_else(|e| e.into_inner()).close(ip);
                    active.fetch_sub(1, Ordering::Relaxed);
                }
                .instrument(info_span!("client", %remote, node = tracing::field::Empty)),
            );
        }
    }

    /// Closes every connection and stops [`Rendezvous::run`]. With
    /// [`Config::persist`] the members stay as saved, and their runtimes
    /// rejoin when a rendezvous runs again on the same state directory;
    /// without, the clusters end and so do their runtimes.
    pub fn close(&self) {
        let saved = {
            let mut registry = session::lock(&self.registry);
            registry.close();
            registry.saved()
        };
        // What the saver has not written yet is written now.
        if let Some(store) = &self.store
            && let Err(e) = store.save(&saved)
        {
            error!("cannot save cluster state at shutdown: {e}");
        }
        if self.store.is_some() {
            // Its members are saved: their runtimes reconnect to the next one.
            self.endpoint.close(0u32.into(), b"rendezvous shutting down");
        } else {
            // Nothing is saved (an embedded rendezvous): its clusters end
            // with it, and runtimes must not wait for it to come back.
            let code = boxer_proto::control::CloseCode::ClusterDeleted.code();
            self.endpoint.close(code.into(), b"the rendezvous ended, and its clusters with it");
        }
    }

    /// Waits (briefly) until the close of every connection is sent.
    pub async fn wait_closed(&self) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

/// The key of quinn's stateless resets, derived from the TLS key so that a
/// restarted rendezvous (same state directory) has the same one. Its answer
/// to a packet of a connection it no longer knows is then a reset the
/// runtime can verify: the runtime learns at once that the rendezvous
/// restarted and rejoins within a second, instead of waiting out its idle
/// timeout. Anyone without the TLS key cannot forge such a reset.
struct ResetKey([u8; 32]);

impl ResetKey {
    fn derive(identity: &Identity) -> Self {
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        hash.update(b"boxer rendezvous stateless reset key v1\0");
        hash.update(identity.key().secret_der());
        Self(hash.finalize().into())
    }

    /// Key of the connection id hash: like the reset key, stable across
    /// restarts and secret.
    fn cid_key(&self) -> u64 {
        use hmac::Mac;
        let tag = self.mac(b"connection ids").finalize().into_bytes();
        u64::from_le_bytes(tag[..8].try_into().expect("HMAC-SHA256 is longer"))
    }

    fn mac(&self, data: &[u8]) -> hmac::Hmac<sha2::Sha256> {
        use hmac::Mac;
        let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(data);
        mac
    }
}

impl quinn::crypto::HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        use hmac::Mac;
        let tag = self.mac(data).finalize().into_bytes();
        let n = signature_out.len().min(tag.len());
        signature_out[..n].copy_from_slice(&tag[..n]);
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        use hmac::Mac;
        self.mac(data).verify_slice(signature).map_err(|_| quinn::crypto::CryptoError)
    }
}

/// Writes the registry to `store` after every change, and publishes the
/// version written. Changes that come while a write runs are written
/// together by the next one.
async fn keep_saved(registry: Arc<Mutex<Registry>>, store: store::Store, written: watch::Sender<u64>) {
    let changed = session::lock(&registry).changed();
    let mut failing = false;
    loop {
        changed.notified().await;
        let (version, saved) = {
            let r = session::lock(&registry);
            (r.version(), r.saved())
        };
        let store = store.clone();
        let result = tokio::task::spawn_blocking(move || store.save(&saved)).await;
        match result {
            Ok(Ok(())) => {
                if failing {
                    info!("cluster state saved again");
                    failing = false;
                }
            }
            // Joins are answered anyway (see `session::SAVE_WAIT`); a
            // restart would lose what was not written.
            Ok(Err(e)) => {
                if !failing {
                    error!("cannot save cluster state (a restart would lose the latest changes): {e}");
                    failing = true;
                }
            }
            Err(e) => warn!("cluster state writer failed: {e}"),
        }
        written.send_replace(version);
    }
}

/// How often refused connections are summed up in the log: one line per
/// period however hard someone tries, so a flood cannot fill the disk.
pub const REFUSAL_REPORT: std::time::Duration = std::time::Duration::from_secs(10);

/// Logs how many connections the per-source limits refused, once per
/// [`REFUSAL_REPORT`] when there were any.
async fn report_refusals(refused: Arc<std::sync::atomic::AtomicU64>) {
    let mut tick = tokio::time::interval(REFUSAL_REPORT);
    loop {
        tick.tick().await;
        let n = refused.swap(0, std::sync::atomic::Ordering::Relaxed);
        if n > 0 {
            warn!(connections = n, "refused connections over the per-source limits in the last {REFUSAL_REPORT:?}");
        }
    }
}

/// Removes away members whose grace ended.
async fn expire_away(registry: Arc<Mutex<Registry>>) {
    let mut tick = tokio::time::interval(EXPIRY_INTERVAL);
    loop {
        tick.tick().await;
        for (cluster, node) in session::lock(&registry).expire(std::time::Instant::now()) {
            info!(%cluster, %node, "away member did not rejoin within {:?}: removed", registry::AWAY_GRACE);
        }
    }
}
