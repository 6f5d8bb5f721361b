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
        // Lossy conversion can grow the text (3 bytes per invalid byte): cut
        // again, at character boundaries, to the carried limit.
        for piece in split_at_most(terminal_view(&text), MAX_LOG_LINE) {
            node.ship_logs(vec![LogLine { stream, text: piece.to_owned() }]).await;
        }
    }
}

/// `text` in pieces of at most `max` bytes, cut at character boundaries.
pub fn split_at_most(mut text: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    while text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push(&text[..cut]);
        text = &text[cut..];
    }
    out.push(text);
    out
}

/// What a terminal would finally show of a line that redraws itself with
/// carriage returns (progress displays): the last non-blank segment.
pub fn terminal_view(line: &str) -> &str {
    line.rsplit('\r').find(|s| !s.trim().is_empty()).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::{split_at_most, terminal_view};

    #[test]
    fn long_lines_are_cut_at_character_boundaries() {
        assert_eq!(split_at_most("abcdef", 4), ["abcd", "ef"]);
        assert_eq!(split_at_most("ééé", 3), ["é", "é", "é"]);
        assert_eq!(split_at_most("", 3), [""]);
    }

    #[test]
    fn carriage_returns_keep_the_final_text() {
        assert_eq!(terminal_view("plain"), "plain");
        assert_eq!(terminal_view("SET: 10\rSET: 20 done\r"), "SET: 20 done");
        assert_eq!(terminal_view("windows line\r"), "windows line");
        assert_eq!(terminal_view(""), "");
    }
}
