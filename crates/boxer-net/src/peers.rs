//! The peer table: one QUIC connection per peer node.
//!
//! Connections are set up on demand when the first stream to a peer is
//! opened: the [`Pathfinder`] finds a path (punched or relayed), then the node
//! with the lower id dials the peer's [`peer_addr`] and the other accepts. Every connection is mutually
//! authenticated: we dial pinning the fingerprint membership publishes for the
//! peer, and we serve a dialler only if the certificate it presented belongs to
//! a current member. Streams the peer opens on either kind of connection are
//! handed to the runtime through a channel, already past their preamble;
//! QUIC datagrams (overlay UDP) through another, as they come.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use boxer_proto::control::{CloseCode, PathKind, PathReport};
use boxer_proto::peer::{StreamError, StreamHeader};
use boxer_proto::{ALPN_PEER, FrameError, Member, Membership, NodeId};
use bytes::Bytes;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::endpoint::{EndpointError, NodeEndpoint};
use crate::proxy;
use crate::punch::{PUNCH_REQUEST_SLACK, PUNCH_TIMEOUT, Pathfinder};
use crate::socket::{Route, peer_addr};
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

/// A QUIC datagram a peer sent, as received (overlay UDP: a
/// `boxer_proto::peer::UdpHeader` and a fragment).
#[derive(Debug)]
pub struct InboundDatagram {
    /// The peer that sent it (the connection's authenticated member).
    pub from: NodeId,
    /// The datagram.
    pub data: Bytes,
}

/// Per-peer slot: the dial lock serialises dials so two app connections to a
/// new peer share one handshake; `conn` announces the connection to waiters;
/// `connecting` is set while [`Peers::connection_now`] sets one up.
#[derive(Debug)]
struct SlotInner {
    dial: tokio::sync::Mutex<()>,
    conn: watch::Sender<Option<quinn::Connection>>,
    connecting: AtomicBool,
}

type Slot = Arc<SlotInner>;

fn live(conn: &Option<quinn::Connection>) -> Option<quinn::Connection> {
    conn.as_ref().filter(|c| c.close_reason().is_none()).cloned()
}

/// The peer table of one node.
#[derive(Debug)]
pub struct Peers {
    endpoint: NodeEndpoint,
    membership: watch::Receiver<Membership>,
    pathfinder: Arc<Pathfinder>,
    slots: Mutex<HashMap<NodeId, Slot>>,
    inbound: mpsc::Sender<InboundStream>,
    datagrams: mpsc::Sender<InboundDatagram>,
}

impl Peers {
    /// A peer table on `endpoint`, checking peers against `membership`,
    /// finding paths with `pathfinder` and delivering accepted streams to
    /// `inbound` and received datagrams to `datagrams` (dropped when that
    /// channel is full: datagrams may be lost, a slow reader must not make
    /// us buffer without bound). Call [`Peers::run`] to accept.
    pub fn new(
        endpoint: NodeEndpoint,
        membership: watch::Receiver<Membership>,
        pathfinder: Arc<Pathfinder>,
        inbound: mpsc::Sender<InboundStream>,
        datagrams: mpsc::Sender<InboundDatagram>,
    ) -> Arc<Self> {
        Arc::new(Self { endpoint, membership, pathfinder, slots: Mutex::default(), inbound, datagrams })
    }

    fn slot(&self, peer: NodeId) -> Slot {
        self.slots
            .lock()
            .expect("peer table lock")
            .entry(peer)
            .or_insert_with(|| {
                Arc::new(SlotInner {
                    dial: Default::default(),
                    conn: watch::channel(None).0,
                    connecting: AtomicBool::new(false),
                })
            })
            .clone()
    }

    fn member(&self, peer: NodeId) -> Option<Member> {
        self.membership.borrow().get(peer).cloned()
    }

    /// Opens a stream to `peer` carrying `header`, connecting if needed. A
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
                    debug!(%peer, %source, "connection lost, reconnecting");
                    retried = true;
                }
            }
        }
    }

    /// The live connection to `peer`, set up if there is none: a path is
    /// found (punched or relayed), then the side with the lower node id dials
    /// and the other waits for that dial.
    pub async fn connection(self: &Arc<Self>, peer: NodeId) -> Result<quinn::Connection, PeerError> {
        let slot = self.slot(peer);
        if let Some(conn) = live(&slot.conn.borrow()) {
            return Ok(conn);
        }
        let _dialling = slot.dial.lock().await;
        if let Some(conn) = live(&slot.conn.borrow()) {
            return Ok(conn);
        }
        let member = self.member(peer).ok_or(PeerError::UnknownPeer(peer))?;
        if self.pathfinder.me() < peer {
            let route = self.pathfinder.ensure_route(peer).await;
            let conn = self.dial(&member).await.map_err(|e| PeerError::Unreachable {
                peer,
                tried: format!("{} via {}: {e}", peer_addr(peer), route_text(route)),
            })?;
            info!(%peer, route = %route_text(route), "peer connection established");
            slot.conn.send_replace(Some(conn.clone()));
            self.spawn_serve(conn.clone(), peer);
            Ok(conn)
        } else {
            // The peer dials us once the rendezvous had us both punch.
            let mut conn = slot.conn.subscribe();
            self.pathfinder.request_punch(peer);
            let wait = PUNCH_TIMEOUT + PUNCH_REQUEST_SLACK + DIAL_TIMEOUT;
            match tokio::time::timeout(wait, conn.wait_for(|c| live(c).is_some())).await {
                Ok(Ok(c)) => Ok(live(&c).expect("checked by wait_for")),
                _ => Err(PeerError::Unreachable { peer, tried: format!("{peer} did not connect within {wait:?}") }),
            }
        }
    }

    /// The live connection to `peer` without waiting, for senders that
    /// must not block (overlay UDP). Without one, starts setting it up in
    /// the background as [`Peers::connection`] does (one attempt at a time)
    /// and returns `None`; [`Peers::watch_connection`] tells when it is up.
    pub fn connection_now(self: &Arc<Self>, peer: NodeId) -> Option<quinn::Connection> {
        let slot = self.slot(peer);
        if let Some(conn) = live(&slot.conn.borrow()) {
            return Some(conn);
        }
        if !slot.connecting.swap(true, Ordering::AcqRel) {
            let this = self.clone();
            tokio::spawn(
                async move {
                    if let Err(e) = this.connection(peer).await {
                        debug!(%peer, "connecting in the background failed: {e}");
                    }
                    slot.connecting.store(false, Ordering::Release);
                }
                .in_current_span(),
            );
        }
        None
    }

    /// The connection to `peer` as it changes (`None` or closed: none). The
    /// receiver ends (`changed` fails) when the peer is forgotten.
    pub fn watch_connection(&self, peer: NodeId) -> watch::Receiver<Option<quinn::Connection>> {
        self.slot(peer).conn.subscribe()
    }

    async fn dial(&self, member: &Member) -> Result<quinn::Connection, String> {
        let addr = peer_addr(member.node_id);
        let connecting =
            self.endpoint.connect(addr, member.fingerprint, ALPN_PEER, transport::peer()).map_err(|e| e.to_string())?;
        match tokio::time::timeout(DIAL_TIMEOUT, connecting).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no handshake within {DIAL_TIMEOUT:?}")),
        }
    }

    /// The path and round-trip time of every live peer connection.
    pub fn paths(&self) -> Vec<PathReport> {
        let slots: Vec<(NodeId, Slot)> =
            self.slots.lock().expect("peer table lock").iter().map(|(p, s)| (*p, s.clone())).collect();
        let mut out: Vec<PathReport> = slots
            .into_iter()
            .filter_map(|(peer, slot)| {
                let conn = live(&slot.conn.borrow())?;
                let kind = match self.endpoint.socket().route(peer) {
                    Some(Route::Direct(addr)) => PathKind::Direct(addr),
                    Some(Route::Relay) | None => PathKind::Relayed,
                };
                Some(PathReport { peer, kind, rtt_us: conn.rtt().as_micros().min(u32::MAX as u128) as u32 })
            })
            .collect();
        out.sort_by_key(|p| p.peer);
        out
    }

    /// Closes the connection to a peer that left.
    pub fn forget(&self, peer: NodeId) {
        let slot = self.slots.lock().expect("peer table lock").remove(&peer);
        if let Some(conn) = slot.and_then(|s| live(&s.conn.borrow())) {
            conn.close(CloseCode::Normal.code().into(), b"peer left the cluster");
        }
        self.pathfinder.forget(peer);
    }

    /// Number of peers with a live connection.
    pub fn connected(&self) -> usize {
        let slots: Vec<Slot> = self.slots.lock().expect("peer table lock").values().cloned().collect();
        slots.iter().filter(|s| live(&s.conn.borrow()).is_some()).count()
    }

    /// Accepts peer connections until the endpoint closes, and dials the
    /// peers a punch started with when this node is the dialling side.
    pub async fn run(self: Arc<Self>, mut ready: mpsc::UnboundedReceiver<NodeId>) {
        let this = self.clone();
        tokio::spawn(async move {
            while let Some(peer) = ready.recv().await {
                if this.pathfinder.me() < peer && live(&this.slot(peer).conn.borrow()).is_none() {
                    let this = this.clone();
                    tokio::spawn(async move {
                        // An application waiting for this peer gets the error
                        // itself; this dial is only ahead of it.
                        if let Err(e) = this.connection(peer).await {
                            debug!(%peer, "connecting after a punch failed: {e}");
                        }
                    });
                }
            }
        });
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
        info!(%peer, remote = %conn.remote_address(), "peer connection accepted");
        // Adopt the connection if we have none; if we are dialling the same
        // peer right now, both connections live and each side uses its own.
        self.slot(peer).conn.send_if_modified(|c| {
            if live(c).is_some() {
                return false;
            }
            *c = Some(conn.clone());
            true
        });
        self.spawn_serve(conn, peer);
        Ok(())
    }

    /// Accepts the streams `peer` opens on `conn` and reads its datagrams.
    fn spawn_serve(self: &Arc<Self>, conn: quinn::Connection, peer: NodeId) {
        let span = info_span!("peer", %peer);
        tokio::spawn(read_datagrams(conn.clone(), peer, self.datagrams.clone()).instrument(span.clone()));
        let inbound = self.inbound.clone();
        let this = self.clone();
        tokio::spawn(
            async move {
                loop {
                    let (send, mut recv) = match conn.accept_bi().await {
                        Ok(s) => s,
                        Err(e) => {
                            debug!("peer connection ended: {e}");
                            if live(&this.slot(peer).conn.borrow()).is_none() {
                                this.pathfinder.idle(peer);
                            }
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
            .instrument(span),
        );
    }
}

/// Hands every datagram `peer` sends on `conn` to `datagrams` until the
/// connection ends; drops what does not fit.
async fn read_datagrams(conn: quinn::Connection, peer: NodeId, datagrams: mpsc::Sender<InboundDatagram>) {
    let mut dropped: u64 = 0;
    while let Ok(data) = conn.read_datagram().await {
        match datagrams.try_send(InboundDatagram { from: peer, data }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                dropped += 1;
                // 1, 2, 4, 8...: visible without a line per datagram.
                if dropped.is_power_of_two() {
                    debug!(dropped, "runtime is behind on datagrams: dropping");
                }
            }
            Err(TrySendError::Closed(_)) => return,
        }
    }
}

fn route_text(route: Route) -> String {
    match route {
        Route::Direct(addr) => format!("direct path {addr}"),
        Route::Relay => "the relay".to_owned(),
    }
}
