//! Client of the Lambda Runtime API: fetch the next invocation, answer it.
//!
//! The HTTP side is the maintained `lambda_runtime_api_client` crate (AWS's
//! own: hyper client, connection reuse, and a base URL that may carry a path
//! prefix). The invocation loop is ours, not the `lambda_runtime` crate's,
//! because that crate does not fit a node's lifecycle: its `Config::from_env`
//! panics without `AWS_LAMBDA_FUNCTION_NAME` and friends, its `Context`
//! panics on a missing `Lambda-Runtime-Deadline-Ms` header and ends the whole
//! run loop on an unparsable one (a warm instance must survive any bad
//! invocation), it hands the handler a decoded payload (a body that is not
//! JSON must still become our `Boxer.BadEvent`), and it has no public way to
//! post `/init/error`. One invocation here is one node: minutes long, never
//! concurrent, so the loop is a few lines (`super::serve`).
//!
//! `AWS_LAMBDA_RUNTIME_API` is `host:port` on Lambda; the cargo-lambda
//! emulator gives a URL with a path prefix that names the function
//! (`http://127.0.0.1:9000/.rt/boxer-node`). [`parse_endpoint`] takes both.

use boxer_proto::lambda::ErrorBody;
use bytes::Bytes;
use http::Uri;
use http_body_util::{BodyExt, Limited};
use lambda_runtime_api_client::body::Body;
use lambda_runtime_api_client::{PooledClient, build_request};

/// The variable Lambda sets to the Runtime API's address.
pub const RUNTIME_API_ENV: &str = "AWS_LAMBDA_RUNTIME_API";

/// Path of every Runtime API call, after the endpoint's own prefix.
const API_PATH: &str = "/2018-06-01/runtime";

/// Largest event body read: Lambda's limit for a synchronous invocation
/// payload (6 MB); a node event is a few hundred bytes.
const MAX_EVENT_BYTES: usize = 6 * 1024 * 1024;

/// Largest error-response body kept for a message.
const MAX_ERROR_BODY: usize = 4096;

/// Header with the invocation's id.
const REQUEST_ID_HEADER: &str = "lambda-runtime-aws-request-id";

/// Header with the invocation's deadline, milliseconds since the epoch.
const DEADLINE_HEADER: &str = "lambda-runtime-deadline-ms";

/// Header that carries the `errorType` of an error post.
const ERROR_TYPE_HEADER: &str = "lambda-runtime-function-error-type";

/// Why a Runtime API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// `AWS_LAMBDA_RUNTIME_API` is not an address.
    #[error("{RUNTIME_API_ENV}={value:?} is not HOST:PORT or an http:// URL: {why}")]
    BadAddress {
        /// The value.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// The request could not be made or its answer read.
    #[error("Runtime API {what}: {source}")]
    Http {
        /// Which call.
        what: String,
        /// The error.
        source: lambda_runtime_api_client::BoxError,
    },
    /// The Runtime API answered with an error status.
    #[error("Runtime API {what}: HTTP {status}: {body}")]
    Status {
        /// Which call.
        what: String,
        /// The status code.
        status: u16,
        /// The start of its body.
        body: String,
    },
    /// An invocation came without a usable request id (it cannot be answered).
    #[error("Runtime API gave an invocation without a usable {REQUEST_ID_HEADER} header ({0:?})")]
    RequestId(String),
}

/// Parses `AWS_LAMBDA_RUNTIME_API`: `host:port` (Lambda) or an `http://`
/// URL whose path is a prefix of every call (cargo-lambda's emulator).
pub fn parse_endpoint(value: &str) -> Result<Uri, ApiError> {
    let bad = |why: &str| ApiError::BadAddress { value: value.to_owned(), why: why.to_owned() };
    let value = value.trim();
    if value.is_empty() {
        return Err(bad("empty"));
    }
    let url = if value.contains("://") { value.to_owned() } else { format!("http://{value}") };
    let uri: Uri = url.parse().map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad("the Runtime API speaks plain http"));
    }
    let Some(authority) = uri.authority() else { return Err(bad("no host")) };
    if authority.host().is_empty() {
        return Err(bad("no host"));
    }
    if uri.query().is_some() || authority.as_str().contains('@') {
        return Err(bad("a query or user name makes no sense here"));
    }
    if !value.contains("://") && uri.path() != "/" {
        return Err(bad("HOST:PORT has no path; give a URL (http://HOST:PORT/PREFIX) for a prefix"));
    }
    let prefix = uri.path().trim_end_matches('/');
    format!("http://{authority}{prefix}").parse().map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))
}

/// One invocation as the Runtime API gave it.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// Its id, to answer it.
    pub request_id: String,
    /// `Lambda-Runtime-Deadline-Ms`, if present and a number.
    pub deadline_ms: Option<u64>,
    /// The event, unparsed.
    pub body: Bytes,
}

/// A Runtime API client.
#[derive(Debug)]
pub struct RuntimeApi {
    client: PooledClient,
    endpoint: Uri,
}

impl RuntimeApi {
    /// A client of the Runtime API at `endpoint` (see [`parse_endpoint`]).
    pub fn new(endpoint: Uri) -> Self {
        let client = PooledClient::builder().with_endpoint(endpoint.clone()).build();
        Self { client, endpoint }
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Uri {
        &self.endpoint
    }

    /// Waits for the next invocation (a long poll: it returns when Lambda
    /// has work for this instance).
    pub async fn next(&self) -> Result<Invocation, ApiError> {
        let what = "GET invocation/next";
        let request = build_request()
            .method("GET")
            .uri(format!("{API_PATH}/invocation/next"))
            .body(Body::empty())
            .map_err(|e| ApiError::Http { what: what.into(), source: e.into() })?;
        let response =
            self.client.call(request).await.map_err(|source| ApiError::Http { what: what.into(), source })?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_EVENT_BYTES)
            .collect()
            .await
            .map_err(|source| ApiError::Http { what: what.into(), source })?
            .to_bytes();
        if !parts.status.is_success() {
            return Err(status_error(what, parts.status, &body));
        }
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let request_id = header(REQUEST_ID_HEADER).unwrap_or_default();
        if !valid_request_id(&request_id) {
            return Err(ApiError::RequestId(request_id));
        }
        let deadline_ms = header(DEADLINE_HEADER).and_then(|v| v.trim().parse().ok());
        Ok(Invocation { request_id, deadline_ms, body })
    }

    /// Answers invocation `id` with `body` (JSON).
    pub async fn respond(&self, id: &str, body: Vec<u8>) -> Result<(), ApiError> {
        self.post(&format!("invocation/{id}/response"), body, None).await
    }

    /// Answers invocation `id` with an error.
    pub async fn fail(&self, id: &str, error: &ErrorBody) -> Result<(), ApiError> {
        self.post(&format!("invocation/{id}/error"), error_json(error), Some(&error.error_type)).await
    }

    /// Reports that the runtime cannot start; Lambda then ends the instance.
    pub async fn init_error(&self, error: &ErrorBody) -> Result<(), ApiError> {
        self.post("init/error", error_json(error), Some(&error.error_type)).await
    }

    async fn post(&self, path: &str, body: Vec<u8>, error_type: Option<&str>) -> Result<(), ApiError> {
        let what = format!("POST {path}");
        let mut request =
            build_request().method("POST").uri(format!("{API_PATH}/{path}")).header("content-type", "application/json");
        if let Some(kind) = error_type.filter(|k| http::HeaderValue::from_str(k).is_ok()) {
            request = request.header(ERROR_TYPE_HEADER, kind);
        }
        let request =
            request.body(Body::from(body)).map_err(|e| ApiError::Http { what: what.clone(), source: e.into() })?;
        let response =
            self.client.call(request).await.map_err(|source| ApiError::Http { what: what.clone(), source })?;
        let (parts, body) = response.into_parts();
        if parts.status.is_success() {
            return Ok(());
        }
        let body = Limited::new(body, MAX_ERROR_BODY).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        Err(status_error(&what, parts.status, &body))
    }
}

fn status_error(what: &str, status: http::StatusCode, body: &[u8]) -> ApiError {
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX_ERROR_BODY)]).into_owned();
    ApiError::Status { what: what.to_owned(), status: status.as_u16(), body: text }
}

fn error_json(error: &ErrorBody) -> Vec<u8> {
    // A struct of two strings always serializes.
    serde_json::to_vec(error).unwrap_or_default()
}

/// A request id goes into a URL path: letters, digits, `-`, `_`, `.` only
/// (Lambda's are UUIDs).
fn valid_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_and_urls_with_a_prefix() {
        assert_eq!(parse_endpoint("127.0.0.1:9001").unwrap(), "http://127.0.0.1:9001");
        assert_eq!(parse_endpoint(" localhost:9001 ").unwrap(), "http://localhost:9001");
        assert_eq!(
            parse_endpoint("http://127.0.0.1:9011/.rt/boxer-node").unwrap(),
            "http://127.0.0.1:9011/.rt/boxer-node"
        );
        assert_eq!(
            parse_endpoint("http://127.0.0.1:9011/.rt/boxer-node/").unwrap(),
            "http://127.0.0.1:9011/.rt/boxer-node"
        );
        assert_eq!(parse_endpoint("http://[::1]:9001").unwrap(), "http://[::1]:9001");
        for bad in ["", "https://x:1", "http://", "127.0.0.1:9001/.rt/f", "http://h:1/?q=1", "http://u@h:1", "a b"] {
            let e = parse_endpoint(bad).unwrap_err();
            assert!(e.to_string().contains(RUNTIME_API_ENV), "{bad:?}: {e}");
        }
    }

    #[test]
    fn request_ids_must_be_path_safe() {
        assert!(valid_request_id("8476a536-e9f4-11e8-9739-2dfe598c3fcd"));
        for bad in ["", "..", "a/b", "a?b", "a b", &"x".repeat(200)] {
            assert!(!valid_request_id(bad), "{bad:?}");
        }
    }
}
