//! Credentials, region and endpoint: the AWS configuration every Lambda
//! command loads the same way.
//!
//! Boxer reads the standard AWS configuration chain (the one the `aws` CLI
//! reads: `AWS_PROFILE`, `AWS_REGION`, `~/.aws/config` and `credentials`,
//! SSO, `credential_process`, `AWS_ENDPOINT_URL` and
//! `AWS_ENDPOINT_URL_LAMBDA`, container and instance roles), so whatever
//! works for `aws lambda list-functions` works for `boxer`; `--region`,
//! `--profile` and `--endpoint-url` go on top. HTTPS is rustls with `ring`,
//! the TLS stack the rest of the workspace uses, instead of the SDK's default
//! aws-lc-rs (a C library whose build needs cmake and minutes).
//!
//! [`describe`] turns an SDK error into a sentence that says what to do,
//! because the SDK's own `Display` of a failed call is "service error".

use std::error::Error as StdError;
use std::fmt;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_lambda::config::ProvideCredentials;
use aws_sdk_lambda::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls;

/// Where to find AWS: flattened into every command that talks to it.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AwsArgs {
    /// AWS region, e.g. eu-west-1 (default: AWS_REGION, else the profile's
    /// `region`).
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// Profile of ~/.aws/config and ~/.aws/credentials (default: AWS_PROFILE,
    /// else `default`).
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// Send every AWS request to this URL instead of AWS, e.g. a local
    /// emulator (moto, LocalStack) at http://127.0.0.1:5000 (default:
    /// AWS_ENDPOINT_URL_LAMBDA or AWS_ENDPOINT_URL, else AWS itself).
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
}

/// Why the AWS configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// No region anywhere in the chain.
    #[error("no AWS region: pass --region (e.g. --region eu-west-1), set AWS_REGION, or set `region` in ~/.aws/config")]
    NoRegion,
    /// The credentials chain found nothing, or its source failed.
    #[error(
        "no usable AWS credentials{profile}: {why}. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, run `aws configure` \
         (or `aws sso login`), or pass --profile NAME"
    )]
    NoCredentials {
        /// ` (profile NAME)` when a profile was chosen, else empty.
        profile: String,
        /// What the chain said.
        why: String,
    },
}

impl AwsArgs {
    /// The SDK configuration: the standard chain with the flags on top and
    /// Boxer's HTTPS client (rustls on ring). Credentials are resolved
    /// lazily, on the first request; [`AwsArgs::checked_config`] resolves
    /// them now.
    pub async fn sdk_config(&self) -> SdkConfig {
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(https_client());
        if let Some(profile) = &self.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(region) = &self.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(url) = &self.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        loader.load().await
    }

    /// [`AwsArgs::sdk_config`], checked: a region is set and credentials
    /// resolve, so a command fails before it does any work, with an error
    /// that says where AWS looked.
    pub async fn checked_config(&self) -> Result<SdkConfig, AwsError> {
        let config = self.sdk_config().await;
        if config.region().is_none() {
            return Err(AwsError::NoRegion);
        }
        let profile = match &self.profile {
            Some(p) => format!(" (profile {p})"),
            None => String::new(),
        };
        let Some(provider) = config.credentials_provider() else {
            return Err(AwsError::NoCredentials { profile, why: "no credentials provider".into() });
        };
        if let Err(e) = provider.provide_credentials().await {
            return Err(AwsError::NoCredentials { profile, why: error_chain(&e) });
        }
        Ok(config)
    }
}

/// Where requests of `config` go, for messages: the endpoint URL, or the
/// region's AWS endpoint.
pub fn target(config: &SdkConfig) -> String {
    match (config.endpoint_url(), config.region()) {
        (Some(url), _) => url.to_owned(),
        (None, Some(region)) => format!("AWS {region}"),
        (None, None) => "AWS".to_owned(),
    }
}

/// An HTTPS (and plain HTTP, for local emulators) client on rustls with
/// `ring`, trusting the system's root certificates.
pub fn https_client() -> aws_sdk_lambda::config::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .build_https()
}

/// An SDK error as one sentence that says what went wrong and, for the
/// usual causes, what to do.
pub fn describe<E, R>(err: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + StdError + 'static,
    R: fmt::Debug,
{
    match err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let code = e.code().unwrap_or("error");
            let message = e.message().unwrap_or("");
            let hint = hint(code, message);
            format!("{code}: {message}{hint}")
        }
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => format!(
            "could not reach the endpoint ({}); check the network, --region and --endpoint-url",
            StdError::source(err).map_or_else(|| err.to_string(), error_chain)
        ),
        _ => DisplayErrorContext(err).to_string(),
    }
}

/// What to do about an AWS error code.
fn hint(code: &str, message: &str) -> &'static str {
    match code {
        "AccessDeniedException" | "AccessDenied" | "AuthorizationError" => {
            " (the credentials lack a permission: the IAM user or role needs lambda:GetFunction, \
             lambda:GetFunctionConfiguration, lambda:CreateFunction, lambda:UpdateFunctionCode, \
             lambda:UpdateFunctionConfiguration, lambda:DeleteFunction, lambda:InvokeFunction and \
             iam:PassRole on the execution role, plus the ECR actions for --image: see docs/lambda.md)"
        }
        "UnrecognizedClientException"
        | "InvalidClientTokenId"
        | "InvalidSignatureException"
        | "SignatureDoesNotMatch" => {
            " (the credentials are not valid here: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or --profile)"
        }
        "ExpiredToken" | "ExpiredTokenException" | "RequestExpired" => {
            " (the session has expired: refresh it, e.g. `aws sso login`)"
        }
        "InvalidParameterValueException" if message.contains("role") => {
            " (the execution role must exist and trust lambda.amazonaws.com; a role created seconds ago \
             can take a few seconds to become usable: try again)"
        }
        "CodeStorageExceededException" => " (delete old function versions or ask AWS for more code storage)",
        "TooManyRequestsException" | "ThrottlingException" => " (AWS is throttling this account: try again shortly)",
        _ => "",
    }
}

/// An error and its sources on one line.
pub fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let line = s.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn flags_go_on_top_of_the_chain() {
        let args = AwsArgs {
            region: Some("eu-north-1".into()),
            profile: None,
            endpoint_url: Some("http://127.0.0.1:9".into()),
        };
        let config = args.sdk_config().await;
        assert_eq!(config.region().map(|r| r.as_ref()), Some("eu-north-1"));
        assert_eq!(config.endpoint_url(), Some("http://127.0.0.1:9"));
        assert_eq!(target(&config), "http://127.0.0.1:9");
    }

    #[test]
    fn hints_say_what_to_do() {
        assert!(hint("AccessDeniedException", "").contains("iam:PassRole"));
        assert!(
            hint("InvalidParameterValueException", "The role defined for the function cannot be assumed")
                .contains("trust")
        );
        assert_eq!(hint("InvalidParameterValueException", "memory"), "");
        assert!(hint("ExpiredToken", "").contains("sso login"));
    }
}
