//! End-to-end tests of the foundation: a real rendezvous and real runtimes on
//! loopback, real QUIC between them.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use boxer_e2e::*;
use sha2::{Digest, Sha256};

const CLUSTER: &str = "demo";
/// Generous bound for anything that should happen in well under a second.
const SETTLE: Duration = Duration::from_secs(20);

/// Members of a status file as (node_id, name, overlay_ip) sorted by id.
fn members(status: &serde_json::Value) -> Vec<(u64, String, String)> {
    status["members"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    (
                        m["node_id"].as_u64().unwrap_or(0),
                        m["name"].as_str().unwrap_or("").to_owned(),
                        m["overlay_ip"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn wait_members(path: &Path, expected: &[(u64, &str, &str)]) -> anyhow::Result<serde_json::Value> {
    let expected: Vec<(u64, String, String)> =
        expected.iter().map(|(i, n, a)| (*i, n.to_string(), a.to_string())).collect();
    wait_until(SETTLE, &format!("membership {expected:?} in {}", path.display()), || {
        let status = read_status(path)?;
        let got = members(&status);
        if got == expected { Ok(status) } else { Err(format!("have {got:?}")) }
    })
}

/// Echo server on a free loopback port; echoes every connection until EOF.
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut writer = conn.try_clone().unwrap();
                let _ = std::io::copy(&mut conn, &mut writer);
                let _ = writer.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

/// Sends `total` bytes through `addr` and reads the echo concurrently;
/// returns (sha256 sent, sha256 received, bytes received).
fn echo_transfer(addr: SocketAddr, total: usize, conn_id: u64) -> ([u8; 32], [u8; 32], usize) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let mut reader = stream.try_clone().unwrap();
    let receiver = std::thread::spawn(move || {
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 256 << 10];
        let mut got = 0;
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    hash.update(&buf[..n]);
                    got += n;
                }
            }
        }
        (<[u8; 32]>::from(hash.finalize()), got)
    });
    // A pseudo-random block, stamped per chunk so that reordered or mixed-up
    // chunks change the hash.
    let mut block = vec![0u8; 1 << 20];
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ conn_id;
    for b in block.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut hash = Sha256::new();
    let mut sent = 0;
    let mut chunk = 0u64;
    while sent < total {
        let n = (total - sent).min(block.len());
        block[..8].copy_from_slice(&(conn_id << 32 | chunk).to_le_bytes());
        stream.write_all(&block[..n]).unwrap();
        hash.update(&block[..n]);
        sent += n;
        chunk += 1;
    }
    stream.shutdown(Shutdown::Write).unwrap();
    let (received, got) = receiver.join().unwrap();
    (hash.finalize().into(), received, got)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn three_nodes_converge_and_forward_200mb_both_ways() -> anyhow::Result<()> {
    let dir = Scratch::new("converge");
    let rdv = start_rendezvous(dir.path())?;
    let token = rdv.create_cluster(CLUSTER)?;
    let echo = echo_server();
    let forward_port = free_port();
    let status: Vec<_> = (1..=3).map(|i| dir.path().join(format!("node{i}.json"))).collect();

    // Started one after the other so node ids follow start order.
    let mut cmd = rdv.runtime_command(CLUSTER, &token, "client", 0);
    cmd.arg("--forward").arg(format!("127.0.0.1:{forward_port}=node-2:{}", echo.port()));
    cmd.arg("--status-file").arg(&status[0]);
    let _n1 = spawn(cmd, dir.path(), "node1")?;
    wait_members(&status[0], &[(1, "client-0", "100.96.0.1")])?;
    let mut cmd = rdv.runtime_command(CLUSTER, &token, "server", 0);
    cmd.arg("--expose").arg(echo.port().to_string()).arg("--status-file").arg(&status[1]);
    let _n2 = spawn(cmd, dir.path(), "node2")?;
    wait_members(&status[1], &[(1, "client-0", "100.96.0.1"), (2, "server-0", "100.96.0.2")])?;
    let mut cmd = rdv.runtime_command(CLUSTER, &token, "server", 1);
    cmd.arg("--status-file").arg(&status[2]);
    let _n3 = spawn(cmd, dir.path(), "node3")?;

    let expected = [(1, "client-0", "100.96.0.1"), (2, "server-0", "100.96.0.2"), (3, "server-1", "100.96.0.3")];
    for (i, path) in status.iter().enumerate() {
        let s = wait_members(path, &expected)?;
        assert_eq!(s["node_id"], (i + 1) as u64);
        assert_eq!(s["overlay_ip"], format!("100.96.0.{}", i + 1));
        let names: Vec<&str> = s["names"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(names[1], format!("node-{}", i + 1));
        assert_eq!(names[2], format!("{}.{CLUSTER}.boxer", names[0]));
        // Every node sees node 2's exposed port and every node's reflexive address.
        let m = s["members"].as_array().unwrap();
        assert_eq!(m[1]["listening"], serde_json::json!([echo.port()]));
        for member in m {
            let reflexive: SocketAddr = member["reflexive"].as_str().unwrap().parse()?;
            assert!(reflexive.ip().is_loopback() && reflexive.port() != 0, "{member}");
        }
    }

    // 8 concurrent connections, 25 MiB each way each: 200 MiB in both directions.
    const PER_CONN: usize = 25 << 20;
    let target: SocketAddr = format!("127.0.0.1:{forward_port}").parse()?;
    let transfers: Vec<_> = (0..8u64).map(|i| std::thread::spawn(move || echo_transfer(target, PER_CONN, i))).collect();
    for (i, t) in transfers.into_iter().enumerate() {
        let (sent, received, got) = t.join().expect("transfer thread");
        assert_eq!(got, PER_CONN, "connection {i} received {got} of {PER_CONN} bytes");
        assert_eq!(sent, received, "connection {i}: checksum of the echo differs from what was sent");
    }
    Ok(())
}

#[test]
fn forward_to_closed_port_or_unknown_node_is_reset() -> anyhow::Result<()> {
    let dir = Scratch::new("refused");
    let rdv = start_rendezvous(dir.path())?;
    let token = rdv.create_cluster(CLUSTER)?;
    let (closed, unknown) = (free_port(), free_port());
    let status = dir.path().join("a.json");
    let mut cmd = rdv.runtime_command(CLUSTER, &token, "a", 0);
    cmd.arg("--forward").arg(format!("{closed}=b-0:9")).arg("--forward").arg(format!("{unknown}=nobody-0:9"));
    cmd.arg("--status-file").arg(&status);
    let _a = spawn(cmd, dir.path(), "a")?;
    wait_members(&status, &[(1, "a-0", "100.96.0.1")])?;
    let _b = spawn(rdv.runtime_command(CLUSTER, &token, "b", 0), dir.path(), "b")?;
    wait_members(&status, &[(1, "a-0", "100.96.0.1"), (2, "b-0", "100.96.0.2")])?;
    for port in [closed, unknown] {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(SETTLE))?;
        let mut buf = [0u8; 16];
        // The peer refuses the stream (port 9 not exposed) or the name is
        // unknown: either way the local connection ends without data.
        let r = s.read(&mut buf);
        assert!(matches!(r, Ok(0) | Err(_)), "port {port}: expected the connection to end, got {r:?}");
        if let Err(e) = r {
            assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "port {port}: no answer at all");
        }
    }
    Ok(())
}

#[test]
fn killed_node_leaves_everyone_s_membership() -> anyhow::Result<()> {
    let dir = Scratch::new("kill");
    let rdv = start_rendezvous(dir.path())?;
    let token = rdv.create_cluster(CLUSTER)?;
    let echo = echo_server();
    let forward_port = free_port();
    let status: Vec<_> = (1..=3).map(|i| dir.path().join(format!("n{i}.json"))).collect();
    let mut procs = Vec::new();
    for (i, path) in status.iter().enumerate() {
        let mut cmd = rdv.runtime_command(CLUSTER, &token, "w", i as u32);
        cmd.arg("--status-file").arg(path);
        match i {
            // w-0 talks to w-1, so it has a direct path to it.
            0 => cmd.arg("--forward").arg(format!("127.0.0.1:{forward_port}=w-1:{}", echo.port())),
            1 => cmd.arg("--expose").arg(echo.port().to_string()),
            _ => &mut cmd,
        };
        procs.push(spawn(cmd, dir.path(), &format!("n{i}"))?);
        wait_until(SETTLE, "node to join", || read_status(path).map(|_| ()))?;
    }
    let all = [(1, "w-0", "100.96.0.1"), (2, "w-1", "100.96.0.2"), (3, "w-2", "100.96.0.3")];
    for path in &status {
        wait_members(path, &all)?;
    }
    let mut conn = wait_until(SETTLE, "the forward to w-1 to answer", || {
        let mut c = TcpStream::connect(("127.0.0.1", forward_port)).map_err(|e| e.to_string())?;
        c.set_read_timeout(Some(SETTLE)).map_err(|e| e.to_string())?;
        c.write_all(b"ping").map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).map_err(|e| e.to_string())?;
        if &buf == b"ping" { Ok(c) } else { Err(format!("{buf:?}")) }
    })?;
    wait_until(SETTLE, "a direct path from w-0 to w-1", || {
        let s = read_status(&status[0])?;
        let direct = s["paths"].as_array().is_some_and(|paths| {
            paths.iter().any(|p| p["peer"] == 2 && p["path"].as_str().is_some_and(|k| k.starts_with("direct")))
        });
        if direct { Ok(()) } else { Err(format!("paths {}", s["paths"])) }
    })?;
    procs[1].kill();
    // The rendezvous notices after its idle timeout (5 s) and asks the
    // others to check; w-0, which has a direct path, finds w-1 silent
    // within 3 s and says so; then everyone sees it leave. A node nobody
    // had a direct path to would stay for the 60 s grace (docs/limits.md).
    let rest = [(1, "w-0", "100.96.0.1"), (3, "w-2", "100.96.0.3")];
    for path in [&status[0], &status[2]] {
        wait_members(path, &rest)?;
    }
    // And w-0's forwarded connection to it ends.
    let mut buf = [0u8; 1];
    assert!(matches!(conn.read(&mut buf), Ok(0) | Err(_)), "the connection to the killed node is still open");
    Ok(())
}

#[test]
fn bad_join_token_and_unknown_cluster_are_refused_clearly() -> anyhow::Result<()> {
    let dir = Scratch::new("badjoin");
    let rdv = start_rendezvous(dir.path())?;
    let token = rdv.create_cluster(CLUSTER)?;
    let status = dir.path().join("ok.json");
    let mut cmd = rdv.runtime_command(CLUSTER, &token, "ok", 0);
    cmd.arg("--status-file").arg(&status);
    let _ok = spawn(cmd, dir.path(), "ok")?;
    wait_members(&status, &[(1, "ok-0", "100.96.0.1")])?;

    let cases = [
        (rdv.runtime_command(CLUSTER, "wrong-token", "x", 0), "wrong join token for cluster \"demo\""),
        (rdv.runtime_command("nope", &token, "x", 0), "no cluster named \"nope\""),
        (rdv.runtime_command(CLUSTER, &token, "ok", 0), "ok-0 is already a member"),
        (rdv.runtime_command(CLUSTER, &token, "Bad_Name", 0), "invalid service name"),
    ];
    for (i, (cmd, expected)) in cases.into_iter().enumerate() {
        let mut p = spawn(cmd, dir.path(), &format!("bad{i}"))?;
        let code = p.wait_exit(SETTLE)?;
        let err = p.stderr_text();
        assert_ne!(code, Some(0), "case {i} should fail");
        assert!(err.contains(expected), "case {i}: expected {expected:?} in stderr:\n{err}");
        assert!(err.contains("rendezvous refused"), "case {i}: stderr:\n{err}");
    }
    // The good node is still a member and a new node still joins.
    let status2 = dir.path().join("ok2.json");
    let mut cmd = rdv.runtime_command(CLUSTER, &token, "ok", 1);
    cmd.arg("--status-file").arg(&status2);
    let _ok2 = spawn(cmd, dir.path(), "ok2")?;
    // Refused joins consume no node id or address.
    wait_members(&status, &[(1, "ok-0", "100.96.0.1"), (2, "ok-1", "100.96.0.2")])?;
    Ok(())
}
