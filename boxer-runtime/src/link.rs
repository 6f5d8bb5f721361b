//! The node's link to the rendezvous: sends the node's messages, applies the
//! membership feed, and when the connection is lost (the rendezvous
//! restarted, or was unreachable) reconnects and rejoins as the same member.
//!
//! Nothing on the data plane waits for this: peer connections, the
//! program, names already known and the loopback proxies carry on while the
//! link is down. What needs the rendezvous meanwhile (a punch to a new
//! peer, relayed paths, new members) resumes when it is back. After a
//! rejoin the node sends again what matters: its listening ports and
//! addresses as they are now, its last state, every barrier wait not yet
//! answered, output produced while it was away (up to [`OUTPUT_BACKLOG`];
//! lines already written into the lost connection are gone), and its exit.
//! Reports of silent peers are not kept: by the time the link is back
//! they are about another time (and would remove a member that is only
//! slow to rejoin).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use boxer_net::NodeEndpoint;
use boxer_net::rendezvous::{self, RendezvousAddr, RendezvousError, Session, SessionReceiver, SessionSender};
use boxer_proto::control::{
    CloseCode, JoinRequest, LogLine, MAX_LOG_BATCH_BYTES, MAX_LOG_BATCH_LINES, NodeMessage, NodeState, ServerMessage,
};
use boxer_proto::membership::{MemberChange, MembershipSnapshot};
use boxer_proto::{Membership, NodeId};
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, debug, info, warn};

use crate::node::{NodeError, Shared};

/// First wait before reconnecting. Short: a restarted rendezvous is usually
/// back within a second or two.
pub const RECONNECT_FIRST: Duration = Duration::from_millis(200);

/// Longest wait between reconnection attempts. The wait doubles up to this;
/// it bounds how long a node stays away after the rendezvous is back, and
/// must stay well inside the rendezvous' grace for away members (60 s).
pub const RECONNECT_CAP: Duration = Duration::from_secs(5);

/// A rendezvous unreachable this long is taken as gone for good and the
/// node ends (its programs could not be joined by anyone new, and nothing
/// would ever end the node otherwise). Far beyond a restart, or the
/// rendezvous' own 60 s grace for members that cannot reach it.
pub const RECONNECT_GIVE_UP: Duration = Duration::from_secs(600);

/// While reconnecting, a reminder is logged this often.
pub const STILL_RECONNECTING: Duration = Duration::from_secs(30);

/// Output kept while the rendezvous is unreachable, in bytes; older lines
/// are dropped beyond it (and counted). The node's program never waits for
/// the rendezvous, so its output cannot be held without bound.
pub const OUTPUT_BACKLOG: usize = 1 << 20;

/// Everything needed to join again.
#[derive(Debug)]
pub(crate) struct Rejoin {
    /// The node's endpoint (its certificate proves who it is).
    pub endpoint: NodeEndpoint,
    /// Where the rendezvous is.
    pub rendezvous: RendezvousAddr,
    /// The first join request; `rejoin`, ports and addresses are updated.
    pub request: JoinRequest,
    /// The address the node's socket is bound to (for its candidates).
    pub bound: SocketAddr,
}

/// What a kept output line costs beyond its text (the `LogLine` and the
/// queue slot), so that empty lines are counted too.
const LINE_OVERHEAD: usize = 48;

/// Messages kept for the next session (barrier waits are kept by the node
/// until answered, see `Shared::pending_barriers`).
#[derive(Debug, Default)]
struct Backlog {
    /// The last state sent.
    state: Option<NodeState>,
    /// The program's exit, once reported.
    exited: Option<NodeMessage>,
    /// Output not yet sent, oldest first.
    lines: VecDeque<LogLine>,
    /// Its size in bytes (text plus [`LINE_OVERHEAD`] a line).
    line_bytes: usize,
    /// Lines dropped since the link went down.
    dropped: u64,
}

impl Backlog {
    /// Notes a message sent (or to be sent) so it can be replayed.
    fn remember(&mut self, msg: &NodeMessage) {
        match msg {
            NodeMessage::State(state) => self.state = Some(state.clone()),
            NodeMessage::Exited(_) => self.exited = Some(msg.clone()),
            _ => {}
        }
    }

    /// Keeps a message that came while the link is down.
    fn hold(&mut self, msg: NodeMessage) {
        match msg {
            NodeMessage::Logs(lines) => {
                for line in lines {
                    self.line_bytes += line.text.len() + LINE_OVERHEAD;
                    self.lines.push_back(line);
                }
                while self.line_bytes > OUTPUT_BACKLOG {
                    let Some(old) = self.lines.pop_front() else { break };
                    self.line_bytes -= old.text.len() + LINE_OVERHEAD;
                    self.dropped += 1;
                }
            }
            // Sent again after the rejoin as they are then (ports,
            // addresses, barrier waits), refreshed by their senders
            // (paths), or about another time by then (punches, silent
            // peers).
            NodeMessage::Listening(_)
            | NodeMessage::Addresses(_)
            | NodeMessage::Paths(_)
            | NodeMessage::Punch { .. }
            | NodeMessage::PeerLost { .. }
            | NodeMessage::Wait { .. } => {}
            other => self.remember(&other),
        }
    }

    /// What to send on a new session, in order.
    fn replay(&mut self, shared: &Shared, bound: SocketAddr) -> Vec<NodeMessage> {
        // Ports and addresses as they are now: they may have changed while
        // the rejoin was under way (the rendezvous ignores what did not).
        let mut out: Vec<NodeMessage> = vec![
            NodeMessage::Listening(shared.listening_ports()),
            NodeMessage::Addresses(crate::interfaces::candidates(bound)),
        ];
        if let Some(state) = &self.state {
            out.push(NodeMessage::State(state.clone()));
        }
        out.extend(
            shared
                .pending_barriers()
                .into_iter()
                .map(|(request_id, barrier)| NodeMessage::Wait { request_id, barrier }),
        );
        let mut batch = Vec::new();
        let mut bytes = 0;
        for line in self.lines.drain(..) {
            if batch.len() == MAX_LOG_BATCH_LINES || bytes + line.text.len() > MAX_LOG_BATCH_BYTES {
                out.push(NodeMessage::Logs(std::mem::take(&mut batch)));
                bytes = 0;
            }
            bytes += line.text.len();
            batch.push(line);
        }
        if !batch.is_empty() {
            out.push(NodeMessage::Logs(batch));
        }
        self.line_bytes = 0;
        if self.dropped > 0 {
            warn!(lines = self.dropped, "output lines dropped while the rendezvous was unreachable");
            self.dropped = 0;
        }
        out.extend(self.exited.clone());
        out
    }
}

/// Whether a lost session is worth reconnecting: not when the rendezvous
/// refused us (the cluster was deleted, our place is gone) or speaks
/// another version, nor when the node is leaving and the rendezvous closed
/// the connection in order (its exit was recorded). A leaving node whose
/// connection was lost reconnects and reports its exit again.
fn worth_reconnecting(e: &NodeError, leaving: bool) -> bool {
    if leaving && matches!(e, NodeError::Rendezvous(RendezvousError::Closed { .. })) {
        return false;
    }
    match e {
        NodeError::Rendezvous(RendezvousError::Refused { .. } | RendezvousError::Hello { .. }) => false,
        // We closed it: the node is shutting down.
        NodeError::Rendezvous(RendezvousError::Connection {
            source: quinn::ConnectionError::LocallyClosed, ..
        }) => false,
        NodeError::Rendezvous(_) | NodeError::Feed(_) => true,
        _ => false,
    }
}

/// Runs the link until the node fails or stops; `fail` ends the node.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut session: Session,
    mut outbound: mpsc::Receiver<NodeMessage>,
    membership: watch::Sender<Membership>,
    rejoin: Rejoin,
    fail: impl Fn(NodeError),
) {
    let mut backlog = Backlog::default();
    let mut replay = Vec::new();
    loop {
        let conn = session.connection().clone();
        let (mut sender, receiver) = session.split();
        let relay = {
            let (conn, socket) = (conn.clone(), rejoin.endpoint.socket().clone());
            tokio::spawn(
                async move {
                    if let Err(e) = boxer_net::relay::attach(&conn, &socket).await {
                        warn!("no relay: peers without a direct path are unreachable: {e}");
                    }
                }
                .in_current_span(),
            )
        };
        let mut feed = tokio::spawn(feed_loop(shared.clone(), receiver, membership.clone()).in_current_span());
        let ended = tokio::select! {
            e = send_loop(&mut sender, &mut outbound, &mut backlog, std::mem::take(&mut replay)) => e,
            e = &mut feed => e.unwrap_or_else(|e| NodeError::Feed(format!("feed task failed: {e}"))),
        };
        feed.abort();
        relay.abort();
        // Not a departure: the rendezvous keeps the member's place.
        conn.close(CloseCode::Reconnecting.code().into(), b"reconnecting");
        if !worth_reconnecting(&ended, shared.leaving.load(Ordering::Relaxed)) {
            return fail(ended);
        }
        let lost_at = Instant::now();
        warn!(
            "lost the rendezvous {}: {ended}; reconnecting (peer connections and the program carry on)",
            rejoin.rendezvous.addr
        );
        session = match reconnect(&shared, &rejoin, &mut outbound, &mut backlog).await {
            Ok((joined, session)) => {
                reconcile(&shared, &membership, joined.snapshot);
                // As on the feed's events and snapshots: punches deferred
                // until a peer is known go on for peers that joined meanwhile.
                shared.pathfinder().members_changed();
                info!(after = ?lost_at.elapsed(), "rejoined the cluster as the same member");
                session
            }
            Err(e) => return fail(e),
        };
        replay = backlog.replay(&shared, rejoin.bound);
    }
}

/// Joins again with back-off until the rendezvous takes the node back or
/// refuses it, keeping what the node sends meanwhile.
async fn reconnect(
    shared: &Shared,
    rejoin: &Rejoin,
    outbound: &mut mpsc::Receiver<NodeMessage>,
    backlog: &mut Backlog,
) -> Result<(boxer_proto::control::Joined, Session), NodeError> {
    let started = Instant::now();
    let mut reminded = started;
    let mut wait = RECONNECT_FIRST;
    loop {
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                msg = outbound.recv() => match msg {
                    Some(msg) => backlog.hold(msg),
                    None => return Err(NodeError::Stopped),
                },
            }
        }
        let request = JoinRequest {
            rejoin: Some(shared.joined.node_id),
            listening: shared.listening_ports(),
            local: crate::interfaces::candidates(rejoin.bound),
            ..rejoin.request.clone()
        };
        let attempt = rendezvous::join(&rejoin.endpoint, rejoin.rendezvous, request);
        tokio::pin!(attempt);
        // Keep draining while the attempt runs (it can take the handshake
        // timeout when the rendezvous is unreachable).
        let result = loop {
            tokio::select! {
                r = &mut attempt => break r,
                msg = outbound.recv() => match msg {
                    Some(msg) => backlog.hold(msg),
                    None => return Err(NodeError::Stopped),
                },
            }
        };
        match result {
            Ok((joined, session)) => {
                if joined.node_id != shared.joined.node_id || joined.overlay_ip != shared.joined.overlay_ip {
                    // The rendezvous must never do this; a node under
                    // another address would break every program's sockets.
                    return Err(NodeError::Feed(format!(
                        "the rendezvous took the node back as {} ({}) instead of {} ({})",
                        joined.node_id, joined.overlay_ip, shared.joined.node_id, shared.joined.overlay_ip
                    )));
                }
                return Ok((joined, session));
            }
            Err(e) => {
                let e = NodeError::Rendezvous(e);
                if !worth_reconnecting(&e, false) {
                    return Err(e);
                }
                debug!(?wait, "rejoin failed: {e}");
                if started.elapsed() >= RECONNECT_GIVE_UP {
                    warn!("the rendezvous has been unreachable for {RECONNECT_GIVE_UP:?}: giving up");
                    return Err(e);
                }
                if reminded.elapsed() >= STILL_RECONNECTING {
                    reminded = Instant::now();
                    warn!(for_ = ?started.elapsed(), "still reconnecting to the rendezvous: {e}");
                }
            }
        }
        wait = (wait * 2).min(RECONNECT_CAP);
    }
}

/// Makes the node's view of the membership `snapshot`: peers no longer in
/// it are forgotten (their connections closed), like on a `Left` event.
fn reconcile(shared: &Shared, membership: &watch::Sender<Membership>, snapshot: MembershipSnapshot) {
    let cluster = membership.borrow().cluster().to_owned();
    let fresh = Membership::from_snapshot(&cluster, snapshot);
    let gone: Vec<NodeId> =
        membership.borrow().members().map(|m| m.node_id).filter(|&id| fresh.get(id).is_none()).collect();
    for peer in gone {
        info!(%peer, "member left while the rendezvous was unreachable");
        shared.peers.forget(peer);
        shared.udp.peer_left(peer);
    }
    membership.send_replace(fresh);
}

/// Sends `first`, then the node's messages, until the session fails.
async fn send_loop(
    sender: &mut SessionSender,
    rx: &mut mpsc::Receiver<NodeMessage>,
    backlog: &mut Backlog,
    first: Vec<NodeMessage>,
) -> NodeError {
    let mut first = first.into_iter();
    let mut next: Option<NodeMessage> = None;
    loop {
        let msg = match first.next().or_else(|| next.take()) {
            Some(m) => m,
            None => match rx.recv().await {
                Some(m) => m,
                None => return NodeError::Stopped,
            },
        };
        let mut msg = msg;
        // Merge log lines already queued into one message, within the
        // server's batch limits (lines arrive one by one, each <= MAX_LOG_LINE).
        if let NodeMessage::Logs(lines) = &mut msg {
            let mut bytes: usize = lines.iter().map(|l| l.text.len()).sum();
            while lines.len() < MAX_LOG_BATCH_LINES {
                match rx.try_recv() {
                    Ok(NodeMessage::Logs(more)) => {
                        let more_bytes: usize = more.iter().map(|l| l.text.len()).sum();
                        if bytes + more_bytes > MAX_LOG_BATCH_BYTES || lines.len() + more.len() > MAX_LOG_BATCH_LINES {
                            next = Some(NodeMessage::Logs(more));
                            break;
                        }
                        bytes += more_bytes;
                        lines.extend(more);
                    }
                    Ok(other) => {
                        // Recorded now: a cancelled send loop drops `next`.
                        backlog.remember(&other);
                        next = Some(other);
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        backlog.remember(&msg);
        if let Err(e) = sender.send(&msg).await {
            // Lines that did not make it go with the next session.
            backlog.hold(msg);
            if let Some(m) = next.take() {
                backlog.hold(m);
            }
            return e.into();
        }
    }
}

/// Applies the membership feed until the session fails.
async fn feed_loop(
    shared: Arc<Shared>,
    mut receiver: SessionReceiver,
    membership: watch::Sender<Membership>,
) -> NodeError {
    loop {
        let msg = match receiver.next().await {
            Ok(m) => m,
            Err(e) => return e.into(),
        };
        match msg {
            ServerMessage::Event(event) => {
                let mut moved = None;
                match &event.change {
                    MemberChange::Joined(m) => {
                        info!(peer = %m.node_id, name = %m.replica_name(), ip = %m.overlay_ip, "member joined")
                    }
                    MemberChange::Left { node_id } => {
                        info!(peer = %node_id, "member left");
                        shared.peers.forget(*node_id);
                        shared.udp.peer_left(*node_id);
                    }
                    MemberChange::Listening { node_id, ports } => debug!(peer = %node_id, ?ports, "listening"),
                    MemberChange::Addresses { node_id, .. } => {
                        debug!(peer = %node_id, "addresses changed");
                        // Applied below first, so the punch sees the new candidates.
                        moved = Some(*node_id);
                    }
                }
                let mut result = Ok(());
                membership.send_modify(|m| result = m.apply(event));
                if let Err(e) = result {
                    return NodeError::Feed(e.to_string());
                }
                if let Some(peer) = moved {
                    shared.pathfinder().peer_moved(peer);
                }
                shared.pathfinder().members_changed();
            }
            ServerMessage::Snapshot(snapshot) => {
                warn!("fell behind the membership feed; resynchronised from a snapshot");
                reconcile(&shared, &membership, snapshot);
                shared.pathfinder().members_changed();
            }
            ServerMessage::Punch { peer } => shared.pathfinder().start_punch(peer),
            ServerMessage::Away { peer } => {
                debug!(%peer, "member lost its rendezvous connection; checking it is alive");
                shared.pathfinder().check_alive(peer);
            }
            ServerMessage::BarrierReached { request_id } => shared.barrier_reached(request_id),
            ServerMessage::Stop => {
                info!("the cluster's owner asked this node to stop");
                shared.request_stop();
            }
            other => return NodeError::Feed(format!("unexpected message {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use boxer_proto::control::Stream;

    fn line(text: &str) -> LogLine {
        LogLine { stream: Stream::Stdout, text: text.into() }
    }

    #[test]
    fn the_backlog_keeps_what_matters_and_bounds_output() {
        let mut b = Backlog::default();
        b.remember(&NodeMessage::State(NodeState::Running));
        b.hold(NodeMessage::Punch { peer: NodeId(3) });
        b.hold(NodeMessage::Listening(vec![80]));
        b.hold(NodeMessage::PeerLost { peer: NodeId(4) });
        let big = "x".repeat(MAX_LOG_BATCH_BYTES / 2);
        let fit = OUTPUT_BACKLOG / (big.len() + LINE_OVERHEAD);
        for _ in 0..(fit + 3) {
            b.hold(NodeMessage::Logs(vec![line(&big)]));
        }
        assert!(b.line_bytes <= OUTPUT_BACKLOG);
        assert_eq!(b.dropped, 3, "the oldest lines go first");
        // Empty lines count too: the backlog's memory stays bounded.
        for _ in 0..100_000 {
            b.hold(NodeMessage::Logs(vec![line("")]));
        }
        assert!(b.lines.len() <= OUTPUT_BACKLOG / LINE_OVERHEAD);
        b.hold(NodeMessage::Exited(boxer_proto::control::ExitStatus { code: 3 }));
        assert!(b.state.is_some() && b.exited.is_some());
    }

    #[test]
    fn refusals_and_leaving_end_the_node_losses_do_not() {
        let lost = NodeError::Rendezvous(RendezvousError::Timeout { addr: "192.0.2.1:4740".parse().unwrap() });
        assert!(worth_reconnecting(&lost, false));
        assert!(worth_reconnecting(&lost, true), "a leaving node reports its exit again");
        let closed = NodeError::Rendezvous(RendezvousError::Closed { reason: "rendezvous shutting down".into() });
        assert!(worth_reconnecting(&closed, false));
        let recorded = NodeError::Rendezvous(RendezvousError::Closed { reason: "exit recorded".into() });
        assert!(!worth_reconnecting(&recorded, true), "a node whose exit was recorded is done");
        let deleted = NodeError::Rendezvous(RendezvousError::Refused { code: 10, reason: "deleted".into() });
        assert!(!worth_reconnecting(&deleted, false));
        assert!(!worth_reconnecting(&NodeError::Stopped, false));
        let shut = NodeError::Rendezvous(RendezvousError::Connection {
            addr: "192.0.2.1:4740".parse().unwrap(),
            source: quinn::ConnectionError::LocallyClosed,
        });
        assert!(!worth_reconnecting(&shut, false), "a node shutting down does not reconnect");
    }
}
