//! Control messages of outgoing datagrams: the `IP_PKTINFO` that makes a
//! wildcard-bound socket's overlay datagrams leave from `L`, appended after
//! the app's own control messages, and the rewritten message header that
//! points at it.
//!
//! The app's control buffer is walked the way the kernel walks it
//! ([`scan`]), so the shim's message lands exactly where the kernel looks
//! for the next one, whatever spare bytes the app passed after its last.

use std::net::{Ipv4Addr, SocketAddrV4};

use libc::{IPPROTO_IP, IPPROTO_IPV6, c_int, c_uint, cmsghdr, msghdr, sockaddr_storage, socklen_t};

use crate::inet::{self, Family};

/// Size of a control message header (`CMSG_LEN(0)`).
const HDR: usize = std::mem::size_of::<cmsghdr>();

/// Rounds up to the alignment of a control message header (the kernel's
/// `CMSG_ALIGN`: a multiple of `sizeof(long)`).
fn cmsg_align(n: usize) -> usize {
    let a = std::mem::align_of::<cmsghdr>().max(std::mem::size_of::<usize>());
    n.div_ceil(a) * a
}

/// What an app's control buffer holds, walked as the kernel walks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AppControl {
    /// Where the app's last complete message ends (0: no message).
    end: usize,
    /// Whether one of them chooses the source address (`IP_PKTINFO` or
    /// `IPV6_PKTINFO`).
    pktinfo: bool,
}

/// Walks the app's control bytes like the kernel's `for_each_cmsghdr` with
/// `CMSG_OK`: a header is read wherever a whole one fits after the previous
/// message (its length rounded up to [`cmsg_align`]); fewer bytes than a
/// header after the last message are spare and ignored. `None` if a header
/// is malformed (`cmsg_len` shorter than a header or running past the
/// buffer): the kernel fails such a send with `EINVAL`, so the caller
/// leaves the app's control buffer as it is and lets the kernel say so.
/// Never reads past `app`.
fn scan(app: &[u8]) -> Option<AppControl> {
    let mut found = AppControl { end: 0, pktinfo: false };
    let mut off: usize = 0;
    while off.checked_add(HDR).is_some_and(|next| next <= app.len()) {
        // SAFETY: `HDR` bytes at `off` are within `app` (checked above); the
        // app's buffer need not be aligned.
        let hdr = unsafe { std::ptr::read_unaligned(app.as_ptr().add(off).cast::<cmsghdr>()) };
        #[allow(clippy::unnecessary_cast)] // `size_t` in glibc, `socklen_t` elsewhere
        let len = hdr.cmsg_len as usize;
        if len < HDR || len > app.len() - off {
            return None;
        }
        let (level, ty) = (hdr.cmsg_level, hdr.cmsg_type);
        found.pktinfo |=
            (level == IPPROTO_IP && ty == libc::IP_PKTINFO) || (level == IPPROTO_IPV6 && ty == libc::IPV6_PKTINFO);
        found.end = off + len;
        off += cmsg_align(len);
    }
    Some(found)
}

/// A control buffer: the app's control messages (`app`, copied; it must
/// end where the last complete message ends, see [`scan`]) followed by an
/// `IP_PKTINFO` message that sets the datagram's source address to `src`.
/// Returns the buffer (8-byte aligned) and its length in bytes.
///
/// `SOL_IP`/`IP_PKTINFO` also works on an `AF_INET6` socket sending to an
/// IPv4-mapped address: the kernel hands such datagrams to the IPv4 path.
fn pktinfo_control(app: &[u8], src: Ipv4Addr) -> (Vec<u64>, usize) {
    let payload = std::mem::size_of::<libc::in_pktinfo>() as c_uint;
    let start = cmsg_align(app.len());
    // SAFETY: pure arithmetic.
    let total = start + unsafe { libc::CMSG_SPACE(payload) } as usize;
    let mut buf = vec![0u64; total.div_ceil(8)];
    let bytes = buf.as_mut_ptr().cast::<u8>();
    // SAFETY: `buf` holds `total` bytes; `app` fits before `start`; the
    // header at `start` is aligned (`start` is a multiple of 8, `buf` is
    // 8-aligned) and its payload fits in CMSG_SPACE.
    unsafe {
        std::ptr::copy_nonoverlapping(app.as_ptr(), bytes, app.len());
        let cmsg = bytes.add(start).cast::<cmsghdr>();
        (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as _;
        (*cmsg).cmsg_level = IPPROTO_IP;
        (*cmsg).cmsg_type = libc::IP_PKTINFO;
        let info = libc::in_pktinfo {
            ipi_ifindex: 0,
            ipi_spec_dst: libc::in_addr { s_addr: u32::from(src).to_be() },
            ipi_addr: libc::in_addr { s_addr: 0 },
        };
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in_pktinfo>(), info);
    }
    (buf, total)
}

/// The app's control bytes; `None` when the kernel would not read them
/// (a null buffer of non-zero length: `EFAULT`; more than `INT_MAX` bytes:
/// `ENOBUFS`), so the send is left to fail as it would without the shim.
///
/// # Safety
/// `hdr`'s control pointer must be null or point to `msg_controllen` bytes.
unsafe fn control_bytes(hdr: &msghdr) -> Option<&[u8]> {
    // `msg_controllen` is a `size_t` in glibc but a `socklen_t` elsewhere.
    #[allow(clippy::unnecessary_cast)]
    let len = hdr.msg_controllen as usize;
    if len == 0 {
        return Some(&[]);
    }
    if hdr.msg_control.is_null() || len > c_int::MAX as usize {
        return None;
    }
    // SAFETY: the caller's guarantee.
    Some(unsafe { std::slice::from_raw_parts(hdr.msg_control.cast::<u8>(), len) })
}

/// Storage a rewritten message points into; must outlive the send.
pub(super) struct Rewrite {
    name: sockaddr_storage,
    name_len: socklen_t,
    control: Option<(Vec<u64>, usize)>,
}

impl Rewrite {
    /// The new destination `to` and, with `pin`, a control buffer with the
    /// app's messages plus an `IP_PKTINFO` source of `pin`. No control
    /// buffer is made (the app's is used as is) when the app chose a source
    /// itself (its choice wins) or its control buffer is malformed (the
    /// kernel refuses the send either way).
    ///
    /// # Safety
    /// `app` must be a valid message (as `sendmsg` requires).
    pub(super) unsafe fn new(app: &msghdr, to: SocketAddrV4, family: Family, pin: Option<Ipv4Addr>) -> Self {
        let (name, name_len) = inet::build(to, family);
        let control = pin.and_then(|src| {
            // SAFETY: the caller's valid message.
            let bytes = unsafe { control_bytes(app) }?;
            let found = scan(bytes)?;
            (!found.pktinfo).then(|| pktinfo_control(&bytes[..found.end], src))
        });
        Self { name, name_len, control }
    }

    /// A copy of `app` pointing at this rewrite's name (and control
    /// buffer); the app's data (`msg_iov`) and flags are shared.
    pub(super) fn apply(&mut self, app: &msghdr) -> msghdr {
        let mut hdr = *app;
        hdr.msg_name = (&raw mut self.name).cast();
        hdr.msg_namelen = self.name_len;
        if let Some((buf, len)) = &mut self.control {
            hdr.msg_control = buf.as_mut_ptr().cast();
            hdr.msg_controllen = *len as _;
        }
        hdr
    }
}

#[cfg(test)]
mod tests {
    use std::net::{SocketAddr, UdpSocket};
    use std::os::fd::AsRawFd;

    use libc::iovec;

    use super::*;
    use crate::{errno, real};

    const L: Ipv4Addr = Ipv4Addr::new(127, 100, 0, 1);

    /// Walks a control buffer with the libc macros: (level, type, data) per
    /// message.
    fn cmsgs(buf: &mut [u64], len: usize) -> Vec<(c_int, c_int, Vec<u8>)> {
        let mut hdr: msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_control = buf.as_mut_ptr().cast();
        hdr.msg_controllen = len as _;
        let mut out = Vec::new();
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&hdr);
            while !c.is_null() {
                let data_len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = std::slice::from_raw_parts(libc::CMSG_DATA(c), data_len).to_vec();
                out.push(((*c).cmsg_level, (*c).cmsg_type, data));
                c = libc::CMSG_NXTHDR(&hdr, c);
            }
        }
        out
    }

    /// An app control buffer of `cap` u64s with one `IP_TOS` message (20
    /// bytes: not a multiple of 8, as apps may pass it) and `0xff` after it.
    fn tos_control(cap: usize) -> (Vec<u64>, usize) {
        let mut buf = vec![u64::MAX; cap.max(3)];
        let len = unsafe { libc::CMSG_LEN(4) } as usize;
        unsafe {
            let c = buf.as_mut_ptr().cast::<cmsghdr>();
            (*c).cmsg_len = len as _;
            (*c).cmsg_level = IPPROTO_IP;
            (*c).cmsg_type = libc::IP_TOS;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<c_int>(), 0x10);
        }
        (buf, len)
    }

    fn bytes(buf: &[u64], len: usize) -> &[u8] {
        assert!(len <= buf.len() * 8);
        unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), len) }
    }

    /// A message with the given control buffer and nothing else.
    fn with_control(control: *mut u64, len: usize) -> msghdr {
        let mut hdr: msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_control = control.cast();
        hdr.msg_controllen = len as _;
        hdr
    }

    const TO: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 100, 0, 1), 41000);

    /// The control messages a rewrite of `app` sends, or `None` if it kept
    /// the app's control buffer.
    fn rewritten(app: &msghdr) -> Option<Vec<(c_int, c_int, Vec<u8>)>> {
        let mut rw = unsafe { Rewrite::new(app, TO, Family::V4, Some(L)) };
        let hdr = rw.apply(app);
        if hdr.msg_control == app.msg_control {
            assert_eq!(hdr.msg_controllen, app.msg_controllen);
            return None;
        }
        let (buf, len) = rw.control.as_mut().unwrap();
        #[allow(clippy::unnecessary_cast)] // `socklen_t` outside glibc
        let controllen = hdr.msg_controllen as usize;
        assert_eq!(controllen, *len);
        Some(cmsgs(buf, *len))
    }

    fn is_pktinfo_of_l(m: &(c_int, c_int, Vec<u8>)) -> bool {
        (m.0, m.1) == (IPPROTO_IP, libc::IP_PKTINFO) && m.2[4..8] == L.octets()
    }

    #[test]
    fn pktinfo_is_appended_after_the_apps_messages() {
        let (mut alone, len) = pktinfo_control(&[], L);
        let got = cmsgs(&mut alone, len);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].0, got[0].1), (IPPROTO_IP, libc::IP_PKTINFO));
        assert_eq!(&got[0].2[4..8], &L.octets(), "ipi_spec_dst is the source");

        let (app, app_len) = tos_control(4);
        let (mut both, len) = pktinfo_control(bytes(&app, app_len), L);
        assert_eq!(len % 8, 0);
        let got = cmsgs(&mut both, len);
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].0, got[0].1, got[0].2.clone()), (IPPROTO_IP, libc::IP_TOS, 0x10i32.to_ne_bytes().to_vec()));
        assert_eq!((got[1].0, got[1].1), (IPPROTO_IP, libc::IP_PKTINFO));
        assert_eq!(&got[1].2[4..8], &L.octets());
    }

    #[test]
    fn spare_bytes_after_the_last_message_are_not_a_message() {
        let (mut app, tos_len) = tos_control(8);
        let aligned = cmsg_align(tos_len);
        // Spare bytes the kernel ignores: fewer than a header after the
        // message's aligned end, whatever they hold (here 0xff).
        for spare in [1, 4, aligned - tos_len, aligned - tos_len + 1, aligned - tos_len + HDR - 1] {
            let len = tos_len + spare;
            assert_eq!(scan(bytes(&app, len)), Some(AppControl { end: tos_len, pktinfo: false }), "{spare}");
            let got = rewritten(&with_control(app.as_mut_ptr(), len)).expect("pinned");
            assert_eq!(got.len(), 2, "{spare}: {got:?}");
            assert_eq!((got[0].0, got[0].1), (IPPROTO_IP, libc::IP_TOS));
            assert!(is_pktinfo_of_l(&got[1]), "{spare}: {got:?}");
        }
        // The shim's message starts right after the app's, aligned.
        let mut rw = unsafe { Rewrite::new(&with_control(app.as_mut_ptr(), tos_len + 6), TO, Family::V4, Some(L)) };
        let (buf, len) = rw.control.as_mut().unwrap();
        assert_eq!(
            *len,
            aligned + unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::in_pktinfo>() as u32) } as usize
        );
        assert_eq!(&bytes(buf, *len)[..tos_len], bytes(&app, tos_len), "the app's message is copied");
        assert_eq!(&bytes(buf, *len)[tos_len..aligned], &[0; 4][..aligned - tos_len], "padding, not the spare bytes");
        // A whole header's worth of spare bytes is read as a header: 0xff
        // is a malformed one, and the app's buffer is left to the kernel.
        let len = aligned + HDR;
        assert_eq!(scan(bytes(&app, len)), None);
        assert_eq!(rewritten(&with_control(app.as_mut_ptr(), len)), None);
    }

    #[test]
    fn empty_or_headerless_control_gets_pktinfo_alone() {
        let mut spare = [u64::MAX; 2];
        for (control, len) in [(std::ptr::null_mut(), 0), (spare.as_mut_ptr(), 0), (spare.as_mut_ptr(), HDR - 1)] {
            let got = rewritten(&with_control(control, len)).expect("pinned");
            assert_eq!(got.len(), 1, "{len}");
            assert!(is_pktinfo_of_l(&got[0]));
        }
        // A null buffer of non-zero length is the kernel's EFAULT to give.
        assert_eq!(rewritten(&with_control(std::ptr::null_mut(), 8)), None);
        assert_eq!(scan(&[]), Some(AppControl { end: 0, pktinfo: false }));
    }

    #[test]
    fn malformed_lengths_leave_the_apps_control_alone() {
        let (mut app, tos_len) = tos_control(8);
        let set_len = |app: &mut [u64], at: usize, len: usize| unsafe {
            (*app.as_mut_ptr().cast::<u8>().add(at).cast::<cmsghdr>()).cmsg_len = len as _;
        };
        let buf_len = 8 * app.len();
        for bad in [0, 1, HDR - 1, buf_len + 1, usize::MAX] {
            set_len(&mut app, 0, bad);
            assert_eq!(scan(bytes(&app, buf_len)), None, "cmsg_len {bad}");
            assert_eq!(rewritten(&with_control(app.as_mut_ptr(), buf_len)), None, "cmsg_len {bad}");
        }
        // Exactly the buffer: one message, fine.
        set_len(&mut app, 0, buf_len);
        assert_eq!(scan(bytes(&app, buf_len)), Some(AppControl { end: buf_len, pktinfo: false }));
        // A good first message and a malformed second one.
        set_len(&mut app, 0, tos_len);
        let second = cmsg_align(tos_len);
        set_len(&mut app, second, buf_len - second + 1);
        assert_eq!(scan(bytes(&app, buf_len)), None);
        set_len(&mut app, second, buf_len - second);
        assert_eq!(scan(bytes(&app, buf_len)), Some(AppControl { end: buf_len, pktinfo: false }));
    }

    #[test]
    fn rewrite_copies_the_header_and_leaves_the_apps_alone() {
        let (mut control, control_len) = tos_control(4);
        let mut data = *b"hello";
        let mut iov = iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
        let (mut name, name_len) = inet::build("100.96.0.5:53".parse().unwrap(), Family::V6Mapped);
        let mut app: msghdr = unsafe { std::mem::zeroed() };
        app.msg_name = (&raw mut name).cast();
        app.msg_namelen = name_len;
        app.msg_iov = &mut iov;
        app.msg_iovlen = 1;
        app.msg_control = control.as_mut_ptr().cast();
        app.msg_controllen = control_len as _;
        app.msg_flags = 0x40;
        let before = app;
        let has_pktinfo = |hdr: &msghdr| scan(unsafe { control_bytes(hdr) }.unwrap()).unwrap().pktinfo;

        let mut rw = unsafe { Rewrite::new(&app, TO, Family::V6Mapped, Some(L)) };
        let hdr = rw.apply(&app);
        assert_eq!(unsafe { inet::read(hdr.msg_name.cast(), hdr.msg_namelen) }, Some((TO, Family::V6Mapped)));
        assert_eq!(hdr.msg_iov, app.msg_iov);
        assert_eq!(hdr.msg_iovlen, 1);
        assert_eq!(hdr.msg_flags, 0x40);
        assert_ne!(hdr.msg_control, app.msg_control, "a new control buffer");
        assert!(has_pktinfo(&hdr));
        assert!(!has_pktinfo(&app));
        // The app's header, name and control buffer are untouched.
        assert_eq!(
            (app.msg_name, app.msg_namelen, app.msg_control),
            (before.msg_name, before.msg_namelen, before.msg_control)
        );
        assert_eq!(
            unsafe { inet::read(app.msg_name.cast(), app.msg_namelen) },
            Some(("100.96.0.5:53".parse().unwrap(), Family::V6Mapped))
        );
        assert_eq!(cmsgs(&mut control, control_len).len(), 1);

        // Without pinning, or when the app pinned a source itself, the
        // app's control buffer is used as is.
        let mut rw = unsafe { Rewrite::new(&app, TO, Family::V6Mapped, None) };
        assert_eq!(rw.apply(&app).msg_control, app.msg_control);
        let (mut pinned, pinned_len) = pktinfo_control(&[], "127.0.0.1".parse().unwrap());
        app.msg_control = pinned.as_mut_ptr().cast();
        app.msg_controllen = pinned_len as _;
        let mut rw = unsafe { Rewrite::new(&app, TO, Family::V4, Some(L)) };
        let hdr = rw.apply(&app);
        assert_eq!(hdr.msg_control, app.msg_control);
        assert_eq!(hdr.msg_namelen as usize, std::mem::size_of::<libc::sockaddr_in>());
    }

    /// The kernel behaviour the pinning relies on, on loopback only: a
    /// wildcard-bound socket's datagram with `IP_PKTINFO` leaves from the
    /// pinned loopback address, for `AF_INET` and for `AF_INET6` sending to
    /// an IPv4-mapped address, also after an app's control message followed
    /// by spare bytes (which the kernel would read as a header if the shim's
    /// message were placed after them).
    #[test]
    fn pinned_sends_leave_from_the_node_address() {
        let node = Ipv4Addr::new(127, 100, 0, 77);
        let rx = UdpSocket::bind((node, 0)).unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let to = match rx.local_addr().unwrap() {
            SocketAddr::V4(a) => a,
            _ => unreachable!(),
        };
        let sendmsg = real::get().sendmsg.unwrap();
        for (tx, family) in [
            (UdpSocket::bind("0.0.0.0:0").unwrap(), Family::V4),
            (UdpSocket::bind("[::]:0").unwrap(), Family::V6Mapped),
        ] {
            for spare in [None, Some(6)] {
                let mut data = *b"pinned";
                let mut iov = iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
                let (mut control, tos_len) = tos_control(4);
                let mut app = match spare {
                    Some(spare) => with_control(control.as_mut_ptr(), tos_len + spare),
                    None => with_control(std::ptr::null_mut(), 0),
                };
                app.msg_iov = &mut iov;
                app.msg_iovlen = 1;
                let mut rw = unsafe { Rewrite::new(&app, to, family, Some(node)) };
                let hdr = rw.apply(&app);
                let sent = unsafe { sendmsg(tx.as_raw_fd(), &hdr, 0) };
                assert_eq!(sent, 6, "{family:?} {spare:?}: errno {}", errno());
                let mut buf = [0u8; 16];
                let (n, from) = rx.recv_from(&mut buf).unwrap();
                assert_eq!(&buf[..n], b"pinned");
                assert_eq!(from.ip(), std::net::IpAddr::V4(node), "{family:?} {spare:?}");
                assert_eq!(from.port(), tx.local_addr().unwrap().port());
            }
        }
    }
}
