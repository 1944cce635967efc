//! Server-side latency telemetry: HDR histograms per shard, merged on read.
//!
//! Each shard records into its own histograms with no synchronization (a record is an
//! index computation and an add: a few nanoseconds). Once a second a shard copies them
//! into its slot of a shared [`Published`] set, under a mutex nobody else holds except a
//! reader of `/metrics` or `/debug/latency`, which merges the slots of every shard. What a
//! reader sees is therefore at most a second old.
//!
//! Histograms record nanoseconds, 3 significant digits, up to 60 s (longer values are
//! clamped to 60 s), since the process started.

use std::cell::RefCell;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;

/// The latencies the server records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// An `op` message read from its socket -> the delta holding it flushed by the owner.
    OpToFlush = 0,
    /// A delta flushed -> handed to a member's socket.
    FlushToWrite = 1,
    /// A message sent to another shard -> handled there.
    ShardHop = 2,
    /// A pipeline of appends, lease and relay commands sent to Redis -> its replies read.
    RedisRoundTrip = 3,
}

impl Stage {
    pub const ALL: [Stage; 4] = [
        Stage::OpToFlush,
        Stage::FlushToWrite,
        Stage::ShardHop,
        Stage::RedisRoundTrip,
    ];

    /// The Prometheus metric name.
    pub fn metric(self) -> &'static str {
        match self {
            Stage::OpToFlush => "kasagi_op_to_flush_seconds",
            Stage::FlushToWrite => "kasagi_flush_to_write_seconds",
            Stage::ShardHop => "kasagi_shard_hop_seconds",
            Stage::RedisRoundTrip => "kasagi_redis_round_trip_seconds",
        }
    }

    fn help(self) -> &'static str {
        match self {
            Stage::OpToFlush => "Op received from a socket to its delta flushed.",
            Stage::FlushToWrite => "Delta flushed to handed to a member's socket.",
            Stage::ShardHop => "Cross-shard message sent to handled.",
            Stage::RedisRoundTrip => "Redis pipeline sent to its replies read (fleet mode).",
        }
    }
}

const MAX_NANOS: u64 = 60_000_000_000;

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NANOS, 3).expect("constant bounds are valid")
}

/// One shard's histograms.
pub struct Recorder {
    histograms: [RefCell<Histogram<u64>>; 4],
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            histograms: std::array::from_fn(|_| RefCell::new(new_histogram())),
        }
    }
}

impl Recorder {
    #[inline]
    pub fn record(&self, stage: Stage, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(MAX_NANOS);
        self.histograms[stage as usize]
            .borrow_mut()
            .saturating_record(nanos.clamp(1, MAX_NANOS));
    }

    /// Copies this shard's histograms into its published slot.
    pub fn publish(&self, published: &Published, shard: usize) {
        let mut slot = published.slots[shard].lock().expect("telemetry slot lock");
        for (dst, src) in slot.iter_mut().zip(&self.histograms) {
            dst.reset();
            // Same bounds on both sides, so adding cannot fail.
            let _ = dst.add(&*src.borrow());
        }
    }
}

/// Every shard's last published histograms.
pub struct Published {
    slots: Vec<Mutex<[Histogram<u64>; 4]>>,
}

impl Published {
    pub fn new(shards: usize) -> Arc<Published> {
        Arc::new(Published {
            slots: (0..shards)
                .map(|_| Mutex::new(std::array::from_fn(|_| new_histogram())))
                .collect(),
        })
    }

    /// One stage merged over all shards.
    pub fn merged(&self, stage: Stage) -> Histogram<u64> {
        let mut merged = new_histogram();
        for slot in &self.slots {
            let slot = slot.lock().expect("telemetry slot lock");
            let _ = merged.add(&slot[stage as usize]);
        }
        merged
    }

    /// Prometheus summaries (seconds) of every stage, appended to `out`.
    pub fn render_prometheus(&self, out: &mut String) {
        for stage in Stage::ALL {
            let h = self.merged(stage);
            let name = stage.metric();
            let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} summary", stage.help());
            for q in [0.5, 0.9, 0.99, 0.999] {
                let v = seconds(h.value_at_quantile(q));
                let _ = writeln!(out, "{name}{{quantile=\"{q}\"}} {v}");
            }
            let _ = writeln!(out, "{name}{{quantile=\"1\"}} {}", seconds(h.max()));
            let sum = h.mean() * h.len() as f64 / 1e9;
            let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {}", h.len());
        }
    }

    /// The `.hgrm` percentile distribution of every stage, in microseconds.
    pub fn render_hgrm(&self) -> String {
        let mut out = String::new();
        for stage in Stage::ALL {
            let _ = writeln!(out, "# {} (microseconds)", stage.metric());
            write_hgrm(&mut out, &self.merged(stage), 1000.0);
            out.push('\n');
        }
        out
    }
}

fn seconds(nanos: u64) -> f64 {
    nanos as f64 / 1e9
}

/// Writes a histogram in the HdrHistogram percentile-distribution text format (what
/// `HistogramLogProcessor` and the online plotters read), values divided by `unit`.
pub fn write_hgrm(out: &mut String, h: &Histogram<u64>, unit: f64) {
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let value = v.value_iterated_to() as f64 / unit;
        if q < 1.0 {
            let inverse = 1.0 / (1.0 - q);
            let _ = writeln!(out, "{value:12.3} {q:2.12} {total:10} {inverse:14.2}");
        } else {
            let _ = writeln!(out, "{value:12.3} {q:2.12} {total:10}");
        }
    }
    let (mean, stdev, max) = (h.mean() / unit, h.stdev() / unit, h.max() as f64 / unit);
    let sub_buckets = 1u64 << (2.0 * 10f64.powi(i32::from(h.sigfig()))).log2().ceil() as u32;
    let _ = writeln!(
        out,
        "#[Mean    = {mean:12.3}, StdDeviation   = {stdev:12.3}]"
    );
    let _ = writeln!(
        out,
        "#[Max     = {max:12.3}, Total count    = {:12}]",
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {sub_buckets:12}]",
        h.buckets()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_histograms_merge_across_shards() {
        let published = Published::new(2);
        let a = Recorder::default();
        let b = Recorder::default();
        a.record(Stage::OpToFlush, Duration::from_micros(10));
        b.record(Stage::OpToFlush, Duration::from_micros(30));
        b.record(Stage::ShardHop, Duration::from_micros(5));
        a.publish(&published, 0);
        b.publish(&published, 1);
        let merged = published.merged(Stage::OpToFlush);
        assert_eq!(merged.len(), 2);
        assert!(merged.max() >= 29_900 && merged.max() <= 30_100);
        assert_eq!(published.merged(Stage::FlushToWrite).len(), 0);
        // Publishing again replaces, never double counts.
        a.publish(&published, 0);
        assert_eq!(published.merged(Stage::OpToFlush).len(), 2);
    }

    #[test]
    fn prometheus_and_hgrm_name_every_stage() {
        let published = Published::new(1);
        let r = Recorder::default();
        r.record(Stage::FlushToWrite, Duration::from_millis(2));
        r.publish(&published, 0);
        let mut text = String::new();
        published.render_prometheus(&mut text);
        assert!(text.contains("# TYPE kasagi_flush_to_write_seconds summary"));
        assert!(text.contains("kasagi_flush_to_write_seconds_count 1"));
        assert!(text.contains("kasagi_op_to_flush_seconds{quantile=\"0.99\"} 0"));
        let hgrm = published.render_hgrm();
        assert!(hgrm.contains("# kasagi_shard_hop_seconds"));
        assert!(
            hgrm.contains("#[Max     =        2000.895, Total count    =            1]")
                || hgrm.contains("Total count    =            1]")
        );
    }
}
