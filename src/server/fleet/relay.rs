//! The non-owner side of a room: this instance's members of a room another instance owns.
//!
//! Requests of local members go to the owner on `kasagi:{room}:in`, in order, through
//! the shard's ordered writer; a request that cannot be published gets `unavailable`.
//! What the owner publishes on `:out` is delivered: deltas to every local member shard
//! (once per shard), the acks they carry to their connections, and answers addressed to
//! our connections.
//!
//! Gap repair: Pub/Sub is at-most-once. A delta whose tick is not the next one, or a
//! reconnect of the subscriber, makes the relay read the missing deltas from the log
//! (`XRANGE`) before it delivers anything else; everything arriving meanwhile waits in
//! order. When the log no longer holds them (trimmed), every local member is registered
//! again and gets a full `joined`; until it comes, its shard drops the room's deltas for
//! it (the snapshot supersedes them) and its acks wait here.
//!
//! Request ids: an op is relayed with its id (this instance, shard, connection, `seq`)
//! and kept until an answer names it (an ack riding a delta, an addressed reply). It is
//! sent again every relay timeout while unanswered, marked as a repeat (the owner applies
//! a repeat only if it never saw the id). When a new owner announces itself, the log is
//! read to its end first (final for older epochs): ops it acks are settled, the rest were
//! never applied and go to the new owner. The announcement may be lost like any message:
//! a delta, a `joined` or a log entry of a newer epoch counts as one. Joins and leaves without an answer are sent
//! again too.
//!
//! Invariants: a local member gets a room's deltas in tick order without gaps or
//! repeats; deltas and answers of an older epoch than one already seen are dropped; an op is applied at
//! most once, and a client gets `unavailable` only when its op's fate cannot be told.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_bytes::ByteBuf;
use tracing::{debug, info, warn};

use super::super::metrics::ShardMetrics;
use super::super::shard::{ConnRef, Frames, MeshMsg, Origin, Shard};
use super::log::{ack_frame, read_log};
use super::wire::{self, Keys, OutMsg, RemoteAddr, ToKind};
use super::writer::{Job, Request};
use super::FleetRoom;
use crate::protocol::{encode_client_into, ClientMessage, RoomId, ServerMessage, Subprotocol};
use crate::room::DeltaRecord;

mod repair;
#[cfg(test)]
mod tests;

struct RelayMember {
    origin: Origin,
    member: String,
    /// The owner answered the member's last join.
    answered: bool,
    /// The epoch of the owner that last answered a join of the member (0: none did): a
    /// new owner's announcement needs no re-registration of members it answered itself.
    answered_epoch: u64,
    sent_at: Instant,
}

/// A room relayed to another instance's owner.
pub struct Relay {
    members: Vec<RelayMember>,
    per_shard: Vec<u32>,
    per_proto: [u32; 2],
    epoch: u64,
    /// The last tick the members hold: from the first `joined` answer or delta on; `None`
    /// before, and again after a repair found the log trimmed (until the answers come).
    tick: Option<u64>,
    repairing: bool,
    buffered: VecDeque<OutMsg>,
    /// Ops relayed and not answered yet, per connection in request order (answers to one
    /// connection come back in that order): past a deadline they get `unavailable`.
    ops: HashMap<ConnRef, VecDeque<PendingOp>>,
    /// A new owner announced itself: once the log is read to its end, the ops still
    /// unanswered were never logged, and are sent to the new owner.
    resend: bool,
    /// Leaves a client asked for, not answered yet: when sent, and whether sent again.
    leaves: HashMap<ConnRef, (Origin, Instant, bool)>,
    /// Members registered again after a repair found the log trimmed, until their full
    /// `joined` comes: their shards drop the room's deltas meanwhile, and the acks for them
    /// wait here (an ack must not come before the state that holds its op).
    awaiting: HashMap<ConnRef, Vec<bytes::Bytes>>,
}

/// A relayed op waiting for its answer, kept to be sent again to a new owner.
struct PendingOp {
    seq: u64,
    /// When it was last sent.
    at: Instant,
    /// When it was first sent (to this owner).
    since: Instant,
    payload: ByteBuf,
    /// Sent again at least once.
    resent: bool,
}

/// An op to send again: who, its seq, the request as relayed.
pub type Unanswered = (Origin, u64, ByteBuf);

impl Relay {
    pub fn new(shards: usize) -> Relay {
        Relay {
            members: Vec::new(),
            per_shard: vec![0; shards],
            per_proto: [0; 2],
            epoch: 0,
            tick: None,
            repairing: false,
            buffered: VecDeque::new(),
            ops: HashMap::new(),
            resend: false,
            leaves: HashMap::new(),
            awaiting: HashMap::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn has_leaves(&self) -> bool {
        !self.leaves.is_empty()
    }

    /// A join sent for `origin`: `fresh` for the client's own, not for a re-registration
    /// (whose answer is unasked for a member answered before).
    fn add(&mut self, origin: Origin, member: String, fresh: bool) {
        let now = Instant::now();
        if let Some(m) = self
            .members
            .iter_mut()
            .find(|m| m.origin.conn == origin.conn)
        {
            m.sent_at = now;
            m.answered &= !fresh;
            return;
        }
        self.per_shard[origin.conn.shard] += 1;
        self.per_proto[origin.proto.index()] += 1;
        self.members.push(RelayMember {
            origin,
            member,
            answered: false,
            answered_epoch: 0,
            sent_at: now,
        });
    }

    /// An answer (ack or error) to op `seq` of `conn`. Only that op: an earlier one may
    /// have been lost on its way and still wait to be sent again. Returns whether the op
    /// was still waiting.
    fn answered(&mut self, conn: ConnRef, seq: u64) -> bool {
        let Some(queue) = self.ops.get_mut(&conn) else {
            return false;
        };
        let found = queue.iter().position(|op| op.seq == seq);
        if let Some(i) = found {
            queue.remove(i);
        }
        if queue.is_empty() {
            self.ops.remove(&conn);
        }
        found.is_some()
    }

    /// A member's registration failed to go out: it waits for an answer again, and is sent
    /// again a relay timeout later.
    fn unanswer(&mut self, conn: ConnRef) {
        if let Some(m) = self.members.iter_mut().find(|m| m.origin.conn == conn) {
            m.answered = false;
            m.sent_at = Instant::now();
        }
    }

    /// Ops unanswered for `first` since they were last sent are to be sent again (marked
    /// as repeats); ops still unanswered `first + last` after they were first sent are
    /// given up (forgotten here).
    pub fn overdue_ops(
        &mut self,
        first: Duration,
        last: Duration,
    ) -> (Vec<Unanswered>, Vec<(Origin, u64)>) {
        let (mut again, mut overdue) = (Vec::new(), Vec::new());
        for (conn, queue) in self.ops.iter_mut() {
            let Some(origin) = self.members.iter().find(|m| m.origin.conn == *conn) else {
                continue;
            };
            while queue
                .front()
                .is_some_and(|op| op.resent && op.since.elapsed() >= first + last)
            {
                if let Some(op) = queue.pop_front() {
                    overdue.push((origin.origin, op.seq));
                }
            }
            for op in queue.iter_mut() {
                if op.at.elapsed() >= first {
                    op.resent = true;
                    op.at = Instant::now();
                    again.push((origin.origin, op.seq, op.payload.clone()));
                }
            }
        }
        self.ops.retain(|conn, queue| {
            !queue.is_empty() && self.members.iter().any(|m| m.origin.conn == *conn)
        });
        (again, overdue)
    }

    /// Whether it was a member.
    fn remove(&mut self, conn: ConnRef) -> bool {
        let Some(i) = self.members.iter().position(|m| m.origin.conn == conn) else {
            return false;
        };
        let m = self.members.remove(i);
        self.awaiting.remove(&conn);
        self.per_shard[conn.shard] -= 1;
        self.per_proto[m.origin.proto.index()] -= 1;
        true
    }

    /// The last tick delivered to the members.
    pub fn last_tick(&self) -> Option<u64> {
        self.tick
    }

    /// Every op still waiting for the (old) owner's answer, forgotten here.
    pub fn take_ops(&mut self) -> Vec<Unanswered> {
        let mut ops = Vec::new();
        for (conn, queue) in self.ops.drain() {
            if let Some(m) = self.members.iter().find(|m| m.origin.conn == conn) {
                ops.extend(queue.into_iter().map(|op| (m.origin, op.seq, op.payload)));
            }
        }
        ops
    }

    /// Leaves still waiting for the old owner's answer, for a take-over: the new owner
    /// never counted these connections, so they are answered `left` there.
    pub fn take_leaves(&mut self) -> Vec<Origin> {
        self.leaves
            .drain()
            .map(|(_, (origin, _, _))| origin)
            .collect()
    }

    /// The members, for a take-over; the relay is left empty.
    pub fn take_members(&mut self) -> Vec<(Origin, String)> {
        self.per_shard.iter_mut().for_each(|c| *c = 0);
        self.per_proto = [0; 2];
        self.members
            .drain(..)
            .map(|m| (m.origin, m.member))
            .collect()
    }

    /// Leaves unanswered for `first` are sent again (once); still unanswered `last` after
    /// that, they are answered here (the owner drops members of dead instances anyway).
    pub fn overdue_leaves(
        &mut self,
        first: Duration,
        last: Duration,
    ) -> (Vec<Origin>, Vec<Origin>) {
        let (mut again, mut given_up) = (Vec::new(), Vec::new());
        self.leaves.retain(|_, (origin, at, resent)| {
            if !*resent && at.elapsed() >= first {
                *resent = true;
                *at = Instant::now();
                again.push(*origin);
            } else if *resent && at.elapsed() >= last {
                given_up.push(*origin);
                return false;
            }
            true
        });
        (again, given_up)
    }

    /// Joins to send again: unanswered for longer than `timeout`.
    pub fn unanswered_joins(&mut self, timeout: Duration) -> Vec<(Origin, String)> {
        self.members
            .iter()
            .filter(|m| !m.answered && m.sent_at.elapsed() >= timeout)
            .map(|m| (m.origin, m.member.clone()))
            .collect()
    }

    /// The room has an owner newer than any seen: its epoch is remembered, every member's
    /// join timer restarts (one still unanswered keeps waiting for a first answer, this
    /// re-registration's or the original's), and the members it did not answer are to be
    /// registered with it.
    fn new_owner(&mut self, epoch: u64) -> Vec<(Origin, String)> {
        self.epoch = epoch;
        self.members
            .iter_mut()
            .for_each(|m| m.sent_at = Instant::now());
        self.rejoins_for(epoch)
    }

    /// A message of the owner of `epoch` came: whether it tells of a new owner (a newer
    /// epoch than one seen before). The first epoch a relay sees is no change: no member
    /// was answered before it.
    fn owner_changes(&mut self, epoch: u64) -> bool {
        if self.epoch == 0 {
            self.epoch = epoch;
        }
        epoch > self.epoch
    }

    /// An answer of the owner of `epoch` comes from an owner older than one already seen
    /// (0: from an instance that does not say).
    fn superseded(&self, epoch: u64) -> bool {
        epoch > 0 && epoch < self.epoch
    }

    /// The log no longer holds what the members miss: every member is to get a full
    /// `joined` (a lost one is asked for again after the relay timeout). Returns them.
    fn await_snapshots(&mut self) -> Vec<(Origin, String)> {
        self.tick = None;
        let now = Instant::now();
        for m in &mut self.members {
            m.answered = false;
            m.sent_at = now;
            self.awaiting.entry(m.origin.conn).or_default();
        }
        self.rejoin_all()
    }

    /// An ack for `conn`: back to be sent now, or `None` when held until its snapshot.
    fn hold_ack(&mut self, conn: ConnRef, frame: bytes::Bytes) -> Option<bytes::Bytes> {
        match self.awaiting.get_mut(&conn) {
            Some(held) => {
                held.push(frame);
                None
            }
            None => Some(frame),
        }
    }

    /// A full `joined` reached `conn`: the acks held for it, to follow it.
    fn snapshot_came(&mut self, conn: ConnRef) -> Vec<bytes::Bytes> {
        self.awaiting.remove(&conn).unwrap_or_default()
    }

    fn rejoin_all(&self) -> Vec<(Origin, String)> {
        self.rejoins_for(u64::MAX)
    }

    /// The members to register with the owner of `epoch`: all but those it answered.
    fn rejoins_for(&self, epoch: u64) -> Vec<(Origin, String)> {
        self.members
            .iter()
            .filter(|m| !m.answered || m.answered_epoch < epoch)
            .map(|m| (m.origin, m.member.clone()))
            .collect()
    }
}

impl Shard {
    pub(super) fn addr_of(&self, origin: Origin) -> RemoteAddr {
        RemoteAddr {
            instance: self
                .fleet
                .as_ref()
                .map_or_else(String::new, |f| f.instance().to_owned()),
            shard: origin.conn.shard as u32,
            conn: origin.conn.id,
        }
    }

    /// A local member's request for a relayed room: published on `:in`.
    pub(super) fn relay_request(&self, msg: MeshMsg) {
        self.relay_send(msg, true);
    }

    fn relay_send(&self, msg: MeshMsg, fresh: bool) {
        let Some(fleet) = self.fleet.as_ref() else {
            return;
        };
        let (room, origin, member, kind, request) = match msg {
            MeshMsg::Join {
                room,
                origin,
                member,
                since,
                epoch,
            } => (
                room,
                origin,
                member,
                wire::InKind::Join { since, epoch },
                if fresh {
                    Request::Join
                } else {
                    Request::Rejoin
                },
            ),
            // Every relayed leave asks for an answer, a disconnect's too: Pub/Sub may lose
            // it, and only an answer tells the relay to stop sending it again (the answer
            // to a gone connection is dropped on delivery).
            MeshMsg::Leave { room, origin, .. } => (
                room,
                origin,
                String::new(),
                wire::InKind::Leave { reply: true },
                if fresh {
                    Request::Leave
                } else {
                    Request::LeaveAgain
                },
            ),
            MeshMsg::Op {
                room,
                origin,
                seq,
                ops,
                ..
            } => {
                let mut payload = Vec::new();
                let msg = ClientMessage::Op {
                    room: room.clone(),
                    seq,
                    ops,
                };
                encode_client_into(&msg, Subprotocol::MsgPack, &mut payload);
                let kind = wire::InKind::Client(serde_bytes::ByteBuf::from(payload));
                (room, origin, String::new(), kind, Request::Op(seq))
            }
            MeshMsg::Msg { room, origin, data } => {
                let mut payload = Vec::new();
                let msg = ClientMessage::Msg {
                    room: room.clone(),
                    data,
                };
                encode_client_into(&msg, Subprotocol::MsgPack, &mut payload);
                let kind = wire::InKind::Client(serde_bytes::ByteBuf::from(payload));
                (room, origin, String::new(), kind, Request::Msg)
            }
            MeshMsg::Resync { room, origin } => (
                room,
                origin,
                String::new(),
                wire::InKind::Resync,
                Request::Resync,
            ),
            _ => return,
        };
        let seq = match request {
            Request::Op(seq) => Some(seq),
            _ => None,
        };
        let is_member = {
            let mut rooms = fleet.rooms.borrow_mut();
            match rooms.get_mut(&room) {
                Some(FleetRoom::Relayed(relay)) => {
                    match &kind {
                        wire::InKind::Join { .. } => relay.add(origin, member.clone(), fresh),
                        wire::InKind::Leave { .. } => {
                            relay.remove(origin.conn);
                            let resent = !fresh;
                            relay
                                .leaves
                                .insert(origin.conn, (origin, Instant::now(), resent));
                        }
                        _ => {}
                    }
                    let is_member = relay.members.iter().any(|m| m.origin.conn == origin.conn);
                    if let (Some(seq), true, wire::InKind::Client(payload)) =
                        (seq, is_member, &kind)
                    {
                        relay
                            .ops
                            .entry(origin.conn)
                            .or_default()
                            .push_back(PendingOp {
                                seq,
                                at: Instant::now(),
                                since: Instant::now(),
                                payload: payload.clone(),
                                resent: false,
                            });
                    }
                    is_member
                }
                _ => false,
            }
        };
        if !is_member && matches!(kind, wire::InKind::Client(_)) {
            // Not in the room: answered here, as the owner would.
            let frame = super::super::encode::frame(
                &ServerMessage::Error {
                    code: crate::protocol::ErrorCode::NotJoined,
                    message: "join the room first",
                    room: Some(room.as_str()),
                    seq,
                },
                origin.proto,
            );
            return self.send(
                origin.conn.shard,
                MeshMsg::ToConn {
                    conn: origin.conn.id,
                    frame,
                },
            );
        }
        let msg = wire::InMsg {
            from: self.addr_of(origin),
            proto: origin.proto.index() as u8,
            member,
            kind,
        };
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(Keys::of(&room).input).arg(wire::encode(&msg));
        ShardMetrics::add(&self.metrics().fleet.relayed, 1);
        fleet.writer.push(
            cmd,
            Job::Relayed {
                room,
                origin,
                request,
            },
        );
    }

    /// A relayed request could not be published. A request of the client is answered
    /// `unavailable` once (not when it was answered already, or when the room changed
    /// hands meanwhile: a take-over settles the relay's members and ops); a repeat the
    /// relay made on its own is tried again later.
    pub(super) fn relay_failed(&self, room: &RoomId, origin: Origin, request: Request) {
        let Some(fleet) = self.fleet.as_ref() else {
            return;
        };
        if request == Request::Resync {
            return self.resync_later(room.clone(), origin);
        }
        let answer = match fleet.rooms.borrow_mut().get_mut(room) {
            Some(FleetRoom::Relayed(relay)) => match request {
                Request::Join => relay.remove(origin.conn),
                Request::Rejoin => {
                    relay.unanswer(origin.conn);
                    false
                }
                Request::Op(seq) => relay.answered(origin.conn, seq),
                Request::Msg => true,
                // A leave waits in `leaves`: sent again, then answered `left` at the
                // latest a relay timeout and a lease later (or by a take-over).
                Request::Leave | Request::LeaveAgain | Request::Resync => false,
            },
            _ => request == Request::Msg,
        };
        if answer {
            let seq = match request {
                Request::Op(seq) => Some(seq),
                _ => None,
            };
            self.answer_unavailable(room, origin, seq, request == Request::Join);
        }
    }

    /// A snapshot request that could not be sent is asked again after a relay timeout:
    /// until a snapshot comes, the client's deltas for the room are dropped.
    fn resync_later(&self, room: RoomId, origin: Origin) {
        let (Some(fleet), Some(shard)) = (self.fleet.as_ref(), self.me()) else {
            return;
        };
        let pause = fleet.config.relay_timeout;
        glommio::spawn_local(async move {
            glommio::timer::Timer::new(pause).await;
            if !shard.stopping.get() {
                let owner = shard.owner_of(&room);
                shard.send(owner, MeshMsg::Resync { room, origin });
            }
        })
        .detach();
    }

    /// Something the owner published on `:out`.
    pub(super) fn relay_from_owner(&self, room: RoomId, payload: &[u8]) {
        let Some(fleet) = self.fleet.as_ref() else {
            return;
        };
        let Some(msg) = wire::decode::<OutMsg>(payload) else {
            warn!(%room, "undecodable message from the owner dropped");
            return;
        };
        {
            let mut rooms = fleet.rooms.borrow_mut();
            let Some(FleetRoom::Relayed(relay)) = rooms.get_mut(&room) else {
                return;
            };
            if relay.repairing {
                relay.buffered.push_back(msg);
                return;
            }
        }
        self.relay_process(&room, msg);
    }

    fn relay_process(&self, room: &RoomId, msg: OutMsg) {
        let Some(fleet) = self.fleet.as_ref() else {
            return;
        };
        match msg {
            OutMsg::Delta {
                tick,
                epoch,
                ops,
                acks,
            } => {
                let changes = {
                    let mut rooms = fleet.rooms.borrow_mut();
                    let Some(FleetRoom::Relayed(relay)) = rooms.get_mut(room) else {
                        return;
                    };
                    if epoch < relay.epoch {
                        return;
                    }
                    relay.owner_changes(epoch)
                };
                // The owner's announcement may have been lost (Pub/Sub is at-most-once):
                // its delta tells as much.
                if changes && self.relay_new_owner(room, epoch, "a delta") {
                    return self.relay_buffer_front(
                        room,
                        OutMsg::Delta {
                            tick,
                            epoch,
                            ops,
                            acks,
                        },
                    );
                }
                let gap_from = {
                    let mut rooms = fleet.rooms.borrow_mut();
                    let Some(FleetRoom::Relayed(relay)) = rooms.get_mut(room) else {
                        return;
                    };
                    match relay.tick {
                        Some(last) if tick <= last => return,
                        Some(last) if tick > last + 1 => {
                            relay.repairing = true;
                            Some(last + 1)
                        }
                        _ => {
                            relay.tick = Some(tick);
                            None
                        }
                    }
                };
                let Some(from) = gap_from else {
                    return self.relay_deliver_delta(room, tick, epoch, &ops, &acks);
                };
                self.relay_buffer_front(
                    room,
                    OutMsg::Delta {
                        tick,
                        epoch,
                        ops,
                        acks,
                    },
                );
                self.spawn_repair(room.clone(), from);
            }
            OutMsg::To {
                to,
                kind,
                frames,
                epoch,
            } => {
                if to.instance != fleet.instance() {
                    return;
                }
                let conn = ConnRef {
                    shard: to.shard as usize,
                    id: to.conn,
                };
                if conn.shard >= self.shards {
                    return;
                }
                let snapshot = matches!(kind, ToKind::Joined | ToKind::Resync);
                let changes = match fleet.rooms.borrow_mut().get_mut(room) {
                    Some(FleetRoom::Relayed(relay)) => {
                        if relay.superseded(epoch) {
                            // A stale owner's: the member is (or will be) registered with
                            // the newer one, and its ops sent to it.
                            debug!(%room, epoch, known = relay.epoch, ?kind, "an answer of an older owner dropped");
                            return;
                        }
                        if kind == ToKind::Joined {
                            if let Some(m) =
                                relay.members.iter_mut().find(|m| m.origin.conn == conn)
                            {
                                m.answered = true;
                                m.answered_epoch = m.answered_epoch.max(epoch);
                            }
                        }
                        snapshot && epoch > 0 && relay.owner_changes(epoch)
                    }
                    _ => false,
                };
                // An answer of an owner whose announcement was lost. When the log is to be
                // read first, the answer waits behind what it reads: a snapshot must not
                // come before deltas it already holds.
                if changes && self.relay_new_owner(room, epoch, "an answer") {
                    return self.relay_buffer_front(
                        room,
                        OutMsg::To {
                            to,
                            kind,
                            frames,
                            epoch,
                        },
                    );
                }
                let frames: Vec<bytes::Bytes> = frames
                    .into_iter()
                    .map(|f| bytes::Bytes::from(f.into_vec()))
                    .collect();
                let mut held_acks = Vec::new();
                {
                    let mut rooms = fleet.rooms.borrow_mut();
                    if let Some(FleetRoom::Relayed(relay)) = rooms.get_mut(room) {
                        if snapshot {
                            held_acks = relay.snapshot_came(conn);
                        }
                        // The first answer is where the members' deltas start: a delta
                        // lost before the first one comes is found missing against it.
                        if snapshot && relay.tick.is_none() && epoch == relay.epoch {
                            relay.tick = frames.first().and_then(|f| frame_u64(f, "tick"));
                        }
                        match kind {
                            ToKind::Refused => {
                                relay.remove(conn);
                            }
                            ToKind::Left => {
                                relay.leaves.remove(&conn);
                            }
                            ToKind::Reply => {
                                if let Some(seq) = frames.first().and_then(|f| reply_seq(f)) {
                                    relay.answered(conn, seq);
                                }
                            }
                            _ => {}
                        }
                    }
                }
                let mut frames = frames.into_iter();
                let msg = match kind {
                    ToKind::Joined | ToKind::Resync => MeshMsg::Joined {
                        room: room.clone(),
                        conn: conn.id,
                        frames: frames.collect(),
                        // Whether the client asked for it, its connection's shard knows.
                        answers_join: kind == ToKind::Joined,
                    },
                    ToKind::Left | ToKind::Refused | ToKind::Reply => {
                        let Some(frame) = frames.next() else {
                            return;
                        };
                        match kind {
                            ToKind::Left => MeshMsg::Left {
                                room: room.clone(),
                                conn: conn.id,
                                frame,
                            },
                            ToKind::Refused => MeshMsg::JoinRefused {
                                room: room.clone(),
                                conn: conn.id,
                                frame,
                            },
                            _ => MeshMsg::ToConn {
                                conn: conn.id,
                                frame,
                            },
                        }
                    }
                };
                self.send(conn.shard, msg);
                // Their ops are in the state it carries.
                for frame in held_acks {
                    self.send(
                        conn.shard,
                        MeshMsg::ToConn {
                            conn: conn.id,
                            frame,
                        },
                    );
                }
            }
            OutMsg::Deliver { frames, exclude } => {
                let exclude = exclude
                    .filter(|a| a.instance == fleet.instance())
                    .map(|a| ConnRef {
                        shard: a.shard as usize,
                        id: a.conn,
                    });
                let frames: Frames = frames.map(|f| f.map(|f| bytes::Bytes::from(f.into_vec())));
                let targets = self.relay_targets(room);
                let now = Instant::now();
                for shard in targets {
                    self.send(
                        shard,
                        MeshMsg::Deliver {
                            room: room.clone(),
                            frames: frames.clone(),
                            exclude,
                            sent: now,
                            flushed_at: None,
                        },
                    );
                }
            }
            OutMsg::Owner { epoch } => {
                self.relay_new_owner(room, epoch, "its announcement");
            }
        }
    }

    /// The owner of `epoch` is newer than any the relay knew of, as `seen_in` tells (its
    /// announcement, or a delta or answer of its own when the announcement was lost): the
    /// members it did not answer are registered with it, and the ops the old owner left
    /// unanswered are settled. Returns whether the relay is repairing: what comes meanwhile
    /// waits, to be handled after the log.
    fn relay_new_owner(&self, room: &RoomId, epoch: u64, seen_in: &str) -> bool {
        let Some(fleet) = self.fleet.as_ref() else {
            return false;
        };
        let (rejoins, repair_from, unresolved) = {
            let mut rooms = fleet.rooms.borrow_mut();
            let Some(FleetRoom::Relayed(relay)) = rooms.get_mut(room) else {
                return false;
            };
            if epoch <= relay.epoch {
                return relay.repairing;
            }
            let rejoins = relay.new_owner(epoch);
            // Ops the old owner logged are acked by its deltas: read the log to its end
            // (final for older epochs now), then send the rest again.
            let (repair_from, unresolved) = match relay.tick {
                // A repair under way reads to the end of the log anyway.
                Some(_) if relay.repairing => {
                    relay.resend = true;
                    (None, Vec::new())
                }
                Some(last) if !relay.ops.is_empty() => {
                    relay.resend = true;
                    relay.repairing = true;
                    (Some(last + 1), Vec::new())
                }
                _ => (None, relay.take_ops()),
            };
            (rejoins, repair_from, unresolved)
        };
        info!(%room, epoch, seen_in, "the room has a new owner: registering our members");
        self.relay_rejoin(room, rejoins);
        for (origin, seq, _) in unresolved {
            self.answer_unavailable(room, origin, Some(seq), false);
        }
        if let Some(from) = repair_from {
            self.spawn_repair(room.clone(), from);
        }
        matches!(
            fleet.rooms.borrow().get(room),
            Some(FleetRoom::Relayed(relay)) if relay.repairing
        )
    }

    /// Puts a message back to be handled once the repair under way is done, before
    /// anything that came after it.
    fn relay_buffer_front(&self, room: &RoomId, msg: OutMsg) {
        let Some(fleet) = self.fleet.as_ref() else {
            return;
        };
        if let Some(FleetRoom::Relayed(relay)) = fleet.rooms.borrow_mut().get_mut(room) {
            relay.buffered.push_front(msg);
        }
    }

    /// Sends a client's leave again (its answer never came).
    pub(super) fn relay_leave_again(&self, room: &RoomId, origin: Origin) {
        self.relay_send(
            MeshMsg::Leave {
                room: room.clone(),
                origin,
                reply: true,
            },
            false,
        );
    }

    /// Sends unanswered ops again, to a new owner, in their order.
    fn relay_resend(&self, room: &RoomId, ops: Vec<Unanswered>) {
        let Some(fleet) = self.fleet.as_ref() else {
            return;
        };
        for (origin, seq, payload) in &ops {
            if let Some(FleetRoom::Relayed(relay)) = fleet.rooms.borrow_mut().get_mut(room) {
                relay
                    .ops
                    .entry(origin.conn)
                    .or_default()
                    .push_back(PendingOp {
                        seq: *seq,
                        at: Instant::now(),
                        since: Instant::now(),
                        payload: payload.clone(),
                        resent: true,
                    });
            }
        }
        self.relay_send_again(room, ops);
    }

    /// Publishes ops again, marked as repeats: the owner applies one only when it has not
    /// seen its request id; the ops stay pending here as they are.
    pub(super) fn relay_send_again(&self, room: &RoomId, ops: Vec<Unanswered>) {
        let Some(fleet) = self.fleet.as_ref() else {
            return;
        };
        for (origin, seq, payload) in ops {
            let msg = wire::InMsg {
                from: self.addr_of(origin),
                proto: origin.proto.index() as u8,
                member: String::new(),
                kind: wire::InKind::Resent(payload),
            };
            let mut cmd = redis::cmd("PUBLISH");
            cmd.arg(Keys::of(room).input).arg(wire::encode(&msg));
            ShardMetrics::add(&self.metrics().fleet.relayed, 1);
            fleet.writer.push(
                cmd,
                Job::Relayed {
                    room: room.clone(),
                    origin,
                    request: Request::Op(seq),
                },
            );
        }
    }

    pub(super) fn relay_rejoin(&self, room: &RoomId, rejoins: Vec<(Origin, String)>) {
        for (origin, member) in rejoins {
            self.relay_send(
                MeshMsg::Join {
                    room: room.clone(),
                    origin,
                    member,
                    since: None,
                    epoch: None,
                },
                false,
            );
        }
    }

    fn relay_targets(&self, room: &RoomId) -> Vec<usize> {
        let Some(fleet) = self.fleet.as_ref() else {
            return Vec::new();
        };
        match fleet.rooms.borrow().get(room) {
            Some(FleetRoom::Relayed(relay)) => (0..self.shards)
                .filter(|s| relay.per_shard[*s] > 0)
                .collect(),
            _ => Vec::new(),
        }
    }

    fn relay_deliver_delta(
        &self,
        room: &RoomId,
        tick: u64,
        epoch: u64,
        ops: &[u8],
        acks: &[wire::AckTo],
    ) {
        let Some(fleet) = self.fleet.as_ref() else {
            return;
        };
        let ops = match wire::decode_ops(ops) {
            Ok(ops) => ops,
            Err(error) => {
                warn!(%room, tick, cause = %error, "undecodable delta dropped");
                return;
            }
        };
        let wanted = match fleet.rooms.borrow().get(room) {
            Some(FleetRoom::Relayed(relay)) => [relay.per_proto[0] > 0, relay.per_proto[1] > 0],
            _ => return,
        };
        let record = DeltaRecord::new(tick, epoch, ops);
        let frames = super::super::encode::frames(
            &ServerMessage::Delta {
                room: room.as_str(),
                tick,
                epoch,
                ops: &record.ops,
            },
            wanted,
        );
        let now = Instant::now();
        for shard in self.relay_targets(room) {
            self.send(
                shard,
                MeshMsg::Deliver {
                    room: room.clone(),
                    frames: frames.clone(),
                    exclude: None,
                    sent: now,
                    flushed_at: Some(now),
                },
            );
        }
        for ack in acks {
            if ack.to.instance != fleet.instance() || ack.to.shard as usize >= self.shards {
                continue;
            }
            let conn = ConnRef {
                shard: ack.to.shard as usize,
                id: ack.to.conn,
            };
            let mut frame = Some(ack_frame(room, ack, tick));
            if let Some(FleetRoom::Relayed(relay)) = fleet.rooms.borrow_mut().get_mut(room) {
                relay.answered(conn, ack.seq);
                frame = frame.and_then(|f| relay.hold_ack(conn, f));
            }
            let Some(frame) = frame else {
                continue;
            };
            self.send(
                ack.to.shard as usize,
                MeshMsg::ToConn {
                    conn: ack.to.conn,
                    frame,
                },
            );
        }
    }
}

/// The `seq` of a framed server message (an `ack` or an `error` answering an op).
fn reply_seq(frame: &[u8]) -> Option<u64> {
    frame_u64(frame, "seq")
}

/// A top-level u64 field of a framed server message: the frame is one unmasked WebSocket
/// frame the server made, binary MessagePack or JSON text.
fn frame_u64(frame: &[u8], key: &str) -> Option<u64> {
    let start = match frame.get(1)? & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    let payload = frame.get(start..)?;
    if frame.first()? & 0x0f == 0x2 {
        let value =
            crate::protocol::msgpack::decode_value(payload, super::wire::STATE_DEPTH).ok()?;
        value.as_map()?.get(key)?.as_u64()
    } else {
        let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
        value.get(key)?.as_u64()
    }
}
