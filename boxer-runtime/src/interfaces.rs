//! The node's own addresses, announced to peers as local candidates.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Candidate addresses of a socket bound to `bound`: the address itself, or
/// for an unspecified bind every IPv4 address of an interface that is up,
/// loopback excepted (a peer's loopback is its own).
pub fn candidates(bound: SocketAddr) -> Vec<SocketAddr> {
    if !bound.ip().is_unspecified() {
        return vec![bound];
    }
    let mut out: Vec<SocketAddr> = ipv4_addresses()
        .into_iter()
        .filter(|ip| !ip.is_loopback())
        .map(|ip| SocketAddr::new(IpAddr::V4(ip), bound.port()))
        .collect();
    out.dedup();
    out.truncate(MAX_CANDIDATES);
    out
}

/// Most local candidates announced (the rendezvous refuses more than 16).
const MAX_CANDIDATES: usize = 8;

fn ipv4_addresses() -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, which we walk read-only and free once.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return out;
        }
        let mut cur = list;
        while !cur.is_null() {
            let ifa = &*cur;
            let up = ifa.ifa_flags & libc::IFF_UP as u32 != 0;
            if up && !ifa.ifa_addr.is_null() && i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                out.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
            cur = ifa.ifa_next;
        }
        libc::freeifaddrs(list);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_specific_bind_is_its_own_candidate() {
        let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(candidates(a), vec![a]);
    }

    #[test]
    fn an_unspecified_bind_lists_interfaces_without_loopback() {
        let list = candidates("0.0.0.0:4000".parse().unwrap());
        assert!(list.iter().all(|a| !a.ip().is_loopback() && a.port() == 4000), "{list:?}");
    }
}
