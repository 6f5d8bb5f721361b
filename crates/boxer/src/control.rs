//! The control socket of a running `boxer up`: how `boxer scale` reaches
//! it. A Unix socket `control.sock` in the cluster's state directory (only
//! the user who runs the cluster can open it: the directory is theirs), one
//! JSON request and one JSON answer per connection.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// File name of the socket in the cluster's state directory.
pub const SOCKET: &str = "control.sock";

/// Longest a request or its answer may take on the socket: a local call,
/// so anything slower is a stuck peer (and the cluster's loop waits).
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest request taken (a scale of many services is a few hundred bytes).
const MAX_REQUEST: usize = 64 << 10;

/// What `boxer scale` asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    /// Service name to its new number of replicas.
    pub replicas: BTreeMap<String, u32>,
}

/// The answer: what changed, or why nothing did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleAnswer {
    /// One line per service (`web: 2 -> 6 (web-2 ... web-5 starting)`), or
    /// the error.
    pub lines: Vec<String>,
    /// Whether the request was carried out.
    pub ok: bool,
}

/// The socket's path for the cluster whose state is in `dir`.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET)
}

/// Listens on the cluster's socket (a stale one from a crashed run is
/// replaced: `boxer up` checked that no other run holds the cluster).
pub fn listen(dir: &Path) -> anyhow::Result<UnixListener> {
    let path = socket_path(dir);
    let _ = std::fs::remove_file(&path);
    UnixListener::bind(&path).with_context(|| format!("listening on the control socket {}", path.display()))
}

/// Reads one request from a connection of the socket.
pub async fn read_request(stream: &mut UnixStream) -> anyhow::Result<ScaleRequest> {
    let mut line = String::new();
    let mut reader = BufReader::new(stream.take(MAX_REQUEST as u64));
    tokio::time::timeout(IO_TIMEOUT, reader.read_line(&mut line)).await.context("the request did not come")??;
    serde_json::from_str(&line).context("the request is not a scale request")
}

/// Writes the answer and closes the connection.
pub async fn answer(stream: &mut UnixStream, answer: &ScaleAnswer) {
    let mut text = serde_json::to_vec(answer).unwrap_or_default();
    text.push(b'\n');
    let _ = tokio::time::timeout(IO_TIMEOUT, stream.write_all(&text)).await;
    let _ = stream.shutdown().await;
}

/// Sends `request` to the `boxer up` of the cluster in `dir`; its answer.
pub async fn scale(dir: &Path, request: &ScaleRequest) -> anyhow::Result<ScaleAnswer> {
    let path = socket_path(dir);
    let mut stream = UnixStream::connect(&path)
        .await
        .with_context(|| format!("connecting to {} (is the cluster's boxer up running?)", path.display()))?;
    let mut text = serde_json::to_vec(request)?;
    text.push(b'\n');
    stream.write_all(&text).await?;
    let mut line = String::new();
    // The answer comes once the new nodes are launched (devices made in the lab).
    tokio::time::timeout(Duration::from_secs(120), BufReader::new(stream).read_line(&mut line))
        .await
        .context("boxer up did not answer within 120 s")??;
    serde_json::from_str(&line).with_context(|| format!("boxer up's answer is not one: {line:?}"))
}

/// Parses `SERVICE=N`.
pub fn parse_change(text: &str) -> Result<(String, u32), String> {
    let (service, n) = text.split_once('=').ok_or_else(|| format!("{text:?}: expected SERVICE=N, e.g. web=6"))?;
    boxer_proto::names::validate_service(service).map_err(|e| format!("{text:?}: {e}"))?;
    let n: u32 = n.parse().map_err(|_| format!("{text:?}: {n:?} is not a number of replicas"))?;
    if n == 0 || n > crate::spec::MAX_REPLICAS {
        return Err(format!("{text:?}: replicas must be 1 to {}", crate::spec::MAX_REPLICAS));
    }
    Ok((service.to_owned(), n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_checked() {
        assert_eq!(parse_change("web=6").unwrap(), ("web".to_owned(), 6));
        for bad in ["web", "web=0", "web=x", "=3", "Web!=2", "web=100000"] {
            assert!(parse_change(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_request_goes_through_the_socket_and_garbage_is_refused() {
        let dir = std::env::temp_dir().join(format!("boxer-control-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let listener = listen(&dir).unwrap();
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let (mut stream, _) = listener.accept().await.unwrap();
                let reply = match read_request(&mut stream).await {
                    Ok(r) => ScaleAnswer { lines: vec![format!("{:?}", r.replicas)], ok: true },
                    Err(e) => ScaleAnswer { lines: vec![format!("{e:#}")], ok: false },
                };
                answer(&mut stream, &reply).await;
            }
        });
        let request = ScaleRequest { replicas: [("web".to_owned(), 3)].into() };
        let got = scale(&dir, &request).await.unwrap();
        assert!(got.ok && got.lines[0].contains("\"web\": 3"), "{got:?}");
        let mut raw = UnixStream::connect(socket_path(&dir)).await.unwrap();
        raw.write_all(b"{\"replicas\": 5}\n").await.unwrap();
        let mut line = String::new();
        BufReader::new(raw).read_line(&mut line).await.unwrap();
        assert!(line.contains("\"ok\":false") && line.contains("not a scale request"), "{line}");
        server.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
