//! End-to-end tests of the shim: real, unmodified programs (Debian packages,
//! the Python standard library, a C probe), each on its own node, finding each
//! other by name. The whole test binary runs in its own network namespace with
//! only loopback, so a leaked connect to the overlay range goes nowhere.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use boxer_e2e::*;

isolate_this_test_binary!();

/// Time for a program to finish that normally takes a second or two.
const DONE: Duration = Duration::from_secs(60);

fn cluster(name: &str) -> Cluster {
    lab::require_isolation();
    Cluster::start(name).expect("rendezvous and cluster")
}

fn need(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} is not installed (`.ci/run` installs it with apt-get)"))
}

/// Compiles a C file from tests/shim into `dir`.
fn compile(dir: &Path, source: &str, extra: &[&str]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("shim").join(source);
    let out = dir.join(source.trim_end_matches(".c"));
    let status = Command::new("cc").args(["-O2", "-o"]).arg(&out).arg(&src).args(extra).status().expect("cc runs");
    assert!(status.success(), "compiling {}", src.display());
    out
}

#[test]
fn the_lab_namespace_has_no_route_out() {
    lab::require_isolation();
    let routes = std::fs::read_to_string("/proc/net/route").unwrap();
    assert_eq!(routes.lines().count(), 1, "expected no IPv4 routes, got:\n{routes}");
    let err = std::net::TcpStream::connect_timeout(&"100.96.0.1:80".parse().unwrap(), Duration::from_secs(1))
        .expect_err("nothing is reachable");
    assert_eq!(err.raw_os_error(), Some(libc::ENETUNREACH), "{err}");
}

#[test]
fn c_probe_checks_errno_cases_and_addresses_on_both_ends() -> anyhow::Result<()> {
    let mut c = cluster("probe");
    let probe = compile(c.dir.path(), "probe.c", &[]);
    let probe = probe.to_str().unwrap();
    let server = c.node("srv", 0, &[probe, "server", "7101"])?;
    c.wait_listening(&server, 7101)?;
    let client = c.node("cli", 0, &[probe, "client", "srv-0", "7101", "7102", "100.96.0.200"])?;
    let (code, out) = c.wait_exit(&client, DONE)?;
    assert!(out.contains("ALL CHECKS PASSED"), "probe output:\n{out}\nlog:\n{}", read(&client.stderr));
    assert_eq!(code, Some(0), "the runtime exits with the program's status");
    let server_out = read(&server.stdout);
    assert!(server_out.contains("accepted=100.96.0.2:"), "server saw:\n{server_out}");
    Ok(())
}

#[test]
fn python_http_server_and_curl_find_each_other_by_name() -> anyhow::Result<()> {
    need("curl");
    let mut c = cluster("web");
    let site = c.dir.path().join("site");
    std::fs::create_dir_all(&site)?;
    std::fs::write(site.join("index.html"), "hello from web-0\n")?;
    let site = site.to_str().unwrap().to_owned();
    let web = c.node("web", 0, &["python3", "-m", "http.server", "7201", "--directory", &site])?;
    c.wait_listening(&web, 7201)?;
    let client = c.node("client", 0, &["curl", "-sS", "--max-time", "20", "http://web-0:7201/"])?;
    let (code, out) = c.wait_exit(&client, DONE)?;
    assert_eq!(code, Some(0), "curl failed: {}", read(&client.stderr));
    assert_eq!(out, "hello from web-0\n");
    // http.server's access log names the client by its overlay address.
    let log = read(&web.stderr);
    assert!(log.contains("100.96.0.2 - - ") && log.contains("\"GET / HTTP/1.1\" 200"), "access log:\n{log}");
    Ok(())
}

#[test]
fn redis_cli_and_redis_benchmark_reach_redis_by_name() -> anyhow::Result<()> {
    need("redis-server");
    let mut c = cluster("redis");
    let db = c.node(
        "db",
        0,
        &["redis-server", "--port", "7301", "--protected-mode", "no", "--save", "", "--appendonly", "no"],
    )?;
    c.wait_listening(&db, 7301)?;
    let script = "redis-cli -h db-0 -p 7301 ping && redis-benchmark -h db-0 -p 7301 -q -n 5000 -c 10 -t set,get";
    let bench = c.node("bench", 0, &["sh", "-c", script])?;
    let (code, out) = c.wait_exit(&bench, DONE)?;
    assert_eq!(code, Some(0), "output:\n{out}\nlog:\n{}", read(&bench.stderr));
    assert!(out.starts_with("PONG"), "{out}");
    assert!(out.contains("SET: ") && out.contains("GET: ") && out.contains("requests per second"), "{out}");
    Ok(())
}

#[test]
fn nginx_reverse_proxies_to_a_backend_by_name() -> anyhow::Result<()> {
    need("nginx");
    need("curl");
    let mut c = cluster("nginx");
    let dir = c.dir.path().to_owned();
    let site = dir.join("site");
    std::fs::create_dir_all(&site)?;
    std::fs::write(site.join("index.html"), "backend page\n")?;
    let web = c.node("web", 0, &["python3", "-m", "http.server", "7401", "--directory", site.to_str().unwrap()])?;
    c.wait_listening(&web, 7401)?;
    let d = dir.display();
    let conf = format!(
        "daemon off; master_process on; worker_processes 2; user root root; pid {d}/nginx.pid; error_log stderr info;
events {{ worker_connections 64; }}
http {{
  access_log {d}/nginx-access.log;
  client_body_temp_path {d}/nginx-body; proxy_temp_path {d}/nginx-proxy; fastcgi_temp_path {d}/nginx-fcgi;
  uwsgi_temp_path {d}/nginx-uwsgi; scgi_temp_path {d}/nginx-scgi;
  upstream backend {{ server web-0:7401; }}
  server {{ listen 7402; location / {{ proxy_pass http://backend; }} }}
}}
"
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let proxy =
        c.node("proxy", 0, &["nginx", "-e", "stderr", "-p", dir.to_str().unwrap(), "-c", conf_path.to_str().unwrap()])?;
    c.wait_listening(&proxy, 7402)?;
    let client = c.node("client", 0, &["curl", "-sS", "--max-time", "20", "http://proxy-0:7402/"])?;
    let (code, out) = c.wait_exit(&client, DONE)?;
    assert_eq!(code, Some(0), "curl: {}\nnginx: {}", read(&client.stderr), read(&proxy.stderr));
    assert_eq!(out, "backend page\n");
    // nginx saw the client by its overlay address; the backend saw nginx by its.
    let access = read(&dir.join("nginx-access.log"));
    assert!(access.starts_with("100.96.0.3 "), "nginx access log: {access}");
    assert!(read(&web.stderr).contains("100.96.0.2 - - "), "backend log: {}", read(&web.stderr));
    Ok(())
}

const FORKING_SERVER: &str = r#"
import socketserver, sys
class H(socketserver.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline().decode().strip()
        self.wfile.write(f"{line} from {self.client_address[0]}:{self.client_address[1]} handled by a fork\n".encode())
with socketserver.ForkingTCPServer(("", int(sys.argv[1])), H) as s:
    s.serve_forever()
"#;

const RETRYING_CLIENT: &str = r#"
import socket, sys, time, errno
host, port = sys.argv[1], int(sys.argv[2])
refused = 0
deadline = time.time() + 30
while True:
    try:
        s = socket.create_connection((host, port))
        break
    except ConnectionRefusedError:
        refused += 1
        if time.time() > deadline:
            sys.exit("gave up")
        time.sleep(0.05)
s.sendall(b"ping\n")
print(s.makefile().readline().strip())
print(f"refused {refused} times first")
print("local", s.getsockname()[0], "peer", s.getpeername()[0])
"#;

#[test]
fn forking_server_and_a_client_that_retries_until_it_listens() -> anyhow::Result<()> {
    let mut c = cluster("fork");
    let server_py = c.dir.path().join("server.py");
    let client_py = c.dir.path().join("client.py");
    std::fs::write(&server_py, FORKING_SERVER)?;
    std::fs::write(&client_py, RETRYING_CLIENT)?;
    // The server node joins at once but its program listens only after 2 s:
    // until then the port is not announced and connects are refused.
    let start = format!("sleep 2; exec python3 {} 7501", server_py.display());
    let server = c.node("server", 0, &["sh", "-c", &start])?;
    let client = c.node("client", 0, &["python3", client_py.to_str().unwrap(), "server-0", "7501"])?;
    let (code, out) = c.wait_exit(&client, DONE)?;
    assert_eq!(code, Some(0), "{out}\n{}\n{}", read(&client.stderr), read(&server.stderr));
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ping from 100.96.0.2:") && lines[0].ends_with("handled by a fork"), "{out}");
    let refused: u32 = lines[1].split_whitespace().nth(1).unwrap().parse()?;
    assert!(refused > 0, "the client should have been refused before the server listened: {out}");
    assert_eq!(lines[2], "local 100.96.0.2 peer 100.96.0.1");
    Ok(())
}

#[test]
fn names_hostname_and_interfaces_show_overlay_values() -> anyhow::Result<()> {
    need("getent");
    let mut c = cluster("names");
    let _web = c.node("web", 0, &["sleep", "600"])?;
    let script = "getent hosts web-0; getent hosts web; getent hosts node-1.names.boxer; hostname; uname -n; \
        python3 -c \"import socket; print(socket.gethostbyname(socket.gethostname()))\"; \
        python3 -c \"import socket; print(socket.gethostbyaddr('100.96.0.1')[0])\"; \
        getent hosts nobody-9.names.boxer || echo 'nobody-9: not found'; \
        getent hosts localhost | head -1";
    let q = c.node("query", 0, &["sh", "-c", script])?;
    let (code, out) = c.wait_exit(&q, DONE)?;
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(code, Some(0), "{out}\n{}", read(&q.stderr));
    let words = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(words(lines[0]), ["100.96.0.1", "web-0"], "{out}");
    assert_eq!(words(lines[1]), ["100.96.0.1", "web"], "{out}");
    assert_eq!(words(lines[2]), ["100.96.0.1", "node-1.names.boxer"], "{out}");
    assert_eq!(lines[3], "query-0", "hostname: {out}");
    assert_eq!(lines[4], "query-0", "uname -n: {out}");
    assert_eq!(lines[5], "100.96.0.2", "gethostbyname(gethostname()): {out}");
    assert_eq!(lines[6], "web-0", "gethostbyaddr: {out}");
    assert_eq!(lines[7], "nobody-9: not found", "{out}");
    assert!(lines[8].ends_with("localhost"), "real names still resolve: {out}");
    Ok(())
}

#[test]
fn a_statically_linked_program_is_refused_with_a_clear_message() -> anyhow::Result<()> {
    lab::require_isolation();
    let dir = Scratch::new("static");
    let src = dir.path().join("hello.c");
    std::fs::write(&src, "int main(void) { return 0; }\n")?;
    let exe = dir.path().join("hello-static");
    let status = Command::new("cc").args(["-static", "-o"]).arg(&exe).arg(&src).status()?;
    assert!(status.success(), "cc -static failed (libc6-dev provides libc.a)");
    let rdv = start_rendezvous(dir.path())?;
    let token = rdv.create_cluster("static")?;
    let mut cmd = rdv.runtime_command("static", &token, "s", 0);
    cmd.arg("--").arg(&exe);
    let mut p = spawn(cmd, dir.path(), "s")?;
    let code = p.wait_exit(DONE)?;
    assert_ne!(code, Some(0));
    let err = p.stderr_text();
    assert!(err.contains("is statically linked") && err.contains("cannot put it on the overlay"), "{err}");
    Ok(())
}

#[test]
fn without_its_runtime_the_shim_says_so_once_and_the_overlay_is_unreachable() -> anyhow::Result<()> {
    lab::require_isolation();
    let dir = Scratch::new("noruntime");
    let probe = compile(dir.path(), "probe.c", &[]);
    let out = Command::new(&probe)
        .args(["unreachable", "100.96.0.5", "80"])
        .env("LD_PRELOAD", bin("libboxer_shim.so"))
        .env("BOXER_CONTROL_SOCKET", dir.path().join("missing.sock"))
        .env("BOXER_OVERLAY_IP", "100.96.0.1")
        .env("BOXER_NETWORK", "100.96.0.0/12")
        .env("BOXER_LOOPBACK", "127.100.0.1")
        .env("BOXER_HOSTNAME", "x-0")
        .env("BOXER_CLUSTER", "c")
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stdout.matches("ok connect without a runtime: ENETUNREACH").count(), 2, "{stdout}");
    assert_eq!(stderr.matches("cannot reach the Boxer runtime").count(), 1, "said once: {stderr}");
    Ok(())
}
