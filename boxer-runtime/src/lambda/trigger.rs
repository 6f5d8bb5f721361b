//! S3-triggered invocations: SCAR's high-throughput model.
//!
//! `boxer deploy` of a spec with `[trigger]` packs [`TriggerConfig`] as
//! [`TRIGGER_FILE`] beside `bootstrap` and points the input bucket's event
//! notification at the function. S3 then invokes it with an event whose
//! `Records` each name one new object; the runtime processes each with the
//! service's command, as `boxer map` does an item ([`crate::map_item`]):
//! download, run, upload what the command wrote to `$BOXER_OUTPUT_DIR`
//! under the output prefix. No cluster is joined: a triggered run is one
//! function on its own.
//!
//! Events are read leniently, field by field: emulators leave out
//! `userIdentity` and `requestParameters`, and keys are URL-encoded with
//! `+` for spaces (S3's own encoding; moto encodes `/` as well). S3's
//! `s3:TestEvent` (sent when a notification is configured) is answered
//! without work.

use std::collections::BTreeMap;
use std::path::Path;

use boxer_proto::lambda::{ERROR_BAD_EVENT, ErrorBody};
use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::map_item::{self, MapItemArgs, Place};
use crate::s3::{self, S3Url};

/// The file, in the function's task root, that says what to run per object.
pub const TRIGGER_FILE: &str = "boxer-trigger.json";

/// The error type of a triggered invocation with an item that failed: Lambda
/// retries asynchronous invocations (twice by default), and the
/// function's logs name the object.
pub const ERROR_TRIGGER_FAILED: &str = "Boxer.TriggerFailed";

/// What a triggered function runs, as `boxer deploy` packed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerConfig {
    /// The input, as configured (only objects under it are processed).
    pub input: String,
    /// Where results go: s3://BUCKET/PREFIX.
    pub output: String,
    /// The service's command; `{}` is the object's local path.
    pub command: Vec<String>,
    /// The service's environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// One object an event names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    /// Bucket name.
    pub bucket: String,
    /// Key, decoded.
    pub key: String,
}

/// What a triggered invocation answers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TriggerReport {
    /// Objects processed, as s3:// URLs.
    pub processed: Vec<String>,
    /// Records left out (not an object creation, not under the input).
    pub skipped: Vec<String>,
}

/// Whether an invocation's body is an S3 event (or S3's test event) rather
/// than a Boxer node event.
pub fn is_s3_event(body: &[u8]) -> bool {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else { return false };
    value.get("Records").is_some_and(serde_json::Value::is_array) || is_test_event(&value)
}

fn is_test_event(value: &serde_json::Value) -> bool {
    value.get("Event").and_then(serde_json::Value::as_str) == Some("s3:TestEvent")
}

/// A key as S3 notifications carry it: `+` for spaces, the rest
/// percent-encoded.
pub fn decode_key(raw: &str) -> String {
    percent_decode_str(&raw.replace('+', " ")).decode_utf8_lossy().into_owned()
}

/// The objects of an S3 event, and the records left out with why.
pub fn objects(body: &[u8]) -> Result<(Vec<ObjectRef>, Vec<String>), ErrorBody> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| bad(format!("not JSON: {e}")))?;
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    let Some(records) = value.get("Records").and_then(serde_json::Value::as_array) else {
        return Ok((found, skipped));
    };
    for (i, record) in records.iter().enumerate() {
        let text = |path: &[&str]| {
            let mut at = record;
            for p in path {
                at = at.get(*p)?;
            }
            at.as_str().map(str::to_owned)
        };
        let source = text(&["eventSource"]).unwrap_or_default();
        if !source.is_empty() && source != "aws:s3" {
            skipped.push(format!("record {i}: event source {source:?}, not aws:s3"));
            continue;
        }
        let event = text(&["eventName"]).unwrap_or_default();
        if !event.is_empty() && !event.trim_start_matches("s3:").starts_with("ObjectCreated") {
            skipped.push(format!("record {i}: {event} is not an object creation"));
            continue;
        }
        match (text(&["s3", "bucket", "name"]), text(&["s3", "object", "key"])) {
            (Some(bucket), Some(key)) if !bucket.is_empty() && !key.is_empty() => {
                found.push(ObjectRef { bucket, key: decode_key(&key) });
            }
            _ => skipped.push(format!("record {i}: no s3.bucket.name or s3.object.key")),
        }
    }
    Ok((found, skipped))
}

fn bad(why: String) -> ErrorBody {
    ErrorBody { error_type: ERROR_BAD_EVENT.to_owned(), error_message: format!("S3 event: {why}") }
}

/// Reads the trigger configuration from the task root.
pub fn load(task_root: &Path) -> Result<TriggerConfig, ErrorBody> {
    let path = task_root.join(TRIGGER_FILE);
    let text = std::fs::read(&path).map_err(|e| {
        bad(format!(
            "this function has no trigger ({}: {e}); give its spec a [trigger] table and run boxer deploy",
            path.display()
        ))
    })?;
    serde_json::from_slice(&text).map_err(|e| bad(format!("{} is not a Boxer trigger: {e}", path.display())))
}

/// Handles an S3 event: every new object under the input processed in
/// turn. An object that failed makes the invocation fail
/// ([`ERROR_TRIGGER_FAILED`]) after the others were done.
pub async fn handle(task_root: &Path, body: &[u8], served: u64) -> Result<TriggerReport, ErrorBody> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| bad(format!("not JSON: {e}")))?;
    if is_test_event(&value) {
        info!("S3 test event: nothing to do");
        return Ok(TriggerReport::default());
    }
    let config = load(task_root)?;
    let input: S3Url = config.input.parse().map_err(|e| bad(format!("trigger input: {e}")))?;
    let output: S3Url = config.output.parse().map_err(|e| bad(format!("trigger output: {e}")))?;
    if config.command.first().is_none_or(String::is_empty) {
        return Err(bad("the trigger's command is empty".into()));
    }
    let (found, mut skipped) = objects(body)?;
    let client = s3::client_from_env().await;
    let path = std::env::var_os("PATH");
    let mut env: Vec<(String, String)> = config.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    if !config.env.contains_key("PATH") {
        let path = super::task::program_path(task_root, path.as_deref());
        env.push(("PATH".into(), path.to_string_lossy().into_owned()));
    }
    let mut report = TriggerReport { processed: vec![], skipped: vec![] };
    let mut failed = Vec::new();
    for (n, object) in found.into_iter().enumerate() {
        let url = format!("s3://{}/{}", object.bucket, object.key);
        if object.bucket != input.bucket || !input.contains(&object.key) {
            skipped.push(format!("{url} is not under the trigger's input {input}"));
            continue;
        }
        let args = MapItemArgs {
            input: Place::S3(S3Url { bucket: object.bucket.clone(), prefix: object.key.clone() }),
            output: Place::S3(output.clone()),
            command: config.command.clone(),
        };
        let scratch = std::env::temp_dir().join(format!("boxer-trigger-{served}-{n}"));
        let code = map_item::process(&client, &args, &scratch, &env).await;
        info!(object = %url, exit_code = code, "processed");
        if code == 0 {
            report.processed.push(url);
        } else {
            failed.push(format!("{url}: exit code {code}"));
        }
    }
    for why in &skipped {
        warn!("skipped: {why}");
    }
    report.skipped = skipped;
    if failed.is_empty() {
        Ok(report)
    } else {
        Err(ErrorBody {
            error_type: ERROR_TRIGGER_FAILED.to_owned(),
            error_message: format!("{} of the event's objects failed: {}", failed.len(), failed.join("; ")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as moto sends it: no userIdentity, no requestParameters,
    /// the key quote_plus-encoded (`/` too).
    const MOTO: &str = r#"{"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2026-12-01T10:00:00.000Z", "eventName": "ObjectCreated:Put",
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "boxer",
               "bucket": {"name": "in-bkt", "arn": "arn:aws:s3:::in-bkt"},
               "object": {"key": "batch%2Fmy+file%2B1.txt", "size": 5, "eTag": "x"}}}]}"#;

    #[test]
    fn moto_records_are_read_and_keys_decoded() {
        assert!(is_s3_event(MOTO.as_bytes()));
        let (found, skipped) = objects(MOTO.as_bytes()).unwrap();
        assert_eq!(found, [ObjectRef { bucket: "in-bkt".into(), key: "batch/my file+1.txt".into() }]);
        assert!(skipped.is_empty());
    }

    #[test]
    fn other_records_are_skipped_not_fatal() {
        let body = r#"{"Records": [
            {"eventSource": "aws:sqs", "body": "x"},
            {"eventSource": "aws:s3", "eventName": "ObjectRemoved:Delete", "s3": {"bucket": {"name": "b"}, "object": {"key": "k"}}},
            {"eventSource": "aws:s3", "s3": {"bucket": {"name": "b"}}},
            {"s3": {"bucket": {"name": "bkt"}, "object": {"key": "a.txt"}}}
        ]}"#;
        let (found, skipped) = objects(body.as_bytes()).unwrap();
        assert_eq!(found, [ObjectRef { bucket: "bkt".into(), key: "a.txt".into() }]);
        assert_eq!(skipped.len(), 3, "{skipped:?}");
    }

    #[test]
    fn node_events_and_garbage_are_not_s3_events() {
        assert!(!is_s3_event(br#"{"version": 1, "cluster": "c"}"#));
        assert!(!is_s3_event(b"not json"));
        assert!(!is_s3_event(br#"{"Records": "no"}"#));
        assert!(is_s3_event(br#"{"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"}"#));
    }

    #[tokio::test]
    async fn a_function_without_a_trigger_says_how_to_get_one() {
        let dir = std::env::temp_dir().join(format!("boxer-trigger-none-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = handle(&dir, MOTO.as_bytes(), 1).await.unwrap_err();
        assert_eq!(err.error_type, ERROR_BAD_EVENT);
        assert!(err.error_message.contains("[trigger]"), "{}", err.error_message);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
