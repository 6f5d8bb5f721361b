//! The relay: forwards peer QUIC packets between members of one cluster that
//! have no direct path ([`boxer_proto::relay`]). The packets are the two
//! runtimes' end-to-end encrypted QUIC packets; the relay only reads the
//! node id in front of each.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use boxer_proto::control::CloseCode;
use boxer_proto::{Hello, NodeId, frame, relay};
use tokio::io::BufReader;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::limits::{Limits, TokenBucket};
use crate::registry::RelayPacket;
use crate::session::{Shared, lock};

/// Time a member has to say hello on its relay stream once opened.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Read buffer of a relay stream.
const READ_BUFFER: usize = 64 << 10;

/// Serves `node`'s relay stream (the second stream it opens on its
/// connection), until the connection ends. `inbox` holds packets other
/// members relay to it.
pub async fn serve(
    registry: Shared,
    conn: quinn::Connection,
    cluster: String,
    node: NodeId,
    inbox: mpsc::Receiver<RelayPacket>,
    limits: Limits,
) {
    let Ok((mut send, mut recv)) = conn.accept_bi().await else { return };
    let hello = tokio::time::timeout(HELLO_TIMEOUT, async {
        frame::write(&mut send, &Hello::current()).await?;
        frame::read::<Hello, _>(&mut recv).await
    })
    .await;
    match hello {
        Ok(Ok(h)) if h.check().is_ok() => {}
        _ => {
            warn!(%node, "bad hello on the relay stream");
            conn.close(CloseCode::Protocol.code().into(), b"bad hello on the relay stream");
            return;
        }
    }
    let writer = tokio::spawn(boxer_net::relay::write_frames(inbox, send));
    let mut recv = BufReader::with_capacity(READ_BUFFER, recv);
    // Senders looked up once per destination, not once per packet.
    let mut routes: HashMap<NodeId, mpsc::Sender<RelayPacket>> = HashMap::new();
    let mut budget = TokenBucket::new(limits.relay_bytes_per_sec, limits.relay_burst, Instant::now());
    let mut over_limit = false;
    loop {
        let (to, packet) = match relay::io::read(&mut recv).await {
            Ok(Some(p)) => p,
            Ok(None) => break,
            // The connection or the stream ended under the read: the node
            // left (an orderly stop closes its connection), was deleted with
            // its cluster, or timed out. Its session says which; nothing
            // here broke a rule.
            Err(e) if is_transport_end(&e) => {
                debug!(%node, "relay stream ended: {e}");
                break;
            }
            Err(e) => {
                warn!(%node, "bad relay frame: {e}");
                conn.close(CloseCode::Protocol.code().into(), format!("bad relay frame: {e}").as_bytes());
                break;
            }
        };
        let sender = match routes.get(&to) {
            Some(s) if !s.is_closed() => s.clone(),
            _ => match lock(&registry).relay_to(&cluster, to) {
                Some(s) if to != node => {
                    routes.insert(to, s.clone());
                    s
                }
                // Not a member of this cluster (or gone): dropped.
                _ => {
                    debug!(%node, peer = %to, "relay packet for a non-member dropped");
                    continue;
                }
            },
        };
        // Over this member's share of the relay: dropped like on a full
        // link (QUIC slows down). Checked after the lookup so that packets
        // to nobody cost no budget.
        if !budget.take(packet.len() as f64, Instant::now()) {
            if !over_limit {
                over_limit = true;
                debug!(%node, "relayed traffic over {} bytes/s: dropping", limits.relay_bytes_per_sec);
            }
            continue;
        }
        over_limit = false;
        // Full: the receiver is slower than the sender; drop like UDP would.
        let _ = sender.try_send((node, packet));
    }
    writer.abort();
}

/// Whether a relay read failed because the QUIC stream or connection ended
/// (quinn's [`quinn::ReadError`] inside the I/O error), not because of what
/// the node sent (a bad header, a frame cut short).
fn is_transport_end(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<quinn::ReadError>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_of_the_connection_are_not_protocol_errors() {
        let lost = std::io::Error::from(quinn::ReadError::ConnectionLost(quinn::ConnectionError::TimedOut));
        assert!(is_transport_end(&lost), "{lost}");
        let reset = std::io::Error::from(quinn::ReadError::Reset(0u32.into()));
        assert!(is_transport_end(&reset));
        let garbage = std::io::Error::other(boxer_proto::relay::RelayFrameError::BadLength(0));
        assert!(!is_transport_end(&garbage));
        let cut = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert!(!is_transport_end(&cut));
    }
}
