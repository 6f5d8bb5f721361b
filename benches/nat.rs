//! NAT-lab benchmark, with release binaries: for a pair of nodes behind
//! port-restricted NATs (punched, direct) and behind symmetric NATs
//! (relayed through the rendezvous):
//!
//! * first contact: from a node's first `connect()` to a never-contacted
//!   peer until the first byte that peer's server writes arrives (punch +
//!   QUIC handshake + stream), once per fresh peer;
//! * bulk throughput of one connection, one direction.
//!
//! `cargo bench -p boxer-benches --bench nat` (BOXER_BENCH_BYTES changes the
//! bulk size, BOXER_BENCH_PEERS the number of fresh peers).

use std::time::{Duration, Instant};

use boxer_e2e::natlab::*;
use boxer_e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

isolate_this_test_binary!();

/// Port each server node exposes: writes one byte, then a bulk stream.
const SERVICE_PORT: u16 = 9000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// On accept: one byte at once, then `bulk` bytes.
async fn server(bulk: usize) {
    let listener = tokio::net::TcpListener::bind(local(SERVICE_PORT)).await.expect("bind");
    while let Ok((mut s, _)) = listener.accept().await {
        tokio::spawn(async move {
            let _ = s.set_nodelay(true);
            if s.write_all(b"!").await.is_err() {
                return;
            }
            let chunk = vec![0x5au8; 256 << 10];
            let mut left = bulk;
            while left > 0 {
                let n = left.min(chunk.len());
                if s.write_all(&chunk[..n]).await.is_err() {
                    return;
                }
                left -= n;
            }
        });
    }
}

struct Scenario {
    label: &'static str,
    nat: NatKind,
}

fn main() -> anyhow::Result<()> {
    lab::require_isolation();
    let quick = !std::env::args().any(|a| a == "--bench");
    if !quick {
        // SAFETY: single-threaded at this point.
        unsafe { std::env::set_var(RELEASE_ENV, "1") };
    }
    let bulk = env_usize("BOXER_BENCH_BYTES", if quick { 4 << 20 } else { 1 << 30 });
    let peers = env_usize("BOXER_BENCH_PEERS", if quick { 2 } else { 8 });
    for scenario in [
        Scenario { label: "direct (punched, moderate NATs)", nat: NatKind::Moderate },
        Scenario { label: "relayed (symmetric NATs)", nat: NatKind::Strict },
    ] {
        run(&scenario, bulk, peers)?;
    }
    Ok(())
}

fn run(scenario: &Scenario, bulk: usize, peers: usize) -> anyhow::Result<()> {
    let name = if scenario.nat == NatKind::Strict { "bench-relayed" } else { "bench-direct" };
    let mut c = LabCluster::start(name)?;
    let client_device = c.device("client-0", NatOptions::new(scenario.nat))?;
    let mut forwards = Vec::new();
    for i in 0..peers {
        let device = c.device(&format!("server-{i}"), NatOptions::new(scenario.nat))?;
        c.spawn_in(&device, move || server(bulk))?;
        c.node(name, device, "server", i as u32, &["--expose", &SERVICE_PORT.to_string()])?;
        forwards.push(format!("127.0.0.1:{}=server-{i}:{SERVICE_PORT}", 7000 + i));
    }
    let args: Vec<String> = forwards.iter().flat_map(|f| ["--forward".to_owned(), f.clone()]).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let client = c.node(name, client_device, "client", 0, &args)?;
    for i in 0..peers {
        c.wait_listening(&client, &format!("server-{i}"), SERVICE_PORT)?;
    }
    let (firsts, throughput) = c.run_in(&client.device, move || async move {
        let mut firsts = Vec::new();
        let mut throughput = 0.0;
        for i in 0..peers {
            let start = Instant::now();
            let mut s = tokio::net::TcpStream::connect(local(7000 + i as u16)).await?;
            let mut byte = [0u8; 1];
            s.read_exact(&mut byte).await?;
            firsts.push(start.elapsed());
            if i == 0 {
                let start = Instant::now();
                let mut buf = vec![0u8; 256 << 10];
                let mut got = 0;
                while got < bulk {
                    let n = s.read(&mut buf).await?;
                    anyhow::ensure!(n > 0, "stream ended after {got} of {bulk} bytes");
                    got += n;
                }
                throughput = (bulk as f64 * 8.0) / start.elapsed().as_secs_f64() / 1e9;
            }
        }
        Ok((firsts, throughput))
    })?;
    let path = c.path(&client, "server-0")?;
    let mut sorted = firsts.clone();
    sorted.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("{}: path {path}", scenario.label);
    println!(
        "  first contact, connect() to first byte, {} fresh peers: p50 {:.1} ms, min {:.1} ms, max {:.1} ms",
        sorted.len(),
        ms(sorted[sorted.len() / 2]),
        ms(sorted[0]),
        ms(sorted[sorted.len() - 1])
    );
    println!("  bulk, one connection, {} MiB: {throughput:.2} Gbit/s", bulk >> 20);
    Ok(())
}
