//! The scenarios, and what they share: where the server is (started by the bench or
//! given by URL), the run's resources, and turning shard outputs into a [`Report`].

mod big_state;
mod fanout;
mod idle;
mod jitter;
mod join_storm;
mod telemetry_cost;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;

use crate::conn::Target;
use crate::report::{Report, ServerUsage, Usage};
use crate::runner::{run_shards, spawn_sampler, Sync, WindowSamples};
use crate::server::ServerProcess;
use crate::stats::Stats;
use crate::{bench_cpus, procfs, Common, Watched};

pub use big_state::{big_state_main, BigStateArgs};
pub use idle::{idle_main, IdleArgs};
pub use jitter::{jitter_main, JitterArgs};
pub use join_storm::{join_storm_main, JoinStormArgs};
pub use telemetry_cost::{telemetry_cost_main, TelemetryCostArgs};

/// The server under test and the bench's own resources.
pub struct Env {
    pub target: Target,
    pub server: Option<ServerProcess>,
    pub server_shards: usize,
    pub server_cores: usize,
    /// The server's CPUs when the bench pinned it (to watch for other load on them).
    pub server_cpus: Vec<usize>,
    pub bench_cpus: Vec<usize>,
    /// Other processes whose CPU the report gives (`--watch`).
    pub watched: Vec<Watched>,
    pub run_id: String,
    pub notes: Vec<String>,
}

impl Env {
    /// Raises `RLIMIT_NOFILE` to hold `sockets` (before starting the server, which inherits
    /// it), starts or locates the server.
    pub fn setup(common: &Common, sockets: u64) -> Result<Env> {
        let mut notes = Vec::new();
        let wanted = sockets + 1024;
        let got = procfs::raise_nofile(wanted);
        if got < wanted {
            notes.push(format!(
                "RLIMIT_NOFILE is {got}, below the {wanted} this run wants: connections may fail"
            ));
        }
        if let Some(dir) = &common.out {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let bench_cpus = bench_cpus(common)?;
        let server_shards = shards_in_args(&common.server_args)
            .or(common.server_shards)
            .unwrap_or(1);
        let (addr, path, server) = match (&common.url, &common.server_bin) {
            (Some(url), _) => {
                let (addr, path) = parse_ws_url(url)?;
                (addr, path, None)
            }
            (None, Some(bin)) => {
                let server = ServerProcess::start(
                    bin,
                    common.server_cpus.as_deref(),
                    &common.server_args,
                    common.out.as_deref(),
                )?;
                notes.push(format!("server: {}", server.command_line));
                if !common.server_args.contains("--rate-limit") {
                    notes.push("server rate limit left at its default (200 msg/s)".into());
                } else {
                    notes.push("server started with a raised rate limit (see command)".into());
                }
                (server.addr, "/ws".to_owned(), Some(server))
            }
            (None, None) => bail!("give --url ws://127.0.0.1:PORT/ws or --server-bin PATH"),
        };
        let server_cpus = match (&common.server_cpus, &server) {
            (Some(list), Some(_)) => {
                kasagi_shards::parse_cpu_list(list).context("--server-cpus")?
            }
            _ => Vec::new(),
        };
        let server_cores = if server_cpus.is_empty() {
            server_shards
        } else {
            server_cpus.len()
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let run_id = format!("{:x}{:x}", now % 0xFFFF_FFFF, std::process::id() % 0xFFFF);
        if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
            // Other work on the machine skews every number: say how busy it was.
            notes.push(format!("load average at start: {}", load.trim()));
        }
        notes.push(format!(
            "bench on CPUs {:?} ({} shard(s)), subprotocol {}, {} readiness",
            bench_cpus,
            bench_cpus.len(),
            common.proto,
            common.readiness.name()
        ));
        Ok(Env {
            target: Target {
                addr,
                host: addr.to_string(),
                path,
                proto: common.proto,
                readiness: common.readiness,
            },
            server,
            server_shards,
            server_cores,
            server_cpus,
            bench_cpus,
            watched: common.watch.clone(),
            run_id,
            notes,
        })
    }

    pub fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().map(|s| s.pid)
    }

    /// Fills the report's resource use from the window samples.
    pub fn usage(&self, samples: &WindowSamples) -> Usage {
        let server = match (&self.server, samples.server_before, samples.server_after) {
            (Some(s), Some(before), Some(after)) => Some(ServerUsage {
                before,
                after,
                cores: self.server_cores,
                command_line: s.command_line.clone(),
            }),
            _ => None,
        };
        Usage {
            server_cpus_busy: (!self.server_cpus.is_empty()).then_some(samples.server_cpus_busy),
            bench_cpus_busy: samples.bench_cpus_busy,
            window_seconds: samples.measured_seconds,
            bench_cpu_seconds: samples.bench_cpu.as_secs_f64(),
            bench_cores: self.bench_cpus.len(),
            server,
            watched: self
                .watched
                .iter()
                .zip(samples.watched_cpu.iter().chain(std::iter::repeat(&None)))
                .map(|(w, &cpu)| (w.clone(), cpu))
                .collect(),
        }
    }

    /// A scenario's report holding the run's notes, counters, histograms and resources.
    pub fn report(
        &mut self,
        scenario: &str,
        title: String,
        params: serde_json::Value,
        stats: Stats,
        samples: &WindowSamples,
    ) -> Report {
        let mut report = Report::new(scenario, title, params);
        report
            .params
            .insert("readiness".into(), self.target.readiness.name().into());
        report.notes = std::mem::take(&mut self.notes);
        report.stats = stats;
        report.usage = self.usage(samples);
        report
    }

    /// What every scenario ends with: the counter and server checks, then the files under
    /// `--out`.
    pub fn finish(&mut self, mut report: Report, common: &Common) -> Result<Report> {
        check_counters(&mut report);
        self.check_server(&mut report);
        match crate::telemetry::fetch(self.target.addr) {
            Ok(telemetry) => report.server_latency = telemetry,
            Err(e) => report.notes.push(format!(
                "the server's latency telemetry was not read: {e:#}"
            )),
        }
        if let Some(dir) = &common.out {
            report.write_files(dir)?;
        }
        Ok(report)
    }

    /// Checks the server survived the run (a crash is a failure).
    pub fn check_server(&mut self, report: &mut Report) {
        if let Some(s) = &mut self.server {
            if !s.alive() {
                report
                    .failures
                    .push("the server process exited during the run".into());
            }
        }
    }
}

fn shards_in_args(args: &str) -> Option<usize> {
    let words: Vec<&str> = args.split_whitespace().collect();
    words.iter().enumerate().find_map(|(i, w)| {
        if let Some(v) = w.strip_prefix("--shards=") {
            v.parse().ok()
        } else if *w == "--shards" {
            words.get(i + 1).and_then(|v| v.parse().ok())
        } else {
            None
        }
    })
}

/// `ws://HOST:PORT/PATH` on loopback only: the bench never loads other hosts.
fn parse_ws_url(url: &str) -> Result<(SocketAddr, String)> {
    let rest = url
        .strip_prefix("ws://")
        .with_context(|| format!("{url}: only ws:// URLs"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/ws".to_owned()),
    };
    let addr = hostport
        .to_socket_addrs()
        .with_context(|| format!("resolving {hostport}"))?
        .next()
        .with_context(|| format!("{hostport} resolves to nothing"))?;
    if !addr.ip().is_loopback() {
        bail!("{addr} is not a loopback address: the bench only loads local servers");
    }
    Ok((addr, path))
}

/// Runs `shard` on every bench CPU with a sampler over the window; returns merged stats.
pub fn run_measured<F, Fut>(
    env: &Env,
    common: &Common,
    sync: Arc<Sync>,
    shard: F,
) -> Result<(Stats, WindowSamples)>
where
    F: Fn(usize) -> Fut + Send + std::marker::Sync + Clone + 'static,
    Fut: std::future::Future<Output = Stats> + 'static,
{
    let cpus = (env.server_cpus.clone(), env.bench_cpus.clone());
    let sampler = spawn_sampler(
        sync.clone(),
        env.server_pid(),
        env.watched.iter().map(|w| w.pid).collect(),
        cpus,
        common.warmup,
        common.duration,
    );
    let outputs = run_shards(&env.bench_cpus, shard);
    sync.done.store(true, Ordering::Release);
    let samples = sampler.join().unwrap_or_default();
    let mut stats = Stats::default();
    for s in outputs? {
        stats.merge(s);
    }
    Ok((stats, samples))
}

/// Counters whose non-zero value fails a run.
const FAILING_COUNTERS: [&str; 7] = [
    "gaps",
    "missing_deliveries",
    "extra_deliveries",
    "ack_mismatch",
    "decode_errors",
    "unacked_msgs",
    "left_unasked",
];

/// Counter prefixes whose non-zero value fails a run.
const FAILING_PREFIXES: [&str; 7] = [
    "error_",
    "close_",
    "read_error",
    "send_error",
    "connect_error",
    "join_error",
    "echo_error",
];

pub fn check_counters(report: &mut Report) {
    for (name, &v) in &report.stats.counters {
        if v == 0 {
            continue;
        }
        if FAILING_COUNTERS.contains(&name.as_str())
            || FAILING_PREFIXES.iter().any(|p| name.starts_with(p))
        {
            report.failures.push(format!("{name} = {v}"));
        }
    }
    let resyncs = report.stats.get("resyncs");
    if resyncs > 0 {
        report.warnings.push(format!(
            "{resyncs} resync(s): the server dropped deltas for slow clients ({} deliveries); the generator could not keep up",
            report.stats.get("dropped_for_resync")
        ));
    }
    let coalesced = report.stats.get("coalesced_ops");
    if coalesced > 0 {
        report.notes.push(format!(
            "{coalesced} op(s) were coalesced with a later op on the same key in one delta"
        ));
    }
}

#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    /// Rooms.
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Clients per room (every one receives every op of its room).
    #[arg(long, default_value_t = 10)]
    pub clients_per_room: usize,
    /// Messages per second per sending client.
    #[arg(long, default_value_t = 10.0)]
    pub hz: f64,
    /// Ops per `op` message.
    #[arg(long, default_value_t = 1)]
    pub ops_per_msg: usize,
    /// Size of one op on the wire.
    #[arg(long, default_value_t = 100)]
    pub op_bytes: usize,
    /// Sending clients per room (default: all).
    #[arg(long)]
    pub senders_per_room: Option<usize>,
    /// Share of rooms (0..1) whose members all sit on server shards other than the room's
    /// owner (needs a server with several shards).
    #[arg(long, default_value_t = 0.0)]
    pub cross_shard: f64,
    /// Connections being opened at once, per bench shard.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
    /// Also time each delivery at the client's socket (the kernel's receive stamp) and
    /// from the actual send: the `delivery_at_socket` and `wire` histograms, which split
    /// the generator's own lag from the server's. Epoll readiness only. Off by default:
    /// a `recvmsg` per read instead of a `recv` costs a saturated generator enough to
    /// move `delivery` itself (fanout-1core p50 1.3-2.1 ms without, 3.2-3.8 ms with).
    #[arg(long)]
    pub socket_stamps: bool,
}

pub fn fanout_main(common: &Common, args: &FanoutArgs) -> Result<Report> {
    let clients = args.rooms * args.clients_per_room;
    let mut env = Env::setup(common, clients as u64)?;
    let senders = args
        .senders_per_room
        .unwrap_or(args.clients_per_room)
        .min(args.clients_per_room);
    let plan = fanout::Plan {
        target: env.target.clone(),
        run_id: env.run_id.clone(),
        rooms: args.rooms,
        room_size: args.clients_per_room,
        hz: args.hz,
        ops_per_msg: args.ops_per_msg.max(1),
        op_bytes: args.op_bytes,
        senders_per_room: senders,
        cross_shard: args.cross_shard.clamp(0.0, 1.0),
        server_shards: env.server_shards,
        bench_shards: env.bench_cpus.len(),
        connect_concurrency: args.connect_concurrency.max(1),
        warmup: common.warmup,
        duration: common.duration,
        drain: common.drain,
        echo: None,
        socket_stamps: args.socket_stamps,
        in_flight: None,
    };
    let offered_ops = (args.rooms * senders * plan.ops_per_msg) as f64 * args.hz;
    let title = format!(
        "{} rooms x {} clients ({} sending) x {} Hz, {} op(s)/msg of {} B, {}, cross-shard {:.0}%",
        args.rooms,
        args.clients_per_room,
        senders,
        args.hz,
        plan.ops_per_msg,
        args.op_bytes,
        common.proto,
        plan.cross_shard * 100.0
    );
    let params = json!({
        "rooms": args.rooms, "clients_per_room": args.clients_per_room, "senders_per_room": senders,
        "hz": args.hz, "ops_per_msg": plan.ops_per_msg, "op_bytes": args.op_bytes,
        "cross_shard": plan.cross_shard, "proto": common.proto, "server_shards": env.server_shards,
        "duration_s": common.duration.as_secs_f64(), "warmup_s": common.warmup.as_secs_f64(),
        "socket_stamps": args.socket_stamps,
    });
    let plan = Arc::new(plan);
    let sync = Arc::new(Sync::default());
    let (p, s) = (plan.clone(), sync.clone());
    let (stats, samples) = run_measured(&env, common, sync, move |id| {
        fanout::shard(id, p.clone(), s.clone())
    })?;
    let mut report = env.report("fanout", title, params, stats, &samples);
    let window = common.duration.as_secs_f64();
    let delivered = report.stats.get("window_deliveries");
    report.metric(
        "offered_deliveries_per_s",
        offered_ops * args.clients_per_room as f64,
        "offered deliveries/s",
    );
    report.metric(
        "deliveries_per_s",
        delivered as f64 / window,
        "deliveries/s (window)",
    );
    report.metric("offered_ops_per_s", offered_ops, "offered ops/s");
    report.metric("connections", clients as f64, "connections");
    report.finish_usage(delivered);
    env.finish(report, common)
}

#[derive(Args, Debug, Clone)]
pub struct AckArgs {
    /// Clients, each alone in its room (so the ack is not behind any fan-out).
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Messages per second per client (open loop; ignored with `--in-flight`).
    #[arg(long, default_value_t = 10.0)]
    pub hz: f64,
    /// Closed loop instead: each client keeps this many ops unacked and sends the next as
    /// soon as one is answered, so the run measures the most acked ops/s the server
    /// sustains. Each op is then timed from its actual send. No echo unless
    /// `--echo-connections` asks for one (its threads share the server's cores). Up to 8
    /// (the keys a client cycles through) no two ops of a client in flight share a key;
    /// past that the server coalesces them and acks/s counts merged ops.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub in_flight: Option<u64>,
    /// Size of one op on the wire.
    #[arg(long, default_value_t = 100)]
    pub op_bytes: usize,
    /// Bare TCP echo connections measured alongside, at the same rate per connection
    /// (default: as many as `--clients`, so both p99s come from as many round trips; with
    /// 16 the echo's p99 rested on its 13 slowest of 1,280 and the ratio of three runs
    /// spread over 0.93-1.67, against 1.18-1.35 with 100). 0: no echo.
    #[arg(long)]
    pub echo_connections: Option<usize>,
}

pub fn ack_main(common: &Common, args: &AckArgs) -> Result<Report> {
    let in_flight = args.in_flight.map(|n| n as usize);
    let default_echo = if in_flight.is_some() { 0 } else { args.clients };
    let echo_conns = args.echo_connections.unwrap_or(default_echo);
    let mut env = Env::setup(common, args.clients as u64 + echo_conns as u64)?;
    // The echo runs where the server runs, so both round trips cross the same cores.
    let echo = if echo_conns > 0 {
        if !env.server_cpus.is_empty() {
            env.notes.push(format!(
                "echo threads pinned to the server's CPUs {:?}",
                env.server_cpus
            ));
        }
        Some((spawn_echo_server(env.server_cpus.clone())?, echo_conns))
    } else {
        None
    };
    let plan = Arc::new(fanout::Plan {
        target: env.target.clone(),
        run_id: env.run_id.clone(),
        rooms: args.clients,
        room_size: 1,
        hz: args.hz,
        ops_per_msg: 1,
        op_bytes: args.op_bytes,
        senders_per_room: 1,
        cross_shard: 0.0,
        server_shards: 1,
        bench_shards: env.bench_cpus.len(),
        connect_concurrency: 128,
        warmup: common.warmup,
        duration: common.duration,
        drain: common.drain,
        echo,
        // The echo's reads are plain `recv`s: the acks' reads stay the same for the ratio.
        socket_stamps: false,
        in_flight,
    });
    let pace = match in_flight {
        Some(n) => format!("closed loop, {n} op(s) in flight each"),
        None => format!("{} Hz", args.hz),
    };
    let title = format!(
        "{} clients x {pace}, rooms of 1, {} B ops, {}; bare TCP echo on {} connection(s)",
        args.clients, args.op_bytes, common.proto, echo_conns
    );
    let params = json!({
        "clients": args.clients, "hz": in_flight.is_none().then_some(args.hz),
        "in_flight": in_flight, "op_bytes": args.op_bytes,
        "echo_connections": echo_conns, "proto": common.proto,
        "duration_s": common.duration.as_secs_f64(), "warmup_s": common.warmup.as_secs_f64(),
    });
    let sync = Arc::new(Sync::default());
    let (p, s) = (plan.clone(), sync.clone());
    let (stats, samples) = run_measured(&env, common, sync, move |id| {
        fanout::shard(id, p.clone(), s.clone())
    })?;
    let mut report = env.report("ack", title, params, stats, &samples);
    let p99 = |name: &str| {
        report
            .stats
            .histograms
            .get(name)
            .filter(|h| !h.is_empty())
            .map(|h| h.value_at_percentile(99.0) as f64)
    };
    if let (Some(ack), Some(echo)) = (p99("ack"), p99("echo")) {
        let ratio = ack / echo.max(1.0);
        report.metric(
            "ack_p99_over_echo_p99",
            ratio,
            "ack p99 / bare TCP echo p99",
        );
        if ratio > 1.5 {
            report.warnings.push(format!(
                "ack p99 is {ratio:.2}x the bare loopback round trip (target <= 1.5x)"
            ));
        }
    }
    let coalesced = report.stats.get("coalesced_ops");
    if in_flight.is_some() && coalesced > 0 {
        report.warnings.push(format!(
            "{coalesced} op(s) coalesced with a later op of the same client on the same key: \
             acks/s counts ops the server merged (keep --in-flight at most {})",
            fanout::SLOTS
        ));
    }
    if in_flight.is_none() {
        report.metric(
            "offered_ops_per_s",
            args.clients as f64 * args.hz,
            "offered ops/s",
        );
    }
    report.metric(
        "acks_per_s",
        report.stats.histograms.get("ack").map_or(0, |h| h.len()) as f64
            / common.duration.as_secs_f64(),
        "acks/s (window)",
    );
    report.finish_usage(0);
    env.finish(report, common)
}

/// A bare TCP echo on loopback: one thread per connection, reading and writing back,
/// pinned to `cpus` when given.
fn spawn_echo_server(cpus: Vec<usize>) -> Result<SocketAddr> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding the echo server")?;
    let addr = listener.local_addr()?;
    std::thread::Builder::new()
        .name("bench-echo".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_nodelay(true);
                let cpus = cpus.clone();
                let _ = std::thread::Builder::new()
                    .name("bench-echo-conn".into())
                    .spawn(move || {
                        // Unpinned if refused: the echo still answers.
                        let _ = pin_current_thread(&cpus);
                        let mut buf = [0u8; 4096];
                        loop {
                            match stream.read(&mut buf) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    if stream.write_all(&buf[..n]).is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    });
            }
        })
        .context("spawning the echo server")?;
    Ok(addr)
}

/// Pins the calling thread to `cpus` (nothing when empty).
///
/// # Errors
///
/// A CPU beyond the set's size, or the kernel refusing the affinity.
pub(crate) fn pin_current_thread(cpus: &[usize]) -> nix::Result<()> {
    use nix::sched::{sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    if cpus.is_empty() {
        return Ok(());
    }
    let mut set = CpuSet::new();
    for &cpu in cpus {
        set.set(cpu)?;
    }
    sched_setaffinity(Pid::from_raw(0), &set)
}
