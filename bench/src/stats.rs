//! What every bench shard counts, merged at the end of a run.
//!
//! Latencies are in microseconds, recorded into `hdrhistogram`s with 3 significant
//! digits, from 1 µs to 1 hour (anything longer is clamped and counted).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

pub const MAX_LATENCY_US: u64 = 3_600_000_000;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// Counters and histograms of one shard (or, merged, of the run).
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Named latency histograms (e.g. `delivery`, `ack`, `echo`, `join`), µs.
    pub histograms: BTreeMap<&'static str, Histogram<u64>>,
    /// Named counters (e.g. `deliveries`, `gaps`).
    pub counters: BTreeMap<String, u64>,
}

impl Stats {
    pub fn record(&mut self, name: &'static str, micros: u64) {
        let hist = self.histograms.entry(name).or_insert_with(new_histogram);
        hist.saturating_record(micros.clamp(1, MAX_LATENCY_US));
    }

    pub fn add(&mut self, name: &str, n: u64) {
        if n == 0 {
            self.counters.entry(name.to_owned()).or_insert(0);
            return;
        }
        match self.counters.get_mut(name) {
            Some(v) => *v += n,
            None => {
                self.counters.insert(name.to_owned(), n);
            }
        }
    }

    pub fn get(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    pub fn merge(&mut self, other: Stats) {
        for (name, hist) in other.histograms {
            match self.histograms.get_mut(name) {
                Some(mine) => mine.add(&hist).expect("same histogram bounds"),
                None => {
                    self.histograms.insert(name, hist);
                }
            }
        }
        for (name, n) in other.counters {
            self.add(&name, n);
        }
    }
}
