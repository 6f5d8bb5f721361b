//! Staging `boxer map`'s local files over the overlay.
//!
//! With `--input DIR|GLOB` or `--output DIR`, `boxer map` joins its own
//! cluster as node `stage-0` and serves the input files and takes the
//! results over HTTP/1.1 on a port it exposes there; each item's
//! `map-item` fetches its input from, and sends its results to, that node
//! by name. The server listens on loopback only: the overlay carries the
//! cluster members' connections to it, and nobody else reaches it.
//!
//! Paths (each segment percent-encoded):
//! * `GET /input/<index>/<key>`: input file `index`, which `boxer map`
//!   lists under `key` (its path below the input directory); the item
//!   names its copy after the key's last segment.
//! * `PUT /output/<relative path>`: one result file, written beside and
//!   renamed into place under the output directory.

use std::convert::Infallible;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use futures_util::TryStreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use tokio::io::AsyncWriteExt;
use tracing::{debug, warn};

/// The stage node's service name (`stage-0`).
pub const STAGE_SERVICE: &str = "stage";

/// What a path segment keeps unencoded (RFC 3986's unreserved characters).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

type Body = BoxBody<Bytes, std::io::Error>;

/// What the stage serves: the input files by index, and the directory the
/// results go to (`None`: results go to S3, not here).
#[derive(Debug)]
pub struct Stage {
    /// The input files in item order, each with its key.
    pub inputs: Vec<(String, PathBuf)>,
    /// Where results are written.
    pub output: Option<PathBuf>,
}

/// The URL item `index`, listed as `key`, is fetched from on a stage at
/// `base` (`http://stage-0:PORT`).
pub fn input_url(base: &str, index: usize, key: &str) -> String {
    format!("{base}/input/{index}/{}", encode_path(key))
}

/// `path` with each `/`-separated segment percent-encoded.
fn encode_path(path: &str) -> String {
    path.split('/').map(|s| utf8_percent_encode(s, SEGMENT).to_string()).collect::<Vec<_>>().join("/")
}

/// The key in an [`input_url`] (decoded): `$BOXER_INPUT_KEY`.
pub fn key_in(url: &str) -> String {
    let rest = url.split_once("/input/").and_then(|(_, r)| r.split_once('/')).map_or("", |(_, key)| key);
    percent_decode_str(rest).decode_utf8_lossy().into_owned()
}

/// The URL results go to on a stage at `base`.
pub fn output_url(base: &str) -> String {
    format!("{base}/output/")
}

/// The last segment of an input URL's key (decoded): what the item calls
/// its input locally.
pub fn file_name_in(url: &str) -> String {
    let last = url.rsplit('/').next().unwrap_or_default();
    let name = percent_decode_str(last).decode_utf8_lossy().into_owned();
    match plain_path(&name) {
        Some(p) if p.components().count() == 1 => name,
        _ => "input".into(),
    }
}

/// `rel` as a relative path of plain names only (no `..`, no root, no
/// empty segment), or `None`.
fn plain_path(rel: &str) -> Option<PathBuf> {
    let path = Path::new(rel);
    let plain = !rel.is_empty()
        && !rel.contains('\0')
        && !rel.ends_with('/')
        && path.components().all(|c| matches!(c, Component::Normal(_)));
    plain.then(|| path.to_owned())
}

/// Serves `stage` on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, stage: Arc<Stage>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!("stage: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let stage = stage.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(stage.clone(), req));
            if let Err(e) =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await
            {
                debug!(%peer, "stage connection: {e}");
            }
        });
    }
}

async fn handle(stage: Arc<Stage>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let answer = match (req.method(), path.strip_prefix("/input/"), path.strip_prefix("/output/")) {
        (&Method::GET, Some(rest), _) => send_input(&stage, rest).await,
        (&Method::PUT, _, Some(rest)) => take_output(&stage, rest, req.into_body()).await,
        _ => Err((StatusCode::NOT_FOUND, format!("no such stage path: {} {path}", req.method()))),
    };
    Ok(answer.unwrap_or_else(|(status, why)| {
        debug!(%status, "stage: {why}");
        let mut response = Response::new(Full::new(Bytes::from(why)).map_err(|e| match e {}).boxed());
        *response.status_mut() = status;
        response
    }))
}

type Answer = Result<Response<Body>, (StatusCode, String)>;

async fn send_input(stage: &Stage, rest: &str) -> Answer {
    let not_found = || (StatusCode::NOT_FOUND, format!("no input {rest:?}"));
    let (index, key) = rest.split_once('/').ok_or_else(not_found)?;
    let (listed, file) = index.parse::<usize>().ok().and_then(|i| stage.inputs.get(i)).ok_or_else(not_found)?;
    if percent_decode_str(key).decode_utf8_lossy() != listed.as_str() {
        return Err(not_found());
    }
    let opened = tokio::fs::File::open(file).await;
    let f = opened.map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("opening {}: {e}", file.display())))?;
    let stream = tokio_util::io::ReaderStream::new(f).map_ok(Frame::data);
    Ok(Response::new(BodyExt::boxed(StreamBody::new(stream))))
}

async fn take_output(stage: &Stage, rest: &str, mut body: Incoming) -> Answer {
    let Some(dir) = &stage.output else {
        return Err((StatusCode::NOT_FOUND, "this stage takes no results (they go to S3)".into()));
    };
    let rel = percent_decode_str(rest).decode_utf8_lossy();
    let rel =
        plain_path(&rel).ok_or_else(|| (StatusCode::BAD_REQUEST, format!("{rel:?} is not a plain relative path")))?;
    let dest = dir.join(&rel);
    let partial = dest.with_file_name(format!(
        ".{}.boxer-partial-{}",
        dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    let failed = |what: &str, e: &dyn std::fmt::Display| (StatusCode::INTERNAL_SERVER_ERROR, format!("{what}: {e}"));
    let write = async {
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| failed(&format!("creating {}", parent.display()), &e))?;
        }
        let mut file = tokio::fs::File::create(&partial)
            .await
            .map_err(|e| failed(&format!("creating {}", partial.display()), &e))?;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| (StatusCode::BAD_REQUEST, format!("receiving {}: {e}", rel.display())))?;
            if let Ok(data) = frame.into_data() {
                file.write_all(&data).await.map_err(|e| failed(&format!("writing {}", partial.display()), &e))?;
            }
        }
        file.flush().await.map_err(|e| failed(&format!("writing {}", partial.display()), &e))?;
        tokio::fs::rename(&partial, &dest).await.map_err(|e| failed(&format!("renaming to {}", dest.display()), &e))
    };
    match write.await {
        Ok(()) => {
            debug!(file = %dest.display(), "stage: result written");
            let mut response = Response::new(Empty::new().map_err(|e| match e {}).boxed());
            *response.status_mut() = StatusCode::CREATED;
            Ok(response)
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&partial).await;
            Err(e)
        }
    }
}

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Says what the stage answered when it was not what we asked for.
async fn refused(response: Response<Incoming>, what: &str) -> anyhow::Error {
    let status = response.status();
    let text = match response.into_body().collect().await {
        Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        Err(_) => String::new(),
    };
    anyhow::anyhow!("{what}: the stage answered {status}: {text}")
}

/// Fetches `url` (an [`input_url`]) into `dest`; its size in bytes.
pub async fn download(url: &str, dest: &Path) -> anyhow::Result<u64> {
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent).await.with_context(|| format!("creating {}", parent.display()))?;
    }
    let uri: http::Uri = url.parse().with_context(|| format!("{url:?} is not a URL"))?;
    let request = Request::get(uri).body(Empty::new().map_err(|e| match e {}).boxed())?;
    let response = client().request(request).await.with_context(|| format!("fetching {url}"))?;
    if response.status() != StatusCode::OK {
        return Err(refused(response, &format!("fetching {url}")).await);
    }
    let mut body = response.into_body();
    let mut file = tokio::fs::File::create(dest).await.with_context(|| format!("creating {}", dest.display()))?;
    let mut size = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.with_context(|| format!("fetching {url}"))?.into_data() {
            file.write_all(&data).await.with_context(|| format!("writing {}", dest.display()))?;
            size += data.len() as u64;
        }
    }
    file.flush().await.with_context(|| format!("writing {}", dest.display()))?;
    Ok(size)
}

/// Sends result file `path` to the stage at `base` (an [`output_url`]) as
/// `rel` under its output directory; its size in bytes.
pub async fn upload(base: &str, rel: &str, path: &Path) -> anyhow::Result<u64> {
    anyhow::ensure!(plain_path(rel).is_some(), "result {rel:?} is not a plain relative path");
    let url = format!("{base}{}", encode_path(rel));
    let uri: http::Uri = url.parse().with_context(|| format!("{url:?} is not a URL"))?;
    let file = tokio::fs::File::open(path).await.with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata().await.with_context(|| format!("reading {}", path.display()))?.len();
    let stream = tokio_util::io::ReaderStream::new(file).map_ok(Frame::data);
    let request = Request::put(uri).body(BodyExt::boxed(StreamBody::new(stream)))?;
    let response = client().request(request).await.with_context(|| format!("sending {rel} to {url}"))?;
    if response.status() != StatusCode::CREATED {
        return Err(refused(response, &format!("sending {rel}")).await);
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn inputs_go_out_and_results_come_back_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("boxer-stage-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("in")).unwrap();
        let input = dir.join("in").join("a b%.txt");
        std::fs::write(&input, b"hello stage").unwrap();
        std::fs::write(dir.join("secret"), b"not served").unwrap();
        let key = "in/a b%.txt";
        let stage = Arc::new(Stage { inputs: vec![(key.into(), input.clone())], output: Some(dir.join("out")) });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(serve(listener, stage));

        let url = input_url(&base, 0, key);
        assert!(url.ends_with("/input/0/in/a%20b%25.txt"), "{url}");
        assert_eq!((file_name_in(&url), key_in(&url)), ("a b%.txt".into(), key.into()));
        let local = dir.join("got").join(file_name_in(&url));
        download(&url, &local).await.unwrap();
        assert_eq!(std::fs::read(&local).unwrap(), b"hello stage");
        // Only the listed inputs, under their own names.
        for bad in ["/input/1/x", "/input/0/secret", "/input/0/a%20b%25.txt", "/input/0/..%2Fsecret", "/secret"] {
            let e = download(&format!("{base}{bad}"), &dir.join("x")).await.unwrap_err();
            assert!(format!("{e:#}").contains("404"), "{bad}: {e:#}");
        }

        upload(&output_url(&base), "sub dir/r 1.txt", &local).await.unwrap();
        assert_eq!(std::fs::read(dir.join("out").join("sub dir").join("r 1.txt")).unwrap(), b"hello stage");
        for bad in ["../escape", "/abs", "a/../../b", ""] {
            let e = upload(&output_url(&base), bad, &local).await.unwrap_err();
            assert!(format!("{e:#}").contains("not a plain relative path"), "{bad:?}: {e:#}");
            // The server checks as well.
            let uri: http::Uri = format!("{base}/output/{bad}").parse().unwrap();
            let put = Request::put(uri).body(Empty::new().map_err(|e| match e {}).boxed()).unwrap();
            assert_eq!(client().request(put).await.unwrap().status(), StatusCode::BAD_REQUEST, "{bad:?}");
        }
        assert!(!dir.join("escape").exists() && !dir.join("b").exists());
        server.abort();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
