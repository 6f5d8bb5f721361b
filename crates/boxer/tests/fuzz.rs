//! Fuzz target for the spec parser (`boxer.toml`): a spec may come from
//! anyone's repository, and `boxer up` must answer any text with a spec or
//! an error that names the place, never a panic.
//!
//! Bounded-time test on stable (bolero's `check!`); docs/security.md says
//! how to run it longer.

use std::collections::HashSet;
use std::path::Path;

use bolero::{check, produce};
use boxer::spec::{self, MAX_REPLICAS};
use boxer_proto::fuzz::{self, Input};
use boxer_proto::names;

/// Largest fuzz input: a spec of a few services with most keys set.
const MAX_INPUT: usize = 1024;

/// Where the fuzzed specs claim to live: nothing there, so relative
/// `workdir` and `files` do not exist (absolute ones are only looked at).
const SPEC_PATH: &str = "/nonexistent-boxer-fuzz/boxer.toml";

/// A spec that parses, to mutate.
const GOOD: &str = r#"[cluster]
name = "redis-bench"
network = "10.10.0.0/16"

[services.db]
command = ["redis-server", "--port", "6379"]
replicas = 2
expose = [6379]
private = ["/var/lib/redis"]

[services.bench]
command = ["redis-benchmark", "-h", "db-0"]
env = { A = "1" }
wait_for = ["db-0:6379", "db:6379"]
wait_timeout = 120
forward = ["7000=db-1:6379", "0.0.0.0:7001=db:6379"]
main = true
nat = "strict"
isolate = true

[lambda]
memory = 1769
timeout = 900
architecture = "x86_64"
"#;

/// Keys of a service with the kind of value each takes, and one it lacks.
const SERVICE_KEYS: [(&str, Kind); 13] = [
    ("command", Kind::Strings),
    ("replicas", Kind::Int),
    ("env", Kind::Table),
    ("workdir", Kind::Choice(&["/", ".", "/nonexistent"])),
    ("wait_for", Kind::Targets),
    ("wait_timeout", Kind::Int),
    ("expose", Kind::Ints),
    ("forward", Kind::Forwards),
    ("main", Kind::Bool),
    ("nat", Kind::Choice(&["none", "open", "moderate", "strict", "masquerade"])),
    ("isolate", Kind::Bool),
    ("private", Kind::Strings),
    ("colour", Kind::Str),
];

/// Keys of `[lambda]`.
const LAMBDA_KEYS: [(&str, Kind); 8] = [
    ("function", Kind::Str),
    ("role", Kind::Str),
    ("memory", Kind::Int),
    ("timeout", Kind::Int),
    ("architecture", Kind::Choice(&["x86_64", "arm64"])),
    ("ephemeral_storage", Kind::Int),
    ("files", Kind::Str),
    ("image", Kind::Str),
];

/// Service names: valid, reserved, ambiguous, or not labels at all.
const SERVICE_NAMES: [&str; 8] = ["web", "db", "api", "node", "web-1", "Bad", "a", "x-y"];

#[derive(Debug, Clone, Copy)]
enum Kind {
    Str,
    /// One of these strings, or any.
    Choice(&'static [&'static str]),
    Int,
    Bool,
    Strings,
    Ints,
    Table,
    Targets,
    Forwards,
}

/// A TOML value of `kind` (mostly) from the input; `services` are names
/// that targets refer to.
fn value(input: &mut Input<'_>, kind: Kind, services: &[String]) -> String {
    // Zero bytes (the input used up) choose the expected shape throughout.
    let kind = match input.byte() % 16 {
        15 => [Kind::Str, Kind::Int, Kind::Bool, Kind::Strings][usize::from(input.byte() % 4)],
        _ => kind,
    };
    let string = |s: String| toml::Value::from(s).to_string();
    let target = |input: &mut Input<'_>| {
        let service = match input.byte() % 4 {
            3 => input.string(),
            _ => services.get(usize::from(input.byte()) % services.len().max(1)).cloned().unwrap_or_default(),
        };
        let index = if input.byte() & 1 == 0 { format!("-{}", input.number(4)) } else { String::new() };
        format!("{service}{index}:{}", input.number(4) as i64 % 70_000)
    };
    let list = |input: &mut Input<'_>, item: &mut dyn FnMut(&mut Input<'_>) -> String| {
        let items: Vec<String> = (0..input.length()).map(|_| item(input)).collect();
        format!("[{}]", items.join(", "))
    };
    match kind {
        Kind::Str => string(input.string()),
        Kind::Choice(choices) => match choices.get(usize::from(input.byte()) % (choices.len() + 1)) {
            Some(choice) => string((*choice).to_owned()),
            None => string(input.string()),
        },
        Kind::Int => (input.number(8) as i64).to_string(),
        Kind::Bool => (input.byte() & 1 == 1).to_string(),
        Kind::Strings => list(input, &mut |i| string(i.string())),
        Kind::Ints => list(input, &mut |i| (i.number(4) as i32 % 70_000).to_string()),
        Kind::Table => {
            let pairs: Vec<String> = (0..input.length())
                .map(|_| format!("{} = {}", string(input.string()), string(input.string())))
                .collect();
            format!("{{ {} }}", pairs.join(", "))
        }
        Kind::Targets => list(input, &mut |i| string(target(i))),
        Kind::Forwards => list(input, &mut |i| {
            let local = match i.byte() % 3 {
                0 => format!("{}", i.number(2)),
                1 => format!("127.0.0.{}:{}", i.byte(), i.number(2)),
                _ => i.string(),
            };
            string(format!("{local}={}", target(i)))
        }),
    }
}

/// A spec of the right shape: a cluster, a few services with some keys,
/// maybe a `[lambda]` table.
fn generated(input: &mut Input<'_>) -> String {
    let cluster = if input.byte() % 4 == 3 { input.string() } else { "demo".to_owned() };
    let mut text = format!("[cluster]\nname = {}\n", toml::Value::from(cluster));
    if input.byte() & 1 == 1 {
        text += &format!("network = {}\n", value(input, Kind::Choice(&["10.10.0.0/16", "100.64.0.0/10"]), &[]));
    }
    let mut services: Vec<String> = (0..input.length().min(5))
        .map(|_| match input.byte() % 4 {
            0 => input.string(),
            _ => SERVICE_NAMES[usize::from(input.byte()) % SERVICE_NAMES.len()].to_owned(),
        })
        .collect();
    // Each table and key once: TOML refuses duplicates before our checks run.
    services.sort();
    services.dedup();
    for name in &services {
        text += &format!("[services.{}]\n", toml::Value::from(name.as_str()));
        for (key, kind) in SERVICE_KEYS {
            // Out of 16 (a zero byte, the input used up, leaves a key out
            // but `command`): `command` mostly, the others now and then.
            let b = input.byte() % 16;
            let include = match key {
                "command" => b != 15,
                "colour" => b == 15,
                _ => b >= 13,
            };
            if include {
                text += &format!("{key} = {}\n", value(input, kind, &services));
            }
        }
    }
    if input.byte() & 1 == 1 {
        text += "[lambda]\n";
        for (key, kind) in LAMBDA_KEYS {
            if input.byte() % 4 == 3 {
                text += &format!("{key} = {}\n", value(input, kind, &services));
            }
        }
    }
    text
}

/// [`GOOD`] with a few pieces cut out, copied or inserted.
fn mutated(input: &mut Input<'_>) -> String {
    let mut text = GOOD.to_owned();
    for _ in 0..input.length().max(1) {
        let at = |input: &mut Input<'_>, text: &str| {
            let mut at = input.number(4) as usize % (text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            at
        };
        let (a, b) = (at(input, &text), at(input, &text));
        let (start, end) = (a.min(b), a.max(b));
        match input.byte() % 3 {
            0 => text.replace_range(start..end, ""),
            1 => {
                let piece = text[start..end].to_owned();
                text.insert_str(end, &piece);
            }
            _ => text.insert_str(start, &input.string()),
        }
    }
    text
}

#[test]
fn spec_parse() {
    check!()
        .with_generator(produce::<Vec<u8>>().with().len(0usize..=MAX_INPUT))
        .with_test_time(fuzz::test_time())
        .for_each(|bytes: &Vec<u8>| {
            let mut input = Input::new(bytes);
            let text = match input.byte() % 4 {
                0 => String::from_utf8_lossy(input.rest()).into_owned(),
                1 => mutated(&mut input),
                _ => generated(&mut input),
            };
            match spec::parse(Path::new(SPEC_PATH), &text) {
                Ok(spec) => check_spec(&spec),
                Err(e) => {
                    let shown = e.to_string();
                    assert!(shown.starts_with(SPEC_PATH), "{shown}");
                    if let Some((line, col)) = e.position {
                        assert!(line >= 1 && col >= 1 && line <= text.lines().count() + 1, "{shown} in\n{text}");
                    }
                }
            }
        });
}

/// What a parsed spec promises `boxer up`.
fn check_spec(spec: &spec::Spec) {
    assert!(names::validate_cluster(&spec.name).is_ok());
    assert!(spec.services.is_sorted_by(|a, b| a.name < b.name), "services in name order");
    for s in &spec.services {
        assert!(names::validate_service(&s.name).is_ok(), "{}", s.name);
        assert!((1..=MAX_REPLICAS).contains(&s.replicas));
        assert!(s.command.first().is_some_and(|c| !c.trim().is_empty()));
        assert!(s.env.keys().all(|k| !k.is_empty() && !k.contains(['=', '\0'])));
        assert!(s.wait_for.iter().all(|(name, port)| !name.is_empty() && *port != 0));
        assert!(s.wait_timeout.is_none() || !s.wait_for.is_empty());
        let exposed: HashSet<u16> = s.expose.iter().copied().collect();
        assert!(exposed.len() == s.expose.len() && !exposed.contains(&0));
        let listens: HashSet<_> = s.forward.iter().map(|f| f.listen).collect();
        assert!(listens.len() == s.forward.len() && s.forward.iter().all(|f| f.listen.port() != 0 && f.port != 0));
        assert!(s.private.iter().all(|p| p.is_absolute()) && (s.private.is_empty() || s.isolate));
    }
    assert_eq!(spec.nodes().count(), spec.node_count());
}
