//! The rendezvous going away under a running cluster: killed with SIGKILL
//! and restarted at once on its state directory, then killed and left dead
//! for several seconds, then unreachable for 30 s (the
//! public router drops its packets). Open direct connections between nodes
//! carry on untouched (a paced transfer spans each outage and arrives
//! intact), every runtime keeps running and rejoins as the same member (same
//! node id and overlay address), and a node joining afterwards reaches the
//! others. One lab for both outages, one after the other, on the same nodes.

use std::path::Path;
use std::time::{Duration, Instant};

use boxer_e2e::natlab::*;
use boxer_e2e::*;

isolate_this_test_binary!();

/// What a runtime logs when its rendezvous connection is lost.
const LOST: &str = "lost the rendezvous";
/// What a runtime logs when it is back in the cluster.
const REJOINED: &str = "rejoined the cluster as the same member";
/// Port of the program on `a-0`.
const PORT: u16 = 7000;
/// Bytes per chunk the server sends.
const CHUNK: usize = 64 << 10;
/// Time between chunks: 3.2 MB/s, a steady stream whose progress shows.
const PACE: Duration = Duration::from_millis(20);
/// Chunks of the transfer across both restarts: 20 s, 65 MB.
const RESTART_CHUNKS: u32 = 1000;
/// How long the rendezvous stays dead after every runtime noticed (so they
/// try a dead server before the new one answers).
const DEAD_AFTER_NOTICE: Duration = Duration::from_secs(2);
/// How long the rendezvous is unreachable.
const CUT_FOR: Duration = Duration::from_secs(30);
/// Chunks of the transfer across the cut: 38 s, 119 MiB, ending after it.
const CUT_CHUNKS: u32 = 1900;
/// Longest wait for the runtimes to rejoin once the rendezvous is back
/// (reconnect back-off is at most 5 s, plus a QUIC handshake).
const REJOIN_WITHIN: Duration = Duration::from_secs(30);
/// Longest wait for a runtime to notice the cut (the rendezvous connection's
/// idle timeout, 5 s, and slack).
const NOTICE_WITHIN: Duration = Duration::from_secs(20);

/// On `a-0`: for each connection, a request line. `send TAG N SIZE PAUSE`:
/// N chunks of SIZE random bytes, one every PAUSE seconds (on a schedule,
/// so a stall is caught up), then the byte count and SHA-256 of what was
/// sent. `echo` then a line: that line back.
const SERVER: &str = r#"import hashlib, os, socket, threading, time

def transfer(c, f, tag, chunks, size, pause):
    h, sent, start = hashlib.sha256(), 0, time.time()
    try:
        for i in range(chunks):
            b = os.urandom(size)
            c.sendall(b)
            h.update(b)
            sent += len(b)
            delay = start + (i + 1) * pause - time.time()
            if delay > 0:
                time.sleep(delay)
        c.shutdown(socket.SHUT_WR)
        f.read()
        print('%s sent %d %s in %.1f s' % (tag, sent, h.hexdigest(), time.time() - start), flush=True)
    except OSError as e:
        print('%s error after %d bytes sent: %s' % (tag, sent, e), flush=True)

def serve(c):
    f = c.makefile('rb')
    words = f.readline().decode().split()
    if words[:1] == ['echo']:
        c.sendall(b'echo ' + f.readline())
    elif words[:1] == ['send']:
        transfer(c, f, words[1], int(words[2]), int(words[3]), float(words[4]))
    c.close()

s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 7000))
s.listen()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// On `b-0`: `client.py DIR TAG:N:SIZE:PAUSE...`; for each transfer, waits
/// for the file DIR/go-TAG, asks `a-0` for it, reports progress every
/// 0.25 s and then the byte count and SHA-256 of what arrived. Then idles
/// (the node stays).
const CLIENT: &str = r#"import hashlib, os, socket, sys, time
for spec in sys.argv[2:]:
    tag, chunks, size, pause = spec.split(':')
    while not os.path.exists(os.path.join(sys.argv[1], 'go-' + tag)):
        time.sleep(0.05)
    h, got, start, last = hashlib.sha256(), 0, time.time(), 0
    try:
        c = socket.create_connection(('a-0', 7000), timeout=30)
        c.settimeout(60)
        c.sendall(('send %s %s %s %s\n' % (tag, chunks, size, pause)).encode())
        while True:
            b = c.recv(1 << 16)
            if not b:
                break
            h.update(b)
            got += len(b)
            if time.time() - last >= 0.25:
                last = time.time()
                print('%s progress %d' % (tag, got), flush=True)
        c.close()
        print('%s received %d %s in %.1f s' % (tag, got, h.hexdigest(), time.time() - start), flush=True)
    except OSError as e:
        print('%s error after %d bytes received: %s' % (tag, got, e), flush=True)
time.sleep(3600)
"#;

/// On a new node: `echo.py NAME`; connects to `a-0` (retrying for 30 s),
/// has a line echoed, prints the reply. Then idles (the node stays).
const ECHO: &str = r#"import socket, sys, time
deadline = time.time() + 30
try:
    while True:
        try:
            c = socket.create_connection(('a-0', 7000), timeout=20)
            break
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)
    c.settimeout(20)
    c.sendall(b'echo\nhello from ' + sys.argv[1].encode() + b'\n')
    reply = b''
    while True:
        b = c.recv(4096)
        if not b:
            break
        reply += b
    print('reply: ' + reply.decode().strip(), flush=True)
except OSError as e:
    print('error: %s' % e, flush=True)
time.sleep(3600)
"#;

/// The program output of a lab node (its runtime's stdout).
fn out_path(c: &LabCluster, node: &LabNode) -> std::path::PathBuf {
    c.dir.path().join(format!("{}.out", node.name))
}

/// How often `needle` occurs in the file at `path`.
fn count(path: &Path, needle: &str) -> usize {
    read(path).matches(needle).count()
}

/// Bytes `b-0` has received of transfer `tag` so far.
fn progress(c: &LabCluster, b: &LabNode, tag: &str) -> u64 {
    let prefix = format!("{tag} progress ");
    read(&out_path(c, b))
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|n| n.trim().parse().ok())
        .next_back()
        .unwrap_or(0)
}

/// A node's own id and overlay address from its status file.
fn identity(node: &LabNode) -> (u64, String) {
    let status = read_status(&node.status).unwrap_or_else(|e| panic!("{e}"));
    let id = status["node_id"].as_u64().unwrap_or_else(|| panic!("no node_id: {status}"));
    let ip = status["overlay_ip"].as_str().unwrap_or_else(|| panic!("no overlay_ip: {status}")).to_owned();
    (id, ip)
}

/// The node id `node` has for member `peer`, if it lists it.
fn member_id(node: &LabNode, peer: &str) -> Option<u64> {
    let status = read_status(&node.status).ok()?;
    status["members"].as_array()?.iter().find(|m| m["name"] == peer)?["node_id"].as_u64()
}

/// Waits until every node has logged `what` more often than the count
/// given with it; returns how long that took.
fn wait_logged(c: &LabCluster, what: &str, nodes: &[(&LabNode, usize)], timeout: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    wait_until(timeout, &format!("every runtime to log `{what}` once more"), || {
        let behind: Vec<String> = nodes
            .iter()
            .filter(|(n, before)| count(&n.log, what) <= *before)
            .map(|(n, before)| format!("{} (still {before} times)", n.name))
            .collect();
        if behind.is_empty() { Ok(()) } else { Err(behind.join(", ")) }
    })
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", c.logs()))?;
    Ok(start.elapsed())
}

/// How often each node has logged `what` so far.
fn counts<'n>(what: &str, nodes: &[&'n LabNode]) -> Vec<(&'n LabNode, usize)> {
    nodes.iter().map(|n| (*n, count(&n.log, what))).collect()
}

/// Starts transfer `tag` and waits until bytes arrive.
fn start_transfer(c: &LabCluster, b: &LabNode, tag: &str) {
    std::fs::write(c.dir.path().join(format!("go-{tag}")), "").unwrap();
    wait_until(Duration::from_secs(20), &format!("transfer {tag} to start"), || {
        if progress(c, b, tag) > 0 { Ok(()) } else { Err(read(&out_path(c, b))) }
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
}

/// Waits for transfer `tag` of `chunks` chunks to end on both sides and
/// checks it arrived whole; returns its rate in MB/s.
fn finish_transfer(c: &LabCluster, a: &LabNode, b: &LabNode, tag: &str, chunks: u32) -> f64 {
    let budget = PACE * chunks + Duration::from_secs(60);
    // Either line ends the client's transfer: a received or an error line.
    let client = wait_until(budget, &format!("transfer {tag} to end on b-0"), || {
        read(&out_path(c, b))
            .lines()
            .find(|l| l.starts_with(&format!("{tag} received ")) || l.starts_with(&format!("{tag} error")))
            .map(str::to_owned)
            .ok_or_else(|| read(&out_path(c, b)).lines().last().unwrap_or_default().to_owned())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let server = wait_until(Duration::from_secs(20), &format!("transfer {tag} to end on a-0"), || {
        read(&out_path(c, a))
            .lines()
            .find(|l| l.starts_with(&format!("{tag} sent ")) || l.starts_with(&format!("{tag} error")))
            .map(str::to_owned)
            .ok_or_else(|| read(&out_path(c, a)))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    // "<tag> received|sent <bytes> <sha256> in <secs> s"
    let words = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    let (got, sent) = (words(&client), words(&server));
    assert!(got[1] == "received" && sent[1] == "sent", "transfer {tag} failed: b-0: {client}; a-0: {server}");
    let expected = (CHUNK as u64 * chunks as u64).to_string();
    assert_eq!(got[2], expected, "transfer {tag}: bytes received ({client})");
    assert_eq!(sent[2], expected, "transfer {tag}: bytes sent ({server})");
    assert_eq!(got[3], sent[3], "transfer {tag}: SHA-256 of what arrived differs from what was sent");
    let secs: f64 = got[5].parse().unwrap();
    let rate = CHUNK as f64 * chunks as f64 / secs / 1e6;
    println!("transfer {tag}: {} bytes intact in {secs:.1} s ({rate:.1} MB/s, paced)", got[2]);
    rate
}

/// Checks the members after an outage: each runtime runs, is the member it
/// was (`before`), still lists the others under their ids; the path
/// between `a` and `b` is direct.
fn check_unchanged(c: &mut LabCluster, nodes: &[(&LabNode, (u64, String))], a: &LabNode, b: &LabNode) {
    for (node, before) in nodes {
        if let Err(e) = c.running(node) {
            panic!("{e}\n{}", c.logs());
        }
        assert_eq!(&identity(node), before, "{} is another member after the outage\n{}", node.name, c.logs());
        for (other, (id, _)) in nodes {
            assert_eq!(member_id(node, &other.name), Some(*id), "{} lists {}", node.name, other.name);
        }
    }
    for (node, peer) in [(a, "b-0"), (b, "a-0")] {
        let path = c.path(node, peer).unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
        assert!(path.starts_with("direct"), "{} reaches {peer} {path}\n{}", node.name, c.logs());
    }
}

/// Starts node `new-<index>` behind a NAT of its own, which joins and has
/// a line echoed by `a-0`; checks it reaches `a-0` directly.
fn new_node_reaches_a(c: &mut LabCluster, index: u32) -> LabNode {
    let name = format!("new-{index}");
    let device = c.device(&name, NatOptions::new(NatKind::Moderate)).unwrap();
    let dir = c.dir.path().to_str().unwrap().to_owned();
    let echo = format!("{dir}/echo.py");
    let joined = Instant::now();
    let node = c
        .node(
            "rdv",
            device,
            "new",
            index,
            &["--wait-for", "a-0:7000", "--wait-timeout", "30", "--run-dir", &dir, "--", "python3", &echo, &name],
        )
        .unwrap_or_else(|e| panic!("{name} did not join: {e:#}\n{}", c.logs()));
    let out = c.dir.path().join(format!("{name}.out"));
    let reply = wait_until(Duration::from_secs(40), &format!("{name}'s echo"), || {
        read(&out)
            .lines()
            .find(|l| l.starts_with("reply: ") || l.starts_with("error: "))
            .map(str::to_owned)
            .ok_or_else(|| read(&node.log).lines().last().unwrap_or_default().to_owned())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    assert_eq!(reply, format!("reply: echo hello from {name}"), "{}", c.logs());
    println!("{name} joined and was answered by a-0 in {:.1?}", joined.elapsed());
    let path = c.path(&node, "a-0").unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    assert!(path.starts_with("direct"), "{name} reaches a-0 {path}\n{}", c.logs());
    node
}

/// How many peer connections were made between `a` and `b` (logged by the
/// dialling side as "peer connection established peer=node-N ...").
fn connections_between(a: &LabNode, b: &LabNode, ids: (u64, u64)) -> usize {
    let made = |log: &Path, peer: u64| {
        let peer = format!("peer={} ", boxer_proto::names::node_name(peer as u32));
        read(log).lines().filter(|l| l.contains("peer connection established") && l.contains(&peer)).count()
    };
    made(&a.log, ids.1) + made(&b.log, ids.0)
}

#[test]
fn a_restarted_then_unreachable_rendezvous_breaks_no_connection_and_admits_new_nodes() {
    lab::require_isolation();
    let began = Instant::now();
    let mut c = LabCluster::start("rdv").unwrap();
    let dir = c.dir.path().to_str().unwrap().to_owned();
    for (file, text) in [("server.py", SERVER), ("client.py", CLIENT), ("echo.py", ECHO)] {
        std::fs::write(c.dir.path().join(file), text).unwrap();
    }
    let pause = format!("{}", PACE.as_secs_f64());
    let restart_spec = format!("1:{RESTART_CHUNKS}:{CHUNK}:{pause}");
    let cut_spec = format!("2:{CUT_CHUNKS}:{CHUNK}:{pause}");
    let server = format!("{dir}/server.py");
    let client = format!("{dir}/client.py");

    let da = c.device("a-0", NatOptions::new(NatKind::Moderate)).unwrap();
    let db = c.device("b-0", NatOptions::new(NatKind::Moderate)).unwrap();
    let a = c.node("rdv", da, "a", 0, &["--run-dir", &dir, "--", "python3", &server]).unwrap();
    let b = c
        .node("rdv", db, "b", 0, &["--run-dir", &dir, "--", "python3", &client, &dir, &restart_spec, &cut_spec])
        .unwrap();
    c.wait_listening(&b, "a-0", PORT).unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let (id_a, id_b) = (identity(&a), identity(&b));
    println!("lab and two nodes up in {:.1?}", began.elapsed());

    start_transfer(&c, &b, "1");
    let path = c.path(&b, "a-0").unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    assert!(path.starts_with("direct"), "b-0 reaches a-0 {path}\n{}", c.logs());
    let fingerprint = c.fingerprint().to_owned();

    // --- 0. A quick restart, as a process manager does it: the new process
    // answers the old connections with a stateless reset the runtimes can
    // verify (its key comes from the saved TLS key), so they rejoin at once
    // rather than after their idle timeout.
    let lost = counts(LOST, &[&a, &b]);
    let rejoined = counts(REJOINED, &[&a, &b]);
    c.kill_rendezvous();
    let restarted = c.restart_rendezvous().unwrap_or_else(|e| panic!("restart: {e:#}\n{}", c.logs()));
    assert_eq!(restarted, fingerprint, "the restarted rendezvous has another certificate");
    let rejoin = wait_logged(&c, REJOINED, &rejoined, REJOIN_WITHIN).unwrap_or_else(|e| panic!("{e:#}"));
    for (node, before) in &lost {
        let lines: Vec<String> = read(&node.log).lines().filter(|l| l.contains(LOST)).map(str::to_owned).collect();
        let line = lines.get(*before).unwrap_or_else(|| panic!("{} logged no loss\n{}", node.name, c.logs()));
        assert!(line.contains("reset by peer"), "{} did not learn of the restart from a reset: {line}", node.name);
    }
    println!("quick restart: both runtimes were reset and rejoined {rejoin:.1?} after the restart");

    // --- 1. SIGKILL, dead until every runtime noticed and 2 s more, then
    // restarted on the same state directory.
    let lost = counts(LOST, &[&a, &b]);
    let rejoined = counts(REJOINED, &[&a, &b]);
    c.kill_rendezvous();
    let killed = Instant::now();
    let at_kill = progress(&c, &b, "1");
    let noticed =
        wait_logged(&c, LOST, &lost, NOTICE_WITHIN).unwrap_or_else(|e| panic!("the kill went unnoticed: {e:#}"));
    std::thread::sleep(DEAD_AFTER_NOTICE);
    let before_restart = progress(&c, &b, "1");
    let restarted = c.restart_rendezvous().unwrap_or_else(|e| panic!("restart: {e:#}\n{}", c.logs()));
    let dead = killed.elapsed();
    assert_eq!(restarted, fingerprint, "the restarted rendezvous has another certificate");
    let rejoin = wait_logged(&c, REJOINED, &rejoined, REJOIN_WITHIN).unwrap_or_else(|e| panic!("{e:#}"));
    println!(
        "restart: both runtimes noticed {noticed:.1?} after the kill, rejoined {rejoin:.1?} after the restart \
         ({dead:.1?} dead)"
    );
    assert!(
        before_restart > at_kill,
        "no bytes arrived while the rendezvous was dead ({at_kill} at the kill, {before_restart} at the restart)"
    );
    println!("restart: {:.1} MB arrived while the rendezvous was dead", (before_restart - at_kill) as f64 / 1e6);
    finish_transfer(&c, &a, &b, "1", RESTART_CHUNKS);
    check_unchanged(&mut c, &[(&a, id_a.clone()), (&b, id_b.clone())], &a, &b);
    assert!(c.rendezvous_running(), "{}", c.logs());
    let new0 = new_node_reaches_a(&mut c, 0);
    let id_new0 = identity(&new0);

    // --- 2. The rendezvous unreachable for 30 s (its packets dropped).
    start_transfer(&c, &b, "2");
    let lost = counts(LOST, &[&a, &b, &new0]);
    let rejoined = counts(REJOINED, &[&a, &b, &new0]);
    assert!(c.rendezvous_reachable(&a.device).unwrap(), "the probe does not reach the rendezvous' device");
    c.cut_rendezvous().unwrap();
    let cut = Instant::now();
    let at_cut = progress(&c, &b, "2");
    if c.rendezvous_reachable(&a.device).unwrap() {
        let _ = c.reconnect_rendezvous();
        panic!("the cut lets packets through");
    }
    let noticed = wait_logged(&c, LOST, &lost, NOTICE_WITHIN).unwrap_or_else(|e| {
        let _ = c.reconnect_rendezvous();
        panic!("the cut went unnoticed: {e:#}")
    });
    std::thread::sleep(CUT_FOR.saturating_sub(cut.elapsed()));
    let before_reconnect = progress(&c, &b, "2");
    c.reconnect_rendezvous().unwrap();
    assert!(c.rendezvous_reachable(&a.device).unwrap(), "the rendezvous is still cut off");
    println!("cut: every runtime noticed {noticed:.1?} after the cut; reconnected after {:.1?}", cut.elapsed());
    let rejoin = wait_logged(&c, REJOINED, &rejoined, REJOIN_WITHIN).unwrap_or_else(|e| panic!("{e:#}"));
    println!("cut: every runtime rejoined {rejoin:.1?} after the rendezvous became reachable");
    assert!(
        before_reconnect > at_cut,
        "no bytes arrived while the rendezvous was cut off ({at_cut} at the cut, {before_reconnect} at the end)"
    );
    println!("cut: {:.1} MB arrived while the rendezvous was cut off", (before_reconnect - at_cut) as f64 / 1e6);
    finish_transfer(&c, &a, &b, "2", CUT_CHUNKS);
    check_unchanged(&mut c, &[(&a, id_a.clone()), (&b, id_b.clone()), (&new0, id_new0)], &a, &b);
    assert!(c.rendezvous_running(), "{}", c.logs());
    new_node_reaches_a(&mut c, 1);

    // One connection between a-0 and b-0 all along: neither outage replaced it.
    assert_eq!(connections_between(&a, &b, (id_a.0, id_b.0)), 1, "{}", c.logs());
    println!("whole test: {:.1?}", began.elapsed());
}
