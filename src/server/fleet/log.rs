//! The durable side of an owned room: every delta appended to `kasagi:{room}:log` by one
//! script (epoch check, gap check, `XADD <tick>-0`, `PUBLISH` on `:out`), outputs to local
//! members held until their append succeeded (durable acks), and snapshots.
//!
//! The fate of an append whose reply is lost (Redis unreachable, the connection broke or
//! timed out) is unknown: it may be in the log. While the lease is still ours by the local
//! clock, every append in flight is sent again in tick order (the script answers "already
//! there" for one that did run), so a short outage only delays deltas and acks. Past the
//! lease the owner steps down, never guesses: a new owner (maybe this instance again, with
//! a new epoch) loads whatever the log holds, every member gets a fresh `joined`, and ops
//! waiting for an ack get `unavailable` (their fate is told by the state of that `joined`).
//! An append refused by the script (another epoch, a gap) steps down at once.
//!
//! Answers for other instances' members are not held here: they go to Redis at once,
//! behind the appends they follow on the same ordered connection, by a script that
//! publishes them only if the log holds their tick ([`PUBLISH_LOGGED`]). Holding them
//! instead would publish a `joined` after deltas queued later, which its member then misses.

use std::rc::Rc;
use std::time::Instant;

use redis::Value;
use tracing::{debug, warn};

use super::super::encode;
use super::super::metrics::ShardMetrics;
use super::super::owner::{Reply, RoomHost};
use super::super::shard::{ConnRef, Frames, MeshMsg, Origin, Shard};
use super::wire::{self, AckTo, Keys, OutMsg, ToKind};
use super::writer::Job;
use super::{lease, Fleet, FleetRoom, HeldOut};
use crate::protocol::{DeltaOp, RoomId, ServerMessage, Subprotocol};
use crate::redis::Error;
use crate::room::DeltaRecord;

/// KEYS epoch, log, out; ARGV epoch, tick, ops, acks, payload.
/// 1 appended; 2 already appended by this epoch (a resend after an unknown fate);
/// 0 another epoch owns the room; -1 the log does not end at tick - 1.
const APPEND: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #last > 0 then
  local lt = tonumber(string.match(last[1][1], '^(%d+)-'))
  local t = tonumber(ARGV[2])
  if lt >= t then
    local same = redis.call('XRANGE', KEYS[2], ARGV[2] .. '-0', ARGV[2] .. '-0')
    if #same > 0 then
      local f = same[1][2]
      for i = 1, #f, 2 do
        if f[i] == 'e' and f[i + 1] == ARGV[1] then return 2 end
      end
    end
    return -1
  end
  if lt ~= t - 1 then return -1 end
end
redis.call('XADD', KEYS[2], ARGV[2] .. '-0', 'e', ARGV[1], 'd', ARGV[3], 'a', ARGV[4])
redis.call('PUBLISH', KEYS[3], ARGV[5])
return 1
";

/// KEYS epoch, snap, log; ARGV epoch, state, tick, trim-before. Written only while the
/// epoch is ours and the log ends at the snapshot's tick.
const SNAPSHOT: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
if #last == 0 or tonumber(string.match(last[1][1], '^(%d+)-')) ~= tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[2], 'state', ARGV[2], 'tick', ARGV[3], 'epoch', ARGV[1])
redis.call('XTRIM', KEYS[3], 'MINID', ARGV[4])
return 1
";

/// KEYS epoch, log, out; ARGV epoch, tick, payload. Publishes an answer for another
/// instance's member only while the epoch is ours and the log reaches `tick` (the answer
/// shows the state at that tick): 1 published, 0 dropped. Queued right behind the appends
/// of the ticks it follows, so it runs after them: their failure drops it.
const PUBLISH_LOGGED: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #last == 0 or tonumber(string.match(last[1][1], '^(%d+)-')) < tonumber(ARGV[2]) then
  return 0
end
redis.call('PUBLISH', KEYS[3], ARGV[3])
return 1
";

/// `EVAL script 3 KEYS…`, for the caller to add the script's ARGV. These scripts go in
/// the shard's pipeline, whose replies are read in order, so they are sent whole rather
/// than by `EVALSHA` (a `NOSCRIPT` there would need the commands after it sent again).
fn eval(script: &str, keys: [&str; 3]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script).arg(keys.len()).arg(&keys[..]);
    cmd
}

/// One logged delta.
pub struct Entry {
    pub tick: u64,
    pub epoch: u64,
    pub ops: Vec<DeltaOp>,
    pub acks: Vec<AckTo>,
    /// The ops as stored (what `:out` carries).
    pub raw_ops: Vec<u8>,
}

/// `XRANGE log <from>-0 <to>-0` (`to` `None`: to the end), parsed. Entries that do not
/// parse are skipped with a warning.
pub async fn read_log(
    fleet: &Fleet,
    room: &RoomId,
    from: u64,
    to: Option<u64>,
) -> Result<Vec<Entry>, Error> {
    let mut cmd = redis::cmd("XRANGE");
    cmd.arg(Keys::of(room).log).arg(format!("{from}-0"));
    match to {
        Some(to) => cmd.arg(format!("{to}-0")),
        None => cmd.arg("+"),
    };
    let Value::Array(items) = fleet.client.query(&cmd).await? else {
        return Ok(Vec::new());
    };
    let mut entries = Vec::with_capacity(items.len());
    for item in items {
        match parse_entry(item) {
            Some(entry) => entries.push(entry),
            None => warn!(%room, "unreadable log entry skipped"),
        }
    }
    Ok(entries)
}

fn parse_entry(item: Value) -> Option<Entry> {
    let Value::Array(parts) = item else {
        return None;
    };
    let mut parts = parts.into_iter();
    let Some(Value::BulkString(id)) = parts.next() else {
        return None;
    };
    let tick = std::str::from_utf8(&id)
        .ok()?
        .split('-')
        .next()?
        .parse()
        .ok()?;
    let fields = match parts.next()? {
        Value::Array(fields) => fields,
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => return None,
    };
    let (mut epoch, mut raw_ops, mut acks) = (None, None, Vec::new());
    for pair in fields.chunks(2) {
        if let [Value::BulkString(k), Value::BulkString(v)] = pair {
            match k.as_slice() {
                b"e" => epoch = std::str::from_utf8(v).ok()?.parse().ok(),
                b"d" => raw_ops = Some(v.clone()),
                b"a" => acks = wire::decode(v).unwrap_or_default(),
                _ => {}
            }
        }
    }
    let raw_ops = raw_ops?;
    let ops = wire::decode_ops(&raw_ops).ok()?;
    Some(Entry {
        tick,
        epoch: epoch?,
        ops,
        acks,
        raw_ops,
    })
}

impl Shard {
    /// Fleet mode's flush: the delta goes to the log first; local members get it, and
    /// every answer owed, once the append succeeded (with durable acks).
    pub(in super::super) fn fleet_flush(&self, host: &mut RoomHost) {
        let Some(fleet) = self.fleet.as_ref() else {
            return;
        };
        host.dirty = false;
        let now = Instant::now();
        let room_id = host.room.id().clone();
        let Some(delta) = host.room.flush() else {
            let tick = host.room.tick();
            for (origin, reply) in std::mem::take(&mut host.replies) {
                self.send_reply(host, origin, reply, tick, now);
            }
            return;
        };
        ShardMetrics::add(&self.metrics().deltas, 1);
        let tick = delta.tick;
        let epoch = delta.epoch;
        let durable = fleet.config.durable_acks;
        // In flight from now: what follows for local members waits for it (the command
        // itself is filled in below, once the acks it carries are known).
        host.held.in_flight.push_back((tick, redis::Cmd::new()));
        let mut frames: Frames = [None, None];
        for proto in Subprotocol::ALL {
            if host.per_proto[proto.index()] > 0 {
                frames[proto.index()] = Some(host.delta_frame(&delta, proto));
            }
        }
        let remote = self.remote_shard();
        let targets: Vec<usize> = (0..self.shards)
            .filter(|s| host.per_shard[*s] > 0)
            .collect();
        for shard in targets {
            self.host_send(
                host,
                shard,
                MeshMsg::Deliver {
                    room: room_id.clone(),
                    frames: frames.clone(),
                    exclude: None,
                    sent: now,
                    flushed_at: Some(now),
                },
            );
        }
        let mut acks = Vec::new();
        let mut after = Vec::new();
        for (origin, reply) in std::mem::take(&mut host.replies) {
            if origin.conn.shard == remote {
                match (reply, fleet.remote_addr(origin.conn.id)) {
                    (Reply::Ack { seq, .. }, Some((to, _))) => {
                        if let Some(FleetRoom::Owned(owned)) =
                            fleet.rooms.borrow_mut().get_mut(&room_id)
                        {
                            owned.recent.note((to.clone(), seq), Some(tick));
                        }
                        acks.push(AckTo {
                            to,
                            seq,
                            proto: origin.proto.index() as u8,
                        })
                    }
                    (Reply::Frame(frame), _) => after.push((origin.conn.id, frame)),
                    _ => {}
                }
                continue;
            }
            self.send_reply(host, origin, reply, tick, now);
        }
        let ops = wire::encode_ops(&delta.ops);
        let payload = wire::encode(&OutMsg::Delta {
            tick,
            epoch,
            ops: serde_bytes::ByteBuf::from(ops.clone()),
            acks: acks.clone(),
        });
        let keys = Keys::of(&room_id);
        let mut cmd = eval(APPEND, [&keys.epoch, &keys.log, &keys.output]);
        cmd.arg(epoch)
            .arg(tick)
            .arg(ops)
            .arg(wire::encode(&acks))
            .arg(payload);
        if let Some(last) = host.held.in_flight.back_mut() {
            last.1 = cmd.clone();
        }
        // During a resend the append waits: it goes out behind the ones before it.
        if !host.held.retrying {
            fleet.writer.push(
                cmd,
                Job::Append {
                    room: room_id.clone(),
                    tick,
                    generation: host.held.generation,
                },
            );
        }
        for (conn, frame) in after {
            self.fleet_send_remote_after(MeshMsg::ToConn { conn, frame }, durable.then_some(tick));
        }
        self.maybe_snapshot(fleet, host, now);
    }

    /// Writes a snapshot when one is due (ticks or time since the last one).
    pub(super) fn maybe_snapshot(&self, fleet: &Fleet, host: &RoomHost, now: Instant) {
        let room_id = host.room.id();
        let tick = host.room.tick();
        let mut rooms = fleet.rooms.borrow_mut();
        let Some(FleetRoom::Owned(owned)) = rooms.get_mut(room_id) else {
            return;
        };
        if tick == owned.last_snap_tick {
            return;
        }
        let due = tick >= owned.last_snap_tick + fleet.config.snapshot_every_ticks
            || now.duration_since(owned.last_snap_at) >= fleet.config.snapshot_every;
        if !due {
            return;
        }
        owned.last_snap_tick = tick;
        owned.last_snap_at = now;
        let keep = self.config.limits.resume_window as u64;
        let keys = Keys::of(room_id);
        let mut cmd = eval(SNAPSHOT, [&keys.epoch, &keys.snap, &keys.log]);
        cmd.arg(host.room.epoch())
            .arg(wire::encode_state(host.room.state()))
            .arg(tick)
            .arg(format!("{}-0", tick.saturating_sub(keep)));
        fleet.writer.push(cmd, Job::Fire);
    }

    /// Sends now, or after the appends in flight when the room has some. Local members'
    /// outputs wait here; other instances' go to Redis at once, in order behind those
    /// appends, and an answer addressed to one of them is published only if they succeed.
    pub(in super::super) fn host_send(&self, host: &mut RoomHost, dst: usize, msg: MeshMsg) {
        self.host_send_as(host, dst, msg, None);
    }

    /// As [`Shard::host_send`]; `ack` names the op an `ack` answers (who, `seq`), so that a
    /// step-down answers it `unavailable` instead while it is held.
    pub(in super::super) fn host_send_as(
        &self,
        host: &mut RoomHost,
        dst: usize,
        msg: MeshMsg,
        ack: Option<(Origin, u64)>,
    ) {
        let durable = self.fleet.as_ref().is_some_and(|f| f.config.durable_acks);
        if durable {
            if let Some(&(tick, _)) = host.held.in_flight.back() {
                if dst < self.shards {
                    host.held.queue.push_back(HeldOut {
                        tick,
                        dst,
                        msg,
                        ack,
                    });
                } else {
                    self.fleet_send_remote_after(msg, Some(tick));
                }
                return;
            }
        }
        self.send(dst, msg);
    }

    /// The reply to a queued command came back.
    pub(super) fn fleet_job_done(&self, job: Job, reply: Result<Value, Error>) {
        match job {
            Job::Append {
                room,
                tick,
                generation,
            } => self.appended(&room, tick, generation, reply),
            Job::Relayed {
                room,
                origin,
                request,
            } => {
                if let Err(error) = reply {
                    warn!(%room, ?request, cause = %error, "relaying a request failed");
                    self.relay_failed(&room, origin, request);
                }
            }
            Job::Answer { room, conn, kind } => match reply {
                Ok(Value::Int(0)) => self.answer_dropped(&room, conn, kind),
                Ok(_) => {}
                Err(error) => warn!(%room, cause = %error, "publishing an answer failed"),
            },
            Job::Fire => {
                if let Err(error) = reply {
                    warn!(cause = %error, "a Redis write failed");
                }
            }
        }
    }

    fn appended(&self, room: &RoomId, tick: u64, generation: u64, reply: Result<Value, Error>) {
        let current = self
            .rooms
            .borrow()
            .get(room)
            .is_some_and(|h| h.held.generation == generation && !h.held.retrying);
        if !current {
            // A reply to appends sent again since, or of a room no longer hosted.
            return;
        }
        let why = match reply {
            Ok(Value::Int(1 | 2)) => {
                ShardMetrics::add(&self.metrics().fleet.appends, 1);
                let released = {
                    let mut rooms = self.rooms.borrow_mut();
                    let Some(host) = rooms.get_mut(room) else {
                        return;
                    };
                    while host.held.in_flight.front().is_some_and(|(t, _)| *t <= tick) {
                        host.held.in_flight.pop_front();
                    }
                    let mut out = Vec::new();
                    while host.held.queue.front().is_some_and(|o| o.tick <= tick) {
                        if let Some(o) = host.held.queue.pop_front() {
                            out.push((o.dst, o.msg));
                        }
                    }
                    out
                };
                for (dst, msg) in released {
                    self.send(dst, msg);
                }
                return;
            }
            Ok(Value::Int(0)) => "another instance owns the room (epoch changed)".to_owned(),
            Ok(Value::Int(-1)) => "the log does not end where this owner's history does".into(),
            Ok(other) => format!("unexpected append reply {other:?}"),
            Err(error @ Error::Server { .. }) => format!("append refused: {error}"),
            Err(error) => {
                // Redis unreachable: keep the room while the lease is ours and send the
                // appends again; past the lease, step down.
                let lease_until =
                    self.fleet
                        .as_ref()
                        .and_then(|f| match f.rooms.borrow().get(room) {
                            Some(FleetRoom::Owned(owned)) => Some(owned.lease_until),
                            _ => None,
                        });
                if lease_until.is_some_and(|until| Instant::now() < until) {
                    warn!(%room, tick, cause = %error, "append failed; sending it again");
                    return self.schedule_resend(room);
                }
                format!("append failed and the lease lapsed: {error}")
            }
        };
        if self.rooms.borrow().contains_key(room) {
            lease::step_down(self, room, &why);
        }
    }

    /// Sends a local member the answer it is owed for this flush (an `ack` at `tick`, or a
    /// framed reply), through the host's ordered path.
    fn send_reply(
        &self,
        host: &mut RoomHost,
        origin: Origin,
        reply: Reply,
        tick: u64,
        now: Instant,
    ) {
        let ack = match reply {
            Reply::Ack { seq, .. } => Some((origin, seq)),
            Reply::Frame(_) => None,
        };
        let frame = self.reply_frame(host.room.id(), reply, tick, origin.proto, now);
        self.host_send_as(
            host,
            origin.conn.shard,
            MeshMsg::ToConn {
                conn: origin.conn.id,
                frame,
            },
            ack,
        );
    }
}

/// An answer a room that steps down still owes a member of this instance.
pub(super) enum Owed {
    /// `unavailable` to op `seq`: applied here, but its delta's fate is unknown (its append
    /// in flight) or the delta never left (not flushed yet). The new owner's `joined` tells.
    Unavailable(Origin, u64),
    /// An answer sent as it is, to that shard: an error, a `left`, a refused join.
    Send(usize, MeshMsg),
}

/// Takes from a host that steps down every answer it owes members of this instance, in
/// request order: those held behind its appends in flight, then those due with its pending
/// delta (ops applied this turn, not flushed yet). The deltas and snapshots it held are
/// dropped (the log may never get their ticks): its members are registered with the new
/// owner, whose `joined` answers them. Answers for other instances' members are dropped
/// too: their relay sends those ops again to the new owner.
pub(super) fn owed_on_step_down(host: &mut RoomHost, shards: usize) -> Vec<Owed> {
    let mut owed = Vec::new();
    for out in std::mem::take(&mut host.held.queue) {
        match (out.ack, out.msg) {
            (Some((origin, seq)), _) => owed.push(Owed::Unavailable(origin, seq)),
            (
                None,
                msg @ (MeshMsg::ToConn { .. } | MeshMsg::Left { .. } | MeshMsg::JoinRefused { .. }),
            ) => owed.push(Owed::Send(out.dst, msg)),
            // A delta or snapshot the log may never hold, or a remote member's snapshot to
            // make again.
            _ => {}
        }
    }
    for (origin, reply) in std::mem::take(&mut host.replies) {
        if origin.conn.shard >= shards {
            continue;
        }
        owed.push(match reply {
            Reply::Ack { seq, .. } => Owed::Unavailable(origin, seq),
            Reply::Frame(frame) => Owed::Send(
                origin.conn.shard,
                MeshMsg::ToConn {
                    conn: origin.conn.id,
                    frame,
                },
            ),
        });
    }
    owed
}

/// An ack frame for a member of this instance, from a delta's ack list.
pub fn ack_frame(room: &RoomId, ack: &AckTo, tick: u64) -> bytes::Bytes {
    let proto = if ack.proto == 1 {
        Subprotocol::Json
    } else {
        Subprotocol::MsgPack
    };
    encode::frame(
        &ServerMessage::Ack {
            room: room.as_str(),
            seq: ack.seq,
            tick,
        },
        proto,
    )
}

impl super::Fleet {
    /// Queues `msg` for `:out`, published only if the log holds `tick` of `epoch` by then.
    pub(super) fn publish_logged(
        &self,
        room: &RoomId,
        epoch: u64,
        tick: u64,
        conn: u64,
        kind: ToKind,
        msg: &OutMsg,
    ) {
        let keys = Keys::of(room);
        let mut cmd = eval(PUBLISH_LOGGED, [&keys.epoch, &keys.log, &keys.output]);
        cmd.arg(epoch).arg(tick).arg(wire::encode(msg));
        self.writer.push(
            cmd,
            Job::Answer {
                room: room.clone(),
                conn,
                kind,
            },
        );
    }
}

impl Shard {
    /// An answer for another instance's member was dropped: the log did not hold its tick.
    /// Either this owner is stale (its append failed, it steps down, and the member is
    /// registered with the new owner), or an append is being sent again after a lost reply
    /// (the room is still ours): then a snapshot the member waits for is made again once
    /// the appends in flight are in the log. Other answers are asked for again by the
    /// relay (a join or leave resent, an op resent as a repeat, or given up).
    fn answer_dropped(&self, room: &RoomId, conn: u64, kind: ToKind) {
        debug!(%room, ?kind, "an answer for another instance was dropped: the log lacks its tick");
        let again = match self.rooms.borrow().get(room) {
            Some(host) => {
                let conn = ConnRef {
                    shard: self.remote_shard(),
                    id: conn,
                };
                host.member(conn).map(|(origin, member)| match kind {
                    ToKind::Joined => MeshMsg::Join {
                        room: room.clone(),
                        origin,
                        member: member.to_owned(),
                        since: None,
                        epoch: None,
                    },
                    _ => MeshMsg::Resync {
                        room: room.clone(),
                        origin,
                    },
                })
            }
            None => None,
        };
        let owned = self
            .fleet
            .as_ref()
            .is_some_and(|f| matches!(f.rooms.borrow().get(room), Some(FleetRoom::Owned(_))));
        let Some(msg) = again.filter(|_| owned && matches!(kind, ToKind::Joined | ToKind::Resync))
        else {
            return;
        };
        // Made again behind the appends in flight (through this shard's own queue), so
        // the new snapshot's tick is in the log before it is published.
        let mut rooms = self.rooms.borrow_mut();
        if let Some(host) = rooms.get_mut(room) {
            if let Some(&(tick, _)) = host.held.in_flight.back() {
                host.held.queue.push_back(HeldOut {
                    tick,
                    dst: self.id,
                    msg,
                    ack: None,
                });
                return;
            }
        }
        drop(rooms);
        self.handle(self.id, msg);
    }

    /// A `since` of an earlier epoch (before a take-over): the deltas after it, when the
    /// log this owner loaded shows tick `since` written in `epoch` and the ring still holds
    /// everything since the load.
    pub(in super::super) fn fleet_resume(
        &self,
        host: &RoomHost,
        since: u64,
        epoch: u64,
    ) -> Option<Vec<Rc<DeltaRecord>>> {
        let fleet = self.fleet.as_ref()?;
        let rooms = fleet.rooms.borrow();
        let Some(FleetRoom::Owned(owned)) = rooms.get(host.room.id()) else {
            return None;
        };
        let history = &owned.history;
        let at = history.records.iter().position(|r| r.tick == since)?;
        if history.written_in[at] != epoch {
            return None;
        }
        let loaded_at = history.records.last()?.tick;
        let mut deltas: Vec<Rc<DeltaRecord>> = history.records[at + 1..].to_vec();
        deltas.extend(host.room.deltas_since(loaded_at, None)?);
        Some(deltas)
    }

    /// Sends every append in flight again, in tick order, after a short pause.
    fn schedule_resend(&self, room: &RoomId) {
        {
            let mut rooms = self.rooms.borrow_mut();
            let Some(host) = rooms.get_mut(room) else {
                return;
            };
            host.held.retrying = true;
            host.held.generation += 1;
            ShardMetrics::add(&self.metrics().fleet.append_resends, 1);
        }
        let Some(me) = self.me() else {
            return;
        };
        let room = room.clone();
        glommio::spawn_local(async move {
            glommio::timer::Timer::new(RESEND_PAUSE).await;
            me.resend(&room);
        })
        .detach();
    }

    fn resend(&self, room: &RoomId) {
        let Some(fleet) = self.fleet.as_ref() else {
            return;
        };
        let mut rooms = self.rooms.borrow_mut();
        let Some(host) = rooms.get_mut(room) else {
            return;
        };
        host.held.retrying = false;
        let generation = host.held.generation;
        for (tick, cmd) in &host.held.in_flight {
            fleet.writer.push(
                cmd.clone(),
                Job::Append {
                    room: room.clone(),
                    tick: *tick,
                    generation,
                },
            );
        }
    }
}

/// How long a failed append waits before it is sent again (with every one after it).
const RESEND_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::{Limits, Room};

    fn origin(shard: usize, id: u64) -> Origin {
        Origin {
            conn: ConnRef { shard, id },
            proto: Subprotocol::Json,
        }
    }

    fn describe(owed: &Owed) -> String {
        let text = |f: &bytes::Bytes| String::from_utf8_lossy(f).into_owned();
        match owed {
            Owed::Unavailable(o, seq) => {
                format!("unavailable to {}/{} op {seq}", o.conn.shard, o.conn.id)
            }
            Owed::Send(dst, MeshMsg::ToConn { conn, frame }) => {
                format!("to {dst}/{conn}: {}", text(frame))
            }
            Owed::Send(dst, MeshMsg::Left { conn, frame, .. }) => {
                format!("left to {dst}/{conn}: {}", text(frame))
            }
            Owed::Send(dst, _) => format!("something else to {dst}"),
        }
    }

    /// A room steps down when an append's refusal is read, which can come between an op's
    /// apply and the flush of its delta (the flusher yields first, so that the ops ready in
    /// one turn share a delta): that op's ack is in the host's pending replies, not held
    /// behind an append. Every op of a local member still gets exactly one answer.
    #[test]
    fn a_step_down_answers_every_op_it_owes_local_members() {
        let shards = 2;
        let room = RoomId::parse("r").expect("room id");
        let room_of = Room::new(room.clone(), 1, Limits::default());
        let mut host = RoomHost::new(room_of, shards + 1, Instant::now());
        let (a, b, remote) = (origin(0, 1), origin(1, 2), origin(shards, 3));
        let frame = |s: &str| bytes::Bytes::from(s.to_owned());
        // Held behind the append of tick 1: its delta, a's ack, an error and a `left` for
        // b, and a remote member's `joined` to make again.
        host.held.in_flight.push_back((1, redis::Cmd::new()));
        let held = [
            (
                0,
                MeshMsg::Deliver {
                    room: room.clone(),
                    frames: [Some(frame("delta 1")), None],
                    exclude: None,
                    sent: Instant::now(),
                    flushed_at: Some(Instant::now()),
                },
                None,
            ),
            (
                0,
                MeshMsg::ToConn {
                    conn: 1,
                    frame: frame("ack 1"),
                },
                Some((a, 1)),
            ),
            (
                1,
                MeshMsg::ToConn {
                    conn: 2,
                    frame: frame("error 7"),
                },
                None,
            ),
            (
                1,
                MeshMsg::Left {
                    room: room.clone(),
                    conn: 2,
                    frame: frame("left"),
                },
                None,
            ),
            (
                0,
                MeshMsg::Join {
                    room: room.clone(),
                    origin: remote,
                    member: "m3".into(),
                    since: None,
                    epoch: None,
                },
                None,
            ),
        ];
        for (dst, msg, ack) in held {
            host.held.queue.push_back(HeldOut {
                tick: 1,
                dst,
                msg,
                ack,
            });
        }
        // Applied this turn, their delta not flushed yet: a's op 2, b's op 8 refused, and
        // a remote member's op (its relay sends it again to the new owner).
        host.dirty = true;
        let received = Instant::now();
        host.replies.push((a, Reply::Ack { seq: 2, received }));
        host.replies.push((b, Reply::Frame(frame("error 8"))));
        host.replies.push((remote, Reply::Ack { seq: 9, received }));

        let owed: Vec<String> = owed_on_step_down(&mut host, shards)
            .iter()
            .map(describe)
            .collect();
        assert_eq!(
            owed,
            [
                "unavailable to 0/1 op 1",
                "to 1/2: error 7",
                "left to 1/2: left",
                "unavailable to 0/1 op 2",
                "to 1/2: error 8",
            ]
        );
        assert!(host.held.queue.is_empty() && host.replies.is_empty());
    }
}
