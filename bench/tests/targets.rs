//! `scripts/targets.py` scores the bench targets from `scripts/bench.sh all` results: the
//! median over several runs with its range, met or MISSED against each target, and any
//! fan-out step with a gap or a missing delivery. Fed made-up result files here.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

/// A fresh directory under the system's temp dir, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("kasagi-targets-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("creating a scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn write_step(run: &Path, step: &str, result: serde_json::Value) {
    let dir = run.join(step);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("result.json"), result.to_string()).unwrap();
}

fn delivery(p50_ms: f64, p99_ms: f64, p999_ms: f64) -> serde_json::Value {
    json!({"delivery": {"p50_us": p50_ms * 1000.0, "p90_us": 0, "p99_us": p99_ms * 1000.0,
                        "p99.9_us": p999_ms * 1000.0, "max_us": 0}})
}

/// One `all` run with the given figures (`gaps` on its latency-10k step).
fn write_run(run: &Path, cpu_per_million: f64, p99_ms: f64, joins_per_cpu_s: f64, gaps: u64) {
    let clean = json!({"gaps": 0, "missing_deliveries": 0});
    write_step(
        run,
        "fanout-1core",
        json!({
        "metrics": {"deliveries_per_s": 1_000_000.0,
                    "server_cpu_s_per_million_deliveries": cpu_per_million},
        "latency": delivery(0.5, 3.0, 9.0), "counters": clean}),
    );
    write_step(
        run,
        "latency-10k",
        json!({
        "metrics": {}, "latency": delivery(0.3, p99_ms, 20.0),
        "counters": {"gaps": gaps, "missing_deliveries": 0}}),
    );
    write_step(
        run,
        "ack",
        json!({"metrics": {"ack_p99_over_echo_p99": 1.2}, "counters": clean}),
    );
    write_step(
        run,
        "idle-20k",
        json!({"metrics": {"server_bytes_per_idle_connection": 1070.0}}),
    );
    write_step(
        run,
        "join-storm",
        json!({
        "metrics": {"joins_per_server_cpu_s": joins_per_cpu_s, "joins_per_s": 19_000.0}}),
    );
    write_step(
        run,
        "cross-shard-same",
        json!({
        "metrics": {"server_cpu_s_per_million_deliveries": 4.0}, "counters": clean}),
    );
    write_step(
        run,
        "cross-shard-cross",
        json!({
        "metrics": {"server_cpu_s_per_million_deliveries": 4.2}, "counters": clean}),
    );
}

fn targets(runs: &[&Path]) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/targets.py");
    let out = Command::new("python3")
        .arg(script)
        .args(runs)
        .output()
        .expect("running python3 scripts/targets.py");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn line<'a>(report: &'a str, starts: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.trim_start().starts_with(starts))
        .unwrap_or_else(|| panic!("no line for {starts:?} in:\n{report}"))
}

#[test]
fn medians_ranges_and_verdicts_over_three_runs() {
    let scratch = Scratch::new("three");
    let runs: Vec<PathBuf> = (0..3)
        .map(|i| scratch.0.join(format!("run{i}-all")))
        .collect();
    // Medians: CPU 0.98 (met), p99 4 ms (missed), joins 21,000 per server CPU-second (met).
    write_run(&runs[0], 0.97, 1.5, 25_000.0, 0);
    write_run(&runs[1], 0.98, 4.0, 21_000.0, 0);
    write_run(&runs[2], 1.20, 9.0, 12_000.0, 0);
    let paths: Vec<&Path> = runs.iter().map(PathBuf::as_path).collect();
    let (ok, report) = targets(&paths);
    assert!(ok, "{report}");
    assert!(report.starts_with("targets over 3 run(s)"), "{report}");
    let cpu = line(&report, "server CPU-s per million");
    assert!(
        cpu.contains("0.980 (0.970-1.200)") && cpu.ends_with("met"),
        "{cpu}"
    );
    let p99 = line(&report, "latency-10k delivery p99 ms");
    assert!(
        p99.contains("4.00 (1.50-9.00)") && p99.ends_with("MISSED"),
        "{p99}"
    );
    let joins = line(&report, "joins per second of one server core");
    assert!(
        joins.contains("21,000 (12,000-25,000)") && joins.ends_with("met"),
        "{joins}"
    );
    let cross = line(&report, "cross-shard CPU per delivery");
    assert!(
        cross.contains("1.050x") && cross.ends_with("met"),
        "{cross}"
    );
    assert!(
        report.contains("0 gaps and 0 missing deliveries in all 15 fan-out steps"),
        "{report}"
    );
}

#[test]
fn a_gap_in_any_run_is_named() {
    let scratch = Scratch::new("gap");
    let run = scratch.0.join("gappy-all");
    write_run(&run, 0.9, 1.0, 22_000.0, 2);
    let (ok, report) = targets(&[&run]);
    assert!(ok, "{report}");
    assert!(
        line(&report, "correctness").contains("gappy-all/latency-10k"),
        "{report}"
    );
}

#[test]
fn a_missing_directory_is_an_error() {
    let scratch = Scratch::new("missing");
    let (ok, report) = targets(&[&scratch.0.join("no-such-run")]);
    assert!(!ok);
    assert!(report.contains("not a results directory"), "{report}");
}
