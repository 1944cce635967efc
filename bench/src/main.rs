//! `kasagi-bench`: an open-loop load generator for Kasagi with HDR latency reports.
//!
//! # Layout
//!
//! - [`wsclient`]: the client side of RFC 6455, sans-IO (upgrade, masked writer, reader).
//! - [`conn`]: one client connection on a glommio executor (connect, upgrade, read, send).
//! - [`wire`]: requests encoded with the server library's encoder; a lean view of the
//!   server's messages.
//! - [`runner`]: one pinned executor per bench CPU, the shared clock, the start barrier,
//!   the sampler of CPU and memory at the edges of the measured window.
//! - [`scenario`]: `fanout`, `ack`, `join-storm`, `idle`, `big-state`.
//! - [`server`]: starting the server under test and reading its `/proc` entries.
//! - [`procfs`]: `/proc` and `getrusage` readings, `RLIMIT_NOFILE`.
//! - [`stats`], [`report`], [`plot`]: counters and histograms; the summary, JSON line,
//!   `.hgrm` files and PNG plot.

mod conn;
mod epoll;
mod msgpack_view;
mod plot;
mod procfs;
mod report;
mod runner;
mod scenario;
mod server;
mod stats;
mod telemetry;
mod wire;
mod wsclient;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::conn::Readiness;
use crate::wire::Proto;

#[derive(Parser, Debug)]
#[command(
    name = "kasagi-bench",
    version,
    about = "Open-loop load generator for Kasagi"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// R rooms x C clients x H Hz: every member receives every op (throughput, latency).
    Fanout {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: scenario::FanoutArgs,
    },
    /// Request -> ack latency at light load, beside a bare loopback TCP echo round trip.
    Ack {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: scenario::AckArgs,
    },
    /// Connections + handshakes + joins per second.
    JoinStorm {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: scenario::JoinStormArgs,
    },
    /// N idle connections: the server's memory per connection.
    Idle {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: scenario::IdleArgs,
    },
    /// Join latency of a room holding a big state.
    BigState {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: scenario::BigStateArgs,
    },
    /// How late a sleeping thread wakes on each CPU: the machine's own latency floor.
    Jitter {
        #[command(flatten)]
        args: scenario::JitterArgs,
    },
    /// What one server latency event costs (clock + HDR record), without a server.
    TelemetryCost {
        #[command(flatten)]
        args: scenario::TelemetryCostArgs,
    },
}

/// Options every scenario takes.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Server to load: ws://HOST:PORT/ws (loopback only). Without it, --server-bin is started.
    #[arg(long)]
    pub url: Option<String>,
    /// Server binary the bench starts itself (and measures from /proc).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// CPUs to pin the started server to (taskset -c LIST).
    #[arg(long)]
    pub server_cpus: Option<String>,
    /// Arguments for `kasagi serve` (after `--listen 127.0.0.1:0`).
    #[arg(long, default_value = server::DEFAULT_SERVER_ARGS, allow_hyphen_values = true)]
    pub server_args: String,
    /// Shards the server runs (read from --server-args when it holds --shards).
    #[arg(long)]
    pub server_shards: Option<usize>,
    /// CPUs for the bench's executors (one shard per CPU), e.g. `1` or `2-3`.
    #[arg(long)]
    pub cpus: Option<String>,
    /// Subprotocol.
    #[arg(long, value_enum, default_value_t = Proto::Msgpack)]
    pub proto: Proto,
    /// How the bench learns that a socket has bytes: `epoll` (one epoll set per shard,
    /// polled; the server's writes never interrupt the generator) or `uring` (glommio's
    /// io_uring polls, which interrupt the generator's core once per wake-up and bill the
    /// server's `send` for it on loopback). See bench/README.md.
    #[arg(long, value_enum, default_value_t = Readiness::Epoll)]
    pub readiness: Readiness,
    /// Measured window.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Time before the window, not measured.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Most time to wait after the window for the last acks and deliveries.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// Folder for summary.txt, result.json, *.hgrm, latency.png (and server.log).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Another process whose CPU time over the window to report, as NAME=PID (e.g. the
    /// Redis a fleet server appends to: part of what the server's work costs). Repeatable.
    #[arg(long = "watch", value_name = "NAME=PID", value_parser = parse_watched)]
    pub watch: Vec<Watched>,
}

/// A process the bench did not start but reports on (`--watch NAME=PID`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    pub name: String,
    pub pid: u32,
}

fn parse_watched(arg: &str) -> Result<Watched, String> {
    let (name, pid) = arg
        .split_once('=')
        .ok_or_else(|| format!("{arg:?}: expected NAME=PID"))?;
    let valid = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if name.is_empty() || !name.chars().all(valid) {
        return Err(format!("{name:?}: a name is letters, digits, '_' or '-'"));
    }
    let pid = pid
        .parse()
        .map_err(|_| format!("{pid:?}: not a process id"))?;
    Ok(Watched {
        name: name.to_owned(),
        pid,
    })
}

fn main() -> ExitCode {
    runner::clock_base();
    let cli = Cli::parse();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("kasagi-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<bool> {
    let report = match cli.scenario {
        Scenario::Fanout { common, args } => scenario::fanout_main(&common, &args)?,
        Scenario::Ack { common, args } => scenario::ack_main(&common, &args)?,
        Scenario::JoinStorm { common, args } => scenario::join_storm_main(&common, &args)?,
        Scenario::Idle { common, args } => scenario::idle_main(&common, &args)?,
        Scenario::BigState { common, args } => scenario::big_state_main(&common, &args)?,
        Scenario::Jitter { args } => scenario::jitter_main(&args)?,
        Scenario::TelemetryCost { args } => scenario::telemetry_cost_main(&args)?,
    };
    print!("{}", report.human());
    println!("{}", report.json());
    Ok(report.ok())
}

/// Parses the bench's CPU list (default: every CPU it may use).
pub fn bench_cpus(common: &Common) -> Result<Vec<usize>> {
    match &common.cpus {
        Some(list) => kasagi_shards::parse_cpu_list(list).context("--cpus"),
        None => {
            let cpus = kasagi_shards::allowed_cpus();
            if cpus.is_empty() {
                bail!("no usable CPU");
            }
            Ok(cpus)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watched_process_is_named_and_numbered() {
        assert_eq!(
            parse_watched("redis=4242"),
            Ok(Watched {
                name: "redis".into(),
                pid: 4242
            })
        );
        assert!(parse_watched("redis").is_err());
        assert!(parse_watched("=4242").is_err());
        assert!(parse_watched("re dis=4242").is_err());
        assert!(parse_watched("redis=-1").is_err());
    }
}
