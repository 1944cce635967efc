//! The shard-per-core runtime of Kasagi.
//!
//! It knows nothing about rooms or WebSocket: it starts pinned glommio
//! executors, gives each a typed channel mesh to the others, hashes keys to
//! shards, and prepares the `SO_REUSEPORT` listeners they accept on.
//!
//! # Layout
//!
//! - [`hash`]: [`shard_of`], the stable key -> shard function (FNV-1a + fmix64).
//! - [`cpus`]: parsing `--cpus 0,2-3`, counting and listing usable CPUs.
//! - [`listener`]: one `SO_REUSEPORT` socket per shard on one port, with
//!   `TCP_DEFER_ACCEPT` set, for glommio or a [`SocketSet`].
//! - [`socketset`]: [`SocketSet`], an epoll set of sockets and the tasks waiting to
//!   read, write or accept on them, polled by its owner so that no ready socket
//!   interrupts the shard.
//! - [`mesh`]: [`Mesh`] / [`Inbox`], cross-shard messages that never block the
//!   sender and keep FIFO order per pair of shards.
//! - [`runtime`]: [`run`], which starts the shards and joins them.
//!
//! # Use
//!
//! ```no_run
//! use kasagi_shards::{run, shard_of, RuntimeConfig};
//!
//! let config = RuntimeConfig { shards: 2, ..RuntimeConfig::default() };
//! let outputs = run(config, |ctx| async move {
//!     let (mesh, inbox) = ctx.split();
//!     inbox.spawn(|from, msg: String| println!("from shard {from}: {msg}"));
//!     let owner = shard_of(b"lobby", mesh.shards());
//!     if owner != mesh.id() {
//!         mesh.send(owner, format!("hello from {}", mesh.id()));
//!     }
//!     mesh.flush().await;
//!     mesh.id()
//! })
//! .expect("shards failed");
//! assert_eq!(outputs, vec![0, 1]);
//! ```

pub mod cpus;
pub mod hash;
pub mod listener;
pub mod mesh;
pub mod runtime;
pub mod socketset;

pub use cpus::{allowed_cpus, online_cpus, parse_cpu_list, CpuListError};
pub use hash::{key_hash, shard_of, ShardId};
pub use listener::{bind_reuseport, into_listener};
pub use mesh::{Inbox, Mesh, MeshStats, DEFAULT_CHANNEL_CAPACITY};
pub use runtime::{
    run, RuntimeConfig, RuntimeError, ShardContext, DEFAULT_IO_MEMORY, DEFAULT_RING_DEPTH,
};
pub use socketset::SocketSet;
