//! Streams from peers: connect each to the exposed local port it names.

use std::sync::Arc;

use boxer_net::peers::InboundStream;
use boxer_net::proxy;
use boxer_proto::peer::StreamError;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info_span, warn};

use crate::node::Shared;

/// Takes every inbound stream and splices it to its local port.
pub(crate) async fn serve(shared: Arc<Shared>, mut inbound: mpsc::Receiver<InboundStream>) {
    while let Some(stream) = inbound.recv().await {
        let target = shared.exposed.lock().expect("exposed lock").get(&stream.header.dst_port).copied();
        let span = info_span!("inbound", peer = %stream.from, src = %stream.header.src, port = stream.header.dst_port);
        let Some(target) = target else {
            span.in_scope(|| debug!("refused: port not exposed"));
            proxy::refuse(stream.send, stream.recv, StreamError::Refused);
            continue;
        };
        tokio::spawn(
            async move {
                let tcp = match TcpStream::connect(target).await {
                    Ok(tcp) => tcp,
                    Err(e) => {
                        warn!(%target, "local connect failed: {e}");
                        proxy::refuse(stream.send, stream.recv, StreamError::Refused);
                        return;
                    }
                };
                let _ = tcp.set_nodelay(true);
                match proxy::splice(tcp, stream.send, stream.recv).await {
                    Ok(stats) => debug!(sent = stats.sent, received = stats.received, "closed"),
                    Err(e) => debug!("aborted: {e}"),
                }
            }
            .instrument(span),
        );
    }
}
