//! The Lambda lab: the real Lambda APIs, run locally inside the NAT lab.
//!
//! ```text
//!            internet (public router, no uplink)
//!        ┌──────────┼──────────────┬──────────────┐
//!   "aws" device      nat-fn-1 (moderate)   nat-fn-2 ...
//!   rendezvous-server     │                     │
//!   moto (control plane)  fn-1: bootstrap       fn-2: bootstrap
//!   cargo-lambda emulator     (boxer-runtime as a Lambda custom runtime,
//!   router (one SDK endpoint)  non-root, 1024 fds, under lambdajail)
//!   boxer deploy / boxer up
//! ```
//!
//! - Control plane: moto's server answers CreateFunction, GetFunction,
//!   UpdateFunction*, DeleteFunction and the waiters (its Invoke runs no code).
//!   It is the lab's S3 too, which functions reach on the "aws" device with
//!   the credentials every instance gets, as Lambda's reach S3.
//! - Runtime API and Invoke: the cargo-lambda emulator, which hands
//!   invocations to runtimes that poll it, exactly as Lambda's Runtime API.
//! - The router (`lambda_router.py`): Invoke to the emulator (its 500 for a
//!   runtime /error turned into Lambda's 200 + `X-Amz-Function-Error`, and
//!   throttling on request), everything else to moto.
//! - The scaler (here): when an invocation finds no idle instance, a new
//!   instance (a cold start) starts on a fresh device behind its own NAT, from
//!   the zip `boxer deploy` uploaded, the way Lambda runs a custom runtime:
//!   `AWS_LAMBDA_RUNTIME_API`, `LAMBDA_TASK_ROOT`, memory size, a non-root
//!   user, `ulimit -n 1024`, its own `/tmp` (`TMPDIR`), and the refusals of
//!   `../shared/tools/lambdajail.c`.
//!
//! Every process runs in the lab's namespaces, which have no way out.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
pub use boxer::lab::{LabNet, NatKind, NatOptions};

use crate::{Proc, Scratch, bin, bin_dir, wait_until};

use crate::natlab::RENDEZVOUS_PORT;

/// Ports on the "aws" device (its own namespace: no clashes).
const ROUTER_PORT: u16 = 9000;
const EMULATOR_PORT: u16 = 9001;
const MOTO_PORT: u16 = 5000;

/// The execution role the lab's functions get (created in moto's IAM).
pub const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/boxer-lab";

/// Memory of the lab's functions as the runtime is told (MB).
const MEMORY_MB: u32 = 1769;

/// User the function instances run as: Lambda's functions never run as root.
const FUNCTION_UID: u32 = 65534;

/// File descriptors of a Lambda function's processes.
const FUNCTION_NOFILE: u64 = 1024;

/// The target whose binaries go into the zip: glibc 2.34 (Lambda's
/// provided.al2023), built with cargo-zigbuild.
pub const LAMBDA_TARGET: &str = "x86_64-unknown-linux-gnu.2.34";

/// Directory of the runtime and shim built for Lambda (`cargo zigbuild`,
/// debug), built once per test process.
pub fn lambda_bin_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let host = bin_dir();
        // Release binaries in the functions too, with the rest (benchmark numbers).
        let release = std::env::var(crate::RELEASE_ENV).is_ok_and(|v| v == "1");
        let status = Command::new(env!("CARGO"))
            .args(["zigbuild", "--quiet", "--offline", "--target", LAMBDA_TARGET])
            .args(["-p", "boxer-runtime", "-p", "boxer-shim"])
            .args(release.then_some("--release"))
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("cargo runs");
        assert!(
            status.success(),
            "`cargo zigbuild --target {LAMBDA_TARGET}` failed: the Lambda lab needs cargo-zigbuild \
             (`pip install cargo-zigbuild`, which brings zig)"
        );
        // <target>/debug -> <target>/x86_64-unknown-linux-gnu/debug
        host.parent().expect("target dir").join("x86_64-unknown-linux-gnu").join(if release {
            "release"
        } else {
            "debug"
        })
    })
}

/// The lab: an "aws" device with the rendezvous, moto, the emulator and the
/// router, and function instances started on demand.
pub struct LambdaLab {
    /// The tokio runtime patchbay's handles were made on.
    pub rt: tokio::runtime::Runtime,
    /// The lab.
    pub lab: Arc<LabNet>,
    /// Logs, state, the unpacked function.
    pub dir: Scratch,
    /// The rendezvous inside the lab.
    pub rendezvous: SocketAddr,
    /// Its fingerprint.
    pub fingerprint: String,
    /// Its admin token.
    pub admin_token: String,
    /// `BOXER_STATE_DIR` of every `boxer` command run here.
    pub state_dir: PathBuf,
    procs: Vec<Proc>,
    scaler: Arc<Scaler>,
}

/// Lambda's scaler: one instance per concurrent invocation.
struct Scaler {
    rt: tokio::runtime::Handle,
    lab: Arc<LabNet>,
    dir: PathBuf,
    function: Mutex<Option<FunctionCode>>,
    state: Mutex<ScalerState>,
}

#[derive(Default)]
struct ScalerState {
    /// Per function: invocations in flight, and instances started (each
    /// serves one invocation at a time, and only its own function).
    functions: HashMap<String, (usize, usize)>,
    /// Instances started, all functions.
    instances: usize,
    /// Throttled invokes seen.
    throttled: usize,
    /// Invocations that ended, by router status.
    ended: HashMap<u16, usize>,
    procs: Vec<Proc>,
}

/// The unpacked function the instances run.
#[derive(Clone)]
struct FunctionCode {
    name: String,
    task_root: PathBuf,
}

impl LambdaLab {
    /// Builds the lab and starts the rendezvous, moto, the emulator and the
    /// router on its "aws" device; creates the execution role.
    /// `functions` are the function names the emulator will route (it
    /// reads them once, from its manifest).
    pub fn start(tag: &str, functions: &[&str]) -> anyhow::Result<Self> {
        crate::lab::require_isolation();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let lab = Arc::new(rt.block_on(LabNet::new())?);
        let dir = Scratch::new(&format!("lambda-{tag}"));
        // Readable by the function instances' user.
        set_mode(dir.path(), 0o755)?;
        let state_dir = dir.path().join("state");
        let aws = lab.rendezvous();
        let mut procs = vec![];

        // The rendezvous.
        let (proc, fingerprint, admin_token) = crate::natlab::start_lab_rendezvous(&lab, dir.path())?;
        procs.push(proc);
        let rendezvous = SocketAddr::from((lab.rendezvous_ip()?, RENDEZVOUS_PORT));

        // moto: the Lambda and IAM control plane.
        let mut cmd = Command::new("moto_server");
        // On every address of the "aws" device: functions reach its S3
        // there, as Lambda's reach S3 (the lab has no way out).
        cmd.args(["-H", "0.0.0.0", "-p", &MOTO_PORT.to_string()]);
        procs.push(spawn_on(aws, cmd, dir.path(), "moto")?);

        // The emulator: its Cargo.toml names the functions it routes; the
        // lab's are written before each deploy (see `route_function`).
        let emulator_dir = dir.path().join("emulator");
        std::fs::create_dir_all(&emulator_dir)?;
        write_emulator_manifest(&emulator_dir, functions)?;
        let mut cmd = Command::new("cargo-lambda");
        cmd.args(["lambda", "watch", "--only-lambda-apis", "-A", "0.0.0.0", "-P", &EMULATOR_PORT.to_string()])
            .current_dir(&emulator_dir);
        procs.push(spawn_on(aws, cmd, dir.path(), "emulator")?);

        // The router, whose stdout drives the scaler.
        let router_script = concat!(env!("CARGO_MANIFEST_DIR"), "/support/lambda_router.py");
        let router_log = dir.path().join("router.log");
        let mut cmd = Command::new("python3");
        cmd.arg(router_script)
            .args(["--listen", &format!("127.0.0.1:{ROUTER_PORT}")])
            .args(["--invoke", &format!("127.0.0.1:{EMULATOR_PORT}")])
            .args(["--control", &format!("127.0.0.1:{MOTO_PORT}")])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&router_log)?);
        let mut child = aws.spawn_command_sync(cmd).context("starting the lab's Lambda router")?;
        let stdout = child.stdout.take().context("router stdout")?;
        procs.push(Proc { child, name: "router".into(), stderr: router_log });

        let scaler = Arc::new(Scaler {
            rt: rt.handle().clone(),
            lab: lab.clone(),
            dir: dir.path().to_owned(),
            function: Mutex::default(),
            state: Mutex::default(),
        });
        let driver = scaler.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                driver.on_router_line(&line);
            }
        });

        let lab = Self { rt, lab, dir, rendezvous, fingerprint, admin_token, state_dir, procs, scaler };
        lab.wait_listening(EMULATOR_PORT, "the cargo-lambda emulator")?;
        lab.wait_listening(MOTO_PORT, "moto")?;
        lab.wait_listening(ROUTER_PORT, "the router")?;
        lab.python(&format!(
            "import boto3\n\
             iam = boto3.client('iam', endpoint_url='{endpoint}', region_name='us-east-1')\n\
             iam.create_role(RoleName='boxer-lab', AssumeRolePolicyDocument='{{\"Version\":\"2012-10-17\",\"Statement\":[{{\"Effect\":\"Allow\",\"Principal\":{{\"Service\":\"lambda.amazonaws.com\"}},\"Action\":\"sts:AssumeRole\"}}]}}')\n",
            endpoint = Self::endpoint()
        ))
        .context("creating the execution role in moto's IAM")?;
        Ok(lab)
    }

    /// The SDK endpoint (the router), as seen on the "aws" device.
    pub fn endpoint() -> String {
        format!("http://127.0.0.1:{ROUTER_PORT}")
    }

    /// The lab's S3 (moto's) as seen from the "aws" device.
    pub fn s3_endpoint() -> String {
        format!("http://127.0.0.1:{MOTO_PORT}")
    }

    /// Fake credentials and region for every AWS client in the lab.
    pub fn aws_env(cmd: &mut Command) {
        cmd.env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            // boto3 reads only this one.
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE");
    }

    /// Runs a python3 snippet on the "aws" device (boto3 against the router).
    pub fn python(&self, code: &str) -> anyhow::Result<String> {
        let mut cmd = Command::new("python3");
        cmd.args(["-c", code]).stdout(Stdio::piped()).stderr(Stdio::piped());
        Self::aws_env(&mut cmd);
        let out = self.lab.rendezvous().spawn_command_sync(cmd)?.wait_with_output()?;
        anyhow::ensure!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until a server on the "aws" device accepts TCP connections on
    /// loopback `port`.
    fn wait_listening(&self, port: u16, what: &str) -> anyhow::Result<()> {
        let check = format!("import socket; socket.create_connection(('127.0.0.1', {port}), 1).close()");
        wait_until(Duration::from_secs(60), &format!("{what} to listen on port {port}"), || {
            let mut cmd = Command::new("python3");
            cmd.args(["-c", &check]).stdout(Stdio::null()).stderr(Stdio::null());
            match self.lab.rendezvous().spawn_command_sync(cmd).and_then(|c| Ok(c.wait_with_output()?)) {
                Ok(out) if out.status.success() => Ok(()),
                Ok(_) => Err(self.logs()),
                Err(e) => Err(e.to_string()),
            }
        })
    }

    /// A `boxer` command run on the "aws" device with the lab's endpoint,
    /// credentials and state directory.
    pub fn boxer(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("boxer"));
        cmd.args(args)
            .env("BOXER_STATE_DIR", &self.state_dir)
            .env("AWS_ENDPOINT_URL", Self::endpoint())
            .env("AWS_ENDPOINT_URL_S3", Self::s3_endpoint());
        Self::aws_env(&mut cmd);
        cmd
    }

    /// Runs a `boxer` command to completion on the "aws" device: (exit
    /// code, stdout, stderr).
    pub fn run_boxer(&self, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
        let mut cmd = self.boxer(args);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let out = self.lab.rendezvous().spawn_command_sync(cmd)?.wait_with_output()?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// The `boxer up --provider lambda` flags for this lab's rendezvous.
    pub fn up_flags(&self) -> Vec<String> {
        vec![
            "--provider".into(),
            "lambda".into(),
            "--rendezvous".into(),
            self.rendezvous.to_string(),
            "--fingerprint".into(),
            self.fingerprint.clone(),
            "--admin-token".into(),
            self.admin_token.clone(),
        ]
    }

    /// `boxer deploy` of `spec` with the Lambda build of the runtime, then
    /// unpacks the zip it uploaded as the code every new instance runs.
    /// Returns deploy's (code, stdout, stderr).
    pub fn deploy(&self, spec: &Path, cluster: &str, extra: &[&str]) -> anyhow::Result<(i32, String, String)> {
        // The name `boxer deploy` gives the function, by its own rule.
        let function = boxer::lambda::function_name(&boxer::spec::load(spec)?);
        let runtime_dir = lambda_bin_dir().display().to_string();
        let spec = spec.display().to_string();
        let mut args = vec!["deploy", spec.as_str(), "--role", ROLE_ARN, "--runtime-dir", runtime_dir.as_str()];
        args.extend_from_slice(extra);
        let out = self.run_boxer(&args)?;
        if out.0 != 0 {
            return Ok(out);
        }
        let zip = self.state_dir.join(cluster).join("lambda").join("function.zip");
        let task_root = self.dir.path().join("task").join(&function);
        let _ = std::fs::remove_dir_all(&task_root);
        std::fs::create_dir_all(&task_root)?;
        let status = Command::new("python3")
            .args(["-c", UNZIP_KEEPING_MODES])
            .arg(&zip)
            .arg(&task_root)
            .status()
            .context("unpacking the function zip")?;
        anyhow::ensure!(status.success(), "unpacking {} failed", zip.display());
        set_mode_recursive(&task_root, 0o755)?;
        *self.scaler.function.lock().expect("function") = Some(FunctionCode { name: function, task_root });
        Ok(out)
    }

    /// The directory the function's zip was unpacked to.
    pub fn task_root(&self) -> Option<PathBuf> {
        self.scaler.function.lock().expect("function").as_ref().map(|f| f.task_root.clone())
    }

    /// Opens or closes the rendezvous' UDP port to everything but the "aws"
    /// device itself: what a missing security-group rule does to functions
    /// (the CLI, on the same host, still reaches it).
    pub fn firewall_rendezvous(&self, closed: bool) -> anyhow::Result<()> {
        let script = if closed {
            format!(
                "table inet boxer_lab_firewall {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    iifname != \"lo\" udp dport {RENDEZVOUS_PORT} drop\n  }}\n}}\n"
            )
        } else {
            "delete table inet boxer_lab_firewall\n".to_owned()
        };
        let mut cmd = Command::new("nft");
        cmd.args(["-f", "-"]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = self.lab.rendezvous().spawn_command_sync(cmd).context("running nft on the aws device")?;
        {
            use std::io::Write;
            child.stdin.take().context("nft stdin")?.write_all(script.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        anyhow::ensure!(out.status.success(), "nft failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    }

    /// The next `n` invokes are throttled (429 TooManyRequestsException).
    pub fn throttle_next(&self, n: usize) -> anyhow::Result<()> {
        let mut cmd = Command::new("curl");
        cmd.args(["-sf", "-X", "POST", &format!("http://127.0.0.1:{ROUTER_PORT}/_lab/throttle?n={n}")])
            .stdout(Stdio::null());
        let status = self.lab.rendezvous().spawn_command_sync(cmd)?.wait()?;
        anyhow::ensure!(status.success(), "setting the router's throttle failed");
        Ok(())
    }

    /// (throttled invokes, instances started, invocations ended by status).
    pub fn scaler_counts(&self) -> (usize, usize, HashMap<u16, usize>) {
        let s = self.scaler.state.lock().expect("scaler");
        (s.throttled, s.instances, s.ended.clone())
    }

    /// Every process' log tail, for failure messages.
    pub fn logs(&self) -> String {
        let s = self.scaler.state.lock().expect("scaler");
        self.procs
            .iter()
            .chain(s.procs.iter())
            .map(|p| format!("--- {}:\n{}\n", p.name, tail(&p.stderr_text(), 40)))
            .collect()
    }
}

impl Scaler {
    fn on_router_line(&self, line: &str) {
        let mut s = self.state.lock().expect("scaler");
        let mut words = line.split_whitespace();
        match words.next() {
            Some("invoke-start") => {
                let function = words.nth(1).unwrap_or_default().to_owned();
                let cold = {
                    let (active, instances) = s.functions.entry(function.clone()).or_default();
                    *active += 1;
                    let cold = *active > *instances;
                    if cold {
                        *instances += 1;
                    }
                    cold
                };
                if cold {
                    s.instances += 1;
                    let n = s.instances;
                    match self.start_instance(n, &function) {
                        Ok(p) => s.procs.push(p),
                        Err(e) => eprintln!("lambda lab: starting function instance {n} failed: {e:#}"),
                    }
                }
            }
            Some("invoke-end") => {
                let status = words.nth(1).and_then(|w| w.parse().ok()).unwrap_or(0);
                let function = words.next().unwrap_or_default().to_owned();
                if let Some((active, _)) = s.functions.get_mut(&function) {
                    *active = active.saturating_sub(1);
                }
                *s.ended.entry(status).or_default() += 1;
            }
            Some("invoke-throttled") => s.throttled += 1,
            _ => {}
        }
    }

    /// A cold start: a new device behind its own moderate NAT (Lambda's
    /// NAT is endpoint-independent mapping), running `bootstrap` as Lambda
    /// would.
    fn start_instance(&self, n: usize, function: &str) -> anyhow::Result<Proc> {
        let code = self.function.lock().expect("function").clone().context("no function deployed in the lab")?;
        anyhow::ensure!(code.name == function, "invoked {function}, but the lab's deployed function is {}", code.name);
        let name = format!("fn-{n}");
        let device = self.rt.block_on(self.lab.add_node(&name, NatOptions::new(NatKind::Moderate)))?;
        let tmp = self.dir.join("instances").join(&name);
        std::fs::create_dir_all(&tmp)?;
        chown(&tmp, FUNCTION_UID)?;
        let jail = lambdajail(&self.dir)?;
        let bootstrap = code.task_root.join("bootstrap");
        let mut cmd = match &jail {
            Some(jail) => {
                let mut c = Command::new(jail);
                c.arg(&bootstrap);
                c
            }
            None => Command::new(&bootstrap),
        };
        let rdv_ip = self.lab.rendezvous_ip()?;
        cmd.env_clear()
            .env("AWS_LAMBDA_RUNTIME_API", format!("http://{rdv_ip}:{EMULATOR_PORT}/.rt/{}", code.name))
            .env("AWS_LAMBDA_FUNCTION_NAME", &code.name)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", MEMORY_MB.to_string())
            .env("LAMBDA_TASK_ROOT", &code.task_root)
            .env("_HANDLER", "bootstrap")
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("TMPDIR", &tmp)
            .env("LANG", "C.UTF-8")
            .env("RUST_LOG", std::env::var("BOXER_LAB_FN_LOG").unwrap_or_else(|_| "info".into()))
            // What Lambda gives every function: the execution role's
            // credentials and the region; S3 is the lab's (moto).
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_SESSION_TOKEN", "testing")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL_S3", format!("http://{rdv_ip}:{MOTO_PORT}"))
            .current_dir(&code.task_root)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let log = self.dir.join(format!("{name}.log"));
        cmd.stderr(std::fs::File::create(&log)?);
        {
            use std::os::unix::process::CommandExt;
            cmd.uid(FUNCTION_UID).gid(FUNCTION_UID);
            // SAFETY: setrlimit is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    let limit = libc::rlimit { rlim_cur: FUNCTION_NOFILE, rlim_max: FUNCTION_NOFILE };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = device.spawn_command_sync(cmd).with_context(|| format!("starting instance {name}"))?;
        Ok(Proc { child, name, stderr: log })
    }
}

impl Drop for LambdaLab {
    fn drop(&mut self) {
        let mut s = self.scaler.state.lock().unwrap_or_else(|e| e.into_inner());
        for p in s.procs.iter_mut() {
            p.stop();
        }
        for p in self.procs.iter_mut().rev() {
            p.stop();
        }
    }
}

/// lambdajail built from ../shared/tools (once per lab), or `None` with a
/// note when that file is not beside the repository.
fn lambdajail(dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let source = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/tools/lambdajail.c"));
    let out = dir.join("lambdajail");
    if out.is_file() {
        return Ok(Some(out));
    }
    if !source.is_file() {
        eprintln!("lambda lab: {} not found; instances run without Lambda's refusals", source.display());
        return Ok(None);
    }
    let status = Command::new("cc").args(["-O2", "-o"]).arg(&out).arg(source).status().context("running cc")?;
    anyhow::ensure!(status.success(), "building lambdajail failed");
    Ok(Some(out))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Writes the emulator's manifest: a `[[bin]]` per function name it routes.
fn write_emulator_manifest(dir: &Path, functions: &[&str]) -> anyhow::Result<()> {
    let mut toml = String::from("[package]\nname = \"boxer-lambda-lab\"\nversion = \"0.1.0\"\nedition = \"2021\"\n");
    for f in functions {
        toml.push_str(&format!("\n[[bin]]\nname = \"{f}\"\npath = \"main.rs\"\n"));
    }
    std::fs::write(dir.join("main.rs"), "fn main() {}\n")?;
    std::fs::write(dir.join("Cargo.toml"), toml)?;
    Ok(())
}

/// Starts `cmd` on `device` with its output in `<dir>/<name>.log`.
fn spawn_on(device: &patchbay::Device, mut cmd: Command, dir: &Path, name: &str) -> anyhow::Result<Proc> {
    let log = dir.join(format!("{name}.log"));
    cmd.stdin(Stdio::null()).stdout(std::fs::File::create(&log)?).stderr(std::fs::File::create(&log)?);
    let child = device.spawn_command_sync(cmd).with_context(|| format!("starting {name} in the lab"))?;
    Ok(Proc { child, name: name.into(), stderr: log })
}

/// Unzips argv[1] into argv[2] keeping the files' Unix modes (Lambda does).
const UNZIP_KEEPING_MODES: &str = r#"
import os, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
for i in z.infolist():
    p = z.extract(i, sys.argv[2])
    mode = i.external_attr >> 16
    if mode:
        os.chmod(p, mode & 0o7777)
"#;

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Directories get `mode`; files become readable by all (executables stay so).
fn set_mode_recursive(dir: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    set_mode(dir, mode)?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            set_mode_recursive(&path, mode)?;
        } else {
            let m = std::fs::metadata(&path)?.permissions().mode();
            set_mode(&path, m | 0o444)?;
        }
    }
    Ok(())
}

fn chown(path: &Path, uid: u32) -> anyhow::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).with_context(|| format!("chown {}", path.display()))
}
