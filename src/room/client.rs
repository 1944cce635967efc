//! What a client does with the ops of a delta: the reference semantics of `PROTOCOL.md`
//! for a copy of the state, used by the tests to check the room's deltas, and available to
//! anything else that keeps a copy (the bench, a replaying instance).
//!
//! - `set` creates missing parent maps, replaces an existing value, appends at index = length.
//! - `del` removes a map key or an array item (later items shift down); a no-op whenever the
//!   path does not resolve; `del []` empties the root.
//! - `push` appends to the array at the path, creating it (and missing parent maps) when absent.
//!
//! Invariants: never panics. An error means the copy no longer matches the sender's state
//! (the client must join again); the copy may then be partly changed.

use crate::protocol::types::{DeltaOp, PathSeg};
use crate::room::tree::resolve_mut;
use crate::value::{Map, Value};

/// A delta op that does not fit the copy it is applied to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaApplyError {
    /// Segment `at` of the path finds no map key to create, no array item, or a scalar.
    #[error("the copy has no place for segment {at} of the path")]
    NoPlace { at: usize },
    #[error("push on a value that is not an array")]
    PushOnNonArray,
    #[error("set [] with a value that is not a map")]
    RootNotMap,
}

/// Applies one delta op to a copy of a room's state (a map at the root).
pub fn apply_delta_op(state: &mut Value, op: &DeltaOp) -> Result<(), DeltaApplyError> {
    match op {
        DeltaOp::Set(path, value) => {
            let Some((last, parents)) = path.split_last() else {
                if !matches!(value, Value::Map(_)) {
                    return Err(DeltaApplyError::RootNotMap);
                }
                *state = value.clone();
                return Ok(());
            };
            let container = container_for(state, parents)?;
            put(
                container,
                last,
                parents.len(),
                || value.clone(),
                |slot| {
                    *slot = value.clone();
                    Ok(())
                },
            )
        }
        DeltaOp::Del(path) => {
            let Some((last, parents)) = path.split_last() else {
                *state = Value::Map(Map::new());
                return Ok(());
            };
            match (resolve_mut(state, parents), last) {
                (Some(Value::Map(map)), PathSeg::Key(key)) => {
                    map.remove(key.as_str());
                }
                (Some(Value::Array(items)), PathSeg::Index(i)) => {
                    if let Some(i) = usize::try_from(*i).ok().filter(|i| *i < items.len()) {
                        items.remove(i);
                    }
                }
                _ => {}
            }
            Ok(())
        }
        DeltaOp::Push(path, item) => {
            let Some((last, parents)) = path.split_last() else {
                return Err(DeltaApplyError::PushOnNonArray);
            };
            let container = container_for(state, parents)?;
            put(
                container,
                last,
                parents.len(),
                || Value::Array(vec![item.clone()]),
                |slot| match slot {
                    Value::Array(items) => {
                        items.push(item.clone());
                        Ok(())
                    }
                    _ => Err(DeltaApplyError::PushOnNonArray),
                },
            )
        }
    }
}

/// The container at `parents`, creating missing maps on the way.
fn container_for<'a>(
    root: &'a mut Value,
    parents: &[PathSeg],
) -> Result<&'a mut Value, DeltaApplyError> {
    let mut cur = root;
    for (at, seg) in parents.iter().enumerate() {
        cur = match (cur, seg) {
            (Value::Map(map), PathSeg::Key(key)) => map
                .entry(key.clone())
                .or_insert_with(|| Value::Map(Map::new())),
            (Value::Array(items), PathSeg::Index(i)) => usize::try_from(*i)
                .ok()
                .and_then(|i| items.get_mut(i))
                .ok_or(DeltaApplyError::NoPlace { at })?,
            _ => return Err(DeltaApplyError::NoPlace { at }),
        };
    }
    Ok(cur)
}

/// Writes at `container[seg]`: `update` on an existing value, else inserts `create()`
/// (a new map key, or an append when the index is the array's length).
fn put(
    container: &mut Value,
    seg: &PathSeg,
    at: usize,
    create: impl FnOnce() -> Value,
    update: impl FnOnce(&mut Value) -> Result<(), DeltaApplyError>,
) -> Result<(), DeltaApplyError> {
    match (container, seg) {
        (Value::Map(map), PathSeg::Key(key)) => match map.get_mut(key.as_str()) {
            Some(slot) => update(slot),
            None => {
                map.insert(key.clone(), create());
                Ok(())
            }
        },
        (Value::Array(items), PathSeg::Index(i)) => {
            let len = items.len();
            match usize::try_from(*i) {
                Ok(i) if i < len => update(&mut items[i]),
                Ok(i) if i == len => {
                    items.push(create());
                    Ok(())
                }
                _ => Err(DeltaApplyError::NoPlace { at }),
            }
        }
        _ => Err(DeltaApplyError::NoPlace { at }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::testing::{j, p};

    fn applied(state: &str, op: DeltaOp) -> Result<Value, DeltaApplyError> {
        let mut state = j(state);
        apply_delta_op(&mut state, &op).map(|()| state)
    }

    #[test]
    fn set_creates_parent_maps_and_appends_at_length() {
        let set = |path: &str, v: &str| DeltaOp::Set(p(path), j(v));
        assert_eq!(
            applied("{}", set(r#"["a","b"]"#, "1")),
            Ok(j(r#"{"a":{"b":1}}"#))
        );
        assert_eq!(
            applied(r#"{"l":[1]}"#, set(r#"["l",1]"#, "2")),
            Ok(j(r#"{"l":[1,2]}"#))
        );
        assert_eq!(
            applied(r#"{"l":[1]}"#, set(r#"["l",0]"#, "2")),
            Ok(j(r#"{"l":[2]}"#))
        );
        assert_eq!(
            applied(r#"{"l":[1]}"#, set(r#"["l",3]"#, "2")),
            Err(DeltaApplyError::NoPlace { at: 1 })
        );
        assert_eq!(
            applied(r#"{"a":1}"#, set("[]", r#"{"b":2}"#)),
            Ok(j(r#"{"b":2}"#))
        );
        assert_eq!(
            applied("{}", set("[]", "1")),
            Err(DeltaApplyError::RootNotMap)
        );
    }

    #[test]
    fn del_is_a_no_op_when_absent_and_shifts_arrays() {
        let del = |path: &str| DeltaOp::Del(p(path));
        assert_eq!(
            applied(r#"{"a":1}"#, del(r#"["b","c"]"#)),
            Ok(j(r#"{"a":1}"#))
        );
        assert_eq!(
            applied(r#"{"a":1}"#, del(r#"["a","c"]"#)),
            Ok(j(r#"{"a":1}"#))
        );
        assert_eq!(
            applied(r#"{"l":[1,2,3]}"#, del(r#"["l",0]"#)),
            Ok(j(r#"{"l":[2,3]}"#))
        );
        assert_eq!(applied(r#"{"a":1}"#, del("[]")), Ok(j("{}")));
    }

    #[test]
    fn push_creates_the_array() {
        let push = |path: &str, v: &str| DeltaOp::Push(p(path), j(v));
        assert_eq!(
            applied("{}", push(r#"["a","l"]"#, "1")),
            Ok(j(r#"{"a":{"l":[1]}}"#))
        );
        assert_eq!(
            applied(r#"{"l":[1]}"#, push(r#"["l"]"#, "2")),
            Ok(j(r#"{"l":[1,2]}"#))
        );
        assert_eq!(
            applied(r#"{"l":1}"#, push(r#"["l"]"#, "2")),
            Err(DeltaApplyError::PushOnNonArray)
        );
    }
}
