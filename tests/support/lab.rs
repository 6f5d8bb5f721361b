//! An isolated network namespace for tests that carry overlay traffic.
//!
//! [`enter_isolated_namespace`] must run before the test harness starts any
//! thread (call it from an `.init_array` constructor, see
//! [`isolate_this_test_binary!`]): it moves the whole test process into a new
//! network namespace with only a loopback interface, so every child it starts
//! (rendezvous, runtimes, apps) lives there too and nothing can leave the
//! machine. As root only a network namespace is created; otherwise a user
//! namespace too, mapping the caller to root inside it.

use std::sync::OnceLock;

static FAILURE: OnceLock<String> = OnceLock::new();

/// Enters a fresh network namespace and brings its loopback up. Errors are
/// kept and reported by [`require_isolation`].
pub fn enter_isolated_namespace() {
    if let Err(e) = enter() {
        let _ = FAILURE.set(e);
    }
}

/// Panics with the reason if the namespace could not be entered.
pub fn require_isolation() {
    if let Some(e) = FAILURE.get() {
        panic!("cannot isolate the test in its own network namespace: {e}");
    }
}

fn enter() -> Result<(), String> {
    // SAFETY: plain syscalls; runs before any other thread exists.
    unsafe {
        let (uid, gid) = (libc::geteuid(), libc::getegid());
        let flags = if uid == 0 { libc::CLONE_NEWNET } else { libc::CLONE_NEWUSER | libc::CLONE_NEWNET };
        if libc::unshare(flags) != 0 {
            return Err(format!("unshare: {}", std::io::Error::last_os_error()));
        }
        if uid != 0 {
            let write = |path: &str, text: String| std::fs::write(path, text).map_err(|e| format!("{path}: {e}"));
            write("/proc/self/setgroups", "deny".into())?;
            write("/proc/self/uid_map", format!("0 {uid} 1"))?;
            write("/proc/self/gid_map", format!("0 {gid} 1"))?;
        }
        loopback_up()
    }
}

/// `ip link set lo up`, by ioctl.
unsafe fn loopback_up() -> Result<(), String> {
    // SAFETY: a throwaway socket and an ifreq naming "lo".
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let result = if libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req) != 0 {
            Err(format!("SIOCGIFFLAGS lo: {}", std::io::Error::last_os_error()))
        } else {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &req) != 0 {
                Err(format!("SIOCSIFFLAGS lo: {}", std::io::Error::last_os_error()))
            } else {
                Ok(())
            }
        };
        libc::close(fd);
        result
    }
}

/// Puts this test binary in an isolated network namespace before `main`.
#[macro_export]
macro_rules! isolate_this_test_binary {
    () => {
        extern "C" fn __boxer_isolate() {
            $crate::lab::enter_isolated_namespace();
        }
        #[used]
        #[unsafe(link_section = ".init_array")]
        static __BOXER_ISOLATE: extern "C" fn() = __boxer_isolate;
    };
}
