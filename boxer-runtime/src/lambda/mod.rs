//! `boxer-runtime` as an AWS Lambda custom runtime (`bootstrap`).
//!
//! Lambda starts the bootstrap with `AWS_LAMBDA_RUNTIME_API` set; the
//! runtime then asks for invocations one at a time, and each invocation's
//! event is a [`boxer_proto::lambda::NodeEvent`]: one node to join a cluster
//! and one program to run there. The answer is a
//! [`boxer_proto::lambda::NodeReport`] once the program ended, or an error
//! whose `errorType` says why the node could not run. The instance stays
//! warm between invocations and serves whatever node the next event names.
//!
//! Parts: [`api`] talks to the Runtime API, [`event`] checks the event,
//! [`deadline`] plans the stop before the deadline, [`task`] knows the
//! function's file layout, [`invocation`] runs one node, [`trigger`]
//! processes the objects of an S3 event notification.

pub mod api;
pub mod deadline;
pub mod event;
pub mod invocation;
pub mod task;
pub mod trigger;

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use boxer_proto::lambda::{ERROR_INIT, ErrorBody};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{Instrument, error, info, info_span, warn};

use self::api::{ApiError, RuntimeApi};
use self::invocation::Instance;
use crate::app;
use crate::host::Host;

/// How long the runtime waits for `/init/error` to be taken before it exits
/// anyway. Lambda answers at once (it is a local call); cargo-lambda's
/// emulator does not route it by function and holds it until some
/// invocation is pending. The instance is ending either way: the report is a
/// courtesy, not worth a hang.
const INIT_ERROR_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Why the runtime stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// It could not start (reported to `/init/error` first).
    #[error("cannot start: {0}")]
    Init(String),
    /// The Runtime API failed; Lambda replaces the instance.
    #[error(transparent)]
    Api(#[from] ApiError),
}

/// Serves invocations until SIGTERM or a Runtime API failure. `shim`
/// overrides the shim beside the executable.
pub async fn serve(api: RuntimeApi, shim: Option<PathBuf>) -> Result<(), ServeError> {
    info!(endpoint = %api.endpoint(), "serving Lambda invocations");
    let host = Host::probe();
    host.log();
    task::clear_stale_scratch();
    let shim = shim.unwrap_or_else(app::default_shim);
    if !shim.is_file() {
        let why = app::AppError::NoShim(shim);
        return Err(
            init_failed(&api, format!("{why}; in a function, {} belongs beside bootstrap", app::SHIM_FILE)).await
        );
    }
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => return Err(init_failed(&api, format!("cannot handle SIGTERM: {e}")).await),
    };
    let mut instance = Instance { host, shim, task_root: task::task_root(), served: 0, terminated: false };
    loop {
        let next = tokio::select! {
            next = api.next() => next,
            _ = terminate.recv() => {
                info!("terminated while idle");
                return Ok(());
            }
        };
        let invocation = match next {
            Ok(i) => i,
            Err(e @ ApiError::RequestId(_)) => {
                // Cannot be answered; Lambda times it out.
                error!("{e}");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let received = tokio::time::Instant::now();
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let span = info_span!("invocation", id = %invocation.request_id);
        let id = invocation.request_id.clone();
        async {
            // Plain structs always serialize.
            let result = if trigger::is_s3_event(&invocation.body) {
                instance.served += 1;
                trigger::handle(&instance.task_root, &invocation.body, instance.served).await.map(|report| {
                    info!(processed = report.processed.len(), skipped = report.skipped.len(), "answering");
                    serde_json::to_vec(&report).unwrap_or_default()
                })
            } else {
                invocation::handle(&mut instance, &invocation, received, now_ms, &mut terminate).await.map(|report| {
                    info!(node = %report.node, exit_code = report.exit_code, stopped = ?report.stopped, "answering");
                    serde_json::to_vec(&report).unwrap_or_default()
                })
            };
            let posted = match result {
                Ok(body) => api.respond(&id, body).await,
                Err(body) => api.fail(&id, &body).await,
            };
            if let Err(e) = posted {
                warn!("the answer was not taken: {e}");
            }
        }
        .instrument(span)
        .await;
        if instance.terminated {
            info!("terminated: leaving after the answer");
            return Ok(());
        }
    }
}

/// Posts `/init/error` and returns the error to exit with.
async fn init_failed(api: &RuntimeApi, message: String) -> ServeError {
    error!("{message}");
    let body = ErrorBody { error_type: ERROR_INIT.to_owned(), error_message: message.clone() };
    match tokio::time::timeout(INIT_ERROR_TIMEOUT, api.init_error(&body)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!("could not report the failure to the Runtime API: {e}"),
        Err(_) => warn!("the Runtime API did not take the failure report within {INIT_ERROR_TIMEOUT:?}"),
    }
    ServeError::Init(message)
}
