//! Node names: validation, derivation and resolution rules.
//!
//! A node of service `web`, replica index 0, node id 7, in cluster `demo` is
//! called `web-0`, `node-7`, `web-0.demo.boxer` and `node-7.demo.boxer`; the
//! bare service name `web` (and `web.demo.boxer`) means every replica of `web`.

/// Longest DNS label, the limit for cluster and service names.
pub const MAX_LABEL_LEN: usize = 63;
/// Top-level domain of cluster-qualified names.
pub const DOMAIN: &str = "boxer";
/// Prefix of the name that every node has by id.
pub const NODE_PREFIX: &str = "node";

/// Why a cluster or service name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty, too long, or characters outside `[a-z0-9-]`.
    #[error(
        "invalid {kind} name {name:?}: use 1-{MAX_LABEL_LEN} lowercase letters, digits and '-', starting with a letter and not ending with '-'"
    )]
    Syntax {
        /// "cluster" or "service".
        kind: &'static str,
        /// The refused name.
        name: String,
    },
    /// A service name that would collide with replica or node names.
    #[error("invalid service name {name:?}: {why}")]
    Ambiguous {
        /// The refused name.
        name: String,
        /// Which collision it would cause.
        why: &'static str,
    },
}

/// Checks the DNS-label syntax shared by cluster and service names.
pub fn validate_label(kind: &'static str, name: &str) -> Result<(), NameError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_LABEL_LEN
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok { Ok(()) } else { Err(NameError::Syntax { kind, name: name.to_owned() }) }
}

/// Checks a cluster name.
pub fn validate_cluster(name: &str) -> Result<(), NameError> {
    validate_label("cluster", name)
}

/// Checks a service name: a label that cannot be confused with a replica name
/// (`web-1` would be both "service web-1" and "replica 1 of web") or with the
/// `node-<id>` names.
pub fn validate_service(name: &str) -> Result<(), NameError> {
    validate_label("service", name)?;
    if name == NODE_PREFIX {
        return Err(NameError::Ambiguous { name: name.to_owned(), why: "'node' is reserved for the node-<id> names" });
    }
    if split_replica(name).is_some() {
        return Err(NameError::Ambiguous {
            name: name.to_owned(),
            why: "it ends in '-<digits>', which reads as a replica name",
        });
    }
    Ok(())
}

/// `<service>-<index>`.
pub fn replica_name(service: &str, index: u32) -> String {
    format!("{service}-{index}")
}

/// `node-<id>`.
pub fn node_name(node_id: u32) -> String {
    format!("{NODE_PREFIX}-{node_id}")
}

/// Every name of a node, short names first.
pub fn all_names(service: &str, index: u32, node_id: u32, cluster: &str) -> Vec<String> {
    let short = [replica_name(service, index), node_name(node_id)];
    let qualified = short.iter().map(|n| format!("{n}.{cluster}.{DOMAIN}")).collect::<Vec<_>>();
    short.into_iter().chain(qualified).collect()
}

/// What a name asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameQuery {
    /// `node-<id>`.
    Node(u32),
    /// `<service>-<index>`.
    Replica {
        /// Service name.
        service: String,
        /// Replica index.
        index: u32,
    },
    /// `<service>`: all replicas.
    Service(String),
}

/// Parses a name as seen by an application in cluster `cluster`. Accepts the
/// short form and the `.<cluster>.boxer` form (with or without a trailing dot),
/// in any letter case. Returns `None` for names that cannot be Boxer names
/// (they go to the real resolver).
pub fn parse(name: &str, cluster: &str) -> Option<NameQuery> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let suffix = format!(".{cluster}.{DOMAIN}");
    let short = name.strip_suffix(&suffix).unwrap_or(&name);
    if validate_label("name", short).is_err() {
        return None;
    }
    match split_replica(short) {
        Some((NODE_PREFIX, id)) => Some(NameQuery::Node(id)),
        Some((service, index)) => Some(NameQuery::Replica { service: service.to_owned(), index }),
        None => Some(NameQuery::Service(short.to_owned())),
    }
}

/// Splits `web-12` into `("web", 12)`.
fn split_replica(name: &str) -> Option<(&str, u32)> {
    let (base, digits) = name.rsplit_once('-')?;
    if base.is_empty() || digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((base, digits.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert!(validate_cluster("redis-bench").is_ok());
        for bad in ["", "Web", "1web", "web-", "we_b", &"a".repeat(64)] {
            assert!(validate_cluster(bad).is_err(), "{bad:?}");
        }
        assert!(validate_service("web").is_ok());
        assert!(validate_service("my-web").is_ok());
        assert!(validate_service("web2").is_ok());
        assert!(matches!(validate_service("web-1"), Err(NameError::Ambiguous { .. })));
        assert!(matches!(validate_service("node"), Err(NameError::Ambiguous { .. })));
    }

    #[test]
    fn names_of_a_node() {
        assert_eq!(all_names("web", 0, 7, "demo"), ["web-0", "node-7", "web-0.demo.boxer", "node-7.demo.boxer"]);
    }

    #[test]
    fn parsing() {
        assert_eq!(parse("node-7", "demo"), Some(NameQuery::Node(7)));
        assert_eq!(parse("NODE-7.demo.boxer.", "demo"), Some(NameQuery::Node(7)));
        assert_eq!(
            parse("my-web-3.demo.boxer", "demo"),
            Some(NameQuery::Replica { service: "my-web".into(), index: 3 })
        );
        assert_eq!(parse("web", "demo"), Some(NameQuery::Service("web".into())));
        assert_eq!(parse("example.com", "demo"), None);
        assert_eq!(parse("web-0.other.boxer", "demo"), None);
        assert_eq!(parse("", "demo"), None);
    }
}
