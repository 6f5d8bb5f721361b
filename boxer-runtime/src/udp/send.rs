//! A flow's task: reads the app's datagrams from the flow socket and sends
//! them to the peer as QUIC datagrams, in fragments.
//!
//! Each flow owns its task, so the hot path takes no lock of the node's
//! tables: it reads the socket, cuts the datagram and hands the fragments to
//! the cached peer connection. Without a connection (yet), datagrams wait in
//! a small bounded queue while one is set up; whatever does not fit is
//! dropped, as a congested network would.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use boxer_net::peers::DIAL_TIMEOUT;
use boxer_net::punch::{PUNCH_REQUEST_SLACK, PUNCH_TIMEOUT};
use boxer_proto::NodeId;
use boxer_proto::peer::UdpHeader;
use bytes::{Bytes, BytesMut};
use quinn::SendDatagramError;
use tokio::sync::watch;
use tracing::{debug, trace, warn};

use super::Udp;
use super::flows::Flow;
use super::fragment::{self, SplitError};

/// Datagrams one flow queues while its peer connection is set up.
/// Enough for an app's first burst (a handshake, a few requests); more
/// would arrive stale anyway.
pub(crate) const PENDING_DATAGRAMS: usize = 64;

/// Bytes all flows of the node together queue while waiting for
/// connections, so that many flows to unreachable peers cannot add up.
pub(crate) const PENDING_BYTES: usize = 4 << 20;

/// How long queued datagrams wait for their connection: the longest a
/// connection setup takes (punch, its request to the rendezvous, the dial).
/// After that the setup failed and the queue is dropped; the next datagram
/// tries again.
pub(crate) const PENDING_TTL: Duration = PUNCH_TIMEOUT.saturating_add(PUNCH_REQUEST_SLACK).saturating_add(DIAL_TIMEOUT);

/// Datagrams read from the flow socket per wake-up, so one busy flow does
/// not starve the node's other tasks.
const RECV_BATCH: usize = 64;

/// Receive buffer: room for the largest IPv4 datagram (65507 bytes).
const RECV_BUFFER: usize = 65_536;

/// Allocation from which QUIC datagrams are cut (see
/// [`fragment::encode`]): one allocation serves ~45 full-size datagrams.
const ARENA: usize = 64 << 10;

/// Per-thread buffers of the flow tasks: one receive buffer per thread
/// rather than 64 KiB per flow.
struct Scratch {
    recv: Box<[u8]>,
    arena: BytesMut,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        recv: vec![0; RECV_BUFFER].into_boxed_slice(),
        arena: BytesMut::with_capacity(ARENA),
    });
}

/// Runs a flow until it is closed (its task is aborted). Should it end
/// otherwise (its socket failed, a bug panicked), the flow is closed too
/// (see [`TaskEnd`]), so it does not stay in the table forwarding nothing.
pub(crate) async fn run(flow: Arc<Flow>, udp: Arc<Udp>) {
    let _end = TaskEnd { flow: flow.clone(), udp: udp.clone() };
    forward(&flow, udp).await;
}

/// Closes its flow when the flow's task ends without the flow being
/// closed: the next `UdpFlow` for the pair then opens a working flow
/// instead of finding this one. A drop guard, so a panic counts too.
struct TaskEnd {
    flow: Arc<Flow>,
    udp: Arc<Udp>,
}

impl Drop for TaskEnd {
    fn drop(&mut self) {
        // A closed flow's task is aborted: nothing to do, and `close` may
        // still hold the table lock.
        if !self.flow.is_closed() {
            self.udp.task_ended(&self.flow, Instant::now());
        }
    }
}

/// Forwards the app's datagrams until the flow socket fails.
async fn forward(flow: &Flow, udp: Arc<Udp>) {
    let mut link = Link::new(udp, flow);
    // Set while datagrams wait for a connection.
    let mut waiting: Option<watch::Receiver<Option<quinn::Connection>>> = None;
    loop {
        let deadline = link.pending_since.map(|t| tokio::time::Instant::from_std(t + PENDING_TTL));
        tokio::select! {
            ready = flow.socket.readable() => {
                if let Err(e) = ready {
                    warn!("flow socket failed: {e}");
                    return;
                }
                SCRATCH.with_borrow_mut(|s| drain(flow, &mut link, s));
            }
            up = connection_changed(&mut waiting), if waiting.is_some() => match up {
                Some(conn) => {
                    waiting = None;
                    link.conn = Some(conn);
                    SCRATCH.with_borrow_mut(|s| link.flush(&mut s.arena));
                }
                None if waiting.as_ref().is_some_and(|w| w.has_changed().is_err()) => {
                    debug!("peer forgotten: dropping queued datagrams");
                    waiting = None;
                    link.drop_pending();
                }
                None => {}
            },
            _ = sleep_until(deadline), if deadline.is_some() => {
                debug!(queued = link.pending.len(), "no connection to the peer within {PENDING_TTL:?}: dropping queued datagrams");
                waiting = None;
                link.drop_pending();
            }
        }
        if !link.pending.is_empty() && waiting.is_none() {
            let mut watch = link.udp.peers.watch_connection(link.peer);
            // The connection may have come up before we watched: look once.
            watch.mark_changed();
            waiting = Some(watch);
        }
    }
}

/// Sleeps until `deadline` (forever without one).
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Waits for the watched connection to change: the new connection if it is
/// live, `None` if it is not or the watch ended.
async fn connection_changed(
    waiting: &mut Option<watch::Receiver<Option<quinn::Connection>>>,
) -> Option<quinn::Connection> {
    let w = waiting.as_mut()?;
    if w.changed().await.is_err() {
        return None;
    }
    w.borrow_and_update().as_ref().filter(|c| c.close_reason().is_none()).cloned()
}

/// Reads what the app sent, up to [`RECV_BATCH`] datagrams.
fn drain(flow: &Flow, link: &mut Link, scratch: &mut Scratch) {
    for _ in 0..RECV_BATCH {
        match flow.socket.try_recv_from(&mut scratch.recv) {
            Ok((len, from)) => {
                // The app's socket may be bound to the wildcard and send from
                // 127.0.0.1: only its port identifies it.
                if from.port() != flow.key.local_port {
                    trace!(%from, "dropped a datagram from another socket");
                    continue;
                }
                flow.touch(Instant::now());
                if let std::net::SocketAddr::V4(from) = from {
                    flow.app_sent_from(*from.ip());
                }
                link.send(&scratch.recv[..len], &mut scratch.arena);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => {
                debug!("reading the flow socket: {e}");
                return;
            }
        }
    }
}

/// Why a datagram was not handed to the connection.
#[derive(Debug, thiserror::Error)]
enum TransmitError {
    #[error("the peer does not accept QUIC datagrams")]
    Unsupported,
    #[error(transparent)]
    Split(#[from] SplitError),
    #[error("fragment larger than the path now carries")]
    TooLarge,
    #[error("connection lost")]
    Lost,
}

/// The way to the peer: the cached connection and the queue for when there
/// is none.
struct Link {
    udp: Arc<Udp>,
    peer: NodeId,
    src_port: u16,
    dst_port: u16,
    conn: Option<quinn::Connection>,
    pending: VecDeque<Bytes>,
    pending_bytes: usize,
    pending_since: Option<Instant>,
    warned_unsupported: bool,
    dropped: u64,
}

impl Link {
    fn new(udp: Arc<Udp>, flow: &Flow) -> Self {
        Self {
            udp,
            peer: flow.peer,
            src_port: flow.key.local_port,
            dst_port: flow.key.remote.port(),
            conn: None,
            pending: VecDeque::new(),
            pending_bytes: 0,
            pending_since: None,
            warned_unsupported: false,
            dropped: 0,
        }
    }

    /// Sends one app datagram, or queues it while there is no connection.
    fn send(&mut self, payload: &[u8], arena: &mut BytesMut) {
        if !self.pending.is_empty() {
            // Keep the order: the queue goes first, when the connection is up.
            return self.queue(payload);
        }
        for _ in 0..2 {
            let conn = match &self.conn {
                Some(c) => c,
                // Set up under the node's span: the connection outlives the flow.
                None => match self.udp.span.in_scope(|| self.udp.peers.connection_now(self.peer)) {
                    Some(c) => self.conn.insert(c),
                    None => return self.queue(payload),
                },
            };
            let base = UdpHeader { src_port: self.src_port, dst_port: self.dst_port, id: 0, index: 0, count: 0 };
            match transmit(conn, &self.udp, base, payload, arena) {
                Ok(()) => return,
                // Replaced by now, or being replaced: ask again once.
                Err(TransmitError::Lost) => self.conn = None,
                Err(TransmitError::Unsupported) => {
                    if !std::mem::replace(&mut self.warned_unsupported, true) {
                        warn!(peer = %self.peer, "the peer does not accept QUIC datagrams: overlay UDP to it is dropped");
                    }
                    return;
                }
                Err(e) => return debug!(len = payload.len(), "datagram dropped: {e}"),
            }
        }
        self.queue(payload);
    }

    /// Queues a datagram for the connection being set up, within the
    /// per-flow and node-wide bounds; drops it beyond them.
    fn queue(&mut self, payload: &[u8]) {
        let budget = &self.udp.pending_bytes;
        let fits = self.pending.len() < PENDING_DATAGRAMS
            && budget
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                    held.checked_add(payload.len()).filter(|&n| n <= PENDING_BYTES)
                })
                .is_ok();
        if !fits {
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                debug!(dropped = self.dropped, "waiting for the peer connection: queue full, datagram dropped");
            }
            return;
        }
        self.pending.push_back(Bytes::copy_from_slice(payload));
        self.pending_bytes += payload.len();
        self.pending_since.get_or_insert_with(Instant::now);
    }

    /// Sends what was queued, now that there is a connection.
    fn flush(&mut self, arena: &mut BytesMut) {
        let queued = self.take_pending();
        debug!(queued = queued.len(), "peer connection up: sending queued datagrams");
        for payload in queued {
            self.send(&payload, arena);
        }
    }

    fn drop_pending(&mut self) {
        self.take_pending();
    }

    fn take_pending(&mut self) -> VecDeque<Bytes> {
        self.udp.pending_bytes.fetch_sub(self.pending_bytes, Ordering::AcqRel);
        self.pending_bytes = 0;
        self.pending_since = None;
        std::mem::take(&mut self.pending)
    }
}

/// Cuts `payload` into QUIC datagrams for `conn`, with `base`'s ports and a
/// fresh id, and hands them over.
fn transmit(
    conn: &quinn::Connection,
    udp: &Udp,
    base: UdpHeader,
    payload: &[u8],
    arena: &mut BytesMut,
) -> Result<(), TransmitError> {
    let max = conn.max_datagram_size().ok_or(TransmitError::Unsupported)?;
    let split = fragment::split(payload.len(), max)?;
    let base = UdpHeader { id: udp.next_id.fetch_add(1, Ordering::Relaxed), ..base };
    for (header, part) in fragment::fragments(base, payload, split) {
        conn.send_datagram(fragment::encode(&header, part, arena)).map_err(|e| match e {
            SendDatagramError::UnsupportedByPeer | SendDatagramError::Disabled => TransmitError::Unsupported,
            SendDatagramError::TooLarge => TransmitError::TooLarge,
            SendDatagramError::ConnectionLost(_) => TransmitError::Lost,
        })?;
    }
    Ok(())
}

impl Drop for Link {
    fn drop(&mut self) {
        // The flow closed: give its share of the node-wide queue budget back.
        self.udp.pending_bytes.fetch_sub(self.pending_bytes, Ordering::AcqRel);
    }
}
