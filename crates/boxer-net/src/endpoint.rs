//! A node's one UDP socket and quinn endpoint.
//!
//! The same socket talks to the rendezvous and to every peer, so the address
//! the rendezvous observes for the node is the NAT mapping peers must target.
//! The endpoint is client and server at once: it dials peers and accepts them.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use boxer_proto::{ALPN_PEER, Fingerprint, TLS_SERVER_NAME};

use crate::identity::Identity;
use crate::socket::{PeerSocket, ReceivedProbe};
use crate::tls::{self, TlsError};
use crate::transport;

/// Why an endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The UDP socket could not be bound.
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A dial could not even start (bad address, endpoint closed).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: quinn::ConnectError,
    },
}

/// The quinn endpoint of a node with its identity.
#[derive(Debug, Clone)]
pub struct NodeEndpoint {
    endpoint: quinn::Endpoint,
    identity: Arc<Identity>,
    socket: Arc<PeerSocket>,
    probes: Arc<Mutex<Option<tokio::sync::mpsc::Receiver<ReceivedProbe>>>>,
}

impl NodeEndpoint {
    /// Binds `addr` and accepts peer connections (ALPN [`ALPN_PEER`]) that
    /// present any certificate; the caller checks who they are.
    ///
    /// quinn runs on a [`PeerSocket`], so peers are reached at their
    /// [`crate::socket::peer_addr`] over whatever path they have.
    pub fn bind(addr: SocketAddr, identity: Identity) -> Result<Self, EndpointError> {
        let udp = std::net::UdpSocket::bind(addr).map_err(|source| EndpointError::Bind { addr, source })?;
        Self::from_socket(udp, identity)
    }

    /// Like [`NodeEndpoint::bind`] on an already bound socket (made, say, in
    /// another network namespace).
    pub fn from_socket(udp: std::net::UdpSocket, identity: Identity) -> Result<Self, EndpointError> {
        let addr = udp.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let bind_error = |source| EndpointError::Bind { addr, source };
        grow_buffers(&udp);
        let server = tls::server_config(&identity, ALPN_PEER, transport::peer())?;
        let (socket, probes) = PeerSocket::new(udp).map_err(bind_error)?;
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            quinn::EndpointConfig::default(),
            Some(server),
            socket.clone(),
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(bind_error)?;
        Ok(Self { endpoint, identity: Arc::new(identity), socket, probes: Arc::new(Mutex::new(Some(probes))) })
    }

    /// The routing socket under quinn.
    pub fn socket(&self) -> &Arc<PeerSocket> {
        &self.socket
    }

    /// The probes received on the socket; `None` after the first call.
    pub fn take_probes(&self) -> Option<tokio::sync::mpsc::Receiver<ReceivedProbe>> {
        self.probes.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// The bound local address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// This node's identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The underlying quinn endpoint.
    pub fn quinn(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    /// Starts a connection to `addr` that succeeds only if the server presents
    /// the certificate with fingerprint `server`.
    pub fn connect(
        &self,
        addr: SocketAddr,
        server: Fingerprint,
        alpn: &[u8],
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<quinn::Connecting, EndpointError> {
        let config = tls::client_config(&self.identity, server, alpn, transport)?;
        self.endpoint
            .connect_with(config, addr, TLS_SERVER_NAME)
            .map_err(|source| EndpointError::Connect { addr, source })
    }
}

/// Receive and send buffers asked for on a node's UDP socket. The kernel's
/// default (about 208 KiB) overflows under a fast peer: BBR sends at the
/// path's rate in bursts and quinn reads in batches, and the lab saw 35-45%
/// of packets dropped at the socket (`RcvbufErrors`). 4 MiB is about 30 ms
/// at 1 Gbit/s. An unprivileged process gets at most `net.core.rmem_max`.
pub const SOCKET_BUFFER: usize = 4 << 20;

/// Asks for [`SOCKET_BUFFER`] both ways; the receive buffer with
/// `CAP_NET_ADMIN` beyond the system's maximum. Best effort: a smaller
/// buffer only costs speed.
fn grow_buffers(udp: &std::net::UdpSocket) {
    let _ = grow_buffer(udp, SocketBuffer::Receive, SOCKET_BUFFER, true);
    let _ = grow_buffer(udp, SocketBuffer::Send, SOCKET_BUFFER, false);
}

/// One of a socket's two kernel buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketBuffer {
    /// `SO_RCVBUF`.
    Receive,
    /// `SO_SNDBUF`.
    Send,
}

/// Sets one of `socket`'s buffers to `size` bytes. With `force`, first
/// beyond the system's maximum (`SO_RCVBUFFORCE`, `SO_SNDBUFFORCE`: root
/// or `CAP_NET_ADMIN`); without the capability, or without `force`, capped
/// at `net.core.rmem_max` or `wmem_max`. Returns the size the kernel gave,
/// read back (Linux reports twice the size set, the other half being its
/// bookkeeping; this is the half that was asked for).
pub fn grow_buffer(
    socket: &std::net::UdpSocket,
    buffer: SocketBuffer,
    size: usize,
    force: bool,
) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let (forced, plain) = match buffer {
        SocketBuffer::Receive => (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        SocketBuffer::Send => (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    };
    let fd = socket.as_raw_fd();
    let value = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    let int_len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let set = |option: libc::c_int| {
        // SAFETY: setsockopt on an open socket, with a pointer to an int and its length.
        let rc = unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, option, (&raw const value).cast(), int_len) };
        if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
    };
    // The forced option fails (EPERM) without the capability: then what
    // the system's maximum allows.
    if !force || set(forced).is_err() {
        set(plain)?;
    }
    let mut got: libc::c_int = 0;
    let mut len = int_len;
    // SAFETY: getsockopt on an open socket, into an int with its length.
    let rc = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, plain, (&raw mut got).cast(), &mut len) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(usize::try_from(got).unwrap_or(0) / 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::peer_fingerprint;

    #[test]
    fn a_buffer_size_is_read_back_as_it_was_set() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // Below any system's maximum: granted as asked, with or without the capability.
        let size = 64 << 10;
        assert_eq!(grow_buffer(&socket, SocketBuffer::Receive, size, true).unwrap(), size);
        assert_eq!(grow_buffer(&socket, SocketBuffer::Send, size, false).unwrap(), size);
    }

    #[test]
    fn the_full_size_is_granted_or_capped() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let got = grow_buffer(&socket, SocketBuffer::Receive, SOCKET_BUFFER, true).unwrap();
        assert!(got > 0 && got <= SOCKET_BUFFER, "{got}");
    }

    fn endpoint() -> NodeEndpoint {
        NodeEndpoint::bind("127.0.0.1:0".parse().unwrap(), Identity::generate().unwrap()).unwrap()
    }

    #[tokio::test]
    async fn mutual_tls_with_pinned_keys() {
        let (a, b) = (endpoint(), endpoint());
        let (b_addr, b_fp) = (b.local_addr().unwrap(), b.identity().fingerprint());
        let accept = tokio::spawn(async move {
            let conn = b.quinn().accept().await.unwrap().await.unwrap();
            peer_fingerprint(&conn)
        });
        let conn = a.connect(b_addr, b_fp, ALPN_PEER, transport::peer()).unwrap().await.unwrap();
        assert_eq!(peer_fingerprint(&conn), Some(b_fp), "client sees the pinned server key");
        assert_eq!(accept.await.unwrap(), Some(a.identity().fingerprint()), "server sees the client's key");
    }

    #[tokio::test]
    async fn a_server_with_another_key_is_rejected() {
        let (a, b) = (endpoint(), endpoint());
        let b_addr = b.local_addr().unwrap();
        tokio::spawn(async move {
            while let Some(incoming) = b.quinn().accept().await {
                let _ = incoming.await;
            }
        });
        let expected = Identity::generate().unwrap().fingerprint();
        let err = a.connect(b_addr, expected, ALPN_PEER, transport::peer()).unwrap().await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("does not match the pinned") && text.contains(&expected.to_string()), "{text}");
    }

    #[tokio::test]
    async fn a_rendezvous_client_cannot_talk_to_a_peer_endpoint() {
        let (a, b) = (endpoint(), endpoint());
        let (b_addr, b_fp) = (b.local_addr().unwrap(), b.identity().fingerprint());
        tokio::spawn(async move {
            while let Some(incoming) = b.quinn().accept().await {
                let _ = incoming.await;
            }
        });
        let err = a.connect(b_addr, b_fp, boxer_proto::ALPN_RENDEZVOUS, transport::rendezvous()).unwrap().await;
        assert!(err.is_err(), "ALPN mismatch must fail the handshake");
    }
}
