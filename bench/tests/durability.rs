//! `scripts/durability.py` prints the table of `scripts/bench.sh durability`: each step's
//! acked ops/s, ack percentiles and CPU, then the cost of Redis as ratios against the server
//! without it. Fed made-up result files here.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

/// A fresh results directory under the system's temp dir, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "kasagi-durability-{}-{name}/20261207-082007-durability",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("creating a scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(parent) = self.0.parent() {
            let _ = fs::remove_dir_all(parent);
        }
    }
}

/// One step's result.json: `hz` for the fixed rate, else closed loop with 8 in flight.
fn write_step(run: &Path, step: &str, hz: Option<f64>, acks_per_s: f64, p50_ms: f64, p99_ms: f64) {
    let mut metrics = json!({"acks_per_s": acks_per_s, "server_cpu_share": 0.5,
                             "bench_cpu_share": 0.6, "server_cores_other_load": 0.1});
    if step.contains("redis") {
        metrics["redis_cpu_share"] = json!(0.25);
    }
    let ack = json!({"p50_us": p50_ms * 1000.0, "p99_us": p99_ms * 1000.0,
                     "p99.9_us": p99_ms * 2000.0, "max_us": p99_ms * 3000.0});
    let result = json!({
        "params": {"clients": 100, "hz": hz, "in_flight": hz.is_none().then_some(8),
                   "duration_s": 8.0},
        "metrics": metrics, "latency": {"ack": ack}, "ok": true,
    });
    let dir = run.join(step);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("result.json"), result.to_string()).unwrap();
}

fn table(run: &Path) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/durability.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(run)
        .output()
        .expect("running python3 scripts/durability.py");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn every_step_in_order_then_the_cost_of_each_policy() {
    let run = Scratch::new("table");
    fs::write(
        run.0.join("redis.txt"),
        "Redis server v=7.0.15 sha=00000000:0 bits=64\n\
         redis-server 1 on 127.0.0.1:1, appendfsync everysec, dir /tmp/a\n\
         redis-server 2 on 127.0.0.1:2, appendfsync always, dir /tmp/b\n",
    )
    .unwrap();
    fs::write(run.0.join("started.txt"), "2026-12-07 08:20:07 UTC\n").unwrap();
    write_step(&run.0, "rate-no-redis", Some(100.0), 10_000.0, 0.1, 0.3);
    write_step(&run.0, "max-no-redis", None, 200_000.0, 3.2, 4.2);
    write_step(
        &run.0,
        "rate-redis-everysec",
        Some(100.0),
        10_000.0,
        0.15,
        1.5,
    );
    write_step(&run.0, "max-redis-everysec", None, 100_000.0, 7.0, 14.0);
    write_step(&run.0, "rate-redis-always", Some(100.0), 10_000.0, 0.9, 3.0);
    write_step(&run.0, "max-redis-always", None, 50_000.0, 11.0, 20.0);
    let (ok, text) = table(&run.0);
    assert!(ok, "{text}");
    assert!(text.contains("started 2026-12-07 08:20:07 UTC, 8 s windows; redis-server 7.0.15"));
    let steps: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.starts_with("rate-") || w.starts_with("max-"))
        .collect();
    assert_eq!(
        steps,
        [
            "rate-no-redis",
            "max-no-redis",
            "rate-redis-everysec",
            "max-redis-everysec",
            "rate-redis-always",
            "max-redis-always"
        ]
    );
    let max_always = text
        .lines()
        .find(|l| l.starts_with("max-redis-always"))
        .expect("the always row");
    assert!(max_always.contains("100 x 8 in flight"), "{max_always}");
    assert!(max_always.contains("50,000"), "{max_always}");
    assert!(max_always.contains("11.000"), "{max_always}");
    assert!(max_always.trim_end().ends_with("OK"), "{max_always}");
    assert!(
        text.contains(
            "with Redis (everysec): 0.50x the acked ops/s at saturation; \
             at the fixed rate 1.50x the ack p50, 5.00x the p99"
        ),
        "{text}"
    );
    assert!(
        text.contains("with Redis (always): 0.25x the acked ops/s at saturation"),
        "{text}"
    );
}

#[test]
fn a_folder_without_results_is_an_error() {
    let run = Scratch::new("empty");
    let (ok, text) = table(&run.0);
    assert!(!ok);
    assert!(text.contains("no durability results"), "{text}");
}
