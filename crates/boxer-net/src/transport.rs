//! QUIC transport parameters, each with the reason for its value.

use std::sync::Arc;
use std::time::Duration;

use quinn::{TransportConfig, VarInt};

/// Keepalive towards the rendezvous. Its loss is how the rendezvous notices a
/// dead node, so it is frequent: one tiny packet per second per node.
pub const RENDEZVOUS_KEEPALIVE: Duration = Duration::from_secs(1);

/// A rendezvous connection silent this long is dead and the node has left.
/// Five keepalives may be lost before a live node is dropped; this is the
/// documented bound on how long a killed node stays in everyone's membership.
pub const RENDEZVOUS_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle timeout a node or admin client offers the rendezvous. Before the
/// handshake completes it is also the handshake's limit (quinn gives up
/// after max(idle timeout, 3 PTO) without an answer; with the initial RTT
/// of 333 ms the Initial is sent at 0, ~1 and ~3 s, and at ~7 s only with
/// a limit past it). With the old 5 s a join lost to three early losses
/// (seen on a loaded machine) failed before the runtime's 10 s join limit.
/// After the handshake the lower of both sides' values applies, so the
/// rendezvous' [`RENDEZVOUS_IDLE_TIMEOUT`] still bounds a dead connection.
pub const RENDEZVOUS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Keepalive between peers: well below the common 30 s UDP NAT mapping
/// timeout (and Linux conntrack's 30 s for unreplied UDP), so that a punched
/// path stays open while the application is idle.
pub const PEER_KEEPALIVE: Duration = Duration::from_secs(10);

/// A peer connection silent this long is dropped. Three keepalives; a dead
/// peer is normally removed earlier by its membership `Left` event.
pub const PEER_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Receive window of one stream. One application connection is one stream, so
/// this caps a single TCP connection at window / RTT: 16 MiB allows ~2.6
/// Gbit/s on a 50 ms WAN path, where quinn's 1.25 MB default gave ~200 Mbit/s.
pub const STREAM_RECEIVE_WINDOW: u32 = 16 << 20;

/// Receive window of a whole peer connection: four streams at full window.
/// Bounds the memory a peer can make us buffer.
pub const CONNECTION_RECEIVE_WINDOW: u32 = 64 << 20;

/// Send window of a connection, matched to the receive window.
pub const SEND_WINDOW: u64 = 64 << 20;

/// Concurrent application connections between one pair of nodes. Above
/// Lambda's 1024 file descriptors per process, so never the limit there.
pub const PEER_MAX_STREAMS: u32 = 4096;

/// Unread QUIC datagrams (overlay UDP) buffered per peer connection; past
/// this quinn drops the oldest. The runtime reads datagrams in a task of
/// their own, so this only absorbs bursts while the node's one thread is busy
/// elsewhere: 2 MiB is ~16 ms at 1 Gbit/s and bounds what a peer can make us
/// hold. Anything >= 64 KiB also lets the peer send datagrams of any size the
/// path allows (the transport parameter is capped at 65535).
pub const DATAGRAM_RECEIVE_BUFFER: usize = 2 << 20;

/// Outgoing QUIC datagrams waiting for the congestion window, per peer
/// connection; past this quinn drops the oldest, as a router's queue would.
/// 1 MiB holds a burst of 16 maximum-size UDP datagrams (65507 bytes, split
/// in ~47 fragments each) and is ~8 ms at 1 Gbit/s; more would only add
/// latency that UDP applications (media, games, DNS) do not want.
pub const DATAGRAM_SEND_BUFFER: usize = 1 << 20;

/// Transport of a connection between two runtimes.
///
/// Congestion control is BBR, not quinn's default Cubic: peers talk across
/// the internet, where a path with random loss is common (Wi-Fi, a busy
/// uplink), and a loss-based controller collapses there. In the lab, 5%
/// random loss with 50 ms RTT (`tests/lossy.rs`) moves 0.15-0.2 MB/s with
/// Cubic (500 MB would take an hour) and 500 MB in 13 s with BBR, while
/// an unimpaired path is as fast with either.
pub fn peer() -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
    t.keep_alive_interval(Some(PEER_KEEPALIVE))
        .max_idle_timeout(Some(PEER_IDLE_TIMEOUT.try_into().expect("30 s fits a VarInt")))
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW))
        .send_window(SEND_WINDOW)
        .max_concurrent_bidi_streams(VarInt::from_u32(PEER_MAX_STREAMS))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(Some(DATAGRAM_RECEIVE_BUFFER))
        .datagram_send_buffer_size(DATAGRAM_SEND_BUFFER);
    Arc::new(t)
}

/// Receive window of the relay stream on a rendezvous connection: relayed
/// QUIC packets queue here. 8 MiB keeps a relayed pair near 1 Gbit/s at the
/// 50 ms RTT of a relay in another region, and bounds what one node can make
/// the rendezvous buffer.
pub const RELAY_STREAM_WINDOW: u32 = 8 << 20;

/// Transport of the rendezvous' side of its connections.
pub fn rendezvous() -> Arc<TransportConfig> {
    Arc::new(rendezvous_config(RENDEZVOUS_IDLE_TIMEOUT))
}

/// Transport of a connection to the rendezvous from a node or an admin
/// client: as [`rendezvous`], with [`RENDEZVOUS_HANDSHAKE_TIMEOUT`] to
/// complete the handshake.
pub fn rendezvous_client() -> Arc<TransportConfig> {
    Arc::new(rendezvous_config(RENDEZVOUS_HANDSHAKE_TIMEOUT))
}

fn rendezvous_config(idle: Duration) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.keep_alive_interval(Some(RENDEZVOUS_KEEPALIVE))
        .max_idle_timeout(Some(idle.try_into().expect("seconds fit a VarInt")))
        .stream_receive_window(VarInt::from_u32(RELAY_STREAM_WINDOW))
        .receive_window(VarInt::from_u32(RELAY_STREAM_WINDOW * 2))
        .send_window(u64::from(RELAY_STREAM_WINDOW) * 2)
        // The control stream and the relay stream; nothing else is accepted.
        .max_concurrent_bidi_streams(VarInt::from_u32(2))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        // No datagrams either: nobody would read them, so they would only
        // sit in quinn's buffer.
        .datagram_receive_buffer_size(None);
    t
}
