//! Room state, ops and deltas: the authoritative state of one room as a plain struct, with
//! no I/O, no async and no clock. The server owns membership, sockets and encoding; a
//! [`Room`] owns the state, applies `op` messages atomically, coalesces their changes into
//! state-based deltas, numbers them with ticks, and keeps the resume ring.
//!
//! # Layout
//!
//! - `mod.rs`: [`Room`], [`Limits`], [`DeltaRecord`], ticks and the resume ring.
//! - `apply.rs`: the ops of `PROTOCOL.md` applied in place, with an undo log.
//! - `changes.rs`: the change trie that turns everything applied since the last flush into
//!   one delta.
//! - `size.rs`: the running size and the depth of values, for the `too_large` limits.
//! - `tree.rs`: navigation by path.
//! - `error.rs`: [`OpError`], one variant per rule, and [`ApplyError`].
//! - `client.rs`: [`apply_delta_op`], what a client does with a delta's ops.
//!
//! # Invariants
//!
//! - Never panics on client input.
//! - The state is unchanged by a message that fails, and by one that changes nothing; only
//!   a message that changed the state marks anything for the next delta.
//! - Ticks go up by exactly 1 per delta; a delta exists only when something changed; every
//!   message lands in exactly one delta (the next flush).
//! - Applying a delta's ops in order to a copy of the state at the previous tick (with
//!   [`apply_delta_op`]) gives the state at the delta's tick.
//! - The resume ring holds at most `resume_window` deltas, consecutive, newest last, all of
//!   the current epoch.
//!
//! # Choices where `PROTOCOL.md` is silent
//!
//! - An array index equal to the length is a missing place, created like a missing map key:
//!   `set`/`inc`/`push` at `[array, len]` append the value / the amount / a new one-item
//!   array; an intermediate segment `[array, len]` followed by a key appends a new map.
//! - Only maps are created: an integer segment below a missing place is a conflict
//!   ([`OpError::IndexIntoMissing`]).
//! - `set` to an equal value and `inc` that leaves the value equal (by 0 on an integer, by
//!   0.0 on a float) change nothing. `inc` of an integer by a float gives a float, which is
//!   a change even when numerically equal.
//! - Floats add as IEEE doubles (overflow gives infinity); only integer overflow conflicts.
//! - `too_large` also covers values that would sit deeper than the path depth limit (the
//!   op's path plus the value's nesting, see [`OpError::ValueTooDeep`]): no op could reach
//!   them, and it keeps recursive walks of the state (clone, drop, encode) bounded.
//! - The state size limit applies to the state after the whole message, and only to a
//!   message that grows the state (a state loaded above the limit can still shrink).
//! - Errors are checked per op, in order; within one op: path depth, the `inc` amount's
//!   type, `[]` rules, value depth, then the walk.

mod apply;
mod changes;
mod client;
mod error;
pub mod size;
mod tree;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

use std::cell::OnceCell;
use std::collections::VecDeque;
use std::rc::Rc;

use bytes::Bytes;

use crate::protocol::types::{DeltaOp, Op, RoomId};
use crate::value::{Map, Value};

use apply::{Done, Tree};
use changes::Changes;

pub use client::{apply_delta_op, DeltaApplyError};
pub use error::{ApplyError, OpError};
pub use tree::resolve;

/// The limits a room enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest state, in bytes of its compact MessagePack encoding (see [`size`]).
    /// Default: 1 MiB.
    pub max_state_bytes: usize,
    /// Longest path an op may name, and deepest path at which the state may hold a value.
    /// Default: 32.
    pub max_path_depth: usize,
    /// How many of the latest deltas the resume ring keeps. Default: 1024.
    pub resume_window: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_state_bytes: 1 << 20,
            max_path_depth: 32,
            resume_window: 1024,
        }
    }
}

/// What an accepted `op` message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The state changed; the next flush makes a delta that holds the message.
    Changed,
    /// Nothing changed: no delta is due for this message.
    Unchanged,
}

/// One delta, shared by every member's queue and the resume ring.
#[derive(Debug)]
pub struct DeltaRecord {
    pub tick: u64,
    pub epoch: u64,
    /// The ops; empty when the delta was encoded at its flush ([`Room::flush_encoded`]),
    /// and emptied once the delta is an older ring entry with its MessagePack frame cached
    /// (the server then derives any other encoding from that frame).
    pub ops: Vec<DeltaOp>,
    /// The encoded and framed delta per subprotocol (0 MessagePack, 1 JSON), each encoded
    /// once: by the server's encoder at the flush ([`Room::flush_encoded`]) or on first
    /// use. The room never encodes.
    pub frames: [OnceCell<Bytes>; 2],
}

impl DeltaRecord {
    /// A delta with empty frame cells (also for deltas that arrive from another instance).
    pub fn new(tick: u64, epoch: u64, ops: Vec<DeltaOp>) -> DeltaRecord {
        DeltaRecord {
            tick,
            epoch,
            ops,
            frames: [OnceCell::new(), OnceCell::new()],
        }
    }
}

/// The authoritative state of one room.
#[derive(Debug)]
pub struct Room {
    id: RoomId,
    epoch: u64,
    tick: u64,
    limits: Limits,
    tree: Tree,
    changes: Changes,
    /// The latest deltas, oldest first, ticks consecutive, all of `epoch`.
    ring: VecDeque<Rc<DeltaRecord>>,
    /// The undo log of the message being applied; kept to reuse its allocation.
    undo_log: Vec<Done>,
}

impl Room {
    /// A new room: tick 0, state `{}`.
    pub fn new(id: RoomId, epoch: u64, limits: Limits) -> Room {
        Room::from_snapshot(id, epoch, 0, Map::new(), limits)
    }

    /// A room that continues from a snapshot (state at `tick`), with an empty resume ring.
    /// The state is taken as it is, even above the limits.
    pub fn from_snapshot(id: RoomId, epoch: u64, tick: u64, state: Map, limits: Limits) -> Room {
        Room {
            id,
            epoch,
            tick,
            limits,
            tree: Tree::new(state),
            changes: Changes::default(),
            ring: VecDeque::new(),
            undo_log: Vec::new(),
        }
    }

    pub fn id(&self) -> &RoomId {
        &self.id
    }

    /// The tick of the latest delta (0 before the first).
    pub fn tick(&self) -> u64 {
        self.tick
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Changes the epoch (another instance took the room over, or this one took it). The
    /// resume ring spans one epoch, so a change empties it: a client of the old epoch then
    /// gets the full state. Pending changes stay pending and the next delta carries the
    /// new epoch.
    pub fn set_epoch(&mut self, epoch: u64) {
        if epoch != self.epoch {
            self.epoch = epoch;
            self.ring.clear();
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The state now, pending changes included (always a map).
    pub fn state(&self) -> &Value {
        self.tree.root()
    }

    /// The size of the state (see [`size`]).
    pub fn state_bytes(&self) -> usize {
        self.tree.bytes()
    }

    /// Applies the ops of one `op` message atomically, in order: all or none. On an error
    /// the state is exactly as before and nothing is marked for the next delta.
    ///
    /// The ops are taken by value: their values move into the state and their paths into
    /// the change marks, so a message is applied without cloning.
    pub fn apply(&mut self, ops: Vec<Op>) -> Result<Applied, ApplyError> {
        let bytes_before = self.tree.bytes();
        let last = ops.len().saturating_sub(1);
        let mut log = std::mem::take(&mut self.undo_log);
        log.clear();
        let mut failure = None;
        for (index, op) in ops.into_iter().enumerate() {
            match self.tree.apply(op, self.limits.max_path_depth) {
                Ok(Some(done)) => log.push(done),
                Ok(None) => {}
                Err(rule) => {
                    failure = Some(ApplyError { index, rule });
                    break;
                }
            }
        }
        let size = self.tree.bytes();
        if failure.is_none() && size > self.limits.max_state_bytes && size > bytes_before {
            failure = Some(ApplyError {
                index: last,
                rule: OpError::StateTooLarge {
                    size,
                    max: self.limits.max_state_bytes,
                },
            });
        }
        let result = match failure {
            Some(error) => {
                while let Some(done) = log.pop() {
                    self.tree.undo(done);
                }
                self.tree.restore_bytes(bytes_before);
                Err(error)
            }
            None if log.is_empty() => Ok(Applied::Unchanged),
            None => {
                for done in log.drain(..) {
                    let (path, mark) = done.into_mark();
                    self.changes.mark(path, mark);
                }
                Ok(Applied::Changed)
            }
        };
        self.undo_log = log;
        result
    }

    /// Whether changes were applied that the next flush turns into a delta.
    pub fn has_pending(&self) -> bool {
        !self.changes.is_empty()
    }

    /// The tick the next delta gets: `tick() + 1`. A message acked while a delta is
    /// pending (changed or not) is acked with it.
    pub fn pending_tick(&self) -> u64 {
        self.tick + 1
    }

    /// Turns everything applied since the last flush into one delta with tick `tick() + 1`,
    /// keeps it in the resume ring, and returns it; `None` when nothing changed.
    pub fn flush(&mut self) -> Option<Rc<DeltaRecord>> {
        self.flush_encoded(|_, _, _, _| [None, None])
    }

    /// [`Room::flush`] for a caller that encodes the delta at once: `encode` gets the room,
    /// the new tick, the epoch and the ops with their values borrowed from the state, and
    /// returns the frames it made (by subprotocol index). With the MessagePack frame made,
    /// the record keeps no ops (as an older ring entry would), so the values are never
    /// copied; otherwise it keeps its own copy of the ops.
    pub fn flush_encoded(
        &mut self,
        encode: impl FnOnce(&RoomId, u64, u64, &[DeltaOp<&Value>]) -> [Option<Bytes>; 2],
    ) -> Option<Rc<DeltaRecord>> {
        if self.changes.is_empty() {
            return None;
        }
        let tick = self.tick + 1;
        let borrowed = self.changes.take_ops_of(self.tree.root());
        let [msgpack, json] = encode(&self.id, tick, self.epoch, &borrowed);
        let ops = if msgpack.is_some() {
            Vec::new()
        } else {
            borrowed.into_iter().map(DeltaOp::into_owned).collect()
        };
        self.tick = tick;
        let record = DeltaRecord::new(tick, self.epoch, ops);
        for (cell, frame) in record.frames.iter().zip([msgpack, json]) {
            if let Some(frame) = frame {
                let _ = cell.set(frame);
            }
        }
        let record = Rc::new(record);
        // The previous delta is out by now: once its MessagePack frame is cached, the ring
        // keeps only the frames (a value tree costs several times its encoding).
        if let Some(last) = self.ring.back_mut().and_then(Rc::get_mut) {
            if last.frames[0].get().is_some() {
                last.ops = Vec::new();
            }
        }
        if self.limits.resume_window > 0 {
            if self.ring.len() >= self.limits.resume_window {
                self.ring.pop_front();
            }
            self.ring.push_back(Rc::clone(&record));
        }
        Some(record)
    }

    /// The deltas a client holding tick `since` of `epoch` (`None`: the current epoch)
    /// needs, oldest first:
    /// - `Some(empty)` when `since` is the current tick;
    /// - `Some(deltas after since)` when the ring still holds tick `since + 1`;
    /// - `None` (send the full state) for another epoch, a `since` above the current tick,
    ///   or one that the ring no longer covers.
    pub fn deltas_since(&self, since: u64, epoch: Option<u64>) -> Option<Vec<Rc<DeltaRecord>>> {
        if epoch.is_some_and(|epoch| epoch != self.epoch) || since > self.tick {
            return None;
        }
        if since == self.tick {
            return Some(Vec::new());
        }
        let oldest = self.ring.front()?.tick;
        if oldest > since + 1 {
            return None;
        }
        let skip = usize::try_from(since + 1 - oldest).ok()?;
        Some(self.ring.iter().skip(skip).cloned().collect())
    }
}
