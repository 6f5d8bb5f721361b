//! `--forward` listeners: local TCP connections carried to a port on a node.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;

use boxer_net::proxy;
use boxer_proto::peer::StreamHeader;
use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::ForwardSpec;
use crate::node::Shared;

/// Accepts on `listener` forever, carrying each connection to the target.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener, spec: ForwardSpec) {
    info!(listen = %spec.listen, target = %spec.target, port = spec.port, "forwarding");
    loop {
        let (tcp, from) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                warn!("accept on {} failed: {e}", spec.listen);
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let span = info_span!("forward", %from, target = %spec.target, port = spec.port);
        tokio::spawn(carry(shared.clone(), tcp, from, spec.clone()).instrument(span));
    }
}

async fn carry(shared: Arc<Shared>, tcp: TcpStream, from: SocketAddr, spec: ForwardSpec) {
    let _ = tcp.set_nodelay(true);
    let peer = {
        let membership = shared.membership.borrow();
        membership.resolve(&spec.target).and_then(|m| m.first().map(|m| m.node_id))
    };
    let Some(peer) = peer else {
        warn!("no member named {:?}; closing the connection", spec.target);
        return proxy::abort_tcp(tcp);
    };
    let header = StreamHeader { dst_port: spec.port, src: SocketAddrV4::new(shared.joined.overlay_ip, from.port()) };
    let (send, recv) = match shared.peers.open_stream(peer, header).await {
        Ok(s) => s,
        Err(e) => {
            warn!("{e}");
            return proxy::abort_tcp(tcp);
        }
    };
    match proxy::splice(tcp, send, recv).await {
        Ok(stats) => debug!(sent = stats.sent, received = stats.received, "closed"),
        Err(e) => debug!("aborted: {e}"),
    }
}
