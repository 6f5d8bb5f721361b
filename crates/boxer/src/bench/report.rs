//! What `boxer bench` prints and draws: the table with ratios, the
//! performance targets met or missed, and an SVG plot (throughput per path,
//! nodes ready over time).

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use super::worker::{IperfRun, PathResult};
use super::{ElasticRun, Results};

/// Columns in table order: (key in [`Results::paths`], heading).
pub const COLUMNS: [(&str, &str); 4] =
    [("boxer", "Boxer"), ("boxer-relayed", "Boxer relayed"), ("direct", "direct"), ("nebula", "Nebula")];

/// Reads one number of a row from a path's results.
type Reader = Box<dyn Fn(&PathResult) -> Option<f64>>;

/// One row: a label, how to read it from a path, and its decimals.
struct Row {
    label: String,
    value: Reader,
    digits: usize,
}

fn iperf_of(r: &PathResult, streams: u32, reverse: bool) -> Option<&IperfRun> {
    r.iperf.iter().find(|i| i.streams == streams && i.reverse == reverse)
}

fn rows(results: &Results) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    for (streams, reverse) in [(1, false), (1, true), (4, false), (4, true)] {
        let dir = if reverse { ", reverse" } else { "" };
        rows.push(Row {
            label: format!("iperf3 {streams} stream{}{dir} (Gbit/s)", if streams > 1 { "s" } else { "" }),
            value: Box::new(move |r| iperf_of(r, streams, reverse).map(|i| i.gbit_s)),
            digits: 2,
        });
    }
    rows.push(Row { label: "RTT p50 (us)".into(), value: Box::new(|r| r.rtt_us.map(|p| p.p50)), digits: 0 });
    rows.push(Row { label: "RTT p99 (us)".into(), value: Box::new(|r| r.rtt_us.map(|p| p.p99)), digits: 0 });
    let mut tests: Vec<String> = Vec::new();
    for outcome in results.paths.values() {
        for (test, _) in outcome.result.iter().flat_map(|r| r.redis.iter()) {
            if !tests.contains(test) {
                tests.push(test.clone());
            }
        }
    }
    for test in tests {
        let key = test.clone();
        rows.push(Row {
            label: format!("redis {} (req/s)", test.to_lowercase()),
            value: Box::new(move |r| r.redis.iter().find(|(t, _)| *t == key).map(|(_, v)| *v)),
            digits: 0,
        });
    }
    rows.push(Row {
        label: "first contact p50 (ms)".into(),
        value: Box::new(|r| super::worker::Percentiles::of(r.first_contact_ms.clone()).map(|p| p.p50)),
        digits: 1,
    });
    rows.push(Row {
        label: "connect, known peer, p50 (us)".into(),
        value: Box::new(|r| r.known_connect_us.map(|p| p.p50)),
        digits: 0,
    });
    rows.push(Row {
        label: "connect, known peer, p99 (us)".into(),
        value: Box::new(|r| r.known_connect_us.map(|p| p.p99)),
        digits: 0,
    });
    rows.push(Row {
        label: "RSS idle per process (MiB)".into(),
        value: Box::new(|r| r.rss_idle_kib.map(|k| k as f64 / 1024.0)),
        digits: 1,
    });
    rows.push(Row {
        label: "RSS peak per process (MiB)".into(),
        value: Box::new(|r| r.rss_peak_kib.map(|k| k as f64 / 1024.0)),
        digits: 1,
    });
    rows.push(Row {
        label: "CPU s per GB, 1 stream".into(),
        value: Box::new(|r| iperf_of(r, 1, false).and_then(|i| i.cpu_s_per_gb)),
        digits: 2,
    });
    rows
}

/// The table, the elasticity and admission numbers, and the targets.
pub fn table(results: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\nboxer bench: {} ({:.0} s)", results.machine, results.total_s);
    let width = 34;
    let _ = write!(out, "\n{:<width$}", "");
    for (_, heading) in COLUMNS {
        let _ = write!(out, "{heading:>14}");
    }
    let _ = writeln!(out, "{:>14}{:>14}", "Boxer/direct", "Boxer/Nebula");
    let get = |key: &str| results.paths.get(key).and_then(|o| o.result.as_ref());
    for row in rows(results) {
        let _ = write!(out, "{:<width$}", row.label);
        let values: Vec<Option<f64>> = COLUMNS.iter().map(|(key, _)| get(key).and_then(|r| (row.value)(r))).collect();
        for v in &values {
            let _ = match v {
                Some(v) => write!(out, "{:>14.*}", row.digits, v),
                None => write!(out, "{:>14}", "-"),
            };
        }
        for other in [2, 3] {
            let _ = match (values[0], values[other]) {
                (Some(b), Some(o)) if o > 0.0 => write!(out, "{:>13.2}x", b / o),
                _ => write!(out, "{:>14}", "-"),
            };
        }
        let _ = writeln!(out);
    }
    for (key, heading) in COLUMNS {
        if let Some(o) = results.paths.get(key) {
            if let Some(why) = &o.missing {
                let _ = writeln!(out, "{heading}: not measured: {why}");
            }
            for e in o.result.iter().flat_map(|r| r.errors.iter()) {
                let _ = writeln!(out, "{heading}: failed: {e}");
            }
        }
    }
    if !results.elastic.is_empty() {
        let _ = writeln!(out, "\nelasticity (lab, moderate NATs): seconds from the start");
        let _ = writeln!(
            out,
            "{:>8}{:>14}{:>14}{:>18}{:>10}",
            "nodes", "lab set-up", "all joined", "all pairs talked", "retries"
        );
        for e in &results.elastic {
            let s = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
            let _ = writeln!(
                out,
                "{:>8}{:>14.2}{:>14}{:>18}{:>10}",
                e.nodes,
                e.lab_s,
                s(e.all_joined_s),
                s(e.all_pairs_s),
                e.retries
            );
            if let Some(err) = &e.error {
                let _ = writeln!(out, "         failed: {err}");
            }
        }
    }
    match (&results.admissions, &results.admissions_error) {
        (Some(a), _) => {
            let _ = writeln!(out, "\nrendezvous admissions (one core, loopback):");
            if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(a) {
                for (k, v) in fields {
                    let _ = writeln!(out, "  {k}: {}", number(&v));
                }
            }
        }
        (None, Some(e)) => {
            let _ = writeln!(out, "\nrendezvous admissions: failed: {e}");
        }
        (None, None) => {}
    }
    let _ = writeln!(out, "\ntargets:");
    for t in targets(results) {
        let mark = match t.met {
            Some(true) => "met   ",
            Some(false) => "missed",
            None => "n/a   ",
        };
        let _ = writeln!(out, "  {mark} {}: {}", t.what, t.measured);
    }
    out
}

/// A JSON number rounded for reading.
fn number(v: &serde_json::Value) -> String {
    match v.as_f64() {
        Some(f) if f.fract() != 0.0 => format!("{f:.2}"),
        _ => v.to_string(),
    }
}

/// One performance target and whether this run met it.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The target, in words.
    pub what: &'static str,
    /// What was measured.
    pub measured: String,
    /// Met, missed, or not measured in this run.
    pub met: Option<bool>,
}

/// The performance targets against this run.
pub fn targets(results: &Results) -> Vec<Target> {
    let get = |key: &str| results.paths.get(key).and_then(|o| o.result.as_ref());
    let (boxer, direct, nebula) = (get("boxer"), get("direct"), get("nebula"));
    let mut out = Vec::new();
    let one = |r: Option<&PathResult>| r.and_then(|r| iperf_of(r, 1, false)).map(|i| i.gbit_s);
    out.push(match (one(boxer), one(nebula)) {
        (Some(b), Some(n)) => Target {
            what: "one connection across two NATs >= 4 Gbit/s and >= 6x Nebula",
            measured: format!("{b:.2} Gbit/s, {:.1}x Nebula", b / n),
            met: Some(b >= 4.0 && b >= 6.0 * n),
        },
        (Some(b), None) => Target {
            what: "one connection across two NATs >= 4 Gbit/s (and >= 6x Nebula: no Nebula)",
            measured: format!("{b:.2} Gbit/s"),
            met: Some(b >= 4.0),
        },
        _ => Target { what: "one connection across two NATs >= 4 Gbit/s", measured: "-".into(), met: None },
    });
    let redis_ratio = boxer.zip(direct).and_then(|(b, d)| {
        let ratios: Vec<f64> =
            b.redis.iter().filter_map(|(t, v)| d.redis.iter().find(|(u, _)| u == t).map(|(_, w)| v / w)).collect();
        (!ratios.is_empty()).then(|| ratios.iter().sum::<f64>() / ratios.len() as f64)
    });
    out.push(Target {
        what: "redis-benchmark >= 0.75x of direct",
        measured: redis_ratio.map_or("-".into(), |r| format!("{r:.2}x (mean over tests)")),
        met: redis_ratio.map(|r| r >= 0.75),
    });
    let rtt = |r: Option<&PathResult>| r.and_then(|r| r.rtt_us).map(|p| p.p50);
    let added = rtt(boxer).zip(rtt(direct)).map(|(b, d)| b - d);
    out.push(Target {
        what: "RTT added over direct TCP <= +80 us p50",
        measured: added.map_or("-".into(), |a| format!("{a:+.0} us")),
        met: added.map(|a| a <= 80.0),
    });
    // The network's RTT is the direct path's; Boxer's own RTT is shown beside
    // it (a first byte cannot come back faster than one overlay round trip).
    let known = boxer.and_then(|b| b.known_connect_us).map(|p| p.p50).zip(rtt(direct));
    out.push(Target {
        what: "connect to a known peer < 1 RTT + 100 us",
        measured: known.map_or("-".into(), |(k, r)| {
            let overlay = rtt(boxer).map_or(String::new(), |b| format!(", over Boxer {b:.0} us"));
            format!("{k:.0} us p50 (network RTT {r:.0} us{overlay})")
        }),
        met: known.map(|(k, r)| k < r + 100.0),
    });
    let first = boxer.and_then(|b| super::worker::Percentiles::of(b.first_contact_ms.clone())).map(|p| p.p50);
    out.push(Target {
        what: "first contact < 50 ms",
        measured: first.map_or("-".into(), |f| format!("{f:.1} ms p50")),
        met: first.map(|f| f < 50.0),
    });
    let hundred = results.elastic.iter().find(|e| e.nodes == 100);
    out.push(Target {
        what: "100 nodes joined and all pairs reachable < 5 s",
        // From the start, lab set-up included; the overlay's own share is
        // shown beside it (the lab's devices are not part of Boxer).
        measured: hundred.map_or("not run (full run only)".into(), |e| match e.all_pairs_s {
            Some(s) => format!("{s:.2} s ({:.2} s after the lab's {:.2} s set-up)", s - e.lab_s, e.lab_s),
            None => e.error.clone().unwrap_or_else(|| "did not finish".into()),
        }),
        met: hundred.map(|e| e.all_pairs_s.is_some_and(|s| s < 5.0)),
    });
    // One core: admissions per CPU-second of the whole rendezvous, its
    // runtime thread and the blocking threads that create each member's
    // output file (the simulated joiners share this machine's cores with
    // it, so the wall-clock rate would measure them too). The thread's
    // figure alone is shown beside it.
    let rate = results.admissions.as_ref().map(|a| {
        (a.admissions_per_server_total_cpu_sec, a.admissions_per_server_cpu_sec, a.registry_admissions_per_sec)
    });
    out.push(Target {
        what: "rendezvous admissions > 10k/s on one core",
        measured: rate.map_or("-".into(), |(total, thread, registry)| {
            format!(
                "{total:.0}/s per CPU-second of the rendezvous over QUIC (full TLS handshakes; \
                 {thread:.0}/s per CPU-second of its thread alone); registry alone {registry:.0}/s"
            )
        }),
        met: rate.map(|(total, _, _)| total > 10_000.0),
    });
    let idle = boxer.and_then(|b| b.rss_idle_kib).map(|k| k as f64 / 1024.0);
    out.push(Target {
        what: "runtime idle RSS < 20 MB",
        measured: idle.map_or("-".into(), |m| format!("{m:.1} MiB")),
        met: idle.map(|m| m * 1.048_576 < 20.0),
    });
    out
}

/// Size of the plot.
const PLOT_SIZE: (u32, u32) = (1200, 480);

/// Draws the throughput per path and the elasticity curves into `path` (SVG).
pub fn plot(results: &Results, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, PLOT_SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let (left, right) = root.split_horizontally(PLOT_SIZE.0 / 2);
    throughput_chart(results, &left)?;
    elastic_chart(&results.elastic, "nodes ready over time (lab)", &right)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

/// Draws only the elasticity curves into `path` (SVG), under `caption`
/// (the Lambda run: its throughput has no other columns to compare).
pub fn plot_elastic(runs: &[ElasticRun], caption: &str, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (PLOT_SIZE.0 / 2, PLOT_SIZE.1)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    elastic_chart(runs, caption, &root)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

fn plot_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting: {e:?}")
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// Bars: iperf3 Gbit/s, 1 and 4 streams, per path.
fn throughput_chart(results: &Results, area: &Area) -> anyhow::Result<()> {
    let values: Vec<(&str, Option<f64>, Option<f64>)> = COLUMNS
        .iter()
        .map(|(key, heading)| {
            let r = results.paths.get(*key).and_then(|o| o.result.as_ref());
            (
                *heading,
                r.and_then(|r| iperf_of(r, 1, false)).map(|i| i.gbit_s),
                r.and_then(|r| iperf_of(r, 4, false)).map(|i| i.gbit_s),
            )
        })
        .collect();
    let max = values.iter().flat_map(|(_, a, b)| [*a, *b]).flatten().fold(1.0f64, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption("iperf3 through the lab's NATs", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..values.len() as f64, 0f64..max)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(values.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.01 && i < values.len() { values[i].0.to_owned() } else { String::new() }
        })
        .y_desc("Gbit/s")
        .draw()
        .map_err(plot_error)?;
    let one = RGBColor(31, 119, 180);
    let four = RGBColor(255, 127, 14);
    for (i, (_, a, b)) in values.iter().enumerate() {
        let x = i as f64;
        if let Some(a) = a {
            chart.draw_series([Rectangle::new([(x + 0.1, 0.0), (x + 0.48, *a)], one.filled())]).map_err(plot_error)?;
        }
        if let Some(b) = b {
            chart.draw_series([Rectangle::new([(x + 0.52, 0.0), (x + 0.9, *b)], four.filled())]).map_err(plot_error)?;
        }
    }
    chart
        .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())
        .map_err(plot_error)?
        .label("1 stream")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], one.filled()));
    chart
        .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())
        .map_err(plot_error)?
        .label("4 streams")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], four.filled()));
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE.mix(0.8)).draw().map_err(plot_error)?;
    Ok(())
}

/// Curves: nodes joined and nodes that reached every peer, over time.
fn elastic_chart(runs: &[ElasticRun], caption: &str, area: &Area) -> anyhow::Result<()> {
    let t_max =
        runs.iter().flat_map(|r| r.joined.iter().chain(r.ready.iter()).map(|(t, _)| *t)).fold(1.0f64, f64::max) * 1.05;
    let n_max = runs.iter().map(|r| r.nodes).max().unwrap_or(10) as f64 * 1.05;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..t_max, 0f64..n_max)
        .map_err(plot_error)?;
    chart.configure_mesh().x_desc("seconds since start").y_desc("nodes").draw().map_err(plot_error)?;
    for (i, run) in runs.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let steps = |points: &[(f64, u32)]| {
            let mut line = vec![(0.0, 0.0)];
            for (t, n) in points {
                let last = line.last().map_or(0.0, |p| p.1);
                line.push((*t, last));
                line.push((*t, f64::from(*n)));
            }
            line
        };
        chart
            .draw_series(LineSeries::new(steps(&run.joined), color.stroke_width(1)))
            .map_err(plot_error)?
            .label(format!("{} nodes: joined", run.nodes))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 15, y)], color.stroke_width(1)));
        chart
            .draw_series(LineSeries::new(steps(&run.ready), color.stroke_width(3)))
            .map_err(plot_error)?
            .label(format!("{} nodes: reached every peer", run.nodes))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 15, y)], color.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(plot_error)?;
    Ok(())
}
