//! `wait_for`: holding the node's program until the names it needs listen,
//! in sight of `boxer up` (every wait is reported as the node's state) and
//! within `wait_timeout` if one is set. The same in the local and the Lambda
//! mode.

use std::sync::Arc;
use std::time::Duration;

use boxer_proto::Membership;
use boxer_proto::control::NodeState;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::{Node, NodeError};

pub use boxer_proto::lambda::WAIT_TIMEOUT_EXIT_CODE;

/// Longest `wait_timeout`, in seconds: a day. Longer than any cluster lives
/// on Lambda (15 minutes) and than any sane start-up locally, and short
/// enough to catch a value meant in milliseconds (120000 for two minutes
/// would be 33 hours).
pub const MAX_WAIT_TIMEOUT_SECS: u64 = 86_400;

/// Why the program was not started.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// `wait_timeout` passed before `target` listened on `port`.
    #[error("gave up waiting for {target}:{port} after {} s (wait_timeout); {why}", waited.as_secs())]
    TimedOut {
        /// The name still waited for.
        target: String,
        /// Its port.
        port: u16,
        /// How long the node waited in all.
        waited: Duration,
        /// What the membership showed of the target at that moment.
        why: String,
    },
    /// The node stopped (rendezvous lost, cluster deleted, shut down).
    #[error("node stopped while waiting for {target}:{port}: {source}")]
    Stopped {
        /// The name waited for.
        target: String,
        /// Its port.
        port: u16,
        /// Why the node stopped.
        source: Arc<NodeError>,
    },
}

/// Whether `name` resolves to a member listening on `port`.
fn listening(membership: &Membership, name: &str, port: u16) -> bool {
    membership.resolve(name).is_some_and(|found| found.iter().any(|m| m.listening.contains(&port)))
}

/// What the membership shows of `name` when the wait for it ends in vain:
/// the second half of "gave up waiting for db-0:5432 ...; db-0 never
/// listened on 5432".
pub fn why_not_listening(membership: &Membership, name: &str, port: u16) -> String {
    match membership.resolve(name) {
        Some(found) if !found.is_empty() => {
            let mut ports: Vec<u16> = found.iter().flat_map(|m| m.listening.iter().copied()).collect();
            ports.sort_unstable();
            ports.dedup();
            if ports.is_empty() {
                format!("{name} never listened on {port} (it listens on no port)")
            } else {
                let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
                format!("{name} never listened on {port} (it listens on {})", ports.join(", "))
            }
        }
        _ => format!("{name} is not in the cluster (it never joined, or it left); it never listened on {port}"),
    }
}

/// Waits until every `NAME:PORT` of `targets` listens, in order, giving up
/// after `timeout` (counted from the call, for all targets together).
///
/// Each target not yet listening is announced as [`NodeState::Waiting`];
/// once all listen, [`NodeState::Running`] follows if anything was waited
/// for (the caller starts the program next). A node with nothing to wait
/// for reports nothing: joined means running.
pub async fn wait_for(node: &Node, targets: &[(String, u16)], timeout: Option<Duration>) -> Result<(), WaitError> {
    let started = Instant::now();
    let deadline = timeout.map(|t| started + t);
    let membership = node.membership();
    let mut announced = false;
    for (target, port) in targets {
        if listening(&membership.borrow(), target, *port) {
            continue;
        }
        info!("waiting for {target}:{port} to listen");
        let waited_secs = u32::try_from(started.elapsed().as_secs()).unwrap_or(u32::MAX);
        node.report_state(NodeState::Waiting { target: target.clone(), port: *port, waited_secs }).await;
        announced = true;
        let until = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = node.wait_listening(target, *port) => if r.is_err() {
                return Err(WaitError::Stopped { target: target.clone(), port: *port, source: node.stopped().await });
            },
            () = until => {
                let why = why_not_listening(&membership.borrow(), target, *port);
                let e = WaitError::TimedOut { target: target.clone(), port: *port, waited: started.elapsed(), why };
                warn!("{e}");
                return Err(e);
            }
        }
    }
    if announced {
        info!(waited = ?started.elapsed(), "every wait_for target listens; starting the program");
        node.report_state(NodeState::Running).await;
    }
    Ok(())
}

/// Reports a node that gave up waiting: its state (the reason, which
/// `boxer up` shows on the node's line), then its exit with
/// [`WAIT_TIMEOUT_EXIT_CODE`], and leaves the cluster. Returns the exit code.
pub async fn give_up(node: &Node, error: &WaitError) -> i32 {
    let mut reason = error.to_string();
    if reason.len() > boxer_proto::control::MAX_STATE_REASON {
        let mut cut = boxer_proto::control::MAX_STATE_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    node.report_state(NodeState::GaveUp { reason }).await;
    node.report_exit(WAIT_TIMEOUT_EXIT_CODE).await;
    node.shutdown().await;
    WAIT_TIMEOUT_EXIT_CODE
}

/// Parses a `wait_for` target `NAME:PORT` (the runtime's `--wait-for`, the
/// Lambda event's `wait_for`): a non-empty host name of at most 253 bytes
/// and a port from 1 to 65535.
pub fn parse_target(s: &str) -> Result<(String, u16), String> {
    let (name, port) = s.rsplit_once(':').ok_or_else(|| format!("{s:?}: expected NAME:PORT, e.g. db-0:6379"))?;
    let port = port.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| format!("{s:?}: {port:?} is not a port"))?;
    if name.is_empty() {
        return Err(format!("{s:?}: empty name"));
    }
    if name.len() > boxer_proto::control::MAX_NAME_LEN {
        return Err(format!(
            "name of {} bytes: a host name has at most {}",
            name.len(),
            boxer_proto::control::MAX_NAME_LEN
        ));
    }
    Ok((name.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use boxer_proto::membership::MembershipSnapshot;
    use boxer_proto::{Fingerprint, Member, NodeId};

    use super::*;

    fn member(id: u32, service: &str, index: u32, listening: Vec<u16>) -> Member {
        Member {
            node_id: NodeId(id),
            service: service.into(),
            index,
            overlay_ip: Ipv4Addr::new(100, 96, 0, id as u8),
            fingerprint: Fingerprint([id as u8; 32]),
            reflexive: "192.0.2.1:1".parse().unwrap(),
            local: vec![],
            listening,
            disco_public: [id as u8; 32],
        }
    }

    #[test]
    fn the_reason_says_what_the_target_did() {
        let m = Membership::from_snapshot(
            "c",
            MembershipSnapshot {
                seq: 1,
                members: vec![member(1, "db", 0, vec![]), member(2, "web", 0, vec![443, 80])],
            },
        );
        assert!(listening(&m, "web-0", 80) && !listening(&m, "web-0", 81));
        assert_eq!(why_not_listening(&m, "db-0", 5432), "db-0 never listened on 5432 (it listens on no port)");
        assert_eq!(why_not_listening(&m, "web", 8080), "web never listened on 8080 (it listens on 80, 443)");
        assert!(why_not_listening(&m, "cache-0", 6379).starts_with("cache-0 is not in the cluster"));
        let e = WaitError::TimedOut {
            target: "db-0".into(),
            port: 5432,
            waited: Duration::from_millis(120_400),
            why: why_not_listening(&m, "db-0", 5432),
        };
        assert_eq!(
            e.to_string(),
            "gave up waiting for db-0:5432 after 120 s (wait_timeout); db-0 never listened on 5432 (it listens on no port)"
        );
    }
}
