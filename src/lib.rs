//! Kasagi: a real-time state synchronization server.
//!
//! # Layout
//!
//! - [`config`]: the one `Config` (limits and runtime settings) with documented defaults.
//! - [`value`]: the value tree that states, ops and messages are made of.
//! - [`ws`]: the hand-rolled, sans-IO RFC 6455 stack: handshake parser, frame codec,
//!   message assembly with streaming UTF-8 validation.
//! - [`protocol`]: the messages of `PROTOCOL.md`, decoded from and encoded to MessagePack
//!   (`kasagi.v1.msgpack`) and JSON (`kasagi.v1.json`).
//! - [`room`]: a room's authoritative state, atomic ops, coalesced state-based deltas, the
//!   resume ring. Plain structs, no I/O.
//! - [`redis`]: the per-shard Redis client on glommio: a sans-IO RESP decoder, pipelined
//!   command connection, subscriber connection, reconnect with backoff.
//! - [`server`]: the glommio side: per-shard state, connection tasks, cross-shard routing,
//!   HTTP endpoints, metrics and latency telemetry, the echo mode used for conformance runs,
//!   and (`server::fleet`) the Redis fleet mode: leases, the durable log, relays between
//!   instances.
//!
//! The shard-per-core runtime itself (executors, `SO_REUSEPORT` listeners, key -> shard
//! hashing, the channel mesh) is the `kasagi-shards` crate in `shards/`.

pub mod config;
pub mod protocol;
pub mod redis;
pub mod room;
pub mod server;
pub mod value;
pub mod ws;
