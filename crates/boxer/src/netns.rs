//! A fresh network namespace with only loopback, for `--net shared` clusters
//! and for tests: nothing started inside it can reach any other machine.
//!
//! [`enter`] must be called while the process has a single thread (before
//! the tokio runtime starts; tests call it from an `.init_array`
//! constructor). It moves the whole process into a new network namespace, so
//! every child it starts lives there too, and the namespace disappears with
//! the last of them. As root only a network namespace is created; otherwise
//! also a user namespace that maps the caller to root inside it, so it works
//! as an ordinary user.

/// Enters a fresh network namespace and brings its loopback up.
pub fn enter() -> Result<(), String> {
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

/// Enters the network namespace of process `pid` (and first its user
/// namespace when not root). Single-threaded callers only.
pub fn join(pid: i32) -> Result<(), String> {
    let open = |kind: &str| {
        let path = format!("/proc/{pid}/ns/{kind}");
        std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))
    };
    // SAFETY: setns on namespace files we opened; runs single-threaded.
    unsafe {
        if libc::geteuid() != 0 {
            let user = open("user")?;
            if libc::setns(std::os::fd::AsRawFd::as_raw_fd(&user), libc::CLONE_NEWUSER) != 0 {
                return Err(format!("entering the user namespace of {pid}: {}", std::io::Error::last_os_error()));
            }
        }
        let net = open("net")?;
        if libc::setns(std::os::fd::AsRawFd::as_raw_fd(&net), libc::CLONE_NEWNET) != 0 {
            return Err(format!("entering the network namespace of {pid}: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
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
