//! Room ownership: taking the lease (with a new epoch), loading the room from its
//! snapshot and log, renewing, releasing, stepping down, and the periodic watch that
//! renews owned rooms and lets relays with members take over a room whose owner died.
//!
//! Invariants:
//! - The epoch is bumped in the same script that takes the lease, so every owner (a clean
//!   hand-off and a re-take by the same instance included) has its own epoch.
//! - A room is loaded only by the instance that just took its lease; a load that fails
//!   gives the lease back (when Redis still answers) and every queued request gets
//!   `unavailable`.
//! - Renewal is a script that extends the lease only while it is ours; a lease that lapsed
//!   while nobody took it is taken back only if the epoch is still ours (nobody wrote).

use std::rc::Rc;
use std::time::Instant;

use redis::Value;
use tracing::{debug, info, warn};

use super::super::owner::RoomHost;
use super::super::shard::{MeshMsg, Origin, Shard};
use super::log::Owed;
use super::relay::Unanswered;
use super::wire::{self, Keys, OutMsg};
use super::{FleetRoom, History, Owned, Relay, ROUTED};
use crate::protocol::{ClientMessage, DeltaOp, RoomId, Subprotocol};
use crate::redis::{Error, Script};
use crate::room::{apply_delta_op, DeltaRecord, Room};
use crate::value::Value as StateValue;

/// KEYS owner, epoch; ARGV instance, ttl ms. The new epoch, or 0 when another holds it.
const ACQUIRE: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return redis.call('INCR', KEYS[2])
end
return 0
";

/// KEYS owner, epoch; ARGV instance, ttl ms, epoch. 1 when the lease is (again) ours.
const RENEW: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if cur == false and redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// KEYS owner; ARGV instance.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

fn ttl_ms(shard: &Shard) -> u64 {
    shard
        .fleet
        .as_ref()
        .map_or(3000, |f| f.config.lease_ttl.as_millis() as u64)
}

pub fn spawn_acquire(shard: &Shard, room: RoomId) {
    debug!(%room, "taking or finding the room's owner");
    match shard.me() {
        Some(me) => {
            glommio::spawn_local(acquire(me, room, Vec::new(), Carried::default())).detach();
        }
        None => warn!(%room, "fleet not started on this shard"),
    }
}

/// Takes the lease when it is free (or ours), else relays. `members` are local members a
/// relay already had (a take-over): they are registered with the loaded room; `ops` are
/// the ops it had relayed to the old owner without an answer.
async fn acquire(shard: Rc<Shard>, room: RoomId, members: Vec<(Origin, String)>, ops: Carried) {
    let Some(fleet) = shard.fleet.as_ref() else {
        return;
    };
    let keys = Keys::of(&room);
    debug!(%room, "acquire started");
    // A join waits a little for Redis (just started, reconnecting) before `unavailable`.
    let patience = Instant::now() + fleet.config.relay_timeout;
    // The lease runs from when Redis set it, which is after the request left: counting
    // from the send time keeps the local lease from outlasting the one in Redis.
    let (taken, sent) = loop {
        let sent = Instant::now();
        let taken = fleet
            .client
            .eval(
                &Script::new(ACQUIRE),
                &[&keys.owner, &keys.epoch],
                (fleet.instance(), ttl_ms(&shard)),
            )
            .await;
        match taken {
            Err(Error::Unavailable) if Instant::now() < patience => {
                glommio::timer::Timer::new(std::time::Duration::from_millis(50)).await;
            }
            taken => break (taken, sent),
        }
    };
    debug!(%room, ?taken, "lease attempt");
    match taken {
        Ok(Value::Int(epoch)) if epoch > 0 => match load(&shard, &room, epoch as u64).await {
            Ok((loaded, history)) => {
                return become_owner(&shard, room, loaded, history, sent, members, ops);
            }
            Err(error) => {
                warn!(%room, cause = %error, "loading the room failed; giving the lease back");
                release(&shard, &room).await;
                fail_queued(&shard, &room, members);
            }
        },
        Ok(_) => become_relay(&shard, room.clone(), members).await,
        Err(error) => {
            warn!(%room, cause = %error, "cannot take the room's lease");
            fail_queued(&shard, &room, members);
        }
    }
    // Not the owner: what happened to those ops is unknown.
    for (origin, seq, _) in ops.ops {
        shard.answer_unavailable(&room, origin, Some(seq), false);
    }
}

/// Subscribes, waiting a little for a subscriber connection that is (re)connecting.
async fn subscribe(fleet: &super::Fleet, channel: String) -> Result<(), Error> {
    let patience = Instant::now() + fleet.config.relay_timeout;
    loop {
        match fleet.subscriber.subscribe(channel.clone()).await {
            Err(Error::Unavailable) if Instant::now() < patience => {
                glommio::timer::Timer::new(std::time::Duration::from_millis(50)).await;
            }
            outcome => return outcome,
        }
    }
}

/// What a relay taking a room over brings from its relaying days.
#[derive(Default)]
struct Carried {
    /// Ops relayed to the old owner and not answered.
    ops: Vec<Unanswered>,
    /// The last tick the relay delivered.
    seen: Option<u64>,
}

/// Why a room could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("Redis: {0}")]
    Redis(#[from] Error),
    #[error("the stored snapshot is unreadable: {0}")]
    Snapshot(String),
}

/// The snapshot, then every logged delta after it, into a room of `epoch`.
async fn load(shard: &Rc<Shard>, room: &RoomId, epoch: u64) -> Result<(Room, History), LoadError> {
    let fleet = shard.fleet.as_ref().expect("fleet on");
    let keys = Keys::of(room);
    // Requests relayed from now on must reach us: subscribe before anyone learns we own it.
    subscribe(fleet, keys.input.clone()).await?;
    let mut cmd = redis::cmd("HGETALL");
    cmd.arg(&keys.snap);
    let snap = fleet.client.query(&cmd).await?;
    let (mut state, mut tick) = (StateValue::Map(Default::default()), 0u64);
    if let Value::Array(fields) = flatten_map(snap) {
        let mut state_bytes = None;
        for pair in fields.chunks(2) {
            if let [Value::BulkString(k), v] = pair {
                match (k.as_slice(), v) {
                    (b"state", Value::BulkString(bytes)) => state_bytes = Some(bytes.clone()),
                    (b"tick", Value::BulkString(t)) => {
                        tick = std::str::from_utf8(t)
                            .ok()
                            .and_then(|t| t.parse().ok())
                            .ok_or_else(|| LoadError::Snapshot("tick".into()))?;
                    }
                    _ => {}
                }
            }
        }
        if let Some(bytes) = state_bytes {
            state = StateValue::Map(
                wire::decode_state(&bytes).map_err(|e| LoadError::Snapshot(e.to_string()))?,
            );
        }
    }
    // The resume window behind the snapshot too: it is history to resume from.
    let window = shard.config.limits.resume_window as u64;
    let from = (tick + 1).saturating_sub(window).max(1);
    let entries = super::log::read_log(fleet, room, from, None).await?;
    let mut history = History::default();
    // Every ack the loaded log holds, whether or not its delta can be resumed from.
    let mut acked = std::collections::HashMap::new();
    for entry in entries {
        if entry.tick <= tick {
            // Before the snapshot: history only, when it leads up to the snapshot.
            if history
                .records
                .last()
                .is_some_and(|r| r.tick + 1 != entry.tick)
            {
                history = History::default();
            }
        } else if entry.tick != tick + 1 {
            break;
        } else {
            apply_ops(&mut state, &entry.ops);
            tick = entry.tick;
        }
        for ack in entry.acks {
            acked.insert((ack.to, ack.seq), entry.tick);
        }
        history
            .records
            .push(Rc::new(DeltaRecord::new(entry.tick, epoch, entry.ops)));
        history.written_in.push(entry.epoch);
    }
    // Only a history that ends where the room starts is one.
    if history.records.last().is_some_and(|r| r.tick != tick) {
        history = History::default();
    }
    let excess = history.records.len().saturating_sub(window as usize);
    history.records.drain(..excess);
    history.written_in.drain(..excess);
    history.acked = acked;
    history.acks_from = from;
    let StateValue::Map(map) = state else {
        return Err(LoadError::Snapshot("the state is not a map".into()));
    };
    info!(%room, epoch, tick, "room loaded from Redis");
    let room = Room::from_snapshot(room.clone(), epoch, tick, map, shard.room_limits());
    Ok((room, history))
}

fn apply_ops(state: &mut StateValue, ops: &[DeltaOp]) {
    for op in ops {
        if let Err(error) = apply_delta_op(state, op) {
            warn!(cause = %error, "a logged delta op does not fit the state");
        }
    }
}

/// HGETALL answers a flat array (RESP2) or a map (RESP3); both as `[k, v, k, v…]`.
fn flatten_map(value: Value) -> Value {
    match value {
        Value::Map(pairs) => Value::Array(pairs.into_iter().flat_map(|(k, v)| [k, v]).collect()),
        other => other,
    }
}

fn become_owner(
    shard: &Rc<Shard>,
    room_id: RoomId,
    room: Room,
    history: History,
    // When the request that took the lease was sent.
    lease_sent: Instant,
    members: Vec<(Origin, String)>,
    carried: Carried,
) {
    let Some(fleet) = shard.fleet.as_ref() else {
        return;
    };
    let epoch = room.epoch();
    // The loaded acks answer for every tick after the last one the relay saw, or the ops'
    // fate stays unknown (never applied twice).
    let covered = carried
        .seen
        .is_some_and(|seen| seen + 1 >= history.acks_from || seen >= room.tick());
    let ops = carried.ops;
    let tick = room.tick();
    let host = RoomHost::new(room, shard.shards + 1, Instant::now());
    shard.rooms.borrow_mut().insert(room_id.clone(), host);
    super::super::metrics::ShardMetrics::add(&shard.metrics().rooms, 1);
    super::super::metrics::ShardMetrics::add(&shard.metrics().fleet.rooms_taken, 1);
    // Ops this instance relayed to the old owner: acked by the log, or never applied.
    let logged: Vec<Option<u64>> = ops
        .iter()
        .map(|(origin, seq, _)| {
            let key = (shard.addr_of(*origin), *seq);
            history.acked.get(&key).copied()
        })
        .collect();
    let mut recent = super::Recent::default();
    for (id, acked_at) in &history.acked {
        recent.note(id.clone(), Some(*acked_at));
    }
    let owned = Owned {
        epoch,
        lease_until: lease_sent + fleet.config.lease_ttl,
        last_snap_tick: tick,
        last_snap_at: Instant::now(),
        history,
        recent,
    };
    let previous = fleet
        .rooms
        .borrow_mut()
        .insert(room_id.clone(), FleetRoom::Owned(owned));
    let queued = match previous {
        Some(FleetRoom::Loading { queued }) => queued,
        _ => Vec::new(),
    };
    let keys = Keys::of(&room_id);
    let subscriber = fleet.subscriber.clone();
    glommio::spawn_local(async move {
        let _ = subscriber.unsubscribe(keys.output).await;
    })
    .detach();
    info!(room = %room_id, epoch, tick, "owning the room");
    fleet.publish_out(&room_id, &OutMsg::Owner { epoch });
    for (origin, member) in members {
        shard.handle(
            ROUTED,
            MeshMsg::Join {
                room: room_id.clone(),
                origin,
                member,
                since: None,
                epoch: None,
            },
        );
    }
    if !ops.is_empty() {
        let in_log = logged.iter().filter(|l| l.is_some()).count();
        info!(
            room = %room_id,
            in_log,
            applied_now = if covered { ops.len() - in_log } else { 0 },
            "ops relayed to the old owner and unanswered"
        );
    }
    for ((origin, seq, payload), logged) in ops.into_iter().zip(logged) {
        match logged {
            // In the state its member just got: the ack follows the `joined`.
            Some(acked_at) => {
                let frame = super::super::encode::frame(
                    &crate::protocol::ServerMessage::Ack {
                        room: room_id.as_str(),
                        seq,
                        tick: acked_at,
                    },
                    origin.proto,
                );
                shard.send(
                    origin.conn.shard,
                    MeshMsg::ToConn {
                        conn: origin.conn.id,
                        frame,
                    },
                );
            }
            None if !covered => shard.answer_unavailable(&room_id, origin, Some(seq), false),
            None => match crate::protocol::decode_client(&payload, Subprotocol::MsgPack) {
                Ok(ClientMessage::Op { seq, ops, .. }) => shard.handle(
                    ROUTED,
                    MeshMsg::Op {
                        room: room_id.clone(),
                        origin,
                        seq,
                        ops,
                        received: Instant::now(),
                    },
                ),
                _ => shard.answer_unavailable(&room_id, origin, Some(seq), false),
            },
        }
    }
    for msg in queued {
        shard.handle(ROUTED, msg);
    }
}

async fn become_relay(shard: &Rc<Shard>, room: RoomId, members: Vec<(Origin, String)>) {
    let Some(fleet) = shard.fleet.as_ref() else {
        return;
    };
    let keys = Keys::of(&room);
    if let Err(error) = subscribe(fleet, keys.output.clone()).await {
        warn!(%room, cause = %error, "cannot subscribe to the room's deltas");
        let _ = fleet.subscriber.unsubscribe(keys.output).await;
        return fail_queued(shard, &room, members);
    }
    debug!(%room, "relaying the room");
    let previous = fleet
        .rooms
        .borrow_mut()
        .insert(room.clone(), FleetRoom::Relayed(Relay::new(shard.shards)));
    let queued = match previous {
        Some(FleetRoom::Loading { queued }) => queued,
        _ => Vec::new(),
    };
    for (origin, member) in members {
        shard.relay_request(MeshMsg::Join {
            room: room.clone(),
            origin,
            member,
            since: None,
            epoch: None,
        });
    }
    for msg in queued {
        // Relayed to us by another instance while we loaded or stepped down: its relay
        // sends it again to the owner. Relayed on from here it would be answered as a
        // request of a member of ours, which it is not (`not_joined`).
        if request_origin(&msg).is_some_and(|o| o.conn.shard >= shard.shards) {
            debug!(%room, "a request another instance relayed to us dropped: not the owner");
            continue;
        }
        shard.relay_request(msg);
    }
}

fn request_origin(msg: &MeshMsg) -> Option<Origin> {
    match msg {
        MeshMsg::Join { origin, .. }
        | MeshMsg::Leave { origin, .. }
        | MeshMsg::Op { origin, .. }
        | MeshMsg::Msg { origin, .. }
        | MeshMsg::Resync { origin, .. } => Some(*origin),
        _ => None,
    }
}

/// The room could not be served: every waiting request gets `unavailable`.
fn fail_queued(shard: &Rc<Shard>, room: &RoomId, members: Vec<(Origin, String)>) {
    let Some(fleet) = shard.fleet.as_ref() else {
        return;
    };
    let queued = match fleet.rooms.borrow_mut().remove(room) {
        Some(FleetRoom::Loading { queued }) => queued,
        _ => Vec::new(),
    };
    for (origin, _) in members {
        shard.send(
            origin.conn.shard,
            MeshMsg::Left {
                room: room.clone(),
                conn: origin.conn.id,
                frame: left_frame(room, origin),
            },
        );
    }
    for msg in queued {
        match msg {
            MeshMsg::Join { origin, .. } => shard.answer_unavailable(room, origin, None, true),
            MeshMsg::Op { origin, seq, .. } => {
                shard.answer_unavailable(room, origin, Some(seq), false)
            }
            MeshMsg::Leave {
                origin,
                reply: true,
                ..
            } => answer_leave(shard, room, origin),
            MeshMsg::Msg { origin, .. } => shard.answer_unavailable(room, origin, None, false),
            _ => {}
        }
    }
}

/// `left` for a member the instance could not keep in the room (unasked: with a reason).
pub(super) fn left_frame(room: &RoomId, origin: Origin) -> bytes::Bytes {
    super::super::encode::frame(
        &crate::protocol::ServerMessage::Left {
            room: room.as_str(),
            reason: Some("unavailable"),
        },
        origin.proto,
    )
}

/// Answers a client's `leave` that the owner could not answer itself with `left`
/// (PROTOCOL.md: a `reason` only when unasked).
fn answer_leave(shard: &Shard, room: &RoomId, origin: Origin) {
    let frame = super::super::encode::frame(
        &crate::protocol::ServerMessage::Left {
            room: room.as_str(),
            reason: None,
        },
        origin.proto,
    );
    shard.send(
        origin.conn.shard,
        MeshMsg::Left {
            room: room.clone(),
            conn: origin.conn.id,
            frame,
        },
    );
}

async fn release(shard: &Shard, room: &RoomId) {
    let Some(fleet) = shard.fleet.as_ref() else {
        return;
    };
    let keys = Keys::of(room);
    let _ = fleet
        .client
        .eval(&Script::new(RELEASE), &[&keys.owner], fleet.instance())
        .await;
    let _ = fleet.subscriber.unsubscribe(keys.input).await;
}

/// Gives back every lease of the shard (shutdown), and shard 0 the liveness key.
pub async fn release_all(shard: &Shard) {
    let Some(fleet) = shard.fleet.as_ref() else {
        return;
    };
    if shard.id == 0 {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(alive_key(fleet.instance()));
        let _ = fleet.client.query(&cmd).await;
    }
    let owned: Vec<RoomId> = fleet
        .rooms
        .borrow()
        .iter()
        .filter(|(_, r)| matches!(r, FleetRoom::Owned(_)))
        .map(|(id, _)| id.clone())
        .collect();
    for room in owned {
        release(shard, &room).await;
    }
}

/// This instance no longer owns `room` (its append or renewal found another epoch):
/// drop the host, keep its local members as a relay's, and register them with the owner.
pub fn step_down(shard: &Shard, room: &RoomId, why: &str) {
    let Some(fleet) = shard.fleet.as_ref() else {
        return;
    };
    let Some(mut host) = shard.rooms.borrow_mut().remove(room) else {
        return;
    };
    super::super::metrics::ShardMetrics::sub(&shard.metrics().rooms, 1);
    super::super::metrics::ShardMetrics::add(&shard.metrics().fleet.step_downs, 1);
    warn!(%room, why, "stepping down: this instance no longer owns the room");
    let members: Vec<(Origin, String)> = host
        .local_members(shard.shards)
        .map(|(origin, member)| (origin, member.to_owned()))
        .collect();
    // Every answer owed to local members: ops whose delta's fate is now unknown (held
    // for its append, or not flushed yet) get `unavailable`, and the clients learn their
    // fate from the state of their next `joined`; errors, `left`s and refusals go out.
    for owed in super::log::owed_on_step_down(&mut host, shard.shards) {
        match owed {
            Owed::Unavailable(origin, seq) => {
                shard.answer_unavailable(room, origin, Some(seq), false)
            }
            Owed::Send(dst, msg) => shard.send(dst, msg),
        }
    }
    fleet
        .rooms
        .borrow_mut()
        .insert(room.clone(), FleetRoom::Loading { queued: Vec::new() });
    let keys = Keys::of(room);
    if let Some(me) = shard.me() {
        let room = room.clone();
        glommio::spawn_local(async move {
            if let Some(fleet) = me.fleet.as_ref() {
                let _ = fleet.subscriber.unsubscribe(keys.input).await;
            }
            become_relay(&me, room, members).await;
        })
        .detach();
    }
}

/// Every third of the lease ttl: renew owned rooms, give back rooms the host dropped,
/// drop relays without members, resend unanswered relayed joins, and take over rooms
/// whose lease lapsed while we have members in them.
pub async fn watch(shard: Rc<Shard>) {
    let Some(fleet) = shard.fleet.as_ref() else {
        return;
    };
    let period = fleet.config.lease_ttl / 3;
    loop {
        glommio::timer::Timer::new(period).await;
        if shard.stopping.get() {
            return;
        }
        let rooms: Vec<(RoomId, bool)> = fleet
            .rooms
            .borrow()
            .iter()
            .filter_map(|(id, r)| match r {
                FleetRoom::Owned(_) => Some((id.clone(), true)),
                FleetRoom::Relayed(_) => Some((id.clone(), false)),
                FleetRoom::Loading { .. } => None,
            })
            .collect();
        let mut any_owned = false;
        for (room, owned) in rooms {
            if owned {
                any_owned = true;
                glommio::spawn_local(renew(shard.clone(), room)).detach();
            } else {
                relay_watch(&shard, room);
            }
        }
        if any_owned {
            glommio::spawn_local(drop_dead_instances(shard.clone())).detach();
        }
    }
}

fn alive_key(instance: &str) -> String {
    format!("kasagi:instance:{instance}")
}

/// Checks in a row an instance's liveness key must be missing before its members are
/// dropped: a Redis restart without persistence loses the keys for a moment.
const DEAD_AFTER_CHECKS: u32 = 3;

/// Shard 0 keeps the instance's liveness key (`kasagi:instance:<id>`, 3 lease ttls).
pub async fn alive(shard: Rc<Shard>) {
    let Some(fleet) = shard.fleet.as_ref() else {
        return;
    };
    let ttl = fleet.config.lease_ttl * 3;
    loop {
        let mut cmd = redis::cmd("SET");
        cmd.arg(alive_key(fleet.instance()))
            .arg(1)
            .arg("PX")
            .arg(ttl.as_millis() as u64);
        let set = fleet.client.query(&cmd).await;
        if shard.stopping.get() {
            return;
        }
        // Not set (Redis not up yet): try again soon, members elsewhere depend on it.
        let pause = if set.is_ok() {
            fleet.config.lease_ttl / 3
        } else {
            std::time::Duration::from_millis(50)
        };
        glommio::timer::Timer::new(pause).await;
    }
}

/// Members of instances that died stay listed in our rooms until they are dropped here
/// (with a `presence` telling the others).
async fn drop_dead_instances(shard: Rc<Shard>) {
    let Some(fleet) = shard.fleet.as_ref() else {
        return;
    };
    let remote: Vec<(RoomId, Origin, super::RemoteAddr)> = shard
        .rooms
        .borrow()
        .iter()
        .flat_map(|(room, host)| {
            host.remote_members(shard.shards)
                .filter_map(|origin| {
                    let (addr, _) = fleet.remote_addr(origin.conn.id)?;
                    Some((room.clone(), origin, addr))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let mut instances: Vec<String> = remote.iter().map(|(_, _, a)| a.instance.clone()).collect();
    instances.sort();
    instances.dedup();
    let mut dead = Vec::new();
    for instance in instances {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(alive_key(&instance));
        let Ok(Value::Int(n)) = fleet.client.query(&cmd).await else {
            continue;
        };
        let mut suspects = fleet.suspects.borrow_mut();
        if n > 0 {
            suspects.remove(&instance);
            continue;
        }
        let misses = suspects.entry(instance.clone()).or_insert(0);
        *misses += 1;
        if *misses >= DEAD_AFTER_CHECKS {
            suspects.remove(&instance);
            dead.push(instance);
        }
    }
    for (room, origin, addr) in remote {
        if dead.contains(&addr.instance) {
            info!(%room, instance = %addr.instance, "dropping a member of a dead instance");
            shard.handle(
                ROUTED,
                MeshMsg::Leave {
                    room,
                    origin,
                    reply: false,
                },
            );
            fleet.forget_remote(origin.conn.id);
        }
    }
}

async fn renew(shard: Rc<Shard>, room: RoomId) {
    let Some(fleet) = shard.fleet.as_ref() else {
        return;
    };
    let keys = Keys::of(&room);
    let still_owned = matches!(fleet.rooms.borrow().get(&room), Some(FleetRoom::Owned(_)));
    if !still_owned {
        return;
    }
    if !shard.rooms.borrow().contains_key(&room) {
        // The host dropped the empty room: give the lease back.
        fleet.rooms.borrow_mut().remove(&room);
        release(&shard, &room).await;
        return;
    }
    let Some(epoch) = fleet.owned_epoch(&room) else {
        return;
    };
    let sent = Instant::now();
    let outcome = fleet
        .client
        .eval(
            &Script::new(RENEW),
            &[&keys.owner, &keys.epoch],
            (fleet.instance(), ttl_ms(&shard), epoch),
        )
        .await;
    match outcome {
        Ok(Value::Int(1)) => {
            if let Some(FleetRoom::Owned(owned)) = fleet.rooms.borrow_mut().get_mut(&room) {
                if owned.epoch == epoch {
                    owned.lease_until = sent + fleet.config.lease_ttl;
                }
            }
            // A room gone quiet still gets its snapshot on time (with its log complete).
            if let Some(host) = shard.rooms.borrow().get(&room) {
                if !host.held.is_busy() && !host.dirty {
                    shard.maybe_snapshot(fleet, host, Instant::now());
                }
            }
        }
        Ok(_) => {
            if fleet.owned_epoch(&room) == Some(epoch) {
                step_down(&shard, &room, "the lease is held by another instance");
            }
        }
        Err(error) => warn!(%room, cause = %error, "cannot renew the room's lease"),
    }
}

fn relay_watch(shard: &Rc<Shard>, room: RoomId) {
    let Some(fleet) = shard.fleet.as_ref() else {
        return;
    };
    let timeout = fleet.config.relay_timeout;
    // An op waits for the owner's answer at most a lease (a take-over) and a relay timeout.
    let op_timeout = fleet.config.lease_ttl + timeout;
    let (empty, stale, (resend, overdue), (leave_again, left)) = {
        let mut rooms = fleet.rooms.borrow_mut();
        let Some(FleetRoom::Relayed(relay)) = rooms.get_mut(&room) else {
            return;
        };
        (
            relay.is_empty(),
            relay.unanswered_joins(timeout),
            relay.overdue_ops(timeout, op_timeout),
            relay.overdue_leaves(timeout, op_timeout),
        )
    };
    for origin in leave_again {
        shard.relay_leave_again(&room, origin);
    }
    for origin in left {
        answer_leave(shard, &room, origin);
    }
    shard.relay_send_again(&room, resend);
    for (origin, seq) in overdue {
        shard.answer_unavailable(&room, origin, Some(seq), false);
    }
    let leaving = matches!(
        fleet.rooms.borrow().get(&room),
        Some(FleetRoom::Relayed(relay)) if relay.has_leaves()
    );
    if empty && !leaving {
        fleet.rooms.borrow_mut().remove(&room);
        let subscriber = fleet.subscriber.clone();
        let channel = Keys::of(&room).output;
        glommio::spawn_local(async move {
            let _ = subscriber.unsubscribe(channel).await;
        })
        .detach();
        return;
    }
    shard.relay_rejoin(&room, stale);
    glommio::spawn_local(take_over(shard.clone(), room)).detach();
}

/// A relay with members tries the lease: it succeeds only when the owner's has lapsed.
async fn take_over(shard: Rc<Shard>, room: RoomId) {
    let Some(fleet) = shard.fleet.as_ref() else {
        return;
    };
    let keys = Keys::of(&room);
    let mut cmd = redis::cmd("EXISTS");
    cmd.arg(&keys.owner);
    if !matches!(fleet.client.query(&cmd).await, Ok(Value::Int(0))) {
        return;
    }
    let (members, ops, leaves) = {
        let mut rooms = fleet.rooms.borrow_mut();
        let Some(FleetRoom::Relayed(relay)) = rooms.get_mut(&room) else {
            return;
        };
        let ops = Carried {
            ops: relay.take_ops(),
            seen: relay.last_tick(),
        };
        let members = relay.take_members();
        let leaves = relay.take_leaves();
        rooms.insert(room.clone(), FleetRoom::Loading { queued: Vec::new() });
        (members, ops, leaves)
    };
    for origin in leaves {
        answer_leave(&shard, &room, origin);
    }
    info!(%room, "the room's lease lapsed: taking it over");
    acquire(shard, room, members, ops).await;
}

impl super::Fleet {
    pub fn owned_epoch(&self, room: &RoomId) -> Option<u64> {
        match self.rooms.borrow().get(room) {
            Some(FleetRoom::Owned(owned)) => Some(owned.epoch),
            _ => None,
        }
    }
}
