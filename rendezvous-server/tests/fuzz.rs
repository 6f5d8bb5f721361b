//! Fuzz target for the rendezvous' state: any sequence of requests and
//! node messages, as hostile members (and a careless admin) may send them,
//! leaves every cluster consistent, and what it saves for a restart is
//! what it takes back.
//!
//! The messages' decoding is fuzzed in boxer-proto (tests/fuzz.rs); this is
//! what the registry does with what decodes. Bounded-time test on stable
//! (bolero's `check!`); docs/security.md says how to run it longer.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bolero::{check, produce};
use boxer_proto::control::{CreateClusterRequest, JoinRequest, NodeState, WatchRequest};
use boxer_proto::fuzz::{self, Input};
use boxer_proto::{Fingerprint, NodeId, names};
use ipnet::Ipv4Net;
use rendezvous::registry::{Departure, MAX_LISTENING, MAX_LOCAL_ADDRS, MAX_TOKEN_LEN, Registry};

const ADMIN: &str = "admin";

/// Cluster names: two valid, one not.
const CLUSTERS: [&str; 3] = ["demo", "other", "Not A Name"];

/// Service names: valid, reserved and ambiguous.
const SERVICES: [&str; 5] = ["web", "db", "api", "node", "web-1"];

/// A name from `choices` (mostly) or any string.
fn pick(input: &mut Input<'_>, choices: &[&str]) -> String {
    match choices.get(usize::from(input.byte()) % (choices.len() + 1)) {
        Some(name) => (*name).to_owned(),
        None => input.string(),
    }
}

/// One of a few node ids, so that requests name members.
fn node(input: &mut Input<'_>) -> NodeId {
    NodeId(u32::from(input.byte() % 8))
}

#[test]
fn registry_stays_consistent() {
    check!().with_generator(produce::<Vec<u8>>().with().len(0usize..=2048)).with_test_time(fuzz::test_time()).for_each(
        |bytes: &Vec<u8>| {
            let mut input = Input::new(bytes);
            let mut registry = Registry::new(ADMIN.into());
            // Join tokens of the clusters that exist, and their last seq.
            let mut tokens: HashMap<String, String> = HashMap::new();
            let mut seqs: HashMap<String, u64> = HashMap::new();
            let mut now = Instant::now();
            // One cluster from the start, so that most joins have one to join.
            let demo = CreateClusterRequest {
                admin_token: ADMIN.into(),
                name: CLUSTERS[0].into(),
                network: None,
                join_token: Some("join".into()),
            };
            registry.create_cluster(demo).expect("a valid cluster");
            tokens.insert(CLUSTERS[0].into(), "join".into());
            while !input.is_empty() {
                // Mostly the cluster that exists from the start.
                let cluster = if input.byte() & 1 == 0 { CLUSTERS[0].to_owned() } else { pick(&mut input, &CLUSTERS) };
                let token = |input: &mut Input<'_>, tokens: &HashMap<String, String>| match input.byte() % 4 {
                    0 => input.string(),
                    _ => tokens.get(&cluster).cloned().unwrap_or_default(),
                };
                match input.byte() % 10 {
                    0 => {
                        let request = CreateClusterRequest {
                            admin_token: if input.byte() % 8 == 7 { input.string() } else { ADMIN.into() },
                            name: cluster.clone(),
                            network: input.arbitrary::<Option<Ipv4Net>>().flatten(),
                            join_token: input.arbitrary(),
                        };
                        if let Ok(info) = registry.create_cluster(request) {
                            assert!(names::validate_cluster(&info.name).is_ok() && info.network.prefix_len() <= 30);
                            assert!((1..=MAX_TOKEN_LEN).contains(&info.join_token.len()));
                            tokens.insert(cluster.clone(), info.join_token);
                            seqs.insert(cluster.clone(), 0);
                        }
                    }
                    1 => {
                        let admin = if input.byte() % 8 == 7 { input.string() } else { ADMIN.into() };
                        if registry.delete_cluster(&admin, &cluster).is_ok() {
                            tokens.remove(&cluster);
                            seqs.remove(&cluster);
                        }
                    }
                    2 | 3 => {
                        let Some(mut request) = input.arbitrary::<JoinRequest>() else { break };
                        request.cluster = cluster.clone();
                        request.join_token = token(&mut input, &tokens);
                        if input.byte() % 4 != 3 {
                            request.service = pick(&mut input, &SERVICES);
                            request.index %= 3;
                        }
                        let fingerprint = Fingerprint([input.byte() % 8; 32]);
                        let reflexive: SocketAddr = input.arbitrary().unwrap_or(([192, 0, 2, 1], 1).into());
                        if let Ok((joined, _feed)) = registry.join(request.clone(), fingerprint, reflexive) {
                            assert!(names::validate_service(&request.service).is_ok());
                            let me = joined.snapshot.members.iter().find(|m| m.node_id == joined.node_id);
                            assert!(
                                me.is_some_and(|m| m.overlay_ip == joined.overlay_ip && m.fingerprint == fingerprint)
                            );
                            assert!(joined.network.contains(&joined.overlay_ip));
                            let all = names::all_names(&request.service, request.index, joined.node_id.0, &cluster);
                            assert_eq!(joined.names, all);
                        }
                    }
                    4 => {
                        // Sessions end, lost or left, peers report each
                        // other silent, and time moves on.
                        let id = node(&mut input);
                        let session = match input.byte() % 4 {
                            0 => u64::from(input.byte()),
                            _ => registry.open_mailbox(&cluster, id).map_or(0, |m| m.session),
                        };
                        let departure = if input.byte() & 1 == 0 { Departure::Left } else { Departure::Lost };
                        now += Duration::from_secs(u64::from(input.byte() % 90));
                        let _ = registry.leave(&cluster, id, session, departure, now);
                        let _ = registry.peer_lost(&cluster, node(&mut input), node(&mut input), now);
                        for (c, gone) in registry.expire(now) {
                            assert!(!registry.is_away(&c, gone));
                        }
                    }
                    5 => {
                        let ports = input.arbitrary::<Vec<u16>>().unwrap_or_default();
                        let _ = registry.set_listening(&cluster, node(&mut input), ports);
                    }
                    6 => {
                        let local = input.arbitrary::<Vec<SocketAddr>>().unwrap_or_default();
                        let _ = registry.set_addresses(&cluster, node(&mut input), local);
                        let reflexive = input.arbitrary().unwrap_or(([192, 0, 2, 2], 2).into());
                        registry.set_reflexive(&cluster, node(&mut input), reflexive);
                    }
                    7 => {
                        let state = input.arbitrary::<NodeState>().unwrap_or(NodeState::Running);
                        let id = node(&mut input);
                        registry.set_state(&cluster, id, &input.string(), state);
                        let states = registry.states(&cluster);
                        assert!(states.is_sorted_by(|a, b| a.0 <= b.0));
                    }
                    8 => {
                        let (from, to) = (node(&mut input), node(&mut input));
                        let _mailbox = registry.open_mailbox(&cluster, from);
                        let _ = registry.punch(&cluster, from, to);
                        let _ = registry.relay_to(&cluster, to);
                    }
                    _ => {
                        let request =
                            WatchRequest { cluster: cluster.clone(), token: token(&mut input, &tokens), logs: true };
                        let _ = registry.watch(&request);
                        let _ = registry.resync(&cluster);
                    }
                }
                check_clusters(&mut registry, &tokens, &mut seqs);
            }
        },
    );
}

/// Every cluster: ids, addresses, replica names and certificates belong to
/// one member each; addresses are in the cluster's network; announced
/// ports and addresses within their limits; history only moves forward.
fn check_clusters(registry: &mut Registry, tokens: &HashMap<String, String>, seqs: &mut HashMap<String, u64>) {
    let listed: HashSet<String> = registry.clusters().into_iter().map(|(name, _)| name).collect();
    assert_eq!(listed, tokens.keys().cloned().collect::<HashSet<_>>());
    for cluster in listed {
        let request = WatchRequest { cluster: cluster.clone(), token: ADMIN.into(), logs: false };
        let (snapshot, _feed) = registry.watch(&request).expect("the admin watches any cluster");
        let (with_token, _feed) = registry
            .watch(&WatchRequest { token: tokens[&cluster].clone(), ..request })
            .expect("the join token watches its cluster");
        assert_eq!(with_token, snapshot);
        let last = seqs.insert(cluster.clone(), snapshot.seq).unwrap_or(0);
        assert!(snapshot.seq >= last, "{cluster}: seq went back from {last} to {}", snapshot.seq);
        let members = &snapshot.members;
        let distinct = |key: &dyn Fn(&boxer_proto::Member) -> String| {
            members.iter().map(key).collect::<HashSet<_>>().len() == members.len()
        };
        assert!(distinct(&|m| m.node_id.to_string()), "{cluster}: node ids");
        assert!(distinct(&|m| m.overlay_ip.to_string()), "{cluster}: overlay addresses");
        assert!(distinct(&|m| m.replica_name()), "{cluster}: replica names");
        assert!(distinct(&|m| m.fingerprint.to_string()), "{cluster}: certificates");
        for m in members {
            assert!(m.overlay_ip.octets() != [0; 4] && m.node_id.0 != 0);
            assert!(m.listening.len() <= MAX_LISTENING && m.listening.is_sorted() && m.local.len() <= MAX_LOCAL_ADDRS);
            assert!(m.listening.windows(2).all(|w| w[0] != w[1]), "ports deduplicated");
        }
    }
    // What a restarted rendezvous takes back is what was saved.
    let saved = registry.saved();
    assert_eq!(Registry::restore(ADMIN.into(), saved.clone(), Instant::now()).saved(), saved);
}
