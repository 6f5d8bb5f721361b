//! End-to-end tests of `boxer up` / `boxer run`: every example runs for real
//! and its output is checked. `boxer up` puts each cluster in its own network
//! namespace with only loopback (`--net shared`, the default).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use boxer_e2e::up::{BoxerRun as Run, example, text};
use boxer_e2e::*;

#[test]
fn hello_http_serves_the_page_across_nodes() {
    let run = Run::new("up-hello");
    let out = run.up(&example("hello-http"));
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("client-0 | Hello from web-0, served over the Boxer overlay."), "{stdout}");
    // The server logs the client by its overlay address.
    assert!(stdout.contains("web-0    | 100.96.0.") && stdout.contains("\"GET / HTTP/1.1\" 200"), "{stdout}");
}

#[test]
fn redis_bench_prints_results_and_logs_stay_readable() {
    let run = Run::new("up-redis");
    let out = run.up(&example("redis-bench"));
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    for op in ["SET", "GET"] {
        assert!(
            stdout.lines().any(|l| l.starts_with("bench-0 | ")
                && l.contains(&format!("{op}: "))
                && l.contains("requests per second")),
            "{op} result missing:\n{stdout}"
        );
    }
    assert!(stderr.contains("cluster redis-bench: 2/2 nodes joined"), "{stderr}");
    // After the cluster ended: status and stored logs.
    let status = run.boxer().args(["status", "redis-bench"]).output().unwrap();
    let (s, _) = text(&status);
    assert!(s.contains("(not running)") && s.contains("ended (exit 0)"), "{s}");
    assert!(s.contains("bench-0") && s.contains("exited 0"), "{s}");
    let logs = run.boxer().args(["logs", "db-0", "--cluster", "redis-bench"]).output().unwrap();
    let (l, e) = text(&logs);
    assert!(logs.status.success() && l.contains("Ready to accept connections"), "{l}\n{e}");
}

#[test]
fn nginx_proxy_balances_across_both_backends() {
    let run = Run::new("up-nginx");
    let out = run.up(&example("nginx-proxy"));
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let answers: Vec<&str> = stdout.lines().filter_map(|l| l.strip_prefix("client-0  | served by ")).collect();
    assert_eq!(answers.len(), 4, "{stdout}");
    assert!(answers.contains(&"backend-0") && answers.contains(&"backend-1"), "round-robin: {answers:?}");
    // nginx's workers run as www-data (no `user root` in nginx.conf) and
    // still log the client's own overlay address, not the proxy's.
    let client = stdout
        .lines()
        .find_map(|l| l.strip_prefix("client-0  | client address: "))
        .unwrap_or_else(|| panic!("no client address:\n{stdout}"));
    assert!(client.starts_with("100.96."), "{client}");
    let logged: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("proxy-0   | "))
        .filter(|l| l.contains("\"GET / HTTP/1.1\" 200"))
        .collect();
    assert_eq!(logged.len(), 4, "{stdout}");
    assert!(logged.iter().all(|l| l.starts_with(&format!("{client} "))), "{logged:?}");
    let conf = std::fs::read_to_string(example("nginx-proxy").with_file_name("nginx.conf")).unwrap();
    assert!(conf.lines().any(|l| l.starts_with("user www-data;")), "{conf}");
}

#[test]
fn dask_computes_across_three_workers() {
    let has_dask = Command::new("python3").args(["-c", "import distributed"]).status().is_ok_and(|s| s.success());
    assert!(has_dask, "dask is not installed (`.ci/run` installs it: pip install 'dask[distributed]')");
    let run = Run::new("up-dask");
    let out = run.up(&example("dask"));
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("sum of squares 0..999 = 332833500"), "{stdout}");
    assert!(stdout.contains("computed on 3 workers: worker-0, worker-1, worker-2"), "{stdout}");
    assert!(stdout.contains("distributed sum 0..999999 = 499999500000"), "{stdout}");
}

#[test]
fn the_exit_code_is_the_failing_main_service_s() {
    let run = Run::new("up-exit");
    let out = run
        .boxer()
        .args(["run", "-n", "2", "--name", "fails", "--", "sh", "-c", "echo started; exit 7"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(7), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("fails-0 | started") && stdout.contains("fails-1 | started"), "{stdout}");
    assert!(stderr.contains("node fails-") && stderr.contains("failed with exit code 7"), "{stderr}");

    let dir = Scratch::new("up-exit-spec");
    let spec = dir.path().join("boxer.toml");
    std::fs::write(
        &spec,
        "[cluster]\nname = \"mixed\"\n[services.ok]\ncommand = [\"true\"]\nmain = true\n\
         [services.bad]\ncommand = [\"sh\", \"-c\", \"sleep 0.5; exit 3\"]\nmain = true\n\
         [services.bystander]\ncommand = [\"sleep\", \"600\"]\n",
    )
    .unwrap();
    let out = run.up(&spec);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "stdout:\n{stdout}\nstderr:\n{stderr}");
}

/// Copies test programs beside `spec`, into the nodes' working directory:
/// an isolated node gets an empty `/tmp` of its own, and the checkout may
/// be under `/tmp` (the working directory stays visible, other paths there
/// do not).
fn with_programs(spec: &Path, programs: &[&str]) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("programs");
    let to = spec.parent().expect("spec dir");
    for p in programs {
        std::fs::copy(from.join(p), to.join(p)).unwrap_or_else(|e| panic!("copying {p}: {e}"));
    }
}

/// `restart = "on-failure"`: a node that fails is replaced by a new one
/// with the same name and overlay address, and a peer that keeps asking
/// for it by name reaches the new one; the failure does not end the cluster.
#[test]
fn a_failed_node_is_replaced_under_its_name_and_address() {
    let run = Run::new("up-restart");
    let spec = run.spec(
        r#"
[cluster]
name = "restart"

[services.kv]
# Generation 1 serves for 3 s and fails; generation 2 serves until the end.
command = ["sh", "-c", """
n=$(($(cat gen 2>/dev/null || echo 0) + 1)); echo $n > gen; mkdir -p www$n; echo $n > www$n/gen
echo "kv generation $n at $(python3 -c "import socket; print(socket.gethostbyname('kv-0'))")"
cd www$n
if [ $n = 1 ]; then timeout 3 python3 -m http.server 8000; exit 3; fi
exec python3 -m http.server 8000"""]
restart = "on-failure"
isolate = false

[services.client]
command = ["sh", "-c", "until [ \"$(curl -sf http://kv-0:8000/gen)\" = 2 ]; do sleep 0.3; done; echo client reached generation 2"]
main = true
isolate = false
"#,
    );
    let out = run.up(&spec);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("client-0 | client reached generation 2"), "{stdout}");
    let at = |generation: u32| {
        boxer_e2e::up::output_of(&stdout, "kv-0")
            .into_iter()
            .find_map(|l| l.strip_prefix(&format!("kv generation {generation} at ")).map(str::to_owned))
            .unwrap_or_else(|| panic!("no generation {generation}:\n{stdout}"))
    };
    assert!(at(1).starts_with("100.96."), "{stdout}");
    assert_eq!(at(1), at(2), "the replacement has its predecessor's address:\n{stdout}");
    let all = format!("{stdout}{stderr}");
    assert!(all.contains("ended with code 3: replacing it (restart 1 of 10)"), "{all}");
}

/// The Boxer paper's recovery: a 3-node ZooKeeper ensemble (Debian's
/// `zookeeper`) behind NATs whose leader crashes. The two others elect a
/// new leader and a client's writes go on; `restart = "on-failure"`
/// replaces the crashed node under its name and address, and it rejoins
/// the ensemble. The client prints both times (docs/benchmarks.md).
#[test]
fn a_zookeeper_leader_is_replaced_and_the_ensemble_recovers() {
    if !Path::new("/usr/share/zookeeper/bin/zkServer.sh").exists() {
        panic!(
            "needs Debian's zookeeper (apt-get install zookeeper) and kazoo (pip install kazoo); .ci/run installs both"
        );
    }
    let run = Run::new("up-zookeeper");
    let spec = run.spec(
        r#"
[cluster]
name = "zk"

[services.zk]
command = ["sh", "zk_node.sh"]
replicas = 3
restart = "on-failure"

[services.client]
command = ["python3", "zk_client.py"]
main = true
"#,
    );
    with_programs(&spec, &["zk_node.sh", "zk_client.py"]);
    let out = run.up(&spec);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let line = boxer_e2e::up::output_of(&stdout, "client-0")
        .into_iter()
        .find(|l| l.starts_with("zk-recovery "))
        .unwrap_or_else(|| panic!("no recovery line:\n{stdout}\n{stderr}"))
        .to_owned();
    eprintln!("{line}");
    let leader = line.split_whitespace().find_map(|w| w.strip_prefix("leader=")).expect("leader named");
    let all = format!("{stdout}{stderr}");
    let leader_lines = boxer_e2e::up::output_of(&stdout, leader);
    assert!(leader_lines.contains(&"crashing on request"), "{stdout}");
    assert_eq!(leader_lines.iter().filter(|l| l.starts_with("zookeeper server ")).count(), 2, "{stdout}");
    assert!(all.contains("ended with code 137: replacing it (restart 1 of 10)"), "{all}");
}

/// `boxer scale` on a running cluster with traffic flowing: web 2 -> 6 ->
/// 3. The new replicas join, `web` resolves to all of them and each is
/// reached; scaling down stops the highest indexes; the client's
/// connections to web-0 and web-1 carry pings every 0.1 s throughout and
/// never break; `boxer status` shows each shape.
#[test]
fn scale_grows_and_shrinks_a_running_cluster_without_breaking_connections() {
    let run = Run::new("up-scale");
    let spec = run.spec(
        r#"
[cluster]
name = "scale"

[services.web]
command = ["python3", "echo_server.py"]
replicas = 2

[services.client]
command = ["python3", "scale_client.py"]
main = true
"#,
    );
    with_programs(&spec, &["echo_server.py", "scale_client.py"]);
    let shared = spec.parent().expect("spec dir").to_owned();
    let spec_arg = spec.display().to_string();
    let mut up = run.spawn(&["up", &spec_arg]);
    let _stop = boxer_e2e::up::StopOnDrop(up.id());
    let status = |want: &str| {
        let out = run.boxer().args(["status", "scale"]).output().expect("boxer status");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (text.contains(want), text)
    };
    wait_until(Duration::from_secs(60), "the client to connect", || {
        if run.output().contains("client: connected to web-0 and web-1") { Ok(()) } else { Err(run.output()) }
    })
    .expect("cluster running");
    let scale = |to: &str| {
        let out = run.boxer().args(["scale", "--cluster", "scale", to]).output().expect("boxer scale");
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "boxer scale {to}:\n{stdout}\n{stderr}\n{}", run.output());
        stdout
    };
    let check = |n: usize| {
        std::fs::write(shared.join(format!("check-{n}")), "").unwrap();
        let checked = shared.join(format!("checked-{n}"));
        wait_until(Duration::from_secs(30), "the client's check", || {
            std::fs::read_to_string(&checked).map_err(|_| run.output())
        })
        .expect("checked")
    };

    let out = scale("web=6");
    assert!(out.contains("web: 2 -> 6 (web-2, web-3, web-4, web-5 starting)") && out.contains("new shape"), "{out}");
    let (has, shape) = status("web-5");
    assert!(has && shape.matches("\nweb-").count() == 6, "{shape}");
    let reached = check(6);
    assert_eq!(reached.split_whitespace().filter(|a| a.starts_with("100.96.")).count(), 6, "{reached}");

    let out = scale("web=3");
    assert!(out.contains("web: 6 -> 3 (web-3, web-4, web-5 stopping)") && out.contains("new shape"), "{out}");
    let (_, shape) = status("web-2");
    assert_eq!(shape.matches("\nweb-").count(), 3, "{shape}");
    assert!(!shape.contains("web-3"), "{shape}");
    let reached = check(3);
    assert_eq!(reached.split_whitespace().count(), 3, "{reached}");

    // Bad requests change nothing.
    let out = run.boxer().args(["scale", "--cluster", "scale", "nosuch=2"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("there is no service \"nosuch\""), "{:?}", text(&out));
    let out = run.boxer().args(["scale", "--cluster", "scale", "web=0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "clap refuses it: {:?}", text(&out));

    std::fs::write(shared.join("done"), "").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let code = loop {
        if let Some(status) = up.try_wait().unwrap() {
            break status.code();
        }
        assert!(Instant::now() < deadline, "boxer up did not end:\n{}", run.output());
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = run.output();
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("client: kept connections unbroken after"), "{output}");
    for removed in ["web-3", "web-4", "web-5"] {
        let lines = boxer_e2e::up::output_of(&output, removed);
        assert!(lines.contains(&"removed (scaled down)"), "{output}");
    }
}

#[test]
fn spec_errors_name_the_file_line_and_key_and_start_nothing() {
    let run = Run::new("up-spec");
    let dir = Scratch::new("up-spec-files");
    let cases = [
        ("[cluster]\nname = \"c\"\n[services.db]\ncommand = [\"x\"]\nbogus = 1\n", ":5:1", "unknown field `bogus`"),
        ("[cluster]\nname = \"c\"\n[services.DB]\ncommand = [\"x\"]\n", ":3:11: services.DB", "invalid service name"),
        (
            "[cluster]\nname = \"c\"\n[services.db]\ncommand = [\"x\"]\n[services.db]\ncommand = [\"y\"]\n",
            ":5:",
            "duplicate",
        ),
        (
            "[cluster]\nname = \"c\"\n[services.db]\ncommand = [\"x\"]\nwait_for = [\"db-7:1\"]\n",
            ":5:13: services.db.wait_for",
            "impossible target",
        ),
        ("[cluster]\nname = \"c\"\n[services.db]\ncommand = []\n", ":4:11: services.db.command", "empty command"),
    ];
    for (i, (source, position, message)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("case{i}.toml"));
        std::fs::write(&path, source).unwrap();
        let out = run.up(&path);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "case {i}: {stderr}");
        let expected = format!("{}{position}", path.display());
        assert!(
            stderr.contains(&expected) && stderr.contains(message),
            "case {i}: expected {expected:?} and {message:?} in:\n{stderr}"
        );
    }
    assert!(!run.state.path().join("c").exists(), "nothing was started for a bad spec");
    let out = run.up(&dir.path().join("missing.toml"));
    let (_, stderr) = text(&out);
    assert!(stderr.contains("missing.toml: cannot read"), "{stderr}");
}

/// Pids of processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).replace('\0', " ").contains(marker) && pid != std::process::id() {
            found.push(pid);
        }
    }
    found
}

/// Pids of processes in the network namespace `ns` (a /proc/PID/ns/net link).
fn processes_in_namespace(ns: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let link = std::fs::read_link(e.path().join("ns/net")).ok()?;
            (link.to_string_lossy() == ns).then_some(pid)
        })
        .collect()
}

/// Interrupts a `boxer up` if the test panics before handing it over.
struct KillOnPanic(u32);

impl Drop for KillOnPanic {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our child; it tears its cluster down on SIGTERM.
        unsafe { libc::kill(self.0 as i32, libc::SIGTERM) };
    }
}

fn start_long_cluster(run: &Run, name: &str, marker: &str) -> (std::process::Child, String) {
    let dir = run.state.path().join("spec");
    std::fs::create_dir_all(&dir).unwrap();
    let spec = dir.join("boxer.toml");
    std::fs::write(
        &spec,
        format!(
            "[cluster]\nname = \"{name}\"\n[services.a]\nreplicas = 2\ncommand = [\"sh\", \"-c\", \"sleep {marker} & sleep {marker}; wait\"]\n\
             [services.b]\ncommand = [\"python3\", \"-m\", \"http.server\", \"{port}\"]\nmain = true\n",
            port = 7900
        ),
    )
    .unwrap();
    let mut child = run.boxer().arg("up").arg(&spec).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let pid = child.id();
    let kill_on_failure = KillOnPanic(pid);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = std::fs::read_to_string(run.state.path().join(name).join("status.json")).unwrap_or_default();
        let sleeping = processes_with(&format!("sleep {marker}"))
            .into_iter()
            .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep"))
            .count();
        if status.contains("\"state\": \"running\"") && sleeping == 4 {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("cluster did not come up ({sleeping} sleeping): {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::mem::forget(kill_on_failure);
    let ns = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap().to_string_lossy().into_owned();
    assert_ne!(ns, std::fs::read_link("/proc/self/ns/net").unwrap().to_string_lossy(), "own namespace");
    (child, ns)
}

fn assert_all_gone(marker: &str, ns: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_with(marker);
        let in_ns = processes_in_namespace(ns);
        if left.is_empty() && in_ns.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "left behind: {left:?} with the marker, {in_ns:?} in the namespace");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ctrl_c_leaves_no_process_and_no_namespace() {
    let run = Run::new("up-sigint");
    let marker = "987651";
    let (mut child, ns) = start_long_cluster(&run, "sigint", marker);
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "interrupted clusters exit with 130");
    assert_all_gone(marker, &ns);
}

#[test]
fn boxer_down_stops_a_running_cluster() {
    let run = Run::new("up-down");
    let marker = "987652";
    let (mut child, ns) = start_long_cluster(&run, "downed", marker);
    let out = run.boxer().args(["down", "downed"]).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success() && stdout.contains("cluster downed stopped"), "{stdout}\n{stderr}");
    child.wait().unwrap();
    assert_all_gone(marker, &ns);
    let out = run.boxer().args(["down", "downed"]).output().unwrap();
    assert!(text(&out).0.contains("is not running"));
}

#[test]
fn port_forward_reaches_a_node_from_outside_the_cluster() {
    use std::io::{Read, Write};
    let run = Run::new("up-forward");
    let dir = run.state.path().join("spec");
    std::fs::create_dir_all(&dir).unwrap();
    let spec = dir.join("boxer.toml");
    std::fs::write(
        &spec,
        "[cluster]\nname = \"fwd\"\n[services.db]\ncommand = [\"redis-server\", \"--port\", \"6379\", \"--protected-mode\", \"no\", \"--save\", \"\"]\n",
    )
    .unwrap();
    let mut up = run.boxer().arg("up").arg(&spec).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let _stop = KillOnPanic(up.id());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(run.state.path().join("fwd/status.json")).unwrap_or_default().contains("\"running\"")
    {
        assert!(Instant::now() < deadline, "cluster did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut forward = run
        .boxer()
        .args(["port-forward", "db-0:6379", &port.to_string(), "--cluster", "fwd"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // This test process is outside the cluster's namespace: it reaches redis
    // only through the forward (on loopback).
    let deadline = Instant::now() + Duration::from_secs(30);
    let reply = loop {
        if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            c.write_all(b"PING\r\n").unwrap();
            let mut buf = [0u8; 7];
            if c.read_exact(&mut buf).is_ok() {
                break String::from_utf8_lossy(&buf).into_owned();
            }
        }
        assert!(Instant::now() < deadline, "no answer through the forward");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(reply, "+PONG\r\n");
    // Ending the cluster ends the forward.
    assert!(run.boxer().args(["down", "fwd"]).status().unwrap().success());
    up.wait().unwrap();
    let status = forward.wait().unwrap();
    assert!(status.success(), "port-forward exits cleanly when its cluster ends");
}
