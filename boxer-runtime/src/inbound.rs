//! Streams from peers: connect each to the exposed local port it names.

use std::sync::Arc;

use boxer_net::peers::InboundStream;
use boxer_net::proxy;
use boxer_proto::peer::StreamError;
use std::net::SocketAddr;

use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info_span, warn};

use crate::node::Shared;

/// Takes every inbound stream and splices it to its local port.
pub(crate) async fn serve(shared: Arc<Shared>, mut inbound: mpsc::Receiver<InboundStream>) {
    while let Some(stream) = inbound.recv().await {
        let span = info_span!("inbound", peer = %stream.from, src = %stream.header.src, port = stream.header.dst_port);
        // The sender must still be a member, and may only claim its own
        // overlay address as the source (apps may trust it for access control).
        let sender_ip = shared.membership.borrow().get(stream.from).map(|m| m.overlay_ip);
        if sender_ip != Some(*stream.header.src.ip()) {
            span.in_scope(|| match sender_ip {
                None => warn!("refused: the sender is no longer a member"),
                Some(ip) => warn!(%ip, "refused: the sender claims another node's address"),
            });
            proxy::refuse(stream.send, stream.recv, StreamError::Protocol);
            continue;
        }
        let target = shared.exposed.lock().expect("exposed lock").get(&stream.header.dst_port).copied();
        let Some(target) = target else {
            span.in_scope(|| debug!("refused: port not exposed"));
            proxy::refuse(stream.send, stream.recv, StreamError::Refused);
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(
            async move {
                let (tcp, local_port) = match connect_local(&shared, target, stream.header.src).await {
                    Ok(x) => x,
                    Err(e) => {
                        warn!(%target, "local connect failed: {e}");
                        proxy::refuse(stream.send, stream.recv, StreamError::Refused);
                        if e.kind() == std::io::ErrorKind::ConnectionRefused {
                            // The app's listener is gone: stop announcing it.
                            shared.unlisten(stream.header.dst_port).await;
                        }
                        return;
                    }
                };
                let _ = tcp.set_nodelay(true);
                match proxy::splice(tcp, stream.send, stream.recv).await {
                    Ok(stats) => debug!(sent = stats.sent, received = stats.received, "closed"),
                    Err(e) => debug!("aborted: {e}"),
                }
                shared.registry.lock().expect("registry lock").end_inbound(local_port);
            }
            .instrument(span),
        );
    }
}

/// Connects to the app from the node's loopback address, so the shim in the
/// app recognises the connection and reports its overlay peer `src`. The
/// registration comes first: the app may `accept` before `connect` returns.
async fn connect_local(
    shared: &Shared,
    target: SocketAddr,
    src: std::net::SocketAddrV4,
) -> std::io::Result<(TcpStream, u16)> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((shared.loopback, 0)))?;
    let port = socket.local_addr()?.port();
    shared.registry.lock().expect("registry lock").inbound(port, src);
    match socket.connect(target).await {
        Ok(tcp) => Ok((tcp, port)),
        Err(e) => {
            shared.registry.lock().expect("registry lock").end_inbound(port);
            Err(e)
        }
    }
}
