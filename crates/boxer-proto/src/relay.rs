//! Relay framing: peer QUIC packets carried through the rendezvous when two
//! nodes find no direct path (symmetric NATs).
//!
//! After joining, a node opens a second bidirectional stream on its
//! rendezvous connection and both sides exchange a [`crate::Hello`]. Then
//! each direction carries frames of `[u16 length][u32 node id][packet]`
//! (big-endian): towards the rendezvous the id names the destination, from
//! it the source. The packets are the two runtimes' own QUIC packets, so the
//! relay sees only ciphertext (as with Tailscale's DERP), and it forwards only
//! between members of one cluster. A relayed packet that finds its queue full
//! is dropped, exactly as a congested UDP path would, and QUIC recovers.

use crate::NodeId;

/// Bytes before each packet: length and node id.
pub const HEADER_LEN: usize = 6;

/// Largest packet carried: a maximal UDP payload over IPv4. Peer connections
/// send at most 1452-byte packets (quinn's MTU discovery ceiling), so this is
/// never the limit in practice; it bounds what a hostile frame can claim.
pub const MAX_PACKET: usize = 65_507;

/// Why a relay frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RelayFrameError {
    /// Zero-length or over-long packet.
    #[error("relay frame of {0} bytes is outside 1..={MAX_PACKET}")]
    BadLength(usize),
}

/// Appends one frame to `out`.
pub fn encode(node: NodeId, packet: &[u8], out: &mut Vec<u8>) -> Result<(), RelayFrameError> {
    if packet.is_empty() || packet.len() > MAX_PACKET {
        return Err(RelayFrameError::BadLength(packet.len()));
    }
    out.extend_from_slice(&(packet.len() as u16).to_be_bytes());
    out.extend_from_slice(&node.0.to_be_bytes());
    out.extend_from_slice(packet);
    Ok(())
}

/// Parses a frame header: the packet length that follows and the node id.
pub fn decode_header(header: [u8; HEADER_LEN]) -> Result<(usize, NodeId), RelayFrameError> {
    let len = u16::from_be_bytes([header[0], header[1]]) as usize;
    if len == 0 || len > MAX_PACKET {
        return Err(RelayFrameError::BadLength(len));
    }
    Ok((len, NodeId(u32::from_be_bytes([header[2], header[3], header[4], header[5]]))))
}

/// Async frame I/O.
#[cfg(feature = "tokio")]
pub mod io {
    use tokio::io::{AsyncRead, AsyncReadExt};

    use super::*;

    /// Reads one frame; `Ok(None)` at a clean end of stream.
    pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<(NodeId, Vec<u8>)>> {
        let mut header = [0u8; HEADER_LEN];
        match r.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let (len, node) = decode_header(header).map_err(std::io::Error::other)?;
        let mut packet = vec![0u8; len];
        r.read_exact(&mut packet).await?;
        Ok(Some((node, packet)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_limits() {
        let mut out = Vec::new();
        encode(NodeId(7), b"abc", &mut out).unwrap();
        let (len, node) = decode_header(out[..HEADER_LEN].try_into().unwrap()).unwrap();
        assert_eq!((len, node), (3, NodeId(7)));
        assert_eq!(&out[HEADER_LEN..], b"abc");
        assert_eq!(encode(NodeId(1), b"", &mut out), Err(RelayFrameError::BadLength(0)));
        assert!(encode(NodeId(1), &vec![0; MAX_PACKET + 1], &mut out).is_err());
        assert_eq!(decode_header([0, 0, 0, 0, 0, 1]), Err(RelayFrameError::BadLength(0)));
    }

    #[tokio::test]
    async fn reads_frames_and_a_clean_end() {
        let mut bytes = Vec::new();
        encode(NodeId(2), b"hello", &mut bytes).unwrap();
        let mut r = &bytes[..];
        assert_eq!(io::read(&mut r).await.unwrap(), Some((NodeId(2), b"hello".to_vec())));
        assert_eq!(io::read(&mut r).await.unwrap(), None);
        let mut cut = &bytes[..8];
        assert!(io::read(&mut cut).await.is_err(), "a frame cut short is an error");
    }
}
