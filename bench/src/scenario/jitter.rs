//! `jitter`: how late a thread that only sleeps wakes up on each CPU, with nothing of
//! Kasagi running. A latency percentile no server can beat on this machine: when the
//! machine (a VM's host, other processes, interrupts) takes a CPU away for milliseconds,
//! every op in flight on that CPU waits too.
//!
//! One thread per CPU of `--cpus`, pinned, sleeps `--interval` and records how much later
//! than asked it woke, for `--duration`. The histograms are named `jitter_cpu<N>`.
//!
//! With `--spin` the threads never sleep: each reads the clock flat out and records every
//! gap between two reads of at least `--min-gap` (`stall_cpu<N>`), the time a *running*
//! thread lost to interrupts and to the host taking its vCPU away. That is what a busy
//! shard loses, and a shard at 96% of its core needs many times a stall's length to work
//! off the backlog it leaves. The share of the run lost this way is reported per CPU.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use clap::Args;
use serde_json::json;

use super::pin_current_thread;
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
    /// Spin instead of sleeping, recording the gaps in which the running thread did not run.
    #[arg(long)]
    pub spin: bool,
    /// With `--spin`, the shortest gap recorded.
    #[arg(long, default_value = "5us", value_parser = humantime::parse_duration)]
    pub min_gap: Duration,
    /// Folder for summary.txt, result.json, *.hgrm, latency.png.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

/// A histogram name for `cpu`: `Stats` keys are `&'static str`, and a run names one per
/// probed CPU, once.
fn name_of(cpu: usize, spin: bool) -> &'static str {
    let kind = if spin { "stall" } else { "jitter" };
    Box::leak(format!("{kind}_cpu{cpu}").into_boxed_str())
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
    let (spin, min_gap) = (args.spin, args.min_gap.max(Duration::from_micros(1)));
    let names: Vec<&'static str> = cpus.iter().map(|&cpu| name_of(cpu, spin)).collect();
    let threads: Vec<_> = cpus
        .iter()
        .zip(&names)
        .map(|(&cpu, &name)| {
            std::thread::Builder::new()
                .name(format!("jitter-{cpu}"))
                .spawn(move || {
                    if spin {
                        probe_spin(cpu, name, duration, min_gap)
                    } else {
                        probe(cpu, name, duration, interval)
                    }
                })
        })
        .collect::<Result<_, _>>()
        .context("spawning the probe threads")?;
    let mut stats = Stats::default();
    for t in threads {
        stats.merge(t.join().map_err(|_| anyhow!("a probe thread panicked"))??);
    }
    let title = if spin {
        format!(
            "gaps of at least {min_gap:?} in a thread spinning on each of CPUs {cpus:?} for \
             {duration:?}, nothing else started"
        )
    } else {
        format!(
            "oversleep of a {:?} sleep on CPUs {cpus:?} for {:?}, nothing else started",
            interval, duration
        )
    };
    let mut report = Report::new(
        "jitter",
        title,
        json!({"cpus": cpus, "interval_us": interval.as_micros() as u64,
               "duration_s": duration.as_secs_f64(), "spin": spin,
               "min_gap_us": min_gap.as_micros() as u64}),
    );
    let what = if spin {
        "gaps longer"
    } else {
        "wake-ups later"
    };
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
            &format!("CPU {cpu}: {what} than 1 ms"),
        );
        report.metric(
            &format!("cpu{cpu}_over_3ms"),
            three as f64,
            &format!("CPU {cpu}: {what} than 3 ms"),
        );
        if spin {
            let lost = stats.get(&lost_key(cpu)) as f64 / 1e6;
            report.metric(
                &format!("cpu{cpu}_lost_share"),
                lost / duration.as_secs_f64(),
                &format!("CPU {cpu}: share of the run lost in those gaps"),
            );
        }
    }
    report.stats = stats;
    if let Some(dir) = &args.out {
        report.write_files(dir)?;
    }
    Ok(report)
}

fn probe(cpu: usize, name: &'static str, duration: Duration, interval: Duration) -> Result<Stats> {
    pin_current_thread(&[cpu]).with_context(|| format!("pinning to CPU {cpu}"))?;
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

/// The counter of µs lost in gaps on `cpu`.
fn lost_key(cpu: usize) -> String {
    format!("lost_us_cpu{cpu}")
}

fn probe_spin(
    cpu: usize,
    name: &'static str,
    duration: Duration,
    min_gap: Duration,
) -> Result<Stats> {
    pin_current_thread(&[cpu]).with_context(|| format!("pinning to CPU {cpu}"))?;
    let mut stats = Stats::default();
    let mut lost = Duration::ZERO;
    let mut last = Instant::now();
    let end = last + duration;
    while last < end {
        let now = Instant::now();
        let gap = now - last;
        if gap >= min_gap {
            stats.record(name, gap.as_micros() as u64);
            lost += gap;
        }
        last = now;
    }
    stats.add(&lost_key(cpu), lost.as_micros() as u64);
    Ok(stats)
}
