//! `idle`: N connections that upgrade (and optionally join rooms of `--room-size`), then
//! sit idle. The server's RSS is read before the first connection and after all are open
//! and settled (`--warmup`); the difference over N is the memory per idle connection. At
//! the end a sample of connections pings, to show they are still served.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use super::fanout::{read_joined, short_error};
use super::{run_measured, Env};
use crate::conn::{self, Incoming, Target, WsReader, WsWriter};
use crate::report::Report;
use crate::runner::{sleep_until, Sync};
use crate::stats::Stats;
use crate::wire::{self, ServerView};
use crate::Common;

/// File descriptors a process needs besides its sockets (io_uring rings, eventfds, logs).
const IDLE_FD_HEADROOM: u64 = 64;

#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    /// Connections to hold.
    #[arg(long, default_value_t = 20_000)]
    pub connections: usize,
    /// Join rooms of this many members (0: upgrade only, no room).
    #[arg(long, default_value_t = 0)]
    pub room_size: usize,
    /// Connections being opened at once, per bench shard.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Connections that ping at the end (spread over the shards).
    #[arg(long, default_value_t = 100)]
    pub pings: usize,
}

struct Plan {
    target: Target,
    run_id: String,
    connections: usize,
    room_size: usize,
    concurrency: usize,
    pings: usize,
    bench_shards: usize,
    warmup: Duration,
    duration: Duration,
}

pub fn idle_main(common: &Common, args: &IdleArgs) -> Result<Report> {
    let mut env = Env::setup(common, args.connections as u64)?;
    // Server and bench each hold one socket per connection under the same limit (the
    // server inherits it): past it the server's accepts fail and the run says nothing
    // about memory. Hold fewer, and say so.
    let limit = crate::procfs::nofile_limit();
    let mut args = args.clone();
    let room = limit.saturating_sub(IDLE_FD_HEADROOM) as usize;
    if env.server.is_some() && args.connections > room {
        env.notes.push(format!(
            "RLIMIT_NOFILE is {limit} and cannot be raised here: holding {room} connections instead of {}",
            args.connections
        ));
        args.connections = room;
    }
    let args = &args;
    // Let the server finish starting before the baseline.
    std::thread::sleep(Duration::from_millis(300));
    let baseline = match &env.server {
        Some(s) => Some(
            s.sample()
                .context("sampling the server before connecting")?,
        ),
        None => None,
    };
    let plan = Arc::new(Plan {
        target: env.target.clone(),
        run_id: env.run_id.clone(),
        connections: args.connections,
        room_size: args.room_size,
        concurrency: args.connect_concurrency.max(1),
        pings: args.pings,
        bench_shards: env.bench_cpus.len(),
        warmup: common.warmup,
        duration: common.duration,
    });
    let title = format!(
        "{} idle connections{}, {}",
        args.connections,
        if args.room_size > 0 {
            format!(" in rooms of {}", args.room_size)
        } else {
            String::new()
        },
        common.proto
    );
    let params = json!({
        "connections": args.connections, "room_size": args.room_size, "proto": common.proto,
        "duration_s": common.duration.as_secs_f64(), "settle_s": common.warmup.as_secs_f64(),
    });
    let sync = Arc::new(Sync::default());
    let (p, s) = (plan.clone(), sync.clone());
    let (stats, samples) = run_measured(&env, common, sync, move |id| {
        shard(id, p.clone(), s.clone())
    })?;
    let mut report = env.report("idle", title, params, stats, &samples);
    let open = report.stats.get("connected");
    report.metric("connections_open", open as f64, "connections open");
    if let (Some(base), Some(settled)) = (baseline, samples.server_before) {
        report.metric(
            "server_rss_kib_baseline",
            base.rss_kib as f64,
            "server RSS before connecting (KiB)",
        );
        let per =
            (settled.rss_kib.saturating_sub(base.rss_kib)) as f64 * 1024.0 / open.max(1) as f64;
        report.metric(
            "server_bytes_per_idle_connection",
            per,
            "server RSS per idle connection (bytes)",
        );
        if per > 2048.0 {
            report.warnings.push(format!(
                "{per:.0} bytes per idle connection (target <= 2048)"
            ));
        }
    }
    report.finish_usage(0);
    if open < args.connections as u64 {
        report.failures.push(format!(
            "only {open} of {} connections opened",
            args.connections
        ));
    }
    let (pings, pongs) = (report.stats.get("pings"), report.stats.get("pongs"));
    if pongs < pings {
        report
            .failures
            .push(format!("{pings} pings, {pongs} pongs"));
    }
    env.finish(report, common)
}

async fn shard(id: usize, plan: Arc<Plan>, sync: Arc<Sync>) -> Stats {
    let stats = Rc::new(RefCell::new(Stats::default()));
    let mine: Vec<usize> = (0..plan.connections)
        .filter(|i| i % plan.bench_shards == id)
        .collect();
    let mut writers: Vec<WsWriter> = Vec::with_capacity(mine.len());
    for chunk in mine.chunks(plan.concurrency) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|&i| {
                let plan = plan.clone();
                glommio::spawn_local(async move {
                    let proto = plan.target.proto;
                    let (mut r, mut w) = conn::connect(&plan.target, i as u64).await?;
                    if let Some(n) = i.checked_div(plan.room_size) {
                        let room = wire::room_id(&format!("i{}-{}", plan.run_id, n));
                        w.send_with(proto, |out| wire::encode_join(out, proto, &room))
                            .await?;
                        read_joined(&mut r, proto, &room).await?;
                    }
                    Ok::<(WsReader, WsWriter), conn::ConnError>((r, w))
                })
            })
            .collect();
        for t in tasks {
            match t.await {
                Ok((r, w)) => {
                    stats.borrow_mut().add("connected", 1);
                    glommio::spawn_local(listen(stats.clone(), r, plan.target.proto)).detach();
                    writers.push(w);
                }
                Err(e) => stats
                    .borrow_mut()
                    .add(&format!("connect_error:{}", short_error(&e)), 1),
            }
        }
    }
    let Some(start) = sync
        .barrier(1, plan.bench_shards, Duration::from_millis(10))
        .await
    else {
        return stats.borrow().clone();
    };
    let end = start + (plan.warmup + plan.duration).as_micros() as u64;
    sleep_until(end).await;
    let per_shard = plan.pings.div_ceil(plan.bench_shards);
    let step = (writers.len() / per_shard.max(1)).max(1);
    let proto = plan.target.proto;
    for w in writers.iter_mut().step_by(step).take(per_shard) {
        stats.borrow_mut().add("pings", 1);
        let ping = kasagi::protocol::ClientMessage::Ping {
            id: kasagi::value::Value::Int(1),
        };
        let sent = w
            .send_with(proto, |out| {
                kasagi::protocol::encode_client_into(&ping, proto.subprotocol(), out)
            })
            .await;
        if let Err(e) = sent {
            stats
                .borrow_mut()
                .add(&format!("send_error:{}", short_error(&e)), 1);
        }
    }
    let deadline = crate::runner::now_us() + 2_000_000;
    while crate::runner::now_us() < deadline {
        let answered = {
            let s = stats.borrow();
            s.get("pongs") >= s.get("pings")
        };
        if answered {
            break;
        }
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    stats.borrow_mut().add("pongs", 0);
    let out = stats.borrow().clone();
    out
}

async fn listen(stats: Rc<RefCell<Stats>>, mut reader: WsReader, proto: wire::Proto) {
    loop {
        match reader.next_message().await {
            Ok(Incoming::Data(p, _)) => {
                if let Ok(view) = ServerView::decode(p, proto) {
                    if view.t == "pong" {
                        stats.borrow_mut().add("pongs", 1);
                    }
                }
            }
            Ok(Incoming::Close(code)) => {
                let key = format!("close_{}", code.map_or("none".into(), |c| c.to_string()));
                stats.borrow_mut().add(&key, 1);
                return;
            }
            Err(e) => {
                stats
                    .borrow_mut()
                    .add(&format!("read_error:{}", short_error(&e)), 1);
                return;
            }
        }
    }
}
