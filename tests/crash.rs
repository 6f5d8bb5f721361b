//! A runtime crash under a running app, in the lab. On Linux the runtime's
//! own child (the program) gets `PR_SET_PDEATHSIG` and dies with it, but
//! processes the program forked do not (and on Lambda, where the host
//! refuses `PR_SET_PDEATHSIG`, the whole app outlives a crashed runtime).
//! Such a process must see its overlay sockets fail, not hang: its open
//! connection (to the dead runtime's proxy) ends, and new connects and
//! sends towards the overlay fail at once with an error, the shim saying
//! once on stderr that the runtime is unreachable. The rest of the cluster
//! goes on: the peer keeps running and a new node joins and reaches it.
//!
//! Measured: the open connection ends at once with EOF (the kernel closes
//! the dead runtime's end of it with a FIN, so the app sees a clean end of
//! stream, not an error); new TCP connects and UDP sends to the overlay
//! address fail with `ENETUNREACH` within a millisecond; a connect by name
//! fails in the lookup with `EAI_AGAIN` (the shim does not hand a cluster
//! name to the host's resolver when the runtime cannot be asked). Datagrams on a UDP flow the
//! shim asked for before the crash are sent without an error (and lost)
//! until its cached answer expires (`CACHE_TTL`, 10 s after it was asked
//! for), then fail with `ENETUNREACH`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use boxer_e2e::natlab::*;
use boxer_e2e::*;

isolate_this_test_binary!();

/// Cluster name (also how the test finds the runtime it kills).
const CLUSTER: &str = "crash";
/// Longest wait the test accepts for each outcome after the crash.
const BOUND: Duration = Duration::from_secs(15);
/// Bytes the worker reads before the crash (a transfer well under way).
const MID_TRANSFER: u64 = 4 << 20;

/// On `a-0`: TCP port 7000 sends to whoever connects without end (paced,
/// about 13 MB/s, one thread per connection); UDP port 7001 echoes.
const SERVER: &str = r#"import socket, threading, time

def stream(c, peer):
    n = 0
    try:
        while True:
            c.sendall(b'x' * 65536)
            n += 65536
            time.sleep(0.005)
    except OSError as e:
        print('stream to %s ended after %d bytes: %s' % (peer, n, e), flush=True)

def echo():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(('0.0.0.0', 7001))
    while True:
        b, peer = u.recvfrom(2048)
        u.sendto(b, peer)

threading.Thread(target=echo, daemon=True).start()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 7000))
s.listen()
while True:
    c, peer = s.accept()
    print('accepted %s' % (peer,), flush=True)
    threading.Thread(target=stream, args=(c, peer), daemon=True).start()
"#;

/// On `b-0`: `app.py DIR`. The program forks a worker and sleeps (it dies
/// with the runtime). The worker, still under the shim (it inherits
/// LD_PRELOAD and the shim's state), writes its pid to DIR/worker.pid, its
/// stdout and stderr to DIR/worker.err and what happens to DIR/worker.log:
/// it resolves `a-0`, has a datagram echoed (an overlay UDP flow), connects
/// to `a-0:7000` and reads without end in a thread. Once DIR/go exists
/// (the test makes it after the crash) it tries, each timed: a new TCP
/// connection to a-0's overlay address (`tcp-ip`), a datagram from a new
/// socket (`udp-new`), a new TCP connection to `a-0` by name (`tcp-name`),
/// and, alongside, datagrams on the pre-crash flow every 0.1 s until one
/// fails (`udp-old`). Then `done`, and it exits. It never outlives 60 s.
const APP: &str = r#"import errno, os, signal, socket, sys, threading, time
d = sys.argv[1]
def path(name):
    return os.path.join(d, name)
def put(name, text):
    with open(path(name + '.tmp'), 'w') as f:
        f.write(text)
    os.rename(path(name + '.tmp'), path(name))

parent = os.getpid()
if os.fork():
    put('parent.pid', '%d\n' % parent)
    while True:
        time.sleep(3600)

# The worker.
signal.alarm(60)
err = os.open(path('worker.err'), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.dup2(err, 1)
os.dup2(err, 2)
log = open(path('worker.log'), 'w', buffering=1)
lock = threading.Lock()
def say(line):
    with lock:
        log.write(line + '\n')
def describe(e):
    if isinstance(e, socket.gaierror):
        return 'name lookup failed: gaierror %s (%s)' % (e.errno, e.strerror)
    if e.errno is None:
        return '%s (%s)' % (type(e).__name__, e)
    return '%s errno %d %s (%s)' % (type(e).__name__, e.errno, errno.errorcode.get(e.errno, '?'), e.strerror)
put('worker.pid', '%d\n' % os.getpid())

ip = socket.gethostbyname('a-0')
say('a-0 is %s' % ip)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(1)
for i in range(20):
    try:
        u.sendto(b'ping', (ip, 7001))
        data, peer = u.recvfrom(2048)
        say('udp echo %r from %s:%d' % (data, peer[0], peer[1]))
        break
    except OSError as e:
        say('udp try %d: %s' % (i, describe(e)))
deadline = time.time() + 20
while True:
    try:
        c = socket.create_connection(('a-0', 7000), timeout=10)
        break
    except OSError as e:
        if time.time() > deadline:
            say('connect failed: %s' % describe(e))
            raise
        time.sleep(0.2)
# Blocking without a timeout: a hang shows as one.
c.settimeout(None)
say('connected')

def read():
    n, last = 0, 0
    while True:
        try:
            b = c.recv(65536)
        except OSError as e:
            say('stream: error %s after %d bytes' % (describe(e), n))
            return
        if not b:
            say('stream: eof after %d bytes' % n)
            return
        n += len(b)
        if time.time() - last >= 0.1:
            last = time.time()
            say('progress %d' % n)
threading.Thread(target=read, daemon=True).start()

while not os.path.exists(path('go')):
    time.sleep(0.01)
say('go')

def old_flow():
    start, sent = time.time(), 0
    while True:
        try:
            u.sendto(b'ping', (ip, 7001))
            sent += 1
        except OSError as e:
            say('udp-old: error %s after %d sends in %.3f s' % (describe(e), sent, time.time() - start))
            return
        if time.time() - start > 14:
            say('udp-old: ok, %d sends in %.3f s without an error' % (sent, time.time() - start))
            return
        time.sleep(0.1)
old = threading.Thread(target=old_flow, daemon=True)
old.start()

def attempt(key, f):
    start = time.time()
    try:
        r = f()
        say('%s: ok %s in %.3f s' % (key, r, time.time() - start))
    except OSError as e:
        say('%s: error %s in %.3f s' % (key, describe(e), time.time() - start))
attempt('tcp-ip', lambda: socket.create_connection((ip, 7000), timeout=10))
attempt('udp-new', lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'ping', (ip, 7001)))
attempt('tcp-name', lambda: socket.create_connection(('a-0', 7000), timeout=10))
old.join()
say('done')
log.flush()
os._exit(0)
"#;

/// On a new node: reads 1 MiB from `a-0:7000`, prints how much it read.
/// Then idles (the node stays).
const READER: &str = r#"import socket, time
try:
    c = socket.create_connection(('a-0', 7000), timeout=20)
    c.settimeout(20)
    n = 0
    while n < 1 << 20:
        b = c.recv(65536)
        if not b:
            break
        n += len(b)
    c.close()
    print('read %d bytes from a-0' % n, flush=True)
except OSError as e:
    print('error: %s' % e, flush=True)
time.sleep(3600)
"#;

/// The pid of the `boxer-runtime` of node `<service>-0` of [`CLUSTER`]
/// that this test process started (its child).
fn runtime_pid(service: &str) -> i32 {
    let me = std::process::id().to_string();
    let wanted = [format!("--cluster {CLUSTER} "), format!("--service {service} "), "--index 0 ".to_owned()];
    let found: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            let ppid = status.lines().find_map(|l| l.strip_prefix("PPid:"))?.trim().to_owned();
            let exe = std::fs::read_link(e.path().join("exe")).ok()?;
            let cmdline = String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).ok()?).replace('\0', " ");
            (ppid == me
                && exe.file_name().is_some_and(|n| n == "boxer-runtime")
                && wanted.iter().all(|w| cmdline.contains(w.as_str())))
            .then_some(pid)
        })
        .collect();
    assert_eq!(found.len(), 1, "not exactly one runtime of {service}-0 among this test's children: {found:?}");
    found[0]
}

/// Whether process `pid` is gone (or a zombie).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// A pid the app wrote to `path`.
fn read_pid(path: &Path) -> Option<i32> {
    read(path).trim().parse().ok()
}

/// The worker's files, for failure messages.
fn worker_files(dir: &Path) -> String {
    format!("--- worker.log:\n{}\n--- worker.err:\n{}", read(&dir.join("worker.log")), read(&dir.join("worker.err")))
}

/// The worker's line starting with `key`.
fn line(dir: &Path, key: &str) -> Option<String> {
    read(&dir.join("worker.log")).lines().find(|l| l.starts_with(key)).map(str::to_owned)
}

/// Bytes the worker has read so far.
fn progress(dir: &Path) -> u64 {
    read(&dir.join("worker.log"))
        .lines()
        .filter_map(|l| l.strip_prefix("progress "))
        .filter_map(|n| n.parse().ok())
        .next_back()
        .unwrap_or(0)
}

/// Kills the worker (SIGKILL) when dropped, if it still runs: it is no child
/// of the test, and outlives the lab's processes otherwise (up to its 60 s
/// alarm).
struct KillWorker(PathBuf);

impl Drop for KillWorker {
    fn drop(&mut self) {
        let Some(pid) = read_pid(&self.0.join("worker.pid")) else { return };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let app = self.0.join("app.py");
        if !gone(pid) && String::from_utf8_lossy(&cmdline).contains(app.to_str().unwrap()) {
            // SAFETY: kill(2) on the worker this test's app forked (checked by its command line).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[test]
fn a_crashed_runtime_fails_its_forked_apps_overlay_sockets_instead_of_hanging() {
    lab::require_isolation();
    let began = Instant::now();
    let mut c = LabCluster::start(CLUSTER).unwrap();
    let dir = c.dir.path().to_path_buf();
    let d = dir.to_str().unwrap().to_owned();
    for (file, text) in [("server.py", SERVER), ("app.py", APP), ("reader.py", READER)] {
        std::fs::write(dir.join(file), text).unwrap();
    }
    let _kill_worker = KillWorker(dir.clone());
    let (server, app, reader) = (format!("{d}/server.py"), format!("{d}/app.py"), format!("{d}/reader.py"));

    let da = c.device("a-0", NatOptions::new(NatKind::Moderate)).unwrap();
    let db = c.device("b-0", NatOptions::new(NatKind::Moderate)).unwrap();
    let a = c.node(CLUSTER, da, "a", 0, &["--run-dir", &d, "--", "python3", &server]).unwrap();
    let b = c.node(CLUSTER, db, "b", 0, &["--run-dir", &d, "--", "python3", &app, &d]).unwrap();
    c.wait_listening(&b, "a-0", 7000).unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));

    // The worker reads from a-0 through b-0's runtime.
    wait_until(Duration::from_secs(20), "the worker to read from a-0", || {
        if progress(&dir) >= MID_TRANSFER { Ok(()) } else { Err(worker_files(&dir)) }
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let echo =
        line(&dir, "udp echo ").unwrap_or_else(|| panic!("no UDP echo before the crash\n{}", worker_files(&dir)));
    let worker = read_pid(&dir.join("worker.pid")).expect("worker.pid");
    let parent = read_pid(&dir.join("parent.pid")).expect("parent.pid");
    println!("set up in {:.1?}: the worker (pid {worker}) reads from a-0; {echo}", began.elapsed());

    // --- The crash: SIGKILL to b-0's runtime alone.
    let pid = runtime_pid("b");
    let at_kill = progress(&dir);
    // SAFETY: kill(2) on b-0's runtime, a child of this test (checked above).
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let killed = Instant::now();
    let ended = wait_until(Duration::from_secs(5), "b-0's runtime to die", || match c.running(&b) {
        Ok(()) => Err("still running".into()),
        Err(how) => Ok(how),
    })
    .unwrap();
    assert!(ended.contains("signal: 9"), "b-0's runtime ended otherwise than by the SIGKILL: {ended}");
    std::fs::write(dir.join("go"), "").unwrap();
    assert!(!gone(worker), "the worker died with the runtime\n{}", worker_files(&dir));
    let parent_gone = wait_until(Duration::from_secs(5), "the program to die with its runtime", || {
        if gone(parent) { Ok(killed.elapsed()) } else { Err(format!("pid {parent} still runs")) }
    });
    match &parent_gone {
        Ok(t) => println!("crash: {ended}; the program (pid {parent}) died with it ({t:.1?}), the worker runs on"),
        Err(e) => println!("crash: {ended}; {e:#}"),
    }

    // 1. The open connection ends: EOF or an error, not a hang.
    let stream = wait_until(BOUND, "the worker's open connection to end", || {
        line(&dir, "stream: ").ok_or_else(|| format!("{} bytes read so far", progress(&dir)))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", worker_files(&dir), c.logs()));
    println!(
        "1. open connection: {stream} ({:.1?} after the SIGKILL; {at_kill} bytes read at the kill)",
        killed.elapsed()
    );

    // 2. New connects and sends towards the overlay fail promptly.
    let results = wait_until(BOUND + Duration::from_secs(10), "the worker's attempts after the crash", || {
        line(&dir, "done")
            .map(|_| ())
            .ok_or_else(|| read(&dir.join("worker.log")).lines().last().unwrap_or_default().to_owned())
    });
    let files = worker_files(&dir);
    results.unwrap_or_else(|e| panic!("{e:#}\n{files}\n{}", c.logs()));
    let took = |l: &str| -> f64 {
        l.rsplit_once(" in ").and_then(|(_, t)| t.trim_end_matches(" s").parse().ok()).unwrap_or(f64::MAX)
    };
    for key in ["tcp-ip", "udp-new", "tcp-name"] {
        let l = line(&dir, &format!("{key}: ")).unwrap_or_else(|| panic!("no {key} result\n{files}"));
        println!("2. {l}");
        assert!(l.starts_with(&format!("{key}: error ")), "{key} did not fail after the crash: {l}\n{files}");
        assert!(took(&l) < BOUND.as_secs_f64(), "{key} took too long to fail: {l}\n{files}");
    }
    let tcp_ip = line(&dir, "tcp-ip: ").unwrap();
    assert!(
        ["ENETUNREACH", "ECONNREFUSED", "EHOSTUNREACH"].iter().any(|e| tcp_ip.contains(e)),
        "a connect to a-0's overlay address failed otherwise than as unreachable or refused: {tcp_ip}\n{files}"
    );
    let udp_old = line(&dir, "udp-old: ").unwrap_or_else(|| panic!("no udp-old result\n{files}"));
    println!("2. {udp_old}");
    assert!(udp_old.starts_with("udp-old: error "), "sends on the pre-crash UDP flow never failed: {udp_old}\n{files}");
    let err = read(&dir.join("worker.err"));
    println!("2. worker's stderr:\n{}", err.trim_end());
    assert!(
        err.contains("cannot reach the Boxer runtime") && err.contains("overlay addresses are unreachable"),
        "the shim did not say the runtime is unreachable\n{files}"
    );

    // 3. The rest of the cluster goes on: a-0 runs, and a new node joins
    // and reads from it.
    if let Err(e) = c.running(&a) {
        panic!("{e}\n{}", c.logs());
    }
    let joining = Instant::now();
    let dn = c.device("new-0", NatOptions::new(NatKind::Moderate)).unwrap();
    let n = c
        .node(
            CLUSTER,
            dn,
            "new",
            0,
            &["--wait-for", "a-0:7000", "--wait-timeout", "30", "--run-dir", &d, "--", "python3", &reader],
        )
        .unwrap_or_else(|e| panic!("new-0 did not join: {e:#}\n{}", c.logs()));
    let out = dir.join("new-0.out");
    let got = wait_until(Duration::from_secs(30), "new-0 to read from a-0", || {
        read(&out)
            .lines()
            .find(|l| l.starts_with("read ") || l.starts_with("error: "))
            .map(str::to_owned)
            .ok_or_else(|| read(&n.log).lines().last().unwrap_or_default().to_owned())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    assert_eq!(got, "read 1048576 bytes from a-0", "{}", c.logs());
    println!("3. a-0 runs on; new-0 joined and {got} in {:.1?}", joining.elapsed());
    if let Err(e) = c.running(&a) {
        panic!("{e}\n{}", c.logs());
    }
    let a_out = read(&dir.join("a-0.out"));
    println!("a-0's program:\n{}", a_out.trim_end());
    println!("whole test: {:.1?}", began.elapsed());
}
