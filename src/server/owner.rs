//! The owner side of a room: the shard that holds its authoritative state.
//!
//! Requests arrive here from every shard (through the mesh, or directly from this one).
//! Ops are applied at once; deltas are made by the flusher, which runs after the tasks
//! that were ready in the same executor turn: under light load each op is its own delta,
//! under heavy load every op of a turn shares one delta. A delta is encoded once per
//! subprotocol in use and sent once per member shard; acks follow it on the same path, so
//! a sender always sees the delta holding its op before the op's ack.
//!
//! Invariants:
//! - A snapshot (`joined`) is only taken with no unflushed ops: the room is flushed first,
//!   so the snapshot's tick is exact and the next delta a member gets is tick + 1.
//! - Each `op` message lands in exactly one delta; ticks go up by 1 per delta.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use indexmap::IndexMap;

use super::encode;
use super::fleet::Held;
use super::metrics::ShardMetrics;
use super::shard::{ConnRef, Frames, MeshMsg, Origin, Shard};
use super::telemetry::Stage;
use crate::protocol::{ErrorCode, Op, RoomId, ServerMessage, Subprotocol};
use crate::room::{self, Applied, DeltaRecord, Room};
use crate::value::Value;

/// An answer held back until the room's pending delta is out.
pub(super) enum Reply {
    /// An `ack` with the delta's tick; `received` is when the op was read.
    Ack { seq: u64, received: Instant },
    /// An answer already encoded (an error).
    Frame(Bytes),
}

struct Member {
    id: String,
    proto: Subprotocol,
}

/// A room this shard owns, with its members across all shards.
pub struct RoomHost {
    pub(super) room: Room,
    /// Members in join order (the `members` list of `joined`).
    members: IndexMap<ConnRef, Member>,
    /// Members per shard; with Redis one more slot counts members of other instances.
    pub(super) per_shard: Vec<u32>,
    pub(super) per_proto: [u32; 2],
    /// Answers due right after the next delta, in request order.
    pub(super) replies: Vec<(Origin, Reply)>,
    pub(super) dirty: bool,
    empty_since: Option<Instant>,
    /// With Redis: outputs waiting for the log (see `fleet::log`). Always empty without.
    pub(super) held: Held,
}

impl RoomHost {
    pub(super) fn new(room: Room, shards: usize, now: Instant) -> RoomHost {
        RoomHost {
            room,
            members: IndexMap::new(),
            per_shard: vec![0; shards],
            per_proto: [0; 2],
            replies: Vec::new(),
            dirty: false,
            empty_since: Some(now),
            held: Held::default(),
        }
    }

    /// Members on this instance's shards (`shards` and above stand for other instances).
    pub(super) fn local_members(&self, shards: usize) -> impl Iterator<Item = (Origin, &str)> + '_ {
        self.members
            .iter()
            .filter(move |(c, _)| c.shard < shards)
            .map(|(conn, m)| {
                let origin = Origin {
                    conn: *conn,
                    proto: m.proto,
                };
                (origin, m.id.as_str())
            })
    }

    /// Members on pseudo shards at or above `shards` (other instances', with Redis).
    pub(super) fn remote_members(&self, shards: usize) -> impl Iterator<Item = Origin> + '_ {
        self.members
            .iter()
            .filter(move |(c, _)| c.shard >= shards)
            .map(|(conn, m)| Origin {
                conn: *conn,
                proto: m.proto,
            })
    }

    /// A member's origin and id.
    pub(super) fn member(&self, conn: ConnRef) -> Option<(Origin, &str)> {
        self.members.get(&conn).map(|m| {
            let origin = Origin {
                conn,
                proto: m.proto,
            };
            (origin, m.id.as_str())
        })
    }

    pub(super) fn has_member(&self, conn: ConnRef) -> bool {
        self.members.contains_key(&conn)
    }

    fn member_index(&self, conn: ConnRef) -> Option<usize> {
        self.members.get_index_of(&conn)
    }

    fn wanted(&self) -> [bool; 2] {
        [self.per_proto[0] > 0, self.per_proto[1] > 0]
    }

    fn member_ids(&self) -> Vec<String> {
        self.members.values().map(|m| m.id.clone()).collect()
    }

    /// The framed encoding of a delta for one subprotocol, made once and cached. A delta
    /// encoded at its flush, and any older ring entry, keeps only its MessagePack frame (and
    /// a JSON one if made then); a JSON frame asked for later is transcoded from it.
    pub(super) fn delta_frame(&self, delta: &DeltaRecord, proto: Subprotocol) -> Bytes {
        delta.frames[proto.index()]
            .get_or_init(|| {
                if delta.ops.is_empty() {
                    if let Some(frame) = delta.frames[Subprotocol::MsgPack.index()]
                        .get()
                        .and_then(encode::msgpack_frame_to_json)
                    {
                        return frame;
                    }
                }
                encode::frame(
                    &ServerMessage::Delta {
                        room: self.room.id().as_str(),
                        tick: delta.tick,
                        epoch: delta.epoch,
                        ops: &delta.ops,
                    },
                    proto,
                )
            })
            .clone()
    }
}

impl Shard {
    pub(super) fn room_limits(&self) -> room::Limits {
        let l = &self.config.limits;
        room::Limits {
            max_state_bytes: l.max_state_bytes,
            max_path_depth: l.max_path_depth,
            resume_window: l.resume_window,
        }
    }

    /// Sends a frame set to every shard with members of `host`'s room.
    fn fan_out(
        &self,
        host: &mut RoomHost,
        frames: Frames,
        exclude: Option<ConnRef>,
        flushed_at: Option<Instant>,
    ) {
        let sent = flushed_at.unwrap_or_else(Instant::now);
        for shard in 0..host.per_shard.len() {
            if host.per_shard[shard] == 0 {
                continue;
            }
            let room = host.room.id().clone();
            self.host_send(
                host,
                shard,
                MeshMsg::Deliver {
                    room,
                    frames: frames.clone(),
                    exclude,
                    sent,
                    flushed_at,
                },
            );
        }
    }

    pub(super) fn owner_join(
        &self,
        room_id: RoomId,
        origin: Origin,
        member: String,
        since: Option<u64>,
        epoch: Option<u64>,
    ) {
        let now = self.now();
        let mut rooms = self.rooms.borrow_mut();
        if !rooms.contains_key(&room_id) {
            // With Redis the fleet creates hosts (loaded from Redis) before routing here.
            let room = Room::new(room_id.clone(), 0, self.room_limits());
            let slots = self.shards + usize::from(self.fleet.is_some());
            rooms.insert(room_id.clone(), RoomHost::new(room, slots, now));
            ShardMetrics::add(&self.metrics().rooms, 1);
        }
        let host = rooms.get_mut(&room_id).expect("inserted above");
        let existing = host.member_index(origin.conn);
        if existing.is_none() && host.members.len() >= self.config.limits.max_members_per_room {
            drop(rooms);
            let frame = encode::frame(
                &ServerMessage::Error {
                    code: ErrorCode::RoomFull,
                    message: "the room has as many members as it may",
                    room: Some(room_id.as_str()),
                    seq: None,
                },
                origin.proto,
            );
            return self.send(
                origin.conn.shard,
                MeshMsg::JoinRefused {
                    room: room_id,
                    conn: origin.conn.id,
                    frame,
                },
            );
        }
        // The snapshot must sit on a tick boundary, after every answer owed before it.
        if host.dirty {
            self.flush_host(host);
        }
        if existing.is_none() {
            host.members.insert(
                origin.conn,
                Member {
                    id: member.clone(),
                    proto: origin.proto,
                },
            );
            host.per_shard[origin.conn.shard] += 1;
            host.per_proto[origin.proto.index()] += 1;
            host.empty_since = None;
        }
        let members = host.member_ids();
        let resumed = since.and_then(|since| {
            host.room
                .deltas_since(since, epoch)
                .or_else(|| self.fleet_resume(host, since, epoch?))
        });
        let mut frames = Vec::with_capacity(1 + resumed.as_ref().map_or(0, Vec::len));
        frames.push(encode::frame(
            &ServerMessage::Joined {
                room: room_id.as_str(),
                tick: host.room.tick(),
                epoch: host.room.epoch(),
                you: &member,
                members: &members,
                state: if resumed.is_some() {
                    None
                } else {
                    Some(host.room.state())
                },
                resync: false,
            },
            origin.proto,
        ));
        for delta in resumed.iter().flatten() {
            frames.push(host.delta_frame(delta, origin.proto));
        }
        self.host_send(
            host,
            origin.conn.shard,
            MeshMsg::Joined {
                room: room_id.clone(),
                conn: origin.conn.id,
                frames,
                answers_join: true,
            },
        );
        if existing.is_none() {
            let joined = [member];
            let presence = encode::frames(
                &ServerMessage::Presence {
                    room: room_id.as_str(),
                    joined: &joined,
                    left: &[],
                },
                host.wanted(),
            );
            self.fan_out(host, presence, Some(origin.conn), None);
        }
    }

    pub(super) fn owner_leave(&self, room_id: RoomId, origin: Origin, reply: bool) {
        let mut rooms = self.rooms.borrow_mut();
        let mut removed = false;
        if let Some(host) = rooms.get_mut(&room_id) {
            if let Some(i) = host.member_index(origin.conn) {
                // The leaver gets the delta of its own last ops, and their acks, first.
                if host.dirty {
                    self.flush_host(host);
                }
                let (conn, member) = host.members.swap_remove_index(i).expect("index just found");
                host.per_shard[conn.shard] -= 1;
                host.per_proto[member.proto.index()] -= 1;
                if host.members.is_empty() {
                    host.empty_since = Some(self.now());
                } else {
                    let left = [member.id];
                    let presence = encode::frames(
                        &ServerMessage::Presence {
                            room: room_id.as_str(),
                            joined: &[],
                            left: &left,
                        },
                        host.wanted(),
                    );
                    // Still listed on its shard until `Left` arrives: exclude it.
                    self.fan_out(host, presence, Some(origin.conn), None);
                }
                removed = true;
            }
        }
        if !reply {
            return;
        }
        let frame = if removed {
            encode::frame(
                &ServerMessage::Left {
                    room: room_id.as_str(),
                    reason: None,
                },
                origin.proto,
            )
        } else {
            not_joined(&room_id, None, origin.proto)
        };
        let msg = MeshMsg::Left {
            room: room_id.clone(),
            conn: origin.conn.id,
            frame,
        };
        match rooms.get_mut(&room_id) {
            Some(host) => self.host_send(host, origin.conn.shard, msg),
            None => {
                drop(rooms);
                self.send(origin.conn.shard, msg);
            }
        }
    }

    pub(super) fn owner_op(
        &self,
        room_id: RoomId,
        origin: Origin,
        seq: u64,
        ops: Vec<Op>,
        received: Instant,
    ) {
        let mut rooms = self.rooms.borrow_mut();
        let Some(host) = rooms
            .get_mut(&room_id)
            .filter(|h| h.member_index(origin.conn).is_some())
        else {
            drop(rooms);
            return self.reply(origin.conn, not_joined(&room_id, Some(seq), origin.proto));
        };
        let max = self.config.limits.max_ops_per_message;
        if ops.len() > max {
            let message = format!("at most {max} ops per message");
            let frame = error_frame(
                ErrorCode::TooLarge,
                &message,
                &room_id,
                Some(seq),
                origin.proto,
            );
            return self.reply_in_order(host, origin, frame);
        }
        match host.room.apply(ops) {
            Ok(Applied::Changed) => {
                host.replies.push((origin, Reply::Ack { seq, received }));
                if !host.dirty {
                    host.dirty = true;
                    drop(rooms);
                    self.mark_dirty(room_id);
                }
            }
            Ok(Applied::Unchanged) if host.dirty => {
                // Its effect is already in the pending delta: ack with that tick.
                host.replies.push((origin, Reply::Ack { seq, received }));
            }
            Ok(Applied::Unchanged) => {
                let tick = host.room.tick();
                let frame = encode::frame(
                    &ServerMessage::Ack {
                        room: room_id.as_str(),
                        seq,
                        tick,
                    },
                    origin.proto,
                );
                let to = MeshMsg::ToConn {
                    conn: origin.conn.id,
                    frame,
                };
                self.host_send_as(host, origin.conn.shard, to, Some((origin, seq)));
            }
            Err(err) => {
                let frame = error_frame(
                    err.code(),
                    &err.to_string(),
                    &room_id,
                    Some(seq),
                    origin.proto,
                );
                self.reply_in_order(host, origin, frame);
            }
        }
    }

    /// Answers now, or after the pending delta when the room has one: answers to one
    /// connection go out in the order of its requests.
    fn reply_in_order(&self, host: &mut RoomHost, origin: Origin, frame: Bytes) {
        if host.dirty {
            host.replies.push((origin, Reply::Frame(frame)));
        } else {
            self.host_reply(host, origin.conn, frame);
        }
    }

    /// A reply to one connection, behind whatever the host holds for the log.
    fn host_reply(&self, host: &mut RoomHost, to: ConnRef, frame: Bytes) {
        self.host_send(host, to.shard, MeshMsg::ToConn { conn: to.id, frame });
    }

    pub(super) fn owner_msg(&self, room_id: RoomId, origin: Origin, data: Value) {
        let mut rooms = self.rooms.borrow_mut();
        let member = rooms.get_mut(&room_id).and_then(|h| {
            let i = h.member_index(origin.conn)?;
            Some((h, i))
        });
        let Some((host, i)) = member else {
            drop(rooms);
            return self.reply(origin.conn, not_joined(&room_id, None, origin.proto));
        };
        // Members see the sender's earlier ops before its message.
        if host.dirty {
            self.flush_host(host);
        }
        let frames = encode::frames(
            &ServerMessage::Msg {
                room: room_id.as_str(),
                from: &host.members[i].id,
                data: &data,
            },
            host.wanted(),
        );
        self.fan_out(host, frames, Some(origin.conn), None);
    }

    pub(super) fn owner_resync(&self, room_id: RoomId, origin: Origin) {
        let mut rooms = self.rooms.borrow_mut();
        let Some(host) = rooms.get_mut(&room_id) else {
            return;
        };
        let Some(i) = host.member_index(origin.conn) else {
            return;
        };
        if host.dirty {
            self.flush_host(host);
        }
        let members = host.member_ids();
        let frame = encode::frame(
            &ServerMessage::Joined {
                room: room_id.as_str(),
                tick: host.room.tick(),
                epoch: host.room.epoch(),
                you: &host.members[i].id,
                members: &members,
                state: Some(host.room.state()),
                resync: true,
            },
            origin.proto,
        );
        ShardMetrics::add(&self.metrics().resyncs, 1);
        self.host_send(
            host,
            origin.conn.shard,
            MeshMsg::Joined {
                room: room_id,
                conn: origin.conn.id,
                frames: vec![frame],
                answers_join: false,
            },
        );
    }

    fn mark_dirty(&self, room: RoomId) {
        self.dirty.borrow_mut().push(room);
        if let Some(waker) = self.flush_waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Turns a room's applied ops into one delta, fans it out, then sends the acks.
    fn flush_host(&self, host: &mut RoomHost) {
        if self.fleet.is_some() {
            return self.fleet_flush(host);
        }
        host.dirty = false;
        let now = Instant::now();
        let wanted = host.wanted();
        // Encoded from the state itself, so the delta's values are not copied. MessagePack
        // always: the resume ring keeps that frame, not the ops.
        let encoded = host.room.flush_encoded(|room, tick, epoch, ops| {
            let delta = ServerMessage::DeltaOfState {
                room: room.as_str(),
                tick,
                epoch,
                ops,
            };
            [
                Some(encode::frame(&delta, Subprotocol::MsgPack)),
                wanted[Subprotocol::Json.index()].then(|| encode::frame(&delta, Subprotocol::Json)),
            ]
        });
        let tick = match encoded {
            Some(delta) => {
                let mut frames: Frames = [None, None];
                for proto in Subprotocol::ALL {
                    if wanted[proto.index()] {
                        frames[proto.index()] = Some(host.delta_frame(&delta, proto));
                    }
                }
                ShardMetrics::add(&self.metrics().deltas, 1);
                self.fan_out(host, frames, None, Some(now));
                delta.tick
            }
            None => host.room.tick(),
        };
        for (origin, reply) in host.replies.drain(..) {
            let frame = self.reply_frame(host.room.id(), reply, tick, origin.proto, now);
            self.reply(origin.conn, frame);
        }
    }

    /// The frame of an answer owed at a flush: an `ack` at `tick` (its op's receive ->
    /// flush latency recorded), or a reply framed earlier.
    pub(super) fn reply_frame(
        &self,
        room: &RoomId,
        reply: Reply,
        tick: u64,
        proto: Subprotocol,
        now: Instant,
    ) -> Bytes {
        match reply {
            Reply::Ack { seq, received } => {
                self.telemetry
                    .record(Stage::OpToFlush, now.saturating_duration_since(received));
                encode::frame(
                    &ServerMessage::Ack {
                        room: room.as_str(),
                        seq,
                        tick,
                    },
                    proto,
                )
            }
            Reply::Frame(frame) => frame,
        }
    }

    /// Flushes every dirty room (the end of an executor turn).
    pub fn flush_dirty(&self) {
        let dirty = std::mem::take(&mut *self.dirty.borrow_mut());
        let mut rooms = self.rooms.borrow_mut();
        for room in &dirty {
            if let Some(host) = rooms.get_mut(room) {
                if host.dirty {
                    self.flush_host(host);
                }
            }
        }
        drop(rooms);
        // Give the vector back so the next turn does not allocate.
        let mut slot = self.dirty.borrow_mut();
        if slot.is_empty() {
            let mut dirty = dirty;
            dirty.clear();
            *slot = dirty;
        }
    }

    /// Waits until some room is dirty.
    pub fn dirty_rooms(self: &Rc<Self>) -> impl Future<Output = ()> + '_ {
        DirtyRooms { shard: self }
    }

    /// Drops rooms that have been empty longer than the grace period.
    pub fn sweep_rooms(&self, now: Instant) {
        let grace = self.config.limits.room_grace;
        let mut rooms = self.rooms.borrow_mut();
        let before = rooms.len();
        rooms.retain(|_, h| {
            !(h.members.is_empty()
                && !h.dirty
                && h.empty_since
                    .is_some_and(|t| now.duration_since(t) >= grace))
        });
        let dropped = before - rooms.len();
        ShardMetrics::sub(&self.metrics().rooms, dropped as u64);
    }
}

struct DirtyRooms<'a> {
    shard: &'a Shard,
}

impl Future for DirtyRooms<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if !self.shard.dirty.borrow().is_empty() {
            return Poll::Ready(());
        }
        *self.shard.flush_waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

fn error_frame(
    code: ErrorCode,
    message: &str,
    room: &RoomId,
    seq: Option<u64>,
    proto: Subprotocol,
) -> Bytes {
    encode::frame(
        &ServerMessage::Error {
            code,
            message,
            room: Some(room.as_str()),
            seq,
        },
        proto,
    )
}

fn not_joined(room: &RoomId, seq: Option<u64>, proto: Subprotocol) -> Bytes {
    error_frame(
        ErrorCode::NotJoined,
        "join the room first",
        room,
        seq,
        proto,
    )
}
