//! One shard's state and the member side of every room.
//!
//! A connection lives on the shard that accepted it; a room lives on its owner shard
//! (`shard_of(room)`). This file is what a shard does for its *connections*: it checks a
//! request against the connection's memberships and routes it to the owner (a direct call
//! when the owner is this shard, the mesh otherwise), and it delivers what owners send
//! back: deltas, presence and messages fanned out once per shard, snapshots and replies
//! addressed to one connection. The owner side is `owner.rs`.
//!
//! Invariants:
//! - Everything an owner sends to one shard travels in one FIFO (the mesh keeps order per
//!   peer, the local shortcut is a direct call), so a member sees a room's messages in the
//!   owner's order: a snapshot, then exactly the deltas after it.
//! - No `RefCell` borrow is held across a call that may re-enter the shard (routing to the
//!   local owner delivers to local connections synchronously).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kasagi_shards::{shard_of, Mesh, ShardId};

use super::auth::{Grant, Verifier};
use super::encode;
use super::fleet::Fleet;
use super::metrics::{AllMetrics, ShardMetrics};
use super::outbound::{Outbound, Pushed};
use super::owner::RoomHost;
use super::telemetry::{Published, Recorder, Stage};
use crate::config::Config;
use crate::protocol::{ClientMessage, ErrorCode, Op, RoomId, ServerMessage, Subprotocol};
use crate::value::Value;
use crate::ws::close_code;

/// A connection's number on its shard.
pub type ConnId = u64;

/// A connection anywhere in the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnRef {
    pub shard: ShardId,
    pub id: ConnId,
}

/// Who sent a request: where to answer and in which encoding.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    pub conn: ConnRef,
    pub proto: Subprotocol,
}

/// Frames of one message, per subprotocol index; `None` where no recipient needs it.
pub type Frames = [Option<Bytes>; 2];

/// Messages between shards. Requests go from a connection's shard to a room's owner;
/// the rest go back. When a peer's channel is full the mesh queues the message in order
/// (see `kasagi_shards::mesh`); nothing here is dropped in transit.
pub enum MeshMsg {
    Join {
        room: RoomId,
        origin: Origin,
        member: String,
        since: Option<u64>,
        epoch: Option<u64>,
    },
    Leave {
        room: RoomId,
        origin: Origin,
        /// False when the connection is gone and wants no answer.
        reply: bool,
    },
    Op {
        room: RoomId,
        origin: Origin,
        seq: u64,
        ops: Vec<Op>,
        /// When the message was read from its socket.
        received: Instant,
    },
    Msg {
        room: RoomId,
        origin: Origin,
        data: Value,
    },
    /// A slow consumer drained its queue and needs a fresh snapshot.
    Resync { room: RoomId, origin: Origin },
    /// Fan-out to every local member of `room` (deltas, presence, `msg`).
    Deliver {
        room: RoomId,
        frames: Frames,
        exclude: Option<ConnRef>,
        /// When the owner sent it.
        sent: Instant,
        /// Set for deltas: when the delta was flushed.
        flushed_at: Option<Instant>,
    },
    /// A `joined` (and the deltas of a resume) for one member: framed as the answer to a
    /// join, or as an unasked snapshot for a slow consumer (`answers_join` false, the frame
    /// says `resync`). An answer the client has no join waiting for (a re-registration
    /// after an owner change) is marked unasked by the connection's shard.
    Joined {
        room: RoomId,
        conn: ConnId,
        frames: Vec<Bytes>,
        answers_join: bool,
    },
    /// The answer to a leave: `left`, or `error not_joined` when it was no member.
    Left {
        room: RoomId,
        conn: ConnId,
        frame: Bytes,
    },
    /// The answer to a join that the owner refused (`room_full`).
    JoinRefused {
        room: RoomId,
        conn: ConnId,
        frame: Bytes,
    },
    /// A reply (ack, error) for one connection.
    ToConn { conn: ConnId, frame: Bytes },
    /// A relay found the log trimmed past what its members hold: a full `joined` is on its
    /// way to the connection, and the room's deltas before it are dropped (the snapshot
    /// supersedes them; delivered, they would show the client a tick gap).
    AwaitSnapshot { room: RoomId, conn: ConnId },
}

/// Whether a member's copy of a room follows the deltas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    Synced,
    /// Deltas were dropped (queue overflow); a snapshot is due once the queue drains.
    Stale,
    /// The snapshot was requested; deltas are dropped until it arrives.
    Resyncing,
}

/// One room as a connection's own shard sees it.
///
/// The owner is the authority on membership; this entry tracks what the client asked for
/// and what the owner last answered, so that joins and leaves sent in a burst (and
/// answered later, in order) leave both sides agreeing, and a disconnect leaves exactly the
/// rooms the owner will still count it in.
#[derive(Debug, Clone, Copy)]
pub struct RoomEntry {
    /// The client's last request for the room was a join.
    wanted: bool,
    /// The owner's last answer made the connection a member.
    member: bool,
    /// Joins and leaves sent to the owner and not answered yet.
    pending: u32,
    /// Of those, the joins: a `joined` answer while none waits is unasked.
    joins: u32,
    /// The connection is in the shard's member list of the room.
    listed: bool,
    sync: Sync,
}

impl RoomEntry {
    fn new() -> RoomEntry {
        RoomEntry {
            wanted: false,
            member: false,
            pending: 0,
            joins: 0,
            listed: false,
            sync: Sync::Synced,
        }
    }

    /// Nothing is in flight and the owner does not count the connection: forget the room.
    fn is_done(&self) -> bool {
        self.pending == 0 && !self.member
    }
}

/// One WebSocket connection's state shared between its task and its shard.
pub struct Conn {
    pub id: ConnId,
    pub member: Rc<str>,
    pub proto: Subprotocol,
    pub out: RefCell<Outbound>,
    pub rooms: RefCell<HashMap<RoomId, RoomEntry>>,
    /// Some room is `Stale`: the task asks for snapshots when the queue drains.
    pub stale: Cell<bool>,
    /// Some room is `Stale` or `Resyncing`: deltas need a look at the room's membership.
    unsynced: Cell<bool>,
    pub grant: Grant,
    /// Set when the server wants the connection closed (drain, policy).
    pub closing: Cell<Option<u16>>,
}

impl Conn {
    pub fn new(
        id: ConnId,
        member: Rc<str>,
        proto: Subprotocol,
        out: Outbound,
        grant: Grant,
    ) -> Conn {
        Conn {
            id,
            member,
            proto,
            out: RefCell::new(out),
            rooms: RefCell::new(HashMap::new()),
            stale: Cell::new(false),
            unsynced: Cell::new(false),
            grant,
            closing: Cell::new(None),
        }
    }

    /// Queues a close frame and stops queuing anything else.
    pub fn close(&self, code: u16, reason: &str) {
        self.close_with(code, crate::ws::frame::close_frame(code, reason));
    }

    /// Answers a close frame that carried no code with an empty one (RFC 6455 5.5.1).
    pub fn close_empty(&self) {
        let frame = crate::ws::frame::encode_frame(crate::ws::frame::Opcode::Close, &[]);
        self.close_with(close_code::NORMAL, frame);
    }

    fn close_with(&self, code: u16, frame: Vec<u8>) {
        if self.closing.get().is_some() {
            return;
        }
        self.closing.set(Some(code));
        let mut out = self.out.borrow_mut();
        out.push_control(Bytes::from(frame));
        out.close();
    }

    /// Delivers a fan-out frame of `room`, dropping it while the member awaits a snapshot.
    fn deliver(&self, room: &RoomId, frame: &Bytes, flushed_at: Option<Instant>) -> bool {
        if self.unsynced.get() {
            if let Some(entry) = self.rooms.borrow().get(room) {
                if entry.sync != Sync::Synced {
                    return false;
                }
            }
        }
        let pushed = self.out.borrow_mut().push_delta(frame.clone(), flushed_at);
        if pushed == Pushed::DroppedDeltas {
            let mut rooms = self.rooms.borrow_mut();
            for entry in rooms.values_mut() {
                if entry.member && entry.sync == Sync::Synced {
                    entry.sync = Sync::Stale;
                }
            }
            self.stale.set(true);
            self.unsynced.set(true);
            return false;
        }
        true
    }
}

/// One shard: its connections, the rooms it owns, and its view of rooms its connections
/// are in.
pub struct Shard {
    pub id: ShardId,
    pub shards: usize,
    pub config: Rc<Config>,
    pub metrics: AllMetrics,
    pub verifier: Option<Verifier>,
    pub telemetry: Recorder,
    pub published: Arc<Published>,
    mesh: Mesh<MeshMsg>,
    next_conn: Cell<ConnId>,
    pub(super) conns: RefCell<HashMap<ConnId, Rc<Conn>>>,
    /// Local members of each room that has any, whoever owns it.
    members: RefCell<HashMap<RoomId, Vec<Rc<Conn>>>>,
    /// Rooms this shard owns.
    pub(super) rooms: RefCell<HashMap<RoomId, RoomHost>>,
    /// Owned rooms with applied, unflushed ops, and the flusher to wake for them.
    pub(super) dirty: RefCell<Vec<RoomId>>,
    pub(super) flush_waker: RefCell<Option<std::task::Waker>>,
    pub stopping: Cell<bool>,
    /// With `--redis`: this shard's side of the fleet (`fleet/`).
    pub(super) fleet: Option<Fleet>,
}

impl Shard {
    pub fn new(
        config: Rc<Config>,
        metrics: AllMetrics,
        mesh: Mesh<MeshMsg>,
        verifier: Option<Verifier>,
        published: Arc<Published>,
    ) -> Shard {
        let fleet = config.redis.clone().and_then(|redis| {
            Fleet::new(redis, mesh.id())
                .map_err(|error| tracing::error!(cause = %error, "bad Redis URL"))
                .ok()
        });
        Shard {
            fleet,
            id: mesh.id(),
            shards: mesh.shards(),
            config,
            metrics,
            verifier,
            telemetry: Recorder::default(),
            published,
            mesh,
            next_conn: Cell::new(1),
            conns: RefCell::new(HashMap::new()),
            members: RefCell::new(HashMap::new()),
            rooms: RefCell::new(HashMap::new()),
            dirty: RefCell::new(Vec::new()),
            flush_waker: RefCell::new(None),
            stopping: Cell::new(false),
        }
    }

    pub fn metrics(&self) -> &ShardMetrics {
        &self.metrics[self.id]
    }

    /// Registers a new connection and gives it its member id.
    pub fn open_conn(&self, proto: Subprotocol, grant: Grant) -> Rc<Conn> {
        let id = self.next_conn.get();
        self.next_conn.set(id + 1);
        let member: Rc<str> = match &self.fleet {
            // Unique across the fleet: members of one room come from every instance.
            Some(fleet) => format!("{}.s{}c{}", fleet.instance(), self.id, id).into(),
            None => format!("s{}c{}", self.id, id).into(),
        };
        let out = Outbound::new(self.config.limits.outbound_queue_bytes)
            .with_peak_gauge(self.metrics.clone(), self.id);
        let conn = Rc::new(Conn::new(id, member, proto, out, grant));
        self.conns.borrow_mut().insert(id, conn.clone());
        ShardMetrics::add(&self.metrics().connections, 1);
        conn
    }

    /// Forgets a connection and leaves all its rooms.
    pub fn close_conn(&self, conn: &Rc<Conn>) {
        if self.conns.borrow_mut().remove(&conn.id).is_none() {
            return;
        }
        ShardMetrics::sub(&self.metrics().connections, 1);
        let rooms: Vec<(RoomId, RoomEntry)> = conn.rooms.borrow_mut().drain().collect();
        for (room, entry) in rooms {
            if entry.listed {
                self.remove_local_member(&room, conn.id);
            }
            // After its last request the owner counts the connection in exactly when that
            // request was a join (a refused join makes the leave a no-op).
            if entry.wanted {
                let origin = self.origin(conn);
                self.route(
                    &room,
                    MeshMsg::Leave {
                        room: room.clone(),
                        origin,
                        reply: false,
                    },
                );
            }
        }
    }

    /// Open connections on this shard.
    pub fn conns(&self) -> Vec<Rc<Conn>> {
        self.conns.borrow().values().cloned().collect()
    }

    pub fn conn_count(&self) -> usize {
        self.conns.borrow().len()
    }

    fn origin(&self, conn: &Conn) -> Origin {
        Origin {
            conn: ConnRef {
                shard: self.id,
                id: conn.id,
            },
            proto: conn.proto,
        }
    }

    pub fn owner_of(&self, room: &RoomId) -> ShardId {
        shard_of(room.as_str().as_bytes(), self.shards)
    }

    /// Sends a message to `room`'s owner, directly when that is this shard.
    fn route(&self, room: &RoomId, msg: MeshMsg) {
        let owner = self.owner_of(room);
        self.send(owner, msg);
    }

    /// Sends a message to a shard, directly when that is this shard.
    pub(super) fn send(&self, dst: ShardId, msg: MeshMsg) {
        if dst == self.id {
            self.handle(self.id, msg);
        } else if dst >= self.shards {
            self.fleet_send_remote(msg);
        } else {
            self.mesh.send(dst, msg);
        }
    }

    /// Handles a message from a shard (this one included).
    pub fn handle(&self, from: ShardId, msg: MeshMsg) {
        let Some(msg) = self.fleet_route(from, msg) else {
            return;
        };
        match msg {
            MeshMsg::Join {
                room,
                origin,
                member,
                since,
                epoch,
            } => self.owner_join(room, origin, member, since, epoch),
            MeshMsg::Leave {
                room,
                origin,
                reply,
            } => self.owner_leave(room, origin, reply),
            MeshMsg::Op {
                room,
                origin,
                seq,
                ops,
                received,
            } => {
                if from != self.id {
                    self.telemetry.record(Stage::ShardHop, received.elapsed());
                }
                self.owner_op(room, origin, seq, ops, received)
            }
            MeshMsg::Msg { room, origin, data } => self.owner_msg(room, origin, data),
            MeshMsg::Resync { room, origin } => self.owner_resync(room, origin),
            MeshMsg::Deliver {
                room,
                frames,
                exclude,
                sent,
                flushed_at,
            } => {
                if from != self.id {
                    self.telemetry.record(Stage::ShardHop, sent.elapsed());
                }
                self.deliver_local(&room, &frames, exclude, flushed_at)
            }
            MeshMsg::Joined {
                room,
                conn,
                frames,
                answers_join,
            } => self.member_joined(room, conn, frames, answers_join),
            MeshMsg::Left { room, conn, frame } => self.member_left(room, conn, frame, false),
            MeshMsg::JoinRefused { room, conn, frame } => self.member_left(room, conn, frame, true),
            MeshMsg::ToConn { conn, frame } => {
                if let Some(conn) = self.conns.borrow().get(&conn) {
                    conn.out.borrow_mut().push_control(frame);
                    ShardMetrics::add(&self.metrics().messages_out, 1);
                }
            }
            MeshMsg::AwaitSnapshot { room, conn } => {
                if let Some(conn) = self.conns.borrow().get(&conn) {
                    if let Some(entry) = conn.rooms.borrow_mut().get_mut(&room) {
                        entry.sync = Sync::Resyncing;
                        conn.unsynced.set(true);
                    }
                }
            }
        }
    }

    /// Sends a reply frame to one connection, wherever it is.
    pub(super) fn reply(&self, to: ConnRef, frame: Bytes) {
        self.send(to.shard, MeshMsg::ToConn { conn: to.id, frame });
    }

    /// Queues an answer on a local connection.
    fn answer(&self, conn: &Conn, msg: &ServerMessage<'_>) {
        conn.out
            .borrow_mut()
            .push_control(encode::frame(msg, conn.proto));
        ShardMetrics::add(&self.metrics().messages_out, 1);
    }

    fn answer_error(
        &self,
        conn: &Conn,
        code: ErrorCode,
        message: &str,
        room: Option<&RoomId>,
        seq: Option<u64>,
    ) {
        self.answer(
            conn,
            &ServerMessage::Error {
                code,
                message,
                room: room.map(RoomId::as_str),
                seq,
            },
        );
    }

    /// A decoded request from a local connection, read from its socket at `received`.
    pub fn on_request(&self, conn: &Rc<Conn>, msg: ClientMessage, received: Instant) {
        match msg {
            ClientMessage::Ping { id } => {
                let time = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros() as u64);
                self.answer(conn, &ServerMessage::Pong { id: &id, time });
            }
            ClientMessage::Join { room, since, epoch } => {
                if !conn.grant.may_join(room.as_str()) {
                    let message = "the token does not allow this room";
                    return self.answer_error(
                        conn,
                        ErrorCode::Forbidden,
                        message,
                        Some(&room),
                        None,
                    );
                }
                {
                    let mut rooms = conn.rooms.borrow_mut();
                    let max = self.config.limits.max_rooms_per_connection;
                    let wanted = rooms.get(&room).is_some_and(|e| e.wanted);
                    if !wanted && rooms.values().filter(|e| e.wanted).count() >= max {
                        drop(rooms);
                        let message = format!("a connection may be in at most {max} rooms");
                        return self.answer_error(
                            conn,
                            ErrorCode::TooLarge,
                            &message,
                            Some(&room),
                            None,
                        );
                    }
                    let entry = rooms.entry(room.clone()).or_insert_with(RoomEntry::new);
                    entry.wanted = true;
                    entry.pending += 1;
                    entry.joins += 1;
                }
                let origin = self.origin(conn);
                let member = conn.member.to_string();
                let owner = self.owner_of(&room);
                self.send(
                    owner,
                    MeshMsg::Join {
                        room,
                        origin,
                        member,
                        since,
                        epoch,
                    },
                );
            }
            // Leave, op and msg always go to the owner, even for a room the connection is
            // not in: it answers `not_joined` in order with the answers it still owes.
            ClientMessage::Leave { room } => {
                {
                    let mut rooms = conn.rooms.borrow_mut();
                    let entry = rooms.entry(room.clone()).or_insert_with(RoomEntry::new);
                    entry.wanted = false;
                    entry.pending += 1;
                }
                let origin = self.origin(conn);
                let owner = self.owner_of(&room);
                self.send(
                    owner,
                    MeshMsg::Leave {
                        room,
                        origin,
                        reply: true,
                    },
                );
            }
            ClientMessage::Op { room, seq, ops } => {
                let origin = self.origin(conn);
                let owner = self.owner_of(&room);
                self.send(
                    owner,
                    MeshMsg::Op {
                        room,
                        origin,
                        seq,
                        ops,
                        received,
                    },
                );
            }
            ClientMessage::Msg { room, data } => {
                let origin = self.origin(conn);
                let owner = self.owner_of(&room);
                self.send(owner, MeshMsg::Msg { room, origin, data });
            }
        }
    }

    /// Answers a request that did not decode into a valid message.
    pub fn on_bad_request(
        &self,
        conn: &Conn,
        message: &str,
        room: Option<&RoomId>,
        seq: Option<u64>,
    ) {
        self.answer_error(conn, ErrorCode::BadRequest, message, room, seq);
    }

    /// Answers a message refused by the rate limit.
    pub fn on_rate_limited(&self, conn: &Conn) {
        self.answer_error(
            conn,
            ErrorCode::RateLimited,
            "too many messages; slow down",
            None,
            None,
        );
    }

    /// A slow consumer's queue drained: ask each stale room's owner for a snapshot.
    pub fn request_resyncs(&self, conn: &Rc<Conn>) {
        conn.stale.set(false);
        let stale: Vec<RoomId> = {
            let mut rooms = conn.rooms.borrow_mut();
            rooms
                .iter_mut()
                .filter(|(_, e)| e.sync == Sync::Stale)
                .map(|(room, e)| {
                    e.sync = Sync::Resyncing;
                    room.clone()
                })
                .collect()
        };
        for room in stale {
            let origin = self.origin(conn);
            let owner = self.owner_of(&room);
            self.send(owner, MeshMsg::Resync { room, origin });
        }
    }

    fn deliver_local(
        &self,
        room: &RoomId,
        frames: &Frames,
        exclude: Option<ConnRef>,
        flushed_at: Option<Instant>,
    ) {
        let members = self.members.borrow();
        let Some(list) = members.get(room) else {
            return;
        };
        let mut sent = 0;
        for conn in list {
            if exclude.is_some_and(|x| x.shard == self.id && x.id == conn.id) {
                continue;
            }
            if let Some(frame) = &frames[conn.proto.index()] {
                sent += u64::from(conn.deliver(room, frame, flushed_at));
            }
        }
        ShardMetrics::add(&self.metrics().messages_out, sent);
    }

    fn member_joined(
        &self,
        room: RoomId,
        conn: ConnId,
        mut frames: Vec<Bytes>,
        answers_join: bool,
    ) {
        let Some(conn) = self.conns.borrow().get(&conn).cloned() else {
            return;
        };
        let list = {
            let mut rooms = conn.rooms.borrow_mut();
            let Some(entry) = rooms.get_mut(&room) else {
                return;
            };
            if answers_join {
                if entry.joins > 0 {
                    entry.joins -= 1;
                    entry.pending = entry.pending.saturating_sub(1);
                } else if let Some(first) = frames.first_mut() {
                    // Registered again by a new owner: PROTOCOL.md marks a snapshot the
                    // client did not ask for.
                    match encode::mark_resync(first) {
                        Some(marked) => *first = marked,
                        None => {
                            tracing::warn!(%room, "an unasked joined could not be marked resync")
                        }
                    }
                }
                entry.member = true;
            }
            // A snapshot, asked for or not, supersedes every delta before it.
            entry.sync = Sync::Synced;
            if conn.unsynced.get() {
                conn.unsynced
                    .set(rooms.values().any(|e| e.sync != Sync::Synced));
            }
            let entry = rooms.get_mut(&room).expect("looked up above");
            let list = entry.member && !entry.listed;
            entry.listed |= list;
            list
        };
        if list {
            self.members
                .borrow_mut()
                .entry(room)
                .or_default()
                .push(conn.clone());
        }
        let mut out = conn.out.borrow_mut();
        let n = frames.len() as u64;
        for frame in frames {
            out.push_control(frame);
        }
        ShardMetrics::add(&self.metrics().messages_out, n);
    }

    /// The owner answered a leave (`left` or `not_joined`) or refused a join.
    fn member_left(&self, room: RoomId, conn: ConnId, frame: Bytes, refused: bool) {
        let Some(conn) = self.conns.borrow().get(&conn).cloned() else {
            return;
        };
        let unlist = {
            let mut rooms = conn.rooms.borrow_mut();
            match rooms.get_mut(&room) {
                Some(entry) => {
                    entry.pending = entry.pending.saturating_sub(1);
                    if refused {
                        entry.joins = entry.joins.saturating_sub(1);
                    }
                    let unlist = !refused && entry.listed;
                    if !refused {
                        entry.member = false;
                        entry.listed = false;
                    }
                    if entry.is_done() {
                        rooms.remove(&room);
                    }
                    unlist
                }
                None => false,
            }
        };
        if unlist {
            self.remove_local_member(&room, conn.id);
        }
        conn.out.borrow_mut().push_control(frame);
        ShardMetrics::add(&self.metrics().messages_out, 1);
    }

    fn remove_local_member(&self, room: &RoomId, conn: ConnId) {
        let mut members = self.members.borrow_mut();
        if let Some(list) = members.get_mut(room) {
            list.retain(|c| c.id != conn);
            if list.is_empty() {
                members.remove(room);
            }
        }
    }

    /// Closes every connection whose token expired by `now_secs` (1008).
    pub fn expire_grants(&self, now_secs: u64) {
        for conn in self.conns() {
            if conn.grant.expires_at.is_some_and(|exp| exp <= now_secs) {
                conn.close(close_code::POLICY, "token expired");
            }
        }
    }

    /// Starts a drain: every connection gets close 1001.
    pub fn begin_drain(&self) {
        self.stopping.set(true);
        for conn in self.conns() {
            conn.close(close_code::GOING_AWAY, "server shutting down");
        }
    }

    /// Copies the mesh's counters into this shard's metrics.
    pub fn publish_mesh_stats(&self) {
        let stats = self.mesh.stats();
        let m = self.metrics();
        m.mesh_backlog
            .store(stats.backlog as u64, std::sync::atomic::Ordering::Relaxed);
        m.mesh_outboxed
            .store(stats.outboxed, std::sync::atomic::Ordering::Relaxed);
    }

    /// Resolves once every message this shard sent to its peers is in their channels.
    pub async fn flush_mesh(&self) {
        self.mesh.flush().await;
    }

    /// The monotonic clock the owner side stamps empty rooms with.
    pub(super) fn now(&self) -> Instant {
        Instant::now()
    }
}
