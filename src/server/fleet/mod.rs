//! Several instances behind Redis: one owner per room across the fleet (DESIGN.md,
//! "Several instances").
//!
//! Within an instance nothing changes: a room's owner shard is still `shard_of(room)`, and
//! that shard is the one that deals with Redis for the room. Per room it is in one of three
//! states ([`FleetRoom`]):
//!
//! - **Loading**: it is taking the lease and loading the snapshot and log; requests wait,
//!   in order.
//! - **Owned**: this instance holds the lease. The room is an ordinary `RoomHost` whose
//!   deltas are appended to the log by one script (epoch check, `XADD`, `PUBLISH`) before
//!   local members see them and before any ack (durable acks). Members of other
//!   instances are members of the host too, behind a pseudo shard (`shards`, one past the
//!   last): whatever the host sends them is published on `:out`, addressed.
//! - **Relayed**: another instance owns it. Requests of local members are published on
//!   `:in` with their request ids; what the owner publishes on `:out` is delivered to them,
//!   with tick gaps filled from the log first.
//!
//! # Layout
//!
//! - `wire.rs`: keys, channel names, the messages on `:in` and `:out`, stored deltas.
//! - `writer.rs`: the ordered command stream of a shard (appends and publishes).
//! - `lease.rs`: taking, loading, renewing, releasing and stepping down; the periodic watch.
//! - `log.rs`: appends, durable acks (the held outputs of a room), snapshots.
//! - `relay.rs`: the non-owner side: relaying requests with their ids, delivering `:out`;
//!   `relay/repair.rs`: gap repair from the log.
//!
//! # Invariants
//!
//! - A room is applied to only by the holder of its lease, and only while the lease is
//!   still valid by the local clock (last successful renewal + ttl); past that, ops get
//!   `unavailable` until the lease is renewed.
//! - A delta reaches a client only after its append succeeded (durable acks on), so every
//!   client's copy is a prefix of the log, and an acked op is in the log. The same holds
//!   for answers to other instances' members: published behind the appends, by a script
//!   that drops them unless the log holds their tick in the owner's epoch.
//! - Appends of one room leave in tick order on one connection, and each append checks
//!   that the log ends at the tick before it: the log never has a gap.
//! - The fleet side of a shard is started before its mesh inbox: a request from another
//!   shard can be handled as soon as the inbox exists.

mod lease;
mod log;
mod relay;
mod wire;
mod writer;

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use glommio::channels::local_channel::{self, LocalReceiver};
use tracing::{debug, warn};

use super::encode;
use super::shard::{ConnRef, MeshMsg, Origin, Shard};
use crate::config::RedisConfig;
use crate::protocol::{ErrorCode, RoomId, ServerMessage};
use crate::redis::{Client, ClientOptions, Subscriber, SubscriberEvent};

pub use relay::Relay;
pub use wire::RemoteAddr;
use wire::{Channel, Keys, OutMsg, ToKind};

/// The `from` of a request the fleet has already routed: handled as the owner.
pub const ROUTED: usize = usize::MAX;

/// A room as the fleet side of its owner shard sees it.
pub enum FleetRoom {
    Loading { queued: Vec<MeshMsg> },
    Owned(Owned),
    Relayed(Relay),
}

pub struct Owned {
    pub epoch: u64,
    /// The lease is ours until then, by the local clock (the last renewal's send time + ttl).
    pub lease_until: Instant,
    pub last_snap_tick: u64,
    pub last_snap_at: Instant,
    /// The logged deltas before this owner's first tick, for resuming across a take-over.
    pub history: History,
    /// Request ids of relayed ops this owner received or found acked in the log.
    pub recent: Recent,
}

/// Most request ids an owner remembers per room.
const RECENT_IDS: usize = 8192;

/// Recent request ids of relayed ops: `None` received (its answer not known yet), `Some`
/// acked with that tick. A resent op is applied only when its id is not here.
#[derive(Default)]
pub struct Recent {
    ids: HashMap<(RemoteAddr, u64), Option<u64>>,
    order: VecDeque<(RemoteAddr, u64)>,
}

impl Recent {
    pub fn note(&mut self, id: (RemoteAddr, u64), tick: Option<u64>) {
        match self.ids.get_mut(&id) {
            Some(slot) => {
                if tick.is_some() {
                    *slot = tick;
                }
            }
            None => {
                if self.order.len() >= RECENT_IDS {
                    if let Some(old) = self.order.pop_front() {
                        self.ids.remove(&old);
                    }
                }
                self.order.push_back(id.clone());
                self.ids.insert(id, tick);
            }
        }
    }

    pub fn get(&self, id: &(RemoteAddr, u64)) -> Option<Option<u64>> {
        self.ids.get(id).copied()
    }
}

/// The tail of the log as loaded: consecutive deltas ending at the tick the owner started
/// from, each re-stamped with the owner's epoch (a resent delta carries the current epoch)
/// and remembered with the epoch that wrote it (a `since` must match it).
#[derive(Default)]
pub struct History {
    pub records: Vec<Rc<crate::room::DeltaRecord>>,
    pub written_in: Vec<u64>,
    /// Ops of other instances' (and our relayed) connections acked by the loaded log, by
    /// request id (connection, seq), with the tick that holds them.
    pub acked: HashMap<(RemoteAddr, u64), u64>,
    /// The first tick whose acks `acked` holds.
    pub acks_from: u64,
}

/// Outputs of an owned room held until the appends they follow are in the log.
#[derive(Default)]
pub struct Held {
    /// Appends in flight, oldest first, kept to be sent again after a transient failure.
    in_flight: VecDeque<(u64, redis::Cmd)>,
    /// Bumped when the appends in flight are sent again: older replies are then ignored.
    generation: u64,
    /// A resend is scheduled: new appends wait for it (they must follow in tick order).
    retrying: bool,
    /// Each waits for the append of its tick.
    queue: VecDeque<HeldOut>,
}

/// An output held until the append of `tick` is in the log.
struct HeldOut {
    tick: u64,
    dst: usize,
    msg: MeshMsg,
    /// The `ack` of op `seq` of `origin`: on a step-down it becomes `unavailable` (the
    /// append's fate is unknown).
    ack: Option<(Origin, u64)>,
}

impl Held {
    /// Appends are in flight (the room's tick is ahead of its log).
    pub fn is_busy(&self) -> bool {
        !self.in_flight.is_empty()
    }
}

/// The synthetic connections that stand for members of other instances in a host.
#[derive(Default)]
struct Remotes {
    next: u64,
    ids: HashMap<(RemoteAddr, RoomId), u64>,
    addrs: HashMap<u64, (RemoteAddr, RoomId)>,
}

/// The fleet side of one shard.
pub struct Fleet {
    pub config: RedisConfig,
    pub client: Rc<Client>,
    pub subscriber: Rc<Subscriber>,
    events: RefCell<Option<LocalReceiver<SubscriberEvent>>>,
    pub rooms: RefCell<HashMap<RoomId, FleetRoom>>,
    pub writer: writer::Writer,
    remotes: RefCell<Remotes>,
    /// The shard itself, for the tasks the fleet spawns.
    me: RefCell<Weak<Shard>>,
    /// Instances with members in our rooms whose liveness key was missing, and how many
    /// checks in a row.
    suspects: RefCell<HashMap<String, u32>>,
}

impl Fleet {
    /// Opens the shard's Redis connections (in the background: nothing waits for Redis).
    pub fn new(config: RedisConfig, shard: usize) -> Result<Fleet, crate::redis::UrlError> {
        let options = ClientOptions {
            client_name: Some(format!("kasagi-{}-s{shard}", config.instance_id)),
            ..ClientOptions::default()
        };
        let client = Client::new(&config.url, options.clone())?;
        let (tx, rx) = local_channel::new_unbounded();
        let subscriber = Subscriber::new(&config.url, options, move |event| {
            let _ = tx.try_send(event);
        })?;
        Ok(Fleet {
            config,
            client,
            subscriber,
            events: RefCell::new(Some(rx)),
            rooms: RefCell::new(HashMap::new()),
            writer: writer::Writer::default(),
            remotes: RefCell::new(Remotes::default()),
            me: RefCell::new(Weak::new()),
            suspects: RefCell::new(HashMap::new()),
        })
    }

    pub fn instance(&self) -> &str {
        &self.config.instance_id
    }

    fn remote_id(&self, addr: RemoteAddr, room: &RoomId) -> u64 {
        let mut remotes = self.remotes.borrow_mut();
        let key = (addr, room.clone());
        if let Some(id) = remotes.ids.get(&key) {
            return *id;
        }
        remotes.next += 1;
        let id = remotes.next;
        remotes.ids.insert(key.clone(), id);
        remotes.addrs.insert(id, key);
        id
    }

    fn remote_addr(&self, id: u64) -> Option<(RemoteAddr, RoomId)> {
        self.remotes.borrow().addrs.get(&id).cloned()
    }

    fn forget_remote(&self, id: u64) {
        let mut remotes = self.remotes.borrow_mut();
        if let Some(key) = remotes.addrs.remove(&id) {
            remotes.ids.remove(&key);
        }
    }

    /// Queues a `PUBLISH` on the room's `:out` (after everything queued before it).
    fn publish_out(&self, room: &RoomId, msg: &OutMsg) {
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(Keys::of(room).output).arg(wire::encode(msg));
        self.writer.push(cmd, writer::Job::Fire);
    }
}

/// Starts the fleet tasks of a shard: the ordered writer, the Pub/Sub event loop and the
/// lease watch.
pub fn start(shard: &Rc<Shard>) {
    let Some(fleet) = shard.fleet.as_ref() else {
        return;
    };
    *fleet.me.borrow_mut() = Rc::downgrade(shard);
    glommio::spawn_local(writer::run(shard.clone(), fleet.client.clone())).detach();
    if let Some(events) = fleet.events.borrow_mut().take() {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(event) = events.recv().await {
                shard.fleet_event(event);
            }
        })
        .detach();
    }
    glommio::spawn_local(lease::watch(shard.clone())).detach();
    if shard.id == 0 {
        glommio::spawn_local(lease::alive(shard.clone())).detach();
    }
}

impl Shard {
    pub(super) fn me(&self) -> Option<Rc<Shard>> {
        self.fleet.as_ref()?.me.borrow().upgrade()
    }

    /// The pseudo shard index that stands for other instances in a host's member counts.
    pub(super) fn remote_shard(&self) -> usize {
        self.shards
    }

    /// Routes a request for a room this shard is the owner shard of. `Some` when it is to
    /// be handled by the local host (embedded mode, owned rooms, or already routed).
    pub(super) fn fleet_route(&self, from: usize, msg: MeshMsg) -> Option<MeshMsg> {
        let Some(fleet) = self.fleet.as_ref() else {
            return Some(msg);
        };
        if from == ROUTED {
            return Some(msg);
        }
        let room = match &msg {
            MeshMsg::Join { room, .. }
            | MeshMsg::Leave { room, .. }
            | MeshMsg::Op { room, .. }
            | MeshMsg::Msg { room, .. }
            | MeshMsg::Resync { room, .. } => room.clone(),
            _ => return Some(msg),
        };
        let mut rooms = fleet.rooms.borrow_mut();
        match rooms.get_mut(&room) {
            Some(FleetRoom::Owned(_)) if !self.rooms.borrow().contains_key(&room) => {
                // The host dropped the room while we still hold its lease: load it again.
                if let MeshMsg::Join { .. } = msg {
                    rooms.insert(room.clone(), FleetRoom::Loading { queued: vec![msg] });
                    drop(rooms);
                    lease::spawn_acquire(self, room);
                    return None;
                }
                Some(msg)
            }
            Some(FleetRoom::Owned(owned)) => {
                if Instant::now() > owned.lease_until {
                    if let MeshMsg::Op { origin, seq, .. } = &msg {
                        let (origin, seq) = (*origin, *seq);
                        drop(rooms);
                        self.answer_unavailable(&room, origin, Some(seq), false);
                        return None;
                    }
                }
                Some(msg)
            }
            Some(FleetRoom::Loading { queued }) => {
                queued.push(msg);
                None
            }
            Some(FleetRoom::Relayed(_)) => {
                drop(rooms);
                self.relay_request(msg);
                None
            }
            None => match msg {
                MeshMsg::Join { .. } => {
                    rooms.insert(room.clone(), FleetRoom::Loading { queued: vec![msg] });
                    drop(rooms);
                    lease::spawn_acquire(self, room);
                    None
                }
                // Not a member anywhere: the host-less owner answers `not_joined`.
                _ => Some(msg),
            },
        }
    }

    /// Answers a request with `unavailable` (the room's owner cannot be reached).
    pub(super) fn answer_unavailable(
        &self,
        room: &RoomId,
        origin: Origin,
        seq: Option<u64>,
        join: bool,
    ) {
        let frame = encode::frame(
            &ServerMessage::Error {
                code: ErrorCode::Unavailable,
                message: "the room's owner cannot be reached; try again",
                room: Some(room.as_str()),
                seq,
            },
            origin.proto,
        );
        let msg = if join {
            MeshMsg::JoinRefused {
                room: room.clone(),
                conn: origin.conn.id,
                frame,
            }
        } else {
            MeshMsg::ToConn {
                conn: origin.conn.id,
                frame,
            }
        };
        self.send(origin.conn.shard, msg);
    }

    /// Something a host sends to a member of another instance: published on `:out`.
    pub(super) fn fleet_send_remote(&self, msg: MeshMsg) {
        self.fleet_send_remote_after(msg, None);
    }

    /// As [`Shard::fleet_send_remote`]; with `logged` `Some(tick)`, an answer addressed to
    /// one connection (a `joined` above all: it carries the state at `tick`) is published
    /// only if the log holds `tick` of this owner's history when Redis runs the publish,
    /// right behind the appends queued before it. A stale owner's answer, whose appends
    /// failed their epoch check, is dropped there: every client's copy stays a prefix of
    /// the log (a dropped answer is asked for again, see [`Shard::answer_dropped`]).
    pub(super) fn fleet_send_remote_after(&self, msg: MeshMsg, logged: Option<u64>) {
        let Some(fleet) = self.fleet.as_ref() else {
            return;
        };
        let (conn, kind, frames) = match msg {
            MeshMsg::Deliver {
                room,
                frames,
                exclude,
                flushed_at,
                ..
            } => {
                // Deltas reach other instances through the append script.
                if flushed_at.is_some() {
                    return;
                }
                let exclude = exclude
                    .filter(|c| c.shard == self.remote_shard())
                    .and_then(|c| fleet.remote_addr(c.id))
                    .map(|(addr, _)| addr);
                let frames = frames.map(|f| f.as_ref().map(wire::bytes_of));
                return fleet.publish_out(&room, &OutMsg::Deliver { frames, exclude });
            }
            MeshMsg::Joined {
                conn,
                frames,
                answers_join,
                ..
            } => {
                let kind = if answers_join {
                    ToKind::Joined
                } else {
                    ToKind::Resync
                };
                (conn, kind, frames)
            }
            MeshMsg::Left { conn, frame, .. } => (conn, ToKind::Left, vec![frame]),
            MeshMsg::JoinRefused { conn, frame, .. } => (conn, ToKind::Refused, vec![frame]),
            MeshMsg::ToConn { conn, frame } => (conn, ToKind::Reply, vec![frame]),
            _ => return,
        };
        let Some((to, room)) = fleet.remote_addr(conn) else {
            return;
        };
        let frames = frames.iter().map(wire::bytes_of).collect();
        let epoch = fleet.owned_epoch(&room).unwrap_or(0);
        let msg = OutMsg::To {
            to,
            kind,
            frames,
            epoch,
        };
        match logged {
            Some(tick) => fleet.publish_logged(&room, epoch, tick, conn, kind, &msg),
            None => fleet.publish_out(&room, &msg),
        }
    }

    fn fleet_event(&self, event: SubscriberEvent) {
        match event {
            SubscriberEvent::Message { channel, payload } => match Channel::parse(&channel) {
                Some(Channel::In(room)) => self.owner_from_relay(room, &payload),
                Some(Channel::Out(room)) => self.relay_from_owner(room, &payload),
                None => debug!("message on an unknown channel"),
            },
            SubscriberEvent::Reconnected => self.relays_repair_all(),
            SubscriberEvent::Disconnected => warn!("Redis subscriber disconnected"),
            SubscriberEvent::PatternMessage { .. } => {}
        }
    }

    /// A request published on `:in` by a relay: handled as the owner when we are.
    fn owner_from_relay(&self, room: RoomId, payload: &[u8]) {
        let Some(fleet) = self.fleet.as_ref() else {
            return;
        };
        let Some(msg) = wire::decode::<wire::InMsg>(payload) else {
            warn!(%room, "undecodable relayed request dropped");
            return;
        };
        let resent = matches!(msg.kind, wire::InKind::Resent(_));
        let proto = if msg.proto == 1 {
            crate::protocol::Subprotocol::Json
        } else {
            crate::protocol::Subprotocol::MsgPack
        };
        let is_leave = matches!(msg.kind, wire::InKind::Leave { .. });
        let from = msg.from.clone();
        let id = fleet.remote_id(msg.from, &room);
        let origin = Origin {
            conn: ConnRef {
                shard: self.remote_shard(),
                id,
            },
            proto,
        };
        let request = match msg.kind {
            wire::InKind::Join { since, epoch } => MeshMsg::Join {
                room: room.clone(),
                origin,
                member: msg.member,
                since,
                epoch,
            },
            wire::InKind::Leave { reply } => MeshMsg::Leave {
                room: room.clone(),
                origin,
                reply,
            },
            wire::InKind::Resync => MeshMsg::Resync {
                room: room.clone(),
                origin,
            },
            wire::InKind::Client(bytes) | wire::InKind::Resent(bytes) => {
                match crate::protocol::decode_client(&bytes, crate::protocol::Subprotocol::MsgPack)
                {
                    Ok(crate::protocol::ClientMessage::Op { seq, ops, .. }) => MeshMsg::Op {
                        room: room.clone(),
                        origin,
                        seq,
                        ops,
                        received: Instant::now(),
                    },
                    Ok(crate::protocol::ClientMessage::Msg { data, .. }) => MeshMsg::Msg {
                        room: room.clone(),
                        origin,
                        data,
                    },
                    _ => return,
                }
            }
        };
        let mut rooms = fleet.rooms.borrow_mut();
        match rooms.get_mut(&room) {
            Some(FleetRoom::Loading { queued }) => queued.push(request),
            Some(FleetRoom::Owned(owned)) => {
                let lapsed = Instant::now() > owned.lease_until;
                // The relay only forwards ops of its members: one unknown here was sent
                // before its re-registration with this (new) owner reached us. Dropped
                // unseen: the relay sends it again, as a repeat, once that is done.
                let registered = self
                    .rooms
                    .borrow()
                    .get(&room)
                    .is_some_and(|h| h.has_member(origin.conn));
                if !registered && matches!(request, MeshMsg::Op { .. } | MeshMsg::Msg { .. }) {
                    debug!(%room, "request of a member not registered yet dropped");
                    return;
                }
                if let MeshMsg::Op { seq, .. } = &request {
                    let key = (from, *seq);
                    match (resent, owned.recent.get(&key)) {
                        // Seen, answer still coming (or an error already sent): no repeat.
                        (true, Some(None)) => return,
                        (true, Some(Some(tick))) => {
                            drop(rooms);
                            let frame = super::encode::frame(
                                &ServerMessage::Ack {
                                    room: room.as_str(),
                                    seq: *seq,
                                    tick,
                                },
                                proto,
                            );
                            // The tick may still be on its way to the log.
                            let logged = fleet.config.durable_acks.then_some(tick);
                            return self.fleet_send_remote_after(
                                MeshMsg::ToConn { conn: id, frame },
                                logged,
                            );
                        }
                        _ if !lapsed => owned.recent.note(key, None),
                        _ => {}
                    }
                }
                drop(rooms);
                let seq = match &request {
                    MeshMsg::Op { seq, .. } => Some(*seq),
                    _ => None,
                };
                if lapsed && seq.is_some() {
                    // Not applied, and no answer: the relay sends it again to whoever
                    // owns the room next, or answers `unavailable` itself past its
                    // deadline. An answer from here could contradict the next owner's.
                    debug!(%room, "op relayed to a lapsed owner dropped");
                    return;
                }
                // Routed like a local request: a host dropped meanwhile is loaded again.
                self.handle(self.id, request);
                if is_leave {
                    fleet.forget_remote(id);
                }
            }
            // Not ours (any more): the relay finds the owner again by the lease.
            _ => {}
        }
    }

    /// Releases every lease this shard holds (clean shutdown), waiting for pending appends
    /// first, at most `limit`.
    pub async fn fleet_shutdown(&self, limit: Duration) {
        let Some(fleet) = self.fleet.as_ref() else {
            return;
        };
        let deadline = Instant::now() + limit;
        while !fleet.writer.is_idle() && Instant::now() < deadline {
            glommio::timer::Timer::new(Duration::from_millis(10)).await;
        }
        lease::release_all(self).await;
    }
}
