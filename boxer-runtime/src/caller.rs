//! Who is on the other end of the control socket: only processes of this
//! node may use it.
//!
//! The control socket lives in the abstract namespace (no file, so no
//! permissions: a server that switched to `postgres` or `www-data` still
//! reaches it), which any process in the node's network namespace can see.
//! What makes a process part of the node is ancestry: the runtime starts the
//! node's program, and every process the program starts descends from the
//! runtime. The runtime is a child subreaper (`PR_SET_CHILD_SUBREAPER`), so
//! daemons that double-fork are re-parented to it, not to init, and stay in
//! its tree. The caller's pid comes from the kernel (`SO_PEERCRED`), not from
//! anything the caller says.

use std::path::Path;

/// Deepest process tree walked before giving up. Real trees are a handful
/// of levels deep (runtime, shell, server, worker); a longer chain is either
/// a fork bomb or a loop caused by pid reuse mid-walk, and is refused.
pub const MAX_ANCESTRY_DEPTH: usize = 64;

/// Why a caller was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallerError {
    /// The kernel gave no pid for the peer (0: it is in a pid namespace that
    /// has no mapping in ours).
    #[error(
        "the caller is not a process of this node (it is outside the node's process namespace: SO_PEERCRED gave no pid)"
    )]
    NoPid,
    /// The caller does not descend from the runtime.
    #[error("process {pid} is not a process of this node (it does not descend from the runtime, pid {runtime})")]
    Outsider {
        /// The caller.
        pid: i32,
        /// The runtime's pid.
        runtime: i32,
    },
    /// `/proc` could not be read for a process of the chain.
    #[error("cannot read /proc/{pid}/stat: {why}")]
    Proc {
        /// The process.
        pid: i32,
        /// The error.
        why: String,
    },
}

/// Walks tried when a process of the chain vanishes mid-walk: a daemon's
/// intermediate parent exits right after forking, and its child is then
/// re-parented (to the runtime, the subreaper) before a new walk starts.
const WALK_ATTEMPTS: usize = 3;

/// Checks that `pid` is `ancestor` or one of its descendants, reading
/// parent pids from `proc` (normally `/proc`). A pid of 0 is what the kernel
/// reports for a peer in a pid namespace that ours cannot see.
pub fn check_descends(proc: &Path, pid: Option<i32>, ancestor: i32) -> Result<(), CallerError> {
    let first = pid.filter(|&p| p > 0).ok_or(CallerError::NoPid)?;
    let mut result = walk(proc, first, ancestor);
    for _ in 1..WALK_ATTEMPTS {
        match &result {
            Err(CallerError::Proc { pid, .. }) if *pid != first => result = walk(proc, first, ancestor),
            _ => break,
        }
    }
    result
}

fn walk(proc: &Path, first: i32, ancestor: i32) -> Result<(), CallerError> {
    let mut current = first;
    for _ in 0..MAX_ANCESTRY_DEPTH {
        if current == ancestor {
            return Ok(());
        }
        if current <= 1 {
            break;
        }
        current = parent_of(proc, current)?;
    }
    Err(CallerError::Outsider { pid: first, runtime: ancestor })
}

/// The parent pid of `pid`: the fourth field of `/proc/<pid>/stat`, read
/// after the last `)` because the command name in parentheses may itself
/// contain spaces and parentheses.
fn parent_of(proc: &Path, pid: i32) -> Result<i32, CallerError> {
    let text = std::fs::read_to_string(proc.join(pid.to_string()).join("stat"))
        .map_err(|e| CallerError::Proc { pid, why: e.to_string() })?;
    parse_ppid(&text).ok_or_else(|| CallerError::Proc { pid, why: "unexpected format".into() })
}

/// Parses the parent pid out of the text of a `/proc/<pid>/stat` file.
pub fn parse_ppid(stat: &str) -> Option<i32> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_ascii_whitespace();
    let _state = fields.next()?;
    fields.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_pid_is_found_after_odd_command_names() {
        assert_eq!(parse_ppid("42 (redis-server) S 7 42 42 0"), Some(7));
        assert_eq!(parse_ppid("42 (a) b) (c) R 9 1 1"), Some(9));
        assert_eq!(parse_ppid("42 (x"), None);
        assert_eq!(parse_ppid(""), None);
    }

    #[test]
    fn a_child_descends_and_an_unrelated_process_does_not() {
        let proc = Path::new("/proc");
        let me = std::process::id() as i32;
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        assert_eq!(check_descends(proc, Some(child.id() as i32), me), Ok(()));
        assert_eq!(check_descends(proc, Some(me), me), Ok(()));
        // Our parent (cargo's test harness or a shell) is not below us.
        let parent = parse_ppid(&std::fs::read_to_string("/proc/self/stat").unwrap()).unwrap();
        assert!(matches!(check_descends(proc, Some(parent), me), Err(CallerError::Outsider { .. })));
        assert_eq!(check_descends(proc, None, me), Err(CallerError::NoPid));
        assert_eq!(check_descends(proc, Some(0), me), Err(CallerError::NoPid));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
