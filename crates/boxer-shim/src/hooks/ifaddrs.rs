//! `getifaddrs` shows the node as it looks on the overlay: a `boxer0`
//! interface with the overlay address first, then loopback, and nothing
//! else. Frameworks that pick "my IP" from the interfaces (the first
//! address that is not loopback) advertise the overlay address, and the
//! real interfaces of the lab device (`eth0`, with its `AF_PACKET` and IPv6
//! entries) or of the Lambda function, which peers cannot reach, are not
//! there to be picked.
//!
//! glibc allocates the whole list as one block and its `freeifaddrs` frees
//! that block through the list's head. The shim unlinks the entries it
//! hides from that block in place and puts its own entry in front; the
//! entry remembers libc's original head, and `freeifaddrs` frees both.
//! (musl frees entry by entry, so this relies on glibc, as the shim does
//! everywhere.)

use std::net::Ipv4Addr;

use libc::{AF_INET, IFF_LOOPBACK, IFF_RUNNING, IFF_UP, c_char, c_int, ifaddrs, sa_family_t, sockaddr_in};

use crate::{config, errno, fail, guard, real, set_errno};

/// Interface name shown to applications.
pub const INTERFACE: &[u8] = b"boxer0\0";

/// Marks our entry (checked with the name pointer, see [`is_ours`]).
const MAGIC: u64 = 0xb0c5_e12f_00ad_d125;

/// Our entry; `ifa` first so a pointer to it is a pointer to an `ifaddrs`.
#[repr(C)]
struct Entry {
    ifa: ifaddrs,
    name: [u8; 8],
    magic: u64,
    addr: sockaddr_in,
    netmask: sockaddr_in,
    /// The head of libc's list (null if libc had none): what libc's
    /// `freeifaddrs` must be given, whichever of its entries are still
    /// linked behind ours.
    libc_list: *mut ifaddrs,
}

fn sin(ip: Ipv4Addr) -> sockaddr_in {
    sockaddr_in {
        sin_family: AF_INET as sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
        sin_zero: [0; 8],
    }
}

/// Whether `ifa` is an entry we allocated: its name pointer points into its
/// own `name` field (glibc's entries keep the name elsewhere), and the magic
/// matches.
unsafe fn is_ours(ifa: *mut ifaddrs) -> bool {
    let entry = ifa.cast::<Entry>();
    // SAFETY: `ifa_name` is a field of every ifaddrs; the magic is read only
    // once the name pointer proved this is our (larger) allocation.
    unsafe {
        std::ptr::eq((*ifa).ifa_name.cast::<u8>(), std::ptr::addr_of!((*entry).name).cast::<u8>())
            && (*entry).magic == MAGIC
    }
}

/// Whether a libc entry belongs to the loopback interface (any family:
/// `AF_PACKET`, `AF_INET`, `AF_INET6`). glibc copies the link's flags into
/// every entry of the interface; the name covers a libc that does not.
unsafe fn is_loopback(ifa: *const ifaddrs) -> bool {
    // SAFETY: an entry of libc's list; its name, if set, is a C string.
    unsafe {
        (*ifa).ifa_flags & IFF_LOOPBACK as libc::c_uint != 0
            || (!(*ifa).ifa_name.is_null() && std::ffi::CStr::from_ptr((*ifa).ifa_name).to_bytes() == b"lo")
    }
}

/// The list the app sees: a new `boxer0` entry for `ip`/`netmask`, followed
/// by the loopback entries of libc's `list` (null: libc failed), which are
/// relinked in place; every other entry of `list` is unlinked. Null if the
/// entry cannot be allocated, in which case `list` is untouched.
///
/// # Safety
/// `list` must be null or a list from libc's `getifaddrs` that nobody else
/// uses; the result must be freed with [`freeifaddrs`].
unsafe fn node_view(ip: Ipv4Addr, netmask: Ipv4Addr, list: *mut ifaddrs) -> *mut ifaddrs {
    // SAFETY: calloc'd block of our own type; every pointer we set points
    // into it or to an entry of `list`, which stays allocated until
    // `freeifaddrs` frees it through `libc_list`.
    unsafe {
        let entry = libc::calloc(1, std::mem::size_of::<Entry>()).cast::<Entry>();
        if entry.is_null() {
            return std::ptr::null_mut();
        }
        std::ptr::copy_nonoverlapping(
            INTERFACE.as_ptr(),
            std::ptr::addr_of_mut!((*entry).name).cast::<u8>(),
            INTERFACE.len(),
        );
        (*entry).magic = MAGIC;
        (*entry).addr = sin(ip);
        (*entry).netmask = sin(netmask);
        (*entry).libc_list = list;
        (*entry).ifa.ifa_name = std::ptr::addr_of_mut!((*entry).name).cast::<c_char>();
        (*entry).ifa.ifa_flags = (IFF_UP | IFF_RUNNING) as libc::c_uint;
        (*entry).ifa.ifa_addr = std::ptr::addr_of_mut!((*entry).addr).cast();
        (*entry).ifa.ifa_netmask = std::ptr::addr_of_mut!((*entry).netmask).cast();
        // Keep libc's loopback entries in their order; the last kept one
        // ends the list (it may be our entry if libc had no loopback).
        let mut tail: *mut ifaddrs = std::ptr::addr_of_mut!((*entry).ifa);
        let mut cur = list;
        while !cur.is_null() {
            let next = (*cur).ifa_next;
            if is_loopback(cur) {
                (*tail).ifa_next = cur;
                tail = cur;
            }
            cur = next;
        }
        (*tail).ifa_next = std::ptr::null_mut();
        entry.cast::<ifaddrs>()
    }
}

/// Frees a list from [`node_view`] (ours: the entry and libc's whole list)
/// or, for any other list, hands it to `real_free`.
///
/// # Safety
/// `ifa` must be null or a list from `getifaddrs` (ours or libc's).
unsafe fn release(ifa: *mut ifaddrs, real_free: unsafe extern "C" fn(*mut ifaddrs)) {
    // SAFETY: see the contract; our entry owns libc's list.
    unsafe {
        if ifa.is_null() {
            return real_free(ifa);
        }
        if is_ours(ifa) {
            let list = (*ifa.cast::<Entry>()).libc_list;
            libc::free(ifa.cast());
            if !list.is_null() {
                real_free(list);
            }
        } else {
            real_free(ifa);
        }
    }
}

/// `getifaddrs`: `boxer0` with the overlay address, then loopback (see the
/// module). If libc fails, the list is `boxer0` alone; if our entry cannot
/// be allocated, the call fails with `ENOMEM` rather than show the real
/// interfaces.
///
/// # Safety
/// Called by C with the arguments of `getifaddrs(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getifaddrs(out: *mut *mut ifaddrs) -> c_int {
    let Some(real) = real::get().getifaddrs else { return fail(libc::ENOSYS) };
    // SAFETY: passed through.
    let r = unsafe { real(out) };
    let Some(config) = config::get() else { return r };
    if out.is_null() {
        return r;
    }
    let saved = errno();
    // SAFETY: on success libc's list is ours to change until it is freed.
    let list = if r == 0 { unsafe { *out } } else { std::ptr::null_mut() };
    let view = guard(
        // SAFETY: `list` is libc's fresh list or null.
        || unsafe { node_view(config.overlay_ip, config.network.netmask(), list) },
        // A panic cannot happen between relinking and returning (plain
        // pointer writes); if one happened before, `list` is whole.
        || list,
    );
    if view.is_null() {
        if r != 0 {
            // libc failed and so did we: libc's errno stands.
            set_errno(saved);
            return r;
        }
        // SAFETY: libc's list, never handed out.
        if let Some(free) = real::get().freeifaddrs {
            unsafe { free(list) };
        }
        unsafe { *out = std::ptr::null_mut() };
        return fail(libc::ENOMEM);
    }
    // SAFETY: the caller's out-pointer.
    unsafe { *out = view };
    set_errno(saved);
    0
}

/// `freeifaddrs`.
///
/// # Safety
/// Called by C with a list from `getifaddrs`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn freeifaddrs(ifa: *mut ifaddrs) {
    let Some(real) = real::get().freeifaddrs else { return };
    // SAFETY: `ifa` came from getifaddrs (ours or libc's).
    unsafe { release(ifa, real) }
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    use super::*;

    const OVERLAY: Ipv4Addr = Ipv4Addr::new(100, 96, 0, 7);
    const NETMASK: Ipv4Addr = Ipv4Addr::new(255, 240, 0, 0);

    fn real_free() -> unsafe extern "C" fn(*mut ifaddrs) {
        real::get().freeifaddrs.expect("libc has freeifaddrs")
    }

    /// (name, family, address if AF_INET) of every entry.
    unsafe fn entries(list: *mut ifaddrs) -> Vec<(String, i32, Option<Ipv4Addr>)> {
        let mut out = Vec::new();
        let mut cur = list;
        while !cur.is_null() {
            unsafe {
                let name = CStr::from_ptr((*cur).ifa_name).to_string_lossy().into_owned();
                let addr = (*cur).ifa_addr;
                let family = if addr.is_null() { -1 } else { i32::from((*addr).sa_family) };
                let ip = (family == AF_INET)
                    .then(|| Ipv4Addr::from(u32::from_be((*addr.cast::<sockaddr_in>()).sin_addr.s_addr)));
                out.push((name, family, ip));
                cur = (*cur).ifa_next;
            }
        }
        out
    }

    /// A list laid out as glibc does: `names.len()` entries in one calloc'd
    /// block (freed by freeing the head), names in static strings.
    fn one_block(names: &[(&'static CStr, bool)]) -> *mut ifaddrs {
        unsafe {
            let block = libc::calloc(names.len(), std::mem::size_of::<ifaddrs>()).cast::<ifaddrs>();
            assert!(!block.is_null());
            for (i, (name, loopback)) in names.iter().enumerate() {
                let e = block.add(i);
                (*e).ifa_name = name.as_ptr().cast_mut();
                (*e).ifa_flags = (IFF_UP | if *loopback { IFF_LOOPBACK } else { 0 }) as libc::c_uint;
                (*e).ifa_next = if i + 1 < names.len() { block.add(i + 1) } else { std::ptr::null_mut() };
            }
            block
        }
    }

    #[test]
    fn the_real_list_shrinks_to_boxer0_and_loopback() {
        // Tests run without the runtime's environment: the hook passes
        // libc's list through.
        let mut list = std::ptr::null_mut();
        assert_eq!(unsafe { getifaddrs(&mut list) }, 0);
        let all = unsafe { entries(list) };
        let loopback: Vec<_> = all.iter().filter(|(name, ..)| name == "lo").cloned().collect();
        let view = unsafe { node_view(OVERLAY, NETMASK, list) };
        assert!(!view.is_null());
        let shown = unsafe { entries(view) };
        assert_eq!(shown[0], ("boxer0".to_owned(), AF_INET, Some(OVERLAY)));
        assert_eq!(&shown[1..], &loopback[..], "every loopback entry, in libc's order, and nothing else");
        unsafe { freeifaddrs(view) };
    }

    #[test]
    fn the_head_is_freed_even_when_it_was_unlinked() {
        let list = one_block(&[(c"eth0", false), (c"lo", true), (c"eth0", false), (c"lo", true), (c"wlan0", false)]);
        let view = unsafe { node_view(OVERLAY, NETMASK, list) };
        let names: Vec<String> = unsafe { entries(view) }.into_iter().map(|e| e.0).collect();
        assert_eq!(names, ["boxer0", "lo", "lo"]);
        assert!(unsafe { is_ours(view) } && !unsafe { is_ours(list) });
        // Frees our entry and the block through its original head (a
        // double or wrong free would abort the test binary).
        unsafe { release(view, real_free()) };
    }

    #[test]
    fn boxer0_alone_when_libc_has_nothing_to_keep_or_failed() {
        let list = one_block(&[(c"eth0", false), (c"eth1", false)]);
        let view = unsafe { node_view(OVERLAY, NETMASK, list) };
        assert_eq!(unsafe { entries(view) }, [("boxer0".to_owned(), AF_INET, Some(OVERLAY))]);
        unsafe { release(view, real_free()) };

        let view = unsafe { node_view(OVERLAY, NETMASK, std::ptr::null_mut()) };
        assert_eq!(unsafe { entries(view) }, [("boxer0".to_owned(), AF_INET, Some(OVERLAY))]);
        unsafe { release(view, real_free()) };
    }

    #[test]
    fn a_loopback_interface_is_kept_by_its_flag_or_its_name() {
        let list = one_block(&[(c"lo", false), (c"lo0", true), (c"eth0", false)]);
        let view = unsafe { node_view(OVERLAY, NETMASK, list) };
        let names: Vec<String> = unsafe { entries(view) }.into_iter().map(|e| e.0).collect();
        assert_eq!(names, ["boxer0", "lo", "lo0"]);
        unsafe { release(view, real_free()) };
    }
}
