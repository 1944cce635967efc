//! `telemetry-cost`: what one latency event costs the server, measured on the server's own
//! [`Recorder`] (no sockets, no server process).
//!
//! An event is what the server does per recorded latency: read the clock and record the
//! elapsed time into the stage's HDR histogram. The durations recorded are spread over
//! the histogram's range (1 µs to 10 s, a fixed pseudo-random sequence) so the recorder
//! does not always hit one bucket. Each round records `--events` of them and times the
//! whole loop; the figure reported is the median round, with the fastest and slowest.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use kasagi::server::telemetry::{Recorder, Stage};
use serde_json::json;

use crate::report::Report;

#[derive(Args, Debug, Clone)]
pub struct TelemetryCostArgs {
    /// Events per round.
    #[arg(long, default_value_t = 2_000_000)]
    pub events: usize,
    /// Rounds (the median is reported).
    #[arg(long, default_value_t = 9)]
    pub rounds: usize,
}

/// Durations spread log-uniformly from 1 µs to ~10 s (xorshift, fixed seed).
fn durations(n: usize) -> Vec<Duration> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let exponent = (x % 24) as u32; // 2^0 .. 2^23 µs
            Duration::from_micros((1u64 << exponent) + (x >> 40) % 1000)
        })
        .collect()
}

/// Nanoseconds per event of `body` over `rounds` rounds: (median, min, max).
fn time_rounds(rounds: usize, events: usize, mut body: impl FnMut()) -> (f64, f64, f64) {
    let mut per_event: Vec<f64> = (0..rounds.max(1))
        .map(|_| {
            let start = Instant::now();
            body();
            start.elapsed().as_nanos() as f64 / events.max(1) as f64
        })
        .collect();
    per_event.sort_by(f64::total_cmp);
    (
        per_event[per_event.len() / 2],
        per_event[0],
        per_event[per_event.len() - 1],
    )
}

pub fn telemetry_cost_main(args: &TelemetryCostArgs) -> Result<Report> {
    let events = args.events.max(1);
    let spread = durations(4096);
    let recorder = Recorder::default();
    let record_only = time_rounds(args.rounds, events, || {
        for i in 0..events {
            recorder.record(Stage::FlushToWrite, spread[i & 4095]);
        }
    });
    let clock_only = time_rounds(args.rounds, events, || {
        for _ in 0..events {
            black_box(Instant::now());
        }
    });
    let event = time_rounds(args.rounds, events, || {
        let since = Instant::now();
        for _ in 0..events {
            recorder.record(Stage::FlushToWrite, since.elapsed());
        }
    });
    let title = format!(
        "the server's Recorder, {} rounds of {events} events",
        args.rounds.max(1)
    );
    let mut report = Report::new(
        "telemetry-cost",
        title,
        json!({"events": events, "rounds": args.rounds.max(1)}),
    );
    let mut put = |key: &str, label: &str, (median, min, max): (f64, f64, f64)| {
        report.metric(
            &format!("{key}_ns"),
            median,
            &format!("{label}, ns (median round)"),
        );
        report.metric(
            &format!("{key}_ns_min"),
            min,
            &format!("{label}, ns (fastest)"),
        );
        report.metric(
            &format!("{key}_ns_max"),
            max,
            &format!("{label}, ns (slowest)"),
        );
    };
    put("record", "HDR record", record_only);
    put("clock", "Instant::now", clock_only);
    put("event", "event: clock + record", event);
    if event.0 >= 100.0 {
        report.warnings.push(format!(
            "an event costs {:.0} ns: the target is well under 100 ns",
            event.0
        ));
    }
    Ok(report)
}
