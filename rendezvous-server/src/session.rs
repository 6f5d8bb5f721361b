//! One client connection: hello, one request, and for members the membership
//! feed until the connection ends.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use boxer_net::tls::peer_fingerprint;
use boxer_proto::control::{Barrier, CloseCode, JoinRequest, NodeMessage, Request, ServerMessage, WatchRequest};
use boxer_proto::membership::{MembershipEvent, MembershipSnapshot};
use boxer_proto::{FrameError, Hello, Membership, NodeId, frame, names};
use tokio::sync::{broadcast, mpsc};
use tracing::{Instrument, Span, debug, info, warn};

use crate::limits::{Limits, TokenBucket};
use crate::logstore::LogStore;
use crate::registry::{Departure, Feed, LeaveOutcome, Mailbox, NodeOutput, Refusal, Registry};
use crate::relay;

/// Time a client has from connecting to sending its request. A request is
/// two frames in one packet; a slower client is broken or hostile.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Barrier waits a node may have outstanding at once.
pub const MAX_PENDING_BARRIERS: usize = 64;

/// Messages from a node buffered before the session applies them.
const NODE_MESSAGE_BUFFER: usize = 16;

/// State changes one node may send in its life. An honest node sends one per
/// `wait_for` target it waits on, then `Running` or `GaveUp`; this is far
/// above any spec and bounds what one member can put on its cluster's
/// watcher queues (which also carry the exit reports).
pub const MAX_STATE_CHANGES: u32 = 1024;

pub(crate) type Shared = Arc<Mutex<Registry>>;

pub(crate) fn lock(registry: &Shared) -> std::sync::MutexGuard<'_, Registry> {
    // A panic while holding the lock would be a bug in the registry's pure
    // code; keep serving rather than poisoning every later connection.
    registry.lock().unwrap_or_else(|e| e.into_inner())
}

fn refuse(conn: &quinn::Connection, refusal: &Refusal) {
    info!(code = ?refusal.code, "refused: {}", refusal.reason);
    conn.close(refusal.code.code().into(), refusal.reason.as_bytes());
}

fn protocol_error(conn: &quinn::Connection, what: &str, e: &FrameError) {
    let reason = format!("{what}: {e}");
    warn!("closing: {reason}");
    conn.close(CloseCode::Protocol.code().into(), reason.as_bytes());
}

/// Longest a join waits for its admission to be saved before it is answered
/// anyway (a stuck disk must not stop admissions; the failure is logged).
pub const SAVE_WAIT: Duration = Duration::from_secs(5);

/// Versions of the registry written to disk so far (see
/// [`crate::registry::Registry::version`]); `None` when nothing is saved.
pub(crate) type Saved = Option<tokio::sync::watch::Receiver<u64>>;

/// Waits until version `version` of the registry is on disk, so that an
/// answered join survives a crash of the rendezvous.
async fn saved_up_to(saved: &Saved, version: u64) {
    if let Some(saved) = saved {
        let mut saved = saved.clone();
        if tokio::time::timeout(SAVE_WAIT, saved.wait_for(|&v| v >= version)).await.is_err() {
            warn!("admission not saved within {SAVE_WAIT:?}; answering anyway");
        }
    }
}

/// How a member's connection ended, for [`crate::registry::Registry::leave`]:
/// only a connection that went silent (or was reset), or that its runtime
/// closed to reconnect at once, may come back; every other close, by either
/// side, is a departure.
fn departure(conn: &quinn::Connection) -> Departure {
    match conn.close_reason() {
        Some(quinn::ConnectionError::TimedOut | quinn::ConnectionError::Reset) => Departure::Lost,
        Some(quinn::ConnectionError::ApplicationClosed(c))
            if c.error_code == quinn::VarInt::from_u32(CloseCode::Reconnecting.code()) =>
        {
            Departure::Lost
        }
        _ => Departure::Left,
    }
}

/// Serves one connection to completion.
pub async fn serve(registry: Shared, logs: LogStore, saved: Saved, limits: Limits, incoming: quinn::Incoming) {
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            debug!("handshake failed: {e}");
            return;
        }
    };
    let Some(fingerprint) = peer_fingerprint(&conn) else {
        conn.close(CloseCode::Protocol.code().into(), b"a client certificate is required");
        return;
    };
    let opened = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| FrameError::Io(e.into()))?;
        // Our hello goes first so a client of another version learns ours.
        frame::write(&mut send, &Hello::current()).await?;
        let hello: Hello = frame::read(&mut recv).await?;
        Ok::<_, FrameError>((send, recv, hello))
    })
    .await;
    let (mut send, mut recv, hello) = match opened {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return protocol_error(&conn, "bad hello", &e),
        Err(_) => return refuse(&conn, &timeout_refusal()),
    };
    if let Err(e) = hello.check() {
        let code = match e {
            boxer_proto::hello::HelloError::VersionMismatch { .. } => CloseCode::Version,
            boxer_proto::hello::HelloError::BadMagic(_) => CloseCode::Protocol,
        };
        return refuse(&conn, &Refusal { code, reason: format!("client: {e}") });
    }
    let request: Request = match tokio::time::timeout(REQUEST_TIMEOUT, frame::read(&mut recv)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return protocol_error(&conn, "bad request", &e),
        Err(_) => return refuse(&conn, &timeout_refusal()),
    };
    let remote = conn.remote_address();
    match request {
        Request::Join(req) => {
            // One lock for the admission and its mailbox, so no other
            // session of the member can come between them.
            let admitted = {
                let mut registry = lock(&registry);
                registry.join(req.clone(), fingerprint, remote).map(|(joined, feed)| {
                    let mailbox = registry.open_mailbox(&req.cluster, joined.node_id);
                    (joined, feed, mailbox, registry.version())
                })
            };
            match admitted {
                Ok((joined, feed, Some(mailbox), version)) => {
                    let node = joined.node_id;
                    Span::current().record("node", tracing::field::display(node));
                    let how = if req.rejoin.is_some() { "rejoined" } else { "joined" };
                    info!(%node, ip = %joined.overlay_ip, service = %req.service, index = req.index, "{how}");
                    let session = mailbox.session;
                    saved_up_to(&saved, version).await;
                    let mut answer = ServerMessage::Joined(joined);
                    if frame::write(&mut send, &answer).await.is_ok()
                        && let ServerMessage::Joined(joined) = &mut answer
                    {
                        // Sent: the session takes the answer's snapshot rather
                        // than a copy (a copy clones every member).
                        let snapshot = std::mem::take(&mut joined.snapshot);
                        let log = logs.open_async(&req.cluster, &names::replica_name(&req.service, req.index)).await;
                        let member = MemberSession { registry: &registry, conn: &conn, req: &req, node, limits };
                        member.run(snapshot, feed, mailbox, send, recv, log).await;
                    }
                    let departure = departure(&conn);
                    let outcome =
                        lock(&registry).leave(&req.cluster, node, session, departure, std::time::Instant::now());
                    match outcome {
                        LeaveOutcome::Removed => info!(%node, "left"),
                        LeaveOutcome::Away => info!(
                            %node,
                            "connection lost; keeping its place for {:?} while it reconnects",
                            crate::registry::AWAY_GRACE
                        ),
                        LeaveOutcome::Unchanged => debug!(%node, ?departure, "session ended"),
                    }
                }
                // Deleted between the join and the mailbox: nothing to serve.
                Ok((_, _, None, _)) => {
                    refuse(&conn, &Refusal { code: CloseCode::UnknownCluster, reason: "cluster deleted".into() })
                }
                Err(r) => {
                    if r.code == CloseCode::Unauthorized {
                        warn!(cluster = %req.cluster, service = %req.service, index = req.index, "refused: {}", r.reason);
                    }
                    refuse(&conn, &r)
                }
            }
        }
        Request::Watch(req) => {
            let watched = lock(&registry).watch(&req);
            match watched {
                Ok((snapshot, feed)) => watch_session(&registry, &conn, &req, snapshot, feed, send).await,
                Err(r) => refuse(&conn, &r),
            }
        }
        Request::CreateCluster(req) => {
            let created = lock(&registry).create_cluster(req);
            match created {
                Ok(info) => {
                    info!(cluster = %info.name, network = %info.network, "cluster created");
                    answer_and_wait(&conn, send, ServerMessage::ClusterCreated(info)).await;
                }
                Err(r) => refuse(&conn, &r),
            }
        }
        Request::DeleteCluster(req) => {
            let deleted = lock(&registry).delete_cluster(&req.admin_token, &req.name);
            match deleted {
                Ok(()) => {
                    info!(cluster = %req.name, "cluster deleted");
                    answer_and_wait(&conn, send, ServerMessage::ClusterDeleted { name: req.name }).await;
                }
                Err(r) => refuse(&conn, &r),
            }
        }
        Request::StopMember(req) => {
            let told = lock(&registry).stop_member(&req.admin_token, &req.cluster, &req.node);
            match told {
                Ok(node) => {
                    info!(cluster = %req.cluster, %node, name = %req.node, "member told to stop");
                    answer_and_wait(&conn, send, ServerMessage::MemberStopping { node: req.node }).await;
                }
                Err(r) => refuse(&conn, &r),
            }
        }
    }
}

fn timeout_refusal() -> Refusal {
    Refusal { code: CloseCode::Timeout, reason: format!("no request within {REQUEST_TIMEOUT:?}") }
}

/// Sends a single answer and lets the client close (so the answer is not
/// discarded by an early close on our side).
async fn answer_and_wait(conn: &quinn::Connection, mut send: quinn::SendStream, answer: ServerMessage) {
    if frame::write(&mut send, &answer).await.is_ok() {
        let _ = send.finish();
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, conn.closed()).await;
    }
}

/// Forwards feed events; on lag, sends a fresh snapshot. Returns `false` when
/// the session must end.
async fn forward(
    registry: &Shared,
    cluster: &str,
    feed: &mut Feed,
    received: Result<MembershipEvent, broadcast::error::RecvError>,
    send: &mut quinn::SendStream,
    membership: &mut Membership,
) -> bool {
    let msg = match received {
        Ok(event) => {
            if membership.apply(event.clone()).is_err() {
                return false;
            }
            ServerMessage::Event(event)
        }
        Err(broadcast::error::RecvError::Lagged(n)) => {
            debug!(skipped = n, "subscriber lagged, resending snapshot");
            let Some((snapshot, fresh)) = lock(registry).resync(cluster) else { return false };
            feed.events = fresh.events;
            *membership = Membership::from_snapshot(cluster, snapshot.clone());
            ServerMessage::Snapshot(snapshot)
        }
        Err(broadcast::error::RecvError::Closed) => return false,
    };
    frame::write(send, &msg).await.is_ok()
}

fn holds(barrier: &Barrier, membership: &Membership) -> bool {
    match barrier {
        Barrier::Count(n) => membership.len() >= *n as usize,
        Barrier::Names(names) => names.iter().all(|n| membership.resolve(n).is_some_and(|m| !m.is_empty())),
    }
}

/// A member's connection: whom it belongs to.
struct MemberSession<'a> {
    registry: &'a Shared,
    conn: &'a quinn::Connection,
    req: &'a JoinRequest,
    node: NodeId,
    limits: Limits,
}

impl MemberSession<'_> {
    async fn run(
        self,
        snapshot: MembershipSnapshot,
        mut feed: Feed,
        mailbox: Mailbox,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        mut log: crate::logstore::NodeLog,
    ) {
        let Self { registry, conn, req, node, limits } = self;
        let Mailbox {
            punch: mut punches,
            away: mut aways,
            relay: relay_inbox,
            stop: mut stops,
            session: _,
            mut superseded,
        } = mailbox;
        let relay = tokio::spawn(
            relay::serve(registry.clone(), conn.clone(), req.cluster.clone(), node, relay_inbox, limits)
                .in_current_span(),
        );
        let mut punch_budget = TokenBucket::new(PUNCH_RATE, PUNCH_BURST, std::time::Instant::now());
        let mut log_budget = TokenBucket::new(limits.log_bytes_per_sec, limits.log_burst, std::time::Instant::now());
        let mut lines_dropped: u64 = 0;
        let mut reflexive = conn.remote_address();
        let mut address_check = tokio::time::interval(ADDRESS_CHECK);
        let cluster = req.cluster.as_str();
        let node_name = names::replica_name(&req.service, req.index);
        let mut membership = Membership::from_snapshot(cluster, snapshot);
        // Frame reads are not cancel-safe, so a task reads and the loop selects.
        let (tx, mut node_messages) = mpsc::channel::<Result<NodeMessage, FrameError>>(NODE_MESSAGE_BUFFER);
        let reader = tokio::spawn(async move {
            loop {
                let msg = frame::read_opt::<NodeMessage, _>(&mut recv).await.transpose().map(|m| {
                    m.and_then(|m| match m.check_limits() {
                        Ok(()) => Ok(m),
                        Err(why) => Err(FrameError::Encode(why)),
                    })
                });
                let end = !matches!(msg, Some(Ok(_)));
                if let Some(msg) = msg
                    && tx.send(msg).await.is_err()
                {
                    return;
                }
                if end {
                    return;
                }
            }
        });
        let mut pending: Vec<(u32, Barrier)> = Vec::new();
        let mut state_changes = 0u32;
        loop {
            tokio::select! {
                // The node's own messages first: its last log lines and exit
                // report must be recorded before a close or deletion ends this.
                biased;
                msg = node_messages.recv() => {
                    let msg = match msg {
                        Some(Ok(m)) => m,
                        Some(Err(FrameError::Encode(why))) => {
                            refuse(conn, &Refusal { code: CloseCode::Invalid, reason: why });
                            break;
                        }
                        Some(Err(e)) => {
                            if conn.close_reason().is_none() {
                                protocol_error(conn, "bad node message", &e);
                            }
                            break;
                        }
                        None => break,
                    };
                    let result = match msg {
                        NodeMessage::Listening(ports) => lock(registry).set_listening(cluster, node, ports),
                        NodeMessage::Addresses(local) => lock(registry).set_addresses(cluster, node, local),
                        NodeMessage::Logs(mut lines) => {
                            let bytes: usize = lines.iter().map(|l| l.text.len() + 1).sum();
                            if log_budget.take(bytes as f64, std::time::Instant::now()) {
                                if lines_dropped > 0 {
                                    lines.insert(0, dropped_lines_note(lines_dropped, limits.log_bytes_per_sec));
                                    lines_dropped = 0;
                                }
                                log.append(&lines);
                                lock(registry).publish_output(cluster, NodeOutput::Lines { node: node_name.clone(), lines });
                            } else {
                                if lines_dropped == 0 {
                                    warn!(%node, "output over {} bytes/s: dropping lines", limits.log_bytes_per_sec);
                                }
                                lines_dropped += lines.len() as u64;
                            }
                            Ok(())
                        }
                        NodeMessage::Exited(status) => {
                            info!(%node, code = status.code, "program exited");
                            if lines_dropped > 0 {
                                let note = vec![dropped_lines_note(lines_dropped, limits.log_bytes_per_sec)];
                                log.append(&note);
                                lock(registry).publish_output(cluster, NodeOutput::Lines { node: node_name.clone(), lines: note });
                            }
                            log.exited(status);
                            lock(registry).publish_output(cluster, NodeOutput::Exited { node: node_name.clone(), status });
                            conn.close(CloseCode::Normal.code().into(), b"exit recorded");
                            break;
                        }
                        NodeMessage::Punch { peer } => {
                            if punch_budget.take(1.0, std::time::Instant::now()) {
                                lock(registry).punch(cluster, node, peer)
                            } else {
                                debug!(%peer, "punch request over the rate limit dropped");
                                Ok(())
                            }
                        }
                        NodeMessage::PeerLost { peer } => {
                            if lock(registry).peer_lost(cluster, node, peer, std::time::Instant::now()) {
                                info!(%peer, reporter = %node, "away member reported silent by a peer: removed");
                            } else {
                                debug!(%peer, "peer reported silent");
                            }
                            Ok(())
                        }
                        NodeMessage::Paths(paths) => {
                            lock(registry).publish_output(cluster, NodeOutput::Paths { node: node_name.clone(), paths });
                            Ok(())
                        }
                        NodeMessage::State(state) => {
                            state_changes += 1;
                            if state_changes > MAX_STATE_CHANGES {
                                Err(Refusal { code: CloseCode::Invalid, reason: format!("more than {MAX_STATE_CHANGES} state changes") })
                            } else {
                                debug!(%node, %state, "state");
                                lock(registry).set_state(cluster, node, &node_name, state);
                                Ok(())
                            }
                        }
                        NodeMessage::Wait { request_id, barrier } => {
                            if pending.len() >= MAX_PENDING_BARRIERS {
                                Err(Refusal { code: CloseCode::Capacity, reason: format!("more than {MAX_PENDING_BARRIERS} pending barrier waits") })
                            } else {
                                pending.push((request_id, barrier));
                                Ok(())
                            }
                        }
                    };
                    if let Err(r) = result {
                        refuse(conn, &r);
                        break;
                    }
                }
                received = feed.events.recv() => {
                    if !forward(registry, cluster, &mut feed, received, &mut send, &mut membership).await {
                        break;
                    }
                }
                Some(peer) = punches.recv() => {
                    if frame::write(&mut send, &ServerMessage::Punch { peer }).await.is_err() {
                        break;
                    }
                }
                Some(peer) = aways.recv() => {
                    if frame::write(&mut send, &ServerMessage::Away { peer }).await.is_err() {
                        break;
                    }
                }
                // The member stops its program and reports its exit on
                // this session, which then ends as any exit does.
                Some(()) = stops.recv() => {
                    if frame::write(&mut send, &ServerMessage::Stop).await.is_err() {
                        break;
                    }
                }
                _ = address_check.tick() => {
                    // The node's NAT mapping changed (QUIC followed the migration).
                    let now = conn.remote_address();
                    if now != reflexive {
                        info!(%node, from = %reflexive, to = %now, "reflexive address changed");
                        reflexive = now;
                        lock(registry).set_reflexive(cluster, node, now);
                    }
                }
                _ = feed.deleted.changed() => {
                    refuse(conn, &Refusal { code: CloseCode::ClusterDeleted, reason: format!("cluster {cluster:?} was deleted") });
                    break;
                }
                _ = &mut superseded => {
                    conn.close(CloseCode::Normal.code().into(), b"superseded by a newer connection of this node");
                    break;
                }
                _ = conn.closed() => break,
            }
            // Answer every barrier that now holds.
            let mut i = 0;
            while i < pending.len() {
                if holds(&pending[i].1, &membership) {
                    let (request_id, _) = pending.swap_remove(i);
                    if frame::write(&mut send, &ServerMessage::BarrierReached { request_id }).await.is_err() {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        }
        // The feeds end with a deleted cluster too, maybe before the
        // deletion's own branch ran: say it, or the node would take the
        // dropped connection for a lost one and try to come back.
        if *feed.deleted.borrow() && conn.close_reason().is_none() {
            refuse(
                conn,
                &Refusal { code: CloseCode::ClusterDeleted, reason: format!("cluster {cluster:?} was deleted") },
            );
        }
        reader.abort();
        relay.abort();
    }
}

/// Punch requests a node may make per second, sustained. A punch makes two
/// nodes send a few dozen probes; this bounds what one member can make
/// others send.
pub const PUNCH_RATE: f64 = 20.0;

/// Punch requests a node may make at once (a node meeting many peers at
/// start-up, e.g. a scheduler contacting 100 workers).
pub const PUNCH_BURST: f64 = 200.0;

/// How often a member's observed address is compared with the one in
/// membership (a NAT rebinding moves it).
pub const ADDRESS_CHECK: Duration = Duration::from_secs(1);

/// The line that stands for output a node sent over its limit.
fn dropped_lines_note(count: u64, rate: f64) -> boxer_proto::control::LogLine {
    boxer_proto::control::LogLine {
        stream: boxer_proto::control::Stream::Stderr,
        text: format!("[boxer] {count} lines dropped: this node's output went over {rate:.0} bytes/s"),
    }
}

/// Receives from an optional broadcast; pending forever without one.
async fn recv_opt(rx: &mut Option<broadcast::Receiver<NodeOutput>>) -> Result<NodeOutput, broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// What a node's output or lifecycle event says to a watcher.
fn output_message(output: NodeOutput) -> ServerMessage {
    match output {
        NodeOutput::Lines { node, lines } => ServerMessage::Logs { node, lines },
        NodeOutput::Paths { node, paths } => ServerMessage::Paths { node, paths },
        NodeOutput::Exited { node, status } => ServerMessage::Exited { node, status },
        NodeOutput::State { node, state } => ServerMessage::State { node, state },
    }
}

/// A log watcher's output in the order each node produced it.
///
/// Lines travel on one channel and states and exits on another (a watcher
/// that falls behind loses lines, never an exit), so reading both as they
/// come could show a node's exit before its last lines. A node's session
/// publishes its lines before its exit, so when an exit (or state) is
/// received every line published before it is already queued on the output
/// channel: those go first. No waiting, no timer.
struct OrderedOutput {
    output: Option<broadcast::Receiver<NodeOutput>>,
    lifecycle: Option<broadcast::Receiver<NodeOutput>>,
    queue: VecDeque<ServerMessage>,
}

impl OrderedOutput {
    fn new(
        output: Option<broadcast::Receiver<NodeOutput>>,
        lifecycle: Option<broadcast::Receiver<NodeOutput>>,
    ) -> Self {
        Self { output, lifecycle, queue: VecDeque::new() }
    }

    /// The next message for the watcher; `None` when the cluster is gone.
    /// Cancel-safe: nothing is awaited after a message is taken.
    async fn next(&mut self) -> Option<ServerMessage> {
        loop {
            if let Some(msg) = self.queue.pop_front() {
                return Some(msg);
            }
            tokio::select! {
                // Lifecycle first: rare, and it brings the lines before it along.
                biased;
                event = recv_opt(&mut self.lifecycle) => match event {
                    Ok(event) => {
                        self.take_queued_output();
                        self.queue.push_back(output_message(event));
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => warn!(missed = n, "watcher missed state changes or exit reports"),
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                output = recv_opt(&mut self.output) => match output {
                    Ok(output) => return Some(output_message(output)),
                    Err(broadcast::error::RecvError::Lagged(batches)) => return Some(ServerMessage::LogsDropped { batches }),
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            }
        }
    }

    /// Moves what the output channel holds now into the queue.
    fn take_queued_output(&mut self) {
        use broadcast::error::TryRecvError;
        let Some(rx) = &mut self.output else { return };
        loop {
            match rx.try_recv() {
                Ok(output) => self.queue.push_back(output_message(output)),
                Err(TryRecvError::Lagged(batches)) => self.queue.push_back(ServerMessage::LogsDropped { batches }),
                Err(TryRecvError::Empty | TryRecvError::Closed) => return,
            }
        }
    }
}

async fn watch_session(
    registry: &Shared,
    conn: &quinn::Connection,
    req: &WatchRequest,
    snapshot: MembershipSnapshot,
    mut feed: Feed,
    mut send: quinn::SendStream,
) {
    let mut membership = Membership::from_snapshot(&req.cluster, snapshot.clone());
    if frame::write(&mut send, &ServerMessage::Snapshot(snapshot)).await.is_err() {
        return;
    }
    let mut output = OrderedOutput::new(feed.output.take(), feed.lifecycle.take());
    // States sent before this watcher came (a change since is sent again:
    // harmless, a state is a value, not an event).
    let states = if req.logs { lock(registry).states(&req.cluster) } else { vec![] };
    for (node, state) in states {
        if frame::write(&mut send, &ServerMessage::State { node, state }).await.is_err() {
            return;
        }
    }
    loop {
        tokio::select! {
            received = feed.events.recv() => {
                if !forward(registry, &req.cluster, &mut feed, received, &mut send, &mut membership).await {
                    break;
                }
            }
            msg = output.next() => {
                let Some(msg) = msg else { break };
                if frame::write(&mut send, &msg).await.is_err() {
                    break;
                }
            }
            _ = feed.deleted.changed() => break,
            _ = conn.closed() => break,
        }
    }
    // Whichever branch saw it first (the feeds end with the cluster too),
    // a deleted cluster is said as such, not as a lost connection.
    if *feed.deleted.borrow() && conn.close_reason().is_none() {
        refuse(
            conn,
            &Refusal { code: CloseCode::ClusterDeleted, reason: format!("cluster {:?} was deleted", req.cluster) },
        );
    }
}

#[cfg(test)]
mod tests {
    use boxer_proto::control::{ExitStatus, LogLine, NodeState, Stream};

    use super::*;

    fn lines(node: &str, text: &str) -> NodeOutput {
        NodeOutput::Lines { node: node.into(), lines: vec![LogLine { stream: Stream::Stdout, text: text.into() }] }
    }

    fn describe(msg: &ServerMessage) -> String {
        match msg {
            ServerMessage::Logs { node, lines } => format!("{node} | {}", lines[0].text),
            ServerMessage::Exited { node, status } => format!("{node} exited {}", status.code),
            ServerMessage::State { node, state } => format!("{node} {state}"),
            other => format!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn an_exit_comes_after_the_lines_published_before_it() {
        let (out_tx, out_rx) = broadcast::channel(16);
        let (life_tx, life_rx) = broadcast::channel(16);
        let mut ordered = OrderedOutput::new(Some(out_rx), Some(life_rx));
        // What a node's session publishes, in order: a state, lines, the exit.
        life_tx.send(NodeOutput::State { node: "a-0".into(), state: NodeState::Running }).unwrap();
        out_tx.send(lines("a-0", "one")).unwrap();
        out_tx.send(lines("b-0", "other node")).unwrap();
        out_tx.send(lines("a-0", "last")).unwrap();
        life_tx.send(NodeOutput::Exited { node: "a-0".into(), status: ExitStatus { code: 0 } }).unwrap();
        let mut seen = Vec::new();
        for _ in 0..5 {
            seen.push(describe(&ordered.next().await.unwrap()));
        }
        // Both channels had messages ready and the exit channel is read
        // first, yet no exit overtakes a line.
        let exit = seen.iter().position(|m| m == "a-0 exited 0").unwrap();
        let last = seen.iter().position(|m| m == "a-0 | last").unwrap();
        assert!(last < exit, "{seen:?}");
        assert_eq!(seen.iter().filter(|m| m.starts_with("a-0 |")).count(), 2, "{seen:?}");
        // Lines after the exit (another node's) still flow.
        out_tx.send(lines("b-0", "later")).unwrap();
        assert_eq!(describe(&ordered.next().await.unwrap()), "b-0 | later");
        drop((out_tx, life_tx));
        assert!(ordered.next().await.is_none());
    }

    #[tokio::test]
    async fn a_lagging_watcher_is_told_and_keeps_its_exits() {
        let (out_tx, out_rx) = broadcast::channel(2);
        let (life_tx, life_rx) = broadcast::channel(16);
        let mut ordered = OrderedOutput::new(Some(out_rx), Some(life_rx));
        for i in 0..5 {
            out_tx.send(lines("a-0", &i.to_string())).unwrap();
        }
        life_tx.send(NodeOutput::Exited { node: "a-0".into(), status: ExitStatus { code: 3 } }).unwrap();
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(describe(&ordered.next().await.unwrap()));
        }
        assert_eq!(seen, ["LogsDropped { batches: 3 }", "a-0 | 3", "a-0 | 4", "a-0 exited 3"]);
    }
}
