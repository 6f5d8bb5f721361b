//! `boxer put` and `boxer get`: files to and from an S3 bucket, as SCAR's
//! put/get, so that a map job over S3 needs no other tool.
//!
//! `put` uploads files, and directories recursively, under a prefix;
//! `get` downloads every object under a prefix into a directory. Object
//! keys become paths only after a check ([`relative_path`]): a bucket
//! written by someone else cannot make `get` write outside the directory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
pub use boxer_runtime::s3::{MAX_SINGLE_PUT, S3Url, relative_path};
use boxer_runtime::s3::{download, files_under, upload};

use crate::lambda::aws::AwsArgs;

/// Transfers under way at once: enough to hide one request's latency
/// behind others' without opening a connection per file.
const PARALLEL: usize = 8;

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
pub async fn client(aws: &AwsArgs) -> anyhow::Result<aws_sdk_s3::Client> {
    let sdk = aws.checked_config().await?;
    Ok(boxer_runtime::s3::client_for(&sdk, aws.endpoint_url.is_some() || boxer_runtime::s3::own_endpoint_in_env()))
}

/// The files to upload and their keys.
fn plan_put(sources: &[PathBuf], to: &S3Url) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let mut files = Vec::new();
    for source in sources {
        let meta = std::fs::metadata(source).with_context(|| format!("reading {}", source.display()))?;
        if meta.is_dir() {
            files.extend(files_under(source)?.into_iter().map(|(path, rel)| (path, to.key_of(&rel))));
        } else {
            let name = source
                .file_name()
                .and_then(|n| n.to_str())
                .with_context(|| format!("{} has no UTF-8 file name", source.display()))?;
            let key = if sources.len() == 1 && !to.prefix.is_empty() && !to.prefix.ends_with('/') {
                to.prefix.clone()
            } else {
                to.key_of(name)
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
                let size = upload(&client, &bucket, &key, &path).await?;
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

/// Runs `boxer get`; the number of objects written.
pub async fn get(args: &GetArgs) -> anyhow::Result<usize> {
    let client = client(&args.aws).await?;
    let from = &args.source;
    let keys = boxer_runtime::s3::list(&client, from).await?;
    anyhow::ensure!(!keys.is_empty(), "no objects under {from}");
    let mut files = Vec::new();
    for (key, _) in keys {
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

#[cfg(test)]
mod tests {
    use super::*;

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
