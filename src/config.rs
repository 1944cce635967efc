//! The one server configuration.
//!
//! `main` builds a [`Config`] from flags and `KASAGI_*` environment variables and hands a
//! copy to every shard; nothing else reads the environment. Every default is documented
//! here and in the README's configuration table.

use std::net::SocketAddr;
use std::time::Duration;

/// Everything a shard needs to serve.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address every shard listens on with `SO_REUSEPORT`. Default `0.0.0.0:7700`.
    pub listen: SocketAddr,
    /// Number of shards (executors). Default: all online cores.
    pub shards: usize,
    /// CPUs to pin shards to (shard i on `cpus[i % len]`). Default: shard i on CPU i.
    pub cpus: Option<Vec<usize>>,
    /// Listen backlog per shard socket. Default 1024.
    pub backlog: i32,
    /// Busy-poll this long before an idle shard sleeps. Default `None` (sleep at once).
    pub spin_before_park: Option<Duration>,
    /// Capacity of each cross-shard channel. Default 1024 messages.
    pub mesh_capacity: usize,
    pub limits: Limits,
    /// Origins allowed to open a WebSocket; empty means any. Default empty.
    pub allowed_origins: Vec<String>,
    /// HS256 secret; when set every upgrade needs a valid JWT. Default none.
    pub auth_secret: Option<String>,
    /// How long a drain (SIGTERM/SIGINT) waits for clients to close. Default 3 s.
    pub drain_timeout: Duration,
    /// Several instances behind Redis (see `server::fleet`); `None` is the embedded,
    /// in-memory single instance. Default `None`.
    pub redis: Option<RedisConfig>,
}

/// How an instance of a fleet uses Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[user][:password@]host[:port][/db]`.
    pub url: String,
    /// This instance's name: the value of the leases it holds, and part of the addresses of
    /// its connections in other instances. Default `<hostname>-<pid>-<random>`.
    pub instance_id: String,
    /// How long a room's lease lives without renewal (renewed every third of it). Default 3 s.
    pub lease_ttl: Duration,
    /// An `ack` goes out only once the delta holding the op is in the log. Default on.
    pub durable_acks: bool,
    /// A snapshot is written after this many ticks… Default 256.
    pub snapshot_every_ticks: u64,
    /// …or this long after the last one, whichever comes first. Default 5 s.
    pub snapshot_every: Duration,
    /// How long a relayed join waits for the owner's answer before it is sent again (and
    /// the lease looked at). Default 2 s.
    pub relay_timeout: Duration,
}

impl RedisConfig {
    pub fn new(url: String, instance_id: String) -> RedisConfig {
        RedisConfig {
            url,
            instance_id,
            lease_ttl: Duration::from_secs(3),
            durable_acks: true,
            snapshot_every_ticks: 256,
            snapshot_every: Duration::from_secs(5),
            relay_timeout: Duration::from_secs(2),
        }
    }
}

/// Bounds on everything a client can make the server hold or do.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest WebSocket frame payload. Default 64 KiB.
    pub max_frame_bytes: usize,
    /// Largest message (all fragments together). Default 64 KiB.
    pub max_message_bytes: usize,
    /// Most fragments in one message. Default 128.
    pub max_fragments: usize,
    /// Most ops in one `op` message (`too_large` past it). Default 256.
    pub max_ops_per_message: usize,
    /// Deepest path an op may use (`too_large` past it). Default 32.
    pub max_path_depth: usize,
    /// Largest room state, approximately its MessagePack size. Default 1 MiB.
    pub max_state_bytes: usize,
    /// Most rooms one connection may be in. Default 64.
    pub max_rooms_per_connection: usize,
    /// Most members in one room (`room_full` past it). Default 10000.
    pub max_members_per_room: usize,
    /// Messages per second per connection (token bucket refill rate). Default 200.
    pub rate_limit: u32,
    /// Token bucket size. Default 400.
    pub rate_burst: u32,
    /// Refused messages (past the bucket) before the connection is closed with 1008. The
    /// count resets whenever the bucket refills to full. Default 1000.
    pub rate_abuse_limit: u32,
    /// Bytes queued for one connection before its queued deltas are dropped and it is
    /// resynchronized with a snapshot. Default 1 MiB.
    pub outbound_queue_bytes: usize,
    /// Deltas kept per room for `resumed` joins. Default 1024.
    pub resume_window: usize,
    /// How long an empty room is kept before it is dropped. Default 30 s.
    pub room_grace: Duration,
    /// Time allowed for the whole HTTP request / upgrade. Default 5 s.
    pub handshake_timeout: Duration,
    /// Largest request header block, request line included (431 past it). Default 8 KiB.
    pub max_header_bytes: usize,
    /// Most request headers (431 past it). Default 64.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 64 * 1024,
            max_message_bytes: 64 * 1024,
            max_fragments: 128,
            max_ops_per_message: 256,
            max_path_depth: 32,
            max_state_bytes: 1024 * 1024,
            max_rooms_per_connection: 64,
            max_members_per_room: 10_000,
            rate_limit: 200,
            rate_burst: 400,
            rate_abuse_limit: 1000,
            outbound_queue_bytes: 1024 * 1024,
            resume_window: 1024,
            room_grace: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(5),
            max_header_bytes: 8 * 1024,
            max_headers: 64,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 7700)),
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpus: None,
            backlog: 1024,
            spin_before_park: None,
            mesh_capacity: 1024,
            limits: Limits::default(),
            allowed_origins: Vec::new(),
            auth_secret: None,
            drain_timeout: Duration::from_secs(3),
            redis: None,
        }
    }
}
