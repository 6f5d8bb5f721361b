//! Overlay UDP between two nodes in this process, on loopback: an app
//! socket on each node's loopback address, the flow sockets the control
//! requests hand out, QUIC datagrams between the runtimes, and back.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use boxer_net::rendezvous::RendezvousAddr;
use boxer_proto::control::CreateClusterRequest;
use boxer_proto::shim::{ShimRequest, ShimResponse};
use rendezvous::{Config, Rendezvous};
use tokio::net::UdpSocket;
use tokio::time::timeout;

use super::flows::FlowKey;
use crate::control;
use crate::{Node, NodeConfig};

/// The cluster [`start_rendezvous`] creates.
pub(crate) const CLUSTER: &str = "udp";
const ADMIN: &str = "udp-test-admin";

/// Generous bound for anything that should take milliseconds.
const PATIENCE: Duration = Duration::from_secs(10);

/// A scratch directory removed on drop.
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An in-process rendezvous on loopback with cluster [`CLUSTER`]; its
/// address and the cluster's join token.
pub(crate) async fn start_rendezvous(dir: &Scratch) -> (RendezvousAddr, String) {
    let server = Rendezvous::bind(Config {
        listen: (Ipv4Addr::LOCALHOST, 0).into(),
        state_dir: dir.0.clone(),
        admin_token: Some(ADMIN.into()),
        socket: None,
        persist: false,
        limits: ::rendezvous::limits::Limits::default(),
    })
    .expect("rendezvous binds");
    let info = server
        .registry()
        .lock()
        .expect("registry")
        .create_cluster(CreateClusterRequest {
            admin_token: ADMIN.into(),
            name: CLUSTER.into(),
            network: None,
            join_token: None,
        })
        .expect("cluster created");
    let addr = RendezvousAddr { addr: server.local_addr().expect("addr"), fingerprint: server.fingerprint() };
    tokio::spawn(server.run());
    (addr, info.join_token)
}

async fn start_node(rendezvous: RendezvousAddr, token: &str, service: &str) -> Node {
    Node::start(NodeConfig {
        rendezvous,
        cluster: CLUSTER.into(),
        join_token: token.into(),
        service: service.into(),
        index: 0,
        bind: (Ipv4Addr::LOCALHOST, 0).into(),
        forwards: Vec::new(),
        expose: Vec::new(),
        status_file: None,
        run_dir: None,
        shared_namespace: false,
    })
    .await
    .expect("node joins")
}

async fn ask(node: &Node, request: ShimRequest) -> ShimResponse {
    control::handle(node.shared(), request).await
}

async fn flow(node: &Node, src_port: u16, dst: SocketAddrV4) -> SocketAddrV4 {
    match ask(node, ShimRequest::UdpFlow { src_port, dst }).await {
        ShimResponse::Proxy(addr) => addr,
        other => panic!("UdpFlow answered {other:?}"),
    }
}

fn v4(addr: SocketAddr) -> SocketAddrV4 {
    match addr {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(a) => panic!("IPv6 address {a}"),
    }
}

/// Sends `payload` to `to` until `socket` receives something; returns what
/// it received and from where. The first datagrams wait for the peer
/// connection and may be lost.
async fn exchange(from: &UdpSocket, to: SocketAddrV4, socket: &UdpSocket, payload: &[u8]) -> (Vec<u8>, SocketAddrV4) {
    let mut buf = vec![0u8; 65_536];
    let mut sent = 0;
    let attempt = async {
        loop {
            from.send_to(payload, to).await.expect("send");
            sent += 1;
            if let Ok(Ok((n, src))) = timeout(Duration::from_millis(300), socket.recv_from(&mut buf)).await {
                return (buf[..n].to_vec(), v4(src));
            }
        }
    };
    let got = timeout(PATIENCE, attempt).await.expect("datagram delivered");
    // The copies sent again while the path was being set up may still
    // arrive: take them now, or the next read of `socket` would get one.
    for _ in 1..sent {
        let _ = timeout(Duration::from_secs(1), socket.recv_from(&mut buf)).await;
    }
    got
}

async fn recv(socket: &UdpSocket) -> (Vec<u8>, SocketAddrV4) {
    let mut buf = vec![0u8; 65_536];
    let (n, src) = timeout(PATIENCE, socket.recv_from(&mut buf)).await.expect("datagram in time").expect("recv");
    (buf[..n].to_vec(), v4(src))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_cross_between_two_nodes_and_back() {
    let dir = Scratch(std::env::temp_dir().join(format!("boxer-udp-test-{}", std::process::id())));
    let (rendezvous, token) = start_rendezvous(&dir).await;
    let a = start_node(rendezvous, &token, "a").await;
    let b = start_node(rendezvous, &token, "b").await;
    for node in [&a, &b] {
        let mut membership = node.membership();
        timeout(PATIENCE, membership.wait_for(|m| m.len() == 2)).await.expect("both members").expect("feed");
    }
    let (ip_a, ip_b) = (a.joined().overlay_ip, b.joined().overlay_ip);
    let (la, lb) = (a.shared().loopback, b.shared().loopback);
    let app_a = UdpSocket::bind((la, 0)).await.expect("bind app a");
    let app_b = UdpSocket::bind((lb, 0)).await.expect("bind app b");
    let x = app_a.local_addr().expect("addr").port();
    let pb = app_b.local_addr().expect("addr").port();

    // The node's own address goes straight to the local port; an address
    // nobody has is unreachable; a port no flow has is unknown.
    let own = ask(&a, ShimRequest::UdpFlow { src_port: x, dst: SocketAddrV4::new(ip_a, 9) }).await;
    assert_eq!(own, ShimResponse::Proxy(SocketAddrV4::new(la, 9)));
    let nobody = SocketAddrV4::new(Ipv4Addr::from(u32::from(ip_b) + 100), 9);
    assert_eq!(ask(&a, ShimRequest::UdpFlow { src_port: x, dst: nobody }).await, ShimResponse::Unreachable);
    assert_eq!(ask(&a, ShimRequest::UdpPeer { port: pb }).await, ShimResponse::Unknown);

    // A's app sends to B's app through its flow socket; asking again gives
    // the same socket.
    let to_b = SocketAddrV4::new(ip_b, pb);
    let fa = flow(&a, x, to_b).await;
    assert_eq!(*fa.ip(), la);
    assert_eq!(flow(&a, x, to_b).await, fa);
    assert_eq!(ask(&a, ShimRequest::UdpPeer { port: fa.port() }).await, ShimResponse::Peer(to_b));
    let (got, fb) = exchange(&app_a, fa, &app_b, b"hello").await;
    assert_eq!(got, b"hello");
    assert_eq!(*fb.ip(), lb, "delivered from B's flow socket");

    // A datagram to a port of B where no socket is (checked at the end).
    let closed_port = std::net::UdpSocket::bind((lb, 0)).expect("bind").local_addr().expect("addr").port();
    let to_closed = flow(&a, x, SocketAddrV4::new(ip_b, closed_port)).await;
    app_a.send_to(b"nobody", to_closed).await.expect("send");

    // B's app sees the datagram come from A's app, and its reply to that
    // address takes the same flow.
    let from_a = SocketAddrV4::new(ip_a, x);
    assert_eq!(ask(&b, ShimRequest::UdpPeer { port: fb.port() }).await, ShimResponse::Peer(from_a));
    assert_eq!(flow(&b, pb, from_a).await, fb);
    app_b.send_to(b"world", fb).await.expect("send reply");
    assert_eq!(recv(&app_a).await, (b"world".to_vec(), fa));

    // A wildcard-bound app socket connected to its flow sends from
    // 127.0.0.1 and then accepts only datagrams to 127.0.0.1: replies go
    // there.
    let app_c = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind app c");
    let xc = app_c.local_addr().expect("addr").port();
    let fc = flow(&a, xc, to_b).await;
    assert_ne!(fc, fa);
    app_c.connect(fc).await.expect("connect to the flow");
    let (got, fbc) = exchange(&app_c, fc, &app_b, b"from 127.0.0.1").await;
    assert_eq!(got, b"from 127.0.0.1");
    app_b.send_to(b"back to 127.0.0.1", fbc).await.expect("send reply");
    assert_eq!(recv(&app_c).await, (b"back to 127.0.0.1".to_vec(), fc));

    // A flow whose task ends by itself (a failed socket) leaves the table:
    // asking again opens a working flow on another port.
    let pair_c = FlowKey { local_port: xc, remote: to_b };
    let flow_c = a.shared().udp.existing(&pair_c, Instant::now()).expect("open flow");
    flow_c.task().expect("task").abort();
    let gone = async {
        while a.shared().udp.existing(&pair_c, Instant::now()).is_some() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    timeout(PATIENCE, gone).await.expect("flow closed when its task ended");
    assert!(flow_c.is_closed());
    assert_ne!(flow(&a, xc, to_b).await, fc);

    // The largest UDP datagram, in fragments, both ways.
    let big: Vec<u8> = (0..boxer_proto::peer::MAX_UDP_PAYLOAD).map(|i| (i % 251) as u8).collect();
    app_a.send_to(&big, fa).await.expect("send big");
    assert_eq!(recv(&app_b).await, (big.clone(), fb));
    app_b.send_to(&big, fb).await.expect("send big back");
    assert_eq!(recv(&app_a).await, (big, fa));

    // A datagram from another socket of A is not the app's: dropped.
    let stranger = UdpSocket::bind((la, 0)).await.expect("bind stranger");
    stranger.send_to(b"intruder", fa).await.expect("send");
    app_a.send_to(b"after", fa).await.expect("send");
    assert_eq!(recv(&app_b).await.0, b"after");

    // A burst of small datagrams arrives nearly whole.
    const BURST: usize = 1000;
    let received = Arc::new(AtomicUsize::new(0));
    let counter = {
        let received = received.clone();
        let app_b = Arc::new(app_b);
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok(Ok((n, _))) = timeout(Duration::from_secs(2), app_b.recv_from(&mut buf)).await {
                assert_eq!(n, 200);
                if received.fetch_add(1, Ordering::Relaxed) + 1 == BURST {
                    return;
                }
            }
        })
    };
    for i in 0..BURST {
        app_a.send_to(&[i as u8; 200], fa).await.expect("send burst");
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    timeout(PATIENCE, counter).await.expect("burst counted").expect("counter task");
    let received = received.load(Ordering::Relaxed);
    assert!(received * 100 >= BURST * 99, "only {received} of {BURST} datagrams arrived");

    // The datagram to a closed port opened no flow on B: a peer cannot fill
    // B's table by spraying ports.
    let refused = FlowKey { local_port: closed_port, remote: SocketAddrV4::new(ip_a, x) };
    assert!(b.shared().udp.existing(&refused, Instant::now()).is_none(), "no flow for a closed port");

    // A stopped node opens no flows (nothing would close them).
    a.shutdown().await;
    let late = ask(&a, ShimRequest::UdpFlow { src_port: x, dst: to_b }).await;
    assert_eq!(late, ShimResponse::Error("the node is stopping".into()));

    // When A leaves, B closes its flows to A; they linger: the flow
    // socket's port still names A's app (a datagram still queued for B's
    // app keeps its true source), and its socket stays bound.
    let pair = FlowKey { local_port: pb, remote: from_a };
    let closed = async {
        while b.shared().udp.existing(&pair, Instant::now()).is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    timeout(PATIENCE, closed).await.expect("flow closed after the peer left");
    assert_eq!(ask(&b, ShimRequest::UdpPeer { port: fb.port() }).await, ShimResponse::Peer(from_a));
    assert!(std::net::UdpSocket::bind(fb).is_err(), "a lingering flow keeps its port");
    b.shutdown().await;
}
