//! Where things are inside a Lambda function, and where the program goes.
//!
//! The function's code is in the task root (`LAMBDA_TASK_ROOT`, `/var/task`):
//! the `bootstrap` (this binary), `libboxer_shim.so` beside it, and the
//! user's files, all read-only. Only `/tmp` is writable, so each invocation
//! gets a fresh directory under it for the shim's control socket and `/etc`
//! files and, unless the event names one in the task root, the program's
//! working directory. The program finds the function's own executables
//! first on its `PATH` and gets a writable `HOME`.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use crate::app;

/// The variable Lambda sets to the function's code directory.
pub const TASK_ROOT_ENV: &str = "LAMBDA_TASK_ROOT";

/// The task root when `LAMBDA_TASK_ROOT` is unset (Lambda's own).
pub const DEFAULT_TASK_ROOT: &str = "/var/task";

/// The function's code directory.
pub fn task_root() -> PathBuf {
    std::env::var_os(TASK_ROOT_ENV).filter(|v| !v.is_empty()).map_or_else(|| DEFAULT_TASK_ROOT.into(), PathBuf::from)
}

/// The program's `PATH`: `<root>/bin`, `<root>`, then `inherited` (or the
/// default search path).
pub fn program_path(root: &Path, inherited: Option<&OsStr>) -> OsString {
    let rest = inherited.filter(|p| !p.is_empty()).unwrap_or(OsStr::new(app::DEFAULT_PATH));
    let dirs = [root.join("bin"), root.to_owned()].into_iter().chain(std::env::split_paths(rest));
    // Cannot fail: the task root comes from the environment, which holds no
    // ':' in practice; if it did, fall back to the inherited path.
    std::env::join_paths(dirs).unwrap_or_else(|_| rest.to_owned())
}

/// `HOME` for the program when the inherited one will not do: `/tmp` when
/// `HOME` is unset or not a writable directory (Lambda sets none).
pub fn home_override(inherited: Option<&OsStr>) -> Option<OsString> {
    match inherited {
        Some(home) if !home.is_empty() && writable_dir(Path::new(home)) => None,
        _ => Some(std::env::temp_dir().into_os_string()),
    }
}

fn writable_dir(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: access(2) on a NUL-terminated path.
    path.is_dir() && unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0
}

/// One invocation's scratch directory, `$TMPDIR/boxer/<node>-<pid>-<n>`,
/// removed on drop.
#[derive(Debug)]
pub struct Scratch {
    dir: PathBuf,
}

/// Removes every node directory under `$TMPDIR/boxer`: those of earlier
/// invocations of this instance that Lambda cut off at their timeout (their
/// runtime never cleaned up), which would otherwise fill the function's
/// `/tmp`. Called once, when the instance starts serving.
pub fn clear_stale_scratch() {
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join("boxer"));
}

impl Scratch {
    /// Creates a fresh one for `node` (a stale one of the same name, left
    /// by a killed instance whose pid was reused, is cleared first).
    pub fn create(node: &str, seq: u64) -> std::io::Result<Self> {
        let dir = std::env::temp_dir().join("boxer").join(format!("{node}-{}-{seq}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("work"))?;
        // Traversable by every user whatever the umask, so processes of the
        // node that switched users reach the run directory inside.
        use std::os::unix::fs::PermissionsExt;
        for d in [dir.parent().unwrap_or(&dir), &dir] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
        }
        Ok(Self { dir })
    }

    /// Where the node makes its run directory (`/etc` files): the scratch
    /// directory itself, traversable by every user.
    pub fn run_dir(&self) -> PathBuf {
        self.dir.clone()
    }

    /// A fresh writable working directory.
    pub fn work_dir(&self) -> PathBuf {
        self.dir.join("work")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_task_root_comes_first_on_path() {
        let p = program_path(Path::new("/var/task"), Some(OsStr::new("/usr/bin:/bin")));
        assert_eq!(p, "/var/task/bin:/var/task:/usr/bin:/bin");
        let p = program_path(Path::new("/var/task"), None);
        assert_eq!(p, OsString::from(format!("/var/task/bin:/var/task:{}", app::DEFAULT_PATH)));
    }

    #[test]
    fn home_is_replaced_only_when_unusable() {
        let tmp = std::env::temp_dir();
        assert_eq!(home_override(Some(tmp.as_os_str())), None);
        assert_eq!(home_override(None), Some(tmp.clone().into_os_string()));
        assert_eq!(home_override(Some(OsStr::new("/no/such/home"))), Some(tmp.into_os_string()));
    }

    #[test]
    fn scratch_directories_are_fresh_and_removed() {
        let s = Scratch::create("test-0", 7).unwrap();
        let work = s.work_dir();
        assert!(work.is_dir());
        drop(s);
        assert!(!work.exists());
    }
}
