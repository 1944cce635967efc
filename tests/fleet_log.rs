//! The log and snapshots in Redis, and a clean hand-off on shutdown.

mod common;

use std::time::{Duration, Instant};

use common::fleet::{instance, Member, RedisServer, Resp};
use common::{Client, Enc};
use serde_json::json;

fn field(resp: &Resp, name: &str) -> Option<String> {
    let Resp::Array(Some(items)) = resp else {
        return None;
    };
    items
        .chunks(2)
        .find(|kv| kv[0].as_text().as_deref() == Some(name))
        .and_then(|kv| kv[1].as_text())
}

/// Snapshots every N ticks, the log trimmed behind the newest one but for the resume
/// window, and a cold start from snapshot + log gives the exact state.
#[test]
fn snapshots_trim_the_log_and_cold_start_replays_it() {
    let redis = RedisServer::start();
    let room = "snaps";
    let key = |k: &str| format!("kasagi:{{{room}}}:{k}");
    let counter = {
        let a = instance(
            &redis,
            "a",
            &[
                "--snapshot-every-ticks",
                "10",
                "--snapshot-every",
                "1h",
                "--resume-window",
                "5",
            ],
        );
        let mut m = Member::join(a.addr(), Enc::Msgpack, room);
        for _ in 0..37 {
            m.send_inc(1);
            m.settle(Duration::from_secs(10));
        }
        assert_eq!(m.mirror.tick, 37);
        m.counter()
    };
    let snap = redis.command(&["HGETALL", &key("snap")]);
    let snap_tick: u64 = field(&snap, "tick")
        .and_then(|t| t.parse().ok())
        .expect("tick");
    assert_eq!(snap_tick, 30, "snapshots at 10, 20, 30");
    assert_eq!(field(&snap, "epoch").as_deref(), Some("1"));
    let Resp::Int(len) = redis.command(&["XLEN", &key("log")]) else {
        panic!("XLEN");
    };
    // Kept: ticks 25..=37 (the window behind the snapshot, and everything after it).
    assert_eq!(len, 13, "log length");
    let b = instance(&redis, "b", &[]);
    let m = Member::join(b.addr(), Enc::Json, room);
    assert_eq!(m.counter(), counter);
    assert_eq!(m.mirror.tick, 37, "continues at the last logged tick");
    assert_eq!(m.mirror.epoch, 2);
    println!("snapshot at tick {snap_tick}, log of {len} entries; reloaded at tick 37, epoch 2");

    // Resume against the trimmed log, on the new owner (whose ring holds nothing of epoch
    // 1): a tick the log still holds gets exactly the deltas after it, from the log; a
    // tick trimmed away gets the full state, never a partial replay.
    let mut client = Client::connect(b.addr(), Enc::Msgpack);
    let joined = client.join_since(room, 32, Some(1));
    assert_eq!(joined["resumed"], true, "{joined}");
    assert_eq!(joined["epoch"], 2, "{joined}");
    for tick in 33..=37 {
        let delta = client.next_of("delta");
        assert_eq!(delta["tick"], tick, "{delta}");
        assert_eq!(delta["epoch"], 2, "{delta}");
        let ops = delta["ops"].as_array().expect("ops");
        assert!(
            ops.contains(&json!(["set", ["counter"], tick])),
            "one inc per tick: {delta}"
        );
    }
    client.assert_quiet("after the deltas from the log");
    let joined = client.join_since(room, 20, Some(1));
    assert!(joined.get("resumed").is_none(), "{joined}");
    assert_eq!(joined["state"]["counter"], counter, "{joined}");
    println!("resume from the log: since 32 -> deltas 33..=37; since 20 (trimmed) -> full state");
}

/// SIGTERM releases the leases: a relay with members takes the room over at once, not
/// after the lease ttl.
#[test]
fn shutdown_releases_the_lease() {
    let redis = RedisServer::start();
    let room = "handoff";
    let mut a = instance(&redis, "a", &["--lease-ttl", "5s"]);
    let b = instance(&redis, "b", &["--lease-ttl", "5s"]);
    let mut m1 = Member::join(a.addr(), Enc::Msgpack, room);
    let mut m2 = Member::join(b.addr(), Enc::Msgpack, room);
    m1.send_inc(1);
    m1.settle(Duration::from_secs(10));
    let started = Instant::now();
    a.sigterm();
    assert_eq!(m1.client.expect_close(), Some(1001));
    a.wait_exit(Duration::from_secs(10)).expect("a exits");
    let owner = |r: &RedisServer| r.command(&["GET", &format!("kasagi:{{{room}}}:owner")]);
    while owner(&redis).as_text().as_deref() != Some("b") {
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "no hand-off before the ttl"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let handed = started.elapsed();
    m1.reconnect(b.addr());
    m2.send_inc(1);
    m2.settle(Duration::from_secs(10));
    m2.reach(m2.mirror.tick);
    assert_eq!(m2.counter(), 2);
    println!("clean shutdown: b owns the room after {handed:?} (lease ttl 5s)");
}

/// A room that went quiet gets its snapshot on time too (`--snapshot-every`).
#[test]
fn a_quiet_room_is_snapshotted_on_time() {
    let redis = RedisServer::start();
    let room = "quiet";
    let a = instance(
        &redis,
        "a",
        &[
            "--snapshot-every",
            "500ms",
            "--snapshot-every-ticks",
            "1000",
        ],
    );
    let mut m = Member::join(a.addr(), Enc::Msgpack, room);
    for _ in 0..3 {
        m.send_inc(1);
        m.settle(Duration::from_secs(10));
    }
    let started = Instant::now();
    let tick = || {
        let snap = redis.command(&["HGETALL", &format!("kasagi:{{{room}}}:snap")]);
        field(&snap, "tick").and_then(|t| t.parse::<u64>().ok())
    };
    while tick() != Some(m.mirror.tick) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no snapshot of the quiet room"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "quiet room snapshotted at tick {} after {:?}",
        m.mirror.tick,
        started.elapsed()
    );
}
