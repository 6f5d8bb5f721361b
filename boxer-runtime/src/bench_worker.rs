//! The programs `boxer bench` runs on its nodes (`boxer bench-worker …` in
//! the NAT lab, `bootstrap bench-worker …` on Lambda; hidden from
//! `--help`): a server, a client that measures one path, and a mesh member
//! for the elasticity run.
//!
//! They are ordinary programs with blocking std sockets. In the lab they
//! also drive real tools (iperf3, redis-server, redis-benchmark) as
//! children; a Lambda function has none of those, so there the bulk test is
//! built in ([`bulk`]: one TCP stream per thread, counted by the receiver,
//! as iperf3 does). On a Boxer node they run under the shim as the node's
//! program, unmodified; on the direct and Nebula paths they run without it.
//! One client measures every path the same way, so the columns of the
//! table differ only in the path.
//!
//! They live in the runtime's crate so that the runtime binary carries them
//! into every function (`bootstrap bench-worker`): `boxer bench --provider
//! lambda` needs nothing deployed beyond what `boxer deploy` packs.

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

/// First byte of a bulk request: the client sends, the server counts.
const BULK_UPLOAD: u8 = b'U';
/// First byte of a bulk request: the server sends, the client counts.
const BULK_DOWNLOAD: u8 = b'D';
/// Write size of the bulk test: iperf3's default for TCP (128 KiB) doubled,
/// so one `write` fills more of a 10 Gbit/s path's window per syscall.
const BULK_BUFFER: usize = 256 << 10;
/// Longest a bulk request may ask the server to send: a bound against a
/// peer that sends garbage (the bench asks for at most 600 s).
const BULK_MAX_SECONDS: u32 = 3600;

/// Prefix of the line a client prints its results on with `--print`
/// (the bench reads it from the node's output through the rendezvous).
pub const RESULT_LINE: &str = "boxer-bench-result ";
/// Prefix of the lines a client prints with `--print` after each workload
/// but the last: what it has measured so far.
pub const PARTIAL_LINE: &str = "boxer-bench-partial ";
/// Prefix of the line a mesh member prints with `--print` once every peer answered.
pub const MESH_LINE: &str = "boxer-bench-mesh ";
/// Longest error line kept in a result: the result must fit one output line
/// (16 KiB through the rendezvous) with room for the numbers.
const MAX_ERROR_LEN: usize = 400;

/// `bench-worker …`: the worker's programs.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum WorkerCommand {
    /// The servers of one path.
    Serve(ServeArgs),
    /// Measure one path.
    Client(ClientArgs),
    /// One member of an elasticity run.
    Mesh(MeshArgs),
}

impl WorkerCommand {
    /// Runs it: plain blocking programs, no async runtime.
    pub fn run(&self) -> anyhow::Result<()> {
        match self {
            Self::Serve(args) => serve(args),
            Self::Client(args) => client(args),
            Self::Mesh(args) => mesh(args),
        }
    }
}

/// `bench-worker` as its own command line (the runtime's hidden mode).
#[derive(Debug, clap::Parser)]
#[command(name = "bench-worker", about = "The programs `boxer bench` runs on its nodes")]
pub struct WorkerCli {
    /// What to run.
    #[command(subcommand)]
    pub command: WorkerCommand,
}

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
    /// Also serve the built-in bulk test on this port.
    #[arg(long)]
    pub bulk_port: Option<u16>,
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
    /// Bulk port of the server (the built-in bulk test, where iperf3 is missing).
    #[arg(long)]
    pub bulk_port: Option<u16>,
    /// Never-contacted servers for first-contact samples (same hello port).
    #[arg(long, value_delimiter = ',')]
    pub fresh: Vec<String>,
    /// Seconds each iperf3 or bulk run lasts.
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
    /// Only 1 stream, both directions (for the relayed path).
    #[arg(long)]
    pub one_stream: bool,
    /// Processes that carry this path (runtimes, nebula), for CPU and RSS.
    #[arg(long, value_delimiter = ',')]
    pub pids: Vec<u32>,
    /// Count the parent process too (the client's own runtime).
    #[arg(long)]
    pub parent: bool,
    /// Where to write the results (JSON), again after every workload.
    #[arg(long, required_unless_present = "print")]
    pub out: Option<PathBuf>,
    /// Print the results on stdout as one line after `boxer-bench-result `
    /// (for nodes with no file system in common with the bench: Lambda).
    #[arg(long)]
    pub print: bool,
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
    #[arg(long, required_unless_present = "print")]
    pub out: Option<PathBuf>,
    /// Print the same as one line after `boxer-bench-mesh ` on stdout.
    #[arg(long)]
    pub print: bool,
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
    /// Runs of the built-in bulk test (same fields as iperf3's).
    #[serde(default)]
    pub bulk: Vec<IperfRun>,
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
    if let Some(port) = args.bulk_port {
        let bulk = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
            .with_context(|| format!("binding the bulk server to port {port}"))?;
        std::thread::spawn(move || serve_bulk(&bulk));
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

/// Measures one path; writes the result to `args.out` after every
/// workload (a client stopped half-way still leaves what it measured), and
/// with `args.print` prints it once at the end.
pub fn client(args: &ClientArgs) -> anyhow::Result<()> {
    let mut out = PathResult::default();
    let mut pids = args.pids.clone();
    if args.parent {
        // SAFETY: getppid has no preconditions.
        pids.push(unsafe { libc::getppid() } as u32);
    }
    // What is measured so far, kept after every workload: in the file, or
    // as a partial line (a client stopped half-way still leaves it).
    let save = |out: &PathResult| -> anyhow::Result<()> {
        if args.print {
            let mut partial = out.clone();
            for e in &mut partial.errors {
                truncate_on_char(e, MAX_ERROR_LEN);
            }
            println!("{PARTIAL_LINE}{}", serde_json::to_string(&partial)?);
        }
        match &args.out {
            Some(path) => write_atomic(path, &serde_json::to_vec_pretty(out)?),
            None => Ok(()),
        }
    };
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
    save(&out)?;
    let runs: &[(u32, bool)] =
        if args.one_stream { &[(1, false), (1, true)] } else { &[(1, false), (1, true), (4, false), (4, true)] };
    for (tool, port) in [("iperf3", args.iperf_port), ("bulk", args.bulk_port)] {
        let Some(port) = port else { continue };
        for &(streams, reverse) in runs {
            let before = cpu_seconds(&pids);
            let result = if tool == "iperf3" {
                iperf(target, port, streams, reverse, args.seconds)
            } else {
                bulk(target, port, streams, reverse, args.seconds)
            };
            match result {
                Ok(mut run) => {
                    if let (Some(before), Some(after)) = (before, cpu_seconds(&pids))
                        && run.bytes > 0
                    {
                        run.cpu_s_per_gb = Some((after - before) / (run.bytes as f64 / 1e9));
                    }
                    if tool == "iperf3" { out.iperf.push(run) } else { out.bulk.push(run) }
                }
                Err(e) => out.errors.push(format!("{tool} -P {streams}{}: {e:#}", if reverse { " -R" } else { "" })),
            }
            save(&out)?;
        }
    }
    if let Some(port) = args.redis_port {
        match redis_benchmark(target, port, args.redis_requests) {
            Ok(r) => out.redis = r,
            Err(e) => out.errors.push(format!("redis-benchmark: {e:#}")),
        }
    }
    out.rss_peak_kib = mean_status_kib(&pids, "VmHWM:");
    for e in &mut out.errors {
        truncate_on_char(e, MAX_ERROR_LEN);
    }
    if let Some(path) = &args.out {
        write_atomic(path, &serde_json::to_vec_pretty(&out)?)?;
    }
    if args.print {
        println!("{RESULT_LINE}{}", serde_json::to_string(&out)?);
    }
    Ok(())
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn truncate_on_char(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
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

/// What a tool printed and how it ended.
struct ToolRun {
    what: String,
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

impl ToolRun {
    /// Its stdout if it succeeded, else an error with its last words.
    fn stdout_if_ok(self) -> anyhow::Result<String> {
        if !self.status.success() {
            let why = if self.stderr.trim().is_empty() { self.stdout.trim() } else { self.stderr.trim() };
            anyhow::bail!("{} failed ({}): {}", self.what, self.status, why.lines().last().unwrap_or(""));
        }
        Ok(self.stdout)
    }
}

/// Runs a tool to completion within `limit` (killed after it, and with
/// this process: a client killed by the bench leaves no tool running).
fn run_tool(mut cmd: Command, limit: Duration) -> anyhow::Result<ToolRun> {
    use std::os::unix::process::CommandExt;
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: prctl in the child before exec; async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
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
    Ok(ToolRun { what, status, stdout, stderr })
}

/// One iperf3 run against `host:port`.
fn iperf(host: &str, port: u16, streams: u32, reverse: bool, seconds: u32) -> anyhow::Result<IperfRun> {
    let mut cmd = Command::new("iperf3");
    cmd.args(["-c", host, "-p", &port.to_string(), "-J", "-t", &seconds.to_string(), "-P", &streams.to_string()]);
    if reverse {
        cmd.arg("-R");
    }
    let run = run_tool(cmd, Duration::from_secs(seconds.into()) + TOOL_SLACK)?;
    match parse_iperf(&run.stdout) {
        Ok((bps, bytes)) if run.status.success() => {
            Ok(IperfRun { streams, reverse, gbit_s: bps / 1e9, bytes, cpu_s_per_gb: None })
        }
        // iperf3 -J exits 1 with its reason in the JSON: that reason, not "exit status 1".
        Err(e) if run.stdout.trim_start().starts_with('{') => Err(e),
        Ok(_) | Err(_) => Err(run.stdout_if_ok().err().unwrap_or_else(|| anyhow::anyhow!("iperf3 printed no JSON"))),
    }
}

/// Bulk connections served at once: the bench opens at most 4; more is a
/// peer misbehaving, and each costs a thread and a [`BULK_BUFFER`].
const BULK_MAX_CONNECTIONS: usize = 32;
/// Longest a bulk connection may go without progress (a peer that stopped
/// reading or sending) before its thread gives up on it.
const BULK_STALL: Duration = Duration::from_secs(30);

/// Accepts bulk connections, each on a thread of its own, at most
/// [`BULK_MAX_CONNECTIONS`] at once (others are closed at once).
fn serve_bulk(listener: &TcpListener) {
    let active = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        let conn = match listener.accept() {
            Ok((conn, _)) => conn,
            Err(e) => {
                // Out of descriptors, say: wait instead of spinning.
                tracing::debug!("bulk accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if active.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= BULK_MAX_CONNECTIONS {
            active.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            continue;
        }
        let done = active.clone();
        let spawned = std::thread::Builder::new().name("bulk".into()).spawn(move || {
            if let Err(e) = bulk_serve(conn) {
                tracing::debug!("bulk connection: {e:#}");
            }
            done.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        });
        if let Err(e) = spawned {
            tracing::debug!("bulk connection thread: {e}");
            active.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// The server side of one bulk connection: a request of one direction byte
/// and 4 bytes of seconds (big-endian); then counts what comes until EOF
/// and answers the count (8 bytes), or sends for that long and closes.
fn bulk_serve(mut conn: TcpStream) -> anyhow::Result<()> {
    conn.set_read_timeout(Some(BULK_STALL))?;
    conn.set_write_timeout(Some(BULK_STALL))?;
    let mut request = [0u8; 5];
    conn.read_exact(&mut request).context("reading the bulk request")?;
    let seconds = u32::from_be_bytes([request[1], request[2], request[3], request[4]]);
    anyhow::ensure!(seconds <= BULK_MAX_SECONDS, "bulk request for {seconds} s (at most {BULK_MAX_SECONDS})");
    let mut buf = vec![0u8; BULK_BUFFER];
    match request[0] {
        BULK_UPLOAD => {
            let mut total = 0u64;
            loop {
                match conn.read(&mut buf)? {
                    0 => break,
                    n => total += n as u64,
                }
            }
            conn.write_all(&total.to_be_bytes())?;
        }
        BULK_DOWNLOAD => {
            let end = Instant::now() + Duration::from_secs(seconds.into());
            while Instant::now() < end {
                conn.write_all(&buf)?;
            }
            conn.shutdown(std::net::Shutdown::Write)?;
        }
        other => anyhow::bail!("unknown bulk direction {other:?}"),
    }
    Ok(())
}

/// One stream of a bulk run: bytes received (by the server when sending)
/// and the time from the first byte sent until the receiver had them all.
fn bulk_stream(
    addr: SocketAddr,
    reverse: bool,
    seconds: u32,
    start: &std::sync::Barrier,
) -> anyhow::Result<(u64, Duration)> {
    let conn = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"));
    // Every stream reaches the barrier, connected or not: one that failed
    // must not leave the others waiting for it.
    start.wait();
    let mut s = conn?;
    s.set_read_timeout(Some(BULK_STALL))?;
    s.set_write_timeout(Some(BULK_STALL))?;
    let mut request = [if reverse { BULK_DOWNLOAD } else { BULK_UPLOAD }, 0, 0, 0, 0];
    request[1..].copy_from_slice(&seconds.to_be_bytes());
    let began = Instant::now();
    s.write_all(&request)?;
    let mut buf = vec![0u8; BULK_BUFFER];
    if reverse {
        let mut total = 0u64;
        loop {
            match s.read(&mut buf)? {
                0 => break,
                n => total += n as u64,
            }
        }
        return Ok((total, began.elapsed()));
    }
    let end = began + Duration::from_secs(seconds.into());
    while Instant::now() < end {
        s.write_all(&buf)?;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    // The server answers once it has read everything: the time includes
    // draining the buffers, as iperf3's receiver-side figure does.
    let mut count = [0u8; 8];
    s.read_exact(&mut count).context("waiting for the server's byte count")?;
    Ok((u64::from_be_bytes(count), began.elapsed()))
}

/// The built-in bulk test: `streams` TCP connections to `host:port` at
/// once, each sending (or with `reverse` receiving) for `seconds`; the
/// throughput is what the receivers counted over the longest stream's time.
pub fn bulk(host: &str, port: u16, streams: u32, reverse: bool, seconds: u32) -> anyhow::Result<IperfRun> {
    let addr = resolve(host, port)?;
    let start = std::sync::Barrier::new(streams as usize);
    let results: Vec<anyhow::Result<(u64, Duration)>> = std::thread::scope(|scope| {
        let handles: Vec<_> =
            (0..streams).map(|_| scope.spawn(|| bulk_stream(addr, reverse, seconds, &start))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a stream panicked")))).collect()
    });
    let mut bytes = 0u64;
    let mut longest = Duration::ZERO;
    for r in results {
        let (b, took) = r?;
        bytes += b;
        longest = longest.max(took);
    }
    anyhow::ensure!(bytes > 0 && !longest.is_zero(), "no data arrived");
    let gbit_s = bytes as f64 * 8.0 / longest.as_secs_f64() / 1e9;
    Ok(IperfRun { streams, reverse, gbit_s, bytes, cpu_s_per_gb: None })
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
    let csv = run_tool(cmd, Duration::from_secs(60 * 4) + TOOL_SLACK)?.stdout_if_ok()?;
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
    if let Some(out) = &args.out {
        write_atomic(&out.join(format!("{}-{index}.json", args.service)), &serde_json::to_vec(&ready)?)?;
    }
    if args.print {
        println!("{MESH_LINE}{}", serde_json::to_string(&ready)?);
    }
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

    /// A bulk server on loopback; its port.
    fn bulk_server() -> u16 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || serve_bulk(&listener));
        port
    }

    #[test]
    fn bulk_counts_what_the_receiver_got_both_ways() {
        let port = bulk_server();
        for (streams, reverse) in [(1, false), (2, true)] {
            let run = bulk("127.0.0.1", port, streams, reverse, 1).unwrap();
            assert_eq!((run.streams, run.reverse), (streams, reverse));
            assert!(run.bytes > 0 && run.gbit_s > 0.0, "{run:?}");
        }
    }

    #[test]
    fn bulk_to_a_closed_port_fails_instead_of_waiting() {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
        assert!(bulk("127.0.0.1", port, 4, false, 1).is_err());
    }

    #[test]
    fn bulk_server_refuses_a_bad_request() {
        let port = bulk_server();
        for request in [[b'X', 0, 0, 0, 1], [BULK_DOWNLOAD, 0xff, 0xff, 0xff, 0xff]] {
            let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
            s.write_all(&request).unwrap();
            // The server drops the connection without sending anything.
            let mut buf = [0u8; 16];
            assert_eq!(s.read(&mut buf).unwrap_or(0), 0, "{request:?}");
        }
    }

    #[test]
    fn a_long_error_is_cut_on_a_character_boundary() {
        let mut e = "é".repeat(300);
        truncate_on_char(&mut e, MAX_ERROR_LEN - 1);
        assert!(e.len() < MAX_ERROR_LEN && e.chars().all(|c| c == 'é'));
    }

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
