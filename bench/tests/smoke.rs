//! Smoke test: the bench's `fanout` (on both readiness sources), `ack` (open and closed
//! loop) and `join-storm` scenarios against the real server binary, for about a second each, must finish with
//! correctness OK and a JSON line; `telemetry-cost` and `jitter` run without a server.
//!
//! The server binary is `KASAGI_BIN` when set, otherwise `<workspace>/target/debug/kasagi`
//! (the workspace build makes it before tests run; `CARGO_TARGET_DIR` is honoured).

use std::path::PathBuf;
use std::process::Command;

fn server_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("KASAGI_BIN") {
        return PathBuf::from(bin);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug/kasagi")
}

/// Runs a scenario for about a second against the server binary; its JSON line.
fn run_bench(args: &[&str]) -> serde_json::Value {
    let bin = server_bin();
    assert!(
        bin.exists(),
        "server binary {} is missing: build the workspace first (cargo build --workspace) or set KASAGI_BIN",
        bin.display()
    );
    let bin = bin.to_str().expect("a UTF-8 path");
    let mut full = args.to_vec();
    full.extend([
        "--server-bin",
        bin,
        "--duration",
        "1s",
        "--warmup",
        "500ms",
        "--drain",
        "2s",
    ]);
    run_json(&full)
}

/// Runs `kasagi-bench ARGS`, which must succeed; its last line, parsed as JSON.
fn run_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_kasagi-bench"))
        .args(args)
        .output()
        .expect("running kasagi-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed:\n{stdout}\n{stderr}");
    let last = stdout.lines().last().expect("a JSON line");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("bad JSON line {last:?}: {e}"))
}

#[test]
fn fanout_msgpack_delivers_everything() {
    let report = run_bench(&[
        "fanout",
        "--rooms",
        "4",
        "--clients-per-room",
        "5",
        "--hz",
        "20",
        "--socket-stamps",
    ]);
    assert_fanout_complete(&report);
    assert_eq!(report["params"]["readiness"], "epoll");
    // With --socket-stamps every delivery is also timed at the socket (the kernel's receive
    // stamp) and from the generator's actual send; neither can exceed the end-to-end time.
    let latency = &report["latency"];
    let count = |name: &str| latency[name]["count"].as_u64().unwrap_or(0);
    assert!(count("delivery") > 0);
    assert_eq!(count("delivery_at_socket"), count("delivery"));
    assert_eq!(count("wire"), count("delivery"));
    let max = |name: &str| latency[name]["max_us"].as_u64().expect(name);
    assert!(max("delivery_at_socket") <= max("delivery"));
    // The server's own histograms, read from its /metrics when the run ended.
    let server = &report["server_latency"]["op_to_flush"];
    assert!(server["count"].as_u64().expect("server op_to_flush") > 0);
    assert!(server["p50_us"].as_f64().is_some());
}

/// The other readiness source (glommio's io_uring polls) keeps working.
#[test]
fn fanout_on_uring_readiness_delivers_everything() {
    let report = run_bench(&[
        "fanout",
        "--rooms",
        "3",
        "--clients-per-room",
        "4",
        "--hz",
        "20",
        "--readiness",
        "uring",
    ]);
    assert_fanout_complete(&report);
    assert_eq!(report["params"]["readiness"], "uring");
    // Socket stamps are off unless asked for.
    assert!(report["latency"]["wire"].is_null());
}

fn assert_fanout_complete(report: &serde_json::Value) {
    assert_eq!(report["ok"], true);
    let c = &report["counters"];
    assert!(c["deliveries"].as_u64().expect("deliveries") > 0);
    assert_eq!(c["deliveries"], c["expected_deliveries"]);
    assert_eq!(c["gaps"], 0);
    assert!(
        report["latency"]["delivery"]["count"]
            .as_u64()
            .expect("count")
            > 0
    );
}

#[test]
fn ack_json_measures_the_echo_too() {
    let report = run_bench(&[
        "ack",
        "--proto",
        "json",
        "--clients",
        "5",
        "--hz",
        "20",
        "--echo-connections",
        "2",
    ]);
    assert_eq!(report["ok"], true);
    assert!(report["latency"]["ack"]["count"].as_u64().expect("acks") > 0);
    assert!(report["latency"]["echo"]["count"].as_u64().expect("echoes") > 0);
    assert!(report["metrics"]["ack_p99_over_echo_p99"]
        .as_f64()
        .is_some());
}

/// `ack --in-flight`: closed loop, each client keeps its ops in flight and sends again as
/// each is acked, so the acks a second are the server's (here a debug build's), far above
/// any open-loop rate of this size; no echo unless asked. `--watch` reports another
/// process's CPU over the window (here the test's own).
#[test]
fn ack_closed_loop_acks_as_fast_as_the_server_answers() {
    let watch = format!("me={}", std::process::id());
    let report = run_bench(&[
        "ack",
        "--clients",
        "4",
        "--in-flight",
        "3",
        "--watch",
        &watch,
    ]);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["params"]["in_flight"], 3);
    assert!(report["params"]["hz"].is_null());
    assert!(report["latency"]["echo"].is_null(), "{report}");
    assert!(report["latency"]["send_lag"].is_null(), "{report}");
    let acks = report["latency"]["ack"]["count"].as_u64().expect("acks");
    let per_s = report["metrics"]["acks_per_s"].as_f64().expect("acks/s");
    // Four clients at ten times the `ack` preset's 10 Hz would be 400/s.
    assert!(per_s > 400.0, "{per_s} acks/s: {report}");
    assert_eq!(acks as f64, per_s);
    assert_eq!(report["counters"]["unacked_msgs"], 0);
    let me = report["metrics"]["me_cpu_share"]
        .as_f64()
        .expect("me_cpu_share");
    assert!(me >= 0.0, "{report}");
}

/// `join-storm` completes connections with the server's help and says what each cost
/// the server, which makes the server's own capacity readable when the generator limits
/// the rate.
#[test]
fn join_storm_reports_the_server_cpu_per_connection() {
    let report = run_bench(&["join-storm", "--rooms", "4", "--concurrency", "4"]);
    assert_eq!(report["ok"], true);
    let joins = report["counters"]["joins"].as_u64().expect("joins");
    assert!(joins > 0, "no connection completed: {report}");
    let metric = |k: &str| {
        report["metrics"][k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} in {report}"))
    };
    let per_join = metric("server_cpu_us_per_join");
    let per_cpu_s = metric("joins_per_server_cpu_s");
    assert!(per_join > 0.0);
    // The two are one figure read two ways.
    assert!((per_join * per_cpu_s / 1e6 - 1.0).abs() < 1e-6, "{report}");
}

/// `telemetry-cost` needs no server: it times the server's recorder and reports each cost
/// in the JSON line, the median round between the fastest and the slowest. (How fast is
/// the bench's to say, not a test's.)
#[test]
fn telemetry_cost_reports_every_figure() {
    let json = run_json(&["telemetry-cost", "--events", "20000", "--rounds", "3"]);
    let metric = |k: &str| {
        json["metrics"][k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} in {json}"))
    };
    for key in ["record_ns", "clock_ns", "event_ns"] {
        assert!(metric(key) > 0.0, "{key} in {json}");
        assert!(metric(&format!("{key}_min")) <= metric(key));
        assert!(metric(key) <= metric(&format!("{key}_max")));
    }
}

/// `jitter` needs no server: one histogram and two counts per probed CPU.
#[test]
fn jitter_reports_every_cpu_it_probed() {
    let json = run_json(&["jitter", "--duration", "300ms"]);
    let cpus = json["params"]["cpus"].as_array().expect("cpus");
    assert!(!cpus.is_empty());
    for cpu in cpus {
        let cpu = cpu.as_u64().expect("cpu number");
        let count = json["latency"][format!("jitter_cpu{cpu}")]["count"].as_u64();
        assert!(count.expect("a histogram per CPU") > 0, "{json}");
        assert!(json["metrics"][format!("cpu{cpu}_over_1ms")].is_number());
    }
}

/// `jitter --spin`: per probed CPU, the share of the run a spinning thread lost, which is a
/// share, and the lost microseconds behind it.
#[test]
fn jitter_spin_reports_the_time_each_cpu_lost() {
    let json = run_json(&["jitter", "--spin", "--duration", "300ms"]);
    assert_eq!(json["params"]["spin"], true);
    let cpus = json["params"]["cpus"].as_array().expect("cpus");
    assert!(!cpus.is_empty());
    for cpu in cpus {
        let cpu = cpu.as_u64().expect("cpu number");
        let share = json["metrics"][format!("cpu{cpu}_lost_share")]
            .as_f64()
            .unwrap_or_else(|| panic!("no lost share for CPU {cpu}: {json}"));
        assert!((0.0..1.0).contains(&share), "{json}");
        let lost_us = json["counters"][format!("lost_us_cpu{cpu}")].as_u64();
        assert!(lost_us.is_some(), "{json}");
        assert!(json["metrics"][format!("cpu{cpu}_over_1ms")].is_number());
    }
}
