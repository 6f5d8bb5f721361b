//! What the host lets the runtime do, found out once at start.
//!
//! AWS Lambda refuses some calls that a runtime on an ordinary Linux host
//! takes for granted (`prctl(PR_SET_PDEATHSIG)` is refused with `EPERM`, see
//! DESIGN.md "Lambda facts"), and AWS does not publish the list. So the
//! runtime never relies on such a call: it probes the ones it uses, skips
//! what was refused (with a logged note), and reports what it found in
//! [`HostFacts`] so that a real run teaches us what the host allows.

use boxer_proto::lambda::HostFacts;

/// The host as probed at start: the facts to report, and what the program's
/// start may do.
#[derive(Debug, Clone, Default)]
pub struct Host {
    /// Kernel, refusals, limits, user (GSO/GRO are filled in once a node's
    /// socket exists, see [`Host::note_udp_offload`]).
    pub facts: HostFacts,
    /// Children may ask to be killed when the runtime dies
    /// (`prctl(PR_SET_PDEATHSIG)` was allowed).
    pub pdeathsig: bool,
}

impl Host {
    /// Probes this host. Never fails: what cannot be found out stays `None`.
    pub fn probe() -> Self {
        let mut facts =
            HostFacts { kernel: kernel_release(), nofile: nofile(), uid: Some(uid()), ..HostFacts::default() };
        let pdeathsig = match probe_pdeathsig() {
            Ok(()) => true,
            Err(e) => {
                let note = refusal("prctl(PR_SET_PDEATHSIG)", &e);
                tracing::warn!(
                    "{note}: programs are not killed by the kernel if the runtime dies (the runtime still stops them itself)"
                );
                facts.refused.push(note);
                false
            }
        };
        Self { facts, pdeathsig }
    }

    /// Records a refused call (once).
    pub fn note_refused(&mut self, note: String) {
        if !self.facts.refused.contains(&note) {
            self.facts.refused.push(note);
        }
    }

    /// Records the UDP offload a node's socket got (segments per send and
    /// per receive; 1 means none).
    pub fn note_udp_offload(&mut self, gso: usize, gro: usize) {
        self.facts.gso_segments = Some(gso);
        self.facts.gro_segments = Some(gro);
    }

    /// Logs the facts at info.
    pub fn log(&self) {
        let f = &self.facts;
        tracing::info!(
            kernel = %f.kernel,
            uid = ?f.uid,
            nofile = ?f.nofile,
            gso = ?f.gso_segments,
            gro = ?f.gro_segments,
            refused = ?f.refused,
            "host facts"
        );
    }
}

/// `"call: ERRNO"`, the form [`HostFacts::refused`] lists.
pub fn refusal(call: &str, error: &std::io::Error) -> String {
    format!("{call}: {}", errno_name(error))
}

/// The symbolic name of the errno behind `error` (`EPERM`), or its text.
fn errno_name(error: &std::io::Error) -> String {
    let name = match error.raw_os_error() {
        Some(libc::EPERM) => "EPERM",
        Some(libc::EACCES) => "EACCES",
        Some(libc::EINVAL) => "EINVAL",
        Some(libc::ENOSYS) => "ENOSYS",
        Some(libc::EOPNOTSUPP) => "EOPNOTSUPP",
        Some(libc::ENOPROTOOPT) => "ENOPROTOOPT",
        Some(libc::ESRCH) => "ESRCH",
        Some(n) => return format!("errno {n}"),
        None => return error.to_string(),
    };
    name.to_owned()
}

/// `uname -r`, or `"unknown"`.
fn kernel_release() -> String {
    // SAFETY: uname fills the struct it is given; all-zero is a valid start.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".to_owned();
    }
    // SAFETY: the kernel NUL-terminates `release` within the array.
    let release = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) };
    release.to_string_lossy().into_owned()
}

/// The soft open-file limit.
fn nofile() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit.rlim_cur)
}

fn uid() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

/// Sets the runtime's own parent-death signal to what it already is: a no-op
/// where `prctl(PR_SET_PDEATHSIG)` is allowed, the host's refusal where not
/// (filters match the option, not its value).
fn probe_pdeathsig() -> std::io::Result<()> {
    let mut current: libc::c_int = 0;
    // SAFETY: PR_GET_PDEATHSIG writes one int through the pointer.
    if unsafe { libc::prctl(libc::PR_GET_PDEATHSIG, &mut current as *mut libc::c_int) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: sets this process's parent-death signal to its current value.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, current as libc::c_ulong) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_named_by_errno() {
        let e = std::io::Error::from_raw_os_error(libc::EPERM);
        assert_eq!(refusal("prctl(PR_SET_PDEATHSIG)", &e), "prctl(PR_SET_PDEATHSIG): EPERM");
        let e = std::io::Error::from_raw_os_error(9999);
        assert_eq!(refusal("x", &e), "x: errno 9999");
    }

    #[test]
    fn probing_is_consistent_and_notes_are_kept_once() {
        let mut host = Host::probe();
        // Allowed here, refused under lambdajail (tests/lambda_runtime.rs).
        assert_eq!(host.pdeathsig, host.facts.refused.is_empty(), "{:?}", host.facts);
        assert!(!host.facts.kernel.is_empty() && host.facts.kernel != "unknown");
        assert!(host.facts.nofile.is_some());
        let before = host.facts.refused.len();
        host.note_refused("setpgid: refused".into());
        host.note_refused("setpgid: refused".into());
        assert_eq!(host.facts.refused.len(), before + 1);
    }
}
