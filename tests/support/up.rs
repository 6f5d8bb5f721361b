//! Running the `boxer` CLI as a user would, one state directory per run.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{Scratch, bin, read};

/// A cluster run with its own state directory (`BOXER_STATE_DIR`).
pub struct BoxerRun {
    /// The state directory (removed on drop).
    pub state: Scratch,
}

impl BoxerRun {
    /// A run with a fresh state directory named after `tag`.
    pub fn new(tag: &str) -> Self {
        Self { state: Scratch::new(tag) }
    }

    /// `boxer` with this run's state directory and no inherited `RUST_LOG`.
    pub fn boxer(&self) -> Command {
        let mut cmd = Command::new(bin("boxer"));
        cmd.env("BOXER_STATE_DIR", self.state.path()).env_remove("RUST_LOG");
        cmd
    }

    /// `boxer up SPEC` to its end.
    pub fn up(&self, spec: &Path) -> Output {
        self.boxer().arg("up").arg(spec).output().expect("boxer runs")
    }

    /// Writes `spec` as `<state>/spec/boxer.toml`.
    pub fn spec(&self, spec: &str) -> PathBuf {
        let dir = self.state.path().join("spec");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("boxer.toml");
        std::fs::write(&path, spec).unwrap();
        path
    }

    /// Where [`BoxerRun::spawn`] writes the output.
    pub fn output_path(&self) -> PathBuf {
        self.state.path().join("output.txt")
    }

    /// Starts `boxer ARGS` with stdout and stderr merged into one file (one
    /// open file shared by both: lines land in the order they are written).
    pub fn spawn(&self, args: &[&str]) -> Child {
        let out = File::create(self.output_path()).unwrap();
        let err = out.try_clone().unwrap();
        self.boxer().args(args).stdin(Stdio::null()).stdout(out).stderr(err).spawn().unwrap()
    }

    /// Runs `boxer ARGS` to its end (at most `limit`): exit code and output.
    pub fn run(&self, args: &[&str], limit: Duration) -> (Option<i32>, String) {
        let mut child = self.spawn(args);
        let _stop = StopOnDrop(child.id());
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status.code(), read(&self.output_path()));
            }
            assert!(Instant::now() < deadline, "boxer {args:?} still running after {limit:?}:\n{}", self.output());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What [`BoxerRun::spawn`] wrote so far.
    pub fn output(&self) -> String {
        read(&self.output_path())
    }
}

/// Stops a `boxer up` (SIGTERM: it tears its cluster down) if a test ends early.
pub struct StopOnDrop(pub u32);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our child (a no-op error if it already ended).
        unsafe { libc::kill(self.0 as i32, libc::SIGTERM) };
    }
}

/// The spec file of `examples/<name>`.
pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(name).join("boxer.toml")
}

/// A finished command's stdout and stderr, lossily as text.
pub fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The output lines of `node` in `boxer up`'s output (`node | text`, names
/// padded to a common width).
pub fn output_of<'a>(stdout: &'a str, node: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .filter_map(|l| l.split_once(" | ").filter(|(n, _)| n.trim_end() == node).map(|(_, text)| text))
        .collect()
}
