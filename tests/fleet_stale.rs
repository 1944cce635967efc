//! A stale owner (its epoch taken while it still serves the room): whatever it sends after
//! an append the log refuses never reaches a client, so every client's copy stays a prefix
//! of the log.

mod common;

use std::time::{Duration, Instant};

use common::fleet::{converge, instance, log_epochs, owner_of, Member, RedisServer};
use common::{Client, Enc};
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
