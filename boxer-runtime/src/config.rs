//! What a node needs to know to start.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use boxer_net::rendezvous::RendezvousAddr;

/// Everything a node needs to join and serve.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The rendezvous and its pinned fingerprint.
    pub rendezvous: RendezvousAddr,
    /// Cluster name.
    pub cluster: String,
    /// The cluster's join token.
    pub join_token: String,
    /// Service this node is a replica of.
    pub service: String,
    /// Replica index.
    pub index: u32,
    /// UDP address for the node's one socket.
    pub bind: SocketAddr,
    /// Local listeners whose connections go to a port on another node.
    pub forwards: Vec<ForwardSpec>,
    /// Local TCP ports that other nodes may connect to.
    pub expose: Vec<u16>,
    /// Where to keep a JSON copy of the membership table, if anywhere.
    pub status_file: Option<PathBuf>,
    /// Where to create the node's run directory (`/etc` files the shim
    /// redirects to): a fresh, world-readable `boxer-<node>-<random>`
    /// directory inside this one, removed when the node ends (this one is
    /// left alone). `None` runs no shim side (explicit forward/expose only).
    pub run_dir: Option<PathBuf>,
    /// Other nodes share this network namespace: the shim narrows wildcard
    /// binds to the node's loopback address.
    pub shared_namespace: bool,
}

/// `--forward [ADDR:]PORT=NAME:PORT`: like `ssh -L`, connections accepted on
/// the local address are carried to `NAME:PORT` in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardSpec {
    /// Local TCP address to listen on.
    pub listen: SocketAddr,
    /// Node name in the cluster (`server-0`, `node-3`, `server`).
    pub target: String,
    /// Port on the target node.
    pub port: u16,
}

/// Why a `--forward` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid forward {spec:?}: {why} (expected [ADDR:]PORT=NAME:PORT, e.g. 127.0.0.1:7000=server-0:6379)")]
pub struct ForwardParseError {
    spec: String,
    why: String,
}

impl FromStr for ForwardSpec {
    type Err = ForwardParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| ForwardParseError { spec: s.to_owned(), why: why.to_owned() };
        let (local, remote) = s.split_once('=').ok_or_else(|| err("missing '='"))?;
        let listen = match local.parse::<u16>() {
            Ok(port) => SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            Err(_) => local.parse().map_err(|_| err("bad local address"))?,
        };
        let (target, port) = remote.rsplit_once(':').ok_or_else(|| err("missing ':PORT' after the name"))?;
        if target.is_empty() {
            return Err(err("empty name"));
        }
        let port = port.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| err("bad remote port"))?;
        Ok(Self { listen, target: target.to_owned(), port })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_specs() {
        let f: ForwardSpec = "7000=server-0:6379".parse().unwrap();
        assert_eq!(f.listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!((f.target.as_str(), f.port), ("server-0", 6379));
        let f: ForwardSpec = "0.0.0.0:8080=web.demo.boxer:80".parse().unwrap();
        assert_eq!(f.listen, "0.0.0.0:8080".parse().unwrap());
        for bad in ["7000", "7000=server-0", "x=server-0:1", "7000=:1", "7000=a:0", "7000=a:99999"] {
            let e = bad.parse::<ForwardSpec>().unwrap_err();
            assert!(e.to_string().contains("expected [ADDR:]PORT=NAME:PORT"), "{e}");
        }
    }
}
