//! The Boxer rendezvous server, as a library so `boxer up` can embed it.
//!
//! One quinn endpoint on one UDP port. Clients (runtimes, the CLI) connect with
//! a client certificate, open one control stream and make one request (see
//! [`boxer_proto::control`]). The [`registry`] holds the state; [`session`]
//! runs each connection.

pub mod logstore;
pub mod registry;
pub mod relay;
pub mod session;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use boxer_net::Identity;
use boxer_net::identity::IdentityError;
use boxer_net::tls::TlsError;
use boxer_proto::{ALPN_RENDEZVOUS, Fingerprint};
use tracing::{Instrument, info, info_span};

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
}

/// A running rendezvous.
#[derive(Debug, Clone)]
pub struct Rendezvous {
    endpoint: quinn::Endpoint,
    fingerprint: Fingerprint,
    admin_token: String,
    registry: Arc<Mutex<Registry>>,
    logs: logstore::LogStore,
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
        let endpoint =
            quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(server), socket, Arc::new(quinn::TokioRuntime))
                .map_err(bind_error)?;
        Ok(Self {
            endpoint,
            fingerprint: identity.fingerprint(),
            registry: Arc::new(Mutex::new(Registry::new(admin_token.clone()))),
            admin_token,
            logs: logstore::LogStore::new(dir.join("logs")),
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
        let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        while let Some(incoming) = self.endpoint.accept().await {
            use std::sync::atomic::Ordering;
            if active.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                tracing::warn!(remote = %incoming.remote_address(), "refusing connection: {MAX_CONNECTIONS} connections open");
                incoming.refuse();
                continue;
            }
            active.fetch_add(1, Ordering::Relaxed);
            let active = active.clone();
            let registry = self.registry.clone();
            let remote = incoming.remote_address();
            let logs = self.logs.clone();
            tokio::spawn(
                async move {
                    session::serve(registry, logs, incoming).await;
                    active.fetch_sub(1, Ordering::Relaxed);
                }
                .instrument(info_span!("client", %remote, node = tracing::field::Empty)),
            );
        }
    }

    /// Closes every connection and stops [`Rendezvous::run`].
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"rendezvous shutting down");
    }
}
