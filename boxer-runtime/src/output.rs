//! The program's stdout and stderr: echoed to the runtime's own, shipped to
//! the rendezvous line by line, and the last lines kept for the node's
//! report ([`Tail`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use boxer_proto::control::{LogLine, MAX_LOG_LINE, Stream};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use crate::Node;

/// Lines a [`Tail`] keeps: what a person reads to see why a program ended (a
/// panic with its first frames, a stack of "caused by"), the same count
/// `tail` and CI logs show.
pub const TAIL_LINES: usize = 20;

/// Bytes one kept line may have; longer lines are cut (at a character
/// boundary). A minified JSON blob or a progress bar is not worth more in a
/// report than the first kibibyte of it.
pub const TAIL_LINE_BYTES: usize = 1024;

/// Bytes a [`Tail`] keeps in all. The report goes back in the Invoke
/// response (limit 6 MB) and the CLI prints it; 8 KiB is a screenful of long
/// lines and keeps a fleet of reports small. Oldest lines go first.
pub const TAIL_BYTES: usize = 8 * 1024;

/// The last lines of a program's output, bounded by [`TAIL_LINES`],
/// [`TAIL_LINE_BYTES`] and [`TAIL_BYTES`].
#[derive(Debug, Default, Clone)]
pub struct Tail {
    lines: VecDeque<String>,
    bytes: usize,
}

impl Tail {
    /// Keeps `line` (cut to [`TAIL_LINE_BYTES`]), dropping the oldest lines
    /// beyond the bounds.
    pub fn push(&mut self, line: &str) {
        let line = split_at_most(line, TAIL_LINE_BYTES)[0].to_owned();
        self.bytes += line.len();
        self.lines.push_back(line);
        while self.lines.len() > TAIL_LINES || self.bytes > TAIL_BYTES {
            match self.lines.pop_front() {
                Some(old) => self.bytes -= old.len(),
                None => break,
            }
        }
    }

    /// The kept lines, oldest first.
    pub fn lines(&self) -> Vec<String> {
        self.lines.iter().cloned().collect()
    }
}

/// A [`Tail`] shared by the stdout and stderr relays.
pub type SharedTail = Arc<Mutex<Tail>>;

/// Reads `pipe` to its end; each line goes to `echo`, to the rendezvous and
/// to `tail`.
pub async fn relay(
    node: Node,
    pipe: impl AsyncRead + Unpin,
    stream: Stream,
    mut echo: impl AsyncWrite + Unpin,
    tail: SharedTail,
) {
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
        tail.lock().unwrap_or_else(|e| e.into_inner()).push(terminal_view(&text));
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
    use super::*;

    #[test]
    fn the_tail_keeps_the_last_lines_within_its_bounds() {
        let mut tail = Tail::default();
        for i in 0..100 {
            tail.push(&format!("line {i}"));
        }
        let lines = tail.lines();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!((lines[0].as_str(), lines[TAIL_LINES - 1].as_str()), ("line 80", "line 99"));

        // Long lines are cut, and the byte bound drops old lines first.
        let mut tail = Tail::default();
        tail.push("first");
        for _ in 0..TAIL_LINES {
            tail.push(&"é".repeat(TAIL_LINE_BYTES));
        }
        let lines = tail.lines();
        assert!(lines.iter().all(|l| l.len() <= TAIL_LINE_BYTES && l.starts_with('é')));
        assert!(lines.iter().map(String::len).sum::<usize>() <= TAIL_BYTES);
        assert_eq!(lines.len(), TAIL_BYTES / TAIL_LINE_BYTES);
    }

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
