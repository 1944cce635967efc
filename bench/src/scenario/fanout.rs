//! `fanout` (R rooms x C clients x H Hz) and `ack` (rooms of one, plus a bare loopback TCP
//! echo measured in the same run): open-loop senders, every receiver timing every op.
//!
//! # Open loop
//!
//! Sender `g` (of `N` clients) sends its `k`-th message at `start + g * period / N + k *
//! period`, whatever happened before; the op carries that intended time. A stalled server
//! (or a blocked socket) therefore shows up as latency of every op it delayed, not as
//! fewer samples (no coordinated omission).
//!
//! # Closed loop (`ack --in-flight N`)
//!
//! To find the most acked ops a second the server sustains, each client instead keeps `N`
//! ops unacked: it sends whenever an answer frees one of its [`Credits`], as fast as the
//! server acks, until the window ends. Each op is then timed from its actual send, so its
//! latency is the server's queue at that throughput (Little's law: clients x `N` / ops
//! per second), not what an open-loop client at that rate would see.
//!
//! # Correctness checks, while measuring
//!
//! - Ticks are consecutive per client (`gaps` counts breaks; a `resync` joined restarts).
//! - Acks come in seq order for the client's requests (`ack_mismatch` otherwise); an
//!   `error` answering a seq removes it from the expected set.
//! - Every delivery is accounted for, per room: expected = (acked ops - coalesced ops) x
//!   members, where an op is *coalesced* when an earlier op of the same sender on the same
//!   key was acked with the same tick (the server's coalescing keeps only the last value
//!   of a path per delta). Each sender cycles through [`SLOTS`] keys so this stays rare.
//! - Rooms whose members got a `resync` lose the deltas dropped for it: counted as
//!   `dropped_for_resync`, a warning, not a failure.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use kasagi::protocol::RoomId;
use kasagi_shards::shard_of;

use crate::conn::{self, ConnError, Incoming, Readiness, RxStamp, Target, WsReader, WsWriter};
use crate::runner::{now_us, sleep_until, Sync};
use crate::stats::Stats;
use crate::wire::{self, Proto, ServerView, Stamp};

/// Keys each sender cycles through, so two of its ops rarely share a path in one delta.
pub const SLOTS: u64 = 8;

/// Everything the shards need to know, the same on every shard.
#[derive(Debug, Clone)]
pub struct Plan {
    pub target: Target,
    pub run_id: String,
    pub rooms: usize,
    pub room_size: usize,
    pub hz: f64,
    pub ops_per_msg: usize,
    pub op_bytes: usize,
    /// Members `0..senders_per_room` of each room send.
    pub senders_per_room: usize,
    /// Share of rooms whose members all sit on server shards other than the owner's.
    pub cross_shard: f64,
    pub server_shards: usize,
    pub bench_shards: usize,
    pub connect_concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub drain: Duration,
    /// `ack` scenario: bare TCP echo connections measured alongside (shard 0 only).
    pub echo: Option<(SocketAddr, usize)>,
    /// Have the kernel stamp what the clients receive (see `WsReader::stamp_receives`).
    pub socket_stamps: bool,
    /// Closed loop: each sender keeps this many ops unacked instead of keeping to `hz`.
    pub in_flight: Option<usize>,
}

impl Plan {
    pub fn total_clients(&self) -> usize {
        self.rooms * self.room_size
    }

    fn period_us(&self) -> f64 {
        1e6 / self.hz
    }
}

struct Client {
    room: usize,
    pending: VecDeque<(u64, u64)>,
    /// Closed loop: what the client's answers give back to its sender.
    credits: Option<Rc<Credits>>,
    last_tick: Option<u64>,
    slot_ticks: [Option<u64>; SLOTS as usize],
}

struct RoomAcc {
    id: RoomId,
    members: u64,
    acked_ops: u64,
    coalesced_ops: u64,
    observed: u64,
    resynced: bool,
}

impl RoomAcc {
    fn expected(&self) -> u64 {
        (self.acked_ops - self.coalesced_ops) * self.members
    }
}

struct ShardState {
    proto: Proto,
    ops_per_msg: u64,
    window: (u64, u64),
    clients: Vec<Client>,
    rooms: Vec<RoomAcc>,
    stats: Stats,
    stopping: bool,
}

type Shared = Rc<RefCell<ShardState>>;

/// One bench shard's part of the run.
pub async fn shard(id: usize, plan: Arc<Plan>, sync: Arc<Sync>) -> Stats {
    match shard_inner(id, &plan, &sync).await {
        Ok(stats) => stats,
        Err(stats) => {
            sync.aborted
                .store(true, std::sync::atomic::Ordering::Release);
            stats
        }
    }
}

async fn shard_inner(id: usize, plan: &Plan, sync: &Sync) -> Result<Stats, Stats> {
    let proto = plan.target.proto;
    let local_rooms: Vec<usize> = (0..plan.rooms)
        .filter(|r| r % plan.bench_shards == id)
        .collect();
    let n_local = local_rooms.len() * plan.room_size;
    let mut setup = Stats::default();

    // 1. Connect (and, with several server shards, learn each connection's shard).
    let probe = plan.server_shards > 1;
    let mut conns: Vec<(WsReader, WsWriter, usize)> = Vec::with_capacity(n_local);
    let mut next = 0;
    while next < n_local {
        let batch: Vec<_> = (next..(next + plan.connect_concurrency).min(n_local))
            .map(|i| {
                let target = plan.target.clone();
                let probe_room = probe.then(|| format!("p{}-{id}-{i}", plan.run_id));
                let nonce = ((id as u64) << 40) ^ i as u64;
                let stamps = plan.socket_stamps;
                glommio::spawn_local(async move {
                    let (mut r, mut w) = conn::connect(&target, nonce).await?;
                    if stamps {
                        r.stamp_receives()?;
                    }
                    let shard = match probe_room {
                        Some(room) => probe_shard(&mut r, &mut w, target.proto, &room).await?,
                        None => 0,
                    };
                    Ok::<_, ConnError>((r, w, shard))
                })
            })
            .collect();
        next += batch.len();
        for handle in batch {
            match handle.await {
                Ok(c) => conns.push(c),
                Err(e) => {
                    setup.add(&format!("connect_error:{}", short_error(&e)), 1);
                }
            }
        }
    }
    if conns.len() < n_local {
        return Err(setup);
    }

    // 2. Place connections into rooms and name the rooms.
    let assignment = assign(plan, &local_rooms, &conns, &mut setup);
    let rooms: Vec<RoomAcc> = assignment
        .iter()
        .map(|(name, _)| RoomAcc {
            id: wire::room_id(name),
            members: 0,
            acked_ops: 0,
            coalesced_ops: 0,
            observed: 0,
            resynced: false,
        })
        .collect();
    let mut slots: Vec<Option<(WsReader, WsWriter)>> =
        conns.into_iter().map(|(r, w, _)| Some((r, w))).collect();
    let mut members: Vec<(usize, usize, usize, WsReader, WsWriter)> = Vec::with_capacity(n_local);
    for (local_room, (_, conn_ids)) in assignment.iter().enumerate() {
        let global_room = local_rooms[local_room];
        for (k, &c) in conn_ids.iter().enumerate() {
            if let Some((r, w)) = slots[c].take() {
                members.push((local_room, global_room * plan.room_size + k, k, r, w));
            }
        }
    }

    // 3. Join, in batches.
    let state: Shared = Rc::new(RefCell::new(ShardState {
        proto,
        ops_per_msg: plan.ops_per_msg as u64,
        window: (0, 0),
        clients: Vec::with_capacity(n_local),
        rooms,
        stats: setup,
        stopping: false,
    }));
    let mut joined: Vec<(usize, usize, usize, WsReader, WsWriter)> = Vec::with_capacity(n_local);
    let mut iter = members.into_iter().peekable();
    while iter.peek().is_some() {
        let batch: Vec<_> = iter
            .by_ref()
            .take(plan.connect_concurrency)
            .map(|(room, g, k, mut r, mut w)| {
                let room_id = state.borrow().rooms[room].id.clone();
                glommio::spawn_local(async move {
                    let tick = join(&mut r, &mut w, proto, &room_id).await;
                    (room, g, k, r, w, tick)
                })
            })
            .collect();
        for handle in batch {
            let (room, g, k, r, w, tick) = handle.await;
            let mut st = state.borrow_mut();
            match tick {
                Ok(tick) => {
                    st.rooms[room].members += 1;
                    st.clients.push(Client {
                        room,
                        pending: VecDeque::new(),
                        credits: plan.in_flight.map(|n| Rc::new(Credits::new(n))),
                        last_tick: Some(tick),
                        slot_ticks: [None; SLOTS as usize],
                    });
                    joined.push((st.clients.len() - 1, g, k, r, w));
                }
                Err(e) => st.stats.add(&format!("join_error:{}", short_error(&e)), 1),
            }
        }
    }
    if joined.len() < n_local {
        let st = state.borrow();
        return Err(st.stats.clone());
    }

    // 4. Everyone everywhere joined: agree on the start.
    let Some(start) = sync
        .barrier(n_local, plan.total_clients(), Duration::from_millis(200))
        .await
    else {
        let st = state.borrow();
        return Err(st.stats.clone());
    };
    let window_from = start + plan.warmup.as_micros() as u64;
    let end = window_from + plan.duration.as_micros() as u64;
    state.borrow_mut().window = (window_from, end);

    // 5. Receivers for everyone, senders for the first members of each room.
    let pad = wire::pad_for(proto, plan.op_bytes, "12345.6");
    let mut senders = Vec::new();
    for (client, g, k, reader, writer) in joined {
        glommio::spawn_local(receive(state.clone(), client, reader)).detach();
        if k < plan.senders_per_room {
            let room_id = {
                let st = state.borrow();
                st.rooms[st.clients[client].room].id.clone()
            };
            let credits = state.borrow().clients[client].credits.clone();
            let task = send(SendPlan {
                state: state.clone(),
                credits,
                client,
                global: g,
                room: room_id,
                writer,
                start,
                end,
                phase_us: g as f64 * plan.period_us() / plan.total_clients() as f64,
                period_us: plan.period_us(),
                ops_per_msg: plan.ops_per_msg,
                pad: pad.clone(),
            });
            senders.push(glommio::spawn_local(task));
        }
    }
    if let (Some((addr, conns)), 0) = (plan.echo, id) {
        for e in 0..conns {
            let task = echo_client(
                state.clone(),
                (addr, plan.target.readiness),
                (start, end),
                e,
                conns,
                plan.period_us(),
            );
            senders.push(glommio::spawn_local(task));
        }
    }

    // 6. Run, then drain: wait for every ack and every delivery, or the drain timeout.
    for task in senders {
        task.await;
    }
    let drain_until = end.max(now_us()) + plan.drain.as_micros() as u64;
    while now_us() < drain_until && !settled(&state.borrow()) {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    let mut st = state.borrow_mut();
    st.stopping = true;
    finish_accounting(&mut st);
    Ok(std::mem::take(&mut st.stats))
}

/// Which local connections go to which room, and each room's name.
fn assign(
    plan: &Plan,
    local_rooms: &[usize],
    conns: &[(WsReader, WsWriter, usize)],
    stats: &mut Stats,
) -> Vec<(String, Vec<usize>)> {
    let c = plan.room_size;
    let base = |r: usize| format!("b{}-{r}", plan.run_id);
    if plan.server_shards <= 1 {
        return local_rooms
            .iter()
            .enumerate()
            .map(|(i, &r)| (base(r), (i * c..(i + 1) * c).collect()))
            .collect();
    }
    let mut pools: Vec<Vec<usize>> = vec![Vec::new(); plan.server_shards];
    for (i, (_, _, s)) in conns.iter().enumerate() {
        pools[(*s).min(plan.server_shards - 1)].push(i);
    }
    let mut out = Vec::with_capacity(local_rooms.len());
    for &r in local_rooms {
        let cross =
            ((r + 1) as f64 * plan.cross_shard).floor() > (r as f64 * plan.cross_shard).floor();
        // Members from the fullest pool; the owner is that shard (same-shard) or the next.
        let fullest = (0..pools.len())
            .max_by_key(|&s| pools[s].len())
            .unwrap_or(0);
        let owner = if cross {
            (fullest + 1) % plan.server_shards
        } else {
            fullest
        };
        let mut members = Vec::with_capacity(c);
        while members.len() < c {
            let from = if pools[fullest].is_empty() {
                stats.add("placement_misses", 1);
                match (0..pools.len()).find(|&s| !pools[s].is_empty()) {
                    Some(s) => s,
                    None => break,
                }
            } else {
                fullest
            };
            if let Some(conn) = pools[from].pop() {
                members.push(conn);
            }
        }
        stats.add(
            if cross {
                "rooms_cross_shard"
            } else {
                "rooms_same_shard"
            },
            1,
        );
        let name = (0u64..)
            .map(|n| format!("{}-{n}", base(r)))
            .find(|name| shard_of(name.as_bytes(), plan.server_shards) == owner)
            .unwrap_or_else(|| base(r));
        out.push((name, members));
    }
    out
}

/// Joins a throw-away room to read this connection's member id `s<shard>c<n>`.
async fn probe_shard(
    reader: &mut WsReader,
    writer: &mut WsWriter,
    proto: Proto,
    room: &str,
) -> Result<usize, ConnError> {
    let room = wire::room_id(room);
    writer
        .send_with(proto, |out| wire::encode_join(out, proto, &room))
        .await?;
    let shard = loop {
        if let Some(you) = read_joined(reader, proto, &room).await?.1 {
            break you;
        }
    };
    writer
        .send_with(proto, |out| wire::encode_leave(out, proto, &room))
        .await?;
    // The `left` answers the leave; left unread it would count as an unasked one later.
    loop {
        match reader.next_message().await? {
            Incoming::Close(code) => return Err(ConnError::Closed(code)),
            Incoming::Data(payload, _) => {
                let view = ServerView::decode(payload, proto).map_err(ConnError::Glommio)?;
                if view.t.as_ref() == "left" && view.room.as_deref() == Some(room.as_str()) {
                    return Ok(shard);
                }
            }
        }
    }
}

async fn join(
    reader: &mut WsReader,
    writer: &mut WsWriter,
    proto: Proto,
    room: &RoomId,
) -> Result<u64, ConnError> {
    writer
        .send_with(proto, |out| wire::encode_join(out, proto, room))
        .await?;
    Ok(read_joined(reader, proto, room).await?.0)
}

/// Reads until the `joined` of `room`; returns its tick and the shard in `you`.
pub async fn read_joined(
    reader: &mut WsReader,
    proto: Proto,
    room: &RoomId,
) -> Result<(u64, Option<usize>), ConnError> {
    loop {
        match reader.next_message().await? {
            Incoming::Close(code) => return Err(ConnError::Closed(code)),
            Incoming::Data(payload, _) => {
                let view = ServerView::decode(payload, proto).map_err(ConnError::Glommio)?;
                match view.t.as_ref() {
                    "joined" if view.room.as_deref() == Some(room.as_str()) => {
                        let shard = view
                            .you
                            .as_deref()
                            .and_then(|y| y.strip_prefix('s'))
                            .and_then(|y| y.split('c').next())
                            .and_then(|s| s.parse().ok());
                        return Ok((view.tick.unwrap_or(0), shard));
                    }
                    "error" => {
                        return Err(ConnError::Glommio(format!(
                            "join refused: {}",
                            view.code.as_deref().unwrap_or("?")
                        )))
                    }
                    _ => {}
                }
            }
        }
    }
}

async fn receive(state: Shared, client: usize, mut reader: WsReader) {
    loop {
        match reader.next_message().await {
            Ok(Incoming::Data(payload, rx_us)) => handle(&state, client, payload, rx_us),
            Ok(Incoming::Close(code)) => {
                let mut st = state.borrow_mut();
                let key = format!("close_{}", code.map_or("none".into(), |c| c.to_string()));
                st.stats.add(&key, 1);
                return;
            }
            Err(e) => {
                let mut st = state.borrow_mut();
                if !st.stopping {
                    st.stats.add(&format!("read_error:{}", short_error(&e)), 1);
                }
                return;
            }
        }
    }
}

/// `rx_us`: when the kernel received the message's last bytes (see [`RxStamp`]).
fn handle(state: &Shared, client: usize, payload: &[u8], rx_us: Option<RxStamp>) {
    let mut guard = state.borrow_mut();
    let st = &mut *guard;
    let view = match ServerView::decode(payload, st.proto) {
        Ok(v) => v,
        Err(_) => {
            st.stats.add("decode_errors", 1);
            return;
        }
    };
    let now = now_us();
    let (from, to) = st.window;
    let c = &mut st.clients[client];
    match view.t.as_ref() {
        "delta" => {
            let tick = view.tick.unwrap_or(0);
            if let Some(last) = c.last_tick {
                if tick != last + 1 {
                    st.stats.add("gaps", 1);
                }
            }
            c.last_tick = Some(tick);
            let ops = view.ops.as_deref().unwrap_or(&[]);
            st.rooms[c.room].observed += ops.len() as u64;
            let mut in_window = 0;
            for op in ops {
                if let Some(ts) = op.ts {
                    if ts >= from && ts < to {
                        in_window += 1;
                        st.stats.record("delivery", now.saturating_sub(ts));
                        if let Some(rx) = rx_us {
                            st.stats.record("delivery_at_socket", rx.saturating_sub(ts));
                            if let Some(sent) = op.sent {
                                st.stats.record("wire", rx.saturating_sub(sent));
                            }
                        }
                    }
                }
            }
            st.stats.add("window_deliveries", in_window);
            st.stats.add("deltas", 1);
        }
        "ack" => {
            let seq = view.seq.unwrap_or(u64::MAX);
            let answered = c.pending.pop_front();
            if let (Some(_), Some(credits)) = (answered, &c.credits) {
                credits.give();
            }
            match answered {
                Some((expected, intended)) if expected == seq => {
                    if intended >= from && intended < to {
                        st.stats.record("ack", now.saturating_sub(intended));
                    }
                    let tick = view.tick.unwrap_or(0);
                    let slot = (seq % SLOTS) as usize;
                    let room = &mut st.rooms[c.room];
                    room.acked_ops += st.ops_per_msg;
                    if c.slot_ticks[slot] == Some(tick) {
                        room.coalesced_ops += st.ops_per_msg;
                    }
                    c.slot_ticks[slot] = Some(tick);
                }
                _ => st.stats.add("ack_mismatch", 1),
            }
        }
        "error" => {
            let code = view.code.as_deref().unwrap_or("?").to_owned();
            if let (Some(seq), Some(&(front, _))) = (view.seq, c.pending.front()) {
                if seq == front {
                    c.pending.pop_front();
                    if let Some(credits) = &c.credits {
                        credits.give();
                    }
                }
            }
            st.stats.add(&format!("error_{code}"), 1);
        }
        "joined" if view.resync == Some(true) => {
            st.stats.add("resyncs", 1);
            st.rooms[c.room].resynced = true;
            c.last_tick = view.tick;
        }
        "left" => st.stats.add("left_unasked", 1),
        _ => {}
    }
}

struct SendPlan {
    state: Shared,
    /// Closed loop: an op goes out only with one of these (see [`Credits`]).
    credits: Option<Rc<Credits>>,
    client: usize,
    global: usize,
    room: RoomId,
    writer: WsWriter,
    start: u64,
    end: u64,
    phase_us: f64,
    period_us: f64,
    ops_per_msg: usize,
    pad: String,
}

async fn send(mut p: SendPlan) {
    let proto = p.state.borrow().proto;
    let keys: Vec<Vec<String>> = (0..SLOTS as usize)
        .map(|slot| {
            (0..p.ops_per_msg)
                .map(|j| format!("{}.{}", p.global, slot * p.ops_per_msg + j))
                .collect()
        })
        .collect();
    if let Some(credits) = &p.credits {
        // One timer per sender ends its run: a deadline per wait would leave an entry in
        // the poller's schedule for every op (see `epoll::sleep_until`).
        let (credits, end) = (credits.clone(), p.end);
        glommio::spawn_local(async move {
            sleep_until(end).await;
            credits.close();
        })
        .detach();
        sleep_until(p.start).await;
    }
    for k in 0u64.. {
        let intended = match &p.credits {
            None => {
                let at = p.start + (p.phase_us + k as f64 * p.period_us) as u64;
                if at >= p.end {
                    break;
                }
                sleep_until(at).await;
                at
            }
            // Closed loop: the op is timed from when it could go, which is when it goes.
            Some(credits) => {
                if !credits.take().await {
                    break;
                }
                let now = now_us();
                if now >= p.end {
                    break;
                }
                now
            }
        };
        let seq = k + 1;
        let sent = now_us();
        {
            let mut st = p.state.borrow_mut();
            // How late the generator itself is: large values mean it is the bottleneck.
            let scheduled = p.credits.is_none();
            if scheduled && intended >= st.window.0 && intended < st.window.1 {
                st.stats.record("send_lag", sent.saturating_sub(intended));
            }
            st.clients[p.client].pending.push_back((seq, intended));
            st.stats.add("sent_msgs", 1);
            st.stats.add("sent_ops", p.ops_per_msg as u64);
        }
        let stamp = Stamp {
            ts_us: intended,
            sent_us: sent,
            sender: p.global as u64,
            seq,
        };
        let slot_keys = &keys[(seq % SLOTS) as usize];
        let sent = p
            .writer
            .send_with(proto, |out| {
                wire::encode_timed_op(out, proto, &p.room, slot_keys, stamp, &p.pad)
            })
            .await;
        if let Err(e) = sent {
            p.state
                .borrow_mut()
                .stats
                .add(&format!("send_error:{}", short_error(&e)), 1);
            return;
        }
    }
}

/// A closed-loop sender's ops in flight: it takes a credit for each op it sends, and its
/// client's receiver gives one back with each answer (an `ack`, or an `error` naming the
/// op's seq). Closed when the sender's window ends, so a server that stops answering
/// cannot hold the run.
pub struct Credits(glommio::sync::Semaphore);

impl Credits {
    pub fn new(in_flight: usize) -> Credits {
        Credits(glommio::sync::Semaphore::new(in_flight as u64))
    }

    /// Waits for a credit; `false` once closed (also for a sender already waiting).
    pub async fn take(&self) -> bool {
        self.0.acquire(1).await.is_ok()
    }

    pub fn give(&self) {
        self.0.signal(1);
    }

    pub fn close(&self) {
        self.0.close();
    }
}

/// A bare TCP round trip on loopback, on the same schedule as the clients and read through
/// the same readiness: the floor an `ack` cannot beat.
async fn echo_client(
    state: Shared,
    (addr, readiness): (SocketAddr, Readiness),
    (start, end): (u64, u64),
    index: usize,
    count: usize,
    period_us: f64,
) {
    // The same socket the WebSocket clients use, so the echo's reads and writes are theirs.
    let Ok(socket) = conn::Socket::connect(addr, readiness).await else {
        state.borrow_mut().stats.add("echo_connect_error", 1);
        return;
    };
    let window = state.borrow().window;
    let message = [0x5Au8; 128];
    let mut back = [0u8; 128];
    let phase = index as f64 * period_us / count as f64;
    for k in 0u64.. {
        let intended = start + (phase + k as f64 * period_us) as u64;
        if intended >= end {
            break;
        }
        sleep_until(intended).await;
        let round_trip = match socket.send_all(&message).await {
            Ok(()) => socket.recv_exact(&mut back).await,
            Err(e) => Err(e),
        };
        if round_trip.is_err() {
            state.borrow_mut().stats.add("echo_error", 1);
            break;
        }
        if intended >= window.0 && intended < window.1 {
            state
                .borrow_mut()
                .stats
                .record("echo", now_us().saturating_sub(intended));
        }
    }
}

fn settled(st: &ShardState) -> bool {
    st.clients.iter().all(|c| c.pending.is_empty())
        && st
            .rooms
            .iter()
            .all(|r| r.resynced || r.observed >= r.expected())
}

fn finish_accounting(st: &mut ShardState) {
    let mut totals = [0u64; 6];
    for r in &st.rooms {
        let expected = r.expected();
        totals[0] += expected;
        totals[1] += r.observed;
        totals[4] += r.coalesced_ops;
        if r.resynced {
            totals[5] += expected.saturating_sub(r.observed);
        } else {
            totals[2] += expected.saturating_sub(r.observed);
            totals[3] += r.observed.saturating_sub(expected);
        }
    }
    let unacked: u64 = st.clients.iter().map(|c| c.pending.len() as u64).sum();
    let names = [
        "expected_deliveries",
        "deliveries",
        "missing_deliveries",
        "extra_deliveries",
        "coalesced_ops",
        "dropped_for_resync",
    ];
    for (name, v) in names.iter().zip(totals) {
        st.stats.add(name, v);
    }
    st.stats.add("unacked_msgs", unacked);
    st.stats.add("gaps", 0);
    st.stats.add("resyncs", 0);
}

pub fn short_error(e: &ConnError) -> String {
    let s = e.to_string();
    let s: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(40)
        .collect();
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A closed-loop sender gets as many ops in flight as it has credits and one more per
    /// answer; closing the credits releases a sender that waits for an answer.
    #[test]
    fn credits_bound_the_ops_in_flight_and_closing_releases_a_waiting_sender() {
        let handle = glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let credits = Rc::new(Credits::new(2));
                assert!(credits.take().await);
                assert!(credits.take().await);
                // Both in flight: a third take waits until an answer gives one back.
                let waiting = glommio::spawn_local({
                    let credits = credits.clone();
                    async move { credits.take().await }
                });
                glommio::timer::sleep(Duration::from_millis(2)).await;
                credits.give();
                assert!(waiting.await);
                // All three in flight again, none answered: closing ends the wait.
                let waiting = glommio::spawn_local({
                    let credits = credits.clone();
                    async move { credits.take().await }
                });
                glommio::timer::sleep(Duration::from_millis(2)).await;
                credits.close();
                assert!(!waiting.await);
                credits.give();
                assert!(!credits.take().await);
            })
            .expect("an executor");
        handle.join().expect("the test task");
    }
}
