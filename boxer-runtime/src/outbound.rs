//! The loopback proxy: app sockets redirected by the shim arrive here and are
//! carried to their registered overlay destination.

use std::net::SocketAddrV4;
use std::sync::Arc;

use boxer_net::proxy;
use boxer_proto::peer::StreamHeader;
use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug, info_span, warn};

use crate::node::Shared;

/// Accepts redirected app connections forever.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let (tcp, from) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!("loopback proxy accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let claimed = shared.registry.lock().expect("registry lock").claim(from.port());
        let Some(pending) = claimed else {
            warn!(%from, "connection to the loopback proxy without a registration; closing");
            proxy::abort_tcp(tcp);
            continue;
        };
        let span = info_span!("connect", src_port = from.port(), dst = %pending.dst, peer = %pending.peer);
        tokio::spawn(carry(shared.clone(), tcp, from.port(), pending.peer, pending.dst).instrument(span));
    }
}

async fn carry(shared: Arc<Shared>, tcp: TcpStream, src_port: u16, peer: boxer_proto::NodeId, dst: SocketAddrV4) {
    let _ = tcp.set_nodelay(true);
    let header = StreamHeader { dst_port: dst.port(), src: SocketAddrV4::new(shared.joined.overlay_ip, src_port) };
    match shared.peers.open_stream(peer, header).await {
        Ok((send, recv)) => match proxy::splice(tcp, send, recv).await {
            Ok(stats) => debug!(sent = stats.sent, received = stats.received, "closed"),
            Err(e) => debug!("aborted: {e}"),
        },
        Err(e) => {
            warn!("{e}");
            proxy::abort_tcp(tcp);
        }
    }
    shared.registry.lock().expect("registry lock").end_outbound(src_port);
}
