//! Providers: where a cluster's nodes run. `boxer up` is one orchestration
//! (rendezvous, membership, output, exit codes, teardown) over any
//! [`Provider`]; a provider only starts nodes, says when one ended, and
//! stops them.
//!
//! - [`local::LocalProvider`]: every node is a `boxer-runtime` process on
//!   this machine (in the NAT lab, a shared namespace, or the host's).
//! - [`crate::lambda::invoke::LambdaProvider`]: every node is one
//!   invocation of a Lambda function deployed by `boxer deploy`.

pub mod local;

use std::time::Duration;

pub use local::{LocalProvider, runtime_binary};

use crate::spec::Service;

/// How a node joins: the same for every node of a cluster.
#[derive(Debug, Clone)]
pub struct Join {
    /// Rendezvous address.
    pub rendezvous: std::net::SocketAddr,
    /// Its certificate fingerprint.
    pub fingerprint: String,
    /// Cluster name.
    pub cluster: String,
    /// Join token.
    pub token: String,
}

/// A node ended, as its provider saw it (the process exited, the
/// invocation returned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeExit {
    /// `<service>-<index>`.
    pub node: String,
    /// Its exit code (128 + signal if killed; 1 for a node that failed
    /// before its program ran).
    pub code: i32,
    /// Lines shown on the node's line as soon as this arrives (e.g. "killed
    /// at the deadline").
    pub notes: Vec<String>,
    /// Lines worth showing on the node's line when the rendezvous never saw
    /// it exit: a runtime log's tail, a function error.
    pub detail: Vec<String>,
    /// Whether the node failed before its program ran (join refused,
    /// invoke failed): shown even when the exit code is 0.
    pub failed_to_start: bool,
    /// Which launch of the node ended, for providers that can run two
    /// instances of one node at once ([`Provider::launch_takeover`]): the
    /// number that call returned. 0 where there is only ever one.
    pub instance: u64,
}

impl NodeExit {
    /// A node that failed before its program ran, for `why`.
    pub fn failed(node: &str, why: String) -> Self {
        Self { node: node.to_owned(), code: 1, notes: vec![], detail: vec![why], failed_to_start: true, instance: 0 }
    }
}

/// Variables every node's program gets: its replica index and how many
/// replicas its service has (MPI-style rank and size), for programs that
/// split work among themselves. A service's own `env` wins (`boxer map`
/// numbers its items this way).
pub const RANK_ENV: &str = "BOXER_RANK";
/// See [`RANK_ENV`].
pub const SIZE_ENV: &str = "BOXER_SIZE";

/// The environment of replica `index` of `service`: its `env`, with
/// [`RANK_ENV`] and [`SIZE_ENV`] added unless it sets them.
pub fn node_env(service: &Service, index: u32) -> std::collections::BTreeMap<String, String> {
    let mut env = service.env.clone();
    env.entry(RANK_ENV.to_owned()).or_insert_with(|| index.to_string());
    env.entry(SIZE_ENV.to_owned()).or_insert_with(|| service.replicas.to_string());
    env
}

/// Where nodes run. One `boxer up` drives one provider.
// Static dispatch only (`up::up` is generic), so `Send` bounds on the
// futures are not needed and `async fn` is fine here.
#[allow(async_fn_in_trait)]
pub trait Provider {
    /// Its name in `boxer status` ("local", "lambda").
    fn kind(&self) -> &'static str;

    /// Starts replica `index` of `service`. Returns once the start is under
    /// way; the end comes later as a [`NodeExit`] on the provider's channel.
    async fn launch(&mut self, join: &Join, service: &Service, index: u32) -> anyhow::Result<()>;

    /// Starts a second instance of replica `index` of `service` while the
    /// first still runs (`lambda.replace_before_deadline`): it boots, waits
    /// for the name, and joins in the first one's place once that one has
    /// stopped. Returns the [`NodeExit::instance`] its end will carry. Only
    /// for providers whose nodes have a [`Provider::lifetime`] and that
    /// [stop through the rendezvous](Provider::stops_through_rendezvous)
    /// (that is how the first instance is stopped).
    async fn launch_takeover(&mut self, join: &Join, service: &Service, index: u32) -> anyhow::Result<u64> {
        let _ = (join, service, index);
        anyhow::bail!("the {} provider does not replace nodes before a deadline", self.kind())
    }

    /// The longest a node can run (Lambda: the function's timeout); `None`
    /// when nothing ends nodes on a clock.
    fn lifetime(&self) -> Option<Duration> {
        None
    }

    /// Forgets a node whose [`NodeExit`] arrived.
    fn exited(&mut self, node: &str);

    /// Nodes started and not yet ended.
    fn running(&self) -> usize;

    /// Asks every running node to stop (`force`: now, no grace). Providers
    /// whose nodes only stop through the rendezvous (the cluster is deleted
    /// first) do nothing here.
    fn stop_all(&mut self, force: bool);

    /// Asks one running node to stop (SIGTERM, its grace, then leave), for
    /// `boxer scale` down. Not called for providers that
    /// [stop through the rendezvous](Provider::stops_through_rendezvous):
    /// `boxer up` asks the rendezvous to tell such a node instead.
    fn stop_node(&mut self, node: &str) -> anyhow::Result<()>;

    /// Whether deleting the cluster on the rendezvous is what stops nodes
    /// (Lambda: there is no process to signal).
    fn stops_through_rendezvous(&self) -> bool;

    /// How long stopping may take before `boxer up` gives up on the nodes.
    fn stop_grace(&self) -> Duration;

    /// Where a node's runtime log is (a path, or where the provider keeps it).
    fn runtime_log(&self, node: &str) -> String;

    /// A few words on launching for the progress line (e.g. invokes sent).
    fn progress(&self) -> String {
        String::new()
    }

    /// Closing lines for the summary (e.g. billed time and cost).
    fn summary(&self) -> Vec<String>;
}
