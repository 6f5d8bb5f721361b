//! Client side of the relay ([`boxer_proto::relay`]): a second stream on the
//! rendezvous connection that carries relayed peers' QUIC packets.

use std::sync::Arc;

use boxer_proto::{Hello, frame, relay};
use tokio::io::BufReader;
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info_span};

use crate::socket::{PeerSocket, RelayPacket};

/// Most bytes gathered into one stream write: packets queued together leave
/// together, without holding any back.
const WRITE_BATCH: usize = 64 << 10;

/// Packets from this node waiting for the relay stream.
const OUTBOUND_QUEUE: usize = 1024;

/// Why the relay could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The stream could not be opened.
    #[error("cannot open the relay stream: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The hello exchange failed.
    #[error("relay stream hello: {0}")]
    Hello(String),
}

/// Writes the packets arriving on `packets` to `send` as relay frames,
/// gathering those already queued into one write, until either side ends.
/// Used by both ends of a relay stream.
pub async fn write_frames(mut packets: mpsc::Receiver<RelayPacket>, mut send: quinn::SendStream) {
    let mut buf = Vec::with_capacity(WRITE_BATCH + relay::MAX_PACKET);
    while let Some((node, packet)) = packets.recv().await {
        buf.clear();
        let _ = relay::encode(node, &packet, &mut buf);
        while buf.len() < WRITE_BATCH {
            match packets.try_recv() {
                Ok((node, packet)) => {
                    let _ = relay::encode(node, &packet, &mut buf);
                }
                Err(_) => break,
            }
        }
        if let Err(e) = send.write_all(&buf).await {
            debug!("relay stream closed: {e}");
            return;
        }
    }
}

/// Opens the relay stream on `conn` (the node's rendezvous connection) and
/// attaches it to `socket`. Runs until the connection ends.
pub async fn attach(conn: &quinn::Connection, socket: &Arc<PeerSocket>) -> Result<(), RelayError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    frame::write(&mut send, &Hello::current()).await.map_err(|e| RelayError::Hello(e.to_string()))?;
    let hello: Hello = frame::read(&mut recv).await.map_err(|e| RelayError::Hello(e.to_string()))?;
    hello.check().map_err(|e| RelayError::Hello(e.to_string()))?;
    let (out_tx, out_rx) = mpsc::channel::<RelayPacket>(OUTBOUND_QUEUE);
    socket.attach_relay(out_tx);
    tokio::spawn(write_frames(out_rx, send).instrument(info_span!("relay-out")));
    let inbox = socket.relay_inbox();
    tokio::spawn(
        async move {
            let mut recv = BufReader::with_capacity(WRITE_BATCH, recv);
            loop {
                match relay::io::read(&mut recv).await {
                    Ok(Some(packet)) => {
                        // Full means quinn is not keeping up: drop, like UDP.
                        if let Err(mpsc::error::TrySendError::Closed(_)) = inbox.try_send(packet) {
                            return;
                        }
                    }
                    Ok(None) => return,
                    // The connection ending (the node leaving) ends the stream too.
                    Err(e) => {
                        debug!("relay stream ended: {e}");
                        return;
                    }
                }
            }
        }
        .instrument(info_span!("relay-in")),
    );
    Ok(())
}
