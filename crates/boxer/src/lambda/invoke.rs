//! The Lambda provider: every node of a cluster is one RequestResponse
//! invocation of the cluster's function (deployed by `boxer deploy`). The
//! invocation carries the node's [`NodeEvent`]; it lasts as long as the node
//! and its answer is the node's [`NodeReport`] (or a function error saying
//! why the node never ran its program).
//!
//! Invoke is called with the SDK's retries off: a retried invoke after a
//! timeout would start a second copy of a node that may still be running.
//! The one failure that is safe to retry is throttling
//! (`TooManyRequestsException`): Lambda refused to start the node, so it is
//! retried with back-off. Nodes are stopped through the rendezvous (the
//! cluster is deleted, every runtime stops its program and returns): there
//! is no process here to signal.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_lambda::config::retry::RetryConfig;
use aws_sdk_lambda::config::timeout::TimeoutConfig;
use aws_sdk_lambda::error::SdkError;
use aws_sdk_lambda::operation::invoke::InvokeOutput;
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{InvocationType, LogType};
use base64::Engine;
use boxer_proto::lambda::{DEFAULT_GRACE_SECS, EVENT_VERSION, ErrorBody, HostFacts, NodeEvent, NodeReport, StopCause};
use tokio::sync::mpsc;

use super::aws::AwsArgs;
use crate::provider::{Join, NodeExit, Provider};
use crate::spec::{Service, Spec};

/// Lambda's price per GB-second of x86_64 compute (us-east-1, first tier,
/// 2024-2026 price list). Overridable with `--price-per-gb-second`.
pub const PRICE_X86_64_PER_GB_SECOND: f64 = 0.000_016_666_7;
/// The same for arm64 (Graviton): 20% less.
pub const PRICE_ARM64_PER_GB_SECOND: f64 = 0.000_013_333_4;
/// Price of one request ($0.20 per million).
pub const PRICE_PER_REQUEST: f64 = 0.000_000_2;

/// First wait after a throttled invoke. Lambda's burst limit refills
/// continuously (1,000 new instances per 10 s per function since 2023), so a
/// short first wait usually succeeds.
const THROTTLE_FIRST_WAIT: Duration = Duration::from_millis(100);
/// Longest wait between throttled retries.
const THROTTLE_MAX_WAIT: Duration = Duration::from_secs(5);
/// How long one node keeps retrying throttled invokes before it counts as
/// failed: long enough to ride out an account's concurrency limit being
/// reached by a cluster that just ended, short enough that a misconfigured
/// reserved concurrency of 0 is reported within minutes.
const THROTTLE_GIVE_UP: Duration = Duration::from_secs(300);

/// Time beyond the function's timeout that an invoke may take before the
/// client gives up on it: the runtime answers before its deadline, so this
/// only covers the network and Lambda's own bookkeeping.
const INVOKE_SLACK: Duration = Duration::from_secs(60);

/// Time a node gets, beyond its program's grace, to ship its output, leave
/// the cluster and answer its invocation once the cluster is deleted.
const STOP_SLACK: Duration = Duration::from_secs(15);

/// Options of the Lambda provider (`boxer up --provider lambda`).
#[derive(Debug, Clone)]
pub struct LambdaOptions {
    /// Region, profile, endpoint.
    pub aws: AwsArgs,
    /// The function (default: the spec's, see [`super::function_name`]).
    pub function: Option<String>,
    /// Price per GB-second for the cost estimate (default: Lambda's list
    /// price for the function's architecture).
    pub price_per_gb_second: Option<f64>,
}

/// The function as deployed: what the events and the cost need.
#[derive(Debug, Clone)]
struct Function {
    name: String,
    memory_mb: u32,
    timeout: Duration,
    price_per_gb_second: f64,
}

/// What the invocations have done so far, for progress and the summary.
#[derive(Debug, Default)]
struct Tally {
    /// Invokes sent and not throttled.
    invoked: usize,
    /// Throttled invokes (each retried).
    throttled: usize,
    /// Invocations that returned, with their billed (or measured) duration.
    billed: BTreeMap<String, Billed>,
    /// What the runtimes found about their hosts, distinct descriptions
    /// with the nodes that reported each.
    hosts: BTreeMap<String, Vec<String>>,
}

impl Tally {
    /// Counts one returned invocation of `node`. A node invoked again
    /// (restarted, replaced before its deadline) is counted again, as
    /// `node (2)`, `node (3)`: each invocation is billed.
    fn add_billed(&mut self, node: &str, billed: Billed) {
        let mut key = node.to_owned();
        let mut k = 1;
        while self.billed.contains_key(&key) {
            k += 1;
            key = format!("{node} ({k})");
        }
        self.billed.insert(key, billed);
    }
}

/// A node's billed time.
#[derive(Debug, Clone, Copy)]
struct Billed {
    duration: Duration,
    /// From Lambda's REPORT line (else measured here, an estimate).
    reported: bool,
}

/// Runs nodes as invocations of one Lambda function.
#[derive(Debug)]
pub struct LambdaProvider {
    client: aws_sdk_lambda::Client,
    function: Function,
    workdir: Option<String>,
    running: usize,
    /// Invocations sent so far: the number of the next is one more
    /// ([`NodeExit::instance`]).
    launches: u64,
    total: usize,
    /// Where each node's answer is kept (`<state>/lambda/reports`).
    reports: PathBuf,
    tally: Arc<Mutex<Tally>>,
    exits: mpsc::UnboundedSender<NodeExit>,
}

impl LambdaProvider {
    /// Looks the function up (its memory, timeout and architecture) and
    /// prepares an invoke client; node ends are reported on the returned
    /// channel.
    /// Each node's answer is kept under `state_dir/lambda/reports`.
    pub async fn new(
        options: LambdaOptions,
        spec: &Spec,
        state_dir: &Path,
    ) -> anyhow::Result<(Self, mpsc::UnboundedReceiver<NodeExit>)> {
        let name = options.function.clone().unwrap_or_else(|| super::function_name(spec));
        super::validate_function_name(&name).map_err(|e| anyhow::anyhow!("--function: {e}"))?;
        for s in spec.services.iter().filter(|s| Some(s.workdir.as_path()) != spec.path.parent()) {
            eprintln!(
                "note: services.{}.workdir is ignored on Lambda: programs start in the function's task root (or a fresh directory under /tmp)",
                s.name
            );
        }
        let sdk = options.aws.checked_config().await?;
        let control = aws_sdk_lambda::Client::new(&sdk);
        let config = control.get_function_configuration().function_name(&name).send().await.map_err(|e| {
            let not_found = e.as_service_error().is_some_and(|s| s.is_resource_not_found_exception());
            if not_found {
                anyhow::anyhow!(
                    "Lambda function {name:?} does not exist: deploy it first with `boxer deploy {}`",
                    spec.path.display()
                )
            } else {
                anyhow::anyhow!("looking up Lambda function {name:?}: {}", super::aws::describe(&e))
            }
        })?;
        let memory_mb = config.memory_size().unwrap_or(128).max(128) as u32;
        let timeout = Duration::from_secs(config.timeout().unwrap_or(3).max(1) as u64);
        let arm = config.architectures().contains(&aws_sdk_lambda::types::Architecture::Arm64);
        let price = options.price_per_gb_second.unwrap_or(if arm {
            PRICE_ARM64_PER_GB_SECOND
        } else {
            PRICE_X86_64_PER_GB_SECOND
        });
        if let Some(state) = config.state()
            && state.as_str() != "Active"
        {
            tracing::warn!("Lambda function {name} is in state {state:?}; invocations may fail");
        }
        // Retries off (a retried invoke could start a node twice; throttling
        // is retried here), and patience for a node that lives as long as
        // the function's timeout.
        let invoke_config = aws_sdk_lambda::config::Builder::from(&sdk)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .read_timeout(timeout + INVOKE_SLACK)
                    .operation_timeout(timeout + INVOKE_SLACK)
                    .build(),
            )
            .build();
        let reports = state_dir.join("lambda").join("reports");
        let _ = std::fs::remove_dir_all(&reports);
        std::fs::create_dir_all(&reports).with_context(|| format!("creating {}", reports.display()))?;
        let (exits, rx) = mpsc::unbounded_channel();
        let workdir = spec.lambda.files.as_ref().map(|_| ".".to_owned());
        let provider = Self {
            client: aws_sdk_lambda::Client::from_conf(invoke_config),
            function: Function { name, memory_mb, timeout, price_per_gb_second: price },
            workdir,
            running: 0,
            launches: 0,
            total: spec.node_count(),
            reports,
            tally: Arc::default(),
            exits,
        };
        Ok((provider, rx))
    }

    /// The function's timeout: the longest any node can run.
    pub fn function_timeout(&self) -> Duration {
        self.function.timeout
    }

    /// The event that starts replica `index` of `service`.
    fn event(&self, join: &Join, service: &Service, index: u32, takes_over: bool) -> NodeEvent {
        NodeEvent {
            version: EVENT_VERSION,
            rendezvous: join.rendezvous.to_string(),
            fingerprint: join.fingerprint.clone(),
            cluster: join.cluster.clone(),
            token: join.token.clone(),
            service: service.name.clone(),
            index,
            command: service.command.clone(),
            env: crate::provider::node_env(service, index),
            wait_for: service.wait_for.iter().map(|(name, port)| format!("{name}:{port}")).collect(),
            wait_timeout_secs: service.wait_timeout.map(|t| t.as_secs()),
            expose: service.expose.clone(),
            forward: service.forward.iter().map(|f| format!("{}={}:{}", f.listen, f.target, f.port)).collect(),
            workdir: self.workdir.clone(),
            grace_secs: grace_for(self.function.timeout),
            timeout_secs: Some(self.function.timeout.as_secs()),
            takes_over,
        }
    }

    /// Invokes the function with `event` in the background; the end comes
    /// on the exits channel, with the instance number returned here.
    fn invoke(&mut self, event: NodeEvent) -> anyhow::Result<u64> {
        let payload = serde_json::to_vec(&event).context("encoding the node's event")?;
        let node = event.node_name();
        self.launches += 1;
        let instance = self.launches;
        let (client, function, tally, exits) =
            (self.client.clone(), self.function.name.clone(), self.tally.clone(), self.exits.clone());
        let report_file = self.reports.join(format!("{node}.json"));
        self.running += 1;
        let span = tracing::info_span!("invoke", %node, %function);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let started = Instant::now();
                let result = invoke_until_started(&client, &function, payload, &tally).await;
                let elapsed = started.elapsed();
                let exit = match result {
                    Ok(out) => {
                        let billed = out.log_result().and_then(billed_from_log);
                        let billed = Billed { duration: billed.unwrap_or(elapsed), reported: billed.is_some() };
                        tally.lock().expect("tally").add_billed(&node, billed);
                        {
                            let payload = out.payload().map(Blob::as_ref).unwrap_or_default();
                            if let Err(e) = std::fs::write(&report_file, payload) {
                                tracing::warn!("keeping {}: {e}", report_file.display());
                            }
                            if out.function_error().is_none()
                                && let Ok(report) = serde_json::from_slice::<NodeReport>(payload)
                            {
                                let host = describe_host(&report.host);
                                tally.lock().expect("tally").hosts.entry(host).or_default().push(node.clone());
                            }
                            interpret(&node, out.function_error(), payload)
                        }
                    }
                    Err(why) => NodeExit::failed(&node, why),
                };
                let exit = NodeExit { instance, ..exit };
                tracing::debug!(code = exit.code, "invocation returned after {elapsed:?}");
                let _ = exits.send(exit);
            },
            span,
        ));
        Ok(instance)
    }
}

/// The program's grace: the usual one, but at most a quarter of the
/// function's timeout so that a short function still runs its program
/// most of the time.
fn grace_for(timeout: Duration) -> u64 {
    DEFAULT_GRACE_SECS.min(timeout.as_secs() / 4).max(1)
}

impl Provider for LambdaProvider {
    fn kind(&self) -> &'static str {
        "lambda"
    }

    async fn launch(&mut self, join: &Join, service: &Service, index: u32) -> anyhow::Result<()> {
        self.invoke(self.event(join, service, index, false)).map(|_| ())
    }

    async fn launch_takeover(&mut self, join: &Join, service: &Service, index: u32) -> anyhow::Result<u64> {
        self.invoke(self.event(join, service, index, true))
    }

    fn lifetime(&self) -> Option<Duration> {
        Some(self.function.timeout)
    }

    fn exited(&mut self, _node: &str) {
        self.running = self.running.saturating_sub(1);
    }

    fn running(&self) -> usize {
        self.running
    }

    fn stop_all(&mut self, force: bool) {
        if force && self.running > 0 {
            eprintln!(
                "{} invocation(s) still running; they end at the function's timeout ({:?}) at the latest",
                self.running, self.function.timeout
            );
        }
    }

    fn stop_node(&mut self, node: &str) -> anyhow::Result<()> {
        anyhow::bail!("{node} has no process here to signal: a Lambda node is told to stop through the rendezvous")
    }

    fn stops_through_rendezvous(&self) -> bool {
        true
    }

    fn stop_grace(&self) -> Duration {
        Duration::from_secs(grace_for(self.function.timeout)) + STOP_SLACK
    }

    fn runtime_log(&self, _node: &str) -> String {
        format!("CloudWatch log group /aws/lambda/{}", self.function.name)
    }

    fn progress(&self) -> String {
        let tally = self.tally.lock().expect("tally");
        let mut s = format!("({}/{} invoked", tally.invoked, self.total);
        if tally.throttled > 0 {
            s.push_str(&format!(", {} throttled and retried", tally.throttled));
        }
        s.push(')');
        s
    }

    fn summary(&self) -> Vec<String> {
        let tally = self.tally.lock().expect("tally");
        summary_lines(&self.function, &tally)
    }
}

/// Invokes until Lambda accepts the invocation (retrying throttles with
/// back-off), then waits for its answer. `Err` is a reason for people.
async fn invoke_until_started(
    client: &aws_sdk_lambda::Client,
    function: &str,
    payload: Vec<u8>,
    tally: &Mutex<Tally>,
) -> Result<InvokeOutput, String> {
    let started = Instant::now();
    let mut wait = THROTTLE_FIRST_WAIT;
    loop {
        tally.lock().expect("tally").invoked += 1;
        let result = client
            .invoke()
            .function_name(function)
            .invocation_type(InvocationType::RequestResponse)
            .log_type(LogType::Tail)
            .payload(Blob::new(payload.clone()))
            .send()
            .await;
        match result {
            Ok(out) => return Ok(out),
            Err(SdkError::ServiceError(e)) if e.err().is_too_many_requests_exception() => {
                {
                    let mut tally = tally.lock().expect("tally");
                    tally.invoked -= 1;
                    tally.throttled += 1;
                }
                if started.elapsed() > THROTTLE_GIVE_UP {
                    return Err(format!(
                        "invoke of {function} throttled for {THROTTLE_GIVE_UP:?} (TooManyRequestsException): check the function's reserved concurrency and the account's concurrency limit"
                    ));
                }
                tracing::debug!("throttled; retrying in {wait:?}");
                tokio::time::sleep(jittered(wait)).await;
                wait = (wait * 2).min(THROTTLE_MAX_WAIT);
            }
            Err(e) => return Err(format!("invoke of {function} failed: {}", super::aws::describe(&e))),
        }
    }
}

/// `wait` plus up to 50% so that throttled nodes do not retry in lockstep.
fn jittered(wait: Duration) -> Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    wait + wait.mul_f64(f64::from(nanos % 1000) / 2000.0)
}

/// What an invocation's answer means for its node.
fn interpret(node: &str, function_error: Option<&str>, payload: &[u8]) -> NodeExit {
    let text = || String::from_utf8_lossy(payload).trim().to_owned();
    if let Some(kind) = function_error {
        let why = match serde_json::from_slice::<ErrorBody>(payload) {
            Ok(e) if !e.error_type.is_empty() || !e.error_message.is_empty() => {
                format!("{}: {}", e.error_type, e.error_message)
            }
            _ => format!("{kind} error: {}", text()),
        };
        return NodeExit::failed(node, format!("failed: {why}"));
    }
    match serde_json::from_slice::<NodeReport>(payload) {
        Ok(report) => {
            let mut detail =
                vec![format!("invocation ended: exit code {} after {} ms", report.exit_code, report.run_ms)];
            let mut notes = vec![];
            match report.stopped {
                Some(StopCause::Deadline) => notes.push(format!(
                    "stopped before the function's deadline{}",
                    if report.killed_after_grace {
                        "; it ignored SIGTERM and was killed after the grace period"
                    } else {
                        ""
                    }
                )),
                Some(StopCause::ClusterStopped) => detail.push("stopped with the cluster".into()),
                Some(StopCause::Terminated) => notes.push("stopped: Lambda shut the instance down".into()),
                Some(StopCause::Requested) => detail.push("stopped by boxer scale".into()),
                None => {}
            }
            detail.extend(report.last_output.iter().rev().take(3).rev().cloned());
            NodeExit {
                node: node.to_owned(),
                code: report.exit_code,
                notes,
                detail,
                failed_to_start: false,
                instance: 0,
            }
        }
        Err(e) => NodeExit::failed(node, format!("the function's answer is not a Boxer node report ({e}): {}", text())),
    }
}

/// One line on what a runtime found about its host: what a first run on a
/// new kind of host teaches (kernel, refused calls, UDP offload, limits).
fn describe_host(h: &HostFacts) -> String {
    let mut parts = vec![format!("kernel {}", if h.kernel.is_empty() { "?" } else { &h.kernel })];
    if let Some(uid) = h.uid {
        parts.push(format!("uid {uid}"));
    }
    if let Some(n) = h.nofile {
        parts.push(format!("nofile {n}"));
    }
    if h.gso_segments.is_some() || h.gro_segments.is_some() {
        let n = |v: Option<usize>| v.map_or_else(|| "?".to_owned(), |n| n.to_string());
        parts.push(format!("GSO {} GRO {}", n(h.gso_segments), n(h.gro_segments)));
    }
    parts.push(if h.refused.is_empty() {
        "nothing refused".into()
    } else {
        format!("refused: {}", h.refused.join(", "))
    });
    parts.join("; ")
}

/// Lambda's billed duration from the base64 log tail of an invoke
/// (`REPORT RequestId: ... Billed Duration: 1234 ms ...`).
fn billed_from_log(log_base64: &str) -> Option<Duration> {
    let log = base64::engine::general_purpose::STANDARD.decode(log_base64.trim()).ok()?;
    let log = String::from_utf8_lossy(&log);
    let report = log.lines().rev().find(|l| l.starts_with("REPORT"))?;
    let (_, rest) = report.split_once("Billed Duration:")?;
    let ms: u64 = rest.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_millis(ms))
}

/// Up to this many invocations get a line each in the summary; more (a
/// `boxer map` job, a big cluster) get one line with the range.
const SUMMARY_NODE_LINES: usize = 12;

/// Node names shown per kind of host in the summary.
const SUMMARY_HOST_NAMES: usize = 6;

/// The closing summary: billed time per node, GB-seconds, the cost estimate.
fn summary_lines(function: &Function, tally: &Tally) -> Vec<String> {
    if tally.billed.is_empty() {
        return vec![];
    }
    let gb = f64::from(function.memory_mb) / 1024.0;
    let seconds: f64 = tally.billed.values().map(|b| b.duration.as_secs_f64()).sum();
    let estimated = tally.billed.values().any(|b| !b.reported);
    // Throttled invokes are not billed: Lambda never ran them.
    let requests = tally.billed.len();
    let cost = seconds * gb * function.price_per_gb_second + requests as f64 * PRICE_PER_REQUEST;
    let mut lines = vec![format!("Lambda function {} ({} MB):", function.name, function.memory_mb)];
    if tally.billed.len() <= SUMMARY_NODE_LINES {
        for (node, b) in &tally.billed {
            lines.push(format!(
                "  {node:<16} {}{:.1} s",
                if b.reported { "billed " } else { "~" },
                b.duration.as_secs_f64()
            ));
        }
    } else {
        let durations = tally.billed.values().map(|b| b.duration.as_secs_f64());
        let (least, most) = durations.fold((f64::MAX, 0.0f64), |(lo, hi), d| (lo.min(d), hi.max(d)));
        lines.push(format!(
            "  {} invocations, {}{least:.1} to {most:.1} s each",
            tally.billed.len(),
            if estimated { "~" } else { "billed " }
        ));
    }
    for (host, nodes) in &tally.hosts {
        let named = nodes.iter().take(SUMMARY_HOST_NAMES).cloned().collect::<Vec<_>>().join(", ");
        let more = nodes.len().saturating_sub(SUMMARY_HOST_NAMES);
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        lines.push(format!("  host ({named}{more}): {host}"));
    }
    lines.push(format!(
        "  total {}{:.1} GB-s, {} requests: ~${cost:.6} at ${}/GB-s{}",
        if estimated { "~" } else { "" },
        seconds * gb,
        requests,
        function.price_per_gb_second,
        if estimated { " (durations measured here: Lambda reported none)" } else { "" }
    ));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_become_exits() {
        let report = NodeReport {
            node: "db-0".into(),
            exit_code: 137,
            run_ms: 5000,
            stopped: Some(StopCause::Deadline),
            killed_after_grace: true,
            last_output: vec!["a".into(), "b".into(), "c".into(), "d".into()],
            host: Default::default(),
        };
        let exit = interpret("db-0", None, &serde_json::to_vec(&report).unwrap());
        assert_eq!((exit.code, exit.failed_to_start), (137, false));
        assert!(exit.notes.iter().any(|l| l.contains("killed after the grace period")), "{:?}", exit.notes);
        assert_eq!(exit.detail.last().map(String::as_str), Some("d"));
        assert!(!exit.detail.iter().any(|l| l == "a"));
    }

    #[test]
    fn function_errors_are_failures_with_their_reason() {
        let body = br#"{"errorType":"Boxer.JoinRefused","errorMessage":"wrong join token for cluster demo"}"#;
        let exit = interpret("db-0", Some("Unhandled"), body);
        assert_eq!((exit.code, exit.failed_to_start), (1, true));
        assert_eq!(exit.detail, vec!["failed: Boxer.JoinRefused: wrong join token for cluster demo".to_owned()]);
        let exit = interpret("db-0", Some("Unhandled"), b"Task timed out after 3.00 seconds");
        assert!(exit.detail[0].contains("Unhandled error: Task timed out"), "{:?}", exit.detail);
        let exit = interpret("db-0", None, b"{\"statusCode\":200}");
        assert!(exit.failed_to_start && exit.detail[0].contains("not a Boxer node report"), "{:?}", exit.detail);
    }

    #[test]
    fn billed_duration_from_the_log_tail() {
        let log = "START RequestId: 1\nhello\nEND RequestId: 1\nREPORT RequestId: 1\tDuration: 1203.35 ms\tBilled Duration: 1204 ms\tMemory Size: 1769 MB\n";
        let b64 = base64::engine::general_purpose::STANDARD.encode(log);
        assert_eq!(billed_from_log(&b64), Some(Duration::from_millis(1204)));
        assert_eq!(billed_from_log(&base64::engine::general_purpose::STANDARD.encode("no report")), None);
        assert_eq!(billed_from_log("%%%not base64"), None);
    }

    #[test]
    fn cost_summary() {
        let function = Function {
            name: "boxer-x".into(),
            memory_mb: 2048,
            timeout: Duration::from_secs(900),
            price_per_gb_second: 0.00001,
        };
        let mut tally = Tally::default();
        tally.billed.insert("a-0".into(), Billed { duration: Duration::from_secs(10), reported: true });
        tally.billed.insert("b-0".into(), Billed { duration: Duration::from_secs(5), reported: true });
        let lines = summary_lines(&function, &tally);
        // 15 s x 2 GB x 0.00001 + 2 requests x 0.0000002
        assert!(lines.last().unwrap().contains("30.0 GB-s, 2 requests: ~$0.000300"), "{lines:?}");
        assert!(lines[1].contains("billed 10.0 s"), "{lines:?}");
    }

    #[test]
    fn grace_fits_short_functions() {
        assert_eq!(grace_for(Duration::from_secs(900)), DEFAULT_GRACE_SECS);
        assert_eq!(grace_for(Duration::from_secs(8)), 2);
        assert_eq!(grace_for(Duration::from_secs(1)), 1);
    }

    #[test]
    fn jitter_stays_within_half() {
        let w = Duration::from_millis(100);
        let j = jittered(w);
        assert!(j >= w && j <= w + w / 2, "{j:?}");
    }
}
