//! Client ops applied in place, each leaving one undo entry, so that a message is atomic
//! without cloning the state.
//!
//! An op walks its path once, mutably. Every check that can fail runs before the op
//! mutates anything, so a failing op leaves the tree as it found it; the ops before it in
//! the same message are then rolled back from their [`Done`] entries, newest first.
//!
//! Invariants:
//! - Never panics on client input (paths, values, amounts of any shape).
//! - An op that returns `Err` has not changed the tree; an op that returns `Ok(None)` has
//!   changed nothing (its effect equals the state it found); `Ok(Some(done))` changed the
//!   tree, and `undo(done)` restores it exactly.
//! - Old values are moved into the undo entry, never cloned. Only maps are created for
//!   missing parents.
//! - `bytes` stays equal to [`Measure::of`]`(root).bytes` (see `size.rs`), updated from the
//!   sizes of the subtrees an op moves in or out, never by walking the whole tree.
//! - Every value in the tree sits at a path no deeper than the depth limit.

use crate::protocol::types::{Op, Path, PathSeg};
use crate::room::changes::Mark;
use crate::room::error::OpError;
use crate::room::size::{encoded_size, header_growth, str_size, Measure};
use crate::room::tree::resolve_mut;
use crate::value::{Map, Value};

/// The state of a room and its running size.
#[derive(Debug)]
pub(crate) struct Tree {
    root: Value,
    bytes: usize,
}

/// How to take one applied op back. The path it acts on is [`Done::path`].
#[derive(Debug)]
pub(crate) enum Undo {
    /// The value at the path was replaced (the root included): put `old` back.
    Restore(Value),
    /// The map key at the path was inserted (with any created maps below it): remove it.
    RemoveKey,
    /// An item was appended to the array at the path: pop it.
    Pop,
    /// The map key at the path was removed: insert `old` back.
    InsertKey(Value),
    /// The array item at the path was removed and later items shifted down: insert it back.
    InsertItem(Value),
}

/// One applied op: where it acted and how to take it back.
#[derive(Debug)]
pub(crate) struct Done {
    pub path: Path,
    pub undo: Undo,
}

impl Done {
    /// The change a delta must carry for this op (see `changes.rs`): replacing or removing a
    /// value marks its path; appending marks the array; removing an array item shifts the
    /// later ones, so it marks the whole array.
    pub fn into_mark(self) -> (Path, Mark) {
        let Done { mut path, undo } = self;
        match undo {
            Undo::Restore(_) | Undo::RemoveKey | Undo::InsertKey(_) => (path, Mark::Replaced),
            Undo::Pop => (path, Mark::Appended),
            Undo::InsertItem(_) => {
                path.pop();
                (path, Mark::Replaced)
            }
        }
    }
}

/// What a `set`, `inc` or `push` puts where its path ends.
enum Write {
    /// `set`: the value and its encoded size.
    Set(Value, usize),
    /// `inc`: the amount (always a number).
    Inc(Value),
    /// `push`: the item and its encoded size.
    Push(Value, usize),
}

impl Write {
    /// The value created where the path does not resolve, and its encoded size.
    fn into_created(self) -> (Value, usize) {
        match self {
            Write::Set(value, bytes) => (value, bytes),
            Write::Inc(amount) => {
                // Absent counts as 0; 0 + an integer cannot overflow.
                let value = add(&Value::Int(0), &amount).unwrap_or(amount);
                let bytes = encoded_size(&value);
                (value, bytes)
            }
            // A one-item array: the header of length 1 is one byte.
            Write::Push(item, bytes) => (Value::Array(vec![item]), 1 + bytes),
        }
    }
}

impl Tree {
    pub fn new(root: Map) -> Tree {
        let root = Value::Map(root);
        let bytes = encoded_size(&root);
        Tree { root, bytes }
    }

    pub fn root(&self) -> &Value {
        &self.root
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Puts the running size back after a rolled-back message.
    pub fn restore_bytes(&mut self, bytes: usize) {
        self.bytes = bytes;
    }

    /// Applies one op. `max_depth` is the path depth limit.
    pub fn apply(&mut self, op: Op, max_depth: usize) -> Result<Option<Done>, OpError> {
        match op {
            Op::Set(path, value) => {
                check_path_depth(&path, max_depth)?;
                if path.is_empty() && !matches!(value, Value::Map(_)) {
                    return Err(OpError::RootNotMap);
                }
                let measure = Measure::of(&value);
                check_value_depth(path.len() + measure.nesting, max_depth)?;
                if path.is_empty() {
                    return Ok(self.set_root(value, measure.bytes));
                }
                self.write(path, Write::Set(value, measure.bytes))
            }
            Op::Del(path) => {
                check_path_depth(&path, max_depth)?;
                Ok(self.del(path))
            }
            Op::Inc(path, amount) => {
                check_path_depth(&path, max_depth)?;
                if !amount.is_number() {
                    return Err(OpError::IncByNonNumber);
                }
                if path.is_empty() {
                    return Err(OpError::IncOnRoot);
                }
                self.write(path, Write::Inc(amount))
            }
            Op::Push(path, item) => {
                check_path_depth(&path, max_depth)?;
                if path.is_empty() {
                    return Err(OpError::PushOnRoot);
                }
                let measure = Measure::of(&item);
                check_value_depth(path.len() + 1 + measure.nesting, max_depth)?;
                self.write(path, Write::Push(item, measure.bytes))
            }
        }
    }

    /// Takes one applied op back. Entries must be undone newest first: each then finds the
    /// tree exactly as its op left it.
    pub fn undo(&mut self, done: Done) {
        let Done { mut path, undo } = done;
        let restored = match undo {
            Undo::Restore(old) => resolve_mut(&mut self.root, &path)
                .map(|slot| *slot = old)
                .is_some(),
            Undo::Pop => match resolve_mut(&mut self.root, &path) {
                Some(Value::Array(items)) => items.pop().is_some(),
                _ => false,
            },
            Undo::RemoveKey | Undo::InsertKey(_) | Undo::InsertItem(_) => {
                let last = path.pop();
                match (resolve_mut(&mut self.root, &path), last, undo) {
                    (Some(Value::Map(map)), Some(PathSeg::Key(key)), Undo::RemoveKey) => {
                        map.remove(&key).is_some()
                    }
                    (Some(Value::Map(map)), Some(PathSeg::Key(key)), Undo::InsertKey(old)) => {
                        map.insert(key, old).is_none()
                    }
                    (Some(Value::Array(items)), Some(PathSeg::Index(i)), Undo::InsertItem(old)) => {
                        match usize::try_from(i) {
                            Ok(i) if i <= items.len() => {
                                items.insert(i, old);
                                true
                            }
                            _ => false,
                        }
                    }
                    _ => false,
                }
            }
        };
        debug_assert!(restored, "undo entries are applied newest first");
    }

    /// `set []` with a map (checked by the caller).
    fn set_root(&mut self, value: Value, bytes: usize) -> Option<Done> {
        if self.root == value {
            return None;
        }
        let old = std::mem::replace(&mut self.root, value);
        self.bytes = bytes;
        Some(Done {
            path: Path::new(),
            undo: Undo::Restore(old),
        })
    }

    fn del(&mut self, path: Path) -> Option<Done> {
        let Some(last) = path.last() else {
            return self.clear_root();
        };
        let parent = resolve_mut(&mut self.root, &path[..path.len() - 1])?;
        let undo = match (parent, last) {
            (Value::Map(map), PathSeg::Key(key)) => {
                let old = map.remove(key.as_str())?;
                let freed = header_growth(map.len()) + str_size(key.len()) + encoded_size(&old);
                self.bytes = self.bytes.saturating_sub(freed);
                Undo::InsertKey(old)
            }
            (Value::Array(items), PathSeg::Index(i)) => {
                let i = usize::try_from(*i).ok().filter(|i| *i < items.len())?;
                let old = items.remove(i);
                let freed = header_growth(items.len()) + encoded_size(&old);
                self.bytes = self.bytes.saturating_sub(freed);
                Undo::InsertItem(old)
            }
            // `del` never conflicts: a path that does not resolve is a no-op.
            _ => return None,
        };
        Some(Done { path, undo })
    }

    fn clear_root(&mut self) -> Option<Done> {
        if matches!(&self.root, Value::Map(map) if map.is_empty()) {
            return None;
        }
        let old = std::mem::replace(&mut self.root, Value::Map(Map::new()));
        self.bytes = encoded_size(&self.root);
        Some(Done {
            path: Path::new(),
            undo: Undo::Restore(old),
        })
    }

    /// `set`, `inc` or `push` at a non-empty path.
    fn write(&mut self, mut path: Path, write: Write) -> Result<Option<Done>, OpError> {
        let Tree { root, bytes } = self;
        let undo = descend(root, bytes, &mut path, 0, write)?;
        Ok(undo.map(|undo| Done { path, undo }))
    }
}

fn check_path_depth(path: &Path, max: usize) -> Result<(), OpError> {
    if path.len() > max {
        return Err(OpError::PathTooDeep {
            depth: path.len(),
            max,
        });
    }
    Ok(())
}

fn check_value_depth(depth: usize, max: usize) -> Result<(), OpError> {
    if depth > max {
        return Err(OpError::ValueTooDeep { depth, max });
    }
    Ok(())
}

/// Where segment `at` of a path leads from its container.
enum Step<'a> {
    Found(&'a mut Value),
    /// A map without the key, or an array whose length is the index: the place can be
    /// created.
    Missing,
}

fn step<'a>(container: &'a mut Value, seg: &PathSeg, at: usize) -> Result<Step<'a>, OpError> {
    match (container, seg) {
        (Value::Map(map), PathSeg::Key(key)) => Ok(match map.get_mut(key.as_str()) {
            Some(child) => Step::Found(child),
            None => Step::Missing,
        }),
        (Value::Array(items), PathSeg::Index(index)) => {
            let len = items.len();
            match usize::try_from(*index) {
                Ok(i) if i < len => Ok(Step::Found(&mut items[i])),
                Ok(i) if i == len => Ok(Step::Missing),
                _ => Err(OpError::IndexBeyondLength {
                    at,
                    index: *index,
                    len,
                }),
            }
        }
        (Value::Map(_), PathSeg::Index(_)) => Err(OpError::IndexIntoMap { at }),
        (Value::Array(_), PathSeg::Key(_)) => Err(OpError::KeyIntoArray { at }),
        _ => Err(OpError::ThroughNonContainer { at }),
    }
}

/// Walks from `cur`, the value at `path[..at]`, to the end of the path, and writes there.
/// Recursion (at most the depth limit) keeps the walk to one lookup per segment: a loop
/// could not keep the container borrowed for the "missing" case.
fn descend(
    cur: &mut Value,
    bytes: &mut usize,
    path: &mut Path,
    at: usize,
    write: Write,
) -> Result<Option<Undo>, OpError> {
    let is_last = at + 1 == path.len();
    match step(cur, &path[at], at)? {
        Step::Found(child) if is_last => write_existing(child, bytes, write),
        Step::Found(child) => descend(child, bytes, path, at + 1, write),
        Step::Missing => create(cur, bytes, path, at, write).map(Some),
    }
}

/// The write where the path resolves to `slot`.
fn write_existing(
    slot: &mut Value,
    bytes: &mut usize,
    write: Write,
) -> Result<Option<Undo>, OpError> {
    let (new, new_bytes) = match write {
        Write::Set(value, new_bytes) => (value, new_bytes),
        Write::Inc(amount) => {
            let sum = add(slot, &amount)?;
            let sum_bytes = encoded_size(&sum);
            (sum, sum_bytes)
        }
        Write::Push(item, item_bytes) => {
            let Value::Array(items) = slot else {
                return Err(OpError::PushOnNonArray);
            };
            *bytes += header_growth(items.len()) + item_bytes;
            items.push(item);
            return Ok(Some(Undo::Pop));
        }
    };
    if *slot == new {
        return Ok(None);
    }
    let old = std::mem::replace(slot, new);
    *bytes = (*bytes + new_bytes).saturating_sub(encoded_size(&old));
    Ok(Some(Undo::Restore(old)))
}

/// The write where `path[at]` is missing from `container` (the value at `path[..at]`):
/// the rest of the path is created as maps, holding the written value at its end. The
/// path is cut to what undo and change marks need: the inserted key, or the array that
/// got an item.
fn create(
    container: &mut Value,
    bytes: &mut usize,
    path: &mut Path,
    at: usize,
    write: Write,
) -> Result<Undo, OpError> {
    if let Some(offset) = path[at + 1..]
        .iter()
        .position(|seg| matches!(seg, PathSeg::Index(_)))
    {
        return Err(OpError::IndexIntoMissing {
            at: at + 1 + offset,
        });
    }
    let (mut value, mut value_bytes) = write.into_created();
    // The created keys move from the path into the maps; nothing needs them after this.
    for seg in path.drain(at + 1..).rev() {
        if let PathSeg::Key(key) = seg {
            value_bytes += 1 + str_size(key.len());
            let mut map = Map::new();
            map.insert(key, value);
            value = Value::Map(map);
        }
    }
    match (container, &path[at]) {
        (Value::Map(map), PathSeg::Key(key)) => {
            *bytes += header_growth(map.len()) + str_size(key.len()) + value_bytes;
            map.insert(key.clone(), value);
            Ok(Undo::RemoveKey)
        }
        (Value::Array(items), PathSeg::Index(_)) => {
            *bytes += header_growth(items.len()) + value_bytes;
            items.push(value);
            path.truncate(at);
            Ok(Undo::Pop)
        }
        // `step` answered `Missing`, which it only does for the two cases above.
        _ => Err(OpError::ThroughNonContainer { at }),
    }
}

/// `old + amount` by the rules of `inc`: two integers give an integer (computed in i128,
/// the result must fit i64 or u64); a float on either side gives a float.
pub(crate) fn add(old: &Value, amount: &Value) -> Result<Value, OpError> {
    match (integer(old), integer(amount)) {
        (Some(a), Some(b)) => Value::from_i128(a + b).ok_or(OpError::IntegerOverflow),
        _ => match (float(old), float(amount)) {
            (Some(a), Some(b)) => Ok(Value::Float(a + b)),
            (None, _) => Err(OpError::IncOnNonNumber),
            (_, None) => Err(OpError::IncByNonNumber),
        },
    }
}

fn integer(value: &Value) -> Option<i128> {
    match *value {
        Value::Int(i) => Some(i128::from(i)),
        Value::UInt(u) => Some(i128::from(u)),
        _ => None,
    }
}

fn float(value: &Value) -> Option<f64> {
    match *value {
        Value::Int(i) => Some(i as f64),
        Value::UInt(u) => Some(u as f64),
        Value::Float(f) => Some(f),
        _ => None,
    }
}
