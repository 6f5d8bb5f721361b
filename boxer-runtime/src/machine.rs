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
//! - a **mount namespace** whose mounts are slaves of the host's (nothing
//!   propagates back to the host), with fresh `tmpfs` on `/tmp`, `/var/tmp`
//!   and `/dev/shm`, and on every directory of [`Machine::private`] (empty,
//!   with the original's owner and mode);
//! - a **PID namespace** with a fresh `/proc`: the runtime is its PID 1. It
//!   already reaps the orphans it adopts (it is their subreaper elsewhere),
//!   and when it exits the kernel kills everything left in the namespace;
//! - a **UTS namespace** with the hostname set to the node's name, and an
//!   **IPC namespace** (System V objects and POSIX queues of its own).
//!
//! Creating a PID namespace only moves the *children* of the caller into it,
//! so [`enter`] forks: the child goes on as the runtime (PID 1 inside), the
//! parent stays behind as a small waiter that forwards the stop signals to
//! it and ends as it did, so whoever started the runtime keeps one pid to
//! signal and wait for. If the waiter is killed, the kernel kills the child
//! (`PR_SET_PDEATHSIG`), and with it the whole namespace. The kernel drops
//! signals to a PID 1 that has no handler for them, so the child keeps the
//! stop signals blocked until the runtime has installed its handlers.
//!
//! Nothing outlives the node: `tmpfs` contents vanish with the last process
//! of the mount namespace, and that is the runtime's namespace.
//!
//! This needs `CAP_SYS_ADMIN` in the current user namespace: root, or the
//! user namespace `boxer up` runs nodes in with `--net lab` and `--net shared`.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
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
/// The child returns with [`STOP_SIGNALS`] blocked: the kernel drops a
/// signal to a namespace's PID 1 that has no handler, so they wait, pending,
/// until the runtime has its handlers and calls [`unblock_stop_signals`].
///
/// Must be called while the process has a single thread: before the async
/// runtime starts.
pub fn enter(machine: &Machine) -> Result<(), MachineError> {
    for dir in &machine.private {
        check_private(dir).map_err(|why| MachineError::Private { path: dir.clone(), why })?;
    }
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC)
        .map_err(MachineError::Unshare)?;
    // Signals stay blocked across the fork: one that arrives before the
    // waiter's handlers are in place waits for them instead of killing it.
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&stop_set()), None).map_err(MachineError::Fork)?;
    // The waiter may die between the fork and PR_SET_PDEATHSIG: the child
    // sees that as the end of this pipe (the waiter holds the write end).
    let (alive_read, alive_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(MachineError::Fork)?;
    // SAFETY: single-threaded (documented precondition), so the child may
    // do anything the parent could.
    match unsafe { fork() }.map_err(MachineError::Fork)? {
        ForkResult::Parent { child } => {
            drop(alive_read);
            wait_and_exit(child, alive_write)
        }
        ForkResult::Child => {
            drop(alive_write);
            // The waiter gone means the node is stopped hard: follow it.
            // SAFETY: prctl with integer arguments only.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
            let mut fds = [nix::poll::PollFd::new(alive_read.as_fd(), nix::poll::PollFlags::POLLIN)];
            if nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).is_ok_and(|n| n > 0) {
                // SAFETY: exiting a process that has nothing to clean up.
                unsafe { libc::_exit(1) };
            }
            set_up(machine)
        }
    }
}

/// Signals that stop a node: the waiter passes them on, the runtime handles
/// them (as a shell would: `128 + n`). Others (SIGUSR1, ...) end the waiter
/// by their default action, and with it the node.
pub const STOP_SIGNALS: [Signal; 4] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGQUIT];

fn stop_set() -> SigSet {
    let mut set = SigSet::empty();
    for signal in STOP_SIGNALS {
        set.add(signal);
    }
    set
}

/// Unblocks [`STOP_SIGNALS`] in the calling thread, once their handlers are
/// installed (a no-op where they were never blocked).
pub fn unblock_stop_signals() {
    let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&stop_set()), None);
}

/// The node's mounts and hostname, in the child (PID 1).
fn set_up(machine: &Machine) -> Result<(), MachineError> {
    // Nothing mounted below may reach the host's mount table (slave: the
    // host's later mounts still appear, as on a machine with NFS/autofs).
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
        .map_err(mount_err("slave propagation", Path::new("/")))?;
    // A /proc of this PID namespace: `ps` shows the node's processes only,
    // and the runtime's caller checks and orphan reaping read its pids.
    // Failing here is fatal: PID 1 reading the host's /proc would take the
    // host's processes for its own.
    let proc = Path::new("/proc");
    mount(Some("proc"), proc, Some("proc"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC, None::<&str>)
        .map_err(mount_err("a fresh proc", proc))?;
    // What the node keeps of the host is opened before anything covers it,
    // ancestors first (a kept directory brings what is inside along).
    let mut keep: Vec<&PathBuf> = machine.keep.iter().collect();
    keep.sort_by_key(|k| k.components().count());
    let kept: Vec<(&PathBuf, OwnedFd)> = keep
        .into_iter()
        .filter_map(|k| match open_path(k) {
            Ok(fd) => Some((k, fd)),
            Err(errno) => {
                tracing::warn!("{} stays hidden inside the node: cannot open it: {errno}", k.display());
                None
            }
        })
        .collect();
    // Private directories as they really are (a symlink into /proc or /tmp
    // is checked where it leads), looked at before any is covered.
    let mut private = Vec::new();
    for dir in &machine.private {
        let err = |why: String| MachineError::Private { path: dir.clone(), why };
        let real = std::fs::canonicalize(dir).map_err(|e| {
            err(format!("{e} (it must exist on this machine; the node gets an empty one in its place)"))
        })?;
        check_private(&real).map_err(|why| err(format!("is {}: {why}", real.display())))?;
        let meta = std::fs::metadata(&real).map_err(|e| err(e.to_string()))?;
        if !meta.is_dir() {
            return Err(err("is not a directory".into()));
        }
        private.push((real, meta));
    }
    private.sort_by_key(|(dir, _)| dir.components().count());
    let mut covered: Vec<PathBuf> = Vec::new();
    for dir in SCRATCH_DIRS.iter().map(Path::new).filter(|d| d.is_dir()) {
        tmpfs(dir, "mode=1777").map_err(mount_err("a private tmpfs", dir))?;
        covered.push(dir.to_path_buf());
    }
    for (dir, meta) in &private {
        // Inside an earlier private directory: only its (empty) copy is there.
        std::fs::create_dir_all(dir).map_err(|e| MachineError::Private { path: dir.clone(), why: e.to_string() })?;
        tmpfs(dir, &private_options(meta)).map_err(mount_err("a private tmpfs", dir))?;
        covered.push(dir.clone());
    }
    for (path, fd) in &kept {
        if !covered.iter().any(|c| path.starts_with(c) && path != &c) || path.exists() {
            // Not covered, or already back through a kept ancestor.
            continue;
        }
        bind_kept(path, fd).map_err(|errno| MachineError::Mount {
            what: "a kept host path",
            path: (*path).clone(),
            errno,
        })?;
    }
    nix::unistd::sethostname(&machine.hostname)
        .map_err(|errno| MachineError::Hostname { name: machine.hostname.clone(), errno })?;
    Ok(())
}

/// `tmpfs` options for the private copy of a directory: its mode, and its
/// owner unless the owner has no id in this user namespace (an ordinary
/// user's lab maps only that user: tmpfs refuses unmapped ids, and the
/// node's root then owns the copy).
fn private_options(meta: &std::fs::Metadata) -> String {
    let overflow = |file: &str| std::fs::read_to_string(file).ok().and_then(|s| s.trim().parse::<u32>().ok());
    let mut options = format!("mode={:o}", meta.mode() & 0o7777);
    if Some(meta.uid()) != overflow("/proc/sys/kernel/overflowuid") {
        options.push_str(&format!(",uid={}", meta.uid()));
    }
    if Some(meta.gid()) != overflow("/proc/sys/kernel/overflowgid") {
        options.push_str(&format!(",gid={}", meta.gid()));
    }
    options
}

/// Opens `path` without reading it (`O_PATH`): enough to bind it later,
/// whatever its permissions.
fn open_path(path: &Path) -> Result<OwnedFd, Errno> {
    use nix::fcntl::{OFlag, open};
    open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
}

/// Maps a failed mount of `what` on `path` to its error.
fn mount_err(what: &'static str, path: &Path) -> impl FnOnce(Errno) -> MachineError {
    let path = path.to_path_buf();
    move |errno| MachineError::Mount { what, path, errno }
}

/// Makes the host's `path` (held open as `fd` from before it was covered)
/// visible again at its own path: a mount point of the same kind is made in
/// the fresh `tmpfs` (never touching an existing file) and the original
/// bound onto it.
fn bind_kept(path: &Path, fd: &OwnedFd) -> Result<(), Errno> {
    let io = |e: std::io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
    let source = format!("/proc/self/fd/{}", fd.as_raw_fd());
    if std::fs::metadata(&source).map_err(io)?.is_dir() {
        std::fs::create_dir_all(path).map_err(io)?;
    } else {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(io)?;
    }
    mount(Some(source.as_str()), path, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
}

/// Mounts an empty `tmpfs` on `dir`.
fn tmpfs(dir: &Path, options: &str) -> Result<(), Errno> {
    mount(Some("tmpfs"), dir, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(options))
}

/// The runtime's pid as the waiter sees it, for the signal handler (0 once
/// it is gone, so a recycled pid is never signalled).
static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(signal: libc::c_int) {
    let child = CHILD.load(Ordering::Relaxed);
    if child > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(child, signal) };
    }
}

/// The waiter: forwards [`STOP_SIGNALS`] to `child`, waits for it, and ends
/// as it did: with its exit code, or by its signal (re-raised, so the
/// waiter's own parent sees the same status). `alive` is held until then.
fn wait_and_exit(child: Pid, alive: OwnedFd) -> ! {
    use nix::sys::wait::{Id, WaitPidFlag, waitid};
    CHILD.store(child.as_raw(), Ordering::Relaxed);
    let action = SigAction::new(SigHandler::Handler(forward), SaFlags::SA_RESTART, SigSet::empty());
    for signal in STOP_SIGNALS {
        // SAFETY: the handler only calls kill(2).
        let _ = unsafe { sigaction(signal, &action) };
    }
    let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&stop_set()), None);
    // Look without reaping, stop forwarding, then reap: the pid cannot be
    // reused while a signal may still be sent to it.
    let status = loop {
        match waitid(Id::Pid(child), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Ok(status) => break status,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                eprintln!("error: waiting for the node's runtime (pid {child}): {e}");
                std::process::exit(1);
            }
        }
    };
    CHILD.store(0, Ordering::Relaxed);
    let _ = waitpid(child, None);
    drop(alive);
    match status {
        WaitStatus::Exited(_, code) => std::process::exit(code),
        WaitStatus::Signaled(_, signal, _) => {
            // SAFETY: restoring the default action of a signal we then raise.
            unsafe {
                let _ = nix::sys::signal::signal(signal, SigHandler::SigDfl);
            }
            let mut set = SigSet::empty();
            set.add(signal);
            let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
            let _ = nix::sys::signal::raise(signal);
            std::process::exit(128 + signal as i32)
        }
        _ => std::process::exit(1),
    }
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
