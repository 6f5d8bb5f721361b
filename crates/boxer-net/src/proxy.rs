//! TCP connections carried as QUIC streams.
//!
//! The opener of a stream writes a [`Hello`] and a [`StreamHeader`]; after that
//! the stream carries the application's bytes, spliced to a TCP socket on each
//! end. Half-closes travel as QUIC stream FINs; a failed end resets the stream.

use std::time::Duration;

use boxer_proto::hello::HelloError;
use boxer_proto::peer::{StreamError, StreamHeader};
use boxer_proto::{FrameError, Hello, frame};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

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
pub async fn splice(
    mut tcp: TcpStream,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
) -> std::io::Result<SpliceStats> {
    let mut stream = tokio::io::join(recv, send);
    match tokio::io::copy_bidirectional_with_sizes(&mut tcp, &mut stream, SPLICE_BUFFER, SPLICE_BUFFER).await {
        Ok((sent, received)) => {
            let _ = tcp.shutdown().await;
            Ok(SpliceStats { sent, received })
        }
        Err(e) => {
            let (mut recv, mut send) = stream.into_inner();
            let code = quinn::VarInt::from_u32(StreamError::Aborted.code());
            let _ = send.reset(code);
            let _ = recv.stop(code);
            abort_tcp(tcp);
            Err(e)
        }
    }
}

/// Closes a TCP socket with RST rather than FIN, so the application learns
/// that the connection failed rather than ended. A zero linger never blocks.
pub fn abort_tcp(tcp: TcpStream) {
    let _ = tcp.set_zero_linger();
}
