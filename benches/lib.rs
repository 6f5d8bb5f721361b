//! Shared harness of Boxer's benchmarks: an in-process rendezvous and nodes,
//! each on its own thread with its own current-thread runtime (as each is its
//! own process in real use), plus plain-TCP reference servers.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use boxer_net::rendezvous::RendezvousAddr;
use boxer_proto::control::CreateClusterRequest;
use boxer_runtime::{ForwardSpec, Node, NodeConfig};
use rendezvous::{Config, Rendezvous};

/// Cluster name used by benchmarks.
pub const CLUSTER: &str = "bench";

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

/// Starts a rendezvous on loopback with a cluster; returns its address and
/// the cluster's join token.
pub fn start_rendezvous(state_dir: &std::path::Path) -> anyhow::Result<(RendezvousAddr, String)> {
    let (tx, rx) = mpsc::channel();
    let state_dir = state_dir.to_owned();
    std::thread::spawn(move || {
        current_thread().block_on(async move {
            let server = Rendezvous::bind(Config {
                listen: (Ipv4Addr::LOCALHOST, 0).into(),
                state_dir,
                admin_token: Some("bench-admin".into()),
                socket: None,
                persist: false,
                limits: ::rendezvous::limits::Limits::default(),
            });
            let server = match server {
                Ok(s) => s,
                Err(e) => return tx.send(Err(anyhow::anyhow!(e))).unwrap(),
            };
            let info = server.registry().lock().expect("registry").create_cluster(CreateClusterRequest {
                admin_token: "bench-admin".into(),
                name: CLUSTER.into(),
                network: None,
                join_token: None,
            });
            let addr = RendezvousAddr { addr: server.local_addr().unwrap(), fingerprint: server.fingerprint() };
            tx.send(info.map(|i| (addr, i.join_token)).map_err(|e| anyhow::anyhow!(e))).unwrap();
            server.run().await;
        })
    });
    rx.recv().context("rendezvous thread died")?
}

/// Starts a node on its own thread; returns once it has joined.
pub fn start_node(
    rendezvous: RendezvousAddr,
    token: &str,
    service: &str,
    forwards: Vec<ForwardSpec>,
    expose: Vec<u16>,
) -> anyhow::Result<()> {
    let config = NodeConfig {
        rendezvous,
        cluster: CLUSTER.into(),
        join_token: token.into(),
        service: service.into(),
        index: 0,
        bind: (Ipv4Addr::LOCALHOST, 0).into(),
        forwards,
        expose,
        status_file: None,
        run_dir: None,
        shared_namespace: false,
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        current_thread().block_on(async move {
            match Node::start(config).await {
                Ok(node) => {
                    tx.send(Ok(())).unwrap();
                    node.stopped().await;
                }
                Err(e) => tx.send(Err(anyhow::anyhow!(e))).unwrap(),
            }
        })
    });
    rx.recv().context("node thread died")?
}

/// A TCP server that reads and discards everything, then closes.
pub fn sink_server() -> SocketAddr {
    serve(|mut c| {
        let mut buf = vec![0u8; 256 << 10];
        while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
    })
}

/// A TCP server that answers every `REQ`-byte message with `REQ` bytes.
pub fn echo_server(req: usize) -> SocketAddr {
    serve(move |mut c| {
        let _ = c.set_nodelay(true);
        let mut buf = vec![0u8; req];
        while c.read_exact(&mut buf).is_ok() {
            if c.write_all(&buf).is_err() {
                break;
            }
        }
    })
}

fn serve(handler: impl Fn(TcpStream) + Send + Sync + Copy + 'static) -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for c in listener.incoming().flatten() {
            std::thread::spawn(move || handler(c));
        }
    });
    addr
}

/// Sends `bytes` to `addr` on one connection; returns Gbit/s.
pub fn throughput(addr: SocketAddr, bytes: usize) -> anyhow::Result<f64> {
    let mut c = TcpStream::connect(addr)?;
    let buf = vec![0x5au8; 256 << 10];
    let start = Instant::now();
    let mut sent = 0;
    while sent < bytes {
        let n = buf.len().min(bytes - sent);
        c.write_all(&buf[..n])?;
        sent += n;
    }
    c.shutdown(Shutdown::Write)?;
    // The sink closes after reading everything: wait for that so the time
    // covers delivery, not just the local send buffer.
    let _ = c.read(&mut [0u8; 1]);
    Ok(bytes as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9)
}

/// Request/response round trips of `req` bytes on one connection; returns
/// the sorted latencies.
pub fn round_trips(addr: SocketAddr, req: usize, count: usize) -> anyhow::Result<Vec<Duration>> {
    let mut c = TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    let mut buf = vec![7u8; req];
    // Warm up: first-contact costs are not what this measures.
    for _ in 0..100 {
        c.write_all(&buf)?;
        c.read_exact(&mut buf)?;
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        c.write_all(&buf)?;
        c.read_exact(&mut buf)?;
        out.push(t.elapsed());
    }
    out.sort();
    Ok(out)
}

/// The `p`-th percentile (0-100) of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p / 100.0).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}
