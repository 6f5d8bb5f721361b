//! Name calls: `getaddrinfo`, `gethostbyname{,2}{,_r}`, `gethostbyaddr`,
//! `getnameinfo`, `gethostname`, `uname`.
//!
//! Names that may be Boxer names (a single label, or `*.<cluster>.boxer`) are
//! asked of the runtime, which answers from membership; anything else, and
//! any single label that is not a member (`localhost`), goes to the real
//! resolver. Results are allocated the way glibc allocates them, so the
//! app's `freeaddrinfo` frees them.

use std::cell::RefCell;
use std::ffi::{CStr, CString};
use std::net::{Ipv4Addr, SocketAddrV4};

use boxer_proto::shim::{ShimRequest, ShimResponse};
use libc::{
    AF_INET, AF_INET6, AF_UNSPEC, AI_CANONNAME, AI_NUMERICHOST, AI_PASSIVE, AI_V4MAPPED, EAI_AGAIN, EAI_FAIL,
    EAI_MEMORY, EAI_NONAME, EAI_OVERFLOW, EAI_SYSTEM, ENAMETOOLONG, ENOSYS, ERANGE, IPPROTO_TCP, IPPROTO_UDP,
    NI_NAMEREQD, NI_NUMERICHOST, SOCK_DGRAM, SOCK_RAW, SOCK_STREAM, addrinfo, c_char, c_int, c_void, hostent, size_t,
    sockaddr, socklen_t, utsname,
};

use crate::config::{self, Config};
use crate::inet::{self, Family};
use crate::{control, fail, guard, real};

unsafe extern "C" {
    fn __h_errno_location() -> *mut c_int;
}

const HOST_NOT_FOUND: c_int = 1;
const TRY_AGAIN: c_int = 2;
const NO_DATA: c_int = 4;

fn set_h_errno(v: c_int) {
    // SAFETY: glibc returns a valid thread-local pointer.
    unsafe { *__h_errno_location() = v }
}

/// What the runtime says about a name.
enum Lookup {
    Found(Vec<Ipv4Addr>),
    NotFound,
    /// A name that may be the cluster's, and the runtime cannot be asked
    /// (it crashed, or refused this process). Never passed on to the real
    /// resolver: a cluster name must not go to the host's DNS, where a
    /// search domain could turn it into an unrelated host outside the
    /// overlay. The caller gets "try again".
    Unavailable,
    Real,
}

unsafe fn lookup(name: *const c_char) -> (Lookup, Option<&'static Config>, String) {
    let Some(config) = config::get() else { return (Lookup::Real, None, String::new()) };
    if name.is_null() {
        return (Lookup::Real, None, String::new());
    }
    // SAFETY: the caller's NUL-terminated string.
    let Ok(text) = unsafe { CStr::from_ptr(name) }.to_str() else { return (Lookup::Real, None, String::new()) };
    if !config.may_be_boxer_name(text) {
        return (Lookup::Real, Some(config), text.to_owned());
    }
    let result = match control::ask(config, &ShimRequest::Resolve { name: text.to_owned() }) {
        Some(ShimResponse::Addresses(ips)) if !ips.is_empty() => Lookup::Found(ips),
        Some(ShimResponse::Addresses(_)) | Some(ShimResponse::NotFound) => Lookup::NotFound,
        None => Lookup::Unavailable,
        _ => Lookup::Real,
    };
    (result, Some(config), text.to_owned())
}

/// `getaddrinfo`.
///
/// # Safety
/// Called by C with the arguments of `getaddrinfo(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getaddrinfo(
    node: *const c_char,
    service: *const c_char,
    hints: *const addrinfo,
    res: *mut *mut addrinfo,
) -> c_int {
    let Some(real) = real::get().getaddrinfo else { return EAI_SYSTEM };
    // SAFETY: arguments passed through from the caller.
    guard(
        || unsafe { getaddrinfo_impl(real, node, service, hints, res) },
        || unsafe { real(node, service, hints, res) },
    )
}

type GetaddrinfoFn = unsafe extern "C" fn(*const c_char, *const c_char, *const addrinfo, *mut *mut addrinfo) -> c_int;

unsafe fn getaddrinfo_impl(
    real: GetaddrinfoFn,
    node: *const c_char,
    service: *const c_char,
    hints: *const addrinfo,
    res: *mut *mut addrinfo,
) -> c_int {
    let passthrough = || unsafe { real(node, service, hints, res) };
    // SAFETY: hints is null or the caller's valid struct.
    let (flags, family, socktype, protocol) = match unsafe { hints.as_ref() } {
        Some(h) => (h.ai_flags, h.ai_family, h.ai_socktype, h.ai_protocol),
        None => (0, AF_UNSPEC, 0, 0),
    };
    if flags & AI_NUMERICHOST != 0 || ![AF_UNSPEC, AF_INET, AF_INET6].contains(&family) {
        return passthrough();
    }
    let (ips, _, name) = match unsafe { lookup(node) } {
        (Lookup::Found(ips), Some(c), name) => (ips, c, name),
        (Lookup::NotFound, _, _) => return EAI_NONAME,
        (Lookup::Unavailable, _, _) => return EAI_AGAIN,
        _ => return passthrough(),
    };
    let out_family = match family {
        AF_INET6 if flags & AI_V4MAPPED != 0 => Family::V6Mapped,
        AF_INET6 => return EAI_NONAME,
        _ => Family::V4,
    };
    let port = match unsafe { service_port(real, service, socktype) } {
        Ok(p) => p,
        Err(e) => return e,
    };
    let kinds: Vec<(c_int, c_int)> = if socktype != 0 {
        vec![(socktype, protocol)]
    } else {
        vec![(SOCK_STREAM, IPPROTO_TCP), (SOCK_DGRAM, IPPROTO_UDP), (SOCK_RAW, 0)]
    };
    let mut head: *mut addrinfo = std::ptr::null_mut();
    let mut tail: *mut *mut addrinfo = &mut head;
    for ip in &ips {
        for &(ty, proto) in &kinds {
            let Some(node) = alloc_addrinfo(SocketAddrV4::new(*ip, port), out_family, ty, proto) else {
                // SAFETY: `head` is a list we built with malloc.
                unsafe { free_list(head) };
                return EAI_MEMORY;
            };
            // SAFETY: `tail` points at the last `ai_next` (or `head`).
            unsafe {
                *tail = node;
                tail = &mut (*node).ai_next;
            }
        }
    }
    if flags & AI_CANONNAME != 0 && !head.is_null() {
        let canon = CString::new(name).unwrap_or_default();
        // SAFETY: strdup of a valid C string; `head` is non-null.
        unsafe { (*head).ai_canonname = libc::strdup(canon.as_ptr()) };
    }
    // SAFETY: caller's out-pointer.
    unsafe { *res = head };
    0
}

/// Port of `service`: numeric, or looked up by the real resolver.
unsafe fn service_port(real: GetaddrinfoFn, service: *const c_char, socktype: c_int) -> Result<u16, c_int> {
    if service.is_null() {
        return Ok(0);
    }
    // SAFETY: the caller's NUL-terminated string.
    let text = unsafe { CStr::from_ptr(service) }.to_string_lossy();
    if let Ok(p) = text.parse::<u16>() {
        return Ok(p);
    }
    // SAFETY: zeroed addrinfo is a valid hints struct.
    let mut hints: addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_family = AF_INET;
    hints.ai_socktype = socktype;
    hints.ai_flags = AI_PASSIVE;
    let mut out: *mut addrinfo = std::ptr::null_mut();
    let r = unsafe { real(std::ptr::null(), service, &hints, &mut out) };
    if r != 0 {
        return Err(r);
    }
    // SAFETY: a successful getaddrinfo returns at least one entry.
    let port = unsafe { inet::read((*out).ai_addr, (*out).ai_addrlen) }.map_or(0, |(a, _)| a.port());
    if let Some(free) = real::get().freeaddrinfo {
        unsafe { free(out) };
    }
    Ok(port)
}

/// One `addrinfo` with its address in the same allocation, as glibc does, so
/// glibc's `freeaddrinfo` (free of each node and its canonname) frees it.
fn alloc_addrinfo(addr: SocketAddrV4, family: Family, socktype: c_int, protocol: c_int) -> Option<*mut addrinfo> {
    let (storage, len) = inet::build(addr, family);
    let head = std::mem::size_of::<addrinfo>();
    // SAFETY: calloc of a block big enough for both parts.
    let block = unsafe { libc::calloc(1, head + len as usize) }.cast::<u8>();
    if block.is_null() {
        return None;
    }
    // SAFETY: `block` has room for the addrinfo and the address after it;
    // addrinfo's size keeps the address suitably aligned.
    unsafe {
        let ai = block.cast::<addrinfo>();
        let sa = block.add(head);
        std::ptr::copy_nonoverlapping((&raw const storage).cast::<u8>(), sa, len as usize);
        (*ai).ai_family = if family == Family::V4 { AF_INET } else { AF_INET6 };
        (*ai).ai_socktype = socktype;
        (*ai).ai_protocol = protocol;
        (*ai).ai_addrlen = len;
        (*ai).ai_addr = sa.cast::<sockaddr>();
        Some(ai)
    }
}

unsafe fn free_list(mut ai: *mut addrinfo) {
    while !ai.is_null() {
        // SAFETY: nodes we allocated with calloc/strdup.
        unsafe {
            let next = (*ai).ai_next;
            libc::free((*ai).ai_canonname.cast());
            libc::free(ai.cast());
            ai = next;
        }
    }
}

/// Lays out a `hostent` for `names[0]` (aliases `names[1..]`) and `ips` in
/// the caller's buffer. `Err(ERANGE)` if it does not fit.
unsafe fn fill_hostent(
    names: &[String],
    ips: &[Ipv4Addr],
    ret: *mut hostent,
    buf: *mut c_char,
    len: size_t,
) -> Result<(), c_int> {
    let ptr = std::mem::size_of::<*mut c_char>();
    let start = buf as usize;
    let aligned = start.next_multiple_of(ptr);
    let names_len: usize = names.iter().map(|n| n.len() + 1).sum();
    let need = (aligned - start) + ptr * (ips.len() + 1) + ptr * names.len() + 4 * ips.len() + names_len;
    if names.is_empty() || need > len {
        return Err(ERANGE);
    }
    // SAFETY: every write below stays inside the `need <= len` bytes at `buf`,
    // pointer arrays are aligned.
    unsafe {
        let addr_list = aligned as *mut *mut c_char;
        let aliases = addr_list.add(ips.len() + 1);
        let mut cursor = aliases.add(names.len()).cast::<u8>();
        for (i, ip) in ips.iter().enumerate() {
            std::ptr::copy_nonoverlapping(ip.octets().as_ptr(), cursor, 4);
            *addr_list.add(i) = cursor.cast();
            cursor = cursor.add(4);
        }
        *addr_list.add(ips.len()) = std::ptr::null_mut();
        let mut name_ptrs = Vec::with_capacity(names.len());
        for n in names {
            std::ptr::copy_nonoverlapping(n.as_ptr(), cursor, n.len());
            *cursor.add(n.len()) = 0;
            name_ptrs.push(cursor.cast::<c_char>());
            cursor = cursor.add(n.len() + 1);
        }
        for (i, p) in name_ptrs.iter().skip(1).enumerate() {
            *aliases.add(i) = *p;
        }
        *aliases.add(names.len() - 1) = std::ptr::null_mut();
        (*ret).h_name = name_ptrs[0];
        (*ret).h_aliases = aliases;
        (*ret).h_addrtype = AF_INET;
        (*ret).h_length = 4;
        (*ret).h_addr_list = addr_list;
    }
    Ok(())
}

/// The `_r` result convention: 0 and `*result = ret` on success; `ERANGE`
/// with `*h_errnop = NETDB_INTERNAL` and `errno = ERANGE` when the buffer is
/// too small (callers grow it and retry).
unsafe fn fill_r(
    names: &[String],
    ips: &[Ipv4Addr],
    ret: *mut hostent,
    buf: *mut c_char,
    len: size_t,
    result: *mut *mut hostent,
    h_errnop: *mut c_int,
) -> c_int {
    const NETDB_INTERNAL: c_int = -1;
    // SAFETY: the caller's buffers and out-pointers.
    unsafe {
        match fill_hostent(names, ips, ret, buf, len) {
            Ok(()) => {
                *result = ret;
                0
            }
            Err(e) => {
                *result = std::ptr::null_mut();
                if !h_errnop.is_null() {
                    *h_errnop = NETDB_INTERNAL;
                }
                crate::set_errno(e);
                e
            }
        }
    }
}

/// Storage behind the non-reentrant calls (glibc keeps one per thread too).
struct Static {
    host: hostent,
    buf: [c_char; 4096],
}

thread_local! {
    static STATIC: RefCell<Box<Static>> = RefCell::new(Box::new(Static {
        // SAFETY: an all-zero hostent is valid (null pointers).
        host: unsafe { std::mem::zeroed() },
        buf: [0; 4096],
    }));
}

fn static_hostent(names: &[String], ips: &[Ipv4Addr]) -> *mut hostent {
    STATIC.with(|s| {
        let mut s = s.borrow_mut();
        let s = &mut **s;
        // SAFETY: our own thread-local buffer.
        match unsafe { fill_hostent(names, ips, &mut s.host, s.buf.as_mut_ptr(), s.buf.len()) } {
            Ok(()) => &mut s.host as *mut hostent,
            Err(_) => std::ptr::null_mut(),
        }
    })
}

/// `gethostbyname`.
///
/// # Safety
/// Called by C with the arguments of `gethostbyname(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyname(name: *const c_char) -> *mut hostent {
    // SAFETY: passed through.
    unsafe { gethostbyname2(name, AF_INET) }
}

/// `gethostbyname2`: Boxer names have IPv4 addresses only.
///
/// # Safety
/// Called by C with the arguments of `gethostbyname2(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyname2(name: *const c_char, af: c_int) -> *mut hostent {
    let real = || match (af, real::get().gethostbyname2, real::get().gethostbyname) {
        (_, Some(f), _) => unsafe { f(name, af) },
        (AF_INET, None, Some(f)) => unsafe { f(name) },
        _ => std::ptr::null_mut(),
    };
    guard(
        || match unsafe { lookup(name) } {
            (Lookup::Found(_), _, _) if af != AF_INET => {
                set_h_errno(NO_DATA);
                std::ptr::null_mut()
            }
            (Lookup::Found(ips), _, text) => static_hostent(&[text], &ips),
            (Lookup::NotFound, _, _) => {
                set_h_errno(HOST_NOT_FOUND);
                std::ptr::null_mut()
            }
            (Lookup::Unavailable, _, _) => {
                set_h_errno(TRY_AGAIN);
                std::ptr::null_mut()
            }
            (Lookup::Real, _, _) => real(),
        },
        real,
    )
}

/// `gethostbyname_r`.
///
/// # Safety
/// Called by C with the arguments of `gethostbyname_r(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyname_r(
    name: *const c_char,
    ret: *mut hostent,
    buf: *mut c_char,
    len: size_t,
    result: *mut *mut hostent,
    h_errnop: *mut c_int,
) -> c_int {
    // SAFETY: passed through.
    unsafe { gethostbyname2_r(name, AF_INET, ret, buf, len, result, h_errnop) }
}

/// `gethostbyname2_r`.
///
/// # Safety
/// Called by C with the arguments of `gethostbyname2_r(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyname2_r(
    name: *const c_char,
    af: c_int,
    ret: *mut hostent,
    buf: *mut c_char,
    len: size_t,
    result: *mut *mut hostent,
    h_errnop: *mut c_int,
) -> c_int {
    let real = || match (af, real::get().gethostbyname2_r, real::get().gethostbyname_r) {
        (_, Some(f), _) => unsafe { f(name, af, ret, buf, len, result, h_errnop) },
        (AF_INET, None, Some(f)) => unsafe { f(name, ret, buf, len, result, h_errnop) },
        _ => ENOSYS,
    };
    let not_found = |code: c_int| {
        // SAFETY: the caller's out-pointers.
        unsafe {
            *result = std::ptr::null_mut();
            if !h_errnop.is_null() {
                *h_errnop = code;
            }
        }
        // glibc (nss/getXXbyYY_r.c) reports "no such host" as 0 with a null result.
        0
    };
    guard(
        || match unsafe { lookup(name) } {
            (Lookup::Found(_), _, _) if af != AF_INET => not_found(NO_DATA),
            (Lookup::Found(ips), _, text) => unsafe { fill_r(&[text], &ips, ret, buf, len, result, h_errnop) },
            (Lookup::NotFound, _, _) => not_found(HOST_NOT_FOUND),
            (Lookup::Unavailable, _, _) => not_found(TRY_AGAIN),
            (Lookup::Real, _, _) => real(),
        },
        real,
    )
}

/// Names of an overlay address, if it is one and a member has it.
fn reverse(ip: Ipv4Addr) -> Option<Vec<String>> {
    let config = config::get()?;
    if !config.is_overlay(ip) {
        return None;
    }
    match control::ask(config, &ShimRequest::Reverse { ip }) {
        Some(ShimResponse::Names(names)) if !names.is_empty() => Some(names),
        _ => None,
    }
}

/// `gethostbyaddr`.
///
/// # Safety
/// Called by C with the arguments of `gethostbyaddr(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostbyaddr(addr: *const c_void, len: socklen_t, ty: c_int) -> *mut hostent {
    let real = || match real::get().gethostbyaddr {
        Some(f) => unsafe { f(addr, len, ty) },
        None => std::ptr::null_mut(),
    };
    guard(
        || {
            if ty != AF_INET || len != 4 || addr.is_null() {
                return real();
            }
            // SAFETY: 4 readable bytes (checked `len`).
            let ip = Ipv4Addr::from(unsafe { std::ptr::read_unaligned(addr.cast::<[u8; 4]>()) });
            match reverse(ip) {
                Some(names) => static_hostent(&names, &[ip]),
                None => real(),
            }
        },
        real,
    )
}

/// `gethostbyaddr_r`.
///
/// # Safety
/// Called by C with the arguments of `gethostbyaddr_r(3)`.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn gethostbyaddr_r(
    addr: *const c_void,
    len: socklen_t,
    ty: c_int,
    ret: *mut hostent,
    buf: *mut c_char,
    buflen: size_t,
    result: *mut *mut hostent,
    h_errnop: *mut c_int,
) -> c_int {
    let real = || match real::get().gethostbyaddr_r {
        Some(f) => unsafe { f(addr, len, ty, ret, buf, buflen, result, h_errnop) },
        None => ENOSYS,
    };
    guard(
        || {
            if ty != AF_INET || len != 4 || addr.is_null() {
                return real();
            }
            // SAFETY: 4 readable bytes (checked `len`).
            let ip = Ipv4Addr::from(unsafe { std::ptr::read_unaligned(addr.cast::<[u8; 4]>()) });
            let Some(names) = reverse(ip) else { return real() };
            // SAFETY: the caller's buffers and out-pointers.
            unsafe { fill_r(&names, &[ip], ret, buf, buflen, result, h_errnop) }
        },
        real,
    )
}

/// `getnameinfo`: an overlay address's host name is its replica name.
///
/// # Safety
/// Called by C with the arguments of `getnameinfo(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getnameinfo(
    sa: *const sockaddr,
    salen: socklen_t,
    host: *mut c_char,
    hostlen: socklen_t,
    serv: *mut c_char,
    servlen: socklen_t,
    flags: c_int,
) -> c_int {
    let Some(real) = real::get().getnameinfo else { return EAI_FAIL };
    let passthrough = || unsafe { real(sa, salen, host, hostlen, serv, servlen, flags) };
    guard(
        || {
            if host.is_null() || hostlen == 0 || flags & NI_NUMERICHOST != 0 {
                return passthrough();
            }
            // SAFETY: the caller's address.
            let Some((addr, _)) = (unsafe { inet::read(sa, salen) }) else { return passthrough() };
            let Some(names) = reverse(*addr.ip()) else {
                return if flags & NI_NAMEREQD != 0 && config::get().is_some_and(|c| c.is_overlay(*addr.ip())) {
                    EAI_NONAME
                } else {
                    passthrough()
                };
            };
            let name = names[0].as_bytes();
            if name.len() + 1 > hostlen as usize {
                return EAI_OVERFLOW;
            }
            if !serv.is_null() && servlen > 0 {
                let r = unsafe { real(sa, salen, std::ptr::null_mut(), 0, serv, servlen, flags) };
                if r != 0 {
                    return r;
                }
            }
            // SAFETY: `hostlen` bytes at `host`, length checked.
            unsafe {
                std::ptr::copy_nonoverlapping(name.as_ptr(), host.cast::<u8>(), name.len());
                *host.add(name.len()) = 0;
            }
            0
        },
        passthrough,
    )
}

/// `gethostname`: the node's `<service>-<index>`.
///
/// # Safety
/// Called by C with the arguments of `gethostname(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gethostname(name: *mut c_char, len: size_t) -> c_int {
    let Some(config) = config::get() else {
        return match real::get().gethostname {
            Some(f) => unsafe { f(name, len) },
            None => fail(ENOSYS),
        };
    };
    let bytes = config.hostname.as_bytes_with_nul();
    if name.is_null() {
        return fail(libc::EFAULT);
    }
    let n = bytes.len().min(len);
    // SAFETY: `len` writable bytes at `name`.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), name.cast::<u8>(), n) };
    if n < bytes.len() { fail(ENAMETOOLONG) } else { 0 }
}

/// `uname`: `nodename` is the node's hostname.
///
/// # Safety
/// Called by C with the arguments of `uname(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn uname(buf: *mut utsname) -> c_int {
    let Some(real) = real::get().uname else { return fail(ENOSYS) };
    // SAFETY: passed through.
    let r = unsafe { real(buf) };
    if r == 0
        && let Some(config) = config::get()
    {
        let bytes = config.hostname.as_bytes();
        // SAFETY: `buf` is the caller's valid utsname; we keep the final NUL.
        unsafe {
            let field = &mut (*buf).nodename;
            let n = bytes.len().min(field.len() - 1);
            field.fill(0);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), field.as_mut_ptr().cast::<u8>(), n);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostent_layout_and_erange() {
        let mut host: hostent = unsafe { std::mem::zeroed() };
        let mut buf = [0 as c_char; 256];
        let names = ["web-0".to_string(), "node-1".to_string()];
        let ips = [Ipv4Addr::new(100, 96, 0, 1), Ipv4Addr::new(100, 96, 0, 2)];
        unsafe { fill_hostent(&names, &ips, &mut host, buf.as_mut_ptr().wrapping_add(1), 255).unwrap() };
        unsafe {
            assert_eq!(CStr::from_ptr(host.h_name).to_str().unwrap(), "web-0");
            assert_eq!(CStr::from_ptr(*host.h_aliases).to_str().unwrap(), "node-1");
            assert!((*host.h_aliases.add(1)).is_null());
            let a1 = std::slice::from_raw_parts((*host.h_addr_list.add(1)).cast::<u8>(), 4);
            assert_eq!(a1, [100, 96, 0, 2]);
            assert!((*host.h_addr_list.add(2)).is_null());
        }
        let r = unsafe { fill_hostent(&names, &ips, &mut host, buf.as_mut_ptr(), 20) };
        assert_eq!(r, Err(ERANGE));
    }
}
