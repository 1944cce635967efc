//! `big-state`: join latency for a room holding a big state (default about 1 MB, under
//! the server's default 1 MiB `--max-state-bytes`).
//!
//! Bench shard 0 builds the state first with `set [kN] "<chunk>"` ops, each acked before
//! the next. Then every shard runs `--joiners` loops of join -> full `joined` -> leave ->
//! `left`; the latency is join sent -> whole `joined` received and parsed.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use super::fanout::{read_joined, short_error};
use super::{run_measured, Env};
use crate::conn::{self, ConnError, Incoming, Target, WsReader};
use crate::report::Report;
use crate::runner::{now_us, Sync};
use crate::stats::Stats;
use crate::wire::{self, Proto, ServerView};
use crate::Common;

#[derive(Args, Debug, Clone)]
pub struct BigStateArgs {
    /// Approximate size of the room's state.
    #[arg(long, default_value_t = 1_000_000)]
    pub state_bytes: usize,
    /// Size of each value the state is built from (one per `op`).
    #[arg(long, default_value_t = 32 * 1024)]
    pub chunk_bytes: usize,
    /// Join loops per bench shard.
    #[arg(long, default_value_t = 4)]
    pub joiners: usize,
}

struct Plan {
    target: Target,
    room: String,
    state_bytes: usize,
    chunk_bytes: usize,
    joiners: usize,
    bench_shards: usize,
    warmup: Duration,
    duration: Duration,
}

pub fn big_state_main(common: &Common, args: &BigStateArgs) -> Result<Report> {
    let mut env = Env::setup(common, args.joiners as u64 * 4 + 16)?;
    let plan = Arc::new(Plan {
        target: env.target.clone(),
        room: format!("big{}", env.run_id),
        state_bytes: args.state_bytes,
        chunk_bytes: args.chunk_bytes.max(1),
        joiners: args.joiners.max(1),
        bench_shards: env.bench_cpus.len(),
        warmup: common.warmup,
        duration: common.duration,
    });
    let title = format!(
        "join of a {} B room, {} joiner(s) per bench shard, {}",
        args.state_bytes, plan.joiners, common.proto
    );
    let params = json!({
        "state_bytes": args.state_bytes, "chunk_bytes": plan.chunk_bytes, "joiners": plan.joiners,
        "proto": common.proto, "duration_s": common.duration.as_secs_f64(),
        "warmup_s": common.warmup.as_secs_f64(),
    });
    let sync = Arc::new(Sync::default());
    let (p, s) = (plan.clone(), sync.clone());
    let (stats, samples) = run_measured(&env, common, sync, move |id| {
        shard(id, p.clone(), s.clone())
    })?;
    let mut report = env.report("big-state", title, params, stats, &samples);
    let joins = report.stats.get("joins");
    report.metric(
        "joins_per_s",
        joins as f64 / common.duration.as_secs_f64(),
        "full-state joins/s (window)",
    );
    report.metric(
        "state_bytes_built",
        report.stats.get("state_bytes") as f64,
        "state built (bytes of values)",
    );
    report.finish_usage(0);
    env.finish(report, common)
}

async fn shard(id: usize, plan: Arc<Plan>, sync: Arc<Sync>) -> Stats {
    let mut stats = Stats::default();
    let room = wire::room_id(&plan.room);
    if id == 0 {
        if let Err(e) = build(&plan, &room, &mut stats).await {
            stats.add(&format!("build_error:{}", short_error(&e)), 1);
            sync.aborted
                .store(true, std::sync::atomic::Ordering::Release);
            return stats;
        }
    }
    let Some(start) = sync
        .barrier(1, plan.bench_shards, Duration::from_millis(100))
        .await
    else {
        return stats;
    };
    let from = start + plan.warmup.as_micros() as u64;
    let end = from + plan.duration.as_micros() as u64;
    let tasks: Vec<_> = (0..plan.joiners)
        .map(|j| {
            let plan = plan.clone();
            let room = room.clone();
            glommio::spawn_local(async move {
                let mut stats = Stats::default();
                if let Err(e) =
                    join_loop(&plan, &room, (id * 1000 + j) as u64, from, end, &mut stats).await
                {
                    stats.add(&format!("join_error:{}", short_error(&e)), 1);
                }
                stats
            })
        })
        .collect();
    for t in tasks {
        stats.merge(t.await);
    }
    stats.add("joins", 0);
    stats
}

async fn build(
    plan: &Plan,
    room: &kasagi::protocol::RoomId,
    stats: &mut Stats,
) -> Result<(), ConnError> {
    let proto = plan.target.proto;
    let (mut r, mut w) = conn::connect(&plan.target, 0xB16).await?;
    w.send_with(proto, |out| wire::encode_join(out, proto, room))
        .await?;
    read_joined(&mut r, proto, room).await?;
    let chunk = "x".repeat(plan.chunk_bytes);
    let mut built = 0;
    let mut seq = 0;
    while built + plan.chunk_bytes <= plan.state_bytes {
        seq += 1;
        let key = format!("k{seq}");
        let value = kasagi::value::Value::Str(chunk.clone());
        w.send_with(proto, |out| {
            wire::encode_set(out, proto, room, seq, &key, value)
        })
        .await?;
        if !wait_ack(&mut r, proto, seq, stats).await? {
            break;
        }
        built += plan.chunk_bytes;
    }
    stats.add("state_bytes", built as u64);
    let _ = w.close(1000).await;
    Ok(())
}

/// Reads until the answer to `seq`: `true` for an ack, `false` for an error (counted).
async fn wait_ack(
    r: &mut WsReader,
    proto: Proto,
    seq: u64,
    stats: &mut Stats,
) -> Result<bool, ConnError> {
    loop {
        match r.next_message().await? {
            Incoming::Close(code) => return Err(ConnError::Closed(code)),
            Incoming::Data(p, _) => {
                let view = ServerView::decode(p, proto).map_err(ConnError::Glommio)?;
                match (view.t.as_ref(), view.seq) {
                    ("ack", Some(s)) if s == seq => return Ok(true),
                    ("error", _) => {
                        stats.add(
                            &format!("build_refused_{}", view.code.as_deref().unwrap_or("?")),
                            1,
                        );
                        return Ok(false);
                    }
                    _ => {}
                }
            }
        }
    }
}

async fn join_loop(
    plan: &Plan,
    room: &kasagi::protocol::RoomId,
    nonce: u64,
    from: u64,
    end: u64,
    stats: &mut Stats,
) -> Result<(), ConnError> {
    let proto = plan.target.proto;
    let (mut r, mut w) = conn::connect(&plan.target, nonce).await?;
    loop {
        let t0 = now_us();
        if t0 >= end {
            return Ok(());
        }
        w.send_with(proto, |out| wire::encode_join(out, proto, room))
            .await?;
        read_joined(&mut r, proto, room).await?;
        if t0 >= from {
            stats.record("join", now_us().saturating_sub(t0));
            stats.add("joins", 1);
        }
        w.send_with(proto, |out| wire::encode_leave(out, proto, room))
            .await?;
        loop {
            match r.next_message().await? {
                Incoming::Close(code) => return Err(ConnError::Closed(code)),
                Incoming::Data(p, _) => {
                    let view = ServerView::decode(p, proto).map_err(ConnError::Glommio)?;
                    if view.t == "left" {
                        break;
                    }
                }
            }
        }
    }
}
