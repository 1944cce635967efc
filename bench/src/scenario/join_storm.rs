//! `join-storm`: connections + handshakes + joins per second.
//!
//! Each bench shard runs `--concurrency` workers; a worker connects, upgrades, joins one of
//! `--rooms` rooms, waits for `joined`, sends a close and starts over. With `--rate`, the
//! attempts follow an open-loop schedule (latency counts from the intended start); without
//! it, workers go as fast as the server answers (throughput). Attempts that start inside
//! the window are counted.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use super::fanout::{read_joined, short_error};
use super::{run_measured, Env};
use crate::conn::{self, Target};
use crate::report::Report;
use crate::runner::{now_us, sleep_until, Sync};
use crate::stats::Stats;
use crate::wire;
use crate::Common;

#[derive(Args, Debug, Clone)]
pub struct JoinStormArgs {
    /// Rooms the connections join (round robin).
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Attempts in flight per bench shard.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Target attempts per second over the whole bench (0: as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
}

struct Plan {
    target: Target,
    run_id: String,
    rooms: usize,
    workers: usize,
    bench_shards: usize,
    rate: f64,
    warmup: Duration,
    duration: Duration,
}

pub fn join_storm_main(common: &Common, args: &JoinStormArgs) -> Result<Report> {
    let mut env = Env::setup(common, 4 * args.concurrency as u64 * 8)?;
    let plan = Arc::new(Plan {
        target: env.target.clone(),
        run_id: env.run_id.clone(),
        rooms: args.rooms.max(1),
        workers: args.concurrency.max(1),
        bench_shards: env.bench_cpus.len(),
        rate: args.rate,
        warmup: common.warmup,
        duration: common.duration,
    });
    let title = format!(
        "{} in flight per bench shard, {} rooms, {}, {}",
        plan.workers,
        plan.rooms,
        if args.rate > 0.0 {
            format!("open loop at {}/s", args.rate)
        } else {
            "as fast as possible".into()
        },
        common.proto
    );
    let params = json!({
        "rooms": plan.rooms, "concurrency": plan.workers, "rate": args.rate, "proto": common.proto,
        "duration_s": common.duration.as_secs_f64(), "warmup_s": common.warmup.as_secs_f64(),
    });
    let sync = Arc::new(Sync::default());
    let (p, s) = (plan.clone(), sync.clone());
    let (stats, samples) = run_measured(&env, common, sync, move |id| {
        shard(id, p.clone(), s.clone())
    })?;
    let mut report = env.report("join-storm", title, params, stats, &samples);
    let done = report.stats.get("joins");
    let per_s = done as f64 / common.duration.as_secs_f64();
    report.metric(
        "joins_per_s",
        per_s,
        "connections+handshakes+joins/s (window)",
    );
    report.metric(
        "joins_per_s_per_server_core",
        per_s / env.server_cores.max(1) as f64,
        "... per server core",
    );
    report.finish_usage(0);
    // The generator, which pays for TCP on both ends of loopback as much as the server,
    // is usually the limit here: what the server spent per connection says how many it
    // could take on a core of its own.
    if let Some(cpu) = report.server_cpu_seconds().filter(|&c| c > 0.0 && done > 0) {
        report.metric(
            "server_cpu_us_per_join",
            cpu * 1e6 / done as f64,
            "server CPU per connection (us)",
        );
        report.metric(
            "joins_per_server_cpu_s",
            done as f64 / cpu,
            "... so per second of one server core",
        );
    }
    env.finish(report, common)
}

async fn shard(id: usize, plan: Arc<Plan>, sync: Arc<Sync>) -> Stats {
    let Some(start) = sync
        .barrier(1, plan.bench_shards, Duration::from_millis(100))
        .await
    else {
        return Stats::default();
    };
    let from = start + plan.warmup.as_micros() as u64;
    let end = from + plan.duration.as_micros() as u64;
    let total_workers = plan.workers * plan.bench_shards;
    let tasks: Vec<_> = (0..plan.workers)
        .map(|w| {
            let plan = plan.clone();
            let index = id * plan.workers + w;
            glommio::spawn_local(worker(plan, index, total_workers, start, from, end))
        })
        .collect();
    let mut stats = Stats::default();
    for t in tasks {
        stats.merge(t.await);
    }
    stats.add("joins", 0);
    stats
}

async fn worker(
    plan: Arc<Plan>,
    index: usize,
    workers: usize,
    start: u64,
    from: u64,
    end: u64,
) -> Stats {
    let mut stats = Stats::default();
    let proto = plan.target.proto;
    for k in 0u64.. {
        let intended = if plan.rate > 0.0 {
            let at = start + ((k as f64 * workers as f64 + index as f64) * 1e6 / plan.rate) as u64;
            sleep_until(at).await;
            at
        } else {
            now_us()
        };
        if intended >= end {
            break;
        }
        let measured = intended >= from;
        let room = wire::room_id(&format!(
            "j{}-{}",
            plan.run_id,
            (index + k as usize * workers) % plan.rooms
        ));
        let nonce = ((index as u64) << 32) ^ k;
        let attempt = async {
            let (mut r, mut w) = conn::connect(&plan.target, nonce).await?;
            let upgraded = now_us();
            w.send_with(proto, |out| wire::encode_join(out, proto, &room))
                .await?;
            read_joined(&mut r, proto, &room).await?;
            let _ = w.close(1000).await;
            Ok::<u64, conn::ConnError>(upgraded)
        };
        match attempt.await {
            Ok(upgraded) if measured => {
                let now = now_us();
                stats.record("join", now.saturating_sub(intended));
                stats.record("handshake", upgraded.saturating_sub(intended));
                stats.add("joins", 1);
            }
            Ok(_) => {}
            Err(e) => stats.add(&format!("connect_error:{}", short_error(&e)), 1),
        }
    }
    stats
}
