//! Fuzz targets for what the runtime parses from outside: a Lambda event
//! (from any CLI version, or a person at the Lambda console), its `wait_for`
//! and `forward` entries, the deadline header of the Runtime API, and
//! `/proc/<pid>/stat` of a process that calls the control socket (whose
//! command name that process chose).
//!
//! Bounded-time tests on stable (bolero's `check!`); docs/security.md says
//! how to run them longer. Reassembly of overlay UDP is fuzzed beside its
//! code (`src/udp/fragment/fuzz.rs`).

use std::path::{Component, Path};
use std::time::Duration;

use bolero::{check, produce};
use boxer_proto::fuzz::{self, Input};
use boxer_proto::lambda::{ERROR_BAD_EVENT, EVENT_VERSION, NodeEvent};
use boxer_proto::names;
use boxer_runtime::ForwardSpec;
use boxer_runtime::caller::parse_ppid;
use boxer_runtime::lambda::deadline::{self, DEADLINE_SLACK, MAX_INVOCATION};
use boxer_runtime::lambda::event;
use boxer_runtime::wait::{MAX_WAIT_TIMEOUT_SECS, parse_target};
use serde_json::{Map, Value, json};

/// Largest fuzz input: an event with every field, mutated several times.
const MAX_INPUT: usize = 1024;

/// `check!` over byte inputs of up to [`MAX_INPUT`] bytes, for [`fuzz::test_time`].
macro_rules! fuzz_bytes {
    ($body:expr) => {
        check!()
            .with_generator(produce::<Vec<u8>>().with().len(0usize..=MAX_INPUT))
            .with_test_time(fuzz::test_time())
            .for_each($body)
    };
}

/// An event that passes every check, to mutate.
fn good_event() -> Value {
    json!({
        "version": EVENT_VERSION, "rendezvous": "127.0.0.1:4740",
        "fingerprint": "00000000000000000000000000000000000000000000000000000000000000ff",
        "cluster": "demo", "token": "t", "service": "db", "index": 2,
        "command": ["sh", "-c", "echo hi"], "env": {"A": "1"}, "wait_for": ["web-0:80"],
        "workdir": "app/data", "grace_secs": 3, "timeout_secs": 60, "wait_timeout_secs": 30,
        "expose": [2379], "forward": ["7000=web-0:80"]
    })
}

/// Every field of an event, and one it does not have.
const FIELDS: [&str; 18] = [
    "version",
    "rendezvous",
    "fingerprint",
    "cluster",
    "token",
    "service",
    "index",
    "command",
    "env",
    "wait_for",
    "wait_timeout_secs",
    "expose",
    "forward",
    "workdir",
    "grace_secs",
    "timeout_secs",
    "colour",
    "",
];

/// Any JSON value, mostly of the shapes the event's fields have.
fn json_value(input: &mut Input<'_>, depth: u8) -> Value {
    let strings = |input: &mut Input<'_>| (0..input.length()).map(|_| Value::from(input.string())).collect();
    match input.byte() % 10 {
        0 => Value::Null,
        1 => Value::Bool(input.byte() & 1 == 1),
        2 => Value::from(input.number(8)),
        3 => Value::from(input.number(8) as i64),
        4 => Value::from(f64::from_bits(input.number(8))),
        5 => Value::Array(strings(input)),
        6 => Value::Object((0..input.length()).map(|_| (input.string(), Value::from(input.string()))).collect()),
        7 if depth > 0 => Value::Array((0..input.length()).map(|_| json_value(input, depth - 1)).collect()),
        8 if depth > 0 => {
            Value::Object((0..input.length()).map(|_| (input.string(), json_value(input, depth - 1))).collect())
        }
        _ => Value::from(input.string()),
    }
}

/// An event body: raw bytes, a well-typed event of any values, or the good
/// event with fields changed, dropped or added.
fn event_body(input: &mut Input<'_>) -> Vec<u8> {
    match input.byte() % 4 {
        0 => input.rest().to_vec(),
        1 => {
            let Some(mut e) = input.arbitrary::<NodeEvent>() else { return Vec::new() };
            // Mostly of the right version, so that the other fields are read.
            if input.byte() % 4 != 3 {
                e.version = EVENT_VERSION;
            }
            serde_json::to_vec(&e).expect("JSON")
        }
        _ => {
            let mut event = good_event();
            let object: &mut Map<String, Value> = event.as_object_mut().expect("an object");
            for _ in 0..input.length().max(1) {
                let field = FIELDS[usize::from(input.byte()) % FIELDS.len()];
                if input.byte() % 4 == 3 {
                    object.remove(field);
                } else {
                    object.insert(field.to_owned(), json_value(input, 2));
                }
            }
            serde_json::to_vec(&event).expect("JSON")
        }
    }
}

/// Whatever the event, the runtime answers: a request that holds every
/// promise the checks make, or a `Boxer.BadEvent` that says why.
#[test]
fn lambda_event() {
    fuzz_bytes!(|bytes: &Vec<u8>| {
        let body = event_body(&mut Input::new(bytes));
        let request = match event::parse(&body) {
            Ok(request) => request,
            Err(e) => {
                let body = e.body();
                assert_eq!(body.error_type, ERROR_BAD_EVENT);
                assert!(body.error_message.starts_with("bad event: "), "{}", body.error_message);
                return;
            }
        };
        let e = &request.event;
        assert_eq!(e.version, EVENT_VERSION);
        let addr = request.rendezvous.addr;
        assert!(addr.port() != 0 && !addr.ip().is_unspecified(), "{addr}");
        assert!(names::validate_cluster(&e.cluster).is_ok() && names::validate_service(&e.service).is_ok());
        assert!(!e.token.is_empty() && e.command.first().is_some_and(|p| !p.is_empty()));
        assert!(e.command.iter().chain(e.env.keys()).chain(e.env.values()).all(|s| !s.contains('\0')));
        assert!(e.env.keys().all(|k| !k.is_empty() && !k.contains('=')));
        assert_eq!(request.wait_for.len(), e.wait_for.len());
        assert!(request.wait_for.iter().all(|(name, port)| !name.is_empty() && *port != 0));
        if let Some(t) = request.wait_timeout {
            assert!(!request.wait_for.is_empty() && (1..=MAX_WAIT_TIMEOUT_SECS).contains(&t.as_secs()));
        }
        assert!(!e.expose.contains(&0));
        assert!(request.forwards.iter().all(|f| f.listen.port() != 0 && f.port != 0 && !f.target.is_empty()));
        if let Some(dir) = &e.workdir {
            assert!(Path::new(dir).components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)));
        }
        assert!(request.grace <= MAX_INVOCATION);
        assert!(request.timeout.is_none_or(|t| !t.is_zero() && t <= MAX_INVOCATION));
    });
}

#[test]
fn wait_for_targets() {
    fuzz_bytes!(|bytes: &Vec<u8>| {
        let mut input = Input::new(bytes);
        let text =
            if input.byte() & 1 == 0 { String::from_utf8_lossy(input.rest()).into_owned() } else { input.string() };
        if let Ok((name, port)) = parse_target(&text) {
            assert!(!name.is_empty() && name.len() <= 253 && port != 0);
            assert_eq!(parse_target(&format!("{name}:{port}")), Ok((name, port)));
        }
    });
}

#[test]
fn forward_specs() {
    fuzz_bytes!(|bytes: &Vec<u8>| {
        let mut input = Input::new(bytes);
        let text =
            if input.byte() & 1 == 0 { String::from_utf8_lossy(input.rest()).into_owned() } else { input.string() };
        if let Ok(f) = text.parse::<ForwardSpec>() {
            assert!(!f.target.is_empty() && f.port != 0);
            let again = format!("{}={}:{}", f.listen, f.target, f.port);
            assert_eq!(again.parse::<ForwardSpec>(), Ok(f), "{again:?}");
        }
    });
}

/// `/proc/<pid>/stat` with any command name: the parent pid is found, and
/// nothing a process names itself makes the reader panic.
#[test]
fn proc_stat() {
    fuzz_bytes!(|bytes: &Vec<u8>| {
        let _ = parse_ppid(&String::from_utf8_lossy(bytes));
        let mut input = Input::new(bytes);
        let comm = input.string();
        let ppid = input.number(4) as i32;
        let stat = format!("{} ({comm}) S {ppid} 1 1 0 -1 4194560", input.number(4) as i32);
        assert_eq!(parse_ppid(&stat), Some(ppid), "{stat:?}");
    });
}

/// Any deadline header, clock and timeouts: the program is stopped in time
/// to report, within the budget, and gets at most the grace it asked for.
#[test]
fn deadline_plans() {
    fuzz_bytes!(|bytes: &Vec<u8>| {
        let mut input = Input::new(bytes);
        let header = (input.byte() & 1 == 1).then(|| input.number(8));
        let now = input.number(8);
        let timeout = (input.byte() & 1 == 1).then(|| Duration::from_millis(input.number(8)));
        let grace = Duration::from_millis(input.number(8));
        let plan = deadline::plan(header, now, timeout, grace);
        assert!(plan.budget <= MAX_INVOCATION + DEADLINE_SLACK, "{plan:?}");
        assert!(plan.sigterm_after + plan.grace <= plan.budget.saturating_sub(deadline::REPORT_MARGIN), "{plan:?}");
        assert!(plan.grace <= grace, "{plan:?}");
    });
}
