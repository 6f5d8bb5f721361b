//! The control socket the shim talks to: one request per connection, from
//! processes of this node only (see [`crate::caller`]).

use std::net::{SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use boxer_proto::shim::{ShimRequest, ShimResponse};
use boxer_proto::{Hello, frame, names};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use crate::caller;
use crate::node::Shared;

/// Time a shim connection has to send its request; the shim writes it at once.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Refused callers logged at `warn`; later ones at `debug`, so a process
/// hammering the socket cannot flood the node's log.
const REFUSALS_WARNED: u32 = 20;

/// Control connections served at once. The shim's requests take
/// microseconds and each process makes one at a time, so this is far above
/// real use; it bounds the descriptors and tasks a process flooding the
/// socket can take from the runtime (the socket's name is visible in
/// `/proc/net/unix` to everyone in the namespace). Connections beyond it are
/// closed at once (the shim then reports the runtime unreachable).
const MAX_CONTROL_CONNECTIONS: usize = 128;

/// Serves the control socket until the listener fails.
pub(crate) async fn serve(shared: Arc<Shared>, listener: UnixListener, name: String) {
    let refusals = Arc::new(AtomicU32::new(0));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONTROL_CONNECTIONS));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    debug!("control socket: {MAX_CONTROL_CONNECTIONS} requests in progress; closing a new one");
                    continue;
                };
                let shared = shared.clone();
                let refusals = refusals.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let denied = match stream.peer_cred() {
                        Ok(cred) => caller::check_descends(Path::new("/proc"), cred.pid(), std::process::id() as i32)
                            .err()
                            .map(|e| e.to_string()),
                        Err(e) => Some(format!("cannot tell who is calling (SO_PEERCRED: {e})")),
                    };
                    if let Some(why) = &denied {
                        if refusals.fetch_add(1, Ordering::Relaxed) < REFUSALS_WARNED {
                            warn!("control socket: refused a request: {why}");
                        } else {
                            debug!("control socket: refused a request: {why}");
                        }
                    }
                    if let Err(e) = answer(&shared, stream, denied).await {
                        debug!("control request failed: {e}");
                    }
                });
            }
            Err(e) => {
                warn!("control socket {name}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(
    shared: &Shared,
    mut stream: UnixStream,
    denied: Option<String>,
) -> Result<(), boxer_proto::FrameError> {
    if let Some(why) = denied {
        // Nothing of a refused caller is read: the answer goes out at once
        // (the shim wrote its request already and reads after it).
        let mut out = frame::encode(&Hello::current())?;
        frame::encode_into(&ShimResponse::Denied(why), &mut out)?;
        tokio::io::AsyncWriteExt::write_all(&mut stream, &out).await?;
        return Ok(());
    }
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
                drop(membership);
                shared.registry.lock().expect("registry lock").self_connect(src.port());
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
            shared.registry.lock().expect("registry lock").listening(port);
            shared.listen(port, SocketAddr::from((shared.loopback, port))).await;
            ShimResponse::Ok
        }
        ShimRequest::Lookup { local, peer } => {
            match shared.registry.lock().expect("registry lock").lookup(me.overlay_ip, local.port(), peer.port()) {
                Some(addr) => ShimResponse::Peer(addr),
                None => ShimResponse::Unknown,
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
        ShimRequest::UdpFlow { src_port, dst } => crate::udp::answer_flow(shared, src_port, dst),
        ShimRequest::UdpPeer { port } => crate::udp::answer_peer(shared, port),
    }
}
