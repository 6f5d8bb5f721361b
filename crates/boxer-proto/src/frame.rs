//! Length-prefixed postcard frames.
//!
//! A frame is a 4-byte big-endian payload length followed by that many bytes of
//! postcard. The length is checked against [`MAX_FRAME_LEN`] before anything is
//! read, and the payload buffer grows only as bytes actually arrive, so a peer
//! claiming a 4 GiB frame costs us nothing.

use serde::{Serialize, de::DeserializeOwned};
#[cfg(feature = "tokio")]
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest accepted frame payload. The biggest legitimate frame is a membership
/// snapshot: ~150 bytes per member, so 1 MiB holds several thousand nodes while
/// bounding what a hostile peer can make us buffer per stream.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// Size of the length prefix in bytes.
const LEN_PREFIX: usize = 4;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The underlying stream failed.
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
    /// The stream ended before the first byte of a frame where one was required.
    #[error("stream closed before the expected message")]
    Closed,
    /// The stream ended in the middle of a frame.
    #[error("truncated frame: expected {expected} bytes, got {got}")]
    Truncated {
        /// Bytes the length prefix announced (or 4 for the prefix itself).
        expected: usize,
        /// Bytes that arrived before the stream ended.
        got: usize,
    },
    /// The length prefix announced more than [`MAX_FRAME_LEN`].
    #[error("oversize frame: {len} bytes announced, limit is {MAX_FRAME_LEN}")]
    Oversize {
        /// The announced length.
        len: usize,
    },
    /// The payload is not a valid encoding of the expected message.
    #[error("undecodable frame: {0}")]
    Decode(postcard::Error),
    /// A message could not be encoded (only possible for oversize messages).
    #[error("cannot encode message: {0}")]
    Encode(String),
}

/// Encodes `msg` as a complete frame (length prefix included).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; LEN_PREFIX];
    out = postcard::to_extend(msg, out).map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = out.len() - LEN_PREFIX;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::Encode(format!("message is {len} bytes, limit is {MAX_FRAME_LEN}")));
    }
    out[..LEN_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Appends the frame of `msg` to `out`, for writing several frames at once.
pub fn encode_into<T: Serialize>(msg: &T, out: &mut Vec<u8>) -> Result<(), FrameError> {
    out.extend_from_slice(&encode(msg)?);
    Ok(())
}

/// Decodes one frame payload (without its length prefix).
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    postcard::from_bytes(payload).map_err(FrameError::Decode)
}

#[cfg(feature = "tokio")]
/// Writes `msg` as one frame.
pub async fn write<T: Serialize, W: AsyncWrite + Unpin>(w: &mut W, msg: &T) -> Result<(), FrameError> {
    w.write_all(&encode(msg)?).await?;
    Ok(())
}

#[cfg(feature = "tokio")]
/// Reads one frame payload into `buf` (cleared first). Returns `Ok(false)` if
/// the stream ended cleanly before the first byte of a frame.
pub async fn read_payload<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> Result<bool, FrameError> {
    let mut prefix = [0u8; LEN_PREFIX];
    let mut got = 0;
    while got < LEN_PREFIX {
        let n = r.read(&mut prefix[got..]).await?;
        if n == 0 {
            return match got {
                0 => Ok(false),
                _ => Err(FrameError::Truncated { expected: LEN_PREFIX, got }),
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::Oversize { len });
    }
    buf.clear();
    // `take` + `read_to_end` grows the buffer with the data that really
    // arrives; we never reserve `len` on the word of the peer.
    let got = r.take(len as u64).read_to_end(buf).await?;
    if got < len {
        return Err(FrameError::Truncated { expected: len, got });
    }
    Ok(true)
}

#[cfg(feature = "tokio")]
/// Reads and decodes one message; a clean end of stream is [`FrameError::Closed`].
pub async fn read<T: DeserializeOwned, R: AsyncRead + Unpin>(r: &mut R) -> Result<T, FrameError> {
    read_opt(r).await?.ok_or(FrameError::Closed)
}

#[cfg(feature = "tokio")]
/// Reads and decodes one message; `None` on a clean end of stream.
pub async fn read_opt<T: DeserializeOwned, R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<T>, FrameError> {
    let mut buf = Vec::new();
    if !read_payload(r, &mut buf).await? {
        return Ok(None);
    }
    decode(&buf).map(Some)
}

/// Writes `msg` as one frame to a blocking writer.
pub fn write_sync<T: Serialize, W: std::io::Write>(w: &mut W, msg: &T) -> Result<(), FrameError> {
    w.write_all(&encode(msg)?)?;
    Ok(())
}

/// Reads and decodes one message from a blocking reader; a clean end of
/// stream is [`FrameError::Closed`].
pub fn read_sync<T: DeserializeOwned, R: std::io::Read>(r: &mut R) -> Result<T, FrameError> {
    let mut prefix = [0u8; LEN_PREFIX];
    let mut got = 0;
    while got < LEN_PREFIX {
        match r.read(&mut prefix[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::Truncated { expected: LEN_PREFIX, got }),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::Oversize { len });
    }
    let mut buf = Vec::new();
    let got = std::io::Read::read_to_end(&mut std::io::Read::take(r, len as u64), &mut buf)?;
    if got < len {
        return Err(FrameError::Truncated { expected: len, got });
    }
    decode(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Msg {
        a: u32,
        b: String,
    }

    #[tokio::test]
    async fn round_trip_several_frames() {
        let mut bytes = Vec::new();
        encode_into(&Msg { a: 1, b: "x".into() }, &mut bytes).unwrap();
        encode_into(&Msg { a: 2, b: "yy".into() }, &mut bytes).unwrap();
        let mut r = &bytes[..];
        assert_eq!(read::<Msg, _>(&mut r).await.unwrap(), Msg { a: 1, b: "x".into() });
        assert_eq!(read::<Msg, _>(&mut r).await.unwrap(), Msg { a: 2, b: "yy".into() });
        assert!(read_opt::<Msg, _>(&mut r).await.unwrap().is_none());
        assert!(matches!(read::<Msg, _>(&mut r).await, Err(FrameError::Closed)));
    }

    #[tokio::test]
    async fn oversize_prefix_is_refused_without_reading() {
        let bytes = u32::MAX.to_be_bytes();
        let err = read::<Msg, _>(&mut &bytes[..]).await.unwrap_err();
        assert!(matches!(err, FrameError::Oversize { len } if len == u32::MAX as usize), "{err}");
    }

    #[tokio::test]
    async fn truncated_prefix_and_payload() {
        let err = read::<Msg, _>(&mut &[0u8, 0][..]).await.unwrap_err();
        assert!(matches!(err, FrameError::Truncated { expected: 4, got: 2 }), "{err}");
        let mut bytes = encode(&Msg { a: 7, b: "hello".into() }).unwrap();
        bytes.truncate(bytes.len() - 2);
        let err = read::<Msg, _>(&mut &bytes[..]).await.unwrap_err();
        assert!(matches!(err, FrameError::Truncated { .. }), "{err}");
    }

    #[tokio::test]
    async fn garbage_payload_is_a_decode_error() {
        let mut bytes = 3u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0xff, 0xff, 0xff]);
        let err = read::<Msg, _>(&mut &bytes[..]).await.unwrap_err();
        assert!(matches!(err, FrameError::Decode(_)), "{err}");
    }

    #[test]
    fn sync_round_trip_and_errors() {
        let mut bytes = Vec::new();
        write_sync(&mut bytes, &Msg { a: 3, b: "z".into() }).unwrap();
        assert_eq!(read_sync::<Msg, _>(&mut &bytes[..]).unwrap(), Msg { a: 3, b: "z".into() });
        assert!(matches!(read_sync::<Msg, _>(&mut &[][..]), Err(FrameError::Closed)));
        assert!(matches!(read_sync::<Msg, _>(&mut &u32::MAX.to_be_bytes()[..]), Err(FrameError::Oversize { .. })));
        assert!(matches!(read_sync::<Msg, _>(&mut &bytes[..bytes.len() - 1]), Err(FrameError::Truncated { .. })));
    }

    #[test]
    fn encode_refuses_oversize_messages() {
        let big = Msg { a: 0, b: "x".repeat(MAX_FRAME_LEN + 1) };
        assert!(matches!(encode(&big), Err(FrameError::Encode(_))));
    }
}
