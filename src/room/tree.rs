//! Read-only and in-place navigation of a value tree by path, without creating anything.
//!
//! Invariants: never panic; a path that does not resolve (missing key, index at or past the
//! end, wrong segment kind, a scalar on the way) gives `None`.

use crate::protocol::types::PathSeg;
use crate::value::Value;

/// The child of `value` at `seg`.
pub fn child<'a>(value: &'a Value, seg: &PathSeg) -> Option<&'a Value> {
    match (value, seg) {
        (Value::Map(map), PathSeg::Key(key)) => map.get(key.as_str()),
        (Value::Array(items), PathSeg::Index(i)) => items.get(usize::try_from(*i).ok()?),
        _ => None,
    }
}

/// The child of `value` at `seg`, mutably.
pub fn child_mut<'a>(value: &'a mut Value, seg: &PathSeg) -> Option<&'a mut Value> {
    match (value, seg) {
        (Value::Map(map), PathSeg::Key(key)) => map.get_mut(key.as_str()),
        (Value::Array(items), PathSeg::Index(i)) => items.get_mut(usize::try_from(*i).ok()?),
        _ => None,
    }
}

/// The value at `path` below `root`.
pub fn resolve<'a>(root: &'a Value, path: &[PathSeg]) -> Option<&'a Value> {
    path.iter().try_fold(root, child)
}

/// The value at `path` below `root`, mutably.
pub fn resolve_mut<'a>(root: &'a mut Value, path: &[PathSeg]) -> Option<&'a mut Value> {
    let mut cur = root;
    for seg in path {
        cur = child_mut(cur, seg)?;
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::testing::{j, p};

    #[test]
    fn resolves_keys_and_indexes() {
        let v = j(r#"{"a":[10,{"b":true}]}"#);
        assert_eq!(resolve(&v, &p(r#"["a",1,"b"]"#)), Some(&Value::Bool(true)));
        assert_eq!(resolve(&v, &p("[]")), Some(&v));
        for missing in [
            r#"["a",2]"#,
            r#"["a","x"]"#,
            r#"[0]"#,
            r#"["a",0,"b"]"#,
            r#"["z"]"#,
        ] {
            assert_eq!(resolve(&v, &p(missing)), None, "{missing}");
        }
        let mut v = v;
        if let Some(slot) = resolve_mut(&mut v, &p(r#"["a",0]"#)) {
            *slot = Value::Int(11);
        }
        assert_eq!(v, j(r#"{"a":[11,{"b":true}]}"#));
    }
}
