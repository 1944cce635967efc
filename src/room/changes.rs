//! The change trie: which paths changed since the last flush, coalesced, so that a flush
//! emits one state-based delta however many ops went into it.
//!
//! A node is either **replaced** (the delta carries the current value at its path, or a
//! `del` when the path no longer resolves) or an inner node with dirty descendants. An
//! array's inner node also counts the items **appended** to it; the delta pushes the last
//! that many items.
//!
//! Invariants:
//! - A replaced node has no children and no appended count: marking a path replaced
//!   absorbs every mark below it, and a mark at or below a replaced node is dropped.
//! - An inner node's path held a container of the same kind at the last flush and holds it
//!   now, with no item shifted: anything that creates, removes or retypes a container, or
//!   deletes an array item, marks that container (or one of its ancestors) replaced. So a
//!   client at the previous tick can apply the emitted ops in order: sets and dels under
//!   inner nodes find their parents, and an array's dirty items below its old length are
//!   where the client has them.
//! - Arrays that are inner nodes only grow between flushes (shrinking is an item `del`,
//!   which replaces the array), and every growth is an append counted on their node: the
//!   client holds exactly the first `len - appended` items.
//! - Never panics; emission recurses once per path segment (bounded by the depth limit).

use std::collections::BTreeMap;

use crate::protocol::types::{DeltaOp, Path, PathSeg};
use crate::room::tree;
use crate::value::Value;

/// What an applied op did at its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mark {
    /// The value at the path was set, replaced, created or removed.
    Replaced,
    /// One item was appended to the array at the path.
    Appended,
}

/// The dirty paths since the last flush.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    root: Node,
}

#[derive(Debug, Default)]
struct Node {
    replaced: bool,
    appended: usize,
    children: BTreeMap<PathSeg, Node>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        !self.root.replaced && self.root.appended == 0 && self.root.children.is_empty()
    }

    /// Records one change. The path's segments move into the trie where it has no node yet.
    pub fn mark(&mut self, path: Path, mark: Mark) {
        let mut node = &mut self.root;
        for seg in path {
            if node.replaced {
                return;
            }
            node = node.children.entry(seg).or_default();
        }
        if node.replaced {
            return;
        }
        match mark {
            Mark::Replaced => {
                node.replaced = true;
                node.appended = 0;
                node.children.clear();
            }
            Mark::Appended => node.appended += 1,
        }
    }

    /// The ops of one delta that bring a copy at the last flush to `root`, the state now,
    /// with their values borrowed from `root` (a delta is encoded without copying what it
    /// carries); clears the marks. Siblings come in path order; an array's pushes come
    /// after its other dirty items.
    pub fn take_ops_of<'v>(&mut self, root: &'v Value) -> Vec<DeltaOp<&'v Value>> {
        let mut ops = Vec::new();
        let mut path = Path::new();
        emit(
            std::mem::take(&mut self.root),
            Some(root),
            &mut path,
            &mut ops,
        );
        ops
    }

    /// [`Changes::take_ops_of`] with owned values.
    #[cfg(test)]
    pub fn take_ops(&mut self, root: &Value) -> Vec<DeltaOp> {
        self.take_ops_of(root)
            .into_iter()
            .map(DeltaOp::into_owned)
            .collect()
    }
}

fn emit<'v>(
    node: Node,
    value: Option<&'v Value>,
    path: &mut Path,
    ops: &mut Vec<DeltaOp<&'v Value>>,
) {
    if node.replaced {
        ops.push(match value {
            Some(value) => DeltaOp::Set(path.clone(), value),
            None => DeltaOp::Del(path.clone()),
        });
        return;
    }
    // Items from `first_appended` on are new since the last flush: the pushes carry them
    // whole, so marks inside them are skipped.
    let (appended, first_appended): (&'v [Value], usize) = match value {
        Some(Value::Array(items)) => {
            let first = items.len().saturating_sub(node.appended);
            (&items[first..], first)
        }
        _ => (&[], usize::MAX),
    };
    for (seg, child) in node.children {
        if let PathSeg::Index(i) = seg {
            if usize::try_from(i).map_or(true, |i| i >= first_appended) {
                continue;
            }
        }
        let child_value = value.and_then(|v| tree::child(v, &seg));
        path.push(seg);
        emit(child, child_value, path, ops);
        path.pop();
    }
    for item in appended {
        ops.push(DeltaOp::Push(path.clone(), item));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::testing::{j, p};

    fn ops_for(marks: &[(&str, Mark)], state: &str) -> Vec<DeltaOp> {
        let mut changes = Changes::default();
        for (path, mark) in marks {
            changes.mark(p(path), *mark);
        }
        let ops = changes.take_ops(&j(state));
        assert!(changes.is_empty());
        ops
    }

    #[test]
    fn replaced_absorbs_marks_below_in_either_order() {
        let state = r#"{"a":{"b":1,"c":2}}"#;
        let expected = vec![DeltaOp::Set(p(r#"["a"]"#), j(r#"{"b":1,"c":2}"#))];
        let before = [
            (r#"["a","b"]"#, Mark::Replaced),
            (r#"["a"]"#, Mark::Replaced),
        ];
        assert_eq!(ops_for(&before, state), expected);
        let after = [
            (r#"["a"]"#, Mark::Replaced),
            (r#"["a","c"]"#, Mark::Replaced),
        ];
        assert_eq!(ops_for(&after, state), expected);
    }

    #[test]
    fn unresolved_replaced_path_is_a_del() {
        let ops = ops_for(&[(r#"["a","x"]"#, Mark::Replaced)], r#"{"a":{}}"#);
        assert_eq!(ops, vec![DeltaOp::Del(p(r#"["a","x"]"#))]);
    }

    #[test]
    fn appended_items_are_pushed_and_marks_inside_them_skipped() {
        let marks = [
            (r#"["l",0]"#, Mark::Replaced),
            (r#"["l"]"#, Mark::Appended),
            (r#"["l",2,"x"]"#, Mark::Replaced),
            (r#"["l"]"#, Mark::Appended),
        ];
        let ops = ops_for(&marks, r#"{"l":[5,6,{"x":1},7]}"#);
        assert_eq!(
            ops,
            vec![
                DeltaOp::Set(p(r#"["l",0]"#), j("5")),
                DeltaOp::Push(p(r#"["l"]"#), j(r#"{"x":1}"#)),
                DeltaOp::Push(p(r#"["l"]"#), j("7")),
            ]
        );
    }

    #[test]
    fn root_replaced_is_a_set_of_the_whole_state() {
        let ops = ops_for(
            &[(r#"["a"]"#, Mark::Replaced), ("[]", Mark::Replaced)],
            r#"{"z":1}"#,
        );
        assert_eq!(ops, vec![DeltaOp::Set(vec![], j(r#"{"z":1}"#))]);
    }

    #[test]
    fn appends_under_a_replaced_array_are_absorbed() {
        let marks = [(r#"["l"]"#, Mark::Replaced), (r#"["l"]"#, Mark::Appended)];
        let ops = ops_for(&marks, r#"{"l":[1]}"#);
        assert_eq!(ops, vec![DeltaOp::Set(p(r#"["l"]"#), j("[1]"))]);
    }
}
