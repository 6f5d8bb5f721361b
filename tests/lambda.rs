//! Boxer on Lambda, end to end in the Lambda lab (see
//! `support/lambdalab.rs`): the real `boxer deploy` against moto's Lambda
//! control plane, the real `boxer up --provider lambda` invoking through the
//! cargo-lambda emulator, and every node a real `boxer-runtime` built for
//! Lambda's glibc, unpacked from the uploaded zip, running as a custom
//! runtime behind its own NAT, non-root, with 1024 fds and Lambda's syscall
//! refusals. One lab for the whole file (its start-up is the slow part), so
//! the cases run in sequence in one test.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use boxer_e2e::lambdalab::LambdaLab;
use boxer_e2e::*;

isolate_this_test_binary!();

/// Functions the lab's emulator routes (one per cluster deployed below).
const FUNCTIONS: [&str; 13] = [
    "boxer-redis-bench",
    "boxer-lambda-scale",
    "boxer-lambda-replace",
    "boxer-map",
    "boxer-lambda-trigger",
    "boxer-bench",
    "boxer-lambda-hybrid",
    "boxer-lambda-udp",
    "boxer-lambda-fail",
    "boxer-lambda-burst",
    "boxer-lambda-deadline",
    "boxer-lambda-down",
    "boxer-lambda-walled",
];

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(name).join("boxer.toml")
}

/// Writes a spec into the lab's directory.
fn spec(lab: &LambdaLab, name: &str, text: &str) -> PathBuf {
    let path = lab.dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write spec");
    path
}

fn deploy(lab: &LambdaLab, spec: &Path, cluster: &str, extra: &[&str]) {
    let (code, out, err) = lab.deploy(spec, cluster, extra).expect("boxer deploy runs");
    assert_eq!(code, 0, "boxer deploy of {} failed:\n{out}\n{err}\n{}", spec.display(), lab.logs());
}

fn up(lab: &LambdaLab, spec: &Path) -> (i32, String, String) {
    let flags = lab.up_flags();
    let mut args: Vec<&str> = vec!["up", spec.to_str().expect("utf-8 path")];
    args.extend(flags.iter().map(String::as_str));
    lab.run_boxer(&args).expect("boxer up runs")
}

/// Starts `boxer up` of `spec` in the lab without waiting for it; its
/// stdout goes to `<name>-up.out` (returned) and its stderr to
/// `<name>-up.log` (the [`Proc`]'s).
fn up_in_background(lab: &LambdaLab, spec: &Path, name: &str) -> (Proc, PathBuf) {
    let flags = lab.up_flags();
    let mut args: Vec<&str> = vec!["up", spec.to_str().expect("utf-8")];
    args.extend(flags.iter().map(String::as_str));
    let mut cmd = lab.boxer(&args);
    let (out, log) = (lab.dir.path().join(format!("{name}-up.out")), lab.dir.path().join(format!("{name}-up.log")));
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out).expect("file"))
        .stderr(std::fs::File::create(&log).expect("file"));
    let child = lab.lab.rendezvous().spawn_command_sync(cmd).expect("boxer up starts");
    (Proc { child, name: "boxer up".into(), stderr: log }, out)
}

#[test]
fn lambda_lab() {
    let lab = LambdaLab::start("e2e", &FUNCTIONS).expect("the Lambda lab starts");
    type Case = (&'static str, fn(&LambdaLab));
    let cases: [Case; 13] = [
        ("redis-benchmark across two function instances", redis_bench),
        ("boxer scale grows and shrinks a cluster of functions", scale),
        ("a node is replaced before its deadline, same name and address", replace_before_deadline),
        ("boxer map over S3 objects, with retries", map),
        ("S3-triggered: new objects invoke the function", trigger),
        ("boxer bench --provider lambda", bench),
        ("a hybrid node started by hand beside functions", hybrid),
        ("overlay UDP between two function instances", udp),
        ("a failing main service and a bad command", failures),
        ("throttled invokes are retried", throttling),
        ("the deadline stops a program that ignores SIGTERM", deadline),
        ("boxer down stops every invocation", down),
        ("a rendezvous the functions cannot reach", walled_off),
    ];
    // BOXER_LAMBDA_CASES=bench,udp runs only the cases whose names contain one of those words.
    let only: Vec<String> =
        std::env::var("BOXER_LAMBDA_CASES").map(|v| v.split(',').map(str::to_owned).collect()).unwrap_or_default();
    for (what, case) in cases {
        if !only.is_empty() && !only.iter().any(|w| what.contains(w.as_str())) {
            continue;
        }
        let started = Instant::now();
        eprintln!("== {what}");
        case(&lab);
        eprintln!("== {what}: ok in {:.1?}", started.elapsed());
    }
}

/// The README's main job on Lambda: deploy, up, status, logs; the packed
/// binaries need no glibc newer than Lambda's.
fn redis_bench(lab: &LambdaLab) {
    let spec = example("redis-bench");
    deploy(lab, &spec, "redis-bench", &[]);
    let task = lab.task_root().expect("function unpacked");
    for file in ["bootstrap", "libboxer_shim.so"] {
        let needed = boxer::lambda::elf::required_glibc(&task.join(file)).expect("reads the ELF file");
        assert!(
            needed.is_some_and(|v| v <= boxer::lambda::elf::LAMBDA_GLIBC),
            "{file} needs glibc {needed:?}, Lambda has {}",
            boxer::lambda::elf::LAMBDA_GLIBC
        );
    }
    let (code, out, err) = up(lab, &spec);
    assert_eq!(code, 0, "boxer up failed:\nstdout:\n{out}\nstderr:\n{err}\n{}", lab.logs());
    assert!(out.contains("bench-0 | SET:") && out.contains("bench-0 | GET:"), "no benchmark output:\n{out}\n{err}");
    assert!(err.contains("GB-s"), "no cost summary:\n{err}");
    // The numbers, for the CI log (a debug build through two lab NATs).
    for line in out.lines().chain(err.lines()) {
        if line.contains("SET:") || line.contains("GET:") || line.contains("joined in") || line.contains("host (") {
            eprintln!("   {line}");
        }
    }

    let (code, status, err) = lab.run_boxer(&["status", "redis-bench"]).expect("boxer status runs");
    assert_eq!(code, 0, "{err}");
    assert!(status.contains("lambda"), "{status}");
    let bench = status.lines().find(|l| l.starts_with("bench-0")).unwrap_or_default();
    assert!(bench.contains("exited 0") && bench.contains("100.96."), "{status}");
    let (code, logs, err) = lab.run_boxer(&["logs", "bench-0", "--cluster", "redis-bench"]).expect("boxer logs");
    assert_eq!(code, 0, "{err}");
    assert!(logs.contains("SET:"), "{logs}");
}

/// The Boxer column of `boxer bench` on functions: the worker is the
/// deployed runtime itself, results come back through the cluster's
/// output, and every row of the paper's table has a number.
fn bench(lab: &LambdaLab) {
    deploy(lab, &example("bench"), "bench", &[]);
    let out_dir = lab.dir.path().join("bench-out");
    let out_arg = out_dir.display().to_string();
    let flags = lab.up_flags();
    // BOXER_LAMBDA_BENCH_ARGS="--seconds 5 --nodes 10,30" for the numbers
    // in docs/benchmarks.md (with BOXER_E2E_RELEASE=1).
    let sizes = std::env::var("BOXER_LAMBDA_BENCH_ARGS").unwrap_or_else(|_| "--quick --seconds 1 --nodes 3,4".into());
    let mut args: Vec<&str> = vec!["bench", "--out", &out_arg];
    args.extend(sizes.split_whitespace());
    args.extend(flags.iter().map(String::as_str));
    let (code, out, err) = lab.run_boxer(&args).expect("boxer bench runs");
    assert_eq!(code, 0, "boxer bench --provider lambda failed:\nstdout:\n{out}\nstderr:\n{err}\n{}", lab.logs());
    for line in out.lines() {
        eprintln!("   {line}");
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("results.json")).expect("results.json")).expect("JSON");
    let r = &json["boxer"]["result"];
    assert!(r.is_object(), "no Boxer result: {}\n{}", json["boxer"], lab.logs());
    assert_eq!(r["errors"].as_array().map(Vec::len), Some(0), "{r}");
    let bulk = r["bulk"].as_array().expect("bulk runs");
    assert_eq!(bulk.len(), 4, "1 and 4 streams, both ways: {r}");
    assert!(bulk.iter().all(|b| b["gbit_s"].as_f64().is_some_and(|g| g > 0.0)), "{r}");
    assert!(r["rtt_us"]["p50"].as_f64().is_some_and(|v| v > 0.0), "{r}");
    assert!(r["known_connect_us"]["samples"].as_u64().is_some_and(|n| n >= 50), "{r}");
    // The server and the fresh peers (2 with --quick), each contacted for the first time.
    assert!(r["first_contact_ms"].as_array().is_some_and(|c| c.len() >= 3), "{r}");
    assert!(r["rss_idle_kib"].as_u64().is_some_and(|k| k > 1024), "the client's runtime memory: {r}");
    let runs = json["elastic"].as_array().expect("elasticity runs");
    assert!(!runs.is_empty(), "{json}");
    for run in runs {
        let n = run["nodes"].as_u64().expect("nodes");
        assert!(run["error"].is_null(), "{run}");
        let joined = run["all_joined_s"].as_f64().expect("all joined");
        let pairs = run["all_pairs_s"].as_f64().expect("all pairs");
        assert!(joined > 0.0 && pairs >= joined, "{run}");
        assert_eq!(run["ready"].as_array().map(|r| r.len() as u64), Some(n), "{run}");
    }
    assert!(
        out.contains("bulk TCP, 1 stream (Gbit/s)") && out.contains("elasticity: seconds from the first invoke"),
        "{out}"
    );
    assert!(out.contains("GB-s"), "no cost lines:\n{out}");
    // Every invocation in the cost: the path phase's and each run's nodes, none counted over another.
    let nodes: u64 = runs.iter().filter_map(|r| r["nodes"].as_u64()).sum();
    let paths = 2 + r["first_contact_ms"].as_array().map_or(0, |c| c.len() as u64 - 1);
    assert!(out.contains(&format!(" {} requests", paths + nodes)), "cost of {} invocations:\n{out}", paths + nodes);
    assert!(out_dir.join("results.svg").exists());
    if std::env::var_os("BOXER_LAB_LOG").is_some() {
        eprintln!("{}", lab.logs());
    }
}

/// Items whose name contains one of these fail their first attempt.
const FAIL_ONCE: [&str; 2] = ["item-07", "item-31"];

/// SCAR's fan-out: 50 objects in the lab's S3, 8 functions at a time, two
/// items failing their first attempt; every result lands in the output
/// bucket and the summary counts the retries. Then an item that always
/// fails makes `boxer map` exit 1 and name it.
fn map(lab: &LambdaLab) {
    deploy(lab, &example("map"), "map", &[]);
    lab.python(&format!(
        "import boto3; c = boto3.client('s3', endpoint_url='{}'); [c.create_bucket(Bucket=b) for b in ('map-in', 'map-out')]",
        LambdaLab::s3_endpoint()
    ))
    .expect("buckets created");
    let inputs = lab.dir.path().join("map-inputs");
    std::fs::create_dir_all(&inputs).expect("inputs dir");
    for i in 0..50 {
        std::fs::write(inputs.join(format!("item-{i:02}.txt")), format!("line of item {i}\n")).expect("input");
    }
    let inputs_arg = inputs.display().to_string();
    let (code, out, err) = lab.run_boxer(&["put", &inputs_arg, "s3://map-in/batch/"]).expect("boxer put runs");
    assert_eq!(code, 0, "boxer put failed:\n{out}\n{err}");
    let script = format!(
        r#"case "$BOXER_INPUT_KEY" in *{}*|*{}*) if [ "$BOXER_ATTEMPT" = 1 ]; then echo "failing once on purpose" >&2; exit 3; fi;; esac
tr a-z A-Z < "$BOXER_INPUT" > "$BOXER_OUTPUT_DIR/$(basename "$BOXER_INPUT" .txt).out""#,
        FAIL_ONCE[0], FAIL_ONCE[1]
    );
    let flags = lab.up_flags();
    let mut args: Vec<&str> = vec!["map", "--input", "s3://map-in/batch/", "--output", "s3://map-out/results/"];
    args.extend(["-n", "8", "--retries", "1", "--function", "boxer-map"]);
    args.extend(flags.iter().map(String::as_str));
    args.extend(["--", "sh", "-c", &script]);
    let started = Instant::now();
    let (code, out, err) = lab.run_boxer(&args).expect("boxer map runs");
    assert_eq!(code, 0, "boxer map failed:\nstdout:\n{out}\nstderr:\n{err}\n{}", lab.logs());
    eprintln!("   50 items, 8 at a time, in {:.1?}", started.elapsed());
    for line in out.lines().filter(|l| !l.starts_with("done")) {
        eprintln!("   {line}");
    }
    for name in FAIL_ONCE {
        let retry = out.lines().find(|l| l.starts_with("retry") && l.contains(name));
        assert!(retry.is_some_and(|l| l.contains("exit code 3")), "no retry of {name}:\n{out}");
        let done = out.lines().find(|l| l.starts_with("done") && l.contains(name));
        assert!(done.is_some_and(|l| l.contains("attempt 2")), "{name} not done on its second attempt:\n{out}");
    }
    assert_eq!(out.lines().filter(|l| l.starts_with("done")).count(), 50, "{out}");
    assert!(out.contains("  done     50") && out.contains("  failed   0"), "{out}");
    assert!(out.contains("  retried  2 item(s), 2 retries"), "{out}");
    assert!(out.contains("GB-s"), "no cost in the summary:\n{out}");
    let results = lab.dir.path().join("map-results");
    let results_arg = results.display().to_string();
    let (code, got, err) = lab.run_boxer(&["get", "s3://map-out/results/", &results_arg]).expect("boxer get runs");
    assert_eq!(code, 0, "boxer get failed:\n{got}\n{err}");
    for i in 0..50 {
        let path = results.join(format!("item-{i:02}.out"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}\n{got}", path.display()));
        assert_eq!(text, format!("LINE OF ITEM {i}\n"));
    }
    assert_eq!(std::fs::read_dir(&results).expect("results").count(), 50, "only the 50 results");

    // An item that fails every attempt: exit 1, named in the summary.
    let (code, out, err) =
        lab.run_boxer(&["put", &format!("{inputs_arg}/item-01.txt"), "s3://map-in/bad/"]).expect("put");
    assert_eq!(code, 0, "{out}\n{err}");
    let mut args: Vec<&str> = vec!["map", "--input", "s3://map-in/bad/", "--output", "s3://map-out/bad/"];
    args.extend(["--retries", "0", "--function", "boxer-map"]);
    args.extend(flags.iter().map(String::as_str));
    args.extend(["--", "sh", "-c", "echo cannot do it >&2; exit 9"]);
    let (code, out, err) = lab.run_boxer(&args).expect("boxer map runs");
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("  failed   1") && out.contains("failed: bad/item-01.txt: exit code 9"), "{out}");
}

/// The harness' stand-in for S3's delivery to Lambda (moto delivers to SQS
/// but cannot invoke a function without Docker): every S3 notification in
/// the queue becomes an invocation of the function through the lab's
/// Lambda endpoint, 4 at a time, until `want` object events were
/// forwarded. Prints one line per invocation.
const FORWARDER: &str = r#"
import boto3, json, sys, time
from concurrent.futures import ThreadPoolExecutor
s3_url, lambda_url, queue, function, want = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
sqs = boto3.client('sqs', endpoint_url=s3_url)
lam = boto3.client('lambda', endpoint_url=lambda_url)
q = sqs.get_queue_url(QueueName=queue)['QueueUrl']
def invoke(body):
    r = lam.invoke(FunctionName=function, Payload=body.encode())
    return r.get('FunctionError'), r['Payload'].read().decode()
forwarded, deadline = [], time.time() + 120
with ThreadPoolExecutor(4) as pool:
    while sum('Records' in json.loads(b) for b in forwarded) < want and time.time() < deadline:
        msgs = sqs.receive_message(QueueUrl=q, MaxNumberOfMessages=10, WaitTimeSeconds=1).get('Messages', [])
        for m in msgs:
            sqs.delete_message(QueueUrl=q, ReceiptHandle=m['ReceiptHandle'])
        bodies = [m['Body'] for m in msgs]
        forwarded += bodies
        for error, payload in pool.map(invoke, bodies):
            print('invoked', error or 'ok', payload)
"#;

/// SCAR's high-throughput path: `boxer deploy` of a spec with `[trigger]`
/// points the input bucket's notification at the function (checked in
/// moto's S3 and the function's policy); 10 files uploaded under the input
/// prefix become 10 invocations with real S3 event notifications (moto's,
/// forwarded by the harness) and 10 results in the output bucket. A file
/// outside the prefix invokes nothing.
fn trigger(lab: &LambdaLab) {
    let s3 = LambdaLab::s3_endpoint();
    lab.python(&format!(
        "import boto3\n\
         c = boto3.client('s3', endpoint_url='{s3}')\n\
         [c.create_bucket(Bucket=b) for b in ('trig-in', 'trig-out')]\n\
         boto3.client('sqs', endpoint_url='{s3}').create_queue(QueueName='trig-events')"
    ))
    .expect("buckets and queue created");
    let spec = spec(
        lab,
        "lambda-trigger",
        r#"
[cluster]
name = "lambda-trigger"

[services.upper]
command = ["sh", "-c", "tr a-z A-Z < \"$BOXER_INPUT\" > \"$BOXER_OUTPUT_DIR/$(basename \"$BOXER_INPUT\" .txt).up\""]

[trigger]
input = "s3://trig-in/new/"
output = "s3://trig-out/up/"
"#,
    );
    let (code, out, err) = lab.deploy(&spec, "lambda-trigger", &[]).expect("boxer deploy runs");
    assert_eq!(code, 0, "boxer deploy failed:\n{out}\n{err}\n{}", lab.logs());
    assert!(out.contains("trigger:   new objects under s3://trig-in/new/ -> boxer-lambda-trigger (upper)"), "{out}");
    // What deploy configured: the bucket's notification and S3's permission.
    let configured = lab
        .python(&format!(
            "import boto3, json\n\
             n = boto3.client('s3', endpoint_url='{s3}').get_bucket_notification_configuration(Bucket='trig-in')\n\
             p = boto3.client('lambda', endpoint_url='{}').get_policy(FunctionName='boxer-lambda-trigger')['Policy']\n\
             print(json.dumps(n.get('LambdaFunctionConfigurations')))\n\
             print(p)",
            LambdaLab::endpoint()
        ))
        .expect("configuration read");
    let mut lines = configured.lines();
    let lambdas: serde_json::Value = serde_json::from_str(lines.next().unwrap_or_default()).expect("JSON");
    let ours = &lambdas[0];
    assert!(
        ours["LambdaFunctionArn"].as_str().is_some_and(|a| a.ends_with(":function:boxer-lambda-trigger")),
        "{lambdas}"
    );
    assert_eq!(ours["Events"], serde_json::json!(["s3:ObjectCreated:*"]), "{lambdas}");
    assert_eq!(ours["Filter"]["Key"]["FilterRules"][0]["Value"], "new/", "{lambdas}");
    let policy = lines.next().unwrap_or_default();
    assert!(policy.contains("s3.amazonaws.com") && policy.contains("arn:aws:s3:::trig-in"), "{policy}");
    // The harness' queue beside it, as moto's delivery path.
    lab.python(&format!(
        "import boto3\n\
         c = boto3.client('s3', endpoint_url='{s3}')\n\
         n = c.get_bucket_notification_configuration(Bucket='trig-in')\n\
         n.pop('ResponseMetadata', None)\n\
         n['QueueConfigurations'] = [{{'QueueArn': 'arn:aws:sqs:us-east-1:123456789012:trig-events', \
             'Events': ['s3:ObjectCreated:*'], 'Filter': {{'Key': {{'FilterRules': [{{'Name': 'prefix', 'Value': 'new/'}}]}}}}}}]\n\
         c.put_bucket_notification_configuration(Bucket='trig-in', NotificationConfiguration=n)"
    ))
    .expect("queue notification added");

    let inputs = lab.dir.path().join("trigger-inputs");
    std::fs::create_dir_all(&inputs).expect("inputs dir");
    for i in 0..10 {
        std::fs::write(inputs.join(format!("file {i}.txt")), format!("object {i}\n")).expect("input");
    }
    let inputs_arg = inputs.display().to_string();
    let (code, out, err) = lab.run_boxer(&["put", &inputs_arg, "s3://trig-in/new/"]).expect("boxer put runs");
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) =
        lab.run_boxer(&["put", &format!("{inputs_arg}/file 0.txt"), "s3://trig-in/elsewhere.txt"]).expect("put");
    assert_eq!(code, 0, "{out}\n{err}");
    let started = Instant::now();
    let forwarded = lab
        .python(&format!(
            "import sys; sys.argv = ['fwd', '{s3}', '{}', 'trig-events', 'boxer-lambda-trigger', '10']\n{FORWARDER}",
            LambdaLab::endpoint()
        ))
        .expect("notifications forwarded");
    eprintln!("   10 notifications forwarded and processed in {:.1?}", started.elapsed());
    let invoked: Vec<&str> = forwarded.lines().filter(|l| l.starts_with("invoked")).collect();
    assert!(invoked.iter().all(|l| l.starts_with("invoked ok")), "{forwarded}\n{}", lab.logs());
    let processed = invoked.iter().map(|l| l.matches("s3://trig-in/new/file ").count()).sum::<usize>();
    assert_eq!(processed, 10, "{forwarded}");

    let results = lab.dir.path().join("trigger-results");
    let results_arg = results.display().to_string();
    let (code, got, err) = lab.run_boxer(&["get", "s3://trig-out/up/", &results_arg]).expect("boxer get runs");
    assert_eq!(code, 0, "{got}\n{err}");
    for i in 0..10 {
        let path = results.join(format!("file {i}.up"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}\n{got}", path.display()));
        assert_eq!(text, format!("OBJECT {i}\n"));
    }
    assert_eq!(std::fs::read_dir(&results).expect("results").count(), 10, "{got}");
}

/// `boxer scale` on functions with traffic flowing: web 2 -> 6 adds four
/// invocations that join, resolve under `web` and are reached, while the
/// client's connections to web-0 and web-1 keep carrying pings; shrinking
/// is refused with the reason (a function cannot be stopped alone yet).
fn scale(lab: &LambdaLab) {
    let programs = Path::new(env!("CARGO_MANIFEST_DIR")).join("programs");
    let shared = lab.dir.path().join("scale-shared");
    std::fs::create_dir_all(&shared).expect("shared dir");
    std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o777)).expect("chmod");
    let spec = spec(
        lab,
        "lambda-scale",
        &format!(
            r#"
[cluster]
name = "lambda-scale"

[services.web]
command = ["python3", "{server}"]
replicas = 2

[services.client]
command = ["python3", "{client}", "{shared}"]
main = true
"#,
            server = programs.join("echo_server.py").display(),
            client = programs.join("scale_client.py").display(),
            shared = shared.display()
        ),
    );
    deploy(lab, &spec, "lambda-scale", &[]);
    let (mut up, out) = up_in_background(lab, &spec, "scale");
    let output = || std::fs::read_to_string(&out).unwrap_or_default();
    wait_until(Duration::from_secs(90), "the client to connect", || {
        if output().contains("client: connected to web-0 and web-1") { Ok(()) } else { Err(up.stderr_text()) }
    })
    .expect("cluster running");
    let (code, stdout, err) = lab.run_boxer(&["scale", "--cluster", "lambda-scale", "web=6"]).expect("boxer scale");
    assert_eq!(code, 0, "{stdout}\n{err}\n{}\n{}", up.stderr_text(), lab.logs());
    assert!(stdout.contains("web: 2 -> 6") && stdout.contains("new shape"), "{stdout}");
    std::fs::write(shared.join("check-6"), "").expect("check");
    let checked = shared.join("checked-6");
    let reached = wait_until(Duration::from_secs(60), "the client's check", || {
        std::fs::read_to_string(&checked).map_err(|_| output())
    })
    .expect("checked");
    assert_eq!(reached.split_whitespace().filter(|a| a.starts_with("100.96.")).count(), 6, "{reached}");
    // Down: the three highest invocations are told to stop through the
    // rendezvous (no process to signal) and return; the kept ones go on.
    let shrink_started = Instant::now();
    let (code, stdout, err) = lab.run_boxer(&["scale", "--cluster", "lambda-scale", "web=3"]).expect("boxer scale");
    assert_eq!(code, 0, "{stdout}\n{err}\n{}\n{}", up.stderr_text(), lab.logs());
    assert!(stdout.contains("web: 6 -> 3 (web-3, web-4, web-5 stopping)") && stdout.contains("new shape"), "{stdout}");
    eprintln!("   6 -> 3: the new shape after {:.2?}", shrink_started.elapsed());
    std::fs::write(shared.join("check-3"), "").expect("check");
    let reached = wait_until(Duration::from_secs(60), "the client's second check", || {
        std::fs::read_to_string(shared.join("checked-3")).map_err(|_| output())
    })
    .expect("checked");
    assert_eq!(reached.split_whitespace().count(), 3, "{reached}");
    let (code, status, err) = lab.run_boxer(&["status", "lambda-scale"]).expect("boxer status runs");
    assert_eq!(code, 0, "{err}");
    assert_eq!(status.matches("\nweb-").count(), 3, "{status}");
    std::fs::write(shared.join("done"), "").expect("done");
    let code = up.wait_exit(Duration::from_secs(90)).expect("boxer up ends");
    let text = output();
    assert_eq!(code, Some(0), "{text}\n{}", up.stderr_text());
    assert!(text.contains("client: kept connections unbroken after"), "{text}");
    let notes = up.stderr_text();
    for removed in ["web-3", "web-4", "web-5"] {
        let lines = boxer_e2e::up::output_of(&notes, removed);
        assert!(lines.contains(&"removed (scaled down)"), "{removed}:\n{text}\n{notes}");
    }
}

/// `lambda.replace_before_deadline`: web-0's function times out after 20 s;
/// 13 s before that a second instance is invoked, boots while the first
/// serves, and joins under web-0's name and address once the first was told
/// to stop. The client, reconnecting by name, sees one short outage and one
/// address.
fn replace_before_deadline(lab: &LambdaLab) {
    let programs = Path::new(env!("CARGO_MANIFEST_DIR")).join("programs");
    let spec = spec(
        lab,
        "lambda-replace",
        &format!(
            r#"
[cluster]
name = "lambda-replace"

[lambda]
timeout = 20
replace_before_deadline = 13

[services.web]
command = ["python3", "{server}"]
restart = "always"

[services.client]
command = ["python3", "{client}", "10"]
wait_for = ["web-0:7000"]
main = true
"#,
            server = programs.join("echo_server.py").display(),
            client = programs.join("handover_client.py").display(),
        ),
    );
    deploy(lab, &spec, "lambda-replace", &[]);
    let (code, out, err) = up(lab, &spec);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}\n{}", lab.logs());
    let web = boxer_e2e::up::output_of(&err, "web-0");
    assert!(web.iter().any(|l| l.contains("starting its replacement")), "{err}");
    assert!(web.iter().any(|l| l.starts_with("replaced before its deadline (replacement 1)")), "{err}");
    assert!(!web.iter().any(|l| l.contains("replacing it (restart")), "no restart after a deadline: {err}");
    // The client exits 0 only if it reconnected and web-0 kept its address.
    // It may reconnect twice: a connection made after the old program died
    // but before the old member left reaches the old runtime, which resets it.
    let summary = out.lines().find(|l| l.contains("reconnect(s), longest outage")).unwrap_or_default();
    assert!(summary.contains(" web-0 at 100.96."), "{out}");
    for line in out.lines().chain(err.lines()).filter(|l| l.contains("reconnect") || l.contains("replaced before")) {
        eprintln!("   {line}");
    }
}

/// A hybrid node: `boxer-runtime` started by hand (the line `boxer
/// join-command` prints, run by a shell) on a "VM" of its own behind its
/// own NAT, not a function, joins the functions' cluster; each side reaches
/// the other by name, and the node leaves when the cluster ends.
fn hybrid(lab: &LambdaLab) {
    let spec = spec(
        lab,
        "lambda-hybrid",
        r#"
[cluster]
name = "lambda-hybrid"

[services.web]
command = ["python3", "-m", "http.server", "8000"]

[services.probe]
command = ["sh", "-c", "until curl -sf -o /dev/null http://vm-0:8080/done; do sleep 0.3; done; echo probe reached vm-0"]
wait_for = ["web-0:8000"]
main = true
"#,
    );
    deploy(lab, &spec, "lambda-hybrid", &[]);
    let (mut up, out) = up_in_background(lab, &spec, "hybrid");
    let join_file = lab.state_dir.join("lambda-hybrid").join("join.json");
    wait_until(Duration::from_secs(60), "boxer up to create the cluster", || {
        if join_file.exists() { Ok(()) } else { Err(up.stderr_text()) }
    })
    .expect("cluster created");
    // The VM serves `done` once it has reached web-0: the probe, the main
    // service, ends the cluster only when both directions worked.
    let vm_program = "cd \"$(mktemp -d)\"; python3 -m http.server 8080 & \
                      until curl -sf -o /dev/null http://web-0:8000/; do sleep 0.3; done; \
                      echo vm reached web-0; touch done; wait";
    let (code, line, err) = lab
        .run_boxer(&["join-command", "lambda-hybrid", "--service", "vm", "--", "sh", "-c", vm_program])
        .expect("boxer join-command runs");
    assert_eq!(code, 0, "{line}\n{err}");
    assert!(line.contains("--service vm --index 0") && line.contains("--token "), "{line}");
    // The "VM": a lab device behind a NAT of its own, with this machine's runtime and shim.
    let vm = lab
        .rt
        .block_on(lab.lab.add_node("vm", boxer::lab::NatOptions::new(boxer::lab::NatKind::Moderate)))
        .expect("the VM's device");
    let vm_out = lab.dir.path().join("vm.out");
    let vm_log = lab.dir.path().join("vm.log");
    let mut cmd = std::process::Command::new("sh");
    // exec: the runtime is the process the test holds (and kills on failure).
    // The "VM" has boxer-runtime on its PATH, as the docs ask.
    let path = format!("{}:{}", bin_dir().display(), std::env::var("PATH").unwrap_or_default());
    cmd.args(["-c", &format!("exec {}", line.trim())])
        .env("PATH", path)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&vm_out).expect("file"))
        .stderr(std::fs::File::create(&vm_log).expect("file"));
    let child = vm.spawn_command_sync(cmd).expect("the VM's runtime starts");
    let mut vm_proc = Proc { child, name: "vm-0".into(), stderr: vm_log };
    let code =
        up.wait_exit(Duration::from_secs(90)).unwrap_or_else(|e| panic!("{e:#}\nvm-0:\n{}", vm_proc.stderr_text()));
    let up_out = std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(
        code,
        Some(0),
        "boxer up:\n{up_out}\n{}\nvm-0:\n{}\n{}",
        up.stderr_text(),
        vm_proc.stderr_text(),
        lab.logs()
    );
    assert!(up_out.contains("probe reached vm-0"), "{up_out}");
    // The cluster is deleted: the VM's runtime stops its program and ends.
    let vm_code = vm_proc.wait_exit(Duration::from_secs(30)).expect("vm-0 ends with the cluster");
    let vm_text = std::fs::read_to_string(&vm_out).unwrap_or_default();
    assert!(vm_text.contains("vm reached web-0"), "vm-0 stdout:\n{vm_text}\nstderr:\n{}", vm_proc.stderr_text());
    assert!(vm_code.is_some(), "vm-0 was killed instead of ending: {}", vm_proc.stderr_text());
    // `boxer status` lists the hand-started node beside the spec's.
    let (code, status, err) = lab.run_boxer(&["status", "lambda-hybrid"]).expect("boxer status runs");
    assert_eq!(code, 0, "{err}");
    let vm_line = status.lines().find(|l| l.starts_with("vm-0")).unwrap_or_default();
    assert!(vm_line.contains("100.96."), "vm-0 not in boxer status:\n{status}");
    assert!(status.contains("joined by hand"), "{status}");
}

/// UDP request/reply between two functions: the datagrams carry each
/// sender's overlay address, on Lambda's one non-root user with the control
/// socket in the abstract namespace.
fn udp(lab: &LambdaLab) {
    let files = lab.dir.path().join("udp-files");
    std::fs::create_dir_all(&files).expect("files dir");
    let echo = Path::new(env!("CARGO_MANIFEST_DIR")).join("programs/udp_echo.py");
    std::fs::copy(&echo, files.join("udp_echo.py")).expect("copy udp_echo.py");
    // The node's own address and name as a function sees them: the UDP
    // idiom for "my IP" (connect sends nothing) and the hostname.
    std::fs::write(
        files.join("own.py"),
        "import os, socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.connect(('8.8.8.8', 80))\n\
         print('own', s.getsockname()[0], os.environ['BOXER_OVERLAY_IP'], socket.gethostname())\n",
    )
    .expect("write own.py");
    let spec = spec(
        lab,
        "lambda-udp",
        &format!(
            r#"
[cluster]
name = "lambda-udp"

[lambda]
files = "{files}"

[services.echo]
command = ["python3", "udp_echo.py", "serve", "9000"]

[services.ask]
command = ["sh", "-c", "echo it $(getent hosts echo-0 | cut -d' ' -f1); python3 udp_echo.py ask echo-0 9000 20 1460; python3 own.py"]
wait_for = ["echo-0:9000"]
main = true
"#,
            files = files.display()
        ),
    );
    deploy(lab, &spec, "lambda-udp", &[]);
    let (code, out, err) = up(lab, &spec);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}\n{}", lab.logs());
    let it = out.lines().find_map(|l| l.strip_prefix("ask-0  | it ")).unwrap_or_else(|| panic!("{out}"));
    assert!(out.contains(&format!("reply from {it}:9000")), "{out}");
    assert!(out.contains("echo-0 | from 100.96."), "{out}");
    assert!(out.contains("received 20 bad 0") || out.contains("received 19 bad 0"), "{out}");
    let own = out.lines().find_map(|l| l.strip_prefix("ask-0  | own ")).unwrap_or_else(|| panic!("{out}"));
    let own: Vec<&str> = own.split_whitespace().collect();
    assert!(own.len() == 3 && own[0] == own[1] && own[0].starts_with("100.96.") && own[2] == "ask-0", "{own:?}");
}

/// A main service's exit code is `boxer up`'s; a node whose program cannot
/// start shows the function error on its line.
fn failures(lab: &LambdaLab) {
    let spec = spec(
        lab,
        "lambda-fail",
        r#"
[cluster]
name = "lambda-fail"

[services.bad]
command = ["no-such-program-boxer"]

[services.main]
command = ["sh", "-c", "echo about to fail; sleep 2; exit 7"]
main = true
"#,
    );
    deploy(lab, &spec, "lambda-fail", &[]);
    let (code, out, err) = up(lab, &spec);
    assert_eq!(code, 7, "stdout:\n{out}\nstderr:\n{err}\n{}", lab.logs());
    assert!(out.contains("main-0 | about to fail"), "{out}");
    let bad = err.lines().find(|l| l.starts_with("bad-0") && l.contains("Boxer.BadCommand"));
    assert!(bad.is_some_and(|l| l.contains("no-such-program-boxer")), "no function error on bad-0's line:\n{err}");
}

/// The first invokes are refused with TooManyRequestsException (the nodes
/// never started); they are retried and every node runs.
fn throttling(lab: &LambdaLab) {
    let spec = spec(
        lab,
        "lambda-burst",
        r#"
[cluster]
name = "lambda-burst"

[services.w]
command = ["sh", "-c", "echo worker $(hostname) up"]
replicas = 3
"#,
    );
    deploy(lab, &spec, "lambda-burst", &[]);
    let (throttled_before, ..) = lab.scaler_counts();
    lab.throttle_next(4).expect("throttle");
    let (code, out, err) = up(lab, &spec);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}\n{}", lab.logs());
    for i in 0..3 {
        assert!(out.contains(&format!("w-{i} | worker w-{i} up")), "w-{i} did not run:\n{out}\n{err}");
    }
    let (throttled, ..) = lab.scaler_counts();
    assert_eq!(throttled - throttled_before, 4, "the router throttled a different number of invokes");
}

/// A program that ignores SIGTERM is killed after the grace period, before
/// the function's timeout, and the invocation's result says so.
fn deadline(lab: &LambdaLab) {
    let spec = spec(
        lab,
        "lambda-deadline",
        r#"
[cluster]
name = "lambda-deadline"

[lambda]
timeout = 8

[services.stubborn]
command = ["sh", "-c", "trap '' TERM; echo started; sleep 600"]
"#,
    );
    deploy(lab, &spec, "lambda-deadline", &[]);
    let started = Instant::now();
    let (code, out, err) = up(lab, &spec);
    let took = started.elapsed();
    assert_eq!(code, 137, "stdout:\n{out}\nstderr:\n{err}\n{}", lab.logs());
    assert!(out.contains("stubborn-0 | started"), "{out}");
    assert!(err.contains("killed after the grace period"), "{err}");
    // The function's timeout is 8 s; the node must end before it (plus the
    // time boxer up takes to start and stop around it).
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

/// `boxer down` of a running Lambda cluster: every invocation returns.
fn down(lab: &LambdaLab) {
    let spec = spec(
        lab,
        "lambda-down",
        r#"
[cluster]
name = "lambda-down"

[services.idle]
command = ["sleep", "600"]
replicas = 2
"#,
    );
    deploy(lab, &spec, "lambda-down", &[]);
    let (mut proc, _) = up_in_background(lab, &spec, "down");
    let status_file = lab.state_dir.join("lambda-down").join("status.json");
    wait_until(Duration::from_secs(60), "both nodes to join", || {
        let s = read_status(&status_file)?;
        let running = s["nodes"].as_array().map_or(0, |n| n.iter().filter(|n| n["state"] == "running").count());
        if running == 2 { Ok(()) } else { Err(format!("{s}\n{}", proc.stderr_text())) }
    })
    .expect("cluster up");
    let ended_before: usize = lab.scaler_counts().2.values().sum();
    let (code, out, err) = lab.run_boxer(&["down", "lambda-down"]).expect("boxer down runs");
    assert_eq!(code, 0, "{out}\n{err}");
    let exit = proc.wait_exit(Duration::from_secs(40)).expect("boxer up ends after boxer down");
    assert_eq!(exit, Some(130), "{}", proc.stderr_text());
    let (_, _, ended) = lab.scaler_counts();
    assert_eq!(ended.values().sum::<usize>() - ended_before, 2, "both invocations returned: {ended:?}");
}

/// The rendezvous' UDP port closed to the functions (a missing
/// security-group rule): each node's invocation fails with
/// `Boxer.RendezvousUnreachable`, shown on its line, and `boxer up` fails
/// instead of waiting forever.
fn walled_off(lab: &LambdaLab) {
    let spec = spec(
        lab,
        "lambda-walled",
        r#"
[cluster]
name = "lambda-walled"

[services.lonely]
command = ["true"]
"#,
    );
    deploy(lab, &spec, "lambda-walled", &[]);
    lab.firewall_rendezvous(true).expect("close the rendezvous port");
    let result = up(lab, &spec);
    lab.firewall_rendezvous(false).expect("open the rendezvous port");
    let (code, out, err) = result;
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}\n{}", lab.logs());
    let line = err.lines().find(|l| l.starts_with("lonely-0") && l.contains("Boxer.RendezvousUnreachable"));
    assert!(line.is_some_and(|l| l.contains("4740")), "no reason on lonely-0's line:\n{err}");
}
