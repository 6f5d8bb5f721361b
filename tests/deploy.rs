//! End-to-end test of `boxer deploy` against a real Lambda control plane:
//! moto's server on loopback (it implements CreateFunction, GetFunction,
//! UpdateFunctionCode/Configuration and DeleteFunction without running any
//! code, and IAM for the execution role). The real `boxer` binary is run with
//! `--endpoint-url http://127.0.0.1:<port>`; nothing else is contacted
//! (instance metadata is disabled, the user's ~/.aws is hidden).
//!
//! moto never runs the function, so the package holds small stand-in
//! binaries and the deploys that upload pass the test-only
//! `--skip-binary-check-for-tests`; one deploy without it shows the check
//! refusing them. The check itself is unit-tested on real binaries
//! (`boxer::lambda::elf`).
//!
//! Needs `moto_server` on PATH (`pip install 'moto[server]'`).

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use boxer_e2e::*;

const ROLE: &str = "arn:aws:iam::123456789012:role/boxer-test";
const REGION: &str = "us-east-1";

/// A moto server on a free loopback port, killed on drop.
struct Moto {
    _proc: Proc,
    url: String,
}

impl Moto {
    fn start(dir: &Path) -> Moto {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
        let mut cmd = Command::new("moto_server");
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let proc = spawn(cmd, dir, "moto")
            .unwrap_or_else(|e| panic!("{e:#}: the deploy test needs moto's server (pip install 'moto[server]')"));
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        wait_until(Duration::from_secs(30), "moto_server to listen", || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).map_err(|e| e.to_string())
        })
        .unwrap_or_else(|e| panic!("{e:#}\nmoto stderr:\n{}", proc.stderr_text()));
        Moto { _proc: proc, url: format!("http://127.0.0.1:{port}") }
    }

    /// Runs a boto3 snippet against the server (`c(service)` makes a client);
    /// returns its stdout.
    fn python(&self, code: &str) -> Result<String, String> {
        let script = format!(
            "import boto3, json\n\
             def c(s): return boto3.client(s, endpoint_url={url:?}, region_name={REGION:?}, \
             aws_access_key_id='testing', aws_secret_access_key='testing')\n{code}",
            url = self.url
        );
        let out = Command::new("python3").arg("-c").arg(script).output().expect("python3 runs");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// GetFunction's configuration as JSON, or the error text.
    fn configuration(&self, function: &str) -> Result<serde_json::Value, String> {
        let out = self.python(&format!(
            "print(json.dumps(c('lambda').get_function(FunctionName={function:?})['Configuration'], default=str))"
        ))?;
        serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))
    }
}

/// A spec, stand-in binaries and a state directory.
struct Setup {
    dir: Scratch,
    moto: Moto,
}

impl Setup {
    fn new() -> Setup {
        let dir = Scratch::new("deploy");
        let moto = Moto::start(dir.path());
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        // Not ELF files: only an emulator that never runs them accepts them.
        std::fs::write(bin.join("boxer-runtime"), "#!/bin/sh\necho stand-in runtime\n").unwrap();
        std::fs::write(bin.join("libboxer_shim.so"), "stand-in shim").unwrap();
        let app = dir.path().join("app");
        std::fs::create_dir_all(app.join("data")).unwrap();
        std::fs::write(app.join("serve.sh"), "#!/bin/sh\necho serving\n").unwrap();
        set_mode(&app.join("serve.sh"), 0o755);
        std::fs::write(app.join("data/config.txt"), "port=8080\n").unwrap();
        std::fs::write(
            dir.path().join("boxer.toml"),
            "[cluster]\nname = \"deploy-test\"\n\n[services.web]\ncommand = [\"./serve.sh\"]\n\n\
             [lambda]\nmemory = 256\ntimeout = 60\nfiles = \"app\"\n",
        )
        .unwrap();
        Setup { dir, moto }
    }

    fn boxer(&self, args: &[&str]) -> Output {
        let mut full: Vec<String> = vec!["deploy".into(), self.dir.path().join("boxer.toml").display().to_string()];
        full.extend(["--endpoint-url".into(), self.moto.url.clone(), "--runtime-dir".into()]);
        full.push(self.dir.path().join("bin").display().to_string());
        full.extend(args.iter().map(|a| a.to_string()));
        self.run(&full.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// Runs `boxer ARGS…` with moto's credentials and nothing of the user's.
    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(bin("boxer"));
        cmd.args(args)
            .env("BOXER_STATE_DIR", self.dir.path().join("state"))
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", REGION)
            // Never ask an instance metadata service, never read the user's files.
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", self.dir.path().join("no-aws-config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", self.dir.path().join("no-aws-credentials"))
            .env("RUST_LOG", "error");
        for var in [
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_LAMBDA",
            "AWS_DEFAULT_REGION",
            "BOXER_LAMBDA_ROLE",
            "BOXER_LAMBDA_BUILD",
        ] {
            cmd.env_remove(var);
        }
        cmd.output().expect("boxer runs")
    }

    fn zip_path(&self) -> PathBuf {
        self.dir.path().join("state/deploy-test/lambda/function.zip")
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn deploy_creates_updates_and_deletes_the_function() {
    let s = Setup::new();
    s.moto
        .python(
            "c('iam').create_role(RoleName='boxer-test', AssumeRolePolicyDocument=json.dumps({'Version': '2012-10-17', \
             'Statement': [{'Effect': 'Allow', 'Principal': {'Service': 'lambda.amazonaws.com'}, \
             'Action': 'sts:AssumeRole'}]}))",
        )
        .expect("creating the role in moto's IAM");

    // No role anywhere: the error names every place one can come from.
    let out = s.boxer(&["--skip-binary-check-for-tests"]);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no execution role") && err.contains("--role ARN") && err.contains("BOXER_LAMBDA_ROLE"),
        "{err}"
    );
    assert!(err.contains("[lambda] table of"), "{err}");

    // The binaries are checked before anything is uploaded.
    let out = s.boxer(&["--role", ROLE]);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is not a 64-bit Linux executable"), "{err}");
    assert!(s.moto.configuration("boxer-deploy-test").is_err(), "nothing was created");

    // Create.
    let out = s.boxer(&["--role", ROLE, "--skip-binary-check-for-tests"]);
    let (stdout, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{err}");
    assert!(stdout.contains("function:  boxer-deploy-test (created on http://127.0.0.1:"), "{stdout}");
    assert!(err.contains("waiting for boxer-deploy-test to become active"), "{err}");
    assert!(stdout.contains(&format!("package:   {}", s.zip_path().display())), "{stdout}");
    let config = s.moto.configuration("boxer-deploy-test").unwrap();
    assert_eq!(config["MemorySize"], 256, "{config}");
    assert_eq!(config["Timeout"], 60, "{config}");
    assert_eq!(config["Runtime"], "provided.al2023", "{config}");
    assert_eq!(config["Handler"], "bootstrap", "{config}");
    assert_eq!(config["Role"], ROLE, "{config}");
    assert_eq!(config["PackageType"], "Zip", "{config}");
    assert_eq!(config["Architectures"], serde_json::json!(["x86_64"]), "{config}");
    assert_eq!(config["EphemeralStorage"]["Size"], 512, "{config}");

    // The kept zip is the package: runtime, shim and the user's files.
    let mut zip = zip::ZipArchive::new(std::fs::File::open(s.zip_path()).unwrap()).unwrap();
    let mut entries: Vec<(String, u32)> = (0..zip.len())
        .map(|i| {
            let f = zip.by_index(i).unwrap();
            (f.name().unwrap().into_owned(), f.unix_mode().unwrap() & 0o777)
        })
        .collect();
    entries.sort();
    let expected: Vec<(String, u32)> = [
        ("bootstrap", 0o755),
        ("data/", 0o755),
        ("data/config.txt", 0o644),
        ("libboxer_shim.so", 0o644),
        ("serve.sh", 0o755),
    ]
    .into_iter()
    .map(|(n, m)| (n.to_owned(), m))
    .collect();
    assert_eq!(entries, expected);

    // Update: the flag wins over [lambda] memory.
    let out = s.boxer(&["--role", ROLE, "--skip-binary-check-for-tests", "--memory", "1024"]);
    let (stdout, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{err}");
    assert!(stdout.contains("(updated on"), "{stdout}");
    assert!(err.contains("updating the code") && err.contains("updating the configuration"), "{err}");
    let config = s.moto.configuration("boxer-deploy-test").unwrap();
    assert_eq!(config["MemorySize"], 1024, "{config}");
    assert_eq!(config["Timeout"], 60, "{config}");

    // Delete, twice: the second finds nothing and says so.
    let out = s.boxer(&["--delete"]);
    let (stdout, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{err}");
    assert!(stdout.contains("deleted function boxer-deploy-test"), "{stdout}");
    let e = s.moto.configuration("boxer-deploy-test").unwrap_err();
    assert!(e.contains("ResourceNotFoundException"), "{e}");
    assert!(!s.zip_path().exists());
    let out = s.boxer(&["--delete"]);
    assert!(text(&out).0.contains("does not exist"), "{:?}", text(&out));
}

/// `boxer put` and `boxer get` against moto's S3: files and a directory
/// up, back down byte for byte, keys as documented; a key that would
/// escape the destination is skipped; errors name the bucket.
#[test]
fn put_and_get_copy_files_through_s3() {
    let setup = Setup::new();
    setup.moto.python("c('s3').create_bucket(Bucket='boxer-in')").expect("bucket created");
    let src = setup.dir.path().join("app");
    let url = setup.moto.url.clone();
    let put = setup.run(&["put", src.to_str().unwrap(), "s3://boxer-in/batch-1/", "--endpoint-url", &url]);
    let (out, err) = text(&put);
    assert!(put.status.success(), "{out}\n{err}");
    assert!(out.contains("put s3://boxer-in/batch-1/data/config.txt (10 bytes)"), "{out}");
    assert!(out.contains("put s3://boxer-in/batch-1/serve.sh"), "{out}");
    let one = setup.dir.path().join("app/data/config.txt");
    let put = setup.run(&["put", one.to_str().unwrap(), "s3://boxer-in/single.txt", "--endpoint-url", &url]);
    assert!(put.status.success(), "{:?}", text(&put));
    // A key no file system path should come from.
    setup
        .moto
        .python("c('s3').put_object(Bucket='boxer-in', Key='batch-1/../../escape.txt', Body=b'x')")
        .expect("odd key written");

    let dest = setup.dir.path().join("got");
    let get = setup.run(&["get", "s3://boxer-in/batch-1", dest.to_str().unwrap(), "--endpoint-url", &url]);
    let (out, err) = text(&get);
    assert!(get.status.success(), "{out}\n{err}");
    assert_eq!(std::fs::read(dest.join("data/config.txt")).unwrap(), b"port=8080\n");
    assert_eq!(std::fs::read(dest.join("serve.sh")).unwrap(), std::fs::read(src.join("serve.sh")).unwrap());
    assert!(err.contains("skipped") && err.contains("escape.txt"), "{err}");
    assert!(!setup.dir.path().join("escape.txt").exists() && !dest.join("escape.txt").exists());
    let get = setup.run(&["get", "s3://boxer-in/single.txt", dest.to_str().unwrap(), "--endpoint-url", &url]);
    assert!(get.status.success(), "{:?}", text(&get));
    assert_eq!(std::fs::read(dest.join("single.txt")).unwrap(), b"port=8080\n");

    let missing = setup.run(&["get", "s3://boxer-none/x/", dest.to_str().unwrap(), "--endpoint-url", &url]);
    let (_, err) = text(&missing);
    assert_eq!(missing.status.code(), Some(1), "{err}");
    assert!(err.contains("s3://boxer-none/x/") && err.contains("NoSuchBucket"), "{err}");
    let empty = setup.run(&["get", "s3://boxer-in/nothing/", dest.to_str().unwrap(), "--endpoint-url", &url]);
    let (_, err) = text(&empty);
    assert!(err.contains("no objects under s3://boxer-in/nothing/"), "{err}");
}

/// `boxer map` with local nodes over moto's S3: every object one node, 3
/// at a time, one item failing its first attempt; the results land under
/// the output prefix, each node numbered by BOXER_RANK / BOXER_SIZE.
#[test]
fn map_runs_a_command_per_object_on_local_nodes() {
    let setup = Setup::new();
    setup.moto.python("[c('s3').create_bucket(Bucket=b) for b in ('map-in', 'map-out')]").expect("buckets created");
    setup
        .moto
        .python("[c('s3').put_object(Bucket='map-in', Key=f'jobs/job {i}.txt', Body=f'job {i}\\n'.encode()) for i in range(6)]")
        .expect("inputs written");
    let url = setup.moto.url.clone();
    let script = r#"if [ "$BOXER_INPUT_KEY" = "jobs/job 4.txt" ] && [ "$BOXER_ATTEMPT" = 1 ]; then echo not yet >&2; exit 5; fi
name=$(basename "$BOXER_INPUT" .txt | tr ' ' _)
{ tr a-z A-Z < "{}"; echo "$BOXER_RANK/$BOXER_SIZE"; } > "$BOXER_OUTPUT_DIR/$name.out""#;
    let map = setup.run(&[
        "map",
        "--input",
        "s3://map-in/jobs",
        "--output",
        "s3://map-out/done/",
        "-n",
        "3",
        "--endpoint-url",
        &url,
        "--",
        "sh",
        "-c",
        script,
    ]);
    let (out, err) = text(&map);
    assert!(map.status.success(), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("retry   jobs/job 4.txt  (attempt 1 of 2 failed: exit code 5; not yet)"), "{out}");
    assert!(out.contains("  done     6") && out.contains("  retried  1 item(s), 1 retries"), "{out}");
    let listing = setup
        .moto
        .python(
            "r = c('s3').list_objects_v2(Bucket='map-out')\n\
             for o in r.get('Contents', []): print(o['Key'], c('s3').get_object(Bucket='map-out', Key=o['Key'])['Body'].read().decode().replace('\\n', '|'))",
        )
        .expect("results listed");
    let mut ranks = Vec::new();
    for i in 0..6 {
        let line = listing
            .lines()
            .find(|l| l.starts_with(&format!("done/job_{i}.out ")))
            .unwrap_or_else(|| panic!("no result for job {i}:\n{listing}\n{out}"));
        assert!(line.contains(&format!("JOB {i}|")), "{line}");
        ranks.push(line.rsplit('|').nth(1).unwrap_or_default().to_owned());
    }
    ranks.sort();
    assert_eq!(ranks, ["0/6", "1/6", "2/6", "3/6", "4/6", "5/6"], "{listing}");

    // No inputs: a clear error before any node starts.
    let empty = setup.run(&[
        "map",
        "--input",
        "s3://map-in/none/",
        "--output",
        "s3://map-out/x/",
        "--endpoint-url",
        &url,
        "--",
        "true",
    ]);
    let (_, err) = text(&empty);
    assert_eq!(empty.status.code(), Some(1), "{err}");
    assert!(err.contains("no objects under s3://map-in/none/") && err.contains("boxer put"), "{err}");
}

/// `boxer map` over local files, without S3: `boxer map` joins the cluster
/// as stage-0 and serves each node its file over the overlay; the results
/// come back the same way into the output directory. Also a glob, and the
/// errors for what cannot be mapped.
#[test]
fn map_stages_local_files_over_the_overlay() {
    let setup = Setup::new();
    let root = setup.dir.path();
    let input = root.join("local-in");
    std::fs::create_dir_all(input.join("sub")).unwrap();
    for i in 0..5 {
        std::fs::write(input.join(format!("part {i}.txt")), format!("part {i}\n").repeat(i + 1)).unwrap();
    }
    std::fs::write(input.join("sub").join("deep.csv"), "a,b\n").unwrap();
    let output = root.join("local-out");
    // The input must come over the overlay: the node reads only the copy
    // map-item fetched, which lives under its own scratch directory.
    let script = r#"case "$BOXER_INPUT" in */input/*) ;; *) echo "input not staged: $BOXER_INPUT" >&2; exit 3;; esac
if [ "$BOXER_INPUT_KEY" = "part 2.txt" ] && [ "$BOXER_ATTEMPT" = 1 ]; then echo not yet >&2; exit 5; fi
result="$BOXER_OUTPUT_DIR/counts/$BOXER_INPUT_KEY.lines"
mkdir -p "$(dirname "$result")"
wc -l < "{}" | tr -d ' ' > "$result""#;
    let dir_arg = input.display().to_string();
    let out_arg = output.display().to_string();
    let map = setup.run(&["map", "--input", &dir_arg, "--output", &out_arg, "-n", "3", "--", "sh", "-c", script]);
    let (out, err) = text(&map);
    assert!(map.status.success(), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("retry   part 2.txt  (attempt 1 of 2 failed: exit code 5; not yet)"), "{out}");
    assert!(out.contains("  done     6") && out.contains("  retried  1 item(s), 1 retries"), "{out}");
    for i in 0..5 {
        let got = std::fs::read_to_string(output.join("counts").join(format!("part {i}.txt.lines")))
            .unwrap_or_else(|e| panic!("part {i}: {e}\n{out}\n{err}"));
        assert_eq!(got.trim(), (i + 1).to_string());
    }
    // Keys are paths below the directory: $BOXER_INPUT_KEY is sub/deep.csv.
    assert_eq!(std::fs::read_to_string(output.join("counts/sub/deep.csv.lines")).unwrap().trim(), "1");

    // A glob, results beside the first ones; no partial files left.
    let pattern = format!("{}/part [34].txt", input.display());
    let glob_out = root.join("glob-out");
    let glob_arg = glob_out.display().to_string();
    let map = setup.run(&["map", "--input", &pattern, "--output", &glob_arg, "--", "sh", "-c", script]);
    let (out, err) = text(&map);
    assert!(map.status.success(), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("  items    2") && out.contains("  done     2"), "{out}");
    let mut names: Vec<String> = std::fs::read_dir(glob_out.join("counts"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["part 3.txt.lines", "part 4.txt.lines"]);

    // What cannot be mapped says so before any node starts.
    let missing = root.join("nope").display().to_string();
    let bad = setup.run(&["map", "--input", &missing, "--output", &out_arg, "--", "true"]);
    let (_, err) = text(&bad);
    assert_eq!(bad.status.code(), Some(1), "{err}");
    assert!(err.contains("no such file or directory") && err.contains("glob"), "{err}");
    let nothing = format!("{}/*.none", input.display());
    let bad = setup.run(&["map", "--input", &nothing, "--output", &out_arg, "--", "true"]);
    assert!(text(&bad).1.contains("no files there"), "{:?}", text(&bad));
    let bad = setup.run(&["map", "--input", &dir_arg, "--output", &out_arg, "--provider", "lambda", "--", "true"]);
    let (_, err) = text(&bad);
    assert!(err.contains("need --provider local"), "{err}");
}

#[test]
fn deploy_without_credentials_says_how_to_get_them() {
    let dir = Scratch::new("deploy-nocreds");
    std::fs::write(dir.path().join("boxer.toml"), "[cluster]\nname = \"c\"\n[services.a]\ncommand = [\"x\"]\n")
        .unwrap();
    let out = Command::new(bin("boxer"))
        .arg("deploy")
        .arg(dir.path().join("boxer.toml"))
        .args(["--delete", "--region", REGION, "--endpoint-url", "http://127.0.0.1:9"])
        .env("BOXER_STATE_DIR", dir.path().join("state"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", dir.path().join("none"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("none"))
        .env("RUST_LOG", "error")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
        .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        .output()
        .expect("boxer runs");
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no usable AWS credentials") && err.contains("AWS_ACCESS_KEY_ID"), "{err}");
}
