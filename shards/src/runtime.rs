//! Starting, pinning and joining the shards.
//!
//! [`run`] turns the calling thread into a supervisor: it starts one thread per
//! shard, each running its own glommio `LocalExecutor`, joins every shard to the
//! channel mesh, calls the caller's `start` on each one with a
//! [`ShardContext`], and returns every shard's output once all have finished.
//!
//! # Startup order and shard ids
//!
//! A shard's id is its index in glommio's channel mesh, which orders peers by
//! executor id; glommio numbers executors in creation order. The executors are
//! therefore created one after the other, shard 0 first, so that mesh id `i` is
//! also the thread named `shard-i`, pinned as documented on
//! [`RuntimeConfig::cpus`]. Only when every executor exists does any shard go
//! on to join the mesh: if one cannot start (a CPU that is offline, an
//! exhausted locked-memory limit), the others are stopped before they could wait
//! forever for it, and [`run`] returns the error.
//!
//! # Logging
//!
//! Each shard thread runs inside a `tracing` span `shard{id=N}` for its whole
//! life, so every event from every task on it carries the shard id.

use std::any::Any;
use std::future::Future;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::{LocalExecutorBuilder, Placement};
use thiserror::Error;

use crate::cpus::{allowed_cpus, online_cpus};
use crate::hash::ShardId;
use crate::mesh::{Inbox, Mesh, DEFAULT_CHANNEL_CAPACITY};

/// Default [`RuntimeConfig::io_memory`]: 256 KiB.
pub const DEFAULT_IO_MEMORY: usize = 256 << 10;

/// Default [`RuntimeConfig::ring_depth`]: 4096 submission entries per ring.
pub const DEFAULT_RING_DEPTH: usize = 4096;

/// How the shards are started. Every field's default is in its doc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Number of shards (executor threads). Default: [`online_cpus`].
    /// Must be at least 1.
    pub shards: usize,
    /// CPUs to pin the shards to: shard `i` runs on `cpus[i % cpus.len()]`, so
    /// a list shorter than `shards` puts several shards on one CPU (useful on a
    /// laptop, wasteful in production). Must not be empty.
    ///
    /// Default `None`: if `shards` is at most [`online_cpus`], shard `i` is
    /// pinned to the `i`-th CPU this process may use (its affinity mask, so a
    /// container limited to CPUs 4-7 starts at 4); otherwise the shards are
    /// not pinned and the OS schedules them.
    pub cpus: Option<Vec<usize>>,
    /// Capacity of each shard-to-shard channel, in messages. Default
    /// [`DEFAULT_CHANNEL_CAPACITY`] (1024). Must be at least 1. See
    /// [`crate::mesh`] for what happens when a channel is full.
    pub channel_capacity: usize,
    /// Thread name prefix: threads are named `{prefix}-{id}` so `top -H` and
    /// panic messages show them. Linux keeps 15 bytes of a thread name.
    /// Default `"shard"`.
    pub name_prefix: String,
    /// Memory glommio preallocates per shard and registers with io_uring for
    /// storage (DMA) I/O. Default [`DEFAULT_IO_MEMORY`] (256 KiB); glommio
    /// raises anything below 64 KiB to 64 KiB.
    ///
    /// Kasagi does no storage I/O, so this is only a cost: the buffer is
    /// registered with each of the shard's three io_uring rings, and that pinned
    /// memory counts against `RLIMIT_MEMLOCK` (`ulimit -l`, often 8 MiB, shared
    /// by all of the user's processes, ignored with `CAP_IPC_LOCK`). glommio's
    /// own default, 10 MiB, does not fit in 8 MiB: registration fails, glommio
    /// logs a warning and runs without registered buffers, harmless here but
    /// noisy. At the default here a shard pins at most 768 KiB, so 8 MiB holds
    /// 10 shards. Whatever this value, glommio refuses to start an executor
    /// when the limit is below 512 KiB ([`RuntimeError::ExecutorStart`]).
    pub io_memory: usize,
    /// Busy-poll for this long before putting an idle shard to sleep. Default
    /// `None` (sleep at once). A few tens of microseconds cut wake-up latency on
    /// a dedicated, latency-critical host (`--spin-before-park`), at the price
    /// of burning CPU while idle. glommio ignores it for unpinned shards.
    pub spin_before_park: Option<Duration>,
    /// Submission entries of each of the shard's io_uring rings. Default
    /// [`DEFAULT_RING_DEPTH`] (4096; glommio's own is 128).
    ///
    /// Why it matters with many sockets: every socket waiting for input holds a
    /// poll request in the ring, and the kernel keeps them in a hash table of
    /// `clamp(log2(2 * depth) - 5, 1, 8)` bits. glommio cancels its preemption
    /// timers on every reactor turn, and the kernel looks for each cancelled
    /// request among the polls of one bucket first. At 128 that table has 8
    /// buckets: with 10,000 idle sockets each cancel walks ~1,250 entries, and a
    /// profile showed a fifth of a busy shard's CPU there. At 4096 it has the
    /// kernel's maximum of 256 buckets. The rings cost about 1 MiB per shard.
    pub ring_depth: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            shards: online_cpus(),
            cpus: None,
            channel_capacity: DEFAULT_CHANNEL_CAPACITY,
            name_prefix: String::from("shard"),
            io_memory: DEFAULT_IO_MEMORY,
            spin_before_park: None,
            ring_depth: DEFAULT_RING_DEPTH,
        }
    }
}

/// Why [`run`] failed.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// `shards` was 0.
    #[error("the number of shards must be at least 1")]
    NoShards,
    /// `cpus` was `Some` but empty.
    #[error("the cpu list is empty")]
    EmptyCpuList,
    /// `channel_capacity` was 0.
    #[error("the mesh channel capacity must be at least 1")]
    ZeroChannelCapacity,
    /// The OS refused to create a shard's thread.
    #[error("cannot create the thread of shard {shard}: {source}")]
    ThreadSpawn { shard: ShardId, source: io::Error },
    /// glommio could not create a shard's executor: an offline CPU, a
    /// locked-memory limit below 512 KiB, io_uring unavailable, ...
    #[error("cannot start the executor of shard {shard} (cpu {cpu:?}): {source}")]
    ExecutorStart {
        shard: ShardId,
        cpu: Option<usize>,
        source: io::Error,
    },
    /// A shard could not join the channel mesh.
    #[error("shard {shard} could not join the channel mesh: {source}")]
    MeshJoin { shard: ShardId, source: io::Error },
    /// A shard panicked; `message` is the panic payload when it was a string.
    #[error("shard {shard} panicked: {message}")]
    ShardPanicked { shard: ShardId, message: String },
}

/// What `start` receives on each shard.
pub struct ShardContext<M: Send + 'static> {
    /// This shard's id, `0..shards`, equal to `mesh.id()`.
    pub id: ShardId,
    /// Number of shards.
    pub shards: usize,
    /// The sending side of the mesh.
    pub mesh: Mesh<M>,
    inbox: Inbox<M>,
}

impl<M: Send + 'static> ShardContext<M> {
    /// The two halves of this shard's mesh: `let (mesh, inbox) = ctx.split();`
    /// then `inbox.spawn(handler)` once the shard's state is ready.
    pub fn split(self) -> (Mesh<M>, Inbox<M>) {
        (self.mesh, self.inbox)
    }
}

impl<M: Send + 'static> std::fmt::Debug for ShardContext<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardContext")
            .field("id", &self.id)
            .field("shards", &self.shards)
            .finish_non_exhaustive()
    }
}

/// Runs `config.shards` shards and returns their outputs, indexed by shard id.
///
/// On each shard, in its own pinned thread and executor, `start(ctx)` is called
/// once the mesh is joined, and its future runs until it completes; when it
/// does, the shard's executor stops (its detached tasks with it). `run` returns
/// when every shard has stopped. Blocks the calling thread.
///
/// Per-shard resources made beforehand (such as the listeners of
/// [`crate::bind_reuseport`]) reach their shard through `start`'s captures,
/// e.g. an `Arc<Mutex<Vec<Option<Socket>>>>` each shard takes its entry from.
///
/// # Errors
///
/// An invalid config, or a shard that cannot be started, is reported before
/// `start` runs anywhere. Once running, a shard that panics becomes
/// [`RuntimeError::ShardPanicked`]; the panic is logged when it happens, but
/// `run` still waits for the other shards (nothing can stop an executor from
/// outside; a server wanting to stop should notice the dead peer, e.g. through
/// [`crate::MeshStats::undeliverable`]). With several errors, the one of the
/// lowest shard is returned.
pub fn run<M, R, F, Fut>(config: RuntimeConfig, start: F) -> Result<Vec<R>, RuntimeError>
where
    M: Send + 'static,
    R: Send + 'static,
    F: Fn(ShardContext<M>) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = R> + 'static,
{
    let placements = plan_placements(&config)?;
    if config.channel_capacity == 0 {
        return Err(RuntimeError::ZeroChannelCapacity);
    }

    // glommio's MeshBuilder holds an `Rc` yet is `Send` (an `unsafe impl`
    // upstream). Every clone is made here, before any shard thread exists, and
    // the original outlives all of them, so the only concurrent touches of
    // that counter are the decrements of the shard threads: at worst a lost
    // decrement, i.e. a small leak, never a premature free.
    let mesh_builder = MeshBuilder::<M, Full>::full(config.shards, config.channel_capacity);
    let builders: Vec<_> = (0..config.shards).map(|_| mesh_builder.clone()).collect();

    let mut shards = Vec::with_capacity(config.shards);
    let mut startup_error = None;
    for ((shard, cpu), mesh) in placements.into_iter().enumerate().zip(builders) {
        let (go_tx, go_rx) = mpsc::sync_channel(1);
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let plan = ShardPlan {
            shard,
            cpu,
            config: config.clone(),
            mesh,
            ready: ready_tx,
            go: go_rx,
        };
        let start = start.clone();
        let spawned = thread::Builder::new()
            .name(format!("{}-{shard}", config.name_prefix))
            .spawn(move || shard_main(plan, start));
        let thread = match spawned {
            Ok(thread) => thread,
            Err(source) => {
                startup_error = Some(RuntimeError::ThreadSpawn { shard, source });
                break;
            }
        };
        // Wait for this executor before creating the next: see the module doc.
        let ready = ready_rx
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("the shard thread exited during startup")));
        shards.push(ShardThread { thread, go: go_tx });
        if let Err(source) = ready {
            startup_error = Some(RuntimeError::ExecutorStart { shard, cpu, source });
            break;
        }
    }

    let go = startup_error.is_none();
    for shard in &shards {
        // A shard that already exited has dropped its receiver; nothing to tell.
        let _ = shard.go.send(go);
    }
    let outcomes: Vec<_> = shards
        .into_iter()
        .enumerate()
        .map(|(shard, s)| join_shard(shard, s.thread))
        .collect();
    drop(mesh_builder);

    if let Some(err) = startup_error {
        return Err(err);
    }
    let mut outputs = Vec::with_capacity(outcomes.len());
    for outcome in outcomes {
        match outcome {
            ShardOutcome::Done(output) => outputs.push(output),
            ShardOutcome::Failed(err) => return Err(err),
            // Only when startup failed, which returned above.
            ShardOutcome::Aborted => {}
        }
    }
    Ok(outputs)
}

/// The CPU of each shard, validating the parts of the config it reads.
fn plan_placements(config: &RuntimeConfig) -> Result<Vec<Option<usize>>, RuntimeError> {
    if config.shards == 0 {
        return Err(RuntimeError::NoShards);
    }
    match &config.cpus {
        Some(cpus) if cpus.is_empty() => Err(RuntimeError::EmptyCpuList),
        Some(cpus) => Ok((0..config.shards)
            .map(|shard| Some(cpus[shard % cpus.len()]))
            .collect()),
        None if config.shards <= online_cpus() => {
            let allowed = allowed_cpus();
            Ok((0..config.shards)
                .map(|shard| allowed.get(shard).copied())
                .collect())
        }
        None => Ok(vec![None; config.shards]),
    }
}

/// Everything a shard thread needs, moved into it.
struct ShardPlan<M: Send + 'static> {
    shard: ShardId,
    cpu: Option<usize>,
    config: RuntimeConfig,
    mesh: MeshBuilder<M, Full>,
    /// Reports whether the executor could be created.
    ready: mpsc::SyncSender<io::Result<()>>,
    /// `true`: every shard started, go on; `false` (or hung up): stop.
    go: mpsc::Receiver<bool>,
}

struct ShardThread<R> {
    thread: JoinHandle<ShardOutcome<R>>,
    go: mpsc::SyncSender<bool>,
}

enum ShardOutcome<R> {
    Done(R),
    Failed(RuntimeError),
    /// Stopped before running because another shard failed to start.
    Aborted,
}

fn shard_main<M, R, F, Fut>(plan: ShardPlan<M>, start: F) -> ShardOutcome<R>
where
    M: Send + 'static,
    F: Fn(ShardContext<M>) -> Fut,
    Fut: Future<Output = R>,
{
    let ShardPlan {
        shard,
        cpu,
        config,
        mesh,
        ready,
        go,
    } = plan;
    let placement = cpu.map_or(Placement::Unbound, Placement::Fixed);
    let mut builder = LocalExecutorBuilder::new(placement)
        .name(&format!("{}-{shard}", config.name_prefix))
        .io_memory(config.io_memory)
        .ring_depth(config.ring_depth.max(1));
    if let Some(spin) = config.spin_before_park {
        builder = builder.spin_before_park(spin);
    }
    let executor = match builder.make() {
        Ok(executor) => executor,
        Err(err) => {
            // The supervisor is waiting on this answer; it cannot have hung up.
            let _ = ready.send(Err(io::Error::from(err)));
            return ShardOutcome::Aborted;
        }
    };
    let _ = ready.send(Ok(()));
    drop(ready);
    if go.recv() != Ok(true) {
        return ShardOutcome::Aborted;
    }

    let span = tracing::info_span!("shard", id = shard);
    let _in_span = span.enter();
    tracing::debug!(cpu = ?cpu, "shard started");
    let shards = config.shards;
    // Caught here rather than at `join` so the panic is logged with the shard's
    // span the moment it happens, not when the last shard stops.
    let run = panic::catch_unwind(AssertUnwindSafe(|| {
        executor.run(async move {
            let (senders, receivers) = match mesh.join().await {
                Ok(halves) => halves,
                Err(err) => {
                    return ShardOutcome::Failed(RuntimeError::MeshJoin {
                        shard,
                        source: io::Error::from(err),
                    })
                }
            };
            let (mesh, inbox) = Mesh::from_parts(senders, receivers);
            if mesh.id() != shard {
                // Cannot happen while glommio numbers executors in creation order;
                // the mesh id is the truth, only names and pinning would be off.
                tracing::warn!(mesh_id = mesh.id(), "shard id differs from thread index");
            }
            let ctx = ShardContext {
                id: mesh.id(),
                shards,
                mesh,
                inbox,
            };
            ShardOutcome::Done(start(ctx).await)
        })
    }));
    run.unwrap_or_else(|payload| {
        let message = panic_message(payload.as_ref());
        tracing::error!(%message, "shard panicked");
        ShardOutcome::Failed(RuntimeError::ShardPanicked { shard, message })
    })
}

fn join_shard<R>(shard: ShardId, thread: JoinHandle<ShardOutcome<R>>) -> ShardOutcome<R> {
    match thread.join() {
        Ok(outcome) => outcome,
        // Only panics outside `run` (creating or dropping the executor) get
        // here; those inside are caught in `shard_main`.
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            tracing::error!(shard, %message, "shard panicked");
            ShardOutcome::Failed(RuntimeError::ShardPanicked { shard, message })
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        String::from("(non-string panic payload)")
    }
}
