//! End-to-end test of `boxer bench`: a short run of the whole suite in the
//! NAT lab, as a user starts it, checked for every column and section.

use std::time::Duration;

use boxer_e2e::up::BoxerRun as Run;
use boxer_e2e::*;

/// Whether Nebula is installed here (`.ci/run` installs it, so CI always
/// checks the Nebula column).
fn nebula_installed() -> bool {
    std::process::Command::new("nebula").arg("-version").output().is_ok_and(|o| o.status.success())
}

#[test]
fn a_quick_bench_measures_every_path_and_writes_table_json_and_plot() {
    let run = Run::new("bench");
    let out = run.state.path().join("results");
    let out_arg = out.display().to_string();
    // Sized to what the assertions need: 1 s per iperf3 run, 4 mesh nodes,
    // a few hundred joiners.
    let (code, output) = run.run(
        &["bench", "--quick", "--seconds", "1", "--nodes", "4", "--joiners", "300", "--out", &out_arg],
        Duration::from_secs(600),
    );
    assert_eq!(code, Some(0), "{output}");
    // The table: every column, the ratios, the targets, the file paths.
    for heading in ["Boxer", "Boxer relayed", "direct", "Nebula", "Boxer/direct", "Boxer/Nebula", "targets:"] {
        assert!(output.contains(heading), "no {heading:?} in:\n{output}");
    }
    assert!(output.contains(&format!("plot:    {}", out.join("results.svg").display())), "{output}");
    let svg = read(&out.join("results.svg"));
    assert!(svg.starts_with("<svg") && svg.contains("Gbit/s") && svg.contains("nodes ready"), "{svg}");

    let results: serde_json::Value = serde_json::from_str(&read(&out.join("results.json"))).unwrap();
    let path = |name: &str| results["paths"][name]["result"].clone();
    let mut measured = vec!["boxer", "boxer-relayed", "direct"];
    if nebula_installed() {
        measured.push("nebula");
    } else {
        assert!(
            results["paths"]["nebula"]["missing"].as_str().is_some_and(|m| m.contains("not installed")),
            "{results}"
        );
    }
    for name in measured {
        let r = path(name);
        assert!(r.is_object(), "{name} has no result: {}", results["paths"][name]);
        assert_eq!(r["errors"], serde_json::json!([]), "{name}");
        let runs = r["iperf"].as_array().unwrap();
        let expected_runs = if name == "boxer-relayed" { 2 } else { 4 };
        assert_eq!(runs.len(), expected_runs, "{name}: {runs:?}");
        for run in runs {
            assert!(run["gbit_s"].as_f64().unwrap() > 0.01, "{name}: {run}");
        }
        assert!(r["rtt_us"]["p50"].as_f64().unwrap() > 0.0, "{name}");
        assert!(!r["first_contact_ms"].as_array().unwrap().is_empty(), "{name}");
        if name != "boxer-relayed" {
            let tests: Vec<&str> = r["redis"].as_array().unwrap().iter().filter_map(|t| t[0].as_str()).collect();
            assert!(tests.contains(&"SET") && tests.contains(&"GET"), "{name}: {tests:?}");
        }
    }
    // Boxer: first contact with the server and each fresh peer; the
    // runtimes' memory and CPU were read.
    let boxer = path("boxer");
    assert_eq!(boxer["first_contact_ms"].as_array().unwrap().len(), 3, "{boxer}");
    assert!(boxer["rss_idle_kib"].as_u64().unwrap() > 1000, "{boxer}");
    assert!(boxer["iperf"][0]["cpu_s_per_gb"].as_f64().unwrap() > 0.0, "{boxer}");
    // Elasticity: all 4 joined and every pair talked, the curves have every node.
    let e = &results["elastic"][0];
    assert_eq!(e["nodes"], 4);
    assert!(e["error"].is_null(), "{e}");
    assert!(e["all_joined_s"].as_f64().unwrap() > 0.0 && e["all_pairs_s"].as_f64().unwrap() > 0.0, "{e}");
    assert_eq!(e["ready"].as_array().unwrap().len(), 4, "{e}");
    assert_eq!(e["joined"].as_array().unwrap().last().unwrap()[1], 4, "{e}");
    // Admissions: every simulated joiner admitted.
    assert!(results["admissions"].is_object(), "{}", results["admissions_error"]);
}
