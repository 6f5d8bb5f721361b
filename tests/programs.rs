//! Unmodified programs as Debian ships them, in the lab through `boxer up`:
//! servers that drop root keep the overlay, only processes of a node can
//! use its runtime, and a node's own address is its overlay address however
//! a program asks.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use boxer_e2e::up::{BoxerRun as Run, example, output_of, text};

/// Stops a background `boxer up` if the test fails before it is done.
struct StopAndWait(std::process::Child);

impl Drop for StopAndWait {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our child; it tears its cluster down on SIGTERM.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

#[test]
fn postgres_runs_as_postgres_and_pgbench_reports_tps() {
    assert!(
        Path::new("/usr/lib/postgresql").is_dir(),
        "PostgreSQL is not installed (`.ci/run` installs Debian's postgresql)"
    );
    let run = Run::new("programs-postgres");
    let out = run.boxer().arg("up").arg(example("postgres")).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("database system is ready to accept connections"), "{stdout}");
    let tps: f64 = output_of(&stdout, "bench-0")
        .into_iter()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no tps line:\n{stdout}"));
    println!("pgbench across two NATed nodes: {tps:.0} tps");
    assert!(tps > 0.0, "{stdout}");
    assert!(stdout.contains("number of failed transactions: 0"), "{stdout}");
    // The server ran as `postgres`: it refuses to start as root.
    assert!(!stdout.contains("cannot be run as root"), "{stdout}");
}

/// The environment of process `pid`.
fn environ(pid: u32) -> HashMap<String, String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// The pid of the `sleep` process whose command line is `sleep <marker>`.
fn sleeper(marker: &str) -> Option<u32> {
    std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
        let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim() == "sleep" && String::from_utf8_lossy(&cmdline).replace('\0', " ").trim().ends_with(marker))
            .then_some(pid)
    })
}

#[test]
fn a_process_outside_the_node_cannot_use_its_runtime() {
    let run = Run::new("programs-outsider");
    let dir = run.state.path().join("spec");
    std::fs::create_dir_all(&dir).unwrap();
    let spec = dir.join("boxer.toml");
    let marker = "987661";
    std::fs::write(
        &spec,
        format!("[cluster]\nname = \"outsider\"\n[services.a]\ncommand = [\"sleep\", \"{marker}\"]\n"),
    )
    .unwrap();
    let up = run.boxer().arg("up").arg(&spec).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let _up = StopAndWait(up);
    let deadline = Instant::now() + Duration::from_secs(30);
    let program = loop {
        if let Some(pid) = sleeper(marker) {
            break pid;
        }
        assert!(Instant::now() < deadline, "the node's program did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    // Everything the node's own processes know: the shim, the control
    // socket's name, the addresses. What the outsider lacks is ancestry.
    let env = environ(program);
    assert!(env.get("BOXER_CONTROL_SOCKET").is_some_and(|c| c.starts_with('@')), "{env:?}");
    let own_ip = env["BOXER_OVERLAY_IP"].clone();
    let script = format!(
        "import socket\n\
         s = socket.socket(); s.bind(('0.0.0.0', 7777)); s.listen()\n\
         c = socket.socket()\n\
         try:\n    c.connect(('{own_ip}', 7777)); print('connected')\n\
         except OSError as e:\n    print('connect failed', e.errno)\n"
    );
    // In the node's network namespace (where its abstract socket is), as
    // root, with the node's environment: but not started by its runtime.
    let out = Command::new("nsenter")
        .args(["-t", &program.to_string(), "-n", "--", "python3", "-c", &script])
        .env_clear()
        .envs(env.iter().filter(|(k, _)| k.starts_with("BOXER_") || *k == "LD_PRELOAD" || *k == "PATH"))
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains(&format!("connect failed {}", libc::ENETUNREACH)), "{stdout}\n{stderr}");
    assert!(stderr.contains("refused this process") && stderr.contains("is not a process of this node"), "{stderr}");
    // The runtime refused both requests and announced nothing.
    let log = std::fs::read_to_string(run.state.path().join("outsider/nodes/a-0/runtime.log")).unwrap_or_else(|e| {
        panic!("runtime log: {e}");
    });
    assert!(log.contains("refused a request"), "{log}");
    assert!(!log.contains("7777"), "the outsider's port was announced:\n{log}");
    assert!(run.boxer().args(["down", "outsider"]).status().unwrap().success());
}

/// The rate and the loss iperf3's receiver reports: (Mbit/s, lost, total).
fn iperf_receiver(stdout: &str) -> Option<(f64, u64, u64)> {
    let line = output_of(stdout, "client-0").into_iter().find(|l| l.trim_end().ends_with("receiver"))?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let rate = fields.iter().position(|f| *f == "Mbits/sec").and_then(|i| fields[i - 1].parse().ok())?;
    let (lost, total) = fields.iter().find_map(|f| f.split_once('/').filter(|(a, _)| a.parse::<u64>().is_ok()))?;
    Some((rate, lost.parse().ok()?, total.parse().ok()?))
}

#[test]
fn iperf3_udp_runs_across_two_nats_with_its_loss_figure() {
    assert!(
        Command::new("iperf3").arg("--version").output().is_ok(),
        "iperf3 is not installed (`.ci/run` installs it)"
    );
    let run = Run::new("programs-udp");
    let out = run.boxer().arg("up").arg(example("udp")).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let (rate, lost, total) = iperf_receiver(&stdout).unwrap_or_else(|| panic!("no receiver line:\n{stdout}"));
    println!("iperf3 -u -b 50M across two NATs: {rate} Mbit/s received, {lost}/{total} datagrams lost");
    assert!(total > 0 && rate > 0.0, "{stdout}");
    // Loss is allowed on UDP; on an idle lab at 50 Mbit/s there should be little.
    assert!(lost * 100 <= total * 5, "more than 5% lost:\n{stdout}");
    // Both sides name each other by overlay address.
    for node in ["client-0", "server-0"] {
        let lines = output_of(&stdout, node);
        assert!(
            lines.iter().any(|l| l.contains("local 100.96.0.") && l.contains("connected to 100.96.0.")),
            "{stdout}"
        );
    }
}

/// How Python programs find "my IP": the UDP idiom, and the interface
/// list (`socket.if_nameindex()` asks netlink, so getifaddrs through ctypes).
const IDENTITY_PY: &str = r#"
import ctypes, os, socket

own = os.environ["BOXER_OVERLAY_IP"]
# "My IP": a UDP socket connected to a public address (sends nothing).
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("8.8.8.8", 80))
print("udp idiom", s.getsockname()[0], "peer", s.getpeername()[0])
s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s6.connect(("::ffff:8.8.8.8", 80))
print("udp idiom v6", s6.getsockname()[0])

# getifaddrs through ctypes: CDLL(None) looks symbols up in the process's
# global scope, where the preloaded shim comes first (a handle to
# libc.so.6 itself would find libc's own getifaddrs).
class Sockaddr(ctypes.Structure):
    _fields_ = [("family", ctypes.c_ushort), ("data", ctypes.c_ubyte * 14)]

class Ifaddrs(ctypes.Structure):
    pass

Ifaddrs._fields_ = [
    ("next", ctypes.POINTER(Ifaddrs)), ("name", ctypes.c_char_p), ("flags", ctypes.c_uint),
    ("addr", ctypes.POINTER(Sockaddr)), ("netmask", ctypes.POINTER(Sockaddr)),
    ("ifu", ctypes.c_void_p), ("data", ctypes.c_void_p),
]
libc = ctypes.CDLL(None, use_errno=True)
head = ctypes.POINTER(Ifaddrs)()
if libc.getifaddrs(ctypes.byref(head)) != 0:
    raise OSError(ctypes.get_errno(), "getifaddrs")
names, v4 = [], []
p = head
while p:
    e = p.contents
    name = e.name.decode()
    if name not in names:
        names.append(name)
    if e.addr and e.addr.contents.family == socket.AF_INET:
        v4.append("%s=%s" % (name, socket.inet_ntoa(bytes(e.addr.contents.data[2:6]))))
    p = e.next
libc.freeifaddrs(head)
print("getifaddrs names", " ".join(names))
print("getifaddrs ipv4", " ".join(v4))
# Netlink (not covered by the shim) still shows the device's interfaces.
print("if_nameindex", " ".join(n for _, n in socket.if_nameindex()))
"#;

/// Compiles tests/shim/probe.c into `dir`.
fn probe(dir: &Path) -> std::path::PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("shim/probe.c");
    let out = dir.join("probe");
    let status = Command::new("cc").args(["-O2", "-o"]).arg(&out).arg(&src).status().expect("cc runs");
    assert!(status.success(), "compiling {}", src.display());
    out
}

/// UDP between nodes, and the node's own address (which needs a node with a
/// real interface and a default route: the lab), asked by C and Python.
#[test]
fn udp_peers_and_the_node_s_own_address_are_overlay_addresses() {
    let run = Run::new("programs-udp-echo");
    let dir = run.state.path().join("spec");
    std::fs::create_dir_all(&dir).unwrap();
    // Everything the nodes run lies beside the spec: their /tmp is their
    // own, and only the working directory stays visible there (this
    // repository may be a clone under /tmp).
    let echo = dir.join("udp_echo.py");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("programs/udp_echo.py"), &echo).unwrap();
    let echo = echo.display();
    let probe = probe(&dir);
    let probe = probe.display();
    let identity = dir.join("identity.py");
    std::fs::write(&identity, IDENTITY_PY).unwrap();
    let identity = identity.display();
    let spec = dir.join("boxer.toml");
    std::fs::write(
        &spec,
        format!(
            "[cluster]\nname = \"udpecho\"\n\
             [services.echo]\ncommand = [\"python3\", \"{echo}\", \"serve\", \"9000\"]\n\
             [services.ask]\nmain = true\nwait_for = [\"echo-0:9000\"]\ncommand = [\"sh\", \"-c\", \"\"\"\n\
             set -e\n\
             echo me $(getent hosts ask-0 | cut -d' ' -f1) it $(getent hosts echo-0 | cut -d' ' -f1)\n\
             python3 {echo} ask echo-0 9000 50 512\n\
             python3 {echo} connected echo-0 9000 20 65507\n\
             python3 {echo} ask echo-0 9000 20 1460 --v6\n\
             {probe} identity\n\
             python3 {identity}\n\
             \"\"\"]\n\
             ",
        ),
    )
    .unwrap();
    let out = run.boxer().arg("up").arg(&spec).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let ask = output_of(&stdout, "ask-0");
    let echo_out = output_of(&stdout, "echo-0");
    let ips = ask.iter().find_map(|l| l.strip_prefix("me ")).unwrap_or_else(|| panic!("no address line:\n{stdout}"));
    let (me, it) = ips.split_once(" it ").unwrap();
    assert!(me.starts_with("100.96.") && it.starts_with("100.96.") && me != it, "{ips}");
    // The server saw the client's overlay address as the source, also of
    // the largest datagram ...
    assert!(echo_out.iter().any(|l| l.starts_with(&format!("from {me}:")) && l.ends_with(" 512")), "{stdout}");
    assert!(echo_out.iter().any(|l| l.starts_with(&format!("from {me}:")) && l.ends_with(" 65507")), "{stdout}");
    // ... and the client saw replies from the server's, in both families.
    assert!(ask.contains(&format!("reply from {it}:9000").as_str()), "{stdout}");
    assert!(ask.contains(&format!("reply from ::ffff:{it}:9000").as_str()), "{stdout}");
    // A connected socket names both ends by overlay address.
    assert!(ask.contains(&format!("peer {it}:9000").as_str()), "{stdout}");
    assert!(ask.iter().any(|l| l.starts_with(&format!("local {me}:"))), "{stdout}");
    assert_eq!(stdout.matches("bad 0").count(), 3, "{stdout}");

    // The node's own address, from C: every check of `probe identity` (a
    // UDP socket connected to 8.8.8.8, both families; TCP on the real
    // address; getifaddrs) passed ...
    assert!(ask.contains(&"ALL CHECKS PASSED"), "probe identity:\n{stdout}");
    assert!(ask.contains(&"ok UDP getsockname after connecting to 8.8.8.8 is the overlay address"), "{stdout}");
    assert!(ask.contains(&"ok getifaddrs lists only boxer0 and lo"), "{stdout}");
    // ... and from Python.
    assert!(ask.contains(&format!("udp idiom {me} peer 8.8.8.8").as_str()), "{stdout}");
    assert!(ask.contains(&format!("udp idiom v6 ::ffff:{me}").as_str()), "{stdout}");
    assert!(ask.contains(&"getifaddrs names boxer0 lo"), "{stdout}");
    let v4 = ask.iter().find_map(|l| l.strip_prefix("getifaddrs ipv4 ")).unwrap_or_else(|| panic!("{stdout}"));
    let v4: Vec<&str> = v4.split_whitespace().collect();
    assert!(v4[0] == format!("boxer0={me}") && v4[1..].iter().all(|a| a.starts_with("lo=127.")), "{v4:?}");
    // The device has a real interface, which getifaddrs did not show.
    let links = ask.iter().find_map(|l| l.strip_prefix("if_nameindex ")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(links.split_whitespace().any(|n| n != "lo"), "no interface to hide: {links}");
}
