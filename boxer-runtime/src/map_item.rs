//! `bootstrap map-item`: one item of a `boxer map` job, run as a node's
//! program.
//!
//! It downloads the input object to a scratch directory, runs the user's
//! command on it (`{}` in an argument and `$BOXER_INPUT` are the local
//! path; `$BOXER_OUTPUT_DIR` is an empty directory), and when the command
//! succeeds uploads every file it wrote there under the output prefix, at
//! its path relative to that directory (SCAR's rule: the command names its
//! results). The scratch directory is removed either way: a warm function
//! keeps its `/tmp` (512 MB by default) for the next item.
//!
//! Exit codes: the command's own, or [`EXIT_NO_INPUT`] / [`EXIT_UPLOAD`]
//! when the item failed around it, so `boxer map` can say which.

use std::path::Path;
use std::process::Stdio;

use anyhow::Context;

use crate::s3::{self, S3Url};
use crate::stage;

/// Exit code when the input object could not be downloaded (sysexits'
/// `EX_NOINPUT`).
pub const EXIT_NO_INPUT: i32 = 66;

/// Exit code when the command succeeded but its results could not be
/// uploaded (sysexits' `EX_IOERR`).
pub const EXIT_UPLOAD: i32 = 74;

/// Exit code when the command could not be started (the shell's "not
/// found").
pub const EXIT_NOT_STARTED: i32 = 127;

/// Where an item's input comes from or its results go: S3, or `boxer
/// map`'s own node in the cluster for local files ([`crate::stage`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// An object (input) or a prefix (results).
    S3(S3Url),
    /// An `http://stage-0:PORT/...` URL on the stage node, reached over
    /// the overlay.
    Stage(String),
}

impl std::str::FromStr for Place {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with("http://") {
            Ok(Place::Stage(s.to_owned()))
        } else {
            s.parse().map(Place::S3).map_err(|e| format!("{e} or a stage URL http://stage-0:PORT/..."))
        }
    }
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::S3(url) => url.fmt(f),
            Place::Stage(url) => f.write_str(url),
        }
    }
}

/// What `boxer map` passes to one item.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "map-item", about = "One item of a `boxer map` job (run by the node; not for people)")]
pub struct MapItemArgs {
    /// The object to process: s3://BUCKET/KEY, or a stage URL.
    #[arg(long, value_name = "s3://BUCKET/KEY")]
    pub input: Place,
    /// Where the command's results go: s3://BUCKET/PREFIX, or a stage URL.
    #[arg(long, value_name = "s3://BUCKET/PREFIX")]
    pub output: Place,
    /// The command and its arguments; `{}` in an argument is the input's
    /// local path.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

impl MapItemArgs {
    /// `$BOXER_INPUT_KEY`: the input's key in S3, or its file name when
    /// it is a local file staged by `boxer map`.
    fn input_key(&self) -> String {
        match &self.input {
            Place::S3(url) => url.prefix.clone(),
            Place::Stage(url) => stage::key_in(url),
        }
    }

    /// The arguments `boxer map` gives `bootstrap` for one item.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec!["map-item".to_owned(), "--input".to_owned(), self.input.to_string()];
        args.extend(["--output".to_owned(), self.output.to_string(), "--".to_owned()]);
        args.extend(self.command.iter().cloned());
        args
    }
}

/// Runs the item; returns the exit code to leave with.
pub fn run(args: &MapItemArgs) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("map-item: cannot start: {e}");
            return 1;
        }
    };
    let scratch = std::env::temp_dir().join(format!("boxer-map-{}", std::process::id()));
    rt.block_on(async {
        let client = s3::client_from_env().await;
        process(&client, args, &scratch, &[]).await
    })
}

/// Processes one item in `scratch` (created, and removed afterwards) with
/// `env` added to the command's environment; the exit code.
pub async fn process(client: &aws_sdk_s3::Client, args: &MapItemArgs, scratch: &Path, env: &[(String, String)]) -> i32 {
    let code = item(client, args, scratch, env).await;
    if let Err(e) = tokio::fs::remove_dir_all(scratch).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("map-item: warning: removing {}: {e}", scratch.display());
    }
    code
}

async fn item(client: &aws_sdk_s3::Client, args: &MapItemArgs, scratch: &Path, env: &[(String, String)]) -> i32 {
    let name = match &args.input {
        Place::S3(url) => s3::file_name_of(&url.prefix),
        Place::Stage(url) => stage::file_name_in(url),
    };
    let input = scratch.join("input").join(name);
    let output = scratch.join("output");
    let staged = async {
        tokio::fs::create_dir_all(&output).await.with_context(|| format!("creating {}", output.display()))?;
        match &args.input {
            Place::S3(url) => s3::download(client, &url.bucket, &url.prefix, &input).await,
            Place::Stage(url) => stage::download(url, &input).await,
        }
    };
    // Quiet on success: the command's own last line is what `boxer map`
    // shows when it fails.
    if let Err(e) = staged.await {
        eprintln!("map-item: {e:#}");
        return EXIT_NO_INPUT;
    }
    let mut cmd = command(args, &input, &output);
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let code = match cmd.status().await {
        Ok(status) => exit_code(status),
        Err(e) => {
            eprintln!("map-item: cannot run {:?}: {e}", args.command[0]);
            return EXIT_NOT_STARTED;
        }
    };
    if code != 0 {
        // Nothing uploaded; `boxer map` reports the code beside the
        // command's own last line, which says more than this would.
        return code;
    }
    match upload_results(client, &output, &args.output).await {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("map-item: {e:#}");
            EXIT_UPLOAD
        }
    }
}

/// The user's command with `{}` replaced and the item's variables set;
/// output goes where the node's does.
fn command(args: &MapItemArgs, input: &Path, output: &Path) -> tokio::process::Command {
    let local = input.to_string_lossy();
    let argv: Vec<String> = args.command.iter().map(|a| a.replace("{}", &local)).collect();
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env("BOXER_INPUT", input)
        .env("BOXER_INPUT_KEY", args.input_key())
        .env("BOXER_OUTPUT_DIR", output)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Uploads every file under `dir`; how many.
async fn upload_results(client: &aws_sdk_s3::Client, dir: &Path, to: &Place) -> anyhow::Result<usize> {
    let files = s3::files_under(dir)?;
    for (path, rel) in &files {
        match to {
            Place::S3(to) => s3::upload(client, &to.bucket, &to.key_of(rel), path).await?,
            Place::Stage(base) => stage::upload(base, rel, path).await?,
        };
    }
    Ok(files.len())
}

/// Shell-style exit code: the code, or 128 + the signal.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn the_args_boxer_map_sends_parse_back() {
        let args = MapItemArgs {
            input: "s3://in-bkt/batch/a b.txt".parse().unwrap(),
            output: "s3://out-bkt/results".parse().unwrap(),
            command: vec!["wc".into(), "-l".into(), "{}".into(), "--".into()],
        };
        let back =
            MapItemArgs::parse_from(std::iter::once("bootstrap".to_owned()).chain(args.to_args().into_iter().skip(1)));
        assert_eq!(back.input, args.input);
        assert_eq!(back.output, args.output);
        assert_eq!(back.command, args.command);
    }

    #[test]
    fn the_placeholder_becomes_the_local_path() {
        let args = MapItemArgs {
            input: "s3://in-bkt/x.txt".parse().unwrap(),
            output: "s3://out-bkt/r".parse().unwrap(),
            command: vec!["cp".into(), "{}".into(), "{}.bak".into()],
        };
        let cmd = command(&args, Path::new("/tmp/s/input/x.txt"), Path::new("/tmp/s/output"));
        let argv: Vec<_> = cmd.as_std().get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(argv, ["/tmp/s/input/x.txt", "/tmp/s/input/x.txt.bak"]);
    }
}
