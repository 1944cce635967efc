//! Resume through a fleet, and Redis going away and coming back.

mod common;

use std::time::{Duration, Instant};

use common::fleet::{
    converge, free_port, instance, instance_url, join_eventually, Member, RedisServer,
};
use common::{Client, Enc, Mirror};
use serde_json::json;

/// Sends one inc and waits for its ack: one delta each.
fn one_delta(m: &mut Member) {
    m.send_inc(1);
    m.settle(Duration::from_secs(10));
}

/// A client of a relaying instance reconnects (to another instance) with `since`: a small
/// gap gives exactly the missed deltas; one past the resume window, another epoch or a
/// future tick give the full state.
#[test]
fn resume_through_a_relay_small_gap_deltas_past_the_window_snapshot() {
    let redis = RedisServer::start();
    let args = ["--resume-window", "4"];
    let a = instance(&redis, "a", &args);
    let b = instance(&redis, "b", &args);
    let c = instance(&redis, "c", &args);
    let room = "resume";
    let mut m1 = Member::join(a.addr(), Enc::Msgpack, room);
    for _ in 0..3 {
        one_delta(&mut m1);
    }
    let m2 = Member::join(b.addr(), Enc::Json, room);
    let (since, epoch) = (m2.mirror.tick, m2.mirror.epoch);
    drop(m2.client);
    for _ in 0..3 {
        one_delta(&mut m1);
    }
    // Small gap, resumed on another relaying instance: exactly the three deltas.
    let mut client = Client::connect(c.addr(), Enc::Json);
    let joined = client.join_since(room, since, Some(epoch));
    assert_eq!(joined["resumed"], true, "{joined}");
    assert!(joined.get("state").is_none());
    let mut mirror = m2.mirror.clone();
    for k in 1..=3 {
        let delta = client.next_of("delta");
        assert_eq!(delta["tick"], since + k, "{delta}");
        mirror.apply_delta(&delta).expect("applies");
    }
    client.assert_quiet("after the resumed deltas");
    assert_eq!(mirror.state, m1.mirror.state);
    println!(
        "small gap: resumed with ticks {}..={}",
        since + 1,
        since + 3
    );
    // A gap past the window (4 deltas): the full state.
    let since = mirror.tick;
    drop(client);
    for _ in 0..6 {
        one_delta(&mut m1);
    }
    let mut client = Client::connect(b.addr(), Enc::Msgpack);
    let joined = client.join_since(room, since, Some(epoch));
    assert!(joined.get("resumed").is_none(), "{joined}");
    assert_eq!(Mirror::from_joined(&joined).state, m1.mirror.state);
    // Another epoch's tick, and a tick from the future: the full state too.
    let joined = client.join_since(room, m1.mirror.tick, Some(epoch + 7));
    assert!(joined["state"].is_object(), "{joined}");
    let joined = client.join_since(room, m1.mirror.tick + 5, Some(epoch));
    assert!(joined["state"].is_object(), "{joined}");
    let joined = client.join_since(room, m1.mirror.tick, Some(epoch));
    assert_eq!(joined["resumed"], true, "{joined}");
    client.assert_quiet("resumed at the current tick");
    println!(
        "past the window, other epoch, future tick: full state at tick {}",
        m1.mirror.tick
    );
}

/// The first line of the instance's log holding every one of `words`, waited for at most
/// 5 s (the log is a file the instance writes as it goes).
fn wait_for_log_line(server: &common::Server, words: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = server.stderr();
        if let Some(line) = log.lines().find(|l| words.iter().all(|w| l.contains(w))) {
            return without_colors(line);
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {words:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `line` without its ANSI color sequences (`ESC [ … m`).
fn without_colors(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

/// Redis unreachable at start: joins get a clear `unavailable`; when Redis comes up the
/// same instance serves by itself. Redis dying during a run: ops get `unavailable` (none
/// is acked without its log entry), and once Redis is back (AOF on) the state is whole.
#[test]
fn redis_unavailable_at_start_and_during_a_run() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let a = instance_url(&url, "a", &["--relay-timeout", "300ms"]);
    let room = "outage";
    let mut client = Client::connect(a.addr(), Enc::Json);
    client.send(json!({"t": "join", "room": room}));
    let answer = client.recv();
    assert_eq!(answer["t"], "error", "{answer}");
    assert_eq!(answer["code"], "unavailable", "{answer}");
    println!("no Redis: {answer}");
    // Said at the default log level, naming the server, once (not at every attempt).
    let down = format!("127.0.0.1:{port}");
    let warning = wait_for_log_line(&a, &["WARN", "cannot connect to Redis", &down]);
    println!("no Redis, the log says: {warning}");
    let mut redis = RedisServer::start_on(port, true);
    let joined = join_eventually(&mut client, room, None);
    wait_for_log_line(&a, &["INFO", "Redis reachable again", &down]);
    let mut m = Member::adopt(client, room, &joined);
    for _ in 0..5 {
        m.send_inc(1);
    }
    m.settle(Duration::from_secs(10));
    assert_eq!(m.counter(), 5);
    redis.kill();
    m.send_inc(100);
    let deadline = Instant::now() + Duration::from_secs(10);
    while m.pending() > 0 {
        assert!(
            Instant::now() < deadline,
            "the op got no answer without Redis"
        );
        m.pump(Duration::from_millis(50));
    }
    assert_eq!(
        m.unavailable, 1,
        "an op without its log entry must not be acked"
    );
    println!(
        "Redis killed: the op got `unavailable`, the client {} removed",
        m.removed
    );
    redis.restart();
    let (tick, epoch) = (m.mirror.tick, m.mirror.epoch);
    let joined = join_eventually(&mut m.client, room, Some((tick, epoch)));
    // Resumed (the log shows our tick) or the full state: either way the acked state.
    m.absorb_joined(&joined);
    assert_eq!(
        m.counter(),
        5,
        "acked state after Redis returned: {}",
        m.mirror.state
    );
    m.send_inc(1);
    m.settle(Duration::from_secs(10));
    assert_eq!(m.counter(), 6);
    println!(
        "Redis back: served again at epoch {} tick {}",
        m.mirror.epoch, m.mirror.tick
    );
}

/// A Redis outage shorter than the lease only delays: the owner keeps the room, sends its
/// append again once Redis is back, and the op is acked (nothing stepped down).
#[test]
fn short_redis_outage_only_delays_the_ack() {
    let mut redis = RedisServer::start_with(true);
    let a = instance(&redis, "a", &["--lease-ttl", "4s"]);
    let room = "blip";
    let mut m = Member::join(a.addr(), Enc::Msgpack, room);
    m.send_inc(1);
    m.settle(Duration::from_secs(10));
    redis.kill();
    m.send_inc(7);
    assert!(
        !m.pump(Duration::from_millis(300)),
        "nothing can be acked without Redis"
    );
    redis.restart();
    m.settle(Duration::from_secs(10));
    assert_eq!(m.unavailable, 0);
    assert_eq!(m.counter(), 8);
    let log = a.stderr();
    assert!(log.contains("sending it again"), "{log}");
    assert!(!log.contains("stepping down"), "{log}");
    println!(
        "Redis down ~0.3 s: the op was acked at tick {} once it returned",
        m.mirror.tick
    );
}

/// Redis down longer than the lease with two instances: the owner stops applying ops once
/// its lease would have lapsed (nobody can take the room meanwhile), and when Redis is back
/// one owner serves both instances' clients again, on one history.
#[test]
fn long_redis_outage_with_two_instances() {
    let mut redis = RedisServer::start_with(true);
    let room = "outage2";
    let a = instance(&redis, "a", &[]);
    let b = instance(&redis, "b", &[]);
    let mut m1 = Member::join(a.addr(), Enc::Msgpack, room);
    let mut m2 = Member::join(b.addr(), Enc::Json, room);
    for _ in 0..5 {
        m1.send_inc(1);
        m2.send_inc(1);
    }
    m1.settle(Duration::from_secs(10));
    m2.settle(Duration::from_secs(10));
    redis.kill();
    // Past the lease (1 s): ops are refused, not applied.
    std::thread::sleep(Duration::from_millis(1500));
    m1.send_inc(100);
    m2.send_inc(100);
    m1.settle(Duration::from_secs(10));
    m2.settle(Duration::from_secs(10));
    assert_eq!((m1.unavailable, m2.unavailable), (1, 1));
    redis.restart();
    // Both clients get the room back by joining again where they are.
    for m in [&mut m1, &mut m2] {
        let (tick, epoch) = (m.mirror.tick, m.mirror.epoch);
        let joined = join_eventually(&mut m.client, room, Some((tick, epoch)));
        m.absorb_joined(&joined);
    }
    // Ops are refused until an owner holds the lease again (renewed or taken), then acked.
    let deadline = Instant::now() + Duration::from_secs(10);
    for m in [&mut m1, &mut m2] {
        let mut acked = 0;
        while acked < 3 {
            assert!(Instant::now() < deadline, "service never came back");
            let before = m.acked;
            m.send_inc(1);
            m.settle(Duration::from_secs(10));
            if m.acked > before {
                acked += 1;
            } else {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let top = converge(&mut [&mut m1, &mut m2]);
    assert_eq!(
        m1.counter(),
        m1.acked_sum + m2.acked_sum,
        "{}",
        m1.mirror.state
    );
    assert_eq!(m1.counter(), 16, "{}", m1.mirror.state);
    let owner = redis.command(&["GET", "kasagi:{outage2}:owner"]).as_text();
    println!(
        "after a 1.5 s Redis outage (lease 1 s): ops refused on both instances, then {owner:?} \
         owns the room at epoch {} tick {top}",
        m1.mirror.epoch
    );
}
