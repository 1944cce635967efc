//! `jitter`: how late a thread that only sleeps wakes up on each CPU, with nothing of
//! Kasagi running. A latency percentile no server can beat on this machine: when the
//! machine (a VM's host, other processes, interrupts) takes a CPU away for milliseconds,
//! every op in flight on that CPU waits too.
//!
//! One thread per CPU of `--cpus`, pinned, sleeps `--interval` and records how much later
//! than asked it woke, for `--duration`. The histograms are named `jitter_cpu<N>`.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use clap::Args;
use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use serde_json::json;

use crate::report::Report;
use crate::stats::Stats;

#[derive(Args, Debug, Clone)]
pub struct JitterArgs {
    /// CPUs to probe, e.g. `0-1` (default: every CPU the bench may use).
    #[arg(long)]
    pub cpus: Option<String>,
    /// How long each probe runs.
    #[arg(long, default_value = "8s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Each sleep.
    #[arg(long, default_value = "200us", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Folder for summary.txt, result.json, *.hgrm, latency.png.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

/// A histogram name for `cpu`: `Stats` keys are `&'static str`, and a run names one per
/// probed CPU, once.
fn name_of(cpu: usize) -> &'static str {
    Box::leak(format!("jitter_cpu{cpu}").into_boxed_str())
}

pub fn jitter_main(args: &JitterArgs) -> Result<Report> {
    let cpus = match &args.cpus {
        Some(list) => kasagi_shards::parse_cpu_list(list).context("--cpus")?,
        None => kasagi_shards::allowed_cpus(),
    };
    if cpus.is_empty() {
        return Err(anyhow!("no CPU to probe"));
    }
    let (duration, interval) = (args.duration, args.interval.max(Duration::from_micros(1)));
    let names: Vec<&'static str> = cpus.iter().map(|&cpu| name_of(cpu)).collect();
    let threads: Vec<_> = cpus
        .iter()
        .zip(&names)
        .map(|(&cpu, &name)| {
            std::thread::Builder::new()
                .name(format!("jitter-{cpu}"))
                .spawn(move || probe(cpu, name, duration, interval))
        })
        .collect::<Result<_, _>>()
        .context("spawning the probe threads")?;
    let mut stats = Stats::default();
    for t in threads {
        stats.merge(t.join().map_err(|_| anyhow!("a probe thread panicked"))??);
    }
    let title = format!(
        "oversleep of a {:?} sleep on CPUs {cpus:?} for {:?}, nothing else started",
        interval, duration
    );
    let mut report = Report::new(
        "jitter",
        title,
        json!({"cpus": cpus, "interval_us": interval.as_micros() as u64,
               "duration_s": duration.as_secs_f64()}),
    );
    for (&cpu, name) in cpus.iter().zip(&names) {
        let over = |ms: u64| {
            stats
                .histograms
                .get(name)
                .map_or(0, |h| h.count_between(ms * 1000, u64::MAX))
        };
        let (one, three) = (over(1), over(3));
        report.metric(
            &format!("cpu{cpu}_over_1ms"),
            one as f64,
            &format!("CPU {cpu}: wake-ups later than 1 ms"),
        );
        report.metric(
            &format!("cpu{cpu}_over_3ms"),
            three as f64,
            &format!("CPU {cpu}: wake-ups later than 3 ms"),
        );
    }
    report.stats = stats;
    if let Some(dir) = &args.out {
        report.write_files(dir)?;
    }
    Ok(report)
}

fn probe(cpu: usize, name: &'static str, duration: Duration, interval: Duration) -> Result<Stats> {
    let mut set = CpuSet::new();
    set.set(cpu).with_context(|| format!("CPU {cpu}"))?;
    sched_setaffinity(Pid::from_raw(0), &set).with_context(|| format!("pinning to CPU {cpu}"))?;
    let mut stats = Stats::default();
    let end = Instant::now() + duration;
    loop {
        let before = Instant::now();
        if before >= end {
            break;
        }
        std::thread::sleep(interval);
        let late = before.elapsed().saturating_sub(interval);
        stats.record(name, late.as_micros() as u64);
    }
    Ok(stats)
}
