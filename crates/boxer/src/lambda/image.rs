//! The container-image path: a function whose code is an image built on the
//! user's base image, for programs that need more than a zip can carry
//! (system packages, a Python with its libraries, over 250 MB).
//!
//! `boxer deploy --image BASE` writes a build context under the cluster's
//! state directory:
//!
//! ```text
//! <state>/<cluster>/lambda/image/
//!   Dockerfile     FROM BASE; the runtime is the entrypoint
//!   boxer/bootstrap, boxer/libboxer_shim.so      -> /opt/boxer/
//!   files/...      the user's files              -> /var/task/
//! ```
//!
//! With `docker` or `podman` on `PATH` it then builds the image, creates the
//! ECR repository if missing, logs in with a GetAuthorizationToken password,
//! and pushes; without one (or with `--no-push`) it prints the exact
//! commands and the `boxer deploy --image-uri` that finishes the job. The
//! image tag is a hash of the context, so a changed runtime or file gives a
//! new tag and Lambda picks up the new image.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::Architecture;
use super::aws::describe;
use super::package::{BOOTSTRAP, RuntimeBinaries, SHIM, UserFile, UserFileKind};

/// Where the runtime and the shim go in the image (outside the task root, so
/// that a user file never shadows them).
pub const BOXER_DIR: &str = "/opt/boxer";
/// Where the user's files go: Lambda's task root, as in a zip function.
pub const TASK_ROOT: &str = "/var/task";
/// Container tools looked for on `PATH`, in this order.
pub const TOOLS: [&str; 2] = ["docker", "podman"];

/// Why the image could not be made or pushed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Writing the build context failed.
    #[error("writing the build context {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An ECR call failed.
    #[error("{operation} on {target}: {message}")]
    Ecr {
        /// The operation.
        operation: &'static str,
        /// Where the request went.
        target: String,
        /// What went wrong and what to do.
        message: String,
    },
    /// The container tool failed.
    #[error("`{command}` failed ({status}); fix the cause above and run boxer deploy again")]
    Tool {
        /// The command, without secrets.
        command: String,
        /// Its exit status.
        status: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io { path: path.to_owned(), source }
}

/// A written build context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildContext {
    /// Its directory (holds the Dockerfile).
    pub dir: PathBuf,
    /// A tag derived from its contents (12 hex digits).
    pub tag: String,
}

/// The Dockerfile of a function image on `base`.
pub fn dockerfile(base: &str, has_files: bool) -> String {
    let mut text = format!(
        "# Written by `boxer deploy`, rewritten on every deploy.\n\
         # boxer-runtime is the entrypoint: it is the function's Lambda runtime client,\n\
         # and starts the program with the shim (beside it) preloaded.\n\
         FROM {base}\n\
         COPY boxer/ {BOXER_DIR}/\n"
    );
    if has_files {
        text.push_str(&format!("COPY files/ {TASK_ROOT}/\n"));
    }
    text.push_str(&format!(
        "ENV LAMBDA_TASK_ROOT={TASK_ROOT}\n\
         WORKDIR {TASK_ROOT}\n\
         ENTRYPOINT [\"{BOXER_DIR}/{BOOTSTRAP}\"]\n"
    ));
    text
}

/// Writes the build context into `dir` (emptied first: it is Boxer's own).
pub fn write_context(
    dir: &Path,
    base: &str,
    binaries: &RuntimeBinaries,
    files: &[UserFile],
) -> Result<BuildContext, ImageError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::create_dir_all(dir.join("boxer")).map_err(io(dir))?;
    let mut hash = Sha256::new();
    let text = dockerfile(base, !files.is_empty());
    let dockerfile_path = dir.join("Dockerfile");
    std::fs::write(&dockerfile_path, &text).map_err(io(&dockerfile_path))?;
    hash.update(text.as_bytes());

    let copy = |hash: &mut Sha256, source: &Path, rel: &str, mode: u32| -> Result<(), ImageError> {
        let to = dir.join(rel);
        std::fs::copy(source, &to).map_err(io(source))?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode)).map_err(io(&to))?;
        hash.update(rel.as_bytes());
        hash.update(mode.to_le_bytes());
        hash.update(std::fs::read(&to).map_err(io(&to))?);
        Ok(())
    };
    copy(&mut hash, &binaries.runtime, &format!("boxer/{BOOTSTRAP}"), 0o755)?;
    copy(&mut hash, &binaries.shim, &format!("boxer/{SHIM}"), 0o644)?;
    if !files.is_empty() {
        std::fs::create_dir_all(dir.join("files")).map_err(io(dir))?;
    }
    for f in files {
        let rel = format!("files/{}", f.path);
        match &f.kind {
            UserFileKind::Dir => {
                let to = dir.join(&rel);
                std::fs::create_dir_all(&to).map_err(io(&to))?;
                hash.update(rel.as_bytes());
            }
            UserFileKind::File { source, .. } => copy(&mut hash, source, &rel, f.mode())?,
            UserFileKind::Symlink { target } => {
                let to = dir.join(&rel);
                std::os::unix::fs::symlink(target, &to).map_err(io(&to))?;
                hash.update(rel.as_bytes());
                hash.update(target.as_bytes());
            }
        }
    }
    let tag = hash.finalize()[..6].iter().map(|b| format!("{b:02x}")).collect();
    Ok(BuildContext { dir: dir.to_owned(), tag })
}

/// The first of [`TOOLS`] on `PATH`.
pub fn find_tool() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    TOOLS.iter().find_map(|tool| {
        std::env::split_paths(&path)
            .map(|d| d.join(tool))
            .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
    })
}

/// The ECR repository name for a function (ECR names are lowercase).
pub fn repository_name(function: &str) -> String {
    function.to_lowercase()
}

/// How to log in to a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    /// Registry host, e.g. `123456789012.dkr.ecr.eu-west-1.amazonaws.com`.
    pub registry: String,
    /// User name (`AWS`).
    pub user: String,
    /// Password (valid 12 hours).
    pub password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login").field("registry", &self.registry).field("user", &self.user).finish_non_exhaustive()
    }
}

/// ECR calls of the image path.
#[derive(Debug, Clone)]
pub struct Ecr {
    client: aws_sdk_ecr::Client,
    target: String,
}

impl Ecr {
    /// Uses `client`, whose requests go to `target` (for messages).
    pub fn new(client: aws_sdk_ecr::Client, target: impl Into<String>) -> Self {
        Ecr { client, target: target.into() }
    }

    fn err<E, R>(&self, operation: &'static str, e: aws_sdk_ecr::error::SdkError<E, R>) -> ImageError
    where
        E: aws_sdk_ecr::error::ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        ImageError::Ecr { operation, target: self.target.clone(), message: describe(&e) }
    }

    /// The repository's URI, creating the repository if it does not exist.
    pub async fn ensure_repository(&self, name: &str) -> Result<String, ImageError> {
        match self.client.describe_repositories().repository_names(name).send().await {
            Ok(out) => {
                if let Some(uri) = out.repositories().first().and_then(|r| r.repository_uri()) {
                    return Ok(uri.to_owned());
                }
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_repository_not_found_exception()) => {}
            Err(e) => return Err(self.err("DescribeRepositories", e)),
        }
        tracing::info!(repository = name, "creating the ECR repository");
        let out = self
            .client
            .create_repository()
            .repository_name(name)
            .send()
            .await
            .map_err(|e| self.err("CreateRepository", e))?;
        out.repository().and_then(|r| r.repository_uri()).map(str::to_owned).ok_or_else(|| ImageError::Ecr {
            operation: "CreateRepository",
            target: self.target.clone(),
            message: "the answer has no repository URI".into(),
        })
    }

    /// A registry password from GetAuthorizationToken.
    pub async fn login(&self) -> Result<Login, ImageError> {
        let out =
            self.client.get_authorization_token().send().await.map_err(|e| self.err("GetAuthorizationToken", e))?;
        let bad = |why: &str| ImageError::Ecr {
            operation: "GetAuthorizationToken",
            target: self.target.clone(),
            message: why.to_owned(),
        };
        let data = out.authorization_data().first().ok_or_else(|| bad("no authorization data in the answer"))?;
        let token = data.authorization_token().ok_or_else(|| bad("no token in the answer"))?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token)
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .ok_or_else(|| bad("the token is not base64 text"))?;
        let (user, password) = decoded.split_once(':').ok_or_else(|| bad("the token is not USER:PASSWORD"))?;
        let endpoint = data.proxy_endpoint().ok_or_else(|| bad("no registry endpoint in the answer"))?;
        let registry = endpoint.trim_start_matches("https://").trim_end_matches('/').to_owned();
        Ok(Login { registry, user: user.to_owned(), password: password.to_owned() })
    }
}

/// The commands that build and push the context by hand, ending with the
/// `boxer deploy` that finishes (`finish` is that command's prefix, e.g.
/// `boxer deploy boxer.toml --region eu-west-1`).
pub fn manual_commands(
    context: &BuildContext,
    registry: &str,
    repository: &str,
    region: &str,
    arch: Architecture,
    finish: &str,
) -> Vec<String> {
    let image = format!("{registry}/{repository}:{}", context.tag);
    vec![
        format!(
            "aws ecr create-repository --repository-name {repository} --region {region}   # once; fails harmlessly if it exists"
        ),
        format!(
            "aws ecr get-login-password --region {region} | docker login --username AWS --password-stdin {registry}"
        ),
        format!(
            "docker build --platform {} --provenance=false -t {image} {}   # without buildx (legacy builder): drop --provenance=false",
            arch.docker_platform(),
            context.dir.display()
        ),
        format!("docker push {image}"),
        format!("{finish} --image-uri {image}"),
    ]
}

/// Builds the context with `tool`, logs in and pushes it as `image`.
pub async fn build_and_push(
    tool: &Path,
    context: &BuildContext,
    image: &str,
    login: &Login,
    arch: Architecture,
) -> Result<(), ImageError> {
    let name = tool.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut build = vec!["build".to_owned(), "--platform".into(), arch.docker_platform().into()];
    if name == "docker" && docker_has_buildx(tool).await {
        // BuildKit's default provenance attestation makes a manifest list
        // that Lambda refuses ("image manifest ... not supported"). The
        // legacy builder has neither the attestation nor the flag.
        build.push("--provenance=false".into());
    }
    build.extend(["-t".into(), image.to_owned(), context.dir.display().to_string()]);
    run(tool, &build, None).await?;
    let login_args = ["login", "--username", &login.user, "--password-stdin", &login.registry].map(str::to_owned);
    run(tool, &login_args, Some(&login.password)).await?;
    run(tool, &["push".to_owned(), image.to_owned()], None).await
}

/// Whether `docker build` is BuildKit (buildx installed), which knows
/// `--provenance`.
async fn docker_has_buildx(tool: &Path) -> bool {
    tokio::process::Command::new(tool)
        .args(["buildx", "version"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

async fn run(tool: &Path, args: &[String], stdin: Option<&str>) -> Result<(), ImageError> {
    let command = format!("{} {}", tool.display(), args.join(" "));
    eprintln!("+ {command}");
    let mut child = tokio::process::Command::new(tool)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .spawn()
        .map_err(|e| ImageError::Tool { command: command.clone(), status: e.to_string() })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use tokio::io::AsyncWriteExt;
        pipe.write_all(text.as_bytes())
            .await
            .map_err(|e| ImageError::Tool { command: command.clone(), status: e.to_string() })?;
    }
    let status =
        child.wait().await.map_err(|e| ImageError::Tool { command: command.clone(), status: e.to_string() })?;
    if !status.success() {
        return Err(ImageError::Tool { command, status: status.to_string() });
    }
    let _ = std::io::stderr().flush();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lambda::package::collect_files;

    #[test]
    fn dockerfile_makes_the_runtime_the_entrypoint() {
        let text = dockerfile("public.ecr.aws/docker/library/python:3.12", true);
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "FROM public.ecr.aws/docker/library/python:3.12",
                "COPY boxer/ /opt/boxer/",
                "COPY files/ /var/task/",
                "ENV LAMBDA_TASK_ROOT=/var/task",
                "WORKDIR /var/task",
                "ENTRYPOINT [\"/opt/boxer/bootstrap\"]",
            ]
        );
        assert!(!dockerfile("x", false).contains("COPY files/"));
    }

    #[test]
    fn context_holds_binaries_and_files() {
        let tmp = std::env::temp_dir().join(format!("boxer-image-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let bin = tmp.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("boxer-runtime"), "runtime").unwrap();
        std::fs::write(bin.join(SHIM), "shim").unwrap();
        let files = tmp.join("files");
        std::fs::create_dir_all(files.join("lib")).unwrap();
        std::fs::write(files.join("app.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(files.join("app.sh"), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(files.join("lib/data"), "d").unwrap();

        let binaries = RuntimeBinaries { runtime: bin.join("boxer-runtime"), shim: bin.join(SHIM) };
        let listed = collect_files(&files).unwrap();
        let ctx_dir = tmp.join("ctx");
        std::fs::create_dir_all(ctx_dir.join("stale")).unwrap();
        let ctx = write_context(&ctx_dir, "debian:12", &binaries, &listed).unwrap();
        assert_eq!(ctx.tag.len(), 12);
        assert!(!ctx_dir.join("stale").exists(), "the context is rewritten");
        assert!(std::fs::read_to_string(ctx_dir.join("Dockerfile")).unwrap().contains("FROM debian:12\n"));
        let mode = |p: &str| std::fs::metadata(ctx_dir.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(std::fs::read_to_string(ctx_dir.join("boxer/bootstrap")).unwrap(), "runtime");
        assert_eq!((mode("boxer/bootstrap"), mode("boxer/libboxer_shim.so")), (0o755, 0o644));
        assert_eq!((mode("files/app.sh"), mode("files/lib/data")), (0o755, 0o644));

        // Same inputs, same tag; a changed file, a new one.
        assert_eq!(write_context(&ctx_dir, "debian:12", &binaries, &listed).unwrap().tag, ctx.tag);
        std::fs::write(files.join("lib/data"), "changed").unwrap();
        assert_ne!(write_context(&ctx_dir, "debian:12", &binaries, &listed).unwrap().tag, ctx.tag);

        let cmds = manual_commands(
            &ctx,
            "1.dkr.ecr.r.amazonaws.com",
            "boxer-c",
            "r",
            Architecture::Arm64,
            "boxer deploy x.toml",
        );
        assert!(cmds[2].starts_with(
            "docker build --platform linux/arm64 --provenance=false -t 1.dkr.ecr.r.amazonaws.com/boxer-c:"
        ));
        assert_eq!(cmds[4], format!("boxer deploy x.toml --image-uri 1.dkr.ecr.r.amazonaws.com/boxer-c:{}", ctx.tag));
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
