//! Kasagi: a real-time state synchronization server.
//!
//! # Layout
//!
//! The same map as the README's (`tests/docs.rs` keeps the two equal):
//!
//! | path | what lives there |
//! |---|---|
//! | `Cargo.toml` | the workspace, and the `kasagi` package (server library + binary) |
//! | `src/lib.rs` | the layout map of the library |
//! | `src/config.rs` | the one `Config`: every limit and setting, with its default |
//! | `src/value.rs` | the value tree (nil, bool, integers, float, string, binary, array, map) |
//! | `src/ws/` | the hand-rolled, sans-IO RFC 6455 stack: handshake parser, frame codec, message reader with streaming UTF-8 validation |
//! | `src/protocol/` | the messages of the protocol, MessagePack and JSON |
//! | `src/room/` | a room's state, atomic ops with undo, coalesced state-based deltas, the resume ring (no I/O) |
//! | `src/redis/` | the per-shard Redis client on glommio's `TcpStream`: our own sans-IO RESP decoder, commands packed by the `redis` crate, pipelining, a subscriber connection, reconnect with backoff (used by the fleet mode, next) |
//! | `src/server/fleet/` | the fleet mode: leases and epochs, the append script and snapshots, relaying requests to an owner on another instance, gap repair from the log |
//! | `src/server/` | the glommio side: shards, connections and their sockets (accepted, read and written through one epoll set per shard), routing to room owners, fan-out, HTTP, metrics, echo mode |
//! | `src/main.rs` | the `kasagi` binary: flags and environment into a `Config` |
//! | `shards/` | the `kasagi-shards` crate: the shard-per-core runtime, knowing nothing of rooms or WebSocket: pinned executors, `SO_REUSEPORT` listeners, the stable key -> shard hash, the cross-shard mesh, the epoll set of sockets (`SocketSet`) |
//! | `tests/` | integration tests: the real binary on loopback with an independent WebSocket client |
//! | `bench/` | the `kasagi-bench` crate: open-loop load generator, HDR latency reports, presets |
//! | `scripts/` | `test.sh` (everything), `autobahn.sh` (conformance run), `bench.sh` (bench presets with pinned cores), `redis.sh` (a local Redis for development) |

pub mod config;
pub mod protocol;
pub mod redis;
pub mod room;
pub mod server;
pub mod value;
pub mod ws;
