//! `boxer.toml`: the cluster spec.
//!
//! ```toml
//! [cluster]
//! name = "redis-bench"            # network = "100.96.0.0/12" optional
//!
//! [services.db]
//! command = ["redis-server", "--port", "6379"]
//!
//! [services.bench]
//! command = ["redis-benchmark", "-h", "db-0", "-q"]
//! replicas = 1                    # default 1
//! env = { FOO = "bar" }           # added to the program's environment
//! workdir = "."                   # relative to this file; default: this file's directory
//! wait_for = ["db-0:6379"]        # start once db-0 listens on 6379
//! wait_timeout = 120              # seconds; then give up (exit code 124), default: wait as long as it takes
//! main = true                     # the cluster ends when its main services exit
//! private = ["/var/lib/zookeeper"] # local nodes: an empty writable copy of each, per node
//! isolate = true                  # local nodes: own /tmp, process table, hostname (default)
//! restart = "on-failure"          # replace an ended node (same name and address): never|on-failure|always
//!
//! [services.api]                  # a Go or static program: the shim cannot serve it,
//! command = ["./api-server"]      # so its ports are listed (explicit mode)
//! expose = [8080]                 # ports it listens on, on 127.0.0.1, announced to the cluster
//! forward = ["6379=db-0:6379"]    # [ADDR:]LOCALPORT=NAME:PORT: 127.0.0.1:6379 reaches db-0:6379
//!
//! [lambda]                        # optional: `boxer deploy` (flags win over these)
//! function = "redis-bench"        # default: boxer-<cluster>
//! role = "arn:aws:iam::123456789012:role/boxer"   # execution role
//! memory = 1769                   # MB, 128 to 10240 (1769 = one full vCPU)
//! timeout = 900                   # seconds, 1 to 900
//! architecture = "x86_64"         # or "arm64"
//! ephemeral_storage = 512         # MB of /tmp, 512 to 10240
//! files = "app"                   # directory packed with the function (relative to this file)
//! image = "public.ecr.aws/docker/library/redis:7"   # deploy as a container image on this base
//! replace_before_deadline = 60   # seconds: nodes of services with `restart` are replaced
//!                                 # this long before the function's timeout ends them
//!
//! [trigger]                       # optional: S3 invokes the function per new object (SCAR)
//! input = "s3://my-input/batch/"  # objects created under this prefix...
//! output = "s3://my-output/out/"  # ...are processed, results go here (must not overlap input)
//! service = "convert"             # whose command runs on each (default: the only service)
//! ```
//!
//! Every error names the file, line, column and key.

use crate::lab::NatKind;
use crate::lambda::{self, Architecture};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use boxer_proto::names;
use boxer_runtime::ForwardSpec;
use boxer_runtime::wait::MAX_WAIT_TIMEOUT_SECS;
use serde::Deserialize;
use toml::Spanned;

/// Most replicas of one service: far above what one machine runs, low enough
/// to catch a typo before it forks thousands of processes.
pub const MAX_REPLICAS: u32 = 1000;

/// A validated cluster spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The file it came from (or a description for built specs).
    pub path: PathBuf,
    /// Cluster name.
    pub name: String,
    /// Overlay network, if not the default.
    pub network: Option<ipnet::Ipv4Net>,
    /// Services in name order.
    pub services: Vec<Service>,
    /// How `boxer deploy` makes the cluster's Lambda function.
    pub lambda: LambdaSpec,
}

/// The `[lambda]` table: settings of the cluster's Lambda function. Every
/// field is optional; `boxer deploy` flags override them, and
/// [`crate::lambda::deploy`] supplies the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LambdaSpec {
    /// Function name (default: [`crate::lambda::function_name`]).
    pub function: Option<String>,
    /// ARN of the function's execution role.
    pub role: Option<String>,
    /// Memory in MB ([`lambda::MEMORY_MB`]); CPU is proportional to it.
    pub memory: Option<u32>,
    /// Invocation timeout in seconds ([`lambda::TIMEOUT_SECS`]).
    pub timeout: Option<u32>,
    /// Processor architecture.
    pub architecture: Option<Architecture>,
    /// Size of `/tmp` in MB ([`lambda::EPHEMERAL_STORAGE_MB`]).
    pub ephemeral_storage: Option<u32>,
    /// Directory whose contents are packed with the function (absolute).
    pub files: Option<PathBuf>,
    /// Base image: deploy as a container image built on it.
    pub image: Option<String>,
    /// The `[trigger]` table: S3 invokes the function for new objects.
    pub trigger: Option<Trigger>,
    /// Seconds before an invocation's timeout at which `boxer up` starts a
    /// node's replacement (services with `restart` only): the new instance
    /// boots while the old one serves, then takes its name and address the
    /// moment the old one has stopped.
    pub replace_before_deadline: Option<u32>,
}

/// The `[trigger]` table: every object created under `input` invokes the
/// function, which runs `service`'s command on it and writes the results
/// under `output` (SCAR's model; see `boxer_runtime::lambda::trigger`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    /// s3://BUCKET/PREFIX whose new objects invoke the function.
    pub input: boxer_runtime::s3::S3Url,
    /// s3://BUCKET/PREFIX the results go to.
    pub output: boxer_runtime::s3::S3Url,
    /// The service whose command and env process each object.
    pub service: String,
}

/// One service: `replicas` nodes running the same command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Service name.
    pub name: String,
    /// Program and arguments.
    pub command: Vec<String>,
    /// Number of nodes.
    pub replicas: u32,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Working directory of the program.
    pub workdir: PathBuf,
    /// `(name, port)` to wait for before starting.
    pub wait_for: Vec<(String, u16)>,
    /// How long to wait for `wait_for` before the node gives up (exit code
    /// 124); `None`: as long as it takes.
    pub wait_timeout: Option<std::time::Duration>,
    /// Local ports (on 127.0.0.1) announced to the cluster without the shim.
    pub expose: Vec<u16>,
    /// Local listeners carried to `NAME:PORT` in the cluster without the shim.
    pub forward: Vec<ForwardSpec>,
    /// Whether the cluster ends when this service's nodes have exited.
    pub main: bool,
    /// NAT of this service's nodes with `--net lab` (default: `--nat`).
    pub nat: Option<NatKind>,
    /// Local nodes run as machines of their own: private `/tmp`, `/var/tmp`
    /// and `/dev/shm`, own process table and hostname (default: yes).
    pub isolate: bool,
    /// Whether `boxer up` replaces a node of this service that ended.
    pub restart: Restart,
    /// Further directories each local node gets an empty writable copy of.
    pub private: Vec<PathBuf>,
}

impl Spec {
    /// Node names in start order (services by name, replicas by index).
    pub fn nodes(&self) -> impl Iterator<Item = (&Service, u32)> {
        self.services.iter().flat_map(|s| (0..s.replicas).map(move |i| (s, i)))
    }

    /// Total number of nodes.
    pub fn node_count(&self) -> usize {
        self.services.iter().map(|s| s.replicas as usize).sum()
    }
}

impl Service {
    /// A service made by a command rather than a spec (`boxer bench`,
    /// `boxer map`): `replicas` nodes of `command`, not isolated, nothing
    /// else set.
    pub fn plain(name: &str, replicas: u32, command: Vec<String>) -> Self {
        Self {
            name: name.to_owned(),
            command,
            replicas,
            env: BTreeMap::new(),
            workdir: PathBuf::new(),
            wait_for: vec![],
            wait_timeout: None,
            expose: vec![],
            forward: vec![],
            main: false,
            nat: None,
            isolate: false,
            private: vec![],
            restart: Restart::Never,
        }
    }
}

/// When `boxer up` replaces a node that ended: a new node with the same
/// name and overlay address, so peers that reconnect by name reach it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Restart {
    /// Never (the default): an ended node stays ended.
    #[default]
    Never,
    /// When it exits with a code other than 0 (or never started).
    OnFailure,
    /// Whenever it ends while the cluster runs.
    Always,
}

impl Restart {
    /// Whether a node that ended with `code` is replaced.
    pub fn applies(self, code: i32) -> bool {
        match self {
            Self::Never => false,
            Self::OnFailure => code != 0,
            Self::Always => true,
        }
    }
}

/// A spec error at a place in the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line and column, if known.
    pub position: Option<(usize, usize)>,
    /// The key, dotted (`services.db.command`), if known.
    pub key: Option<String>,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some((line, col)) = self.position {
            write!(f, ":{line}:{col}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    cluster: Spanned<RawCluster>,
    #[serde(default)]
    services: Option<Spanned<BTreeMap<Spanned<String>, Spanned<RawService>>>>,
    lambda: Option<RawLambda>,
    trigger: Option<Spanned<RawTrigger>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrigger {
    input: Spanned<String>,
    output: Spanned<String>,
    service: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLambda {
    function: Option<Spanned<String>>,
    role: Option<Spanned<String>>,
    memory: Option<Spanned<i64>>,
    timeout: Option<Spanned<i64>>,
    architecture: Option<Spanned<String>>,
    ephemeral_storage: Option<Spanned<i64>>,
    files: Option<Spanned<String>>,
    image: Option<Spanned<String>>,
    replace_before_deadline: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: Spanned<String>,
    network: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    command: Spanned<Vec<String>>,
    replicas: Option<Spanned<u32>>,
    env: Option<Spanned<BTreeMap<String, String>>>,
    workdir: Option<Spanned<String>>,
    wait_for: Option<Vec<Spanned<String>>>,
    wait_timeout: Option<Spanned<i64>>,
    expose: Option<Vec<Spanned<i64>>>,
    forward: Option<Vec<Spanned<String>>>,
    main: Option<bool>,
    restart: Option<Spanned<String>>,
    nat: Option<NatKind>,
    isolate: Option<bool>,
    private: Option<Vec<Spanned<String>>>,
}

struct Ctx<'a> {
    path: &'a Path,
    source: &'a str,
}

impl Ctx<'_> {
    fn position(&self, span: Range<usize>) -> (usize, usize) {
        let before = &self.source[..span.start.min(self.source.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rfind('\n').map_or(before.len(), |i| before.len() - i - 1) + 1;
        (line, col)
    }

    fn error(&self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) -> SpecError {
        SpecError {
            path: self.path.to_owned(),
            position: Some(self.position(span)),
            key: Some(key.into()),
            message: message.into(),
        }
    }
}

/// Reads and validates a spec file.
pub fn load(path: &Path) -> Result<Spec, SpecError> {
    // Absolute, so that workdirs relative to the file are too.
    let path = &std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let source = std::fs::read_to_string(path).map_err(|e| SpecError {
        path: path.to_owned(),
        position: None,
        key: None,
        message: format!("cannot read: {e}"),
    })?;
    parse(path, &source)
}

/// Parses and validates spec text (`path` is used in errors and for relative workdirs).
pub fn parse(path: &Path, source: &str) -> Result<Spec, SpecError> {
    let ctx = Ctx { path, source };
    let raw: RawSpec = toml::from_str(source).map_err(|e| SpecError {
        path: path.to_owned(),
        position: e.span().map(|s| ctx.position(s)),
        key: None,
        message: e.message().trim().to_owned(),
    })?;
    let base = path.parent().map(Path::to_owned).unwrap_or_default();

    let cluster = raw.cluster.get_ref();
    let name = cluster.name.get_ref().clone();
    names::validate_cluster(&name).map_err(|e| ctx.error(cluster.name.span(), "cluster.name", e.to_string()))?;
    let network = match &cluster.network {
        Some(n) => Some(n.get_ref().parse::<ipnet::Ipv4Net>().map_err(|_| {
            ctx.error(
                n.span(),
                "cluster.network",
                format!("{:?} is not an IPv4 network like 100.96.0.0/12", n.get_ref()),
            )
        })?),
        None => None,
    };

    let Some(raw_services) = raw.services.filter(|s| !s.get_ref().is_empty()) else {
        return Err(ctx.error(
            raw.cluster.span(),
            "services",
            "no services: add a [services.NAME] table with a command",
        ));
    };
    let mut services = Vec::new();
    let mut spans = HashMap::new();
    let mut forward_spans = HashMap::new();
    for (sname, service) in raw_services.get_ref() {
        let key = format!("services.{}", sname.get_ref());
        names::validate_service(sname.get_ref()).map_err(|e| ctx.error(sname.span(), &key, e.to_string()))?;
        let s = service.get_ref();
        let command = s.command.get_ref().clone();
        if command.first().is_none_or(|c| c.trim().is_empty()) {
            return Err(ctx.error(
                s.command.span(),
                format!("{key}.command"),
                "empty command: give the program and its arguments, e.g. [\"redis-server\", \"--port\", \"6379\"]",
            ));
        }
        let replicas = match &s.replicas {
            Some(r) if *r.get_ref() == 0 || *r.get_ref() > MAX_REPLICAS => {
                return Err(ctx.error(
                    r.span(),
                    format!("{key}.replicas"),
                    format!("replicas must be 1 to {MAX_REPLICAS}"),
                ));
            }
            Some(r) => *r.get_ref(),
            None => 1,
        };
        let env = match &s.env {
            Some(env) => {
                if let Some(bad) = env.get_ref().keys().find(|k| k.is_empty() || k.contains(['=', '\0'])) {
                    return Err(ctx.error(env.span(), format!("{key}.env"), format!("invalid variable name {bad:?}")));
                }
                env.get_ref().clone()
            }
            None => BTreeMap::new(),
        };
        let workdir = match &s.workdir {
            Some(w) => {
                let dir = base.join(w.get_ref());
                if !dir.is_dir() {
                    return Err(ctx.error(
                        w.span(),
                        format!("{key}.workdir"),
                        format!("{} is not a directory", dir.display()),
                    ));
                }
                dir
            }
            None => base.clone(),
        };
        let mut wait_for = Vec::new();
        for w in s.wait_for.iter().flatten() {
            let parsed = w.get_ref().rsplit_once(':').and_then(|(n, p)| Some((n.to_owned(), p.parse::<u16>().ok()?)));
            let Some((target, port)) = parsed.filter(|(n, p)| !n.is_empty() && *p != 0) else {
                return Err(ctx.error(
                    w.span(),
                    format!("{key}.wait_for"),
                    format!("{:?}: expected NAME:PORT, e.g. \"db-0:6379\"", w.get_ref()),
                ));
            };
            wait_for.push((target, port));
            spans.insert((sname.get_ref().clone(), wait_for.len() - 1), w.span());
        }
        let wait_timeout = match &s.wait_timeout {
            Some(t) if !(1..=MAX_WAIT_TIMEOUT_SECS as i64).contains(t.get_ref()) => {
                return Err(ctx.error(
                    t.span(),
                    format!("{key}.wait_timeout"),
                    format!("wait_timeout must be 1 to {MAX_WAIT_TIMEOUT_SECS} seconds, not {}", t.get_ref()),
                ));
            }
            Some(t) if wait_for.is_empty() => {
                return Err(ctx.error(
                    t.span(),
                    format!("{key}.wait_timeout"),
                    "wait_timeout without wait_for: there is nothing to wait for (add wait_for = [\"NAME:PORT\"] or remove it)",
                ));
            }
            Some(t) => Some(std::time::Duration::from_secs(*t.get_ref() as u64)),
            None => None,
        };
        let mut expose = Vec::new();
        for p in s.expose.iter().flatten() {
            let Some(port) = u16::try_from(*p.get_ref()).ok().filter(|p| *p != 0) else {
                return Err(ctx.error(
                    p.span(),
                    format!("{key}.expose"),
                    format!("{} is not a port (1 to 65535)", p.get_ref()),
                ));
            };
            if expose.contains(&port) {
                return Err(ctx.error(p.span(), format!("{key}.expose"), format!("port {port} is listed twice")));
            }
            expose.push(port);
        }
        let mut forward: Vec<ForwardSpec> = Vec::new();
        for f in s.forward.iter().flatten() {
            let fkey = format!("{key}.forward");
            let spec = f.get_ref().parse::<ForwardSpec>().map_err(|e| ctx.error(f.span(), &fkey, e.to_string()))?;
            let local = spec.listen;
            if local.port() == 0 {
                return Err(ctx.error(
                    f.span(),
                    &fkey,
                    format!("{:?}: local port 0; give the port the program connects to", f.get_ref()),
                ));
            }
            if forward.iter().any(|other| other.listen == local) {
                return Err(ctx.error(f.span(), &fkey, format!("local address {local} is forwarded twice")));
            }
            // Exposed ports are on 127.0.0.1 (see `Node::expose`).
            let on_exposed_address =
                local.ip() == std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST) || local.ip().is_unspecified();
            if expose.contains(&local.port()) && on_exposed_address {
                return Err(ctx.error(
                    f.span(),
                    &fkey,
                    format!(
                        "port {} is both exposed and forwarded: the forward would take the port the program listens on",
                        local.port()
                    ),
                ));
            }
            forward_spans.insert((sname.get_ref().clone(), forward.len()), f.span());
            forward.push(spec);
        }
        let isolate = s.isolate.unwrap_or(true);
        let mut private: Vec<PathBuf> = Vec::new();
        for d in s.private.iter().flatten() {
            let pkey = format!("{key}.private");
            let dir = PathBuf::from(d.get_ref());
            boxer_runtime::machine::check_private(&dir)
                .map_err(|why| ctx.error(d.span(), &pkey, format!("{:?}: {why}", d.get_ref())))?;
            if !isolate {
                return Err(ctx.error(
                    d.span(),
                    &pkey,
                    "private directories need the node's own mount namespace: remove `isolate = false` or `private`",
                ));
            }
            if private.contains(&dir) {
                return Err(ctx.error(d.span(), &pkey, format!("{:?} is listed twice", d.get_ref())));
            }
            private.push(dir);
        }
        let restart = match &s.restart {
            None => Restart::Never,
            Some(r) => match r.get_ref().as_str() {
                "never" => Restart::Never,
                "on-failure" => Restart::OnFailure,
                "always" => Restart::Always,
                other => {
                    return Err(ctx.error(
                        r.span(),
                        format!("{key}.restart"),
                        format!("restart must be \"never\", \"on-failure\" or \"always\", not {other:?}"),
                    ));
                }
            },
        };
        if restart != Restart::Never && s.main == Some(true) {
            let span = s.restart.as_ref().map_or(0..0, Spanned::span);
            return Err(ctx.error(
                span,
                format!("{key}.restart"),
                "a main service ends the cluster when its nodes end, so it cannot restart them: remove `main` or `restart`",
            ));
        }
        services.push(Service {
            name: sname.get_ref().clone(),
            command,
            replicas,
            env,
            workdir,
            wait_for,
            wait_timeout,
            expose,
            forward,
            main: s.main.unwrap_or(false),
            nat: s.nat,
            isolate,
            private,
            restart,
        });
    }
    let mut lambda = match &raw.lambda {
        Some(l) => parse_lambda(&ctx, l, &base)?,
        None => LambdaSpec::default(),
    };
    if let Some(t) = &raw.trigger {
        lambda.trigger = Some(parse_trigger(&ctx, t, &services)?);
    }
    if let Some(v) = raw.lambda.as_ref().and_then(|l| l.replace_before_deadline.as_ref())
        && services.iter().all(|s| s.restart == Restart::Never)
    {
        return Err(ctx.error(
            v.span(),
            "lambda.replace_before_deadline",
            "it replaces nodes of services with `restart = \"on-failure\"` or `\"always\"`, and no service has one",
        ));
    }
    let spec = Spec { path: path.to_owned(), name, network, services, lambda };
    check_wait_for(&spec, &ctx, &spans)?;
    check_forward(&spec, &ctx, &forward_spans)?;
    Ok(spec)
}

fn parse_lambda(ctx: &Ctx<'_>, raw: &RawLambda, base: &Path) -> Result<LambdaSpec, SpecError> {
    let range = |value: &Option<Spanned<i64>>, key: &str, limits: std::ops::RangeInclusive<u32>, unit: &str| {
        let Some(v) = value else { return Ok(None) };
        match u32::try_from(*v.get_ref()) {
            Ok(n) if limits.contains(&n) => Ok(Some(n)),
            _ => Err(ctx.error(
                v.span(),
                format!("lambda.{key}"),
                format!("{key} must be {} to {} {unit}, not {}", limits.start(), limits.end(), v.get_ref()),
            )),
        }
    };
    let text = |value: &Option<Spanned<String>>, key: &str, check: &dyn Fn(&str) -> Result<(), String>| {
        let Some(v) = value else { return Ok(None) };
        check(v.get_ref()).map_err(|m| ctx.error(v.span(), format!("lambda.{key}"), m))?;
        Ok(Some(v.get_ref().clone()))
    };
    let function = text(&raw.function, "function", &lambda::validate_function_name)?;
    let role = text(&raw.role, "role", &lambda::validate_role_arn)?;
    let image = text(&raw.image, "image", &|i: &str| {
        if i.trim().is_empty() || i.contains(char::is_whitespace) {
            Err(format!("{i:?} is not an image reference like \"public.ecr.aws/docker/library/python:3.12\""))
        } else {
            Ok(())
        }
    })?;
    let architecture = match &raw.architecture {
        Some(a) => Some(match a.get_ref().as_str() {
            "x86_64" => Architecture::X86_64,
            "arm64" => Architecture::Arm64,
            other => {
                return Err(ctx.error(
                    a.span(),
                    "lambda.architecture",
                    format!("architecture must be \"x86_64\" or \"arm64\", not {other:?}"),
                ));
            }
        }),
        None => None,
    };
    let files = match &raw.files {
        Some(f) => {
            let dir = base.join(f.get_ref());
            if !dir.is_dir() {
                return Err(ctx.error(f.span(), "lambda.files", format!("{} is not a directory", dir.display())));
            }
            Some(dir)
        }
        None => None,
    };
    let timeout = range(&raw.timeout, "timeout", lambda::TIMEOUT_SECS, "seconds")?;
    let replace_before_deadline =
        range(&raw.replace_before_deadline, "replace_before_deadline", 1..=*lambda::TIMEOUT_SECS.end() - 1, "seconds")?;
    if let (Some(r), Some(t), Some(v)) = (replace_before_deadline, timeout, &raw.replace_before_deadline)
        && r >= t
    {
        return Err(ctx.error(
            v.span(),
            "lambda.replace_before_deadline",
            format!("{r} s is not shorter than lambda.timeout ({t} s): every node would be replaced at once"),
        ));
    }
    Ok(LambdaSpec {
        function,
        role,
        memory: range(&raw.memory, "memory", lambda::MEMORY_MB, "MB")?,
        timeout,
        architecture,
        ephemeral_storage: range(&raw.ephemeral_storage, "ephemeral_storage", lambda::EPHEMERAL_STORAGE_MB, "MB")?,
        files,
        image,
        trigger: None,
        replace_before_deadline,
    })
}

fn parse_trigger(ctx: &Ctx<'_>, raw: &Spanned<RawTrigger>, services: &[Service]) -> Result<Trigger, SpecError> {
    let t = raw.get_ref();
    let url = |v: &Spanned<String>, key: &str| {
        v.get_ref().parse::<boxer_runtime::s3::S3Url>().map_err(|m| ctx.error(v.span(), format!("trigger.{key}"), m))
    };
    let input = url(&t.input, "input")?;
    let output = url(&t.output, "output")?;
    if input.bucket == output.bucket && (input.contains(&output.prefix) || output.contains(&input.prefix)) {
        return Err(ctx.error(
            t.output.span(),
            "trigger.output",
            format!(
                "{output} overlaps the input {input}: every result would invoke the function again; \
                 use another bucket or a prefix outside the input"
            ),
        ));
    }
    let service = match &t.service {
        Some(name) => {
            if !services.iter().any(|s| s.name == *name.get_ref()) {
                return Err(ctx.error(
                    name.span(),
                    "trigger.service",
                    format!("there is no service {:?}", name.get_ref()),
                ));
            }
            name.get_ref().clone()
        }
        None => match services {
            [only] => only.name.clone(),
            _ => {
                return Err(ctx.error(
                    raw.span(),
                    "trigger",
                    "the spec has several services: say which one processes each object (service = \"NAME\")",
                ));
            }
        },
    };
    Ok(Trigger { input, output, service })
}

/// The service a target name (`db-0`, `db`, `db-0.<cluster>.boxer`) of
/// `wait_for` or `forward` belongs to, or why no node of the spec has it.
fn target_service(spec: &Spec, by_name: &HashMap<&str, &Service>, target: &str) -> Result<String, String> {
    match names::parse(target, &spec.name) {
        Some(names::NameQuery::Replica { service, index }) => {
            let svc = by_name.get(service.as_str()).ok_or_else(|| format!("there is no service {service:?}"))?;
            if index >= svc.replicas {
                return Err(format!("service {service:?} has {} replica(s), indexes start at 0", svc.replicas));
            }
            Ok(service)
        }
        Some(names::NameQuery::Service(service)) => {
            by_name.get(service.as_str()).ok_or_else(|| format!("there is no service {service:?}"))?;
            Ok(service)
        }
        Some(names::NameQuery::Node(_)) => {
            Err("node ids are assigned at run time; name the replica, e.g. \"db-0\"".into())
        }
        None => Err("not a node name of this cluster".into()),
    }
}

/// Every `forward` target must be a node of the spec (a replica of the
/// same service is fine: peers of one service talk to each other).
fn check_forward(spec: &Spec, ctx: &Ctx<'_>, spans: &HashMap<(String, usize), Range<usize>>) -> Result<(), SpecError> {
    let by_name: HashMap<&str, &Service> = spec.services.iter().map(|s| (s.name.as_str(), s)).collect();
    for s in &spec.services {
        for (i, f) in s.forward.iter().enumerate() {
            target_service(spec, &by_name, &f.target).map_err(|why| {
                let span = spans.get(&(s.name.clone(), i)).cloned().unwrap_or(0..0);
                let entry = format!("{}:{}", f.target, f.port);
                ctx.error(span, format!("services.{}.forward", s.name), format!("impossible target {entry:?}: {why}"))
            })?;
        }
    }
    Ok(())
}

/// Every `wait_for` target must be a node of the spec, of another service,
/// and the waits must not form a cycle (which would never start).
fn check_wait_for(spec: &Spec, ctx: &Ctx<'_>, spans: &HashMap<(String, usize), Range<usize>>) -> Result<(), SpecError> {
    let by_name: HashMap<&str, &Service> = spec.services.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut deps: HashMap<&str, Vec<&str>> = HashMap::new();
    for s in &spec.services {
        for (i, (target, port)) in s.wait_for.iter().enumerate() {
            let span = spans.get(&(s.name.clone(), i)).cloned().unwrap_or(0..0);
            let key = format!("services.{}.wait_for", s.name);
            let entry = format!("{target}:{port}");
            let impossible = |why: String| ctx.error(span.clone(), &key, format!("impossible target {entry:?}: {why}"));
            let service = target_service(spec, &by_name, target).map_err(impossible)?;
            if service == s.name {
                return Err(impossible("a service cannot wait for itself".into()));
            }
            let service = by_name.get(service.as_str()).map(|s| s.name.as_str()).unwrap_or_default();
            deps.entry(s.name.as_str()).or_default().push(service);
        }
    }
    // Depth-first search for a cycle.
    fn visit<'a>(
        n: &'a str,
        deps: &HashMap<&'a str, Vec<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut Vec<&'a str>,
    ) -> Option<Vec<&'a str>> {
        if let Some(i) = path.iter().position(|p| *p == n) {
            let mut cycle = path[i..].to_vec();
            cycle.push(n);
            return Some(cycle);
        }
        if done.contains(&n) {
            return None;
        }
        path.push(n);
        for d in deps.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, deps, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.push(n);
        None
    }
    let mut done = Vec::new();
    for s in &spec.services {
        if let Some(cycle) = visit(&s.name, &deps, &mut Vec::new(), &mut done) {
            let span = spans.get(&(cycle[0].to_owned(), 0)).cloned().unwrap_or(0..0);
            return Err(ctx.error(
                span,
                format!("services.{}.wait_for", cycle[0]),
                format!("wait_for cycle {}: these services would wait for each other forever", cycle.join(" -> ")),
            ));
        }
    }
    Ok(())
}

/// A one-service spec for `boxer run`.
pub fn single(name: &str, replicas: u32, command: Vec<String>, workdir: PathBuf) -> Result<Spec, SpecError> {
    let err = |message: String| SpecError { path: "boxer run".into(), position: None, key: None, message };
    names::validate_cluster(name).map_err(|e| err(e.to_string()))?;
    names::validate_service(name).map_err(|e| err(e.to_string()))?;
    if replicas == 0 || replicas > MAX_REPLICAS {
        return Err(err(format!("-n must be 1 to {MAX_REPLICAS}")));
    }
    if command.first().is_none_or(|c| c.is_empty()) {
        return Err(err("no command: boxer run -n N -- COMMAND [ARGS...]".into()));
    }
    Ok(Spec {
        path: "boxer run".into(),
        name: name.to_owned(),
        network: None,
        services: vec![Service {
            name: name.to_owned(),
            command,
            replicas,
            env: BTreeMap::new(),
            workdir,
            wait_for: vec![],
            wait_timeout: None,
            expose: vec![],
            forward: vec![],
            main: true,
            nat: None,
            isolate: true,
            private: vec![],
            restart: Restart::Never,
        }],
        lambda: LambdaSpec::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(source: &str) -> String {
        parse(Path::new("/x/boxer.toml"), source).unwrap_err().to_string()
    }

    #[test]
    fn a_full_spec() {
        let spec = parse(
            Path::new("/tmp/boxer.toml"),
            r#"
[cluster]
name = "redis-bench"
network = "10.10.0.0/16"

[services.db]
command = ["redis-server", "--port", "6379"]

[services.bench]
replicas = 2
command = ["redis-benchmark", "-h", "db-0"]
env = { A = "1" }
wait_for = ["db-0:6379", "db:6379"]
main = true
nat = "strict"
"#,
        )
        .unwrap();
        assert_eq!(spec.name, "redis-bench");
        assert_eq!(spec.network.unwrap().to_string(), "10.10.0.0/16");
        let names: Vec<String> = spec.nodes().map(|(s, i)| format!("{}-{i}", s.name)).collect();
        assert_eq!(names, ["bench-0", "bench-1", "db-0"]);
        let bench = &spec.services[0];
        assert!(bench.main && bench.env["A"] == "1" && bench.workdir == Path::new("/tmp"));
        assert_eq!(bench.wait_for, [("db-0".to_string(), 6379), ("db".to_string(), 6379)]);
        assert_eq!((bench.nat, spec.services[1].nat), (Some(NatKind::Strict), None));
    }

    #[test]
    fn nodes_are_isolated_by_default_and_private_directories_are_checked() {
        let spec = parse(
            Path::new("/tmp/boxer.toml"),
            "[cluster]\nname = \"c\"\n[services.zk]\ncommand = [\"x\"]\nprivate = [\"/var/lib/zookeeper\"]\n\
             [services.tool]\ncommand = [\"x\"]\nisolate = false\n",
        )
        .unwrap();
        let (tool, zk) = (&spec.services[0], &spec.services[1]);
        assert!(zk.isolate && !tool.isolate);
        assert_eq!(zk.private, [PathBuf::from("/var/lib/zookeeper")]);
        let base = "[cluster]\nname = \"c\"\n[services.a]\ncommand = [\"x\"]\n";
        let relative = err(&format!("{base}private = [\"data\"]\n"));
        assert!(relative.contains("services.a.private") && relative.contains("absolute"), "{relative}");
        let tmp = err(&format!("{base}private = [\"/tmp/x\"]\n"));
        assert!(tmp.contains("/tmp is already private to every node"), "{tmp}");
        let proc = err(&format!("{base}private = [\"/proc\"]\n"));
        assert!(proc.contains("cannot be replaced"), "{proc}");
        let twice = err(&format!("{base}private = [\"/srv\", \"/srv\"]\n"));
        assert!(twice.contains("listed twice"), "{twice}");
        let shared = err(&format!("{base}isolate = false\nprivate = [\"/srv\"]\n"));
        assert!(shared.contains("own mount namespace"), "{shared}");
    }

    #[test]
    fn wait_timeout_and_explicit_ports() {
        let spec = parse(
            Path::new("/tmp/boxer.toml"),
            r#"
[cluster]
name = "c"
[services.db]
command = ["x"]
replicas = 2
[services.api]
command = ["./api"]
wait_for = ["db-1:5432"]
wait_timeout = 120
expose = [8080, 9090]
forward = ["5432=db-1:5432", "0.0.0.0:7000=db:7000", "127.0.0.2:8080=api-0:8080"]
"#,
        )
        .unwrap();
        let api = &spec.services[0];
        assert_eq!(api.wait_timeout, Some(std::time::Duration::from_secs(120)));
        assert_eq!(api.expose, [8080, 9090]);
        let forwards: Vec<String> =
            api.forward.iter().map(|f| format!("{}={}:{}", f.listen, f.target, f.port)).collect();
        assert_eq!(forwards, ["127.0.0.1:5432=db-1:5432", "0.0.0.0:7000=db:7000", "127.0.0.2:8080=api-0:8080"]);
        let db = &spec.services[1];
        assert_eq!((db.wait_timeout, db.expose.len(), db.forward.len()), (None, 0, 0));
    }

    #[test]
    fn wait_timeout_and_explicit_port_errors_are_positioned() {
        let base = "[cluster]\nname = \"c\"\n[services.db]\ncommand = [\"x\"]\n[services.a]\ncommand = [\"x\"]\n";
        let waits = "wait_for = [\"db-0:1\"]\n";
        let e = err(&format!("{base}{waits}wait_timeout = 0\n"));
        assert!(
            e.starts_with(
                "/x/boxer.toml:8:16: services.a.wait_timeout: wait_timeout must be 1 to 86400 seconds, not 0"
            ),
            "{e}"
        );
        let e = err(&format!("{base}{waits}wait_timeout = 86401\n"));
        assert!(e.starts_with("/x/boxer.toml:8:16: services.a.wait_timeout: wait_timeout must be 1 to 86400"), "{e}");
        let e = err(&format!("{base}wait_timeout = 5\n"));
        assert!(e.starts_with("/x/boxer.toml:7:16: services.a.wait_timeout: wait_timeout without wait_for"), "{e}");
        let e = err(&format!("{base}wait_timeout = \"5s\"\n"));
        assert!(e.starts_with("/x/boxer.toml:7:16"), "{e}");

        let e = err(&format!("{base}expose = [80, 0]\n"));
        assert!(e.starts_with("/x/boxer.toml:7:15: services.a.expose: 0 is not a port (1 to 65535)"), "{e}");
        let e = err(&format!("{base}expose = [65536]\n"));
        assert!(e.starts_with("/x/boxer.toml:7:11: services.a.expose: 65536 is not a port"), "{e}");
        let e = err(&format!("{base}expose = [80, 80]\n"));
        assert!(e.starts_with("/x/boxer.toml:7:15: services.a.expose: port 80 is listed twice"), "{e}");
        let e = err(&format!("{base}expose = 80\n"));
        assert!(e.starts_with("/x/boxer.toml:7:10"), "{e}");

        let e = err(&format!("{base}forward = [\"7000\"]\n"));
        assert!(
            e.starts_with("/x/boxer.toml:7:12: services.a.forward: invalid forward \"7000\": missing '='")
                && e.contains("expected [ADDR:]PORT=NAME:PORT"),
            "{e}"
        );
        let e = err(&format!("{base}forward = [\"7000=db-0:1\", \"0=db-0:2\"]\n"));
        assert!(e.starts_with("/x/boxer.toml:7:27: services.a.forward: \"0=db-0:2\": local port 0"), "{e}");
        let e = err(&format!("{base}forward = [\"7000=db-0:1\", \"127.0.0.1:7000=db-0:2\"]\n"));
        assert!(
            e.starts_with("/x/boxer.toml:7:27: services.a.forward: local address 127.0.0.1:7000 is forwarded twice"),
            "{e}"
        );
        let e = err(&format!("{base}expose = [7000]\nforward = [\"7000=db-0:1\"]\n"));
        assert!(
            e.starts_with("/x/boxer.toml:8:12: services.a.forward: port 7000 is both exposed and forwarded"),
            "{e}"
        );
        let e = err(&format!("{base}forward = [\"7000=db-1:1\"]\n"));
        assert!(
            e.starts_with(
                "/x/boxer.toml:7:12: services.a.forward: impossible target \"db-1:1\": service \"db\" has 1 replica(s)"
            ),
            "{e}"
        );
        let e = err(&format!("{base}forward = [\"7000=cache:1\"]\n"));
        assert!(e.contains("services.a.forward: impossible target \"cache:1\": there is no service \"cache\""), "{e}");
        let e = err(&format!("{base}forward = [\"7000=node-1:1\"]\n"));
        assert!(e.contains("node ids are assigned at run time"), "{e}");
    }

    #[test]
    fn lambda_table() {
        let dir = std::env::temp_dir().join(format!("boxer-spec-lambda-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("app")).unwrap();
        let spec = parse(
            &dir.join("boxer.toml"),
            r#"
[cluster]
name = "c"
[services.a]
command = ["x"]
restart = "always"
[lambda]
function = "my_fn-1"
role = "arn:aws:iam::123456789012:role/boxer"
memory = 3008
timeout = 60
architecture = "arm64"
ephemeral_storage = 1024
files = "app"
image = "public.ecr.aws/docker/library/python:3.12"
replace_before_deadline = 20
"#,
        )
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            spec.lambda,
            LambdaSpec {
                function: Some("my_fn-1".into()),
                role: Some("arn:aws:iam::123456789012:role/boxer".into()),
                memory: Some(3008),
                timeout: Some(60),
                architecture: Some(Architecture::Arm64),
                ephemeral_storage: Some(1024),
                files: Some(dir.join("app")),
                image: Some("public.ecr.aws/docker/library/python:3.12".into()),
                trigger: None,
                replace_before_deadline: Some(20),
            }
        );
        let plain =
            parse(Path::new("/x/boxer.toml"), "[cluster]\nname = \"c\"\n[services.a]\ncommand = [\"x\"]\n").unwrap();
        assert_eq!(plain.lambda, LambdaSpec::default());
    }

    #[test]
    fn lambda_errors_are_positioned() {
        let base = "[cluster]\nname = \"c\"\n[services.a]\ncommand = [\"x\"]\n[lambda]\n";
        let e = err(&format!("{base}memory = 64\n"));
        assert!(e.starts_with("/x/boxer.toml:6:10: lambda.memory: memory must be 128 to 10240 MB, not 64"), "{e}");
        let e = err(&format!("{base}timeout = 901\n"));
        assert!(e.starts_with("/x/boxer.toml:6:11: lambda.timeout: timeout must be 1 to 900 seconds"), "{e}");
        let e = err(&format!("{base}ephemeral_storage = -1\n"));
        assert!(e.contains("lambda.ephemeral_storage: ephemeral_storage must be 512 to 10240 MB, not -1"), "{e}");
        let e = err(&format!("{base}architecture = \"x86\"\n"));
        assert!(
            e.starts_with("/x/boxer.toml:6:16: lambda.architecture: architecture must be \"x86_64\" or \"arm64\""),
            "{e}"
        );
        let e = err(&format!("{base}function = \"a.b\"\n"));
        assert!(e.starts_with("/x/boxer.toml:6:12: lambda.function:") && e.contains("'.'"), "{e}");
        let e = err(&format!("{base}role = \"boxer\"\n"));
        assert!(e.starts_with("/x/boxer.toml:6:8: lambda.role:") && e.contains("arn:aws:iam::"), "{e}");
        let e = err(&format!("{base}files = \"nope\"\n"));
        assert!(e.starts_with("/x/boxer.toml:6:9: lambda.files: /x/nope is not a directory"), "{e}");
        let e = err(&format!("{base}image = \"\"\n"));
        assert!(e.starts_with("/x/boxer.toml:6:9: lambda.image:"), "{e}");
        let e = err(&format!("{base}replace_before_deadline = 30\n"));
        assert!(e.starts_with("/x/boxer.toml:6:27: lambda.replace_before_deadline:") && e.contains("`restart"), "{e}");
        let with_restart = base.replace("[lambda]", "restart = \"on-failure\"\n[lambda]");
        let e = err(&format!("{with_restart}timeout = 30\nreplace_before_deadline = 30\n"));
        assert!(e.contains("lambda.replace_before_deadline: 30 s is not shorter than lambda.timeout (30 s)"), "{e}");
        let e = err(&format!("{with_restart}replace_before_deadline = 0\n"));
        assert!(e.contains("replace_before_deadline must be 1 to 899 seconds, not 0"), "{e}");
        let e = err(&format!("{base}memroy = 128\n"));
        assert!(e.starts_with("/x/boxer.toml:6:1") && e.contains("unknown field `memroy`"), "{e}");
        let e = err(&format!("{base}memory = \"big\"\n"));
        assert!(e.starts_with("/x/boxer.toml:6:10"), "{e}");
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = err("[cluster]\nname = \"c\"\n[services.db]\ncommand = [\"x\"]\ncolour = \"red\"\n");
        assert!(e.starts_with("/x/boxer.toml:5:1") && e.contains("unknown field `colour`"), "{e}");

        let e = err("[cluster]\nname = \"c\"\n[services.Web]\ncommand = [\"x\"]\n");
        assert!(e.starts_with("/x/boxer.toml:3:11: services.Web: invalid service name"), "{e}");

        let e = err("[cluster]\nname = \"c\"\n[services.db]\ncommand = [\"x\"]\n[services.db]\ncommand = [\"y\"]\n");
        assert!(e.starts_with("/x/boxer.toml:5:") && e.contains("duplicate"), "{e}");

        let e = err("[cluster]\nname = \"c\"\n[services.db]\ncommand = []\n");
        assert!(e.starts_with("/x/boxer.toml:4:11: services.db.command: empty command"), "{e}");

        let e = err("[cluster]\nname = \"c\"\n[services.db]\ncommand = [\"x\"]\nwait_for = [\"db-1:80\"]\n");
        assert!(e.starts_with("/x/boxer.toml:5:13: services.db.wait_for: impossible target \"db-1:80\""), "{e}");
        let e = err(
            "[cluster]\nname = \"c\"\n[services.a]\ncommand = [\"x\"]\n[services.b]\ncommand = [\"x\"]\nwait_for = [\"a-3:1\"]\n",
        );
        assert!(e.contains("services.b.wait_for") && e.contains("has 1 replica(s)"), "{e}");
        let e = err("[cluster]\nname = \"c\"\n[services.a]\ncommand = [\"x\"]\nwait_for = [\"nope-0:1\"]\n");
        assert!(e.contains("there is no service \"nope\""), "{e}");
        let e = err(
            "[cluster]\nname = \"c\"\n[services.a]\ncommand = [\"x\"]\nwait_for = [\"b-0:1\"]\n[services.b]\ncommand = [\"x\"]\nwait_for = [\"a-0:1\"]\n",
        );
        assert!(e.contains("wait_for cycle a -> b -> a"), "{e}");
        let e = err("[cluster]\nname = \"c\"\n[services.a]\ncommand = [\"x\"]\nwait_for = [\"b-0\"]\n");
        assert!(e.contains("expected NAME:PORT"), "{e}");

        let e = err("[cluster]\nname = \"Bad Name\"\n[services.a]\ncommand = [\"x\"]\n");
        assert!(e.starts_with("/x/boxer.toml:2:8: cluster.name: invalid cluster name"), "{e}");
        let e = err("[cluster]\nname = \"c\"\n");
        assert!(e.contains("services: no services"), "{e}");
        let e = err("[cluster]\nname = \"c\"\n[services.a]\ncommand = [\"x\"]\nreplicas = 0\n");
        assert!(e.contains("services.a.replicas: replicas must be 1"), "{e}");
        let e = err("[cluster\n");
        assert!(e.starts_with("/x/boxer.toml:1:"), "{e}");
    }
}
