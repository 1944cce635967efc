//! The typed pieces of the protocol that rooms and the server share: room ids, paths,
//! client ops, state-based delta ops and error codes.
//!
//! Their `Serialize` impls are the wire shapes of `PROTOCOL.md`: a path is an array of
//! strings and integers, an op is `["set", path, value]` (`del` has no value), an error
//! code is its string.

use serde::ser::{Serialize, SerializeSeq, Serializer};

use crate::value::Value;

/// A validated room id: 1 to 128 bytes of `A-Z a-z 0-9 _ . : -`.
///
/// Shared, not copied: every mesh message, member list and delta of a room names it, and a
/// clone is a reference count.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(std::sync::Arc<str>);

impl RoomId {
    pub const MAX_LEN: usize = 128;

    /// The id, when `s` is a valid room id.
    pub fn parse(s: &str) -> Option<RoomId> {
        Self::is_valid(s).then(|| RoomId(s.into()))
    }

    /// As [`RoomId::parse`], for a string the caller already owns.
    pub fn parse_owned(s: String) -> Option<RoomId> {
        Self::is_valid(&s).then(|| RoomId(s.into()))
    }

    fn is_valid(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RoomId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One step of a path: a map key or an array index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathSeg {
    Key(String),
    Index(u64),
}

/// A path from the root; `[]` is the root.
pub type Path = Vec<PathSeg>;

/// A client op, as decoded from an `op` message.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Set(Path, Value),
    Del(Path),
    /// The amount is always a number (`Int`, `UInt` or `Float`); decoding rejects anything else.
    Inc(Path, Value),
    Push(Path, Value),
}

/// A state-based op of a delta: what every member applies to its copy. `V` is `&Value`
/// for a delta encoded straight from the room's state, without copying its values.
#[derive(Debug, Clone, PartialEq)]
pub enum DeltaOp<V = Value> {
    Set(Path, V),
    Del(Path),
    Push(Path, V),
}

impl DeltaOp<&Value> {
    /// The op with its own copy of the value.
    pub fn into_owned(self) -> DeltaOp {
        match self {
            DeltaOp::Set(path, value) => DeltaOp::Set(path, value.clone()),
            DeltaOp::Del(path) => DeltaOp::Del(path),
            DeltaOp::Push(path, value) => DeltaOp::Push(path, value.clone()),
        }
    }
}

/// The error codes of `PROTOCOL.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotJoined,
    Conflict,
    TooLarge,
    RateLimited,
    RoomFull,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::Conflict => "conflict",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl Serialize for RoomId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl Serialize for PathSeg {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            PathSeg::Key(key) => serializer.serialize_str(key),
            PathSeg::Index(index) => serializer.serialize_u64(*index),
        }
    }
}

/// Writes `[name, path]` or `[name, path, value]`.
fn serialize_op<S: Serializer, V: Serialize>(
    serializer: S,
    name: &str,
    path: &Path,
    value: Option<&V>,
) -> Result<S::Ok, S::Error> {
    let mut seq = serializer.serialize_seq(Some(2 + usize::from(value.is_some())))?;
    seq.serialize_element(name)?;
    seq.serialize_element(path)?;
    if let Some(value) = value {
        seq.serialize_element(value)?;
    }
    seq.end()
}

impl Serialize for Op {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Op::Set(path, value) => serialize_op(serializer, "set", path, Some(value)),
            Op::Del(path) => serialize_op::<_, Value>(serializer, "del", path, None),
            Op::Inc(path, amount) => serialize_op(serializer, "inc", path, Some(amount)),
            Op::Push(path, value) => serialize_op(serializer, "push", path, Some(value)),
        }
    }
}

impl<V: Serialize> Serialize for DeltaOp<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            DeltaOp::Set(path, value) => serialize_op(serializer, "set", path, Some(value)),
            DeltaOp::Del(path) => serialize_op::<_, Value>(serializer, "del", path, None),
            DeltaOp::Push(path, value) => serialize_op(serializer, "push", path, Some(value)),
        }
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}
