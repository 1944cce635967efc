//! The Redis client of one shard, on glommio.
//!
//! glommio has its own io_uring reactor, so the async clients of the `redis` crate (tokio,
//! async-std) do not run on it. We use the `redis` crate for what needs no I/O: packing
//! commands (`redis::cmd`, `redis::Pipeline`), the reply type `redis::Value` and its
//! conversions, and URL parsing. Sockets, pipelining, timeouts and reconnects are ours,
//! driven by glommio's `TcpStream`.
//!
//! # Layout
//!
//! - [`resp`]: the sans-IO reply decoder (`Ok(None)` for incomplete input; why ours and not
//!   the crate's `Parser` is written there), and an encoder for tests.
//! - [`url`]: `redis://[user][:password@]host[:port][/db]` into what a connection needs.
//! - `conn` (private): connecting with a timeout, the AUTH/SELECT/HELLO handshake, reading
//!   replies off a socket into a buffer.
//! - [`client`]: the pipelined command connection of a shard, with timeouts, fail-fast
//!   while disconnected, reconnect with backoff, scripts with `NOSCRIPT` fallback.
//! - [`subscriber`]: the Pub/Sub connection of a shard: re-subscribes after a reconnect and
//!   says so, so the server can repair gaps from the log.
//!
//! # Promise
//!
//! Redis being slow or down never blocks a shard's event loop: every wait is an await with
//! a deadline, and requests made while the connection is down fail at once.

pub mod client;
mod conn;
pub mod resp;
pub mod subscriber;
pub mod url;

pub use client::{Client, ClientOptions, Error, Script};
pub use conn::ConnectionError;
pub use subscriber::{Subscriber, SubscriberEvent};
pub use url::{RedisUrl, UrlError};
