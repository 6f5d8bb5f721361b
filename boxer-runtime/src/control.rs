//! The control socket the shim talks to: one request per connection.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use boxer_proto::shim::{ShimRequest, ShimResponse};
use boxer_proto::{Hello, frame, names};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use crate::node::Shared;

/// Time a shim connection has to send its request; the shim writes it at once.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the control socket until the listener fails.
pub(crate) async fn serve(shared: Arc<Shared>, listener: UnixListener, path: PathBuf) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(&shared, stream).await {
                        debug!("control request failed: {e}");
                    }
                });
            }
            Err(e) => {
                warn!("control socket {}: {e}", path.display());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(shared: &Shared, mut stream: UnixStream) -> Result<(), boxer_proto::FrameError> {
    let read = async {
        let hello: Hello = frame::read(&mut stream).await?;
        let request = match hello.check() {
            Ok(()) => Some(frame::read::<ShimRequest, _>(&mut stream).await?),
            Err(e) => {
                warn!("shim: {e}");
                None
            }
        };
        Ok::<_, boxer_proto::FrameError>(request)
    };
    let request = tokio::time::timeout(REQUEST_TIMEOUT, read).await.map_err(|_| boxer_proto::FrameError::Closed)??;
    let response = match request {
        Some(r) => handle(shared, r).await,
        None => ShimResponse::Error("protocol version mismatch".into()),
    };
    let mut out = frame::encode(&Hello::current())?;
    frame::encode_into(&response, &mut out)?;
    tokio::io::AsyncWriteExt::write_all(&mut stream, &out).await?;
    Ok(())
}

/// Answers one shim request from membership and the registries.
pub(crate) async fn handle(shared: &Shared, request: ShimRequest) -> ShimResponse {
    let me = &shared.joined;
    match request {
        ShimRequest::Connect { src, dst } => {
            let membership = shared.membership.borrow();
            let Some(member) = membership.by_ip(*dst.ip()) else { return ShimResponse::Unreachable };
            if member.node_id == me.node_id {
                return ShimResponse::Proxy(SocketAddrV4::new(shared.loopback, dst.port()));
            }
            if !member.listening.contains(&dst.port()) {
                return ShimResponse::Refused;
            }
            let peer = member.node_id;
            drop(membership);
            shared.registry.lock().expect("registry lock").register(src.port(), peer, dst);
            ShimResponse::Proxy(shared.proxy_addr)
        }
        ShimRequest::Listen { port } => {
            shared.listen(port, SocketAddr::from((shared.loopback, port))).await;
            ShimResponse::Ok
        }
        ShimRequest::Lookup { local, peer } => {
            match shared.registry.lock().expect("registry lock").lookup(local.port(), peer.port()) {
                Some(addr) => ShimResponse::Peer(addr),
                None => ShimResponse::NotBoxer,
            }
        }
        ShimRequest::Resolve { name } => {
            let membership = shared.membership.borrow();
            match membership.resolve(&name) {
                Some(found) if !found.is_empty() => {
                    ShimResponse::Addresses(found.iter().map(|m| m.overlay_ip).collect())
                }
                // A qualified name of our cluster that matches nobody is
                // authoritatively absent; a bare label may be a real host.
                Some(_)
                    if name.trim_end_matches('.').to_ascii_lowercase().ends_with(&format!(
                        ".{}.{}",
                        membership.cluster(),
                        names::DOMAIN
                    )) =>
                {
                    ShimResponse::NotFound
                }
                _ => ShimResponse::NotBoxer,
            }
        }
        ShimRequest::Reverse { ip } => {
            let membership = shared.membership.borrow();
            let names = membership
                .by_ip(ip)
                .map(|m| names::all_names(&m.service, m.index, m.node_id.0, membership.cluster()))
                .unwrap_or_default();
            ShimResponse::Names(names)
        }
    }
}
