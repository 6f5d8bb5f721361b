//! Rendezvous admissions per second, with simulated joiners.
//!
//! A rendezvous runs in this process on loopback, on ONE thread (a
//! current-thread tokio runtime, so everything the server does, QUIC and
//! TLS included, is on one core; only the creation of each member's output
//! file runs on blocking threads, whose CPU time is counted apart).
//! Joiners run on a few other threads: each
//! joiner has its own certificate (made before the clock starts) and joins
//! the way a runtime does: a QUIC handshake with the rendezvous (its
//! certificate pinned, the joiner's own presented), hello, the `Join`
//! request, hello and the `Joined` answer. It then closes its connection,
//! an orderly departure, so the cluster stays at about `concurrency`
//! members and the run measures admission, not the size of one cluster
//! (whose membership feed costs every member a message per join).
//!
//! Besides the rate over QUIC, the run measures the admission logic alone
//! (the registry, without QUIC or TLS), and the server thread's CPU time:
//! on a machine with few cores the joiners compete with the server for CPU,
//! and admissions per server CPU second is then the rate of one whole core.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use boxer_proto::control::{CloseCode, CreateClusterRequest, JoinRequest, Request, ServerMessage};
use boxer_proto::{ALPN_RENDEZVOUS, Fingerprint, Hello, TLS_SERVER_NAME, frame};
use rendezvous::{Config, Registry, Rendezvous, limits::Limits};

/// Threads the simulated joiners run on (each a current-thread runtime with
/// one QUIC endpoint). The server has a thread of its own.
pub const CLIENT_THREADS: usize = 2;

/// Longest one join may take before the run fails.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Fewest admissions the registry-only measurement makes (it is fast: fewer
/// would measure the clock).
pub const MIN_REGISTRY_JOINS: usize = 20_000;

/// The cluster the joiners join.
const CLUSTER: &str = "bench";

/// Admin token of the benchmark's rendezvous.
const ADMIN_TOKEN: &str = "bench-admin";

/// Service name of every joiner (`bench-<i>`).
const SERVICE: &str = "bench";

/// What one admissions run measured.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AdmissionStats {
    /// Joiners that joined (every one of them, or the run fails).
    pub joiners: usize,
    /// Joins in flight at once.
    pub concurrency: usize,
    /// Threads the joiners ran on (the server had one more).
    pub client_threads: usize,
    /// Wall-clock time from the first join started to the last answered.
    pub seconds: f64,
    /// Admissions per second over real QUIC: handshake, `Join`, `Joined`.
    pub admissions_per_sec: f64,
    /// CPU time the server's runtime thread (QUIC, TLS, admission: all of
    /// the rendezvous but file creation) used during the run.
    pub server_cpu_seconds: f64,
    /// CPU time the server's blocking threads used during the run (creating
    /// each member's output file, off the runtime thread); counted by the
    /// kernel in ticks, so to about 10 ms.
    pub server_io_cpu_seconds: f64,
    /// Share of the run the server's runtime thread was on a CPU (near 1.0:
    /// its core was saturated, the server was the bottleneck; less: the
    /// joiners, which share the machine, were).
    pub server_busy: f64,
    /// Admissions per second of the runtime thread's CPU time: the rate one
    /// fully busy core would sustain, whatever the joiners on the same
    /// machine took.
    pub admissions_per_server_cpu_sec: f64,
    /// Admissions per second of all the server's CPU time (runtime thread
    /// and blocking threads).
    pub admissions_per_server_total_cpu_sec: f64,
    /// Median join latency (connect to `Joined` received), milliseconds.
    pub join_p50_ms: f64,
    /// 99th percentile join latency, milliseconds.
    pub join_p99_ms: f64,
    /// Slowest join, milliseconds.
    pub join_max_ms: f64,
    /// Admissions the registry-only measurement made.
    pub registry_joins: usize,
    /// Admissions per second of the admission logic alone, on one thread:
    /// the registry's join, the member's mailbox, the encoded `Joined`
    /// answer and, later, the member's departure; no QUIC, no TLS.
    pub registry_admissions_per_sec: f64,
    /// Whether this was a debug build (its numbers say little).
    pub debug_build: bool,
    /// Where the rendezvous kept its state (the members' output files).
    pub state_dir: String,
}

/// Starts a rendezvous on loopback on ONE thread (a current-thread tokio
/// runtime: "one core"), creates a cluster, and runs `joiners` simulated
/// joiners (real QUIC endpoints from this process, [`CLIENT_THREADS`]
/// client threads, `concurrency` joins in flight) that each join the
/// cluster as a runtime does, then leave; measures admissions per second.
///
/// Every packet stays on 127.0.0.1. Certificates of the joiners are made
/// before the clock starts.
pub fn measure(joiners: usize, concurrency: usize) -> anyhow::Result<AdmissionStats> {
    if joiners == 0 || concurrency == 0 {
        bail!("admissions: joiners and concurrency must be at least 1");
    }
    let state_dir = scratch_dir()?;
    let result = measure_in(&state_dir, joiners, concurrency);
    let _ = std::fs::remove_dir_all(&state_dir);
    let mut stats = result?;
    let registry_joins = joiners.max(MIN_REGISTRY_JOINS);
    stats.registry_joins = registry_joins;
    stats.registry_admissions_per_sec = measure_registry(registry_joins, concurrency)?;
    Ok(stats)
}

/// A fresh directory for the rendezvous' identity and node logs: in memory
/// (`/dev/shm`) when the machine has it, else in the temporary directory.
/// The rendezvous creates an output file per member, and what that costs
/// is the disk's business, not the rendezvous': on a busy ext4 with many
/// recently deleted inodes one creation took 600 µs.
fn scratch_dir() -> anyhow::Result<PathBuf> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let name = format!("boxer-bench-admissions-{}-{nanos}", std::process::id());
    let shm = Path::new("/dev/shm").join(&name);
    if std::fs::create_dir(&shm).is_ok() {
        return Ok(shm);
    }
    let dir = std::env::temp_dir().join(name);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Per-source limits that never refuse the benchmark: every joiner comes
/// from 127.0.0.1, and the defaults (made for the public internet) would
/// refuse all but the first 1000 connections of a burst from one address
/// and then allow only 200 a second.
fn bench_limits() -> Limits {
    Limits {
        connections_per_source: usize::MAX,
        new_connections_per_source: 1e12,
        new_connections_burst: 1e12,
        ..Limits::default()
    }
}

/// A tracing subscriber for the benchmark's own threads: warnings only, so
/// that a `boxer` process logging at info does not print (and time) a line
/// per join.
fn quiet_tracing() -> tracing::subscriber::DefaultGuard {
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .with_target(false)
        .finish();
    tracing::subscriber::set_default(subscriber)
}

fn current_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start a tokio runtime")
}

/// Name of the server's runtime thread.
const SERVER_THREAD: &str = "bench-rdv";

/// Name of the server runtime's blocking threads (at most 15 bytes: what
/// the kernel keeps, and what [`blocking_cpu_time`] looks for).
const SERVER_BLOCKING_THREADS: &str = "bench-rdv-io";

/// CPU time of every thread of this process named [`SERVER_BLOCKING_THREADS`]
/// (from `/proc`, in clock ticks; zero where that cannot be read).
fn blocking_cpu_time() -> Duration {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks <= 0 {
        return Duration::ZERO;
    }
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Duration::ZERO };
    let mut total = 0u64;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        // "tid (comm) state ppid ...": utime and stime are the 14th and
        // 15th fields, the 12th and 13th after the comm.
        let Some((head, rest)) = stat.rsplit_once(')') else { continue };
        if !head.ends_with(&format!("({SERVER_BLOCKING_THREADS}")) {
            continue;
        }
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        total += tick(11) + tick(12);
    }
    Duration::from_secs_f64(total as f64 / ticks as f64)
}

/// The running server, as seen from the measuring thread.
struct Server {
    addr: SocketAddr,
    fingerprint: Fingerprint,
    join_token: String,
    handle: Rendezvous,
    /// Asks the server thread for its CPU time so far.
    cpu: tokio::sync::mpsc::UnboundedSender<std::sync::mpsc::Sender<Duration>>,
    thread: std::thread::JoinHandle<()>,
}

impl Server {
    /// The server thread's CPU time so far.
    fn cpu_time(&self) -> anyhow::Result<Duration> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.cpu.send(tx).ok().context("the rendezvous thread ended")?;
        rx.recv_timeout(Duration::from_secs(10)).context("the rendezvous thread did not say its CPU time")
    }

    fn stop(self) {
        self.handle.close();
        let _ = self.thread.join();
    }
}

/// CPU time of the calling thread.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec.max(0) as u64, ts.tv_nsec.clamp(0, 999_999_999) as u32)
}

/// Starts the rendezvous on its own thread with one cluster.
fn start_server(state_dir: &Path) -> anyhow::Result<Server> {
    let (tx, rx) = std::sync::mpsc::channel();
    let state_dir = state_dir.to_owned();
    let thread = std::thread::Builder::new()
        .name(SERVER_THREAD.into())
        .spawn(move || {
            let _quiet = quiet_tracing();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name(SERVER_BLOCKING_THREADS)
                // Kept for the whole run, so that their CPU time is counted.
                .thread_keep_alive(Duration::from_secs(3600))
                .build()
                .context("cannot start a tokio runtime");
            let rt = match rt {
                Ok(rt) => rt,
                Err(e) => return drop(tx.send(Err(e))),
            };
            rt.block_on(async move {
                let started = Rendezvous::bind(Config {
                    listen: (Ipv4Addr::LOCALHOST, 0).into(),
                    state_dir,
                    admin_token: Some(ADMIN_TOKEN.into()),
                    socket: None,
                    persist: false,
                    limits: bench_limits(),
                })
                .context("cannot start the rendezvous")
                .and_then(|server| {
                    let info = server
                        .registry()
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .create_cluster(cluster_request())
                        .context("cannot create the benchmark's cluster")?;
                    let addr = server.local_addr().context("rendezvous address")?;
                    Ok((server, addr, info.join_token))
                });
                let (server, addr, join_token) = match started {
                    Ok(x) => x,
                    Err(e) => return drop(tx.send(Err(e))),
                };
                let (cpu, mut cpu_requests) =
                    tokio::sync::mpsc::unbounded_channel::<std::sync::mpsc::Sender<Duration>>();
                tokio::spawn(async move {
                    while let Some(reply) = cpu_requests.recv().await {
                        let _ = reply.send(thread_cpu_time());
                    }
                });
                let fingerprint = server.fingerprint();
                if tx.send(Ok((addr, fingerprint, join_token, server.clone(), cpu))).is_err() {
                    return;
                }
                server.clone().run().await;
                server.wait_closed().await;
            });
        })
        .context("cannot start the rendezvous thread")?;
    let (addr, fingerprint, join_token, handle, cpu) = rx.recv().context("the rendezvous thread died")??;
    Ok(Server { addr, fingerprint, join_token, handle, cpu, thread })
}

fn measure_in(state_dir: &Path, joiners: usize, concurrency: usize) -> anyhow::Result<AdmissionStats> {
    let server = start_server(state_dir)?;
    let result = run_joiners(&server, joiners, concurrency);
    server.stop();
    let (seconds, (cpu, io_cpu), mut latencies) = result?;
    latencies.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let server_cpu_seconds = cpu.as_secs_f64();
    let server_io_cpu_seconds = io_cpu.as_secs_f64();
    let per_cpu_second = |cpu: f64| if cpu > 0.0 { joiners as f64 / cpu } else { 0.0 };
    Ok(AdmissionStats {
        joiners,
        concurrency,
        client_threads: CLIENT_THREADS.min(concurrency),
        seconds,
        admissions_per_sec: joiners as f64 / seconds,
        server_cpu_seconds,
        server_io_cpu_seconds,
        server_busy: server_cpu_seconds / seconds,
        admissions_per_server_cpu_sec: per_cpu_second(server_cpu_seconds),
        admissions_per_server_total_cpu_sec: per_cpu_second(server_cpu_seconds + server_io_cpu_seconds),
        join_p50_ms: ms(percentile(&latencies, 50.0)),
        join_p99_ms: ms(percentile(&latencies, 99.0)),
        join_max_ms: ms(latencies.last().copied().unwrap_or_default()),
        registry_joins: 0,
        registry_admissions_per_sec: 0.0,
        debug_build: cfg!(debug_assertions),
        state_dir: state_dir.display().to_string(),
    })
}

/// The `p`-th percentile (0-100) of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p / 100.0).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One joiner, ready before the clock starts.
struct Joiner {
    index: u32,
    config: quinn::ClientConfig,
}

/// What a client thread did: join latencies, or the first failure.
type ThreadResult = anyhow::Result<Vec<Duration>>;

/// The server's CPU time in a run: its runtime thread, its blocking threads.
type ServerCpu = (Duration, Duration);

/// Runs every joiner; returns the wall time, the server's CPU time in it,
/// and each join's latency.
fn run_joiners(server: &Server, joiners: usize, concurrency: usize) -> anyhow::Result<(f64, ServerCpu, Vec<Duration>)> {
    let threads = CLIENT_THREADS.min(concurrency);
    let start = std::sync::Barrier::new(threads + 1);
    let start = &start;
    let target = (server.addr, server.fingerprint, server.join_token.as_str());
    std::thread::scope(|scope| {
        let mut handles = Vec::with_capacity(threads);
        for t in 0..threads {
            let (first, end) = (joiners * t / threads, joiners * (t + 1) / threads);
            let in_flight = concurrency * (t + 1) / threads - concurrency * t / threads;
            let handle = std::thread::Builder::new()
                .name(format!("bench-joiners-{t}"))
                .spawn_scoped(scope, move || client_thread(target, first..end, in_flight, start))
                .context("cannot start a joiner thread")?;
            handles.push(handle);
        }
        // The server's CPU time is read before the barrier (it is idle
        // while the joiners make their certificates, and once they pass it
        // would be busy before it answered); the clock starts after it, when
        // every joiner thread has its certificates and endpoint: go.
        let cpu0 = server.cpu_time();
        let io0 = blocking_cpu_time();
        start.wait();
        let t0 = Instant::now();
        let mut latencies = Vec::with_capacity(joiners);
        let mut failure = None;
        for handle in handles {
            match handle.join() {
                Ok(Ok(l)) => latencies.extend(l),
                Ok(Err(e)) => failure = failure.or(Some(e)),
                Err(_) => failure = failure.or(Some(anyhow::anyhow!("a joiner thread panicked"))),
            }
        }
        let seconds = t0.elapsed().as_secs_f64();
        if let Some(e) = failure {
            return Err(e);
        }
        let io = blocking_cpu_time().saturating_sub(io0);
        let cpu = server.cpu_time()?.saturating_sub(cpu0?);
        Ok((seconds, (cpu, io), latencies))
    })
}

/// One client thread: makes its joiners' certificates, waits at `start`,
/// then joins them `in_flight` at a time. Always reaches `start` (the
/// measuring thread waits there), even when setting up failed.
fn client_thread(
    (server, fingerprint, join_token): (SocketAddr, Fingerprint, &str),
    range: std::ops::Range<usize>,
    in_flight: usize,
    start: &std::sync::Barrier,
) -> ThreadResult {
    let _quiet = quiet_tracing();
    let prepared = current_thread().and_then(|rt| {
        let joiners = prepare_joiners(range, fingerprint)?;
        let endpoint = rt.block_on(async { client_endpoint() })?;
        Ok((rt, joiners, endpoint))
    });
    start.wait();
    let (rt, joiners, endpoint) = prepared?;
    let result = rt.block_on(async {
        let queue = Arc::new(std::sync::Mutex::new(joiners.into_iter()));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..in_flight {
            let queue = queue.clone();
            let endpoint = endpoint.clone();
            let join_token = join_token.to_owned();
            tasks.spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                    let Some(joiner) = next else { break };
                    let latency = tokio::time::timeout(JOIN_TIMEOUT, join(&endpoint, server, &join_token, joiner))
                        .await
                        .with_context(|| format!("a join took longer than {JOIN_TIMEOUT:?}"))??;
                    latencies.push(latency);
                }
                anyhow::Ok(latencies)
            });
        }
        let mut latencies = Vec::new();
        while let Some(done) = tasks.join_next().await {
            latencies.extend(done.context("a joiner task failed")??);
        }
        // Let the closes reach the server before the endpoint goes.
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        anyhow::Ok(latencies)
    });
    if result.is_err() {
        endpoint.close(0u32.into(), b"benchmark failed");
    }
    result
}

/// A client-only QUIC endpoint on loopback with socket buffers as large as
/// a runtime's ([`boxer_net::endpoint::SOCKET_BUFFER`]): the answers to
/// dozens of handshakes at once would overflow the kernel's default.
fn client_endpoint() -> anyhow::Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot bind a joiner socket")?;
    let state = quinn::udp::UdpSocketState::new((&socket).into()).context("joiner socket")?;
    // Best effort, as in the runtime: a smaller buffer costs retransmissions.
    let _ = state.set_recv_buffer_size((&socket).into(), boxer_net::endpoint::SOCKET_BUFFER);
    let _ = state.set_send_buffer_size((&socket).into(), boxer_net::endpoint::SOCKET_BUFFER);
    quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, Arc::new(quinn::TokioRuntime))
        .context("cannot start a joiner endpoint")
}

/// Certificates and TLS configurations of joiners `range`.
fn prepare_joiners(range: std::ops::Range<usize>, server: Fingerprint) -> anyhow::Result<Vec<Joiner>> {
    let transport = boxer_net::transport::rendezvous_client();
    range
        .map(|i| {
            let identity = boxer_net::Identity::generate().context("cannot make a joiner's certificate")?;
            let config = boxer_net::tls::client_config(&identity, server, ALPN_RENDEZVOUS, transport.clone())
                .context("joiner TLS configuration")?;
            let index = u32::try_from(i).context("too many joiners")?;
            Ok(Joiner { index, config })
        })
        .collect()
}

/// The request joiner `index` sends.
fn join_request(join_token: &str, index: u32) -> JoinRequest {
    let mut disco_public = [0u8; 32];
    disco_public[..4].copy_from_slice(&index.to_le_bytes());
    JoinRequest {
        cluster: CLUSTER.into(),
        join_token: join_token.into(),
        service: SERVICE.into(),
        index,
        local: vec![],
        listening: vec![],
        disco_public,
        rejoin: None,
    }
}

/// One admission, as `boxer_net::rendezvous::join` makes it: handshake,
/// hello and request in one write, hello and answer back. Returns the time
/// from connecting to the answer; then leaves.
async fn join(
    endpoint: &quinn::Endpoint,
    server: SocketAddr,
    join_token: &str,
    joiner: Joiner,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let conn = endpoint
        .connect_with(joiner.config, server, TLS_SERVER_NAME)
        .context("cannot start a connection to the rendezvous")?
        .await
        .context("handshake with the rendezvous")?;
    let (mut send, mut recv) = conn.open_bi().await.context("cannot open the control stream")?;
    let mut out = Vec::new();
    frame::encode_into(&Hello::current(), &mut out)?;
    frame::encode_into(&Request::Join(join_request(join_token, joiner.index)), &mut out)?;
    send.write_all(&out).await.context("cannot send the join request")?;
    let hello: Hello = frame::read(&mut recv).await.context("no hello from the rendezvous")?;
    hello.check().context("rendezvous hello")?;
    let answer: ServerMessage = frame::read(&mut recv).await.with_context(|| match conn.close_reason() {
        Some(why) => format!("no answer to the join: {why}"),
        None => "no answer to the join".to_owned(),
    })?;
    let latency = started.elapsed();
    // Done, as a node whose program ended: an orderly departure.
    conn.close(CloseCode::Normal.code().into(), b"benchmark joiner done");
    match answer {
        ServerMessage::Joined(_) => Ok(latency),
        other => bail!("the rendezvous answered the join with {other:?}"),
    }
}

/// The benchmark's cluster, as created on the rendezvous and in the registry.
fn cluster_request() -> CreateClusterRequest {
    CreateClusterRequest { admin_token: ADMIN_TOKEN.into(), name: CLUSTER.into(), network: None, join_token: None }
}

/// Admissions per second of the registry alone on this thread: `joins`
/// joins, each with its mailbox and encoded answer, with `window` members
/// at a time (the oldest leaves when another joins), as in [`measure`].
fn measure_registry(joins: usize, window: usize) -> anyhow::Result<f64> {
    let mut registry = Registry::new(ADMIN_TOKEN.into());
    let info = registry.create_cluster(cluster_request()).context("cannot create the benchmark's cluster")?;
    let reflexive: SocketAddr = (Ipv4Addr::LOCALHOST, 40_000).into();
    let requests: Vec<JoinRequest> = (0..joins)
        .map(|i| u32::try_from(i).map(|i| join_request(&info.join_token, i)))
        .collect::<Result<_, _>>()
        .context("too many joins")?;
    let mut members = VecDeque::with_capacity(window + 1);
    let started = Instant::now();
    for (i, req) in requests.into_iter().enumerate() {
        let mut fingerprint = [0u8; 32];
        fingerprint[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let (joined, feed) = registry
            .join(req, Fingerprint(fingerprint), reflexive)
            .map_err(|r| anyhow::anyhow!("registry refused a join: {r}"))?;
        let node = joined.node_id;
        let mailbox = registry.open_mailbox(CLUSTER, node).context("the cluster vanished")?;
        let answer = frame::encode(&ServerMessage::Joined(joined)).context("cannot encode the answer")?;
        std::hint::black_box(answer);
        members.push_back((node, mailbox, feed));
        if members.len() > window
            && let Some((node, mailbox, _)) = members.pop_front()
        {
            registry.leave(CLUSTER, node, mailbox.session, rendezvous::registry::Departure::Left, Instant::now());
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(joins as f64 / seconds.max(f64::MIN_POSITIVE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_sorted_samples() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 50.0), Duration::from_millis(51));
        assert_eq!(percentile(&samples, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn the_registry_alone_admits_quickly() {
        let rate = measure_registry(2_000, 8).unwrap();
        assert!(rate > 100.0, "{rate}");
    }

    #[test]
    fn a_small_run_admits_everyone() {
        let stats = measure(20, 4).unwrap();
        assert_eq!(stats.joiners, 20);
        assert!(stats.admissions_per_sec > 0.0);
        assert!(stats.join_p50_ms <= stats.join_p99_ms && stats.join_p99_ms <= stats.join_max_ms);
        assert!(stats.registry_admissions_per_sec > 0.0);
    }
}
