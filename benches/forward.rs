//! Forward-path benchmark: bulk throughput and request/response round trips
//! through two runtimes (TCP -> runtime -> QUIC -> runtime -> TCP) on
//! loopback, against plain TCP on loopback.
//!
//! `cargo bench -p boxer-benches --bench forward` (env BOXER_BENCH_BYTES,
//! BOXER_BENCH_RTTS to change the sizes).

use std::net::SocketAddr;

use boxer_benches::*;
use boxer_runtime::ForwardSpec;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes --bench; `cargo test --benches` runs this quickly.
    let quick = !std::env::args().any(|a| a == "--bench");
    let bytes = env_usize("BOXER_BENCH_BYTES", if quick { 8 << 20 } else { 4 << 30 });
    let rtts = env_usize("BOXER_BENCH_RTTS", if quick { 200 } else { 20_000 });
    const REQ: usize = 64;

    let state = std::env::temp_dir().join(format!("boxer-bench-{}", std::process::id()));
    let (rendezvous, token) = start_rendezvous(&state)?;
    let sink = sink_server();
    let echo = echo_server(REQ);
    let (sink_fwd, echo_fwd) = (free_port(), free_port());
    let forwards = vec![
        ForwardSpec { listen: ([127, 0, 0, 1], sink_fwd).into(), target: "server-0".into(), port: sink.port() },
        ForwardSpec { listen: ([127, 0, 0, 1], echo_fwd).into(), target: "server-0".into(), port: echo.port() },
    ];
    start_node(rendezvous, &token, "server", vec![], vec![sink.port(), echo.port()])?;
    start_node(rendezvous, &token, "client", forwards, vec![])?;
    let via = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));

    // Establish the peer connection before measuring.
    round_trips(via(echo_fwd), REQ, 10)?;

    println!("forward path on loopback, one connection ({} MiB bulk, {rtts} x {REQ}-byte round trips)", bytes >> 20);
    let direct_bulk = throughput(sink, bytes)?;
    let boxer_bulk = throughput(via(sink_fwd), bytes)?;
    println!("{:<28} {:>10} {:>10}", "bulk throughput (Gbit/s)", "direct", "boxer");
    println!("{:<28} {:>10.2} {:>10.2}", "", direct_bulk, boxer_bulk);

    let direct = round_trips(echo, REQ, rtts)?;
    let boxer = round_trips(via(echo_fwd), REQ, rtts)?;
    println!("{:<28} {:>10} {:>10} {:>10}", "round trip (us)", "direct", "boxer", "added");
    for p in [50.0, 90.0, 99.0] {
        let (d, b) = (percentile(&direct, p), percentile(&boxer, p));
        println!(
            "{:<28} {:>10.1} {:>10.1} {:>10.1}",
            format!("  p{p}"),
            d.as_secs_f64() * 1e6,
            b.as_secs_f64() * 1e6,
            (b.as_secs_f64() - d.as_secs_f64()) * 1e6
        );
    }
    let _ = std::fs::remove_dir_all(state);
    Ok(())
}
