//! A local node as a machine of its own: private `/tmp`, its own process
//! table, its own hostname.
//!
//! On Lambda every node is a separate machine. Locally, nodes share the host,
//! and frameworks notice: replicas collide on default paths under `/tmp`
//! (data directories, `/tmp/.s.PGSQL.5432`, pid files), a program that scans
//! the process table finds another node's daemon, `hostname` of a static
//! binary prints the host's name. [`enter`] gives the node what a machine has,
//! with namespaces, before the runtime starts any thread:
//!
//! - a **mount namespace** whose mounts are private (nothing propagates back
//!   to the host), with fresh `tmpfs` on `/tmp`, `/var/tmp` and `/dev/shm`, and
//!   on every directory of [`Machine::private`] (empty, with the original's
//!   owner and mode);
//! - a **PID namespace** with a fresh `/proc`: the runtime is its PID 1. It
//!   already reaps the orphans it adopts (it is their subreaper elsewhere),
//!   and when it exits the kernel kills everything left in the namespace;
//! - a **UTS namespace** with the hostname set to the node's name.
//!
//! Creating a PID namespace only moves the *children* of the caller into it,
//! so [`enter`] forks: the child goes on as the runtime (PID 1 inside), the
//! parent stays behind as a small waiter that forwards signals to it and
//! exits with its status, so whoever started the runtime keeps one pid to
//! signal and wait for. If the waiter is killed, the kernel kills the child
//! (`PR_SET_PDEATHSIG`), and with it the whole namespace.
//!
//! Nothing outlives the node: `tmpfs` contents vanish with the last process
//! of the mount namespace, and that is the runtime's namespace.
//!
//! This needs `CAP_SYS_ADMIN` in the current user namespace: root, or the
//! user namespace `boxer up` runs nodes in with `--net lab` and `--net shared`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::errno::Errno;
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, sigaction, sigprocmask};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

/// Directories every isolated node gets fresh and empty: the ones programs
/// use as scratch space by default.
pub const SCRATCH_DIRS: [&str; 3] = ["/tmp", "/var/tmp", "/dev/shm"];

/// Where a private directory may not be: kernel file systems (a `tmpfs`
/// there would break the node), `/` itself, and the scratch directories
/// (already private and empty, so a directory inside would not exist).
const FORBIDDEN_PRIVATE: [&str; 7] = ["/", "/proc", "/sys", "/dev", "/tmp", "/var/tmp", "/dev/shm"];

/// Signals the waiter passes on to the runtime: the ones people and
/// supervisors send to stop, interrupt or poke a process.
const FORWARDED: [Signal; 6] =
    [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGQUIT, Signal::SIGUSR1, Signal::SIGUSR2];

/// What makes the node a machine of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// Hostname inside the node (the node's name, as the shim reports it).
    pub hostname: String,
    /// Further directories the node gets its own empty writable copy of.
    pub private: Vec<PathBuf>,
    /// Host files and directories that stay visible at their own path even
    /// when they lie inside a scratch directory: the program's working
    /// directory (a spec kept under `/tmp`) and the shim (a Boxer build
    /// under `/tmp`). Paths outside the scratch directories need nothing.
    pub keep: Vec<PathBuf>,
}

/// Why a node could not be made a machine of its own.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// `unshare` refused: not root and no user namespace of our own.
    #[error(
        "cannot give the node its own mount, PID and UTS namespaces: unshare: {0} \
         (this needs root, or the user namespace `boxer up` makes with --net lab or --net shared; \
         otherwise set `isolate = false` for the service)"
    )]
    Unshare(Errno),
    /// `fork` failed.
    #[error("cannot start the node's PID namespace: fork: {0}")]
    Fork(Errno),
    /// A mount inside the node failed.
    #[error("cannot mount {what} on {path} inside the node: {errno}")]
    Mount {
        /// What was being mounted.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The error.
        errno: Errno,
    },
    /// A private directory is not usable.
    #[error("private directory {path}: {why}")]
    Private {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// `sethostname` failed.
    #[error("cannot set the node's hostname to {name:?}: {errno}")]
    Hostname {
        /// The name.
        name: String,
        /// The error.
        errno: Errno,
    },
}

/// Checks a private directory as given in a spec or on the command line:
/// absolute, normal (no `.`/`..`), not a kernel file system, not `/`, not
/// inside a scratch directory. Whether it exists is checked on the node.
pub fn check_private(path: &Path) -> Result<(), String> {
    use std::path::Component;
    if !path.is_absolute() {
        return Err("must be an absolute path".into());
    }
    if path.components().any(|c| matches!(c, Component::CurDir | Component::ParentDir)) {
        return Err("must not contain `.` or `..`".into());
    }
    for forbidden in FORBIDDEN_PRIVATE {
        let forbidden = Path::new(forbidden);
        let inside = forbidden != Path::new("/") && path.starts_with(forbidden);
        if path == forbidden || inside {
            return Err(match forbidden.to_str() {
                Some("/tmp" | "/var/tmp" | "/dev/shm") => {
                    format!("{} is already private to every node", forbidden.display())
                }
                _ => format!("{} cannot be replaced by an empty directory", forbidden.display()),
            });
        }
    }
    Ok(())
}

/// Moves this process into a machine of its own and returns in the child,
/// which is PID 1 of the new PID namespace and goes on as the runtime; the
/// parent never returns (it waits for the child and exits with its status).
///
/// Must be called while the process has a single thread: before the async
/// runtime starts.
pub fn enter(machine: &Machine) -> Result<(), MachineError> {
    for dir in &machine.private {
        check_private(dir).map_err(|why| MachineError::Private { path: dir.clone(), why })?;
    }
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWUTS)
        .map_err(MachineError::Unshare)?;
    // Signals stay blocked across the fork: one that arrives before the
    // waiter's handlers are in place waits for them instead of killing it.
    let mut forwarded = SigSet::empty();
    for signal in FORWARDED {
        forwarded.add(signal);
    }
    let mut before = SigSet::empty();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&forwarded), Some(&mut before)).map_err(MachineError::Fork)?;
    // SAFETY: single-threaded (documented precondition), so the child may
    // do anything the parent could.
    match unsafe { fork() }.map_err(MachineError::Fork)? {
        ForkResult::Parent { child } => wait_and_exit(child, &forwarded),
        ForkResult::Child => {
            // The waiter gone means the node is stopped hard: follow it.
            // SAFETY: prctl with integer arguments only.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
            let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&before), None);
            set_up(machine)
        }
    }
}

/// The node's mounts and hostname, in the child (PID 1).
fn set_up(machine: &Machine) -> Result<(), MachineError> {
    // Nothing mounted below may reach the host's mount table.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(mount_err("private propagation", Path::new("/")))?;
    // A /proc of this PID namespace: `ps` shows the node's processes only,
    // and the runtime's caller checks and orphan reaping read its pids.
    // Failing here is fatal: PID 1 reading the host's /proc would take the
    // host's processes for its own.
    let proc = Path::new("/proc");
    mount(Some("proc"), proc, Some("proc"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC, None::<&str>)
        .map_err(mount_err("a fresh proc", proc))?;
    for dir in SCRATCH_DIRS.iter().map(Path::new).filter(|d| d.is_dir()) {
        // Held open across the mount: what is kept is bound from these.
        let kept: Vec<(&PathBuf, std::fs::File)> = machine
            .keep
            .iter()
            .filter(|k| k.starts_with(dir) && k.as_path() != dir)
            .filter_map(|k| std::fs::File::open(k).ok().map(|f| (k, f)))
            .collect();
        tmpfs(dir, "mode=1777").map_err(mount_err("a private tmpfs", dir))?;
        for (path, file) in kept {
            bind_kept(path, &file).map_err(|errno| MachineError::Mount {
                what: "a kept host path",
                path: path.clone(),
                errno,
            })?;
        }
    }
    for dir in &machine.private {
        let meta = std::fs::metadata(dir).map_err(|e| MachineError::Private {
            path: dir.clone(),
            why: format!("{e} (it must exist on this machine; it is replaced by an empty one inside the node)"),
        })?;
        if !meta.is_dir() {
            return Err(MachineError::Private { path: dir.clone(), why: "is not a directory".into() });
        }
        let options = format!("mode={:o},uid={},gid={}", meta.mode() & 0o7777, meta.uid(), meta.gid());
        tmpfs(dir, &options).map_err(mount_err("a private tmpfs", dir))?;
    }
    nix::unistd::sethostname(&machine.hostname)
        .map_err(|errno| MachineError::Hostname { name: machine.hostname.clone(), errno })?;
    Ok(())
}

/// Maps a failed mount of `what` on `path` to its error.
fn mount_err(what: &'static str, path: &Path) -> impl FnOnce(Errno) -> MachineError {
    let path = path.to_path_buf();
    move |errno| MachineError::Mount { what, path, errno }
}

/// Makes the host's `path` (open as `file`, from before a scratch directory
/// was covered) visible again at its own path: a mount point of the same
/// kind is made in the fresh `tmpfs` and the original bound onto it.
fn bind_kept(path: &Path, file: &std::fs::File) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    let io = |e: std::io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
    if file.metadata().map_err(io)?.is_dir() {
        std::fs::create_dir_all(path).map_err(io)?;
    } else {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::File::create(path).map_err(io)?;
    }
    let source = format!("/proc/self/fd/{}", file.as_raw_fd());
    mount(Some(source.as_str()), path, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
}

/// Mounts an empty `tmpfs` on `dir`.
fn tmpfs(dir: &Path, options: &str) -> Result<(), Errno> {
    mount(Some("tmpfs"), dir, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(options))
}

/// The runtime's pid as the waiter sees it, for the signal handler.
static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(signal: libc::c_int) {
    let child = CHILD.load(Ordering::Relaxed);
    if child > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(child, signal) };
    }
}

/// The waiter: forwards signals to `child`, waits for it, exits as it did
/// (a signal `n` becomes exit code `128 + n`, as a shell reports it).
fn wait_and_exit(child: Pid, forwarded: &SigSet) -> ! {
    CHILD.store(child.as_raw(), Ordering::Relaxed);
    let action = SigAction::new(SigHandler::Handler(forward), SaFlags::SA_RESTART, SigSet::empty());
    for signal in FORWARDED {
        // SAFETY: the handler only calls kill(2).
        let _ = unsafe { sigaction(signal, &action) };
    }
    let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(forwarded), None);
    let code = loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => break code,
            Ok(WaitStatus::Signaled(_, signal, _)) => break 128 + signal as i32,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => {
                eprintln!("error: waiting for the node's runtime (pid {child}): {e}");
                break 1;
            }
        }
    };
    std::process::exit(code)
}

/// Hostnames the kernel accepts: at most 64 bytes.
pub const MAX_HOSTNAME_LEN: usize = 64;

/// The hostname for a node name: the name itself, cut to what the kernel
/// accepts (node names are DNS labels, so they fit unless very long).
pub fn hostname_for(node: &str) -> String {
    let mut end = node.len().min(MAX_HOSTNAME_LEN);
    while !node.is_char_boundary(end) {
        end -= 1;
    }
    node[..end].to_owned()
}

/// Whether `/proc` belongs to this process' PID namespace (`/proc/self`
/// names the pid `getpid` returns). In a new PID namespace whose `/proc` was
/// not remounted it does not, and the pids read there are another
/// namespace's: code that kills "its" children by `/proc` checks this first.
pub fn proc_matches_pid_namespace() -> bool {
    let me = std::process::id().to_string();
    std::fs::read_link("/proc/self").is_ok_and(|p| p.as_os_str() == me.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_directories_must_be_absolute_normal_and_not_kernel_or_scratch() {
        assert!(check_private(Path::new("/var/lib/zookeeper")).is_ok());
        assert!(check_private(Path::new("/srv/data/")).is_ok());
        for bad in ["var/lib/x", "/var/lib/../x", "/", "/proc", "/proc/sys", "/sys/fs", "/dev", "/dev/pts"] {
            assert!(check_private(Path::new(bad)).is_err(), "{bad} accepted");
        }
        let scratch = check_private(Path::new("/tmp/data")).unwrap_err();
        assert!(scratch.contains("already private"), "{scratch}");
        assert!(check_private(Path::new("/var/tmpx")).is_ok(), "a sibling of /var/tmp is not inside it");
    }

    #[test]
    fn hostnames_are_cut_to_what_the_kernel_takes() {
        assert_eq!(hostname_for("db-0"), "db-0");
        assert_eq!(hostname_for(&"a".repeat(70)).len(), MAX_HOSTNAME_LEN);
        assert_eq!(hostname_for(&"é".repeat(40)).len(), 64);
    }

    #[test]
    fn the_test_runners_proc_is_its_own() {
        assert!(proc_matches_pid_namespace());
    }
}
