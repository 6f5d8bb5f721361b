//! Fuzz targets for every decoder of the wire protocol: what a peer, the
//! rendezvous, a runtime, the shim or a Lambda event may send.
//!
//! Each target runs for a bounded time as an ordinary test (bolero's
//! `check!` on stable); docs/security.md says how to run them longer. Three
//! properties, wherever they apply:
//!
//! * any bytes: decoding never panics, and allocates in proportion to the
//!   input (never on the word of a length prefix);
//! * any bytes that decode: the message re-encodes, no longer than it came,
//!   and decodes to itself;
//! * any well-formed message ([`boxer_proto::fuzz`]): `decode(encode(x)) == x`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt::Debug;
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};

use bolero::{check, produce};
use boxer_proto::control::{NodeMessage, Request, ServerMessage};
use boxer_proto::disco::{self, DiscoKey, KEY_LEN, MAX_PROBE_LEN, Probe, ProbeError, TAG_LEN, TX_LEN};
use boxer_proto::fuzz::{self, Input};
use boxer_proto::lambda::{ErrorBody, NodeEvent, NodeReport};
use boxer_proto::membership::{ApplyError, MembershipSnapshot};
use boxer_proto::names::{self, NameQuery};
use boxer_proto::peer::{StreamError, StreamHeader, UDP_HEADER_LEN, UdpHeader};
use boxer_proto::shim::{self, ShimRequest, ShimResponse};
use boxer_proto::{Fingerprint, FrameError, Hello, MAX_FRAME_LEN, Membership, MembershipEvent, NodeId, frame, relay};
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::Sha256;
use tokio::io::{AsyncRead, ReadBuf};

/// Largest fuzz input: room for messages of several members, lines or
/// names, and for streams of several frames.
const MAX_INPUT: usize = 1024;

/// `check!` over byte inputs of up to [`MAX_INPUT`] bytes (bolero's own
/// default stops at 64), for [`fuzz::test_time`].
macro_rules! fuzz_bytes {
    ($body:expr) => {
        check!()
            .with_generator(produce::<Vec<u8>>().with().len(0usize..=MAX_INPUT))
            .with_test_time(fuzz::test_time())
            .for_each($body)
    };
}

// ---------------------------------------------------------------------------
// Allocation accounting: what one call allocates on its own thread.

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The system allocator, counting the bytes each thread holds and the most
/// it held, so a target can bound what one decode allocates while other
/// tests run on other threads.
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn account(delta: isize) {
    // `try_with`: the allocator also runs while thread-locals are torn down.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call goes to `System` unchanged; the counting has no effect
// on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            account(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            account(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        account(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            account(new_size as isize - layout.size() as isize);
        }
        p
    }
}

/// Runs `f`; also returns the most it had allocated at once (on this thread).
fn peak_allocated<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(start));
    let out = f();
    let peak = PEAK.with(Cell::get);
    (out, usize::try_from(peak - start).unwrap_or(0))
}

/// What decoding may allocate per input byte: one byte can be a whole empty
/// string of a `Vec<String>` (24 bytes), doubled while the vector grows.
const ALLOC_PER_BYTE: usize = 48;

/// What decoding may allocate whatever the input: serde reserves at most
/// 1 MiB for a vector on the word of its length prefix, and messages nest
/// vectors two deep (members, and each member's addresses).
const ALLOC_FIXED: usize = 3 << 20;

fn check_allocation(what: &str, input_len: usize, peak: usize) {
    let bound = ALLOC_FIXED + ALLOC_PER_BYTE * input_len;
    assert!(peak <= bound, "{what}: {input_len} input bytes allocated {peak} bytes at once (bound {bound})");
}

// ---------------------------------------------------------------------------
// Readers that hand out the input a few bytes at a time.

/// A stream of `data` delivered `chunk` bytes per read, and, if `interrupt`,
/// with an `Interrupted` error before every other read (as a signal does).
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
    interrupt: bool,
    interrupted: bool,
}

impl<'a> Chunked<'a> {
    /// The stream of `data` shaped by `shape` (chunk size and interruptions).
    fn new(data: &'a [u8], shape: u8) -> Self {
        Self { data, chunk: usize::from(shape % 16) + 1, interrupt: shape & 0x10 != 0, interrupted: false }
    }

    fn next_chunk(&mut self, room: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(self.chunk.min(room).min(self.data.len()));
        self.data = rest;
        head
    }
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.interrupt && !self.interrupted {
            self.interrupted = true;
            return Err(io::ErrorKind::Interrupted.into());
        }
        self.interrupted = false;
        let head = self.next_chunk(buf.len());
        buf[..head.len()].copy_from_slice(head);
        Ok(head.len())
    }
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let head = self.next_chunk(buf.remaining());
        buf.put_slice(head);
        Poll::Ready(Ok(()))
    }
}

/// Runs a future over in-memory readers, which are never pending.
fn ready<F: Future>(f: F) -> F::Output {
    match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("an in-memory read was pending"),
    }
}

// ---------------------------------------------------------------------------
// Postcard frames: every message type read from a stream.

/// `msg` framed, read back whole and cut short.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(msg: &T, cut: usize) {
    let bytes = frame::encode(msg).unwrap_or_else(|e| panic!("{msg:?} does not encode: {e}"));
    assert!(bytes.len() <= MAX_FRAME_LEN + 4);
    let back: T = frame::read_sync(&mut &bytes[..]).unwrap_or_else(|e| panic!("{msg:?} does not decode: {e}"));
    assert_eq!(&back, msg);
    let back: T = ready(frame::read(&mut &bytes[..])).unwrap_or_else(|e| panic!("{msg:?} does not decode: {e}"));
    assert_eq!(&back, msg);
    let cut = cut % bytes.len();
    match frame::read_sync::<T, _>(&mut &bytes[..cut]) {
        Err(FrameError::Closed) => assert_eq!(cut, 0),
        Err(FrameError::Truncated { .. }) => assert!(cut > 0),
        other => panic!("{msg:?} cut to {cut} of {} bytes read as {other:?}", bytes.len()),
    }
}

/// The postcard properties for message type `T`, with `bytes` both as a
/// payload and as the choices of a well-formed message.
fn postcard_message<T: Serialize + DeserializeOwned + PartialEq + Debug>(bytes: &[u8]) -> Option<T> {
    let what = std::any::type_name::<T>();
    let (decoded, peak) = peak_allocated(|| frame::decode::<T>(bytes));
    check_allocation(what, bytes.len(), peak);
    let cut = bytes.first().map_or(0, |&b| usize::from(b));
    if let Ok(msg) = &decoded {
        // A decoded message can be passed on: it re-encodes within the frame
        // it came in (postcard re-encodes canonically, never longer).
        let again = frame::encode(msg).unwrap_or_else(|e| panic!("decoded {msg:?} does not encode: {e}"));
        assert!(again.len() <= bytes.len() + 4, "{msg:?} grew from {} to {} bytes", bytes.len(), again.len() - 4);
        round_trip(msg, cut);
    }
    let mut input = Input::new(bytes);
    let made = input.arbitrary::<T>();
    if let Some(msg) = &made {
        round_trip(msg, cut);
        // A near miss: the message with one byte changed, dropped or added,
        // as a hostile edit would leave it; it gets past the first bytes
        // where random input stops.
        let mut near = frame::encode(msg).expect("round-tripped")[4..].to_vec();
        let at = input.number(4) as usize % (near.len() + 1);
        match input.byte() % 3 {
            0 if at < near.len() => near[at] ^= input.byte().max(1),
            1 => near.truncate(at),
            _ => near.insert(at, input.byte()),
        }
        let (decoded, peak) = peak_allocated(|| frame::decode::<T>(&near));
        check_allocation(what, near.len(), peak);
        if let Ok(msg) = decoded {
            let again = frame::encode(&msg).unwrap_or_else(|e| panic!("decoded {msg:?} does not encode: {e}"));
            assert!(again.len() <= near.len() + 4, "{msg:?} grew from {} to {} bytes", near.len(), again.len() - 4);
            round_trip(&msg, cut);
        }
    }
    decoded.ok().or(made)
}

#[test]
fn hello() {
    fuzz_bytes!(|bytes: &Vec<u8>| {
        if let Some(hello) = postcard_message::<Hello>(bytes)
            && hello.check().is_ok()
        {
            assert_eq!(hello, Hello::current());
        }
    });
}

#[test]
fn request() {
    fuzz_bytes!(|bytes: &Vec<u8>| {
        postcard_message::<Request>(bytes);
    });
}

#[test]
fn node_message() {
    fuzz_bytes!(|bytes: &Vec<u8>| {
        if let Some(msg) = postcard_message::<NodeMessage>(bytes) {
            let _ = msg.check_limits();
        }
    });
}

#[test]
fn server_message() {
    fuzz_bytes!(|bytes: &Vec<u8>| {
        if let Some(ServerMessage::Joined(joined)) = postcard_message::<ServerMessage>(bytes) {
            let _ = Membership::from_snapshot("c", joined.snapshot).len();
        }
    });
}

#[test]
fn stream_header() {
    fuzz_bytes!(|bytes: &Vec<u8>| {
        postcard_message::<StreamHeader>(bytes);
        if let Some(code) = fuzz::arbitrary::<u64>(bytes)
            && let Some(e) = StreamError::from_code(code)
        {
            assert_eq!(u64::from(e.code()), code);
        }
    });
}

#[test]
fn shim_messages() {
    fuzz_bytes!(|bytes: &Vec<u8>| {
        postcard_message::<ShimRequest>(bytes);
        postcard_message::<ShimResponse>(bytes);
        let mut input = Input::new(bytes);
        let id = input.number(4) as u32;
        let loopback = shim::loopback_for(id);
        assert_eq!(loopback.octets()[..2], [127, 100]);
        let control = input.string();
        if let Some(name) = shim::abstract_name(&control) {
            assert_eq!(format!("@{name}"), control);
        }
    });
}

/// A stream of frames in any shape: the blocking reader (the shim's) and
/// the async one (everything else) read until an error, holding no more
/// than the frame limit allows.
#[test]
fn frame_stream() {
    fuzz_bytes!(|bytes: &Vec<u8>| {
        let Some((&shape, stream)) = bytes.split_first() else { return };
        let mut r = Chunked::new(stream, shape);
        let ((), peak) = peak_allocated(|| {
            // Each frame takes at least its 4-byte prefix: this ends.
            while frame::read_sync::<ShimResponse, _>(&mut r).is_ok() {}
        });
        check_allocation("read_sync", stream.len(), peak);
        let mut r = Chunked::new(stream, shape);
        let ((), peak) = peak_allocated(|| {
            ready(async {
                let mut buf = Vec::new();
                while let Ok(true) = frame::read_payload(&mut r, &mut buf).await {
                    assert!(buf.len() <= MAX_FRAME_LEN);
                    let _ = frame::decode::<NodeMessage>(&buf);
                }
            })
        });
        check_allocation("read_payload", stream.len(), peak);
    });
}

/// A length prefix claiming far more than arrives costs nothing, and one
/// above the limit is refused before any read.
#[test]
fn claimed_lengths_are_not_reserved() {
    // Snapshot of 2^32 members; Joined with 2^32 names; a frame of 1 MiB
    // announced but never sent.
    let claims: [&[u8]; 3] =
        [&[1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f], &[0, 1, 1, 2, 3, 4, 0xff, 0xff, 0xff, 0xff, 0x0f], &[0, 0x10, 0, 0, 1]];
    for claim in &claims[..2] {
        let (decoded, peak) = peak_allocated(|| frame::decode::<ServerMessage>(claim));
        assert!(decoded.is_err());
        check_allocation("claim", claim.len(), peak);
    }
    let (read, peak) = peak_allocated(|| frame::read_sync::<ServerMessage, _>(&mut &claims[2][..]));
    assert!(matches!(read, Err(FrameError::Truncated { expected: 0x10_0000, got: 1 })), "{read:?}");
    assert!(peak < 4096, "{peak} bytes for a frame that never came");
    let over = (MAX_FRAME_LEN as u32 + 1).to_be_bytes();
    let (read, peak) = peak_allocated(|| frame::read_sync::<ServerMessage, _>(&mut &over[..]));
    assert!(matches!(read, Err(FrameError::Oversize { .. })), "{read:?}");
    assert!(peak < 4096, "{peak} bytes for a refused frame");
}

/// The most a member can make the rendezvous hold for one frame: a full
/// frame of empty log lines (2 bytes each, 32 in memory: 16 MiB for the
/// 1 MiB frame), decoded before `check_limits` refuses it.
#[test]
fn a_full_frame_allocates_a_bounded_multiple() {
    let lines = (MAX_FRAME_LEN - 4) / 2;
    let mut payload = postcard::to_stdvec(&(3u8, lines as u32)).expect("tag and length");
    payload.resize(payload.len() + 2 * lines, 0);
    assert!(payload.len() <= MAX_FRAME_LEN);
    let (decoded, peak) = peak_allocated(|| frame::decode::<NodeMessage>(&payload));
    assert!(matches!(&decoded, Ok(NodeMessage::Logs(l)) if l.len() == lines), "{:?}", decoded.map(|_| ()));
    check_allocation("a frame of empty lines", payload.len(), peak);
}

// ---------------------------------------------------------------------------
// Fixed binary layouts.

#[test]
fn relay_frames() {
    fuzz_bytes!(|bytes: &Vec<u8>| {
        // Any header: a length within 1..=MAX_PACKET, or refused.
        if let Some(header) = bytes.first_chunk::<{ relay::HEADER_LEN }>() {
            match relay::decode_header(*header) {
                Ok((len, node)) => {
                    assert!((1..=relay::MAX_PACKET).contains(&len));
                    assert_eq!(node.0.to_be_bytes(), header[2..]);
                }
                Err(relay::RelayFrameError::BadLength(len)) => assert!(len == 0 || len > relay::MAX_PACKET),
            }
        }
        // Any stream: frames until the end or an error, each as announced.
        let Some((&shape, stream)) = bytes.split_first() else { return };
        let mut r = Chunked::new(stream, shape);
        let ((), peak) = peak_allocated(|| {
            ready(async {
                while let Ok(Some((_, packet))) = relay::io::read(&mut r).await {
                    assert!((1..=relay::MAX_PACKET).contains(&packet.len()));
                }
            })
        });
        check_allocation("relay::io::read", stream.len(), peak);
        // Any packets: they come back in order from the stream they make.
        let mut input = Input::new(bytes);
        let mut sent = Vec::new();
        let mut out = Vec::new();
        for _ in 0..input.length() {
            let node = NodeId(input.number(4) as u32);
            let len = input.length();
            let packet = input.bytes(len).to_vec();
            match relay::encode(node, &packet, &mut out) {
                Ok(()) => sent.push((node, packet)),
                Err(relay::RelayFrameError::BadLength(n)) => assert_eq!((n, packet.len()), (0, 0)),
            }
        }
        let mut r = Chunked::new(&out, shape);
        let received = ready(async {
            let mut received = Vec::new();
            while let Some(p) = relay::io::read(&mut r).await.expect("frames we wrote") {
                received.push(p);
            }
            received
        });
        assert_eq!(received, sent);
    });
}

#[test]
fn udp_header() {
    fuzz_bytes!(|bytes: &Vec<u8>| {
        // Any datagram: a consistent fragment header, exactly its bytes.
        if let Ok(h) = UdpHeader::decode(bytes) {
            assert!(h.count >= 1 && h.index < h.count, "{h:?}");
            assert_eq!(h.encode()[..], bytes[..UDP_HEADER_LEN]);
        }
        // Any header a sender makes comes back.
        let mut input = Input::new(bytes);
        let count = input.byte().max(1);
        let h = UdpHeader {
            src_port: input.number(2) as u16,
            dst_port: input.number(2) as u16,
            id: input.number(4) as u32,
            index: input.byte() % count,
            count,
        };
        let mut datagram = h.encode().to_vec();
        datagram.extend_from_slice(input.rest());
        assert_eq!(UdpHeader::decode(&datagram), Ok(h));
    });
}

/// The tag a member computes over `body`, as `disco` does.
fn disco_tag(key: &DiscoKey, body: &[u8]) -> [u8; TAG_LEN] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
    mac.update(body);
    mac.finalize().into_bytes()[..TAG_LEN].try_into().expect("TAG_LEN bytes")
}

#[test]
fn disco_probes() {
    fuzz_bytes!(|bytes: &Vec<u8>| {
        let mut input = Input::new(bytes);
        let key: DiscoKey = input.bytes(KEY_LEN).try_into().unwrap_or([7; KEY_LEN]);
        let packet = input.rest();
        // Anything on the socket: refused, or a probe that encodes to exactly
        // these bytes (one encoding per probe: nothing to confuse a cache).
        if let Ok(p) = Probe::decode(packet, &key) {
            assert_eq!(p.encode(&key), packet);
        }
        // Anything a member could send (the tag right): the parser behind the
        // tag never panics either.
        let mut forged = disco::MAGIC.to_vec();
        forged.extend_from_slice(packet);
        let tag = disco_tag(&key, &forged);
        forged.extend_from_slice(&tag);
        match Probe::decode(&forged, &key) {
            Ok(p) => assert_eq!(p.encode(&key), forged),
            Err(e) => assert_eq!(e, ProbeError::Malformed),
        }
        // Every probe a member makes: short, never QUIC, read back only
        // under its key.
        let mut input = Input::new(packet);
        let from = NodeId(input.number(4) as u32);
        let tx: [u8; TX_LEN] = input.arbitrary().unwrap_or_default();
        let probe = if input.byte() & 1 == 0 {
            Probe::Ping { from, tx }
        } else {
            let ip: IpAddr = input.arbitrary().unwrap_or(IpAddr::from([0, 0, 0, 0]));
            Probe::Pong { from, tx, observed: SocketAddr::new(ip, input.number(2) as u16) }
        };
        let bytes = probe.encode(&key);
        assert!(bytes.len() <= MAX_PROBE_LEN && disco::is_probe(&bytes) && bytes[0] & 0x40 == 0);
        assert_eq!(Probe::decode(&bytes, &key), Ok(probe));
        let mut other = key;
        other[0] ^= 1;
        assert_eq!(Probe::decode(&bytes, &other), Err(ProbeError::BadTag));
        assert_eq!(probe.from(), from);
    });
}

// ---------------------------------------------------------------------------
// Names, fingerprints and the membership table.

#[test]
fn names() {
    fuzz_bytes!(|bytes: &Vec<u8>| {
        let mut input = Input::new(bytes);
        let name = input.string();
        let cluster = input.string();
        let _ = names::parse(&name, &cluster);
        let _ = names::validate_cluster(&name);
        if names::validate_service(&name).is_err() || names::validate_cluster(&cluster).is_err() {
            return;
        }
        // Every name a node gets leads back to it, in any case, qualified or
        // not, with the root's dot or without.
        let (index, id) = (input.number(4) as u32, input.number(4) as u32);
        let all = names::all_names(&name, index, id, &cluster);
        let replica = NameQuery::Replica { service: name.clone(), index };
        for (n, want) in all.iter().zip([&replica, &NameQuery::Node(id), &replica, &NameQuery::Node(id)]) {
            assert_eq!(names::parse(n, &cluster).as_ref(), Some(want), "{n:?}");
            assert_eq!(names::parse(&format!("{}.", n.to_uppercase()), &cluster).as_ref(), Some(want), "{n:?}");
        }
        assert_eq!(names::parse(&name, &cluster), Some(NameQuery::Service(name.clone())));
        assert_eq!(NodeId(id).to_string(), all[1]);
    });
}

#[test]
fn fingerprints() {
    fuzz_bytes!(|bytes: &Vec<u8>| {
        let text = String::from_utf8_lossy(bytes);
        if let Ok(fp) = text.parse::<Fingerprint>() {
            assert_eq!(fp.to_string().parse::<Fingerprint>(), Ok(fp));
        }
        let mut input = Input::new(bytes);
        let text = input.string();
        let _ = text.parse::<Fingerprint>();
        let fp = Fingerprint(bytes.first_chunk::<32>().copied().unwrap_or_default());
        assert_eq!(fp.to_string().parse::<Fingerprint>(), Ok(fp));
        assert!(format!("{fp:?}").starts_with("Fingerprint("));
    });
}

/// A snapshot and events from a rendezvous that lies: the table never
/// panics, applies events in order only, and resolves to its own members.
#[test]
fn membership_table() {
    fuzz_bytes!(|bytes: &Vec<u8>| {
        let mut input = Input::new(bytes);
        let cluster = input.string();
        let Some(snapshot) = input.arbitrary::<MembershipSnapshot>() else { return };
        let mut table = Membership::from_snapshot(&cluster, snapshot);
        for _ in 0..input.length() {
            let Some(event) = input.arbitrary::<MembershipEvent>() else { break };
            let before = table.seq();
            match table.apply(event.clone()) {
                Ok(()) if event.seq <= before => assert_eq!(table.seq(), before),
                Ok(()) => assert_eq!((Some(event.seq), table.seq()), (before.checked_add(1), event.seq)),
                Err(ApplyError::Gap { expected, got }) => {
                    assert_eq!((Some(expected), got, table.seq()), (before.checked_add(1), event.seq, before));
                }
            }
            let name = input.string();
            for m in table.resolve(&name).unwrap_or_default() {
                assert_eq!(table.get(m.node_id), Some(m));
                let _ = (m.replica_name(), m.candidates());
            }
            assert_eq!(table.members().count(), table.len());
        }
        let snapshot = table.snapshot();
        assert_eq!(Membership::from_snapshot(&cluster, snapshot.clone()).snapshot(), snapshot);
    });
}

// ---------------------------------------------------------------------------
// The JSON of a Lambda invocation (its answer is read by the CLI).

fn json_message<T: Serialize + DeserializeOwned + PartialEq + Debug>(bytes: &[u8]) {
    let decoded = serde_json::from_slice::<T>(bytes).ok();
    for msg in decoded.into_iter().chain(fuzz::arbitrary::<T>(bytes)) {
        let json = serde_json::to_vec(&msg).unwrap_or_else(|e| panic!("{msg:?} is not JSON: {e}"));
        let back: T = serde_json::from_slice(&json).unwrap_or_else(|e| panic!("{msg:?} does not read back: {e}"));
        assert_eq!(back, msg);
    }
}

#[test]
fn lambda_json() {
    fuzz_bytes!(|bytes: &Vec<u8>| {
        json_message::<NodeEvent>(bytes);
        json_message::<NodeReport>(bytes);
        json_message::<ErrorBody>(bytes);
    });
}
