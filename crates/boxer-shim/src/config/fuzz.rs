//! Fuzz target for the name filter of the resolver hooks: the names an
//! application resolves often come from its own input (a URL, a `Host`
//! header), so any string must get an answer, never a panic.
//!
//! Bounded-time test on stable (bolero's `check!`); docs/security.md says
//! how to run it longer.

use std::ffi::CString;
use std::net::{IpAddr, Ipv4Addr};

use bolero::{check, produce};
use boxer_proto::fuzz::{self, Input};

use super::*;

/// What [`Config::may_be_boxer_name`] should say, written the slow, obvious way.
fn expected(cluster: &str, name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.parse::<IpAddr>().is_ok() {
        return false;
    }
    let suffix = format!(".{cluster}.{}", boxer_proto::names::DOMAIN).to_ascii_lowercase();
    !name.contains('.') || (name.len() > suffix.len() && name.to_ascii_lowercase().ends_with(&suffix))
}

#[test]
fn boxer_names() {
    check!().with_generator(produce::<Vec<u8>>().with().len(0usize..=256)).with_test_time(fuzz::test_time()).for_each(
        |bytes: &Vec<u8>| {
            let mut input = Input::new(bytes);
            let cluster = if input.byte() & 1 == 0 { "demo".to_owned() } else { input.string() };
            let name = match input.byte() % 3 {
                0 => String::from_utf8_lossy(input.rest()).into_owned(),
                1 => format!("{}.{cluster}.boxer", input.string()),
                _ => input.string(),
            };
            let config = Config {
                control: "@fuzz".into(),
                overlay_ip: Ipv4Addr::new(100, 96, 0, 1),
                network: "100.96.0.0/12".parse().expect("a network"),
                loopback: Ipv4Addr::new(127, 100, 0, 1),
                hostname: CString::new("web-0").expect("no NUL"),
                cluster: cluster.clone(),
                etc_dir: None,
                shared_namespace: false,
            };
            assert_eq!(config.may_be_boxer_name(&name), expected(&cluster, &name), "{name:?} in {cluster:?}");
        },
    );
}
