//! Objects in and out of S3: what `bootstrap map-item` and the `boxer`
//! CLI's `put`, `get` and `map` share.
//!
//! A function reads S3 with its own credentials (Lambda puts the execution
//! role's in `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
//! `AWS_SESSION_TOKEN`) through the standard AWS configuration chain; an
//! endpoint of one's own (`AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`: moto,
//! MinIO, LocalStack) gets path-style addressing, because those do not
//! resolve bucket host names. HTTPS is rustls on `ring`, the TLS stack the
//! rest of the workspace uses, instead of the SDK's default aws-lc-rs (a C
//! library whose build needs cmake).
//!
//! Object keys become paths only after a check ([`relative_path`]): a
//! bucket written by someone else cannot make a download land outside its
//! directory.

use std::path::{Component, Path, PathBuf};

use anyhow::Context;
use aws_config::BehaviorVersion;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_http_client::tls;
use tokio::io::AsyncWriteExt;

/// Largest object one PUT may carry (S3's limit; larger needs a multipart
/// upload, which Boxer does not do).
pub const MAX_SINGLE_PUT: u64 = 5 << 30;

/// Variables that point S3 requests at an endpoint of one's own.
const ENDPOINT_VARS: [&str; 2] = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"];

/// `s3://BUCKET[/PREFIX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix, without a leading `/` (may be empty).
    pub prefix: String,
}

impl std::str::FromStr for S3Url {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let rest = s.strip_prefix("s3://").ok_or_else(|| format!("{s:?}: expected s3://BUCKET[/PREFIX]"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid = (3..=63).contains(&bucket.len())
            && bucket.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
            && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !valid {
            return Err(format!(
                "{s:?}: {bucket:?} is not a bucket name (3-63 lowercase letters, digits, '-' and '.')"
            ));
        }
        Ok(Self { bucket: bucket.to_owned(), prefix: prefix.trim_start_matches('/').to_owned() })
    }
}

impl std::fmt::Display for S3Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

impl S3Url {
    /// The key of `name` (a relative path with `/` separators) under this
    /// prefix taken as a folder: `out` + `a/b.txt` is `out/a/b.txt`.
    pub fn key_of(&self, name: &str) -> String {
        if self.prefix.is_empty() || self.prefix.ends_with('/') {
            format!("{}{name}", self.prefix)
        } else {
            format!("{}/{name}", self.prefix)
        }
    }

    /// Whether `key` is under this prefix taken as a folder (or is the
    /// prefix itself): `in` takes `in/x` but not `inside/x`.
    pub fn contains(&self, key: &str) -> bool {
        self.prefix.is_empty()
            || self.prefix.ends_with('/') && key.starts_with(&self.prefix)
            || key == self.prefix
            || key.strip_prefix(&self.prefix).is_some_and(|rest| rest.starts_with('/'))
    }
}

/// The path an object `key` under `prefix` takes below a destination: the
/// key without the prefix, which must be a plain relative path (no `..`, no
/// absolute path, no empty name). A key equal to the prefix is a single
/// object: its last segment is the file name.
pub fn relative_path(key: &str, prefix: &str) -> Result<PathBuf, String> {
    let rest = match key.strip_prefix(prefix) {
        Some("") => key.rsplit('/').next().unwrap_or(key),
        Some(rest) if prefix.is_empty() || prefix.ends_with('/') || rest.starts_with('/') => {
            rest.trim_start_matches('/')
        }
        // "data" matched "database/x": not under the prefix as a folder.
        Some(_) | None => return Err(format!("key {key:?} is not under {prefix:?}")),
    };
    let path = Path::new(rest);
    let plain =
        !rest.is_empty() && !rest.ends_with('/') && path.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err(format!("key {key:?} does not name a file below the destination (empty, a folder, or with ..)"));
    }
    Ok(path.to_owned())
}

/// A file name for object `key` alone: its last segment when that is a
/// plain name, else `object`.
pub fn file_name_of(key: &str) -> String {
    match key.rsplit('/').next() {
        Some(name) if !name.is_empty() && name != "." && name != ".." => name.to_owned(),
        _ => "object".to_owned(),
    }
}

/// An HTTPS (and plain HTTP, for local emulators) client on rustls with
/// `ring`, trusting the system's root certificates.
pub fn https_client() -> aws_sdk_s3::config::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .build_https()
}

/// An S3 client for `sdk`; path-style when `own_endpoint` (an emulator or
/// an S3-compatible store).
pub fn client_for(sdk: &aws_config::SdkConfig, own_endpoint: bool) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::from(sdk).force_path_style(own_endpoint).build();
    aws_sdk_s3::Client::from_conf(config)
}

/// An S3 client from the environment alone (a function's credentials and
/// region; `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` for an endpoint of
/// one's own).
pub async fn client_from_env() -> aws_sdk_s3::Client {
    let sdk = aws_config::defaults(BehaviorVersion::latest()).http_client(https_client()).load().await;
    client_for(&sdk, own_endpoint_in_env())
}

/// Whether the environment points S3 at an endpoint of one's own
/// (`AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`).
pub fn own_endpoint_in_env() -> bool {
    ENDPOINT_VARS.iter().any(|v| std::env::var_os(v).is_some_and(|u| !u.is_empty()))
}

/// An SDK error as one line: the service's code and message when it sent
/// one, else the whole cause chain (a refused connection, a DNS failure).
pub fn explain<E, R>(err: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match err.as_service_error() {
        Some(service) if service.code().is_some() => {
            format!("{}: {}", service.code().unwrap_or_default(), service.message().unwrap_or_default())
        }
        _ => DisplayErrorContext(err).to_string(),
    }
}

/// Every object key under `url` (taken as a folder, or the one object it
/// names), in S3's order; "folder" placeholder keys (ending in `/`) left out.
pub async fn list(client: &aws_sdk_s3::Client, url: &S3Url) -> anyhow::Result<Vec<(String, u64)>> {
    let mut keys = Vec::new();
    let mut pages = client.list_objects_v2().bucket(&url.bucket).prefix(&url.prefix).into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| anyhow::anyhow!("listing {url}: {}", explain(&e)))?;
        for object in page.contents() {
            if let Some(key) = object.key()
                && url.contains(key)
                && !key.ends_with('/')
            {
                keys.push((key.to_owned(), object.size().unwrap_or(0).max(0) as u64));
            }
        }
    }
    Ok(keys)
}

/// Streams one object to `path` (written beside, then renamed: an
/// interrupted download leaves no half file under the real name). Returns
/// its size.
pub async fn download(client: &aws_sdk_s3::Client, bucket: &str, key: &str, path: &Path) -> anyhow::Result<u64> {
    let object = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("downloading s3://{bucket}/{key}: {}", explain(&e)))?;
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await.with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp =
        path.with_file_name(format!(".{}.boxer-get", path.file_name().and_then(|n| n.to_str()).unwrap_or("object")));
    let mut file = tokio::fs::File::create(&tmp).await.with_context(|| format!("creating {}", tmp.display()))?;
    let mut body = object.body;
    let mut size = 0u64;
    while let Some(chunk) = body.try_next().await.with_context(|| format!("reading s3://{bucket}/{key}"))? {
        file.write_all(&chunk).await.with_context(|| format!("writing {}", tmp.display()))?;
        size += chunk.len() as u64;
    }
    file.flush().await?;
    drop(file);
    tokio::fs::rename(&tmp, path).await.with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(size)
}

/// Uploads the file at `path` as `s3://bucket/key`; returns its size.
pub async fn upload(client: &aws_sdk_s3::Client, bucket: &str, key: &str, path: &Path) -> anyhow::Result<u64> {
    let body = ByteStream::from_path(path).await.with_context(|| format!("reading {}", path.display()))?;
    let size = body.size_hint().0;
    anyhow::ensure!(
        size <= MAX_SINGLE_PUT,
        "{} is {size} bytes: Boxer uploads at most 5 GiB per file (one PUT; no multipart upload)",
        path.display()
    );
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(body)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("uploading {} to s3://{bucket}/{key}: {}", path.display(), explain(&e)))?;
    Ok(size)
}

/// The regular files under `dir`, recursively (symbolic links not
/// followed), each with its path relative to `dir` in `/` form, sorted.
pub fn files_under(dir: &Path) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).with_context(|| format!("listing {}", at.display()))? {
            let entry = entry.with_context(|| format!("listing {}", at.display()))?;
            let kind = entry.file_type().with_context(|| format!("reading {}", entry.path().display()))?;
            let path = entry.path();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                let rel = path.strip_prefix(dir).unwrap_or(&path);
                let rel = rel.to_str().with_context(|| format!("{} is not UTF-8", path.display()))?;
                files.push((path.clone(), rel.to_owned()));
            }
        }
    }
    files.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_name_a_bucket_and_a_prefix() {
        let u: S3Url = "s3://my-bucket/in/batch-1/".parse().unwrap();
        assert_eq!((u.bucket.as_str(), u.prefix.as_str()), ("my-bucket", "in/batch-1/"));
        let u: S3Url = "s3://my.bucket".parse().unwrap();
        assert_eq!(u.prefix, "");
        for bad in ["my-bucket/x", "s3://", "s3://AB/x", "s3://-bad/x", "s3://a/x"] {
            assert!(bad.parse::<S3Url>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_prefix_is_a_folder() {
        let u: S3Url = "s3://bkt/in".parse().unwrap();
        assert!(u.contains("in/x") && u.contains("in") && !u.contains("inside/x"));
        assert_eq!(u.key_of("a/b.txt"), "in/a/b.txt");
        let u: S3Url = "s3://bkt/in/".parse().unwrap();
        assert!(u.contains("in/x") && !u.contains("inside/x"));
        assert_eq!(u.key_of("b.txt"), "in/b.txt");
        let u: S3Url = "s3://bkt".parse().unwrap();
        assert!(u.contains("anything"));
        assert_eq!(u.key_of("b.txt"), "b.txt");
    }

    #[test]
    fn keys_become_paths_below_the_destination_only() {
        assert_eq!(relative_path("in/a/b.txt", "in/").unwrap(), Path::new("a/b.txt"));
        assert_eq!(relative_path("in/a/b.txt", "in").unwrap(), Path::new("a/b.txt"));
        assert_eq!(relative_path("in/b.txt", "in/b.txt").unwrap(), Path::new("b.txt"));
        assert_eq!(relative_path("b.txt", "").unwrap(), Path::new("b.txt"));
        for (key, prefix) in
            [("in/../../etc/passwd", "in/"), ("in/./x", "in/"), ("in/dir/", "in/"), ("inside/x", "in"), ("", "")]
        {
            assert!(relative_path(key, prefix).is_err(), "{key} under {prefix}");
        }
        assert_eq!(file_name_of("in/a b.txt"), "a b.txt");
        for odd in ["in/", "..", "in/..", ""] {
            assert_eq!(file_name_of(odd), "object", "{odd}");
        }
    }

    #[test]
    fn files_under_a_directory_keep_their_relative_paths() {
        let dir = std::env::temp_dir().join(format!("boxer-s3-files-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a.txt"), "a").unwrap();
        std::fs::write(dir.join("sub/b.txt"), "b").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("link")).unwrap();
        let rel: Vec<String> = files_under(&dir).unwrap().into_iter().map(|(_, r)| r).collect();
        assert_eq!(rel, ["a.txt", "sub/b.txt"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
