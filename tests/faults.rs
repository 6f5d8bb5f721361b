//! Faults in the lab: a node killed with SIGKILL in the middle of a
//! transfer. Its peers' programs see the connection reset (or end) within a
//! bound instead of hanging, its name stops resolving, and the rest of the
//! cluster keeps running.
//!
//! The bound: the rendezvous notices a node whose connection went silent
//! after its idle timeout (`RENDEZVOUS_IDLE_TIMEOUT`, 5 s) and marks it
//! away (it could be back: a lost connection is not a departure); it asks
//! the others to check, the client's runtime, which has a direct path to
//! it, probes it for `ALIVE_WINDOW` (3 s) and reports it silent, and the
//! rendezvous publishes that it left; every peer then closes its
//! connection to it, which resets the streams and so the programs' TCP
//! connections. Measured here: about 8.7 s. The test allows
//! [`RESET_WITHIN`] so a loaded machine does not fail it; what it rules
//! out is a hang (the peer's own QUIC idle timeout, 30 s, would be the
//! next bound).

use std::time::{Duration, Instant};

use boxer_e2e::up::{BoxerRun as Run, StopOnDrop, output_of};

/// Longest wait for the reset the test accepts (see the module docs).
const RESET_WITHIN: Duration = Duration::from_secs(20);

/// Sends without end to whoever connects.
const SERVER: &str = "import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 7000)); s.listen()
c, _ = s.accept()
while True:
    c.sendall(b'x' * 65536)
";

/// Reads from the server until the connection ends, then says how and how
/// long after the last byte, and whether the server's name still resolves.
const CLIENT: &str = "import socket, time
while True:
    try:
        c = socket.create_connection(('srv-0', 7000)); break
    except OSError:
        time.sleep(0.2)
n, last = 0, time.time()
print('connected', flush=True)
while True:
    try:
        b = c.recv(65536)
    except OSError as e:
        how = 'reset' if e.errno == 104 else 'error %d' % e.errno
        break
    if not b:
        how = 'eof'
        break
    n += len(b); last = time.time()
print('ended %s after %.1f s, %d bytes' % (how, time.time() - last, n), flush=True)
try:
    socket.getaddrinfo('srv-0', 7000)
    print('srv-0 still resolves')
except socket.gaierror:
    print('srv-0 no longer resolves')
";

/// Pids of the processes (waiter and runtime) of node `service`-0 of `cluster`.
fn runtime_pids(cluster: &str, service: &str) -> Vec<i32> {
    let wanted = [format!("--cluster {cluster}"), format!("--service {service}")];
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
            let cmdline = String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).ok()?).replace('\0', " ");
            (cmdline.contains("boxer-runtime") && wanted.iter().all(|w| cmdline.contains(w.as_str()))).then_some(pid)
        })
        .collect()
}

#[test]
fn a_node_killed_mid_transfer_resets_its_peers_connections_and_leaves() {
    let run = Run::new("faults-kill");
    let spec = run.spec(
        "[cluster]\nname = \"faults\"\n\
         [services.srv]\ncommand = [\"python3\", \"server.py\"]\n\
         [services.cli]\nmain = true\ncommand = [\"python3\", \"client.py\"]\n",
    );
    let dir = spec.parent().unwrap();
    std::fs::write(dir.join("server.py"), SERVER).unwrap();
    std::fs::write(dir.join("client.py"), CLIENT).unwrap();
    let mut up = run.spawn(&["up", spec.to_str().unwrap()]);
    let stop = StopOnDrop(up.id());

    // Mid-transfer: the client is connected and reading.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !run.output().contains("cli-0 | connected") {
        assert!(Instant::now() < deadline, "the transfer did not start:\n{}", run.output());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let pids = runtime_pids("faults", "srv");
    assert!(!pids.is_empty(), "no runtime of srv-0 found");
    for pid in &pids {
        // SAFETY: kill(2) on processes of this test's cluster.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    let killed = Instant::now();

    // The client's connection ends (it does not hang), the cluster goes on
    // and ends with the client, the main service.
    let status = loop {
        if let Some(status) = up.try_wait().unwrap() {
            break status;
        }
        assert!(
            killed.elapsed() < RESET_WITHIN + Duration::from_secs(10),
            "the peer's connection did not end:\n{}",
            run.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let waited = killed.elapsed();
    drop(stop);
    let out = run.output();
    assert_eq!(status.code(), Some(0), "{out}");
    let client = output_of(&out, "cli-0");
    let ended = client.iter().find(|l| l.starts_with("ended ")).unwrap_or_else(|| panic!("{out}"));
    assert!(ended.starts_with("ended reset") || ended.starts_with("ended eof"), "{ended}");
    assert!(waited < RESET_WITHIN, "the reset took {waited:?}:\n{out}");
    println!("peer's connection {ended} ({waited:.1?} after the SIGKILL)");
    // The killed node left the cluster: its name no longer resolves.
    assert!(client.contains(&"srv-0 no longer resolves"), "{out}");
    assert!(out.contains("srv-0 | runtime exited with code 137"), "{out}");
}

/// A program that crashes (SIGSEGV) after some output: its exit status and
/// last lines reach `boxer up`, `boxer logs` and `boxer status`, and the
/// node leaves the cluster (its name stops resolving) while the rest goes on.
#[test]
fn a_crashing_program_leaves_its_status_and_last_lines_and_its_node_leaves() {
    let run = Run::new("faults-crash");
    let spec = run.spec(
        "[cluster]\nname = \"crash\"\n\
         [services.crash]\ncommand = [\"python3\", \"-c\", \"import os, time\\nprint('last words', flush=True)\\ntime.sleep(1)\\nos.kill(os.getpid(), 11)\"]\n\
         [services.main]\nmain = true\ncommand = [\"sh\", \"-c\", \"sleep 4; getent hosts crash-0 || echo crash-0 is gone\"]\n",
    );
    let (code, out) = run.run(&["up", spec.to_str().unwrap()], Duration::from_secs(60));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("crash-0 | last words"), "{out}");
    // 128 + SIGSEGV, as a shell reports it.
    assert!(out.contains("crash-0 | exited with code 139"), "{out}");
    assert!(output_of(&out, "main-0").contains(&"crash-0 is gone"), "{out}");
    let logs = run.boxer().args(["logs", "crash-0"]).output().unwrap();
    assert!(String::from_utf8_lossy(&logs.stdout).contains("last words"), "{logs:?}");
    let status = run.boxer().args(["status", "crash"]).output().unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.lines().any(|l| l.starts_with("crash-0") && l.contains("exited 139")), "{status}");
}
