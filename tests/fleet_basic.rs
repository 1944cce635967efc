//! Several instances on one Redis: one owner per room, relays, convergence, cold start.

mod common;

use std::time::Duration;

use common::fleet::{
    converge, instance, instance_url, relay_url, relay_user, Member, RedisServer, Resp,
};
use common::Enc;
use rand::{Rng, SeedableRng};

/// Clients of one room spread over three instances converge under concurrent ops: same
/// state, gapless ticks (checked on every delta), the counter equals the sum of acked incs.
#[test]
fn clients_on_three_instances_converge() {
    let redis = RedisServer::start();
    let servers: Vec<_> = (1..=3)
        .map(|i| instance(&redis, &format!("i{i}"), &["--shards", "2"]))
        .collect();
    let room = "converge";
    // Two clients per instance: with two shards each, most land on a shard that is not
    // the room's owner shard (the mesh inside, Redis between instances).
    let mut members: Vec<Member> = (0..6)
        .map(|i| {
            let enc = if i % 2 == 0 { Enc::Msgpack } else { Enc::Json };
            Member::join(servers[i % 3].addr(), enc, room)
        })
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _round in 0..40 {
        for m in members.iter_mut() {
            if rng.gen_bool(0.7) {
                m.send_inc(rng.gen_range(1..5));
            }
        }
        for m in members.iter_mut() {
            while m.pump(Duration::from_millis(1)) {}
        }
    }
    for m in members.iter_mut() {
        m.settle(Duration::from_secs(10));
    }
    let total: i64 = members.iter().map(|m| m.acked_sum).sum();
    let top = members.iter().map(|m| m.mirror.tick).max().unwrap_or(0);
    for m in members.iter_mut() {
        m.reach(top);
    }
    let first = members[0].mirror.state.clone();
    for m in &members {
        assert_eq!(m.mirror.state, first, "{} diverged", m.client.you());
        assert_eq!(m.unavailable, 0);
    }
    assert_eq!(members[0].counter(), total);
    println!(
        "3 instances, 6 clients: {} acked ops, counter {total}, tick {top}",
        members.iter().map(|m| m.acked).sum::<u64>()
    );
    // The owner is one of the instances and holds the lease.
    let owner = redis.command(&["GET", "kasagi:{converge}:owner"]);
    assert!(
        owner.as_text().is_some_and(|o| o.starts_with('i')),
        "{owner:?}"
    );
}

/// The whole fleet and Redis (AOF on) restart: a `join` gets the last acked state back.
#[test]
fn state_survives_a_restart_of_the_whole_fleet() {
    let mut redis = RedisServer::start_with(true);
    let room = "durable";
    let acked = {
        let a = instance(&redis, "a1", &[]);
        let b = instance(&redis, "b1", &[]);
        let mut ma = Member::join(a.addr(), Enc::Msgpack, room);
        let mut mb = Member::join(b.addr(), Enc::Json, room);
        for i in 0..20 {
            ma.send_inc(1);
            if i % 2 == 0 {
                mb.send_inc(10);
            }
        }
        ma.settle(Duration::from_secs(10));
        mb.settle(Duration::from_secs(10));
        ma.acked_sum + mb.acked_sum
    };
    assert_eq!(acked, 20 + 100);
    redis.restart();
    let c = instance(&redis, "c1", &[]);
    let m = Member::join(c.addr(), Enc::Msgpack, room);
    assert_eq!(
        m.counter(),
        acked,
        "state after restart: {}",
        m.mirror.state
    );
    println!(
        "after a restart of Redis and every instance: counter {} at tick {} epoch {}",
        m.counter(),
        m.mirror.tick,
        m.mirror.epoch
    );
}

/// With `--durable-acks false` deltas and acks go out before the append: clients still
/// converge, and the log still gets every delta.
#[test]
fn without_durable_acks_clients_converge_and_the_log_is_complete() {
    let redis = RedisServer::start();
    let args = ["--durable-acks", "false"];
    let a = instance(&redis, "a", &args);
    let b = instance(&redis, "b", &args);
    let room = "fast";
    let mut m1 = Member::join(a.addr(), Enc::Msgpack, room);
    let mut m2 = Member::join(b.addr(), Enc::Json, room);
    for _ in 0..30 {
        m1.send_inc(1);
        m2.send_inc(2);
        while m1.pump(Duration::from_millis(1)) {}
        while m2.pump(Duration::from_millis(1)) {}
    }
    m1.settle(Duration::from_secs(10));
    m2.settle(Duration::from_secs(10));
    let top = converge(&mut [&mut m1, &mut m2]);
    assert_eq!(m1.counter(), 90);
    let len = redis.command(&["XLEN", "kasagi:{fast}:log"]);
    assert_eq!(
        len,
        common::fleet::Resp::Int(top as i64),
        "one log entry per tick"
    );
}

/// Two rooms owned by different instances, each instance owner of one and relay of the
/// other, clients in both: both rooms converge, and the owners are where the first joins
/// were.
#[test]
fn two_rooms_owned_by_different_instances() {
    let redis = RedisServer::start();
    let a = instance(&redis, "a", &[]);
    let b = instance(&redis, "b", &[]);
    let mut ra = vec![Member::join(a.addr(), Enc::Msgpack, "north")];
    let mut rb = vec![Member::join(b.addr(), Enc::Json, "south")];
    ra.push(Member::join(b.addr(), Enc::Json, "north"));
    rb.push(Member::join(a.addr(), Enc::Msgpack, "south"));
    for i in 0..30 {
        for m in ra.iter_mut().chain(rb.iter_mut()) {
            m.send_inc(1 + i % 3);
            while m.pump(Duration::from_millis(1)) {}
        }
    }
    for room in [&mut ra, &mut rb] {
        for m in room.iter_mut() {
            m.settle(Duration::from_secs(10));
        }
        let top = room.iter().map(|m| m.mirror.tick).max().unwrap_or(0);
        for m in room.iter_mut() {
            m.reach(top);
        }
        assert_eq!(room[0].mirror.state, room[1].mirror.state);
        assert_eq!(room[0].counter(), room[0].acked_sum + room[1].acked_sum);
    }
    let owner = |room: &str| {
        redis
            .command(&["GET", &format!("kasagi:{{{room}}}:owner")])
            .as_text()
    };
    assert_eq!(owner("north").as_deref(), Some("a"));
    assert_eq!(owner("south").as_deref(), Some("b"));
}

/// Bad fleet flags are refused at start with a message naming the flag.
#[test]
fn bad_fleet_flags_are_refused_at_start() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kasagi"))
            .arg("serve")
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .output()
            .expect("run kasagi");
        assert!(!out.status.success(), "{args:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(run(&["--redis", "http://x"]).contains("--redis"));
    let url = "redis://127.0.0.1:1";
    assert!(run(&["--redis", url, "--instance-id", "a b"]).contains("--instance-id"));
    assert!(run(&["--redis", url, "--lease-ttl", "10ms"]).contains("--lease-ttl"));
}

/// Ops of 32 KiB each that [`flood_a_slow_relay_member`] writes.
const FLOOD_OPS: u64 = 200;

/// A client of `b` that has joined `room` and read nothing since, the writer on `a` (kept
/// connected), and the tick of the last of the flood's acked ops.
struct Flooded {
    slow: common::Client,
    _writer: common::Client,
    mirror: common::Mirror,
    last_tick: u64,
}

/// Joins `room` on `a` (the owner: it writes) and, with a small receive buffer, on `b` (a
/// relay), runs `before_flood`, then writes [`FLOOD_OPS`] acked ops of 32 KiB on `a`, far
/// more than `b` may queue for a client that does not read.
fn flood_a_slow_relay_member(
    a: &common::Server,
    b: &common::Server,
    room: &str,
    before_flood: impl FnOnce(),
) -> Flooded {
    let mut writer = common::Client::connect(a.addr(), Enc::Msgpack);
    writer.join(room);
    let (mut slow, _) = common::Client::connect_stream(
        common::small_buffer_stream(b.addr()),
        b.addr(),
        "/ws",
        &[common::MSGPACK],
        &[],
    )
    .expect("upgrade");
    let mirror = common::Mirror::from_joined(&slow.join(room));
    before_flood();
    let mut last_tick = 0;
    for seq in 1..=FLOOD_OPS {
        let blob = char::from(b'a' + (seq % 26) as u8)
            .to_string()
            .repeat(32 * 1024);
        let (_, ack) = writer.op_acked(
            room,
            seq,
            serde_json::json!([["set", ["blob"], blob], ["set", ["seq"], seq]]),
        );
        last_tick = ack["tick"].as_u64().expect("tick");
    }
    Flooded {
        slow,
        _writer: writer,
        mirror,
        last_tick,
    }
}

/// A slow client of a relaying instance: its queued deltas are dropped, it is resynced
/// (the snapshot asked from the owner through Redis) and converges.
#[test]
fn slow_consumer_on_a_relaying_instance_is_resynced() {
    let redis = RedisServer::start();
    let limits = [
        "--outbound-queue-bytes",
        "65536",
        "--rate-limit",
        "100000",
        "--rate-burst",
        "100000",
    ];
    let a = instance(&redis, "a", &limits);
    let b = instance(&redis, "b", &limits);
    let Flooded {
        mut slow,
        mut mirror,
        last_tick,
        ..
    } = flood_a_slow_relay_member(&a, &b, "flood", || {});
    let mut resyncs = 0;
    while resyncs == 0 || mirror.tick < last_tick {
        let message = slow.recv();
        match message["t"].as_str() {
            Some("delta") => mirror
                .apply_delta(&message)
                .unwrap_or_else(|e| panic!("after {resyncs} resyncs: {e}")),
            Some("joined") => {
                assert_eq!(message["resync"], true, "{message}");
                mirror.reset(&message);
                resyncs += 1;
            }
            Some("presence") => {}
            _ => panic!("the slow client got {message}"),
        }
    }
    assert_eq!(mirror.state["seq"], FLOOD_OPS);
    println!("slow client on the relay: {resyncs} resync(s), converged at tick {last_tick}");
}

/// A slow consumer's snapshot request that Redis refuses is asked again. The relaying
/// instance logs in as its own Redis user, whose `PUBLISH` is taken away before the flood
/// and given back only after the client has drained (its `pong` comes after the drain), so
/// the first request surely fails; the client still converges, through a later request,
/// instead of dropping deltas forever.
#[test]
fn a_refused_resync_request_is_asked_again() {
    let redis = RedisServer::start();
    relay_user(&redis, &["on", ">relay-pw", "~*", "&*", "+@all"]);
    let limits = [
        "--outbound-queue-bytes",
        "65536",
        "--rate-limit",
        "100000",
        "--rate-burst",
        "100000",
        "--relay-timeout",
        "300ms",
    ];
    let a = instance(&redis, "a", &limits);
    let b_url = relay_url(&redis);
    let b = instance_url(&b_url, "b", &limits);
    // Once `slow` has joined, `b` relays deltas (subscribed) but cannot publish a snapshot
    // request.
    let Flooded {
        mut slow,
        mut mirror,
        last_tick,
        ..
    } = flood_a_slow_relay_member(&a, &b, "flood-refused", || {
        relay_user(&redis, &["-publish"])
    });
    // Answered after everything queued before it: once it is here, the relay has drained
    // and made its (refused) request.
    slow.send(serde_json::json!({"t": "ping", "id": "drained"}));
    let mut publish_back = false;
    let mut resyncs = 0;
    while resyncs == 0 || mirror.tick < last_tick {
        let message = slow.recv();
        match message["t"].as_str() {
            Some("delta") => mirror
                .apply_delta(&message)
                .unwrap_or_else(|e| panic!("after {resyncs} resyncs: {e}")),
            Some("pong") => {
                assert_eq!(message["id"], "drained");
                relay_user(&redis, &["+publish"]);
                publish_back = true;
            }
            Some("joined") => {
                assert_eq!(message["resync"], true, "{message}");
                assert!(publish_back, "a snapshot without a request: {message}");
                mirror.reset(&message);
                resyncs += 1;
            }
            Some("presence") => {}
            _ => panic!("the slow client got {message}"),
        }
    }
    assert_eq!(mirror.state["seq"], FLOOD_OPS);
    // Redis saw the refused request: the path under test was taken.
    fn words(reply: &Resp, out: &mut Vec<String>) {
        match reply {
            Resp::Array(Some(items)) => items.iter().for_each(|i| words(i, out)),
            other => out.extend(other.as_text()),
        }
    }
    let mut log = Vec::new();
    words(&redis.command(&["ACL", "LOG"]), &mut log);
    assert!(
        log.windows(2)
            .any(|w| w[0] == "object" && w[1] == "publish")
            && log
                .windows(2)
                .any(|w| w[0] == "username" && w[1] == "relay"),
        "no refused PUBLISH in the ACL log: {log:?}"
    );
    println!(
        "slow client whose first resync request was refused: {resyncs} resync(s), tick {last_tick}"
    );
}

/// The owner's appends show up as Redis round trips in `/metrics` (published once a second).
#[test]
fn redis_round_trips_are_in_the_metrics() {
    let redis = RedisServer::start();
    let a = instance(&redis, "a", &[]);
    let mut m = Member::join(a.addr(), Enc::Msgpack, "timed");
    for i in 0..5 {
        m.send_inc(1 + i);
        while m.pump(Duration::from_millis(1)) {}
    }
    m.settle(Duration::from_secs(10));
    let count = || {
        let (status, _, body) = common::http_get(a.addr(), "/metrics");
        assert_eq!(status, 200);
        body.lines()
            .find_map(|l| l.strip_prefix("kasagi_redis_round_trip_seconds_count "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Polling a value that is republished each second, not ordering events.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while count() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no Redis round trip recorded"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
