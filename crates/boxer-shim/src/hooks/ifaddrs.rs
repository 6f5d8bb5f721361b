//! `getifaddrs` lists a `boxer0` interface with the overlay address first, so
//! frameworks that pick "my IP" from the interfaces advertise the overlay
//! address. `freeifaddrs` frees that entry and hands the rest to libc.

use std::net::Ipv4Addr;

use libc::{AF_INET, IFF_RUNNING, IFF_UP, c_char, c_int, ifaddrs, sa_family_t, sockaddr_in};

use crate::{config, fail, guard, real};

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

/// `getifaddrs`.
///
/// # Safety
/// Called by C with the arguments of `getifaddrs(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getifaddrs(out: *mut *mut ifaddrs) -> c_int {
    let Some(real) = real::get().getifaddrs else { return fail(libc::ENOSYS) };
    // SAFETY: passed through.
    let r = unsafe { real(out) };
    if r != 0 || out.is_null() {
        return r;
    }
    let Some(config) = config::get() else { return r };
    guard(
        || {
            // SAFETY: calloc'd block of our own type; every pointer we set points into it.
            unsafe {
                let entry = libc::calloc(1, std::mem::size_of::<Entry>()).cast::<Entry>();
                if entry.is_null() {
                    return;
                }
                std::ptr::copy_nonoverlapping(
                    INTERFACE.as_ptr(),
                    std::ptr::addr_of_mut!((*entry).name).cast::<u8>(),
                    INTERFACE.len(),
                );
                (*entry).magic = MAGIC;
                (*entry).addr = sin(config.overlay_ip);
                (*entry).netmask = sin(config.network.netmask());
                (*entry).ifa.ifa_next = *out;
                (*entry).ifa.ifa_name = std::ptr::addr_of_mut!((*entry).name).cast::<c_char>();
                (*entry).ifa.ifa_flags = (IFF_UP | IFF_RUNNING) as libc::c_uint;
                (*entry).ifa.ifa_addr = std::ptr::addr_of_mut!((*entry).addr).cast();
                (*entry).ifa.ifa_netmask = std::ptr::addr_of_mut!((*entry).netmask).cast();
                *out = entry.cast::<ifaddrs>();
            }
        },
        || (),
    );
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
    unsafe {
        if !ifa.is_null() && is_ours(ifa) {
            let rest = (*ifa).ifa_next;
            libc::free(ifa.cast());
            if !rest.is_null() {
                real(rest);
            }
        } else {
            real(ifa);
        }
    }
}
