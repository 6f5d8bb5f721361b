//! `[trigger]` at deploy time: what the function runs per object (packed
//! as [`TRIGGER_FILE`]) and the input bucket's event notification that
//! invokes it, with the permission S3 needs for that.
//!
//! The notification is added beside the bucket's other ones (under an id of
//! Boxer's, [`notification_id`]), and replaced on a new deploy; `boxer deploy
//! --delete` removes it. The runtime's side is
//! [`boxer_runtime::lambda::trigger`].

use std::path::{Path, PathBuf};

use anyhow::Context;
use aws_config::SdkConfig;
use aws_sdk_s3::operation::get_bucket_notification_configuration::GetBucketNotificationConfigurationOutput as NotificationsOutput;
use aws_sdk_s3::types::{
    Event, FilterRule, FilterRuleName, LambdaFunctionConfiguration, NotificationConfiguration,
    NotificationConfigurationFilter, S3KeyFilter,
};
pub use boxer_runtime::lambda::trigger::{TRIGGER_FILE, TriggerConfig};
use boxer_runtime::s3::explain;

use super::aws::describe;
use super::package::{UserFile, UserFileKind};
use crate::spec::{Spec, Trigger};

/// The events that invoke the function: every way an object is created
/// (PUT, POST, copy, multipart upload).
const EVENTS: &str = "s3:ObjectCreated:*";

/// Id of the function's notification in the bucket's configuration.
pub fn notification_id(function: &str) -> String {
    format!("boxer-{function}")
}

/// Id of the function's permission statement for S3 of `bucket`.
fn statement_id(bucket: &str) -> String {
    format!("boxer-s3-{}", bucket.replace('.', "-"))
}

/// What the function runs per object, from the spec.
pub fn config(spec: &Spec, trigger: &Trigger) -> anyhow::Result<TriggerConfig> {
    let service = spec
        .services
        .iter()
        .find(|s| s.name == trigger.service)
        .with_context(|| format!("trigger.service: there is no service {:?}", trigger.service))?;
    Ok(TriggerConfig {
        input: trigger.input.to_string(),
        output: trigger.output.to_string(),
        command: service.command.clone(),
        env: service.env.clone(),
    })
}

/// Writes the trigger file under `dir` and returns it as a file of the
/// package (beside `bootstrap`).
pub fn package_file(spec: &Spec, trigger: &Trigger, dir: &Path) -> anyhow::Result<UserFile> {
    let config = config(spec, trigger)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path: PathBuf = dir.join(TRIGGER_FILE);
    std::fs::write(&path, serde_json::to_vec_pretty(&config)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(UserFile { path: TRIGGER_FILE.to_owned(), kind: UserFileKind::File { source: path, executable: false } })
}

/// Lets S3 invoke `function` for the input bucket, and points the bucket's
/// notification for new objects under the input prefix at it.
pub async fn configure(
    sdk: &SdkConfig,
    own_endpoint: bool,
    trigger: &Trigger,
    function: &str,
    arn: &str,
) -> anyhow::Result<()> {
    let bucket = &trigger.input.bucket;
    let lambda = aws_sdk_lambda::Client::new(sdk);
    let permitted = lambda
        .add_permission()
        .function_name(function)
        .statement_id(statement_id(bucket))
        .action("lambda:InvokeFunction")
        .principal("s3.amazonaws.com")
        .source_arn(format!("arn:aws:s3:::{bucket}"))
        .send()
        .await;
    match permitted {
        Ok(_) => {}
        // Deployed before: the statement is there.
        Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_conflict_exception()) => {}
        Err(e) => anyhow::bail!("letting S3 of bucket {bucket} invoke {function} (AddPermission): {}", describe(&e)),
    }
    let s3 = boxer_runtime::s3::client_for(sdk, own_endpoint);
    let id = notification_id(function);
    let current = current_notifications(&s3, bucket).await?;
    let mut lambdas: Vec<LambdaFunctionConfiguration> =
        current.lambda_function_configurations().iter().filter(|c| c.id() != Some(id.as_str())).cloned().collect();
    let mut ours = LambdaFunctionConfiguration::builder().id(&id).lambda_function_arn(arn).events(Event::from(EVENTS));
    if !trigger.input.prefix.is_empty() {
        let rule = FilterRule::builder().name(FilterRuleName::Prefix).value(&trigger.input.prefix).build();
        let filter = NotificationConfigurationFilter::builder().key(S3KeyFilter::builder().filter_rules(rule).build());
        ours = ours.filter(filter.build());
    }
    lambdas.push(ours.build().context("building the notification")?);
    put_notifications(&s3, bucket, &current, lambdas).await
}

/// Writes the bucket's notifications: `lambdas`, and the queue, topic and
/// EventBridge ones of `current` as they were.
async fn put_notifications(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    current: &NotificationsOutput,
    lambdas: Vec<LambdaFunctionConfiguration>,
) -> anyhow::Result<()> {
    let config = NotificationConfiguration::builder()
        .set_lambda_function_configurations(Some(lambdas))
        .set_queue_configurations(Some(current.queue_configurations().to_vec()))
        .set_topic_configurations(Some(current.topic_configurations().to_vec()))
        .set_event_bridge_configuration(current.event_bridge_configuration().cloned())
        .build();
    s3.put_bucket_notification_configuration()
        .bucket(bucket)
        .notification_configuration(config)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("writing the event notifications of bucket {bucket}: {}", explain(&e)))?;
    Ok(())
}

/// The bucket's notification configuration. An empty one that does not
/// parse counts as empty: moto answers `<GetBucketNotificationResponse/>`
/// where S3 answers `<NotificationConfiguration/>`.
async fn current_notifications(s3: &aws_sdk_s3::Client, bucket: &str) -> anyhow::Result<NotificationsOutput> {
    match s3.get_bucket_notification_configuration().bucket(bucket).send().await {
        Ok(current) => Ok(current),
        Err(aws_sdk_s3::error::SdkError::ServiceError(e))
            if e.raw().status().is_success() && e.raw().body().bytes().is_some_and(is_empty_xml) =>
        {
            Ok(NotificationsOutput::builder().build())
        }
        Err(e) => anyhow::bail!("reading the event notifications of bucket {bucket}: {}", explain(&e)),
    }
}

/// Whether `body` is an XML document of one empty element (`<X/>`).
fn is_empty_xml(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let text = match text.strip_prefix("<?xml") {
        Some(rest) => rest.split_once("?>").map_or("", |(_, r)| r).trim(),
        None => text,
    };
    text.starts_with('<') && text.ends_with("/>") && text.matches('<').count() == 1
}

/// Removes the function's notification from the input bucket (the other
/// notifications stay); whether there was one.
pub async fn remove(sdk: &SdkConfig, own_endpoint: bool, trigger: &Trigger, function: &str) -> anyhow::Result<bool> {
    let bucket = &trigger.input.bucket;
    let s3 = boxer_runtime::s3::client_for(sdk, own_endpoint);
    let id = notification_id(function);
    let current = current_notifications(&s3, bucket).await?;
    let lambdas = current.lambda_function_configurations();
    if !lambdas.iter().any(|c| c.id() == Some(id.as_str())) {
        return Ok(false);
    }
    let kept = lambdas.iter().filter(|c| c.id() != Some(id.as_str())).cloned().collect();
    put_notifications(&s3, bucket, &current, kept).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packed_config_is_the_services_command() {
        let text = "[cluster]\nname = \"t\"\n[services.conv]\ncommand = [\"wc\", \"-l\", \"{}\"]\nenv = { MODE = \"fast\" }\n\
                    [trigger]\ninput = \"s3://in-bkt/new/\"\noutput = \"s3://out-bkt/done/\"\n";
        let spec = crate::spec::parse(Path::new("/x/boxer.toml"), text).unwrap();
        let trigger = spec.lambda.trigger.clone().expect("trigger parsed");
        assert_eq!(trigger.service, "conv");
        let config = config(&spec, &trigger).unwrap();
        assert_eq!(config.command, ["wc", "-l", "{}"]);
        assert_eq!(config.env.get("MODE").map(String::as_str), Some("fast"));
        assert_eq!((config.input.as_str(), config.output.as_str()), ("s3://in-bkt/new/", "s3://out-bkt/done/"));
        assert_eq!(statement_id("my.bucket"), "boxer-s3-my-bucket");
    }

    #[test]
    fn an_empty_answer_of_any_name_is_no_notifications() {
        assert!(is_empty_xml(
            b"<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<GetBucketNotificationResponse xmlns=\"x\"/>"
        ));
        assert!(is_empty_xml(b"<NotificationConfiguration/>"));
        assert!(!is_empty_xml(b"<NotificationConfiguration><QueueConfiguration/></NotificationConfiguration>"));
        assert!(!is_empty_xml(b"<Error><Code>AccessDenied</Code></Error>"));
        assert!(!is_empty_xml(b""));
    }

    #[test]
    fn a_trigger_that_would_feed_itself_is_refused() {
        let spec = |trigger: &str| {
            let text = format!(
                "[cluster]\nname = \"t\"\n[services.a]\ncommand = [\"x\"]\n[services.b]\ncommand = [\"y\"]\n[trigger]\n{trigger}"
            );
            crate::spec::parse(Path::new("/x/boxer.toml"), &text).map_err(|e| e.to_string())
        };
        let err = spec("input = \"s3://bkt/in/\"\noutput = \"s3://bkt/in/out/\"\nservice = \"a\"\n").unwrap_err();
        assert!(err.contains("trigger.output") && err.contains("invoke the function again"), "{err}");
        let err = spec("input = \"s3://bkt/in/\"\noutput = \"s3://bkt\"\nservice = \"a\"\n").unwrap_err();
        assert!(err.contains("overlaps"), "{err}");
        let err = spec("input = \"s3://bkt/in/\"\noutput = \"s3://bkt/out/\"\n").unwrap_err();
        assert!(err.contains("several services"), "{err}");
        let err = spec("input = \"s3://bkt/in/\"\noutput = \"s3://bkt/out/\"\nservice = \"c\"\n").unwrap_err();
        assert!(err.contains("no service \"c\""), "{err}");
        let err = spec("input = \"bkt/in/\"\noutput = \"s3://bkt/out/\"\nservice = \"a\"\n").unwrap_err();
        assert!(err.contains("trigger.input"), "{err}");
        assert!(spec("input = \"s3://bkt/in/\"\noutput = \"s3://bkt/out/\"\nservice = \"a\"\n").is_ok());
    }
}
