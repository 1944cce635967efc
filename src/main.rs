//! The `kasagi` binary: `kasagi serve` runs the server, `kasagi echo` the RFC 6455 echo
//! server used for conformance runs. Flags are parsed here only, into one `Config`.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use kasagi::config::{Config, Limits, RedisConfig};
use kasagi::server::{self, Mode};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "kasagi",
    version,
    about = "Real-time state synchronization server"
)]
struct Cli {
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `kasagi=debug`.
    #[arg(long, env = "KASAGI_LOG", default_value = "info", global = true)]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve rooms over WebSocket: alone with state in memory, or with `--redis` as one
    /// instance of a fleet.
    Serve(Box<ServeArgs>),
    /// Echo every WebSocket message back, on any path (for the Autobahn conformance run).
    Echo(EchoArgs),
}

#[derive(Args)]
struct RuntimeArgs {
    /// Number of shards (one executor per core). Default: all online cores.
    #[arg(long, env = "KASAGI_SHARDS")]
    shards: Option<usize>,
    /// CPUs to pin shards to, e.g. `0,2-3`: shard i runs on the i-th CPU of the list.
    #[arg(long, env = "KASAGI_CPUS")]
    cpus: Option<String>,
}

#[derive(Args)]
struct EchoArgs {
    /// Address to listen on.
    #[arg(long, env = "KASAGI_LISTEN", default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on (every shard binds it with SO_REUSEPORT).
    #[arg(long, env = "KASAGI_LISTEN", default_value = "0.0.0.0:7700")]
    listen: SocketAddr,
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Largest WebSocket frame payload in bytes (close 1009 past it).
    #[arg(long, env = "KASAGI_MAX_FRAME_BYTES", default_value_t = 65536)]
    max_frame_bytes: usize,
    /// Largest message in bytes, all fragments together (close 1009 past it).
    #[arg(long, env = "KASAGI_MAX_MESSAGE_BYTES", default_value_t = 65536)]
    max_message_bytes: usize,
    /// Most fragments in one message (close 1009 past it).
    #[arg(long, env = "KASAGI_MAX_FRAGMENTS", default_value_t = 128)]
    max_fragments: usize,
    /// Most ops in one `op` message (`too_large` past it).
    #[arg(long, env = "KASAGI_MAX_OPS_PER_MESSAGE", default_value_t = 256)]
    max_ops_per_message: usize,
    /// Deepest path an op may use (`too_large` past it).
    #[arg(long, env = "KASAGI_MAX_PATH_DEPTH", default_value_t = 32)]
    max_path_depth: usize,
    /// Largest room state in bytes, about its MessagePack size (`too_large` past it).
    #[arg(long, env = "KASAGI_MAX_STATE_BYTES", default_value_t = 1048576)]
    max_state_bytes: usize,
    /// Most rooms one connection may be in.
    #[arg(long, env = "KASAGI_MAX_ROOMS_PER_CONNECTION", default_value_t = 64)]
    max_rooms_per_connection: usize,
    /// Most members in one room (`room_full` past it).
    #[arg(long, env = "KASAGI_MAX_MEMBERS_PER_ROOM", default_value_t = 10000)]
    max_members_per_room: usize,
    /// Messages per second per connection (token bucket refill rate).
    #[arg(long, env = "KASAGI_RATE_LIMIT", default_value_t = 200)]
    rate_limit: u32,
    /// Token bucket size: messages a connection may send at once.
    #[arg(long, env = "KASAGI_RATE_BURST", default_value_t = 400)]
    rate_burst: u32,
    /// Refused messages, without the bucket refilling to full, before close 1008.
    #[arg(long, env = "KASAGI_RATE_ABUSE_LIMIT", default_value_t = 1000)]
    rate_abuse_limit: u32,
    /// Bytes queued per connection before its deltas are dropped for a snapshot.
    #[arg(long, env = "KASAGI_OUTBOUND_QUEUE_BYTES", default_value_t = 1048576)]
    outbound_queue_bytes: usize,
    /// Deltas kept per room for resumed joins.
    #[arg(long, env = "KASAGI_RESUME_WINDOW", default_value_t = 1024)]
    resume_window: usize,
    /// How long an empty room is kept (e.g. `30s`, `2m`).
    #[arg(long, env = "KASAGI_ROOM_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    room_grace: Duration,
    /// Time allowed for the HTTP request / upgrade.
    #[arg(long, env = "KASAGI_HANDSHAKE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    handshake_timeout: Duration,
    /// Largest request header block in bytes, request line included (431 past it).
    #[arg(long, env = "KASAGI_MAX_HEADER_BYTES", default_value_t = 8192)]
    max_header_bytes: usize,
    /// Most request headers (431 past it).
    #[arg(long, env = "KASAGI_MAX_HEADERS", default_value_t = 64)]
    max_headers: usize,
    /// An origin allowed to open a WebSocket (repeatable; none given: any origin).
    #[arg(
        long = "allowed-origin",
        env = "KASAGI_ALLOWED_ORIGIN",
        value_delimiter = ','
    )]
    allowed_origins: Vec<String>,
    /// HS256 secret: when set, every upgrade needs a valid JWT (`?token=` or Bearer).
    #[arg(long, env = "KASAGI_AUTH_SECRET", hide_env_values = true)]
    auth_secret: Option<String>,
    /// How long a drain (SIGTERM/SIGINT) waits for connections to close.
    #[arg(long, env = "KASAGI_DRAIN_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Listen backlog of each shard's socket.
    #[arg(long, env = "KASAGI_BACKLOG", default_value_t = 1024)]
    backlog: i32,
    /// Messages each cross-shard channel holds; past it a sender queues in order (README,
    /// "Shards and routing").
    #[arg(long, env = "KASAGI_MESH_CAPACITY", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    mesh_capacity: u32,
    /// Busy-poll this long before an idle shard sleeps (e.g. `50us`); 0 sleeps at once.
    /// Cuts wake-up latency on dedicated cores, burns them while idle. Pinned shards only.
    #[arg(long, env = "KASAGI_SPIN_BEFORE_PARK", default_value = "0s", value_parser = humantime::parse_duration)]
    spin_before_park: Duration,
    #[command(flatten)]
    fleet: FleetArgs,
}

/// Several instances behind Redis (README, "Several instances (Redis)").
#[derive(Args)]
struct FleetArgs {
    /// Redis URL (`redis://host:port/db`): run as one instance of a fleet. None: alone, in memory.
    #[arg(long, env = "KASAGI_REDIS")]
    redis: Option<String>,
    /// This instance's name in leases and request ids. Default: hostname-pid-random.
    #[arg(long, env = "KASAGI_INSTANCE_ID")]
    instance_id: Option<String>,
    /// How long a room's ownership lease lives without renewal (renewed every third).
    #[arg(long, env = "KASAGI_LEASE_TTL", default_value = "3s", value_parser = humantime::parse_duration)]
    lease_ttl: Duration,
    /// Send an `ack` only once the delta holding the op is in the Redis log.
    #[arg(long, env = "KASAGI_DURABLE_ACKS", default_value_t = true, action = clap::ArgAction::Set)]
    durable_acks: bool,
    /// Write a room snapshot after this many ticks...
    #[arg(long, env = "KASAGI_SNAPSHOT_EVERY_TICKS", default_value_t = 256)]
    snapshot_every_ticks: u64,
    /// ...or this long after the last one, whichever comes first.
    #[arg(long, env = "KASAGI_SNAPSHOT_EVERY", default_value = "5s", value_parser = humantime::parse_duration)]
    snapshot_every: Duration,
    /// How long a relayed join waits for the owner's answer before it is sent again.
    #[arg(long, env = "KASAGI_RELAY_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    relay_timeout: Duration,
}

fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "kasagi".to_owned());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{host}-{}-{:06x}", std::process::id(), nanos & 0xff_ffff)
}

fn fleet_config(args: &FleetArgs) -> anyhow::Result<Option<RedisConfig>> {
    let Some(url) = &args.redis else {
        return Ok(None);
    };
    kasagi::redis::RedisUrl::parse(url).with_context(|| format!("--redis {url}"))?;
    let instance_id = args.instance_id.clone().unwrap_or_else(default_instance_id);
    // It names Redis connections (`CLIENT SETNAME` takes no spaces) and prefixes member ids.
    let valid = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-');
    if instance_id.is_empty() || instance_id.len() > 128 || !instance_id.bytes().all(valid) {
        bail!("--instance-id must be 1 to 128 bytes of A-Z a-z 0-9 _ . : -");
    }
    if args.lease_ttl < Duration::from_millis(300) {
        bail!("--lease-ttl must be at least 300ms");
    }
    Ok(Some(RedisConfig {
        lease_ttl: args.lease_ttl,
        durable_acks: args.durable_acks,
        snapshot_every_ticks: args.snapshot_every_ticks.max(1),
        snapshot_every: args.snapshot_every,
        relay_timeout: args.relay_timeout,
        ..RedisConfig::new(url.clone(), instance_id)
    }))
}

fn runtime_config(config: &mut Config, args: &RuntimeArgs) -> anyhow::Result<()> {
    if let Some(shards) = args.shards {
        if shards == 0 {
            bail!("--shards must be at least 1");
        }
        config.shards = shards;
    }
    if let Some(list) = &args.cpus {
        let cpus = kasagi_shards::parse_cpu_list(list).with_context(|| format!("--cpus {list}"))?;
        if args.shards.is_none() {
            config.shards = cpus.len();
        }
        config.cpus = Some(cpus);
    }
    Ok(())
}

fn serve_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut config = Config {
        listen: args.listen,
        backlog: args.backlog,
        mesh_capacity: args.mesh_capacity as usize,
        spin_before_park: (!args.spin_before_park.is_zero()).then_some(args.spin_before_park),
        allowed_origins: args.allowed_origins.clone(),
        auth_secret: args.auth_secret.clone(),
        drain_timeout: args.drain_timeout,
        redis: fleet_config(&args.fleet)?,
        limits: Limits {
            max_frame_bytes: args.max_frame_bytes,
            max_message_bytes: args.max_message_bytes,
            max_fragments: args.max_fragments,
            max_ops_per_message: args.max_ops_per_message,
            max_path_depth: args.max_path_depth,
            max_state_bytes: args.max_state_bytes,
            max_rooms_per_connection: args.max_rooms_per_connection,
            max_members_per_room: args.max_members_per_room,
            rate_limit: args.rate_limit,
            rate_burst: args.rate_burst,
            rate_abuse_limit: args.rate_abuse_limit,
            outbound_queue_bytes: args.outbound_queue_bytes,
            resume_window: args.resume_window,
            room_grace: args.room_grace,
            handshake_timeout: args.handshake_timeout,
            max_header_bytes: args.max_header_bytes,
            max_headers: args.max_headers,
        },
        ..Config::default()
    };
    runtime_config(&mut config, &args.runtime)?;
    if config.limits.max_frame_bytes > config.limits.max_message_bytes {
        bail!("--max-frame-bytes cannot exceed --max-message-bytes");
    }
    Ok(config)
}

fn echo_config(args: &EchoArgs) -> anyhow::Result<Config> {
    let mut config = Config {
        listen: args.listen,
        ..Config::default()
    };
    runtime_config(&mut config, &args.runtime)?;
    Ok(config)
}

/// Sets `stop` on the first SIGTERM or SIGINT; a second one exits at once.
fn install_signals(stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .context("installing signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if stop.swap(true, Ordering::SeqCst) {
                    tracing::warn!(signal, "second signal: exiting now");
                    std::process::exit(1);
                }
                tracing::info!(signal, "draining");
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&cli.log).context("--log")?)
        .with_writer(std::io::stderr)
        .init();
    let (config, mode) = match &cli.command {
        Command::Serve(args) => (serve_config(args)?, Mode::Serve),
        Command::Echo(args) => (echo_config(args)?, Mode::Echo),
    };
    let stop = Arc::new(AtomicBool::new(false));
    install_signals(stop.clone())?;
    let shards = config.shards;
    server::run(config, mode, stop, |addr| {
        tracing::info!(%addr, shards, "listening");
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "kasagi listening on {addr}");
        let _ = stdout.flush();
    })?;
    Ok(())
}
