//! Every message type and error class of PROTOCOL.md, in both encodings, through the real
//! binary.

mod common;

use common::{bin, now_micros, to_msgpack, Client, Enc, Mirror, Server};
use serde_json::{json, Value};
use tungstenite::Message;

/// Runs a scenario once per encoding, as two tests (`name::json`, `name::msgpack`).
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn json() {
                    super::$name(super::Enc::Json)
                }
                #[test]
                fn msgpack() {
                    super::$name(super::Enc::Msgpack)
                }
            }
        )*
    };
}

both!(
    join_gives_snapshot_tick_and_members,
    delta_reaches_sender_before_ack,
    msg_relays_to_others_not_sender,
    ping_answers_pong_with_id_and_time,
    leave_answers_left_and_presence,
    not_joined_before_join,
    bad_requests_keep_the_connection_open,
    conflicts_leave_the_state_unchanged,
    set_del_push_semantics,
    too_large_limits,
    rejection_is_atomic,
    unknown_keys_are_ignored,
    noop_message_acked_with_current_tick,
    inc_reaches_clients_as_set,
    u64_and_i64_extremes,
    undecodable_payload_closes_1007,
    rooms_per_connection_limit,
    members_per_room_room_full,
    rate_limit_floods_get_rate_limited,
    sustained_rate_abuse_closes_1008,
);

fn other(enc: Enc) -> Enc {
    match enc {
        Enc::Json => Enc::Msgpack,
        Enc::Msgpack => Enc::Json,
    }
}

fn sorted_strings(value: &Value) -> Vec<String> {
    let mut items: Vec<String> = value
        .as_array()
        .unwrap_or_else(|| panic!("expected an array of ids, got {value}"))
        .iter()
        .map(|v| v.as_str().expect("member ids are strings").to_owned())
        .collect();
    items.sort();
    items
}

/// A fresh connection's snapshot of `room`.
fn snapshot(server: &Server, enc: Enc, room: &str) -> Value {
    let mut fresh = server.client(enc);
    fresh.join(room)
}

fn join_gives_snapshot_tick_and_members(enc: Enc) {
    let server = Server::start(&[]);
    let mut a = server.client(enc);
    let joined = a.join("arena-7");
    assert_eq!(joined["tick"], 0, "{joined}");
    assert_eq!(joined["epoch"], 0, "{joined}");
    assert_eq!(joined["state"], json!({}), "{joined}");
    assert!(
        joined.get("resumed").is_none_or(|r| r == false),
        "first join is not a resume: {joined}"
    );
    assert!(
        joined.get("resync").is_none_or(|r| r == false),
        "an asked join is not a resync: {joined}"
    );
    let you = a.you().to_owned();
    assert!(common::is_member_id(&you), "member id {you:?}");
    assert_eq!(sorted_strings(&joined["members"]), vec![you.clone()]);

    a.op_acked("arena-7", 1, json!([["set", ["players", "p1", "x"], 10]]));
    let mut b = server.client(other(enc));
    let joined = b.join("arena-7");
    assert_eq!(joined["tick"], 1, "{joined}");
    assert_eq!(joined["state"], json!({"players": {"p1": {"x": 10}}}));
    let b_you = b.you().to_owned();
    assert_ne!(b_you, you, "member ids are unique");
    let mut expected = vec![you, b_you];
    expected.sort();
    assert_eq!(sorted_strings(&joined["members"]), expected);
}

fn delta_reaches_sender_before_ack(enc: Enc) {
    let server = Server::start(&[]);
    let mut a = server.client(enc);
    let mut b = server.client(other(enc));
    a.join("r");
    b.join("r");
    a.expect("presence");

    a.op("r", 7, json!([["set", ["a"], 1]]));
    let delta = a.expect("delta");
    assert_eq!(delta["room"], "r");
    assert_eq!(delta["tick"], 1);
    assert_eq!(delta["epoch"], 0);
    assert_eq!(delta["ops"], json!([["set", ["a"], 1]]));
    let ack = a.expect("ack");
    assert_eq!(ack, json!({"t": "ack", "room": "r", "seq": 7, "tick": 1}));
    let seen = b.expect("delta");
    assert_eq!(seen["tick"], 1);
    assert_eq!(seen["ops"], json!([["set", ["a"], 1]]));

    // A multi-op message is one delta; its ops rebuild the same state everywhere.
    let joined = b.join("r");
    let mut mirror = Mirror::from_joined(&joined);
    a.op(
        "r",
        8,
        json!([["set", ["b"], "x"], ["del", ["a"]], ["push", ["l"], 1]]),
    );
    let delta = a.expect("delta");
    assert_eq!(delta["tick"], 2);
    let ack = a.expect("ack");
    assert_eq!(ack["seq"], 8);
    assert_eq!(ack["tick"], 2);
    let seen = b.expect("delta");
    mirror.apply_delta(&seen).expect("delta applies");
    assert_eq!(mirror.state, json!({"b": "x", "l": [1]}));
    assert_eq!(snapshot(&server, enc, "r")["state"], mirror.state);
}

fn msg_relays_to_others_not_sender(enc: Enc) {
    let server = Server::start(&[]);
    let mut a = server.client(enc);
    let mut b = server.client(enc);
    let mut c = server.client(other(enc));
    a.join("chat");
    b.join("chat");
    c.join("chat");
    let a_you = a.you().to_owned();
    let data = json!({"hello": [1, 2, {"deep": null}], "n": -3, "s": "ünï"});
    a.send(json!({"t": "msg", "room": "chat", "data": data}));
    for receiver in [&mut b, &mut c] {
        let msg = receiver.next_of("msg");
        assert_eq!(msg["room"], "chat");
        assert_eq!(msg["from"], a_you.as_str());
        assert_eq!(msg["data"], data);
    }
    let before = a.sync();
    assert!(
        before.iter().all(|m| m["t"] != "msg"),
        "the sender got its own msg: {before:?}"
    );
    // `data` may be any value, a scalar included.
    b.send(json!({"t": "msg", "room": "chat", "data": 42}));
    let msg = a.next_of("msg");
    assert_eq!(msg["data"], 42);
    assert_eq!(msg["from"], b.you());
}

fn ping_answers_pong_with_id_and_time(enc: Enc) {
    let server = Server::start(&[]);
    let mut a = server.client(enc);
    for id in [
        json!("abc"),
        json!(0),
        json!({"k": [1, 2]}),
        json!(u64::MAX),
        json!(null),
    ] {
        a.send(json!({"t": "ping", "id": id}));
        let pong = a.expect("pong");
        assert_eq!(pong["id"], id, "{pong}");
        let time = pong["time"]
            .as_u64()
            .unwrap_or_else(|| panic!("pong.time: {pong}"));
        let now = now_micros();
        assert!(
            time.abs_diff(now) < 10_000_000,
            "pong.time {time} is not near now {now} (µs since the epoch)"
        );
    }
    a.send(json!({"t": "ping"}));
    let pong = a.expect("pong");
    assert_eq!(
        pong.get("id"),
        Some(&Value::Null),
        "a ping without id gets `id: nil`: {pong}"
    );
}

fn leave_answers_left_and_presence(enc: Enc) {
    let server = Server::start(&[]);
    let mut a = server.client(enc);
    let mut b = server.client(enc);
    a.join("r");
    b.join("r");
    a.expect("presence");
    let a_you = a.you().to_owned();
    a.send(json!({"t": "leave", "room": "r"}));
    let left = a.recv();
    assert_eq!(
        left["t"], "left",
        "{a_you} left: the answer is `left`, and no presence about itself: {left}"
    );
    assert_eq!(left["room"], "r");
    assert!(
        left.get("reason").is_none(),
        "an asked leave has no reason: {left}"
    );
    let presence = b.expect("presence");
    assert_eq!(presence["room"], "r");
    assert_eq!(presence["left"], json!([a_you]));
    assert_eq!(presence["joined"], json!([]));
    // After leaving, the room is not joined any more.
    let error = a.op_error("r", 1, json!([["set", ["x"], 1]]));
    assert_eq!(error["code"], "not_joined", "{error}");
    a.send(json!({"t": "leave", "room": "r"}));
    assert_eq!(a.expect("error")["code"], "not_joined");
}

fn not_joined_before_join(enc: Enc) {
    let server = Server::start(&[]);
    let mut a = server.client(enc);
    a.send(json!({"t": "leave", "room": "never"}));
    let error = a.expect("error");
    assert_eq!(error["code"], "not_joined", "{error}");
    assert_eq!(error["room"], "never", "{error}");
    assert!(error["message"].is_string(), "{error}");

    let error = a.op_error("never", 5, json!([["set", ["x"], 1]]));
    assert_eq!(error["code"], "not_joined", "{error}");
    assert_eq!(error["room"], "never");
    assert_eq!(error["seq"], 5);

    a.send(json!({"t": "msg", "room": "never", "data": 1}));
    let error = a.expect("error");
    assert_eq!(error["code"], "not_joined", "{error}");
    assert_eq!(error["room"], "never");
    a.assert_quiet("after not_joined errors");
}

fn bad_requests_keep_the_connection_open(enc: Enc) {
    let server = Server::start(&[]);
    let mut a = server.client(enc);
    a.join("r");
    let long_room = "x".repeat(129);
    let requests = [
        json!([1, 2]),
        json!(42),
        json!("join"),
        json!(null),
        json!({}),
        json!({"room": "r"}),
        json!({"t": 5}),
        json!({"t": "dance"}),
        json!({"t": "join"}),
        json!({"t": "join", "room": 5}),
        json!({"t": "join", "room": ""}),
        json!({"t": "join", "room": "has space"}),
        json!({"t": "join", "room": "slash/room"}),
        json!({"t": "join", "room": "é"}),
        json!({"t": "join", "room": long_room}),
        json!({"t": "join", "room": "r", "since": "x"}),
        json!({"t": "join", "room": "r", "since": -1}),
        json!({"t": "leave", "room": 7}),
        json!({"t": "op", "room": "r", "ops": []}),
        json!({"t": "op", "room": "r", "seq": -1, "ops": []}),
        json!({"t": "op", "room": "r", "seq": "1", "ops": []}),
        json!({"t": "op", "room": "r", "seq": 1.5, "ops": []}),
        json!({"t": "op", "room": "r", "seq": 1}),
        json!({"t": "op", "room": "r", "seq": 1, "ops": "set"}),
    ];
    for request in requests {
        a.send(request.clone());
        let error = a.recv();
        assert_eq!(error["t"], "error", "{request} -> {error}");
        assert_eq!(error["code"], "bad_request", "{request} -> {error}");
    }
    // Malformed ops inside a well-formed `op` message: the error names the room and seq.
    let bad_ops = [
        json!([["frob", ["a"], 1]]),
        json!([["set", ["a"]]]),
        json!([["set", ["a"], 1, 2]]),
        json!([["del"]]),
        json!([["del", ["a"], 1]]),
        json!(["set", ["a"], 1]),
        json!([["set", "a", 1]]),
        json!([["set", [-1], 1]]),
        json!([["set", [1.5], 1]]),
        json!([["set", [true], 1]]),
        json!([["set", [["a"]], 1]]),
        json!([["set", [null], 1]]),
        json!([["inc", ["n"], "5"]]),
        json!([["inc", ["n"], null]]),
        json!([[]]),
        json!([[5, ["a"], 1]]),
    ];
    for (i, ops) in bad_ops.into_iter().enumerate() {
        let seq = 100 + i as u64;
        let error = a.op_error("r", seq, ops.clone());
        assert_eq!(error["code"], "bad_request", "{ops} -> {error}");
        assert_eq!(error["seq"], seq, "{ops} -> {error}");
        assert_eq!(error["room"], "r", "{ops} -> {error}");
    }
    a.assert_quiet("after bad requests");
    // Nothing was applied, and the connection still works.
    let joined = snapshot(&server, enc, "r");
    assert_eq!(joined["tick"], 0);
    assert_eq!(joined["state"], json!({}));
    a.op_acked("r", 1, json!([["set", ["ok"], true]]));
    // The longest valid room id and every allowed character.
    let max_room = "A".repeat(128);
    a.join(&max_room);
    a.join("Az09_.:-");
}

fn conflicts_leave_the_state_unchanged(enc: Enc) {
    let server = Server::start(&[]);
    let mut a = server.client(enc);
    a.join("r");
    let seed = json!({
        "s": "str",
        "m": {"k": 1},
        "arr": [1, 2],
        "u": u64::MAX,
        "neg": i64::MIN,
        "f": 1.5,
    });
    let (_, ack) = a.op_acked("r", 1, json!([["set", [], seed]]));
    assert_eq!(ack["tick"], 1);
    let conflicts = [
        json!([["set", ["s", "x"], 1]]),
        json!([["set", ["s", 0], 1]]),
        json!([["set", ["m", 0], 1]]),
        json!([["set", ["arr", "k"], 1]]),
        json!([["set", ["arr", 3], 1]]),
        json!([["set", ["arr", 5, "x"], 1]]),
        json!([["inc", ["s"], 1]]),
        json!([["inc", ["m"], 1]]),
        json!([["push", ["m"], 1]]),
        json!([["push", ["s"], 1]]),
        json!([["push", ["u"], 1]]),
        json!([["inc", ["u"], 1]]),
        json!([["inc", ["neg"], -1]]),
        json!([["set", [], 5]]),
        json!([["set", [], [1]]]),
        json!([["inc", [], 1]]),
        json!([["push", [], 1]]),
    ];
    for (i, ops) in conflicts.into_iter().enumerate() {
        let seq = 10 + i as u64;
        let error = a.op_error("r", seq, ops.clone());
        assert_eq!(error["code"], "conflict", "{ops} -> {error}");
        assert_eq!(error["seq"], seq, "{ops} -> {error}");
        assert_eq!(error["room"], "r", "{ops} -> {error}");
    }
    // `del` is never a conflict: unresolvable paths are no-ops acked at the current tick.
    for (i, ops) in [
        json!([["del", ["s", "x"]]]),
        json!([["del", ["arr", 9]]]),
        json!([["del", ["m", 0]]]),
        json!([["del", ["arr", "k"]]]),
        json!([["del", ["nope", "deeper"]]]),
    ]
    .into_iter()
    .enumerate()
    {
        let seq = 50 + i as u64;
        a.op("r", seq, ops.clone());
        let ack = a.recv();
        assert_eq!(ack["t"], "ack", "{ops} -> {ack}");
        assert_eq!(ack["tick"], 1, "{ops} -> {ack}");
    }
    a.assert_quiet("no delta after conflicts and no-op dels");
    let joined = snapshot(&server, other(enc), "r");
    assert_eq!(joined["tick"], 1);
    assert_eq!(joined["state"], seed);
}

fn set_del_push_semantics(enc: Enc) {
    let server = Server::start(&[]);
    let mut a = server.client(enc);
    let mut b = server.client(other(enc));
    let mut mirror = Mirror::from_joined(&a.join("r"));
    b.join("r");
    a.expect("presence");
    let steps = [
        (json!([["set", ["arr"], [1]]]), json!({"arr": [1]})),
        // `set` at index == length appends.
        (json!([["set", ["arr", 1], 2]]), json!({"arr": [1, 2]})),
        (json!([["set", ["arr", 0], 0]]), json!({"arr": [0, 2]})),
        // Later items shift down.
        (json!([["del", ["arr", 0]]]), json!({"arr": [2]})),
        (
            json!([["push", ["list"], "a"]]),
            json!({"arr": [2], "list": ["a"]}),
        ),
        (
            json!([["push", ["list"], {"b": 1}]]),
            json!({"arr": [2], "list": ["a", {"b": 1}]}),
        ),
        (
            json!([["set", ["list", 1, "b"], 2]]),
            json!({"arr": [2], "list": ["a", {"b": 2}]}),
        ),
        // Missing parent maps are created, for set, inc and push.
        (
            json!([
                ["set", ["p", "q", "r"], true],
                ["inc", ["c", "d"], 3],
                ["push", ["e", "f"], null]
            ]),
            json!({"arr": [2], "list": ["a", {"b": 2}], "p": {"q": {"r": true}}, "c": {"d": 3}, "e": {"f": [null]}}),
        ),
        (json!([["del", []]]), json!({})),
        (
            json!([["set", [], {"fresh": [1, 2, 3]}]]),
            json!({"fresh": [1, 2, 3]}),
        ),
        (json!([["del", ["fresh", 1]]]), json!({"fresh": [1, 3]})),
    ];
    for (i, (ops, expected)) in steps.into_iter().enumerate() {
        let seq = i as u64 + 1;
        let (before, ack) = a.op_acked("r", seq, ops.clone());
        let delta = before
            .iter()
            .find(|m| m["t"] == "delta")
            .unwrap_or_else(|| panic!("no delta before the ack of {ops}: {before:?}"));
        assert_eq!(ack["tick"], delta["tick"], "the ack names its delta's tick");
        mirror.apply_delta(delta).expect("delta applies");
        assert_eq!(mirror.state, expected, "after {ops}");
        let seen = b.expect("delta");
        assert_eq!(seen["tick"], delta["tick"]);
    }
    assert_eq!(snapshot(&server, enc, "r")["state"], mirror.state);
}

fn too_large_limits(enc: Enc) {
    let server = Server::start(&[
        "--max-ops-per-message",
        "4",
        "--max-path-depth",
        "3",
        "--max-state-bytes",
        "4096",
    ]);
    let mut a = server.client(enc);
    a.join("r");
    let four: Vec<Value> = (0..4)
        .map(|i| json!(["set", [format!("k{i}")], i]))
        .collect();
    let five: Vec<Value> = (0..5)
        .map(|i| json!(["set", [format!("j{i}")], i]))
        .collect();
    a.op_acked("r", 1, json!(four));
    let error = a.op_error("r", 2, json!(five));
    assert_eq!(
        error["code"], "too_large",
        "5 ops over a limit of 4: {error}"
    );
    assert_eq!(error["seq"], 2);

    a.op_acked("r", 3, json!([["set", ["a", "b", "c"], 1]]));
    let error = a.op_error("r", 4, json!([["set", ["a", "b", "c", "d"], 1]]));
    assert_eq!(
        error["code"], "too_large",
        "path of 4 over a depth of 3: {error}"
    );

    a.op_acked("r", 5, json!([["set", ["small"], "x".repeat(200)]]));
    let error = a.op_error("r", 6, json!([["set", ["big"], "x".repeat(8000)]]));
    assert_eq!(
        error["code"], "too_large",
        "state above 4096 bytes: {error}"
    );
    // Growing the state by many small steps hits the same bound.
    let mut refused = None;
    for seq in 10..100u64 {
        a.op("r", seq, json!([["push", ["grow"], "y".repeat(100)]]));
        let answer = a.next_of_either();
        if answer["t"] == "error" {
            refused = Some(answer);
            break;
        }
    }
    let refused = refused.expect("pushing 9 KB into a 4 KB state must fail");
    assert_eq!(refused["code"], "too_large", "{refused}");

    a.assert_quiet("after too_large errors");
    let state = &snapshot(&server, enc, "r")["state"];
    assert!(
        state.get("j0").is_none() && state.get("big").is_none(),
        "{state}"
    );
    assert!(state["a"]["b"].get("c").is_some(), "{state}");
}

/// Helper trait: the `ack` or `error` answering the last `op`, skipping its delta.
trait NextAnswer {
    fn next_of_either(&mut self) -> Value;
}

impl NextAnswer for Client {
    fn next_of_either(&mut self) -> Value {
        self.recv_until(|m| m["t"] == "ack" || m["t"] == "error").0
    }
}

fn rejection_is_atomic(enc: Enc) {
    let server = Server::start(&[]);
    let mut a = server.client(enc);
    a.join("r");
    let error = a.op_error(
        "r",
        1,
        json!([["set", ["a"], 1], ["set", ["b"], {"x": 1}], ["push", ["a"], 3]]),
    );
    assert_eq!(error["code"], "conflict", "{error}");
    assert_eq!(error["seq"], 1);
    let error = a.op_error(
        "r",
        2,
        json!([["set", ["a"], 1], ["inc", ["n"], 1], ["frob", ["a"], 3]]),
    );
    assert_eq!(error["code"], "bad_request", "{error}");
    a.assert_quiet("a rejected message makes no delta");
    let joined = snapshot(&server, other(enc), "r");
    assert_eq!(joined["tick"], 0, "{joined}");
    assert_eq!(joined["state"], json!({}), "{joined}");
}

fn unknown_keys_are_ignored(enc: Enc) {
    let server = Server::start(&[]);
    let mut a = server.client(enc);
    a.send(json!({"t": "join", "room": "r", "zzz": {"nested": [1]}, "extra": true}));
    let joined = a.expect("joined");
    assert_eq!(joined["room"], "r");
    a.send(json!({"t": "op", "room": "r", "seq": 1, "ops": [["set", ["k"], 1]], "hint": "x"}));
    a.expect("delta");
    assert_eq!(a.expect("ack")["seq"], 1);
    a.send(json!({"t": "ping", "id": 3, "nonce": [1, 2, 3]}));
    assert_eq!(a.expect("pong")["id"], 3);
    a.send(json!({"t": "leave", "room": "r", "why": "bored"}));
    a.expect("left");
}

fn noop_message_acked_with_current_tick(enc: Enc) {
    let server = Server::start(&[]);
    let mut a = server.client(enc);
    a.join("r");
    a.op_acked("r", 1, json!([["set", ["a"], 1]]));
    a.op("r", 2, json!([]));
    let ack = a.expect("ack");
    assert_eq!(ack["seq"], 2);
    assert_eq!(
        ack["tick"], 1,
        "an empty op message is acked with the current tick"
    );
    a.op("r", 3, json!([["del", ["missing"]]]));
    let ack = a.expect("ack");
    assert_eq!(ack["seq"], 3);
    assert_eq!(ack["tick"], 1, "a del of nothing changes nothing");
    a.assert_quiet("no delta for no-op messages");
    assert_eq!(snapshot(&server, enc, "r")["tick"], 1);
}

fn inc_reaches_clients_as_set(enc: Enc) {
    let server = Server::start(&[]);
    let mut a = server.client(enc);
    let mut b = server.client(other(enc));
    a.join("r");
    b.join("r");
    a.expect("presence");
    let steps: [(Value, Value); 4] = [
        (json!(5), json!(5)),
        (json!(2), json!(7)),
        (json!(-10), json!(-3)),
        (json!(0.5), json!(-2.5)),
    ];
    for (i, (by, expected)) in steps.into_iter().enumerate() {
        let seq = i as u64 + 1;
        let (before, _) = a.op_acked("r", seq, json!([["inc", ["score"], by]]));
        let delta = before
            .iter()
            .find(|m| m["t"] == "delta")
            .unwrap_or_else(|| panic!("no delta before ack {seq}: {before:?}"));
        assert_eq!(
            delta["ops"],
            json!([["set", ["score"], expected]]),
            "{delta}"
        );
        let seen = b.expect("delta");
        assert_eq!(seen["ops"], json!([["set", ["score"], expected]]), "{seen}");
    }
    // Integer + integer stays an integer.
    a.op_acked("r", 10, json!([["inc", ["int"], 2], ["inc", ["int"], 3]]));
    let state = snapshot(&server, enc, "r")["state"].clone();
    assert!(state["int"].is_i64() || state["int"].is_u64(), "{state}");
    assert_eq!(state["int"], 5);
    assert!(state["score"].is_f64(), "{state}");
}

fn u64_and_i64_extremes(enc: Enc) {
    let server = Server::start(&[]);
    let mut a = server.client(enc);
    let mut b = server.client(other(enc));
    a.join("r");
    b.join("r");
    a.expect("presence");
    let big = 9_223_372_036_854_775_808u64; // i64::MAX + 1
    a.op_acked(
        "r",
        1,
        json!([
            ["set", ["max"], u64::MAX],
            ["set", ["big"], big],
            ["set", ["min"], i64::MIN]
        ]),
    );
    let delta = b.expect("delta");
    let mut state = json!({});
    common::apply_ops(&mut state, &delta["ops"]).expect("delta applies");
    assert_eq!(state["max"].as_u64(), Some(u64::MAX), "{delta}");
    assert_eq!(state["big"].as_u64(), Some(big), "{delta}");
    assert_eq!(state["min"].as_i64(), Some(i64::MIN), "{delta}");
    let fresh = snapshot(&server, enc, "r");
    assert_eq!(fresh["state"]["max"].as_u64(), Some(u64::MAX), "{fresh}");
    assert_eq!(fresh["state"]["big"].as_u64(), Some(big), "{fresh}");
    assert_eq!(fresh["state"]["min"].as_i64(), Some(i64::MIN), "{fresh}");
    // Past either end is an overflow; back into i64 range is fine.
    let error = a.op_error("r", 2, json!([["inc", ["max"], 1]]));
    assert_eq!(error["code"], "conflict", "{error}");
    let error = a.op_error("r", 3, json!([["inc", ["min"], -1]]));
    assert_eq!(error["code"], "conflict", "{error}");
    let (before, _) = a.op_acked("r", 4, json!([["inc", ["big"], -1]]));
    let delta = before.iter().find(|m| m["t"] == "delta").expect("a delta");
    assert_eq!(
        delta["ops"],
        json!([["set", ["big"], i64::MAX]]),
        "2^63 - 1 is an integer: {delta}"
    );
}

#[test]
fn binary_values_are_bin_in_msgpack_and_base64_in_json() {
    let server = Server::start(&[]);
    let mut m = server.client(Enc::Msgpack);
    let mut j = server.client(Enc::Json);
    m.join("bin");
    j.join("bin");
    m.expect("presence");
    let bytes = [0u8, 1, 2, 255, 254, 128];
    let encoded = common::base64(&bytes);
    assert_eq!(encoded, "AAEC//6A");
    m.op_acked(
        "bin",
        1,
        json!([["set", ["b"], bin(&bytes)], ["push", ["l"], bin(&[9])]]),
    );
    let delta = j.expect("delta");
    let mut state = json!({});
    common::apply_ops(&mut state, &delta["ops"]).expect("delta applies");
    assert_eq!(state, json!({"b": encoded, "l": ["CQ=="]}), "{delta}");

    let fresh_json = snapshot(&server, Enc::Json, "bin");
    assert_eq!(fresh_json["state"], json!({"b": encoded, "l": ["CQ=="]}));
    let fresh_msgpack = snapshot(&server, Enc::Msgpack, "bin");
    assert_eq!(
        fresh_msgpack["state"],
        json!({"b": bin(&bytes), "l": [bin(&[9])]})
    );

    m.send(json!({"t": "msg", "room": "bin", "data": {"blob": bin(&bytes)}}));
    let msg = j.next_of("msg");
    assert_eq!(msg["data"], json!({"blob": encoded}));
    let mut m2 = server.client(Enc::Msgpack);
    m2.join("bin");
    m.send(json!({"t": "msg", "room": "bin", "data": bin(&bytes)}));
    let msg = m2.next_of("msg");
    assert_eq!(msg["data"], bin(&bytes));
}

#[test]
fn text_frame_on_msgpack_closes_1003() {
    let server = Server::start(&[]);
    let mut a = server.client(Enc::Msgpack);
    a.join("r");
    a.send_message(Message::Text(r#"{"t":"ping"}"#.into()));
    assert_eq!(a.expect_close(), Some(1003));
}

#[test]
fn binary_frame_on_json_closes_1003() {
    let server = Server::start(&[]);
    let mut a = server.client(Enc::Json);
    a.join("r");
    a.send_message(Message::Binary(to_msgpack(&json!({"t": "ping"}))));
    assert_eq!(a.expect_close(), Some(1003));
}

fn undecodable_payload_closes_1007(enc: Enc) {
    let server = Server::start(&[]);
    let payloads: Vec<Message> = match enc {
        Enc::Json => vec![
            Message::Text("{not json".into()),
            Message::Text(r#"{"t":"ping""#.into()),
            Message::Text(String::new()),
        ],
        Enc::Msgpack => vec![
            Message::Binary(vec![0xc1]),
            Message::Binary(vec![0x82, 0xa1, b't']),
            Message::Binary(Vec::new()),
        ],
    };
    // A member of the same room, in the same encoding, keeps being served.
    let mut bystander = server.client(enc);
    bystander.join("r");
    for (seq, payload) in (1..).zip(payloads) {
        let mut a = server.client(enc);
        a.join("r");
        bystander.sync();
        let shown = format!("{payload:?}");
        a.send_message(payload);
        assert_eq!(a.expect_close(), Some(1007), "{shown}");
        bystander.op_acked("r", seq, json!([["inc", ["n"], 1]]));
    }
}

fn rooms_per_connection_limit(enc: Enc) {
    let server = Server::start(&["--max-rooms-per-connection", "2"]);
    let mut a = server.client(enc);
    a.join("one");
    a.join("two");
    a.send(json!({"t": "join", "room": "three"}));
    let error = a.expect("error");
    assert_eq!(error["room"], "three", "{error}");
    assert!(error["code"].is_string(), "{error}");
    // Re-joining a room already held does not count twice.
    a.join("one");
    a.send(json!({"t": "leave", "room": "two"}));
    a.expect("left");
    a.join("three");
}

fn members_per_room_room_full(enc: Enc) {
    let server = Server::start(&["--max-members-per-room", "2"]);
    let mut a = server.client(enc);
    let mut b = server.client(enc);
    let mut c = server.client(other(enc));
    a.join("r");
    b.join("r");
    a.expect("presence");
    c.send(json!({"t": "join", "room": "r"}));
    let error = c.expect("error");
    assert_eq!(error["code"], "room_full", "{error}");
    assert_eq!(error["room"], "r", "{error}");
    // A member re-joining is not a third member.
    a.join("r");
    b.send(json!({"t": "leave", "room": "r"}));
    b.next_of("left");
    c.join("r");
}

fn rate_limit_floods_get_rate_limited(enc: Enc) {
    let server = Server::start(&["--rate-limit", "5", "--rate-burst", "5"]);
    let mut a = server.client(enc);
    for id in 0..20 {
        a.send(json!({"t": "ping", "id": id}));
    }
    let (mut pongs, mut limited) = (0, 0);
    for _ in 0..20 {
        let answer = a.recv();
        match answer["t"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") => {
                assert_eq!(answer["code"], "rate_limited", "{answer}");
                limited += 1;
            }
            _ => panic!("unexpected {answer}"),
        }
    }
    assert!(pongs >= 5, "the burst of 5 passes: {pongs} pongs");
    assert!(
        limited >= 10,
        "a flood of 20 at 5/s: only {limited} refused"
    );
    // The connection stays open, and the bucket refills (polled: no message announces it).
    let mut answered = false;
    for attempt in 0..40 {
        a.send(json!({"t": "ping", "id": format!("again-{attempt}")}));
        let answer = a.recv();
        if answer["t"] == "pong" {
            answered = true;
            break;
        }
        assert_eq!(answer["code"], "rate_limited", "{answer}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(answered, "the bucket never refilled");
}

fn sustained_rate_abuse_closes_1008(enc: Enc) {
    let server = Server::start(&[
        "--rate-limit",
        "5",
        "--rate-burst",
        "5",
        "--rate-abuse-limit",
        "20",
    ]);
    let mut a = server.client(enc);
    for id in 0..200 {
        if a.try_send_message(enc.message(&json!({"t": "ping", "id": id})))
            .is_err()
        {
            break;
        }
    }
    let mut limited = 0;
    let code = loop {
        match a.read_event(common::RECV_TIMEOUT) {
            Some(common::Event::Msg(m)) => {
                if m["t"] == "error" {
                    assert_eq!(m["code"], "rate_limited", "{m}");
                    limited += 1;
                }
            }
            Some(common::Event::Close(code)) => break code,
            Some(common::Event::Eof) => panic!("closed without a close frame"),
            None => panic!("not closed after 200 messages over a 20-refusal abuse limit"),
        }
    };
    assert_eq!(code, Some(1008));
    assert!(limited >= 1, "refusals are announced before the close");
}

#[test]
fn joined_member_ids_follow_the_contract_form() {
    let server = Server::start(&["--shards", "2"]);
    for _ in 0..4 {
        let mut client = server.client(Enc::Json);
        client.join("ids");
        let shard = common::member_shard(client.you())
            .unwrap_or_else(|| panic!("member id {:?} is not s{{SHARD}}c{{N}}", client.you()));
        assert!(shard < 2, "shard {shard} of 2");
    }
}
