//! Turning an invocation's body into a node to start, or a `Boxer.BadEvent`
//! that names the field.
//!
//! The event comes from a `boxer` CLI that may be older or newer than the
//! deployed runtime, or from a person testing with the Lambda console. Every
//! mistake gets an error that says which field is wrong and why, so it is
//! fixed on the first try; nothing here panics on any input.

use std::net::SocketAddr;
use std::path::{Component, Path};
use std::time::Duration;

use boxer_net::rendezvous::RendezvousAddr;
use boxer_proto::Fingerprint;
use boxer_proto::lambda::{ERROR_BAD_EVENT, EVENT_VERSION, ErrorBody, NodeEvent};
use boxer_proto::names;

use super::deadline::MAX_INVOCATION;
use crate::ForwardSpec;
use crate::wait::MAX_WAIT_TIMEOUT_SECS;

/// A usable event, parsed.
#[derive(Debug, Clone)]
pub struct NodeRequest {
    /// The event as sent.
    pub event: NodeEvent,
    /// The rendezvous and its certificate.
    pub rendezvous: RendezvousAddr,
    /// `wait_for`, parsed.
    pub wait_for: Vec<(String, u16)>,
    /// `wait_timeout_secs`.
    pub wait_timeout: Option<Duration>,
    /// `forward`, parsed.
    pub forwards: Vec<ForwardSpec>,
    /// `grace_secs`.
    pub grace: Duration,
    /// `timeout_secs`.
    pub timeout: Option<Duration>,
}

/// Why an event cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad event: {0}")]
pub struct BadEvent(pub String);

impl BadEvent {
    fn field(name: &str, why: impl std::fmt::Display) -> Self {
        Self(format!("field `{name}`: {why}"))
    }

    /// The `/error` body (`Boxer.BadEvent`).
    pub fn body(&self) -> ErrorBody {
        ErrorBody { error_type: ERROR_BAD_EVENT.to_owned(), error_message: self.to_string() }
    }
}

/// Parses and checks an event.
pub fn parse(body: &[u8]) -> Result<NodeRequest, BadEvent> {
    // The version first: an event of another version may have other fields,
    // and "wrong version" is the error that says what to do.
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| BadEvent(format!("the event is not JSON: {e}")))?;
    let Some(object) = value.as_object() else {
        return Err(BadEvent(format!("the event must be a JSON object (a node event), not {value}")));
    };
    match object.get("version") {
        None => return Err(BadEvent::field("version", "missing (expected a boxer node event)")),
        Some(v) if v.as_u64() != Some(u64::from(EVENT_VERSION)) => {
            return Err(BadEvent::field(
                "version",
                format!(
                    "{v}: this runtime reads node events of version {EVENT_VERSION}; deploy the bootstrap that matches your boxer CLI"
                ),
            ));
        }
        Some(_) => {}
    }
    let event: NodeEvent = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path.is_empty() {
            // "unknown field `x`" and "missing field `x`" name the field themselves.
            BadEvent(e.into_inner().to_string())
        } else {
            BadEvent::field(&path, e.into_inner())
        }
    })?;
    check(event)
}

fn check(event: NodeEvent) -> Result<NodeRequest, BadEvent> {
    let addr: SocketAddr = event
        .rendezvous
        .parse()
        .map_err(|_| BadEvent::field("rendezvous", format!("{:?} is not IP:PORT", event.rendezvous)))?;
    if addr.port() == 0 || addr.ip().is_unspecified() {
        return Err(BadEvent::field("rendezvous", format!("{addr} is not an address a node can reach")));
    }
    let fingerprint: Fingerprint = event.fingerprint.parse().map_err(|_| {
        BadEvent::field("fingerprint", "expected the 64 hex digits the rendezvous printed as its fingerprint")
    })?;
    names::validate_cluster(&event.cluster).map_err(|e| BadEvent::field("cluster", e))?;
    names::validate_service(&event.service).map_err(|e| BadEvent::field("service", e))?;
    if event.token.is_empty() {
        return Err(BadEvent::field("token", "empty (give the cluster's join token)"));
    }
    match event.command.first() {
        None => return Err(BadEvent::field("command", "empty (give the program to run and its arguments)")),
        Some(program) if program.is_empty() => return Err(BadEvent::field("command", "the program name is empty")),
        Some(_) => {}
    }
    if event.command.iter().any(|a| a.contains('\0')) {
        return Err(BadEvent::field("command", "an argument contains a NUL byte"));
    }
    for (key, value) in &event.env {
        if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
            return Err(BadEvent::field("env", format!("{key:?} is not a valid variable (no '=' or NUL, not empty)")));
        }
    }
    let wait_for = event
        .wait_for
        .iter()
        .map(|w| crate::wait::parse_target(w).map_err(|why| BadEvent::field("wait_for", why)))
        .collect::<Result<Vec<_>, _>>()?;
    let wait_timeout = match event.wait_timeout_secs {
        Some(t) if t == 0 || t > MAX_WAIT_TIMEOUT_SECS => {
            return Err(BadEvent::field(
                "wait_timeout_secs",
                format!("{t} is not 1 to {MAX_WAIT_TIMEOUT_SECS} seconds"),
            ));
        }
        Some(_) if wait_for.is_empty() => {
            return Err(BadEvent::field("wait_timeout_secs", "given without `wait_for`: there is nothing to wait for"));
        }
        t => t.map(Duration::from_secs),
    };
    if event.expose.contains(&0) {
        return Err(BadEvent::field("expose", "0 is not a port (1 to 65535)"));
    }
    let forwards = event
        .forward
        .iter()
        .map(|f| match f.parse::<ForwardSpec>() {
            Ok(spec) if spec.listen.port() == 0 => Err(BadEvent::field("forward", format!("{f:?}: local port 0"))),
            Ok(spec) => Ok(spec),
            Err(e) => Err(BadEvent::field("forward", e)),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(dir) = &event.workdir {
        let path = Path::new(dir);
        let inside = path.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if dir.is_empty() || !inside {
            return Err(BadEvent::field(
                "workdir",
                format!("{dir:?} must be a relative path inside the task root (no leading '/', no '..')"),
            ));
        }
    }
    let max = MAX_INVOCATION.as_secs();
    if event.grace_secs > max {
        return Err(BadEvent::field(
            "grace_secs",
            format!("{} is longer than Lambda's {max} s limit", event.grace_secs),
        ));
    }
    let timeout = match event.timeout_secs {
        Some(t) if t == 0 || t > max => {
            return Err(BadEvent::field("timeout_secs", format!("{t} is not a Lambda timeout (1-{max} s)")));
        }
        t => t.map(Duration::from_secs),
    };
    Ok(NodeRequest {
        rendezvous: RendezvousAddr { addr, fingerprint },
        wait_for,
        wait_timeout,
        forwards,
        grace: Duration::from_secs(event.grace_secs),
        timeout,
        event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    fn good() -> serde_json::Value {
        serde_json::json!({
            "version": EVENT_VERSION, "rendezvous": "127.0.0.1:4740", "fingerprint": FP,
            "cluster": "demo", "token": "t", "service": "db", "index": 2,
            "command": ["sh", "-c", "echo hi"], "env": {"A": "1"}, "wait_for": ["web-0:80"],
            "workdir": "app/data", "grace_secs": 3, "timeout_secs": 60, "wait_timeout_secs": 30,
            "expose": [2379], "forward": ["7000=web-0:80"]
        })
    }

    fn error_of(v: serde_json::Value) -> String {
        parse(&serde_json::to_vec(&v).unwrap()).unwrap_err().to_string()
    }

    fn with(field: &str, value: serde_json::Value) -> serde_json::Value {
        let mut v = good();
        v[field] = value;
        v
    }

    #[test]
    fn a_good_event_parses() {
        let r = parse(&serde_json::to_vec(&good()).unwrap()).unwrap();
        assert_eq!(r.rendezvous.addr, "127.0.0.1:4740".parse().unwrap());
        assert_eq!(r.wait_for, [("web-0".to_owned(), 80)]);
        assert_eq!(r.wait_timeout, Some(Duration::from_secs(30)));
        assert_eq!(r.event.expose, [2379]);
        assert_eq!(r.forwards, ["7000=web-0:80".parse::<ForwardSpec>().unwrap()]);
        assert_eq!((r.grace, r.timeout), (Duration::from_secs(3), Some(Duration::from_secs(60))));
        assert_eq!(r.event.node_name(), "db-2");
    }

    #[test]
    fn each_bad_field_is_named() {
        use serde_json::json;
        let cases = [
            (with("version", json!(2)), "`version`"),
            (with("rendezvous", json!("nowhere")), "`rendezvous`"),
            (with("rendezvous", json!("0.0.0.0:4740")), "`rendezvous`"),
            (with("fingerprint", json!("abc")), "`fingerprint`"),
            (with("cluster", json!("Not A Name")), "`cluster`"),
            (with("service", json!("")), "`service`"),
            (with("token", json!("")), "`token`"),
            (with("command", json!([])), "`command`"),
            (with("command", json!([""])), "`command`"),
            (with("env", json!({"A=B": "1"})), "`env`"),
            (with("wait_for", json!(["web-0"])), "`wait_for`"),
            (with("workdir", json!("/etc")), "`workdir`"),
            (with("workdir", json!("../x")), "`workdir`"),
            (with("grace_secs", json!(100000)), "`grace_secs`"),
            (with("timeout_secs", json!(0)), "`timeout_secs`"),
            (with("wait_timeout_secs", json!(0)), "`wait_timeout_secs`"),
            (with("wait_timeout_secs", json!(86401)), "`wait_timeout_secs`"),
            (with("wait_for", json!([])), "`wait_timeout_secs`"),
            (with("expose", json!([0])), "`expose`"),
            (with("expose", json!([70000])), "`expose[0]`"),
            (with("forward", json!(["7000"])), "`forward`"),
            (with("forward", json!(["0=web-0:80"])), "`forward`"),
            (with("index", json!("one")), "`index`"),
            (with("colour", json!("red")), "`colour`"),
        ];
        for (event, field) in cases {
            let e = error_of(event.clone());
            assert!(e.contains(field), "{event}: {e}");
        }
        let mut missing = good();
        missing.as_object_mut().unwrap().remove("command");
        assert!(error_of(missing).contains("`command`"));
        let mut no_version = good();
        no_version.as_object_mut().unwrap().remove("version");
        assert!(error_of(no_version).contains("`version`"));
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        for body in [&b""[..], b"null", b"[1]", b"\"x\"", b"{", &[0xff, 0xfe]] {
            let e = parse(body).unwrap_err();
            assert_eq!(e.body().error_type, ERROR_BAD_EVENT);
        }
    }
}
