//! The peer table: one QUIC connection per peer node.
//!
//! Connections are dialled on demand when the first stream to a peer is
//! opened, and accepted from peers that dial us. Every connection is mutually
//! authenticated: we dial pinning the fingerprint membership publishes for the
//! peer, and we serve a dialler only if the certificate it presented belongs to
//! a current member. Streams the peer opens on either kind of connection are
//! handed to the runtime through a channel, already past their preamble.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use boxer_proto::control::CloseCode;
use boxer_proto::peer::{StreamError, StreamHeader};
use boxer_proto::{ALPN_PEER, FrameError, Member, Membership, NodeId};
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::endpoint::{EndpointError, NodeEndpoint};
use crate::proxy;
use crate::tls::peer_fingerprint;
use crate::transport;

/// Time for one dial attempt to one candidate address. A working path
/// completes the handshake in one or two round trips (under 1 s anywhere on
/// Earth); 3 s also covers a lost first packet (quinn's initial PTO is 333 ms,
/// doubling per retry).
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(3);

/// How long an accepted connection may wait for its dialler to appear in our
/// membership. The dialler learnt about us from the same feed, so we normally
/// know it already; this absorbs the feed reaching it before us.
pub const MEMBERSHIP_CATCH_UP: Duration = Duration::from_secs(3);

/// Why a peer could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No current member has that id.
    #[error("{0} is not a member of the cluster")]
    UnknownPeer(NodeId),
    /// Every candidate address failed.
    #[error("cannot reach {peer}: {tried}")]
    Unreachable {
        /// The peer.
        peer: NodeId,
        /// Each address tried and how it failed.
        tried: String,
    },
    /// The endpoint refused to start the dial.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The connection broke while opening a stream.
    #[error("connection to {peer} lost: {source}")]
    Lost {
        /// The peer.
        peer: NodeId,
        /// The error.
        source: quinn::ConnectionError,
    },
    /// The stream header could not be sent.
    #[error("stream to {peer}: {source}")]
    Stream {
        /// The peer.
        peer: NodeId,
        /// The error.
        source: FrameError,
    },
}

/// A stream a peer opened, past its preamble.
#[derive(Debug)]
pub struct InboundStream {
    /// The peer that opened it.
    pub from: NodeId,
    /// Its header.
    pub header: StreamHeader,
    /// Sending half (towards the peer).
    pub send: quinn::SendStream,
    /// Receiving half (from the peer).
    pub recv: quinn::RecvStream,
}

/// Per-peer slot: the lock serialises dials so two app connections to a new
/// peer share one handshake.
type Slot = Arc<tokio::sync::Mutex<Option<quinn::Connection>>>;

/// The peer table of one node.
#[derive(Debug)]
pub struct Peers {
    endpoint: NodeEndpoint,
    membership: watch::Receiver<Membership>,
    slots: Mutex<HashMap<NodeId, Slot>>,
    inbound: mpsc::Sender<InboundStream>,
}

impl Peers {
    /// A peer table on `endpoint`, checking peers against `membership` and
    /// delivering accepted streams to `inbound`. Call [`Peers::run`] to accept.
    pub fn new(
        endpoint: NodeEndpoint,
        membership: watch::Receiver<Membership>,
        inbound: mpsc::Sender<InboundStream>,
    ) -> Arc<Self> {
        Arc::new(Self { endpoint, membership, slots: Mutex::default(), inbound })
    }

    fn slot(&self, peer: NodeId) -> Slot {
        self.slots.lock().expect("peer table lock").entry(peer).or_default().clone()
    }

    fn member(&self, peer: NodeId) -> Option<Member> {
        self.membership.borrow().get(peer).cloned()
    }

    /// Opens a stream to `peer` carrying `header`, dialling if needed. A
    /// connection found dead is replaced once.
    pub async fn open_stream(
        self: &Arc<Self>,
        peer: NodeId,
        header: StreamHeader,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), PeerError> {
        let mut retried = false;
        loop {
            let conn = self.connection(peer).await?;
            match conn.open_bi().await {
                Ok((mut send, recv)) => {
                    proxy::write_preamble(&mut send, &header)
                        .await
                        .map_err(|source| PeerError::Stream { peer, source })?;
                    return Ok((send, recv));
                }
                Err(source) if retried => return Err(PeerError::Lost { peer, source }),
                Err(source) => {
                    debug!(%peer, %source, "connection lost, redialling");
                    retried = true;
                }
            }
        }
    }

    /// The live connection to `peer`, dialled if there is none.
    pub async fn connection(self: &Arc<Self>, peer: NodeId) -> Result<quinn::Connection, PeerError> {
        let slot = self.slot(peer);
        let mut guard = slot.lock().await;
        if let Some(conn) = guard.as_ref().filter(|c| c.close_reason().is_none()) {
            return Ok(conn.clone());
        }
        let member = self.member(peer).ok_or(PeerError::UnknownPeer(peer))?;
        let conn = self.dial(&member).await?;
        *guard = Some(conn.clone());
        self.spawn_serve(conn.clone(), peer);
        Ok(conn)
    }

    /// Tries each candidate address of `member` in turn.
    async fn dial(&self, member: &Member) -> Result<quinn::Connection, PeerError> {
        let peer = member.node_id;
        let mut tried = Vec::new();
        for addr in member.candidates() {
            match self.dial_one(member, addr).await {
                Ok(conn) => {
                    info!(%peer, %addr, "peer connection established");
                    return Ok(conn);
                }
                Err(e) => {
                    debug!(%peer, %addr, error = %e, "dial failed");
                    tried.push(format!("{addr}: {e}"));
                }
            }
        }
        Err(PeerError::Unreachable { peer, tried: tried.join("; ") })
    }

    async fn dial_one(&self, member: &Member, addr: SocketAddr) -> Result<quinn::Connection, String> {
        let connecting =
            self.endpoint.connect(addr, member.fingerprint, ALPN_PEER, transport::peer()).map_err(|e| e.to_string())?;
        match tokio::time::timeout(DIAL_TIMEOUT, connecting).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no handshake within {DIAL_TIMEOUT:?}")),
        }
    }

    /// Closes the connection to a peer that left.
    pub fn forget(&self, peer: NodeId) {
        let slot = self.slots.lock().expect("peer table lock").remove(&peer);
        if let Some(slot) = slot
            && let Ok(guard) = slot.try_lock()
            && let Some(conn) = guard.as_ref()
        {
            conn.close(CloseCode::Normal.code().into(), b"peer left the cluster");
        }
    }

    /// Number of peers with a live connection.
    pub fn connected(&self) -> usize {
        let slots: Vec<Slot> = self.slots.lock().expect("peer table lock").values().cloned().collect();
        slots
            .iter()
            .filter(|s| s.try_lock().map(|g| g.as_ref().is_some_and(|c| c.close_reason().is_none())).unwrap_or(true))
            .count()
    }

    /// Accepts peer connections until the endpoint closes.
    pub async fn run(self: Arc<Self>) {
        while let Some(incoming) = self.endpoint.quinn().accept().await {
            let this = self.clone();
            let remote = incoming.remote_address();
            tokio::spawn(
                async move {
                    if let Err(e) = this.accept(incoming).await {
                        warn!("refused peer connection: {e}");
                    }
                }
                .instrument(info_span!("incoming", %remote)),
            );
        }
    }

    async fn accept(self: &Arc<Self>, incoming: quinn::Incoming) -> Result<(), String> {
        let conn = incoming.await.map_err(|e| format!("handshake failed: {e}"))?;
        let fingerprint = peer_fingerprint(&conn).ok_or("no client certificate")?;
        let mut membership = self.membership.clone();
        let found = tokio::time::timeout(
            MEMBERSHIP_CATCH_UP,
            membership.wait_for(|m| m.by_fingerprint(&fingerprint).is_some()),
        )
        .await;
        let member = match found {
            Ok(Ok(m)) => m.by_fingerprint(&fingerprint).cloned().expect("checked by wait_for"),
            _ => {
                let why = format!("certificate {fingerprint} is not a member of the cluster");
                conn.close(CloseCode::NotAMember.code().into(), why.as_bytes());
                return Err(why);
            }
        };
        let peer = member.node_id;
        info!(%peer, "peer connection accepted");
        // Adopt the connection if we have none; if we are dialling the same
        // peer right now, both connections live and each side uses its own.
        if let Ok(mut guard) = self.slot(peer).try_lock()
            && guard.as_ref().is_none_or(|c| c.close_reason().is_some())
        {
            *guard = Some(conn.clone());
        }
        self.spawn_serve(conn, peer);
        Ok(())
    }

    /// Accepts the streams `peer` opens on `conn`.
    fn spawn_serve(self: &Arc<Self>, conn: quinn::Connection, peer: NodeId) {
        let inbound = self.inbound.clone();
        tokio::spawn(
            async move {
                loop {
                    let (send, mut recv) = match conn.accept_bi().await {
                        Ok(s) => s,
                        Err(e) => {
                            debug!("peer connection ended: {e}");
                            return;
                        }
                    };
                    let inbound = inbound.clone();
                    tokio::spawn(async move {
                        match proxy::read_preamble(&mut recv).await {
                            Ok(header) => {
                                let stream = InboundStream { from: peer, header, send, recv };
                                if let Err(mpsc::error::SendError(s)) = inbound.send(stream).await {
                                    proxy::refuse(s.send, s.recv, StreamError::Refused);
                                }
                            }
                            Err(e) => {
                                warn!(%peer, "bad stream preamble: {e}");
                                proxy::refuse(send, recv, StreamError::Protocol);
                            }
                        }
                    });
                }
            }
            .instrument(info_span!("peer", %peer)),
        );
    }
}
