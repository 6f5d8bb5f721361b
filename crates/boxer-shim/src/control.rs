//! Requests to the runtime over its Unix control socket.

use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use boxer_proto::shim::{ShimRequest, ShimResponse};
use boxer_proto::{Hello, frame};

use crate::config::Config;

/// How long the runtime may take to answer. It answers from memory on the
/// same machine; a runtime this slow is stuck, and the app should see an
/// unreachable network rather than hang.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);

static WARNED: AtomicBool = AtomicBool::new(false);
static DENIED: AtomicBool = AtomicBool::new(false);

/// Writes one line to stderr (fd 2) without going through Rust's stdio.
pub(crate) fn say(line: &str) {
    // SAFETY: writing a buffer we own to fd 2.
    unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
}

/// Writes `line()` to stderr the first time `flag` is raised in this
/// process (`line` is not even built afterwards).
pub(crate) fn say_once(flag: &AtomicBool, line: impl FnOnce() -> String) {
    if !flag.swap(true, Ordering::Relaxed) {
        say(&line());
    }
}

/// Sends one request and waits for the answer. `None` if the runtime cannot
/// be reached or refused this process (`Denied`; each said once per process
/// on stderr): a caller never sees [`ShimResponse::Denied`], and fails the
/// call (overlay connects and sends with `ENETUNREACH`) rather than guess.
pub fn ask(config: &Config, request: &ShimRequest) -> Option<ShimResponse> {
    let saved = crate::errno();
    let result = exchange(config, request);
    crate::set_errno(saved);
    match result {
        Ok(ShimResponse::Denied(why)) => {
            say_once(&DENIED, || {
                format!(
                    "boxer-shim: the Boxer runtime at {} refused this process: {why}; overlay addresses are unreachable\n",
                    config.control
                )
            });
            None
        }
        Ok(response) => Some(response),
        Err(e) => {
            say_once(&WARNED, || {
                format!(
                    "boxer-shim: cannot reach the Boxer runtime at {}: {e}; overlay addresses are unreachable\n",
                    config.control
                )
            });
            None
        }
    }
}

/// Connects to the control socket: `@name` in the abstract namespace, or a path.
fn connect(control: &str) -> std::io::Result<UnixStream> {
    use std::os::linux::net::SocketAddrExt;
    match boxer_proto::shim::abstract_name(control) {
        Some(name) => UnixStream::connect_addr(&std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?),
        None => UnixStream::connect(control),
    }
}

/// Writes all of `buf` with `MSG_NOSIGNAL`: the app's SIGPIPE disposition is
/// its own, and a runtime that closed early must not kill it.
fn send_all(stream: &UnixStream, mut buf: &[u8]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    while !buf.is_empty() {
        // SAFETY: sending from a buffer we own on a socket we own.
        let n = unsafe { libc::send(stream.as_raw_fd(), buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

fn exchange(config: &Config, request: &ShimRequest) -> Result<ShimResponse, String> {
    let mut stream = connect(&config.control).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(CONTROL_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(CONTROL_TIMEOUT)).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(64);
    frame::encode_into(&Hello::current(), &mut out).map_err(|e| e.to_string())?;
    frame::encode_into(request, &mut out).map_err(|e| e.to_string())?;
    // A runtime that refuses this process answers `Denied` and closes
    // without reading, so the write may fail (EPIPE, ECONNRESET) while the
    // answer already waits in our receive queue: read it either way.
    let written = send_all(&stream, &out);
    let hello: Hello = match frame::read_sync(&mut stream) {
        Ok(hello) => hello,
        Err(read) => return Err(written.err().map_or_else(|| read.to_string(), |e| e.to_string())),
    };
    hello.check().map_err(|e| e.to_string())?;
    frame::read_sync(&mut stream).map_err(|e| e.to_string())
}
