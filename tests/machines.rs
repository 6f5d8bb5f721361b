//! Local nodes look like separate machines: three PostgreSQL replicas with
//! the same default paths under `/tmp` run side by side, each node sees its
//! own processes and hostname, a `private` directory is per node, and
//! nothing of a node's namespaces or private files outlives it.
//!
//! One cluster for the file: the lab's set-up and three `initdb`s are the
//! expensive part.

use std::collections::BTreeSet;
use std::path::Path;

use boxer_e2e::up::{BoxerRun as Run, output_of, text};

/// A directory that exists on every Debian host (FHS) and that the nodes
/// replace with their own empty copy (`private`).
const PRIVATE_DIR: &str = "/srv";

/// The namespaces (as `mnt:[inode]` etc.) any process on the host is in.
fn host_namespaces() -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if entry.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        for kind in ["mnt", "pid", "uts"] {
            if let Ok(link) = std::fs::read_link(entry.path().join("ns").join(kind)) {
                seen.insert(link.display().to_string());
            }
        }
    }
    seen
}

#[test]
fn replicas_with_the_same_tmp_paths_run_side_by_side_as_separate_machines() {
    assert!(
        Path::new("/usr/lib/postgresql").is_dir(),
        "PostgreSQL is not installed (`.ci/run` installs Debian's postgresql)"
    );
    assert!(Path::new(PRIVATE_DIR).is_dir(), "{PRIVATE_DIR} is missing on this host");
    let marker = format!("boxer-marker-{}", std::process::id());
    let run = Run::new("machines");
    // Every replica: the same data directory and socket directory under
    // /tmp, a marker file there and in the private directory, and its view
    // of itself (hostname, namespaces) on its output.
    let spec = run.spec(&format!(
        r#"[cluster]
name = "machines"

[services.db]
replicas = 3
private = ["{PRIVATE_DIR}"]
command = ["sh", "-c", """
set -e
PATH=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1):$PATH
echo "ns $(readlink /proc/self/ns/mnt) $(readlink /proc/self/ns/pid) $(readlink /proc/self/ns/uts)"
touch /tmp/{marker} {PRIVATE_DIR}/{marker}-$(hostname)
echo "private $(ls {PRIVATE_DIR} | tr '\n' ' ')"
mkdir /tmp/data && chown postgres: /tmp/data
runuser -u postgres -- initdb -D /tmp/data -U postgres -A trust >/dev/null
echo "host all all 100.64.0.0/10 trust" >> /tmp/data/pg_hba.conf
exec runuser -u postgres -- postgres -D /tmp/data -k /tmp -c listen_addresses='*' -c fsync=off
"""]

[services.check]
main = true
wait_for = ["db-0:5432", "db-1:5432", "db-2:5432"]
command = ["sh", "-c", """
set -e
for i in 0 1 2; do
  echo "db-$i says $(psql -h db-$i -U postgres -Atc "select inet_server_addr() || ' ' || current_setting('data_directory') || ' ' || current_setting('unix_socket_directories')" postgres)"
done
echo "hostname $(hostname) static $(busybox hostname) kernel $(cat /proc/sys/kernel/hostname)"
echo "processes $(ps -e -o comm= | sort | tr '\n' ' ')"
echo "pid1 $(cat /proc/1/comm)"
echo "token ${{BOXER_JOIN_TOKEN:-not inherited}} $(tr '\\0' ' ' < /proc/1/cmdline | grep -c -e ' --token [0-9a-f]' || true)"
echo "tmp $(ls -A /tmp | tr '\n' ' ')"
"""]
"#
    ));
    let out = run.up(&spec);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let check = output_of(&stdout, "check-0");
    let line = |prefix: &str| -> String {
        check
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line:\n{stdout}"))
            .trim()
            .to_owned()
    };

    // Three servers, each on its own overlay address, all with the same
    // default paths under /tmp.
    let mut addresses = BTreeSet::new();
    for i in 0..3 {
        let said = line(&format!("db-{i} says "));
        let fields: Vec<&str> = said.split_whitespace().collect();
        assert_eq!(fields.get(1..), Some(&["/tmp/data", "/tmp"][..]), "{said}");
        assert!(fields[0].starts_with("100.96."), "{said}");
        addresses.insert(fields[0].to_owned());
    }
    assert_eq!(addresses.len(), 3, "{stdout}");

    // Its own hostname, for a static program and the kernel too.
    assert_eq!(line("hostname "), "check-0 static check-0 kernel check-0", "{stdout}");
    // Its own process table: the runtime as PID 1, no postgres of the other
    // nodes, nothing of the host.
    assert_eq!(line("pid1 "), "boxer-runtime", "{stdout}");
    // The join token is neither inherited nor on the runtime's command line.
    assert_eq!(line("token "), "not inherited 0", "{stdout}");
    let processes = line("processes ");
    assert!(!processes.contains("postgres") && !processes.contains("cargo"), "{processes}");
    assert!(processes.split_whitespace().count() < 8, "{processes}");
    // Its own /tmp: none of the replicas' files (no data directory, socket
    // or marker). Besides its run directory it shows only what it keeps of
    // the host's /tmp: the directories holding the spec and, when this
    // repository is a clone under /tmp, the shim.
    let tmp = line("tmp ");
    for entry in tmp.split_whitespace() {
        assert!(!entry.contains("data") && !entry.contains("PGSQL") && !entry.contains(&marker), "{tmp}");
        assert!(entry.starts_with("boxer-check-0-") || Path::new("/tmp").join(entry).exists(), "{entry} in {tmp}");
    }

    // Each replica saw only its own file in the private directory; the host
    // saw none of them.
    let mut namespaces = BTreeSet::new();
    for i in 0..3 {
        let db = output_of(&stdout, &format!("db-{i}"));
        let private = db.iter().find_map(|l| l.strip_prefix("private ")).unwrap_or_else(|| panic!("{stdout}"));
        assert_eq!(private.trim(), format!("{marker}-db-{i}"), "{stdout}");
        let ns = db.iter().find_map(|l| l.strip_prefix("ns ")).unwrap_or_else(|| panic!("{stdout}"));
        namespaces.extend(ns.split_whitespace().map(str::to_owned));
    }
    assert_eq!(namespaces.len(), 9, "each replica has its own mount, PID and UTS namespace: {namespaces:?}");
    assert!(!Path::new("/tmp").join(&marker).exists(), "a node's /tmp file reached the host's /tmp");
    let leaked: Vec<_> = std::fs::read_dir(PRIVATE_DIR)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&marker))
        .collect();
    assert!(leaked.is_empty(), "a node's private file reached the host: {leaked:?}");

    // Nothing of the nodes outlives them: no process is left in any of
    // their namespaces (so their tmpfs mounts are gone too).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let alive: Vec<String> = host_namespaces().intersection(&namespaces).cloned().collect();
        if alive.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "namespaces of ended nodes still in use: {alive:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Pid of the process whose command line holds all of `parts` and whose
/// parent's does not (the waiter of a node, not the runtime it forked).
fn waiter_of(parts: &[&str]) -> Option<i32> {
    let cmdline = |pid: i32| -> Option<String> {
        std::fs::read(format!("/proc/{pid}/cmdline")).ok().map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
    };
    let matches =
        |pid: i32| cmdline(pid).is_some_and(|c| c.contains("boxer-runtime") && parts.iter().all(|p| c.contains(p)));
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let ppid: i32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
        (matches(pid) && !matches(ppid)).then_some(pid)
    })
}

/// The runtime is PID 1 of its node, which gets no signal it has no
/// handler for: the stop signals sent to the node's pid (the waiter) reach
/// it and stop the node gracefully; another signal ends the node.
#[test]
fn stop_signals_reach_a_node_whose_runtime_is_pid_1() {
    let run = Run::new("machines-signals");
    let spec = run.spec("[cluster]\nname = \"signals\"\n[services.a]\nreplicas = 2\ncommand = [\"sleep\", \"600\"]\n");
    let mut up = run.spawn(&["up", spec.to_str().unwrap()]);
    let stop = boxer_e2e::up::StopOnDrop(up.id());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let waiters = loop {
        let found = (waiter_of(&["--cluster signals", "--index 0"]), waiter_of(&["--cluster signals", "--index 1"]));
        if let (Some(a), Some(b)) = found
            && run.output().contains("2/2 nodes joined")
        {
            break [a, b];
        }
        assert!(std::time::Instant::now() < deadline, "the nodes did not start:\n{}", run.output());
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    // SAFETY: kill(2) on processes of this test's cluster.
    unsafe {
        libc::kill(waiters[0], libc::SIGHUP);
        libc::kill(waiters[1], libc::SIGUSR1);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let out = run.output();
        if out.contains("a-0 | exited with code") && out.contains("a-1 | runtime exited with code") {
            // SIGHUP: the runtime stopped its program (SIGTERM, 143) and left.
            assert!(out.contains("a-0 | exited with code 143"), "{out}");
            // SIGUSR1: the waiter died of it (128 + 10), the node with it.
            assert!(out.contains("a-1 | runtime exited with code 138"), "{out}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the nodes did not stop:\n{out}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(run.state.path().join("signals/nodes/a-0/runtime.log")).unwrap();
    assert!(log.contains("hung up") && log.contains("stopping the program: SIGTERM"), "{log}");
    drop(stop);
    up.wait().unwrap();
}
