//! `boxer map`: SCAR's fan-out. Every object under an input prefix is one
//! item; every item runs on a node of its own (a Lambda invocation, or a
//! local process), at most `-n` at a time. The node downloads its object,
//! runs the command on it and uploads what the command wrote to
//! `$BOXER_OUTPUT_DIR` under the output prefix (`bootstrap map-item`, see
//! [`boxer_runtime::map_item`]). A failed item is tried again on a new node
//! up to `--retries` times; the run ends with a summary and exits non-zero
//! when an item still failed.
//!
//! The nodes form one cluster on the rendezvous, like any other: an item's
//! command can reach the others by name, and `BOXER_RANK` / `BOXER_SIZE`
//! number the items.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use boxer_proto::Fingerprint;
use boxer_proto::control::ServerMessage;
use boxer_runtime::map_item::{EXIT_NO_INPUT, EXIT_NOT_STARTED, EXIT_UPLOAD, MapItemArgs, Place};
use boxer_runtime::s3::{self as s3_io, S3Url};
use boxer_runtime::stage::{self, STAGE_SERVICE, Stage};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;

use crate::interrupt::{EXIT_INTERRUPTED, Interrupt};
use crate::lab::NatKind;
use crate::lambda::aws::AwsArgs;
use crate::lambda::invoke::{LambdaOptions, LambdaProvider};
use crate::provider::{Join, LocalProvider, NodeExit, Provider, RANK_ENV, SIZE_ENV};
use crate::spec::{LambdaSpec, Service, Spec};
use crate::up::{ClusterRendezvous, External, FeedItem, NetMode, ProviderChoice, UpOptions};

/// The function `--provider lambda` invokes unless `--function` names
/// another: `boxer deploy examples/map/boxer.toml` makes it. Any function
/// `boxer deploy` made works: every runtime carries `map-item`.
pub const DEFAULT_FUNCTION: &str = "boxer-map";

/// The attempt number (1 for the first try) in every item's environment,
/// for commands that behave differently on a retry.
pub const ATTEMPT_ENV: &str = "BOXER_ATTEMPT";

/// Most items at once: Lambda's default concurrency quota per account and
/// region. More would only queue at Lambda (throttled invokes).
pub const MAX_CONCURRENCY: u32 = 1000;

/// Lines of each node's output kept to say why an item failed.
const KEPT_LINES: usize = 3;

/// How long a failed item's last output may trail its exit (it travels
/// through the rendezvous; the exit comes from the provider).
const OUTPUT_SETTLE: Duration = Duration::from_millis(500);

/// Most retries per item: a command that failed this often will fail again.
pub const MAX_RETRIES: u32 = 10;

/// Service name of first attempts; retry `k` runs as `retry<k>`, so every
/// node name says which attempt it is.
const FIRST_ATTEMPT_SERVICE: &str = "item";

/// Where the items run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MapProvider {
    /// Processes on this machine, in its network namespace (items reach S3
    /// as this machine does).
    Local,
    /// Invocations of a Lambda function (needs --rendezvous on a host
    /// Lambda can reach).
    Lambda,
}

/// Where the items come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inputs {
    /// Every object under a prefix.
    S3(S3Url),
    /// Local files: a directory (every file under it), one file, or a
    /// glob pattern. Staged to the nodes over the overlay.
    Local(String),
}

impl std::str::FromStr for Inputs {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with("s3://") {
            s.parse().map(Inputs::S3)
        } else if s.is_empty() {
            Err("expected s3://BUCKET/PREFIX, a directory, a file or a glob".into())
        } else {
            Ok(Inputs::Local(s.to_owned()))
        }
    }
}

impl std::fmt::Display for Inputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Inputs::S3(url) => url.fmt(f),
            Inputs::Local(spec) => f.write_str(spec),
        }
    }
}

/// Where the results go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outputs {
    /// Under a prefix.
    S3(S3Url),
    /// Under a local directory (made if missing), sent over the overlay.
    Dir(PathBuf),
}

impl std::str::FromStr for Outputs {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with("s3://") {
            s.parse().map(Outputs::S3)
        } else if s.is_empty() {
            Err("expected s3://BUCKET/PREFIX or a directory".into())
        } else {
            Ok(Outputs::Dir(PathBuf::from(s)))
        }
    }
}

impl std::fmt::Display for Outputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outputs::S3(url) => url.fmt(f),
            Outputs::Dir(dir) => write!(f, "{}", dir.display()),
        }
    }
}

/// `boxer map`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct MapArgs {
    /// The items: every object under s3://BUCKET/PREFIX (a prefix is a
    /// folder: `in` takes `in/x` but not `inside/x`); or, with the local
    /// provider, local files: a directory (every file under it), a file, or
    /// a quoted glob like 'data/*.csv'. Local files are served to the
    /// nodes over the overlay by this command's own node, stage-0.
    #[arg(long, value_name = "s3://BUCKET/PREFIX|DIR|GLOB")]
    pub input: Inputs,
    /// Where each item's results go: the files its command wrote to
    /// $BOXER_OUTPUT_DIR, at their paths relative to it; under
    /// s3://BUCKET/PREFIX, or (local provider) in a local directory, sent
    /// back over the overlay.
    #[arg(long, value_name = "s3://BUCKET/PREFIX|DIR")]
    pub output: Outputs,
    /// Items running at once (nodes at the same time).
    #[arg(short = 'n', long, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_CONCURRENCY)))]
    pub concurrency: u32,
    /// Times a failed item is tried again, each time on a new node.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_RETRIES)))]
    pub retries: u32,
    /// Where items run: `local` processes or `lambda` invocations.
    #[arg(long, value_enum, default_value = "local")]
    pub provider: MapProvider,
    /// With --provider lambda: the function to invoke.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_FUNCTION)]
    pub function: String,
    /// With --provider lambda: a rendezvous the functions can reach (needs
    /// --fingerprint and --admin-token).
    #[arg(long, requires_all = ["fingerprint", "admin_token"])]
    pub rendezvous: Option<SocketAddr>,
    /// Certificate fingerprint of --rendezvous.
    #[arg(long)]
    pub fingerprint: Option<Fingerprint>,
    /// Admin token of --rendezvous.
    #[arg(long, env = "BOXER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// With --provider lambda: price per GB-second for the cost estimate.
    #[arg(long, value_name = "USD")]
    pub price_per_gb_second: Option<f64>,
    #[command(flatten)]
    pub aws: AwsArgs,
    /// The command run on each item: `{}` in an argument is the local path
    /// of the item's object (also $BOXER_INPUT).
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// How an item ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Its command succeeded and its results were uploaded.
    Done,
    /// Its last attempt failed with this exit code.
    Failed(i32),
}

/// One object to process.
#[derive(Debug)]
struct Item {
    /// Its S3 key, or its local path as listed.
    key: String,
    /// The local file (local inputs).
    file: Option<PathBuf>,
    attempts: u32,
    started: Option<Instant>,
    /// Seconds of its successful (or last) attempt.
    seconds: f64,
    outcome: Option<Outcome>,
    /// Why its last attempt failed.
    why: String,
}

/// What a run did, for the summary.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Items whose command succeeded.
    pub done: usize,
    /// Items that failed every attempt.
    pub failed: usize,
    /// Items that needed more than one attempt.
    pub retried_items: usize,
    /// Attempts beyond the first, over all items.
    pub retries: u32,
}

/// Runs `boxer map`; the exit code (0: every item done; 1: some failed;
/// 130: interrupted).
pub async fn run(args: MapArgs) -> anyhow::Result<i32> {
    let staged = matches!(args.input, Inputs::Local(_)) || matches!(args.output, Outputs::Dir(_));
    anyhow::ensure!(
        !staged || args.provider == MapProvider::Local,
        "local files (--input {}, --output {}) need --provider local: upload the inputs with \
         `boxer put FILES s3://BUCKET/PREFIX` and map over s3://, with the results to s3://",
        args.input,
        args.output
    );
    let options = options(&args)?;
    if let (Inputs::S3(input), Outputs::S3(output)) = (&args.input, &args.output)
        && output.bucket == input.bucket
        && input.contains(&output.prefix)
    {
        eprintln!("note: {output} is under {input}: results written there are items of the next `boxer map` over it");
    }
    // One client, made when first needed, for the listing and the output check.
    let s3 = tokio::sync::OnceCell::new();
    let client = || s3.get_or_try_init(|| crate::s3::client(&args.aws));
    let items: Vec<Item> = match &args.input {
        Inputs::S3(input) => {
            let objects = s3_io::list(client().await?, input).await?;
            anyhow::ensure!(
                !objects.is_empty(),
                "no objects under {input}: upload the inputs first (boxer put FILES {input})"
            );
            objects.into_iter().map(|(key, _)| Item::new(key, None)).collect()
        }
        Inputs::Local(spec) => local_inputs(spec)?.into_iter().map(|(key, file)| Item::new(key, Some(file))).collect(),
    };
    match &args.output {
        Outputs::S3(output) => {
            client()
                .await?
                .head_bucket()
                .bucket(&output.bucket)
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("output bucket {}: {}", output.bucket, s3_io::explain(&e)))?;
        }
        Outputs::Dir(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating the output directory {}", dir.display()))?;
        }
    }
    let name = format!("map-{}", &::rendezvous::registry::random_token()[..8]);
    let spec = Spec {
        path: PathBuf::from("boxer map"),
        name: name.clone(),
        network: None,
        services: vec![],
        lambda: LambdaSpec::default(),
    };
    let dir = crate::state::cluster_dir(&name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating state directory {}", dir.display()))?;
    let interrupt = Interrupt::new("interrupted again: exiting (items still running end by themselves)")?;
    let result = match &options.provider {
        ProviderChoice::Local => {
            let (provider, exits) = LocalProvider::new(dir.clone(), None)?;
            let program = crate::provider::runtime_binary()?.display().to_string();
            let rendezvous = ClusterRendezvous::start(&spec, &options, &dir, None).await?;
            let workdir = std::env::current_dir().context("reading the current directory")?;
            let node_aws_env = local_aws_env(&args.aws);
            let stage = match staged {
                true => {
                    let inputs = items.iter().filter_map(|i| Some((i.key.clone(), i.file.clone()?))).collect();
                    let output = match &args.output {
                        Outputs::Dir(dir) => Some(dir.clone()),
                        Outputs::S3(_) => None,
                    };
                    match StageNode::start(&rendezvous.join(), Stage { inputs, output }).await {
                        Ok(stage) => Some(stage),
                        Err(e) => {
                            rendezvous.close().await;
                            return Err(e);
                        }
                    }
                }
                false => None,
            };
            let run = Run { args: &args, program, workdir, items, provider, exits, interrupt, node_aws_env, stage };
            run.drive(&rendezvous).await
        }
        ProviderChoice::Lambda(lambda) => {
            let (provider, exits) = LambdaProvider::new(lambda.clone(), &spec, &dir).await?;
            let rendezvous = ClusterRendezvous::start(&spec, &options, &dir, None).await?;
            // The function's own directory, where `bootstrap` is.
            let run = Run {
                args: &args,
                program: "bootstrap".into(),
                workdir: PathBuf::new(),
                items,
                provider,
                exits,
                interrupt,
                node_aws_env: vec![],
                stage: None,
            };
            run.drive(&rendezvous).await
        }
    };
    if matches!(result, Ok(0)) {
        // Nothing to look at: the reports and logs of a clean run go.
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("node logs and reports: {}", dir.display());
    }
    result
}

impl Item {
    fn new(key: String, file: Option<PathBuf>) -> Self {
        Self { key, file, attempts: 0, started: None, seconds: 0.0, outcome: None, why: String::new() }
    }
}

/// The files `--input` names when it is not an S3 URL, with the key each is
/// shown under: every file under a directory (key: the path below it), one
/// file (its name), or what a glob pattern matches (the paths as matched).
fn local_inputs(spec: &str) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let path = Path::new(spec);
    let mut files: Vec<(String, PathBuf)> = if path.is_dir() {
        s3_io::files_under(path)?.into_iter().map(|(file, rel)| (rel, file)).collect()
    } else if path.is_file() {
        let name = path.file_name().map_or_else(|| spec.to_owned(), |n| n.to_string_lossy().into_owned());
        vec![(name, path.to_owned())]
    } else if spec.contains(['*', '?', '[']) {
        let matches = glob::glob(spec).map_err(|e| anyhow::anyhow!("--input {spec:?}: not a valid pattern: {e}"))?;
        // Keys are paths below the pattern's fixed part (`data/` of
        // `data/*/x.csv`), as for a directory.
        let base: PathBuf =
            path.components().take_while(|c| !c.as_os_str().to_string_lossy().contains(['*', '?', '['])).collect();
        let mut files = Vec::new();
        for found in matches {
            let file = found.with_context(|| format!("--input {spec:?}: reading a match"))?;
            if file.is_file() {
                let key = file.strip_prefix(&base).unwrap_or(&file).to_string_lossy().into_owned();
                files.push((key, file));
            }
        }
        files
    } else {
        anyhow::bail!(
            "--input {spec:?}: no such file or directory (give a directory, a file, a quoted glob like 'data/*.csv', \
             or s3://BUCKET/PREFIX)"
        );
    };
    files.sort();
    anyhow::ensure!(!files.is_empty(), "--input {spec:?}: no files there");
    // Absolute paths: the stage serves them whatever the working directory.
    for (_, file) in &mut files {
        *file = std::path::absolute(&*file).with_context(|| format!("resolving {}", file.display()))?;
    }
    Ok(files)
}

/// `boxer map`'s own node in its cluster, `stage-0`: serves the local input
/// files and takes the results ([`boxer_runtime::stage`]) on a loopback
/// port it exposes to the cluster.
struct StageNode {
    node: boxer_runtime::Node,
    server: tokio::task::JoinHandle<()>,
    /// `http://stage-0:PORT`, as the items reach it.
    base: String,
}

impl StageNode {
    async fn start(join: &Join, stage: Stage) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("listening for the stage on loopback")?;
        let port = listener.local_addr()?.port();
        let server = tokio::spawn(boxer_runtime::stage::serve(listener, Arc::new(stage)));
        let config = boxer_runtime::NodeConfig {
            rendezvous: boxer_net::rendezvous::RendezvousAddr {
                addr: join.rendezvous,
                fingerprint: join.fingerprint.parse()?,
            },
            cluster: join.cluster.clone(),
            join_token: join.token.clone(),
            service: STAGE_SERVICE.into(),
            index: 0,
            bind: SocketAddr::from((
                if join.rendezvous.ip().is_loopback() { Ipv4Addr::LOCALHOST } else { Ipv4Addr::UNSPECIFIED },
                0,
            )),
            forwards: vec![],
            expose: vec![port],
            status_file: None,
            run_dir: None,
            shared_namespace: false,
        };
        let node = match boxer_runtime::Node::start(config).await {
            Ok(node) => node,
            Err(e) => {
                server.abort();
                return Err(e).context(format!("joining cluster {} as the stage node", join.cluster));
            }
        };
        let base = format!("http://{}:{port}", node.joined().names[0]);
        Ok(Self { node, server, base })
    }

    async fn stop(self) {
        self.node.shutdown().await;
        self.server.abort();
    }
}

/// What `--endpoint-url`, `--region` and `--profile` say, as the variables
/// a local node's `map-item` reads (it inherits the rest of this process'
/// environment, credentials included).
fn local_aws_env(aws: &AwsArgs) -> Vec<(String, String)> {
    let mut env = Vec::new();
    if let Some(url) = &aws.endpoint_url {
        env.push(("AWS_ENDPOINT_URL_S3".to_owned(), url.clone()));
    }
    if let Some(region) = &aws.region {
        env.push(("AWS_REGION".to_owned(), region.clone()));
    }
    if let Some(profile) = &aws.profile {
        env.push(("AWS_PROFILE".to_owned(), profile.clone()));
    }
    env
}

/// The provider and rendezvous options, checked as `boxer up` checks them.
fn options(args: &MapArgs) -> anyhow::Result<UpOptions> {
    let external = External::from_flags(args.rendezvous, args.fingerprint, args.admin_token.as_deref());
    let provider = match args.provider {
        MapProvider::Local => ProviderChoice::Local,
        MapProvider::Lambda => {
            crate::lambda::validate_function_name(&args.function).map_err(|e| anyhow::anyhow!("--function: {e}"))?;
            let lambda = LambdaOptions {
                aws: args.aws.clone(),
                function: Some(args.function.clone()),
                price_per_gb_second: args.price_per_gb_second,
            };
            ProviderChoice::lambda(lambda, external.as_ref())?
        }
    };
    // Items reach S3 as this machine does: no namespace of their own.
    Ok(UpOptions { net: NetMode::Host, external, nat: NatKind::Moderate, provider })
}

/// One run over the items.
struct Run<'a, P> {
    args: &'a MapArgs,
    /// What starts `map-item` on a node: the runtime binary, or `bootstrap`.
    program: String,
    workdir: PathBuf,
    items: Vec<Item>,
    provider: P,
    exits: mpsc::UnboundedReceiver<NodeExit>,
    interrupt: Interrupt,
    /// AWS settings of this command's flags that nodes need as well
    /// (local nodes only: a function has its own).
    node_aws_env: Vec<(String, String)>,
    /// `boxer map`'s own node when local files are staged.
    stage: Option<StageNode>,
}

impl<P: Provider> Run<'_, P> {
    /// Runs every item to its end; prints the per-item lines and the
    /// summary; the exit code.
    async fn drive(mut self, rendezvous: &ClusterRendezvous) -> anyhow::Result<i32> {
        let started = Instant::now();
        let join = rendezvous.join();
        // The items' output, for the reason of a failure.
        let (_, mut feed) = rendezvous.watch().await?;
        let mut output = Output::default();
        let total = self.items.len();
        eprintln!(
            "boxer map: {total} item(s) from {} to {}, {} at a time on {}",
            self.args.input,
            self.args.output,
            self.args.concurrency,
            self.provider.kind()
        );
        let progress = ProgressBar::new(total as u64);
        progress.set_style(
            ProgressStyle::with_template("{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} items {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        progress.enable_steady_tick(Duration::from_millis(200));
        let mut queue: VecDeque<usize> = (0..total).collect();
        let mut running: HashMap<String, usize> = HashMap::new();
        let mut interrupted = false;
        loop {
            while running.len() < self.args.concurrency as usize
                && let Some(i) = queue.pop_front()
            {
                match self.launch(&join, i).await {
                    Ok(node) => {
                        running.insert(node, i);
                    }
                    Err(e) => {
                        let exit = NodeExit::failed(&format!("item {i}"), format!("{e:#}"));
                        self.ended(i, &exit, &mut queue, &progress);
                    }
                }
            }
            if running.is_empty() {
                break;
            }
            progress.set_message(format!("({} running, {} retried)", running.len(), self.tally().retries));
            tokio::select! {
                exit = self.exits.recv() => {
                    let Some(mut exit) = exit else { anyhow::bail!("the {} provider stopped reporting", self.provider.kind()) };
                    self.provider.exited(&exit.node);
                    if let Some(i) = running.remove(&exit.node) {
                        if exit.code != 0 || exit.failed_to_start {
                            // A node that never started has no output to
                            // wait for: only a failed program's may trail.
                            if !exit.failed_to_start {
                                output.settle(&mut feed, &exit.node).await;
                            }
                            exit.detail.extend(output.take(&exit.node));
                        } else {
                            output.take(&exit.node);
                        }
                        self.ended(i, &exit, &mut queue, &progress);
                    }
                }
                Some(item) = feed.recv() => output.keep(item),
                () = self.interrupt.wait() => {
                    interrupted = true;
                    break;
                }
            }
        }
        progress.finish_and_clear();
        if interrupted {
            eprintln!("interrupted: stopping {} running item(s) (the cluster is deleted)", running.len());
        }
        // The stage leaves before the cluster is deleted under it.
        if let Some(stage) = self.stage.take() {
            stage.stop().await;
        }
        rendezvous.close().await;
        self.provider.stop_all(false);
        let deadline = tokio::time::Instant::now() + self.provider.stop_grace();
        while !running.is_empty() {
            match tokio::time::timeout_at(deadline, self.exits.recv()).await {
                Ok(Some(exit)) => {
                    self.provider.exited(&exit.node);
                    running.remove(&exit.node);
                }
                _ => break,
            }
        }
        self.provider.stop_all(true);
        print!("{}", self.summary(started.elapsed(), interrupted));
        let tally = self.tally();
        Ok(if interrupted {
            EXIT_INTERRUPTED
        } else if tally.done == total {
            0
        } else {
            1
        })
    }

    /// Starts the next attempt of item `i`; its node's name.
    async fn launch(&mut self, join: &Join, i: usize) -> anyhow::Result<String> {
        let total = self.items.len();
        let item = &mut self.items[i];
        item.attempts += 1;
        item.started = Some(Instant::now());
        let base = self.stage.as_ref().map_or("", |s| s.base.as_str());
        let input = match (&self.args.input, &item.file) {
            (Inputs::S3(url), _) => Place::S3(S3Url { bucket: url.bucket.clone(), prefix: item.key.clone() }),
            (Inputs::Local(_), Some(_)) => Place::Stage(stage::input_url(base, i, &item.key)),
            (Inputs::Local(_), None) => anyhow::bail!("item {} has no file", item.key),
        };
        let output = match &self.args.output {
            Outputs::S3(url) => Place::S3(url.clone()),
            Outputs::Dir(_) => Place::Stage(stage::output_url(base)),
        };
        let map_item = MapItemArgs { input, output, command: self.args.command.clone() };
        let name = match item.attempts {
            1 => FIRST_ATTEMPT_SERVICE.to_owned(),
            n => format!("retry{}", n - 1),
        };
        let mut env = std::collections::BTreeMap::new();
        env.insert(RANK_ENV.to_owned(), i.to_string());
        env.insert(SIZE_ENV.to_owned(), total.to_string());
        env.insert(ATTEMPT_ENV.to_owned(), item.attempts.to_string());
        env.extend(self.node_aws_env.iter().cloned());
        let command = std::iter::once(self.program.clone()).chain(map_item.to_args()).collect();
        let mut service = Service::plain(&name, u32::try_from(total).unwrap_or(u32::MAX), command);
        service.env = env;
        service.workdir = self.workdir.clone();
        let index = u32::try_from(i).context("too many items")?;
        self.provider.launch(join, &service, index).await?;
        Ok(boxer_proto::names::replica_name(&service.name, index))
    }

    /// Item `i`'s attempt ended: done, queued again, or failed for good.
    fn ended(&mut self, i: usize, exit: &NodeExit, queue: &mut VecDeque<usize>, progress: &ProgressBar) {
        let retries = self.args.retries;
        let item = &mut self.items[i];
        item.seconds = item.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
        if exit.code == 0 && !exit.failed_to_start {
            item.outcome = Some(Outcome::Done);
            progress.inc(1);
            progress.suspend(|| println!("done    {}  ({:.1} s, attempt {})", item.key, item.seconds, item.attempts));
            return;
        }
        item.why = why(exit);
        if item.attempts <= retries {
            progress.suspend(|| {
                println!("retry   {}  (attempt {} of {} failed: {})", item.key, item.attempts, retries + 1, item.why)
            });
            queue.push_back(i);
        } else {
            item.outcome = Some(Outcome::Failed(exit.code));
            progress.inc(1);
            progress.suspend(|| println!("failed  {}  ({} attempt(s): {})", item.key, item.attempts, item.why));
        }
    }

    fn tally(&self) -> Tally {
        tally(&self.items)
    }

    /// The closing table.
    fn summary(&self, elapsed: Duration, interrupted: bool) -> String {
        use std::fmt::Write as _;
        let tally = self.tally();
        let total = self.items.len();
        let mut out = String::new();
        let _ = writeln!(out, "\nboxer map: {} -> {}", self.args.input, self.args.output);
        let _ = writeln!(out, "  items    {total}");
        let _ = writeln!(out, "  done     {}", tally.done);
        let _ = writeln!(out, "  failed   {}", tally.failed);
        if interrupted {
            let _ = writeln!(out, "  not run  {} (interrupted)", total - tally.done - tally.failed);
        }
        let _ = writeln!(out, "  retried  {} item(s), {} retries", tally.retried_items, tally.retries);
        let times: Vec<f64> =
            self.items.iter().filter(|i| i.outcome == Some(Outcome::Done)).map(|i| i.seconds).collect();
        let (mean, max) = if times.is_empty() {
            (0.0, 0.0)
        } else {
            (times.iter().sum::<f64>() / times.len() as f64, times.iter().copied().fold(0.0, f64::max))
        };
        let _ = writeln!(
            out,
            "  time     {:.1} s ({} at a time; an item took {mean:.1} s on average, {max:.1} s at most)",
            elapsed.as_secs_f64(),
            self.args.concurrency
        );
        for line in self.provider.summary() {
            let _ = writeln!(out, "  {line}");
        }
        for item in self.items.iter().filter(|i| matches!(i.outcome, Some(Outcome::Failed(_)))) {
            let _ = writeln!(out, "  failed: {}: {}", item.key, item.why);
        }
        out
    }
}

/// The last lines of each running node's output, from the watch session.
#[derive(Default)]
struct Output {
    lines: HashMap<String, VecDeque<String>>,
    /// Nodes whose exit the rendezvous announced (their output is complete).
    exited: std::collections::HashSet<String>,
}

impl Output {
    fn keep(&mut self, item: FeedItem) {
        match item {
            FeedItem::Message(ServerMessage::Logs { node, lines }) => {
                let kept = self.lines.entry(node).or_default();
                for line in lines.into_iter().filter(|l| !l.text.trim().is_empty()) {
                    kept.push_back(line.text);
                    if kept.len() > KEPT_LINES {
                        kept.pop_front();
                    }
                }
            }
            FeedItem::Message(ServerMessage::Exited { node, .. }) => {
                self.exited.insert(node);
            }
            _ => {}
        }
    }

    /// Waits a moment for `node`'s output to be complete.
    async fn settle(&mut self, feed: &mut mpsc::Receiver<FeedItem>, node: &str) {
        let deadline = tokio::time::Instant::now() + OUTPUT_SETTLE;
        while !self.exited.contains(node) {
            match tokio::time::timeout_at(deadline, feed.recv()).await {
                Ok(Some(item)) => self.keep(item),
                _ => return,
            }
        }
    }

    /// `node`'s kept lines, forgotten here.
    fn take(&mut self, node: &str) -> Vec<String> {
        self.exited.remove(node);
        self.lines.remove(node).map(Vec::from).unwrap_or_default()
    }
}

/// The counts over `items`.
fn tally(items: &[Item]) -> Tally {
    let mut t = Tally::default();
    for item in items {
        match item.outcome {
            Some(Outcome::Done) => t.done += 1,
            Some(Outcome::Failed(_)) => t.failed += 1,
            None => {}
        }
        if item.attempts > 1 {
            t.retried_items += 1;
            t.retries += item.attempts - 1;
        }
    }
    t
}

/// Why an attempt failed, in a few words and its last line of output.
fn why(exit: &NodeExit) -> String {
    let what = match exit.code {
        _ if exit.failed_to_start => "the node did not start".to_owned(),
        EXIT_NO_INPUT => "the input could not be downloaded".to_owned(),
        EXIT_UPLOAD => "the results could not be uploaded".to_owned(),
        EXIT_NOT_STARTED => "the command could not be started".to_owned(),
        code => format!("exit code {code}"),
    };
    let last = exit.notes.iter().chain(exit.detail.iter()).rfind(|l| !l.trim().is_empty());
    match last {
        Some(line) => format!("{what}; {}", line.trim()),
        None => what,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(attempts: u32, outcome: Option<Outcome>) -> Item {
        Item { key: "k".into(), file: None, attempts, started: None, seconds: 0.0, outcome, why: String::new() }
    }

    #[test]
    fn the_tally_counts_retries_per_item_and_in_all() {
        let items = [
            item(1, Some(Outcome::Done)),
            item(2, Some(Outcome::Done)),
            item(3, Some(Outcome::Failed(3))),
            item(0, None),
        ];
        assert_eq!(tally(&items), Tally { done: 2, failed: 1, retried_items: 2, retries: 3 });
    }

    #[test]
    fn local_inputs_are_keyed_below_their_directory_or_pattern() {
        let dir = std::env::temp_dir().join(format!("boxer-map-inputs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("d/sub")).unwrap();
        for f in ["d/b.csv", "d/a.txt", "d/sub/c.csv"] {
            std::fs::write(dir.join(f), f).unwrap();
        }
        let keys = |spec: &str| local_inputs(spec).unwrap().into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        let d = dir.join("d").display().to_string();
        assert_eq!(keys(&d), ["a.txt", "b.csv", "sub/c.csv"]);
        assert_eq!(keys(&format!("{d}/b.csv")), ["b.csv"]);
        assert_eq!(keys(&format!("{d}/*/*.csv")), ["sub/c.csv"]);
        assert_eq!(keys(&format!("{d}/[ab].*")), ["a.txt", "b.csv"]);
        let (_, file) = &local_inputs(&format!("{d}/a.txt")).unwrap()[0];
        assert!(file.is_absolute());
        let e = local_inputs(&format!("{d}/*.none")).unwrap_err().to_string();
        assert!(e.contains("no files there"), "{e}");
        let e = local_inputs(&format!("{d}/[")).unwrap_err().to_string();
        assert!(e.contains("not a valid pattern"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failure_says_which_step_failed() {
        let exit = |code, detail: &[&str]| NodeExit {
            node: "item-0".into(),
            code,
            notes: vec![],
            detail: detail.iter().map(|s| s.to_string()).collect(),
            failed_to_start: false,
            instance: 0,
        };
        assert_eq!(why(&exit(EXIT_NO_INPUT, &[])), "the input could not be downloaded");
        assert_eq!(why(&exit(3, &["x", "boom", " "])), "exit code 3; boom");
        assert!(why(&NodeExit::failed("item-0", "throttled".into())).starts_with("the node did not start; throttled"));
    }
}
