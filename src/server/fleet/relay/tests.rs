//! Unit tests of the relay's bookkeeping.

use super::*;

fn origin(shard: usize, id: u64) -> Origin {
    Origin {
        conn: ConnRef { shard, id },
        proto: Subprotocol::MsgPack,
    }
}

#[test]
fn members_are_counted_per_shard_and_protocol() {
    let mut relay = Relay::new(2);
    relay.add(origin(1, 7), "m7".into(), true);
    relay.add(origin(1, 7), "m7".into(), true);
    relay.add(origin(0, 8), "m8".into(), true);
    assert_eq!(relay.per_shard, vec![1, 1]);
    assert_eq!(relay.per_proto, [2, 0]);
    assert!(relay.remove(origin(1, 7).conn));
    assert!(!relay.remove(origin(1, 7).conn), "removed once");
    assert_eq!(relay.per_shard, vec![1, 0]);
    assert_eq!(relay.take_members().len(), 1);
    assert!(relay.is_empty());
    assert_eq!(relay.per_shard, vec![0, 0]);
}

#[test]
fn a_re_registration_keeps_an_answered_member_answered() {
    let mut relay = Relay::new(1);
    relay.add(origin(0, 1), "m".into(), true);
    assert_eq!(relay.unanswered_joins(Duration::ZERO).len(), 1);
    relay.members[0].answered = true;
    relay.add(origin(0, 1), "m".into(), false);
    assert!(relay.members[0].answered);
    assert!(relay.unanswered_joins(Duration::ZERO).is_empty());
    // The client joining again waits for a first answer again.
    relay.add(origin(0, 1), "m".into(), true);
    assert!(!relay.members[0].answered);
}

#[test]
fn ops_are_answered_in_order_and_overdue_ones_reported() {
    let mut relay = Relay::new(1);
    let o = origin(0, 1);
    relay.add(o, "m".into(), true);
    let queue = relay.ops.entry(o.conn).or_default();
    let now = Instant::now();
    for seq in 1..=4 {
        queue.push_back(PendingOp {
            seq,
            at: now,
            since: now,
            payload: ByteBuf::new(),
            resent: false,
        });
    }
    // Answers name their op: 1 and 3 are answered, 2 (lost on its way) still waits.
    assert!(relay.answered(o.conn, 1));
    assert!(relay.answered(o.conn, 3));
    assert!(!relay.answered(o.conn, 3), "an op is answered once");
    let (again, overdue) = relay.overdue_ops(Duration::from_secs(60), Duration::ZERO);
    assert!(again.is_empty() && overdue.is_empty());
    // First sent again, then given up.
    let (again, overdue) = relay.overdue_ops(Duration::ZERO, Duration::from_secs(60));
    assert_eq!((again.len(), overdue.len()), (2, 0));
    assert_eq!((again[0].1, again[1].1), (2, 4));
    let (again, overdue) = relay.overdue_ops(Duration::ZERO, Duration::ZERO);
    assert_eq!((again.len(), overdue.len()), (0, 2));
    assert_eq!(overdue[0].1, 2);
    assert!(relay.ops.is_empty());
}

#[test]
fn the_seq_of_a_framed_answer() {
    for proto in Subprotocol::ALL {
        let frame = crate::server::encode::frame(
            &ServerMessage::Error {
                code: crate::protocol::ErrorCode::Conflict,
                message: "no",
                room: Some("r"),
                seq: Some(42),
            },
            proto,
        );
        assert_eq!(reply_seq(&frame), Some(42), "{proto:?}");
    }
    let frame = crate::server::encode::frame(
        &ServerMessage::Ack {
            room: "r",
            seq: 7,
            tick: 9,
        },
        Subprotocol::Json,
    );
    assert_eq!(reply_seq(&frame), Some(7));
    assert_eq!(reply_seq(b"\x82"), None);
}

#[test]
fn an_owner_announcement_re_registers_only_members_it_did_not_answer() {
    let mut relay = Relay::new(1);
    relay.add(origin(0, 1), "answered".into(), true);
    relay.add(origin(0, 2), "waiting".into(), true);
    relay.members[0].answered = true;
    relay.members[0].answered_epoch = 1;
    // The announcement of the owner that answered arrives late: only the waiting member.
    let names = |r: Vec<(Origin, String)>| r.into_iter().map(|(_, m)| m).collect::<Vec<_>>();
    assert_eq!(names(relay.rejoins_for(1)), ["waiting"]);
    // A newer owner knows neither.
    assert_eq!(names(relay.rejoins_for(2)), ["answered", "waiting"]);
}

#[test]
fn a_registration_that_could_not_go_out_waits_for_an_answer_again() {
    let mut relay = Relay::new(1);
    relay.add(origin(0, 1), "m".into(), true);
    relay.members[0].answered = true;
    assert!(relay.unanswered_joins(Duration::ZERO).is_empty());
    relay.unanswer(origin(0, 1).conn);
    assert_eq!(relay.unanswered_joins(Duration::ZERO).len(), 1);
}

#[test]
fn a_newer_epoch_tells_of_a_new_owner_but_the_first_one_seen_does_not() {
    let mut relay = Relay::new(1);
    relay.add(origin(0, 1), "m".into(), true);
    relay.members[0].answered = true;
    relay.members[0].answered_epoch = 1;
    assert!(!relay.owner_changes(1), "the first epoch a relay sees");
    assert!(!relay.owner_changes(1));
    assert!(!relay.owner_changes(0), "an older epoch");
    // A delta of epoch 2 without its owner's announcement: the member goes to it.
    assert!(relay.owner_changes(2));
    assert_eq!(relay.new_owner(2).len(), 1);
    assert!(!relay.owner_changes(2), "known from now on");
}

#[test]
fn the_tick_of_a_framed_joined() {
    let state = crate::value::Value::Map(Default::default());
    for proto in Subprotocol::ALL {
        let frame = crate::server::encode::frame(
            &ServerMessage::Joined {
                room: "r",
                tick: 1522,
                epoch: 3,
                you: "c1",
                members: &["c1".to_owned()],
                state: Some(&state),
                resync: false,
            },
            proto,
        );
        assert_eq!(frame_u64(&frame, "tick"), Some(1522), "{proto:?}");
    }
}

#[test]
fn answers_of_an_older_owner_than_one_seen_are_superseded() {
    let mut relay = Relay::new(1);
    assert!(!relay.superseded(1), "no owner seen yet");
    assert!(!relay.owner_changes(1));
    assert!(relay.owner_changes(2), "a delta of a new owner");
    relay.new_owner(2);
    assert!(relay.superseded(1), "the stale owner's answers");
    assert!(!relay.superseded(2));
    assert!(!relay.superseded(3));
    assert!(
        !relay.superseded(0),
        "an instance that does not say its epoch"
    );
}

#[test]
fn after_a_trimmed_log_acks_wait_for_their_members_snapshot() {
    let mut relay = Relay::new(1);
    let (a, b) = (origin(0, 1), origin(0, 2));
    relay.add(a, "a".into(), true);
    relay.add(b, "b".into(), true);
    for m in &mut relay.members {
        m.answered = true;
        m.answered_epoch = 1;
    }
    relay.tick = Some(9);
    let ack = |n: u8| bytes::Bytes::from(vec![n]);
    assert_eq!(
        relay.hold_ack(a.conn, ack(1)),
        Some(ack(1)),
        "no snapshot due"
    );
    // The repair found the log trimmed: everyone gets a full `joined`.
    assert_eq!(relay.await_snapshots().len(), 2);
    assert_eq!(relay.tick, None, "set again by the next delta or answer");
    assert_eq!(
        relay.unanswered_joins(Duration::ZERO).len(),
        2,
        "a lost answer is asked for again"
    );
    assert_eq!(relay.hold_ack(a.conn, ack(2)), None);
    assert_eq!(relay.hold_ack(a.conn, ack(3)), None);
    assert_eq!(relay.hold_ack(b.conn, ack(4)), None);
    assert_eq!(relay.snapshot_came(a.conn), [ack(2), ack(3)], "in order");
    assert_eq!(
        relay.hold_ack(a.conn, ack(5)),
        Some(ack(5)),
        "a has its snapshot"
    );
    assert_eq!(relay.hold_ack(b.conn, ack(6)), None, "b still waits");
    assert!(relay.remove(b.conn));
    assert!(
        relay.snapshot_came(b.conn).is_empty(),
        "forgotten with the member"
    );
}
