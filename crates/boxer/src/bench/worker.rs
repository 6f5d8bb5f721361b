//! The programs `boxer bench` runs on the lab's devices
//! (`boxer bench-worker …`, hidden from `--help`): a server, a client that
//! measures one path, and a mesh member for the elasticity run.
//!
//! They are ordinary programs with blocking std sockets and real tools
//! (iperf3, redis-server, redis-benchmark) as children. On a Boxer node they
//! run under the shim as the node's program, unmodified; on the direct and
//! Nebula paths they run without it. One client measures every path the same
//! way, so the columns of the table differ only in the path.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Size of one RTT message: a small request and its answer, as in the
/// paper's ping-pong and the forward bench.
pub const RTT_MESSAGE: usize = 64;

/// Byte the server writes on accept: "first byte" is when it arrives.
const HELLO: u8 = b'!';

/// Longest a single connect-to-first-byte may take before the sample counts
/// as failed: first contact through a relay is ~0.2 s, Nebula's ~1 s.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(15);

/// Extra time a tool gets beyond its own run length before it is killed
/// (iperf3's control set-up and results exchange, redis-benchmark's start).
const TOOL_SLACK: Duration = Duration::from_secs(30);

/// `boxer bench-worker serve`: the servers of one path.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// TCP port of the hello/echo server (first byte, RTT, mesh contacts).
    #[arg(long)]
    pub port: u16,
    /// Also run `iperf3 -s` on this port.
    #[arg(long)]
    pub iperf_port: Option<u16>,
    /// Also run `redis-server` on this port.
    #[arg(long)]
    pub redis_port: Option<u16>,
}

/// `boxer bench-worker client`: measures one path to one server.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Host of the server (a node name on Boxer, an address otherwise).
    #[arg(long)]
    pub target: String,
    /// Hello/echo port of the server.
    #[arg(long)]
    pub port: u16,
    /// iperf3 port of the server (no iperf3 runs without it).
    #[arg(long)]
    pub iperf_port: Option<u16>,
    /// redis port of the server (no redis-benchmark without it).
    #[arg(long)]
    pub redis_port: Option<u16>,
    /// Never-contacted servers for first-contact samples (same hello port).
    #[arg(long, value_delimiter = ',')]
    pub fresh: Vec<String>,
    /// Seconds each iperf3 run lasts.
    #[arg(long, default_value_t = 5)]
    pub seconds: u32,
    /// Round trips of the RTT test.
    #[arg(long, default_value_t = 5000)]
    pub round_trips: usize,
    /// Connects of the known-peer test.
    #[arg(long, default_value_t = 200)]
    pub connects: usize,
    /// Requests per redis-benchmark test.
    #[arg(long, default_value_t = 50_000)]
    pub redis_requests: u32,
    /// Only iperf3 with 1 stream (for the relayed path).
    #[arg(long)]
    pub one_stream: bool,
    /// Processes that carry this path (runtimes, nebula), for CPU and RSS.
    #[arg(long, value_delimiter = ',')]
    pub pids: Vec<u32>,
    /// Count the parent process too (the client's own runtime).
    #[arg(long)]
    pub parent: bool,
    /// Where to write the results (JSON).
    #[arg(long)]
    pub out: PathBuf,
}

/// `boxer bench-worker mesh`: one member of the elasticity run.
#[derive(Debug, Clone, clap::Args)]
pub struct MeshArgs {
    /// Service whose replicas form the mesh (`<service>-<i>`).
    #[arg(long)]
    pub service: String,
    /// Number of replicas.
    #[arg(long)]
    pub count: u32,
    /// This node's index (default: from the node name the runtime gives
    /// its program, `<service>-<index>`).
    #[arg(long)]
    pub index: Option<u32>,
    /// Hello/echo port every member serves.
    #[arg(long)]
    pub port: u16,
    /// Directory to write `<node>.json` into once every peer answered.
    #[arg(long)]
    pub out: PathBuf,
}

/// p50 and p99 of a set of samples, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Number of samples.
    pub samples: usize,
}

impl Percentiles {
    /// Of samples in any order; `None` when there are none.
    pub fn of(mut samples: Vec<f64>) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_by(f64::total_cmp);
        let at = |p: f64| samples[(((samples.len() - 1) as f64) * p).round() as usize];
        Some(Self { p50: at(0.50), p99: at(0.99), samples: samples.len() })
    }
}

/// One iperf3 run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IperfRun {
    /// Parallel streams (`-P`).
    pub streams: u32,
    /// Server to client (`-R`).
    pub reverse: bool,
    /// Received throughput, Gbit/s.
    pub gbit_s: f64,
    /// Bytes received.
    pub bytes: u64,
    /// CPU seconds the path's processes spent per GB moved, if any were given.
    pub cpu_s_per_gb: Option<f64>,
}

/// What the client measured on one path. Workloads that failed are in
/// `errors`, the others still count.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PathResult {
    /// Connect to first byte, never-contacted peers, ms (in contact order).
    pub first_contact_ms: Vec<f64>,
    /// Connect to first byte to the peer already talked to, us.
    pub known_connect_us: Option<Percentiles>,
    /// TCP ping-pong of [`RTT_MESSAGE`] bytes, us.
    pub rtt_us: Option<Percentiles>,
    /// iperf3 runs.
    pub iperf: Vec<IperfRun>,
    /// redis-benchmark: (test, requests per second).
    pub redis: Vec<(String, f64)>,
    /// Mean resident memory of the path's processes before any load, KiB.
    pub rss_idle_kib: Option<u64>,
    /// Mean peak resident memory of the path's processes after all load, KiB.
    pub rss_peak_kib: Option<u64>,
    /// What failed, one line each.
    pub errors: Vec<String>,
}

/// Runs the servers until killed.
pub fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, args.port))
        .with_context(|| format!("binding the echo server to port {}", args.port))?;
    let mut children = Vec::new();
    if let Some(port) = args.iperf_port {
        let mut cmd = Command::new("iperf3");
        cmd.args(["-s", "-p", &port.to_string()]);
        children.push(spawn_child(cmd, "iperf3 (apt-get install iperf3)")?);
    }
    if let Some(port) = args.redis_port {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--save", "", "--appendonly", "no", "--protected-mode", "no"]);
        children.push(spawn_child(cmd, "redis-server (apt-get install redis-server)")?);
    }
    for conn in listener.incoming() {
        match conn {
            Ok(conn) => {
                std::thread::spawn(move || echo(conn));
            }
            Err(e) => tracing::debug!("accept: {e}"),
        }
    }
    for mut child in children {
        let _ = child.kill();
    }
    Ok(())
}

/// A server child that dies with this process.
fn spawn_child(mut cmd: Command, what: &str) -> anyhow::Result<Child> {
    use std::os::unix::process::CommandExt;
    // iperf3 -s complains on stderr about every probe of its port.
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: prctl in the child before exec; async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().with_context(|| format!("starting {what}"))
}

/// One connection of the echo server: [`HELLO`], then every message back.
fn echo(mut conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    if conn.write_all(&[HELLO]).is_err() {
        return;
    }
    let mut buf = [0u8; 16 << 10];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// Resolves `host:port` (through the shim on a Boxer node).
fn resolve(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    (host, port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}"))?
        .find(SocketAddr::is_ipv4)
        .with_context(|| format!("{host} has no IPv4 address"))
}

/// Connects and waits for the server's [`HELLO`]; returns the stream and
/// the time from `connect()` to that byte.
fn first_byte(addr: SocketAddr) -> anyhow::Result<(TcpStream, Duration)> {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(FIRST_BYTE_TIMEOUT))?;
    let mut byte = [0u8; 1];
    s.read_exact(&mut byte).with_context(|| format!("waiting for the first byte from {addr}"))?;
    let took = start.elapsed();
    anyhow::ensure!(byte[0] == HELLO, "{addr} answered {:?}, not the bench server's hello", byte[0]);
    Ok((s, took))
}

/// Measures one path and writes the result to `args.out`.
pub fn client(args: &ClientArgs) -> anyhow::Result<()> {
    let mut out = PathResult::default();
    let mut pids = args.pids.clone();
    if args.parent {
        // SAFETY: getppid has no preconditions.
        pids.push(unsafe { libc::getppid() } as u32);
    }
    out.rss_idle_kib = mean_status_kib(&pids, "VmRSS:");
    let target = args.target.as_str();
    // First contact: the target first (nobody has talked to it yet), then
    // each fresh peer.
    for host in std::iter::once(target).chain(args.fresh.iter().map(String::as_str)) {
        match resolve(host, args.port).and_then(first_byte) {
            Ok((_, took)) => out.first_contact_ms.push(took.as_secs_f64() * 1e3),
            Err(e) => out.errors.push(format!("first contact with {host}: {e:#}")),
        }
    }
    match resolve(target, args.port) {
        Ok(addr) => {
            record(&mut out.errors, "connect to a known peer", known_connects(addr, args.connects), |p| {
                out.known_connect_us = p
            });
            record(&mut out.errors, "RTT", round_trips(addr, args.round_trips), |p| out.rtt_us = p);
        }
        Err(e) => out.errors.push(format!("{e:#}")),
    }
    if let Some(port) = args.iperf_port {
        let runs: &[(u32, bool)] =
            if args.one_stream { &[(1, false), (1, true)] } else { &[(1, false), (1, true), (4, false), (4, true)] };
        for &(streams, reverse) in runs {
            let before = cpu_seconds(&pids);
            match iperf(target, port, streams, reverse, args.seconds) {
                Ok(mut run) => {
                    if let (Some(before), Some(after)) = (before, cpu_seconds(&pids))
                        && run.bytes > 0
                    {
                        run.cpu_s_per_gb = Some((after - before) / (run.bytes as f64 / 1e9));
                    }
                    out.iperf.push(run);
                }
                Err(e) => out.errors.push(format!("iperf3 -P {streams}{}: {e:#}", if reverse { " -R" } else { "" })),
            }
        }
    }
    if let Some(port) = args.redis_port {
        match redis_benchmark(target, port, args.redis_requests) {
            Ok(r) => out.redis = r,
            Err(e) => out.errors.push(format!("redis-benchmark: {e:#}")),
        }
    }
    out.rss_peak_kib = mean_status_kib(&pids, "VmHWM:");
    let json = serde_json::to_vec_pretty(&out)?;
    std::fs::write(&args.out, json).with_context(|| format!("writing {}", args.out.display()))?;
    Ok(())
}

/// Stores a workload's percentiles, or its error.
fn record(
    errors: &mut Vec<String>,
    what: &str,
    result: anyhow::Result<Vec<f64>>,
    store: impl FnOnce(Option<Percentiles>),
) {
    match result {
        Ok(samples) => store(Percentiles::of(samples)),
        Err(e) => errors.push(format!("{what}: {e:#}")),
    }
}

/// `count` connect-to-first-byte samples to a peer already talked to, us.
fn known_connects(addr: SocketAddr, count: usize) -> anyhow::Result<Vec<f64>> {
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let (_, took) = first_byte(addr)?;
        samples.push(took.as_secs_f64() * 1e6);
    }
    Ok(samples)
}

/// Round trips of [`RTT_MESSAGE`] bytes on one connection (after a warm-up), us.
fn round_trips(addr: SocketAddr, count: usize) -> anyhow::Result<Vec<f64>> {
    let (mut s, _) = first_byte(addr)?;
    s.set_nodelay(true)?;
    let mut buf = [7u8; RTT_MESSAGE];
    let mut samples = Vec::with_capacity(count);
    for i in 0..count + count / 10 {
        let t = Instant::now();
        s.write_all(&buf)?;
        s.read_exact(&mut buf)?;
        if i >= count / 10 {
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(samples)
}

/// Runs a tool to completion within `limit`; its stdout.
fn run_tool(mut cmd: Command, limit: Duration) -> anyhow::Result<String> {
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let mut stdout = child.stdout.take().context("tool stdout")?;
    let mut stderr = child.stderr.take().context("tool stderr")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("{what} took longer than {} s and was killed", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    if !status.success() {
        let why = if stderr.trim().is_empty() { stdout.trim() } else { stderr.trim() };
        anyhow::bail!("{what} failed ({status}): {}", why.lines().last().unwrap_or(""));
    }
    Ok(stdout)
}

/// One iperf3 run against `host:port`.
fn iperf(host: &str, port: u16, streams: u32, reverse: bool, seconds: u32) -> anyhow::Result<IperfRun> {
    let mut cmd = Command::new("iperf3");
    cmd.args(["-c", host, "-p", &port.to_string(), "-J", "-t", &seconds.to_string(), "-P", &streams.to_string()]);
    if reverse {
        cmd.arg("-R");
    }
    let json = run_tool(cmd, Duration::from_secs(seconds.into()) + TOOL_SLACK)?;
    parse_iperf(&json).map(|(bps, bytes)| IperfRun { streams, reverse, gbit_s: bps / 1e9, bytes, cpu_s_per_gb: None })
}

/// Received bits per second and bytes from `iperf3 -J` output.
pub fn parse_iperf(json: &str) -> anyhow::Result<(f64, u64)> {
    let v: serde_json::Value = serde_json::from_str(json).context("iperf3 printed no JSON")?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        anyhow::bail!("iperf3: {e}");
    }
    let sum = v.pointer("/end/sum_received").context("iperf3 JSON has no end.sum_received")?;
    let bps = sum.get("bits_per_second").and_then(|b| b.as_f64()).context("no bits_per_second")?;
    let bytes = sum.get("bytes").and_then(|b| b.as_u64()).context("no bytes")?;
    Ok((bps, bytes))
}

/// redis-benchmark ping, set, get against `host:port`.
fn redis_benchmark(host: &str, port: u16, requests: u32) -> anyhow::Result<Vec<(String, f64)>> {
    let mut cmd = Command::new("redis-benchmark");
    cmd.args(["-h", host, "-p", &port.to_string(), "-t", "ping,set,get", "-n", &requests.to_string()]);
    cmd.args(["-c", "50", "--csv"]);
    // 50k requests run at ~10k/s at worst here: a minute per test is ample.
    let csv = run_tool(cmd, Duration::from_secs(60 * 4) + TOOL_SLACK)?;
    let rows = parse_redis_csv(&csv);
    anyhow::ensure!(!rows.is_empty(), "redis-benchmark printed no results: {}", csv.trim());
    Ok(rows)
}

/// `"TEST","rps",…` rows of `redis-benchmark --csv` (the header skipped).
pub fn parse_redis_csv(csv: &str) -> Vec<(String, f64)> {
    csv.lines()
        .filter_map(|line| {
            let mut fields = line.split(',').map(|f| f.trim().trim_matches('"'));
            let test = fields.next()?;
            let rps: f64 = fields.next()?.parse().ok()?;
            Some((test.to_owned(), rps))
        })
        .collect()
}

/// Sum of user and system CPU seconds of `pids` (None if any is gone).
fn cpu_seconds(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut total = 0.0;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name, which may contain spaces: state is
        // field 3, utime 14 and stime 15.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        total += (utime + stime) / ticks;
    }
    Some(total)
}

/// Mean of a `/proc/<pid>/status` field in KiB over `pids`.
fn mean_status_kib(pids: &[u32], field: &str) -> Option<u64> {
    let values: Vec<u64> = pids
        .iter()
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = status.lines().find(|l| l.starts_with(field))?;
            line[field.len()..].trim().trim_end_matches("kB").trim().parse().ok()
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum::<u64>() / values.len() as u64)
}

/// When a mesh member had exchanged a message with every other member.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct MeshReady {
    /// Unix time in ms.
    pub ready_unix_ms: u64,
    /// Connection attempts that failed before succeeding (names not yet
    /// known, peers not yet listening).
    pub retries: u64,
}

/// Peers one mesh member contacts at once.
const MESH_PARALLEL: usize = 8;

/// How long a mesh member keeps trying to reach a peer.
const MESH_PATIENCE: Duration = Duration::from_secs(120);

/// Serves the hello port, contacts every other member once, writes
/// `<out>/<node>.json`, then serves until killed.
pub fn mesh(args: &MeshArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, args.port))
        .with_context(|| format!("binding the mesh port {}", args.port))?;
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || echo(conn));
        }
    });
    let index = match args.index {
        Some(i) => i,
        None => own_index(&args.service)?,
    };
    let peers: Vec<String> = (0..args.count).filter(|&i| i != index).map(|i| format!("{}-{i}", args.service)).collect();
    let queue = std::sync::Mutex::new(peers);
    let retries = std::sync::atomic::AtomicU64::new(0);
    let failed = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..MESH_PARALLEL {
            scope.spawn(|| {
                while let Some(peer) = queue.lock().expect("queue").pop() {
                    let give_up = Instant::now() + MESH_PATIENCE;
                    loop {
                        let result = resolve(&peer, args.port).and_then(first_byte).and_then(|(mut s, _)| {
                            s.write_all(b"x")?;
                            let mut b = [0u8; 1];
                            s.read_exact(&mut b)?;
                            Ok(())
                        });
                        match result {
                            Ok(()) => break,
                            Err(e) if Instant::now() > give_up => {
                                failed.lock().expect("failed").push(format!("{peer}: {e:#}"));
                                break;
                            }
                            Err(_) => {
                                retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                std::thread::sleep(Duration::from_millis(50));
                            }
                        }
                    }
                }
            });
        }
    });
    let failed = failed.into_inner().expect("failed");
    anyhow::ensure!(failed.is_empty(), "could not reach {} peers: {}", failed.len(), failed.join("; "));
    let ready = MeshReady { ready_unix_ms: unix_ms(SystemTime::now()), retries: retries.into_inner() };
    let path = args.out.join(format!("{}-{index}.json", args.service));
    write_atomic(&path, &serde_json::to_vec(&ready)?)?;
    loop {
        std::thread::park();
    }
}

/// This node's index, from the node name the runtime passes its program.
fn own_index(service: &str) -> anyhow::Result<u32> {
    let name = std::env::var(boxer_proto::shim::ENV_HOSTNAME).with_context(|| {
        format!("{} is not set: not running on a Boxer node (pass --index)", boxer_proto::shim::ENV_HOSTNAME)
    })?;
    name.strip_prefix(service)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|i| i.parse().ok())
        .with_context(|| format!("node name {name:?} is not {service}-<index>"))
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Writes beside, then renames: a reader never sees half a file.
fn write_atomic(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let p = Percentiles::of((1..=100).map(f64::from).collect()).unwrap();
        assert_eq!((p.p50, p.p99, p.samples), (51.0, 99.0, 100));
        assert_eq!(Percentiles::of(vec![]), None);
    }

    #[test]
    fn iperf_json_gives_the_received_sum_or_its_error() {
        let ok = r#"{"end":{"sum_received":{"bits_per_second":3.5e9,"bytes":2187500000}}}"#;
        assert_eq!(parse_iperf(ok).unwrap(), (3.5e9, 2_187_500_000));
        let err = r#"{"error":"unable to connect to server: Connection refused"}"#;
        assert!(parse_iperf(err).unwrap_err().to_string().contains("Connection refused"));
        assert!(parse_iperf("not json").is_err());
    }

    #[test]
    fn redis_csv_rows_are_read_and_the_header_skipped() {
        let csv =
            "\"test\",\"rps\",\"avg_latency_ms\"\n\"PING_INLINE\",\"38461.54\",\"1.2\"\n\"SET\",\"40000.00\",\"1.1\"\n";
        assert_eq!(parse_redis_csv(csv), vec![("PING_INLINE".into(), 38461.54), ("SET".into(), 40000.0)]);
    }
}
