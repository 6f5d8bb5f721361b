//! Messages between two runtimes.
//!
//! One QUIC connection joins every pair of nodes; every application TCP
//! connection between them is one bidirectional stream. The opener writes a
//! [`crate::Hello`] frame and a [`StreamHeader`] frame, then the stream carries
//! raw application bytes in both directions. A refused stream is reset with a
//! [`StreamError`] code.

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
