//! The program's stdout and stderr: echoed to the runtime's own, and shipped
//! to the rendezvous line by line.

use boxer_proto::control::{LogLine, MAX_LOG_LINE, Stream};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use crate::Node;

/// Reads `pipe` to its end; each line goes to `echo` and to the rendezvous.
pub async fn relay(node: Node, pipe: impl AsyncRead + Unpin, stream: Stream, mut echo: impl AsyncWrite + Unpin) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        // Bounded reads: a line longer than the limit is shipped in pieces.
        let n = match (&mut reader).take(MAX_LOG_LINE as u64).read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let _ = echo.write_all(&buf[..n]).await;
        let _ = echo.flush().await;
        let text = String::from_utf8_lossy(buf.strip_suffix(b"\n").unwrap_or(&buf));
        let text = text.strip_suffix('\r').unwrap_or(&text).to_owned();
        node.ship_logs(vec![LogLine { stream, text }]).await;
    }
}
