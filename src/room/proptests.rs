//! Property tests of `Room` over random op messages on a small alphabet of keys and indexes,
//! so that collisions, type changes and array shifts are frequent:
//!
//! - a failed message leaves the state bit-for-bit as it was (atomicity), and every result
//!   agrees with a naive clone-based model of the rules;
//! - deltas applied in tick order to a client's copy give the server state after every
//!   flush, ticks go up by exactly 1, and no delta comes without a change;
//! - the resume ring answers exactly the deltas after `since` while it holds them.

use proptest::prelude::*;
use proptest::sample::Index;

use super::apply::add;
use super::size::{encoded_size, Measure};
use super::testing::identical;
use super::tree::resolve_mut;
use super::*;
use crate::protocol::types::{Path, PathSeg};

const MAX_DEPTH: usize = 5;

fn key() -> impl Strategy<Value = String> {
    prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(String::from)
}

fn seg() -> impl Strategy<Value = PathSeg> {
    prop_oneof![
        3 => key().prop_map(PathSeg::Key),
        2 => (0u64..4).prop_map(PathSeg::Index),
    ]
}

fn path() -> impl Strategy<Value = Path> {
    prop_oneof![
        1 => Just(Path::new()),
        12 => prop::collection::vec(seg(), 1..4),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => (-3i64..=3).prop_map(Value::Int),
        1 => prop_oneof![Just(i64::MAX), Just(i64::MIN)].prop_map(Value::Int),
        1 => Just(Value::UInt(u64::MAX)),
        2 => prop_oneof![Just(0.5), Just(-0.0), Just(0.0), Just(1e308)].prop_map(Value::Float),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Nil),
        any::<bool>().prop_map(Value::Bool),
        number(),
        Just(Value::Str("s".into())),
        Just(Value::Bin(vec![1, 2])),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..3).prop_map(Value::Map),
        ]
    })
}

fn initial_state() -> impl Strategy<Value = Map> {
    prop::collection::btree_map(key(), value(), 0..4)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (path(), value()).prop_map(|(p, v)| Op::Set(p, v)),
        2 => path().prop_map(Op::Del),
        2 => (path(), number()).prop_map(|(p, n)| Op::Inc(p, n)),
        2 => (path(), value()).prop_map(|(p, v)| Op::Push(p, v)),
    ]
}

/// Ops that always fail, whatever the state.
fn failing_op() -> impl Strategy<Value = Op> {
    let deep: Path = (0..=MAX_DEPTH).map(|_| PathSeg::Key("a".into())).collect();
    prop_oneof![
        Just(Op::Inc(Path::new(), Value::Int(1))),
        Just(Op::Push(Path::new(), Value::Int(1))),
        Just(Op::Set(Path::new(), Value::Int(1))),
        Just(Op::Inc(
            vec![PathSeg::Key("a".into())],
            Value::Str("1".into())
        )),
        Just(Op::Del(deep)),
    ]
}

/// One message, sometimes with a failing op slipped in somewhere.
fn message() -> impl Strategy<Value = Vec<Op>> {
    (
        prop::collection::vec(op(), 0..4),
        prop::option::weighted(0.25, (any::<Index>(), failing_op())),
    )
        .prop_map(|(mut ops, failure)| {
            if let Some((at, failing)) = failure {
                let at = at.index(ops.len() + 1);
                ops.insert(at, failing);
            }
            ops
        })
}

#[derive(Debug, Clone)]
enum Step {
    Message(Vec<Op>),
    Flush,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            3 => message().prop_map(Step::Message),
            1 => Just(Step::Flush),
        ],
        1..40,
    )
}

fn limits() -> impl Strategy<Value = Limits> {
    (prop_oneof![Just(160usize), Just(1 << 20)], 0usize..6).prop_map(|(bytes, window)| Limits {
        max_state_bytes: bytes,
        max_path_depth: MAX_DEPTH,
        resume_window: window,
    })
}

fn new_room(state: Map, limits: Limits) -> Room {
    Room::from_snapshot(RoomId::parse("prop").expect("room id"), 0, 0, state, limits)
}

/// The room's own invariants: the running size is the encoded size, the root is a map, and
/// nothing sits deeper than the depth limit.
fn check_tree(room: &Room) -> Result<(), TestCaseError> {
    let measure = Measure::of(room.state());
    prop_assert_eq!(room.state_bytes(), measure.bytes);
    let mut encoded = Vec::new();
    super::size::tests::rmp_encode(room.state(), &mut encoded);
    prop_assert_eq!(room.state_bytes(), encoded.len());
    prop_assert!(matches!(room.state(), Value::Map(_)));
    prop_assert!(measure.nesting <= room.limits().max_path_depth);
    Ok(())
}

// ---- a naive model of the rules: clone the state, apply, keep or drop the clone ----

fn model_apply(state: &Value, ops: &[Op], limits: &Limits) -> Result<Value, ApplyError> {
    let mut next = state.clone();
    for (index, op) in ops.iter().enumerate() {
        model_op(&mut next, op, limits.max_path_depth)
            .map_err(|rule| ApplyError { index, rule })?;
    }
    let size = encoded_size(&next);
    if size > limits.max_state_bytes && size > encoded_size(state) {
        return Err(ApplyError {
            index: ops.len() - 1,
            rule: OpError::StateTooLarge {
                size,
                max: limits.max_state_bytes,
            },
        });
    }
    Ok(next)
}

fn model_op(state: &mut Value, op: &Op, max: usize) -> Result<(), OpError> {
    let (Op::Set(path, _) | Op::Del(path) | Op::Inc(path, _) | Op::Push(path, _)) = op;
    if path.len() > max {
        return Err(OpError::PathTooDeep {
            depth: path.len(),
            max,
        });
    }
    let too_deep = |depth: usize| -> Result<(), OpError> {
        if depth > max {
            Err(OpError::ValueTooDeep { depth, max })
        } else {
            Ok(())
        }
    };
    match op {
        Op::Set(path, value) => {
            if path.is_empty() {
                if !matches!(value, Value::Map(_)) {
                    return Err(OpError::RootNotMap);
                }
                too_deep(Measure::of(value).nesting)?;
                if state != value {
                    *state = value.clone();
                }
                return Ok(());
            }
            too_deep(path.len() + Measure::of(value).nesting)?;
            model_put(state, path, &|_| Ok(value.clone()))
        }
        Op::Inc(path, amount) => {
            if !amount.is_number() {
                return Err(OpError::IncByNonNumber);
            }
            if path.is_empty() {
                return Err(OpError::IncOnRoot);
            }
            model_put(state, path, &|old| {
                add(old.unwrap_or(&Value::Int(0)), amount)
            })
        }
        Op::Push(path, item) => {
            if path.is_empty() {
                return Err(OpError::PushOnRoot);
            }
            too_deep(path.len() + 1 + Measure::of(item).nesting)?;
            model_put(state, path, &|old| match old {
                None => Ok(Value::Array(vec![item.clone()])),
                Some(Value::Array(items)) => {
                    let mut items = items.clone();
                    items.push(item.clone());
                    Ok(Value::Array(items))
                }
                Some(_) => Err(OpError::PushOnNonArray),
            })
        }
        Op::Del(path) => {
            let Some((last, parents)) = path.split_last() else {
                *state = Value::Map(Map::new());
                return Ok(());
            };
            match (resolve_mut(state, parents), last) {
                (Some(Value::Map(map)), PathSeg::Key(k)) => {
                    map.remove(k);
                }
                (Some(Value::Array(items)), PathSeg::Index(i)) if (*i as usize) < items.len() => {
                    items.remove(*i as usize);
                }
                _ => {}
            }
            Ok(())
        }
    }
}

type Compute<'a> = dyn Fn(Option<&Value>) -> Result<Value, OpError> + 'a;

/// Writes `compute(old)` at `path`, creating missing maps, by the rules' plain reading.
fn model_put(state: &mut Value, path: &[PathSeg], compute: &Compute) -> Result<(), OpError> {
    let mut cur = state;
    for (at, seg) in path.iter().enumerate() {
        let last = at + 1 == path.len();
        let exists = match (&*cur, seg) {
            (Value::Map(map), PathSeg::Key(k)) => map.contains_key(k),
            (Value::Array(items), PathSeg::Index(i)) => {
                if *i as usize > items.len() {
                    return Err(OpError::IndexBeyondLength {
                        at,
                        index: *i,
                        len: items.len(),
                    });
                }
                (*i as usize) < items.len()
            }
            (Value::Map(_), PathSeg::Index(_)) => return Err(OpError::IndexIntoMap { at }),
            (Value::Array(_), PathSeg::Key(_)) => return Err(OpError::KeyIntoArray { at }),
            _ => return Err(OpError::ThroughNonContainer { at }),
        };
        if !exists {
            if let Some(off) = path[at + 1..]
                .iter()
                .position(|s| matches!(s, PathSeg::Index(_)))
            {
                return Err(OpError::IndexIntoMissing { at: at + 1 + off });
            }
            let mut created = compute(None)?;
            for seg in path[at + 1..].iter().rev() {
                if let PathSeg::Key(k) = seg {
                    created = Value::Map(Map::from([(k.clone(), created)]));
                }
            }
            match (cur, seg) {
                (Value::Map(map), PathSeg::Key(k)) => {
                    map.insert(k.clone(), created);
                }
                (Value::Array(items), _) => items.push(created),
                _ => unreachable!("checked above"),
            }
            return Ok(());
        }
        let child = match (cur, seg) {
            (Value::Map(map), PathSeg::Key(k)) => map.get_mut(k),
            (Value::Array(items), PathSeg::Index(i)) => items.get_mut(*i as usize),
            _ => None,
        };
        let Some(child) = child else {
            unreachable!("checked above")
        };
        if last {
            let new = compute(Some(child))?;
            if *child != new {
                *child = new;
            }
            return Ok(());
        }
        cur = child;
    }
    unreachable!("paths given to model_put are not empty")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn failed_messages_change_nothing_and_results_match_the_model(
        state in initial_state(),
        limits in limits(),
        messages in prop::collection::vec(message(), 1..30),
    ) {
        let mut room = new_room(state, limits);
        for ops in messages {
            let before = room.state().clone();
            let bytes_before = room.state_bytes();
            let pending_before = room.has_pending();
            let expected = model_apply(&before, &ops, &limits);
            let result = room.apply(ops);
            match (&result, expected) {
                (Err(error), Err(expected)) => {
                    prop_assert_eq!(error, &expected);
                    prop_assert!(identical(room.state(), &before), "state moved on {:?}", error);
                    prop_assert_eq!(room.state_bytes(), bytes_before);
                    prop_assert_eq!(room.has_pending(), pending_before);
                }
                (Ok(applied), Ok(expected)) => {
                    prop_assert!(identical(room.state(), &expected));
                    match applied {
                        Applied::Unchanged => {
                            prop_assert!(identical(room.state(), &before));
                            prop_assert_eq!(room.has_pending(), pending_before);
                        }
                        Applied::Changed => prop_assert!(room.has_pending()),
                    }
                }
                (result, expected) => {
                    prop_assert!(false, "room {:?}, model {:?}", result, expected);
                }
            }
            check_tree(&room)?;
        }
    }

    #[test]
    fn deltas_bring_a_client_copy_to_the_server_state(
        state in initial_state(),
        limits in limits(),
        steps in steps(),
    ) {
        let mut room = new_room(state.clone(), limits);
        let mut copy = Value::Map(state);
        let mut changed_since_flush = false;
        let mut deltas: Vec<Rc<DeltaRecord>> = Vec::new();
        let flush = |room: &mut Room,
                     copy: &mut Value,
                     changed: &mut bool,
                     deltas: &mut Vec<Rc<DeltaRecord>>|
         -> Result<(), TestCaseError> {
            let tick = room.tick();
            match room.flush() {
                Some(delta) => {
                    prop_assert!(*changed, "a delta without a change");
                    prop_assert_eq!(delta.tick, tick + 1);
                    prop_assert_eq!(room.tick(), tick + 1);
                    prop_assert!(!delta.ops.is_empty());
                    for op in &delta.ops {
                        let applied = apply_delta_op(copy, op);
                        prop_assert!(applied.is_ok(), "{:?} on {:?}: {:?}", op, copy, applied);
                    }
                    deltas.push(delta);
                }
                None => {
                    prop_assert!(!*changed, "a change without a delta");
                    prop_assert_eq!(room.tick(), tick);
                }
            }
            *changed = false;
            prop_assert!(!room.has_pending());
            prop_assert!(identical(copy, room.state()), "copy {:?}\nroom {:?}", copy, room.state());
            Ok(())
        };
        for step in steps {
            match step {
                Step::Message(ops) => {
                    if room.apply(ops) == Ok(Applied::Changed) {
                        changed_since_flush = true;
                    }
                    prop_assert_eq!(room.has_pending(), changed_since_flush);
                }
                Step::Flush => flush(&mut room, &mut copy, &mut changed_since_flush, &mut deltas)?,
            }
        }
        flush(&mut room, &mut copy, &mut changed_since_flush, &mut deltas)?;

        // The resume ring: the deltas after `since` while it holds tick since + 1.
        let tick = room.tick();
        prop_assert_eq!(tick, deltas.len() as u64);
        for since in 0..=tick + 1 {
            let got = room
                .deltas_since(since, None)
                .map(|d| d.iter().map(|d| d.tick).collect::<Vec<_>>());
            let expected = if since > tick {
                None
            } else if since == tick || tick - since <= limits.resume_window as u64 {
                Some((since + 1..=tick).collect::<Vec<_>>())
            } else {
                None
            };
            prop_assert_eq!(got, expected, "since {}", since);
        }
    }
}
