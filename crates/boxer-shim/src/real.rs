//! The real libc functions behind the hooks, resolved once with
//! `dlsym(RTLD_NEXT, ...)`.
//!
//! [`init`] runs from the load-time constructor, before the program has
//! threads; a hook called earlier (from another library's constructor)
//! resolves the table itself through the same `OnceLock`.

use std::ffi::c_void;
use std::sync::OnceLock;

use libc::{
    FILE, addrinfo, c_char, c_int, hostent, ifaddrs, mmsghdr, msghdr, size_t, sockaddr, socklen_t, ssize_t, utsname,
};

macro_rules! real_table {
    ($($name:ident: fn($($arg:ty),*) -> $ret:ty;)*) => {
        /// Pointers to the real functions; `None` if libc lacks one.
        #[allow(missing_docs)]
        #[derive(Debug)]
        pub struct Real {
            $(pub $name: Option<unsafe extern "C" fn($($arg),*) -> $ret>,)*
        }

        fn resolve() -> Real {
            Real {
                $($name: {
                    // SAFETY: dlsym with a NUL-terminated name; the symbol, if
                    // present, has the C signature named in the table.
                    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, concat!(stringify!($name), "\0").as_ptr().cast()) };
                    if p.is_null() {
                        None
                    } else {
                        Some(unsafe { std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($arg),*) -> $ret>(p) })
                    }
                },)*
            }
        }
    };
}

real_table! {
    connect: fn(c_int, *const sockaddr, socklen_t) -> c_int;
    bind: fn(c_int, *const sockaddr, socklen_t) -> c_int;
    listen: fn(c_int, c_int) -> c_int;
    accept: fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int;
    accept4: fn(c_int, *mut sockaddr, *mut socklen_t, c_int) -> c_int;
    getpeername: fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int;
    getsockname: fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int;
    sendto: fn(c_int, *const c_void, size_t, c_int, *const sockaddr, socklen_t) -> ssize_t;
    sendmsg: fn(c_int, *const msghdr, c_int) -> ssize_t;
    sendmmsg: fn(c_int, *mut mmsghdr, libc::c_uint, c_int) -> c_int;
    recvfrom: fn(c_int, *mut c_void, size_t, c_int, *mut sockaddr, *mut socklen_t) -> ssize_t;
    __recvfrom_chk: fn(c_int, *mut c_void, size_t, size_t, c_int, *mut sockaddr, *mut socklen_t) -> ssize_t;
    recvmsg: fn(c_int, *mut msghdr, c_int) -> ssize_t;
    recvmmsg: fn(c_int, *mut mmsghdr, libc::c_uint, c_int, *mut libc::timespec) -> c_int;
    getaddrinfo: fn(*const c_char, *const c_char, *const addrinfo, *mut *mut addrinfo) -> c_int;
    freeaddrinfo: fn(*mut addrinfo) -> ();
    getnameinfo: fn(*const sockaddr, socklen_t, *mut c_char, socklen_t, *mut c_char, socklen_t, c_int) -> c_int;
    gethostbyname: fn(*const c_char) -> *mut hostent;
    gethostbyname2: fn(*const c_char, c_int) -> *mut hostent;
    gethostbyname_r: fn(*const c_char, *mut hostent, *mut c_char, size_t, *mut *mut hostent, *mut c_int) -> c_int;
    gethostbyname2_r: fn(*const c_char, c_int, *mut hostent, *mut c_char, size_t, *mut *mut hostent, *mut c_int) -> c_int;
    gethostbyaddr: fn(*const c_void, socklen_t, c_int) -> *mut hostent;
    gethostbyaddr_r: fn(*const c_void, socklen_t, c_int, *mut hostent, *mut c_char, size_t, *mut *mut hostent, *mut c_int) -> c_int;
    gethostname: fn(*mut c_char, size_t) -> c_int;
    uname: fn(*mut utsname) -> c_int;
    getifaddrs: fn(*mut *mut ifaddrs) -> c_int;
    freeifaddrs: fn(*mut ifaddrs) -> ();
    open: fn(*const c_char, c_int, libc::mode_t) -> c_int;
    open64: fn(*const c_char, c_int, libc::mode_t) -> c_int;
    openat: fn(c_int, *const c_char, c_int, libc::mode_t) -> c_int;
    openat64: fn(c_int, *const c_char, c_int, libc::mode_t) -> c_int;
    __open_2: fn(*const c_char, c_int) -> c_int;
    __open64_2: fn(*const c_char, c_int) -> c_int;
    __openat_2: fn(c_int, *const c_char, c_int) -> c_int;
    __openat64_2: fn(c_int, *const c_char, c_int) -> c_int;
    fopen: fn(*const c_char, *const c_char) -> *mut FILE;
    fopen64: fn(*const c_char, *const c_char) -> *mut FILE;
}

static REAL: OnceLock<Real> = OnceLock::new();

/// Resolves the table (idempotent).
pub fn init() {
    REAL.get_or_init(resolve);
}

/// The table.
pub fn get() -> &'static Real {
    REAL.get_or_init(resolve)
}
