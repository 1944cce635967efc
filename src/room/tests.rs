//! Unit tests of `Room`: every rule of `PROTOCOL.md` "Ops" with literal values, the deltas
//! they produce, ticks, and the resume ring.

use super::testing::{identical, j, p};
use super::*;
use crate::protocol::types::{DeltaOp, Op};

fn room(state: &str) -> Room {
    room_with(state, Limits::default())
}

fn room_with(state: &str, limits: Limits) -> Room {
    let Value::Map(map) = j(state) else {
        panic!("a room state is a map");
    };
    Room::from_snapshot(RoomId::parse("r").expect("room id"), 0, 0, map, limits)
}

fn set(path: &str, value: &str) -> Op {
    Op::Set(p(path), j(value))
}
fn del(path: &str) -> Op {
    Op::Del(p(path))
}
fn inc(path: &str, amount: &str) -> Op {
    Op::Inc(p(path), j(amount))
}
fn push(path: &str, value: &str) -> Op {
    Op::Push(p(path), j(value))
}

fn d_set(path: &str, value: &str) -> DeltaOp {
    DeltaOp::Set(p(path), j(value))
}
fn d_del(path: &str) -> DeltaOp {
    DeltaOp::Del(p(path))
}
fn d_push(path: &str, value: &str) -> DeltaOp {
    DeltaOp::Push(p(path), j(value))
}

/// Applies a message that must change the state; checks the state after it, and that the
/// delta it flushes brings a copy of the state before it to the state after it.
#[track_caller]
fn changes(state: &str, ops: Vec<Op>, after: &str, delta: Vec<DeltaOp>) {
    let mut r = room(state);
    assert_eq!(r.apply(ops), Ok(Applied::Changed));
    assert_eq!(r.state(), &j(after));
    assert!(r.has_pending());
    let record = r.flush().expect("a delta");
    assert_eq!(record.ops, delta);
    assert_eq!(record.tick, 1);
    let mut copy = j(state);
    for op in &record.ops {
        apply_delta_op(&mut copy, op).expect("the delta fits the copy");
    }
    assert!(identical(&copy, r.state()), "copy {copy:?}");
    assert_eq!(r.state_bytes(), size::encoded_size(r.state()));
}

/// Applies a message that must change nothing.
#[track_caller]
fn unchanged(state: &str, ops: Vec<Op>) {
    let mut r = room(state);
    assert_eq!(r.apply(ops), Ok(Applied::Unchanged));
    assert_eq!(r.state(), &j(state));
    assert!(!r.has_pending());
    assert!(r.flush().is_none());
    assert_eq!(r.tick(), 0);
}

/// Applies a message that must fail; checks the rule, the op index, and that nothing moved.
#[track_caller]
fn fails(state: &str, ops: Vec<Op>, index: usize, rule: OpError) {
    let mut r = room(state);
    let bytes = r.state_bytes();
    assert_eq!(r.apply(ops), Err(ApplyError { index, rule }));
    assert!(identical(r.state(), &j(state)));
    assert_eq!(r.state_bytes(), bytes);
    assert!(!r.has_pending());
    assert!(r.flush().is_none());
}

// ---- set ----

#[test]
fn set_creates_missing_parent_maps_and_sends_the_topmost_created_key() {
    changes(
        r#"{"a":{}}"#,
        vec![set(r#"["a","b","c"]"#, "1")],
        r#"{"a":{"b":{"c":1}}}"#,
        vec![d_set(r#"["a","b"]"#, r#"{"c":1}"#)],
    );
}

#[test]
fn set_replaces_an_existing_value() {
    changes(
        r#"{"p":{"x":10,"y":14}}"#,
        vec![set(r#"["p","x"]"#, "11")],
        r#"{"p":{"x":11,"y":14}}"#,
        vec![d_set(r#"["p","x"]"#, "11")],
    );
}

#[test]
fn set_inside_an_array() {
    changes(
        r#"{"l":[1,2]}"#,
        vec![set(r#"["l",0]"#, r#""a""#)],
        r#"{"l":["a",2]}"#,
        vec![d_set(r#"["l",0]"#, r#""a""#)],
    );
}

#[test]
fn set_at_index_equal_to_length_appends() {
    changes(
        r#"{"l":[1,2]}"#,
        vec![set(r#"["l",2]"#, "3")],
        r#"{"l":[1,2,3]}"#,
        vec![d_push(r#"["l"]"#, "3")],
    );
}

#[test]
fn set_through_an_appended_place_creates_a_map() {
    changes(
        r#"{"l":[1]}"#,
        vec![set(r#"["l",1,"x"]"#, "2")],
        r#"{"l":[1,{"x":2}]}"#,
        vec![d_push(r#"["l"]"#, r#"{"x":2}"#)],
    );
}

#[test]
fn set_index_beyond_length_conflicts() {
    fails(
        r#"{"l":[1]}"#,
        vec![set(r#"["l",2]"#, "3")],
        0,
        OpError::IndexBeyondLength {
            at: 1,
            index: 2,
            len: 1,
        },
    );
    fails(
        r#"{"l":[]}"#,
        vec![set(r#"["l",18446744073709551615,"x"]"#, "3")],
        0,
        OpError::IndexBeyondLength {
            at: 1,
            index: u64::MAX,
            len: 0,
        },
    );
}

#[test]
fn set_through_a_non_container_conflicts() {
    for scalar in ["1", "1.5", r#""s""#, "true", "null"] {
        let state = format!(r#"{{"a":{scalar}}}"#);
        fails(
            &state,
            vec![set(r#"["a","b"]"#, "1")],
            0,
            OpError::ThroughNonContainer { at: 1 },
        );
        fails(
            &state,
            vec![set(r#"["a",0,"c"]"#, "1")],
            0,
            OpError::ThroughNonContainer { at: 1 },
        );
    }
}

#[test]
fn index_into_a_map_and_key_into_an_array_conflict() {
    fails(
        r#"{"m":{}}"#,
        vec![set(r#"["m",0]"#, "1")],
        0,
        OpError::IndexIntoMap { at: 1 },
    );
    fails(
        "{}",
        vec![set("[0]", "1")],
        0,
        OpError::IndexIntoMap { at: 0 },
    );
    fails(
        r#"{"l":[{}]}"#,
        vec![set(r#"["l","x"]"#, "1")],
        0,
        OpError::KeyIntoArray { at: 1 },
    );
}

#[test]
fn an_index_below_a_missing_place_conflicts_since_only_maps_are_created() {
    fails(
        "{}",
        vec![set(r#"["a",0]"#, "1")],
        0,
        OpError::IndexIntoMissing { at: 1 },
    );
    fails(
        "{}",
        vec![set(r#"["a","b",3,"c"]"#, "1")],
        0,
        OpError::IndexIntoMissing { at: 2 },
    );
    fails(
        r#"{"l":[]}"#,
        vec![set(r#"["l",0,0]"#, "1")],
        0,
        OpError::IndexIntoMissing { at: 2 },
    );
}

#[test]
fn set_root_with_a_map_replaces_the_state() {
    changes(
        r#"{"a":1,"b":[2]}"#,
        vec![set("[]", r#"{"c":3}"#)],
        r#"{"c":3}"#,
        vec![d_set("[]", r#"{"c":3}"#)],
    );
}

#[test]
fn set_root_with_a_non_map_conflicts() {
    for value in ["1", "[]", "null", r#""x""#] {
        fails(r#"{"a":1}"#, vec![set("[]", value)], 0, OpError::RootNotMap);
    }
}

#[test]
fn set_to_an_equal_value_changes_nothing() {
    unchanged(r#"{"a":{"b":[1,2]}}"#, vec![set(r#"["a","b"]"#, "[1,2]")]);
    unchanged(r#"{"a":1}"#, vec![set("[]", r#"{"a":1}"#)]);
    unchanged(
        r#"{"a":1}"#,
        vec![set(r#"["a"]"#, "1"), set(r#"["a"]"#, "1")],
    );
}

#[test]
fn set_of_an_integer_over_an_equal_float_is_a_change() {
    changes(
        r#"{"a":1.0}"#,
        vec![set(r#"["a"]"#, "1")],
        r#"{"a":1}"#,
        vec![d_set(r#"["a"]"#, "1")],
    );
}

// ---- del ----

#[test]
fn del_removes_a_map_key() {
    changes(
        r#"{"a":{"b":1,"c":2}}"#,
        vec![del(r#"["a","b"]"#)],
        r#"{"a":{"c":2}}"#,
        vec![d_del(r#"["a","b"]"#)],
    );
}

#[test]
fn del_of_an_array_item_shifts_and_sends_the_array() {
    changes(
        r#"{"l":[1,2,3]}"#,
        vec![del(r#"["l",0]"#)],
        r#"{"l":[2,3]}"#,
        vec![d_set(r#"["l"]"#, "[2,3]")],
    );
}

#[test]
fn del_never_conflicts_and_is_a_no_op_when_the_path_does_not_resolve() {
    let state = r#"{"a":1,"m":{},"l":[1]}"#;
    for path in [
        r#"["z"]"#,
        r#"["z","y"]"#,
        r#"["a","b"]"#,
        r#"["a",0]"#,
        r#"["m",0]"#,
        r#"["m","x"]"#,
        r#"["l","x"]"#,
        r#"["l",1]"#,
        r#"["l",18446744073709551615]"#,
        r#"["l",0,"x"]"#,
        "[0]",
    ] {
        unchanged(state, vec![del(path)]);
    }
}

#[test]
fn del_root_empties_the_room() {
    changes(
        r#"{"a":1,"b":{"c":[1]}}"#,
        vec![del("[]")],
        "{}",
        vec![d_set("[]", "{}")],
    );
    unchanged("{}", vec![del("[]")]);
}

// ---- inc ----

#[test]
fn inc_adds_and_reaches_clients_as_a_set() {
    changes(
        r#"{"s":{"n":5}}"#,
        vec![inc(r#"["s","n"]"#, "-7")],
        r#"{"s":{"n":-2}}"#,
        vec![d_set(r#"["s","n"]"#, "-2")],
    );
}

#[test]
fn inc_of_an_absent_value_counts_it_as_zero_and_creates_the_path() {
    changes(
        "{}",
        vec![inc(r#"["s","n"]"#, "3")],
        r#"{"s":{"n":3}}"#,
        vec![d_set(r#"["s"]"#, r#"{"n":3}"#)],
    );
    changes(
        r#"{"s":{}}"#,
        vec![inc(r#"["s","f"]"#, "0.5")],
        r#"{"s":{"f":0.5}}"#,
        vec![d_set(r#"["s","f"]"#, "0.5")],
    );
}

#[test]
fn inc_at_index_equal_to_length_appends_the_amount() {
    changes(
        r#"{"l":[1]}"#,
        vec![inc(r#"["l",1]"#, "4")],
        r#"{"l":[1,4]}"#,
        vec![d_push(r#"["l"]"#, "4")],
    );
}

#[test]
fn integer_plus_integer_stays_an_integer_with_a_float_it_is_a_float() {
    changes(
        r#"{"n":2}"#,
        vec![inc(r#"["n"]"#, "3")],
        r#"{"n":5}"#,
        vec![d_set(r#"["n"]"#, "5")],
    );
    changes(
        r#"{"n":2}"#,
        vec![inc(r#"["n"]"#, "0.5")],
        r#"{"n":2.5}"#,
        vec![d_set(r#"["n"]"#, "2.5")],
    );
    changes(
        r#"{"n":2.5}"#,
        vec![inc(r#"["n"]"#, "1")],
        r#"{"n":3.5}"#,
        vec![d_set(r#"["n"]"#, "3.5")],
    );
    // 2 + 0.0 is the float 2.0: a different value, so a change.
    changes(
        r#"{"n":2}"#,
        vec![inc(r#"["n"]"#, "0.0")],
        r#"{"n":2.0}"#,
        vec![d_set(r#"["n"]"#, "2.0")],
    );
}

#[test]
fn inc_by_zero_changes_nothing() {
    unchanged(r#"{"n":2}"#, vec![inc(r#"["n"]"#, "0")]);
    unchanged(r#"{"n":2.5}"#, vec![inc(r#"["n"]"#, "0.0")]);
}

#[test]
fn inc_uses_the_full_i64_and_u64_range() {
    let max = i64::MAX;
    changes(
        &format!(r#"{{"n":{max}}}"#),
        vec![inc(r#"["n"]"#, "1")],
        r#"{"n":9223372036854775808}"#,
        vec![d_set(r#"["n"]"#, "9223372036854775808")],
    );
    changes(
        r#"{"n":18446744073709551615}"#,
        vec![inc(r#"["n"]"#, "-9223372036854775808")],
        r#"{"n":9223372036854775807}"#,
        vec![d_set(r#"["n"]"#, "9223372036854775807")],
    );
    // Canonical: a u64 amount that brings the value back into i64 range gives an Int.
    let mut r = room(r#"{"n":-5}"#);
    assert_eq!(
        r.apply(vec![Op::Inc(p(r#"["n"]"#), Value::UInt(1 << 63))]),
        Ok(Applied::Changed)
    );
    assert_eq!(r.state(), &j(r#"{"n":9223372036854775803}"#));
}

#[test]
fn integer_overflow_conflicts() {
    fails(
        r#"{"n":18446744073709551615}"#,
        vec![inc(r#"["n"]"#, "1")],
        0,
        OpError::IntegerOverflow,
    );
    fails(
        r#"{"n":-9223372036854775808}"#,
        vec![inc(r#"["n"]"#, "-1")],
        0,
        OpError::IntegerOverflow,
    );
}

#[test]
fn inc_on_a_non_number_conflicts() {
    for value in [r#""s""#, "true", "null", "[]", "{}"] {
        fails(
            &format!(r#"{{"n":{value}}}"#),
            vec![inc(r#"["n"]"#, "1")],
            0,
            OpError::IncOnNonNumber,
        );
    }
}

#[test]
fn inc_by_a_non_number_is_a_bad_request() {
    let mut r = room(r#"{"n":1}"#);
    let err = r
        .apply(vec![inc(r#"["n"]"#, r#""1""#)])
        .expect_err("not a number");
    assert_eq!(err.rule, OpError::IncByNonNumber);
    assert_eq!(err.code(), crate::protocol::types::ErrorCode::BadRequest);
}

#[test]
fn inc_and_push_on_the_root_conflict() {
    fails("{}", vec![inc("[]", "1")], 0, OpError::IncOnRoot);
    fails("{}", vec![push("[]", "1")], 0, OpError::PushOnRoot);
}

// ---- push ----

#[test]
fn push_appends_to_an_array() {
    changes(
        r#"{"l":[1]}"#,
        vec![push(r#"["l"]"#, r#"{"a":2}"#)],
        r#"{"l":[1,{"a":2}]}"#,
        vec![d_push(r#"["l"]"#, r#"{"a":2}"#)],
    );
}

#[test]
fn push_on_an_absent_path_creates_the_array_and_its_parents() {
    changes(
        "{}",
        vec![push(r#"["a","l"]"#, "1")],
        r#"{"a":{"l":[1]}}"#,
        vec![d_set(r#"["a"]"#, r#"{"l":[1]}"#)],
    );
}

#[test]
fn push_at_index_equal_to_length_appends_a_new_array() {
    changes(
        r#"{"l":[0]}"#,
        vec![push(r#"["l",1]"#, "7")],
        r#"{"l":[0,[7]]}"#,
        vec![d_push(r#"["l"]"#, "[7]")],
    );
}

#[test]
fn push_on_a_non_array_conflicts() {
    for value in ["1", r#""s""#, "{}", "null"] {
        fails(
            &format!(r#"{{"l":{value}}}"#),
            vec![push(r#"["l"]"#, "1")],
            0,
            OpError::PushOnNonArray,
        );
    }
}

// ---- atomicity ----

#[test]
fn a_failing_op_rolls_back_the_whole_message() {
    fails(
        r#"{"a":{"b":1},"l":[1,2,3]}"#,
        vec![
            set(r#"["a","b"]"#, "2"),
            set(r#"["x","y","z"]"#, "3"),
            del(r#"["l",0]"#),
            push(r#"["l"]"#, "9"),
            set(r#"["l",3]"#, "8"),
            inc(r#"["n"]"#, "1"),
            del(r#"["a"]"#),
            set("[]", r#"{"new":1}"#),
            del("[]"),
            set(r#"["q"]"#, "1"),
            inc(r#"["q","r"]"#, "1"),
        ],
        10,
        OpError::ThroughNonContainer { at: 1 },
    );
}

#[test]
fn a_failed_message_leaves_pending_changes_as_they_were() {
    let mut r = room(r#"{"a":1}"#);
    assert_eq!(r.apply(vec![set(r#"["a"]"#, "2")]), Ok(Applied::Changed));
    assert!(r.apply(vec![set(r#"["b"]"#, "1"), inc("[]", "1")]).is_err());
    let record = r.flush().expect("the first message's delta");
    assert_eq!(record.ops, vec![d_set(r#"["a"]"#, "2")]);
}

#[test]
fn ops_apply_in_order_and_later_ops_see_earlier_ones() {
    changes(
        "{}",
        vec![
            set(r#"["l"]"#, "[]"),
            push(r#"["l"]"#, "1"),
            inc(r#"["l",0]"#, "1"),
            set(r#"["l",1]"#, "5"),
            del(r#"["l",0]"#),
        ],
        r#"{"l":[5]}"#,
        vec![d_set(r#"["l"]"#, "[5]")],
    );
}

#[test]
fn an_empty_message_changes_nothing() {
    unchanged(r#"{"a":1}"#, vec![]);
}

// ---- too_large ----

fn deep_path(depth: usize) -> String {
    let keys: Vec<String> = (0..depth).map(|i| format!(r#""k{i}""#)).collect();
    format!("[{}]", keys.join(","))
}

#[test]
fn path_depth_is_limited_for_every_op() {
    let ok = deep_path(32);
    let too_deep = deep_path(33);
    let mut r = room("{}");
    assert_eq!(r.apply(vec![set(&ok, "1")]), Ok(Applied::Changed));
    let rule = OpError::PathTooDeep { depth: 33, max: 32 };
    for op in [
        set(&too_deep, "1"),
        del(&too_deep),
        inc(&too_deep, "1"),
        push(&too_deep, "1"),
    ] {
        fails("{}", vec![set(r#"["a"]"#, "1"), op], 1, rule.clone());
    }
    assert_eq!(rule.code(), crate::protocol::types::ErrorCode::TooLarge);
}

#[test]
fn values_may_not_reach_below_the_path_depth_limit() {
    let path = deep_path(31);
    let mut r = room("{}");
    assert_eq!(
        r.apply(vec![set(&path, r#"{"a":1}"#)]),
        Ok(Applied::Changed)
    );
    fails(
        "{}",
        vec![set(&path, r#"{"a":{"b":1}}"#)],
        0,
        OpError::ValueTooDeep { depth: 33, max: 32 },
    );
    fails(
        "{}",
        vec![push(&path, "[1]")],
        0,
        OpError::ValueTooDeep { depth: 33, max: 32 },
    );
    let nested = format!("{}1{}", "[".repeat(33), "]".repeat(33));
    fails(
        "{}",
        vec![set("[]", &format!(r#"{{"a":{nested}}}"#))],
        0,
        OpError::ValueTooDeep { depth: 34, max: 32 },
    );
}

#[test]
fn state_size_is_checked_after_the_whole_message() {
    let limits = Limits {
        max_state_bytes: 20,
        ..Limits::default()
    };
    // {} is 1 byte; "a" key 2; a 10-char string 11: 14 bytes.
    let mut r = room_with("{}", limits);
    assert_eq!(
        r.apply(vec![set(r#"["a"]"#, r#""0123456789""#)]),
        Ok(Applied::Changed)
    );
    assert_eq!(r.state_bytes(), 14);
    let before = r.state().clone();
    assert_eq!(
        r.apply(vec![
            set(r#"["b"]"#, r#""0123456789""#),
            inc(r#"["n"]"#, "1")
        ]),
        Err(ApplyError {
            index: 1,
            rule: OpError::StateTooLarge { size: 30, max: 20 }
        })
    );
    assert_eq!(r.state(), &before);
    assert_eq!(r.state_bytes(), 14);
    // Growing past the limit in the middle of a message is fine when it ends below.
    assert_eq!(
        r.apply(vec![set(r#"["b"]"#, r#""0123456789""#), del(r#"["a"]"#)]),
        Ok(Applied::Changed)
    );
    assert_eq!(r.state_bytes(), 14);
}

#[test]
fn a_state_loaded_above_the_limit_may_still_shrink() {
    let limits = Limits {
        max_state_bytes: 4,
        ..Limits::default()
    };
    let mut r = room_with(r#"{"a":"0123456789","b":1}"#, limits);
    assert_eq!(r.apply(vec![del(r#"["b"]"#)]), Ok(Applied::Changed));
    assert!(r.apply(vec![set(r#"["c"]"#, "1")]).is_err());
}

// ---- coalescing ----

#[test]
fn changes_between_flushes_coalesce_into_one_delta() {
    let mut r = room(r#"{"p":{"x":1,"y":1},"l":[1,2]}"#);
    let messages = vec![
        vec![set(r#"["p","x"]"#, "2")],
        vec![set(r#"["p","x"]"#, "3")],
        vec![inc(r#"["p","y"]"#, "1")],
        vec![push(r#"["l"]"#, "3")],
        vec![set(r#"["l",0]"#, "0")],
        vec![push(r#"["l"]"#, "4")],
        vec![set(r#"["l",2]"#, "30")],
    ];
    for ops in messages {
        assert_eq!(r.apply(ops), Ok(Applied::Changed));
    }
    let record = r.flush().expect("one delta");
    assert_eq!(
        record.ops,
        vec![
            d_set(r#"["l",0]"#, "0"),
            d_push(r#"["l"]"#, "30"),
            d_push(r#"["l"]"#, "4"),
            d_set(r#"["p","x"]"#, "3"),
            d_set(r#"["p","y"]"#, "2"),
        ]
    );
    assert!(!r.has_pending());
    assert!(r.flush().is_none());
}

#[test]
fn a_parent_replaced_after_its_children_absorbs_them() {
    let mut r = room(r#"{"p":{"x":1}}"#);
    assert_eq!(
        r.apply(vec![set(r#"["p","x"]"#, "2")]),
        Ok(Applied::Changed)
    );
    assert_eq!(
        r.apply(vec![set(r#"["p","z"]"#, "2")]),
        Ok(Applied::Changed)
    );
    assert_eq!(r.apply(vec![del(r#"["p"]"#)]), Ok(Applied::Changed));
    assert_eq!(
        r.apply(vec![set(r#"["p","w"]"#, "5")]),
        Ok(Applied::Changed)
    );
    let record = r.flush().expect("one delta");
    assert_eq!(record.ops, vec![d_set(r#"["p"]"#, r#"{"w":5}"#)]);
}

#[test]
fn a_created_then_deleted_key_reaches_clients_as_a_del() {
    let mut r = room("{}");
    assert_eq!(
        r.apply(vec![set(r#"["x"]"#, "1"), del(r#"["x"]"#)]),
        Ok(Applied::Changed)
    );
    let record = r.flush().expect("a delta");
    assert_eq!(record.ops, vec![d_del(r#"["x"]"#)]);
}

#[test]
fn a_deleted_leaf_under_created_parents_keeps_the_parents() {
    // The parents were created by the message, so they travel with it even though the
    // leaf that created them is gone.
    let mut r = room("{}");
    assert_eq!(
        r.apply(vec![set(r#"["a","b","c"]"#, "1"), del(r#"["a","b","c"]"#)]),
        Ok(Applied::Changed)
    );
    let record = r.flush().expect("a delta");
    assert_eq!(record.ops, vec![d_set(r#"["a"]"#, r#"{"b":{}}"#)]);
}

// ---- ticks ----

#[test]
fn ticks_go_up_by_one_per_delta_and_only_on_change() {
    let mut r = room("{}");
    assert_eq!((r.tick(), r.pending_tick()), (0, 1));
    assert!(r.flush().is_none());
    assert_eq!(r.apply(vec![set(r#"["a"]"#, "1")]), Ok(Applied::Changed));
    assert_eq!(r.pending_tick(), 1);
    let first = r.flush().expect("a delta");
    assert_eq!((first.tick, first.epoch, r.tick()), (1, 0, 1));
    assert!(first.frames.iter().all(|cell| cell.get().is_none()));
    assert_eq!(r.apply(vec![set(r#"["a"]"#, "1")]), Ok(Applied::Unchanged));
    assert!(r.flush().is_none());
    assert_eq!(r.apply(vec![set(r#"["a"]"#, "2")]), Ok(Applied::Changed));
    assert_eq!(r.flush().map(|d| d.tick), Some(2));
    assert_eq!(r.tick(), 2);
}

// ---- resume ----

fn room_with_ticks(ticks: u64, window: usize) -> Room {
    let mut r = room_with(
        "{}",
        Limits {
            resume_window: window,
            ..Limits::default()
        },
    );
    for i in 0..ticks {
        let n = i64::try_from(i).expect("small");
        assert_eq!(
            r.apply(vec![Op::Set(p(r#"["n"]"#), Value::Int(n + 1))]),
            Ok(Applied::Changed)
        );
        assert!(r.flush().is_some());
    }
    r
}

fn ticks(deltas: Option<Vec<Rc<DeltaRecord>>>) -> Option<Vec<u64>> {
    deltas.map(|d| d.iter().map(|d| d.tick).collect())
}

#[test]
fn resume_gives_the_deltas_after_since_while_the_ring_holds_them() {
    let r = room_with_ticks(10, 4);
    assert_eq!(ticks(r.deltas_since(10, None)), Some(vec![]));
    assert_eq!(ticks(r.deltas_since(9, Some(0))), Some(vec![10]));
    assert_eq!(ticks(r.deltas_since(6, None)), Some(vec![7, 8, 9, 10]));
    assert_eq!(ticks(r.deltas_since(5, None)), None, "tick 6 left the ring");
    assert_eq!(ticks(r.deltas_since(0, None)), None);
    assert_eq!(
        ticks(r.deltas_since(11, None)),
        None,
        "since above the tick"
    );
    assert_eq!(ticks(r.deltas_since(9, Some(1))), None, "another epoch");
    assert_eq!(ticks(r.deltas_since(10, Some(1))), None, "another epoch");
}

#[test]
fn resume_from_tick_zero_of_a_young_room() {
    let r = room_with_ticks(3, 1024);
    assert_eq!(ticks(r.deltas_since(0, None)), Some(vec![1, 2, 3]));
    let r = room_with_ticks(0, 1024);
    assert_eq!(ticks(r.deltas_since(0, None)), Some(vec![]));
}

#[test]
fn a_zero_window_only_resumes_at_the_current_tick() {
    let r = room_with_ticks(3, 0);
    assert_eq!(ticks(r.deltas_since(3, None)), Some(vec![]));
    assert_eq!(ticks(r.deltas_since(2, None)), None);
}

#[test]
fn a_new_epoch_empties_the_ring() {
    let mut r = room_with_ticks(3, 1024);
    r.set_epoch(0);
    assert_eq!(ticks(r.deltas_since(1, None)), Some(vec![2, 3]));
    r.set_epoch(7);
    assert_eq!(r.epoch(), 7);
    assert_eq!(ticks(r.deltas_since(1, Some(7))), None);
    assert_eq!(ticks(r.deltas_since(3, Some(7))), Some(vec![]));
    assert_eq!(ticks(r.deltas_since(3, Some(0))), None);
    assert_eq!(r.apply(vec![set(r#"["z"]"#, "1")]), Ok(Applied::Changed));
    let record = r.flush().expect("a delta");
    assert_eq!((record.tick, record.epoch), (4, 7));
    assert_eq!(ticks(r.deltas_since(3, Some(7))), Some(vec![4]));
}

#[test]
fn limits_defaults() {
    let limits = Limits::default();
    assert_eq!(limits.max_state_bytes, 1 << 20);
    assert_eq!(limits.max_path_depth, 32);
    assert_eq!(limits.resume_window, 1024);
}

#[test]
fn an_encoded_flush_sees_the_ops_a_plain_flush_keeps_and_stores_only_its_frames() {
    let ops = vec![
        set(r#"["p","a"]"#, r#"{"x":1,"pad":"abc"}"#),
        push(r#"["log"]"#, "7"),
        del(r#"["gone"]"#),
    ];
    let state = r#"{"log":[],"gone":true}"#;
    let mut plain = room(state);
    assert_eq!(plain.apply(ops.clone()), Ok(Applied::Changed));
    let kept = plain.flush().expect("a delta");

    let mut encoded = room(state);
    assert_eq!(encoded.apply(ops), Ok(Applied::Changed));
    let mut seen = None;
    let record = encoded
        .flush_encoded(|room, tick, epoch, ops| {
            let owned: Vec<DeltaOp> = ops.iter().cloned().map(DeltaOp::into_owned).collect();
            seen = Some((room.as_str().to_owned(), tick, epoch, owned));
            [Some(Bytes::from_static(b"mp")), None]
        })
        .expect("a delta");
    assert_eq!(seen, Some(("r".to_owned(), 1, 0, kept.ops.clone())));
    assert_eq!(record.tick, kept.tick);
    assert!(record.ops.is_empty(), "the frames stand for the ops");
    assert_eq!(record.frames[0].get().map(|b| &b[..]), Some(&b"mp"[..]));
    assert!(record.frames[1].get().is_none());
    // The ring serves the encoded record to a resume like any other.
    assert_eq!(ticks(encoded.deltas_since(0, None)), Some(vec![1]));

    // Without a MessagePack frame the record keeps its own ops.
    assert_eq!(
        encoded.apply(vec![set(r#"["k"]"#, "2")]),
        Ok(Applied::Changed)
    );
    let record = encoded
        .flush_encoded(|_, _, _, _| [None, None])
        .expect("a delta");
    assert_eq!(record.ops, vec![d_set(r#"["k"]"#, "2")]);
}
