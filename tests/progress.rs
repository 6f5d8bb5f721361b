//! End-to-end tests of what `boxer up` says while a cluster runs: waits for
//! `wait_for` targets (progress lines, `boxer status`, `wait_timeout`, the
//! stop summary), exit lines after a node's last output, and the explicit
//! `expose`/`forward` mode for programs the shim cannot serve. Every cluster
//! runs in the NAT lab (`--net lab`, the default): namespaces with no way
//! out of the machine.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use boxer_e2e::up::{BoxerRun as Run, StopOnDrop};

/// Index of the first line of `text` that starts with `prefix`.
fn line_starting(text: &str, prefix: &str) -> Option<usize> {
    text.lines().position(|l| l.starts_with(prefix))
}

#[test]
fn a_node_s_exit_line_comes_after_its_last_output_line() {
    // Five nodes print 200 lines as fast as they can and exit: their last
    // lines and their exit reports reach `boxer up` close together. (Before
    // exits were ordered after lines, most runs showed some node's exit
    // line before its last lines.)
    let run = Run::new("progress-order");
    let script = "i=0; while [ $i -lt 200 ]; do echo \"line $i\"; i=$((i+1)); done";
    let (code, out) =
        run.run(&["run", "-n", "5", "--name", "burst", "--", "sh", "-c", script], Duration::from_secs(60));
    assert_eq!(code, Some(0), "{out}");
    for i in 0..5 {
        let node = format!("burst-{i}");
        let lines = out.lines().filter(|l| l.starts_with(&format!("{node} | line "))).count();
        assert_eq!(lines, 200, "{node} printed 200 lines:\n{out}");
        let last = line_starting(&out, &format!("{node} | line 199")).expect("last line");
        let exit = line_starting(&out, &format!("{node} | exited with code 0")).expect("exit line");
        assert!(last < exit, "{node}'s exit line (line {exit}) came before its last output (line {last}):\n{out}");
    }
}

#[test]
fn a_wait_that_is_never_met_is_shown_then_given_up_after_wait_timeout() {
    let run = Run::new("progress-timeout");
    let spec = run.spec(
        "[cluster]\nname = \"gaveup\"\n\
         [services.db]\ncommand = [\"sleep\", \"600\"]\n\
         [services.web]\ncommand = [\"echo\", \"web started\"]\nwait_for = [\"db-0:5432\"]\nwait_timeout = 5\nmain = true\n",
    );
    let started = Instant::now();
    let (code, out) = run.run(&["up", spec.to_str().unwrap()], Duration::from_secs(60));
    assert_eq!(code, Some(124), "the main node's code: 124, like timeout(1)\n{out}");
    assert!(started.elapsed() >= Duration::from_secs(5), "gave up before wait_timeout");
    let waiting = line_starting(&out, "web-0 | waiting for db-0:5432 (").expect("a waiting line");
    let seconds: u64 = out.lines().nth(waiting).unwrap()["web-0 | waiting for db-0:5432 (".len()..]
        .trim_end_matches(" s)")
        .parse()
        .unwrap();
    assert!((3..5).contains(&seconds), "first shown after 3 s: {seconds}\n{out}");
    let gave_up = line_starting(
        &out,
        "web-0 | gave up waiting for db-0:5432 after 5 s (wait_timeout); db-0 never listened on 5432",
    )
    .expect("the reason");
    let exit = line_starting(&out, "web-0 | exited with code 124").expect("the exit line");
    assert!(waiting < gave_up && gave_up < exit, "{out}");
    assert!(out.contains("cluster gaveup: node web-0 failed with exit code 124"), "{out}");
    assert!(!out.contains("web started"), "the program never ran:\n{out}");

    let status = run.boxer().args(["status", "gaveup"]).output().unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("exited 124") && status.contains("web-0: gave up waiting for db-0:5432"), "{status}");
}

#[test]
fn status_shows_a_waiting_node_and_the_stop_names_it() {
    let run = Run::new("progress-status");
    let spec = run.spec(
        "[cluster]\nname = \"held\"\n\
         [services.db]\ncommand = [\"sleep\", \"600\"]\n\
         [services.web]\ncommand = [\"echo\", \"web started\"]\nwait_for = [\"db-0:5432\"]\nmain = true\n",
    );
    let mut up = run.spawn(&["up", spec.to_str().unwrap()]);
    let _stop = StopOnDrop(up.id());
    let deadline = Instant::now() + Duration::from_secs(30);
    let table = loop {
        let status = run.boxer().args(["status", "held"]).output().unwrap();
        let text = String::from_utf8_lossy(&status.stdout).into_owned();
        if text.lines().any(|l| l.starts_with("web-0 ") && l.contains("waiting for db-0:5432")) {
            break text;
        }
        assert!(Instant::now() < deadline, "no waiting state in boxer status:\n{text}\noutput:\n{}", run.output());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(table.lines().any(|l| l.starts_with("db-0 ") && l.contains("running")), "{table}");
    let out = run.boxer().args(["down", "held"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    up.wait().unwrap();
    let out = run.output();
    assert!(out.contains("cluster held: web-0 never started its program: still waiting for db-0:5432 after "), "{out}");
    let status = run.boxer().args(["status", "held"]).output().unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("web-0: never started its program: still waiting for db-0:5432"), "{status}");
}

#[test]
fn boxer_down_says_where_it_looked() {
    let run = Run::new("progress-down");
    let out = run.boxer().args(["down", "nothing-here"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let dir = run.state.path().join("nothing-here");
    assert!(
        text.contains(&format!("cluster nothing-here is not running (looked in {};", dir.display()))
            && text.contains("BOXER_STATE_DIR"),
        "{text}"
    );
}

/// A statically linked program on this machine (busybox), if there is one.
fn busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file() && Command::new(p).args(["httpd", "--help"]).output().is_ok_and(|o| !o.stderr.is_empty()))
}

#[test]
fn static_programs_are_refused_with_advice_and_run_with_expose_and_forward() {
    let Some(busybox) = busybox() else {
        panic!("busybox (a statically linked program with httpd and wget) is needed: apt-get install busybox-static");
    };
    let busybox = busybox.display().to_string();
    let run = Run::new("progress-explicit");

    // Without explicit ports: refused, with advice naming the service.
    let spec =
        run.spec(&format!("[cluster]\nname = \"refused\"\n[services.tool]\ncommand = [\"{busybox}\", \"true\"]\n"));
    let (code, out) = run.run(&["up", spec.to_str().unwrap()], Duration::from_secs(60));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("is statically linked")
            && out.contains("add expose = [PORT] (ports it listens on, on 127.0.0.1) and forward = [\"LOCAL=NAME:PORT\"] (peers it connects to) to services.tool in boxer.toml"),
        "{out}"
    );

    // With them: a static server and a static client across two NATs.
    // Beside the spec: a node sees the host's /tmp only through its working
    // directory (the spec's), and the scratch directory may be under /tmp.
    let site = run.state.path().join("spec/site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("index.html"), "served by busybox httpd\n").unwrap();
    let client = format!(
        "for i in 1 2 3 4 5 6 7 8 9 10; do {busybox} wget -q -O- http://127.0.0.1:7000/ && exit 0; sleep 0.5; done; exit 1"
    );
    let spec = run.spec(&format!(
        "[cluster]\nname = \"explicit\"\n\
         [services.web]\ncommand = [\"{busybox}\", \"httpd\", \"-f\", \"-p\", \"127.0.0.1:8080\", \"-h\", \"{site}\"]\nexpose = [8080]\n\
         [services.client]\ncommand = [\"{busybox}\", \"sh\", \"-c\", \"{client}\"]\nforward = [\"7000=web-0:8080\"]\nwait_for = [\"web-0:8080\"]\nmain = true\n",
        site = site.display(),
    ));
    let (code, out) = run.run(&["up", spec.to_str().unwrap()], Duration::from_secs(60));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("client-0 | served by busybox httpd"), "{out}");
}
