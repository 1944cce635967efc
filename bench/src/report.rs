//! The outputs of a run: a human summary, one JSON line for machines, an `.hgrm`
//! percentile distribution per histogram (the HdrHistogram text format plotters and
//! HdrHistogram's own tools read), and a PNG latency-by-percentile plot.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use crate::procfs::ProcSample;
use crate::stats::Stats;
use crate::telemetry::ServerTelemetry;
use crate::Watched;

/// The percentiles every summary shows.
pub const PERCENTILES: [(f64, &str); 5] = [
    (50.0, "p50"),
    (90.0, "p90"),
    (99.0, "p99"),
    (99.9, "p99.9"),
    (100.0, "max"),
];

/// A `send_lag` p99 above this (µs) is reported as the generator falling behind.
const SEND_LAG_WARN_US: u64 = 500;

/// Resource use over the measured window.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub window_seconds: f64,
    pub bench_cpu_seconds: f64,
    pub bench_cores: usize,
    pub server: Option<ServerUsage>,
    /// Busy seconds of the server's CPUs (when pinned) and the bench's, all work included.
    pub server_cpus_busy: Option<f64>,
    pub bench_cpus_busy: f64,
    /// Each `--watch`ed process and its CPU-seconds over the window (`None`: unreadable).
    pub watched: Vec<(Watched, Option<f64>)>,
}

#[derive(Debug, Clone)]
pub struct ServerUsage {
    pub before: ProcSample,
    pub after: ProcSample,
    pub cores: usize,
    pub command_line: String,
}

/// Everything a scenario hands to the report.
#[derive(Debug, Clone)]
pub struct Report {
    pub scenario: String,
    pub title: String,
    pub params: Map<String, Value>,
    /// Derived rates and values, in display order: (key, value, human label).
    pub metrics: Vec<(String, f64, String)>,
    pub stats: Stats,
    pub usage: Usage,
    /// The server's own histograms, read when the scenario ended.
    pub server_latency: ServerTelemetry,
    pub failures: Vec<String>,
    pub warnings: Vec<String>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn new(scenario: &str, title: String, params: Value) -> Self {
        Report {
            scenario: scenario.to_owned(),
            title,
            params: match params {
                Value::Object(map) => map,
                _ => Map::new(),
            },
            metrics: Vec::new(),
            stats: Stats::default(),
            usage: Usage::default(),
            server_latency: ServerTelemetry::default(),
            failures: Vec::new(),
            warnings: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn metric(&mut self, key: &str, value: f64, label: &str) {
        self.metrics.push((key.to_owned(), value, label.to_owned()));
    }

    /// Adds the resource-derived lines: server CPU per million deliveries, bottleneck
    /// warnings. `deliveries` is what the window delivered (0 when not meaningful).
    pub fn finish_usage(&mut self, deliveries: u64) {
        let server_cpu = self.server_cpu_seconds();
        let u = &self.usage;
        let window = u.window_seconds.max(1e-9);
        let bench_share = u.bench_cpu_seconds / window / u.bench_cores.max(1) as f64;
        let mut warnings = Vec::new();
        let mut metrics = Vec::new();
        metrics.push((
            "bench_cpu_share".to_owned(),
            bench_share,
            format!("bench CPU (share of its {} core(s))", u.bench_cores),
        ));
        if bench_share > 0.9 {
            warnings.push(format!(
                "the generator used {:.0}% of its {} core(s): it, not the server, may be the bottleneck",
                bench_share * 100.0,
                u.bench_cores
            ));
        }
        // CPU share alone overstates a polling generator's load; how late it sent says
        // whether it kept to its schedule.
        if let Some(lag) = self.stats.histograms.get("send_lag") {
            let p99_us = lag.value_at_percentile(99.0);
            if p99_us > SEND_LAG_WARN_US {
                warnings.push(format!(
                    "the generator sent 1% of its messages more than {:.1} ms late: it fell behind its schedule, so part of the latency is its own",
                    p99_us as f64 / 1000.0
                ));
            }
        }
        // Other work on the same cores steals time and adds latency that is neither the
        // server's nor the generator's: measure it rather than guess.
        let others = (u.bench_cpus_busy - u.bench_cpu_seconds).max(0.0)
            / window
            / u.bench_cores.max(1) as f64;
        metrics.push((
            "bench_cores_other_load".to_owned(),
            others,
            "other processes on the bench's cores (share)".to_owned(),
        ));
        if others > 0.15 {
            warnings.push(format!("other work used {:.0}% of the bench's cores during the window: latency is unreliable", others * 100.0));
        }
        if let (Some(s), Some(cpu), Some(busy)) = (&u.server, server_cpu, u.server_cpus_busy) {
            let others = (busy - cpu).max(0.0) / window / s.cores.max(1) as f64;
            metrics.push((
                "server_cores_other_load".to_owned(),
                others,
                "other processes on the server's cores (share)".to_owned(),
            ));
            if others > 0.15 {
                warnings.push(format!("other work used {:.0}% of the server's cores during the window: latency and throughput are unreliable", others * 100.0));
            }
        }
        if let (Some(s), Some(cpu)) = (&u.server, server_cpu) {
            let share = cpu / window / s.cores.max(1) as f64;
            metrics.push((
                "server_cpu_seconds".into(),
                cpu,
                "server CPU-seconds in window".into(),
            ));
            metrics.push((
                "server_cpu_share".into(),
                share,
                format!("server CPU (share of its {} core(s))", s.cores),
            ));
            if deliveries > 0 {
                metrics.push((
                    "server_cpu_s_per_million_deliveries".into(),
                    cpu / (deliveries as f64 / 1e6),
                    "server CPU-seconds per million deliveries".into(),
                ));
            }
            metrics.push((
                "server_rss_kib_before".into(),
                s.before.rss_kib as f64,
                "server RSS before (KiB)".into(),
            ));
            metrics.push((
                "server_rss_kib_after".into(),
                s.after.rss_kib as f64,
                "server RSS after (KiB)".into(),
            ));
            if share > 0.9 {
                warnings.push(format!(
                    "the server used {:.0}% of its {} core(s): it is saturated (server-bound)",
                    share * 100.0,
                    s.cores
                ));
            }
        }
        for (w, cpu) in &u.watched {
            match cpu {
                Some(cpu) => metrics.push((
                    format!("{}_cpu_share", w.name),
                    cpu / window,
                    format!("{} (pid {}) CPU (share of one core)", w.name, w.pid),
                )),
                None => warnings.push(format!(
                    "{} (pid {}) could not be read at both edges of the window",
                    w.name, w.pid
                )),
            }
        }
        self.metrics.extend(metrics);
        self.warnings.extend(warnings);
    }

    /// The server's CPU time in the measured window, when the bench started the server.
    pub fn server_cpu_seconds(&self) -> Option<f64> {
        let s = self.usage.server.as_ref()?;
        Some((s.after.cpu_seconds - s.before.cpu_seconds).max(0.0))
    }

    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "== kasagi-bench {}: {}", self.scenario, self.title);
        for note in &self.notes {
            let _ = writeln!(s, "   note: {note}");
        }
        for (_, value, label) in &self.metrics {
            let _ = writeln!(s, "   {label:<44} {}", human_number(*value));
        }
        for (name, hist) in &self.stats.histograms {
            if hist.is_empty() {
                continue;
            }
            let mut line = format!("   {name} latency (ms, n={})", hist.len());
            for (p, label) in PERCENTILES {
                let _ = write!(
                    line,
                    "  {label} {:.3}",
                    hist.value_at_percentile(p) as f64 / 1000.0
                );
            }
            let _ = writeln!(s, "{line}");
        }
        for h in &self.server_latency.summaries {
            let mut line = format!("   server {} (ms, whole run, n={})", h.name, h.count);
            for (label, seconds) in &h.quantiles {
                let _ = write!(line, "  {label} {:.3}", seconds * 1000.0);
            }
            let _ = writeln!(s, "{line}");
        }
        let counters: Vec<String> = self
            .stats
            .counters
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if !counters.is_empty() {
            let _ = writeln!(s, "   counters: {}", counters.join(" "));
        }
        for w in &self.warnings {
            let _ = writeln!(s, "   WARNING: {w}");
        }
        if self.ok() {
            let _ = writeln!(s, "   correctness: OK");
        } else {
            for f in &self.failures {
                let _ = writeln!(s, "   FAILED: {f}");
            }
        }
        s
    }

    pub fn json(&self) -> Value {
        let mut latency = Map::new();
        for (name, hist) in &self.stats.histograms {
            let mut h = Map::new();
            h.insert("count".into(), json!(hist.len()));
            for (p, label) in PERCENTILES {
                h.insert(format!("{label}_us"), json!(hist.value_at_percentile(p)));
            }
            h.insert("mean_us".into(), json!(hist.mean()));
            latency.insert((*name).to_owned(), Value::Object(h));
        }
        let server_latency: Map<String, Value> = self
            .server_latency
            .summaries
            .iter()
            .map(|h| {
                let mut m = Map::new();
                m.insert("count".into(), json!(h.count));
                for (label, seconds) in &h.quantiles {
                    m.insert(format!("{label}_us"), json!(seconds * 1e6));
                }
                (h.name.to_owned(), Value::Object(m))
            })
            .collect();
        let metrics: Map<String, Value> = self
            .metrics
            .iter()
            .map(|(k, v, _)| (k.clone(), json!(v)))
            .collect();
        let mut out = json!({
            "scenario": self.scenario,
            "params": self.params,
            "metrics": metrics,
            "latency": latency,
            "server_latency": server_latency,
            "counters": self.stats.counters,
            "warnings": self.warnings,
            "failures": self.failures,
            "ok": self.ok(),
        });
        if let Some(server) = &self.usage.server {
            out["server_command"] = json!(server.command_line);
        }
        out
    }

    /// Writes `summary.txt`, `result.json`, one `<name>.hgrm` per histogram and
    /// `latency.png` into `dir`.
    pub fn write_files(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::write(dir.join("summary.txt"), self.human())?;
        fs::write(dir.join("result.json"), format!("{}\n", self.json()))?;
        for (name, hist) in &self.stats.histograms {
            if !hist.is_empty() {
                fs::write(dir.join(format!("{name}.hgrm")), hgrm(hist, 1000.0))?;
            }
        }
        if let Some(text) = &self.server_latency.hgrm {
            fs::write(dir.join("server-latency.hgrm"), text)?;
        }
        let curves: Vec<(&str, &Histogram<u64>)> = self
            .stats
            .histograms
            .iter()
            .filter(|(_, h)| !h.is_empty())
            .map(|(n, h)| (*n, h))
            .collect();
        if !curves.is_empty() {
            let title = format!("kasagi-bench {}: {}", self.scenario, self.title);
            crate::plot::latency_by_percentile(&dir.join("latency.png"), &title, &curves)?;
        }
        Ok(())
    }
}

fn human_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        let digits = format!("{}", v as i64);
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 && c != '-' {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// The HdrHistogram percentile distribution text (`.hgrm`), values divided by `scale`
/// (1000: µs recorded, ms written), 5 ticks per half distance like HdrHistogram's
/// `outputPercentileDistribution`.
pub fn hgrm(hist: &Histogram<u64>, scale: f64) -> String {
    let mut s = String::new();
    kasagi::server::telemetry::write_hgrm(&mut s, hist, scale);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_histogram;

    #[test]
    fn hgrm_ends_at_the_max_with_the_total() {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            h.record(v).expect("in range");
        }
        let text = hgrm(&h, 1000.0);
        assert!(text.contains("Percentile"));
        assert!(text.contains("Total count    =         1000"));
        let last_row = text.lines().rfind(|l| !l.starts_with('#')).expect("rows");
        assert!(last_row.contains("1.000000000000"), "{last_row}");
    }

    #[test]
    fn a_late_generator_is_named_in_the_warnings() {
        let behind = |lag_us: u64| {
            let mut report = Report::new("fanout", "t".into(), Value::Null);
            for _ in 0..1000 {
                report.stats.record("send_lag", lag_us);
            }
            report.usage.window_seconds = 1.0;
            report.usage.bench_cores = 1;
            report.finish_usage(0);
            report.warnings.iter().any(|w| w.contains("fell behind"))
        };
        assert!(behind(2_000));
        assert!(!behind(100));
    }

    #[test]
    fn a_watched_process_gets_its_cpu_share_or_a_warning() {
        let watched = |name: &str, pid| Watched {
            name: name.into(),
            pid,
        };
        let mut report = Report::new("ack", "t".into(), Value::Null);
        report.usage.window_seconds = 2.0;
        report.usage.bench_cores = 1;
        report.usage.watched = vec![
            (watched("redis", 10), Some(0.5)),
            (watched("gone", 11), None),
        ];
        report.finish_usage(0);
        let share = report
            .metrics
            .iter()
            .find(|(k, _, _)| k == "redis_cpu_share")
            .map(|(_, v, _)| *v);
        assert_eq!(share, Some(0.25));
        assert!(report
            .warnings
            .iter()
            .any(|w| w.starts_with("gone (pid 11)")));
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(human_number(1234567.0), "1,234,567");
        assert_eq!(human_number(0.5), "0.500");
    }
}
