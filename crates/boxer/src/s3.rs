//! `boxer put` and `boxer get`: files to and from an S3 bucket, as SCAR's
//! put/get, so that a map job over S3 needs no other tool.
//!
//! `put` uploads files, and directories recursively, under a prefix;
//! `get` downloads every object under a prefix into a directory. Object
//! keys become paths only after a check ([`relative_path`]): a bucket
//! written by someone else cannot make `get` write outside the directory.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use aws_sdk_s3::primitives::ByteStream;
use tokio::io::AsyncWriteExt;

use crate::lambda::aws::{AwsArgs, describe};

/// Transfers under way at once: enough to hide one request's latency
/// behind others' without opening a connection per file.
const PARALLEL: usize = 8;

/// Largest object one PUT may carry (S3's limit; larger needs a multipart
/// upload, which `boxer put` does not do).
const MAX_SINGLE_PUT: u64 = 5 << 30;

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

/// `boxer put`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct PutArgs {
    /// Files or directories to upload (a directory's files go under the
    /// prefix with their paths relative to it).
    #[arg(required = true, value_name = "PATH")]
    pub sources: Vec<PathBuf>,
    /// Where: s3://BUCKET/PREFIX. One file to a prefix not ending in `/`
    /// becomes that key; otherwise each file's key is PREFIX/NAME.
    #[arg(value_name = "s3://BUCKET/PREFIX")]
    pub destination: S3Url,
    #[command(flatten)]
    pub aws: AwsArgs,
}

/// `boxer get`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct GetArgs {
    /// What: every object under s3://BUCKET/PREFIX/ (or the one object
    /// PREFIX).
    #[arg(value_name = "s3://BUCKET/PREFIX")]
    pub source: S3Url,
    /// Directory to write them to (created if missing), each at its key
    /// relative to the prefix.
    #[arg(value_name = "DIR", default_value = ".")]
    pub destination: PathBuf,
    #[command(flatten)]
    pub aws: AwsArgs,
}

/// An S3 client for `aws`; path-style addressing with an endpoint of one's
/// own (moto, MinIO and LocalStack do not resolve bucket host names).
async fn client(aws: &AwsArgs) -> anyhow::Result<aws_sdk_s3::Client> {
    let sdk = aws.checked_config().await?;
    let config = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(aws.endpoint_url.is_some()).build();
    Ok(aws_sdk_s3::Client::from_conf(config))
}

/// The files to upload and their keys.
fn plan_put(sources: &[PathBuf], to: &S3Url) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let mut files = Vec::new();
    let into_prefix = |name: &str| {
        if to.prefix.is_empty() || to.prefix.ends_with('/') {
            format!("{}{name}", to.prefix)
        } else {
            format!("{}/{name}", to.prefix)
        }
    };
    for source in sources {
        let meta = std::fs::metadata(source).with_context(|| format!("reading {}", source.display()))?;
        if meta.is_dir() {
            let mut stack = vec![source.clone()];
            while let Some(dir) = stack.pop() {
                for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
                    let path = entry.with_context(|| format!("listing {}", dir.display()))?.path();
                    let meta = std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
                    if meta.is_dir() {
                        stack.push(path);
                    } else if meta.is_file() {
                        let rel = path.strip_prefix(source).unwrap_or(&path);
                        let rel = rel.to_str().with_context(|| format!("{} is not UTF-8", path.display()))?;
                        files.push((path.clone(), into_prefix(rel)));
                    }
                }
            }
        } else {
            let name = source
                .file_name()
                .and_then(|n| n.to_str())
                .with_context(|| format!("{} has no UTF-8 file name", source.display()))?;
            let key = if sources.len() == 1 && !to.prefix.is_empty() && !to.prefix.ends_with('/') {
                to.prefix.clone()
            } else {
                into_prefix(name)
            };
            files.push((source.clone(), key));
        }
    }
    files.sort_by(|a, b| a.1.cmp(&b.1));
    for (path, _) in &files {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        anyhow::ensure!(
            size <= MAX_SINGLE_PUT,
            "{} is {size} bytes: boxer put uploads at most 5 GiB per file (one PUT; no multipart upload)",
            path.display()
        );
    }
    Ok(files)
}

/// Runs `boxer put`; the number of objects written.
pub async fn put(args: &PutArgs) -> anyhow::Result<usize> {
    let files = plan_put(&args.sources, &args.destination)?;
    anyhow::ensure!(!files.is_empty(), "nothing to upload: the directories are empty");
    let client = client(&args.aws).await?;
    let bucket = Arc::new(args.destination.bucket.clone());
    let started = Instant::now();
    let mut total = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    let mut queue = files.into_iter();
    let mut done = 0usize;
    loop {
        while tasks.len() < PARALLEL {
            let Some((path, key)) = queue.next() else { break };
            let (client, bucket) = (client.clone(), bucket.clone());
            tasks.spawn(async move {
                let body = ByteStream::from_path(&path).await.with_context(|| format!("reading {}", path.display()))?;
                let size = body.size_hint().0;
                client.put_object().bucket(bucket.as_str()).key(&key).body(body).send().await.map_err(|e| {
                    anyhow::anyhow!("uploading {} to s3://{bucket}/{key}: {}", path.display(), describe(&e))
                })?;
                anyhow::Ok((key, size))
            });
        }
        let Some(joined) = tasks.join_next().await else { break };
        let (key, size) = joined.context("an upload task panicked")??;
        println!("put s3://{bucket}/{key} ({size} bytes)");
        total += size;
        done += 1;
    }
    eprintln!("{done} objects, {total} bytes in {:.1} s", started.elapsed().as_secs_f64());
    Ok(done)
}

/// The path an object `key` under `prefix` takes below the destination:
/// the key without the prefix, which must be a plain relative path (no
/// `..`, no absolute path, no empty name). A key equal to the prefix is a
/// single object: its last segment is the file name.
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

/// Runs `boxer get`; the number of objects written.
pub async fn get(args: &GetArgs) -> anyhow::Result<usize> {
    let client = client(&args.aws).await?;
    let from = &args.source;
    let mut keys = Vec::new();
    let mut pages = client.list_objects_v2().bucket(&from.bucket).prefix(&from.prefix).into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| anyhow::anyhow!("listing {from}: {}", describe(&e)))?;
        for object in page.contents() {
            if let Some(key) = object.key() {
                keys.push(key.to_owned());
            }
        }
    }
    anyhow::ensure!(!keys.is_empty(), "no objects under {from}");
    let mut files = Vec::new();
    let folder = format!("{}/", from.prefix);
    for key in keys {
        // A prefix is a folder (or one object): "in" does not take "inside/x".
        let under =
            from.prefix.is_empty() || from.prefix.ends_with('/') || key == from.prefix || key.starts_with(&folder);
        if !under {
            continue;
        }
        match relative_path(&key, &from.prefix) {
            Ok(rel) => files.push((key, args.destination.join(rel))),
            Err(why) => eprintln!("skipped: {why}"),
        }
    }
    let started = Instant::now();
    let bucket = Arc::new(from.bucket.clone());
    let mut tasks = tokio::task::JoinSet::new();
    let mut queue = files.into_iter();
    let (mut done, mut total) = (0usize, 0u64);
    loop {
        while tasks.len() < PARALLEL {
            let Some((key, path)) = queue.next() else { break };
            let (client, bucket) = (client.clone(), bucket.clone());
            tasks.spawn(async move {
                let size = download(&client, &bucket, &key, &path).await?;
                anyhow::Ok((key, path, size))
            });
        }
        let Some(joined) = tasks.join_next().await else { break };
        let (key, path, size) = joined.context("a download task panicked")??;
        println!("got s3://{bucket}/{key} -> {} ({size} bytes)", path.display());
        total += size;
        done += 1;
    }
    eprintln!("{done} objects, {total} bytes in {:.1} s", started.elapsed().as_secs_f64());
    Ok(done)
}

/// Streams one object to `path` (written beside, then renamed: an
/// interrupted download leaves no half file under the real name).
async fn download(client: &aws_sdk_s3::Client, bucket: &str, key: &str, path: &Path) -> anyhow::Result<u64> {
    let object = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("downloading s3://{bucket}/{key}: {}", describe(&e)))?;
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
    }

    #[test]
    fn put_keys_follow_cp() {
        let dir = std::env::temp_dir().join(format!("boxer-s3-plan-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("data/sub")).unwrap();
        std::fs::write(dir.join("data/a.txt"), "a").unwrap();
        std::fs::write(dir.join("data/sub/b.txt"), "b").unwrap();
        std::fs::write(dir.join("one.txt"), "1").unwrap();
        let to: S3Url = "s3://bkt/in".parse().unwrap();
        let keys = |sources: &[PathBuf], to: &S3Url| -> Vec<String> {
            plan_put(sources, to).unwrap().into_iter().map(|(_, k)| k).collect()
        };
        assert_eq!(keys(&[dir.join("data")], &to), ["in/a.txt", "in/sub/b.txt"]);
        assert_eq!(keys(&[dir.join("one.txt")], &to), ["in"]);
        assert_eq!(keys(&[dir.join("one.txt")], &"s3://bkt/in/".parse().unwrap()), ["in/one.txt"]);
        assert_eq!(keys(&[dir.join("one.txt"), dir.join("data")], &to), ["in/a.txt", "in/one.txt", "in/sub/b.txt"]);
        assert!(plan_put(&[dir.join("missing")], &to).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
