//! Create, update or delete one Lambda function: the Lambda API calls of
//! `boxer deploy`, apart from flags, files and printing so that unit tests
//! can drive them with a mocked client.
//!
//! Lambda changes a function in steps that each must finish before the next
//! may start: a new function is `Pending` until `Active`; an update is
//! `InProgress` until `Successful`, and a second update during the first is
//! refused with `ResourceConflictException`. So an update is: code (and
//! architecture, which UpdateFunctionCode carries), wait, configuration,
//! wait; each wait uses the SDK's waiter and reports progress.

use std::time::Duration;

use aws_sdk_lambda::Client;
use aws_sdk_lambda::client::Waiters;
use aws_sdk_lambda::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{EphemeralStorage, FunctionCode, FunctionConfiguration, PackageType, Runtime};

use super::aws::describe;
use super::{Architecture, HANDLER};

/// Longest wait for a new function to become active. Zip functions take
/// seconds; container functions are optimised first, which AWS says can take
/// minutes for large images.
pub const ACTIVE_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest wait for an update to finish (same reasoning as
/// [`ACTIVE_TIMEOUT`]).
pub const UPDATE_TIMEOUT: Duration = Duration::from_secs(600);
/// How often CreateFunction is retried while IAM has not yet made a new
/// execution role visible to Lambda ("cannot be assumed"); IAM is
/// eventually consistent and this usually clears within ten seconds.
pub const ROLE_RETRIES: u32 = 5;
/// Pause between those retries.
pub const ROLE_RETRY_DELAY: Duration = Duration::from_secs(2);

/// Everything about the function except its code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionSettings {
    /// Function name.
    pub name: String,
    /// Execution role ARN.
    pub role: String,
    /// Memory, MB.
    pub memory: u32,
    /// Timeout, seconds.
    pub timeout: u32,
    /// Architecture.
    pub architecture: Architecture,
    /// `/tmp` size, MB.
    pub ephemeral_storage: u32,
    /// Description shown in the console.
    pub description: String,
}

/// The function's code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Code {
    /// A zip package (runtime `provided.al2023`, handler `bootstrap`).
    Zip(Vec<u8>),
    /// A container image in ECR, by URI.
    Image(String),
}

impl Code {
    fn package_type(&self) -> PackageType {
        match self {
            Code::Zip(_) => PackageType::Zip,
            Code::Image(_) => PackageType::Image,
        }
    }
}

/// What [`deploy`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The function did not exist.
    Created,
    /// The function existed and now has the new code and settings.
    Updated,
}

/// A Lambda call failed; the message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    /// An API call failed.
    #[error("{operation} {function} on {target}: {message}")]
    Api {
        /// The operation (`CreateFunction`, ...).
        operation: &'static str,
        /// The function.
        function: String,
        /// Where the request went (endpoint or region).
        target: String,
        /// [`describe`]d error.
        message: String,
    },
    /// The function changes between zip and image, which Lambda refuses.
    #[error(
        "function {function} is {existing} function and Lambda cannot turn it into {wanted} one; \
         delete it first with `boxer deploy --delete`, or give this deploy another --function name"
    )]
    PackageTypeChange {
        /// The function.
        function: String,
        /// What it is (`a zip`).
        existing: String,
        /// What this deploy wants (`an image`).
        wanted: String,
    },
    /// A wait ended without the function being ready.
    #[error("function {function} did not become {goal}: {why}")]
    NotReady {
        /// The function.
        function: String,
        /// `active` or `updated`.
        goal: &'static str,
        /// Lambda's reason, or the waiter's error.
        why: String,
    },
}

/// Something that shows the user how a wait goes.
pub trait Progress {
    /// A step starts (`creating function x`).
    fn step(&self, what: &str);
    /// A wait starts; it ends with [`Progress::done`].
    fn wait(&self, what: &str);
    /// The current wait or step ended.
    fn done(&self, what: &str);
}

/// Progress that shows nothing (tests).
#[derive(Debug, Default)]
pub struct Quiet;

impl Progress for Quiet {
    fn step(&self, _: &str) {}
    fn wait(&self, _: &str) {}
    fn done(&self, _: &str) {}
}

/// Lambda API calls for one function.
#[derive(Debug, Clone)]
pub struct Functions {
    client: Client,
    target: String,
}

impl Functions {
    /// Uses `client`, whose requests go to `target` (for messages).
    pub fn new(client: Client, target: impl Into<String>) -> Self {
        Functions { client, target: target.into() }
    }

    fn api<E, R>(&self, operation: &'static str, function: &str, e: SdkError<E, R>) -> FunctionError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        FunctionError::Api {
            operation,
            function: function.to_owned(),
            target: self.target.clone(),
            message: describe(&e),
        }
    }

    /// The function's configuration, `None` if it does not exist.
    pub async fn get(&self, name: &str) -> Result<Option<FunctionConfiguration>, FunctionError> {
        match self.client.get_function().function_name(name).send().await {
            Ok(out) => Ok(out.configuration),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_not_found_exception()) => Ok(None),
            Err(e) => Err(self.api("GetFunction", name, e)),
        }
    }

    /// Creates the function, or updates its code and then its settings, and
    /// waits until it can be invoked.
    pub async fn deploy(
        &self,
        settings: &FunctionSettings,
        code: &Code,
        progress: &dyn Progress,
    ) -> Result<(Action, FunctionConfiguration), FunctionError> {
        let name = settings.name.as_str();
        let action = match self.get(name).await? {
            None => {
                self.create(settings, code, progress).await?;
                Action::Created
            }
            Some(existing) => {
                let existing_type = existing.package_type().cloned().unwrap_or(PackageType::Zip);
                if existing_type != code.package_type() {
                    return Err(FunctionError::PackageTypeChange {
                        function: name.to_owned(),
                        existing: with_article(&existing_type),
                        wanted: with_article(&code.package_type()),
                    });
                }
                self.update(settings, code, progress).await?;
                Action::Updated
            }
        };
        let config = self.get(name).await?.ok_or_else(|| FunctionError::NotReady {
            function: name.to_owned(),
            goal: "active",
            why: "it is gone (deleted by someone else?)".into(),
        })?;
        Ok((action, config))
    }

    async fn create(&self, s: &FunctionSettings, code: &Code, progress: &dyn Progress) -> Result<(), FunctionError> {
        let name = s.name.as_str();
        progress.step(&format!("creating function {name}"));
        let function_code = match code {
            Code::Zip(bytes) => FunctionCode::builder().zip_file(Blob::new(bytes.clone())).build(),
            Code::Image(uri) => FunctionCode::builder().image_uri(uri).build(),
        };
        let mut attempt = 0;
        loop {
            let mut request = self
                .client
                .create_function()
                .function_name(name)
                .role(&s.role)
                .code(function_code.clone())
                .package_type(code.package_type())
                .memory_size(s.memory as i32)
                .timeout(s.timeout as i32)
                .architectures(s.architecture.to_sdk())
                .ephemeral_storage(ephemeral(s.ephemeral_storage))
                .description(&s.description);
            if let Code::Zip(_) = code {
                request = request.runtime(Runtime::Providedal2023).handler(HANDLER);
            }
            match request.send().await {
                Ok(_) => break,
                Err(e) if attempt < ROLE_RETRIES && role_not_ready(&e) => {
                    attempt += 1;
                    progress.step(&format!(
                        "the role is not usable by Lambda yet (new roles take seconds); retry {attempt}"
                    ));
                    tokio::time::sleep(ROLE_RETRY_DELAY).await;
                }
                Err(e) => return Err(self.api("CreateFunction", name, e)),
            }
        }
        progress.wait(&format!("waiting for {name} to become active"));
        let result = self.client.wait_until_function_active_v2().function_name(name).wait(ACTIVE_TIMEOUT).await;
        self.settle(name, "active", result.map(|_| ()).map_err(|e| DisplayErrorContext(e).to_string())).await?;
        progress.done(&format!("{name} is active"));
        Ok(())
    }

    async fn update(&self, s: &FunctionSettings, code: &Code, progress: &dyn Progress) -> Result<(), FunctionError> {
        let name = s.name.as_str();
        progress.step(&format!("updating the code of {name}"));
        let request = self.client.update_function_code().function_name(name).architectures(s.architecture.to_sdk());
        let request = match code {
            Code::Zip(bytes) => request.zip_file(Blob::new(bytes.clone())),
            Code::Image(uri) => request.image_uri(uri),
        };
        request.send().await.map_err(|e| self.api("UpdateFunctionCode", name, e))?;
        self.wait_updated(name, progress).await?;

        progress.step(&format!("updating the configuration of {name}"));
        let mut request = self
            .client
            .update_function_configuration()
            .function_name(name)
            .role(&s.role)
            .memory_size(s.memory as i32)
            .timeout(s.timeout as i32)
            .ephemeral_storage(ephemeral(s.ephemeral_storage))
            .description(&s.description);
        if let Code::Zip(_) = code {
            request = request.runtime(Runtime::Providedal2023).handler(HANDLER);
        }
        request.send().await.map_err(|e| self.api("UpdateFunctionConfiguration", name, e))?;
        self.wait_updated(name, progress).await
    }

    async fn wait_updated(&self, name: &str, progress: &dyn Progress) -> Result<(), FunctionError> {
        progress.wait(&format!("waiting for the update of {name} to finish"));
        let result = self.client.wait_until_function_updated_v2().function_name(name).wait(UPDATE_TIMEOUT).await;
        self.settle(name, "updated", result.map(|_| ()).map_err(|e| DisplayErrorContext(e).to_string())).await?;
        progress.done(&format!("{name} is updated"));
        Ok(())
    }

    /// Turns a failed wait into Lambda's own reason (`StateReason` /
    /// `LastUpdateStatusReason`), which says what is wrong with the code or
    /// the role far better than "the waiter reached a failure state".
    async fn settle(&self, name: &str, goal: &'static str, result: Result<(), String>) -> Result<(), FunctionError> {
        let Err(waiter) = result else { return Ok(()) };
        let reason = match self.get(name).await {
            Ok(Some(c)) => {
                let reason = if goal == "active" { c.state_reason() } else { c.last_update_status_reason() };
                reason.map(str::to_owned)
            }
            _ => None,
        };
        Err(FunctionError::NotReady { function: name.to_owned(), goal, why: reason.unwrap_or(waiter) })
    }

    /// Deletes the function; `false` if it did not exist.
    pub async fn delete(&self, name: &str) -> Result<bool, FunctionError> {
        match self.client.delete_function().function_name(name).send().await {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_not_found_exception()) => Ok(false),
            Err(e) => Err(self.api("DeleteFunction", name, e)),
        }
    }
}

/// `a zip` / `an image`.
fn with_article(package: &PackageType) -> String {
    match package {
        PackageType::Image => "an image".into(),
        other => format!("a {}", other.as_str().to_lowercase()),
    }
}

fn ephemeral(mb: u32) -> EphemeralStorage {
    EphemeralStorage::builder().size(mb as i32).build().expect("size is set")
}

/// A CreateFunction refused because IAM has not yet propagated a new role.
fn role_not_ready<R>(e: &SdkError<aws_sdk_lambda::operation::create_function::CreateFunctionError, R>) -> bool {
    e.as_service_error().is_some_and(|s| {
        s.is_invalid_parameter_value_exception() && s.message().is_some_and(|m| m.contains("cannot be assumed"))
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use aws_sdk_lambda::error::ErrorMetadata;
    use aws_sdk_lambda::operation::create_function::{CreateFunctionError, CreateFunctionInput, CreateFunctionOutput};
    use aws_sdk_lambda::operation::delete_function::{DeleteFunctionError, DeleteFunctionOutput};
    use aws_sdk_lambda::operation::get_function::{GetFunctionError, GetFunctionOutput};
    use aws_sdk_lambda::operation::update_function_code::{UpdateFunctionCodeInput, UpdateFunctionCodeOutput};
    use aws_sdk_lambda::operation::update_function_configuration::{
        UpdateFunctionConfigurationInput, UpdateFunctionConfigurationOutput,
    };
    use aws_sdk_lambda::types::error::ResourceNotFoundException;
    use aws_sdk_lambda::types::{LastUpdateStatus, State};
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    use super::*;

    fn settings() -> FunctionSettings {
        FunctionSettings {
            name: "boxer-c".into(),
            role: "arn:aws:iam::123456789012:role/boxer".into(),
            memory: 1769,
            timeout: 900,
            architecture: Architecture::Arm64,
            ephemeral_storage: 1024,
            description: "Boxer".into(),
        }
    }

    fn config(state: State, update: LastUpdateStatus, package: PackageType) -> GetFunctionOutput {
        GetFunctionOutput::builder()
            .configuration(
                FunctionConfiguration::builder()
                    .function_name("boxer-c")
                    .state(state)
                    .last_update_status(update)
                    .package_type(package)
                    .memory_size(1769)
                    .build(),
            )
            .build()
    }

    fn not_found() -> GetFunctionError {
        GetFunctionError::ResourceNotFoundException(ResourceNotFoundException::builder().message("no").build())
    }

    /// Records every input a rule sees.
    fn recorder<I: Clone + Send + 'static>() -> (Arc<Mutex<Vec<I>>>, impl Fn(&I) -> bool + Send + Sync + 'static) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        (seen, move |i: &I| {
            s.lock().unwrap().push(i.clone());
            true
        })
    }

    #[tokio::test]
    async fn create_sends_the_whole_configuration_and_waits() {
        let get = mock!(Client::get_function)
            .sequence()
            .error(not_found)
            .output(|| config(State::Pending, LastUpdateStatus::InProgress, PackageType::Zip))
            .output(|| config(State::Active, LastUpdateStatus::Successful, PackageType::Zip))
            .repeatedly()
            .build();
        let (created, record) = recorder::<CreateFunctionInput>();
        let create = mock!(Client::create_function)
            .match_requests(record)
            .then_output(|| CreateFunctionOutput::builder().build());
        let client = mock_client!(aws_sdk_lambda, RuleMode::MatchAny, &[&get, &create]);
        let functions = Functions::new(client, "test");
        let (action, config) = functions.deploy(&settings(), &Code::Zip(b"zip".to_vec()), &Quiet).await.unwrap();
        assert_eq!(action, Action::Created);
        assert_eq!(config.state(), Some(&State::Active));
        // Not found, pending, active, the final read.
        assert_eq!(get.num_calls(), 4);

        let created = created.lock().unwrap();
        let c = &created[0];
        assert_eq!(created.len(), 1);
        assert_eq!(c.function_name(), Some("boxer-c"));
        assert_eq!(c.role(), Some("arn:aws:iam::123456789012:role/boxer"));
        assert_eq!(c.runtime(), Some(&Runtime::Providedal2023));
        assert_eq!(c.handler(), Some("bootstrap"));
        assert_eq!(c.package_type(), Some(&PackageType::Zip));
        assert_eq!((c.memory_size(), c.timeout()), (Some(1769), Some(900)));
        assert_eq!(c.architectures(), [aws_sdk_lambda::types::Architecture::Arm64]);
        assert_eq!(c.ephemeral_storage().map(|e| e.size()), Some(1024));
        assert_eq!(c.code().and_then(|c| c.zip_file()).map(|b| b.as_ref()), Some(&b"zip"[..]));
    }

    #[tokio::test]
    async fn update_sends_code_then_configuration() {
        let get = mock!(Client::get_function)
            .then_output(|| config(State::Active, LastUpdateStatus::Successful, PackageType::Zip));
        let (code, record_code) = recorder::<UpdateFunctionCodeInput>();
        let update_code = mock!(Client::update_function_code)
            .match_requests(record_code)
            .then_output(|| UpdateFunctionCodeOutput::builder().build());
        let (conf, record_conf) = recorder::<UpdateFunctionConfigurationInput>();
        let update_conf = mock!(Client::update_function_configuration)
            .match_requests(record_conf)
            .then_output(|| UpdateFunctionConfigurationOutput::builder().build());
        let create = mock!(Client::create_function).then_output(|| CreateFunctionOutput::builder().build());
        let client = mock_client!(aws_sdk_lambda, RuleMode::MatchAny, &[&get, &update_code, &update_conf, &create]);
        let functions = Functions::new(client, "test");
        let mut s = settings();
        s.memory = 3008;
        let (action, _) = functions.deploy(&s, &Code::Zip(b"new".to_vec()), &Quiet).await.unwrap();
        assert_eq!(action, Action::Updated);
        assert_eq!(create.num_calls(), 0);

        let code = code.lock().unwrap();
        assert_eq!(code.len(), 1);
        assert_eq!(code[0].zip_file().map(|b| b.as_ref()), Some(&b"new"[..]));
        assert_eq!(code[0].architectures(), [aws_sdk_lambda::types::Architecture::Arm64]);
        let conf = conf.lock().unwrap();
        assert_eq!(conf.len(), 1);
        let c = &conf[0];
        assert_eq!((c.memory_size(), c.timeout()), (Some(3008), Some(900)));
        assert_eq!(c.role(), Some("arn:aws:iam::123456789012:role/boxer"));
        assert_eq!((c.runtime(), c.handler()), (Some(&Runtime::Providedal2023), Some("bootstrap")));
        assert_eq!(c.ephemeral_storage().map(|e| e.size()), Some(1024));
    }

    #[tokio::test]
    async fn image_functions_have_no_runtime_and_cannot_become_zips() {
        let get = mock!(Client::get_function)
            .sequence()
            .error(not_found)
            .output(|| config(State::Active, LastUpdateStatus::Successful, PackageType::Image))
            .repeatedly()
            .build();
        let (created, record) = recorder::<CreateFunctionInput>();
        let create = mock!(Client::create_function)
            .match_requests(record)
            .then_output(|| CreateFunctionOutput::builder().build());
        let client = mock_client!(aws_sdk_lambda, RuleMode::MatchAny, &[&get, &create]);
        let functions = Functions::new(client, "test");
        let uri = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/boxer-c:abc";
        functions.deploy(&settings(), &Code::Image(uri.into()), &Quiet).await.unwrap();
        {
            let created = created.lock().unwrap();
            let c = &created[0];
            assert_eq!(c.package_type(), Some(&PackageType::Image));
            assert_eq!(c.code().and_then(|c| c.image_uri()), Some(uri));
            assert_eq!((c.runtime(), c.handler()), (None, None));
        }
        // Now it exists as an image: a zip deploy is refused before any change.
        let e = functions.deploy(&settings(), &Code::Zip(vec![]), &Quiet).await.unwrap_err().to_string();
        assert!(
            e.contains("is an image function and Lambda cannot turn it into a zip one")
                && e.contains("boxer deploy --delete"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn failed_create_names_the_function_and_the_fix() {
        let get = mock!(Client::get_function).then_error(not_found);
        let create = mock!(Client::create_function).then_error(|| {
            CreateFunctionError::generic(
                ErrorMetadata::builder().code("AccessDeniedException").message("User is not authorized").build(),
            )
        });
        let client = mock_client!(aws_sdk_lambda, RuleMode::MatchAny, &[&get, &create]);
        let e = Functions::new(client, "http://127.0.0.1:1")
            .deploy(&settings(), &Code::Zip(vec![]), &Quiet)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("CreateFunction boxer-c on http://127.0.0.1:1: AccessDeniedException"), "{e}");
        assert!(e.contains("iam:PassRole"), "{e}");
    }

    #[tokio::test]
    async fn delete_reports_whether_it_existed() {
        let gone = mock!(Client::delete_function)
            .sequence()
            .output(|| DeleteFunctionOutput::builder().build())
            .error(|| DeleteFunctionError::ResourceNotFoundException(ResourceNotFoundException::builder().build()))
            .build();
        let client = mock_client!(aws_sdk_lambda, RuleMode::MatchAny, &[&gone]);
        let functions = Functions::new(client, "test");
        assert!(functions.delete("boxer-c").await.unwrap());
        assert!(!functions.delete("boxer-c").await.unwrap());
    }
}
