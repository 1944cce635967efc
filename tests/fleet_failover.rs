//! Owners dying, pausing and losing their subscriber: nothing acked is lost, clients see
//! gapless ticks, and one history wins.

mod common;

use std::time::{Duration, Instant};

use common::fleet::{
    converge, instance, instance_url, join_eventually, log_epochs, owner_of, relay_url, relay_user,
    Member, RedisServer, Resp, RespConn,
};
use common::Enc;

/// Kills an instance's pub/sub connections (found in `CLIENT LIST` by the client name);
/// returns how many.
fn kill_subscribers(redis: &RedisServer, instance: &str) -> usize {
    let list = redis
        .command(&["CLIENT", "LIST"])
        .as_text()
        .unwrap_or_default();
    list.lines()
        .filter(|line| line.contains(&format!("name=kasagi-{instance}-s")))
        .filter(|line| {
            line.split(' ')
                .any(|f| f.starts_with("flags=") && f.contains('P'))
        })
        .filter_map(|line| line.split(' ').find_map(|f| f.strip_prefix("id=")))
        .filter(|id| redis.command(&["CLIENT", "KILL", "ID", id]) == Resp::Int(1))
        .count()
}

/// Whether a pub/sub connection of `instance` is up with at least one subscription.
fn subscribed(redis: &RedisServer, instance: &str) -> bool {
    let list = redis
        .command(&["CLIENT", "LIST"])
        .as_text()
        .unwrap_or_default();
    list.lines()
        .filter(|line| line.contains(&format!("name=kasagi-{instance}-s")))
        .any(|line| {
            line.split(' ')
                .find_map(|f| f.strip_prefix("sub="))
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n > 0)
        })
}

/// b (logged in as `relay`) loses its Pub/Sub connection and cannot log in again: it hears
/// nothing on `:out` until [`let_b_hear`]. Its command connection keeps working. Returns
/// how many subscriber connections were killed.
fn deafen_b(redis: &RedisServer) -> usize {
    relay_user(redis, &["off"]);
    let killed = kill_subscribers(redis, "b");
    assert!(killed >= 1, "no subscriber connection of b found to kill");
    killed
}

/// Undoes [`deafen_b`] and waits (at most 10 s) until b's subscriber is back.
fn let_b_hear(redis: &RedisServer) {
    relay_user(redis, &["on"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !subscribed(redis, "b") {
        assert!(Instant::now() < deadline, "b's subscriber never came back");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn write_round(members: &mut [&mut Member], window: usize) {
    for m in members.iter_mut() {
        if m.pending() < window {
            m.send_inc(1);
        }
        while m.pump(Duration::from_millis(1)) {}
    }
}

/// `kill -9` of the owner while clients write: a new owner serves within the lease time,
/// no acked op is lost, and every client (the dead instance's reconnected elsewhere)
/// converges.
#[test]
fn owner_killed_while_clients_write() {
    let redis = RedisServer::start();
    let mut a = Some(instance(&redis, "a", &[]));
    let b = instance(&redis, "b", &[]);
    let c = instance(&redis, "c", &[]);
    let room = "failover";
    let mut m1 = Member::join(a.as_ref().expect("a").addr(), Enc::Msgpack, room);
    assert_eq!(owner_of(&redis, room).as_deref(), Some("a"));
    let mut m2 = Member::join(b.addr(), Enc::Json, room);
    let mut m3 = Member::join(c.addr(), Enc::Msgpack, room);
    for _ in 0..30 {
        write_round(&mut [&mut m1, &mut m2, &mut m3], 4);
    }
    // Ops in flight at the moment of the kill: their fate is unknown.
    for m in [&mut m1, &mut m2, &mut m3] {
        for _ in 0..3 {
            m.send_inc(1);
        }
    }
    std::thread::sleep(Duration::from_millis(5));
    let mut unknown = m1.abandon_pending();
    let before_kill = m1.acked_sum + m2.acked_sum + m3.acked_sum;
    drop(a.take()); // SIGKILL
    let killed = Instant::now();
    // The dead instance's client reconnects elsewhere and resumes.
    let joined = m1.reconnect(b.addr());
    assert!(joined["state"].is_object() || joined["resumed"] == true);
    // Writes continue; the first ack after the kill shows a new owner serving.
    let acked_before = m2.acked + m3.acked;
    let mut served = None;
    while served.is_none() {
        assert!(killed.elapsed() < Duration::from_secs(10), "no new owner");
        if m2.pending() == 0 {
            m2.send_inc(1);
        }
        if m3.pending() == 0 {
            m3.send_inc(1);
        }
        m2.pump(Duration::from_millis(20));
        m3.pump(Duration::from_millis(20));
        if m2.acked + m3.acked > acked_before {
            served = Some(killed.elapsed());
        }
    }
    let served = served.expect("served");
    for _ in 0..20 {
        write_round(&mut [&mut m1, &mut m2, &mut m3], 4);
    }
    for m in [&mut m1, &mut m2, &mut m3] {
        m.settle(Duration::from_secs(10));
    }
    // Ops relayed to the dead owner are answered `unavailable` (fate unknown).
    unknown += m1.unknown() + m2.unknown() + m3.unknown();
    let acked = m1.acked_sum + m2.acked_sum + m3.acked_sum;
    let top = [&m1, &m2, &m3]
        .iter()
        .map(|m| m.mirror.tick)
        .max()
        .unwrap_or(0);
    for m in [&mut m1, &mut m2, &mut m3] {
        m.reach(top);
    }
    assert_eq!(m1.mirror.state, m2.mirror.state);
    assert_eq!(m2.mirror.state, m3.mirror.state);
    let counter = m1.counter();
    assert!(
        counter >= acked && counter <= acked + unknown,
        "counter {counter}, acked {acked}, unknown {unknown}"
    );
    let owner = owner_of(&redis, room);
    assert!(matches!(owner.as_deref(), Some("b" | "c")), "{owner:?}");
    println!(
        "owner killed after {before_kill} acked; new owner {owner:?} served after {served:?} \
         (lease 1s); acked {acked}, unknown fate {unknown}, counter {counter}, tick {top}"
    );
    // DESIGN.md's recovery bound: lease ttl (1 s here) + 2 s.
    assert!(
        served < Duration::from_secs(3),
        "took over in {served:?}, past the lease ttl + 2 s"
    );
}

/// The subscriber connection of a relaying instance is killed during writes, and stays
/// down (logins as its Redis user refused) while the owner writes: its clients still see
/// gapless ticks and get every ack. The deltas written while it was down reached it only
/// through the log, which the repair after its reconnect read.
#[test]
fn killed_subscriber_is_repaired_from_the_log() {
    let redis = RedisServer::start();
    relay_user(&redis, &["on", ">relay-pw", "~*", "&*", "+@all"]);
    let a = instance(&redis, "a", &[]);
    let b = instance_url(&relay_url(&redis), "b", &[]);
    let room = "repair";
    let mut m1 = Member::join(a.addr(), Enc::Msgpack, room);
    let mut m2 = Member::join(b.addr(), Enc::Json, room);
    assert_eq!(m2.mirror.tick, 0);
    let mut killed = 0;
    // The last tick written while b could not hear it, per outage.
    let mut unheard = Vec::new();
    for round in 0..60 {
        write_round(&mut [&mut m1, &mut m2], 4);
        if round == 20 || round == 40 {
            killed += deafen_b(&redis);
            for _ in 0..3 {
                m1.send_inc(1);
            }
            m1.settle(Duration::from_secs(10));
            assert!(!subscribed(&redis, "b"), "b heard the deltas");
            unheard.push(m1.mirror.tick);
            relay_user(&redis, &["on"]);
        }
    }
    assert!(killed >= 2, "no subscriber connection of b found to kill");
    m1.settle(Duration::from_secs(10));
    m2.settle(Duration::from_secs(10));
    let top = converge(&mut [&mut m1, &mut m2]);
    assert_eq!(m1.counter(), m1.acked_sum + m2.acked_sum);
    // Every tick from the join on, each checked consecutive: those written while b was
    // deaf included.
    assert_eq!(m2.deltas, top, "b's client missed deltas");
    let (_, _, metrics) = common::http_get(b.addr(), "/metrics");
    let repairs: Vec<u64> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("kasagi_fleet_gap_repairs_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(
        !repairs.is_empty(),
        "no kasagi_fleet_gap_repairs_total: {metrics}"
    );
    let repairs: u64 = repairs.iter().sum();
    assert!(repairs >= 2, "b repaired {repairs} times: {metrics}");
    assert!(metrics.contains("kasagi_fleet_relayed_total"));
    println!(
        "killed b's subscriber {killed} times; ticks {unheard:?} written while b was deaf; b's \
         client saw {} consecutive deltas to tick {top}, {} acks; b repaired {repairs} times",
        m2.deltas, m2.acked
    );
}

/// A stale owner (paused with SIGSTOP until its lease was taken, then SIGCONT) cannot
/// write a tick: it answers `unavailable`, steps down, and its clients converge to the
/// one history.
#[test]
fn stale_owner_cannot_write_and_steps_down() {
    let redis = RedisServer::start();
    let a = instance(&redis, "a", &[]);
    let b = instance(&redis, "b", &[]);
    let room = "stale";
    let mut m1 = Member::join(a.addr(), Enc::Msgpack, room);
    let mut m2 = Member::join(b.addr(), Enc::Msgpack, room);
    for _ in 0..10 {
        write_round(&mut [&mut m1, &mut m2], 2);
    }
    m1.settle(Duration::from_secs(10));
    m2.settle(Duration::from_secs(10));
    a.signal("STOP");
    // Relayed to the paused owner, which never logs it: b, taking the room over, finds it
    // unacked in the log and applies it itself (once).
    let before = m2.acked;
    m2.send_inc(1000);
    // b's relay has a member: it takes the lease once a's lapses.
    let deadline = Instant::now() + Duration::from_secs(10);
    while owner_of(&redis, room).as_deref() != Some("b") {
        assert!(Instant::now() < deadline, "b never took the room over");
        std::thread::sleep(Duration::from_millis(50));
    }
    m2.settle(Duration::from_secs(10));
    assert_eq!(m2.unavailable, 0, "the op relayed to the paused owner");
    assert_eq!(m2.acked, before + 1, "applied by the new owner");
    for _ in 0..5 {
        m2.send_inc(1);
    }
    m2.settle(Duration::from_secs(10));
    // m1's op reaches the stale owner the moment it runs again.
    let acked_before = m1.acked;
    m1.send_inc(100);
    a.signal("CONT");
    m1.settle(Duration::from_secs(10));
    // Refused by the stale owner (its lease lapsed by its own clock), or, when its renewal
    // ran first and it already stepped down, relayed to the new owner: never applied by it.
    let refused = m1.unavailable == 1;
    assert!(
        refused || m1.acked == acked_before + 1,
        "the op was neither refused nor acked by the new owner"
    );
    // Once stepped down, a relays: m1 writes again through b.
    let deadline = Instant::now() + Duration::from_secs(10);
    while m1.mirror.epoch != m2.mirror.epoch {
        assert!(Instant::now() < deadline, "m1 never saw the new owner");
        m1.pump(Duration::from_millis(50));
    }
    m1.send_inc(1);
    m1.settle(Duration::from_secs(10));
    converge(&mut [&mut m1, &mut m2]);
    assert_eq!(m1.counter(), m1.acked_sum + m2.acked_sum);
    let epochs = log_epochs(&redis, room);
    assert!(
        epochs
            .windows(2)
            .all(|w| w[0].1 <= w[1].1 && w[1].0 == w[0].0 + 1),
        "the log is one history: {epochs:?}"
    );
    assert!(a.stderr().contains("stepping down"));
    println!(
        "stale owner {} and stepped down; log epochs {:?}..{:?}",
        if refused {
            "refused the op"
        } else {
            "had stepped down before the op (relayed)"
        },
        epochs.first(),
        epochs.last()
    );
}

/// An owner whose epoch was taken (here by hand, as a take-over elsewhere would) fails its
/// next append: the op is not acked (`unavailable`), nothing of it is logged, the owner
/// steps down, and once the foreign lease lapses it takes the room again with a new epoch.
#[test]
fn append_with_a_stolen_epoch_fails_and_the_owner_steps_down() {
    let redis = RedisServer::start();
    let a = instance(&redis, "a", &[]);
    let room = "stolen";
    let mut m1 = Member::join(a.addr(), Enc::Json, room);
    m1.send_inc(1);
    m1.settle(Duration::from_secs(10));
    let key = |k: &str| format!("kasagi:{{{room}}}:{k}");
    redis.command(&["SET", &key("owner"), "thief", "PX", "1500"]);
    redis.command(&["INCR", &key("epoch")]);
    m1.send_inc(50);
    m1.settle(Duration::from_secs(10));
    assert_eq!(m1.unavailable, 1, "the stale append must not be acked");
    assert_eq!(
        log_epochs(&redis, room),
        vec![(1, 1)],
        "nothing of the stale owner logged"
    );
    // The member is registered again once the room has an owner: `a` itself, epoch 3.
    let deadline = Instant::now() + Duration::from_secs(10);
    while m1.mirror.epoch != 3 {
        assert!(Instant::now() < deadline, "never served again");
        m1.pump(Duration::from_millis(50));
    }
    m1.send_inc(2);
    m1.settle(Duration::from_secs(10));
    assert_eq!(m1.counter(), 3, "{}", m1.mirror.state);
    assert!(a.stderr().contains("stepping down"));
    println!(
        "stale append refused; re-owned at epoch {} tick {}",
        m1.mirror.epoch, m1.mirror.tick
    );
}

/// After a take-over, a client of the old epoch resumes from the log: the `joined` says
/// `resumed`, the missed deltas (logged by the dead owner, then the new owner's) come with
/// the new epoch, and its copy equals everyone's.
#[test]
fn resume_across_a_take_over_from_the_log() {
    let redis = RedisServer::start();
    let mut a = Some(instance(&redis, "a", &[]));
    let b = instance(&redis, "b", &[]);
    let room = "relog";
    let mut m1 = Member::join(a.as_ref().expect("a").addr(), Enc::Msgpack, room);
    let m2 = Member::join(b.addr(), Enc::Json, room);
    let mut m3 = Member::join(b.addr(), Enc::Msgpack, room);
    for _ in 0..2 {
        m1.send_inc(1);
        m1.settle(Duration::from_secs(10));
    }
    let mut gone = m2;
    gone.reach(2);
    let (since, epoch) = (gone.mirror.tick, gone.mirror.epoch);
    drop(std::mem::replace(
        &mut gone.client,
        common::Client::connect(b.addr(), Enc::Json),
    ));
    for _ in 0..3 {
        m1.send_inc(1);
        m1.settle(Duration::from_secs(10));
    }
    drop(a.take()); // SIGKILL: b (m3's instance) takes over at the next epoch
    let deadline = Instant::now() + Duration::from_secs(10);
    while m3.mirror.epoch == epoch {
        assert!(Instant::now() < deadline, "no take-over");
        m3.pump(Duration::from_millis(50));
    }
    for _ in 0..2 {
        m3.send_inc(1);
        m3.settle(Duration::from_secs(10));
    }
    let joined = gone.client.join_since(room, since, Some(epoch));
    assert_eq!(joined["resumed"], true, "{joined}");
    assert_eq!(joined["epoch"], m3.mirror.epoch);
    let mut mirror = gone.mirror.clone();
    mirror.epoch = m3.mirror.epoch;
    while mirror.tick < m3.mirror.tick {
        let delta = gone.client.next_of("delta");
        assert_eq!(delta["epoch"], m3.mirror.epoch, "{delta}");
        mirror.apply_delta(&delta).expect("consecutive");
    }
    assert_eq!(mirror.state, m3.mirror.state);
    assert_eq!(m3.counter(), 7);
    // A `since` of the right tick but another epoch is no resume.
    let joined = gone.client.join_since(room, since, Some(epoch + 9));
    assert!(joined["state"].is_object(), "{joined}");
    println!(
        "resumed from tick {since} of epoch {epoch} to tick {} of epoch {} across the take-over",
        mirror.tick, mirror.epoch
    );
}

/// A relaying instance dies: the owner drops its members (a `presence` with them as
/// `left`), so the members list is right again.
#[test]
fn members_of_a_dead_instance_are_dropped() {
    let redis = RedisServer::start();
    let a = instance(&redis, "a", &[]);
    let b = instance(&redis, "b", &[]);
    let mut c = Some(instance(&redis, "c", &[]));
    let room = "ghosts";
    let mut m1 = common::Client::connect(a.addr(), Enc::Json);
    m1.join(room);
    let mut m2 = common::Client::connect(b.addr(), Enc::Json);
    m2.join(room);
    let mut m3 = common::Client::connect(c.as_ref().expect("c").addr(), Enc::Json);
    let joined = m3.join(room);
    assert_eq!(
        joined["members"].as_array().map(Vec::len),
        Some(3),
        "{joined}"
    );
    let ghost = m3.you().to_owned();
    // c's liveness key is up (it is written once c's Redis connection is).
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.command(&["EXISTS", "kasagi:instance:c"]) != Resp::Int(1) {
        assert!(Instant::now() < deadline, "c never wrote its liveness key");
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = Instant::now();
    drop(c.take());
    let (presence, _) = m1.recv_until(|v| {
        v["t"] == "presence"
            && v["left"]
                .as_array()
                .is_some_and(|l| l.iter().any(|id| id == ghost.as_str()))
    });
    let dropped = killed.elapsed();
    let (_, _) = m2.recv_until(|v| v["t"] == "presence" && v["left"] == presence["left"]);
    let mut m4 = common::Client::connect(b.addr(), Enc::Json);
    let joined = m4.join(room);
    let members: Vec<&str> = joined["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(!members.contains(&ghost.as_str()), "{members:?}");
    assert_eq!(members.len(), 3, "{members:?}");
    println!(
        "members of the killed instance dropped after {dropped:?} (liveness key 3 s, lease ttl 1s)"
    );
    assert!(
        dropped >= Duration::from_secs(2),
        "dropped before the liveness key lapsed"
    );
}

/// Two owners killed one after the other while clients write: the last instance standing
/// serves every client (reconnected to it), and nothing acked is lost.
#[test]
fn two_owners_killed_in_a_row() {
    let redis = RedisServer::start();
    let names = ["a", "b", "c"];
    let mut servers: Vec<Option<common::Server>> = names
        .iter()
        .map(|n| Some(instance(&redis, n, &[])))
        .collect();
    let room = "twice";
    let mut members: Vec<Member> = (0..3)
        .map(|i| Member::join(servers[i].as_ref().expect("up").addr(), Enc::Msgpack, room))
        .collect();
    let mut at: Vec<usize> = (0..3).collect();
    let mut unknown = 0;
    let mut epochs = Vec::new();
    for _ in 0..2 {
        for _ in 0..15 {
            let mut all: Vec<&mut Member> = members.iter_mut().collect();
            write_round(&mut all, 3);
        }
        let owner = owner_of(&redis, room).expect("an owner");
        let dead = names
            .iter()
            .position(|n| *n == owner)
            .expect("a known owner");
        epochs.push(redis.command(&["GET", "kasagi:{twice}:epoch"]).as_text());
        drop(servers[dead].take());
        let survivor = servers
            .iter()
            .position(Option::is_some)
            .expect("an instance left");
        let addr = servers[survivor].as_ref().expect("up").addr();
        for (m, at) in members.iter_mut().zip(at.iter_mut()) {
            if *at == dead {
                unknown += m.abandon_pending();
                m.reconnect(addr);
                *at = survivor;
            }
        }
        // Clients of the dead instance moved: from now on, every member is elsewhere.
        let deadline = Instant::now() + Duration::from_secs(10);
        while owner_of(&redis, room).is_none_or(|o| o == owner) {
            assert!(Instant::now() < deadline, "no new owner after {owner} died");
            for m in members.iter_mut().filter(|m| m.pending() == 0) {
                m.pump(Duration::from_millis(10));
            }
        }
    }
    for _ in 0..10 {
        let mut all: Vec<&mut Member> = members.iter_mut().collect();
        write_round(&mut all, 3);
    }
    for m in members.iter_mut() {
        m.settle(Duration::from_secs(15));
        unknown += m.unknown();
    }
    let top = members.iter().map(|m| m.mirror.tick).max().unwrap_or(0);
    for m in members.iter_mut() {
        m.reach(top);
    }
    let acked: i64 = members.iter().map(|m| m.acked_sum).sum();
    for m in &members[1..] {
        assert_eq!(m.mirror.state, members[0].mirror.state);
    }
    let counter = members[0].counter();
    assert!(
        counter >= acked && counter <= acked + unknown,
        "counter {counter}, acked {acked}, unknown {unknown}"
    );
    println!(
        "two owners killed (epochs {epochs:?} then {:?}): acked {acked}, unknown {unknown}, \
         counter {counter}, tick {top}",
        redis.command(&["GET", "kasagi:{twice}:epoch"]).as_text()
    );
}

/// Ops a third instance relayed to an owner that paused (and never logged them) are sent
/// again to the instance that takes the room over, after reading the log: applied once,
/// acked, never `unavailable`.
#[test]
fn relayed_ops_are_sent_again_to_the_new_owner() {
    let redis = RedisServer::start();
    let a = instance(&redis, "a", &[]);
    let b = instance(&redis, "b", &[]);
    let c = instance(&redis, "c", &[]);
    let room = "resend";
    let mut m1 = Member::join(a.addr(), Enc::Msgpack, room);
    let mut m2 = Member::join(b.addr(), Enc::Msgpack, room);
    let mut m3 = Member::join(c.addr(), Enc::Json, room);
    for _ in 0..5 {
        write_round(&mut [&mut m1, &mut m2, &mut m3], 2);
    }
    for m in [&mut m1, &mut m2, &mut m3] {
        m.settle(Duration::from_secs(10));
    }
    a.signal("STOP");
    for _ in 0..3 {
        m3.send_inc(100);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !matches!(owner_of(&redis, room).as_deref(), Some("b" | "c")) {
        assert!(Instant::now() < deadline, "nobody took the room over");
        std::thread::sleep(Duration::from_millis(50));
    }
    m3.settle(Duration::from_secs(10));
    a.signal("CONT");
    m2.settle(Duration::from_secs(10));
    assert_eq!(
        m3.unavailable, 0,
        "the ops must be applied by the new owner"
    );
    assert_eq!(m3.acked, 5 + 3);
    converge(&mut [&mut m2, &mut m3]);
    assert_eq!(
        m3.counter(),
        m1.acked_sum + m2.acked_sum + m3.acked_sum,
        "each op applied once"
    );
    let owner = owner_of(&redis, room);
    // c relayed them: sent again to b after reading the log, or applied by c itself.
    let log = c.stderr();
    if owner.as_deref() == Some("b") {
        assert!(
            log.contains("sending ops the old owner never logged"),
            "{log}"
        );
    } else {
        assert!(
            log.contains("ops relayed to the old owner and unanswered"),
            "{log}"
        );
    }
    println!(
        "3 ops relayed to the paused owner: acked by the new owner {owner:?}, counter {}",
        m3.counter()
    );
}

/// The owner's subscriber connection is killed while a relay's clients write: requests
/// published meanwhile are lost, the relay sends them again after `--relay-timeout`
/// (marked as repeats), and each op is applied exactly once.
#[test]
fn owner_subscriber_killed_relayed_ops_are_sent_again() {
    let redis = RedisServer::start();
    let args = ["--relay-timeout", "500ms"];
    let a = instance(&redis, "a", &args);
    let b = instance(&redis, "b", &args);
    let room = "lost-in";
    let mut m1 = Member::join(a.addr(), Enc::Msgpack, room);
    let mut m2 = Member::join(b.addr(), Enc::Json, room);
    let mut killed = 0;
    for round in 0..40 {
        write_round(&mut [&mut m1, &mut m2], 4);
        if round % 10 == 5 {
            killed += kill_subscribers(&redis, "a");
        }
    }
    assert!(killed >= 2, "no subscriber connection of a found to kill");
    m1.settle(Duration::from_secs(10));
    m2.settle(Duration::from_secs(10));
    converge(&mut [&mut m1, &mut m2]);
    assert_eq!(m2.unavailable, 0);
    assert_eq!(
        m1.counter(),
        m1.acked_sum + m2.acked_sum,
        "every acked op applied exactly once"
    );
    let (_, _, metrics) = common::http_get(b.addr(), "/metrics");
    let relayed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kasagi_fleet_relayed_total{shard=\"0\"} "))
        .and_then(|v| v.parse().ok())
        .expect("relayed counter");
    println!(
        "killed a's subscriber {killed} times: b's client got {} acks, 0 unavailable; b relayed \
         {relayed} requests (repeats included)",
        m2.acked
    );
}

/// A member on instance b of a room owned by instance a leaves (`leave` does it, with the
/// member's client) right after a's subscriber was killed, so what b publishes may be lost:
/// the leave is sent again, the other member sees it go, and a fresh join on the owner no
/// longer lists it.
fn leave_while_the_owners_subscriber_is_down(room: &str, leave: impl FnOnce(common::Client)) {
    let redis = RedisServer::start();
    let args = ["--relay-timeout", "500ms"];
    let a = instance(&redis, "a", &args);
    let b = instance(&redis, "b", &args);
    let mut m1 = common::Client::connect(a.addr(), Enc::Json);
    m1.join(room);
    let mut m2 = common::Client::connect(b.addr(), Enc::Json);
    m2.join(room);
    let leaver = m2.you().to_owned();
    m1.next_of("presence");
    kill_subscribers(&redis, "a");
    leave(m2);
    let (presence, _) = m1.recv_until(|v| v["t"] == "presence");
    assert_eq!(presence["left"], serde_json::json!([leaver]), "{presence}");
    let joined = common::Client::connect(a.addr(), Enc::Json).join(room);
    let members = joined["members"].as_array().cloned().unwrap_or_default();
    assert!(
        !members.iter().any(|m| m == leaver.as_str()),
        "{leaver} stayed a member: {joined}"
    );
}

/// A leave the client asks for: it also gets its `left`.
#[test]
fn a_leave_lost_on_its_way_is_sent_again() {
    let room = "lost-leave";
    leave_while_the_owners_subscriber_is_down(room, |mut m2| {
        m2.send(serde_json::json!({"t": "leave", "room": room}));
        let left = m2.next_of("left");
        assert_eq!(left["room"], room, "{left}");
        assert!(
            left.get("reason").is_none(),
            "an answer has no reason: {left}"
        );
    });
}

/// A leave lost on its way to an owner that then dies: the relay keeps it until the room
/// has an owner again, and the client gets its `left` (an answer: no `reason`) from the
/// take-over or the relay's give-up, whichever comes first.
#[test]
fn a_leave_waiting_when_the_owner_dies_is_answered() {
    let redis = RedisServer::start();
    let args = ["--relay-timeout", "500ms"];
    let mut a = Some(instance(&redis, "a", &args));
    let b = instance(&redis, "b", &args);
    let room = "leave-then-die";
    let mut m1 = common::Client::connect(a.as_ref().expect("a").addr(), Enc::Json);
    m1.join(room);
    let mut stays = Member::join(b.addr(), Enc::Msgpack, room);
    let mut leaver = common::Client::connect(b.addr(), Enc::Json);
    leaver.join(room);
    kill_subscribers(&redis, "a");
    leaver.send(serde_json::json!({"t": "leave", "room": room}));
    drop(a.take()); // SIGKILL
    let left = leaver.next_of("left");
    assert_eq!(left["room"], room, "{left}");
    assert!(
        left.get("reason").is_none(),
        "an answer has no reason: {left}"
    );
    // The member that stays is served by the new owner (b).
    stays.send_inc(1);
    stays.settle(Duration::from_secs(10));
    assert_eq!(owner_of(&redis, room).as_deref(), Some("b"));
    println!("leave answered after the owner died: {left}");
}

/// A client that disconnects: its instance's leave expects no answer for the client, but
/// still waits for one, so a lost one is sent again and the member does not stay behind.
#[test]
fn a_disconnects_leave_lost_on_its_way_is_sent_again() {
    leave_while_the_owners_subscriber_is_down("lost-disconnect", drop);
}

/// Instance b relays a room whose owner a dies, and misses the announcement of the new
/// owner c: b's Pub/Sub connection is killed, and logins as b's Redis user are refused
/// until c has announced itself (seen on a subscription of the test's own). b may not take
/// the room over itself (its user may not run `EXISTS`, where a take-over starts). b must
/// still register its member with c: on c's first delta, which reaches b on `:out`
/// (`in_log` false), or on the log entry b's repair reads after its reconnect (`in_log`
/// true). b's client then gets a `joined` of the new epoch, and its ops are acked.
fn relay_that_missed_the_new_owner(room: &str, in_log: bool) {
    let redis = RedisServer::start();
    relay_user(&redis, &["on", ">relay-pw", "~*", "&*", "+@all", "-exists"]);
    let mut a = Some(instance(&redis, "a", &[]));
    let b = instance_url(&relay_url(&redis), "b", &[]);
    let c = instance(&redis, "c", &[]);
    let m1 = Member::join(a.as_ref().expect("a").addr(), Enc::Msgpack, room);
    assert_eq!(owner_of(&redis, room).as_deref(), Some("a"));
    let mut m2 = Member::join(b.addr(), Enc::Json, room);
    let mut m3 = Member::join(c.addr(), Enc::Msgpack, room);
    for _ in 0..5 {
        write_round(&mut [&mut m2, &mut m3], 2);
    }
    m2.settle(Duration::from_secs(10));
    m3.settle(Duration::from_secs(10));
    let old_epoch = m2.mirror.epoch;
    // Connections b has keep working; new ones are refused.
    deafen_b(&redis);
    let mut out = RespConn::subscribe(redis.port, &format!("kasagi:{{{room}}}:out"));
    drop(a.take()); // SIGKILL
    drop(m1);
    out.wait_for_message(b"Owner");
    assert_eq!(owner_of(&redis, room).as_deref(), Some("c"));
    assert!(!subscribed(&redis, "b"), "b heard the announcement");
    if in_log {
        m3.send_inc(1);
        m3.settle(Duration::from_secs(10));
    }
    let_b_hear(&redis);
    if !in_log {
        m3.send_inc(1);
        m3.settle(Duration::from_secs(10));
    }
    m2.reach(m3.mirror.tick);
    let acked = m2.acked;
    for _ in 0..3 {
        m2.send_inc(1);
    }
    m2.settle(Duration::from_secs(10));
    assert_eq!(m2.unavailable, 0, "b's member was never registered with c");
    assert_eq!(m2.acked, acked + 3);
    assert!(m2.mirror.epoch > old_epoch);
    assert!(m2.resyncs >= 1, "no joined of the new epoch");
    converge(&mut [&mut m2, &mut m3]);
    assert_eq!(m2.counter(), m2.acked_sum + m3.acked_sum);
    // From the log in any case when the entry was there before b came back; the delta
    // usually comes on `:out`, unless the repair after b's reconnect read it first.
    let log = b.stderr();
    let from_log = log.contains("the log shows a new owner");
    assert!(
        from_log || (!in_log && log.contains("the room has a new owner")),
        "{log}"
    );
    assert!(from_log || !in_log, "{log}");
    println!(
        "b missed the announcement of epoch {}; registered from {}: {} resync(s), {} acks, 0 \
         unavailable, tick {}",
        m2.mirror.epoch,
        if from_log {
            "a repaired log entry"
        } else {
            "a delta on :out"
        },
        m2.resyncs,
        m2.acked,
        m2.mirror.tick
    );
}

#[test]
fn a_relay_that_missed_the_new_owner_registers_on_its_delta() {
    relay_that_missed_the_new_owner("missed-owner", false);
}

#[test]
fn a_relay_that_missed_the_new_owner_registers_from_the_log() {
    relay_that_missed_the_new_owner("missed-owner-log", true);
}

/// A relay's first deltas are lost: b's subscriber goes down (killed, and logins as b's
/// Redis user refused) right after its client joined, before any delta, while the owner
/// writes. The repair after b's reconnect starts after the tick of the `joined`: b's client
/// sees every tick (its mirror fails on a gap).
#[test]
fn deltas_lost_before_a_relays_first_delta_are_repaired() {
    let redis = RedisServer::start();
    relay_user(&redis, &["on", ">relay-pw", "~*", "&*", "+@all"]);
    let a = instance(&redis, "a", &[]);
    let b = instance_url(&relay_url(&redis), "b", &[]);
    let room = "first-deltas";
    let mut m1 = Member::join(a.addr(), Enc::Msgpack, room);
    let mut m2 = Member::join(b.addr(), Enc::Json, room);
    deafen_b(&redis);
    for _ in 0..5 {
        m1.send_inc(1);
    }
    m1.settle(Duration::from_secs(10));
    assert!(!subscribed(&redis, "b"), "b heard the deltas");
    let_b_hear(&redis);
    m1.send_inc(1);
    m1.settle(Duration::from_secs(10));
    let top = converge(&mut [&mut m1, &mut m2]);
    assert_eq!(m2.deltas, top, "every tick reached b's client");
    assert_eq!(m2.counter(), 6);
    println!(
        "b's subscriber down from its client's joined on: {} deltas, ticks 1..={top}",
        m2.deltas
    );
}

/// Every delta a member saw while the test ran: its epoch and when it arrived.
type Seen = Vec<(u64, Instant)>;

/// Runs `m` on its own thread until `until`: an `inc` every 20 ms (at most 4 waiting),
/// recording each delta's epoch and arrival, so two members' records share one clock.
fn write_and_record(mut m: Member, until: Instant) -> std::thread::JoinHandle<(Member, Seen)> {
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut next_send = Instant::now();
        while Instant::now() < until {
            // A member the instance removed (unasked `left`) stops writing.
            if Instant::now() >= next_send && m.pending() < 4 && m.removed == 0 {
                m.send_inc(1);
                next_send += Duration::from_millis(20);
            }
            let tick = m.mirror.tick;
            if m.pump(Duration::from_millis(2)) && m.mirror.tick > tick {
                seen.push((m.mirror.epoch, Instant::now()));
            }
        }
        (m, seen)
    })
}

/// Only the owner loses Redis (its user is switched off and its connections killed) while
/// the other instance keeps it: DESIGN.md's "Redis unreachable" rule. Without durable acks
/// the owner applies ops in memory as long as its lease may still hold by its own clock,
/// and its members see them; the other instance takes the room only after the lease lapsed
/// in Redis. So no delta of the old epoch arrives after the first delta of the new one: two
/// owners never apply ops at once. When Redis takes the old owner back it steps down, and
/// everyone converges on the new owner's history.
#[test]
fn an_owner_cut_off_from_redis_stops_before_another_takes_over() {
    let redis = RedisServer::start();
    relay_user(&redis, &["on", ">relay-pw", "~*", "&*", "+@all"]);
    let no_durable = ["--durable-acks", "false"];
    let a = instance_url(&relay_url(&redis), "a", &no_durable);
    let b = instance(&redis, "b", &no_durable);
    let room = "cut-off";
    let mut m1 = Member::join(a.addr(), Enc::Msgpack, room);
    let mut m2 = Member::join(b.addr(), Enc::Json, room);
    for _ in 0..5 {
        write_round(&mut [&mut m1, &mut m2], 4);
    }
    m1.settle(Duration::from_secs(10));
    m2.settle(Duration::from_secs(10));
    assert_eq!(owner_of(&redis, room).as_deref(), Some("a"));
    let old_epoch = m1.mirror.epoch;

    let cut = Instant::now();
    relay_user(&redis, &["off"]);
    redis.command(&["CLIENT", "KILL", "USER", "relay"]);
    // Lease 1 s: b takes over within about 1.4 s of a's last renewal; 4 s covers it.
    let until = cut + Duration::from_secs(4);
    let (t1, t2) = (write_and_record(m1, until), write_and_record(m2, until));
    let (mut m1, seen1) = t1.join().expect("a's member");
    let (mut m2, seen2) = t2.join().expect("b's member");
    let seen: Vec<_> = seen1.iter().chain(&seen2).collect();
    let last_old = seen
        .iter()
        .filter(|(e, _)| *e == old_epoch)
        .map(|(_, at)| *at)
        .max();
    let first_new = seen
        .iter()
        .filter(|(e, _)| *e > old_epoch)
        .map(|(_, at)| *at)
        .min()
        .expect("no delta of a new owner within 4 s of the cut");
    assert_eq!(owner_of(&redis, room).as_deref(), Some("b"));
    if let Some(last_old) = last_old {
        assert!(
            last_old < first_new,
            "a delta of epoch {old_epoch} came {:?} after the new owner's first",
            last_old - first_new
        );
    }
    let old_after_cut = seen1.iter().filter(|(e, _)| *e == old_epoch).count();

    // a gets Redis back. If it stepped down while cut off, its member was removed (unasked
    // `left`) and joins again; otherwise a finds the new epoch, steps down and registers
    // its member with b.
    relay_user(&redis, &["on"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    if m1.removed > 0 {
        m1.abandon_pending();
        let since = (m1.mirror.tick, m1.mirror.epoch);
        let joined = join_eventually(&mut m1.client, room, Some(since));
        m1.absorb_joined(&joined);
    }
    while m1.mirror.epoch == old_epoch {
        assert!(
            Instant::now() < deadline,
            "a's member never moved to the new owner"
        );
        m1.pump(Duration::from_millis(50));
    }
    let mut acked = 0;
    while acked < 3 {
        assert!(Instant::now() < deadline, "a's member is not served again");
        let before = m1.acked;
        m1.send_inc(1);
        m1.settle(Duration::from_secs(10));
        acked += m1.acked - before;
    }
    m2.settle(Duration::from_secs(10));
    let top = converge(&mut [&mut m1, &mut m2]);
    let epochs = log_epochs(&redis, room);
    for pair in epochs.windows(2) {
        assert_eq!(
            pair[1].0,
            pair[0].0 + 1,
            "log ticks consecutive: {epochs:?}"
        );
        assert!(
            pair[1].1 >= pair[0].1,
            "log epochs never go down: {epochs:?}"
        );
    }
    println!(
        "owner a cut off from Redis: {old_after_cut} deltas of epoch {old_epoch} on a, the \
         last {:?} after the cut; a's member removed {} time(s); b's first delta of epoch {} \
         {:?} after the cut; converged at tick {top}",
        last_old.map(|t| t - cut),
        m1.removed,
        m2.mirror.epoch,
        first_new - cut
    );
}

/// A relay's subscriber is down while the owner writes past its snapshots, and the log is
/// trimmed behind them (a snapshot every 2 ticks, a resume window of 1): the repair after
/// b's reconnect finds the missed ticks gone and registers b's client again for a full
/// `joined`. Another client of the owner floods it with ops from a thread meanwhile, so
/// the owner makes a delta nearly every turn and some reach b between its repair and that
/// `joined`: they are not delivered to b's client (its mirror fails on a tick gap), and it
/// ends with everyone's state.
#[test]
fn deltas_before_the_snapshot_after_a_trimmed_log_are_not_delivered() {
    let redis = RedisServer::start();
    relay_user(&redis, &["on", ">relay-pw", "~*", "&*", "+@all"]);
    let a = instance(
        &redis,
        "a",
        &[
            "--snapshot-every-ticks",
            "2",
            "--resume-window",
            "1",
            "--rate-limit",
            "1000000",
            "--rate-burst",
            "1000000",
        ],
    );
    let b = instance_url(&relay_url(&redis), "b", &[]);
    let room = "trimmed-gap";
    let mut m1 = Member::join(a.addr(), Enc::Msgpack, room);
    let mut m2 = Member::join(b.addr(), Enc::Json, room);
    deafen_b(&redis);
    for _ in 0..10 {
        m1.send_inc(1);
        m1.settle(Duration::from_secs(10));
    }
    assert!(!subscribed(&redis, "b"), "b heard the deltas");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let (addr, stop) = (a.addr(), stop.clone());
        let room = room.to_owned();
        std::thread::spawn(move || {
            let mut client = common::Client::connect(addr, Enc::Msgpack);
            client.join(&room);
            let mut seq = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                seq += 1;
                let op = serde_json::json!({"t": "op", "room": room, "seq": seq,
                    "ops": [["inc", ["flood"], 1]]});
                if client.try_send_message(Enc::Msgpack.message(&op)).is_err() {
                    break;
                }
            }
            seq
        })
    };
    relay_user(&redis, &["on"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while m2.resyncs == 0 {
        assert!(
            Instant::now() < deadline,
            "b's client never got a full joined"
        );
        m2.pump(Duration::from_millis(10));
    }
    let resynced_at = m2.mirror.tick;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let flooded = flood.join().expect("the flood thread");
    m2.send_inc(1);
    m2.settle(Duration::from_secs(10));
    m1.settle(Duration::from_secs(10));
    let top = converge(&mut [&mut m1, &mut m2]);
    assert_eq!(m2.counter(), m1.acked_sum + m2.acked_sum);
    assert!(
        b.stderr().contains("the log no longer holds the gap"),
        "the repair did not find the log trimmed"
    );
    println!(
        "b's client resynced at tick {resynced_at} ({flooded} ops flooded meanwhile), \
         converged at tick {top}"
    );
}
