//! Hostile and broken clients: the rendezvous and runtimes refuse them with a
//! clear reason and keep serving everyone else.

use std::net::SocketAddr;
use std::time::Duration;

use boxer_e2e::*;
use boxer_net::{Identity, NodeEndpoint, transport};
use boxer_proto::{ALPN_PEER, ALPN_RENDEZVOUS, Fingerprint, Hello, frame, hello::MAGIC};

const CLUSTER: &str = "demo";
const SETTLE: Duration = Duration::from_secs(20);

/// A join as replica 0 of `service`, with a fixed probe key.
fn join_request(
    cluster: &str,
    token: &str,
    service: &str,
    rejoin: Option<boxer_proto::NodeId>,
) -> boxer_proto::control::JoinRequest {
    boxer_proto::control::JoinRequest {
        cluster: cluster.into(),
        join_token: token.into(),
        service: service.into(),
        index: 0,
        local: vec![],
        listening: vec![],
        disco_public: [7; 32],
        rejoin,
    }
}

/// The reason `conn` is closed with by the other side (an application close
/// within [`SETTLE`]; anything else fails the test).
async fn application_close(conn: &quinn::Connection) -> anyhow::Result<String> {
    match tokio::time::timeout(SETTLE, conn.closed()).await? {
        quinn::ConnectionError::ApplicationClosed(c) => Ok(String::from_utf8_lossy(&c.reason).into_owned()),
        other => panic!("expected an application close, got {other:?}"),
    }
}

fn client() -> NodeEndpoint {
    NodeEndpoint::bind("127.0.0.1:0".parse().unwrap(), Identity::generate().unwrap()).unwrap()
}

/// Opens a control stream, writes `bytes` (then FIN if `finish`), and returns
/// the reason the server closed the connection with.
async fn close_reason(addr: SocketAddr, fp: Fingerprint, bytes: Vec<u8>, finish: bool) -> String {
    let endpoint = client();
    let conn = endpoint.connect(addr, fp, ALPN_RENDEZVOUS, transport::rendezvous()).unwrap().await.unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&bytes).await.unwrap();
    if finish {
        send.finish().unwrap();
    }
    match tokio::time::timeout(SETTLE, conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(c)) => String::from_utf8_lossy(&c.reason).into_owned(),
        other => panic!("expected an application close, got {other:?}"),
    }
}

fn framed<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    frame::encode(msg).unwrap()
}

#[tokio::test]
async fn broken_frames_are_refused_and_the_server_keeps_serving() -> anyhow::Result<()> {
    let dir = Scratch::new("hostile");
    let rdv = start_rendezvous(dir.path())?;
    let token = rdv.create_cluster(CLUSTER)?;
    let status = dir.path().join("ok.json");
    let mut cmd = rdv.runtime_command(CLUSTER, &token, "ok", 0);
    cmd.arg("--status-file").arg(&status);
    let _ok = spawn(cmd, dir.path(), "ok")?;
    wait_until(SETTLE, "ok-0 to join", || read_status(&status).map(|_| ()))?;
    let fp: Fingerprint = rdv.fingerprint.parse()?;

    let hello = framed(&Hello::current());
    let mut truncated = 100u32.to_be_bytes().to_vec();
    truncated.extend_from_slice(&[1; 10]);
    let with_hello = |rest: &[u8]| [hello.clone(), rest.to_vec()].concat();
    let version_text =
        &*format!("peer speaks version 99, this build speaks version {}", boxer_proto::PROTOCOL_VERSION).leak();
    let cases: Vec<(&str, Vec<u8>, bool, &str)> = vec![
        ("truncated frame", truncated, true, "truncated frame: expected 100 bytes, got 10"),
        ("oversize frame", u32::MAX.to_be_bytes().to_vec(), false, "oversize frame: 4294967295 bytes announced"),
        ("HTTP request", b"GET / HTTP/1.1\r\n\r\n".to_vec(), false, "oversize frame"),
        ("garbage hello", vec![0, 0, 0, 6, 0xde, 0xad, 0xbe, 0xef, 1, 2], false, "not a Boxer peer"),
        ("short garbage", vec![0, 0, 0, 2, 0xff, 0xff], false, "undecodable frame"),
        ("other version", framed(&Hello { magic: MAGIC, version: 99 }), false, version_text),
        ("garbage request", with_hello(&[0, 0, 0, 3, 0xff, 0xff, 0xff]), false, "bad request: undecodable frame"),
        ("truncated request", with_hello(&[0, 0]), true, "bad request: truncated frame"),
        ("silent client", vec![], false, "no request within"),
    ];
    let runs = cases.into_iter().map(|(name, bytes, finish, expected)| {
        let addr = rdv.addr;
        async move {
            let reason = close_reason(addr, fp, bytes, finish).await;
            assert!(reason.contains(expected), "{name}: expected {expected:?} in the close reason {reason:?}");
        }
    });
    let handles: Vec<_> = runs.map(tokio::spawn).collect();
    for h in handles {
        if let Err(e) = h.await {
            std::panic::resume_unwind(e.into_panic());
        }
    }

    // The member is still there, and a new node joins and sees it.
    let status2 = dir.path().join("ok2.json");
    let mut cmd = rdv.runtime_command(CLUSTER, &token, "ok", 1);
    cmd.arg("--status-file").arg(&status2);
    let _ok2 = spawn(cmd, dir.path(), "ok2")?;
    wait_until(SETTLE, "two members seen by the new node", || {
        let s = read_status(&status2)?;
        let n = s["members"].as_array().map_or(0, Vec::len);
        if n == 2 { Ok(()) } else { Err(format!("{n} members")) }
    })?;
    Ok(())
}

#[tokio::test]
async fn a_runtime_refuses_a_dialler_that_is_not_a_member() -> anyhow::Result<()> {
    let dir = Scratch::new("impostor");
    let rdv = start_rendezvous(dir.path())?;
    let token = rdv.create_cluster(CLUSTER)?;
    let status = dir.path().join("victim.json");
    let mut cmd = rdv.runtime_command(CLUSTER, &token, "victim", 0);
    cmd.arg("--status-file").arg(&status).arg("--expose").arg("22");
    let _victim = spawn(cmd, dir.path(), "victim")?;
    let s = wait_until(SETTLE, "victim to join", || read_status(&status))?;
    let member = &s["members"][0];
    let addr: SocketAddr = member["reflexive"].as_str().unwrap().parse()?;
    let fp: Fingerprint = member["fingerprint"].as_str().unwrap().parse()?;

    // We pin the victim's real key, so TLS succeeds, but our own certificate is
    // not in the cluster's membership: the victim must close on us.
    let impostor = client();
    let conn = impostor.connect(addr, fp, ALPN_PEER, transport::peer())?.await?;
    let reason = application_close(&conn).await?;
    assert!(reason.contains("is not a member of the cluster"), "{reason}");

    // Nor is a member of another cluster on the same rendezvous: it does
    // not see the victim in its membership (so cannot resolve it), and the
    // victim closes on it like on a stranger.
    let other_token = rdv.create_cluster("other")?;
    let at = boxer_net::rendezvous::RendezvousAddr { addr: rdv.addr, fingerprint: rdv.fingerprint.parse()? };
    let neighbour = client();
    let (joined, _session) =
        boxer_net::rendezvous::join(&neighbour, at, join_request("other", &other_token, "victim", None)).await?;
    assert!(joined.snapshot.members.iter().all(|m| m.fingerprint != fp), "a member of another cluster sees the victim");
    let conn = neighbour.connect(addr, fp, ALPN_PEER, transport::peer())?.await?;
    let reason = application_close(&conn).await?;
    assert!(reason.contains("is not a member of the cluster"), "{reason}");

    // And a dialler pinning the wrong key for the victim never gets through.
    let wrong = Identity::generate()?.fingerprint();
    let err = impostor.connect(addr, wrong, ALPN_PEER, transport::peer())?.await.unwrap_err();
    assert!(err.to_string().contains("does not match the pinned"), "{err}");
    Ok(())
}

/// A member that sends garbage on its relay stream is disconnected with the
/// reason; one that relays to a node outside its cluster reaches nobody; the
/// other members keep their relay.
#[tokio::test]
async fn hostile_relay_frames_are_refused() -> anyhow::Result<()> {
    use boxer_net::rendezvous::{self, RendezvousAddr};
    use boxer_proto::relay;

    let dir = Scratch::new("hostile-relay");
    let rdv = start_rendezvous(dir.path())?;
    let token = rdv.create_cluster(CLUSTER)?;
    let other_token = rdv.create_cluster("other")?;
    let at = RendezvousAddr { addr: rdv.addr, fingerprint: rdv.fingerprint.parse()? };
    let join = |cluster: &str, token: &str, service: &str| join_request(cluster, token, service, None);
    // Opens the relay stream of a joined member (hello both ways).
    async fn relay_stream(conn: &quinn::Connection) -> (quinn::SendStream, quinn::RecvStream) {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        frame::write(&mut send, &Hello::current()).await.unwrap();
        let hello: Hello = frame::read(&mut recv).await.unwrap();
        hello.check().unwrap();
        (send, recv)
    }

    // Two honest members of "demo", one of "other".
    let (ea, eb, ex) = (client(), client(), client());
    let (a, sa) = rendezvous::join(&ea, at, join(CLUSTER, &token, "a")).await?;
    let (b, sb) = rendezvous::join(&eb, at, join(CLUSTER, &token, "b")).await?;
    let (_x, sx) = rendezvous::join(&ex, at, join("other", &other_token, "x")).await?;
    let (mut a_send, _a_recv) = relay_stream(sa.connection()).await;
    let (_b_send, mut b_recv) = relay_stream(sb.connection()).await;
    let (mut x_send, _x_recv) = relay_stream(sx.connection()).await;

    // x names b's node id, but in its own cluster that id is nobody: dropped.
    let mut frame_bytes = Vec::new();
    relay::encode(b.node_id, b"from another cluster", &mut frame_bytes)?;
    x_send.write_all(&frame_bytes).await?;
    // a -> b is delivered, tagged with a's id.
    frame_bytes.clear();
    relay::encode(b.node_id, b"hello b", &mut frame_bytes)?;
    a_send.write_all(&frame_bytes).await?;
    let got = tokio::time::timeout(SETTLE, relay::io::read(&mut b_recv)).await??;
    assert_eq!(got, Some((a.node_id, b"hello b".to_vec())), "only a's packet reaches b");

    // Garbage on the relay stream: a zero-length frame.
    x_send.write_all(&[0, 0, 0, 0, 0, 1]).await?;
    let reason = application_close(sx.connection()).await?;
    assert!(reason.contains("bad relay frame"), "{reason}");

    // a and b still relay.
    frame_bytes.clear();
    relay::encode(b.node_id, b"still here", &mut frame_bytes)?;
    a_send.write_all(&frame_bytes).await?;
    let got = tokio::time::timeout(SETTLE, relay::io::read(&mut b_recv)).await??;
    assert_eq!(got, Some((a.node_id, b"still here".to_vec())));
    Ok(())
}

/// A client that claims another member's place ("rejoin as node 1") with
/// its own certificate is refused and logged, however it words the claim;
/// the member itself keeps its place and can rejoin.
#[tokio::test]
async fn replaying_another_members_identity_is_refused() -> anyhow::Result<()> {
    use boxer_net::rendezvous::{self, RendezvousAddr, RendezvousError};

    let dir = Scratch::new("hostile-replay");
    let rdv = start_rendezvous(dir.path())?;
    let token = rdv.create_cluster(CLUSTER)?;
    let other_token = rdv.create_cluster("other")?;
    let at = RendezvousAddr { addr: rdv.addr, fingerprint: rdv.fingerprint.parse()? };
    let join = |token: &str, rejoin| join_request(CLUSTER, token, "web", rejoin);
    let honest = client();
    let (a, session) = rendezvous::join(&honest, at, join(&token, None)).await?;

    let refusal = |r: Result<_, RendezvousError>| match r {
        Err(RendezvousError::Refused { reason, .. }) => reason,
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("an impostor was admitted"),
    };
    // Same name, same probe key, the member's id: another certificate.
    let impostor = client();
    let reason = refusal(rendezvous::join(&impostor, at, join(&token, Some(a.node_id))).await);
    assert!(reason.contains("only as itself"), "{reason}");
    // Another cluster's token does not help.
    let reason = refusal(rendezvous::join(&impostor, at, join(&other_token, Some(a.node_id))).await);
    assert!(reason.contains("wrong join token"), "{reason}");
    // A member that never was.
    let reason = refusal(rendezvous::join(&impostor, at, join(&token, Some(boxer_proto::NodeId(42)))).await);
    assert!(reason.contains("no member node-42") || reason.contains("no member 42"), "{reason}");

    // The member itself takes its place back on a new connection (same
    // certificate), and its old connection is told it was superseded.
    let (back, _new) = rendezvous::join(&honest, at, join(&token, Some(a.node_id))).await?;
    assert_eq!((back.node_id, back.overlay_ip), (a.node_id, a.overlay_ip));
    let reason = application_close(session.connection()).await?;
    assert!(reason.contains("superseded"), "{reason}");
    let log = rdv.proc.stderr_text();
    assert!(log.contains("WARN") && log.contains("only as itself"), "the attempt is logged:\n{log}");
    Ok(())
}

/// Limits under abuse, each on its own rendezvous with small limits: one
/// source address opening connections too fast is refused before the
/// handshake (another address is not), a member shipping output too fast
/// has lines dropped and the count written into its log, and a member
/// relaying too fast gets no more through than its rate allows.
#[tokio::test]
async fn per_source_and_per_member_limits_hold() -> anyhow::Result<()> {
    use boxer_net::rendezvous::{self, RendezvousAddr};
    use boxer_proto::control::{LogLine, NodeMessage, Stream};
    use boxer_proto::relay;

    let dir = Scratch::new("hostile-limits");
    let rdv = start_rendezvous_with(
        dir.path(),
        &[
            "--connection-burst-per-source",
            "12",
            "--connections-per-source-per-sec",
            "0.2",
            "--log-kib-per-node",
            "64",
            "--relay-mbit-per-node",
            "8",
        ],
    )?;
    // The boxer CLI's connection is the first of the burst.
    let token = rdv.create_cluster(CLUSTER)?;
    let at = RendezvousAddr { addr: rdv.addr, fingerprint: rdv.fingerprint.parse()? };
    let join = |service: &str| join_request(CLUSTER, &token, service, None);

    // Two members, whose connections stay open.
    let (ea, eb) = (client(), client());
    let (_a, sa) = rendezvous::join(&ea, at, join("a")).await?;
    let (b, sb) = rendezvous::join(&eb, at, join("b")).await?;

    // The rest of the burst passes, then this address is refused.
    let mut admitted = 0;
    let mut refused = None;
    for _ in 0..12 {
        let e = client();
        match e.connect(rdv.addr, at.fingerprint, ALPN_RENDEZVOUS, transport::rendezvous())?.await {
            Ok(conn) => {
                admitted += 1;
                conn.close(0u32.into(), b"");
            }
            Err(e) => {
                refused = Some(e.to_string());
                break;
            }
        }
    }
    assert!((1..=9).contains(&admitted), "{admitted} more connections admitted: the burst is 12 in all");
    let refused = refused.expect("a connection over the burst was refused");
    assert!(refused.to_lowercase().contains("refused"), "{refused}");
    // Another source address is not affected.
    let other = NodeEndpoint::bind("127.0.0.2:0".parse()?, Identity::generate()?)?;
    let conn = other.connect(rdv.addr, at.fingerprint, ALPN_RENDEZVOUS, transport::rendezvous())?.await?;
    conn.close(0u32.into(), b"");

    // Output: 64 KiB/s with 1 MiB at once; a 4 MiB flood loses lines.
    let a_conn = sa.connection().clone();
    let (mut a_send, _a_recv) = sa.split();
    let line = "x".repeat(1023);
    for _ in 0..64 {
        let lines = vec![LogLine { stream: Stream::Stdout, text: line.clone() }; 64];
        a_send.send(&NodeMessage::Logs(lines)).await?;
    }
    // Later, a line within the rate carries the count of those dropped.
    tokio::time::sleep(Duration::from_millis(500)).await;
    a_send.send(&NodeMessage::Logs(vec![LogLine { stream: Stream::Stdout, text: "after".into() }])).await?;
    let log = dir.path().join("rendezvous-state/logs").join(CLUSTER).join("a-0.log");
    // Polled without blocking: the QUIC connections run on this thread.
    let deadline = tokio::time::Instant::now() + SETTLE;
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("after") {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no line after the flood in a-0's log ({} bytes); rendezvous log:\n{}",
            text.len(),
            rdv.proc.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(text.len() < (1 << 20) + (256 << 10), "{} bytes stored", text.len());
    let note = text.lines().find(|l| l.contains("lines dropped")).expect("a note on the dropped lines");
    assert!(note.starts_with("[boxer] ") && note.contains("over 65536 bytes/s"), "{note}");

    // Relay: 1 MB/s (62.5 KB at once); 4 MB sent at once, a's share passes.
    async fn relay_stream(conn: &quinn::Connection) -> (quinn::SendStream, quinn::RecvStream) {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        frame::write(&mut send, &Hello::current()).await.unwrap();
        let hello: Hello = frame::read(&mut recv).await.unwrap();
        hello.check().unwrap();
        (send, recv)
    }
    let (mut relay_a, _) = relay_stream(&a_conn).await;
    let (_relay_b_send, mut relay_b) = relay_stream(sb.connection()).await;
    let packet = vec![7u8; 1200];
    let started = std::time::Instant::now();
    let mut frames = Vec::new();
    for _ in 0..(4_000_000 / packet.len()) {
        relay::encode(b.node_id, &packet, &mut frames)?;
    }
    relay_a.write_all(&frames).await?;
    let mut received = 0usize;
    let window = Duration::from_secs(3);
    let _ = tokio::time::timeout(window, async {
        while let Ok(Some((_, p))) = relay::io::read(&mut relay_b).await {
            received += p.len();
        }
    })
    .await;
    let allowed = 62_500.0 + 1_000_000.0 * started.elapsed().as_secs_f64() + 1200.0;
    assert!(received > 0, "nothing relayed");
    assert!((received as f64) <= allowed, "{received} bytes relayed, {allowed:.0} allowed");
    println!("relayed {received} of 4000000 bytes in {:.1?} at 8 Mbit/s", started.elapsed());
    Ok(())
}
