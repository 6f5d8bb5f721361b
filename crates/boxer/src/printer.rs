//! Node output on the terminal: `db-0  | line`, one color per node on a TTY.

use std::io::{IsTerminal, Write};

use anstyle::{AnsiColor, Style};

/// Colors cycled through the nodes (no red: that reads as an error).
const PALETTE: [AnsiColor; 6] =
    [AnsiColor::Cyan, AnsiColor::Yellow, AnsiColor::Green, AnsiColor::Magenta, AnsiColor::Blue, AnsiColor::BrightCyan];

/// Prints prefixed lines.
#[derive(Debug)]
pub struct Printer {
    width: usize,
    color: bool,
    names: Vec<String>,
}

impl Printer {
    /// A printer for these node names.
    pub fn new(names: Vec<String>) -> Self {
        let width = names.iter().map(String::len).max().unwrap_or(4);
        Self { width, color: std::io::stdout().is_terminal(), names }
    }

    fn style(&self, node: &str) -> Style {
        let i = self.names.iter().position(|n| n == node).unwrap_or(0);
        Style::new().fg_color(Some(PALETTE[i % PALETTE.len()].into()))
    }

    /// One line of a node's output.
    pub fn line(&self, node: &str, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = if self.color {
            let s = self.style(node);
            writeln!(out, "{s}{node:<w$} |{s:#} {text}", w = self.width)
        } else {
            writeln!(out, "{node:<w$} | {text}", w = self.width)
        };
    }

    /// A note from boxer itself about a node (on stderr).
    pub fn note(&self, node: &str, text: &str) {
        let mut err = std::io::stderr().lock();
        let _ = if self.color {
            let s = self.style(node).bold();
            writeln!(err, "{s}{node:<w$} |{s:#} {text}", w = self.width)
        } else {
            writeln!(err, "{node:<w$} | {text}", w = self.width)
        };
    }
}
