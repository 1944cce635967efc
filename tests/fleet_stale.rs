//! A stale owner (its epoch taken while it still serves the room): whatever it sends after
//! an append the log refuses never reaches a client, so every client's copy stays a prefix
//! of the log.

mod common;

use std::time::{Duration, Instant};

use common::fleet::{
    converge, instance, log_epochs, owner_of, Member, RedisServer, Resp, RespConn,
};
use common::{http_get, metric_samples, Client, Enc, Server};
use serde_json::{json, Value};

/// The owner's epoch is taken (by hand, as another instance's take-over would) while it
/// still serves the room. A client on another instance sends an `op` and a `join` in one
/// write: the owner applies the op and answers the join with a state holding it while the
/// op's append is in flight; the append then fails its epoch check and the owner steps
/// down. That `joined` holds a tick the log never gets, so it must not reach the client:
/// every `joined` the client gets shows a tick the log holds, written in its epoch or
/// before it, and the client ends with everyone's state.
#[test]
fn a_stale_owners_join_answer_to_another_instance_waits_for_the_log() {
    let redis = RedisServer::start();
    let a = instance(&redis, "a", &[]);
    let b = instance(&redis, "b", &[]);
    let room = "stale-joined";
    let key = |k: &str| format!("kasagi:{{{room}}}:{k}");
    let mut m1 = Member::join(a.addr(), Enc::Msgpack, room);
    assert_eq!(owner_of(&redis, room).as_deref(), Some("a"));
    let mut client = Client::connect(b.addr(), Enc::Json);
    let first = client.join(room);
    assert_eq!((&first["tick"], &first["epoch"]), (&json!(0), &json!(1)));
    // The lease stays a's (its renewals still succeed): only the append can tell.
    redis.command(&["INCR", &key("epoch")]);
    client.send_batch([
        json!({"t": "op", "room": room, "seq": 1, "ops": [["inc", ["counter"], 1]]}),
        json!({"t": "join", "room": room}),
    ]);
    // Until the op is answered and a newer owner (epoch 3 on) has sent its `joined`.
    let mut joineds: Vec<Value> = Vec::new();
    let mut answer = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while answer.is_none() || !joineds.iter().any(|j| j["epoch"].as_u64() >= Some(3)) {
        assert!(
            Instant::now() < deadline,
            "no answer or no joined of a new owner: {answer:?} {joineds:?}"
        );
        let Some(value) = client.try_recv(Duration::from_millis(100)) else {
            continue;
        };
        match value["t"].as_str() {
            Some("joined") => joineds.push(value),
            Some("ack" | "error") if value["seq"] == 1 => answer = Some(value),
            _ => {}
        }
    }
    let log = log_epochs(&redis, room);
    for joined in &joineds {
        let tick = joined["tick"].as_u64().expect("tick");
        let epoch = joined["epoch"].as_u64().expect("epoch");
        if tick == 0 {
            continue;
        }
        let written = log.iter().find(|(t, _)| *t == tick).map(|(_, e)| *e);
        assert!(
            written.is_some_and(|e| e <= epoch),
            "a joined at tick {tick} of epoch {epoch}, but the log has {written:?} there \
             (log {log:?}): {joined}"
        );
    }
    assert!(
        a.stderr()
            .contains("another instance owns the room (epoch changed)"),
        "the append was not refused"
    );
    // The client's copy from here on: a fresh snapshot, then deltas.
    let joined = client.join(room);
    let mut m2 = Member::adopt(client, room, &joined);
    m1.settle(Duration::from_secs(10));
    let top = converge(&mut [&mut m1, &mut m2]);
    let acked = answer.as_ref().is_some_and(|a| a["t"] == "ack");
    if acked {
        assert_eq!(m1.counter(), 1, "the acked op applied once");
    }
    println!(
        "joined answers {:?}; op answered {}; log {log:?}; converged at tick {top}",
        joineds
            .iter()
            .map(|j| (j["tick"].clone(), j["epoch"].clone()))
            .collect::<Vec<_>>(),
        answer.map_or_else(String::new, |a| a.to_string()),
    );
}

/// KEYS epoch, log; ARGV busy ms. Takes the room's epoch as a take-over would (`INCR`),
/// then keeps Redis busy: every command sent meanwhile runs after the epoch changed.
/// Returns the new epoch and the log's last tick when the epoch changed.
const TAKE_EPOCH_AND_HOLD: &str = r"
local epoch = redis.call('INCR', KEYS[1])
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local tick = 0
if #last > 0 then tick = tonumber(string.match(last[1][1], '^(%d+)-')) end
local now = redis.call('TIME')
local stop = tonumber(now[1]) * 1000000 + tonumber(now[2]) + tonumber(ARGV[1]) * 1000
repeat now = redis.call('TIME') until tonumber(now[1]) * 1000000 + tonumber(now[2]) >= stop
return {epoch, tick}
";

/// The sum over shards of a counter on an instance's `/metrics`.
fn metric(server: &Server, name: &str) -> f64 {
    let (_, _, body) = http_get(server.addr(), "/metrics");
    metric_samples(&body, name).iter().sum()
}

/// The owner is paused (SIGSTOP) with an append in flight, after another instance's
/// take-over took the room's epoch; its clients keep sending ops around the pause
/// (durable acks, the default). After SIGCONT its append is refused on the epoch check and
/// it steps down: none of those ops is acked by it unless it is in the log, the log is one
/// history, and every client converges.
///
/// What makes "in flight at the pause" certain, every run: the test first starts a script
/// in Redis that takes the epoch (`INCR`; the lease stays a's, so its renewals still
/// succeed and only an append can tell) and then keeps Redis busy for a while. a's client
/// then sends ops; once a's `kasagi_deltas_total` shows their delta made, its append is
/// queued in a or in Redis behind the script, and a is stopped. The script's reply tells
/// the log's last tick when the epoch changed: the tick before those ops. a's append then
/// runs and is refused; the refusal waits in a's socket (a stopped for less than Redis
/// request timeout, so it is read, not timed out) until SIGCONT. a logs "another instance
/// owns the room (epoch changed)", which only an append refused on the epoch check prints.
#[test]
fn owner_paused_with_an_append_in_flight_steps_down_on_its_refusal() {
    let redis = RedisServer::start();
    let a = instance(&redis, "a", &[]);
    let b = instance(&redis, "b", &[]);
    let room = "paused-append";
    let key = |k: &str| format!("kasagi:{{{room}}}:{k}");
    let mut m1 = Member::join(a.addr(), Enc::Msgpack, room);
    let mut m2 = Member::join(b.addr(), Enc::Json, room);
    assert_eq!(owner_of(&redis, room).as_deref(), Some("a"));
    for _ in 0..5 {
        m1.send_inc(1);
        m2.send_inc(1);
    }
    m1.settle(Duration::from_secs(10));
    m2.settle(Duration::from_secs(10));
    let logged = converge(&mut [&mut m1, &mut m2]);
    let deltas = metric(&a, "kasagi_deltas_total");
    assert_eq!(metric(&a, "kasagi_fleet_step_downs_total"), 0.0);

    let mut busy = RespConn::connect(redis.port).expect("connect to redis-server");
    // Redis accepts a new connection in one turn of its event loop and reads it in a later
    // one: a's append could run in between, before the script. Once a reply came back,
    // the script is read as soon as it arrives, ahead of the ops' append sent after it.
    assert_eq!(
        busy.command(&["PING"]).expect("PING"),
        Resp::Simple("PONG".into())
    );
    let (epoch_key, log_key) = (key("epoch"), key("log"));
    busy.send(&[
        "EVAL",
        TAKE_EPOCH_AND_HOLD,
        "2",
        &epoch_key,
        &log_key,
        "300",
    ])
    .expect("send the script");
    for _ in 0..3 {
        m1.send_inc(1);
    }
    m2.send_inc(10);
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&a, "kasagi_deltas_total") <= deltas {
        assert!(Instant::now() < deadline, "a never made the ops' delta");
        std::thread::sleep(Duration::from_millis(5));
    }
    a.signal("STOP");
    let reply = busy.reply().expect("the script's reply");
    assert_eq!(
        reply,
        Resp::Array(Some(vec![Resp::Int(2), Resp::Int(logged as i64)])),
        "the epoch taken before the ops' append ran"
    );
    // Sent while a is stopped: handled after SIGCONT, by a (refused by its append or its
    // lease) or, once it stepped down, by whoever owns the room next.
    m1.send_inc(100);
    a.signal("CONT");

    let deadline = Instant::now() + Duration::from_secs(10);
    while !a
        .stderr()
        .contains("another instance owns the room (epoch changed)")
    {
        assert!(Instant::now() < deadline, "a's append was not refused");
        std::thread::sleep(Duration::from_millis(20));
    }
    let step_downs = metric(&a, "kasagi_fleet_step_downs_total");
    assert!(step_downs >= 1.0, "step-downs on a: {step_downs}");
    m1.settle(Duration::from_secs(15));
    m2.settle(Duration::from_secs(15));
    assert!(
        m1.unavailable >= 1,
        "the ops of the refused append must not be acked"
    );
    // Each member sees the room again under the new owner, then writes through it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while m1.mirror.epoch < 3 || m2.mirror.epoch < 3 {
        assert!(
            Instant::now() < deadline,
            "no new owner reached both members"
        );
        m1.pump(Duration::from_millis(20));
        m2.pump(Duration::from_millis(20));
    }
    m1.send_inc(1);
    m2.send_inc(1);
    m1.settle(Duration::from_secs(10));
    m2.settle(Duration::from_secs(10));
    let top = converge(&mut [&mut m1, &mut m2]);
    assert_eq!(
        m1.counter(),
        m1.acked_sum + m2.acked_sum,
        "every acked op applied once, no other (unavailable: {} + {})",
        m1.unknown(),
        m2.unknown()
    );
    let epochs = log_epochs(&redis, room);
    assert!(
        epochs
            .windows(2)
            .all(|w| w[0].1 <= w[1].1 && w[1].0 == w[0].0 + 1),
        "the log is one history: {epochs:?}"
    );
    assert!(
        epochs.iter().all(|&(tick, epoch)| if tick <= logged {
            epoch == 1
        } else {
            epoch >= 3
        }),
        "nothing of the stale owner logged after the epoch was taken: {epochs:?}"
    );
    println!(
        "epoch taken at tick {logged}; a stepped down ({step_downs} step-down(s)), \
         {} op(s) of a's client unavailable, {} of b's; new epoch {}; log {:?}..{:?}; \
         converged at tick {top}, counter {}",
        m1.unavailable,
        m2.unavailable,
        m1.mirror.epoch,
        epochs.first(),
        epochs.last(),
        m1.counter()
    );
}
