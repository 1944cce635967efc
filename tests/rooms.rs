//! Room membership: presence, resume after a reconnect, re-joins, and rooms owned by another
//! shard behaving exactly like local ones.

mod common;

use common::{member_shard, owner_shard, Client, Enc, Mirror, Server};
use std::collections::BTreeMap;

use serde_json::{json, Value};

fn ids(value: &Value) -> Vec<String> {
    let mut items: Vec<String> = value
        .as_array()
        .unwrap_or_else(|| panic!("expected an array of ids, got {value}"))
        .iter()
        .map(|v| v.as_str().expect("member ids are strings").to_owned())
        .collect();
    items.sort();
    items
}

fn sorted(mut items: Vec<String>) -> Vec<String> {
    items.sort();
    items
}

#[test]
fn presence_reports_joins_leaves_and_disconnects() {
    let server = Server::start(&[]);
    let mut a = server.client(Enc::Json);
    let mut b = server.client(Enc::Msgpack);
    let joined = a.join("p");
    assert_eq!(ids(&joined["members"]), vec![a.you().to_owned()]);

    let joined = b.join("p");
    let (a_you, b_you) = (a.you().to_owned(), b.you().to_owned());
    assert_eq!(
        ids(&joined["members"]),
        sorted(vec![a_you.clone(), b_you.clone()])
    );
    let presence = a.expect("presence");
    assert_eq!(presence["room"], "p");
    assert_eq!(presence["joined"], json!([b_you]));
    assert_eq!(presence["left"], json!([]));
    b.assert_quiet("a joiner gets no presence about itself");

    // A disconnect without `leave` is a departure too.
    let mut c = server.client(Enc::Json);
    c.join("p");
    let c_you = c.you().to_owned();
    assert_eq!(a.expect("presence")["joined"], json!([c_you]));
    assert_eq!(b.expect("presence")["joined"], json!([c_you]));
    drop(c);
    for observer in [&mut a, &mut b] {
        let presence = observer.expect("presence");
        assert_eq!(presence["left"], json!([c_you]), "{presence}");
        assert_eq!(presence["joined"], json!([]), "{presence}");
    }

    b.send(json!({"t": "leave", "room": "p"}));
    b.expect("left");
    let presence = a.expect("presence");
    assert_eq!(presence["left"], json!([b_you]));
    let joined = server.client(Enc::Json).join("p");
    assert_eq!(
        ids(&joined["members"]).len(),
        2,
        "a and the fresh client: {joined}"
    );
    assert!(ids(&joined["members"]).contains(&a_you));
}

/// A room with `ticks` deltas written by `writer`.
fn write_ticks(writer: &mut Client, room: &str, first_seq: u64, ticks: u64) {
    for i in 0..ticks {
        let seq = first_seq + i;
        writer.op_acked(
            room,
            seq,
            json!([["set", ["k", format!("v{}", seq % 3)], seq]]),
        );
    }
}

/// Reads the deltas after a resumed `joined`, up to a sync point.
fn deltas_until_quiet(client: &mut Client) -> Vec<Value> {
    let before = client.sync();
    for message in &before {
        assert_eq!(
            message["t"], "delta",
            "only deltas follow a resume: {before:?}"
        );
    }
    before
}

#[test]
fn resume_resends_exactly_the_missed_deltas() {
    let server = Server::start(&["--resume-window", "4"]);
    let mut writer = server.client(Enc::Msgpack);
    writer.join("res");
    let mut a = server.client(Enc::Json);
    let mut mirror = Mirror::from_joined(&a.join("res"));
    writer.expect("presence");
    write_ticks(&mut writer, "res", 1, 3);
    for _ in 0..3 {
        let delta = a.expect("delta");
        mirror.apply_delta(&delta).expect("gapless");
    }
    assert_eq!(mirror.tick, 3);
    let epoch = mirror.epoch;
    drop(a);

    // Two ticks happen while the client is away.
    write_ticks(&mut writer, "res", 4, 2);
    let mut a = server.client(Enc::Json);
    let joined = a.join_since("res", 3, Some(epoch));
    assert_eq!(joined["resumed"], true, "{joined}");
    assert!(
        joined.get("state").is_none(),
        "a resume carries no state: {joined}"
    );
    let deltas = deltas_until_quiet(&mut a);
    let ticks: Vec<u64> = deltas.iter().filter_map(|d| d["tick"].as_u64()).collect();
    assert_eq!(ticks, vec![4, 5], "exactly the missed deltas: {deltas:?}");
    for delta in &deltas {
        mirror.apply_delta(delta).expect("resent deltas apply");
    }
    let fresh = server.client(Enc::Json).join("res");
    assert_eq!(mirror.state, fresh["state"]);
    assert_eq!(mirror.tick, fresh["tick"].as_u64().expect("tick"));

    // `since` without `epoch` means the current epoch.
    let mut b = server.client(Enc::Msgpack);
    let joined = b.join_since("res", 4, None);
    assert_eq!(joined["resumed"], true, "{joined}");
    let ticks: Vec<Value> = deltas_until_quiet(&mut b)
        .iter()
        .map(|d| d["tick"].clone())
        .collect();
    assert_eq!(ticks, vec![json!(5)]);
}

#[test]
fn resume_at_current_tick_sends_nothing() {
    let server = Server::start(&["--resume-window", "4"]);
    let mut writer = server.client(Enc::Json);
    writer.join("cur");
    write_ticks(&mut writer, "cur", 1, 2);
    let mut a = server.client(Enc::Msgpack);
    let joined = a.join_since("cur", 2, Some(0));
    assert_eq!(joined["resumed"], true, "{joined}");
    assert!(joined.get("state").is_none(), "{joined}");
    a.assert_quiet("since == current tick: no deltas");
}

#[test]
fn resume_falls_back_to_full_state() {
    let server = Server::start(&["--resume-window", "4"]);
    let mut writer = server.client(Enc::Json);
    writer.join("old");
    write_ticks(&mut writer, "old", 1, 10);
    let current = server.client(Enc::Json).join("old");
    assert_eq!(current["tick"], 10);

    let cases = [
        ("since above the current tick", 11u64, Some(0u64)),
        ("since older than the resume window", 1, Some(0)),
        ("since at tick 0, far outside the window", 0, Some(0)),
        ("another epoch", 9, Some(7)),
    ];
    for (what, since, epoch) in cases {
        for enc in Enc::BOTH {
            let mut a = server.client(enc);
            let joined = a.join_since("old", since, epoch);
            assert!(
                joined.get("resumed").is_none_or(|r| r == false),
                "{what}: {joined}"
            );
            assert_eq!(joined["state"], current["state"], "{what}: {joined}");
            assert_eq!(joined["tick"], 10, "{what}: {joined}");
            a.assert_quiet(what);
        }
    }
    // Inside the window it resumes: 3 ticks back is held by a window of 4.
    let mut a = server.client(Enc::Json);
    let joined = a.join_since("old", 7, Some(0));
    assert_eq!(joined["resumed"], true, "{joined}");
    let ticks: Vec<Value> = deltas_until_quiet(&mut a)
        .iter()
        .map(|d| d["tick"].clone())
        .collect();
    assert_eq!(ticks, vec![json!(8), json!(9), json!(10)]);
}

#[test]
fn resume_of_a_new_room() {
    let server = Server::start(&[]);
    let mut a = server.client(Enc::Json);
    // Tick 0 of epoch 0 is where every new room starts: nothing missed.
    let joined = a.join_since("brand-new", 0, Some(0));
    assert_eq!(joined["resumed"], true, "{joined}");
    a.assert_quiet("nothing to resend");
    let mut b = server.client(Enc::Msgpack);
    let joined = b.join_since("another-new", 5, Some(0));
    assert_eq!(joined["state"], json!({}), "since above tick 0: {joined}");
    assert_eq!(joined["tick"], 0, "{joined}");
}

#[test]
fn rejoining_a_joined_room_is_answered_like_a_first_join() {
    let server = Server::start(&[]);
    let mut a = server.client(Enc::Json);
    let mut other = server.client(Enc::Msgpack);
    a.join("again");
    other.join("again");
    a.expect("presence");
    write_ticks(&mut a, "again", 1, 2);
    let joined = a.join("again");
    assert_eq!(joined["tick"], 2, "{joined}");
    assert_eq!(
        joined["state"],
        json!({"k": {"v1": 1, "v2": 2}}),
        "{joined}"
    );
    assert_eq!(
        ids(&joined["members"]).len(),
        2,
        "no double membership: {joined}"
    );
    let joined = a.join_since("again", 1, Some(0));
    assert_eq!(joined["resumed"], true, "{joined}");
    let ticks: Vec<Value> = deltas_until_quiet(&mut a)
        .iter()
        .map(|d| d["tick"].clone())
        .collect();
    assert_eq!(ticks, vec![json!(2)]);
    // The other member saw no presence for the re-joins (nobody came or went).
    let seen = other.sync();
    assert!(
        seen.iter().all(|m| m["t"] == "delta"),
        "re-joins are not arrivals: {seen:?}"
    );
}

/// Opens clients until one is accepted by each of the two shards.
fn one_client_per_shard(server: &Server) -> [Client; 2] {
    let mut found: [Option<Client>; 2] = [None, None];
    for attempt in 0..200 {
        let enc = if attempt % 2 == 0 {
            Enc::Json
        } else {
            Enc::Msgpack
        };
        let mut client = server.client(enc);
        // The member id, hence the accepting shard, is only told by a `joined`.
        client.join(&format!("probe-{attempt}"));
        let shard = member_shard(client.you())
            .unwrap_or_else(|| panic!("member id {:?} is not s{{SHARD}}c{{N}}", client.you()));
        assert!(shard < 2, "shard {shard} of 2");
        if found[shard].is_none() {
            found[shard] = Some(client);
        }
        if found.iter().all(Option::is_some) {
            let [s0, s1] = found;
            return [s0.expect("found"), s1.expect("found")];
        }
    }
    panic!("200 connections were all accepted by one shard");
}

/// A room id owned by `shard` of 2.
fn room_on(shard: usize, tag: &str) -> String {
    (0..1000)
        .map(|i| format!("{tag}-{i}"))
        .find(|room| owner_shard(room, 2) == shard)
        .expect("some room id hashes to each shard")
}

/// One round of traffic in `room`: `writer` sends an op, a msg and a conflicting op; checks
/// what both sides see.
fn exchange(room: &str, round: u64, writer: &mut Client, reader: &mut Client) {
    let seq = round + 1;
    writer.op(
        room,
        seq,
        json!([["set", ["by", seq.to_string()], seq], ["inc", ["n"], 1]]),
    );
    let delta = writer.expect("delta");
    assert_eq!(delta["tick"], seq, "{delta}");
    let ack = writer.expect("ack");
    assert_eq!(ack["seq"], seq);
    assert_eq!(ack["tick"], seq);
    let seen = reader.expect("delta");
    assert_eq!(seen["ops"], delta["ops"]);
    assert_eq!(seen["tick"], seq);

    let writer_you = writer.you().to_owned();
    writer.send(json!({"t": "msg", "room": room, "data": {"round": round}}));
    let msg = reader.expect("msg");
    assert_eq!(msg["from"], writer_you.as_str());
    assert_eq!(msg["data"], json!({"round": round}));
    let before = writer.sync();
    assert!(
        before.is_empty(),
        "the sender gets nothing back: {before:?}"
    );

    let error = writer.op_error(room, 100 + seq, json!([["push", ["n"], 1]]));
    assert_eq!(error["code"], "conflict", "{error}");
    assert_eq!(error["room"], room);
}

#[test]
fn cross_shard_rooms_behave_like_local_ones() {
    let server = Server::start(&["--shards", "2"]);
    let [mut s0, mut s1] = one_client_per_shard(&server);
    for owner in 0..2 {
        let room = room_on(owner, "xs");
        let (first, second) = if owner == 0 {
            (&mut s0, &mut s1)
        } else {
            (&mut s1, &mut s0)
        };
        // `first` is local to the room's owner, `second` remote; then the roles swap.
        let joined = first.join(&room);
        assert_eq!(joined["tick"], 0);
        let joined = second.join(&room);
        let (first_you, second_you) = (first.you().to_owned(), second.you().to_owned());
        assert_eq!(
            ids(&joined["members"]),
            sorted(vec![first_you.clone(), second_you.clone()])
        );
        let presence = first.expect("presence");
        assert_eq!(presence["joined"], json!([second_you]));
        second.assert_quiet("no presence about itself");

        exchange(&room, 0, first, second);
        exchange(&room, 1, second, first);

        let fresh = server.client(Enc::Json).join(&room);
        assert_eq!(fresh["state"], json!({"by": {"1": 1, "2": 2}, "n": 2}));
        assert_eq!(fresh["tick"], 2);

        // The fresh snapshot client came and went: both members hear of it.
        second.send(json!({"t": "leave", "room": room}));
        second.next_of("left");
        let gone = json!([second_you]);
        first.recv_until(|m| m["t"] == "presence" && m["left"] == gone);
        let error = second.op_error(&room, 999, json!([]));
        assert_eq!(error["code"], "not_joined");
        first.send(json!({"t": "leave", "room": room}));
        first.next_of("left");
    }
}

/// With one-message channels between shards, a burst of remote ops waits in order on the
/// sender's side: nothing is lost or reordered, and `/metrics` shows the waiting.
#[test]
fn a_full_shard_channel_queues_in_order() {
    const OPS: u64 = 200;
    let server = Server::start(&[
        "--shards",
        "2",
        "--mesh-capacity",
        "1",
        "--rate-limit",
        "100000",
        "--rate-burst",
        "100000",
    ]);
    let [mut local, mut remote] = one_client_per_shard(&server);
    let room = room_on(0, "narrow");
    let tick = local.join(&room)["tick"].as_u64().expect("tick");
    remote.join(&room);
    local.expect("presence");
    remote.send_batch((1..=OPS).map(
        |seq| json!({"t": "op", "room": room, "seq": seq, "ops": [["push", ["order"], seq]]}),
    ));
    let mut next_ack = 1;
    while next_ack <= OPS {
        let message = remote.recv();
        if message["t"] == "ack" {
            assert_eq!(message["seq"], next_ack, "acks in request order");
            next_ack += 1;
        }
    }
    let (_, last) = count_deltas(&mut local, tick);
    let fresh = server.client(Enc::Msgpack).join(&room);
    assert_eq!(fresh["tick"], last);
    let order: Vec<u64> = (1..=OPS).collect();
    assert_eq!(fresh["state"]["order"], json!(order));
    // The mesh counters reach /metrics within a second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let (_, _, metrics) = common::http_get(server.addr(), "/metrics");
        let outboxed: f64 = common::metric_samples(&metrics, "kasagi_mesh_outboxed_total")
            .iter()
            .sum();
        if outboxed > 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no message waited for a full channel:\n{metrics}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn cross_shard_resume_and_disconnect_presence() {
    let server = Server::start(&["--shards", "2"]);
    let [mut s0, s1] = one_client_per_shard(&server);
    let room = room_on(0, "rs");
    s0.join(&room);
    let mut remote = s1;
    let mut mirror = Mirror::from_joined(&remote.join(&room));
    let remote_you = remote.you().to_owned();
    s0.expect("presence");
    s0.op_acked(&room, 1, json!([["set", ["a"], 1]]));
    mirror
        .apply_delta(&remote.expect("delta"))
        .expect("gapless");
    drop(remote);
    let presence = s0.expect("presence");
    assert_eq!(
        presence["left"],
        json!([remote_you]),
        "a remote disconnect is a departure"
    );
    s0.op_acked(&room, 2, json!([["set", ["b"], 2]]));

    let [_, mut again] = one_client_per_shard(&server);
    let joined = again.join_since(&room, mirror.tick, Some(mirror.epoch));
    assert_eq!(joined["resumed"], true, "{joined}");
    for delta in deltas_until_quiet(&mut again) {
        mirror.apply_delta(&delta).expect("resent deltas apply");
    }
    assert_eq!(mirror.state, json!({"a": 1, "b": 2}));
}

/// The deltas `watcher` gets until its sync point, checked gapless from `tick`; returns how
/// many there were and the last tick.
fn count_deltas(watcher: &mut Client, mut tick: u64) -> (usize, u64) {
    let deltas: Vec<Value> = watcher
        .sync()
        .into_iter()
        .filter(|m| m["t"] == "delta")
        .collect();
    for delta in &deltas {
        tick += 1;
        assert_eq!(delta["tick"], tick, "gapless ticks: {deltas:?}");
    }
    (deltas.len(), tick)
}

/// PROTOCOL.md's coalescing: under light load each op gets a delta of its own; ops that
/// arrive together (one read) share one delta per executor turn, and are all in it.
#[test]
fn ops_alone_get_a_delta_each_and_ops_read_together_share_one() {
    const OPS: u64 = 100;
    let server = Server::start(&["--rate-limit", "100000", "--rate-burst", "100000"]);
    let mut writer = server.client(Enc::Msgpack);
    writer.join("coalesce");
    let mut watcher = server.client(Enc::Json);
    let tick = watcher.join("coalesce")["tick"].as_u64().expect("tick");

    for seq in 1..=20 {
        writer.op_acked("coalesce", seq, json!([["inc", ["n"], 1]]));
    }
    let (alone, tick) = count_deltas(&mut watcher, tick);
    assert_eq!(alone, 20, "one op at a time: a delta each");

    writer.send_batch((1..=OPS).map(
        |i| json!({"t": "op", "room": "coalesce", "seq": 100 + i, "ops": [["inc", ["n"], 1]]}),
    ));
    let mut acked = 0;
    while acked < OPS {
        let message = writer.recv();
        if message["t"] == "ack" {
            acked += 1;
        } else {
            assert_eq!(message["t"], "delta", "{message}");
        }
    }
    let (together, last) = count_deltas(&mut watcher, tick);
    eprintln!(
        "coalescing: {alone} deltas for {alone} ops alone, {together} for {OPS} ops in one write"
    );
    assert!(
        (1..=OPS as usize / 10).contains(&together),
        "{OPS} ops in one write came as {together} deltas"
    );
    let fresh = server.client(Enc::Msgpack).join("coalesce");
    assert_eq!(fresh["tick"], last);
    assert_eq!(fresh["state"]["n"], 20 + OPS);
}

/// The requests of [`pipelined_requests_in_order`], written in one burst.
fn pipelined_burst(room: &str) -> [Value; 8] {
    [
        json!({"t": "join", "room": room}),
        json!({"t": "op", "room": room, "seq": 1, "ops": [["set", ["a"], 1]]}),
        json!({"t": "op", "room": room, "seq": 2, "ops": [["push", ["a"], 2]]}),
        json!({"t": "op", "room": room, "seq": 3, "ops": [["set", ["b"], 2]]}),
        json!({"t": "leave", "room": room}),
        json!({"t": "op", "room": room, "seq": 4, "ops": [["set", ["c"], 3]]}),
        json!({"t": "join", "room": room}),
        json!({"t": "op", "room": room, "seq": 5, "ops": [["inc", ["b"], 1]]}),
    ]
}

/// Requests written in one burst, without waiting for answers, are handled in order: a `join`
/// is in effect for the `op` right behind it, a `leave` for the `op` behind that, and the
/// connection ends up a member again.
fn pipelined_requests_in_order(server: &Server, client: &mut Client, room: &str) {
    for request in pipelined_burst(room) {
        client.send(request);
    }
    let mut joined = Vec::new();
    let mut answers: BTreeMap<u64, Value> = BTreeMap::new();
    let mut left = 0;
    let mut seen = Vec::new();
    while joined.len() < 2 || left < 1 || answers.len() < 5 {
        let message = match client.read_event(common::RECV_TIMEOUT) {
            Some(common::Event::Msg(message)) => message,
            other => panic!(
                "burst on {room}: got {other:?}; still waiting (joined {}, left {left}, answers {:?}); seen {seen:?}",
                joined.len(),
                answers.keys().collect::<Vec<_>>()
            ),
        };
        seen.push(message.clone());
        match message["t"].as_str() {
            Some("joined") => joined.push(message),
            Some("left") => left += 1,
            Some("ack" | "error") => {
                let seq = message["seq"].as_u64().expect("answers to ops carry seq");
                assert!(
                    answers.insert(seq, message).is_none(),
                    "two answers for {seq}"
                );
            }
            _ => {}
        }
    }
    let kind = |seq: u64| answers[&seq]["t"].as_str().unwrap_or("?").to_owned();
    assert_eq!(kind(1), "ack", "{seen:?}");
    assert_eq!(kind(2), "error", "{seen:?}");
    assert_eq!(
        answers[&2]["code"], "conflict",
        "push on an integer: {seen:?}"
    );
    assert_eq!(kind(3), "ack", "{seen:?}");
    assert_eq!(kind(4), "error", "{seen:?}");
    assert_eq!(
        answers[&4]["code"], "not_joined",
        "op after leave: {seen:?}"
    );
    assert_eq!(kind(5), "ack", "op after the re-join: {seen:?}");
    assert_eq!(joined[1]["state"], json!({"a": 1, "b": 2}), "{seen:?}");
    // Still a member: a later op comes back as delta then ack.
    let (before, ack) = client.op_acked(room, 6, json!([["set", ["after"], true]]));
    assert!(
        before
            .iter()
            .any(|m| m["t"] == "delta" && m["tick"] == ack["tick"]),
        "a member gets the delta of its own op: {before:?}"
    );
    let fresh = server.client(Enc::Msgpack).join(room);
    assert_eq!(fresh["state"], json!({"a": 1, "b": 3, "after": true}));
}

#[test]
fn pipelined_requests_are_handled_in_order_locally() {
    let server = Server::start(&[]);
    let mut client = server.client(Enc::Json);
    pipelined_requests_in_order(&server, &mut client, "pipe");
}

#[test]
fn pipelined_requests_are_handled_in_order_across_shards() {
    let server = Server::start(&["--shards", "2"]);
    let [s0, s1] = one_client_per_shard(&server);
    let (mut s0, mut s1) = (s0, s1);
    pipelined_requests_in_order(&server, &mut s0, &room_on(1, "pipe"));
    pipelined_requests_in_order(&server, &mut s1, &room_on(0, "pipe"));
}

#[test]
fn deltas_and_msgs_reach_only_members() {
    let server = Server::start(&["--shards", "2"]);
    let mut a = server.client(Enc::Json);
    let mut b = server.client(Enc::Msgpack);
    a.join("mine");
    b.join("mine");
    b.join("theirs");
    a.expect("presence");
    b.op_acked("theirs", 1, json!([["set", ["x"], 1]]));
    b.send(json!({"t": "msg", "room": "theirs", "data": "psst"}));
    a.assert_quiet("a is not in `theirs`");
    b.send(json!({"t": "leave", "room": "mine"}));
    b.next_of("left");
    a.next_of("presence");
    a.op_acked("mine", 1, json!([["set", ["y"], 1]]));
    a.send(json!({"t": "msg", "room": "mine", "data": "hello?"}));
    let seen = b.sync();
    assert!(
        seen.iter().all(|m| m["room"] != "mine"),
        "after leaving, nothing of the room arrives: {seen:?}"
    );
}

#[test]
fn empty_room_survives_the_grace_period_then_is_dropped() {
    let server = Server::start(&["--room-grace", "1s"]);
    let mut a = server.client(Enc::Json);
    a.join("grace");
    a.op_acked("grace", 1, json!([["set", ["kept"], true]]));
    drop(a);
    // Right after the last member left, the room is still there.
    let mut b = server.client(Enc::Json);
    let joined = b.join("grace");
    assert_eq!(joined["state"], json!({"kept": true}), "{joined}");
    drop(b);
    // Past the grace period it is gone. Polled on /metrics (a probe join would itself keep
    // the room alive), since no message announces the drop.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let (status, _, body) = common::http_get(server.addr(), "/metrics");
        assert_eq!(status, 200);
        let rooms: f64 = body
            .lines()
            .filter(|line| line.starts_with("kasagi_rooms{") || line.starts_with("kasagi_rooms "))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if rooms == 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "an empty room outlived a 1 s grace by 15 s: {body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let joined = server.client(Enc::Msgpack).join("grace");
    assert_eq!(joined["tick"], 0, "{joined}");
    assert_eq!(joined["state"], json!({}), "{joined}");
}

#[test]
fn answers_follow_request_order() {
    // "Requests of one connection are handled in the order sent": a client reading the
    // answers of a burst expects them in that order (ack 1 before error 2, acks before
    // `left`).
    let server = Server::start(&[]);
    let mut client = server.client(Enc::Json);
    for request in pipelined_burst("order") {
        client.send(request);
    }
    let mut kinds = Vec::new();
    let mut seen = Vec::new();
    while kinds.len() < 8 {
        let message = client.recv();
        seen.push(message.clone());
        let kind = message["t"].as_str().unwrap_or("?").to_owned();
        if kind != "delta" && kind != "presence" {
            kinds.push(match message["seq"].as_u64() {
                Some(seq) => format!("{kind} {seq}"),
                None => kind,
            });
        }
    }
    assert_eq!(
        kinds,
        ["joined", "ack 1", "error 2", "ack 3", "left", "error 4", "joined", "ack 5"],
        "answers out of request order: {seen:?}"
    );
}
