//! `boxer-runtime` as a Lambda custom runtime, end to end: the real
//! cargo-lambda emulator of the Runtime API, a real rendezvous, and real
//! runtime instances started the way Lambda starts a `bootstrap` (from a
//! task root holding it and the shim, as a non-root user, with 1024 file
//! descriptors, under `lambdajail`'s refusals). Everything is on 127.0.0.1;
//! the programs make no overlay connections.
//!
//! One emulator and one rendezvous serve every case; each case has its own
//! function name (the emulator routes by it), so each talks to its own
//! instance. The cases run in parallel inside one test so the shared
//! processes are stopped when it ends.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use boxer_e2e::*;
use boxer_proto::lambda::{
    ERROR_BAD_COMMAND, ERROR_BAD_EVENT, ERROR_JOIN_REFUSED, ERROR_UNREACHABLE, EVENT_VERSION, ErrorBody, NodeEvent,
    NodeReport, StopCause, WAIT_TIMEOUT_EXIT_CODE,
};

const CLUSTER: &str = "lambda";

/// One function per case: the emulator serves the functions its Cargo.toml
/// lists as binaries.
const FUNCTIONS: [&str; 8] = [
    "boxer-exit",
    "boxer-reuse",
    "boxer-refused",
    "boxer-unreachable",
    "boxer-deadline",
    "boxer-noshim",
    "boxer-waits",
    "boxer-static",
];

/// The user Lambda runs functions as has no name here; `nobody` stands in.
const LAMBDA_UID: u32 = 65534;

/// Lambda's open-file limit.
const LAMBDA_NOFILE: u64 = 1024;

/// Generous bound for an invocation that should answer in about a second.
const ANSWER: Duration = Duration::from_secs(30);

/// The runtime's join bound (boxer_runtime::lambda::invocation::JOIN_TIMEOUT)
/// plus slack for a loaded machine.
const UNREACHABLE_WITHIN: Duration = Duration::from_secs(10 + 5);

/// Everything the cases share.
struct Lab {
    dir: Scratch,
    emulator: Proc,
    port: u16,
    rdv: RendezvousProc,
    token: String,
    jail: PathBuf,
}

/// A runtime instance started like Lambda starts a bootstrap.
struct Instance {
    proc: Proc,
    function: &'static str,
}

impl Lab {
    fn start() -> anyhow::Result<Self> {
        let dir = Scratch::new("lambda-runtime");
        let rdv = start_rendezvous(dir.path())?;
        let token = rdv.create_cluster(CLUSTER)?;
        let jail = compile_jail(dir.path())?;
        let (emulator, port) = start_emulator(dir.path())?;
        Ok(Self { dir, emulator, port, rdv, token, jail })
    }

    /// A task root with `bootstrap` (and the shim unless `without_shim`),
    /// readable by the Lambda user.
    fn task_root(&self, function: &str, with_shim: bool) -> anyhow::Result<PathBuf> {
        let root = self.dir.path().join(format!("task-{function}"));
        std::fs::create_dir_all(root.join("bin"))?;
        link_or_copy(&bin("boxer-runtime"), &root.join("bootstrap"))?;
        if with_shim {
            link_or_copy(&bin("libboxer_shim.so"), &root.join("libboxer_shim.so"))?;
        }
        Ok(root)
    }

    /// Starts an instance for `function` under the jail, as the Lambda user
    /// (when the test runs as root), with 1024 file descriptors, and a
    /// Lambda-like environment.
    fn instance(&self, function: &'static str, with_shim: bool) -> anyhow::Result<Instance> {
        let root = self.task_root(function, with_shim)?;
        let tmp = self.dir.path().join(format!("tmp-{function}"));
        std::fs::create_dir_all(&tmp)?;
        chmod(&tmp, 0o1777)?;
        let mut cmd = Command::new(&self.jail);
        cmd.arg(root.join("bootstrap"))
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("AWS_LAMBDA_RUNTIME_API", format!("http://127.0.0.1:{}/.rt/{function}", self.port))
            .env("LAMBDA_TASK_ROOT", &root)
            .env("TMPDIR", &tmp)
            .env("RUST_LOG", "info")
            .current_dir(&root);
        // SAFETY: setrlimit is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                let limit = libc::rlimit { rlim_cur: LAMBDA_NOFILE, rlim_max: LAMBDA_NOFILE };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        if running_as_root() {
            cmd.uid(LAMBDA_UID).gid(LAMBDA_UID);
        }
        let proc = spawn(cmd, self.dir.path(), function)?;
        Ok(Instance { proc, function })
    }

    fn event(&self, service: &str, index: u32, command: &[&str]) -> NodeEvent {
        NodeEvent {
            version: EVENT_VERSION,
            rendezvous: self.rdv.addr.to_string(),
            fingerprint: self.rdv.fingerprint.clone(),
            cluster: CLUSTER.to_owned(),
            token: self.token.clone(),
            service: service.to_owned(),
            index,
            command: command.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::new(),
            wait_for: Vec::new(),
            wait_timeout_secs: None,
            expose: Vec::new(),
            forward: Vec::new(),
            workdir: None,
            grace_secs: 1,
            timeout_secs: None,
            takes_over: false,
        }
    }

    /// Invokes `instance`'s function with `body`; returns (HTTP status, body).
    fn invoke(&self, instance: &Instance, body: &[u8], timeout: Duration) -> anyhow::Result<(u16, String)> {
        let path = format!("/2015-03-31/functions/{}/invocations", instance.function);
        http_post(SocketAddr::from(([127, 0, 0, 1], self.port)), &path, body, timeout).with_context(|| {
            format!(
                "invoking {}; instance log:\n{}\nemulator log:\n{}",
                instance.function,
                instance.proc.stderr_text(),
                self.emulator.stderr_text()
            )
        })
    }

    fn invoke_event(&self, instance: &Instance, event: &NodeEvent, timeout: Duration) -> anyhow::Result<(u16, String)> {
        self.invoke(instance, &serde_json::to_vec(event)?, timeout)
    }
}

fn report(instance: &Instance, (status, body): (u16, String)) -> anyhow::Result<NodeReport> {
    ensure!(status == 200, "HTTP {status}: {body}\ninstance log:\n{}", instance.proc.stderr_text());
    serde_json::from_str(&body).with_context(|| format!("not a NodeReport: {body}"))
}

fn error_body(instance: &Instance, (status, body): (u16, String)) -> anyhow::Result<ErrorBody> {
    ensure!(
        status == 500,
        "expected an error (HTTP 500), got HTTP {status}: {body}\ninstance log:\n{}",
        instance.proc.stderr_text()
    );
    serde_json::from_str(&body).with_context(|| format!("not an error body: {body}"))
}

/// One end-to-end case against the shared lab.
type Case = fn(&Lab) -> anyhow::Result<()>;

/// `sh -c 'echo hello; exit 3'`: the exit code and output come back, with
/// what the jail refused.
fn exit_code_and_output(lab: &Lab) -> anyhow::Result<()> {
    let instance = lab.instance("boxer-exit", true)?;
    let event = lab.event("exit", 0, &["sh", "-c", "echo hello; exit 3"]);
    let r = report(&instance, lab.invoke_event(&instance, &event, ANSWER)?)?;
    ensure!(r.node == "exit-0" && r.exit_code == 3 && r.stopped.is_none(), "{r:?}");
    ensure!(r.last_output.iter().any(|l| l == "hello"), "no hello in {:?}", r.last_output);
    ensure!(r.host.refused.iter().any(|c| c == "prctl(PR_SET_PDEATHSIG): EPERM"), "refusals: {:?}", r.host.refused);
    ensure!(r.host.nofile == Some(LAMBDA_NOFILE), "{:?}", r.host);
    ensure!(!r.host.kernel.is_empty() && r.host.gso_segments.is_some(), "{:?}", r.host);
    if running_as_root() {
        ensure!(r.host.uid == Some(LAMBDA_UID), "{:?}", r.host);
    }
    Ok(())
}

/// A bad event is refused naming the field, and the same instance then runs
/// two nodes, joining afresh for each.
fn bad_event_then_warm_reuse(lab: &Lab) -> anyhow::Result<()> {
    let mut instance = lab.instance("boxer-reuse", true)?;
    let mut bad = serde_json::to_value(lab.event("reuse", 0, &["true"]))?;
    bad["fingerprint"] = "not-hex".into();
    let e = error_body(&instance, lab.invoke(&instance, &serde_json::to_vec(&bad)?, ANSWER)?)?;
    ensure!(e.error_type == ERROR_BAD_EVENT && e.error_message.contains("fingerprint"), "{e:?}");
    let e = error_body(&instance, lab.invoke(&instance, b"not json", ANSWER)?)?;
    ensure!(e.error_type == ERROR_BAD_EVENT, "{e:?}");
    for index in 0..2 {
        let event = lab.event("reuse", index, &["sh", "-c", "echo \"I am $(hostname)\""]);
        let r = report(&instance, lab.invoke_event(&instance, &event, ANSWER)?)?;
        let expected = format!("I am reuse-{index}");
        ensure!(r.exit_code == 0 && r.last_output.contains(&expected), "{r:?}");
    }
    ensure!(instance.proc.child.try_wait()?.is_none(), "the instance exited:\n{}", instance.proc.stderr_text());
    Ok(())
}

/// A wrong join token: refused, with the rendezvous' own reason.
fn wrong_token(lab: &Lab) -> anyhow::Result<()> {
    let instance = lab.instance("boxer-refused", true)?;
    let mut event = lab.event("refused", 0, &["true"]);
    event.token = "not-the-token".into();
    let e = error_body(&instance, lab.invoke_event(&instance, &event, ANSWER)?)?;
    ensure!(e.error_type == ERROR_JOIN_REFUSED && e.error_message.contains("wrong join token"), "{e:?}");
    Ok(())
}

/// A rendezvous that does not answer: unreachable, within the join bound.
fn unreachable_rendezvous(lab: &Lab) -> anyhow::Result<()> {
    let instance = lab.instance("boxer-unreachable", true)?;
    // A loopback UDP port nobody listens on.
    let silent = UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
    let mut event = lab.event("unreachable", 0, &["true"]);
    event.rendezvous = silent.to_string();
    let start = Instant::now();
    let e = error_body(&instance, lab.invoke_event(&instance, &event, ANSWER)?)?;
    let took = start.elapsed();
    ensure!(e.error_type == ERROR_UNREACHABLE, "{e:?}");
    ensure!(took < UNREACHABLE_WITHIN, "took {took:?}");
    Ok(())
}

/// A program that ignores SIGTERM is killed after the grace, before the
/// event's timeout, and the report says so.
fn deadline(lab: &Lab) -> anyhow::Result<()> {
    const TIMEOUT: Duration = Duration::from_secs(6);
    let instance = lab.instance("boxer-deadline", true)?;
    let mut event = lab.event("deadline", 0, &["sh", "-c", "trap '' TERM; echo started; sleep 600"]);
    event.timeout_secs = Some(TIMEOUT.as_secs());
    event.grace_secs = 1;
    let start = Instant::now();
    let r = report(&instance, lab.invoke_event(&instance, &event, ANSWER)?)?;
    let took = start.elapsed();
    ensure!(took < TIMEOUT, "answered after {took:?}, beyond the {TIMEOUT:?} timeout");
    ensure!(r.stopped == Some(StopCause::Deadline) && r.killed_after_grace && r.exit_code == 137, "{r:?}");
    ensure!(r.last_output.iter().any(|l| l == "started"), "{r:?}");
    Ok(())
}

/// A `wait_for` target that never listens: after `wait_timeout_secs` the
/// node gives up without starting its program, exit code 124, and says why.
fn wait_timeout(lab: &Lab) -> anyhow::Result<()> {
    let instance = lab.instance("boxer-waits", true)?;
    let mut event = lab.event("waits", 0, &["echo", "started"]);
    event.wait_for = vec!["nobody-0:5432".into()];
    event.wait_timeout_secs = Some(2);
    let start = Instant::now();
    let r = report(&instance, lab.invoke_event(&instance, &event, ANSWER)?)?;
    ensure!(start.elapsed() >= Duration::from_secs(2), "gave up after {:?}", start.elapsed());
    ensure!(r.exit_code == WAIT_TIMEOUT_EXIT_CODE && r.stopped.is_none(), "{r:?}");
    let why = "waits-0: gave up waiting for nobody-0:5432 after 2 s (wait_timeout); nobody-0 is not in the cluster";
    ensure!(r.last_output.iter().any(|l| l.starts_with(why)), "{r:?}");
    ensure!(!r.last_output.iter().any(|l| l == "started"), "the program ran: {r:?}");
    Ok(())
}

/// A statically linked program is refused with advice naming its service,
/// and runs (without the shim) once the event lists explicit ports.
fn static_program(lab: &Lab) -> anyhow::Result<()> {
    let Some(busybox) = ["/bin/busybox", "/usr/bin/busybox"].into_iter().find(|p| Path::new(p).is_file()) else {
        eprintln!("no busybox (a static program) here: static case skipped");
        return Ok(());
    };
    let instance = lab.instance("boxer-static", true)?;
    let event = lab.event("tool", 0, &[busybox, "echo", "static ok"]);
    let e = error_body(&instance, lab.invoke_event(&instance, &event, ANSWER)?)?;
    ensure!(e.error_type == ERROR_BAD_COMMAND && e.error_message.contains("to services.tool in boxer.toml"), "{e:?}");
    let mut event = lab.event("tool", 1, &[busybox, "echo", "static ok"]);
    event.expose = vec![8080];
    let r = report(&instance, lab.invoke_event(&instance, &event, ANSWER)?)?;
    ensure!(r.exit_code == 0 && r.last_output.iter().any(|l| l == "static ok"), "{r:?}");
    Ok(())
}

/// No shim beside the bootstrap: the instance reports an init error and exits.
fn missing_shim(lab: &Lab) -> anyhow::Result<()> {
    let mut instance = lab.instance("boxer-noshim", false)?;
    let code = instance.proc.wait_exit(ANSWER)?;
    ensure!(code == Some(1), "exit {code:?}");
    let log = instance.proc.stderr_text();
    ensure!(log.contains("libboxer_shim.so does not exist"), "{log}");
    Ok(())
}

#[test]
fn lambda_runtime_end_to_end() {
    let started = Instant::now();
    let lab = Lab::start().expect("starting the emulator and the rendezvous");
    eprintln!("lab ready after {:?}", started.elapsed());
    let cases: [(&str, Case); 7] = [
        ("exit code and output", exit_code_and_output),
        ("bad event, then warm reuse", bad_event_then_warm_reuse),
        ("wrong join token", wrong_token),
        ("unreachable rendezvous", unreachable_rendezvous),
        ("deadline", deadline),
        ("wait timeout", wait_timeout),
        ("static program", static_program),
    ];
    let lab = &lab;
    let mut failures: Vec<String> = std::thread::scope(|s| {
        let running: Vec<_> = cases
            .iter()
            .map(|(name, case)| {
                (
                    name,
                    s.spawn(move || {
                        let start = Instant::now();
                        let result = case(lab);
                        eprintln!("{name}: {:?}", start.elapsed());
                        result
                    }),
                )
            })
            .collect();
        running
            .into_iter()
            .filter_map(|(name, handle)| match handle.join() {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("{name}: {e:#}")),
                Err(_) => Some(format!("{name}: panicked")),
            })
            .collect()
    });
    // Alone, after the others: the emulator hands an `/init/error` to
    // whichever invocation is pending, whatever its function.
    if let Err(e) = missing_shim(lab) {
        failures.push(format!("missing shim: {e:#}"));
    }
    assert!(failures.is_empty(), "{} case(s) failed:\n\n{}", failures.len(), failures.join("\n\n"));
}

fn running_as_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn chmod(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).with_context(|| path.display().to_string())
}

fn link_or_copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(to);
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

/// Builds `lambdajail` from the shared tools into `dir`.
fn compile_jail(dir: &Path) -> anyhow::Result<PathBuf> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/tools/lambdajail.c");
    let out = dir.join("lambdajail");
    let result = Command::new("cc").arg("-O2").arg("-o").arg(&out).arg(&source).output().context("running cc")?;
    ensure!(result.status.success(), "cc {}: {}", source.display(), String::from_utf8_lossy(&result.stderr));
    Ok(out)
}

/// Starts `cargo lambda watch --only-lambda-apis` on a free loopback port,
/// in a directory whose Cargo.toml lists [`FUNCTIONS`]; waits until it
/// listens.
fn start_emulator(dir: &Path) -> anyhow::Result<(Proc, u16)> {
    let project = dir.join("emulator");
    std::fs::create_dir_all(&project)?;
    let mut manifest = String::from("[package]\nname = \"boxer-functions\"\nversion = \"0.0.0\"\nedition = \"2021\"\n");
    for f in FUNCTIONS {
        manifest.push_str(&format!("\n[[bin]]\nname = \"{f}\"\npath = \"main.rs\"\n"));
    }
    std::fs::write(project.join("Cargo.toml"), manifest)?;
    std::fs::write(project.join("main.rs"), "fn main() {}\n")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut cmd = Command::new("cargo-lambda");
    cmd.args(["lambda", "watch", "--only-lambda-apis", "-A", "127.0.0.1", "-P", &port.to_string()])
        .current_dir(&project);
    let mut proc = spawn(cmd, dir, "emulator").context("starting cargo-lambda (pip install cargo-lambda)")?;
    let ready = wait_until(Duration::from_secs(30), "the emulator to listen", || {
        if let Ok(Some(status)) = proc.child.try_wait() {
            return Ok(Err(format!("cargo-lambda exited with {status}")));
        }
        TcpStream::connect(("127.0.0.1", port)).map(|_| Ok(())).map_err(|e| e.to_string())
    })?;
    if let Err(e) = ready {
        bail!("{e}: {}", proc.stderr_text());
    }
    Ok((proc, port))
}

/// A minimal HTTP/1.1 POST (the emulator answers with a Content-Length).
fn http_post(addr: SocketAddr, path: &str, body: &[u8], timeout: Duration) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).context("reading the answer")?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").context("no end of headers")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line in {head:?}"))?;
    let chunked = head.lines().any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding: chunked"));
    ensure!(!chunked, "chunked answers are not handled: {text}");
    Ok((status, body.to_owned()))
}
