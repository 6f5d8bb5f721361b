//! `boxer deploy`: make the cluster's Lambda function match its spec.
//!
//! This is the command around [`super::function`]: it resolves the settings
//! (flags, then environment, then `[lambda]`, then defaults), finds and
//! checks the runtime binaries, packs the zip or prepares the image, talks
//! to AWS, shows progress, and keeps the uploaded zip in the cluster's state
//! directory (`lambda/function.zip`), where the test lab unpacks it into
//! simulated function instances.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::aws::{self, AwsArgs};
use super::function::{Action, Code, FunctionSettings, Functions, Progress};
use super::image::{self, Ecr};
use super::package::{self, RUNTIME_DIR_ENV, RuntimeBinaries};
use super::{Architecture, elf, trigger};
use crate::spec::{self, Spec};
use crate::state;

/// Environment variable with the execution role ARN (what `--role` sets).
pub const ROLE_ENV: &str = "BOXER_LAMBDA_ROLE";

/// The flags of `boxer deploy` (its help text is on the subcommand).
#[derive(Debug, Clone, clap::Args)]
pub struct DeployArgs {
    /// The spec file.
    #[arg(default_value = "boxer.toml")]
    pub file: PathBuf,
    /// Delete the function instead (its ECR repository, if any, is kept).
    #[arg(long)]
    pub delete: bool,
    /// Function name (default: `[lambda] function`, else boxer-<cluster>).
    #[arg(long, value_name = "NAME")]
    pub function: Option<String>,
    /// ARN of the function's execution role (default: `[lambda] role`). The
    /// role must trust lambda.amazonaws.com; AWSLambdaBasicExecutionRole is
    /// enough (it lets the function write its logs).
    #[arg(long, env = ROLE_ENV, value_name = "ARN")]
    pub role: Option<String>,
    /// Memory in MB; Lambda gives CPU in proportion (1769 MB = one vCPU)
    /// [default: `[lambda] memory`, else 1769].
    #[arg(long, value_name = "MB", value_parser = clap::value_parser!(u32).range(128..=10240))]
    pub memory: Option<u32>,
    /// Invocation timeout in seconds: the longest a node can live
    /// [default: `[lambda] timeout`, else 900].
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u32).range(1..=900))]
    pub timeout: Option<u32>,
    /// Processor architecture [default: `[lambda] architecture`, else x86_64].
    #[arg(long, value_enum)]
    pub architecture: Option<Architecture>,
    /// Size of /tmp in MB [default: `[lambda] ephemeral_storage`, else 512].
    #[arg(long, value_name = "MB", value_parser = clap::value_parser!(u32).range(512..=10240))]
    pub ephemeral_storage: Option<u32>,
    /// Directory with boxer-runtime and libboxer_shim.so built for Lambda
    /// (default: target/<arch>-unknown-linux-gnu/release/ beside the target
    /// directory this boxer runs from).
    #[arg(long, env = RUNTIME_DIR_ENV, value_name = "DIR")]
    pub runtime_dir: Option<PathBuf>,
    /// Deploy as a container image built on this base image (default:
    /// `[lambda] image`; without either, a zip).
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// Deploy this already pushed ECR image (what the printed commands of
    /// the image path end with).
    #[arg(long, value_name = "URI", conflicts_with = "image")]
    pub image_uri: Option<String>,
    /// With an image: only write the build context and print the commands
    /// that build and push it, even if docker or podman is installed.
    #[arg(long)]
    pub no_push: bool,
    /// FOR TESTS ONLY: upload binaries without checking that they run on
    /// Lambda (architecture, glibc). Only for Lambda emulators that never
    /// run the code.
    #[arg(long, hide = true)]
    pub skip_binary_check_for_tests: bool,
    #[command(flatten)]
    pub aws: AwsArgs,
}

/// The function name: `--function`, else [`super::function_name`].
pub fn function_name(args: &DeployArgs, spec: &Spec) -> anyhow::Result<String> {
    match &args.function {
        Some(name) => {
            super::validate_function_name(name).map_err(|e| anyhow::anyhow!("--function: {e}"))?;
            Ok(name.clone())
        }
        None => Ok(super::function_name(spec)),
    }
}

/// The function's settings: each from its flag (or environment variable),
/// else the spec's `[lambda]` table, else the default.
pub fn settings(args: &DeployArgs, spec: &Spec) -> anyhow::Result<FunctionSettings> {
    let l = &spec.lambda;
    let role = match (&args.role, &l.role) {
        (Some(role), _) => {
            super::validate_role_arn(role).map_err(|e| anyhow::anyhow!("--role / {ROLE_ENV}: {e}"))?;
            role.clone()
        }
        (None, Some(role)) => role.clone(),
        (None, None) => anyhow::bail!(
            "no execution role for the function: pass --role ARN, set {ROLE_ENV}=ARN, or add `role = \"ARN\"` \
             to the [lambda] table of {} (an IAM role that trusts lambda.amazonaws.com, e.g. with \
             AWSLambdaBasicExecutionRole attached)",
            spec.path.display()
        ),
    };
    Ok(FunctionSettings {
        name: function_name(args, spec)?,
        role,
        memory: args.memory.or(l.memory).unwrap_or(super::DEFAULT_MEMORY_MB),
        timeout: args.timeout.or(l.timeout).unwrap_or(super::DEFAULT_TIMEOUT_SECS),
        architecture: args.architecture.or(l.architecture).unwrap_or_default(),
        ephemeral_storage: args
            .ephemeral_storage
            .or(l.ephemeral_storage)
            .unwrap_or(super::DEFAULT_EPHEMERAL_STORAGE_MB),
        description: format!("Boxer nodes of cluster {} (made by boxer deploy)", spec.name),
    })
}

/// Where deploy keeps the zip it uploaded last.
pub fn zip_path(cluster: &str) -> PathBuf {
    state::cluster_dir(cluster).join("lambda").join("function.zip")
}

/// Where deploy writes the image build context.
pub fn image_context_dir(cluster: &str) -> PathBuf {
    state::cluster_dir(cluster).join("lambda").join("image")
}

/// Runs `boxer deploy`; returns the exit code.
pub async fn run(args: DeployArgs) -> anyhow::Result<i32> {
    let spec = spec::load(&args.file)?;
    if args.delete {
        return delete(&args, &spec).await;
    }
    let settings = settings(&args, &spec)?;
    let arch = settings.architecture;

    // Everything local first: a wrong binary or file fails before any AWS call.
    let image_base = args.image.clone().or_else(|| spec.lambda.image.clone());
    let local = match (&args.image_uri, &image_base) {
        (Some(uri), _) => Local::Image(uri.clone()),
        (None, Some(base)) => Local::Context(prepare_image(&args, &spec, base, arch)?),
        (None, None) => Local::Zip(prepare_zip(&args, &spec, arch)?),
    };

    let config = args.aws.checked_config().await?;
    let target = aws::target(&config);
    let code = match local {
        Local::Zip(bytes) => Code::Zip(bytes),
        Local::Image(uri) => Code::Image(uri),
        Local::Context(context) => {
            let ecr = Ecr::new(aws_sdk_ecr::Client::new(&config), target.clone());
            match push_image(&args, &spec, &settings, &ecr, &context, &config).await? {
                Some(uri) => Code::Image(uri),
                None => return Ok(0),
            }
        }
    };

    let functions = Functions::new(aws_sdk_lambda::Client::new(&config), target.clone());
    let progress = Spinner::default();
    let sdk = config;
    let (action, config) = functions
        .deploy(&settings, &code, &progress)
        .await
        .with_context(|| format!("deploying function {} of {}", settings.name, spec.path.display()))?;

    let kept = match &code {
        Code::Zip(bytes) => Some(keep_zip(&spec.name, bytes)?),
        Code::Image(_) => None,
    };
    let verb = match action {
        Action::Created => "created",
        Action::Updated => "updated",
    };
    println!("function:  {} ({verb} on {target})", settings.name);
    println!("arn:       {}", config.function_arn().unwrap_or("-"));
    println!("state:     {}", config.state().map_or("-", |s| s.as_str()));
    println!(
        "settings:  {} MB, timeout {} s, {}, /tmp {} MB",
        config.memory_size().unwrap_or(settings.memory as i32),
        config.timeout().unwrap_or(settings.timeout as i32),
        settings.architecture,
        settings.ephemeral_storage
    );
    println!("role:      {}", settings.role);
    match (&code, &kept) {
        (Code::Zip(bytes), Some(path)) => {
            println!("code:      zip, {} bytes, sha256 {}", bytes.len(), config.code_sha256().unwrap_or("-"));
            println!("package:   {}", path.display());
        }
        (Code::Image(uri), _) => println!("code:      image {uri}"),
        _ => {}
    }
    if let Some(t) = &spec.lambda.trigger {
        progress.step(&format!("pointing new objects under {} at {}", t.input, settings.name));
        let arn = config.function_arn().unwrap_or_default();
        trigger::configure(&sdk, own_s3_endpoint(&args), t, &settings.name, arn)
            .await
            .with_context(|| format!("configuring [trigger] of {}", spec.path.display()))?;
        println!("trigger:   new objects under {} -> {} ({}) -> {}", t.input, settings.name, t.service, t.output);
    }
    Ok(0)
}

/// Whether S3 requests go to an endpoint of one's own (path-style).
fn own_s3_endpoint(args: &DeployArgs) -> bool {
    args.aws.endpoint_url.is_some() || boxer_runtime::s3::own_endpoint_in_env()
}

/// What was prepared on this machine.
enum Local {
    Zip(Vec<u8>),
    Image(String),
    Context(image::BuildContext),
}

fn binaries(args: &DeployArgs, arch: Architecture) -> anyhow::Result<RuntimeBinaries> {
    let binaries = RuntimeBinaries::find(args.runtime_dir.as_deref(), arch)?;
    tracing::info!(runtime = %binaries.runtime.display(), shim = %binaries.shim.display(), "runtime binaries");
    Ok(binaries)
}

fn user_files(spec: &Spec) -> anyhow::Result<Vec<package::UserFile>> {
    let mut files = match &spec.lambda.files {
        Some(dir) => {
            package::collect_files(dir).with_context(|| format!("packing [lambda] files of {}", spec.path.display()))?
        }
        None => vec![],
    };
    if let Some(t) = &spec.lambda.trigger {
        anyhow::ensure!(
            !files.iter().any(|f| f.path == trigger::TRIGGER_FILE),
            "[lambda] files has a {} of its own: Boxer writes that file for [trigger]; rename yours",
            trigger::TRIGGER_FILE
        );
        let dir = crate::state::cluster_dir(&spec.name).join("lambda");
        files.push(trigger::package_file(spec, t, &dir)?);
        files.sort_by(|a, b| a.path.cmp(&b.path));
    }
    Ok(files)
}

fn prepare_zip(args: &DeployArgs, spec: &Spec, arch: Architecture) -> anyhow::Result<Vec<u8>> {
    let binaries = binaries(args, arch)?;
    if args.skip_binary_check_for_tests {
        eprintln!("warning: --skip-binary-check-for-tests: not checking that the binaries run on Lambda");
    } else {
        binaries.check(arch)?;
    }
    let files = user_files(spec)?;
    Ok(package::build_zip(&binaries, &files)?)
}

fn prepare_image(
    args: &DeployArgs,
    spec: &Spec,
    base: &str,
    arch: Architecture,
) -> anyhow::Result<image::BuildContext> {
    let binaries = binaries(args, arch)?;
    if !args.skip_binary_check_for_tests {
        // The base image's glibc is unknown here: the architecture must
        // match, the glibc need is only reported.
        for path in [&binaries.runtime, &binaries.shim] {
            match elf::check_for_lambda(path, arch) {
                Ok(_) => {}
                Err(elf::ElfError::GlibcTooNew { needed, .. }) => eprintln!(
                    "note: {} needs glibc {needed}; the base image {base} must have at least that",
                    path.display()
                ),
                Err(e) => return Err(e.into()),
            }
        }
    }
    let files = user_files(spec)?;
    let dir = image_context_dir(&spec.name);
    Ok(image::write_context(&dir, base, &binaries, &files)?)
}

/// Builds and pushes the image if a container tool is there and wanted;
/// else prints the commands and returns `None`.
async fn push_image(
    args: &DeployArgs,
    spec: &Spec,
    settings: &FunctionSettings,
    ecr: &Ecr,
    context: &image::BuildContext,
    config: &aws_config::SdkConfig,
) -> anyhow::Result<Option<String>> {
    let repository = image::repository_name(&settings.name);
    let tool = if args.no_push { None } else { image::find_tool() };
    let Some(tool) = tool else {
        let region = config.region().map(|r| r.to_string()).unwrap_or_else(|| "REGION".into());
        let registry = match ecr.login().await {
            Ok(login) => login.registry,
            Err(e) => {
                tracing::debug!("no registry address from ECR: {e}");
                format!("ACCOUNT.dkr.ecr.{region}.amazonaws.com")
            }
        };
        // The settings in effect now, so the finishing deploy makes the same
        // function (an arm64 image must not become an x86_64 function).
        let mut finish = format!(
            "boxer deploy {} --function {} --role {} --memory {} --timeout {} --architecture {} --ephemeral-storage {}",
            spec.path.display(),
            settings.name,
            settings.role,
            settings.memory,
            settings.timeout,
            settings.architecture,
            settings.ephemeral_storage
        );
        for (flag, value) in [
            ("--region", &args.aws.region),
            ("--profile", &args.aws.profile),
            ("--endpoint-url", &args.aws.endpoint_url),
        ] {
            if let Some(v) = value {
                finish.push_str(&format!(" {flag} {v}"));
            }
        }
        let why = if args.no_push { "--no-push" } else { "neither docker nor podman is on PATH" };
        println!("image build context: {} ({why})", context.dir.display());
        println!("build and push it, then finish the deploy:");
        for c in image::manual_commands(context, &registry, &repository, &region, settings.architecture, &finish) {
            println!("  {c}");
        }
        return Ok(None);
    };
    let uri = ecr.ensure_repository(&repository).await?;
    let login = ecr.login().await?;
    let image = format!("{uri}:{}", context.tag);
    image::build_and_push(&tool, context, &image, &login, settings.architecture).await?;
    Ok(Some(image))
}

/// Writes the uploaded zip where the test lab and `boxer up` find it.
fn keep_zip(cluster: &str, bytes: &[u8]) -> anyhow::Result<PathBuf> {
    let path = zip_path(cluster);
    let dir = path.parent().expect("zip path has a parent");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension("zip.tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

async fn delete(args: &DeployArgs, spec: &Spec) -> anyhow::Result<i32> {
    let name = function_name(args, spec)?;
    let config = args.aws.checked_config().await?;
    let target = aws::target(&config);
    let functions = Functions::new(aws_sdk_lambda::Client::new(&config), target.clone());
    if let Some(t) = &spec.lambda.trigger {
        match trigger::remove(&config, own_s3_endpoint(args), t, &name).await {
            Ok(true) => println!("removed the event notification of bucket {} for {name}", t.input.bucket),
            Ok(false) => {}
            Err(e) => eprintln!("warning: {e:#}"),
        }
    }
    let existed = functions.delete(&name).await?;
    let _ = std::fs::remove_file(zip_path(&spec.name));
    if existed {
        println!("deleted function {name} on {target}");
    } else {
        println!("function {name} does not exist on {target}: nothing to delete");
    }
    Ok(0)
}

/// Progress on stderr: a line per step, and a spinner with the elapsed time
/// during waits when stderr is a terminal.
#[derive(Default)]
struct Spinner {
    current: Mutex<Option<(indicatif::ProgressBar, Instant)>>,
}

impl Progress for Spinner {
    fn step(&self, what: &str) {
        eprintln!("{what}");
    }

    fn wait(&self, what: &str) {
        let bar = indicatif::ProgressBar::new_spinner().with_message(what.to_owned());
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        if bar.is_hidden() {
            eprintln!("{what}...");
        } else {
            bar.enable_steady_tick(Duration::from_millis(120));
        }
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some((bar, Instant::now()));
    }

    fn done(&self, what: &str) {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner()).take();
        match current {
            Some((bar, started)) => {
                bar.finish_and_clear();
                eprintln!("{what} ({:.1} s)", started.elapsed().as_secs_f64());
            }
            None => eprintln!("{what}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::path::Path;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: DeployArgs,
    }

    fn args(flags: &[&str]) -> DeployArgs {
        Cli::try_parse_from(std::iter::once("deploy").chain(flags.iter().copied())).unwrap().args
    }

    fn spec(lambda: &str) -> Spec {
        let text = format!("[cluster]\nname = \"c\"\n[services.a]\ncommand = [\"x\"]\n{lambda}");
        spec::parse(Path::new("/x/boxer.toml"), &text).unwrap()
    }

    const ROLE: &str = "arn:aws:iam::123456789012:role/boxer";

    #[test]
    fn flags_win_over_the_spec_and_defaults_fill_in() {
        // The role may come from the environment in a developer's shell.
        if std::env::var_os(ROLE_ENV).is_some() {
            return;
        }
        let s = spec(&format!("[lambda]\nrole = \"{ROLE}\"\nmemory = 3008\narchitecture = \"arm64\"\n"));
        let got = settings(&args(&[]), &s).unwrap();
        assert_eq!(
            (got.name.as_str(), got.role.as_str(), got.memory, got.timeout, got.architecture, got.ephemeral_storage),
            ("boxer-c", ROLE, 3008, 900, Architecture::Arm64, 512)
        );
        let got = settings(
            &args(&[
                "--memory",
                "512",
                "--architecture",
                "x86_64",
                "--function",
                "f",
                "--role",
                "arn:aws:iam::000000000000:role/x",
            ]),
            &s,
        )
        .unwrap();
        assert_eq!(
            (got.name.as_str(), got.role.as_str(), got.memory, got.architecture),
            ("f", "arn:aws:iam::000000000000:role/x", 512, Architecture::X86_64)
        );
        let got = settings(&args(&["--role", ROLE]), &spec("")).unwrap();
        assert_eq!(
            (got.memory, got.timeout, got.architecture, got.ephemeral_storage),
            (1769, 900, Architecture::X86_64, 512)
        );
    }

    #[test]
    fn a_missing_role_names_all_three_places() {
        if std::env::var_os(ROLE_ENV).is_some() {
            return;
        }
        let e = settings(&args(&[]), &spec("")).unwrap_err().to_string();
        assert!(
            e.contains("--role ARN") && e.contains(ROLE_ENV) && e.contains("[lambda] table of /x/boxer.toml"),
            "{e}"
        );
        let e = settings(&args(&["--role", "boxer"]), &spec("")).unwrap_err().to_string();
        assert!(e.starts_with("--role / BOXER_LAMBDA_ROLE: \"boxer\" is not an IAM role ARN"), "{e}");
    }

    #[test]
    fn bad_flags_are_refused_by_the_parser() {
        for bad in [
            &["--memory", "64"][..],
            &["--timeout", "0"],
            &["--architecture", "x86"],
            &["--image", "a", "--image-uri", "b"],
        ] {
            assert!(Cli::try_parse_from(std::iter::once("deploy").chain(bad.iter().copied())).is_err(), "{bad:?}");
        }
        let e = function_name(&args(&["--function", "a b"]), &spec("")).unwrap_err().to_string();
        assert!(e.starts_with("--function:"), "{e}");
    }
}
