//! The JSON a Lambda invocation carries: the [`NodeEvent`] that `boxer up
//! --provider lambda` sends to start one node, and the [`NodeReport`] the
//! runtime answers with when the node ends.
//!
//! These cross the Lambda Invoke API, not a Boxer stream, so they are JSON
//! (what Lambda and every tool around it speaks) rather than postcard. Both
//! refuse unknown fields: a CLI and a deployed runtime of different versions
//! fail with a `Boxer.BadEvent` error that names the field instead of
//! silently dropping a setting. [`EVENT_VERSION`] changes whenever a field's
//! meaning does.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of the event format; the runtime refuses any other.
pub const EVENT_VERSION: u32 = 1;

/// Grace between SIGTERM and SIGKILL when the event names none: the local
/// provider's default, so a program stops the same way in both places.
pub const DEFAULT_GRACE_SECS: u64 = 10;

/// `errorType` of an invocation whose event could not be used.
pub const ERROR_BAD_EVENT: &str = "Boxer.BadEvent";
/// Exit code of a node that gave up waiting for its `wait_for` targets
/// (`wait_timeout`): 124, what timeout(1) returns when its command timed out.
pub const WAIT_TIMEOUT_EXIT_CODE: i32 = 124;

/// `errorType` of a node the rendezvous refused (wrong token, unknown cluster).
pub const ERROR_JOIN_REFUSED: &str = "Boxer.JoinRefused";
/// `errorType` of a node that could not reach the rendezvous at all.
pub const ERROR_UNREACHABLE: &str = "Boxer.RendezvousUnreachable";
/// `errorType` of a program that could not be started (not found, static
/// binary, no shim).
pub const ERROR_BAD_COMMAND: &str = "Boxer.BadCommand";
/// `errorType` of a runtime that failed in a way none of the above names.
pub const ERROR_RUNTIME: &str = "Boxer.RuntimeError";
/// `errorType` of a runtime that could not start at all (`/init/error`).
pub const ERROR_INIT: &str = "Boxer.InitError";

/// What one invocation asks: start one node of a cluster and run its program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEvent {
    /// [`EVENT_VERSION`] of the sender.
    pub version: u32,
    /// Rendezvous UDP address, `IP:PORT` (must be reachable from Lambda).
    pub rendezvous: String,
    /// SHA-256 fingerprint of the rendezvous certificate (hex).
    pub fingerprint: String,
    /// Cluster to join.
    pub cluster: String,
    /// The cluster's join token.
    pub token: String,
    /// Service this node is a replica of.
    pub service: String,
    /// Replica index.
    #[serde(default)]
    pub index: u32,
    /// Program and arguments (looked up in `PATH`, which includes the
    /// function's task root and its `bin/`).
    pub command: Vec<String>,
    /// Extra environment of the program.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `NAME:PORT`s that must listen before the program starts.
    #[serde(default)]
    pub wait_for: Vec<String>,
    /// Seconds the node waits for `wait_for` before it gives up (exit code
    /// [`WAIT_TIMEOUT_EXIT_CODE`]); `None` waits as long as the invocation
    /// lasts. Left out of the JSON when `None`, so an event without it
    /// still suits a runtime that predates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_timeout_secs: Option<u64>,
    /// Local ports (on 127.0.0.1) announced to the cluster: other nodes'
    /// connections to them reach the program without the shim (explicit
    /// mode, for Go and static programs). Left out when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<u16>,
    /// `[ADDR:]PORT=NAME:PORT` forwards: connections to the local port
    /// reach `NAME:PORT` in the cluster without the shim. Left out when
    /// empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forward: Vec<String>,
    /// Working directory, relative to the task root (default: a fresh
    /// writable directory under `/tmp`).
    #[serde(default)]
    pub workdir: Option<String>,
    /// Seconds between SIGTERM and SIGKILL when the node must stop.
    #[serde(default = "default_grace")]
    pub grace_secs: u64,
    /// The function's timeout in seconds: the deadline when the Runtime API
    /// gives none that is plausible.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// This node replaces an instance of the same name that is still a
    /// member (`lambda.replace_before_deadline`): while the rendezvous
    /// refuses the name as taken, the runtime asks again every
    /// [`TAKEOVER_RETRY_MS`] for up to [`TAKEOVER_WAIT_SECS`], so that it
    /// joins, with its predecessor's address, the moment that one leaves.
    /// Left out when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub takes_over: bool,
}

/// How often a [`NodeEvent::takes_over`] node asks to join while its name
/// is taken: the gap its peers see is at most this on top of the
/// predecessor's stop, and a refused join costs the rendezvous one
/// handshake.
pub const TAKEOVER_RETRY_MS: u64 = 50;

/// How long a [`NodeEvent::takes_over`] node waits for its name: its
/// predecessor is told to stop a moment after this node was invoked and
/// then has its grace (at most [`DEFAULT_GRACE_SECS`] from `boxer up`) to
/// end; far longer means the handover failed.
pub const TAKEOVER_WAIT_SECS: u64 = 60;

fn default_grace() -> u64 {
    DEFAULT_GRACE_SECS
}

impl NodeEvent {
    /// `<service>-<index>`.
    pub fn node_name(&self) -> String {
        format!("{}-{}", self.service, self.index)
    }
}

/// Why a node's program stopped when it did not exit by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopCause {
    /// The invocation's deadline was near.
    Deadline,
    /// The cluster was stopped (Ctrl-C, `boxer down`, deleted) or the node
    /// lost the rendezvous.
    ClusterStopped,
    /// The runtime itself got SIGTERM (Lambda shutting the instance down).
    Terminated,
    /// The cluster's owner stopped this one node (`boxer scale` down).
    Requested,
}

/// What the runtime found about the host it runs on: what a first run on a
/// new kind of host teaches (see DESIGN.md, "Lambda facts").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostFacts {
    /// `uname -r`.
    pub kernel: String,
    /// Calls the host refused, e.g. `prctl(PR_SET_PDEATHSIG): EPERM`.
    #[serde(default)]
    pub refused: Vec<String>,
    /// UDP segmentation offload segments per send (1: none).
    #[serde(default)]
    pub gso_segments: Option<usize>,
    /// UDP receive offload segments (1: none).
    #[serde(default)]
    pub gro_segments: Option<usize>,
    /// The open-file limit the runtime found.
    #[serde(default)]
    pub nofile: Option<u64>,
    /// The user id the runtime runs as.
    #[serde(default)]
    pub uid: Option<u32>,
}

/// The invocation's result: how the node ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeReport {
    /// `<service>-<index>`.
    pub node: String,
    /// The program's exit code, shell style (128 + signal).
    pub exit_code: i32,
    /// Milliseconds from the program's start to its end.
    pub run_ms: u64,
    /// Why it was stopped, if it did not exit by itself.
    #[serde(default)]
    pub stopped: Option<StopCause>,
    /// Whether it ignored SIGTERM and was killed after the grace period.
    #[serde(default)]
    pub killed_after_grace: bool,
    /// Its last lines of output (stdout and stderr interleaved as read).
    #[serde(default)]
    pub last_output: Vec<String>,
    /// What the runtime found about the host.
    #[serde(default)]
    pub host: HostFacts,
}

/// Lambda's error body (`/error`, `/init/error`, and Invoke's answer when
/// `X-Amz-Function-Error` is set).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// One of the `ERROR_*` types, or Lambda's own (`Runtime.ExitError`, ...).
    #[serde(rename = "errorType", default)]
    pub error_type: String,
    /// What went wrong, for people.
    #[serde(rename = "errorMessage", default)]
    pub error_message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_defaults_and_unknown_fields() {
        let e: NodeEvent = serde_json::from_str(
            r#"{"version":1,"rendezvous":"1.2.3.4:4740","fingerprint":"ab","cluster":"c",
                "token":"t","service":"db","command":["redis-server"]}"#,
        )
        .unwrap();
        assert_eq!((e.index, e.grace_secs, e.timeout_secs), (0, DEFAULT_GRACE_SECS, None));
        assert_eq!((e.wait_timeout_secs, e.expose.len(), e.forward.len()), (None, 0, 0));
        assert_eq!(e.node_name(), "db-0");
        // Unset optional fields stay out of the JSON: an older runtime
        // (unknown fields refused) still reads the event.
        let json = serde_json::to_string(&e).unwrap();
        assert!(!json.contains("wait_timeout") && !json.contains("expose") && !json.contains("forward"), "{json}");
        let err = serde_json::from_str::<NodeEvent>(
            r#"{"version":1,"rendezvous":"x","fingerprint":"ab","cluster":"c","token":"t",
                "service":"db","command":[],"colour":"red"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn report_round_trip() {
        let r = NodeReport {
            node: "db-0".into(),
            exit_code: 137,
            run_ms: 1200,
            stopped: Some(StopCause::Deadline),
            killed_after_grace: true,
            last_output: vec!["bye".into()],
            host: HostFacts {
                kernel: "5.10".into(),
                refused: vec!["prctl(PR_SET_NAME): EPERM".into()],
                ..Default::default()
            },
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""stopped":"deadline""#), "{json}");
        assert_eq!(serde_json::from_str::<NodeReport>(&json).unwrap(), r);
    }
}
