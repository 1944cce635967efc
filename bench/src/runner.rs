//! The shard-per-core harness every scenario runs on: one pinned glommio executor per
//! bench CPU (through `kasagi-shards`), a process-wide clock, a start barrier, and the
//! sampler thread that reads CPU and memory at the edges of the measured window.
//!
//! Time: every timestamp is microseconds since [`clock_base`], one `Instant` for the whole
//! process (CLOCK_MONOTONIC), so a timestamp written on one shard is comparable on another.
//! The kernel's receive timestamps (CLOCK_REALTIME) are brought onto it by
//! [`wall_to_bench_us`].

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Result};
use kasagi_shards::{run, RuntimeConfig};

use crate::procfs::{cpus_busy_seconds, own_cpu, ProcSample};

pub fn clock_base() -> Instant {
    base().0
}

/// [`clock_base`], and the wall-clock time (µs since the Unix epoch) read beside it.
fn base() -> (Instant, u64) {
    static BASE: OnceLock<(Instant, u64)> = OnceLock::new();
    *BASE.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        (Instant::now(), wall)
    })
}

/// A wall-clock time (µs since the Unix epoch, as the kernel stamps received packets) on
/// the bench clock. The two clocks are read a few hundred nanoseconds apart once per
/// process; an NTP slew over a run moves them by far less than a microsecond.
pub fn wall_to_bench_us(wall_us: u64) -> u64 {
    wall_us.saturating_sub(base().1)
}

/// Microseconds since [`clock_base`].
pub fn now_us() -> u64 {
    clock_base().elapsed().as_micros() as u64
}

/// Sleeps until `at_us` on the bench clock: through the shard's epoll poller when it has
/// one (`epoll::sleep_until`), else on a glommio timer.
pub async fn sleep_until(at_us: u64) {
    if let Some(sleep) = crate::epoll::sleep_until(at_us) {
        return sleep.await;
    }
    let now = now_us();
    if at_us > now {
        glommio::timer::sleep(Duration::from_micros(at_us - now)).await;
    }
}

/// What the shards and the sampler share.
#[derive(Debug, Default)]
pub struct Sync {
    /// Connections (or other units) ready, across shards.
    pub ready: AtomicUsize,
    /// When the schedule starts (µs on the bench clock); 0 until decided.
    pub start_at_us: AtomicU64,
    /// Set when the run is over (so the sampler stops waiting).
    pub done: AtomicBool,
    /// Set by any shard that failed to set up (the others stop waiting).
    pub aborted: AtomicBool,
}

impl Sync {
    /// Adds `n` ready units, then waits until `total` are ready everywhere; returns the
    /// common start time, `lead` after the last one got ready. `None`: a shard aborted.
    pub async fn barrier(&self, n: usize, total: usize, lead: Duration) -> Option<u64> {
        self.ready.fetch_add(n, Ordering::AcqRel);
        loop {
            if self.aborted.load(Ordering::Acquire) {
                return None;
            }
            let start = self.start_at_us.load(Ordering::Acquire);
            if start != 0 {
                return Some(start);
            }
            if self.ready.load(Ordering::Acquire) >= total {
                let proposed = now_us() + lead.as_micros() as u64;
                let _ = self.start_at_us.compare_exchange(
                    0,
                    proposed,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                continue;
            }
            glommio::timer::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Runs `shard(id)` on one executor per CPU of `cpus` and returns their outputs.
pub fn run_shards<R, F, Fut>(cpus: &[usize], shard: F) -> Result<Vec<R>>
where
    R: Send + 'static,
    F: Fn(usize) -> Fut + Send + std::marker::Sync + Clone + 'static,
    Fut: Future<Output = R> + 'static,
{
    let config = RuntimeConfig {
        shards: cpus.len(),
        cpus: Some(cpus.to_vec()),
        name_prefix: "bench".into(),
        ..RuntimeConfig::default()
    };
    run::<(), _, _, _>(config, move |ctx| shard(ctx.id)).map_err(|e| anyhow!("bench shards: {e}"))
}

/// CPU and memory at the two edges of the measured window.
#[derive(Debug, Clone, Default)]
pub struct WindowSamples {
    pub bench_cpu: Duration,
    pub server_before: Option<ProcSample>,
    pub server_after: Option<ProcSample>,
    pub measured_seconds: f64,
    /// Busy seconds of the server's and the bench's CPUs over the window (`/proc/stat`).
    pub server_cpus_busy: f64,
    pub bench_cpus_busy: f64,
    /// CPU-seconds of each `--watch`ed process over the window, in the order given (`None`:
    /// it could not be read at both edges).
    pub watched_cpu: Vec<Option<f64>>,
}

/// Starts the sampler thread: once the shards agree on a start time it waits `warmup`,
/// samples, waits `duration`, samples again.
pub fn spawn_sampler(
    sync: Arc<Sync>,
    server_pid: Option<u32>,
    watched: Vec<u32>,
    cpus: (Vec<usize>, Vec<usize>),
    warmup: Duration,
    duration: Duration,
) -> JoinHandle<WindowSamples> {
    let (server_cpus, bench_cpus) = cpus;
    std::thread::Builder::new()
        .name("bench-sampler".into())
        .spawn(move || {
            let mut out = WindowSamples::default();
            let start = loop {
                if sync.done.load(Ordering::Acquire) {
                    return out;
                }
                let start = sync.start_at_us.load(Ordering::Acquire);
                if start != 0 {
                    break start;
                }
                std::thread::sleep(Duration::from_millis(1));
            };
            let from = start + warmup.as_micros() as u64;
            let to = from + duration.as_micros() as u64;
            sleep_thread_until(from);
            let cpu_before = own_cpu();
            let busy_before = (
                cpus_busy_seconds(&server_cpus),
                cpus_busy_seconds(&bench_cpus),
            );
            let t0 = Instant::now();
            let cpu_of = |p: u32| crate::procfs::sample_process(p).ok().map(|s| s.cpu_seconds);
            out.server_before = server_pid.and_then(|p| crate::procfs::sample_process(p).ok());
            let watched_before: Vec<Option<f64>> = watched.iter().map(|&p| cpu_of(p)).collect();
            sleep_thread_until(to);
            out.server_after = server_pid.and_then(|p| crate::procfs::sample_process(p).ok());
            out.watched_cpu = watched
                .iter()
                .zip(watched_before)
                .map(|(&p, before)| Some((cpu_of(p)? - before?).max(0.0)))
                .collect();
            out.bench_cpu = own_cpu().saturating_sub(cpu_before);
            out.server_cpus_busy = cpus_busy_seconds(&server_cpus) - busy_before.0;
            out.bench_cpus_busy = cpus_busy_seconds(&bench_cpus) - busy_before.1;
            out.measured_seconds = t0.elapsed().as_secs_f64();
            out
        })
        .expect("spawning the sampler thread")
}

fn sleep_thread_until(at_us: u64) {
    let now = now_us();
    if at_us > now {
        std::thread::sleep(Duration::from_micros(at_us - now));
    }
}
