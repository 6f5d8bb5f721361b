//! Messages between two runtimes.
//!
//! One QUIC connection joins every pair of nodes; every application TCP
//! connection between them is one bidirectional stream. The opener writes a
//! [`crate::Hello`] frame and a [`StreamHeader`] frame, then the stream carries
//! raw application bytes in both directions. A refused stream is reset with a
//! [`StreamError`] code.
//!
//! Overlay UDP travels as QUIC datagrams (RFC 9221) on the same connection:
//! each carries a [`UdpHeader`] and one fragment of an application datagram.

use std::net::SocketAddrV4;

use serde::{Deserialize, Serialize};

/// Header of a proxied TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHeader {
    /// TCP port on the receiving node the connection is for.
    pub dst_port: u16,
    /// The connecting application's overlay address and port, reported to
    /// the accepting application as its peer address.
    pub src: SocketAddrV4,
}

/// Codes with which a runtime resets a stream it will not carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum StreamError {
    /// Nothing listens on the destination port (the app sees `ECONNREFUSED`).
    Refused = 1,
    /// Bad hello or header.
    Protocol = 2,
    /// The local connection failed after it was established.
    Aborted = 3,
}

impl StreamError {
    /// The code as sent on the wire.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The error for a received code.
    pub fn from_code(code: u64) -> Option<Self> {
        [Self::Refused, Self::Protocol, Self::Aborted].into_iter().find(|e| e.code() as u64 == code)
    }
}

/// Kind byte of an overlay UDP datagram, layout version 1 (see [`UdpHeader`]).
/// A receiver drops datagrams of a kind it does not know, so a later layout
/// takes a new kind byte instead of being misread.
pub const UDP_KIND_V1: u8 = 0x01;

/// Length of an encoded [`UdpHeader`].
pub const UDP_HEADER_LEN: usize = 11;

/// Largest UDP payload over IPv4: 65535 minus the 20-byte IP and 8-byte UDP
/// headers. No application datagram is larger, so no reassembled one may be.
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// Most fragments one application datagram may be split into (the count is
/// one byte). Even at QUIC's minimum MTU (1200 bytes, ~1150 for a datagram
/// frame) a [`MAX_UDP_PAYLOAD`] datagram needs only 58.
pub const MAX_UDP_FRAGMENTS: usize = u8::MAX as usize;

/// Header of an overlay UDP datagram, carried as a QUIC datagram (RFC 9221)
/// on the connection between two runtimes.
///
/// This is the data path of overlay UDP, so it is a fixed binary layout
/// rather than a postcard frame: 11 bytes, big-endian, then the fragment's
/// payload.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 1 | kind: [`UDP_KIND_V1`] |
/// | 1 | 2 | `src_port` |
/// | 3 | 2 | `dst_port` |
/// | 5 | 4 | `id` |
/// | 9 | 1 | `index` |
/// | 10 | 1 | `count` |
///
/// The sender's overlay address is not in the header: the receiver takes it
/// from the authenticated connection the datagram came on, so a node cannot
/// claim another's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UdpHeader {
    /// Port of the sending application's socket.
    pub src_port: u16,
    /// Port on the receiving node the datagram is for.
    pub dst_port: u16,
    /// Number of the application datagram, chosen by the sender; the
    /// fragments of one datagram share it.
    pub id: u32,
    /// This fragment's position, `0..count`.
    pub index: u8,
    /// Number of fragments of the datagram, at least 1.
    pub count: u8,
}

/// Why bytes are not an overlay UDP datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UdpHeaderError {
    /// Fewer bytes than a header.
    #[error("datagram of {0} bytes is shorter than the {UDP_HEADER_LEN}-byte header")]
    Short(usize),
    /// A kind byte this build does not know.
    #[error("unknown datagram kind {0:#04x}")]
    UnknownKind(u8),
    /// Index and count do not describe a fragment.
    #[error("bad fragment {index} of {count}")]
    BadFragment {
        /// The index received.
        index: u8,
        /// The count received.
        count: u8,
    },
}

impl UdpHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; UDP_HEADER_LEN] {
        let mut out = [0u8; UDP_HEADER_LEN];
        out[0] = UDP_KIND_V1;
        out[1..3].copy_from_slice(&self.src_port.to_be_bytes());
        out[3..5].copy_from_slice(&self.dst_port.to_be_bytes());
        out[5..9].copy_from_slice(&self.id.to_be_bytes());
        out[9] = self.index;
        out[10] = self.count;
        out
    }

    /// Reads the header at the start of `datagram`. The fragment's payload
    /// is `datagram[UDP_HEADER_LEN..]`. Never panics, whatever the bytes.
    pub fn decode(datagram: &[u8]) -> Result<Self, UdpHeaderError> {
        let Some(bytes) = datagram.first_chunk::<UDP_HEADER_LEN>() else {
            return Err(UdpHeaderError::Short(datagram.len()));
        };
        if bytes[0] != UDP_KIND_V1 {
            return Err(UdpHeaderError::UnknownKind(bytes[0]));
        }
        let header = Self {
            src_port: u16::from_be_bytes([bytes[1], bytes[2]]),
            dst_port: u16::from_be_bytes([bytes[3], bytes[4]]),
            id: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]),
            index: bytes[9],
            count: bytes[10],
        };
        if header.count == 0 || header.index >= header.count {
            return Err(UdpHeaderError::BadFragment { index: header.index, count: header.count });
        }
        Ok(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_header_round_trips() {
        let h = UdpHeader { src_port: 5353, dst_port: 65535, id: 0xdead_beef, index: 3, count: 58 };
        let mut bytes = h.encode().to_vec();
        bytes.extend_from_slice(b"payload");
        assert_eq!(UdpHeader::decode(&bytes), Ok(h));
        assert_eq!(&bytes[UDP_HEADER_LEN..], b"payload");
    }

    #[test]
    fn udp_header_layout_is_fixed() {
        let h = UdpHeader { src_port: 0x0102, dst_port: 0x0304, id: 0x0506_0708, index: 0, count: 1 };
        assert_eq!(h.encode(), [UDP_KIND_V1, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1]);
    }

    #[test]
    fn udp_header_rejects_bad_bytes() {
        let good = UdpHeader { src_port: 1, dst_port: 2, id: 3, index: 0, count: 1 }.encode();
        for len in 0..UDP_HEADER_LEN {
            assert_eq!(UdpHeader::decode(&good[..len]), Err(UdpHeaderError::Short(len)));
        }
        let mut kind = good;
        kind[0] = 0x7f;
        assert_eq!(UdpHeader::decode(&kind), Err(UdpHeaderError::UnknownKind(0x7f)));
        let mut zero = good;
        zero[10] = 0;
        assert_eq!(UdpHeader::decode(&zero), Err(UdpHeaderError::BadFragment { index: 0, count: 0 }));
        let mut past = good;
        past[9] = 1;
        assert_eq!(UdpHeader::decode(&past), Err(UdpHeaderError::BadFragment { index: 1, count: 1 }));
    }

    #[test]
    fn udp_header_decode_never_panics() {
        // Every kind byte and every index/count pair, at every short length.
        let mut bytes = [0u8; UDP_HEADER_LEN + 2];
        for kind in 0..=255u8 {
            bytes[0] = kind;
            for index in [0u8, 1, 254, 255] {
                for count in [0u8, 1, 2, 255] {
                    bytes[9] = index;
                    bytes[10] = count;
                    for len in 0..bytes.len() {
                        let _ = UdpHeader::decode(&bytes[..len]);
                    }
                }
            }
        }
    }

    #[test]
    fn max_udp_payload_fits_the_fragment_count_at_minimum_mtu() {
        // ~1150 bytes per QUIC datagram at the 1200-byte minimum MTU.
        let per_fragment = 1150 - UDP_HEADER_LEN;
        assert!(MAX_UDP_PAYLOAD.div_ceil(per_fragment) <= MAX_UDP_FRAGMENTS);
    }
}
