//! The cross-shard channel mesh: typed messages between shards.
//!
//! Built on glommio's full [`MeshBuilder`]: one bounded single-producer,
//! single-consumer channel for every ordered pair of shards. A shard holds a
//! [`Mesh`] (the sending side, cheap to clone) and an [`Inbox`] (the receiving
//! side, spawned once with a handler).
//!
//! [`MeshBuilder`]: glommio::channels::channel_mesh::MeshBuilder
//!
//! # Guarantees
//!
//! - **FIFO per pair.** Messages from shard A to shard B are handled by B in
//!   the order A called [`Mesh::send`]. There is no order between different
//!   senders.
//! - **`send` never blocks and never awaits.** It is a plain function, so it
//!   can be called from synchronous code such as a message handler.
//! - **Nothing is dropped while both shards run.** The only loss is a message
//!   to a shard that has stopped (see below).
//!
//! # What happens when a peer's channel is full
//!
//! Each channel holds `channel_capacity` messages (default
//! [`DEFAULT_CHANNEL_CAPACITY`] = 1024). [`Mesh::send`] first tries to put the
//! message straight into the channel. If the channel is full, or if earlier
//! messages to the same peer are still waiting (so that this one cannot
//! overtake them), the message is appended to an unbounded, per-peer
//! **outbox** on the sending shard, and `send` returns at once. One drain task
//! per peer, started when that outbox stops being empty, moves the messages
//! into the channel in order, waiting for room each time the peer falls
//! behind, and ends when the outbox is empty. So a slow or busy peer never
//! stalls the sender's event loop, and the other peers are not affected: each
//! has its own channel and its own outbox.
//!
//! [`Mesh::backlog`] gives one outbox's length (messages accepted by `send` but
//! not yet in the peer's channel), and [`Mesh::stats`] counts how many messages
//! ever went through an outbox (`outboxed`): a rising count means a peer cannot
//! keep up, a backlog that only grows means it has stalled.
//!
//! # Why an unbounded outbox is acceptable
//!
//! The producers upstream of the mesh are bounded: every client connection is
//! rate-limited and has bounded queues, and the number of connections is bounded
//! by the process's open-file limit. So the outbox holds at most what the sender's own clients were
//! allowed to produce while the peer was behind; it cannot grow faster than
//! those limits allow. Bounding it here instead would force a choice between
//! blocking the sender's event loop (a slow shard would freeze all the others,
//! which is worse) and dropping messages that carry state (which would
//! desynchronize rooms).
//!
//! **Failure mode:** if a peer shard stalls for good (a bug: an endless loop, a
//! deadlock), the outboxes towards it grow with its share of the traffic until
//! memory runs out. The symptom is visible well before that in
//! [`Mesh::backlog`] (the server exports it as `kasagi_mesh_backlog`); alert on it.
//!
//! # Stopped peers
//!
//! When a shard stops, its inbox is dropped and its channels close. Messages
//! sent to it afterwards cannot be delivered: they are counted in
//! [`MeshStats::undeliverable`], dropped, and the first one per peer is logged
//! at `warn`. If the peer stopped while its channel was full, that outbox's
//! drain task waits forever (glommio does not wake a sender when the receiver
//! goes away) and [`Mesh::flush`] will not resolve; [`Mesh::flush`] is meant
//! for an orderly shutdown, while all shards still run.
//!
//! # Sending to yourself
//!
//! `send(mesh.id(), msg)` is a caller bug: the caller owns the destination
//! already and should handle the message directly (the local shortcut). Debug
//! builds assert. Release builds deliver it anyway, through this shard's own
//! inbox handler, on a later turn of the event loop (never re-entrantly from
//! inside `send`), in order with other messages sent to self.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Poll, Waker};

use futures_lite::{future, Stream, StreamExt};
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::{GlommioError, ResourceType};

use crate::hash::ShardId;

/// Default capacity of each shard-to-shard channel, in messages.
///
/// Large enough that the outbox is only used when a peer is really behind
/// (about a millisecond of traffic at a million messages per second), small
/// enough that a full channel is a few tens of KiB for typical message sizes.
pub const DEFAULT_CHANNEL_CAPACITY: usize = 1024;

/// How many messages a receiving or draining task handles before it yields,
/// so that a busy peer cannot keep the connections of this shard waiting.
const YIELD_EVERY: u32 = 64;

/// The sending side of the mesh on one shard. Cheap to clone; all clones share
/// the same channels and outboxes.
pub struct Mesh<M: Send + 'static> {
    shared: Rc<Shared<M>>,
}

/// The receiving side of the mesh on one shard: consumed by [`Inbox::spawn`].
///
/// Until it is spawned, messages from peers wait in their channels (and then in
/// the peers' outboxes), so a shard may set up its state first. If it is
/// dropped without being spawned, this shard's channels close and peers count
/// their messages to it as undeliverable.
pub struct Inbox<M: Send + 'static> {
    id: ShardId,
    receivers: Receivers<M>,
    loopback: LocalReceiver<M>,
}

/// Counters of one shard's sending side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeshStats {
    /// Messages that went through an outbox because a peer's channel was full
    /// (or earlier messages to it were still queued). Monotonic.
    pub outboxed: u64,
    /// Messages dropped because their destination shard had stopped. Monotonic.
    pub undeliverable: u64,
    /// Messages currently waiting in all outboxes (sum of [`Mesh::backlog`]).
    pub backlog: usize,
}

struct Shared<M: Send + 'static> {
    id: ShardId,
    senders: Senders<M>,
    /// Indexed by destination; the entry for `id` is never used.
    outboxes: Vec<Outbox<M>>,
    loopback: LocalSender<M>,
    outboxed: Cell<u64>,
    undeliverable: Cell<u64>,
    /// Tasks in [`Mesh::flush`], woken whenever a drain task finishes.
    flush_waiters: RefCell<Vec<Waker>>,
}

struct Outbox<M> {
    queue: RefCell<VecDeque<M>>,
    /// A drain task exists for this peer. While it does, every new message must
    /// queue behind it: trying the channel directly could overtake the message
    /// the task is holding.
    draining: Cell<bool>,
    /// The drain task has popped a message and is waiting for room for it.
    in_flight: Cell<bool>,
    /// The peer's inbox is gone; logged once.
    peer_gone: Cell<bool>,
}

impl<M> Outbox<M> {
    fn new() -> Self {
        Self {
            queue: RefCell::new(VecDeque::new()),
            draining: Cell::new(false),
            in_flight: Cell::new(false),
            peer_gone: Cell::new(false),
        }
    }

    fn len(&self) -> usize {
        self.queue.borrow().len() + usize::from(self.in_flight.get())
    }
}

impl<M: Send + 'static> Mesh<M> {
    /// Wraps the two halves glommio hands out after `MeshBuilder::join`.
    /// Must run on the shard's executor.
    pub(crate) fn from_parts(senders: Senders<M>, receivers: Receivers<M>) -> (Mesh<M>, Inbox<M>) {
        let id = senders.peer_id();
        let (loopback_tx, loopback_rx) = local_channel::new_unbounded();
        let outboxes = (0..senders.nr_consumers()).map(|_| Outbox::new()).collect();
        let mesh = Mesh {
            shared: Rc::new(Shared {
                id,
                senders,
                outboxes,
                loopback: loopback_tx,
                outboxed: Cell::new(0),
                undeliverable: Cell::new(0),
                flush_waiters: RefCell::new(Vec::new()),
            }),
        };
        let inbox = Inbox {
            id,
            receivers,
            loopback: loopback_rx,
        };
        (mesh, inbox)
    }

    /// This shard's id: its index in the mesh (not its CPU number).
    pub fn id(&self) -> ShardId {
        self.shared.id
    }

    /// Number of shards in the mesh, this one included.
    pub fn shards(&self) -> usize {
        self.shared.outboxes.len()
    }

    /// Sends `msg` to shard `dst`. Never blocks, never awaits, keeps FIFO
    /// order per destination; see the module doc for what happens when the
    /// peer's channel is full.
    ///
    /// `dst == self.id()` is a caller bug (take the local shortcut): it asserts
    /// in debug builds and is delivered through this shard's own inbox in
    /// release builds.
    ///
    /// # Panics
    ///
    /// If `dst >= self.shards()`: shard ids come from [`crate::shard_of`] or
    /// from the mesh itself, so an out-of-range id is a bug, not input.
    pub fn send(&self, dst: ShardId, msg: M) {
        let shared = &*self.shared;
        assert!(
            dst < self.shards(),
            "Mesh::send to shard {dst}, but there are only {} shards",
            self.shards()
        );
        debug_assert_ne!(
            dst, shared.id,
            "Mesh::send to self: handle the message locally instead"
        );
        if dst == shared.id {
            // Unbounded: fails only once the inbox is gone, i.e. shutting down.
            if shared.loopback.try_send(msg).is_err() {
                shared.count_undeliverable(dst);
            }
            return;
        }

        let outbox = &shared.outboxes[dst];
        if outbox.draining.get() {
            outbox.queue.borrow_mut().push_back(msg);
            shared.outboxed.set(shared.outboxed.get() + 1);
            return;
        }
        match shared.senders.try_send_to(dst, msg) {
            Ok(()) => {}
            Err(GlommioError::WouldBlock(ResourceType::Channel(msg))) => {
                outbox.queue.borrow_mut().push_back(msg);
                shared.outboxed.set(shared.outboxed.get() + 1);
                outbox.draining.set(true);
                glommio::spawn_local(drain(self.shared.clone(), dst)).detach();
            }
            // Closed: the peer stopped. Any other error would mean an invalid
            // destination, which the checks above rule out.
            Err(_) => shared.count_undeliverable(dst),
        }
    }

    /// Messages to `dst` accepted by [`Mesh::send`] but not yet in its channel.
    /// 0 for this shard's own id and for ids out of range.
    pub fn backlog(&self, dst: ShardId) -> usize {
        if dst == self.shared.id {
            return 0;
        }
        self.shared.outboxes.get(dst).map_or(0, Outbox::len)
    }

    /// This shard's sending counters, for metrics.
    pub fn stats(&self) -> MeshStats {
        let shared = &*self.shared;
        MeshStats {
            outboxed: shared.outboxed.get(),
            undeliverable: shared.undeliverable.get(),
            backlog: (0..self.shards()).map(|dst| self.backlog(dst)).sum(),
        }
    }

    /// Resolves once every outbox is empty, i.e. every message sent so far is
    /// in its peer's channel (not necessarily handled yet). For orderly
    /// shutdown: a shard that stops with a non-empty outbox loses it.
    pub async fn flush(&self) {
        future::poll_fn(|cx| {
            if self.shared.outboxes.iter().any(|o| o.draining.get()) {
                self.shared
                    .flush_waiters
                    .borrow_mut()
                    .push(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
    }
}

impl<M: Send + 'static> Shared<M> {
    fn count_undeliverable(&self, dst: ShardId) {
        self.undeliverable.set(self.undeliverable.get() + 1);
        if let Some(outbox) = self.outboxes.get(dst) {
            if !outbox.peer_gone.replace(true) {
                tracing::warn!(peer = dst, "peer shard stopped: dropping messages to it");
            }
        }
    }
}

/// Moves `dst`'s outbox into its channel, in order, then exits.
async fn drain<M: Send + 'static>(shared: Rc<Shared<M>>, dst: ShardId) {
    let outbox = &shared.outboxes[dst];
    let mut since_yield = 0;
    loop {
        // The borrow must end before the await: `send` pushes meanwhile.
        let next = outbox.queue.borrow_mut().pop_front();
        let Some(msg) = next else { break };
        outbox.in_flight.set(true);
        let sent = shared.senders.send_to(dst, msg).await;
        outbox.in_flight.set(false);
        if sent.is_err() {
            shared.count_undeliverable(dst);
        }
        since_yield += 1;
        if since_yield == YIELD_EVERY {
            since_yield = 0;
            future::yield_now().await;
        }
    }
    outbox.draining.set(false);
    for waker in shared.flush_waiters.take() {
        waker.wake();
    }
}

impl<M: Send + 'static> Inbox<M> {
    /// This shard's id.
    pub fn id(&self) -> ShardId {
        self.id
    }

    /// Starts delivering messages to `handler(from, msg)`: one task per peer,
    /// so messages from one peer are handled in the order they were sent.
    /// Handlers are synchronous and should be quick; a handler may call
    /// [`Mesh::send`].
    ///
    /// The tasks are detached on purpose: they run until the peer's sending
    /// side is gone or this shard's executor stops.
    ///
    /// # Panics
    ///
    /// Outside the shard's executor (it cannot be, short of moving the inbox
    /// out of `start`, which `!Send` forbids).
    pub fn spawn<H>(mut self, handler: H)
    where
        H: Fn(ShardId, M) + 'static,
    {
        let handler = Rc::new(handler);
        for (from, receiver) in self.receivers.streams() {
            let handler = handler.clone();
            glommio::spawn_local(async move { deliver(from, receiver, &*handler).await }).detach();
        }
        let id = self.id;
        let loopback = self.loopback;
        glommio::spawn_local(async move { deliver(id, loopback.stream(), &*handler).await })
            .detach();
    }
}

async fn deliver<M>(from: ShardId, messages: impl Stream<Item = M>, handler: &dyn Fn(ShardId, M)) {
    let mut messages = pin!(messages);
    let mut since_yield = 0;
    while let Some(msg) = messages.next().await {
        handler(from, msg);
        since_yield += 1;
        if since_yield == YIELD_EVERY {
            since_yield = 0;
            future::yield_now().await;
        }
    }
}

impl<M: Send + 'static> Clone for Mesh<M> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<M: Send + 'static> fmt::Debug for Mesh<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mesh")
            .field("id", &self.id())
            .field("shards", &self.shards())
            .field("stats", &self.stats())
            .finish()
    }
}

impl<M: Send + 'static> fmt::Debug for Inbox<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbox").field("id", &self.id).finish()
    }
}
