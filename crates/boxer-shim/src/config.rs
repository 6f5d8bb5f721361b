//! The node's identity as the runtime passed it in the environment.

use std::ffi::CString;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::OnceLock;

use boxer_proto::shim::{
    ENV_CLUSTER, ENV_CONTROL, ENV_ETC_DIR, ENV_HOSTNAME, ENV_LOOPBACK, ENV_NETWORK, ENV_OVERLAY_IP,
    ENV_SHARED_NAMESPACE,
};
use ipnet::Ipv4Net;

/// Everything the shim knows about its node.
#[derive(Debug, Clone)]
pub struct Config {
    /// The runtime's control socket: a path, or `@name` (abstract namespace).
    pub control: String,
    /// This node's overlay address.
    pub overlay_ip: Ipv4Addr,
    /// The overlay network.
    pub network: Ipv4Net,
    /// This node's private loopback address.
    pub loopback: Ipv4Addr,
    /// This node's hostname.
    pub hostname: CString,
    /// Cluster name.
    pub cluster: String,
    /// Directory of the runtime-written `/etc` files.
    pub etc_dir: Option<PathBuf>,
    /// Narrow wildcard binds to [`Config::loopback`].
    pub shared_namespace: bool,
}

static CONFIG: OnceLock<Option<Config>> = OnceLock::new();

impl Config {
    /// Reads the configuration from the environment; `None` when the process
    /// was not started by a runtime (the shim then passes everything through).
    pub fn from_env() -> Option<Self> {
        let var = |name| std::env::var(name).ok().filter(|v| !v.is_empty());
        Some(Self {
            control: var(ENV_CONTROL)?,
            overlay_ip: var(ENV_OVERLAY_IP)?.parse().ok()?,
            network: var(ENV_NETWORK)?.parse().ok()?,
            loopback: var(ENV_LOOPBACK)?.parse().ok()?,
            hostname: CString::new(var(ENV_HOSTNAME)?).ok()?,
            cluster: var(ENV_CLUSTER)?,
            etc_dir: var(ENV_ETC_DIR).map(PathBuf::from),
            shared_namespace: var(ENV_SHARED_NAMESPACE).is_some_and(|v| v == "1"),
        })
    }

    /// Whether `ip` is in the overlay network.
    pub fn is_overlay(&self, ip: Ipv4Addr) -> bool {
        self.network.contains(&ip)
    }

    /// Whether `name` may be a Boxer name and is worth asking the runtime
    /// about: a single label, or one ending in `.<cluster>.boxer`.
    pub fn may_be_boxer_name(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() || name.parse::<std::net::IpAddr>().is_ok() {
            return false;
        }
        if !name.contains('.') {
            return true;
        }
        let suffix = format!(".{}.{}", self.cluster, boxer_proto::names::DOMAIN);
        // Bytes, not `str` slicing: the cut may fall inside a character.
        name.len() > suffix.len()
            && name.as_bytes()[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
    }
}

/// Whether `ip` is in Boxer's default overlay network. Used when the shim is
/// loaded without its environment, to fail closed rather than send there.
pub fn in_default_overlay(ip: Ipv4Addr) -> bool {
    static DEFAULT: OnceLock<Ipv4Net> = OnceLock::new();
    DEFAULT.get_or_init(|| boxer_proto::control::DEFAULT_OVERLAY.parse().expect("valid default network")).contains(&ip)
}

/// Reads the configuration once (called from the load-time constructor).
pub fn init() {
    CONFIG.get_or_init(Config::from_env);
}

/// The configuration, if the process runs under a runtime.
pub fn get() -> Option<&'static Config> {
    CONFIG.get_or_init(Config::from_env).as_ref()
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            control: "/x".into(),
            overlay_ip: Ipv4Addr::new(100, 96, 0, 1),
            network: "100.96.0.0/12".parse().unwrap(),
            loopback: Ipv4Addr::new(127, 100, 0, 1),
            hostname: CString::new("web-0").unwrap(),
            cluster: "demo".into(),
            etc_dir: None,
            shared_namespace: false,
        }
    }

    #[test]
    fn which_names_go_to_the_runtime() {
        let c = config();
        for yes in ["web-0", "web", "localhost", "web-0.demo.boxer", "WEB-0.DEMO.BOXER."] {
            assert!(c.may_be_boxer_name(yes), "{yes}");
        }
        for no in ["example.com", "web-0.other.boxer", "100.96.0.5", "::1", "", "demo.boxer"] {
            assert!(!c.may_be_boxer_name(no), "{no}");
        }
        // The suffix cut inside a character panicked (src/config/fuzz.rs finds it).
        assert!(!c.may_be_boxer_name("a.\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}"));
        assert!(c.may_be_boxer_name("\u{e9}-0.demo.boxer"));
        assert!(c.is_overlay(Ipv4Addr::new(100, 111, 255, 254)));
        assert!(!c.is_overlay(Ipv4Addr::new(100, 112, 0, 1)));
    }
}
