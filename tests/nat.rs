//! NAT traversal in the lab: every pair of NAT kinds, two nodes behind one
//! NAT, and an idle connection outliving the NAT's UDP timeout. Real
//! rendezvous and runtimes on their own lab devices behind real nftables
//! NATs; 50 MB each way with checksums; the path each pair must take.

use std::time::Duration;

use boxer_e2e::natlab::*;
use boxer_e2e::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

isolate_this_test_binary!();

/// Bytes sent each way.
const TRANSFER: usize = 50 << 20;
/// Port the receiving node exposes.
const SERVICE_PORT: u16 = 9000;
/// Port the sending node forwards from.
const FORWARD_PORT: u16 = 7000;

/// The bytes a side sends: a keyed pattern, so each direction differs.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u64).wrapping_mul(2654435761).wrapping_add(seed as u64).to_le_bytes()[3]).collect()
}

/// Server on `127.0.0.1:SERVICE_PORT` in the device: for each connection,
/// sends the pattern while hashing what arrives, then sends that hash.
async fn exchange_server() {
    let listener = tokio::net::TcpListener::bind(local(SERVICE_PORT)).await.expect("bind service port");
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let (mut r, mut w) = stream.into_split();
            let send = async move {
                w.write_all(&pattern(2, TRANSFER)).await?;
                Ok::<_, std::io::Error>(w)
            };
            let receive = async move {
                let mut hash = Sha256::new();
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = r.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    hash.update(&buf[..n]);
                }
                Ok::<_, std::io::Error>(hash.finalize())
            };
            if let Ok((mut w, digest)) = tokio::try_join!(send, receive) {
                let _ = w.write_all(&digest).await;
                let _ = w.shutdown().await;
            }
        });
    }
}

/// Client through the forward: sends the pattern while reading the
/// server's; checks both hashes. With `pause`, it first reads 1 MiB, then
/// leaves the connection idle that long (the rest waits in the server's
/// buffers), then finishes.
async fn exchange_client(pause: Option<Duration>) -> anyhow::Result<()> {
    let stream = tokio::net::TcpStream::connect(local(FORWARD_PORT)).await?;
    let (mut r, mut w) = stream.into_split();
    let mut got = vec![0u8; 1 << 20];
    r.read_exact(&mut got).await?;
    if let Some(pause) = pause {
        tokio::time::sleep(pause).await;
    }
    let sent = pattern(1, TRANSFER);
    let expected_echo = Sha256::digest(&sent);
    let send = async move {
        w.write_all(&sent).await?;
        w.shutdown().await?;
        Ok::<_, std::io::Error>(())
    };
    let receive = async move {
        r.read_to_end(&mut got).await?;
        Ok::<_, std::io::Error>(got)
    };
    let ((), got) = tokio::try_join!(send, receive)?;
    anyhow::ensure!(got.len() == TRANSFER + 32, "received {} bytes, expected {}", got.len(), TRANSFER + 32);
    anyhow::ensure!(
        Sha256::digest(&got[..TRANSFER]) == Sha256::digest(pattern(2, TRANSFER)),
        "server's bytes corrupted"
    );
    anyhow::ensure!(got[TRANSFER..] == expected_echo[..], "the server received other bytes than sent");
    Ok(())
}

/// Where each node sits.
enum Placement {
    /// Each behind a NAT of its own.
    Own(NatKind, NatKind),
    /// Both behind one NAT of this kind.
    Shared(NatKind),
}

/// Two nodes: `b` exposes the exchange server, `a` forwards to it.
fn pair(name: &str, placement: Placement) -> anyhow::Result<(LabCluster, LabNode, LabNode)> {
    let mut c = LabCluster::start(name)?;
    let (da, db) = match placement {
        Placement::Own(a, b) => (c.device("a-0", NatOptions::new(a))?, c.device("b-0", NatOptions::new(b))?),
        Placement::Shared(kind) => {
            c.rt.block_on(c.lab.add_nat("nat-home", NatOptions::new(kind)))?;
            (c.device_behind("a-0", "nat-home")?, c.device_behind("b-0", "nat-home")?)
        }
    };
    c.spawn_in(&db, exchange_server)?;
    let b = c.node(name, db, "b", 0, &["--expose", &SERVICE_PORT.to_string()])?;
    let forward = format!("127.0.0.1:{FORWARD_PORT}=b-0:{SERVICE_PORT}");
    let a = c.node(name, da, "a", 0, &["--forward", &forward])?;
    c.wait_listening(&a, "b-0", SERVICE_PORT)?;
    Ok((c, a, b))
}

/// Transfers 50 MB each way between two nodes placed so, and checks the
/// path both sides report.
fn case(name: &str, placement: Placement, expect_direct: bool) {
    let (c, a, b) = pair(name, placement).unwrap();
    let result = c.run_in(&a.device, || exchange_client(None));
    if let Err(e) = result {
        panic!("{name}: transfer failed: {e:#}\n{}", c.logs());
    }
    for (node, peer) in [(&a, "b-0"), (&b, "a-0")] {
        let path = c.path(node, peer).unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
        let direct = path.starts_with("direct");
        assert_eq!(
            direct,
            expect_direct,
            "{name}: {} reaches {peer} {path}, expected {}\n{}",
            node.name,
            if expect_direct { "a direct path" } else { "the relay" },
            c.logs()
        );
    }
}

macro_rules! matrix {
    ($($test:ident: $a:ident x $b:ident => $direct:expr;)*) => {$(
        #[test]
        fn $test() {
            lab::require_isolation();
            case(&stringify!($test).replace('_', "-"), Placement::Own(NatKind::$a, NatKind::$b), $direct);
        }
    )*};
}

// Direct wherever the NAT pair allows it; the relay where both sides (or a
// symmetric and a port-restricted side) filter each other's new mappings.
matrix! {
    none_none: None x None => true;
    none_open: None x Open => true;
    none_moderate: None x Moderate => true;
    none_strict: None x Strict => true;
    none_masquerade: None x Masquerade => true;
    open_open: Open x Open => true;
    open_moderate: Open x Moderate => true;
    open_strict: Open x Strict => true;
    open_masquerade: Open x Masquerade => true;
    moderate_moderate: Moderate x Moderate => true;
    moderate_strict: Moderate x Strict => false;
    moderate_masquerade: Moderate x Masquerade => true;
    strict_strict: Strict x Strict => false;
    strict_masquerade: Strict x Masquerade => false;
    masquerade_masquerade: Masquerade x Masquerade => true;
}

#[test]
fn two_nodes_behind_one_nat_talk_directly() {
    lab::require_isolation();
    case("hairpin", Placement::Shared(NatKind::Moderate), true);
}

/// A connection idle for 90 s behind NATs that forget UDP mappings after
/// 30 s still works: keepalives hold the mappings open.
#[test]
fn an_idle_connection_outlives_the_nat_timeout() {
    lab::require_isolation();
    let (c, a, _b) = pair("idle", Placement::Own(NatKind::Moderate, NatKind::Moderate)).unwrap();
    let result = c.run_in(&a.device, || exchange_client(Some(Duration::from_secs(90))));
    if let Err(e) = result {
        panic!("after 90 s idle: {e:#}\n{}", c.logs());
    }
    assert!(c.path(&a, "b-0").unwrap().starts_with("direct"), "{}", c.logs());
}

/// A relayed pair whose NATs start allowing a direct path moves to it under
/// an open connection: the transfer that began on the relay finishes intact.
#[test]
fn a_relayed_pair_upgrades_to_direct_without_breaking_streams() {
    lab::require_isolation();
    let (c, a, b) = pair("upgrade", Placement::Own(NatKind::Strict, NatKind::Strict)).unwrap();
    let client = a.device.spawn(|_| exchange_client(Some(Duration::from_secs(25)))).unwrap();
    // The connection starts on the relay...
    let before = c.path(&a, "b-0").unwrap();
    assert_eq!(before, "relayed", "{}", c.logs());
    // ...then both NATs become port-restricted cones and forget their
    // mappings: every flow is remapped (a NAT rebinding), the rendezvous sees
    // and publishes the new addresses, and the next upgrade punch (within
    // 10 s) finds the direct path.
    for router in ["nat-a-0", "nat-b-0"] {
        let router = c.lab.router(router).expect("router exists");
        c.rt.block_on(async {
            router.set_nat(patchbay::Nat::Moderate).await?;
            router.flush_nat_state().await
        })
        .unwrap();
    }
    let result = c.rt.block_on(client).expect("client task");
    if let Err(e) = result {
        panic!("transfer across the upgrade: {e:#}\n{}", c.logs());
    }
    let after = c.path(&a, "b-0").unwrap();
    assert!(after.starts_with("direct"), "still {after} after the NATs opened\n{}", c.logs());
    let dials: usize = [&a, &b].iter().map(|n| read(&n.log).matches("peer connection established").count()).sum();
    assert_eq!(dials, 1, "one connection throughout\n{}", c.logs());
}

/// A node whose NAT mapping changes under an open direct connection (it
/// moves behind another NAT: new public address, as after a NAT reboot or a
/// network change) keeps the connection: heartbeats find the new address and
/// QUIC follows it.
#[test]
fn a_rebinding_keeps_the_connection() {
    lab::require_isolation();
    let (c, a, b) = pair("rebind", Placement::Own(NatKind::Moderate, NatKind::Moderate)).unwrap();
    c.rt.block_on(c.lab.add_nat("nat-spare", NatOptions::new(NatKind::Moderate))).unwrap();
    let client = a.device.spawn(|_| exchange_client(Some(Duration::from_secs(20)))).unwrap();
    let before = c.path(&b, "a-0").unwrap();
    assert!(before.starts_with("direct"), "{before}\n{}", c.logs());
    let spare = c.lab.router("nat-spare").expect("router exists");
    let iface = a.device.default_iface().expect("a-0 has an interface");
    c.rt.block_on(iface.replug(spare.id())).unwrap();
    let result = c.rt.block_on(client).expect("client task");
    if let Err(e) = result {
        panic!("transfer across the rebinding: {e:#}\n{}", c.logs());
    }
    let after = c.path(&b, "a-0").unwrap();
    assert!(after.starts_with("direct") && after != before, "b-0 reaches a-0 {after} (before: {before})\n{}", c.logs());
}
