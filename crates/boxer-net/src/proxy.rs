//! TCP connections carried as QUIC streams.
//!
//! The opener of a stream writes a [`Hello`] and a [`StreamHeader`]; after that
//! the stream carries the application's bytes, spliced to a TCP socket on each
//! end. Half-closes travel as QUIC stream FINs; a failed end resets the stream.

use std::io::IoSlice;
use std::time::Duration;

use boxer_proto::hello::HelloError;
use boxer_proto::peer::{StreamError, StreamHeader};
use boxer_proto::{FrameError, Hello, frame};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};

/// Copy buffer per direction. 64 KiB lets one TCP read fill several QUIC
/// packets (GSO batches) and one QUIC read fill a large TCP write; 8 KiB (the
/// tokio default) costs ~2x receiver CPU on bulk transfers.
pub const SPLICE_BUFFER: usize = 64 << 10;

/// Time a stream opener has to send its header. Generous for a WAN, small
/// enough that a stuck or hostile peer does not pin tasks forever.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a stream's preamble was refused.
#[derive(Debug, thiserror::Error)]
pub enum PreambleError {
    /// The frames could not be read.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// Wrong magic or version.
    #[error(transparent)]
    Hello(#[from] HelloError),
    /// Nothing arrived within [`HEADER_TIMEOUT`].
    #[error("no stream header within {HEADER_TIMEOUT:?}")]
    Timeout,
}

/// Writes the hello and header that open a stream.
pub async fn write_preamble(send: &mut quinn::SendStream, header: &StreamHeader) -> Result<(), FrameError> {
    let mut out = Vec::with_capacity(32);
    frame::encode_into(&Hello::current(), &mut out)?;
    frame::encode_into(header, &mut out)?;
    send.write_all(&out).await.map_err(|e| FrameError::Io(e.into()))
}

/// Reads and checks the hello and header of an accepted stream.
pub async fn read_preamble(recv: &mut quinn::RecvStream) -> Result<StreamHeader, PreambleError> {
    let read = async {
        let hello: Hello = frame::read(recv).await?;
        hello.check()?;
        Ok(frame::read(recv).await?)
    };
    tokio::time::timeout(HEADER_TIMEOUT, read).await.map_err(|_| PreambleError::Timeout)?
}

/// Refuses an accepted stream with `code`.
pub fn refuse(mut send: quinn::SendStream, mut recv: quinn::RecvStream, code: StreamError) {
    let code = quinn::VarInt::from_u32(code.code());
    let _ = send.reset(code);
    let _ = recv.stop(code);
}

/// Byte counts of a finished splice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpliceStats {
    /// Bytes from TCP to the stream.
    pub sent: u64,
    /// Bytes from the stream to TCP.
    pub received: u64,
}

/// Copies both ways between `tcp` and a QUIC stream until both directions are
/// closed. On error, resets the stream so the other end sees the abort, and
/// drops the TCP socket with a zero linger so the local app sees a reset.
///
/// Not `tokio::io::copy_bidirectional`: that copies every byte twice in user
/// space (TCP into its buffer, then `SendStream::poll_write` copies the slice
/// into quinn's own; `RecvStream::poll_read` copies quinn's chunks into its
/// buffer before the TCP write). Here TCP reads land in memory that quinn then
/// owns ([`tcp_to_stream`]) and quinn's received chunks are written to TCP as
/// they are ([`stream_to_tcp`]); the profile of a bulk transfer showed those two
/// copies at ~4% of the runtime's CPU.
pub async fn splice(
    mut tcp: TcpStream,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> std::io::Result<SpliceStats> {
    let copied = {
        let (mut from_tcp, mut to_tcp) = tcp.split();
        tokio::try_join!(tcp_to_stream(&mut from_tcp, &mut send), stream_to_tcp(&mut recv, &mut to_tcp))
    };
    match copied {
        Ok((sent, received)) => {
            let _ = tcp.shutdown().await;
            Ok(SpliceStats { sent, received })
        }
        Err(e) => {
            let code = quinn::VarInt::from_u32(StreamError::Aborted.code());
            let _ = send.reset(code);
            let _ = recv.stop(code);
            abort_tcp(tcp);
            Err(e)
        }
    }
}

/// When less than this is left of the current allocation, the next TCP read
/// goes into a fresh [`SPLICE_BUFFER`]: reads of a few hundred bytes would only
/// add syscalls and tiny QUIC chunks to a bulk transfer.
const MIN_READ: usize = 8 << 10;

/// TCP to the stream, finishing the stream at the TCP EOF. Each read fills
/// the spare room of a [`BytesMut`] and is handed to quinn as a [`Bytes`] view
/// of it, without a copy; small messages share one allocation (quinn keeps
/// each view until the peer acknowledged it, and the allocation is freed with
/// the last view).
async fn tcp_to_stream(tcp: &mut ReadHalf<'_>, send: &mut quinn::SendStream) -> std::io::Result<u64> {
    let mut buf = BytesMut::new();
    let mut total = 0;
    loop {
        if buf.capacity() < MIN_READ {
            buf.reserve(SPLICE_BUFFER);
        }
        let n = tcp.read_buf(&mut buf).await?;
        if n == 0 {
            send.finish()?;
            return Ok(total);
        }
        total += n as u64;
        send.write_chunk(buf.split().freeze()).await?;
    }
}

/// Chunks taken from quinn per TCP write. A chunk is one STREAM frame (at most
/// a packet, ~1.4 KB), so 64 fill a write of up to ~90 KB, like
/// [`SPLICE_BUFFER`]: writing each chunk on its own cost ~2x receiver CPU.
const WRITE_CHUNKS: usize = 64;

/// The stream to TCP, shutting down TCP's write side at the stream's FIN.
/// quinn's chunks go to the kernel in one `writev`, without a copy.
async fn stream_to_tcp(recv: &mut quinn::RecvStream, tcp: &mut WriteHalf<'_>) -> std::io::Result<u64> {
    let mut chunks = vec![Bytes::new(); WRITE_CHUNKS];
    let mut total = 0;
    loop {
        let Some(n) = recv.read_chunks(&mut chunks).await? else {
            tcp.shutdown().await?;
            return Ok(total);
        };
        total += write_all_vectored(tcp, &mut chunks[..n]).await?;
    }
}

/// Writes all of `chunks` (consuming them) with as few `writev`s as the
/// socket allows; the bytes written.
async fn write_all_vectored(tcp: &mut WriteHalf<'_>, chunks: &mut [Bytes]) -> std::io::Result<u64> {
    let mut total = 0;
    let mut first = 0;
    loop {
        // Empty chunks (zero-length frames) need no write.
        while chunks.get(first).is_some_and(Bytes::is_empty) {
            first += 1;
        }
        if first == chunks.len() {
            return Ok(total);
        }
        let slices: Vec<IoSlice<'_>> = chunks[first..].iter().map(|c| IoSlice::new(c)).collect();
        let mut n = tcp.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        total += n as u64;
        while n > 0 {
            let c = &mut chunks[first];
            if n >= c.len() {
                n -= c.len();
                *c = Bytes::new();
                first += 1;
            } else {
                c.advance(n);
                n = 0;
            }
        }
    }
}

/// Closes a TCP socket with RST rather than FIN, so the application learns
/// that the connection failed rather than ended. A zero linger never blocks.
pub fn abort_tcp(tcp: TcpStream) {
    let _ = tcp.set_zero_linger();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::NodeEndpoint;
    use crate::identity::Identity;
    use crate::transport;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A connected pair of loopback TCP sockets.
    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        (a, listener.accept().await.unwrap().0)
    }

    #[tokio::test]
    async fn splice_carries_bytes_and_half_closes_both_ways() {
        let bind = || NodeEndpoint::bind("127.0.0.1:0".parse().unwrap(), Identity::generate().unwrap()).unwrap();
        let (a, b) = (bind(), bind());
        let (b_addr, b_fp) = (b.local_addr().unwrap(), b.identity().fingerprint());
        let server = tokio::spawn(async move {
            let conn = b.quinn().accept().await.unwrap().await.unwrap();
            let (send, mut recv) = conn.accept_bi().await.unwrap();
            let mut first = [0u8; 1];
            recv.read_exact(&mut first).await.unwrap();
            let (app, proxy) = tcp_pair().await;
            let spliced = tokio::spawn(splice(proxy, send, recv));
            (app, spliced, conn)
        });
        let conn = a.connect(b_addr, b_fp, boxer_proto::ALPN_PEER, transport::peer()).unwrap().await.unwrap();
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(b"x").await.unwrap();
        let (mut client_app, proxy) = tcp_pair().await;
        let client_splice = tokio::spawn(splice(proxy, send, recv));
        let (mut server_app, server_splice, _conn) = server.await.unwrap();

        // 3 MB with a pattern, then a half-close; the answer comes after it.
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            client_app.write_all(&data).await.unwrap();
            client_app.shutdown().await.unwrap();
            let mut answer = Vec::new();
            client_app.read_to_end(&mut answer).await.unwrap();
            answer
        });
        let mut got = Vec::new();
        server_app.read_to_end(&mut got).await.unwrap();
        assert!(got == expected, "bytes arrive intact and in order ({} of {})", got.len(), expected.len());
        server_app.write_all(b"done").await.unwrap();
        drop(server_app);
        assert_eq!(writer.await.unwrap(), b"done");
        let sent = client_splice.await.unwrap().unwrap();
        assert_eq!(sent, SpliceStats { sent: 3_000_000, received: 4 });
        assert_eq!(server_splice.await.unwrap().unwrap(), SpliceStats { sent: 4, received: 3_000_000 });
    }
}
