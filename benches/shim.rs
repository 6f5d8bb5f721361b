//! Shim benchmark, in an isolated network namespace with release binaries:
//!
//! * `connect()` latency to a peer whose QUIC connection already exists, and
//!   time to the first byte the server writes on accept (C probe, 2000 x);
//! * redis-benchmark SET/GET through the overlay vs direct on loopback.
//!
//! `cargo bench -p boxer-benches --bench shim`

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use boxer_e2e::*;

isolate_this_test_binary!();

fn main() -> anyhow::Result<()> {
    lab::require_isolation();
    let quick = !std::env::args().any(|a| a == "--bench");
    if !quick {
        // SAFETY: single-threaded at this point.
        unsafe { std::env::set_var(RELEASE_ENV, "1") };
    }
    let connects = if quick { 100 } else { 2000 };
    let requests = if quick { 2000 } else { 200_000 };

    let mut c = Cluster::start("bench")?;
    let probe = c.dir.path().join("probe");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/shim/probe.c");
    anyhow::ensure!(Command::new("cc").args(["-O2", "-o"]).arg(&probe).arg(&src).status()?.success(), "cc failed");
    let probe = probe.to_str().unwrap().to_owned();

    // connect() latency.
    let srv = c.node("srv", 0, &[&probe, "oneshot", "7601"])?;
    c.wait_listening(&srv, 7601)?;
    let cli = c.node("cli", 0, &[&probe, "bench", "srv-0", "7601", &connects.to_string()])?;
    let (code, overlay) = c.wait_exit(&cli, Duration::from_secs(300))?;
    anyhow::ensure!(code == Some(0), "probe bench failed: {}", read(&cli.stderr));
    let mut direct_server =
        Command::new(&probe).args(["oneshot", "7602"]).stdout(std::process::Stdio::null()).spawn()?;
    std::thread::sleep(Duration::from_millis(200));
    let direct = Command::new(&probe).args(["bench", "127.0.0.1", "7602", &connects.to_string()]).output()?;
    direct_server.kill()?;
    println!("connect() then first byte, {connects} connections (microseconds)");
    println!("  direct loopback: {}", String::from_utf8_lossy(&direct.stdout).trim());
    println!("  boxer overlay:   {}", overlay.trim());

    // redis-benchmark.
    let db = c.node(
        "db",
        0,
        &["redis-server", "--port", "7603", "--protected-mode", "no", "--save", "", "--appendonly", "no"],
    )?;
    c.wait_listening(&db, 7603)?;
    let args = format!("-q -n {requests} -c 50 -t set,get");
    let script = format!("redis-benchmark -h db-0 -p 7603 {args}");
    let bench = c.node("rb", 0, &["sh", "-c", &script])?;
    let (code, overlay) = c.wait_exit(&bench, Duration::from_secs(600))?;
    anyhow::ensure!(code == Some(0), "redis-benchmark failed: {}", read(&bench.stderr));
    let mut redis = Command::new("redis-server")
        .args(["--port", "7604", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let direct = Command::new("sh").args(["-c", &format!("redis-benchmark -h 127.0.0.1 -p 7604 {args}")]).output()?;
    redis.kill()?;
    println!("redis-benchmark {args}");
    println!("  direct loopback: {}", summarize(&String::from_utf8_lossy(&direct.stdout)));
    println!("  boxer overlay:   {}", summarize(&overlay));
    Ok(())
}

/// "SET: 81234.00 requests per second, p50=0.3 msec" lines, joined.
fn summarize(out: &str) -> String {
    out.split(['\n', '\r']).filter(|l| l.contains("requests per second")).map(str::trim).collect::<Vec<_>>().join(" | ")
}
