//! A bulk transfer over a bad path: 5 % random packet loss and 50 ms of
//! delay on a router between two nodes behind NATs. The transfer arrives
//! whole (SHA-256 on both ends) over the direct path; its rate is printed.
//!
//! ```text
//!   a-0 ── nat-a-0 (moderate) ── internet ── isp-nat-b-0 ── nat-b-0 (masquerade) ── b-0
//!                                            5 % of forwarded UDP dropped, each way;
//!                                            +50 ms towards b-0 (50 ms round trip)
//! ```
//!
//! The impairment sits on the ISP router in front of b-0's NAT, a plain
//! router: this kernel has no `netem`, so the delay is a TUN device with a
//! thread that holds each packet back (`boxer::lab::DelayLine`), which only
//! works on a router that does not NAT. Loss is an nftables `numgen random`
//! rule. Both are checked before the transfer (a UDP echo through the
//! router) and after it (the rule's counters). The nodes' uplinks split UDP
//! GSO batches into single packets, as a NIC does, so that loss is per
//! packet rather than per batch of up to 64.
//!
//! The transfer is [`DEFAULT_MB`] MB (`BOXER_LOSSY_MB` sets another size).
//! Peer connections use BBR (`boxer_net::transport::peer`): with quinn's
//! default controller (Cubic) the rate is bounded by the loss (Mathis:
//! ~1.2 · MSS / (RTT · √p)), ~0.15 MB/s here, and 500 MB would take an
//! hour; with BBR they take 13-15 s in a debug build.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use boxer_e2e::natlab::*;
use boxer_e2e::*;

isolate_this_test_binary!();

/// Port of the program on `a-0`.
const PORT: u16 = 7000;
/// Share of forwarded UDP packets the router drops, in each direction.
const LOSS_PERCENT: u32 = 5;
/// Delay the router adds to packets towards b-0.
const DELAY: Duration = Duration::from_millis(50);
/// Megabytes of the transfer over the impaired path, unless
/// `BOXER_LOSSY_MB` says otherwise.
const DEFAULT_MB: u64 = 500;
/// Megabytes of the reference transfer before the impairment.
const REFERENCE_MB: u64 = 50;
/// Slowest rate the impaired transfer may have before it times out
/// (a twentieth of what BBR reaches here; Cubic's 0.15 MB/s fails it).
const SLOWEST: f64 = 1.5e6;

/// On `a-0`: for each connection, a request line `send TAG BYTES`: that
/// many random bytes, then the byte count and SHA-256 of what was sent.
const SERVER: &str = r#"import hashlib, os, socket, threading, time

def serve(c):
    f = c.makefile('rb')
    words = f.readline().decode().split()
    tag, size = words[1], int(words[2])
    h, sent, start = hashlib.sha256(), 0, time.time()
    try:
        while sent < size:
            b = os.urandom(min(1 << 20, size - sent))
            c.sendall(b)
            h.update(b)
            sent += len(b)
        c.shutdown(socket.SHUT_WR)
        f.read()
        print('%s sent %d %s in %.2f s' % (tag, sent, h.hexdigest(), time.time() - start), flush=True)
    except OSError as e:
        print('%s error after %d bytes sent: %s' % (tag, sent, e), flush=True)
    c.close()

s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 7000))
s.listen()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// On `b-0`: `client.py DIR TAG:BYTES...`; for each transfer, waits for
/// the file DIR/go-TAG, asks `a-0` for it, reports progress every second,
/// then the byte count and SHA-256 of what arrived and how long it took.
/// Then idles (the node stays).
const CLIENT: &str = r#"import hashlib, os, socket, sys, time
for spec in sys.argv[2:]:
    tag, size = spec.split(':')
    while not os.path.exists(os.path.join(sys.argv[1], 'go-' + tag)):
        time.sleep(0.05)
    h, got, start, last = hashlib.sha256(), 0, time.time(), time.time()
    try:
        c = socket.create_connection(('a-0', 7000), timeout=30)
        c.settimeout(60)
        c.sendall(('send %s %s\n' % (tag, size)).encode())
        while True:
            b = c.recv(1 << 20)
            if not b:
                break
            h.update(b)
            got += len(b)
            if time.time() - last >= 1:
                last = time.time()
                print('%s progress %d' % (tag, got), flush=True)
        c.close()
        print('%s received %d %s in %.2f s' % (tag, got, h.hexdigest(), time.time() - start), flush=True)
    except OSError as e:
        print('%s error after %d bytes received: %s' % (tag, got, e), flush=True)
time.sleep(3600)
"#;

/// The program output of a lab node (its runtime's stdout).
fn out_path(c: &LabCluster, node: &LabNode) -> PathBuf {
    c.dir.path().join(format!("{}.out", node.name))
}

/// The line of `node`'s output about transfer `tag` whose second word is
/// one of `words`.
fn line(c: &LabCluster, node: &LabNode, tag: &str, words: &[&str]) -> Option<String> {
    read(&out_path(c, node))
        .lines()
        .find(|l| words.iter().any(|w| l.starts_with(&format!("{tag} {w} "))))
        .map(str::to_owned)
}

/// Runs transfer `tag` of `bytes` from `a-0` to `b-0` (whose client waits
/// for it), checks it arrived whole, prints and returns its duration.
fn transfer(c: &LabCluster, a: &LabNode, b: &LabNode, tag: &str, bytes: u64, budget: Duration) -> Duration {
    std::fs::write(c.dir.path().join(format!("go-{tag}")), "").unwrap();
    let client = wait_until(budget, &format!("transfer {tag} to end on b-0"), || {
        line(c, b, tag, &["received", "error"])
            .ok_or_else(|| read(&out_path(c, b)).lines().last().unwrap_or_default().to_owned())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let server = wait_until(Duration::from_secs(20), &format!("transfer {tag} to end on a-0"), || {
        line(c, a, tag, &["sent", "error"]).ok_or_else(|| read(&out_path(c, a)))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    // "<tag> received|sent <bytes> <sha256> in <secs> s"
    let words = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    let (got, sent) = (words(&client), words(&server));
    assert!(got[1] == "received" && sent[1] == "sent", "transfer {tag} failed: b-0: {client}; a-0: {server}");
    assert_eq!(got[2], bytes.to_string(), "transfer {tag}: bytes received ({client})");
    assert_eq!(sent[2], bytes.to_string(), "transfer {tag}: bytes sent ({server})");
    assert_eq!(got[3], sent[3], "transfer {tag}: SHA-256 of what arrived differs from what was sent");
    let took = Duration::from_secs_f64(got[5].parse().unwrap());
    println!(
        "transfer {tag}: {bytes} bytes intact in {:.2} s: {:.2} MB/s",
        took.as_secs_f64(),
        bytes as f64 / took.as_secs_f64() / 1e6
    );
    took
}

/// Checks both nodes reach each other directly.
fn assert_direct(c: &LabCluster, a: &LabNode, b: &LabNode) {
    for (node, peer) in [(a, "b-0"), (b, "a-0")] {
        let path = wait_until(Duration::from_secs(20), &format!("{} to reach {peer} directly", node.name), || {
            let path = c.path(node, peer).map_err(|e| format!("{e:#}"))?;
            if path.starts_with("direct") { Ok(path) } else { Err(path) }
        });
        if let Err(e) = path {
            panic!("{e:#}\n{}", c.logs());
        }
    }
}

#[test]
fn a_transfer_over_a_lossy_delayed_path_arrives_intact() {
    lab::require_isolation();
    let began = Instant::now();
    let mb = std::env::var("BOXER_LOSSY_MB").map_or(DEFAULT_MB, |v| v.parse().expect("BOXER_LOSSY_MB is a number"));
    let (reference, bytes) = (REFERENCE_MB * 1_000_000, mb * 1_000_000);
    let mut c = LabCluster::start("lossy").unwrap();
    let dir = c.dir.path().to_str().unwrap().to_owned();
    for (file, text) in [("server.py", SERVER), ("client.py", CLIENT)] {
        std::fs::write(c.dir.path().join(file), text).unwrap();
    }
    let da = c.device("a-0", NatOptions::new(NatKind::Moderate)).unwrap();
    let db = c.device("b-0", NatOptions::new(NatKind::Masquerade)).unwrap();
    for device in [&da, &db] {
        LabNet::segment_on_send(device).unwrap();
    }
    let isp = c.lab.any_router("isp-nat-b-0").expect("a masquerading NAT has an ISP router");
    let b_side = isp.downstream_cidr().expect("the ISP router has a LAN").to_string();
    let a = c.node("lossy", da, "a", 0, &["--run-dir", &dir, "--", "python3", &format!("{dir}/server.py")]).unwrap();
    let client = format!("{dir}/client.py");
    let specs = [format!("reference:{reference}"), format!("lossy:{bytes}")];
    let b = c
        .node("lossy", db, "b", 0, &["--run-dir", &dir, "--", "python3", &client, &dir, &specs[0], &specs[1]])
        .unwrap();
    c.wait_listening(&b, "a-0", PORT).unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    println!("lab and two nodes up in {:.1?}", began.elapsed());

    // The reference: the same path unimpaired. Punching happens here, on a
    // clean path; this test is about the transfer.
    transfer(&c, &a, &b, "reference", reference, Duration::from_secs(60));
    assert_direct(&c, &a, &b);

    let delay = LabNet::delay(&isp, &b_side, DELAY).unwrap();
    LabNet::random_loss(&isp, LOSS_PERCENT).unwrap();
    // A UDP echo from b-0 through the router: delayed one way, dropped at
    // 5 % each way (9.75 % of echoes lost).
    let probe = c.udp_echo_probe(&b.device, 1000).unwrap();
    let rtt = probe.median_rtt().expect("some echo came back");
    println!("impairment: {:.1} % of UDP echoes lost, median round trip {rtt:.1?}", probe.loss_percent());
    assert!(rtt >= DELAY && rtt < DELAY + Duration::from_millis(10), "median round trip {rtt:?}, expected ~{DELAY:?}");
    assert!(
        (4.0..17.0).contains(&probe.loss_percent()),
        "{:.1} % of echoes lost, expected ~9.75",
        probe.loss_percent()
    );

    let budget = Duration::from_secs(30) + Duration::from_secs_f64(bytes as f64 / SLOWEST);
    let took = transfer(&c, &a, &b, "lossy", bytes, budget);
    let (seen, dropped) = LabNet::loss_counts(&isp).unwrap();
    let carried = delay.stop().unwrap();
    LabNet::stop_loss(&isp).unwrap();
    let share = 100.0 * dropped as f64 / seen as f64;
    println!(
        "with {LOSS_PERCENT} % loss and {DELAY:?} delay: {bytes} bytes in {:.2} s ({:.3} MB/s); the router dropped \
         {dropped} of {seen} UDP packets ({share:.2} %) and delayed {carried}",
        took.as_secs_f64(),
        bytes as f64 / took.as_secs_f64() / 1e6
    );
    assert!((3.5..6.5).contains(&share), "the router dropped {share:.2} % of UDP packets, expected ~{LOSS_PERCENT}");
    assert!(carried >= bytes / 1500, "the delay line carried only {carried} packets");
    assert_direct(&c, &a, &b);
    println!("whole test: {:.1?}", began.elapsed());
}
